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
#include <sys/socket.h>

#include <openssl/x509.h>

#include "smtptap/leg.h"
#include "smtptap/mock.h"
#include "smtptap/rules.h"
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
#define RCPT_TEXT_MAX 4096	    /* of an address (or its parameters) kept with a recipient */
#define AUTH_MECH_MAX 64	    /* AUTH mechanism and user name kept in the summary */
#define AUTH_USER_MAX 512
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
	PEND_PRELUDE_STARTTLS, /* smtptap's own STARTTLS */
	PEND_SILENT	       /* smtptap's own command (a rule's RSET or "*"): reply recorded, not passed on */
};

/* What a session does after a reply a rule produced or changed. */
enum rule_after {
	RULE_AFTER_NONE = 0,
	RULE_AFTER_CLOSE, /* close the client once the reply is out */
	RULE_AFTER_RESET, /* reset the client once the reply is out */
};

/* What a rule is holding back until its delay is over. */
enum rule_hold {
	RHOLD_NONE = 0,
	RHOLD_CONNECT,	     /* the session's start (upstream connection, sink greeting) */
	RHOLD_COMMAND,	     /* the command at the head of the client's input */
	RHOLD_DATA_END,	     /* the last bytes of a message (rhold_bytes at the head of the input) */
	RHOLD_REPLY,	     /* the complete reply in reply_buf */
	RHOLD_TLS_CLIENT,    /* the client leg's handshake */
	RHOLD_TLS_UPSTREAM,  /* the upstream leg's handshake */
};

/* How a session answers once a rule took its upstream away. */
enum rule_detached {
	DETACHED_NO = 0,
	DETACHED_REFUSED, /* a connect rule replied in place of the greeting: 503 to all but QUIT */
	DETACHED_ABORTED, /* the upstream was reset to drop a message: 421 to all but RSET/NOOP/QUIT */
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
	char *owned_text;    /* PEND_LOCAL: the reply, owned (a rule's) */
	enum rule_after after; /* PEND_LOCAL: then close or reset the client */
	bool by_rule;	     /* PEND_LOCAL: a rule's reply */
	int64_t cause_seq;   /* PEND_LOCAL: the event that caused the reply (a rule's firing) */
	int64_t rule_seq;    /* rule: the event saying it fired */
	struct rules_decision *rule; /* owned: a rule's rewrite/truncate/strip of this reply */
	struct msg *msg;     /* owned: a message awaiting its final reply */
	/* The event the reply will answer (its answers_seq): by default the
	 * event recorded just before the push, as callers record the command
	 * first; set explicitly where that is not so. */
	int64_t cmd_seq;
	/* MAIL, RCPT: the transaction's idx (0: none); RCPT: the recipient,
	 * written to the store when the reply arrives (session_env_rcpt_reply)
	 * or when the session ends without one (session_pend_release). */
	int tx_idx;
	uint32_t tx_rcpt_idx;
	char *rcpt_address, *rcpt_params; /* owned */
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
	/* its transaction's row, written once: at the MAIL reply, or at the
	 * reset when none came first (session_tx.c) */
	int64_t started_us, mail_seq;
	bool written;
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
	int64_t end_seq;  /* DATA: the last data event, which the final reply answers */
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
	struct sockaddr_storage client_sa;
	char helo[256]; /* the client's latest HELO/EHLO name */
	struct leg client, upstream;
	bool sink_mode;
	struct sink sink;
	struct mock *mock; /* sink mode playing a recording (mock.c): owned */
	enum session_state state;

	struct pending pend[PEND_MAX];
	size_t pend_head, pend_len;

	struct evbuffer *reply_buf; /* reply lines collected so far */

	struct envelope env;
	int tx_idx;	     /* the transaction MAIL started (0: none), see session_tx.c */
	int ntx;	     /* transactions so far */
	uint32_t tx_nrcpts;  /* RCPT commands in the current transaction */
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

	/* fault rules (session_rules.c); rules NULL: none loaded */
	struct rules *rules;	       /* a reference: the set current when the session began */
	struct rules_session *rules_st;
	uint64_t session_no;	       /* 1, 2, ... since the proxy started */
	struct rules_decision *rdec;   /* scratch for a decision (owned) */
	struct rules_decision *rattach; /* owned: to go with the next pending entry */
	enum rule_hold rhold;
	bool rresume;		       /* the held unit's delay is over: carry out rheld */
	struct rules_decision *rheld;  /* owned: the decision of the held unit */
	size_t rhold_bytes;	       /* RHOLD_DATA_END: bytes withheld; RHOLD_COMMAND: the line's length */
	struct msg *rhold_msg;	       /* RHOLD_DATA_END: the message (owned while held) */
	bool rhold_bdat;
	int rhold_code;		       /* RHOLD_REPLY: the reply's code and side */
	enum store_side rhold_side;
	struct event *rtimer;	       /* delays */
	bool stalled;		       /* a rule stalled the conversation: no more input is interpreted */
	uint64_t rate_up, rate_down;   /* a throttle rule's bytes/s towards each side, 0: none */
	bool bdat_discard;	       /* a rule answered this BDAT: its chunk goes nowhere */
	enum rule_detached detached;
	int64_t rule_seq;	       /* the event of the latest rule firing */
	int64_t rule_unit_seq;	       /* ... and of the unit it fired on */
	unsigned fail_client_tls;      /* rule line that fails the client's handshake, 0 none */
	/* A rule that fired on a STARTTLS which goes on: its action event is
	 * recorded once session_tls.c has recorded the command (borrowed:
	 * rdec or rheld). */
	const struct rules_decision *rfire_starttls;

	/* replay and mock (struct session_origin) */
	const char *mode;	     /* sessions.mode (static) */
	int64_t replay_of;
	bool inproc;		     /* the client leg is in this process: never TLS */
	bool replay_client_starttls; /* see session_origin.client_starttls */
	void (*on_end)(void *arg, int64_t id, const char *outcome, const char *detail);
	void *end_arg;

	/* STORE_F_PIPELINED: the callback (cb_gen counts the outermost
	 * ones) and the bytes queued to the client at the client's latest
	 * event; a command in the same callback, or with nothing queued to
	 * the client since, was sent without waiting for a reply. */
	uint64_t cb_gen, client_gen, client_queued;
	bool client_said;

	bool freeing;
	/* The AUTH exchange in progress (or last): its mechanism, upper
	 * case, and the user name once decoded (summary, and rules on its
	 * replies: `on reply auth user ~ ...`, a LOGIN user named after the
	 * command).  auth_user_next: the next response line names the user
	 * (LOGIN or PLAIN without an initial response, CRAM-MD5, XOAUTH2). */
	char auth_mech[AUTH_MECH_MAX];
	char auth_user[AUTH_USER_MAX];
	bool auth_user_next;
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
/* Record an event; returns its seq.  The _link form also says which
 * event it answers (a reply) and which caused it (what smtptap did), 0 for
 * none; see events.answers_seq and cause_seq in sql/002_schema2.sql. */
int64_t session_record(struct session *s, enum store_side side, enum store_kind kind, unsigned flags,
		       int64_t msg_id, const void *raw, size_t len, const char *text);
int64_t session_record_link(struct session *s, int64_t answers_seq, int64_t cause_seq, enum store_side side,
			    enum store_kind kind, unsigned flags, int64_t msg_id, const void *raw, size_t len,
			    const char *text);
int64_t session_note(struct session *s, enum store_kind kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
int64_t session_note_cause(struct session *s, int64_t cause_seq, enum store_kind kind, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* AUTH: record its mechanism and, when it can be decoded, its user name
 * (never the password) in the session's summary. */
void session_auth_command(struct session *s, const struct smtp_cmd *cmd);
void session_auth_line(struct session *s, const char *line, size_t len);
/* Message data is gathered into events of up to SESSION_DATA_EVENT_MAX
 * bytes; flush records what was gathered (returns its seq, 0 if none). */
int64_t session_data_flush(struct session *s);
void session_data_release(struct session *s);
void session_update_reading(struct session *s);
void session_update_timeouts(struct session *s);
void session_fail_client(struct session *s, const char *reply, const char *outcome, const char *detail);
void session_inject_client(struct session *s, const char *text, size_t len);
void session_inject_client_flags(struct session *s, const char *text, size_t len, unsigned flags);
int64_t session_inject_client_link(struct session *s, const char *text, size_t len, int64_t answers_seq,
				   int64_t cause_seq);
int64_t session_inject_client_link_flags(struct session *s, const char *text, size_t len, int64_t answers_seq,
					 int64_t cause_seq, unsigned flags);
void session_inject_upstream(struct session *s, const char *text, size_t len);
int64_t session_inject_upstream_cause(struct session *s, const char *text, size_t len, int64_t cause_seq);
void session_close_legs(struct session *s);

/* session_client.c */
void session_client_process(struct session *s);
void session_client_leftover(struct session *s, bool forward);
void session_client_discard(struct session *s, const char *why);
void session_client_data_end_resume(struct session *s);

/* session_reply.c */
struct pending *session_pend_push(struct session *s, enum pend_kind kind, enum smtp_verb verb);
int session_pend_pop(struct session *s, struct pending *out);
void session_upstream_lines(struct session *s);
void session_upstream_tail(struct session *s);
void session_sink_answer(struct session *s, const char *text, size_t len);
/* smtptap's own replies in sink mode: the sink's, or the recording's
 * (mock).  Each fills r (made before the client's bytes move on, as they
 * may point into them); session_respond_send then records the mock's
 * note on a mismatch (caused by cause_seq) and answers. */
void session_respond_greeting(struct session *s, struct mock_reply *r);
void session_respond_command(struct session *s, const struct smtp_cmd *cmd, const char *line, size_t len,
			     struct mock_reply *r);
void session_respond_auth_line(struct session *s, const char *line, size_t len, struct mock_reply *r);
void session_respond_data_end(struct session *s, uint64_t size, struct mock_reply *r);
void session_respond_bdat_chunk(struct session *s, const struct smtp_cmd *cmd, struct mock_reply *r);
void session_respond_send(struct session *s, struct mock_reply *r, int64_t cause_seq);
void session_pend_flush_local(struct session *s);
void session_local_push(struct session *s, const char *text, bool starttls);
void session_local_push_answer(struct session *s, const char *text, bool starttls, int64_t answers_seq);
void session_greeting_release(struct session *s);
void session_reply_resume(struct session *s);

/* session_tx.c */
void session_env_reset(struct session *s);
void session_env_add_mail(struct session *s, struct pending *p, const struct smtp_cmd *cmd, const char *line,
			  size_t len);
void session_env_mail_reply(struct session *s, const struct pending *p, int code, const char *raw, size_t len);
void session_env_add_rcpt(struct session *s, struct pending *p, const struct smtp_cmd *cmd, const char *line,
			  size_t len);
void session_env_rcpt_reply(struct session *s, struct pending *p, int code, const char *raw, size_t len);
/* A pending entry that will get no reply (the session ends): what it
 * holds is recorded as unanswered and freed. */
void session_pend_release(struct session *s, struct pending *p);
struct msg *session_msg_new(struct session *s, bool bdat);
void session_msg_open(struct session *s, struct msg *m);
void session_msg_close(struct session *s, struct msg *m, int code, const char *reply);
void session_msg_feed(struct msg *m, const char *p, size_t len);
void session_msg_abandon(struct session *s);
char *session_reply_text(const char *raw, size_t len);

/* session_rules.c: the session's side of fault rules.  Each hook asks
 * rules_decide() about one unit, records what fired and carries it out. */
enum rules_verdict {
	RV_GO = 0, /* carry on as without rules (possibly with a pending rule attached) */
	RV_DONE,   /* the rule took care of the unit */
};
void session_rules_init(struct session *s);
void session_rules_free(struct session *s);
bool session_rules_connect(struct session *s);
void session_begin(struct session *s);
enum rules_verdict session_rules_command(struct session *s, struct evbuffer *in, const struct smtp_cmd *cmd,
					 size_t len, const char *raw, size_t rawlen, unsigned flags, bool *recorded);
void session_rules_attach(struct session *s, struct pending *p);
void session_rules_detached(struct session *s, struct evbuffer *in, const struct smtp_cmd *cmd, const char *line,
			    size_t len, size_t inlen, unsigned flags);
const struct rules_decision *session_rules_data_end(struct session *s, struct msg *m, bool record);
void session_rules_data_end_fired(struct session *s, const struct rules_decision *d);
bool session_rules_consumes(const struct rules_decision *d);
void session_rules_data_end_local(struct session *s, const struct rules_decision *d, struct msg *m,
				  struct pending *q);
bool session_rules_hold_data_end(struct session *s, const struct rules_decision *d, size_t withheld);
const struct rules_decision *session_rules_data_end_resumed(struct session *s);
struct rules_reply {
	bool held;	      /* delayed: the reply stays in reply_buf */
	bool replaced;	      /* reply_buf now holds the rule's reply */
	bool suppress;	      /* not passed to the client */
	bool stall;	      /* then stall */
	enum rule_after after;
	size_t truncate;      /* > 0: only this many bytes go to the client, then close */
	unsigned rule_line;
	int64_t rule_seq;     /* the event of the rule's firing */
	const struct rules_decision *strip; /* EHLO capabilities to strip */
	/* replaced: the server's own reply (malloc'd) and its code, which the
	 * message and recipient records keep (what the upstream did) */
	char *orig_raw;
	size_t orig_len;
	int orig_code;
};
void session_rules_reply(struct session *s, struct evbuffer *reply, enum store_side side, int *code,
			 struct rules_reply *out);
void session_rules_reply_done(struct session *s, const struct pending *p, int orig_code, int code,
			      const struct rules_reply *rr);
bool session_rules_strip(struct session *s, const struct rules_decision *d, struct evbuffer *src,
			 struct evbuffer **altered);
bool session_rules_tls(struct session *s, enum rules_leg leg);
void session_rules_after(struct session *s, enum rule_after after, const char *why);
/* The upstream leg may still be written to and read from: open, and not
 * closing once its output is out (a rule's close or reset lets what was
 * already forwarded, and recorded so, reach the upstream first). */
static inline bool
session_upstream_usable(const struct session *s)
{
	return s->upstream.open && !s->upstream.close_after_flush;
}
size_t session_rules_held_input(const struct session *s, bool *dropped);
void session_rules_end_hold(struct session *s, bool as_recorded, const void *held, size_t n);
bool session_rules_holding(const struct session *s);
void session_rules_starttls_recorded(struct session *s);

/* session_tls.c */
void session_tls_start(struct session *s);
void session_tls_start_client(struct session *s);
void session_tls_start_upstream(struct session *s);
void session_tls_upstream_connected(struct session *s);
void session_tls_leg_done(struct session *s, struct leg *leg);
void session_tls_leg_failed(struct session *s, struct leg *leg);
void session_tls_client_drained(struct session *s);
void session_tls_client_starttls(struct session *s, struct evbuffer *in, const char *line, size_t len);
bool session_tls_reply(struct session *s, const struct pending *p, struct evbuffer *reply, int code);
bool session_tls_ehlo_rewrite(struct session *s, struct evbuffer *reply, struct evbuffer *out);
void session_tls_free(struct session *s);

#endif
