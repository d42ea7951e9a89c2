/*
 * cli_filter.h - the values of `smtptap sessions`'s filter flags, parsed
 * for a struct reader_filter: times (--since, --until) and session ids
 * (--id).  Pure: text in, values out (the current time is an argument);
 * unit-tested in tests/unit/test_cli_filter.c.
 */
#ifndef SMTPTAP_CLI_FILTER_H
#define SMTPTAP_CLI_FILTER_H

#include <stddef.h>
#include <stdint.h>

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

#endif
