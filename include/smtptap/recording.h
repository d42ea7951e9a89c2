/*
 * recording.h - a recorded session as replay and mock see it: the client's
 * side cut into units (a command line, an AUTH response line, the content
 * of a DATA stream; a BDAT command with its chunk), the units grouped as
 * the client pipelined them, and each unit linked to the reply that
 * answered it (events.answers_seq, schema 2: nothing here simulates the
 * pipelining FIFO again).
 *
 * Loading (recording_load) is the one place that reads the store, through
 * the reader (reader.h), in one request; everything after it is pure.  The builder
 * (recording_new, recording_session, recording_add, recording_finish)
 * takes rows, not a database, so unit tests drive it with made-up events.
 *
 * Message bytes are kept by reference: when asked for (REC_WITH_DATA),
 * the content of DATA streams and BDAT chunks is spooled, as the events
 * hold it, to an unlinked temporary file, and a unit says where its bytes
 * are (data_off, data_len); recording_data_read gets them back.  A message
 * of any size costs no memory.
 *
 * Groups: a unit starts a new group when the client had been told
 * something since its previous unit (a reply event lies between them) and
 * the unit is not flagged STORE_F_PIPELINED (read before smtptap had
 * passed it any reply: the client did not wait; sessions recorded before
 * that flag existed are grouped by the replies alone).
 */
#ifndef SMTPTAP_RECORDING_H
#define SMTPTAP_RECORDING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtptap/reader.h"
#include "smtptap/smtp.h"
#include "smtptap/store.h"

enum rec_unit_kind {
	REC_UNIT_COMMAND = 0, /* a command line; BDAT with its chunk's bytes */
	REC_UNIT_AUTH,	      /* a line answering a 334 */
	REC_UNIT_DATA,	      /* the content of a DATA stream, terminator included */
};

/* A reply's code and RFC 3463 enhanced code (from its first line). */
struct rec_code {
	int code; /* 0: malformed */
	bool has_enh;
	int enh_class, enh_subject, enh_detail;
};

struct rec_reply {
	int64_t seq, t_us, answers_seq; /* answers_seq 0: not linked */
	enum store_side side;
	unsigned flags;
	struct rec_code c;
	char *raw; /* owned: the reply's exact bytes */
	size_t len;
};

struct rec_unit {
	enum rec_unit_kind kind;
	int64_t seq;	  /* its (first) event */
	int64_t last_seq; /* its last event: a DATA stream's last data event */
	int64_t t_us;
	unsigned flags;	  /* STORE_F_* of its first event */
	enum smtp_verb verb; /* REC_UNIT_COMMAND */
	char *line;	  /* owned: the command or AUTH line as recorded (CRLF kept) */
	size_t len;
	/* The bytes are all there: the line ends with LF; a DATA stream's
	 * terminator was seen; a BDAT chunk has all its announced bytes. */
	bool complete;
	bool bdat;	      /* a BDAT command with a valid size */
	uint64_t bdat_size;
	bool bdat_last;
	int64_t message_row;  /* DATA, BDAT: the message (0 none) */
	uint64_t data_off, data_len; /* DATA content, BDAT chunk: where in the spool */
	size_t group;	      /* index into groups */
	/* Sent after STARTTLS in the same group: the server never reads it
	 * as SMTP (RFC 3207 4.2), so it gets no reply. */
	bool after_starttls;
	/* A server answers it (the protocol's view, not the recording's): a
	 * complete command or AUTH line, a complete DATA stream. */
	bool expects_reply;
	/* Index into replies, -1 none: the server's own reply (the upstream's,
	 * or smtptap's when it answered: sink, a rule, a local STARTTLS) and
	 * what the client was told (the same, or what replaced it). */
	int reply, client_reply;
};

struct rec_group {
	size_t first, count; /* units */
	int64_t t_us;	     /* its first unit's time */
	int64_t think_us;    /* since the last reply before it (timing original) */
};

struct recording {
	int64_t session_id;
	char *mode, *client, *upstream, *outcome; /* owned, NULL unknown */
	/* TLS of each leg as recorded: "", "starttls" or "implicit" */
	char client_tls[16], upstream_tls[16];
	int greeting, greeting_client; /* index into replies, -1 none */
	struct rec_unit *units;
	size_t nunits;
	struct rec_reply *replies;
	size_t nreplies;
	struct rec_group *groups;
	size_t ngroups;
	bool links;	      /* replies carry answers_seq (schema 2 and later) */
	bool redacted;	      /* AUTH credentials were recorded redacted */
	bool client_starttls; /* the client sent STARTTLS itself */
	char auth_mech[32];   /* the first AUTH mechanism, upper case, "" none */
	bool with_data;	      /* message bytes spooled */
	int spool_fd;	      /* -1 none */
	uint64_t spool_len;

	/* builder state */
	size_t ucap, rcap, gcap;
	int64_t connect_seq;
	int64_t last_reply_t;
	bool reply_since_client;
	bool bdat_open;		/* the last unit is a BDAT chunk still taking bytes */
	uint64_t bdat_left;
	bool data_open;		/* the last unit is a DATA stream not yet ended */
	struct smtp_data dscan;
	bool failed;		/* out of memory or the spool failed: err says why */
	char err[256];
};

#define REC_WITH_DATA 0x1 /* spool message bytes (replay); mock needs none */

/*
 * Read session `id` from the store into *out (freed with recording_free).
 * Returns 0, 1 when there is no such session, -1 with a reason in err.
 */
int recording_load(struct reader *rd, int64_t id, unsigned flags, struct recording **out, char *err,
		   size_t errsz);

/* The builder, for recording_load and unit tests: rows in, in seq order. */
struct recording *recording_new(int64_t session_id, unsigned flags);
int recording_session(struct recording *r, const struct reader_session *row);
int recording_add(struct recording *r, const struct reader_event *ev);
void recording_finish(struct recording *r);
void recording_free(struct recording *r);

/* len bytes of the spool from off into buf.  Returns 0, or -1. */
int recording_data_read(const struct recording *r, uint64_t off, void *buf, size_t len);

/* Parse a reply's code and enhanced code (its first line). */
void recording_code(const char *raw, size_t len, struct rec_code *out);

/* What a comparison found different (0: nothing). */
#define REC_DIFF_CODE 0x1
#define REC_DIFF_ENH 0x2
#define REC_DIFF_TEXT 0x4
/*
 * Compare two replies: the code and the enhanced code (present in both and
 * equal, or absent from both); strict: every line's text as well (line
 * endings aside).  Returns REC_DIFF_* bits.
 */
unsigned recording_compare(const char *a, size_t alen, const char *b, size_t blen, bool strict);

/*
 * A unit as one line, without its line ending, long lines cut with "...":
 * "MAIL FROM:<a@example.com>", "message content (1234 bytes)", "BDAT 100
 * LAST (+100 bytes)".  The bytes are the client's: escape them for a
 * terminal (cli_read_put_escaped) or JSON.  Returns buf.
 */
char *recording_unit_label(const struct rec_unit *u, char *buf, size_t bufsz);
/* A reply's first line the same way (without its CRLF), "" for NULL. */
char *recording_reply_label(const char *raw, size_t len, char *buf, size_t bufsz);

#endif
