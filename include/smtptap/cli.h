/*
 * cli.h - the subcommands.  main.c picks one by name and hands it argc/argv
 * with argv[0] being the subcommand name (so getopt_long works as usual).
 *
 * Exit codes (documented in docs/smtptap.1):
 *   0 success; 1 runtime failure (database, network, I/O);
 *   2 usage error (bad flag or argument); 3 not found (no such session or
 *   message).
 */
#ifndef SMTPTAP_CLI_H
#define SMTPTAP_CLI_H

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
#define CLI_EXIT_USAGE 2
#define CLI_EXIT_NOTFOUND 3

/* Default database path when --db is not given. */
#define CLI_DEFAULT_DB "./smtptap.db"

int cli_proxy(int argc, char **argv);	 /* cli_proxy.c */
int cli_sessions(int argc, char **argv); /* cli_sessions.c */
int cli_show(int argc, char **argv);	 /* cli_show.c */
int cli_export(int argc, char **argv);	 /* cli_export.c */
int cli_ca(int argc, char **argv);	 /* cli_ca.c */
int cli_rules(int argc, char **argv);	 /* cli_rules.c */
int cli_prune(int argc, char **argv);	 /* cli_prune.c */
int cli_replay(int argc, char **argv);	 /* cli_replay.c */
int cli_mock(int argc, char **argv);	 /* cli_mock.c */

#endif
