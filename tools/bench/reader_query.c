/*
 * reader_query.c - what one `smtptap sessions` search costs inside the
 * process: reader_sessions() on an open reader, in its own request, run
 * RUNS times; prints the median and fastest in microseconds and the rows
 * returned.  tools/bench/reader.py runs it beside the whole command (whose
 * time is mostly starting the process).  A measurement, never a test.
 *
 *   reader_query DB RUNS [--to A] [--from A] [--since WHEN] [--until WHEN]
 *                [--search TEXT] [--outcome W] [--client A] [--tls | --no-tls]
 *                [--before ID] [--after ID] [--limit N]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smtptap/cli_filter.h"
#include "smtptap/reader.h"
#include "smtptap/store.h"
#include "smtptap/util.h"

#define RUNS_MAX 1000

static int
count_cb(const struct reader_session *s, void *arg)
{
	(void)s;
	(*(long *)arg)++;
	return 0;
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	struct reader_filter f;
	struct reader_page pg;
	struct reader *rd;
	double t[RUNS_MAX], t0;
	const char *why;
	char err[512];
	long runs, rows = 0, v;
	int64_t now = util_now_us();
	int i;

	if (argc < 3 || util_parse_int(argv[2], 1, RUNS_MAX, &runs) < 0) {
		fprintf(stderr, "usage: reader_query DB RUNS [filters]\n");
		return 2;
	}
	memset(&f, 0, sizeof(f));
	memset(&pg, 0, sizeof(pg));
	pg.limit = 50;
	pg.oldest_first = true; /* as `smtptap sessions` lists */
	for (i = 3; i < argc; i += 2) {
		const char *k = argv[i], *a = i + 1 < argc ? argv[i + 1] : "";

		if (strcmp(k, "--tls") == 0 || strcmp(k, "--no-tls") == 0) {
			f.tls = k[2] == 't' ? READER_TLS_YES : READER_TLS_NO;
			i--; /* no value */
		} else if (i + 1 >= argc) {
			fprintf(stderr, "reader_query: %s needs a value\n", k);
			return 2;
		} else if (strcmp(k, "--to") == 0)
			f.recipient = a;
		else if (strcmp(k, "--from") == 0)
			f.sender = a;
		else if (strcmp(k, "--search") == 0)
			f.subject = a;
		else if (strcmp(k, "--outcome") == 0)
			f.outcome = a;
		else if (strcmp(k, "--client") == 0)
			f.client = a;
		else if ((strcmp(k, "--since") == 0 && cli_filter_when(a, now, &f.since_us, &why) == 0) ||
			 (strcmp(k, "--until") == 0 && cli_filter_when(a, now, &f.until_us, &why) == 0))
			;
		else if (strcmp(k, "--before") == 0 && util_parse_int(a, 1, 2147483647L, &v) == 0)
			pg.before_id = v;
		else if (strcmp(k, "--after") == 0 && util_parse_int(a, 1, 2147483647L, &v) == 0)
			pg.after_id = v;
		else if (strcmp(k, "--limit") == 0 && util_parse_int(a, 0, 2147483647L, &v) == 0)
			pg.limit = v;
		else {
			fprintf(stderr, "reader_query: bad argument %s %s\n", k, a);
			return 2;
		}
	}
	store_global_init();
	if ((rd = reader_open(argv[1], err, sizeof(err))) == NULL) {
		fprintf(stderr, "reader_query: %s: %s\n", argv[1], err);
		return 1;
	}
	for (i = 0; i <= runs; i++) {
		rows = 0;
		t0 = now_us();
		if (reader_begin(rd, err, sizeof(err)) != READER_OK ||
		    reader_sessions(rd, &f, &pg, count_cb, &rows, NULL, err, sizeof(err)) != READER_OK) {
			fprintf(stderr, "reader_query: %s\n", err);
			reader_close(rd);
			return 1;
		}
		reader_end(rd);
		/* run 0 warms the cache and prepares nothing for later runs:
		 * every run builds and prepares its statement, as a request does */
		if (i > 0)
			t[i - 1] = now_us() - t0;
	}
	reader_close(rd);
	qsort(t, (size_t)runs, sizeof(t[0]), cmp_double);
	printf("%.0f %.0f %ld\n", t[runs / 2], t[0], rows);
	return 0;
}
