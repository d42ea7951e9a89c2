/*
 * store.c - see store.h.  The recording half: open and migrate the
 * database, then hand every record to one writer thread through a queue.
 *
 * The event loop must never wait for the disk, and the buffers it records
 * from (evbuffers, stack strings) are gone by the time the writer runs, so
 * each recording call copies its arguments into one self-contained malloc'd
 * record.  Freeing a written record is a single free(), and its allocation
 * size is exactly what the backlog counts.
 *
 * Thread ownership: the sqlite3 handle and its statements belong to the
 * writer thread from pthread_create() until pthread_join(); the id counters
 * belong to the event loop; the queue, the backlog and the failure count
 * are shared under st->lock.
 */
#include "smtptap/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sys/prctl.h>
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
#include "smtptap/schema.h"

/* PRAGMA application_id of an smtptap database ('STAP'); set by
 * sql/001_init.sql and checked by store_read.c too. */
#define STORE_APPLICATION_ID 0x53544150

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
#define STORE_BATCH_RECORDS 10000
#define STORE_BATCH_BYTES (4u * 1024 * 1024)
#define STORE_BATCH_WAIT_MS 100

#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_CLOSE_BUSY_TIMEOUT_MS 500
#define STORE_PAGE_SIZE "16384"
/* After a checkpoint, shrink a WAL that a burst of message data grew. */
#define STORE_WAL_SIZE_LIMIT "67108864" /* 64 MiB */

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

static const char *const store_stmt_sql[STMT_COUNT] = {
	[STMT_BEGIN] = "BEGIN IMMEDIATE",
	[STMT_COMMIT] = "COMMIT",
	[STMT_ROLLBACK] = "ROLLBACK",
	[STMT_SESSION_OPEN] = "INSERT INTO sessions (id, started_us, listener, client, upstream, mode) "
			      "VALUES (?, ?, ?, ?, ?, ?)",
	[STMT_SESSION_ADDR] = "UPDATE sessions SET upstream_addr = ? WHERE id = ?",
	[STMT_SESSION_CLIENT_TLS] = "UPDATE sessions SET client_tls = ? WHERE id = ?",
	[STMT_SESSION_UPSTREAM_TLS] = "UPDATE sessions SET upstream_tls = ? WHERE id = ?",
	[STMT_SESSION_CLOSE] = "UPDATE sessions SET ended_us = ?, outcome = ?, detail = ? WHERE id = ?",
	[STMT_EVENT] = "INSERT INTO events (session_id, seq, t_us, side, kind, flags, message_id, text, raw) "
		       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
	[STMT_MESSAGE_OPEN] = "INSERT INTO messages (id, session_id, idx, started_us, mail_from, mail_params, "
			      "transport) VALUES (?, ?, ?, ?, ?, ?, ?)",
	[STMT_RCPT] = "INSERT INTO recipients (message_id, idx, address, params, reply_code, reply_text) "
		      "VALUES (?, ?, ?, ?, ?, ?)",
	[STMT_MESSAGE_CLOSE] = "UPDATE messages SET ended_us = ?, size = ?, complete = ?, subject = ?, "
			       "from_hdr = ?, to_hdr = ?, message_id = ?, date_hdr = ?, upstream_code = ?, "
			       "upstream_reply = ? WHERE id = ?",
};

struct store {
	char *path;
	int lockfd; /* the file, flock()ed while open */
	sqlite3 *db;
	sqlite3_stmt *stmt[STMT_COUNT];

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

/* Binds a statement's parameters in order, remembering the first error so
 * that a row is never stepped with a parameter silently left NULL. */
struct binder {
	sqlite3_stmt *stmt;
	int idx;
	int rc;
};

static void store_errf(char *err, size_t errsz, const char *fmt, ...) LOG_PRINTF(3, 4);
static int store_create_file(struct store *st, mode_t *mode, char *err, size_t errsz);
static int store_query_int(sqlite3 *db, const char *sql, int64_t *out);
static int store_check(struct store *st, char *err, size_t errsz);
static int store_configure(struct store *st, char *err, size_t errsz);
static int store_migrate(struct store *st, char *err, size_t errsz);
static int store_recover(struct store *st, char *err, size_t errsz);
static int store_prepare(struct store *st, char *err, size_t errsz);
static int store_start_writer(struct store *st, char *err, size_t errsz);
static void store_free(struct store *st);

static void store_session_set(struct store *st, enum store_op op, int64_t session_id, enum store_side side,
			      const char *value);
static struct store_rec *store_rec_alloc(struct store *st, enum store_op op, size_t extra, const char *what,
					 int64_t id);
static size_t rec_strsize(const char *s);
static const char *rec_strcpy(char **cur, const char *s);
static void store_enqueue(struct store *st, struct store_rec *rec);
static void store_lost(struct store *st, uint64_t n, const char *fmt, ...) LOG_PRINTF(3, 4);

static void *store_writer_main(void *arg);
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
	return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK ? 0 : -1;
}

struct store *
store_open(const char *path, char *err, size_t errsz)
{
	struct store *st;
	mode_t mode;
	int rc;

	st = calloc(1, sizeof(*st));
	if (st == NULL || (st->path = strdup(path)) == NULL) {
		store_errf(err, errsz, "out of memory");
		free(st);
		return NULL;
	}
	st->tailp = &st->head;
	st->lockfd = -1;
	if (store_create_file(st, &mode, err, errsz) < 0)
		goto fail;
	/* NOMUTEX: the handle is used by one thread at a time (this one, then
	 * the writer), so SQLite's own locking would only cost time. */
	rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		store_errf(err, errsz, "%s", st->db != NULL ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
		goto fail;
	}
	sqlite3_busy_timeout(st->db, STORE_BUSY_TIMEOUT_MS);
	if (store_check(st, err, errsz) < 0 || store_configure(st, err, errsz) < 0 ||
	    store_migrate(st, err, errsz) < 0 || store_recover(st, err, errsz) < 0 ||
	    store_prepare(st, err, errsz) < 0 || store_start_writer(st, err, errsz) < 0)
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

static void
store_errf(char *err, size_t errsz, const char *fmt, ...)
{
	va_list ap;

	if (errsz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errsz, fmt, ap);
	va_end(ap);
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
		store_errf(err, errsz, "cannot create or open it: %s", strerror(errno));
		return -1;
	}
	if (fstat(st->lockfd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		store_errf(err, errsz, "not a regular file");
		return -1;
	}
	if (flock(st->lockfd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			store_errf(err, errsz, "another smtptap proxy is recording into it; give each its own --db");
		else
			store_errf(err, errsz, "cannot lock it: %s", strerror(errno));
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
static int
store_check(struct store *st, char *err, size_t errsz)
{
	int newest = schema_migrations[schema_nmigrations - 1].version;
	int64_t nobjects, version, appid;
	int rc;

	rc = store_query_int(st->db, "SELECT count(*) FROM sqlite_master", &nobjects);
	if (rc == SQLITE_NOTADB) {
		store_errf(err, errsz, "not an SQLite database (so not an smtptap one)");
		return -1;
	}
	if (rc != SQLITE_OK || (rc = store_query_int(st->db, "PRAGMA user_version", &version)) != SQLITE_OK ||
	    (rc = store_query_int(st->db, "PRAGMA application_id", &appid)) != SQLITE_OK) {
		store_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	if ((version == 0 && nobjects > 0) || (version > 0 && appid != STORE_APPLICATION_ID)) {
		store_errf(err, errsz, "an SQLite database, but not an smtptap one");
		return -1;
	}
	if (version > newest) {
		store_errf(err, errsz, "database schema version %" PRId64 " is newer than this smtptap (%d); upgrade smtptap",
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

	/* Only takes effect on a new file.  Message data comes in chunks of
	 * up to 64 KiB: bigger pages mean fewer overflow pages per chunk, and
	 * measured ~30% more MB/s than 4 KiB at no cost to small rows. */
	if (sqlite3_exec(st->db, "PRAGMA page_size = " STORE_PAGE_SIZE, NULL, NULL, NULL) != SQLITE_OK) {
		store_errf(err, errsz, "cannot configure it: %s", sqlite3_errmsg(st->db));
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
		store_errf(err, errsz, "cannot switch to WAL mode: %s", sqlite3_errmsg(st->db));
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
			 "PRAGMA journal_size_limit = " STORE_WAL_SIZE_LIMIT ";",
			 NULL, NULL, NULL) != SQLITE_OK) {
		store_errf(err, errsz, "cannot configure it: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	return 0;
}

/*
 * Bring the schema up to date.  Each migration runs in its own
 * transaction together with its user_version bump, so a crash leaves the
 * file at one version or the next; BEGIN IMMEDIATE and re-reading the
 * version inside it let two processes opening a new file at once agree.
 */
static int
store_migrate(struct store *st, char *err, size_t errsz)
{
	const struct schema_migration *m;
	char sql[64];
	int64_t version;
	size_t i;

	if (store_query_int(st->db, "PRAGMA user_version", &version) != SQLITE_OK)
		goto dberr;
	for (i = 0; i < schema_nmigrations; i++) {
		m = &schema_migrations[i];
		if (m->version <= version)
			continue;
		if (sqlite3_exec(st->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
			goto dberr;
		if (store_query_int(st->db, "PRAGMA user_version", &version) != SQLITE_OK)
			goto rollback;
		if (m->version <= version) {
			sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
			continue;
		}
		snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", m->version);
		if (sqlite3_exec(st->db, m->sql, NULL, NULL, NULL) != SQLITE_OK) {
			store_errf(err, errsz, "schema migration %s failed: %s", m->name, sqlite3_errmsg(st->db));
			sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
			return -1;
		}
		if (sqlite3_exec(st->db, sql, NULL, NULL, NULL) != SQLITE_OK ||
		    sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
			goto rollback;
		version = m->version;
	}
	return 0;

rollback:
	store_errf(err, errsz, "cannot update its schema: %s", sqlite3_errmsg(st->db));
	if (!sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
dberr:
	store_errf(err, errsz, "cannot update its schema: %s", sqlite3_errmsg(st->db));
	return -1;
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
	if (store_query_int(st->db, "SELECT coalesce(max(id), 0) FROM sessions", &st->next_session_id) != SQLITE_OK ||
	    store_query_int(st->db, "SELECT coalesce(max(id), 0) FROM messages", &st->next_message_id) != SQLITE_OK) {
		store_errf(err, errsz, "cannot read it: %s", sqlite3_errmsg(st->db));
		return -1;
	}
	st->next_session_id++;
	st->next_message_id++;
	return 0;

fail:
	store_errf(err, errsz, "cannot mark unfinished sessions: %s", sqlite3_errmsg(st->db));
	if (!sqlite3_get_autocommit(st->db))
		sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

static int
store_prepare(struct store *st, char *err, size_t errsz)
{
	int i;

	for (i = 0; i < STMT_COUNT; i++) {
		if (sqlite3_prepare_v3(st->db, store_stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i], NULL) !=
		    SQLITE_OK) {
			store_errf(err, errsz, "cannot prepare \"%s\": %s", store_stmt_sql[i], sqlite3_errmsg(st->db));
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
	rc = pthread_create(&st->writer, NULL, store_writer_main, st);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc != 0)
		goto fail;
	st->writer_running = true;
	return 0;

fail:
	store_errf(err, errsz, "cannot start the writer thread: %s", strerror(rc));
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
	while ((rec = st->head) != NULL) {
		st->head = rec->next;
		free(rec);
	}
	if (st->sync_ready) {
		pthread_cond_destroy(&st->cond);
		pthread_mutex_destroy(&st->lock);
	}
	if (st->lockfd >= 0)
		close(st->lockfd);
	free(st->path);
	free(st);
}

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
	rec->u.session.listener = rec_strcpy(&cur, s->listener);
	rec->u.session.client = rec_strcpy(&cur, s->client);
	rec->u.session.upstream = rec_strcpy(&cur, s->upstream);
	rec->u.session.mode = rec_strcpy(&cur, s->mode);
	store_enqueue(st, rec);
}

/* Queue an update of one text column of a session row. */
static void
store_session_set(struct store *st, enum store_op op, int64_t session_id, enum store_side side, const char *value)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, op, rec_strsize(value), "session", session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.set.id = session_id;
	rec->u.set.side = side;
	rec->u.set.value = rec_strcpy(&cur, value);
	store_enqueue(st, rec);
}

void
store_session_set_upstream_addr(struct store *st, int64_t session_id, const char *addr)
{
	store_session_set(st, STORE_OP_SESSION_ADDR, session_id, STORE_SIDE_UPSTREAM, addr);
}

void
store_session_set_tls(struct store *st, int64_t session_id, enum store_side side, const char *json)
{
	if (side != STORE_SIDE_CLIENT && side != STORE_SIDE_UPSTREAM) {
		log_warnx("s=%" PRId64 " store: TLS details for side %d ignored: not a leg", session_id, (int)side);
		return;
	}
	store_session_set(st, STORE_OP_SESSION_TLS, session_id, side, json);
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

void
store_event_add(struct store *st, const struct store_event *ev)
{
	struct store_rec *rec;
	size_t raw_len = ev->raw != NULL ? ev->raw_len : 0;
	char *cur;

	if (raw_len > SIZE_MAX / 2) {
		store_lost(st, 1, "s=%" PRId64 " store: event %" PRId64 " dropped: %zu bytes of raw data", ev->session_id,
			   ev->seq, raw_len);
		return;
	}
	rec = store_rec_alloc(st, STORE_OP_EVENT, raw_len + rec_strsize(ev->text), "session", ev->session_id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.event.session_id = ev->session_id;
	rec->u.event.seq = ev->seq;
	rec->u.event.t_us = ev->t_us;
	rec->u.event.message_id = ev->message_id;
	rec->u.event.side = ev->side;
	rec->u.event.kind = ev->kind;
	rec->u.event.flags = ev->flags;
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

void
store_message_open(struct store *st, const struct store_message *m)
{
	struct store_rec *rec;
	struct rec_rcpt *rcpts;
	size_t extra, i;
	char *cur;

	if (m->nrcpts > (SIZE_MAX / 4) / sizeof(*rcpts)) {
		store_lost(st, 1, "s=%" PRId64 " store: message %" PRId64 " dropped: %zu recipients", m->session_id,
			   m->id, m->nrcpts);
		return;
	}
	extra = m->nrcpts * sizeof(*rcpts) + rec_strsize(m->mail_from) + rec_strsize(m->mail_params) +
		rec_strsize(m->transport);
	for (i = 0; i < m->nrcpts; i++)
		extra += rec_strsize(m->rcpts[i].address) + rec_strsize(m->rcpts[i].params) +
			 rec_strsize(m->rcpts[i].reply);
	rec = store_rec_alloc(st, STORE_OP_MESSAGE_OPEN, extra, "message", m->id);
	if (rec == NULL)
		return;
	rcpts = (void *)rec->data;
	cur = rec->data + m->nrcpts * sizeof(*rcpts);
	rec->u.msg.id = m->id;
	rec->u.msg.session_id = m->session_id;
	rec->u.msg.started_us = m->started_us;
	rec->u.msg.idx = m->idx;
	rec->u.msg.mail_from = rec_strcpy(&cur, m->mail_from);
	rec->u.msg.mail_params = rec_strcpy(&cur, m->mail_params);
	rec->u.msg.transport = rec_strcpy(&cur, m->transport);
	for (i = 0; i < m->nrcpts; i++) {
		rcpts[i].address = rec_strcpy(&cur, m->rcpts[i].address);
		rcpts[i].params = rec_strcpy(&cur, m->rcpts[i].params);
		rcpts[i].reply = rec_strcpy(&cur, m->rcpts[i].reply);
		rcpts[i].reply_code = m->rcpts[i].reply_code;
	}
	rec->u.msg.rcpts = rcpts;
	rec->u.msg.nrcpts = m->nrcpts;
	store_enqueue(st, rec);
}

void
store_message_close(struct store *st, const struct store_message_end *m)
{
	struct store_rec *rec;
	char *cur;

	rec = store_rec_alloc(st, STORE_OP_MESSAGE_CLOSE,
			      rec_strsize(m->subject) + rec_strsize(m->from) + rec_strsize(m->to) +
				  rec_strsize(m->message_id) + rec_strsize(m->date) + rec_strsize(m->reply),
			      "message", m->id);
	if (rec == NULL)
		return;
	cur = rec->data;
	rec->u.msg_end.id = m->id;
	rec->u.msg_end.ended_us = m->ended_us;
	rec->u.msg_end.size = m->size > INT64_MAX ? INT64_MAX : (int64_t)m->size;
	rec->u.msg_end.complete = m->complete;
	rec->u.msg_end.subject = rec_strcpy(&cur, m->subject);
	rec->u.msg_end.from = rec_strcpy(&cur, m->from);
	rec->u.msg_end.to = rec_strcpy(&cur, m->to);
	rec->u.msg_end.message_id = rec_strcpy(&cur, m->message_id);
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
 * memory is short; `what` and `id` name the row it was for ("session" 42). */
static struct store_rec *
store_rec_alloc(struct store *st, enum store_op op, size_t extra, const char *what, int64_t id)
{
	struct store_rec *rec;
	size_t size = offsetof(struct store_rec, data) + extra;

	rec = malloc(size);
	if (rec == NULL) {
		store_lost(st, 1, "store: %s %" PRId64 ": cannot queue a %zu-byte record: out of memory", what, id,
			   size);
		return NULL;
	}
	rec->next = NULL;
	rec->size = size;
	rec->op = op;
	return rec;
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

/*
 * Count n lost records; the first loss is logged with its context, later
 * ones only counted (store_close() reports the total), so a full disk does
 * not flood stderr.  Any thread.
 */
static void
store_lost(struct store *st, uint64_t n, const char *fmt, ...)
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

/* ------------------------------------------------------------------------
 * writer thread
 */

static void *
store_writer_main(void *arg)
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

	if (store_exec_stmt(st, STMT_BEGIN) != SQLITE_OK) {
		store_lost(st, 0, "store: cannot start a transaction for %zu records: %s", n, sqlite3_errmsg(st->db));
		nlost = n;
		goto out;
	}
	for (rec = batch; rec != NULL; rec = rec->next, left--) {
		if (store_write_rec(st, rec) == 0) {
			intx++;
			continue;
		}
		nlost++;
		if (!sqlite3_get_autocommit(st->db))
			continue;
		nlost += intx;
		intx = 0;
		if (store_exec_stmt(st, STMT_BEGIN) != SQLITE_OK) {
			nlost += left - 1;
			goto out;
		}
	}
	if (store_exec_stmt(st, STMT_COMMIT) != SQLITE_OK) {
		store_lost(st, 0, "store: cannot commit %" PRIu64 " records: %s", intx, sqlite3_errmsg(st->db));
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

/* Returns 0, or -1 (logged through store_lost()). */
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
		bind_blob(&b, rec->u.event.raw, rec->u.event.raw_len);
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
		store_lost(st, 0, "store: cannot write %s: %s", what,
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
