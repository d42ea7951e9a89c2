/*
 * cli_json.h - `show --json` and `export --json`: one session's JSON
 * document (reader_json.c) written to a command's output, with its
 * errors reported the CLI's way.
 */
#ifndef SMTPTAP_CLI_JSON_H
#define SMTPTAP_CLI_JSON_H

#include "smtptap/cli_out.h"
#include "smtptap/reader.h"

/*
 * {"session": {...}, "events": [...], "messages": [...], "transactions":
 * [...]} for session s (read in the current request).
 * Returns CLI_EXIT_OK (write errors are left in out->werr for
 * cli_out_close) or CLI_EXIT_FAIL after reporting a database error.
 */
int cli_json_doc(struct reader *rd, const char *db, const struct reader_session *s, struct cli_out *out);

#endif
