/*
 * test_sink.c - the capture server's replies (sink.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "smtptap/sink.h"
#include "smtptap/smtp.h"

static size_t sink_cmd(struct sink *sk, const char *line, char *out);
static void assert_reply(const char *got, size_t len, const char *want_prefix);

static size_t
sink_cmd(struct sink *sk, const char *line, char *out)
{
	struct smtp_cmd cmd;

	assert_int_equal(smtp_parse_command(line, strlen(line), &cmd), 0);
	return sink_reply_command(sk, &cmd, out);
}

static void
assert_reply(const char *got, size_t len, const char *want_prefix)
{
	assert_true(len >= 2);
	assert_true(got[len - 2] == '\r' && got[len - 1] == '\n');
	assert_true(len >= strlen(want_prefix));
	assert_memory_equal(got, want_prefix, strlen(want_prefix));
}

static void
test_greeting(void **state)
{
	struct sink sk;
	char out[SINK_REPLY_MAX];
	size_t n;

	(void)state;
	sink_init(&sk, 7);
	n = sink_reply_greeting(&sk, out);
	assert_reply(out, n, "220 ");
}

static void
test_ehlo_capabilities(void **state)
{
	static const char *caps[] = { "PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "CHUNKING",
				      "ENHANCEDSTATUSCODES", "DSN", "AUTH PLAIN LOGIN" };
	struct sink sk;
	char out[SINK_REPLY_MAX + 1];
	size_t n, i;

	(void)state;
	sink_init(&sk, 1);
	n = sink_cmd(&sk, "EHLO client.example\r\n", out);
	out[n] = '\0';
	assert_reply(out, n, "250-smtptap Hello client.example\r\n");
	for (i = 0; i < sizeof(caps) / sizeof(caps[0]); i++)
		assert_non_null(strstr(out, caps[i]));
	assert_null(strstr(out, "STARTTLS"));
	/* every line but the last continues the reply */
	assert_non_null(strstr(out, "\r\n250 AUTH PLAIN LOGIN\r\n"));
}

static void
test_transaction_and_queue_id(void **state)
{
	struct sink sk;
	char out[SINK_REPLY_MAX + 1];
	size_t n;

	(void)state;
	sink_init(&sk, 42);
	sink_cmd(&sk, "EHLO x\r\n", out);
	n = sink_cmd(&sk, "MAIL FROM:<a@example.com> SIZE=10\r\n", out);
	assert_reply(out, n, "250 2.1.0");
	n = sink_cmd(&sk, "RCPT TO:<b@example.com>\r\n", out);
	assert_reply(out, n, "250 2.1.5");
	n = sink_cmd(&sk, "DATA\r\n", out);
	assert_reply(out, n, "354 ");
	n = sink_reply_data_end(&sk, 123, out);
	out[n] = '\0';
	assert_reply(out, n, "250 2.0.0");
	assert_non_null(strstr(out, "queued as smtptap-42-1"));
	/* the next transaction starts afresh and numbers on */
	n = sink_cmd(&sk, "DATA\r\n", out);
	assert_reply(out, n, "554 5.5.1");
	sink_cmd(&sk, "MAIL FROM:<>\r\n", out);
	sink_cmd(&sk, "RCPT TO:<c@example.com>\r\n", out);
	n = sink_reply_data_end(&sk, 1, out);
	out[n] = '\0';
	assert_non_null(strstr(out, "smtptap-42-2"));
}

static void
test_sequence_errors(void **state)
{
	struct sink sk;
	char out[SINK_REPLY_MAX];
	size_t n;

	(void)state;
	sink_init(&sk, 1);
	n = sink_cmd(&sk, "RCPT TO:<b@x>\r\n", out);
	assert_reply(out, n, "503 ");
	n = sink_cmd(&sk, "MAIL FROM:<a@x>\r\n", out);
	assert_reply(out, n, "250 ");
	n = sink_cmd(&sk, "MAIL FROM:<a@x>\r\n", out);
	assert_reply(out, n, "503 ");
	n = sink_cmd(&sk, "RSET\r\n", out);
	assert_reply(out, n, "250 ");
	n = sink_cmd(&sk, "RCPT TO:<b@x>\r\n", out);
	assert_reply(out, n, "503 ");
	n = sink_cmd(&sk, "MAIL FROM:a@x\r\n", out);
	assert_reply(out, n, "501 ");
}

static void
test_bdat(void **state)
{
	struct sink sk;
	struct smtp_cmd cmd;
	char out[SINK_REPLY_MAX + 1];
	size_t n;

	(void)state;
	sink_init(&sk, 3);
	sink_cmd(&sk, "MAIL FROM:<a@x>\r\n", out);
	sink_cmd(&sk, "RCPT TO:<b@x>\r\n", out);
	assert_int_equal(smtp_parse_command("BDAT 100\r\n", 10, &cmd), 0);
	n = sink_reply_bdat_chunk(&sk, &cmd, out);
	out[n] = '\0';
	assert_reply(out, n, "250 2.0.0");
	assert_non_null(strstr(out, "100 octets"));
	assert_int_equal(smtp_parse_command("BDAT 23 LAST\r\n", 14, &cmd), 0);
	n = sink_reply_bdat_chunk(&sk, &cmd, out);
	out[n] = '\0';
	assert_non_null(strstr(out, "123 bytes queued as smtptap-3-1"));
	assert_false(sk.in_tx);
}

static void
test_auth_plain_and_login(void **state)
{
	struct sink sk;
	char out[SINK_REPLY_MAX];
	size_t n;

	(void)state;
	sink_init(&sk, 1);
	n = sink_cmd(&sk, "AUTH PLAIN\r\n", out);
	assert_reply(out, n, "334 ");
	n = sink_reply_auth_line(&sk, "AHUAcA==", 8, out);
	assert_reply(out, n, "235 2.7.0");
	n = sink_cmd(&sk, "AUTH PLAIN AHUAcA==\r\n", out);
	assert_reply(out, n, "503 ");

	sink_init(&sk, 1);
	n = sink_cmd(&sk, "auth login\r\n", out);
	assert_reply(out, n, "334 VXNlcm5hbWU6");
	n = sink_reply_auth_line(&sk, "dQ==", 4, out);
	assert_reply(out, n, "334 UGFzc3dvcmQ6");
	n = sink_reply_auth_line(&sk, "cA==", 4, out);
	assert_reply(out, n, "235 ");

	sink_init(&sk, 1);
	n = sink_cmd(&sk, "AUTH LOGIN\r\n", out);
	n = sink_reply_auth_line(&sk, "*", 1, out);
	assert_reply(out, n, "501 ");
	assert_false(sk.authed);
	n = sink_cmd(&sk, "AUTH CRAM-MD5\r\n", out);
	assert_reply(out, n, "504 ");
}

static void
test_other_commands(void **state)
{
	struct sink sk;
	char out[SINK_REPLY_MAX];
	size_t n;

	(void)state;
	sink_init(&sk, 1);
	n = sink_cmd(&sk, "HELO x\r\n", out);
	assert_reply(out, n, "250 ");
	n = sink_cmd(&sk, "NOOP\r\n", out);
	assert_reply(out, n, "250 ");
	n = sink_cmd(&sk, "VRFY a\r\n", out);
	assert_reply(out, n, "252 ");
	n = sink_cmd(&sk, "EXPN a\r\n", out);
	assert_reply(out, n, "502 ");
	n = sink_cmd(&sk, "HELP\r\n", out);
	assert_reply(out, n, "214 ");
	n = sink_cmd(&sk, "XYZZY\r\n", out);
	assert_reply(out, n, "502 5.5.2");
	n = sink_cmd(&sk, "QUIT\r\n", out);
	assert_reply(out, n, "221 ");
}

static void
test_long_helo_bounded(void **state)
{
	struct sink sk;
	char line[4096], out[SINK_REPLY_MAX];
	size_t n;

	(void)state;
	memcpy(line, "EHLO ", 5);
	memset(line + 5, 'h', sizeof(line) - 8);
	memcpy(line + sizeof(line) - 3, "\r\n", 3);
	sink_init(&sk, 1);
	n = sink_cmd(&sk, line, out);
	assert_true(n < SINK_REPLY_MAX);
	assert_reply(out, n, "250-smtptap Hello hhhh");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_greeting),
		cmocka_unit_test(test_ehlo_capabilities),
		cmocka_unit_test(test_transaction_and_queue_id),
		cmocka_unit_test(test_sequence_errors),
		cmocka_unit_test(test_bdat),
		cmocka_unit_test(test_auth_plain_and_login),
		cmocka_unit_test(test_other_commands),
		cmocka_unit_test(test_long_helo_bounded),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
