/*
 * cli_prune.c - `smtptap prune --older-than AGE`: delete whole sessions
 * that ended longer ago than AGE (store_prune: never a live one, never
 * half of one), then give the space back to the file system.  Safe while
 * a proxy records into the same file.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/cli.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

static void cli_prune_usage(FILE *f);
static void cli_prune_text(FILE *f, const char *age, const char *before, bool dry,
			   const struct store_prune_result *r);
static void cli_prune_json(struct json *j, const char *db, const char *age, const char *before, bool dry,
			   const struct store_prune_result *r);

static void
cli_prune_usage(FILE *f)
{
	fputs("usage: smtptap prune --older-than AGE [--db PATH] [--dry-run] [--vacuum] [--json]\n"
	      "\n"
	      "Delete recorded sessions that ended longer than AGE ago, each whole\n"
	      "(its events, transactions, recipients and messages with it; a session\n"
	      "still open is never touched), and the message content files no session\n"
	      "refers to any more.  Space freed inside the database file is reused by\n"
	      "new recordings (--vacuum shrinks the file).  Safe while a proxy records\n"
	      "into the same file.\n"
	      "\n"
	      "  -a, --older-than AGE  e.g. 30m, 12h, 7d, 2w (units s, m, h, d, w;\n"
	      "                        combined as in 1d12h)\n"
	      "  -d, --db PATH         database file (default ./smtptap.db)\n"
	      "  -n, --dry-run         say what would be deleted, change nothing\n"
	      "      --vacuum          afterwards rewrite the whole file (VACUUM) so that it\n"
	      "                        shrinks by the space freed; needs no proxy recording\n"
	      "                        into it\n"
	      "  -j, --json            the result as a JSON object\n"
	      "  -h, --help            this help\n",
	      f);
}

static void
cli_prune_text(FILE *f, const char *age, const char *before, bool dry, const struct store_prune_result *r)
{
	char bytes[32], a[32], b[32];

	if (r->sessions == 0) {
		fprintf(f, "no session ended more than %s ago (before %s)%s\n", age, before,
			dry ? "; nothing would be deleted" : "");
	} else {
		util_fmt_bytes(bytes, sizeof(bytes), r->bytes);
		fprintf(f,
			"%s %" PRId64 " session%s (ids %" PRId64 "-%" PRId64 ") that ended before %s: %" PRId64
			" transaction%s, %" PRId64 " message%s, %" PRId64 " recipient%s, %" PRId64
			" event%s, %s recorded\n",
			dry ? "would delete" : "deleted", r->sessions, r->sessions == 1 ? "" : "s", r->first_id,
			r->last_id, before, r->transactions, r->transactions == 1 ? "" : "s", r->messages,
			r->messages == 1 ? "" : "s", r->recipients, r->recipients == 1 ? "" : "s", r->events,
			r->events == 1 ? "" : "s", bytes);
	}
	if (dry)
		return;
	util_fmt_bytes(a, sizeof(a), r->file_before);
	util_fmt_bytes(b, sizeof(b), r->file_after);
	fprintf(f, "database file: %s -> %s", a, b);
	util_fmt_bytes(a, sizeof(a), r->data_before);
	util_fmt_bytes(b, sizeof(b), r->data_after);
	fprintf(f, " (data %s -> %s)\n", a, b);
	if (r->segments > 0) {
		util_fmt_bytes(a, sizeof(a), r->segment_bytes);
		fprintf(f, "message content: %" PRId64 " segment file%s deleted (%s)\n", r->segments,
			r->segments == 1 ? "" : "s", a);
	}
	if (!r->incremental && r->sessions > 0)
		fputs("note: the space freed inside the database file is reused by new recordings;\n"
		      "--vacuum (with no proxy recording into it) shrinks the file instead\n",
		      f);
}

static void
cli_prune_json(struct json *j, const char *db, const char *age, const char *before, bool dry,
	       const struct store_prune_result *r)
{
	json_object_begin(j);
	json_kv_string(j, "db", db);
	json_kv_string(j, "older_than", age);
	json_kv_string(j, "before", before);
	json_kv_bool(j, "dry_run", dry);
	json_kv_int(j, "sessions", r->sessions);
	if (r->sessions > 0) {
		json_kv_int(j, "first_id", r->first_id);
		json_kv_int(j, "last_id", r->last_id);
	} else {
		json_kv_null(j, "first_id");
		json_kv_null(j, "last_id");
	}
	json_kv_int(j, "transactions", r->transactions);
	json_kv_int(j, "messages", r->messages);
	json_kv_int(j, "recipients", r->recipients);
	json_kv_int(j, "events", r->events);
	json_kv_int(j, "bytes", r->bytes);
	json_kv_int(j, "file_bytes_before", r->file_before);
	json_kv_int(j, "file_bytes_after", r->file_after);
	json_kv_int(j, "data_bytes_before", r->data_before);
	json_kv_int(j, "data_bytes_after", r->data_after);
	json_kv_int(j, "content_segments_deleted", r->segments);
	json_kv_int(j, "content_segment_bytes_deleted", r->segment_bytes);
	json_kv_string(j, "auto_vacuum", r->incremental ? "incremental" : "none");
	json_object_end(j);
}

int
cli_prune(int argc, char **argv)
{
	enum { OPT_VACUUM = 256 };
	static const struct option opts[] = {
		{ "older-than", required_argument, NULL, 'a' },
		{ "db", required_argument, NULL, 'd' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "vacuum", no_argument, NULL, OPT_VACUUM },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *db = CLI_DEFAULT_DB, *age = NULL;
	struct store_prune_opts o;
	struct store_prune_result r;
	struct cli_out out;
	struct json j;
	bool as_json = false;
	char err[512], before[64];
	int64_t age_us;
	int c, rc = CLI_EXIT_OK;

	memset(&o, 0, sizeof(o));
	optind = 1;
	while ((c = getopt_long(argc, argv, "a:d:njh", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			age = optarg;
			break;
		case 'd':
			db = optarg;
			break;
		case 'n':
			o.dry_run = true;
			break;
		case OPT_VACUUM:
			o.vacuum = true;
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			cli_prune_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap prune --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		log_warnx("prune: unexpected argument '%s' (try 'smtptap prune --help')", argv[optind]);
		return CLI_EXIT_USAGE;
	}
	if (age == NULL) {
		log_warnx("prune: --older-than AGE is required, e.g. --older-than 7d (try 'smtptap prune --help')");
		return CLI_EXIT_USAGE;
	}
	if (util_parse_age(age, &age_us) < 0) {
		log_warnx("--older-than: expected a duration such as 30m, 12h, 7d or 2w (units s, m, h, d, w), got '%s'",
			  age);
		return CLI_EXIT_USAGE;
	}
	if (o.dry_run && o.vacuum) {
		log_warnx("prune: --dry-run changes nothing, so it cannot --vacuum: choose one");
		return CLI_EXIT_USAGE;
	}
	o.before_us = util_now_us() - age_us;
	util_fmt_rfc3339(before, sizeof(before), o.before_us);
	if (store_prune(db, &o, &r, err, sizeof(err)) < 0) {
		log_warnx("--db %s: %s", db, err);
		return CLI_EXIT_FAIL;
	}
	cli_out_open(&out, NULL, NULL);
	if (as_json) {
		json_init(&j, out.f, 2);
		cli_prune_json(&j, db, age, before, o.dry_run, &r);
		if (json_finish(&j) < 0 && j.err != 0)
			out.werr = j.err;
	} else {
		cli_prune_text(out.f, age, before, o.dry_run, &r);
		cli_out_check(&out);
	}
	if (cli_out_close(&out) < 0)
		rc = CLI_EXIT_FAIL;
	return rc;
}
