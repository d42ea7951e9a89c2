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

static void
test_parse_age(void **state)
{
	int64_t v;

	(void)state;
	assert_int_equal(util_parse_age("30m", &v), 0);
	assert_int_equal(v, 30LL * 60 * 1000000);
	assert_int_equal(util_parse_age("12h", &v), 0);
	assert_int_equal(v, 12LL * 3600 * 1000000);
	assert_int_equal(util_parse_age("7d", &v), 0);
	assert_int_equal(v, 7LL * 86400 * 1000000);
	assert_int_equal(util_parse_age("2w", &v), 0);
	assert_int_equal(v, 14LL * 86400 * 1000000);
	assert_int_equal(util_parse_age("1d12h", &v), 0);
	assert_int_equal(v, 36LL * 3600 * 1000000);
	assert_int_equal(util_parse_age("0s", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(util_parse_age("7", &v), -1);	 /* a unit is needed */
	assert_int_equal(util_parse_age("7x", &v), -1);
	assert_int_equal(util_parse_age("d", &v), -1);
	assert_int_equal(util_parse_age("", &v), -1);
	assert_int_equal(util_parse_age("-1d", &v), -1);
	assert_int_equal(util_parse_age("7 d", &v), -1);
	assert_int_equal(util_parse_age("99999999999999999w", &v), -1); /* overflow */
	assert_int_equal(util_parse_age("100000000w100000000w", &v), -1);
}

static void
test_parse_size(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(util_parse_size("1048576", &v), 0);
	assert_int_equal(v, 1048576);
	assert_int_equal(util_parse_size("500M", &v), 0);
	assert_int_equal(v, 500ULL << 20);
	assert_int_equal(util_parse_size("2G", &v), 0);
	assert_int_equal(v, 2ULL << 30);
	assert_int_equal(util_parse_size("2GiB", &v), 0);
	assert_int_equal(v, 2ULL << 30);
	assert_int_equal(util_parse_size("10kb", &v), 0);
	assert_int_equal(v, 10240);
	assert_int_equal(util_parse_size("1T", &v), 0);
	assert_int_equal(v, 1ULL << 40);
	assert_int_equal(util_parse_size("512B", &v), 0);
	assert_int_equal(v, 512);
	assert_int_equal(util_parse_size("1.5G", &v), -1);
	assert_int_equal(util_parse_size("M", &v), -1);
	assert_int_equal(util_parse_size("5X", &v), -1);
	assert_int_equal(util_parse_size("5MBs", &v), -1);
	assert_int_equal(util_parse_size("", &v), -1);
	assert_int_equal(util_parse_size("99999999999T", &v), -1); /* overflow */
}

static void
test_fmt_bytes(void **state)
{
	char buf[32];

	(void)state;
	util_fmt_bytes(buf, sizeof(buf), 512);
	assert_string_equal(buf, "512 B");
	util_fmt_bytes(buf, sizeof(buf), 1536);
	assert_string_equal(buf, "1.5 KiB");
	util_fmt_bytes(buf, sizeof(buf), 5LL << 30);
	assert_string_equal(buf, "5.0 GiB");
}

/* Address blocks: v4, v6, one address, IPv4-mapped clients, bad ones. */
static void
test_cidr(void **state)
{
	struct util_cidr c;
	const char *why;

	(void)state;
	assert_int_equal(util_parse_cidr("10.0.0.0/8", &c, &why), 0);
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 8);
	assert_true(util_cidr_match(&c, "10.255.1.2"));
	assert_true(util_cidr_match(&c, "::ffff:10.1.2.3")); /* a dual-stack listener's v4 client */
	assert_false(util_cidr_match(&c, "11.0.0.1"));
	assert_false(util_cidr_match(&c, "::1"));
	assert_false(util_cidr_match(&c, NULL));
	assert_false(util_cidr_match(&c, "garbage"));

	assert_int_equal(util_parse_cidr("192.168.1.77/26", &c, &why), 0); /* host bits ignored */
	assert_true(util_cidr_match(&c, "192.168.1.64"));
	assert_true(util_cidr_match(&c, "192.168.1.127"));
	assert_false(util_cidr_match(&c, "192.168.1.128"));
	assert_false(util_cidr_match(&c, "192.168.1.63"));

	assert_int_equal(util_parse_cidr("192.0.2.1", &c, &why), 0);
	assert_int_equal(c.prefix, 32);
	assert_true(util_cidr_match(&c, "192.0.2.1"));
	assert_false(util_cidr_match(&c, "192.0.2.2"));

	assert_int_equal(util_parse_cidr("0.0.0.0/0", &c, &why), 0);
	assert_true(util_cidr_match(&c, "1.2.3.4"));
	assert_false(util_cidr_match(&c, "2001:db8::1"));

	assert_int_equal(util_parse_cidr("2001:db8::/32", &c, &why), 0);
	assert_int_equal(c.family, AF_INET6);
	assert_true(util_cidr_match(&c, "2001:db8:ffff::1"));
	assert_false(util_cidr_match(&c, "2001:db9::1"));
	assert_int_equal(util_parse_cidr("[::1]", &c, &why), 0);
	assert_int_equal(c.prefix, 128);
	assert_true(util_cidr_match(&c, "::1"));
	assert_true(util_cidr_match(&c, "0:0::1"));
	assert_int_equal(util_parse_cidr("::ffff:10.0.0.0/104", &c, &why), 0);
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.prefix, 8);
	assert_true(util_cidr_match(&c, "10.9.9.9"));

	assert_int_equal(util_parse_cidr("10.0.0.0/33", &c, &why), -1);
	assert_int_equal(util_parse_cidr("2001:db8::/129", &c, &why), -1);
	assert_int_equal(util_parse_cidr("10.0.0.0/", &c, &why), -1);
	assert_int_equal(util_parse_cidr("10.0.0/8", &c, &why), -1);
	assert_int_equal(util_parse_cidr("example.com", &c, &why), -1);
	assert_int_equal(util_parse_cidr("", &c, &why), -1);
	assert_int_equal(util_parse_cidr("::ffff:10.0.0.0/8", &c, &why), -1);
}

static void
test_fmt_rfc3339(void **state)
{
	char buf[64];

	(void)state;
	util_fmt_rfc3339(buf, sizeof(buf), 1700000000123456LL);
	assert_string_equal(buf, "2023-11-14T22:13:20.123456Z");
	util_fmt_rfc3339(buf, sizeof(buf), 0);
	assert_string_equal(buf, "1970-01-01T00:00:00.000000Z");
	util_fmt_rfc3339(buf, sizeof(buf), -1);
	assert_string_equal(buf, "1969-12-31T23:59:59.999999Z");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_split_ipv4), cmocka_unit_test(test_split_ipv6),
		cmocka_unit_test(test_split_errors), cmocka_unit_test(test_format_addr),
		cmocka_unit_test(test_parse_int), cmocka_unit_test(test_parse_age),
		cmocka_unit_test(test_parse_size), cmocka_unit_test(test_fmt_bytes),
		cmocka_unit_test(test_cidr), cmocka_unit_test(test_fmt_rfc3339),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
