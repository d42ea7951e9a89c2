/*
 * fuzz_jsonread.c - libFuzzer target for jsonread_object() (the reader of
 * the JSON records smtptap stores, which a database edited by hand can make
 * anything) and, through a round trip, the JSON writer.
 *
 * The input is parsed as it is.  Checked:
 *   - jsonread accepts only what json_valid accepts, and accepts every
 *     valid object too short to hold more than JSONREAD_MEMBERS_MAX members;
 *     an error leaves the object empty;
 *   - every decoded string and key is NUL-terminated at its length, lies in
 *     the object's buffer, and is well-formed UTF-8 (escapes decoded, lone
 *     surrogates made U+FFFD);
 *   - jsonread_get finds, for each key, the last member of that name;
 *   - writing the members back with the JSON writer gives text that
 *     json_valid accepts and that reads back to the same members (strings
 *     byte for byte, numbers exactly, nested values as nested).
 * Any violation abort()s; the input is an exact-size heap copy, so ASan
 * sees any read past its end.
 */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/json.h"
#include "smtptap/jsonread.h"

int LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static bool	fuzz_utf8_ok(const char *, size_t);
static bool	fuzz_in_buf(const struct jsonread_obj *, const char *, size_t);
static void	fuzz_check_obj(const struct jsonread_obj *);
static char	*fuzz_write(const struct jsonread_obj *, size_t *);
static bool	fuzz_same_value(const struct jsonread_value *, const struct jsonread_value *);

static bool
fuzz_utf8_ok(const char *s, size_t len)
{
	uint32_t cp;
	size_t i = 0, n;

	while (i < len) {
		n = json_utf8_decode(s + i, len - i, &cp);
		if (cp == JSON_UTF8_BAD || n == 0)
			return false;
		i += n;
	}
	return true;
}

static bool
fuzz_in_buf(const struct jsonread_obj *o, const char *p, size_t len)
{
	/* The buffer is as long as the text plus one (jsonread.c). */
	return o->buf != NULL && p >= o->buf && p[len] == '\0';
}

static void
fuzz_check_obj(const struct jsonread_obj *o)
{
	const struct jsonread_member *m;
	const struct jsonread_value *v;
	size_t k, j;

	if (o->n > JSONREAD_MEMBERS_MAX || (o->n > 0 && o->m == NULL))
		abort();
	for (k = 0; k < o->n; k++) {
		m = &o->m[k];
		if (m->key == NULL || !fuzz_in_buf(o, m->key, m->keylen) || !fuzz_utf8_ok(m->key, m->keylen))
			abort();
		switch (m->v.type) {
		case JSONREAD_STRING:
			if (m->v.s == NULL || !fuzz_in_buf(o, m->v.s, m->v.len) || !fuzz_utf8_ok(m->v.s, m->v.len))
				abort();
			break;
		case JSONREAD_NUMBER:
			if (m->v.is_int && (double)m->v.i != m->v.num && isfinite(m->v.num) &&
			    fabs(m->v.num) < 9007199254740992.0)
				abort(); /* an exact integer below 2^53 reads the same both ways */
			break;
		case JSONREAD_NULL:
		case JSONREAD_BOOL:
		case JSONREAD_NESTED:
			break;
		default:
			abort();
		}
		/* jsonread_get takes a NUL-terminated name: only for keys
		 * without a NUL inside. */
		if (strlen(m->key) != m->keylen)
			continue;
		v = jsonread_get(o, m->key);
		for (j = o->n; j > 0; j--)
			if (o->m[j - 1].keylen == m->keylen && memcmp(o->m[j - 1].key, m->key, m->keylen) == 0)
				break;
		if (v != &o->m[j - 1].v)
			abort();
	}
}

/* The members written back as one object; keys with a NUL inside cannot be
 * written (json_key takes a C string) and are left out. */
static char *
fuzz_write(const struct jsonread_obj *o, size_t *len)
{
	char *text = NULL, num[64];
	struct json j;
	FILE *f;
	size_t k;

	if ((f = open_memstream(&text, len)) == NULL)
		abort();
	json_init(&j, f, 0);
	json_object_begin(&j);
	for (k = 0; k < o->n; k++) {
		const struct jsonread_member *m = &o->m[k];

		if (strlen(m->key) != m->keylen)
			continue;
		json_key(&j, m->key);
		switch (m->v.type) {
		case JSONREAD_NULL:
			json_null(&j);
			break;
		case JSONREAD_BOOL:
			json_bool(&j, m->v.b);
			break;
		case JSONREAD_STRING:
			json_string_len(&j, m->v.s, m->v.len);
			break;
		case JSONREAD_NESTED:
			json_raw(&j, "[]");
			break;
		case JSONREAD_NUMBER:
			if (m->v.is_int) {
				json_int(&j, m->v.i);
			} else if (isfinite(m->v.num)) {
				snprintf(num, sizeof(num), "%.17g", m->v.num);
				/* "1" would read back as an integer. */
				if (strpbrk(num, ".eE") == NULL)
					strcat(num, ".0");
				json_raw(&j, num);
			} else {
				json_raw(&j, m->v.num > 0 ? "1e999" : "-1e999");
			}
			break;
		}
	}
	json_object_end(&j);
	if (json_finish(&j) != 0 || fclose(f) != 0)
		abort();
	return text;
}

static bool
fuzz_same_value(const struct jsonread_value *a, const struct jsonread_value *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type) {
	case JSONREAD_BOOL:
		return a->b == b->b;
	case JSONREAD_STRING:
		return a->len == b->len && memcmp(a->s, b->s, a->len) == 0;
	case JSONREAD_NUMBER:
		if (a->is_int != b->is_int)
			return false;
		return a->is_int ? a->i == b->i : (a->num == b->num || (isnan(a->num) && isnan(b->num)));
	default:
		return true;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct jsonread_obj o, back;
	char *text = malloc(size > 0 ? size : 1), *out;
	size_t i, k, j, outlen;
	bool valid;
	int r;

	if (text == NULL)
		abort();
	memcpy(text, data, size);
	valid = size > 0 && json_valid(text, size);
	r = jsonread_object(&o, text, size);
	if (r != JSONREAD_OK) {
		if (r != JSONREAD_EINVAL || o.m != NULL || o.n != 0 || o.buf != NULL)
			abort();
		/* A valid object too short for JSONREAD_MEMBERS_MAX + 1
		 * members ('"":0,' each) must have been read. */
		for (i = 0; i < size && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r');
		     i++)
			;
		if (valid && i < size && text[i] == '{' && size < 5 * (JSONREAD_MEMBERS_MAX + 1))
			abort();
		jsonread_free(&o);
		free(text);
		return 0;
	}
	if (!valid)
		abort();
	fuzz_check_obj(&o);

	out = fuzz_write(&o, &outlen);
	if (!json_valid(out, outlen) || jsonread_object(&back, out, outlen) != JSONREAD_OK)
		abort();
	fuzz_check_obj(&back);
	for (k = 0, j = 0; k < o.n; k++) {
		if (strlen(o.m[k].key) != o.m[k].keylen)
			continue;
		if (j >= back.n || back.m[j].keylen != o.m[k].keylen ||
		    memcmp(back.m[j].key, o.m[k].key, o.m[k].keylen) != 0 || !fuzz_same_value(&o.m[k].v, &back.m[j].v))
			abort();
		j++;
	}
	if (j != back.n)
		abort();
	jsonread_free(&back);
	jsonread_free(&o);
	free(out);
	free(text);
	return 0;
}
