/*
 * mock.h - the recorded server, played back: the replies of a mock
 * session (`smtptap mock ID`) come from a recording instead of an
 * upstream.
 *
 * Like sink.h, this only decides replies; the session feeds them through
 * the same path as an upstream's (recording, pipelining order, DATA, BDAT
 * and AUTH handling, STARTTLS on the client leg).  The mock walks the
 * recording's units in order: each command the client sends is compared
 * with the one recorded at that point and, when it matches, answered with
 * the reply the recorded client was told.  A command that does not match
 * is answered "503 5.5.1" naming what was expected, and the mismatch is
 * handed back as a note for the session to record; the recording does not
 * move on, so the client may still send the expected command.  A QUIT
 * always ends the conversation (221), expected or not.
 *
 * Matching: the verb; for MAIL and RCPT also the address
 * (case-insensitive); for AUTH the mechanism.  Host names (EHLO), ESMTP
 * parameters, BDAT sizes, credentials and message content are not
 * compared: a client run again differs there without doing anything else.
 * Pure: no I/O; the recording is only read.
 */
#ifndef SMTPTAP_MOCK_H
#define SMTPTAP_MOCK_H

#include <stdbool.h>
#include <stddef.h>

#include "smtptap/recording.h"
#include "smtptap/smtp.h"

#define MOCK_REPLY_MAX 1024 /* a reply made here (a mismatch), or the sink's */
#define MOCK_NOTE_MAX 600

/* One reply: p/len (into the recording or buf), and a note for the
 * session's record when the client did not do what was recorded. */
struct mock_reply {
	const char *p;
	size_t len;
	char buf[MOCK_REPLY_MAX];
	char note[MOCK_NOTE_MAX]; /* "" when it matched */
};

struct mock;

/* A mock of `rec` for one client connection (rec must outlive it).
 * NULL when out of memory. */
struct mock *mock_new(const struct recording *rec);
void mock_free(struct mock *m);

void mock_greeting(struct mock *m, struct mock_reply *out);
/* A command line (cmd parsed from line[0..len)).  BDAT is answered after
 * its chunk: mock_bdat_chunk. */
void mock_command(struct mock *m, const struct smtp_cmd *cmd, const char *line, size_t len, struct mock_reply *out);
/* A line answering a 334. */
void mock_auth_line(struct mock *m, struct mock_reply *out);
/* The end of a DATA stream. */
void mock_data_end(struct mock *m, struct mock_reply *out);
/* The end of a BDAT chunk (cmd: the BDAT command's size and LAST). */
void mock_bdat_chunk(struct mock *m, const struct smtp_cmd *cmd, struct mock_reply *out);
/* STARTTLS: true when the recording expects it (the session answers and
 * upgrades the client leg itself); false with a 503 in out otherwise. */
bool mock_starttls(struct mock *m, struct mock_reply *out);

#endif
