/*
 * cli_ca.c - `smtptap ca init|show`: the local CA that signs the
 * certificates smtptap presents to clients when it terminates TLS.
 *
 * `init` is what the proxy does on first use, done ahead of time so the
 * CA can be trusted before the first session; `show` says where the
 * certificate is, its fingerprint (to compare with what a client shows),
 * and how each kind of client is told to trust it.  Neither ever prints
 * or touches the key beyond creating it.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "smtptap/ca.h"
#include "smtptap/cli.h"
#include "smtptap/json.h"
#include "smtptap/log.h"

enum cli_ca_cmd { CLI_CA_NONE, CLI_CA_INIT, CLI_CA_SHOW };

static void cli_ca_usage(FILE *f, enum cli_ca_cmd cmd);
static const char *cli_ca_abs(const char *path, char *buf, size_t bufsz);
static int cli_ca_init(const char *dir, bool dir_given, bool as_json);
static int cli_ca_show(const char *dir, bool dir_given, bool as_json);
static void cli_ca_trust_help(FILE *f, const char *cert);
static int cli_ca_json(const char *dir, const char *cert, const char *fp, int created);

static void
cli_ca_usage(FILE *f, enum cli_ca_cmd cmd)
{
	switch (cmd) {
	case CLI_CA_INIT:
		fputs("usage: smtptap ca init [--ca-dir DIR] [--json]\n"
		      "\n"
		      "Create the local CA (an EC P-256 key, mode 0600, and a self-signed\n"
		      "certificate valid for ten years) unless it exists.  smtptap proxy\n"
		      "creates it on first use too; creating it first lets you trust it before\n"
		      "the first session.\n"
		      "\n"
		      "  -c, --ca-dir DIR  where the CA lives (default $XDG_DATA_HOME/smtptap/ca,\n"
		      "                    else ~/.local/share/smtptap/ca)\n"
		      "  -j, --json        print {\"ca_dir\", \"cert\", \"fingerprint_sha256\", \"created\"}\n"
		      "  -h, --help        this help\n",
		      f);
		break;
	case CLI_CA_SHOW:
		fputs("usage: smtptap ca show [--ca-dir DIR] [--json]\n"
		      "\n"
		      "Print the CA certificate's path and SHA-256 fingerprint, and how to make\n"
		      "clients trust it (system store, Python, Node.js, PHP, curl, swaks).\n"
		      "\n"
		      "  -c, --ca-dir DIR  where the CA lives (default $XDG_DATA_HOME/smtptap/ca,\n"
		      "                    else ~/.local/share/smtptap/ca)\n"
		      "  -j, --json        print {\"ca_dir\", \"cert\", \"fingerprint_sha256\"}\n"
		      "  -h, --help        this help\n",
		      f);
		break;
	default:
		fputs("usage: smtptap ca init|show [--ca-dir DIR] [--json]\n"
		      "\n"
		      "The local certificate authority that signs the certificates smtptap\n"
		      "presents to clients when it terminates TLS (forged to mirror the\n"
		      "upstream's names).\n"
		      "\n"
		      "  init   create the CA unless it exists (the proxy also does on first use)\n"
		      "  show   print the certificate's path, fingerprint and how to trust it\n"
		      "\n"
		      "  -c, --ca-dir DIR  where the CA lives (default $XDG_DATA_HOME/smtptap/ca,\n"
		      "                    else ~/.local/share/smtptap/ca)\n"
		      "  -j, --json        machine-readable output\n"
		      "  -h, --help        this help ('smtptap ca init --help' for one command)\n",
		      f);
		break;
	}
}

/* path made absolute for printing, so the trust hints work from any
 * directory; path itself when that fails. */
static const char *
cli_ca_abs(const char *path, char *buf, size_t bufsz)
{
	char tmp[PATH_MAX];

	if (realpath(path, tmp) == NULL || strlen(tmp) >= bufsz)
		return path;
	memcpy(buf, tmp, strlen(tmp) + 1);
	return buf;
}

static int
cli_ca_json(const char *dir, const char *cert, const char *fp, int created)
{
	struct json j;

	json_init(&j, stdout, 1);
	json_object_begin(&j);
	json_kv_string(&j, "ca_dir", dir);
	json_kv_string(&j, "cert", cert);
	json_kv_string(&j, "fingerprint_sha256", fp);
	if (created >= 0)
		json_kv_bool(&j, "created", created == 1);
	json_object_end(&j);
	if (json_finish(&j) < 0 || fflush(stdout) != 0) {
		log_warnx("writing to standard output failed");
		return CLI_EXIT_FAIL;
	}
	return CLI_EXIT_OK;
}

static int
cli_ca_init(const char *dir, bool dir_given, bool as_json)
{
	char err[PATH_MAX + 256], cert[PATH_MAX], key[PATH_MAX], absdir[PATH_MAX], fp[CA_FINGERPRINT_MAX];
	const char *adir;
	int r;

	if ((r = ca_init(dir, err, sizeof(err))) < 0) {
		log_warnx("ca init: %s", err);
		return CLI_EXIT_FAIL;
	}
	if (ca_fingerprint(dir, fp, sizeof(fp), err, sizeof(err)) < 0) {
		log_warnx("ca init: %s", err);
		return CLI_EXIT_FAIL;
	}
	adir = cli_ca_abs(dir, absdir, sizeof(absdir));
	ca_paths(adir, cert, sizeof(cert), key, sizeof(key));
	if (as_json)
		return cli_ca_json(adir, cert, fp, r);
	printf("%s %s\n", r == 1 ? "created" : "already there:", cert);
	printf("SHA-256 fingerprint: %s\n", fp);
	if (r == 1)
		printf("key (mode 0600): %s\n", key);
	printf("Run 'smtptap ca show%s%s' to see how to make clients trust it.\n", dir_given ? " --ca-dir " : "",
	       dir_given ? adir : "");
	return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

static void
cli_ca_trust_help(FILE *f, const char *cert)
{
	fprintf(f,
		"\n"
		"Clients reject the certificates smtptap presents until they trust this CA.\n"
		"Trust it only on machines you test with; anyone with its key can pose as\n"
		"any server to them.\n"
		"\n"
		"  System store (Debian, Ubuntu; most programs on the machine):\n"
		"    sudo cp %s /usr/local/share/ca-certificates/smtptap.crt\n"
		"    sudo update-ca-certificates\n"
		"  Python (smtplib, Django, ...):\n"
		"    SSL_CERT_FILE=%s   (replaces the default bundle)\n"
		"    or ssl.create_default_context(cafile=\"%s\")\n"
		"  Node.js (Nodemailer):\n"
		"    NODE_EXTRA_CA_CERTS=%s\n"
		"  PHP (PHPMailer, WordPress):\n"
		"    openssl.cafile=%s   in php.ini\n"
		"    or $mail->SMTPOptions = ['ssl' => ['cafile' => '%s']];\n"
		"  curl:\n"
		"    curl --cacert %s ...\n"
		"  swaks:\n"
		"    swaks --tls-ca-path %s ...\n",
		cert, cert, cert, cert, cert, cert, cert, cert);
}

static int
cli_ca_show(const char *dir, bool dir_given, bool as_json)
{
	char err[PATH_MAX + 256], cert[PATH_MAX], key[PATH_MAX], absdir[PATH_MAX], fp[CA_FINGERPRINT_MAX];
	const char *adir;
	struct stat sb;

	ca_paths(dir, cert, sizeof(cert), key, sizeof(key));
	if (stat(cert, &sb) < 0 && errno == ENOENT && stat(key, &sb) < 0 && errno == ENOENT) {
		log_warnx("ca show: no CA in %s yet: run 'smtptap ca init%s%s' (smtptap proxy also creates it "
			  "on first use)",
			  dir, dir_given ? " --ca-dir " : "", dir_given ? dir : "");
		return CLI_EXIT_FAIL;
	}
	if (ca_fingerprint(dir, fp, sizeof(fp), err, sizeof(err)) < 0) {
		log_warnx("ca show: %s", err);
		return CLI_EXIT_FAIL;
	}
	adir = cli_ca_abs(dir, absdir, sizeof(absdir));
	ca_paths(adir, cert, sizeof(cert), key, sizeof(key));
	if (as_json)
		return cli_ca_json(adir, cert, fp, -1);
	printf("CA certificate: %s\n", cert);
	printf("SHA-256 fingerprint: %s\n", fp);
	cli_ca_trust_help(stdout, cert);
	return fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

int
cli_ca(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "ca-dir", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	enum cli_ca_cmd cmd = CLI_CA_NONE;
	const char *dir = NULL;
	bool as_json = false, help = false, dir_given;
	int c;

	optind = 1;
	/* GNU getopt moves the command word after the options, so
	 * `ca --ca-dir X init` and `ca init --ca-dir X` both work. */
	while ((c = getopt_long(argc, argv, "c:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			dir = optarg;
			break;
		case 'j':
			as_json = true;
			break;
		case 'h':
			help = true;
			break;
		default:
			fputs("Try 'smtptap ca --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		if (strcmp(argv[optind], "init") == 0)
			cmd = CLI_CA_INIT;
		else if (strcmp(argv[optind], "show") == 0)
			cmd = CLI_CA_SHOW;
		else if (!help) {
			log_warnx("ca: unknown command '%s' (try 'smtptap ca --help')", argv[optind]);
			return CLI_EXIT_USAGE;
		}
	}
	if (help) {
		cli_ca_usage(stdout, cmd);
		return CLI_EXIT_OK;
	}
	if (cmd == CLI_CA_NONE) {
		log_warnx("ca: missing command, init or show (try 'smtptap ca --help')");
		return CLI_EXIT_USAGE;
	}
	if (optind + 1 < argc) {
		log_warnx("ca %s: unexpected argument '%s' (try 'smtptap ca %s --help')", argv[optind],
			  argv[optind + 1], argv[optind]);
		return CLI_EXIT_USAGE;
	}
	dir_given = dir != NULL;
	if (dir == NULL && (dir = ca_default_dir()) == NULL) {
		log_warnx("ca: neither XDG_DATA_HOME nor HOME is set: give --ca-dir DIR");
		return CLI_EXIT_USAGE;
	}
	if (dir[0] == '\0') {
		log_warnx("ca: --ca-dir needs a directory (try 'smtptap ca --help')");
		return CLI_EXIT_USAGE;
	}
	return cmd == CLI_CA_INIT ? cli_ca_init(dir, dir_given, as_json) : cli_ca_show(dir, dir_given, as_json);
}
