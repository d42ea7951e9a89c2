/*
 * jsonread.h - read one flat JSON object (RFC 8259) into its members.
 *
 * For records smtptap itself wrote as JSON and reads back to present them
 * (a leg's TLS record, tls_info_json): an object whose values are
 * strings, numbers, booleans or null.  A database may have been edited by
 * hand or written by another version, so nothing is assumed: the whole
 * text is first checked with json_valid (grammar, well-formed UTF-8,
 * nesting depth), anything else is refused, members of any name are kept,
 * and a nested object or array is accepted but kept only as "nested"
 * (its contents are not needed, and a future field must not make the rest
 * unreadable).
 *
 * Strings are decoded (escapes, \u surrogate pairs; a lone surrogate
 * becomes U+FFFD, as the JSON writer would write it) into one buffer the
 * object owns; \u0000 is kept, so a string's length is its len, and its
 * NUL-terminated form stops at the first NUL.  Pure: no I/O, no globals.
 */
#ifndef SMTPTAP_JSONREAD_H
#define SMTPTAP_JSONREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Members kept at most: a record of a dozen fields, with room to grow.
 * More is refused rather than allocated without bound. */
#define JSONREAD_MEMBERS_MAX 1024

#define JSONREAD_OK 0
#define JSONREAD_EINVAL (-1) /* not one valid JSON object, or too many members */
#define JSONREAD_ENOMEM (-2)

enum jsonread_type {
	JSONREAD_NULL,
	JSONREAD_BOOL,
	JSONREAD_NUMBER,
	JSONREAD_STRING,
	JSONREAD_NESTED, /* an object or an array: valid, not kept */
};

struct jsonread_value {
	enum jsonread_type type;
	bool b;		/* BOOL */
	double num;	/* NUMBER (as strtod reads it: may be +-HUGE_VAL) */
	bool is_int;	/* NUMBER without fraction or exponent that fits int64_t */
	int64_t i;	/* NUMBER, when is_int */
	const char *s;	/* STRING: decoded, NUL-terminated, owned by the object */
	size_t len;	/* STRING: bytes in s, NULs included */
};

struct jsonread_member {
	const char *key; /* decoded, NUL-terminated */
	size_t keylen;
	struct jsonread_value v;
};

struct jsonread_obj {
	struct jsonread_member *m; /* in document order */
	size_t n;
	char *buf; /* the decoded keys and strings */
};

/*
 * Parse text[0..len) (surrounding white space allowed) as one object into
 * *o, which the caller frees with jsonread_free (on error *o is left
 * empty, and freeing it is harmless).  Returns JSONREAD_OK,
 * JSONREAD_EINVAL or JSONREAD_ENOMEM.
 */
int jsonread_object(struct jsonread_obj *o, const char *text, size_t len);

/* The member named key (the last one when a name repeats, as most
 * readers do), or NULL. */
const struct jsonread_value *jsonread_get(const struct jsonread_obj *o, const char *key);

/* Shorthands: the member's value when it has that type, else NULL / def. */
const char *jsonread_get_string(const struct jsonread_obj *o, const char *key, size_t *len);
/* 1 true, 0 false, -1 absent, null or not a boolean. */
int jsonread_get_bool(const struct jsonread_obj *o, const char *key);

void jsonread_free(struct jsonread_obj *o);

#endif
