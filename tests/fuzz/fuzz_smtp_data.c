/*
 * fuzz_smtp_data.c - libFuzzer target for the DATA scanner.
 *
 * The first input byte picks a split point; the rest is the DATA stream.
 * One-shot scanning, two-chunk scanning, byte-by-byte scanning and an
 * independent line-based reference must agree on output, consumed bytes,
 * counters, completion and bare-LF detection; any mismatch abort()s.
 * Output buffers are exactly len + 2 bytes, the documented minimum, so ASan
 * catches a scanner that writes more.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

struct fuzz_result {
	char *out;
	size_t out_len;
	size_t consumed;
	bool done;
	bool bare_lf;
};

static void	fuzz_scan(const char *, size_t, size_t, size_t, struct fuzz_result *);
static void	fuzz_ref(const char *, size_t, struct fuzz_result *);
static void	fuzz_compare(const struct fuzz_result *, const struct fuzz_result *);

/* Scan a first chunk of `first` bytes, then chunks of `step` bytes. */
static void
fuzz_scan(const char *in, size_t len, size_t first, size_t step, struct fuzz_result *r)
{
	struct smtp_data d;
	size_t pos = 0, clen, got, olen, k = 0;
	char *ibuf, *obuf;

	smtp_data_init(&d);
	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 2);
	if (r->out == NULL)
		abort();
	do {
		clen = k++ == 0 ? first : step;
		if (clen > len - pos)
			clen = len - pos;
		/* Exact-size copies so ASan sees any read past the chunk. */
		ibuf = malloc(clen > 0 ? clen : 1);
		obuf = malloc(clen + 2);
		if (ibuf == NULL || obuf == NULL)
			abort();
		memcpy(ibuf, in + pos, clen);
		got = smtp_data_scan(&d, ibuf, clen, obuf, &olen);
		free(ibuf);
		if (got > clen || olen > clen + 2 || (got < clen && d.st != SMTP_DATA_DONE))
			abort();
		memcpy(r->out + r->out_len, obuf, olen);
		free(obuf);
		r->out_len += olen;
		pos += got;
	} while (pos < len && d.st != SMTP_DATA_DONE);
	if (d.body_bytes != r->out_len || d.wire_bytes != pos || r->out_len > pos)
		abort();
	r->consumed = pos;
	r->done = d.st == SMTP_DATA_DONE;
	r->bare_lf = d.bare_lf;
}

/* Line-based reference; see tests/unit/test_smtp.c ref_scan(). */
static void
fuzz_ref(const char *in, size_t len, struct fuzz_result *r)
{
	size_t pos = 0, end, n;
	const char *nl;

	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 2);
	if (r->out == NULL)
		abort();
	while (pos < len) {
		nl = memchr(in + pos, '\n', len - pos);
		end = nl != NULL ? (size_t)(nl - in) + 1 : len;
		n = end - pos;
		if (in[pos] == '.') {
			if (nl != NULL && (n == 2 || (n == 3 && in[pos + 1] == '\r'))) {
				r->done = true;
				r->consumed = end;
				if (n == 2)
					r->bare_lf = true;
				return;
			}
			if (nl == NULL && (n == 1 || (n == 2 && in[pos + 1] == '\r')))
				break;
			memcpy(r->out + r->out_len, in + pos + 1, n - 1);
			r->out_len += n - 1;
		} else {
			memcpy(r->out + r->out_len, in + pos, n);
			r->out_len += n;
		}
		if (nl != NULL && (n < 2 || in[end - 2] != '\r'))
			r->bare_lf = true;
		pos = end;
	}
	r->consumed = len;
}

static void
fuzz_compare(const struct fuzz_result *a, const struct fuzz_result *b)
{
	if (a->out_len != b->out_len || a->consumed != b->consumed || a->done != b->done ||
	    a->bare_lf != b->bare_lf || memcmp(a->out, b->out, a->out_len) != 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fuzz_result one, split, bytes, ref;
	const char *in;
	size_t len, cut;

	if (size == 0)
		return 0;
	in = (const char *)data + 1;
	len = size - 1;
	/* Scale the first byte onto the stream so short and long inputs
	 * both get splits everywhere. */
	cut = len == 0 ? 0 : (size_t)data[0] * (len + 1) / 256;
	fuzz_scan(in, len, len, len, &one);
	fuzz_ref(in, len, &ref);
	fuzz_compare(&one, &ref);
	/* A zero-length first chunk is legal and must change nothing. */
	fuzz_scan(in, len, cut, len, &split);
	fuzz_compare(&one, &split);
	if (len <= 1024) {
		fuzz_scan(in, len, 1, 1, &bytes);
		fuzz_compare(&one, &bytes);
		free(bytes.out);
	}
	free(one.out);
	free(split.out);
	free(ref.out);
	return 0;
}
