/*
 * tls.h - TLS for both legs of a session: certificates forged under the
 * local CA (ca.h) to mirror the upstream's (and their cache), upstream
 * verification, the NSS key log, and the facts of a finished handshake
 * for the record.
 *
 * No sockets and no libevent here: a leg (leg.c) asks for an SSL object,
 * runs the handshake over its bufferevent, and hands the SSL back to be
 * described.  One struct tls per process, owned by the proxy, used from the
 * event loop thread only (no locks).
 *
 * Certificates: clients are served a leaf forged on the fly and signed
 * (SHA-256) by a local CA kept in --ca-dir (ca.h: created on first use,
 * key mode 0600).  Every forged leaf shares one key generated at start, so
 * a connection costs a handshake, never a key generation; leaves are cached
 * by the upstream certificate's SHA-256 fingerprint plus the name the
 * client asked for (SNI), or by name alone when there is no upstream
 * certificate (sink mode, plaintext upstream).  --cert/--key serve a given
 * certificate instead of forging.
 */
#ifndef SMTPTAP_TLS_H
#define SMTPTAP_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

struct tls_config {
	const char *ca_dir;	 /* NULL: ca_default_dir() (ca.h) */
	const char *cert_file;	 /* with key_file: serve this instead of forging */
	const char *key_file;
	bool upstream_verify;	 /* check the upstream's chain and name (default on) */
	const char *upstream_ca; /* PEM bundle to trust upstream; NULL: system store */
	const char *keylog;	 /* append NSS key log lines here; NULL: none */
};

struct tls;

/*
 * Set up the contexts.  need_server: a listener terminates TLS for clients,
 * so load (or create) the CA or the given certificate and make the leaf
 * key.  need_client: the upstream leg may use TLS, so load the trust store.
 * Returns NULL with one line in err naming the file or flag at fault.
 */
struct tls *tls_new(const struct tls_config *cfg, bool need_server, bool need_client, char *err,
		    size_t errsz);
/* Free after every SSL made from t: their callbacks (SNI, key log) use it. */
void tls_free(struct tls *t);

/*
 * An SSL to accept a client's handshake.  upstream_cert (may be NULL: not
 * known or a plaintext upstream) is mirrored: subject and subjectAltNames
 * copied, issued by the local CA.  Without it, the leaf names `name` (a host
 * name, or an address literal which becomes an IP SAN).  When the client's
 * SNI names something the leaf does not cover, the leaf is forged again
 * with that name added, from the servername callback.  Returns NULL with a
 * reason in err.  The caller owns the SSL (a leg hands it to
 * bufferevent_openssl, which frees it).
 */
SSL *tls_server_ssl_new(struct tls *t, X509 *upstream_cert, const char *name, char *err, size_t errsz);

/*
 * An SSL to connect to the upstream: SNI `sni` (NULL or an address literal:
 * none sent) and the name to check the certificate against (`verify_name`,
 * a host name or an address literal).  The handshake itself never fails on
 * verification: the result is read afterwards with tls_verify_result(), so
 * the session can refuse with a precise reason or, with --upstream-verify
 * off, go on and record it.
 */
SSL *tls_client_ssl_new(struct tls *t, const char *sni, const char *verify_name, char *err, size_t errsz);

/* After the upstream handshake: 1 verified (chain and name), 0 not (why
 * holds OpenSSL's reason, e.g. "self-signed certificate"). */
int tls_verify_result(SSL *ssl, char *why, size_t whysz);

bool tls_upstream_verify(const struct tls *t); /* the --upstream-verify setting */

/* What is recorded of a finished handshake (session JSON client_tls /
 * upstream_tls).  For the client leg the certificate is the one smtptap
 * presented; for the upstream leg, the upstream's. */
struct tls_info {
	char mode[16];		/* "starttls" or "implicit" (set by the caller) */
	char version[16];	/* "TLSv1.3" */
	char cipher[64];	/* "TLS_AES_256_GCM_SHA384" */
	char sni[256];		/* sent (upstream leg) or received (client leg); "" none */
	char cert_subject[512]; /* RFC 2253 one-line form; "" when no certificate */
	char cert_issuer[512];
	char cert_sha256[96];	/* hex pairs separated by ':' */
	int verified;		/* upstream leg: 1 or 0; client leg: -1 (not applicable) */
	char verify_error[256]; /* why not verified, "" otherwise */
	bool forged;		/* client leg: the certificate was forged by smtptap */
	bool resumed;		/* an abbreviated handshake resumed an earlier session */
	int64_t handshake_us;	/* handshake duration (set by the caller) */
};

/* Fill info from a finished handshake; server_side: the client leg.
 * mode and handshake_us are left for the caller. */
void tls_info_get(SSL *ssl, bool server_side, struct tls_info *info);

/* The info as one JSON object (what store_session_set_tls takes).  Returns
 * a malloc'd string the caller frees, or NULL when out of memory. */
char *tls_info_json(const struct tls_info *info);

/* The peer's certificate (upstream leg), to mirror for the client: a new
 * reference the caller frees with X509_free, or NULL. */
X509 *tls_peer_cert(SSL *ssl);

/* Drain OpenSSL's error queue into one line ("a; b; c").  Returns buf. */
char *tls_error_text(char *buf, size_t bufsz);
/* Is this OpenSSL error a client's alert saying it does not trust the
 * certificate (unknown CA, bad certificate)? */
bool tls_error_is_untrusted(unsigned long err);

/* Forging counters, printed at exit with -v and by `make bench`. */
struct tls_stats {
	uint64_t forged;     /* leaves signed */
	uint64_t cache_hits; /* leaves served from the cache */
	uint64_t handshakes_client, handshakes_upstream;
	uint64_t cached;     /* leaves in the cache now */
	uint64_t evicted;    /* leaves dropped from the full cache */
};
void tls_stats_get(const struct tls *t, struct tls_stats *out);
void tls_stats_count_handshake(struct tls *t, bool server_side);

/* Bound the forged-leaf cache (default and ceiling 1024 leaves; at least
 * 1), evicting the least recently used at once.  For tests and tuning. */
void tls_cache_set_max(struct tls *t, size_t max);

#endif
