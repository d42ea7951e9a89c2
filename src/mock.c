/*
 * mock.c - see mock.h: replies from a recording, command by command.
 */
#include "smtptap/mock.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What of a client's line goes into a reply or a note. */
#define MOCK_LABEL_MAX 160

struct mock {
	const struct recording *rec;
	size_t next; /* the unit expected next */
};

static const struct rec_unit *mock_expected(struct mock *m);
static void mock_recorded(struct mock *m, const struct rec_unit *u, struct mock_reply *out);
static void mock_put(struct mock_reply *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void mock_clean(char *dst, size_t dstsz, const char *src, size_t len);
static void mock_mismatch(struct mock *m, const char *got, struct mock_reply *out, int code);
static bool mock_same(const struct rec_unit *u, const struct smtp_cmd *cmd);

struct mock *
mock_new(const struct recording *rec)
{
	struct mock *m = calloc(1, sizeof(*m));

	if (m != NULL)
		m->rec = rec;
	return m;
}

void
mock_free(struct mock *m)
{
	free(m);
}

/* The next unit a server answered (bytes that got no reply, such as a
 * line cut short at the end, are not expected of a client). */
static const struct rec_unit *
mock_expected(struct mock *m)
{
	while (m->next < m->rec->nunits && !m->rec->units[m->next].expects_reply)
		m->next++;
	return m->next < m->rec->nunits ? &m->rec->units[m->next] : NULL;
}

static void
mock_put(struct mock_reply *out, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out->buf, sizeof(out->buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(out->buf)) {
		/* never cut the line ending off */
		n = (int)sizeof(out->buf) - 1;
		memcpy(out->buf + n - 2, "\r\n", 2);
	}
	out->p = out->buf;
	out->len = (size_t)n;
}

/* Printable ASCII only (a reply line must not carry a client's control
 * bytes, nor a note a terminal's), cut with "...". */
static void
mock_clean(char *dst, size_t dstsz, const char *src, size_t len)
{
	size_t i, n = 0;

	while (len > 0 && (src[len - 1] == '\n' || src[len - 1] == '\r'))
		len--;
	for (i = 0; i < len && n + 4 < dstsz && n < MOCK_LABEL_MAX; i++) {
		unsigned char c = (unsigned char)src[i];

		dst[n++] = c >= 0x20 && c < 0x7f && c != '"' ? (char)c : '?';
	}
	if (i < len && n + 4 <= dstsz) {
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = '\0';
}

/* The reply the recorded client was told for u, and the recording moves on. */
static void
mock_recorded(struct mock *m, const struct rec_unit *u, struct mock_reply *out)
{
	const struct recording *rec = m->rec;
	int k = u->client_reply >= 0 ? u->client_reply : u->reply;

	out->note[0] = '\0';
	m->next = (size_t)(u - rec->units) + 1;
	if (k >= 0 && rec->replies[k].len > 0) {
		out->p = rec->replies[k].raw;
		out->len = rec->replies[k].len;
		return;
	}
	mock_put(out, "451 4.3.0 smtptap mock: session %" PRId64 " recorded no reply here\r\n", rec->session_id);
}

/* `got` is what the client sent instead of what was expected. */
static void
mock_mismatch(struct mock *m, const char *got, struct mock_reply *out, int code)
{
	const struct rec_unit *u = mock_expected(m);
	char want[MOCK_LABEL_MAX + 8], label[MOCK_LABEL_MAX * 2];

	if (u == NULL) {
		mock_put(out, "503 5.5.1 smtptap mock: session %" PRId64 " recorded nothing more (got %s)\r\n",
			 m->rec->session_id, got);
		snprintf(out->note, sizeof(out->note),
			 "mock: the client sent %s after the end of recorded session %" PRId64 ": answered 503", got,
			 m->rec->session_id);
		return;
	}
	recording_unit_label(u, label, sizeof(label));
	mock_clean(want, sizeof(want), label, strlen(label));
	mock_put(out, "%d 5.5.1 smtptap mock: expected \"%s\" (command %zu of session %" PRId64 "), got %s\r\n", code,
		 want, m->next + 1, m->rec->session_id, got);
	snprintf(out->note, sizeof(out->note),
		 "mock: the client sent %s where session %" PRId64 " recorded \"%s\" (command %zu): answered %d", got,
		 m->rec->session_id, want, m->next + 1, code);
}

static bool
mock_same(const struct rec_unit *u, const struct smtp_cmd *cmd)
{
	struct smtp_cmd r;

	if (u->kind != REC_UNIT_COMMAND || smtp_parse_command(u->line, u->len, &r) < 0 || r.verb != cmd->verb)
		return false;
	switch (cmd->verb) {
	case SMTP_VERB_UNKNOWN:
		return r.verb_text.len == cmd->verb_text.len &&
		       strncasecmp(r.verb_text.p, cmd->verb_text.p, r.verb_text.len) == 0;
	case SMTP_VERB_MAIL:
	case SMTP_VERB_RCPT:
		return r.has_path == cmd->has_path && r.path.len == cmd->path.len &&
		       (r.path.len == 0 || strncasecmp(r.path.p, cmd->path.p, r.path.len) == 0);
	case SMTP_VERB_AUTH:
		return r.auth_mech.len == cmd->auth_mech.len &&
		       strncasecmp(r.auth_mech.p, cmd->auth_mech.p, r.auth_mech.len) == 0;
	default:
		return true;
	}
}

void
mock_greeting(struct mock *m, struct mock_reply *out)
{
	const struct recording *rec = m->rec;
	int k = rec->greeting_client >= 0 ? rec->greeting_client : rec->greeting;

	out->note[0] = '\0';
	if (k >= 0 && rec->replies[k].len > 0) {
		out->p = rec->replies[k].raw;
		out->len = rec->replies[k].len;
		return;
	}
	mock_put(out, "220 smtptap mock of session %" PRId64 " ESMTP\r\n", rec->session_id);
}

void
mock_command(struct mock *m, const struct smtp_cmd *cmd, const char *line, size_t len, struct mock_reply *out)
{
	const struct rec_unit *u = mock_expected(m);
	char got[MOCK_LABEL_MAX + 8], quoted[MOCK_LABEL_MAX + 16];

	out->note[0] = '\0';
	if (u != NULL && mock_same(u, cmd)) {
		mock_recorded(m, u, out);
		return;
	}
	mock_clean(got, sizeof(got), line, len);
	snprintf(quoted, sizeof(quoted), "\"%s\"", got);
	if (cmd->verb == SMTP_VERB_QUIT) {
		/* However far the client got, it may leave. */
		if (u == NULL) {
			mock_put(out, "221 2.0.0 smtptap mock: bye\r\n");
			return;
		}
		mock_mismatch(m, quoted, out, 503);
		mock_put(out, "221 2.0.0 smtptap mock: bye (session %" PRId64 " recorded more)\r\n", m->rec->session_id);
		return;
	}
	mock_mismatch(m, quoted, out, 503);
}

void
mock_auth_line(struct mock *m, struct mock_reply *out)
{
	const struct rec_unit *u = mock_expected(m);

	out->note[0] = '\0';
	if (u != NULL && u->kind == REC_UNIT_AUTH) {
		mock_recorded(m, u, out);
		return;
	}
	mock_mismatch(m, "an AUTH response line", out, 503);
}

void
mock_data_end(struct mock *m, struct mock_reply *out)
{
	const struct rec_unit *u = mock_expected(m);

	out->note[0] = '\0';
	if (u != NULL && u->kind == REC_UNIT_DATA) {
		mock_recorded(m, u, out);
		return;
	}
	mock_mismatch(m, "message content", out, 554);
}

void
mock_bdat_chunk(struct mock *m, const struct smtp_cmd *cmd, struct mock_reply *out)
{
	const struct rec_unit *u = mock_expected(m);
	char got[64];

	out->note[0] = '\0';
	if (u != NULL && u->kind == REC_UNIT_COMMAND && u->bdat) {
		mock_recorded(m, u, out);
		return;
	}
	snprintf(got, sizeof(got), "\"BDAT %" PRIu64 "%s\"", cmd->bdat_size, cmd->bdat_last ? " LAST" : "");
	mock_mismatch(m, got, out, 503);
}

bool
mock_starttls(struct mock *m, struct mock_reply *out)
{
	const struct rec_unit *u = mock_expected(m);

	out->note[0] = '\0';
	if (u != NULL && u->kind == REC_UNIT_COMMAND && u->verb == SMTP_VERB_STARTTLS) {
		m->next++;
		return true;
	}
	mock_mismatch(m, "\"STARTTLS\"", out, 503);
	return false;
}
