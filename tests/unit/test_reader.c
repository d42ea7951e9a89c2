/*
 * test_reader.c - unit tests for the reader API (src/reader.c,
 * reader_json.c) over databases recorded through the real store writer.
 *
 * Each test gets a fresh directory under /tmp, removed afterwards.  The
 * sessions are written with the store's recording calls (as a proxy
 * does), then read back: every filter, the pages and their edges, a
 * request's snapshot while the writer adds rows, events with and without
 * their bytes, content streamed in pieces, the JSON document in memory,
 * and the query plans of the listings that must never scan the sessions
 * table.
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
#include <inttypes.h>
#include <regex.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "smtptap/json.h"
#include "smtptap/reader.h"
#include "smtptap/reader_json.h"
#include "smtptap/store.h"

#define T0 INT64_C(1700000000000000) /* 2023-11-14T22:13:20Z */
#define SEC INT64_C(1000000)

struct fixture {
	char dir[64];
	char db[128];
};

/* One session to record. */
struct spec {
	const char *client;	  /* "10.0.0.1:1234" */
	const char *upstream;	  /* NULL: sink */
	const char *sender;	  /* NULL: no MAIL */
	const char *rcpts[3];	  /* recipients of the one transaction */
	const char *subject;	  /* NULL: no message (RCPT without DATA) */
	const char *msgid;	  /* Message-ID header */
	const char *outcome;	  /* NULL: still live */
	const char *client_tls;	  /* JSON, or NULL */
	const char *upstream_tls; /* JSON, or NULL */
	int64_t started_us;
};

/* Ids collected from a listing. */
struct ids {
	int64_t v[256];
	size_t n;
};

struct buf {
	unsigned char *p;
	size_t len, cap;
	size_t max_piece, npieces;
	int stop_after; /* return 9 after this many pieces; 0: never */
};

static int setup(void **state);
static int teardown(void **state);
static struct store *store_ok(const char *path);
static struct reader *reader_ok(const char *path);
static void wait_drained(struct store *st);
static int64_t record(struct store *st, const struct spec *sp);
static int ids_cb(const struct reader_session *s, void *arg);
static void list(struct reader *rd, const struct reader_filter *f, const struct reader_page *pg, struct ids *out,
		 struct reader_page_info *info);
static void expect_ids(const struct ids *got, const int64_t *want, size_t n, const char *what);
static int buf_cb(const void *data, size_t len, void *arg);
static const struct spec *corpus(size_t *n);

static int
setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));

	assert_non_null(fx);
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/smtptap-reader-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	snprintf(fx->db, sizeof(fx->db), "%s/t.db", fx->dir);
	*state = fx;
	return 0;
}

/* Remove dir and what is in it, one level of subdirectories deep (the
 * database's PATH-content/ segments). */
static void
rm_tree(const char *dir, int depth)
{
	struct dirent *de;
	struct stat sb;
	char path[512];
	DIR *d;

	if ((d = opendir(dir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			if (depth > 0 && lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
				rm_tree(path, depth - 1);
			else
				unlink(path);
		}
		closedir(d);
	}
	rmdir(dir);
}

static int
teardown(void **state)
{
	struct fixture *fx = *state;

	rm_tree(fx->dir, 1);
	free(fx);
	return 0;
}

static struct store *
store_ok(const char *path)
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

/* The writer commits asynchronously: wait until it has caught up
 * (bounded: 20 s). */
static void
wait_drained(struct store *st)
{
	struct timespec ms = { 0, 1000000 };
	int i;

	for (i = 0; i < 20000 && store_backlog_bytes(st) > 0; i++)
		nanosleep(&ms, NULL);
	assert_int_equal(store_backlog_bytes(st), 0);
}

static void
event(struct store *st, int64_t sid, int64_t seq, int64_t t, enum store_side side, enum store_kind kind,
      int64_t msg, const char *raw)
{
	struct store_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.session_id = sid;
	ev.seq = seq;
	ev.t_us = t;
	ev.side = side;
	ev.kind = kind;
	ev.message_row = msg;
	ev.raw = raw;
	ev.raw_len = raw != NULL ? strlen(raw) : 0;
	if (kind == STORE_KIND_REPLY)
		ev.answers_seq = seq - 1;
	if (kind == STORE_KIND_CONNECT)
		ev.text = "connected";
	store_event_add(st, &ev);
}

/*
 * Record one session the way a proxy would: connect, EHLO, MAIL, RCPTs,
 * then (with a subject) one message whose data comes in two events, the
 * second with a dot-stuffed line; then the close, unless live.
 */
static int64_t
record(struct store *st, const struct spec *sp)
{
	struct store_session s = { 0 };
	struct store_transaction tx = { 0 };
	struct store_rcpt r = { 0 };
	struct store_message m = { 0 };
	struct store_message_end me = { 0 };
	int64_t sid = store_session_new_id(st), t = sp->started_us, seq = 0, mid;
	char line[256];
	int i;

	s.id = sid;
	s.started_us = t;
	s.listener = "127.0.0.1:2525";
	s.client = sp->client;
	s.upstream = sp->upstream;
	s.mode = sp->upstream != NULL ? "relay" : "sink";
	store_session_open(st, &s);
	if (sp->client_tls != NULL)
		store_session_set_tls(st, sid, STORE_SIDE_CLIENT, sp->client_tls);
	if (sp->upstream_tls != NULL)
		store_session_set_tls(st, sid, STORE_SIDE_UPSTREAM, sp->upstream_tls);
	event(st, sid, ++seq, t, STORE_SIDE_CLIENT, STORE_KIND_CONNECT, 0, NULL);
	event(st, sid, ++seq, t + 1, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, "EHLO client.test\r\n");
	event(st, sid, ++seq, t + 2, STORE_SIDE_PROXY, STORE_KIND_REPLY, 0, "250 ok\r\n");
	if (sp->sender != NULL) {
		snprintf(line, sizeof(line), "MAIL FROM:<%s>\r\n", sp->sender);
		event(st, sid, ++seq, t + 3, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, line);
		tx.session_id = sid;
		tx.idx = 1;
		tx.started_us = t + 3;
		tx.mail_seq = seq;
		tx.mail_from = sp->sender;
		tx.mail_code = 250;
		tx.mail_reply = "250 2.1.0 Ok";
		store_transaction_open(st, &tx);
		event(st, sid, ++seq, t + 4, STORE_SIDE_PROXY, STORE_KIND_REPLY, 0, "250 2.1.0 Ok\r\n");
		for (i = 0; i < 3 && sp->rcpts[i] != NULL; i++) {
			snprintf(line, sizeof(line), "RCPT TO:<%s>\r\n", sp->rcpts[i]);
			event(st, sid, ++seq, t + 5, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, line);
			r.session_id = sid;
			r.transaction_idx = 1;
			r.idx = i + 1;
			r.rcpt_seq = seq;
			r.address = sp->rcpts[i];
			r.reply_code = 250;
			r.reply = "250 2.1.5 Ok";
			store_rcpt_add(st, &r);
			event(st, sid, ++seq, t + 6, STORE_SIDE_PROXY, STORE_KIND_REPLY, 0, "250 2.1.5 Ok\r\n");
		}
	}
	if (sp->sender != NULL && sp->subject != NULL) {
		event(st, sid, ++seq, t + 7, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, 0, "DATA\r\n");
		event(st, sid, ++seq, t + 8, STORE_SIDE_PROXY, STORE_KIND_REPLY, 0, "354 go\r\n");
		mid = store_message_new_id(st);
		m.id = mid;
		m.session_id = sid;
		m.transaction_idx = 1;
		m.idx = 1;
		m.started_us = t + 8;
		m.mail_from = sp->sender;
		m.transport = "data";
		store_message_open(st, &m);
		snprintf(line, sizeof(line), "Subject: %s\r\nMessage-ID: %s\r\n\r\n", sp->subject,
			 sp->msgid != NULL ? sp->msgid : "<none@x>");
		event(st, sid, ++seq, t + 9, STORE_SIDE_CLIENT, STORE_KIND_DATA, mid, line);
		event(st, sid, ++seq, t + 10, STORE_SIDE_CLIENT, STORE_KIND_DATA, mid, "body\r\n..dot\r\n.\r\n");
		event(st, sid, ++seq, t + 11, STORE_SIDE_PROXY, STORE_KIND_REPLY, 0, "250 queued\r\n");
		me.id = mid;
		me.ended_us = t + 11;
		me.size = strlen(line) + strlen("body\r\n.dot\r\n");
		me.complete = true;
		me.subject = sp->subject;
		me.from = "";
		me.to = "";
		me.message_id_hdr = sp->msgid != NULL ? sp->msgid : "";
		me.date = "";
		me.reply_code = 250;
		me.reply = "250 queued";
		store_message_close(st, &me);
	}
	if (sp->outcome != NULL) {
		event(st, sid, ++seq, t + 12, STORE_SIDE_CLIENT, STORE_KIND_CLOSE, 0, NULL);
		store_session_close(st, sid, t + 12, sp->outcome, NULL);
	}
	return sid;
}

static int
ids_cb(const struct reader_session *s, void *arg)
{
	struct ids *l = arg;

	assert_true(l->n < sizeof(l->v) / sizeof(l->v[0]));
	l->v[l->n++] = s->id;
	return 0;
}

static void
list(struct reader *rd, const struct reader_filter *f, const struct reader_page *pg, struct ids *out,
     struct reader_page_info *info)
{
	char err[256] = "";

	out->n = 0;
	if (reader_sessions(rd, f, pg, ids_cb, out, info, err, sizeof(err)) != READER_OK)
		fail_msg("reader_sessions: %s", err);
}

static void
expect_ids(const struct ids *got, const int64_t *want, size_t n, const char *what)
{
	char g[512] = "", w[512] = "";
	size_t i, k = 0, m = 0;
	bool same = got->n == n;

	for (i = 0; i < got->n; i++) {
		k += (size_t)snprintf(g + k, sizeof(g) - k, " %" PRId64, got->v[i]);
		if (k >= sizeof(g))
			k = sizeof(g) - 1;
	}
	for (i = 0; i < n; i++) {
		m += (size_t)snprintf(w + m, sizeof(w) - m, " %" PRId64, want[i]);
		if (m >= sizeof(w))
			m = sizeof(w) - 1;
		if (i < got->n && got->v[i] != want[i])
			same = false;
	}
	if (!same)
		fail_msg("%s: got [%s ], want [%s ]", what, g, w);
}

static int
buf_cb(const void *data, size_t len, void *arg)
{
	struct buf *b = arg;

	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	if (len > b->max_piece)
		b->max_piece = len;
	b->npieces++;
	if (b->stop_after > 0 && (int)b->npieces == b->stop_after)
		return 9;
	return 0;
}

/*
 * The sessions of the filter tests, ids 1..9 in this order.  Start times
 * one minute apart from T0.
 */
static const struct spec *
corpus(size_t *n)
{
	static const char tls[] = "{\"version\": \"TLSv1.3\", \"cipher\": \"TLS_AES_128_GCM_SHA256\", \"mode\": "
				  "\"starttls\"}";
	static struct spec v[] = {
		/* 1 */ { "10.0.0.1:1111", NULL, "alice@example.com", { "bob@example.org" }, "Invoice 42",
			  "<m1@example.com>", "quit", NULL, NULL, 0 },
		/* 2 */ { "10.0.0.2:2222", "mx.example:25", "Bob@Example.COM", { "carol@other.net", "Dave@EXAMPLE.org" },
			  "Password reset", "<m2@example.com>", "client-closed", NULL, NULL, 0 },
		/* 3: RCPT without DATA, the null sender, over IPv6 with client TLS */
		{ "[::1]:3333", NULL, "", { "postmaster@example.org" }, NULL, NULL, "quit", tls, NULL, 0 },
		/* 4: still live, a v4 client of a dual-stack listener, upstream TLS */
		{ "[::ffff:10.0.0.9]:4444", "mx.example:25", "x@sub.example.com", { "eve@sub.example.org" }, "100%_off",
		  "<m4@example.com>", NULL, NULL, tls, 0 },
		/* 5 */ { "192.168.1.5:5555", NULL, "alice@example.com", { "carol@other.net" }, "invoice 43 (again)",
			  "<m5@example.com>", "upstream-closed", NULL, NULL, 0 },
		/* 6: no transaction at all */
		{ "10.0.0.1:6666", NULL, NULL, { NULL }, NULL, NULL, "client-timeout", NULL, NULL, 0 },
		/* 7 */ { "10.0.0.1:7777", NULL, "news@lists.example.net", { "bob@example.org", "zed@example.org" },
			  "Weekly 100% news", "<m7@example.com>", "quit", NULL, NULL, 0 },
		/* 8: a Subject with LIKE's escape character */
		{ "10.0.1.8:8888", NULL, "alice@example.com", { "BOB@example.org" }, "back\\slash", "m8@example.com", "quit",
		  NULL, NULL, 0 },
		/* 9 */ { "10.0.0.200:9999", "mx.example:25", "ops@example.com", { "oncall@example.org" }, "ALERT disk",
			  "<m9@example.com>", "quit", tls, tls, 0 },
	};
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		v[i].started_us = T0 + (int64_t)i * 60 * SEC;
	*n = sizeof(v) / sizeof(v[0]);
	return v;
}

static void
record_corpus(const char *db)
{
	const struct spec *v;
	struct store *st;
	size_t i, n;

	v = corpus(&n);
	st = store_ok(db);
	for (i = 0; i < n; i++)
		assert_int_equal(record(st, &v[i]), (int64_t)i + 1);
	assert_int_equal(store_close(st), 0);
}

/* ------------------------------------------------------------------------
 * Filters
 */

#define EXPECT(f, ...)                                                                              \
	do {                                                                                        \
		static const int64_t want_[] = { __VA_ARGS__ };                                      \
		list(rd, &(f), &newest, &got, NULL);                                                 \
		expect_ids(&got, want_[0] == 0 ? NULL : want_, want_[0] == 0 ? 0 : sizeof(want_) / sizeof(want_[0]), \
			   #f);                                                                      \
	} while (0)

static void
test_filters(void **state)
{
	struct fixture *fx = *state;
	static const struct reader_page newest = { .limit = 0 }; /* all, newest first */
	struct reader_id_range r[2];
	struct reader_filter f;
	struct reader *rd;
	struct ids got;
	int64_t n;
	char err[256];

	record_corpus(fx->db);
	rd = reader_ok(fx->db);

	memset(&f, 0, sizeof(f));
	EXPECT(f, 9, 8, 7, 6, 5, 4, 3, 2, 1);
	assert_int_equal(reader_sessions_count(rd, &f, &n, err, sizeof(err)), READER_OK);
	assert_int_equal(n, 9);

	/* sender: exact (any case, with or without <>), domain, null sender */
	memset(&f, 0, sizeof(f));
	f.sender = "ALICE@example.com";
	EXPECT(f, 8, 5, 1);
	f.sender = "<alice@example.com>";
	EXPECT(f, 8, 5, 1);
	f.sender = "@example.com";
	EXPECT(f, 9, 8, 5, 2, 1); /* not sub.example.com (4) nor lists.example.net (7) */
	f.sender = "@EXAMPLE.COM";
	EXPECT(f, 9, 8, 5, 2, 1);
	f.sender = "<>";
	EXPECT(f, 3);
	f.sender = "";
	EXPECT(f, 3);
	f.sender = "nobody@example.com";
	EXPECT(f, 0);
	assert_int_equal(reader_sessions_count(rd, &f, &n, err, sizeof(err)), READER_OK);
	assert_int_equal(n, 0);

	/* recipient: exact, any reply, also without DATA (3); domain */
	memset(&f, 0, sizeof(f));
	f.recipient = "bob@example.org";
	EXPECT(f, 8, 7, 1);
	f.recipient = "postmaster@example.org";
	EXPECT(f, 3);
	f.recipient = "@example.org";
	EXPECT(f, 9, 8, 7, 3, 2, 1); /* 7 has two recipients there: listed once */
	assert_int_equal(reader_sessions_count(rd, &f, &n, err, sizeof(err)), READER_OK);
	assert_int_equal(n, 6);
	f.recipient = "@sub.example.org";
	EXPECT(f, 4);

	/* both: every filter must match */
	f.recipient = "bob@example.org";
	f.sender = "alice@example.com";
	EXPECT(f, 8, 1);
	f.sender = "@lists.example.net";
	EXPECT(f, 7);
	f.sender = "@example.net"; /* a domain is exact: not its subdomains */
	EXPECT(f, 0);

	/* time: since inclusive, until exclusive */
	memset(&f, 0, sizeof(f));
	f.since_us = T0 + 6 * 60 * SEC;
	EXPECT(f, 9, 8, 7);
	f.until_us = T0 + 8 * 60 * SEC;
	EXPECT(f, 8, 7);
	f.since_us = 0;
	f.until_us = T0 + 60 * SEC;
	EXPECT(f, 1);

	/* subject: a substring, ASCII case ignored, LIKE's wildcards literal */
	memset(&f, 0, sizeof(f));
	f.subject = "invoice";
	EXPECT(f, 5, 1);
	f.subject = "100%";
	EXPECT(f, 7, 4);
	f.subject = "%_";
	EXPECT(f, 4);
	f.subject = "_";
	EXPECT(f, 4);
	f.subject = "k\\s";
	EXPECT(f, 8);
	f.subject = "Pass";
	EXPECT(f, 2);

	/* Message-ID: with or without <>, whatever the header had */
	memset(&f, 0, sizeof(f));
	f.message_id = "m2@example.com";
	EXPECT(f, 2);
	f.message_id = "<m2@example.com>";
	EXPECT(f, 2);
	f.message_id = "<m8@example.com>";
	EXPECT(f, 8);

	/* client: one address (v4 also as a mapped v6), a block, v6 */
	memset(&f, 0, sizeof(f));
	f.client = "10.0.0.1";
	EXPECT(f, 7, 6, 1);
	f.client = "10.0.0.9";
	EXPECT(f, 4);
	f.client = "10.0.0.0/24";
	EXPECT(f, 9, 7, 6, 4, 2, 1);
	f.client = "10.0.0.0/8";
	EXPECT(f, 9, 8, 7, 6, 4, 2, 1);
	f.client = "::1";
	EXPECT(f, 3);
	f.client = "[::1]";
	EXPECT(f, 3);
	f.client = "::/0";
	EXPECT(f, 3);
	f.client = "192.168.0.0/16";
	EXPECT(f, 5);

	/* outcome, live, mode, TLS */
	memset(&f, 0, sizeof(f));
	f.outcome = "quit";
	EXPECT(f, 9, 8, 7, 3, 1);
	f.outcome = "live";
	EXPECT(f, 4);
	memset(&f, 0, sizeof(f));
	f.mode = "relay";
	EXPECT(f, 9, 4, 2);
	f.mode = "sink";
	EXPECT(f, 8, 7, 6, 5, 3, 1);
	memset(&f, 0, sizeof(f));
	f.tls = READER_TLS_YES;
	EXPECT(f, 9, 4, 3);
	f.tls = READER_TLS_NO;
	EXPECT(f, 8, 7, 6, 5, 2, 1);

	/* ids: ranges and lists */
	memset(&f, 0, sizeof(f));
	r[0].first = 2;
	r[0].last = 4;
	r[1].first = 8;
	r[1].last = 8;
	f.ids = r;
	f.nids = 2;
	EXPECT(f, 8, 4, 3, 2);
	f.outcome = "quit";
	EXPECT(f, 8, 3);
	r[0].first = r[0].last = 100;
	f.nids = 1;
	EXPECT(f, 0);

	/* everything at once */
	memset(&f, 0, sizeof(f));
	f.sender = "@example.com";
	f.recipient = "@example.org";
	f.since_us = T0;
	f.until_us = T0 + 9 * 60 * SEC;
	f.subject = "a";
	f.client = "10.0.0.0/8";
	f.outcome = "quit";
	f.mode = "sink";
	f.tls = READER_TLS_NO;
	EXPECT(f, 8);

	reader_close(rd);
}

/* Each bad value is refused, naming its field; never run as SQL. */
static void
test_filter_check(void **state)
{
	static const struct {
		const char *field;
		struct reader_filter f;
	} bad[] = {
		{ "sender", { .sender = "@" } },
		{ "sender", { .sender = "a\nb@x" } },
		{ "recipient", { .recipient = "" } },
		{ "recipient", { .recipient = "<>" } },
		{ "subject", { .subject = "" } },
		{ "message_id", { .message_id = "" } },
		{ "client", { .client = "10.0.0.0/33" } },
		{ "client", { .client = "example.com" } },
		{ "client", { .client = "::1/129" } },
		{ "outcome", { .outcome = "quit; DROP TABLE sessions" } },
		{ "outcome", { .outcome = "" } },
		{ "mode", { .mode = "proxy" } },
		{ "until", { .since_us = 10, .until_us = 10 } },
		{ "since", { .since_us = -1 } },
	};
	struct fixture *fx = *state;
	struct reader_id_range r = { 5, 4 };
	struct reader_filter f;
	struct reader *rd;
	struct ids got;
	const char *field;
	char err[256];
	size_t i;

	record_corpus(fx->db);
	rd = reader_ok(fx->db);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		field = NULL;
		err[0] = '\0';
		if (reader_filter_check(&bad[i].f, &field, err, sizeof(err)) == 0)
			fail_msg("bad value %zu accepted", i);
		assert_non_null(field);
		assert_string_equal(field, bad[i].field);
		assert_true(strlen(err) > 0);
		/* the listing refuses it the same way */
		got.n = 0;
		assert_int_equal(reader_sessions(rd, &bad[i].f, NULL, ids_cb, &got, NULL, err, sizeof(err)), READER_ERROR);
		assert_int_equal(got.n, 0);
	}
	memset(&f, 0, sizeof(f));
	f.ids = &r;
	f.nids = 1;
	assert_int_equal(reader_filter_check(&f, &field, err, sizeof(err)), -1);
	assert_string_equal(field, "ids");
	/* hostile text is only ever a bound value: it matches nothing */
	memset(&f, 0, sizeof(f));
	f.recipient = "x' OR '1'='1";
	list(rd, &f, NULL, &got, NULL);
	assert_int_equal(got.n, 0);
	f.recipient = NULL;
	f.subject = "' OR 1=1 --";
	list(rd, &f, NULL, &got, NULL);
	assert_int_equal(got.n, 0);
	reader_close(rd);
}

/* ------------------------------------------------------------------------
 * Pages
 */

static void
test_pages(void **state)
{
	struct fixture *fx = *state;
	static const struct spec one = { "10.0.0.1:1", NULL, "a@x", { "b@y" }, "s", "<i@x>", "quit", NULL, NULL, T0 };
	struct reader_page_info info;
	struct reader_page pg;
	struct reader_filter f;
	struct reader *rd;
	struct store *st;
	struct ids got;
	int i;

	/* an empty database: empty pages, never "more" */
	st = store_ok(fx->db);
	assert_int_equal(store_close(st), 0);
	rd = reader_ok(fx->db);
	memset(&f, 0, sizeof(f));
	memset(&pg, 0, sizeof(pg));
	pg.limit = 3;
	list(rd, &f, &pg, &got, &info);
	assert_int_equal(got.n, 0);
	assert_false(info.more);
	assert_int_equal(info.min_id, 0);
	reader_close(rd);

	st = store_ok(fx->db);
	for (i = 0; i < 10; i++)
		record(st, &one);
	assert_int_equal(store_close(st), 0);
	rd = reader_ok(fx->db);

	/* newest first, three at a time, following the cursor */
	{
		static const int64_t p1[] = { 10, 9, 8 }, p2[] = { 7, 6, 5 }, p4[] = { 1 };
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, p1, 3, "page 1");
		assert_true(info.more);
		assert_int_equal(info.min_id, 8);
		assert_int_equal(info.max_id, 10);
		pg.before_id = info.min_id;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, p2, 3, "page 2");
		assert_true(info.more);
		pg.before_id = 2;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, p4, 1, "last page");
		assert_false(info.more);
	}
	/* an exact last page: full, and nothing more */
	pg.before_id = 4;
	list(rd, &f, &pg, &got, &info);
	assert_int_equal(got.n, 3);
	assert_false(info.more);
	/* a cursor past the end, either way */
	pg.before_id = 1;
	list(rd, &f, &pg, &got, &info);
	assert_int_equal(got.n, 0);
	assert_false(info.more);
	pg.before_id = 0;
	pg.after_id = 10;
	list(rd, &f, &pg, &got, &info);
	assert_int_equal(got.n, 0);
	assert_false(info.more);
	pg.after_id = 1000;
	list(rd, &f, &pg, &got, &info);
	assert_int_equal(got.n, 0);
	/* after: the oldest three above the cursor, oldest first on request */
	{
		static const int64_t a_new[] = { 6, 5, 4 }, a_old[] = { 4, 5, 6 }, b_old[] = { 8, 9, 10 },
				     both[] = { 7, 6, 5 }, all_old[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
		pg.after_id = 3;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, a_new, 3, "after 3, newest first");
		assert_true(info.more);
		pg.oldest_first = true;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, a_old, 3, "after 3, oldest first");
		pg.after_id = 7;
		list(rd, &f, &pg, &got, &info);
		assert_false(info.more); /* 8, 9, 10: exactly the rest */
		pg.after_id = 0;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, b_old, 3, "newest three, oldest first");
		assert_true(info.more);
		/* both cursors: the range between, from the newest */
		pg.oldest_first = false;
		pg.after_id = 2;
		pg.before_id = 8;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, both, 3, "between 2 and 8");
		assert_true(info.more);
		/* no limit: all, in the order asked */
		pg.after_id = pg.before_id = 0;
		pg.limit = 0;
		pg.oldest_first = true;
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, all_old, 10, "all, oldest first");
		assert_false(info.more);
	}
	/* a filter and a cursor together */
	memset(&pg, 0, sizeof(pg));
	pg.limit = 2;
	f.recipient = "B@Y";
	pg.before_id = 5;
	{
		static const int64_t w[] = { 4, 3 };
		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, w, 2, "recipient before 5");
		assert_true(info.more);
	}
	reader_close(rd);
}

/* ------------------------------------------------------------------------
 * Plans: the listings that must never scan the sessions table
 */

/* A plan line that reads the whole sessions table (alias s), with or
 * without an index: "SCAN s", "SCAN sessions", "SCAN s USING INDEX ...".
 * "SCAN page" (the page being reversed, at most `limit` rows) is fine. */
static bool
plan_scans_sessions(const char *plan)
{
	regex_t re;
	bool hit;

	assert_int_equal(regcomp(&re, "(^|\n)SCAN (s|sessions)( |\n|$)", REG_EXTENDED), 0);
	hit = regexec(&re, plan, 0, NULL, 0) == 0;
	regfree(&re);
	return hit;
}

static void
test_plans(void **state)
{
	struct fixture *fx = *state;
	struct reader_filter f;
	struct reader_page pg;
	struct reader *rd;
	char plan[4096], err[256];
	int order;

	record_corpus(fx->db);
	rd = reader_ok(fx->db);
	/* The checker itself must catch a full scan. */
	assert_true(plan_scans_sessions("SCAN s"));
	assert_true(plan_scans_sessions("CO-ROUTINE page\nSCAN sessions USING INDEX sessions_outcome"));
	assert_false(plan_scans_sessions("SCAN page\nSEARCH s USING INTEGER PRIMARY KEY (rowid<?)"));

	for (order = 0; order < 2; order++) {
		/* the default listing: the newest 50 (sessions prints them
		 * oldest first) */
		memset(&f, 0, sizeof(f));
		memset(&pg, 0, sizeof(pg));
		pg.limit = 50;
		pg.oldest_first = order == 1;
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "rowid<?") == NULL)
			fail_msg("the newest 50 scan the sessions table:\n%s", plan);
		/* the next page */
		pg.before_id = 1000;
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan))
			fail_msg("a page before a cursor scans the sessions table:\n%s", plan);
		/* --to ADDR --since WHEN: from the recipients' index */
		pg.before_id = 0;
		f.recipient = "bob@example.org";
		f.since_us = T0;
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "recipients_address") == NULL)
			fail_msg("--to --since does not search the recipients' index:\n%s", plan);
		/* a domain: its own index */
		f.recipient = "@example.org";
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "recipients_domain") == NULL)
			fail_msg("--to @domain does not search the domain index:\n%s", plan);
		/* the sender's, and the two together */
		f.recipient = NULL;
		f.sender = "alice@example.com";
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "transactions_mail_from") == NULL)
			fail_msg("--from does not search the senders' index:\n%s", plan);
		f.sender = "@example.com";
		f.recipient = "bob@example.org";
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan))
			fail_msg("--from --to scans the sessions table:\n%s", plan);
		/* Message-ID, client address, outcome */
		memset(&f, 0, sizeof(f));
		f.message_id = "<m1@example.com>";
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "messages_message_id_hdr") == NULL)
			fail_msg("--message-id does not use its index:\n%s", plan);
		memset(&f, 0, sizeof(f));
		f.client = "10.0.0.1";
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "sessions_client_ip") == NULL)
			fail_msg("--client ADDR does not use its index:\n%s", plan);
		memset(&f, 0, sizeof(f));
		f.outcome = "quit";
		assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
		if (plan_scans_sessions(plan) || strstr(plan, "sessions_outcome") == NULL)
			fail_msg("--outcome does not use its index:\n%s", plan);
	}
	reader_close(rd);
}

/*
 * The two ways a time filter runs (reader_listing_plan): a range holding
 * few sessions drives the listing from sessions_started; a wide one
 * leaves it to the address's index (or the rowid).  Both must give the
 * same sessions as a plain reading of the rows would.  6000 sessions,
 * one a second, written straight in SQL: every 10th has the recipient
 * x@a.org, every one a recipient at b.org.
 */
static void
test_time_paths(void **state)
{
	struct fixture *fx = *state;
	struct reader_filter f;
	struct reader_page pg;
	struct reader *rd;
	struct store *st;
	struct ids got;
	int64_t want[256], i, n;
	char plan[4096], err[256], sql[1024], *msg = NULL;
	sqlite3 *db;
	size_t nwant;

	st = store_ok(fx->db);
	assert_int_equal(store_close(st), 0);
	assert_int_equal(sqlite3_open(fx->db, &db), SQLITE_OK);
	/* one statement each (a recursive CTE counts 1..6000): quick, even
	 * under valgrind */
	snprintf(sql, sizeof(sql),
		 "BEGIN;"
		 "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000) "
		 "INSERT INTO sessions (id, started_us, ended_us, client, mode, outcome, client_ip) "
		 "SELECT i, %" PRId64 " + i * %" PRId64 ", %" PRId64 " + i * %" PRId64 " + 1, '10.0.0.1:1', 'sink', "
		 "'quit', '10.0.0.1' FROM n;"
		 "INSERT INTO transactions (session_id, idx, started_us, mail_from) "
		 "SELECT id, 1, 0, 's@c.org' FROM sessions;"
		 "INSERT INTO recipients (session_id, transaction_idx, idx, address) "
		 "SELECT id, 1, 1, CASE WHEN id %% 10 = 0 THEN 'x@a.org' ELSE 'y@b.org' END FROM sessions;"
		 "INSERT INTO recipients (session_id, transaction_idx, idx, address) "
		 "SELECT id, 1, 2, 'z@b.org' FROM sessions WHERE id %% 10 = 0;",
		 T0, SEC, T0, SEC);
	if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
		fail_msg("insert: %s", msg);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	rd = reader_ok(fx->db);
	memset(&pg, 0, sizeof(pg));
	pg.limit = 50;

	/* wide: since the 100th second, over 4096 sessions in range: the
	 * recipient's index drives */
	memset(&f, 0, sizeof(f));
	f.recipient = "x@a.org";
	f.since_us = T0 + 100 * SEC;
	assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
	if (plan_scans_sessions(plan) || strstr(plan, "recipients_address") == NULL || strstr(plan, "sessions_started"))
		fail_msg("a wide --since with --to does not walk the recipients' index:\n%s", plan);
	list(rd, &f, &pg, &got, NULL);
	for (nwant = 0, i = 6000; nwant < 50; i -= 10)
		want[nwant++] = i;
	expect_ids(&got, want, nwant, "wide since, recipient");
	assert_int_equal(reader_sessions_count(rd, &f, &n, err, sizeof(err)), READER_OK);
	assert_int_equal(n, 591); /* 100, 110, ..., 6000 */

	/* narrow: a minute: the time index drives, the recipient is tested */
	f.until_us = T0 + 160 * SEC;
	assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
	if (plan_scans_sessions(plan) || strstr(plan, "sessions_started") == NULL)
		fail_msg("a narrow time range does not drive from sessions_started:\n%s", plan);
	list(rd, &f, &pg, &got, NULL);
	{
		static const int64_t w[] = { 150, 140, 130, 120, 110, 100 };
		expect_ids(&got, w, 6, "narrow range, recipient");
	}
	/* a domain with two matching recipients in one session: listed once */
	f.recipient = "@b.org";
	f.since_us = T0 + 5991 * SEC;
	f.until_us = 0;
	list(rd, &f, &pg, &got, NULL);
	{
		static const int64_t w[] = { 6000, 5999, 5998, 5997, 5996, 5995, 5994, 5993, 5992, 5991 };
		expect_ids(&got, w, 10, "narrow since, domain");
	}
	assert_int_equal(reader_sessions_count(rd, &f, &n, err, sizeof(err)), READER_OK);
	assert_int_equal(n, 10);
	/* wide, with the domain: its index, once per session */
	f.since_us = T0 + 1000 * SEC;
	pg.limit = 3;
	list(rd, &f, &pg, &got, NULL);
	{
		static const int64_t w[] = { 6000, 5999, 5998 };
		expect_ids(&got, w, 3, "wide since, domain");
	}
	/* an --until before everything: nothing, found at once */
	memset(&f, 0, sizeof(f));
	f.until_us = T0;
	f.sender = "s@c.org";
	list(rd, &f, &pg, &got, NULL);
	assert_int_equal(got.n, 0);
	assert_int_equal(reader_sessions_plan(rd, &f, &pg, plan, sizeof(plan), err, sizeof(err)), READER_OK);
	if (strstr(plan, "sessions_started") == NULL)
		fail_msg("an empty time range does not use sessions_started:\n%s", plan);
	/* pages through a narrow range */
	memset(&f, 0, sizeof(f));
	f.since_us = T0 + 11 * SEC;
	f.until_us = T0 + 21 * SEC;
	pg.limit = 4;
	pg.before_id = 15;
	{
		static const int64_t w[] = { 14, 13, 12, 11 };
		struct reader_page_info info;

		list(rd, &f, &pg, &got, &info);
		expect_ids(&got, w, 4, "a page of a narrow range");
		assert_false(info.more);
	}
	reader_close(rd);
}

/* ------------------------------------------------------------------------
 * One request, one snapshot
 */

struct ev_count {
	int n;
};

static int
count_ev_cb(const struct reader_event *ev, void *arg)
{
	struct ev_count *c = arg;

	(void)ev;
	c->n++;
	return 0;
}

static void
test_snapshot(void **state)
{
	struct fixture *fx = *state;
	static const struct spec sp = { "10.0.0.1:1", NULL, "a@x", { "b@y" }, "s", "<i@x>", "quit", NULL, NULL, T0 };
	struct reader_filter f;
	struct reader *rd;
	struct store *st;
	struct ids before, inside, after;
	struct ev_count c = { 0 };
	int64_t n1, n2, sid;
	char err[256];

	memset(&f, 0, sizeof(f));
	st = store_ok(fx->db);
	record(st, &sp);
	record(st, &sp);
	wait_drained(st);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_begin(rd, err, sizeof(err)), READER_OK);
	/* requests do not nest */
	assert_int_equal(reader_begin(rd, err, sizeof(err)), READER_ERROR);
	list(rd, &f, NULL, &before, NULL);
	assert_int_equal(before.n, 2);
	assert_int_equal(reader_sessions_count(rd, &f, &n1, err, sizeof(err)), READER_OK);

	/* the proxy's writer adds a session and commits it meanwhile */
	sid = record(st, &sp);
	wait_drained(st);

	/* inside the request: not there, neither in a listing, nor a count,
	 * nor by id, nor its events */
	list(rd, &f, NULL, &inside, NULL);
	assert_int_equal(inside.n, 2);
	assert_int_equal(reader_sessions_count(rd, &f, &n2, err, sizeof(err)), READER_OK);
	assert_int_equal(n1, n2);
	assert_int_equal(reader_session(rd, sid, ids_cb, &inside, err, sizeof(err)), READER_NOTFOUND);
	assert_int_equal(reader_events(rd, sid, READER_BYTES_ALL, count_ev_cb, &c, err, sizeof(err)), READER_OK);
	assert_int_equal(c.n, 0);
	reader_end(rd);

	/* the next request sees it */
	list(rd, &f, NULL, &after, NULL);
	assert_int_equal(after.n, 3);
	assert_int_equal(after.v[0], sid);
	assert_int_equal(reader_events(rd, sid, READER_BYTES_ALL, count_ev_cb, &c, err, sizeof(err)), READER_OK);
	assert_true(c.n > 0);
	reader_end(rd); /* no request open: harmless */
	reader_close(rd);
	assert_int_equal(store_close(st), 0);
}

/* ------------------------------------------------------------------------
 * Events, their bytes, content
 */

struct ev_seen {
	int n, with_raw, data, data_with_raw;
	size_t data_len;
	bool lines_ok;
};

static int
seen_cb(const struct reader_event *ev, void *arg)
{
	struct ev_seen *s = arg;

	s->n++;
	assert_int_equal(ev->session_id, 1);
	assert_int_equal(ev->seq, s->n);
	if (ev->raw != NULL) {
		s->with_raw++;
		assert_true(ev->has_raw);
	}
	if (ev->kind == STORE_KIND_DATA) {
		s->data++;
		s->data_len += ev->raw_len; /* known without the bytes */
		if (ev->raw != NULL)
			s->data_with_raw++;
	}
	if (ev->kind == STORE_KIND_COMMAND && ev->raw != NULL && ev->seq == 2)
		s->lines_ok = ev->raw_len == 18 && memcmp(ev->raw, "EHLO client.test\r\n", 18) == 0;
	if (ev->kind == STORE_KIND_REPLY)
		assert_int_equal(ev->answers_seq, ev->seq - 1);
	return 0;
}

static int
nested_cb(const struct reader_event *ev, void *arg)
{
	struct reader *rd = arg;
	struct ev_seen s = { 0 };
	char err[256] = "";

	(void)ev;
	/* a walk inside a walk is refused, not a corrupted statement */
	assert_int_equal(reader_events(rd, 1, READER_BYTES_NONE, seen_cb, &s, err, sizeof(err)), READER_ERROR);
	assert_non_null(strstr(err, "inside another"));
	return 5;
}

static void
test_events(void **state)
{
	struct fixture *fx = *state;
	struct ev_seen none = { 0 }, lines = { 0 }, all = { 0 };
	struct buf b = { 0 };
	struct reader *rd;
	char err[256];

	record_corpus(fx->db);
	rd = reader_ok(fx->db);
	assert_int_equal(reader_events(rd, 1, READER_BYTES_NONE, seen_cb, &none, err, sizeof(err)), READER_OK);
	assert_int_equal(reader_events(rd, 1, READER_BYTES_LINES, seen_cb, &lines, err, sizeof(err)), READER_OK);
	assert_int_equal(reader_events(rd, 1, READER_BYTES_ALL, seen_cb, &all, err, sizeof(err)), READER_OK);
	assert_int_equal(none.n, 13);
	assert_int_equal(lines.n, 13);
	assert_int_equal(all.n, 13);
	/* no bytes unless asked; message data only with ALL */
	assert_int_equal(none.with_raw, 0);
	assert_int_equal(lines.data_with_raw, 0);
	assert_int_equal(lines.with_raw, 13 - 2 /* data */ - 2 /* connect, close: no bytes */);
	assert_true(lines.lines_ok);
	assert_int_equal(all.data_with_raw, 2);
	assert_int_equal(none.data_len, all.data_len);
	assert_int_equal(none.data_len, strlen("Subject: Invoice 42\r\nMessage-ID: <m1@example.com>\r\n\r\n") +
						strlen("body\r\n..dot\r\n.\r\n"));
	/* the callback's stop value comes back */
	assert_int_equal(reader_events(rd, 1, READER_BYTES_NONE, nested_cb, rd, err, sizeof(err)), 5);
	/* and the reader still works afterwards */
	memset(&none, 0, sizeof(none));
	assert_int_equal(reader_events(rd, 1, READER_BYTES_NONE, seen_cb, &none, err, sizeof(err)), READER_OK);
	assert_int_equal(none.n, 13);

	/* one event's bytes, streamed */
	assert_int_equal(reader_event_bytes(rd, 1, 2, buf_cb, &b, err, sizeof(err)), READER_OK);
	assert_int_equal(b.len, 18);
	assert_memory_equal(b.p, "EHLO client.test\r\n", 18);
	b.len = 0;
	assert_int_equal(reader_event_bytes(rd, 1, 1, buf_cb, &b, err, sizeof(err)), READER_OK); /* none */
	assert_int_equal(b.len, 0);
	assert_int_equal(reader_event_bytes(rd, 1, 999, buf_cb, &b, err, sizeof(err)), READER_NOTFOUND);
	free(b.p);
	reader_close(rd);
}

/* A message of 1 MiB and more, recorded as the proxy does (data events of
 * at most 64 KiB, dot-stuffed), streams back whole in bounded pieces:
 * as on the wire, and unstuffed as the client meant it. */
static void
test_content(void **state)
{
	struct fixture *fx = *state;
	struct store_session s = { 0 };
	struct store_message m = { 0 };
	struct store_message_end me = { 0 };
	struct store_event ev = { 0 };
	struct buf wire = { 0 }, msg = { 0 }, got = { 0 };
	struct reader *rd;
	struct store *st;
	char err[256];
	size_t i, off, n;
	int64_t seq = 0;

	/* the message: lines, some starting with a dot */
	for (i = 0; msg.len < 1100000; i++) {
		char line[100];

		n = (size_t)snprintf(line, sizeof(line), "%sline %zu of the message, some text to fill it up\r\n",
				     i % 7 == 0 ? "." : "", i);
		buf_cb(line, n, &msg);
		if (line[0] == '.')
			buf_cb(".", 1, &wire);
		buf_cb(line, n, &wire);
	}
	buf_cb(".\r\n", 3, &wire);

	st = store_ok(fx->db);
	s.id = store_session_new_id(st);
	s.started_us = T0;
	s.client = "10.0.0.1:1";
	s.mode = "sink";
	store_session_open(st, &s);
	m.id = store_message_new_id(st);
	m.session_id = s.id;
	m.idx = 1;
	m.started_us = T0;
	m.mail_from = "a@x";
	m.transport = "data";
	store_message_open(st, &m);
	for (off = 0; off < wire.len; off += n) {
		n = wire.len - off < 65536 ? wire.len - off : 65536;
		memset(&ev, 0, sizeof(ev));
		ev.session_id = s.id;
		ev.seq = ++seq;
		ev.t_us = T0 + seq;
		ev.side = STORE_SIDE_CLIENT;
		ev.kind = STORE_KIND_DATA;
		ev.message_row = m.id;
		ev.raw = wire.p + off;
		ev.raw_len = n;
		store_event_add(st, &ev);
	}
	me.id = m.id;
	me.ended_us = T0 + seq;
	me.size = msg.len;
	me.complete = true;
	store_message_close(st, &me);
	store_session_close(st, s.id, T0 + seq, "quit", NULL);
	assert_int_equal(store_close(st), 0);

	rd = reader_ok(fx->db);
	assert_int_equal(reader_message_content(rd, m.id, READER_CONTENT_WIRE, buf_cb, &got, err, sizeof(err)),
			 READER_OK);
	assert_int_equal(got.len, wire.len);
	assert_memory_equal(got.p, wire.p, wire.len);
	assert_true(got.max_piece <= STORE_READ_CHUNK);
	assert_true(got.npieces >= wire.len / STORE_READ_CHUNK);

	free(got.p);
	memset(&got, 0, sizeof(got));
	assert_int_equal(reader_message_content(rd, m.id, READER_CONTENT_MESSAGE, buf_cb, &got, err, sizeof(err)),
			 READER_OK);
	assert_int_equal(got.len, msg.len);
	assert_memory_equal(got.p, msg.p, msg.len);
	assert_true(got.max_piece <= STORE_READ_CHUNK);
	free(got.p);

	/* a stop value comes back at once */
	memset(&got, 0, sizeof(got));
	got.stop_after = 2;
	assert_int_equal(reader_message_content(rd, m.id, READER_CONTENT_MESSAGE, buf_cb, &got, err, sizeof(err)), 9);
	assert_int_equal(got.npieces, 2);
	free(got.p);
	/* no such message */
	memset(&got, 0, sizeof(got));
	assert_int_equal(reader_message_content(rd, m.id + 1, READER_CONTENT_WIRE, buf_cb, &got, err, sizeof(err)),
			 READER_NOTFOUND);
	assert_int_equal(got.len, 0);
	reader_close(rd);
	free(wire.p);
	free(msg.p);
}

/* ------------------------------------------------------------------------
 * Messages, transactions, JSON
 */

struct msg_seen {
	int n;
	int64_t id;
	size_t nrcpts;
	char subject[64];
};

static int
msg_cb(const struct reader_message *m, void *arg)
{
	struct msg_seen *s = arg;

	s->n++;
	s->id = m->id;
	s->nrcpts = m->nrcpts;
	snprintf(s->subject, sizeof(s->subject), "%s", m->subject);
	assert_int_equal(m->mail_code, 250);
	return 0;
}

static int
tx_cb(const struct reader_transaction *t, void *arg)
{
	struct msg_seen *s = arg;

	s->n++;
	s->nrcpts = t->nrcpts;
	s->id = t->nmessages;
	assert_string_equal(t->rcpts[0].address, "postmaster@example.org");
	assert_int_equal(t->rcpts[0].reply_code, 250);
	return 0;
}

static int
dup_cb(const struct reader_session *s, void *arg)
{
	return reader_session_dup(arg, s) == 0 ? 0 : 1;
}

static void
test_messages_and_json(void **state)
{
	struct fixture *fx = *state;
	struct msg_seen ms = { 0 }, ts = { 0 };
	struct reader_session s;
	struct reader *rd;
	struct json mem, file;
	const char *text;
	char err[256], *fbuf = NULL;
	size_t len, flen = 0;
	FILE *f;

	record_corpus(fx->db);
	rd = reader_ok(fx->db);
	assert_int_equal(reader_messages(rd, 2, msg_cb, &ms, err, sizeof(err)), READER_OK);
	assert_int_equal(ms.n, 1);
	assert_int_equal(ms.nrcpts, 2);
	assert_string_equal(ms.subject, "Password reset");
	/* session 3: a transaction without a message, its recipient kept */
	assert_int_equal(reader_messages(rd, 3, msg_cb, &ts, err, sizeof(err)), READER_OK);
	assert_int_equal(ts.n, 0);
	assert_int_equal(reader_transactions(rd, 3, tx_cb, &ts, err, sizeof(err)), READER_OK);
	assert_int_equal(ts.n, 1);
	assert_int_equal(ts.nrcpts, 1);
	assert_int_equal(ts.id, 0);

	/* the document into memory is the document into a FILE, and valid */
	assert_int_equal(reader_begin(rd, err, sizeof(err)), READER_OK);
	memset(&s, 0, sizeof(s));
	assert_int_equal(reader_session(rd, 9, dup_cb, &s, err, sizeof(err)), READER_OK);
	assert_int_equal(reader_session(rd, 99, dup_cb, &s, err, sizeof(err)), READER_NOTFOUND);
	json_init_mem(&mem, 0, 2);
	assert_int_equal(reader_json_document(rd, &s, &mem, err, sizeof(err)), READER_OK);
	assert_int_equal(json_finish(&mem), 0);
	f = open_memstream(&fbuf, &flen);
	assert_non_null(f);
	json_init(&file, f, 2);
	assert_int_equal(reader_json_document(rd, &s, &file, err, sizeof(err)), READER_OK);
	assert_int_equal(json_finish(&file), 0);
	fclose(f);
	reader_end(rd);
	text = json_mem_data(&mem, &len);
	assert_int_equal(len, flen);
	assert_memory_equal(text, fbuf, len);
	assert_true(json_valid(text, len));
	assert_non_null(strstr(fbuf, "\"text\": \"EHLO client.test\""));
	assert_non_null(strstr(fbuf, "\"client_tls\": {\"version\": \"TLSv1.3\""));
	assert_non_null(strstr(fbuf, "\"subject\": \"ALERT disk\""));
	/* a bound too small: a write error, not a crash or a partial success */
	json_mem_free(&mem);
	json_init_mem(&mem, 100, 2);
	assert_int_equal(reader_json_document(rd, &s, &mem, err, sizeof(err)), READER_OK);
	assert_true(mem.failed);
	json_mem_free(&mem);
	free(fbuf);
	reader_session_free(&s);
	reader_close(rd);
}

/* The reader refuses what is not an smtptap database, clearly. */
static void
test_open_errors(void **state)
{
	struct fixture *fx = *state;
	char err[256], path[256];
	FILE *f;

	err[0] = '\0';
	assert_null(reader_open(fx->db, err, sizeof(err))); /* missing */
	assert_true(strlen(err) > 0);
	snprintf(path, sizeof(path), "%s/junk.db", fx->dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("not a database at all, just some text long enough to be read", f);
	fclose(f);
	err[0] = '\0';
	assert_null(reader_open(path, err, sizeof(err)));
	assert_true(strlen(err) > 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_filters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_filter_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_plans, setup, teardown),
		cmocka_unit_test_setup_teardown(test_time_paths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_content, setup, teardown),
		cmocka_unit_test_setup_teardown(test_messages_and_json, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
