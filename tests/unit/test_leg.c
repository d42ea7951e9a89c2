/*
 * test_leg.c - unit tests for the leg layer (src/leg.c).
 *
 * Real sockets and one event_base per test: an AF_UNIX socketpair where
 * any stream will do, a loopback TCP pair where TCP matters (RST, connect,
 * TLS).  The test plays the peer on the raw end with non-blocking reads
 * between loop iterations.  Every wait is bounded by an iteration count
 * and a generous deadline (a safety net only: a 10 ms tick keeps
 * EVLOOP_ONCE from blocking past it); nothing asserts on elapsed time.
 * Negative checks ("no LEG_EV_READ while reading is off") run a few
 * non-blocking iterations after the bytes are already in the socket, so
 * an enabled event would be reported by the first epoll.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtptap/leg.h"
#include "smtptap/ca.h"
#include "smtptap/tls.h"

#define WAIT_STEPS 200000
#define WAIT_SECONDS 60
#define BIG (2 * 1024 * 1024) /* well above LEG_OUTPUT_HIGH */

/* A leg and what its callback saw. */
struct probe {
	struct leg leg;
	int n[LEG_EV_TIMEOUT_WRITE + 1]; /* events by kind */
	struct evbuffer *got;		 /* bytes LEG_EV_READ delivered */
	bool keep_input;		 /* leave them in leg_input() instead */
	size_t drained_len;		 /* leg_output_len() at the first LEG_EV_DRAINED */
};

/* The raw end of a connection, played by the test. */
struct peer {
	int fd;
	bool pump; /* read whatever arrives between loop iterations */
	struct evbuffer *got;
	bool eof;
	int err; /* errno of a failed read */
};

struct fx {
	struct event_base *base;
	struct event *tick;
	struct probe a, b;
	struct peer p;
	struct tls *tls;
	char root[256];
	char ca[300];
};

static int fx_setup(void **state);
static int fx_teardown(void **state);
static void tick_cb(evutil_socket_t fd, short what, void *arg);
static void probe_cb(struct leg *leg, enum leg_event ev, void *arg);
static int64_t now_ms(void);
static void pump(struct peer *p);
static void loop_step(struct fx *f);
static void spin(struct fx *f, int steps);
static void unix_pair(int *leg_fd, int *peer_fd);
static int tcp_listener(struct sockaddr_in *sin, bool listening);
static void tcp_pair(int *leg_fd, int *peer_fd);
static void take(struct fx *f, struct probe *pr, int fd);
static void small_sndbuf(int fd);
static void peer_send(int fd, const char *s);
static void recv_now(int fd, const char *want);
static void assert_buf(struct evbuffer *b, const char *want);
static void fill_pattern(unsigned char *buf, size_t n);
static void assert_pattern(struct evbuffer *b, size_t n);
static void tls_setup(struct fx *f);
static SSL *ssl_new(struct fx *f, bool server);
static int outcomes(const struct probe *pr);
static void connect_to(struct fx *f, const struct sockaddr_in *sin);
static void tls_cleanup(struct fx *f);

/* Loop until cond holds, or fail after WAIT_STEPS iterations or
 * WAIT_SECONDS (a hung leg must not hang the suite). */
#define WAIT(f, cond)                                                                                         \
	do {                                                                                                  \
		int64_t wait_end_ = now_ms() + WAIT_SECONDS * 1000;                                           \
		for (int wait_i_ = 0; !(cond); wait_i_++) {                                                   \
			if (wait_i_ >= WAIT_STEPS || now_ms() > wait_end_)                                    \
				fail_msg("gave up waiting for %s", #cond);                                    \
			loop_step(f);                                                                         \
		}                                                                                             \
	} while (0)

/* ------------------------------------------------------------------------
 * Helpers.
 */

static int
fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct timeval tv = { 0, 10 * 1000 };

	assert_non_null(f);
	f->base = event_base_new();
	assert_non_null(f->base);
	f->tick = event_new(f->base, -1, EV_PERSIST, tick_cb, NULL);
	assert_non_null(f->tick);
	assert_int_equal(event_add(f->tick, &tv), 0);
	f->a.got = evbuffer_new();
	f->b.got = evbuffer_new();
	f->p.got = evbuffer_new();
	assert_true(f->a.got && f->b.got && f->p.got);
	f->p.fd = -1;
	*state = f;
	return 0;
}

static int
fx_teardown(void **state)
{
	struct fx *f = *state;

	leg_close(&f->a.leg, LEG_CLOSE_NOW);
	leg_close(&f->b.leg, LEG_CLOSE_NOW);
	if (f->p.fd >= 0)
		close(f->p.fd);
	event_free(f->tick);
	event_base_free(f->base); /* runs the freed bufferevents' finalizers */
	if (f->tls != NULL)
		tls_free(f->tls); /* after every SSL made from it */
	if (f->root[0] != '\0')
		tls_cleanup(f);
	evbuffer_free(f->a.got);
	evbuffer_free(f->b.got);
	evbuffer_free(f->p.got);
	free(f);
	return 0;
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static void
probe_cb(struct leg *leg, enum leg_event ev, void *arg)
{
	struct probe *pr = arg;

	assert_ptr_equal(leg, &pr->leg);
	pr->n[ev]++;
	if (ev == LEG_EV_READ && !pr->keep_input)
		assert_int_equal(evbuffer_add_buffer(pr->got, leg_input(leg)), 0);
	if (ev == LEG_EV_DRAINED && pr->n[ev] == 1)
		pr->drained_len = leg_output_len(leg);
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
pump(struct peer *p)
{
	char buf[65536];

	for (int i = 0; i < 64 && p->pump && p->fd >= 0 && !p->eof && p->err == 0; i++) {
		ssize_t n = recv(p->fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n > 0)
			assert_int_equal(evbuffer_add(p->got, buf, (size_t)n), 0);
		else if (n == 0)
			p->eof = true;
		else if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		else if (errno != EINTR)
			p->err = errno;
	}
}

static void
loop_step(struct fx *f)
{
	pump(&f->p);
	assert_int_not_equal(event_base_loop(f->base, EVLOOP_ONCE), -1);
	pump(&f->p);
}

static void
spin(struct fx *f, int steps)
{
	for (int i = 0; i < steps; i++) {
		pump(&f->p);
		assert_int_not_equal(event_base_loop(f->base, EVLOOP_NONBLOCK), -1);
	}
}

static void
unix_pair(int *leg_fd, int *peer_fd)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	*leg_fd = sv[0];
	*peer_fd = sv[1];
}

/* A TCP socket on 127.0.0.1, port picked by the kernel (in sin). */
static int
tcp_listener(struct sockaddr_in *sin, bool listening)
{
	socklen_t sl = sizeof(*sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)sin, sizeof(*sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)sin, &sl), 0);
	if (listening)
		assert_int_equal(listen(fd, 8), 0);
	return fd;
}

/* Both ends of a loopback TCP connection. */
static void
tcp_pair(int *leg_fd, int *peer_fd)
{
	struct sockaddr_in sin;
	int l = tcp_listener(&sin, true);

	*peer_fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(*peer_fd >= 0);
	assert_int_equal(connect(*peer_fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	*leg_fd = accept(l, NULL, NULL);
	assert_true(*leg_fd >= 0);
	close(l);
}

/* leg_accept() on fd, with its real peer address. */
static void
take(struct fx *f, struct probe *pr, int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	memset(&ss, 0, sizeof(ss));
	assert_int_equal(getpeername(fd, (struct sockaddr *)&ss, &sl), 0);
	assert_int_equal(evutil_make_socket_nonblocking(fd), 0);
	assert_int_equal(leg_accept(&pr->leg, f->base, fd, (struct sockaddr *)&ss, probe_cb, pr), 0);
}

/* So that a few hundred kilobytes fill the socket whatever the sysctls. */
static void
small_sndbuf(int fd)
{
	int sz = 64 * 1024;

	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
}

static void
peer_send(int fd, const char *s)
{
	assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* The bytes are already there: no loop, no wait. */
static void
recv_now(int fd, const char *want)
{
	char buf[512];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

	if (n < 0)
		fail_msg("recv: %s (wanted \"%s\" already there)", strerror(errno), want);
	assert_int_equal(n, (ssize_t)strlen(want));
	assert_memory_equal(buf, want, (size_t)n);
}

static void
assert_buf(struct evbuffer *b, const char *want)
{
	size_t len = evbuffer_get_length(b);

	assert_int_equal(len, strlen(want));
	if (len > 0)
		assert_memory_equal(evbuffer_pullup(b, -1), want, len);
}

static void
fill_pattern(unsigned char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = (unsigned char)(i % 251 + i / 65536);
}

static void
assert_pattern(struct evbuffer *b, size_t n)
{
	unsigned char *want = malloc(n);

	assert_non_null(want);
	fill_pattern(want, n);
	assert_int_equal(evbuffer_get_length(b), n);
	assert_memory_equal(evbuffer_pullup(b, -1), want, n);
	free(want);
}

/* A struct tls with a fresh CA in a temporary directory. */
static void
tls_setup(struct fx *f)
{
	struct tls_config cfg;
	char err[512];

	snprintf(f->root, sizeof(f->root), "%s/smtptap-test-leg.XXXXXX",
		 getenv("TMPDIR") != NULL && strlen(getenv("TMPDIR")) < 200 ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(f->root));
	snprintf(f->ca, sizeof(f->ca), "%s/ca", f->root);
	memset(&cfg, 0, sizeof(cfg));
	cfg.ca_dir = f->ca;
	f->tls = tls_new(&cfg, true, true, err, sizeof(err));
	if (f->tls == NULL)
		fail_msg("tls_new: %s", err);
}

/* An SSL for the server side (a client leg) or the client side. */
static SSL *
ssl_new(struct fx *f, bool server)
{
	char err[512];
	SSL *ssl = server ? tls_server_ssl_new(f->tls, NULL, "localhost", err, sizeof(err))
			  : tls_client_ssl_new(f->tls, "localhost", "localhost", err, sizeof(err));

	if (ssl == NULL)
		fail_msg("tls_%s_ssl_new: %s", server ? "server" : "client", err);
	return ssl;
}

/* How many events that end a wait (anything but READ and DRAINED). */
static int
outcomes(const struct probe *pr)
{
	return pr->n[LEG_EV_CONNECTED] + pr->n[LEG_EV_TLS_DONE] + pr->n[LEG_EV_EOF] + pr->n[LEG_EV_ERROR] +
	       pr->n[LEG_EV_TIMEOUT_READ] + pr->n[LEG_EV_TIMEOUT_WRITE];
}

static void
connect_to(struct fx *f, const struct sockaddr_in *sin)
{
	assert_int_equal(leg_connect(&f->a.leg, f->base, NULL, (const struct sockaddr *)sin, sizeof(*sin),
				     "127.0.0.1", ntohs(sin->sin_port), WAIT_SECONDS, probe_cb, &f->a),
			 0);
	WAIT(f, outcomes(&f->a) > 0);
}

/* Remove what tls_new() made: the CA's two files and their directories. */
static void
tls_cleanup(struct fx *f)
{
	char cert[400], key[400];

	ca_paths(f->ca, cert, sizeof(cert), key, sizeof(key));
	unlink(cert);
	unlink(key);
	if (rmdir(f->ca) < 0 || rmdir(f->root) < 0)
		fprintf(stderr, "test_leg: cannot remove %s: %s\n", f->root, strerror(errno));
}

/* ------------------------------------------------------------------------
 * Reading.
 */

/* Reading starts off, delivers the peer's bytes once on, stops again when
 * turned off (the bytes wait in the socket, not in the leg). */
static void
test_read_gated_by_reading(void **state)
{
	struct fx *f = *state;
	int fd, reads;

	unix_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	assert_false(f->a.leg.reading);
	assert_null(leg_ssl(&f->a.leg));
	peer_send(f->p.fd, "EHLO a\r\n");
	spin(f, 5);
	assert_int_equal(f->a.n[LEG_EV_READ], 0);
	assert_int_equal(evbuffer_get_length(leg_input(&f->a.leg)), 0);

	leg_set_reading(&f->a.leg, true);
	WAIT(f, evbuffer_get_length(f->a.got) >= 8);
	assert_buf(f->a.got, "EHLO a\r\n");

	leg_set_reading(&f->a.leg, false);
	reads = f->a.n[LEG_EV_READ];
	peer_send(f->p.fd, "QUIT\r\n");
	spin(f, 5);
	assert_int_equal(f->a.n[LEG_EV_READ], reads);
	assert_int_equal(evbuffer_get_length(leg_input(&f->a.leg)), 0);

	leg_set_reading(&f->a.leg, true);
	WAIT(f, evbuffer_get_length(f->a.got) >= 14);
	assert_buf(f->a.got, "EHLO a\r\nQUIT\r\n");
	assert_int_equal(f->a.n[LEG_EV_EOF] + f->a.n[LEG_EV_ERROR], 0);
}

/* The peer closes after a last line: the line, then LEG_EV_EOF.  Another
 * peer resets: LEG_EV_ERROR (not EOF) with the socket's reason. */
static void
test_eof_and_reset(void **state)
{
	struct fx *f = *state;
	struct linger lg = { 1, 0 };
	int fd, peer2;

	unix_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	leg_set_reading(&f->a.leg, true);
	peer_send(f->p.fd, "QUIT\r\n");
	assert_int_equal(shutdown(f->p.fd, SHUT_WR), 0);
	WAIT(f, outcomes(&f->a) > 0);
	assert_int_equal(f->a.n[LEG_EV_EOF], 1);
	assert_int_equal(f->a.n[LEG_EV_ERROR], 0);
	assert_buf(f->a.got, "QUIT\r\n");

	tcp_pair(&fd, &peer2);
	take(f, &f->b, fd);
	leg_set_reading(&f->b.leg, true);
	assert_int_equal(setsockopt(peer2, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
	close(peer2);
	WAIT(f, outcomes(&f->b) > 0);
	assert_int_equal(f->b.n[LEG_EV_ERROR], 1);
	assert_int_equal(f->b.n[LEG_EV_EOF], 0);
	assert_true(f->b.leg.err[0] != '\0');
	if (strstr(leg_error(&f->b.leg), "reset") == NULL)
		fail_msg("leg_error() after a reset: \"%s\"", leg_error(&f->b.leg));
}

/* A silent peer: LEG_EV_TIMEOUT_READ, and reading is armed again after. */
static void
test_read_timeout_rearms(void **state)
{
	struct fx *f = *state;
	int fd;

	unix_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	leg_set_reading(&f->a.leg, true);
	leg_set_timeouts(&f->a.leg, 1, 0);
	WAIT(f, f->a.n[LEG_EV_TIMEOUT_READ] > 0);
	assert_int_equal(f->a.n[LEG_EV_READ], 0);
	assert_true(f->a.leg.open);
	peer_send(f->p.fd, "z");
	WAIT(f, f->a.n[LEG_EV_READ] > 0);
	assert_buf(f->a.got, "z");
}

/* ------------------------------------------------------------------------
 * Writing.
 */

/* A plain leg writes at leg_flush(), not before, and without the loop. */
static void
test_flush_writes_directly(void **state)
{
	struct fx *f = *state;
	char c;
	int fd;

	unix_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	leg_write(&f->a.leg, "250 ok\r\n", 8);
	assert_int_equal(leg_output_len(&f->a.leg), 8);
	assert_int_equal(recv(f->p.fd, &c, 1, MSG_DONTWAIT), -1);
	assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
	leg_flush(&f->a.leg);
	recv_now(f->p.fd, "250 ok\r\n");
	assert_int_equal(leg_output_len(&f->a.leg), 0);
	assert_int_equal(bufferevent_get_enabled(f->a.leg.bev) & EV_WRITE, 0);
}

/* A peer that does not read: the output stays queued with EV_WRITE on and
 * no LEG_EV_DRAINED; once it reads, LEG_EV_DRAINED comes with the output
 * at or below LEG_OUTPUT_LOW, everything arrives in order, EV_WRITE goes
 * off and leg_flush() writes directly again. */
static void
test_backpressure_and_drained(void **state)
{
	struct fx *f = *state;
	unsigned char *big = malloc(BIG);
	int fd;

	assert_non_null(big);
	fill_pattern(big, BIG);
	unix_pair(&fd, &f->p.fd);
	small_sndbuf(fd);
	take(f, &f->a, fd);
	leg_write(&f->a.leg, big, BIG);
	free(big);
	leg_flush(&f->a.leg);
	assert_true(leg_output_len(&f->a.leg) > LEG_OUTPUT_LOW);
	assert_true(bufferevent_get_enabled(f->a.leg.bev) & EV_WRITE);
	spin(f, 5);
	assert_int_equal(f->a.n[LEG_EV_DRAINED], 0);
	assert_true(leg_output_len(&f->a.leg) > LEG_OUTPUT_LOW);

	f->p.pump = true;
	WAIT(f, f->a.n[LEG_EV_DRAINED] > 0);
	assert_true(f->a.drained_len <= LEG_OUTPUT_LOW);
	WAIT(f, evbuffer_get_length(f->p.got) >= BIG);
	assert_pattern(f->p.got, BIG);
	assert_int_equal(leg_output_len(&f->a.leg), 0);
	assert_int_equal(bufferevent_get_enabled(f->a.leg.bev) & EV_WRITE, 0);

	f->p.pump = false;
	leg_write(&f->a.leg, "tail", 4);
	leg_flush(&f->a.leg);
	recv_now(f->p.fd, "tail");
}

/* A peer that stops reading for the write timeout: LEG_EV_TIMEOUT_WRITE. */
static void
test_write_timeout(void **state)
{
	struct fx *f = *state;
	unsigned char *big = calloc(1, BIG);
	int fd;

	assert_non_null(big);
	unix_pair(&fd, &f->p.fd);
	small_sndbuf(fd);
	take(f, &f->a, fd);
	leg_set_timeouts(&f->a.leg, 0, 1);
	leg_write(&f->a.leg, big, BIG);
	free(big);
	leg_flush(&f->a.leg);
	WAIT(f, f->a.n[LEG_EV_TIMEOUT_WRITE] > 0);
	assert_int_equal(f->a.n[LEG_EV_TIMEOUT_READ], 0);
}

/* leg_write_from() moves the source's chains (same memory), a prefix when
 * asked, and drains the source on a closed leg. */
static void
test_write_from_moves(void **state)
{
	struct fx *f = *state;
	struct evbuffer *src = evbuffer_new();
	struct evbuffer_iovec before, after;
	int fd;

	assert_non_null(src);
	unix_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	assert_int_equal(evbuffer_add(src, "MAIL FROM:<a@b>\r\n", 17), 0);
	assert_int_equal(evbuffer_peek(src, -1, NULL, &before, 1), 1);
	leg_write_from(&f->a.leg, src, (size_t)-1);
	assert_int_equal(evbuffer_get_length(src), 0);
	assert_int_equal(leg_output_len(&f->a.leg), 17);
	assert_int_equal(evbuffer_peek(bufferevent_get_output(f->a.leg.bev), -1, NULL, &after, 1), 1);
	assert_ptr_equal(after.iov_base, before.iov_base);

	assert_int_equal(evbuffer_add(src, "RCPT TO:<c@d>\r\nDATA\r\n", 21), 0);
	leg_write_from(&f->a.leg, src, 15);
	assert_buf(src, "DATA\r\n");
	leg_flush(&f->a.leg);
	recv_now(f->p.fd, "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");

	leg_close(&f->a.leg, LEG_CLOSE_NOW);
	leg_write_from(&f->a.leg, src, (size_t)-1);
	assert_int_equal(evbuffer_get_length(src), 0);
	evbuffer_free(src);
}

/* ------------------------------------------------------------------------
 * In-process legs (a bufferevent pair: replay's recorded client).
 */

struct pair_end {
	struct evbuffer *got;
	bool eof;
};

static void
pair_end_readcb(struct bufferevent *bev, void *arg)
{
	struct pair_end *e = arg;

	assert_int_equal(evbuffer_add_buffer(e->got, bufferevent_get_input(bev)), 0);
}

static void
pair_end_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct pair_end *e = arg;

	(void)bev;
	if (what & BEV_EVENT_EOF)
		e->eof = true;
}

/* Bytes cross both ways as they are queued (no flush, no socket); reading
 * is gated like a socket's; the leg never upgrades to TLS; closing it
 * after its output is through tells the other end with an EOF. */
static void
test_pair_leg(void **state)
{
	struct fx *f = *state;
	struct bufferevent *pair[2];
	struct pair_end e = { .got = evbuffer_new() };
	unsigned char *big = malloc(BIG);
	SSL_CTX *ctx;

	assert_non_null(e.got);
	assert_non_null(big);
	assert_int_equal(bufferevent_pair_new(f->base, 0, pair), 0);
	assert_int_equal(leg_pair(&f->a.leg, f->base, pair[1], "(test)", probe_cb, &f->a), 0);
	assert_true(f->a.leg.inproc && f->a.leg.open);
	assert_string_equal(f->a.leg.addr, "(test)");
	bufferevent_setcb(pair[0], pair_end_readcb, NULL, pair_end_eventcb, &e);

	/* the other end writes while the leg does not read: nothing yet */
	assert_int_equal(bufferevent_write(pair[0], "EHLO x\r\n", 8), 0);
	spin(f, 5);
	assert_int_equal(f->a.n[LEG_EV_READ], 0);
	leg_set_reading(&f->a.leg, true);
	WAIT(f, f->a.n[LEG_EV_READ] > 0);
	assert_buf(f->a.got, "EHLO x\r\n");

	/* a big reply waits in the leg while the other end does not read */
	fill_pattern(big, BIG);
	leg_write(&f->a.leg, big, BIG);
	leg_flush(&f->a.leg);
	assert_true(leg_output_len(&f->a.leg) > 0);
	assert_int_equal(f->a.leg.nqueued, BIG);
	bufferevent_enable(pair[0], EV_READ);
	WAIT(f, evbuffer_get_length(e.got) == BIG);
	assert_pattern(e.got, BIG);
	WAIT(f, f->a.n[LEG_EV_DRAINED] > 0);

	/* never TLS */
	ctx = SSL_CTX_new(TLS_method());
	assert_non_null(ctx);
	assert_int_equal(leg_start_tls(&f->a.leg, SSL_new(ctx), true), -1);
	SSL_CTX_free(ctx);

	/* the last words, then EOF at the other end */
	evbuffer_drain(e.got, evbuffer_get_length(e.got));
	leg_write(&f->a.leg, "221 bye\r\n", 9);
	leg_close_after_flush(&f->a.leg);
	leg_flush(&f->a.leg);
	WAIT(f, e.eof);
	assert_false(f->a.leg.open);
	assert_buf(e.got, "221 bye\r\n");
	bufferevent_free(pair[0]);
	evbuffer_free(e.got);
	free(big);
}

/* ------------------------------------------------------------------------
 * Closing.
 */

/* Queued output reaches the peer in full, then EOF; the leg is closed.
 * Both orders the session uses: flush then close_after_flush (output
 * left over), and close_after_flush then flush (all written at once). */
static void
test_close_after_flush(void **state)
{
	struct fx *f = *state;
	unsigned char *big = malloc(BIG);
	int fd, peer2;
	char c;

	assert_non_null(big);
	fill_pattern(big, BIG);
	unix_pair(&fd, &f->p.fd);
	small_sndbuf(fd);
	take(f, &f->a, fd);
	leg_write(&f->a.leg, big, BIG);
	free(big);
	leg_flush(&f->a.leg);
	leg_close_after_flush(&f->a.leg);
	assert_true(f->a.leg.open); /* the output is not out yet */
	f->p.pump = true;
	WAIT(f, f->p.eof || f->p.err != 0);
	assert_int_equal(f->p.err, 0);
	assert_pattern(f->p.got, BIG);
	assert_false(f->a.leg.open);

	unix_pair(&fd, &peer2);
	take(f, &f->b, fd);
	leg_write(&f->b.leg, "221 bye\r\n", 9);
	leg_close_after_flush(&f->b.leg);
	assert_true(f->b.leg.open);
	leg_flush(&f->b.leg);
	assert_false(f->b.leg.open);
	recv_now(peer2, "221 bye\r\n");
	assert_int_equal(recv(peer2, &c, 1, MSG_DONTWAIT), 0);
	close(peer2);
}

/* LEG_CLOSE_RESET: the peer sees ECONNRESET; LEG_CLOSE_NOW: a plain EOF. */
static void
test_close_reset_and_now(void **state)
{
	struct fx *f = *state;
	struct sockaddr_in sin;
	socklen_t sl = sizeof(sin);
	struct pollfd pfd;
	char addr[64], c;
	int fd, peer2;

	tcp_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	assert_int_equal(getsockname(f->p.fd, (struct sockaddr *)&sin, &sl), 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	assert_string_equal(f->a.leg.addr, addr);
	leg_close(&f->a.leg, LEG_CLOSE_RESET);
	assert_false(f->a.leg.open);
	pfd.fd = f->p.fd;
	pfd.events = POLLIN;
	assert_int_equal(poll(&pfd, 1, WAIT_SECONDS * 1000), 1);
	assert_int_equal(recv(f->p.fd, &c, 1, MSG_DONTWAIT), -1);
	assert_int_equal(errno, ECONNRESET);

	tcp_pair(&fd, &peer2);
	take(f, &f->b, fd);
	leg_close(&f->b.leg, LEG_CLOSE_NOW);
	pfd.fd = peer2;
	assert_int_equal(poll(&pfd, 1, WAIT_SECONDS * 1000), 1);
	assert_int_equal(recv(peer2, &c, 1, MSG_DONTWAIT), 0);
	close(peer2);
}

/* ------------------------------------------------------------------------
 * Connecting.
 */

/* A bound port nobody listens on: LEG_EV_ERROR saying "refused". */
static void
test_connect_refused(void **state)
{
	struct fx *f = *state;
	struct sockaddr_in sin;
	int closed = tcp_listener(&sin, false); /* held: the port stays ours */

	connect_to(f, &sin);
	assert_int_equal(f->a.n[LEG_EV_ERROR], 1);
	assert_int_equal(f->a.n[LEG_EV_CONNECTED], 0);
	if (strstr(leg_error(&f->a.leg), "refused") == NULL)
		fail_msg("leg_error() after a refused connect: \"%s\"", leg_error(&f->a.leg));
	close(closed);
}

/* A listening port: LEG_EV_CONNECTED, addr "127.0.0.1:PORT", and the leg
 * reads and writes directly on the socket connect made. */
static void
test_connect_ok(void **state)
{
	struct fx *f = *state;
	struct sockaddr_in sin;
	int l = tcp_listener(&sin, true);
	char addr[64];

	connect_to(f, &sin);
	assert_int_equal(f->a.n[LEG_EV_CONNECTED], 1);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", ntohs(sin.sin_port));
	assert_string_equal(f->a.leg.addr, addr);
	assert_true(f->a.leg.fd >= 0);
	f->p.fd = accept(l, NULL, NULL);
	assert_true(f->p.fd >= 0);
	close(l);

	peer_send(f->p.fd, "220 hi\r\n");
	WAIT(f, evbuffer_get_length(f->a.got) >= 8);
	assert_buf(f->a.got, "220 hi\r\n");
	leg_write(&f->a.leg, "EHLO x\r\n", 8);
	leg_flush(&f->a.leg);
	assert_int_equal(leg_output_len(&f->a.leg), 0);
	f->p.pump = true;
	WAIT(f, evbuffer_get_length(f->p.got) >= 8);
	assert_buf(f->p.got, "EHLO x\r\n");
}

/* ------------------------------------------------------------------------
 * TLS.
 */

/*
 * Two legs over one TCP connection, upgraded in place: a = the server side
 * (accept), b = the client side.  Before the upgrade, a holds a banner
 * (implicit TLS) and has plaintext input it never read (pipelined after
 * STARTTLS): the banner must arrive through TLS only (sent in clear, it
 * would break b's handshake), the plaintext must be gone.  Then data both
 * ways, and leg_close() sends close_notify.
 */
static void
test_tls_upgrade_in_place(void **state)
{
	struct fx *f = *state;
	int fd_a, fd_b;

	tls_setup(f);
	tcp_pair(&fd_a, &fd_b);
	take(f, &f->a, fd_a);
	take(f, &f->b, fd_b);
	leg_set_reading(&f->a.leg, true);
	leg_set_reading(&f->b.leg, true);

	f->a.keep_input = true;
	leg_write(&f->b.leg, "STARTTLS\r\nRSET\r\n", 16);
	leg_flush(&f->b.leg);
	WAIT(f, evbuffer_get_length(leg_input(&f->a.leg)) >= 16);
	f->a.leg.hold_output = true;
	leg_write(&f->a.leg, "220 banner\r\n", 12);
	leg_flush(&f->a.leg);
	assert_int_equal(leg_output_len(&f->a.leg), 12);

	assert_int_equal(leg_start_tls(&f->a.leg, ssl_new(f, true), true), 0);
	assert_int_equal(leg_start_tls(&f->b.leg, ssl_new(f, false), false), 0);
	assert_true(f->a.leg.tls && f->a.leg.tls_accept && f->a.leg.handshaking);
	assert_true(f->b.leg.tls && !f->b.leg.tls_accept && f->b.leg.handshaking);
	f->a.keep_input = false;
	WAIT(f, (f->a.n[LEG_EV_TLS_DONE] && f->b.n[LEG_EV_TLS_DONE]) || f->a.n[LEG_EV_ERROR] + f->b.n[LEG_EV_ERROR]);
	if (f->a.n[LEG_EV_ERROR] || f->b.n[LEG_EV_ERROR])
		fail_msg("handshake: server \"%s\", client \"%s\"", f->a.n[LEG_EV_ERROR] ? leg_error(&f->a.leg) : "",
			 f->b.n[LEG_EV_ERROR] ? leg_error(&f->b.leg) : "");
	assert_false(f->a.leg.handshaking || f->b.leg.handshaking);
	assert_non_null(leg_ssl(&f->a.leg));
	assert_non_null(leg_ssl(&f->b.leg));
	assert_int_equal(SSL_is_server(leg_ssl(&f->a.leg)), 1);
	assert_int_equal(SSL_is_server(leg_ssl(&f->b.leg)), 0);

	WAIT(f, evbuffer_get_length(f->b.got) >= 12);
	assert_buf(f->b.got, "220 banner\r\n");
	leg_write(&f->b.leg, "EHLO c\r\n", 8);
	leg_flush(&f->b.leg); /* a TLS leg stages until the flush */
	WAIT(f, evbuffer_get_length(f->a.got) >= 8);
	assert_buf(f->a.got, "EHLO c\r\n"); /* not "STARTTLS\r\nRSET\r\n..." */
	leg_write(&f->a.leg, "250 ok\r\n", 8);
	leg_flush(&f->a.leg);
	WAIT(f, evbuffer_get_length(f->b.got) >= 20);
	assert_buf(f->b.got, "220 banner\r\n250 ok\r\n");

	leg_close(&f->a.leg, LEG_CLOSE_NOW);
	assert_false(f->a.leg.open);
	assert_null(leg_ssl(&f->a.leg));
	WAIT(f, f->b.n[LEG_EV_EOF] + f->b.n[LEG_EV_ERROR] > 0);
	assert_int_equal(f->b.n[LEG_EV_EOF], 1);
	assert_true(SSL_get_shutdown(leg_ssl(&f->b.leg)) & SSL_RECEIVED_SHUTDOWN);
	leg_close(&f->b.leg, LEG_CLOSE_NOW);
}

/* A client leg whose peer answers the ClientHello with an SMTP banner:
 * LEG_EV_ERROR, OpenSSL's reason in leg_error(), tls_error set. */
static void
test_tls_handshake_garbage(void **state)
{
	struct fx *f = *state;
	char first[256];
	int fd;

	tls_setup(f);
	tcp_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	leg_set_reading(&f->a.leg, true);
	assert_int_equal(leg_start_tls(&f->a.leg, ssl_new(f, false), false), 0);
	f->p.pump = true;
	WAIT(f, evbuffer_get_length(f->p.got) > 0);
	assert_int_equal(*evbuffer_pullup(f->p.got, 1), 0x16); /* a TLS handshake record */
	peer_send(f->p.fd, "220 mail.example.com ESMTP ready\r\n");
	WAIT(f, outcomes(&f->a) > 0);
	assert_int_equal(f->a.n[LEG_EV_ERROR], 1);
	assert_int_equal(f->a.n[LEG_EV_TLS_DONE] + f->a.n[LEG_EV_EOF], 0);
	assert_true(f->a.leg.tls_error != 0);
	assert_int_equal(ERR_GET_LIB(f->a.leg.tls_error), ERR_LIB_SSL);
	ERR_error_string_n(f->a.leg.tls_error, first, sizeof(first));
	if (strncmp(leg_error(&f->a.leg), first, strlen(first)) != 0)
		fail_msg("leg_error() \"%s\" does not start with \"%s\"", leg_error(&f->a.leg), first);
}

/* The peer hangs up in the middle of the handshake: an error, not EOF. */
static void
test_tls_peer_closes_in_handshake(void **state)
{
	struct fx *f = *state;
	int fd;

	tls_setup(f);
	tcp_pair(&fd, &f->p.fd);
	take(f, &f->a, fd);
	assert_int_equal(leg_start_tls(&f->a.leg, ssl_new(f, true), true), 0);
	assert_int_equal(shutdown(f->p.fd, SHUT_WR), 0);
	WAIT(f, outcomes(&f->a) > 0);
	assert_int_equal(f->a.n[LEG_EV_ERROR], 1);
	assert_int_equal(f->a.n[LEG_EV_TLS_DONE] + f->a.n[LEG_EV_EOF], 0);
	assert_true(f->a.leg.err[0] != '\0');
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_read_gated_by_reading, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_eof_and_reset, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_read_timeout_rearms, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_flush_writes_directly, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_backpressure_and_drained, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_write_timeout, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_write_from_moves, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_pair_leg, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_close_after_flush, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_close_reset_and_now, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_connect_refused, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_connect_ok, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tls_upgrade_in_place, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tls_handshake_garbage, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_tls_peer_closes_in_handshake, fx_setup, fx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
