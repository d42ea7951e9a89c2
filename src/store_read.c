/*
 * store_read.c - see store.h: the read-only side of the store.  It opens
 * the file for reading (refusing what is not an smtptap database this
 * binary knows, after bringing an older schema up to date), and it is the
 * one place that knows where an event's bytes are kept.  Every query of
 * the recording is the reader's (reader.c), on this connection.
 *
 * The file is opened SQLITE_OPEN_READONLY: in WAL mode that reads a
 * consistent snapshot while a proxy keeps recording, and it can never
 * change the file.
 */
#include "smtptap/store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

#include "smtptap/content.h"
#include "smtptap/schema.h"
#include "smtptap/util.h"

/* Keep in step with sql/001_init.sql and store.c. */
#define STORE_APPLICATION_ID 0x53544150
#define STORE_READ_BUSY_TIMEOUT_MS 5000

struct store_reader {
	sqlite3 *db;
	struct content_reader *content;
	sqlite3_stmt *bytes; /* store_reader_event_bytes's, prepared on first use */
};

static int rd_check(struct store_reader *rd, char *err, size_t errsz);
static int rd_content_loc(sqlite3_stmt *stmt, int col, struct content_loc *loc);
static int rd_prepare(struct store_reader *rd, const char *sql, sqlite3_stmt **stmt, char *err, size_t errsz);
static int rd_db_error(struct store_reader *rd, char *err, size_t errsz);
static const void *rd_blob(sqlite3_stmt *stmt, int col, size_t *len);

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
	sqlite3_finalize(rd->bytes);
	/* Read-only statements are all finalized by now: close cannot be busy. */
	sqlite3_close(rd->db);
	content_reader_close(rd->content);
	free(rd);
}

sqlite3 *
store_reader_db(struct store_reader *rd)
{
	return rd->db;
}

/*
 * The one place that knows where an event's bytes are kept: in the row
 * itself (events.raw: commands, replies, and message data recorded
 * before sql/003_content.sql), or in a content segment beside the
 * database (content_segment, _offset, _length: message data).  Either way
 * they are handed on in pieces of at most STORE_READ_CHUNK, so no caller
 * ever holds more than one piece of a message.
 */
_Static_assert(CONTENT_READ_CHUNK <= STORE_READ_CHUNK, "content pieces must fit the reader's promise");

int
store_reader_event_bytes(struct store_reader *rd, int64_t rowid, store_chunk_cb cb, void *arg, char *err,
			 size_t errsz)
{
	struct content_loc loc;
	const unsigned char *p;
	size_t len, n;
	int rc, ret = 0;

	if (rd->bytes == NULL &&
	    rd_prepare(rd, "SELECT raw, content_segment, content_offset, content_length FROM events WHERE rowid = ?1",
		       &rd->bytes, err, errsz) < 0)
		return -1;
	if (sqlite3_bind_int64(rd->bytes, 1, rowid) != SQLITE_OK)
		return rd_db_error(rd, err, errsz);
	rc = sqlite3_step(rd->bytes);
	if (rc == SQLITE_ROW && rd_content_loc(rd->bytes, 1, &loc)) {
		ret = content_reader_read(rd->content, &loc, cb, arg, err, errsz);
	} else if (rc == SQLITE_ROW) {
		p = rd_blob(rd->bytes, 0, &len);
		while (p != NULL && len > 0 && ret == 0) {
			n = len < STORE_READ_CHUNK ? len : STORE_READ_CHUNK;
			ret = cb(p, n, arg);
			p += n;
			len -= n;
		}
	} else if (rc != SQLITE_DONE) {
		rd_db_error(rd, err, errsz);
		ret = -1;
	}
	sqlite3_reset(rd->bytes);
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

static int
rd_prepare(struct store_reader *rd, const char *sql, sqlite3_stmt **stmt, char *err, size_t errsz)
{
	if (sqlite3_prepare_v2(rd->db, sql, -1, stmt, NULL) != SQLITE_OK)
		return rd_db_error(rd, err, errsz);
	return 0;
}

static int
rd_db_error(struct store_reader *rd, char *err, size_t errsz)
{
	util_errf(err, errsz, "cannot read the database: %s", sqlite3_errmsg(rd->db));
	return -1;
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
