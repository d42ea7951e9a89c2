/*
 * rules_parse.c - the rules language (docs/rules.md): text in, a struct
 * rules out, or every error with its line and column.
 *
 * A logical rule is one line, or several joined by a trailing backslash.
 * It is cut into words, operators and quoted strings (each knowing its
 * line and column), then read left to right:
 *
 *     on TRIGGER CONDITION* ACTION+
 *
 * An error that leaves the words' structure clear (a value out of range, a
 * condition that cannot apply to the trigger, two actions that contradict)
 * is reported and reading goes on, so one pass finds them all; one that
 * does not (an unknown word) ends that rule.  Either way the next rule is
 * read.  Nothing here does I/O; rules_load (rules.c) reads the file.
 */
#include "smtptap/rules.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "smtptap/rules_int.h"

enum rules_tok_type { TOK_WORD = 0, TOK_STRING, TOK_OP };

struct rules_tok {
	enum rules_tok_type type;
	const char *p; /* words, operators: into the text; strings: unquoted, in scratch, NUL-terminated */
	size_t len;
	unsigned line, col;
};

struct rules_parser {
	rules_error_fn fn;
	void *arg;
	size_t nerrors;
	bool oom;
	struct rules *set;
	/* the logical rule being read */
	struct rules_tok *toks;
	size_t ntok;
	bool toks_full;
	char *scratch; /* unquoted strings */
	size_t used;
	char *text; /* the rule's text: its lines' content joined by a space */
	size_t textlen;
	size_t rawlen;		 /* bytes of its physical lines so far */
	unsigned end_line, end_col; /* just after its last word */
	bool bad;		 /* an error was reported for it */
	bool in_actions;
	bool after_reply;	 /* the last thing read was reply/rewrite and its text */
	unsigned reply_word;	 /* RULES_A_REPLY or _REWRITE: how the first one was written */
	const struct rules_tok *seed_tok;
	bool full; /* RULES_MAX rules read: the rest of the file is not */
	uint64_t regex_cost; /* the file's regular expressions, unrolled */
	bool regex_total_said;
};

/* The keywords that may follow the trigger, conditions then actions. */
enum rules_kw {
	KW_ARG = 0, /* the fields first, in enum rules_field order */
	KW_VERB,
	KW_FROM,
	KW_TO,
	KW_HELO,
	KW_MECH,
	KW_USER,
	KW_SUBJECT,
	KW_HEADER,
	KW_SIZE,
	KW_SESSION,
	KW_OCC,
	KW_CLIENT,
	KW_LISTENER,
	KW_MODE,
	KW_PROB,
	KW_SEED,
	KW_LIMIT,
	KW_NCONDS,
};

static const char *const rules_cond_words[KW_NCONDS] = {
	"arg",	   "verb",	 "from",   "to",     "helo",	 "mechanism",	"user", "subject",     "header",
	"size",	   "session", "occurrence", "client", "listener", "mode", "probability", "seed", "limit",
};

static const struct {
	const char *word;
	unsigned bit;
} rules_action_words[] = {
	{ "reply", RULES_A_REPLY },	  { "rewrite", RULES_A_REWRITE },   { "delay", RULES_A_DELAY },
	{ "stall", RULES_A_STALL },	  { "close", RULES_A_CLOSE },	    { "reset", RULES_A_RESET },
	{ "throttle", RULES_A_THROTTLE }, { "truncate", RULES_A_TRUNCATE }, { "strip", RULES_A_STRIP },
	{ "fail-tls", RULES_A_FAIL_TLS },
};
#define RULES_NACTIONS (sizeof(rules_action_words) / sizeof(rules_action_words[0]))

/* What each action may be combined with (symmetric). */
static unsigned
rules_action_compat(unsigned a)
{
	switch (a) {
	case RULES_A_REPLY:
	case RULES_A_REWRITE:
		return RULES_A_DELAY | RULES_A_CLOSE | RULES_A_RESET | RULES_A_THROTTLE | RULES_A_TRUNCATE;
	case RULES_A_DELAY:
		return ~(unsigned)RULES_A_STALL & ~(unsigned)RULES_A_DELAY;
	case RULES_A_STALL:
		return 0;
	case RULES_A_CLOSE:
		return RULES_A_REPLY | RULES_A_REWRITE | RULES_A_DELAY | RULES_A_TRUNCATE;
	case RULES_A_RESET:
		return RULES_A_REPLY | RULES_A_REWRITE | RULES_A_DELAY;
	case RULES_A_THROTTLE:
		return RULES_A_REPLY | RULES_A_REWRITE | RULES_A_DELAY | RULES_A_STRIP;
	case RULES_A_TRUNCATE:
		return RULES_A_REPLY | RULES_A_REWRITE | RULES_A_DELAY | RULES_A_CLOSE;
	case RULES_A_STRIP:
		return RULES_A_DELAY | RULES_A_THROTTLE;
	case RULES_A_FAIL_TLS:
		return RULES_A_DELAY;
	}
	return 0;
}

static const char *const rules_trigger_words[] = {
	"connect", "greeting", "data-end", "eom",  "tls",  "reply", "command", "any",  "ehlo", "helo",
	"lhlo",	   "mail",     "rcpt",	   "data", "bdat", "rset",  "noop",    "vrfy", "expn", "help",
	"auth",	   "starttls", "quit",
};
#define RULES_NTRIGGER_WORDS (sizeof(rules_trigger_words) / sizeof(rules_trigger_words[0]))

static const char *const rules_verb_words[RULES_NVERBS] = {
	[SMTP_VERB_UNKNOWN] = "command", [SMTP_VERB_HELO] = "helo",	    [SMTP_VERB_EHLO] = "ehlo",
	[SMTP_VERB_LHLO] = "lhlo",	 [SMTP_VERB_MAIL] = "mail",	    [SMTP_VERB_RCPT] = "rcpt",
	[SMTP_VERB_DATA] = "data",	 [SMTP_VERB_BDAT] = "bdat",	    [SMTP_VERB_RSET] = "rset",
	[SMTP_VERB_NOOP] = "noop",	 [SMTP_VERB_VRFY] = "vrfy",	    [SMTP_VERB_EXPN] = "expn",
	[SMTP_VERB_HELP] = "help",	 [SMTP_VERB_QUIT] = "quit",	    [SMTP_VERB_STARTTLS] = "starttls",
	[SMTP_VERB_AUTH] = "auth",
};

static void rules_error(struct rules_parser *ps, unsigned line, unsigned col, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void rules_err_at(struct rules_parser *ps, const struct rules_tok *t, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static const char *rules_show(const struct rules_tok *t, char *buf, size_t bufsz);
static bool rules_tok_is(const struct rules_tok *t, const char *word);
static const char *rules_suggest(const struct rules_tok *t, const char *const *words, size_t n);
static int rules_tokenize_line(struct rules_parser *ps, const char *line, size_t ll, unsigned lineno);
static void rules_read_rule(struct rules_parser *ps);
static bool rules_parse_u64(const char *p, size_t len, uint64_t *out);
static bool rules_parse_scaled(const char *p, size_t len, bool rate, uint64_t *out);
static void rules_describe_trigger(const struct rule *ru, char *buf, size_t bufsz);

/* ------------------------------------------------------------------------
 * Errors.
 */

static void
rules_error(struct rules_parser *ps, unsigned line, unsigned col, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	ps->nerrors++;
	ps->bad = true;
	if (ps->fn != NULL)
		ps->fn(ps->arg, line, col, msg);
}

/* An error at token t, or at the end of the rule when t is NULL. */
static void
rules_err_at(struct rules_parser *ps, const struct rules_tok *t, const char *fmt, ...)
{
	char msg[600];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (t != NULL)
		rules_error(ps, t->line, t->col, "%s", msg);
	else
		rules_error(ps, ps->end_line, ps->end_col, "%s", msg);
}

static void
rules_oom(struct rules_parser *ps)
{
	if (!ps->oom)
		rules_error(ps, ps->end_line, 1, "out of memory");
	ps->oom = true;
}

/* A token for a message: quoted words cut at 40 bytes. */
static const char *
rules_show(const struct rules_tok *t, char *buf, size_t bufsz)
{
	if (t == NULL)
		return "the end of the rule";
	if (t->len > 40)
		snprintf(buf, bufsz, "%s%.40s...%s", t->type == TOK_STRING ? "\"" : "'", t->p,
			 t->type == TOK_STRING ? "\"" : "'");
	else
		snprintf(buf, bufsz, "%s%.*s%s", t->type == TOK_STRING ? "\"" : "'", (int)t->len, t->p,
			 t->type == TOK_STRING ? "\"" : "'");
	return buf;
}

static bool
rules_tok_is(const struct rules_tok *t, const char *word)
{
	size_t i, n = strlen(word);

	if (t == NULL || t->type != TOK_WORD || t->len != n)
		return false;
	for (i = 0; i < n; i++) {
		char c = t->p[i];

		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		if (c != word[i])
			return false;
	}
	return true;
}

unsigned
rules_edit_distance(const char *a, size_t alen, const char *b, size_t blen)
{
	unsigned d[3][33], i, j, cost, best;

	if (alen > 32 || blen > 32)
		return 99;
	for (j = 0; j <= blen; j++)
		d[0][j] = j;
	for (i = 1; i <= alen; i++) {
		unsigned *cur = d[i % 3], *prev = d[(i - 1) % 3], *pp = d[(i + 1) % 3];

		cur[0] = i;
		for (j = 1; j <= blen; j++) {
			char x = a[i - 1], y = b[j - 1];

			if (x >= 'A' && x <= 'Z')
				x += 'a' - 'A';
			if (y >= 'A' && y <= 'Z')
				y += 'a' - 'A';
			cost = x != y;
			best = prev[j] + 1;
			if (cur[j - 1] + 1 < best)
				best = cur[j - 1] + 1;
			if (prev[j - 1] + cost < best)
				best = prev[j - 1] + cost;
			/* a transposition ("rpct" for "rcpt") counts as one edit */
			if (i > 1 && j > 1 && x == (b[j - 2] | (b[j - 2] >= 'A' && b[j - 2] <= 'Z' ? 0x20 : 0)) &&
			    (a[i - 2] | (a[i - 2] >= 'A' && a[i - 2] <= 'Z' ? 0x20 : 0)) == y && pp[j - 2] + 1 < best)
				best = pp[j - 2] + 1;
			cur[j] = best;
		}
	}
	return d[alen % 3][blen];
}

/* The closest of words to t, if close enough to be what was meant. */
static const char *
rules_suggest(const struct rules_tok *t, const char *const *words, size_t n)
{
	unsigned best = 99, d, max;
	const char *w = NULL;
	size_t i;

	if (t == NULL || t->type != TOK_WORD || t->len < 2)
		return NULL;
	max = t->len <= 4 ? 1 : 2;
	for (i = 0; i < n; i++) {
		d = rules_edit_distance(t->p, t->len, words[i], strlen(words[i]));
		if (d <= max && d < best) {
			best = d;
			w = words[i];
		}
	}
	return w;
}

/* Is t a condition or action keyword? */
static bool
rules_is_keyword(const struct rules_tok *t)
{
	size_t k;

	for (k = 0; k < KW_NCONDS; k++)
		if (rules_tok_is(t, rules_cond_words[k]))
			return true;
	for (k = 0; k < RULES_NACTIONS; k++)
		if (rules_tok_is(t, rules_action_words[k].word))
			return true;
	return false;
}

/*
 * Where to go on after a bad value t: just after it, unless it is no value
 * at all (the end, a string or operator, or the next keyword: the value was
 * left out), then nowhere (0), so one mistake gives one error.
 */
static size_t
rules_after_bad(const struct rules_tok *t, size_t next)
{
	return t == NULL || t->type != TOK_WORD || rules_is_keyword(t) ? 0 : next;
}

/* ------------------------------------------------------------------------
 * Cutting a rule into tokens.
 */

static bool
rules_is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static bool
rules_is_opchar(char c)
{
	return c == '~' || c == '!' || c == '<' || c == '>' || c == '=';
}

static struct rules_tok *
rules_tok_push(struct rules_parser *ps, enum rules_tok_type type, const char *p, size_t len, unsigned line,
	       unsigned col)
{
	struct rules_tok *t;

	if (ps->ntok == RULES_TOKENS_MAX) {
		if (!ps->toks_full)
			rules_error(ps, line, col, "more than %d words in one rule", RULES_TOKENS_MAX);
		ps->toks_full = true;
		return NULL;
	}
	t = &ps->toks[ps->ntok++];
	t->type = type;
	t->p = p;
	t->len = len;
	t->line = line;
	t->col = col;
	return t;
}

/*
 * Tokenize one physical line (without its line break) of the rule being
 * read.  Returns 1 when it ends in a continuation backslash, else 0.  After
 * an error the line is still scanned (quotes and comments known) so the
 * continuation is found, but no more tokens come out of it.
 */
static int
rules_tokenize_line(struct rules_parser *ps, const char *line, size_t ll, unsigned lineno)
{
	size_t i = 0, j, first = ll, last = 0;
	bool dead = ps->bad, cont = false;
	unsigned col;

	if (ll > RULES_LINE_MAX) {
		rules_error(ps, lineno, RULES_LINE_MAX + 1, "line longer than %d bytes", RULES_LINE_MAX);
		dead = true;
	}
	ps->rawlen += ll + 1;
	if (!dead && ps->rawlen > RULES_RULE_MAX) {
		rules_error(ps, lineno, 1, "rule longer than %d bytes (continuation lines included)", RULES_RULE_MAX);
		dead = true;
	}
	while (i < ll) {
		unsigned char c = (unsigned char)line[i];

		col = (unsigned)i + 1;
		if (c == ' ' || c == '\t') {
			i++;
			continue;
		}
		if (c == '#')
			break;
		if (c == '\\') {
			for (j = i + 1; j < ll && (line[j] == ' ' || line[j] == '\t'); j++)
				;
			if (j == ll) {
				cont = true;
				break;
			}
			if (!dead)
				rules_error(ps, lineno, col,
					    "unexpected '\\' (outside quotes a backslash only continues a line, at its end)");
			dead = true;
			i++;
			continue;
		}
		if (c == '"') {
			char *out = ps->scratch + ps->used;
			size_t o = 0;
			bool closed = false;

			for (j = i + 1; j < ll; j++) {
				unsigned char d = (unsigned char)line[j];

				if (d == '\\' && j + 1 < ll && (line[j + 1] == '"' || line[j + 1] == '\\')) {
					j++;
					if (!dead)
						out[o++] = line[j];
				} else if (d == '"') {
					closed = true;
					break;
				} else {
					if (rules_is_ctl(d) && d != '\t' && !dead) {
						rules_error(ps, lineno, (unsigned)j + 1,
							    "control character 0x%02x in a string (write text and regular "
							    "expressions with printable characters)",
							    d);
						dead = true;
					}
					if (!dead)
						out[o++] = (char)d;
				}
			}
			if (!closed) {
				if (!dead)
					rules_error(ps, lineno, col, "unterminated string (the closing \" is missing)");
				dead = true;
				break; /* the backslash at the end, if any, was inside it */
			}
			if (!dead) {
				out[o] = '\0';
				ps->used += o + 1;
				if (rules_tok_push(ps, TOK_STRING, out, o, lineno, col) == NULL)
					dead = true;
			}
			if (i < first)
				first = i;
			last = j + 1;
			i = j + 1;
			continue;
		}
		if (rules_is_ctl(c)) {
			if (!dead)
				rules_error(ps, lineno, col, "control character 0x%02x (outside quotes only spaces and tabs)",
					    c);
			dead = true;
			i++;
			continue;
		}
		j = i;
		if (rules_is_opchar(line[i])) {
			/* ~ ~* !~ !~* and > >= < <= = */
			if (line[i] == '~' || line[i] == '!')
				while (j < ll && (line[j] == '~' || line[j] == '!' || line[j] == '*'))
					j++;
			else
				while (j < ll && (line[j] == '<' || line[j] == '>' || line[j] == '='))
					j++;
		} else {
			while (j < ll && line[j] != ' ' && line[j] != '\t' && line[j] != '"' && line[j] != '#' &&
			       line[j] != '\\' && !rules_is_opchar(line[j]) && !rules_is_ctl((unsigned char)line[j]))
				j++;
		}
		if (!dead && rules_tok_push(ps, rules_is_opchar(line[i]) ? TOK_OP : TOK_WORD, line + i, j - i, lineno,
					    col) == NULL)
			dead = true;
		if (i < first)
			first = i;
		last = j;
		i = j;
	}
	/* the rule's text: what this line holds between its first and last
	 * token, after a space when a line came before */
	if (first < last && !dead) {
		if (ps->textlen > 0)
			ps->text[ps->textlen++] = ' ';
		memcpy(ps->text + ps->textlen, line + first, last - first);
		ps->textlen += last - first;
		ps->text[ps->textlen] = '\0';
		ps->end_line = lineno;
		ps->end_col = (unsigned)last + 1;
	}
	return cont;
}

/* ------------------------------------------------------------------------
 * Numbers and units.
 */

static bool
rules_parse_u64(const char *p, size_t len, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (len == 0 || len > 20)
		return false;
	for (i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		if (v > (UINT64_MAX - (uint64_t)(p[i] - '0')) / 10)
			return false;
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = v;
	return true;
}

/* N[k|K|m|M|g|G][B][/s] (binary multiples); "/s" only for a rate. */
static bool
rules_parse_scaled(const char *p, size_t len, bool rate, uint64_t *out)
{
	size_t n = 0;
	uint64_t v, mul = 1;

	while (n < len && p[n] >= '0' && p[n] <= '9')
		n++;
	if (!rules_parse_u64(p, n, &v))
		return false;
	if (n < len) {
		switch (p[n]) {
		case 'k':
		case 'K':
			mul = 1024;
			n++;
			break;
		case 'm':
		case 'M':
			mul = 1024 * 1024;
			n++;
			break;
		case 'g':
		case 'G':
			mul = 1024 * 1024 * 1024;
			n++;
			break;
		default:
			break;
		}
	}
	if (n < len && p[n] == 'B')
		n++;
	if (rate && n + 2 == len && p[n] == '/' && p[n + 1] == 's')
		n += 2;
	if (n != len || v > UINT64_MAX / mul)
		return false;
	*out = v * mul;
	return true;
}

/* ------------------------------------------------------------------------
 * The trigger.
 */

static void
rules_describe_trigger(const struct rule *ru, char *buf, size_t bufsz)
{
	switch (ru->trigger) {
	case RULES_ON_TLS:
		snprintf(buf, bufsz, "tls%s", ru->leg == RULES_LEG_CLIENT	? " client"
					      : ru->leg == RULES_LEG_UPSTREAM ? " upstream"
									       : "");
		return;
	case RULES_ON_COMMAND:
		snprintf(buf, bufsz, "%s", ru->any_verb ? "command" : rules_verb_words[ru->verb]);
		return;
	case RULES_ON_REPLY:
		snprintf(buf, bufsz, "reply%s%s",
			 ru->answers == RULES_ANSWERS_ANY ? "" : " ",
			 ru->answers == RULES_ANSWERS_ANY	   ? ""
			 : ru->answers == RULES_ANSWERS_GREETING ? "greeting"
			 : ru->answers == RULES_ANSWERS_DATA_END ? "data-end"
								 : rules_verb_words[ru->answers_verb]);
		return;
	default:
		snprintf(buf, bufsz, "%s", rules_trigger_name(ru->trigger, SMTP_VERB_UNKNOWN));
		return;
	}
}

/* A verb word (not "command"): its enum, or -1. */
static int
rules_verb_word(const struct rules_tok *t)
{
	int v;

	for (v = 1; v < RULES_NVERBS; v++)
		if (rules_tok_is(t, rules_verb_words[v]))
			return v;
	return -1;
}

/* CODESPEC: 250, 2xx, 25x, or a comma list of those (spaces after the
 * commas allowed).  Returns the index after it, or 0 after an error. */
static size_t
rules_parse_codes(struct rules_parser *ps, struct rule *ru, size_t i)
{
	char spec[256], show[64];
	size_t n = 0, k, start = i;
	const struct rules_tok *t;

	/* join "421," "451" into one spec */
	do {
		t = i < ps->ntok ? &ps->toks[i] : NULL;
		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected reply codes after 'code' (250, 2xx, 25x or a list like 421,451), "
					    "found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (n + t->len >= sizeof(spec)) {
			rules_err_at(ps, t, "too many reply codes");
			return 0;
		}
		memcpy(spec + n, t->p, t->len);
		n += t->len;
		i++;
	} while (spec[n - 1] == ',' && i < ps->ntok);
	spec[n] = '\0';
	t = &ps->toks[start];
	for (k = 0; k <= n;) {
		size_t e = k, c;

		while (e < n && spec[e] != ',')
			e++;
		if (e - k != 3 || spec[k] < '2' || spec[k] > '5' ||
		    !((spec[k + 1] >= '0' && spec[k + 1] <= '9') || spec[k + 1] == 'x' || spec[k + 1] == 'X') ||
		    !((spec[k + 2] >= '0' && spec[k + 2] <= '9') || spec[k + 2] == 'x' || spec[k + 2] == 'X') ||
		    ((spec[k + 1] == 'x' || spec[k + 1] == 'X') && spec[k + 2] >= '0' && spec[k + 2] <= '9')) {
			rules_err_at(ps, t,
				     "bad reply code '%.*s' in '%s' (expected 250, 2xx, 25x or a list like 421,451; "
				     "codes run from 200 to 599)",
				     (int)(e - k), spec + k, spec);
			return 0;
		}
		for (c = 200; c <= 599; c++) {
			char d1 = (char)('0' + c / 100), d2 = (char)('0' + c / 10 % 10), d3 = (char)('0' + c % 10);

			if (spec[k] == d1 && (spec[k + 1] == 'x' || spec[k + 1] == 'X' || spec[k + 1] == d2) &&
			    (spec[k + 2] == 'x' || spec[k + 2] == 'X' || spec[k + 2] == d3))
				ru->codes[(c - 200) / 8] |= (uint8_t)(1u << ((c - 200) % 8));
		}
		k = e + 1;
	}
	for (k = 0; k < n; k++)
		if (spec[k] == 'X')
			spec[k] = 'x';
	ru->has_codes = true;
	if ((ru->codes_src = strdup(spec)) == NULL) {
		rules_oom(ps);
		return 0;
	}
	return i;
}

/* Returns the index after the trigger, or 0 when the rule cannot go on. */
static size_t
rules_parse_trigger(struct rules_parser *ps, struct rule *ru)
{
	const struct rules_tok *t = ps->ntok > 1 ? &ps->toks[1] : NULL, *n;
	char show[64];
	const char *sug;
	size_t i = 2;
	int v;

	ru->leg = RULES_LEG_ANY;
	ru->answers = RULES_ANSWERS_ANY;
	if (t == NULL) {
		rules_err_at(ps, NULL, "'on' needs a trigger: connect, greeting, a command (ehlo, mail, rcpt, data, "
				       "...), command, data-end, tls or reply");
		return 0;
	}
	if (rules_tok_is(t, "connect")) {
		ru->trigger = RULES_ON_CONNECT;
	} else if (rules_tok_is(t, "greeting")) {
		ru->trigger = RULES_ON_GREETING;
	} else if (rules_tok_is(t, "data-end") || rules_tok_is(t, "eom")) {
		ru->trigger = RULES_ON_DATA_END;
	} else if (rules_tok_is(t, "command") || rules_tok_is(t, "any")) {
		ru->trigger = RULES_ON_COMMAND;
		ru->any_verb = true;
	} else if ((v = rules_verb_word(t)) > 0) {
		ru->trigger = RULES_ON_COMMAND;
		ru->verb = (enum smtp_verb)v;
	} else if (rules_tok_is(t, "tls")) {
		ru->trigger = RULES_ON_TLS;
		n = i < ps->ntok ? &ps->toks[i] : NULL;
		/* the leg, unless a value follows: "on tls client 10.0.0.0/8"
		 * is the client condition on either leg */
		if (i + 1 < ps->ntok && !rules_is_keyword(&ps->toks[i + 1]))
			n = NULL;
		if (rules_tok_is(n, "client")) {
			ru->leg = RULES_LEG_CLIENT;
			i++;
		} else if (rules_tok_is(n, "upstream")) {
			ru->leg = RULES_LEG_UPSTREAM;
			i++;
		}
	} else if (rules_tok_is(t, "reply")) {
		ru->trigger = RULES_ON_REPLY;
		n = i < ps->ntok ? &ps->toks[i] : NULL;
		/* the answered command, unless the word is a field being
		 * compared ("on reply helo ~ ..." is about the EHLO name) */
		if (n != NULL && !(i + 1 < ps->ntok && ps->toks[i + 1].type == TOK_OP)) {
			if (rules_tok_is(n, "greeting")) {
				ru->answers = RULES_ANSWERS_GREETING;
				i++;
			} else if (rules_tok_is(n, "data-end") || rules_tok_is(n, "eom")) {
				ru->answers = RULES_ANSWERS_DATA_END;
				i++;
			} else if ((v = rules_verb_word(n)) > 0) {
				ru->answers = RULES_ANSWERS_COMMAND;
				ru->answers_verb = (enum smtp_verb)v;
				i++;
			}
		}
		if (i < ps->ntok && rules_tok_is(&ps->toks[i], "code"))
			if ((i = rules_parse_codes(ps, ru, i + 1)) == 0)
				return 0;
	} else {
		sug = rules_suggest(t, rules_trigger_words, RULES_NTRIGGER_WORDS);
		if (t->type == TOK_WORD && sug != NULL)
			rules_err_at(ps, t, "unknown trigger %s (did you mean '%s'?)", rules_show(t, show, sizeof(show)),
				     sug);
		else
			rules_err_at(ps, t,
				     "unknown trigger %s (expected connect, greeting, a command such as ehlo, mail, "
				     "rcpt or data, command, data-end, tls or reply)",
				     rules_show(t, show, sizeof(show)));
		return 0;
	}
	return i;
}

/* ------------------------------------------------------------------------
 * Conditions.
 */

/* NULL when condition kw can apply to the rule's trigger, else where it
 * does apply ("data-end only"). */
static const char *
rules_cond_applies(const struct rule *ru, enum rules_kw kw)
{
	enum rules_trigger t = ru->trigger;
	bool cmd = t == RULES_ON_COMMAND, rep = t == RULES_ON_REPLY;
	enum smtp_verb v = cmd ? ru->verb : ru->answers_verb;
	bool anyv = cmd ? ru->any_verb : ru->answers == RULES_ANSWERS_ANY;
	bool rep_cmd = rep && ru->answers == RULES_ANSWERS_COMMAND;

	switch (kw) {
	case KW_ARG:
	case KW_VERB:
		return cmd ? NULL : "commands";
	case KW_FROM:
		if (t == RULES_ON_DATA_END || ((cmd || rep) && anyv) || (rep && ru->answers == RULES_ANSWERS_DATA_END))
			return NULL;
		if ((cmd || rep_cmd) &&
		    (v == SMTP_VERB_MAIL || v == SMTP_VERB_RCPT || v == SMTP_VERB_DATA || v == SMTP_VERB_BDAT))
			return NULL;
		return "mail, rcpt, data, bdat, command, data-end and replies to them";
	case KW_TO:
		if (t == RULES_ON_DATA_END || ((cmd || rep) && anyv) || (rep && ru->answers == RULES_ANSWERS_DATA_END))
			return NULL;
		if ((cmd || rep_cmd) && (v == SMTP_VERB_RCPT || v == SMTP_VERB_DATA || v == SMTP_VERB_BDAT))
			return NULL;
		return "rcpt, data, bdat, command, data-end and replies to them";
	case KW_HELO:
		if (t == RULES_ON_CONNECT || t == RULES_ON_GREETING || (rep && ru->answers == RULES_ANSWERS_GREETING))
			return "commands, replies to them, data-end and tls";
		return NULL;
	case KW_MECH:
	case KW_USER:
		if ((cmd || rep) && (anyv || ((cmd || rep_cmd) && v == SMTP_VERB_AUTH)))
			return NULL;
		return "auth, command and replies to auth";
	case KW_SUBJECT:
	case KW_HEADER:
	case KW_SIZE:
		return t == RULES_ON_DATA_END ? NULL : "data-end only";
	default:
		return NULL;
	}
}

/* A regular expression condition: OP "REGEX" at toks[i].  Returns the
 * index after it; 0 when the rule cannot go on. */
static size_t
rules_parse_regex(struct rules_parser *ps, const struct rules_tok *kwt, size_t i, struct rules_re *re)
{
	const struct rules_tok *op = i < ps->ntok ? &ps->toks[i] : NULL, *s;
	char show[64], why[256];
	const char *refuse;
	uint64_t cost;
	int rc;

	if (op == NULL || op->type != TOK_OP ||
	    !((op->len == 1 && op->p[0] == '~') || (op->len == 2 && memcmp(op->p, "~*", 2) == 0) ||
	      (op->len == 2 && memcmp(op->p, "!~", 2) == 0) || (op->len == 3 && memcmp(op->p, "!~*", 3) == 0))) {
		rules_err_at(ps, op, "expected ~, ~*, !~ or !~* after '%.*s', found %s", (int)kwt->len, kwt->p,
			     rules_show(op, show, sizeof(show)));
		return 0;
	}
	s = i + 1 < ps->ntok ? &ps->toks[i + 1] : NULL;
	if (s == NULL || s->type != TOK_STRING) {
		rules_err_at(ps, s, "expected a regular expression in double quotes after '%.*s', found %s",
			     (int)op->len, op->p, rules_show(s, show, sizeof(show)));
		return 0;
	}
	re->neg = op->p[0] == '!';
	re->icase = op->p[op->len - 1] == '*';
	if (s->len > RULES_REGEX_MAX) {
		rules_err_at(ps, s, "regular expression longer than %d bytes", RULES_REGEX_MAX);
		return i + 2;
	}
	if ((refuse = rules_re_refuse(s->p, &cost)) != NULL) {
		rules_err_at(ps, s, "regular expression refused: %s", refuse);
		return i + 2;
	}
	/* the whole file's too: a reload must not take long */
	if ((ps->regex_cost += cost) > RULES_REGEX_TOTAL_MAX) {
		if (!ps->regex_total_said)
			rules_err_at(ps, s, "the file's regular expressions add up to more than %d positions once "
					    "unrolled: make them smaller or fewer",
				     RULES_REGEX_TOTAL_MAX);
		ps->regex_total_said = true;
		ps->bad = true;
		return i + 2;
	}
	if ((re->src = strdup(s->p)) == NULL) {
		rules_oom(ps);
		return 0;
	}
	rc = regcomp(&re->re, s->p, REG_EXTENDED | REG_NOSUB | (re->icase ? REG_ICASE : 0));
	if (rc != 0) {
		regerror(rc, &re->re, why, sizeof(why));
		rules_err_at(ps, s, "bad regular expression %s: %s", rules_show(s, show, sizeof(show)), why);
		return i + 2;
	}
	re->compiled = true;
	if (rules_re_analyse(re) < 0) {
		rules_oom(ps);
		return 0;
	}
	return i + 2;
}

/* RANGE: 3, 1-2, 5- (5 and later), -3 (1 to 3); counted from 1. */
static bool
rules_parse_range(const struct rules_tok *t, uint64_t *lo, uint64_t *hi)
{
	const char *dash;

	if (t == NULL || t->type != TOK_WORD)
		return false;
	dash = memchr(t->p, '-', t->len);
	if (dash == NULL) {
		if (!rules_parse_u64(t->p, t->len, lo))
			return false;
		*hi = *lo;
	} else {
		size_t a = (size_t)(dash - t->p), b = t->len - a - 1;

		if (a == 0 && b == 0)
			return false;
		*lo = 1;
		*hi = UINT64_MAX;
		if (a > 0 && !rules_parse_u64(t->p, a, lo))
			return false;
		if (b > 0 && !rules_parse_u64(dash + 1, b, hi))
			return false;
	}
	return true;
}

/* ADDR[/PREFIX], v4 or v6 (brackets allowed); IPv4-mapped v6 becomes v4. */
static bool
rules_parse_cidr(const struct rules_tok *t, int *family, uint8_t addr[16], unsigned *prefix, const char **why)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	char host[64];
	const char *slash = memchr(t->p, '/', t->len), *h = t->p;
	size_t hl = slash != NULL ? (size_t)(slash - t->p) : t->len;
	uint64_t pfx = 0;
	unsigned maxp;

	*why = NULL;
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	}
	if (hl == 0 || hl >= sizeof(host))
		return false;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (inet_pton(AF_INET, host, addr) == 1)
		*family = AF_INET;
	else if (inet_pton(AF_INET6, host, addr) == 1)
		*family = AF_INET6;
	else
		return false;
	maxp = *family == AF_INET ? 32 : 128;
	if (slash != NULL) {
		if (!rules_parse_u64(slash + 1, (size_t)(t->p + t->len - slash - 1), &pfx) || pfx > maxp) {
			*why = *family == AF_INET ? "an IPv4 prefix runs from 0 to 32" : "an IPv6 prefix runs from 0 to 128";
			return false;
		}
	} else {
		pfx = maxp;
	}
	if (*family == AF_INET6 && memcmp(addr, mapped, 12) == 0 && pfx >= 96) {
		memmove(addr, addr + 12, 4);
		*family = AF_INET;
		pfx -= 96;
	}
	*prefix = (unsigned)pfx;
	return true;
}

/* ADDR:PORT, [V6]:PORT or :PORT */
static bool
rules_parse_listener(const struct rules_tok *t, struct rule *ru)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	const char *colon = NULL, *h = t->p;
	char host[64];
	size_t k, hl;
	uint64_t port;

	for (k = t->len; k > 0; k--)
		if (t->p[k - 1] == ':') {
			colon = t->p + k - 1;
			break;
		}
	if (colon == NULL || !rules_parse_u64(colon + 1, t->len - (size_t)(colon + 1 - t->p), &port) || port == 0 ||
	    port > 65535)
		return false;
	ru->lst_port = (unsigned)port;
	hl = (size_t)(colon - t->p);
	if (hl == 0) {
		ru->lst_family = 0;
		return true;
	}
	if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
		h++;
		hl -= 2;
	} else if (memchr(h, ':', hl) != NULL) {
		return false; /* IPv6 needs its brackets */
	}
	if (hl == 0 || hl >= sizeof(host))
		return false;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (inet_pton(AF_INET, host, ru->lst_addr) == 1) {
		ru->lst_family = AF_INET;
	} else if (inet_pton(AF_INET6, host, ru->lst_addr) == 1) {
		ru->lst_family = AF_INET6;
		if (memcmp(ru->lst_addr, mapped, 12) == 0) {
			memmove(ru->lst_addr, ru->lst_addr + 12, 4);
			ru->lst_family = AF_INET;
		}
	} else {
		return false;
	}
	return true;
}

/*
 * P: 0.25, .5, 1, 25%; 0 < P <= 1.  The value is kept as a canonical
 * decimal ("25%" and ".250" are both "0.25"), which rule_format prints
 * back exactly, and read with strtod.
 */
static bool
rules_parse_prob(const struct rules_tok *t, struct rule *ru, const char **why)
{
	char digits[48], *out = ru->prob_text;
	size_t n = t->len, k, nd = 0, start, end, o = 0;
	long point = -1, z;
	bool pct = false;
	double v;

	*why = NULL;
	if (n > 0 && t->p[n - 1] == '%') {
		pct = true;
		n--;
	}
	if (n == 0 || n >= sizeof(digits))
		return false;
	for (k = 0; k < n; k++) {
		if (t->p[k] == '.' && point < 0)
			point = (long)nd;
		else if (t->p[k] >= '0' && t->p[k] <= '9')
			digits[nd++] = t->p[k];
		else
			return false;
	}
	if (nd == 0)
		return false;
	if (point < 0)
		point = (long)nd;
	if (pct)
		point -= 2;
	/* the significant digits: digits[start..end), the point after
	 * `point` of all nd digits */
	for (start = 0; start < nd && digits[start] == '0'; start++)
		;
	for (end = nd; end > start && digits[end - 1] == '0' && (long)end > point; end--)
		;
	if (start == end) {
		*why = "a probability is more than 0";
		return false;
	}
	/* at most "0." + 2 zeros (%) + 47 digits: fits prob_text */
	if ((long)start >= point) {
		out[o++] = '0';
		out[o++] = '.';
		for (z = point; z < (long)start; z++)
			out[o++] = '0';
		for (k = start; k < end; k++)
			out[o++] = digits[k];
	} else {
		for (k = start; k < end; k++) {
			if ((long)k == point)
				out[o++] = '.';
			out[o++] = digits[k];
		}
		for (z = (long)end; z < point; z++)
			out[o++] = '0';
	}
	out[o] = '\0';
	v = strtod(out, NULL);
	if (v > 1) {
		*why = "a probability is at most 1 (100%)";
		return false;
	}
	ru->prob = v;
	return true;
}

/* One condition at toks[i] (a condition keyword).  Returns the index after
 * it, or 0 when the rule cannot go on. */
static size_t
rules_parse_cond(struct rules_parser *ps, struct rule *ru, enum rules_kw kw, size_t i)
{
	const struct rules_tok *kwt = &ps->toks[i], *t = i + 1 < ps->ntok ? &ps->toks[i + 1] : NULL;
	const char *where, *why;
	char trig[32], show[64];
	unsigned bit;
	uint64_t v;
	size_t next;

	bit = kw < KW_HEADER ? 1u << kw
	      : kw == KW_HEADER	  ? RULES_C_HEADER
	      : kw == KW_SIZE	  ? RULES_C_SIZE
	      : kw == KW_SESSION  ? RULES_C_SESSION
	      : kw == KW_OCC	  ? RULES_C_OCC
	      : kw == KW_CLIENT	  ? RULES_C_CLIENT
	      : kw == KW_LISTENER ? RULES_C_LISTENER
	      : kw == KW_MODE	  ? RULES_C_MODE
	      : kw == KW_PROB	  ? RULES_C_PROB
	      : kw == KW_SEED	  ? RULES_C_SEED
				  : RULES_C_LIMIT;
	if (ps->in_actions)
		rules_err_at(ps, kwt, "condition '%s' after an action: conditions come before the first action",
			     rules_cond_words[kw]);
	if (kw != KW_HEADER && (ru->conds & bit))
		rules_err_at(ps, kwt, "'%s' given twice in one rule%s", rules_cond_words[kw],
			     kw < KW_HEADER ? " (combine both in one regular expression)" : "");
	if ((where = rules_cond_applies(ru, kw)) != NULL) {
		rules_describe_trigger(ru, trig, sizeof(trig));
		if (strcmp(where, "data-end only") == 0)
			rules_err_at(ps, kwt, "%s applies to data-end only, not to %s", rules_cond_words[kw], trig);
		else
			rules_err_at(ps, kwt, "%s applies to %s, not to %s", rules_cond_words[kw], where, trig);
	}
	ru->conds |= bit;

	if (kw < KW_HEADER) {
		if (ru->field[kw].src != NULL || ru->field[kw].compiled) {
			/* given twice (reported): read the second into a scratch */
			struct rules_re tmp;

			memset(&tmp, 0, sizeof(tmp));
			next = rules_parse_regex(ps, kwt, i + 1, &tmp);
			rules_re_free(&tmp);
			return next;
		}
		return rules_parse_regex(ps, kwt, i + 1, &ru->field[kw]);
	}
	switch (kw) {
	case KW_HEADER: {
		struct rules_hdr_cond *hc;
		size_t k;

		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected a header name after 'header' (header Subject ~ \"...\"), found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		for (k = 0; k < t->len; k++)
			if ((unsigned char)t->p[k] <= 32 || (unsigned char)t->p[k] >= 127 || t->p[k] == ':')
				break;
		if (k < t->len || t->len > 76) {
			rules_err_at(ps, t, "bad header name %s (%s)", rules_show(t, show, sizeof(show)),
				     k + 1 == t->len && t->p[k] == ':' ? "write it without the colon: header Subject ~ ..."
								       : "printable ASCII, no colon: Subject, X-Mailer");
			return 0;
		}
		if (ru->nhdrs == RULES_HEADERS_MAX) {
			rules_err_at(ps, kwt, "more than %d header conditions in one rule", RULES_HEADERS_MAX);
			return 0;
		}
		if (ru->hdrs == NULL && (ru->hdrs = calloc(RULES_HEADERS_MAX, sizeof(*ru->hdrs))) == NULL) {
			rules_oom(ps);
			return 0;
		}
		hc = &ru->hdrs[ru->nhdrs];
		if ((hc->name = strndup(t->p, t->len)) == NULL) {
			rules_oom(ps);
			return 0;
		}
		hc->namelen = t->len;
		ru->nhdrs++;
		return rules_parse_regex(ps, t, i + 2, &hc->re);
	}
	case KW_SIZE: {
		const struct rules_tok *n = i + 2 < ps->ntok ? &ps->toks[i + 2] : NULL;

		if (t == NULL || t->type != TOK_OP) {
			rules_err_at(ps, t, "expected >, >=, <, <= or = after 'size', found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (t->len == 1 && t->p[0] == '>')
			ru->size_cmp = RULES_CMP_GT;
		else if (t->len == 2 && memcmp(t->p, ">=", 2) == 0)
			ru->size_cmp = RULES_CMP_GE;
		else if (t->len == 1 && t->p[0] == '<')
			ru->size_cmp = RULES_CMP_LT;
		else if (t->len == 2 && memcmp(t->p, "<=", 2) == 0)
			ru->size_cmp = RULES_CMP_LE;
		else if ((t->len == 1 && t->p[0] == '=') || (t->len == 2 && memcmp(t->p, "==", 2) == 0))
			ru->size_cmp = RULES_CMP_EQ;
		else {
			rules_err_at(ps, t, "expected >, >=, <, <= or = after 'size', found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (n == NULL || n->type != TOK_WORD || !rules_parse_scaled(n->p, n->len, false, &ru->size)) {
			rules_err_at(ps, n, "expected a size after '%.*s' (bytes, or with k, M or G: 10M), found %s",
				     (int)t->len, t->p, rules_show(n, show, sizeof(show)));
			return rules_after_bad(n, i + 3);
		}
		return i + 3;
	}
	case KW_SESSION:
	case KW_OCC: {
		uint64_t lo, hi;

		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected a number or range after '%s' (3, 1-2, 5-, -3), found %s",
				     rules_cond_words[kw], rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (!rules_parse_range(t, &lo, &hi)) {
			rules_err_at(ps, t, "bad range %s after '%s' (expected 3, 1-2, 5- or -3)",
				     rules_show(t, show, sizeof(show)), rules_cond_words[kw]);
			return rules_after_bad(t, i + 2);
		}
		if (lo == 0 || hi == 0) {
			rules_err_at(ps, t, "%s are counted from 1, not 0", kw == KW_SESSION ? "sessions" : "occurrences");
			return i + 2;
		}
		if (hi < lo) {
			rules_err_at(ps, t, "range %s ends before it starts", rules_show(t, show, sizeof(show)));
			return i + 2;
		}
		if (kw == KW_SESSION) {
			ru->sess_lo = lo;
			ru->sess_hi = hi;
		} else {
			ru->occ_lo = lo;
			ru->occ_hi = hi;
		}
		return i + 2;
	}
	case KW_CLIENT:
		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected an address after 'client' (192.0.2.1, 10.0.0.0/8, ::1, 2001:db8::/32), "
					    "found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (!rules_parse_cidr(t, &ru->cl_family, ru->cl_addr, &ru->cl_prefix, &why)) {
			rules_err_at(ps, t, "bad address %s after 'client' (%s)", rules_show(t, show, sizeof(show)),
				     why != NULL ? why : "expected 192.0.2.1, 10.0.0.0/8, ::1 or 2001:db8::/32");
			return rules_after_bad(t, i + 2);
		}
		return i + 2;
	case KW_LISTENER:
		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected ADDR:PORT or :PORT after 'listener', found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (!rules_parse_listener(t, ru)) {
			rules_err_at(ps, t,
				     "bad listener %s (expected 127.0.0.1:2525, [::1]:2525 or :2525, as given to --listen)",
				     rules_show(t, show, sizeof(show)));
			return rules_after_bad(t, i + 2);
		}
		return i + 2;
	case KW_MODE:
		if (rules_tok_is(t, "sink"))
			ru->mode_sink = true;
		else if (rules_tok_is(t, "relay"))
			ru->mode_sink = false;
		else {
			rules_err_at(ps, t, "expected relay or sink after 'mode', found %s", rules_show(t, show, sizeof(show)));
			return rules_after_bad(t, i + 2);
		}
		return i + 2;
	case KW_PROB:
		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected a probability after 'probability' (0.25 or 25%%), found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (!rules_parse_prob(t, ru, &why)) {
			rules_err_at(ps, t, "bad probability %s (%s)", rules_show(t, show, sizeof(show)),
				     why != NULL ? why : "expected a number from 0 to 1 such as 0.25, or 25%");
			return rules_after_bad(t, i + 2);
		}
		/* fire when a uniform 64-bit draw is below P * 2^64 */
		if (ru->prob >= 1 || ru->prob * 18446744073709551616.0 >= 18446744073709551615.0)
			ru->prob_always = true;
		else
			ru->prob_max = (uint64_t)(ru->prob * 18446744073709551616.0);
		return i + 2;
	case KW_SEED:
		ps->seed_tok = kwt;
		if (t == NULL || t->type != TOK_WORD || !rules_parse_u64(t->p, t->len, &v)) {
			rules_err_at(ps, t, "expected a number after 'seed' (0 to 18446744073709551615), found %s",
				     rules_show(t, show, sizeof(show)));
			return rules_after_bad(t, i + 2);
		}
		ru->seed = v;
		return i + 2;
	case KW_LIMIT:
		if (t == NULL || t->type != TOK_WORD || !rules_parse_u64(t->p, t->len, &v) || v == 0) {
			rules_err_at(ps, t, "expected a number of times after 'limit' (1 or more), found %s",
				     rules_show(t, show, sizeof(show)));
			return rules_after_bad(t, i + 2);
		}
		ru->limit = v;
		return i + 2;
	default:
		return 0;
	}
}

/* ------------------------------------------------------------------------
 * Actions.
 */

/* reply / rewrite CODE [ENH] ["TEXT" ...] at toks[i]: builds ru->reply. */
static size_t
rules_parse_reply(struct rules_parser *ps, struct rule *ru, size_t i)
{
	const struct rules_tok *kwt = &ps->toks[i], *t = i + 1 < ps->ntok ? &ps->toks[i + 1] : NULL;
	const struct rules_tok *texts[RULES_TOKENS_MAX];
	char show[64], buf[RULES_REPLY_MAX], deftext[48];
	size_t ntexts = 0, k, len = 0, need;
	uint64_t code, a, b, c;
	const char *text;
	size_t tlen;

	if (t == NULL || t->type != TOK_WORD || t->len != 3 || !rules_parse_u64(t->p, 3, &code) || code < 200 ||
	    code > 599) {
		rules_err_at(ps, t, "expected a reply code after '%.*s' (three digits from 200 to 599), found %s",
			     (int)kwt->len, kwt->p, rules_show(t, show, sizeof(show)));
		if (rules_after_bad(t, i + 2) == 0)
			return 0;
		/* read on past its enhanced code and text: they are not
		 * errors of their own */
		code = 0;
	} else if (code / 100 == 3) {
		/* A 354 or 334 of smtptap's would ask the client for message
		 * data or a credential that no server is waiting for. */
		rules_err_at(ps, t, "a rule cannot answer %d: it would ask the client for data no server expects "
				    "(use a 2xx, 4xx or 5xx code)",
			     (int)code);
	}
	ru->code = (int)code;
	i += 2;
	t = i < ps->ntok ? &ps->toks[i] : NULL;
	if (t != NULL && t->type == TOK_WORD && t->len > 0 && t->p[0] >= '0' && t->p[0] <= '9' &&
	    memchr(t->p, '.', t->len) != NULL) {
		const char *d1 = memchr(t->p, '.', t->len), *d2;
		size_t l1 = (size_t)(d1 - t->p), rest = t->len - l1 - 1, l2, l3;

		d2 = memchr(d1 + 1, '.', rest);
		l2 = d2 != NULL ? (size_t)(d2 - d1 - 1) : 0;
		l3 = d2 != NULL ? t->len - (size_t)(d2 + 1 - t->p) : 0;
		if (d2 == NULL || l1 != 1 || l2 < 1 || l2 > 3 || l3 < 1 || l3 > 3 || !rules_parse_u64(t->p, 1, &a) ||
		    !rules_parse_u64(d1 + 1, l2, &b) || !rules_parse_u64(d2 + 1, l3, &c) || (a != 2 && a != 4 && a != 5)) {
			rules_err_at(ps, t, "bad enhanced status code %s (expected CLASS.SUBJECT.DETAIL such as 5.1.1, "
					    "class 2, 4 or 5)",
				     rules_show(t, show, sizeof(show)));
		} else if (code == 0) {
			/* the code was wrong: said already */
		} else if (code / 100 == 3) {
			rules_err_at(ps, t, "a %d reply takes no enhanced status code (RFC 3463 has no class 3)", (int)code);
		} else if (a != code / 100) {
			rules_err_at(ps, t, "enhanced status code %.*s does not match reply code %d (its class must be %d)",
				     (int)t->len, t->p, (int)code, (int)(code / 100));
		} else {
			snprintf(ru->enh, sizeof(ru->enh), "%d.%d.%d", (int)a, (int)b, (int)c);
		}
		i++;
	}
	while (i < ps->ntok && ps->toks[i].type == TOK_STRING)
		texts[ntexts++] = &ps->toks[i++];
	if (ntexts == 0)
		snprintf(deftext, sizeof(deftext), "smtptap rule %u", ru->line);
	/* "550-5.1.1 first\r\n550 5.1.1 last\r\n": every line but the last
	 * continues; the enhanced code repeats on each (RFC 2034) */
	for (k = 0; k < (ntexts > 0 ? ntexts : 1); k++) {
		bool last = k + 1 == (ntexts > 0 ? ntexts : 1);

		text = ntexts > 0 ? texts[k]->p : deftext;
		tlen = ntexts > 0 ? texts[k]->len : strlen(deftext);
		need = 3 + (ru->enh[0] != '\0' || tlen > 0 || !last ? 1 : 0) + strlen(ru->enh) +
		       (ru->enh[0] != '\0' && tlen > 0 ? 1 : 0) + tlen + 2;
		if (need > RULES_REPLY_LINE_MAX) {
			rules_err_at(ps, ntexts > 0 ? texts[k] : kwt,
				     "reply line of %zu bytes, more than %d with its code and CRLF (RFC 5321 4.5.3.1.5)",
				     need, RULES_REPLY_LINE_MAX);
			return i;
		}
		if (len + need >= RULES_REPLY_MAX) {
			rules_err_at(ps, ntexts > 0 ? texts[k] : kwt, "reply longer than %d bytes", RULES_REPLY_MAX - 1);
			return i;
		}
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%03d", (int)code);
		if (ru->enh[0] != '\0' || tlen > 0 || !last)
			buf[len++] = last ? ' ' : '-';
		if (ru->enh[0] != '\0') {
			memcpy(buf + len, ru->enh, strlen(ru->enh));
			len += strlen(ru->enh);
			if (tlen > 0)
				buf[len++] = ' ';
		}
		memcpy(buf + len, text, tlen);
		len += tlen;
		buf[len++] = '\r';
		buf[len++] = '\n';
	}
	buf[len] = '\0';
	if (ps->bad)
		return i;
	free(ru->reply);
	if ((ru->reply = malloc(len + 1)) == NULL) {
		rules_oom(ps);
		return 0;
	}
	memcpy(ru->reply, buf, len + 1);
	ru->reply_len = len;
	return i;
}

/* CAP[,CAP...] for strip, with spaces after the commas allowed. */
static size_t
rules_parse_strip(struct rules_parser *ps, struct rule *ru, size_t i)
{
	const struct rules_tok *t = i < ps->ntok ? &ps->toks[i] : NULL;
	char show[64];
	size_t k, s, e;
	bool more;

	if (t == NULL || t->type != TOK_WORD) {
		rules_err_at(ps, t, "expected EHLO keywords after 'strip' (STARTTLS,PIPELINING), found %s",
			     rules_show(t, show, sizeof(show)));
		return 0;
	}
	do {
		t = &ps->toks[i++];
		more = t->len > 0 && t->p[t->len - 1] == ',';
		for (s = 0; s < t->len; s = e + 1) {
			for (e = s; e < t->len && t->p[e] != ','; e++)
				;
			if (e == s) {
				if (e == t->len)
					break; /* the trailing comma */
				rules_err_at(ps, t, "empty keyword in %s", rules_show(t, show, sizeof(show)));
				return i;
			}
			for (k = s; k < e; k++) {
				char c = t->p[k];

				if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
				      (c == '-' && k > s)))
					break;
			}
			if (k < e || e - s > 64) {
				rules_err_at(ps, t, "bad EHLO keyword '%.*s' (letters, digits and '-': STARTTLS, 8BITMIME)",
					     (int)(e - s), t->p + s);
				return i;
			}
			if (ru->nstrip == RULES_STRIP_MAX) {
				rules_err_at(ps, t, "more than %d keywords to strip", RULES_STRIP_MAX);
				return i;
			}
			if ((ru->strip[ru->nstrip] = strndup(t->p + s, e - s)) == NULL) {
				rules_oom(ps);
				return 0;
			}
			for (k = 0; ru->strip[ru->nstrip][k] != '\0'; k++)
				if (ru->strip[ru->nstrip][k] >= 'a' && ru->strip[ru->nstrip][k] <= 'z')
					ru->strip[ru->nstrip][k] -= 'a' - 'A';
			ru->nstrip++;
		}
	} while (more && i < ps->ntok && ps->toks[i].type == TOK_WORD);
	return i;
}

/* NULL when action a may be used on the rule's trigger, else why not. */
static const char *
rules_action_applies(const struct rule *ru, unsigned a)
{
	bool starttls = ru->trigger == RULES_ON_COMMAND && !ru->any_verb && ru->verb == SMTP_VERB_STARTTLS;

	/* The upstream's 220 to STARTTLS never reaches the client as such:
	 * smtptap upgrades the upstream and answers the client itself. */
	if (ru->trigger == RULES_ON_REPLY && ru->answers == RULES_ANSWERS_COMMAND &&
	    ru->answers_verb == SMTP_VERB_STARTTLS)
		return "the upstream's reply to STARTTLS is smtptap's own business: use 'on starttls' or "
		       "'on tls upstream'";
	switch (a) {
	case RULES_A_REWRITE:
		if (ru->trigger == RULES_ON_CONNECT || ru->trigger == RULES_ON_TLS || starttls)
			return "nothing is forwarded there whose reply could be rewritten: use reply";
		return NULL;
	case RULES_A_REPLY:
		if (ru->trigger == RULES_ON_TLS)
			return "a TLS handshake has no SMTP reply: use it on starttls";
		return NULL;
	case RULES_A_TRUNCATE:
		if (ru->trigger == RULES_ON_TLS)
			return "a TLS handshake has no SMTP reply to truncate";
		if (ru->trigger == RULES_ON_CONNECT)
			return "use it on greeting to truncate the greeting";
		return NULL;
	case RULES_A_STRIP:
		if (ru->trigger == RULES_ON_COMMAND && !ru->any_verb &&
		    (ru->verb == SMTP_VERB_EHLO || ru->verb == SMTP_VERB_LHLO))
			return NULL;
		if (ru->trigger == RULES_ON_REPLY &&
		    (ru->answers == RULES_ANSWERS_ANY ||
		     (ru->answers == RULES_ANSWERS_COMMAND &&
		      (ru->answers_verb == SMTP_VERB_EHLO || ru->answers_verb == SMTP_VERB_LHLO))))
			return NULL;
		return "it applies to ehlo, lhlo, reply ehlo, reply lhlo and reply only";
	case RULES_A_FAIL_TLS:
		if (ru->trigger == RULES_ON_TLS || ru->trigger == RULES_ON_CONNECT || starttls)
			return NULL;
		return "it applies to tls, starttls and connect only";
	default:
		return NULL;
	}
}

/* Why actions a and b (a given after b) cannot go together. */
static void
rules_action_conflict(struct rules_parser *ps, const struct rules_tok *t, unsigned a, unsigned b)
{
	const char *an = "?", *bn = "?";
	size_t k;

	for (k = 0; k < RULES_NACTIONS; k++) {
		if (rules_action_words[k].bit == a)
			an = rules_action_words[k].word;
		if (rules_action_words[k].bit == b)
			bn = rules_action_words[k].word;
	}
	if ((a | b) == (RULES_A_REPLY | RULES_A_REWRITE))
		rules_err_at(ps, t, "%s cannot be combined with %s (reply answers instead of forwarding, rewrite "
				    "forwards and replaces the answer: choose one)",
			     an, bn);
	else if (a == RULES_A_STALL || b == RULES_A_STALL)
		rules_err_at(ps, t, "%s cannot be combined with %s (stall never answers: it stands alone)", an, bn);
	else if ((a | b) == (RULES_A_RESET | RULES_A_CLOSE))
		rules_err_at(ps, t, "%s cannot be combined with %s (reset already closes, with an RST)", an, bn);
	else
		rules_err_at(ps, t, "%s cannot be combined with %s", an, bn);
}

/* One action at toks[i].  Returns the index after it, or 0 when the rule
 * cannot go on. */
static size_t
rules_parse_action(struct rules_parser *ps, struct rule *ru, unsigned a, size_t i)
{
	const struct rules_tok *kwt = &ps->toks[i], *t = i + 1 < ps->ntok ? &ps->toks[i + 1] : NULL;
	unsigned have = ru->actions, conflict, k, written = a;
	const char *why;
	char trig[32], show[64];
	uint64_t v;

	if ((a == RULES_A_REPLY || a == RULES_A_REWRITE) && !(have & (RULES_A_REPLY | RULES_A_REWRITE))) {
		ps->reply_word = a;
		ru->wrote_rewrite = a == RULES_A_REWRITE;
	}
	/* on the reply trigger reply and rewrite both replace the reply */
	if (ru->trigger == RULES_ON_REPLY && a == RULES_A_REPLY)
		a = RULES_A_REWRITE;
	if (have & a) {
		if ((a & RULES_A_REWRITE) && written != ps->reply_word)
			rules_action_conflict(ps, kwt, written, ps->reply_word);
		else
			rules_err_at(ps, kwt, "'%.*s' given twice in one rule", (int)kwt->len, kwt->p);
	} else if ((conflict = have & ~rules_action_compat(a)) != 0) {
		for (k = 1; !(conflict & k); k <<= 1)
			;
		if (k & (RULES_A_REPLY | RULES_A_REWRITE))
			k = ps->reply_word;
		rules_action_conflict(ps, kwt, written, k);
	} else if ((why = rules_action_applies(ru, written)) != NULL) {
		rules_describe_trigger(ru, trig, sizeof(trig));
		rules_err_at(ps, kwt, "%.*s does not apply to %s: %s", (int)kwt->len, kwt->p, trig, why);
	}
	ru->actions |= a;
	ps->in_actions = true;
	ps->after_reply = a == RULES_A_REPLY || a == RULES_A_REWRITE;

	switch (a) {
	case RULES_A_REPLY:
	case RULES_A_REWRITE:
		return rules_parse_reply(ps, ru, i);
	case RULES_A_DELAY: {
		size_t n = 0;
		uint64_t ms;

		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected a duration after 'delay' (500ms, 5s, 2m), found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		while (n < t->len && t->p[n] >= '0' && t->p[n] <= '9')
			n++;
		if (!rules_parse_u64(t->p, n, &v) || v > 3600000)
			goto bad_duration;
		if (n == t->len || (t->len - n == 1 && t->p[n] == 's'))
			ms = v * 1000;
		else if (t->len - n == 2 && t->p[n] == 'm' && t->p[n + 1] == 's')
			ms = v;
		else if (t->len - n == 1 && t->p[n] == 'm')
			ms = v * 60000;
		else if (t->len - n == 1 && t->p[n] == 'h')
			ms = v * 3600000;
		else
			goto bad_duration;
		if (ms > 3600000 || ms == 0) {
			rules_err_at(ps, t, "delay %s out of range (more than 0, at most 1h)", rules_show(t, show, sizeof(show)));
			return i + 2;
		}
		ru->delay_ms = (uint32_t)ms;
		return i + 2;
bad_duration:
		rules_err_at(ps, t, "bad duration %s (expected 500ms, 5s, 2m, 1h or a number of seconds; at most 1h)",
			     rules_show(t, show, sizeof(show)));
		return rules_after_bad(t, i + 2);
	}
	case RULES_A_THROTTLE:
		if (t == NULL || t->type != TOK_WORD) {
			rules_err_at(ps, t, "expected a rate after 'throttle' (bytes per second: 500, 64k, 1M), found %s",
				     rules_show(t, show, sizeof(show)));
			return 0;
		}
		if (!rules_parse_scaled(t->p, t->len, true, &v) || v == 0 || v > 1024 * 1024 * 1024) {
			rules_err_at(ps, t, "bad rate %s (bytes per second from 1 to 1G: 500, 64k, 2kB/s, 1M)",
				     rules_show(t, show, sizeof(show)));
			if (rules_after_bad(t, i + 2) == 0)
				return 0;
		}
		ru->throttle_bps = v;
		ru->throttle_dir = RULES_DIR_BOTH;
		t = i + 2 < ps->ntok ? &ps->toks[i + 2] : NULL;
		if (rules_tok_is(t, "to-client")) {
			ru->throttle_dir = RULES_DIR_TO_CLIENT;
			return i + 3;
		}
		if (rules_tok_is(t, "to-upstream")) {
			ru->throttle_dir = RULES_DIR_TO_UPSTREAM;
			return i + 3;
		}
		if (rules_tok_is(t, "both"))
			return i + 3;
		return i + 2;
	case RULES_A_TRUNCATE:
		if (t != NULL && t->type == TOK_WORD && t->len > 0 && t->p[0] >= '0' && t->p[0] <= '9') {
			if (!rules_parse_u64(t->p, t->len, &v) || v > 262144)
				rules_err_at(ps, t, "bad byte count %s after 'truncate' (1 to 262144)",
					     rules_show(t, show, sizeof(show)));
			else if (v == 0)
				rules_err_at(ps, t, "truncate 0 sends nothing of the reply: use close");
			else
				ru->truncate_at = (size_t)v;
			return i + 2;
		}
		return i + 1;
	case RULES_A_STRIP:
		return rules_parse_strip(ps, ru, i + 1);
	default: /* stall, close, reset, fail-tls take nothing */
		return i + 1;
	}
}

/* ------------------------------------------------------------------------
 * A rule.
 */

static void
rules_read_rule(struct rules_parser *ps)
{
	static const char *const starts[] = { "on" };
	const char *words[KW_NCONDS + RULES_NACTIONS];
	const struct rules_tok *t;
	struct rule *ru;
	char show[64];
	const char *sug;
	size_t i, k, nwords = 0;
	int kw;

	ps->in_actions = false;
	ps->after_reply = false;
	ps->reply_word = 0;
	ps->seed_tok = NULL;
	t = &ps->toks[0];
	if (!rules_tok_is(t, "on")) {
		for (k = 0; k < RULES_NTRIGGER_WORDS; k++)
			if (rules_tok_is(t, rules_trigger_words[k]))
				break;
		sug = rules_suggest(t, starts, 1);
		if (k < RULES_NTRIGGER_WORDS)
			rules_err_at(ps, t, "a rule starts with 'on' (on %.*s ...)", (int)t->len, t->p);
		else
			rules_err_at(ps, t, "a rule starts with 'on', not %s%s", rules_show(t, show, sizeof(show)),
				     sug != NULL ? " (did you mean 'on'?)" : "");
		return;
	}
	if ((ru = calloc(1, sizeof(*ru))) == NULL) {
		rules_oom(ps);
		return;
	}
	ru->line = t->line;
	if ((i = rules_parse_trigger(ps, ru)) == 0)
		goto done;
	for (k = 0; k < KW_NCONDS; k++)
		words[nwords++] = rules_cond_words[k];
	for (k = 0; k < RULES_NACTIONS; k++)
		words[nwords++] = rules_action_words[k].word;
	while (i < ps->ntok) {
		t = &ps->toks[i];
		kw = -1;
		for (k = 0; k < KW_NCONDS && kw < 0; k++)
			if (rules_tok_is(t, rules_cond_words[k]))
				kw = (int)k;
		if (kw >= 0) {
			ps->after_reply = false;
			i = rules_parse_cond(ps, ru, (enum rules_kw)kw, i);
		} else {
			for (k = 0; k < RULES_NACTIONS && kw < 0; k++)
				if (rules_tok_is(t, rules_action_words[k].word))
					kw = (int)k;
			if (kw >= 0) {
				i = rules_parse_action(ps, ru, rules_action_words[kw].bit, i);
			} else if (t->type == TOK_WORD &&
				   (sug = ps->in_actions ? rules_suggest(t, words + KW_NCONDS, RULES_NACTIONS)
							 : rules_suggest(t, words, nwords)) != NULL) {
				rules_err_at(ps, t, "unknown %s %s (did you mean '%s'?)",
					     ps->in_actions ? "action" : "condition or action", rules_show(t, show, sizeof(show)),
					     sug);
				goto done;
			} else if (ps->after_reply && t->type == TOK_WORD) {
				rules_err_at(ps, t, "expected an action or the reply's text, found %s (the text goes in "
						    "double quotes: \"No such user\")",
					     rules_show(t, show, sizeof(show)));
				goto done;
			} else {
				rules_err_at(ps, t, "expected %s, found %s",
					     ps->in_actions ? "an action (reply, rewrite, delay, stall, close, reset, "
							      "throttle, truncate, strip, fail-tls)"
							    : "a condition (to, from, session, ...) or an action (reply, "
							      "delay, close, ...)",
					     rules_show(t, show, sizeof(show)));
				goto done;
			}
		}
		if (i == 0 || ps->oom)
			goto done;
	}
	if (ru->actions == 0) {
		rules_err_at(ps, NULL, "the rule has no action (reply, rewrite, delay, stall, close, reset, throttle, "
				       "truncate, strip or fail-tls)");
		goto done;
	}
	if ((ru->conds & RULES_C_SEED) && !(ru->conds & RULES_C_PROB))
		rules_err_at(ps, ps->seed_tok, "seed without probability: seed is the seed of a probability's draw");
	if (!(ru->conds & RULES_C_SEED))
		ru->seed = ps->set->seed;
	if (ps->bad)
		goto done;
	if ((ru->text = strndup(ps->text, ps->textlen)) == NULL) {
		rules_oom(ps);
		goto done;
	}
	if (ps->set->n == RULES_MAX) {
		rules_error(ps, ru->line, 1, "more than %d rules in one file", RULES_MAX);
		ps->full = true;
		goto done;
	}
	if (ps->set->n == ps->set->cap) {
		size_t ncap = ps->set->cap == 0 ? 16 : ps->set->cap * 2;
		struct rule **nv = realloc(ps->set->v, ncap * sizeof(*nv));

		if (nv == NULL) {
			rules_oom(ps);
			goto done;
		}
		ps->set->v = nv;
		ps->set->cap = ncap;
	}
	ps->set->v[ps->set->n++] = ru;
	return;
done:
	rules_rule_free(ru);
}

struct rules *
rules_parse_cb(const char *text, size_t len, uint64_t seed, rules_error_fn fn, void *arg)
{
	struct rules_parser ps;
	const char *p = text, *end = text + len, *nl;
	unsigned lineno = 0;
	size_t ll;
	int cont;

	memset(&ps, 0, sizeof(ps));
	ps.fn = fn;
	ps.arg = arg;
	/* the set holds its reference from the start: every way out below
	 * drops it with rules_unref */
	if ((ps.set = calloc(1, sizeof(*ps.set))) != NULL) {
		ps.set->refs = 1;
		ps.set->seed = seed;
	}
	ps.toks = malloc(RULES_TOKENS_MAX * sizeof(*ps.toks));
	ps.scratch = malloc(RULES_RULE_MAX + RULES_TOKENS_MAX + 1);
	ps.text = malloc(RULES_RULE_MAX + 2);
	if (ps.set == NULL || ps.toks == NULL || ps.scratch == NULL || ps.text == NULL) {
		rules_oom(&ps);
		goto out;
	}
	/* a UTF-8 byte order mark, as some editors write */
	if (len >= 3 && memcmp(p, "\xef\xbb\xbf", 3) == 0)
		p += 3;
	while (p < end && !ps.oom) {
		ps.ntok = 0;
		ps.toks_full = false;
		ps.used = 0;
		ps.textlen = 0;
		ps.text[0] = '\0';
		ps.rawlen = 0;
		ps.bad = false;
		ps.end_line = lineno + 1;
		ps.end_col = 1;
		do {
			lineno++;
			nl = memchr(p, '\n', (size_t)(end - p));
			ll = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
			if (ll > 0 && p[ll - 1] == '\r')
				ll--;
			cont = rules_tokenize_line(&ps, p, ll, lineno);
			p = nl != NULL ? nl + 1 : end;
		} while (cont && p < end);
		if (ps.ntok > 0 && !ps.bad)
			rules_read_rule(&ps);
		/* a rule-count error ends the file: everything after is moot */
		if (ps.full)
			break;
	}
	if (ps.nerrors == 0 && rules_index(ps.set) < 0)
		rules_oom(&ps);
out:
	free(ps.toks);
	free(ps.scratch);
	free(ps.text);
	if (ps.nerrors > 0 || ps.oom) {
		rules_unref(ps.set);
		return NULL;
	}
	return ps.set;
}

/* rules_parse's error sink: "NAME:LINE:COL: message" lines into err. */
struct rules_errbuf {
	const char *name;
	char *err;
	size_t errsz, len, n;
};

static void
rules_errbuf_add(void *arg, unsigned line, unsigned col, const char *msg)
{
	struct rules_errbuf *eb = arg;
	int w;

	if (eb->n++ >= RULES_ERRORS_MAX || eb->errsz == 0 || eb->len + 1 >= eb->errsz)
		return;
	w = snprintf(eb->err + eb->len, eb->errsz - eb->len, "%s%s:%u:%u: %s", eb->len > 0 ? "\n" : "", eb->name,
		     line, col, msg);
	if (w > 0)
		eb->len += (size_t)w < eb->errsz - eb->len ? (size_t)w : eb->errsz - eb->len - 1;
}

struct rules *
rules_parse(const char *name, const char *text, size_t len, uint64_t seed, char *err, size_t errsz)
{
	struct rules_errbuf eb = { name != NULL ? name : "rules", err, errsz, 0, 0 };
	struct rules *r;
	int w;

	if (errsz > 0)
		err[0] = '\0';
	r = rules_parse_cb(text, len, seed, rules_errbuf_add, &eb);
	if (r == NULL && eb.n > RULES_ERRORS_MAX && errsz > eb.len + 1) {
		w = snprintf(err + eb.len, errsz - eb.len, "\n... and %zu more error%s", eb.n - RULES_ERRORS_MAX,
			     eb.n - RULES_ERRORS_MAX == 1 ? "" : "s");
		(void)w;
	}
	if (r == NULL && eb.n == 0 && errsz > 0)
		snprintf(err, errsz, "%s: out of memory", eb.name);
	return r;
}

/* ------------------------------------------------------------------------
 * Writing a rule back, normalised.
 */

struct rules_out {
	char *buf;
	size_t sz, len;
};

static void rules_outf(struct rules_out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
rules_outf(struct rules_out *o, const char *fmt, ...)
{
	va_list ap;
	int w;

	va_start(ap, fmt);
	w = vsnprintf(o->len < o->sz ? o->buf + o->len : NULL, o->len < o->sz ? o->sz - o->len : 0, fmt, ap);
	va_end(ap);
	if (w > 0)
		o->len += (size_t)w;
}

static void
rules_out_quoted(struct rules_out *o, const char *s, size_t n)
{
	size_t k;

	/* A backslash is doubled only where the reader would take it for an
	 * escape (before a quote or a backslash, or last), so a regular
	 * expression such as "@example\.com$" reads back as it was written. */
	rules_outf(o, "\"");
	for (k = 0; k < n; k++) {
		if (s[k] == '"' || (s[k] == '\\' && (k + 1 == n || s[k + 1] == '"' || s[k + 1] == '\\')))
			rules_outf(o, "\\%c", s[k]);
		else
			rules_outf(o, "%c", s[k]);
	}
	rules_outf(o, "\"");
}

static void
rules_out_re(struct rules_out *o, const struct rules_re *re)
{
	rules_outf(o, " %s%s ", re->neg ? "!~" : "~", re->icase ? "*" : "");
	rules_out_quoted(o, re->src, strlen(re->src));
}

static void
rules_out_range(struct rules_out *o, const char *kw, uint64_t lo, uint64_t hi)
{
	if (lo == hi)
		rules_outf(o, " %s %llu", kw, (unsigned long long)lo);
	else if (hi == UINT64_MAX)
		rules_outf(o, " %s %llu-", kw, (unsigned long long)lo);
	else
		rules_outf(o, " %s %llu-%llu", kw, (unsigned long long)lo, (unsigned long long)hi);
}

static void
rules_out_scaled(struct rules_out *o, uint64_t v)
{
	if (v > 0 && v % (1024 * 1024 * 1024) == 0)
		rules_outf(o, "%lluG", (unsigned long long)(v >> 30));
	else if (v > 0 && v % (1024 * 1024) == 0)
		rules_outf(o, "%lluM", (unsigned long long)(v >> 20));
	else if (v > 0 && v % 1024 == 0)
		rules_outf(o, "%lluk", (unsigned long long)(v >> 10));
	else
		rules_outf(o, "%llu", (unsigned long long)v);
}

static void
rules_out_addr(struct rules_out *o, int family, const uint8_t *addr)
{
	char host[INET6_ADDRSTRLEN];

	if (inet_ntop(family, addr, host, sizeof(host)) == NULL)
		snprintf(host, sizeof(host), "?");
	rules_outf(o, family == AF_INET6 ? "[%s]" : "%s", host);
}

size_t
rule_format(const struct rule *ru, char *buf, size_t bufsz)
{
	static const char *const cmps[] = { ">", ">=", "<", "<=", "=" };
	struct rules_out o = { buf, bufsz, 0 };
	char trig[32];
	size_t k;

	if (bufsz > 0)
		buf[0] = '\0';
	rules_describe_trigger(ru, trig, sizeof(trig));
	rules_outf(&o, "on %s", trig);
	if (ru->has_codes)
		rules_outf(&o, " code %s", ru->codes_src);
	for (k = 0; k < RULES_NFIELDS; k++) {
		if (!(ru->conds & (1u << k)) || ru->field[k].src == NULL)
			continue;
		rules_outf(&o, " %s", rules_cond_words[k]);
		rules_out_re(&o, &ru->field[k]);
	}
	for (k = 0; k < ru->nhdrs; k++) {
		rules_outf(&o, " header %s", ru->hdrs[k].name);
		rules_out_re(&o, &ru->hdrs[k].re);
	}
	if (ru->conds & RULES_C_SIZE) {
		rules_outf(&o, " size %s ", cmps[ru->size_cmp]);
		rules_out_scaled(&o, ru->size);
	}
	if (ru->conds & RULES_C_SESSION)
		rules_out_range(&o, "session", ru->sess_lo, ru->sess_hi);
	if (ru->conds & RULES_C_OCC)
		rules_out_range(&o, "occurrence", ru->occ_lo, ru->occ_hi);
	if (ru->conds & RULES_C_CLIENT) {
		rules_outf(&o, " client ");
		rules_out_addr(&o, ru->cl_family, ru->cl_addr);
		rules_outf(&o, "/%u", ru->cl_prefix);
	}
	if (ru->conds & RULES_C_LISTENER) {
		rules_outf(&o, " listener ");
		if (ru->lst_family != 0)
			rules_out_addr(&o, ru->lst_family, ru->lst_addr);
		rules_outf(&o, ":%u", ru->lst_port);
	}
	if (ru->conds & RULES_C_MODE)
		rules_outf(&o, " mode %s", ru->mode_sink ? "sink" : "relay");
	if (ru->conds & RULES_C_PROB) {
		rules_outf(&o, " probability %s", ru->prob_text);
		if (ru->conds & RULES_C_SEED)
			rules_outf(&o, " seed %llu", (unsigned long long)ru->seed);
	}
	if (ru->conds & RULES_C_LIMIT)
		rules_outf(&o, " limit %llu", (unsigned long long)ru->limit);
	if (ru->reply != NULL) {
		const char *l = ru->reply, *e;

		rules_outf(&o, " %s %03d", ru->wrote_rewrite ? "rewrite" : "reply", ru->code);
		if (ru->enh[0] != '\0')
			rules_outf(&o, " %s", ru->enh);
		/* each line's text: after "CODE", the separator and the
		 * enhanced code */
		while ((e = strstr(l, "\r\n")) != NULL) {
			const char *s = l + 3;

			if (s < e)
				s++;
			if (ru->enh[0] != '\0') {
				s += strlen(ru->enh);
				if (s < e)
					s++;
			}
			rules_outf(&o, " ");
			rules_out_quoted(&o, s, (size_t)(e - s));
			l = e + 2;
		}
	}
	if (ru->actions & RULES_A_DELAY) {
		uint32_t ms = ru->delay_ms;

		if (ms % 3600000 == 0)
			rules_outf(&o, " delay %uh", ms / 3600000);
		else if (ms % 60000 == 0)
			rules_outf(&o, " delay %um", ms / 60000);
		else if (ms % 1000 == 0)
			rules_outf(&o, " delay %us", ms / 1000);
		else
			rules_outf(&o, " delay %ums", ms);
	}
	if (ru->actions & RULES_A_STALL)
		rules_outf(&o, " stall");
	if (ru->actions & RULES_A_CLOSE)
		rules_outf(&o, " close");
	if (ru->actions & RULES_A_RESET)
		rules_outf(&o, " reset");
	if (ru->actions & RULES_A_THROTTLE) {
		rules_outf(&o, " throttle ");
		rules_out_scaled(&o, ru->throttle_bps);
		if (ru->throttle_dir == RULES_DIR_TO_CLIENT)
			rules_outf(&o, " to-client");
		else if (ru->throttle_dir == RULES_DIR_TO_UPSTREAM)
			rules_outf(&o, " to-upstream");
	}
	if (ru->actions & RULES_A_TRUNCATE) {
		rules_outf(&o, " truncate");
		if (ru->truncate_at > 0)
			rules_outf(&o, " %zu", ru->truncate_at);
	}
	if (ru->actions & RULES_A_STRIP) {
		rules_outf(&o, " strip ");
		for (k = 0; k < ru->nstrip; k++)
			rules_outf(&o, "%s%s", k > 0 ? "," : "", ru->strip[k]);
	}
	if (ru->actions & RULES_A_FAIL_TLS)
		rules_outf(&o, " fail-tls");
	return o.len;
}
