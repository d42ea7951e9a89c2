/*
 * test_replay_auth.c - AUTH exchanges made again from a user name and a
 * password (replay_auth.c), against known answers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/replay_auth.h"

static const char *
step(const char *mech, bool initial, unsigned n, const char *user, const char *pass, const char *challenge)
{
	static char out[1024];

	if (replay_auth_step("AUTH", mech, initial, n, user, pass, challenge, out, sizeof(out)) == 0)
		return NULL;
	return out;
}

static void
test_plain(void **state)
{
	(void)state;
	/* "\0tim\0tanstaaftanstaaf" */
	assert_string_equal(step("PLAIN", true, 0, "tim", "tanstaaftanstaaf", NULL),
			    "AUTH PLAIN AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
	assert_string_equal(step("plain", false, 0, "tim", "tanstaaftanstaaf", NULL), "AUTH plain\r\n");
	assert_string_equal(step("PLAIN", false, 1, "tim", "tanstaaftanstaaf", NULL), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r\n");
	/* a server asking for more gets an empty line */
	assert_string_equal(step("PLAIN", false, 2, "tim", "x", NULL), "\r\n");
}

static void
test_login(void **state)
{
	(void)state;
	assert_string_equal(step("LOGIN", false, 0, "wp-user", "s3cret", NULL), "AUTH LOGIN\r\n");
	assert_string_equal(step("LOGIN", false, 1, "wp-user", "s3cret", "VXNlcm5hbWU6"), "d3AtdXNlcg==\r\n");
	assert_string_equal(step("LOGIN", false, 2, "wp-user", "s3cret", "UGFzc3dvcmQ6"), "czNjcmV0\r\n");
	/* the user as the initial response, then the password */
	assert_string_equal(step("LOGIN", true, 0, "wp-user", "s3cret", NULL), "AUTH LOGIN d3AtdXNlcg==\r\n");
	assert_string_equal(step("LOGIN", true, 1, "wp-user", "s3cret", NULL), "czNjcmV0\r\n");
}

static void
test_cram_md5_rfc2195(void **state)
{
	(void)state;
	assert_string_equal(step("CRAM-MD5", false, 0, "tim", "tanstaaftanstaaf", NULL), "AUTH CRAM-MD5\r\n");
	/* RFC 2195 section 2's example */
	assert_string_equal(step("CRAM-MD5", false, 1, "tim", "tanstaaftanstaaf",
				 "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"),
			    "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n");
	assert_null(step("CRAM-MD5", false, 1, "tim", "x", "not base64!"));
	assert_null(step("CRAM-MD5", false, 1, "tim", "x", NULL));
}

static void
test_xoauth2_and_refusals(void **state)
{
	char small[8];

	(void)state;
	/* "user=u@x\1auth=Bearer tok\1\1" */
	assert_string_equal(step("XOAUTH2", true, 0, "u@x", "tok", NULL),
			    "AUTH XOAUTH2 dXNlcj11QHgBYXV0aD1CZWFyZXIgdG9rAQE=\r\n");
	assert_true(replay_auth_supported("cram-md5"));
	assert_false(replay_auth_supported("SCRAM-SHA-256"));
	assert_null(step("SCRAM-SHA-256", false, 0, "u", "p", NULL));
	assert_int_equal(replay_auth_step("AUTH", "PLAIN", true, 0, "user", "pass", NULL, small, sizeof(small)), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_login),
		cmocka_unit_test(test_cram_md5_rfc2195),
		cmocka_unit_test(test_xoauth2_and_refusals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
