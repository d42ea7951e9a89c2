/*
 * cli_mock.c - `smtptap mock ID --listen ADDR:PORT`: play recorded session
 * ID's server side to clients, until SIGTERM/SIGINT.
 *
 * The mock is the proxy (proxy.c: listeners, TLS, signals, recording)
 * with one listener in sink mode whose replies come from the recording
 * (mock.c): each client connection gets the recorded greeting,
 * capabilities and replies, command by command, and is recorded as a
 * session of its own (mode "mock", replay_of ID).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/cli.h"
#include "smtptap/cli_read.h"
#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/recording.h"
#include "smtptap/util.h"

static void
cli_mock_usage(FILE *f)
{
	fputs("usage: smtptap mock ID [--listen ADDR:PORT] [--db PATH] [--client-tls off|starttls|implicit]\n"
	      "                    [--ca-dir DIR | --cert FILE --key FILE] [--idle-timeout S]\n"
	      "                    [--grace S] [--max-sessions N] [-v]...\n"
	      "\n"
	      "Play the server side of recorded session ID to clients: the recorded\n"
	      "greeting, capabilities and replies, command by command.  A command that\n"
	      "is not the one recorded at that point is answered 503 5.5.1 naming the\n"
	      "expected one (the mismatch is recorded); QUIT always ends the session.\n"
	      "Every client connection starts the recording from its beginning and is\n"
	      "recorded as a session of its own, a mock of ID.  Runs until SIGTERM/SIGINT.\n"
	      "\n"
	      "  -l, --listen ADDR:PORT   listen here (default 127.0.0.1:2525; port 0 picks\n"
	      "                           a free port, printed on stderr)\n"
	      "  -d, --db PATH            database to read ID from and record into\n"
	      "                           (default ./smtptap.db; no proxy may be recording into it)\n"
	      "      --client-tls MODE    off, starttls or implicit (default: as the recorded\n"
	      "                           client's leg: STARTTLS offered and answered, or TLS\n"
	      "                           from the first byte)\n"
	      "      --ca-dir DIR         the local CA that signs the certificate shown\n"
	      "                           (default $XDG_DATA_HOME/smtptap/ca; see 'smtptap ca')\n"
	      "      --cert FILE --key FILE  serve this certificate instead\n"
	      "      --idle-timeout S     close a silent client after S seconds (default 300)\n"
	      "      --grace S            on SIGTERM/SIGINT, let sessions finish for S\n"
	      "                           seconds (default 10)\n"
	      "      --max-sessions N     concurrent clients; more wait (default 1000)\n"
	      "  -v, --verbose            print each conversation live on stderr\n"
	      "  -h, --help               this help\n",
	      f);
}

int
cli_mock(int argc, char **argv)
{
	enum { OPT_CLIENT_TLS = 256, OPT_CA_DIR, OPT_CERT, OPT_KEY, OPT_IDLE, OPT_GRACE, OPT_MAXSESS };
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "db", required_argument, NULL, 'd' },
		{ "client-tls", required_argument, NULL, OPT_CLIENT_TLS },
		{ "ca-dir", required_argument, NULL, OPT_CA_DIR },
		{ "cert", required_argument, NULL, OPT_CERT },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "idle-timeout", required_argument, NULL, OPT_IDLE },
		{ "grace", required_argument, NULL, OPT_GRACE },
		{ "max-sessions", required_argument, NULL, OPT_MAXSESS },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	static struct proxy_config cfg;
	struct proxy_route *r = &cfg.routes[0];
	struct reader *rd;
	struct recording *rec = NULL;
	const char *listen = "127.0.0.1:2525", *client_tls = NULL;
	char host[256], port[8], err[512];
	int64_t id;
	long n;
	int c, rc;

	proxy_config_init(&cfg);
	cfg.db_path = CLI_DEFAULT_DB;
	optind = 1;
	while ((c = getopt_long(argc, argv, "l:d:vh", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			listen = optarg;
			break;
		case 'd':
			cfg.db_path = optarg;
			break;
		case OPT_CLIENT_TLS:
			client_tls = optarg;
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
		case OPT_IDLE:
			if (util_parse_int(optarg, 1, 86400, &n) < 0) {
				log_warnx("--idle-timeout: expected a number of seconds from 1 to 86400, got '%s'", optarg);
				return CLI_EXIT_USAGE;
			}
			cfg.idle_timeout = (int)n;
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
			cli_mock_usage(stdout);
			return CLI_EXIT_OK;
		default:
			fputs("Try 'smtptap mock --help'.\n", stderr);
			return CLI_EXIT_USAGE;
		}
	}
	if (cli_read_parse_id("mock", argc, argv, &id) < 0)
		return CLI_EXIT_USAGE;
	if (util_split_hostport(listen, host, sizeof(host), port, sizeof(port), err, sizeof(err)) < 0) {
		log_warnx("--listen %s", err);
		return CLI_EXIT_USAGE;
	}
	if (client_tls != NULL && (proxy_tls_mode_parse(client_tls, &r->client_tls) < 0 ||
				   r->client_tls == PROXY_TLS_AUTO)) {
		log_warnx("--client-tls: expected off, starttls or implicit, got '%s'", client_tls);
		return CLI_EXIT_USAGE;
	}
	if ((cfg.tls.cert_file == NULL) != (cfg.tls.key_file == NULL)) {
		log_warnx("--cert and --key go together: give both, or neither to forge a certificate");
		return CLI_EXIT_USAGE;
	}
	if (cfg.tls.cert_file != NULL && cfg.tls.ca_dir != NULL) {
		log_warnx("--cert/--key and --ca-dir exclude each other: serve a given certificate, or forge");
		return CLI_EXIT_USAGE;
	}
	log_init(cfg.verbosity);

	if ((rd = cli_read_open(cfg.db_path)) == NULL)
		return CLI_EXIT_FAIL;
	rc = recording_load(rd, id, 0, &rec, err, sizeof(err));
	reader_close(rd);
	if (rc > 0) {
		log_warnx("no session %" PRId64 " in %s", id, cfg.db_path);
		return CLI_EXIT_NOTFOUND;
	}
	if (rc < 0) {
		log_warnx("--db %s: %s", cfg.db_path, err);
		return CLI_EXIT_FAIL;
	}
	r->listen = listen;
	r->upstream = NULL;
	r->upstream_tls = PROXY_TLS_OFF;
	r->mock = rec;
	if (client_tls == NULL)
		r->client_tls = strcmp(rec->client_tls, "implicit") == 0   ? PROXY_TLS_IMPLICIT :
				strcmp(rec->client_tls, "starttls") == 0 ? PROXY_TLS_STARTTLS :
									   PROXY_TLS_OFF;
	cfg.nroutes = 1;
	if (!rec->links && rec->nreplies > 0)
		log_warnx("session %" PRId64 " was recorded before schema 2: its replies are not linked to the commands "
			  "they answer, so the mock has none to play (each command gets a 451)",
			  id);
	rc = proxy_run(&cfg) == 0 ? CLI_EXIT_OK : CLI_EXIT_FAIL;
	recording_free(rec);
	return rc;
}
