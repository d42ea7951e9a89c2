/*
 * test_alloc_fail.c - allocation-failure injection ("torture" mode, as
 * curl's test suite does it) over the pure modules and the store.
 *
 * This binary is linked with -Wl,--wrap=malloc,calloc,realloc,strdup,
 * strndup,iconv_open (see the Makefile), so every such call made by
 * smtptap's own objects goes through the __wrap_ functions below; SQLite's
 * allocations go through the same counter by sqlite3_config(
 * SQLITE_CONFIG_MALLOC) installed before SQLite starts.  Calls made inside
 * other libraries (libc's stdio, libevent) are not counted.
 *
 * Each operation is run with the Nth counted allocation failing (once),
 * for every N up to the number of calls a clean run makes (SQLite's own
 * allocations: a spread of them by default, every one with
 * ALLOC_FAIL_RUNS=0; see torture_budget).  Every run must either succeed (and then produce exactly the right
 * result) or return an error that was reported (an err string, or a line
 * on stderr) -- never crash, never leak: make check runs this binary under
 * valgrind and under ASan+LSan too.  The JSON record reader (jsonread) gets
 * the same treatment on its own, and so does the rules parser.  The pure
 * parsers, the JSON writer and rules_decide are documented not to
 * allocate at all: that is checked here as well.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <iconv.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif

#include "smtptap/export.h"
#include "smtptap/json.h"
#include "smtptap/jsonread.h"
#include "smtptap/mime.h"
#include "smtptap/rules.h"
#include "smtptap/smtp.h"
#include "smtptap/reader.h"
#include "smtptap/store.h"

/* A bound on N per operation, so a broken loop ends (the largest,
 * creating a database through both schema migrations with their FTS5
 * tables, needs about 24000). */
#define TORTURE_MAX 40000

void *__real_malloc(size_t);
void *__real_calloc(size_t, size_t);
void *__real_realloc(void *, size_t);
char *__real_strdup(const char *);
char *__real_strndup(const char *, size_t);
iconv_t __real_iconv_open(const char *, const char *);
void *__wrap_malloc(size_t);
void *__wrap_calloc(size_t, size_t);
void *__wrap_realloc(void *, size_t);
char *__wrap_strdup(const char *);
char *__wrap_strndup(const char *, size_t);
iconv_t __wrap_iconv_open(const char *, const char *);

/* What a run reports back to the torture loop. */
enum run_result {
	RUN_OK = 0,	/* the operation succeeded and its result was right */
	RUN_ERROR = 1,	/* it failed and said why */
};

struct fixture {
	char dir[64];
	char db[128];	    /* a populated database for the readers */
	char template[128]; /* a fresh, migrated, empty database */
	char work[128];	    /* scratch copy for the recording runs */
	char unfinished[128]; /* a session opened and never closed (a crash) */
	char log[128];	    /* where stderr goes during a run */
	int64_t sid, mid;
};

typedef enum run_result (*torture_op)(struct fixture *, char *why, size_t whysz);

static bool inject(int);
static long torture_budget(void);
static enum run_result torture_run(struct fixture *, const char *, torture_op, int, long, long *);
static void *sq_malloc(int);
static void *sq_realloc(void *, int);
static void alloc_install_sqlite(void);
static void capture_begin(struct fixture *);
static size_t capture_end(struct fixture *, char *, size_t);
static void capture_abort(void);
static long torture(struct fixture *, const char *, torture_op);
static void copy_file(const char *, const char *);
static void remove_db(const char *);
static void record_session(struct store *, int64_t *, int64_t *);
static enum run_result check_recorded(const char *, int64_t, int64_t);
static enum run_result op_store_open(struct fixture *, char *, size_t);
static enum run_result op_store_record(struct fixture *, char *, size_t);
static enum run_result op_store_recover(struct fixture *, char *, size_t);
static int outcome_cb(const struct reader_session *, void *);
static enum run_result op_store_read(struct fixture *, char *, size_t);
static enum run_result op_export(struct fixture *, char *, size_t);
static enum run_result op_rules(struct fixture *, char *, size_t);
static int count_event_cb(const struct reader_event *, void *);
static int count_session_cb(const struct reader_session *, void *);
static int count_message_cb(const struct reader_message *, void *);
static int sum_chunk_cb(const void *, size_t, void *);

/* ------------------------------------------------------------------------
 * The failing allocator.  `armed` is off outside the operation under test
 * (fixtures, checks), so only the operation's own calls are counted.  The
 * store's writer thread allocates too, hence atomics.
 */

/* Who made the call: smtptap's objects, or SQLite through its hooks. */
enum { SRC_OWN = 0, SRC_SQLITE = 1 };

static atomic_bool armed;
static atomic_long ncalls[2];  /* counted calls since the run began */
static atomic_long fail_at[2]; /* the call that fails, 1-based; 0 none */
static atomic_long nfailed;    /* calls made to fail in this run */
static sqlite3_mem_methods sq_orig;

static bool
inject(int src)
{
	if (!atomic_load(&armed))
		return false;
	if (atomic_fetch_add(&ncalls[src], 1) + 1 != atomic_load(&fail_at[src]))
		return false;
	atomic_fetch_add(&nfailed, 1);
	errno = ENOMEM;
	return true;
}

void *
__wrap_malloc(size_t n)
{
	return inject(SRC_OWN) ? NULL : __real_malloc(n);
}

void *
__wrap_calloc(size_t n, size_t m)
{
	return inject(SRC_OWN) ? NULL : __real_calloc(n, m);
}

void *
__wrap_realloc(void *p, size_t n)
{
	return inject(SRC_OWN) ? NULL : __real_realloc(p, n);
}

char *
__wrap_strdup(const char *s)
{
	return inject(SRC_OWN) ? NULL : __real_strdup(s);
}

char *
__wrap_strndup(const char *s, size_t n)
{
	return inject(SRC_OWN) ? NULL : __real_strndup(s, n);
}

/* iconv_open allocates the conversion state: it fails like an allocator. */
iconv_t
__wrap_iconv_open(const char *to, const char *from)
{
	return inject(SRC_OWN) ? (iconv_t)-1 : __real_iconv_open(to, from);
}

static void *
sq_malloc(int n)
{
	return inject(SRC_SQLITE) ? NULL : sq_orig.xMalloc(n);
}

static void *
sq_realloc(void *p, int n)
{
	return inject(SRC_SQLITE) ? NULL : sq_orig.xRealloc(p, n);
}

/* Must run before SQLite initialises (before any store call). */
static void
alloc_install_sqlite(void)
{
	static sqlite3_mem_methods m;

	if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &sq_orig) != SQLITE_OK)
		abort();
	m = sq_orig;
	m.xMalloc = sq_malloc;
	m.xRealloc = sq_realloc;
	if (sqlite3_config(SQLITE_CONFIG_MALLOC, &m) != SQLITE_OK)
		abort();
	/* Lookaside would hide many small allocations from the counter. */
	if (sqlite3_config(SQLITE_CONFIG_LOOKASIDE, 0, 0) != SQLITE_OK)
		abort();
}

/* stderr into fx->log for the length of a run: "reported" is checked by
 * reading it back. */
static int saved_stderr = -1;

static void
capture_begin(struct fixture *fx)
{
	int fd;

	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	fd = open(fx->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(saved_stderr >= 0 && fd >= 0);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	close(fd);
}

/* A check inside an operation failed: give stderr back before cmocka
 * reports it (it would go to the capture file) and stop the allocator
 * from failing cmocka's own calls. */
static void
capture_abort(void)
{
	atomic_store(&armed, false);
	if (saved_stderr < 0)
		return;
	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	saved_stderr = -1;
}

#define OP_FAIL(...)                        \
	do {                                \
		capture_abort();            \
		fail_msg(__VA_ARGS__);      \
	} while (0)
#define OP_CHECK(cond)                                                          \
	do {                                                                    \
		if (!(cond))                                                    \
			OP_FAIL("%s:%d: %s is false", __FILE__, __LINE__, #cond); \
	} while (0)

/* Restore stderr; the captured text (NUL-terminated, cut at bufsz) into
 * buf, and its full length returned. */
static size_t
capture_end(struct fixture *fx, char *buf, size_t bufsz)
{
	struct stat sb;
	FILE *f;
	size_t n = 0;

	fflush(stderr);
	assert_true(dup2(saved_stderr, STDERR_FILENO) >= 0);
	close(saved_stderr);
	saved_stderr = -1;
	buf[0] = '\0';
	if (stat(fx->log, &sb) < 0)
		return 0;
	if ((f = fopen(fx->log, "r")) != NULL) {
		n = fread(buf, 1, bufsz - 1, f);
		buf[n] = '\0';
		fclose(f);
	}
	return (size_t)sb.st_size;
}

/*
 * How many runs an operation gets for SQLite's allocations (its own are
 * always failed one by one).  SQLite makes thousands of small allocations
 * per open, most of them inside one API call whose failure takes the same
 * path through our code, so by default every k-th one is failed, k chosen
 * to keep the test quick; ALLOC_FAIL_RUNS=0 fails every single one (a few
 * minutes), ALLOC_FAIL_RUNS=N allows N runs.  Under valgrind, 10.
 */
static long
torture_budget(void)
{
	const char *e = getenv("ALLOC_FAIL_RUNS");

	if (e != NULL && *e != '\0')
		return strtol(e, NULL, 10);
#ifdef RUNNING_ON_VALGRIND
	if (RUNNING_ON_VALGRIND)
		return 10;
#endif
	return 250;
}

/* One run with call `n` of source `src` failing (n 0: none).  Checks the
 * outcome; *reached tells whether the failure was reached. */
static enum run_result
torture_run(struct fixture *fx, const char *name, torture_op op, int src, long n, long *reached)
{
	char why[512], log[2048];
	enum run_result r;
	size_t nlog;

	why[0] = '\0';
	atomic_store(&ncalls[SRC_OWN], 0);
	atomic_store(&ncalls[SRC_SQLITE], 0);
	atomic_store(&nfailed, 0);
	atomic_store(&fail_at[SRC_OWN], src == SRC_OWN ? n : 0);
	atomic_store(&fail_at[SRC_SQLITE], src == SRC_SQLITE ? n : 0);
	capture_begin(fx);
	r = op(fx, why, sizeof(why));
	atomic_store(&armed, false);
	nlog = capture_end(fx, log, sizeof(log));
	*reached = atomic_load(&nfailed);
	if (*reached == 0 && r != RUN_OK)
		fail_msg("%s: failed with no allocation failing (%ld+%ld calls): %s; stderr: %s", name,
			 atomic_load(&ncalls[SRC_OWN]), atomic_load(&ncalls[SRC_SQLITE]), why, log);
	if (r == RUN_ERROR && why[0] == '\0' && nlog == 0)
		fail_msg("%s: %s allocation %ld failed and the operation failed without saying why", name,
			 src == SRC_OWN ? "own" : "SQLite", n);
	return r;
}

/*
 * The loop: a clean run counts the calls, then call N fails for N = 1, 2,
 * ... of smtptap's own allocations, then for a spread of SQLite's (see
 * torture_budget), each run checked by torture_run.  Returns the number of
 * runs made with a failure.
 */
static long
torture(struct fixture *fx, const char *name, torture_op op)
{
	long own, sq, n, step, budget = torture_budget(), reached, runs = 0, nerr = 0;

	torture_run(fx, name, op, SRC_OWN, 0, &reached);
	own = atomic_load(&ncalls[SRC_OWN]);
	sq = atomic_load(&ncalls[SRC_SQLITE]);
	if (own + sq > TORTURE_MAX)
		fail_msg("%s: %ld allocations: more than this test is meant for", name, own + sq);
	/* The writer thread makes the counts vary a little between runs:
	 * go a bit past them; a run that does not reach its failure must
	 * simply succeed. */
	for (n = 1; n <= own + 2; n++, runs++)
		nerr += torture_run(fx, name, op, SRC_OWN, n, &reached) == RUN_ERROR;
	step = budget <= 0 || sq <= budget ? 1 : (sq + budget - 1) / budget;
	for (n = 1; n <= sq + 2; n += step, runs++)
		nerr += torture_run(fx, name, op, SRC_SQLITE, n, &reached) == RUN_ERROR;
	print_message("%s: %ld own and %ld SQLite allocations; %ld runs with one failing (SQLite's every %ld), "
		      "%ld reported an error, %ld still succeeded\n",
		      name, own, sq, runs, step, nerr, runs - nerr);
	return runs;
}

/* ------------------------------------------------------------------------
 * Fixtures.
 */

static void
copy_file(const char *from, const char *to)
{
	char buf[65536];
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	size_t n;

	OP_CHECK((in) != NULL);
	OP_CHECK((out) != NULL);
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		OP_CHECK((fwrite(buf, 1, n, out)) == (n));
	OP_CHECK((fclose(out)) == (0));
	fclose(in);
}

static const char wire[] = "Subject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\n";
static const char eml[] = "Subject: hi\r\n\r\n.dotted\r\nbody\r\n";
#define NEVENTS 7

/* One session with every kind of record: what the proxy writes. */
static void
record_session(struct store *st, int64_t *sidp, int64_t *midp)
{
	static const struct {
		const char *address, *params, *reply;
		int code;
	} rcpts[2] = {
		{ "a@example.org", "NOTIFY=NEVER", "250 2.1.5 Ok", 250 },
		{ "b@example.org", NULL, "550 5.1.1 no", 550 },
	};
	struct store_session s = { 0 };
	struct store_transaction tx = { 0 };
	struct store_rcpt r = { 0 };
	struct store_message m = { 0 };
	struct store_message_end end = { 0 };
	struct store_event ev = { 0 };
	int64_t sid = store_session_new_id(st), mid = store_message_new_id(st), t = 1700000000000000LL;
	static const struct {
		enum store_side side;
		enum store_kind kind;
		const char *text, *raw;
	} evs[NEVENTS] = {
		{ STORE_SIDE_CLIENT, STORE_KIND_CONNECT, "127.0.0.1:5000", NULL },
		{ STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, NULL, "220 hi\r\n" },
		{ STORE_SIDE_CLIENT, STORE_KIND_COMMAND, NULL, "MAIL FROM:<x@y>\r\n" },
		{ STORE_SIDE_CLIENT, STORE_KIND_DATA, NULL, wire },
		{ STORE_SIDE_PROXY, STORE_KIND_ACTION, "injected", "421 bye\r\n" },
		{ STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, NULL, "250 ok\r\n" },
		{ STORE_SIDE_CLIENT, STORE_KIND_CLOSE, "quit", NULL },
	};
	int i;

	s.id = sid;
	s.started_us = t;
	s.listener = "127.0.0.1:2525";
	s.client = "127.0.0.1:5000";
	s.upstream = "mx.example.org:25";
	s.mode = "relay";
	store_session_open(st, &s);
	store_session_set_upstream_addr(st, sid, "[::1]:25");
	store_session_set_tls(st, sid, STORE_SIDE_CLIENT, "{\"version\":\"TLSv1.3\"}");
	store_session_set_auth(st, sid, "PLAIN", "user@example.org");
	tx.session_id = sid;
	tx.idx = 1;
	tx.started_us = t + 2;
	tx.mail_seq = 3;
	tx.mail_from = "x@y";
	tx.mail_params = "SIZE=10";
	store_transaction_open(st, &tx);
	store_transaction_mail_reply(st, sid, 1, 250, "250 2.1.0 Ok");
	for (i = 0; i < 2; i++) {
		r.session_id = sid;
		r.transaction_idx = 1;
		r.idx = i + 1;
		r.address = rcpts[i].address;
		r.params = rcpts[i].params;
		r.reply_code = rcpts[i].code;
		r.reply = rcpts[i].reply;
		store_rcpt_add(st, &r);
	}
	m.id = mid;
	m.transaction_idx = 1;
	m.session_id = sid;
	m.idx = 1;
	m.started_us = t + 5;
	m.mail_from = "x@y";
	m.mail_params = "SIZE=10";
	m.transport = "data";
	for (i = 0; i < NEVENTS; i++) {
		if (evs[i].kind == STORE_KIND_DATA)
			store_message_open(st, &m);
		ev.session_id = sid;
		ev.seq = i + 1;
		ev.t_us = t + i;
		ev.side = evs[i].side;
		ev.kind = evs[i].kind;
		ev.message_row = evs[i].kind == STORE_KIND_DATA ? mid : 0;
		ev.text = evs[i].text;
		ev.raw = evs[i].raw;
		ev.raw_len = evs[i].raw != NULL ? strlen(evs[i].raw) : 0;
		store_event_add(st, &ev);
		if (evs[i].kind == STORE_KIND_DATA) {
			end.id = mid;
			end.ended_us = t + 9;
			end.size = sizeof(eml) - 1;
			end.complete = true;
			end.subject = "hi";
			end.reply_code = 250;
			end.reply = "250 ok";
			store_message_close(st, &end);
		}
	}
	store_session_close(st, sid, t + 10, "quit", NULL);
	*sidp = sid;
	*midp = mid;
}

static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	struct store *st;
	char err[256];

	if (fx == NULL)
		return -1;
	/* tmpfs when there is one: a few thousand databases are created and
	 * synced, and fsync on a disk would make this take a minute. */
	snprintf(fx->dir, sizeof(fx->dir), "%s/smtptap-allocfail-XXXXXX",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	if (mkdtemp(fx->dir) == NULL)
		return -1;
	snprintf(fx->db, sizeof(fx->db), "%s/full.db", fx->dir);
	snprintf(fx->template, sizeof(fx->template), "%s/empty.db", fx->dir);
	snprintf(fx->work, sizeof(fx->work), "%s/work.db", fx->dir);
	snprintf(fx->log, sizeof(fx->log), "%s/stderr", fx->dir);
	snprintf(fx->unfinished, sizeof(fx->unfinished), "%s/unfinished.db", fx->dir);
	if ((st = store_open(fx->template, err, sizeof(err))) == NULL || store_close(st) != 0)
		return -1;
	if ((st = store_open(fx->db, err, sizeof(err))) == NULL)
		return -1;
	record_session(st, &fx->sid, &fx->mid);
	if (store_close(st) != 0)
		return -1;
	if ((st = store_open(fx->unfinished, err, sizeof(err))) == NULL)
		return -1;
	store_session_open(st, &(struct store_session){ .id = store_session_new_id(st), .started_us = 1,
							.listener = "l", .client = "c", .mode = "sink" });
	if (store_close(st) != 0)
		return -1;
	*state = fx;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fx->dir);
	if (system(cmd) != 0)
		return -1;
	free(fx);
	return 0;
}

/* ------------------------------------------------------------------------
 * Store operations.
 */

static void
remove_db(const char *path)
{
	char p[160];

	unlink(path);
	snprintf(p, sizeof(p), "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof(p), "%s-shm", path);
	unlink(p);
}

/* Open and close a new database (creation and every migration). */
static enum run_result
op_store_open(struct fixture *fx, char *why, size_t whysz)
{
	struct store *st;
	char err[256] = "";
	int rc;

	remove_db(fx->work);
	atomic_store(&armed, true);
	st = store_open(fx->work, err, sizeof(err));
	rc = st != NULL ? store_close(st) : -1;
	atomic_store(&armed, false);
	if (st == NULL) {
		snprintf(why, whysz, "%s", err);
		/* A failed open must leave a file the next open accepts: no
		 * half-applied migration. */
		if ((st = store_open(fx->work, err, sizeof(err))) == NULL)
			OP_FAIL("store_open after a failed one: %s", err);
		OP_CHECK((store_close(st)) == (0));
		return RUN_ERROR;
	}
	return rc == 0 ? RUN_OK : RUN_ERROR;
}

/* Record a session into a copy of the empty database, close, and check
 * that a clean close means every record is there.  A failure here is
 * reported by the store on stderr (store_close's -1 is "already logged"). */
static enum run_result
op_store_record(struct fixture *fx, char *why, size_t whysz)
{
	struct store *st;
	char err[256] = "";
	int64_t sid, mid;
	int rc;

	/* store_open has its own test: here it runs unarmed. */
	(void)why;
	(void)whysz;
	remove_db(fx->work);
	copy_file(fx->template, fx->work);
	st = store_open(fx->work, err, sizeof(err));
	if (st == NULL)
		OP_FAIL("store_open: %s", err);
	atomic_store(&armed, true);
	record_session(st, &sid, &mid);
	rc = store_close(st);
	atomic_store(&armed, false);
	if (rc != 0)
		return RUN_ERROR; /* logged by the store: checked by the loop */
	return check_recorded(fx->work, sid, mid);
}

/* Every session. */
static const struct reader_filter all;

static int
outcome_cb(const struct reader_session *row, void *arg)
{
	bool *ok = arg;

	*ok = row->outcome != NULL && strcmp(row->outcome, "interrupted") == 0;
	return 0;
}

/* Reopen a database a crash left with a live session: store_open marks it
 * interrupted (store_recover).  A clean run must have done so. */
static enum run_result
op_store_recover(struct fixture *fx, char *why, size_t whysz)
{
	struct reader *rd;
	struct store *st;
	char err[256] = "";
	bool ok = false;
	int rc;

	remove_db(fx->work);
	copy_file(fx->unfinished, fx->work);
	atomic_store(&armed, true);
	st = store_open(fx->work, err, sizeof(err));
	rc = st != NULL ? store_close(st) : -1;
	atomic_store(&armed, false);
	if (st == NULL) {
		snprintf(why, whysz, "%s", err);
		return RUN_ERROR;
	}
	if (rc != 0)
		return RUN_ERROR;
	if ((rd = reader_open(fx->work, err, sizeof(err))) == NULL)
		OP_FAIL("reading back %s: %s", fx->work, err);
	OP_CHECK((reader_sessions(rd, &all, NULL, outcome_cb, &ok, NULL, err, sizeof(err))) == (0));
	reader_close(rd);
	if (!ok)
		OP_FAIL("store_open succeeded but the crashed session is not marked interrupted");
	return RUN_OK;
}

struct counts {
	int nsessions, nevents, nmessages, nrcpts;
	size_t data_len;
	bool bytes_ok;
};

static int
count_session_cb(const struct reader_session *row, void *arg)
{
	struct counts *c = arg;

	c->nsessions++;
	if (row->outcome == NULL || strcmp(row->outcome, "quit") != 0 || row->upstream_addr == NULL ||
	    strcmp(row->upstream_addr, "[::1]:25") != 0 || row->client_tls == NULL)
		c->bytes_ok = false;
	return 0;
}

static int
count_event_cb(const struct reader_event *row, void *arg)
{
	struct counts *c = arg;

	if (row->seq != ++c->nevents)
		c->bytes_ok = false;
	return 0;
}

static int
count_message_cb(const struct reader_message *row, void *arg)
{
	struct counts *c = arg;

	c->nmessages++;
	c->nrcpts += (int)row->nrcpts;
	if (row->subject == NULL || strcmp(row->subject, "hi") != 0 || !row->complete)
		c->bytes_ok = false;
	return 0;
}

static int
sum_chunk_cb(const void *data, size_t len, void *arg)
{
	struct counts *c = arg;

	if (c->data_len + len > sizeof(wire) - 1 || memcmp(wire + c->data_len, data, len) != 0)
		c->bytes_ok = false;
	c->data_len += len;
	return 0;
}

/* Read everything back (unarmed) and compare with record_session(). */
static enum run_result
check_recorded(const char *path, int64_t sid, int64_t mid)
{
	struct reader *rd;
	struct counts c = { .bytes_ok = true };
	char err[256];

	rd = reader_open(path, err, sizeof(err));
	if (rd == NULL)
		OP_FAIL("reading back %s: %s", path, err);
	OP_CHECK((reader_session(rd, sid, count_session_cb, &c, err, sizeof(err))) == (0));
	OP_CHECK((reader_events(rd, sid, READER_BYTES_NONE, count_event_cb, &c, err, sizeof(err))) == (0));
	OP_CHECK((reader_messages(rd, sid, count_message_cb, &c, err, sizeof(err))) == (0));
	OP_CHECK((reader_message_content(rd, mid, READER_CONTENT_WIRE, sum_chunk_cb, &c, err, sizeof(err))) == (0));
	reader_close(rd);
	if (c.nsessions != 1 || c.nevents != NEVENTS || c.nmessages != 1 || c.nrcpts != 2 ||
	    c.data_len != sizeof(wire) - 1 || !c.bytes_ok)
		OP_FAIL("store_close returned 0 but the session is not all there: %d sessions, %d events, "
			 "%d messages, %d rcpts, %zu data bytes, content %s",
			 c.nsessions, c.nevents, c.nmessages, c.nrcpts, c.data_len, c.bytes_ok ? "ok" : "wrong");
	return RUN_OK;
}

/* Every reader walk over the populated database. */
static enum run_result
op_store_read(struct fixture *fx, char *why, size_t whysz)
{
	struct reader *rd;
	struct counts c = { .bytes_ok = true };
	char err[256] = "";
	int r = 0;

	atomic_store(&armed, true);
	rd = reader_open(fx->db, err, sizeof(err));
	if (rd != NULL) {
		/* one request, every walk (and the event bytes loaded) */
		r = reader_begin(rd, err, sizeof(err));
		if (r == 0)
			r = reader_sessions(rd, &all, NULL, count_session_cb, &c, NULL, err, sizeof(err));
		if (r == 0)
			r = reader_events(rd, fx->sid, READER_BYTES_ALL, count_event_cb, &c, err, sizeof(err));
		if (r == 0)
			r = reader_messages(rd, fx->sid, count_message_cb, &c, err, sizeof(err));
		if (r == 0)
			r = reader_message_content(rd, fx->mid, READER_CONTENT_WIRE, sum_chunk_cb, &c, err, sizeof(err));
		reader_end(rd);
		reader_close(rd);
	}
	atomic_store(&armed, false);
	if (rd == NULL || r != 0) {
		if (r > 0)
			OP_FAIL("a reader walk returned %d (a callback stop value) on an allocation failure", r);
		snprintf(why, whysz, "%s", err);
		return RUN_ERROR;
	}
	if (c.nsessions != 1 || c.nevents != NEVENTS || c.nmessages != 1 || c.nrcpts != 2 ||
	    c.data_len != sizeof(wire) - 1 || !c.bytes_ok)
		OP_FAIL("readers succeeded with wrong rows: %d sessions, %d events, %d messages, %d rcpts, "
			 "%zu bytes, content %s",
			 c.nsessions, c.nevents, c.nmessages, c.nrcpts, c.data_len, c.bytes_ok ? "ok" : "wrong");
	return RUN_OK;
}

/* export: the message list, then the message as .eml and as mbox. */
static enum run_result
op_export(struct fixture *fx, char *why, size_t whysz)
{
	struct reader *rd;
	struct export_message *list = NULL;
	char err[256] = "", *eml_out = NULL, *mbox_out = NULL;
	size_t n = 0, eml_len = 0, mbox_len = 0;
	FILE *f1, *f2;
	int r = -1, r1 = -1, r2 = -1;

	/* The memstreams allocate inside libc, which is not counted. */
	f1 = open_memstream(&eml_out, &eml_len);
	f2 = open_memstream(&mbox_out, &mbox_len);
	OP_CHECK(f1 != NULL && f2 != NULL);
	/* reader_open is tortured with the readers: unarmed here. */
	rd = reader_open(fx->db, err, sizeof(err));
	atomic_store(&armed, true);
	if (rd != NULL) {
		r = export_message_list(rd, fx->sid, &list, &n, err, sizeof(err));
		if (r == 0 && n == 1) {
			r1 = export_write_eml(rd, &list[0], f1, err, sizeof(err));
			if (r1 == EXPORT_OK)
				r2 = export_write_mbox(rd, &list[0], f2, err, sizeof(err));
		}
		if (r == 0)
			export_message_list_free(list, n);
		reader_close(rd);
	}
	atomic_store(&armed, false);
	OP_CHECK((fclose(f1)) == (0));
	OP_CHECK((fclose(f2)) == (0));
	if (rd == NULL || r != 0 || r1 != EXPORT_OK || r2 != EXPORT_OK) {
		free(eml_out);
		free(mbox_out);
		if (r == 0 && n != 1)
			OP_FAIL("export_message_list succeeded with %zu messages", n);
		if (r1 == EXPORT_EWRITE || r2 == EXPORT_EWRITE)
			OP_FAIL("an allocation failure reported as a write error: %s", err);
		snprintf(why, whysz, "%s", err);
		return RUN_ERROR;
	}
	if (eml_len != sizeof(eml) - 1 || memcmp(eml_out, eml, eml_len) != 0)
		OP_FAIL("export_write_eml succeeded with the wrong bytes (%zu)", eml_len);
	if (mbox_len < sizeof(eml) || strstr(mbox_out, "\n.dotted\r\n") == NULL ||
	    strncmp(mbox_out, "From x@y ", 9) != 0)
		OP_FAIL("export_write_mbox succeeded with the wrong bytes (%zu)", mbox_len);
	free(eml_out);
	free(mbox_out);
	return RUN_OK;
}

/* ------------------------------------------------------------------------
 * Tests.
 */

static void
test_store_open(void **state)
{
	long n;

	n = torture(*state, "store_open/store_close", op_store_open);
	assert_true(n > 10);
}

static void
test_store_recover(void **state)
{
	long n;

	n = torture(*state, "reopening after a crash", op_store_recover);
	assert_true(n > 10);
}

static void
test_store_record(void **state)
{
	long n;

	n = torture(*state, "recording a session", op_store_record);
	assert_true(n > 10);
}

static void
test_store_read(void **state)
{
	long n;

	n = torture(*state, "store readers", op_store_read);
	assert_true(n > 10);
}

static void
test_export(void **state)
{
	long n;

	n = torture(*state, "export", op_export);
	assert_true(n > 10);
}

/*
 * The rules engine: parsing (every rule kind, so every allocation path of
 * the parser, the regex analysis and the index is reached) and a session's
 * counters.  A failure must give NULL and "out of memory" in err, never a
 * half-built set; rules_decide must not allocate at all.
 */
static const char rules_text[] =
	"on rcpt to ~ \"^bad@\" reply 550 5.1.1 \"No such user\" \"second line\"\n"
	"on mail session 1-2 from ~* \"@x\\.org$\" reply 451 4.3.0 \"Try again later\"\n"
	"on data-end header X-Test ~ \"(a|b)c+\" header Subject !~ \"x\" size > 1M probability 25% reply 552\n"
	"on ehlo strip STARTTLS,PIPELINING,CHUNKING\n"
	"on reply rcpt code 4xx,25x rewrite 451\n"
	"on connect client 10.0.0.0/8 listener :2525 delay 5s\n"
	"on command occurrence 3- limit 2 reply 502\n";

static enum run_result
op_rules(struct fixture *fx, char *why, size_t whysz)
{
	static struct rules_decision dec;
	struct rules_unit u;
	struct rules_facts f;
	struct rules_session *rs = NULL;
	struct rules *r;
	char err[1024] = "";

	(void)fx;
	atomic_store(&armed, true);
	r = rules_parse("t.rules", rules_text, sizeof(rules_text) - 1, 7, err, sizeof(err));
	if (r != NULL)
		rs = rules_session_new(r);
	atomic_store(&armed, false);
	if (r == NULL) {
		if (strstr(err, "t.rules") == NULL || strstr(err, "out of memory") == NULL)
			OP_FAIL("rules_parse failed without saying it ran out of memory: %s", err);
		snprintf(why, whysz, "%s", err);
		return RUN_ERROR;
	}
	if (rules_count(r) != 7)
		OP_FAIL("rules_parse succeeded with %zu rules", rules_count(r));
	if (rs == NULL) {
		rules_unref(r);
		snprintf(why, whysz, "rules_session_new: out of memory");
		return RUN_ERROR;
	}
	memset(&u, 0, sizeof(u));
	memset(&f, 0, sizeof(f));
	u.trigger = RULES_ON_COMMAND;
	u.verb = SMTP_VERB_NOOP;
	f.session_no = 1;
	OP_CHECK(!rules_decide(r, rs, &u, &f, &dec));
	OP_CHECK(!rules_decide(r, rs, &u, &f, &dec));
	OP_CHECK(rules_decide(r, rs, &u, &f, &dec) && dec.line == 7);
	rules_session_free(rs);
	rules_unref(r);
	return RUN_OK;
}

static void
test_rules(void **state)
{
	long n;

	n = torture(*state, "rules_parse", op_rules);
	assert_true(n > 20);
}

/* The parsers and the JSON writer do not allocate at all (smtp.h, json.h
 * promise it); the torture loop would see zero calls.  Checked directly so
 * that a change that starts allocating is noticed and gets tortured. */
static void
test_pure_modules_do_not_allocate(void **state)
{
	static const char cmd[] = "MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME\r\n";
	static const char rep[] = "250-mx Hello\r\n250 2.1.0 Ok\r\n";
	static const char data[] = "a\r\n..b\r\n.\r\n";
	struct smtp_cmd c;
	struct smtp_reply_line rl;
	struct smtp_ehlo_kw kw;
	struct smtp_data d;
	struct json j;
	char out[sizeof(data) + 2], *jbuf = NULL;
	size_t olen, jlen = 0;
	FILE *f;

	(void)state;
	f = open_memstream(&jbuf, &jlen);
	assert_non_null(f);
	atomic_store(&ncalls[SRC_OWN], 0);
	atomic_store(&ncalls[SRC_SQLITE], 0);
	atomic_store(&fail_at[SRC_OWN], 0);
	atomic_store(&fail_at[SRC_SQLITE], 0);
	atomic_store(&armed, true);
	assert_int_equal(smtp_parse_command(cmd, sizeof(cmd) - 1, &c), 0);
	assert_int_equal(smtp_parse_reply_line(rep, sizeof(rep) - 1, &rl), 0);
	assert_int_equal(smtp_parse_ehlo_keyword("SIZE 100", 8, &kw), 0);
	smtp_data_init(&d);
	assert_int_equal(smtp_data_scan(&d, data, sizeof(data) - 1, out, &olen), sizeof(data) - 1);
	json_init(&j, f, 1);
	json_object_begin(&j);
	json_kv_string(&j, "s", "caf\xc3\xa9 \xff");
	json_key(&j, "a");
	json_array_begin(&j);
	json_int(&j, -1);
	json_array_end(&j);
	json_object_end(&j);
	assert_int_equal(json_finish(&j), 0);
	assert_true(json_valid("{\"a\": [1, 2.5, null]}", 21));
	atomic_store(&armed, false);
	/* rules_decide, on every kind of condition, allocates nothing */
	{
		static const char *const rcpts[] = { "bad@x" };
		static struct rules_decision dec;
		struct rules *r = rules_parse("t", rules_text, sizeof(rules_text) - 1, 7, NULL, 0);
		struct rules_session *rs = rules_session_new(r);
		struct rules_unit u;
		struct rules_facts fa;
		int t;

		assert_non_null(rs);
		memset(&fa, 0, sizeof(fa));
		fa.session_no = 1;
		fa.listener = "127.0.0.1:2525";
		atomic_store(&armed, true);
		for (t = 0; t < 6; t++) {
			memset(&u, 0, sizeof(u));
			u.trigger = (enum rules_trigger)t;
			u.verb = t == RULES_ON_REPLY ? SMTP_VERB_RCPT : SMTP_VERB_MAIL;
			u.code = 451;
			u.mail_from = "a@x.org";
			u.mail_from_len = 7;
			u.rcpts = rcpts;
			u.nrcpts = 1;
			u.headers = "Subject: x\r\nX-Test: ac\r\n\r\n";
			u.headers_len = strlen(u.headers);
			u.has_size = true;
			u.size = 2 << 20;
			rules_decide(r, rs, &u, &fa, &dec);
		}
		atomic_store(&armed, false);
		rules_session_free(rs);
		rules_unref(r);
	}
	assert_int_equal(fclose(f), 0);
	free(jbuf);
	assert_int_equal(atomic_load(&ncalls[SRC_OWN]), 0);
}

/* The header summary allocates only through iconv_open (charsets other
 * than UTF-8, US-ASCII and ISO-8859-1): a failed one keeps the word as
 * written, and the summary stays clean. */
static void
test_mime_iconv_open_fails(void **state)
{
	static const char msg[] = "Subject: =?windows-1252?Q?=80uro?= and =?KOI8-R?B?8NLJ18XU?=\r\n"
				  "From: =?UTF-8?B?QWxpY2U=?= <a@x>\r\n\r\nbody\r\n";
	struct mime_hdr_parser *p = malloc(sizeof(*p));
	struct mime_summary *s = malloc(sizeof(*s));
	long n;
	bool done = false;

	(void)state;
	assert_true(p != NULL && s != NULL);
	for (n = 1; n <= 100 && !done; n++) {
		atomic_store(&ncalls[SRC_OWN], 0);
		atomic_store(&nfailed, 0);
		atomic_store(&fail_at[SRC_OWN], n);
		atomic_store(&armed, true);
		mime_hdr_init(p);
		mime_hdr_feed(p, msg, sizeof(msg) - 1);
		mime_hdr_summarise(p, s);
		atomic_store(&armed, false);
		assert_string_equal(s->from, "Alice <a@x>");
		if (atomic_load(&nfailed) == 0) {
			assert_string_equal(s->subject, "\xe2\x82\xacuro and \xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82");
			done = true;
		} else {
			/* The word that could not be converted is kept. */
			assert_true(strstr(s->subject, "=?") != NULL);
		}
	}
	assert_true(done);
	assert_int_equal(n - 1, 3); /* two iconv_open calls, then a clean run */
	free(p);
	free(s);
}

/* The JSON record reader allocates its buffer, its member array (grown)
 * and a heap copy of a long number: each failing must give
 * JSONREAD_ENOMEM (not "invalid") and an empty object, never a leak. */
static void
test_jsonread_allocations_fail(void **state)
{
	char text[4096];
	struct jsonread_obj o;
	size_t len = 0;
	long n, calls;
	int i, r;
	bool done = false;

	(void)state;
	len += (size_t)snprintf(text + len, sizeof(text) - len, "{\"long\": 1.%070d", 1);
	for (i = 0; i < 40; i++)
		len += (size_t)snprintf(text + len, sizeof(text) - len, ", \"k%d\": \"v\\u00e9%d\"", i, i);
	len += (size_t)snprintf(text + len, sizeof(text) - len, "}");
	for (n = 1; n <= 100 && !done; n++) {
		atomic_store(&ncalls[SRC_OWN], 0);
		atomic_store(&nfailed, 0);
		atomic_store(&fail_at[SRC_OWN], n);
		atomic_store(&armed, true);
		r = jsonread_object(&o, text, len);
		atomic_store(&armed, false);
		calls = atomic_load(&ncalls[SRC_OWN]);
		if (atomic_load(&nfailed) == 0) {
			assert_int_equal(r, JSONREAD_OK);
			assert_int_equal(o.n, 41);
			assert_string_equal(jsonread_get_string(&o, "k39", NULL), "v\xc3\xa9" "39");
			done = true;
		} else {
			assert_int_equal(r, JSONREAD_ENOMEM);
			assert_true(o.m == NULL && o.n == 0 && o.buf == NULL);
		}
		jsonread_free(&o);
	}
	assert_true(done);
	/* buffer, number copy, and the member array grown a few times */
	assert_true(calls >= 3);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pure_modules_do_not_allocate),
		cmocka_unit_test(test_mime_iconv_open_fails),
		cmocka_unit_test(test_jsonread_allocations_fail),
		cmocka_unit_test_setup_teardown(test_store_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_recover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_read, setup, teardown),
		cmocka_unit_test_setup_teardown(test_export, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rules, setup, teardown),
	};

	alloc_install_sqlite();
	if (store_global_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
