/*
 * rules.c - a parsed rule set and the decision (see rules.h): what a rule
 * does to a unit of the conversation.  rules_parse.c turns the text of a
 * rules file into the struct rules this file indexes and evaluates.
 *
 * rules_decide runs on every command, reply and end of data of every
 * session, so it is built to cost little when nothing matches: each unit
 * looks only at the rules that can fire on its kind (candidate lists built
 * once per set), cheap conditions go before regular expressions, most
 * regular expressions are settled by a literal search without regexec, and
 * nothing is allocated.
 */
#include "smtptap/rules.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "smtptap/rules_int.h"

static uint64_t rules_splitmix64(uint64_t x);
static unsigned rules_draw_unit(const struct rule *ru);
static int rules_unit_list(const struct rules_unit *u, unsigned *list, unsigned *unit, unsigned *any);
static bool rules_field_value(const struct rules_unit *u, enum rules_field f, const char **p, size_t *len);
static bool rules_match_re_pos(const struct rules_re *re, const char *s, size_t len);
static int rules_header_search(const char *h, size_t hlen, const char *name, size_t namelen, const struct rules_re *re);
static bool rules_match_to(const struct rules_re *re, const struct rules_unit *u);
static bool rules_sockaddr_bytes(const struct sockaddr *sa, int *family, uint8_t out[16]);
static bool rules_prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits);
static bool rules_match_listener(const struct rule *ru, const char *listener);
static bool rules_match(const struct rule *ru, const struct rules_unit *u, const struct rules_facts *f);
static void rules_fill(const struct rule *ru, struct rules_decision *out);
static bool rules_contains(const char *s, size_t len, const char *lit, size_t litlen, bool icase);
static bool rules_bytes_equal(const char *a, const char *b, size_t n, bool icase);
static bool rules_re_meta(char c);
static void rules_run_end(const char *buf, size_t start, size_t end, size_t *best_start, size_t *best_len);
static size_t rules_skip_bracket(const char *s, size_t n, size_t i);

/* Lower-case verb names as the language spells them, by enum smtp_verb. */
static const char *const rules_verb_names[RULES_NVERBS] = {
	[SMTP_VERB_UNKNOWN] = "command", [SMTP_VERB_HELO] = "helo",	    [SMTP_VERB_EHLO] = "ehlo",
	[SMTP_VERB_LHLO] = "lhlo",	 [SMTP_VERB_MAIL] = "mail",	    [SMTP_VERB_RCPT] = "rcpt",
	[SMTP_VERB_DATA] = "data",	 [SMTP_VERB_BDAT] = "bdat",	    [SMTP_VERB_RSET] = "rset",
	[SMTP_VERB_NOOP] = "noop",	 [SMTP_VERB_VRFY] = "vrfy",	    [SMTP_VERB_EXPN] = "expn",
	[SMTP_VERB_HELP] = "help",	 [SMTP_VERB_QUIT] = "quit",	    [SMTP_VERB_STARTTLS] = "starttls",
	[SMTP_VERB_AUTH] = "auth",
};

_Static_assert(SMTP_VERB_UNKNOWN == 0 && SMTP_VERB_AUTH == RULES_NVERBS - 1, "verbs are 0..RULES_NVERBS-1");
_Static_assert(RULES_NFIELDS <= 8, "field bits must stay below RULES_C_HEADER");

/* ------------------------------------------------------------------------
 * The set's lifetime.
 */

struct rules *
rules_ref(struct rules *r)
{
	if (r != NULL)
		r->refs++;
	return r;
}

void
rules_re_free(struct rules_re *re)
{
	if (re->compiled)
		regfree(&re->re);
	re->compiled = false;
	free(re->src);
	free(re->lit);
	re->src = re->lit = NULL;
}

void
rules_rule_free(struct rule *ru)
{
	size_t i;

	if (ru == NULL)
		return;
	for (i = 0; i < RULES_NFIELDS; i++)
		rules_re_free(&ru->field[i]);
	for (i = 0; i < ru->nhdrs; i++) {
		free(ru->hdrs[i].name);
		rules_re_free(&ru->hdrs[i].re);
	}
	free(ru->hdrs);
	for (i = 0; i < ru->nstrip; i++)
		free(ru->strip[i]);
	free(ru->codes_src);
	free(ru->reply);
	free(ru->text);
	free(ru);
}

void
rules_unref(struct rules *r)
{
	size_t i;

	if (r == NULL || --r->refs > 0)
		return;
	for (i = 0; i < r->n; i++)
		rules_rule_free(r->v[i]);
	free(r->v);
	free(r->list);
	free(r);
}

size_t
rules_count(const struct rules *r)
{
	return r != NULL ? r->n : 0;
}

uint64_t
rules_seed(const struct rules *r)
{
	return r != NULL ? r->seed : 0;
}

const struct rule *
rules_at(const struct rules *r, size_t i)
{
	return r != NULL && i < r->n ? r->v[i] : NULL;
}

unsigned
rule_line(const struct rule *ru)
{
	return ru->line;
}

const char *
rule_text(const struct rule *ru)
{
	return ru->text;
}

const char *
rules_trigger_name(enum rules_trigger t, enum smtp_verb verb)
{
	switch (t) {
	case RULES_ON_CONNECT:
		return "connect";
	case RULES_ON_GREETING:
		return "greeting";
	case RULES_ON_COMMAND:
		return (unsigned)verb < RULES_NVERBS ? rules_verb_names[verb] : "command";
	case RULES_ON_DATA_END:
		return "data-end";
	case RULES_ON_TLS:
		return "tls";
	case RULES_ON_REPLY:
		return "reply";
	}
	return "?";
}

/* ------------------------------------------------------------------------
 * Reading a file.
 */

int
rules_read_file(const char *path, char **text, size_t *len, char *err, size_t errsz)
{
	struct stat sb;
	char *buf = NULL;
	size_t n = 0, cap;
	ssize_t got;
	int fd;

	*text = NULL;
	*len = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) < 0) {
		snprintf(err, errsz, "%s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	if (S_ISDIR(sb.st_mode)) {
		snprintf(err, errsz, "%s: %s", path, strerror(EISDIR));
		close(fd);
		return -1;
	}
	/* st_size is a hint (a pipe or /proc file says 0): read to the end,
	 * growing, and never past the bound. */
	cap = S_ISREG(sb.st_mode) && sb.st_size > 0 && sb.st_size <= RULES_FILE_MAX ? (size_t)sb.st_size + 1 : 4096;
	for (;;) {
		if (n + 1 >= cap || buf == NULL) {
			size_t ncap = buf == NULL ? cap : cap * 2;
			char *nb;

			if (ncap > RULES_FILE_MAX + 2)
				ncap = RULES_FILE_MAX + 2;
			if ((nb = realloc(buf, ncap)) == NULL) {
				snprintf(err, errsz, "%s: out of memory", path);
				goto fail;
			}
			buf = nb;
			cap = ncap;
		}
		got = read(fd, buf + n, cap - 1 - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			snprintf(err, errsz, "%s: %s", path, strerror(errno));
			goto fail;
		}
		if (got == 0)
			break;
		n += (size_t)got;
		if (n > RULES_FILE_MAX) {
			snprintf(err, errsz, "%s: larger than %d MiB: not a rules file?", path, RULES_FILE_MAX >> 20);
			goto fail;
		}
	}
	close(fd);
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return 0;
fail:
	close(fd);
	free(buf);
	return -1;
}

struct rules *
rules_load(const char *path, uint64_t seed, char *err, size_t errsz)
{
	struct rules *r;
	char *text;
	size_t len;

	if (rules_read_file(path, &text, &len, err, errsz) < 0)
		return NULL;
	r = rules_parse(path, text, len, seed, err, errsz);
	free(text);
	return r;
}

/* ------------------------------------------------------------------------
 * The candidate lists.
 */

static unsigned
rules_draw_unit(const struct rule *ru)
{
	switch (ru->trigger) {
	case RULES_ON_CONNECT:
		return RULES_U_CONNECT;
	case RULES_ON_GREETING:
		return RULES_U_GREETING;
	case RULES_ON_DATA_END:
		return RULES_U_DATA_END;
	case RULES_ON_TLS:
		return ru->leg == RULES_LEG_ANY		 ? RULES_U_TLS_ANY
		       : ru->leg == RULES_LEG_CLIENT ? RULES_U_TLS_CLIENT
						     : RULES_U_TLS_UPSTREAM;
	case RULES_ON_COMMAND:
		return ru->any_verb ? RULES_U_CMD_ANY : RULES_U_CMD + (unsigned)ru->verb;
	case RULES_ON_REPLY:
		switch (ru->answers) {
		case RULES_ANSWERS_COMMAND:
			return RULES_U_REPLY_CMD + (unsigned)ru->answers_verb;
		case RULES_ANSWERS_GREETING:
			return RULES_U_REPLY_GREETING;
		case RULES_ANSWERS_DATA_END:
			return RULES_U_REPLY_DATA_END;
		default:
			return RULES_U_REPLY_ANY;
		}
	}
	return RULES_U_CONNECT;
}

/* Append rule i to the lists it belongs to: counting (fill NULL) or filling. */
static void
rules_index_one(const struct rule *ru, uint32_t i, uint32_t *count, uint32_t *fill, uint32_t *pos)
{
	unsigned lists[RULES_NLISTS], n = 0, k;

	switch (ru->trigger) {
	case RULES_ON_CONNECT:
		lists[n++] = RULES_L_CONNECT;
		break;
	case RULES_ON_GREETING:
		lists[n++] = RULES_L_GREETING;
		break;
	case RULES_ON_DATA_END:
		lists[n++] = RULES_L_DATA_END;
		break;
	case RULES_ON_TLS:
		if (ru->leg != RULES_LEG_UPSTREAM)
			lists[n++] = RULES_L_TLS_CLIENT;
		if (ru->leg != RULES_LEG_CLIENT)
			lists[n++] = RULES_L_TLS_UPSTREAM;
		break;
	case RULES_ON_COMMAND:
		for (k = 0; k < RULES_NVERBS; k++)
			if (ru->any_verb || ru->verb == (enum smtp_verb)k)
				lists[n++] = RULES_L_CMD + k;
		break;
	case RULES_ON_REPLY:
		for (k = 0; k < RULES_NVERBS; k++)
			if (ru->answers == RULES_ANSWERS_ANY ||
			    (ru->answers == RULES_ANSWERS_COMMAND && ru->answers_verb == (enum smtp_verb)k))
				lists[n++] = RULES_L_REPLY_CMD + k;
		if (ru->answers == RULES_ANSWERS_ANY || ru->answers == RULES_ANSWERS_GREETING)
			lists[n++] = RULES_L_REPLY_GREETING;
		if (ru->answers == RULES_ANSWERS_ANY || ru->answers == RULES_ANSWERS_DATA_END)
			lists[n++] = RULES_L_REPLY_DATA_END;
		break;
	}
	for (k = 0; k < n; k++) {
		if (fill == NULL)
			count[lists[k]]++;
		else
			fill[pos[lists[k]]++] = i;
	}
}

int
rules_index(struct rules *r)
{
	uint32_t count[RULES_NLISTS] = { 0 }, pos[RULES_NLISTS];
	size_t i, total = 0, nocc = 0;

	for (i = 0; i < r->n; i++) {
		struct rule *ru = r->v[i];

		ru->draw_unit = rules_draw_unit(ru);
		if (ru->conds & RULES_C_OCC)
			ru->occ_idx = nocc++;
		rules_index_one(ru, (uint32_t)i, count, NULL, NULL);
	}
	r->nocc = nocc;
	for (i = 0; i < RULES_NLISTS; i++) {
		r->list_off[i] = (uint32_t)total;
		pos[i] = (uint32_t)total;
		total += count[i];
	}
	r->list_off[RULES_NLISTS] = (uint32_t)total;
	free(r->list);
	r->list = NULL;
	if (total > 0 && (r->list = malloc(total * sizeof(*r->list))) == NULL)
		return -1;
	for (i = 0; i < r->n; i++)
		rules_index_one(r->v[i], (uint32_t)i, count, r->list, pos);
	return 0;
}

/* ------------------------------------------------------------------------
 * Sessions.
 */

struct rules_session *
rules_session_new(struct rules *r)
{
	struct rules_session *rs;

	if (r == NULL)
		return NULL;
	if ((rs = calloc(1, sizeof(*rs) + r->nocc * sizeof(rs->occ[0]))) == NULL)
		return NULL;
	rs->set = rules_ref(r);
	return rs;
}

void
rules_session_free(struct rules_session *rs)
{
	if (rs == NULL)
		return;
	rules_unref(rs->set);
	free(rs);
}

/* ------------------------------------------------------------------------
 * The probability draw: a pure function of its inputs (no running PRNG),
 * so the same traffic gives the same faults however sessions interleave.
 */

static uint64_t
rules_splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

uint64_t
rules_draw(uint64_t seed, unsigned line, uint64_t session_no, uint64_t unit_no)
{
	uint64_t h = rules_splitmix64(seed);

	h = rules_splitmix64(h ^ line);
	h = rules_splitmix64(h ^ session_no);
	return rules_splitmix64(h ^ unit_no);
}

/* ------------------------------------------------------------------------
 * Regular expressions: the prefilter, the cost bound, matching.
 */

/* ERE metacharacters: a backslash before one of these makes it literal;
 * before anything else it is a GNU operator (\w, \<, \b, \1 ...). */
static bool
rules_re_meta(char c)
{
	return c != '\0' && strchr(".[]()*+?{}|^$\\", c) != NULL;
}

/* i is just after '[': the index after the closing ']' (n if none). */
static size_t
rules_skip_bracket(const char *s, size_t n, size_t i)
{
	if (i < n && s[i] == '^')
		i++;
	if (i < n && s[i] == ']')
		i++;
	while (i < n && s[i] != ']') {
		if (s[i] == '[' && i + 1 < n && (s[i + 1] == ':' || s[i + 1] == '.' || s[i + 1] == '=')) {
			char close = s[i + 1];

			i += 2;
			while (i + 1 < n && !(s[i] == close && s[i + 1] == ']'))
				i++;
			if (i + 1 >= n)
				return n;
			i += 2;
			continue;
		}
		i++;
	}
	return i < n ? i + 1 : n;
}

static void
rules_run_end(const char *buf, size_t start, size_t end, size_t *best_start, size_t *best_len)
{
	(void)buf;
	if (end > start && end - start > *best_len) {
		*best_start = start;
		*best_len = end - start;
	}
}

int
rules_re_analyse(struct rules_re *re)
{
	const char *s = re->src;
	size_t n = strlen(s), i = 0, end = n, k, bs, m = 0, run = 0, best = 0, bestlen = 0, depth;
	char *buf;

	re->pure = re->bol = re->eol = false;
	free(re->lit);
	re->lit = NULL;
	re->litlen = 0;
	if ((buf = malloc(n + 1)) == NULL)
		return -1;

	/* A pure literal: ^? (plain byte | \meta)* $? */
	if (n > 0 && s[0] == '^') {
		re->bol = true;
		i = 1;
	}
	if (end > i && s[end - 1] == '$') {
		for (k = end - 1, bs = 0; k > i && s[k - 1] == '\\'; k--)
			bs++;
		if (bs % 2 == 0) {
			re->eol = true;
			end--;
		}
	}
	re->pure = true;
	for (k = i; k < end && re->pure; k++) {
		if (s[k] == '\\' && k + 1 < end && rules_re_meta(s[k + 1]))
			buf[m++] = s[++k];
		else if (rules_re_meta(s[k]) || (re->icase && (unsigned char)s[k] >= 0x80))
			re->pure = false;
		else
			buf[m++] = s[k];
	}
	if (re->pure) {
		re->litlen = m;
		goto keep;
	}
	re->bol = re->eol = false;

	/*
	 * Otherwise the longest run of literal bytes every match must
	 * contain.  Conservative: any '|' and there is none; a group or a
	 * bracket ends a run and is skipped whole; a quantifier that may
	 * repeat zero times takes back the byte before it.
	 */
	if (strchr(s, '|') != NULL) {
		free(buf);
		return 0;
	}
	m = 0;
	run = 0;
	for (i = 0; i < n;) {
		char c = s[i];

		switch (c) {
		case '\\':
			if (i + 1 < n && rules_re_meta(s[i + 1])) {
				buf[m++] = s[i + 1];
			} else {
				rules_run_end(buf, run, m, &best, &bestlen);
				run = m;
			}
			i += i + 1 < n ? 2 : 1;
			break;
		case '(':
			rules_run_end(buf, run, m, &best, &bestlen);
			run = m;
			for (depth = 0; i < n; i++) {
				if (s[i] == '\\' && i + 1 < n)
					i++;
				else if (s[i] == '[')
					i = rules_skip_bracket(s, n, i + 1) - 1;
				else if (s[i] == '(')
					depth++;
				else if (s[i] == ')' && --depth == 0)
					break;
			}
			i++;
			break;
		case '[':
			rules_run_end(buf, run, m, &best, &bestlen);
			run = m;
			i = rules_skip_bracket(s, n, i + 1);
			break;
		case '*':
		case '?':
		case '{':
			if (m > run)
				m--;
			rules_run_end(buf, run, m, &best, &bestlen);
			run = m;
			if (c == '{') {
				while (i < n && s[i] != '}')
					i++;
			}
			i++;
			break;
		case '+':
		case '.':
		case '^':
		case '$':
		case ')':
			rules_run_end(buf, run, m, &best, &bestlen);
			run = m;
			i++;
			break;
		default:
			if (re->icase && (unsigned char)c >= 0x80) {
				rules_run_end(buf, run, m, &best, &bestlen);
				run = m;
			} else {
				buf[m++] = c;
			}
			i++;
			break;
		}
	}
	rules_run_end(buf, run, m, &best, &bestlen);
	if (bestlen == 0) {
		free(buf);
		return 0;
	}
	memmove(buf, buf + best, bestlen);
	re->litlen = bestlen;
keep:
	buf[re->litlen] = '\0';
	re->lit = buf;
	return 0;
}

const char *
rules_re_refuse(const char *src)
{
	uint64_t sum[65], last = 0, g, k, lo, hi;
	size_t n = strlen(src), i, depth = 0;

	sum[0] = 0;
	for (i = 0; i < n;) {
		char c = src[i];

		switch (c) {
		case '\\':
			if (i + 1 < n && src[i + 1] >= '1' && src[i + 1] <= '9')
				return "back-references (\\1 ... \\9) are not supported";
			last = 1;
			sum[depth] += 1;
			i += i + 1 < n ? 2 : 1;
			break;
		case '[':
			i = rules_skip_bracket(src, n, i + 1);
			last = 1;
			sum[depth] += 1;
			break;
		case '(':
			if (depth == 64)
				return "groups nested more than 64 deep";
			sum[++depth] = 0;
			last = 0;
			i++;
			break;
		case ')':
			if (depth > 0) {
				g = sum[depth--] + 1;
				sum[depth] += g;
				last = g;
			} else {
				last = 1;
				sum[depth] += 1;
			}
			i++;
			break;
		case '|':
			last = 0;
			i++;
			break;
		case '+':
			/* glibc unrolls x+ into xx* */
			sum[depth] += last;
			last *= 2;
			i++;
			break;
		case '{':
			/* {m}, {m,}, {m,n}: unrolled to max(m, n) copies ({m,}
			 * to m + 1); numbers saturate, regcomp refuses big ones */
			lo = hi = 0;
			for (i++; i < n && src[i] >= '0' && src[i] <= '9'; i++)
				lo = lo >= 100000 ? lo : lo * 10 + (uint64_t)(src[i] - '0');
			k = lo;
			if (i < n && src[i] == ',') {
				bool any = false;

				for (i++; i < n && src[i] >= '0' && src[i] <= '9'; i++) {
					hi = hi >= 100000 ? hi : hi * 10 + (uint64_t)(src[i] - '0');
					any = true;
				}
				k = any ? (hi > lo ? hi : lo) : lo + 1;
			}
			while (i < n && src[i] != '}')
				i++;
			i += i < n;
			if (k > 1) {
				sum[depth] += last * (k - 1);
				last *= k;
			}
			break;
		default:
			last = 1;
			sum[depth] += 1;
			i++;
			break;
		}
		if (sum[depth] > RULES_REGEX_COST_MAX || last > RULES_REGEX_COST_MAX)
			return "too large once its repetitions are unrolled (at most " "20000" " positions)";
	}
	return NULL;
}

static bool
rules_bytes_equal(const char *a, const char *b, size_t n, bool icase)
{
	size_t i;

	if (!icase)
		return memcmp(a, b, n) == 0;
	for (i = 0; i < n; i++) {
		unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];

		if (x >= 'A' && x <= 'Z')
			x += 'a' - 'A';
		if (y >= 'A' && y <= 'Z')
			y += 'a' - 'A';
		if (x != y)
			return false;
	}
	return true;
}

static bool
rules_contains(const char *s, size_t len, const char *lit, size_t litlen, bool icase)
{
	size_t i;
	unsigned char lo, up;
	const char *p;

	if (litlen == 0)
		return true;
	if (litlen > len)
		return false;
	if (!icase) {
		/* memmem is a GNU extension: memchr for the first byte, then memcmp */
		const char *q = s, *last = s + len - litlen;

		while (q <= last && (p = memchr(q, lit[0], (size_t)(last - q) + 1)) != NULL) {
			if (memcmp(p + 1, lit + 1, litlen - 1) == 0)
				return true;
			q = p + 1;
		}
		return false;
	}
	lo = up = (unsigned char)lit[0];
	if (lo >= 'A' && lo <= 'Z')
		lo += 'a' - 'A';
	if (up >= 'a' && up <= 'z')
		up -= 'a' - 'A';
	for (i = 0; i + litlen <= len; i++) {
		p = s + i;
		if (((unsigned char)*p == lo || (unsigned char)*p == up) &&
		    rules_bytes_equal(p + 1, lit + 1, litlen - 1, true))
			return true;
	}
	return false;
}

/*
 * regexec on s[0..len), through a NUL-terminated copy: the unit's strings
 * are slices of the session's buffers, and although glibc honours
 * REG_STARTEND, sanitizers' regexec interceptors read the subject up to
 * its NUL.  Only expressions the prefilter could not settle get here, and
 * it is kept out of line so the fast paths do not reserve its frame.  A
 * subject is at most SMTP_LINE_MAX bytes (a command line); longer is cut.
 */
static bool __attribute__((noinline))
rules_regexec(const regex_t *re, const char *s, size_t len)
{
	char buf[SMTP_LINE_MAX + 1];
	regmatch_t pm[1];

	if (len > SMTP_LINE_MAX)
		len = SMTP_LINE_MAX;
	memcpy(buf, s, len);
	buf[len] = '\0';
	pm[0].rm_so = 0;
	pm[0].rm_eo = (regoff_t)len;
	return regexec(re, buf, 1, pm, REG_STARTEND) == 0;
}

/* Does s match, before negation? */
static bool
rules_match_re_pos(const struct rules_re *re, const char *s, size_t len)
{
	if (s == NULL)
		s = "";
	if (re->pure) {
		if (re->bol && re->eol)
			return len == re->litlen && rules_bytes_equal(s, re->lit, len, re->icase);
		if (re->bol)
			return len >= re->litlen && rules_bytes_equal(s, re->lit, re->litlen, re->icase);
		if (re->eol)
			return len >= re->litlen &&
			       rules_bytes_equal(s + len - re->litlen, re->lit, re->litlen, re->icase);
		return rules_contains(s, len, re->lit, re->litlen, re->icase);
	}
	if (re->lit != NULL && !rules_contains(s, len, re->lit, re->litlen, re->icase))
		return false;
	if (!re->compiled)
		return false;
	return rules_regexec(&re->re, s, len);
}

bool
rules_re_match(const struct rules_re *re, const char *s, size_t len)
{
	return rules_match_re_pos(re, s, len) != re->neg;
}

bool
rules_re_match_slow(const struct rules_re *re, const char *s, size_t len)
{
	if (!re->compiled)
		return re->neg;
	return rules_regexec(&re->re, s != NULL ? s : "", len) != re->neg;
}

/* ------------------------------------------------------------------------
 * The unit's fields.
 */

/* The value of a single-valued field; false when it is not known. */
static bool
rules_field_value(const struct rules_unit *u, enum rules_field f, const char **p, size_t *len)
{
	switch (f) {
	case RULES_F_ARG:
		*p = u->arg;
		*len = u->arg_len;
		break;
	case RULES_F_VERB:
		*p = u->verb_text;
		*len = u->verb_text_len;
		if (*p == NULL && u->verb != SMTP_VERB_UNKNOWN && (unsigned)u->verb < RULES_NVERBS) {
			*p = smtp_verb_name(u->verb);
			*len = strlen(*p);
		}
		break;
	case RULES_F_FROM:
		*p = u->mail_from;
		*len = u->mail_from_len;
		break;
	case RULES_F_HELO:
		*p = u->helo;
		*len = *p != NULL ? strlen(*p) : 0;
		break;
	case RULES_F_MECH:
		*p = u->auth_mech;
		*len = *p != NULL ? strlen(*p) : 0;
		break;
	case RULES_F_USER:
		*p = u->auth_user;
		*len = *p != NULL ? strlen(*p) : 0;
		break;
	default:
		*p = NULL;
		*len = 0;
		break;
	}
	return *p != NULL;
}

/* `to`: any recipient matches; negated, there is one and none matches. */
static bool
rules_match_to(const struct rules_re *re, const struct rules_unit *u)
{
	size_t i;

	if (u->rcpts == NULL || u->nrcpts == 0)
		return false;
	for (i = 0; i < u->nrcpts; i++) {
		if (u->rcpts[i] != NULL && rules_match_re_pos(re, u->rcpts[i], strlen(u->rcpts[i])))
			return !re->neg;
	}
	return re->neg;
}

/*
 * Search the header block for fields called `name` (case-insensitive),
 * unfolded and trimmed of surrounding blanks.  Returns -1 when there is no
 * such field, 1 when one of them matches re (before negation), else 0.
 * Garbage is tolerated: lines without a colon are skipped, the block ends
 * at the first empty line or at hlen.
 */
static int
rules_header_search(const char *h, size_t hlen, const char *name, size_t namelen, const struct rules_re *re)
{
	char buf[RULES_UNFOLD_MAX];
	size_t i = 0, next, ll, nl, vs, ve, m;
	const char *line, *colon, *eol;
	int found = -1;

	while (i < hlen) {
		line = h + i;
		eol = memchr(line, '\n', hlen - i);
		ll = eol != NULL ? (size_t)(eol - line) : hlen - i;
		next = i + ll + (eol != NULL);
		if (ll > 0 && line[ll - 1] == '\r')
			ll--;
		if (ll == 0)
			break;
		i = next;
		if (line[0] == ' ' || line[0] == '\t')
			continue; /* a continuation whose field is not ours */
		if ((colon = memchr(line, ':', ll)) == NULL)
			continue;
		for (nl = (size_t)(colon - line); nl > 0 && (line[nl - 1] == ' ' || line[nl - 1] == '\t'); nl--)
			;
		if (nl != namelen || !rules_bytes_equal(line, name, namelen, true))
			continue;
		found = found < 0 ? 0 : found;
		/* the value: the rest of this line, and the continuation lines
		 * after it with their line breaks removed (RFC 5322 2.2.3) */
		vs = (size_t)(colon + 1 - h);
		ve = (size_t)(line + ll - h);
		if (i < hlen && (h[i] == ' ' || h[i] == '\t')) {
			m = ve - vs < sizeof(buf) ? ve - vs : sizeof(buf);
			memcpy(buf, h + vs, m);
			while (i < hlen && (h[i] == ' ' || h[i] == '\t')) {
				line = h + i;
				eol = memchr(line, '\n', hlen - i);
				ll = eol != NULL ? (size_t)(eol - line) : hlen - i;
				i += ll + (eol != NULL);
				if (ll > 0 && line[ll - 1] == '\r')
					ll--;
				if (m < sizeof(buf)) {
					size_t take = ll < sizeof(buf) - m ? ll : sizeof(buf) - m;

					memcpy(buf + m, line, take);
					m += take;
				}
			}
			vs = 0;
			while (vs < m && (buf[vs] == ' ' || buf[vs] == '\t'))
				vs++;
			while (m > vs && (buf[m - 1] == ' ' || buf[m - 1] == '\t'))
				m--;
			if (rules_match_re_pos(re, buf + vs, m - vs))
				return 1;
			continue;
		}
		while (vs < ve && (h[vs] == ' ' || h[vs] == '\t'))
			vs++;
		while (ve > vs && (h[ve - 1] == ' ' || h[ve - 1] == '\t'))
			ve--;
		if (rules_match_re_pos(re, h + vs, ve - vs))
			return 1;
	}
	return found;
}

/* Network-order address bytes; IPv4-mapped IPv6 becomes IPv4. */
static bool
rules_sockaddr_bytes(const struct sockaddr *sa, int *family, uint8_t out[16])
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	if (sa == NULL)
		return false;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in sin;

		memcpy(&sin, sa, sizeof(sin));
		memcpy(out, &sin.sin_addr, 4);
		*family = AF_INET;
		return true;
	}
	if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 sin6;

		memcpy(&sin6, sa, sizeof(sin6));
		if (memcmp(&sin6.sin6_addr, mapped, 12) == 0) {
			memcpy(out, (const uint8_t *)&sin6.sin6_addr + 12, 4);
			*family = AF_INET;
		} else {
			memcpy(out, &sin6.sin6_addr, 16);
			*family = AF_INET6;
		}
		return true;
	}
	return false;
}

static bool
rules_prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits)
{
	unsigned full = bits / 8, rest = bits % 8;
	uint8_t mask;

	if (memcmp(a, b, full) != 0)
		return false;
	if (rest == 0)
		return true;
	mask = (uint8_t)(0xff << (8 - rest));
	return (a[full] & mask) == (b[full] & mask);
}

/* facts.listener is "ADDR:PORT" or "[V6]:PORT" (util_format_addr). */
static bool
rules_match_listener(const struct rule *ru, const char *listener)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	const char *colon, *p;
	char host[64];
	uint8_t addr[16];
	unsigned long port = 0;
	size_t hl;
	int family;

	if (listener == NULL || (colon = strrchr(listener, ':')) == NULL || colon[1] == '\0')
		return false;
	for (p = colon + 1; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || port > 65535)
			return false;
		port = port * 10 + (unsigned long)(*p - '0');
	}
	if (port != ru->lst_port)
		return false;
	if (ru->lst_family == 0)
		return true;
	hl = (size_t)(colon - listener);
	p = listener;
	if (hl >= 2 && p[0] == '[' && p[hl - 1] == ']') {
		p++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return false;
	memcpy(host, p, hl);
	host[hl] = '\0';
	if (inet_pton(AF_INET, host, addr) == 1) {
		family = AF_INET;
	} else if (inet_pton(AF_INET6, host, addr) == 1) {
		family = AF_INET6;
		if (memcmp(addr, mapped, 12) == 0) {
			memmove(addr, addr + 12, 4);
			family = AF_INET;
		}
	} else {
		return false;
	}
	return family == ru->lst_family && memcmp(addr, ru->lst_addr, family == AF_INET ? 4 : 16) == 0;
}

/* ------------------------------------------------------------------------
 * The decision.
 */

/* The trigger's details and every condition but occurrence, probability
 * and limit, cheapest first. */
static bool
rules_match(const struct rule *ru, const struct rules_unit *u, const struct rules_facts *f)
{
	unsigned c = ru->conds, i;
	const char *p;
	size_t len;
	uint8_t addr[16];
	int family, r;

	if (ru->has_codes) {
		if (u->code < 200 || u->code > 599)
			return false;
		if (!(ru->codes[(u->code - 200) / 8] & (1u << ((u->code - 200) % 8))))
			return false;
	}
	if (c == 0)
		return true;
	if ((c & RULES_C_MODE) && ru->mode_sink != f->sink)
		return false;
	if ((c & RULES_C_SESSION) && (f->session_no < ru->sess_lo || f->session_no > ru->sess_hi))
		return false;
	if (c & RULES_C_SIZE) {
		if (!u->has_size)
			return false;
		switch (ru->size_cmp) {
		case RULES_CMP_GT:
			if (!(u->size > ru->size))
				return false;
			break;
		case RULES_CMP_GE:
			if (!(u->size >= ru->size))
				return false;
			break;
		case RULES_CMP_LT:
			if (!(u->size < ru->size))
				return false;
			break;
		case RULES_CMP_LE:
			if (!(u->size <= ru->size))
				return false;
			break;
		case RULES_CMP_EQ:
			if (u->size != ru->size)
				return false;
			break;
		}
	}
	if (c & RULES_C_CLIENT) {
		if (!rules_sockaddr_bytes(f->client, &family, addr) || family != ru->cl_family ||
		    !rules_prefix_equal(addr, ru->cl_addr, ru->cl_prefix))
			return false;
	}
	if ((c & RULES_C_LISTENER) && !rules_match_listener(ru, f->listener))
		return false;
	for (i = 0; i < RULES_NFIELDS; i++) {
		if (!(c & (1u << i)))
			continue;
		if (i == RULES_F_TO) {
			if (!rules_match_to(&ru->field[i], u))
				return false;
		} else if (i == RULES_F_SUBJECT) {
			if (u->headers == NULL)
				return false;
			r = rules_header_search(u->headers, u->headers_len, "Subject", 7, &ru->field[i]);
			if (r < 0 || (r == 1) == ru->field[i].neg)
				return false;
		} else {
			if (!rules_field_value(u, (enum rules_field)i, &p, &len) ||
			    !rules_re_match(&ru->field[i], p, len))
				return false;
		}
	}
	for (i = 0; i < ru->nhdrs; i++) {
		const struct rules_hdr_cond *hc = &ru->hdrs[i];

		if (u->headers == NULL)
			return false;
		r = rules_header_search(u->headers, u->headers_len, hc->name, hc->namelen, &hc->re);
		if (r < 0 || (r == 1) == hc->re.neg)
			return false;
	}
	return true;
}

static void
rules_fill(const struct rule *ru, struct rules_decision *out)
{
	size_t i;

	out->rule = ru;
	out->line = ru->line;
	out->text = ru->text;
	out->actions = ru->actions;
	if (ru->reply != NULL) {
		memcpy(out->reply, ru->reply, ru->reply_len + 1);
		out->reply_len = ru->reply_len;
		out->code = ru->code;
	} else {
		out->reply[0] = '\0';
		out->reply_len = 0;
		out->code = 0;
	}
	out->delay_ms = ru->delay_ms;
	out->throttle_bps = ru->throttle_bps;
	out->throttle_dir = ru->throttle_dir;
	out->truncate_at = ru->truncate_at;
	for (i = 0; i < ru->nstrip; i++)
		out->strip[i] = ru->strip[i];
	out->nstrip = ru->nstrip;
	out->seed = (ru->conds & RULES_C_PROB) ? ru->seed : 0;
}

/* Which candidate list, own unit counter and "any" counter a unit has;
 * -1 for a unit no rule can be about (an out-of-range enum). */
static int
rules_unit_list(const struct rules_unit *u, unsigned *list, unsigned *unit, unsigned *any)
{
	*any = RULES_NUNITS;
	switch (u->trigger) {
	case RULES_ON_CONNECT:
		*list = RULES_L_CONNECT;
		*unit = RULES_U_CONNECT;
		return 0;
	case RULES_ON_GREETING:
		*list = RULES_L_GREETING;
		*unit = RULES_U_GREETING;
		return 0;
	case RULES_ON_DATA_END:
		*list = RULES_L_DATA_END;
		*unit = RULES_U_DATA_END;
		return 0;
	case RULES_ON_TLS:
		*any = RULES_U_TLS_ANY;
		if (u->leg == RULES_LEG_CLIENT) {
			*list = RULES_L_TLS_CLIENT;
			*unit = RULES_U_TLS_CLIENT;
			return 0;
		}
		if (u->leg == RULES_LEG_UPSTREAM) {
			*list = RULES_L_TLS_UPSTREAM;
			*unit = RULES_U_TLS_UPSTREAM;
			return 0;
		}
		return -1;
	case RULES_ON_COMMAND:
		if ((unsigned)u->verb >= RULES_NVERBS)
			return -1;
		*list = RULES_L_CMD + (unsigned)u->verb;
		*unit = RULES_U_CMD + (unsigned)u->verb;
		*any = RULES_U_CMD_ANY;
		return 0;
	case RULES_ON_REPLY:
		*any = RULES_U_REPLY_ANY;
		switch (u->answers) {
		case RULES_ANSWERS_COMMAND:
			if ((unsigned)u->verb >= RULES_NVERBS)
				return -1;
			*list = RULES_L_REPLY_CMD + (unsigned)u->verb;
			*unit = RULES_U_REPLY_CMD + (unsigned)u->verb;
			return 0;
		case RULES_ANSWERS_GREETING:
			*list = RULES_L_REPLY_GREETING;
			*unit = RULES_U_REPLY_GREETING;
			return 0;
		case RULES_ANSWERS_DATA_END:
			*list = RULES_L_REPLY_DATA_END;
			*unit = RULES_U_REPLY_DATA_END;
			return 0;
		}
		return -1;
	}
	return -1;
}

bool
rules_decide(struct rules *r, struct rules_session *rs, const struct rules_unit *unit,
	     const struct rules_facts *facts, struct rules_decision *out)
{
	unsigned list, own, any;
	uint32_t k, end;
	struct rule *fired = NULL;

	out->rule = NULL;
	out->actions = 0;
	if (r == NULL || rs == NULL || rs->set != r || unit == NULL || facts == NULL)
		return false;
	if (rules_unit_list(unit, &list, &own, &any) < 0)
		return false;
	rs->units[own]++;
	if (any < RULES_NUNITS)
		rs->units[any]++;
	end = r->list_off[list + 1];
	for (k = r->list_off[list]; k < end; k++) {
		struct rule *ru = r->v[r->list[k]];

		/* After a rule fired, the rules below it are looked at only to
		 * count their occurrences: "occurrence 2" is the second such
		 * unit whatever the rules above it did. */
		if (fired != NULL && !(ru->conds & RULES_C_OCC))
			continue;
		if (!rules_match(ru, unit, facts))
			continue;
		if (ru->conds & RULES_C_OCC) {
			uint32_t *n = &rs->occ[ru->occ_idx];

			if (*n < UINT32_MAX)
				(*n)++;
			if (*n < ru->occ_lo || *n > ru->occ_hi)
				continue;
		}
		if (fired != NULL)
			continue;
		if ((ru->conds & RULES_C_PROB) && !ru->prob_always &&
		    rules_draw(ru->seed, ru->line, facts->session_no, rs->units[ru->draw_unit]) >= ru->prob_max)
			continue;
		if ((ru->conds & RULES_C_LIMIT) && ru->fired >= ru->limit)
			continue;
		ru->fired++;
		fired = ru;
		rules_fill(ru, out);
		if (r->nocc == 0)
			break;
	}
	return fired != NULL;
}
