/*
 * cli_export.c - `smtptap export ID`: a session's messages exactly as the
 * client sent them (dot-unstuffed), as .eml files or an mboxrd mailbox,
 * or the session as JSON (the same document as `show --json`).
 *
 * Many sessions: `export (--mbox | --eml -o DIR | --jsonl) (filters |
 * --all)` walks the sessions the filters match (the filter flags of
 * `sessions`, cli_filter.h), oldest first, a page at a time, one short
 * request per page; each message is streamed (export.c), so neither the
 * sessions nor a message are ever held whole in memory.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "smtptap/cli.h"
#include "smtptap/cli_filter.h"
#include "smtptap/cli_json.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/export.h"
#include "smtptap/log.h"
#include "smtptap/json.h"
#include "smtptap/reader.h"
#include "smtptap/reader_json.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

#define CLI_EXPORT_PAGE 200 /* sessions a request */

enum { FMT_NONE, FMT_EML, FMT_MBOX, FMT_JSON, FMT_JSONL };

/* One page of a batch: owned copies of its sessions. */
struct cli_export_page {
	struct reader_session v[CLI_EXPORT_PAGE];
	size_t n;
	bool nomem;
};

static void cli_export_usage(FILE *f);
static int cli_export_dir(const char *opath, const char *why);
static int cli_export_batch(const char *db, const struct reader_filter *f, int fmt, const char *opath);
static int cli_export_one(struct reader *rd, const char *db, const struct export_message *m, bool mbox,
			  struct cli_out *o);

static void
cli_export_usage(FILE *f)
{
	fputs("usage: smtptap export ID (--eml | --mbox | --json | --jsonl) [--db PATH]\n"
	      "                          [-o FILE|DIR] [--message N]\n"
	      "       smtptap export (--mbox | --eml -o DIR | --jsonl) (filters | --all)\n"
	      "                          [--db PATH] [-o FILE|DIR]\n"
	      "\n"
	      "Write a session's messages exactly as the client sent them; or those of\n"
	      "every session the filters match (oldest first).\n"
	      "\n"
	      "  -e, --eml          the message as an RFC 5322 file (dot-unstuffed);\n"
	      "                     several messages need --message N or -o DIR,\n"
	      "                     which gets one DIR/ID-N.eml per message\n"
	      "  -m, --mbox         the messages as an mboxrd mailbox\n"
	      "  -j, --json         the session as JSON (the same as 'show --json')\n"
	      "      --jsonl        JSON Lines: each session's 'show --json' document on\n"
	      "                     one line (session, events, messages with their\n"
	      "                     envelope, transactions), for other tools\n"
	      "  -n, --message N    only message N (1-based) of the session\n"
	      "  -o, --output PATH  write to this file, or into this directory\n"
	      "                     (default: standard output)\n"
	      "  -d, --db PATH      database file (default ./smtptap.db)\n"
	      "  -h, --help         this help\n"
	      "\n"
	      "Many sessions, instead of an ID (replays and mock sessions included: add\n"
	      "--mode relay or --mode sink to leave them out):\n"
	      "  --mbox             every message in one mboxrd mailbox, in session order\n"
	      "  --eml -o DIR       every message as DIR/SESSION-N.eml\n"
	      "  --jsonl            one line per session\n",
	      f);
	cli_filter_usage(f, true, true);
	fputc('\n', f);
	cli_filter_usage_when(f);
}

/* -o DIR for one file per message: made when missing.  Returns
 * CLI_EXIT_OK, or a usage error / failure (reported). */
static int
cli_export_dir(const char *opath, const char *why)
{
	struct stat st;

	if (stat(opath, &st) == 0) {
		if (!S_ISDIR(st.st_mode)) {
			log_warnx("-o %s: not a directory (%s)", opath, why);
			return CLI_EXIT_USAGE;
		}
	} else if (mkdir(opath, 0700) < 0) {
		log_warnx("-o %s: cannot create directory: %s", opath, strerror(errno));
		return CLI_EXIT_FAIL;
	}
	return CLI_EXIT_OK;
}

static int
cli_export_page_cb(const struct reader_session *row, void *arg)
{
	struct cli_export_page *p = arg;

	if (reader_session_dup(&p->v[p->n], row) < 0) {
		p->nomem = true;
		return 1;
	}
	p->n++;
	return 0;
}

/* Every session f matches, a page (one request) at a time. */
static int
cli_export_batch(const char *db, const struct reader_filter *f, int fmt, const char *opath)
{
	struct cli_export_page *p;
	struct reader *rd;
	struct reader_page pg;
	struct reader_page_info info;
	struct export_message *msgs = NULL;
	struct cli_out out, one;
	struct json line;
	char err[512], name[64], path[PATH_MAX];
	size_t i, k, nmsgs = 0;
	int64_t nsessions = 0, nmessages = 0;
	int rc = CLI_EXIT_OK;

	memset(&out, 0, sizeof(out));
	memset(&one, 0, sizeof(one));
	if (fmt == FMT_EML) {
		if (opath == NULL || strcmp(opath, "-") == 0) {
			log_warnx("--eml: many sessions need -o DIR (one file each: DIR/SESSION-N.eml)");
			return CLI_EXIT_USAGE;
		}
		if ((rc = cli_export_dir(opath, "--eml writes one file per message into it")) != CLI_EXIT_OK)
			return rc;
	} else {
		snprintf(name, sizeof(name), fmt == FMT_MBOX ? "smtptap.mbox" : "smtptap.jsonl");
		if (cli_out_target(path, sizeof(path), opath, name) < 0)
			return CLI_EXIT_FAIL;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL) {
		log_warnx("export: out of memory");
		return CLI_EXIT_FAIL;
	}
	if ((rd = cli_read_open(db)) == NULL) {
		free(p);
		return CLI_EXIT_FAIL;
	}
	/* The output (mbox, JSONL) is opened at the first thing to write:
	 * an export that matches nothing leaves -o FILE as it was. */
	memset(&pg, 0, sizeof(pg));
	pg.limit = CLI_EXPORT_PAGE;
	pg.oldest_first = true;
	for (;;) {
		memset(&info, 0, sizeof(info));
		/* One request per page: a consistent page, and the proxy's WAL
		 * is not held back for the whole export. */
		if (reader_begin(rd, err, sizeof(err)) < 0 ||
		    reader_sessions(rd, f, &pg, cli_export_page_cb, p, &info, err, sizeof(err)) < 0) {
			log_warnx("listing sessions in %s: %s", db, err);
			rc = CLI_EXIT_FAIL;
		} else if (p->nomem) {
			log_warnx("export: out of memory");
			rc = CLI_EXIT_FAIL;
		}
		for (i = 0; i < p->n && rc == CLI_EXIT_OK && out.werr == 0; i++) {
			const struct reader_session *s = &p->v[i];

			nsessions++;
			if (fmt == FMT_JSONL) {
				if (out.f == NULL && cli_out_open(&out, path, db) < 0) {
					rc = CLI_EXIT_FAIL;
					break;
				}
				json_init(&line, out.f, 0);
				if (reader_json_document(rd, s, &line, err, sizeof(err)) != READER_OK) {
					log_warnx("reading session %" PRId64 " from %s: %s", s->id, db, err);
					rc = CLI_EXIT_FAIL;
				} else if (json_finish(&line) < 0 && out.werr == 0) {
					out.werr = line.err != 0 ? line.err : EIO;
				}
				continue;
			}
			if (export_message_list(rd, s->id, &msgs, &nmsgs, err, sizeof(err)) < 0) {
				log_warnx("reading the messages of session %" PRId64 " from %s: %s", s->id, db, err);
				rc = CLI_EXIT_FAIL;
				break;
			}
			for (k = 0; k < nmsgs && rc == CLI_EXIT_OK && out.werr == 0; k++) {
				nmessages++;
				if (fmt == FMT_MBOX) {
					if (out.f == NULL && cli_out_open(&out, path, db) < 0)
						rc = CLI_EXIT_FAIL;
					else
						rc = cli_export_one(rd, db, &msgs[k], true, &out);
					continue;
				}
				snprintf(name, sizeof(name), "%" PRId64 "-%d.eml", s->id, msgs[k].idx);
				if (cli_out_target(path, sizeof(path), opath, name) < 0 ||
				    cli_out_open(&one, path, db) < 0) {
					rc = CLI_EXIT_FAIL;
					break;
				}
				rc = cli_export_one(rd, db, &msgs[k], false, &one);
				if (cli_out_close(&one) < 0 && rc == CLI_EXIT_OK)
					rc = CLI_EXIT_FAIL;
			}
			export_message_list_free(msgs, nmsgs);
			msgs = NULL;
			nmsgs = 0;
		}
		reader_end(rd);
		if (p->n > 0)
			pg.after_id = p->v[p->n - 1].id;
		for (i = 0; i < p->n; i++)
			reader_session_free(&p->v[i]);
		p->n = 0;
		if (rc != CLI_EXIT_OK || out.werr != 0 || !info.more || info.n == 0)
			break;
	}
	reader_close(rd);
	free(p);
	if (rc == CLI_EXIT_OK && out.werr == 0 && nsessions == 0) {
		log_warnx("export: no session in %s matches (see 'smtptap sessions' with the same filters)", db);
		rc = CLI_EXIT_NOTFOUND;
	} else if (rc == CLI_EXIT_OK && out.werr == 0 && fmt != FMT_JSONL && nmessages == 0) {
		log_warnx("export: the %" PRId64 " session%s that match%s carry no message (no DATA or BDAT was "
			  "accepted)",
			  nsessions, nsessions == 1 ? "" : "s", nsessions == 1 ? "es" : "");
		rc = CLI_EXIT_NOTFOUND;
	}
	if (rc == CLI_EXIT_FAIL)
		cli_out_discard(&out); /* cut short: not a file to trust */
	else if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}

/* Write one message to o (open).  Returns CLI_EXIT_OK (write errors are
 * left in o->werr) or CLI_EXIT_FAIL after reporting a database error. */
static int
cli_export_one(struct reader *rd, const char *db, const struct export_message *m, bool mbox,
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
	enum { OPT_JSONL = CLI_FILTER_OPT_OWN };
	static const struct option opts[] = {
		{ "eml", no_argument, NULL, 'e' },
		{ "jsonl", no_argument, NULL, OPT_JSONL },
		{ "mbox", no_argument, NULL, 'm' },
		{ "json", no_argument, NULL, 'j' },
		{ "db", required_argument, NULL, 'd' },
		{ "output", required_argument, NULL, 'o' },
		{ "message", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		CLI_FILTER_OPTIONS,
		CLI_FILTER_OPTION_TO,
		CLI_FILTER_OPTION_ALL,
		{ NULL, 0, NULL, 0 },
	};
	static const char *fmt_flag[] = { "", "--eml", "--mbox", "--json", "--jsonl" };
	struct cli_filter cf;
	const char *db = CLI_DEFAULT_DB, *opath = NULL;
	struct reader *rd = NULL;
	struct export_message *msgs = NULL;
	size_t nmsgs = 0, i, first, last;
	struct reader_session s;
	struct cli_out out;
	char err[512], name[64], path[PATH_MAX];
	int fmt = FMT_NONE, nfmt = 0, c, rc;
	long msgno = 0;
	int64_t id;

	cli_filter_init(&cf, util_now_us());
	optind = 1;
	while ((c = getopt_long(argc, argv, "emjd:o:n:h", opts, NULL)) != -1) {
		switch (c) {
		case 'e':
		case 'm':
		case 'j':
		case OPT_JSONL:
			fmt = c == 'e' ? FMT_EML : c == 'm' ? FMT_MBOX : c == 'j' ? FMT_JSON : FMT_JSONL;
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
			if ((rc = cli_filter_option(&cf, c, optarg, err, sizeof(err))) < 0) {
				log_warnx("%s", err);
				return CLI_EXIT_USAGE;
			}
			if (rc > 0)
				break;
			fputs("Try 'smtptap export --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (nfmt != 1) {
		log_warnx("export: choose exactly one of --eml, --mbox, --json or --jsonl");
		return CLI_EXIT_USAGE;
	}
	if (optind >= argc) {
		/* many sessions: a filter or --all */
		if (cf.nflags == 0 && !cf.all) {
			log_warnx("export: give a session ID, filters (--since, --from, --id, ...) or --all "
				  "(try 'smtptap export --help')");
			return CLI_EXIT_USAGE;
		}
		if (fmt == FMT_JSON) {
			log_warnx("--json writes one session's document: for many sessions use --jsonl");
			return CLI_EXIT_USAGE;
		}
		if (msgno != 0) {
			log_warnx("--message picks a message of one session ID, not of many sessions");
			return CLI_EXIT_USAGE;
		}
		if (cli_filter_finish(&cf, err, sizeof(err)) < 0) {
			log_warnx("%s", err);
			return CLI_EXIT_USAGE;
		}
		signal(SIGPIPE, SIG_IGN);
		return cli_export_batch(db, &cf.f, fmt, opath);
	}
	if (cf.nflags > 0 || cf.all) {
		log_warnx("export: give a session ID or filters (--all, --since, --id, ...), not both");
		return CLI_EXIT_USAGE;
	}
	if (cli_read_parse_id("export", argc, argv, &id) < 0)
		return CLI_EXIT_USAGE;
	if (msgno != 0 && (fmt == FMT_JSON || fmt == FMT_JSONL)) {
		log_warnx("--message applies to --eml and --mbox; %s describes the whole session", fmt_flag[fmt]);
		return CLI_EXIT_USAGE;
	}
	/* A closed pipe must give a clear error and status 1, not a silent
	 * death by SIGPIPE halfway through a message. */
	signal(SIGPIPE, SIG_IGN);

	if ((rd = cli_read_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	/* One request: the session, its message list and their content are
	 * one snapshot, even while a proxy records into the file. */
	if (reader_begin(rd, err, sizeof(err)) < 0) {
		log_warnx("reading %s: %s", db, err);
		reader_close(rd);
		return CLI_EXIT_FAIL;
	}
	if ((rc = cli_read_session_load(rd, db, id, &s)) != CLI_EXIT_OK) {
		reader_close(rd);
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
	if (fmt == FMT_JSONL) {
		struct json line;

		snprintf(name, sizeof(name), "%" PRId64 ".jsonl", id);
		if (cli_out_target(path, sizeof(path), opath, name) < 0 || cli_out_open(&out, path, db) < 0) {
			rc = CLI_EXIT_FAIL;
			goto done;
		}
		json_init(&line, out.f, 0);
		if (reader_json_document(rd, &s, &line, err, sizeof(err)) != READER_OK) {
			log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
			rc = CLI_EXIT_FAIL;
		} else if (json_finish(&line) < 0 && out.werr == 0) {
			out.werr = line.err != 0 ? line.err : EIO;
		}
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
	snprintf(path, sizeof(path), "session %" PRId64 " has %zu messages, written one file each; or pick one "
		 "with --message N", id, nmsgs);
	if ((rc = cli_export_dir(opath, path)) != CLI_EXIT_OK)
		goto done;
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
	reader_session_free(&s);
	reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}
