/*
 * fuzz_smtp_reply.c - libFuzzer target for smtp_parse_reply_line() and
 * smtp_parse_ehlo_keyword() on the reply text.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "smtptap/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void	fuzz_check_slice(struct smtp_str, const char *, size_t);

static void
fuzz_check_slice(struct smtp_str s, const char *buf, size_t len)
{
	if (s.len == 0)
		return;
	if (s.p == NULL || s.p < buf || s.p > buf + len || s.len > (size_t)(buf + len - s.p))
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct smtp_reply_line r;
	struct smtp_ehlo_kw k;

	if (smtp_parse_reply_line(buf, size, &r) < 0) {
		if (r.code != 0 || !r.last || r.has_enhanced)
			abort();
	} else {
		if (r.code < 200 || r.code > 599)
			abort();
		if (r.has_enhanced && (r.enh_class != r.code / 100 || r.enh_subject < 0 ||
		    r.enh_subject > 999 || r.enh_detail < 0 || r.enh_detail > 999))
			abort();
	}
	fuzz_check_slice(r.text, buf, size);
	if (r.text.len > 0 && smtp_parse_ehlo_keyword(r.text.p, r.text.len, &k) == 0) {
		if (k.keyword.len == 0)
			abort();
		fuzz_check_slice(k.keyword, r.text.p, r.text.len);
		fuzz_check_slice(k.params, r.text.p, r.text.len);
		(void)smtp_str_eq_ci(k.keyword, "AUTH");
	}
	/* The raw input as capability text too: it has its own stripping. */
	if (smtp_parse_ehlo_keyword(buf, size, &k) == 0) {
		if (k.keyword.len == 0)
			abort();
		fuzz_check_slice(k.keyword, buf, size);
		fuzz_check_slice(k.params, buf, size);
	}
	return 0;
}
