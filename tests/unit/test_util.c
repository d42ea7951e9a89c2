/*
 * test_util.c - address parsing and formatting (util.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "smtptap/util.h"

static void
test_split_ipv4(void **state)
{
	char host[64], port[8], err[128];

	(void)state;
	assert_int_equal(util_split_hostport("127.0.0.1:2525", host, sizeof(host), port, sizeof(port), err,
					     sizeof(err)), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_string_equal(port, "2525");
	assert_int_equal(util_split_hostport("mx.example.com:25", host, sizeof(host), port, sizeof(port), err,
					     sizeof(err)), 0);
	assert_string_equal(host, "mx.example.com");
	assert_int_equal(util_split_hostport(":0", host, sizeof(host), port, sizeof(port), err, sizeof(err)), 0);
	assert_string_equal(host, "");
	assert_string_equal(port, "0");
}

static void
test_split_ipv6(void **state)
{
	char host[64], port[8], err[128];

	(void)state;
	assert_int_equal(util_split_hostport("[::1]:587", host, sizeof(host), port, sizeof(port), err, sizeof(err)), 0);
	assert_string_equal(host, "::1");
	assert_string_equal(port, "587");
	assert_int_equal(util_split_hostport("::1:587", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
	assert_non_null(strstr(err, "brackets"));
	assert_int_equal(util_split_hostport("[::1]587", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
}

static void
test_split_errors(void **state)
{
	char host[8], port[8], err[128];

	(void)state;
	assert_int_equal(util_split_hostport("localhost", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
	assert_int_equal(util_split_hostport("a:65536", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
	assert_int_equal(util_split_hostport("a:-1", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
	assert_int_equal(util_split_hostport("a:25x", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
	assert_int_equal(util_split_hostport("a:", host, sizeof(host), port, sizeof(port), err, sizeof(err)), -1);
	/* host longer than the buffer is an error, not a truncation */
	assert_int_equal(util_split_hostport("averyveryverylonghost:25", host, sizeof(host), port, sizeof(port), err,
					     sizeof(err)), -1);
	assert_non_null(strstr(err, "too long"));
}

static void
test_format_addr(void **state)
{
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;
	char buf[UTIL_ADDR_MAX];

	(void)state;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons(2525);
	inet_pton(AF_INET, "192.0.2.7", &sin.sin_addr);
	assert_string_equal(util_format_addr((struct sockaddr *)&sin, buf, sizeof(buf)), "192.0.2.7:2525");
	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_port = htons(25);
	inet_pton(AF_INET6, "2001:db8::1", &sin6.sin6_addr);
	assert_string_equal(util_format_addr((struct sockaddr *)&sin6, buf, sizeof(buf)), "[2001:db8::1]:25");
}

static void
test_parse_int(void **state)
{
	long v;

	(void)state;
	assert_int_equal(util_parse_int("42", 0, 100, &v), 0);
	assert_int_equal(v, 42);
	assert_int_equal(util_parse_int("101", 0, 100, &v), -1);
	assert_int_equal(util_parse_int("", 0, 100, &v), -1);
	assert_int_equal(util_parse_int("4 2", 0, 100, &v), -1);
	assert_int_equal(util_parse_int("99999999999999999999999", 0, 100, &v), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_split_ipv4), cmocka_unit_test(test_split_ipv6),
		cmocka_unit_test(test_split_errors), cmocka_unit_test(test_format_addr),
		cmocka_unit_test(test_parse_int),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
