/*
 * fuzz_session.c - libFuzzer target for the real session code (session*.c,
 * leg.c, sink.c, the store) between an in-memory client and upstream.
 *
 * One event_base, a store in a fresh database on tmpfs, a session started
 * with session_start() on one end of a socketpair (the client), relaying to
 * an upstream that is a TCP listener on 127.0.0.1 accepted here.  The
 * input is a script:
 *
 *   byte 0        bit 0: sink mode (no upstream) instead of relay
 *                 bit 1: -v (the live transcript on stderr, hidden)
 *                 bit 2: relay to a port that refuses the connection
 *                 bit 3: the listener offers STARTTLS (--client-tls
 *                 starttls, a local CA made once per process)
 *                 bit 4: fault rules: the fixed rule set below (every
 *                 action on every trigger, mostly behind probabilities),
 *                 and the clocks become virtual (see "Time" below)
 *   byte 1        (rules only) the session's number less one, 0-255: it
 *                 picks the connect and greeting rules (`session N`) and
 *                 seeds every probability draw
 *   then ops      op byte: low 3 bits the op, the rest (and for sends the
 *                 next byte) a length
 *       0,1,2     the client sends the next n bytes
 *       3,4       the upstream sends the next n bytes
 *       5         run the event loop a few turns (n + 1); with n = 31,
 *                 the client starts TLS instead (after its STARTTLS, or
 *                 at any wrong moment the fuzzer picks); with n = 30 and
 *                 rules, 25 ms of virtual time pass at once (a rule's
 *                 delay runs out now rather than later)
 *       6         the client shuts its side (FIN)
 *       7         the upstream shuts its side
 *
 * so both legs get fuzzed bytes with fuzzed segmentation and interleaving.
 * After the script both peers close; the session must then end.  Checked,
 * from the database read back with the store reader:
 *   - every byte each peer sent that the session recorded is recorded in
 *     order: the raw bytes of the client's events are a prefix of what the
 *     client sent, the upstream's likewise;
 *   - what reached each peer is what the other sent, in order, unless a
 *     recorded proxy action says otherwise: the bytes received by the
 *     upstream are a prefix of the client's recorded bytes not flagged
 *     dropped or altered, interleaved with the proxy's bytes flagged "to
 *     upstream", all in event order; the same for the client;
 *   - the session ends once both peers have closed, the store loses no
 *     record, and nothing leaks or misbehaves (ASan, UBSan fatal);
 *   - what the peers receive stays bounded (FUZZ_PEER_MAX).
 * Any violation abort()s with a line on stderr saying which, after the
 * recorded events.
 *
 * With rules the same checks hold: a rule's reply is a proxy event towards
 * the client, a command it keeps from the upstream is flagged dropped, an
 * upstream reply it replaces or suppresses is flagged altered or dropped,
 * a truncated reply is recorded as the bytes actually sent, and bytes a
 * rule held that never left when the session ended are taken back by a
 * proxy event towards the upstream flagged dropped.
 *
 * Built with -DFUZZ_STRICT (the Makefile's default) it also requires each
 * peer to have received everything recorded as forwarded to it.
 *
 * Time.  Rules delay (5-20 ms here) and throttle (bytes per second), so
 * with rules the session's clocks are virtual: clock_gettime and
 * gettimeofday, on this thread and during the run only, return the real
 * time at the start of the run plus what the harness has let pass, 1 ms
 * per loop turn (and more per turn while waiting for the end) and 10 us
 * per reading of the clock.  A delay
 * then costs a few loop turns, not real time, and an input runs the same
 * way however fast the machine is.  The session's own timeouts are set
 * far beyond any run, so only the peers' closing ends a session.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/rules.h"
#include "smtptap/session.h"
#include "smtptap/session_int.h"
#include "smtptap/reader.h"
#include "smtptap/store.h"
#include "smtptap/tls.h"

int LLVMFuzzerInitialize(int *, char ***);
int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* Bytes a peer may receive in one input before that counts as unbounded. */
#define FUZZ_PEER_MAX (8u * 1024 * 1024)
/* Loop turns allowed for the session to end after both peers closed. */
#define FUZZ_END_TURNS 20000
/* Tries to write one segment into a full socket. */
#define FUZZ_SEND_TRIES 64
/* Virtual time per loop turn with rules; after FUZZ_END_FAST turns of
 * waiting for the end, FUZZ_END_TICK per turn (a throttle's tick is
 * 100 ms), so a slow throttle drains within FUZZ_END_TURNS. */
#define FUZZ_TICK_NS 1000000ull
/* ... and a little per clock read, so that a loop turn that spins until
 * some time has passed (an event that fires again at once until a rate
 * limit's next tick) ends as it would in real time rather than never. */
#define FUZZ_CREEP_NS 10000ull
#define FUZZ_END_FAST 2000
#define FUZZ_END_TICK_NS 100000000ull
/* The session's timeouts (seconds): never reached, even in virtual time. */
#define FUZZ_TIMEOUT_S 10000000

/*
 * The rules of bit 4.  Every action on every trigger, mostly behind a
 * probability so that different traffic takes different paths (the draw
 * depends on the session number, byte 1, and on how many such units came
 * before).  Actions that end a session (stall, close, reset, truncate,
 * fail-tls) are rare per unit, so most sessions go on long enough to meet
 * the others.  Delays are short, throttles fast enough to drain in the
 * end turns.  No `limit`: its count outlives the session, and an input
 * must run the same way every time.
 */
static const char fuzz_rules_text[] =
	/* connect: one action per session number */
	"on connect session 1 delay 10ms\n"
	"on connect session 2 reply 554 5.3.2 \"No service here\"\n"
	"on connect session 3 reply 421 4.3.2 \"Busy, try later\"\n"
	"on connect session 4 close\n"
	"on connect session 5 reset\n"
	"on connect session 6 stall\n"
	"on connect session 7 throttle 64k\n"
	"on connect session 8 fail-tls\n"
	"on connect session 9 delay 5ms reply 554 5.7.1 \"Go away\" reset\n"
	"on connect session 10 throttle 16k to-client\n"
	"on connect session 11 throttle 16k to-upstream\n"
	"on connect session 12 client 10.0.0.0/8 close\n"
	/* the greeting */
	"on greeting session 13-40 probability 0.3 delay 5ms\n"
	"on greeting session 13-40 probability 0.2 rewrite 554 5.3.2 \"Not today\"\n"
	"on greeting session 13-40 probability 0.1 truncate 4\n"
	"on greeting session 13-40 probability 0.1 stall\n"
	"on greeting session 13-40 probability 0.1 close\n"
	"on greeting session 13-40 probability 0.1 reset\n"
	"on greeting session 13-40 probability 0.1 throttle 32k to-client\n"
	"on reply greeting session 41-60 probability 0.3 rewrite 220 \"fuzz.example ESMTP rewritten\" delay 20ms\n"
	/* commands */
	"on ehlo probability 0.3 strip STARTTLS,PIPELINING\n"
	"on ehlo probability 0.2 delay 5ms strip CHUNKING,SIZE throttle 64k\n"
	"on ehlo helo ~ \"^a\" probability 0.5 rewrite 550 5.7.1 \"EHLO rejected\"\n"
	"on ehlo probability 0.05 truncate\n"
	"on helo probability 0.3 reply 250 \"fuzz.example\"\n"
	"on lhlo probability 0.5 reply 500 5.5.1 \"No LMTP here\"\n"
	"on mail from ~ \"a\" probability 0.3 reply 451 4.3.0 \"Try again later\"\n"
	"on mail from !~ \"^<\" probability 0.3 rewrite 452 4.3.1 \"Insufficient storage\"\n"
	"on mail occurrence 2 probability 0.5 delay 15ms\n"
	"on mail probability 0.1 rewrite 550 5.7.1 \"Sender refused\" close\n"
	"on rcpt to ~ \"^<?b\" reply 550 5.1.1 \"No such user\"\n"
	"on rcpt probability 0.2 rewrite 450 4.2.0 \"Mailbox busy\"\n"
	"on rcpt probability 0.1 delay 5ms reply 250 2.1.5 \"OK (not forwarded)\"\n"
	"on data probability 0.2 rewrite 451 4.3.0 \"No DATA now\"\n"
	"on data probability 0.1 reply 554 5.5.1 \"No valid recipients\"\n"
	"on data probability 0.1 delay 10ms\n"
	"on data probability 0.05 rewrite 250 2.0.0 \"Nothing to send (rewritten)\"\n"
	"on bdat probability 0.2 reply 552 5.3.4 \"Chunk too big\"\n"
	"on bdat probability 0.2 rewrite 451 4.3.0 \"BDAT failed\"\n"
	"on bdat probability 0.1 delay 5ms\n"
	"on rset probability 0.3 reply 250 2.0.0 \"OK (not forwarded)\"\n"
	"on noop probability 0.3 delay 5ms\n"
	"on noop probability 0.2 truncate 2\n"
	"on noop probability 0.1 reply 250 2.0.0 \"OK\" reset\n"
	"on vrfy reply 252 2.5.0 \"Cannot VRFY user\"\n"
	"on expn probability 0.5 rewrite 502 5.5.1 \"Not here\"\n"
	"on help probability 0.5 throttle 16k both reply 214 2.0.0 \"No help\"\n"
	"on auth mechanism ~ \"PLAIN\" probability 0.5 reply 535 5.7.8 \"Authentication failed\"\n"
	"on auth probability 0.3 rewrite 454 4.7.0 \"Temporary authentication failure\"\n"
	"on starttls probability 0.3 fail-tls\n"
	"on starttls probability 0.2 reply 454 4.7.0 \"TLS not available\"\n"
	"on starttls probability 0.2 delay 5ms\n"
	"on quit probability 0.3 reply 221 2.0.0 \"Bye (smtptap)\"\n"
	"on quit probability 0.3 rewrite 221 2.0.0 \"Bye (rewritten)\"\n"
	"on command occurrence 1-4 probability 0.2 delay 5ms\n"
	"on command probability 0.02 stall\n"
	"on command probability 0.02 close\n"
	"on command probability 0.02 reset\n"
	"on command probability 0.02 reply 421 4.3.2 \"Shutting down\" close\n"
	"on command probability 0.02 delay 5ms reply 500 5.5.2 \"Unrecognised\" reset\n"
	"on command probability 0.03 truncate 3\n"
	"on command probability 0.03 throttle 32k to-upstream\n"
	"on command probability 0.03 rewrite 451 4.3.0 \"Rewritten\" truncate 10\n"
	/* the end of a message */
	"on data-end size > 1000 probability 0.3 reply 552 5.3.4 \"Message too big\"\n"
	"on data-end header Subject ~ \"x\" reply 554 5.7.1 \"Looks like spam\"\n"
	"on data-end header X-Fuzz ~ \".\" probability 0.5 rewrite 451 4.3.0 \"Lost it (delivered)\" delay 5ms\n"
	"on data-end probability 0.2 rewrite 451 4.3.0 \"Lost it (delivered)\"\n"
	"on data-end probability 0.1 delay 20ms\n"
	"on data-end probability 0.05 stall\n"
	"on data-end probability 0.05 close\n"
	"on data-end probability 0.05 reset\n"
	"on data-end probability 0.05 truncate\n"
	"on data-end probability 0.05 throttle 8k\n"
	"on data-end probability 0.05 reply 250 2.0.0 \"Queued (not really)\" close\n"
	/* TLS handshakes (the harness's upstream is plaintext: the upstream
	 * ones never fire here) */
	"on tls client probability 0.2 delay 5ms\n"
	"on tls client probability 0.1 fail-tls\n"
	"on tls client probability 0.05 stall\n"
	"on tls client probability 0.05 close\n"
	"on tls client probability 0.05 reset\n"
	"on tls upstream probability 0.5 fail-tls\n"
	"on tls upstream probability 0.5 delay 5ms\n"
	/* replies */
	"on reply code 354 probability 0.2 rewrite 451 4.3.0 \"No data for you\"\n"
	"on reply code 334 probability 0.3 rewrite 535 5.7.8 \"No\"\n"
	"on reply mail code 2xx probability 0.2 rewrite 451 4.3.0 \"MAIL rewritten\"\n"
	"on reply bdat code 250 probability 0.2 rewrite 452 4.3.1 \"BDAT rewritten\"\n"
	"on reply ehlo probability 0.3 strip PIPELINING,CHUNKING,SIZE,8BITMIME\n"
	"on reply data-end code 250 probability 0.2 stall\n"
	"on reply data-end probability 0.2 rewrite 451 4.3.0 \"Lost (delivered)\"\n"
	"on reply code 5xx probability 0.1 truncate 4\n"
	"on reply code 4xx probability 0.1 close\n"
	"on reply code 4xx probability 0.1 reset\n"
	"on reply code 221 probability 0.3 rewrite 221 2.0.0 \"Bye (rewritten)\"\n"
	"on reply code 250 probability 0.1 delay 5ms\n"
	"on reply probability 0.02 stall\n"
	"on reply probability 0.05 reply 250 2.0.0 \"Fine (rewritten)\"\n"
	"on reply probability 0.05 throttle 16k to-client\n"
	"on reply probability 0.03 rewrite 550 5.0.0 \"Nope\" reset\n"
	"on reply probability 0.03 delay 5ms rewrite 451 4.0.0 \"Later\" close\n"
	"on reply probability 0.03 truncate 1\n";

struct fuzz_buf {
	unsigned char *p;
	size_t len, cap;
};

struct fuzz_run {
	struct event_base *base;
	struct session_ctx ctx;
	struct store *st;
	int cfd;	    /* the client's end of the socketpair */
	int ufd;	    /* the upstream's accepted connection, -1 none yet */
	bool c_eof, u_eof; /* the peer read EOF (or an error) */
	bool c_shut, u_shut;
	bool ended;	    /* on_session_end was called */
	bool sink;	    /* sink mode: client bytes go nowhere */
	SSL *cssl;	    /* the client's TLS, once it started it */
	struct fuzz_buf hs; /* what the client's handshake wrote on the wire */
	bool c_tls_failed;  /* its handshake failed: the client reads no more */
	uint64_t tick;	    /* virtual time per loop turn (rules), ns */
	struct fuzz_buf c_sent, u_sent, c_got, u_got;
};

/* What the records say, rebuilt from the events. */
struct fuzz_rec {
	struct fuzz_buf client, upstream; /* raw bytes recorded per side */
	struct fuzz_buf to_up, to_cl;	  /* what should have reached each peer */
	int64_t last_seq;
	bool bad;
	char why[160];
};

static void	fuzz_fail(const char *, ...) __attribute__((format(printf, 1, 2), noreturn));
static int	fuzz_rm_cb(const char *, const struct stat *, int, struct FTW *);
static void	fuzz_cleanup(void);
static void	fuzz_append(struct fuzz_buf *, const void *, size_t);
static bool	fuzz_prefix(const struct fuzz_buf *, const struct fuzz_buf *);
static void	fuzz_end_cb(void *);
static void	fuzz_drain(int, bool *, struct fuzz_buf *, const char *);
static void	fuzz_drain_tls(struct fuzz_run *);
static void	fuzz_client_tls(struct fuzz_run *);
static long	fuzz_bio_cb(BIO *, int, const char *, size_t, int, long, int, size_t *);
static void	fuzz_step(struct fuzz_run *);
static void	fuzz_send(struct fuzz_run *, int, const uint8_t *, size_t, struct fuzz_buf *);
static int	fuzz_event_cb(const struct reader_event *, void *);
static int	fuzz_session_cb(const struct reader_session *, void *);
static void	fuzz_check(struct fuzz_run *);
static int	fuzz_dump_cb(const struct reader_event *, void *);
static void	fuzz_dump(void);

static char fuzz_dir[64], fuzz_template[128], fuzz_db[128];
static struct proxy_config fuzz_cfg;
static struct proxy_route fuzz_relay, fuzz_sink, fuzz_refused, fuzz_relay_tls, fuzz_sink_tls;
static struct tls *fuzz_tls;	   /* the session's TLS (local CA) */
static SSL_CTX *fuzz_client_ctx; /* the harness client's */
static int fuzz_lfd = -1; /* the upstream's listening socket */
static int fuzz_rfd = -1; /* bound, not listening: connections are refused */
static int fuzz_errfd = 2; /* stderr, kept from before -close_fd_mask */
static struct rules *fuzz_rules; /* bit 4's set, parsed once */

/* The virtual clocks (see "Time" above): on for this thread during a run
 * with rules; the real clocks when it began, and the time let pass since. */
static _Thread_local bool fuzz_vclock;
static struct timespec fuzz_vmono0, fuzz_vreal0;
static uint64_t fuzz_vns;

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	const struct timespec *t0;
	uint64_t ns;

	if (!fuzz_vclock)
		return (int)syscall(SYS_clock_gettime, id, ts);
	switch (id) {
	case CLOCK_REALTIME:
	case CLOCK_REALTIME_COARSE:
		t0 = &fuzz_vreal0;
		break;
	case CLOCK_MONOTONIC:
	case CLOCK_MONOTONIC_COARSE:
	case CLOCK_MONOTONIC_RAW:
	case CLOCK_BOOTTIME:
		t0 = &fuzz_vmono0;
		break;
	default:
		return (int)syscall(SYS_clock_gettime, id, ts);
	}
	fuzz_vns += FUZZ_CREEP_NS;
	ns = (uint64_t)t0->tv_nsec + fuzz_vns;
	ts->tv_sec = t0->tv_sec + (time_t)(ns / 1000000000u);
	ts->tv_nsec = (long)(ns % 1000000000u);
	return 0;
}

int
gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	struct timespec ts;

	if (!fuzz_vclock)
		return (int)syscall(SYS_gettimeofday, tv, tz);
	clock_gettime(CLOCK_REALTIME, &ts);
	tv->tv_sec = ts.tv_sec;
	tv->tv_usec = ts.tv_nsec / 1000;
	return 0;
}

/* Start (or stop) the virtual clocks at the real time. */
static void
fuzz_vclock_set(bool on)
{
	fuzz_vclock = false;
	if (on) {
		syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &fuzz_vmono0);
		syscall(SYS_clock_gettime, CLOCK_REALTIME, &fuzz_vreal0);
		fuzz_vns = 0;
	}
	fuzz_vclock = on;
}

static void
fuzz_fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	dprintf(fuzz_errfd, "fuzz_session: ");
	vdprintf(fuzz_errfd, fmt, ap);
	dprintf(fuzz_errfd, "\n");
	va_end(ap);
	abort();
}

/* A check failed after the store was closed: show the events, then fail. */
#define fuzz_fail_dump(...) (fuzz_dump(), fuzz_fail(__VA_ARGS__))

static void
fuzz_append(struct fuzz_buf *b, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap == 0 ? 4096 : b->cap;

		while (cap < b->len + n)
			cap *= 2;
		if ((b->p = realloc(b->p, cap)) == NULL)
			abort();
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

/* Is a a prefix of b? */
static bool
fuzz_prefix(const struct fuzz_buf *a, const struct fuzz_buf *b)
{
	return a->len <= b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static int
fuzz_rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	remove(path);
	return 0;
}

/* The scratch directory (databases, the CA) goes with the process: every
 * libFuzzer run, merge and corpus replay makes one, and tmpfs is memory. */
static void
fuzz_cleanup(void)
{
	if (fuzz_dir[0] != '\0')
		nftw(fuzz_dir, fuzz_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void
fuzz_rules_free(void)
{
	rules_unref(fuzz_rules);
	fuzz_rules = NULL;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char *args[64];
	static char quiet[] = "-close_fd_mask=2";
	struct sockaddr_in *sin;
	socklen_t sl;
	struct store *st;
	char err[256];
	int i, n;

	/* The session logs a line per session on stderr: hide it (libFuzzer
	 * and the sanitizers keep their own copy of stderr). */
	if ((fuzz_errfd = dup(STDERR_FILENO)) < 0)
		fuzz_errfd = STDERR_FILENO;
	n = *argc < 62 ? *argc : 62;
	for (i = 0; i < n; i++)
		args[i] = (*argv)[i];
	/* FUZZ_SESSION_TRACE=1: the session's -vv trace instead. */
	if (getenv("FUZZ_SESSION_TRACE") == NULL)
		args[n++] = quiet;
	args[n] = NULL;
	*argc = n;
	*argv = args;

	signal(SIGPIPE, SIG_IGN);
	log_init(getenv("FUZZ_SESSION_TRACE") != NULL ? 2 : 0);
	if (store_global_init() < 0)
		fuzz_fail("store_global_init");
	snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/smtptap-fuzz-XXXXXX",
		 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
	if (mkdtemp(fuzz_dir) == NULL)
		fuzz_fail("mkdtemp: %s", strerror(errno));
	atexit(fuzz_cleanup);
	snprintf(fuzz_template, sizeof(fuzz_template), "%s/template.db", fuzz_dir);
	snprintf(fuzz_db, sizeof(fuzz_db), "%s/run.db", fuzz_dir);
	if ((st = store_open(fuzz_template, err, sizeof(err))) == NULL || store_close(st) != 0)
		fuzz_fail("template database: %s", err);

	/* The upstream: a TCP listener on 127.0.0.1, port chosen by the
	 * kernel.  (Not AF_UNIX: its connect completes at once, a case the
	 * leg does not handle, see the README; TCP is what the proxy uses.) */
	fuzz_lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	sin = (struct sockaddr_in *)&fuzz_relay.upstream_sa;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sl = sizeof(*sin);
	if (fuzz_lfd < 0 || bind(fuzz_lfd, (struct sockaddr *)sin, sl) < 0 || listen(fuzz_lfd, 16) < 0 ||
	    getsockname(fuzz_lfd, (struct sockaddr *)sin, &sl) < 0)
		fuzz_fail("upstream socket: %s", strerror(errno));
	fuzz_relay.upstream_salen = (int)sizeof(*sin);
	fuzz_relay.listen = "fuzz";
	fuzz_relay.upstream = "127.0.0.1";
	snprintf(fuzz_relay.upstream_host, sizeof(fuzz_relay.upstream_host), "127.0.0.1");
	snprintf(fuzz_relay.upstream_port, sizeof(fuzz_relay.upstream_port), "%d", ntohs(sin->sin_port));
	fuzz_relay.client_tls = PROXY_TLS_OFF;
	fuzz_relay.upstream_tls = PROXY_TLS_OFF;
	fuzz_refused = fuzz_relay;
	fuzz_rfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sin = (struct sockaddr_in *)&fuzz_refused.upstream_sa;
	sin->sin_port = 0;
	sl = sizeof(*sin);
	if (fuzz_rfd < 0 || bind(fuzz_rfd, (struct sockaddr *)sin, sl) < 0 ||
	    getsockname(fuzz_rfd, (struct sockaddr *)sin, &sl) < 0)
		fuzz_fail("refusing socket: %s", strerror(errno));
	snprintf(fuzz_refused.upstream_port, sizeof(fuzz_refused.upstream_port), "%d", ntohs(sin->sin_port));
	fuzz_sink.listen = "fuzz";
	fuzz_sink.client_tls = PROXY_TLS_OFF;
	fuzz_sink.upstream_tls = PROXY_TLS_OFF;
	fuzz_relay_tls = fuzz_relay;
	fuzz_relay_tls.client_tls = PROXY_TLS_STARTTLS;
	fuzz_sink_tls = fuzz_sink;
	fuzz_sink_tls.client_tls = PROXY_TLS_STARTTLS;
	{
		static char ca_dir[128];

		snprintf(ca_dir, sizeof(ca_dir), "%s/ca", fuzz_dir);
		fuzz_cfg.tls.ca_dir = ca_dir;
		fuzz_cfg.tls.upstream_verify = false;
		if ((fuzz_tls = tls_new(&fuzz_cfg.tls, true, true, err, sizeof(err))) == NULL)
			fuzz_fail("tls_new: %s", err);
		if ((fuzz_client_ctx = SSL_CTX_new(TLS_client_method())) == NULL)
			fuzz_fail("SSL_CTX_new");
		SSL_CTX_set_verify(fuzz_client_ctx, SSL_VERIFY_NONE, NULL);
	}

	if ((fuzz_rules = rules_parse("fuzz.rules", fuzz_rules_text, sizeof(fuzz_rules_text) - 1, 1, err, sizeof(err))) ==
	    NULL)
		fuzz_fail("the rule set does not parse: %s", err);
	atexit(fuzz_rules_free);

	/* Timeouts far beyond a run, virtual time included: every input ends
	 * by the peers closing. */
	fuzz_cfg.routes[0] = fuzz_relay;
	fuzz_cfg.nroutes = 1;
	fuzz_cfg.db_path = fuzz_db;
	fuzz_cfg.idle_timeout = FUZZ_TIMEOUT_S;
	fuzz_cfg.reply_timeout = FUZZ_TIMEOUT_S;
	fuzz_cfg.connect_timeout = FUZZ_TIMEOUT_S;
	fuzz_cfg.grace = 10;
	fuzz_cfg.max_sessions = 16;
	return 0;
}

static void
fuzz_end_cb(void *arg)
{
	struct fuzz_run *r = arg;

	r->ended = true;
}

/* Read whatever fd has into got (bounded). */
static void
fuzz_drain(int fd, bool *eof, struct fuzz_buf *got, const char *who)
{
	unsigned char buf[65536];
	ssize_t n;

	while (fd >= 0 && !*eof) {
		n = read(fd, buf, sizeof(buf));
		if (n > 0) {
			fuzz_append(got, buf, (size_t)n);
			if (got->len > FUZZ_PEER_MAX)
				fuzz_fail("the %s received more than %u bytes", who, FUZZ_PEER_MAX);
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		*eof = true; /* EOF, or ECONNRESET from an RST close */
	}
}

/* One turn of the loop, then the peers take what reached them. */
static void
fuzz_step(struct fuzz_run *r)
{
	if (fuzz_vclock)
		fuzz_vns += r->tick;
	event_base_loop(r->base, EVLOOP_NONBLOCK);
	if (r->ufd < 0) {
		r->ufd = accept4(fuzz_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (r->ufd < 0 && errno != EAGAIN)
			fuzz_fail("accept: %s", strerror(errno));
	}
	if (r->cssl != NULL)
		fuzz_drain_tls(r);
	else if (!r->c_tls_failed)
		fuzz_drain(r->cfd, &r->c_eof, &r->c_got, "client");
	fuzz_drain(r->ufd, &r->u_eof, &r->u_got, "upstream");
}

/* A peer sends a segment; what the socket took is what it sent. */
static void
fuzz_send(struct fuzz_run *r, int fd, const uint8_t *p, size_t n, struct fuzz_buf *sent)
{
	ssize_t w;
	int tries = 0;

	if (fd == r->cfd && r->c_tls_failed)
		return;
	while (n > 0 && fd >= 0 && tries++ < FUZZ_SEND_TRIES) {
		if (fd == r->cfd && r->cssl != NULL) {
			int k = SSL_write(r->cssl, p, (int)(n < 16384 ? n : 16384));

			if (k > 0) {
				fuzz_append(sent, p, (size_t)k);
				p += k;
				n -= (size_t)k;
				continue;
			}
			k = SSL_get_error(r->cssl, k);
			ERR_clear_error();
			if (k != SSL_ERROR_WANT_READ && k != SSL_ERROR_WANT_WRITE)
				return;
			fuzz_step(r);
			continue;
		}
		w = send(fd, p, n, MSG_NOSIGNAL);
		if (w > 0) {
			fuzz_append(sent, p, (size_t)w);
			p += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			return; /* the session closed this leg */
		fuzz_step(r);
	}
}

/* What reached the client over its TLS. */
static void
fuzz_drain_tls(struct fuzz_run *r)
{
	unsigned char buf[16384];
	int k;

	while (!r->c_eof) {
		k = SSL_read(r->cssl, buf, sizeof(buf));
		if (k > 0) {
			fuzz_append(&r->c_got, buf, (size_t)k);
			if (r->c_got.len > FUZZ_PEER_MAX)
				fuzz_fail("the client received more than %u bytes", FUZZ_PEER_MAX);
			continue;
		}
		k = SSL_get_error(r->cssl, k);
		ERR_clear_error();
		if (k == SSL_ERROR_WANT_READ || k == SSL_ERROR_WANT_WRITE)
			return;
		r->c_eof = true; /* close_notify, EOF, or an error */
	}
}

/* Collects the bytes the handshake writes (see fuzz_client_tls). */
static long
fuzz_bio_cb(BIO *b, int oper, const char *argp, size_t len, int argi, long argl, int ret, size_t *processed)
{
	struct fuzz_run *r = (struct fuzz_run *)BIO_get_callback_arg(b);

	(void)len;
	(void)argi;
	(void)argl;
	if (oper == (BIO_CB_WRITE | BIO_CB_RETURN) && ret > 0 && processed != NULL && r != NULL)
		fuzz_append(&r->hs, argp, *processed);
	return ret;
}

/*
 * The client starts TLS on its connection, the loop turning between the
 * handshake's steps.  Whatever the client read before is plaintext already
 * counted; a failed handshake (TLS at a wrong moment: the session answers
 * in plaintext) ends the client's part, since what follows on the wire is
 * neither plaintext the records hold nor TLS.  The session then took the
 * handshake's bytes for plaintext: they count as sent.
 */
static void
fuzz_client_tls(struct fuzz_run *r)
{
	int k, tries;

	if (r->cssl != NULL || r->c_tls_failed || r->c_shut || r->c_eof)
		return;
	fuzz_step(r); /* take the 220 (or whatever came) in plaintext first */
	if ((r->cssl = SSL_new(fuzz_client_ctx)) == NULL || SSL_set_fd(r->cssl, r->cfd) != 1)
		fuzz_fail("client SSL");
	SSL_set_tlsext_host_name(r->cssl, "mx.fuzz.example");
	SSL_set_connect_state(r->cssl);
	BIO_set_callback_ex(SSL_get_wbio(r->cssl), fuzz_bio_cb);
	BIO_set_callback_arg(SSL_get_wbio(r->cssl), (char *)r);
	for (tries = 0; tries < 2000; tries++) {
		k = SSL_do_handshake(r->cssl);
		if (k == 1) {
			/* From now on the wire carries records, not plaintext. */
			BIO_set_callback_ex(SSL_get_wbio(r->cssl), NULL);
			return;
		}
		k = SSL_get_error(r->cssl, k);
		ERR_clear_error();
		if (k != SSL_ERROR_WANT_READ && k != SSL_ERROR_WANT_WRITE)
			break;
		if (fuzz_vclock)
			fuzz_vns += r->tick; /* a rule's delay on the handshake runs out */
		event_base_loop(r->base, EVLOOP_NONBLOCK);
		if (r->ufd < 0)
			r->ufd = accept4(fuzz_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		fuzz_drain(r->ufd, &r->u_eof, &r->u_got, "upstream");
	}
	SSL_free(r->cssl);
	r->cssl = NULL;
	r->c_tls_failed = true;
	fuzz_append(&r->c_sent, r->hs.p, r->hs.len);
}

/* Every session (there is one). */
static const struct reader_filter fuzz_all;

static int
fuzz_session_cb(const struct reader_session *row, void *arg)
{
	int64_t *id = arg;

	*id = row->id;
	return 0;
}

static int
fuzz_event_cb(const struct reader_event *ev, void *arg)
{
	struct fuzz_rec *rec = arg;
	bool fwd = !(ev->flags & (STORE_F_DROPPED | STORE_F_ALTERED));

	if (ev->seq <= rec->last_seq && !rec->bad) {
		rec->bad = true;
		snprintf(rec->why, sizeof(rec->why), "event seq %lld after %lld", (long long)ev->seq,
			 (long long)rec->last_seq);
	}
	rec->last_seq = ev->seq;
	if (ev->flags & STORE_F_REDACTED && !rec->bad) {
		rec->bad = true;
		snprintf(rec->why, sizeof(rec->why), "event %lld redacted with --redact-auth off", (long long)ev->seq);
	}
	if (ev->raw == NULL || ev->raw_len == 0)
		return 0;
	switch (ev->side) {
	case STORE_SIDE_CLIENT:
		fuzz_append(&rec->client, ev->raw, ev->raw_len);
		if (fwd)
			fuzz_append(&rec->to_up, ev->raw, ev->raw_len);
		break;
	case STORE_SIDE_UPSTREAM:
		fuzz_append(&rec->upstream, ev->raw, ev->raw_len);
		if (fwd)
			fuzz_append(&rec->to_cl, ev->raw, ev->raw_len);
		break;
	case STORE_SIDE_PROXY:
		/* The sink's own replies are proxy events too, and may be
		 * altered (the EHLO with STARTTLS added) like any other. */
		if (fwd && (ev->flags & STORE_F_TO_CLIENT))
			fuzz_append(&rec->to_cl, ev->raw, ev->raw_len);
		if (fwd && (ev->flags & STORE_F_TO_UPSTREAM))
			fuzz_append(&rec->to_up, ev->raw, ev->raw_len);
		/* Bytes recorded before as on their way to the upstream that
		 * never left (a rule held them and the session ended): they
		 * are the last ones recorded so. */
		if ((ev->flags & (STORE_F_TO_UPSTREAM | STORE_F_DROPPED)) == (STORE_F_TO_UPSTREAM | STORE_F_DROPPED) &&
		    ev->kind == STORE_KIND_ACTION) {
			if (rec->to_up.len < ev->raw_len ||
			    memcmp(rec->to_up.p + rec->to_up.len - ev->raw_len, ev->raw, ev->raw_len) != 0) {
				if (!rec->bad)
					snprintf(rec->why, sizeof(rec->why),
						 "event %lld takes back bytes that are not the last forwarded",
						 (long long)ev->seq);
				rec->bad = true;
			} else {
				rec->to_up.len -= ev->raw_len;
			}
		}
		break;
	}
	return 0;
}

/* One event on the saved stderr, bytes escaped: what a failure report
 * shows so the failing exchange can be read without a debugger. */
static int
fuzz_dump_cb(const struct reader_event *ev, void *arg)
{
	const unsigned char *p = ev->raw;
	size_t i;

	(void)arg;
	dprintf(fuzz_errfd, "  #%lld %s %s flags=0x%x %s%s%s ", (long long)ev->seq, store_side_name(ev->side),
		store_kind_name(ev->kind), ev->flags, ev->text != NULL ? "text=\"" : "",
		ev->text != NULL ? ev->text : "", ev->text != NULL ? "\" " : "");
	for (i = 0; p != NULL && i < ev->raw_len && i < 200; i++) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
			dprintf(fuzz_errfd, "%c", p[i]);
		else
			dprintf(fuzz_errfd, "\\x%02x", p[i]);
	}
	dprintf(fuzz_errfd, "%s\n", p != NULL && ev->raw_len > 200 ? "..." : "");
	return 0;
}

/* The recorded events of the (only) session, after store_close. */
static void
fuzz_dump(void)
{
	struct reader *rd;
	char err[256];
	int64_t sid = 0;

	if ((rd = reader_open(fuzz_db, err, sizeof(err))) == NULL)
		return;
	dprintf(fuzz_errfd, "fuzz_session: the recorded events:\n");
	if (reader_sessions(rd, &fuzz_all, NULL, fuzz_session_cb, &sid, NULL, err, sizeof(err)) == 0 && sid != 0)
		reader_events(rd, sid, READER_BYTES_ALL, fuzz_dump_cb, NULL, err, sizeof(err));
	reader_close(rd);
}

/* Read the database back and compare with what the peers saw. */
static void
fuzz_check(struct fuzz_run *r)
{
	struct reader *rd;
	struct fuzz_rec rec;
	char err[256];
	int64_t sid = 0;

	memset(&rec, 0, sizeof(rec));
	if ((rd = reader_open(fuzz_db, err, sizeof(err))) == NULL)
		fuzz_fail("reader_open: %s", err);
	if (reader_sessions(rd, &fuzz_all, NULL, fuzz_session_cb, &sid, NULL, err, sizeof(err)) != 0 || sid == 0)
		fuzz_fail("no session recorded: %s", err);
	if (reader_events(rd, sid, READER_BYTES_ALL, fuzz_event_cb, &rec, err, sizeof(err)) != 0)
		fuzz_fail("reader_events: %s", err);
	reader_close(rd);
	if (rec.bad)
		fuzz_fail_dump("%s", rec.why);
	if (!fuzz_prefix(&rec.client, &r->c_sent))
		fuzz_fail_dump("the client's recorded bytes (%zu) are not what it sent (%zu)", rec.client.len,
			  r->c_sent.len);
	if (!fuzz_prefix(&rec.upstream, &r->u_sent))
		fuzz_fail_dump("the upstream's recorded bytes (%zu) are not what it sent (%zu)", rec.upstream.len,
			  r->u_sent.len);
	if (!fuzz_prefix(&r->u_got, &rec.to_up))
		fuzz_fail_dump("the upstream received %zu bytes that the records do not account for (%zu)", r->u_got.len,
			  rec.to_up.len);
	/* A client that never started TLS after the 220 to its STARTTLS gets
	 * the session's TLS alert when the handshake fails: TLS, not SMTP,
	 * so no record holds it.  Alert records (15 03 0x 00 02 ..) at the
	 * end are left out. */
	while (r->cssl == NULL && r->c_got.len >= rec.to_cl.len + 7) {
		const unsigned char *a = r->c_got.p + r->c_got.len - 7;

		if (a[0] != 0x15 || a[1] != 0x03 || a[2] > 0x04 || a[3] != 0x00 || a[4] != 0x02)
			break;
		r->c_got.len -= 7;
	}
	if (!fuzz_prefix(&r->c_got, &rec.to_cl))
		fuzz_fail_dump("the client received %zu bytes that the records do not account for (%zu)", r->c_got.len,
			  rec.to_cl.len);
#ifdef FUZZ_STRICT
	/* (After a failed client handshake the client stops reading.) */
	if (!r->c_tls_failed && r->c_got.len != rec.to_cl.len)
		fuzz_fail_dump("strict: the client received %zu of the %zu bytes recorded as sent to it", r->c_got.len,
			       rec.to_cl.len);
	if (!r->sink && r->u_got.len != rec.to_up.len)
		fuzz_fail_dump("strict: the upstream received %zu of the %zu bytes recorded as sent to it",
			       r->u_got.len, rec.to_up.len);
#endif
	free(rec.client.p);
	free(rec.upstream.p);
	free(rec.to_up.p);
	free(rec.to_cl.p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_run r;
	struct sockaddr_in peer;
	const struct proxy_route *route;
	char err[256], path[160];
	int sv[2], turns;
	size_t i = 1, n;
	uint8_t op;

	if (size < 1)
		return 0;
	memset(&r, 0, sizeof(r));
	r.ufd = -1;
	r.sink = (data[0] & 1) != 0;
	if (data[0] & 16) {
		if (size < 2)
			return 0;
		i = 2;
		r.tick = FUZZ_TICK_NS;
	}
	if (data[0] & 8)
		route = r.sink ? &fuzz_sink_tls : &fuzz_relay_tls;
	else
		route = r.sink ? &fuzz_sink : (data[0] & 4) ? &fuzz_refused : &fuzz_relay;
	if (getenv("FUZZ_SESSION_TRACE") == NULL)
		log_init((data[0] & 2) ? 1 : 0);

	unlink(fuzz_db);
	snprintf(path, sizeof(path), "%s-wal", fuzz_db);
	unlink(path);
	snprintf(path, sizeof(path), "%s-shm", fuzz_db);
	unlink(path);
	/* The last run's message content (content.h): it would pile up on
	 * tmpfs run after run. */
	snprintf(path, sizeof(path), "%s-content", fuzz_db);
	nftw(path, fuzz_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	{
		/* A copy of the migrated template: store_open is not what is
		 * fuzzed here, and creating the schema every time is slow. */
		int ofd = open(fuzz_db, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		FILE *in = fopen(fuzz_template, "rb"), *out = ofd >= 0 ? fdopen(ofd, "wb") : NULL;
		char buf[65536];
		size_t k;

		if (in == NULL || out == NULL)
			fuzz_fail("copying the template database");
		while ((k = fread(buf, 1, sizeof(buf), in)) > 0)
			fwrite(buf, 1, k, out);
		fclose(in);
		if (fclose(out) != 0)
			fuzz_fail("copying the template database");
	}
	if ((r.st = store_open(fuzz_db, err, sizeof(err))) == NULL)
		fuzz_fail("store_open: %s", err);
	/* (FUZZ_SESSION_REALTIME=1: real clocks, to tell a harness artefact
	 * from a real hang) */
	fuzz_vclock_set(r.tick != 0 && getenv("FUZZ_SESSION_REALTIME") == NULL); /* before the base reads the clock */
	if ((r.base = event_base_new()) == NULL)
		fuzz_fail("event_base_new");
	if (session_ctx_init(&r.ctx, r.base, NULL, r.st, fuzz_tls, &fuzz_cfg) < 0)
		fuzz_fail("session_ctx_init");
	r.ctx.on_session_end = fuzz_end_cb;
	r.ctx.arg = &r;
	if (r.tick != 0) {
		r.ctx.rules = fuzz_rules; /* borrowed: the sessions take their reference */
		r.ctx.sessions_started = data[1];
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		fuzz_fail("socketpair: %s", strerror(errno));
	r.cfd = sv[0];
	memset(&peer, 0, sizeof(peer));
	peer.sin_family = AF_INET;
	peer.sin_port = htons(40000);
	peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (session_start(&r.ctx, sv[1], (struct sockaddr *)&peer, sizeof(peer), route, "fuzz") < 0)
		fuzz_fail("session_start");

	while (i < size) {
		op = data[i++];
		n = op >> 3;
		if ((op & 7) <= 4 && i < size)
			n = n << 8 | data[i++];
		n = n + 1 < size - i ? n + 1 : size - i;
		switch (op & 7) {
		case 0:
		case 1:
		case 2:
			if (!r.c_shut)
				fuzz_send(&r, r.cfd, data + i, n, &r.c_sent);
			i += n;
			break;
		case 3:
		case 4:
			if (r.ufd < 0)
				fuzz_step(&r);
			if (!r.u_shut)
				fuzz_send(&r, r.ufd, data + i, n, &r.u_sent);
			i += n;
			break;
		case 5:
			if ((op >> 3) == 31) {
				fuzz_client_tls(&r);
				break;
			}
			if ((op >> 3) == 30 && r.tick != 0) {
				fuzz_vns += 25 * FUZZ_TICK_NS; /* the rules' delays run out */
				break;
			}
			for (turns = 0; turns < (int)(op >> 3) + 1; turns++)
				fuzz_step(&r);
			break;
		case 6:
			if (!r.c_shut)
				shutdown(r.cfd, SHUT_WR);
			r.c_shut = true;
			break;
		case 7:
			if (r.ufd >= 0 && !r.u_shut) {
				shutdown(r.ufd, SHUT_WR);
				r.u_shut = true;
			}
			break;
		}
		fuzz_step(&r);
	}

	/* Both peers close; the session must end. */
	shutdown(r.cfd, SHUT_WR);
	for (turns = 0; turns < FUZZ_END_TURNS && !r.ended; turns++) {
		if (turns == FUZZ_END_FAST && r.tick != 0)
			r.tick = FUZZ_END_TICK_NS; /* a slow throttle still drains */
		fuzz_step(&r);
		if (r.ufd >= 0 && !r.u_shut) {
			shutdown(r.ufd, SHUT_WR);
			r.u_shut = true;
		}
	}
	if (!r.ended) {
		struct session *s = TAILQ_FIRST(&r.ctx.sessions);

		if (s != NULL)
			dprintf(fuzz_errfd,
				"fuzz_session: stuck: state %d; client leg %s, output %zu, fd %d, hold %d, "
				"close-after-flush %d; upstream leg %s, output %zu, fd %d, hold %d, "
				"close-after-flush %d, tls %d; rule hold %d (resume %d), stalled %d\n",
				(int)s->state, s->client.open ? "open" : "closed", leg_output_len(&s->client),
				(int)s->client.fd, s->client.hold_output, s->client.close_after_flush,
				s->upstream.open ? "open" : "closed", leg_output_len(&s->upstream), (int)s->upstream.fd,
				s->upstream.hold_output, s->upstream.close_after_flush, s->upstream.tls, (int)s->rhold,
				s->rresume, s->stalled);
		session_ctx_close_all(&r.ctx);
		fuzz_vclock_set(false);
		store_close(r.st);
		fuzz_dump();
		fuzz_fail("the session did not end after both peers closed (%d loop turns)", turns);
	}
	for (turns = 0; turns < 100 && ((!r.c_eof && !r.c_tls_failed) || (r.ufd >= 0 && !r.u_eof)); turns++)
		fuzz_step(&r);
	SSL_free(r.cssl);
	close(r.cfd);
	if (r.ufd >= 0)
		close(r.ufd);
	/* A connection the session made but we never accepted. */
	while ((sv[0] = accept4(fuzz_lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
		close(sv[0]);
	session_ctx_free(&r.ctx);
	event_base_free(r.base);
	fuzz_vclock_set(false);
	if (store_close(r.st) != 0)
		fuzz_fail("store_close: records were lost");
	fuzz_check(&r);
	if (getenv("FUZZ_SESSION_DUMP") != NULL) {
		/* FUZZ_SESSION_DUMP=1: show each input's exchange. */
		fuzz_dump();
		dprintf(fuzz_errfd, "fuzz_session: client sent %zu, received %zu; upstream sent %zu, received %zu\n",
			r.c_sent.len, r.c_got.len, r.u_sent.len, r.u_got.len);
	}
	free(r.hs.p);
	free(r.c_sent.p);
	free(r.u_sent.p);
	free(r.c_got.p);
	free(r.u_got.p);
	return 0;
}
