/*
 * rules_decide.c - what rule matching costs per message (`make bench-rules`).
 *
 * Runs the units of one message on a reused connection (MAIL, RCPT, DATA,
 * the end of data, and the four replies: what smtptap decides on for each
 * message of `make bench` workload B) through rules_decide, with no rules
 * and with sets of 100 rules that never match, and prints the cost per
 * message (CPU time; `rules_decide [N [CASE]]` runs N messages, 200000
 * by default, of every case or only CASE (0-based): under
 * valgrind --tool=callgrind that counts instructions instead, which a
 * busy machine does not disturb).  `make bench` spends about 120 us of CPU per message in
 * smtptap, so 5% is about 6 us.  A measurement, not a test: it prints
 * numbers and never fails on them.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smtptap/rules.h"

static int nmsg = 200000;
static int only = -1, ncase; /* run only case `only` (0-based), if given */
#define NMSG nmsg

static double
now_ns(void)
{
	struct timespec ts;

	/* CPU time: on a shared machine, wall time counts other processes */
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* ns per message for the set built from fmt (one rule per %d, 100 of them). */
static double
run(const char *name, const char *fmt, size_t nrules)
{
	static const char hdrs[] = "From: a@example.com\r\nTo: b@example.org\r\nSubject: bench message\r\n"
				   "Message-ID: <1@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n";
	static char text[1 << 20];
	static struct rules_decision dec;
	const char *rcpts[1] = { "user-1234@example.org" };
	struct rules_unit u[8];
	struct rules_facts f;
	struct sockaddr_in sin;
	struct rules *r;
	struct rules_session *rs = NULL;
	char err[2048];
	size_t k, n = 0, fired = 0;
	double t0, t1;
	int m;

	if (only >= 0 && ncase++ != only)
		return 0;
	for (k = 0; k < nrules; k++)
		n += (size_t)snprintf(text + n, sizeof(text) - n, fmt, (int)k + 1, (int)k);
	r = rules_parse(name, text, n, 1, err, sizeof(err));
	if (r == NULL) {
		fprintf(stderr, "%s\n", err);
		exit(1);
	}
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	memset(&f, 0, sizeof(f));
	f.client = (const struct sockaddr *)&sin;
	f.listener = "127.0.0.1:2525";
	memset(u, 0, sizeof(u));
	u[0].trigger = RULES_ON_COMMAND;
	u[0].verb = SMTP_VERB_MAIL;
	u[0].verb_text = "MAIL";
	u[0].verb_text_len = 4;
	u[0].arg = "FROM:<sender-5678@example.com> SIZE=1024";
	u[0].arg_len = strlen(u[0].arg);
	u[0].mail_from = "sender-5678@example.com";
	u[0].mail_from_len = strlen(u[0].mail_from);
	u[0].helo = "client.example.com";
	u[2] = u[0];
	u[2].verb = SMTP_VERB_RCPT;
	u[2].verb_text = "RCPT";
	u[2].arg = "TO:<user-1234@example.org>";
	u[2].arg_len = strlen(u[2].arg);
	u[2].rcpts = rcpts;
	u[2].nrcpts = 1;
	u[4] = u[2];
	u[4].verb = SMTP_VERB_DATA;
	u[4].verb_text = "DATA";
	u[4].arg = "";
	u[4].arg_len = 0;
	u[6] = u[4];
	u[6].trigger = RULES_ON_DATA_END;
	u[6].has_size = true;
	u[6].size = 1024;
	u[6].headers = hdrs;
	u[6].headers_len = sizeof(hdrs) - 1;
	for (k = 1; k < 8; k += 2) {
		u[k] = u[k - 1];
		u[k].trigger = RULES_ON_REPLY;
		u[k].answers = k == 7 ? RULES_ANSWERS_DATA_END : RULES_ANSWERS_COMMAND;
		u[k].code = k == 5 ? 354 : 250;
	}

	t0 = now_ns();
	for (m = 0; m < NMSG; m++) {
		/* a session of 10 messages, as smtp-source -m reuses them */
		if (m % 10 == 0) {
			if (m > 0)
				rules_session_free(rs);
			rs = rules_session_new(r);
			f.session_no = (uint64_t)m / 10 + 1;
		}
		for (k = 0; k < 8; k++)
			fired += rules_decide(r, rs, &u[k], &f, &dec);
	}
	t1 = now_ns();
	rules_session_free(rs);
	rules_unref(r);
	printf("  %-58s %7.0f ns/message  (%.2f%% of 120 us)%s\n", name, (t1 - t0) / NMSG, (t1 - t0) / NMSG / 1200,
	       fired > 0 ? "  ** some fired **" : "");
	return (t1 - t0) / NMSG;
}

int
main(int argc, char **argv)
{
	if (argc > 1)
		nmsg = atoi(argv[1]) > 0 ? atoi(argv[1]) : nmsg;
	if (argc > 2)
		only = atoi(argv[2]);
	printf("rules_decide, 8 units per message (MAIL RCPT DATA data-end and their replies), %d messages:\n", NMSG);
	run("no rules", "", 0);
	run("100 x on rcpt to ~ \"^nobody-N@example\\.org$\"", "on rcpt to ~ \"^nobody-%d@example\\\\.org$\" reply 550 # %d\n",
	    100);
	run("100 x on mail from ~* \"@spam-N\\.example$\"", "on mail from ~* \"@spam-%d\\\\.example$\" reply 550 # %d\n", 100);
	run("100 x on rcpt to ~ \"^x[0-9]+-N@\" (regex, literal prefilter)", "on rcpt to ~ \"^x[0-9]+-%d@\" reply 550 # %d\n",
	    100);
	run("100 x on command arg ~* \"X-NOPE-N\" (every command)", "on command arg ~* \"X-NOPE-%d\" reply 550 # %d\n", 100);
	run("100 x on data-end header X-Test-N ~ \"fail\"", "on data-end header X-Test-%d ~ \"fail\" reply 550 # %d\n", 100);
	run("100 x on data-end subject ~ \"^fail N$\"", "on data-end subject ~ \"^fail %d$\" reply 550 # %d\n", 100);
	run("100 x session/client/size conditions, all triggers",
	    "on command session 1000000%d- reply 451 # %d\n", 100);
	run("100 x probability 0.000001 (a draw each)", "on command probability 0.000001 seed %d reply 451 # %d\n", 100);
	run("100 x on ehlo / on tls / on greeting (never these units)", "on ehlo strip STARTTLS # %d %d\n", 100);
	run("100 x on rcpt to ~ \"^(a|b)N\" (literal after a group)", "on rcpt to ~ \"^(a|b)%d\" reply 550 # %d\n", 100);
	run("100 x on rcpt to ~ \"^[0-9]{N}[a-z]\" (anchored, no literal)",
	    "on rcpt to ~ \"^[0-9]{%d}[a-z]\" reply 550 # %d\n", 100);
	run("100 x on rcpt to ~ \"[0-9]{N}[A-Z]\" (no literal, N+1 bytes at least)",
	    "on rcpt to ~ \"[0-9]{%d}[A-Z]\" reply 550 # %d\n", 100);
	run("WORST: 100 x on rcpt to ~ \"[0-9]{1,N}[A-Z]\" (regexec each)",
	    "on rcpt to ~ \"[0-9]{1,%d}[A-Z]\" reply 550 # %d\n", 100);
	return 0;
}
