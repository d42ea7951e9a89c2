/*
 * fuzz_smtp_ehlo.c - libFuzzer target for smtp_ehlo_edit().
 *
 * Two runs per input.  The raw bytes go in as they are, for memory errors
 * only (ASan/UBSan; exact-size buffers).  Then the input shapes a
 * well-formed EHLO reply: byte 0 picks add or remove and CRLF or LF, the
 * rest, split at LF, gives each line's text ("250-text", the last
 * "250 text", an empty last one a bare "250").  On that reply the result
 * must keep the promises in smtp.h:
 *   - -1 only for more than 1024 lines (out is the documented bound) or
 *     an out below the bound; 0 exactly when the keyword's presence is
 *     already as wanted; *had says whether it was offered;
 *   - the output is a reply: every line ends in LF, parses, and all but
 *     the last have '-', the last ' ' (or is a bare code);
 *   - the keyword is offered (a line after the first) iff wanted, an added
 *     line comes right after the first and takes its line ending;
 *   - every other line keeps its text and line ending, in order;
 *   - no byte past outsz (ASan) and outlen <= outsz.
 * Any broken promise abort()s.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/smtp.h"

#define FUZZ_KW "STARTTLS"
#define FUZZ_LINES_MAX 1024 /* smtp_ehlo_edit's limit */

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

/* One line of a reply as this file sees it, independently of smtp.c. */
struct fuzz_line {
	const char *text; /* after "250-" / "250 " (or the bare code) */
	size_t textlen;
	size_t eol;	  /* 1 LF, 2 CRLF */
	bool dash;	  /* '-' after the code */
	bool is_kw;	  /* a capability line naming FUZZ_KW */
};

static void	fuzz_raw(const char *, size_t);
static size_t	fuzz_build(const uint8_t *, size_t, bool, char *);
static size_t	fuzz_split(const char *, size_t, struct fuzz_line *, size_t);
static bool	fuzz_offers(const struct fuzz_line *, size_t);
static void	fuzz_check(const char *, size_t, const struct fuzz_line *, size_t, bool, size_t);

/* The raw input, whatever it is: memory safety and the out bound only. */
static void
fuzz_raw(const char *data, size_t size)
{
	size_t outsz = size + strlen(FUZZ_KW) + 8, outlen = 0;
	char *in, *out;
	bool had;
	int r;

	in = malloc(size > 0 ? size : 1);
	out = malloc(outsz);
	if (in == NULL || out == NULL)
		abort();
	memcpy(in, data, size);
	r = smtp_ehlo_edit(in, size, FUZZ_KW, data[0] & 1, out, outsz, &outlen, &had);
	if (r < -1 || r > 1 || (r == 1 && outlen > outsz))
		abort();
	free(out);
	free(in);
}

/*
 * The well-formed reply for data[1..size) into buf (at least 6 * size + 8
 * bytes): one line per LF-separated piece.  Returns its length.
 */
static size_t
fuzz_build(const uint8_t *data, size_t size, bool crlf, char *buf)
{
	const char *p = (const char *)data + 1, *end = (const char *)data + size, *nl;
	size_t o = 0, n;
	bool last;

	do {
		nl = memchr(p, '\n', (size_t)(end - p));
		n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
		last = nl == NULL;
		memcpy(buf + o, "250", 3);
		o += 3;
		if (!last || n > 0)
			buf[o++] = last ? ' ' : '-';
		memcpy(buf + o, p, n);
		o += n;
		if (crlf)
			buf[o++] = '\r';
		buf[o++] = '\n';
		p = nl != NULL ? nl + 1 : end;
	} while (!last);
	return o;
}

/*
 * Split a reply into lines (every line must end in LF and parse as a
 * reply line, else abort()).  Returns the number of lines, at most max
 * (more: max + 1, lines beyond max not stored).
 */
static size_t
fuzz_split(const char *s, size_t len, struct fuzz_line *lines, size_t max)
{
	struct smtp_reply_line rl;
	struct smtp_ehlo_kw k;
	const char *p = s, *end = s + len, *nl;
	size_t nlines = 0, n;
	struct fuzz_line *l;

	while (p < end) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			abort(); /* a line without its LF */
		n = (size_t)(nl - p) + 1;
		if (smtp_parse_reply_line(p, n, &rl) < 0 || rl.code != 250)
			abort();
		if (nlines == max)
			return max + 1;
		l = &lines[nlines];
		l->eol = n >= 2 && p[n - 2] == '\r' ? 2 : 1;
		if (n < 3 + l->eol)
			abort();
		l->dash = n > 3 + l->eol && p[3] == '-';
		l->text = p + (n > 3 + l->eol ? 4 : 3);
		l->textlen = (size_t)(p + n - l->eol - l->text);
		l->is_kw = nlines > 0 && smtp_parse_ehlo_keyword(l->text, l->textlen, &k) == 0 &&
			   smtp_str_eq_ci(k.keyword, FUZZ_KW);
		/* '-' on every line but the last, ' ' or nothing on the last. */
		if (l->dash == (nl + 1 == end))
			abort();
		if (!l->dash && n > 3 + l->eol && p[3] != ' ')
			abort();
		nlines++;
		p = nl + 1;
	}
	return nlines;
}

static bool
fuzz_offers(const struct fuzz_line *lines, size_t n)
{
	size_t i;

	for (i = 1; i < n; i++)
		if (lines[i].is_kw)
			return true;
	return false;
}

/* The promises of smtp_ehlo_edit for one well-formed reply and outsz. */
static void
fuzz_check(const char *in, size_t len, const struct fuzz_line *il, size_t nin, bool want, size_t outsz)
{
	static struct fuzz_line ol[FUZZ_LINES_MAX + 2];
	size_t bound = len + strlen(FUZZ_KW) + 8, outlen = 0, nout, i, j;
	bool had, offered;
	char *copy, *out;
	int r;

	copy = malloc(len);
	out = malloc(outsz > 0 ? outsz : 1);
	if (copy == NULL || out == NULL)
		abort();
	memcpy(copy, in, len);
	r = smtp_ehlo_edit(copy, len, FUZZ_KW, want, out, outsz, &outlen, &had);
	if (nin > FUZZ_LINES_MAX) {
		if (r != -1)
			abort();
		goto done;
	}
	offered = fuzz_offers(il, nin);
	if (had != offered)
		abort();
	if (offered == want) {
		if (r != 0)
			abort();
		goto done;
	}
	if (r == -1 && outsz < bound)
		goto done;
	if (r != 1 || outlen > outsz)
		abort();

	nout = fuzz_split(out, outlen, ol, FUZZ_LINES_MAX + 1);
	if (nout == 0 || fuzz_offers(ol, nout) != want)
		abort();
	/* The first line: same text and ending. */
	if (ol[0].textlen != il[0].textlen || memcmp(ol[0].text, il[0].text, il[0].textlen) != 0 ||
	    ol[0].eol != il[0].eol)
		abort();
	j = 1;
	if (want) {
		/* Added right after the first line, with its ending. */
		if (nout != nin + 1 || !ol[1].is_kw || ol[1].eol != il[0].eol)
			abort();
		j = 2;
	}
	/* Every other line of the input, in order, text and ending kept. */
	for (i = 1; i < nin; i++) {
		if (il[i].is_kw)
			continue;
		if (j >= nout || ol[j].is_kw || ol[j].textlen != il[i].textlen ||
		    memcmp(ol[j].text, il[i].text, il[i].textlen) != 0 || ol[j].eol != il[i].eol)
			abort();
		j++;
	}
	if (j != nout)
		abort();
done:
	free(out);
	free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fuzz_line il[FUZZ_LINES_MAX + 2];
	size_t len, nin, bound;
	bool want, crlf;
	char *buf;

	if (size == 0)
		return 0;
	fuzz_raw((const char *)data, size);

	want = data[0] & 1;
	crlf = (data[0] & 2) == 0;
	if ((buf = malloc(6 * size + 8)) == NULL)
		abort();
	len = fuzz_build(data, size, crlf, buf);
	nin = fuzz_split(buf, len, il, FUZZ_LINES_MAX);
	bound = len + strlen(FUZZ_KW) + 8;
	fuzz_check(buf, len, il, nin, want, bound);
	/* A smaller out: refused (-1) or nothing to do (0), never a write
	 * past it.  Byte 0's high bits pick how much smaller. */
	fuzz_check(buf, len, il, nin, want, bound - 1 - (size_t)(data[0] >> 2) % bound);
	free(buf);
	return 0;
}
