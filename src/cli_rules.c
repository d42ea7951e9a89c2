/*
 * cli_rules.c - `smtptap rules check FILE [--json] [--explain]`: validate
 * a rules file the way `smtptap proxy --rules FILE` will, without starting
 * anything.
 *
 * Errors go to stderr as "FILE:LINE:COL: message", one per line, the form
 * compilers use, so editors and CI logs jump to them; `--explain` prints
 * each rule back as the engine understood it (normalised), which is how a
 * user sees that `25%` became 0.25 or that a rule is read the way they
 * meant.
 */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/cli.h"
#include "smtptap/json.h"
#include "smtptap/log.h"
#include "smtptap/rules.h"

static void cli_rules_usage(FILE *f, bool check);
static int cli_rules_check(const char *path, bool as_json, bool explain);
static int cli_rules_json(const char *path, const char *text, size_t len, bool explain);
static void cli_rules_json_error(void *arg, unsigned line, unsigned col, const char *msg);
static void cli_rules_explain(const struct rules *r, FILE *f);

static void
cli_rules_usage(FILE *f, bool check)
{
	if (check)
		fputs("usage: smtptap rules check FILE [--json] [--explain]\n"
		      "\n"
		      "Check a rules file (the one smtptap proxy --rules FILE loads) and report\n"
		      "every error as FILE:LINE:COL: message on standard error.  Exit status 0\n"
		      "when it is valid (\"FILE: N rules ok\"), 1 when it is not or cannot be\n"
		      "read, 2 for a usage error.  The language is described in docs/rules.md.\n"
		      "\n"
		      "  -e, --explain  print each rule as the engine understood it, normalised\n"
		      "  -j, --json     print {\"file\", \"ok\", \"rules\", \"errors\": [{\"line\",\n"
		      "                 \"column\", \"message\"}]} (with --explain, \"explain\": [{\"line\",\n"
		      "                 \"text\", \"normalised\"}]) on standard output instead\n"
		      "  -h, --help     this help\n",
		      f);
	else
		fputs("usage: smtptap rules check FILE [--json] [--explain]\n"
		      "\n"
		      "Fault rules: `smtptap proxy --rules FILE` applies a file of rules such as\n"
		      "\n"
		      "  on rcpt to ~ \"^bad@\" reply 550 5.1.1 \"No such user\"\n"
		      "  on mail session 1-2 reply 451 4.3.0 \"Try again later\"\n"
		      "  on ehlo strip STARTTLS\n"
		      "\n"
		      "to the sessions it relays (docs/rules.md describes the language).\n"
		      "\n"
		      "  check  validate a rules file and name the line and column of each error\n"
		      "\n"
		      "  -h, --help  this help ('smtptap rules check --help' for the command)\n",
		      f);
}

/* Each rule, normalised, after its line number. */
static void
cli_rules_explain(const struct rules *r, FILE *f)
{
	char buf[8192];
	const struct rule *ru;
	size_t i;

	for (i = 0; (ru = rules_at(r, i)) != NULL; i++) {
		rule_format(ru, buf, sizeof(buf));
		fprintf(f, "%5u  %s\n", rule_line(ru), buf);
	}
}

struct cli_rules_errs {
	struct json *j;
	size_t n;
};

static void
cli_rules_json_error(void *arg, unsigned line, unsigned col, const char *msg)
{
	struct cli_rules_errs *e = arg;

	e->n++;
	json_object_begin(e->j);
	json_kv_int(e->j, "line", line);
	json_kv_int(e->j, "column", col);
	json_kv_string(e->j, "message", msg);
	json_object_end(e->j);
}

/* --json: every error (no cap: a script may want them all). */
static int
cli_rules_json(const char *path, const char *text, size_t len, bool explain)
{
	struct cli_rules_errs e;
	struct json j;
	struct rules *r;
	const struct rule *ru;
	char buf[8192];
	size_t i;

	json_init(&j, stdout, 2);
	json_object_begin(&j);
	json_kv_string(&j, "file", path);
	json_key(&j, "errors");
	json_array_begin(&j);
	e.j = &j;
	e.n = 0;
	r = rules_parse_cb(text, len, 0, cli_rules_json_error, &e);
	json_array_end(&j);
	json_kv_bool(&j, "ok", r != NULL);
	json_kv_int(&j, "rules", (int64_t)rules_count(r));
	if (explain && r != NULL) {
		json_key(&j, "explain");
		json_array_begin(&j);
		for (i = 0; (ru = rules_at(r, i)) != NULL; i++) {
			rule_format(ru, buf, sizeof(buf));
			json_object_begin(&j);
			json_kv_int(&j, "line", rule_line(ru));
			json_kv_string(&j, "text", rule_text(ru));
			json_kv_string(&j, "normalised", buf);
			json_object_end(&j);
		}
		json_array_end(&j);
	}
	json_object_end(&j);
	if (json_finish(&j) < 0 || fflush(stdout) != 0) {
		log_warnx("writing to standard output failed");
		rules_unref(r);
		return CLI_EXIT_FAIL;
	}
	/* out of memory is the one failure with no error listed */
	if (r == NULL && e.n == 0)
		log_warnx("rules check: %s: out of memory", path);
	rules_unref(r);
	return r != NULL ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

static int
cli_rules_check(const char *path, bool as_json, bool explain)
{
	char err[8192];
	struct rules *r;
	char *text;
	size_t len, n;
	int rc;

	if (rules_read_file(path, &text, &len, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return CLI_EXIT_FAIL;
	}
	if (as_json) {
		rc = cli_rules_json(path, text, len, explain);
		free(text);
		return rc;
	}
	r = rules_parse(path, text, len, 0, err, sizeof(err));
	free(text);
	if (r == NULL) {
		fprintf(stderr, "%s\n", err);
		return CLI_EXIT_FAIL;
	}
	n = rules_count(r);
	printf("%s: %zu rule%s ok\n", path, n, n == 1 ? "" : "s");
	if (explain)
		cli_rules_explain(r, stdout);
	rules_unref(r);
	if (fflush(stdout) != 0) {
		log_warnx("writing to standard output failed");
		return CLI_EXIT_FAIL;
	}
	return CLI_EXIT_OK;
}

int
cli_rules(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "explain", no_argument, NULL, 'e' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	bool as_json = false, explain = false, help = false, check = false;
	int c;

	optind = 1;
	/* GNU getopt moves the words after the options, so both
	 * `rules check --json FILE` and `rules --json check FILE` work. */
	while ((c = getopt_long(argc, argv, "jeh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			as_json = true;
			break;
		case 'e':
			explain = true;
			break;
		case 'h':
			help = true;
			break;
		default:
			fputs("Try 'smtptap rules check --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		if (strcmp(argv[optind], "check") == 0) {
			check = true;
		} else if (!help) {
			log_warnx("rules: unknown command '%s' (try 'smtptap rules --help')", argv[optind]);
			return CLI_EXIT_USAGE;
		}
	}
	if (help) {
		cli_rules_usage(stdout, check);
		return CLI_EXIT_OK;
	}
	if (!check) {
		log_warnx("rules: missing command: check (try 'smtptap rules --help')");
		return CLI_EXIT_USAGE;
	}
	if (optind + 1 >= argc) {
		log_warnx("rules check: missing FILE (try 'smtptap rules check --help')");
		return CLI_EXIT_USAGE;
	}
	if (optind + 2 < argc) {
		log_warnx("rules check: unexpected argument '%s': one FILE at a time (try 'smtptap rules check --help')",
			  argv[optind + 2]);
		return CLI_EXIT_USAGE;
	}
	if (argv[optind + 1][0] == '\0') {
		log_warnx("rules check: FILE is empty (try 'smtptap rules check --help')");
		return CLI_EXIT_USAGE;
	}
	return cli_rules_check(argv[optind + 1], as_json, explain);
}
