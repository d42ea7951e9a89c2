/*
 * cli_json.c - see cli_json.h.
 */
#include "smtptap/cli_json.h"

#include <errno.h>
#include <inttypes.h>

#include "smtptap/cli.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/reader_json.h"

int
cli_json_doc(struct reader *rd, const char *db, const struct reader_session *s, struct cli_out *out)
{
	struct json j;
	char err[512];

	json_init(&j, out->f, 2);
	if (reader_json_document(rd, s, &j, err, sizeof(err)) != READER_OK) {
		log_warnx("reading session %" PRId64 " from %s: %s", s->id, db, err);
		return CLI_EXIT_FAIL;
	}
	/* A write error stopped the document: cli_out_close reports it. */
	if (json_finish(&j) < 0 && out->werr == 0)
		out->werr = j.err != 0 ? j.err : EIO;
	return CLI_EXIT_OK;
}
