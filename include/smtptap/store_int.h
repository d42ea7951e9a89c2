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
 *   store_writer.c  the writer thread: batches, transactions, binding
 * store_read.c (the CLI's read-only half) does not use this header, and
 * no file outside the store includes it: struct store stays opaque to
 * everyone else.
 */
#ifndef SMTPTAP_STORE_INT_H
#define SMTPTAP_STORE_INT_H

#include <pthread.h>
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

#ifndef STORE_CONTENT_MIN
#define STORE_CONTENT_MIN 1
#endif

enum store_op {
	STORE_OP_SESSION_OPEN,
	STORE_OP_SESSION_ADDR,
	STORE_OP_SESSION_TLS,
	STORE_OP_SESSION_CLOSE,
	STORE_OP_EVENT,
	STORE_OP_MESSAGE_OPEN,
	STORE_OP_MESSAGE_CLOSE,
};

struct rec_rcpt {
	const char *address, *params, *reply;
	int reply_code;
};

/*
 * One queued write.  Every pointer in the union points into data[] (or is
 * NULL), so the record owns all it refers to.  For STORE_OP_MESSAGE_OPEN,
 * data[] starts with the recipient array.
 */
struct store_rec {
	struct store_rec *next;
	size_t size; /* the whole allocation */
	enum store_op op;
	union {
		struct {
			int64_t id, started_us;
			const char *listener, *client, *upstream, *mode;
		} session;
		struct {
			int64_t id;
			enum store_side side; /* STORE_OP_SESSION_TLS */
			const char *value;
		} set;
		struct {
			int64_t id, ended_us;
			const char *outcome, *detail;
		} close;
		struct {
			int64_t session_id, seq, t_us, message_id;
			enum store_side side;
			enum store_kind kind;
			unsigned flags;
			const char *text;
			const void *raw;
			size_t raw_len;
		} event;
		struct {
			int64_t id, session_id, started_us;
			int idx;
			const char *mail_from, *mail_params, *transport;
			const struct rec_rcpt *rcpts;
			size_t nrcpts;
		} msg;
		struct {
			int64_t id, ended_us, size;
			bool complete;
			const char *subject, *from, *to, *message_id, *date;
			int reply_code;
			const char *reply;
		} msg_end;
	} u;
	char data[];
};

_Static_assert(offsetof(struct store_rec, data) % _Alignof(struct rec_rcpt) == 0,
	       "recipient arrays start data[]");

enum store_stmt {
	STMT_BEGIN,
	STMT_COMMIT,
	STMT_ROLLBACK,
	STMT_SESSION_OPEN,
	STMT_SESSION_ADDR,
	STMT_SESSION_CLIENT_TLS,
	STMT_SESSION_UPSTREAM_TLS,
	STMT_SESSION_CLOSE,
	STMT_EVENT,
	STMT_MESSAGE_OPEN,
	STMT_RCPT,
	STMT_MESSAGE_CLOSE,
	STMT_COUNT
};

/*
 * Thread ownership: the sqlite3 handle, its statements and the content
 * writer belong to the
 * writer thread from pthread_create() until pthread_join(); the id counters
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

/* The writer thread's body (store_writer.c); store.c starts it with st as
 * its argument and store_close() joins it. */
void *store_run_writer(void *arg);

/*
 * Count n lost records; the first loss is logged with its context, later
 * ones only counted (store_close() reports the total), so a full disk does
 * not flood stderr.  Any thread (store_record.c).
 */
void store_count_lost(struct store *st, uint64_t n, const char *fmt, ...) LOG_PRINTF(3, 4);

#endif
