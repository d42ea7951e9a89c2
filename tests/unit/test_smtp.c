/*
 * test_smtp.c - unit tests for the pure SMTP parsers (src/smtp.c).
 *
 * Every parser input is copied into a buffer of exactly its length, so a
 * read past the end shows up under ASan instead of hitting the literal's
 * NUL.  The DATA scanner is checked against a deliberately different,
 * line-based reference over every short input and every chunk split.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/smtp.h"
#include "under_valgrind.h"

#define NBUFS 64

struct ref_result {
	size_t consumed;
	size_t out_len;
	bool done;
	bool bare_lf, bare_cr, nul;
};

static char *bufs[NBUFS];
static size_t nbufs;

static int teardown_bufs(void **);
static const char *dup_exact(const char *, size_t);
static int cmd(const char *, struct smtp_cmd *);
static int reply(const char *, struct smtp_reply_line *);
static int ehlo_kw(const char *, struct smtp_ehlo_kw *);
static int ehlo_edit(const char *, const char *, bool, size_t, char *, bool *);
static char *ehlo_lines(size_t);
static void check_str(struct smtp_str, const char *, const char *, int);
static void ref_scan(const char *, size_t, char *, struct ref_result *);
static size_t scan_chunks(const char *, size_t, const size_t *, size_t, char *, struct smtp_data *);
static void check_data(const char *, size_t, const char *, size_t, bool, bool);
static void check_splits(const char *, size_t);

#define STR_EQ(s, want) check_str((s), (want), __FILE__, __LINE__)

/* ------------------------------------------------------------------------
 * Helpers.
 */

static int
teardown_bufs(void **state)
{
	(void)state;
	while (nbufs > 0) {
		free(bufs[--nbufs]);
		bufs[nbufs] = NULL;
	}
	return 0;
}

/* A heap copy of exactly `len` bytes, freed after the test. */
static const char *
dup_exact(const char *s, size_t len)
{
	char *p;

	assert_true(nbufs < NBUFS);
	p = malloc(len > 0 ? len : 1);
	assert_non_null(p);
	memcpy(p, s, len);
	bufs[nbufs++] = p;
	return p;
}

static int
cmd(const char *s, struct smtp_cmd *c)
{
	size_t len = strlen(s);

	return smtp_parse_command(dup_exact(s, len), len, c);
}

static int
reply(const char *s, struct smtp_reply_line *r)
{
	size_t len = strlen(s);

	return smtp_parse_reply_line(dup_exact(s, len), len, r);
}

static int
ehlo_kw(const char *s, struct smtp_ehlo_kw *k)
{
	size_t len = strlen(s);

	return smtp_parse_ehlo_keyword(dup_exact(s, len), len, k);
}

static void
check_str(struct smtp_str s, const char *want, const char *file, int line)
{
	size_t wlen = strlen(want);

	if (s.len != wlen || (wlen > 0 && (s.p == NULL || memcmp(s.p, want, wlen) != 0))) {
		fprintf(stderr, "%s:%d: got \"%.*s\" (%zu), want \"%s\"\n", file, line,
			s.p != NULL ? (int)s.len : 0, s.p != NULL ? s.p : "", s.len, want);
		fail();
	}
}

/*
 * Reference DATA scanner over a whole buffer, written line by line rather
 * than as a state machine so that the two can disagree.  Lines end with
 * CRLF only (a bare LF or CR is content).  A trailing partial line "." or
 * ".\r" produces nothing yet: it may still become the terminator.
 */
static void
ref_scan(const char *in, size_t len, char *out, struct ref_result *r)
{
	size_t pos = 0, end, n, k;
	const char *crlf;

	memset(r, 0, sizeof(*r));
	while (pos < len) {
		crlf = NULL;
		for (k = pos; k + 1 < len; k++) {
			if (in[k] == '\r' && in[k + 1] == '\n') {
				crlf = in + k;
				break;
			}
		}
		end = crlf != NULL ? (size_t)(crlf - in) + 2 : len;
		n = end - pos;
		if (in[pos] == '.') {
			if (crlf != NULL && n == 3) {
				r->done = true;
				r->consumed = end;
				return;
			}
			if (crlf == NULL && (n == 1 || (n == 2 && in[pos + 1] == '\r')))
				break;
			memcpy(out + r->out_len, in + pos + 1, n - 1);
			r->out_len += n - 1;
		} else {
			memcpy(out + r->out_len, in + pos, n);
			r->out_len += n;
		}
		for (k = pos; k < end; k++) {
			if (in[k] == '\n' && (k == 0 || in[k - 1] != '\r'))
				r->bare_lf = true;
			if (in[k] == '\r' && k + 1 < len && in[k + 1] != '\n')
				r->bare_cr = true;
			if (in[k] == '\0')
				r->nul = true;
		}
		pos = end;
	}
	r->consumed = len;
}

/*
 * Scan `in` as the chunks whose lengths are in `cuts` (the rest is a last
 * chunk), each into an output buffer of exactly len + 2 bytes as the header
 * allows; concatenate into `out`.  Returns the total consumed.
 */
static size_t
scan_chunks(const char *in, size_t len, const size_t *cuts, size_t ncuts, char *out, struct smtp_data *d)
{
	size_t pos = 0, total_out = 0, k, clen, got, olen;
	char *cbuf, *obuf;

	smtp_data_init(d);
	for (k = 0; k <= ncuts && d->st != SMTP_DATA_DONE; k++) {
		clen = k < ncuts ? cuts[k] : len - pos;
		cbuf = malloc(clen > 0 ? clen : 1);
		obuf = malloc(clen + 2);
		assert_non_null(cbuf);
		assert_non_null(obuf);
		memcpy(cbuf, in + pos, clen);
		olen = (size_t)-1;
		got = smtp_data_scan(d, cbuf, clen, obuf, &olen);
		assert_true(got <= clen);
		assert_true(olen <= clen + 2);
		if (got < clen)
			assert_int_equal(d->st, SMTP_DATA_DONE);
		memcpy(out + total_out, obuf, olen);
		total_out += olen;
		pos += got;
		free(cbuf);
		free(obuf);
	}
	assert_int_equal(d->body_bytes, total_out);
	assert_int_equal(d->wire_bytes, pos);
	return pos;
}

/* One-shot scan of `in` must give `want`, `consumed`, done and bare_lf. */
static void
check_data(const char *in, size_t len, const char *want, size_t consumed, bool done, bool bare_lf)
{
	struct smtp_data d;
	char *out = malloc(len + 2);
	size_t got;

	assert_non_null(out);
	got = scan_chunks(in, len, NULL, 0, out, &d);
	assert_int_equal(got, consumed);
	assert_int_equal(d.body_bytes, strlen(want));
	if (strlen(want) > 0)
		assert_memory_equal(out, want, strlen(want));
	assert_int_equal(d.st == SMTP_DATA_DONE, done);
	assert_int_equal(d.bare_lf, bare_lf);
	free(out);
	check_splits(in, len);
}

/*
 * Every two-way split, every three-way split (for short inputs) and
 * byte-by-byte feeding must match the one-shot scan and the reference.
 */
static void
check_splits(const char *in, size_t len)
{
	struct smtp_data d1, d2;
	struct ref_result ref;
	char *o1 = malloc(len + 2), *o2 = malloc(len + 2), *oref = malloc(len + 2);
	size_t c1, c2, a, b, cuts[2], *ones;

	assert_non_null(o1);
	assert_non_null(o2);
	assert_non_null(oref);
	c1 = scan_chunks(in, len, NULL, 0, o1, &d1);
	ref_scan(in, len, oref, &ref);
	assert_int_equal(c1, ref.consumed);
	assert_int_equal(d1.body_bytes, ref.out_len);
	assert_int_equal(d1.st == SMTP_DATA_DONE, ref.done);
	assert_int_equal(d1.bare_lf, ref.bare_lf);
	assert_int_equal(d1.bare_cr, ref.bare_cr);
	assert_int_equal(d1.nul, ref.nul);
	if (ref.out_len > 0)
		assert_memory_equal(o1, oref, ref.out_len);

	for (a = 0; a <= len; a++) {
		cuts[0] = a;
		c2 = scan_chunks(in, len, cuts, 1, o2, &d2);
		assert_int_equal(c2, c1);
		assert_int_equal(d2.body_bytes, d1.body_bytes);
		assert_int_equal(d2.st, d1.st);
		assert_int_equal(d2.bare_lf, d1.bare_lf);
		assert_int_equal(d2.bare_cr, d1.bare_cr);
		assert_int_equal(d2.nul, d1.nul);
		if (d1.body_bytes > 0)
			assert_memory_equal(o2, o1, d1.body_bytes);
	}
	if (len <= 64) {
		for (a = 0; a <= len; a++) {
			for (b = 0; a + b <= len; b++) {
				cuts[0] = a;
				cuts[1] = b;
				c2 = scan_chunks(in, len, cuts, 2, o2, &d2);
				assert_int_equal(c2, c1);
				assert_int_equal(d2.body_bytes, d1.body_bytes);
				assert_int_equal(d2.bare_lf, d1.bare_lf);
				if (d1.body_bytes > 0)
					assert_memory_equal(o2, o1, d1.body_bytes);
			}
		}
	}
	ones = malloc((len > 0 ? len : 1) * sizeof(*ones));
	assert_non_null(ones);
	for (a = 0; a < len; a++)
		ones[a] = 1;
	c2 = scan_chunks(in, len, ones, len, o2, &d2);
	assert_int_equal(c2, c1);
	assert_int_equal(d2.body_bytes, d1.body_bytes);
	assert_int_equal(d2.st, d1.st);
	assert_int_equal(d2.bare_lf, d1.bare_lf);
	if (d1.body_bytes > 0)
		assert_memory_equal(o2, o1, d1.body_bytes);
	free(ones);
	free(o1);
	free(o2);
	free(oref);
}

#define DATA(in, want, consumed, done, bare) check_data((in), sizeof(in) - 1, (want), (consumed), (done), (bare))

/* ------------------------------------------------------------------------
 * Commands.
 */

static void
test_cmd_empty_lines(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("", &c), -1);
	assert_int_equal(cmd("\r\n", &c), -1);
	assert_int_equal(cmd("\n", &c), -1);
	assert_int_equal(cmd("   \r\n", &c), -1);
	assert_int_equal(cmd(" \t \n", &c), -1);
	assert_int_equal(cmd("\t", &c), -1);
	assert_int_equal(smtp_parse_command(NULL, 0, &c), -1);
}

static void
test_cmd_every_verb(void **state)
{
	static const struct {
		const char *text;
		enum smtp_verb verb;
	} v[] = {
		{ "HELO", SMTP_VERB_HELO }, { "EHLO", SMTP_VERB_EHLO }, { "LHLO", SMTP_VERB_LHLO },
		{ "MAIL", SMTP_VERB_MAIL }, { "RCPT", SMTP_VERB_RCPT }, { "DATA", SMTP_VERB_DATA },
		{ "BDAT", SMTP_VERB_BDAT }, { "RSET", SMTP_VERB_RSET }, { "NOOP", SMTP_VERB_NOOP },
		{ "VRFY", SMTP_VERB_VRFY }, { "EXPN", SMTP_VERB_EXPN }, { "HELP", SMTP_VERB_HELP },
		{ "QUIT", SMTP_VERB_QUIT }, { "STARTTLS", SMTP_VERB_STARTTLS }, { "AUTH", SMTP_VERB_AUTH },
	};
	struct smtp_cmd c;
	char line[64];
	size_t i, j;

	(void)state;
	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		/* As sent, lower case, and alternating case; with CRLF. */
		for (j = 0; j < 3; j++) {
			size_t k, n = strlen(v[i].text);

			for (k = 0; k < n; k++) {
				char ch = v[i].text[k];

				if (j == 1 || (j == 2 && k % 2 == 1))
					ch = (char)(ch - 'A' + 'a');
				line[k] = ch;
			}
			memcpy(line + n, "\r\n", 3);
			assert_int_equal(cmd(line, &c), 0);
			assert_int_equal(c.verb, v[i].verb);
			assert_int_equal(c.verb_text.len, n);
			assert_memory_equal(c.verb_text.p, line, n);
			assert_int_equal(c.arg.len, 0);
			teardown_bufs(NULL);
		}
		assert_string_equal(smtp_verb_name(v[i].verb), v[i].text);
	}
}

static void
test_cmd_unknown_verb(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("XCLIENT ADDR=1.2.3.4\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_UNKNOWN);
	STR_EQ(c.verb_text, "XCLIENT");
	STR_EQ(c.arg, "ADDR=1.2.3.4");
	assert_false(c.has_path);

	assert_int_equal(cmd("GET / HTTP/1.1\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_UNKNOWN);
	STR_EQ(c.verb_text, "GET");
	STR_EQ(c.arg, "/ HTTP/1.1");
}

static void
test_cmd_verb_prefixes_not_matched(void **state)
{
	static const char *const lines[] = {
		"MAI\r\n", "MAILX FROM:<a@b>\r\n", "STARTTLSX\r\n", "STARTTL\r\n", "DAT\r\n",
		"DATAA\r\n", "EHL0 x\r\n", "MAIL:FROM:<a>\r\n", "Q\r\n",
	};
	struct smtp_cmd c;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(cmd(lines[i], &c), 0);
		assert_int_equal(c.verb, SMTP_VERB_UNKNOWN);
		assert_false(c.has_path);
	}
}

static void
test_cmd_terminators(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("EHLO host\r\n", &c), 0);
	STR_EQ(c.arg, "host");
	assert_int_equal(cmd("EHLO host\n", &c), 0);
	STR_EQ(c.arg, "host");
	assert_int_equal(cmd("EHLO host", &c), 0);
	STR_EQ(c.arg, "host");
	assert_int_equal(cmd("QUIT", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_QUIT);
	STR_EQ(c.verb_text, "QUIT");
	STR_EQ(c.arg, "");
	/* Only one terminator is stripped; a CR inside stays in arg. */
	assert_int_equal(cmd("NOOP a\rb\r\n", &c), 0);
	STR_EQ(c.arg, "a\rb");
}

static void
test_cmd_arg_spacing(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("EHLO   client.example.org\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_EHLO);
	STR_EQ(c.arg, "client.example.org");
	assert_int_equal(cmd("HELO\tclient\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_HELO);
	STR_EQ(c.arg, "client");
	/* Trailing blanks belong to the argument as sent. */
	assert_int_equal(cmd("VRFY postmaster  \r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_VRFY);
	STR_EQ(c.arg, "postmaster  ");
	assert_int_equal(cmd("NOOP   \r\n", &c), 0);
	STR_EQ(c.arg, "");
	/* Leading blanks, as typed by hand in telnet, are skipped. */
	assert_int_equal(cmd("  quit\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_QUIT);
	STR_EQ(c.verb_text, "quit");
}

static void
test_cmd_other_verbs_have_no_path(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("VRFY <a@b>\r\n", &c), 0);
	assert_false(c.has_path);
	assert_int_equal(c.nparams_total, 0);
	assert_false(c.bdat_ok);
	assert_int_equal(c.auth_mech.len, 0);
	assert_int_equal(cmd("EXPN list\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_EXPN);
	STR_EQ(c.arg, "list");
	assert_int_equal(cmd("HELP MAIL\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_HELP);
	STR_EQ(c.arg, "MAIL");
}

static void
test_mail_basic(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("MAIL FROM:<alice@example.org>\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_MAIL);
	assert_true(c.has_path);
	STR_EQ(c.path, "alice@example.org");
	STR_EQ(c.arg, "FROM:<alice@example.org>");
	assert_int_equal(c.nparams, 0);
	assert_int_equal(c.nparams_total, 0);
}

static void
test_mail_space_after_colon(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("MAIL FROM: <alice@example.org>\r\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.path, "alice@example.org");
	assert_int_equal(cmd("MAIL FROM:  \t<a@b> SIZE=10\r\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.path, "a@b");
	assert_int_equal(c.nparams, 1);
	STR_EQ(c.params[0].key, "SIZE");
	STR_EQ(c.params[0].value, "10");
}

static void
test_mail_null_sender(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("MAIL FROM:<>\r\n", &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.path.len, 0);
	assert_int_equal(cmd("MAIL FROM:<> BODY=8BITMIME\r\n", &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.path.len, 0);
	assert_int_equal(c.nparams, 1);
	STR_EQ(c.params[0].key, "BODY");
	STR_EQ(c.params[0].value, "8BITMIME");
}

static void
test_mail_case_insensitive(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("mail from:<Alice@Example.ORG>\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_MAIL);
	assert_true(c.has_path);
	STR_EQ(c.path, "Alice@Example.ORG");
	assert_int_equal(cmd("MaIl FrOm:<x@y> size=5\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.params[0].key, "size");
}

static void
test_mail_quoted_local_part(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("MAIL FROM:<\"a>b\"@c.example>\r\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.path, "\"a>b\"@c.example");
	/* Escaped quote inside quotes does not end the quoting. */
	assert_int_equal(cmd("MAIL FROM:<\"a\\\"> b\"@c> SIZE=1\r\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.path, "\"a\\\"> b\"@c");
	assert_int_equal(c.nparams, 1);
	/* Unterminated quote: the '>' is inside it, so no path. */
	assert_int_equal(cmd("MAIL FROM:<\"a>b@c>\r\n", &c), 0);
	assert_false(c.has_path);
	/* Backslash at the very end of the line. */
	assert_int_equal(cmd("MAIL FROM:<\"a\\", &c), 0);
	assert_false(c.has_path);
}

static void
test_mail_params(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("MAIL FROM:<a@b> SIZE=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159\r\n", &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.nparams, 5);
	assert_int_equal(c.nparams_total, 5);
	STR_EQ(c.params[0].key, "SIZE");
	STR_EQ(c.params[0].value, "123");
	STR_EQ(c.params[1].key, "BODY");
	STR_EQ(c.params[1].value, "8BITMIME");
	STR_EQ(c.params[2].key, "SMTPUTF8");
	assert_int_equal(c.params[2].value.len, 0);
	assert_null(c.params[2].value.p);
	STR_EQ(c.params[3].key, "RET");
	STR_EQ(c.params[3].value, "HDRS");
	STR_EQ(c.params[4].key, "ENVID");
	STR_EQ(c.params[4].value, "QQ314159");

	/* Extra blanks between and after parameters. */
	assert_int_equal(cmd("MAIL FROM:<a@b>   SIZE=1\t\tBODY=7BIT   \r\n", &c), 0);
	assert_int_equal(c.nparams, 2);
	STR_EQ(c.params[1].value, "7BIT");
}

static void
test_param_empty_value_and_equals(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("MAIL FROM:<a@b> KEY= =v A=b=c\r\n", &c), 0);
	assert_int_equal(c.nparams, 3);
	STR_EQ(c.params[0].key, "KEY");
	assert_int_equal(c.params[0].value.len, 0);
	assert_non_null(c.params[0].value.p);
	STR_EQ(c.params[1].key, "");
	STR_EQ(c.params[1].value, "v");
	/* Only the first '=' separates. */
	STR_EQ(c.params[2].key, "A");
	STR_EQ(c.params[2].value, "b=c");
}

static void
test_mail_params_overflow(void **state)
{
	struct smtp_cmd c;
	char line[1024];
	size_t n, i;

	(void)state;
	n = (size_t)snprintf(line, sizeof(line), "MAIL FROM:<a@b>");
	for (i = 0; i < SMTP_PARAMS_MAX + 5; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " P%zu=%zu", i, i);
	snprintf(line + n, sizeof(line) - n, "\r\n");
	assert_int_equal(cmd(line, &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.nparams, SMTP_PARAMS_MAX);
	assert_int_equal(c.nparams_total, SMTP_PARAMS_MAX + 5);
	STR_EQ(c.params[0].key, "P0");
	STR_EQ(c.params[SMTP_PARAMS_MAX - 1].value, "15");
}

static void
test_mail_malformed_paths(void **state)
{
	static const char *const lines[] = {
		"MAIL\r\n",
		"MAIL FROM:\r\n",
		"MAIL FROM: \r\n",
		"MAIL FROM:a@b\r\n",
		"MAIL FROM:<a@b\r\n",
		"MAIL FROM:<a@b SIZE=100\r\n",
		"MAIL FROM<a@b>\r\n",
		"MAIL FROM :<a@b>\r\n",
		"MAIL TO:<a@b>\r\n",
		"MAIL FROMX:<a@b>\r\n",
		"MAIL FRO\r\n",
		"MAIL FROM:<a@b>x\r\n",
		"MAIL FROM:<a@b>SIZE=1\r\n",
		"MAIL <a@b>\r\n",
	};
	struct smtp_cmd c;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(cmd(lines[i], &c), 0);
		assert_int_equal(c.verb, SMTP_VERB_MAIL);
		assert_false(c.has_path);
		assert_int_equal(c.nparams_total, 0);
	}
}

static void
test_rcpt_basic(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("RCPT TO:<bob@example.net>\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_RCPT);
	assert_true(c.has_path);
	STR_EQ(c.path, "bob@example.net");
	assert_int_equal(cmd("rcpt to: <bob@example.net>\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.path, "bob@example.net");
	/* RFC 5321 allows the special "Postmaster" without a domain. */
	assert_int_equal(cmd("RCPT TO:<Postmaster>\r\n", &c), 0);
	STR_EQ(c.path, "Postmaster");
}

static void
test_rcpt_dsn_params(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("RCPT TO:<b@c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@c\r\n", &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.nparams, 2);
	assert_int_equal(c.nparams_total, 2);
	STR_EQ(c.params[0].key, "NOTIFY");
	STR_EQ(c.params[0].value, "SUCCESS,FAILURE");
	STR_EQ(c.params[1].key, "ORCPT");
	STR_EQ(c.params[1].value, "rfc822;b@c");
}

static void
test_rcpt_source_route_and_malformed(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("RCPT TO:<@relay1,@relay2:user@host>\r\n", &c), 0);
	assert_true(c.has_path);
	STR_EQ(c.path, "@relay1,@relay2:user@host");
	assert_int_equal(cmd("RCPT FROM:<a@b>\r\n", &c), 0);
	assert_false(c.has_path);
	assert_int_equal(cmd("RCPT TO:\r\n", &c), 0);
	assert_false(c.has_path);
	assert_int_equal(cmd("RCPT\r\n", &c), 0);
	assert_false(c.has_path);
	assert_int_equal(cmd("RCPT TO:<>\r\n", &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.path.len, 0);
	/* A second '>' after the path is not a parameter separator. */
	assert_int_equal(cmd("RCPT TO:<a>>\r\n", &c), 0);
	assert_false(c.has_path);
}

static void
test_bdat_basic(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("BDAT 1000\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_BDAT);
	assert_true(c.bdat_ok);
	assert_int_equal(c.bdat_size, 1000);
	assert_false(c.bdat_last);
	assert_int_equal(cmd("bdat 86 last\r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_int_equal(c.bdat_size, 86);
	assert_true(c.bdat_last);
	assert_int_equal(cmd("BDAT 0 LAST\r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_int_equal(c.bdat_size, 0);
	assert_true(c.bdat_last);
	assert_int_equal(cmd("BDAT 0\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_int_equal(c.bdat_size, 0);
	assert_false(c.bdat_last);
}

static void
test_bdat_limits(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("BDAT 18446744073709551615 LAST\r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_true(c.bdat_size == UINT64_MAX);
	assert_true(c.bdat_last);
	assert_int_equal(cmd("BDAT 18446744073709551616\r\n", &c), 0);
	assert_false(c.bdat_ok);
	assert_int_equal(cmd("BDAT 18446744073709551620\r\n", &c), 0);
	assert_false(c.bdat_ok);
	assert_int_equal(cmd("BDAT 99999999999999999999999999999 LAST\r\n", &c), 0);
	assert_false(c.bdat_ok);
	assert_false(c.bdat_last);
	/* Leading zeros are digits like any other, not an overflow. */
	assert_int_equal(cmd("BDAT 0000000000000000000000000000042\r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_int_equal(c.bdat_size, 42);
}

static void
test_bdat_malformed(void **state)
{
	static const char *const lines[] = {
		"BDAT\r\n", "BDAT \r\n", "BDAT LAST\r\n", "BDAT -1\r\n", "BDAT +5\r\n",
		"BDAT 12x\r\n", "BDAT 0x10\r\n", "BDAT 1.5\r\n", "BDAT 10,000\r\n",
	};
	struct smtp_cmd c;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(cmd(lines[i], &c), 0);
		assert_int_equal(c.verb, SMTP_VERB_BDAT);
		assert_false(c.bdat_ok);
		assert_false(c.bdat_last);
	}
}

static void
test_bdat_last_variants(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("BDAT 5  LaSt  \r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_true(c.bdat_last);
	assert_int_equal(cmd("BDAT 5\tLAST\r\n", &c), 0);
	assert_true(c.bdat_last);
	assert_int_equal(cmd("BDAT 5 LASTX\r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_false(c.bdat_last);
	assert_int_equal(cmd("BDAT 5 LAS\r\n", &c), 0);
	assert_false(c.bdat_last);
	/* The size still counts so the proxy can skip the chunk. */
	assert_int_equal(cmd("BDAT 7 BOGUS\r\n", &c), 0);
	assert_true(c.bdat_ok);
	assert_int_equal(c.bdat_size, 7);
	assert_false(c.bdat_last);
}

static void
test_auth(void **state)
{
	struct smtp_cmd c;

	(void)state;
	assert_int_equal(cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_AUTH);
	STR_EQ(c.auth_mech, "PLAIN");
	STR_EQ(c.auth_initial, "AGFsaWNlAHNlY3JldA==");
	assert_int_equal(cmd("auth login\r\n", &c), 0);
	STR_EQ(c.auth_mech, "login");
	assert_int_equal(c.auth_initial.len, 0);
	/* "=" is the explicit empty initial response (RFC 4954). */
	assert_int_equal(cmd("AUTH PLAIN =\r\n", &c), 0);
	STR_EQ(c.auth_initial, "=");
	assert_int_equal(cmd("AUTH   XOAUTH2   dXNlcj1h  \r\n", &c), 0);
	STR_EQ(c.auth_mech, "XOAUTH2");
	STR_EQ(c.auth_initial, "dXNlcj1h");
	assert_int_equal(cmd("AUTH\r\n", &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_AUTH);
	assert_int_equal(c.auth_mech.len, 0);
	assert_int_equal(c.auth_initial.len, 0);
}

static void
test_cmd_binary_garbage(void **state)
{
	static const char line[] = "M\0AIL FROM:<a\0b>\xff\xfe\r\n";
	struct smtp_cmd c;
	const char *p = dup_exact(line, sizeof(line) - 1);

	(void)state;
	assert_int_equal(smtp_parse_command(p, sizeof(line) - 1, &c), 0);
	assert_int_equal(c.verb, SMTP_VERB_UNKNOWN);
	assert_int_equal(c.verb_text.len, 5);
	assert_int_equal(c.arg.len, 12);
	/* A NUL inside a path is just a byte. */
	p = dup_exact("MAIL FROM:<a\0b>", 15);
	assert_int_equal(smtp_parse_command(p, 15, &c), 0);
	assert_true(c.has_path);
	assert_int_equal(c.path.len, 3);
}

/* ------------------------------------------------------------------------
 * Replies.
 */

static void
test_reply_basic(void **state)
{
	struct smtp_reply_line r;

	(void)state;
	assert_int_equal(reply("250 OK\r\n", &r), 0);
	assert_int_equal(r.code, 250);
	assert_true(r.last);
	STR_EQ(r.text, "OK");
	assert_false(r.has_enhanced);
	assert_int_equal(reply("220 mx.example.org ESMTP Postfix\n", &r), 0);
	assert_int_equal(r.code, 220);
	STR_EQ(r.text, "mx.example.org ESMTP Postfix");
	assert_int_equal(reply("354 End data with <CR><LF>.<CR><LF>", &r), 0);
	assert_int_equal(r.code, 354);
	assert_true(r.last);
}

static void
test_reply_multiline(void **state)
{
	static const char *const lines[] = {
		"250-mx.example.org\r\n", "250-PIPELINING\r\n", "250-SIZE 10240000\r\n", "250 CHUNKING\r\n",
	};
	struct smtp_reply_line r;
	size_t i;

	(void)state;
	for (i = 0; i < 4; i++) {
		assert_int_equal(reply(lines[i], &r), 0);
		assert_int_equal(r.code, 250);
		assert_int_equal(r.last, i == 3);
	}
	STR_EQ(r.text, "CHUNKING");
	assert_int_equal(reply("250-SIZE 10240000\r\n", &r), 0);
	STR_EQ(r.text, "SIZE 10240000");
}

static void
test_reply_bare_code(void **state)
{
	struct smtp_reply_line r;

	(void)state;
	assert_int_equal(reply("250", &r), 0);
	assert_int_equal(r.code, 250);
	assert_true(r.last);
	assert_int_equal(r.text.len, 0);
	assert_int_equal(reply("421\r\n", &r), 0);
	assert_int_equal(r.code, 421);
	assert_true(r.last);
	assert_int_equal(reply("250 \r\n", &r), 0);
	assert_true(r.last);
	assert_int_equal(r.text.len, 0);
	assert_int_equal(reply("250-\r\n", &r), 0);
	assert_false(r.last);
	assert_int_equal(r.text.len, 0);
}

static void
test_reply_code_range(void **state)
{
	static const struct {
		const char *line;
		int code;
	} ok[] = {
		{ "200 x", 200 }, { "599 x", 599 }, { "334 VXNlcm5hbWU6", 334 },
		{ "421 4.7.0 closing", 421 }, { "299 x", 299 }, { "500 x", 500 },
	};
	struct smtp_reply_line r;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_int_equal(reply(ok[i].line, &r), 0);
		assert_int_equal(r.code, ok[i].code);
	}
}

static void
test_reply_malformed(void **state)
{
	static const char *const lines[] = {
		"", "\r\n", "2", "25", "25\r\n", "2500 x", "150 x", "650 x", "099 x", "abc def",
		"25a ok", "2a0 ok", "250x", "250_ok", " 250 ok", "250\tok", ("\xff" "50 x"),
	};
	struct smtp_reply_line r;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(reply(lines[i], &r), -1);
		assert_int_equal(r.code, 0);
		assert_true(r.last);
		assert_false(r.has_enhanced);
	}
	/* The garbage is kept as text for the recorder. */
	assert_int_equal(reply("hello there\r\n", &r), -1);
	STR_EQ(r.text, "hello there");
	assert_int_equal(smtp_parse_reply_line(NULL, 0, &r), -1);
}

static void
test_reply_enhanced_valid(void **state)
{
	struct smtp_reply_line r;

	(void)state;
	assert_int_equal(reply("250 2.1.0 Ok\r\n", &r), 0);
	assert_true(r.has_enhanced);
	assert_int_equal(r.enh_class, 2);
	assert_int_equal(r.enh_subject, 1);
	assert_int_equal(r.enh_detail, 0);
	STR_EQ(r.text, "2.1.0 Ok");
	assert_int_equal(reply("550-5.7.1 Relaying denied\r\n", &r), 0);
	assert_true(r.has_enhanced);
	assert_false(r.last);
	assert_int_equal(r.enh_class, 5);
	assert_int_equal(r.enh_subject, 7);
	assert_int_equal(r.enh_detail, 1);
	assert_int_equal(reply("451 4.3.0\r\n", &r), 0);
	assert_true(r.has_enhanced);
	assert_int_equal(r.enh_class, 4);
	assert_int_equal(reply("554 5.123.456 big numbers", &r), 0);
	assert_true(r.has_enhanced);
	assert_int_equal(r.enh_subject, 123);
	assert_int_equal(r.enh_detail, 456);
	assert_int_equal(reply("250 2.0.00 ok", &r), 0);
	assert_true(r.has_enhanced);
	assert_int_equal(r.enh_detail, 0);
}

static void
test_reply_enhanced_invalid(void **state)
{
	static const char *const lines[] = {
		"250 5.1.0 class mismatch", "550 2.1.0 class mismatch", "250 2.1.0x", "250 2.1", "250 2.1.",
		"250 2..0 x", "250 2.1234.0 x", "250 2.1.1234 x", "250 21.0.0 x", "250 2.1.0.5 x",
		"250 .1.0 x", "250  2.1.0 x", "250 2-1-0 x", "250 2.a.0 x", "250 2.1.0\tx", "250 Ok 2.1.0",
	};
	struct smtp_reply_line r;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
		assert_int_equal(reply(lines[i], &r), 0);
		assert_false(r.has_enhanced);
		assert_int_equal(r.enh_class, 0);
	}
}

/* ------------------------------------------------------------------------
 * EHLO keywords and small helpers.
 */

static void
test_ehlo_keyword_basic(void **state)
{
	struct smtp_ehlo_kw k;

	(void)state;
	assert_int_equal(ehlo_kw("SIZE 10240000", &k), 0);
	STR_EQ(k.keyword, "SIZE");
	STR_EQ(k.params, "10240000");
	assert_int_equal(ehlo_kw("PIPELINING", &k), 0);
	STR_EQ(k.keyword, "PIPELINING");
	assert_int_equal(k.params.len, 0);
	assert_int_equal(ehlo_kw("AUTH PLAIN LOGIN CRAM-MD5", &k), 0);
	STR_EQ(k.keyword, "AUTH");
	STR_EQ(k.params, "PLAIN LOGIN CRAM-MD5");
	assert_int_equal(ehlo_kw("8BITMIME\r\n", &k), 0);
	STR_EQ(k.keyword, "8BITMIME");
	assert_int_equal(k.params.len, 0);
}

static void
test_ehlo_keyword_legacy_and_blanks(void **state)
{
	struct smtp_ehlo_kw k;

	(void)state;
	assert_int_equal(ehlo_kw("AUTH=PLAIN LOGIN", &k), 0);
	STR_EQ(k.keyword, "AUTH");
	STR_EQ(k.params, "PLAIN LOGIN");
	assert_int_equal(ehlo_kw("  STARTTLS  \r\n", &k), 0);
	STR_EQ(k.keyword, "STARTTLS");
	assert_int_equal(k.params.len, 0);
	assert_int_equal(ehlo_kw("SIZE\t  1000  ", &k), 0);
	STR_EQ(k.keyword, "SIZE");
	STR_EQ(k.params, "1000");
}

static void
test_ehlo_keyword_empty(void **state)
{
	struct smtp_ehlo_kw k;

	(void)state;
	assert_int_equal(ehlo_kw("", &k), -1);
	assert_int_equal(ehlo_kw("   ", &k), -1);
	assert_int_equal(ehlo_kw("\r\n", &k), -1);
	assert_int_equal(ehlo_kw("=x", &k), -1);
	assert_int_equal(smtp_parse_ehlo_keyword(NULL, 0, &k), -1);
}

/* ------------------------------------------------------------------------
 * EHLO capability editing (smtp_ehlo_edit).
 */

/*
 * smtp_ehlo_edit on an exact-size heap copy of `in` with an out buffer of
 * exactly `outsz` bytes (0: the documented bound, len + strlen(kw) + 8),
 * so ASan sees a read or write past either.  The output, NUL-terminated,
 * goes to got (at least 8192 bytes) when the result is 1.
 */
static int
ehlo_edit(const char *in, const char *kw, bool want, size_t outsz, char *got, bool *had)
{
	size_t len = strlen(in), outlen = 0;
	char *out;
	int r;

	if (outsz == 0)
		outsz = len + strlen(kw) + 8;
	out = malloc(outsz);
	assert_non_null(out);
	*had = !want; /* must be overwritten */
	got[0] = '\0';
	r = smtp_ehlo_edit(dup_exact(in, len), len, kw, want, out, outsz, &outlen, had);
	if (r == 1) {
		assert_true(outlen <= outsz);
		assert_true(outlen < 8192);
		memcpy(got, out, outlen);
		got[outlen] = '\0';
	}
	free(out);
	return r;
}

static void
test_ehlo_edit_remove_middle(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	assert_int_equal(ehlo_edit("250-mx.example.org Hello [127.0.0.1]\r\n250-SIZE 10240000\r\n"
				   "250-STARTTLS\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
				   "STARTTLS", false, 0, got, &had),
			 1);
	assert_true(had);
	assert_string_equal(got, "250-mx.example.org Hello [127.0.0.1]\r\n250-SIZE 10240000\r\n"
				 "250-PIPELINING\r\n250 8BITMIME\r\n");
	/* Right after the greeting line. */
	assert_int_equal(ehlo_edit("250-mx\r\n250-STARTTLS\r\n250 SIZE 1000\r\n", "STARTTLS", false, 0, got, &had), 1);
	assert_true(had);
	assert_string_equal(got, "250-mx\r\n250 SIZE 1000\r\n");
	/* Offered twice: both go. */
	assert_int_equal(ehlo_edit("250-mx\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 HELP\r\n",
				   "STARTTLS", false, 0, got, &had),
			 1);
	assert_true(had);
	assert_string_equal(got, "250-mx\r\n250-SIZE 1000\r\n250 HELP\r\n");
}

static void
test_ehlo_edit_remove_last(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	/* The line before becomes the last one and takes the ' '. */
	assert_int_equal(ehlo_edit("250-mx\r\n250-SIZE 1000\r\n250 STARTTLS\r\n", "STARTTLS", false, 0, got, &had), 1);
	assert_true(had);
	assert_string_equal(got, "250-mx\r\n250 SIZE 1000\r\n");
	/* Down to the greeting line alone. */
	assert_int_equal(ehlo_edit("250-mx.example.org hi\r\n250 STARTTLS\r\n", "STARTTLS", false, 0, got, &had), 1);
	assert_true(had);
	assert_string_equal(got, "250 mx.example.org hi\r\n");
	/* The last two lines both STARTTLS. */
	assert_int_equal(ehlo_edit("250-mx\r\n250-HELP\r\n250-STARTTLS\r\n250 STARTTLS\r\n", "STARTTLS", false, 0, got,
				   &had),
			 1);
	assert_string_equal(got, "250-mx\r\n250 HELP\r\n");
	/* A keyword line with parameters is still the keyword. */
	assert_int_equal(ehlo_edit("250-mx\r\n250 STARTTLS REQUIRED\r\n", "STARTTLS", false, 0, got, &had), 1);
	assert_string_equal(got, "250 mx\r\n");
}

static void
test_ehlo_edit_add(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	/* Multi-line: after the greeting line, every other line as it was. */
	assert_int_equal(ehlo_edit("250-mx.example.org\r\n250-SIZE 1000\r\n250 8BITMIME\r\n", "STARTTLS", true, 0,
				   got, &had),
			 1);
	assert_false(had);
	assert_string_equal(got, "250-mx.example.org\r\n250-STARTTLS\r\n250-SIZE 1000\r\n250 8BITMIME\r\n");
	/* Single line: the greeting line gets '-', the new line ' '. */
	assert_int_equal(ehlo_edit("250 host\r\n", "STARTTLS", true, 0, got, &had), 1);
	assert_false(had);
	assert_string_equal(got, "250-host\r\n250 STARTTLS\r\n");
	/* The added line takes the greeting line's code. */
	assert_int_equal(ehlo_edit("251 host\r\n", "STARTTLS", true, 0, got, &had), 1);
	assert_string_equal(got, "251-host\r\n251 STARTTLS\r\n");
	/* A bare code is a last line too: it gets its '-' (no text). */
	assert_int_equal(ehlo_edit("250\r\n", "STARTTLS", true, 0, got, &had), 1);
	assert_string_equal(got, "250-\r\n250 STARTTLS\r\n");
	assert_int_equal(ehlo_edit("250\n", "STARTTLS", true, 0, got, &had), 1);
	assert_string_equal(got, "250-\n250 STARTTLS\n");
}

static void
test_ehlo_edit_lf_only(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	assert_int_equal(ehlo_edit("250-mx\n250-STARTTLS\n250 SIZE 1000\n", "STARTTLS", false, 0, got, &had), 1);
	assert_string_equal(got, "250-mx\n250 SIZE 1000\n");
	assert_int_equal(ehlo_edit("250-mx\n250 STARTTLS\n", "STARTTLS", false, 0, got, &had), 1);
	assert_string_equal(got, "250 mx\n");
	assert_int_equal(ehlo_edit("250-mx\n250 SIZE 1000\n", "STARTTLS", true, 0, got, &had), 1);
	assert_string_equal(got, "250-mx\n250-STARTTLS\n250 SIZE 1000\n");
	assert_int_equal(ehlo_edit("250 mx\n", "STARTTLS", true, 0, got, &had), 1);
	assert_string_equal(got, "250-mx\n250 STARTTLS\n");
}

static void
test_ehlo_edit_nothing_to_change(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	/* Wanted and there: had true; unwanted and absent: had false. */
	assert_int_equal(ehlo_edit("250-mx\r\n250-STARTTLS\r\n250 SIZE\r\n", "STARTTLS", true, 0, got, &had), 0);
	assert_true(had);
	assert_int_equal(ehlo_edit("250 mx\r\n", "STARTTLS", false, 0, got, &had), 0);
	assert_false(had);
	assert_int_equal(ehlo_edit("250-mx\r\n250 SIZE\r\n", "STARTTLS", false, 0, got, &had), 0);
	assert_false(had);
	/* Nothing to change needs no room at all. */
	assert_int_equal(ehlo_edit("250-mx\r\n250 STARTTLS\r\n", "STARTTLS", true, 1, got, &had), 0);
	assert_true(had);
	assert_int_equal(ehlo_edit("", "STARTTLS", false, 1, got, &had), 0);
	assert_false(had);
}

static void
test_ehlo_edit_case_insensitive(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	assert_int_equal(ehlo_edit("250-mx\r\n250-starttls\r\n250 SIZE\r\n", "STARTTLS", false, 0, got, &had), 1);
	assert_true(had);
	assert_string_equal(got, "250-mx\r\n250 SIZE\r\n");
	assert_int_equal(ehlo_edit("250-mx\r\n250 StartTls\r\n", "STARTTLS", true, 0, got, &had), 0);
	assert_true(had);
	/* The keyword argument itself in lower case. */
	assert_int_equal(ehlo_edit("250-mx\r\n250 STARTTLS\r\n", "starttls", false, 0, got, &had), 1);
	assert_string_equal(got, "250 mx\r\n");
}

static void
test_ehlo_edit_prefix_not_matched(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	/* STARTTLSX (and STARTTL) are other capabilities. */
	assert_int_equal(ehlo_edit("250-mx\r\n250-STARTTLSX\r\n250 STARTTL\r\n", "STARTTLS", false, 0, got, &had), 0);
	assert_false(had);
	assert_int_equal(ehlo_edit("250-mx\r\n250 STARTTLSX\r\n", "STARTTLS", true, 0, got, &had), 1);
	assert_false(had);
	assert_string_equal(got, "250-mx\r\n250-STARTTLS\r\n250 STARTTLSX\r\n");
}

static void
test_ehlo_edit_greeting_not_keyword(void **state)
{
	char got[8192];
	bool had;

	(void)state;
	/* A server (or its greeting) named STARTTLS offers nothing. */
	assert_int_equal(ehlo_edit("250-STARTTLS\r\n250 SIZE 1000\r\n", "STARTTLS", false, 0, got, &had), 0);
	assert_false(had);
	assert_int_equal(ehlo_edit("250 STARTTLS\r\n", "STARTTLS", false, 0, got, &had), 0);
	assert_false(had);
	assert_int_equal(ehlo_edit("250 STARTTLS\r\n", "STARTTLS", true, 0, got, &had), 1);
	assert_false(had);
	assert_string_equal(got, "250-STARTTLS\r\n250 STARTTLS\r\n");
}

/* n lines: the greeting, n - 2 "250-Xk" capabilities, "250 STARTTLS". */
static char *
ehlo_lines(size_t n)
{
	char *s, *p;
	size_t i;

	s = malloc(n * 16 + 1);
	assert_non_null(s);
	p = s;
	p += sprintf(p, "250-mx\r\n");
	for (i = 1; i + 1 < n; i++)
		p += sprintf(p, "250-X%zu\r\n", i);
	sprintf(p, "250 STARTTLS\r\n");
	return s;
}

static void
test_ehlo_edit_too_many_lines(void **state)
{
	char *in, *out;
	size_t len, outlen = 0;
	bool had;

	(void)state;
	/* 1024 lines is the most handled... */
	in = ehlo_lines(1024);
	len = strlen(in);
	out = malloc(len + 16);
	assert_non_null(out);
	assert_int_equal(smtp_ehlo_edit(in, len, "STARTTLS", false, out, len + 16, &outlen, &had), 1);
	assert_true(had);
	assert_int_equal(outlen, len - strlen("250 STARTTLS\r\n"));
	assert_memory_equal(out + outlen - strlen("250 X1022\r\n"), "250 X1022\r\n", strlen("250 X1022\r\n"));
	free(out);
	free(in);
	/* ... one more is refused, whatever was asked. */
	in = ehlo_lines(1025);
	len = strlen(in);
	out = malloc(len + 16);
	assert_non_null(out);
	assert_int_equal(smtp_ehlo_edit(in, len, "STARTTLS", false, out, len + 16, &outlen, &had), -1);
	assert_int_equal(smtp_ehlo_edit(in, len, "STARTTLS", true, out, len + 16, &outlen, &had), -1);
	free(out);
	free(in);
}

static void
test_ehlo_edit_out_too_small(void **state)
{
	const char *in = "250-mx\r\n250 SIZE 1000\r\n";
	size_t bound = strlen(in) + strlen("STARTTLS") + 8;
	char got[8192];
	bool had;

	(void)state;
	assert_int_equal(ehlo_edit(in, "STARTTLS", true, 8, got, &had), -1);
	assert_int_equal(ehlo_edit(in, "STARTTLS", true, bound - 1, got, &had), -1);
	assert_int_equal(ehlo_edit(in, "STARTTLS", true, bound, got, &had), 1);
	assert_string_equal(got, "250-mx\r\n250-STARTTLS\r\n250 SIZE 1000\r\n");
	assert_int_equal(ehlo_edit("250-mx\r\n250 STARTTLS\r\n", "STARTTLS", false, 4, got, &had), -1);
}

static void
test_str_eq_ci(void **state)
{
	struct smtp_str s;

	(void)state;
	s.p = "StartTLS";
	s.len = 8;
	assert_true(smtp_str_eq_ci(s, "STARTTLS"));
	assert_true(smtp_str_eq_ci(s, "starttls"));
	assert_false(smtp_str_eq_ci(s, "STARTTL"));
	assert_false(smtp_str_eq_ci(s, "STARTTLSX"));
	s.len = 5;
	assert_true(smtp_str_eq_ci(s, "start"));
	s.p = NULL;
	s.len = 0;
	assert_true(smtp_str_eq_ci(s, ""));
	assert_false(smtp_str_eq_ci(s, "x"));
	/* Non-ASCII bytes only match themselves. */
	s.p = "\xc4";
	s.len = 1;
	assert_false(smtp_str_eq_ci(s, "\xe4"));
	assert_true(smtp_str_eq_ci(s, "\xc4"));
	/* '@' and '[' sit next to the letters; no bogus case folding. */
	s.p = "@[";
	s.len = 2;
	assert_false(smtp_str_eq_ci(s, "`{"));
}

static void
test_verb_name(void **state)
{
	(void)state;
	assert_string_equal(smtp_verb_name(SMTP_VERB_UNKNOWN), "UNKNOWN");
	assert_string_equal(smtp_verb_name(SMTP_VERB_STARTTLS), "STARTTLS");
	assert_string_equal(smtp_verb_name((enum smtp_verb)999), "UNKNOWN");
	assert_string_equal(smtp_verb_name((enum smtp_verb)-1), "UNKNOWN");
}

/* ------------------------------------------------------------------------
 * DATA scanning.
 */

static void
test_data_simple(void **state)
{
	(void)state;
	DATA("a\r\n.\r\n", "a\r\n", 6, true, false);
	DATA("Subject: x\r\n\r\nbody\r\n.\r\n", "Subject: x\r\n\r\nbody\r\n", 23, true, false);
}

static void
test_data_empty_message(void **state)
{
	(void)state;
	DATA(".\r\n", "", 3, true, false);
	DATA(".\n", "\n", 2, false, true); /* a stuffed line, not the end */
}

static void
test_data_stops_at_terminator(void **state)
{
	(void)state;
	/* Pipelined commands after the terminator are not consumed. */
	DATA("a\r\n.\r\nQUIT\r\n", "a\r\n", 6, true, false);
	DATA(".\r\nMAIL FROM:<>\r\n", "", 3, true, false);
	DATA("x\n.\nRSET\n", "x\n.\nRSET\n", 9, false, true);
}

static void
test_data_dot_stuffing(void **state)
{
	(void)state;
	DATA("..x\r\n.\r\n", ".x\r\n", 8, true, false);
	DATA("..\r\n.\r\n", ".\r\n", 7, true, false);
	DATA("a\r\n...\r\nb\r\n.\r\n", "a\r\n..\r\nb\r\n", 14, true, false);
	DATA(".x\r\n.\r\n", "x\r\n", 7, true, false);
	/* Unstuffed leading dot (client bug): still just dropped. */
	DATA(".From me\r\n.\r\n", "From me\r\n", 13, true, false);
}

static void
test_data_dot_not_at_line_start(void **state)
{
	(void)state;
	DATA("a.\r\n.\r\n", "a.\r\n", 7, true, false);
	DATA("a .\r\n.\r\n", "a .\r\n", 8, true, false);
	/* A lone CR does not end a line, so this dot is content. */
	DATA("a\r.\r\n.\r\n", "a\r.\r\n", 8, true, false);
	DATA("\r.\r\n.\r\n", "\r.\r\n", 7, true, false);
}

static void
test_data_bare_lf(void **state)
{
	(void)state;
	/* A bare LF ends no line: the dot after it is content, and ".\n"
	 * after a CRLF is a stuffed line, never the terminator (RFC 5321
	 * 4.1.1.4; the SMTP-smuggling shape). */
	DATA("a\n.\r\n", "a\n.\r\n", 5, false, true);
	DATA("a\r\n.\n", "a\r\n\n", 5, false, true);
	DATA("a\r\nb\nc\r\n.\r\n", "a\r\nb\nc\r\n", 11, true, true);
	DATA("\n.\r\n", "\n.\r\n", 4, false, true);
	DATA("a\r\n\r\n.\r\n", "a\r\n\r\n", 8, true, false);
	DATA("a\n\n.\n", "a\n\n.\n", 5, false, true);
	DATA("a\n.\nb\r\n.\r\n", "a\n.\nb\r\n", 10, true, true);
}

/* Bare CR and NUL are noted (not line ends either); the reference in
 * check_splits() checks them for every split. */
static void
test_data_bare_cr_nul(void **state)
{
	struct smtp_data d;
	char out[64];
	size_t olen;

	(void)state;
	smtp_data_init(&d);
	smtp_data_scan(&d, "a\rb\r\n.\r\n", 10, out, &olen);
	assert_true(d.bare_cr);
	assert_false(d.bare_lf);
	assert_false(d.nul);
	smtp_data_init(&d);
	smtp_data_scan(&d, "a\0b\r\n.\r\n", 10, out, &olen);
	assert_true(d.nul);
	assert_false(d.bare_cr);
	/* A CR at the end of a chunk is decided by the next one. */
	smtp_data_init(&d);
	smtp_data_scan(&d, "a\r", 2, out, &olen);
	assert_false(d.bare_cr);
	smtp_data_scan(&d, "\n.\r\n", 5, out, &olen);
	assert_false(d.bare_cr);
	assert_int_equal(d.st, SMTP_DATA_DONE);
	smtp_data_init(&d);
	smtp_data_scan(&d, "a\r", 2, out, &olen);
	smtp_data_scan(&d, "b\r\n.\r\n", 6, out, &olen);
	assert_true(d.bare_cr);
	check_splits("x\ry\0z\n\r\n.\r\n", 11);
}

static void
test_data_dot_cr_edge_cases(void **state)
{
	(void)state;
	/* ".\r" then not LF: a stuffed line starting with CR. */
	DATA(".\rX\r\n.\r\n", "\rX\r\n", 8, true, false);
	DATA(".\r\r\n.\r\n", "\r\r\n", 7, true, false);
	DATA(".\r.\r\n.\r\n", "\r.\r\n", 8, true, false);
	DATA(".\r\r.\r\n.\r\n", "\r\r.\r\n", 9, true, false);
	DATA("a\r\n.\rb\n.\r\n", "a\r\n\rb\n.\r\n", 10, false, true);
	DATA("..\r\r\n.\r\n", ".\r\r\n", 8, true, false);
}

static void
test_data_unterminated(void **state)
{
	(void)state;
	DATA("", "", 0, false, false);
	DATA("hello", "hello", 5, false, false);
	DATA("a\r\n", "a\r\n", 3, false, false);
	/* Held back until we know whether it ends the message. */
	DATA("a\r\n.", "a\r\n", 4, false, false);
	DATA("a\r\n.\r", "a\r\n", 5, false, false);
	DATA("a\r\n..", "a\r\n.", 5, false, false);
	DATA("a\r", "a\r", 2, false, false);
	DATA("a\r\n. \r\n", "a\r\n \r\n", 7, false, false);
	DATA("a\r\n.x", "a\r\nx", 5, false, false);
}

static void
test_data_after_done(void **state)
{
	struct smtp_data d;
	char out[16];
	size_t olen = 99;

	(void)state;
	smtp_data_init(&d);
	assert_int_equal(smtp_data_scan(&d, ".\r\n", 3, out, &olen), 3);
	assert_int_equal(olen, 0);
	assert_int_equal(d.st, SMTP_DATA_DONE);
	olen = 99;
	assert_int_equal(smtp_data_scan(&d, "more\r\n", 6, out, &olen), 0);
	assert_int_equal(olen, 0);
	assert_int_equal(d.wire_bytes, 3);
	assert_int_equal(d.body_bytes, 0);
	/* Zero-length input is a no-op in every state. */
	smtp_data_init(&d);
	assert_int_equal(smtp_data_scan(&d, "", 0, out, &olen), 0);
	assert_int_equal(olen, 0);
	assert_int_equal(d.st, SMTP_DATA_LINE_START);
}

static void
test_data_held_back_release(void **state)
{
	struct smtp_data d;
	char *out;
	size_t olen;

	(void)state;
	smtp_data_init(&d);
	out = malloc(2 + 2);
	assert_non_null(out);
	assert_int_equal(smtp_data_scan(&d, ".\r", 2, out, &olen), 2);
	assert_int_equal(olen, 0);
	assert_int_equal(d.st, SMTP_DATA_DOT_CR);
	free(out);
	/* One input byte releases two output bytes: the len + 2 contract. */
	out = malloc(1 + 2);
	assert_non_null(out);
	assert_int_equal(smtp_data_scan(&d, "X", 1, out, &olen), 1);
	assert_int_equal(olen, 2);
	assert_memory_equal(out, "\rX", 2);
	assert_int_equal(d.st, SMTP_DATA_MID);
	assert_int_equal(d.wire_bytes, 3);
	assert_int_equal(d.body_bytes, 2);
	free(out);
}

static void
test_data_states(void **state)
{
	struct smtp_data d;
	char out[8];
	size_t olen;

	(void)state;
	smtp_data_init(&d);
	assert_int_equal(d.st, SMTP_DATA_LINE_START);
	smtp_data_scan(&d, "ab", 2, out, &olen);
	assert_int_equal(d.st, SMTP_DATA_MID);
	smtp_data_scan(&d, "\r", 1, out, &olen);
	assert_int_equal(d.st, SMTP_DATA_MID_CR);
	smtp_data_scan(&d, "\n", 1, out, &olen);
	assert_int_equal(d.st, SMTP_DATA_LINE_START);
	assert_false(d.bare_lf);
	smtp_data_scan(&d, ".", 1, out, &olen);
	assert_int_equal(d.st, SMTP_DATA_DOT);
	assert_int_equal(olen, 0);
	smtp_data_scan(&d, "\r", 1, out, &olen);
	assert_int_equal(d.st, SMTP_DATA_DOT_CR);
	smtp_data_scan(&d, "\n", 1, out, &olen);
	assert_int_equal(d.st, SMTP_DATA_DONE);
	assert_int_equal(d.wire_bytes, 7);
	assert_int_equal(d.body_bytes, 4);
	assert_false(d.bare_lf);
}

static void
test_data_null_out(void **state)
{
	static const char in[] = "..a\r\n.\rb\r\nc\n\r\n.\r\nQUIT\r\n";
	struct smtp_data d1, d2;
	char out[sizeof(in) + 2];
	size_t olen, c1, c2;

	(void)state;
	smtp_data_init(&d1);
	smtp_data_init(&d2);
	c1 = smtp_data_scan(&d1, in, sizeof(in) - 1, out, &olen);
	c2 = smtp_data_scan(&d2, in, sizeof(in) - 1, NULL, NULL);
	assert_int_equal(c1, c2);
	assert_int_equal(d1.body_bytes, d2.body_bytes);
	assert_int_equal(d1.body_bytes, olen);
	assert_int_equal(d1.wire_bytes, d2.wire_bytes);
	assert_int_equal(d1.bare_lf, d2.bare_lf);
	assert_int_equal(d2.st, SMTP_DATA_DONE);
	assert_memory_equal(out, ".a\r\n\rb\r\nc\n\r\n", olen);
}

static void
test_data_split_equivalence(void **state)
{
	static const char *const inputs[] = {
		"a\r\n.\r\n",
		".\r\n",
		"..x\r\n.\r\n",
		"Subject: hi\r\n\r\n..leading\r\n.\r\n..\r\n\r\n.\r\nQUIT\r\n",
		".\rX\r\n.\r.\r\n.\n",
		"line one\nline two\r\n.\r\r\n\r\n.\r\nRSET\r\n",
		"no terminator\r\n.. here\r\n.\r",
		"\r\n\r\n\n\r.\n.\r\n",
		"a\r\n..\r\n...\r\n.\r\n",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++)
		check_splits(inputs[i], strlen(inputs[i]));
}

/*
 * Every string up to 7 bytes over the alphabet that matters (".", CR, LF,
 * a letter), against the reference and under every split.  Under valgrind
 * up to 5 bytes (the terminator's length: every state of the scanner, in
 * 1/16 of the time; a minute saved); natively and under ASan all 7.
 */
static void
test_data_exhaustive_small(void **state)
{
	static const char alpha[] = { '.', '\r', '\n', 'a' };
	char buf[8];
	size_t n, k, code, total, c, nmax = TEST_UNDER_VALGRIND() ? 5 : 7;

	(void)state;
	for (n = 0; n <= nmax; n++) {
		total = (size_t)1 << (2 * n);
		for (code = 0; code < total; code++) {
			c = code;
			for (k = 0; k < n; k++) {
				buf[k] = alpha[c & 3];
				c >>= 2;
			}
			check_splits(buf, n);
		}
	}
}

/*
 * Content long enough to be skimmed 16 bytes at a time (smtp_data_skim),
 * with one event at every offset: a line-start dot, a bare LF, a bare CR,
 * a NUL, a terminator, a CRLF across a block boundary.  Against the
 * reference, under every split.
 */
static void
data_skim_offsets_once(void)
{
	static const struct {
		const char *s;
		size_t n;
	} events[] = {
		{ "\r\n.", 3 }, { "\r\n..x", 5 }, { "\n", 1 }, { "\r", 1 }, { "\0", 1 },
		{ "\r\n.\r\n", 5 }, { "\n.", 2 }, { "\r\r\n", 3 }, { ".\r\n", 3 }, { "\r\n\r\n", 4 },
	};
	char base[96], buf[128];
	size_t e, off, k, n;

	/* Lines of 23 bytes: their CRLFs fall at every place in a block. */
	for (k = 0; k < sizeof(base); k++)
		base[k] = k % 23 == 21 ? '\r' : k % 23 == 22 ? '\n' : (char)('a' + k % 23);
	for (e = 0; e < sizeof(events) / sizeof(events[0]); e++) {
		for (off = 0; off <= sizeof(base); off++) {
			memcpy(buf, base, off);
			memcpy(buf + off, events[e].s, events[e].n);
			memcpy(buf + off + events[e].n, base + off, sizeof(base) - off);
			n = sizeof(base) + events[e].n;
			check_splits(buf, n);
		}
	}
}

/* The same with the AVX2 skim (where the CPU has it), then SSE2 alone. */
static void
test_data_skim_offsets(void **state)
{
	(void)state;
	smtp_data_set_avx2(true);
	data_skim_offsets_once();
	smtp_data_set_avx2(false);
	data_skim_offsets_once();
	smtp_data_set_avx2(true);
}

/*
 * Random mixes: mostly letters and CRLF line ends, now and then a dot, a
 * bare LF or CR, a NUL; lengths around a few blocks.
 */
static void
data_skim_random_once(void)
{
	static const char rare[] = { '.', '\r', '\n', '\0', '.' };
	char buf[400];
	unsigned seed = 4242;
	size_t r, k, n;

	for (r = 0; r < 300; r++) {
		seed = seed * 1103515245 + 12345;
		n = 16 + (seed >> 16) % (sizeof(buf) - 16);
		for (k = 0; k < n; k++) {
			seed = seed * 1103515245 + 12345;
			if ((seed >> 16) % 29 == 0 && k + 1 < n) {
				buf[k++] = '\r';
				buf[k] = '\n';
			} else if ((seed >> 16) % (r % 3 == 0 ? 41 : 997) == 1) {
				buf[k] = rare[(seed >> 8) % sizeof(rare)];
			} else if ((seed >> 16) % 29 == 2 && k > 1 && buf[k - 1] == '\n') {
				buf[k] = '.';
			} else {
				buf[k] = (char)('A' + (seed >> 20) % 26);
			}
		}
		check_splits(buf, n);
	}
}

/* The same with the AVX2 skim (where the CPU has it), then SSE2 alone. */
static void
test_data_skim_random(void **state)
{
	(void)state;
	smtp_data_set_avx2(true);
	data_skim_random_once();
	smtp_data_set_avx2(false);
	data_skim_random_once();
	smtp_data_set_avx2(true);
}

static void
data_large_message_once(void)
{
	struct smtp_data d;
	struct ref_result ref;
	size_t len = 1 << 20, pos = 0, i, olen, got, chunk, total = 0;
	char *in = malloc(len + 8), *out = malloc(len + 10), *oref = malloc(len + 10);
	unsigned seed = 12345;

	assert_non_null(in);
	assert_non_null(out);
	assert_non_null(oref);
	/* Lines of pseudo-random length, some dot-stuffed, one bare LF. */
	while (pos < len) {
		size_t n;

		seed = seed * 1103515245 + 12345;
		n = (seed >> 16) % 120;
		if (pos + n + 3 > len)
			break;
		/* Stuffed as a client would: a leading dot doubled. */
		if ((seed >> 8) % 17 == 0) {
			in[pos++] = '.';
			in[pos++] = '.';
		}
		for (i = 0; i < n; i++)
			in[pos++] = (char)('a' + (i % 26));
		if (pos + 3 > len)
			break;
		if ((seed >> 4) % 1000 == 7) {
			in[pos++] = '\n';
		} else {
			in[pos++] = '\r';
			in[pos++] = '\n';
		}
	}
	memcpy(in + pos, ".\r\nQUIT\r\n", 8);
	len = pos + 8;
	ref_scan(in, len, oref, &ref);
	assert_true(ref.done);
	assert_int_equal(ref.consumed, pos + 3);

	/* Odd-sized chunks so boundaries fall everywhere. */
	smtp_data_init(&d);
	pos = 0;
	chunk = 1;
	while (pos < len && d.st != SMTP_DATA_DONE) {
		size_t clen = chunk < len - pos ? chunk : len - pos;

		got = smtp_data_scan(&d, in + pos, clen, out + total, &olen);
		pos += got;
		total += olen;
		chunk = chunk * 7 % 8191 + 1;
	}
	assert_int_equal(pos, ref.consumed);
	assert_int_equal(total, ref.out_len);
	assert_int_equal(d.bare_lf, ref.bare_lf);
	assert_memory_equal(out, oref, total);
	free(in);
	free(out);
	free(oref);
}

/* The same with the AVX2 skim (where the CPU has it), then SSE2 alone. */
static void
test_data_large_message(void **state)
{
	(void)state;
	smtp_data_set_avx2(true);
	data_large_message_once();
	smtp_data_set_avx2(false);
	data_large_message_once();
	smtp_data_set_avx2(true);
}

/* ------------------------------------------------------------------------
 * HELO name and AUTH user (the session's summary)
 */

static void
check_helo(const char *line, int want_rc, const char *want)
{
	const char *p = dup_exact(line, strlen(line));
	struct smtp_str name;

	assert_int_equal(smtp_helo_name(p, strlen(line), &name), want_rc);
	if (want_rc == 0) {
		assert_int_equal(name.len, strlen(want));
		assert_memory_equal(name.p, want, name.len);
	}
}

static void
test_helo_name(void **state)
{
	(void)state;
	check_helo("EHLO client.example\r\n", 0, "client.example");
	check_helo("helo  old.example\n", 0, "old.example");
	check_helo("LHLO lmtp.example extra words\r\n", 0, "lmtp.example");
	check_helo("EHLO [192.0.2.1]\r\n", 0, "[192.0.2.1]");
	check_helo("EHLO\r\n", 0, "");
	check_helo("MAIL FROM:<a@b>\r\n", -1, NULL);
	check_helo("EHLOX foo\r\n", -1, NULL);
	check_helo("\r\n", -1, NULL);
}

/* smtp_auth_user over base64 of `plain` (len bytes, may hold NULs). */
static size_t
auth_user(const char *mech, const char *plain, size_t len, char *out, size_t outsz)
{
	static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char b64[4096];
	struct smtp_str m = { mech, strlen(mech) };
	const unsigned char *u = (const unsigned char *)plain;
	size_t i, n = 0;

	for (i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)u[i] << 16 | (i + 1 < len ? (uint32_t)u[i + 1] << 8 : 0) |
			     (i + 2 < len ? u[i + 2] : 0);

		b64[n++] = tab[v >> 18];
		b64[n++] = tab[(v >> 12) & 63];
		b64[n++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
		b64[n++] = i + 2 < len ? tab[v & 63] : '=';
	}
	b64[n++] = '\r';
	b64[n++] = '\n';
	return smtp_auth_user(m, dup_exact(b64, n), n, out, outsz);
}

static void
test_auth_user(void **state)
{
	char out[64];
	struct smtp_str plain = { "PLAIN", 5 };

	(void)state;
	/* PLAIN: the authentication identity, never the password */
	assert_int_equal(auth_user("PLAIN", "\0alice@example.com\0s3cret", 26, out, sizeof(out)), 17);
	assert_string_equal(out, "alice@example.com");
	assert_int_equal(auth_user("plain", "admin\0bob\0pw", 12, out, sizeof(out)), 3);
	assert_string_equal(out, "bob");
	assert_int_equal(auth_user("PLAIN", "\0bob", 4, out, sizeof(out)), 0); /* no second NUL */
	assert_string_equal(out, "");
	assert_int_equal(auth_user("PLAIN", "\0\0pw", 4, out, sizeof(out)), 0); /* empty name */
	/* LOGIN: the response itself */
	assert_int_equal(auth_user("LOGIN", "user@example.com", 16, out, sizeof(out)), 16);
	assert_string_equal(out, "user@example.com");
	/* CRAM-MD5: "user digest" */
	assert_int_equal(auth_user("CRAM-MD5", "tim b913a602c7eda7a495b4e6e7334d3890", 36, out, sizeof(out)), 3);
	assert_string_equal(out, "tim");
	assert_int_equal(auth_user("CRAM-MD5", "nodigest", 8, out, sizeof(out)), 0);
	/* XOAUTH2: user= up to ^A */
	{
		static const char xo[] = "user=someone@example.com\001auth=Bearer ya29.x\001\001";
		static const char noname[] = "auth=Bearer x\001\001";

		assert_int_equal(auth_user("XOAUTH2", xo, sizeof(xo) - 1, out, sizeof(out)), 19);
		assert_string_equal(out, "someone@example.com");
		assert_int_equal(auth_user("XOAUTH2", noname, sizeof(noname) - 1, out, sizeof(out)), 0);
	}
	/* other mechanisms, bad input */
	assert_int_equal(auth_user("SCRAM-SHA-256", "n,,n=user,r=abc", 15, out, sizeof(out)), 0);
	assert_int_equal(auth_user("LOGIN", "bad\nname", 8, out, sizeof(out)), 0); /* control byte */
	assert_int_equal(auth_user("LOGIN", "abcdefgh", 8, out, 8), 0);		/* does not fit */
	assert_int_equal(auth_user("LOGIN", "abcdefg", 7, out, 8), 7);
	assert_int_equal(smtp_auth_user(plain, dup_exact("=", 1), 1, out, sizeof(out)), 0);
	assert_int_equal(smtp_auth_user(plain, dup_exact("*\r\n", 3), 3, out, sizeof(out)), 0);
	assert_int_equal(smtp_auth_user(plain, dup_exact("[redacted]", 10), 10, out, sizeof(out)), 0);
	assert_int_equal(smtp_auth_user(plain, dup_exact("AGJvYgBwdw", 10), 10, out, sizeof(out)), 0); /* unpadded */
	assert_int_equal(smtp_auth_user(plain, dup_exact("AGJ=vYgBw", 9), 9, out, sizeof(out)), 0);
	assert_int_equal(smtp_auth_user(plain, dup_exact("AGJvYgBwdw==", 12), 12, out, 0), 0);
	assert_int_equal(smtp_auth_user(plain, dup_exact("AGJvYgBwdw==", 12), 12, out, sizeof(out)), 3);
	assert_string_equal(out, "bob");
}

/* A response longer than SMTP_AUTH_B64_MAX: PLAIN's name, near the start,
 * is still found; LOGIN's, cut, is not made up. */
static void
test_auth_user_long(void **state)
{
	char plain[2000], out[64];

	(void)state;
	memset(plain, 'p', sizeof(plain));
	memcpy(plain, "\0carol\0", 7);
	assert_int_equal(auth_user("PLAIN", plain, sizeof(plain), out, sizeof(out)), 5);
	assert_string_equal(out, "carol");
	memset(plain, 'u', sizeof(plain));
	assert_int_equal(auth_user("LOGIN", plain, sizeof(plain), out, sizeof(out)), 0);
	assert_int_equal(auth_user("LOGIN", plain, SMTP_AUTH_B64_MAX / 4 * 3, out, sizeof(out)), 0); /* too long for out */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_cmd_empty_lines, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_every_verb, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_unknown_verb, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_verb_prefixes_not_matched, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_terminators, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_arg_spacing, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_other_verbs_have_no_path, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_basic, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_space_after_colon, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_null_sender, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_case_insensitive, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_quoted_local_part, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_params, teardown_bufs),
		cmocka_unit_test_teardown(test_param_empty_value_and_equals, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_params_overflow, teardown_bufs),
		cmocka_unit_test_teardown(test_mail_malformed_paths, teardown_bufs),
		cmocka_unit_test_teardown(test_rcpt_basic, teardown_bufs),
		cmocka_unit_test_teardown(test_rcpt_dsn_params, teardown_bufs),
		cmocka_unit_test_teardown(test_rcpt_source_route_and_malformed, teardown_bufs),
		cmocka_unit_test_teardown(test_bdat_basic, teardown_bufs),
		cmocka_unit_test_teardown(test_bdat_limits, teardown_bufs),
		cmocka_unit_test_teardown(test_bdat_malformed, teardown_bufs),
		cmocka_unit_test_teardown(test_bdat_last_variants, teardown_bufs),
		cmocka_unit_test_teardown(test_auth, teardown_bufs),
		cmocka_unit_test_teardown(test_cmd_binary_garbage, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_basic, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_multiline, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_bare_code, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_code_range, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_malformed, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_enhanced_valid, teardown_bufs),
		cmocka_unit_test_teardown(test_reply_enhanced_invalid, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_keyword_basic, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_keyword_legacy_and_blanks, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_keyword_empty, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_remove_middle, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_remove_last, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_add, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_lf_only, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_nothing_to_change, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_case_insensitive, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_prefix_not_matched, teardown_bufs),
		cmocka_unit_test_teardown(test_ehlo_edit_greeting_not_keyword, teardown_bufs),
		cmocka_unit_test(test_ehlo_edit_too_many_lines),
		cmocka_unit_test_teardown(test_ehlo_edit_out_too_small, teardown_bufs),
		cmocka_unit_test(test_str_eq_ci),
		cmocka_unit_test(test_verb_name),
		cmocka_unit_test(test_data_simple),
		cmocka_unit_test(test_data_empty_message),
		cmocka_unit_test(test_data_stops_at_terminator),
		cmocka_unit_test(test_data_dot_stuffing),
		cmocka_unit_test(test_data_dot_not_at_line_start),
		cmocka_unit_test(test_data_bare_lf),
		cmocka_unit_test(test_data_dot_cr_edge_cases),
		cmocka_unit_test(test_data_bare_cr_nul),
		cmocka_unit_test(test_data_unterminated),
		cmocka_unit_test(test_data_after_done),
		cmocka_unit_test(test_data_held_back_release),
		cmocka_unit_test(test_data_states),
		cmocka_unit_test(test_data_null_out),
		cmocka_unit_test(test_data_split_equivalence),
		cmocka_unit_test(test_data_exhaustive_small),
		cmocka_unit_test(test_data_skim_offsets),
		cmocka_unit_test(test_data_skim_random),
		cmocka_unit_test(test_data_large_message),
		cmocka_unit_test_teardown(test_helo_name, teardown_bufs),
		cmocka_unit_test_teardown(test_auth_user, teardown_bufs),
		cmocka_unit_test_teardown(test_auth_user_long, teardown_bufs),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
