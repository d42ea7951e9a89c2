/*
 * export.h - write recorded messages as .eml files or mboxrd mailboxes.
 *
 * A message's content is never held in memory: the reader streams it in
 * pieces (reader_message_content), dot-unstuffed on the fly for DATA
 * messages, and they are written out as they come.
 */
#ifndef SMTPTAP_EXPORT_H
#define SMTPTAP_EXPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct reader;

/*
 * What an export needs to know about one message: an owned copy of part
 * of a reader_message, so the reader is free for the data walk (a row
 * lives only during its callback, and a callback must not start another
 * walk on the same reader).
 */
struct export_message {
	int64_t id;	    /* messages.id, for reader_message_content */
	int64_t session_id;
	int idx;	    /* 1-based within the session */
	int64_t started_us; /* when DATA/BDAT began: the mbox date */
	int64_t ended_us;   /* 0 while the message is still being recorded */
	int64_t size;	    /* unstuffed size as recorded */
	bool complete;
	char *mail_from;    /* envelope sender, "" for <> */
	char *transport;    /* "data" or "bdat" */
};

/*
 * All messages of a session, in idx order, into a new array owned by the
 * caller (free with export_message_list_free).  Returns 0, or -1 with a
 * reason in err.  An empty session gives *out NULL and *n 0.
 */
int export_message_list(struct reader *rd, int64_t session_id, struct export_message **out, size_t *n,
			char *err, size_t errsz);
void export_message_list_free(struct export_message *v, size_t n);

/* Results of the writers below. */
#define EXPORT_OK 0
#define EXPORT_EDB (-1)	   /* reading the database failed: err holds why */
#define EXPORT_EWRITE (-2) /* writing `out` failed: err holds strerror */

/* The message exactly as the client sent it: dot-unstuffed, without the
 * terminating "." line. */
int export_write_eml(struct reader *rd, const struct export_message *m, FILE *out, char *err,
		     size_t errsz);

/* One mboxrd (RFC 4155) entry: "From " line, the quoted message, a
 * missing final newline supplied, then an empty line. */
int export_write_mbox(struct reader *rd, const struct export_message *m, FILE *out, char *err,
		      size_t errsz);

/*
 * mboxrd ">From " quoting as a stream filter: every line matching
 * ^>*From gets one more '>'.  The candidate prefix of a line is held back
 * (as counts, so a line of a million '>' costs nothing) until it is known
 * whether it needs the extra '>'.  Exposed for the unit tests.
 */
struct export_mboxrd {
	FILE *out;
	bool line_start; /* the next byte starts a line */
	uint64_t ngt;	 /* '>' held back at this line start */
	size_t nfrom;	 /* bytes of "From " held back after them */
	bool ends_nl;	 /* the last byte written was '\n' */
	int err;	 /* errno of the first failed write */
};

void export_mboxrd_init(struct export_mboxrd *q, FILE *out);
/* Returns 0, or -1 once a write failed (q->err). */
int export_mboxrd_write(struct export_mboxrd *q, const void *p, size_t len);
/* Release anything held back and end the message with a newline if it
 * lacks one.  Returns 0 or -1. */
int export_mboxrd_finish(struct export_mboxrd *q);

/* The "From sender date" line without its newline: `<>` becomes
 * MAILER-DAEMON, the date is asctime(3) format in UTC. */
void export_mbox_from_line(char *buf, size_t bufsz, const char *mail_from, int64_t when_us);

#endif
