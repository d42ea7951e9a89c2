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
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include <sqlite3.h>

#include "smtptap/store_int.h"
#include "smtptap/util.h"

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
static void store_writer_idle(struct store *st);
static int64_t store_mono_ms(void);
static void store_retain(struct store *st);
static uint64_t store_write_batch(struct store *st, struct store_rec *batch, size_t n);
static int store_write_rec(struct store *st, const struct store_rec *rec);
static struct store_sum *store_sum_get(struct store *st, int64_t id);
static void store_sum_rec(struct store *st, const struct store_rec *rec);
static int store_sum_segment(struct store *st, int64_t id, int64_t segment);
static int store_sums_apply(struct store *st);
static void store_sums_reset(struct store *st);
static int store_step(struct store *st, struct binder *b, const struct store_rec *rec);
static int store_write_message_open(struct store *st, const struct store_rec *rec);
static int store_write_message_close(struct store *st, const struct store_rec *rec);
static uint64_t store_msgs_flush(struct store *st);
static int store_exec_stmt(struct store *st, enum store_stmt which);
static void store_rec_describe(const struct store_rec *rec, char *buf, size_t bufsz);

static void bind_start(struct binder *b, sqlite3_stmt *stmt);
static void bind_i64(struct binder *b, int64_t v);
static void bind_i64_or_null(struct binder *b, int64_t v);
static void bind_text(struct binder *b, const char *s);
static void bind_text_len(struct binder *b, const char *s, size_t len);
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
	if (st->opts.retain_us > 0 || st->opts.max_bytes > 0)
		st->next_retain_ms = store_mono_ms(); /* a first look at once */
	pthread_mutex_lock(&st->lock);
	for (;;) {
		while (st->head == NULL && !st->stop)
			store_writer_idle(st);
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
		st->retain_bytes += bytes;
		if (st->opts.max_bytes > 0 && st->retain_bytes >= st->opts.max_bytes / STORE_RETAIN_GROWTH)
			st->next_retain_ms = store_mono_ms();
		if (st->next_retain_ms > 0 && store_mono_ms() >= st->next_retain_ms)
			store_retain(st);

		pthread_mutex_lock(&st->lock);
		st->backlog -= bytes;
		st->nlost += nlost;
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

static int64_t
store_mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* With st->lock held and nothing queued: wait for records, or until
 * retention is due (and then look at it, without the lock). */
static void
store_writer_idle(struct store *st)
{
	struct timespec deadline;
	int64_t now;

	if (st->next_retain_ms <= 0) {
		pthread_cond_wait(&st->cond, &st->lock);
		return;
	}
	now = store_mono_ms();
	if (now >= st->next_retain_ms) {
		pthread_mutex_unlock(&st->lock);
		store_retain(st);
		pthread_mutex_lock(&st->lock);
		return;
	}
	deadline.tv_sec = st->next_retain_ms / 1000;
	deadline.tv_nsec = (long)(st->next_retain_ms % 1000) * 1000000L;
	pthread_cond_timedwait(&st->cond, &st->lock, &deadline);
}

/*
 * Retention (proxy --retain, --max-db-size), between batches: delete at
 * most STORE_RETAIN_CHUNK whole sessions in one short transaction, give
 * some freed pages back, and come back soon if there is more to do, else
 * after STORE_RETAIN_INTERVAL_MS.  Recording waits only for this one step.
 */
static void
store_retain(struct store *st)
{
	struct store_prune_opts o = { .max_bytes = st->opts.max_bytes, .max_sessions = STORE_RETAIN_CHUNK };
	struct store_prune_result res;
	char err[256];

	memset(&res, 0, sizeof(res));
	if (st->opts.retain_us > 0)
		o.before_us = util_now_us() - st->opts.retain_us;
	if (store_prune_db(st->db, &o, &res, err, sizeof(err)) < 0) {
		log_warnx("store: %s: retention: %s (tried again in %d s)", st->path, err, STORE_RETAIN_INTERVAL_MS / 1000);
		res.sessions = 0;
	} else if (res.sessions > 0) {
		store_incremental_vacuum(st->db, STORE_RETAIN_VACUUM_PAGES);
		log_info("store: %s: retention deleted %" PRId64 " session(s) (%" PRId64 "-%" PRId64 ", %" PRId64
			 " events)",
			 st->path, res.sessions, res.first_id, res.last_id, res.events);
	}
	st->next_retain_ms = store_mono_ms() + (res.sessions >= STORE_RETAIN_CHUNK ? 0 : STORE_RETAIN_INTERVAL_MS);
	st->retain_bytes = 0;
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
	uint64_t nlost = 0, intx = 0, nfailed;
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
			store_sum_rec(st, rec);
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
		/* Rolled back: so are the rows the summaries counted, and
		 * the content references die with them. */
		store_sums_reset(st);
		st->msg_npending = 0;
		content_writer_discard(st->content);
		nlost += intx;
		intx = 0;
		if (store_exec_stmt(st, STMT_BEGIN) != SQLITE_OK) {
			nlost += left - 1;
			goto out;
		}
	}
	if ((nfailed = store_msgs_flush(st)) > 0) {
		if (sqlite3_get_autocommit(st->db)) {
			nlost += intx; /* rolled back: every row of the batch */
			intx = 0;
			store_sums_reset(st);
			content_writer_discard(st->content);
		} else {
			nlost += nfailed;
			intx -= nfailed;
		}
	}
	if (store_sums_apply(st) < 0) {
		/* The summaries must agree with the rows, and a content range
		 * that is not recorded would let prune delete bytes that rows
		 * refer to: none of the batch may commit. */
		if (!sqlite3_get_autocommit(st->db))
			store_exec_stmt(st, STMT_ROLLBACK);
		nlost += intx;
		intx = 0;
		content_writer_discard(st->content);
	}
	if (sqlite3_get_autocommit(st->db)) {
		/* nothing left to commit */
	} else if (content_writer_sync(st->content, err, sizeof(err)) < 0) {
		/* The bytes the rows refer to must be on disk before the rows are. */
		store_count_lost(st, 0, "store: cannot record message content, %" PRIu64 " records lost: %s", intx, err);
		nlost += intx;
		store_exec_stmt(st, STMT_ROLLBACK);
	} else if (store_exec_stmt(st, STMT_COMMIT) != SQLITE_OK) {
		store_count_lost(st, 0, "store: cannot commit %" PRIu64 " records: %s", intx, sqlite3_errmsg(st->db));
		nlost += intx;
		if (!sqlite3_get_autocommit(st->db))
			store_exec_stmt(st, STMT_ROLLBACK);
	}
out:
	store_sums_reset(st);
	st->msg_npending = 0;
	for (rec = batch; rec != NULL; rec = next) {
		next = rec->next;
		store_rec_free(rec);
	}
	return nlost;
}

/* Returns 0, or -1 (logged through store_count_lost()). */
static int
store_write_rec(struct store *st, const struct store_rec *rec)
{
	struct binder b;

	switch (rec->op) {
	case STORE_OP_SESSION_OPEN:
		bind_start(&b, st->stmt[STMT_SESSION_OPEN]);
		bind_i64(&b, rec->u.session.id);
		bind_i64(&b, rec->u.session.started_us);
		bind_text(&b, rec->u.session.listener);
		bind_text(&b, rec->u.session.client);
		bind_text(&b, rec->u.session.upstream);
		bind_text(&b, rec->u.session.mode);
		{
			char ip[UTIL_ADDR_MAX];

			bind_text(&b, store_client_ip(rec->u.session.client, ip, sizeof(ip)) == 0 ? ip : NULL);
			bind_i64_or_null(&b, rec->u.session.replay_of);
			return store_step(st, &b, rec);
		}
	case STORE_OP_SESSION_AUTH:
		bind_start(&b, st->stmt[STMT_SESSION_AUTH]);
		bind_text(&b, rec->u.set.value);
		bind_text(&b, rec->u.set.value2);
		bind_i64(&b, rec->u.set.id);
		return store_step(st, &b, rec);
	case STORE_OP_SESSION_ADDR:
	case STORE_OP_SESSION_TLS:
		if (rec->op == STORE_OP_SESSION_ADDR) {
			/* Set with the batch's summary of the session (its
			 * own UPDATE only when memory is short). */
			struct store_sum *e = store_sum_get(st, rec->u.set.id);

			if (e != NULL) {
				e->upstream_addr = rec->u.set.value;
				return 0;
			}
			bind_start(&b, st->stmt[STMT_SESSION_ADDR]);
		} else if (rec->u.set.side == STORE_SIDE_CLIENT)
			bind_start(&b, st->stmt[STMT_SESSION_CLIENT_TLS]);
		else
			bind_start(&b, st->stmt[STMT_SESSION_UPSTREAM_TLS]);
		bind_text(&b, rec->u.set.value);
		bind_i64(&b, rec->u.set.id);
		return store_step(st, &b, rec);
	case STORE_OP_SESSION_CLOSE: {
		struct store_sum *e = store_sum_get(st, rec->u.close.id);

		if (e != NULL) { /* as the upstream address above */
			e->close = rec;
			return 0;
		}
	}
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
		bind_i64_or_null(&b, rec->u.event.message_row);
		bind_i64_or_null(&b, rec->u.event.answers_seq);
		bind_i64_or_null(&b, rec->u.event.cause_seq);
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
			if (store_sum_segment(st, rec->u.event.session_id, loc.segment) < 0) {
				sqlite3_reset(b.stmt);
				sqlite3_clear_bindings(b.stmt);
				store_count_lost(st, 0, "store: cannot record message content: out of memory");
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
	case STORE_OP_TX_OPEN:
		bind_start(&b, st->stmt[STMT_TX_OPEN]);
		bind_i64(&b, rec->u.tx.session_id);
		bind_i64(&b, rec->u.tx.idx);
		bind_i64(&b, rec->u.tx.started_us);
		bind_i64_or_null(&b, rec->u.tx.mail_seq);
		bind_text(&b, rec->u.tx.mail_from);
		bind_text(&b, rec->u.tx.mail_params);
		bind_i64_or_null(&b, rec->u.tx.mail_code);
		bind_text(&b, rec->u.tx.mail_reply);
		return store_step(st, &b, rec);
	case STORE_OP_TX_REPLY:
		bind_start(&b, st->stmt[STMT_TX_REPLY]);
		bind_i64_or_null(&b, rec->u.tx_reply.code);
		bind_text(&b, rec->u.tx_reply.reply);
		bind_i64(&b, rec->u.tx_reply.session_id);
		bind_i64(&b, rec->u.tx_reply.idx);
		return store_step(st, &b, rec);
	case STORE_OP_RCPT:
		bind_start(&b, st->stmt[STMT_RCPT]);
		bind_i64(&b, rec->u.rcpt.session_id);
		bind_i64(&b, rec->u.rcpt.transaction_idx);
		bind_i64(&b, rec->u.rcpt.idx);
		bind_i64_or_null(&b, rec->u.rcpt.rcpt_seq);
		bind_text(&b, rec->u.rcpt.address);
		bind_text(&b, rec->u.rcpt.params);
		bind_i64_or_null(&b, rec->u.rcpt.reply_code);
		bind_text(&b, rec->u.rcpt.reply);
		return store_step(st, &b, rec);
	case STORE_OP_MESSAGE_OPEN:
		/* Written with its end if that comes in this batch. */
		if (st->msg_npending < STORE_MSG_PENDING_MAX) {
			st->msg_pending[st->msg_npending++] = rec;
			return 0;
		}
		return store_write_message_open(st, rec);
	case STORE_OP_MESSAGE_CLOSE:
		return store_write_message_close(st, rec);
	}
	return -1;
}

/* bind the columns of a MESSAGE_OPEN record, in STMT_MESSAGE_OPEN's order
 * (STMT_MESSAGE_WHOLE starts with the same nine) */
static void
bind_message_open(struct binder *b, const struct store_rec *rec)
{
	bind_i64(b, rec->u.msg.id);
	bind_i64(b, rec->u.msg.session_id);
	bind_i64_or_null(b, rec->u.msg.transaction_idx);
	bind_i64(b, rec->u.msg.idx);
	bind_i64(b, rec->u.msg.started_us);
	bind_text(b, rec->u.msg.mail_from);
	bind_text(b, rec->u.msg.mail_params);
	bind_text(b, rec->u.msg.transport);
	bind_i64_or_null(b, rec->u.msg.data_seq_first); /* 0: not known */
}

/* bind what a MESSAGE_CLOSE record sets, in STMT_MESSAGE_CLOSE's order
 * (STMT_MESSAGE_WHOLE ends with the same eleven) */
static void
bind_message_close(struct binder *b, const struct store_rec *rec)
{
	bind_i64(b, rec->u.msg_end.ended_us);
	bind_i64(b, rec->u.msg_end.size);
	bind_i64(b, rec->u.msg_end.complete ? 1 : 0);
	bind_text(b, rec->u.msg_end.subject);
	bind_text(b, rec->u.msg_end.from);
	bind_text(b, rec->u.msg_end.to);
	bind_text(b, rec->u.msg_end.message_id_hdr);
	bind_text(b, rec->u.msg_end.date);
	bind_i64_or_null(b, rec->u.msg_end.reply_code);
	bind_text(b, rec->u.msg_end.reply);
	bind_i64_or_null(b, rec->u.msg_end.data_seq_last); /* 0: not known */
}

static int
store_write_message_open(struct store *st, const struct store_rec *rec)
{
	struct binder b;

	bind_start(&b, st->stmt[STMT_MESSAGE_OPEN]);
	bind_message_open(&b, rec);
	return store_step(st, &b, rec);
}

/* One INSERT of the whole row when the message was opened in this batch
 * (still pending), otherwise an UPDATE of the row an earlier batch wrote. */
static int
store_write_message_close(struct store *st, const struct store_rec *rec)
{
	struct binder b;
	size_t i;

	for (i = st->msg_npending; i-- > 0;) {
		const struct store_rec *open = st->msg_pending[i];

		if (open->u.msg.id != rec->u.msg_end.id)
			continue;
		st->msg_pending[i] = st->msg_pending[--st->msg_npending];
		bind_start(&b, st->stmt[STMT_MESSAGE_WHOLE]);
		bind_message_open(&b, open);
		bind_message_close(&b, rec);
		return store_step(st, &b, rec);
	}
	bind_start(&b, st->stmt[STMT_MESSAGE_CLOSE]);
	bind_message_close(&b, rec);
	bind_i64(&b, rec->u.msg_end.id);
	return store_step(st, &b, rec);
}

/* Write the messages opened in this batch whose end has not come yet.
 * Returns how many could not be written; after a failure that rolled the
 * transaction back the rest are not tried (the caller counts them lost
 * with the transaction). */
static uint64_t
store_msgs_flush(struct store *st)
{
	uint64_t nfailed = 0;
	size_t i;

	for (i = 0; i < st->msg_npending; i++) {
		if (store_write_message_open(st, st->msg_pending[i]) == 0)
			continue;
		nfailed++;
		if (sqlite3_get_autocommit(st->db))
			break;
	}
	st->msg_npending = 0;
	return nfailed;
}

/* Run a bound row statement and make it ready for the next row; its
 * SQLITE_STATIC bindings point into rec, which outlives this call. */
static int
store_step(struct store *st, struct binder *b, const struct store_rec *rec)
{
	char what[128];
	int rc = b->rc;

	/* All bound, or stale bindings would be read (see below). */
	if (rc == SQLITE_OK && b->idx != sqlite3_bind_parameter_count(b->stmt))
		rc = b->rc = SQLITE_MISUSE;
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
	/* No sqlite3_clear_bindings(): every statement binds all of its
	 * parameters before each step (bind_start() counts from the first),
	 * so the bindings left behind, pointers into a record about to be
	 * freed, are never read. */
	sqlite3_reset(b->stmt);
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
	case STORE_OP_SESSION_AUTH:
		snprintf(buf, bufsz, "the AUTH details of session %" PRId64, rec->u.set.id);
		break;
	case STORE_OP_SESSION_CLOSE:
		snprintf(buf, bufsz, "the end of session %" PRId64, rec->u.close.id);
		break;
	case STORE_OP_TX_OPEN:
		snprintf(buf, bufsz, "session %" PRId64 " transaction %d", rec->u.tx.session_id, rec->u.tx.idx);
		break;
	case STORE_OP_TX_REPLY:
		snprintf(buf, bufsz, "the MAIL reply of session %" PRId64 " transaction %d", rec->u.tx_reply.session_id,
			 rec->u.tx_reply.idx);
		break;
	case STORE_OP_RCPT:
		snprintf(buf, bufsz, "session %" PRId64 " transaction %d recipient %d", rec->u.rcpt.session_id,
			 rec->u.rcpt.transaction_idx, rec->u.rcpt.idx);
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
 * the sessions' summary columns
 */

/* The batch's summary entry of session id, made if needed; NULL only when
 * memory is short even after applying (and so emptying) the table. */
static struct store_sum *
store_sum_get(struct store *st, int64_t id)
{
	struct store_sum *v, *e;
	size_t cap, i, k;

	for (;;) {
		if (st->sums_cap > 0) {
			for (i = (size_t)id & (st->sums_cap - 1);; i = (i + 1) & (st->sums_cap - 1)) {
				e = &st->sums[i];
				if (e->id == id)
					return e;
				if (e->id == 0)
					break;
			}
			if (st->sums_n < st->sums_cap / 2) {
				memset(e, 0, sizeof(*e));
				e->id = id;
				st->sums_n++;
				return e;
			}
		}
		/* Grow (rehashing), or, when memory is short, write what the
		 * table holds now (in the same transaction) and start over. */
		cap = st->sums_cap == 0 ? 256 : st->sums_cap * 2;
		if ((v = calloc(cap, sizeof(*v))) == NULL) {
			if (st->sums_n == 0 || store_sums_apply(st) < 0)
				return NULL;
			continue;
		}
		for (k = 0; k < st->sums_cap; k++) {
			if (st->sums[k].id == 0)
				continue;
			for (i = (size_t)st->sums[k].id & (cap - 1); v[i].id != 0; i = (i + 1) & (cap - 1))
				;
			v[i] = st->sums[k];
		}
		free(st->sums);
		st->sums = v;
		st->sums_cap = cap;
	}
}

/* Widen session id's segment range to take in `segment`.  Returns 0, or
 * -1 when memory is short: the content's row must then not commit. */
static int
store_sum_segment(struct store *st, int64_t id, int64_t segment)
{
	struct store_sum *e = store_sum_get(st, id);

	if (e == NULL)
		return -1;
	if (e->seg_first == 0 || segment < e->seg_first)
		e->seg_first = segment;
	if (segment > e->seg_last)
		e->seg_last = segment;
	return 0;
}

/* Count a written record in its session's summary. */
static void
store_sum_rec(struct store *st, const struct store_rec *rec)
{
	struct store_sum *e;
	const char *name;
	size_t len;

	switch (rec->op) {
	case STORE_OP_EVENT:
		if ((e = store_sum_get(st, rec->u.event.session_id)) == NULL)
			return;
		e->nevents++;
		if ((unsigned)rec->u.event.side < 3)
			e->bytes[rec->u.event.side] += (int64_t)rec->u.event.raw_len;
		if (store_content_external(rec))
			e->content_bytes += (int64_t)rec->u.event.raw_len;
		/* What the client said it is (not a line smtptap dropped). */
		if (rec->u.event.side == STORE_SIDE_CLIENT && rec->u.event.kind == STORE_KIND_COMMAND &&
		    !(rec->u.event.flags & STORE_F_DROPPED) &&
		    store_helo_name(rec->u.event.raw, rec->u.event.raw_len, &name, &len)) {
			e->helo = name;
			e->helo_len = len;
		}
		break;
	case STORE_OP_TX_OPEN:
		if ((e = store_sum_get(st, rec->u.tx.session_id)) != NULL)
			e->ntransactions++;
		break;
	case STORE_OP_MESSAGE_OPEN:
		if ((e = store_sum_get(st, rec->u.msg.session_id)) != NULL)
			e->nmessages++;
		break;
	default:
		break;
	}
}

/* One UPDATE per session the batch touched, inside its transaction, then
 * an empty table.  Returns 0, or -1 when an UPDATE failed (logged). */
static int
store_sums_apply(struct store *st)
{
	struct binder b;
	size_t i;
	int rc = 0;

	for (i = 0; i < st->sums_cap && st->sums_n > 0; i++) {
		struct store_sum *e = &st->sums[i];

		if (e->id == 0)
			continue;
		bind_start(&b, st->stmt[STMT_SESSION_SUMMARY]);
		bind_i64(&b, e->nevents);
		bind_i64(&b, e->ntransactions);
		bind_i64(&b, e->nmessages);
		bind_i64(&b, e->bytes[STORE_SIDE_CLIENT]);
		bind_i64(&b, e->bytes[STORE_SIDE_UPSTREAM]);
		bind_i64(&b, e->bytes[STORE_SIDE_PROXY]);
		bind_i64(&b, e->content_bytes);
		if (e->helo != NULL)
			bind_text_len(&b, e->helo, e->helo_len);
		else
			bind_text(&b, NULL);
		bind_text(&b, e->upstream_addr);
		bind_i64(&b, e->close != NULL);
		if (e->close != NULL) {
			bind_i64(&b, e->close->u.close.ended_us);
			bind_text(&b, e->close->u.close.outcome);
			bind_text(&b, e->close->u.close.detail);
		} else {
			bind_null(&b);
			bind_null(&b);
			bind_null(&b);
		}
		bind_i64(&b, e->id);
		if (e->seg_first > 0) {
			bind_i64(&b, e->seg_first);
			bind_i64(&b, e->seg_last);
		} else {
			bind_null(&b);
			bind_null(&b);
		}
		if (b.rc == SQLITE_OK && b.idx != sqlite3_bind_parameter_count(b.stmt))
			b.rc = SQLITE_MISUSE;
		if (b.rc == SQLITE_OK && (b.rc = sqlite3_step(b.stmt)) == SQLITE_DONE)
			b.rc = SQLITE_OK;
		if (b.rc != SQLITE_OK) {
			store_count_lost(st, 0, "store: cannot update the summary of session %" PRId64 ": %s", e->id,
					 sqlite3_errmsg(st->db));
			rc = -1;
		}
		sqlite3_reset(b.stmt); /* bindings: as in store_step() */
		memset(e, 0, sizeof(*e));
		st->sums_n--;
		if (rc < 0)
			break; /* the caller rolls the batch back: the rest is moot */
	}
	store_sums_reset(st);
	return rc;
}

static void
store_sums_reset(struct store *st)
{
	if (st->sums_n > 0)
		memset(st->sums, 0, st->sums_cap * sizeof(*st->sums));
	st->sums_n = 0;
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
bind_text_len(struct binder *b, const char *s, size_t len)
{
	b->idx++;
	if (b->rc == SQLITE_OK)
		b->rc = sqlite3_bind_text64(b->stmt, b->idx, s, len, SQLITE_STATIC, SQLITE_UTF8);
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
