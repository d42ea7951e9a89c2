/*
 * fuzz_smtp_data.c - libFuzzer target for the DATA scanner.
 *
 * The first input byte picks a split point; the rest is the DATA stream.
 * One-shot scanning, two-chunk scanning, byte-by-byte scanning and an
 * independent line-based reference must agree on output, consumed bytes,
 * counters, completion and the bare LF / bare CR / NUL flags; any mismatch
 * abort()s.  The split scan skims with SSE2 alone, the others with AVX2
 * where the CPU has it.  Lines end at CRLF only (RFC 5321 4.1.1.4), so
 * the message ends only at <CRLF>.<CRLF>.
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
	bool bare_cr;
	bool nul;
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
	r->bare_cr = d.bare_cr;
	r->nul = d.nul;
}

/*
 * Line-based reference, written apart from the state machine so that the
 * two can disagree; see tests/unit/test_smtp.c ref_scan().  Lines end with
 * CRLF only (a bare LF or CR is content).  A trailing partial line "." or
 * ".\r" produces nothing yet: it may still become the terminator.
 */
static void
fuzz_ref(const char *in, size_t len, struct fuzz_result *r)
{
	size_t pos = 0, end, n, k;
	const char *crlf;

	memset(r, 0, sizeof(*r));
	r->out = malloc(len + 2);
	if (r->out == NULL)
		abort();
	while (pos < len) {
		crlf = NULL;
		for (k = pos; k + 1 < len; k++) {
			if (in[k] == '\r' && in[k + 1] == '\n') {
				crlf = in + k;
				break;
			}
		}
		end = crlf != NULL ? (size_t)(crlf - in) + 2 : len;
		n = end - pos;
		if (in[pos] == '.') {
			if (crlf != NULL && n == 3) {
				r->done = true;
				r->consumed = end;
				return;
			}
			if (crlf == NULL && (n == 1 || (n == 2 && in[pos + 1] == '\r')))
				break;
			memcpy(r->out + r->out_len, in + pos + 1, n - 1);
			r->out_len += n - 1;
		} else {
			memcpy(r->out + r->out_len, in + pos, n);
			r->out_len += n;
		}
		for (k = pos; k < end; k++) {
			if (in[k] == '\n' && (k == 0 || in[k - 1] != '\r'))
				r->bare_lf = true;
			if (in[k] == '\r' && k + 1 < len && in[k + 1] != '\n')
				r->bare_cr = true;
			if (in[k] == '\0')
				r->nul = true;
		}
		pos = end;
	}
	r->consumed = len;
}

static void
fuzz_compare(const struct fuzz_result *a, const struct fuzz_result *b)
{
	if (a->out_len != b->out_len || a->consumed != b->consumed || a->done != b->done ||
	    a->bare_lf != b->bare_lf || a->bare_cr != b->bare_cr || a->nul != b->nul || memcmp(a->out, b->out, a->out_len) != 0)
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
	/* A zero-length first chunk is legal and must change nothing.  The
	 * one-shot scan skims with AVX2 where the CPU has it; this one with
	 * SSE2 alone, so the two paths are compared too. */
	smtp_data_set_avx2(false);
	fuzz_scan(in, len, cut, len, &split);
	smtp_data_set_avx2(true);
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
