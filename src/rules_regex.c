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
static bool rules_re_first(struct rules_re *re);
static size_t rules_re_minlen(const char *s);
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

static void
rules_set_add(uint8_t *set, unsigned c, bool icase)
{
	set[c >> 3] |= (uint8_t)(1u << (c & 7));
	if (icase && c >= 'a' && c <= 'z')
		set[(c - 32) >> 3] |= (uint8_t)(1u << ((c - 32) & 7));
	if (icase && c >= 'A' && c <= 'Z')
		set[(c + 32) >> 3] |= (uint8_t)(1u << ((c + 32) & 7));
}

/* [:name:] in the C locale (smtptap never calls setlocale) into set;
 * false for a name it does not know. */
static bool
rules_set_class(uint8_t *set, const char *name, size_t len, bool icase)
{
	static const struct {
		const char *name;
		const char *ranges; /* pairs of first, last */
	} classes[] = {
		{ "alpha", "AZaz" },	     { "digit", "09" },		 { "alnum", "09AZaz" },
		{ "upper", "AZ" },	     { "lower", "az" },		 { "xdigit", "09AFaf" },
		{ "space", "\t\r  " },     { "blank", "\t\t  " },	 { "punct", "!/:@[`{~" },
		{ "print", " ~" },	     { "graph", "!~" },		 { "cntrl", "\x01\x1f\x7f\x7f" },
	};
	size_t k, j;
	unsigned c;

	for (k = 0; k < sizeof(classes) / sizeof(classes[0]); k++) {
		if (strlen(classes[k].name) != len || memcmp(classes[k].name, name, len) != 0)
			continue;
		for (j = 0; classes[k].ranges[j] != '\0'; j += 2)
			for (c = (unsigned char)classes[k].ranges[j]; c <= (unsigned char)classes[k].ranges[j + 1]; c++)
				rules_set_add(set, c, icase);
		if (strcmp(classes[k].name, "cntrl") == 0)
			rules_set_add(set, 0, icase);
		return true;
	}
	return false;
}

/*
 * "^X...": the bytes a match must start with, when X is one literal byte
 * or a bracket expression (plain bytes, ASCII ranges, [:classes:]) that
 * nothing makes optional, and no '|' outside a group could put another
 * start beside it.  Anything less plain and there is no such set (false).
 */
static bool
rules_re_first(struct rules_re *re)
{
	const char *s = re->src;
	size_t n = strlen(s), i = 1, end, depth = 0, k;
	uint8_t set[32];
	bool neg = false;
	unsigned c, lo;

	if (n < 2 || s[0] != '^')
		return false;
	/* an alternative outside any group: "^a|b" */
	for (k = 0; k < n; k++) {
		if (s[k] == '\\' && k + 1 < n)
			k++;
		else if (s[k] == '[')
			k = rules_skip_bracket(s, n, k + 1) - 1;
		else if (s[k] == '(')
			depth++;
		else if (s[k] == ')' && depth > 0)
			depth--;
		else if (s[k] == '|' && depth == 0)
			return false;
	}
	memset(set, 0, sizeof(set));
	if (s[i] == '\\' && i + 1 < n && rules_re_meta(s[i + 1])) {
		rules_set_add(set, (unsigned char)s[i + 1], re->icase);
		end = i + 2;
	} else if (s[i] == '[') {
		end = rules_skip_bracket(s, n, i + 1);
		if (end > n || s[end - 1] != ']')
			return false;
		i++;
		if (i < end - 1 && s[i] == '^') {
			neg = true;
			i++;
		}
		for (k = i; k < end - 1; k++) {
			c = (unsigned char)s[k];
			if (c == '[') {
				const char *close;

				if (k + 1 >= end - 1 || s[k + 1] != ':')
					return false; /* [= =] and [. .]: not worth it */
				close = strstr(s + k + 2, ":]");
				if (close == NULL || close >= s + end - 1 ||
				    !rules_set_class(set, s + k + 2, (size_t)(close - (s + k + 2)), re->icase))
					return false;
				k = (size_t)(close - s) + 1;
				continue;
			}
			if (c >= 0x80)
				return false;
			/* a range: x-y, '-' not first or last */
			if (k + 2 < end - 1 && s[k + 1] == '-' && s[k + 2] != ']') {
				if ((unsigned char)s[k + 2] >= 0x80 || s[k + 2] == '[' || (unsigned char)s[k + 2] < c)
					return false;
				for (lo = c; lo <= (unsigned char)s[k + 2]; lo++)
					rules_set_add(set, lo, re->icase);
				k += 2;
				continue;
			}
			rules_set_add(set, c, re->icase);
		}
		if (neg) {
			for (k = 0; k < 32; k++)
				set[k] = (uint8_t)~set[k];
			/* a negated set under ~* is whatever no case of a
			 * letter in it is: both cases were added, so both go */
		}
	} else if (!rules_re_meta(s[i]) && s[i] != '\\' && !(re->icase && (unsigned char)s[i] >= 0x80)) {
		rules_set_add(set, (unsigned char)s[i], re->icase);
		end = i + 1;
	} else {
		return false;
	}
	/* made optional by what follows it: *, ?, {0...} ({m} with m > 0,
	 * and +, keep it required) */
	if (end < n && (s[end] == '*' || s[end] == '?'))
		return false;
	if (end < n && s[end] == '{') {
		for (k = end + 1; k < n && s[k] == '0'; k++)
			;
		if (k >= n || s[k] < '1' || s[k] > '9')
			return false;
	}
	memcpy(re->first, set, sizeof(set));
	return true;
}

/*
 * The fewest bytes any match of s spans: a byte or bracket 1, an anchor 0,
 * a group its shortest alternative, x* and x? 0, x{m,...} m times x.
 * Conservative: when unsure (too deep, unbalanced), 0.
 */
static size_t
rules_re_minlen(const char *s)
{
	struct {
		size_t cur, best, last;
		bool any_alt, has_last;
	} fr[RULES_REGEX_DEPTH_MAX + 1];
	size_t n = strlen(s), i = 0, depth = 0, lo, g;

	memset(&fr[0], 0, sizeof(fr[0]));
#define RULES_MIN_COMMIT(f)                                            \
	do {                                                           \
		if ((f).has_last)                                      \
			(f).cur = (f).cur + (f).last > 65536 ? 65536 : (f).cur + (f).last; \
		(f).has_last = false;                                  \
	} while (0)
#define RULES_MIN_ATOM(f, v)               \
	do {                               \
		RULES_MIN_COMMIT(f);       \
		(f).last = (v);            \
		(f).has_last = true;       \
	} while (0)
	while (i < n) {
		char c = s[i];

		switch (c) {
		case '\\':
			RULES_MIN_ATOM(fr[depth], i + 1 < n && strchr("bB<>`'", s[i + 1]) != NULL ? 0 : 1);
			i += i + 1 < n ? 2 : 1;
			break;
		case '[':
			RULES_MIN_ATOM(fr[depth], 1);
			i = rules_skip_bracket(s, n, i + 1);
			break;
		case '^':
		case '$':
			RULES_MIN_ATOM(fr[depth], 0);
			i++;
			break;
		case '(':
			if (depth == RULES_REGEX_DEPTH_MAX)
				return 0;
			RULES_MIN_COMMIT(fr[depth]);
			depth++;
			memset(&fr[depth], 0, sizeof(fr[depth]));
			i++;
			break;
		case ')':
			if (depth == 0)
				return 0;
			RULES_MIN_COMMIT(fr[depth]);
			g = fr[depth].any_alt && fr[depth].best < fr[depth].cur ? fr[depth].best : fr[depth].cur;
			depth--;
			RULES_MIN_ATOM(fr[depth], g);
			i++;
			break;
		case '|':
			RULES_MIN_COMMIT(fr[depth]);
			if (!fr[depth].any_alt || fr[depth].cur < fr[depth].best)
				fr[depth].best = fr[depth].cur;
			fr[depth].any_alt = true;
			fr[depth].cur = 0;
			i++;
			break;
		case '*':
		case '?':
			fr[depth].last = 0;
			i++;
			break;
		case '+':
			i++;
			break;
		case '{':
			for (lo = 0, i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
				lo = lo > 65536 ? lo : lo * 10 + (size_t)(s[i] - '0');
			while (i < n && s[i] != '}')
				i++;
			i += i < n;
			fr[depth].last = fr[depth].last * lo > 65536 ? 65536 : fr[depth].last * lo;
			break;
		default:
			RULES_MIN_ATOM(fr[depth], 1);
			i++;
			break;
		}
	}
#undef RULES_MIN_ATOM
#undef RULES_MIN_COMMIT
	if (depth != 0)
		return 0;
	if (fr[0].has_last)
		fr[0].cur += fr[0].last;
	return fr[0].any_alt && fr[0].best < fr[0].cur ? fr[0].best : fr[0].cur;
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
	re->has_first = rules_re_first(re);
	re->minlen = rules_re_minlen(re->src);
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

/*
 * What is known of a piece of an expression while it is walked: its size
 * once unrolled, whether it can match the empty string, whether a
 * repetition operator was just applied to it.
 */
struct rules_rx_atom {
	uint64_t cost;
	bool nullable;
	bool repeated;
};

struct rules_rx_frame {
	uint64_t sum;	  /* the group's alternatives so far, unrolled */
	bool alt_null;	  /* the current alternative can match empty so far */
	bool any_null;	  /* an earlier alternative can */
	bool has_pending; /* pending holds the last atom, not yet added */
	struct rules_rx_atom pending;
};

static void
rules_rx_commit(struct rules_rx_frame *f)
{
	if (!f->has_pending)
		return;
	f->sum += f->pending.cost;
	f->alt_null = f->alt_null && f->pending.nullable;
	f->has_pending = false;
}

static void
rules_rx_atom(struct rules_rx_frame *f, uint64_t cost, bool nullable)
{
	rules_rx_commit(f);
	f->pending.cost = cost;
	f->pending.nullable = nullable;
	f->pending.repeated = false;
	f->has_pending = true;
}

/*
 * glibc's regcomp takes exponential time, or memory, on some expressions
 * a rules file could hold (it unrolls a{n} into n copies, x+ into xx*, and
 * computes epsilon closures that explode on repeated pieces that can match
 * the empty string, after an anchor most of all).  These are refused, with
 * a reason, before regcomp sees them; *cost is the expression's size once
 * unrolled, which the parser also adds up over the whole file.  None of
 * them takes anything from what an expression can say: "(a*)*" is "a*".
 */
const char *
rules_re_refuse(const char *src, uint64_t *cost)
{
	struct rules_rx_frame fr[RULES_REGEX_DEPTH_MAX + 1];
	size_t n = strlen(src), i = 0, depth = 0;
	uint64_t lo, hi, times;
	bool bounded, many;

	*cost = 0;
	memset(&fr[0], 0, sizeof(fr[0]));
	fr[0].alt_null = true;
	while (i < n) {
		struct rules_rx_frame *f = &fr[depth];
		char c = src[i];

		switch (c) {
		case '\\':
			if (i + 1 < n && src[i + 1] >= '1' && src[i + 1] <= '9')
				return "back-references (\\1 ... \\9) are not supported";
			/* GNU's word boundaries and buffer anchors match empty */
			rules_rx_atom(f, 1, i + 1 < n && strchr("bB<>`'", src[i + 1]) != NULL);
			i += i + 1 < n ? 2 : 1;
			break;
		case '[':
			rules_rx_atom(f, 1, false);
			i = rules_skip_bracket(src, n, i + 1);
			break;
		case '^':
		case '$':
			rules_rx_atom(f, 1, true);
			i++;
			break;
		case '(':
			if (depth == RULES_REGEX_DEPTH_MAX)
				return "groups nested more than 32 deep";
			rules_rx_commit(f);
			f = &fr[++depth];
			memset(f, 0, sizeof(*f));
			f->alt_null = true;
			i++;
			break;
		case ')':
			if (depth == 0) {
				rules_rx_atom(f, 1, false);
			} else {
				rules_rx_commit(f);
				depth--;
				rules_rx_atom(&fr[depth], f->sum + 1, f->alt_null || f->any_null);
			}
			i++;
			break;
		case '|':
			rules_rx_commit(f);
			f->any_null = f->any_null || f->alt_null;
			f->alt_null = true;
			i++;
			break;
		case '*':
		case '+':
		case '?':
		case '{':
			if (!f->has_pending) {
				/* nothing before it: regcomp says what it thinks */
				rules_rx_atom(f, 1, false);
				i++;
				break;
			}
			if (f->pending.repeated)
				return "two repetition operators in a row (POSIX leaves \"a**\" or \"a+*\" undefined: keep one)";
			lo = 0;
			hi = 1;
			bounded = true;
			if (c == '*') {
				bounded = false;
			} else if (c == '+') {
				lo = 1;
				bounded = false;
			} else if (c == '{') {
				/* {m}, {m,}, {m,n}: numbers saturate, the bound says no */
				for (lo = 0, i++; i < n && src[i] >= '0' && src[i] <= '9'; i++)
					lo = lo > 100000 ? lo : lo * 10 + (uint64_t)(src[i] - '0');
				hi = lo;
				if (i < n && src[i] == ',') {
					bool any = false;

					for (hi = 0, i++; i < n && src[i] >= '0' && src[i] <= '9'; i++) {
						hi = hi > 100000 ? hi : hi * 10 + (uint64_t)(src[i] - '0');
						any = true;
					}
					bounded = any;
				}
				while (i < n && src[i] != '}')
					i++;
				if (lo > RULES_REGEX_DUP_MAX || (bounded && hi > RULES_REGEX_DUP_MAX))
					return "a repetition count above 255 (the most POSIX promises)";
			}
			i++;
			/* may it repeat the piece more than once? */
			many = !bounded || hi > 1;
			if (many && f->pending.nullable)
				return "it repeats something that can match nothing (such as \"(a*)*\": write \"a*\")";
			/* glibc unrolls: x+ into xx*, x{m} into m copies, x{m,n}
			 * into n, x{m,} into m + 1 */
			times = c == '*' || c == '?' ? 1 : c == '+' ? 2 : !bounded ? lo + 1 : hi > lo ? hi : lo;
			f->pending.cost *= times > 0 ? times : 1;
			f->pending.nullable = f->pending.nullable || lo == 0;
			f->pending.repeated = true;
			break;
		default:
			rules_rx_atom(f, 1, false);
			i++;
			break;
		}
		if (f->sum + (f->has_pending ? f->pending.cost : 0) > RULES_REGEX_COST_MAX)
			return "too large once its repetitions are unrolled (at most 2000 positions)";
	}
	/* unclosed groups: regcomp reports them; count what was seen */
	while (depth > 0) {
		rules_rx_commit(&fr[depth]);
		fr[depth - 1].sum += fr[depth].sum + 1;
		depth--;
	}
	rules_rx_commit(&fr[0]);
	if (fr[0].sum > RULES_REGEX_COST_MAX)
		return "too large once its repetitions are unrolled (at most 2000 positions)";
	*cost = fr[0].sum;
	return NULL;
}
