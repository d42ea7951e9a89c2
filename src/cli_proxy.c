/*
 * cli_proxy.c - `smtptap proxy`: parse and check the options, then run.
 *
 * Every check that can fail happens here, before anything listens, so a
 * typo gives one clear line and exit status 2 instead of a half-started
 * daemon.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <event2/util.h>

#include "smtptap/cli.h"
#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/util.h"

static void cli_proxy_usage(FILE *f);
static int cli_proxy_onoff(const char *flag, const char *v, bool *out);
static int cli_proxy_seconds(const char *flag, const char *v, long max, int *out);

static void
cli_proxy_usage(FILE *f)
{
	fputs("usage: smtptap proxy [--listen ADDR:PORT]... [--upstream HOST:PORT | --sink]\n"
	      "                     [--db PATH] [--redact-auth on|off] [--client-tls off]\n"
	      "                     [--idle-timeout S] [--reply-timeout S] [--connect-timeout S]\n"
	      "                     [--grace S] [--max-sessions N] [-v]...\n"
	      "\n"
	      "Relay SMTP clients to an upstream server (or answer them as a capture\n"
	      "server with --sink, the default without --upstream) and record every\n"
	      "command, reply and message in an SQLite database.\n"
	      "\n"
	      "  -l, --listen ADDR:PORT   listen here (default 127.0.0.1:2525; repeatable;\n"
	      "                           port 0 picks a free port, printed on stderr)\n"
	      "  -u, --upstream HOST:PORT relay to this server (host names resolved\n"
	      "                           without blocking; [v6addr]:port for IPv6)\n"
	      "  -s, --sink               answer clients ourselves, accept every message\n"
	      "  -d, --db PATH            database file (default ./smtptap.db, mode 0600)\n"
	      "      --redact-auth on|off keep AUTH credentials out of the database (default on)\n"
	      "      --client-tls off     only 'off' in this version: STARTTLS is removed\n"
	      "                           from EHLO replies and answered with 454\n"
	      "      --idle-timeout S     close a silent client after S seconds (default 300)\n"
	      "      --reply-timeout S    give up on an upstream silent for S seconds\n"
	      "                           while a reply is due (default 600)\n"
	      "      --connect-timeout S  upstream connect timeout (default 30)\n"
	      "      --grace S            on SIGTERM/SIGINT, let sessions finish for S\n"
	      "                           seconds (default 10)\n"
	      "      --max-sessions N     concurrent sessions; more wait (default 1000)\n"
	      "  -v, --verbose            print each conversation live on stderr\n"
	      "  -h, --help               this help\n",
	      f);
}

static int
cli_proxy_onoff(const char *flag, const char *v, bool *out)
{
	if (strcmp(v, "on") == 0)
		*out = true;
	else if (strcmp(v, "off") == 0)
		*out = false;
	else {
		log_warnx("%s: expected 'on' or 'off', got '%s'", flag, v);
		return -1;
	}
	return 0;
}

static int
cli_proxy_seconds(const char *flag, const char *v, long max, int *out)
{
	long n;

	if (util_parse_int(v, 1, max, &n) < 0) {
		log_warnx("%s: expected a number of seconds from 1 to %ld, got '%s'", flag, max, v);
		return -1;
	}
	*out = (int)n;
	return 0;
}

int
cli_proxy(int argc, char **argv)
{
	enum { OPT_REDACT = 256, OPT_CLIENT_TLS, OPT_IDLE, OPT_REPLY, OPT_CONNECT, OPT_GRACE, OPT_MAXSESS };
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "upstream", required_argument, NULL, 'u' },
		{ "sink", no_argument, NULL, 's' },
		{ "db", required_argument, NULL, 'd' },
		{ "redact-auth", required_argument, NULL, OPT_REDACT },
		{ "client-tls", required_argument, NULL, OPT_CLIENT_TLS },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE },
		{ "reply-timeout", required_argument, NULL, OPT_REPLY },
		{ "connect-timeout", required_argument, NULL, OPT_CONNECT },
		{ "grace", required_argument, NULL, OPT_GRACE },
		{ "max-sessions", required_argument, NULL, OPT_MAXSESS },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct proxy_config cfg;
	bool sink = false;
	char err[256];
	long n;
	int c;

	memset(&cfg, 0, sizeof(cfg));
	cfg.db_path = CLI_DEFAULT_DB;
	cfg.redact_auth = true;
	cfg.idle_timeout = 300;
	cfg.reply_timeout = 600;
	cfg.connect_timeout = 30;
	cfg.grace = 10;
	cfg.max_sessions = 1000;

	optind = 1;
	while ((c = getopt_long(argc, argv, "l:u:sd:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (cfg.nlisten == PROXY_LISTEN_MAX) {
				log_warnx("--listen: at most %d listeners", PROXY_LISTEN_MAX);
				return CLI_EXIT_USAGE;
			}
			cfg.listen[cfg.nlisten++] = optarg;
			break;
		case 'u':
			cfg.upstream = optarg;
			break;
		case 's':
			sink = true;
			break;
		case 'd':
			cfg.db_path = optarg;
			break;
		case OPT_REDACT:
			if (cli_proxy_onoff("--redact-auth", optarg, &cfg.redact_auth) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_CLIENT_TLS:
			if (strcmp(optarg, "off") != 0) {
				log_warnx("--client-tls %s: this version only supports 'off' (TLS interception "
					  "is not built yet)", optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case OPT_IDLE:
			if (cli_proxy_seconds("--idle-timeout", optarg, 86400, &cfg.idle_timeout) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_REPLY:
			if (cli_proxy_seconds("--reply-timeout", optarg, 86400, &cfg.reply_timeout) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_CONNECT:
			if (cli_proxy_seconds("--connect-timeout", optarg, 3600, &cfg.connect_timeout) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_GRACE:
			if (util_parse_int(optarg, 0, 3600, &n) < 0) {
				log_warnx("--grace: expected seconds from 0 to 3600, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			cfg.grace = (int)n;
			break;
		case OPT_MAXSESS:
			if (util_parse_int(optarg, 1, 100000, &n) < 0) {
				log_warnx("--max-sessions: expected a number from 1 to 100000, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			cfg.max_sessions = (int)n;
			break;
		case 'v':
			cfg.verbosity++;
			break;
		case 'h':
			cli_proxy_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap proxy --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (optind < argc) {
		log_warnx("proxy: unexpected argument '%s' (try 'smtptap proxy --help')", argv[optind]);
		return CLI_EXIT_USAGE;
	}
	if (sink && cfg.upstream != NULL) {
		log_warnx("--sink and --upstream exclude each other: choose one");
		return CLI_EXIT_USAGE;
	}
	if (cfg.upstream != NULL) {
		if (util_split_hostport(cfg.upstream, cfg.upstream_host, sizeof(cfg.upstream_host), cfg.upstream_port,
					sizeof(cfg.upstream_port), err, sizeof(err)) < 0) {
			log_warnx("--upstream %s", err);
			return CLI_EXIT_USAGE;
		}
		if (cfg.upstream_host[0] == '\0' || strcmp(cfg.upstream_port, "0") == 0) {
			log_warnx("--upstream %s: needs a host and a port other than 0", cfg.upstream);
			return CLI_EXIT_USAGE;
		}
		cfg.upstream_salen = (int)sizeof(cfg.upstream_sa);
		if (evutil_parse_sockaddr_port(cfg.upstream, (struct sockaddr *)&cfg.upstream_sa,
					       &cfg.upstream_salen) < 0)
			cfg.upstream_salen = 0;
	}
	if (cfg.nlisten == 0)
		cfg.listen[cfg.nlisten++] = "127.0.0.1:2525";
	for (size_t i = 0; i < cfg.nlisten; i++) {
		char host[256], port[8];

		if (util_split_hostport(cfg.listen[i], host, sizeof(host), port, sizeof(port), err, sizeof(err)) < 0) {
			log_warnx("--listen %s", err);
			return CLI_EXIT_USAGE;
		}
	}
	log_init(cfg.verbosity);
	return proxy_run(&cfg) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}
