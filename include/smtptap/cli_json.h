/*
 * cli_json.h - a session as JSON, shared by `show --json`, `export --json`
 * (one document: session, events, messages) and `sessions --json` (the
 * session objects alone).
 */
#ifndef SMTPTAP_CLI_JSON_H
#define SMTPTAP_CLI_JSON_H

#include <stdbool.h>

#include "smtptap/cli_out.h"
#include "smtptap/cli_read.h"
#include "smtptap/json.h"
#include "smtptap/store.h"

/* The session object, with the summary the writer keeps. */
void cli_json_session(struct json *j, const struct cli_session *s);

/*
 * {"session": {...}, "events": [...], "messages": [...], "transactions":
 * [...]} for session s.
 * Returns CLI_EXIT_OK (write errors are left in out->werr for
 * cli_out_close) or CLI_EXIT_FAIL after reporting a database error.
 */
int cli_json_doc(struct store_reader *rd, const char *db, const struct cli_session *s, struct cli_out *out);

#endif
