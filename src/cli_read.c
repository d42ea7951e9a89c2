/*
 * cli_read.c - see cli_read.h: the ground the read-side subcommands share.
 *
 * Everything comes from the database through the reader (reader.h), one
 * row at a time; rows live only during their callback, so whatever must
 * outlast one (the session header, the message list) is copied, and no
 * callback starts another walk on the same reader.
 */
#include "smtptap/cli_read.h"

#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smtptap/cli.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/util.h"

static int cli_read_session_copy_cb(const struct reader_session *row, void *arg);

/* ------------------------------------------------------------------------
 * The database, the session ID, the session row.
 */

int
cli_read_parse_id(const char *cmd, int argc, char **argv, int64_t *out)
{
	long v;

	if (optind >= argc) {
		log_warnx("%s: missing session ID (see 'smtptap sessions')", cmd);
		return -1;
	}
	if (optind + 1 < argc) {
		log_warnx("%s: one session ID at a time, got '%s' too", cmd, argv[optind + 1]);
		return -1;
	}
	if (util_parse_int(argv[optind], 1, LONG_MAX, &v) < 0) {
		log_warnx("%s: session ID must be a positive number (see 'smtptap sessions'), got '%s'", cmd,
			  argv[optind]);
		return -1;
	}
	*out = v;
	return 0;
}

struct reader *
cli_read_open(const char *db)
{
	struct reader *rd;
	char err[512];

	rd = reader_open(db, err, sizeof(err));
	if (rd == NULL)
		log_warnx("--db %s: %s", db, err);
	return rd;
}

/* Stops with 2 when out of memory (1 would read as "not found"). */
static int
cli_read_session_copy_cb(const struct reader_session *row, void *arg)
{
	return reader_session_dup(arg, row) == 0 ? 0 : 1;
}

int
cli_read_session_load(struct reader *rd, const char *db, int64_t id, struct reader_session *s)
{
	char err[512];
	int r;

	memset(s, 0, sizeof(*s));
	r = reader_session(rd, id, cli_read_session_copy_cb, s, err, sizeof(err));
	if (r == READER_ERROR) {
		log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
		return CLI_EXIT_FAIL;
	}
	if (r == READER_NOTFOUND) {
		log_warnx("no session %" PRId64 " in %s", id, db);
		return CLI_EXIT_NOTFOUND;
	}
	if (r != 0) {
		log_warnx("reading session %" PRId64 ": out of memory", id);
		return CLI_EXIT_FAIL;
	}
	return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Time formats and terminal-safe text.
 */

/* Microseconds since the epoch into seconds and a non-negative fraction,
 * also for (unlikely) times before 1970. */
#define CLI_SPLIT_US(us, sec, frac)                        \
	do {                                               \
		(sec) = (us) / 1000000;                    \
		(frac) = (us) % 1000000;                   \
		if ((frac) < 0) {                          \
			(frac) += 1000000;                 \
			(sec)--;                           \
		}                                          \
	} while (0)

/* "2024-05-01 14:02:03" local time, with ".123456 +0200" when precise. */
void
cli_read_fmt_local(char *buf, size_t bufsz, int64_t us, bool precise)
{
	int64_t sec, frac;
	time_t t;
	struct tm tm;
	char zone[16];
	size_t n;

	CLI_SPLIT_US(us, sec, frac);
	t = (time_t)sec;
	if (localtime_r(&t, &tm) == NULL || (n = strftime(buf, bufsz, "%Y-%m-%d %H:%M:%S", &tm)) == 0) {
		snprintf(buf, bufsz, "@%" PRId64, sec);
		return;
	}
	if (!precise)
		return;
	if (strftime(zone, sizeof(zone), "%z", &tm) == 0)
		zone[0] = '\0';
	snprintf(buf + n, bufsz - n, ".%06" PRId64 " %s", frac, zone);
}

/* Precise: "83.123456s".  Otherwise short for a table: "0.52s", "12.3s",
 * "5m02s", "3h07m", "2d04h". */
void
cli_read_fmt_duration(char *buf, size_t bufsz, int64_t us, bool precise)
{
	int64_t s;

	if (us < 0)
		us = 0;
	s = us / 1000000;
	if (precise)
		snprintf(buf, bufsz, "%" PRId64 ".%06" PRId64 "s", s, us % 1000000);
	else if (s < 10)
		snprintf(buf, bufsz, "%" PRId64 ".%02" PRId64 "s", s, us % 1000000 / 10000);
	else if (s < 60)
		snprintf(buf, bufsz, "%" PRId64 ".%01" PRId64 "s", s, us % 1000000 / 100000);
	else if (s < 3600)
		snprintf(buf, bufsz, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
	else if (s < 86400)
		snprintf(buf, bufsz, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, bufsz, "%" PRId64 "d%02" PRId64 "h", s / 86400, s % 86400 / 3600);
}

/* "+0.000123": seconds since the session started. */
void
cli_read_fmt_offset(char *buf, size_t bufsz, int64_t us)
{
	char sign = '+';

	if (us < 0) {
		sign = '-';
		us = -us;
	}
	snprintf(buf, bufsz, "%c%" PRId64 ".%06" PRId64, sign, us / 1000000, us % 1000000);
}

/*
 * Terminal-safe text: printable ASCII and well-formed UTF-8 above U+009F
 * as is; '\' doubled so the escapes are unambiguous; CR, LF, TAB as \r
 * \n \t; every other control byte (C0, DEL, and C1 such as U+009B, a
 * one-byte CSI on some terminals) and every ill-formed byte as \xNN.
 */
void
cli_read_put_escaped(FILE *f, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	size_t i = 0, run = 0, n, k;
	uint32_t cp;

	while (i < len) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
			i++;
			continue;
		}
		n = json_utf8_decode(p + i, len - i, &cp);
		if (cp != JSON_UTF8_BAD && cp >= 0xa0) {
			i += n;
			continue;
		}
		fwrite(p + run, 1, i - run, f);
		if (cp == '\\')
			fputs("\\\\", f);
		else if (cp == '\r')
			fputs("\\r", f);
		else if (cp == '\n')
			fputs("\\n", f);
		else if (cp == '\t')
			fputs("\\t", f);
		else
			for (k = 0; k < n; k++)
				fprintf(f, "\\x%02x", p[i + k]);
		i += n;
		run = i;
	}
	fwrite(p + run, 1, i - run, f);
}

void
cli_read_put_escaped_str(FILE *f, const char *s)
{
	if (s != NULL)
		cli_read_put_escaped(f, s, strlen(s));
}
