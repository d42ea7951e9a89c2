/*
 * replay.c - see replay.h: the recorded client, played into a session.
 *
 * One replay_conn per session being replayed.  It owns one end of a
 * bufferevent pair (the session's client leg is the other end) and plays
 * the recording's units into it a group at a time: every unit of a group
 * is written at once (the session reads them in one go and relays them in
 * one write, as it did the client's batch), then the conn waits until
 * every unit of the group that expects a reply has one, and only then
 * goes on (after the recorded pause with --timing original).  Message
 * bytes come from the recording's spool, a bounded amount at a time, as
 * the session takes them.
 *
 * Replies are read as a client reads them: complete replies, matched in
 * order with the units still waiting for one.  A reply that changes what
 * the client would do next is acted on as the recorded client could not:
 * a DATA not answered 354 keeps the message content from being sent; an
 * AUTH exchange that ends early skips its remaining lines, and one where
 * the server asks for more than was recorded is cancelled with "*".
 */
#include "smtptap/replay.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/crypto.h>

#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/replay_auth.h"
#include "smtptap/session.h"
#include "smtptap/smtp.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

#define AWAIT_GREETING (-1)
#define AWAIT_CANCEL (-2)
#define PUMP_HIGH (1024 * 1024) /* stop writing message bytes above this ... */
#define PUMP_LOW (256 * 1024)	/* ... and go on below this */
#define PUMP_CHUNK (64 * 1024)
#define REPLAY_REPLY_MAX (256 * 1024)
#define AUTH_LINE_MAX 8192
/* No reply and nothing sent for this long beyond the session's own
 * timeouts: give up (a safety net; the session's timeouts come first). */
#define WATCHDOG_SLACK_S 30

struct replay {
	const struct replay_opts *o;
	bool diff;
	struct event_base *base;
	struct evdns_base *dns;
	struct store *store;
	struct reader *rd;
	struct tls *tls;
	struct proxy_config cfg;
	struct session_ctx ctx;
	bool ctx_ready;
	char host[256], port[8];
	struct sockaddr_storage sa;
	int salen;
	const int64_t *ids;
	size_t nids, next;
	unsigned running;
	replay_result_cb cb;
	void *arg;
};

struct replay_conn {
	struct replay *rp;
	struct recording *rec;
	struct replay_result res;
	struct proxy_route route;
	struct bufferevent *end; /* ours; the session holds the other */
	bool starting, ended, eof_sent;
	char detail[256];	 /* the session's, when it ended */
	/* sending */
	size_t group;		 /* the next group */
	bool sending;
	size_t su, send_last;	 /* units [su, send_last) still to write */
	bool unit_started;	 /* su's line is written; its bytes follow */
	uint64_t soff;		 /* of su's message bytes, written */
	/* units waiting for a reply, in order (AWAIT_*: the greeting, a "*") */
	int *await;
	size_t ahead, alen, acap;
	struct evbuffer *rbuf;	 /* lines of the reply being read */
	struct event *timer;	 /* --timing original */
	struct event *watchdog;
	/* what the replies decided */
	bool data_refused;	 /* the DATA command was not answered 354 */
	bool auth_over;		 /* the AUTH exchange ended */
	unsigned auth_step;
	bool auth_initial;
	char auth_verb[16], auth_mech[32];
	char challenge[AUTH_LINE_MAX];
};

static void rp_kick(evutil_socket_t fd, short what, void *arg);
static void rp_start(struct replay *rp, int64_t id);
static void rp_result_error(struct replay *rp, int64_t id, const struct recording *rec, bool notfound,
			    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void rc_readcb(struct bufferevent *bev, void *arg);
static void rc_writecb(struct bufferevent *bev, void *arg);
static void rc_eventcb(struct bufferevent *bev, short what, void *arg);
static void rc_session_end(void *arg, int64_t id, const char *outcome, const char *detail);
static void rc_replies(struct replay_conn *c);
static void rc_reply(struct replay_conn *c, const char *raw, size_t len);
static void rc_advance(struct replay_conn *c);
static void rc_send_group(struct replay_conn *c);
static void rc_pump(struct replay_conn *c);
static const char *rc_skip(struct replay_conn *c, const struct rec_unit *u);
static void rc_write_line(struct replay_conn *c, const struct rec_unit *u);
static bool rc_await_push(struct replay_conn *c, int what);
static void rc_timer_cb(evutil_socket_t fd, short what, void *arg);
static void rc_watchdog_cb(evutil_socket_t fd, short what, void *arg);
static void rc_watchdog_arm(struct replay_conn *c);
static void rc_done(struct replay_conn *c);
static void rc_free(struct replay_conn *c);

/* ------------------------------------------------------------------------
 * checks
 */

const char *
replay_tls_name(enum replay_tls t)
{
	switch (t) {
	case REPLAY_TLS_RECORDED:
		return "as recorded";
	case REPLAY_TLS_NONE:
		return "none";
	case REPLAY_TLS_STARTTLS:
		return "starttls";
	case REPLAY_TLS_IMPLICIT:
		return "implicit";
	}
	return "?";
}

enum replay_tls
replay_tls_mode(const struct recording *rec, const struct replay_opts *o)
{
	/* In sink mode the client's TLS was with the recorded server. */
	const char *m = rec->upstream != NULL ? rec->upstream_tls : rec->client_tls;

	if (o->tls != REPLAY_TLS_RECORDED)
		return o->tls;
	if (strcmp(m, "implicit") == 0)
		return REPLAY_TLS_IMPLICIT;
	if (strcmp(m, "starttls") == 0)
		return REPLAY_TLS_STARTTLS;
	return REPLAY_TLS_NONE;
}

int
replay_check(const struct recording *rec, const struct replay_opts *o, bool diff, char *err, size_t errsz)
{
	if (rec->nunits == 0 && rec->nreplies == 0) {
		util_errf(err, errsz, "session %" PRId64 " has nothing to replay (no client command was recorded)",
			  rec->session_id);
		return -1;
	}
	if (rec->redacted && o->auth_user == NULL) {
		util_errf(err, errsz,
			  "session %" PRId64 " was recorded with its AUTH credentials redacted: give --auth USER:PASS to "
			  "authenticate again (%s)",
			  rec->session_id, rec->auth_mech[0] ? rec->auth_mech : "AUTH");
		return -1;
	}
	if (o->auth_user != NULL && rec->auth_mech[0] != '\0' && !replay_auth_supported(rec->auth_mech)) {
		util_errf(err, errsz,
			  "session %" PRId64 " authenticates with %s, which --auth cannot make again (PLAIN, LOGIN, "
			  "CRAM-MD5 and XOAUTH2 can)",
			  rec->session_id, rec->auth_mech);
		return -1;
	}
	if (diff && !rec->links && rec->nreplies > 0) {
		util_errf(err, errsz,
			  "session %" PRId64 " was recorded before schema 2: its replies are not linked to their "
			  "commands, so --diff cannot compare them (replay it without --diff)",
			  rec->session_id);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * the driver
 */

int
replay_run(const struct replay_opts *o, const int64_t *ids, size_t nids, bool diff, replay_result_cb cb, void *arg)
{
	struct replay rp;
	char err[512];
	int rc = -1;

	memset(&rp, 0, sizeof(rp));
	rp.o = o;
	rp.diff = diff;
	rp.ids = ids;
	rp.nids = nids;
	rp.cb = cb;
	rp.arg = arg;
	if (util_split_hostport(o->to, rp.host, sizeof(rp.host), rp.port, sizeof(rp.port), err, sizeof(err)) < 0) {
		log_warnx("--to %s", err);
		return -1;
	}
	rp.salen = (int)sizeof(rp.sa);
	if (evutil_parse_sockaddr_port(o->to, (struct sockaddr *)&rp.sa, &rp.salen) < 0)
		rp.salen = 0;

	if ((rp.base = event_base_new()) == NULL) {
		log_warnx("cannot create the event loop");
		goto out;
	}
	if ((rp.dns = evdns_base_new(rp.base, EVDNS_BASE_INITIALIZE_NAMESERVERS)) == NULL &&
	    (rp.dns = evdns_base_new(rp.base, 0)) == NULL) {
		log_warnx("cannot set up the DNS resolver");
		goto out;
	}
	if ((rp.rd = reader_open(o->db, err, sizeof(err))) == NULL) {
		log_warnx("--db %s: %s", o->db, err);
		goto out;
	}
	if ((rp.store = store_open(o->db, err, sizeof(err))) == NULL) {
		log_warnx("--db %s: cannot record the replay: %s", o->db, err);
		goto out;
	}
	/* Only the upstream leg can speak TLS: the client is in here. */
	if (o->tls != REPLAY_TLS_NONE && (rp.tls = tls_new(&o->tls_cfg, false, true, err, sizeof(err))) == NULL) {
		log_warnx("TLS: %s", err);
		goto out;
	}
	rp.cfg.tls = o->tls_cfg;
	rp.cfg.db_path = o->db;
	rp.cfg.upstream_sni = o->sni;
	rp.cfg.redact_auth = o->redact_auth;
	rp.cfg.reply_timeout = o->reply_timeout;
	rp.cfg.connect_timeout = o->connect_timeout;
	/* The replayed client is silent only as long as the recording says
	 * (--timing original), never for its own sake. */
	rp.cfg.idle_timeout = 86400;
	rp.cfg.grace = 0;
	rp.cfg.max_sessions = (int)o->concurrency;
	rp.cfg.verbosity = o->verbosity;
	if (session_ctx_init(&rp.ctx, rp.base, rp.dns, rp.store, rp.tls, &rp.cfg) < 0) {
		log_warnx("cannot set up sessions: out of memory");
		goto out;
	}
	rp.ctx_ready = true;
	if (nids > 0) {
		rp_kick(-1, 0, &rp);
		if (event_base_dispatch(rp.base) < 0) {
			log_warnx("event loop failed");
			goto out;
		}
	}
	rc = 0;
out:
	if (rp.ctx_ready)
		session_ctx_free(&rp.ctx);
	if (rp.tls != NULL)
		tls_free(rp.tls);
	if (rp.store != NULL && store_close(rp.store) < 0) {
		log_warnx("some records of the replay could not be written to %s (see above)", o->db);
		rc = -1;
	}
	if (rp.rd != NULL)
		reader_close(rp.rd);
	if (rp.dns != NULL)
		evdns_base_free(rp.dns, 1);
	if (rp.base != NULL)
		event_base_free(rp.base);
	return rc;
}

/* Start sessions up to the concurrency; end the loop once all are done.
 * Run from the loop (never from inside a session's callback). */
static void
rp_kick(evutil_socket_t fd, short what, void *arg)
{
	struct replay *rp = arg;

	(void)fd;
	(void)what;
	while (rp->next < rp->nids && rp->running < rp->o->concurrency)
		rp_start(rp, rp->ids[rp->next++]);
	if (rp->running == 0 && rp->next >= rp->nids)
		event_base_loopexit(rp->base, NULL);
}

static void
rp_result_error(struct replay *rp, int64_t id, const struct recording *rec, bool notfound, const char *fmt, ...)
{
	struct replay_result res;
	va_list ap;

	memset(&res, 0, sizeof(res));
	res.id = id;
	res.rec = rec;
	res.error = true;
	res.notfound = notfound;
	va_start(ap, fmt);
	vsnprintf(res.errmsg, sizeof(res.errmsg), fmt, ap);
	va_end(ap);
	rp->cb(&res, rp->arg);
}

static void
rp_start(struct replay *rp, int64_t id)
{
	const struct replay_opts *o = rp->o;
	struct bufferevent *pair[2];
	struct recording *rec = NULL;
	struct replay_conn *c;
	struct session_origin origin;
	enum replay_tls mode;
	char err[512], name[64];
	int64_t sid = 0;
	int r;

	r = recording_load(rp->rd, id, REC_WITH_DATA, &rec, err, sizeof(err));
	if (r > 0) {
		rp_result_error(rp, id, NULL, true, "no session %" PRId64 " in %s (see 'smtptap sessions')", id, o->db);
		return;
	}
	if (r < 0) {
		rp_result_error(rp, id, NULL, false, "%s", err);
		return;
	}
	if (o->skip_redacted && rec->redacted && o->auth_user == NULL) {
		struct replay_result res;

		memset(&res, 0, sizeof(res));
		res.id = id;
		res.rec = rec;
		res.skipped = true;
		snprintf(res.errmsg, sizeof(res.errmsg), "recorded with its AUTH credentials redacted (give --auth USER:PASS)");
		rp->cb(&res, rp->arg);
		recording_free(rec);
		return;
	}
	if (replay_check(rec, o, rp->diff, err, sizeof(err)) < 0) {
		rp_result_error(rp, id, rec, false, "%s", err);
		recording_free(rec);
		return;
	}
	mode = replay_tls_mode(rec, o);
	if (mode != REPLAY_TLS_NONE && rp->tls == NULL) {
		rp_result_error(rp, id, rec, false, "session %" PRId64 ": TLS is not set up", id);
		recording_free(rec);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL || (c->res.units = calloc(rec->nunits + 1, sizeof(*c->res.units))) == NULL ||
	    (c->rbuf = evbuffer_new()) == NULL || (c->timer = evtimer_new(rp->base, rc_timer_cb, c)) == NULL ||
	    (c->watchdog = evtimer_new(rp->base, rc_watchdog_cb, c)) == NULL || !rc_await_push(c, AWAIT_GREETING) ||
	    bufferevent_pair_new(rp->base, 0, pair) < 0) {
		rp_result_error(rp, id, rec, false, "out of memory");
		if (c != NULL) {
			c->rec = rec;
			rc_free(c);
		} else {
			recording_free(rec);
		}
		return;
	}
	c->rp = rp;
	c->rec = rec;
	c->res.id = id;
	c->res.rec = rec;
	c->end = pair[0];
	c->route.listen = "(replay)";
	c->route.upstream = o->to;
	snprintf(c->route.upstream_host, sizeof(c->route.upstream_host), "%s", rp->host);
	snprintf(c->route.upstream_port, sizeof(c->route.upstream_port), "%s", rp->port);
	memcpy(&c->route.upstream_sa, &rp->sa, sizeof(rp->sa));
	c->route.upstream_salen = rp->salen;
	/* The session honours the recorded client's STARTTLS (upgrading the
	 * upstream leg only: the client leg is in-process). */
	c->route.client_tls = PROXY_TLS_STARTTLS;
	c->route.upstream_tls = mode == REPLAY_TLS_IMPLICIT   ? PROXY_TLS_IMPLICIT :
				mode == REPLAY_TLS_STARTTLS ? PROXY_TLS_STARTTLS :
							      PROXY_TLS_OFF;
	bufferevent_setcb(c->end, rc_readcb, rc_writecb, rc_eventcb, c);
	bufferevent_setwatermark(c->end, EV_WRITE, PUMP_LOW, 0);
	bufferevent_enable(c->end, EV_READ | EV_WRITE);

	memset(&origin, 0, sizeof(origin));
	origin.mode = "replay";
	origin.replay_of = id;
	origin.client_starttls = rec->client_starttls && mode == REPLAY_TLS_STARTTLS;
	origin.on_end = rc_session_end;
	origin.arg = c;
	snprintf(name, sizeof(name), "(replay)");
	rp->running++;
	c->starting = true;
	/* The session may end before this returns (an upstream refused at
	 * once): rc_session_end then leaves the rest to us. */
	if (session_start_inproc(&rp->ctx, pair[1], name, &c->route, &origin, &sid) < 0) {
		rp->running--;
		rp_result_error(rp, id, rec, false, "cannot start a session: out of memory");
		rc_free(c);
		return;
	}
	c->starting = false;
	c->res.replay_id = sid;
	if (c->ended) {
		rc_done(c);
		return;
	}
	rc_watchdog_arm(c);
}

/* ------------------------------------------------------------------------
 * one replayed session
 */

static bool
rc_await_push(struct replay_conn *c, int what)
{
	if (c->alen == c->acap) {
		size_t cap = c->acap ? c->acap * 2 : 16, i;
		int *n = malloc(cap * sizeof(*n));

		if (n == NULL)
			return false;
		for (i = 0; i < c->alen; i++)
			n[i] = c->await[(c->ahead + i) % c->acap];
		free(c->await);
		c->await = n;
		c->acap = cap;
		c->ahead = 0;
	}
	c->await[(c->ahead + c->alen) % c->acap] = what;
	c->alen++;
	return true;
}

static void
rc_watchdog_arm(struct replay_conn *c)
{
	const struct replay_opts *o = c->rp->o;
	struct timeval tv = { o->reply_timeout + o->connect_timeout + WATCHDOG_SLACK_S, 0 };

	/* A recorded pause (--timing original) is no lack of progress. */
	if (evtimer_pending(c->timer, NULL) && c->group < c->rec->ngroups)
		tv.tv_sec += (time_t)(c->rec->groups[c->group].think_us / 1000000) + 1;
	if (!c->ended)
		evtimer_add(c->watchdog, &tv);
}

/* Nothing moved for longer than the session's own timeouts allow: end
 * the client's side, so the session ends too. */
static void
rc_watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	struct replay_conn *c = arg;

	(void)fd;
	(void)what;
	if (c->ended)
		return;
	snprintf(c->res.errmsg, sizeof(c->res.errmsg), "the replay made no progress; gave up");
	c->res.error = true;
	c->group = c->rec->ngroups;
	c->sending = false;
	c->alen = 0;
	rc_advance(c);
}

static void
rc_readcb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	rc_replies(arg);
}

static void
rc_writecb(struct bufferevent *bev, void *arg)
{
	struct replay_conn *c = arg;

	(void)bev;
	if (c->sending && !c->ended)
		rc_pump(c);
}

static void
rc_eventcb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	(void)arg;
	/* The session closed its side (an EOF): its end is what counts, and
	 * rc_session_end hears of it. */
}

/* Complete replies in our input, in order. */
static void
rc_replies(struct replay_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->end);

	for (;;) {
		struct evbuffer_ptr eol;
		struct smtp_reply_line rl;
		size_t eol_len = 0, len;
		const char *line;

		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos < 0) {
			len = evbuffer_get_length(in);
			if (len < SMTP_LINE_MAX && !(c->ended && len > 0))
				return;
			if (len > SMTP_LINE_MAX)
				len = SMTP_LINE_MAX;
		} else {
			len = (size_t)eol.pos + eol_len;
		}
		if (len == 0)
			return;
		line = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
		smtp_parse_reply_line(line, len, &rl);
		evbuffer_remove_buffer(in, c->rbuf, len);
		if (rl.last || eol.pos < 0 || evbuffer_get_length(c->rbuf) >= REPLAY_REPLY_MAX) {
			size_t n = evbuffer_get_length(c->rbuf);

			rc_reply(c, (const char *)evbuffer_pullup(c->rbuf, -1), n);
			evbuffer_drain(c->rbuf, n);
		}
	}
}

/* The 334's challenge text ("334 <text>") for CRAM-MD5. */
static void
rc_challenge(struct replay_conn *c, const char *raw, size_t len)
{
	size_t n = 0;

	c->challenge[0] = '\0';
	if (len < 4)
		return;
	raw += 4;
	len -= 4;
	while (n < len && raw[n] != '\r' && raw[n] != '\n' && n < sizeof(c->challenge) - 1)
		n++;
	memcpy(c->challenge, raw, n);
	c->challenge[n] = '\0';
}

static void
rc_reply(struct replay_conn *c, const char *raw, size_t len)
{
	const struct recording *rec = c->rec;
	struct rec_code code;
	int who;
	char *copy;

	if (c->alen == 0) {
		c->res.unsolicited++;
		return;
	}
	who = c->await[c->ahead];
	c->ahead = (c->ahead + 1) % c->acap;
	c->alen--;
	rc_watchdog_arm(c);
	recording_code(raw, len, &code);
	if (who == AWAIT_CANCEL) {
		c->auth_over = true;
		goto next;
	}
	if ((copy = malloc(len + 1)) != NULL) {
		memcpy(copy, raw, len);
		copy[len] = '\0';
	}
	if (who == AWAIT_GREETING) {
		free(c->res.greeting);
		c->res.greeting = copy;
		c->res.greeting_len = copy != NULL ? len : 0;
	} else {
		const struct rec_unit *u = &rec->units[who];
		struct replay_unit *ru = &c->res.units[who];
		bool auth = (u->kind == REC_UNIT_COMMAND && u->verb == SMTP_VERB_AUTH) || u->kind == REC_UNIT_AUTH;

		free(ru->reply);
		ru->reply = copy;
		ru->reply_len = copy != NULL ? len : 0;
		if (u->kind == REC_UNIT_COMMAND && u->verb == SMTP_VERB_DATA)
			c->data_refused = code.code != 354;
		if (auth && code.code == 334) {
			rc_challenge(c, raw, len);
			/* The server asks more than the recorded client answered. */
			if ((size_t)who + 1 >= rec->nunits || rec->units[who + 1].kind != REC_UNIT_AUTH) {
				c->res.cancelled++;
				bufferevent_write(c->end, "*\r\n", 3);
				rc_await_push(c, AWAIT_CANCEL);
			}
		} else if (auth) {
			c->auth_over = true;
		}
	}
next:
	rc_advance(c);
}

/* Go on once nothing is awaited: the next group, or the end. */
static void
rc_advance(struct replay_conn *c)
{
	if (c->ended || c->sending || c->alen > 0 || evtimer_pending(c->timer, NULL))
		return;
	if (c->group >= c->rec->ngroups) {
		/* The recorded client said all it had to say: end its side
		 * (after a QUIT the session has closed it already). */
		if (!c->eof_sent) {
			c->eof_sent = true;
			bufferevent_flush(c->end, EV_WRITE, BEV_FINISHED);
		}
		return;
	}
	if (c->rp->o->timing_original && c->rec->groups[c->group].think_us > 0) {
		int64_t us = c->rec->groups[c->group].think_us;
		struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };

		evtimer_add(c->timer, &tv);
		rc_watchdog_arm(c);
		return;
	}
	rc_send_group(c);
}

static void
rc_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct replay_conn *c = arg;

	(void)fd;
	(void)what;
	if (!c->ended && !c->sending && c->alen == 0 && c->group < c->rec->ngroups)
		rc_send_group(c);
}

static void
rc_send_group(struct replay_conn *c)
{
	const struct rec_group *g = &c->rec->groups[c->group++];

	c->su = g->first;
	c->send_last = g->first + g->count;
	c->unit_started = false;
	c->soff = 0;
	c->sending = true;
	rc_watchdog_arm(c);
	rc_pump(c);
}

/* Why unit u is not sent (NULL: it is). */
static const char *
rc_skip(struct replay_conn *c, const struct rec_unit *u)
{
	enum replay_tls mode = replay_tls_mode(c->rec, c->rp->o);

	if (u->after_starttls)
		return "sent after STARTTLS in the same batch: never read by the server";
	if (u->kind == REC_UNIT_COMMAND && u->verb == SMTP_VERB_STARTTLS && mode == REPLAY_TLS_NONE)
		return "--upstream-tls none";
	if (u->kind == REC_UNIT_COMMAND && u->verb == SMTP_VERB_STARTTLS && mode == REPLAY_TLS_IMPLICIT)
		return "the upstream leg is TLS from the start (implicit)";
	if (u->kind == REC_UNIT_DATA && c->data_refused)
		return "DATA was not answered 354";
	if (u->kind == REC_UNIT_AUTH && c->auth_over)
		return "the AUTH exchange had ended";
	return NULL;
}

/* Write unit u's line: as recorded, or (--auth) the AUTH exchange made
 * again with the given credentials. */
static void
rc_write_line(struct replay_conn *c, const struct rec_unit *u)
{
	const struct replay_opts *o = c->rp->o;
	char line[AUTH_LINE_MAX];
	size_t n = 0;

	if (u->kind == REC_UNIT_COMMAND && u->verb == SMTP_VERB_AUTH) {
		struct smtp_cmd cmd;

		c->auth_over = false;
		c->auth_step = 0;
		c->auth_mech[0] = '\0';
		if (o->auth_user != NULL && smtp_parse_command(u->line, u->len, &cmd) == 0) {
			snprintf(c->auth_verb, sizeof(c->auth_verb), "%.*s", (int)cmd.verb_text.len, cmd.verb_text.p);
			snprintf(c->auth_mech, sizeof(c->auth_mech), "%.*s", (int)cmd.auth_mech.len, cmd.auth_mech.p);
			c->auth_initial = cmd.auth_initial.len > 0;
			n = replay_auth_step(c->auth_verb, c->auth_mech, c->auth_initial, 0, o->auth_user, o->auth_pass,
					     NULL, line, sizeof(line));
		}
	} else if (u->kind == REC_UNIT_AUTH && o->auth_user != NULL && c->auth_mech[0] != '\0' &&
		   !(u->len >= 1 && u->line[0] == '*')) {
		n = replay_auth_step(c->auth_verb, c->auth_mech, c->auth_initial, ++c->auth_step, o->auth_user,
				     o->auth_pass, c->challenge, line, sizeof(line));
	}
	if (n > 0) {
		bufferevent_write(c->end, line, n);
		OPENSSL_cleanse(line, sizeof(line));
	} else {
		bufferevent_write(c->end, u->line, u->len);
	}
}

/* Write the group's units, message bytes a bounded amount at a time
 * (the write callback comes back for more). */
static void
rc_pump(struct replay_conn *c)
{
	const struct recording *rec = c->rec;
	struct evbuffer *out = bufferevent_get_output(c->end);
	char buf[PUMP_CHUNK];

	while (c->su < c->send_last) {
		const struct rec_unit *u = &rec->units[c->su];
		struct replay_unit *ru = &c->res.units[c->su];

		if (!c->unit_started) {
			if ((ru->skipped = rc_skip(c, u)) != NULL) {
				if (u->kind == REC_UNIT_DATA)
					c->data_refused = false;
				c->su++;
				continue;
			}
			ru->sent = true;
			if (u->kind != REC_UNIT_DATA)
				rc_write_line(c, u);
			if (u->expects_reply)
				rc_await_push(c, (int)c->su);
			c->unit_started = true;
			c->soff = 0;
		}
		while (c->soff < u->data_len) {
			size_t n = u->data_len - c->soff > sizeof(buf) ? sizeof(buf) : (size_t)(u->data_len - c->soff);

			if (evbuffer_get_length(out) >= PUMP_HIGH)
				return; /* rc_writecb goes on */
			if (recording_data_read(rec, u->data_off + c->soff, buf, n) < 0) {
				snprintf(c->res.errmsg, sizeof(c->res.errmsg),
					 "cannot read message bytes back from the temporary file");
				c->res.error = true;
				c->group = rec->ngroups;
				c->send_last = c->su;
				break;
			}
			bufferevent_write(c->end, buf, n);
			c->soff += n;
		}
		if (u->kind == REC_UNIT_DATA)
			c->data_refused = false;
		c->unit_started = false;
		c->su++;
	}
	c->sending = false;
	rc_advance(c);
}

/* The session is gone (freed): read what it passed on last, then finish. */
static void
rc_session_end(void *arg, int64_t id, const char *outcome, const char *detail)
{
	struct replay_conn *c = arg;

	c->res.replay_id = id;
	c->ended = true;
	c->res.outcome = outcome;
	snprintf(c->detail, sizeof(c->detail), "%s", detail != NULL ? detail : "");
	if (c->starting)
		return; /* rp_start finishes */
	rc_done(c);
}

static void
rc_compare(const struct replay_opts *o, const struct rec_reply *want, const char *got, size_t got_len,
	   unsigned *diff, bool *differs)
{
	*diff = 0;
	if (want == NULL || got == NULL) {
		*differs = want != NULL || got != NULL;
		return;
	}
	*diff = recording_compare(want->raw, want->len, got, got_len, o->strict);
	*differs = *diff != 0;
}

static void
rc_done(struct replay_conn *c)
{
	struct replay *rp = c->rp;
	const struct recording *rec = c->rec;
	struct replay_result *res = &c->res;
	size_t i;

	rc_replies(c); /* what the session passed on before it closed */
	for (i = 0; i < rec->nunits; i++) {
		const struct rec_unit *u = &rec->units[i];
		struct replay_unit *ru = &res->units[i];
		const struct rec_reply *want = u->reply >= 0 ? &rec->replies[u->reply] : NULL;

		if (!ru->sent && ru->skipped == NULL)
			ru->skipped = "the session had ended";
		if (!u->expects_reply && want == NULL && ru->reply == NULL)
			continue;
		rc_compare(rp->o, want, ru->reply, ru->reply_len, &ru->diff, &ru->differs);
		ru->compared = true;
		res->ndiff += ru->differs;
	}
	rc_compare(rp->o, rec->greeting >= 0 ? &rec->replies[rec->greeting] : NULL, res->greeting, res->greeting_len,
		   &res->greeting_diff, &res->greeting_differs);
	res->ndiff += res->greeting_differs;
	/* Not reaching the server is no answer about the server. */
	if (!res->error && res->outcome != NULL &&
	    (strcmp(res->outcome, "upstream-unreachable") == 0 || strcmp(res->outcome, "upstream-tls-error") == 0)) {
		res->error = true;
		snprintf(res->errmsg, sizeof(res->errmsg), "%s: %s", res->outcome, c->detail);
	}
	rp->cb(res, rp->arg);
	rp->running--;
	rc_free(c);
	/* The next sessions start from the loop, not from inside this
	 * session's last callback. */
	event_base_once(rp->base, -1, EV_TIMEOUT, rp_kick, rp, &(struct timeval){ 0, 0 });
}

static void
rc_free(struct replay_conn *c)
{
	size_t i;

	if (c->rec != NULL && c->res.units != NULL) {
		for (i = 0; i < c->rec->nunits; i++)
			free(c->res.units[i].reply);
	}
	free(c->res.units);
	free(c->res.greeting);
	free(c->await);
	if (c->rbuf != NULL)
		evbuffer_free(c->rbuf);
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->watchdog != NULL)
		event_free(c->watchdog);
	if (c->end != NULL)
		bufferevent_free(c->end);
	recording_free(c->rec);
	free(c);
}
