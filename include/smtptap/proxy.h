/*
 * proxy.h - the proxy server: listeners, the event loop, signals and
 * graceful shutdown.  One process, one event loop thread (plus the store's
 * writer thread); sessions are in session.c.
 */
#ifndef SMTPTAP_PROXY_H
#define SMTPTAP_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "smtptap/store.h"
#include "smtptap/tls.h"

#define PROXY_LISTEN_MAX 16

struct rules;
struct recording;

/* TLS on a leg: off, auto (client leg: offer STARTTLS exactly when the
 * upstream does; upstream leg: STARTTLS when offered), STARTTLS, or TLS
 * from the first byte (implicit, RFC 8314). */
enum proxy_tls_mode {
	PROXY_TLS_OFF = 0,
	PROXY_TLS_AUTO,
	PROXY_TLS_STARTTLS,
	PROXY_TLS_IMPLICIT,
};
const char *proxy_tls_mode_name(enum proxy_tls_mode m); /* "off", ... */
/* Returns 0, or -1 for a word that is not a mode. */
int proxy_tls_mode_parse(const char *s, enum proxy_tls_mode *out);

/* One listener and where its sessions go. */
struct proxy_route {
	const char *listen;	   /* "ADDR:PORT" as given */
	const char *upstream;	   /* "HOST:PORT" as given, NULL = sink mode */
	char upstream_host[256];   /* split from upstream */
	char upstream_port[8];
	/* When the upstream host is a literal address, it is parsed once here
	 * and sessions connect without going through the resolver. */
	struct sockaddr_storage upstream_sa;
	int upstream_salen; /* 0: a host name, resolved per session */
	enum proxy_tls_mode client_tls;	  /* resolved: never AUTO in sink mode */
	enum proxy_tls_mode upstream_tls;
	/* `smtptap mock`: sink mode whose replies come from this recording
	 * (mock.h); NULL otherwise. */
	const struct recording *mock;
};

struct proxy_config {
	struct proxy_route routes[PROXY_LISTEN_MAX];
	size_t nroutes;
	struct tls_config tls;	  /* CA, certificate, verification, key log */
	const char *upstream_sni; /* --upstream-sni, NULL: the upstream host name */
	const char *db_path;
	struct store_options store; /* --retain, --max-db-size */
	bool redact_auth;
	int idle_timeout;    /* seconds a client may stay silent (RFC 5321: 5 min) */
	int reply_timeout;   /* seconds to wait for an upstream reply (RFC 5321: 10 min for DATA) */
	int connect_timeout; /* seconds to connect to the upstream */
	int grace;	     /* seconds sessions may finish after SIGTERM */
	int max_sessions;    /* concurrent sessions; the listeners pause beyond */
	int verbosity;	     /* -v: live transcript on stderr */
	/* --rules FILE: loaded (and checked) before anything listens, then
	 * again on SIGHUP; rules_seed is the seed of probability rules that
	 * name none (--rules-seed, else random and logged). */
	const char *rules_file;
	struct rules *rules; /* the first load, handed to the proxy */
	uint64_t rules_seed;
};

/* Zero *cfg and set the defaults every command that runs the proxy shares
 * (redaction on, RFC 5321's timeouts, upstream verification on); the
 * caller sets db_path and its routes. */
void proxy_config_init(struct proxy_config *cfg);

/* Run until SIGTERM/SIGINT and the grace period are over.  Returns 0 on a
 * clean stop, -1 if start-up failed or records could not be written to
 * the database (reason already printed). */
int proxy_run(const struct proxy_config *cfg);

#endif
