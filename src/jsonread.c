/*
 * jsonread.c - see jsonread.h.
 *
 * Validation and decoding are two passes: json_valid (json.c, shared with
 * the writer's callers) decides whether the text is JSON at all, so the
 * decoder below only has to walk a document already known to be
 * well-formed.  It still checks every bound itself, so that a mistake in
 * either pass shows up as "not an object", never as a read out of bounds.
 *
 * Every decoded string is no longer than its encoded form (an escape
 * never decodes to more bytes than it takes, and the closing quote leaves
 * room for the NUL), so one buffer of the text's length holds them all.
 */
#include "smtptap/jsonread.h"

#include <stdlib.h>
#include <string.h>

#include "smtptap/json.h"

/* A walk over the validated text, and where decoded strings go. */
struct jsonread_cur {
	const unsigned char *p;
	size_t len, i;
	char *out;
	size_t outn, outcap;
};

/* The longest number read without a heap copy for strtod. */
#define JSONREAD_NUM_INLINE 64

static void jsonread_space(struct jsonread_cur *c);
static bool jsonread_at(const struct jsonread_cur *c, unsigned char ch);
static int jsonread_string(struct jsonread_cur *c, const char **s, size_t *len);
static int jsonread_escape(struct jsonread_cur *c, uint32_t *cp);
static uint32_t jsonread_hex4(const unsigned char *p);
static bool jsonread_put(struct jsonread_cur *c, const void *p, size_t n);
static bool jsonread_put_utf8(struct jsonread_cur *c, uint32_t cp);
static int jsonread_number(struct jsonread_cur *c, struct jsonread_value *v);
static int jsonread_skip_nested(struct jsonread_cur *c);
static int jsonread_value(struct jsonread_cur *c, struct jsonread_value *v);
static int jsonread_add(struct jsonread_obj *o, size_t *cap, const char *key, size_t keylen,
			const struct jsonread_value *v);
static int jsonread_parse(struct jsonread_obj *o, const char *text, size_t len);

int
jsonread_object(struct jsonread_obj *o, const char *text, size_t len)
{
	int r;

	memset(o, 0, sizeof(*o));
	if ((r = jsonread_parse(o, text, len)) != JSONREAD_OK)
		jsonread_free(o); /* no half-read object: empty on every error */
	return r;
}

/* The work of jsonread_object, into a zeroed *o; may leave part of the
 * members behind on error. */
static int
jsonread_parse(struct jsonread_obj *o, const char *text, size_t len)
{
	struct jsonread_cur c;
	struct jsonread_value v;
	const char *key;
	size_t keylen, cap = 0;
	int r;

	if (text == NULL || len == 0 || !json_valid(text, len))
		return JSONREAD_EINVAL;
	memset(&c, 0, sizeof(c));
	c.p = (const unsigned char *)text;
	c.len = len;
	jsonread_space(&c);
	if (!jsonread_at(&c, '{'))
		return JSONREAD_EINVAL;
	c.i++;
	if ((o->buf = malloc(len + 1)) == NULL)
		return JSONREAD_ENOMEM;
	c.out = o->buf;
	c.outcap = len + 1;
	jsonread_space(&c);
	if (jsonread_at(&c, '}'))
		return JSONREAD_OK;
	for (;;) {
		jsonread_space(&c);
		if ((r = jsonread_string(&c, &key, &keylen)) != JSONREAD_OK)
			return r;
		jsonread_space(&c);
		if (!jsonread_at(&c, ':'))
			return JSONREAD_EINVAL;
		c.i++;
		jsonread_space(&c);
		if ((r = jsonread_value(&c, &v)) != JSONREAD_OK)
			return r;
		if ((r = jsonread_add(o, &cap, key, keylen, &v)) != JSONREAD_OK)
			return r;
		jsonread_space(&c);
		if (jsonread_at(&c, '}'))
			return JSONREAD_OK;
		if (!jsonread_at(&c, ','))
			return JSONREAD_EINVAL;
		c.i++;
	}
}

const struct jsonread_value *
jsonread_get(const struct jsonread_obj *o, const char *key)
{
	size_t n = strlen(key), k;

	for (k = o->n; k > 0; k--)
		if (o->m[k - 1].keylen == n && memcmp(o->m[k - 1].key, key, n) == 0)
			return &o->m[k - 1].v;
	return NULL;
}

const char *
jsonread_get_string(const struct jsonread_obj *o, const char *key, size_t *len)
{
	const struct jsonread_value *v = jsonread_get(o, key);

	if (v == NULL || v->type != JSONREAD_STRING)
		return NULL;
	if (len != NULL)
		*len = v->len;
	return v->s;
}

int
jsonread_get_bool(const struct jsonread_obj *o, const char *key)
{
	const struct jsonread_value *v = jsonread_get(o, key);

	if (v == NULL || v->type != JSONREAD_BOOL)
		return -1;
	return v->b ? 1 : 0;
}

void
jsonread_free(struct jsonread_obj *o)
{
	free(o->m);
	free(o->buf);
	memset(o, 0, sizeof(*o));
}

/* ------------------------------------------------------------------------
 * The walk.
 */

static void
jsonread_space(struct jsonread_cur *c)
{
	while (c->i < c->len && (c->p[c->i] == ' ' || c->p[c->i] == '\t' || c->p[c->i] == '\n' || c->p[c->i] == '\r'))
		c->i++;
}

static bool
jsonread_at(const struct jsonread_cur *c, unsigned char ch)
{
	return c->i < c->len && c->p[c->i] == ch;
}

static bool
jsonread_put(struct jsonread_cur *c, const void *p, size_t n)
{
	if (c->outcap - c->outn < n)
		return false;
	memcpy(c->out + c->outn, p, n);
	c->outn += n;
	return true;
}

static bool
jsonread_put_utf8(struct jsonread_cur *c, uint32_t cp)
{
	unsigned char b[4];
	size_t n;

	if (cp < 0x80) {
		b[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		b[0] = (unsigned char)(0xc0 | cp >> 6);
		b[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		b[0] = (unsigned char)(0xe0 | cp >> 12);
		b[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		b[0] = (unsigned char)(0xf0 | cp >> 18);
		b[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	return jsonread_put(c, b, n);
}

/* Four hex digits (already checked by json_valid) as a number. */
static uint32_t
jsonread_hex4(const unsigned char *p)
{
	uint32_t v = 0;
	int k;

	for (k = 0; k < 4; k++) {
		unsigned char h = p[k];

		v <<= 4;
		if (h >= '0' && h <= '9')
			v |= (uint32_t)(h - '0');
		else if (h >= 'a' && h <= 'f')
			v |= (uint32_t)(h - 'a' + 10);
		else if (h >= 'A' && h <= 'F')
			v |= (uint32_t)(h - 'A' + 10);
	}
	return v;
}

/* The escape at c->p[c->i] ('\\') as a code point; a surrogate pair is
 * one code point, a lone surrogate U+FFFD.  Advances past it. */
static int
jsonread_escape(struct jsonread_cur *c, uint32_t *cp)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *e;
	uint32_t lo;

	if (c->len - c->i < 2)
		return JSONREAD_EINVAL;
	if (c->p[c->i + 1] != 'u') {
		if (c->p[c->i + 1] == '\0' || (e = strchr(from, c->p[c->i + 1])) == NULL)
			return JSONREAD_EINVAL;
		*cp = (unsigned char)to[e - from];
		c->i += 2;
		return JSONREAD_OK;
	}
	if (c->len - c->i < 6)
		return JSONREAD_EINVAL;
	*cp = jsonread_hex4(c->p + c->i + 2);
	c->i += 6;
	if (*cp < 0xd800 || *cp > 0xdfff)
		return JSONREAD_OK;
	if (*cp <= 0xdbff && c->len - c->i >= 6 && c->p[c->i] == '\\' && c->p[c->i + 1] == 'u') {
		lo = jsonread_hex4(c->p + c->i + 2);
		if (lo >= 0xdc00 && lo <= 0xdfff) {
			*cp = 0x10000 + ((*cp - 0xd800) << 10) + (lo - 0xdc00);
			c->i += 6;
			return JSONREAD_OK;
		}
	}
	*cp = 0xfffd;
	return JSONREAD_OK;
}

/* The string at c->p[c->i] ('"'), decoded into c->out. */
static int
jsonread_string(struct jsonread_cur *c, const char **s, size_t *len)
{
	size_t start = c->outn, run;
	uint32_t cp;
	int r;

	if (!jsonread_at(c, '"'))
		return JSONREAD_EINVAL;
	c->i++;
	for (;;) {
		run = c->i;
		while (c->i < c->len && c->p[c->i] != '"' && c->p[c->i] != '\\')
			c->i++;
		if (!jsonread_put(c, c->p + run, c->i - run))
			return JSONREAD_EINVAL;
		if (c->i >= c->len)
			return JSONREAD_EINVAL;
		if (c->p[c->i] == '"')
			break;
		if ((r = jsonread_escape(c, &cp)) != JSONREAD_OK)
			return r;
		if (!jsonread_put_utf8(c, cp))
			return JSONREAD_EINVAL;
	}
	c->i++;
	if (!jsonread_put(c, "", 1))
		return JSONREAD_EINVAL;
	*s = c->out + start;
	*len = c->outn - start - 1;
	return JSONREAD_OK;
}

/* A number: its int64_t value when it is an integer that fits, and what
 * strtod makes of it (the locale is "C": smtptap never sets another). */
static int
jsonread_number(struct jsonread_cur *c, struct jsonread_value *v)
{
	char tmp[JSONREAD_NUM_INLINE], *copy;
	size_t start = c->i, n, k;
	uint64_t acc = 0, limit;
	bool neg, integer = true;
	unsigned char ch;

	/* json_valid checked the grammar: the token is what follows of these */
	while (c->i < c->len && strchr("0123456789+-.eE", c->p[c->i]) != NULL && c->p[c->i] != '\0') {
		ch = c->p[c->i++];
		if (ch == '.' || ch == 'e' || ch == 'E')
			integer = false;
	}
	n = c->i - start;
	if (n == 0)
		return JSONREAD_EINVAL;
	v->type = JSONREAD_NUMBER;
	neg = c->p[start] == '-';
	limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	for (k = neg ? 1 : 0; integer && k < n; k++) {
		unsigned d = (unsigned)(c->p[start + k] - '0');

		if (d > 9 || acc > (limit - d) / 10)
			integer = false;
		else
			acc = acc * 10 + d;
	}
	if (integer) {
		v->is_int = true;
		v->i = neg ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
		v->num = (double)v->i;
		return JSONREAD_OK;
	}
	copy = n < sizeof(tmp) ? tmp : malloc(n + 1);
	if (copy == NULL)
		return JSONREAD_ENOMEM;
	memcpy(copy, c->p + start, n);
	copy[n] = '\0';
	v->num = strtod(copy, NULL);
	if (copy != tmp)
		free(copy);
	return JSONREAD_OK;
}

/* Step over an object or array; the text is valid, so brackets balance
 * outside strings, and a string ends at the first unescaped quote. */
static int
jsonread_skip_nested(struct jsonread_cur *c)
{
	size_t depth = 0;
	unsigned char ch;

	while (c->i < c->len) {
		ch = c->p[c->i++];
		if (ch == '"') {
			while (c->i < c->len && c->p[c->i] != '"')
				c->i += c->p[c->i] == '\\' ? 2 : 1;
			if (c->i >= c->len)
				return JSONREAD_EINVAL;
			c->i++;
		} else if (ch == '{' || ch == '[')
			depth++;
		else if (ch == '}' || ch == ']') {
			if (depth == 0)
				return JSONREAD_EINVAL;
			if (--depth == 0)
				return JSONREAD_OK;
		}
	}
	return JSONREAD_EINVAL;
}

static int
jsonread_value(struct jsonread_cur *c, struct jsonread_value *v)
{
	memset(v, 0, sizeof(*v));
	if (c->i >= c->len)
		return JSONREAD_EINVAL;
	switch (c->p[c->i]) {
	case '"':
		v->type = JSONREAD_STRING;
		return jsonread_string(c, &v->s, &v->len);
	case 't':
	case 'f':
		v->type = JSONREAD_BOOL;
		v->b = c->p[c->i] == 't';
		c->i += v->b ? 4 : 5;
		return c->i <= c->len ? JSONREAD_OK : JSONREAD_EINVAL;
	case 'n':
		v->type = JSONREAD_NULL;
		c->i += 4;
		return c->i <= c->len ? JSONREAD_OK : JSONREAD_EINVAL;
	case '{':
	case '[':
		v->type = JSONREAD_NESTED;
		return jsonread_skip_nested(c);
	default:
		return jsonread_number(c, v);
	}
}

static int
jsonread_add(struct jsonread_obj *o, size_t *cap, const char *key, size_t keylen, const struct jsonread_value *v)
{
	struct jsonread_member *nm;
	size_t ncap;

	if (o->n == *cap) {
		if (*cap >= JSONREAD_MEMBERS_MAX)
			return JSONREAD_EINVAL;
		ncap = *cap == 0 ? 16 : *cap * 2;
		if (ncap > JSONREAD_MEMBERS_MAX)
			ncap = JSONREAD_MEMBERS_MAX;
		if ((nm = realloc(o->m, ncap * sizeof(*nm))) == NULL)
			return JSONREAD_ENOMEM;
		o->m = nm;
		*cap = ncap;
	}
	o->m[o->n].key = key;
	o->m[o->n].keylen = keylen;
	o->m[o->n].v = *v;
	o->n++;
	return JSONREAD_OK;
}
