/*
 * cli_read.h - what the read-side subcommands (`sessions`, `show`,
 * `export`, in cli_sessions.c, cli_show.c, cli_export.c) share: opening
 * the database (a reader, reader.h), the session ID operand, loading one
 * session, time formats and terminal-safe escaping.
 *
 * Recorded text is hostile input (a client chooses its EHLO name, a
 * message its Subject): the readable outputs escape every byte that could
 * move a terminal's cursor or change its state (cli_read_put_escaped), and
 * --json goes through the JSON writer, which always produces valid UTF-8.
 * Only --raw and the exports write recorded bytes as they are, since that
 * is what they are for.
 */
#ifndef SMTPTAP_CLI_READ_H
#define SMTPTAP_CLI_READ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "smtptap/reader.h"
#include "smtptap/store.h"

#define CLI_C_RESET "\033[0m"
#define CLI_C_BOLD "\033[1m"
#define CLI_C_CLIENT "\033[36m"	   /* cyan */
#define CLI_C_UPSTREAM "\033[32m"  /* green */
#define CLI_C_PROXY "\033[1;33m"   /* bold yellow */

/* The one session ID operand left after the options (argv[optind]).
 * Returns 0, or -1 (reported, naming cmd: a usage error). */
int cli_read_parse_id(const char *cmd, int argc, char **argv, int64_t *out);

/* The database's reader, or NULL (reported, naming --db). */
struct reader *cli_read_open(const char *db);

/* Read session `id` into *s, an owned copy (freed by the caller with
 * reader_session_free).  Returns CLI_EXIT_OK, or CLI_EXIT_NOTFOUND /
 * CLI_EXIT_FAIL, reported. */
int cli_read_session_load(struct reader *rd, const char *db, int64_t id, struct reader_session *s);

/* "2024-05-01 14:02:03" local time, with ".123456 +0200" when precise. */
void cli_read_fmt_local(char *buf, size_t bufsz, int64_t us, bool precise);
/* Precise: "83.123456s".  Otherwise short for a table: "0.52s", "12.3s",
 * "5m02s", "3h07m", "2d04h". */
void cli_read_fmt_duration(char *buf, size_t bufsz, int64_t us, bool precise);
/* "+0.000123": seconds since the session started. */
void cli_read_fmt_offset(char *buf, size_t bufsz, int64_t us);

/* Terminal-safe text (see cli_read.c for the exact rules). */
void cli_read_put_escaped(FILE *f, const void *p, size_t len);
/* The same for a C string; nothing for NULL. */
void cli_read_put_escaped_str(FILE *f, const char *s);

#endif
