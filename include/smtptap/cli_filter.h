/*
 * cli_filter.h - the filter flags of `smtptap sessions`, `replay` and
 * `export` (one parser for the three), into a struct reader_filter: the
 * flags themselves (cli_filter_option), and the values that need parsing,
 * times (--since, --until) and session ids (--id).  Pure: text in, values
 * out, errors as text (the caller reports them; the current time is an
 * argument); unit-tested in tests/unit/test_cli_filter.c.
 */
#ifndef SMTPTAP_CLI_FILTER_H
#define SMTPTAP_CLI_FILTER_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "smtptap/reader.h"

/*
 * WHEN, into unix time in microseconds:
 *   2024-05-01, "2024-05-01 14:02", "2024-05-01 14:02:03" (or with a T)
 *       local time (the TZ environment variable, as `date` has it);
 *   2024-05-01T14:02:03Z, 2024-05-01T14:02:03.5+02:00  RFC 3339;
 *   30m, 2h, 7d, 1d12h  that long before now (the AGE of `prune`);
 *   now, today, yesterday  (today: midnight, local time);
 *   @1714572123  seconds since 1970.
 * Returns 0, or -1 with *why saying what was expected.
 */
int cli_filter_when(const char *s, int64_t now_us, int64_t *out_us, const char **why);

/*
 * --id: "7", "7-9", or a comma-separated list of both ("3,7-9,12"), into
 * out[0..*n) (at most max ranges).  Returns 0, or -1 with *why.
 */
int cli_filter_ids(const char *s, struct reader_id_range *out, size_t max, size_t *n, const char **why);

/*
 * The filter flags, as getopt_long options.  Their values are above any
 * short option and below the commands' own (which start at 256 + 64):
 *   --from ADDR  --since WHEN  --until WHEN  --search TEXT
 *   --message-id ID  --outcome WORD  --client ADDR|CIDR  --tls  --no-tls
 *   --mode MODE  --id N[-M],...  --rcpt ADDR
 * --to ADDR (the recipient) is CLI_FILTER_OPT_RCPT too, but `replay` has
 * its own --to (the server), so each command adds it or not:
 * CLI_FILTER_OPTION_TO.  --all (every session: the commands that act on
 * sessions want a filter or --all, never everything by accident) is
 * CLI_FILTER_OPTION_ALL, for `replay` and `export`.
 */
enum {
	CLI_FILTER_OPT_FROM = 256,
	CLI_FILTER_OPT_RCPT,
	CLI_FILTER_OPT_SINCE,
	CLI_FILTER_OPT_UNTIL,
	CLI_FILTER_OPT_SEARCH,
	CLI_FILTER_OPT_MSGID,
	CLI_FILTER_OPT_OUTCOME,
	CLI_FILTER_OPT_CLIENT,
	CLI_FILTER_OPT_TLS,
	CLI_FILTER_OPT_NO_TLS,
	CLI_FILTER_OPT_MODE,
	CLI_FILTER_OPT_ID,
	CLI_FILTER_OPT_ALL,
	CLI_FILTER_OPT_LAST_, /* a command's own options start above this */
};
#define CLI_FILTER_OPT_OWN (256 + 64)

#define CLI_FILTER_OPTIONS                                                                                     \
	{ "from", required_argument, NULL, CLI_FILTER_OPT_FROM },                                              \
		{ "rcpt", required_argument, NULL, CLI_FILTER_OPT_RCPT },                                      \
		{ "since", required_argument, NULL, CLI_FILTER_OPT_SINCE },                                    \
		{ "until", required_argument, NULL, CLI_FILTER_OPT_UNTIL },                                    \
		{ "search", required_argument, NULL, CLI_FILTER_OPT_SEARCH },                                  \
		{ "message-id", required_argument, NULL, CLI_FILTER_OPT_MSGID },                               \
		{ "outcome", required_argument, NULL, CLI_FILTER_OPT_OUTCOME },                                \
		{ "client", required_argument, NULL, CLI_FILTER_OPT_CLIENT },                                  \
		{ "tls", no_argument, NULL, CLI_FILTER_OPT_TLS },                                              \
		{ "no-tls", no_argument, NULL, CLI_FILTER_OPT_NO_TLS },                                        \
		{ "mode", required_argument, NULL, CLI_FILTER_OPT_MODE },                                      \
		{ "id", required_argument, NULL, CLI_FILTER_OPT_ID }
#define CLI_FILTER_OPTION_TO { "to", required_argument, NULL, CLI_FILTER_OPT_RCPT }
#define CLI_FILTER_OPTION_ALL { "all", no_argument, NULL, CLI_FILTER_OPT_ALL }

/* The filter being built from the flags. */
struct cli_filter {
	struct reader_filter f; /* f.ids points into ids */
	struct reader_id_range ids[READER_ID_RANGES_MAX];
	int64_t now_us;
	bool all;	   /* --all */
	unsigned nflags;   /* filter flags given (not counting --all) */
	const char *to_flag; /* how the recipient flag was spelled ("--to", "--rcpt") */
};

void cli_filter_init(struct cli_filter *cf, int64_t now_us);

/*
 * Option c (from getopt_long) with its argument, if it is a filter flag.
 * Returns 1 (taken), 0 (not a filter flag: the command's own), or -1
 * with one line in err naming the flag (a usage error).
 */
int cli_filter_option(struct cli_filter *cf, int c, const char *arg, char *err, size_t errsz);

/*
 * Once the flags are read: every value checked (reader_filter_check),
 * the error naming the flag.  Returns 0 or -1 with err.
 */
int cli_filter_finish(struct cli_filter *cf, char *err, size_t errsz);

/* The filter flags' help for a command's --help: the recipient as
 * "--to ADDR" (also --rcpt) when with_to, else "--rcpt ADDR"; --all when
 * with_all.  cli_filter_usage_when: what WHEN may be, for its end. */
void cli_filter_usage(FILE *f, bool with_to, bool with_all);
void cli_filter_usage_when(FILE *f);

#endif
