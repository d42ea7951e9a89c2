/*
 * cli_proxy.c - `smtptap proxy`: parse and check the options, then run.
 *
 * Every check that can fail happens here, before anything listens, so a
 * typo gives one clear line and exit status 2 instead of a half-started
 * daemon.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/util.h>

#include "smtptap/cli.h"
#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/rules.h"
#include "smtptap/util.h"

static void cli_proxy_usage(FILE *f);
static int cli_proxy_onoff(const char *flag, const char *v, bool *out);
static int cli_proxy_seconds(const char *flag, const char *v, long max, int *out);
struct cli_listen;
static int cli_proxy_listen_parse(const char *arg, struct cli_listen *l);
static int cli_proxy_mode(const char *what, const char *v, enum proxy_tls_mode *out);
static int cli_proxy_route(struct proxy_route *r, const struct cli_listen *l, const char *upstream, bool sink,
			   const char *client_tls, const char *upstream_tls);

static void
cli_proxy_usage(FILE *f)
{
	fputs("usage: smtptap proxy [--listen ADDR:PORT[,OPTION=VALUE...]]... [--upstream HOST:PORT | --sink]\n"
	      "                     [--db PATH] [--client-tls MODE] [--upstream-tls MODE]\n"
	      "                     [--ca-dir DIR | --cert FILE --key FILE] [--upstream-verify on|off]\n"
	      "                     [--upstream-ca FILE] [--upstream-sni NAME] [--keylog FILE]\n"
	      "                     [--rules FILE [--rules-seed N]] [--redact-auth on|off]\n"
	      "                     [--idle-timeout S] [--reply-timeout S]\n"
	      "                     [--connect-timeout S] [--grace S] [--max-sessions N]\n"
	      "                     [--retain AGE] [--max-db-size SIZE] [-v]...\n"
	      "\n"
	      "Relay SMTP clients to an upstream server (or answer them as a capture\n"
	      "server with --sink, the default without --upstream) and record every\n"
	      "command, reply and message in an SQLite database.  TLS is terminated\n"
	      "and re-originated on either leg, with certificates forged by a local CA.\n"
	      "\n"
	      "  -l, --listen ADDR:PORT   listen here (default 127.0.0.1:2525; repeatable;\n"
	      "                           port 0 picks a free port, printed on stderr).\n"
	      "                           Per-listener options after commas override the\n"
	      "                           flags: upstream=HOST:PORT, sink, client-tls=MODE,\n"
	      "                           upstream-tls=MODE (e.g. 127.0.0.1:2465,client-tls=implicit)\n"
	      "  -u, --upstream HOST:PORT relay to this server (host names resolved\n"
	      "                           without blocking; [v6addr]:port for IPv6)\n"
	      "  -s, --sink               answer clients ourselves, accept every message\n"
	      "  -d, --db PATH            database file (default ./smtptap.db, mode 0600)\n"
	      "      --client-tls MODE    TLS with clients: off, auto (relay default: offer\n"
	      "                           STARTTLS exactly when the upstream does), starttls\n"
	      "                           (always offer it), implicit (TLS from the first\n"
	      "                           byte, as on port 465).  Sink mode default: off\n"
	      "      --upstream-tls MODE  TLS to the upstream: off, auto (default: STARTTLS\n"
	      "                           when offered), starttls (required), implicit\n"
	      "      --ca-dir DIR         the local CA that signs forged certificates\n"
	      "                           (default $XDG_DATA_HOME/smtptap/ca; created on\n"
	      "                           first use; see 'smtptap ca show')\n"
	      "      --cert FILE --key FILE  serve this certificate instead of forging\n"
	      "      --upstream-verify on|off  check the upstream's certificate and name\n"
	      "                           (default on: refused with 421 4.7.0 otherwise)\n"
	      "      --upstream-ca FILE   trust these CAs for the upstream (default: system)\n"
	      "      --upstream-sni NAME  the name sent and checked upstream (default: the\n"
	      "                           upstream host)\n"
	      "      --keylog FILE        append TLS secrets of both legs (NSS key log\n"
	      "                           format: Wireshark decrypts a capture with it)\n"
	      "      --rules FILE         fault rules (docs/rules.md; 'smtptap rules check FILE'\n"
	      "                           validates one); SIGHUP reloads the file, and a\n"
	      "                           broken file keeps the rules in force\n"
	      "      --rules-seed N       seed of probability rules that give none (default:\n"
	      "                           random, logged at start so a run can be repeated)\n"
	      "      --redact-auth on|off keep AUTH credentials out of the database (default on)\n"
	      "      --idle-timeout S     close a silent client after S seconds (default 300)\n"
	      "      --reply-timeout S    give up on an upstream silent for S seconds\n"
	      "                           while a reply is due (default 600)\n"
	      "      --connect-timeout S  upstream connect timeout (default 30)\n"
	      "      --grace S            on SIGTERM/SIGINT, let sessions finish for S\n"
	      "                           seconds (default 10)\n"
	      "      --max-sessions N     concurrent sessions; more wait (default 1000)\n"
	      "      --retain AGE         delete sessions that ended more than AGE ago\n"
	      "                           (30m, 12h, 7d, 2w), whole, while recording\n"
	      "      --max-db-size SIZE   keep the recorded data under SIZE (500M, 2G):\n"
	      "                           the oldest finished sessions are deleted, whole\n"
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

/* Per-listener settings, as given (NULL: not given). */
struct cli_listen {
	char spec[512]; /* a copy of the --listen argument, split in place */
	const char *upstream, *client_tls, *upstream_tls;
	bool sink;
};

/* "ADDR:PORT[,key=value|sink]...": split a copy of arg into l. */
static int
cli_proxy_listen_parse(const char *arg, struct cli_listen *l)
{
	char *p, *opt;

	memset(l, 0, sizeof(*l));
	if (snprintf(l->spec, sizeof(l->spec), "%s", arg) >= (int)sizeof(l->spec)) {
		log_warnx("--listen %.40s...: too long", arg);
		return -1;
	}
	p = strchr(l->spec, ',');
	if (p == NULL)
		return 0;
	*p++ = '\0';
	while ((opt = strsep(&p, ",")) != NULL) {
		char *eq = strchr(opt, '=');
		const char *v = eq != NULL ? eq + 1 : NULL;

		if (eq != NULL)
			*eq = '\0';
		if (strcmp(opt, "sink") == 0 && v == NULL)
			l->sink = true;
		else if (strcmp(opt, "upstream") == 0 && v != NULL)
			l->upstream = v;
		else if (strcmp(opt, "client-tls") == 0 && v != NULL)
			l->client_tls = v;
		else if (strcmp(opt, "upstream-tls") == 0 && v != NULL)
			l->upstream_tls = v;
		else {
			log_warnx("--listen %s: unknown listener option '%s' (known: upstream=HOST:PORT, sink, "
				  "client-tls=MODE, upstream-tls=MODE)",
				  arg, opt);
			return -1;
		}
	}
	return 0;
}

static int
cli_proxy_mode(const char *what, const char *v, enum proxy_tls_mode *out)
{
	if (proxy_tls_mode_parse(v, out) < 0) {
		log_warnx("%s: expected off, auto, starttls or implicit, got '%s'", what, v);
		return -1;
	}
	return 0;
}

/* Fill route from the listener's settings and the flags' defaults. */
static int
cli_proxy_route(struct proxy_route *r, const struct cli_listen *l, const char *upstream, bool sink,
		const char *client_tls, const char *upstream_tls)
{
	char err[256], host[256], port[8];
	const char *up = l->upstream != NULL ? l->upstream : (l->sink ? NULL : upstream);
	const char *ct = l->client_tls != NULL ? l->client_tls : client_tls;
	const char *ut = l->upstream_tls != NULL ? l->upstream_tls : upstream_tls;

	memset(r, 0, sizeof(*r));
	r->listen = l->spec;
	if (util_split_hostport(l->spec, host, sizeof(host), port, sizeof(port), err, sizeof(err)) < 0) {
		log_warnx("--listen %s", err);
		return -1;
	}
	if (l->sink && l->upstream != NULL) {
		log_warnx("--listen %s: 'sink' and 'upstream=' exclude each other", l->spec);
		return -1;
	}
	if (sink && l->upstream == NULL)
		up = NULL;
	r->upstream = up;
	if (up != NULL) {
		if (util_split_hostport(up, r->upstream_host, sizeof(r->upstream_host), r->upstream_port,
					sizeof(r->upstream_port), err, sizeof(err)) < 0) {
			log_warnx("--upstream %s", err);
			return -1;
		}
		if (r->upstream_host[0] == '\0' || strcmp(r->upstream_port, "0") == 0) {
			log_warnx("--upstream %s: needs a host and a port other than 0", up);
			return -1;
		}
		r->upstream_salen = (int)sizeof(r->upstream_sa);
		if (evutil_parse_sockaddr_port(up, (struct sockaddr *)&r->upstream_sa, &r->upstream_salen) < 0)
			r->upstream_salen = 0;
	}
	r->client_tls = up != NULL ? PROXY_TLS_AUTO : PROXY_TLS_OFF;
	r->upstream_tls = PROXY_TLS_AUTO;
	if (ct != NULL && cli_proxy_mode("--client-tls", ct, &r->client_tls) < 0)
		return -1;
	if (ut != NULL && cli_proxy_mode("--upstream-tls", ut, &r->upstream_tls) < 0)
		return -1;
	/* "auto" offers STARTTLS when the upstream does: a sink has none. */
	if (up == NULL && r->client_tls == PROXY_TLS_AUTO)
		r->client_tls = PROXY_TLS_OFF;
	if (up == NULL)
		r->upstream_tls = PROXY_TLS_OFF;
	return 0;
}

int
cli_proxy(int argc, char **argv)
{
	enum {
		OPT_REDACT = 256,
		OPT_CLIENT_TLS,
		OPT_UPSTREAM_TLS,
		OPT_CA_DIR,
		OPT_CERT,
		OPT_KEY,
		OPT_VERIFY,
		OPT_UPSTREAM_CA,
		OPT_UPSTREAM_SNI,
		OPT_KEYLOG,
		OPT_IDLE,
		OPT_REPLY,
		OPT_CONNECT,
		OPT_GRACE,
		OPT_MAXSESS,
		OPT_RULES,
		OPT_RULES_SEED,
		OPT_RETAIN,
		OPT_MAXDB
	};
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "upstream", required_argument, NULL, 'u' },
		{ "sink", no_argument, NULL, 's' },
		{ "db", required_argument, NULL, 'd' },
		{ "redact-auth", required_argument, NULL, OPT_REDACT },
		{ "client-tls", required_argument, NULL, OPT_CLIENT_TLS },
		{ "upstream-tls", required_argument, NULL, OPT_UPSTREAM_TLS },
		{ "ca-dir", required_argument, NULL, OPT_CA_DIR },
		{ "cert", required_argument, NULL, OPT_CERT },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "upstream-verify", required_argument, NULL, OPT_VERIFY },
		{ "upstream-ca", required_argument, NULL, OPT_UPSTREAM_CA },
		{ "upstream-sni", required_argument, NULL, OPT_UPSTREAM_SNI },
		{ "keylog", required_argument, NULL, OPT_KEYLOG },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE },
		{ "reply-timeout", required_argument, NULL, OPT_REPLY },
		{ "connect-timeout", required_argument, NULL, OPT_CONNECT },
		{ "grace", required_argument, NULL, OPT_GRACE },
		{ "max-sessions", required_argument, NULL, OPT_MAXSESS },
		{ "rules", required_argument, NULL, OPT_RULES },
		{ "rules-seed", required_argument, NULL, OPT_RULES_SEED },
		{ "retain", required_argument, NULL, OPT_RETAIN },
		{ "max-db-size", required_argument, NULL, OPT_MAXDB },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct cli_listen listens[PROXY_LISTEN_MAX];
	static struct proxy_config cfg;
	const char *upstream = NULL, *client_tls = NULL, *upstream_tls = NULL;
	size_t nlisten = 0, i;
	enum proxy_tls_mode mode;
	bool sink = false, seed_given = false;
	long n;
	int c, rc;

	proxy_config_init(&cfg);
	cfg.db_path = CLI_DEFAULT_DB;

	optind = 1;
	while ((c = getopt_long(argc, argv, "l:u:sd:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (nlisten == PROXY_LISTEN_MAX) {
				log_warnx("--listen: at most %d listeners", PROXY_LISTEN_MAX);
				return CLI_EXIT_USAGE;
			}
			if (cli_proxy_listen_parse(optarg, &listens[nlisten++]) < 0)
				return CLI_EXIT_USAGE;
			break;
		case 'u':
			upstream = optarg;
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
			if (cli_proxy_mode("--client-tls", optarg, &mode) < 0)
				return CLI_EXIT_USAGE;
			client_tls = optarg;
			break;
		case OPT_UPSTREAM_TLS:
			if (cli_proxy_mode("--upstream-tls", optarg, &mode) < 0)
				return CLI_EXIT_USAGE;
			upstream_tls = optarg;
			break;
		case OPT_CA_DIR:
			cfg.tls.ca_dir = optarg;
			break;
		case OPT_CERT:
			cfg.tls.cert_file = optarg;
			break;
		case OPT_KEY:
			cfg.tls.key_file = optarg;
			break;
		case OPT_VERIFY:
			if (cli_proxy_onoff("--upstream-verify", optarg, &cfg.tls.upstream_verify) < 0)
				return CLI_EXIT_USAGE;
			break;
		case OPT_UPSTREAM_CA:
			cfg.tls.upstream_ca = optarg;
			break;
		case OPT_UPSTREAM_SNI:
			cfg.upstream_sni = optarg;
			break;
		case OPT_KEYLOG:
			cfg.tls.keylog = optarg;
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
		case OPT_RULES:
			cfg.rules_file = optarg;
			break;
		case OPT_RULES_SEED: {
			char *end;

			errno = 0;
			cfg.rules_seed = strtoull(optarg, &end, 10);
			if (errno != 0 || end == optarg || *end != '\0' || optarg[0] == '-' || cfg.rules_seed == 0) {
				log_warnx("--rules-seed: expected a number from 1 to 18446744073709551615, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			seed_given = true;
			break;
		}
		case OPT_RETAIN:
			if (util_parse_age(optarg, &cfg.store.retain_us) < 0 || cfg.store.retain_us < 60 * 1000000LL) {
				log_warnx("--retain: expected a duration of at least a minute, such as 30m, 12h, 7d or 2w "
					  "(units s, m, h, d, w), got '%s'",
					  optarg);
				return CLI_EXIT_USAGE;
			}
			break;
		case OPT_MAXDB:
			if (util_parse_size(optarg, &cfg.store.max_bytes) < 0 || cfg.store.max_bytes < (1u << 20)) {
				log_warnx("--max-db-size: expected a size of at least 1M, such as 500M or 2G (K, M, G, T: "
					  "powers of 1024), got '%s'",
					  optarg);
				return CLI_EXIT_USAGE;
			}
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
	if (sink && upstream != NULL) {
		log_warnx("--sink and --upstream exclude each other: choose one");
		return CLI_EXIT_USAGE;
	}
	if ((cfg.tls.cert_file == NULL) != (cfg.tls.key_file == NULL)) {
		log_warnx("--cert and --key go together: give both, or neither to forge certificates");
		return CLI_EXIT_USAGE;
	}
	if (cfg.tls.cert_file != NULL && cfg.tls.ca_dir != NULL) {
		log_warnx("--cert/--key and --ca-dir exclude each other: serve a given certificate, or forge");
		return CLI_EXIT_USAGE;
	}
	if (nlisten == 0)
		cli_proxy_listen_parse("127.0.0.1:2525", &listens[nlisten++]);
	for (i = 0; i < nlisten; i++) {
		if (cli_proxy_route(&cfg.routes[i], &listens[i], upstream, sink, client_tls, upstream_tls) < 0)
			return CLI_EXIT_USAGE;
	}
	cfg.nroutes = nlisten;
	log_init(cfg.verbosity);
	if (seed_given && cfg.rules_file == NULL) {
		log_warnx("--rules-seed needs --rules FILE");
		return CLI_EXIT_USAGE;
	}
	if (cfg.rules_file != NULL) {
		char err[4096];

		if (!seed_given && (getrandom(&cfg.rules_seed, sizeof(cfg.rules_seed), 0) != sizeof(cfg.rules_seed) ||
				    cfg.rules_seed == 0))
			cfg.rules_seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
		cfg.rules = rules_load(cfg.rules_file, cfg.rules_seed, err, sizeof(err));
		if (cfg.rules == NULL) {
			/* the same lines `smtptap rules check` prints */
			fprintf(stderr, "%s\n", err);
			log_warnx("--rules %s: not starting with a broken rules file", cfg.rules_file);
			return CLI_EXIT_FAIL;
		}
		log_info("rules: %zu rules from %s (probability seed %" PRIu64 "; --rules-seed %" PRIu64
			 " repeats the same draws)",
			 rules_count(cfg.rules), cfg.rules_file, cfg.rules_seed, cfg.rules_seed);
	}
	rc = proxy_run(&cfg) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
	if (cfg.rules != NULL)
		rules_unref(cfg.rules);
	return rc;
}
