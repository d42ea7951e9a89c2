/*
 * proxy.h - the proxy server: listeners, the event loop, signals and
 * graceful shutdown.  One process, one event loop thread (plus the store's
 * writer thread); sessions are in session.c.
 */
#ifndef SMTPTAP_PROXY_H
#define SMTPTAP_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define PROXY_LISTEN_MAX 16

struct proxy_config {
	const char *listen[PROXY_LISTEN_MAX]; /* "ADDR:PORT" specs */
	size_t nlisten;
	const char *upstream;	   /* "HOST:PORT" as given, NULL = sink mode */
	char upstream_host[256];   /* split from upstream */
	char upstream_port[8];
	/* When the upstream host is a literal address, it is parsed once here
	 * and sessions connect without going through the resolver. */
	struct sockaddr_storage upstream_sa;
	int upstream_salen; /* 0: a host name, resolved per session */
	const char *db_path;
	bool redact_auth;
	int idle_timeout;    /* seconds a client may stay silent (RFC 5321: 5 min) */
	int reply_timeout;   /* seconds to wait for an upstream reply (RFC 5321: 10 min for DATA) */
	int connect_timeout; /* seconds to connect to the upstream */
	int grace;	     /* seconds sessions may finish after SIGTERM */
	int max_sessions;    /* concurrent sessions; the listeners pause beyond */
	int verbosity;	     /* -v: live transcript on stderr */
};

/* Run until SIGTERM/SIGINT and the grace period are over.  Returns 0 on a
 * clean stop, -1 if start-up failed or records could not be written to
 * the database (reason already printed). */
int proxy_run(const struct proxy_config *cfg);

#endif
