/*
 * cli_replay.c - `smtptap replay ID --to HOST:PORT`: re-send a recorded
 * session's client side to a server (replay.c), and with --diff report,
 * command by command, where the replies differ from the recorded ones.
 *
 * Exit status: 0 replayed (with --diff: every reply as recorded); with
 * --diff 1 when a reply differs and 2 on an error (the contract CI
 * pipelines rely on), without it 1 on an error; 2 for usage errors and 3
 * when there is no such session, as everywhere.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smtptap/cli.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/replay.h"
#include "smtptap/util.h"

#define CLI_REPLAY_LABEL 44 /* the COMMAND column */

struct cli_replay {
	const struct replay_opts *o;
	bool diff, as_json, color;
	FILE *f;
	struct json j;
	unsigned done, equal, differing, failed, notfound;
};

static void cli_replay_usage(FILE *f);
static int cli_replay_onoff(const char *flag, const char *v, bool *out);
static int cli_replay_seconds(const char *flag, const char *v, int *out);
static void cli_replay_result(const struct replay_result *r, void *arg);
static void cli_replay_text(struct cli_replay *cr, const struct replay_result *r);
static void cli_replay_json(struct cli_replay *cr, const struct replay_result *r);

static void
cli_replay_usage(FILE *f)
{
	fputs("usage: smtptap replay ID --to HOST:PORT [--db PATH] [--diff [--strict]] [--json]\n"
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
	      "  -h, --help               this help\n",
	      f);
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
		OPT_TLS = 256,
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
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static char user[1024];
	struct replay_opts o;
	struct cli_replay cr;
	struct cli_out out;
	char host[256], port[8], err[256];
	int64_t id;
	bool strict = false;
	int c, rc;

	memset(&o, 0, sizeof(o));
	memset(&cr, 0, sizeof(cr));
	o.db = CLI_DEFAULT_DB;
	o.tls_cfg.upstream_verify = true;
	o.redact_auth = true;
	o.reply_timeout = 120;
	o.connect_timeout = 30;
	o.concurrency = 1;
	optind = 1;
	while ((c = getopt_long(argc, argv, "t:d:jvh", opts, NULL)) != -1) {
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
		case 'v':
			o.verbosity++;
			break;
		case 'h':
			cli_replay_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap replay --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (cli_read_parse_id("replay", argc, argv, &id) < 0)
		return CLI_EXIT_USAGE;
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
	log_init(o.verbosity);

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
	rc = replay_run(&o, &id, 1, cr.diff, cli_replay_result, &cr) < 0 ? -1 : 0;
	if (cr.as_json) {
		json_array_end(&cr.j);
		json_key(&cr.j, "summary");
		json_object_begin(&cr.j);
		json_kv_int(&cr.j, "sessions", cr.done);
		json_kv_int(&cr.j, "equal", cr.equal);
		json_kv_int(&cr.j, "differing", cr.differing);
		json_kv_int(&cr.j, "failed", cr.failed);
		json_object_end(&cr.j);
		json_object_end(&cr.j);
		if (json_finish(&cr.j) < 0 && cr.j.err != 0)
			out.werr = cr.j.err;
	}
	if (cli_out_close(&out) < 0 && rc == 0)
		rc = -1;
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
	if (r->error) {
		cr->failed++;
		cr->notfound += r->notfound;
		/* One line on stderr, whatever the report's form. */
		log_warnx("replay of session %" PRId64 ": %s", r->id, r->errmsg);
	} else if (r->ndiff > 0) {
		cr->differing++;
	} else {
		cr->equal++;
	}
	if (cr->as_json)
		cli_replay_json(cr, r);
	else if (r->rec != NULL && (r->replay_id != 0 || !r->error))
		cli_replay_text(cr, r);
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
	size_t i;

	json_object_begin(j);
	json_kv_int(j, "session", r->id);
	if (r->replay_id != 0)
		json_kv_int(j, "replay_session", r->replay_id);
	else
		json_kv_null(j, "replay_session");
	json_kv_string(j, "to", cr->o->to);
	json_kv_string(j, "outcome", r->outcome);
	json_kv_string(j, "error", r->error ? r->errmsg : NULL);
	json_kv_bool(j, "equal", !r->error && r->ndiff == 0);
	json_kv_int(j, "differences", (int64_t)r->ndiff);
	json_kv_int(j, "unsolicited", r->unsolicited);
	if (rec == NULL) {
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
