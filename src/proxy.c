/*
 * proxy.c - listeners, signals and the event loop; see proxy.h.
 *
 * Shutdown (SIGTERM/SIGINT): the listeners close at once so no new session
 * starts; running sessions get --grace seconds to finish on their own; then
 * whatever is left is closed.  Only after the loop ends is the store closed,
 * which drains its queue: a clean stop loses nothing.  A second signal skips
 * the rest of the grace period.
 */
#include "smtptap/proxy.h"
#include "smtptap/rules.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "smtptap/log.h"
#include "smtptap/recording.h"
#include "smtptap/session.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

struct proxy_listener {
	struct evconnlistener *lev;
	char name[UTIL_ADDR_MAX];
	const struct proxy_route *route;
	struct proxy *proxy;
};

struct proxy {
	const struct proxy_config *cfg;
	struct event_base *base;
	struct evdns_base *dns;
	struct store *store;
	struct tls *tls;
	struct session_ctx sessions;
	struct proxy_listener listeners[PROXY_LISTEN_MAX];
	size_t nlisteners;
	bool listeners_paused;
	struct event *sigterm, *sigint, *sighup, *grace_timer;
	bool stopping;
};

static int proxy_listen(struct proxy *px, const struct proxy_route *route);
static int proxy_tls_setup(struct proxy *px);
static void proxy_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
			    void *arg);
static void proxy_accept_error_cb(struct evconnlistener *lev, void *arg);
static void proxy_signal_cb(evutil_socket_t sig, short what, void *arg);
static void proxy_grace_cb(evutil_socket_t fd, short what, void *arg);
static void proxy_reload_cb(evutil_socket_t sig, short what, void *arg);
static void proxy_session_end_cb(void *arg);
static void proxy_listeners_enable(struct proxy *px, bool on);
static int proxy_free(struct proxy *px);
static struct event_base *proxy_base_new(void);

void
proxy_config_init(struct proxy_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->redact_auth = true;
	cfg->idle_timeout = 300;
	cfg->reply_timeout = 600;
	cfg->connect_timeout = 30;
	cfg->grace = 10;
	cfg->max_sessions = 1000;
	cfg->tls.upstream_verify = true;
}

int
proxy_run(const struct proxy_config *cfg)
{
	struct proxy px;
	char err[512];
	size_t i;
	int rc = -1;

	memset(&px, 0, sizeof(px));
	px.cfg = cfg;
	/* A client that vanishes must not kill the process with SIGPIPE. */
	signal(SIGPIPE, SIG_IGN);

	px.base = proxy_base_new();
	if (px.base == NULL) {
		log_warnx("cannot create the event loop");
		goto out;
	}
	for (i = 0; i < cfg->nroutes && px.dns == NULL; i++) {
		if (cfg->routes[i].upstream == NULL)
			continue;
		px.dns = evdns_base_new(px.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
		if (px.dns == NULL) {
			/* No resolv.conf: IP addresses and /etc/hosts still work. */
			px.dns = evdns_base_new(px.base, 0);
			if (px.dns == NULL) {
				log_warnx("cannot set up the DNS resolver");
				goto out;
			}
		}
	}
	px.store = store_open_opts(cfg->db_path, &cfg->store, err, sizeof(err));
	if (px.store == NULL) {
		log_warnx("cannot open the database %s: %s (use --db PATH)", cfg->db_path, err);
		goto out;
	}
	if (proxy_tls_setup(&px) < 0)
		goto out;
	if (session_ctx_init(&px.sessions, px.base, px.dns, px.store, px.tls, cfg) < 0) {
		log_warnx("cannot set up sessions: out of memory");
		goto out;
	}
	px.sessions.on_session_end = proxy_session_end_cb;
	px.sessions.arg = &px;
	if (cfg->rules != NULL)
		px.sessions.rules = rules_ref(cfg->rules);

	for (i = 0; i < cfg->nroutes; i++) {
		if (proxy_listen(&px, &cfg->routes[i]) < 0)
			goto out;
	}
	px.sigterm = evsignal_new(px.base, SIGTERM, proxy_signal_cb, &px);
	px.sigint = evsignal_new(px.base, SIGINT, proxy_signal_cb, &px);
	px.sighup = evsignal_new(px.base, SIGHUP, proxy_reload_cb, &px);
	px.grace_timer = evtimer_new(px.base, proxy_grace_cb, &px);
	if (px.sigterm == NULL || px.sigint == NULL || px.sighup == NULL || px.grace_timer == NULL ||
	    evsignal_add(px.sigterm, NULL) < 0 || evsignal_add(px.sigint, NULL) < 0 || evsignal_add(px.sighup, NULL) < 0) {
		log_warnx("cannot install signal handlers");
		goto out;
	}

	for (i = 0; i < px.nlisteners; i++) {
		const struct proxy_route *r = px.listeners[i].route;

		if (r->mock != NULL)
			log_info("listening on %s (mock of session %" PRId64 ", client TLS %s, recording to %s)",
				 px.listeners[i].name, r->mock->session_id, proxy_tls_mode_name(r->client_tls),
				 cfg->db_path);
		else if (r->upstream != NULL)
			log_info("listening on %s (relay to %s, client TLS %s, upstream TLS %s, recording to %s)",
				 px.listeners[i].name, r->upstream, proxy_tls_mode_name(r->client_tls),
				 proxy_tls_mode_name(r->upstream_tls), cfg->db_path);
		else
			log_info("listening on %s (sink mode, client TLS %s, recording to %s)", px.listeners[i].name,
				 proxy_tls_mode_name(r->client_tls), cfg->db_path);
	}
	if (event_base_dispatch(px.base) < 0) {
		log_warnx("event loop failed");
		goto out;
	}
	rc = 0;
out:
	/* Records that could not be written are lost data: not a clean stop. */
	if (proxy_free(&px) < 0)
		rc = -1;
	return rc;
}

/*
 * A relay re-arms write interest on nearly every callback (each forwarded
 * command or reply).  With epoll's changelist, an event deleted and added
 * again within one loop iteration costs no epoll_ctl(2) at all.  smtptap
 * never dup()s descriptors, the changelist's one caveat.
 */
static struct event_base *
proxy_base_new(void)
{
	struct event_config *ec = event_config_new();
	struct event_base *base;

	if (ec == NULL)
		return NULL;
	event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
	base = event_base_new_with_config(ec);
	event_config_free(ec);
	return base;
}

/*
 * TLS contexts only when a listener needs them: a client leg that may be
 * TLS needs the CA (created on first use) or --cert/--key; an upstream leg
 * that may be TLS needs the trust store.
 */
static int
proxy_tls_setup(struct proxy *px)
{
	const struct proxy_config *cfg = px->cfg;
	bool need_server = false, need_client = false;
	char err[512];
	size_t i;

	for (i = 0; i < cfg->nroutes; i++) {
		need_server |= cfg->routes[i].client_tls != PROXY_TLS_OFF;
		need_client |= cfg->routes[i].upstream != NULL && cfg->routes[i].upstream_tls != PROXY_TLS_OFF;
	}
	if (!need_server && !need_client)
		return 0;
	px->tls = tls_new(&cfg->tls, need_server, need_client, err, sizeof(err));
	if (px->tls == NULL) {
		log_warnx("TLS: %s", err);
		return -1;
	}
	return 0;
}

const char *
proxy_tls_mode_name(enum proxy_tls_mode m)
{
	switch (m) {
	case PROXY_TLS_OFF:
		return "off";
	case PROXY_TLS_AUTO:
		return "auto";
	case PROXY_TLS_STARTTLS:
		return "starttls";
	case PROXY_TLS_IMPLICIT:
		return "implicit";
	}
	return "?";
}

int
proxy_tls_mode_parse(const char *s, enum proxy_tls_mode *out)
{
	static const enum proxy_tls_mode modes[] = { PROXY_TLS_OFF, PROXY_TLS_AUTO, PROXY_TLS_STARTTLS,
						     PROXY_TLS_IMPLICIT };
	size_t i;

	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		if (strcmp(s, proxy_tls_mode_name(modes[i])) == 0) {
			*out = modes[i];
			return 0;
		}
	}
	return -1;
}

static int
proxy_listen(struct proxy *px, const struct proxy_route *route)
{
	const char *spec = route->listen;
	struct proxy_listener *pl = &px->listeners[px->nlisteners];
	struct addrinfo hints, *res = NULL;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[256], port[8], err[256];
	int gai;

	if (util_split_hostport(spec, host, sizeof(host), port, sizeof(port), err, sizeof(err)) < 0) {
		log_warnx("--listen %s", err);
		return -1;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	/* Start-up only: a blocking lookup is fine here. */
	gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
	if (gai != 0) {
		log_warnx("--listen %s: cannot resolve '%s': %s", spec, host, gai_strerror(gai));
		return -1;
	}
	pl->proxy = px;
	pl->route = route;
	pl->lev = evconnlistener_new_bind(px->base, proxy_accept_cb, pl,
					  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC, 1024,
					  res->ai_addr, (int)res->ai_addrlen);
	if (pl->lev == NULL) {
		log_warn("--listen %s: cannot listen", spec);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	evconnlistener_set_error_cb(pl->lev, proxy_accept_error_cb);
	/* With port 0 the kernel picked one: report the real address. */
	if (getsockname(evconnlistener_get_fd(pl->lev), (struct sockaddr *)&ss, &sl) == 0)
		util_format_addr((struct sockaddr *)&ss, pl->name, sizeof(pl->name));
	else
		snprintf(pl->name, sizeof(pl->name), "%s", spec);
	px->nlisteners++;
	return 0;
}

static void
proxy_accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	struct proxy_listener *pl = arg;
	struct proxy *px = pl->proxy;

	(void)lev;
	session_start(&px->sessions, fd, sa, salen, pl->route, pl->name);
	if (!px->listeners_paused && px->sessions.nsessions >= (size_t)px->cfg->max_sessions) {
		log_info("%zu sessions open (--max-sessions): not accepting until one ends",
			 px->sessions.nsessions);
		proxy_listeners_enable(px, false);
	}
}

/* accept(2) failing (EMFILE and the like) must not end the loop: log it
 * and keep serving the sessions we have. */
static void
proxy_accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct proxy_listener *pl = arg;

	(void)lev;
	log_warnx("accept on %s failed: %s", pl->name, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void
proxy_listeners_enable(struct proxy *px, bool on)
{
	size_t i;

	for (i = 0; i < px->nlisteners; i++) {
		if (px->listeners[i].lev == NULL)
			continue;
		if (on)
			evconnlistener_enable(px->listeners[i].lev);
		else
			evconnlistener_disable(px->listeners[i].lev);
	}
	px->listeners_paused = !on;
}

static void
proxy_session_end_cb(void *arg)
{
	struct proxy *px = arg;

	if (px->stopping) {
		if (px->sessions.nsessions == 0)
			event_base_loopexit(px->base, NULL);
		return;
	}
	if (px->listeners_paused && px->sessions.nsessions < (size_t)px->cfg->max_sessions)
		proxy_listeners_enable(px, true);
}

static void
proxy_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct proxy *px = arg;
	struct timeval grace = { px->cfg->grace, 0 };
	size_t i;

	(void)what;
	if (px->stopping) {
		log_info("second signal: closing %zu sessions now", px->sessions.nsessions);
		proxy_grace_cb(-1, 0, px);
		return;
	}
	px->stopping = true;
	for (i = 0; i < px->nlisteners; i++) {
		evconnlistener_free(px->listeners[i].lev);
		px->listeners[i].lev = NULL;
	}
	log_info("%s: not accepting; %zu sessions have %d s to finish", sig == SIGTERM ? "SIGTERM" : "SIGINT",
		 px->sessions.nsessions, px->cfg->grace);
	if (px->sessions.nsessions == 0) {
		event_base_loopexit(px->base, NULL);
		return;
	}
	evtimer_add(px->grace_timer, &grace);
}

/*
 * SIGHUP: read the rules file again.  The new set replaces the old in one
 * step, for sessions that begin from now on (a session keeps the set it
 * began with); a file that does not parse changes nothing.
 */
static void
proxy_reload_cb(evutil_socket_t sig, short what, void *arg)
{
	struct proxy *px = arg;
	struct rules *r;
	char err[4096];

	(void)sig;
	(void)what;
	if (px->cfg->rules_file == NULL) {
		log_info("SIGHUP: no --rules file to reload");
		return;
	}
	r = rules_load(px->cfg->rules_file, px->cfg->rules_seed, err, sizeof(err));
	if (r == NULL) {
		log_warnx("SIGHUP: %s has errors; the %zu rules loaded before stay in force:\n%s", px->cfg->rules_file,
			  px->sessions.rules ? rules_count(px->sessions.rules) : 0, err);
		return;
	}
	if (px->sessions.rules != NULL)
		rules_unref(px->sessions.rules);
	px->sessions.rules = r;
	log_info("SIGHUP: %zu rules reloaded from %s (for new sessions)", rules_count(r), px->cfg->rules_file);
}

static void
proxy_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proxy *px = arg;

	(void)fd;
	(void)what;
	session_ctx_close_all(&px->sessions);
	event_base_loopexit(px->base, NULL);
}

/* Returns -1 if the store reported lost records. */
static int
proxy_free(struct proxy *px)
{
	size_t i;
	int rc = 0;

	for (i = 0; i < px->nlisteners; i++) {
		if (px->listeners[i].lev != NULL)
			evconnlistener_free(px->listeners[i].lev);
	}
	px->stopping = true; /* session ends must not touch listeners now */
	if (px->sessions.backlog_timer != NULL)
		session_ctx_free(&px->sessions);
	if (px->tls != NULL) {
		struct tls_stats st;

		tls_stats_get(px->tls, &st);
		if (st.handshakes_client + st.handshakes_upstream > 0)
			log_info("tls: %" PRIu64 " client and %" PRIu64 " upstream handshakes; certificates forged "
				 "%" PRIu64 ", cache hits %" PRIu64,
				 st.handshakes_client, st.handshakes_upstream, st.forged, st.cache_hits);
		tls_free(px->tls);
		px->tls = NULL;
	}
	if (px->store != NULL && store_close(px->store) < 0) {
		log_warnx("some records could not be written to %s (see above)", px->cfg->db_path);
		rc = -1;
	}
	if (px->sigterm != NULL)
		event_free(px->sigterm);
	if (px->sigint != NULL)
		event_free(px->sigint);
	if (px->sighup != NULL)
		event_free(px->sighup);
	if (px->sessions.rules != NULL)
		rules_unref(px->sessions.rules);
	px->sessions.rules = NULL;
	if (px->grace_timer != NULL)
		event_free(px->grace_timer);
	if (px->dns != NULL)
		evdns_base_free(px->dns, 1);
	if (px->base != NULL)
		event_base_free(px->base);
	return rc;
}
