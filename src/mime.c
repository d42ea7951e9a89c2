/*
 * mime.c - RFC 5322 header summary and RFC 2047 decoding, see mime.h.
 *
 * Header values are never copied out of the parser: a value and its
 * continuation lines form one contiguous span of the header block, and the
 * decoder unfolds it by skipping the line breaks as it goes.  Every byte it
 * produces then goes through one small UTF-8 sanitising writer, so the
 * guarantees about the summary (valid UTF-8, no control characters, cut
 * on a character boundary) hold by construction and in one place, however
 * the text was encoded.  The writer can be snapshotted and restored, which
 * is how a word that fails half-way through decoding (bad base64, an
 * iconv error) is put back as written.
 */
#include "smtptap/mime.h"

#include <errno.h>
#include <iconv.h>
#include <string.h>

/* RFC 2047 caps a whole encoded word at 75 characters; charset names in
 * the IANA registry stay well below this. */
#define MIME_CHARSET_MAX 64
/* Decoded bytes handed to the charset converter at once. */
#define MIME_CHUNK 256
/* Incomplete multibyte input iconv may leave at the end of a chunk; no
 * charset needs more than a few bytes for one character. */
#define MIME_CARRY_MAX 16

#define MIME_F_DECODE 0x01 /* RFC 2047 encoded words */
#define MIME_F_UNFOLD 0x02 /* drop CRLF / LF (the value's line breaks) */
#define MIME_F_TRIM 0x04   /* no leading or trailing spaces */

enum mime_cs {
	MIME_CS_UTF8,	/* also US-ASCII: the writer catches 8-bit bytes */
	MIME_CS_LATIN1,
	MIME_CS_ICONV,
};

/* Sanitising UTF-8 writer into a caller buffer of `size` bytes. */
struct mime_out {
	char *buf;
	size_t size;		/* including the NUL; 0 means write nothing */
	size_t len;
	unsigned char pend[4];	/* a UTF-8 sequence still being collected */
	size_t npend;
	size_t need;		/* length that sequence will have */
	bool full;		/* a character did not fit: stop for good */
	bool trim;
};

/* One encoded word on its way from encoded text to the writer. */
struct mime_word {
	struct mime_out *o;
	enum mime_cs cs;
	iconv_t cd;
	char carry[MIME_CARRY_MAX];
	size_t ncarry;
};

static void	 mime_out_init(struct mime_out *, char *, size_t, bool);
static void	 mime_out_put(struct mime_out *, const unsigned char *, size_t);
static void	 mime_out_byte(struct mime_out *, unsigned char);
static void	 mime_out_bytes(struct mime_out *, const char *, size_t);
static size_t	 mime_out_finish(struct mime_out *);
static bool	 mime_utf8_cont_ok(unsigned char, size_t, unsigned char);
static bool	 mime_is_lwsp(char);
static char	 mime_lower(char);
static bool	 mime_name_eq(const char *, size_t, const char *);
static bool	 mime_is_token(unsigned char);
static enum mime_cs mime_charset_kind(const char *, size_t);
static void	 mime_decode_value(const char *, size_t, int, struct mime_out *);
static void	 mime_space_emit(const char *, size_t, int, struct mime_out *);
static bool	 mime_word_decode(const char *, size_t, struct mime_out *, size_t *);
static bool	 mime_word_text(struct mime_word *, char, const char *, size_t);
static bool	 mime_word_put(struct mime_word *, const unsigned char *, size_t);
static bool	 mime_word_end(struct mime_word *);
static int	 mime_b64_value(unsigned char);
static int	 mime_hex_value(unsigned char);
static size_t	 mime_line_end(const char *, size_t, size_t, size_t *);

static const unsigned char mime_fffd[3] = { 0xef, 0xbf, 0xbd };

/* ------------------------------------------------------------------------
 * Header block collection.
 */

void
mime_hdr_init(struct mime_hdr_parser *p)
{
	/* The 64 KiB buffer is left alone: only buf[0..len) is ever read. */
	p->len = 0;
	p->done = false;
	p->last_byte = -1;
	p->prev_byte = -1;
}

void
mime_hdr_feed(struct mime_hdr_parser *p, const char *data, size_t len)
{
	const char *nl;
	size_t n, room;
	int b1, b2;

	while (len > 0 && !p->done) {
		nl = memchr(data, '\n', len);
		n = nl != NULL ? (size_t)(nl - data) + 1 : len;
		room = MIME_HDR_MAX - p->len;
		if (n > room) {
			/* Out of room mid-line: keep what fits, stop looking. */
			memcpy(p->buf + p->len, data, room);
			p->len += room;
			p->done = true;
			return;
		}
		memcpy(p->buf + p->len, data, n);
		p->len += n;
		if (nl != NULL) {
			/* The two bytes before this LF, possibly from earlier
			 * chunks: the line is empty if they are "", "\r",
			 * i.e. the previous line ended right before. */
			b1 = n >= 2 ? (unsigned char)data[n - 2] : p->last_byte;
			b2 = n >= 3 ? (unsigned char)data[n - 3] : n == 2 ? p->last_byte : p->prev_byte;
			if (b1 == -1 || b1 == '\n' || (b1 == '\r' && (b2 == -1 || b2 == '\n')))
				p->done = true;
		}
		p->prev_byte = n >= 2 ? (unsigned char)data[n - 2] : p->last_byte;
		p->last_byte = (unsigned char)data[n - 1];
		if (p->len == MIME_HDR_MAX)
			p->done = true;
		data += n;
		len -= n;
	}
}

/* ------------------------------------------------------------------------
 * Summary.
 */

void
mime_hdr_summarise(const struct mime_hdr_parser *p, struct mime_summary *out)
{
	static const struct {
		const char *name;
		int flags;
	} fields[] = {
		{ "subject", MIME_F_DECODE | MIME_F_UNFOLD | MIME_F_TRIM },
		{ "from", MIME_F_DECODE | MIME_F_UNFOLD | MIME_F_TRIM },
		{ "to", MIME_F_DECODE | MIME_F_UNFOLD | MIME_F_TRIM },
		{ "message-id", MIME_F_UNFOLD | MIME_F_TRIM },
		{ "date", MIME_F_UNFOLD | MIME_F_TRIM },
	};
	char *dst[] = { out->subject, out->from, out->to, out->message_id, out->date };
	bool seen[sizeof(fields) / sizeof(fields[0])] = { false };
	const char *buf = p->buf, *colon;
	size_t len = p->len < MIME_HDR_MAX ? p->len : MIME_HDR_MAX;
	size_t pos = 0, eol, cend, name_end, vend, next, f, nf = sizeof(fields) / sizeof(fields[0]);
	struct mime_out o;

	for (f = 0; f < nf; f++)
		dst[f][0] = '\0';
	while (pos < len) {
		eol = mime_line_end(buf, len, pos, &cend);
		next = eol < len ? eol + 1 : len;
		if (cend == pos)
			break;	/* the empty line: the body follows */
		/* Continuation lines of headers we skip land here too. */
		if (buf[pos] == ' ' || buf[pos] == '\t' ||
		    (colon = memchr(buf + pos, ':', cend - pos)) == NULL) {
			pos = next;
			continue;
		}
		/* RFC 5322 obsolete syntax allows white space before the colon;
		 * an mbox "From " line has a space inside and never matches. */
		name_end = (size_t)(colon - buf);
		while (name_end > pos && (buf[name_end - 1] == ' ' || buf[name_end - 1] == '\t'))
			name_end--;
		for (f = 0; f < nf; f++)
			if (mime_name_eq(buf + pos, name_end - pos, fields[f].name))
				break;
		if (f == nf || seen[f]) {
			pos = next;
			continue;
		}
		vend = cend;
		while (next < len && (buf[next] == ' ' || buf[next] == '\t')) {
			eol = mime_line_end(buf, len, next, &vend);
			next = eol < len ? eol + 1 : len;
		}
		seen[f] = true;
		mime_out_init(&o, dst[f], MIME_VALUE_MAX, (fields[f].flags & MIME_F_TRIM) != 0);
		mime_decode_value(colon + 1, vend - (size_t)(colon + 1 - buf), fields[f].flags, &o);
		mime_out_finish(&o);
		pos = next;
	}
}

/* Index of the LF ending the line at `pos` (or `len`); *cend gets the end
 * of its content, without the LF and one CR before it. */
static size_t
mime_line_end(const char *buf, size_t len, size_t pos, size_t *cend)
{
	const char *nl = memchr(buf + pos, '\n', len - pos);
	size_t eol = nl != NULL ? (size_t)(nl - buf) : len;

	*cend = eol > pos && buf[eol - 1] == '\r' ? eol - 1 : eol;
	return eol;
}

/* ------------------------------------------------------------------------
 * RFC 2047 decoding.
 */

size_t
mime_decode_2047(const char *in, size_t len, char *out, size_t outsz)
{
	struct mime_out o;

	mime_out_init(&o, out, outsz, false);
	mime_decode_value(in, len, MIME_F_DECODE | MIME_F_UNFOLD, &o);
	return mime_out_finish(&o);
}

/*
 * Decode one header value into `o`.  Encoded words are recognised even
 * when glued to other text, as mail readers do, since senders get the
 * RFC's spacing rules wrong far more often than "=?" appears in a real
 * subject by accident.  White space is dropped only between two words that
 * both decoded, so a word kept as written keeps its spacing.
 */
static void
mime_decode_value(const char *in, size_t len, int flags, struct mime_out *o)
{
	bool decode = (flags & MIME_F_DECODE) != 0, after_word = false;
	size_t i = 0, j, used;

	while (i < len && !o->full) {
		if (mime_is_lwsp(in[i])) {
			for (j = i + 1; j < len && mime_is_lwsp(in[j]); j++)
				;
			if (after_word && j + 1 < len && in[j] == '=' && in[j + 1] == '?') {
				if (mime_word_decode(in + j, len - j, o, &used)) {
					i = j + used;
					continue;
				}
				mime_space_emit(in + i, j - i, flags, o);
				mime_out_byte(o, '=');
				i = j + 1;
			} else {
				mime_space_emit(in + i, j - i, flags, o);
				i = j;
			}
			after_word = false;
		} else if (decode && in[i] == '=' && i + 1 < len && in[i + 1] == '?') {
			if (mime_word_decode(in + i, len - i, o, &used)) {
				i += used;
				after_word = true;
				continue;
			}
			mime_out_byte(o, '=');
			i++;
			after_word = false;
		} else {
			mime_out_byte(o, (unsigned char)in[i++]);
			after_word = false;
		}
	}
}

/* Write a run of linear white space, without its line breaks when
 * unfolding; a lone CR is a control character and becomes a space. */
static void
mime_space_emit(const char *s, size_t n, int flags, struct mime_out *o)
{
	size_t k;

	for (k = 0; k < n; k++) {
		if ((flags & MIME_F_UNFOLD) != 0 &&
		    (s[k] == '\n' || (s[k] == '\r' && k + 1 < n && s[k + 1] == '\n')))
			continue;
		mime_out_byte(o, (unsigned char)s[k]);
	}
}

/*
 * Decode the encoded word at the start of `in` ("=?charset[*lang]?B|Q?
 * text?=") into `o`, and set *used to its length.  Returns false, with `o`
 * exactly as it was, when the word is malformed or cannot be converted.
 */
static bool
mime_word_decode(const char *in, size_t len, struct mime_out *o, size_t *used)
{
	struct mime_word w;
	struct mime_out saved = *o;
	char charset[MIME_CHARSET_MAX + 1];
	size_t k, cs_len, text, end;
	char enc;
	bool ok;

	if (len < 2 || in[0] != '=' || in[1] != '?')
		return false;
	for (k = 2; k < len && k - 2 <= MIME_CHARSET_MAX && mime_is_token((unsigned char)in[k]); k++)
		;
	if (k >= len || in[k] != '?' || k - 2 > MIME_CHARSET_MAX)
		return false;
	/* RFC 2231 section 5: "charset*language". */
	for (cs_len = 0; 2 + cs_len < k && in[2 + cs_len] != '*'; cs_len++)
		;
	if (cs_len == 0 || k + 3 > len || in[k + 2] != '?')
		return false;
	enc = mime_lower(in[k + 1]);
	if (enc != 'b' && enc != 'q')
		return false;
	text = k + 3;
	/* Encoded text ends at the first '?', and can hold no space or
	 * control character; 8-bit bytes are tolerated for broken Q words. */
	for (end = text; end < len && in[end] != '?'; end++)
		if ((unsigned char)in[end] <= 0x20 || in[end] == 0x7f)
			return false;
	if (end + 1 >= len || in[end + 1] != '=')
		return false;

	memcpy(charset, in + 2, cs_len);
	charset[cs_len] = '\0';
	w.o = o;
	w.cs = mime_charset_kind(charset, cs_len);
	w.ncarry = 0;
	w.cd = (iconv_t)-1;
	if (w.cs == MIME_CS_ICONV && (w.cd = iconv_open("UTF-8", charset)) == (iconv_t)-1)
		return false;
	ok = mime_word_text(&w, enc, in + text, end - text) && mime_word_end(&w);
	if (w.cd != (iconv_t)-1)
		iconv_close(w.cd);
	if (!ok) {
		*o = saved;
		return false;
	}
	*used = end + 2;
	return true;
}

/* Undo the B or Q encoding of `s`, passing the bytes on in chunks. */
static bool
mime_word_text(struct mime_word *w, char enc, const char *s, size_t n)
{
	unsigned char chunk[MIME_CHUNK];
	size_t i, nc = 0;
	unsigned int acc = 0, bits = 0;
	bool pad = false;
	int v, h, l;

	for (i = 0; i < n && !w->o->full; i++) {
		if (enc == 'q') {
			if (s[i] == '_')
				chunk[nc++] = ' ';
			else if (s[i] != '=')
				chunk[nc++] = (unsigned char)s[i];
			else if (i + 2 < n && (h = mime_hex_value((unsigned char)s[i + 1])) >= 0 &&
			    (l = mime_hex_value((unsigned char)s[i + 2])) >= 0) {
				chunk[nc++] = (unsigned char)(h << 4 | l);
				i += 2;
			} else
				return false;
		} else {
			if (s[i] == '=') {
				pad = true;
				continue;
			}
			if (pad || (v = mime_b64_value((unsigned char)s[i])) < 0)
				return false;
			acc = (acc << 6 | (unsigned int)v) & 0xffffff;
			bits += 6;
			if (bits >= 8) {
				bits -= 8;
				chunk[nc++] = (unsigned char)(acc >> bits);
			}
		}
		if (nc == sizeof(chunk)) {
			if (!mime_word_put(w, chunk, nc))
				return false;
			nc = 0;
		}
	}
	/* Leftover base64 bits (missing padding) are dropped, not fatal:
	 * what decoded so far is still what the sender meant. */
	return mime_word_put(w, chunk, nc);
}

/* Convert decoded bytes from the word's charset into the writer. */
static bool
mime_word_put(struct mime_word *w, const unsigned char *s, size_t n)
{
	char ibuf[MIME_CARRY_MAX + MIME_CHUNK], obuf[MIME_CHUNK];
	char *ip, *op;
	size_t i, il, ol, r;

	switch (w->cs) {
	case MIME_CS_UTF8:
		for (i = 0; i < n; i++)
			mime_out_byte(w->o, s[i]);
		return true;
	case MIME_CS_LATIN1:
		for (i = 0; i < n; i++) {
			if (s[i] < 0x80) {
				mime_out_byte(w->o, s[i]);
			} else {
				mime_out_byte(w->o, (unsigned char)(0xc0 | s[i] >> 6));
				mime_out_byte(w->o, (unsigned char)(0x80 | (s[i] & 0x3f)));
			}
		}
		return true;
	case MIME_CS_ICONV:
		break;
	}
	if (n > MIME_CHUNK)
		return false;
	memcpy(ibuf, w->carry, w->ncarry);
	memcpy(ibuf + w->ncarry, s, n);
	ip = ibuf;
	il = w->ncarry + n;
	w->ncarry = 0;
	while (il > 0 && !w->o->full) {
		op = obuf;
		ol = sizeof(obuf);
		r = iconv(w->cd, &ip, &il, &op, &ol);
		mime_out_bytes(w->o, obuf, (size_t)(op - obuf));
		if (r != (size_t)-1)
			break;
		if (errno == E2BIG && op != obuf)
			continue;
		/* A character cut by the chunk boundary: finish it next time. */
		if (errno == EINVAL && il <= sizeof(w->carry)) {
			memcpy(w->carry, ip, il);
			w->ncarry = il;
			break;
		}
		return false;
	}
	return true;
}

/* End of the word: a character left incomplete is a conversion failure;
 * stateful charsets (ISO-2022-JP) get their shift state flushed. */
static bool
mime_word_end(struct mime_word *w)
{
	char obuf[MIME_CHUNK], *op = obuf;
	size_t ol = sizeof(obuf);

	if (w->cs != MIME_CS_ICONV || w->o->full)
		return true;
	if (w->ncarry > 0)
		return false;
	if (iconv(w->cd, NULL, NULL, &op, &ol) == (size_t)-1)
		return false;
	mime_out_bytes(w->o, obuf, (size_t)(op - obuf));
	return true;
}

static enum mime_cs
mime_charset_kind(const char *cs, size_t len)
{
	static const struct {
		const char *name;
		enum mime_cs kind;
	} native[] = {
		{ "utf-8", MIME_CS_UTF8 },
		{ "utf8", MIME_CS_UTF8 },
		{ "us-ascii", MIME_CS_UTF8 },
		{ "ascii", MIME_CS_UTF8 },
		{ "iso-8859-1", MIME_CS_LATIN1 },
		{ "iso8859-1", MIME_CS_LATIN1 },
		{ "iso_8859-1", MIME_CS_LATIN1 },
		{ "latin1", MIME_CS_LATIN1 },
	};
	size_t i;

	for (i = 0; i < sizeof(native) / sizeof(native[0]); i++)
		if (mime_name_eq(cs, len, native[i].name))
			return native[i].kind;
	return MIME_CS_ICONV;
}

/* ------------------------------------------------------------------------
 * The sanitising writer.
 */

static void
mime_out_init(struct mime_out *o, char *buf, size_t size, bool trim)
{
	o->buf = buf;
	o->size = size;
	o->len = 0;
	o->npend = 0;
	o->need = 0;
	o->full = size == 0;
	o->trim = trim;
}

/* Append one whole character, or stop for good if it does not fit: that
 * is what keeps truncation on a character boundary. */
static void
mime_out_put(struct mime_out *o, const unsigned char *s, size_t n)
{
	if (o->full)
		return;
	if (o->trim && o->len == 0 && n == 1 && s[0] == ' ')
		return;
	if (n > o->size - 1 - o->len) {
		o->full = true;
		return;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
}

/*
 * Feed one byte of supposed UTF-8.  Control characters (C0, DEL and C1)
 * become a space; each maximal invalid subsequence becomes one U+FFFD, as
 * Unicode recommends, so a stray Latin-1 byte costs one replacement.
 */
static void
mime_out_byte(struct mime_out *o, unsigned char c)
{
	static const unsigned char space = ' ';

	if (o->npend > 0) {
		if (mime_utf8_cont_ok(o->pend[0], o->npend, c)) {
			o->pend[o->npend++] = c;
			if (o->npend < o->need)
				return;
			o->npend = 0;
			if (o->need == 2 && o->pend[0] == 0xc2 && o->pend[1] < 0xa0)
				mime_out_put(o, &space, 1);
			else
				mime_out_put(o, o->pend, o->need);
			return;
		}
		o->npend = 0;
		mime_out_put(o, mime_fffd, sizeof(mime_fffd));
	}
	if (c < 0x20 || c == 0x7f) {
		mime_out_put(o, &space, 1);
	} else if (c < 0x80) {
		mime_out_put(o, &c, 1);
	} else if (c >= 0xc2 && c <= 0xf4) {
		o->pend[0] = c;
		o->npend = 1;
		o->need = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
	} else {
		mime_out_put(o, mime_fffd, sizeof(mime_fffd));
	}
}

static void
mime_out_bytes(struct mime_out *o, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n && !o->full; i++)
		mime_out_byte(o, (unsigned char)s[i]);
}

/* NUL-terminate (when there is room at all) and return the length. */
static size_t
mime_out_finish(struct mime_out *o)
{
	if (o->npend > 0) {
		o->npend = 0;
		mime_out_put(o, mime_fffd, sizeof(mime_fffd));
	}
	if (o->trim)
		while (o->len > 0 && o->buf[o->len - 1] == ' ')
			o->len--;
	if (o->size > 0)
		o->buf[o->len] = '\0';
	return o->len;
}

/* Whether `c` may follow `lead` at position `pos` of a sequence; the
 * narrower second-byte ranges exclude overlongs, surrogates and code
 * points past U+10FFFF. */
static bool
mime_utf8_cont_ok(unsigned char lead, size_t pos, unsigned char c)
{
	unsigned char lo = 0x80, hi = 0xbf;

	if (pos == 1) {
		if (lead == 0xe0)
			lo = 0xa0;
		else if (lead == 0xed)
			hi = 0x9f;
		else if (lead == 0xf0)
			lo = 0x90;
		else if (lead == 0xf4)
			hi = 0x8f;
	}
	return c >= lo && c <= hi;
}

/* ------------------------------------------------------------------------
 * Small helpers.  ASCII-only on purpose: <ctype.h> depends on the locale.
 */

static bool
mime_is_lwsp(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static char
mime_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive match of s[0..len) against lower-case `name`. */
static bool
mime_name_eq(const char *s, size_t len, const char *name)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (name[i] == '\0' || mime_lower(s[i]) != name[i])
			return false;
	return name[len] == '\0';
}

/* RFC 2047 token: no space, control, 8-bit or especial.  '*' stays in,
 * for the RFC 2231 language suffix; '/' staying out also keeps iconv's
 * "//TRANSLIT"-style suffixes away from iconv_open(). */
static bool
mime_is_token(unsigned char c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	return strchr("()<>@,;:\"/[]?.=", c) == NULL;
}

static int
mime_b64_value(unsigned char c)
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

static int
mime_hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}
