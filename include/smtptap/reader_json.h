/*
 * reader_json.h - recorded sessions as JSON, for every consumer of the
 * reader: `show --json`, `export --json` and `sessions --json/--jsonl`
 * today, an HTTP API later.  Written through struct json, so the same
 * document goes to a FILE or into a memory buffer (json_init_mem).
 *
 * The names and shapes are a contract (docs/smtptap.1, scripts): fields
 * may be added, never renamed or removed.
 */
#ifndef SMTPTAP_READER_JSON_H
#define SMTPTAP_READER_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtptap/json.h"
#include "smtptap/reader.h"

/* Event flags by name, as --json spells them (and show's tags). */
struct reader_json_flag {
	unsigned flag; /* STORE_F_* */
	const char *name;
};
extern const struct reader_json_flag reader_json_flags[];
extern const size_t reader_json_nflags;

/* The session object, with the summary the writer keeps. */
void reader_json_session(struct json *j, const struct reader_session *s);
/* The same with "replays": [{id, mode}, ...] (the sessions replaying or
 * mocking it, reader_replays) when with_replays: show --json has it, a
 * listing does not. */
void reader_json_session_replays(struct json *j, const struct reader_session *s, const struct reader_replay *v,
				 size_t n, bool with_replays);
/* One event; t_us is given relative to the session's start.  Needs the
 * event's bytes for commands, replies and AUTH lines (READER_BYTES_LINES):
 * their text is the line(s) as sent. */
void reader_json_event(struct json *j, const struct reader_event *ev, int64_t session_started_us);
void reader_json_message(struct json *j, const struct reader_message *m);
void reader_json_transaction(struct json *j, const struct reader_transaction *t, int64_t session_started_us);

/*
 * {"session": {...}, "events": [...], "messages": [...], "transactions":
 * [...]} for session s (a row the caller read in the same request).
 * Returns READER_OK (a write error is left in j: j->failed, j->err), or
 * READER_ERROR with err filled (the database).
 */
int reader_json_document(struct reader *rd, const struct reader_session *s, struct json *j, char *err,
			 size_t errsz);

#endif
