/*
 * test_cli_filter.c - unit tests for the values of `smtptap sessions`'s
 * filter flags (src/cli_filter.c): WHEN and --id.  Local times are tested
 * in fixed zones (TZ set here), so the results do not depend on the
 * machine's.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "smtptap/cli_filter.h"

#define SEC 1000000LL
/* 2023-11-14T22:13:20Z, a Tuesday */
#define NOW (1700000000LL * SEC + 250000)

static void
set_tz(const char *tz)
{
	setenv("TZ", tz, 1);
	tzset();
}

static int64_t
when_ok(const char *s)
{
	const char *why = NULL;
	int64_t v = -1;

	if (cli_filter_when(s, NOW, &v, &why) != 0)
		fail_msg("'%s' refused: %s", s, why);
	return v;
}

static void
when_bad(const char *s)
{
	const char *why = NULL;
	int64_t v = 12345;

	if (cli_filter_when(s, NOW, &v, &why) == 0)
		fail_msg("'%s' accepted as %lld", s, (long long)v);
	assert_non_null(why);
	assert_true(strlen(why) > 0);
	assert_int_equal(v, 12345);
}

static void
test_when_rfc3339(void **state)
{
	(void)state;
	set_tz("Europe/Berlin");
	/* a zone given: the local one does not matter */
	assert_int_equal(when_ok("2023-11-14T22:13:20Z"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-11-14t22:13:20z"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-11-14 22:13:20Z"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-11-14T23:13:20+01:00"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-11-14T17:43:20-04:30"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-11-14T22:13:20.5Z"), 1700000000LL * SEC + 500000);
	assert_int_equal(when_ok("2023-11-14T22:13:20.123456789Z"), 1700000000LL * SEC + 123456);
	assert_int_equal(when_ok("2023-11-14T22:13Z"), 1700000000LL * SEC - 20 * SEC);
	assert_int_equal(when_ok("1970-01-01T00:00:00Z"), 0);
	assert_int_equal(when_ok("2024-02-29T00:00:00Z"), 1709164800LL * SEC);
}

static void
test_when_local(void **state)
{
	(void)state;
	set_tz("UTC");
	assert_int_equal(when_ok("2023-11-14"), 1699920000LL * SEC);
	assert_int_equal(when_ok("2023-11-14 22:13"), 1700000000LL * SEC - 20 * SEC);
	assert_int_equal(when_ok("2023-11-14 22:13:20"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-11-14T22:13:20"), 1700000000LL * SEC);
	set_tz("Europe/Berlin"); /* UTC+1 in November, +2 in July */
	assert_int_equal(when_ok("2023-11-14 23:13:20"), 1700000000LL * SEC);
	assert_int_equal(when_ok("2023-07-01"), 1688162400LL * SEC);
	set_tz("America/New_York");
	assert_int_equal(when_ok("2023-11-14 17:13:20"), 1700000000LL * SEC);
}

static void
test_when_relative(void **state)
{
	(void)state;
	set_tz("UTC");
	assert_int_equal(when_ok("now"), NOW);
	assert_int_equal(when_ok("30m"), NOW - 30 * 60 * SEC);
	assert_int_equal(when_ok("2h"), NOW - 2 * 3600 * SEC);
	assert_int_equal(when_ok("7d"), NOW - 7 * 86400 * SEC);
	assert_int_equal(when_ok("1d12h"), NOW - 36 * 3600 * SEC);
	assert_int_equal(when_ok("today"), 1699920000LL * SEC);
	assert_int_equal(when_ok("yesterday"), 1699920000LL * SEC - 86400 * SEC);
	assert_int_equal(when_ok("@1700000000"), 1700000000LL * SEC);
	set_tz("Asia/Tokyo"); /* already the 15th there */
	assert_int_equal(when_ok("today"), 1699974000LL * SEC);
}

static void
test_when_bad(void **state)
{
	static const char *bad[] = {
		"",		      "yesterday ",	     "tomorrow",	 "30",		   "30x",
		"2023-11",	      "2023-11-1",	     "23-11-14",	 "2023/11/14",	   "2023-13-01",
		"2023-02-30",	      "2023-02-29",	     "2023-11-14 25:00", "2023-11-14 22:61", "2023-11-14 22",
		"2023-11-14T22:13:20+1",  "2023-11-14T22:13:20+01",   "2023-11-14T22:13:20.Z", "2023-11-14Z",
		"1969-12-31",	      "1969-12-31T23:59:59Z", "2023-11-14T22:13:20 Z", "@",		   "@-5",
		"@12x",		      "99999999999999999999d", "1d 2h",		 " 2023-11-14",
	};
	size_t i;

	(void)state;
	set_tz("UTC");
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		when_bad(bad[i]);
	/* an age reaching back before 1970 */
	when_bad("100000w");
}

static void
test_ids(void **state)
{
	struct reader_id_range r[64];
	const char *why;
	size_t n;
	char many[400];
	int i, k = 0;

	(void)state;
	assert_int_equal(cli_filter_ids("7", r, 64, &n, &why), 0);
	assert_int_equal(n, 1);
	assert_int_equal(r[0].first, 7);
	assert_int_equal(r[0].last, 7);
	assert_int_equal(cli_filter_ids("3,7-9,12", r, 64, &n, &why), 0);
	assert_int_equal(n, 3);
	assert_int_equal(r[1].first, 7);
	assert_int_equal(r[1].last, 9);
	assert_int_equal(r[2].first, 12);
	assert_int_equal(cli_filter_ids("5-5", r, 64, &n, &why), 0);
	assert_int_equal(cli_filter_ids("9223372036854775807", r, 64, &n, &why), 0);
	assert_int_equal(r[0].first, INT64_MAX);

	static const char *bad[] = { "", "0", "-3", "3-", "9-7", "3,,4", "3,", ",3", "a", "3 4", "3-4-5",
				     "92233720368547758070", "1.5" };
	for (i = 0; i < (int)(sizeof(bad) / sizeof(bad[0])); i++) {
		if (cli_filter_ids(bad[i], r, 64, &n, &why) == 0)
			fail_msg("--id '%s' accepted", bad[i]);
		assert_true(strlen(why) > 0);
	}
	/* at most max ranges */
	for (i = 1; i <= 65; i++)
		k += snprintf(many + k, sizeof(many) - (size_t)k, "%s%d", i > 1 ? "," : "", i);
	assert_int_equal(cli_filter_ids(many, r, 64, &n, &why), -1);
}

/* The flags themselves: taken, not ours, or a usage error naming the flag. */
static void
test_option(void **state)
{
	struct cli_filter cf;
	char err[256];

	(void)state;
	cli_filter_init(&cf, NOW);
	assert_int_equal(cli_filter_option(&cf, 'x', NULL, err, sizeof(err)), 0);
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_FROM, "a@b.example", err, sizeof(err)), 1);
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_RCPT, "@c.example", err, sizeof(err)), 1);
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_SINCE, "2h", err, sizeof(err)), 1);
	assert_true(cf.f.since_us == NOW - 7200LL * 1000000);
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_ID, "3,7-9", err, sizeof(err)), 1);
	assert_int_equal(cf.f.nids, 2);
	assert_ptr_equal(cf.f.ids, cf.ids);
	assert_int_equal(cf.nflags, 4);
	assert_false(cf.all);
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_ALL, NULL, err, sizeof(err)), 1);
	assert_true(cf.all);
	assert_int_equal(cf.nflags, 4);
	assert_int_equal(cli_filter_finish(&cf, err, sizeof(err)), 0);
	assert_string_equal(cf.f.sender, "a@b.example");
	assert_string_equal(cf.f.recipient, "@c.example");

	/* errors name the flag */
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_ID, "4", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "--id"));
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_UNTIL, "soon", err, sizeof(err)), -1);
	assert_non_null(strstr(err, "--until"));
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_TLS, NULL, err, sizeof(err)), 1);
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_NO_TLS, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "--no-tls"));

	cli_filter_init(&cf, NOW);
	cf.to_flag = "--rcpt";
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_CLIENT, "10.0.0.0/99", err, sizeof(err)), 1);
	assert_int_equal(cli_filter_finish(&cf, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "--client"));
	cli_filter_init(&cf, NOW);
	cf.to_flag = "--rcpt";
	assert_int_equal(cli_filter_option(&cf, CLI_FILTER_OPT_RCPT, "", err, sizeof(err)), 1);
	assert_int_equal(cli_filter_finish(&cf, err, sizeof(err)), -1);
	assert_true(strncmp(err, "--rcpt:", 7) == 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_when_rfc3339), cmocka_unit_test(test_when_local),
		cmocka_unit_test(test_when_relative), cmocka_unit_test(test_when_bad),
		cmocka_unit_test(test_ids), cmocka_unit_test(test_option),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
