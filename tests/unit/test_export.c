/*
 * test_export.c - unit tests for the .eml and mboxrd writers (src/export.c).
 *
 * The mboxrd filter is compared with a plain line-by-line reference over
 * hand-picked cases, every split point, and random input.  The .eml writer
 * runs against a real database in a fresh /tmp directory, filled through
 * the store's write API the way the proxy fills it: a message's wire bytes
 * (dot-stuffed, with the terminator) cut into uneven data events.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <unistd.h>

#include "smtptap/export.h"
#include "smtptap/reader.h"
#include "smtptap/store.h"

struct fixture {
	char dir[64];
	char db[128];
};

struct bytes {
	char *p;
	size_t len;
};

static int setup_dir(void **state);
static int teardown_dir(void **state);
static void ref_mboxrd(const char *in, size_t len, struct bytes *out);
static void run_mboxrd(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct bytes *out);
static void check_mboxrd(const char *in, size_t len);
static void stuff(const char *msg, size_t len, struct bytes *wire);
static int64_t add_message(struct store *st, int64_t sid, int idx, int64_t *seq, const char *transport,
			   const char *mail_from, const char *wire, size_t wlen, size_t maxchunk, bool complete,
			   uint64_t size);
static struct reader *reader_ok(const char *db);
static void export_to(struct reader *rd, const struct export_message *m, bool mbox, struct bytes *out);

/* ------------------------------------------------------------------------
 * Helpers.
 */

static int
setup_dir(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	if (fx == NULL)
		return -1;
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/smtptap-export-XXXXXX");
	if (mkdtemp(fx->dir) == NULL) {
		free(fx);
		return -1;
	}
	snprintf(fx->db, sizeof(fx->db), "%s/test.db", fx->dir);
	*state = fx;
	return 0;
}

static int
teardown_dir(void **state)
{
	struct fixture *fx = *state;
	struct dirent *de;
	char path[512];
	DIR *d;

	if ((d = opendir(fx->dir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", fx->dir, de->d_name);
			unlink(path);
		}
		closedir(d);
	}
	rmdir(fx->dir);
	free(fx);
	return 0;
}

/* Reference: split into lines, quote each one matching ^>*From , end
 * with a newline if the input did not. */
static void
ref_mboxrd(const char *in, size_t len, struct bytes *out)
{
	size_t i = 0, j, k;

	out->p = malloc(2 * len + 2);
	assert_non_null(out->p);
	out->len = 0;
	while (i < len) {
		for (j = i; j < len && in[j] != '\n'; j++)
			;
		if (j < len)
			j++; /* the line with its LF */
		for (k = i; k < j && in[k] == '>'; k++)
			;
		if (j - k >= 5 && memcmp(in + k, "From ", 5) == 0)
			out->p[out->len++] = '>';
		memcpy(out->p + out->len, in + i, j - i);
		out->len += j - i;
		i = j;
	}
	if (out->len > 0 && out->p[out->len - 1] != '\n')
		out->p[out->len++] = '\n';
}

/* The filter fed in pieces ending at cuts[] (ascending). */
static void
run_mboxrd(const char *in, size_t len, const size_t *cuts, size_t ncuts, struct bytes *out)
{
	struct export_mboxrd q;
	size_t i, at = 0;
	FILE *f;

	out->p = NULL;
	out->len = 0;
	f = open_memstream(&out->p, &out->len);
	assert_non_null(f);
	export_mboxrd_init(&q, f);
	for (i = 0; i < ncuts; i++) {
		assert_int_equal(export_mboxrd_write(&q, in + at, cuts[i] - at), 0);
		at = cuts[i];
	}
	assert_int_equal(export_mboxrd_write(&q, in + at, len - at), 0);
	assert_int_equal(export_mboxrd_finish(&q), 0);
	assert_int_equal(fclose(f), 0);
}

/* Whole, at every single split point, and byte by byte. */
static void
check_mboxrd(const char *in, size_t len)
{
	struct bytes want, got;
	size_t cut, *cuts;

	ref_mboxrd(in, len, &want);
	run_mboxrd(in, len, NULL, 0, &got);
	assert_int_equal(got.len, want.len);
	assert_memory_equal(got.p, want.p, want.len);
	free(got.p);
	for (cut = 0; cut <= len; cut++) {
		run_mboxrd(in, len, &cut, 1, &got);
		assert_int_equal(got.len, want.len);
		assert_memory_equal(got.p, want.p, want.len);
		free(got.p);
	}
	cuts = malloc((len + 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (cut = 0; cut < len; cut++)
		cuts[cut] = cut;
	run_mboxrd(in, len, cuts, len, &got);
	assert_int_equal(got.len, want.len);
	assert_memory_equal(got.p, want.p, want.len);
	free(got.p);
	free(cuts);
	free(want.p);
}

/* SMTP DATA transparency (RFC 5321 4.5.2): double each line-start dot,
 * then the ".\r\n" terminator (after a CRLF the message lacks one). */
static void
stuff(const char *msg, size_t len, struct bytes *wire)
{
	size_t i;
	bool bol = true;

	wire->p = malloc(2 * len + 8);
	assert_non_null(wire->p);
	wire->len = 0;
	for (i = 0; i < len; i++) {
		if (bol && msg[i] == '.')
			wire->p[wire->len++] = '.';
		wire->p[wire->len++] = msg[i];
		/* RFC 5321: lines end with CRLF only; a dot after a bare LF
		 * is not at a line start and is not stuffed. */
		bol = msg[i] == '\n' && i > 0 && msg[i - 1] == '\r';
	}
	if (!bol) {
		memcpy(wire->p + wire->len, "\r\n", 2);
		wire->len += 2;
	}
	memcpy(wire->p + wire->len, ".\r\n", 3);
	wire->len += 3;
}

/* Record one message whose wire bytes are cut into data events of 1 to
 * maxchunk bytes (a fixed pseudo-random pattern). */
static int64_t
add_message(struct store *st, int64_t sid, int idx, int64_t *seq, const char *transport, const char *mail_from,
	    const char *wire, size_t wlen, size_t maxchunk, bool complete, uint64_t size)
{
	struct store_transaction tx;
	struct store_rcpt rcpt;
	struct store_message m;
	struct store_message_end end;
	struct store_event ev;
	uint32_t lcg = 99u + (uint32_t)idx;
	size_t off, n;

	memset(&tx, 0, sizeof(tx));
	tx.session_id = sid;
	tx.idx = idx;
	tx.started_us = 1700000000000000LL + idx;
	tx.mail_from = mail_from;
	store_transaction_open(st, &tx);
	memset(&rcpt, 0, sizeof(rcpt));
	rcpt.session_id = sid;
	rcpt.transaction_idx = idx;
	rcpt.idx = 1;
	rcpt.address = "rcpt@example.org";
	rcpt.reply_code = 250;
	rcpt.reply = "250 2.1.5 Ok";
	store_rcpt_add(st, &rcpt);
	memset(&m, 0, sizeof(m));
	m.id = store_message_new_id(st);
	m.session_id = sid;
	m.transaction_idx = idx;
	m.idx = idx;
	m.started_us = 1700000000000000LL + idx;
	m.mail_from = mail_from;
	m.transport = transport;
	store_message_open(st, &m);
	for (off = 0; off < wlen; off += n) {
		lcg = lcg * 1103515245u + 12345u;
		n = 1 + (size_t)((lcg >> 8) % maxchunk);
		if (n > wlen - off)
			n = wlen - off;
		memset(&ev, 0, sizeof(ev));
		ev.session_id = sid;
		ev.seq = ++*seq;
		ev.t_us = m.started_us + (int64_t)off;
		ev.side = STORE_SIDE_CLIENT;
		ev.kind = STORE_KIND_DATA;
		ev.message_row = m.id;
		ev.raw = wire + off;
		ev.raw_len = n;
		store_event_add(st, &ev);
	}
	memset(&end, 0, sizeof(end));
	end.id = m.id;
	end.ended_us = m.started_us + 1000;
	end.size = size;
	end.complete = complete;
	end.reply_code = 250;
	end.reply = "250 2.0.0 Ok";
	store_message_close(st, &end);
	return m.id;
}

static struct reader *
reader_ok(const char *db)
{
	struct reader *rd;
	char err[256];

	rd = reader_open(db, err, sizeof(err));
	if (rd == NULL)
		fail_msg("reader_open(%s): %s", db, err);
	return rd;
}

static void
export_to(struct reader *rd, const struct export_message *m, bool mbox, struct bytes *out)
{
	char err[256];
	FILE *f;
	int r;

	out->p = NULL;
	out->len = 0;
	f = open_memstream(&out->p, &out->len);
	assert_non_null(f);
	r = mbox ? export_write_mbox(rd, m, f, err, sizeof(err)) : export_write_eml(rd, m, f, err, sizeof(err));
	if (r != EXPORT_OK)
		fail_msg("export of message %d: %d %s", m->idx, r, err);
	assert_int_equal(fclose(f), 0);
}

/* ------------------------------------------------------------------------
 * mboxrd quoting.
 */

static void
test_mboxrd_cases(void **state)
{
	static const char *cases[] = {
		"",
		"From x\n",
		"From x\r\nbody\r\n",
		"a\nFrom me\n>From you\n>>From them\nFrom\nFromage\n From \nxFrom \n",
		">>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>From deep\n",
		">>>>\n>> Fro\n>F\n>\n\n\r\n",
		"no final newline",
		"ends with From ",
		"ends with\nFrom ",
		"ends with\n>>Fro",
		"\n\n\nFrom \n",
		"mid line From is fine\n",
		"Subject: x\r\n\r\nFrom the start\r\n>From quoted\r\n",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_mboxrd(cases[i], strlen(cases[i]));
}

static void
test_mboxrd_exact(void **state)
{
	struct bytes got;
	const char *in = "From a\n>From b\r\nx From c\n>>From d";

	(void)state;
	run_mboxrd(in, strlen(in), NULL, 0, &got);
	assert_int_equal(got.len, strlen(">From a\n>>From b\r\nx From c\n>>>From d\n"));
	assert_memory_equal(got.p, ">From a\n>>From b\r\nx From c\n>>>From d\n", got.len);
	free(got.p);
}

static void
test_mboxrd_random(void **state)
{
	static const char alphabet[] = ">>>From \n\r\nxF";
	char buf[48];
	uint32_t seed = 4242;
	size_t i, k, len;

	(void)state;
	for (i = 0; i < 3000; i++) {
		len = i % sizeof(buf);
		for (k = 0; k < len; k++) {
			seed = seed * 1103515245u + 12345u;
			buf[k] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
		}
		check_mboxrd(buf, len);
	}
}

/* A million '>' held back costs counters, not memory, and comes out
 * unchanged (or with one more when "From " follows). */
static void
test_mboxrd_long_prefix(void **state)
{
	const size_t n = 1000000;
	struct bytes got;
	char *in;

	(void)state;
	in = malloc(n + 16);
	assert_non_null(in);
	memset(in, '>', n);
	memcpy(in + n, "From x\n", 7);
	run_mboxrd(in, n + 7, NULL, 0, &got);
	assert_int_equal(got.len, n + 8);
	assert_int_equal(got.p[0], '>');
	assert_memory_equal(got.p + 1, in, n + 7);
	free(got.p);
	memcpy(in + n, "Frog\n", 5);
	run_mboxrd(in, n + 5, NULL, 0, &got);
	assert_int_equal(got.len, n + 5);
	assert_memory_equal(got.p, in, n + 5);
	free(got.p);
	free(in);
}

static void
test_mboxrd_write_error(void **state)
{
	struct export_mboxrd q;
	FILE *f;

	(void)state;
	if ((f = fopen("/dev/full", "w")) == NULL)
		skip();
	setvbuf(f, NULL, _IONBF, 0);
	export_mboxrd_init(&q, f);
	assert_int_equal(export_mboxrd_write(&q, "hello\n", 6), -1);
	assert_int_equal(q.err, ENOSPC);
	assert_int_equal(export_mboxrd_write(&q, "more\n", 5), -1);
	fclose(f);
}

static void
test_mbox_from_line(void **state)
{
	char buf[128];

	(void)state;
	export_mbox_from_line(buf, sizeof(buf), "", 0);
	assert_string_equal(buf, "From MAILER-DAEMON Thu Jan  1 00:00:00 1970");
	export_mbox_from_line(buf, sizeof(buf), NULL, 1700000000123456LL);
	assert_string_equal(buf, "From MAILER-DAEMON Tue Nov 14 22:13:20 2023");
	export_mbox_from_line(buf, sizeof(buf), "alice@example.org", 951782400000000LL);
	assert_string_equal(buf, "From alice@example.org Tue Feb 29 00:00:00 2000");
	/* A quoted local part must not add words to the line. */
	export_mbox_from_line(buf, sizeof(buf), "\"a b\tc\"@x", 0);
	assert_string_equal(buf, "From \"a_b_c\"@x Thu Jan  1 00:00:00 1970");
	/* Truncated, but terminated. */
	export_mbox_from_line(buf, 12, "someone@example.org", 0);
	assert_string_equal(buf, "From someon");
}

/* ------------------------------------------------------------------------
 * Against a real database.
 */

static void
test_eml_unstuffing_roundtrip(void **state)
{
	static const char *msgs[] = {
		"Subject: plain\r\n\r\nhello\r\n",
		"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n...\r\n",
		"Subject: no final newline\r\n\r\nlast line",
		"",
		".",
		"Subject: bare lf\n\n.dot after bare lf\nend\r\n",
		"Subject: cr\r\n\r\n.\rcr after dot\r\n\r.\r\n",
		"From here\r\n>From there\r\n",
	};
	const size_t nmsgs = sizeof(msgs) / sizeof(msgs[0]);
	struct fixture *fx = *state;
	struct store_session s;
	struct export_message *list;
	struct reader *rd;
	struct bytes wire, got;
	struct store *st;
	char err[256];
	int64_t sid, seq = 0;
	size_t i, n, maxchunk;
	int idx = 0;

	st = store_open(fx->db, err, sizeof(err));
	if (st == NULL)
		fail_msg("store_open: %s", err);
	memset(&s, 0, sizeof(s));
	sid = s.id = store_session_new_id(st);
	s.started_us = 1700000000000000LL;
	s.listener = "127.0.0.1:2525";
	s.client = "127.0.0.1:40000";
	s.mode = "sink";
	store_session_open(st, &s);
	/* Each message three times: one-byte chunks, small uneven ones,
	 * and whole. */
	for (i = 0; i < nmsgs; i++) {
		stuff(msgs[i], strlen(msgs[i]), &wire);
		for (maxchunk = 1; maxchunk <= 4096; maxchunk *= 64)
			add_message(st, sid, ++idx, &seq, "data", "a@b", wire.p, wire.len, maxchunk, true, 0);
		free(wire.p);
	}
	/* BDAT: as stored, whatever the dots. */
	add_message(st, sid, ++idx, &seq, "bdat", "", "..x\r\n.\r\n", 8, 3, true, 8);
	/* Cut short after a line-start dot: the held-back dot is not data. */
	add_message(st, sid, ++idx, &seq, "data", "a@b", "abc\r\n..d\r\n.", 11, 2, false, 9);
	store_session_close(st, sid, s.started_us + 5000000, "quit", NULL);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(export_message_list(rd, sid, &list, &n, err, sizeof(err)), 0);
	assert_int_equal(n, (size_t)idx);
	for (i = 0; i < n; i++) {
		assert_int_equal(list[i].idx, (int)i + 1);
		assert_int_equal(list[i].session_id, sid);
		export_to(rd, &list[i], false, &got);
		if (i < 3 * nmsgs) {
			/* The message as given, plus the CRLF that SMTP adds
			 * to a last line without one. */
			const char *want = msgs[i / 3];
			size_t wlen = strlen(want);
			bool crlf = wlen > 0 && want[wlen - 1] != '\n';

			if (got.len != wlen + (crlf ? 2 : 0) || memcmp(got.p, want, wlen) != 0 ||
			    (crlf && memcmp(got.p + wlen, "\r\n", 2) != 0))
				fail_msg("message %zu (case %zu) differs after export", i + 1, i / 3);
			assert_string_equal(list[i].transport, "data");
			assert_true(list[i].complete);
		} else if (i == 3 * nmsgs) {
			assert_int_equal(got.len, 8);
			assert_memory_equal(got.p, "..x\r\n.\r\n", 8);
			assert_string_equal(list[i].mail_from, "");
		} else {
			assert_int_equal(got.len, 9);
			assert_memory_equal(got.p, "abc\r\n.d\r\n", 9);
			assert_false(list[i].complete);
		}
		free(got.p);
	}
	export_message_list_free(list, n);
	/* A session without messages. */
	assert_int_equal(export_message_list(rd, sid + 100, &list, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_null(list);
	reader_close(rd);
}

static void
test_mbox_from_database(void **state)
{
	const char *msg = "Subject: q\r\n\r\nFrom the top\r\n.From dotted\r\n>From once\r\nend";
	const char *want = "From MAILER-DAEMON Tue Nov 14 22:13:20 2023\n"
			   "Subject: q\r\n\r\n>From the top\r\n.From dotted\r\n>>From once\r\nend\r\n\n";
	struct fixture *fx = *state;
	struct store_session s;
	struct export_message *list;
	struct reader *rd;
	struct bytes wire, got;
	struct store *st;
	char err[256];
	int64_t seq = 0;
	size_t n;
	FILE *f;

	st = store_open(fx->db, err, sizeof(err));
	if (st == NULL)
		fail_msg("store_open: %s", err);
	memset(&s, 0, sizeof(s));
	s.id = store_session_new_id(st);
	s.started_us = 1700000000000000LL;
	s.mode = "sink";
	store_session_open(st, &s);
	stuff(msg, strlen(msg), &wire);
	add_message(st, s.id, 1, &seq, "data", "", wire.p, wire.len, 5, true, strlen(msg) + 2);
	free(wire.p);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(export_message_list(rd, s.id, &list, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 1);
	export_to(rd, &list[0], true, &got);
	assert_int_equal(got.len, strlen(want));
	assert_memory_equal(got.p, want, got.len);
	free(got.p);

	/* A failing output is a write error, not a database one. */
	if ((f = fopen("/dev/full", "w")) != NULL) {
		setvbuf(f, NULL, _IONBF, 0);
		assert_int_equal(export_write_eml(rd, &list[0], f, err, sizeof(err)), EXPORT_EWRITE);
		assert_string_equal(err, strerror(ENOSPC));
		assert_int_equal(export_write_mbox(rd, &list[0], f, err, sizeof(err)), EXPORT_EWRITE);
		fclose(f);
	}
	export_message_list_free(list, n);
	reader_close(rd);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mboxrd_cases),
		cmocka_unit_test(test_mboxrd_exact),
		cmocka_unit_test(test_mboxrd_random),
		cmocka_unit_test(test_mboxrd_long_prefix),
		cmocka_unit_test(test_mboxrd_write_error),
		cmocka_unit_test(test_mbox_from_line),
		cmocka_unit_test_setup_teardown(test_eml_unstuffing_roundtrip, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_mbox_from_database, setup_dir, teardown_dir),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
