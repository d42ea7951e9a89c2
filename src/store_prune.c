/*
 * store_prune.c - deleting whole sessions: `smtptap prune` (store_prune,
 * its own connection, while a proxy may be recording) and the proxy's
 * retention (store_prune_db from the writer thread, between batches).
 *
 * A session is deleted with everything that belongs to it (events,
 * transactions, recipients, messages; its message content goes with the
 * segment files once nothing refers to them, content_sweep) in one
 * transaction, so a reader sees it whole or not at all, and a live
 * session (no outcome yet) is never a candidate.  Transactions are short
 * (STORE_PRUNE_CHUNK sessions or STORE_PRUNE_TX_MS, whichever comes first)
 * because a proxy recording into the same file waits for them.
 */
#include "smtptap/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "smtptap/store_int.h"
#include "smtptap/util.h"

#define STORE_PRUNE_CHUNK 64
#define STORE_PRUNE_TX_MS 250
#define STORE_PRUNE_BUSY_TIMEOUT_MS 10000

enum prune_stmt {
	PS_SESSION,	 /* the candidate's bytes */
	PS_CONTENT,	 /* the candidate's bytes in content segments */
	PS_EVENTS,
	PS_RECIPIENTS,
	PS_MESSAGES,
	PS_TRANSACTIONS,
	PS_DELETE_SESSION,
	PS_BY_AGE,	 /* candidates: ended before ?1 */
	PS_OLDEST,	 /* candidates: the oldest ended ones */
	PS_COUNT
};

/* ended_us >= started_us, so the index on started_us narrows it */
static const char prune_by_age_sql[] = "SELECT id FROM sessions WHERE started_us < ?1 AND outcome IS NOT NULL "
				       "AND coalesce(ended_us, started_us) < ?1 ORDER BY id LIMIT ?2";

static const char *const prune_sql[PS_COUNT] = {
	[PS_SESSION] = "SELECT client_bytes + upstream_bytes + proxy_bytes FROM sessions WHERE id = ?1",
	[PS_CONTENT] = "SELECT content_bytes FROM sessions WHERE id = ?1",
	[PS_EVENTS] = "DELETE FROM events WHERE session_id = ?1",
	[PS_RECIPIENTS] = "DELETE FROM recipients WHERE session_id = ?1",
	[PS_MESSAGES] = "DELETE FROM messages WHERE session_id = ?1",
	[PS_TRANSACTIONS] = "DELETE FROM transactions WHERE session_id = ?1",
	[PS_DELETE_SESSION] = "DELETE FROM sessions WHERE id = ?1 AND outcome IS NOT NULL",
	[PS_BY_AGE] = prune_by_age_sql,
	[PS_OLDEST] = "SELECT id FROM sessions WHERE outcome IS NOT NULL ORDER BY id LIMIT ?1",
};

struct pruner {
	sqlite3 *db;
	sqlite3_stmt *stmt[PS_COUNT];
	struct store_prune_result *res;
	char *err;
	size_t errsz;
	int64_t content_live; /* bytes of message content still referred to */
	bool swept;	      /* content_sweep() since the last deletion */
};

static int64_t prune_now_ms(void);
static int prune_prepare(struct pruner *p);
static void prune_finalize(struct pruner *p);
static int prune_dberr(struct pruner *p, const char *what);
static int prune_candidates(struct pruner *p, const struct store_prune_opts *o, int64_t *ids, int n, bool by_age);
static int prune_session(struct pruner *p, int64_t id);
static int prune_step_i64(sqlite3_stmt *stmt, int64_t id, int64_t *out, int64_t *changes);
static int prune_floors(sqlite3 *db);
static int prune_data_bytes(sqlite3 *db, int64_t *out);
static int prune_content_live(sqlite3 *db, int64_t *out);
static int prune_sweep(struct pruner *p);
static int prune_count(sqlite3 *db, const struct store_prune_opts *o, struct store_prune_result *res);
static int prune_query_i64(sqlite3 *db, const char *sql, int64_t bind, int64_t *out);

static int64_t
prune_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
prune_prepare(struct pruner *p)
{
	int i;

	for (i = 0; i < PS_COUNT; i++) {
		if (sqlite3_prepare_v2(p->db, prune_sql[i], -1, &p->stmt[i], NULL) != SQLITE_OK)
			return prune_dberr(p, "cannot prepare the deletions");
	}
	return 0;
}

static void
prune_finalize(struct pruner *p)
{
	int i;

	for (i = 0; i < PS_COUNT; i++) {
		sqlite3_finalize(p->stmt[i]);
		p->stmt[i] = NULL;
	}
}

static int
prune_dberr(struct pruner *p, const char *what)
{
	util_errf(p->err, p->errsz, "%s: %s", what, sqlite3_errmsg(p->db));
	return -1;
}

/* Up to n candidate session ids, oldest first.  Returns how many, or -1. */
static int
prune_candidates(struct pruner *p, const struct store_prune_opts *o, int64_t *ids, int n, bool by_age)
{
	sqlite3_stmt *stmt = p->stmt[by_age ? PS_BY_AGE : PS_OLDEST];
	int rc, got = 0;

	sqlite3_reset(stmt);
	if (by_age) {
		sqlite3_bind_int64(stmt, 1, o->before_us);
		sqlite3_bind_int(stmt, 2, n);
	} else {
		sqlite3_bind_int(stmt, 1, n);
	}
	while (got < n && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
		ids[got++] = sqlite3_column_int64(stmt, 0);
	if (got < n && rc != SQLITE_DONE) {
		sqlite3_reset(stmt);
		return prune_dberr(p, "cannot find the sessions to delete");
	}
	sqlite3_reset(stmt);
	return got;
}

/* Run a one-parameter statement: a SELECT's first column into *out, or a
 * DELETE's row count into *changes.  Returns an SQLite result code. */
static int
prune_step_i64(sqlite3_stmt *stmt, int64_t id, int64_t *out, int64_t *changes)
{
	int rc;

	sqlite3_reset(stmt);
	if ((rc = sqlite3_bind_int64(stmt, 1, id)) != SQLITE_OK)
		return rc;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW && out != NULL)
		*out = sqlite3_column_int64(stmt, 0);
	if (changes != NULL)
		*changes = sqlite3_changes64(sqlite3_db_handle(stmt));
	sqlite3_reset(stmt);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Delete one session and what belongs to it (inside the caller's
 * transaction).  Returns 1 deleted, 0 gone meanwhile (or live), -1. */
static int
prune_session(struct pruner *p, int64_t id)
{
	struct store_prune_result *r = p->res;
	int64_t bytes = 0, content = 0, nev = 0, nrc = 0, nmsg = 0, ntx = 0, nsess = 0;

	if (prune_step_i64(p->stmt[PS_SESSION], id, &bytes, NULL) != SQLITE_OK ||
	    prune_step_i64(p->stmt[PS_CONTENT], id, &content, NULL) != SQLITE_OK ||
	    prune_step_i64(p->stmt[PS_DELETE_SESSION], id, NULL, &nsess) != SQLITE_OK)
		return prune_dberr(p, "cannot delete a session");
	if (nsess == 0)
		return 0;
	/* The session row first: a live one (outcome NULL) is not deleted,
	 * and then nothing of it is. */
	if (prune_step_i64(p->stmt[PS_EVENTS], id, NULL, &nev) != SQLITE_OK ||
	    prune_step_i64(p->stmt[PS_RECIPIENTS], id, NULL, &nrc) != SQLITE_OK ||
	    prune_step_i64(p->stmt[PS_MESSAGES], id, NULL, &nmsg) != SQLITE_OK ||
	    prune_step_i64(p->stmt[PS_TRANSACTIONS], id, NULL, &ntx) != SQLITE_OK)
		return prune_dberr(p, "cannot delete a session");
	r->sessions++;
	r->events += nev;
	r->recipients += nrc;
	r->messages += nmsg;
	r->transactions += ntx;
	r->bytes += bytes;
	p->content_live -= content;
	p->swept = false;
	if (r->first_id == 0 || id < r->first_id)
		r->first_id = id;
	if (id > r->last_id)
		r->last_id = id;
	return 1;
}

/* Remember the highest ids handed out so far (see id_floor in
 * sql/002_schema2.sql): a pruned id is never handed out again. */
static int
prune_floors(sqlite3 *db)
{
	/* (the WHERE keeps SQLite from reading ON CONFLICT as a join) */
	static const char sql[] =
	    "INSERT INTO id_floor (name, max_id) SELECT name, m FROM ("
	    "  SELECT 'sessions' AS name, (SELECT max(id) FROM sessions) AS m"
	    "  UNION ALL SELECT 'messages', (SELECT max(id) FROM messages)) WHERE m IS NOT NULL "
	    "ON CONFLICT (name) DO UPDATE SET max_id = max(max_id, excluded.max_id)";

	return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

static int
prune_query_i64(sqlite3 *db, const char *sql, int64_t bind, int64_t *out)
{
	sqlite3_stmt *stmt;
	int rc;

	if ((rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL)) != SQLITE_OK)
		return rc;
	if (strchr(sql, '?') != NULL)
		sqlite3_bind_int64(stmt, 1, bind);
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(stmt, 0);
		rc = SQLITE_OK;
	}
	sqlite3_finalize(stmt);
	return rc == SQLITE_DONE ? SQLITE_ERROR : rc;
}

/* Bytes of message content the sessions still refer to (kept in segments,
 * sql/003_content.sql). */
static int
prune_content_live(sqlite3 *db, int64_t *out)
{
	return prune_query_i64(db, "SELECT CAST(total(content_bytes) AS INTEGER) FROM sessions", 0, out) == SQLITE_OK
		   ? 0
		   : -1;
}

/*
 * Inside the deleting transaction: delete the content segments nothing
 * refers to any more.  The write lock keeps a proxy from being between
 * appending bytes and committing the rows that refer to them.  The bytes
 * of a deleted session that share a segment with a kept one stay on disk
 * until that one goes too.
 */
static int
prune_sweep(struct pruner *p)
{
	const char *path = sqlite3_db_filename(p->db, "main");
	uint64_t freed = 0;
	int n;

	if (p->swept || path == NULL || *path == '\0')
		return 0;
	if ((n = content_sweep(p->db, path, &freed, p->err, p->errsz)) < 0)
		return -1;
	p->res->segments += n;
	p->res->segment_bytes += (int64_t)freed;
	p->swept = true;
	return 0;
}

/* Bytes of the pages holding data (the file's pages but the free ones). */
static int
prune_data_bytes(sqlite3 *db, int64_t *out)
{
	int64_t pages, freepages, pagesize;

	if (prune_query_i64(db, "PRAGMA page_count", 0, &pages) != SQLITE_OK ||
	    prune_query_i64(db, "PRAGMA freelist_count", 0, &freepages) != SQLITE_OK ||
	    prune_query_i64(db, "PRAGMA page_size", 0, &pagesize) != SQLITE_OK)
		return -1;
	*out = (pages - freepages) * pagesize;
	return 0;
}

int
store_prune_db(sqlite3 *db, const struct store_prune_opts *o, struct store_prune_result *res, char *err,
	       size_t errsz)
{
	struct pruner p = { .db = db, .res = res, .err = err, .errsz = errsz, .swept = true };
	int64_t ids[STORE_PRUNE_CHUNK], data, started, left = o->max_sessions > 0 ? o->max_sessions : INT64_MAX;
	int n, i, r, rc = -1, phase;
	bool intx = false, more, floored, counted;

	if (prune_prepare(&p) < 0)
		goto out;
	/* Phase 0: by age; phase 1: the oldest while the data is too big. */
	for (phase = 0; phase < 2 && left > 0; phase++) {
		if ((phase == 0 && o->before_us <= 0) || (phase == 1 && o->max_bytes == 0))
			continue;
		do {
			more = false;
			if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
				prune_dberr(&p, "cannot start a transaction");
				goto out;
			}
			intx = true;
			floored = false;
			counted = false;
			started = prune_now_ms();
			for (;;) {
				int want = left < STORE_PRUNE_CHUNK ? (int)left : STORE_PRUNE_CHUNK;

				if (phase == 1) {
					/* The pages in use, and the message content
					 * in segments (what is left of it). */
					if (prune_data_bytes(db, &data) < 0 ||
					    (!counted && prune_content_live(db, &p.content_live) < 0)) {
						prune_dberr(&p, "cannot read the database's size");
						goto out;
					}
					counted = true;
					if ((uint64_t)(data + p.content_live) <= o->max_bytes)
						break;
					want = 1; /* one at a time: stop as soon as it fits */
				}
				if ((n = prune_candidates(&p, o, ids, want, phase == 0)) < 0)
					goto out;
				if (n > 0 && !floored) {
					if (prune_floors(db) < 0) {
						prune_dberr(&p, "cannot record the highest ids");
						goto out;
					}
					floored = true;
				}
				for (i = 0; i < n; i++) {
					if ((r = prune_session(&p, ids[i])) < 0)
						goto out;
					left -= r;
				}
				if (n < want || left <= 0) /* nothing more to delete */
					break;
				if (prune_now_ms() - started >= STORE_PRUNE_TX_MS ||
				    (phase == 0 && n == STORE_PRUNE_CHUNK)) {
					more = true; /* commit, let a proxy write, go on */
					break;
				}
			}
			if (floored && prune_sweep(&p) < 0)
				goto out;
			if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
				prune_dberr(&p, "cannot commit the deletions");
				goto out;
			}
			intx = false;
		} while (more && left > 0);
	}
	rc = 0;
out:
	if (intx && !sqlite3_get_autocommit(db))
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	prune_finalize(&p);
	return rc;
}

int
store_incremental_vacuum(sqlite3 *db, int64_t npages)
{
	char sql[64];
	int64_t mode;

	if (prune_query_i64(db, "PRAGMA auto_vacuum", 0, &mode) != SQLITE_OK)
		return -1;
	if (mode != 2) /* not INCREMENTAL: the free pages stay, for reuse */
		return 0;
	if (npages > 0)
		snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum(%" PRId64 ")", npages);
	else
		snprintf(sql, sizeof(sql), "PRAGMA incremental_vacuum");
	return sqlite3_exec(db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

/* What store_prune_db would delete by age, read without writing: a dry
 * run must not hold the write lock a proxy is waiting for. */
static int
prune_count(sqlite3 *db, const struct store_prune_opts *o, struct store_prune_result *res)
{
	static const char sql[] =
	    "SELECT count(*), coalesce(sum(ntransactions), 0), coalesce(sum(nmessages), 0), "
	    "coalesce(sum(nevents), 0), coalesce(sum(client_bytes + upstream_bytes + proxy_bytes), 0), "
	    "coalesce(min(id), 0), coalesce(max(id), 0), "
	    "(SELECT count(*) FROM recipients r JOIN sessions c ON c.id = r.session_id "
	    " WHERE c.started_us < ?1 AND c.outcome IS NOT NULL AND coalesce(c.ended_us, c.started_us) < ?1) "
	    "FROM sessions WHERE started_us < ?1 AND outcome IS NOT NULL AND coalesce(ended_us, started_us) < ?1";
	sqlite3_stmt *stmt;
	int rc;

	if (o->before_us <= 0)
		return 0;
	if ((rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL)) != SQLITE_OK)
		return -1;
	sqlite3_bind_int64(stmt, 1, o->before_us);
	if ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		res->sessions = sqlite3_column_int64(stmt, 0);
		res->transactions = sqlite3_column_int64(stmt, 1);
		res->messages = sqlite3_column_int64(stmt, 2);
		res->events = sqlite3_column_int64(stmt, 3);
		res->bytes = sqlite3_column_int64(stmt, 4);
		res->first_id = sqlite3_column_int64(stmt, 5);
		res->last_id = sqlite3_column_int64(stmt, 6);
		res->recipients = sqlite3_column_int64(stmt, 7);
	}
	sqlite3_finalize(stmt);
	return rc == SQLITE_ROW ? 0 : -1;
}

int
store_prune(const char *path, const struct store_prune_opts *o, struct store_prune_result *res, char *err,
	    size_t errsz)
{
	sqlite3 *db = NULL;
	struct stat sb;
	int64_t mode = 0, content = 0;
	int fd = -1, rc = -1;

	memset(res, 0, sizeof(*res));
	if (stat(path, &sb) < 0) {
		util_errf(err, errsz, "cannot open it: %s", strerror(errno));
		return -1;
	}
	if (!S_ISREG(sb.st_mode)) {
		util_errf(err, errsz, "not a regular file");
		return -1;
	}
	if (store_upgrade(path, err, errsz) < 0)
		return -1;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		util_errf(err, errsz, "cannot open it: %s", db != NULL ? sqlite3_errmsg(db) : "out of memory");
		goto out;
	}
	sqlite3_busy_timeout(db, STORE_PRUNE_BUSY_TIMEOUT_MS);
	if (store_check_db(db, err, errsz) < 0)
		goto out;
	if (prune_query_i64(db, "PRAGMA user_version", 0, &mode) != SQLITE_OK || mode == 0) {
		util_errf(err, errsz, "not an smtptap database");
		goto out;
	}
	res->file_before = (int64_t)sb.st_size;
	if (prune_data_bytes(db, &res->data_before) < 0 || prune_content_live(db, &content) < 0 ||
	    prune_query_i64(db, "PRAGMA auto_vacuum", 0, &mode) != SQLITE_OK) {
		util_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(db));
		goto out;
	}
	res->data_before += content;
	res->incremental = mode == 2;
	if (o->dry_run) {
		if (prune_count(db, o, res) < 0) {
			util_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(db));
			goto out;
		}
		res->data_after = res->data_before;
		res->file_after = res->file_before;
		rc = 0;
		goto out;
	}
	if (store_prune_db(db, o, res, err, errsz) < 0)
		goto out;
	if (o->vacuum) {
		/* VACUUM rewrites the whole file: a proxy writing meanwhile
		 * would wait past its busy timeout and lose records. */
		fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
		if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) < 0) {
			util_errf(err, errsz, "--vacuum: %s",
				  fd >= 0 && errno == EWOULDBLOCK
				      ? "a proxy is recording into it: stop it first (the sessions were deleted)"
				      : strerror(errno));
			goto out;
		}
		/* NONE, as new files are made (store_configure()): a file
		 * made INCREMENTAL by an earlier smtptap stops paying for the
		 * pointer maps on every insert. */
		if (sqlite3_exec(db, "PRAGMA auto_vacuum = NONE; VACUUM;", NULL, NULL, NULL) != SQLITE_OK) {
			util_errf(err, errsz, "VACUUM: %s", sqlite3_errmsg(db));
			goto out;
		}
		res->incremental = false;
	} else if (store_incremental_vacuum(db, 0) < 0) {
		util_errf(err, errsz, "cannot give the freed space back: %s", sqlite3_errmsg(db));
		goto out;
	}
	/* Fold the WAL in, as a proxy does when it stops: the size below is
	 * then the file's.  A reader or a proxy may keep it from finishing,
	 * which loses nothing. */
	sqlite3_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	if (prune_data_bytes(db, &res->data_after) < 0 || prune_content_live(db, &content) < 0) {
		util_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(db));
		goto out;
	}
	res->data_after += content;
	res->file_after = stat(path, &sb) == 0 ? (int64_t)sb.st_size : res->file_before;
	rc = 0;
out:
	sqlite3_close(db);
	if (fd >= 0)
		close(fd);
	return rc;
}
