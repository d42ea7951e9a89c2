/*
 * test_store.c - unit tests for the SQLite store (src/store.c, store_read.c),
 * read back through the reader (reader.h, tested on its own in test_reader.c).
 *
 * Each test gets a fresh directory under /tmp (mkdtemp), removed with
 * everything in it afterwards.  Rows read back are copied out of the
 * callbacks, whose pointers die with each row, and compared byte for byte.
 *
 * STORE_BENCH=1 runs only the writer benchmark (records/s and MB/s); it is
 * not part of the suite, which stays quick (benchmarks are not tests).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "smtptap/content.h"
#include "smtptap/log.h"
#include "smtptap/reader.h"
#include "smtptap/schema.h"
#include "smtptap/store.h"
#include "smtptap/util.h"
#include "under_valgrind.h"

struct fixture {
	char dir[64];
	char db[128];
};

/* An event as read back, owning its bytes. */
struct ev_copy {
	int64_t seq, t_us, message_id;
	enum store_side side;
	enum store_kind kind;
	unsigned flags;
	char *text;
	unsigned char *raw;
	size_t raw_len;
	bool has_raw;
};

struct ev_list {
	struct ev_copy *v;
	size_t n, cap;
	int stop_after; /* callback returns 7 after this many rows; 0 = never */
};

struct sess_list {
	struct reader_session v[64];
	char *strs[64][10];
	size_t n;
};

struct msg_copy {
	int64_t id, session_id, started_us, ended_us, size;
	int idx, reply_code;
	bool complete;
	char *mail_from, *mail_params, *transport, *subject, *from, *to, *message_id, *date, *reply;
	size_t nrcpts;
	char *rcpt_addr[8], *rcpt_params[8], *rcpt_reply[8];
	int rcpt_code[8];
};

struct msg_list {
	struct msg_copy v[8];
	size_t n;
};

/* A running checksum of bytes read back (too many to keep). */
struct byte_sum {
	uint32_t sum, n;
};

struct buf {
	unsigned char *p;
	size_t len, cap;
	size_t nchunks;
};

static int setup_dir(void **);
static int teardown_dir(void **);
static void rm_tree(const char *);
static char *dup_or_null(const char *);
static void path_in(const struct fixture *, const char *, char *, size_t);
static mode_t file_mode(const char *);
static void wait_drained(struct store *);
static struct store *open_ok(const char *);
static struct reader *reader_ok(const char *);
static int64_t db_int(const char *, const char *);
static void db_exec(const char *, const char *);
static void add_event(struct store *, int64_t, int64_t, enum store_side, enum store_kind, unsigned, int64_t,
		      const char *, const void *, size_t);
static void add_session(struct store *, int64_t, const char *);
static int ev_collect_cb(const struct reader_event *, void *);
static void ev_list_free(struct ev_list *);
static int sess_collect_cb(const struct reader_session *, void *);
static void sess_list_free(struct sess_list *);
static int msg_collect_cb(const struct reader_message *, void *);
static void msg_list_free(struct msg_list *);
static int buf_append_cb(const void *, size_t, void *);
static int buf_events_cb(const struct reader_event *, void *);
static int sum_chunk_cb(const void *, size_t, void *);
static void fill_random(unsigned char *, size_t, uint32_t *);
static double now_s(void);
static double cpu_s(void);

/* ------------------------------------------------------------------------
 * Helpers.
 */

/* The `limit` newest sessions (all when limit <= 0), oldest first: what
 * `smtptap sessions` lists, through the reader (reader.h). */
static int
rd_sessions(struct reader *rd, int limit, reader_session_cb cb, void *arg, char *err, size_t errsz)
{
	static const struct reader_filter all;
	struct reader_page pg = { 0 };

	pg.limit = limit > 0 ? limit : 0;
	pg.oldest_first = true;
	return reader_sessions(rd, &all, &pg, cb, arg, NULL, err, errsz);
}

static int
setup_dir(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	if (fx == NULL)
		return -1;
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/smtptap-store-XXXXXX");
	if (mkdtemp(fx->dir) == NULL) {
		free(fx);
		return -1;
	}
	snprintf(fx->db, sizeof(fx->db), "%s/test.db", fx->dir);
	*state = fx;
	return 0;
}

static int
teardown_dir(void **state)
{
	struct fixture *fx = *state;

	rm_tree(fx->dir);
	free(fx);
	return 0;
}

/* Remove dir and everything in it (the databases' -content directories
 * included). */
static void
rm_tree(const char *dir)
{
	struct dirent *de;
	char path[512];
	struct stat sb;
	DIR *d;

	d = opendir(dir);
	if (d != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
				rm_tree(path);
			else
				unlink(path);
		}
		closedir(d);
	}
	rmdir(dir);
}

static char *
dup_or_null(const char *s)
{
	char *copy;

	if (s == NULL)
		return NULL;
	copy = strdup(s);
	assert_non_null(copy);
	return copy;
}

static void
path_in(const struct fixture *fx, const char *name, char *out, size_t outsz)
{
	snprintf(out, outsz, "%s/%s", fx->dir, name);
}

static mode_t
file_mode(const char *path)
{
	struct stat sb;

	assert_int_equal(stat(path, &sb), 0);
	return sb.st_mode & 07777;
}

/* The writer commits asynchronously: wait until it has caught up. */
static void
wait_drained(struct store *st)
{
	struct timespec ms = { 0, 1000000 };
	int i;

	for (i = 0; i < 20000 && store_backlog_bytes(st) > 0; i++)
		nanosleep(&ms, NULL);
	assert_int_equal(store_backlog_bytes(st), 0);
}

static struct store *
open_ok(const char *path)
{
	char err[256] = "";
	struct store *st = store_open(path, err, sizeof(err));

	if (st == NULL)
		fail_msg("store_open(%s): %s", path, err);
	return st;
}

static struct reader *
reader_ok(const char *path)
{
	char err[256] = "";
	struct reader *rd = reader_open(path, err, sizeof(err));

	if (rd == NULL)
		fail_msg("reader_open(%s): %s", path, err);
	return rd;
}

/* One integer from the database, through SQLite directly. */
static int64_t
db_int(const char *path, const char *sql)
{
	sqlite3 *db;
	sqlite3_stmt *stmt;
	int64_t v;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
	v = sqlite3_column_int64(stmt, 0);
	sqlite3_finalize(stmt);
	sqlite3_close(db);
	return v;
}

static void
db_exec(const char *path, const char *sql)
{
	sqlite3 *db;
	char *msg = NULL;

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("%s: %s", sql, msg);
	sqlite3_close(db);
}

static void
add_event(struct store *st, int64_t sid, int64_t seq, enum store_side side, enum store_kind kind, unsigned flags,
	  int64_t msg_id, const char *text, const void *raw, size_t len)
{
	struct store_event ev = {
		.session_id = sid,
		.seq = seq,
		.t_us = 1700000000000000 + seq,
		.side = side,
		.kind = kind,
		.flags = flags,
		.message_row = msg_id,
		.text = text,
		.raw = raw,
		.raw_len = len,
	};

	store_event_add(st, &ev);
}

static void
add_session(struct store *st, int64_t id, const char *upstream)
{
	store_session_open(st, &(struct store_session){
		.id = id,
		.started_us = 1700000000000000 + id,
		.listener = "127.0.0.1:2525",
		.client = "127.0.0.1:53422",
		.upstream = upstream,
		.mode = upstream != NULL ? "relay" : "sink",
	});
}

static int
ev_collect_cb(const struct reader_event *row, void *arg)
{
	struct ev_list *l = arg;
	struct ev_copy *c;

	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		assert_non_null(l->v);
	}
	c = &l->v[l->n++];
	memset(c, 0, sizeof(*c));
	c->seq = row->seq;
	c->t_us = row->t_us;
	c->message_id = row->message_row;
	c->side = row->side;
	c->kind = row->kind;
	c->flags = row->flags;
	c->text = dup_or_null(row->text);
	c->has_raw = row->raw != NULL;
	c->raw_len = row->raw_len;
	if (row->raw_len > 0) {
		c->raw = malloc(row->raw_len);
		assert_non_null(c->raw);
		memcpy(c->raw, row->raw, row->raw_len);
	}
	if (l->stop_after > 0 && l->n == (size_t)l->stop_after)
		return 7;
	return 0;
}

static void
ev_list_free(struct ev_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++) {
		free(l->v[i].text);
		free(l->v[i].raw);
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static int
sess_collect_cb(const struct reader_session *row, void *arg)
{
	struct sess_list *l = arg;
	struct reader_session *c;
	char **s;

	assert_true(l->n < 64);
	c = &l->v[l->n];
	s = l->strs[l->n];
	l->n++;
	*c = *row;
	c->listener = s[0] = dup_or_null(row->listener);
	c->client = s[1] = dup_or_null(row->client);
	c->upstream = s[2] = dup_or_null(row->upstream);
	c->upstream_addr = s[3] = dup_or_null(row->upstream_addr);
	c->mode = s[4] = dup_or_null(row->mode);
	c->client_tls = s[5] = dup_or_null(row->client_tls);
	c->upstream_tls = s[6] = dup_or_null(row->upstream_tls);
	c->outcome = s[7] = dup_or_null(row->outcome);
	c->detail = s[8] = dup_or_null(row->detail);
	s[9] = NULL;
	return 0;
}

static void
sess_list_free(struct sess_list *l)
{
	size_t i, k;

	for (i = 0; i < l->n; i++)
		for (k = 0; k < 10; k++)
			free(l->strs[i][k]);
	l->n = 0;
}

static int
msg_collect_cb(const struct reader_message *row, void *arg)
{
	struct msg_list *l = arg;
	struct msg_copy *c;
	size_t i;

	assert_true(l->n < 8);
	assert_true(row->nrcpts <= 8);
	c = &l->v[l->n++];
	memset(c, 0, sizeof(*c));
	c->id = row->id;
	c->session_id = row->session_id;
	c->started_us = row->started_us;
	c->ended_us = row->ended_us;
	c->size = row->size;
	c->idx = row->idx;
	c->reply_code = row->reply_code;
	c->complete = row->complete;
	c->mail_from = dup_or_null(row->mail_from);
	c->mail_params = dup_or_null(row->mail_params);
	c->transport = dup_or_null(row->transport);
	c->subject = dup_or_null(row->subject);
	c->from = dup_or_null(row->from);
	c->to = dup_or_null(row->to);
	c->message_id = dup_or_null(row->message_id_hdr);
	c->date = dup_or_null(row->date);
	c->reply = dup_or_null(row->reply);
	c->nrcpts = row->nrcpts;
	for (i = 0; i < row->nrcpts; i++) {
		c->rcpt_addr[i] = dup_or_null(row->rcpts[i].address);
		c->rcpt_params[i] = dup_or_null(row->rcpts[i].params);
		c->rcpt_reply[i] = dup_or_null(row->rcpts[i].reply);
		c->rcpt_code[i] = row->rcpts[i].reply_code;
	}
	return 0;
}

static void
msg_list_free(struct msg_list *l)
{
	struct msg_copy *c;
	size_t i, k;

	for (i = 0; i < l->n; i++) {
		c = &l->v[i];
		free(c->mail_from);
		free(c->mail_params);
		free(c->transport);
		free(c->subject);
		free(c->from);
		free(c->to);
		free(c->message_id);
		free(c->date);
		free(c->reply);
		for (k = 0; k < c->nrcpts; k++) {
			free(c->rcpt_addr[k]);
			free(c->rcpt_params[k]);
			free(c->rcpt_reply[k]);
		}
	}
	l->n = 0;
}

static int
buf_append_cb(const void *data, size_t len, void *arg)
{
	struct buf *b = arg;

	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	b->nchunks++;
	return 0;
}

/* xorshift32: reproducible bytes without touching rand()'s state. */
static void
fill_random(unsigned char *p, size_t len, uint32_t *seed)
{
	uint32_t x = *seed;
	size_t i;

	for (i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (unsigned char)x;
	}
	*seed = x;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the whole process (all threads), seconds. */
static double
cpu_s(void)
{
	struct rusage ru;

	assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* ------------------------------------------------------------------------
 * Opening, permissions, migrations.
 */

static void
test_open_creates_0600(void **state)
{
	struct fixture *fx = *state;
	char wal[160], shm[160];
	struct store *st;
	mode_t old;

	old = umask(022);
	st = open_ok(fx->db);
	umask(old);
	add_session(st, store_session_new_id(st), NULL);
	wait_drained(st);
	path_in(fx, "test.db-wal", wal, sizeof(wal));
	path_in(fx, "test.db-shm", shm, sizeof(shm));
	assert_int_equal(file_mode(fx->db), 0600);
	assert_int_equal(file_mode(wal), 0600);
	assert_int_equal(file_mode(shm), 0600);
	assert_int_equal(store_close(st), 0);
	/* A clean close folds the WAL back into the file. */
	assert_int_equal(file_mode(fx->db), 0600);
	assert_true(access(wal, F_OK) != 0);
}

static void
test_migration_sets_user_version(void **state)
{
	struct fixture *fx = *state;
	int newest = schema_migrations[schema_nmigrations - 1].version;

	assert_int_equal(store_close(open_ok(fx->db)), 0);
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), newest);
	assert_int_equal(db_int(fx->db, "PRAGMA application_id"), 0x53544150);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
					"('sessions', 'events', 'messages', 'recipients')"),
			 4);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name IN "
					"('events_session_seq', 'messages_session')"),
			 2);
	assert_int_equal(db_int(fx->db, "PRAGMA page_size"), 16384);
	/* WAL is a property of the file: it stays after close. */
	assert_int_equal(db_int(fx->db, "SELECT journal_mode = 'wal' FROM pragma_journal_mode"), 1);
	/* Opening again applies nothing twice. */
	assert_int_equal(store_close(open_ok(fx->db)), 0);
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), newest);
}

static void
test_existing_empty_file_initialised(void **state)
{
	struct fixture *fx = *state;
	int fd;

	fd = open(fx->db, O_CREAT | O_WRONLY, 0640);
	assert_true(fd >= 0);
	fchmod(fd, 0640);
	close(fd);
	assert_int_equal(store_close(open_ok(fx->db)), 0);
	assert_true(db_int(fx->db, "PRAGMA user_version") >= 1);
	/* The owner's choice of mode is kept. */
	assert_int_equal(file_mode(fx->db), 0640);
}

static void
test_newer_version_refused(void **state)
{
	struct fixture *fx = *state;
	char err[256] = "";
	struct store *st;
	struct reader *rd;

	assert_int_equal(store_close(open_ok(fx->db)), 0);
	db_exec(fx->db, "PRAGMA user_version = 999");
	st = store_open(fx->db, err, sizeof(err));
	assert_null(st);
	assert_non_null(strstr(err, "database schema version 999 is newer than this smtptap"));
	assert_non_null(strstr(err, "upgrade smtptap"));
	err[0] = '\0';
	rd = reader_open(fx->db, err, sizeof(err));
	assert_null(rd);
	assert_non_null(strstr(err, "newer than this smtptap"));
	/* Refusing did not touch it. */
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), 999);
}

static void
test_garbage_file_refused(void **state)
{
	struct fixture *fx = *state;
	static const char junk[] = "From: someone\r\n\r\nthis is an email, not a database\r\n"
				   "padding padding padding padding padding padding padding padding\r\n";
	char err[256] = "", back[sizeof(junk)];
	struct store *st;
	struct reader *rd;
	int fd;

	fd = open(fx->db, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, junk, sizeof(junk) - 1), (ssize_t)sizeof(junk) - 1);
	close(fd);
	st = store_open(fx->db, err, sizeof(err));
	assert_null(st);
	assert_non_null(strstr(err, "not an SQLite database"));
	err[0] = '\0';
	rd = reader_open(fx->db, err, sizeof(err));
	assert_null(rd);
	assert_non_null(strstr(err, "not an SQLite database"));
	/* Not a byte changed. */
	fd = open(fx->db, O_RDONLY);
	assert_int_equal(read(fd, back, sizeof(back)), (ssize_t)sizeof(junk) - 1);
	close(fd);
	assert_memory_equal(back, junk, sizeof(junk) - 1);
}

static void
test_foreign_sqlite_refused(void **state)
{
	struct fixture *fx = *state;
	char err[256] = "", other[160];
	struct reader *rd;

	/* Someone else's database, with and without a user_version. */
	db_exec(fx->db, "CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('x')");
	assert_null(store_open(fx->db, err, sizeof(err)));
	assert_non_null(strstr(err, "not an smtptap one"));
	db_exec(fx->db, "PRAGMA user_version = 1");
	err[0] = '\0';
	assert_null(store_open(fx->db, err, sizeof(err)));
	assert_non_null(strstr(err, "not an smtptap one"));
	err[0] = '\0';
	rd = reader_open(fx->db, err, sizeof(err));
	assert_null(rd);
	assert_non_null(strstr(err, "not an smtptap database"));
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sqlite_master"), 1);

	/* An empty file is not readable as a recording either. */
	path_in(fx, "empty.db", other, sizeof(other));
	close(open(other, O_CREAT | O_WRONLY, 0600));
	err[0] = '\0';
	assert_null(reader_open(other, err, sizeof(err)));
	assert_non_null(strstr(err, "not an smtptap database"));
}

static void
test_open_errors(void **state)
{
	struct fixture *fx = *state;
	char err[256] = "", path[200];

	path_in(fx, "no/such/dir/x.db", path, sizeof(path));
	assert_null(store_open(path, err, sizeof(err)));
	assert_non_null(strstr(err, "No such file or directory"));
	err[0] = '\0';
	assert_null(reader_open(path, err, sizeof(err)));
	assert_non_null(strstr(err, "No such file or directory"));
	err[0] = '\0';
	assert_null(store_open(fx->dir, err, sizeof(err)));
	assert_true(err[0] != '\0');
	/* The reader never creates anything. */
	path_in(fx, "absent.db", path, sizeof(path));
	assert_null(reader_open(path, err, sizeof(err)));
	assert_true(access(path, F_OK) != 0);
}

static void
test_second_writer_refused(void **state)
{
	struct fixture *fx = *state;
	char err[256] = "";
	struct reader *rd;
	struct store *st;

	st = open_ok(fx->db);
	add_session(st, store_session_new_id(st), NULL);
	assert_null(store_open(fx->db, err, sizeof(err)));
	assert_non_null(strstr(err, "another smtptap proxy is recording into it"));
	/* The refused open did not disturb the live session... */
	wait_drained(st);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions WHERE outcome IS NULL"), 1);
	/* ...and readers are welcome. */
	rd = reader_ok(fx->db);
	reader_close(rd);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(store_close(open_ok(fx->db)), 0);
}

/* ------------------------------------------------------------------------
 * Round trips.
 */

static void
test_reopen_keeps_data_and_ids(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct reader *rd;
	struct store *st;
	int64_t s1, s2, m1;

	st = open_ok(fx->db);
	s1 = store_session_new_id(st);
	s2 = store_session_new_id(st);
	m1 = store_message_new_id(st);
	assert_int_equal(s1, 1);
	assert_int_equal(s2, 2);
	assert_int_equal(m1, 1);
	add_session(st, s1, NULL);
	add_session(st, s2, "mx.example:25");
	add_event(st, s2, 1, STORE_SIDE_PROXY, STORE_KIND_CONNECT, 0, 0, "hello", NULL, 0);
	store_message_open(st, &(struct store_message){
		.id = m1, .session_id = s2, .idx = 1, .started_us = 5, .mail_from = "a@b", .transport = "data" });
	store_session_close(st, s1, 10, "quit", NULL);
	store_session_close(st, s2, 11, "client-closed", "peer reset");
	assert_int_equal(store_close(st), 0);

	st = open_ok(fx->db);
	assert_int_equal(store_session_new_id(st), 3);
	assert_int_equal(store_message_new_id(st), 2);
	add_session(st, 3, NULL);
	store_session_close(st, 3, 12, "quit", NULL);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(rd_sessions(rd, 0, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 3);
	assert_int_equal(sl.v[0].id, 1);
	assert_string_equal(sl.v[0].mode, "sink");
	assert_null(sl.v[0].upstream);
	assert_string_equal(sl.v[0].outcome, "quit");
	assert_null(sl.v[0].detail);
	assert_int_equal(sl.v[0].ended_us, 10);
	assert_int_equal(sl.v[1].id, 2);
	assert_string_equal(sl.v[1].upstream, "mx.example:25");
	assert_string_equal(sl.v[1].mode, "relay");
	assert_string_equal(sl.v[1].listener, "127.0.0.1:2525");
	assert_string_equal(sl.v[1].client, "127.0.0.1:53422");
	assert_string_equal(sl.v[1].outcome, "client-closed");
	assert_string_equal(sl.v[1].detail, "peer reset");
	assert_int_equal(sl.v[1].started_us, 1700000000000002);
	assert_int_equal(sl.v[1].nevents, 1);
	assert_int_equal(sl.v[1].nmessages, 1);
	assert_int_equal(sl.v[2].id, 3);
	sess_list_free(&sl);
	reader_close(rd);
}

static void
test_events_roundtrip_bytes(void **state)
{
	struct fixture *fx = *state;
	static const unsigned char nul_raw[] = { 'M', 'A', 'I', 'L', 0, ' ', 0xff, 0xfe, '\r', '\n', 0 };
	static const char latin1[] = "caf\xe9 \xff\x80 not utf-8";
	struct ev_list el = { 0 };
	struct reader *rd;
	struct store *st;

	st = open_ok(fx->db);
	add_session(st, 1, "up:25");
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, nul_raw, sizeof(nul_raw));
	add_event(st, 1, 2, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_INCOMPLETE, 0, latin1, "250 ok\r\n", 8);
	add_event(st, 1, 3, STORE_SIDE_PROXY, STORE_KIND_ACTION, STORE_F_INJECTED | STORE_F_TO_CLIENT, 0,
		  "a note", NULL, 0);
	add_event(st, 1, 4, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 42, NULL, "", 0);
	add_event(st, 1, 5, STORE_SIDE_CLIENT, STORE_KIND_AUTH, STORE_F_REDACTED, 0, NULL, "***\r\n", 5);
	add_event(st, 1, 6, STORE_SIDE_PROXY, STORE_KIND_TLS, 0, 0, "{\"version\":\"TLSv1.3\"}", NULL, 0);
	add_event(st, 1, 7, STORE_SIDE_UPSTREAM, STORE_KIND_CLOSE, STORE_F_DROPPED | STORE_F_ALTERED, 0, "eof",
		  NULL, 0);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 0);
	assert_int_equal(el.n, 7);
	assert_int_equal(el.v[0].seq, 1);
	assert_int_equal(el.v[0].t_us, 1700000000000001);
	assert_int_equal(el.v[0].side, STORE_SIDE_CLIENT);
	assert_int_equal(el.v[0].kind, STORE_KIND_COMMAND);
	assert_null(el.v[0].text);
	assert_int_equal(el.v[0].raw_len, sizeof(nul_raw));
	assert_memory_equal(el.v[0].raw, nul_raw, sizeof(nul_raw));
	assert_int_equal(el.v[0].message_id, 0);

	assert_int_equal(el.v[1].side, STORE_SIDE_UPSTREAM);
	assert_int_equal(el.v[1].kind, STORE_KIND_REPLY);
	assert_int_equal(el.v[1].flags, STORE_F_INCOMPLETE);
	assert_string_equal(el.v[1].text, latin1);
	assert_memory_equal(el.v[1].raw, "250 ok\r\n", 8);

	assert_int_equal(el.v[2].side, STORE_SIDE_PROXY);
	assert_int_equal(el.v[2].kind, STORE_KIND_ACTION);
	assert_int_equal(el.v[2].flags, STORE_F_INJECTED | STORE_F_TO_CLIENT);
	assert_false(el.v[2].has_raw);
	assert_string_equal(el.v[2].text, "a note");

	/* An empty raw is kept apart from a missing one. */
	assert_int_equal(el.v[3].kind, STORE_KIND_DATA);
	assert_int_equal(el.v[3].message_id, 42);
	assert_true(el.v[3].has_raw);
	assert_int_equal(el.v[3].raw_len, 0);

	assert_int_equal(el.v[4].kind, STORE_KIND_AUTH);
	assert_int_equal(el.v[4].flags, STORE_F_REDACTED);
	assert_int_equal(el.v[5].kind, STORE_KIND_TLS);
	assert_int_equal(el.v[6].kind, STORE_KIND_CLOSE);
	assert_int_equal(el.v[6].flags, STORE_F_DROPPED | STORE_F_ALTERED);
	ev_list_free(&el);

	/* The names are what the sqlite3 CLI shows. */
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE side = 'upstream' AND kind = 'reply'"), 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE message_row IS NULL"), 6);
	assert_int_equal(db_int(fx->db, "SELECT typeof(raw) = 'blob' FROM events WHERE seq = 1"), 1);
	reader_close(rd);
}

static void
test_message_data_1mib(void **state)
{
	struct fixture *fx = *state;
	const size_t total = 1024 * 1024;
	struct buf out = { 0 }, other = { 0 };
	struct reader *rd;
	struct store *st;
	unsigned char *msg;
	uint32_t seed = 12345, lcg = 7;
	size_t off, n, nchunks = 0;
	int64_t seq = 0;

	msg = malloc(total);
	assert_non_null(msg);
	fill_random(msg, total, &seed);
	msg[0] = 0; /* NUL bytes anywhere, including chunk edges */
	msg[total - 1] = 0;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_session(st, 2, NULL);
	add_event(st, 1, ++seq, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "DATA\r\n", 6);
	for (off = 0; off < total; off += n) {
		/* Uneven chunks, like reads off a socket, up to 64 KiB. */
		lcg = lcg * 1103515245u + 12345u;
		n = 1 + (size_t)((lcg >> 8) % 65536);
		if (n > total - off)
			n = total - off;
		add_event(st, 1, ++seq, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, msg + off, n);
		nchunks++;
		/* Other traffic in between must not leak into the message. */
		add_event(st, 2, seq, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 2, NULL, "xyz", 3);
		if (nchunks % 4 == 0)
			add_event(st, 1, ++seq, STORE_SIDE_PROXY, STORE_KIND_ACTION, 0, 1, "note", "n", 1);
	}
	assert_true(nchunks > 16);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, total);
	assert_int_equal(out.nchunks, nchunks);
	assert_memory_equal(out.p, msg, total);
	assert_int_equal(reader_message_content(rd, 2, READER_CONTENT_WIRE, buf_append_cb, &other, NULL, 0), 0);
	assert_int_equal(other.len, 3 * nchunks);
	/* An unknown message is not found, and gives nothing. */
	other.len = 0;
	assert_int_equal(reader_message_content(rd, 99, READER_CONTENT_WIRE, buf_append_cb, &other, NULL, 0),
			 READER_NOTFOUND);
	assert_int_equal(other.len, 0);
	reader_close(rd);
	free(out.p);
	free(other.p);
	free(msg);
}

static void
test_messages_with_recipients(void **state)
{
	struct fixture *fx = *state;
	struct store_rcpt rcpts[] = {
		{ .address = "alice@example.org", .reply_code = 250, .reply = "250 2.1.5 ok" },
		{ .address = "bob@example.org", .params = "NOTIFY=FAILURE ORCPT=rfc822;bob@example.org",
		  .reply_code = 550, .reply = "550-5.1.1 no such user\n550 5.1.1 really" },
		{ .address = "carol@ex\xe4mple.org" },
	};
	struct msg_list ml = { 0 };
	struct reader *rd;
	struct store *st;
	int64_t m1, m2;
	size_t i;

	st = open_ok(fx->db);
	add_session(st, 1, "up:587");
	m1 = store_message_new_id(st);
	m2 = store_message_new_id(st);
	store_transaction_open(st, &(struct store_transaction){
		.session_id = 1,
		.idx = 1,
		.started_us = 90,
		.mail_from = "sender@example.com",
		.mail_params = "SIZE=1234 BODY=8BITMIME",
	});
	/* Recipients come with their replies, in any order of arrival. */
	for (i = 3; i-- > 0;) {
		rcpts[i].session_id = 1;
		rcpts[i].transaction_idx = 1;
		rcpts[i].idx = (int)i + 1;
		store_rcpt_add(st, &rcpts[i]);
	}
	store_message_open(st, &(struct store_message){
		.id = m1,
		.session_id = 1,
		.transaction_idx = 1,
		.idx = 1,
		.started_us = 100,
		.mail_from = "sender@example.com",
		.mail_params = "SIZE=1234 BODY=8BITMIME",
		.transport = "data",
	});
	store_message_close(st, &(struct store_message_end){
		.id = m1,
		.ended_us = 200,
		.size = 1234,
		.complete = true,
		.subject = "H\xe9llo",
		.from = "Sender <sender@example.com>",
		.to = "alice@example.org",
		.message_id_hdr = "<abc@example.com>",
		.date = "Mon, 1 Jan 2024 00:00:00 +0000",
		.reply_code = 250,
		.reply = "250 2.0.0 queued as ABC",
	});
	/* The null sender, BDAT, no transaction, cut short, no reply. */
	store_message_open(st, &(struct store_message){
		.id = m2, .session_id = 1, .idx = 2, .started_us = 300, .mail_from = "", .transport = "bdat" });
	store_message_close(st, &(struct store_message_end){ .id = m2, .ended_us = 400, .size = 10 });
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_messages(rd, 1, msg_collect_cb, &ml, NULL, 0), 0);
	assert_int_equal(ml.n, 2);
	assert_int_equal(ml.v[0].id, m1);
	assert_int_equal(ml.v[0].session_id, 1);
	assert_int_equal(ml.v[0].idx, 1);
	assert_int_equal(ml.v[0].started_us, 100);
	assert_int_equal(ml.v[0].ended_us, 200);
	assert_int_equal(ml.v[0].size, 1234);
	assert_true(ml.v[0].complete);
	assert_string_equal(ml.v[0].mail_from, "sender@example.com");
	assert_string_equal(ml.v[0].mail_params, "SIZE=1234 BODY=8BITMIME");
	assert_string_equal(ml.v[0].transport, "data");
	assert_string_equal(ml.v[0].subject, "H\xe9llo");
	assert_string_equal(ml.v[0].from, "Sender <sender@example.com>");
	assert_string_equal(ml.v[0].to, "alice@example.org");
	assert_string_equal(ml.v[0].message_id, "<abc@example.com>");
	assert_string_equal(ml.v[0].date, "Mon, 1 Jan 2024 00:00:00 +0000");
	assert_int_equal(ml.v[0].reply_code, 250);
	assert_string_equal(ml.v[0].reply, "250 2.0.0 queued as ABC");
	assert_int_equal(ml.v[0].nrcpts, 3);
	assert_string_equal(ml.v[0].rcpt_addr[0], "alice@example.org");
	assert_null(ml.v[0].rcpt_params[0]);
	assert_int_equal(ml.v[0].rcpt_code[0], 250);
	assert_string_equal(ml.v[0].rcpt_reply[0], "250 2.1.5 ok");
	assert_string_equal(ml.v[0].rcpt_addr[1], "bob@example.org");
	assert_string_equal(ml.v[0].rcpt_params[1], "NOTIFY=FAILURE ORCPT=rfc822;bob@example.org");
	assert_int_equal(ml.v[0].rcpt_code[1], 550);
	assert_string_equal(ml.v[0].rcpt_reply[1], "550-5.1.1 no such user\n550 5.1.1 really");
	assert_string_equal(ml.v[0].rcpt_addr[2], "carol@ex\xe4mple.org");
	assert_int_equal(ml.v[0].rcpt_code[2], 0);
	assert_null(ml.v[0].rcpt_reply[2]);

	assert_int_equal(ml.v[1].id, m2);
	assert_int_equal(ml.v[1].idx, 2);
	assert_string_equal(ml.v[1].mail_from, "");
	assert_string_equal(ml.v[1].transport, "bdat");
	assert_false(ml.v[1].complete);
	assert_int_equal(ml.v[1].reply_code, 0);
	assert_null(ml.v[1].reply);
	assert_null(ml.v[1].subject);
	assert_int_equal(ml.v[1].nrcpts, 0);
	msg_list_free(&ml);

	/* Readable as plain SQL, with NULL for "no reply". */
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM recipients WHERE reply_code IS NULL"), 1);
	assert_int_equal(db_int(fx->db, "SELECT upstream_code IS NULL FROM messages WHERE idx = 2"), 1);
	/* Another session has none. */
	assert_int_equal(reader_messages(rd, 2, msg_collect_cb, &ml, NULL, 0), 0);
	assert_int_equal(ml.n, 0);
	reader_close(rd);
}

static void
test_session_tls_and_upstream_addr(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct reader *rd;
	struct store *st;

	st = open_ok(fx->db);
	add_session(st, 1, "mx.example:25");
	store_session_set_upstream_addr(st, 1, "[::1]:25");
	store_session_set_tls(st, 1, STORE_SIDE_CLIENT, "{\"mode\":\"starttls\"}");
	store_session_set_tls(st, 1, STORE_SIDE_UPSTREAM, "{\"mode\":\"implicit\"}");
	store_session_set_tls(st, 1, STORE_SIDE_PROXY, "{}"); /* no such leg: ignored */
	/* No outcome given: still recorded as closed, never as live. */
	store_session_close(st, 1, 99, NULL, NULL);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_session(rd, 1, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 1);
	assert_string_equal(sl.v[0].upstream_addr, "[::1]:25");
	assert_string_equal(sl.v[0].client_tls, "{\"mode\":\"starttls\"}");
	assert_string_equal(sl.v[0].upstream_tls, "{\"mode\":\"implicit\"}");
	assert_string_equal(sl.v[0].outcome, "closed");
	assert_int_equal(sl.v[0].ended_us, 99);
	sess_list_free(&sl);
	reader_close(rd);
}

/* ------------------------------------------------------------------------
 * Crashes, concurrency, volume.
 */

static void
test_interrupted_on_reopen(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct msg_list ml = { 0 };
	struct reader *rd;
	struct store *st;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_session(st, 2, NULL);
	add_event(st, 2, 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "EHLO x\r\n", 8);
	add_event(st, 2, 2, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, "Subject: x\r\n", 12);
	store_message_open(st, &(struct store_message){
		.id = 1, .session_id = 2, .idx = 1, .started_us = 1, .mail_from = "a@b", .transport = "data" });
	store_session_close(st, 1, 5, "quit", NULL);
	/* Session 2 is still live when this run "dies". */
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_session(rd, 2, sess_collect_cb, &sl, NULL, 0), 0);
	assert_null(sl.v[0].outcome);
	assert_int_equal(sl.v[0].ended_us, 0);
	sess_list_free(&sl);
	reader_close(rd);

	st = open_ok(fx->db);
	assert_int_equal(store_close(st), 0);
	rd = reader_ok(fx->db);
	assert_int_equal(rd_sessions(rd, 0, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 2);
	assert_string_equal(sl.v[0].outcome, "quit");
	assert_int_equal(sl.v[0].ended_us, 5);
	assert_string_equal(sl.v[1].outcome, "interrupted");
	assert_non_null(sl.v[1].detail);
	/* Ended at its last recorded event. */
	assert_int_equal(sl.v[1].ended_us, 1700000000000002);
	sess_list_free(&sl);
	assert_int_equal(reader_messages(rd, 2, msg_collect_cb, &ml, NULL, 0), 0);
	assert_int_equal(ml.n, 1);
	assert_false(ml.v[0].complete);
	assert_int_equal(db_int(fx->db, "SELECT complete FROM messages WHERE id = 1"), 0);
	msg_list_free(&ml);
	reader_close(rd);
}

static void
test_reader_while_writer_open(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct ev_list el = { 0 };
	struct reader *rd;
	struct store *st;
	int64_t i;

	st = open_ok(fx->db);
	/* A reader on a fresh recording that has nothing in it yet. */
	rd = reader_ok(fx->db);
	assert_int_equal(rd_sessions(rd, 10, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 0);

	add_session(st, 1, NULL);
	for (i = 1; i <= 50; i++)
		add_event(st, 1, i, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "NOOP\r\n", 6);
	wait_drained(st);
	assert_int_equal(rd_sessions(rd, 10, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 1);
	assert_int_equal(sl.v[0].nevents, 50);
	assert_null(sl.v[0].outcome);
	sess_list_free(&sl);

	/* The writer keeps going while a reader has the file open... */
	for (i = 51; i <= 100; i++)
		add_event(st, 1, i, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "NOOP\r\n", 6);
	store_session_close(st, 1, 7, "quit", NULL);
	wait_drained(st);
	/* ...and each walk sees everything committed before it. */
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 0);
	assert_int_equal(el.n, 100);
	for (i = 0; i < 100; i++)
		assert_int_equal(el.v[i].seq, i + 1);
	ev_list_free(&el);

	/* A second reader opened while writing, closed after the writer. */
	assert_int_equal(store_close(st), 0);
	assert_int_equal(reader_session(rd, 1, sess_collect_cb, &sl, NULL, 0), 0);
	assert_string_equal(sl.v[0].outcome, "quit");
	sess_list_free(&sl);
	reader_close(rd);
}

/*
 * Message data lives in the content segments, not in the rows: each data
 * event's row has raw NULL and a reference, the segment holds exactly the
 * bytes in order, the directory is 0700 and the segment 0600, and readers
 * get the bytes back through both walks.  Other events stay inline.
 */
static void
test_content_in_segments(void **state)
{
	struct fixture *fx = *state;
	struct ev_list el = { 0 };
	struct buf out = { 0 };
	struct reader *rd;
	struct store *st;
	char dir[256], seg[300];
	unsigned char big[100000];
	uint32_t seed = 5;

	fill_random(big, sizeof(big), &seed);
	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "DATA\r\n", 6);
	add_event(st, 1, 2, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 7, NULL, "Subject: a\r\n\r\n", 15);
	add_event(st, 1, 3, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 7, NULL, big, sizeof(big));
	add_event(st, 1, 4, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 7, NULL, "", 0);
	add_event(st, 1, 5, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, 0, 0, NULL, "250 ok\r\n", 8);
	assert_int_equal(store_close(st), 0);

	assert_int_equal(db_int(fx->db, "PRAGMA user_version"),
			 schema_migrations[schema_nmigrations - 1].version);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE content_segment IS NOT NULL AND raw IS NULL"),
			 2);
	assert_int_equal(db_int(fx->db, "SELECT content_offset + content_length FROM events WHERE seq = 3"),
			 15 + (int64_t)sizeof(big));
	/* The empty chunk and the non-data events keep their bytes inline. */
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE raw IS NOT NULL"), 3);
	assert_int_equal(content_dir_path(fx->db, dir, sizeof(dir)), 0);
	snprintf(seg, sizeof(seg), "%s/0000000001.seg", dir);
	assert_int_equal(file_mode(dir), 0700);
	assert_int_equal(file_mode(seg), 0600);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, 7, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, 15 + sizeof(big));
	assert_memory_equal(out.p, "Subject: a\r\n\r\n", 15);
	assert_memory_equal(out.p + 15, big, sizeof(big));
	/* Handed out in pieces of at most CONTENT_READ_CHUNK. */
	assert_int_equal(out.nchunks, 1 + (sizeof(big) + CONTENT_READ_CHUNK - 1) / CONTENT_READ_CHUNK);
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 0);
	assert_int_equal(el.n, 5);
	assert_int_equal(el.v[2].raw_len, sizeof(big));
	assert_memory_equal(el.v[2].raw, big, sizeof(big));
	assert_true(el.v[3].has_raw);
	assert_int_equal(el.v[3].raw_len, 0);
	assert_int_equal(el.v[4].raw_len, 8);
	reader_close(rd);
	ev_list_free(&el);
	free(out.p);
}

/* A new run appends to the newest segment, after what is there (even
 * bytes no row refers to, as a crash leaves them). */
static void
test_content_reopen_appends(void **state)
{
	struct fixture *fx = *state;
	struct buf out = { 0 };
	struct reader *rd;
	struct store *st;
	char dir[256], seg[300];
	int fd;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, "first", 5);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(content_dir_path(fx->db, dir, sizeof(dir)), 0);
	snprintf(seg, sizeof(seg), "%s/0000000001.seg", dir);
	/* Orphan bytes, as from a transaction a SIGKILL cut. */
	fd = open(seg, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "orphan", 6), 6);
	close(fd);

	st = open_ok(fx->db);
	add_session(st, 2, NULL);
	add_event(st, 2, 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 2, NULL, "second", 6);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(db_int(fx->db, "SELECT content_offset FROM events WHERE message_row = 2"), 11);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, 5);
	assert_memory_equal(out.p, "first", 5);
	out.len = 0;
	assert_int_equal(reader_message_content(rd, 2, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, 6);
	assert_memory_equal(out.p, "second", 6);
	reader_close(rd);
	free(out.p);
}

/* A database copied without its content directory: the reader says which
 * file is missing and why, rather than returning an empty message. */
static void
test_content_missing_reported(void **state)
{
	struct fixture *fx = *state;
	struct buf out = { 0 };
	struct reader *rd;
	struct store *st;
	char dir[256], seg[300], err[512] = "";

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, "bytes", 5);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(content_dir_path(fx->db, dir, sizeof(dir)), 0);
	snprintf(seg, sizeof(seg), "%s/0000000001.seg", dir);
	assert_int_equal(unlink(seg), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, buf_append_cb, &out, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "0000000001.seg"));
	assert_non_null(strstr(err, "-content"));
	err[0] = '\0';
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, buf_events_cb, NULL, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "0000000001.seg"));
	reader_close(rd);

	/* A segment cut short is reported too. */
	assert_int_equal(close(open(seg, O_WRONLY | O_CREAT, 0600)), 0);
	rd = reader_ok(fx->db);
	err[0] = '\0';
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, buf_append_cb, &out, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "shorter than the database says"));
	reader_close(rd);
	free(out.p);
}

static int
buf_events_cb(const struct reader_event *row, void *arg)
{
	(void)row;
	(void)arg;
	return 0;
}

/* prune's half: segments no event refers to go, except the newest (a
 * proxy may be appending to it); referenced ones stay. */
static void
test_content_sweep(void **state)
{
	struct fixture *fx = *state;
	struct store *st;
	char dir[256], path[300], err[256] = "";
	uint64_t freed = 0;
	sqlite3 *db;
	int fd;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, "kept bytes", 10);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(content_dir_path(fx->db, dir, sizeof(dir)), 0);
	/* Segments 2 (unreferenced, 4 bytes) and 3 (the newest, unreferenced). */
	snprintf(path, sizeof(path), "%s/0000000002.seg", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	assert_int_equal(write(fd, "junk", 4), 4);
	close(fd);
	snprintf(path, sizeof(path), "%s/0000000003.seg", dir);
	assert_int_equal(close(open(path, O_WRONLY | O_CREAT, 0600)), 0);
	/* Not a segment: left alone. */
	snprintf(path, sizeof(path), "%s/notes.txt", dir);
	assert_int_equal(close(open(path, O_WRONLY | O_CREAT, 0600)), 0);

	assert_int_equal(sqlite3_open(fx->db, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(content_sweep(db, fx->db, &freed, err, sizeof(err)), 1);
	assert_int_equal(freed, 4);
	/* The writer recorded which segments the session's content is in. */
	assert_int_equal(db_int(fx->db, "SELECT content_seg_first FROM sessions WHERE id = 1"), 1);
	assert_int_equal(db_int(fx->db, "SELECT content_seg_last FROM sessions WHERE id = 1"), 1);
	/* The session goes (prune), and with it segment 1's last reference. */
	assert_int_equal(sqlite3_exec(db, "DELETE FROM events WHERE session_id = 1; DELETE FROM sessions WHERE id = 1",
				      NULL, NULL, NULL),
			 SQLITE_OK);
	assert_int_equal(content_sweep(db, fx->db, &freed, err, sizeof(err)), 1);
	assert_int_equal(freed, 10);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
	snprintf(path, sizeof(path), "%s/0000000001.seg", dir);
	assert_int_equal(access(path, F_OK), -1);
	snprintf(path, sizeof(path), "%s/0000000003.seg", dir);
	assert_int_equal(access(path, F_OK), 0);
	snprintf(path, sizeof(path), "%s/notes.txt", dir);
	assert_int_equal(access(path, F_OK), 0);

	/* The proxy goes on appending to the newest. */
	st = open_ok(fx->db);
	add_session(st, 2, NULL);
	add_event(st, 2, 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 2, NULL, "new", 3);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(db_int(fx->db, "SELECT content_segment FROM events WHERE message_row = 2"), 3);
}

/*
 * The writer folds records of one batch together (a message's start and
 * end into one INSERT, a session's upstream address and end into its
 * summary UPDATE): rows come out the same whether a batch boundary falls
 * between them or not.
 */
static void
test_rows_across_batches(void **state)
{
	struct fixture *fx = *state;
	struct store *st;
	int64_t m1, m2, m3;

	st = open_ok(fx->db);
	add_session(st, 1, "mx.example:25");
	add_session(st, 2, "mx.example:25");
	m1 = store_message_new_id(st);
	m2 = store_message_new_id(st);
	m3 = store_message_new_id(st);
	/* m1: opened and ended in one batch */
	store_message_open(st, &(struct store_message){
		.id = m1, .session_id = 1, .idx = 1, .started_us = 10, .mail_from = "a@example.com", .transport = "data" });
	store_message_close(st, &(struct store_message_end){
		.id = m1, .ended_us = 20, .size = 5, .complete = true, .subject = "one", .reply_code = 250, .reply = "250 ok" });
	/* m2: opened in this batch, ended in the next; m3: never ended */
	store_message_open(st, &(struct store_message){
		.id = m2, .session_id = 1, .idx = 2, .started_us = 30, .mail_from = "b@example.com", .transport = "bdat" });
	store_message_open(st, &(struct store_message){
		.id = m3, .session_id = 2, .idx = 1, .started_us = 35, .mail_from = "c@example.com", .transport = "data" });
	store_session_set_upstream_addr(st, 1, "192.0.2.1:25");
	wait_drained(st);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM messages"), 3);
	assert_int_equal(db_int(fx->db, "SELECT complete IS NULL AND ended_us IS NULL FROM messages WHERE id = 2"), 1);
	store_message_close(st, &(struct store_message_end){
		.id = m2, .ended_us = 40, .size = 7, .complete = true, .subject = "two", .reply_code = 250, .reply = "250 ok" });
	store_session_close(st, 1, 50, "quit", NULL);
	store_session_set_upstream_addr(st, 2, "192.0.2.2:25");
	store_session_close(st, 2, 60, "client-closed", "gone");
	assert_int_equal(store_close(st), 0);

	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM messages WHERE id = 1 AND started_us = 10 AND ended_us = 20 "
					"AND size = 5 AND complete = 1 AND subject = 'one' AND mail_from = 'a@example.com' "
					"AND upstream_code = 250"),
			 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM messages WHERE id = 2 AND started_us = 30 AND ended_us = 40 "
					"AND size = 7 AND complete = 1 AND subject = 'two' AND transport = 'bdat'"),
			 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM messages WHERE id = 3 AND complete IS NULL"), 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions WHERE id = 1 AND upstream_addr = '192.0.2.1:25' "
					"AND ended_us = 50 AND outcome = 'quit' AND detail IS NULL AND nmessages = 2"),
			 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions WHERE id = 2 AND upstream_addr = '192.0.2.2:25' "
					"AND ended_us = 60 AND outcome = 'client-closed' AND detail = 'gone'"),
			 1);
}

/*
 * Segments are kept while any session's range covers them: overlapping
 * ranges, gaps between them, and ranges that end in order of their start
 * or not.  Segment 7 is the newest and never deleted.
 */
static void
test_content_sweep_ranges(void **state)
{
	struct fixture *fx = *state;
	char dir[256], path[300], err[256] = "";
	uint64_t freed = 0;
	sqlite3 *db;
	int i;

	assert_int_equal(store_close(open_ok(fx->db)), 0); /* the schema */
	assert_int_equal(content_dir_path(fx->db, dir, sizeof(dir)), 0);
	for (i = 1; i <= 7; i++) {
		snprintf(path, sizeof(path), "%s/%010d.seg", dir, i);
		assert_int_equal(close(open(path, O_WRONLY | O_CREAT, 0600)), 0);
	}
	/* 1: [1,4]; 2: [2,2]; 3: [6,6]; 4: no content. */
	db_exec(fx->db, "INSERT INTO sessions (id, started_us, mode, content_seg_first, content_seg_last) VALUES "
			"(1, 1, 'proxy', 1, 4), (2, 2, 'proxy', 2, 2), (3, 3, 'proxy', 6, 6), (4, 4, 'proxy', NULL, NULL)");
	assert_int_equal(sqlite3_open(fx->db, &db), SQLITE_OK);
	assert_int_equal(content_sweep(db, fx->db, &freed, err, sizeof(err)), 1); /* 5 */
	assert_int_equal(sqlite3_exec(db, "DELETE FROM sessions WHERE id = 1", NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(content_sweep(db, fx->db, &freed, err, sizeof(err)), 3); /* 1, 3, 4 */
	for (i = 1; i <= 7; i++) {
		snprintf(path, sizeof(path), "%s/%010d.seg", dir, i);
		assert_int_equal(access(path, F_OK) == 0, i == 2 || i == 6 || i == 7);
	}
	assert_int_equal(sqlite3_exec(db, "DELETE FROM sessions", NULL, NULL, NULL), SQLITE_OK);
	assert_int_equal(content_sweep(db, fx->db, &freed, err, sizeof(err)), 2); /* 2, 6 */
	sqlite3_close(db);
	snprintf(path, sizeof(path), "%s/%010d.seg", dir, 7);
	assert_int_equal(access(path, F_OK), 0);
}

/*
 * Migration 006 on a schema-5 file: each session's segment range comes from
 * its events, and the per-event index goes.
 */
static void
test_content_ranges_migration(void **state)
{
	struct fixture *fx = *state;

	assert_int_equal(store_close(open_ok(fx->db)), 0);
	/* Back to schema 5 as 005 left it. */
	db_exec(fx->db, "DROP INDEX sessions_content;"
			"ALTER TABLE sessions DROP COLUMN content_seg_first;"
			"ALTER TABLE sessions DROP COLUMN content_seg_last;"
			"CREATE INDEX events_content ON events (content_segment) WHERE content_segment IS NOT NULL;"
			"ALTER TABLE messages DROP COLUMN data_seq_first;"
			"ALTER TABLE messages DROP COLUMN data_seq_last;"
			"CREATE INDEX events_message ON events (message_row, seq) WHERE message_row IS NOT NULL;"
			"PRAGMA user_version = 5;"
			"INSERT INTO sessions (id, started_us, mode, outcome) VALUES (1, 1, 'proxy', 'quit'),"
			" (2, 2, 'proxy', 'quit');"
			"INSERT INTO messages (id, session_id, idx, started_us) VALUES (7, 1, 1, 1), (8, 2, 1, 3);"
			"INSERT INTO events (session_id, seq, t_us, side, kind, message_row, content_segment, content_offset,"
			" content_length) VALUES (1, 1, 1, 'client', 'command', NULL, NULL, NULL, NULL),"
			" (1, 2, 1, 'client', 'data', 7, 2, 0, 5), (1, 3, 2, 'client', 'data', 7, 3, 0, 5),"
			" (2, 1, 3, 'client', 'command', NULL, NULL, NULL, NULL)");
	assert_int_equal(store_close(open_ok(fx->db)), 0);
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), schema_migrations[schema_nmigrations - 1].version);
	assert_int_equal(db_int(fx->db, "SELECT content_seg_first FROM sessions WHERE id = 1"), 2);
	assert_int_equal(db_int(fx->db, "SELECT content_seg_last FROM sessions WHERE id = 1"), 3);
	assert_int_equal(db_int(fx->db, "SELECT content_seg_first IS NULL FROM sessions WHERE id = 2"), 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sqlite_schema WHERE name = 'events_content'"), 0);
	/* 007: each message's data seq range from its events; none: empty */
	assert_int_equal(db_int(fx->db, "SELECT data_seq_first FROM messages WHERE id = 7"), 2);
	assert_int_equal(db_int(fx->db, "SELECT data_seq_last FROM messages WHERE id = 7"), 3);
	assert_int_equal(db_int(fx->db, "SELECT data_seq_first > data_seq_last FROM messages WHERE id = 8"), 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sqlite_schema WHERE name = 'events_message'"), 0);
}

/*
 * A database written before content segments (schema 1: data in raw) is
 * migrated in place: its old messages read back as they were, new ones go
 * to segments, and both sit side by side.
 */
static void
test_content_upgrade_from_v1(void **state)
{
	struct fixture *fx = *state;
	struct buf out = { 0 };
	struct reader *rd;
	struct store *st;
	char sql[256];

	db_exec(fx->db, schema_migrations[0].sql);
	snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", schema_migrations[0].version);
	db_exec(fx->db, sql);
	db_exec(fx->db, "INSERT INTO sessions (id, started_us, mode, outcome) VALUES (1, 1, 'sink', 'quit');"
			"INSERT INTO messages (id, session_id, idx, started_us) VALUES (1, 1, 1, 1);"
			"INSERT INTO events (session_id, seq, t_us, side, kind, message_id, raw) VALUES "
			"(1, 1, 1, 'client', 'data', 1, X'6F6C64'), (1, 2, 2, 'client', 'data', 1, X'21');");

	/* An old database reads as it is, before any proxy migrated it. */
	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.p, "old!", 4);
	reader_close(rd);

	st = open_ok(fx->db);
	add_session(st, 2, NULL);
	add_event(st, 2, 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 2, NULL, "new", 3);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"),
			 schema_migrations[schema_nmigrations - 1].version);

	rd = reader_ok(fx->db);
	out.len = 0;
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.p, "old!", 4);
	out.len = 0;
	assert_int_equal(reader_message_content(rd, 2, READER_CONTENT_WIRE, buf_append_cb, &out, NULL, 0), 0);
	assert_int_equal(out.len, 3);
	assert_memory_equal(out.p, "new", 3);
	reader_close(rd);
	free(out.p);
}

/*
 * Past CONTENT_SEGMENT_MAX the writer starts the next segment: no event is
 * split across two, the first stays within the limit, and a message whose
 * events lie in both reads back whole and in order.
 */
static void
test_content_segment_roll(void **state)
{
	struct fixture *fx = *state;
	const size_t ev_len = 256 * 1024, nev = CONTENT_SEGMENT_MAX / (256 * 1024) + 3;
	struct byte_sum want = { 0, 0 }, got = { 0, 0 };
	struct reader *rd;
	struct store *st;
	unsigned char *chunk;
	char dir[256], seg[300];
	struct stat sb;
	uint32_t seed = 77;
	size_t i, k;

	chunk = malloc(ev_len);
	assert_non_null(chunk);
	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	for (i = 0; i < nev; i++) {
		fill_random(chunk, ev_len, &seed);
		for (k = 0; k < ev_len; k++)
			want.sum = want.sum * 31 + chunk[k];
		want.n += (uint32_t)ev_len;
		add_event(st, 1, (int64_t)i + 1, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, chunk, ev_len);
		if (store_backlog_bytes(st) > STORE_BACKLOG_HIGH)
			wait_drained(st);
	}
	assert_int_equal(store_close(st), 0);

	assert_int_equal(db_int(fx->db, "SELECT count(DISTINCT content_segment) FROM events"), 2);
	assert_int_equal(db_int(fx->db, "SELECT max(content_offset + content_length) FROM events WHERE content_segment = 1") <=
			     (int64_t)CONTENT_SEGMENT_MAX,
			 1);
	assert_int_equal(db_int(fx->db, "SELECT min(content_offset) FROM events WHERE content_segment = 2"), 0);
	assert_int_equal(content_dir_path(fx->db, dir, sizeof(dir)), 0);
	snprintf(seg, sizeof(seg), "%s/0000000001.seg", dir);
	assert_int_equal(stat(seg, &sb), 0);
	assert_true((uint64_t)sb.st_size <= CONTENT_SEGMENT_MAX);

	/* Streamed back in order, a piece at a time. */
	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, 1, READER_CONTENT_WIRE, sum_chunk_cb, &got, NULL, 0), 0);
	reader_close(rd);
	assert_int_equal(got.n, want.n);
	assert_int_equal(got.sum, want.sum);
	free(chunk);
}

static int
sum_chunk_cb(const void *data, size_t len, void *arg)
{
	struct byte_sum *s = arg;
	const unsigned char *p = data;
	size_t k;

	assert_true(len <= CONTENT_READ_CHUNK);
	for (k = 0; k < len; k++)
		s->sum = s->sum * 31 + p[k];
	s->n += (uint32_t)len;
	return 0;
}

static void
test_backlog_returns_to_zero(void **state)
{
	struct fixture *fx = *state;
	static unsigned char chunk[65536];
	struct store *st;
	size_t peak = 0, b;
	int64_t i;

	st = open_ok(fx->db);
	assert_int_equal(store_backlog_bytes(st), 0);
	add_session(st, 1, NULL);
	for (i = 1; i <= 256; i++) {
		add_event(st, 1, i, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, chunk, sizeof(chunk));
		b = store_backlog_bytes(st);
		if (b > peak)
			peak = b;
	}
	/* It counts at least the data of what is queued, never more than
	 * everything sent plus small per-record overhead. */
	assert_true(peak >= sizeof(chunk));
	assert_true(peak <= 256 * (sizeof(chunk) + 512));
	wait_drained(st);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(db_int(fx->db, "SELECT sum(coalesce(length(raw), content_length)) FROM events"), 256 * 65536);
}

/* 50 sessions of 2000 events; of 200 under valgrind (10k events, the same
 * paths, 50 s less: see under_valgrind.h). */
static void
test_100k_events(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct ev_list el = { 0 };
	struct reader *rd;
	struct store *st;
	char line[64];
	int64_t sid, seq, total = 0, nseq = TEST_UNDER_VALGRIND() ? 200 : 2000;
	size_t i;
	int n;

	st = open_ok(fx->db);
	for (sid = 1; sid <= 50; sid++)
		add_session(st, sid, NULL);
	/* Interleaved across sessions, as the event loop would. */
	for (seq = 1; seq <= nseq; seq++) {
		for (sid = 1; sid <= 50; sid++) {
			n = snprintf(line, sizeof(line), "RCPT TO:<u%" PRId64 "-%" PRId64 "@example.org>\r\n", sid,
				     seq);
			add_event(st, sid, seq, seq % 2 ? STORE_SIDE_CLIENT : STORE_SIDE_UPSTREAM,
				  seq % 2 ? STORE_KIND_COMMAND : STORE_KIND_REPLY, 0, 0, NULL, line, (size_t)n);
		}
	}
	for (sid = 1; sid <= 50; sid++)
		store_session_close(st, sid, 1, "quit", NULL);
	assert_int_equal(store_close(st), 0);

	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events"), 50 * nseq);
	rd = reader_ok(fx->db);
	assert_int_equal(rd_sessions(rd, 0, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 50);
	for (i = 0; i < sl.n; i++) {
		assert_int_equal(sl.v[i].nevents, nseq);
		total += sl.v[i].nevents;
	}
	assert_int_equal(total, 50 * nseq);
	sess_list_free(&sl);
	assert_int_equal(reader_events(rd, 37, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 0);
	assert_int_equal(el.n, (size_t)nseq);
	for (i = 0; i < el.n; i++) {
		n = snprintf(line, sizeof(line), "RCPT TO:<u37-%zu@example.org>\r\n", i + 1);
		assert_int_equal(el.v[i].seq, (int64_t)i + 1);
		assert_int_equal(el.v[i].raw_len, (size_t)n);
		assert_memory_equal(el.v[i].raw, line, (size_t)n);
	}
	ev_list_free(&el);
	reader_close(rd);
}

static void
test_sessions_limit(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct reader *rd;
	struct store *st;
	int64_t i;

	st = open_ok(fx->db);
	for (i = 1; i <= 10; i++) {
		add_session(st, store_session_new_id(st), NULL);
		store_session_close(st, i, i, "quit", NULL);
	}
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	/* The newest three, oldest first. */
	assert_int_equal(rd_sessions(rd, 3, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 3);
	assert_int_equal(sl.v[0].id, 8);
	assert_int_equal(sl.v[1].id, 9);
	assert_int_equal(sl.v[2].id, 10);
	sess_list_free(&sl);
	assert_int_equal(rd_sessions(rd, 0, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 10);
	for (i = 0; i < 10; i++)
		assert_int_equal(sl.v[i].id, i + 1);
	sess_list_free(&sl);
	assert_int_equal(rd_sessions(rd, -1, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 10);
	sess_list_free(&sl);
	assert_int_equal(rd_sessions(rd, 1000, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 10);
	sess_list_free(&sl);
	reader_close(rd);
}

static void
test_session_not_found_and_stop(void **state)
{
	struct fixture *fx = *state;
	struct sess_list sl = { 0 };
	struct ev_list el = { .stop_after = 3 };
	struct reader *rd;
	struct store *st;
	int64_t i;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	for (i = 1; i <= 10; i++)
		add_event(st, 1, i, STORE_SIDE_PROXY, STORE_KIND_ACTION, 0, 0, "x", NULL, 0);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_session(rd, 2, sess_collect_cb, &sl, NULL, 0), READER_NOTFOUND);
	assert_int_equal(sl.n, 0);
	assert_int_equal(reader_session(rd, 1, sess_collect_cb, &sl, NULL, 0), 0);
	assert_int_equal(sl.n, 1);
	sess_list_free(&sl);
	/* A callback's non-zero value stops the walk and is returned. */
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 7);
	assert_int_equal(el.n, 3);
	ev_list_free(&el);
	/* Events of a missing session: none, not an error. */
	assert_int_equal(reader_events(rd, 99, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 0);
	assert_int_equal(el.n, 0);
	reader_close(rd);
}

static void
test_write_errors_counted(void **state)
{
	struct fixture *fx = *state;
	struct store *st;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "A\r\n", 3);
	/* The same (session, seq) twice and the same session id twice are
	 * refused by the schema: counted, and the rest still written. */
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "B\r\n", 3);
	add_session(st, 1, NULL);
	add_event(st, 1, 2, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "C\r\n", 3);
	store_session_close(st, 1, 3, "quit", NULL);
	assert_int_equal(store_close(st), -1);

	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events"), 2);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE raw = CAST('C' || char(13, 10) AS BLOB)"),
			 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions WHERE outcome = 'quit'"), 1);
}

/*
 * A full disk, simulated with RLIMIT_FSIZE: batches fail, are counted and
 * dropped (the backlog still drains, so memory stays bounded), and what
 * was committed before survives in a sound file.
 */
static void
test_disk_full_counted(void **state)
{
	struct fixture *fx = *state;
	static unsigned char chunk[65536];
	struct rlimit old, lim;
	struct store *st;
	void (*oldsig)(int);
	int64_t i;
	int rc;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	for (i = 1; i <= 10; i++)
		add_event(st, 1, i, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "NOOP\r\n", 6);
	wait_drained(st);

	oldsig = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 2 * 1024 * 1024;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	for (i = 11; i <= 200; i++)
		add_event(st, 1, i, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1, NULL, chunk, sizeof(chunk));
	wait_drained(st);
	rc = store_close(st);
	setrlimit(RLIMIT_FSIZE, &old);
	signal(SIGXFSZ, oldsig);

	assert_int_equal(rc, -1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE seq <= 10"), 10);
	assert_true(db_int(fx->db, "SELECT count(*) FROM events") < 200);
	assert_int_equal(db_int(fx->db, "SELECT integrity_check = 'ok' FROM pragma_integrity_check"), 1);
	/* And the store works again once there is room. */
	st = open_ok(fx->db);
	add_event(st, 1, 1000, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "QUIT\r\n", 6);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE seq = 1000"), 1);
}

/* ------------------------------------------------------------------------
 * Benchmark: STORE_BENCH=1 build/tests/test_store
 */

static void
test_bench_writer(void **state)
{
	struct fixture *fx = *state;
	const int64_t nsessions = 100, nsmall = 500000;
	const size_t chunk = 256 * 1024, data_total = (size_t)300 * 1024 * 1024;
	struct timespec ms = { 0, 1000000 };
	unsigned char *buf;
	struct store *st;
	char text[256];
	double t0, t1, t2;
	int64_t i, seq[100] = { 0 };
	size_t off;
	uint32_t seed = 99;
	int n;

	buf = malloc(chunk);
	assert_non_null(buf);
	fill_random(buf, chunk, &seed);

	/* Small records: ~200-byte commands and replies across sessions. */
	st = open_ok(fx->db);
	for (i = 0; i < nsessions; i++)
		add_session(st, i + 1, "mx.example:25");
	t0 = now_s();
	for (i = 0; i < nsmall; i++) {
		int64_t sid = i % nsessions;

		n = snprintf(text, sizeof(text),
			     "250-mx.example.org Hello client.example.org [192.0.2.%" PRId64 "], pleased to meet you;"
			     " this line pads the record out to a realistic reply size of about two hundred"
			     " bytes %" PRId64 "\r\n",
			     sid, i);
		add_event(st, sid + 1, ++seq[sid], STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, 0, 0, NULL, text,
			  (size_t)n);
	}
	t1 = now_s();
	assert_int_equal(store_close(st), 0);
	t2 = now_s();
	print_message("bench: %" PRId64 " small records: queued in %.3f s (%.0f/s on the event loop), "
		      "written in %.3f s (%.0f records/s)\n",
		      nsmall, t1 - t0, (double)nsmall / (t1 - t0), t2 - t0, (double)nsmall / (t2 - t0));

	/* Message data, paced by the backlog as sessions are: in events of
	 * 1 KiB (a small message), 4 KiB (one per read, as recorded before
	 * issue 7) and of 256 KiB
	 * (SESSION_DATA_EVENT_MAX, as sessions record it now).  CPU is the
	 * whole process's: the writer thread, plus this thread queueing. */
	for (n = 0; n < 3; n++) {
		size_t ev_len = n == 0 ? 1024 : n == 1 ? 4096 : chunk;
		size_t total = n == 0 ? data_total / 4 : data_total;
		double c0, c1;

		char db[160];

		/* A fresh file each: no checkpoint of an earlier part counted. */
		snprintf(db, sizeof(db), "%s.data%d", fx->db, n);
		st = open_ok(db);
		add_session(st, 1000 + n, NULL);
		t0 = now_s();
		c0 = cpu_s();
		for (off = 0, i = 1; off < total; off += ev_len, i++) {
			add_event(st, 1000 + n, i, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, 1 + n, NULL, buf, ev_len);
			if (store_backlog_bytes(st) > STORE_BACKLOG_HIGH) {
				while (store_backlog_bytes(st) > STORE_BACKLOG_LOW)
					nanosleep(&ms, NULL);
			}
		}
		assert_int_equal(store_close(st), 0);
		t1 = now_s();
		c1 = cpu_s();
		print_message("bench: %zu MiB of message data in %zu KiB events: %.3f s, %.0f MB/s, "
			      "%.0f us of CPU per MiB\n",
			      total >> 20, ev_len >> 10, t1 - t0, (double)total / 1e6 / (t1 - t0),
			      (c1 - c0) * 1e6 / (double)(total >> 20));
	}
	free(buf);
}

/* ------------------------------------------------------------------------
 * Schema 2: migrating a schema-1 file, summaries, transactions, links,
 * prune and retention.
 */

/* One text value from the database (NULL as "(null)") into buf. */
static const char *
db_text(const char *path, const char *sql, char *buf, size_t bufsz)
{
	sqlite3 *db;
	sqlite3_stmt *stmt;
	const unsigned char *t;

	assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	if (sqlite3_prepare_v2(db, sql, -1, &stmt, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(db));
	assert_int_equal(sqlite3_step(stmt), SQLITE_ROW);
	t = sqlite3_column_text(stmt, 0);
	snprintf(buf, bufsz, "%s", t != NULL ? (const char *)t : "(null)");
	sqlite3_finalize(stmt);
	sqlite3_close(db);
	return buf;
}

/*
 * A schema-1 file as the issue-2 smtptap wrote it (sql/001_init.sql only),
 * with three sessions: a relay session with AUTH LOGIN recorded unredacted
 * and a message with two recipients; a sink session from an IPv6 client
 * with TLS, a redacted AUTH PLAIN, a dropped EHLO after a HELO, and a
 * message cut short; a session still live.
 */
static void
make_v1(const char *path)
{
	static const char rows[] =
	    "INSERT INTO sessions (id, started_us, ended_us, listener, client, upstream, upstream_addr, mode, "
	    "  client_tls, outcome) VALUES "
	    "(1, 1000, 9000, '127.0.0.1:2525', '127.0.0.1:5000', 'mx:25', '127.0.0.1:25', 'relay', NULL, 'quit'), "
	    "(2, 2000, 8000, '[::1]:2525', '[::1]:6000', NULL, NULL, 'sink', "
	    "  '{\"version\":\"TLSv1.3\",\"cipher\":\"TLS_AES_128_GCM_SHA256\"}', 'client-closed'), "
	    "(3, 3000, NULL, '127.0.0.1:2525', '127.0.0.1:7000', NULL, NULL, 'sink', NULL, NULL);"
	    "INSERT INTO events (session_id, seq, t_us, side, kind, flags, message_id, text, raw) VALUES "
	    "(1, 1, 1001, 'proxy', 'connect', 0, NULL, 'client connected', NULL), "
	    "(1, 2, 1002, 'upstream', 'reply', 0, NULL, NULL, CAST('220 mx ready' || char(13, 10) AS BLOB)), "
	    "(1, 3, 1003, 'client', 'command', 0, NULL, NULL, CAST('EHLO one.example' || char(13, 10) AS BLOB)), "
	    "(1, 4, 1004, 'upstream', 'reply', 0, NULL, NULL, CAST('250 mx' || char(13, 10) AS BLOB)), "
	    "(1, 5, 1005, 'client', 'command', 0, NULL, NULL, CAST('AUTH LOGIN' || char(13, 10) AS BLOB)), "
	    "(1, 6, 1006, 'upstream', 'reply', 0, NULL, NULL, CAST('334 VXNlcm5hbWU6' || char(13, 10) AS BLOB)), "
	    /* base64("u1@example.com"), then the password line */
	    "(1, 7, 1007, 'client', 'auth', 0, NULL, NULL, CAST('dTFAZXhhbXBsZS5jb20=' || char(13, 10) AS BLOB)), "
	    "(1, 8, 1008, 'upstream', 'reply', 0, NULL, NULL, CAST('334 UGFzc3dvcmQ6' || char(13, 10) AS BLOB)), "
	    "(1, 9, 1009, 'client', 'auth', 0, NULL, NULL, CAST('cHc=' || char(13, 10) AS BLOB)), "
	    "(1, 10, 1010, 'upstream', 'reply', 0, NULL, NULL, CAST('235 ok' || char(13, 10) AS BLOB)), "
	    "(1, 11, 1011, 'client', 'data', 0, 1, NULL, CAST('Subject: hi' || char(13, 10, 13, 10) || "
	    "  'body' || char(13, 10) || '.' || char(13, 10) AS BLOB)), "
	    "(1, 12, 1012, 'upstream', 'reply', 0, NULL, NULL, CAST('250 queued' || char(13, 10) AS BLOB)), "
	    "(2, 1, 2001, 'proxy', 'connect', 0, NULL, 'client connected', NULL), "
	    "(2, 2, 2002, 'proxy', 'reply', 17, NULL, NULL, CAST('220 smtptap' || char(13, 10) AS BLOB)), "
	    "(2, 3, 2003, 'client', 'command', 0, NULL, NULL, CAST('HELO two.example' || char(13, 10) AS BLOB)), "
	    "(2, 4, 2004, 'client', 'command', 4, NULL, NULL, CAST('EHLO dropped.example' || char(13, 10) AS BLOB)), "
	    "(2, 5, 2005, 'client', 'command', 8, NULL, NULL, CAST('AUTH PLAIN [redacted]' || char(13, 10) AS BLOB)), "
	    "(2, 6, 2006, 'client', 'data', 0, 2, NULL, CAST('Subject: cut' || char(13, 10) AS BLOB)), "
	    "(3, 1, 3001, 'proxy', 'connect', 0, NULL, 'client connected', NULL), "
	    "(3, 2, 3002, 'client', 'command', 0, NULL, NULL, CAST('EHLO live.example' || char(13, 10) AS BLOB));"
	    "INSERT INTO messages (id, session_id, idx, started_us, ended_us, mail_from, mail_params, transport, "
	    "  size, complete, subject, message_id, upstream_code, upstream_reply) VALUES "
	    "(1, 1, 1, 1011, 1012, 'a@example.com', 'SIZE=10', 'data', 16, 1, 'hi', '<m1@example.com>', 250, "
	    "  '250 queued'), "
	    "(2, 2, 1, 2006, 2007, '', NULL, 'bdat', 14, 0, 'cut', NULL, NULL, NULL);"
	    "INSERT INTO recipients (message_id, idx, address, params, reply_code, reply_text) VALUES "
	    "(1, 1, 'Bob@Example.org', NULL, 250, '250 ok'), "
	    "(1, 2, 'carol@example.net', 'NOTIFY=NEVER', 550, '550 no'), "
	    "(2, 1, 'dave@example.com', NULL, NULL, NULL);";
	char *msg = NULL;
	sqlite3 *db;

	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	if (sqlite3_exec(db, "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL;", NULL, NULL, &msg) != SQLITE_OK ||
	    sqlite3_exec(db, schema_migrations[0].sql, NULL, NULL, &msg) != SQLITE_OK ||
	    sqlite3_exec(db, "PRAGMA user_version = 1", NULL, NULL, &msg) != SQLITE_OK ||
	    sqlite3_exec(db, rows, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("making a schema-1 database: %s", msg);
	sqlite3_close(db);
}

struct tx_copy {
	int idx, mail_code;
	int64_t nmessages, mail_seq;
	char *mail_from, *mail_reply;
	size_t nrcpts;
	char *rcpt_addr[4];
	int rcpt_code[4];
	int64_t rcpt_seq[4];
};

struct tx_list {
	struct tx_copy v[8];
	size_t n;
};

static int
tx_collect_cb(const struct reader_transaction *row, void *arg)
{
	struct tx_list *l = arg;
	struct tx_copy *c;
	size_t i;

	assert_true(l->n < 8);
	assert_true(row->nrcpts <= 4);
	c = &l->v[l->n++];
	memset(c, 0, sizeof(*c));
	c->idx = row->idx;
	c->mail_code = row->mail_code;
	c->nmessages = row->nmessages;
	c->mail_seq = row->mail_seq;
	c->mail_from = dup_or_null(row->mail_from);
	c->mail_reply = dup_or_null(row->mail_reply);
	c->nrcpts = row->nrcpts;
	for (i = 0; i < row->nrcpts; i++) {
		c->rcpt_addr[i] = dup_or_null(row->rcpts[i].address);
		c->rcpt_code[i] = row->rcpts[i].reply_code;
		c->rcpt_seq[i] = row->rcpts[i].rcpt_seq;
	}
	return 0;
}

static void
tx_list_free(struct tx_list *l)
{
	size_t i, k;

	for (i = 0; i < l->n; i++) {
		free(l->v[i].mail_from);
		free(l->v[i].mail_reply);
		for (k = 0; k < l->v[i].nrcpts; k++)
			free(l->v[i].rcpt_addr[k]);
	}
	l->n = 0;
}

/* What any migrated copy of make_v1() must hold. */
static void
check_v1_migrated(const char *path)
{
	struct msg_list ml = { 0 };
	struct tx_list tl = { 0 };
	struct reader *rd;
	char buf[256];

	assert_int_equal(db_int(path, "PRAGMA user_version"), schema_migrations[schema_nmigrations - 1].version);
	assert_string_equal(db_text(path, "PRAGMA integrity_check", buf, sizeof(buf)), "ok");
	/* clear names */
	assert_int_equal(db_int(path, "SELECT count(*) FROM events WHERE message_row = 1"), 1);
	assert_string_equal(db_text(path, "SELECT message_id_hdr FROM messages WHERE id = 1", buf, sizeof(buf)),
			    "<m1@example.com>");
	assert_int_equal(db_int(path, "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'message_id'"), 0);
	/* one transaction per message, with its recipients */
	assert_int_equal(db_int(path, "SELECT count(*) FROM transactions"), 2);
	assert_int_equal(db_int(path, "SELECT count(*) FROM recipients WHERE session_id = 1 AND transaction_idx = 1"), 2);
	assert_int_equal(db_int(path, "SELECT transaction_idx FROM messages WHERE id = 2"), 1);
	/* summaries computed from the events */
	assert_int_equal(db_int(path, "SELECT nevents FROM sessions WHERE id = 1"), 12);
	assert_int_equal(db_int(path, "SELECT nmessages + ntransactions FROM sessions WHERE id = 1"), 2);
	assert_int_equal(db_int(path, "SELECT count(*) FROM sessions s WHERE NOT (client_bytes = (SELECT "
				      "coalesce(sum(length(raw)), 0) FROM events WHERE session_id = s.id AND side = "
				      "'client') AND upstream_bytes = (SELECT coalesce(sum(length(raw)), 0) FROM events "
				      "WHERE session_id = s.id AND side = 'upstream') AND proxy_bytes = (SELECT "
				      "coalesce(sum(length(raw)), 0) FROM events WHERE session_id = s.id AND side = 'proxy'))"),
			 0);
	assert_int_equal(db_int(path, "SELECT proxy_bytes FROM sessions WHERE id = 2"), 13);
	assert_string_equal(db_text(path, "SELECT helo FROM sessions WHERE id = 1", buf, sizeof(buf)), "one.example");
	/* the dropped EHLO is not what the client is called */
	assert_string_equal(db_text(path, "SELECT helo FROM sessions WHERE id = 2", buf, sizeof(buf)), "two.example");
	assert_string_equal(db_text(path, "SELECT auth_mech || ' ' || auth_user FROM sessions WHERE id = 1", buf,
				    sizeof(buf)),
			    "LOGIN u1@example.com");
	/* redacted: the mechanism, no user */
	assert_string_equal(db_text(path, "SELECT auth_mech || ' ' || coalesce(auth_user, '-') FROM sessions WHERE "
					  "id = 2",
				    buf, sizeof(buf)),
			    "PLAIN -");
	assert_string_equal(db_text(path, "SELECT client_ip FROM sessions WHERE id = 2", buf, sizeof(buf)), "::1");
	assert_string_equal(db_text(path, "SELECT client_tls_version FROM sessions WHERE id = 2", buf, sizeof(buf)),
			    "TLSv1.3");
	assert_int_equal(db_int(path, "SELECT count(*) FROM events WHERE answers_seq IS NOT NULL OR cause_seq IS NOT "
				      "NULL"),
			 0);
	/* what readers get */
	rd = reader_ok(path);
	assert_int_equal(reader_messages(rd, 1, msg_collect_cb, &ml, NULL, 0), 0);
	assert_int_equal(ml.n, 1);
	assert_string_equal(ml.v[0].message_id, "<m1@example.com>");
	assert_int_equal(ml.v[0].nrcpts, 2);
	assert_string_equal(ml.v[0].rcpt_addr[0], "Bob@Example.org");
	assert_int_equal(ml.v[0].rcpt_code[1], 550);
	assert_string_equal(ml.v[0].rcpt_params[1], "NOTIFY=NEVER");
	msg_list_free(&ml);
	assert_int_equal(reader_transactions(rd, 2, tx_collect_cb, &tl, NULL, 0), 0);
	assert_int_equal(tl.n, 1);
	assert_int_equal(tl.v[0].nmessages, 1);
	assert_string_equal(tl.v[0].mail_from, "");
	assert_int_equal(tl.v[0].mail_code, 0);
	assert_int_equal(tl.v[0].nrcpts, 1);
	assert_int_equal(tl.v[0].rcpt_code[0], 0);
	tx_list_free(&tl);
	reader_close(rd);
}

static void
test_migrate_v1_by_proxy(void **state)
{
	struct fixture *fx = *state;
	struct store *st;
	int64_t sid;

	make_v1(fx->db);
	st = open_ok(fx->db);
	/* ids go on after the old ones */
	sid = store_session_new_id(st);
	assert_int_equal(sid, 4);
	assert_int_equal(store_message_new_id(st), 3);
	add_session(st, sid, NULL);
	assert_int_equal(store_close(st), 0);
	check_v1_migrated(fx->db);
	/* the live session was marked as an older store does */
	assert_int_equal(db_int(fx->db, "SELECT outcome = 'interrupted' FROM sessions WHERE id = 3"), 1);
	/* a file made before schema 2 keeps its auto_vacuum (none) */
	assert_int_equal(db_int(fx->db, "PRAGMA auto_vacuum"), 0);
}

static void
test_migrate_v1_by_reader(void **state)
{
	struct fixture *fx = *state;

	make_v1(fx->db);
	reader_close(reader_ok(fx->db)); /* upgrades the file */
	check_v1_migrated(fx->db);
	/* the live session stays live: readers recover nothing */
	assert_int_equal(db_int(fx->db, "SELECT outcome IS NULL FROM sessions WHERE id = 3"), 1);
	/* an upgraded file is not upgraded again */
	reader_close(reader_ok(fx->db));
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), schema_migrations[schema_nmigrations - 1].version);
}

/* An older proxy recording into the file (its flock) forbids upgrading. */
static void
test_migrate_refused_while_old_proxy_records(void **state)
{
	struct fixture *fx = *state;
	char err[256] = "";
	int fd;

	make_v1(fx->db);
	fd = open(fx->db, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), 0);
	assert_null(reader_open(fx->db, err, sizeof(err)));
	assert_non_null(strstr(err, "older smtptap proxy is recording into it"));
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), 1);
	close(fd);
	reader_close(reader_ok(fx->db));
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), schema_migrations[schema_nmigrations - 1].version);
}

/* A migration that fails leaves the file as it was. */
static void
test_migrate_failure_rolls_back(void **state)
{
	struct fixture *fx = *state;
	char err[256] = "";

	make_v1(fx->db);
	db_exec(fx->db, "CREATE TABLE transactions (x)"); /* in the way of schema 2 */
	assert_null(store_open(fx->db, err, sizeof(err)));
	assert_non_null(strstr(err, "schema migration 002_schema2.sql failed"));
	assert_int_equal(db_int(fx->db, "PRAGMA user_version"), 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'message_id'"), 1);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM recipients"), 3);
}

static void
test_new_file_auto_vacuum(void **state)
{
	struct fixture *fx = *state;

	assert_int_equal(store_close(open_ok(fx->db)), 0);
	/* NONE: freed pages are reused; the pointer maps cost the writer
	 * too much (store_configure()). */
	assert_int_equal(db_int(fx->db, "PRAGMA auto_vacuum"), 0);
}

/* The summary columns agree with the rows, across batches and sessions. */
static void
test_summaries_kept_by_writer(void **state)
{
	struct fixture *fx = *state;
	struct store *st;
	char raw[100], buf[128];
	int64_t seq[3] = { 0, 0, 0 };
	int i, k;

	st = open_ok(fx->db);
	add_session(st, 1, "up:25");
	add_session(st, 2, NULL);
	for (i = 0; i < 300; i++) {
		for (k = 1; k <= 2; k++) {
			snprintf(raw, sizeof(raw), "NOOP %d\r\n", i);
			add_event(st, k, ++seq[k], STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, raw, strlen(raw));
			add_event(st, k, ++seq[k], k == 1 ? STORE_SIDE_UPSTREAM : STORE_SIDE_PROXY, STORE_KIND_REPLY, 0,
				  0, NULL, "250 ok\r\n", 8);
		}
		if (i == 10) {
			add_event(st, 1, ++seq[1], STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL,
				  "EHLO first.example\r\n", 20);
			wait_drained(st); /* a batch boundary */
		}
		if (i == 200)
			add_event(st, 1, ++seq[1], STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL,
				  "ehlo second.example\r\n", 21);
		if (i == 250) /* dropped: not the client's name */
			add_event(st, 1, ++seq[1], STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED, 0, NULL,
				  "EHLO dropped.example\r\n", 22);
	}
	store_session_set_auth(st, 2, "LOGIN", NULL);
	store_session_set_auth(st, 2, "LOGIN", "who@example.com");
	store_session_set_tls(st, 1, STORE_SIDE_UPSTREAM, "{\"version\":\"TLSv1.2\"}");
	store_session_set_tls(st, 2, STORE_SIDE_CLIENT, "not json");
	store_transaction_open(st, &(struct store_transaction){ .session_id = 2, .idx = 1, .mail_from = "x" });
	store_message_open(st, &(struct store_message){ .id = store_message_new_id(st), .session_id = 2,
							 .transaction_idx = 1, .idx = 1, .transport = "data" });
	assert_int_equal(store_close(st), 0);

	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions s WHERE nevents = (SELECT count(*) FROM events "
					"WHERE session_id = s.id)"),
			 2);
	assert_int_equal(db_int(fx->db, "SELECT nevents FROM sessions WHERE id = 1"), 603);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions s WHERE client_bytes = (SELECT "
					"sum(length(raw)) FROM events WHERE session_id = s.id AND side = 'client')"),
			 2);
	assert_int_equal(db_int(fx->db, "SELECT upstream_bytes FROM sessions WHERE id = 1"), 300 * 8);
	assert_int_equal(db_int(fx->db, "SELECT proxy_bytes + upstream_bytes FROM sessions WHERE id = 2"), 300 * 8);
	assert_string_equal(db_text(fx->db, "SELECT helo FROM sessions WHERE id = 1", buf, sizeof(buf)),
			    "second.example");
	assert_string_equal(db_text(fx->db, "SELECT coalesce(helo, '-') FROM sessions WHERE id = 2", buf, sizeof(buf)),
			    "-");
	assert_string_equal(db_text(fx->db, "SELECT auth_mech || ' ' || auth_user FROM sessions WHERE id = 2", buf,
				    sizeof(buf)),
			    "LOGIN who@example.com");
	assert_string_equal(db_text(fx->db, "SELECT upstream_tls_version FROM sessions WHERE id = 1", buf, sizeof(buf)),
			    "TLSv1.2");
	assert_string_equal(db_text(fx->db, "SELECT coalesce(client_tls_version, '-') || client_tls FROM sessions "
					    "WHERE id = 2",
				    buf, sizeof(buf)),
			    "-not json");
	assert_int_equal(db_int(fx->db, "SELECT ntransactions * 10 + nmessages FROM sessions WHERE id = 2"), 11);
	assert_string_equal(db_text(fx->db, "SELECT client_ip FROM sessions WHERE id = 1", buf, sizeof(buf)),
			    "127.0.0.1");
}

/* Transactions with and without messages, recipients written with their
 * replies, a MAIL reply that came after the row, the links of events. */
static void
test_transactions_recipients_links(void **state)
{
	struct fixture *fx = *state;
	struct tx_list tl = { 0 };
	struct msg_list ml = { 0 };
	struct ev_list el = { 0 };
	struct reader *rd;
	struct store *st;
	int64_t mid;

	st = open_ok(fx->db);
	add_session(st, 1, NULL);
	add_event(st, 1, 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "MAIL FROM:<a@x>\r\n", 17);
	store_transaction_open(st, &(struct store_transaction){ .session_id = 1, .idx = 1, .started_us = 5,
								 .mail_seq = 1, .mail_from = "a@x", .mail_code = 250,
								 .mail_reply = "250 ok" });
	store_event_add(st, &(struct store_event){ .session_id = 1, .seq = 2, .t_us = 6, .side = STORE_SIDE_PROXY,
						   .kind = STORE_KIND_REPLY, .answers_seq = 1, .raw = "250 ok\r\n",
						   .raw_len = 8 });
	store_rcpt_add(st, &(struct store_rcpt){ .session_id = 1, .transaction_idx = 1, .idx = 1, .rcpt_seq = 3,
						 .address = "r1@x", .reply_code = 250, .reply = "250 ok" });
	store_rcpt_add(st, &(struct store_rcpt){ .session_id = 1, .transaction_idx = 1, .idx = 2, .rcpt_seq = 5,
						 .address = "r2@x" }); /* no reply came */
	mid = store_message_new_id(st);
	store_message_open(st, &(struct store_message){ .id = mid, .session_id = 1, .transaction_idx = 1, .idx = 1,
							 .mail_from = "a@x", .transport = "bdat" });
	/* a second transaction, reset before its MAIL reply, and never DATA */
	store_transaction_open(st, &(struct store_transaction){ .session_id = 1, .idx = 2, .mail_from = "b@x" });
	store_transaction_mail_reply(st, 1, 2, 451, "451 later");
	store_rcpt_add(st, &(struct store_rcpt){ .session_id = 1, .transaction_idx = 2, .idx = 1,
						 .address = "nodata@x", .reply_code = 503, .reply = "503 no" });
	store_event_add(st, &(struct store_event){ .session_id = 1, .seq = 3, .t_us = 7, .side = STORE_SIDE_UPSTREAM,
						   .kind = STORE_KIND_REPLY, .flags = STORE_F_ALTERED, .answers_seq = 1,
						   .raw = "250 x\r\n", .raw_len = 7 });
	store_event_add(st, &(struct store_event){ .session_id = 1, .seq = 4, .t_us = 8, .side = STORE_SIDE_PROXY,
						   .kind = STORE_KIND_REPLY, .answers_seq = 1, .cause_seq = 3,
						   .raw = "250 y\r\n", .raw_len = 7 });
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_transactions(rd, 1, tx_collect_cb, &tl, NULL, 0), 0);
	assert_int_equal(tl.n, 2);
	assert_int_equal(tl.v[0].idx, 1);
	assert_int_equal(tl.v[0].mail_code, 250);
	assert_string_equal(tl.v[0].mail_reply, "250 ok");
	assert_int_equal(tl.v[0].mail_seq, 1);
	assert_int_equal(tl.v[0].nmessages, 1);
	assert_int_equal(tl.v[0].nrcpts, 2);
	assert_int_equal(tl.v[0].rcpt_code[0], 250);
	assert_int_equal(tl.v[0].rcpt_seq[0], 3);
	assert_int_equal(tl.v[0].rcpt_code[1], 0);
	assert_int_equal(tl.v[1].nmessages, 0);
	assert_int_equal(tl.v[1].mail_code, 451);
	assert_string_equal(tl.v[1].rcpt_addr[0], "nodata@x");
	assert_int_equal(tl.v[1].rcpt_code[0], 503);
	tx_list_free(&tl);
	assert_int_equal(reader_messages(rd, 1, msg_collect_cb, &ml, NULL, 0), 0);
	assert_int_equal(ml.n, 1);
	assert_int_equal(ml.v[0].nrcpts, 2); /* its transaction's */
	msg_list_free(&ml);
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, ev_collect_cb, &el, NULL, 0), 0);
	assert_int_equal(el.n, 4);
	ev_list_free(&el);
	reader_close(rd);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE answers_seq = 1"), 3);
	assert_int_equal(db_int(fx->db, "SELECT seq FROM events WHERE cause_seq = 3"), 4);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE answers_seq IS NULL AND cause_seq IS NULL"),
			 1);
}

/* The questions users ask are index searches, not table scans. */
static void
test_search_uses_indexes(void **state)
{
	static const struct {
		const char *sql, *want;
	} plans[] = {
		{ "SELECT session_id FROM recipients WHERE address = 'a@b' COLLATE NOCASE", "recipients_address" },
		{ "SELECT session_id FROM transactions WHERE mail_from = 'a@b' COLLATE NOCASE",
		  "transactions_mail_from" },
		{ "SELECT id FROM messages WHERE message_id_hdr = '<x@y>'", "messages_message_id_hdr" },
		{ "SELECT id FROM sessions WHERE client_ip = '127.0.0.1' ORDER BY id DESC LIMIT 50",
		  "sessions_client_ip" },
		{ "SELECT id FROM sessions WHERE outcome = 'quit' ORDER BY id DESC LIMIT 50", "sessions_outcome" },
		{ "SELECT id FROM sessions WHERE started_us BETWEEN 1 AND 2", "sessions_started" },
		{ "SELECT * FROM transactions WHERE session_id = 5", "PRIMARY KEY" },
		{ "SELECT * FROM recipients WHERE session_id = 5 AND transaction_idx = 1", "PRIMARY KEY" },
	};
	struct fixture *fx = *state;
	char sql[512], plan[256];
	size_t i;

	assert_int_equal(store_close(open_ok(fx->db)), 0);
	for (i = 0; i < sizeof(plans) / sizeof(plans[0]); i++) {
		snprintf(sql, sizeof(sql), "SELECT group_concat(detail, ' | ') FROM (SELECT detail FROM "
			 "(EXPLAIN QUERY PLAN %s))", plans[i].sql);
		/* EXPLAIN is not a table: ask sqlite for the plan another way */
		(void)sql;
		{
			sqlite3 *db;
			sqlite3_stmt *stmt;
			size_t n = 0;

			assert_int_equal(sqlite3_open_v2(fx->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
			snprintf(sql, sizeof(sql), "EXPLAIN QUERY PLAN %s", plans[i].sql);
			assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
			plan[0] = '\0';
			while (sqlite3_step(stmt) == SQLITE_ROW && n < sizeof(plan) - 1)
				n += (size_t)snprintf(plan + n, sizeof(plan) - n, "%s; ", sqlite3_column_text(stmt, 3));
			sqlite3_finalize(stmt);
			sqlite3_close(db);
		}
		if (strstr(plan, plans[i].want) == NULL || strstr(plan, "SCAN") != NULL)
			fail_msg("%s: plan '%s' does not search %s", plans[i].sql, plan, plans[i].want);
	}
}

/* A session with one message of `len` data bytes, started and ended at
 * `t` (unix us); outcome NULL leaves it live. */
static void
add_whole_session(struct store *st, int64_t sid, int64_t t, const char *outcome, size_t len)
{
	static char data[65536];
	int64_t mid = store_message_new_id(st);
	size_t off;
	int64_t seq = 0;

	memset(data, 'd', sizeof(data));
	store_session_open(st, &(struct store_session){ .id = sid, .started_us = t, .listener = "l", .client =
										     "127.0.0.1:1",
							 .mode = "sink" });
	add_event(st, sid, ++seq, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, 0, NULL, "MAIL FROM:<a@b>\r\n", 17);
	store_transaction_open(st, &(struct store_transaction){ .session_id = sid, .idx = 1, .started_us = t,
								 .mail_from = "a@b", .mail_code = 250 });
	store_rcpt_add(st, &(struct store_rcpt){ .session_id = sid, .transaction_idx = 1, .idx = 1, .address = "r@b",
						 .reply_code = 250 });
	store_message_open(st, &(struct store_message){ .id = mid, .session_id = sid, .transaction_idx = 1, .idx = 1,
							 .started_us = t, .mail_from = "a@b", .transport = "data" });
	for (off = 0; off < len; off += sizeof(data))
		add_event(st, sid, ++seq, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, mid, NULL, data,
			  len - off < sizeof(data) ? len - off : sizeof(data));
	store_message_close(st, &(struct store_message_end){ .id = mid, .ended_us = t, .size = len, .complete = true,
							     .subject = "s" });
	if (outcome != NULL)
		store_session_close(st, sid, t, outcome, NULL);
}

static void
test_prune_whole_sessions(void **state)
{
	struct fixture *fx = *state;
	struct store_prune_opts o = { 0 };
	struct store_prune_result dry, r;
	struct store *st;
	int64_t now = 1700000000000000LL + 100LL * 86400 * 1000000, day = 86400LL * 1000000, i;
	char err[256] = "", buf[64], seg[4200];

	st = open_ok(fx->db);
	for (i = 1; i <= 10; i++) /* 1-10: one a day, 90 to 81 days before `now` */
		add_whole_session(st, store_session_new_id(st), now - (91 - i) * day, "quit", 200000);
	add_whole_session(st, store_session_new_id(st), now - 95 * day, NULL, 1000); /* 11: old, but live */
	add_whole_session(st, store_session_new_id(st), now - day, "quit", 1000);   /* 12: recent */
	assert_int_equal(store_close(st), 0);

	o.before_us = now - 85 * day; /* 1-5 ended earlier */
	o.dry_run = true;
	assert_int_equal(store_prune(fx->db, &o, &dry, err, sizeof(err)), 0);
	assert_int_equal(dry.sessions, 5);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions"), 12);
	o.dry_run = false;
	assert_int_equal(store_prune(fx->db, &o, &r, err, sizeof(err)), 0);
	/* what the dry run announced, deleted whole */
	assert_int_equal(r.sessions, 5);
	assert_int_equal(r.first_id, 1);
	assert_int_equal(r.last_id, 5);
	assert_int_equal(r.events, dry.events);
	assert_int_equal(r.messages, dry.messages);
	assert_int_equal(r.transactions, dry.transactions);
	assert_int_equal(r.recipients, dry.recipients);
	assert_int_equal(r.bytes, dry.bytes);
	assert_int_equal(r.messages, 5);
	assert_true(r.bytes >= 5 * 200000);
	assert_false(r.incremental);
	/* the messages' bytes (in content segments) count as data */
	assert_true(r.data_before - r.data_after >= 5 * 200000);
	assert_int_equal(r.segments, 0); /* segment 1 is still referred to, and the newest */
	assert_int_equal(db_int(fx->db, "SELECT min(id) FROM sessions"), 6);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM events WHERE session_id <= 5"), 0);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM messages WHERE session_id <= 5"), 0);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM transactions WHERE session_id <= 5"), 0);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM recipients WHERE session_id <= 5"), 0);
	assert_string_equal(db_text(fx->db, "PRAGMA integrity_check", buf, sizeof(buf)), "ok");

	/* everything that ended: never the live one */
	o.before_us = now;
	/* as if a writer had moved on to a second segment: the first is no
	 * longer the newest, so it goes once nothing refers to it */
	snprintf(seg, sizeof(seg), "%s-content/0000000002.seg", fx->db);
	assert_int_equal(close(open(seg, O_WRONLY | O_CREAT | O_EXCL, 0600)), 0);
	assert_int_equal(store_prune(fx->db, &o, &r, err, sizeof(err)), 0);
	assert_int_equal(r.sessions, 6);
	assert_int_equal(r.segments, 0); /* session 11 still refers to segment 1 */
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions"), 1);
	assert_int_equal(db_int(fx->db, "SELECT id FROM sessions"), 11);
	/* the ids deleted are never handed out again */
	db_exec(fx->db, "UPDATE sessions SET outcome = 'quit' WHERE id = 11");
	assert_int_equal(store_prune(fx->db, &o, &r, err, sizeof(err)), 0);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM sessions"), 0);
	assert_int_equal(r.segments, 1);
	assert_true(r.segment_bytes >= 10 * 200000);
	snprintf(seg, sizeof(seg), "%s-content/0000000001.seg", fx->db);
	assert_int_equal(access(seg, F_OK), -1);
	st = open_ok(fx->db);
	assert_int_equal(store_session_new_id(st), 13);
	assert_int_equal(store_message_new_id(st), 13);
	assert_int_equal(store_close(st), 0);
	/* Pages a prune frees are kept for reuse (no auto_vacuum); --vacuum
	 * gives them back.  A session with 2,000 1 KB events makes some. */
	db_exec(fx->db, "INSERT INTO sessions (id, started_us, ended_us, mode, outcome) VALUES (20, 1, 1, 'proxy', 'quit');"
			"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000) "
			"INSERT INTO events (session_id, seq, t_us, side, kind, raw) "
			"SELECT 20, i, i, 'client', 'command', randomblob(1000) FROM n");
	assert_int_equal(store_prune(fx->db, &o, &r, err, sizeof(err)), 0);
	assert_int_equal(r.sessions, 1);
	assert_false(r.incremental);
	assert_true(db_int(fx->db, "PRAGMA freelist_count") > 100);
	o.vacuum = true;
	assert_int_equal(store_prune(fx->db, &o, &r, err, sizeof(err)), 0);
	assert_int_equal(r.sessions, 0);
	assert_true(r.file_after < r.file_before / 4); /* 2.5 MB -> 320 KB */
	assert_int_equal(db_int(fx->db, "PRAGMA freelist_count"), 0);
	assert_int_equal(db_int(fx->db, "PRAGMA auto_vacuum"), 0);
	o.vacuum = false;

	/* errors */
	assert_int_equal(store_prune("/nonexistent/x.db", &o, &r, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "No such file"));
}

/* Wait (bounded) until the database has `want` sessions. */
static void
wait_sessions(const char *path, int64_t want)
{
	struct timespec ms = { 0, 10000000 };
	int i;

	for (i = 0; i < 3000 && db_int(path, "SELECT count(*) FROM sessions") != want; i++)
		nanosleep(&ms, NULL);
	assert_int_equal(db_int(path, "SELECT count(*) FROM sessions"), want);
}

/* Bytes of the pages in use and of the message content referred to:
 * what --max-db-size limits. */
static int64_t
data_bytes(const char *path)
{
	return db_int(path, "SELECT (page_count - freelist_count) * page_size + "
			    "(SELECT total(content_bytes) FROM sessions) FROM pragma_page_count, "
			    "pragma_freelist_count, pragma_page_size");
}

/* The writer deletes what --retain and --max-db-size say, whole, oldest
 * first. */
static void
test_retention_by_writer(void **state)
{
	struct fixture *fx = *state;
	struct store_options opts = { 0 };
	struct timespec ms = { 0, 10000000 };
	struct store *st;
	int64_t now = util_now_us(), day = 86400LL * 1000000, i, n;
	char err[256] = "";

	st = open_ok(fx->db);
	for (i = 1; i <= 4; i++) /* ended 9, 8, 7 and 6 days ago */
		add_whole_session(st, store_session_new_id(st), now - (10 - i) * day, "quit", 1000);
	/* live when smtptap stopped: interrupted at the next start, ended
	 * at its last event, 20 days ago */
	add_whole_session(st, store_session_new_id(st), now - 20 * day, NULL, 1000);
	assert_int_equal(store_close(st), 0);

	/* keep 7 days: 1-3 and 5 go at the writer's first look */
	opts.retain_us = 7 * day;
	st = store_open_opts(fx->db, &opts, err, sizeof(err));
	assert_non_null(st);
	wait_sessions(fx->db, 1);
	assert_int_equal(db_int(fx->db, "SELECT id FROM sessions"), 4);
	assert_int_equal(store_close(st), 0);

	/* a size limit: the oldest go until the data fits */
	st = open_ok(fx->db);
	for (i = 0; i < 6; i++) /* 6-11 */
		add_whole_session(st, store_session_new_id(st), now, "quit", 1000000);
	assert_int_equal(store_close(st), 0);
	assert_true(data_bytes(fx->db) > 6000000);
	memset(&opts, 0, sizeof(opts));
	opts.max_bytes = 3500000;
	st = store_open_opts(fx->db, &opts, err, sizeof(err));
	assert_non_null(st);
	for (i = 0; i < 3000 && data_bytes(fx->db) > 3500000; i++)
		nanosleep(&ms, NULL);
	assert_int_equal(store_close(st), 0);
	assert_true(data_bytes(fx->db) <= 3500000);
	/* the newest kept, whole, no gap */
	n = db_int(fx->db, "SELECT count(*) FROM sessions");
	assert_true(n >= 1 && n < 6);
	assert_int_equal(db_int(fx->db, "SELECT max(id) FROM sessions"), 11);
	assert_int_equal(db_int(fx->db, "SELECT min(id) FROM sessions"), 12 - n);
	assert_int_equal(db_int(fx->db, "SELECT count(*) FROM messages"), n);
	assert_int_equal(db_int(fx->db, "SELECT count(DISTINCT session_id) FROM events"), n);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_creates_0600, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_migration_sets_user_version, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_existing_empty_file_initialised, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_newer_version_refused, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_garbage_file_refused, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_foreign_sqlite_refused, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_open_errors, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_second_writer_refused, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_data_and_ids, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_events_roundtrip_bytes, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_message_data_1mib, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_messages_with_recipients, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_session_tls_and_upstream_addr, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_interrupted_on_reopen, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_reader_while_writer_open, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_in_segments, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_reopen_appends, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_missing_reported, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_sweep, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_rows_across_batches, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_sweep_ranges, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_ranges_migration, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_upgrade_from_v1, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_content_segment_roll, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_backlog_returns_to_zero, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_100k_events, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_sessions_limit, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_session_not_found_and_stop, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_write_errors_counted, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_disk_full_counted, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_migrate_v1_by_proxy, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_migrate_v1_by_reader, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_migrate_refused_while_old_proxy_records, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_migrate_failure_rolls_back, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_new_file_auto_vacuum, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_summaries_kept_by_writer, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_transactions_recipients_links, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_search_uses_indexes, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_prune_whole_sessions, setup_dir, teardown_dir),
		cmocka_unit_test_setup_teardown(test_retention_by_writer, setup_dir, teardown_dir),
	};
	/* A benchmark is not a test: run it only when asked. */
	const struct CMUnitTest bench[] = {
		cmocka_unit_test_setup_teardown(test_bench_writer, setup_dir, teardown_dir),
	};

	/* Errors the tests provoke on purpose are expected on stderr. */
	log_init(0);
	store_global_init(); /* as main() does */
	if (getenv("STORE_BENCH") != NULL)
		return cmocka_run_group_tests_name("store-bench", bench, NULL, NULL);
	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
