/*
 * tls.c - see tls.h.
 *
 * What lives here: the two SSL_CTXs a process needs (one to accept
 * clients, one to connect upstream) with the SSLs made from them, the
 * servername callback, upstream verification and session resumption, the
 * NSS key log, the facts of a finished handshake, and the counters.
 *
 * The leaves served to clients are forge.c's (forged under the local CA,
 * cached): this file only asks for the leaf of (upstream certificate,
 * name, SNI) and puts it on an SSL, so the certificate work and the SSL
 * work can each be read on their own.  Every leaf handed over is a
 * reference of its own: the cache may evict a leaf while an SSL still
 * serves it, and the SSL's reference keeps it alive.
 */
#include "smtptap/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "smtptap/ca.h"
#include "smtptap/forge.h"
#include "smtptap/json.h"
#include "smtptap/util.h"

#define TLS_NAME_MAX 256 /* a DNS name is at most 253 characters */
#define TLS_RESUME_MAX 16 /* upstream names whose last session is kept */

struct tls {
	SSL_CTX *srv; /* NULL unless need_server */
	SSL_CTX *cli; /* NULL unless need_client */
	struct forge *forge; /* NULL unless forging (not with --cert/--key) */
	bool upstream_verify;
	FILE *keylog;
	struct tls_stats stats; /* the handshake counters; forge has the rest */
	/* The last session per upstream name, offered for resumption: a
	 * proxy that opens a connection per message (the PHP pattern) then
	 * costs the upstream an abbreviated handshake, as haproxy's
	 * per-server session reuse does. */
	struct tls_resume {
		char name[TLS_NAME_MAX];
		SSL_SESSION *sess;
		uint64_t used;
	} resume[TLS_RESUME_MAX];
	uint64_t resume_clock;
};

/*
 * What a client-side SSL needs to forge again from the servername
 * callback, hung on the SSL (ex_data) and freed with it.
 */
struct tls_ssl_state {
	X509 *upstream; /* own reference, or NULL */
	char name[TLS_NAME_MAX];
	bool forged;
};

static pthread_once_t tls_ex_once = PTHREAD_ONCE_INIT;
static int tls_ex_index = -1;

static void tls_ex_init(void);
static void tls_ex_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp);
static void tls_keylog_cb(const SSL *ssl, const char *line);
static int tls_resume_new_cb(SSL *ssl, SSL_SESSION *sess);
static struct tls_resume *tls_resume_find(struct tls *t, const char *name);
static int tls_servername_cb(SSL *ssl, int *alert, void *arg);
static int tls_open_keylog(struct tls *t, const char *path, char *err, size_t errsz);
static int tls_setup_server(struct tls *t, const struct tls_config *cfg, char *err, size_t errsz);
static int tls_setup_client(struct tls *t, const struct tls_config *cfg, char *err, size_t errsz);
static int tls_check_readable(const char *flag, const char *path, char *err, size_t errsz);
static bool tls_is_hostname(const char *s);
static void tls_kv_text(struct json *j, const char *key, const char *s);
static void tls_name_text(const X509_NAME *name, char *out, size_t outsz);

/* ------------------------------------------------------------------------
 * Small helpers.
 */

/* Could s be a DNS name (letters, digits, '-', '_', '.'; at most 253)?
 * A client's SNI is hostile input: anything else is not worth a
 * signature and a cache slot, nor a place in a certificate. */
static bool
tls_is_hostname(const char *s)
{
	size_t i;

	for (i = 0; s[i] != '\0'; i++) {
		if (i >= 253)
			return false;
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
		      s[i] == '-' || s[i] == '_' || s[i] == '.'))
			return false;
	}
	return i > 0;
}

/* A missing or unreadable file gets the system's one-line reason rather
 * than OpenSSL's three-error chain. */
static int
tls_check_readable(const char *flag, const char *path, char *err, size_t errsz)
{
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		util_errf(err, errsz, "%s %s: %s", flag, path, strerror(errno));
		return -1;
	}
	fclose(f);
	return 0;
}
/* The RFC 2253 one-line form, UTF-8 kept as is (the JSON writer and the
 * terminal escaping deal with hostile bytes). */
static void
tls_name_text(const X509_NAME *name, char *out, size_t outsz)
{
	BIO *b;
	int n;

	if (outsz == 0)
		return;
	out[0] = '\0';
	if (name == NULL || (b = BIO_new(BIO_s_mem())) == NULL)
		return;
	if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
		n = BIO_read(b, out, (int)(outsz - 1 > INT_MAX ? INT_MAX : outsz - 1));
		out[n > 0 ? n : 0] = '\0';
	}
	BIO_free(b);
}

/* ------------------------------------------------------------------------
 * Per-SSL state and callbacks.
 */

static void
tls_ex_init(void)
{
	tls_ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, tls_ex_free_cb);
}

static void
tls_ex_free_cb(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	struct tls_ssl_state *st = ptr;

	(void)parent;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	if (st == NULL)
		return;
	X509_free(st->upstream);
	free(st);
}

/* One NSS key log line per secret, flushed at once so Wireshark (and a
 * kill -9) sees every line that was written. */
static void
tls_keylog_cb(const SSL *ssl, const char *line)
{
	struct tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));

	if (t == NULL || t->keylog == NULL)
		return;
	fprintf(t->keylog, "%s\n", line);
	fflush(t->keylog);
}

/*
 * The client asked for a name (SNI) the leaf does not cover: forge again
 * with that name added, so a client that checks the name it was told to
 * connect to is satisfied.  A failure keeps the first leaf: the client
 * then decides, and the session records what it said.
 */
static int
tls_servername_cb(SSL *ssl, int *alert, void *arg)
{
	struct tls *t = arg;
	struct tls_ssl_state *st;
	const char *sni;
	X509 *cur, *leaf;
	char ip[INET6_ADDRSTRLEN];

	(void)alert;
	sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	st = SSL_get_ex_data(ssl, tls_ex_index);
	if (sni == NULL || sni[0] == '\0' || st == NULL || !st->forged || t->forge == NULL)
		return SSL_TLSEXT_ERR_OK;
	cur = SSL_get_certificate(ssl);
	if (forge_name_is_ip(sni, ip, sizeof(ip))) {
		if (cur != NULL && X509_check_ip_asc(cur, ip, 0) == 1)
			return SSL_TLSEXT_ERR_OK;
	} else if (!tls_is_hostname(sni) || (cur != NULL && X509_check_host(cur, sni, 0, 0, NULL) == 1))
		return SSL_TLSEXT_ERR_OK;
	if ((leaf = forge_leaf_get(t->forge, st->upstream, st->name, sni)) == NULL) {
		ERR_clear_error();
		return SSL_TLSEXT_ERR_OK;
	}
	/* The SSL takes its own reference; the shared key stays set. */
	if (SSL_use_certificate(ssl, leaf) != 1)
		ERR_clear_error();
	X509_free(leaf);
	return SSL_TLSEXT_ERR_OK;
}

/* ------------------------------------------------------------------------
 * Contexts.
 */

struct tls *
tls_new(const struct tls_config *cfg, bool need_server, bool need_client, char *err, size_t errsz)
{
	struct tls *t;

	if (pthread_once(&tls_ex_once, tls_ex_init) != 0 || tls_ex_index < 0) {
		util_errf(err, errsz, "OpenSSL: cannot register per-connection data");
		return NULL;
	}
	if ((t = calloc(1, sizeof(*t))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return NULL;
	}
	t->upstream_verify = cfg->upstream_verify;
	if (cfg->keylog != NULL && tls_open_keylog(t, cfg->keylog, err, errsz) < 0)
		goto fail;
	if (need_server && tls_setup_server(t, cfg, err, errsz) < 0)
		goto fail;
	if (need_client && tls_setup_client(t, cfg, err, errsz) < 0)
		goto fail;
	return t;
fail:
	tls_free(t);
	return NULL;
}

void
tls_free(struct tls *t)
{
	if (t == NULL)
		return;
	forge_free(t->forge);
	for (size_t i = 0; i < TLS_RESUME_MAX; i++)
		SSL_SESSION_free(t->resume[i].sess);
	SSL_CTX_free(t->srv);
	SSL_CTX_free(t->cli);
	if (t->keylog != NULL)
		fclose(t->keylog);
	free(t);
}

/* The key log holds every session key: created 0600, appended to so
 * several runs can share one file in Wireshark. */
static int
tls_open_keylog(struct tls *t, const char *path, char *err, size_t errsz)
{
	int fd;

	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0600);
	if (fd < 0) {
		util_errf(err, errsz, "--keylog %s: %s", path, strerror(errno));
		return -1;
	}
	if ((t->keylog = fdopen(fd, "a")) == NULL) {
		util_errf(err, errsz, "--keylog %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return 0;
}

static int
tls_setup_server(struct tls *t, const struct tls_config *cfg, char *err, size_t errsz)
{
	const char *dir;
	char ebuf[256];

	if ((cfg->cert_file == NULL) != (cfg->key_file == NULL)) {
		util_errf(err, errsz, "%s", cfg->cert_file != NULL ? "--cert needs --key" : "--key needs --cert");
		return -1;
	}
	if ((t->srv = SSL_CTX_new(TLS_server_method())) == NULL) {
		util_errf(err, errsz, "OpenSSL: cannot make the server context: %s",
			tls_error_text(ebuf, sizeof(ebuf)));
		return -1;
	}
	SSL_CTX_set_min_proto_version(t->srv, TLS1_2_VERSION);
	SSL_CTX_set_app_data(t->srv, t);
	if (t->keylog != NULL)
		SSL_CTX_set_keylog_callback(t->srv, tls_keylog_cb);

	if (cfg->cert_file != NULL) {
		if (tls_check_readable("--cert", cfg->cert_file, err, errsz) < 0 ||
		    tls_check_readable("--key", cfg->key_file, err, errsz) < 0)
			return -1;
		if (SSL_CTX_use_certificate_chain_file(t->srv, cfg->cert_file) != 1) {
			util_errf(err, errsz, "--cert %s: %s", cfg->cert_file, tls_error_text(ebuf, sizeof(ebuf)));
			return -1;
		}
		if (SSL_CTX_use_PrivateKey_file(t->srv, cfg->key_file, SSL_FILETYPE_PEM) != 1) {
			util_errf(err, errsz, "--key %s: %s", cfg->key_file, tls_error_text(ebuf, sizeof(ebuf)));
			return -1;
		}
		if (SSL_CTX_check_private_key(t->srv) != 1) {
			ERR_clear_error();
			util_errf(err, errsz, "--key %s does not match the certificate in --cert %s", cfg->key_file,
				cfg->cert_file);
			return -1;
		}
		return 0;
	}

	dir = cfg->ca_dir != NULL ? cfg->ca_dir : ca_default_dir();
	if (dir == NULL) {
		util_errf(err, errsz, "no --ca-dir given and neither XDG_DATA_HOME nor HOME is set");
		return -1;
	}
	if ((t->forge = forge_new(dir, err, errsz)) == NULL)
		return -1;
	SSL_CTX_set_tlsext_servername_callback(t->srv, tls_servername_cb);
	SSL_CTX_set_tlsext_servername_arg(t->srv, t);
	return 0;
}

static int
tls_setup_client(struct tls *t, const struct tls_config *cfg, char *err, size_t errsz)
{
	char ebuf[256];

	if ((t->cli = SSL_CTX_new(TLS_client_method())) == NULL) {
		util_errf(err, errsz, "OpenSSL: cannot make the client context: %s",
			tls_error_text(ebuf, sizeof(ebuf)));
		return -1;
	}
	SSL_CTX_set_app_data(t->cli, t);
	if (t->keylog != NULL)
		SSL_CTX_set_keylog_callback(t->cli, tls_keylog_cb);
	SSL_CTX_set_session_cache_mode(t->cli, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(t->cli, tls_resume_new_cb);
	/* Never fail the handshake on verification: the session reads the
	 * result and decides (--upstream-verify), with the reason recorded. */
	SSL_CTX_set_verify(t->cli, SSL_VERIFY_NONE, NULL);
	if (cfg->upstream_ca != NULL) {
		if (tls_check_readable("--upstream-ca", cfg->upstream_ca, err, errsz) < 0)
			return -1;
		if (SSL_CTX_load_verify_file(t->cli, cfg->upstream_ca) != 1) {
			util_errf(err, errsz, "--upstream-ca %s: %s", cfg->upstream_ca,
				tls_error_text(ebuf, sizeof(ebuf)));
			return -1;
		}
	} else if (SSL_CTX_set_default_verify_paths(t->cli) != 1) {
		util_errf(err, errsz, "cannot load the system's trusted certificates (try --upstream-ca FILE): %s",
			tls_error_text(ebuf, sizeof(ebuf)));
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * SSL objects.
 */

SSL *
tls_server_ssl_new(struct tls *t, X509 *upstream_cert, const char *name, char *err, size_t errsz)
{
	struct tls_ssl_state *st = NULL;
	X509 *leaf = NULL;
	SSL *ssl;
	char ebuf[256];

	if (t->srv == NULL) {
		util_errf(err, errsz, "TLS towards clients was not set up");
		return NULL;
	}
	if ((ssl = SSL_new(t->srv)) == NULL)
		goto ossl_fail;
	if ((st = calloc(1, sizeof(*st))) == NULL) {
		util_errf(err, errsz, "out of memory");
		SSL_free(ssl);
		return NULL;
	}
	if (SSL_set_ex_data(ssl, tls_ex_index, st) != 1) {
		free(st);
		goto ossl_fail;
	}
	/* From here the SSL owns st (freed by tls_ex_free_cb). */
	if (t->forge == NULL)
		return ssl;
	st->forged = true;
	snprintf(st->name, sizeof(st->name), "%s", name != NULL ? name : "");
	if (upstream_cert != NULL) {
		X509_up_ref(upstream_cert);
		st->upstream = upstream_cert;
	}
	if ((leaf = forge_leaf_get(t->forge, upstream_cert, st->name, NULL)) == NULL)
		goto ossl_fail;
	if (SSL_use_certificate(ssl, leaf) != 1 || SSL_use_PrivateKey(ssl, forge_leaf_key(t->forge)) != 1)
		goto ossl_fail;
	X509_free(leaf);
	return ssl;
ossl_fail:
	util_errf(err, errsz, "cannot set up TLS for the client: %s", tls_error_text(ebuf, sizeof(ebuf)));
	X509_free(leaf);
	SSL_free(ssl);
	return NULL;
}

SSL *
tls_client_ssl_new(struct tls *t, const char *sni, const char *verify_name, char *err, size_t errsz)
{
	X509_VERIFY_PARAM *param;
	char ip[INET6_ADDRSTRLEN], ebuf[256];
	SSL *ssl;

	if (t->cli == NULL) {
		util_errf(err, errsz, "TLS towards the upstream was not set up");
		return NULL;
	}
	if ((ssl = SSL_new(t->cli)) == NULL)
		goto fail;
	if (verify_name != NULL && verify_name[0] != '\0') {
		struct tls_ssl_state *st = calloc(1, sizeof(*st));
		struct tls_resume *r;

		if (st == NULL || SSL_set_ex_data(ssl, tls_ex_index, st) != 1) {
			free(st);
			goto fail;
		}
		snprintf(st->name, sizeof(st->name), "%s", verify_name);
		r = tls_resume_find(t, verify_name);
		if (r != NULL && r->sess != NULL && SSL_SESSION_is_resumable(r->sess))
			SSL_set_session(ssl, r->sess);
	}
	/* RFC 6066: SNI carries host names only, never an address. */
	if (sni != NULL && sni[0] != '\0' && !forge_name_is_ip(sni, NULL, 0) &&
	    SSL_set_tlsext_host_name(ssl, sni) != 1)
		goto fail;
	if (verify_name != NULL && verify_name[0] != '\0') {
		param = SSL_get0_param(ssl);
		if (forge_name_is_ip(verify_name, ip, sizeof(ip))) {
			if (X509_VERIFY_PARAM_set1_ip_asc(param, ip) != 1)
				goto fail;
		} else {
			SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			if (SSL_set1_host(ssl, verify_name) != 1)
				goto fail;
		}
	}
	return ssl;
fail:
	util_errf(err, errsz, "cannot set up TLS for the upstream: %s", tls_error_text(ebuf, sizeof(ebuf)));
	SSL_free(ssl);
	return NULL;
}

/* The slot for `name`, or the least recently used one to reuse. */
static struct tls_resume *
tls_resume_find(struct tls *t, const char *name)
{
	struct tls_resume *lru = &t->resume[0];
	size_t i;

	for (i = 0; i < TLS_RESUME_MAX; i++) {
		struct tls_resume *r = &t->resume[i];

		if (r->sess != NULL && strcmp(r->name, name) == 0) {
			r->used = ++t->resume_clock;
			return r;
		}
		if (r->used < lru->used)
			lru = r;
	}
	return lru;
}

/* A session (TLS 1.3: a ticket after the handshake) worth resuming. */
static int
tls_resume_new_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	struct tls_ssl_state *st = SSL_get_ex_data(ssl, tls_ex_index);
	struct tls_resume *r;

	if (t == NULL || st == NULL || st->name[0] == '\0')
		return 0;
	r = tls_resume_find(t, st->name);
	SSL_SESSION_free(r->sess);
	r->sess = sess;
	snprintf(r->name, sizeof(r->name), "%s", st->name);
	r->used = ++t->resume_clock;
	return 1; /* the reference is ours now */
}

int
tls_verify_result(SSL *ssl, char *why, size_t whysz)
{
	long r;

	if (whysz > 0)
		why[0] = '\0';
	/* X509_V_OK is also what an SSL that saw no certificate says. */
	if (SSL_get0_peer_certificate(ssl) == NULL) {
		util_errf(why, whysz, "no certificate");
		return 0;
	}
	r = SSL_get_verify_result(ssl);
	if (r != X509_V_OK) {
		util_errf(why, whysz, "%s", X509_verify_cert_error_string(r));
		return 0;
	}
	return 1;
}

bool
tls_upstream_verify(const struct tls *t)
{
	return t->upstream_verify;
}

X509 *
tls_peer_cert(SSL *ssl)
{
	return SSL_get1_peer_certificate(ssl);
}

/* ------------------------------------------------------------------------
 * What a handshake was.
 */

void
tls_info_get(SSL *ssl, bool server_side, struct tls_info *info)
{
	struct tls_ssl_state *st;
	const char *s;
	X509 *x;

	snprintf(info->version, sizeof(info->version), "%s", SSL_get_version(ssl));
	s = SSL_get_cipher_name(ssl);
	snprintf(info->cipher, sizeof(info->cipher), "%s", s != NULL ? s : "");
	s = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	snprintf(info->sni, sizeof(info->sni), "%s", s != NULL ? s : "");
	x = server_side ? SSL_get_certificate(ssl) : SSL_get0_peer_certificate(ssl);
	if (x != NULL) {
		tls_name_text(X509_get_subject_name(x), info->cert_subject, sizeof(info->cert_subject));
		tls_name_text(X509_get_issuer_name(x), info->cert_issuer, sizeof(info->cert_issuer));
		ca_cert_fingerprint(x, info->cert_sha256, sizeof(info->cert_sha256));
	} else {
		info->cert_subject[0] = info->cert_issuer[0] = info->cert_sha256[0] = '\0';
	}
	info->verify_error[0] = '\0';
	info->forged = false;
	info->resumed = SSL_session_reused(ssl) == 1;
	if (server_side) {
		info->verified = -1;
		st = SSL_get_ex_data(ssl, tls_ex_index);
		info->forged = st != NULL && st->forged;
	} else
		info->verified = tls_verify_result(ssl, info->verify_error, sizeof(info->verify_error));
}

/* Empty strings are unknowns: null in JSON, as elsewhere in the record. */
static void
tls_kv_text(struct json *j, const char *key, const char *s)
{
	if (s[0] == '\0')
		json_kv_null(j, key);
	else
		json_kv_string(j, key, s);
}

char *
tls_info_json(const struct tls_info *info)
{
	struct json j;
	char *buf = NULL;
	size_t len = 0;
	FILE *f;
	int r;

	if ((f = open_memstream(&buf, &len)) == NULL)
		return NULL;
	json_init(&j, f, 0);
	json_object_begin(&j);
	tls_kv_text(&j, "mode", info->mode);
	tls_kv_text(&j, "version", info->version);
	tls_kv_text(&j, "cipher", info->cipher);
	tls_kv_text(&j, "sni", info->sni);
	tls_kv_text(&j, "cert_subject", info->cert_subject);
	tls_kv_text(&j, "cert_issuer", info->cert_issuer);
	tls_kv_text(&j, "cert_sha256", info->cert_sha256);
	if (info->verified < 0)
		json_kv_null(&j, "verified");
	else
		json_kv_bool(&j, "verified", info->verified == 1);
	tls_kv_text(&j, "verify_error", info->verify_error);
	json_kv_bool(&j, "forged", info->forged);
	json_kv_bool(&j, "resumed", info->resumed);
	json_kv_int(&j, "handshake_us", info->handshake_us);
	json_object_end(&j);
	r = json_finish(&j);
	if (fclose(f) != 0 || r < 0) {
		free(buf);
		return NULL;
	}
	/* json_finish ends the document with a newline: not part of a value
	 * stored in a column. */
	if (len > 0 && buf[len - 1] == '\n')
		buf[len - 1] = '\0';
	return buf;
}

/* ------------------------------------------------------------------------
 * Errors and counters.
 */

char *
tls_error_text(char *buf, size_t bufsz)
{
	unsigned long e;
	char one[256];
	size_t off = 0;
	int n;

	if (bufsz == 0) {
		ERR_clear_error();
		return buf;
	}
	buf[0] = '\0';
	/* Drained to the end even when buf is full: a stale error must not
	 * be blamed on the next operation. */
	while ((e = ERR_get_error()) != 0) {
		if (off + 1 >= bufsz)
			continue;
		ERR_error_string_n(e, one, sizeof(one));
		n = snprintf(buf + off, bufsz - off, "%s%s", off > 0 ? "; " : "", one);
		if (n < 0)
			continue;
		off += (size_t)n < bufsz - off ? (size_t)n : bufsz - off - 1;
	}
	return buf;
}

bool
tls_error_is_untrusted(unsigned long err)
{
	if (ERR_GET_LIB(err) != ERR_LIB_SSL)
		return false;
	switch (ERR_GET_REASON(err)) {
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
		return true;
	default:
		return false;
	}
}

/* The forging counters are forge.c's; without forging they stay 0. */
void
tls_stats_get(const struct tls *t, struct tls_stats *out)
{
	struct forge_stats fs = {0};

	*out = t->stats;
	if (t->forge != NULL)
		forge_stats_get(t->forge, &fs);
	out->forged = fs.forged;
	out->cache_hits = fs.cache_hits;
	out->cached = fs.cached;
	out->evicted = fs.evicted;
}

void
tls_stats_count_handshake(struct tls *t, bool server_side)
{
	if (server_side)
		t->stats.handshakes_client++;
	else
		t->stats.handshakes_upstream++;
}

/* Without forging there is no cache to bound: nothing to do. */
void
tls_cache_set_max(struct tls *t, size_t max)
{
	if (t->forge != NULL)
		forge_cache_set_max(t->forge, max);
}
