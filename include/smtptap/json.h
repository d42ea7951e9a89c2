/*
 * json.h - a small streaming JSON writer (RFC 8259) to a FILE * or to a
 * growable memory buffer.
 *
 * To a FILE nothing is built in memory: the pieces go out through a
 * small buffer of the writer's own (JSON_OBUF bytes, one fwrite() for
 * many pieces instead of one each), so a document can be as long as the
 * session it describes; json_finish() (or json_flush()) writes out the
 * rest.  To
 * memory (json_init_mem: an HTTP response, a test) the text grows in one
 * buffer up to a bound the caller sets, and is the same text byte for
 * byte as the FILE would have received.  Commas, colons and
 * indentation are placed by the writer, which remembers, per open
 * container, whether something was written into it yet.
 *
 * Layout: the members of the outer `levels` containers go one per line,
 * indented by two spaces per level; deeper containers stay on one line
 * ({"seq": 1, "side": "client"}), which keeps a transcript of thousands of
 * events readable and greppable.  levels 0 gives the most compact form,
 * JSON_DEPTH_MAX a fully indented one.
 *
 * Strings are always emitted as valid UTF-8 JSON whatever bytes they are
 * given, because they carry mail content (hostile input): '"' and '\' are
 * escaped, control characters (U+0000..U+001F, U+007F) become \u00XX,
 * U+2028/U+2029 become \u2028/\u2029 (so the text can be embedded in
 * JavaScript), and each maximal ill-formed UTF-8 subsequence (Unicode 15,
 * section 3.9, as Python and browsers do) becomes one \ufffd.
 *
 * Misuse (a key outside an object, a value where a key is due, nesting
 * deeper than JSON_DEPTH_MAX, unbalanced ends) and write errors are sticky:
 * json_finish() reports them once.
 */
#ifndef SMTPTAP_JSON_H
#define SMTPTAP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_DEPTH_MAX 32
#define JSON_OBUF 4096

struct json {
	FILE *f;	 /* the output, or NULL: the memory buffer below */
	char *buf;	 /* json_init_mem: the text so far (not NUL-terminated) */
	size_t len, cap;
	size_t max;	 /* the buffer never grows past this; 0: no bound */
	size_t olen;	 /* bytes in obuf */
	int levels;	 /* containers nested this deep get a line per member */
	int depth;	 /* open containers */
	bool failed;	 /* a write failed or the calls were out of order */
	int err;	 /* errno of the first failed write, 0 for misuse */
	bool after_key;	 /* a key was written; its value comes next */
	bool done;	 /* the document's one top-level value is complete */
	/* Per open container (index 1..depth): is it an object, and is it
	 * still empty (no comma before the next member)? */
	bool is_object[JSON_DEPTH_MAX + 1];
	bool empty[JSON_DEPTH_MAX + 1];
	/* Last, so that json_init() need not clear it: a FILE target's text
	 * not yet handed to stdio. */
	char obuf[JSON_OBUF];
};

void json_init(struct json *j, FILE *f, int levels);
/*
 * Write into a memory buffer owned by j instead, growing it as needed up
 * to max bytes (0: no bound).  Going past max, or running out of memory,
 * is a write error like a full disk: sticky, j->err EMSGSIZE or ENOMEM.
 * Read the text with json_mem_data(); release it with json_mem_free().
 */
void json_init_mem(struct json *j, size_t max, int levels);
/* The text written so far (*len bytes, not NUL-terminated; NULL when
 * nothing was written). */
const char *json_mem_data(const struct json *j, size_t *len);
/* Hand the buffer to the caller (who free()s it) and forget it: j can be
 * given json_init_mem() again.  NUL-terminated; NULL if nothing was
 * written or memory ran short. */
char *json_mem_take(struct json *j, size_t *len);
void json_mem_free(struct json *j);

void json_object_begin(struct json *j);
void json_object_end(struct json *j);
void json_array_begin(struct json *j);
void json_array_end(struct json *j);

/* Member name inside an object; the value is the next call. */
void json_key(struct json *j, const char *key);

/* A NUL-terminated string, or null when s is NULL. */
void json_string(struct json *j, const char *s);
/* Arbitrary bytes (NULs included) as a string. */
void json_string_len(struct json *j, const void *p, size_t len);
void json_int(struct json *j, int64_t v);
void json_bool(struct json *j, bool v);
void json_null(struct json *j);
/* A complete JSON value given as text, written as is.  The caller checks
 * it with json_valid() first: the writer cannot tell. */
void json_raw(struct json *j, const char *text);

/* Shorthands for one object member. */
void json_kv_string(struct json *j, const char *key, const char *s);
void json_kv_int(struct json *j, const char *key, int64_t v);
void json_kv_bool(struct json *j, const char *key, bool v);
void json_kv_null(struct json *j, const char *key);

/* Hand what the FILE target holds to stdio (a caller writing to the same
 * FILE between JSON calls needs this first).  Returns 0 or -1. */
int json_flush(struct json *j);

/* End the document with a newline (and flush a FILE target).  Returns 0, or -1 when a write failed
 * (j->err holds its errno) or the calls did not form one balanced value
 * (j->err is 0). */
int json_finish(struct json *j);

/* Is text[0..len) exactly one JSON value (surrounding white space allowed,
 * strings well-formed UTF-8, nesting at most JSON_DEPTH_MAX)? */
bool json_valid(const char *text, size_t len);

/*
 * Decode the UTF-8 sequence at p[0..len) (len >= 1).  Returns the number of
 * bytes it covers; *cp is the code point, or JSON_UTF8_BAD when the bytes
 * are ill-formed, in which case the count is the maximal subpart to replace
 * by a single U+FFFD (at least 1).  Overlong forms, surrogates and values
 * above U+10FFFF are ill-formed.  Shared with the CLI's terminal escaping.
 */
#define JSON_UTF8_BAD UINT32_MAX
size_t json_utf8_decode(const void *p, size_t len, uint32_t *cp);

#endif
