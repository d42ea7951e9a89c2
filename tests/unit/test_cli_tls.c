/*
 * test_cli_tls.c - unit tests for the readable TLS line of `smtptap show`
 * (src/cli_tls.c).
 *
 * The line is captured with open_memstream() and compared byte for byte:
 * records as tls_info_json writes them for each leg, records from another
 * version or edited by hand (fields missing, null, mistyped, unknown), and
 * hostile text, which must come out escaped.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/cli_tls.h"

static char *last;

static const char *summary(const char *json);

/* The summary of json; valid until the next call. */
static const char *
summary(const char *json)
{
	size_t len = 0;
	FILE *f;

	free(last);
	last = NULL;
	f = open_memstream(&last, &len);
	assert_non_null(f);
	cli_tls_put_summary(f, json);
	assert_int_equal(fclose(f), 0);
	return last;
}

static void
test_client_leg(void **state)
{
	(void)state;
	assert_string_equal(
		summary("{\"mode\":\"starttls\",\"version\":\"TLSv1.3\",\"cipher\":\"TLS_AES_256_GCM_SHA384\","
			"\"sni\":\"localhost\",\"cert_subject\":\"CN=localhost\","
			"\"cert_issuer\":\"CN=smtptap local CA (host),O=smtptap\",\"cert_sha256\":\"B9:2A:01\","
			"\"verified\":null,\"verify_error\":null,\"forged\":true,\"handshake_us\":2712}"),
		"TLSv1.3 TLS_AES_256_GCM_SHA384 (starttls), sni localhost, certificate CN=localhost forged by "
		"smtptap (CN=smtptap local CA (host),O=smtptap), sha256 B9:2A:01, handshake 2.7 ms");
	/* no SNI sent: said so, since it explains the certificate's name */
	assert_string_equal(summary("{\"mode\":\"implicit\",\"version\":\"TLSv1.2\",\"cipher\":\"C\",\"sni\":null,"
				    "\"cert_subject\":\"CN=127.0.0.1\",\"cert_issuer\":\"CN=Own\","
				    "\"forged\":false,\"handshake_us\":0}"),
			    "TLSv1.2 C (implicit), no sni, certificate CN=127.0.0.1 issued by CN=Own, handshake 0.0 ms");
}

static void
test_upstream_leg(void **state)
{
	(void)state;
	assert_string_equal(
		summary("{\"mode\":\"implicit\",\"version\":\"TLSv1.3\",\"cipher\":\"TLS_AES_256_GCM_SHA384\","
			"\"sni\":\"mx.example\",\"cert_subject\":\"CN=mx.example\",\"cert_issuer\":\"CN=Example CA\","
			"\"cert_sha256\":\"AA:BB\",\"verified\":true,\"verify_error\":null,\"forged\":false,"
			"\"handshake_us\":12345}"),
		"TLSv1.3 TLS_AES_256_GCM_SHA384 (implicit), sni mx.example, certificate CN=mx.example issued by "
		"CN=Example CA, verified, sha256 AA:BB, handshake 12.3 ms");
	assert_string_equal(summary("{\"mode\":\"starttls\",\"version\":\"TLSv1.3\",\"cipher\":\"X\",\"sni\":null,"
				    "\"cert_subject\":\"CN=mx\",\"cert_issuer\":\"CN=mx\",\"verified\":false,"
				    "\"verify_error\":\"self-signed certificate\",\"forged\":false}"),
			    "TLSv1.3 X (starttls), no sni, certificate CN=mx issued by CN=mx, NOT verified: "
			    "self-signed certificate");
	/* not verified, reason unknown */
	assert_string_equal(summary("{\"verified\":false,\"verify_error\":\"\"}"), "NOT verified");
}

/* Another version's or a hand-edited record: what is known and well
 * typed is shown, the rest left out. */
static void
test_partial_records(void **state)
{
	(void)state;
	assert_string_equal(summary("{\"version\":\"TLSv1.2\"}"), "TLSv1.2");
	assert_string_equal(summary("{\"cipher\":\"C\"}"), "C");
	assert_string_equal(summary("{\"mode\":\"starttls\"}"), "(starttls)");
	assert_string_equal(summary("{\"version\":5,\"cipher\":\"C\",\"mode\":null}"), "C");
	assert_string_equal(summary("{\"version\":\"\",\"cipher\":\"\",\"mode\":\"\",\"handshake_us\":1500}"),
			    "handshake 1.5 ms");
	assert_string_equal(summary("{\"version\":\"V\",\"future\":{\"a\":[1,2]},\"extra\":\"x\"}"), "V");
	assert_string_equal(summary("{\"cert_issuer\":\"CN=I\"}"), "certificate (empty subject) issued by CN=I");
	assert_string_equal(summary("{\"forged\":true}"), "certificate forged by smtptap");
	assert_string_equal(summary("{\"cert_subject\":\"CN=s\",\"forged\":true}"),
			    "certificate CN=s forged by smtptap");
	/* handshake: negative, mistyped or huge are left out; fractions kept */
	assert_string_equal(summary("{\"version\":\"V\",\"handshake_us\":-5}"), "V");
	assert_string_equal(summary("{\"version\":\"V\",\"handshake_us\":\"5\"}"), "V");
	assert_string_equal(summary("{\"version\":\"V\",\"handshake_us\":1e999}"), "V");
	assert_string_equal(summary("{\"version\":\"V\",\"handshake_us\":2500.0}"), "V, handshake 2.5 ms");
	/* an sni of another type says nothing */
	assert_string_equal(summary("{\"version\":\"V\",\"sni\":7}"), "V");
	assert_string_equal(summary("{\"version\":\"V\",\"sni\":\"\"}"), "V, no sni");
	/* verified of another type says nothing */
	assert_string_equal(summary("{\"version\":\"V\",\"verified\":\"yes\"}"), "V");
	/* the last of repeated names, as JSON readers do */
	assert_string_equal(summary("{\"version\":\"A\",\"version\":\"B\"}"), "B");
}

/* Nothing this version can read: the stored text, escaped. */
static void
test_fallback(void **state)
{
	(void)state;
	assert_string_equal(summary("{}"), "{}");
	assert_string_equal(summary("{\"other\":1}"), "{\"other\":1}");
	assert_string_equal(summary(""), "");
	assert_string_equal(summary("TLSv1.3 by hand"), "TLSv1.3 by hand");
	assert_string_equal(summary("[\"TLSv1.3\"]"), "[\"TLSv1.3\"]");
	assert_string_equal(summary("{\"version\":\"TLSv1.3\""), "{\"version\":\"TLSv1.3\"");
	assert_string_equal(summary("{\"version\":\"\x1b[2J\"\n"), "{\"version\":\"\\x1b[2J\"\\n");
}

/* Text from the peers is escaped like everything else in the header. */
static void
test_hostile_text(void **state)
{
	(void)state;
	assert_string_equal(summary("{\"sni\":\"evil\\u001b[31m\\r\\nx\\u0000y\\\\\",\"cert_subject\":"
				    "\"CN=a\\u009bb\",\"cert_issuer\":\"CN=\\u00e9\",\"forged\":false}"),
			    "sni evil\\x1b[31m\\r\\nx\\x00y\\\\, certificate CN=a\\xc2\\x9bb issued by CN=\xc3\xa9");
	assert_string_equal(summary("{\"verified\":false,\"verify_error\":\"bad\\u0007\"}"),
			    "NOT verified: bad\\x07");
	assert_string_equal(summary("{\"mode\":\"a)b\\n\"}"), "(a)b\\n)");
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
		cmocka_unit_test(test_client_leg),
		cmocka_unit_test(test_upstream_leg),
		cmocka_unit_test(test_partial_records),
		cmocka_unit_test(test_fallback),
		cmocka_unit_test(test_hostile_text),
	};

	return cmocka_run_group_tests(tests, NULL, teardown_last);
}
