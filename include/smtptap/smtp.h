/*
 * smtp.h - pure SMTP protocol parsers (RFC 5321 and extensions).
 *
 * Bytes in, structs out: nothing here touches a socket, allocates, or keeps
 * global state, so the session state machine, the unit tests and the fuzzers
 * all drive the same code.  Every function accepts arbitrary (hostile) input
 * and never reads past the length it is given.  Returned pointers point into
 * the caller's buffer and live as long as it does.
 */
#ifndef SMTPTAP_SMTP_H
#define SMTPTAP_SMTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest command or reply line we accept, terminator included.  RFC 5321
 * says 512 for commands and replies, but extensions (AUTH initial responses,
 * long XOAUTH2 tokens) routinely go beyond; be generous but bounded. */
#define SMTP_LINE_MAX (64 * 1024)
/* ESMTP parameters kept per MAIL/RCPT command; extra ones are counted only. */
#define SMTP_PARAMS_MAX 16

enum smtp_verb {
	SMTP_VERB_UNKNOWN = 0,
	SMTP_VERB_HELO,
	SMTP_VERB_EHLO,
	SMTP_VERB_LHLO,
	SMTP_VERB_MAIL,
	SMTP_VERB_RCPT,
	SMTP_VERB_DATA,
	SMTP_VERB_BDAT,
	SMTP_VERB_RSET,
	SMTP_VERB_NOOP,
	SMTP_VERB_VRFY,
	SMTP_VERB_EXPN,
	SMTP_VERB_HELP,
	SMTP_VERB_QUIT,
	SMTP_VERB_STARTTLS,
	SMTP_VERB_AUTH,
};

/* A borrowed slice of the caller's buffer. */
struct smtp_str {
	const char *p;
	size_t len;
};

struct smtp_param {
	struct smtp_str key;   /* e.g. "SIZE" (case as sent) */
	struct smtp_str value; /* empty (len 0, p may be NULL) when no '=' */
};

struct smtp_cmd {
	enum smtp_verb verb;
	struct smtp_str verb_text; /* the verb as sent, e.g. "ehlo" */
	struct smtp_str arg;	   /* everything after the verb and its spaces,
				      without the line terminator */
	/* MAIL FROM:<path> / RCPT TO:<path>: the path without the angle
	 * brackets ("" for the null sender <>); has_path false when the
	 * FROM:/TO: part is missing or malformed. */
	bool has_path;
	struct smtp_str path;
	struct smtp_param params[SMTP_PARAMS_MAX];
	size_t nparams;	      /* how many are stored in params[] */
	size_t nparams_total; /* how many were on the line */
	/* BDAT: chunk size and LAST; bdat_ok false when the size is missing,
	 * not a decimal number or does not fit in 64 bits. */
	bool bdat_ok;
	uint64_t bdat_size;
	bool bdat_last;
	/* AUTH mechanism [initial-response] */
	struct smtp_str auth_mech;
	struct smtp_str auth_initial; /* len 0 when absent */
};

/*
 * Parse one command line.  `line` is the line with or without its
 * terminator (CRLF or bare LF, both stripped here).  Verbs are matched
 * case-insensitively; anything unrecognised is SMTP_VERB_UNKNOWN with
 * verb_text set, so the caller can still pass it through.
 * Returns 0 on success, -1 when the line is empty (no verb at all).
 */
int smtp_parse_command(const char *line, size_t len, struct smtp_cmd *out);

/* Upper-case name of a verb ("EHLO"), "UNKNOWN" for SMTP_VERB_UNKNOWN. */
const char *smtp_verb_name(enum smtp_verb verb);

struct smtp_reply_line {
	int code;	      /* 200..599 (first digit 2-5), or 0 if malformed */
	bool last;	      /* "250 " (or bare "250") ends the reply; "250-" does not */
	struct smtp_str text; /* after the separator, terminator stripped */
	/* RFC 3463 enhanced status code at the start of text ("2.1.0"),
	 * with its class matching the reply code's first digit. */
	bool has_enhanced;
	int enh_class, enh_subject, enh_detail;
};

/*
 * Parse one reply line (with or without its terminator).  Returns 0 when
 * the line starts with three digits (first 2-5) followed by ' ', '-' or the
 * end of line; -1 otherwise (out->code is then 0 and last is true, so a
 * caller can treat a garbage line as a complete, malformed reply).
 */
int smtp_parse_reply_line(const char *line, size_t len, struct smtp_reply_line *out);

/* EHLO capability line text, e.g. "SIZE 10240000" or "AUTH PLAIN LOGIN". */
struct smtp_ehlo_kw {
	struct smtp_str keyword; /* "SIZE" */
	struct smtp_str params;	 /* "10240000" (rest of the line, may be empty) */
};

/* Split the text of an EHLO reply line (not the first one, which is the
 * greeting domain) into keyword and parameters.  Returns 0, or -1 when the
 * text holds no keyword. */
int smtp_parse_ehlo_keyword(const char *text, size_t len, struct smtp_ehlo_kw *out);

/*
 * Make capability `kw` (e.g. "STARTTLS") present (want) or absent in a
 * complete, possibly multi-line, EHLO reply in[0..len), each line ending
 * in LF (or CRLF, kept as sent).  An added capability becomes the line
 * after the first (the greeting line), with its line ending; every line
 * but the last gets '-' after the code and the last ' '.  Returns 1 with
 * the new reply in out (outsz >= len + strlen(kw) + 8 always suffices),
 * 0 when nothing needs to change, -1 when the reply holds more than 1024
 * lines or out is too small (the reply is then best passed on as is).
 * *had tells whether the reply offered kw.
 */
int smtp_ehlo_edit(const char *in, size_t len, const char *kw, bool want, char *out, size_t outsz,
		   size_t *outlen, bool *had);

/*
 * The name a client gave in HELO, EHLO or LHLO: the first word after the
 * verb ("client.example" or an address literal "[192.0.2.1]").  `line` as
 * for smtp_parse_command.  Returns 0 with the name in *out (a slice of
 * line, possibly empty), -1 when the line is not one of those commands.
 */
int smtp_helo_name(const char *line, size_t len, struct smtp_str *out);

/* Base64 characters of an AUTH response that smtp_auth_user decodes at
 * most: enough for any real user name (XOAUTH2 puts it first). */
#define SMTP_AUTH_B64_MAX 1024

/*
 * The user name an AUTH response carries (RFC 4954), so that it can be
 * recorded while the credentials themselves are redacted.  `mech` is the
 * mechanism as sent; `resp` the base64 text of the initial response or of
 * the first response line (a line terminator is ignored).
 *   PLAIN     the authentication identity (RFC 4616: authzid NUL authcid
 *             NUL passwd: the second field)
 *   LOGIN     the decoded response (the answer to "Username:")
 *   CRAM-MD5  the text before the last space (RFC 2195: "user digest")
 *   XOAUTH2   the value of "user=" up to the next ^A
 * Writes the NUL-terminated name into out and returns its length; returns
 * 0 (out "") for any other mechanism, an empty ("=") or cancelled ("*")
 * response, bad base64, a name holding a control byte, or one that does
 * not fit in outsz - 1 bytes.  Only the first SMTP_AUTH_B64_MAX base64
 * characters are decoded; the decoded bytes, which hold the password for
 * PLAIN, are wiped before returning.
 */
size_t smtp_auth_user(struct smtp_str mech, const char *resp, size_t len, char *out, size_t outsz);

/* Case-insensitive: is `kw` equal to the NUL-terminated `name`? */
bool smtp_str_eq_ci(struct smtp_str s, const char *name);

/*
 * DATA streaming: find the end of the message (<CRLF>.<CRLF>, RFC 5321
 * 4.1.1.4: a bare LF ends neither a line nor the message) and dot-unstuff,
 * across arbitrary chunk boundaries.  Bare LF, bare CR and NUL in the data
 * are flagged: they are the SMTP-smuggling shape, and strict servers
 * (Postfix 3.9+) reject bare LF.  Start with
 * smtp_data_init() right after the 354 reply.
 */
enum smtp_data_st {
	SMTP_DATA_LINE_START = 0, /* at the start of a line */
	SMTP_DATA_MID,		  /* inside a line */
	SMTP_DATA_DOT,		  /* line start, then '.' */
	SMTP_DATA_DOT_CR,	  /* line start, '.', CR */
	SMTP_DATA_MID_CR,	  /* inside a line, just after a CR */
	SMTP_DATA_DONE,		  /* terminator seen */
};

struct smtp_data {
	enum smtp_data_st st;
	uint64_t wire_bytes;  /* bytes consumed so far, terminator included */
	uint64_t body_bytes;  /* unstuffed message bytes produced so far */
	bool bare_lf;	      /* an LF without CR before it */
	bool bare_cr;	      /* a CR without LF after it */
	bool nul;	      /* a NUL byte */
};

void smtp_data_init(struct smtp_data *d);

/*
 * Consume bytes of the DATA stream.  Scans `in[0..len)` and stops right
 * after the terminating ".\r\n" (at the start of a line) if it is in there.  Returns the
 * number of bytes consumed (== len unless the terminator was found, then
 * d->st == SMTP_DATA_DONE).  When `out` is not NULL, the unstuffed message
 * bytes (leading dot of each line removed, terminator line excluded) are
 * written to it; it must hold at least `len` + 2 bytes (a held-back ".\r"
 * can be released by a following byte) and *out_len is set to the count.
 */
size_t smtp_data_scan(struct smtp_data *d, const char *in, size_t len, char *out, size_t *out_len);
/* The scanner skims with AVX2 where the CPU has it, else with SSE2 on
 * x86-64.  Tests turn AVX2 off to check the SSE2 path as well; returns
 * whether AVX2 is used from now on.  Not thread-safe: for tests only. */
bool smtp_data_set_avx2(bool on);
/* export uses the same function over the stored wire chunks, in order. */

#endif
