/*
 * session_int.h - what the files of the session share; private to them.
 *
 * The session is split along its seams:
 *   session.c         lifetime, recording, timeouts, flow control, the legs'
 *                     events, how a session ends
 *   session_client.c  the client's input: commands, DATA, BDAT, AUTH lines
 *   session_reply.c   replies (upstream's, sink's, smtptap's own) and the
 *                     FIFO of commands awaiting one
 *   session_tx.c      the transaction being built: envelope and messages
 *   session_tls.c     TLS on either leg: implicit, STARTTLS, the upstream
 *                     prelude, verification, what is recorded of it
 * No other file includes this header.
 */
#ifndef SMTPTAP_SESSION_INT_H
#define SMTPTAP_SESSION_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "smtptap/leg.h"
#include "smtptap/mime.h"
#include "smtptap/session.h"
#include "smtptap/sink.h"
#include "smtptap/smtp.h"
#include "smtptap/store.h"

#define PEND_MAX 256		    /* commands awaiting a reply */
#define REPLY_MAX (256 * 1024)	    /* bytes in one (multi-line) reply */
#define RCPT_MAX 10000		    /* recipients remembered per transaction ... */
#define ENV_BYTES_MAX (1024 * 1024) /* ... and bytes of their addresses and parameters */
#define MIME_SLICE 8192		    /* unstuffed bytes handed to mime at once */
#define REPLY_TEXT_MAX 4096	    /* reply text kept with a message/recipient */
#define BACKLOG_POLL_MS 10

enum session_state {
	ST_CONNECTING = 0, /* upstream not ready yet (connect, TLS, prelude): client bytes wait */
	ST_CMD,		   /* client lines are commands */
	ST_HOLD,	   /* waiting for the reply that decides what comes next */
	ST_DATA,	   /* DATA content until the terminator */
	ST_BDAT,	   /* exactly bdat_left bytes of a BDAT chunk */
	ST_AUTH,	   /* the next client line answers a 334 */
	ST_TLS,		   /* STARTTLS under way: client input is not read */
	ST_CLOSING,	   /* client input is no longer interpreted */
};

enum pend_kind {
	PEND_GREETING = 0,
	PEND_COMMAND,	      /* an ordinary command; verb says which */
	PEND_DATA_END,	      /* the final reply to a DATA stream */
	PEND_AUTH_LINE,	      /* the reply to an AUTH response line */
	PEND_LOCAL,	      /* smtptap answers itself: text */
	PEND_STARTTLS,	      /* the client's STARTTLS, passed to the upstream */
	PEND_PRELUDE_EHLO,    /* smtptap's own EHLO before upgrading the upstream */
	PEND_PRELUDE_STARTTLS /* smtptap's own STARTTLS */
};

struct msg;

struct pending {
	enum pend_kind kind;
	enum smtp_verb verb;
	bool bdat_last;
	bool local_starttls; /* PEND_LOCAL: upgrade the client leg after it */
	uint32_t env_gen;    /* envelope generation the RCPT belongs to */
	uint32_t rcpt_idx;
	const char *text;    /* PEND_LOCAL: the reply (static storage) */
	struct msg *msg;     /* owned: a message awaiting its final reply */
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
	bool complete;	  /* the content ended properly (terminator / BDAT LAST) */
	unsigned noted;	  /* bare LF/CR/NUL already noted in the transcript */
	uint64_t size;	  /* unstuffed bytes */
	struct smtp_data data;
	bool early_reply; /* BDAT LAST answered before its bytes were through */
	int reply_code;
	char *reply;
	struct mime_hdr_parser mime; /* large: keep last */
};

/* Where the client leg's TLS stands. */
enum client_tls_step {
	CTLS_NONE = 0,	    /* plaintext, no upgrade planned */
	CTLS_WAIT_UPSTREAM, /* implicit: waiting to learn the upstream's certificate */
	CTLS_AFTER_FLUSH,   /* STARTTLS: upgrade once the 220 is written */
	CTLS_HANDSHAKE,	    /* handshake running */
	CTLS_ON,	    /* established */
};

/*
 * Message data waiting to become one event (session_record): a client's
 * DATA stream or BDAT chunk arrives a read at a time, often 4 KiB, and a
 * row per read made a 1 MiB message cost ~260 rows.  Consecutive data of
 * one message is gathered up to SESSION_DATA_EVENT_MAX bytes and recorded
 * as one event, with the time its first byte arrived.  It is recorded
 * before any other event of the session, before the message's end, when
 * full, and at the latest SESSION_DATA_WAIT_MS after its first byte (a
 * stalled client), so it costs a kill -9 no more than the store's own
 * batching does.
 */
#define SESSION_DATA_EVENT_MAX (256u * 1024)
/* A record's first size.  Most messages are small: starting at 16 KiB,
 * shrunk once filled, fragmented the heap (peak RSS on make bench's B
 * 39-40 MB, against 25-27 MB at 4 KiB, same CPU). */
#define SESSION_DATA_EVENT_MIN (4u * 1024)
#define SESSION_DATA_WAIT_MS 100
struct data_pend {
	int64_t msg_id; /* 0: nothing pending */
	int64_t t_us;
	enum store_side side;
	unsigned flags;
	struct store_data *rec; /* queued as is once full or flushed */
	size_t len, cap;
	size_t next_cap; /* room the next record starts with */
	struct event *timer; /* SESSION_DATA_WAIT_MS after the first byte */
};

struct session {
	TAILQ_ENTRY(session) entry;
	struct session_ctx *ctx;
	const struct proxy_route *route;
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

	struct envelope env;
	int nmsgs;
	struct data_pend dpend; /* message data not yet recorded */
	struct msg *cur_msg; /* receiving content now */
	uint64_t bdat_left;  /* bytes left in the current BDAT chunk */
	bool bdat_cur_last;
	uint64_t bdat_cur_size;

	/* TLS (session_tls.c) */
	enum proxy_tls_mode client_tls, upstream_tls; /* as configured for this listener */
	enum client_tls_step ctls;
	bool client_tls_implicit;  /* the client leg's upgrade is implicit TLS */
	bool upstream_tls_on;	   /* handshake done on the upstream leg */
	bool upstream_tls_implicit;
	bool upstream_offers_starttls; /* in the upstream's latest EHLO reply */
	bool prelude;		   /* smtptap's own EHLO/STARTTLS to the upstream */
	struct evbuffer *held_greeting; /* the upstream's greeting, held during the prelude */
	X509 *upstream_cert;	   /* owned: mirrored in the forged leaf */

	bool upstream_connected; /* TCP up (and TLS, when implicit) */
	bool upstream_ready;	 /* the client may be served (greeting passed on) */
	bool spoke;		 /* the client has sent a command */
	bool quit_sent, quit_ok;
	bool paused_backlog;
	bool freeing;
	int in_callback;
	const char *outcome; /* static string: first cause wins */
	char detail[256];
};

/* session.c */
void session_enter(struct session *s);
void session_leave(struct session *s);
void session_enter_state(struct session *s, enum session_state st);
void session_set_outcome(struct session *s, const char *outcome, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void session_record(struct session *s, enum store_side side, enum store_kind kind, unsigned flags,
		    int64_t msg_id, const void *raw, size_t len, const char *text);
void session_note(struct session *s, enum store_kind kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void session_data_flush(struct session *s);
void session_data_release(struct session *s);
void session_update_reading(struct session *s);
void session_update_timeouts(struct session *s);
void session_fail_client(struct session *s, const char *reply, const char *outcome, const char *detail);
void session_inject_client(struct session *s, const char *text, size_t len);
void session_inject_upstream(struct session *s, const char *text, size_t len);
void session_close_legs(struct session *s);

/* session_client.c */
void session_client_process(struct session *s);
void session_client_leftover(struct session *s, bool forward);
void session_client_discard(struct session *s, const char *why);

/* session_reply.c */
struct pending *session_pend_push(struct session *s, enum pend_kind kind, enum smtp_verb verb);
int session_pend_pop(struct session *s, struct pending *out);
void session_upstream_lines(struct session *s);
void session_upstream_tail(struct session *s);
void session_sink_answer(struct session *s, const char *text, size_t len);
void session_pend_flush_local(struct session *s);
void session_local_push(struct session *s, const char *text, bool starttls);
void session_greeting_release(struct session *s);

/* session_tx.c */
void session_env_reset(struct session *s);
void session_env_add_mail(struct session *s, const struct smtp_cmd *cmd, const char *line, size_t len);
void session_env_add_rcpt(struct session *s, struct pending *p, const struct smtp_cmd *cmd, const char *line,
			  size_t len);
void session_env_rcpt_reply(struct session *s, const struct pending *p, int code, const char *raw, size_t len);
struct msg *session_msg_new(struct session *s, bool bdat);
void session_msg_open(struct session *s, struct msg *m);
void session_msg_close(struct session *s, struct msg *m, int code, const char *reply);
void session_msg_feed(struct msg *m, const char *p, size_t len);
void session_msg_abandon(struct session *s);
char *session_reply_text(const char *raw, size_t len);

/* session_tls.c */
void session_tls_start(struct session *s);
void session_tls_start_client(struct session *s);
void session_tls_upstream_connected(struct session *s);
void session_tls_leg_done(struct session *s, struct leg *leg);
void session_tls_leg_failed(struct session *s, struct leg *leg);
void session_tls_client_drained(struct session *s);
void session_tls_client_starttls(struct session *s, struct evbuffer *in, const char *line, size_t len);
bool session_tls_reply(struct session *s, const struct pending *p, struct evbuffer *reply, int code);
bool session_tls_ehlo_rewrite(struct session *s, struct evbuffer *reply, struct evbuffer *out);
void session_tls_free(struct session *s);

#endif
