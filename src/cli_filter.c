/*
 * cli_filter.c - see cli_filter.h.
 */
#include "smtptap/cli_filter.h"

#include <string.h>
#include <time.h>

#include "smtptap/util.h"

static const char cli_filter_when_forms[] =
	"expected a date and time (2024-05-01, \"2024-05-01 14:02[:03]\" local time, "
	"2024-05-01T12:02:03Z), an age before now (30m, 2h, 7d), now, today or yesterday";

static int cli_filter_digits(const char **p, int n, int *out);
static int cli_filter_local(struct tm *tm, int64_t *out_us);
static int cli_filter_midnight(int64_t now_us, int days_back, int64_t *out_us);
static int cli_filter_id(const char **p, int64_t *out);

/* Exactly n decimal digits at *p (advanced past them). */
static int
cli_filter_digits(const char **p, int n, int *out)
{
	int i, v = 0;

	for (i = 0; i < n; i++) {
		if ((*p)[i] < '0' || (*p)[i] > '9')
			return -1;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

/* A broken-down local time into unix us; -1 when it does not exist
 * (February 30th: mktime would have moved it to March). */
static int
cli_filter_local(struct tm *tm, int64_t *out_us)
{
	struct tm want = *tm;
	time_t t;

	tm->tm_isdst = -1;
	if ((t = mktime(tm)) == (time_t)-1)
		return -1;
	if (tm->tm_mday != want.tm_mday || tm->tm_mon != want.tm_mon || tm->tm_year != want.tm_year)
		return -1;
	*out_us = (int64_t)t * 1000000;
	return 0;
}

/* Local midnight `days_back` days before today. */
static int
cli_filter_midnight(int64_t now_us, int days_back, int64_t *out_us)
{
	time_t now = (time_t)(now_us / 1000000);
	struct tm tm;
	time_t t;

	if (localtime_r(&now, &tm) == NULL)
		return -1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	tm.tm_mday -= days_back;
	tm.tm_isdst = -1;
	if ((t = mktime(&tm)) == (time_t)-1)
		return -1;
	*out_us = (int64_t)t * 1000000;
	return 0;
}

int
cli_filter_when(const char *s, int64_t now_us, int64_t *out_us, const char **why)
{
	const char *p = s;
	struct tm tm, chk;
	int y, mo, d, h = 0, mi = 0, sec = 0, zh = 0, zm = 0, sign = 1, ndig;
	int64_t age, frac = 0, scale;
	long v;
	time_t t;
	bool has_time = false, zone = false;

	*why = cli_filter_when_forms;
	if (s == NULL || *s == '\0')
		return -1;
	if (strcmp(s, "now") == 0) {
		*out_us = now_us;
		return 0;
	}
	if (strcmp(s, "today") == 0 || strcmp(s, "yesterday") == 0)
		return cli_filter_midnight(now_us, s[0] == 'y' ? 1 : 0, out_us);
	if (s[0] == '@') {
		if (util_parse_int(s + 1, 0, (long)(INT64_MAX / 1000000), &v) < 0 || s[1] < '0' || s[1] > '9')
			return -1;
		*out_us = (int64_t)v * 1000000;
		return 0;
	}
	if (util_parse_age(s, &age) == 0) {
		if (age > now_us) {
			*why = "that age reaches back before 1970";
			return -1;
		}
		*out_us = now_us - age;
		return 0;
	}
	/* YYYY-MM-DD */
	if (cli_filter_digits(&p, 4, &y) < 0 || *p++ != '-' || cli_filter_digits(&p, 2, &mo) < 0 || *p++ != '-' ||
	    cli_filter_digits(&p, 2, &d) < 0)
		return -1;
	/* [T| ]HH:MM[:SS[.frac]] */
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		has_time = true;
		if (cli_filter_digits(&p, 2, &h) < 0 || *p++ != ':' || cli_filter_digits(&p, 2, &mi) < 0)
			return -1;
		if (*p == ':') {
			p++;
			if (cli_filter_digits(&p, 2, &sec) < 0)
				return -1;
			if (*p == '.' || *p == ',') {
				p++;
				for (ndig = 0, scale = 100000; *p >= '0' && *p <= '9'; p++, ndig++) {
					frac += (*p - '0') * scale;
					scale /= 10;
				}
				if (ndig == 0)
					return -1;
			}
		}
	}
	/* Z or +HH:MM / -HH:MM: RFC 3339 */
	if (has_time && (*p == 'Z' || *p == 'z')) {
		p++;
		zone = true;
	} else if (has_time && (*p == '+' || *p == '-')) {
		sign = *p++ == '-' ? -1 : 1;
		if (cli_filter_digits(&p, 2, &zh) < 0 || *p++ != ':' || cli_filter_digits(&p, 2, &zm) < 0 || zh > 23 ||
		    zm > 59)
			return -1;
		zone = true;
	}
	if (*p != '\0')
		return -1;
	if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) {
		*why = "no such date or time";
		return -1;
	}
	memset(&tm, 0, sizeof(tm));
	tm.tm_year = y - 1900;
	tm.tm_mon = mo - 1;
	tm.tm_mday = d;
	tm.tm_hour = h;
	tm.tm_min = mi;
	tm.tm_sec = sec;
	if (!zone) {
		if (cli_filter_local(&tm, out_us) < 0) {
			*why = "no such date or time";
			return -1;
		}
		*out_us += frac;
		return 0;
	}
	chk = tm;
	t = timegm(&tm);
	if (tm.tm_mday != chk.tm_mday || tm.tm_mon != chk.tm_mon) {
		*why = "no such date";
		return -1;
	}
	t -= (time_t)sign * (zh * 3600 + zm * 60);
	if (t < 0) {
		*why = "a time before 1970";
		return -1;
	}
	*out_us = (int64_t)t * 1000000 + frac;
	return 0;
}

/* A session id (1 or more) at *p, advanced past it. */
static int
cli_filter_id(const char **p, int64_t *out)
{
	int64_t v = 0;

	if (**p < '0' || **p > '9')
		return -1;
	for (; **p >= '0' && **p <= '9'; (*p)++) {
		if (v > (INT64_MAX - (**p - '0')) / 10)
			return -1;
		v = v * 10 + (**p - '0');
	}
	if (v < 1)
		return -1;
	*out = v;
	return 0;
}

int
cli_filter_ids(const char *s, struct reader_id_range *out, size_t max, size_t *n, const char **why)
{
	const char *p = s;
	int64_t a, b;

	*n = 0;
	*why = "expected session ids (from 1) and ranges, such as 7, 7-9 or 3,7-9,12";
	if (s == NULL || *s == '\0')
		return -1;
	for (;;) {
		if (cli_filter_id(&p, &a) < 0)
			return -1;
		b = a;
		if (*p == '-') {
			p++;
			if (cli_filter_id(&p, &b) < 0)
				return -1;
			if (b < a) {
				*why = "a range of ids goes from the lower to the higher (7-9)";
				return -1;
			}
		}
		if (*n == max) {
			*why = "too many ids and ranges (at most 64)";
			return -1;
		}
		out[*n].first = a;
		out[*n].last = b;
		(*n)++;
		if (*p == '\0')
			return 0;
		if (*p++ != ',')
			return -1;
	}
}

/* ------------------------------------------------------------------------
 * the flags
 */

_Static_assert(CLI_FILTER_OPT_LAST_ <= CLI_FILTER_OPT_OWN, "the filter options overlap the commands' own");

/* reader_filter fields and the flags they come from, for errors. */
static const struct {
	const char *field, *flag;
} cli_filter_flag_of[] = {
	{ "since", "--since" },	     { "until", "--until" },	 { "sender", "--from" },
	{ "recipient", NULL },	     { "subject", "--search" }, { "message_id", "--message-id" },
	{ "client", "--client" },    { "outcome", "--outcome" }, { "mode", "--mode" },
	{ "tls", "--tls" },	     { "ids", "--id" },
};

void
cli_filter_init(struct cli_filter *cf, int64_t now_us)
{
	memset(cf, 0, sizeof(*cf));
	cf->now_us = now_us;
	cf->to_flag = "--to";
}

int
cli_filter_option(struct cli_filter *cf, int c, const char *arg, char *err, size_t errsz)
{
	struct reader_filter *f = &cf->f;
	const char *why;
	size_t n;

	switch (c) {
	case CLI_FILTER_OPT_ALL:
		cf->all = true;
		return 1;
	case CLI_FILTER_OPT_FROM:
		f->sender = arg;
		break;
	case CLI_FILTER_OPT_RCPT:
		f->recipient = arg;
		break;
	case CLI_FILTER_OPT_SINCE:
	case CLI_FILTER_OPT_UNTIL:
		if (cli_filter_when(arg, cf->now_us, c == CLI_FILTER_OPT_SINCE ? &f->since_us : &f->until_us, &why) < 0) {
			util_errf(err, errsz, "%s '%s': %s", c == CLI_FILTER_OPT_SINCE ? "--since" : "--until", arg, why);
			return -1;
		}
		break;
	case CLI_FILTER_OPT_SEARCH:
		f->subject = arg;
		break;
	case CLI_FILTER_OPT_MSGID:
		f->message_id = arg;
		break;
	case CLI_FILTER_OPT_OUTCOME:
		f->outcome = arg;
		break;
	case CLI_FILTER_OPT_CLIENT:
		f->client = arg;
		break;
	case CLI_FILTER_OPT_TLS:
	case CLI_FILTER_OPT_NO_TLS:
		if (f->tls != READER_TLS_ANY && f->tls != (c == CLI_FILTER_OPT_TLS ? READER_TLS_YES : READER_TLS_NO)) {
			util_errf(err, errsz, "--tls and --no-tls exclude each other: choose one");
			return -1;
		}
		f->tls = c == CLI_FILTER_OPT_TLS ? READER_TLS_YES : READER_TLS_NO;
		break;
	case CLI_FILTER_OPT_MODE:
		f->mode = arg;
		break;
	case CLI_FILTER_OPT_ID:
		if (f->nids > 0) {
			util_errf(err, errsz, "--id: give every id and range in one --id (3,7-9,12)");
			return -1;
		}
		if (cli_filter_ids(arg, cf->ids, READER_ID_RANGES_MAX, &n, &why) < 0) {
			util_errf(err, errsz, "--id '%s': %s", arg, why);
			return -1;
		}
		f->ids = cf->ids;
		f->nids = n;
		break;
	default:
		return 0;
	}
	cf->nflags++;
	return 1;
}

int
cli_filter_finish(struct cli_filter *cf, char *err, size_t errsz)
{
	const char *field, *flag;
	char why[384];
	size_t i;

	if (reader_filter_check(&cf->f, &field, why, sizeof(why)) == 0)
		return 0;
	flag = field;
	for (i = 0; i < sizeof(cli_filter_flag_of) / sizeof(cli_filter_flag_of[0]); i++)
		if (strcmp(cli_filter_flag_of[i].field, field) == 0)
			flag = cli_filter_flag_of[i].flag != NULL ? cli_filter_flag_of[i].flag : cf->to_flag;
	util_errf(err, errsz, "%s: %s", flag, why);
	return -1;
}

void
cli_filter_usage(FILE *f, bool with_to, bool with_all)
{
	fputs("      --from ADDR       a MAIL FROM of the session (envelope sender, case\n"
	      "                        ignored); @example.com for a whole domain, <> for\n"
	      "                        the null sender\n",
	      f);
	fputs(with_to ? "      --to ADDR         a RCPT TO of the session (envelope recipient, accepted\n"
			"                        or not); @example.com for a whole domain (also --rcpt)\n"
		      : "      --rcpt ADDR       a RCPT TO of the session (envelope recipient, accepted\n"
			"                        or not); @example.com for a whole domain\n",
	      f);
	fputs("      --since WHEN      started at or after WHEN\n"
	      "      --until WHEN      started before WHEN\n"
	      "      --search TEXT     TEXT in the Subject header of one of its messages\n"
	      "                        (decoded; ASCII case ignored; only the Subject)\n"
	      "      --message-id ID   a message with this Message-ID header (<> optional)\n"
	      "      --outcome WORD    how it ended: quit, client-closed, upstream-closed,\n"
	      "                        client-timeout, shutdown, interrupted, ...; live for\n"
	      "                        sessions still open\n"
	      "      --client ADDR     the client's IP address, or a block such as\n"
	      "                        10.0.0.0/8 or 2001:db8::/32\n"
	      "      --tls, --no-tls   with TLS on either leg / plaintext on both\n"
	      "      --mode MODE       relay, sink, replay or mock\n"
	      "      --id N[-M],...    these session ids and ranges\n",
	      f);
	if (with_all)
		fputs("      --all             every session (without a filter, one of --all or an\n"
		      "                        ID is required)\n",
		      f);
}

void
cli_filter_usage_when(FILE *f)
{
	fputs("WHEN is a date and time in local time (2024-05-01, \"2024-05-01 14:02\",\n"
	      "\"2024-05-01 14:02:03\"), RFC 3339 (2024-05-01T12:02:03Z, ...+02:00), an age\n"
	      "before now (30m, 2h, 7d, 1d12h), now, today or yesterday.\n",
	      f);
}
