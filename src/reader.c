/*
 * reader.c - see reader.h.  Every query a consumer of the recording runs.
 *
 * The connection comes from the store (store_reader_open: read-only,
 * checked, upgraded), and so does the one function that knows where an
 * event's bytes live (store_reader_event_bytes); everything else, the
 * SQL of every listing and walk, is here.
 *
 * Listing sessions builds one statement from fixed fragments and
 * numbered parameters: a value a user typed is only ever bound, never
 * written into the SQL.  Its shape is chosen (reader_listing_plan, then
 * sql_listing) so that SQLite answers from an index whatever the filters,
 * without statistics to guess from:
 *   - the page cursor is always a range of the key (id < ?, the highest
 *     id when there is no cursor), so the newest N is a SEARCH, not a scan
 *     that merely stops early;
 *   - a time range holding few sessions drives the listing from
 *     sessions_started (counted first, up to READER_TIME_FEW);
 *   - otherwise a recipient or a sender drives it from its own index,
 *     whose entries for one address (or domain) are in session order:
 *     walked backwards from the cursor, grouped by session, it stops at
 *     the page's end however common the address;
 *   - a Message-ID narrows through "s.id IN (SELECT ...)" on its index;
 *     the client IP and the outcome have (column, id) indexes, walked
 *     backwards from the cursor;
 *   - what has no index (a Subject substring, a CIDR block, has-TLS, the
 *     second address) is tested on the sessions the rest leaves, newest
 *     first, stopping at the page's end.
 * tests/unit/test_reader.c checks the plans (no scan of the sessions
 * table for the default listing, --to with --since, and the rest).
 */
#include "smtptap/reader.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/socket.h>

#include <sqlite3.h>

#include "smtptap/smtp.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

/* A listing's SQL and its parameters.  The longest filter (every field
 * and READER_ID_RANGES_MAX id ranges) stays far below READER_SQL_MAX. */
#define READER_SQL_MAX 8192
#define READER_BINDS_MAX (32 + 2 * READER_ID_RANGES_MAX)
#define READER_OWNED_MAX 8

/* A time range holding fewer sessions than this drives a listing (see
 * reader_listing_plan): sorting that many by id costs about a millisecond. */
#define READER_TIME_FEW 4096
#define READER_TIME_FEW_SQL "4096"

/* The unstuffing buffer of READER_CONTENT_MESSAGE (smtp_data_scan wants
 * room for two held-back bytes more than its input). */
#define READER_SLICE STORE_READ_CHUNK

/* Statements prepared once per reader (fixed SQL), reset after use. */
enum reader_stmt {
	RS_SESSION,
	RS_EVENTS,
	RS_EVENT_ROWID,
	RS_MESSAGES,
	RS_TRANSACTIONS,
	RS_RCPTS,
	RS_MESSAGE_TRANSPORT,
	RS_MESSAGE_DATA,
	RS_MESSAGE_DATA_ORPHAN,
	RS_REPLAYS,
	RS_COUNT
};

struct reader {
	struct store_reader *st;
	sqlite3 *db;
	bool in_request;
	sqlite3_stmt *stmt[RS_COUNT];
	bool busy[RS_COUNT]; /* a walk is stepping it: a nested walk is refused */
	/* one event's bytes, loaded for reader_events (READER_BYTES_*) */
	unsigned char *evbuf;
	size_t evlen, evcap;
	bool evnomem;
};

struct reader_bind {
	bool is_text;
	int64_t i;
	const char *s;
};

struct reader_sql {
	char text[READER_SQL_MAX];
	size_t len;
	bool overflow;
	struct reader_bind binds[READER_BINDS_MAX];
	int nbinds;
	char *owned[READER_OWNED_MAX]; /* texts made for binding, freed with the query */
	int nowned;
	bool nomem;
};

/* How a listing runs (reader_listing_plan): which index drives it. */
enum reader_drive {
	READER_DRIVE_NONE,	/* the sessions table (rowid, or the filters' indexes) */
	READER_DRIVE_TIME,	/* sessions_started: a time range holding few sessions */
	READER_DRIVE_RECIPIENT, /* recipients_address / recipients_domain */
	READER_DRIVE_SENDER,	/* transactions_mail_from, or its primary key (a domain) */
};

struct reader_listing {
	const struct reader_filter *f;
	enum reader_drive drive;
	bool client_mapped; /* the file has IPv4-mapped client addresses */
};

/* What sql_listing() writes. */
enum reader_sql_kind {
	RSQ_PAGE,  /* the page's rows */
	RSQ_PROBE, /* one id past the page, if any */
	RSQ_COUNT, /* how many match */
};

/* A transaction's recipients, copied out of their statement so that they
 * outlive its next step; strs[3 * i + k] owns rows[i]'s k-th string. */
struct reader_rcpts {
	struct reader_rcpt *rows;
	char **strs;
	size_t n, cap;
};

/* The unstuffing of READER_CONTENT_MESSAGE between the stored chunks and
 * the caller's callback. */
struct reader_unstuff {
	struct smtp_data data;
	char *buf;
	reader_chunk_cb cb;
	void *arg;
};

static const char *const reader_session_cols[] = {
	"id",	       "started_us",	     "ended_us",	     "listener",      "client",	      "upstream",
	"upstream_addr", "mode",	     "client_tls",	     "upstream_tls",  "outcome",      "detail",
	"nmessages",   "nevents",	     "client_ip",	     "helo",	      "auth_mech",    "auth_user",
	"client_tls_version", "upstream_tls_version", "ntransactions", "client_bytes", "upstream_bytes",
	"proxy_bytes", "replay_of",
};
#define READER_NSESSION_COLS (sizeof(reader_session_cols) / sizeof(reader_session_cols[0]))

static const char *const reader_stmt_sql[RS_COUNT] = {
	[RS_SESSION] = NULL, /* built from reader_session_cols */
	[RS_EVENTS] = "SELECT rowid, seq, t_us, side, kind, flags, message_row, text, answers_seq, cause_seq, "
		      STORE_READ_EVENT_LENGTH " FROM events WHERE session_id = ?1 ORDER BY seq",
	[RS_EVENT_ROWID] = "SELECT rowid FROM events WHERE session_id = ?1 AND seq = ?2",
	[RS_MESSAGES] = "SELECT m.id, m.session_id, m.idx, m.started_us, m.ended_us, m.mail_from, m.mail_params, "
			"m.transport, m.size, m.complete, m.subject, m.from_hdr, m.to_hdr, m.message_id_hdr, "
			"m.date_hdr, m.upstream_code, m.upstream_reply, m.transaction_idx, t.mail_code, t.mail_reply "
			"FROM messages m LEFT JOIN transactions t ON t.session_id = m.session_id AND "
			"t.idx = m.transaction_idx WHERE m.session_id = ?1 ORDER BY m.idx, m.id",
	[RS_TRANSACTIONS] = "SELECT t.idx, t.started_us, t.mail_seq, t.mail_from, t.mail_params, t.mail_code, "
			    "t.mail_reply, (SELECT count(*) FROM messages m WHERE m.session_id = t.session_id "
			    "AND m.transaction_idx = t.idx) FROM transactions t WHERE t.session_id = ?1 ORDER BY t.idx",
	[RS_RCPTS] = "SELECT address, params, reply_code, reply_text, rcpt_seq FROM recipients "
		     "WHERE session_id = ?1 AND transaction_idx = ?2 ORDER BY idx",
	/* A message's transport, and where its data events are: its session's
	 * events between its data seqs (sql/007_message_seqs.sql; NULL: open) */
	[RS_MESSAGE_TRANSPORT] = "SELECT transport, session_id, data_seq_first, data_seq_last FROM messages WHERE id = ?1",
	/* ?2 session, ?3..?4 the seq range: a range of events_session_seq,
	 * in order, no sort */
	[RS_MESSAGE_DATA] = "SELECT rowid FROM events WHERE session_id = ?2 AND seq BETWEEN ?3 AND ?4 "
			    "AND message_row = ?1 AND kind = 'data' ORDER BY seq",
	/* A data event whose message row is missing (a damaged or hand-made
	 * file): found by a scan of every event. */
	[RS_MESSAGE_DATA_ORPHAN] = "SELECT rowid FROM events WHERE message_row = ?1 AND kind = 'data' "
				   "ORDER BY session_id, seq",
	/* sessions_replay_of (sql/004_replay.sql): the replays alone */
	[RS_REPLAYS] = "SELECT id, mode FROM sessions WHERE replay_of = ?1 ORDER BY id",
};

static int reader_db_error(struct reader *rd, char *err, size_t errsz);
static int reader_stmt_get(struct reader *rd, enum reader_stmt which, sqlite3_stmt **out, char *err,
			   size_t errsz);
static void reader_stmt_put(struct reader *rd, enum reader_stmt which);
static int reader_exec(struct reader *rd, const char *sql, char *err, size_t errsz);
static void reader_cidr_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void reader_cidr_free(void *p);
static const char *reader_text(sqlite3_stmt *stmt, int col);
static enum store_side reader_side(const char *name);
static enum store_kind reader_kind(const char *name);
static void reader_session_row(sqlite3_stmt *stmt, struct reader_session *s);
static int reader_walk_sessions(struct reader *rd, sqlite3_stmt *stmt, reader_session_cb cb, void *arg,
				struct reader_page_info *info, char *err, size_t errsz);

static void sql_add(struct reader_sql *q, const char *s);
static void sql_add_col(struct reader_sql *q, const char *prefix, const char *col);
static void sql_int(struct reader_sql *q, int64_t v);
static void sql_text(struct reader_sql *q, const char *s);
static char *sql_own(struct reader_sql *q, size_t len);
static void sql_free(struct reader_sql *q);
static int sql_prepare(struct reader *rd, struct reader_sql *q, sqlite3_stmt **stmt, char *err, size_t errsz);
static void sql_session_cols(struct reader_sql *q, const char *prefix);
static void sql_address(struct reader_sql *q, const char *t, const char *value, bool sender);
static void sql_from(struct reader_sql *q, const struct reader_listing *l);
static const char *sql_key(const struct reader_listing *l);
static void sql_cursor(struct reader_sql *q, const struct reader_listing *l, const struct reader_page *pg);
static void sql_filter(struct reader_sql *q, const struct reader_listing *l);
static void sql_listing(struct reader_sql *q, const struct reader_listing *l, const struct reader_page *pg,
			enum reader_sql_kind kind);
static int reader_listing_plan(struct reader *rd, const struct reader_filter *f, struct reader_listing *l,
			       char *err, size_t errsz);
static int64_t reader_query_int(struct reader *rd, const char *sql, int64_t a, int64_t b, char *err,
				size_t errsz);
static bool filter_address_ok(const char *a, bool sender);
static void filter_strip_angles(const char **p, size_t *len);

static int rcpts_load(sqlite3_stmt *stmt, int64_t session_id, int transaction_idx, struct reader_rcpts *l);
static int rcpts_grow(struct reader_rcpts *l);
static int rcpts_dup(sqlite3_stmt *stmt, int col, char **out);
static void rcpts_clear(struct reader_rcpts *l);
static void rcpts_free(struct reader_rcpts *l);

static int reader_evbuf_cb(const void *data, size_t len, void *arg);
static int reader_unstuff_cb(const void *data, size_t len, void *arg);

/* ------------------------------------------------------------------------
 * Opening, requests
 */

struct reader *
reader_open(const char *path, char *err, size_t errsz)
{
	struct reader *rd;

	if ((rd = calloc(1, sizeof(*rd))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return NULL;
	}
	if ((rd->st = store_reader_open(path, err, errsz)) == NULL) {
		free(rd);
		return NULL;
	}
	rd->db = store_reader_db(rd->st);
	/* --client 10.0.0.0/8: the one filter SQLite cannot express itself */
	if (sqlite3_create_function_v2(rd->db, "smtptap_in_cidr", 2, SQLITE_UTF8 | SQLITE_DETERMINISTIC, NULL,
				       reader_cidr_fn, NULL, NULL, NULL) != SQLITE_OK) {
		reader_db_error(rd, err, errsz);
		reader_close(rd);
		return NULL;
	}
	return rd;
}

void
reader_close(struct reader *rd)
{
	size_t i;

	if (rd == NULL)
		return;
	if (rd->in_request)
		reader_end(rd);
	for (i = 0; i < RS_COUNT; i++)
		sqlite3_finalize(rd->stmt[i]);
	store_reader_close(rd->st);
	free(rd->evbuf);
	free(rd);
}

int
reader_begin(struct reader *rd, char *err, size_t errsz)
{
	if (rd->in_request) {
		util_errf(err, errsz, "a read request is already open (requests do not nest)");
		return READER_ERROR;
	}
	/* BEGIN takes no snapshot by itself: the first read does.  Read
	 * now, so the snapshot is the one of this moment, whatever the
	 * caller reads first. */
	if (reader_exec(rd, "BEGIN", err, errsz) < 0)
		return READER_ERROR;
	if (reader_exec(rd, "SELECT 1 FROM sessions LIMIT 1", err, errsz) < 0) {
		reader_exec(rd, "ROLLBACK", NULL, 0);
		return READER_ERROR;
	}
	rd->in_request = true;
	return READER_OK;
}

void
reader_end(struct reader *rd)
{
	if (!rd->in_request)
		return;
	rd->in_request = false;
	/* A read transaction has nothing to commit; ROLLBACK ends it even
	 * after a failed statement. */
	reader_exec(rd, "ROLLBACK", NULL, 0);
}

/* ------------------------------------------------------------------------
 * Session rows
 */

int
reader_session_dup(struct reader_session *dst, const struct reader_session *src)
{
	const char *const *from[] = {
		&src->listener,	 &src->client,	    &src->upstream,	      &src->upstream_addr,
		&src->mode,	 &src->client_tls,  &src->upstream_tls,	      &src->outcome,
		&src->detail,	 &src->client_ip,   &src->helo,		      &src->auth_mech,
		&src->auth_user, &src->client_tls_version, &src->upstream_tls_version,
	};
	const char **to[] = {
		&dst->listener,	 &dst->client,	    &dst->upstream,	      &dst->upstream_addr,
		&dst->mode,	 &dst->client_tls,  &dst->upstream_tls,	      &dst->outcome,
		&dst->detail,	 &dst->client_ip,   &dst->helo,		      &dst->auth_mech,
		&dst->auth_user, &dst->client_tls_version, &dst->upstream_tls_version,
	};
	size_t i;

	*dst = *src;
	for (i = 0; i < sizeof(to) / sizeof(to[0]); i++)
		*to[i] = NULL;
	for (i = 0; i < sizeof(to) / sizeof(to[0]); i++) {
		if (*from[i] != NULL && (*to[i] = strdup(*from[i])) == NULL) {
			reader_session_free(dst);
			return -1;
		}
	}
	return 0;
}

void
reader_session_free(struct reader_session *s)
{
	free((char *)s->listener);
	free((char *)s->client);
	free((char *)s->upstream);
	free((char *)s->upstream_addr);
	free((char *)s->mode);
	free((char *)s->client_tls);
	free((char *)s->upstream_tls);
	free((char *)s->outcome);
	free((char *)s->detail);
	free((char *)s->client_ip);
	free((char *)s->helo);
	free((char *)s->auth_mech);
	free((char *)s->auth_user);
	free((char *)s->client_tls_version);
	free((char *)s->upstream_tls_version);
	memset(s, 0, sizeof(*s));
}

/* A row of reader_session_cols into s (pointers into the statement). */
static void
reader_session_row(sqlite3_stmt *stmt, struct reader_session *s)
{
	memset(s, 0, sizeof(*s));
	s->id = sqlite3_column_int64(stmt, 0);
	s->started_us = sqlite3_column_int64(stmt, 1);
	s->ended_us = sqlite3_column_int64(stmt, 2);
	s->listener = reader_text(stmt, 3);
	s->client = reader_text(stmt, 4);
	s->upstream = reader_text(stmt, 5);
	s->upstream_addr = reader_text(stmt, 6);
	s->mode = reader_text(stmt, 7);
	s->client_tls = reader_text(stmt, 8);
	s->upstream_tls = reader_text(stmt, 9);
	s->outcome = reader_text(stmt, 10);
	s->detail = reader_text(stmt, 11);
	s->nmessages = sqlite3_column_int64(stmt, 12);
	s->nevents = sqlite3_column_int64(stmt, 13);
	s->client_ip = reader_text(stmt, 14);
	s->helo = reader_text(stmt, 15);
	s->auth_mech = reader_text(stmt, 16);
	s->auth_user = reader_text(stmt, 17);
	s->client_tls_version = reader_text(stmt, 18);
	s->upstream_tls_version = reader_text(stmt, 19);
	s->ntransactions = sqlite3_column_int64(stmt, 20);
	s->client_bytes = sqlite3_column_int64(stmt, 21);
	s->upstream_bytes = sqlite3_column_int64(stmt, 22);
	s->proxy_bytes = sqlite3_column_int64(stmt, 23);
	s->replay_of = sqlite3_column_int64(stmt, 24);
}

/* Step a sessions statement to its end (or cb's stop), counting into
 * info.  Does not finalize or reset it. */
static int
reader_walk_sessions(struct reader *rd, sqlite3_stmt *stmt, reader_session_cb cb, void *arg,
		     struct reader_page_info *info, char *err, size_t errsz)
{
	struct reader_session s;
	int rc, ret = 0;

	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		reader_session_row(stmt, &s);
		if (info != NULL) {
			if (info->n == 0 || s.id < info->min_id)
				info->min_id = s.id;
			if (info->n == 0 || s.id > info->max_id)
				info->max_id = s.id;
			info->n++;
		}
		if ((ret = cb(&s, arg)) != 0)
			return ret;
	}
	if (rc != SQLITE_DONE)
		return reader_db_error(rd, err, errsz);
	return READER_OK;
}

int
reader_session(struct reader *rd, int64_t id, reader_session_cb cb, void *arg, char *err, size_t errsz)
{
	struct reader_page_info info = { 0 };
	sqlite3_stmt *stmt;
	int r;

	if (reader_stmt_get(rd, RS_SESSION, &stmt, err, errsz) < 0)
		return READER_ERROR;
	if (sqlite3_bind_int64(stmt, 1, id) != SQLITE_OK) {
		reader_stmt_put(rd, RS_SESSION);
		return reader_db_error(rd, err, errsz);
	}
	r = reader_walk_sessions(rd, stmt, cb, arg, &info, err, errsz);
	reader_stmt_put(rd, RS_SESSION);
	if (r == READER_OK && info.n == 0)
		return READER_NOTFOUND;
	return r;
}

int
reader_replays(struct reader *rd, int64_t id, struct reader_replay **out, size_t *n, char *err, size_t errsz)
{
	struct reader_replay *v = NULL, *nv;
	sqlite3_stmt *stmt;
	const char *mode;
	size_t cap = 0;
	int rc;

	*out = NULL;
	*n = 0;
	if (reader_stmt_get(rd, RS_REPLAYS, &stmt, err, errsz) < 0)
		return READER_ERROR;
	rc = sqlite3_bind_int64(stmt, 1, id) == SQLITE_OK ? SQLITE_ROW : SQLITE_ERROR;
	while (rc == SQLITE_ROW && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap == 0 ? 4 : cap * 2;
			if (cap > SIZE_MAX / sizeof(*v) || (nv = realloc(v, cap * sizeof(*v))) == NULL) {
				rc = SQLITE_NOMEM;
				break;
			}
			v = nv;
		}
		mode = reader_text(stmt, 1);
		v[*n].id = sqlite3_column_int64(stmt, 0);
		snprintf(v[*n].mode, sizeof(v[*n].mode), "%s", mode != NULL ? mode : "");
		(*n)++;
	}
	reader_stmt_put(rd, RS_REPLAYS);
	if (rc != SQLITE_DONE) {
		if (rc == SQLITE_NOMEM)
			util_errf(err, errsz, "out of memory");
		else
			reader_db_error(rd, err, errsz);
		free(v);
		*n = 0;
		return READER_ERROR;
	}
	*out = v;
	return READER_OK;
}

/* ------------------------------------------------------------------------
 * Filters and listings
 */

/* "<a@b>" -> "a@b": the angle brackets of a path are optional. */
static void
filter_strip_angles(const char **p, size_t *len)
{
	if (*len >= 2 && (*p)[0] == '<' && (*p)[*len - 1] == '>') {
		(*p)++;
		*len -= 2;
	}
}

/* An address filter's value: a path (with or without <>), "@domain", or
 * for the sender "<>"/"" (the null sender).  No control bytes, no NUL
 * (a C string cannot hold one anyway). */
static bool
filter_address_ok(const char *a, bool sender)
{
	const char *p = a;
	size_t len = strlen(a), i;

	filter_strip_angles(&p, &len);
	if (len == 0)
		return sender;
	if (p[0] == '@' && len == 1)
		return false;
	for (i = 0; i < len; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
}

int
reader_filter_check(const struct reader_filter *f, const char **field, char *err, size_t errsz)
{
	struct util_cidr c;
	const char *why;
	size_t i;

	if (f->since_us < 0 || f->until_us < 0) {
		*field = f->since_us < 0 ? "since" : "until";
		util_errf(err, errsz, "a time before 1970");
		return -1;
	}
	if (f->since_us != 0 && f->until_us != 0 && f->until_us <= f->since_us) {
		*field = "until";
		util_errf(err, errsz, "the end of the time range is not after its start");
		return -1;
	}
	if (f->sender != NULL && !filter_address_ok(f->sender, true)) {
		*field = "sender";
		util_errf(err, errsz, "expected an address (user@example.com), a domain (@example.com) or <>");
		return -1;
	}
	if (f->recipient != NULL && !filter_address_ok(f->recipient, false)) {
		*field = "recipient";
		util_errf(err, errsz, "expected an address (user@example.com) or a domain (@example.com)");
		return -1;
	}
	if (f->subject != NULL && f->subject[0] == '\0') {
		*field = "subject";
		util_errf(err, errsz, "expected some text to search for");
		return -1;
	}
	if (f->message_id != NULL && (f->message_id[0] == '\0' || strcmp(f->message_id, "<>") == 0)) {
		*field = "message_id";
		util_errf(err, errsz, "expected a Message-ID such as <abc@example.com>");
		return -1;
	}
	if (f->client != NULL && util_parse_cidr(f->client, &c, &why) < 0) {
		*field = "client";
		util_errf(err, errsz, "%s", why);
		return -1;
	}
	if (f->outcome != NULL) {
		for (i = 0; f->outcome[i] != '\0'; i++)
			if (!((f->outcome[i] >= 'a' && f->outcome[i] <= 'z') || (f->outcome[i] >= '0' && f->outcome[i] <= '9') ||
			      f->outcome[i] == '-' || f->outcome[i] == '_'))
				break;
		if (i == 0 || f->outcome[i] != '\0') {
			*field = "outcome";
			util_errf(err, errsz, "expected an outcome word such as quit, client-closed, interrupted or live");
			return -1;
		}
	}
	if (f->mode != NULL && strcmp(f->mode, "relay") != 0 && strcmp(f->mode, "sink") != 0 &&
	    strcmp(f->mode, "replay") != 0 && strcmp(f->mode, "mock") != 0) {
		*field = "mode";
		util_errf(err, errsz, "expected relay, sink, replay or mock");
		return -1;
	}
	if (f->tls != READER_TLS_ANY && f->tls != READER_TLS_YES && f->tls != READER_TLS_NO) {
		*field = "tls";
		util_errf(err, errsz, "unknown TLS filter");
		return -1;
	}
	if (f->nids > READER_ID_RANGES_MAX || (f->nids > 0 && f->ids == NULL)) {
		*field = "ids";
		util_errf(err, errsz, "at most %d id ranges", READER_ID_RANGES_MAX);
		return -1;
	}
	for (i = 0; i < f->nids; i++) {
		if (f->ids[i].first < 1 || f->ids[i].last < f->ids[i].first) {
			*field = "ids";
			util_errf(err, errsz, "an id range runs from a first id (1 or more) to a last one not below it");
			return -1;
		}
	}
	return 0;
}

static void
sql_add(struct reader_sql *q, const char *s)
{
	size_t n = strlen(s);

	if (q->overflow || n >= sizeof(q->text) - q->len) {
		q->overflow = true;
		return;
	}
	memcpy(q->text + q->len, s, n + 1);
	q->len += n;
}

static void
sql_add_col(struct reader_sql *q, const char *prefix, const char *col)
{
	sql_add(q, prefix);
	sql_add(q, col);
}

/* A parameter: its placeholder in the text, its value in binds. */
static void
sql_int(struct reader_sql *q, int64_t v)
{
	char ph[16];

	if (q->nbinds == READER_BINDS_MAX) {
		q->overflow = true;
		return;
	}
	q->binds[q->nbinds].is_text = false;
	q->binds[q->nbinds].i = v;
	q->nbinds++;
	snprintf(ph, sizeof(ph), "?%d", q->nbinds);
	sql_add(q, ph);
}

static void
sql_text(struct reader_sql *q, const char *s)
{
	char ph[16];

	if (q->nbinds == READER_BINDS_MAX || s == NULL) {
		q->overflow = true;
		return;
	}
	q->binds[q->nbinds].is_text = true;
	q->binds[q->nbinds].s = s;
	q->nbinds++;
	snprintf(ph, sizeof(ph), "?%d", q->nbinds);
	sql_add(q, ph);
}

/* A buffer of len + 1 bytes the query owns (a value made for binding). */
static char *
sql_own(struct reader_sql *q, size_t len)
{
	char *p;

	if (q->nowned == READER_OWNED_MAX || len == SIZE_MAX || (p = malloc(len + 1)) == NULL) {
		q->nomem = true;
		return NULL;
	}
	q->owned[q->nowned++] = p;
	return p;
}

static void
sql_free(struct reader_sql *q)
{
	int i;

	for (i = 0; i < q->nowned; i++)
		free(q->owned[i]);
	q->nowned = 0;
}

static int
sql_prepare(struct reader *rd, struct reader_sql *q, sqlite3_stmt **stmt, char *err, size_t errsz)
{
	int i, rc = SQLITE_OK;

	*stmt = NULL;
	if (q->nomem) {
		util_errf(err, errsz, "out of memory");
		return READER_ERROR;
	}
	if (q->overflow) {
		util_errf(err, errsz, "the filter is too long");
		return READER_ERROR;
	}
	if (sqlite3_prepare_v2(rd->db, q->text, (int)q->len, stmt, NULL) != SQLITE_OK)
		return reader_db_error(rd, err, errsz);
	for (i = 0; i < q->nbinds && rc == SQLITE_OK; i++) {
		if (q->binds[i].is_text)
			rc = sqlite3_bind_text(*stmt, i + 1, q->binds[i].s, -1, SQLITE_STATIC);
		else
			rc = sqlite3_bind_int64(*stmt, i + 1, q->binds[i].i);
	}
	if (rc != SQLITE_OK) {
		reader_db_error(rd, err, errsz);
		sqlite3_finalize(*stmt);
		*stmt = NULL;
		return READER_ERROR;
	}
	return READER_OK;
}

static void
sql_session_cols(struct reader_sql *q, const char *prefix)
{
	size_t i;

	for (i = 0; i < READER_NSESSION_COLS; i++) {
		if (i > 0)
			sql_add(q, ", ");
		sql_add_col(q, prefix, reader_session_cols[i]);
	}
}

/*
 * The condition an address filter puts on its table's column (alias t):
 * an address compares with COLLATE NOCASE, the collation of its index; a
 * domain with the expression of recipients_domain (sql/005_search.sql),
 * given in lower case.  A sender's domain has no index: the same
 * expression is then tested on the transactions walked from the newest
 * (their primary key is in session order too).
 */
static void
sql_address(struct reader_sql *q, const char *t, const char *value, bool sender)
{
	const char *p = value;
	size_t len = strlen(value), i;
	char *v;

	filter_strip_angles(&p, &len);
	if (len > 0 && p[0] == '@') {
		if ((v = sql_own(q, len - 1)) == NULL)
			return;
		for (i = 1; i < len; i++)
			v[i - 1] = p[i] >= 'A' && p[i] <= 'Z' ? (char)(p[i] - 'A' + 'a') : p[i];
		v[len - 1] = '\0';
		sql_add(q, "lower(substr(");
		sql_add(q, t);
		sql_add(q, sender ? ".mail_from, instr(" : ".address, instr(");
		sql_add(q, t);
		sql_add(q, sender ? ".mail_from, '@') + 1)) = " : ".address, '@') + 1)) = ");
		sql_text(q, v);
	} else {
		if ((v = sql_own(q, len)) == NULL)
			return;
		memcpy(v, p, len);
		v[len] = '\0';
		sql_add(q, t);
		sql_add(q, sender ? ".mail_from = " : ".address = ");
		sql_text(q, v);
		sql_add(q, " COLLATE NOCASE");
	}
}

/*
 * Where a listing starts: a recipient or a sender filter drives it from
 * its own index (alias d), whose entries within one address (or domain)
 * are in session order: walked backwards from the cursor, grouped by
 * session, it stops at the page's end however common the address is.
 * Without one, the sessions table itself (its rowid) drives.
 */
static void
sql_from(struct reader_sql *q, const struct reader_listing *l)
{
	if (l->drive == READER_DRIVE_RECIPIENT)
		sql_add(q, " FROM recipients d CROSS JOIN sessions s ON s.id = d.session_id WHERE ");
	else if (l->drive == READER_DRIVE_SENDER)
		sql_add(q, " FROM transactions d CROSS JOIN sessions s ON s.id = d.session_id WHERE ");
	else if (l->drive == READER_DRIVE_TIME)
		sql_add(q, " FROM sessions s INDEXED BY sessions_started WHERE ");
	else
		sql_add(q, " FROM sessions s WHERE ");
}

/* The column the page is ordered and cut by. */
static const char *
sql_key(const struct reader_listing *l)
{
	return l->drive == READER_DRIVE_RECIPIENT || l->drive == READER_DRIVE_SENDER ? "d.session_id" : "s.id";
}

/*
 * The page's id range, always one: the newest N is then a SEARCH of the
 * rowid (or of the driving index), not a scan that merely stops early.
 * An id filter narrows the range to its own span.
 */
static void
sql_cursor(struct reader_sql *q, const struct reader_listing *l, const struct reader_page *pg)
{
	const struct reader_filter *f = l->f;
	int64_t hi = pg->before_id > 0 ? pg->before_id : INT64_MAX, lo = pg->after_id > 0 ? pg->after_id : 0;
	int64_t maxlast = 0, minfirst = INT64_MAX;
	size_t i;

	for (i = 0; i < f->nids; i++) {
		if (f->ids[i].last > maxlast)
			maxlast = f->ids[i].last;
		if (f->ids[i].first < minfirst)
			minfirst = f->ids[i].first;
	}
	if (f->nids > 0) {
		if (maxlast < INT64_MAX && maxlast + 1 < hi)
			hi = maxlast + 1;
		if (minfirst - 1 > lo)
			lo = minfirst - 1;
	}
	sql_add(q, sql_key(l));
	sql_add(q, " < ");
	sql_int(q, hi);
	if (lo > 0) {
		sql_add(q, " AND ");
		sql_add(q, sql_key(l));
		sql_add(q, " > ");
		sql_int(q, lo);
	}
}

/* The filter's conditions, each " AND ...", on sessions aliased s (and
 * the driving table d). */
static void
sql_filter(struct reader_sql *q, const struct reader_listing *l)
{
	const struct reader_filter *f = l->f;
	struct util_cidr c;
	const char *why, *p;
	char *v, *w, ip[64];
	size_t i, len;

	if (l->drive == READER_DRIVE_RECIPIENT) {
		sql_add(q, " AND ");
		sql_address(q, "d", f->recipient, false);
	} else if (f->recipient != NULL) {
		sql_add(q, " AND EXISTS (SELECT 1 FROM recipients r WHERE r.session_id = s.id AND ");
		sql_address(q, "r", f->recipient, false);
		sql_add(q, ")");
	}
	if (l->drive == READER_DRIVE_SENDER) {
		sql_add(q, " AND ");
		sql_address(q, "d", f->sender, true);
	} else if (f->sender != NULL) {
		/* the driver (a recipient) has narrowed the sessions: test
		 * each of those, never list every session of the sender */
		sql_add(q, " AND EXISTS (SELECT 1 FROM transactions t WHERE t.session_id = s.id AND ");
		sql_address(q, "t", f->sender, true);
		sql_add(q, ")");
	}
	if (f->since_us != 0) {
		sql_add(q, " AND s.started_us >= ");
		sql_int(q, f->since_us);
	}
	if (f->until_us != 0) {
		sql_add(q, " AND s.started_us < ");
		sql_int(q, f->until_us);
	}
	if (f->nids > 0) {
		sql_add(q, " AND (");
		for (i = 0; i < f->nids; i++) {
			sql_add(q, i > 0 ? " OR s.id BETWEEN " : "s.id BETWEEN ");
			sql_int(q, f->ids[i].first);
			sql_add(q, " AND ");
			sql_int(q, f->ids[i].last);
		}
		sql_add(q, ")");
	}
	if (f->message_id != NULL) {
		/* recorded as the header gives it, which is normally <...>:
		 * either form finds it */
		p = f->message_id;
		len = strlen(p);
		filter_strip_angles(&p, &len);
		if ((v = sql_own(q, len)) != NULL && (w = sql_own(q, len + 2)) != NULL) {
			memcpy(v, p, len);
			v[len] = '\0';
			snprintf(w, len + 3, "<%s>", v);
			sql_add(q, " AND s.id IN (SELECT session_id FROM messages WHERE message_id_hdr IN (");
			sql_text(q, v);
			sql_add(q, ", ");
			sql_text(q, w);
			sql_add(q, "))");
		}
	}
	if (f->client != NULL && util_parse_cidr(f->client, &c, &why) == 0) {
		if (c.prefix == (c.family == AF_INET ? 32u : 128u) &&
		    inet_ntop(c.family, c.addr, ip, sizeof(ip)) != NULL && (v = sql_own(q, strlen(ip) + 7)) != NULL) {
			/* one address: its index, in the form the writer keeps
			 * (inet_ntop's); a v4 client of a dual-stack listener
			 * is kept as ::ffff:a.b.c.d, asked for only when the
			 * file has such clients (two values cost a sort) */
			snprintf(v, strlen(ip) + 8, "::ffff:%s", ip);
			if (c.family == AF_INET && l->client_mapped) {
				sql_add(q, " AND s.client_ip IN (");
				sql_text(q, v + 7);
				sql_add(q, ", ");
				sql_text(q, v);
				sql_add(q, ")");
			} else {
				sql_add(q, " AND s.client_ip = ");
				sql_text(q, v + 7);
			}
		} else {
			sql_add(q, " AND smtptap_in_cidr(s.client_ip, ");
			sql_text(q, f->client);
			sql_add(q, ")");
		}
	}
	if (f->outcome != NULL) {
		if (strcmp(f->outcome, "live") == 0)
			sql_add(q, " AND s.outcome IS NULL");
		else {
			sql_add(q, " AND s.outcome = ");
			sql_text(q, f->outcome);
		}
	}
	if (f->mode != NULL) {
		sql_add(q, " AND s.mode = ");
		sql_text(q, f->mode);
	}
	if (f->originals)
		sql_add(q, " AND s.replay_of IS NULL");
	if (f->tls == READER_TLS_YES)
		sql_add(q, " AND (s.client_tls IS NOT NULL OR s.upstream_tls IS NOT NULL)");
	else if (f->tls == READER_TLS_NO)
		sql_add(q, " AND s.client_tls IS NULL AND s.upstream_tls IS NULL");
	if (f->subject != NULL) {
		/* LIKE's own wildcards in the text are literal: escaped */
		len = strlen(f->subject);
		if (len <= (SIZE_MAX - 3) / 2 && (v = sql_own(q, 2 * len + 2)) != NULL) {
			w = v;
			*w++ = '%';
			for (i = 0; i < len; i++) {
				if (f->subject[i] == '%' || f->subject[i] == '_' || f->subject[i] == '\\')
					*w++ = '\\';
				*w++ = f->subject[i];
			}
			*w++ = '%';
			*w = '\0';
			sql_add(q, " AND EXISTS (SELECT 1 FROM messages m WHERE m.session_id = s.id AND "
				   "m.subject LIKE ");
			sql_text(q, v);
			sql_add(q, " ESCAPE '\\')");
		} else
			q->nomem = true;
	}
}

/*
 * The listing of one page; or, with probe, whether one more session
 * matches past it (a page starting at the cursor given in pg); or, with
 * count, how many match.  The page is taken ascending when only after_id
 * is given (the oldest after it), else descending; when the order asked
 * for is the other one, an outer query reverses the page (at most `limit`
 * rows).
 */
static void
sql_listing(struct reader_sql *q, const struct reader_listing *l, const struct reader_page *pg,
	    enum reader_sql_kind kind)
{
	bool asc = pg->after_id > 0 && pg->before_id <= 0;
	bool wrap = kind == RSQ_PAGE && pg->limit > 0 && asc != pg->oldest_first;
	const char *key = sql_key(l);

	if (kind == RSQ_PROBE) {
		sql_add(q, "SELECT s.id");
	} else if (kind == RSQ_COUNT) {
		sql_add(q, l->drive == READER_DRIVE_RECIPIENT || l->drive == READER_DRIVE_SENDER ? "SELECT count(DISTINCT s.id)"
															   : "SELECT count(*)");
	} else if (wrap) {
		sql_add(q, "SELECT ");
		sql_session_cols(q, "page.");
		sql_add(q, " FROM (SELECT s.*");
	} else {
		sql_add(q, "SELECT ");
		sql_session_cols(q, "s.");
	}
	sql_from(q, l);
	sql_cursor(q, l, pg);
	sql_filter(q, l);
	if (kind == RSQ_COUNT)
		return;
	/* a session once, however many of its recipients match */
	if (l->drive == READER_DRIVE_RECIPIENT || l->drive == READER_DRIVE_SENDER)
		sql_add(q, " GROUP BY d.session_id");
	sql_add(q, " ORDER BY ");
	sql_add(q, key);
	if (kind == RSQ_PROBE) {
		sql_add(q, asc ? " LIMIT 1" : " DESC LIMIT 1");
		return;
	}
	/* No limit: every match, in the order asked. */
	if (pg->limit <= 0) {
		sql_add(q, pg->oldest_first ? "" : " DESC");
		return;
	}
	sql_add(q, asc ? " LIMIT " : " DESC LIMIT ");
	sql_int(q, pg->limit);
	if (wrap)
		sql_add(q, pg->oldest_first ? ") page ORDER BY page.id" : ") page ORDER BY page.id DESC");
}

/* One integer a query gives (its first column), or -1 with err. */
static int64_t
reader_query_int(struct reader *rd, const char *sql, int64_t a, int64_t b, char *err, size_t errsz)
{
	sqlite3_stmt *stmt;
	int64_t v = 0;
	int rc;

	if (sqlite3_prepare_v2(rd->db, sql, -1, &stmt, NULL) != SQLITE_OK)
		return reader_db_error(rd, err, errsz);
	sqlite3_bind_int64(stmt, 1, a);
	sqlite3_bind_int64(stmt, 2, b);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		v = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return reader_db_error(rd, err, errsz);
	return v;
}

/*
 * Decide how a listing runs (reader_listing), before any SQL is written,
 * asking the database (index lookups, in the caller's request) what
 * SQLite cannot know without statistics:
 *   - a time range holding few sessions (READER_TIME_FEW, counted on
 *     sessions_started up to that many) drives the listing itself: the
 *     other filters are then tested on those few sessions.  Otherwise an
 *     address's index walked from the newest would go through every
 *     session of a common address to find the few of one hour, and a
 *     rowid walk through every session newer than an --until;
 *   - else a recipient or a sender drives it from its index (see
 *     sql_from);
 *   - whether the file holds IPv4-mapped client addresses at all.
 */
static int
reader_listing_plan(struct reader *rd, const struct reader_filter *f, struct reader_listing *l, char *err,
		    size_t errsz)
{
	struct util_cidr c;
	const char *why;
	int64_t n;

	memset(l, 0, sizeof(*l));
	l->f = f;
	l->drive = f->recipient != NULL ? READER_DRIVE_RECIPIENT
		   : f->sender != NULL	 ? READER_DRIVE_SENDER
					 : READER_DRIVE_NONE;
	if (f->since_us != 0 || f->until_us != 0) {
		n = reader_query_int(rd,
				     "SELECT count(*) FROM (SELECT 1 FROM sessions INDEXED BY sessions_started "
				     "WHERE started_us >= ?1 AND started_us < ?2 LIMIT " READER_TIME_FEW_SQL ")",
				     f->since_us, f->until_us != 0 ? f->until_us : INT64_MAX, err, errsz);
		if (n < 0)
			return READER_ERROR;
		if (n < READER_TIME_FEW)
			l->drive = READER_DRIVE_TIME;
	}
	if (f->client != NULL && util_parse_cidr(f->client, &c, &why) == 0 && c.family == AF_INET && c.prefix == 32) {
		n = reader_query_int(rd,
				     "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE client_ip >= '::ffff:' AND "
				     "client_ip < '::ffff;' AND ?1 = ?2 LIMIT 1)",
				     0, 0, err, errsz);
		if (n < 0)
			return READER_ERROR;
		l->client_mapped = n > 0;
	}
	return READER_OK;
}

int
reader_sessions(struct reader *rd, const struct reader_filter *f, const struct reader_page *pg,
		reader_session_cb cb, void *arg, struct reader_page_info *info, char *err, size_t errsz)
{
	static const struct reader_page all = { 0 };
	struct reader_page_info local = { 0 }, *pi = info != NULL ? info : &local;
	struct reader_listing l;
	struct reader_page probe;
	struct reader_sql *q;
	sqlite3_stmt *stmt = NULL;
	const char *field;
	bool own = false;
	int r, rc;

	memset(pi, 0, sizeof(*pi));
	if (pg == NULL)
		pg = &all;
	if (reader_filter_check(f, &field, err, errsz) < 0)
		return READER_ERROR;
	if ((q = calloc(1, sizeof(*q))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return READER_ERROR;
	}
	/* The page and the look past it: one snapshot. */
	if (!rd->in_request) {
		if (reader_begin(rd, err, errsz) < 0) {
			free(q);
			return READER_ERROR;
		}
		own = true;
	}
	r = reader_listing_plan(rd, f, &l, err, errsz);
	if (r == READER_OK) {
		sql_listing(q, &l, pg, RSQ_PAGE);
		r = sql_prepare(rd, q, &stmt, err, errsz);
	}
	if (r == READER_OK)
		r = reader_walk_sessions(rd, stmt, cb, arg, pi, err, errsz);
	sqlite3_finalize(stmt);
	sql_free(q);
	/* A full page: is there more past it? */
	if (r == READER_OK && pg->limit > 0 && pi->n == pg->limit) {
		probe = *pg;
		if (pg->after_id > 0 && pg->before_id <= 0)
			probe.after_id = pi->max_id;
		else
			probe.before_id = pi->min_id;
		memset(q, 0, sizeof(*q));
		sql_listing(q, &l, &probe, RSQ_PROBE);
		r = sql_prepare(rd, q, &stmt, err, errsz);
		if (r == READER_OK) {
			rc = sqlite3_step(stmt);
			if (rc == SQLITE_ROW)
				pi->more = true;
			else if (rc != SQLITE_DONE)
				r = reader_db_error(rd, err, errsz);
		}
		sqlite3_finalize(stmt);
		sql_free(q);
	}
	free(q);
	if (own)
		reader_end(rd);
	return r;
}

int
reader_sessions_count(struct reader *rd, const struct reader_filter *f, int64_t *n, char *err, size_t errsz)
{
	static const struct reader_page all = { 0 };
	struct reader_listing l;
	struct reader_sql *q;
	sqlite3_stmt *stmt;
	const char *field;
	int r;

	*n = 0;
	if (reader_filter_check(f, &field, err, errsz) < 0)
		return READER_ERROR;
	if ((q = calloc(1, sizeof(*q))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return READER_ERROR;
	}
	r = reader_listing_plan(rd, f, &l, err, errsz);
	if (r == READER_OK) {
		sql_listing(q, &l, &all, RSQ_COUNT);
		r = sql_prepare(rd, q, &stmt, err, errsz);
	}
	if (r == READER_OK) {
		if (sqlite3_step(stmt) == SQLITE_ROW)
			*n = sqlite3_column_int64(stmt, 0);
		else
			r = reader_db_error(rd, err, errsz);
		sqlite3_finalize(stmt);
	}
	sql_free(q);
	free(q);
	return r;
}

int
reader_sessions_plan(struct reader *rd, const struct reader_filter *f, const struct reader_page *pg, char *out,
		     size_t outsz, char *err, size_t errsz)
{
	static const struct reader_page all = { 0 };
	struct reader_listing l;
	struct reader_sql *q;
	sqlite3_stmt *stmt;
	const char *field;
	size_t used = 0;
	int r, n;

	if (outsz > 0)
		out[0] = '\0';
	if (reader_filter_check(f, &field, err, errsz) < 0)
		return READER_ERROR;
	if ((q = calloc(1, sizeof(*q))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return READER_ERROR;
	}
	r = reader_listing_plan(rd, f, &l, err, errsz);
	if (r == READER_OK) {
		sql_add(q, "EXPLAIN QUERY PLAN ");
		sql_listing(q, &l, pg != NULL ? pg : &all, RSQ_PAGE);
		r = sql_prepare(rd, q, &stmt, err, errsz);
	}
	if (r == READER_OK) {
		/* rows: id, parent, notused, detail */
		while (sqlite3_step(stmt) == SQLITE_ROW) {
			n = snprintf(out + used, outsz - used, "%s%s", used > 0 ? "\n" : "", reader_text(stmt, 3));
			if (n < 0 || (size_t)n >= outsz - used) {
				util_errf(err, errsz, "the query plan is too long");
				r = READER_ERROR;
				break;
			}
			used += (size_t)n;
		}
		sqlite3_finalize(stmt);
	}
	sql_free(q);
	free(q);
	return r;
}

/* smtptap_in_cidr(ip, block): is the client address ip inside block?
 * The block is parsed once per statement (auxiliary data). */
static void
reader_cidr_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct util_cidr *c;
	const char *ip, *block, *why;

	(void)argc;
	ip = (const char *)sqlite3_value_text(argv[0]);
	if ((c = sqlite3_get_auxdata(ctx, 1)) == NULL) {
		block = (const char *)sqlite3_value_text(argv[1]);
		if (block == NULL || (c = malloc(sizeof(*c))) == NULL) {
			sqlite3_result_error_nomem(ctx);
			return;
		}
		if (util_parse_cidr(block, c, &why) < 0) {
			free(c);
			sqlite3_result_error(ctx, why, -1);
			return;
		}
		sqlite3_set_auxdata(ctx, 1, c, reader_cidr_free);
		/* SQLite may have freed it already: ask again */
		if ((c = sqlite3_get_auxdata(ctx, 1)) == NULL) {
			sqlite3_result_error_nomem(ctx);
			return;
		}
	}
	sqlite3_result_int(ctx, util_cidr_match(c, ip));
}

static void
reader_cidr_free(void *p)
{
	free(p);
}

/* ------------------------------------------------------------------------
 * Events
 */

/* Collect an event's bytes into rd->evbuf. */
static int
reader_evbuf_cb(const void *data, size_t len, void *arg)
{
	struct reader *rd = arg;
	unsigned char *p;
	size_t cap;

	if (len > rd->evcap - rd->evlen) {
		cap = rd->evcap == 0 ? 4096 : rd->evcap;
		while (cap - rd->evlen < len) {
			if (cap > SIZE_MAX / 2) {
				rd->evnomem = true;
				return 1;
			}
			cap *= 2;
		}
		if ((p = realloc(rd->evbuf, cap)) == NULL) {
			rd->evnomem = true;
			return 1;
		}
		rd->evbuf = p;
		rd->evcap = cap;
	}
	memcpy(rd->evbuf + rd->evlen, data, len);
	rd->evlen += len;
	return 0;
}

int
reader_events(struct reader *rd, int64_t session_id, enum reader_bytes bytes, reader_event_cb cb, void *arg,
	      char *err, size_t errsz)
{
	static const char empty[1];
	struct reader_event ev;
	sqlite3_stmt *stmt;
	int rc, ret = READER_OK;

	if (reader_stmt_get(rd, RS_EVENTS, &stmt, err, errsz) < 0)
		return READER_ERROR;
	if (sqlite3_bind_int64(stmt, 1, session_id) != SQLITE_OK) {
		reader_stmt_put(rd, RS_EVENTS);
		return reader_db_error(rd, err, errsz);
	}
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&ev, 0, sizeof(ev));
		ev.session_id = session_id;
		ev.seq = sqlite3_column_int64(stmt, 1);
		ev.t_us = sqlite3_column_int64(stmt, 2);
		ev.side = reader_side(reader_text(stmt, 3));
		ev.kind = reader_kind(reader_text(stmt, 4));
		ev.flags = (unsigned)sqlite3_column_int64(stmt, 5);
		ev.message_row = sqlite3_column_int64(stmt, 6);
		ev.text = reader_text(stmt, 7);
		ev.answers_seq = sqlite3_column_int64(stmt, 8);
		ev.cause_seq = sqlite3_column_int64(stmt, 9);
		ev.has_raw = sqlite3_column_type(stmt, 10) != SQLITE_NULL;
		ev.raw_len = ev.has_raw ? (size_t)sqlite3_column_int64(stmt, 10) : 0;
		if (ev.has_raw && (bytes == READER_BYTES_ALL || (bytes == READER_BYTES_LINES && ev.kind != STORE_KIND_DATA))) {
			rd->evlen = 0;
			rd->evnomem = false;
			ret = store_reader_event_bytes(rd->st, sqlite3_column_int64(stmt, 0), reader_evbuf_cb, rd, err,
						       errsz);
			if (ret != 0 || rd->evnomem) {
				if (rd->evnomem)
					util_errf(err, errsz, "out of memory reading event %" PRId64, ev.seq);
				ret = READER_ERROR;
				break;
			}
			/* an empty blob is still "bytes, none of them" */
			ev.raw = rd->evlen > 0 ? (const void *)rd->evbuf : (const void *)empty;
			ev.raw_len = rd->evlen;
		}
		if ((ret = cb(&ev, arg)) != 0)
			break;
	}
	if (ret == READER_OK && rc != SQLITE_DONE)
		ret = reader_db_error(rd, err, errsz);
	reader_stmt_put(rd, RS_EVENTS);
	return ret;
}

int
reader_event_bytes(struct reader *rd, int64_t session_id, int64_t seq, reader_chunk_cb cb, void *arg, char *err,
		   size_t errsz)
{
	sqlite3_stmt *stmt;
	int64_t rowid = 0;
	int rc;

	if (reader_stmt_get(rd, RS_EVENT_ROWID, &stmt, err, errsz) < 0)
		return READER_ERROR;
	if (sqlite3_bind_int64(stmt, 1, session_id) != SQLITE_OK || sqlite3_bind_int64(stmt, 2, seq) != SQLITE_OK) {
		reader_stmt_put(rd, RS_EVENT_ROWID);
		return reader_db_error(rd, err, errsz);
	}
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW)
		rowid = sqlite3_column_int64(stmt, 0);
	reader_stmt_put(rd, RS_EVENT_ROWID);
	if (rc == SQLITE_DONE)
		return READER_NOTFOUND;
	if (rc != SQLITE_ROW)
		return reader_db_error(rd, err, errsz);
	return store_reader_event_bytes(rd->st, rowid, cb, arg, err, errsz);
}

/* ------------------------------------------------------------------------
 * Messages, transactions, recipients
 */

int
reader_messages(struct reader *rd, int64_t session_id, reader_message_cb cb, void *arg, char *err, size_t errsz)
{
	struct reader_message m;
	struct reader_rcpts rcpts = { 0 };
	sqlite3_stmt *stmt, *rstmt;
	int rc, rrc, ret = READER_OK;

	if (reader_stmt_get(rd, RS_MESSAGES, &stmt, err, errsz) < 0)
		return READER_ERROR;
	if (reader_stmt_get(rd, RS_RCPTS, &rstmt, err, errsz) < 0) {
		reader_stmt_put(rd, RS_MESSAGES);
		return READER_ERROR;
	}
	if (sqlite3_bind_int64(stmt, 1, session_id) != SQLITE_OK)
		rc = SQLITE_ERROR;
	else
		rc = SQLITE_ROW;
	while (rc == SQLITE_ROW && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&m, 0, sizeof(m));
		m.id = sqlite3_column_int64(stmt, 0);
		m.session_id = sqlite3_column_int64(stmt, 1);
		m.idx = sqlite3_column_int(stmt, 2);
		m.started_us = sqlite3_column_int64(stmt, 3);
		m.ended_us = sqlite3_column_int64(stmt, 4);
		m.mail_from = reader_text(stmt, 5);
		m.mail_params = reader_text(stmt, 6);
		m.transport = reader_text(stmt, 7);
		m.size = sqlite3_column_int64(stmt, 8);
		m.complete = sqlite3_column_int(stmt, 9) != 0;
		m.subject = reader_text(stmt, 10);
		m.from = reader_text(stmt, 11);
		m.to = reader_text(stmt, 12);
		m.message_id_hdr = reader_text(stmt, 13);
		m.date = reader_text(stmt, 14);
		m.reply_code = sqlite3_column_int(stmt, 15);
		m.reply = reader_text(stmt, 16);
		m.transaction_idx = sqlite3_column_int(stmt, 17);
		m.mail_code = sqlite3_column_int(stmt, 18);
		m.mail_reply = reader_text(stmt, 19);
		/* Stepping rstmt leaves stmt's row (and the pointers above) alone. */
		if ((rrc = rcpts_load(rstmt, m.session_id, m.transaction_idx, &rcpts)) != SQLITE_OK) {
			rc = rrc;
			break;
		}
		m.rcpts = rcpts.rows;
		m.nrcpts = rcpts.n;
		ret = cb(&m, arg);
		rcpts_clear(&rcpts);
		if (ret != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE) {
		if (rc == SQLITE_NOMEM)
			util_errf(err, errsz, "cannot read the database: out of memory");
		else
			reader_db_error(rd, err, errsz);
		ret = READER_ERROR;
	}
	rcpts_free(&rcpts);
	reader_stmt_put(rd, RS_RCPTS);
	reader_stmt_put(rd, RS_MESSAGES);
	return ret;
}

int
reader_transactions(struct reader *rd, int64_t session_id, reader_transaction_cb cb, void *arg, char *err,
		    size_t errsz)
{
	struct reader_transaction t;
	struct reader_rcpts rcpts = { 0 };
	sqlite3_stmt *stmt, *rstmt;
	int rc, rrc, ret = READER_OK;

	if (reader_stmt_get(rd, RS_TRANSACTIONS, &stmt, err, errsz) < 0)
		return READER_ERROR;
	if (reader_stmt_get(rd, RS_RCPTS, &rstmt, err, errsz) < 0) {
		reader_stmt_put(rd, RS_TRANSACTIONS);
		return READER_ERROR;
	}
	if (sqlite3_bind_int64(stmt, 1, session_id) != SQLITE_OK)
		rc = SQLITE_ERROR;
	else
		rc = SQLITE_ROW;
	while (rc == SQLITE_ROW && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&t, 0, sizeof(t));
		t.idx = sqlite3_column_int(stmt, 0);
		t.started_us = sqlite3_column_int64(stmt, 1);
		t.mail_seq = sqlite3_column_int64(stmt, 2);
		t.mail_from = reader_text(stmt, 3);
		t.mail_params = reader_text(stmt, 4);
		t.mail_code = sqlite3_column_int(stmt, 5);
		t.mail_reply = reader_text(stmt, 6);
		t.nmessages = sqlite3_column_int64(stmt, 7);
		if ((rrc = rcpts_load(rstmt, session_id, t.idx, &rcpts)) != SQLITE_OK) {
			rc = rrc;
			break;
		}
		t.rcpts = rcpts.rows;
		t.nrcpts = rcpts.n;
		ret = cb(&t, arg);
		rcpts_clear(&rcpts);
		if (ret != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_DONE) {
		if (rc == SQLITE_NOMEM)
			util_errf(err, errsz, "cannot read the database: out of memory");
		else
			reader_db_error(rd, err, errsz);
		ret = READER_ERROR;
	}
	rcpts_free(&rcpts);
	reader_stmt_put(rd, RS_RCPTS);
	reader_stmt_put(rd, RS_TRANSACTIONS);
	return ret;
}

/* Copy a transaction's recipients into l (emptied first; none for idx 0).
 * Returns an SQLite result code; SQLITE_OK when all were read. */
static int
rcpts_load(sqlite3_stmt *stmt, int64_t session_id, int transaction_idx, struct reader_rcpts *l)
{
	struct reader_rcpt *r;
	char **s;
	int rc;

	rcpts_clear(l);
	sqlite3_reset(stmt);
	if (transaction_idx == 0)
		return SQLITE_OK;
	if ((rc = sqlite3_bind_int64(stmt, 1, session_id)) != SQLITE_OK ||
	    (rc = sqlite3_bind_int(stmt, 2, transaction_idx)) != SQLITE_OK)
		return rc;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (l->n == l->cap && rcpts_grow(l) < 0) {
			rc = SQLITE_NOMEM;
			break;
		}
		/* Counted before copying, so that rcpts_clear() also frees
		 * the strings of a row whose copy failed halfway. */
		r = &l->rows[l->n];
		s = &l->strs[3 * l->n];
		s[0] = s[1] = s[2] = NULL;
		l->n++;
		if (rcpts_dup(stmt, 0, &s[0]) < 0 || rcpts_dup(stmt, 1, &s[1]) < 0 || rcpts_dup(stmt, 3, &s[2]) < 0) {
			rc = SQLITE_NOMEM;
			break;
		}
		r->address = s[0];
		r->params = s[1];
		r->reply = s[2];
		r->reply_code = sqlite3_column_int(stmt, 2);
		r->rcpt_seq = sqlite3_column_int64(stmt, 4);
	}
	sqlite3_reset(stmt);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int
rcpts_grow(struct reader_rcpts *l)
{
	size_t cap = l->cap == 0 ? 8 : l->cap * 2;
	struct reader_rcpt *rows;
	char **strs;

	if (cap > SIZE_MAX / (3 * sizeof(*strs)))
		return -1;
	rows = realloc(l->rows, cap * sizeof(*rows));
	if (rows == NULL)
		return -1;
	l->rows = rows;
	strs = realloc(l->strs, 3 * cap * sizeof(*strs));
	if (strs == NULL)
		return -1;
	l->strs = strs;
	l->cap = cap;
	return 0;
}

/* A private copy of a text column in *out (NULL for SQL NULL).  Returns
 * -1 when memory is short. */
static int
rcpts_dup(sqlite3_stmt *stmt, int col, char **out)
{
	const unsigned char *s;
	size_t len;

	*out = NULL;
	s = sqlite3_column_text(stmt, col);
	if (s == NULL)
		return sqlite3_column_type(stmt, col) == SQLITE_NULL ? 0 : -1;
	len = (size_t)sqlite3_column_bytes(stmt, col);
	if ((*out = malloc(len + 1)) == NULL)
		return -1;
	memcpy(*out, s, len + 1);
	return 0;
}

static void
rcpts_clear(struct reader_rcpts *l)
{
	size_t i;

	for (i = 0; i < 3 * l->n; i++) {
		free(l->strs[i]);
		l->strs[i] = NULL;
	}
	l->n = 0;
}

static void
rcpts_free(struct reader_rcpts *l)
{
	rcpts_clear(l);
	free(l->rows);
	free(l->strs);
	memset(l, 0, sizeof(*l));
}

/* ------------------------------------------------------------------------
 * Message content
 */

/* A stored chunk of a DATA stream through smtp_data_scan, in slices of
 * READER_SLICE so the buffer stays small whatever the chunk size.  Bytes
 * after the terminator (there should be none) are not the message's. */
static int
reader_unstuff_cb(const void *data, size_t len, void *arg)
{
	struct reader_unstuff *u = arg;
	const char *p = data;
	size_t n, used, olen;
	int r;

	while (len > 0 && u->data.st != SMTP_DATA_DONE) {
		n = len < READER_SLICE ? len : READER_SLICE;
		used = smtp_data_scan(&u->data, p, n, u->buf, &olen);
		if (olen > 0 && (r = u->cb(u->buf, olen, u->arg)) != 0)
			return r;
		p += used;
		len -= used;
	}
	return 0;
}

/*
 * A DATA stream cut short right after a line-start "." (or ".\r") ends
 * with those bytes held back by the scanner: they were a stuffing dot or
 * the start of the terminator, never message content we can be sure of,
 * so they are dropped.
 */
int
reader_message_content(struct reader *rd, int64_t message_row, enum reader_content how, reader_chunk_cb cb,
		       void *arg, char *err, size_t errsz)
{
	struct reader_unstuff u;
	enum reader_stmt which;
	sqlite3_stmt *stmt;
	const char *transport;
	bool unstuff, found;
	int64_t session_id = 0, seq_first = 0, seq_last = INT64_MAX;
	int rc, ret = READER_OK;

	if (reader_stmt_get(rd, RS_MESSAGE_TRANSPORT, &stmt, err, errsz) < 0)
		return READER_ERROR;
	if (sqlite3_bind_int64(stmt, 1, message_row) != SQLITE_OK) {
		reader_stmt_put(rd, RS_MESSAGE_TRANSPORT);
		return reader_db_error(rd, err, errsz);
	}
	rc = sqlite3_step(stmt);
	/* A data event whose message row is not there (a damaged or
	 * hand-made file) is still streamed, as DATA content. */
	found = rc == SQLITE_ROW;
	if (found) {
		transport = reader_text(stmt, 0);
		unstuff = how == READER_CONTENT_MESSAGE && (transport == NULL || strcmp(transport, "bdat") != 0);
		session_id = sqlite3_column_int64(stmt, 1);
		if (sqlite3_column_type(stmt, 2) != SQLITE_NULL)
			seq_first = sqlite3_column_int64(stmt, 2);
		if (sqlite3_column_type(stmt, 3) != SQLITE_NULL)
			seq_last = sqlite3_column_int64(stmt, 3);
	} else
		unstuff = how == READER_CONTENT_MESSAGE;
	reader_stmt_put(rd, RS_MESSAGE_TRANSPORT);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return reader_db_error(rd, err, errsz);

	memset(&u, 0, sizeof(u));
	if (unstuff) {
		smtp_data_init(&u.data);
		u.cb = cb;
		u.arg = arg;
		if ((u.buf = malloc(READER_SLICE + 2)) == NULL) {
			util_errf(err, errsz, "out of memory");
			return READER_ERROR;
		}
	}
	which = found ? RS_MESSAGE_DATA : RS_MESSAGE_DATA_ORPHAN;
	if (reader_stmt_get(rd, which, &stmt, err, errsz) < 0) {
		free(u.buf);
		return READER_ERROR;
	}
	if (sqlite3_bind_int64(stmt, 1, message_row) != SQLITE_OK ||
	    (found && (sqlite3_bind_int64(stmt, 2, session_id) != SQLITE_OK ||
		       sqlite3_bind_int64(stmt, 3, seq_first) != SQLITE_OK ||
		       sqlite3_bind_int64(stmt, 4, seq_last) != SQLITE_OK)))
		rc = SQLITE_ERROR;
	else
		rc = SQLITE_ROW;
	while (rc == SQLITE_ROW && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		found = true;
		ret = store_reader_event_bytes(rd->st, sqlite3_column_int64(stmt, 0), unstuff ? reader_unstuff_cb : cb,
					       unstuff ? (void *)&u : arg, err, errsz);
		if (ret != 0)
			break;
	}
	if (ret == READER_OK && rc != SQLITE_DONE)
		ret = reader_db_error(rd, err, errsz);
	reader_stmt_put(rd, which);
	free(u.buf);
	if (ret == READER_OK && !found)
		return READER_NOTFOUND;
	return ret;
}

/* ------------------------------------------------------------------------
 * Helpers
 */

static int
reader_db_error(struct reader *rd, char *err, size_t errsz)
{
	util_errf(err, errsz, "cannot read the database: %s", sqlite3_errmsg(rd->db));
	return READER_ERROR;
}

/* A prepared statement of the reader's own, ready to bind; refused while
 * a walk is stepping it (a callback starting another walk). */
static int
reader_stmt_get(struct reader *rd, enum reader_stmt which, sqlite3_stmt **out, char *err, size_t errsz)
{
	struct reader_sql q;

	*out = NULL;
	if (rd->busy[which]) {
		util_errf(err, errsz, "a reader walk was started from inside another (collect, then walk)");
		return READER_ERROR;
	}
	if (rd->stmt[which] == NULL) {
		if (which == RS_SESSION) {
			memset(&q, 0, sizeof(q));
			sql_add(&q, "SELECT ");
			sql_session_cols(&q, "s.");
			sql_add(&q, " FROM sessions s WHERE s.id = ?1");
			if (q.overflow) {
				util_errf(err, errsz, "internal error: session query too long");
				return READER_ERROR;
			}
		}
		if (sqlite3_prepare_v3(rd->db, which == RS_SESSION ? q.text : reader_stmt_sql[which], -1,
				       SQLITE_PREPARE_PERSISTENT, &rd->stmt[which], NULL) != SQLITE_OK)
			return reader_db_error(rd, err, errsz);
	}
	rd->busy[which] = true;
	*out = rd->stmt[which];
	return 0;
}

static void
reader_stmt_put(struct reader *rd, enum reader_stmt which)
{
	sqlite3_reset(rd->stmt[which]);
	sqlite3_clear_bindings(rd->stmt[which]);
	rd->busy[which] = false;
}

static int
reader_exec(struct reader *rd, const char *sql, char *err, size_t errsz)
{
	if (sqlite3_exec(rd->db, sql, NULL, NULL, NULL) != SQLITE_OK)
		return reader_db_error(rd, err, errsz);
	return 0;
}

/* A text column as NUL-terminated bytes, NULL for SQL NULL.  Valid until
 * the statement steps again. */
static const char *
reader_text(sqlite3_stmt *stmt, int col)
{
	return (const char *)sqlite3_column_text(stmt, col);
}

/* Names a newer smtptap may add without a schema change map to the
 * catch-all side and kind, so that old binaries still show the rest. */
static enum store_side
reader_side(const char *name)
{
	int i;

	for (i = STORE_SIDE_CLIENT; name != NULL && i <= STORE_SIDE_PROXY; i++) {
		if (strcmp(name, store_side_name((enum store_side)i)) == 0)
			return (enum store_side)i;
	}
	return STORE_SIDE_PROXY;
}

static enum store_kind
reader_kind(const char *name)
{
	int i;

	for (i = STORE_KIND_CONNECT; name != NULL && i <= STORE_KIND_TLS; i++) {
		if (strcmp(name, store_kind_name((enum store_kind)i)) == 0)
			return (enum store_kind)i;
	}
	return STORE_KIND_ACTION;
}
