/*
 * leg.c - one peer connection of a session; see leg.h.
 *
 * A plain leg's bufferevent is created without BEV_OPT_CLOSE_ON_FREE: the
 * leg owns the socket, so that an upgrade can free the plain bufferevent
 * and wrap the same socket in an OpenSSL one (which then owns socket and
 * SSL, BEV_OPT_CLOSE_ON_FREE).  Wrapping the socket rather than filtering
 * the plain bufferevent saves a copy of every byte through a second buffer.
 *
 * Plain legs write directly (leg_flush): waiting for the socket to report
 * writable would cost two epoll_ctl(2) per write, more than the write.
 * Their EV_WRITE is enabled only while a write could not complete, so
 * libevent finishes it and the write timeout catches a peer that stopped
 * reading.  TLS legs always write through their bufferevent: a plaintext
 * byte must never reach a TLS socket.
 */
#include "smtptap/leg.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <openssl/err.h>

static void leg_readcb(struct bufferevent *bev, void *arg);
static void leg_writecb(struct bufferevent *bev, void *arg);
static void leg_eventcb(struct bufferevent *bev, short what, void *arg);
static void leg_setup_bev(struct leg *leg);
static void leg_set_error(struct leg *leg, short what);
static void leg_apply_reading(struct leg *leg);
static struct evbuffer *leg_queue(struct leg *leg);
static void leg_flush_tls(struct leg *leg);
static size_t leg_feed(struct leg *leg, bool all);
static void leg_rate_arm(struct leg *leg);
static void leg_rate_cb(evutil_socket_t fd, short what, void *arg);
static size_t leg_read_max(const struct leg *leg);

/* Throttling works in tenths of a second, so a slow rate trickles instead
 * of arriving in one burst each second. */
#define LEG_RATE_TICKS 10

static void
leg_setup_bev(struct leg *leg)
{
	bufferevent_setcb(leg->bev, leg_readcb, leg_writecb, leg_eventcb, leg);
	bufferevent_setwatermark(leg->bev, EV_READ, 0, LEG_INPUT_HIGH);
	bufferevent_setwatermark(leg->bev, EV_WRITE, LEG_OUTPUT_LOW, 0);
	bufferevent_set_max_single_read(leg->bev, leg_read_max(leg));
}

/* A throttled leg reads at most a tick's worth at once, so the bytes a
 * read brings never run far ahead of the rate. */
static size_t
leg_read_max(const struct leg *leg)
{
	size_t tick = leg->rate_rd / LEG_RATE_TICKS > 0 ? (size_t)(leg->rate_rd / LEG_RATE_TICKS) : 1;

	return leg->rate_rd == 0 || tick > LEG_READ_MAX ? LEG_READ_MAX : tick;
}

int
leg_accept(struct leg *leg, struct event_base *base, evutil_socket_t fd, const struct sockaddr *peer, leg_cb cb,
	   void *arg)
{
	int one = 1;

	memset(leg, 0, sizeof(*leg));
	leg->base = base;
	leg->fd = fd;
	leg->cb = cb;
	leg->arg = arg;
	util_format_addr(peer, leg->addr, sizeof(leg->addr));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	leg->bev = bufferevent_socket_new(base, fd, 0);
	if (leg->bev == NULL) {
		evutil_closesocket(fd);
		leg->fd = -1;
		snprintf(leg->err, sizeof(leg->err), "out of memory");
		return -1;
	}
	leg->open = true;
	leg_setup_bev(leg);
	bufferevent_disable(leg->bev, EV_READ | EV_WRITE);
	return 0;
}

int
leg_pair(struct leg *leg, struct event_base *base, struct bufferevent *bev, const char *name, leg_cb cb, void *arg)
{
	memset(leg, 0, sizeof(*leg));
	leg->base = base;
	leg->fd = -1;
	leg->cb = cb;
	leg->arg = arg;
	leg->inproc = true;
	snprintf(leg->addr, sizeof(leg->addr), "%s", name);
	if (bev == NULL) {
		snprintf(leg->err, sizeof(leg->err), "out of memory");
		return -1;
	}
	leg->bev = bev;
	leg->open = true;
	leg_setup_bev(leg);
	/* A pair hands queued bytes over while its write side is enabled:
	 * there is no socket write to save here. */
	bufferevent_disable(leg->bev, EV_READ);
	bufferevent_enable(leg->bev, EV_WRITE);
	return 0;
}

int
leg_connect(struct leg *leg, struct event_base *base, struct evdns_base *dns, const struct sockaddr *sa, int salen,
	    const char *host, int port, int timeout_s, leg_cb cb, void *arg)
{
	struct timeval ctv = { timeout_s, 0 };

	memset(leg, 0, sizeof(*leg));
	leg->base = base;
	leg->fd = -1;
	leg->cb = cb;
	leg->arg = arg;
	snprintf(leg->addr, sizeof(leg->addr), "%s", host);
	leg->bev = bufferevent_socket_new(base, -1, 0);
	if (leg->bev == NULL) {
		snprintf(leg->err, sizeof(leg->err), "out of memory");
		return -1;
	}
	leg->open = true;
	leg->reading = true;
	leg_setup_bev(leg);
	/* Until it connects, the write timeout is the connect timeout. */
	bufferevent_set_timeouts(leg->bev, NULL, &ctv);
	bufferevent_disable(leg->bev, EV_WRITE);
	bufferevent_enable(leg->bev, EV_READ);
	/* A host name goes through evdns: the loop never blocks on DNS.  A
	 * failure may be reported through leg_eventcb before this returns. */
	if (salen > 0)
		bufferevent_socket_connect(leg->bev, sa, salen);
	else
		bufferevent_socket_connect_hostname(leg->bev, dns, AF_UNSPEC, host, port);
	return 0;
}

int
leg_start_tls(struct leg *leg, SSL *ssl, bool accept)
{
	struct bufferevent *plain = leg->bev, *bev;
	struct evbuffer *out;

	if (!leg->open || leg->tls || leg->fd < 0) {
		snprintf(leg->err, sizeof(leg->err), "cannot start TLS on this connection");
		SSL_free(ssl);
		return -1;
	}
	if (leg->stage == NULL && (leg->stage = evbuffer_new()) == NULL) {
		snprintf(leg->err, sizeof(leg->err), "cannot start TLS: out of memory");
		SSL_free(ssl);
		return -1;
	}
	/* The plain bufferevent must not read the peer's first TLS bytes. */
	bufferevent_disable(plain, EV_READ | EV_WRITE);
	bev = bufferevent_openssl_socket_new(leg->base, leg->fd, ssl,
					     accept ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
					     BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		snprintf(leg->err, sizeof(leg->err), "cannot start TLS: out of memory");
		leg_apply_reading(leg);
		return -1;
	}
	leg->bev = bev;
	leg->tls = true;
	leg->tls_accept = accept;
	leg->handshaking = true;
	leg->tls_started_us = util_now_us();
	leg->tls_error = 0;
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	leg_setup_bev(leg);
	leg_set_timeouts(leg, leg->read_timeout, leg->write_timeout);
	/* Output queued before the upgrade goes out encrypted.  The plain
	 * bufferevent keeps its output's start frozen; thaw it to move it. */
	out = bufferevent_get_output(plain);
	evbuffer_unfreeze(out, 1);
	bufferevent_write_buffer(bev, out);
	bufferevent_free(plain); /* without CLOSE_ON_FREE: the socket stays */
	leg->hold_output = false;
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

SSL *
leg_ssl(struct leg *leg)
{
	return leg->open && leg->tls ? bufferevent_openssl_get_ssl(leg->bev) : NULL;
}

struct evbuffer *
leg_input(struct leg *leg)
{
	return leg->inq != NULL ? leg->inq : bufferevent_get_input(leg->bev);
}

void
leg_input_all(struct leg *leg)
{
	leg_feed(leg, true);
}

/* A throttled leg: hand what the read tokens allow of the bytes read to
 * the session's input; stop reading while bytes wait or tokens are out.
 * Returns how many bytes were handed on. */
static size_t
leg_feed(struct leg *leg, bool all)
{
	struct evbuffer *in;
	size_t n, moved = 0;

	if (leg->inq == NULL || !leg->open)
		return 0;
	in = bufferevent_get_input(leg->bev);
	n = evbuffer_get_length(in);
	if (!all && (int64_t)n > leg->tok_rd)
		n = leg->tok_rd > 0 ? (size_t)leg->tok_rd : 0;
	if (n > 0) {
		evbuffer_remove_buffer(in, leg->inq, n);
		leg->tok_rd -= (int64_t)n;
		moved = n;
	}
	if (!all && (evbuffer_get_length(in) > 0 || leg->tok_rd <= 0)) {
		if (!leg->rd_blocked && !leg->handshaking)
			bufferevent_disable(leg->bev, EV_READ);
		leg->rd_blocked = true;
		leg_rate_arm(leg);
	}
	return moved;
}

size_t
leg_output_len(struct leg *leg)
{
	if (!leg->open)
		return 0;
	return evbuffer_get_length(bufferevent_get_output(leg->bev)) +
	       (leg->tls ? evbuffer_get_length(leg->stage) : 0) + (leg->paced ? evbuffer_get_length(leg->paced) : 0);
}

/*
 * Where queued bytes go: a plain leg's output buffer (written at the end
 * of the callback by leg_flush), or a TLS leg's stage.  An OpenSSL
 * bufferevent writes a record the moment bytes reach its output, so a
 * callback relaying five pipelined commands would cost five records and
 * five write(2)s; the stage collects them and leg_flush hands them over
 * at once.
 */
static struct evbuffer *
leg_queue(struct leg *leg)
{
	if (leg->paced != NULL)
		return leg->paced; /* throttled: leg_pace hands it on */
	return leg->tls ? leg->stage : bufferevent_get_output(leg->bev);
}

/* Where output goes once it may (the real queue under `paced`). */
static struct evbuffer *
leg_queue_real(struct leg *leg)
{
	return leg->tls ? leg->stage : bufferevent_get_output(leg->bev);
}

/* Hand what the write tokens allow of the paced bytes to the real queue. */
static void
leg_pace(struct leg *leg)
{
	size_t n;

	if (leg->paced == NULL || leg->tok_wr <= 0)
		return;
	n = evbuffer_get_length(leg->paced);
	if ((int64_t)n > leg->tok_wr)
		n = (size_t)leg->tok_wr;
	if (n == 0)
		return;
	evbuffer_remove_buffer(leg->paced, leg_queue_real(leg), n);
	leg->tok_wr -= (int64_t)n;
}

static void
leg_rate_arm(struct leg *leg)
{
	struct timeval tv = { 0, 1000000 / LEG_RATE_TICKS };

	if (leg->rate_timer != NULL && !evtimer_pending(leg->rate_timer, NULL))
		evtimer_add(leg->rate_timer, &tv);
}


/* A tick: refill both buckets (a tick's worth at most: no bursts), let
 * reading and paced writing go on. */
static void
leg_rate_cb(evutil_socket_t fd, short what, void *arg)
{
	struct leg *leg = arg;
	int64_t trd = leg->rate_rd / LEG_RATE_TICKS > 0 ? (int64_t)(leg->rate_rd / LEG_RATE_TICKS) : 1;
	int64_t twr = leg->rate_wr / LEG_RATE_TICKS > 0 ? (int64_t)(leg->rate_wr / LEG_RATE_TICKS) : 1;
	bool waiting;

	(void)fd;
	(void)what;
	if (!leg->open)
		return;
	size_t fed = 0;

	leg->tok_rd = leg->tok_rd + trd > trd ? trd : leg->tok_rd + trd;
	leg->tok_wr = twr;
	if (leg->inq != NULL) {
		fed = leg_feed(leg, false);
		if (leg->rd_blocked && leg->tok_rd > 0 && evbuffer_get_length(bufferevent_get_input(leg->bev)) == 0) {
			leg->rd_blocked = false;
			leg_apply_reading(leg);
		}
	}
	waiting = leg->paced != NULL && evbuffer_get_length(leg->paced) > 0;
	leg_flush(leg); /* paces, writes, may close */
	if (!leg->open)
		return;
	if (leg->rd_blocked || (leg->paced != NULL && evbuffer_get_length(leg->paced) > 0))
		leg_rate_arm(leg);
	/* One event (the leg is not touched after it): new input first, else
	 * room, as after a write, for a session waiting for it. */
	if (fed > 0)
		leg->cb(leg, LEG_EV_READ, leg->arg);
	else if (waiting && leg_output_len(leg) <= LEG_OUTPUT_LOW)
		leg->cb(leg, LEG_EV_DRAINED, leg->arg);
}

void
leg_write(struct leg *leg, const void *data, size_t len)
{
	if (leg->open && len > 0 && evbuffer_add(leg_queue(leg), data, len) == 0)
		leg->nqueued += len;
}

void
leg_write_from(struct leg *leg, struct evbuffer *src, size_t len)
{
	if (!leg->open) {
		evbuffer_drain(src, len);
		return;
	}
	if (len == (size_t)-1) {
		leg->nqueued += evbuffer_get_length(src);
		evbuffer_add_buffer(leg_queue(leg), src);
	} else {
		leg->nqueued += len;
		evbuffer_remove_buffer(src, leg_queue(leg), len);
	}
}

void
leg_drop_output(struct leg *leg)
{
	struct evbuffer *out;

	if (!leg->open)
		return;
	out = bufferevent_get_output(leg->bev);
	if (!leg->tls)
		evbuffer_unfreeze(out, 1); /* see leg_flush() */
	evbuffer_drain(out, evbuffer_get_length(out));
	if (!leg->tls)
		evbuffer_freeze(out, 1);
	if (leg->stage != NULL)
		evbuffer_drain(leg->stage, evbuffer_get_length(leg->stage));
}

/* A TLS leg's staged bytes go to OpenSSL: small ones as one record. */
static void
leg_flush_tls(struct leg *leg)
{
	size_t n = evbuffer_get_length(leg->stage);

	if (n == 0)
		return;
	if (n <= LEG_TLS_RECORD)
		evbuffer_pullup(leg->stage, -1);
	bufferevent_write_buffer(leg->bev, leg->stage);
}

void
leg_flush(struct leg *leg)
{
	struct evbuffer *out;

	if (leg->open && leg->paced != NULL && !leg->hold_output) {
		leg_pace(leg);
		if (evbuffer_get_length(leg->paced) > 0)
			leg_rate_arm(leg);
	}
	if (leg->open && leg->tls) {
		leg_flush_tls(leg);
		return;
	}
	if (leg->open && leg->inproc) {
		/* The pair took what it could as it was queued. */
		if (leg->close_after_flush && evbuffer_get_length(bufferevent_get_output(leg->bev)) == 0 &&
		    (leg->paced == NULL || evbuffer_get_length(leg->paced) == 0))
			leg_close(leg, LEG_CLOSE_NOW);
		return;
	}
	if (!leg->open || leg->hold_output || leg->fd < 0)
		return;
	out = bufferevent_get_output(leg->bev);
	if (evbuffer_get_length(out) > 0 && !(bufferevent_get_enabled(leg->bev) & EV_WRITE)) {
		int n;

		/* A bufferevent keeps its output's start frozen so that only
		 * it drains it; its own write callback thaws it around the
		 * write in just this way. */
		evbuffer_unfreeze(out, 1);
		n = evbuffer_write(out, leg->fd);
		evbuffer_freeze(out, 1);
		if (n < 0 || evbuffer_get_length(out) > 0)
			bufferevent_enable(leg->bev, EV_WRITE);
	}
	if (leg->close_after_flush && evbuffer_get_length(out) == 0 &&
	    (leg->paced == NULL || evbuffer_get_length(leg->paced) == 0))
		leg_close(leg, LEG_CLOSE_NOW);
}

void
leg_set_reading(struct leg *leg, bool on)
{
	if (leg->reading == on)
		return; /* every callback asks: keep it cheap */
	leg->reading = on;
	leg_apply_reading(leg);
}

static void
leg_apply_reading(struct leg *leg)
{
	if (!leg->open || leg->handshaking)
		return; /* a handshake reads regardless; applied when it is done */
	if (leg->reading && !leg->close_after_flush && !leg->rd_blocked)
		bufferevent_enable(leg->bev, EV_READ);
	else
		bufferevent_disable(leg->bev, EV_READ);
}

void
leg_set_timeouts(struct leg *leg, int read_s, int write_s)
{
	struct timeval r = { read_s, 0 }, w = { write_s, 0 };

	leg->read_timeout = read_s;
	leg->write_timeout = write_s;
	if (leg->open)
		bufferevent_set_timeouts(leg->bev, read_s > 0 ? &r : NULL, write_s > 0 ? &w : NULL);
}

int
leg_set_rate(struct leg *leg, uint64_t read_bps, uint64_t write_bps)
{
	if (!leg->open)
		return 0;
	if (leg->rate_timer == NULL && (read_bps > 0 || write_bps > 0) &&
	    (leg->rate_timer = evtimer_new(leg->base, leg_rate_cb, leg)) == NULL)
		return -1;
	if (write_bps > 0 && leg->paced == NULL && (leg->paced = evbuffer_new()) == NULL)
		return -1;
	if (write_bps == 0 && leg->paced != NULL) {
		/* unthrottled: what waits goes on at once */
		evbuffer_add_buffer(leg_queue_real(leg), leg->paced);
		evbuffer_free(leg->paced);
		leg->paced = NULL;
	}
	if (read_bps > 0 && leg->inq == NULL) {
		if ((leg->inq = evbuffer_new()) == NULL)
			return -1;
		/* What was read already stays where the caller may be reading
		 * it now; the timer hands on what it leaves, at the rate. */
		if (evbuffer_get_length(bufferevent_get_input(leg->bev)) > 0)
			leg_rate_arm(leg);
	}
	if (read_bps == 0 && leg->inq != NULL) {
		evbuffer_prepend_buffer(bufferevent_get_input(leg->bev), leg->inq);
		evbuffer_free(leg->inq);
		leg->inq = NULL;
	}
	if (read_bps == 0 && leg->rd_blocked) {
		leg->rd_blocked = false;
		leg_apply_reading(leg);
	}
	leg->rate_rd = read_bps;
	leg->rate_wr = write_bps;
	bufferevent_set_max_single_read(leg->bev, leg_read_max(leg));
	leg->tok_rd = read_bps / LEG_RATE_TICKS > 0 ? (int64_t)(read_bps / LEG_RATE_TICKS) : 1;
	leg->tok_wr = write_bps / LEG_RATE_TICKS > 0 ? (int64_t)(write_bps / LEG_RATE_TICKS) : 1;
	return 0;
}

void
leg_close(struct leg *leg, enum leg_close_how how)
{
	if (!leg->open)
		return;
	if (how == LEG_CLOSE_RESET && leg->fd >= 0) {
		struct linger lg = { 1, 0 };

		setsockopt(leg->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	} else if (leg->tls && !leg->handshaking && !leg->reset_on_close) {
		/* (a reset sends no close_notify: the peer would take the
		 * clean TLS end for the close and never see the RST) */
		/* close_notify, best effort: the socket is non-blocking. */
		SSL *ssl = bufferevent_openssl_get_ssl(leg->bev);

		if (ssl != NULL)
			SSL_shutdown(ssl);
		ERR_clear_error();
	}
	if (leg->inproc)
		bufferevent_flush(leg->bev, EV_WRITE, BEV_FINISHED); /* what is left, then EOF */
	else if (!leg->tls && leg->fd < 0)
		leg->fd = bufferevent_getfd(leg->bev); /* a connect made it */
	bufferevent_free(leg->bev); /* TLS: closes the socket and frees the SSL */
	if (!leg->tls && leg->fd >= 0)
		evutil_closesocket(leg->fd);
	if (leg->stage != NULL)
		evbuffer_free(leg->stage);
	leg->stage = NULL;
	if (leg->paced != NULL)
		evbuffer_free(leg->paced);
	if (leg->inq != NULL)
		evbuffer_free(leg->inq);
	leg->inq = NULL;
	if (leg->rate_timer != NULL)
		event_free(leg->rate_timer);
	leg->paced = NULL;
	leg->rate_timer = NULL;
	leg->rate_rd = leg->rate_wr = 0;
	leg->rd_blocked = false;
	leg->bev = NULL;
	leg->fd = -1;
	leg->open = false;
	leg->close_after_flush = false;
	leg->reset_on_close = false;
	leg->handshaking = false;
}

void
leg_close_after_flush(struct leg *leg)
{
	if (!leg->open)
		return;
	if (leg_output_len(leg) == 0 && !leg->handshaking) {
		leg_close(leg, LEG_CLOSE_NOW);
		return;
	}
	if (leg->tls)
		leg_flush_tls(leg);
	leg->close_after_flush = true;
	leg->hold_output = false;
	bufferevent_disable(leg->bev, EV_READ);
	bufferevent_setwatermark(leg->bev, EV_WRITE, 0, 0);
	if (leg->tls)
		bufferevent_enable(leg->bev, EV_WRITE);
}

void
leg_reset_after_flush(struct leg *leg)
{
	struct linger lg = { 1, 0 };

	if (!leg->open)
		return;
	if (!leg->tls && leg->fd < 0)
		leg->fd = bufferevent_getfd(leg->bev);
	/* SO_LINGER 0 makes the final close(2) an RST; what is queued is
	 * still written first. */
	if (leg->fd >= 0)
		setsockopt(leg->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	leg->reset_on_close = true;
	leg_close_after_flush(leg);
}

const char *
leg_error(const struct leg *leg)
{
	return leg->err[0] ? leg->err : "unknown error";
}

/* ------------------------------------------------------------------------
 * callbacks
 */

static void
leg_readcb(struct bufferevent *bev, void *arg)
{
	struct leg *leg = arg;

	(void)bev;
	if (leg->inq != NULL && leg_feed(leg, false) == 0)
		return; /* throttled: the rate timer hands the bytes on */
	leg->cb(leg, LEG_EV_READ, leg->arg);
}

static void
leg_writecb(struct bufferevent *bev, void *arg)
{
	struct leg *leg = arg;

	if (leg->fd < 0 && !leg->tls && !leg->inproc) {
		/* A connect that succeeded at once (AF_UNIX, some BSDs'
		 * loopback): libevent reports it through the write event,
		 * which the fast path keeps off; turn it on to hear it. */
		bufferevent_enable(bev, EV_WRITE);
		return;
	}
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		if (leg->close_after_flush && (leg->paced == NULL || evbuffer_get_length(leg->paced) == 0))
			leg_close(leg, LEG_CLOSE_NOW);
		else if (!leg->tls && !leg->inproc)
			bufferevent_disable(bev, EV_WRITE); /* see leg_flush() */
	}
	leg->cb(leg, LEG_EV_DRAINED, leg->arg);
}

static void
leg_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct leg *leg = arg;

	if ((what & BEV_EVENT_CONNECTED) && leg->handshaking) {
		leg->handshaking = false;
		leg_apply_reading(leg);
		leg->cb(leg, LEG_EV_TLS_DONE, leg->arg);
		return;
	}
	if (what & BEV_EVENT_CONNECTED) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int one = 1;

		leg->fd = bufferevent_getfd(bev);
		if (getpeername(leg->fd, (struct sockaddr *)&ss, &sl) == 0)
			util_format_addr((struct sockaddr *)&ss, leg->addr, sizeof(leg->addr));
		setsockopt(leg->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		leg->cb(leg, LEG_EV_CONNECTED, leg->arg);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		bool reading = (what & BEV_EVENT_READING) != 0;

		/* libevent disabled the event: re-arm it first (a timeout out
		 * of turn goes on), since the callback may free the session
		 * this leg lives in.  A real timeout closes the leg there. */
		if (reading)
			leg_apply_reading(leg);
		leg->cb(leg, reading ? LEG_EV_TIMEOUT_READ : LEG_EV_TIMEOUT_WRITE, leg->arg);
		return;
	}
	if ((what & (BEV_EVENT_ERROR | BEV_EVENT_EOF)) && leg->inq != NULL)
		leg_feed(leg, true); /* the end: nothing read stays behind */
	if (what & BEV_EVENT_ERROR) {
		leg_set_error(leg, what);
		leg->cb(leg, LEG_EV_ERROR, leg->arg);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		if (leg->handshaking) {
			snprintf(leg->err, sizeof(leg->err), "the peer closed the connection during the TLS handshake");
			leg->cb(leg, LEG_EV_ERROR, leg->arg);
			return;
		}
		leg->cb(leg, LEG_EV_EOF, leg->arg);
	}
}

/* One line saying why: OpenSSL's queue for this bufferevent first, else
 * the resolver's or the socket's error. */
static void
leg_set_error(struct leg *leg, short what)
{
	unsigned long e;
	size_t n = 0;
	int dnserr = leg->tls ? 0 : bufferevent_socket_get_dns_error(leg->bev);
	int sockerr = EVUTIL_SOCKET_ERROR();

	(void)what;
	leg->err[0] = '\0';
	leg->tls_error = 0;
	if (leg->tls) {
		while ((e = bufferevent_get_openssl_error(leg->bev)) != 0) {
			char one[256];

			if (ERR_GET_LIB(e) == 0)
				continue; /* libevent's own placeholder, no text */
			if (leg->tls_error == 0)
				leg->tls_error = e;
			ERR_error_string_n(e, one, sizeof(one));
			if (n < sizeof(leg->err) - 1)
				n += (size_t)snprintf(leg->err + n, sizeof(leg->err) - n, "%s%s", n ? "; " : "", one);
		}
		if (n > 0)
			return;
	}
	if (dnserr != 0)
		snprintf(leg->err, sizeof(leg->err), "cannot resolve %s: %s", leg->addr, evutil_gai_strerror(dnserr));
	else if (sockerr != 0)
		snprintf(leg->err, sizeof(leg->err), "%s", evutil_socket_error_to_string(sockerr));
	else
		snprintf(leg->err, sizeof(leg->err), "%s", leg->tls ? "TLS error" : "connection error");
}
