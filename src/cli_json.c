/*
 * cli_json.c - see cli_json.h.
 *
 * The session's TLS records are stored as JSON objects (tls_info_json)
 * and embedded as such; anything in that column that is not valid JSON (a
 * hand-edited database) becomes a string, so the document stays valid.
 */
#include "smtptap/cli_json.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "smtptap/cli.h"
#include "smtptap/log.h"

/* State of the document's walks over events and messages. */
struct cli_json_walk {
	struct json *j;
	struct cli_out *out;
	int64_t started_us;
};

static const char *cli_json_nonempty(const char *s);
static void cli_json_tls(struct json *j, const char *key, const char *text);
static int cli_json_event_cb(const struct store_event_row *ev, void *arg);
static int cli_json_message_cb(const struct store_message_row *m, void *arg);
static int cli_json_transaction_cb(const struct store_transaction_row *t, void *arg);
static void cli_json_opt_string(struct json *j, const char *key, const char *v);
static void cli_json_opt_int(struct json *j, const char *key, int64_t v);
static void cli_json_rcpts(struct json *j, const struct store_rcpt_row *r, size_t n);

/* Header summaries are recorded as "" when the header is absent: in JSON
 * that is null, like every other unknown. */
static const char *
cli_json_nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

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

/* A string of the session's summary; an unknown one is null. */
static void
cli_json_opt_string(struct json *j, const char *key, const char *v)
{
	if (v != NULL)
		json_kv_string(j, key, v);
	else
		json_kv_null(j, key);
}

void
cli_json_session(struct json *j, const struct cli_session *s)
{
	char ts[64];

	json_object_begin(j);
	json_kv_int(j, "id", s->id);
	cli_read_fmt_rfc3339(ts, sizeof(ts), s->started_us);
	json_kv_string(j, "started_at", ts);
	if (s->ended_us != 0) {
		cli_read_fmt_rfc3339(ts, sizeof(ts), s->ended_us);
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
	json_kv_int(j, "nmessages", s->nmessages);
	/* the summary the writer keeps (sql/002_schema2.sql) */
	cli_json_opt_string(j, "client_ip", s->client_ip);
	cli_json_opt_string(j, "helo", s->helo);
	cli_json_opt_string(j, "auth_mech", s->auth_mech);
	cli_json_opt_string(j, "auth_user", s->auth_user);
	cli_json_opt_string(j, "client_tls_version", s->client_tls_version);
	cli_json_opt_string(j, "upstream_tls_version", s->upstream_tls_version);
	json_kv_int(j, "ntransactions", s->ntransactions);
	json_kv_int(j, "nevents", s->nevents);
	json_kv_int(j, "client_bytes", s->client_bytes);
	json_kv_int(j, "upstream_bytes", s->upstream_bytes);
	json_kv_int(j, "proxy_bytes", s->proxy_bytes);
	/* replay and mock: what it replays; the original: what replays it */
	if (s->replay_of > 0)
		json_kv_int(j, "replay_of", s->replay_of);
	else
		json_kv_null(j, "replay_of");
	if (s->replays_loaded) {
		size_t i;

		json_key(j, "replays");
		json_array_begin(j);
		for (i = 0; i < s->nreplays; i++) {
			json_object_begin(j);
			json_kv_int(j, "id", s->replays[i].id);
			json_kv_string(j, "mode", s->replays[i].mode);
			json_object_end(j);
		}
		json_array_end(j);
	}
	json_object_end(j);
}

static int
cli_json_event_cb(const struct store_event_row *ev, void *arg)
{
	struct cli_json_walk *cj = arg;
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
	for (i = 0; i < cli_read_nflags; i++)
		if (ev->flags & cli_read_flags[i].flag)
			json_string(j, cli_read_flags[i].name);
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
	/* the messages row id, a name kept for the JSON contract */
	cli_json_opt_int(j, "message_id", ev->message_row);
	cli_json_opt_int(j, "answers_seq", ev->answers_seq);
	cli_json_opt_int(j, "cause_seq", ev->cause_seq);
	json_object_end(j);
	if (j->failed) {
		cj->out->werr = j->err != 0 ? j->err : EIO;
		return 1;
	}
	return 0;
}

/* 0 means "none" in the store's rows: null here. */
static void
cli_json_opt_int(struct json *j, const char *key, int64_t v)
{
	if (v != 0)
		json_kv_int(j, key, v);
	else
		json_kv_null(j, key);
}

/* "rcpt_to": [{address, params, reply_code, reply, seq}, ...] */
static void
cli_json_rcpts(struct json *j, const struct store_rcpt_row *r, size_t n)
{
	size_t i;

	json_key(j, "rcpt_to");
	json_array_begin(j);
	for (i = 0; i < n; i++) {
		json_object_begin(j);
		json_kv_string(j, "address", r[i].address);
		json_kv_string(j, "params", r[i].params);
		cli_json_opt_int(j, "reply_code", r[i].reply_code);
		json_kv_string(j, "reply", r[i].reply);
		cli_json_opt_int(j, "seq", r[i].rcpt_seq);
		json_object_end(j);
	}
	json_array_end(j);
}

static int
cli_json_message_cb(const struct store_message_row *m, void *arg)
{
	struct cli_json_walk *cj = arg;
	struct json *j = cj->j;

	json_object_begin(j);
	json_kv_int(j, "id", m->id);
	json_kv_int(j, "idx", m->idx);
	json_kv_string(j, "mail_from", m->mail_from);
	json_kv_string(j, "mail_params", m->mail_params);
	cli_json_rcpts(j, m->rcpts, m->nrcpts);
	json_kv_int(j, "size", m->size);
	json_kv_string(j, "subject", cli_json_nonempty(m->subject));
	json_kv_string(j, "from", cli_json_nonempty(m->from));
	json_kv_string(j, "to", cli_json_nonempty(m->to));
	json_kv_string(j, "message_id", cli_json_nonempty(m->message_id_hdr));
	json_kv_string(j, "date", cli_json_nonempty(m->date));
	json_kv_string(j, "upstream_reply", m->reply);
	if (m->reply_code != 0)
		json_kv_int(j, "upstream_code", m->reply_code);
	else
		json_kv_null(j, "upstream_code");
	json_kv_bool(j, "complete", m->complete);
	json_kv_string(j, "transport", m->transport);
	cli_json_opt_int(j, "transaction", m->transaction_idx);
	json_object_end(j);
	if (j->failed) {
		cj->out->werr = j->err != 0 ? j->err : EIO;
		return 1;
	}
	return 0;
}

/* A transaction: its MAIL command and reply, its recipients with their
 * replies, and how many messages it carried (0: it never reached DATA). */
static int
cli_json_transaction_cb(const struct store_transaction_row *t, void *arg)
{
	struct cli_json_walk *cj = arg;
	struct json *j = cj->j;

	json_object_begin(j);
	json_kv_int(j, "idx", t->idx);
	json_kv_int(j, "t_us", t->started_us - cj->started_us);
	json_kv_string(j, "mail_from", t->mail_from);
	json_kv_string(j, "mail_params", t->mail_params);
	cli_json_opt_int(j, "mail_code", t->mail_code);
	json_kv_string(j, "mail_reply", t->mail_reply);
	cli_json_opt_int(j, "mail_seq", t->mail_seq);
	cli_json_rcpts(j, t->rcpts, t->nrcpts);
	json_kv_int(j, "nmessages", t->nmessages);
	json_object_end(j);
	if (j->failed) {
		cj->out->werr = j->err != 0 ? j->err : EIO;
		return 1;
	}
	return 0;
}

/*
 * {"session": {...}, "events": [...], "messages": [...], "transactions":
 * [...]} for session s.
 * Returns CLI_EXIT_OK (write errors are left in out->werr for
 * cli_out_close) or CLI_EXIT_FAIL after reporting a database error.
 */
int
cli_json_doc(struct store_reader *rd, const char *db, const struct cli_session *s, struct cli_out *out)
{
	struct json j;
	struct cli_json_walk cj;
	char err[512];
	int r;

	json_init(&j, out->f, 2);
	cj.j = &j;
	cj.out = out;
	cj.started_us = s->started_us;
	json_object_begin(&j);
	json_key(&j, "session");
	cli_json_session(&j, s);
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
	json_key(&j, "transactions");
	json_array_begin(&j);
	r = store_reader_transactions(rd, s->id, cli_json_transaction_cb, &cj, err, sizeof(err));
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
