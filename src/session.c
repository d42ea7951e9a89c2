/*
 * session.c - the per-connection state machine for both legs; see session.h.
 *
 * Data path, client to upstream: session_client_readcb -> session_client_process,
 * which interprets the client's bytes according to s->state (commands, DATA
 * stream, BDAT chunk, AUTH response), records each unit, then moves the very
 * same bytes to the upstream's output buffer (evbuffer_remove_buffer, no
 * copy).  Upstream to client: session_upstream_readcb collects reply lines
 * until the last line of a reply, then session_reply_handle matches it with
 * the oldest command awaiting a reply (the pending FIFO), applies its effect
 * (a 354 starts the DATA stream, a 334 makes the next client line an AUTH
 * response, ...), records it and forwards it.
 *
 * Commands whose reply decides how to read what follows (DATA, AUTH) put the
 * client side in HOLD: its bytes stay in the input buffer, bounded by the
 * read watermark, until the reply arrives.  That is the only way to tell
 * message content from commands when a server refuses DATA.
 *
 * Memory stays bounded whatever the peers do: lines are capped at
 * SMTP_LINE_MAX, replies at REPLY_MAX, the pending FIFO at PEND_MAX (further
 * commands wait), input buffers by read watermarks, the upstream's output by
 * pausing the client, and the store's queue by pausing the client too.
 */
#include "smtptap/session.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>

#include "smtptap/log.h"
#include "smtptap/mime.h"
#include "smtptap/sink.h"
#include "smtptap/smtp.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

#define PEND_MAX 256		      /* commands awaiting a reply */
#define REPLY_MAX (256 * 1024)	      /* bytes in one (multi-line) reply */
#define INPUT_HIGH (256 * 1024)	      /* read watermark of each leg */
#define OUTPUT_HIGH (1024 * 1024)     /* pause the client beyond this ... */
#define OUTPUT_LOW (256 * 1024)	      /* ... until the upstream drains to this */
#define READ_MAX (64 * 1024)	      /* bytes per read(2) */
#define RCPT_MAX 10000		      /* recipients remembered per transaction ... */
#define ENV_BYTES_MAX (1024 * 1024)   /* ... and bytes of their addresses and parameters */
#define MIME_SLICE 8192		      /* unstuffed bytes handed to mime at once */
#define REPLY_TEXT_MAX 4096	      /* reply text kept with a message/recipient */
#define BACKLOG_POLL_MS 10

enum session_state {
	ST_CONNECTING = 0, /* upstream not connected yet: client bytes wait */
	ST_CMD,		   /* client lines are commands */
	ST_HOLD,	   /* waiting for the reply that decides what comes next */
	ST_DATA,	   /* DATA content until the terminator */
	ST_BDAT,	   /* exactly bdat_left bytes of a BDAT chunk */
	ST_AUTH,	   /* the next client line answers a 334 */
	ST_CLOSING,	   /* client input is no longer interpreted */
};

enum pend_kind {
	PEND_GREETING = 0,
	PEND_COMMAND,	/* an ordinary command; verb says which */
	PEND_DATA_END,	/* the final reply to a DATA stream */
	PEND_AUTH_LINE, /* the reply to an AUTH response line */
	PEND_LOCAL,	/* smtptap answers itself (STARTTLS refused) */
};

struct msg;

struct pending {
	enum pend_kind kind;
	enum smtp_verb verb;
	bool bdat_last;
	uint32_t env_gen; /* envelope generation the RCPT belongs to */
	uint32_t rcpt_idx;
	struct msg *msg; /* owned: a message awaiting its final reply */
};

struct rcpt {
	char *address;
	char *params;
	int code;
	char *reply;
};

/* The envelope being built by MAIL/RCPT commands. */
struct envelope {
	uint32_t gen; /* bumped on every reset so stale RCPT replies are ignored */
	char *mail_from;
	char *mail_params;
	struct rcpt *rcpts;
	size_t nrcpts, cap;
	size_t bytes; /* of the strings kept, bounded by ENV_BYTES_MAX */
};

/* A message from its first content byte until its final reply. */
struct msg {
	int64_t id;
	int idx;
	bool bdat;
	bool complete;	 /* the content ended properly (terminator / BDAT LAST) */
	uint64_t size;	 /* unstuffed bytes */
	struct smtp_data data;
	bool early_reply; /* BDAT LAST answered before its bytes were through */
	int reply_code;
	char *reply;
	struct mime_hdr_parser mime; /* large: keep last */
};

struct leg {
	struct bufferevent *bev;
	bool open;		   /* has a live bev */
	bool close_after_flush;	   /* close once the output buffer is empty */
	char addr[UTIL_ADDR_MAX];
};

struct session {
	TAILQ_ENTRY(session) entry;
	struct session_ctx *ctx;
	int64_t id;
	int64_t started_us;
	int64_t seq;
	char listener[UTIL_ADDR_MAX];
	struct leg client, upstream;
	bool sink_mode;
	struct sink sink;
	enum session_state state;

	struct pending pend[PEND_MAX];
	size_t pend_head, pend_len;

	struct evbuffer *reply_buf; /* reply lines collected so far */
	size_t reply_lines;

	struct envelope env;
	int nmsgs;
	struct msg *cur_msg;	   /* receiving content now */
	uint64_t bdat_left;	   /* bytes left in the current BDAT chunk */
	bool bdat_cur_last;
	uint64_t bdat_cur_size;

	bool upstream_connected;
	bool spoke; /* the client has sent a command */
	bool quit_sent, quit_ok;
	bool paused_output, paused_backlog;
	bool freeing;
	int in_callback;
	const char *outcome; /* static string: first cause wins */
	char detail[256];
};

static void session_client_readcb(struct bufferevent *bev, void *arg);
static void session_client_writecb(struct bufferevent *bev, void *arg);
static void session_client_eventcb(struct bufferevent *bev, short what, void *arg);
static void session_upstream_readcb(struct bufferevent *bev, void *arg);
static void session_upstream_writecb(struct bufferevent *bev, void *arg);
static void session_upstream_eventcb(struct bufferevent *bev, short what, void *arg);
static void session_backlog_cb(evutil_socket_t fd, short what, void *arg);

static void session_enter(struct session *s);
static void session_enter_state(struct session *s, enum session_state st);
static const char *session_strstate(enum session_state st);
static void session_leave(struct session *s);
static void session_maybe_free(struct session *s);
static void session_free(struct session *s);
static void session_set_outcome(struct session *s, const char *outcome, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void session_record(struct session *s, enum store_side side, enum store_kind kind, unsigned flags,
			   int64_t msg_id, const void *raw, size_t len, const char *text);
static void session_note(struct session *s, enum store_kind kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void session_trace(struct session *s, enum store_side side, unsigned flags, const char *text,
			  const void *raw, size_t len);

static void session_client_process(struct session *s);
static int session_client_line(struct session *s, struct evbuffer *in);
static void session_client_command(struct session *s, struct evbuffer *in, const char *line, size_t len);
static void session_client_auth_line(struct session *s, struct evbuffer *in, const char *line, size_t len);
static void session_client_data(struct session *s, struct evbuffer *in);
static void session_client_bdat(struct session *s, struct evbuffer *in);
static void session_forward_client(struct session *s, struct evbuffer *in, size_t len);
static void session_after_forward(struct session *s);
static void session_inject_client(struct session *s, const char *text, size_t len);
static void session_fail_client(struct session *s, const char *reply, const char *outcome, const char *detail);

static void session_upstream_connect(struct session *s);
static void session_upstream_lines(struct session *s);
static void session_reply_handle(struct session *s, struct evbuffer *reply, enum store_side side, int code);
static void session_reply_local(struct session *s, const char *text, size_t len);
static void session_pend_flush_local(struct session *s);
static void session_sink_answer(struct session *s, const char *text, size_t len);

static struct pending *session_pend_push(struct session *s, enum pend_kind kind, enum smtp_verb verb);
static int session_pend_pop(struct session *s, struct pending *out);
static void session_update_timeouts(struct session *s);
static bool session_timeout_out_of_turn(struct session *s, struct leg *leg, short what);
static void session_update_reading(struct session *s);

static void session_env_reset(struct session *s);
static struct msg *session_msg_new(struct session *s, bool bdat);
static void session_msg_open(struct session *s, struct msg *m);
static void session_msg_close(struct session *s, struct msg *m, int code, const char *reply);
static void session_msg_feed(struct msg *m, const char *p, size_t len);

static void session_leg_close(struct session *s, struct leg *leg);
static void session_leg_close_after_flush(struct session *s, struct leg *leg);
static void session_leg_flush(struct session *s, struct leg *leg);
static void session_client_gone(struct session *s, const char *why);
static void session_client_leftover(struct session *s, bool forward);
static void session_upstream_gone(struct session *s, const char *why);
static char *session_reply_text(const char *raw, size_t len);
static const char *session_nonempty(const char *s);

static const char local_starttls_454[] = "454 4.7.0 TLS not available: smtptap runs with --client-tls off\r\n";

/* ------------------------------------------------------------------------
 * context
 */

int
session_ctx_init(struct session_ctx *ctx, struct event_base *base, struct evdns_base *dns, struct store *store,
		 const struct proxy_config *cfg)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->base = base;
	ctx->dns = dns;
	ctx->store = store;
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
		session_leg_close(s, &s->client);
		session_leg_close(s, &s->upstream);
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
		session_update_reading(s);
		session_client_process(s);
		session_leave(s);
	}
}

/* ------------------------------------------------------------------------
 * lifetime
 */

int
session_start(struct session_ctx *ctx, evutil_socket_t fd, const struct sockaddr *peer, int peerlen,
	      const char *listener)
{
	const struct proxy_config *cfg = ctx->cfg;
	struct session *s;
	int one = 1;

	(void)peerlen;
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		log_warn("session: out of memory");
		evutil_closesocket(fd);
		return -1;
	}
	s->ctx = ctx;
	s->id = store_session_new_id(ctx->store);
	s->started_us = util_now_us();
	s->sink_mode = cfg->upstream == NULL;
	snprintf(s->listener, sizeof(s->listener), "%s", listener);
	util_format_addr(peer, s->client.addr, sizeof(s->client.addr));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	s->reply_buf = evbuffer_new();
	s->client.bev = bufferevent_socket_new(ctx->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->reply_buf == NULL || s->client.bev == NULL) {
		log_warnx("s=%" PRId64 " cannot set up the client connection: out of memory", s->id);
		if (s->client.bev == NULL)
			evutil_closesocket(fd);
		else
			bufferevent_free(s->client.bev);
		if (s->reply_buf != NULL)
			evbuffer_free(s->reply_buf);
		free(s);
		return -1;
	}
	s->client.open = true;
	TAILQ_INSERT_TAIL(&ctx->sessions, s, entry);
	ctx->nsessions++;

	bufferevent_setcb(s->client.bev, session_client_readcb, session_client_writecb, session_client_eventcb, s);
	bufferevent_setwatermark(s->client.bev, EV_READ, 0, INPUT_HIGH);
	bufferevent_disable(s->client.bev, EV_WRITE); /* see session_leg_flush() */
	bufferevent_set_max_single_read(s->client.bev, READ_MAX);

	store_session_open(ctx->store, &(struct store_session){
		.id = s->id,
		.started_us = s->started_us,
		.listener = s->listener,
		.client = s->client.addr,
		.upstream = cfg->upstream,
		.mode = s->sink_mode ? "sink" : "relay",
	});
	session_note(s, STORE_KIND_CONNECT, "client %s connected to %s", s->client.addr, s->listener);

	session_enter(s);
	if (s->sink_mode) {
		char reply[SINK_REPLY_MAX];
		size_t n;

		sink_init(&s->sink, s->id);
		session_enter_state(s, ST_CMD);
		session_pend_push(s, PEND_GREETING, SMTP_VERB_UNKNOWN);
		n = sink_reply_greeting(&s->sink, reply);
		session_sink_answer(s, reply, n);
	} else {
		session_enter_state(s, ST_CONNECTING);
		session_pend_push(s, PEND_GREETING, SMTP_VERB_UNKNOWN);
		session_upstream_connect(s);
	}
	session_update_timeouts(s);
	session_update_reading(s);
	session_leave(s);
	return 0;
}

/*
 * Every change of how client input is read goes through here, so -vv shows
 * the state machine at work ("s=3 state CMD -> HOLD").
 */
static void
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
	case ST_CLOSING:
		return "CLOSING";
	}
	return "?";
}

/*
 * Callbacks bracket their work with enter/leave; only the outermost leave
 * may free the session, so no callback ever returns into freed memory.
 */
static void
session_enter(struct session *s)
{
	s->in_callback++;
}

static void
session_leave(struct session *s)
{
	if (--s->in_callback > 0)
		return;
	session_leg_flush(s, &s->client);
	session_leg_flush(s, &s->upstream);
	session_maybe_free(s);
}

/*
 * Write a leg's output now, in one writev(2) for everything this callback
 * queued.  Waiting for the socket to report writable would cost two
 * epoll_ctl(2) per write (arm, then disarm), more than the write itself;
 * a leg's EV_WRITE is enabled only while a write could not complete, so
 * libevent finishes it and the write timeout catches a peer that stopped
 * reading.  A write error also goes through libevent, so it is reported
 * once, by the event callback.
 */
static void
session_leg_flush(struct session *s, struct leg *leg)
{
	struct evbuffer *out;

	if (!leg->open || (leg == &s->upstream && !s->upstream_connected))
		return;
	out = bufferevent_get_output(leg->bev);
	if (evbuffer_get_length(out) > 0 && !(bufferevent_get_enabled(leg->bev) & EV_WRITE)) {
		int n;

		/* A bufferevent keeps its output's start frozen so that only
		 * it drains it; its own write callback thaws it around the
		 * write in just this way.  Plain sockets only: a TLS leg must
		 * write through its bufferevent. */
		evbuffer_unfreeze(out, 1);
		n = evbuffer_write(out, bufferevent_getfd(leg->bev));
		evbuffer_freeze(out, 1);
		if (n < 0 || evbuffer_get_length(out) > 0)
			bufferevent_enable(leg->bev, EV_WRITE);
	}
	if (leg->close_after_flush && evbuffer_get_length(out) == 0)
		session_leg_close(s, leg);
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
	int64_t now = util_now_us();

	/* Messages still waiting for a final reply never got one. */
	if (s->cur_msg != NULL) {
		session_msg_close(s, s->cur_msg, 0, NULL);
		s->cur_msg = NULL;
	}
	while (session_pend_pop(s, &p) == 0) {
		if (p.msg != NULL)
			session_msg_close(s, p.msg, 0, NULL);
	}
	if (s->outcome == NULL)
		session_set_outcome(s, s->quit_ok ? "quit" : "closed", NULL);
	store_session_close(ctx->store, s->id, now, s->outcome, s->detail[0] ? s->detail : NULL);
	log_info("s=%" PRId64 " client=%s upstream=%s outcome=%s messages=%d events=%" PRId64 " duration=%.3fs%s%s",
		 s->id, s->client.addr, s->sink_mode ? "(sink)" : ctx->cfg->upstream, s->outcome, s->nmsgs, s->seq,
		 (double)(now - s->started_us) / 1e6, s->detail[0] ? " detail=" : "", s->detail);

	if (s->paused_backlog)
		ctx->npaused_backlog--;
	session_env_reset(s);
	free(s->env.rcpts);
	evbuffer_free(s->reply_buf);
	TAILQ_REMOVE(&ctx->sessions, s, entry);
	ctx->nsessions--;
	free(s);
	if (ctx->on_session_end != NULL)
		ctx->on_session_end(ctx->arg);
}

static void
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

/* ------------------------------------------------------------------------
 * recording
 */

static void
session_record(struct session *s, enum store_side side, enum store_kind kind, unsigned flags, int64_t msg_id,
	       const void *raw, size_t len, const char *text)
{
	struct store_event ev = {
		.session_id = s->id,
		.seq = ++s->seq,
		.t_us = util_now_us(),
		.side = side,
		.kind = kind,
		.flags = flags,
		.message_id = msg_id,
		.text = text,
		.raw = raw,
		.raw_len = len,
	};

	store_event_add(s->ctx->store, &ev);
	if (s->ctx->cfg->verbosity > 0 && kind != STORE_KIND_DATA)
		session_trace(s, side, flags, text, raw, len);
	/* Only the client can be paused, and whatever is recorded comes, in
	 * the end, from what it sends. */
	if (side == STORE_SIDE_CLIENT && !s->paused_backlog &&
	    store_backlog_bytes(s->ctx->store) > STORE_BACKLOG_HIGH) {
		s->paused_backlog = true;
		s->ctx->npaused_backlog++;
		session_update_reading(s);
		if (!event_pending(s->ctx->backlog_timer, EV_TIMEOUT, NULL)) {
			struct timeval tv = { 0, BACKLOG_POLL_MS * 1000 };

			event_add(s->ctx->backlog_timer, &tv);
		}
	}
}

static void
session_note(struct session *s, enum store_kind kind, const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	session_record(s, STORE_SIDE_PROXY, kind, 0, 0, NULL, 0, text);
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
 * pending replies
 */

static struct pending *
session_pend_push(struct session *s, enum pend_kind kind, enum smtp_verb verb)
{
	struct pending *p;

	/* Callers check for room first (session_client_process stops at PEND_MAX). */
	p = &s->pend[(s->pend_head + s->pend_len) % PEND_MAX];
	memset(p, 0, sizeof(*p));
	p->kind = kind;
	p->verb = verb;
	s->pend_len++;
	return p;
}

static int
session_pend_pop(struct session *s, struct pending *out)
{
	if (s->pend_len == 0)
		return -1;
	*out = s->pend[s->pend_head];
	s->pend_head = (s->pend_head + 1) % PEND_MAX;
	s->pend_len--;
	return 0;
}

/*
 * The client may stay silent as long as --idle-timeout while it is its turn
 * to speak; while replies are outstanding it is the upstream's turn, bound
 * by --reply-timeout.  The timeouts are set once and a timeout that fires
 * out of turn is ignored (session_timeout_out_of_turn), because changing
 * them on every command would cost more than the relaying itself.
 */
static void
session_update_timeouts(struct session *s)
{
	const struct proxy_config *cfg = s->ctx->cfg;
	struct timeval idle = { cfg->idle_timeout, 0 }, reply = { cfg->reply_timeout, 0 };

	if (s->client.open)
		bufferevent_set_timeouts(s->client.bev, &idle, &reply);
	if (s->upstream.open && s->upstream_connected)
		bufferevent_set_timeouts(s->upstream.bev, &reply, &reply);
}

/* A read timeout on a leg whose peer is not expected to speak (the client
 * while a reply is due, the upstream while none is): re-arm and go on. */
static bool
session_timeout_out_of_turn(struct session *s, struct leg *leg, short what)
{
	bool waiting = s->pend_len > 0;

	if (!(what & BEV_EVENT_READING) || (leg == &s->client) == !waiting)
		return false;
	bufferevent_enable(leg->bev, EV_READ);
	if (leg == &s->client)
		session_update_reading(s);
	return true;
}

static void
session_update_reading(struct session *s)
{
	if (!s->client.open)
		return;
	if (s->paused_output || s->paused_backlog || s->client.close_after_flush || s->state == ST_CLOSING)
		bufferevent_disable(s->client.bev, EV_READ);
	else
		bufferevent_enable(s->client.bev, EV_READ);
}

/* ------------------------------------------------------------------------
 * client side
 */

static void
session_client_readcb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	(void)bev;
	session_enter(s);
	session_client_process(s);
	session_leave(s);
}

/* Interpret as much buffered client input as the state allows. */
static void
session_client_process(struct session *s)
{
	while (s->client.open && !s->paused_output && !s->paused_backlog) {
		struct evbuffer *in = bufferevent_get_input(s->client.bev);

		if (evbuffer_get_length(in) == 0 || s->pend_len >= PEND_MAX - 1)
			return;
		switch (s->state) {
		case ST_CONNECTING:
		case ST_HOLD:
		case ST_CLOSING:
			return;
		case ST_CMD:
		case ST_AUTH:
			if (session_client_line(s, in) <= 0)
				return;
			break;
		case ST_DATA:
			session_client_data(s, in);
			break;
		case ST_BDAT:
			session_client_bdat(s, in);
			break;
		}
	}
}

/* Returns 1 when a line was handled, 0 when more input is needed, -1 when
 * the session is being closed. */
static int
session_client_line(struct session *s, struct evbuffer *in)
{
	struct evbuffer_ptr eol;
	size_t eol_len = 0, avail = evbuffer_get_length(in), len;
	char *line;

	/* A TLS ClientHello (handshake record, version 3.x) where a command
	 * should be: say so instead of relaying binary to the server. */
	if (s->state == ST_CMD && !s->spoke && avail >= 3) {
		unsigned char hdr[3];

		evbuffer_copyout(in, hdr, sizeof(hdr));
		if (hdr[0] == 0x16 && hdr[1] == 0x03 && hdr[2] <= 0x04) {
			len = avail < SMTP_LINE_MAX ? avail : SMTP_LINE_MAX;
			session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED | STORE_F_INCOMPLETE, 0,
				       evbuffer_pullup(in, (ev_ssize_t)len), len, NULL);
			evbuffer_drain(in, len);
			session_fail_client(s, NULL, "protocol-error",
					    "client sent a TLS handshake on a plaintext port (an implicit-TLS client "
					    "such as port 465?)");
			return -1;
		}
	}

	eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	if (eol.pos < 0) {
		if (avail < SMTP_LINE_MAX)
			return 0;
		len = SMTP_LINE_MAX;
	} else {
		len = (size_t)eol.pos + eol_len;
	}
	if (len > SMTP_LINE_MAX || eol.pos < 0) {
		len = SMTP_LINE_MAX;
		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED | STORE_F_INCOMPLETE, 0,
			       evbuffer_pullup(in, (ev_ssize_t)len), len, NULL);
		evbuffer_drain(in, len);
		session_fail_client(s, "500 5.5.2 smtptap: line too long (the limit is 65536 bytes)\r\n",
				    "protocol-error", "client sent a line longer than 65536 bytes");
		return -1;
	}
	line = (char *)evbuffer_pullup(in, (ev_ssize_t)len);
	s->spoke = true;
	if (s->state == ST_AUTH)
		session_client_auth_line(s, in, line, len);
	else
		session_client_command(s, in, line, len);
	return 1;
}

static void
session_client_command(struct session *s, struct evbuffer *in, const char *line, size_t len)
{
	const struct proxy_config *cfg = s->ctx->cfg;
	struct smtp_cmd cmd;
	struct pending *p;
	char redacted[256], reply[SINK_REPLY_MAX];
	const char *raw = line;
	size_t rawlen = len, replylen = 0;
	unsigned flags = 0;
	bool answer;

	if (smtp_parse_command(line, len, &cmd) < 0)
		memset(&cmd, 0, sizeof(cmd)); /* an empty line: unknown, passed through */

	if (cmd.verb == SMTP_VERB_STARTTLS) {
		/* No TLS interception in this version: refuse it ourselves,
		 * in order with the replies still due. */
		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED, 0, line, len, NULL);
		evbuffer_drain(in, len);
		session_pend_push(s, PEND_LOCAL, cmd.verb);
		session_pend_flush_local(s);
		return;
	}
	if (cmd.verb == SMTP_VERB_AUTH && cfg->redact_auth && cmd.auth_initial.len > 0) {
		int n = snprintf(redacted, sizeof(redacted), "%.*s %.*s [redacted]%s", (int)cmd.verb_text.len,
				 cmd.verb_text.p, (int)(cmd.auth_mech.len > 64 ? 64 : cmd.auth_mech.len),
				 cmd.auth_mech.p, line[len - 1] == '\n' && len > 1 && line[len - 2] == '\r' ? "\r\n" : "\n");
		raw = redacted;
		rawlen = (size_t)n;
		flags |= STORE_F_REDACTED;
	}
	session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, flags, 0, raw, rawlen, NULL);

	p = session_pend_push(s, PEND_COMMAND, cmd.verb);
	switch (cmd.verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
	case SMTP_VERB_LHLO:
	case SMTP_VERB_RSET:
		session_env_reset(s);
		if (s->cur_msg != NULL) { /* a BDAT transaction abandoned */
			session_msg_close(s, s->cur_msg, 0, NULL);
			s->cur_msg = NULL;
		}
		break;
	case SMTP_VERB_MAIL:
		session_env_reset(s);
		s->env.mail_from = strndup(cmd.has_path ? cmd.path.p : "", cmd.has_path ? cmd.path.len : 0);
		if (cmd.nparams_total > 0) {
			const char *start = cmd.params[0].key.p;
			const char *end = line + len;

			while (end > start && (end[-1] == '\n' || end[-1] == '\r'))
				end--;
			s->env.mail_params = strndup(start, (size_t)(end - start));
		}
		break;
	case SMTP_VERB_RCPT:
		/* Beyond the bounds a recipient is still recorded as an event
		 * and relayed, just not summarised with the message. */
		if (s->env.nrcpts < RCPT_MAX && s->env.bytes + len <= ENV_BYTES_MAX) {
			struct rcpt *r;

			if (s->env.nrcpts == s->env.cap) {
				size_t cap = s->env.cap ? s->env.cap * 2 : 8;
				struct rcpt *n = realloc(s->env.rcpts, cap * sizeof(*n));

				if (n == NULL)
					break;
				s->env.rcpts = n;
				s->env.cap = cap;
			}
			r = &s->env.rcpts[s->env.nrcpts];
			memset(r, 0, sizeof(*r));
			r->address = strndup(cmd.has_path ? cmd.path.p : "", cmd.has_path ? cmd.path.len : 0);
			if (cmd.nparams_total > 0) {
				const char *start = cmd.params[0].key.p, *end = line + len;

				while (end > start && (end[-1] == '\n' || end[-1] == '\r'))
					end--;
				r->params = strndup(start, (size_t)(end - start));
			}
			p->env_gen = s->env.gen;
			p->rcpt_idx = (uint32_t)s->env.nrcpts++;
			s->env.bytes += len;
		} else {
			p->rcpt_idx = UINT32_MAX;
		}
		break;
	case SMTP_VERB_DATA:
		session_enter_state(s, ST_HOLD);
		break;
	case SMTP_VERB_AUTH:
		session_enter_state(s, ST_HOLD);
		break;
	case SMTP_VERB_QUIT:
		s->quit_sent = true;
		break;
	case SMTP_VERB_BDAT:
		if (!cmd.bdat_ok)
			break; /* not a chunk the server can read either: a plain command */
		if (s->cur_msg == NULL) {
			s->cur_msg = session_msg_new(s, true);
			if (s->cur_msg != NULL)
				session_msg_open(s, s->cur_msg);
		}
		p->bdat_last = cmd.bdat_last;
		s->bdat_left = cmd.bdat_size;
		s->bdat_cur_size = cmd.bdat_size;
		s->bdat_cur_last = cmd.bdat_last;
		session_enter_state(s, ST_BDAT);
		break;
	default:
		break;
	}

	/* The sink answers BDAT once its chunk is in, anything else now; cmd
	 * points into the input buffer, so the reply is made before it goes. */
	answer = s->sink_mode && !(cmd.verb == SMTP_VERB_BDAT && cmd.bdat_ok);
	if (answer)
		replylen = sink_reply_command(&s->sink, &cmd, reply);
	session_forward_client(s, in, len);
	if (answer)
		session_sink_answer(s, reply, replylen);
}

static void
session_client_auth_line(struct session *s, struct evbuffer *in, const char *line, size_t len)
{
	char reply[SINK_REPLY_MAX];
	size_t n = 0;
	bool crlf = len >= 2 && line[len - 2] == '\r';
	bool cancel = (len == 2 && line[0] == '*') || (len == 3 && line[0] == '*' && crlf);

	if (s->ctx->cfg->redact_auth && !cancel) {
		const char *red = crlf ? "[redacted]\r\n" : "[redacted]\n";

		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_AUTH, STORE_F_REDACTED, 0, red, strlen(red), NULL);
	} else {
		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_AUTH, 0, 0, line, len, NULL);
	}
	session_pend_push(s, PEND_AUTH_LINE, SMTP_VERB_AUTH);
	session_enter_state(s, ST_HOLD);
	if (s->sink_mode)
		n = sink_reply_auth_line(&s->sink, line, len - (crlf ? 2 : 1), reply);
	session_forward_client(s, in, len);
	if (s->sink_mode)
		session_sink_answer(s, reply, n);
}

/* Stream DATA content: record and forward up to the terminator. */
static void
session_client_data(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v[16];
	struct msg *m = s->cur_msg;
	int i, n = evbuffer_peek(in, -1, NULL, v, 16);
	size_t total = 0;
	bool done = false;

	if (n > 16)
		n = 16;
	for (i = 0; i < n && !done; i++) {
		const char *base = v[i].iov_base;
		size_t len = v[i].iov_len, used = 0;

		/* While the headers are still coming, unstuff in slices for the
		 * header parser; after that only the terminator matters. */
		while (used < len && m->data.st != SMTP_DATA_DONE) {
			size_t slice = len - used, got = 0;
			char out[MIME_SLICE + 2];

			if (!m->mime.done) {
				if (slice > MIME_SLICE)
					slice = MIME_SLICE;
				used += smtp_data_scan(&m->data, base + used, slice, out, &got);
				session_msg_feed(m, out, got);
			} else {
				used += smtp_data_scan(&m->data, base + used, slice, NULL, NULL);
			}
		}
		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, m->id, base, used, NULL);
		total += used;
		done = m->data.st == SMTP_DATA_DONE;
	}
	m->size = m->data.body_bytes;
	if (done) {
		struct pending *p;

		m->complete = true;
		s->cur_msg = NULL;
		session_enter_state(s, ST_CMD);
		p = session_pend_push(s, PEND_DATA_END, SMTP_VERB_DATA);
		p->msg = m;
	}
	session_forward_client(s, in, total);
	if (s->sink_mode && done) {
		char reply[SINK_REPLY_MAX];
		size_t rn = sink_reply_data_end(&s->sink, m->size, reply);

		session_sink_answer(s, reply, rn);
	}
}

/* Stream a BDAT chunk: exactly the announced number of bytes, binary. */
static void
session_client_bdat(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v[16];
	struct msg *m = s->cur_msg;
	int i, n = evbuffer_peek(in, -1, NULL, v, 16);
	size_t total = 0;

	if (n > 16)
		n = 16;
	for (i = 0; i < n && s->bdat_left > 0; i++) {
		size_t len = v[i].iov_len;

		if (len > s->bdat_left)
			len = (size_t)s->bdat_left;
		if (m != NULL) {
			session_msg_feed(m, v[i].iov_base, len);
			m->size += len;
			session_record(s, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, m->id, v[i].iov_base, len, NULL);
		}
		s->bdat_left -= len;
		total += len;
	}
	session_forward_client(s, in, total);
	if (s->bdat_left > 0)
		return;

	session_enter_state(s, ST_CMD);
	if (s->bdat_cur_last && m != NULL) {
		struct pending *p = NULL;
		size_t k;

		m->complete = true;
		s->cur_msg = NULL;
		/* Hand the message to its BDAT LAST entry, unless the server
		 * answered before the bytes were through. */
		for (k = 0; k < s->pend_len; k++) {
			struct pending *q = &s->pend[(s->pend_head + k) % PEND_MAX];

			if (q->kind == PEND_COMMAND && q->verb == SMTP_VERB_BDAT && q->bdat_last && q->msg == NULL)
				p = q;
		}
		if (m->early_reply || p == NULL) {
			session_msg_close(s, m, m->reply_code, m->reply);
		} else {
			p->msg = m;
		}
	}
	if (s->sink_mode) {
		char reply[SINK_REPLY_MAX];
		struct smtp_cmd cmd = { .verb = SMTP_VERB_BDAT, .bdat_ok = true };
		size_t rn;

		cmd.bdat_size = s->bdat_cur_size;
		cmd.bdat_last = s->bdat_cur_last;
		rn = sink_reply_bdat_chunk(&s->sink, &cmd, reply);
		session_sink_answer(s, reply, rn);
	}
}

/* Pass len bytes of client input on to the upstream (consumed, in sink
 * mode or once the upstream is gone). */
static void
session_forward_client(struct session *s, struct evbuffer *in, size_t len)
{
	if (s->sink_mode || !s->upstream.open) {
		evbuffer_drain(in, len);
		return;
	}
	evbuffer_remove_buffer(in, bufferevent_get_output(s->upstream.bev), len);
	session_after_forward(s);
}

/* Back-pressure: a slow upstream pauses the client rather than growing our
 * output buffer. */
static void
session_after_forward(struct session *s)
{
	if (!s->paused_output && evbuffer_get_length(bufferevent_get_output(s->upstream.bev)) > OUTPUT_HIGH) {
		s->paused_output = true;
		session_update_reading(s);
	}
}

static void
session_inject_client(struct session *s, const char *text, size_t len)
{
	session_record(s, STORE_SIDE_PROXY, STORE_KIND_REPLY, STORE_F_INJECTED | STORE_F_TO_CLIENT, 0, text, len,
		       NULL);
	if (s->client.open)
		bufferevent_write(s->client.bev, text, len);
}

/* Give up on the session: optionally tell the client why, then close both
 * legs (the client's once the reply is out). */
static void
session_fail_client(struct session *s, const char *reply, const char *outcome, const char *detail)
{
	session_set_outcome(s, outcome, "%s", detail);
	session_note(s, STORE_KIND_ACTION, "%s", detail);
	if (reply != NULL)
		session_inject_client(s, reply, strlen(reply));
	session_enter_state(s, ST_CLOSING);
	if (s->cur_msg != NULL) {
		session_msg_close(s, s->cur_msg, 0, NULL);
		s->cur_msg = NULL;
	}
	session_leg_close(s, &s->upstream);
	session_client_leftover(s, false);
	session_leg_close_after_flush(s, &s->client);
}

static void
session_client_writecb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	session_enter(s);
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		if (s->client.close_after_flush)
			session_leg_close(s, &s->client);
		else
			bufferevent_disable(bev, EV_WRITE);
	}
	session_leave(s);
}

static void
session_client_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	char why[160];

	(void)bev;
	session_enter(s);
	if ((what & BEV_EVENT_TIMEOUT) && session_timeout_out_of_turn(s, &s->client, what)) {
		/* the upstream's turn */
	} else if (what & BEV_EVENT_TIMEOUT) {
		if (what & BEV_EVENT_READING) {
			char reply[128];
			int n = snprintf(reply, sizeof(reply),
					 "421 4.4.2 smtptap: idle for %d seconds, closing connection\r\n",
					 s->ctx->cfg->idle_timeout);

			session_set_outcome(s, "client-timeout", "client idle for %d s", s->ctx->cfg->idle_timeout);
			session_note(s, STORE_KIND_ACTION, "client idle for %d s: closing", s->ctx->cfg->idle_timeout);
			session_inject_client(s, reply, (size_t)n);
			session_enter_state(s, ST_CLOSING);
			if (s->cur_msg != NULL) {
				session_msg_close(s, s->cur_msg, 0, NULL);
				s->cur_msg = NULL;
			}
			session_leg_close(s, &s->upstream);
			session_leg_close_after_flush(s, &s->client);
		} else {
			session_set_outcome(s, "client-timeout", "client stopped reading for %d s",
					    s->ctx->cfg->reply_timeout);
			session_client_gone(s, "client stopped reading (write timeout)");
		}
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (what & BEV_EVENT_ERROR)
			snprintf(why, sizeof(why), "client connection error: %s",
				 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		else
			snprintf(why, sizeof(why), "client closed the connection");
		session_client_gone(s, why);
	}
	session_leave(s);
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
		session_msg_close(s, s->cur_msg, 0, NULL);
		s->cur_msg = NULL;
	} else if (!s->quit_sent) {
		session_set_outcome(s, "client-closed", "%s", why);
	}
	session_enter_state(s, ST_CLOSING);
	session_leg_close(s, &s->client);
	if (mid_message)
		session_leg_close(s, &s->upstream);
	else if (s->pend_len == 0)
		session_leg_close_after_flush(s, &s->upstream);
	/* else: upstream closes when its last reply arrives (session_reply_handle) */
}

/*
 * Client bytes not interpreted when the session ends (a last line without
 * its CRLF, input held while a reply was due) are recorded all the same,
 * flagged incomplete: nothing a peer sent is lost.  `forward`: pass them
 * on to the upstream as well (else they are flagged dropped).
 */
static void
session_client_leftover(struct session *s, bool forward)
{
	struct evbuffer *in;
	size_t left;

	if (!s->client.open)
		return;
	in = bufferevent_get_input(s->client.bev);
	left = evbuffer_get_length(in);
	if (left == 0)
		return;
	forward = forward && s->upstream.open && !s->sink_mode;
	session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_INCOMPLETE | (forward ? 0 : STORE_F_DROPPED),
		       0, evbuffer_pullup(in, -1), left, NULL);
	session_forward_client(s, in, left);
}

/* ------------------------------------------------------------------------
 * upstream side
 */

static void
session_upstream_connect(struct session *s)
{
	const struct proxy_config *cfg = s->ctx->cfg;
	struct timeval ctv = { cfg->connect_timeout, 0 };
	long port = strtol(cfg->upstream_port, NULL, 10);

	s->upstream.bev = bufferevent_socket_new(s->ctx->base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (s->upstream.bev == NULL) {
		session_fail_client(s, "421 4.3.0 smtptap: out of memory\r\n", "upstream-unreachable",
				    "cannot create the upstream connection: out of memory");
		return;
	}
	s->upstream.open = true;
	snprintf(s->upstream.addr, sizeof(s->upstream.addr), "%s", cfg->upstream);
	bufferevent_setcb(s->upstream.bev, session_upstream_readcb, session_upstream_writecb,
			  session_upstream_eventcb, s);
	bufferevent_setwatermark(s->upstream.bev, EV_READ, 0, INPUT_HIGH);
	bufferevent_setwatermark(s->upstream.bev, EV_WRITE, OUTPUT_LOW, 0);
	bufferevent_set_max_single_read(s->upstream.bev, READ_MAX);
	/* Before it connects, the write timeout is the connect timeout. */
	bufferevent_set_timeouts(s->upstream.bev, NULL, &ctv);
	/* EV_WRITE stays off: connecting arms its own write event, and
	 * writes go through session_leg_flush(). */
	bufferevent_disable(s->upstream.bev, EV_WRITE);
	bufferevent_enable(s->upstream.bev, EV_READ);
	/* A host name goes through evdns: the loop never blocks on DNS.  On
	 * an immediate failure the event callback has already run. */
	if (cfg->upstream_salen > 0)
		bufferevent_socket_connect(s->upstream.bev, (const struct sockaddr *)&cfg->upstream_sa,
					   cfg->upstream_salen);
	else
		bufferevent_socket_connect_hostname(s->upstream.bev, s->ctx->dns, AF_UNSPEC, cfg->upstream_host,
						    (int)port);
}

static void
session_upstream_readcb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	(void)bev;
	session_enter(s);
	session_upstream_lines(s);
	session_client_process(s);
	session_leave(s);
}

static void
session_upstream_lines(struct session *s)
{
	while (s->upstream.open) {
		struct evbuffer *in = bufferevent_get_input(s->upstream.bev);
		struct evbuffer_ptr eol;
		struct smtp_reply_line rl;
		size_t eol_len = 0, len;
		const char *line;

		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos < 0) {
			if (evbuffer_get_length(in) < SMTP_LINE_MAX)
				return;
			len = SMTP_LINE_MAX;
		} else {
			len = (size_t)eol.pos + eol_len;
		}
		if (len > SMTP_LINE_MAX || evbuffer_get_length(s->reply_buf) + len > REPLY_MAX || eol.pos < 0) {
			evbuffer_remove_buffer(in, s->reply_buf, len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX);
			session_record(s, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_DROPPED | STORE_F_INCOMPLETE, 0,
				       evbuffer_pullup(s->reply_buf, -1), evbuffer_get_length(s->reply_buf), NULL);
			evbuffer_drain(s->reply_buf, evbuffer_get_length(s->reply_buf));
			session_fail_client(s, "421 4.5.0 smtptap: upstream sent an over-long reply, closing\r\n",
					    "protocol-error", "upstream sent a reply line or reply over the size limit");
			return;
		}
		line = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
		smtp_parse_reply_line(line, len, &rl);
		evbuffer_remove_buffer(in, s->reply_buf, len);
		s->reply_lines++;
		if (rl.last) {
			s->reply_lines = 0;
			session_reply_handle(s, s->reply_buf, STORE_SIDE_UPSTREAM, rl.code);
		}
	}
}

/* In sink mode the sink's reply takes the same road as an upstream's. */
static void
session_sink_answer(struct session *s, const char *text, size_t len)
{
	struct smtp_reply_line rl;
	const char *last = text;
	size_t i;

	for (i = 0; i + 1 < len; i++) {
		if (text[i] == '\n')
			last = text + i + 1;
	}
	smtp_parse_reply_line(last, len - (size_t)(last - text), &rl);
	evbuffer_add(s->reply_buf, text, len);
	session_reply_handle(s, s->reply_buf, STORE_SIDE_PROXY, rl.code);
}

/* Remove STARTTLS from an EHLO reply: TLS to the client is not offered in
 * this version, so the client must not be told it is. */
static bool
session_ehlo_filter(struct evbuffer *reply, struct evbuffer *out)
{
	size_t len = evbuffer_get_length(reply);
	const char *p = (const char *)evbuffer_pullup(reply, -1), *end = p + len;
	const char *lines[1024];
	size_t nlines = 0, i, kept = 0;
	bool removed = false;

	while (p < end && nlines < 1024) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));

		lines[nlines++] = p;
		p = nl ? nl + 1 : end;
	}
	if (p < end)
		return false;
	for (i = 0; i < nlines; i++) {
		const char *l = lines[i], *le = i + 1 < nlines ? lines[i + 1] : end;
		struct smtp_reply_line rl;
		struct smtp_ehlo_kw kw;

		smtp_parse_reply_line(l, (size_t)(le - l), &rl);
		if (i > 0 && smtp_parse_ehlo_keyword(rl.text.p, rl.text.len, &kw) == 0 &&
		    smtp_str_eq_ci(kw.keyword, "STARTTLS")) {
			removed = true;
			continue;
		}
		lines[kept++] = l;
	}
	if (!removed)
		return false;
	for (i = 0; i < kept; i++) {
		const char *l = lines[i];
		const char *le = memchr(l, '\n', (size_t)(end - l));
		size_t n = le ? (size_t)(le - l) + 1 : (size_t)(end - l);

		if (n >= 4 && (l[3] == '-' || l[3] == ' ')) {
			evbuffer_add(out, l, 3);
			evbuffer_add(out, i + 1 == kept ? " " : "-", 1);
			evbuffer_add(out, l + 4, n - 4);
		} else {
			evbuffer_add(out, l, n);
		}
	}
	return true;
}

/*
 * A complete reply arrived (from the upstream, or from the sink).  Match it
 * with the oldest outstanding command, apply its effect on the session,
 * record it and pass it to the client.
 */
static void
session_reply_handle(struct session *s, struct evbuffer *reply, enum store_side side, int code)
{
	struct pending p = { .kind = PEND_COMMAND, .verb = SMTP_VERB_UNKNOWN };
	bool have = session_pend_pop(s, &p) == 0;
	unsigned flags = side == STORE_SIDE_PROXY ? STORE_F_INJECTED | STORE_F_TO_CLIENT : 0;
	size_t len = evbuffer_get_length(reply);
	const char *raw = (const char *)evbuffer_pullup(reply, -1);
	struct evbuffer *altered = NULL;
	char *text = NULL;

	switch (have ? p.kind : PEND_COMMAND) {
	case PEND_GREETING:
		if (s->state == ST_CONNECTING)
			session_enter_state(s, ST_CMD);
		break;
	case PEND_DATA_END:
		text = session_reply_text(raw, len);
		session_msg_close(s, p.msg, code, text);
		p.msg = NULL;
		break;
	case PEND_AUTH_LINE:
		session_enter_state(s, code == 334 ? ST_AUTH : ST_CMD);
		break;
	case PEND_LOCAL:
		break;
	case PEND_COMMAND:
		switch (p.verb) {
		case SMTP_VERB_EHLO:
		case SMTP_VERB_LHLO:
			if (side == STORE_SIDE_UPSTREAM && code / 100 == 2) {
				altered = evbuffer_new();
				if (altered != NULL && !session_ehlo_filter(reply, altered)) {
					evbuffer_free(altered);
					altered = NULL;
				}
			}
			break;
		case SMTP_VERB_RCPT:
			if (have && p.env_gen == s->env.gen && p.rcpt_idx < s->env.nrcpts) {
				struct rcpt *r = &s->env.rcpts[p.rcpt_idx];

				r->code = code;
				free(r->reply);
				r->reply = session_reply_text(raw, len);
			}
			break;
		case SMTP_VERB_DATA:
			if (s->state == ST_HOLD) {
				if (code == 354 && (s->cur_msg = session_msg_new(s, false)) != NULL) {
					session_msg_open(s, s->cur_msg);
					session_enter_state(s, ST_DATA);
				} else {
					session_enter_state(s, ST_CMD);
				}
			}
			break;
		case SMTP_VERB_AUTH:
			if (s->state == ST_HOLD)
				session_enter_state(s, code == 334 ? ST_AUTH : ST_CMD);
			break;
		case SMTP_VERB_BDAT:
			if (p.bdat_last) {
				text = session_reply_text(raw, len);
				if (p.msg != NULL) {
					session_msg_close(s, p.msg, code, text);
					p.msg = NULL;
				} else if (s->cur_msg != NULL && s->cur_msg->bdat) {
					/* answered before the chunk was through */
					s->cur_msg->early_reply = true;
					s->cur_msg->reply_code = code;
					s->cur_msg->reply = text;
					text = NULL;
				}
			}
			break;
		case SMTP_VERB_QUIT:
			s->quit_ok = code / 100 == 2;
			break;
		default:
			break;
		}
		break;
	}

	session_record(s, side, STORE_KIND_REPLY, flags | (altered ? STORE_F_ALTERED : 0), 0, raw, len, NULL);
	if (altered != NULL) {
		session_record(s, STORE_SIDE_PROXY, STORE_KIND_REPLY, STORE_F_INJECTED | STORE_F_TO_CLIENT, 0,
			       evbuffer_pullup(altered, -1), evbuffer_get_length(altered), NULL);
		if (s->client.open)
			bufferevent_write_buffer(s->client.bev, altered);
		evbuffer_free(altered);
		evbuffer_drain(reply, len);
	} else if (s->client.open) {
		bufferevent_write_buffer(s->client.bev, reply);
	} else {
		evbuffer_drain(reply, len);
	}
	free(text);
	if (p.msg != NULL)
		session_msg_close(s, p.msg, 0, NULL);

	session_pend_flush_local(s);
	if (p.verb == SMTP_VERB_QUIT && have && p.kind == PEND_COMMAND) {
		/* After QUIT nothing more is said: close the upstream, and the
		 * client once it has the reply. */
		session_enter_state(s, ST_CLOSING);
		session_leg_close(s, &s->upstream);
		session_leg_close_after_flush(s, &s->client);
	} else if (!s->client.open && s->pend_len == 0) {
		session_leg_close(s, &s->upstream);
	}
}

/* Answer the local entries that reached the head of the FIFO. */
static void
session_pend_flush_local(struct session *s)
{
	while (s->pend_len > 0 && s->pend[s->pend_head].kind == PEND_LOCAL) {
		struct pending p;

		session_pend_pop(s, &p);
		session_reply_local(s, local_starttls_454, sizeof(local_starttls_454) - 1);
	}
}

static void
session_reply_local(struct session *s, const char *text, size_t len)
{
	session_inject_client(s, text, len);
}

static void
session_upstream_writecb(struct bufferevent *bev, void *arg)
{
	struct session *s = arg;

	session_enter(s);
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		if (s->upstream.close_after_flush) {
			session_leg_close(s, &s->upstream);
			session_leave(s);
			return;
		}
		bufferevent_disable(bev, EV_WRITE);
	}
	if (s->paused_output) {
		s->paused_output = false;
		session_update_reading(s);
		session_client_process(s);
	}
	session_leave(s);
}

static void
session_upstream_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct session *s = arg;
	const struct proxy_config *cfg = s->ctx->cfg;
	char why[300];

	session_enter(s);
	if (what & BEV_EVENT_CONNECTED) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int one = 1;
		evutil_socket_t fd = bufferevent_getfd(bev);

		if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
			util_format_addr((struct sockaddr *)&ss, s->upstream.addr, sizeof(s->upstream.addr));
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		store_session_set_upstream_addr(s->ctx->store, s->id, s->upstream.addr);
		session_note(s, STORE_KIND_CONNECT, "connected to upstream %s (%s)", cfg->upstream, s->upstream.addr);
		s->upstream_connected = true; /* client input waits for the greeting */
		session_update_timeouts(s);
		session_leave(s);
		return;
	}
	if (!s->upstream_connected) {
		char reply[400];
		int dnserr = bufferevent_socket_get_dns_error(bev);

		if (dnserr != 0)
			snprintf(why, sizeof(why), "cannot resolve %s: %s", cfg->upstream_host, evutil_gai_strerror(dnserr));
		else if (what & BEV_EVENT_TIMEOUT)
			snprintf(why, sizeof(why), "no connection within %d s", cfg->connect_timeout);
		else
			snprintf(why, sizeof(why), "%s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		snprintf(reply, sizeof(reply), "421 4.4.1 smtptap: upstream %.100s unreachable: %.200s\r\n", cfg->upstream,
			 why);
		session_enter_state(s, ST_CLOSING);
		session_pend_pop(s, &(struct pending){ 0 });
		session_fail_client(s, reply, "upstream-unreachable", why);
		session_leave(s);
		return;
	}
	if ((what & BEV_EVENT_TIMEOUT) && session_timeout_out_of_turn(s, &s->upstream, what)) {
		/* the client's turn */
	} else if (what & BEV_EVENT_TIMEOUT) {
		char reply[400];

		if (what & BEV_EVENT_READING)
			snprintf(why, sizeof(why), "upstream %s did not reply within %d s", cfg->upstream,
				 cfg->reply_timeout);
		else
			snprintf(why, sizeof(why), "upstream %s stopped reading for %d s", cfg->upstream,
				 cfg->reply_timeout);
		snprintf(reply, sizeof(reply), "421 4.4.2 smtptap: %.300s\r\n", why);
		session_fail_client(s, reply, "upstream-timeout", why);
	} else if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		if (what & BEV_EVENT_ERROR)
			snprintf(why, sizeof(why), "upstream connection error: %s",
				 evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		else
			snprintf(why, sizeof(why), "upstream closed the connection");
		/* Whatever complete replies arrived before the close are in. */
		session_upstream_lines(s);
		session_upstream_gone(s, why);
	}
	session_leave(s);
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
		session_msg_close(s, s->cur_msg, 0, NULL);
		s->cur_msg = NULL;
	} else if (!s->quit_ok) {
		session_set_outcome(s, "upstream-closed", "%s", why);
	}
	session_enter_state(s, ST_CLOSING);
	session_leg_close(s, &s->upstream);
	session_client_leftover(s, false);
	session_leg_close_after_flush(s, &s->client);
}

/* ------------------------------------------------------------------------
 * legs
 */

static void
session_leg_close(struct session *s, struct leg *leg)
{
	(void)s;
	if (!leg->open)
		return;
	bufferevent_free(leg->bev);
	leg->bev = NULL;
	leg->open = false;
	leg->close_after_flush = false;
}

static void
session_leg_close_after_flush(struct session *s, struct leg *leg)
{
	if (!leg->open)
		return;
	if (evbuffer_get_length(bufferevent_get_output(leg->bev)) == 0) {
		session_leg_close(s, leg);
		return;
	}
	leg->close_after_flush = true;
	bufferevent_disable(leg->bev, EV_READ);
	bufferevent_setwatermark(leg->bev, EV_WRITE, 0, 0);
}

/* ------------------------------------------------------------------------
 * envelope and messages
 */

static void
session_env_reset(struct session *s)
{
	size_t i;

	for (i = 0; i < s->env.nrcpts; i++) {
		free(s->env.rcpts[i].address);
		free(s->env.rcpts[i].params);
		free(s->env.rcpts[i].reply);
	}
	s->env.nrcpts = 0;
	s->env.bytes = 0;
	free(s->env.mail_from);
	free(s->env.mail_params);
	s->env.mail_from = NULL;
	s->env.mail_params = NULL;
	s->env.gen++;
}

static struct msg *
session_msg_new(struct session *s, bool bdat)
{
	struct msg *m = malloc(sizeof(*m));

	if (m == NULL) {
		log_warn("s=%" PRId64 " cannot record a message", s->id);
		return NULL;
	}
	memset(m, 0, offsetof(struct msg, mime));
	m->id = store_message_new_id(s->ctx->store);
	m->idx = ++s->nmsgs;
	m->bdat = bdat;
	smtp_data_init(&m->data);
	mime_hdr_init(&m->mime);
	return m;
}

static void
session_msg_open(struct session *s, struct msg *m)
{
	struct store_rcpt rcpts_small[16], *rcpts = rcpts_small;
	size_t i, n = s->env.nrcpts;

	if (n > 16) {
		rcpts = calloc(n, sizeof(*rcpts));
		if (rcpts == NULL)
			n = 0, rcpts = rcpts_small;
	}
	for (i = 0; i < n; i++) {
		rcpts[i].address = s->env.rcpts[i].address ? s->env.rcpts[i].address : "";
		rcpts[i].params = s->env.rcpts[i].params;
		rcpts[i].reply_code = s->env.rcpts[i].code;
		rcpts[i].reply = s->env.rcpts[i].reply;
	}
	store_message_open(s->ctx->store, &(struct store_message){
		.id = m->id,
		.session_id = s->id,
		.idx = m->idx,
		.started_us = util_now_us(),
		.mail_from = s->env.mail_from ? s->env.mail_from : "",
		.mail_params = s->env.mail_params,
		.transport = m->bdat ? "bdat" : "data",
		.rcpts = rcpts,
		.nrcpts = n,
	});
	if (rcpts != rcpts_small)
		free(rcpts);
}

static void
session_msg_feed(struct msg *m, const char *p, size_t len)
{
	if (!m->mime.done && len > 0)
		mime_hdr_feed(&m->mime, p, len);
}

/* Record the end of a message and free it.  code 0: no final reply. */
static void
session_msg_close(struct session *s, struct msg *m, int code, const char *reply)
{
	struct mime_summary *sum = malloc(sizeof(*sum));

	if (sum != NULL)
		mime_hdr_summarise(&m->mime, sum);
	if (!m->complete)
		session_note(s, STORE_KIND_ACTION, "message %d cut short after %" PRIu64 " bytes: recorded as incomplete",
			     m->idx, m->size);
	store_message_close(s->ctx->store, &(struct store_message_end){
		.id = m->id,
		.ended_us = util_now_us(),
		.size = m->bdat ? m->size : m->data.body_bytes,
		.complete = m->complete,
		.subject = session_nonempty(sum ? sum->subject : NULL),
		.from = session_nonempty(sum ? sum->from : NULL),
		.to = session_nonempty(sum ? sum->to : NULL),
		.message_id = session_nonempty(sum ? sum->message_id : NULL),
		.date = session_nonempty(sum ? sum->date : NULL),
		.reply_code = code,
		.reply = reply,
	});
	if (s->ctx->cfg->verbosity > 0)
		log_info("s=%" PRId64 " ** message %d: %" PRIu64 " bytes%s, subject \"%s\", final reply %d", s->id, m->idx,
			 m->bdat ? m->size : m->data.body_bytes, m->complete ? "" : " (incomplete)",
			 sum ? sum->subject : "", code);
	free(sum);
	free(m->reply);
	free(m);
}

/* An absent header is NULL in the store ("unknown"), not "". */
static const char *
session_nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

/* A reply's text as kept with a recipient or message: CRLFs as "\n", no
 * trailing newline, bounded. */
static char *
session_reply_text(const char *raw, size_t len)
{
	char *t;
	size_t i, n = 0;

	if (len > REPLY_TEXT_MAX)
		len = REPLY_TEXT_MAX;
	t = malloc(len + 1);
	if (t == NULL)
		return NULL;
	for (i = 0; i < len; i++) {
		if (raw[i] == '\r' && i + 1 < len && raw[i + 1] == '\n')
			continue;
		t[n++] = raw[i];
	}
	while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r'))
		n--;
	t[n] = '\0';
	return t;
}
