/*
 * test_recording.c - a recorded session cut into units, pipelining groups
 * and linked replies (recording.c), the reply comparison, and the mock
 * that plays a recording back (mock.c).  Events are made up here: the
 * builder takes rows, not a database.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/mock.h"
#include "smtptap/recording.h"
#include "smtptap/smtp.h"

/* A session being made: events get seq 1, 2, ... and a time 1 ms apart. */
struct mk {
	struct recording *r;
	int64_t seq, t;
};

static void
mk_init(struct mk *m, unsigned flags)
{
	struct reader_session row = { .id = 7, .mode = "relay", .upstream = "mx.example:25" };

	memset(m, 0, sizeof(*m));
	m->r = recording_new(7, flags);
	assert_non_null(m->r);
	assert_int_equal(recording_session(m->r, &row), 0);
	m->t = 1000000;
}

/* Add an event; returns its seq. */
static int64_t
mk_ev(struct mk *m, enum store_side side, enum store_kind kind, unsigned flags, int64_t msg, int64_t answers,
      const char *raw)
{
	struct reader_event ev = {
		.seq = ++m->seq,
		.t_us = (m->t += 1000),
		.side = side,
		.kind = kind,
		.flags = flags,
		.message_row = msg,
		.answers_seq = answers,
		.raw = raw,
		.raw_len = raw != NULL ? strlen(raw) : 0,
	};

	assert_int_equal(recording_add(m->r, &ev), 0);
	return ev.seq;
}

static int64_t
mk_cmd(struct mk *m, const char *line, unsigned flags)
{
	return mk_ev(m, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, flags, 0, 0, line);
}

static int64_t
mk_reply(struct mk *m, int64_t answers, const char *raw)
{
	return mk_ev(m, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, 0, 0, answers, raw);
}

static int64_t
mk_greeting(struct mk *m)
{
	int64_t c = mk_ev(m, STORE_SIDE_PROXY, STORE_KIND_CONNECT, 0, 0, 0, NULL);

	return mk_reply(m, c, "220 mx.example ESMTP\r\n");
}

static const char *
reply_of(const struct recording *r, size_t unit)
{
	int k = r->units[unit].reply;

	return k >= 0 ? r->replies[k].raw : NULL;
}

/* Relay: a client waits for EHLO, pipelines MAIL/RCPT/RCPT/DATA, sends the
 * content after the 354, then QUIT. */
static void
test_units_groups_and_links(void **state)
{
	struct mk m;
	int64_t ehlo, mail, r1, r2, data, content, quit;
	struct recording *r;

	(void)state;
	mk_init(&m, 0);
	mk_greeting(&m);
	ehlo = mk_cmd(&m, "EHLO c.example\r\n", 0);
	mk_reply(&m, ehlo, "250-mx.example\r\n250 PIPELINING\r\n");
	mail = mk_cmd(&m, "MAIL FROM:<a@example.com>\r\n", 0);
	r1 = mk_cmd(&m, "RCPT TO:<b@example.org>\r\n", 0);
	r2 = mk_cmd(&m, "RCPT TO:<c@example.org>\r\n", 0);
	data = mk_cmd(&m, "DATA\r\n", 0);
	mk_reply(&m, mail, "250 2.1.0 ok\r\n");
	mk_reply(&m, r1, "250 2.1.5 ok\r\n");
	mk_reply(&m, r2, "550 5.1.1 no such user\r\n");
	mk_reply(&m, data, "354 go ahead\r\n");
	mk_ev(&m, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 3, 0, "Subject: x\r\n\r\n..dot\r\n");
	content = mk_ev(&m, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 3, 0, "end\r\n.\r\n");
	mk_reply(&m, content, "250 2.0.0 queued\r\n");
	quit = mk_cmd(&m, "QUIT\r\n", 0);
	mk_reply(&m, quit, "221 bye\r\n");
	r = m.r;
	recording_finish(r);

	assert_true(r->links);
	assert_int_equal(r->nunits, 7);
	assert_int_equal(r->ngroups, 4);
	/* EHLO | MAIL RCPT RCPT DATA | content | QUIT */
	assert_int_equal(r->groups[0].count, 1);
	assert_int_equal(r->groups[1].first, 1);
	assert_int_equal(r->groups[1].count, 4);
	assert_int_equal(r->groups[2].count, 1);
	assert_int_equal(r->groups[3].count, 1);
	/* the client thought 1 ms after each last reply */
	assert_int_equal(r->groups[1].think_us, 1000);
	assert_int_equal(r->units[5].kind, REC_UNIT_DATA);
	assert_true(r->units[5].complete);
	assert_int_equal(r->units[5].data_len, strlen("Subject: x\r\n\r\n..dot\r\n") + strlen("end\r\n.\r\n"));
	assert_int_equal(r->units[5].message_row, 3);
	assert_int_equal(r->units[1].verb, SMTP_VERB_MAIL);
	assert_string_equal(reply_of(r, 3), "550 5.1.1 no such user\r\n");
	assert_string_equal(reply_of(r, 5), "250 2.0.0 queued\r\n");
	assert_string_equal(r->replies[r->greeting].raw, "220 mx.example ESMTP\r\n");
	for (size_t i = 0; i < r->nunits; i++)
		assert_true(r->units[i].expects_reply);
	recording_free(r);
}

/* Sink mode: the replies are recorded between the commands even when the
 * client pipelined; only the flag tells. */
static void
test_pipelined_flag(void **state)
{
	struct mk m;
	int64_t a, b, c;

	(void)state;
	mk_init(&m, 0);
	mk_greeting(&m);
	a = mk_cmd(&m, "MAIL FROM:<a@example.com>\r\n", 0);
	mk_reply(&m, a, "250 ok\r\n");
	b = mk_cmd(&m, "RCPT TO:<b@example.org>\r\n", STORE_F_PIPELINED);
	mk_reply(&m, b, "250 ok\r\n");
	c = mk_cmd(&m, "DATA\r\n", STORE_F_PIPELINED);
	mk_reply(&m, c, "354 go\r\n");
	c = mk_cmd(&m, "NOOP\r\n", 0); /* after a reply, not flagged: it waited */
	mk_reply(&m, c, "250 ok\r\n");
	recording_finish(m.r);
	assert_int_equal(m.r->ngroups, 2);
	assert_int_equal(m.r->groups[0].count, 3);
	assert_int_equal(m.r->groups[1].count, 1);
	recording_free(m.r);
}

static void
test_bdat_chunks_spooled(void **state)
{
	struct mk m;
	int64_t b1, b2;
	char buf[8];

	(void)state;
	mk_init(&m, REC_WITH_DATA);
	mk_greeting(&m);
	b1 = mk_cmd(&m, "BDAT 5\r\n", 0);
	mk_ev(&m, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 9, 0, "ab");
	mk_ev(&m, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 9, 0, "cde");
	b2 = mk_cmd(&m, "BDAT 3 LAST\r\n", STORE_F_PIPELINED);
	mk_ev(&m, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 9, 0, "xyz");
	mk_reply(&m, b1, "250 5 octets\r\n");
	mk_reply(&m, b2, "250 queued\r\n");
	recording_finish(m.r);

	assert_int_equal(m.r->nunits, 2);
	assert_int_equal(m.r->ngroups, 1);
	assert_true(m.r->units[0].bdat && !m.r->units[0].bdat_last);
	assert_true(m.r->units[1].bdat && m.r->units[1].bdat_last);
	assert_true(m.r->units[0].complete && m.r->units[1].complete);
	assert_int_equal(m.r->units[0].data_len, 5);
	assert_int_equal(m.r->units[1].data_len, 3);
	assert_int_equal(recording_data_read(m.r, m.r->units[0].data_off, buf, 5), 0);
	assert_memory_equal(buf, "abcde", 5);
	assert_int_equal(recording_data_read(m.r, m.r->units[1].data_off, buf, 3), 0);
	assert_memory_equal(buf, "xyz", 3);
	assert_int_equal(recording_data_read(m.r, 7, buf, 2), -1); /* past the end */
	assert_string_equal(reply_of(m.r, 0), "250 5 octets\r\n");
	recording_free(m.r);
}

/* Bytes pipelined after STARTTLS are never read as SMTP; a redacted AUTH
 * is noticed; what the client was told is told apart from what the server
 * said. */
static void
test_starttls_auth_and_altered(void **state)
{
	struct mk m;
	int64_t st, ehlo, up, auth;

	(void)state;
	mk_init(&m, 0);
	mk_greeting(&m);
	st = mk_cmd(&m, "STARTTLS\r\n", 0);
	mk_cmd(&m, "EHLO too.early\r\n", STORE_F_DROPPED | STORE_F_PIPELINED);
	mk_reply(&m, st, "220 go\r\n");
	ehlo = mk_cmd(&m, "EHLO c.example\r\n", 0);
	up = mk_ev(&m, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_ALTERED, 0, ehlo, "250-mx\r\n250 STARTTLS\r\n");
	(void)up;
	mk_ev(&m, STORE_SIDE_PROXY, STORE_KIND_REPLY, STORE_F_INJECTED | STORE_F_TO_CLIENT, 0, ehlo, "250 mx\r\n");
	auth = mk_cmd(&m, "AUTH PLAIN [redacted]\r\n", STORE_F_REDACTED);
	mk_reply(&m, auth, "235 2.7.0 ok\r\n");
	mk_cmd(&m, "QUI", STORE_F_INCOMPLETE); /* cut short at the end */
	recording_finish(m.r);

	assert_true(m.r->client_starttls);
	assert_true(m.r->redacted);
	assert_string_equal(m.r->auth_mech, "PLAIN");
	assert_true(m.r->units[1].after_starttls);
	assert_false(m.r->units[1].expects_reply);
	assert_int_equal(m.r->units[1].group, m.r->units[0].group);
	assert_string_equal(reply_of(m.r, 2), "250-mx\r\n250 STARTTLS\r\n");
	assert_string_equal(m.r->replies[m.r->units[2].client_reply].raw, "250 mx\r\n");
	assert_false(m.r->units[4].complete);
	assert_false(m.r->units[4].expects_reply);
	recording_free(m.r);
}

static void
test_compare(void **state)
{
	(void)state;
	assert_int_equal(recording_compare("250 2.1.5 ok\r\n", 14, "250 2.1.5 fine\r\n", 16, false), 0);
	assert_int_equal(recording_compare("250 2.1.5 ok\r\n", 14, "250 2.1.5 fine\r\n", 16, true), REC_DIFF_TEXT);
	assert_int_equal(recording_compare("250 2.1.5 ok\r\n", 14, "550 5.1.1 no\r\n", 14, false),
			 REC_DIFF_CODE | REC_DIFF_ENH);
	assert_int_equal(recording_compare("250 ok\r\n", 8, "250 2.0.0 ok\r\n", 14, false), REC_DIFF_ENH);
	/* line endings aside, the same text */
	assert_int_equal(recording_compare("250-a\r\n250 b\r\n", 14, "250-a\n250 b\n", 12, true), 0);
	assert_int_equal(recording_compare("250-a\r\n250 b\r\n", 14, "250 a\r\n", 7, true), REC_DIFF_TEXT);
}

static void
test_labels(void **state)
{
	struct rec_unit u = { .kind = REC_UNIT_COMMAND };
	char buf[32], line[] = "MAIL FROM:<a@example.com> SIZE=1000000000\r\n";

	(void)state;
	u.line = line;
	u.len = strlen(line);
	recording_unit_label(&u, buf, sizeof(buf));
	assert_true(strlen(buf) < sizeof(buf));
	assert_non_null(strstr(buf, "..."));
	assert_null(strchr(buf, '\r'));
	u.kind = REC_UNIT_DATA;
	u.data_len = 12;
	u.complete = true;
	assert_string_equal(recording_unit_label(&u, buf, sizeof(buf)), "message content (12 bytes)");
	assert_string_equal(recording_reply_label("250-a\r\n250 b\r\n", 14, buf, sizeof(buf)), "250-a");
}

/* The mock plays the recording of test_units_groups_and_links. */
static struct recording *
mock_recording(void)
{
	struct mk m;
	int64_t ehlo, mail, rcpt, data, content, quit;

	mk_init(&m, 0);
	mk_greeting(&m);
	ehlo = mk_cmd(&m, "EHLO c.example\r\n", 0);
	mk_reply(&m, ehlo, "250-mx.example\r\n250 PIPELINING\r\n");
	mail = mk_cmd(&m, "MAIL FROM:<a@example.com>\r\n", 0);
	rcpt = mk_cmd(&m, "RCPT TO:<b@example.org>\r\n", 0);
	data = mk_cmd(&m, "DATA\r\n", 0);
	mk_reply(&m, mail, "250 2.1.0 ok\r\n");
	mk_reply(&m, rcpt, "250 2.1.5 ok\r\n");
	mk_reply(&m, data, "354 go ahead\r\n");
	content = mk_ev(&m, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 3, 0, "x\r\n.\r\n");
	mk_reply(&m, content, "250 2.0.0 queued as Q1\r\n");
	quit = mk_cmd(&m, "QUIT\r\n", 0);
	mk_reply(&m, quit, "221 bye\r\n");
	recording_finish(m.r);
	return m.r;
}

static void
mock_cmd(struct mock *mk, const char *line, struct mock_reply *out)
{
	struct smtp_cmd cmd;

	assert_int_equal(smtp_parse_command(line, strlen(line), &cmd), 0);
	mock_command(mk, &cmd, line, strlen(line), out);
}

static void
assert_mock(const struct mock_reply *r, const char *want, bool note)
{
	assert_true(r->len >= strlen(want));
	assert_memory_equal(r->p, want, strlen(want));
	assert_true(r->p[r->len - 2] == '\r' && r->p[r->len - 1] == '\n');
	assert_int_equal(r->note[0] != '\0', note);
}

static void
test_mock_plays_and_refuses(void **state)
{
	struct recording *rec = mock_recording();
	struct mock *mk = mock_new(rec);
	struct mock_reply r;

	(void)state;
	mock_greeting(mk, &r);
	assert_mock(&r, "220 mx.example ESMTP\r\n", false);
	mock_cmd(mk, "ehlo other.host\r\n", &r); /* the name is not compared */
	assert_mock(&r, "250-mx.example\r\n250 PIPELINING\r\n", false);
	mock_cmd(mk, "MAIL FROM:<mallory@example.net>\r\n", &r);
	assert_mock(&r, "503 5.5.1 smtptap mock: expected \"MAIL FROM:<a@example.com>\" (command 2 of session 7)", true);
	assert_non_null(strstr(r.note, "mallory@example.net"));
	mock_cmd(mk, "mail from:<A@Example.com> SIZE=10\r\n", &r); /* case and parameters aside */
	assert_mock(&r, "250 2.1.0 ok\r\n", false);
	mock_cmd(mk, "RCPT TO:<b@example.org>\r\n", &r);
	assert_mock(&r, "250 2.1.5 ok\r\n", false);
	assert_false(mock_starttls(mk, &r));
	assert_mock(&r, "503 5.5.1 smtptap mock: expected \"DATA\"", true);
	mock_cmd(mk, "DATA\r\n", &r);
	assert_mock(&r, "354 go ahead\r\n", false);
	mock_data_end(mk, &r);
	assert_mock(&r, "250 2.0.0 queued as Q1\r\n", false);
	mock_cmd(mk, "QUIT\r\n", &r);
	assert_mock(&r, "221 bye\r\n", false);
	mock_cmd(mk, "NOOP\r\n", &r);
	assert_mock(&r, "503 5.5.1 smtptap mock: session 7 recorded nothing more", true);
	mock_free(mk);

	/* a QUIT out of place still ends the conversation; a hostile line
	 * never reaches a reply with its control bytes */
	mk = mock_new(rec);
	mock_cmd(mk, "NOOP \033[2J\r\n", &r);
	assert_null(memchr(r.p, '\033', r.len));
	mock_cmd(mk, "QUIT\r\n", &r);
	assert_mock(&r, "221 2.0.0 smtptap mock: bye", true);
	mock_free(mk);
	recording_free(rec);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_units_groups_and_links),
		cmocka_unit_test(test_pipelined_flag),
		cmocka_unit_test(test_bdat_chunks_spooled),
		cmocka_unit_test(test_starttls_auth_and_altered),
		cmocka_unit_test(test_compare),
		cmocka_unit_test(test_labels),
		cmocka_unit_test(test_mock_plays_and_refuses),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
