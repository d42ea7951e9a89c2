/*
 * reader.h - the one way to read a recording: what `smtptap sessions`,
 * `show`, `export`, replay, mock and (later) a web view or an HTTP API
 * all read through.
 *
 * A reader is one read-only connection to a database (and the message
 * content kept beside it), for one thread at a time (open one per
 * thread).  It is safe to use while a proxy records into the same file:
 * SQLite's WAL gives readers a snapshot.
 *
 * Requests.  Everything read between reader_begin() and reader_end() is
 * one consistent snapshot: a listing and then the events of the sessions
 * it listed agree with each other even while a proxy adds rows.  Outside
 * a request each call is its own snapshot.  Keep requests short: a read
 * transaction held open keeps the proxy's WAL file from being recycled.
 *
 * Rows are handed to callbacks; a row's pointers are valid only during
 * its callback (reader_session_dup() copies a session row that must live
 * longer).  A callback returns 0 to go on, or a positive value to stop:
 * the walk then returns that value.  Walks return READER_OK (0) when
 * done, READER_ERROR (-1) with a one-line reason in err, or
 * READER_NOTFOUND (-2) where they say so.  A callback must not start
 * another walk on the same reader (that would close the statement it is
 * called from); collect what it needs and walk afterwards.
 *
 * Text columns are NUL-terminated bytes as recorded, not necessarily
 * UTF-8 (they carry what peers sent: hostile input).
 */
#ifndef SMTPTAP_READER_H
#define SMTPTAP_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtptap/store.h"

#define READER_OK 0
#define READER_ERROR (-1)
#define READER_NOTFOUND (-2)

struct reader;

/*
 * Open the database at `path` for reading.  An older schema is brought up
 * to date first (store_upgrade); a missing file, a file that is not an
 * smtptap database or one newer than this binary are refused.  Returns
 * NULL with a reason in err.
 */
struct reader *reader_open(const char *path, char *err, size_t errsz);
void reader_close(struct reader *rd);

/* Start and end a request (one snapshot).  Requests do not nest.
 * reader_end() after a failed walk is fine and needed. */
int reader_begin(struct reader *rd, char *err, size_t errsz);
void reader_end(struct reader *rd);

/* ------------------------------------------------------------------------
 * Rows
 */

struct reader_session {
	int64_t id;
	int64_t started_us, ended_us; /* unix time in us; ended_us 0 while live */
	const char *listener, *client, *upstream, *upstream_addr, *mode;
	const char *client_tls, *upstream_tls; /* JSON object text, or NULL (plaintext) */
	const char *outcome, *detail;	       /* NULL while live */
	/* the summary the writer keeps as the session runs (NULL / 0: unknown) */
	const char *client_ip, *helo, *auth_mech, *auth_user;
	const char *client_tls_version, *upstream_tls_version;
	int64_t nmessages, nevents, ntransactions;
	int64_t client_bytes, upstream_bytes, proxy_bytes;
	int64_t replay_of; /* mode replay or mock: the session it replays, 0 none */
};

/* A session that replays or mocks another (reader_replays). */
struct reader_replay {
	int64_t id;
	char mode[16]; /* "replay" or "mock" */
};

struct reader_event {
	int64_t session_id, seq, t_us;
	enum store_side side;
	enum store_kind kind;
	unsigned flags;			/* STORE_F_* */
	int64_t message_row;		/* messages.id (kind data), 0 if none */
	int64_t answers_seq, cause_seq; /* 0 if none */
	const char *text;		/* a note, or NULL */
	bool has_raw;			/* bytes were recorded (raw_len of them) */
	size_t raw_len;
	const void *raw; /* the bytes, when asked for (READER_BYTES_*), else NULL */
};

struct reader_rcpt {
	const char *address, *params, *reply;
	int reply_code;	  /* 0 if no reply was seen */
	int64_t rcpt_seq; /* the RCPT command's event, 0 if unknown */
};

struct reader_message {
	int64_t id, session_id; /* id: messages.id, what the content functions take */
	int idx;		/* 1-based within the session */
	int64_t started_us, ended_us; /* ended_us 0 while being recorded */
	const char *mail_from, *mail_params, *transport; /* transport "data" or "bdat" */
	int64_t size;					 /* bytes after dot-unstuffing */
	bool complete;
	const char *subject, *from, *to, *message_id_hdr, *date; /* "" when absent */
	int reply_code;						 /* the final reply, 0 if none */
	const char *reply;
	int transaction_idx; /* its transaction, 0 if none */
	int mail_code;	     /* the reply to its MAIL, 0 if none was seen */
	const char *mail_reply;
	const struct reader_rcpt *rcpts; /* the transaction's recipients */
	size_t nrcpts;
};

struct reader_transaction {
	int idx;
	int64_t started_us, mail_seq;
	const char *mail_from, *mail_params;
	int mail_code; /* 0 if no reply was seen */
	const char *mail_reply;
	int64_t nmessages; /* 0: it never reached DATA/BDAT */
	const struct reader_rcpt *rcpts;
	size_t nrcpts;
};

typedef int (*reader_session_cb)(const struct reader_session *s, void *arg);
typedef int (*reader_event_cb)(const struct reader_event *ev, void *arg);
typedef int (*reader_message_cb)(const struct reader_message *m, void *arg);
typedef int (*reader_transaction_cb)(const struct reader_transaction *t, void *arg);
/* A piece of content: data[0..len), valid during the call only. */
typedef int (*reader_chunk_cb)(const void *data, size_t len, void *arg);

/* An owned copy of a session row (every string its own allocation).
 * Returns 0, or -1 when memory is short (dst is then zeroed). */
int reader_session_dup(struct reader_session *dst, const struct reader_session *src);
/* Free a copy's strings and zero it (a zeroed one is fine too). */
void reader_session_free(struct reader_session *s);

/* ------------------------------------------------------------------------
 * Listing sessions: filters and pages
 */

/* Session ids first..last, inclusive. */
struct reader_id_range {
	int64_t first, last;
};
#define READER_ID_RANGES_MAX 64

enum reader_tls {
	READER_TLS_ANY = 0,
	READER_TLS_YES, /* TLS on either leg */
	READER_TLS_NO,	/* plaintext on both legs */
};

/*
 * What to list: every field left zero / NULL matches everything; the
 * fields given must all match.  Plain values, so that a command line or
 * an HTTP query can fill it; reader_filter_check() says what is wrong
 * with a value, naming the field.  Values reach SQL only as bound
 * parameters.
 *
 * Addresses (sender, recipient) are envelope paths, compared without
 * regard to ASCII case, with or without <>: "bob@example.org".  A value
 * starting with '@' is a domain: "@example.org" matches every address at
 * exactly that domain (not its subdomains).  "<>" (or "") as the sender
 * is the null sender of bounces.  An address uses an index, and so does
 * a recipient's domain; a sender's domain is tested on the newest
 * transactions first (see sql/005_search.sql).
 */
struct reader_filter {
	int64_t since_us, until_us; /* started at or after since, before until; 0: open */
	const char *sender;	    /* a MAIL FROM of the session (any transaction) */
	const char *recipient;	    /* a RCPT TO of the session (any transaction, any reply) */
	const char *subject;	    /* substring of a message's Subject, ASCII case ignored */
	const char *message_id;	    /* a message's Message-ID header, with or without <> */
	const char *client;	    /* the client's IP ("10.1.2.3", "::1") or a CIDR block */
	const char *outcome;	    /* an outcome word ("quit", "interrupted", ...) or "live" */
	const char *mode;	    /* "relay", "sink", "replay" or "mock" */
	bool originals;		    /* only sessions that replay or mock none (replay_of unset):
				       what batch replay and export take by default */
	enum reader_tls tls;
	const struct reader_id_range *ids; /* any of these ranges; nids 0: any id */
	size_t nids;
};

/*
 * Which page of the matching sessions: keyset pagination by id (stable
 * while a proxy adds sessions, never skipping or repeating one).
 *   neither cursor   the newest `limit`
 *   before_id        the newest `limit` with id < before_id (older ones)
 *   after_id         the oldest `limit` with id > after_id (newer ones)
 * (both: the range between them, from the newest).  limit <= 0: all.
 * Rows come newest first, or oldest first with oldest_first (the page is
 * the same, only its order changes).
 */
struct reader_page {
	int64_t before_id, after_id; /* 0: none */
	int64_t limit;
	bool oldest_first;
};

/* What a listing returned. */
struct reader_page_info {
	int64_t n;		   /* rows delivered */
	int64_t min_id, max_id;	   /* their lowest and highest id (0 when none) */
	bool more;		   /* more match past the page, in the direction it was
				      taken: older (no cursor, before_id) or newer (after_id) */
};

/*
 * Is every value of f usable?  Returns 0, or -1 with *field set to the
 * field at fault ("client", "sender", ...) and a reason in err.
 */
int reader_filter_check(const struct reader_filter *f, const char **field, char *err, size_t errsz);

/* The sessions f matches, one page.  info may be NULL. */
int reader_sessions(struct reader *rd, const struct reader_filter *f, const struct reader_page *pg,
		    reader_session_cb cb, void *arg, struct reader_page_info *info, char *err, size_t errsz);
/* How many sessions f matches (all pages).  Returns 0 or READER_ERROR. */
int reader_sessions_count(struct reader *rd, const struct reader_filter *f, int64_t *n, char *err,
			  size_t errsz);
/*
 * SQLite's query plan for that listing (EXPLAIN QUERY PLAN of the very
 * statement reader_sessions() runs), its lines joined by "\n" into out.
 * For tests, benchmarks and `smtptap sessions --explain`.
 */
int reader_sessions_plan(struct reader *rd, const struct reader_filter *f, const struct reader_page *pg,
			 char *out, size_t outsz, char *err, size_t errsz);

/* One session: READER_OK, READER_NOTFOUND, READER_ERROR or cb's value. */
int reader_session(struct reader *rd, int64_t id, reader_session_cb cb, void *arg, char *err, size_t errsz);
/* The sessions that replay or mock session `id` (replay_of), oldest
 * first, into a new array the caller free()s (NULL and 0 when none).
 * Returns READER_OK or READER_ERROR. */
int reader_replays(struct reader *rd, int64_t id, struct reader_replay **out, size_t *n, char *err, size_t errsz);

/* ------------------------------------------------------------------------
 * One session's contents
 */

/* Which events' bytes reader_events() loads (each event is bounded, a
 * message is many events; content itself is better streamed with
 * reader_message_content). */
enum reader_bytes {
	READER_BYTES_NONE = 0, /* none: has_raw and raw_len only */
	READER_BYTES_LINES,    /* every event's but message data's (commands, replies,
				  AUTH lines, notes): a transcript, a replay */
	READER_BYTES_ALL,      /* every event's (`show --raw`) */
};

/* A session's events in order (seq).  An unknown session has none. */
int reader_events(struct reader *rd, int64_t session_id, enum reader_bytes bytes, reader_event_cb cb, void *arg,
		  char *err, size_t errsz);
/* One event's bytes, streamed in pieces.  READER_NOTFOUND if there is no
 * such event; an event without bytes gives no call. */
int reader_event_bytes(struct reader *rd, int64_t session_id, int64_t seq, reader_chunk_cb cb, void *arg,
		       char *err, size_t errsz);

/* A session's messages in order, each with its transaction's recipients. */
int reader_messages(struct reader *rd, int64_t session_id, reader_message_cb cb, void *arg, char *err,
		    size_t errsz);
/* A session's transactions (one per MAIL FROM) in order, with recipients. */
int reader_transactions(struct reader *rd, int64_t session_id, reader_transaction_cb cb, void *arg, char *err,
			size_t errsz);

enum reader_content {
	READER_CONTENT_WIRE,	/* as sent: a DATA stream with its dot-stuffing and
				   terminator, BDAT chunks' bytes */
	READER_CONTENT_MESSAGE, /* the message itself, as the client meant it:
				   dot-unstuffed, without the terminator (.eml) */
};

/*
 * A message's content streamed to cb in pieces of bounded size, never the
 * whole message in memory.  message_row is reader_message.id.  A message
 * still being recorded gives what is stored so far.  READER_NOTFOUND if
 * there is no such message.
 */
int reader_message_content(struct reader *rd, int64_t message_row, enum reader_content how, reader_chunk_cb cb,
			   void *arg, char *err, size_t errsz);

#endif
