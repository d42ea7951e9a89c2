/*
 * cli_replay.c - `smtptap replay ID --to HOST:PORT`: re-send a recorded
 * session's client side to a server (replay.c), and with --diff report,
 * command by command, where the replies differ from the recorded ones.
 * Batch replay: `smtptap replay [filters | --all] --to HOST:PORT
 * [--concurrency N]` replays every session the filters match (the
 * sessions' filter flags, cli_filter.h), N at once, with a progress line
 * on a terminal and a summary of the outcomes by reply code.
 *
 * Exit status: 0 replayed (with --diff: every reply as recorded); with
 * --diff 1 when a reply differs and 2 on an error (the contract CI
 * pipelines rely on), without it 1 on an error; 2 for usage errors and 3
 * when there is no such session, as everywhere.  A batch: 0 all equal
 * (without --diff: all replayed), 1 some differ (--diff), 2 some failed;
 * 3 when the filters match no session.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "smtptap/cli.h"
#include "smtptap/cli_filter.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/replay.h"
#include "smtptap/util.h"

#define CLI_REPLAY_LABEL 44 /* the COMMAND column */
#define CLI_REPLAY_CONCURRENCY_MAX 256
#define CLI_REPLAY_PAGE 1000		/* ids listed per page of a batch */
#define CLI_REPLAY_PROGRESS_US 100000 /* the progress line, at most this often */

struct cli_replay {
	const struct replay_opts *o;
	bool diff, as_json, color;
	bool batch;	 /* a filter, not one ID */
	bool progress;	 /* the progress line on stderr (a terminal) */
	bool progress_shown;
	int64_t progress_us;
	size_t total;	 /* sessions selected */
	FILE *f;
	struct json j;
	unsigned done, equal, differing, failed, notfound, skipped, replayed;
	unsigned conn_failures, no_reply;
	unsigned codes[1000]; /* final reply code of each replayed message */
	char skip_why[512];   /* the first skipped session's reason */
};

/* The ids of a batch, collected page by page. */
struct cli_replay_ids {
	int64_t *v;
	size_t n, cap;
	int64_t last;
	bool nomem;
};

static void cli_replay_usage(FILE *f);
static int cli_replay_onoff(const char *flag, const char *v, bool *out);
static int cli_replay_seconds(const char *flag, const char *v, int *out);
static void cli_replay_result(const struct replay_result *r, void *arg);
static void cli_replay_text(struct cli_replay *cr, const struct replay_result *r);
static void cli_replay_json(struct cli_replay *cr, const struct replay_result *r);
static int cli_replay_collect(const char *db, const struct reader_filter *f, struct cli_replay_ids *ids);
static void cli_replay_tally(struct cli_replay *cr, const struct replay_result *r);
static void cli_replay_progress(struct cli_replay *cr, bool last);
static void cli_replay_summary(struct cli_replay *cr);
static void cli_replay_summary_json(struct cli_replay *cr);
static const char *cli_replay_status(const struct replay_result *r);
static ssize_t cli_replay_first_diff(const struct replay_result *r);

static void
cli_replay_usage(FILE *f)
{
	fputs("usage: smtptap replay ID --to HOST:PORT [--db PATH] [--diff [--strict]] [--json]\n"
	      "       smtptap replay (filters | --all) --to HOST:PORT [--concurrency N]\n"
	      "                      [--with-replays] [--no-progress] [options as above]\n"
	      "                      [--upstream-tls none|starttls|implicit] [--upstream-verify on|off]\n"
	      "                      [--upstream-ca FILE] [--upstream-sni NAME] [--keylog FILE]\n"
	      "                      [--auth USER:PASS] [--timing original|fast]\n"
	      "                      [--reply-timeout S] [--connect-timeout S] [--redact-auth on|off] [-v]...\n"
	      "\n"
	      "Send the client side of recorded session ID to a server again: the same\n"
	      "commands in the same order and pipelining batches, the same message bytes.\n"
	      "The replay is recorded as a new session, a replay of ID.\n"
	      "\n"
	      "  -t, --to HOST:PORT       the server to replay to (required)\n"
	      "  -d, --db PATH            database to read ID from and record into\n"
	      "                           (default ./smtptap.db; no proxy may be recording into it)\n"
	      "      --diff               compare each reply with the recorded one (code and\n"
	      "                           enhanced code) and report, command by command, what\n"
	      "                           differs; exit 0 when nothing does, 1 when a reply\n"
	      "                           differs, 2 on an error\n"
	      "      --strict             with --diff: compare the replies' text too\n"
	      "  -j, --json               the report as one JSON document\n"
	      "      --upstream-tls MODE  none, starttls or implicit (default: as recorded;\n"
	      "                           a recorded STARTTLS is skipped under none and implicit)\n"
	      "      --upstream-verify on|off  check the server's certificate and name (default on)\n"
	      "      --upstream-ca FILE   trust these CAs for the server (default: system)\n"
	      "      --upstream-sni NAME  the name sent and checked (default: the --to host)\n"
	      "      --keylog FILE        append TLS secrets (NSS key log format)\n"
	      "      --auth USER:PASS     authenticate with these credentials (the recorded\n"
	      "                           exchange, made again: needed when it was recorded\n"
	      "                           redacted).  USER alone takes the password from\n"
	      "                           $SMTPTAP_AUTH_PASS, out of sight of ps(1)\n"
	      "      --timing MODE        fast (default: no pauses) or original (the recorded\n"
	      "                           pauses between batches)\n"
	      "      --reply-timeout S    give up on a server silent for S seconds (default 120)\n"
	      "      --connect-timeout S  connect timeout (default 30)\n"
	      "      --redact-auth on|off keep credentials out of the replay's record (default on)\n"
	      "  -v, --verbose            print the conversation live on stderr\n"
	      "  -h, --help               this help\n"
	      "\n"
	      "Batch replay: instead of an ID, filters (every session that matches all of\n"
	      "them, oldest first) or --all, and:\n"
	      "  -c, --concurrency N      replay N sessions at once (1 to 256, default 1)\n"
	      "      --with-replays       take replays and mock sessions too (left out by\n"
	      "                           default, unless --mode replay or --mode mock)\n"
	      "      --no-progress        no progress line (it is shown on stderr when that\n"
	      "                           is a terminal, and never with -v)\n"
	      "A batch prints the report of each session that failed (and with --diff of\n"
	      "each that differs), then a summary: sessions equal, differing, failed and\n"
	      "skipped, and the final reply code of every replayed message.  A session\n"
	      "recorded with its credentials redacted is skipped without --auth (counted,\n"
	      "not an error).  Exit 0 when all replayed (--diff: all equal), 1 when some\n"
	      "differ (--diff), 2 when some failed, 3 when no session matches.\n"
	      "\n"
	      "Filters (as for 'smtptap sessions'; the recipient is --rcpt here):\n",
	      f);
	cli_filter_usage(f, false, true);
	fputc('\n', f);
	cli_filter_usage_when(f);
}

static int
cli_replay_onoff(const char *flag, const char *v, bool *out)
{
	if (strcmp(v, "on") == 0)
		*out = true;
	else if (strcmp(v, "off") == 0)
		*out = false;
	else {
		log_warnx("%s: expected 'on' or 'off', got '%s'", flag, v);
		return -1;
	}
	return 0;
}

static int
cli_replay_seconds(const char *flag, const char *v, int *out)
{
	long n;

	if (util_parse_int(v, 1, 86400, &n) < 0) {
		log_warnx("%s: expected a number of seconds from 1 to 86400, got '%s'", flag, v);
		return -1;
	}
	*out = (int)n;
	return 0;
}

int
cli_replay(int argc, char **argv)
{
	enum {
		OPT_TLS = CLI_FILTER_OPT_OWN,
		OPT_VERIFY,
		OPT_CA,
		OPT_SNI,
		OPT_KEYLOG,
		OPT_AUTH,
		OPT_TIMING,
		OPT_DIFF,
		OPT_STRICT,
		OPT_REPLY,
		OPT_CONNECT,
		OPT_REDACT,
		OPT_WITH_REPLAYS,
		OPT_NO_PROGRESS,
	};
	static const struct option opts[] = {
		{ "to", required_argument, NULL, 't' },
		{ "db", required_argument, NULL, 'd' },
		{ "json", no_argument, NULL, 'j' },
		{ "diff", no_argument, NULL, OPT_DIFF },
		{ "strict", no_argument, NULL, OPT_STRICT },
		{ "upstream-tls", required_argument, NULL, OPT_TLS },
		{ "upstream-verify", required_argument, NULL, OPT_VERIFY },
		{ "upstream-ca", required_argument, NULL, OPT_CA },
		{ "upstream-sni", required_argument, NULL, OPT_SNI },
		{ "keylog", required_argument, NULL, OPT_KEYLOG },
		{ "auth", required_argument, NULL, OPT_AUTH },
		{ "timing", required_argument, NULL, OPT_TIMING },
		{ "reply-timeout", required_argument, NULL, OPT_REPLY },
		{ "connect-timeout", required_argument, NULL, OPT_CONNECT },
		{ "redact-auth", required_argument, NULL, OPT_REDACT },
		{ "concurrency", required_argument, NULL, 'c' },
		{ "with-replays", no_argument, NULL, OPT_WITH_REPLAYS },
		{ "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		CLI_FILTER_OPTIONS,
		CLI_FILTER_OPTION_ALL,
		{ NULL, 0, NULL, 0 },
	};
	static char user[1024];
	struct cli_filter cf;
	struct cli_replay_ids ids;
	bool with_replays = false, no_progress = false;
	long conc;
	struct replay_opts o;
	struct cli_replay cr;
	struct cli_out out;
	char host[256], port[8], err[256];
	int64_t id;
	bool strict = false;
	int c, rc;

	cli_filter_init(&cf, util_now_us());
	memset(&ids, 0, sizeof(ids));
	memset(&o, 0, sizeof(o));
	memset(&cr, 0, sizeof(cr));
	o.db = CLI_DEFAULT_DB;
	o.tls_cfg.upstream_verify = true;
	o.redact_auth = true;
	o.reply_timeout = 120;
	o.connect_timeout = 30;
	o.concurrency = 1;
	optind = 1;
	while ((c = getopt_long(argc, argv, "t:d:jc:vh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			o.to = optarg;
			break;
		case 'd':
			o.db = optarg;
			break;
		case 'j':
			cr.as_json = true;
			break;
		case OPT_DIFF:
			cr.diff = true;
			break;
		case OPT_STRICT:
			strict = true;
			break;
		case OPT_TLS:
			if (strcmp(optarg, "none") == 0 || strcmp(optarg, "off") == 0)
				o.tls = REPLAY_TLS_NONE;
			else if (strcmp(optarg, "starttls") == 0)
				o.tls = REPLAY_TLS_STARTTLS;
			else if (strcmp(optarg, "implicit") == 0)
				o.tls = REPLAY_TLS_IMPLICIT;
			else {
				log_warnx("--upstream-tls: expected none, starttls or implicit, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case OPT_VERIFY:
			if (cli_replay_onoff("--upstream-verify", optarg, &o.tls_cfg.upstream_verify) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_CA:
			o.tls_cfg.upstream_ca = optarg;
			break;
		case OPT_SNI:
			o.sni = optarg;
			break;
		case OPT_KEYLOG:
			o.tls_cfg.keylog = optarg;
			break;
		case OPT_AUTH: {
			const char *colon = strchr(optarg, ':');

			if (snprintf(user, sizeof(user), "%.*s", colon != NULL ? (int)(colon - optarg) : (int)strlen(optarg),
				     optarg) >= (int)sizeof(user) || user[0] == '\0') {
				log_warnx("--auth: expected USER:PASS (or USER with $SMTPTAP_AUTH_PASS set)");
				return CLI_EXIT_USAGE;
			}
			o.auth_user = user;
			o.auth_pass = colon != NULL ? colon + 1 : getenv("SMTPTAP_AUTH_PASS");
			if (o.auth_pass == NULL) {
				log_warnx("--auth %s: no password (give USER:PASS, or set $SMTPTAP_AUTH_PASS)", user);
				return CLI_EXIT_USAGE;
			}
			break;
		}
		case OPT_TIMING:
			if (strcmp(optarg, "original") == 0)
				o.timing_original = true;
			else if (strcmp(optarg, "fast") == 0)
				o.timing_original = false;
			else {
				log_warnx("--timing: expected original or fast, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case OPT_REPLY:
			if (cli_replay_seconds("--reply-timeout", optarg, &o.reply_timeout) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_CONNECT:
			if (cli_replay_seconds("--connect-timeout", optarg, &o.connect_timeout) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_REDACT:
			if (cli_replay_onoff("--redact-auth", optarg, &o.redact_auth) < 0)
				return CLI_EXIT_USAGE;
			break;
		case 'c':
			if (util_parse_int(optarg, 1, CLI_REPLAY_CONCURRENCY_MAX, &conc) < 0) {
				log_warnx("--concurrency: expected a number of sessions at once from 1 to %d, got '%s'",
					  CLI_REPLAY_CONCURRENCY_MAX, optarg);
				return CLI_EXIT_USAGE;
			}
			o.concurrency = (unsigned)conc;
			break;
		case OPT_WITH_REPLAYS:
			with_replays = true;
			break;
		case OPT_NO_PROGRESS:
			no_progress = true;
			break;
		case 'v':
			o.verbosity++;
			break;
		case 'h':
			cli_replay_usage(stdout);
			return CLI_EXIT_OK;
		default:
			if ((rc = cli_filter_option(&cf, c, optarg, err, sizeof(err))) < 0) {
				log_warnx("%s", err);
				return CLI_EXIT_USAGE;
			}
			if (rc > 0)
				break;
			fputs("Try 'smtptap replay --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	cr.batch = optind >= argc;
	if (cr.batch) {
		cf.to_flag = "--rcpt";
		if (cf.nflags == 0 && !cf.all) {
			log_warnx("replay: give a session ID, filters (--since, --from, --id, ...) or --all "
				  "(try 'smtptap replay --help')");
			return CLI_EXIT_USAGE;
		}
		if (cli_filter_finish(&cf, err, sizeof(err)) < 0) {
			log_warnx("%s", err);
			return CLI_EXIT_USAGE;
		}
		/* Replaying a replay again is rarely what is meant. */
		cf.f.originals = !with_replays && cf.f.mode == NULL;
	} else {
		if (cf.nflags > 0 || cf.all) {
			log_warnx("replay: give a session ID or filters (--all, --since, --id, ...), not both");
			return CLI_EXIT_USAGE;
		}
		if (o.concurrency > 1 || with_replays) {
			log_warnx("replay %s: %s is for a batch (filters or --all), not one ID", argv[optind],
				  o.concurrency > 1 ? "--concurrency" : "--with-replays");
			return CLI_EXIT_USAGE;
		}
		if (cli_read_parse_id("replay", argc, argv, &id) < 0)
			return CLI_EXIT_USAGE;
	}
	if (o.to == NULL) {
		log_warnx("replay: --to HOST:PORT is required (the server to replay to)");
		return CLI_EXIT_USAGE;
	}
	if (util_split_hostport(o.to, host, sizeof(host), port, sizeof(port), err, sizeof(err)) < 0) {
		log_warnx("--to %s", err);
		return CLI_EXIT_USAGE;
	}
	if (host[0] == '\0' || strcmp(port, "0") == 0) {
		log_warnx("--to %s: needs a host and a port other than 0", o.to);
		return CLI_EXIT_USAGE;
	}
	if (strict && !cr.diff) {
		log_warnx("--strict changes what --diff compares: give --diff too");
		return CLI_EXIT_USAGE;
	}
	o.strict = strict;
	/* A batch's summary replaces the line per session (-v brings it back). */
	log_init(cr.batch && o.verbosity == 0 ? -1 : o.verbosity);

	if (cr.batch) {
		o.skip_redacted = o.auth_user == NULL;
		if ((rc = cli_replay_collect(o.db, &cf.f, &ids)) != CLI_EXIT_OK)
			return rc;
		if (ids.n == 0) {
			log_warnx("replay: no session in %s matches (see 'smtptap sessions' with the same filters)", o.db);
			free(ids.v);
			return CLI_EXIT_NOTFOUND;
		}
		cr.total = ids.n;
		cr.progress = !no_progress && o.verbosity == 0 && isatty(STDERR_FILENO) == 1;
	}
	cr.o = &o;
	if (cli_out_open(&out, NULL, NULL) < 0)
		return CLI_EXIT_FAIL;
	cr.f = out.f;
	cr.color = log_color_enabled(STDOUT_FILENO);
	if (cr.as_json) {
		json_init(&cr.j, cr.f, 2);
		json_object_begin(&cr.j);
		json_key(&cr.j, "replays");
		json_array_begin(&cr.j);
	}
	if (cr.batch)
		rc = replay_run(&o, ids.v, ids.n, cr.diff, cli_replay_result, &cr) < 0 ? -1 : 0;
	else
		rc = replay_run(&o, &id, 1, cr.diff, cli_replay_result, &cr) < 0 ? -1 : 0;
	free(ids.v);
	cli_replay_progress(&cr, true);
	if (cr.as_json) {
		json_array_end(&cr.j);
		cli_replay_summary_json(&cr);
		json_object_end(&cr.j);
		if (json_finish(&cr.j) < 0 && cr.j.err != 0)
			out.werr = cr.j.err;
	} else if (cr.batch) {
		cli_replay_summary(&cr);
	}
	if (cli_out_close(&out) < 0 && rc == 0)
		rc = -1;
	if (cr.batch) {
		if (rc < 0 || cr.failed > 0)
			return 2;
		return cr.diff && cr.differing > 0 ? 1 : CLI_EXIT_OK;
	}
	if (rc < 0 || cr.failed > 0) {
		if (cr.notfound > 0 && cr.notfound == cr.failed && rc == 0)
			return CLI_EXIT_NOTFOUND;
		return cr.diff ? 2 : CLI_EXIT_FAIL;
	}
	return cr.diff && cr.differing > 0 ? 1 : CLI_EXIT_OK;
}

static void
cli_replay_result(const struct replay_result *r, void *arg)
{
	struct cli_replay *cr = arg;

	cr->done++;
	cli_replay_tally(cr, r);
	if (r->skipped) {
		cr->skipped++;
		if (cr->skip_why[0] == '\0')
			snprintf(cr->skip_why, sizeof(cr->skip_why), "%s", r->errmsg);
	} else if (r->error) {
		cr->failed++;
		cr->notfound += r->notfound;
		/* One line on stderr, whatever the report's form. */
		cli_replay_progress(cr, true);
		log_warnx("replay of session %" PRId64 ": %s", r->id, r->errmsg);
	} else if (r->ndiff > 0) {
		cr->differing++;
	} else {
		cr->equal++;
	}
	if (cr->as_json) {
		cli_replay_json(cr, r);
	} else if (r->rec != NULL && !r->skipped && (r->replay_id != 0 || !r->error) &&
		   (!cr->batch || r->error || (cr->diff && r->ndiff > 0))) {
		/* A batch reports only what went wrong; the summary says the rest. */
		cli_replay_progress(cr, true);
		cli_replay_text(cr, r);
		fflush(cr->f);
	}
	cli_replay_progress(cr, cr->done == cr->total);
}

/* The ids the filter matches, oldest first, page by page (keyset: stable
 * while a proxy records).  Only ids are kept: 8 bytes a session. */
static int
cli_replay_ids_cb(const struct reader_session *s, void *arg)
{
	struct cli_replay_ids *ids = arg;
	int64_t *nv;
	size_t ncap;

	if (ids->n == ids->cap) {
		ncap = ids->cap == 0 ? 1024 : ids->cap * 2;
		if (ncap > SIZE_MAX / sizeof(*nv) || (nv = realloc(ids->v, ncap * sizeof(*nv))) == NULL) {
			ids->nomem = true;
			return 1;
		}
		ids->v = nv;
		ids->cap = ncap;
	}
	ids->v[ids->n++] = s->id;
	ids->last = s->id;
	return 0;
}

static int
cli_replay_collect(const char *db, const struct reader_filter *f, struct cli_replay_ids *ids)
{
	struct reader *rd;
	struct reader_page pg;
	struct reader_page_info info;
	char err[512];
	int r;

	if ((rd = cli_read_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	memset(&pg, 0, sizeof(pg));
	pg.limit = CLI_REPLAY_PAGE;
	pg.oldest_first = true;
	for (;;) {
		pg.after_id = ids->last;
		memset(&info, 0, sizeof(info));
		r = reader_sessions(rd, f, &pg, cli_replay_ids_cb, ids, &info, err, sizeof(err));
		if (ids->nomem) {
			log_warnx("replay: out of memory listing the sessions");
			break;
		}
		if (r < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			break;
		}
		if (!info.more || info.n == 0) {
			reader_close(rd);
			return CLI_EXIT_OK;
		}
	}
	reader_close(rd);
	free(ids->v);
	memset(ids, 0, sizeof(*ids));
	return CLI_EXIT_FAIL;
}

/* The final reply of each message the replay sent (or tried to): the
 * reply to its content (DATA) or its last chunk (BDAT); when the content
 * was not sent because DATA was refused, the reply to DATA. */
static void
cli_replay_tally(struct cli_replay *cr, const struct replay_result *r)
{
	const struct recording *rec = r->rec;
	struct rec_code code;
	size_t i;

	if (r->skipped)
		return;
	if (r->error && r->outcome != NULL &&
	    (strcmp(r->outcome, "upstream-unreachable") == 0 || strcmp(r->outcome, "upstream-tls-error") == 0)) {
		cr->conn_failures++;
		return;
	}
	if (r->replay_id != 0)
		cr->replayed++;
	if (rec == NULL || r->units == NULL)
		return;
	for (i = 0; i < rec->nunits; i++) {
		const struct rec_unit *u = &rec->units[i];
		const struct replay_unit *ru = &r->units[i];
		const char *raw = ru->reply;
		size_t len = ru->reply_len;

		if (!(u->kind == REC_UNIT_DATA || (u->kind == REC_UNIT_COMMAND && u->bdat && u->bdat_last)))
			continue;
		if (!ru->sent && u->kind == REC_UNIT_DATA && i > 0 && r->units[i - 1].sent &&
		    rec->units[i - 1].verb == SMTP_VERB_DATA) {
			raw = r->units[i - 1].reply; /* DATA refused: its reply is the message's fate */
			len = r->units[i - 1].reply_len;
		} else if (!ru->sent) {
			continue; /* never got that far (the session ended before) */
		}
		if (raw == NULL) {
			cr->no_reply++;
			continue;
		}
		recording_code(raw, len, &code);
		if (code.code > 0 && code.code < 1000)
			cr->codes[code.code]++;
		else
			cr->no_reply++;
	}
}

/* "\r[ 123/1000] 100 equal, 20 differ, 3 failed" on stderr, a terminal's
 * only; last: erase it (before other output, and at the end). */
static void
cli_replay_progress(struct cli_replay *cr, bool last)
{
	int64_t now;

	if (!cr->progress)
		return;
	if (last) {
		if (cr->progress_shown)
			fputs("\r\033[K", stderr);
		cr->progress_shown = false;
		return;
	}
	now = util_now_us();
	if (cr->progress_shown && now - cr->progress_us < CLI_REPLAY_PROGRESS_US)
		return;
	cr->progress_us = now;
	cr->progress_shown = true;
	fprintf(stderr, "\r\033[Kreplaying [%u/%zu] %u equal, %u differ, %u failed, %u skipped", cr->done, cr->total,
		cr->equal, cr->differing, cr->failed, cr->skipped);
	fflush(stderr);
}

static void
cli_replay_summary(struct cli_replay *cr)
{
	const char *sep = "";
	int code;

	fprintf(cr->f, "replayed %u of %zu sessions to %s (concurrency %u): %u equal, %u differ%s, %u failed, %u skipped\n",
		cr->replayed, cr->total, cr->o->to, cr->o->concurrency, cr->equal, cr->differing,
		cr->diff ? "" : " (see --diff)", cr->failed, cr->skipped);
	fputs("messages by final reply:", cr->f);
	for (code = 1; code < 1000; code++) {
		if (cr->codes[code] == 0)
			continue;
		fprintf(cr->f, "%s %d x %u", sep, code, cr->codes[code]);
		sep = ",";
	}
	if (cr->no_reply > 0)
		fprintf(cr->f, "%s no reply x %u", sep, cr->no_reply), sep = ",";
	if (sep[0] == '\0')
		fputs(" none", cr->f);
	fputc('\n', cr->f);
	if (cr->conn_failures > 0)
		fprintf(cr->f, "connection failures: %u (the server could not be reached)\n", cr->conn_failures);
	if (cr->skipped > 0)
		fprintf(cr->f, "skipped: %u, %s\n", cr->skipped, cr->skip_why);
}

static void
cli_replay_summary_json(struct cli_replay *cr)
{
	struct json *j = &cr->j;
	char key[16];
	int code;

	json_key(j, "summary");
	json_object_begin(j);
	json_kv_int(j, "sessions", cr->done);
	json_kv_int(j, "replayed", cr->replayed);
	json_kv_int(j, "equal", cr->equal);
	json_kv_int(j, "differing", cr->differing);
	json_kv_int(j, "failed", cr->failed);
	json_kv_int(j, "skipped", cr->skipped);
	json_kv_string(j, "skipped_reason", cr->skipped > 0 ? cr->skip_why : NULL);
	json_kv_int(j, "connection_failures", cr->conn_failures);
	json_key(j, "final_replies");
	json_object_begin(j);
	for (code = 1; code < 1000; code++) {
		if (cr->codes[code] == 0)
			continue;
		snprintf(key, sizeof(key), "%d", code);
		json_kv_int(j, key, cr->codes[code]);
	}
	json_object_end(j);
	json_kv_int(j, "no_reply", cr->no_reply);
	json_object_end(j);
}

static const char *
cli_replay_status(const struct replay_result *r)
{
	if (r->skipped)
		return "skipped";
	if (r->error)
		return "failed";
	return r->ndiff > 0 ? "differs" : "equal";
}

/* The first unit whose reply differs: its index, -1 the greeting, -2 none. */
static ssize_t
cli_replay_first_diff(const struct replay_result *r)
{
	size_t i;

	if (r->rec == NULL || r->units == NULL)
		return -2;
	if (r->greeting_differs)
		return -1;
	for (i = 0; i < r->rec->nunits; i++)
		if (r->units[i].compared && r->units[i].differs)
			return (ssize_t)i;
	return -2;
}

/* "250 2.1.5", "354", "-" */
static void
cli_replay_code(const char *raw, size_t len, char *buf, size_t bufsz)
{
	struct rec_code c;

	if (raw == NULL) {
		snprintf(buf, bufsz, "-");
		return;
	}
	recording_code(raw, len, &c);
	if (c.code == 0)
		snprintf(buf, bufsz, "?");
	else if (c.has_enh)
		snprintf(buf, bufsz, "%d %d.%d.%d", c.code, c.enh_class, c.enh_subject, c.enh_detail);
	else
		snprintf(buf, bufsz, "%d", c.code);
}

/* One line of the table: the label (escaped, padded), both codes. */
static void
cli_replay_row(struct cli_replay *cr, bool differs, unsigned diff, const char *label, const char *want, size_t wlen,
	       const char *got, size_t glen, const char *note)
{
	char a[32], b[32];
	size_t n = strlen(label);
	int pad;

	if (note == NULL && differs && diff == REC_DIFF_TEXT)
		note = "text differs";

	cli_replay_code(want, wlen, a, sizeof(a));
	cli_replay_code(got, glen, b, sizeof(b));
	fprintf(cr->f, "%s%s%s ", differs && cr->color ? CLI_C_PROXY : "", differs ? "!" : " ",
		differs && cr->color ? CLI_C_RESET : "");
	if (n > CLI_REPLAY_LABEL)
		n = CLI_REPLAY_LABEL;
	cli_read_put_escaped(cr->f, label, n);
	pad = CLI_REPLAY_LABEL - (int)n;
	fprintf(cr->f, "%*s  %-12s %s", pad > 0 ? pad : 0, "", a, b);
	if (note != NULL)
		fprintf(cr->f, "%*s (%s)", 12 - (int)strlen(b) > 0 ? 12 - (int)strlen(b) : 0, "", note);
	fputc('\n', cr->f);
	if (differs && want != NULL && got != NULL) {
		char line[512];

		fputs("      recorded: ", cr->f);
		cli_read_put_escaped_str(cr->f, recording_reply_label(want, wlen, line, sizeof(line)));
		fputs("\n      replay:   ", cr->f);
		cli_read_put_escaped_str(cr->f, recording_reply_label(got, glen, line, sizeof(line)));
		fputc('\n', cr->f);
	}
}

static void
cli_replay_text(struct cli_replay *cr, const struct replay_result *r)
{
	const struct recording *rec = r->rec;
	char label[512];
	size_t i, ncompared = 0, nsent = 0;

	for (i = 0; i < rec->nunits; i++) {
		ncompared += r->units[i].compared;
		nsent += r->units[i].sent;
	}
	ncompared += rec->greeting >= 0 || r->greeting != NULL;
	fprintf(cr->f, "session %" PRId64 " replayed to %s as session %" PRId64 " (outcome %s): %zu of %zu units sent", r->id,
		cr->o->to, r->replay_id, r->outcome != NULL ? r->outcome : "-", nsent, rec->nunits);
	if (cr->diff)
		fprintf(cr->f, ", %zu of %zu replies differ", r->ndiff, ncompared);
	else if (r->ndiff > 0)
		fprintf(cr->f, "; %zu replies differ from the recording (see --diff)", r->ndiff);
	fputc('\n', cr->f);
	if (!cr->diff)
		return;
	fprintf(cr->f, "  %-*s  %-12s %s\n", CLI_REPLAY_LABEL, "COMMAND", "RECORDED", "REPLAY");
	cli_replay_row(cr, r->greeting_differs, r->greeting_diff, "(greeting)",
		       rec->greeting >= 0 ? rec->replies[rec->greeting].raw : NULL,
		       rec->greeting >= 0 ? rec->replies[rec->greeting].len : 0, r->greeting, r->greeting_len, NULL);
	for (i = 0; i < rec->nunits; i++) {
		const struct rec_unit *u = &rec->units[i];
		const struct replay_unit *ru = &r->units[i];
		const struct rec_reply *want = u->reply >= 0 ? &rec->replies[u->reply] : NULL;
		char note[160];

		note[0] = '\0';
		if (ru->skipped != NULL)
			snprintf(note, sizeof(note), "not sent: %s", ru->skipped);
		if (!ru->compared && ru->skipped == NULL)
			continue; /* nothing to compare: bytes that get no reply */
		cli_replay_row(cr, ru->differs, ru->diff, recording_unit_label(u, label, sizeof(label)), want ? want->raw : NULL,
			       want ? want->len : 0, ru->reply, ru->reply_len, note[0] ? note : NULL);
	}
	if (r->unsolicited > 0)
		fprintf(cr->f, "  %u replies came that answered nothing\n", r->unsolicited);
	if (r->cancelled > 0)
		fprintf(cr->f, "  %u AUTH exchanges cancelled with \"*\": the server asked for more than was recorded\n",
			r->cancelled);
}

static void
cli_replay_json_reply(struct json *j, const char *key, const char *raw, size_t len)
{
	struct rec_code c;
	char enh[32];

	json_key(j, key);
	if (raw == NULL) {
		json_null(j);
		return;
	}
	recording_code(raw, len, &c);
	json_object_begin(j);
	json_kv_int(j, "code", c.code);
	if (c.has_enh) {
		snprintf(enh, sizeof(enh), "%d.%d.%d", c.enh_class, c.enh_subject, c.enh_detail);
		json_kv_string(j, "enhanced", enh);
	} else {
		json_kv_null(j, "enhanced");
	}
	json_key(j, "text");
	json_string_len(j, raw, len);
	json_object_end(j);
}

static void
cli_replay_json_diff(struct json *j, unsigned diff)
{
	json_key(j, "diff");
	json_array_begin(j);
	if (diff & REC_DIFF_CODE)
		json_string(j, "code");
	if (diff & REC_DIFF_ENH)
		json_string(j, "enhanced");
	if (diff & REC_DIFF_TEXT)
		json_string(j, "text");
	json_array_end(j);
}

static void
cli_replay_json(struct cli_replay *cr, const struct replay_result *r)
{
	static const char *const kinds[] = { "command", "auth", "data" };
	const struct recording *rec = r->rec;
	struct json *j = &cr->j;
	char label[1024];
	ssize_t first;
	size_t i;

	json_object_begin(j);
	json_kv_int(j, "session", r->id);
	if (r->replay_id != 0)
		json_kv_int(j, "replay_session", r->replay_id);
	else
		json_kv_null(j, "replay_session");
	json_kv_string(j, "to", cr->o->to);
	json_kv_string(j, "outcome", r->outcome);
	json_kv_string(j, "status", cli_replay_status(r));
	json_kv_string(j, "error", r->error ? r->errmsg : NULL);
	json_kv_string(j, "skipped", r->skipped ? r->errmsg : NULL);
	json_kv_bool(j, "equal", !r->error && !r->skipped && r->ndiff == 0);
	json_kv_int(j, "differences", (int64_t)r->ndiff);
	json_kv_int(j, "unsolicited", r->unsolicited);
	/* The first reply that differs: where to look first. */
	first = cli_replay_first_diff(r);
	json_key(j, "first_difference");
	if (first == -2) {
		json_null(j);
	} else if (first == -1) {
		json_object_begin(j);
		json_kv_null(j, "n");
		json_kv_string(j, "command", "(greeting)");
		cli_replay_json_reply(j, "recorded", rec->greeting >= 0 ? rec->replies[rec->greeting].raw : NULL,
				      rec->greeting >= 0 ? rec->replies[rec->greeting].len : 0);
		cli_replay_json_reply(j, "replay", r->greeting, r->greeting_len);
		json_object_end(j);
	} else {
		const struct rec_unit *u = &rec->units[first];
		const struct rec_reply *want = u->reply >= 0 ? &rec->replies[u->reply] : NULL;

		json_object_begin(j);
		json_kv_int(j, "n", (int64_t)first + 1);
		json_kv_string(j, "command", recording_unit_label(u, label, sizeof(label)));
		cli_replay_json_reply(j, "recorded", want ? want->raw : NULL, want ? want->len : 0);
		cli_replay_json_reply(j, "replay", r->units[first].reply, r->units[first].reply_len);
		json_object_end(j);
	}
	/* A batch's entries stay one summary each (the full report is one
	 * `replay ID --json` away). */
	if (rec == NULL || cr->batch) {
		json_object_end(j);
		return;
	}
	json_key(j, "greeting");
	json_object_begin(j);
	cli_replay_json_reply(j, "recorded", rec->greeting >= 0 ? rec->replies[rec->greeting].raw : NULL,
			      rec->greeting >= 0 ? rec->replies[rec->greeting].len : 0);
	cli_replay_json_reply(j, "replay", r->greeting, r->greeting_len);
	json_kv_bool(j, "differs", r->greeting_differs);
	cli_replay_json_diff(j, r->greeting_diff);
	json_object_end(j);
	json_key(j, "units");
	json_array_begin(j);
	for (i = 0; r->units != NULL && i < rec->nunits; i++) {
		const struct rec_unit *u = &rec->units[i];
		const struct replay_unit *ru = &r->units[i];
		const struct rec_reply *want = u->reply >= 0 ? &rec->replies[u->reply] : NULL;

		json_object_begin(j);
		json_kv_int(j, "n", (int64_t)i + 1);
		json_kv_int(j, "seq", u->seq);
		json_kv_int(j, "group", (int64_t)u->group + 1);
		json_kv_string(j, "kind", kinds[u->kind]);
		json_kv_string(j, "command", recording_unit_label(u, label, sizeof(label)));
		json_kv_bool(j, "sent", ru->sent);
		json_kv_string(j, "skipped", ru->skipped);
		json_kv_bool(j, "compared", ru->compared);
		cli_replay_json_reply(j, "recorded", want ? want->raw : NULL, want ? want->len : 0);
		cli_replay_json_reply(j, "replay", ru->reply, ru->reply_len);
		json_kv_bool(j, "differs", ru->differs);
		cli_replay_json_diff(j, ru->diff);
		json_object_end(j);
	}
	json_array_end(j);
	json_object_end(j);
}
