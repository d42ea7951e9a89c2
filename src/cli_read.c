/*
 * cli_read.c - see cli_read.h: the ground the read-side subcommands share.
 *
 * Everything comes from the database through the store reader, one row at
 * a time; rows live only during their callback, so whatever must outlast
 * one (the session header, the message list) is copied, and no callback
 * starts another walk on the same reader.
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

const struct cli_read_flag cli_read_flags[] = {
	{ STORE_F_INJECTED, "injected" },     { STORE_F_ALTERED, "altered" },
	{ STORE_F_DROPPED, "dropped" },	      { STORE_F_REDACTED, "redacted" },
	{ STORE_F_TO_CLIENT, "to-client" },   { STORE_F_TO_UPSTREAM, "to-upstream" },
	{ STORE_F_INCOMPLETE, "incomplete" }, { STORE_F_RULE, "rule" },
	{ STORE_F_PIPELINED, "pipelined" },
};

const size_t cli_read_nflags = sizeof(cli_read_flags) / sizeof(cli_read_flags[0]);

static char *cli_read_strdup_opt(const char *s, bool *nomem);
static int cli_read_session_copy_cb(const struct store_session_row *row, void *arg);

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

struct store_reader *
cli_read_open(const char *db)
{
	struct store_reader *rd;
	char err[512];

	rd = store_reader_open(db, err, sizeof(err));
	if (rd == NULL)
		log_warnx("--db %s: %s", db, err);
	return rd;
}

/* strdup that keeps NULL as NULL and notes a failure in *nomem, so that a
 * row's columns are copied in a row and checked once. */
static char *
cli_read_strdup_opt(const char *s, bool *nomem)
{
	char *d;

	if (s == NULL)
		return NULL;
	if ((d = strdup(s)) == NULL)
		*nomem = true;
	return d;
}

/* Returns 0, or -1 when out of memory (dst is then freed and zeroed). */
int
cli_read_session_copy(struct cli_session *dst, const struct store_session_row *row)
{
	bool nomem = false;

	memset(dst, 0, sizeof(*dst));
	dst->id = row->id;
	dst->started_us = row->started_us;
	dst->ended_us = row->ended_us;
	dst->nmessages = row->nmessages;
	dst->listener = cli_read_strdup_opt(row->listener, &nomem);
	dst->client = cli_read_strdup_opt(row->client, &nomem);
	dst->upstream = cli_read_strdup_opt(row->upstream, &nomem);
	dst->upstream_addr = cli_read_strdup_opt(row->upstream_addr, &nomem);
	dst->mode = cli_read_strdup_opt(row->mode, &nomem);
	dst->client_tls = cli_read_strdup_opt(row->client_tls, &nomem);
	dst->upstream_tls = cli_read_strdup_opt(row->upstream_tls, &nomem);
	dst->outcome = cli_read_strdup_opt(row->outcome, &nomem);
	dst->detail = cli_read_strdup_opt(row->detail, &nomem);
	dst->client_ip = cli_read_strdup_opt(row->client_ip, &nomem);
	dst->helo = cli_read_strdup_opt(row->helo, &nomem);
	dst->auth_mech = cli_read_strdup_opt(row->auth_mech, &nomem);
	dst->auth_user = cli_read_strdup_opt(row->auth_user, &nomem);
	dst->client_tls_version = cli_read_strdup_opt(row->client_tls_version, &nomem);
	dst->upstream_tls_version = cli_read_strdup_opt(row->upstream_tls_version, &nomem);
	dst->nevents = row->nevents;
	dst->ntransactions = row->ntransactions;
	dst->client_bytes = row->client_bytes;
	dst->upstream_bytes = row->upstream_bytes;
	dst->proxy_bytes = row->proxy_bytes;
	dst->replay_of = row->replay_of;
	if (nomem) {
		cli_read_session_free(dst);
		return -1;
	}
	return 0;
}

void
cli_read_session_free(struct cli_session *s)
{
	free(s->listener);
	free(s->client);
	free(s->upstream);
	free(s->upstream_addr);
	free(s->mode);
	free(s->client_tls);
	free(s->upstream_tls);
	free(s->outcome);
	free(s->detail);
	free(s->client_ip);
	free(s->helo);
	free(s->auth_mech);
	free(s->auth_user);
	free(s->client_tls_version);
	free(s->upstream_tls_version);
	free(s->replays);
	memset(s, 0, sizeof(*s));
}

/* Stops with 2 when out of memory. */
static int
cli_read_replay_cb(const struct store_session_row *row, void *arg)
{
	struct cli_session *s = arg;
	struct cli_replay_ref *n;

	if ((n = realloc(s->replays, (s->nreplays + 1) * sizeof(*n))) == NULL)
		return 2;
	s->replays = n;
	n[s->nreplays].id = row->id;
	snprintf(n[s->nreplays].mode, sizeof(n[s->nreplays].mode), "%s", row->mode != NULL ? row->mode : "");
	s->nreplays++;
	return 0;
}

/* Stops with 2 when out of memory (1 would read as "not found"). */
static int
cli_read_session_copy_cb(const struct store_session_row *row, void *arg)
{
	return cli_read_session_copy(arg, row) == 0 ? 0 : 2;
}

/*
 * Read session `id` into *s (freed by the caller with cli_read_session_free).
 * Returns CLI_EXIT_OK, or CLI_EXIT_NOTFOUND / CLI_EXIT_FAIL, reported.
 */
int
cli_read_session_load(struct store_reader *rd, const char *db, int64_t id, struct cli_session *s)
{
	char err[512];
	int r;

	memset(s, 0, sizeof(*s));
	r = store_reader_session(rd, id, cli_read_session_copy_cb, s, err, sizeof(err));
	if (r < 0) {
		log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
		cli_read_session_free(s);
		return CLI_EXIT_FAIL;
	}
	if (r == 1) {
		log_warnx("no session %" PRId64 " in %s", id, db);
		return CLI_EXIT_NOTFOUND;
	}
	if (r == 0)
		r = store_reader_replays(rd, id, cli_read_replay_cb, s, err, sizeof(err));
	if (r < 0) {
		log_warnx("reading the replays of session %" PRId64 " from %s: %s", id, db, err);
		cli_read_session_free(s);
		return CLI_EXIT_FAIL;
	}
	if (r != 0) {
		log_warnx("reading session %" PRId64 ": out of memory", id);
		cli_read_session_free(s);
		return CLI_EXIT_FAIL;
	}
	s->replays_loaded = true;
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

/* RFC 3339 in UTC with microseconds: "2024-05-01T12:02:03.123456Z". */
void
cli_read_fmt_rfc3339(char *buf, size_t bufsz, int64_t us)
{
	int64_t sec, frac;
	time_t t;
	struct tm tm;

	CLI_SPLIT_US(us, sec, frac);
	t = (time_t)sec;
	if (gmtime_r(&t, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	snprintf(buf, bufsz, "%04d-%02d-%02dT%02d:%02d:%02d.%06" PRId64 "Z", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
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
