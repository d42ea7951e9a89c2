/*
 * test_json.c - unit tests for the streaming JSON writer (src/json.c).
 *
 * Output is captured with open_memstream() and compared byte for byte.
 * The UTF-8 decoder is checked against an independent reference (decode
 * by bit pattern, then re-encode and compare: anything that does not
 * round-trip to the same bytes is ill-formed) over every short sequence
 * built from the interesting byte values.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/json.h"

struct capture {
	FILE *f;
	char *buf;
	size_t len;
};

static void cap_open(struct capture *c);
static const char *cap_close(struct capture *c);
static const char *enc(const void *p, size_t len);
static size_t ref_decode(const unsigned char *p, size_t len, uint32_t *cp);

static char *last;

static void
cap_open(struct capture *c)
{
	c->buf = NULL;
	c->len = 0;
	c->f = open_memstream(&c->buf, &c->len);
	assert_non_null(c->f);
}

/* The captured text; valid until the next call. */
static const char *
cap_close(struct capture *c)
{
	assert_int_equal(fclose(c->f), 0);
	free(last);
	last = c->buf;
	return last;
}

/* p[0..len) written as one JSON string value (compact), newline dropped. */
static const char *
enc(const void *p, size_t len)
{
	struct capture c;
	struct json j;
	char *s;

	cap_open(&c);
	json_init(&j, c.f, 0);
	json_string_len(&j, p, len);
	assert_int_equal(json_finish(&j), 0);
	s = (char *)cap_close(&c);
	assert_true(strlen(s) > 0 && s[strlen(s) - 1] == '\n');
	s[strlen(s) - 1] = '\0';
	assert_true(json_valid(s, strlen(s)));
	return s;
}

static void
test_compact_nesting(void **state)
{
	struct capture c;
	struct json j;

	(void)state;
	cap_open(&c);
	json_init(&j, c.f, 0);
	json_object_begin(&j);
	json_kv_int(&j, "a", 1);
	json_key(&j, "b");
	json_array_begin(&j);
	json_bool(&j, true);
	json_bool(&j, false);
	json_null(&j);
	json_string(&j, "x");
	json_string(&j, NULL);
	json_int(&j, INT64_MIN);
	json_array_end(&j);
	json_key(&j, "c");
	json_object_begin(&j);
	json_object_end(&j);
	json_key(&j, "d");
	json_array_begin(&j);
	json_array_end(&j);
	json_kv_null(&j, "e");
	json_kv_bool(&j, "f", true);
	json_kv_string(&j, "g", "h");
	json_key(&j, "raw");
	json_raw(&j, "{\"k\": [1, 2]}");
	json_object_end(&j);
	assert_int_equal(json_finish(&j), 0);
	assert_string_equal(cap_close(&c), "{\"a\":1,\"b\":[true,false,null,\"x\",null,-9223372036854775808],"
					   "\"c\":{},\"d\":[],\"e\":null,\"f\":true,\"g\":\"h\","
					   "\"raw\":{\"k\": [1, 2]}}\n");
}

static void
test_pretty(void **state)
{
	struct capture c;
	struct json j;

	(void)state;
	cap_open(&c);
	json_init(&j, c.f, JSON_DEPTH_MAX);
	json_object_begin(&j);
	json_kv_int(&j, "id", 42);
	json_key(&j, "list");
	json_array_begin(&j);
	json_int(&j, 1);
	json_object_begin(&j);
	json_kv_string(&j, "k", "v");
	json_object_end(&j);
	json_array_end(&j);
	json_key(&j, "empty");
	json_array_begin(&j);
	json_array_end(&j);
	json_object_end(&j);
	assert_int_equal(json_finish(&j), 0);
	assert_string_equal(cap_close(&c), "{\n"
					   "  \"id\": 42,\n"
					   "  \"list\": [\n"
					   "    1,\n"
					   "    {\n"
					   "      \"k\": \"v\"\n"
					   "    }\n"
					   "  ],\n"
					   "  \"empty\": []\n"
					   "}\n");
}

/* Outer levels one member per line, deeper ones inline. */
static void
test_levels(void **state)
{
	struct capture c;
	struct json j;

	(void)state;
	cap_open(&c);
	json_init(&j, c.f, 2);
	json_object_begin(&j);
	json_key(&j, "events");
	json_array_begin(&j);
	json_object_begin(&j);
	json_kv_int(&j, "seq", 1);
	json_key(&j, "flags");
	json_array_begin(&j);
	json_string(&j, "a");
	json_string(&j, "b");
	json_array_end(&j);
	json_object_end(&j);
	json_object_begin(&j);
	json_object_end(&j);
	json_array_end(&j);
	json_key(&j, "none");
	json_array_begin(&j);
	json_array_end(&j);
	json_object_end(&j);
	assert_int_equal(json_finish(&j), 0);
	assert_string_equal(cap_close(&c), "{\n"
					   "  \"events\": [\n"
					   "    {\"seq\": 1, \"flags\": [\"a\", \"b\"]},\n"
					   "    {}\n"
					   "  ],\n"
					   "  \"none\": []\n"
					   "}\n");
}

static void
test_escape_ascii(void **state)
{
	(void)state;
	assert_string_equal(enc("plain text", 10), "\"plain text\"");
	assert_string_equal(enc("", 0), "\"\"");
	assert_string_equal(enc("a\"b\\c/d", 7), "\"a\\\"b\\\\c/d\"");
	assert_string_equal(enc("250-a\r\n250 b", 12), "\"250-a\\u000d\\u000a250 b\"");
	assert_string_equal(enc("\t\b\f", 3), "\"\\u0009\\u0008\\u000c\"");
	assert_string_equal(enc("\x01\x1f\x7f", 3), "\"\\u0001\\u001f\\u007f\"");
	/* NUL bytes are data, not terminators. */
	assert_string_equal(enc("a\0b", 3), "\"a\\u0000b\"");
	assert_string_equal(enc("\x1b[31m", 5), "\"\\u001b[31m\"");
}

static void
test_escape_utf8_valid(void **state)
{
	(void)state;
	/* é, €, 😀 and U+10FFFF pass through unchanged. */
	assert_string_equal(enc("caf\xc3\xa9", 5), "\"caf\xc3\xa9\"");
	assert_string_equal(enc("\xe2\x82\xac", 3), "\"\xe2\x82\xac\"");
	assert_string_equal(enc("\xf0\x9f\x98\x80", 4), "\"\xf0\x9f\x98\x80\"");
	assert_string_equal(enc("\xf4\x8f\xbf\xbf", 4), "\"\xf4\x8f\xbf\xbf\"");
	/* C1 controls are valid UTF-8 and legal in JSON strings. */
	assert_string_equal(enc("\xc2\x9b", 2), "\"\xc2\x9b\"");
	/* Line and paragraph separators are escaped for JavaScript. */
	assert_string_equal(enc("\xe2\x80\xa8\xe2\x80\xa9", 6), "\"\\u2028\\u2029\"");
}

static void
test_escape_utf8_invalid(void **state)
{
	(void)state;
	/* A lone continuation byte, a lone lead byte at the end. */
	assert_string_equal(enc("a\x80z", 3), "\"a\\ufffdz\"");
	assert_string_equal(enc("a\xc3", 2), "\"a\\ufffd\"");
	/* Never-valid bytes, one U+FFFD each. */
	assert_string_equal(enc("\xc0\xaf", 2), "\"\\ufffd\\ufffd\"");
	assert_string_equal(enc("\xff\xfe", 2), "\"\\ufffd\\ufffd\"");
	assert_string_equal(enc("\xf5\x80", 2), "\"\\ufffd\\ufffd\"");
	/* A truncated sequence is one maximal subpart: one U+FFFD. */
	assert_string_equal(enc("\xe2\x82" "A", 3), "\"\\ufffdA\"");
	assert_string_equal(enc("\xf0\x9f\x98", 3), "\"\\ufffd\"");
	assert_string_equal(enc("\xf0\x9f\x98" "\xf0\x9f\x98\x80", 7), "\"\\ufffd\xf0\x9f\x98\x80\"");
	/* Overlong 3-byte, surrogate, above U+10FFFF: the second byte is
	 * already out of range, so each byte is its own subpart. */
	assert_string_equal(enc("\xe0\x80\xaf", 3), "\"\\ufffd\\ufffd\\ufffd\"");
	assert_string_equal(enc("\xed\xa0\x80", 3), "\"\\ufffd\\ufffd\\ufffd\"");
	assert_string_equal(enc("\xf4\x90\x80\x80", 4), "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
	/* Latin-1 text mislabelled as UTF-8. */
	assert_string_equal(enc("caf\xe9!", 5), "\"caf\\ufffd!\"");
}

/* Reference decoder: take the sequence length from the lead byte's bit
 * pattern, decode, and accept only what re-encodes to the same bytes in
 * the valid range.  Returns the length of a valid sequence, or 0. */
static size_t
ref_decode(const unsigned char *p, size_t len, uint32_t *cp)
{
	size_t n, i;
	uint32_t v;

	if (p[0] < 0x80) {
		*cp = p[0];
		return 1;
	}
	if ((p[0] & 0xe0) == 0xc0) {
		n = 2;
		v = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		n = 3;
		v = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		n = 4;
		v = p[0] & 0x07;
	} else
		return 0;
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		v = (v << 6) | (p[i] & 0x3f);
	}
	if ((n == 2 && v < 0x80) || (n == 3 && v < 0x800) || (n == 4 && v < 0x10000))
		return 0; /* overlong */
	if ((v >= 0xd800 && v <= 0xdfff) || v > 0x10ffff)
		return 0;
	*cp = v;
	return n;
}

static void
test_utf8_decode_reference(void **state)
{
	static const unsigned char vals[] = { 0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0,
					      0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef, 0xf0,
					      0xf1, 0xf3, 0xf4, 0xf5, 0xf8, 0xfe, 0xff };
	const size_t nv = sizeof(vals);
	unsigned char b[4];
	size_t len, combo, ncombos, k, x, n, rn;
	uint32_t cp, rcp;

	(void)state;
	/* Every sequence of 1 to 4 bytes drawn from vals[]. */
	for (len = 1, ncombos = nv; len <= 4; len++, ncombos *= nv) {
		for (combo = 0; combo < ncombos; combo++) {
			for (k = 0, x = combo; k < len; k++, x /= nv)
				b[k] = vals[x % nv];
			n = json_utf8_decode(b, len, &cp);
			rn = ref_decode(b, len, &rcp);
			assert_true(n >= 1 && n <= len);
			if (rn > 0) {
				assert_int_equal(n, rn);
				assert_int_equal(cp, rcp);
			} else {
				assert_int_equal(cp, JSON_UTF8_BAD);
				/* The maximal subpart is a proper prefix of
				 * a full sequence: the byte that broke it is
				 * never swallowed. */
				assert_true(n <= 3);
				assert_int_equal(ref_decode(b, n, &rcp), 0);
			}
		}
	}
}

static void
test_random_bytes_stay_valid(void **state)
{
	unsigned char buf[64];
	unsigned seed = 12345;
	size_t i, k, len;

	(void)state;
	for (i = 0; i < 20000; i++) {
		len = i % sizeof(buf);
		for (k = 0; k < len; k++) {
			seed = seed * 1103515245u + 12345u;
			buf[k] = (unsigned char)(seed >> 16);
		}
		(void)enc(buf, len); /* enc() asserts json_valid() */
	}
}

static void
test_misuse(void **state)
{
	struct capture c;
	struct json j;

	(void)state;
	/* A key inside an array. */
	cap_open(&c);
	json_init(&j, c.f, 0);
	json_array_begin(&j);
	json_key(&j, "k");
	json_array_end(&j);
	assert_int_equal(json_finish(&j), -1);
	assert_int_equal(j.err, 0);
	cap_close(&c);

	/* A value where a key is due. */
	cap_open(&c);
	json_init(&j, c.f, 0);
	json_object_begin(&j);
	json_int(&j, 1);
	json_object_end(&j);
	assert_int_equal(json_finish(&j), -1);
	cap_close(&c);

	/* Unbalanced, mismatched, missing value after a key. */
	cap_open(&c);
	json_init(&j, c.f, 0);
	json_object_begin(&j);
	assert_int_equal(json_finish(&j), -1);
	cap_close(&c);

	cap_open(&c);
	json_init(&j, c.f, 0);
	json_object_begin(&j);
	json_array_end(&j);
	assert_int_equal(json_finish(&j), -1);
	cap_close(&c);

	cap_open(&c);
	json_init(&j, c.f, 0);
	json_object_begin(&j);
	json_key(&j, "k");
	json_object_end(&j);
	assert_int_equal(json_finish(&j), -1);
	cap_close(&c);

	/* Two documents, or none. */
	cap_open(&c);
	json_init(&j, c.f, 0);
	json_int(&j, 1);
	json_int(&j, 2);
	assert_int_equal(json_finish(&j), -1);
	assert_string_equal(cap_close(&c), "1");

	cap_open(&c);
	json_init(&j, c.f, 0);
	assert_int_equal(json_finish(&j), -1);
	cap_close(&c);
}

static void
test_depth_limit(void **state)
{
	struct capture c;
	struct json j;
	int i;

	(void)state;
	cap_open(&c);
	json_init(&j, c.f, 0);
	for (i = 0; i < JSON_DEPTH_MAX; i++)
		json_array_begin(&j);
	for (i = 0; i < JSON_DEPTH_MAX; i++)
		json_array_end(&j);
	assert_int_equal(json_finish(&j), 0);
	cap_close(&c);

	cap_open(&c);
	json_init(&j, c.f, 0);
	for (i = 0; i <= JSON_DEPTH_MAX; i++)
		json_array_begin(&j);
	for (i = 0; i <= JSON_DEPTH_MAX; i++)
		json_array_end(&j);
	assert_int_equal(json_finish(&j), -1);
	cap_close(&c);
}

static void
test_write_error(void **state)
{
	struct json j;
	FILE *f;
	int i;

	(void)state;
	f = fopen("/dev/full", "w");
	if (f == NULL)
		skip();
	setvbuf(f, NULL, _IONBF, 0);
	json_init(&j, f, JSON_DEPTH_MAX);
	json_array_begin(&j);
	for (i = 0; i < 10; i++)
		json_string(&j, "x");
	json_array_end(&j);
	assert_int_equal(json_finish(&j), -1);
	assert_int_equal(j.err, ENOSPC);
	fclose(f);
}

/* One document written through the given writer (a FILE or memory):
 * nesting, every value type, a long string that makes the buffer grow. */
static void
write_sample(struct json *j)
{
	static char big[10000];
	int i;

	memset(big, 'a', sizeof(big) - 1);
	json_object_begin(j);
	json_kv_int(j, "n", -42);
	json_kv_bool(j, "t", true);
	json_kv_null(j, "z");
	json_kv_string(j, "s", "caf\xc3\xa9 \"quoted\"\n\x01\xff");
	json_key(j, "a");
	json_array_begin(j);
	for (i = 0; i < 50; i++) {
		json_object_begin(j);
		json_kv_int(j, "i", i);
		json_key(j, "raw");
		json_raw(j, "{\"x\": [1, 2]}");
		json_object_end(j);
	}
	json_array_end(j);
	json_kv_string(j, "big", big);
	json_object_end(j);
}

/* The memory target gives the FILE's text byte for byte, whatever the
 * layout, and hands the buffer over NUL-terminated. */
static void
test_mem_same_as_file(void **state)
{
	static const int levels[] = { 0, 1, 2, JSON_DEPTH_MAX };
	struct capture c;
	struct json j, m;
	const char *file, *data;
	char *taken;
	size_t i, len, tlen;

	(void)state;
	for (i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		cap_open(&c);
		json_init(&j, c.f, levels[i]);
		write_sample(&j);
		assert_int_equal(json_finish(&j), 0);
		file = cap_close(&c);

		json_init_mem(&m, 0, levels[i]);
		write_sample(&m);
		assert_int_equal(json_finish(&m), 0);
		data = json_mem_data(&m, &len);
		assert_int_equal(len, strlen(file));
		assert_memory_equal(data, file, len);
		taken = json_mem_take(&m, &tlen);
		assert_non_null(taken);
		assert_int_equal(tlen, len);
		assert_int_equal(strlen(taken), len);
		assert_string_equal(taken, file);
		free(taken);
		/* taken: the writer holds nothing any more */
		assert_null(json_mem_data(&m, &len));
		assert_int_equal(len, 0);
		json_mem_free(&m);
	}
}

/* Past its bound the buffer stops growing: a sticky write error, the text
 * so far kept (and never longer than the bound). */
static void
test_mem_bound(void **state)
{
	struct json m;
	size_t len;
	char *t;

	(void)state;
	json_init_mem(&m, 100, 0);
	write_sample(&m);
	assert_true(m.failed);
	assert_int_equal(m.err, EMSGSIZE);
	assert_int_equal(json_finish(&m), -1);
	assert_true(json_mem_data(&m, &len) != NULL);
	assert_true(len <= 100);
	json_mem_free(&m);

	/* exactly at the bound is fine */
	json_init_mem(&m, 8, 0);
	json_string(&m, "abcde"); /* "abcde" plus the newline: 8 bytes */
	assert_int_equal(json_finish(&m), 0);
	t = json_mem_take(&m, &len);
	assert_string_equal(t, "\"abcde\"\n");
	free(t);

	/* nothing written: nothing to take */
	json_init_mem(&m, 0, 0);
	assert_null(json_mem_take(&m, &len));
	assert_int_equal(len, 0);
	json_mem_free(&m);
}

static void
test_valid(void **state)
{
	static const char *good[] = {
		"{}", "[]", "0", "-0", "1.5e10", "-1.25E-3", "\"\"", "true", "false", "null", " {\"a\" : [1, {}]} \n",
		"{\"version\":\"TLSv1.3\",\"verified\":true,\"sni\":null}", "\"\\u00e9\\n\\/\"", "\"caf\xc3\xa9\"",
	};
	static const char *bad[] = {
		"",	      " ",	   "{",		"}",	     "[1,]",	    "{\"a\":1,}", "{a:1}",
		"01",	      "1.",	   ".5",	"1e",	     "+1",	    "tru",	  "nul",
		"\"a",	      "\"\\x\"",   "\"\\u12\"", "\"\t\"",    "\"\x80\"",    "[1 2]",	  "{} {}",
		"{\"a\" 1}",  "NaN",	   "'a'",	"[1]x",	     "{\"a\":}",
	};
	char deep[2 * JSON_DEPTH_MAX + 8];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_true(json_valid(good[i], strlen(good[i])));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (json_valid(bad[i], strlen(bad[i])))
			fail_msg("accepted invalid JSON: '%s'", bad[i]);
	/* A length shorter than the text: only that part counts. */
	assert_true(json_valid("[1]]", 3));
	assert_false(json_valid("[1]", 2));

	memset(deep, 0, sizeof(deep));
	memset(deep, '[', JSON_DEPTH_MAX);
	memset(deep + JSON_DEPTH_MAX, ']', JSON_DEPTH_MAX);
	assert_true(json_valid(deep, strlen(deep)));
	memset(deep, 0, sizeof(deep));
	memset(deep, '[', JSON_DEPTH_MAX + 1);
	memset(deep + JSON_DEPTH_MAX + 1, ']', JSON_DEPTH_MAX + 1);
	assert_false(json_valid(deep, strlen(deep)));
}

static int
teardown_last(void **state)
{
	(void)state;
	free(last);
	last = NULL;
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_compact_nesting),
		cmocka_unit_test(test_pretty),
		cmocka_unit_test(test_levels),
		cmocka_unit_test(test_escape_ascii),
		cmocka_unit_test(test_escape_utf8_valid),
		cmocka_unit_test(test_escape_utf8_invalid),
		cmocka_unit_test(test_utf8_decode_reference),
		cmocka_unit_test(test_random_bytes_stay_valid),
		cmocka_unit_test(test_misuse),
		cmocka_unit_test(test_depth_limit),
		cmocka_unit_test(test_write_error),
		cmocka_unit_test(test_mem_same_as_file),
		cmocka_unit_test(test_mem_bound),
		cmocka_unit_test(test_valid),
	};

	return cmocka_run_group_tests(tests, NULL, teardown_last);
}
