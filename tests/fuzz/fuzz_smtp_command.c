/*
 * fuzz_smtp_command.c - libFuzzer target for smtp_parse_command().
 *
 * Besides memory errors (ASan/UBSan), checks that every slice the parser
 * returns lies inside the input and that the counters agree.  The same
 * input also goes through what a session's summary takes from a command:
 * smtp_helo_name, and smtp_auth_user on the AUTH initial response (and on
 * the whole line as a response, with each mechanism it knows).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static void	fuzz_check_slice(struct smtp_str, const char *, size_t);
static void	fuzz_check_user(struct smtp_str, const char *, size_t);

/* A slice must be empty or lie wholly within buf[0..len). */
static void
fuzz_check_slice(struct smtp_str s, const char *buf, size_t len)
{
	if (s.len == 0)
		return;
	if (s.p == NULL || s.p < buf || s.p > buf + len || s.len > (size_t)(buf + len - s.p))
		abort();
}

/* A user name is a C string of the length returned, free of control
 * bytes, never longer than the buffer allows. */
static void
fuzz_check_user(struct smtp_str mech, const char *resp, size_t len)
{
	char out[32];
	size_t i, n = smtp_auth_user(mech, resp, len, out, sizeof(out));

	if (n >= sizeof(out) || strlen(out) != n)
		abort();
	for (i = 0; i < n; i++)
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const mechs[] = { "PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OTHER" };
	const char *buf = (const char *)data;
	struct smtp_cmd c;
	struct smtp_str name;
	size_t i, n;

	for (i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
		fuzz_check_user((struct smtp_str){ mechs[i], strlen(mechs[i]) }, buf, size);
	if (smtp_helo_name(buf, size, &name) == 0)
		fuzz_check_slice(name, buf, size);

	if (smtp_parse_command(buf, size, &c) < 0) {
		/* Only lines blank apart from their terminator are refused. */
		n = size;
		if (n > 0 && buf[n - 1] == '\n' && --n > 0 && buf[n - 1] == '\r')
			n--;
		for (i = 0; i < n; i++)
			if (buf[i] != ' ' && buf[i] != '\t')
				abort();
		return 0;
	}
	if (c.verb_text.len == 0 || memchr(c.verb_text.p, ' ', c.verb_text.len) != NULL)
		abort();
	fuzz_check_slice(c.verb_text, buf, size);
	fuzz_check_slice(c.arg, buf, size);
	fuzz_check_slice(c.path, buf, size);
	fuzz_check_slice(c.auth_mech, buf, size);
	fuzz_check_slice(c.auth_initial, buf, size);
	if (c.nparams > SMTP_PARAMS_MAX || c.nparams > c.nparams_total)
		abort();
	if (c.nparams_total > 0 && !c.has_path)
		abort();
	for (i = 0; i < c.nparams; i++) {
		fuzz_check_slice(c.params[i].key, buf, size);
		fuzz_check_slice(c.params[i].value, buf, size);
	}
	if (c.verb != SMTP_VERB_UNKNOWN && !smtp_str_eq_ci(c.verb_text, smtp_verb_name(c.verb)))
		abort();
	if (c.bdat_last && !c.bdat_ok)
		abort();
	if (c.verb == SMTP_VERB_AUTH && c.auth_initial.len > 0)
		fuzz_check_user(c.auth_mech, c.auth_initial.p, c.auth_initial.len);
	return 0;
}
