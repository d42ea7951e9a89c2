/*
 * session.h - one client connection and its upstream connection.
 *
 * A session owns two legs (client, upstream; see leg.h), and keeps the SMTP
 * conversation between them; it never touches a socket itself.  Client bytes are parsed as commands, DATA/BDAT message content or AUTH
 * responses; upstream bytes as replies, matched in order against a FIFO of
 * commands awaiting a reply (so PIPELINING works).  Everything either peer
 * sends is recorded through the store before it is forwarded unchanged.
 * In sink mode there is no upstream leg: sink.c writes the replies, which
 * then take the same path.
 *
 * Lifetime: created by the proxy's accept callback, freed by itself once
 * both legs are closed (never from inside a callback further up the stack).
 */
#ifndef SMTPTAP_SESSION_H
#define SMTPTAP_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/util.h>

#include "smtptap/proxy.h"

struct store;
struct rules;
struct tls;
struct evdns_base;
struct bufferevent;
struct session;

/* What all sessions of one proxy share; owned by the proxy. */
struct session_ctx {
	struct event_base *base;
	struct evdns_base *dns;
	struct store *store;
	struct tls *tls; /* NULL when no listener uses TLS */
	const struct proxy_config *cfg;
	TAILQ_HEAD(session_list, session) sessions;
	size_t nsessions;
	uint64_t sessions_started; /* numbers sessions for rules (`session 1-2`) */
	/* Fault rules (a reference; NULL: none).  The proxy swaps the set on
	 * SIGHUP; a session keeps the set it began with. */
	struct rules *rules;
	/* Sessions paused because the store's backlog is too high are resumed
	 * by this timer once it has drained. */
	struct event *backlog_timer;
	size_t npaused_backlog;
	/* Called after a session is freed (the proxy re-enables listeners and
	 * ends the loop during shutdown). */
	void (*on_session_end)(void *arg);
	void *arg;
};

int session_ctx_init(struct session_ctx *ctx, struct event_base *base, struct evdns_base *dns,
		     struct store *store, struct tls *tls, const struct proxy_config *cfg);
void session_ctx_free(struct session_ctx *ctx);

/* Take over a socket accepted by `route`'s listener (named `listener`,
 * its actual address).  A route with a mock (proxy.h) makes a mock
 * session.  Returns 0, or -1 (the socket is closed). */
int session_start(struct session_ctx *ctx, evutil_socket_t fd, const struct sockaddr *peer, int peerlen,
		  const struct proxy_route *route, const char *listener);

/* What makes a session other than an ordinary client connection: replay
 * (replay.c) starts one whose client is the recording. */
struct session_origin {
	const char *mode;      /* sessions.mode: "replay", "mock"; NULL: "relay" or "sink" */
	int64_t replay_of;     /* the recorded session it replays, 0 none */
	/* The recorded client sends STARTTLS itself: with --upstream-tls
	 * starttls, its STARTTLS upgrades the upstream leg (no prelude). */
	bool client_starttls;
	/* Called once the session is freed, with its outcome (static) and
	 * its one-line detail ("" none; valid during the call). */
	void (*on_end)(void *arg, int64_t id, const char *outcome, const char *detail);
	void *arg;
};

/*
 * A session whose client is in this process: bev is one end of a
 * bufferevent pair (the caller writes the client's bytes into the other
 * end and reads the replies from it).  The client leg never speaks TLS: a
 * client STARTTLS upgrades the upstream leg only, and the client side goes
 * on in plaintext once the 220 is through.  Takes bev over, even on
 * failure.  Returns 0 with the new session's id in *id, or -1.
 */
int session_start_inproc(struct session_ctx *ctx, struct bufferevent *bev, const char *name,
			 const struct proxy_route *route, const struct session_origin *origin, int64_t *id);

/* Shutdown: close every session now (their outcome is "shutdown"). */
void session_ctx_close_all(struct session_ctx *ctx);

#endif
