/*
 * recording_load.c - a recorded session from the store into a recording
 * (recording.h).  The one place replay and mock read the database: it
 * walks the session's row and events with the store reader's walkers, so
 * moving to the reader API changes this file alone.
 */
#include "smtptap/recording.h"

#include <stdbool.h>
#include <stdlib.h>

#include "smtptap/util.h"

struct rec_load {
	struct recording *r;
	bool found;
};

static int
rec_load_session_cb(const struct store_session_row *row, void *arg)
{
	struct rec_load *l = arg;

	l->found = true;
	return recording_session(l->r, row) < 0 ? 2 : 0;
}

static int
rec_load_event_cb(const struct store_event_row *ev, void *arg)
{
	struct recording *r = arg;

	return recording_add(r, ev) < 0 ? 2 : 0;
}

int
recording_load(struct store_reader *rd, int64_t id, unsigned flags, struct recording **out, char *err,
	       size_t errsz)
{
	struct rec_load l = { .r = recording_new(id, flags) };
	int rc;

	*out = NULL;
	if (l.r == NULL) {
		util_errf(err, errsz, "out of memory");
		return -1;
	}
	rc = store_reader_session(rd, id, rec_load_session_cb, &l, err, errsz);
	if (rc == 0 && l.found)
		rc = store_reader_events(rd, id, rec_load_event_cb, l.r, err, errsz);
	if (rc == 0 && !l.found)
		rc = 1;
	if (rc == 2 || (rc == 0 && l.r->failed)) {
		util_errf(err, errsz, "session %lld: %s", (long long)id, l.r->err);
		rc = -1;
	}
	if (rc != 0) {
		recording_free(l.r);
		return rc < 0 ? -1 : 1;
	}
	recording_finish(l.r);
	*out = l.r;
	return 0;
}

