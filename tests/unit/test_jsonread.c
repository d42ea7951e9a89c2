/*
 * test_jsonread.c - unit tests for the flat-object JSON reader
 * (src/jsonread.c).
 *
 * Besides the values it must read, the reader is fed what a hand-edited
 * or hostile database could hold: every truncation and many one-byte
 * mutations of a real TLS record, random bytes, deep nesting, too many
 * members.  Whatever it accepts must agree with json_valid, and every
 * pointer it hands out must lie inside its own buffer (ASan checks the
 * reads).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/json.h"
#include "smtptap/jsonread.h"

/* What tls_info_json writes for a client leg (one line). */
static const char tls_record[] =
	"{\"mode\":\"starttls\",\"version\":\"TLSv1.3\",\"cipher\":\"TLS_AES_256_GCM_SHA384\",\"sni\":null,"
	"\"cert_subject\":\"CN=127.0.0.1\",\"cert_issuer\":\"CN=smtptap local CA (vm),O=smtptap\","
	"\"cert_sha256\":\"E8:82:82:00:7C:77\",\"verified\":null,\"verify_error\":null,\"forged\":true,"
	"\"handshake_us\":14825}";

static int parse(struct jsonread_obj *o, const char *text);
static void check_sane(const struct jsonread_obj *o, size_t len);
static int check_any(const void *p, size_t len);

static int
parse(struct jsonread_obj *o, const char *text)
{
	return jsonread_object(o, text, strlen(text));
}

/* Every key and string lies inside the object's buffer (len + 1 bytes),
 * NUL-terminated at its length. */
static void
check_sane(const struct jsonread_obj *o, size_t len)
{
	size_t k;

	for (k = 0; k < o->n; k++) {
		const struct jsonread_member *m = &o->m[k];

		assert_true(m->key >= o->buf && m->key + m->keylen < o->buf + len + 1);
		assert_int_equal(m->key[m->keylen], '\0');
		if (m->v.type == JSONREAD_STRING) {
			assert_true(m->v.s >= o->buf && m->v.s + m->v.len < o->buf + len + 1);
			assert_int_equal(m->v.s[m->v.len], '\0');
		}
	}
}

/* Parse arbitrary bytes (copied to an exact-size heap block so ASan sees
 * any read past them): accepted exactly when json_valid says it is JSON
 * and it is an object (with at most JSONREAD_MEMBERS_MAX members).
 * Returns the result. */
static int
check_any(const void *p, size_t len)
{
	struct jsonread_obj o;
	char *copy = malloc(len > 0 ? len : 1);
	size_t i = 0;
	int r;

	assert_non_null(copy);
	memcpy(copy, p, len);
	r = jsonread_object(&o, copy, len);
	while (i < len && (copy[i] == ' ' || copy[i] == '\t' || copy[i] == '\r' || copy[i] == '\n'))
		i++;
	if (i < len && json_valid(copy, len) && copy[i] == '{')
		assert_int_equal(r, JSONREAD_OK);
	else
		assert_int_equal(r, JSONREAD_EINVAL);
	if (r == JSONREAD_OK)
		check_sane(&o, len);
	jsonread_free(&o);
	free(copy);
	return r;
}

static void
test_tls_record(void **state)
{
	struct jsonread_obj o;
	const struct jsonread_value *v;
	size_t len;

	(void)state;
	assert_int_equal(parse(&o, tls_record), JSONREAD_OK);
	assert_int_equal(o.n, 11);
	check_sane(&o, strlen(tls_record));
	assert_string_equal(jsonread_get_string(&o, "mode", &len), "starttls");
	assert_int_equal(len, 8);
	assert_string_equal(jsonread_get_string(&o, "cert_issuer", NULL), "CN=smtptap local CA (vm),O=smtptap");
	assert_null(jsonread_get_string(&o, "sni", NULL)); /* null */
	assert_null(jsonread_get_string(&o, "forged", NULL)); /* not a string */
	assert_null(jsonread_get_string(&o, "absent", NULL));
	assert_int_equal(jsonread_get_bool(&o, "forged"), 1);
	assert_int_equal(jsonread_get_bool(&o, "verified"), -1);
	assert_int_equal(jsonread_get_bool(&o, "mode"), -1);
	v = jsonread_get(&o, "sni");
	assert_non_null(v);
	assert_int_equal(v->type, JSONREAD_NULL);
	v = jsonread_get(&o, "handshake_us");
	assert_non_null(v);
	assert_int_equal(v->type, JSONREAD_NUMBER);
	assert_true(v->is_int);
	assert_int_equal(v->i, 14825);
	assert_true(v->num == 14825.0);
	assert_string_equal(o.m[0].key, "mode");
	assert_string_equal(o.m[10].key, "handshake_us");
	jsonread_free(&o);
	assert_null(o.m);
	assert_null(o.buf);
	jsonread_free(&o); /* twice is harmless */
}

static void
test_empty_and_space(void **state)
{
	struct jsonread_obj o;

	(void)state;
	assert_int_equal(parse(&o, "{}"), JSONREAD_OK);
	assert_int_equal(o.n, 0);
	assert_null(jsonread_get(&o, "x"));
	jsonread_free(&o);
	assert_int_equal(parse(&o, " \r\n\t{ \"a\" : false ,\"b\":\t\"\" }\n"), JSONREAD_OK);
	assert_int_equal(o.n, 2);
	assert_int_equal(jsonread_get_bool(&o, "a"), 0);
	assert_string_equal(jsonread_get_string(&o, "b", NULL), "");
	jsonread_free(&o);
}

static void
test_string_escapes(void **state)
{
	static const char text[] = "{\"e\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\","
				   "\"u\":\"caf\\u00e9 \\u20AC\","
				   "\"pair\":\"\\ud83d\\ude00\","
				   "\"lone_hi\":\"a\\ud800b\","
				   "\"lone_lo\":\"\\udc00\","
				   "\"hi_then_bmp\":\"\\ud800\\u0041\","
				   "\"nul\":\"x\\u0000y\","
				   "\"raw\":\"\xc3\xa9\xe2\x82\xac\","
				   "\"k\\u0065y\":1}";
	struct jsonread_obj o;
	const char *s;
	size_t len;

	(void)state;
	assert_int_equal(parse(&o, text), JSONREAD_OK);
	assert_string_equal(jsonread_get_string(&o, "e", NULL), "\"\\/\b\f\n\r\t");
	assert_string_equal(jsonread_get_string(&o, "u", NULL), "caf\xc3\xa9 \xe2\x82\xac");
	assert_string_equal(jsonread_get_string(&o, "pair", NULL), "\xf0\x9f\x98\x80");
	assert_string_equal(jsonread_get_string(&o, "lone_hi", NULL), "a\xef\xbf\xbd" "b");
	assert_string_equal(jsonread_get_string(&o, "lone_lo", NULL), "\xef\xbf\xbd");
	assert_string_equal(jsonread_get_string(&o, "hi_then_bmp", NULL), "\xef\xbf\xbd" "A");
	s = jsonread_get_string(&o, "nul", &len);
	assert_non_null(s);
	assert_int_equal(len, 3);
	assert_memory_equal(s, "x\0y", 3);
	assert_string_equal(jsonread_get_string(&o, "raw", NULL), "\xc3\xa9\xe2\x82\xac");
	/* keys are decoded too */
	assert_non_null(jsonread_get(&o, "key"));
	check_sane(&o, strlen(text));
	jsonread_free(&o);
}

static void
test_numbers(void **state)
{
	struct jsonread_obj o;
	const struct jsonread_value *v;
	char big[400];

	(void)state;
	assert_int_equal(parse(&o, "{\"z\":0,\"neg\":-17,\"max\":9223372036854775807,"
				   "\"min\":-9223372036854775808,\"over\":9223372036854775808,"
				   "\"under\":-9223372036854775809,\"frac\":2.5,\"exp\":1e3,\"negexp\":-25E-1,"
				   "\"huge\":1e999,\"negzero\":-0}"),
			 JSONREAD_OK);
	v = jsonread_get(&o, "z");
	assert_true(v->is_int && v->i == 0);
	v = jsonread_get(&o, "neg");
	assert_true(v->is_int && v->i == -17 && v->num == -17.0);
	v = jsonread_get(&o, "max");
	assert_true(v->is_int && v->i == INT64_MAX);
	v = jsonread_get(&o, "min");
	assert_true(v->is_int && v->i == INT64_MIN);
	v = jsonread_get(&o, "over");
	assert_true(!v->is_int && v->num > 9.2e18);
	v = jsonread_get(&o, "under");
	assert_true(!v->is_int && v->num < -9.2e18);
	v = jsonread_get(&o, "frac");
	assert_true(!v->is_int && v->num == 2.5);
	v = jsonread_get(&o, "exp");
	assert_true(!v->is_int && v->num == 1000.0);
	v = jsonread_get(&o, "negexp");
	assert_true(!v->is_int && v->num == -2.5);
	v = jsonread_get(&o, "huge");
	assert_true(!v->is_int && isinf(v->num));
	v = jsonread_get(&o, "negzero");
	assert_true(v->is_int && v->i == 0);
	jsonread_free(&o);

	/* a number longer than the inline copy */
	memset(big, 0, sizeof(big));
	strcpy(big, "{\"n\":1.");
	memset(big + strlen(big), '5', 300);
	strcat(big, "}");
	assert_int_equal(parse(&o, big), JSONREAD_OK);
	v = jsonread_get(&o, "n");
	assert_true(v->num > 1.5 && v->num < 1.6);
	jsonread_free(&o);
}

static void
test_nested_and_duplicates(void **state)
{
	struct jsonread_obj o;
	const struct jsonread_value *v;

	(void)state;
	assert_int_equal(parse(&o, "{\"a\":{\"b\":[1,\"}]\\\"{\",{}],\"c\":{}},\"arr\":[],\"d\":\"x\",\"d\":\"y\"}"),
			 JSONREAD_OK);
	assert_int_equal(o.n, 4);
	v = jsonread_get(&o, "a");
	assert_int_equal(v->type, JSONREAD_NESTED);
	assert_int_equal(jsonread_get(&o, "arr")->type, JSONREAD_NESTED);
	assert_string_equal(jsonread_get_string(&o, "d", NULL), "y"); /* the last one */
	jsonread_free(&o);
}

static void
test_refused(void **state)
{
	static const char *bad[] = {
		"", " ", "null", "[]", "[{\"a\":1}]", "\"{}\"", "1", "{", "}", "{\"a\"}", "{\"a\":}",
		"{\"a\":1,}", "{,}", "{'a':1}", "{a:1}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":+1}",
		"{\"a\":tru}", "{\"a\":nul}", "{\"a\":True}", "{} x", "{}{}", "{\"a\":\"\x01\"}",
		"{\"a\":\"\xc3\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\\x41\"}", "{\"a\":\"\\u12\"}",
		"{\"a\":\"unterminated}", "{\"a\":[1,2}", "{\"a\":{\"b\":1]}", "{\"a\" 1}",
	};
	struct jsonread_obj o;
	size_t k;

	(void)state;
	for (k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		assert_int_equal(parse(&o, bad[k]), JSONREAD_EINVAL);
		assert_int_equal(o.n, 0);
		jsonread_free(&o);
	}
	assert_int_equal(jsonread_object(&o, NULL, 0), JSONREAD_EINVAL);
	jsonread_free(&o);
	/* a NUL byte outside a string */
	assert_int_equal(jsonread_object(&o, "{\"a\":1}\0", 8), JSONREAD_EINVAL);
	jsonread_free(&o);
	/* the length counts, not the NUL: "{}" followed by more text */
	assert_int_equal(jsonread_object(&o, "{}", 1), JSONREAD_EINVAL);
	jsonread_free(&o);
}

static void
test_depth(void **state)
{
	struct jsonread_obj o;
	char text[2 * (JSON_DEPTH_MAX + 8) + 16];
	size_t n, d, k;

	(void)state;
	for (d = JSON_DEPTH_MAX - 1; d <= JSON_DEPTH_MAX + 2; d++) {
		/* {"a": then d arrays deep (the object is depth 1) */
		n = 0;
		n += (size_t)sprintf(text + n, "{\"a\":");
		for (k = 0; k < d; k++)
			text[n++] = '[';
		for (k = 0; k < d; k++)
			text[n++] = ']';
		text[n++] = '}';
		text[n] = '\0';
		check_any(text, n);
		if (d + 1 <= JSON_DEPTH_MAX)
			assert_int_equal(parse(&o, text), JSONREAD_OK);
		else
			assert_int_equal(parse(&o, text), JSONREAD_EINVAL);
		jsonread_free(&o);
	}
}

static void
test_members_max(void **state)
{
	struct jsonread_obj o;
	size_t cap = 16 * (JSONREAD_MEMBERS_MAX + 2), n, k;
	char *text = malloc(cap);

	(void)state;
	assert_non_null(text);
	for (int extra = 0; extra <= 1; extra++) {
		n = 0;
		text[n++] = '{';
		for (k = 0; k < JSONREAD_MEMBERS_MAX + (size_t)extra; k++)
			n += (size_t)snprintf(text + n, cap - n, "%s\"k%zu\":%zu", k > 0 ? "," : "", k, k);
		text[n++] = '}';
		assert_int_equal(jsonread_object(&o, text, n), extra ? JSONREAD_EINVAL : JSONREAD_OK);
		if (!extra) {
			assert_int_equal(o.n, JSONREAD_MEMBERS_MAX);
			assert_int_equal(jsonread_get(&o, "k1023")->i, 1023);
		}
		jsonread_free(&o);
	}
	free(text);
}

/* Every prefix, and every position replaced by each of a set of bytes
 * that change the structure. */
static void
test_mutations(void **state)
{
	static const unsigned char subst[] = { '"', '\\', '{', '}', '[', ']', ':', ',', '0', '-', 'e', '.', 'u',
					       ' ', 0, 0x01, 0x7f, 0x80, 0xc3, 0xff, 't', 'n' };
	size_t len = strlen(tls_record), i, k;
	char buf[sizeof(tls_record)];

	(void)state;
	for (i = 0; i <= len; i++)
		check_any(tls_record, i);
	for (i = 0; i < len; i++)
		for (k = 0; k < sizeof(subst); k++) {
			memcpy(buf, tls_record, len);
			buf[i] = (char)subst[k];
			check_any(buf, len);
		}
}

/* Random bytes from a small alphabet of JSON's own characters (so that
 * some of it parses), with a fixed seed: reproducible. */
static void
test_random(void **state)
{
	static const char alpha[] = "{}[]\":,\\u0123456789abcdefnrtl -.eE\xc3\xa9\x01";
	unsigned long seed = 12345;
	char buf[64];
	size_t n, k, nok = 0;
	int round;

	(void)state;
	for (round = 0; round < 200000; round++) {
		seed = seed * 6364136223846793005ul + 1442695040888963407ul;
		n = (seed >> 33) % sizeof(buf);
		buf[0] = '{';
		for (k = 1; k < n; k++) {
			seed = seed * 6364136223846793005ul + 1442695040888963407ul;
			buf[k] = alpha[(seed >> 33) % (sizeof(alpha) - 1)];
		}
		nok += check_any(buf, n) == JSONREAD_OK;
	}
	assert_true(nok > 0); /* some of it parsed, not only refusals */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tls_record),
		cmocka_unit_test(test_empty_and_space),
		cmocka_unit_test(test_string_escapes),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_nested_and_duplicates),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_depth),
		cmocka_unit_test(test_members_max),
		cmocka_unit_test(test_mutations),
		cmocka_unit_test(test_random),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
