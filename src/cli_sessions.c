/*
 * cli_sessions.c - `smtptap sessions`: the most recent sessions, oldest
 * first, as a table or (--json) an array of session objects.
 */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smtptap/cli.h"
#include "smtptap/cli_json.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/cli_tls.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

/* The table's rows, collected first: the column widths depend on all. */
struct cli_sessions_list {
	struct cli_session *v;
	size_t n, cap;
	bool nomem;
};

static void cli_sessions_usage(FILE *f);
static int cli_sessions_list_cb(const struct store_session_row *row, void *arg);
static int cli_sessions_json_cb(const struct store_session_row *row, void *arg);
static void cli_sessions_tls(const struct cli_session *s, char *buf, size_t bufsz);
static void cli_sessions_table(FILE *f, const struct cli_session *v, size_t n, bool color);

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

static int
cli_sessions_list_cb(const struct store_session_row *row, void *arg)
{
	struct cli_sessions_list *l = arg;
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
	if (cli_read_session_copy(&l->v[l->n], row) < 0) {
		l->nomem = true;
		return 1;
	}
	l->n++;
	return 0;
}


static int
cli_sessions_json_cb(const struct store_session_row *row, void *arg)
{
	struct json *j = arg;
	struct cli_session s;

	if (cli_read_session_copy(&s, row) < 0)
		return 1;
	cli_json_session(j, &s);
	cli_read_session_free(&s);
	return j->failed ? 2 : 0;
}

/* "client/upstream", e.g. "starttls/implicit", "-/-" in plaintext,
 * "implicit" alone in sink mode. */
static void
cli_sessions_tls(const struct cli_session *s, char *buf, size_t bufsz)
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
cli_sessions_table(FILE *f, const struct cli_session *v, size_t n, bool color)
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
	struct cli_sessions_list l;
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
	if ((rd = cli_read_open(db)) == NULL)
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
		r = store_reader_sessions(rd, (int)limit, cli_sessions_list_cb, &l, err, sizeof(err));
		if (r < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		} else if (l.nomem) {
			log_warnx("listing sessions: out of memory (try a smaller --limit)");
			rc = CLI_EXIT_FAIL;
		} else
			cli_sessions_table(out.f, l.v, l.n, log_color_enabled(STDOUT_FILENO));
		for (i = 0; i < l.n; i++)
			cli_read_session_free(&l.v[i]);
		free(l.v);
	}
	store_reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}
