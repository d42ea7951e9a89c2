/*
 * rules_regex.c - getting a rule's regular expressions ready, at parse
 * time: refusing the ones glibc's regcomp would blow up on (unrolled
 * repetitions, back-references), and working out what rules.c's fast path
 * uses to settle most matches without regexec (a literal every match must
 * contain, whether the whole expression is that literal, its anchor byte
 * and bigrams).  The analysis is conservative: it may find less than is
 * there, never more; test_rules and fuzz_rules hold it to regexec.
 */
#include <stdlib.h>
#include <string.h>

#include "smtptap/rules_int.h"

static bool rules_re_meta(char c);
static size_t rules_skip_bracket(const char *s, size_t n, size_t i);
static void rules_run_end(size_t start, size_t end, size_t *best_start, size_t *best_len);

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

/* A run of literal bytes [start, end) ended: keep it if it is the longest. */
static void
rules_run_end(size_t start, size_t end, size_t *best_start, size_t *best_len)
{
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
	re->nbigrams = 0;
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
	 * contain.  Conservative: a '|' outside any group and there is none;
	 * a group (whatever alternatives it holds) or a bracket ends a run
	 * and is skipped whole; a quantifier that may repeat zero times takes
	 * back the byte before it.
	 */
	m = 0;
	run = 0;
	for (i = 0; i < n;) {
		char c = s[i];

		switch (c) {
		case '\\':
			if (i + 1 < n && rules_re_meta(s[i + 1])) {
				buf[m++] = s[i + 1];
			} else {
				rules_run_end(run, m, &best, &bestlen);
				run = m;
			}
			i += i + 1 < n ? 2 : 1;
			break;
		case '(':
			rules_run_end(run, m, &best, &bestlen);
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
			rules_run_end(run, m, &best, &bestlen);
			run = m;
			i = rules_skip_bracket(s, n, i + 1);
			break;
		case '*':
		case '?':
		case '{':
			if (m > run)
				m--;
			rules_run_end(run, m, &best, &bestlen);
			run = m;
			if (c == '{') {
				while (i < n && s[i] != '}')
					i++;
			}
			i++;
			break;
		case '|':
			/* an alternative at the top: no byte string is required
			 * (one inside a group was skipped with its group) */
			free(buf);
			return 0;
		case '+':
		case '.':
		case '^':
		case '$':
		case ')':
			rules_run_end(run, m, &best, &bestlen);
			run = m;
			i++;
			break;
		default:
			if (re->icase && (unsigned char)c >= 0x80) {
				rules_run_end(run, m, &best, &bestlen);
				run = m;
			} else {
				buf[m++] = c;
			}
			i++;
			break;
		}
	}
	rules_run_end(run, m, &best, &bestlen);
	if (bestlen == 0) {
		free(buf);
		return 0;
	}
	memmove(buf, buf + best, bestlen);
	re->litlen = bestlen;
keep:
	buf[re->litlen] = '\0';
	re->lit = buf;
	/* bigrams, spread over lit, when it is searched for: a literal
	 * compared at the start or end is quicker to compare than to filter */
	re->nbigrams = 0;
	if (re->litlen >= 2 && !(re->pure && (re->bol || re->eol))) {
		size_t at[4] = { 0, re->litlen - 2, (re->litlen - 2) / 2, (re->litlen - 2) / 4 }, j;

		for (k = 0; k < 4; k++) {
			char a = buf[at[k]], b = buf[at[k] + 1];
			uint16_t h;

			a = a >= 'A' && a <= 'Z' ? (char)(a + 'a' - 'A') : a;
			b = b >= 'A' && b <= 'Z' ? (char)(b + 'a' - 'A') : b;
			h = RULES_BIGRAM(a, b);
			for (j = 0; j < re->nbigrams && re->bigrams[j] != h; j++)
				;
			if (j == re->nbigrams)
				re->bigrams[re->nbigrams++] = h;
		}
	}
	/* the byte the search looks for with memchr: the first that is not
	 * a letter (the same in either case), else the first */
	re->anchor = 0;
	for (k = 0; k < re->litlen; k++) {
		char c = buf[k];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
			re->anchor = k;
			break;
		}
	}
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
