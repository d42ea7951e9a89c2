/*
 * fuzz_mime.c - libFuzzer target for the header summary and RFC 2047
 * decoder.
 *
 * The first input byte picks a split point; the rest is a message, fed in
 * two chunks and summarised.  Every field must be a NUL-terminated string
 * of strict UTF-8 without control characters or surrounding spaces, and
 * the result must not depend on the split (compared with a one-shot feed).
 * The rest is also run through mime_decode_2047 into an exact-size small
 * heap buffer, so ASan catches a write past outsz.  Any violation abort()s.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/mime.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static bool	fuzz_utf8_clean(const char *, size_t);
static void	fuzz_check_field(const char *, bool);
static void	fuzz_summarise(const char *, size_t, size_t, struct mime_summary *);
static void	fuzz_decode(const char *, size_t, size_t);

/* Strict UTF-8 with no C0, DEL or C1 control characters. */
static bool
fuzz_utf8_clean(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, n, k;
	uint32_t cp;

	while (i < len) {
		if (u[i] < 0x80) {
			if (u[i] < 0x20 || u[i] == 0x7f)
				return false;
			i++;
			continue;
		}
		if (u[i] >= 0xc2 && u[i] <= 0xdf) {
			n = 2;
			cp = u[i] & 0x1f;
		} else if (u[i] >= 0xe0 && u[i] <= 0xef) {
			n = 3;
			cp = u[i] & 0x0f;
		} else if (u[i] >= 0xf0 && u[i] <= 0xf4) {
			n = 4;
			cp = u[i] & 0x07;
		} else {
			return false;
		}
		if (len - i < n)
			return false;
		for (k = 1; k < n; k++) {
			if ((u[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (u[i + k] & 0x3f);
		}
		if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
			return false;
		i += n;
	}
	return true;
}

static void
fuzz_check_field(const char *f, bool trimmed)
{
	size_t n = strnlen(f, MIME_VALUE_MAX);

	if (n >= MIME_VALUE_MAX || !fuzz_utf8_clean(f, n))
		abort();
	if (trimmed && n > 0 && (f[0] == ' ' || f[n - 1] == ' '))
		abort();
}

/* Feed `len` bytes as [0, cut) and [cut, len), each an exact-size copy. */
static void
fuzz_summarise(const char *in, size_t len, size_t cut, struct mime_summary *out)
{
	struct mime_hdr_parser *p = malloc(sizeof(*p));
	char *a = malloc(cut > 0 ? cut : 1), *b = malloc(len - cut > 0 ? len - cut : 1);
	size_t before;

	if (p == NULL || a == NULL || b == NULL)
		abort();
	memcpy(a, in, cut);
	memcpy(b, in + cut, len - cut);
	mime_hdr_init(p);
	mime_hdr_feed(p, a, cut);
	mime_hdr_feed(p, b, len - cut);
	if (p->len > MIME_HDR_MAX || p->len > len)
		abort();
	if (p->done) {
		before = p->len;
		mime_hdr_feed(p, b, len - cut);
		if (p->len != before)
			abort();
	}
	mime_hdr_summarise(p, out);
	fuzz_check_field(out->subject, true);
	fuzz_check_field(out->from, true);
	fuzz_check_field(out->to, true);
	fuzz_check_field(out->message_id, true);
	fuzz_check_field(out->date, true);
	free(a);
	free(b);
	free(p);
}

static void
fuzz_decode(const char *in, size_t len, size_t outsz)
{
	char *c = malloc(len > 0 ? len : 1), *out = malloc(outsz > 0 ? outsz : 1);
	size_t n;

	if (c == NULL || out == NULL)
		abort();
	memcpy(c, in, len);
	n = mime_decode_2047(c, len, out, outsz);
	if (outsz == 0) {
		if (n != 0)
			abort();
	} else if (n >= outsz || strlen(out) != n || !fuzz_utf8_clean(out, n)) {
		abort();
	}
	free(c);
	free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mime_summary *one, *split;
	const char *in;
	size_t len, cut;

	if (size == 0)
		return 0;
	in = (const char *)data + 1;
	len = size - 1;
	cut = len == 0 ? 0 : (size_t)data[0] * (len + 1) / 256;
	one = malloc(sizeof(*one));
	split = malloc(sizeof(*split));
	if (one == NULL || split == NULL)
		abort();
	fuzz_summarise(in, len, len, one);
	fuzz_summarise(in, len, cut, split);
	if (strcmp(one->subject, split->subject) != 0 || strcmp(one->from, split->from) != 0 ||
	    strcmp(one->to, split->to) != 0 || strcmp(one->message_id, split->message_id) != 0 ||
	    strcmp(one->date, split->date) != 0)
		abort();
	free(one);
	free(split);
	fuzz_decode(in, len, (size_t)data[0] % 24);
	fuzz_decode(in, len, MIME_VALUE_MAX);
	return 0;
}
