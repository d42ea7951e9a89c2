/*
 * json.c - streaming JSON writer and validator, see json.h.
 *
 * Output goes through stdio (or into the memory buffer) one piece at a
 * time; runs of bytes that need no escaping are written with a single
 * fwrite() since strings may be long (a multi-line EHLO reply, a redacted
 * AUTH line, a JSON blob).  json_put() is the one place that knows where
 * the text goes.
 */
#include "smtptap/json.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

struct json_scan {
	const unsigned char *p;
	size_t len, i;
};

static void json_fail(struct json *j, int err);
static void json_put(struct json *j, const void *p, size_t len);
static int json_mem_grow(struct json *j, size_t need);
static void json_newline(struct json *j, int depth);
static void json_separate(struct json *j);
static bool json_value_begin(struct json *j);
static void json_value_end(struct json *j);
static void json_container_begin(struct json *j, bool is_object);
static void json_container_end(struct json *j, bool is_object);
static void json_put_string(struct json *j, const unsigned char *p, size_t len);
static void json_scan_space(struct json_scan *s);
static bool json_scan_value(struct json_scan *s, int depth);
static bool json_scan_string(struct json_scan *s);
static bool json_scan_number(struct json_scan *s);
static bool json_scan_word(struct json_scan *s, const char *word);
static bool json_is_digit(unsigned char c);
static bool json_is_hex(unsigned char c);

void
json_init(struct json *j, FILE *f, int levels)
{
	memset(j, 0, offsetof(struct json, obuf));
	j->f = f;
	j->levels = levels;
}

void
json_init_mem(struct json *j, size_t max, int levels)
{
	memset(j, 0, offsetof(struct json, obuf));
	j->max = max;
	j->levels = levels;
}

const char *
json_mem_data(const struct json *j, size_t *len)
{
	*len = j->len;
	return j->buf;
}

char *
json_mem_take(struct json *j, size_t *len)
{
	char *p;

	/* Room for the NUL is made here, past the text (and past max:
	 * the bound is on the text). */
	if (j->buf == NULL || (j->len == j->cap && json_mem_grow(j, 1) < 0)) {
		json_mem_free(j);
		*len = 0;
		return NULL;
	}
	p = j->buf;
	p[j->len] = '\0';
	*len = j->len;
	j->buf = NULL;
	j->len = j->cap = 0;
	return p;
}

void
json_mem_free(struct json *j)
{
	free(j->buf);
	j->buf = NULL;
	j->len = j->cap = 0;
}

/* Make room for need more bytes in the buffer (doubling, from 4 KiB).
 * Returns 0, or -1 when memory is short. */
static int
json_mem_grow(struct json *j, size_t need)
{
	size_t cap = j->cap == 0 ? 4096 : j->cap;
	char *p;

	if (need > SIZE_MAX - j->len)
		return -1;
	while (cap - j->len < need) {
		if (cap > SIZE_MAX / 2)
			return -1;
		cap *= 2;
	}
	if (cap == j->cap)
		return 0;
	if ((p = realloc(j->buf, cap)) == NULL)
		return -1;
	j->buf = p;
	j->cap = cap;
	return 0;
}

/* The first failure wins: later ones are usually its consequences. */
static void
json_fail(struct json *j, int err)
{
	if (!j->failed) {
		j->failed = true;
		j->err = err;
	}
}

static void
json_put(struct json *j, const void *p, size_t len)
{
	if (j->failed || len == 0)
		return;
	if (j->f != NULL) {
		if (len > sizeof(j->obuf) - j->olen && json_flush(j) < 0)
			return;
		if (len >= sizeof(j->obuf)) {
			/* a long string: straight out */
			if (fwrite(p, 1, len, j->f) != len)
				json_fail(j, errno != 0 ? errno : EIO);
			return;
		}
		memcpy(j->obuf + j->olen, p, len);
		j->olen += len;
		return;
	}
	if (j->max != 0 && (len > j->max || j->len > j->max - len)) {
		json_fail(j, EMSGSIZE);
		return;
	}
	if (j->cap - j->len < len && json_mem_grow(j, len) < 0) {
		json_fail(j, ENOMEM);
		return;
	}
	memcpy(j->buf + j->len, p, len);
	j->len += len;
}

/* A line break, then the indentation of nesting level `depth`. */
static void
json_newline(struct json *j, int depth)
{
	static const char spaces[] = "                                ";
	int n;

	json_put(j, "\n", 1);
	for (n = depth * 2; n > 0; n -= (int)(sizeof(spaces) - 1))
		json_put(j, spaces, n < (int)(sizeof(spaces) - 1) ? (size_t)n : sizeof(spaces) - 1);
}

/* Before a member or element of the innermost open container. */
static void
json_separate(struct json *j)
{
	bool first = j->empty[j->depth];

	j->empty[j->depth] = false;
	if (!first)
		json_put(j, ",", 1);
	if (j->depth <= j->levels)
		json_newline(j, j->depth);
	else if (!first && j->levels > 0)
		json_put(j, " ", 1);
}

/*
 * Before any value: check it is allowed here and write the separator.
 * Returns false when nothing should be written (misuse or an earlier
 * failure).
 */
static bool
json_value_begin(struct json *j)
{
	if (j->failed)
		return false;
	if (j->after_key) {
		j->after_key = false;
		return true;
	}
	if (j->depth == 0) {
		if (j->done) {
			json_fail(j, 0); /* one document, one value */
			return false;
		}
		return true;
	}
	if (j->is_object[j->depth]) {
		json_fail(j, 0); /* a value where a key is due */
		return false;
	}
	json_separate(j);
	return !j->failed;
}

static void
json_value_end(struct json *j)
{
	if (j->depth == 0)
		j->done = true;
}

static void
json_container_begin(struct json *j, bool is_object)
{
	if (!json_value_begin(j))
		return;
	if (j->depth == JSON_DEPTH_MAX) {
		json_fail(j, 0);
		return;
	}
	json_put(j, is_object ? "{" : "[", 1);
	j->depth++;
	j->is_object[j->depth] = is_object;
	j->empty[j->depth] = true;
}

static void
json_container_end(struct json *j, bool is_object)
{
	if (j->failed)
		return;
	if (j->depth == 0 || j->is_object[j->depth] != is_object || j->after_key) {
		json_fail(j, 0);
		return;
	}
	/* The closing bracket goes on its own line, at the opening's
	 * indentation, when the members did. */
	if (!j->empty[j->depth] && j->depth <= j->levels)
		json_newline(j, j->depth - 1);
	j->depth--;
	json_put(j, is_object ? "}" : "]", 1);
	json_value_end(j);
}

void
json_object_begin(struct json *j)
{
	json_container_begin(j, true);
}

void
json_object_end(struct json *j)
{
	json_container_end(j, true);
}

void
json_array_begin(struct json *j)
{
	json_container_begin(j, false);
}

void
json_array_end(struct json *j)
{
	json_container_end(j, false);
}

void
json_key(struct json *j, const char *key)
{
	if (j->failed)
		return;
	if (j->depth == 0 || !j->is_object[j->depth] || j->after_key) {
		json_fail(j, 0);
		return;
	}
	json_separate(j);
	json_put_string(j, (const unsigned char *)key, strlen(key));
	json_put(j, ": ", j->levels > 0 ? 2 : 1);
	j->after_key = true;
}

void
json_string(struct json *j, const char *s)
{
	if (s == NULL) {
		json_null(j);
		return;
	}
	json_string_len(j, s, strlen(s));
}

void
json_string_len(struct json *j, const void *p, size_t len)
{
	if (!json_value_begin(j))
		return;
	json_put_string(j, p, len);
	json_value_end(j);
}

/*
 * Write p[0..len) as a quoted JSON string.  Bytes that need no escaping
 * are gathered into runs: `run` is where the current one starts.
 */
static void
json_put_string(struct json *j, const unsigned char *p, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i = 0, run = 0, n;
	uint32_t cp;
	char esc[8];

	json_put(j, "\"", 1);
	while (i < len) {
		if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') {
			i++;
			continue;
		}
		n = json_utf8_decode(p + i, len - i, &cp);
		if (cp != JSON_UTF8_BAD && cp >= 0x80 && cp != 0x2028 && cp != 0x2029) {
			i += n;
			continue;
		}
		json_put(j, p + run, i - run);
		if (cp == '"' || cp == '\\') {
			esc[0] = '\\';
			esc[1] = (char)cp;
			json_put(j, esc, 2);
		} else if (cp == JSON_UTF8_BAD)
			json_put(j, "\\ufffd", 6);
		else {
			/* Control characters, U+2028 and U+2029. */
			memcpy(esc, "\\u", 2);
			esc[2] = hex[(cp >> 12) & 0xf];
			esc[3] = hex[(cp >> 8) & 0xf];
			esc[4] = hex[(cp >> 4) & 0xf];
			esc[5] = hex[cp & 0xf];
			json_put(j, esc, 6);
		}
		i += n;
		run = i;
	}
	json_put(j, p + run, i - run);
	json_put(j, "\"", 1);
}

void
json_int(struct json *j, int64_t v)
{
	char buf[32];
	int n;

	if (!json_value_begin(j))
		return;
	n = snprintf(buf, sizeof(buf), "%" PRId64, v);
	json_put(j, buf, (size_t)n);
	json_value_end(j);
}

void
json_bool(struct json *j, bool v)
{
	if (!json_value_begin(j))
		return;
	json_put(j, v ? "true" : "false", v ? 4 : 5);
	json_value_end(j);
}

void
json_null(struct json *j)
{
	if (!json_value_begin(j))
		return;
	json_put(j, "null", 4);
	json_value_end(j);
}

void
json_raw(struct json *j, const char *text)
{
	if (!json_value_begin(j))
		return;
	json_put(j, text, strlen(text));
	json_value_end(j);
}

void
json_kv_string(struct json *j, const char *key, const char *s)
{
	json_key(j, key);
	json_string(j, s);
}

void
json_kv_int(struct json *j, const char *key, int64_t v)
{
	json_key(j, key);
	json_int(j, v);
}

void
json_kv_bool(struct json *j, const char *key, bool v)
{
	json_key(j, key);
	json_bool(j, v);
}

void
json_kv_null(struct json *j, const char *key)
{
	json_key(j, key);
	json_null(j);
}

int
json_flush(struct json *j)
{
	size_t n = j->olen;

	/* What was written before a misuse still goes out (as it did
	 * unbuffered); nothing more after a write error. */
	j->olen = 0;
	if (j->f != NULL && n > 0 && !(j->failed && j->err != 0) && fwrite(j->obuf, 1, n, j->f) != n) {
		if (!j->failed) {
			j->failed = true;
			j->err = errno != 0 ? errno : EIO;
		}
	}
	return j->failed ? -1 : 0;
}

int
json_finish(struct json *j)
{
	/* A document that never got its value, or left something open. */
	if (j->depth != 0 || j->after_key || !j->done)
		json_fail(j, 0);
	json_put(j, "\n", 1);
	json_flush(j);
	return j->failed ? -1 : 0;
}

/* ------------------------------------------------------------------------
 * UTF-8 (Unicode 15 table 3-7: well-formed byte sequences).
 */

size_t
json_utf8_decode(const void *buf, size_t len, uint32_t *cp)
{
	const unsigned char *p = buf;
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t need, i;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		need = 1;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		need = 2;
		v = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0; /* overlong */
		else if (c == 0xed)
			hi = 0x9f; /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		need = 3;
		v = c & 0x07;
		if (c == 0xf0)
			lo = 0x90; /* overlong */
		else if (c == 0xf4)
			hi = 0x8f; /* above U+10FFFF */
	} else {
		*cp = JSON_UTF8_BAD;
		return 1;
	}
	for (i = 1; i <= need; i++) {
		if (i >= len || p[i] < lo || p[i] > hi) {
			*cp = JSON_UTF8_BAD;
			return i;
		}
		v = (v << 6) | (p[i] & 0x3f);
		lo = 0x80;
		hi = 0xbf;
	}
	*cp = v;
	return need + 1;
}

/* ------------------------------------------------------------------------
 * Validation: a recursive-descent recogniser of RFC 8259 with a depth
 * bound, used before text stored by someone else is inserted with
 * json_raw() (a broken blob must not make the whole document unparsable).
 */

bool
json_valid(const char *text, size_t len)
{
	struct json_scan s;

	s.p = (const unsigned char *)text;
	s.len = len;
	s.i = 0;
	json_scan_space(&s);
	if (!json_scan_value(&s, 0))
		return false;
	json_scan_space(&s);
	return s.i == s.len;
}

static bool
json_is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool
json_is_hex(unsigned char c)
{
	return json_is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static void
json_scan_space(struct json_scan *s)
{
	while (s->i < s->len &&
	       (s->p[s->i] == ' ' || s->p[s->i] == '\t' || s->p[s->i] == '\n' || s->p[s->i] == '\r'))
		s->i++;
}

static bool
json_scan_value(struct json_scan *s, int depth)
{
	unsigned char open, close;

	if (s->i >= s->len)
		return false;
	switch (s->p[s->i]) {
	case '"':
		return json_scan_string(s);
	case 't':
		return json_scan_word(s, "true");
	case 'f':
		return json_scan_word(s, "false");
	case 'n':
		return json_scan_word(s, "null");
	case '{':
	case '[':
		break;
	default:
		return json_scan_number(s);
	}
	if (depth == JSON_DEPTH_MAX)
		return false;
	open = s->p[s->i++];
	close = open == '{' ? '}' : ']';
	json_scan_space(s);
	if (s->i < s->len && s->p[s->i] == close) {
		s->i++;
		return true;
	}
	for (;;) {
		if (open == '{') {
			if (s->i >= s->len || s->p[s->i] != '"' || !json_scan_string(s))
				return false;
			json_scan_space(s);
			if (s->i >= s->len || s->p[s->i] != ':')
				return false;
			s->i++;
			json_scan_space(s);
		}
		if (!json_scan_value(s, depth + 1))
			return false;
		json_scan_space(s);
		if (s->i >= s->len)
			return false;
		if (s->p[s->i] == close) {
			s->i++;
			return true;
		}
		if (s->p[s->i] != ',')
			return false;
		s->i++;
		json_scan_space(s);
	}
}

static bool
json_scan_string(struct json_scan *s)
{
	uint32_t cp;
	size_t k;

	s->i++; /* opening quote */
	while (s->i < s->len) {
		unsigned char c = s->p[s->i];

		if (c == '"') {
			s->i++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c == '\\') {
			if (++s->i >= s->len)
				return false;
			c = s->p[s->i];
			if (c == 'u') {
				for (k = 1; k <= 4; k++)
					if (s->i + k >= s->len || !json_is_hex(s->p[s->i + k]))
						return false;
				s->i += 5;
			} else if (strchr("\"\\/bfnrt", c) != NULL && c != '\0')
				s->i++;
			else
				return false;
			continue;
		}
		s->i += json_utf8_decode(s->p + s->i, s->len - s->i, &cp);
		if (cp == JSON_UTF8_BAD)
			return false;
	}
	return false;
}

static bool
json_scan_number(struct json_scan *s)
{
	size_t start;

	if (s->i < s->len && s->p[s->i] == '-')
		s->i++;
	if (s->i >= s->len || !json_is_digit(s->p[s->i]))
		return false;
	if (s->p[s->i] == '0')
		s->i++;
	else
		while (s->i < s->len && json_is_digit(s->p[s->i]))
			s->i++;
	if (s->i < s->len && s->p[s->i] == '.') {
		start = ++s->i;
		while (s->i < s->len && json_is_digit(s->p[s->i]))
			s->i++;
		if (s->i == start)
			return false;
	}
	if (s->i < s->len && (s->p[s->i] == 'e' || s->p[s->i] == 'E')) {
		s->i++;
		if (s->i < s->len && (s->p[s->i] == '+' || s->p[s->i] == '-'))
			s->i++;
		start = s->i;
		while (s->i < s->len && json_is_digit(s->p[s->i]))
			s->i++;
		if (s->i == start)
			return false;
	}
	return true;
}

static bool
json_scan_word(struct json_scan *s, const char *word)
{
	size_t n = strlen(word);

	if (s->len - s->i < n || memcmp(s->p + s->i, word, n) != 0)
		return false;
	s->i += n;
	return true;
}
