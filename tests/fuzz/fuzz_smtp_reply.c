/*
 * fuzz_smtp_reply.c - libFuzzer target for smtp_parse_reply_line() and
 * smtp_parse_ehlo_keyword(), on single lines and on whole multi-line
 * replies.
 *
 * A server's replies arrive as a byte stream, so the interesting input is
 * not one line but a run of them: "250-a\r\n250-b\r\n250 c\r\n354 go\n...".
 * The input is parsed three ways:
 *   1. as one line (the original target; keeps the old corpus meaningful);
 *   2. split into lines at LF, each line checked against an independent
 *      byte-level reference of RFC 5321 4.2 reply-line syntax;
 *   3. assembled into replies the way the session assembles an upstream's
 *      stream (src/session.c session_upstream_read: a line ends at LF, a
 *      line with no LF within SMTP_LINE_MAX bytes or a reply over
 *      REPLY_MAX bytes ends the stream, a reply ends at the first line the
 *      parser calls last), checking the reply-assembly invariants:
 *        - framing is lossless: the replies plus the unfinished tail are
 *          the input, in order;
 *        - a reply ends at the first line whose separator is ' ', that is
 *          a bare code, or that is malformed, and at no other line; every
 *          line before it is a well-formed continuation ("NNN-");
 *        - the code the session takes for a reply (its last line's) is the
 *          one found by scanning back from the end of the assembled reply
 *          (session_sink_answer's way), and when every line carries the
 *          same code it equals the first line's code (RFC 5321 4.2.1);
 *        - an enhanced code's class always matches its line's code;
 *        - every slice lies within its line, never includes the line
 *          terminator, and the result does not depend on whether the
 *          terminator is there (LF, CRLF or none).
 * Any violation abort()s; ASan+UBSan (fatal) catch the rest.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* src/session.c REPLY_MAX: bytes in one (multi-line) reply. */
#define FUZZ_REPLY_MAX (256 * 1024)

static void	fuzz_check_slice(struct smtp_str, const char *, size_t);
static void	fuzz_check_line(const char *, size_t);
static void	fuzz_check_single(const char *, size_t);
static void	fuzz_check_stream(const char *, size_t);
static int	fuzz_ref_code(const char *, size_t, bool *);
static bool	fuzz_same_line(const struct smtp_reply_line *, const struct smtp_reply_line *);

/* A slice must be empty or lie wholly within buf[0..len). */
static void
fuzz_check_slice(struct smtp_str s, const char *buf, size_t len)
{
	if (s.len == 0)
		return;
	if (s.p == NULL || s.p < buf || s.p > buf + len || s.len > (size_t)(buf + len - s.p))
		abort();
}

/*
 * Reference reply-line syntax, written from RFC 5321 4.2 independently of
 * the parser: three digits, the first 2-5, then ' ', '-' or nothing.
 * `len` excludes the terminator.  Returns the code or 0 when malformed;
 * *last tells whether the line ends its reply.
 */
static int
fuzz_ref_code(const char *l, size_t len, bool *last)
{
	size_t i;

	*last = true;
	if (len < 3 || l[0] < '2' || l[0] > '5')
		return 0;
	for (i = 1; i < 3; i++)
		if (l[i] < '0' || l[i] > '9')
			return 0;
	if (len > 3 && l[3] != ' ' && l[3] != '-')
		return 0;
	*last = len == 3 || l[3] == ' ';
	return (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
}

static bool
fuzz_same_line(const struct smtp_reply_line *a, const struct smtp_reply_line *b)
{
	return a->code == b->code && a->last == b->last && a->text.p == b->text.p &&
	       a->text.len == b->text.len && a->has_enhanced == b->has_enhanced &&
	       a->enh_class == b->enh_class && a->enh_subject == b->enh_subject &&
	       a->enh_detail == b->enh_detail;
}

/* One line as the parser sees it: l[0..len) with its terminator, if any. */
static void
fuzz_check_line(const char *l, size_t len)
{
	struct smtp_reply_line r, bare;
	struct smtp_ehlo_kw k;
	size_t body = len;
	bool last;
	int code;

	if (body > 0 && l[body - 1] == '\n') {
		body--;
		if (body > 0 && l[body - 1] == '\r')
			body--;
	}
	if (smtp_parse_reply_line(l, len, &r) < 0) {
		if (r.code != 0 || !r.last || r.has_enhanced)
			abort();
	} else {
		if (r.code < 200 || r.code > 599)
			abort();
		if (r.has_enhanced && (r.enh_class != r.code / 100 || r.enh_subject < 0 ||
		    r.enh_subject > 999 || r.enh_detail < 0 || r.enh_detail > 999))
			abort();
	}
	code = fuzz_ref_code(l, body, &last);
	if (r.code != code || r.last != last)
		abort();
	/* The text never includes the terminator, and a malformed line's
	 * text is the whole line (so the recorder keeps it). */
	fuzz_check_slice(r.text, l, body);
	if (code == 0 && (r.text.p != l || r.text.len != body))
		abort();
	if (code != 0 && r.text.len != (body > 3 ? body - 4 : 0))
		abort();
	/* Same answer without the terminator. */
	smtp_parse_reply_line(l, body, &bare);
	if (!fuzz_same_line(&r, &bare))
		abort();
	if (r.text.len > 0 && smtp_parse_ehlo_keyword(r.text.p, r.text.len, &k) == 0) {
		if (k.keyword.len == 0 || memchr(k.keyword.p, ' ', k.keyword.len) != NULL ||
		    memchr(k.keyword.p, '=', k.keyword.len) != NULL)
			abort();
		fuzz_check_slice(k.keyword, r.text.p, r.text.len);
		fuzz_check_slice(k.params, r.text.p, r.text.len);
		(void)smtp_str_eq_ci(k.keyword, "AUTH");
	}
}

/* The whole input as one line, and as raw capability text. */
static void
fuzz_check_single(const char *buf, size_t size)
{
	struct smtp_reply_line r;
	struct smtp_ehlo_kw k;

	if (smtp_parse_reply_line(buf, size, &r) < 0) {
		if (r.code != 0 || !r.last || r.has_enhanced)
			abort();
	} else if (r.code < 200 || r.code > 599) {
		abort();
	}
	fuzz_check_slice(r.text, buf, size);
	if (smtp_parse_ehlo_keyword(buf, size, &k) == 0) {
		if (k.keyword.len == 0)
			abort();
		fuzz_check_slice(k.keyword, buf, size);
		fuzz_check_slice(k.params, buf, size);
	}
}

/* Assemble replies from the stream; see the invariants at the top. */
static void
fuzz_check_stream(const char *buf, size_t size)
{
	size_t pos = 0, reply_start = 0, nlines = 0, len, first_code_line = 0;
	size_t framed = 0;
	const char *nl, *last_line;
	struct smtp_reply_line r, back;
	int first_code = 0;
	bool same_code = true;

	while (pos < size) {
		nl = memchr(buf + pos, '\n', size - pos);
		if (nl == NULL) {
			/* The unfinished tail: the session waits for more
			 * (or, past SMTP_LINE_MAX, gives up on the stream). */
			break;
		}
		len = (size_t)(nl - (buf + pos)) + 1;
		if (len > SMTP_LINE_MAX || pos + len - reply_start > FUZZ_REPLY_MAX)
			break; /* over-long line or reply: the session closes */
		fuzz_check_line(buf + pos, len);
		smtp_parse_reply_line(buf + pos, len, &r);
		if (nlines == 0) {
			first_code = r.code;
			first_code_line = pos;
		} else if (r.code != first_code) {
			same_code = false;
		}
		nlines++;
		pos += len;
		if (!r.last) {
			/* Only a well-formed "NNN-" line continues a reply. */
			if (r.code == 0 || len < 5 || buf[pos - len + 3] != '-')
				abort();
			continue;
		}
		/* The reply is buf[reply_start, pos).  Scanning back for its
		 * last line must find the line that ended it. */
		last_line = buf + reply_start;
		for (size_t i = reply_start; i + 1 < pos; i++)
			if (buf[i] == '\n')
				last_line = buf + i + 1;
		if (last_line != buf + pos - len)
			abort();
		smtp_parse_reply_line(last_line, (size_t)(buf + pos - last_line), &back);
		if (!fuzz_same_line(&back, &r))
			abort();
		if (same_code && r.code != first_code)
			abort();
		if (first_code_line != reply_start)
			abort();
		framed += pos - reply_start;
		reply_start = pos;
		nlines = 0;
		same_code = true;
	}
	/* Lossless framing: whole replies, then the pending reply's lines,
	 * then the tail, cover the input exactly once. */
	if (framed != reply_start || framed > size || pos < reply_start || pos > size)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;

	fuzz_check_single(buf, size);
	fuzz_check_stream(buf, size);
	return 0;
}
