/*
 * store_writer.c - see store.h.  The writer thread: it takes the whole
 * queue at once, writes it in one transaction with the prepared
 * statements store.c made, and frees the records.
 *
 * The sqlite3 handle and its statements are this thread's alone while it
 * runs; the queue, the backlog and the failure count are touched only
 * under st->lock (see store_int.h).
 */
#include "smtptap/store.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>

#include <sqlite3.h>

#include "smtptap/store_int.h"

/* Binds a statement's parameters in order, remembering the first error so
 * that a row is never stepped with a parameter silently left NULL. */
struct binder {
	sqlite3_stmt *stmt;
	int idx;
	int rc;
};

/* store_write_rec(): the content writer failed, so the transaction's
 * earlier references may point at bytes that were cut off. */
#define STORE_CONTENT_FAILED (-2)

static bool store_content_external(const struct store_rec *rec);
static void store_writer_linger(struct store *st);
static uint64_t store_write_batch(struct store *st, struct store_rec *batch, size_t n);
static int store_write_rec(struct store *st, const struct store_rec *rec);
static int store_step(struct store *st, struct binder *b, const struct store_rec *rec);
static int store_exec_stmt(struct store *st, enum store_stmt which);
static void store_rec_describe(const struct store_rec *rec, char *buf, size_t bufsz);

static void bind_start(struct binder *b, sqlite3_stmt *stmt);
static void bind_i64(struct binder *b, int64_t v);
static void bind_i64_or_null(struct binder *b, int64_t v);
static void bind_text(struct binder *b, const char *s);
static void bind_blob(struct binder *b, const void *p, size_t len);
static void bind_null(struct binder *b);

/* ------------------------------------------------------------------------
 * writer thread
 */

void *
store_run_writer(void *arg)
{
	struct store *st = arg;
	struct store_rec *batch;
	size_t n, bytes;
	uint64_t nlost;

	/* Named so that top -H, perf and gdb tell it from the event loop. */
	prctl(PR_SET_NAME, "smtptap-writer", 0, 0, 0);
	pthread_mutex_lock(&st->lock);
	for (;;) {
		while (st->head == NULL && !st->stop)
			pthread_cond_wait(&st->cond, &st->lock);
		if (st->head == NULL)
			break;
		store_writer_linger(st);
		batch = st->head;
		n = st->nqueued;
		bytes = st->queued_bytes;
		st->head = NULL;
		st->tailp = &st->head;
		st->nqueued = 0;
		st->queued_bytes = 0;
		pthread_mutex_unlock(&st->lock);

		nlost = store_write_batch(st, batch, n);

		pthread_mutex_lock(&st->lock);
		st->backlog -= bytes;
		st->nlost += nlost;
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

/*
 * Whether an event's bytes go to a content segment rather than into its
 * row: message data, whatever its size.  Measured with STORE_BENCH=1
 * test_store (docs/performance.md), a segment costs less CPU per MiB than
 * a blob even for 1 KiB events; an empty one stays an empty blob.
 */
static bool
store_content_external(const struct store_rec *rec)
{
	return rec->u.event.kind == STORE_KIND_DATA && rec->u.event.raw != NULL &&
	       rec->u.event.raw_len >= STORE_CONTENT_MIN && rec->u.event.raw_len > 0;
}

/* With st->lock held: let a small batch grow for up to STORE_BATCH_WAIT_MS,
 * unless the store is closing. */
static void
store_writer_linger(struct store *st)
{
	struct timespec deadline;

	if (clock_gettime(CLOCK_MONOTONIC, &deadline) < 0)
		return;
	deadline.tv_nsec += STORE_BATCH_WAIT_MS * 1000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	while (!st->stop && st->nqueued < STORE_BATCH_RECORDS && st->queued_bytes < STORE_BATCH_BYTES) {
		if (pthread_cond_timedwait(&st->cond, &st->lock, &deadline) == ETIMEDOUT)
			break;
	}
}

/*
 * Write a batch of n records in one transaction and free them.  Returns
 * how many were lost.  A failed row does not stop the batch; an error that
 * rolls the transaction back (disk full, I/O) loses the rows written in it
 * so far, and the rest go on in a fresh transaction.
 */
static uint64_t
store_write_batch(struct store *st, struct store_rec *batch, size_t n)
{
	struct store_rec *rec, *next;
	uint64_t nlost = 0, intx = 0;
	size_t left = n;
	char err[256];
	int rc;

	if (store_exec_stmt(st, STMT_BEGIN) != SQLITE_OK) {
		store_count_lost(st, 0, "store: cannot start a transaction for %zu records: %s", n, sqlite3_errmsg(st->db));
		nlost = n;
		goto out;
	}
	for (rec = batch; rec != NULL; rec = rec->next, left--) {
		if ((rc = store_write_rec(st, rec)) == 0) {
			intx++;
			continue;
		}
		nlost++;
		/* A content failure cut off bytes that rows of this
		 * transaction may refer to: none of them may commit. */
		if (rc == STORE_CONTENT_FAILED && !sqlite3_get_autocommit(st->db))
			store_exec_stmt(st, STMT_ROLLBACK);
		if (!sqlite3_get_autocommit(st->db))
			continue;
		/* Rolled back: its content references die with it. */
		content_writer_discard(st->content);
		nlost += intx;
		intx = 0;
		if (store_exec_stmt(st, STMT_BEGIN) != SQLITE_OK) {
			nlost += left - 1;
			goto out;
		}
	}
	/* The bytes the rows refer to are on disk before the rows are. */
	if (content_writer_sync(st->content, err, sizeof(err)) < 0) {
		store_count_lost(st, 0, "store: cannot record message content, %" PRIu64 " records lost: %s", intx, err);
		nlost += intx;
		store_exec_stmt(st, STMT_ROLLBACK);
		goto out;
	}
	if (store_exec_stmt(st, STMT_COMMIT) != SQLITE_OK) {
		store_count_lost(st, 0, "store: cannot commit %" PRIu64 " records: %s", intx, sqlite3_errmsg(st->db));
		nlost += intx;
		if (!sqlite3_get_autocommit(st->db))
			store_exec_stmt(st, STMT_ROLLBACK);
	}
out:
	for (rec = batch; rec != NULL; rec = next) {
		next = rec->next;
		free(rec);
	}
	return nlost;
}

/* Returns 0, or -1 (logged through store_count_lost()). */
static int
store_write_rec(struct store *st, const struct store_rec *rec)
{
	struct binder b;
	size_t i;

	switch (rec->op) {
	case STORE_OP_SESSION_OPEN:
		bind_start(&b, st->stmt[STMT_SESSION_OPEN]);
		bind_i64(&b, rec->u.session.id);
		bind_i64(&b, rec->u.session.started_us);
		bind_text(&b, rec->u.session.listener);
		bind_text(&b, rec->u.session.client);
		bind_text(&b, rec->u.session.upstream);
		bind_text(&b, rec->u.session.mode);
		return store_step(st, &b, rec);
	case STORE_OP_SESSION_ADDR:
	case STORE_OP_SESSION_TLS:
		if (rec->op == STORE_OP_SESSION_ADDR)
			bind_start(&b, st->stmt[STMT_SESSION_ADDR]);
		else if (rec->u.set.side == STORE_SIDE_CLIENT)
			bind_start(&b, st->stmt[STMT_SESSION_CLIENT_TLS]);
		else
			bind_start(&b, st->stmt[STMT_SESSION_UPSTREAM_TLS]);
		bind_text(&b, rec->u.set.value);
		bind_i64(&b, rec->u.set.id);
		return store_step(st, &b, rec);
	case STORE_OP_SESSION_CLOSE:
		bind_start(&b, st->stmt[STMT_SESSION_CLOSE]);
		bind_i64(&b, rec->u.close.ended_us);
		bind_text(&b, rec->u.close.outcome);
		bind_text(&b, rec->u.close.detail);
		bind_i64(&b, rec->u.close.id);
		return store_step(st, &b, rec);
	case STORE_OP_EVENT:
		bind_start(&b, st->stmt[STMT_EVENT]);
		bind_i64(&b, rec->u.event.session_id);
		bind_i64(&b, rec->u.event.seq);
		bind_i64(&b, rec->u.event.t_us);
		bind_text(&b, store_side_name(rec->u.event.side));
		bind_text(&b, store_kind_name(rec->u.event.kind));
		bind_i64(&b, rec->u.event.flags);
		bind_i64_or_null(&b, rec->u.event.message_id);
		bind_text(&b, rec->u.event.text);
		if (store_content_external(rec)) {
			struct content_loc loc;
			char err[256];

			/* The bytes go to a segment; the row says where. */
			if (content_writer_append(st->content, rec->u.event.raw, rec->u.event.raw_len, &loc, err,
						  sizeof(err)) < 0) {
				sqlite3_reset(b.stmt);
				sqlite3_clear_bindings(b.stmt);
				store_count_lost(st, 0, "store: cannot record message content: %s", err);
				return STORE_CONTENT_FAILED;
			}
			bind_null(&b);
			bind_i64(&b, loc.segment);
			bind_i64(&b, loc.offset);
			bind_i64(&b, loc.length);
		} else {
			bind_blob(&b, rec->u.event.raw, rec->u.event.raw_len);
			bind_null(&b);
			bind_null(&b);
			bind_null(&b);
		}
		return store_step(st, &b, rec);
	case STORE_OP_MESSAGE_OPEN:
		bind_start(&b, st->stmt[STMT_MESSAGE_OPEN]);
		bind_i64(&b, rec->u.msg.id);
		bind_i64(&b, rec->u.msg.session_id);
		bind_i64(&b, rec->u.msg.idx);
		bind_i64(&b, rec->u.msg.started_us);
		bind_text(&b, rec->u.msg.mail_from);
		bind_text(&b, rec->u.msg.mail_params);
		bind_text(&b, rec->u.msg.transport);
		if (store_step(st, &b, rec) < 0)
			return -1;
		for (i = 0; i < rec->u.msg.nrcpts; i++) {
			const struct rec_rcpt *r = &rec->u.msg.rcpts[i];

			bind_start(&b, st->stmt[STMT_RCPT]);
			bind_i64(&b, rec->u.msg.id);
			bind_i64(&b, (int64_t)i + 1);
			bind_text(&b, r->address);
			bind_text(&b, r->params);
			bind_i64_or_null(&b, r->reply_code);
			bind_text(&b, r->reply);
			if (store_step(st, &b, rec) < 0)
				return -1;
		}
		return 0;
	case STORE_OP_MESSAGE_CLOSE:
		bind_start(&b, st->stmt[STMT_MESSAGE_CLOSE]);
		bind_i64(&b, rec->u.msg_end.ended_us);
		bind_i64(&b, rec->u.msg_end.size);
		bind_i64(&b, rec->u.msg_end.complete ? 1 : 0);
		bind_text(&b, rec->u.msg_end.subject);
		bind_text(&b, rec->u.msg_end.from);
		bind_text(&b, rec->u.msg_end.to);
		bind_text(&b, rec->u.msg_end.message_id);
		bind_text(&b, rec->u.msg_end.date);
		bind_i64_or_null(&b, rec->u.msg_end.reply_code);
		bind_text(&b, rec->u.msg_end.reply);
		bind_i64(&b, rec->u.msg_end.id);
		return store_step(st, &b, rec);
	}
	return -1;
}

/* Run a bound row statement and make it ready for the next row; its
 * SQLITE_STATIC bindings point into rec, which outlives this call. */
static int
store_step(struct store *st, struct binder *b, const struct store_rec *rec)
{
	char what[128];
	int rc = b->rc;

	if (rc == SQLITE_OK) {
		rc = sqlite3_step(b->stmt);
		if (rc == SQLITE_DONE)
			rc = SQLITE_OK;
	}
	if (rc != SQLITE_OK) {
		store_rec_describe(rec, what, sizeof(what));
		/* Counted by the caller, which knows what else the error cost. */
		store_count_lost(st, 0, "store: cannot write %s: %s", what,
			   b->rc != SQLITE_OK ? sqlite3_errstr(rc) : sqlite3_errmsg(st->db));
	}
	sqlite3_reset(b->stmt);
	sqlite3_clear_bindings(b->stmt);
	return rc == SQLITE_OK ? 0 : -1;
}

static int
store_exec_stmt(struct store *st, enum store_stmt which)
{
	int rc;

	rc = sqlite3_step(st->stmt[which]);
	sqlite3_reset(st->stmt[which]);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void
store_rec_describe(const struct store_rec *rec, char *buf, size_t bufsz)
{
	switch (rec->op) {
	case STORE_OP_SESSION_OPEN:
		snprintf(buf, bufsz, "the start of session %" PRId64, rec->u.session.id);
		break;
	case STORE_OP_SESSION_ADDR:
		snprintf(buf, bufsz, "the upstream address of session %" PRId64, rec->u.set.id);
		break;
	case STORE_OP_SESSION_TLS:
		snprintf(buf, bufsz, "the %s TLS details of session %" PRId64, store_side_name(rec->u.set.side),
			 rec->u.set.id);
		break;
	case STORE_OP_SESSION_CLOSE:
		snprintf(buf, bufsz, "the end of session %" PRId64, rec->u.close.id);
		break;
	case STORE_OP_EVENT:
		snprintf(buf, bufsz, "session %" PRId64 " event %" PRId64 " (%s)", rec->u.event.session_id,
			 rec->u.event.seq, store_kind_name(rec->u.event.kind));
		break;
	case STORE_OP_MESSAGE_OPEN:
		snprintf(buf, bufsz, "session %" PRId64 " message %" PRId64, rec->u.msg.session_id, rec->u.msg.id);
		break;
	case STORE_OP_MESSAGE_CLOSE:
		snprintf(buf, bufsz, "the end of message %" PRId64, rec->u.msg_end.id);
		break;
	default:
		snprintf(buf, bufsz, "a record of unknown type %d", (int)rec->op);
		break;
	}
}

/* ------------------------------------------------------------------------
 * binding
 */

static void
bind_start(struct binder *b, sqlite3_stmt *stmt)
{
	b->stmt = stmt;
	b->idx = 0;
	b->rc = SQLITE_OK;
}

static void
bind_i64(struct binder *b, int64_t v)
{
	b->idx++;
	if (b->rc == SQLITE_OK)
		b->rc = sqlite3_bind_int64(b->stmt, b->idx, v);
}

/* 0 means "none" in the recording API; NULL says so in the database. */
static void
bind_i64_or_null(struct binder *b, int64_t v)
{
	b->idx++;
	if (b->rc == SQLITE_OK)
		b->rc = v == 0 ? sqlite3_bind_null(b->stmt, b->idx) : sqlite3_bind_int64(b->stmt, b->idx, v);
}

/* Text is bound as the bytes it is: SQLite stores invalid UTF-8 untouched. */
static void
bind_text(struct binder *b, const char *s)
{
	b->idx++;
	if (b->rc == SQLITE_OK)
		b->rc = s == NULL ? sqlite3_bind_null(b->stmt, b->idx)
				  : sqlite3_bind_text(b->stmt, b->idx, s, -1, SQLITE_STATIC);
}

static void
bind_null(struct binder *b)
{
	b->idx++;
	if (b->rc == SQLITE_OK)
		b->rc = sqlite3_bind_null(b->stmt, b->idx);
}

static void
bind_blob(struct binder *b, const void *p, size_t len)
{
	b->idx++;
	if (b->rc != SQLITE_OK)
		return;
	if (p == NULL)
		b->rc = sqlite3_bind_null(b->stmt, b->idx);
	else if (len == 0)
		b->rc = sqlite3_bind_zeroblob(b->stmt, b->idx, 0);
	else
		b->rc = sqlite3_bind_blob64(b->stmt, b->idx, p, len, SQLITE_STATIC);
}
