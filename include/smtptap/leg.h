/*
 * leg.h - one peer connection of a session: the client's or the upstream's.
 *
 * A leg owns everything between the session and the wire: its bufferevent
 * (a plain socket, or OpenSSL once upgraded), the socket itself, bounds on
 * what it reads at once, the direct write of plain sockets, the upgrade to
 * TLS in place (STARTTLS, or implicit TLS right after connect/accept), how
 * it closes (FIN after the output is flushed, at once, or RST) and the text
 * of its last error, OpenSSL's error queue included.  The session sees
 * bytes and a handful of events; it never touches a socket.
 *
 * Ownership: the leg owns the socket from leg_accept()/leg_connect() to
 * leg_close(), and an SSL from leg_start_tls() on.  A leg is embedded in
 * its session; leg_close() may be called from inside the leg's own
 * callback (libevent keeps the bufferevent alive until the callback
 * returns).
 */
#ifndef SMTPTAP_LEG_H
#define SMTPTAP_LEG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <event2/util.h>
#include <openssl/ssl.h>

#include "smtptap/util.h"

struct evbuffer;
struct evdns_base;
struct bufferevent;
struct leg;

enum leg_event {
	LEG_EV_CONNECTED = 0, /* the outgoing TCP connection is up */
	LEG_EV_TLS_DONE,      /* the TLS handshake finished */
	LEG_EV_READ,	      /* new bytes in leg_input() */
	LEG_EV_DRAINED,	      /* the output fell below the low mark */
	LEG_EV_EOF,	      /* the peer closed its side */
	LEG_EV_ERROR,	      /* socket, resolver or TLS error: leg_error() */
	LEG_EV_TIMEOUT_READ,  /* the peer was silent for the read timeout */
	LEG_EV_TIMEOUT_WRITE, /* the peer stopped reading (or connecting timed out) */
};

typedef void (*leg_cb)(struct leg *leg, enum leg_event ev, void *arg);

enum leg_close_how {
	LEG_CLOSE_NOW = 0, /* close at once; unsent output is lost */
	LEG_CLOSE_RESET,   /* an RST instead of a FIN (SO_LINGER 0) */
};

#define LEG_ERR_MAX 320

struct leg {
	struct bufferevent *bev;
	struct event_base *base;
	evutil_socket_t fd;	/* -1 until known (an outgoing leg learns it at connect) */
	bool open;		/* bev is live */
	bool tls;		/* bev is OpenSSL */
	bool tls_accept;	/* ... on the server side (the client leg) */
	bool handshaking;	/* between leg_start_tls() and LEG_EV_TLS_DONE */
	bool hold_output;	/* plain leg: keep output until leg_start_tls() */
	bool close_after_flush; /* close once the output is empty */
	bool reset_on_close;	/* leg_reset_after_flush(): no close_notify, an RST */
	bool reading;		/* EV_READ wanted by the session */
	bool inproc;		/* one end of a bufferevent pair: no socket, never TLS */
	uint64_t nqueued;	/* bytes queued for the peer so far (leg_write, leg_write_from) */
	int64_t tls_started_us;
	unsigned long tls_error; /* first OpenSSL error of the last failure, 0 none */
	int read_timeout, write_timeout; /* seconds, 0 none */
	char addr[UTIL_ADDR_MAX];	  /* the peer's address */
	char err[LEG_ERR_MAX];		  /* the last error, one line */
	struct evbuffer *stage; /* TLS: output of this callback, see leg_flush */
	/* leg_set_rate(): the leg's own token buckets, refilled each tenth
	 * of a second by rate_timer, the same for a plain and a TLS leg
	 * (libevent's rate limits misbehave on its OpenSSL bufferevents).
	 * Reads: what the socket gives waits in the bufferevent's input and
	 * reaches `inq` (what leg_input() returns) a tick's worth at a time,
	 * so even a TLS record decrypted whole is handed on at the rate.
	 * Writes: output waits in `paced` and goes on a tick's worth at a
	 * time. */
	uint64_t rate_rd, rate_wr;	/* bytes per second, 0: unlimited */
	int64_t tok_rd, tok_wr;
	bool rd_blocked;
	struct evbuffer *paced;
	struct evbuffer *inq;
	struct event *rate_timer;
	leg_cb cb;
	void *arg;
};

/* Bounds of every leg.  Reading stops at LEG_INPUT_HIGH buffered bytes;
 * the session stops feeding a leg whose output is above LEG_OUTPUT_HIGH
 * and resumes at LEG_EV_DRAINED (below LEG_OUTPUT_LOW). */
#define LEG_INPUT_HIGH (256 * 1024)
#define LEG_OUTPUT_HIGH (1024 * 1024)
#define LEG_OUTPUT_LOW (256 * 1024)
#define LEG_READ_MAX (64 * 1024)
#define LEG_TLS_RECORD (16 * 1024) /* staged output up to this is one record */

/* Take over an accepted socket (plain; leg_start_tls() for implicit TLS).
 * Reading starts disabled.  Returns 0, or -1 (the socket is closed). */
int leg_accept(struct leg *leg, struct event_base *base, evutil_socket_t fd, const struct sockaddr *peer,
	       leg_cb cb, void *arg);

/*
 * Take over one end of a bufferevent pair (bufferevent_pair_new): a peer
 * in the same process, such as replay's recorded client.  `name` is what
 * stands for its address.  Bytes cross the pair as they are queued (no
 * socket, no flush needed); the leg never upgrades to TLS; closing it
 * tells the other end with an EOF.  The leg owns bev from now on, even on
 * failure.  Returns 0, or -1.
 */
int leg_pair(struct leg *leg, struct event_base *base, struct bufferevent *bev, const char *name, leg_cb cb,
	     void *arg);

/*
 * Connect to sa (salen > 0), or resolve host through dns first.  Events:
 * LEG_EV_CONNECTED, or LEG_EV_ERROR / LEG_EV_TIMEOUT_WRITE (leg_error()
 * says why: "connection refused", "cannot resolve ...", ...).  May report
 * a failure before returning.  Returns 0, or -1 when out of memory.
 */
int leg_connect(struct leg *leg, struct event_base *base, struct evdns_base *dns, const struct sockaddr *sa,
		int salen, const char *host, int port, int timeout_s, leg_cb cb, void *arg);

/*
 * Upgrade to TLS in place: accept (client leg) or connect (upstream leg)
 * with `ssl`, which the leg owns from now on, even on failure.  Unread
 * plaintext input is discarded (the caller records it first); output not
 * yet written goes out encrypted after the handshake.  LEG_EV_TLS_DONE or
 * LEG_EV_ERROR follow.  The read timeout bounds the handshake.
 * Returns 0, or -1 (leg_error() says why; the leg is still plain).
 */
int leg_start_tls(struct leg *leg, SSL *ssl, bool accept);
SSL *leg_ssl(struct leg *leg); /* NULL unless TLS */

struct evbuffer *leg_input(struct leg *leg);
/* A throttled leg: hand everything already read to leg_input() now (the
 * session ends, and reads what is left to record it). */
void leg_input_all(struct leg *leg);
size_t leg_output_len(struct leg *leg);
/* Queue bytes for the peer (nothing happens on a closed leg). */
void leg_write(struct leg *leg, const void *data, size_t len);
/* Move len bytes (all: (size_t)-1) from src to the output, without copying. */
void leg_write_from(struct leg *leg, struct evbuffer *src, size_t len);
/* Write queued output now: one writev(2) on a plain socket; on a TLS leg,
 * hand what the callback queued to OpenSSL at once (one record when it is
 * small).  The session calls it at the end of every callback. */
void leg_flush(struct leg *leg);
/* Forget output not yet written (what was meant to go out under TLS, on a
 * handshake that will not happen). */
void leg_drop_output(struct leg *leg);

void leg_set_reading(struct leg *leg, bool on);
/* Seconds (0: none). */
void leg_set_timeouts(struct leg *leg, int read_s, int write_s);

/*
 * Throttle the leg: at most read_bps bytes per second read from the peer
 * and write_bps written to it (0: unlimited), from now on and across a TLS
 * upgrade.  Fault rules use it to play a slow network.  Returns 0, or -1
 * when out of memory (the leg is then unchanged).
 */
int leg_set_rate(struct leg *leg, uint64_t read_bps, uint64_t write_bps);

void leg_close(struct leg *leg, enum leg_close_how how);
/* Close once the output is flushed (reading stops now). */
void leg_close_after_flush(struct leg *leg);
/* The same, ending with an RST instead of a FIN. */
void leg_reset_after_flush(struct leg *leg);

const char *leg_error(const struct leg *leg);

#endif
