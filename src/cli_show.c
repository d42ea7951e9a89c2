/*
 * cli_show.c - `smtptap show ID`: one session's readable transcript (a
 * header, one line per command, reply or proxy action with its time
 * offset, then a summary of each message), or its exact bytes (--raw), or
 * one JSON document (--json, in cli_json.c).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smtptap/cli.h"
#include "smtptap/cli_json.h"
#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/cli_tls.h"
#include "smtptap/export.h"
#include "smtptap/log.h"
#include "smtptap/reader.h"
#include "smtptap/reader_json.h"
#include "smtptap/store.h"

/* Width of the "+12.345678" column. */
#define CLI_OFFSET_WIDTH 11

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
	const struct reader_replay *replays; /* the sessions replaying this one */
	size_t nreplays;
	/* --raw */
	int side; /* -1: every side */
	size_t nredacted;
};

static void cli_show_usage(FILE *f);
static void cli_show_summary_line(FILE *f, const char *label, const char *value);
static void cli_show_put_indented(FILE *f, const char *s, const char *indent);
static void cli_show_replays(FILE *f, const struct reader_replay *v, size_t n, const char *mode, const char *label);
static void cli_show_header(struct cli_show *sh, const struct reader_session *s);
static const char *cli_show_side_color(enum store_side side);
static const char *cli_show_side_marker(enum store_side side, unsigned flags);
static void cli_show_begin(struct cli_show *sh, bool first, int64_t t_us, enum store_side side, unsigned flags,
			   const char *kind);
static void cli_show_end(struct cli_show *sh);
static void cli_show_lines(struct cli_show *sh, const struct reader_event *ev, const char *kind,
			   const char *p, size_t len, bool wire, bool *first);
static void cli_show_flush_data(struct cli_show *sh);
static int cli_show_event_cb(const struct reader_event *ev, void *arg);
static int cli_show_raw_cb(const struct reader_event *ev, void *arg);
static int cli_show_message_cb(const struct reader_message *m, void *arg);
static int cli_show_transaction_cb(const struct reader_transaction *t, void *arg);
static void cli_show_rcpts(FILE *f, const struct reader_rcpt *r, size_t n);
static void cli_show_reply(FILE *f, int code, const char *reply, const char *indent);

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

/* One summary header of a message, aligned; nothing when it is absent. */
static void
cli_show_summary_line(FILE *f, const char *label, const char *value)
{
	if (value == NULL || value[0] == '\0')
		return;
	fprintf(f, "  %-12s ", label);
	cli_read_put_escaped_str(f, value);
	fputc('\n', f);
}

/* Escaped, but each '\n' starts a new line beginning with `indent`
 * (multi-line replies in the messages section). */
static void
cli_show_put_indented(FILE *f, const char *s, const char *indent)
{
	const char *nl;

	while ((nl = strchr(s, '\n')) != NULL) {
		cli_read_put_escaped(f, s, (size_t)(nl - s - (nl > s && nl[-1] == '\r')));
		fprintf(f, "\n%s", indent);
		s = nl + 1;
	}
	cli_read_put_escaped_str(f, s);
}

/* "replayed as  sessions 12, 15": the sessions of that mode replaying
 * this one. */
static void
cli_show_replays(FILE *f, const struct reader_replay *v, size_t nv, const char *mode, const char *label)
{
	size_t i, n = 0;

	for (i = 0; i < nv; i++)
		n += strcmp(v[i].mode, mode) == 0;
	if (n == 0)
		return;
	fprintf(f, "\n%-12s session%s ", label, n > 1 ? "s" : "");
	for (i = 0; i < nv; i++) {
		if (strcmp(v[i].mode, mode) == 0)
			fprintf(f, "%" PRId64 "%s", v[i].id, --n > 0 ? ", " : "");
	}
}

/* The session's header, one "label value" line each, every recorded text
 * escaped.  A TLS leg's record is stored as JSON for --json; here it is a
 * sentence (cli_tls.c), absent for a plaintext leg. */
static void
cli_show_header(struct cli_show *sh, const struct reader_session *s)
{
	FILE *f = sh->out->f;
	const char *b = sh->color ? CLI_C_BOLD : "", *e = sh->color ? CLI_C_RESET : "";
	char buf[96];

	fprintf(f, "%ssession      %" PRId64 "%s\n", b, s->id, e);
	fputs("client       ", f);
	cli_read_put_escaped_str(f, s->client != NULL ? s->client : "-");
	fputs("\nupstream     ", f);
	if (s->upstream == NULL)
		fputs("(sink)", f);
	else {
		cli_read_put_escaped_str(f, s->upstream);
		if (s->upstream_addr != NULL && strcmp(s->upstream_addr, s->upstream) != 0) {
			fputs(" (", f);
			cli_read_put_escaped_str(f, s->upstream_addr);
			fputc(')', f);
		}
	}
	fputs("\nlistener     ", f);
	cli_read_put_escaped_str(f, s->listener != NULL ? s->listener : "-");
	fputs("\nmode         ", f);
	cli_read_put_escaped_str(f, s->mode != NULL ? s->mode : "-");
	if (s->replay_of > 0)
		fprintf(f, "\n%-12s session %" PRId64, s->mode != NULL && strcmp(s->mode, "mock") == 0 ? "mock of" : "replay of",
			s->replay_of);
	cli_show_replays(f, sh->replays, sh->nreplays, "replay", "replayed as");
	cli_show_replays(f, sh->replays, sh->nreplays, "mock", "mocked as");
	cli_read_fmt_local(buf, sizeof(buf), s->started_us, true);
	fprintf(f, "\nstarted      %s\n", buf);
	if (s->ended_us != 0) {
		cli_read_fmt_duration(buf, sizeof(buf), s->ended_us - s->started_us, true);
		fprintf(f, "duration     %s\noutcome      ", buf);
		cli_read_put_escaped_str(f, s->outcome != NULL ? s->outcome : "-");
		if (s->detail != NULL) {
			fputs(" (", f);
			cli_read_put_escaped_str(f, s->detail);
			fputc(')', f);
		}
		fputc('\n', f);
	} else
		fputs("duration     -\noutcome      live (still open, or the recorder was killed)\n", f);
	if (s->client_tls != NULL) {
		fputs("client tls   ", f);
		cli_tls_put_summary(f, s->client_tls);
		fputc('\n', f);
	}
	if (s->upstream_tls != NULL) {
		fputs("upstream tls ", f);
		cli_tls_put_summary(f, s->upstream_tls);
		fputc('\n', f);
	}
	fputc('\n', f);
}

static const char *
cli_show_side_color(enum store_side side)
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
cli_show_side_marker(enum store_side side, unsigned flags)
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
	const char *col = sh->color ? cli_show_side_color(side) : "";
	char off[40];
	size_t i;

	if (first)
		cli_read_fmt_offset(off, sizeof(off), t_us - sh->started_us);
	else
		off[0] = '\0';
	fprintf(f, "%-*s %s%s ", CLI_OFFSET_WIDTH, off, col, cli_show_side_marker(side, flags));
	if (!first) {
		fprintf(f, "%*s", sh->tagw, "");
		return;
	}
	sh->tagw = 0;
	for (i = 0; i < reader_json_nflags; i++) {
		/* the marker already says where smtptap's bytes went */
		if (!(flags & reader_json_flags[i].flag) || (reader_json_flags[i].flag & (STORE_F_TO_CLIENT | STORE_F_TO_UPSTREAM)))
			continue;
		fprintf(f, "%s[%s]%s ", sh->color ? CLI_C_PROXY : "", reader_json_flags[i].name, col);
		sh->tagw += (int)strlen(reader_json_flags[i].name) + 3;
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
cli_show_lines(struct cli_show *sh, const struct reader_event *ev, const char *kind, const char *p,
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
			cli_read_put_escaped(f, p, n - 1);
		else {
			cli_read_put_escaped(f, p, n);
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
cli_show_event_cb(const struct reader_event *ev, void *arg)
{
	struct cli_show *sh = arg;
	const char *kind = NULL;
	bool first = true;

	if (ev->kind == STORE_KIND_DATA) {
		if (sh->pend && sh->pend_msg == ev->message_row && sh->pend_side == ev->side &&
		    sh->pend_flags == ev->flags) {
			sh->pend_bytes += ev->raw_len;
			return 0;
		}
		cli_show_flush_data(sh);
		sh->pend = true;
		sh->pend_t_us = ev->t_us;
		sh->pend_msg = ev->message_row;
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
cli_show_raw_cb(const struct reader_event *ev, void *arg)
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
		cli_show_put_indented(f, reply, indent);
	if (code == 0 && reply == NULL)
		fputs("(no reply)", f);
}

/* Continuation lines of a reply in the messages section line up here. */
static const char cli_show_indent[] = "                ";

/* "  rcpt to      <address> params: reply", one line each. */
static void
cli_show_rcpts(FILE *f, const struct reader_rcpt *r, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		fputs("  rcpt to      <", f);
		cli_read_put_escaped_str(f, r[i].address);
		fputc('>', f);
		if (r[i].params != NULL) {
			fputc(' ', f);
			cli_read_put_escaped_str(f, r[i].params);
		}
		fputs(": ", f);
		cli_show_reply(f, r[i].reply_code, r[i].reply, cli_show_indent);
		fputc('\n', f);
	}
}

static int
cli_show_message_cb(const struct reader_message *m, void *arg)
{
	static const char *const ind = cli_show_indent;
	struct cli_show *sh = arg;
	FILE *f = sh->out->f;

	fprintf(f, "\n%smessage %d%s\n", sh->color ? CLI_C_BOLD : "", m->idx, sh->color ? CLI_C_RESET : "");
	fputs("  mail from    <", f);
	cli_read_put_escaped_str(f, m->mail_from);
	fputc('>', f);
	if (m->mail_params != NULL) {
		fputc(' ', f);
		cli_read_put_escaped_str(f, m->mail_params);
	}
	/* Recorded since schema 2 only: older sessions print as they did. */
	if (m->mail_code != 0 || m->mail_reply != NULL) {
		fputs(": ", f);
		cli_show_reply(f, m->mail_code, m->mail_reply, ind);
	}
	fputc('\n', f);
	cli_show_rcpts(f, m->rcpts, m->nrcpts);
	fprintf(f, "  size         %" PRId64 " bytes, %s, %s\n", m->size, m->transport != NULL ? m->transport : "data",
		m->complete ? "complete" : "INCOMPLETE (cut short)");
	cli_show_summary_line(f, "subject", m->subject);
	cli_show_summary_line(f, "from", m->from);
	cli_show_summary_line(f, "to", m->to);
	cli_show_summary_line(f, "date", m->date);
	cli_show_summary_line(f, "message-id", m->message_id_hdr);
	fputs("  upstream     ", f);
	cli_show_reply(f, m->reply_code, m->reply, ind);
	fputc('\n', f);
	cli_out_check(sh->out);
	return sh->out->werr != 0 ? 1 : 0;
}

/*
 * A transaction that carried no message (refused, reset or abandoned
 * before DATA): its envelope and every reply, after the messages.  One
 * with a message was shown with it.
 */
static int
cli_show_transaction_cb(const struct reader_transaction *t, void *arg)
{
	struct cli_show *sh = arg;
	FILE *f = sh->out->f;

	if (t->nmessages > 0)
		return 0;
	fprintf(f, "\n%stransaction %d (no message)%s\n", sh->color ? CLI_C_BOLD : "", t->idx,
		sh->color ? CLI_C_RESET : "");
	fputs("  mail from    <", f);
	cli_read_put_escaped_str(f, t->mail_from);
	fputc('>', f);
	if (t->mail_params != NULL) {
		fputc(' ', f);
		cli_read_put_escaped_str(f, t->mail_params);
	}
	fputs(": ", f);
	cli_show_reply(f, t->mail_code, t->mail_reply, cli_show_indent);
	fputc('\n', f);
	cli_show_rcpts(f, t->rcpts, t->nrcpts);
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
	struct reader *rd = NULL;
	struct export_message *msgs = NULL;
	struct reader_replay *replays = NULL;
	size_t nmsgs = 0, nreplays = 0;
	struct reader_session s;
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
	if (cli_read_parse_id("show", argc, argv, &id) < 0)
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

	if ((rd = cli_read_open(db)) == NULL)
		return CLI_EXIT_FAIL;
	/* One request: the header, the transcript and the messages are one
	 * snapshot, even while a proxy records into the file. */
	if (reader_begin(rd, err, sizeof(err)) < 0) {
		log_warnx("reading %s: %s", db, err);
		reader_close(rd);
		return CLI_EXIT_FAIL;
	}
	if ((rc = cli_read_session_load(rd, db, id, &s)) != CLI_EXIT_OK) {
		reader_close(rd);
		return rc;
	}
	cli_out_open(&out, NULL, NULL);
	sh.out = &out;
	sh.started_us = s.started_us;
	if (as_json)
		rc = cli_json_doc(rd, db, &s, &out);
	else if (raw) {
		r = reader_events(rd, id, READER_BYTES_ALL, cli_show_raw_cb, &sh, err, sizeof(err));
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
		if (reader_replays(rd, id, &replays, &nreplays, err, sizeof(err)) < 0) {
			log_warnx("reading the replays of session %" PRId64 " from %s: %s", id, db, err);
			rc = CLI_EXIT_FAIL;
			goto done;
		}
		sh.replays = replays;
		sh.nreplays = nreplays;
		sh.color = log_color_enabled(STDOUT_FILENO);
		cli_show_header(&sh, &s);
		r = reader_events(rd, id, READER_BYTES_LINES, cli_show_event_cb, &sh, err, sizeof(err));
		if (r == 0) {
			cli_show_flush_data(&sh);
			r = reader_messages(rd, id, cli_show_message_cb, &sh, err, sizeof(err));
		}
		if (r == 0)
			r = reader_transactions(rd, id, cli_show_transaction_cb, &sh, err, sizeof(err));
		if (r < 0) {
			log_warnx("reading session %" PRId64 " from %s: %s", id, db, err);
			rc = CLI_EXIT_FAIL;
		}
	}
done:
	free(replays);
	export_message_list_free(msgs, nmsgs);
	reader_session_free(&s);
	reader_close(rd);
	if (cli_out_close(&out) < 0 && rc == CLI_EXIT_OK)
		rc = CLI_EXIT_FAIL;
	return rc;
}
