/*
 * store_record.c - see store.h.  The recording calls of the event loop.
 *
 * The event loop must never wait for the disk, and the buffers it records
 * from (evbuffers, stack strings) are gone by the time the writer runs, so
 * each recording call copies its arguments into one self-contained record
 * and appends it to the queue the writer thread (store_writer.c) drains.
 * Small records are cut from shared blocks, message data has an allocation
 * of its own (struct store_pool_block); either way store_rec_free() is the
 * one way to free one, and the record's size is what the backlog counts.
 */
#include "smtptap/store.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/log.h"
#include "smtptap/store_int.h"

static void store_session_set(struct store *st, enum store_op op, int64_t session_id, enum store_side side,
			      const char *value, const char *value2);
static struct store_rec *store_rec_alloc(struct store *st, enum store_op op, size_t extra, const char *what,
					 int64_t id);
static struct store_rec *store_rec_alloc_own(struct store *st, enum store_op op, size_t extra, const char *what,
					     int64_t id);
static void store_pool_unref(struct store_pool_block *b);
/* Under AddressSanitizer every record is an allocation of its own, so
 * that a write past a record's end is caught, not lost inside a block. */
#if defined(__SANITIZE_ADDRESS__)
#define STORE_POOL_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STORE_POOL_OFF 1
#endif
#endif
#ifndef STORE_POOL_OFF
#define STORE_POOL_OFF 0
#endif

static size_t rec_strsize(const char *s);
static const char *rec_strcpy(char **cur, const char *s);
static void store_enqueue(struct store *st, struct store_rec *rec);

/* ------------------------------------------------------------------------
 * recording (event loop thread)
 */

int64_t
store_session_new_id(struct store *st)
{
	return st->next_session_id++;
}

int64_t
store_message_new_id(struct store *st)
{
	return st->next_message_id++;
}

void
store_session_open(struct store *st, const struct store_session *s)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_SESSION_OPEN,
			      rec_strsize(s->listener) + rec_strsize(s->client) + rec_strsize(s->upstream) +
				  rec_strsize(s->mode),
			      "session", s->id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.session.id = s->id;
	rec->u.session.started_us = s->started_us;
	rec->u.session.replay_of = s->replay_of;
	rec->u.session.listener = rec_strcpy(&cur, s->listener);
	rec->u.session.client = rec_strcpy(&cur, s->client);
	rec->u.session.upstream = rec_strcpy(&cur, s->upstream);
	rec->u.session.mode = rec_strcpy(&cur, s->mode);
	store_enqueue(st, rec);
}

/* Queue an update of one or two text columns of a session row. */
static void
store_session_set(struct store *st, enum store_op op, int64_t session_id, enum store_side side, const char *value,
		  const char *value2)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, op, rec_strsize(value) + rec_strsize(value2), "session", session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.set.id = session_id;
	rec->u.set.side = side;
	rec->u.set.value = rec_strcpy(&cur, value);
	rec->u.set.value2 = rec_strcpy(&cur, value2);
	store_enqueue(st, rec);
}

void
store_session_set_upstream_addr(struct store *st, int64_t session_id, const char *addr)
{
	store_session_set(st, STORE_OP_SESSION_ADDR, session_id, STORE_SIDE_UPSTREAM, addr, NULL);
}

void
store_session_set_auth(struct store *st, int64_t session_id, const char *mech, const char *user)
{
	store_session_set(st, STORE_OP_SESSION_AUTH, session_id, STORE_SIDE_CLIENT, mech, user);
}

void
store_session_set_tls(struct store *st, int64_t session_id, enum store_side side, const char *json)
{
	if (side != STORE_SIDE_CLIENT && side != STORE_SIDE_UPSTREAM) {
		log_warnx("s=%" PRId64 " store: TLS details for side %d ignored: not a leg", session_id, (int)side);
		return;
	}
	store_session_set(st, STORE_OP_SESSION_TLS, session_id, side, json, NULL);
}

void
store_session_close(struct store *st, int64_t session_id, int64_t ended_us, const char *outcome,
		    const char *detail)
{
	struct store_rec *rec;
	char *cur;

	/* A NULL outcome would leave the session looking live, and the next
	 * run would call it interrupted. */
	if (outcome == NULL)
		outcome = "closed";
	rec = store_rec_alloc(st, STORE_OP_SESSION_CLOSE, rec_strsize(outcome) + rec_strsize(detail), "session",
			      session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.close.id = session_id;
	rec->u.close.ended_us = ended_us;
	rec->u.close.outcome = rec_strcpy(&cur, outcome);
	rec->u.close.detail = rec_strcpy(&cur, detail);
	store_enqueue(st, rec);
}

/* What an event record says about itself (all but its bytes and text). */
static void
rec_event_head(struct store_rec *rec, const struct store_event *ev)
{
	rec->u.event.session_id = ev->session_id;
	rec->u.event.seq = ev->seq;
	rec->u.event.t_us = ev->t_us;
	rec->u.event.message_row = ev->message_row;
	rec->u.event.answers_seq = ev->answers_seq;
	rec->u.event.cause_seq = ev->cause_seq;
	rec->u.event.side = ev->side;
	rec->u.event.kind = ev->kind;
	rec->u.event.flags = ev->flags;
}

void
store_event_add(struct store *st, const struct store_event *ev)
{
	struct store_rec *rec;
	size_t raw_len = ev->raw != NULL ? ev->raw_len : 0;
	char *cur;

	if (raw_len > SIZE_MAX / 2) {
		store_count_lost(st, 1, "s=%" PRId64 " store: event %" PRId64 " dropped: %zu bytes of raw data", ev->session_id,
			   ev->seq, raw_len);
		return;
	}
	rec = store_rec_alloc(st, STORE_OP_EVENT, raw_len + rec_strsize(ev->text), "session", ev->session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec_event_head(rec, ev);
	rec->u.event.raw = NULL;
	rec->u.event.raw_len = raw_len;
	if (ev->raw != NULL) {
		/* Non-NULL even when empty: an empty raw is not a missing one. */
		if (raw_len > 0)
			memcpy(cur, ev->raw, raw_len);
		rec->u.event.raw = cur;
		cur += raw_len;
	}
	rec->u.event.text = rec_strcpy(&cur, ev->text);
	store_enqueue(st, rec);
}

/* A struct store_data is a struct store_rec whose event raw is data[]. */
struct store_data *
store_data_new(struct store *st, int64_t session_id, size_t cap)
{
	struct store_rec *rec;

	if (cap > SIZE_MAX / 2) {
		store_count_lost(st, 1, "s=%" PRId64 " store: cannot queue %zu bytes of message data", session_id, cap);
		return NULL;
	}
	rec = store_rec_alloc_own(st, STORE_OP_EVENT, cap, "session", session_id);
	return (struct store_data *)rec;
}

void *
store_data_buf(struct store_data *d)
{
	return ((struct store_rec *)d)->data;
}

struct store_data *
store_data_grow(struct store *st, struct store_data *d, size_t cap)
{
	struct store_rec *rec = (struct store_rec *)d, *bigger;

	if (cap > SIZE_MAX / 2 || (bigger = realloc(rec, offsetof(struct store_rec, data) + cap)) == NULL) {
		store_count_lost(st, 1, "store: cannot grow a message data record to %zu bytes: out of memory", cap);
		return NULL;
	}
	bigger->size = offsetof(struct store_rec, data) + cap;
	return (struct store_data *)bigger;
}

void
store_data_add(struct store *st, struct store_data *d, const struct store_event *ev)
{
	struct store_rec *rec = (struct store_rec *)d, *small;
	size_t cap = rec->size - offsetof(struct store_rec, data), len = ev->raw_len;

	if (len > cap)
		len = cap;
	/* The backlog counts allocations: give back what was not filled.
	 * Shrinking in place is cheap and never fails in practice; if it
	 * does, the record just stays bigger. */
	if (len < cap / 2 && (small = realloc(rec, offsetof(struct store_rec, data) + len + 1)) != NULL) {
		rec = small;
		rec->size = offsetof(struct store_rec, data) + len + 1;
	}
	rec_event_head(rec, ev);
	rec->u.event.raw = rec->data;
	rec->u.event.raw_len = len;
	rec->u.event.text = NULL;
	store_enqueue(st, rec);
}

void
store_data_free(struct store_data *d)
{
	store_rec_free((struct store_rec *)d);
}

void
store_transaction_open(struct store *st, const struct store_transaction *t)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_TX_OPEN,
			      rec_strsize(t->mail_from) + rec_strsize(t->mail_params) + rec_strsize(t->mail_reply),
			      "session", t->session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.tx.session_id = t->session_id;
	rec->u.tx.idx = t->idx;
	rec->u.tx.started_us = t->started_us;
	rec->u.tx.mail_seq = t->mail_seq;
	rec->u.tx.mail_from = rec_strcpy(&cur, t->mail_from);
	rec->u.tx.mail_params = rec_strcpy(&cur, t->mail_params);
	rec->u.tx.mail_code = t->mail_code;
	rec->u.tx.mail_reply = rec_strcpy(&cur, t->mail_reply);
	store_enqueue(st, rec);
}

void
store_transaction_mail_reply(struct store *st, int64_t session_id, int idx, int code, const char *reply)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_TX_REPLY, rec_strsize(reply), "session", session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.tx_reply.session_id = session_id;
	rec->u.tx_reply.idx = idx;
	rec->u.tx_reply.code = code;
	rec->u.tx_reply.reply = rec_strcpy(&cur, reply);
	store_enqueue(st, rec);
}

void
store_rcpt_add(struct store *st, const struct store_rcpt *r)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_RCPT,
			      rec_strsize(r->address) + rec_strsize(r->params) + rec_strsize(r->reply), "session",
			      r->session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.rcpt.session_id = r->session_id;
	rec->u.rcpt.transaction_idx = r->transaction_idx;
	rec->u.rcpt.idx = r->idx;
	rec->u.rcpt.rcpt_seq = r->rcpt_seq;
	rec->u.rcpt.reply_code = r->reply_code;
	rec->u.rcpt.address = rec_strcpy(&cur, r->address);
	rec->u.rcpt.params = rec_strcpy(&cur, r->params);
	rec->u.rcpt.reply = rec_strcpy(&cur, r->reply);
	store_enqueue(st, rec);
}

void
store_message_open(struct store *st, const struct store_message *m)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_MESSAGE_OPEN,
			      rec_strsize(m->mail_from) + rec_strsize(m->mail_params) + rec_strsize(m->transport),
			      "message", m->id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.msg.id = m->id;
	rec->u.msg.session_id = m->session_id;
	rec->u.msg.transaction_idx = m->transaction_idx;
	rec->u.msg.started_us = m->started_us;
	rec->u.msg.idx = m->idx;
	rec->u.msg.data_seq_first = m->data_seq_first;
	rec->u.msg.mail_from = rec_strcpy(&cur, m->mail_from);
	rec->u.msg.mail_params = rec_strcpy(&cur, m->mail_params);
	rec->u.msg.transport = rec_strcpy(&cur, m->transport);
	store_enqueue(st, rec);
}

void
store_message_close(struct store *st, const struct store_message_end *m)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_MESSAGE_CLOSE,
			      rec_strsize(m->subject) + rec_strsize(m->from) + rec_strsize(m->to) +
				  rec_strsize(m->message_id_hdr) + rec_strsize(m->date) + rec_strsize(m->reply),
			      "message", m->id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.msg_end.id = m->id;
	rec->u.msg_end.ended_us = m->ended_us;
	rec->u.msg_end.size = m->size > INT64_MAX ? INT64_MAX : (int64_t)m->size;
	rec->u.msg_end.complete = m->complete;
	rec->u.msg_end.data_seq_last = m->data_seq_last;
	rec->u.msg_end.subject = rec_strcpy(&cur, m->subject);
	rec->u.msg_end.from = rec_strcpy(&cur, m->from);
	rec->u.msg_end.to = rec_strcpy(&cur, m->to);
	rec->u.msg_end.message_id_hdr = rec_strcpy(&cur, m->message_id_hdr);
	rec->u.msg_end.date = rec_strcpy(&cur, m->date);
	rec->u.msg_end.reply_code = m->reply_code;
	rec->u.msg_end.reply = rec_strcpy(&cur, m->reply);
	store_enqueue(st, rec);
}

size_t
store_backlog_bytes(struct store *st)
{
	size_t n;

	pthread_mutex_lock(&st->lock);
	n = st->backlog;
	pthread_mutex_unlock(&st->lock);
	return n;
}

/* A record with `extra` bytes of data[], or NULL (counted and logged) when
 * memory is short; `what` and `id` name the row it was for ("session" 42).
 * Cut from the event loop's block when small (see store_int.h). */
static struct store_rec *
store_rec_alloc(struct store *st, enum store_op op, size_t extra, const char *what, int64_t id)
{
	const size_t align = alignof(max_align_t);
	size_t size = offsetof(struct store_rec, data) + extra, room;
	struct store_pool_block *b = st->pool;
	struct store_rec *rec;

	if (extra > STORE_POOL_REC_MAX || STORE_POOL_OFF)
		return store_rec_alloc_own(st, op, extra, what, id);
	room = (size + align - 1) & ~(align - 1);
	if (b == NULL || b->used + room > STORE_POOL_BLOCK) {
		if ((b = malloc(sizeof(*b) + STORE_POOL_BLOCK)) == NULL)
			return store_rec_alloc_own(st, op, extra, what, id); /* it reports */
		atomic_init(&b->refs, 1); /* the event loop's, while it fills it */
		b->used = 0;
		store_pool_release(st);
		st->pool = b;
	}
	rec = (struct store_rec *)(void *)(b->data + b->used);
	b->used += room;
	atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
	rec->next = NULL;
	rec->block = b;
	rec->size = size;
	rec->op = op;
	return rec;
}

/* As store_rec_alloc(), always with a malloc() of its own. */
static struct store_rec *
store_rec_alloc_own(struct store *st, enum store_op op, size_t extra, const char *what, int64_t id)
{
	struct store_rec *rec;
	size_t size = offsetof(struct store_rec, data) + extra;

	rec = malloc(size);
	if (rec == NULL) {
		store_count_lost(st, 1, "store: %s %" PRId64 ": cannot queue a %zu-byte record: out of memory", what, id,
			   size);
		return NULL;
	}
	rec->next = NULL;
	rec->block = NULL;
	rec->size = size;
	rec->op = op;
	return rec;
}

/* Drop one reference to b; the last one frees it.  acq_rel: whatever a
 * thread did with the block's records happens before the free. */
static void
store_pool_unref(struct store_pool_block *b)
{
	if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
		free(b);
}

void
store_rec_free(struct store_rec *rec)
{
	if (rec == NULL)
		return;
	if (rec->block != NULL)
		store_pool_unref(rec->block);
	else
		free(rec);
}

void
store_pool_release(struct store *st)
{
	if (st->pool != NULL)
		store_pool_unref(st->pool);
	st->pool = NULL;
}

static size_t
rec_strsize(const char *s)
{
	return s == NULL ? 0 : strlen(s) + 1;
}

/* Copy s (NULL stays NULL) to *cur, which must have room, and move past it. */
static const char *
rec_strcpy(char **cur, const char *s)
{
	char *copy = *cur;
	size_t n;

	if (s == NULL)
		return NULL;
	n = strlen(s) + 1;
	memcpy(copy, s, n);
	*cur += n;
	return copy;
}

static void
store_enqueue(struct store *st, struct store_rec *rec)
{
	bool wake;

	pthread_mutex_lock(&st->lock);
	/* Wake the writer only when it has something new to decide: the
	 * queue stopped being empty, or a batch became full enough. */
	wake = st->head == NULL;
	*st->tailp = rec;
	st->tailp = &rec->next;
	st->nqueued++;
	if (st->nqueued == STORE_BATCH_RECORDS ||
	    (st->queued_bytes < STORE_BATCH_BYTES && st->queued_bytes + rec->size >= STORE_BATCH_BYTES))
		wake = true;
	st->queued_bytes += rec->size;
	st->backlog += rec->size;
	/* Signalled under the lock, which keeps race checkers (helgrind)
	 * quiet at no measurable cost. */
	if (wake)
		pthread_cond_signal(&st->cond);
	pthread_mutex_unlock(&st->lock);
}

/* See store_int.h.  The message is formatted and logged outside the lock:
 * stderr may block, and every recording call takes that lock. */
void
store_count_lost(struct store *st, uint64_t n, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	bool first;

	pthread_mutex_lock(&st->lock);
	st->nlost += n;
	first = !st->lost_logged;
	st->lost_logged = true;
	pthread_mutex_unlock(&st->lock);
	if (!first)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	log_warnx("%s (database %s; further losses are only counted)", msg, st->path);
}
