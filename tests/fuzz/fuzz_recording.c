/*
 * fuzz_recording.c - libFuzzer target for the recording builder
 * (recording.c), the reply comparison and the mock (mock.c).
 *
 * A database can be edited by hand or written by another version, so the
 * events a recording is built from are hostile input.  The input is a
 * list of events, each a 4-byte head (side and kind, flags, how far back
 * the event it answers is, the length of its bytes) and its bytes; after
 * an empty event (length 0, kind 7) the rest is a client's stream for the
 * mock, split at LF.  Checked, whatever the events:
 *   - units are in seq order, each within [seq, last_seq], grouped
 *     contiguously (the groups partition the units, in order, none empty);
 *   - a unit's reply and client reply are replies that answer one of its
 *     events; the greeting answers the first connect event;
 *   - a unit that expects a reply is complete, and none after STARTTLS in
 *     its group does;
 *   - labels are NUL-terminated within their buffer, and a reply's label
 *     (its first line) holds no LF;
 *   - recording_compare is reflexive and symmetric;
 *   - the mock's own replies (mismatches) are one CRLF-terminated line of
 *     printable ASCII, and it never reads past the units.
 * Any violation abort()s; ASan+UBSan (fatal) catch the rest.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/mock.h"
#include "smtptap/recording.h"
#include "smtptap/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static const enum store_kind kinds[] = {
	STORE_KIND_CONNECT, STORE_KIND_COMMAND, STORE_KIND_REPLY, STORE_KIND_DATA,
	STORE_KIND_AUTH,    STORE_KIND_ACTION,  STORE_KIND_TLS,
};

/* A unit's label keeps what the client sent but the final line ending
 * (a line cut short, or bytes left at the close, may hold more). */
static void
check_label(const char *buf, size_t bufsz, bool one_line)
{
	size_t n = strnlen(buf, bufsz);

	if (n >= bufsz || (one_line && memchr(buf, '\n', n) != NULL))
		abort();
}

static void
check_made_reply(const struct mock_reply *r)
{
	size_t i;

	if (r->p != r->buf)
		return; /* the recording's own bytes */
	if (r->len < 6 || r->len >= sizeof(r->buf) || r->p[r->len - 2] != '\r' || r->p[r->len - 1] != '\n')
		abort();
	for (i = 0; i + 2 < r->len; i++) {
		unsigned char c = (unsigned char)r->p[i];

		if (c < 0x20 || c >= 0x7f)
			abort();
	}
}

static void
check_recording(const struct recording *r, int64_t connect_seq)
{
	char label[256];
	size_t i, g, n = 0;

	for (g = 0; g < r->ngroups; g++) {
		if (r->groups[g].first != n || r->groups[g].count == 0)
			abort();
		n += r->groups[g].count;
	}
	if (n != r->nunits)
		abort();
	for (i = 0; i < r->nunits; i++) {
		const struct rec_unit *u = &r->units[i];
		int k[2] = { u->reply, u->client_reply };

		if (u->last_seq < u->seq || (i > 0 && u->seq <= r->units[i - 1].last_seq))
			abort();
		if (u->group >= r->ngroups || i < r->groups[u->group].first ||
		    i >= r->groups[u->group].first + r->groups[u->group].count)
			abort();
		if (u->expects_reply && (!u->complete || u->after_starttls))
			abort();
		for (int j = 0; j < 2; j++) {
			if (k[j] < -1 || k[j] >= (int)r->nreplies)
				abort();
			if (k[j] >= 0 && (r->replies[k[j]].answers_seq < u->seq || r->replies[k[j]].answers_seq > u->last_seq))
				abort();
		}
		recording_unit_label(u, label, sizeof(label));
		check_label(label, sizeof(label), false);
	}
	if (r->links && r->greeting >= 0 && r->replies[r->greeting].answers_seq != connect_seq)
		abort();
	for (i = 0; i < r->nreplies; i++) {
		const struct rec_reply *a = &r->replies[i], *b = &r->replies[(i + 1) % r->nreplies];

		recording_reply_label(a->raw, a->len, label, sizeof(label));
		check_label(label, sizeof(label), true);
		if (recording_compare(a->raw, a->len, a->raw, a->len, true) != 0)
			abort();
		if (recording_compare(a->raw, a->len, b->raw, b->len, true) !=
		    recording_compare(b->raw, b->len, a->raw, a->len, true))
			abort();
		if (recording_compare(a->raw, a->len, b->raw, b->len, false) !=
		    (recording_compare(a->raw, a->len, b->raw, b->len, true) & ~(unsigned)REC_DIFF_TEXT))
			abort();
	}
}

/* The mock, fed a client's lines: commands, AUTH lines when the last
 * reply was 334, and message ends for lines that are ".". */
static void
run_mock(const struct recording *r, const uint8_t *p, size_t len)
{
	struct mock *m = mock_new(r);
	struct mock_reply out;
	size_t start = 0, i;
	bool auth = false;

	if (m == NULL)
		return;
	mock_greeting(m, &out);
	check_made_reply(&out);
	for (i = 0; i <= len; i++) {
		const char *line = (const char *)p + start;
		size_t n = i - start;
		struct smtp_cmd cmd;

		if (i < len && p[i] != '\n')
			continue;
		start = i + 1;
		if (n == 1 && line[0] == '.') {
			mock_data_end(m, &out);
		} else if (auth) {
			mock_auth_line(m, &out);
		} else if (smtp_parse_command(line, n, &cmd) < 0) {
			continue;
		} else if (cmd.verb == SMTP_VERB_STARTTLS) {
			if (mock_starttls(m, &out))
				continue;
		} else if (cmd.verb == SMTP_VERB_BDAT && cmd.bdat_ok) {
			mock_bdat_chunk(m, &cmd, &out);
		} else {
			mock_command(m, &cmd, line, n, &out);
		}
		check_made_reply(&out);
		auth = out.len >= 3 && memcmp(out.p, "334", 3) == 0;
	}
	mock_free(m);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct reader_session row = { .id = 1, .mode = "relay" };
	struct recording *r = recording_new(1, 0);
	int64_t seq = 0, connect_seq = 0;
	size_t pos = 0;

	if (r == NULL || recording_session(r, &row) < 0) {
		recording_free(r);
		return 0;
	}
	while (pos + 4 <= size) {
		uint8_t head = data[pos], flags = data[pos + 1], back = data[pos + 2];
		size_t len = data[pos + 3];
		struct reader_event ev;

		pos += 4;
		if (len == 0 && (head & 7) == 7)
			break; /* the rest is the mock's client */
		if (len > size - pos)
			len = size - pos;
		memset(&ev, 0, sizeof(ev));
		ev.seq = ++seq;
		ev.t_us = seq * 1000;
		ev.side = (enum store_side)((head >> 3) % 3);
		ev.kind = kinds[(head & 7) % (sizeof(kinds) / sizeof(kinds[0]))];
		ev.flags = flags | ((head & 0x80) ? STORE_F_PIPELINED : 0);
		ev.message_row = (head >> 6) & 1;
		ev.answers_seq = back == 0 || back >= seq ? 0 : seq - back;
		ev.raw = len > 0 ? data + pos : NULL;
		ev.raw_len = len;
		if (ev.kind == STORE_KIND_CONNECT && connect_seq == 0)
			connect_seq = ev.seq;
		pos += len;
		if (recording_add(r, &ev) < 0)
			break;
	}
	recording_finish(r);
	if (!r->failed) {
		check_recording(r, connect_seq);
		if (pos <= size)
			run_mock(r, data + pos, size - pos);
	}
	recording_free(r);
	return 0;
}
