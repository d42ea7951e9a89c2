/*
 * mime.h - pure RFC 5322 header extraction with RFC 2047 decoding.
 *
 * The session feeds the unstuffed message bytes as they stream by; the
 * parser keeps only the header block (bounded by MIME_HDR_MAX) and stops
 * looking once it has seen the empty line that ends the headers, so a
 * gigabyte body costs nothing here.  No I/O, no global state.
 */
#ifndef SMTPTAP_MIME_H
#define SMTPTAP_MIME_H

#include <stdbool.h>
#include <stddef.h>

/* Header bytes kept; headers beyond this are ignored (the message itself is
 * still stored whole, this only bounds what we summarise). */
#define MIME_HDR_MAX (64 * 1024)
/* Longest summary value returned (decoded Subject etc.), NUL included. */
#define MIME_VALUE_MAX 1024

struct mime_hdr_parser {
	char buf[MIME_HDR_MAX];
	size_t len;
	bool done;     /* saw the end of the header block (or hit the bound) */
	int last_byte; /* previous byte fed, -1 at start (to spot "\n\n" / "\n\r\n") */
	int prev_byte;
};

/* The headers smtptap summarises.  Each is a NUL-terminated UTF-8 string,
 * empty when the header is absent; folded lines are unfolded, surrounding
 * white space trimmed, control characters replaced by a space, and
 * invalid UTF-8 replaced by U+FFFD so the values are always safe to print
 * and to put in JSON. */
struct mime_summary {
	char subject[MIME_VALUE_MAX];	 /* RFC 2047 decoded */
	char from[MIME_VALUE_MAX];	 /* RFC 2047 decoded display names */
	char to[MIME_VALUE_MAX];	 /* RFC 2047 decoded display names */
	char message_id[MIME_VALUE_MAX]; /* as is */
	char date[MIME_VALUE_MAX];	 /* as is */
};

void mime_hdr_init(struct mime_hdr_parser *p);

/* Feed message bytes (after dot-unstuffing).  Cheap once p->done. */
void mime_hdr_feed(struct mime_hdr_parser *p, const char *data, size_t len);

/* Summarise what was collected (works whether or not p->done; a message
 * cut short still gets whatever headers arrived).  Fills every field. */
void mime_hdr_summarise(const struct mime_hdr_parser *p, struct mime_summary *out);

/*
 * Decode RFC 2047 encoded words ("=?UTF-8?B?...?=", "=?iso-8859-1?Q?...?=")
 * in an unstructured header value into UTF-8.  White space between two
 * adjacent encoded words is dropped, as the RFC says.  Charsets: UTF-8,
 * US-ASCII, ISO-8859-1 natively, others through iconv(3); a word that
 * cannot be decoded is kept as written.  Writes at most outsz bytes
 * including the NUL (truncating on a UTF-8 character boundary) and returns
 * the string length.
 */
size_t mime_decode_2047(const char *in, size_t len, char *out, size_t outsz);

#endif
