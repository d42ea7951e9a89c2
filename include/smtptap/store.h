/*
 * store.h - the SQLite recording store.
 *
 * Writing: the event loop (one thread) calls the store_* recording
 * functions below.  They copy what they are given into a record, append it
 * to an in-memory queue and return at once: no SQLite call ever runs on the
 * event loop.  One writer thread drains the queue in batched transactions
 * (WAL, synchronous=NORMAL, prepared statements).  store_close() drains
 * everything and joins the writer, so a clean shutdown loses nothing; a
 * kill -9 loses at most the last uncommitted batch and, thanks to WAL,
 * never corrupts the file.
 *
 * Ids are assigned by the caller's thread (store_*_new_id) from MAX(id) at
 * open time (and id_floor, see sql/002_schema2.sql), so sessions,
 * transactions, events and messages can be linked without a round trip to
 * the writer.
 *
 * Reading: reader.h, over the read-only connection store_reader_open()
 * makes; store_reader_event_bytes() is the one function that knows where
 * an event's bytes are kept.
 *
 * Schema: sql/NNN_*.sql, applied in order while PRAGMA user_version is
 * lower than NNN.  See docs/architecture.md for the tables.
 */
#ifndef SMTPTAP_STORE_H
#define SMTPTAP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Who produced the bytes of an event. */
enum store_side {
	STORE_SIDE_CLIENT = 0,	 /* the mail client */
	STORE_SIDE_UPSTREAM = 1, /* the real server */
	STORE_SIDE_PROXY = 2,	 /* smtptap itself (injected bytes, notes) */
};

enum store_kind {
	STORE_KIND_CONNECT = 0, /* a leg connected; text says who */
	STORE_KIND_COMMAND,	/* one client command line, raw = exact bytes */
	STORE_KIND_REPLY,	/* one complete (multi-line) reply, raw = exact bytes */
	STORE_KIND_DATA,	/* message content as sent on the wire (DATA
				   stream with dot-stuffing and terminator, or
				   a BDAT chunk's bytes); message_row set */
	STORE_KIND_AUTH,	/* a client line answering a 334 challenge */
	STORE_KIND_ACTION,	/* a proxy decision or note; text explains */
	STORE_KIND_CLOSE,	/* a leg closed; text says why */
	STORE_KIND_TLS,		/* a TLS handshake on a leg (later issues) */
};

/* Event flags (bit set). */
#define STORE_F_INJECTED 0x01	 /* smtptap produced these bytes */
#define STORE_F_ALTERED 0x02	 /* not forwarded as is (a following proxy event
				    holds what was sent instead) */
#define STORE_F_DROPPED 0x04	 /* not forwarded at all */
#define STORE_F_REDACTED 0x08	 /* raw holds a redacted form, not the bytes sent */
#define STORE_F_TO_CLIENT 0x10	 /* proxy bytes went to the client leg */
#define STORE_F_TO_UPSTREAM 0x20 /* proxy bytes went to the upstream leg */
#define STORE_F_INCOMPLETE 0x40	 /* a line cut short by a close or a bound */
#define STORE_F_RULE 0x80	 /* a fault rule made, changed or dropped it */
/* A client command or AUTH line read before smtptap had passed the client
 * any reply since its previous one: the client sent it without waiting
 * (PIPELINING).  Replay sends such commands in the same batch. */
#define STORE_F_PIPELINED 0x100

const char *store_side_name(enum store_side side); /* "client", ... */
const char *store_kind_name(enum store_kind kind); /* "command", ... */

struct store;

/*
 * Process-wide SQLite settings; call once at start, before any other store
 * function (main() does).  Turns off SQLite's memory statistics, whose
 * global mutex every allocation would otherwise take.  Returns 0, or -1 if
 * SQLite was already in use (harmless: the defaults stay).
 */
int store_global_init(void);

/* ---- writing (event loop thread) ---- */

/* Retention kept by the writer thread (proxy --retain, --max-db-size):
 * whole sessions, oldest first, never a live one. */
struct store_options {
	int64_t retain_us;  /* delete sessions that ended longer ago than this; 0: keep */
	uint64_t max_bytes; /* keep the data (pages in use) under this; 0: no limit */
};

/*
 * Open (creating with mode 0600 if needed) and migrate the database at
 * `path`, then start the writer thread.  Sessions left unfinished by a
 * previous crash are marked outcome 'interrupted'.  Returns NULL with a
 * one-line reason in err on failure.  The caller owns the result and
 * releases it with store_close().  `opts` may be NULL (keep everything).
 */
struct store *store_open(const char *path, char *err, size_t errsz);
struct store *store_open_opts(const char *path, const struct store_options *opts, char *err, size_t errsz);

/* Flush every queued record, stop the writer, close the database.
 * Returns 0, or -1 if any write failed during the run (already logged). */
int store_close(struct store *st);

int64_t store_session_new_id(struct store *st);
int64_t store_message_new_id(struct store *st);

struct store_session {
	int64_t id;
	int64_t started_us; /* unix time, microseconds */
	const char *listener;	   /* "127.0.0.1:2525" */
	const char *client;	   /* "127.0.0.1:53422" */
	const char *upstream;	   /* as configured, NULL in sink mode */
	const char *mode;	   /* "relay", "sink", "replay" or "mock" */
	int64_t replay_of;	   /* replay, mock: the session it replays, 0 none */
};
void store_session_open(struct store *st, const struct store_session *s);

/* Resolved upstream address once connected ("[::1]:25"). */
void store_session_set_upstream_addr(struct store *st, int64_t session_id, const char *addr);
/* client_tls / upstream_tls: a JSON object text (its "version" is also
 * kept as client_tls_version / upstream_tls_version). */
void store_session_set_tls(struct store *st, int64_t session_id, enum store_side side, const char *json);
/* An AUTH attempt: its mechanism ("PLAIN") and the user name it carries,
 * or NULL when not (yet) known.  Never the password. */
void store_session_set_auth(struct store *st, int64_t session_id, const char *mech, const char *user);

/* outcome: short word ("quit", "client-closed", "upstream-unreachable", ...);
 * detail: one human line or NULL. */
void store_session_close(struct store *st, int64_t session_id, int64_t ended_us, const char *outcome,
			 const char *detail);

/*
 * One event.  The writer also keeps the session's summary from it (the
 * count of events, the bytes each side sent, the latest HELO/EHLO name of
 * a client command), in the same transaction as the row.
 */
struct store_event {
	int64_t session_id;
	int64_t seq; /* 1, 2, ... within the session, in the order things happened */
	int64_t t_us; /* unix time, microseconds */
	enum store_side side;
	enum store_kind kind;
	unsigned flags;
	int64_t message_row; /* messages.id (kind 'data'), 0 = none */
	int64_t answers_seq; /* a reply: the seq of the event it answers, 0 = none */
	int64_t cause_seq;   /* what smtptap did: the seq of the event that caused it, 0 = none */
	const char *text;   /* NUL-terminated or NULL; for actions, notes */
	const void *raw;    /* exact bytes, or NULL */
	size_t raw_len;
};
void store_event_add(struct store *st, const struct store_event *ev);

/*
 * Message data gathered by the caller straight into a queued record, so
 * that a big event is copied once (from the socket buffer into it), not
 * twice: store_data_new() gives room for `cap` bytes (of session
 * `session_id`, for error messages) at store_data_buf();
 * store_data_add() queues the first ev->raw_len of them as the raw bytes
 * of event `ev` (ev->raw and ev->text are ignored) and takes the buffer
 * over; store_data_free() drops one that is not added.  NULL when memory
 * is short (counted as a lost record).
 */
struct store_data;
struct store_data *store_data_new(struct store *st, int64_t session_id, size_t cap);
void *store_data_buf(struct store_data *d);
/* Room for `cap` bytes, the bytes so far kept; NULL when memory is short
 * (d is then still valid, and still the caller's). */
struct store_data *store_data_grow(struct store *st, struct store_data *d, size_t cap);
void store_data_add(struct store *st, struct store_data *d, const struct store_event *ev);
void store_data_free(struct store_data *d);

/* A transaction starts with each MAIL FROM command; (session_id, idx)
 * names it.  The session writes it once, usually with its MAIL reply. */
struct store_transaction {
	int64_t session_id;
	int idx;		 /* 1-based within the session */
	int64_t started_us;
	int64_t mail_seq;	 /* the MAIL command's event, 0 if unknown */
	const char *mail_from;	 /* path without <>; "" for the null sender */
	const char *mail_params; /* or NULL */
	int mail_code;		 /* the reply to MAIL, 0 if not (yet) seen */
	const char *mail_reply;	 /* its full text (lines joined by "\n"), or NULL */
};
void store_transaction_open(struct store *st, const struct store_transaction *t);
/* The reply to its MAIL command, when it came after the row was written. */
void store_transaction_mail_reply(struct store *st, int64_t session_id, int idx, int code, const char *reply);

/* A recipient, written when its RCPT reply arrives (or at the end of the
 * session, without one). */
struct store_rcpt {
	int64_t session_id;
	int transaction_idx;  /* its transaction's idx */
	int idx;	      /* 1-based within the transaction, in RCPT order */
	int64_t rcpt_seq;     /* the RCPT command's event, 0 if unknown */
	const char *address;  /* path without <> */
	const char *params;   /* ESMTP parameters as written, or NULL */
	int reply_code;	      /* 0 if no reply was seen */
	const char *reply;    /* full reply text (lines joined by "\n"), or NULL */
};
void store_rcpt_add(struct store *st, const struct store_rcpt *r);

/* A message starts when DATA is accepted (354) or the first BDAT chunk is
 * sent: the envelope is known by then (its recipients are the
 * transaction's). */
struct store_message {
	int64_t id;
	int64_t session_id;
	int transaction_idx;	/* its transaction's idx; 0: none (no MAIL before it) */
	int idx;		/* 1-based within the session */
	int64_t started_us;
	const char *mail_from;	/* path without <>; "" for the null sender */
	const char *mail_params; /* or NULL */
	const char *transport;	/* "data" or "bdat" */
	int64_t data_seq_first; /* no data event of the message will have a lower seq
				   (0: not known; readers then look from the session's start) */
};
void store_message_open(struct store *st, const struct store_message *m);

struct store_message_end {
	int64_t id;
	int64_t ended_us;
	uint64_t size;	   /* message bytes after dot-unstuffing */
	bool complete;	   /* false: the stream was cut short */
	const char *subject, *from, *to, *message_id_hdr, *date; /* decoded summaries */
	int reply_code;	   /* upstream's final reply, 0 if none */
	const char *reply; /* its full text, or NULL */
	int64_t data_seq_last; /* no data event of the message has a higher seq
				  (0: not known; readers then look to the session's end) */
};
void store_message_close(struct store *st, const struct store_message_end *m);

/* Bytes queued but not yet written: the session pauses reading from its
 * client while this is above STORE_BACKLOG_HIGH, so a slow disk slows the
 * flow instead of growing memory without bound. */
#define STORE_BACKLOG_HIGH (16u * 1024 * 1024)
#define STORE_BACKLOG_LOW (4u * 1024 * 1024)
size_t store_backlog_bytes(struct store *st);

/* ---- maintenance (CLI) ---- */

/*
 * Bring the database at `path` to this binary's schema in place, if it is
 * older; nothing if it is current.  Readers call this first: they open the
 * file read-only.  Fails (with a reason) when the file cannot be written
 * or an older smtptap proxy is recording into it.
 */
int store_upgrade(const char *path, char *err, size_t errsz);

struct store_prune_opts {
	int64_t before_us;    /* sessions that ended before this unix time (us); 0: no age limit */
	uint64_t max_bytes;   /* also the oldest ones while the data exceeds this; 0: no size limit */
	int64_t max_sessions; /* at most this many in one call; 0: no limit */
	bool dry_run;	      /* count them, change nothing */
	bool vacuum;	      /* afterwards VACUUM the whole file (needs no proxy on it) */
};

struct store_prune_result {
	int64_t sessions, transactions, messages, recipients, events;
	int64_t bytes;		   /* recorded bytes of the deleted sessions (sessions.*_bytes) */
	int64_t first_id, last_id; /* the range of session ids deleted (0 when none) */
	int64_t file_before, file_after; /* the file's size */
	int64_t data_before, data_after; /* bytes of pages in use, and of message content referred to */
	int64_t segments, segment_bytes;  /* content segment files deleted, and their size */
	bool incremental;	   /* auto_vacuum=INCREMENTAL (a file made by an earlier smtptap): freed
				      pages go back to the file system; otherwise new recordings reuse them */
};

/*
 * Delete whole sessions (their events, transactions, recipients and
 * messages with them, in one transaction each), never a live one: every
 * session that ended before opts->before_us, and then the oldest ended
 * ones while the pages in use exceed opts->max_bytes.  Then delete the
 * content segments no session refers to, and give the freed pages back to
 * the file system when the file allows it (incremental vacuum; otherwise
 * new recordings reuse them, or opts->vacuum rewrites the file).  Safe
 * while a proxy records into the file (but not with opts->vacuum).
 * Returns 0, or -1 with a reason in err.
 */
int store_prune(const char *path, const struct store_prune_opts *opts, struct store_prune_result *res, char *err,
		size_t errsz);

/* ---- reading (any thread, read-only) ---- */

/*
 * A read-only connection to the database, for the reader (reader.h, which
 * runs every query of the recording on it and is what consumers use).
 */
struct store_reader;

/* Returns NULL with a reason in err (missing file, not an smtptap
 * database, newer schema than this binary knows, an older schema that
 * cannot be upgraded).  An older schema is upgraded first (store_upgrade). */
struct store_reader *store_reader_open(const char *path, char *err, size_t errsz);
void store_reader_close(struct store_reader *rd);

struct sqlite3;
struct sqlite3 *store_reader_db(struct store_reader *rd);

/* Where an event's bytes are: the rest of the store only needs these. */
/* SQL for the number of bytes an events row holds (NULL when none),
 * computed without reading them. */
#define STORE_READ_EVENT_LENGTH "coalesce(length(raw), content_length)"
/* The bytes of content are handed out in pieces of at most this. */
#define STORE_READ_CHUNK (64u * 1024)
/* Returns 0 to go on, anything else to stop (which is returned). */
typedef int (*store_chunk_cb)(const void *data, size_t len, void *arg);
/*
 * The bytes of the events row `rowid`, in order, in pieces of at most
 * STORE_READ_CHUNK: the one function that knows where they are stored (in
 * the row, or in a content segment).  No call when the row has none or
 * does not exist.  Returns 0, cb's non-zero value if it stopped, or -1
 * with err (a missing or short segment, a database error).
 */
int store_reader_event_bytes(struct store_reader *rd, int64_t rowid, store_chunk_cb cb, void *arg, char *err,
			     size_t errsz);

#endif
