/*
 * recording_load.c - a recorded session from the store into a recording
 * (recording.h).  The one place replay and mock read the database: the
 * session's row and its events through the reader (reader.h), in one
 * request, so that both are one snapshot even while a proxy records.
 * The events come with all their bytes (READER_BYTES_ALL, one event at a
 * time: a data event is at most 256 KiB): the builder scans message data
 * for the end of a DATA stream even when it does not keep it (mock).
 */
#include "smtptap/recording.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>

#include "smtptap/util.h"

static int
rec_load_session_cb(const struct reader_session *row, void *arg)
{
	return recording_session(arg, row) < 0 ? 2 : 0;
}

static int
rec_load_event_cb(const struct reader_event *ev, void *arg)
{
	return recording_add(arg, ev) < 0 ? 2 : 0;
}

int
recording_load(struct reader *rd, int64_t id, unsigned flags, struct recording **out, char *err, size_t errsz)
{
	struct recording *r = recording_new(id, flags);
	int rc;

	*out = NULL;
	if (r == NULL) {
		util_errf(err, errsz, "out of memory");
		return -1;
	}
	if (reader_begin(rd, err, errsz) != READER_OK) {
		recording_free(r);
		return -1;
	}
	rc = reader_session(rd, id, rec_load_session_cb, r, err, errsz);
	if (rc == READER_OK)
		rc = reader_events(rd, id, READER_BYTES_ALL, rec_load_event_cb, r, err, errsz);
	reader_end(rd);
	if (rc == 2 || (rc == READER_OK && r->failed)) {
		util_errf(err, errsz, "session %" PRId64 ": %s", id, r->err);
		rc = READER_ERROR;
	}
	if (rc != READER_OK) {
		recording_free(r);
		return rc == READER_NOTFOUND ? 1 : -1;
	}
	recording_finish(r);
	*out = r;
	return 0;
}
