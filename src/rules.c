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

/* The hot helpers are forced inline: rules_match runs once per candidate
 * rule per unit, and a call's register saving costs as much as the checks
 * themselves. */
#define RULES_HOT static inline __attribute__((always_inline))

static uint64_t rules_splitmix64(uint64_t x);
static unsigned rules_draw_unit(const struct rule *ru);
static int rules_unit_list(const struct rules_unit *u, unsigned *list, unsigned *unit, unsigned *any);
static bool rules_sockaddr_bytes(const struct sockaddr *sa, int *family, uint8_t out[16]);
static bool rules_prefix_equal(const uint8_t *a, const uint8_t *b, unsigned bits);
static void rules_fill(const struct rule *ru, struct rules_decision *out);
static bool rules_contains(const char *s, size_t len, const char *lit, size_t litlen, size_t anchor, bool icase);

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
rules_index_one(struct rule *ru, uint32_t *count, struct rule **fill, uint32_t *pos)
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
			fill[pos[lists[k]]++] = ru;
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
		/* the part of the draw that is the rule's own: rules_draw's
		 * first two rounds */
		ru->draw_base = rules_splitmix64(rules_splitmix64(ru->seed) ^ ru->line);
		if (ru->conds & RULES_C_OCC)
			ru->occ_idx = nocc++;
		rules_index_one(ru, count, NULL, NULL);
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
		rules_index_one(r->v[i], count, r->list, pos);
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






RULES_HOT bool
rules_bytes_equal(const char *a, const char *b, size_t n, bool icase)
{
	size_t i;

	/* the same case is the usual one ("Subject" for "Subject") */
	if (memcmp(a, b, n) == 0)
		return true;
	if (!icase)
		return false;
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

/*
 * Does s hold lit (ASCII case-folded for icase)?  memchr finds the
 * candidates by lit[anchor], a byte that is not a letter when lit has one,
 * so case does not matter to it; memmem would do for the case-sensitive
 * search but is a GNU extension.
 */
static bool
rules_contains(const char *s, size_t len, const char *lit, size_t litlen, size_t anchor, bool icase)
{
	size_t i;
	unsigned char lo, up;
	const char *p, *q, *last;
	char a;

	if (litlen == 0)
		return true;
	if (litlen > len)
		return false;
	a = lit[anchor];
	if (!icase || !((a >= 'a' && a <= 'z') || (a >= 'A' && a <= 'Z'))) {
		/* candidates for the anchor byte: s[anchor .. len - litlen + anchor] */
		q = s + anchor;
		last = s + len - litlen + anchor;
		while (q <= last && (p = memchr(q, a, (size_t)(last - q) + 1)) != NULL) {
			if (rules_bytes_equal(p - anchor, lit, litlen, icase))
				return true;
			q = p + 1;
		}
		return false;
	}
	/* only letters, case-folded: both cases of the first */
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
RULES_HOT bool
rules_match_re_pos(const struct rules_re *re, const char *s, size_t len)
{
	/* the same cut as rules_regexec's, so a literal never sees more
	 * than the expression would */
	if (len > SMTP_LINE_MAX)
		len = SMTP_LINE_MAX;
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
		return rules_contains(s, len, re->lit, re->litlen, re->anchor, re->icase);
	}
	if (len < re->minlen)
		return false;
	if (re->has_first && (len == 0 || !(re->first[(uint8_t)s[0] >> 3] & (1u << ((uint8_t)s[0] & 7)))))
		return false;
	if (re->lit != NULL && !rules_contains(s, len, re->lit, re->litlen, re->anchor, re->icase))
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
 * The unit as the rules see it.  rules_decide works out what several rules
 * may ask (a field's length, where the headers are, the client's address)
 * once per call, lazily, in a struct rules_ctx on its stack, instead of once
 * per rule: with a hundred rules on a unit, that is most of the cost.
 */

#define RULES_CTX_RCPTS 16  /* recipients whose length is kept */
#define RULES_HDR_INDEX 64  /* header fields indexed; a longer block is searched */
#define RULES_CTX_SUBJ 4    /* Subject fields remembered */
#define RULES_FIELD_MASK ((1u << RULES_NFIELDS) - 1)
#define RULES_BLOOM_MAX 4096 /* a longer field gets no bigram filter */

/* One header field: its name, and its value as it stands in the block
 * (from after the colon to the end of its last continuation line). */
struct rules_hdr {
	const char *name;
	size_t namelen;
	const char *val;
	size_t vallen;
	bool folded;
};

struct rules_ctx {
	const struct rules_unit *u;
	const struct rules_facts *f;
	bool slow; /* rules_rule_matches(..., true): no shortcuts */
	unsigned bloom_have, bloom_ok; /* (1u << field) */
	uint64_t bloom[RULES_NFIELDS][16];
	unsigned have; /* (1u << field): fp/fl/known worked out */
	const char *fp[RULES_NFIELDS];
	size_t fl[RULES_NFIELDS];
	bool known[RULES_NFIELDS];
	bool rcpts_measured;
	size_t rcpt_len[RULES_CTX_RCPTS];
	int hdr_state; /* 0: not looked at; 1: indexed; 2: too many, search */
	size_t nhdr;
	struct rules_hdr hdr[RULES_HDR_INDEX];
	size_t nsubj; /* the Subject fields among hdr (RULES_CTX_SUBJ + 1: more) */
	uint8_t subj[RULES_CTX_SUBJ];
	int client_state; /* 0: not looked at; 1: known; -1: not known */
	int cl_family;
	uint8_t cl_addr[16];
	int lst_state; /* 0: not looked at; 1: parsed; -1: not usable */
	unsigned lst_port;
	int lst_family; /* 0: the host is not an address */
	uint8_t lst_addr[16];
};

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

RULES_HOT bool
rules_ctx_field(struct rules_ctx *c, enum rules_field f, const char **p, size_t *len)
{
	if (!(c->have & (1u << f))) {
		c->have |= 1u << f;
		c->known[f] = rules_field_value(c->u, f, &c->fp[f], &c->fl[f]);
	}
	*p = c->fp[f];
	*len = c->fl[f];
	return c->known[f];
}

/* re against s, before negation: with the prefilter, or (slow) without. */
RULES_HOT bool
rules_ctx_re(const struct rules_ctx *c, const struct rules_re *re, const char *s, size_t len)
{
	if (c->slow)
		return re->compiled && rules_regexec(&re->re, s != NULL ? s : "", len);
	return rules_match_re_pos(re, s, len);
}

/* Add s's case-folded bigrams to bloom. */
static void
rules_bloom_add(uint64_t *bloom, const char *s, size_t len)
{
	size_t k;
	char a, b;
	uint16_t h;

	for (k = 0; k + 1 < len; k++) {
		a = s[k] >= 'A' && s[k] <= 'Z' ? (char)(s[k] + 'a' - 'A') : s[k];
		b = s[k + 1] >= 'A' && s[k + 1] <= 'Z' ? (char)(s[k + 1] + 'a' - 'A') : s[k + 1];
		h = RULES_BIGRAM(a, b);
		bloom[h >> 6] |= 1ull << (h & 63);
	}
}

/* Build field i's bigram filter (every recipient's, for `to`); a field
 * that is not known, or long, gets none. */
static void __attribute__((noinline))
rules_ctx_bloom(struct rules_ctx *c, unsigned i)
{
	const char *p;
	size_t len, k, total = 0;

	c->bloom_have |= 1u << i;
	memset(c->bloom[i], 0, sizeof(c->bloom[i]));
	if (i == RULES_F_TO) {
		if (c->u->rcpts == NULL)
			return;
		for (k = 0; k < c->u->nrcpts; k++) {
			if (c->u->rcpts[k] == NULL)
				continue;
			len = strlen(c->u->rcpts[k]);
			if ((total += len) > RULES_BLOOM_MAX)
				return;
			rules_bloom_add(c->bloom[i], c->u->rcpts[k], len);
		}
	} else {
		if (!rules_ctx_field(c, (enum rules_field)i, &p, &len) || len > RULES_BLOOM_MAX)
			return;
		rules_bloom_add(c->bloom[i], p, len);
	}
	c->bloom_ok |= 1u << i;
}

/*
 * false when field i (every recipient, for `to`) cannot hold re's literal:
 * one of its bigrams is absent from the field's filter, built once per call
 * when a rule first asks.  true when there is no filter to ask.
 */
RULES_HOT bool
rules_ctx_may_match(struct rules_ctx *c, unsigned i, const struct rules_re *re)
{
	const uint64_t *b = c->bloom[i];
	unsigned k;

	if (re->nbigrams == 0 || c->slow)
		return true;
	if (!(c->bloom_have & (1u << i)))
		rules_ctx_bloom(c, i);
	if (!(c->bloom_ok & (1u << i)))
		return true;
	for (k = 0; k < re->nbigrams; k++)
		if (!(b[re->bigrams[k] >> 6] & (1ull << (re->bigrams[k] & 63))))
			return false;
	return true;
}

/* `to`: any recipient matches; negated, there is one and none matches. */
RULES_HOT bool
rules_ctx_to(struct rules_ctx *c, const struct rules_re *re)
{
	const struct rules_unit *u = c->u;
	size_t i, len;

	if (u->rcpts == NULL || u->nrcpts == 0)
		return false;
	if (!c->rcpts_measured) {
		for (i = 0; i < u->nrcpts && i < RULES_CTX_RCPTS; i++)
			c->rcpt_len[i] = u->rcpts[i] != NULL ? strlen(u->rcpts[i]) : 0;
		c->rcpts_measured = true;
	}
	for (i = 0; i < u->nrcpts; i++) {
		if (u->rcpts[i] == NULL)
			continue;
		len = i < RULES_CTX_RCPTS ? c->rcpt_len[i] : strlen(u->rcpts[i]);
		if (rules_ctx_re(c, re, u->rcpts[i], len))
			return !re->neg;
	}
	return re->neg;
}

/*
 * The next header field of h from *pos; false at the end of the block (the
 * first empty line, or hlen).  Garbage is tolerated: lines without a colon,
 * and continuation lines with no field before them, are skipped.
 */
static bool
rules_hdr_next(const char *h, size_t hlen, size_t *pos, struct rules_hdr *out)
{
	const char *line, *eol, *colon;
	size_t i = *pos, ll, nl;

	while (i < hlen) {
		line = h + i;
		eol = memchr(line, '\n', hlen - i);
		ll = eol != NULL ? (size_t)(eol - line) : hlen - i;
		i += ll + (eol != NULL);
		if (ll > 0 && line[ll - 1] == '\r')
			ll--;
		if (ll == 0)
			break;
		if (line[0] == ' ' || line[0] == '\t' || (colon = memchr(line, ':', ll)) == NULL)
			continue;
		for (nl = (size_t)(colon - line); nl > 0 && (line[nl - 1] == ' ' || line[nl - 1] == '\t'); nl--)
			;
		out->name = line;
		out->namelen = nl;
		out->val = colon + 1;
		out->vallen = (size_t)(line + ll - out->val);
		out->folded = false;
		/* the continuation lines are the same field's (RFC 5322 2.2.3) */
		while (i < hlen && (h[i] == ' ' || h[i] == '\t')) {
			line = h + i;
			eol = memchr(line, '\n', hlen - i);
			ll = eol != NULL ? (size_t)(eol - line) : hlen - i;
			i += ll + (eol != NULL);
			if (ll > 0 && line[ll - 1] == '\r')
				ll--;
			out->vallen = (size_t)(line + ll - out->val);
			out->folded = true;
		}
		*pos = i;
		return true;
	}
	*pos = hlen;
	return false;
}

/* A field's value, unfolded (line breaks removed, the blanks after them
 * kept) and trimmed of blanks at both ends, against re (before negation). */
static bool
rules_hdr_match(const struct rules_ctx *c, const struct rules_hdr *hd, const struct rules_re *re)
{
	char buf[RULES_UNFOLD_MAX];
	const char *v = hd->val;
	size_t n = hd->vallen, m = 0, k, s = 0;

	if (hd->folded) {
		for (k = 0; k < n && m < sizeof(buf); k++) {
			if (v[k] == '\r' && k + 1 < n && v[k + 1] == '\n')
				k++;
			else if (v[k] != '\n')
				buf[m++] = v[k];
		}
		v = buf;
		n = m;
	}
	while (s < n && (v[s] == ' ' || v[s] == '\t'))
		s++;
	while (n > s && (v[n - 1] == ' ' || v[n - 1] == '\t'))
		n--;
	return rules_ctx_re(c, re, v + s, n - s);
}

/* Fields called name (NULL: Subject): -1 when there is none, 1 when one
 * matches re (before negation), else 0. */
static int
rules_ctx_header(struct rules_ctx *c, const char *name, size_t namelen, const struct rules_re *re)
{
	const struct rules_unit *u = c->u;
	struct rules_hdr hd;
	size_t pos = 0, k;
	int found = -1;

	if (u->headers == NULL)
		return -1;
	if (c->hdr_state == 0) {
		c->hdr_state = c->slow ? 2 : 1;
		c->nsubj = 0;
		while (c->hdr_state == 1 && rules_hdr_next(u->headers, u->headers_len, &pos, &hd)) {
			if (c->nhdr == RULES_HDR_INDEX) {
				c->hdr_state = 2;
				break;
			}
			if (hd.namelen == 7 && rules_bytes_equal(hd.name, "Subject", 7, true) && c->nsubj <= RULES_CTX_SUBJ) {
				if (c->nsubj < RULES_CTX_SUBJ)
					c->subj[c->nsubj] = (uint8_t)c->nhdr;
				c->nsubj++;
			}
			c->hdr[c->nhdr++] = hd;
		}
	}
	/* the subject, which every subject condition asks about */
	if (c->hdr_state == 1 && name == NULL && c->nsubj <= RULES_CTX_SUBJ) {
		for (k = 0; k < c->nsubj; k++) {
			if (rules_hdr_match(c, &c->hdr[c->subj[k]], re))
				return 1;
			found = 0;
		}
		return found;
	}
	if (name == NULL) {
		name = "Subject";
		namelen = 7;
	}
	if (c->hdr_state == 1) {
		for (k = 0; k < c->nhdr; k++) {
			if (c->hdr[k].namelen != namelen || !rules_bytes_equal(c->hdr[k].name, name, namelen, true))
				continue;
			if (rules_hdr_match(c, &c->hdr[k], re))
				return 1;
			found = 0;
		}
		return found;
	}
	for (pos = 0; rules_hdr_next(u->headers, u->headers_len, &pos, &hd);) {
		if (hd.namelen != namelen || !rules_bytes_equal(hd.name, name, namelen, true))
			continue;
		if (rules_hdr_match(c, &hd, re))
			return 1;
		found = 0;
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

/* facts.listener, "ADDR:PORT" or "[V6]:PORT" (util_format_addr), into
 * the ctx: its port, and its address when the host is one. */
static void
rules_ctx_listener(struct rules_ctx *c)
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	const char *l = c->f->listener, *colon, *p;
	unsigned long port = 0;
	char host[64];
	size_t hl;

	c->lst_state = -1;
	if (l == NULL || (colon = strrchr(l, ':')) == NULL || colon[1] == '\0')
		return;
	for (p = colon + 1; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || port > 65535)
			return;
		port = port * 10 + (unsigned long)(*p - '0');
	}
	c->lst_state = 1;
	c->lst_port = (unsigned)port;
	c->lst_family = 0;
	hl = (size_t)(colon - l);
	if (hl >= 2 && l[0] == '[' && l[hl - 1] == ']') {
		l++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return;
	memcpy(host, l, hl);
	host[hl] = '\0';
	if (inet_pton(AF_INET, host, c->lst_addr) == 1) {
		c->lst_family = AF_INET;
	} else if (inet_pton(AF_INET6, host, c->lst_addr) == 1) {
		c->lst_family = AF_INET6;
		if (memcmp(c->lst_addr, mapped, 12) == 0) {
			memmove(c->lst_addr, c->lst_addr + 12, 4);
			c->lst_family = AF_INET;
		}
	}
}

/* ------------------------------------------------------------------------
 * The decision.
 */

/* The trigger's details and every condition but occurrence, probability
 * and limit, cheapest first. */
RULES_HOT bool
rules_match(const struct rule *ru, struct rules_ctx *x)
{
	const struct rules_unit *u = x->u;
	const struct rules_facts *f = x->f;
	unsigned c = ru->conds, bits, i;
	const char *p;
	size_t len;
	int r;

	if (ru->has_codes) {
		if (u->code < 200 || u->code > 599)
			return false;
		if (!(ru->codes[(u->code - 200) / 8] & (1u << ((u->code - 200) % 8))))
			return false;
	}
	if (c == 0)
		return true;
	if (!(c & (RULES_C_MODE | RULES_C_SESSION | RULES_C_SIZE | RULES_C_CLIENT | RULES_C_LISTENER)))
		goto fields;
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
		if (x->client_state == 0)
			x->client_state = rules_sockaddr_bytes(f->client, &x->cl_family, x->cl_addr) ? 1 : -1;
		if (x->client_state < 0 || x->cl_family != ru->cl_family ||
		    !rules_prefix_equal(x->cl_addr, ru->cl_addr, ru->cl_prefix))
			return false;
	}
	if (c & RULES_C_LISTENER) {
		if (x->lst_state == 0)
			rules_ctx_listener(x);
		if (x->lst_state < 0 || x->lst_port != ru->lst_port)
			return false;
		if (ru->lst_family != 0 &&
		    (x->lst_family != ru->lst_family ||
		     memcmp(x->lst_addr, ru->lst_addr, ru->lst_family == AF_INET ? 4 : 16) != 0))
			return false;
	}
fields:
	for (bits = c & RULES_FIELD_MASK; bits != 0; bits &= bits - 1) {
		const struct rules_re *re;

		i = (unsigned)__builtin_ctz(bits);
		re = &ru->field[i];
		if (i == RULES_F_TO) {
			/* the bigram filter says no recipient holds it: a match
			 * for !~ when there are recipients */
			if (!rules_ctx_may_match(x, i, re)) {
				if (!re->neg || u->rcpts == NULL || u->nrcpts == 0)
					return false;
			} else if (!rules_ctx_to(x, re)) {
				return false;
			}
		} else if (i == RULES_F_SUBJECT) {
			r = rules_ctx_header(x, NULL, 0, re);
			if (r < 0 || (r == 1) == re->neg)
				return false;
		} else {
			if (!rules_ctx_field(x, (enum rules_field)i, &p, &len))
				return false;
			if (!rules_ctx_may_match(x, i, re)) {
				if (!re->neg)
					return false;
			} else if (rules_ctx_re(x, re, p, len) == re->neg) {
				return false;
			}
		}
	}
	for (i = 0; i < ru->nhdrs; i++) {
		const struct rules_hdr_cond *hc = &ru->hdrs[i];

		r = rules_ctx_header(x, hc->name, hc->namelen, &hc->re);
		if (r < 0 || (r == 1) == hc->re.neg)
			return false;
	}
	return true;
}

bool
rules_rule_matches(const struct rule *ru, const struct rules_unit *u, const struct rules_facts *f, bool slow)
{
	struct rules_ctx x;

	x.u = u;
	x.f = f;
	x.slow = slow;
	x.bloom_have = x.bloom_ok = 0;
	x.have = 0;
	x.rcpts_measured = false;
	x.hdr_state = 0;
	x.nhdr = 0;
	x.client_state = 0;
	x.lst_state = 0;
	return rules_match(ru, &x);
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
	struct rules_ctx x;

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
	/* only the few fields the ctx starts from: the rest stays
	 * untouched unless a rule asks */
	x.u = unit;
	x.f = facts;
	x.slow = false;
	x.bloom_have = x.bloom_ok = 0;
	x.have = 0;
	x.rcpts_measured = false;
	x.hdr_state = 0;
	x.nhdr = 0;
	x.client_state = 0;
	x.lst_state = 0;
	for (k = r->list_off[list]; k < end; k++) {
		struct rule *ru = r->list[k];

		/* After a rule fired, the rules below it are looked at only to
		 * count their occurrences: "occurrence 2" is the second such
		 * unit whatever the rules above it did. */
		if (fired != NULL && !(ru->conds & RULES_C_OCC))
			continue;
		if (!rules_match(ru, &x))
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
		    rules_splitmix64(rules_splitmix64(ru->draw_base ^ facts->session_no) ^ rs->units[ru->draw_unit]) >=
			    ru->prob_max)
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
