/*
 * session.c - a session's lifetime, recording, flow control and the events
 * of its two legs; see session.h and session_int.h for the other rooms.
 *
 * Data path, client to upstream: the client leg's LEG_EV_READ ->
 * session_client_process (session_client.c), which interprets the client's
 * bytes according to s->state, records each unit, then moves the very same
 * bytes to the upstream leg's output (no copy).  Upstream to client: the
 * upstream leg's LEG_EV_READ -> session_upstream_lines (session_reply.c),
 * which assembles replies and matches each with the oldest command
 * awaiting one (the pending FIFO, so PIPELINING works).
 *
 * Memory stays bounded whatever the peers do: lines are capped at
 * SMTP_LINE_MAX, replies at REPLY_MAX, the pending FIFO at PEND_MAX, input
 * buffers by the legs' read watermarks, and each leg's output by not
 * reading from the side that feeds it while it is above LEG_OUTPUT_HIGH
 * (session_update_reading, run at the end of every callback): a client
 * that does not read its replies stops being read, in relay and sink mode
 * alike.  The store's queue pauses the client too.
 */
#include "smtptap/session_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/recording.h"
#include "smtptap/util.h"

static void session_backlog_cb(evutil_socket_t fd, short what, void *arg);
static bool session_data_pend(struct session *s, enum store_side side, unsigned flags, int64_t msg_id,
			      const void *raw, size_t len);
static void session_data_timer_cb(evutil_socket_t fd, short what, void *arg);
static void session_client_legcb(struct leg *leg, enum leg_event ev, void *arg);
static void session_upstream_legcb(struct leg *leg, enum leg_event ev, void *arg);
static const char *session_strstate(enum session_state st);
static void session_maybe_free(struct session *s);
static void session_free(struct session *s);
static void session_trace(struct session *s, enum store_side side, unsigned flags, const char *text,
			  const void *raw, size_t len);
static bool session_timeout_out_of_turn(struct session *s, struct leg *leg, bool reading);
static void session_client_timeout(struct session *s, bool reading);
static void session_upstream_timeout(struct session *s, bool reading);
static void session_upstream_unreachable(struct session *s, const char *why);
static void session_client_gone(struct session *s, const char *why);
static void session_upstream_gone(struct session *s, const char *why);

/* ------------------------------------------------------------------------
 * context
 */

int
session_ctx_init(struct session_ctx *ctx, struct event_base *base, struct evdns_base *dns, struct store *store,
		 struct tls *tls, const struct proxy_config *cfg)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->base = base;
	ctx->dns = dns;
	ctx->store = store;
	ctx->tls = tls;
	ctx->cfg = cfg;
	TAILQ_INIT(&ctx->sessions);
	ctx->backlog_timer = event_new(base, -1, EV_PERSIST, session_backlog_cb, ctx);
	if (ctx->backlog_timer == NULL)
		return -1;
	return 0;
}

void
session_ctx_free(struct session_ctx *ctx)
{
	session_ctx_close_all(ctx);
	if (ctx->backlog_timer != NULL)
		event_free(ctx->backlog_timer);
	ctx->backlog_timer = NULL;
}

void
session_ctx_close_all(struct session_ctx *ctx)
{
	struct session *s, *next;

	for (s = TAILQ_FIRST(&ctx->sessions); s != NULL; s = next) {
		next = TAILQ_NEXT(s, entry);
		session_set_outcome(s, "shutdown", "closed by smtptap shutdown after the grace period");
		session_note(s, STORE_KIND_ACTION, "shutdown: closing both legs");
		session_enter(s);
		session_close_legs(s);
		session_leave(s);
	}
}

/* Resume the sessions that paused for the store once its queue is short. */
static void
session_backlog_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session_ctx *ctx = arg;
	struct session *s, *next;

	(void)fd;
	(void)what;
	if (store_backlog_bytes(ctx->store) > STORE_BACKLOG_LOW)
		return;
	event_del(ctx->backlog_timer);
	for (s = TAILQ_FIRST(&ctx->sessions); s != NULL; s = next) {
		next = TAILQ_NEXT(s, entry);
		if (!s->paused_backlog)
			continue;
		s->paused_backlog = false;
		ctx->npaused_backlog--;
		session_enter(s);
		session_client_process(s);
		session_leave(s);
	}
}

/* ------------------------------------------------------------------------
 * lifetime
 */

/* A session's common start; NULL when out of memory. */
static struct session *
session_new(struct session_ctx *ctx, const struct proxy_route *route, const char *listener)
{
	struct session *s = calloc(1, sizeof(*s));

	if (s == NULL)
		return NULL;
	s->ctx = ctx;
	s->route = route;
	s->started_us = util_now_us();
	s->sink_mode = route->upstream == NULL;
	s->client_tls = route->client_tls;
	s->upstream_tls = s->sink_mode ? PROXY_TLS_OFF : route->upstream_tls;
	s->upstream.fd = -1;
	snprintf(s->listener, sizeof(s->listener), "%s", listener);
	if ((s->reply_buf = evbuffer_new()) == NULL) {
		free(s);
		return NULL;
	}
	return s;
}

/* The client leg is up: the record opens, and the conversation starts.
 * Returns the session's id: the session may be gone when this returns (an
 * upstream refused at once). */
static int64_t
session_open(struct session *s)
{
	struct session_ctx *ctx = s->ctx;
	const struct proxy_route *route = s->route;
	int64_t id;

	id = s->id = store_session_new_id(ctx->store);
	if (s->mode == NULL)
		s->mode = s->sink_mode ? "sink" : "relay";
	TAILQ_INSERT_TAIL(&ctx->sessions, s, entry);
	ctx->nsessions++;

	store_session_open(ctx->store, &(struct store_session){
		.id = s->id,
		.started_us = s->started_us,
		.listener = s->listener,
		.client = s->client.addr,
		.upstream = route->upstream,
		.mode = s->mode,
		.replay_of = s->replay_of,
	});
	session_note(s, STORE_KIND_CONNECT, "client %s connected to %s", s->client.addr, s->listener);
	session_rules_init(s);

	session_enter(s);
	session_pend_push(s, PEND_GREETING, SMTP_VERB_UNKNOWN);
	session_enter_state(s, ST_CONNECTING);
	session_update_timeouts(s);
	if (session_rules_connect(s))
		session_begin(s);
	session_leave(s);
	return id;
}

int
session_start(struct session_ctx *ctx, evutil_socket_t fd, const struct sockaddr *peer, int peerlen,
	      const struct proxy_route *route, const char *listener)
{
	struct session *s = session_new(ctx, route, listener);

	if (s == NULL || leg_accept(&s->client, ctx->base, fd, peer, session_client_legcb, s) < 0) {
		log_warnx("session: cannot set up the client connection: out of memory");
		if (s == NULL) {
			evutil_closesocket(fd);
		} else {
			evbuffer_free(s->reply_buf);
			leg_close(&s->client, LEG_CLOSE_NOW);
			free(s);
		}
		return -1;
	}
	if (peerlen > 0 && (size_t)peerlen <= sizeof(s->client_sa))
		memcpy(&s->client_sa, peer, (size_t)peerlen);
	if (route->mock != NULL) {
		/* Each client gets the recording from its start. */
		if ((s->mock = mock_new(route->mock)) == NULL) {
			log_warnx("session: cannot set up a mock: out of memory");
			evbuffer_free(s->reply_buf);
			leg_close(&s->client, LEG_CLOSE_NOW);
			free(s);
			return -1;
		}
		s->mode = "mock";
		s->replay_of = route->mock->session_id;
	}
	session_open(s);
	return 0;
}

int
session_start_inproc(struct session_ctx *ctx, struct bufferevent *bev, const char *name,
		     const struct proxy_route *route, const struct session_origin *origin, int64_t *id)
{
	struct session *s = session_new(ctx, route, route->listen != NULL ? route->listen : "(in-process)");

	if (s == NULL || leg_pair(&s->client, ctx->base, bev, name, session_client_legcb, s) < 0) {
		log_warnx("session: cannot set up an in-process client: out of memory");
		if (s == NULL) {
			bufferevent_free(bev);
		} else {
			evbuffer_free(s->reply_buf);
			leg_close(&s->client, LEG_CLOSE_NOW);
			free(s);
		}
		return -1;
	}
	s->inproc = true;
	if (origin != NULL) {
		s->mode = origin->mode;
		s->replay_of = origin->replay_of;
		s->replay_client_starttls = origin->client_starttls;
		s->on_end = origin->on_end;
		s->end_arg = origin->arg;
	}
	*id = session_open(s);
	return 0;
}

/* The session's start proper: the sink's greeting, or the upstream
 * connection (a connect rule may hold it back). */
void
session_begin(struct session *s)
{
	struct session_ctx *ctx = s->ctx;
	const struct proxy_route *route = s->route;

	if (s->sink_mode) {
		struct mock_reply r;

		sink_init(&s->sink, s->id);
		s->upstream_ready = true;
		session_enter_state(s, ST_CMD);
		session_respond_greeting(s, &r);
		session_respond_send(s, &r, 0);
	} else if (leg_connect(&s->upstream, ctx->base, ctx->dns, (const struct sockaddr *)&route->upstream_sa,
			       route->upstream_salen, route->upstream_host,
			       (int)strtol(route->upstream_port, NULL, 10), ctx->cfg->connect_timeout,
			       session_upstream_legcb, s) < 0) {
		session_upstream_unreachable(s, "cannot create the upstream connection: out of memory");
	} else if ((s->rate_up != 0 || s->rate_down != 0) && leg_set_rate(&s->upstream, s->rate_down, s->rate_up) < 0) {
		log_warnx("s=%" PRId64 " out of memory: the upstream leg is not throttled", s->id);
	}
	session_tls_start(s);
}

/*
 * Every change of how client input is read goes through here, so -vv shows
 * the state machine at work ("s=3 state CMD -> HOLD").
 */
void
session_enter_state(struct session *s, enum session_state st)
{
	if (s->state == st)
		return;
	log_debug("s=%" PRId64 " state %s -> %s", s->id, session_strstate(s->state), session_strstate(st));
	s->state = st;
}

static const char *
session_strstate(enum session_state st)
{
	switch (st) {
	case ST_CONNECTING:
		return "CONNECTING";
	case ST_CMD:
		return "CMD";
	case ST_HOLD:
		return "HOLD";
	case ST_DATA:
		return "DATA";
	case ST_BDAT:
		return "BDAT";
	case ST_AUTH:
		return "AUTH";
	case ST_TLS:
		return "TLS";
	case ST_CLOSING:
		return "CLOSING";
	}
	return "?";
}

/*
 * Callbacks bracket their work with enter/leave; only the outermost leave
 * writes the legs' output, recomputes what may be read, and may free the
 * session, so no callback ever returns into freed memory.
 */
void
session_enter(struct session *s)
{
	if (s->in_callback++ == 0)
		s->cb_gen++;
}

void
session_leave(struct session *s)
{
	if (s->in_callback > 1) {
		s->in_callback--;
		return;
	}
	leg_flush(&s->client);
	leg_flush(&s->upstream);
	/* A STARTTLS 220 written in full by the flush: no drain event will
	 * come for it, so upgrade now (still inside the callback). */
	if (s->ctls == CTLS_AFTER_FLUSH) {
		session_tls_client_drained(s);
		/* What that wrote: a rule's fail-tls alert, with the client leg
		 * closing after it (no later flush would send it). */
		leg_flush(&s->client);
		leg_flush(&s->upstream);
	}
	s->in_callback--;
	session_update_reading(s);
	session_maybe_free(s);
}

static void
session_maybe_free(struct session *s)
{
	if (s->in_callback > 0 || s->client.open || s->upstream.open || s->freeing)
		return;
	s->freeing = true;
	session_free(s);
}

static void
session_free(struct session *s)
{
	struct session_ctx *ctx = s->ctx;
	struct pending p;
	int64_t now = util_now_us(), id = s->id;
	void (*on_end)(void *, int64_t, const char *, const char *) = s->on_end;
	void *end_arg = s->end_arg;
	const char *outcome;
	char detail[sizeof(s->detail)];

	/* Messages still waiting for a final reply never got one. */
	session_msg_abandon(s);
	session_data_flush(s);
	if (s->rhold_msg != NULL)
		session_msg_close(s, s->rhold_msg, 0, NULL); /* its end was held by a rule */
	s->rhold_msg = NULL;
	while (session_pend_pop(s, &p) == 0)
		session_pend_release(s, &p);
	session_env_reset(s); /* writes the last transaction, before the session ends */
	if (s->outcome == NULL)
		session_set_outcome(s, s->quit_ok ? "quit" : "closed", NULL);
	store_session_close(ctx->store, s->id, now, s->outcome, s->detail[0] ? s->detail : NULL);
	log_info("s=%" PRId64 " client=%s upstream=%s outcome=%s messages=%d events=%" PRId64 " duration=%.3fs%s%s",
		 s->id, s->client.addr, s->sink_mode ? "(sink)" : s->route->upstream, s->outcome, s->nmsgs, s->seq,
		 (double)(now - s->started_us) / 1e6, s->detail[0] ? " detail=" : "", s->detail);

	if (s->paused_backlog)
		ctx->npaused_backlog--;
	session_data_release(s);
	session_env_reset(s);
	free(s->env.rcpts);
	session_tls_free(s);
	session_rules_free(s);
	mock_free(s->mock);
	evbuffer_free(s->reply_buf);
	TAILQ_REMOVE(&ctx->sessions, s, entry);
	ctx->nsessions--;
	outcome = s->outcome;
	memcpy(detail, s->detail, sizeof(detail));
	free(s);
	if (on_end != NULL)
		on_end(end_arg, id, outcome, detail);
	if (ctx->on_session_end != NULL)
		ctx->on_session_end(ctx->arg);
}

void
session_set_outcome(struct session *s, const char *outcome, const char *fmt, ...)
{
	va_list ap;

	if (s->outcome != NULL)
		return;
	s->outcome = outcome;
	if (fmt != NULL) {
		va_start(ap, fmt);
		vsnprintf(s->detail, sizeof(s->detail), fmt, ap);
		va_end(ap);
	}
}

/* Close both legs now (shutdown, a fatal error). */
void
session_close_legs(struct session *s)
{
	session_enter_state(s, ST_CLOSING);
	session_msg_abandon(s);
	leg_close(&s->client, LEG_CLOSE_NOW);
	leg_close(&s->upstream, LEG_CLOSE_NOW);
}

/* ------------------------------------------------------------------------
 * recording
 */

int64_t
session_record(struct session *s, enum store_side side, enum store_kind kind, unsigned flags, int64_t msg_id,
	       const void *raw, size_t len, const char *text)
{
	return session_record_link(s, 0, 0, side, kind, flags, msg_id, raw, len, text);
}

int64_t
session_record_link(struct session *s, int64_t answers_seq, int64_t cause_seq, enum store_side side,
		    enum store_kind kind, unsigned flags, int64_t msg_id, const void *raw, size_t len, const char *text)
{
	struct store_event ev;

	if (side == STORE_SIDE_CLIENT) {
		/* Sent without waiting: in the same callback as the client's
		 * previous bytes, or with nothing passed to it since. */
		if ((kind == STORE_KIND_COMMAND || kind == STORE_KIND_AUTH) && s->client_said &&
		    (s->cb_gen == s->client_gen || s->client.nqueued == s->client_queued))
			flags |= STORE_F_PIPELINED;
		s->client_said = true;
		s->client_gen = s->cb_gen;
		s->client_queued = s->client.nqueued;
	}
	ev = (struct store_event){
		.session_id = s->id,
		.t_us = util_now_us(),
		.side = side,
		.kind = kind,
		.flags = flags,
		.message_row = msg_id,
		.answers_seq = answers_seq,
		.cause_seq = cause_seq,
		.text = text,
		.raw = raw,
		.raw_len = len,
	};

	if (kind == STORE_KIND_DATA && session_data_pend(s, side, flags, msg_id, raw, len))
		goto recorded;
	/* Whatever happens next happened after the data gathered so far. */
	session_data_flush(s);
	ev.seq = ++s->seq;
	store_event_add(s->ctx->store, &ev);
recorded:
	if (s->ctx->cfg->verbosity > 0 && kind != STORE_KIND_DATA)
		session_trace(s, side, flags, text, raw, len);
	/* Only the client can be paused, and whatever is recorded comes, in
	 * the end, from what it sends. */
	if (side == STORE_SIDE_CLIENT && !s->paused_backlog &&
	    store_backlog_bytes(s->ctx->store) > STORE_BACKLOG_HIGH) {
		s->paused_backlog = true;
		s->ctx->npaused_backlog++;
		if (!event_pending(s->ctx->backlog_timer, EV_TIMEOUT, NULL)) {
			struct timeval tv = { 0, BACKLOG_POLL_MS * 1000 };

			event_add(s->ctx->backlog_timer, &tv);
		}
	}
	return ev.seq;
}

/*
 * Gather message data into s->dpend (see session_int.h), straight into the
 * record the store will queue.  Returns false when it cannot (no memory):
 * the caller records it as an event of its own.
 */
static bool
session_data_pend(struct session *s, enum store_side side, unsigned flags, int64_t msg_id, const void *raw,
		  size_t len)
{
	struct data_pend *d = &s->dpend;

	if (raw == NULL || len == 0 || msg_id == 0)
		return false;
	if (d->msg_id != 0 && (d->msg_id != msg_id || d->side != side || d->flags != flags ||
			       d->len + len > SESSION_DATA_EVENT_MAX)) {
		bool full = d->msg_id == msg_id && d->len + len > SESSION_DATA_EVENT_MAX;

		session_data_flush(s);
		d->next_cap = full ? SESSION_DATA_EVENT_MAX : 0;
	}
	if (len > SESSION_DATA_EVENT_MAX)
		return false;
	if (d->timer == NULL && (d->timer = evtimer_new(s->ctx->base, session_data_timer_cb, s)) == NULL)
		return false;
	/* A record starts small (most messages are) and doubles; after a
	 * full one, the message is big and the next starts full size. */
	if (d->rec == NULL) {
		d->cap = d->next_cap ? d->next_cap : SESSION_DATA_EVENT_MIN;
		if ((d->rec = store_data_new(s->ctx->store, s->id, d->cap)) == NULL)
			return false;
	}
	if (d->len + len > d->cap) {
		struct store_data *bigger;
		size_t cap = d->cap;

		while (cap < d->len + len)
			cap *= 2;
		if (cap > SESSION_DATA_EVENT_MAX)
			cap = SESSION_DATA_EVENT_MAX;
		if ((bigger = store_data_grow(s->ctx->store, d->rec, cap)) == NULL)
			return false;
		d->rec = bigger;
		d->cap = cap;
	}
	if (d->msg_id == 0) {
		struct timeval tv = { 0, SESSION_DATA_WAIT_MS * 1000 };

		d->msg_id = msg_id;
		d->side = side;
		d->flags = flags;
		d->t_us = util_now_us();
		evtimer_add(d->timer, &tv);
	}
	memcpy((char *)store_data_buf(d->rec) + d->len, raw, len);
	d->len += len;
	return true;
}

/* Record the data gathered so far as one event; returns its seq, or 0 when
 * nothing was gathered. */
int64_t
session_data_flush(struct session *s)
{
	struct data_pend *d = &s->dpend;
	int64_t seq;

	if (d->msg_id == 0)
		return 0;
	d->next_cap = 0;
	seq = ++s->seq;
	store_data_add(s->ctx->store, d->rec, &(struct store_event){
		.session_id = s->id,
		.seq = seq,
		.t_us = d->t_us,
		.side = d->side,
		.kind = STORE_KIND_DATA,
		.flags = d->flags,
		.message_row = d->msg_id,
		.raw_len = d->len,
	});
	d->rec = NULL;
	d->msg_id = 0;
	d->len = 0;
	evtimer_del(d->timer);
	return seq;
}

/* The session ends: nothing more to gather. */
void
session_data_release(struct session *s)
{
	session_data_flush(s);
	store_data_free(s->dpend.rec);
	s->dpend.rec = NULL;
	if (s->dpend.timer != NULL)
		event_free(s->dpend.timer);
	s->dpend.timer = NULL;
}

static void
session_data_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	session_data_flush(arg);
}

int64_t
session_note(struct session *s, enum store_kind kind, const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return session_record(s, STORE_SIDE_PROXY, kind, 0, 0, NULL, 0, text);
}

int64_t
session_note_cause(struct session *s, int64_t cause_seq, enum store_kind kind, const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return session_record_link(s, 0, cause_seq, STORE_SIDE_PROXY, kind, 0, 0, NULL, 0, text);
}

/*
 * AUTH in the session's summary: the mechanism at once, and the user name
 * when it can be decoded from the initial response, or else from the
 * first response line (session_auth_line).  The bytes are seen here
 * before they are redacted; only the name goes to the store.
 */
void
session_auth_command(struct session *s, const struct smtp_cmd *cmd)
{
	static const char *const named[] = { "PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2" };
	size_t n = cmd->auth_mech.len < sizeof(s->auth_mech) - 1 ? cmd->auth_mech.len : sizeof(s->auth_mech) - 1;
	size_t i;

	s->auth_user_next = false;
	s->auth_mech[0] = s->auth_user[0] = '\0';
	if (n == 0)
		return;
	for (i = 0; i < n; i++)
		s->auth_mech[i] = cmd->auth_mech.p[i] >= 'a' && cmd->auth_mech.p[i] <= 'z'
					  ? (char)(cmd->auth_mech.p[i] - 32)
					  : cmd->auth_mech.p[i];
	s->auth_mech[n] = '\0';
	if (cmd->auth_initial.len > 0 && smtp_auth_user(cmd->auth_mech, cmd->auth_initial.p, cmd->auth_initial.len,
							s->auth_user, sizeof(s->auth_user)) > 0) {
		store_session_set_auth(s->ctx->store, s->id, s->auth_mech, s->auth_user);
		return;
	}
	s->auth_user[0] = '\0';
	store_session_set_auth(s->ctx->store, s->id, s->auth_mech, NULL);
	/* No initial response: the first response line names the user. */
	if (cmd->auth_initial.len > 0)
		return;
	for (i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		if (strcmp(s->auth_mech, named[i]) == 0)
			s->auth_user_next = true;
	}
}

void
session_auth_line(struct session *s, const char *line, size_t len)
{
	struct smtp_str mech = { s->auth_mech, strlen(s->auth_mech) };

	if (!s->auth_user_next)
		return;
	s->auth_user_next = false;
	if (smtp_auth_user(mech, line, len, s->auth_user, sizeof(s->auth_user)) > 0)
		store_session_set_auth(s->ctx->store, s->id, s->auth_mech, s->auth_user);
	else
		s->auth_user[0] = '\0';
}

/*
 * -v: the conversation as it happens, one line per command or reply line,
 * in the spirit of swaks: "->" client to server, "<-" server to client,
 * "<~"/"~>" what smtptap itself sent, "**" its notes.
 */
static void
session_trace(struct session *s, enum store_side side, unsigned flags, const char *text, const void *raw,
	      size_t len)
{
	const char *mark = "**";
	const unsigned char *p = raw, *end;
	char line[1024];

	if (side == STORE_SIDE_CLIENT)
		mark = "->";
	else if (side == STORE_SIDE_UPSTREAM)
		mark = "<-";
	else if (flags & STORE_F_TO_CLIENT)
		mark = "<~";
	else if (flags & STORE_F_TO_UPSTREAM)
		mark = "~>";
	if (raw == NULL) {
		log_info("s=%" PRId64 " %s %s", s->id, mark, text ? text : "");
		return;
	}
	end = p + len;
	while (p < end) {
		size_t n = 0;

		while (p < end && *p != '\n' && n < sizeof(line) - 5) {
			if (*p == '\r' && (p + 1 == end || p[1] == '\n')) {
				p++;
				continue;
			}
			if (*p < 0x20 || *p == 0x7f)
				n += (size_t)snprintf(line + n, sizeof(line) - n, "\\x%02x", *p);
			else
				line[n++] = (char)*p;
			p++;
		}
		while (p < end && *p != '\n')
			p++; /* rest of an over-long line */
		if (p < end)
			p++;
		line[n] = '\0';
		log_info("s=%" PRId64 " %s %s%s", s->id, mark, line, (flags & STORE_F_REDACTED) ? " [redacted]" : "");
	}
}

/* ------------------------------------------------------------------------
 * flow control and timeouts
 */

/*
 * The client may stay silent as long as --idle-timeout while it is its turn
 * to speak; while replies are outstanding it is the upstream's turn, bound
 * by --reply-timeout.  The timeouts are set once and a timeout that fires
 * out of turn is ignored (session_timeout_out_of_turn), because changing
 * them on every command would cost more than the relaying itself.
 */
void
session_update_timeouts(struct session *s)
{
	const struct proxy_config *cfg = s->ctx->cfg;

	if (s->client.open)
		leg_set_timeouts(&s->client, cfg->idle_timeout, cfg->reply_timeout);
	if (s->upstream.open && s->upstream_connected)
		leg_set_timeouts(&s->upstream, cfg->reply_timeout, cfg->reply_timeout);
}

/* A read timeout on a leg whose peer is not expected to speak (the client
 * while a reply is due, the upstream while none is): go on (the leg
 * re-arms it). */
static bool
session_timeout_out_of_turn(struct session *s, struct leg *leg, bool reading)
{
	bool waiting = s->pend_len > 0;

	return reading && (leg == &s->client) == waiting;
}

/*
 * What may be read, from the buffers as they are at the end of a callback:
 * a leg is not read while the output it feeds is above LEG_OUTPUT_HIGH, so
 * neither a slow upstream nor a client that never reads its replies can
 * grow the proxy.  The client is not read while the store's queue is long,
 * while its input waits for a decision (TLS), or once it is closing.
 */
void
session_update_reading(struct session *s)
{
	size_t cout = leg_output_len(&s->client), uout = leg_output_len(&s->upstream);

	if (s->client.open) {
		/* A stalled session interprets nothing, but reads on, so that
		 * it ends when the client gives up. */
		bool on = !s->paused_backlog && cout <= LEG_OUTPUT_HIGH && uout <= LEG_OUTPUT_HIGH &&
			  s->state != ST_CLOSING &&
			  (s->stalled || (s->state != ST_TLS && s->ctls != CTLS_WAIT_UPSTREAM && s->ctls != CTLS_AFTER_FLUSH));

		leg_set_reading(&s->client, on);
	}
	if (s->upstream.open && s->upstream_connected)
		leg_set_reading(&s->upstream, cout <= LEG_OUTPUT_HIGH);
}

/* ------------------------------------------------------------------------
 * the client leg
 */

static void
session_client_legcb(struct leg *leg, enum leg_event ev, void *arg)
{
	struct session *s = arg;
	char why[LEG_ERR_MAX + 64];

	session_enter(s);
	switch (ev) {
	case LEG_EV_READ:
		session_client_process(s);
		break;
	case LEG_EV_DRAINED:
		if (s->ctls == CTLS_AFTER_FLUSH)
			session_tls_client_drained(s);
		/* Replies that waited for the client to read can go on. */
		session_upstream_lines(s);
		session_client_process(s);
		break;
	case LEG_EV_TLS_DONE:
		session_tls_leg_done(s, leg);
		break;
	case LEG_EV_CONNECTED:
		break;
	case LEG_EV_ERROR:
		if (s->ctls == CTLS_HANDSHAKE) {
			session_tls_leg_failed(s, leg);
			break;
		}
		snprintf(why, sizeof(why), "client connection error: %s", leg_error(leg));
		session_client_gone(s, why);
		break;
	case LEG_EV_EOF:
		session_client_gone(s, "client closed the connection");
		break;
	case LEG_EV_TIMEOUT_READ:
	case LEG_EV_TIMEOUT_WRITE:
		session_client_timeout(s, ev == LEG_EV_TIMEOUT_READ);
		break;
	}
	session_leave(s);
}

static void
session_client_timeout(struct session *s, bool reading)
{
	const struct proxy_config *cfg = s->ctx->cfg;
	char reply[128];
	int64_t cause;
	int n;

	if (session_timeout_out_of_turn(s, &s->client, reading))
		return; /* the upstream's turn */
	if (!reading) {
		session_set_outcome(s, "client-timeout", "client stopped reading for %d s", cfg->reply_timeout);
		session_client_gone(s, "client stopped reading (write timeout)");
		return;
	}
	if (s->ctls == CTLS_HANDSHAKE) {
		session_set_outcome(s, "client-tls-error",
				    "no TLS handshake from the client within %d s%s", cfg->idle_timeout,
				    s->client_tls_implicit ? " (a plaintext client on an implicit-TLS listener?)" : "");
		session_note(s, STORE_KIND_ACTION, "%s", s->detail);
		session_close_legs(s);
		return;
	}
	n = snprintf(reply, sizeof(reply), "421 4.4.2 smtptap: idle for %d seconds, closing connection\r\n",
		     cfg->idle_timeout);
	session_set_outcome(s, "client-timeout", "client idle for %d s", cfg->idle_timeout);
	cause = session_note(s, STORE_KIND_ACTION, "client idle for %d s: closing", cfg->idle_timeout);
	session_inject_client_link(s, reply, (size_t)n, 0, cause);
	session_enter_state(s, ST_CLOSING);
	session_msg_abandon(s);
	leg_close(&s->upstream, LEG_CLOSE_NOW);
	leg_close_after_flush(&s->client);
}

/*
 * The client is gone.  Mid-message, the upstream must not be left to take a
 * truncated message for a complete one: close it at once.  Otherwise let
 * what the client said (a QUIT, say) reach the upstream and its replies be
 * recorded, then close.
 */
static void
session_client_gone(struct session *s, const char *why)
{
	bool mid_message = s->cur_msg != NULL;

	/* A direct connection would have passed these on too. */
	session_client_leftover(s, !mid_message);
	session_note(s, STORE_KIND_CLOSE, "%s%s", why, mid_message ? " in the middle of a message" : "");
	if (mid_message) {
		session_set_outcome(s, "client-closed", "client closed the connection in the middle of message %d",
				    s->cur_msg->idx);
		session_msg_abandon(s);
	} else if (!s->quit_sent) {
		session_set_outcome(s, "client-closed", "%s", why);
	}
	session_enter_state(s, ST_CLOSING);
	leg_close(&s->client, LEG_CLOSE_NOW);
	if (mid_message || !s->upstream_ready)
		leg_close(&s->upstream, LEG_CLOSE_NOW);
	else if (s->pend_len == 0)
		leg_close_after_flush(&s->upstream);
	/* else: the upstream closes when its last reply arrives (session_reply.c) */
}

void
session_inject_client(struct session *s, const char *text, size_t len)
{
	session_inject_client_link_flags(s, text, len, 0, 0, 0);
}

/* The same, with store flags of a rule's (STORE_F_RULE). */
void
session_inject_client_flags(struct session *s, const char *text, size_t len, unsigned flags)
{
	session_inject_client_link_flags(s, text, len, 0, 0, flags);
}

/* smtptap's own reply to the client: answering answers_seq (a command it
 * answers itself), or caused by cause_seq (a note saying why). */
int64_t
session_inject_client_link(struct session *s, const char *text, size_t len, int64_t answers_seq, int64_t cause_seq)
{
	return session_inject_client_link_flags(s, text, len, answers_seq, cause_seq, 0);
}

int64_t
session_inject_client_link_flags(struct session *s, const char *text, size_t len, int64_t answers_seq,
				 int64_t cause_seq, unsigned flags)
{
	int64_t seq;

	seq = session_record_link(s, answers_seq, cause_seq, STORE_SIDE_PROXY, STORE_KIND_REPLY,
				  flags | STORE_F_INJECTED | STORE_F_TO_CLIENT | (s->client.open ? 0 : STORE_F_DROPPED), 0,
				  text, len, NULL);
	leg_write(&s->client, text, len);
	return seq;
}

void
session_inject_upstream(struct session *s, const char *text, size_t len)
{
	session_inject_upstream_cause(s, text, len, 0);
}

int64_t
session_inject_upstream_cause(struct session *s, const char *text, size_t len, int64_t cause_seq)
{
	int64_t seq;

	seq = session_record_link(s, 0, cause_seq, STORE_SIDE_PROXY, STORE_KIND_COMMAND,
				  STORE_F_INJECTED | STORE_F_TO_UPSTREAM, 0, text, len, NULL);
	leg_write(&s->upstream, text, len);
	return seq;
}

/* Give up on the session: optionally tell the client why, then close both
 * legs (the client's once the reply is out). */
void
session_fail_client(struct session *s, const char *reply, const char *outcome, const char *detail)
{
	int64_t cause;

	session_set_outcome(s, outcome, "%s", detail);
	cause = session_note(s, STORE_KIND_ACTION, "%s", detail);
	session_enter_state(s, ST_CLOSING);
	session_msg_abandon(s);
	leg_close(&s->upstream, LEG_CLOSE_NOW);
	session_client_leftover(s, false);
	if (reply != NULL) {
		/* An implicit-TLS client still waiting for its handshake gets
		 * the reason over TLS. */
		if (s->ctls == CTLS_WAIT_UPSTREAM)
			session_tls_start_client(s);
		session_inject_client_link(s, reply, strlen(reply), 0, cause);
	}
	leg_close_after_flush(&s->client);
}

/* ------------------------------------------------------------------------
 * the upstream leg
 */

static void
session_upstream_legcb(struct leg *leg, enum leg_event ev, void *arg)
{
	struct session *s = arg;
	char why[LEG_ERR_MAX + 64];

	session_enter(s);
	switch (ev) {
	case LEG_EV_CONNECTED:
		store_session_set_upstream_addr(s->ctx->store, s->id, leg->addr);
		session_note(s, STORE_KIND_CONNECT, "connected to upstream %s", s->route->upstream);
		session_tls_upstream_connected(s);
		break;
	case LEG_EV_READ:
		session_upstream_lines(s);
		session_client_process(s);
		break;
	case LEG_EV_DRAINED:
		session_client_process(s);
		break;
	case LEG_EV_TLS_DONE:
		session_tls_leg_done(s, leg);
		break;
	case LEG_EV_ERROR:
	case LEG_EV_EOF:
		if (!s->upstream_connected && !leg->tls) {
			session_upstream_unreachable(s, ev == LEG_EV_EOF ? "connection closed" : leg_error(leg));
			break;
		}
		if (leg->handshaking) {
			session_tls_leg_failed(s, leg);
			break;
		}
		if (ev == LEG_EV_ERROR)
			snprintf(why, sizeof(why), "upstream connection error: %s", leg_error(leg));
		else
			snprintf(why, sizeof(why), "upstream closed the connection");
		/* Whatever arrived before the close is in: complete replies,
		 * then the bytes of an unfinished one. */
		session_upstream_lines(s);
		session_upstream_tail(s);
		session_upstream_gone(s, why);
		break;
	case LEG_EV_TIMEOUT_READ:
	case LEG_EV_TIMEOUT_WRITE:
		if (!s->upstream_connected && !leg->tls) {
			snprintf(why, sizeof(why), "no connection within %d s", s->ctx->cfg->connect_timeout);
			session_upstream_unreachable(s, why);
			break;
		}
		session_upstream_timeout(s, ev == LEG_EV_TIMEOUT_READ);
		break;
	}
	session_leave(s);
}

static void
session_upstream_unreachable(struct session *s, const char *why)
{
	char reply[400];

	snprintf(reply, sizeof(reply), "421 4.4.1 smtptap: upstream %.100s unreachable: %.200s\r\n", s->route->upstream,
		 why);
	session_pend_pop(s, &(struct pending){ 0 });
	session_fail_client(s, reply, "upstream-unreachable", why);
}

static void
session_upstream_timeout(struct session *s, bool reading)
{
	const struct proxy_config *cfg = s->ctx->cfg;
	char why[300], reply[400];

	if (session_timeout_out_of_turn(s, &s->upstream, reading) && !s->upstream.handshaking)
		return; /* the client's turn */
	if (s->upstream.handshaking)
		snprintf(why, sizeof(why), "upstream %s: no TLS handshake within %d s", s->route->upstream,
			 cfg->reply_timeout);
	else if (reading)
		snprintf(why, sizeof(why), "upstream %s did not reply within %d s", s->route->upstream,
			 cfg->reply_timeout);
	else
		snprintf(why, sizeof(why), "upstream %s stopped reading for %d s", s->route->upstream,
			 cfg->reply_timeout);
	snprintf(reply, sizeof(reply), "421 4.4.2 smtptap: %.300s\r\n", why);
	session_fail_client(s, reply, s->upstream.handshaking ? "upstream-tls-error" : "upstream-timeout", why);
}

/* The upstream is gone: the client gets everything already relayed, then
 * the connection closes, as it would have without smtptap in between. */
static void
session_upstream_gone(struct session *s, const char *why)
{
	session_note(s, STORE_KIND_CLOSE, "%s", why);
	if (s->cur_msg != NULL) {
		session_set_outcome(s, "upstream-closed", "upstream closed the connection in the middle of message %d",
				    s->cur_msg->idx);
		session_msg_abandon(s);
	} else if (!s->quit_ok) {
		session_set_outcome(s, "upstream-closed", "%s", why);
	}
	session_enter_state(s, ST_CLOSING);
	leg_close(&s->upstream, LEG_CLOSE_NOW);
	session_client_leftover(s, false);
	if (s->ctls == CTLS_WAIT_UPSTREAM)
		session_tls_start_client(s);
	leg_close_after_flush(&s->client);
}
