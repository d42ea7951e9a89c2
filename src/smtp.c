/*
 * smtp.c - pure SMTP protocol parsers, see smtp.h.
 *
 * Everything here works on (pointer, length) pairs: input is never assumed
 * to be NUL-terminated, and every returned slice points into the caller's
 * buffer.  Parsing is lenient where real clients and servers deviate from
 * RFC 5321 in harmless ways (spaces after "FROM:", bare LF line endings),
 * because the proxy's job is to record what was sent, not to police it.
 */
#include "smtptap/smtp.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
/* AVX2 where the CPU has it (asked at run time), SSE2 (x86-64's baseline)
 * otherwise; see smtp_data_skim(). */
#if defined(__SSE2__) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SMTP_DATA_AVX2 1
#include <immintrin.h>
#endif

static size_t	 smtp_strip_eol(const char *, size_t);
static bool	 smtp_is_space(char);
static bool	 smtp_is_digit(char);
static char	 smtp_lower(char);
static bool	 smtp_mem_eq_ci(const char *, size_t, const char *);
static size_t	 smtp_skip_space(const char *, size_t, size_t);
static size_t	 smtp_skip_token(const char *, size_t, size_t);
static enum smtp_verb smtp_lookup_verb(const char *, size_t);
static void	 smtp_parse_path_params(const char *, size_t, const char *, struct smtp_cmd *);
static size_t	 smtp_find_path_end(const char *, size_t, size_t);
static void	 smtp_parse_params(const char *, size_t, size_t, struct smtp_cmd *);
static void	 smtp_parse_bdat(const char *, size_t, struct smtp_cmd *);
static void	 smtp_parse_auth(const char *, size_t, struct smtp_cmd *);
static int	 smtp_parse_num(const char *, size_t, size_t *, int);
static void	 smtp_parse_enhanced(struct smtp_reply_line *);
static void	 smtp_data_mid(struct smtp_data *, const char *, size_t *, size_t, char *, size_t *);
#ifdef __SSE2__
static size_t	 smtp_data_skim(const struct smtp_data *, const char *, size_t, size_t, bool *);
#endif
#ifdef SMTP_DATA_AVX2
static size_t	 smtp_data_skim32(const char *, size_t, size_t, bool, bool);
static bool	 smtp_data_no_avx2; /* tests: the SSE2 path alone */
#endif
static int	 smtp_b64_value(unsigned char);
static size_t	 smtp_b64_decode(const char *, size_t, unsigned char *);
static size_t	 smtp_auth_name(const unsigned char *, size_t, char *, size_t);

static const struct {
	enum smtp_verb verb;
	const char *name;
} smtp_verbs[] = {
	{ SMTP_VERB_HELO, "HELO" },
	{ SMTP_VERB_EHLO, "EHLO" },
	{ SMTP_VERB_LHLO, "LHLO" },
	{ SMTP_VERB_MAIL, "MAIL" },
	{ SMTP_VERB_RCPT, "RCPT" },
	{ SMTP_VERB_DATA, "DATA" },
	{ SMTP_VERB_BDAT, "BDAT" },
	{ SMTP_VERB_RSET, "RSET" },
	{ SMTP_VERB_NOOP, "NOOP" },
	{ SMTP_VERB_VRFY, "VRFY" },
	{ SMTP_VERB_EXPN, "EXPN" },
	{ SMTP_VERB_HELP, "HELP" },
	{ SMTP_VERB_QUIT, "QUIT" },
	{ SMTP_VERB_STARTTLS, "STARTTLS" },
	{ SMTP_VERB_AUTH, "AUTH" },
};

#define SMTP_NVERBS (sizeof(smtp_verbs) / sizeof(smtp_verbs[0]))

/* ------------------------------------------------------------------------
 * Small helpers.  Character classes are ASCII-only on purpose: <ctype.h>
 * depends on the locale and is undefined for negative chars.
 */

/* Length of `s` without one trailing CRLF or bare LF. */
static size_t
smtp_strip_eol(const char *s, size_t len)
{
	if (len > 0 && s[len - 1] == '\n') {
		len--;
		if (len > 0 && s[len - 1] == '\r')
			len--;
	}
	return len;
}

static bool
smtp_is_space(char c)
{
	return c == ' ' || c == '\t';
}

static bool
smtp_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static char
smtp_lower(char c)
{
	if (c >= 'A' && c <= 'Z')
		return (char)(c - 'A' + 'a');
	return c;
}

/* Case-insensitive: are the `len` bytes at `p` exactly the string `name`? */
static bool
smtp_mem_eq_ci(const char *p, size_t len, const char *name)
{
	size_t i;

	for (i = 0; i < len; i++) {
		/* name's NUL ends the comparison before p runs out. */
		if (name[i] == '\0' || smtp_lower(p[i]) != smtp_lower(name[i]))
			return false;
	}
	return name[len] == '\0';
}

static size_t
smtp_skip_space(const char *s, size_t len, size_t i)
{
	while (i < len && smtp_is_space(s[i]))
		i++;
	return i;
}

static size_t
smtp_skip_token(const char *s, size_t len, size_t i)
{
	while (i < len && !smtp_is_space(s[i]))
		i++;
	return i;
}

bool
smtp_str_eq_ci(struct smtp_str s, const char *name)
{
	if (name == NULL)
		return false;
	if (s.p == NULL)
		return s.len == 0 && name[0] == '\0';
	return smtp_mem_eq_ci(s.p, s.len, name);
}

const char *
smtp_verb_name(enum smtp_verb verb)
{
	size_t i;

	for (i = 0; i < SMTP_NVERBS; i++)
		if (smtp_verbs[i].verb == verb)
			return smtp_verbs[i].name;
	return "UNKNOWN";
}

/* ------------------------------------------------------------------------
 * Commands.
 */

static enum smtp_verb
smtp_lookup_verb(const char *p, size_t len)
{
	size_t i;

	for (i = 0; i < SMTP_NVERBS; i++)
		if (smtp_mem_eq_ci(p, len, smtp_verbs[i].name))
			return smtp_verbs[i].verb;
	return SMTP_VERB_UNKNOWN;
}

int
smtp_parse_command(const char *line, size_t len, struct smtp_cmd *out)
{
	size_t i, vstart;

	memset(out, 0, sizeof(*out));
	if (line == NULL)
		return -1;
	len = smtp_strip_eol(line, len);

	/* Leading blanks are not RFC 5321, but some hand-typed sessions
	 * (telnet, nc) have them; the verb is still what matters. */
	i = smtp_skip_space(line, len, 0);
	if (i == len)
		return -1;
	vstart = i;
	i = smtp_skip_token(line, len, i);
	out->verb_text.p = line + vstart;
	out->verb_text.len = i - vstart;
	out->verb = smtp_lookup_verb(out->verb_text.p, out->verb_text.len);

	i = smtp_skip_space(line, len, i);
	out->arg.p = line + i;
	out->arg.len = len - i;

	switch (out->verb) {
	case SMTP_VERB_MAIL:
		smtp_parse_path_params(out->arg.p, out->arg.len, "FROM:", out);
		break;
	case SMTP_VERB_RCPT:
		smtp_parse_path_params(out->arg.p, out->arg.len, "TO:", out);
		break;
	case SMTP_VERB_BDAT:
		smtp_parse_bdat(out->arg.p, out->arg.len, out);
		break;
	case SMTP_VERB_AUTH:
		smtp_parse_auth(out->arg.p, out->arg.len, out);
		break;
	default:
		break;
	}
	return 0;
}

/*
 * "FROM:<path> params" / "TO:<path> params".  Spaces between the colon and
 * the '<' are tolerated because many clients send "MAIL FROM: <a@b>" and
 * servers accept it.  A path without angle brackets, an unterminated one, or
 * one followed directly by something other than a blank is malformed: the
 * recorder then keeps only the raw arg.
 */
static void
smtp_parse_path_params(const char *s, size_t len, const char *prefix, struct smtp_cmd *out)
{
	size_t plen = strlen(prefix), i, end;

	if (len < plen || !smtp_mem_eq_ci(s, plen, prefix))
		return;
	i = smtp_skip_space(s, len, plen);
	if (i == len || s[i] != '<')
		return;
	end = smtp_find_path_end(s, len, i + 1);
	if (end == len)
		return;
	if (end + 1 < len && !smtp_is_space(s[end + 1]))
		return;
	out->has_path = true;
	out->path.p = s + i + 1;
	out->path.len = end - (i + 1);
	smtp_parse_params(s, len, end + 1, out);
}

/*
 * Index of the '>' closing a path whose content starts at `i`, or `len` if
 * there is none.  A quoted local part may hold '>' (<"a>b"@c>), and inside
 * quotes a backslash escapes the next character (RFC 5321 quoted-pairSMTP).
 */
static size_t
smtp_find_path_end(const char *s, size_t len, size_t i)
{
	bool quoted = false;

	for (; i < len; i++) {
		if (quoted) {
			if (s[i] == '\\') {
				if (++i == len)
					break;
			} else if (s[i] == '"')
				quoted = false;
		} else if (s[i] == '"')
			quoted = true;
		else if (s[i] == '>')
			return i;
	}
	return len;
}

/* Blank-separated "KEY[=VALUE]" tokens from `i` to the end. */
static void
smtp_parse_params(const char *s, size_t len, size_t i, struct smtp_cmd *out)
{
	size_t start, eq;
	struct smtp_param *p;

	for (;;) {
		i = smtp_skip_space(s, len, i);
		if (i == len)
			return;
		start = i;
		i = smtp_skip_token(s, len, i);
		out->nparams_total++;
		if (out->nparams >= SMTP_PARAMS_MAX)
			continue;
		p = &out->params[out->nparams++];
		for (eq = start; eq < i && s[eq] != '='; eq++)
			;
		p->key.p = s + start;
		p->key.len = eq - start;
		if (eq < i) {
			p->value.p = s + eq + 1;
			p->value.len = i - (eq + 1);
		}
	}
}

/*
 * "BDAT <size> [LAST]" (RFC 3030).  The size decides how many bytes that
 * follow are message data rather than commands, so it must be exact: only
 * decimal digits, and a value past 2^64-1 is an error, never a wrap.
 */
static void
smtp_parse_bdat(const char *s, size_t len, struct smtp_cmd *out)
{
	size_t i = 0, start;
	uint64_t v = 0;
	unsigned d;

	while (i < len && smtp_is_digit(s[i])) {
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return;
		v = v * 10 + d;
		i++;
	}
	if (i == 0 || (i < len && !smtp_is_space(s[i])))
		return;
	out->bdat_ok = true;
	out->bdat_size = v;
	i = smtp_skip_space(s, len, i);
	start = i;
	i = smtp_skip_token(s, len, i);
	out->bdat_last = smtp_mem_eq_ci(s + start, i - start, "LAST");
}

/* "AUTH <mechanism> [initial-response]" (RFC 4954). */
static void
smtp_parse_auth(const char *s, size_t len, struct smtp_cmd *out)
{
	size_t i = 0, start;

	i = smtp_skip_token(s, len, i);
	if (i == 0)
		return;
	out->auth_mech.p = s;
	out->auth_mech.len = i;
	i = smtp_skip_space(s, len, i);
	start = i;
	i = smtp_skip_token(s, len, i);
	if (i > start) {
		out->auth_initial.p = s + start;
		out->auth_initial.len = i - start;
	}
}

/* ------------------------------------------------------------------------
 * What a session summary keeps of HELO/EHLO and AUTH.
 */

int
smtp_helo_name(const char *line, size_t len, struct smtp_str *out)
{
	struct smtp_cmd cmd;
	size_t end;

	if (smtp_parse_command(line, len, &cmd) < 0 ||
	    (cmd.verb != SMTP_VERB_HELO && cmd.verb != SMTP_VERB_EHLO && cmd.verb != SMTP_VERB_LHLO))
		return -1;
	end = smtp_skip_token(cmd.arg.p, cmd.arg.len, 0);
	out->p = cmd.arg.p;
	out->len = end;
	return 0;
}

static int
smtp_b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * Decode base64 in[0..len) (len a multiple of 4, padding only at the end)
 * into out, which holds len / 4 * 3 bytes.  Returns the decoded length, or
 * (size_t)-1 when the text is not base64.
 */
static size_t
smtp_b64_decode(const char *in, size_t len, unsigned char *out)
{
	size_t i, n = 0;
	int k, v[4];

	if (len % 4 != 0)
		return (size_t)-1;
	for (i = 0; i < len; i += 4) {
		for (k = 0; k < 4; k++) {
			v[k] = in[i + k] == '=' ? -2 : smtp_b64_value((unsigned char)in[i + k]);
			if (v[k] == -1)
				return (size_t)-1;
		}
		/* '=' only as the last one or two characters of the text */
		if (v[0] < 0 || v[1] < 0 || (v[2] == -2 && v[3] != -2) ||
		    ((v[2] == -2 || v[3] == -2) && i + 4 != len))
			return (size_t)-1;
		out[n++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
		if (v[2] >= 0)
			out[n++] = (unsigned char)((v[1] & 0xf) << 4 | v[2] >> 2);
		if (v[3] >= 0)
			out[n++] = (unsigned char)((v[2] & 0x3) << 6 | v[3]);
	}
	return n;
}

/* Copy a decoded name into out as a C string; 0 when it is empty, holds
 * a control byte or does not fit. */
static size_t
smtp_auth_name(const unsigned char *p, size_t len, char *out, size_t outsz)
{
	size_t i;

	if (len == 0 || len >= outsz)
		return 0;
	for (i = 0; i < len; i++) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return 0;
	}
	memcpy(out, p, len);
	out[len] = '\0';
	return len;
}

size_t
smtp_auth_user(struct smtp_str mech, const char *resp, size_t len, char *out, size_t outsz)
{
	unsigned char buf[SMTP_AUTH_B64_MAX / 4 * 3];
	const unsigned char *p, *q, *end;
	size_t n, got = 0;
	bool cut = false;

	if (outsz == 0)
		return 0;
	out[0] = '\0';
	len = smtp_strip_eol(resp, len);
	while (len > 0 && smtp_is_space(resp[len - 1]))
		len--;
	if (len > SMTP_AUTH_B64_MAX) {
		len = SMTP_AUTH_B64_MAX; /* a multiple of 4: decodes a prefix */
		cut = true;
	}
	n = smtp_b64_decode(resp, len, buf);
	if (n == (size_t)-1 || n == 0)
		goto out;
	end = buf + n;
	/* A name ends at a separator inside the prefix, or it is not known
	 * whole: LOGIN and CRAM-MD5 need the whole response. */
	if (smtp_str_eq_ci(mech, "LOGIN")) {
		if (!cut)
			got = smtp_auth_name(buf, n, out, outsz);
	} else if (smtp_str_eq_ci(mech, "PLAIN")) {
		/* authzid NUL authcid NUL passwd */
		if ((p = memchr(buf, '\0', n)) != NULL && (q = memchr(p + 1, '\0', (size_t)(end - p - 1))) != NULL)
			got = smtp_auth_name(p + 1, (size_t)(q - p - 1), out, outsz);
	} else if (smtp_str_eq_ci(mech, "CRAM-MD5")) {
		for (q = end; q > buf && q[-1] != ' '; q--)
			;
		if (q > buf && !cut)
			got = smtp_auth_name(buf, (size_t)(q - 1 - buf), out, outsz);
	} else if (smtp_str_eq_ci(mech, "XOAUTH2")) {
		/* "user=" USER ^A "auth=Bearer " TOKEN ^A ^A */
		if (n > 5 && memcmp(buf, "user=", 5) == 0 && (q = memchr(buf + 5, 0x01, n - 5)) != NULL)
			got = smtp_auth_name(buf + 5, (size_t)(q - buf - 5), out, outsz);
	}
out:
	/* The buffer may hold a password (PLAIN) or a token (XOAUTH2). */
	explicit_bzero(buf, sizeof(buf));
	return got;
}

/* ------------------------------------------------------------------------
 * Replies.
 */

int
smtp_parse_reply_line(const char *line, size_t len, struct smtp_reply_line *out)
{
	memset(out, 0, sizeof(*out));
	out->last = true;
	if (line == NULL)
		return -1;
	len = smtp_strip_eol(line, len);
	/* On failure the whole line is the text, so the recorder keeps it. */
	out->text.p = line;
	out->text.len = len;

	if (len < 3 || line[0] < '2' || line[0] > '5' || !smtp_is_digit(line[1]) ||
	    !smtp_is_digit(line[2]))
		return -1;
	if (len > 3 && line[3] != ' ' && line[3] != '-')
		return -1;

	out->code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	out->last = len == 3 || line[3] == ' ';
	out->text.p = line + (len > 3 ? 4 : 3);
	out->text.len = len > 3 ? len - 4 : 0;
	smtp_parse_enhanced(out);
	return 0;
}

/*
 * Decimal number of 1..`maxdig` digits at s[*i]; advances *i.  Returns the
 * value, or -1 when there are no digits or too many.
 */
static int
smtp_parse_num(const char *s, size_t len, size_t *i, int maxdig)
{
	int v = 0, n = 0;

	while (*i < len && smtp_is_digit(s[*i])) {
		if (++n > maxdig)
			return -1;
		v = v * 10 + (s[*i] - '0');
		(*i)++;
	}
	return n == 0 ? -1 : v;
}

/*
 * RFC 3463 "class.subject.detail" at the start of the text.  The class must
 * agree with the reply code, otherwise "250 2.1.0" style text that merely
 * looks like a code (a version number in a banner, say) would be taken.
 */
static void
smtp_parse_enhanced(struct smtp_reply_line *out)
{
	const char *s = out->text.p;
	size_t len = out->text.len, i = 0;
	int subject, detail;

	if (len < 5 || s[0] != '0' + out->code / 100 || s[1] != '.')
		return;
	i = 2;
	if ((subject = smtp_parse_num(s, len, &i, 3)) < 0)
		return;
	if (i == len || s[i] != '.')
		return;
	i++;
	if ((detail = smtp_parse_num(s, len, &i, 3)) < 0)
		return;
	if (i < len && s[i] != ' ')
		return;
	out->has_enhanced = true;
	out->enh_class = out->code / 100;
	out->enh_subject = subject;
	out->enh_detail = detail;
}

/*
 * EHLO capability text: keyword, then blank-separated parameters.  The
 * legacy "AUTH=LOGIN PLAIN" form (old Outlook clients needed it) is split at
 * the '=' so it names the same capability as "AUTH LOGIN PLAIN".
 */
int
smtp_parse_ehlo_keyword(const char *text, size_t len, struct smtp_ehlo_kw *out)
{
	size_t i, start;

	memset(out, 0, sizeof(*out));
	if (text == NULL)
		return -1;
	len = smtp_strip_eol(text, len);
	while (len > 0 && smtp_is_space(text[len - 1]))
		len--;
	i = smtp_skip_space(text, len, 0);
	start = i;
	while (i < len && !smtp_is_space(text[i]) && text[i] != '=')
		i++;
	if (i == start)
		return -1;
	out->keyword.p = text + start;
	out->keyword.len = i - start;
	if (i < len && text[i] == '=')
		i++;
	i = smtp_skip_space(text, len, i);
	out->params.p = text + i;
	out->params.len = len - i;
	return 0;
}

/* ------------------------------------------------------------------------
 * EHLO capability editing (STARTTLS is the one capability smtptap answers
 * itself, so it adds or removes it).
 */

#define EHLO_LINES_MAX 1024

int
smtp_ehlo_edit(const char *in, size_t len, const char *kw, bool want, char *out, size_t outsz, size_t *outlen,
	       bool *had)
{
	const char *lines[EHLO_LINES_MAX + 1], *p = in, *end = in + len;
	size_t nlines = 0, i, o = 0, kwlen = strlen(kw), eol;
	bool found = false, keep[EHLO_LINES_MAX];
	struct smtp_reply_line rl;

	*had = false;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));

		if (nlines == EHLO_LINES_MAX)
			return -1;
		lines[nlines++] = p;
		p = nl != NULL ? nl + 1 : end;
	}
	if (nlines == 0)
		return 0;
	lines[nlines] = end;
	for (i = 0; i < nlines; i++) {
		struct smtp_ehlo_kw k;

		keep[i] = true;
		smtp_parse_reply_line(lines[i], (size_t)(lines[i + 1] - lines[i]), &rl);
		if (i > 0 && smtp_parse_ehlo_keyword(rl.text.p, rl.text.len, &k) == 0 && smtp_str_eq_ci(k.keyword, kw)) {
			found = true;
			keep[i] = false;
		}
	}
	*had = found;
	if (found == want)
		return 0;
	if (len + kwlen + 8 > outsz)
		return -1;
	/* The added line copies the first line's code and line ending. */
	eol = lines[1] - lines[0] >= 2 && lines[1][-2] == '\r' ? 2 : 1;
	for (i = 0; i < nlines; i++) {
		size_t n = (size_t)(lines[i + 1] - lines[i]);
		bool last = true;
		size_t k;

		if (!keep[i])
			continue;
		for (k = i + 1; k < nlines; k++) {
			if (keep[k]) {
				last = false;
				break;
			}
		}
		if (want && i == 0)
			last = false;
		if (n >= 4 && (lines[i][3] == '-' || lines[i][3] == ' ')) {
			memcpy(out + o, lines[i], 3);
			out[o + 3] = last ? ' ' : '-';
			memcpy(out + o + 4, lines[i] + 4, n - 4);
		} else if (want && i == 0 && smtp_parse_reply_line(lines[0], n, &rl) == 0 &&
			   rl.text.p == lines[0] + 3) {
			/* A bare code ("250\r\n") ends a reply: it needs the
			 * '-' before a line can follow (one byte more, once). */
			memcpy(out + o, lines[0], 3);
			out[o + 3] = '-';
			memcpy(out + o + 4, lines[0] + 3, n - 3);
			o++;
		} else {
			memcpy(out + o, lines[i], n);
		}
		o += n;
		if (want && i == 0) {
			memcpy(out + o, lines[0], n >= 3 ? 3 : n);
			o += n >= 3 ? 3 : n;
			out[o++] = nlines == 1 ? ' ' : '-';
			memcpy(out + o, kw, kwlen);
			o += kwlen;
			memcpy(out + o, &"\r\n"[2 - eol], eol);
			o += eol;
		}
	}
	*outlen = o;
	return 1;
}

/* ------------------------------------------------------------------------
 * DATA end detection and dot-unstuffing.
 *
 * RFC 5321 4.1.1.4: the data ends with <CRLF>.<CRLF>, and lines (hence
 * dot-stuffing) are delimited by CRLF only.  A bare LF or a bare CR is line
 * content: treating it as a line end would let smtptap see a different
 * message than a strict server does (the SMTP-smuggling shape), so they
 * are noted instead, like NUL bytes.  The state machine only visits line
 * starts byte by byte; inside a line smtp_data_mid() skims 16 bytes at a
 * time (SSE2) over content in which nothing happens, looks at the lines
 * where something does with memchr(), and copies unchanged runs in bulk,
 * since dots at a line start are rare and messages may be gigabytes.
 */

void
smtp_data_init(struct smtp_data *d)
{
	memset(d, 0, sizeof(*d));
	d->st = SMTP_DATA_LINE_START;
}

size_t
smtp_data_scan(struct smtp_data *d, const char *in, size_t len, char *out, size_t *out_len)
{
	size_t i = 0, o = 0;

	while (i < len && d->st != SMTP_DATA_DONE) {
		switch (d->st) {
		case SMTP_DATA_LINE_START:
			if (in[i] == '.') {
				/* Held back: stuffing dot or terminator. */
				i++;
				d->st = SMTP_DATA_DOT;
			} else
				d->st = SMTP_DATA_MID;
			break;
		case SMTP_DATA_DOT:
			if (in[i] == '\r') {
				i++;
				d->st = SMTP_DATA_DOT_CR;
			} else {
				/* Stuffed line: drop the dot, the byte is
				 * ordinary line content. */
				d->st = SMTP_DATA_MID;
			}
			break;
		case SMTP_DATA_DOT_CR:
			if (in[i] == '\n') {
				i++;
				d->st = SMTP_DATA_DONE;
			} else {
				/* ".\rX": a stuffed line whose content starts
				 * with a bare CR; release the held-back CR. */
				if (out != NULL)
					out[o] = '\r';
				o++;
				d->bare_cr = true;
				d->st = SMTP_DATA_MID;
			}
			break;
		case SMTP_DATA_MID:
		case SMTP_DATA_MID_CR:
			smtp_data_mid(d, in, &i, len, out, &o);
			break;
		case SMTP_DATA_DONE:
			break;
		}
	}
	d->wire_bytes += i;
	d->body_bytes += o;
	if (out_len != NULL)
		*out_len = o;
	return i;
}

/*
 * Inside a line: copy through to the next line that starts with '.' (left
 * for the state machine) or to the end of the input, noting bare LF, bare
 * CR and NUL on the way.  Leaves d->st at LINE_START, MID or MID_CR.
 * Blocks of ordinary content are skimmed (smtp_data_skim); a line in which
 * something may happen is looked at with memchr(), then skimming goes on.
 */
static void
smtp_data_mid(struct smtp_data *d, const char *in, size_t *ip, size_t len, char *out, size_t *op)
{
	size_t start = *ip, i = *ip, run, j, k;
	const char *nl;
	bool prev_cr = d->st == SMTP_DATA_MID_CR, crlf;

	d->st = SMTP_DATA_MID;
	for (;;) {
#ifdef __SSE2__
		i = smtp_data_skim(d, in, i, len, &prev_cr);
#endif
		/* A CR that ended what came before is bare unless an LF
		 * follows. */
		run = i;
		if (prev_cr && in[i] != '\n')
			d->bare_cr = true;
		nl = memchr(in + i, '\n', len - i);
		if (nl == NULL) {
			/* i < len here: skimming leaves a byte, and a line
			 * start at the end of the input is not ours. */
			d->st = in[len - 1] == '\r' ? SMTP_DATA_MID_CR : SMTP_DATA_MID;
			i = len;
		} else {
			j = (size_t)(nl - in);
			/* The byte before this LF is in this run, or, for its
			 * first byte, remembered in prev_cr. */
			crlf = j > run ? in[j - 1] == '\r' : prev_cr;
			i = j + 1;
			if (!crlf)
				d->bare_lf = true; /* line content, not a line end */
			else if (i == len || in[i] == '.')
				d->st = SMTP_DATA_LINE_START;
		}
		if (!d->nul && memchr(in + run, '\0', i - run) != NULL)
			d->nul = true;
		/* A CR is bare unless an LF follows; a CR ending the input is
		 * decided by the next chunk (MID_CR). */
		for (k = run; !d->bare_cr && k < i; k++) {
			const char *cr = memchr(in + k, '\r', i - k);

			if (cr == NULL)
				break;
			k = (size_t)(cr - in);
			if (k + 1 < len && in[k + 1] != '\n')
				d->bare_cr = true;
		}
		if (i == len || d->st == SMTP_DATA_LINE_START)
			break;
		prev_cr = false; /* the byte before i is that LF */
	}
	if (out != NULL)
		memcpy(out + *op, in + start, i - start);
	*op += i - start;
	*ip = i;
}

#ifdef __SSE2__
/*
 * Skim blocks of line content from i in which nothing needs a closer look:
 * no '.' right after an LF (a line start), and, unless the message already
 * had one, no bare LF, no bare CR, no NUL.  Each block is compared with
 * itself one byte on (a second load): lane k holds in[b + k] and
 * in[b + k + 1], so "CR here" must equal "LF next", and "LF here, dot
 * next" must not happen.  A block needs the byte after it, so at least one
 * byte is always left for the byte-wise path.  *cr says whether the byte
 * before i is a CR, and on return whether the byte before the returned
 * position is.  32-byte blocks with AVX2, then 16-byte ones (SSE2) up to
 * the first that is not clean; 16 bytes at a time scan a 1 MiB message in
 * about a third less time than one memchr() per 80-byte line, 32 in a
 * third of it.
 */
static inline __m128i
smtp_data_block(const char *p, __m128i ends, __m128i nul)
{
	const __m128i vcr = _mm_set1_epi8('\r'), vlf = _mm_set1_epi8('\n');
	const __m128i vdot = _mm_set1_epi8('.'), vnul = _mm_setzero_si128();
	__m128i b0 = _mm_loadu_si128((const __m128i *)(const void *)p);
	__m128i b1 = _mm_loadu_si128((const __m128i *)(const void *)(p + 1));
	__m128i bad = _mm_and_si128(_mm_xor_si128(_mm_cmpeq_epi8(b0, vcr), _mm_cmpeq_epi8(b1, vlf)), ends);

	bad = _mm_or_si128(bad, _mm_and_si128(_mm_cmpeq_epi8(b0, vlf), _mm_cmpeq_epi8(b1, vdot)));
	return _mm_or_si128(bad, _mm_and_si128(_mm_cmpeq_epi8(b0, vnul), nul));
}

static size_t
smtp_data_skim(const struct smtp_data *d, const char *in, size_t i, size_t len, bool *cr)
{
	bool ends_on = !(d->bare_lf && d->bare_cr), nul_on = !d->nul;
	const __m128i ends = ends_on ? _mm_set1_epi8(-1) : _mm_setzero_si128();
	const __m128i nul = nul_on ? _mm_set1_epi8(-1) : _mm_setzero_si128();
	size_t start = i;

	/* in[i] itself: an LF there is bare unless a CR came before */
	if (len - i <= 16 || (in[i] == '\n') != *cr)
		return i;
#ifdef SMTP_DATA_AVX2
	if (!smtp_data_no_avx2 && __builtin_cpu_supports("avx2"))
		i = smtp_data_skim32(in, i, len, ends_on, nul_on);
#endif
	while (len - i > 16 && _mm_movemask_epi8(smtp_data_block(in + i, ends, nul)) == 0)
		i += 16;
	if (i > start)
		*cr = in[i - 1] == '\r';
	return i;
}
#endif

#ifdef SMTP_DATA_AVX2
/* smtp_data_skim()'s blocks, 32 bytes at a time. */
__attribute__((target("avx2"))) static size_t
smtp_data_skim32(const char *in, size_t i, size_t len, bool ends_on, bool nul_on)
{
	const __m256i vcr = _mm256_set1_epi8('\r'), vlf = _mm256_set1_epi8('\n');
	const __m256i vdot = _mm256_set1_epi8('.'), vnul = _mm256_setzero_si256();
	const __m256i ends = ends_on ? _mm256_set1_epi8(-1) : vnul, nul = nul_on ? _mm256_set1_epi8(-1) : vnul;

	while (len - i > 32) {
		__m256i b0 = _mm256_loadu_si256((const __m256i *)(const void *)(in + i));
		__m256i b1 = _mm256_loadu_si256((const __m256i *)(const void *)(in + i + 1));
		__m256i bad = _mm256_and_si256(_mm256_xor_si256(_mm256_cmpeq_epi8(b0, vcr), _mm256_cmpeq_epi8(b1, vlf)),
					       ends);

		bad = _mm256_or_si256(bad, _mm256_and_si256(_mm256_cmpeq_epi8(b0, vlf), _mm256_cmpeq_epi8(b1, vdot)));
		bad = _mm256_or_si256(bad, _mm256_and_si256(_mm256_cmpeq_epi8(b0, vnul), nul));
		if (_mm256_movemask_epi8(bad) != 0)
			break;
		i += 32;
	}
	return i;
}
#endif

bool
smtp_data_set_avx2(bool on)
{
#ifdef SMTP_DATA_AVX2
	smtp_data_no_avx2 = !on;
	return on && __builtin_cpu_supports("avx2");
#else
	(void)on;
	return false;
#endif
}
