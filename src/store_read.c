/*
 * store_read.c - see store.h.  The read-only half, for the CLI.
 *
 * The file is opened SQLITE_OPEN_READONLY: in WAL mode that reads a
 * consistent snapshot while a proxy keeps recording, and it can never
 * change the file, not even by migrating it.  Each walk is one statement,
 * so a walk sees one snapshot.
 *
 * Text columns are handed out as sqlite3_column_text() returns them:
 * NUL-terminated bytes, not necessarily UTF-8.
 */
#include "smtptap/store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "smtptap/content.h"
#include "smtptap/log.h"
#include "smtptap/util.h"
#include "smtptap/schema.h"

/* Keep in step with sql/001_init.sql and store.c. */
#define STORE_APPLICATION_ID 0x53544150
#define STORE_READ_BUSY_TIMEOUT_MS 5000

/* The counts are the summary the writer keeps (sql/002_schema2.sql): a
 * listing reads only the sessions table. */
#define SESSION_COLUMNS                                                                                  \
	"s.id, s.started_us, s.ended_us, s.listener, s.client, s.upstream, s.upstream_addr, s.mode, "     \
	"s.client_tls, s.upstream_tls, s.outcome, s.detail, s.nmessages, s.nevents, s.client_ip, s.helo, " \
	"s.auth_mech, s.auth_user, s.client_tls_version, s.upstream_tls_version, s.ntransactions, "        \
	"s.client_bytes, s.upstream_bytes, s.proxy_bytes, s.replay_of"

/* An event's bytes are handed to callbacks whole; one held in a segment
 * is read into memory first, so refuse absurd lengths (the recorder's
 * data events are at most 256 KiB). */
#define STORE_EVENT_RAW_MAX (64u * 1024 * 1024)

struct store_reader {
	sqlite3 *db;
	struct content_reader *content;
	unsigned char *evbuf; /* an external event's bytes (store_reader_events) */
	size_t evlen, evcap;
};

/* A transaction's recipients, copied out of their statement so that they
 * outlive its next step; strs[3 * i + k] owns rows[i]'s k-th string. */
struct rcpt_list {
	struct store_rcpt_row *rows;
	char **strs;
	size_t n, cap;
};

static int rd_check(struct store_reader *rd, char *err, size_t errsz);
static int rd_content_loc(sqlite3_stmt *stmt, int col, struct content_loc *loc);
static int rd_load_content(struct store_reader *rd, const struct content_loc *loc, char *err, size_t errsz);
static int rd_evbuf_cb(const void *data, size_t len, void *arg);
static int rd_prepare(struct store_reader *rd, const char *sql, sqlite3_stmt **stmt, char *err, size_t errsz);
static int rd_prepare_key(struct store_reader *rd, const char *sql, int64_t key, sqlite3_stmt **stmt, char *err,
			  size_t errsz);
static int rd_db_error(struct store_reader *rd, char *err, size_t errsz);
static int rd_walk_sessions(struct store_reader *rd, sqlite3_stmt *stmt, store_session_cb cb, void *arg,
			    bool *found, char *err, size_t errsz);
static const char *rd_text(sqlite3_stmt *stmt, int col);
static const void *rd_blob(sqlite3_stmt *stmt, int col, size_t *len);
static enum store_side rd_side(const char *name);
static enum store_kind rd_kind(const char *name);
static int rcpts_load(sqlite3_stmt *stmt, int64_t session_id, int transaction_idx, struct rcpt_list *l);
static int rd_prepare_rcpts(struct store_reader *rd, sqlite3_stmt **stmt, char *err, size_t errsz);
static int rcpts_grow(struct rcpt_list *l);
static int rcpts_dup(sqlite3_stmt *stmt, int col, char **out);
static void rcpts_clear(struct rcpt_list *l);

struct store_reader *
store_reader_open(const char *path, char *err, size_t errsz)
{
	struct store_reader *rd;
	struct stat sb;
	int rc;

	/* SQLite's "unable to open database file" does not say why. */
	if (stat(path, &sb) < 0) {
		util_errf(err, errsz, "cannot open it: %s", strerror(errno));
		return NULL;
	}
	if (!S_ISREG(sb.st_mode)) {
		util_errf(err, errsz, "not a regular file");
		return NULL;
	}
	/* Reading never changes the file, except to bring an older schema
	 * up to date, once (store.c, with the proxy's checks). */
	if (store_upgrade(path, err, errsz) < 0)
		return NULL;
	rd = calloc(1, sizeof(*rd));
	if (rd == NULL) {
		util_errf(err, errsz, "out of memory");
		return NULL;
	}
	if ((rd->content = content_reader_open(path)) == NULL) {
		util_errf(err, errsz, "out of memory");
		free(rd);
		return NULL;
	}
	rc = sqlite3_open_v2(path, &rd->db, SQLITE_OPEN_READONLY, NULL);
	if (rc != SQLITE_OK) {
		util_errf(err, errsz, "cannot open it: %s", rd->db != NULL ? sqlite3_errmsg(rd->db) : sqlite3_errstr(rc));
		store_reader_close(rd);
		return NULL;
	}
	sqlite3_busy_timeout(rd->db, STORE_READ_BUSY_TIMEOUT_MS);
	if (rd_check(rd, err, errsz) < 0) {
		store_reader_close(rd);
		return NULL;
	}
	return rd;
}

void
store_reader_close(struct store_reader *rd)
{
	if (rd == NULL)
		return;
	/* Read-only statements are all finalized by now: close cannot be busy. */
	sqlite3_close(rd->db);
	content_reader_close(rd->content);
	free(rd->evbuf);
	free(rd);
}

int
store_reader_sessions(struct store_reader *rd, int limit, store_session_cb cb, void *arg, char *err,
		      size_t errsz)
{
	sqlite3_stmt *stmt;
	bool found;

	/* The newest `limit` sessions, handed out oldest first like a log. */
	if (rd_prepare_key(rd,
			   "SELECT " SESSION_COLUMNS " FROM (SELECT * FROM sessions ORDER BY id DESC LIMIT ?1) s "
			   "ORDER BY s.id",
			   limit > 0 ? limit : -1, &stmt, err, errsz) < 0)
		return -1;
	return rd_walk_sessions(rd, stmt, cb, arg, &found, err, errsz);
}

int
store_reader_session(struct store_reader *rd, int64_t id, store_session_cb cb, void *arg, char *err,
		     size_t errsz)
{
	sqlite3_stmt *stmt;
	bool found = false;
	int rc;

	if (rd_prepare_key(rd, "SELECT " SESSION_COLUMNS " FROM sessions s WHERE s.id = ?1", id, &stmt, err, errsz) < 0)
		return -1;
	rc = rd_walk_sessions(rd, stmt, cb, arg, &found, err, errsz);
	if (rc == 0 && !found)
		return 1;
	return rc;
}

int
store_reader_replays(struct store_reader *rd, int64_t id, store_session_cb cb, void *arg, char *err, size_t errsz)
{
	sqlite3_stmt *stmt;
	bool found;

	/* sessions_replay_of: the replays alone, oldest first */
	if (rd_prepare_key(rd, "SELECT " SESSION_COLUMNS " FROM sessions s WHERE s.replay_of = ?1 ORDER BY s.id", id,
			   &stmt, err, errsz) < 0)
		return -1;
	return rd_walk_sessions(rd, stmt, cb, arg, &found, err, errsz);
}

int
store_reader_events(struct store_reader *rd, int64_t session_id, store_event_cb cb, void *arg, char *err,
		    size_t errsz)
{
	struct store_event_row row;
	sqlite3_stmt *stmt;
	int rc, ret = 0;

	struct content_loc loc;

	if (rd_prepare_key(rd,
			   "SELECT seq, t_us, side, kind, flags, message_row, text, raw, answers_seq, cause_seq, "
			   "content_segment, content_offset, content_length FROM events "
			   "WHERE session_id = ?1 ORDER BY seq",
			   session_id, &stmt, err, errsz) < 0)
		return -1;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&row, 0, sizeof(row));
		row.seq = sqlite3_column_int64(stmt, 0);
		row.t_us = sqlite3_column_int64(stmt, 1);
		row.side = rd_side(rd_text(stmt, 2));
		row.kind = rd_kind(rd_text(stmt, 3));
		row.flags = (unsigned)sqlite3_column_int64(stmt, 4);
		row.message_row = sqlite3_column_int64(stmt, 5);
		row.text = rd_text(stmt, 6);
		row.raw = rd_blob(stmt, 7, &row.raw_len);
		row.answers_seq = sqlite3_column_int64(stmt, 8);
		row.cause_seq = sqlite3_column_int64(stmt, 9);
		if (rd_content_loc(stmt, 10, &loc)) {
			if (rd_load_content(rd, &loc, err, errsz) < 0) {
				sqlite3_finalize(stmt);
				return -1;
			}
			row.raw = rd->evbuf;
			row.raw_len = rd->evlen;
		}
		if ((ret = cb(&row, arg)) != 0)
			break;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		sqlite3_finalize(stmt);
		return rd_db_error(rd, err, errsz);
	}
	sqlite3_finalize(stmt);
	return ret;
}

int
store_reader_messages(struct store_reader *rd, int64_t session_id, store_message_cb cb, void *arg, char *err,
		      size_t errsz)
{
	struct store_message_row row;
	struct rcpt_list rcpts = { 0 };
	sqlite3_stmt *stmt, *rstmt;
	int rc, ret = 0;

	if (rd_prepare(rd,
		       "SELECT m.id, m.session_id, m.idx, m.started_us, m.ended_us, m.mail_from, m.mail_params, "
		       "m.transport, m.size, m.complete, m.subject, m.from_hdr, m.to_hdr, m.message_id_hdr, m.date_hdr, "
		       "m.upstream_code, m.upstream_reply, m.transaction_idx, t.mail_code, t.mail_reply "
		       "FROM messages m LEFT JOIN transactions t ON t.session_id = m.session_id AND t.idx = m.transaction_idx "
		       "WHERE m.session_id = ?1 ORDER BY m.idx, m.id",
		       &stmt, err, errsz) < 0)
		return -1;
	if (rd_prepare_rcpts(rd, &rstmt, err, errsz) < 0) {
		sqlite3_finalize(stmt);
		return -1;
	}
	if (sqlite3_bind_int64(stmt, 1, session_id) != SQLITE_OK) {
		rc = SQLITE_ERROR;
		goto out;
	}
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&row, 0, sizeof(row));
		row.id = sqlite3_column_int64(stmt, 0);
		row.session_id = sqlite3_column_int64(stmt, 1);
		row.idx = sqlite3_column_int(stmt, 2);
		row.started_us = sqlite3_column_int64(stmt, 3);
		row.ended_us = sqlite3_column_int64(stmt, 4);
		row.mail_from = rd_text(stmt, 5);
		row.mail_params = rd_text(stmt, 6);
		row.transport = rd_text(stmt, 7);
		row.size = sqlite3_column_int64(stmt, 8);
		row.complete = sqlite3_column_int(stmt, 9) != 0;
		row.subject = rd_text(stmt, 10);
		row.from = rd_text(stmt, 11);
		row.to = rd_text(stmt, 12);
		row.message_id_hdr = rd_text(stmt, 13);
		row.date = rd_text(stmt, 14);
		row.reply_code = sqlite3_column_int(stmt, 15);
		row.reply = rd_text(stmt, 16);
		row.transaction_idx = sqlite3_column_int(stmt, 17);
		row.mail_code = sqlite3_column_int(stmt, 18);
		row.mail_reply = rd_text(stmt, 19);
		/* Stepping rstmt leaves stmt's current row (and the pointers
		 * above) alone. */
		if ((rc = rcpts_load(rstmt, row.session_id, row.transaction_idx, &rcpts)) != SQLITE_OK)
			break;
		row.rcpts = rcpts.rows;
		row.nrcpts = rcpts.n;
		ret = cb(&row, arg);
		rcpts_clear(&rcpts);
		if (ret != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
out:
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		if (rc == SQLITE_NOMEM)
			util_errf(err, errsz, "cannot read the database: out of memory");
		else
			rd_db_error(rd, err, errsz);
		ret = -1;
	}
	rcpts_clear(&rcpts);
	free(rcpts.rows);
	free(rcpts.strs);
	sqlite3_finalize(rstmt);
	sqlite3_finalize(stmt);
	return ret;
}

int
store_reader_transactions(struct store_reader *rd, int64_t session_id, store_transaction_cb cb, void *arg,
			  char *err, size_t errsz)
{
	struct store_transaction_row row;
	struct rcpt_list rcpts = { 0 };
	sqlite3_stmt *stmt, *rstmt;
	int rc, ret = 0;

	if (rd_prepare_key(rd,
			   "SELECT t.idx, t.started_us, t.mail_seq, t.mail_from, t.mail_params, t.mail_code, "
			   "t.mail_reply, (SELECT count(*) FROM messages m WHERE m.session_id = t.session_id "
			   "AND m.transaction_idx = t.idx) "
			   "FROM transactions t WHERE t.session_id = ?1 ORDER BY t.idx",
			   session_id, &stmt, err, errsz) < 0)
		return -1;
	if (rd_prepare_rcpts(rd, &rstmt, err, errsz) < 0) {
		sqlite3_finalize(stmt);
		return -1;
	}
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		memset(&row, 0, sizeof(row));
		row.idx = sqlite3_column_int(stmt, 0);
		row.started_us = sqlite3_column_int64(stmt, 1);
		row.mail_seq = sqlite3_column_int64(stmt, 2);
		row.mail_from = rd_text(stmt, 3);
		row.mail_params = rd_text(stmt, 4);
		row.mail_code = sqlite3_column_int(stmt, 5);
		row.mail_reply = rd_text(stmt, 6);
		row.nmessages = sqlite3_column_int64(stmt, 7);
		if ((rc = rcpts_load(rstmt, session_id, row.idx, &rcpts)) != SQLITE_OK)
			break;
		row.rcpts = rcpts.rows;
		row.nrcpts = rcpts.n;
		ret = cb(&row, arg);
		rcpts_clear(&rcpts);
		if (ret != 0) {
			rc = SQLITE_DONE;
			break;
		}
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		if (rc == SQLITE_NOMEM)
			util_errf(err, errsz, "cannot read the database: out of memory");
		else
			rd_db_error(rd, err, errsz);
		ret = -1;
	}
	rcpts_clear(&rcpts);
	free(rcpts.rows);
	free(rcpts.strs);
	sqlite3_finalize(rstmt);
	sqlite3_finalize(stmt);
	return ret;
}

int
store_reader_message_data(struct store_reader *rd, int64_t message_row, store_chunk_cb cb, void *arg, char *err,
			  size_t errsz)
{
	struct content_loc loc;
	sqlite3_stmt *stmt;
	const void *p;
	size_t len;
	int rc, ret = 0;

	/* events_message (message_row, seq) delivers the rows in order: no
	 * sort, so a message of any size streams one chunk at a time, and a
	 * chunk kept in a content segment is read in pieces of at most
	 * CONTENT_READ_CHUNK. */
	if (rd_prepare_key(rd,
			   "SELECT raw, content_segment, content_offset, content_length FROM events "
			   "WHERE message_row = ?1 AND kind = 'data' AND "
			   "(raw IS NOT NULL OR content_segment IS NOT NULL) ORDER BY message_row, seq",
			   message_row, &stmt, err, errsz) < 0)
		return -1;
	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		if (rd_content_loc(stmt, 1, &loc)) {
			ret = content_reader_read(rd->content, &loc, cb, arg, err, errsz);
			if (ret != 0)
				break;
			continue;
		}
		p = rd_blob(stmt, 0, &len);
		if (len == 0)
			continue;
		if ((ret = cb(p, len, arg)) != 0)
			break;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		sqlite3_finalize(stmt);
		return rd_db_error(rd, err, errsz);
	}
	sqlite3_finalize(stmt);
	return ret;
}

/* ------------------------------------------------------------------------
 * helpers
 */


/*
 * Only an smtptap database this binary understands is read: its tables,
 * its application_id, and this binary's schema version (store_upgrade
 * brought an older one up to date before).
 */
static int
rd_check(struct store_reader *rd, char *err, size_t errsz)
{
	int newest = schema_migrations[schema_nmigrations - 1].version;
	int64_t ntables = 0, version = 0, appid = 0;
	sqlite3_stmt *stmt;
	int rc;

	rc = sqlite3_prepare_v2(rd->db,
				"SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
				"('sessions', 'events', 'messages', 'recipients', 'transactions')), "
				"(SELECT user_version FROM pragma_user_version), "
				"(SELECT application_id FROM pragma_application_id)",
				-1, &stmt, NULL);
	if (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		ntables = sqlite3_column_int64(stmt, 0);
		version = sqlite3_column_int64(stmt, 1);
		appid = sqlite3_column_int64(stmt, 2);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(stmt);
	if (rc == SQLITE_NOTADB) {
		util_errf(err, errsz, "not an SQLite database (so not an smtptap one)");
		return -1;
	}
	if (rc != SQLITE_OK) {
		util_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(rd->db));
		return -1;
	}
	if (version > 0 && appid == STORE_APPLICATION_ID && version > newest) {
		util_errf(err, errsz, "database schema version %" PRId64 " is newer than this smtptap (%d); upgrade smtptap",
			version, newest);
		return -1;
	}
	if (version > 0 && appid == STORE_APPLICATION_ID && version < newest) {
		util_errf(err, errsz, "database schema version %" PRId64 " is older than this smtptap's (%d) and was not upgraded",
			  version, newest);
		return -1;
	}
	if (version == 0 || appid != STORE_APPLICATION_ID || ntables != 5) {
		util_errf(err, errsz, "not an smtptap database");
		return -1;
	}
	return 0;
}

/* Columns col..col+2 (content_segment, _offset, _length) into loc;
 * returns whether the row has its bytes in a content segment. */
static int
rd_content_loc(sqlite3_stmt *stmt, int col, struct content_loc *loc)
{
	if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
		return 0;
	loc->segment = sqlite3_column_int64(stmt, col);
	loc->offset = sqlite3_column_int64(stmt, col + 1);
	loc->length = sqlite3_column_int64(stmt, col + 2);
	return 1;
}

/* One external event's bytes into rd->evbuf (rd->evlen). */
static int
rd_load_content(struct store_reader *rd, const struct content_loc *loc, char *err, size_t errsz)
{
	if (loc->length < 0 || loc->length > (int64_t)STORE_EVENT_RAW_MAX) {
		util_errf(err, errsz, "an event's content length (%" PRId64 " bytes) is out of range", loc->length);
		return -1;
	}
	if ((size_t)loc->length > rd->evcap) {
		unsigned char *p = realloc(rd->evbuf, (size_t)loc->length);

		if (p == NULL) {
			util_errf(err, errsz, "out of memory");
			return -1;
		}
		rd->evbuf = p;
		rd->evcap = (size_t)loc->length;
	}
	rd->evlen = 0;
	if (content_reader_read(rd->content, loc, rd_evbuf_cb, rd, err, errsz) != 0)
		return -1;
	/* Like an empty blob: a non-NULL pointer with no bytes. */
	if (rd->evbuf == NULL && (rd->evbuf = malloc(1)) == NULL) {
		util_errf(err, errsz, "out of memory");
		return -1;
	}
	return 0;
}

static int
rd_evbuf_cb(const void *data, size_t len, void *arg)
{
	struct store_reader *rd = arg;

	memcpy(rd->evbuf + rd->evlen, data, len);
	rd->evlen += len;
	return 0;
}

static int
rd_prepare(struct store_reader *rd, const char *sql, sqlite3_stmt **stmt, char *err, size_t errsz)
{
	if (sqlite3_prepare_v2(rd->db, sql, -1, stmt, NULL) != SQLITE_OK)
		return rd_db_error(rd, err, errsz);
	return 0;
}

/* Prepare a statement whose one parameter ?1 is `key`. */
static int
rd_prepare_key(struct store_reader *rd, const char *sql, int64_t key, sqlite3_stmt **stmt, char *err,
	       size_t errsz)
{
	if (rd_prepare(rd, sql, stmt, err, errsz) < 0)
		return -1;
	if (sqlite3_bind_int64(*stmt, 1, key) != SQLITE_OK) {
		sqlite3_finalize(*stmt);
		*stmt = NULL;
		return rd_db_error(rd, err, errsz);
	}
	return 0;
}

static int
rd_db_error(struct store_reader *rd, char *err, size_t errsz)
{
	util_errf(err, errsz, "cannot read the database: %s", sqlite3_errmsg(rd->db));
	return -1;
}

/* Run a session statement (SESSION_COLUMNS) and finalize it. */
static int
rd_walk_sessions(struct store_reader *rd, sqlite3_stmt *stmt, store_session_cb cb, void *arg, bool *found,
		 char *err, size_t errsz)
{
	struct store_session_row row;
	int rc, ret = 0;

	while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		*found = true;
		memset(&row, 0, sizeof(row));
		row.id = sqlite3_column_int64(stmt, 0);
		row.started_us = sqlite3_column_int64(stmt, 1);
		row.ended_us = sqlite3_column_int64(stmt, 2);
		row.listener = rd_text(stmt, 3);
		row.client = rd_text(stmt, 4);
		row.upstream = rd_text(stmt, 5);
		row.upstream_addr = rd_text(stmt, 6);
		row.mode = rd_text(stmt, 7);
		row.client_tls = rd_text(stmt, 8);
		row.upstream_tls = rd_text(stmt, 9);
		row.outcome = rd_text(stmt, 10);
		row.detail = rd_text(stmt, 11);
		row.nmessages = sqlite3_column_int64(stmt, 12);
		row.nevents = sqlite3_column_int64(stmt, 13);
		row.client_ip = rd_text(stmt, 14);
		row.helo = rd_text(stmt, 15);
		row.auth_mech = rd_text(stmt, 16);
		row.auth_user = rd_text(stmt, 17);
		row.client_tls_version = rd_text(stmt, 18);
		row.upstream_tls_version = rd_text(stmt, 19);
		row.ntransactions = sqlite3_column_int64(stmt, 20);
		row.client_bytes = sqlite3_column_int64(stmt, 21);
		row.upstream_bytes = sqlite3_column_int64(stmt, 22);
		row.proxy_bytes = sqlite3_column_int64(stmt, 23);
		row.replay_of = sqlite3_column_int64(stmt, 24);
		if ((ret = cb(&row, arg)) != 0)
			break;
	}
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		sqlite3_finalize(stmt);
		return rd_db_error(rd, err, errsz);
	}
	sqlite3_finalize(stmt);
	return ret;
}

/* A text column as NUL-terminated bytes, NULL for SQL NULL.  Valid until
 * the statement steps again. */
static const char *
rd_text(sqlite3_stmt *stmt, int col)
{
	return (const char *)sqlite3_column_text(stmt, col);
}

/* A blob column; NULL for SQL NULL, a non-NULL pointer for an empty blob
 * (sqlite3_column_blob() gives NULL for both). */
static const void *
rd_blob(sqlite3_stmt *stmt, int col, size_t *len)
{
	static const char empty[1];
	const void *p;

	*len = 0;
	if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
		return NULL;
	p = sqlite3_column_blob(stmt, col);
	*len = (size_t)sqlite3_column_bytes(stmt, col);
	return p != NULL ? p : empty;
}

/* Names a newer smtptap may add without a schema change map to the
 * catch-all side and kind, so that old binaries still show the rest. */
static enum store_side
rd_side(const char *name)
{
	int i;

	for (i = STORE_SIDE_CLIENT; name != NULL && i <= STORE_SIDE_PROXY; i++) {
		if (strcmp(name, store_side_name((enum store_side)i)) == 0)
			return (enum store_side)i;
	}
	return STORE_SIDE_PROXY;
}

static enum store_kind
rd_kind(const char *name)
{
	int i;

	for (i = STORE_KIND_CONNECT; name != NULL && i <= STORE_KIND_TLS; i++) {
		if (strcmp(name, store_kind_name((enum store_kind)i)) == 0)
			return (enum store_kind)i;
	}
	return STORE_KIND_ACTION;
}

static int
rd_prepare_rcpts(struct store_reader *rd, sqlite3_stmt **stmt, char *err, size_t errsz)
{
	return rd_prepare(rd,
			  "SELECT address, params, reply_code, reply_text, rcpt_seq FROM recipients "
			  "WHERE session_id = ?1 AND transaction_idx = ?2 ORDER BY idx",
			  stmt, err, errsz);
}

/* Copy a transaction's recipients into l (emptied first; none for idx 0).
 * Returns an SQLite result code; SQLITE_OK when all were read. */
static int
rcpts_load(sqlite3_stmt *stmt, int64_t session_id, int transaction_idx, struct rcpt_list *l)
{
	struct store_rcpt_row *r;
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
rcpts_grow(struct rcpt_list *l)
{
	size_t cap = l->cap == 0 ? 8 : l->cap * 2;
	struct store_rcpt_row *rows;
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
rcpts_clear(struct rcpt_list *l)
{
	size_t i;

	for (i = 0; i < 3 * l->n; i++) {
		free(l->strs[i]);
		l->strs[i] = NULL;
	}
	l->n = 0;
}
