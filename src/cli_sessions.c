/*
 * cli_sessions.c - `smtptap sessions`: the recorded sessions that match
 * the filters, one page of them (keyset pagination by id, newest page
 * first), oldest first, as a table, a JSON array (--json) or one JSON
 * object per line (--jsonl).  The flags fill a struct reader_filter; the
 * reader does the rest (reader.h).
 */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smtptap/cli.h"
#include "smtptap/cli_filter.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/cli_tls.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/reader.h"
#include "smtptap/reader_json.h"
#include "smtptap/util.h"

/* The table's rows, collected first: the column widths depend on all. */
struct cli_sessions_list {
	struct reader_session *v;
	size_t n, cap;
	bool nomem;
};

/* --json / --jsonl: each session as it comes. */
struct cli_sessions_json {
	struct json *j;	  /* --json: the array being written */
	struct cli_out *out;
	bool lines;	  /* --jsonl */
};

static void cli_sessions_usage(FILE *f);
static int cli_sessions_list_cb(const struct reader_session *row, void *arg);
static int cli_sessions_json_cb(const struct reader_session *row, void *arg);
static void cli_sessions_tls(const struct reader_session *s, char *buf, size_t bufsz);
static void cli_sessions_table(FILE *f, const struct reader_session *v, size_t n, bool color);
static int cli_sessions_id_arg(const char *flag, const char *arg, int64_t *out);

static void
cli_sessions_usage(FILE *f)
{
	fputs("usage: smtptap sessions [--db PATH] [filters] [--limit N] [--before ID | --after ID]\n"
	      "                        [--json | --jsonl | --explain]\n"
	      "\n"
	      "List recorded sessions: the most recent ones that match every filter given,\n"
	      "oldest first.\n"
	      "\n"
	      "Filters:\n",
	      f);
	cli_filter_usage(f, true, false);
	fputs("\n"
	      "Pages (by session id, stable while a proxy records):\n"
	      "  -n, --limit N         at most N sessions (default 50, 0 for all)\n"
	      "      --before ID       the page of older sessions, below ID\n"
	      "      --after ID        the page of newer sessions, above ID\n"
	      "\n"
	      "Output:\n"
	      "  -j, --json            one JSON array of session objects\n"
	      "      --jsonl           one JSON session object per line\n"
	      "      --explain         SQLite's query plan for the search instead (to see\n"
	      "                        why one is slow)\n"
	      "  -d, --db PATH         database file (default ./smtptap.db)\n"
	      "  -h, --help            this help\n"
	      "\n",
	      f);
	cli_filter_usage_when(f);
}

static int
cli_sessions_list_cb(const struct reader_session *row, void *arg)
{
	struct cli_sessions_list *l = arg;
	struct reader_session *nv;
	size_t ncap;

	if (l->n == l->cap) {
		ncap = l->cap == 0 ? 64 : l->cap * 2;
		if (ncap > SIZE_MAX / sizeof(*nv) || (nv = realloc(l->v, ncap * sizeof(*nv))) == NULL) {
			l->nomem = true;
			return 1;
		}
		l->v = nv;
		l->cap = ncap;
	}
	if (reader_session_dup(&l->v[l->n], row) < 0) {
		l->nomem = true;
		return 1;
	}
	l->n++;
	return 0;
}

static int
cli_sessions_json_cb(const struct reader_session *row, void *arg)
{
	struct cli_sessions_json *cj = arg;
	struct json line;

	if (!cj->lines) {
		reader_json_session(cj->j, row);
		return cj->j->failed ? 1 : 0;
	}
	/* one compact document per line */
	json_init(&line, cj->out->f, 0);
	reader_json_session(&line, row);
	if (json_finish(&line) < 0) {
		if (cj->out->werr == 0)
			cj->out->werr = line.err;
		cli_out_check(cj->out);
		return 1;
	}
	return 0;
}

/* "client/upstream", e.g. "starttls/implicit", "-/-" in plaintext,
 * "implicit" alone in sink mode. */
static void
cli_sessions_tls(const struct reader_session *s, char *buf, size_t bufsz)
{
	char c[16], u[16];

	cli_tls_mode_word(s->client_tls, c, sizeof(c));
	cli_tls_mode_word(s->upstream_tls, u, sizeof(u));
	if (s->upstream == NULL)
		snprintf(buf, bufsz, "%s", c);
	else
		snprintf(buf, bufsz, "%s/%s", c, u);
}

static void
cli_sessions_table(FILE *f, const struct reader_session *v, size_t n, bool color)
{
	char dur[32], start[64], idbuf[32], tls[40];
	int wid = 2, wdur = 8, wcli = 6, wup = 8, wmsg = 4, wtls = 3, k;
	size_t i;

	for (i = 0; i < n; i++) {
		cli_sessions_tls(&v[i], tls, sizeof(tls));
		k = (int)strlen(tls);
		wtls = k > wtls ? k : wtls;
		k = snprintf(idbuf, sizeof(idbuf), "%" PRId64, v[i].id);
		wid = k > wid ? k : wid;
		if (v[i].ended_us != 0) {
			cli_read_fmt_duration(dur, sizeof(dur), v[i].ended_us - v[i].started_us, false);
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
	fprintf(f, "%s%*s  %-19s  %*s  %-*s  %-*s  %-*s  %*s  %s%s\n", color ? CLI_C_BOLD : "", wid, "ID", "START",
		wdur, "DURATION", wcli, "CLIENT", wup, "UPSTREAM", wtls, "TLS", wmsg, "MSGS", "OUTCOME",
		color ? CLI_C_RESET : "");
	for (i = 0; i < n; i++) {
		cli_read_fmt_local(start, sizeof(start), v[i].started_us, false);
		if (v[i].ended_us != 0)
			cli_read_fmt_duration(dur, sizeof(dur), v[i].ended_us - v[i].started_us, false);
		else
			snprintf(dur, sizeof(dur), "-");
		cli_sessions_tls(&v[i], tls, sizeof(tls));
		fprintf(f, "%*" PRId64 "  %-19s  %*s  %-*s  %-*s  %-*s  %*" PRId64 "  %s", wid, v[i].id, start, wdur,
			dur, wcli, v[i].client != NULL ? v[i].client : "-", wup,
			v[i].upstream != NULL ? v[i].upstream : "(sink)", wtls, tls, wmsg, v[i].nmessages,
			v[i].ended_us == 0 ? "live" : v[i].outcome != NULL ? v[i].outcome : "-");
		if (v[i].replay_of > 0)
			fprintf(f, " (%s of %" PRId64 ")",
				v[i].mode != NULL && strcmp(v[i].mode, "mock") == 0 ? "mock" : "replay", v[i].replay_of);
		fputc('\n', f);
	}
}

/* --before / --after ID */
static int
cli_sessions_id_arg(const char *flag, const char *arg, int64_t *out)
{
	long v;

	if (util_parse_int(arg, 1, LONG_MAX, &v) < 0) {
		log_warnx("%s: expected a session ID (a number from 1), got '%s'", flag, arg);
		return -1;
	}
	*out = v;
	return 0;
}

int
cli_sessions(int argc, char **argv)
{
	enum {
		OPT_BEFORE = CLI_FILTER_OPT_OWN,
		OPT_AFTER,
		OPT_JSONL,
		OPT_EXPLAIN,
	};
	static const struct option opts[] = {
		{ "db", required_argument, NULL, 'd' },
		{ "limit", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ "jsonl", no_argument, NULL, OPT_JSONL },
		{ "explain", no_argument, NULL, OPT_EXPLAIN },
		CLI_FILTER_OPTIONS,
		CLI_FILTER_OPTION_TO,
		{ "before", required_argument, NULL, OPT_BEFORE },
		{ "after", required_argument, NULL, OPT_AFTER },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *db = CLI_DEFAULT_DB;
	struct cli_filter cf;
	struct reader_filter *fp = &cf.f;
	struct reader_page pg;
	struct reader_page_info info;
	struct reader *rd;
	struct cli_sessions_list l;
	struct cli_sessions_json cj;
	struct cli_out out;
	struct json j;
	bool as_json = false, jsonl = false, explain = false;
	char err[512], *plan = NULL;
	long limit = 50;
	int c, r, rc = CLI_EXIT_OK;
	size_t i;

	cli_filter_init(&cf, util_now_us());
	memset(&pg, 0, sizeof(pg));
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
		case OPT_JSONL:
			jsonl = true;
			break;
		case OPT_EXPLAIN:
			explain = true;
			break;
		case OPT_BEFORE:
		case OPT_AFTER:
			if (cli_sessions_id_arg(c == OPT_BEFORE ? "--before" : "--after", optarg,
						c == OPT_BEFORE ? &pg.before_id : &pg.after_id) < 0)
				return CLI_EXIT_USAGE;
			break;
		case 'h':
			cli_sessions_usage(stdout);
			return CLI_EXIT_OK;
		default:
			if ((r = cli_filter_option(&cf, c, optarg, err, sizeof(err))) < 0) {
				log_warnx("%s", err);
				return CLI_EXIT_USAGE;
			}
			if (r > 0)
				break;
			fputs("Try 'smtptap sessions --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		log_warnx("sessions: unexpected argument '%s' (try 'smtptap sessions --help')", argv[optind]);
		return CLI_EXIT_USAGE;
	}
	if (as_json + jsonl + explain > 1) {
		log_warnx("sessions: --json, --jsonl and --explain exclude each other: choose one");
		return CLI_EXIT_USAGE;
	}
	if (cli_filter_finish(&cf, err, sizeof(err)) < 0) {
		log_warnx("%s", err);
		return CLI_EXIT_USAGE;
	}
	if (pg.before_id > 0 && pg.after_id > 0 && pg.before_id <= pg.after_id + 1) {
		log_warnx("--before %" PRId64 " --after %" PRId64 ": no session id lies between them", pg.before_id,
			  pg.after_id);
		return CLI_EXIT_USAGE;
	}
	pg.limit = limit;
	pg.oldest_first = true;
	if ((rd = cli_read_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	cli_out_open(&out, NULL, NULL);
	memset(&info, 0, sizeof(info));
	if (explain) {
		if ((plan = malloc(16384)) == NULL) {
			log_warnx("sessions: out of memory");
			rc = CLI_EXIT_FAIL;
		} else if (reader_sessions_plan(rd, fp, &pg, plan, 16384, err, sizeof(err)) < 0) {
			log_warnx("explaining the search in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		} else {
			fprintf(out.f, "%s\n", plan);
			cli_out_check(&out);
		}
		free(plan);
	} else if (as_json || jsonl) {
		cj.out = &out;
		cj.lines = jsonl;
		cj.j = &j;
		if (as_json) {
			json_init(&j, out.f, 2);
			json_array_begin(&j);
		}
		r = reader_sessions(rd, fp, &pg, cli_sessions_json_cb, &cj, &info, err, sizeof(err));
		if (as_json) {
			json_array_end(&j);
			if (json_finish(&j) < 0 && j.err != 0 && out.werr == 0)
				out.werr = j.err;
		}
		if (r < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		}
	} else {
		memset(&l, 0, sizeof(l));
		/* Collected first: the column widths depend on every row. */
		r = reader_sessions(rd, fp, &pg, cli_sessions_list_cb, &l, &info, err, sizeof(err));
		if (r < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		} else if (l.nomem) {
			log_warnx("listing sessions: out of memory (try a smaller --limit)");
			rc = CLI_EXIT_FAIL;
		} else {
			cli_sessions_table(out.f, l.v, l.n, log_color_enabled(STDOUT_FILENO));
			/* Where the next page is: on stderr, the table stays a table. */
			if (info.more && pg.after_id > 0 && pg.before_id <= 0)
				log_info("more sessions match: the next page with --after %" PRId64, info.max_id);
			else if (info.more)
				log_info("more sessions match: the previous page with --before %" PRId64, info.min_id);
		}
		for (i = 0; i < l.n; i++)
			reader_session_free(&l.v[i]);
		free(l.v);
	}
	reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}
