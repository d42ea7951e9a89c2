/*
 * cli_export.c - `smtptap export ID`: a session's messages exactly as the
 * client sent them (dot-unstuffed), as .eml files or an mboxrd mailbox,
 * or the session as JSON (the same document as `show --json`).
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
#include "smtptap/cli_json.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/export.h"
#include "smtptap/log.h"
#include "smtptap/reader.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

static void cli_export_usage(FILE *f);
static int cli_export_one(struct reader *rd, const char *db, const struct export_message *m, bool mbox,
			  struct cli_out *o);

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
	struct reader *rd = NULL;
	struct export_message *msgs = NULL;
	size_t nmsgs = 0, i, first, last;
	struct reader_session s;
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
	if (cli_read_parse_id("export", argc, argv, &id) < 0)
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
	reader_session_free(&s);
	reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}
