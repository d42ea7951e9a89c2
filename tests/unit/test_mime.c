/*
 * test_mime.c - unit tests for the header summary and RFC 2047 decoder
 * (src/mime.c).
 *
 * Inputs are copied into heap buffers of exactly their length, so a read
 * past the end shows up under ASan instead of hitting the literal's NUL;
 * decoder output buffers are exact-size too.  Every summary value is also
 * checked to be valid UTF-8 without control characters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/mime.h"

static struct mime_hdr_parser *parser_new(void);
static void feed_exact(struct mime_hdr_parser *, const char *, size_t);
static void summ_len(const char *, size_t, struct mime_summary *);
static void summ(const char *, struct mime_summary *);
static const char *subject_of(const char *, struct mime_summary *);
static size_t dec(const char *, char *, size_t);
static bool utf8_clean(const char *, size_t);
static void check_summary(const struct mime_summary *);
static void check_same(const struct mime_summary *, const struct mime_summary *);

#define DEC_STR_EQ(in, want)                                                  \
	do {                                                                  \
		char out_[MIME_VALUE_MAX];                                     \
		size_t n_ = dec((in), out_, sizeof(out_));                     \
		assert_string_equal(out_, (want));                             \
		assert_int_equal(n_, strlen(want));                            \
	} while (0)

/* ------------------------------------------------------------------------
 * Helpers.
 */

static struct mime_hdr_parser *
parser_new(void)
{
	struct mime_hdr_parser *p = malloc(sizeof(*p));

	assert_non_null(p);
	/* Garbage in the buffer must not matter: init does not clear it. */
	memset(p, 0xa5, sizeof(*p));
	mime_hdr_init(p);
	return p;
}

static void
feed_exact(struct mime_hdr_parser *p, const char *s, size_t len)
{
	char *c = malloc(len > 0 ? len : 1);

	assert_non_null(c);
	memcpy(c, s, len);
	mime_hdr_feed(p, c, len);
	free(c);
}

static void
summ_len(const char *msg, size_t len, struct mime_summary *out)
{
	struct mime_hdr_parser *p = parser_new();

	feed_exact(p, msg, len);
	memset(out, 0x5a, sizeof(*out));
	mime_hdr_summarise(p, out);
	check_summary(out);
	free(p);
}

static void
summ(const char *msg, struct mime_summary *out)
{
	summ_len(msg, strlen(msg), out);
}

/* Summary of "Subject: <value>\r\n\r\n". */
static const char *
subject_of(const char *value, struct mime_summary *out)
{
	size_t vlen = strlen(value);
	char *msg = malloc(vlen + 16);

	assert_non_null(msg);
	memcpy(msg, "Subject: ", 9);
	memcpy(msg + 9, value, vlen);
	memcpy(msg + 9 + vlen, "\r\n\r\n", 4);
	summ_len(msg, vlen + 13, out);
	free(msg);
	return out->subject;
}

/* mime_decode_2047 on an exact-length copy of `in`. */
static size_t
dec(const char *in, char *out, size_t outsz)
{
	size_t len = strlen(in), n;
	char *c = malloc(len > 0 ? len : 1);

	assert_non_null(c);
	memcpy(c, in, len);
	n = mime_decode_2047(c, len, out, outsz);
	free(c);
	if (outsz > 0) {
		assert_true(n < outsz);
		assert_int_equal(strlen(out), n);
		assert_true(utf8_clean(out, n));
	}
	return n;
}

/* Strict UTF-8 with no C0, DEL or C1 control characters. */
static bool
utf8_clean(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, n, k;
	uint32_t cp;

	while (i < len) {
		if (u[i] < 0x80) {
			if (u[i] < 0x20 || u[i] == 0x7f)
				return false;
			i++;
			continue;
		}
		if (u[i] >= 0xc2 && u[i] <= 0xdf)
			n = 2, cp = u[i] & 0x1f;
		else if (u[i] >= 0xe0 && u[i] <= 0xef)
			n = 3, cp = u[i] & 0x0f;
		else if (u[i] >= 0xf0 && u[i] <= 0xf4)
			n = 4, cp = u[i] & 0x07;
		else
			return false;
		if (len - i < n)
			return false;
		for (k = 1; k < n; k++) {
			if ((u[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (u[i + k] & 0x3f);
		}
		if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
			return false;
		i += n;
	}
	return true;
}

static void
check_summary(const struct mime_summary *s)
{
	const char *f[] = { s->subject, s->from, s->to, s->message_id, s->date };
	size_t i, n;

	for (i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		n = strnlen(f[i], MIME_VALUE_MAX);
		assert_true(n < MIME_VALUE_MAX);
		assert_true(utf8_clean(f[i], n));
		/* Trimmed. */
		if (n > 0) {
			assert_true(f[i][0] != ' ');
			assert_true(f[i][n - 1] != ' ');
		}
	}
}

/* Only the strings are defined, not the bytes after each NUL. */
static void
check_same(const struct mime_summary *a, const struct mime_summary *b)
{
	assert_string_equal(a->subject, b->subject);
	assert_string_equal(a->from, b->from);
	assert_string_equal(a->to, b->to);
	assert_string_equal(a->message_id, b->message_id);
	assert_string_equal(a->date, b->date);
}

/* ------------------------------------------------------------------------
 * Header collection and extraction.
 */

static void
test_plain_headers(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("Return-Path: <a@example.org>\r\n"
	     "From: Alice <alice@example.org>\r\n"
	     "To: Bob <bob@example.net>, carol@example.net\r\n"
	     "Subject: Hello there\r\n"
	     "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
	     "Message-ID: <1234@example.org>\r\n"
	     "\r\n"
	     "Body text\r\n", &s);
	assert_string_equal(s.subject, "Hello there");
	assert_string_equal(s.from, "Alice <alice@example.org>");
	assert_string_equal(s.to, "Bob <bob@example.net>, carol@example.net");
	assert_string_equal(s.date, "Mon, 1 Jan 2024 10:00:00 +0000");
	assert_string_equal(s.message_id, "<1234@example.org>");
}

static void
test_folded_subject(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("Subject: a long\r\n subject\r\n\tcontinued\r\nFrom: x@y\r\n\r\n", &s);
	/* Unfolding keeps the folding white space; a tab becomes a space. */
	assert_string_equal(s.subject, "a long subject continued");
	assert_string_equal(s.from, "x@y");

	summ("Subject:\r\n  only on the next line  \r\n\r\n", &s);
	assert_string_equal(s.subject, "only on the next line");
}

static void
test_case_insensitive_names(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("SUBJECT: one\r\nfrom: two\r\nTo: three\r\nmessage-id: <4@x>\r\nDATE: five\r\n\r\n", &s);
	assert_string_equal(s.subject, "one");
	assert_string_equal(s.from, "two");
	assert_string_equal(s.to, "three");
	assert_string_equal(s.message_id, "<4@x>");
	assert_string_equal(s.date, "five");
}

static void
test_missing_headers(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("X-Mailer: test\r\nReceived: from a by b\r\n\r\nSubject: body\r\n", &s);
	assert_string_equal(s.subject, "");
	assert_string_equal(s.from, "");
	assert_string_equal(s.to, "");
	assert_string_equal(s.message_id, "");
	assert_string_equal(s.date, "");

	/* Nothing fed at all. */
	summ_len("", 0, &s);
	assert_string_equal(s.subject, "");
	assert_string_equal(s.date, "");
}

static void
test_first_occurrence_wins(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("Subject: first\r\nSubject: second\r\nTo:\r\nTo: later\r\n\r\n", &s);
	assert_string_equal(s.subject, "first");
	/* An empty first occurrence still counts. */
	assert_string_equal(s.to, "");
}

static void
test_similar_names_and_odd_lines(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("From sender@example.org Mon Jan  1 00:00:00 2024\r\n"
	     "Resent-From: r@x\r\n"
	     "Subjects: no\r\n"
	     "Tox: no\r\n"
	     " Subject: stray continuation\r\n"
	     "X-Long: a\r\n"
	     " Subject: continuation of X-Long\r\n"
	     "no colon here\r\n"
	     "Subject : spaced name\r\n"
	     "From: real@x\r\n"
	     "\r\n", &s);
	assert_string_equal(s.subject, "spaced name");
	assert_string_equal(s.from, "real@x");
	assert_string_equal(s.to, "");
}

static void
test_chunked_feeding(void **state)
{
	static const char msg[] =
	    "From: =?UTF-8?Q?Andr=C3=A9?= <a@x>\r\n"
	    "Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n"
	    " and more\r\n"
	    "To: t@x\r\n"
	    "\r\n"
	    "Subject: not me\r\n";
	size_t len = sizeof(msg) - 1, cut, i;
	struct mime_summary one, other;
	struct mime_hdr_parser *p;

	(void)state;
	summ_len(msg, len, &one);
	assert_string_equal(one.subject, "Grüße aus Köln and more");
	assert_string_equal(one.from, "André <a@x>");

	/* Byte by byte. */
	p = parser_new();
	for (i = 0; i < len; i++)
		feed_exact(p, msg + i, 1);
	assert_true(p->done);
	mime_hdr_summarise(p, &other);
	check_same(&one, &other);
	free(p);

	/* Every two-chunk split, including empty chunks. */
	for (cut = 0; cut <= len; cut++) {
		p = parser_new();
		feed_exact(p, msg, cut);
		feed_exact(p, msg + cut, len - cut);
		assert_true(p->done);
		mime_hdr_summarise(p, &other);
		check_same(&one, &other);
		free(p);
	}
}

static void
test_end_of_headers_variants(void **state)
{
	static const char *const ends[] = { "\r\n\r\n", "\n\n", "\n\r\n", "\r\n\n" };
	struct mime_hdr_parser *p;
	char msg[64];
	size_t i, j, n;

	(void)state;
	for (i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
		n = (size_t)snprintf(msg, sizeof(msg), "Subject: x%sSubject: body", ends[i]);
		p = parser_new();
		/* Split the terminator at each position. */
		for (j = 0; j < n; j++)
			feed_exact(p, msg + j, 1);
		assert_true(p->done);
		assert_int_equal(p->len, 10 + strlen(ends[i]));
		free(p);
	}

	/* "\r\r\n" is no empty line; neither is a line of spaces. */
	p = parser_new();
	feed_exact(p, "A: b\r\r\n \r\nC: d\r\n", 16);
	assert_false(p->done);
	free(p);
}

static void
test_empty_header_block(void **state)
{
	struct mime_hdr_parser *p;
	struct mime_summary s;

	(void)state;
	p = parser_new();
	feed_exact(p, "\r\nSubject: in the body\r\n", 24);
	assert_true(p->done);
	assert_int_equal(p->len, 2);
	mime_hdr_summarise(p, &s);
	assert_string_equal(s.subject, "");
	free(p);

	p = parser_new();
	feed_exact(p, "\n", 1);
	assert_true(p->done);
	free(p);
}

static void
test_body_not_scanned(void **state)
{
	struct mime_hdr_parser *p;
	struct mime_summary s;
	char *big;
	size_t len;

	(void)state;
	p = parser_new();
	feed_exact(p, "To: a@x\r\n\r\nSubject: body\r\n", 26);
	assert_true(p->done);
	len = p->len;
	assert_int_equal(len, 11);
	/* Feeding after done is a no-op, however much. */
	big = malloc(1 << 20);
	assert_non_null(big);
	memset(big, 'S', 1 << 20);
	mime_hdr_feed(p, big, 1 << 20);
	mime_hdr_feed(p, "Subject: late\r\n\r\n", 17);
	free(big);
	assert_int_equal(p->len, len);
	mime_hdr_summarise(p, &s);
	assert_string_equal(s.subject, "");
	assert_string_equal(s.to, "a@x");
	free(p);
}

static void
test_lf_only_message(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("Subject: lf\n only\nFrom: f@x\nDate: today\n\nTo: body@x\n", &s);
	assert_string_equal(s.subject, "lf only");
	assert_string_equal(s.from, "f@x");
	assert_string_equal(s.date, "today");
	assert_string_equal(s.to, "");
}

static void
test_oversized_header_block(void **state)
{
	struct mime_hdr_parser *p;
	struct mime_summary s;
	char line[1001];
	size_t total = 0;

	(void)state;
	p = parser_new();
	feed_exact(p, "Subject: early\r\n", 16);
	memset(line, 'a', sizeof(line));
	memcpy(line, "X-Pad: ", 7);
	line[998] = '\r';
	line[999] = '\n';
	while (total < 2 * MIME_HDR_MAX) {
		feed_exact(p, line, 1000);
		total += 1000;
	}
	assert_true(p->done);
	assert_int_equal(p->len, MIME_HDR_MAX);
	feed_exact(p, "From: late@x\r\n\r\n", 16);
	assert_int_equal(p->len, MIME_HDR_MAX);
	mime_hdr_summarise(p, &s);
	check_summary(&s);
	assert_string_equal(s.subject, "early");
	assert_string_equal(s.from, "");
	free(p);

	/* One giant header line bigger than the bound, in a single feed. */
	{
		size_t n = MIME_HDR_MAX + 5000;
		char *msg = malloc(n);

		assert_non_null(msg);
		memset(msg, 'x', n);
		memcpy(msg, "Subject: ", 9);
		p = parser_new();
		feed_exact(p, msg, n);
		assert_true(p->done);
		assert_int_equal(p->len, MIME_HDR_MAX);
		mime_hdr_summarise(p, &s);
		check_summary(&s);
		assert_int_equal(strlen(s.subject), MIME_VALUE_MAX - 1);
		free(msg);
		free(p);
	}
}

static void
test_cut_short(void **state)
{
	struct mime_summary s;

	(void)state;
	/* No end of headers: still summarised, partial last line included. */
	summ("Subject: partial\r\nFrom: half a na", &s);
	assert_string_equal(s.subject, "partial");
	assert_string_equal(s.from, "half a na");
}

static void
test_control_chars(void **state)
{
	struct mime_summary s;
	static const char msg[] = "Subject: a\x01" "b\x7f" "c\x1b[31md\re\0f\r\n\r\n";

	(void)state;
	summ_len(msg, sizeof(msg) - 1, &s);
	assert_string_equal(s.subject, "a b c [31md e f");
	/* A C1 control in UTF-8 is a control too. */
	assert_string_equal(subject_of("x\xc2\x9by", &s), "x y");
	/* Latin-1 C1 bytes as well. */
	assert_string_equal(subject_of("=?ISO-8859-1?Q?a=85b?=", &s), "a b");
}

static void
test_trim(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("Subject: \t  padded \t \r\nMessage-ID:   <x@y>  \r\n\r\n", &s);
	assert_string_equal(s.subject, "padded");
	assert_string_equal(s.message_id, "<x@y>");
	assert_string_equal(subject_of("=?UTF-8?Q?_spaced_?=", &s), "spaced");
}

static void
test_invalid_utf8(void **state)
{
	struct mime_summary s;

	(void)state;
	/* Raw Latin-1 byte, truncated sequence, overlong, surrogate, too big. */
	assert_string_equal(subject_of("caf\xe9!", &s), "caf\xef\xbf\xbd!");
	assert_string_equal(subject_of("a\xe2\x82" "b", &s), "a\xef\xbf\xbd" "b");
	assert_string_equal(subject_of("\xc0\xaf", &s), "\xef\xbf\xbd\xef\xbf\xbd");
	assert_string_equal(subject_of("\xed\xa0\x80", &s), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
	assert_string_equal(subject_of("\xf4\x90\x80\x80", &s),
			    "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
	/* Truncated at the very end of the value. */
	assert_string_equal(subject_of("end\xf0\x9f\x98", &s), "end\xef\xbf\xbd");
	/* Valid multibyte is untouched. */
	assert_string_equal(subject_of("\xe2\x82\xac \xf0\x9f\x98\x80", &s), "\xe2\x82\xac \xf0\x9f\x98\x80");
	/* Invalid UTF-8 out of a decoded word. */
	assert_string_equal(subject_of("=?UTF-8?Q?bad=FFbyte?=", &s), "bad\xef\xbf\xbd" "byte");
}

static void
test_truncation_on_boundary(void **state)
{
	struct mime_summary s;
	char value[3000];
	size_t i, n;

	(void)state;
	/* "a" then euros: 1 + 3k bytes never lands on 1023 exactly. */
	value[0] = 'a';
	for (i = 1; i + 3 < sizeof(value); i += 3)
		memcpy(value + i, "\xe2\x82\xac", 3);
	value[i] = '\0';
	subject_of(value, &s);
	n = strlen(s.subject);
	assert_int_equal(n, 1 + 340 * 3);
	assert_true(utf8_clean(s.subject, n));

	/* Plain ASCII fills the field exactly. */
	memset(value, 'b', 2000);
	value[2000] = '\0';
	assert_int_equal(strlen(subject_of(value, &s)), MIME_VALUE_MAX - 1);

	/* Same through adjacent encoded words, which are joined. */
	{
		static const char word[] = "=?UTF-8?Q?=E2=82=AC?= ";
		size_t wlen = sizeof(word) - 1;
		char *many = malloc(400 * wlen + 1);

		assert_non_null(many);
		for (i = 0; i < 400; i++)
			memcpy(many + i * wlen, word, wlen);
		many[400 * wlen] = '\0';
		subject_of(many, &s);
		assert_int_equal(strlen(s.subject), 341 * 3);
		free(many);
	}
}

/* ------------------------------------------------------------------------
 * RFC 2047.
 */

static void
test_2047_b_utf8(void **state)
{
	struct mime_summary s;

	(void)state;
	assert_string_equal(subject_of("=?UTF-8?B?R3LDvMOfZSBhdXMgS8O2bG4=?=", &s), "Grüße aus Köln");
	/* Lower-case encoding letter and charset, missing padding. */
	assert_string_equal(subject_of("=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4?=", &s), "Grüße aus Köln");
	DEC_STR_EQ("=?UTF-8?B?" "?=", "");	/* split: "??=" is a trigraph */
}

static void
test_2047_q_utf8(void **state)
{
	struct mime_summary s;

	(void)state;
	assert_string_equal(subject_of("=?UTF-8?Q?Gr=C3=BC=c3=9Fe_aus_K=C3=B6ln?=", &s), "Grüße aus Köln");
	DEC_STR_EQ("=?utf-8?q?a_b__c?=", "a b  c");
}

static void
test_2047_latin1(void **state)
{
	struct mime_summary s;

	(void)state;
	assert_string_equal(subject_of("=?ISO-8859-1?Q?Caf=E9?=", &s), "Café");
	assert_string_equal(subject_of("=?iso-8859-1?B?Q2Fm6Q==?=", &s), "Café");
	assert_string_equal(subject_of("=?Latin1?Q?=FF?=", &s), "ÿ");
	DEC_STR_EQ("=?us-ascii?Q?plain_ascii?=", "plain ascii");
}

static void
test_2047_iconv_charsets(void **state)
{
	struct mime_summary s;

	(void)state;
	/* 0x80 is the euro sign and 0x93/0x94 curly quotes only in 1252. */
	assert_string_equal(subject_of("=?windows-1252?Q?=80_=93hi=94?=", &s), "€ “hi”");
	assert_string_equal(subject_of("=?KOI8-R?B?8NLJ18XU?=", &s), "Привет");
	assert_string_equal(subject_of("=?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=", &s), "日本語");
	assert_string_equal(subject_of("=?gb2312?B?1tDOxA==?=", &s), "中文");
}

static void
test_2047_iconv_failures(void **state)
{
	struct mime_summary s;

	(void)state;
	/* Unknown charset: kept as written. */
	assert_string_equal(subject_of("=?x-no-such-charset?Q?abc?= tail", &s),
			    "=?x-no-such-charset?Q?abc?= tail");
	/* 0x81 is undefined in windows-1252: iconv refuses, word kept. */
	assert_string_equal(subject_of("=?windows-1252?B?gQ==?=", &s), "=?windows-1252?B?gQ==?=");
	/* A character cut off at the end of the word. */
	assert_string_equal(subject_of("=?gb2312?Q?=D6?=", &s), "=?gb2312?Q?=D6?=");
	/* Charset names cannot smuggle iconv suffixes. */
	assert_string_equal(subject_of("=?UTF-8//TRANSLIT?Q?a?=", &s), "=?UTF-8//TRANSLIT?Q?a?=");
}

static void
test_2047_charset_language(void **state)
{
	struct mime_summary s;

	(void)state;
	assert_string_equal(subject_of("=?UTF-8*en?Q?hello?=", &s), "hello");
	assert_string_equal(subject_of("=?iso-8859-1*de-DE?Q?gr=FC=DF?=", &s), "grüß");
	assert_string_equal(subject_of("=?WINDOWS-1252*en?Q?=80?=", &s), "€");
	/* Only a language: no charset. */
	assert_string_equal(subject_of("=?*en?Q?x?=", &s), "=?*en?Q?x?=");
}

static void
test_2047_adjacent_words(void **state)
{
	struct mime_summary s;

	(void)state;
	assert_string_equal(subject_of("=?UTF-8?Q?a?= =?UTF-8?Q?b?=", &s), "ab");
	assert_string_equal(subject_of("=?UTF-8?Q?a?=  \t =?ISO-8859-1?Q?=E9?=", &s), "aé");
	/* Across a fold. */
	summ("Subject: =?UTF-8?Q?one?=\r\n =?UTF-8?Q?_two?=\r\n\r\n", &s);
	assert_string_equal(s.subject, "one two");
	/* Glued words. */
	assert_string_equal(subject_of("=?UTF-8?Q?a?==?UTF-8?Q?b?=", &s), "ab");
	/* A multibyte character split over two words, as real senders do. */
	assert_string_equal(subject_of("=?UTF-8?Q?x=E2=82?= =?UTF-8?Q?=ACy?=", &s), "x€y");
	/* A kept word keeps its spacing on both sides. */
	assert_string_equal(subject_of("=?UTF-8?Q?a?= =?bogus?Q?b?= =?UTF-8?Q?c?=", &s),
			    "a =?bogus?Q?b?= c");
}

static void
test_2047_word_next_to_text(void **state)
{
	struct mime_summary s;

	(void)state;
	assert_string_equal(subject_of("Re: =?UTF-8?Q?Caf=C3=A9?= menu", &s), "Re: Café menu");
	assert_string_equal(subject_of("[list]=?UTF-8?Q?x?=!", &s), "[list]x!");
	assert_string_equal(subject_of("a = b ?= c =? d", &s), "a = b ?= c =? d");
}

static void
test_2047_malformed(void **state)
{
	struct mime_summary s;
	static const char *const bad[] = {
		"=?UTF-8?Q?no end",
		"=?UTF-8?X?unknown_encoding?=",
		"=?UTF-8?B?not*base64?=",
		"=?UTF-8?B?QQ=Q?=",
		"=?UTF-8?Q?bad=G1escape?=",
		"=?UTF-8?Q?short=A?=",
		"=??Q?empty_charset?=",
		"=?UTF-8?Q?has space?=",
		"=?UTF-8?QQ?two_letters?=",
		"=?UTF-8?Q",
		"=?",
		"=?UTF-8?Q?a?x",
		"=?UTF.8?Q?dot?=",
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_string_equal(subject_of(bad[i], &s), bad[i]);
	/* A good word after a malformed one still decodes. */
	assert_string_equal(subject_of("=?UTF-8?Q?x =?UTF-8?Q?=C3=A9?=", &s), "=?UTF-8?Q?x é");
}

static void
test_2047_from_to(void **state)
{
	struct mime_summary s;

	(void)state;
	summ("From: =?UTF-8?Q?Andr=C3=A9_M=C3=BCller?= <andre@example.org>\r\n"
	     "To: =?ISO-8859-1?Q?J=F6rg?= <j@x>,\r\n =?UTF-8?B?5pel5pys?= <n@y>\r\n"
	     "Message-ID: <=?UTF-8?Q?not_decoded?=@x>\r\n"
	     "Date: =?UTF-8?Q?nor_this?=\r\n"
	     "\r\n", &s);
	assert_string_equal(s.from, "André Müller <andre@example.org>");
	assert_string_equal(s.to, "Jörg <j@x>, 日本 <n@y>");
	assert_string_equal(s.message_id, "<=?UTF-8?Q?not_decoded?=@x>");
	assert_string_equal(s.date, "=?UTF-8?Q?nor_this?=");
}

static void
test_decode_small_buffers(void **state)
{
	char out[8];
	size_t n;

	(void)state;
	/* outsz 0: nothing written at all. */
	out[0] = 'Z';
	assert_int_equal(dec("=?UTF-8?Q?abc?=", out, 0), 0);
	assert_int_equal(out[0], 'Z');
	assert_int_equal(dec("abc", out, 1), 0);
	assert_string_equal(out, "");
	/* "é" (2) "€" (3) "x": 7 bytes do not fit in 7 + NUL? they do. */
	n = dec("=?UTF-8?Q?=C3=A9=E2=82=ACxy?=", out, 7);
	assert_int_equal(n, 6);
	assert_string_equal(out, "é€x");
	n = dec("=?UTF-8?Q?=C3=A9=E2=82=ACxy?=", out, 5);
	assert_int_equal(n, 2);
	assert_string_equal(out, "é");
	/* The public decoder does not trim but does unfold. */
	n = dec(" a\r\n b ", out, sizeof(out));
	assert_string_equal(out, " a b ");
	assert_int_equal(n, 5);
}

static void
test_decode_long_word(void **state)
{
	/* One word much longer than the internal chunk, through iconv:
	 * "a" and windows-1252 0x80 (the euro sign) alternating. */
	char in[4000], out[MIME_VALUE_MAX], want[MIME_VALUE_MAX];
	size_t i, p, n;

	(void)state;
	memcpy(in, "=?windows-1252?Q?", 17);
	p = 17;
	for (i = 0; i < 600; i++) {
		memcpy(in + p, i % 2 ? "=80" : "a", i % 2 ? 3 : 1);
		p += i % 2 ? 3 : 1;
	}
	memcpy(in + p, "?=", 3);
	for (p = 0, i = 0; i < 600; i++) {
		n = i % 2 ? 3 : 1;
		if (p + n > MIME_VALUE_MAX - 1)
			break;
		memcpy(want + p, i % 2 ? "\xe2\x82\xac" : "a", n);
		p += n;
	}
	want[p] = '\0';
	dec(in, out, sizeof(out));
	assert_string_equal(out, want);
	assert_int_equal(strlen(out), 1021);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain_headers),
		cmocka_unit_test(test_folded_subject),
		cmocka_unit_test(test_case_insensitive_names),
		cmocka_unit_test(test_missing_headers),
		cmocka_unit_test(test_first_occurrence_wins),
		cmocka_unit_test(test_similar_names_and_odd_lines),
		cmocka_unit_test(test_chunked_feeding),
		cmocka_unit_test(test_end_of_headers_variants),
		cmocka_unit_test(test_empty_header_block),
		cmocka_unit_test(test_body_not_scanned),
		cmocka_unit_test(test_lf_only_message),
		cmocka_unit_test(test_oversized_header_block),
		cmocka_unit_test(test_cut_short),
		cmocka_unit_test(test_control_chars),
		cmocka_unit_test(test_trim),
		cmocka_unit_test(test_invalid_utf8),
		cmocka_unit_test(test_truncation_on_boundary),
		cmocka_unit_test(test_2047_b_utf8),
		cmocka_unit_test(test_2047_q_utf8),
		cmocka_unit_test(test_2047_latin1),
		cmocka_unit_test(test_2047_iconv_charsets),
		cmocka_unit_test(test_2047_iconv_failures),
		cmocka_unit_test(test_2047_charset_language),
		cmocka_unit_test(test_2047_adjacent_words),
		cmocka_unit_test(test_2047_word_next_to_text),
		cmocka_unit_test(test_2047_malformed),
		cmocka_unit_test(test_2047_from_to),
		cmocka_unit_test(test_decode_small_buffers),
		cmocka_unit_test(test_decode_long_word),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
