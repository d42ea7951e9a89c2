/*
 * fuzz_smtp_ehlo.c - libFuzzer target for smtp_ehlo_edit(), the EHLO
 * reply rewrite that adds or removes a capability (STARTTLS) on its way to
 * the client.
 *
 * The first byte picks the capability and whether it is wanted; the rest
 * is cut, the way the session assembles an upstream's stream, into the
 * first complete reply (lines ending in LF, up to the first line the parser
 * calls last), which is what the session hands to smtp_ehlo_edit.  Checked:
 *   - the result code: -1 only for more than 1024 lines (the output buffer
 *     given is the documented sufficient size, exactly, so ASan sees any
 *     write past it), 0 exactly when the reply already is as wanted;
 *   - a rewritten reply is still exactly one reply: every line ends in LF,
 *     every line but the last is a "NNN-" continuation and the last line
 *     ends the reply (a client must not see two replies where the server
 *     sent one);
 *   - nothing else changes: the lines other than the added or removed
 *     capability are the input's, in order, apart from the separator;
 *   - it is idempotent (editing the result again changes nothing), and
 *     adding then removing gives back the input's lines.
 * Any violation abort()s.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define FUZZ_EHLO_LINES_MAX 1024

static const char *const fuzz_kws[] = { "STARTTLS", "SIZE", "AUTH", "PIPELINING", "8BITMIME", "X" };

static size_t	fuzz_first_reply(const char *, size_t);
static size_t	fuzz_check_one_reply(const char *, size_t);
static bool	fuzz_same_lines(const char *, size_t, const char *, size_t, const char *);
static bool	fuzz_is_kw_line(const char *, size_t, const char *);
static bool	fuzz_line_eq(const char *, size_t, const char *, size_t);
static char	*fuzz_edit(const char *, size_t, const char *, bool, int *, size_t *, bool *);

/* Length of the first complete reply in buf, 0 if there is none. */
static size_t
fuzz_first_reply(const char *buf, size_t size)
{
	/* ... and only a 2xx one (session_reply.c: code / 100 == 2). */
	struct smtp_reply_line r;
	size_t pos = 0, len;
	const char *nl;

	while (pos < size) {
		nl = memchr(buf + pos, '\n', size - pos);
		if (nl == NULL)
			return 0;
		len = (size_t)(nl - (buf + pos)) + 1;
		if (len > SMTP_LINE_MAX)
			return 0;
		smtp_parse_reply_line(buf + pos, len, &r);
		pos += len;
		if (r.last)
			return r.code / 100 == 2 ? pos : 0;
	}
	return 0;
}

/* Abort unless out[0..len) is exactly one reply with LF-terminated lines;
 * returns its number of lines. */
static size_t
fuzz_check_one_reply(const char *out, size_t len)
{
	struct smtp_reply_line r;
	size_t pos = 0, n, lines = 0;
	const char *nl;

	while (pos < len) {
		nl = memchr(out + pos, '\n', len - pos);
		if (nl == NULL)
			abort(); /* a line without its LF */
		n = (size_t)(nl - (out + pos)) + 1;
		smtp_parse_reply_line(out + pos, n, &r);
		pos += n;
		lines++;
		if (r.last != (pos == len))
			abort(); /* ends early (two replies) or never ends */
	}
	if (lines == 0)
		abort();
	return lines;
}

/* Is this line (not the first) the capability kw? */
static bool
fuzz_is_kw_line(const char *l, size_t n, const char *kw)
{
	struct smtp_reply_line r;
	struct smtp_ehlo_kw k;

	smtp_parse_reply_line(l, n, &r);
	return smtp_parse_ehlo_keyword(r.text.p, r.text.len, &k) == 0 && smtp_str_eq_ci(k.keyword, kw);
}

/* One line of a reply: n bytes at l, terminator included. */
static bool
fuzz_line_eq(const char *a, size_t na, const char *b, size_t nb)
{
	struct smtp_reply_line ra, rb;
	bool crlf_a = na >= 2 && a[na - 2] == '\r', crlf_b = nb >= 2 && b[nb - 2] == '\r';

	smtp_parse_reply_line(a, na, &ra);
	smtp_parse_reply_line(b, nb, &rb);
	if (ra.code == 0 || rb.code == 0)
		return na == nb && memcmp(a, b, na) == 0;
	/* Same code, text and line ending; the separator ('-', ' ' or
	 * none for a bare code) is the editor's to set. */
	return ra.code == rb.code && crlf_a == crlf_b && ra.text.len == rb.text.len &&
	       memcmp(ra.text.p, rb.text.p, ra.text.len) == 0;
}

/*
 * Do a[0..alen) and b[0..blen) hold the same lines (fuzz_line_eq),
 * skipping, when skip_kw is not NULL, every line but the first of `a` that
 * is that capability?
 */
static bool
fuzz_same_lines(const char *a, size_t alen, const char *b, size_t blen, const char *skip_kw)
{
	size_t pa = 0, pb = 0, na, nb;
	const char *nl;
	bool first = true;

	while (pa < alen) {
		nl = memchr(a + pa, '\n', alen - pa);
		na = nl != NULL ? (size_t)(nl - (a + pa)) + 1 : alen - pa;
		if (skip_kw != NULL && !first && fuzz_is_kw_line(a + pa, na, skip_kw)) {
			pa += na;
			continue;
		}
		first = false;
		if (pb >= blen)
			return false;
		nl = memchr(b + pb, '\n', blen - pb);
		nb = nl != NULL ? (size_t)(nl - (b + pb)) + 1 : blen - pb;
		if (!fuzz_line_eq(a + pa, na, b + pb, nb))
			return false;
		pa += na;
		pb += nb;
	}
	return pb == blen;
}

/* smtp_ehlo_edit into an exact-size heap buffer of the documented size. */
static char *
fuzz_edit(const char *in, size_t len, const char *kw, bool want, int *r, size_t *outlen, bool *had)
{
	size_t outsz = len + strlen(kw) + 8;
	char *out = malloc(outsz);

	if (out == NULL)
		abort();
	*outlen = 0;
	*r = smtp_ehlo_edit(in, len, kw, want, out, outsz, outlen, had);
	if (*r == 1 && *outlen > outsz)
		abort();
	return out;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *kw, *buf;
	char *in, *out, *again, *back;
	size_t len, nlines, outlen, againlen, backlen, i, n;
	bool want, had, had2, had3, present = false;
	const char *nl;
	int r, r2, r3;

	if (size < 2)
		return 0;
	kw = fuzz_kws[(data[0] & 0x7f) % (sizeof(fuzz_kws) / sizeof(fuzz_kws[0]))];
	want = (data[0] & 0x80) != 0;
	buf = (const char *)data + 1;
	if ((len = fuzz_first_reply(buf, size - 1)) == 0)
		return 0;
	in = malloc(len);
	if (in == NULL)
		abort();
	memcpy(in, buf, len);
	/* Independent count of lines and of the capability's presence. */
	nlines = 0;
	for (i = 0; i < len; i += (size_t)(nl - (in + i)) + 1) {
		nl = memchr(in + i, '\n', len - i);
		if (nlines > 0 && fuzz_is_kw_line(in + i, (size_t)(nl - (in + i)) + 1, kw))
			present = true;
		nlines++;
	}

	out = fuzz_edit(in, len, kw, want, &r, &outlen, &had);
	if (nlines > FUZZ_EHLO_LINES_MAX) {
		if (r != -1)
			abort();
		goto done;
	}
	if (had != present || r == -1 || (r == 0) != (want == present))
		abort();
	if (r == 0)
		goto done;
	n = fuzz_check_one_reply(out, outlen);
	if ((want && n != nlines + 1) || (!want && n >= nlines))
		abort();
	/* Idempotent (unless the added line made it one line too many). */
	if (n > FUZZ_EHLO_LINES_MAX)
		goto done;
	again = fuzz_edit(out, outlen, kw, want, &r2, &againlen, &had2);
	if (r2 != 0 || had2 != want)
		abort();
	free(again);
	if (want) {
		/* Adding then removing gives back the input's lines. */
		back = fuzz_edit(out, outlen, kw, false, &r3, &backlen, &had3);
		if (r3 != 1 || !had3)
			abort();
		fuzz_check_one_reply(back, backlen);
		if (!fuzz_same_lines(in, len, back, backlen, NULL))
			abort();
		free(back);
	} else if (!fuzz_same_lines(in, len, out, outlen, kw)) {
		/* Removing drops the capability lines and nothing else. */
		abort();
	}
done:
	free(out);
	free(in);
	return 0;
}
