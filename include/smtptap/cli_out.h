/*
 * cli_out.h - where a read-side subcommand's output goes (standard output
 * or a file given with -o), and the first write error seen on it.
 *
 * Write errors are remembered (the first errno) and reported once, by
 * cli_out_close(), naming the file: a full disk or a closed pipe gives
 * one clear line and exit status 1, never a silently short output.
 */
#ifndef SMTPTAP_CLI_OUT_H
#define SMTPTAP_CLI_OUT_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

struct cli_out {
	FILE *f;
	const char *name; /* path, or "standard output" */
	bool is_stdout;
	bool is_reg;	  /* a regular file we created: removed if incomplete */
	char path[PATH_MAX];
	int werr;
};

/* path NULL or "-": standard output.  Refuses to truncate the database
 * being read (db, when not NULL).  Returns 0, or -1 (reported). */
int cli_out_open(struct cli_out *o, const char *path, const char *db);
/* Note the first write error on o, while errno still tells what it was. */
void cli_out_check(struct cli_out *o);
/* Flush and close (stdout is only flushed); a partial regular file is
 * removed.  Returns 0, or -1 (reported).  A closed or never opened one
 * (zeroed) is fine. */
int cli_out_close(struct cli_out *o);
/* Close without keeping what was written: a regular file we created is
 * removed (the caller has reported why).  A closed one is fine. */
void cli_out_discard(struct cli_out *o);
/* Where to write `name` given -o: into it when it is a directory, else to
 * it (NULL: standard output).  Returns 0, or -1 (reported). */
int cli_out_target(char *buf, size_t bufsz, const char *opath, const char *name);

#endif
