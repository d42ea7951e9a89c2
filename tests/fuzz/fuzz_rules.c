/*
 * fuzz_rules.c - libFuzzer target for the rules language (rules_parse)
 * and the decision (rules_decide).
 *
 * The input is a rules file, optionally followed by a NUL byte and bytes
 * that make up units to decide on.  Besides memory errors (ASan/UBSan), it
 * checks that:
 *   - the set is refused exactly when at least one error was reported, and
 *     every error has a line in the text, a column and a message;
 *   - rules_parse agrees with rules_parse_cb, its err string NUL-terminated;
 *   - each rule, written back by rule_format, parses again (alone) to a rule
 *     that formats the same (the normalised form is stable);
 *   - every regular expression's prefilter decides exactly as regexec, and
 *     every rule matches a unit exactly when the slow path (no per-call
 *     caches, no prefilter, no bigram filter, no header index) says so;
 *   - decisions are consistent: a fired rule is one of the set, its line
 *     and text its own, its reply CRLF-terminated and bounded, the strip
 *     list bounded; a rule with a limit never fires more often.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "smtptap/rules.h"
#include "smtptap/rules_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/*
 * Work per input is bounded so that a set of hundreds of expressions that
 * must all run regexec (no literal to filter on) stays quick: subjects of
 * at most FUZZ_SUBJECT_MAX bytes (the cut at SMTP_LINE_MAX is unit-tested),
 * FUZZ_UNITS_MAX units, the slow reference on the first FUZZ_SLOW_RULES
 * rules.
 */
#define FUZZ_SUBJECT_MAX 1024
#define FUZZ_HEADERS_MAX 8192
#define FUZZ_UNITS_MAX 32
#define FUZZ_SLOW_RULES 128

struct fuzz_errs {
	size_t n;
	unsigned lines;
	char last[256];
};

static void fuzz_error(void *, unsigned, unsigned, const char *);
static void fuzz_check_format(const struct rule *ru);
static void fuzz_check_regexes(const struct rule *ru, const uint8_t *tail, size_t tlen);
static void fuzz_decide(struct rules *r, const uint8_t *tail, size_t tlen);

static void
fuzz_error(void *arg, unsigned line, unsigned col, const char *msg)
{
	struct fuzz_errs *e = arg;

	/* a line of the text (or the one after its last line break) */
	if (line < 1 || line > e->lines + 1 || col < 1 || msg == NULL || msg[0] == '\0')
		abort();
	snprintf(e->last, sizeof(e->last), "%s", msg);
	e->n++;
}

static void
fuzz_check_format(const struct rule *ru)
{
	static char a[RULES_RULE_MAX * 2], b[RULES_RULE_MAX * 2];
	struct fuzz_errs e = { 0, 1, "" };
	struct rules *again;
	size_t n;

	n = rule_format(ru, a, sizeof(a));
	if (n >= sizeof(a) || strlen(a) != n)
		abort();
	/* too long for one line is the one acceptable refusal */
	if (n > RULES_LINE_MAX)
		return;
	again = rules_parse_cb(a, n, 0, fuzz_error, &e);
	if (again == NULL) {
		/* the default reply text made it one word longer than allowed */
		if (e.n == 1 && strstr(e.last, "words in one rule") != NULL)
			return;
		fprintf(stderr, "normalised rule does not parse: %s\n", a);
		abort();
	}
	if (rules_count(again) != 1)
		abort();
	rule_format(rules_at(again, 0), b, sizeof(b));
	if (strcmp(a, b) != 0) {
		fprintf(stderr, "normalised form not stable:\n%s\n%s\n", a, b);
		abort();
	}
	rules_unref(again);
}

/* Subjects from the tail: all of it, and a few slices. */
static void
fuzz_check_one_re(const struct rules_re *re, const uint8_t *tail, size_t tlen)
{
	size_t k, off, len;

	if (!re->compiled)
		return;
	for (k = 0; k < 4; k++) {
		off = k == 0 || tlen == 0 ? 0 : tail[k % tlen] % (tlen + 1);
		len = k == 0 ? (tlen < FUZZ_SUBJECT_MAX ? tlen : FUZZ_SUBJECT_MAX) : tlen - off < 64 ? tlen - off : 64;
		if (rules_re_match(re, (const char *)tail + off, len) !=
		    rules_re_match_slow(re, (const char *)tail + off, len)) {
			fprintf(stderr, "prefilter disagrees with regexec on /%s/\n", re->src);
			abort();
		}
	}
}

static void
fuzz_check_regexes(const struct rule *ru, const uint8_t *tail, size_t tlen)
{
	size_t k;

	for (k = 0; k < RULES_NFIELDS; k++)
		fuzz_check_one_re(&ru->field[k], tail, tlen);
	for (k = 0; k < ru->nhdrs; k++)
		fuzz_check_one_re(&ru->hdrs[k].re, tail, tlen);
}

/* A few units made of the tail's bytes, decided in two sessions. */
static void
fuzz_decide(struct rules *r, const uint8_t *tail, size_t tlen)
{
	static const char *const verbs[] = { "X", "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT",
					     "RSET", "NOOP", "VRFY", "EXPN", "HELP", "QUIT", "STARTTLS", "AUTH" };
	static struct rules_decision dec;
	struct rules_session *rs[2];
	struct sockaddr_in sin;
	struct sockaddr_in6 sin6;
	struct rules_facts f;
	struct rules_unit u;
	const char *rcpts[3], *s = (const char *)tail;
	char helo[32];
	uint64_t *fired_before;
	size_t k, i, n = rules_count(r), step;
	bool got;

	if (tlen < 4)
		return;
	rs[0] = rules_session_new(r);
	rs[1] = rules_session_new(r);
	fired_before = calloc(n + 1, sizeof(*fired_before));
	if (rs[0] == NULL || rs[1] == NULL || fired_before == NULL)
		abort();
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	memcpy(&sin.sin_addr, tail, 4);
	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	for (k = 0; k < 16; k++)
		sin6.sin6_addr.s6_addr[k] = tail[k % tlen];
	snprintf(helo, sizeof(helo), "%.*s", (int)(tlen < 20 ? tlen : 20), s);
	for (k = 0; k < 3; k++)
		rcpts[k] = helo + k;

	/* at most FUZZ_UNITS_MAX units, each from a window of the tail */
	step = tlen / FUZZ_UNITS_MAX + 1;
	for (k = 0; k + 4 <= tlen && k / step < FUZZ_UNITS_MAX; k += step) {
		const uint8_t *b = tail + k;
		size_t rest = tlen - k - 4 < FUZZ_SUBJECT_MAX ? tlen - k - 4 : FUZZ_SUBJECT_MAX;

		memset(&u, 0, sizeof(u));
		u.trigger = (enum rules_trigger)(b[0] % 7); /* 6: out of range */
		u.verb = (enum smtp_verb)(b[1] % (RULES_NVERBS + 1));
		u.verb_text = verbs[b[1] % RULES_NVERBS];
		u.verb_text_len = strlen(u.verb_text);
		u.answers = (enum rules_answer)(b[2] % 4);
		u.leg = (enum rules_leg)(b[2] % 3);
		u.code = 150 + b[3] * 2;
		u.arg = rest > 0 ? (const char *)b + 4 : NULL;
		u.arg_len = rest;
		u.mail_from = b[0] & 8 ? (const char *)b + 4 : NULL;
		u.mail_from_len = rest / 2;
		u.rcpts = rcpts;
		u.nrcpts = b[1] % 4;
		u.helo = b[1] & 16 ? helo : NULL;
		u.auth_mech = b[2] & 16 ? helo : NULL;
		u.auth_user = b[2] & 32 ? helo : NULL;
		u.has_size = b[3] & 1;
		u.size = (uint64_t)b[3] << (b[2] % 40);
		u.headers = b[0] & 16 ? s : NULL;
		u.headers_len = tlen < FUZZ_HEADERS_MAX ? tlen : FUZZ_HEADERS_MAX;

		memset(&f, 0, sizeof(f));
		f.session_no = 1 + b[0] % 3;
		f.client = b[3] & 2 ? (const struct sockaddr *)&sin6 : b[3] & 4 ? (const struct sockaddr *)&sin : NULL;
		f.listener = b[3] & 8 ? "127.0.0.1:2525" : b[3] & 16 ? "[::1]:25" : NULL;
		f.sink = b[1] & 32;

		for (i = 0; i < n; i++) {
			const struct rule *ru = rules_at(r, i);

			fired_before[i] = ru->fired;
			if (i < FUZZ_SLOW_RULES &&
			    rules_rule_matches(ru, &u, &f, false) != rules_rule_matches(ru, &u, &f, true)) {
				fprintf(stderr, "fast and slow matching disagree on line %u: %s\n", ru->line, ru->text);
				abort();
			}
		}
		got = rules_decide(r, rs[b[2] & 1], &u, &f, &dec);
		if (got != (dec.rule != NULL))
			abort();
		if (!got) {
			if (dec.actions != 0)
				abort();
			continue;
		}
		/* the fired rule is one of the set, and only it counted */
		for (i = 0; i < n && rules_at(r, i) != dec.rule; i++)
			;
		if (i == n || dec.line != rule_line(dec.rule) || dec.text != rule_text(dec.rule) || dec.actions == 0)
			abort();
		if (dec.rule->fired != fired_before[i] + 1)
			abort();
		if ((dec.rule->conds & RULES_C_LIMIT) && dec.rule->fired > dec.rule->limit)
			abort();
		if (dec.actions & (RULES_A_REPLY | RULES_A_REWRITE)) {
			if (dec.reply_len < 5 || dec.reply_len >= RULES_REPLY_MAX || dec.reply[dec.reply_len] != '\0' ||
			    memcmp(dec.reply + dec.reply_len - 2, "\r\n", 2) != 0 || dec.code < 200 || dec.code > 599)
				abort();
		}
		if (u.trigger == RULES_ON_REPLY && (dec.actions & RULES_A_REPLY))
			abort();
		if (dec.nstrip > RULES_STRIP_MAX)
			abort();
	}
	free(fired_before);
	rules_session_free(rs[0]);
	rules_session_free(rs[1]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char err[4096];
	const uint8_t *nul = memchr(data, '\0', size);
	size_t tlen = nul != NULL ? (size_t)(nul - data) : size, k;
	const uint8_t *tail = nul != NULL ? nul + 1 : data + size;
	size_t taillen = nul != NULL ? size - tlen - 1 : 0;
	struct fuzz_errs e = { 0, 1, "" };
	struct rules *r, *r2;

	for (k = 0; k < tlen; k++)
		e.lines += data[k] == '\n';
	r = rules_parse_cb((const char *)data, tlen, 7, fuzz_error, &e);
	if ((r == NULL) != (e.n > 0))
		abort();
	r2 = rules_parse("fuzz.rules", (const char *)data, tlen, 7, err, sizeof(err));
	if ((r2 == NULL) != (r == NULL) || strlen(err) >= sizeof(err) || (r2 == NULL && err[0] == '\0'))
		abort();
	if (r2 != NULL && rules_count(r2) != rules_count(r))
		abort();
	rules_unref(r2);
	if (r == NULL)
		return 0;
	for (k = 0; k < rules_count(r); k++) {
		fuzz_check_format(rules_at(r, k));
		fuzz_check_regexes(rules_at(r, k), tail, taillen);
	}
	fuzz_decide(r, tail, taillen);
	rules_unref(r);
	return 0;
}
