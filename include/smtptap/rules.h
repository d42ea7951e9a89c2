/*
 * rules.h - fault rules: parse a rules file, decide what a rule does to a
 * unit of the conversation.  Pure: no sockets, no store, no clock, no
 * global state; the session asks, this module answers, the session carries
 * the answer out (see docs/rules.md for the language and what each action
 * does on each trigger).
 *
 * One rule per line:
 *
 *     on TRIGGER [CONDITION ...] ACTION [ACTION ...]
 *
 *     on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"
 *     on mail session 1-2 reply 451 4.3.0 "Try again later"
 *     on data-end probability 0.25 seed 7 reply 452 4.3.1 "Insufficient storage"
 *     on ehlo strip STARTTLS,PIPELINING
 *     on connect delay 5s
 *
 * Rules are tried in file order; the first whose trigger and conditions all
 * match decides (firewall style), so a specific rule goes above a general
 * one.  A rule set is immutable once parsed except for its fire counters
 * (`limit`), which the single event-loop thread updates through
 * rules_decide().
 */
#ifndef SMTPTAP_RULES_H
#define SMTPTAP_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "smtptap/smtp.h"

/* Longest reply a rule can produce (all its lines, CRLFs included, plus
 * a NUL: reply_len < RULES_REPLY_MAX). */
#define RULES_REPLY_MAX 2048
/* Longest line of a rule's reply, code and CRLF included (RFC 5321 4.5.3.1.5). */
#define RULES_REPLY_LINE_MAX 512
/* Bounds of a rules file: rules, bytes per physical line, bytes per rule
 * (continuation lines joined), words per rule, errors reported in err. */
#define RULES_MAX 10000
#define RULES_LINE_MAX 8192
#define RULES_RULE_MAX 65536
#define RULES_TOKENS_MAX 512
#define RULES_ERRORS_MAX 20
/* rules_load refuses a larger file. */
#define RULES_FILE_MAX (16 * 1024 * 1024)
/* Capabilities one strip action may name. */
#define RULES_STRIP_MAX 16

/* What happened: the unit a rule is asked about. */
enum rules_trigger {
	RULES_ON_CONNECT = 0, /* a client connection was accepted */
	RULES_ON_GREETING,    /* the greeting (upstream's or sink's) is about to reach the client */
	RULES_ON_COMMAND,     /* a client command line; unit.verb says which */
	RULES_ON_DATA_END,    /* the end of message data (DATA's "." or the last BDAT chunk) */
	RULES_ON_TLS,	      /* a TLS handshake is about to start on a leg; unit.leg */
	RULES_ON_REPLY,	      /* a reply (upstream's, or the sink's) is about to reach the client */
};

enum rules_leg {
	RULES_LEG_CLIENT = 0,
	RULES_LEG_UPSTREAM,
};

/* Which of the replies RULES_ON_REPLY is about. */
enum rules_answer {
	RULES_ANSWERS_COMMAND = 0, /* unit.verb */
	RULES_ANSWERS_GREETING,
	RULES_ANSWERS_DATA_END,
};

/* Action bits of a decision. */
#define RULES_A_REPLY 0x001    /* answer with decision.reply instead of forwarding */
#define RULES_A_REWRITE 0x002  /* forward, then replace the reply with decision.reply */
#define RULES_A_DELAY 0x004    /* wait delay_ms first */
#define RULES_A_STALL 0x008    /* never answer, never forward */
#define RULES_A_CLOSE 0x010    /* close the client connection (after the reply, if any) */
#define RULES_A_RESET 0x020    /* reset (RST) the client connection */
#define RULES_A_THROTTLE 0x040 /* from now on: throttle_bps in throttle_dir */
#define RULES_A_TRUNCATE 0x080 /* send truncate_at bytes of the reply, then close */
#define RULES_A_STRIP 0x100    /* remove capabilities from the EHLO reply */
#define RULES_A_FAIL_TLS 0x200 /* fail the TLS handshake */

enum rules_dir {
	RULES_DIR_BOTH = 0,
	RULES_DIR_TO_CLIENT,
	RULES_DIR_TO_UPSTREAM,
};

/*
 * The unit: everything a condition may look at.  Strings are borrowed for
 * the call; NULL when not known or not relevant (a field that is not known
 * matches no condition, `!~` included).  A non-NULL string of length 0 is
 * known and empty: mail_from "" is the null sender <>.
 */
struct rules_unit {
	enum rules_trigger trigger;
	enum smtp_verb verb;	   /* COMMAND: the verb; REPLY: the command answered */
	const char *verb_text;	   /* COMMAND: the verb as sent (for unknown verbs) */
	size_t verb_text_len;
	enum rules_answer answers; /* REPLY */
	int code;		   /* REPLY: the reply code */
	enum rules_leg leg;	   /* TLS */
	const char *arg;	   /* COMMAND: everything after the verb */
	size_t arg_len;
	/* The transaction so far: the sender (MAIL, RCPT, DATA, BDAT, data-end),
	 * this recipient (RCPT) or all of them (DATA, BDAT, data-end). */
	const char *mail_from;
	size_t mail_from_len;
	const char *const *rcpts; /* NUL-terminated strings */
	size_t nrcpts;
	const char *helo;	 /* the EHLO/HELO name given (this command's, or the session's) */
	const char *auth_mech;	 /* AUTH: the mechanism */
	const char *auth_user;	 /* AUTH: the user name, when it could be decoded */
	uint64_t size;		 /* data-end: message bytes (unstuffed) */
	bool has_size;
	/* data-end: the message's header block (unstuffed, as received) */
	const char *headers;
	size_t headers_len;
};

/* The session around the unit. */
struct rules_facts {
	uint64_t session_no;	     /* 1, 2, ... since the proxy started */
	const struct sockaddr *client; /* the client's address */
	const char *listener;	     /* the local address it reached, "127.0.0.1:2525" */
	bool sink;		     /* sink mode */
};

/*
 * What to do.  A decision with rule == NULL means: nothing fired (then only
 * rule and actions are set).  On the reply trigger `reply` and `rewrite`
 * mean the same (replace the reply on its way to the client): such a
 * decision always carries RULES_A_REWRITE, never RULES_A_REPLY.
 */
struct rules_decision {
	const struct rule *rule;
	unsigned line;	  /* the rule's line in its file */
	const char *text; /* the rule as written (trimmed), for the transcript */
	unsigned actions; /* RULES_A_* */
	/* REPLY / REWRITE: the complete reply, CRLF-terminated (possibly
	 * multi-line, the enhanced code on every line), NUL-terminated, and
	 * its code. */
	char reply[RULES_REPLY_MAX];
	size_t reply_len;
	int code;
	uint32_t delay_ms;
	uint64_t throttle_bps;
	enum rules_dir throttle_dir;
	size_t truncate_at; /* 0: the session's default (half the first line) */
	const char *strip[RULES_STRIP_MAX]; /* upper-case keywords, valid while the set lives */
	size_t nstrip;
	/* For reproduction: the seed a probability rule drew with (its own
	 * `seed`, or the one the set was given), 0 when the rule has none. */
	uint64_t seed;
};

struct rules;	      /* a parsed rule set */
struct rules_session; /* per-session counters (occurrence, unit index) */
struct rule;	      /* one rule of a set */

/*
 * Parse a rules file's text.  `name` is used in messages ("rules.conf").
 * `seed` is the seed of probability rules that give none (the caller picks
 * one at random and logs it, so a run can be reproduced).  On error returns
 * NULL and writes "NAME:LINE:COL: what is wrong (what would be right)" into
 * err; every error in the file is reported, one per line, at most 20.
 * The caller owns the result: rules_unref() frees it.
 */
struct rules *rules_parse(const char *name, const char *text, size_t len, uint64_t seed, char *err, size_t errsz);
/* Read and parse a file (the same errors, plus a file that cannot be read). */
struct rules *rules_load(const char *path, uint64_t seed, char *err, size_t errsz);

/*
 * rules_parse for callers that want the errors one by one (`rules check
 * --json`): fn is called for every error, in file order, with no cap, and
 * with a message that has no "NAME:LINE:COL: " prefix.  NULL on any error.
 */
typedef void (*rules_error_fn)(void *arg, unsigned line, unsigned col, const char *msg);
struct rules *rules_parse_cb(const char *text, size_t len, uint64_t seed, rules_error_fn fn, void *arg);
/* Read a whole rules file (at most RULES_FILE_MAX bytes) into a malloc'd,
 * NUL-terminated *text; 0, or -1 with "PATH: reason" in err. */
int rules_read_file(const char *path, char **text, size_t *len, char *err, size_t errsz);

/* Sessions keep the set they started with; a reload affects new sessions. */
struct rules *rules_ref(struct rules *r);
void rules_unref(struct rules *r);
size_t rules_count(const struct rules *r);
/* The seed probability rules without their own `seed` draw with. */
uint64_t rules_seed(const struct rules *r);
/* Rule i (0-based, file order), NULL past the end. */
const struct rule *rules_at(const struct rules *r, size_t i);
unsigned rule_line(const struct rule *ru);
const char *rule_text(const struct rule *ru); /* as written, trimmed */
/* The rule as the engine understood it, normalised (lower-case keywords,
 * conditions then actions in a fixed order, units spelled out, the reply's
 * default text written out), one line that parses back to the same rule.
 * Returns the length it needed (snprintf-style; buf NUL-terminated when
 * bufsz > 0). */
size_t rule_format(const struct rule *ru, char *buf, size_t bufsz);

/* Per-session state; NULL on allocation failure (rules then never fire
 * for that session, which rules_decide accepts).  It holds a reference
 * to r, dropped by rules_session_free. */
struct rules_session *rules_session_new(struct rules *r);
void rules_session_free(struct rules_session *rs);

/*
 * Decide what happens to a unit.  Fills *out and returns true when a rule
 * fired; false (out->rule NULL) when none did.  Updates the session's
 * counters and the fired rule's `limit` count; nothing else.  Call it
 * exactly once per unit: the probability draw counts the calls per kind of
 * unit, and `occurrence` the matches.  rs must come from
 * rules_session_new(r) (anything else, or NULL, and no rule fires).  Does
 * not allocate.
 */
bool rules_decide(struct rules *r, struct rules_session *rs, const struct rules_unit *unit,
		  const struct rules_facts *facts, struct rules_decision *out);

/* "connect", "rcpt", "data-end", "reply", ... */
const char *rules_trigger_name(enum rules_trigger t, enum smtp_verb verb);

#endif
