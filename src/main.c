/*
 * main.c - `smtptap COMMAND ...`: pick the subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "smtptap/cli.h"
#include "smtptap/log.h"
#include "smtptap/store.h"

#ifndef SMTPTAP_VERSION
#define SMTPTAP_VERSION "unknown"
#endif

static void main_usage(FILE *f);

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *summary;
} commands[] = {
	{ "proxy", cli_proxy, "relay or capture SMTP sessions and record them" },
	{ "sessions", cli_sessions, "list recorded sessions" },
	{ "show", cli_show, "print one session's transcript (--json, --raw)" },
	{ "export", cli_export, "write a session's messages as .eml, mbox or JSON" },
	{ "replay", cli_replay, "send a recorded session's client side to a server again (--diff)" },
	{ "mock", cli_mock, "play a recorded session's server side to clients" },
	{ "prune", cli_prune, "delete sessions older than an age, whole" },
	{ "ca", cli_ca, "create or show the local CA that signs intercepted TLS" },
	{ "rules", cli_rules, "check a fault rules file (rules check FILE)" },
};

static void
main_usage(FILE *f)
{
	size_t i;

	fputs("usage: smtptap COMMAND [OPTIONS]\n"
	      "\n"
	      "An SMTP debugging proxy: sits between a mail client and its server (or\n"
	      "answers as a capture server) and records every command, reply and\n"
	      "message in SQLite.\n"
	      "\n"
	      "Commands:\n",
	      f);
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
	fputs("\n'smtptap COMMAND --help' describes each command; man smtptap for more.\n", f);
}

int
main(int argc, char **argv)
{
	size_t i;

	store_global_init();
	if (argc < 2) {
		main_usage(stderr);
		return CLI_EXIT_USAGE;
	}
	if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0) {
		main_usage(stdout);
		return CLI_EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0) {
		printf("smtptap %s\n", SMTPTAP_VERSION);
		return CLI_EXIT_OK;
	}
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name) == 0)
			return commands[i].run(argc - 1, argv + 1);
	}
	log_warnx("unknown command '%s' (try 'smtptap --help')", argv[1]);
	return CLI_EXIT_USAGE;
}
