/*
 * rules_int.h - what rules.c (the set, matching, rules_decide) and
 * rules_parse.c (the language) share, and what the unit test and the
 * fuzzer look into.  Not for the session: rules.h is its interface.
 */
#ifndef SMTPTAP_RULES_INT_H
#define SMTPTAP_RULES_INT_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtptap/rules.h"
#include "smtptap/smtp.h"

/* Verbs smtp.h knows, SMTP_VERB_UNKNOWN (0) included. */
#define RULES_NVERBS (SMTP_VERB_AUTH + 1)

/* A regular expression longer than this is refused (a rules file is
 * written by hand; this bounds what regcomp is given). */
#define RULES_REGEX_MAX 1024
/* What rules_re_refuse allows (see there): positions a regex may expand
 * to once its repetitions are unrolled, in one expression and in a whole
 * file; repetition counts; group nesting.  glibc's regcomp time grows with
 * the first, often faster than linearly. */
#define RULES_REGEX_COST_MAX 2000
#define RULES_REGEX_TOTAL_MAX 50000
#define RULES_REGEX_DUP_MAX 255
#define RULES_REGEX_DEPTH_MAX 32
/* Header conditions per rule. */
#define RULES_HEADERS_MAX 16
/* A header value is unfolded into a stack buffer of this size; a longer
 * one is matched on its first RULES_UNFOLD_MAX bytes. */
#define RULES_UNFOLD_MAX 8192

/* The fields a FIELD OP "REGEX" condition can look at. */
enum rules_field {
	RULES_F_ARG = 0,
	RULES_F_VERB,
	RULES_F_FROM,
	RULES_F_TO,
	RULES_F_HELO,
	RULES_F_MECH,
	RULES_F_USER,
	RULES_F_SUBJECT,
	RULES_NFIELDS,
};

/* Condition bits (struct rule.conds); fields are bits 0..RULES_NFIELDS-1. */
#define RULES_C_HEADER (1u << 8)
#define RULES_C_SIZE (1u << 9)
#define RULES_C_SESSION (1u << 10)
#define RULES_C_OCC (1u << 11)
#define RULES_C_CLIENT (1u << 12)
#define RULES_C_LISTENER (1u << 13)
#define RULES_C_MODE (1u << 14)
#define RULES_C_PROB (1u << 15)
#define RULES_C_SEED (1u << 16)
#define RULES_C_LIMIT (1u << 17)

enum rules_cmp { RULES_CMP_GT = 0, RULES_CMP_GE, RULES_CMP_LT, RULES_CMP_LE, RULES_CMP_EQ };

/*
 * A compiled regular expression and what is known of it beforehand:
 * most rules never match most units, and a regexec per rule per unit is
 * what would make 100 rules expensive.  `lit` is a byte string every match
 * must contain (searched with memmem, ASCII case-folded for ~*); when the
 * whole expression is such a literal (with ^ and/or $), `pure` says the
 * search alone decides and regexec is never called.
 */
struct rules_re {
	regex_t re;
	bool compiled;
	bool neg;   /* !~ and !~* */
	bool icase; /* ~* and !~* */
	char *src;  /* as written (after unquoting), for rule_format */
	char *lit;  /* NULL: nothing known */
	size_t litlen;
	size_t anchor; /* lit[anchor]: the byte searched for with memchr */
	/* Hashes (RULES_BIGRAM) of up to four case-folded byte pairs of
	 * lit, when lit is searched for (not compared at one place): a field
	 * missing one of them cannot hold lit. */
	uint16_t bigrams[4];
	unsigned nbigrams;
	/* An expression that starts "^X" where X is one byte, or a bracket
	 * expression, that every match must begin with: the bytes it may be
	 * (case-folded for ~*); a value whose first byte is not among them
	 * cannot match. */
	bool has_first;
	uint8_t first[32];
	/* The fewest bytes a match spans: a shorter value cannot match. */
	size_t minlen;
	bool pure;     /* the expression is exactly lit (anchored by bol/eol) */
	bool bol, eol; /* pure only: ^ and $ */
};

struct rules_hdr_cond {
	char *name; /* as written */
	size_t namelen;
	struct rules_re re;
};

/* The candidate lists: every unit belongs to exactly one. */
enum {
	RULES_L_CONNECT = 0,
	RULES_L_GREETING,
	RULES_L_DATA_END,
	RULES_L_TLS_CLIENT,
	RULES_L_TLS_UPSTREAM,
	RULES_L_CMD,				   /* + verb */
	RULES_L_REPLY_CMD = RULES_L_CMD + RULES_NVERBS, /* + verb */
	RULES_L_REPLY_GREETING = RULES_L_REPLY_CMD + RULES_NVERBS,
	RULES_L_REPLY_DATA_END,
	RULES_NLISTS,
};

/* The per-session unit counters the probability draw uses: a unit bumps
 * its own and its kind's "any" counter. */
enum {
	RULES_U_CONNECT = 0,
	RULES_U_GREETING,
	RULES_U_DATA_END,
	RULES_U_TLS_ANY,
	RULES_U_TLS_CLIENT,
	RULES_U_TLS_UPSTREAM,
	RULES_U_CMD_ANY,
	RULES_U_CMD,					      /* + verb */
	RULES_U_REPLY_ANY = RULES_U_CMD + RULES_NVERBS,
	RULES_U_REPLY_CMD,				      /* + verb */
	RULES_U_REPLY_GREETING = RULES_U_REPLY_CMD + RULES_NVERBS,
	RULES_U_REPLY_DATA_END,
	RULES_NUNITS,
};

/* What `reply` on the reply trigger answers; -1 for "any". */
#define RULES_ANSWERS_ANY (-1)
/* tls with no leg word */
#define RULES_LEG_ANY (-1)

struct rule {
	unsigned line;
	char *text; /* trimmed, comment removed, continuations joined */

	/* trigger */
	enum rules_trigger trigger;
	bool any_verb;	    /* COMMAND: `command` / `any` */
	enum smtp_verb verb; /* COMMAND: the verb (any_verb false) */
	int leg;	    /* TLS: enum rules_leg or RULES_LEG_ANY */
	int answers;	    /* REPLY: enum rules_answer or RULES_ANSWERS_ANY */
	enum smtp_verb answers_verb;
	bool has_codes;
	uint8_t codes[50]; /* bit (code - 200) for 200..599 */
	char *codes_src;   /* as written, for rule_format */

	/* conditions */
	unsigned conds; /* RULES_C_* and (1u << field) */
	struct rules_re field[RULES_NFIELDS];
	struct rules_hdr_cond *hdrs;
	size_t nhdrs;
	enum rules_cmp size_cmp;
	uint64_t size;
	uint64_t sess_lo, sess_hi;
	uint64_t occ_lo, occ_hi;
	size_t occ_idx; /* this rule's occurrence counter in a session */
	int cl_family;	/* AF_INET or AF_INET6 */
	uint8_t cl_addr[16];
	unsigned cl_prefix;
	int lst_family; /* 0: any address */
	uint8_t lst_addr[16];
	unsigned lst_port;
	bool mode_sink;
	double prob;
	char prob_text[64]; /* canonical decimal, "0.25" */
	bool prob_always;   /* P = 1 */
	uint64_t prob_max;  /* fire when the draw is below this */
	uint64_t seed;	    /* own seed (RULES_C_SEED) or the set's */
	uint64_t limit;
	uint64_t fired; /* times fired, for limit (the one mutable field) */
	unsigned draw_unit; /* RULES_U_* the draw counts units with */
	uint64_t draw_base; /* the draw's rounds of seed and line, precomputed */

	/* actions */
	unsigned actions;     /* RULES_A_* as the session sees them */
	bool wrote_rewrite;   /* the reply action was written `rewrite` */
	char *reply;	      /* complete, CRLF-terminated, NUL-terminated */
	size_t reply_len;
	int code;
	char enh[16]; /* "5.1.1" or "" */
	uint32_t delay_ms;
	uint64_t throttle_bps;
	enum rules_dir throttle_dir;
	size_t truncate_at;
	char *strip[RULES_STRIP_MAX];
	size_t nstrip;
};

struct rules {
	unsigned refs;
	uint64_t seed;
	struct rule **v;
	size_t n, cap;
	size_t nocc; /* rules with an occurrence condition */
	/* Candidate lists (file order), CSR layout: list[list_off[L] ..
	 * list_off[L + 1]) are the rules a unit of list L looks at. */
	struct rule **list;
	uint32_t list_off[RULES_NLISTS + 1];
};

struct rules_session {
	struct rules *set; /* a reference */
	uint64_t units[RULES_NUNITS];
	uint32_t occ[];	   /* set->nocc counters */
};

/* rules.c: build the candidate lists once every rule is in v. */
int rules_index(struct rules *r);
/* rules.c: free one rule (NULL is fine). */
void rules_rule_free(struct rule *ru);

/*
 * rules_regex.c: analyse src for the prefilter (fills lit/litlen/pure/bol/eol;
 * -1 on allocation failure), and check that regcomp may safely be given it:
 * returns NULL and its unrolled size in *cost, or a reason it is refused
 * (back-references, two repetition operators in a row, a repetition of
 * something that can match the empty string, a count above
 * RULES_REGEX_DUP_MAX, more than RULES_REGEX_COST_MAX positions unrolled).
 */
int rules_re_analyse(struct rules_re *re);
const char *rules_re_refuse(const char *src, uint64_t *cost);
/* rules.c: does s[0..len) match (negation applied)?  s may hold NUL bytes. */
bool rules_re_match(const struct rules_re *re, const char *s, size_t len);
/* The same, always through regexec (no prefilter): for tests and the
 * fuzzer, which check that both agree. */
bool rules_re_match_slow(const struct rules_re *re, const char *s, size_t len);
void rules_re_free(struct rules_re *re);

/* The hash of a case-folded byte pair, 0..1023, for the bigram filter. */
#define RULES_BIGRAM(a, b) \
	((uint16_t)((((uint32_t)(uint8_t)(a) << 8 | (uint8_t)(b)) * 2654435761u) >> 22))

/* rules.c: does rule ru's trigger detail and every condition but
 * occurrence, probability and limit hold for the unit?  slow: without the
 * per-call caches, the prefilter and the bigram filter, regexec every
 * time (the reference the fuzzer holds the fast path to). */
bool rules_rule_matches(const struct rule *ru, const struct rules_unit *u, const struct rules_facts *f, bool slow);

/* rules.c: splitmix64 draw for (seed, line, session, unit number). */
uint64_t rules_draw(uint64_t seed, unsigned line, uint64_t session_no, uint64_t unit_no);

/* rules_parse.c: edit distance (optimal string alignment), capped. */
unsigned rules_edit_distance(const char *a, size_t alen, const char *b, size_t blen);

#endif
