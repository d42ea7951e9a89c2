/*
 * reader_json.c - see reader_json.h.
 *
 * A session's TLS records are stored as JSON objects (tls_info_json) and
 * embedded as such; anything in that column that is not valid JSON (a
 * hand-edited database) becomes a string, so the document stays valid.
 */
#include "smtptap/reader_json.h"

#include <stdlib.h>
#include <string.h>

#include "smtptap/util.h"

const struct reader_json_flag reader_json_flags[] = {
	{ STORE_F_INJECTED, "injected" },     { STORE_F_ALTERED, "altered" },
	{ STORE_F_DROPPED, "dropped" },	      { STORE_F_REDACTED, "redacted" },
	{ STORE_F_TO_CLIENT, "to-client" },   { STORE_F_TO_UPSTREAM, "to-upstream" },
	{ STORE_F_INCOMPLETE, "incomplete" }, { STORE_F_RULE, "rule" },
	{ STORE_F_PIPELINED, "pipelined" },
};
const size_t reader_json_nflags = sizeof(reader_json_flags) / sizeof(reader_json_flags[0]);

/* State of the document's walks. */
struct reader_json_walk {
	struct json *j;
	int64_t started_us;
};

static const char *reader_json_nonempty(const char *s);
static void reader_json_tls(struct json *j, const char *key, const char *text);
static void reader_json_opt_string(struct json *j, const char *key, const char *v);
static void reader_json_opt_int(struct json *j, const char *key, int64_t v);
static void reader_json_rcpts(struct json *j, const struct reader_rcpt *r, size_t n);
static int reader_json_event_cb(const struct reader_event *ev, void *arg);
static int reader_json_message_cb(const struct reader_message *m, void *arg);
static int reader_json_transaction_cb(const struct reader_transaction *t, void *arg);

/* Header summaries are recorded as "" when the header is absent: in JSON
 * that is null, like every other unknown. */
static const char *
reader_json_nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

static void
reader_json_tls(struct json *j, const char *key, const char *text)
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
reader_json_opt_string(struct json *j, const char *key, const char *v)
{
	if (v != NULL)
		json_kv_string(j, key, v);
	else
		json_kv_null(j, key);
}

/* 0 means "none" in the reader's rows: null here. */
static void
reader_json_opt_int(struct json *j, const char *key, int64_t v)
{
	if (v != 0)
		json_kv_int(j, key, v);
	else
		json_kv_null(j, key);
}

void
reader_json_session(struct json *j, const struct reader_session *s)
{
	reader_json_session_replays(j, s, NULL, 0, false);
}

void
reader_json_session_replays(struct json *j, const struct reader_session *s, const struct reader_replay *v, size_t n,
			    bool with_replays)
{
	char ts[64];
	size_t i;

	json_object_begin(j);
	json_kv_int(j, "id", s->id);
	util_fmt_rfc3339(ts, sizeof(ts), s->started_us);
	json_kv_string(j, "started_at", ts);
	if (s->ended_us != 0) {
		util_fmt_rfc3339(ts, sizeof(ts), s->ended_us);
		json_kv_string(j, "ended_at", ts);
	} else
		json_kv_null(j, "ended_at");
	json_kv_string(j, "client", s->client);
	json_kv_string(j, "upstream", s->upstream);
	json_kv_string(j, "upstream_addr", s->upstream_addr);
	json_kv_string(j, "listener", s->listener);
	json_kv_string(j, "mode", s->mode);
	reader_json_tls(j, "client_tls", s->client_tls);
	reader_json_tls(j, "upstream_tls", s->upstream_tls);
	json_kv_string(j, "outcome", s->outcome);
	json_kv_string(j, "detail", s->detail);
	json_kv_int(j, "nmessages", s->nmessages);
	/* the summary the writer keeps (sql/002_schema2.sql) */
	reader_json_opt_string(j, "client_ip", s->client_ip);
	reader_json_opt_string(j, "helo", s->helo);
	reader_json_opt_string(j, "auth_mech", s->auth_mech);
	reader_json_opt_string(j, "auth_user", s->auth_user);
	reader_json_opt_string(j, "client_tls_version", s->client_tls_version);
	reader_json_opt_string(j, "upstream_tls_version", s->upstream_tls_version);
	json_kv_int(j, "ntransactions", s->ntransactions);
	json_kv_int(j, "nevents", s->nevents);
	json_kv_int(j, "client_bytes", s->client_bytes);
	json_kv_int(j, "upstream_bytes", s->upstream_bytes);
	json_kv_int(j, "proxy_bytes", s->proxy_bytes);
	/* replay and mock: what it replays; the original: what replays it */
	reader_json_opt_int(j, "replay_of", s->replay_of);
	if (with_replays) {
		json_key(j, "replays");
		json_array_begin(j);
		for (i = 0; i < n; i++) {
			json_object_begin(j);
			json_kv_int(j, "id", v[i].id);
			json_kv_string(j, "mode", v[i].mode);
			json_object_end(j);
		}
		json_array_end(j);
	}
	json_object_end(j);
}

void
reader_json_event(struct json *j, const struct reader_event *ev, int64_t session_started_us)
{
	const char *p;
	size_t i, len;

	json_object_begin(j);
	json_kv_int(j, "seq", ev->seq);
	json_kv_int(j, "t_us", ev->t_us - session_started_us);
	json_kv_string(j, "side", store_side_name(ev->side));
	json_kv_string(j, "kind", store_kind_name(ev->kind));
	json_key(j, "flags");
	json_array_begin(j);
	for (i = 0; i < reader_json_nflags; i++)
		if (ev->flags & reader_json_flags[i].flag)
			json_string(j, reader_json_flags[i].name);
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
	reader_json_opt_int(j, "message_id", ev->message_row);
	reader_json_opt_int(j, "answers_seq", ev->answers_seq);
	reader_json_opt_int(j, "cause_seq", ev->cause_seq);
	json_object_end(j);
}

/* "rcpt_to": [{address, params, reply_code, reply, seq}, ...] */
static void
reader_json_rcpts(struct json *j, const struct reader_rcpt *r, size_t n)
{
	size_t i;

	json_key(j, "rcpt_to");
	json_array_begin(j);
	for (i = 0; i < n; i++) {
		json_object_begin(j);
		json_kv_string(j, "address", r[i].address);
		json_kv_string(j, "params", r[i].params);
		reader_json_opt_int(j, "reply_code", r[i].reply_code);
		json_kv_string(j, "reply", r[i].reply);
		reader_json_opt_int(j, "seq", r[i].rcpt_seq);
		json_object_end(j);
	}
	json_array_end(j);
}

void
reader_json_message(struct json *j, const struct reader_message *m)
{
	json_object_begin(j);
	json_kv_int(j, "id", m->id);
	json_kv_int(j, "idx", m->idx);
	json_kv_string(j, "mail_from", m->mail_from);
	json_kv_string(j, "mail_params", m->mail_params);
	reader_json_rcpts(j, m->rcpts, m->nrcpts);
	json_kv_int(j, "size", m->size);
	json_kv_string(j, "subject", reader_json_nonempty(m->subject));
	json_kv_string(j, "from", reader_json_nonempty(m->from));
	json_kv_string(j, "to", reader_json_nonempty(m->to));
	json_kv_string(j, "message_id", reader_json_nonempty(m->message_id_hdr));
	json_kv_string(j, "date", reader_json_nonempty(m->date));
	json_kv_string(j, "upstream_reply", m->reply);
	if (m->reply_code != 0)
		json_kv_int(j, "upstream_code", m->reply_code);
	else
		json_kv_null(j, "upstream_code");
	json_kv_bool(j, "complete", m->complete);
	json_kv_string(j, "transport", m->transport);
	reader_json_opt_int(j, "transaction", m->transaction_idx);
	json_object_end(j);
}

/* A transaction: its MAIL command and reply, its recipients with their
 * replies, and how many messages it carried (0: it never reached DATA). */
void
reader_json_transaction(struct json *j, const struct reader_transaction *t, int64_t session_started_us)
{
	json_object_begin(j);
	json_kv_int(j, "idx", t->idx);
	json_kv_int(j, "t_us", t->started_us - session_started_us);
	json_kv_string(j, "mail_from", t->mail_from);
	json_kv_string(j, "mail_params", t->mail_params);
	reader_json_opt_int(j, "mail_code", t->mail_code);
	json_kv_string(j, "mail_reply", t->mail_reply);
	reader_json_opt_int(j, "mail_seq", t->mail_seq);
	reader_json_rcpts(j, t->rcpts, t->nrcpts);
	json_kv_int(j, "nmessages", t->nmessages);
	json_object_end(j);
}

/* The walks stop at the first write error: the rest would be lost too. */
static int
reader_json_event_cb(const struct reader_event *ev, void *arg)
{
	struct reader_json_walk *w = arg;

	reader_json_event(w->j, ev, w->started_us);
	return w->j->failed ? 1 : 0;
}

static int
reader_json_message_cb(const struct reader_message *m, void *arg)
{
	struct reader_json_walk *w = arg;

	reader_json_message(w->j, m);
	return w->j->failed ? 1 : 0;
}

static int
reader_json_transaction_cb(const struct reader_transaction *t, void *arg)
{
	struct reader_json_walk *w = arg;

	reader_json_transaction(w->j, t, w->started_us);
	return w->j->failed ? 1 : 0;
}

int
reader_json_document(struct reader *rd, const struct reader_session *s, struct json *j, char *err, size_t errsz)
{
	struct reader_json_walk w = { j, s->started_us };
	struct reader_replay *rv;
	size_t nr;
	int r;

	if (reader_replays(rd, s->id, &rv, &nr, err, errsz) != READER_OK)
		return READER_ERROR;
	json_object_begin(j);
	json_key(j, "session");
	reader_json_session_replays(j, s, rv, nr, true);
	free(rv);
	json_key(j, "events");
	json_array_begin(j);
	if ((r = reader_events(rd, s->id, READER_BYTES_LINES, reader_json_event_cb, &w, err, errsz)) != READER_OK)
		return r < 0 ? READER_ERROR : READER_OK;
	json_array_end(j);
	json_key(j, "messages");
	json_array_begin(j);
	if ((r = reader_messages(rd, s->id, reader_json_message_cb, &w, err, errsz)) != READER_OK)
		return r < 0 ? READER_ERROR : READER_OK;
	json_array_end(j);
	json_key(j, "transactions");
	json_array_begin(j);
	if ((r = reader_transactions(rd, s->id, reader_json_transaction_cb, &w, err, errsz)) != READER_OK)
		return r < 0 ? READER_ERROR : READER_OK;
	json_array_end(j);
	json_object_end(j);
	return READER_OK;
}
