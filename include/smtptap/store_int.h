/*
 * store_int.h - what the files of the recording store share; private to
 * them.
 *
 * The store (store.h's writing half) is split along its seams:
 *   store.c         opening: the file (0600, flock), checks, PRAGMAs,
 *                   migrations, recovery of interrupted sessions, prepared
 *                   statements, starting the writer; and closing
 *   store_record.c  the event loop side: each store_* recording call
 *                   copies its arguments into one record and queues it;
 *                   the backlog and the count of lost records
 *   store_writer.c  the writer thread: batches, transactions, binding, the
 *                   sessions' summary columns, retention
 *   store_prune.c   deleting whole sessions (prune, retention)
 *   store_fn.c      what the writer derives from records (client IP, HELO
 *                   name) and the SQL functions the migrations use for it
 * store_read.c (the CLI's read-only half) does not use this header, and
 * no file outside the store includes it: struct store stays opaque to
 * everyone else.
 */
#ifndef SMTPTAP_STORE_INT_H
#define SMTPTAP_STORE_INT_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "smtptap/content.h"
#include "smtptap/log.h"
#include "smtptap/store.h"

/*
 * A batch is committed once it holds this many records or bytes, or
 * STORE_BATCH_WAIT_MS after the writer first saw it, whichever comes
 * first: big transactions amortise the commit, and the wait bounds what a
 * kill -9 can lose.  With many sessions interleaved, every commit rewrites
 * (and checksums, into the WAL) one events-index leaf page per active
 * session, whatever the batch size: on 50 concurrent sessions, going from
 * 1000 records / 20 ms to 10000 / 100 ms cut the writer's CPU per message
 * from ~50 to ~40 us (/proc/PID/task/TID/stat, workload B of make bench).
 */
/* Shared: store_record.c wakes the writer early when a batch is full. */
#define STORE_BATCH_RECORDS 10000
#define STORE_BATCH_BYTES (4u * 1024 * 1024)
#define STORE_BATCH_WAIT_MS 100

/* How often the writer looks at retention (--retain, --max-db-size), how
 * many sessions it deletes in one go (one transaction, between batches, so
 * recording never waits long), and how many freed pages it gives back to
 * the file system after each go. */
#define STORE_RETAIN_INTERVAL_MS 10000
#define STORE_RETAIN_CHUNK 64
#define STORE_RETAIN_VACUUM_PAGES 2048
/* With a size limit, the check also comes as soon as this fraction of the
 * limit was recorded since the last one: a burst cannot overshoot it by
 * ten seconds' worth of traffic. */
#define STORE_RETAIN_GROWTH 16

/* Longest AUTH mechanism and user name kept in a session's summary. */
#define STORE_AUTH_MECH_MAX 64
#define STORE_AUTH_USER_MAX 512

#ifndef STORE_CONTENT_MIN
#define STORE_CONTENT_MIN 1
#endif

enum store_op {
	STORE_OP_SESSION_OPEN,
	STORE_OP_SESSION_ADDR,
	STORE_OP_SESSION_TLS,
	STORE_OP_SESSION_AUTH,
	STORE_OP_SESSION_CLOSE,
	STORE_OP_EVENT,
	STORE_OP_TX_OPEN,
	STORE_OP_TX_REPLY,
	STORE_OP_RCPT,
	STORE_OP_MESSAGE_OPEN,
	STORE_OP_MESSAGE_CLOSE,
};

/*
 * One queued write.  Every pointer in the union points into data[] (or is
 * NULL), so the record owns all it refers to.
 */
/*
 * Small records are cut from blocks of STORE_POOL_BLOCK bytes instead of
 * a malloc() each: a record was malloc()ed by the event loop and free()d
 * by the writer thread, and that cross-thread pair cost more than a third
 * of what a 1 KiB message spent in malloc (callgrind: ~33k instructions
 * per message in the event loop, ~8k in the writer).  The event loop
 * fills one block at a time (bump allocation); a block counts the records
 * cut from it that are not yet freed, plus one while it is being filled,
 * and whoever drops the count to zero frees it.  Message data records
 * (store_data_*) are grown and shrunk with realloc(): they, and anything
 * over STORE_POOL_REC_MAX, keep a malloc() of their own.
 */
#define STORE_POOL_BLOCK (64u * 1024)
#define STORE_POOL_REC_MAX (4u * 1024)

struct store_pool_block {
	atomic_size_t refs;
	size_t used; /* bytes of data[] handed out (the event loop's) */
	alignas(max_align_t) unsigned char data[];
};

struct store_rec {
	struct store_rec *next;
	struct store_pool_block *block; /* cut from this block, or NULL: a malloc() of its own */
	size_t size; /* the record's bytes (what the backlog counts) */
	enum store_op op;
	union {
		struct {
			int64_t id, started_us, replay_of;
			const char *listener, *client, *upstream, *mode;
		} session;
		struct {
			int64_t id;
			enum store_side side; /* STORE_OP_SESSION_TLS */
			const char *value;
			const char *value2;   /* STORE_OP_SESSION_AUTH: the user */
		} set;
		struct {
			int64_t id, ended_us;
			const char *outcome, *detail;
		} close;
		struct {
			int64_t session_id, seq, t_us, message_row, answers_seq, cause_seq;
			enum store_side side;
			enum store_kind kind;
			unsigned flags;
			const char *text;
			const void *raw;
			size_t raw_len;
		} event;
		struct {
			int64_t session_id, started_us, mail_seq;
			int idx, mail_code;
			const char *mail_from, *mail_params, *mail_reply;
		} tx;
		struct {
			int64_t session_id;
			int idx, code;
			const char *reply;
		} tx_reply;
		struct {
			int64_t session_id, rcpt_seq;
			int transaction_idx, idx, reply_code;
			const char *address, *params, *reply;
		} rcpt;
		struct {
			int64_t id, session_id, started_us, data_seq_first;
			int idx, transaction_idx;
			const char *mail_from, *mail_params, *transport;
		} msg;
		struct {
			int64_t id, ended_us, size, data_seq_last;
			bool complete;
			const char *subject, *from, *to, *message_id_hdr, *date;
			int reply_code;
			const char *reply;
		} msg_end;
	} u;
	char data[];
};

enum store_stmt {
	STMT_BEGIN,
	STMT_COMMIT,
	STMT_ROLLBACK,
	STMT_SESSION_OPEN,
	STMT_SESSION_ADDR,
	STMT_SESSION_CLIENT_TLS,
	STMT_SESSION_UPSTREAM_TLS,
	STMT_SESSION_AUTH,
	STMT_SESSION_CLOSE,
	STMT_SESSION_SUMMARY,
	STMT_EVENT,
	STMT_TX_OPEN,
	STMT_TX_REPLY,
	STMT_RCPT,
	STMT_MESSAGE_OPEN,
	STMT_MESSAGE_CLOSE,
	STMT_MESSAGE_WHOLE,
	STMT_COUNT
};

/*
 * What one batch adds to a session's summary columns, applied with one
 * UPDATE per session at the end of the batch (STMT_SESSION_SUMMARY): the
 * counts and bytes are deltas; helo points into a record of the batch,
 * which outlives the UPDATE.  An open-addressed table keyed by session id
 * (0 marks a free slot).
 */
struct store_sum {
	int64_t id;
	int64_t nevents, ntransactions, nmessages;
	int64_t bytes[3]; /* by enum store_side */
	int64_t content_bytes; /* of the events whose bytes went to a segment */
	const char *helo;
	size_t helo_len;
	/* A session's upstream address and its end, when they came in this
	 * batch: set in the same UPDATE instead of one statement each (a
	 * session per message costs the writer two statements fewer). */
	const char *upstream_addr;
	const struct store_rec *close; /* STORE_OP_SESSION_CLOSE, or NULL */
	/* The content segments this batch appended the session's bytes to
	 * (0: none).  prune keeps every segment inside a session's range
	 * (sql/006_content_ranges.sql), so a batch whose range cannot be
	 * recorded must not commit. */
	int64_t seg_first, seg_last;
};

/* Messages opened in a batch wait for their end in the same batch, so that
 * most are one INSERT instead of an INSERT and an UPDATE; at most this
 * many wait (each close looks through them). */
#define STORE_MSG_PENDING_MAX 256

/*
 * Thread ownership: the sqlite3 handle, its statements and the content
 * writer belong to the writer thread from pthread_create() until
 * pthread_join(); the id counters
 * belong to the event loop; the queue, the backlog and the failure count
 * are shared under st->lock.
 */
struct store {
	char *path;
	int lockfd; /* the file, flock()ed while open */
	sqlite3 *db;
	sqlite3_stmt *stmt[STMT_COUNT];
	struct content_writer *content; /* message data segments (content.h) */

	/* event loop thread only */
	int64_t next_session_id, next_message_id;
	struct store_pool_block *pool; /* the block small records are cut from, or NULL */

	/* writer thread only (set before it starts) */
	struct store_options opts;
	struct store_sum *sums; /* this batch's summary deltas */
	size_t sums_cap, sums_n;
	const struct store_rec *msg_pending[STORE_MSG_PENDING_MAX]; /* opened, not yet written */
	size_t msg_npending;
	int64_t next_retain_ms; /* monotonic ms of the next retention check; 0: none configured */
	uint64_t retain_bytes;	/* bytes queued since it; with --max-db-size, enough of them
				   bring the check forward (STORE_RETAIN_GROWTH) */

	pthread_t writer;
	bool writer_running;
	bool sync_ready; /* lock and cond initialised */
	pthread_mutex_t lock;
	pthread_cond_t cond;

	/* under lock */
	struct store_rec *head, **tailp;
	size_t nqueued;	     /* records in the queue */
	size_t queued_bytes; /* their bytes */
	size_t backlog;	     /* bytes queued or being written */
	bool stop;
	uint64_t nlost;	     /* records not written */
	bool lost_logged;
};

/* Free a record (any thread; see struct store_pool_block). */
void store_rec_free(struct store_rec *rec);
/* The event loop lets go of the block it is filling (store_close()). */
void store_pool_release(struct store *st);

/* The writer thread's body (store_writer.c); store.c starts it with st as
 * its argument and store_close() joins it. */
void *store_run_writer(void *arg);

/*
 * Count n lost records; the first loss is logged with its context, later
 * ones only counted (store_close() reports the total), so a full disk does
 * not flood stderr.  Any thread (store_record.c).
 */
void store_count_lost(struct store *st, uint64_t n, const char *fmt, ...) LOG_PRINTF(3, 4);

/* store_fn.c */
/* "127.0.0.1" of "127.0.0.1:53422", "::1" of "[::1]:53422".  Returns 0,
 * or -1 (out "") when client is NULL or not an address with a port. */
int store_client_ip(const char *client, char *out, size_t outsz);
/* The name a client command gives when it is HELO, EHLO or LHLO (a slice
 * of raw). */
bool store_helo_name(const void *raw, size_t len, const char **name, size_t *namelen);
/* An AUTH mechanism in upper case, as kept in sessions.auth_mech. */
void store_auth_mech_upper(const char *p, size_t len, char *out, size_t outsz);
/* smtptap_client_ip(), smtptap_helo(), smtptap_auth_mech(),
 * smtptap_auth_user() for the migrations (sql/002_schema2.sql).
 * Returns 0 or -1. */
int store_register_functions(sqlite3 *db);

/* store.c */
/* Refuse a file that is not empty and not an smtptap database this binary
 * can migrate; then migrate it (each step in its own transaction).  On a
 * handle opened read-write; used by store_open and store_upgrade. */
int store_check_db(sqlite3 *db, char *err, size_t errsz);
int store_migrate_db(sqlite3 *db, char *err, size_t errsz);

/* store_prune.c */
/* store_prune's work on an open read-write handle (the CLI's, or the
 * writer's between batches).  Adds to *res.  Returns 0, or -1 with err. */
int store_prune_db(sqlite3 *db, const struct store_prune_opts *opts, struct store_prune_result *res, char *err,
		   size_t errsz);
/* Give up to npages free pages back to the file system (all when npages
 * <= 0) when the file has auto_vacuum=INCREMENTAL.  Returns 0 or -1. */
int store_incremental_vacuum(sqlite3 *db, int64_t npages);

#endif
