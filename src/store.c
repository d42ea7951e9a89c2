/*
 * store.c - see store.h.  The recording half's lifetime: open the
 * database, make sure it is ours, configure and migrate it, recover what
 * a previous run left live, prepare the writer's statements and start the
 * writer thread; and close it all again, losing nothing queued.
 *
 * Opening and closing run on the caller's thread, before the writer starts
 * or after it has been joined, so the sqlite3 handle is used by one thread
 * at a time and needs no mutex.  The side and kind names are here too:
 * they are constant, for the writer and the CLI alike.
 *
 * What the store files share is in store_int.h; the recording calls are in
 * store_record.c, the writer thread in store_writer.c.
 */
#include "smtptap/store.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "smtptap/log.h"
#include "smtptap/util.h"
#include "smtptap/schema.h"
#include "smtptap/store_int.h"

/* PRAGMA application_id of an smtptap database ('STAP'); set by
 * sql/001_init.sql and checked by store_read.c too. */
#define STORE_APPLICATION_ID 0x53544150

/* See store_global_init(). */
#define STORE_MMAP_THRESHOLD (4 * 1024 * 1024)
#define STORE_TRIM_THRESHOLD (STORE_BACKLOG_HIGH + 4 * 1024 * 1024)
#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_CLOSE_BUSY_TIMEOUT_MS 500
#define STORE_PAGE_SIZE "16384"
/* The writer's page cache, in KiB (negative: SQLite's unit for KiB).
 * SQLite's default, 2000 KiB, is 125 pages of 16 KiB: fewer than the
 * B-tree pages a batch of 50 interleaved sessions keeps touching (events,
 * messages, transactions, recipients and their indexes), which then go
 * back and forth to the OS cache (pread/pwrite); measured with 50
 * sessions of 1 KiB messages, 8 MiB took the writer from ~150 to ~100 us
 * per message (new file or not). */
#define STORE_CACHE_KIB "-8192"
/* After a checkpoint, shrink a WAL that a burst of message data grew. */
#define STORE_WAL_SIZE_LIMIT "67108864" /* 64 MiB */

/* The writer's statements: prepared once here, for the life of the store,
 * and run only by store_writer.c. */
static const char *const store_stmt_sql[STMT_COUNT] = {
	[STMT_BEGIN] = "BEGIN IMMEDIATE",
	[STMT_COMMIT] = "COMMIT",
	[STMT_ROLLBACK] = "ROLLBACK",
	[STMT_SESSION_OPEN] = "INSERT INTO sessions (id, started_us, listener, client, upstream, mode, client_ip, "
			      "replay_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
	[STMT_SESSION_ADDR] = "UPDATE sessions SET upstream_addr = ? WHERE id = ?",
	[STMT_SESSION_CLIENT_TLS] = "UPDATE sessions SET client_tls = ?1, client_tls_version = "
				    "CASE WHEN json_valid(?1) THEN json_extract(?1, '$.version') END WHERE id = ?2",
	[STMT_SESSION_UPSTREAM_TLS] = "UPDATE sessions SET upstream_tls = ?1, upstream_tls_version = "
				      "CASE WHEN json_valid(?1) THEN json_extract(?1, '$.version') END WHERE id = ?2",
	[STMT_SESSION_AUTH] = "UPDATE sessions SET auth_mech = ?, auth_user = ? WHERE id = ?",
	[STMT_SESSION_CLOSE] = "UPDATE sessions SET ended_us = ?, outcome = ?, detail = ? WHERE id = ?",
	[STMT_SESSION_SUMMARY] = "UPDATE sessions SET nevents = nevents + ?, ntransactions = ntransactions + ?, "
				 "nmessages = nmessages + ?, client_bytes = client_bytes + ?, "
				 "upstream_bytes = upstream_bytes + ?, proxy_bytes = proxy_bytes + ?, "
				 "content_bytes = content_bytes + ?, helo = coalesce(?, helo), "
				 "upstream_addr = coalesce(?, upstream_addr), "
				 "ended_us = CASE WHEN ?10 THEN ?11 ELSE ended_us END, "
				 "outcome = CASE WHEN ?10 THEN ?12 ELSE outcome END, "
				 "detail = CASE WHEN ?10 THEN ?13 ELSE detail END, "
				 "content_seg_first = CASE WHEN ?15 IS NULL THEN content_seg_first "
				 "ELSE min(coalesce(content_seg_first, ?15), ?15) END, "
				 "content_seg_last = CASE WHEN ?16 IS NULL THEN content_seg_last "
				 "ELSE max(coalesce(content_seg_last, ?16), ?16) END WHERE id = ?14",
	[STMT_EVENT] = "INSERT INTO events (session_id, seq, t_us, side, kind, flags, message_row, answers_seq, "
		       "cause_seq, text, raw, content_segment, content_offset, content_length) "
		       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
	[STMT_TX_OPEN] = "INSERT INTO transactions (session_id, idx, started_us, mail_seq, mail_from, mail_params, "
			 "mail_code, mail_reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
	[STMT_TX_REPLY] = "UPDATE transactions SET mail_code = ?, mail_reply = ? WHERE session_id = ? AND idx = ?",
	[STMT_RCPT] = "INSERT INTO recipients (session_id, transaction_idx, idx, rcpt_seq, address, params, "
		      "reply_code, reply_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
	[STMT_MESSAGE_OPEN] = "INSERT INTO messages (id, session_id, transaction_idx, idx, started_us, mail_from, "
			      "mail_params, transport, data_seq_first) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
	[STMT_MESSAGE_CLOSE] = "UPDATE messages SET ended_us = ?, size = ?, complete = ?, subject = ?, "
			       "from_hdr = ?, to_hdr = ?, message_id_hdr = ?, date_hdr = ?, upstream_code = ?, "
			       "upstream_reply = ?, data_seq_last = ? WHERE id = ?",
	[STMT_MESSAGE_WHOLE] = "INSERT INTO messages (id, session_id, transaction_idx, idx, started_us, mail_from, "
			       "mail_params, transport, data_seq_first, ended_us, size, complete, subject, from_hdr, "
			       "to_hdr, message_id_hdr, date_hdr, upstream_code, upstream_reply, data_seq_last) "
			       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
};

static int store_create_file(struct store *st, mode_t *mode, char *err, size_t errsz);
static int store_query_int(sqlite3 *db, const char *sql, int64_t *out);
static int store_configure(struct store *st, char *err, size_t errsz);
static int store_recover(struct store *st, char *err, size_t errsz);
static int store_next_id(sqlite3 *db, const char *table, int64_t *next);
static int store_prepare(struct store *st, char *err, size_t errsz);
static int store_start_writer(struct store *st, char *err, size_t errsz);
static void store_free(struct store *st);

/* ------------------------------------------------------------------------
 * names
 */

static const char *const store_side_names[] = {
	[STORE_SIDE_CLIENT] = "client",
	[STORE_SIDE_UPSTREAM] = "upstream",
	[STORE_SIDE_PROXY] = "proxy",
};

static const char *const store_kind_names[] = {
	[STORE_KIND_CONNECT] = "connect", [STORE_KIND_COMMAND] = "command", [STORE_KIND_REPLY] = "reply",
	[STORE_KIND_DATA] = "data",	  [STORE_KIND_AUTH] = "auth",	    [STORE_KIND_ACTION] = "action",
	[STORE_KIND_CLOSE] = "close",	  [STORE_KIND_TLS] = "tls",
};

const char *
store_side_name(enum store_side side)
{
	if ((unsigned)side >= sizeof(store_side_names) / sizeof(store_side_names[0]))
		return "unknown";
	return store_side_names[side];
}

const char *
store_kind_name(enum store_kind kind)
{
	if ((unsigned)kind >= sizeof(store_kind_names) / sizeof(store_kind_names[0]))
		return "unknown";
	return store_kind_names[kind];
}

/* ------------------------------------------------------------------------
 * open and close
 */

int
store_global_init(void)
{
	/*
	 * Message data is queued in records of up to 256 KiB that the writer
	 * frees a batch at a time.  With glibc's defaults each such record
	 * was a fresh mmap() (or heap the last free had trimmed away), so
	 * every page of every record was faulted in and zeroed again: ~10% of
	 * the event loop's time on 1 MiB messages.  Keep freed memory for
	 * reuse instead; the queue is bounded (STORE_BACKLOG_HIGH), so so is
	 * what stays mapped.
	 */
	mallopt(M_MMAP_THRESHOLD, STORE_MMAP_THRESHOLD);
	mallopt(M_TRIM_THRESHOLD, STORE_TRIM_THRESHOLD);

	return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK ? 0 : -1;
}

struct store *
store_open(const char *path, char *err, size_t errsz)
{
	return store_open_opts(path, NULL, err, errsz);
}

struct store *
store_open_opts(const char *path, const struct store_options *opts, char *err, size_t errsz)
{
	struct store *st;
	mode_t mode;
	int rc;

	st = calloc(1, sizeof(*st));
	if (st == NULL || (st->path = strdup(path)) == NULL) {
		util_errf(err, errsz, "out of memory");
		free(st);
		return NULL;
	}
	st->tailp = &st->head;
	st->lockfd = -1;
	if (opts != NULL)
		st->opts = *opts;
	if (store_create_file(st, &mode, err, errsz) < 0)
		goto fail;
	/* NOMUTEX: the handle is used by one thread at a time (this one, then
	 * the writer), so SQLite's own locking would only cost time. */
	rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		util_errf(err, errsz, "%s", st->db != NULL ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
		goto fail;
	}
	sqlite3_busy_timeout(st->db, STORE_BUSY_TIMEOUT_MS);
	if (store_check_db(st->db, err, errsz) < 0 || store_configure(st, err, errsz) < 0 ||
	    store_migrate_db(st->db, err, errsz) < 0 || store_recover(st, err, errsz) < 0 ||
	    store_prepare(st, err, errsz) < 0)
		goto fail;
	/* Under the flock: one proxy appends to the segments at a time. */
	if ((st->content = content_writer_open(path, err, errsz)) == NULL || store_start_writer(st, err, errsz) < 0)
		goto fail;
	if (mode & S_IROTH)
		log_warnx("store: %s is readable by every user (mode %04o): recorded mail and credentials are exposed; "
			  "chmod 600 it",
			  path, (unsigned)mode);
	return st;

fail:
	store_free(st);
	return NULL;
}

int
store_close(struct store *st)
{
	uint64_t nlost;
	int i, rc;

	pthread_mutex_lock(&st->lock);
	st->stop = true;
	pthread_cond_signal(&st->cond);
	pthread_mutex_unlock(&st->lock);
	if ((rc = pthread_join(st->writer, NULL)) != 0) {
		errno = rc;
		log_warn("store: %s: cannot stop the writer thread", st->path);
		/* The thread may still use the handle: leak it rather than race. */
		return -1;
	}
	st->writer_running = false;
	nlost = st->nlost;
	if (nlost > 0)
		log_warnx("store: %s: %" PRIu64 " records could not be written", st->path, nlost);
	for (i = 0; i < STMT_COUNT; i++) {
		sqlite3_finalize(st->stmt[i]);
		st->stmt[i] = NULL;
	}
	/* Fold the WAL back into the file so that the file can be copied
	 * alone.  A reader in the middle of a walk makes this wait, so wait
	 * briefly: an unfinished checkpoint loses nothing. */
	sqlite3_busy_timeout(st->db, STORE_CLOSE_BUSY_TIMEOUT_MS);
	if (sqlite3_exec(st->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL) != SQLITE_OK)
		log_debug("store: %s: final checkpoint: %s", st->path, sqlite3_errmsg(st->db));
	store_free(st);
	return nlost > 0 ? -1 : 0;
}


/*
 * Create the file ourselves so that it starts as 0600 whatever the umask:
 * SQLite creates the -wal and -shm files with the main file's mode, so
 * recorded mail and credentials are never readable by other users.  An
 * existing file keeps the mode its owner gave it.
 *
 * The descriptor stays open, holding an flock() for the store's lifetime:
 * two proxies recording into one file would hand out the same ids, and
 * each would mark the other's live sessions interrupted.  flock() and
 * SQLite's fcntl() locks do not interact on Linux, and readers take none.
 * But closing any descriptor of the file drops every fcntl() lock this
 * process holds on it, so store_free() closes it only after SQLite's own.
 */
static int
store_create_file(struct store *st, mode_t *mode, char *err, size_t errsz)
{
	struct stat sb;

	st->lockfd = open(st->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
	if (st->lockfd < 0) {
		util_errf(err, errsz, "cannot create or open it: %s", strerror(errno));
		return -1;
	}
	if (fstat(st->lockfd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		util_errf(err, errsz, "not a regular file");
		return -1;
	}
	if (flock(st->lockfd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			util_errf(err, errsz, "another smtptap proxy is recording into it; give each its own --db");
		else
			util_errf(err, errsz, "cannot lock it: %s", strerror(errno));
		return -1;
	}
	*mode = sb.st_mode & 07777;
	return 0;
}

/* Run a query returning one integer.  Returns an SQLite result code. */
static int
store_query_int(sqlite3 *db, const char *sql, int64_t *out)
{
	sqlite3_stmt *stmt;
	int rc;

	rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);
	if (rc != SQLITE_OK)
		return rc;
	rc = sqlite3_step(stmt);
	if (rc == SQLITE_ROW) {
		*out = sqlite3_column_int64(stmt, 0);
		rc = SQLITE_OK;
	} else if (rc == SQLITE_DONE) {
		rc = SQLITE_ERROR;
	}
	sqlite3_finalize(stmt);
	return rc;
}

/* Refuse anything but an empty file or an smtptap database this binary
 * knows how to migrate, before changing a single byte of it. */
int
store_check_db(sqlite3 *db, char *err, size_t errsz)
{
	int newest = schema_migrations[schema_nmigrations - 1].version;
	int64_t nobjects, version, appid;
	int rc;

	rc = store_query_int(db, "SELECT count(*) FROM sqlite_master", &nobjects);
	if (rc == SQLITE_NOTADB) {
		util_errf(err, errsz, "not an SQLite database (so not an smtptap one)");
		return -1;
	}
	if (rc != SQLITE_OK || (rc = store_query_int(db, "PRAGMA user_version", &version)) != SQLITE_OK ||
	    (rc = store_query_int(db, "PRAGMA application_id", &appid)) != SQLITE_OK) {
		util_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(db));
		return -1;
	}
	if ((version == 0 && nobjects > 0) || (version > 0 && appid != STORE_APPLICATION_ID)) {
		util_errf(err, errsz, "an SQLite database, but not an smtptap one");
		return -1;
	}
	if (version > newest) {
		util_errf(err, errsz, "database schema version %" PRId64 " is newer than this smtptap (%d); upgrade smtptap",
			   version, newest);
		return -1;
	}
	return 0;
}

static int
store_configure(struct store *st, char *err, size_t errsz)
{
	sqlite3_stmt *stmt;
	const unsigned char *mode;
	bool wal = false;
	int rc;

	/* Only takes effect on a new file, before its first table.  16 KiB
	 * pages measured ~30% more MB/s than 4 KiB when message data lived
	 * in the file, and still cost small rows less than 4 KiB pages do.
	 *
	 * No auto_vacuum: message content, the bulk of a recording, lives in
	 * segment files that prune deletes outright, and the pages it frees
	 * in the file are reused by new recordings.  auto_vacuum's pointer
	 * maps cost the writer ~28% of its CPU on 1 KiB messages (~13 us of
	 * ~46 per message; docs/performance.md, notes part
	 * "small").  A file made with INCREMENTAL keeps it, and prune
	 * still gives its pages back; prune --vacuum shrinks any file. */
	if (sqlite3_exec(st->db, "PRAGMA page_size = " STORE_PAGE_SIZE, NULL, NULL, NULL) != SQLITE_OK) {
		util_errf(err, errsz, "cannot configure it: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode = WAL", -1, &stmt, NULL);
	if (rc == SQLITE_OK && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		mode = sqlite3_column_text(stmt, 0);
		wal = mode != NULL && strcmp((const char *)mode, "wal") == 0;
		rc = SQLITE_OK;
	}
	sqlite3_finalize(stmt);
	if (rc != SQLITE_OK) {
		util_errf(err, errsz, "cannot switch to WAL mode: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	/* Without WAL (some network filesystems) recording still works, but
	 * readers and the writer block each other. */
	if (!wal)
		log_warnx("store: %s: WAL journaling unavailable; readers will block the recorder", st->path);

	/* NORMAL in WAL mode: a power cut may lose the last commits but never
	 * corrupts the file; FULL would fsync every batch. */
	if (sqlite3_exec(st->db,
			 "PRAGMA synchronous = NORMAL;"
			 "PRAGMA cache_size = " STORE_CACHE_KIB ";"
			 "PRAGMA journal_size_limit = " STORE_WAL_SIZE_LIMIT ";",
			 NULL, NULL, NULL) != SQLITE_OK) {
		util_errf(err, errsz, "cannot configure it: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	return 0;
}

/*
 * Bring the schema up to date.  Each migration runs in its own
 * transaction together with its user_version bump, so a crash leaves the
 * file at one version or the next; BEGIN IMMEDIATE and re-reading the
 * version inside it let two processes opening a new file at once agree.
 * The migrations may call the functions store_fn.c registers.
 */
int
store_migrate_db(sqlite3 *db, char *err, size_t errsz)
{
	const struct schema_migration *m;
	char sql[64];
	int64_t version, from;
	size_t i;

	if (store_register_functions(db) < 0 || store_query_int(db, "PRAGMA user_version", &version) != SQLITE_OK)
		goto dberr;
	from = version;
	for (i = 0; i < schema_nmigrations; i++) {
		m = &schema_migrations[i];
		if (m->version <= version)
			continue;
		if (sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
			goto dberr;
		if (store_query_int(db, "PRAGMA user_version", &version) != SQLITE_OK)
			goto rollback;
		if (m->version <= version) {
			sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
			continue;
		}
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", m->version);
		if (sqlite3_exec(db, m->sql, NULL, NULL, NULL) != SQLITE_OK) {
			util_errf(err, errsz, "schema migration %s failed: %s", m->name, sqlite3_errmsg(db));
			sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
			return -1;
		}
		if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
		    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
			goto rollback;
		version = m->version;
	}
	/* A new file is not news; an older one made newer is. */
	if (from > 0 && version > from)
		log_info("store: schema upgraded from version %" PRId64 " to %" PRId64, from, version);
	return 0;

rollback:
	util_errf(err, errsz, "cannot update its schema: %s", sqlite3_errmsg(db));
	if (!sqlite3_get_autocommit(db))
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
dberr:
	util_errf(err, errsz, "cannot update its schema: %s", sqlite3_errmsg(db));
	return -1;
}

/*
 * See store.h.  A reader opens the file read-only, so an older schema is
 * brought up to date here first, with the same checks and migrations as
 * the proxy's.  The proxy's lock (store_create_file) tells whether a
 * proxy is recording into the file: a current one has migrated it
 * already, so a locked file at an older version is an older smtptap's,
 * whose prepared statements a migration would break.
 */
int
store_upgrade(const char *path, char *err, size_t errsz)
{
	int newest = schema_migrations[schema_nmigrations - 1].version;
	sqlite3 *db = NULL;
	int64_t version, appid;
	int fd = -1, rc = -1;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    store_query_int(db, "PRAGMA user_version", &version) != SQLITE_OK ||
	    store_query_int(db, "PRAGMA application_id", &appid) != SQLITE_OK) {
		/* Not readable as SQLite: the caller's own checks say why. */
		sqlite3_close(db);
		return 0;
	}
	sqlite3_close(db);
	db = NULL;
	/* Not ours, or nothing to do: the caller's checks decide. */
	if (appid != STORE_APPLICATION_ID || version == 0 || version >= newest)
		return 0;

	fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		util_errf(err, errsz,
			  "its schema (version %" PRId64 ") needs upgrading to version %d, which needs write access: "
			  "%s (run this once as a user who can write it, or on a copy)",
			  version, newest, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			util_errf(err, errsz,
				  "its schema (version %" PRId64 ") needs upgrading to version %d, but an older "
				  "smtptap proxy is recording into it: stop that proxy first",
				  version, newest);
		else
			util_errf(err, errsz, "cannot lock it: %s", strerror(errno));
		goto out;
	}
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		util_errf(err, errsz, "cannot open it for upgrading: %s",
			  db != NULL ? sqlite3_errmsg(db) : "out of memory");
		goto out;
	}
	sqlite3_busy_timeout(db, STORE_BUSY_TIMEOUT_MS);
	if (store_check_db(db, err, errsz) < 0 || store_migrate_db(db, err, errsz) < 0)
		goto out;
	rc = 0;
out:
	sqlite3_close(db);
	/* After SQLite's close: closing any descriptor of the file would drop
	 * SQLite's own fcntl() locks (see store_create_file). */
	if (fd >= 0)
		close(fd);
	return rc;
}

/*
 * A session still without an outcome was live when a previous run died:
 * say so, and end it at its last event.  Then continue the id counters.
 */
static int
store_recover(struct store *st, char *err, size_t errsz)
{
	static const char sql[] =
	    "BEGIN IMMEDIATE;"
	    "UPDATE messages SET complete = 0 WHERE complete IS NULL AND session_id IN "
	    "  (SELECT id FROM sessions WHERE outcome IS NULL);"
	    "UPDATE sessions SET outcome = 'interrupted',"
	    "  detail = coalesce(detail, 'smtptap stopped before the session ended'),"
	    "  ended_us = coalesce(ended_us, (SELECT max(t_us) FROM events WHERE session_id = sessions.id))"
	    "  WHERE outcome IS NULL;";
	int64_t changed;

	if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	changed = sqlite3_changes(st->db);
	if (sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	if (changed > 0)
		log_info("store: %s: %" PRId64 " session(s) left live by a previous run marked interrupted", st->path,
			 changed);
	if (store_next_id(st->db, "sessions", &st->next_session_id) != SQLITE_OK ||
	    store_next_id(st->db, "messages", &st->next_message_id) != SQLITE_OK) {
		util_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	return 0;

fail:
	util_errf(err, errsz, "cannot mark unfinished sessions: %s", sqlite3_errmsg(st->db));
	if (!sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

/* The next id of `table`: above its rows and above any id prune deleted
 * (id_floor), so that no id is ever handed out twice. */
static int
store_next_id(sqlite3 *db, const char *table, int64_t *next)
{
	char sql[160];
	int rc;

	snprintf(sql, sizeof(sql),
		 "SELECT max(coalesce((SELECT max(id) FROM %s), 0), "
		 "coalesce((SELECT max_id FROM id_floor WHERE name = '%s'), 0))",
		 table, table);
	rc = store_query_int(db, sql, next);
	(*next)++;
	return rc;
}

static int
store_prepare(struct store *st, char *err, size_t errsz)
{
	int i;

	for (i = 0; i < STMT_COUNT; i++) {
		if (sqlite3_prepare_v3(st->db, store_stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i], NULL) !=
		    SQLITE_OK) {
			util_errf(err, errsz, "cannot prepare \"%s\": %s", store_stmt_sql[i], sqlite3_errmsg(st->db));
			return -1;
		}
	}
	return 0;
}

static int
store_start_writer(struct store *st, char *err, size_t errsz)
{
	pthread_condattr_t attr;
	sigset_t all, old;
	int rc;

	if ((rc = pthread_condattr_init(&attr)) != 0)
		goto fail;
	/* Batching deadlines must not jump with the wall clock. */
	if ((rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)) != 0 ||
	    (rc = pthread_cond_init(&st->cond, &attr)) != 0) {
		pthread_condattr_destroy(&attr);
		goto fail;
	}
	pthread_condattr_destroy(&attr);
	if ((rc = pthread_mutex_init(&st->lock, NULL)) != 0) {
		pthread_cond_destroy(&st->cond);
		goto fail;
	}
	st->sync_ready = true;

	/* Signals (SIGTERM, SIGINT) belong to the event loop: the writer
	 * inherits a mask that blocks them all. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	rc = pthread_create(&st->writer, NULL, store_run_writer, st);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
		goto fail;
	st->writer_running = true;
	return 0;

fail:
	util_errf(err, errsz, "cannot start the writer thread: %s", strerror(rc));
	return -1;
}

/* Release everything store_open() built, however far it got.  The writer
 * must not be running (it never is when this is reached). */
static void
store_free(struct store *st)
{
	struct store_rec *rec;
	int i;

	for (i = 0; i < STMT_COUNT; i++)
		sqlite3_finalize(st->stmt[i]);
	if (st->db != NULL && sqlite3_close(st->db) != SQLITE_OK)
		log_warnx("store: %s: close: %s", st->path, sqlite3_errmsg(st->db));
	content_writer_close(st->content);
	while ((rec = st->head) != NULL) {
		st->head = rec->next;
		store_rec_free(rec);
	}
	store_pool_release(st);
	if (st->sync_ready) {
		pthread_cond_destroy(&st->cond);
		pthread_mutex_destroy(&st->lock);
	}
	if (st->lockfd >= 0)
		close(st->lockfd);
	free(st->sums);
	free(st->path);
	free(st);
}
