/*
 * cli_read.h - what the read-side subcommands (`sessions`, `show`,
 * `export`, in cli_sessions.c, cli_show.c, cli_export.c) share: opening
 * the database, the session ID operand, an owned copy of a session row,
 * time formats and terminal-safe escaping.
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

#include "smtptap/store.h"

#define CLI_C_RESET "\033[0m"
#define CLI_C_BOLD "\033[1m"
#define CLI_C_CLIENT "\033[36m"	   /* cyan */
#define CLI_C_UPSTREAM "\033[32m"  /* green */
#define CLI_C_PROXY "\033[1;33m"   /* bold yellow */

/* An owned copy of a session row: store rows live only during their
 * callback, and the header or table outlives it. */
struct cli_session {
	int64_t id, started_us, ended_us, nmessages;
	char *listener, *client, *upstream, *upstream_addr, *mode;
	char *client_tls, *upstream_tls, *outcome, *detail;
	/* the summary the writer keeps (NULL / 0 when unknown) */
	char *client_ip, *helo, *auth_mech, *auth_user, *client_tls_version, *upstream_tls_version;
	int64_t nevents, ntransactions, client_bytes, upstream_bytes, proxy_bytes;
	int64_t replay_of; /* a replay or mock: the session it replays, 0 none */
	/* The sessions replaying this one (cli_read_session_load reads them;
	 * a session copied from a listing has none loaded). */
	struct cli_replay_ref {
		int64_t id;
		char mode[16];
	} *replays;
	size_t nreplays;
	bool replays_loaded;
};

/* An event flag's name, as --json and the transcript's tags spell it. */
struct cli_read_flag {
	unsigned flag;
	const char *name;
};
extern const struct cli_read_flag cli_read_flags[];
extern const size_t cli_read_nflags;

/* The one session ID operand left after the options (argv[optind]).
 * Returns 0, or -1 (reported, naming cmd: a usage error). */
int cli_read_parse_id(const char *cmd, int argc, char **argv, int64_t *out);

/* The database's reader, or NULL (reported, naming --db). */
struct store_reader *cli_read_open(const char *db);

/* Returns 0, or -1 when out of memory (dst is then freed and zeroed). */
int cli_read_session_copy(struct cli_session *dst, const struct store_session_row *row);
/* Free what a copy owns and zero it (a zeroed one is fine too). */
void cli_read_session_free(struct cli_session *s);
/* Read session `id` into *s (freed by the caller with
 * cli_read_session_free).  Returns CLI_EXIT_OK, or CLI_EXIT_NOTFOUND /
 * CLI_EXIT_FAIL, reported. */
int cli_read_session_load(struct store_reader *rd, const char *db, int64_t id, struct cli_session *s);

/* "2024-05-01 14:02:03" local time, with ".123456 +0200" when precise. */
void cli_read_fmt_local(char *buf, size_t bufsz, int64_t us, bool precise);
/* RFC 3339 in UTC with microseconds: "2024-05-01T12:02:03.123456Z". */
void cli_read_fmt_rfc3339(char *buf, size_t bufsz, int64_t us);
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
