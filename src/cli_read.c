/*
 * cli_read.c - the read-side subcommands: `sessions`, `show`, `export`.
 *
 * Everything comes from the database through the store reader, one row at
 * a time; rows live only during their callback, so whatever must outlast
 * one (the session header, the message list) is copied, and no callback
 * starts another walk on the same reader.
 *
 * Recorded text is hostile input (a client chooses its EHLO name, a
 * message its Subject): the readable outputs escape every byte that could
 * move a terminal's cursor or change its state, and --json goes through
 * the JSON writer, which always produces valid UTF-8.  Only --raw and the
 * exports write recorded bytes as they are, since that is what they are
 * for.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "smtptap/cli.h"
#include "smtptap/export.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

#define CLI_C_RESET "\033[0m"
#define CLI_C_BOLD "\033[1m"
#define CLI_C_CLIENT "\033[36m"	   /* cyan */
#define CLI_C_UPSTREAM "\033[32m"  /* green */
#define CLI_C_PROXY "\033[1;33m"   /* bold yellow */

/* Width of the "+12.345678" column in show. */
#define CLI_OFFSET_WIDTH 11

/* An owned copy of a session row. */
struct cli_session {
	int64_t id, started_us, ended_us, nmessages;
	char *listener, *client, *upstream, *upstream_addr, *mode;
	char *client_tls, *upstream_tls, *outcome, *detail;
};

struct cli_session_list {
	struct cli_session *v;
	size_t n, cap;
	bool nomem;
};

/* Where an output goes, and the first write error seen on it. */
struct cli_out {
	FILE *f;
	const char *name; /* path, or "standard output" */
	bool is_stdout;
	bool is_reg;	  /* a regular file we created: removed if incomplete */
	char path[PATH_MAX];
	int werr;
};

/* State of a readable transcript or a --raw dump. */
struct cli_show {
	struct cli_out *out;
	bool color;
	int64_t started_us;
	const struct export_message *msgs; /* message id -> idx */
	size_t nmsgs;
	/* Consecutive DATA events of one message make a single summary line. */
	bool pend;
	int64_t pend_t_us, pend_msg;
	uint64_t pend_bytes;
	unsigned pend_flags;
	enum store_side pend_side;
	int tagw; /* width of the current event's tags, to align its lines */
	/* --raw */
	int side; /* -1: every side */
	size_t nredacted;
};

/* State of the --json document's walks. */
struct cli_json {
	struct json *j;
	struct cli_out *out;
	int64_t started_us;
};

static const struct {
	unsigned flag;
	const char *name;
} cli_flags[] = {
	{ STORE_F_INJECTED, "injected" },     { STORE_F_ALTERED, "altered" },
	{ STORE_F_DROPPED, "dropped" },	      { STORE_F_REDACTED, "redacted" },
	{ STORE_F_TO_CLIENT, "to-client" },   { STORE_F_TO_UPSTREAM, "to-upstream" },
	{ STORE_F_INCOMPLETE, "incomplete" },
};

#define CLI_NFLAGS (sizeof(cli_flags) / sizeof(cli_flags[0]))

static void cli_sessions_usage(FILE *f);
static void cli_show_usage(FILE *f);
static void cli_export_usage(FILE *f);
static int cli_parse_id(const char *cmd, int argc, char **argv, int64_t *out);
static struct store_reader *cli_reader_open(const char *db);
static char *cli_strdup_opt(const char *s, bool *nomem);
static const char *cli_nonempty(const char *s);
static int cli_session_copy(struct cli_session *dst, const struct store_session_row *row);
static void cli_session_free(struct cli_session *s);
static int cli_session_copy_cb(const struct store_session_row *row, void *arg);
static int cli_session_load(struct store_reader *rd, const char *db, int64_t id, struct cli_session *s);
static int cli_session_list_cb(const struct store_session_row *row, void *arg);
static void cli_fmt_local(char *buf, size_t bufsz, int64_t us, bool precise);
static void cli_fmt_rfc3339(char *buf, size_t bufsz, int64_t us);
static void cli_fmt_duration(char *buf, size_t bufsz, int64_t us, bool precise);
static void cli_fmt_offset(char *buf, size_t bufsz, int64_t us);
static void cli_put_escaped(FILE *f, const void *p, size_t len);
static void cli_put_escaped_str(FILE *f, const char *s);
static void cli_show_summary_line(FILE *f, const char *label, const char *value);
static void cli_put_indented(FILE *f, const char *s, const char *indent);
static int cli_out_open(struct cli_out *o, const char *path, const char *db);
static void cli_out_check(struct cli_out *o);
static int cli_out_close(struct cli_out *o);
static int cli_out_target(char *buf, size_t bufsz, const char *opath, const char *name);
static void cli_json_session(struct json *j, const struct cli_session *s, bool with_nmessages);
static void cli_json_tls(struct json *j, const char *key, const char *text);
static int cli_json_event_cb(const struct store_event_row *ev, void *arg);
static int cli_json_message_cb(const struct store_message_row *m, void *arg);
static int cli_json_doc(struct store_reader *rd, const char *db, const struct cli_session *s,
			struct cli_out *out);
static int cli_sessions_json_cb(const struct store_session_row *row, void *arg);
static void cli_sessions_table(FILE *f, const struct cli_session *v, size_t n, bool color);
static void cli_show_header(struct cli_show *sh, const struct cli_session *s);
static const char *cli_side_color(enum store_side side);
static const char *cli_side_marker(enum store_side side, unsigned flags);
static void cli_show_begin(struct cli_show *sh, bool first, int64_t t_us, enum store_side side, unsigned flags,
			   const char *kind);
static void cli_show_end(struct cli_show *sh);
static void cli_show_lines(struct cli_show *sh, const struct store_event_row *ev, const char *kind,
			   const char *p, size_t len, bool wire, bool *first);
static void cli_show_flush_data(struct cli_show *sh);
static int cli_show_event_cb(const struct store_event_row *ev, void *arg);
static int cli_show_raw_cb(const struct store_event_row *ev, void *arg);
static int cli_show_message_cb(const struct store_message_row *m, void *arg);
static void cli_show_reply(FILE *f, int code, const char *reply, const char *indent);
static int cli_export_one(struct store_reader *rd, const char *db, const struct export_message *m, bool mbox,
			  struct cli_out *o);

/* ------------------------------------------------------------------------
 * Usage texts.
 */

static void
cli_sessions_usage(FILE *f)
{
	fputs("usage: smtptap sessions [--db PATH] [--limit N] [--json]\n"
	      "\n"
	      "List the most recent recorded sessions, oldest first.\n"
	      "\n"
	      "  -d, --db PATH   database file (default ./smtptap.db)\n"
	      "  -n, --limit N   at most N sessions (default 50, 0 for all)\n"
	      "  -j, --json      a JSON array instead of a table\n"
	      "  -h, --help      this help\n",
	      f);
}

static void
cli_show_usage(FILE *f)
{
	fputs("usage: smtptap show ID [--db PATH] [--json | --raw [--side client|upstream|proxy]]\n"
	      "\n"
	      "Print one session's transcript: every command, reply and proxy action\n"
	      "with its time offset, then a summary of each message.\n"
	      "\n"
	      "  -d, --db PATH     database file (default ./smtptap.db)\n"
	      "  -j, --json        one JSON document (session, events, messages)\n"
	      "  -r, --raw         the exact bytes of every event, in order, nothing else\n"
	      "      --side SIDE   with --raw: only what the client, the upstream or\n"
	      "                    smtptap itself (proxy) sent\n"
	      "  -h, --help        this help\n",
	      f);
}

static void
cli_export_usage(FILE *f)
{
	fputs("usage: smtptap export ID (--eml | --mbox | --json) [--db PATH] [-o FILE|DIR]\n"
	      "                          [--message N]\n"
	      "\n"
	      "Write a session's messages exactly as the client sent them.\n"
	      "\n"
	      "  -e, --eml          the message as an RFC 5322 file (dot-unstuffed);\n"
	      "                     several messages need --message N or -o DIR,\n"
	      "                     which gets one DIR/ID-N.eml per message\n"
	      "  -m, --mbox         the messages as an mboxrd mailbox\n"
	      "  -j, --json         the session as JSON (the same as 'show --json')\n"
	      "  -n, --message N    only message N (1-based) of the session\n"
	      "  -o, --output PATH  write to this file, or into this directory\n"
	      "                     (default: standard output)\n"
	      "  -d, --db PATH      database file (default ./smtptap.db)\n"
	      "  -h, --help         this help\n",
	      f);
}

/* ------------------------------------------------------------------------
 * Shared helpers.
 */

/* The one session ID operand left after the options (argv[optind]). */
static int
cli_parse_id(const char *cmd, int argc, char **argv, int64_t *out)
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

static struct store_reader *
cli_reader_open(const char *db)
{
	struct store_reader *rd;
	char err[512];

	rd = store_reader_open(db, err, sizeof(err));
	if (rd == NULL)
		log_warnx("--db %s: %s", db, err);
	return rd;
}

static char *
cli_strdup_opt(const char *s, bool *nomem)
{
	char *d;

	if (s == NULL)
		return NULL;
	if ((d = strdup(s)) == NULL)
		*nomem = true;
	return d;
}

/* Header summaries are recorded as "" when the header is absent: in JSON
 * that is null, like every other unknown. */
static const char *
cli_nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Returns 0, or -1 when out of memory (dst is then freed and zeroed). */
static int
cli_session_copy(struct cli_session *dst, const struct store_session_row *row)
{
	bool nomem = false;

	memset(dst, 0, sizeof(*dst));
	dst->id = row->id;
	dst->started_us = row->started_us;
	dst->ended_us = row->ended_us;
	dst->nmessages = row->nmessages;
	dst->listener = cli_strdup_opt(row->listener, &nomem);
	dst->client = cli_strdup_opt(row->client, &nomem);
	dst->upstream = cli_strdup_opt(row->upstream, &nomem);
	dst->upstream_addr = cli_strdup_opt(row->upstream_addr, &nomem);
	dst->mode = cli_strdup_opt(row->mode, &nomem);
	dst->client_tls = cli_strdup_opt(row->client_tls, &nomem);
	dst->upstream_tls = cli_strdup_opt(row->upstream_tls, &nomem);
	dst->outcome = cli_strdup_opt(row->outcome, &nomem);
	dst->detail = cli_strdup_opt(row->detail, &nomem);
	if (nomem) {
		cli_session_free(dst);
		return -1;
	}
	return 0;
}

static void
cli_session_free(struct cli_session *s)
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
	memset(s, 0, sizeof(*s));
}

/* Stops with 2 when out of memory (1 would read as "not found"). */
static int
cli_session_copy_cb(const struct store_session_row *row, void *arg)
{
	return cli_session_copy(arg, row) == 0 ? 0 : 2;
}

/*
 * Read session `id` into *s (freed by the caller with cli_session_free).
 * Returns CLI_EXIT_OK, or CLI_EXIT_NOTFOUND / CLI_EXIT_FAIL, reported.
 */
static int
cli_session_load(struct store_reader *rd, const char *db, int64_t id, struct cli_session *s)
{
	char err[512];
	int r;

	memset(s, 0, sizeof(*s));
	r = store_reader_session(rd, id, cli_session_copy_cb, s, err, sizeof(err));
	if (r < 0) {
		log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
		cli_session_free(s);
		return CLI_EXIT_FAIL;
	}
	if (r == 1) {
		log_warnx("no session %" PRId64 " in %s", id, db);
		return CLI_EXIT_NOTFOUND;
	}
	if (r != 0) {
		log_warnx("reading session %" PRId64 ": out of memory", id);
		return CLI_EXIT_FAIL;
	}
	return CLI_EXIT_OK;
}

static int
cli_session_list_cb(const struct store_session_row *row, void *arg)
{
	struct cli_session_list *l = arg;
	struct cli_session *nv;
	size_t ncap;

	if (l->n == l->cap) {
		ncap = l->cap == 0 ? 64 : l->cap * 2;
		if ((nv = realloc(l->v, ncap * sizeof(*nv))) == NULL) {
			l->nomem = true;
			return 1;
		}
		l->v = nv;
		l->cap = ncap;
	}
	if (cli_session_copy(&l->v[l->n], row) < 0) {
		l->nomem = true;
		return 1;
	}
	l->n++;
	return 0;
}

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
static void
cli_fmt_local(char *buf, size_t bufsz, int64_t us, bool precise)
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
static void
cli_fmt_rfc3339(char *buf, size_t bufsz, int64_t us)
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
static void
cli_fmt_duration(char *buf, size_t bufsz, int64_t us, bool precise)
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
static void
cli_fmt_offset(char *buf, size_t bufsz, int64_t us)
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
static void
cli_put_escaped(FILE *f, const void *buf, size_t len)
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

/* One summary header of a message, aligned; nothing when it is absent. */
static void
cli_show_summary_line(FILE *f, const char *label, const char *value)
{
	if (value == NULL || value[0] == '\0')
		return;
	fprintf(f, "  %-12s ", label);
	cli_put_escaped_str(f, value);
	fputc('\n', f);
}

static void
cli_put_escaped_str(FILE *f, const char *s)
{
	if (s != NULL)
		cli_put_escaped(f, s, strlen(s));
}

/* Escaped, but each '\n' starts a new line beginning with `indent`
 * (multi-line replies in the messages section). */
static void
cli_put_indented(FILE *f, const char *s, const char *indent)
{
	const char *nl;

	while ((nl = strchr(s, '\n')) != NULL) {
		cli_put_escaped(f, s, (size_t)(nl - s - (nl > s && nl[-1] == '\r')));
		fprintf(f, "\n%s", indent);
		s = nl + 1;
	}
	cli_put_escaped_str(f, s);
}

/* ------------------------------------------------------------------------
 * Outputs.  Write errors are remembered (the first errno) and reported once
 * by cli_out_close(), naming the file.
 */

/* path NULL or "-": standard output.  Refuses to truncate the database
 * being read (`-o smtptap.db` is a slip of the fingers).  Returns 0, or -1
 * (reported). */
static int
cli_out_open(struct cli_out *o, const char *path, const char *db)
{
	struct stat st, dbst;
	int fd;

	memset(o, 0, sizeof(*o));
	if (path == NULL || strcmp(path, "-") == 0) {
		o->f = stdout;
		o->name = "standard output";
		o->is_stdout = true;
		return 0;
	}
	if (strlen(path) >= sizeof(o->path)) {
		log_warnx("-o %s: path too long", path);
		return -1;
	}
	strcpy(o->path, path);
	o->name = o->path;
	if (db != NULL && stat(path, &st) == 0 && stat(db, &dbst) == 0 && st.st_dev == dbst.st_dev &&
	    st.st_ino == dbst.st_ino) {
		log_warnx("-o %s: that is the database being read (--db %s); choose another file", path, db);
		return -1;
	}
	/* 0600: recorded mail is often private (password resets, invoices). */
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_warnx("cannot create %s: %s (check the -o path)", path, strerror(errno));
		return -1;
	}
	o->is_reg = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	if ((o->f = fdopen(fd, "w")) == NULL) {
		log_warnx("cannot write %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return 0;
}

/* Note the first write error on o, while errno still tells what it was. */
static void
cli_out_check(struct cli_out *o)
{
	if (o->werr == 0 && ferror(o->f))
		o->werr = errno != 0 ? errno : EIO;
}

/* Flush and close (stdout is only flushed).  A partial regular file is
 * removed, so that no truncated .eml passes for a whole one.  Returns 0,
 * or -1 (reported). */
static int
cli_out_close(struct cli_out *o)
{
	bool removed = false;

	if (o->f == NULL)
		return 0;
	cli_out_check(o);
	errno = 0;
	if (fflush(o->f) != 0 && o->werr == 0)
		o->werr = errno != 0 ? errno : EIO;
	if (!o->is_stdout && fclose(o->f) != 0 && o->werr == 0)
		o->werr = errno != 0 ? errno : EIO;
	o->f = NULL;
	if (o->werr == 0)
		return 0;
	if (o->is_reg && unlink(o->path) == 0)
		removed = true;
	log_warnx("writing %s: %s%s", o->name, strerror(o->werr), removed ? " (incomplete file removed)" : "");
	return -1;
}

/* Where to write `name` given -o: into it when it is a directory, else to
 * it (NULL: standard output).  Returns 0, or -1 (reported). */
static int
cli_out_target(char *buf, size_t bufsz, const char *opath, const char *name)
{
	struct stat st;
	int n;

	if (opath == NULL || strcmp(opath, "-") == 0 || stat(opath, &st) != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(buf, bufsz, "%s", opath != NULL ? opath : "-");
		return 0;
	}
	n = snprintf(buf, bufsz, "%s/%s", opath, name);
	if (n < 0 || (size_t)n >= bufsz) {
		log_warnx("-o %s: path too long", opath);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * JSON document (show --json, export --json, sessions --json).
 */

static void
cli_json_tls(struct json *j, const char *key, const char *text)
{
	json_key(j, key);
	if (text == NULL)
		json_null(j);
	else if (json_valid(text, strlen(text)))
		json_raw(j, text);
	else
		json_string(j, text); /* keep it, but never break the document */
}

static void
cli_json_session(struct json *j, const struct cli_session *s, bool with_nmessages)
{
	char ts[64];

	json_object_begin(j);
	json_kv_int(j, "id", s->id);
	cli_fmt_rfc3339(ts, sizeof(ts), s->started_us);
	json_kv_string(j, "started_at", ts);
	if (s->ended_us != 0) {
		cli_fmt_rfc3339(ts, sizeof(ts), s->ended_us);
		json_kv_string(j, "ended_at", ts);
	} else
		json_kv_null(j, "ended_at");
	json_kv_string(j, "client", s->client);
	json_kv_string(j, "upstream", s->upstream);
	json_kv_string(j, "upstream_addr", s->upstream_addr);
	json_kv_string(j, "listener", s->listener);
	json_kv_string(j, "mode", s->mode);
	cli_json_tls(j, "client_tls", s->client_tls);
	cli_json_tls(j, "upstream_tls", s->upstream_tls);
	json_kv_string(j, "outcome", s->outcome);
	json_kv_string(j, "detail", s->detail);
	if (with_nmessages)
		json_kv_int(j, "nmessages", s->nmessages);
	json_object_end(j);
}

static int
cli_json_event_cb(const struct store_event_row *ev, void *arg)
{
	struct cli_json *cj = arg;
	struct json *j = cj->j;
	const char *p;
	size_t i, len;

	json_object_begin(j);
	json_kv_int(j, "seq", ev->seq);
	json_kv_int(j, "t_us", ev->t_us - cj->started_us);
	json_kv_string(j, "side", store_side_name(ev->side));
	json_kv_string(j, "kind", store_kind_name(ev->kind));
	json_key(j, "flags");
	json_array_begin(j);
	for (i = 0; i < CLI_NFLAGS; i++)
		if (ev->flags & cli_flags[i].flag)
			json_string(j, cli_flags[i].name);
	json_array_end(j);
	if (ev->kind == STORE_KIND_DATA)
		json_kv_int(j, "bytes", (int64_t)ev->raw_len);
	else if (ev->raw != NULL && (ev->text == NULL || ev->kind == STORE_KIND_COMMAND ||
				     ev->kind == STORE_KIND_REPLY || ev->kind == STORE_KIND_AUTH)) {
		/* The line(s) as sent, minus the final terminator. */
		p = ev->raw;
		len = ev->raw_len;
		if (len > 0 && p[len - 1] == '\n')
			len--;
		if (len > 0 && p[len - 1] == '\r')
			len--;
		json_key(j, "text");
		json_string_len(j, p, len);
	} else
		json_kv_string(j, "text", ev->text);
	json_key(j, "message_id");
	if (ev->message_id != 0)
		json_int(j, ev->message_id);
	else
		json_null(j);
	json_object_end(j);
	if (j->failed) {
		cj->out->werr = j->err != 0 ? j->err : EIO;
		return 1;
	}
	return 0;
}

static int
cli_json_message_cb(const struct store_message_row *m, void *arg)
{
	struct cli_json *cj = arg;
	struct json *j = cj->j;
	size_t i;

	json_object_begin(j);
	json_kv_int(j, "id", m->id);
	json_kv_int(j, "idx", m->idx);
	json_kv_string(j, "mail_from", m->mail_from);
	json_kv_string(j, "mail_params", m->mail_params);
	json_key(j, "rcpt_to");
	json_array_begin(j);
	for (i = 0; i < m->nrcpts; i++) {
		json_object_begin(j);
		json_kv_string(j, "address", m->rcpts[i].address);
		json_kv_string(j, "params", m->rcpts[i].params);
		if (m->rcpts[i].reply_code != 0)
			json_kv_int(j, "reply_code", m->rcpts[i].reply_code);
		else
			json_kv_null(j, "reply_code");
		json_kv_string(j, "reply", m->rcpts[i].reply);
		json_object_end(j);
	}
	json_array_end(j);
	json_kv_int(j, "size", m->size);
	json_kv_string(j, "subject", cli_nonempty(m->subject));
	json_kv_string(j, "from", cli_nonempty(m->from));
	json_kv_string(j, "to", cli_nonempty(m->to));
	json_kv_string(j, "message_id", cli_nonempty(m->message_id));
	json_kv_string(j, "date", cli_nonempty(m->date));
	json_kv_string(j, "upstream_reply", m->reply);
	if (m->reply_code != 0)
		json_kv_int(j, "upstream_code", m->reply_code);
	else
		json_kv_null(j, "upstream_code");
	json_kv_bool(j, "complete", m->complete);
	json_kv_string(j, "transport", m->transport);
	json_object_end(j);
	if (j->failed) {
		cj->out->werr = j->err != 0 ? j->err : EIO;
		return 1;
	}
	return 0;
}

/*
 * {"session": {...}, "events": [...], "messages": [...]} for session s.
 * Returns CLI_EXIT_OK (write errors are left in out->werr for
 * cli_out_close) or CLI_EXIT_FAIL after reporting a database error.
 */
static int
cli_json_doc(struct store_reader *rd, const char *db, const struct cli_session *s, struct cli_out *out)
{
	struct json j;
	struct cli_json cj;
	char err[512];
	int r;

	json_init(&j, out->f, 2);
	cj.j = &j;
	cj.out = out;
	cj.started_us = s->started_us;
	json_object_begin(&j);
	json_key(&j, "session");
	cli_json_session(&j, s, false);
	json_key(&j, "events");
	json_array_begin(&j);
	r = store_reader_events(rd, s->id, cli_json_event_cb, &cj, err, sizeof(err));
	if (r < 0)
		goto dberr;
	if (r > 0)
		return CLI_EXIT_OK; /* write error, in out->werr */
	json_array_end(&j);
	json_key(&j, "messages");
	json_array_begin(&j);
	r = store_reader_messages(rd, s->id, cli_json_message_cb, &cj, err, sizeof(err));
	if (r < 0)
		goto dberr;
	if (r > 0)
		return CLI_EXIT_OK;
	json_array_end(&j);
	json_object_end(&j);
	if (json_finish(&j) < 0 && out->werr == 0)
		out->werr = j.err != 0 ? j.err : EIO;
	return CLI_EXIT_OK;
dberr:
	log_warnx("reading session %" PRId64 " from %s: %s", s->id, db, err);
	return CLI_EXIT_FAIL;
}

/* ------------------------------------------------------------------------
 * smtptap sessions
 */

static int
cli_sessions_json_cb(const struct store_session_row *row, void *arg)
{
	struct json *j = arg;
	struct cli_session s;

	if (cli_session_copy(&s, row) < 0)
		return 1;
	cli_json_session(j, &s, true);
	cli_session_free(&s);
	return j->failed ? 2 : 0;
}

static void
cli_sessions_table(FILE *f, const struct cli_session *v, size_t n, bool color)
{
	char dur[32], start[64], idbuf[32];
	int wid = 2, wdur = 8, wcli = 6, wup = 8, wmsg = 4, k;
	size_t i;

	for (i = 0; i < n; i++) {
		k = snprintf(idbuf, sizeof(idbuf), "%" PRId64, v[i].id);
		wid = k > wid ? k : wid;
		if (v[i].ended_us != 0) {
			cli_fmt_duration(dur, sizeof(dur), v[i].ended_us - v[i].started_us, false);
			k = (int)strlen(dur);
			wdur = k > wdur ? k : wdur;
		}
		k = v[i].client != NULL ? (int)strlen(v[i].client) : 1;
		wcli = k > wcli ? k : wcli;
		k = v[i].upstream != NULL ? (int)strlen(v[i].upstream) : 6;
		wup = k > wup ? k : wup;
		k = snprintf(idbuf, sizeof(idbuf), "%" PRId64, v[i].nmessages);
		wmsg = k > wmsg ? k : wmsg;
	}
	fprintf(f, "%s%*s  %-19s  %*s  %-*s  %-*s  %*s  %s%s\n", color ? CLI_C_BOLD : "", wid, "ID", "START", wdur,
		"DURATION", wcli, "CLIENT", wup, "UPSTREAM", wmsg, "MSGS", "OUTCOME", color ? CLI_C_RESET : "");
	for (i = 0; i < n; i++) {
		cli_fmt_local(start, sizeof(start), v[i].started_us, false);
		if (v[i].ended_us != 0)
			cli_fmt_duration(dur, sizeof(dur), v[i].ended_us - v[i].started_us, false);
		else
			snprintf(dur, sizeof(dur), "-");
		fprintf(f, "%*" PRId64 "  %-19s  %*s  %-*s  %-*s  %*" PRId64 "  %s\n", wid, v[i].id, start, wdur, dur,
			wcli, v[i].client != NULL ? v[i].client : "-", wup,
			v[i].upstream != NULL ? v[i].upstream : "(sink)", wmsg, v[i].nmessages,
			v[i].ended_us == 0 ? "live" : v[i].outcome != NULL ? v[i].outcome : "-");
	}
}

int
cli_sessions(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "db", required_argument, NULL, 'd' },
		{ "limit", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *db = CLI_DEFAULT_DB;
	struct store_reader *rd;
	struct cli_session_list l;
	struct cli_out out;
	struct json j;
	bool as_json = false;
	char err[512];
	long limit = 50;
	int c, r, rc = CLI_EXIT_OK;
	size_t i;

	optind = 1;
	while ((c = getopt_long(argc, argv, "d:n:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			db = optarg;
			break;
		case 'n':
			if (util_parse_int(optarg, 0, INT_MAX, &limit) < 0) {
				log_warnx("--limit: expected a number of sessions (0 for all), got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			cli_sessions_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap sessions --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		log_warnx("sessions: unexpected argument '%s' (try 'smtptap sessions --help')", argv[optind]);
		return CLI_EXIT_USAGE;
	}
	if ((rd = cli_reader_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	cli_out_open(&out, NULL, NULL);
	if (as_json) {
		json_init(&j, out.f, 2);
		json_array_begin(&j);
		r = store_reader_sessions(rd, (int)limit, cli_sessions_json_cb, &j, err, sizeof(err));
		json_array_end(&j);
		if (json_finish(&j) < 0 && j.err != 0)
			out.werr = j.err;
		if (r < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		} else if (r == 1) {
			log_warnx("listing sessions: out of memory");
			rc = CLI_EXIT_FAIL;
		}
	} else {
		memset(&l, 0, sizeof(l));
		/* Collected first: the column widths depend on every row. */
		r = store_reader_sessions(rd, (int)limit, cli_session_list_cb, &l, err, sizeof(err));
		if (r < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		} else if (l.nomem) {
			log_warnx("listing sessions: out of memory (try a smaller --limit)");
			rc = CLI_EXIT_FAIL;
		} else
			cli_sessions_table(out.f, l.v, l.n, log_color_enabled(STDOUT_FILENO));
		for (i = 0; i < l.n; i++)
			cli_session_free(&l.v[i]);
		free(l.v);
	}
	store_reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}

/* ------------------------------------------------------------------------
 * smtptap show
 */

static void
cli_show_header(struct cli_show *sh, const struct cli_session *s)
{
	FILE *f = sh->out->f;
	const char *b = sh->color ? CLI_C_BOLD : "", *e = sh->color ? CLI_C_RESET : "";
	char buf[96];

	fprintf(f, "%ssession      %" PRId64 "%s\n", b, s->id, e);
	fputs("client       ", f);
	cli_put_escaped_str(f, s->client != NULL ? s->client : "-");
	fputs("\nupstream     ", f);
	if (s->upstream == NULL)
		fputs("(sink)", f);
	else {
		cli_put_escaped_str(f, s->upstream);
		if (s->upstream_addr != NULL && strcmp(s->upstream_addr, s->upstream) != 0) {
			fputs(" (", f);
			cli_put_escaped_str(f, s->upstream_addr);
			fputc(')', f);
		}
	}
	fputs("\nlistener     ", f);
	cli_put_escaped_str(f, s->listener != NULL ? s->listener : "-");
	fputs("\nmode         ", f);
	cli_put_escaped_str(f, s->mode != NULL ? s->mode : "-");
	cli_fmt_local(buf, sizeof(buf), s->started_us, true);
	fprintf(f, "\nstarted      %s\n", buf);
	if (s->ended_us != 0) {
		cli_fmt_duration(buf, sizeof(buf), s->ended_us - s->started_us, true);
		fprintf(f, "duration     %s\noutcome      ", buf);
		cli_put_escaped_str(f, s->outcome != NULL ? s->outcome : "-");
		if (s->detail != NULL) {
			fputs(" (", f);
			cli_put_escaped_str(f, s->detail);
			fputc(')', f);
		}
		fputc('\n', f);
	} else
		fputs("duration     -\noutcome      live (still open, or the recorder was killed)\n", f);
	if (s->client_tls != NULL) {
		fputs("client tls   ", f);
		cli_put_escaped_str(f, s->client_tls);
		fputc('\n', f);
	}
	if (s->upstream_tls != NULL) {
		fputs("upstream tls ", f);
		cli_put_escaped_str(f, s->upstream_tls);
		fputc('\n', f);
	}
	fputc('\n', f);
}

static const char *
cli_side_color(enum store_side side)
{
	switch (side) {
	case STORE_SIDE_CLIENT:
		return CLI_C_CLIENT;
	case STORE_SIDE_UPSTREAM:
		return CLI_C_UPSTREAM;
	case STORE_SIDE_PROXY:
		return CLI_C_PROXY;
	}
	return "";
}

/* As swaks: "->" what the client sent, "<-" what the server answered;
 * "<~" and "~>" what smtptap itself sent to the client or the server (the
 * same marks as proxy -v), "**" its notes. */
static const char *
cli_side_marker(enum store_side side, unsigned flags)
{
	switch (side) {
	case STORE_SIDE_CLIENT:
		return "->";
	case STORE_SIDE_UPSTREAM:
		return "<-";
	case STORE_SIDE_PROXY:
		if (flags & STORE_F_TO_CLIENT)
			return "<~";
		if (flags & STORE_F_TO_UPSTREAM)
			return "~>";
		return "**";
	}
	return "??";
}

/* Start an output line: the offset, the side marker and the event's flags
 * and kind; continuation lines get blanks instead of offset and tags, so
 * that a multi-line reply's text lines up. */
static void
cli_show_begin(struct cli_show *sh, bool first, int64_t t_us, enum store_side side, unsigned flags,
	       const char *kind)
{
	FILE *f = sh->out->f;
	const char *col = sh->color ? cli_side_color(side) : "";
	char off[40];
	size_t i;

	if (first)
		cli_fmt_offset(off, sizeof(off), t_us - sh->started_us);
	else
		off[0] = '\0';
	fprintf(f, "%-*s %s%s ", CLI_OFFSET_WIDTH, off, col, cli_side_marker(side, flags));
	if (!first) {
		fprintf(f, "%*s", sh->tagw, "");
		return;
	}
	sh->tagw = 0;
	for (i = 0; i < CLI_NFLAGS; i++) {
		/* the marker already says where smtptap's bytes went */
		if (!(flags & cli_flags[i].flag) || (cli_flags[i].flag & (STORE_F_TO_CLIENT | STORE_F_TO_UPSTREAM)))
			continue;
		fprintf(f, "%s[%s]%s ", sh->color ? CLI_C_PROXY : "", cli_flags[i].name, col);
		sh->tagw += (int)strlen(cli_flags[i].name) + 3;
	}
	if (kind != NULL) {
		fprintf(f, "[%s] ", kind);
		sh->tagw += (int)strlen(kind) + 3;
	}
}

static void
cli_show_end(struct cli_show *sh)
{
	fputs(sh->color ? CLI_C_RESET "\n" : "\n", sh->out->f);
}

/*
 * Print p[0..len) one line per output line.  For wire bytes (commands,
 * replies) CRLF is the expected terminator and is not shown, while a bare
 * LF is, as "\n": that is a protocol deviation worth seeing.  *first says
 * whether the event's first line is still to come.
 */
static void
cli_show_lines(struct cli_show *sh, const struct store_event_row *ev, const char *kind, const char *p,
	       size_t len, bool wire, bool *first)
{
	FILE *f = sh->out->f;
	const char *nl;
	size_t n;

	while (len > 0) {
		nl = memchr(p, '\n', len);
		n = nl != NULL ? (size_t)(nl - p) : len;
		cli_show_begin(sh, *first, ev->t_us, ev->side, ev->flags, kind);
		*first = false;
		if (nl != NULL && n > 0 && p[n - 1] == '\r')
			cli_put_escaped(f, p, n - 1);
		else {
			cli_put_escaped(f, p, n);
			if (nl != NULL && wire)
				fputs("\\n", f);
		}
		cli_show_end(sh);
		if (nl == NULL)
			break;
		p += n + 1;
		len -= n + 1;
	}
}

/* Print the pending summary of consecutive DATA events, if any. */
static void
cli_show_flush_data(struct cli_show *sh)
{
	size_t i;

	if (!sh->pend)
		return;
	sh->pend = false;
	cli_show_begin(sh, true, sh->pend_t_us, sh->pend_side, sh->pend_flags, NULL);
	fprintf(sh->out->f, "(%" PRIu64 " bytes of ", sh->pend_bytes);
	for (i = 0; i < sh->nmsgs; i++)
		if (sh->msgs[i].id == sh->pend_msg)
			break;
	if (i < sh->nmsgs)
		fprintf(sh->out->f, "message %d data)", sh->msgs[i].idx);
	else
		fputs("message data)", sh->out->f);
	cli_show_end(sh);
}

static int
cli_show_event_cb(const struct store_event_row *ev, void *arg)
{
	struct cli_show *sh = arg;
	const char *kind = NULL;
	bool first = true;

	if (ev->kind == STORE_KIND_DATA) {
		if (sh->pend && sh->pend_msg == ev->message_id && sh->pend_side == ev->side &&
		    sh->pend_flags == ev->flags) {
			sh->pend_bytes += ev->raw_len;
			return 0;
		}
		cli_show_flush_data(sh);
		sh->pend = true;
		sh->pend_t_us = ev->t_us;
		sh->pend_msg = ev->message_id;
		sh->pend_side = ev->side;
		sh->pend_flags = ev->flags;
		sh->pend_bytes = ev->raw_len;
		return 0;
	}
	cli_show_flush_data(sh);
	if (ev->kind == STORE_KIND_CONNECT || ev->kind == STORE_KIND_CLOSE || ev->kind == STORE_KIND_TLS)
		kind = store_kind_name(ev->kind);
	if (ev->raw != NULL && (ev->kind == STORE_KIND_COMMAND || ev->kind == STORE_KIND_REPLY ||
				ev->kind == STORE_KIND_AUTH)) {
		cli_show_lines(sh, ev, kind, ev->raw, ev->raw_len, true, &first);
	} else {
		/* Notes and actions: the explanation, then any bytes. */
		if (ev->text != NULL)
			cli_show_lines(sh, ev, kind, ev->text, strlen(ev->text), false, &first);
		if (ev->raw != NULL)
			cli_show_lines(sh, ev, kind, ev->raw, ev->raw_len, true, &first);
	}
	if (first) {
		cli_show_begin(sh, true, ev->t_us, ev->side, ev->flags, kind);
		cli_show_end(sh);
	}
	cli_out_check(sh->out);
	return sh->out->werr != 0 ? 1 : 0;
}

static int
cli_show_raw_cb(const struct store_event_row *ev, void *arg)
{
	struct cli_show *sh = arg;

	if (ev->raw == NULL || ev->raw_len == 0 || (sh->side >= 0 && (int)ev->side != sh->side))
		return 0;
	if (ev->flags & STORE_F_REDACTED)
		sh->nredacted++;
	if (fwrite(ev->raw, 1, ev->raw_len, sh->out->f) != ev->raw_len) {
		cli_out_check(sh->out);
		if (sh->out->werr == 0)
			sh->out->werr = EIO;
		return 1;
	}
	return 0;
}

/* "250 2.1.5 Ok": the code unless the recorded text starts with it. */
static void
cli_show_reply(FILE *f, int code, const char *reply, const char *indent)
{
	char cs[8];

	snprintf(cs, sizeof(cs), "%d", code);
	if (code != 0 && (reply == NULL || strncmp(reply, cs, 3) != 0))
		fprintf(f, "%d%s", code, reply != NULL ? " " : "");
	if (reply != NULL)
		cli_put_indented(f, reply, indent);
	if (code == 0 && reply == NULL)
		fputs("(no reply)", f);
}

static int
cli_show_message_cb(const struct store_message_row *m, void *arg)
{
	static const char ind[] = "                ";
	struct cli_show *sh = arg;
	FILE *f = sh->out->f;
	size_t i;

	fprintf(f, "\n%smessage %d%s\n", sh->color ? CLI_C_BOLD : "", m->idx, sh->color ? CLI_C_RESET : "");
	fputs("  mail from    <", f);
	cli_put_escaped_str(f, m->mail_from);
	fputc('>', f);
	if (m->mail_params != NULL) {
		fputc(' ', f);
		cli_put_escaped_str(f, m->mail_params);
	}
	fputc('\n', f);
	for (i = 0; i < m->nrcpts; i++) {
		fputs("  rcpt to      <", f);
		cli_put_escaped_str(f, m->rcpts[i].address);
		fputc('>', f);
		if (m->rcpts[i].params != NULL) {
			fputc(' ', f);
			cli_put_escaped_str(f, m->rcpts[i].params);
		}
		fputs(": ", f);
		cli_show_reply(f, m->rcpts[i].reply_code, m->rcpts[i].reply, ind);
		fputc('\n', f);
	}
	fprintf(f, "  size         %" PRId64 " bytes, %s, %s\n", m->size, m->transport != NULL ? m->transport : "data",
		m->complete ? "complete" : "INCOMPLETE (cut short)");
	cli_show_summary_line(f, "subject", m->subject);
	cli_show_summary_line(f, "from", m->from);
	cli_show_summary_line(f, "to", m->to);
	cli_show_summary_line(f, "date", m->date);
	cli_show_summary_line(f, "message-id", m->message_id);
	fputs("  upstream     ", f);
	cli_show_reply(f, m->reply_code, m->reply, ind);
	fputc('\n', f);
	cli_out_check(sh->out);
	return sh->out->werr != 0 ? 1 : 0;
}

int
cli_show(int argc, char **argv)
{
	enum { OPT_SIDE = 256 };
	static const struct option opts[] = {
		{ "db", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "raw", no_argument, NULL, 'r' },
		{ "side", required_argument, NULL, OPT_SIDE },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *db = CLI_DEFAULT_DB, *side_arg = NULL;
	struct store_reader *rd = NULL;
	struct export_message *msgs = NULL;
	size_t nmsgs = 0;
	struct cli_session s;
	struct cli_show sh;
	struct cli_out out;
	bool as_json = false, raw = false;
	char err[512];
	int64_t id;
	int c, r, rc;

	optind = 1;
	while ((c = getopt_long(argc, argv, "d:jrh", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			db = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'r':
			raw = true;
			break;
		case OPT_SIDE:
			side_arg = optarg;
			break;
		case 'h':
			cli_show_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap show --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	memset(&sh, 0, sizeof(sh));
	sh.side = -1;
	if (cli_parse_id("show", argc, argv, &id) < 0)
		return CLI_EXIT_USAGE;
	if (as_json && raw) {
		log_warnx("show: --json and --raw exclude each other: choose one");
		return CLI_EXIT_USAGE;
	}
	if (side_arg != NULL) {
		if (!raw) {
			log_warnx("--side only applies to --raw");
			return CLI_EXIT_USAGE;
		}
		if (strcmp(side_arg, "client") == 0)
			sh.side = STORE_SIDE_CLIENT;
		else if (strcmp(side_arg, "upstream") == 0)
			sh.side = STORE_SIDE_UPSTREAM;
		else if (strcmp(side_arg, "proxy") == 0)
			sh.side = STORE_SIDE_PROXY;
		else {
			log_warnx("--side: expected client, upstream or proxy, got '%s'", side_arg);
			return CLI_EXIT_USAGE;
		}
	}

	if ((rd = cli_reader_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	if ((rc = cli_session_load(rd, db, id, &s)) != CLI_EXIT_OK) {
		store_reader_close(rd);
		return rc;
	}
	cli_out_open(&out, NULL, NULL);
	sh.out = &out;
	sh.started_us = s.started_us;
	if (as_json)
		rc = cli_json_doc(rd, db, &s, &out);
	else if (raw) {
		r = store_reader_events(rd, id, cli_show_raw_cb, &sh, err, sizeof(err));
		if (r < 0) {
			log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
			rc = CLI_EXIT_FAIL;
		} else if (r == 0 && sh.nredacted > 0)
			log_warnx("note: %zu AUTH event(s) of session %" PRId64 " were recorded redacted, so "
				  "these bytes differ from the wire there (record with --redact-auth off to keep "
				  "them)",
				  sh.nredacted, id);
	} else {
		/* Message ids to their 1-based index, for the data summaries. */
		if (export_message_list(rd, id, &msgs, &nmsgs, err, sizeof(err)) < 0) {
			log_warnx("reading the messages of session %" PRId64 " from %s: %s", id, db, err);
			rc = CLI_EXIT_FAIL;
			goto done;
		}
		sh.msgs = msgs;
		sh.nmsgs = nmsgs;
		sh.color = log_color_enabled(STDOUT_FILENO);
		cli_show_header(&sh, &s);
		r = store_reader_events(rd, id, cli_show_event_cb, &sh, err, sizeof(err));
		if (r == 0) {
			cli_show_flush_data(&sh);
			r = store_reader_messages(rd, id, cli_show_message_cb, &sh, err, sizeof(err));
		}
		if (r < 0) {
			log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
			rc = CLI_EXIT_FAIL;
		}
	}
done:
	export_message_list_free(msgs, nmsgs);
	cli_session_free(&s);
	store_reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}

/* ------------------------------------------------------------------------
 * smtptap export
 */

/* Write one message to o (open).  Returns CLI_EXIT_OK (write errors are
 * left in o->werr) or CLI_EXIT_FAIL after reporting a database error. */
static int
cli_export_one(struct store_reader *rd, const char *db, const struct export_message *m, bool mbox,
	       struct cli_out *o)
{
	char err[512];
	int r;

	r = mbox ? export_write_mbox(rd, m, o->f, err, sizeof(err)) : export_write_eml(rd, m, o->f, err, sizeof(err));
	if (r == EXPORT_EWRITE) {
		cli_out_check(o);
		if (o->werr == 0)
			o->werr = EIO;
		return CLI_EXIT_OK;
	}
	if (r != EXPORT_OK) {
		log_warnx("reading message %d of session %" PRId64 " from %s: %s", m->idx, m->session_id, db, err);
		return CLI_EXIT_FAIL;
	}
	if (m->ended_us == 0)
		log_warnx("note: message %d of session %" PRId64 " is still being recorded: exported as far as "
			  "it was stored so far",
			  m->idx, m->session_id);
	else if (!m->complete)
		log_warnx("note: message %d of session %" PRId64 " is incomplete (the client or server cut it "
			  "short): exported as far as it was received",
			  m->idx, m->session_id);
	return CLI_EXIT_OK;
}

int
cli_export(int argc, char **argv)
{
	enum { FMT_NONE, FMT_EML, FMT_MBOX, FMT_JSON };
	static const struct option opts[] = {
		{ "eml", no_argument, NULL, 'e' },
		{ "mbox", no_argument, NULL, 'm' },
		{ "json", no_argument, NULL, 'j' },
		{ "db", required_argument, NULL, 'd' },
		{ "output", required_argument, NULL, 'o' },
		{ "message", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static const char *fmt_flag[] = { "", "--eml", "--mbox", "--json" };
	const char *db = CLI_DEFAULT_DB, *opath = NULL;
	struct store_reader *rd = NULL;
	struct export_message *msgs = NULL;
	size_t nmsgs = 0, i, first, last;
	struct cli_session s;
	struct cli_out out;
	struct stat st;
	char err[512], name[64], path[PATH_MAX];
	int fmt = FMT_NONE, nfmt = 0, c, rc;
	long msgno = 0;
	int64_t id;

	optind = 1;
	while ((c = getopt_long(argc, argv, "emjd:o:n:h", opts, NULL)) != -1) {
		switch (c) {
		case 'e':
		case 'm':
		case 'j':
			fmt = c == 'e' ? FMT_EML : c == 'm' ? FMT_MBOX : FMT_JSON;
			nfmt++;
			break;
		case 'd':
			db = optarg;
			break;
		case 'o':
			opath = optarg;
			break;
		case 'n':
			if (util_parse_int(optarg, 1, INT_MAX, &msgno) < 0) {
				log_warnx("--message: expected a message number from 1 (see 'smtptap show ID'), "
					  "got '%s'",
					  optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case 'h':
			cli_export_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap export --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (cli_parse_id("export", argc, argv, &id) < 0)
		return CLI_EXIT_USAGE;
	if (nfmt != 1) {
		log_warnx("export: choose exactly one of --eml, --mbox or --json");
		return CLI_EXIT_USAGE;
	}
	if (msgno != 0 && fmt == FMT_JSON) {
		log_warnx("--message applies to --eml and --mbox; --json describes the whole session");
		return CLI_EXIT_USAGE;
	}
	/* A closed pipe must give a clear error and status 1, not a silent
	 * death by SIGPIPE halfway through a message. */
	signal(SIGPIPE, SIG_IGN);

	if ((rd = cli_reader_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	if ((rc = cli_session_load(rd, db, id, &s)) != CLI_EXIT_OK) {
		store_reader_close(rd);
		return rc;
	}
	memset(&out, 0, sizeof(out));
	if (fmt == FMT_JSON) {
		snprintf(name, sizeof(name), "%" PRId64 ".json", id);
		if (cli_out_target(path, sizeof(path), opath, name) < 0 || cli_out_open(&out, path, db) < 0) {
			rc = CLI_EXIT_FAIL;
			goto done;
		}
		rc = cli_json_doc(rd, db, &s, &out);
		goto done;
	}

	if (export_message_list(rd, id, &msgs, &nmsgs, err, sizeof(err)) < 0) {
		log_warnx("reading the messages of session %" PRId64 " from %s: %s", id, db, err);
		rc = CLI_EXIT_FAIL;
		goto done;
	}
	if (nmsgs == 0) {
		log_warnx("session %" PRId64 " has no message to export (no DATA or BDAT was accepted)", id);
		rc = CLI_EXIT_NOTFOUND;
		goto done;
	}
	if ((size_t)msgno > nmsgs) {
		log_warnx("--message %ld: session %" PRId64 " has only %zu message%s", msgno, id, nmsgs,
			  nmsgs == 1 ? "" : "s");
		rc = CLI_EXIT_NOTFOUND;
		goto done;
	}
	first = msgno != 0 ? (size_t)msgno - 1 : 0;
	last = msgno != 0 ? (size_t)msgno : nmsgs;

	if (fmt == FMT_MBOX) {
		snprintf(name, sizeof(name), "%" PRId64 ".mbox", id);
		if (cli_out_target(path, sizeof(path), opath, name) < 0 || cli_out_open(&out, path, db) < 0) {
			rc = CLI_EXIT_FAIL;
			goto done;
		}
		for (i = first; i < last && rc == CLI_EXIT_OK && out.werr == 0; i++)
			rc = cli_export_one(rd, db, &msgs[i], true, &out);
		goto done;
	}

	/* --eml */
	if (last - first == 1) {
		snprintf(name, sizeof(name), "%" PRId64 "-%d.eml", id, msgs[first].idx);
		if (cli_out_target(path, sizeof(path), opath, name) < 0 || cli_out_open(&out, path, db) < 0) {
			rc = CLI_EXIT_FAIL;
			goto done;
		}
		rc = cli_export_one(rd, db, &msgs[first], false, &out);
		goto done;
	}
	if (opath == NULL || strcmp(opath, "-") == 0) {
		log_warnx("%s: session %" PRId64 " has %zu messages: pick one with --message N, or write one "
			  "file each with -o DIR",
			  fmt_flag[fmt], id, nmsgs);
		rc = CLI_EXIT_USAGE;
		goto done;
	}
	if (stat(opath, &st) == 0) {
		if (!S_ISDIR(st.st_mode)) {
			log_warnx("-o %s: not a directory (session %" PRId64 " has %zu messages, written one file "
				  "each; or pick one with --message N)",
				  opath, id, nmsgs);
			rc = CLI_EXIT_USAGE;
			goto done;
		}
	} else if (mkdir(opath, 0700) < 0) {
		log_warnx("-o %s: cannot create directory: %s", opath, strerror(errno));
		rc = CLI_EXIT_FAIL;
		goto done;
	}
	for (i = first; i < last && rc == CLI_EXIT_OK; i++) {
		snprintf(name, sizeof(name), "%" PRId64 "-%d.eml", id, msgs[i].idx);
		if (cli_out_target(path, sizeof(path), opath, name) < 0 || cli_out_open(&out, path, db) < 0) {
			rc = CLI_EXIT_FAIL;
			break;
		}
		rc = cli_export_one(rd, db, &msgs[i], false, &out);
		if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
			rc = CLI_EXIT_FAIL;
	}
done:
	export_message_list_free(msgs, nmsgs);
	cli_session_free(&s);
	store_reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}
