/*
 * test_tls.c - unit tests for the TLS module (src/tls.c) and the local CA
 * (src/ca.c).
 *
 * No sockets: every handshake runs over a BIO pair between a client SSL
 * and a server SSL, driven alternately until both are done.  The
 * "upstream" certificates are made here, by a test CA of our own, so each
 * test knows exactly which names and issuers to expect.  Every file lives
 * in a mkdtemp directory removed at the end.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "smtptap/ca.h"
#include "smtptap/json.h"
#include "smtptap/tls.h"

/* Everything a test needs, made once per test. */
struct fx {
	char root[PATH_MAX]; /* mkdtemp */
	char ca_dir[PATH_MAX];
	/* a CA of our own, standing for the public CAs upstreams use */
	EVP_PKEY *up_ca_key;
	X509 *up_ca;
	char up_ca_file[PATH_MAX];
};

static int fx_setup(void **state);
static int fx_teardown(void **state);
static void rm_rf(const char *path);
static void path_join(char *out, size_t outsz, const char *a, const char *b);
static X509 *make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, const char *subject, const char *san,
		       bool ca);
static void write_pem(const char *path, X509 *cert, EVP_PKEY *key);
static char *read_file(const char *path);
static int handshake(SSL *client, SSL *server);
static SSL_CTX *client_ctx_trusting(X509 *ca);
static X509 *load_ca_cert(const char *dir);
static struct tls *tls_forging(struct fx *f, const char *keylog);
static X509 *serve(struct tls *t, X509 *up, const char *name, const char *sni, X509 *trust, long *verify);
static int upstream_verify(struct tls *t, X509 *cert, EVP_PKEY *key, const char *sni, const char *verify_name,
			   char *why, size_t whysz, char *sni_seen, size_t sni_seensz);
static bool is_fingerprint(const char *s);

/* ------------------------------------------------------------------------
 * Helpers.
 */

static void
path_join(char *out, size_t outsz, const char *a, const char *b)
{
	int n = snprintf(out, outsz, "%s/%s", a, b);

	assert_true(n > 0 && (size_t)n < outsz);
}

static void
rm_rf(const char *path)
{
	struct stat sb;
	struct dirent *de;
	DIR *d;
	char sub[PATH_MAX];

	if (lstat(path, &sb) < 0)
		return;
	if (S_ISDIR(sb.st_mode) && (d = opendir(path)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			path_join(sub, sizeof(sub), path, de->d_name);
			rm_rf(sub);
		}
		closedir(d);
		rmdir(path);
	} else
		unlink(path);
}

/*
 * A certificate for key: self-signed when issuer is NULL.  subject is
 * "CN=..,O=.." style (comma-separated, no escaping needed here); san is
 * OpenSSL's config form ("DNS:a,IP:1.2.3.4") or NULL.
 */
static X509 *
make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, const char *subject, const char *san, bool ca)
{
	X509 *x = X509_new();
	X509_NAME *name;
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	char buf[512], *p, *eq, *save = NULL;

	assert_non_null(x);
	assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
	assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), (long)rand() + 1), 1);
	assert_non_null(X509_gmtime_adj(X509_getm_notBefore(x), -3600));
	assert_non_null(X509_gmtime_adj(X509_getm_notAfter(x), 86400 * 30));
	name = X509_get_subject_name(x);
	snprintf(buf, sizeof(buf), "%s", subject);
	for (p = strtok_r(buf, ",", &save); p != NULL; p = strtok_r(NULL, ",", &save)) {
		eq = strchr(p, '=');
		assert_non_null(eq);
		*eq = '\0';
		assert_int_equal(X509_NAME_add_entry_by_txt(name, p, MBSTRING_UTF8, (unsigned char *)eq + 1, -1,
							    -1, 0),
				 1);
	}
	assert_int_equal(X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name), 1);
	assert_int_equal(X509_set_pubkey(x, key), 1);
	X509V3_set_ctx(&ctx, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
	ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_basic_constraints, ca ? "critical,CA:TRUE" : "CA:FALSE");
	assert_non_null(ext);
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_key_identifier, "hash");
	assert_non_null(ext);
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	if (san != NULL) {
		ext = X509V3_EXT_nconf_nid(NULL, &ctx, NID_subject_alt_name, san);
		assert_non_null(ext);
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	assert_true(X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) > 0);
	return x;
}

static void
write_pem(const char *path, X509 *cert, EVP_PKEY *key)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	if (cert != NULL)
		assert_int_equal(PEM_write_X509(f, cert), 1);
	if (key != NULL)
		assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
	assert_int_equal(fclose(f), 0);
}

/* The whole file as a string (caller frees). */
static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n >= 0);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

/*
 * Run the handshake between client and server over a fresh BIO pair.
 * Returns 0 when both finished, -1 when either failed (OpenSSL's error
 * queue says why).  Bounded: a handshake takes a handful of rounds.
 */
static int
handshake(SSL *client, SSL *server)
{
	BIO *bc = NULL, *bs = NULL;
	int i, rc = 0, rs = 0, e;

	assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
	SSL_set_bio(client, bc, bc);
	SSL_set_bio(server, bs, bs);
	SSL_set_connect_state(client);
	SSL_set_accept_state(server);
	for (i = 0; i < 50; i++) {
		if (rc != 1) {
			rc = SSL_do_handshake(client);
			if (rc != 1) {
				e = SSL_get_error(client, rc);
				if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
					return -1;
			}
		}
		if (rs != 1) {
			rs = SSL_do_handshake(server);
			if (rs != 1) {
				e = SSL_get_error(server, rs);
				if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
					return -1;
			}
		}
		if (rc == 1 && rs == 1)
			return 0;
	}
	fail_msg("handshake did not finish in 50 rounds");
	return -1;
}

/* A client context whose only trust anchor is ca (none when NULL). */
static SSL_CTX *
client_ctx_trusting(X509 *ca)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	assert_non_null(ctx);
	if (ca != NULL)
		assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), ca), 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	return ctx;
}

static X509 *
load_ca_cert(const char *dir)
{
	char cert[PATH_MAX], key[PATH_MAX];
	X509 *x;
	FILE *f;

	ca_paths(dir, cert, sizeof(cert), key, sizeof(key));
	f = fopen(cert, "r");
	assert_non_null(f);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	assert_non_null(x);
	return x;
}

static struct tls *
tls_forging(struct fx *f, const char *keylog)
{
	struct tls_config cfg;
	struct tls *t;
	char err[512];

	memset(&cfg, 0, sizeof(cfg));
	cfg.ca_dir = f->ca_dir;
	cfg.upstream_verify = true;
	cfg.upstream_ca = f->up_ca_file;
	cfg.keylog = keylog;
	t = tls_new(&cfg, true, true, err, sizeof(err));
	if (t == NULL)
		fail_msg("tls_new: %s", err);
	return t;
}

/*
 * Handshake a client (SNI sni, trusting `trust`) with tls_server_ssl_new
 * (up, name).  Returns the certificate the client got (caller frees) and
 * the client's verify result (chain only, no name) in *verify.
 */
static X509 *
serve(struct tls *t, X509 *up, const char *name, const char *sni, X509 *trust, long *verify)
{
	SSL_CTX *cctx = client_ctx_trusting(trust);
	SSL *c, *s;
	X509 *got;
	char err[512];

	s = tls_server_ssl_new(t, up, name, err, sizeof(err));
	if (s == NULL)
		fail_msg("tls_server_ssl_new: %s", err);
	c = SSL_new(cctx);
	assert_non_null(c);
	if (sni != NULL)
		assert_int_equal(SSL_set_tlsext_host_name(c, sni), 1);
	if (handshake(c, s) != 0)
		fail_msg("handshake: %s", tls_error_text(err, sizeof(err)));
	got = SSL_get1_peer_certificate(c);
	assert_non_null(got);
	if (verify != NULL)
		*verify = SSL_get_verify_result(c);
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);
	return got;
}

static int
fx_setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	snprintf(f->root, sizeof(f->root), "%s/smtptap-test-tls.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	assert_non_null(mkdtemp(f->root));
	path_join(f->ca_dir, sizeof(f->ca_dir), f->root, "state/ca");
	f->up_ca_key = EVP_EC_gen("P-256");
	assert_non_null(f->up_ca_key);
	f->up_ca = make_cert(f->up_ca_key, NULL, NULL, "CN=Test Public CA,O=Testing", NULL, true);
	path_join(f->up_ca_file, sizeof(f->up_ca_file), f->root, "upstream-ca.pem");
	write_pem(f->up_ca_file, f->up_ca, NULL);
	*state = f;
	return 0;
}

static int
fx_teardown(void **state)
{
	struct fx *f = *state;

	rm_rf(f->root);
	X509_free(f->up_ca);
	EVP_PKEY_free(f->up_ca_key);
	free(f);
	ERR_clear_error();
	return 0;
}

/* ------------------------------------------------------------------------
 * The CA on disk.
 */

static void
test_ca_init_modes_idempotent(void **state)
{
	struct fx *f = *state;
	char cert[PATH_MAX], key[PATH_MAX], parent[PATH_MAX], err[512], fp1[96], fp2[96];
	struct stat sb;
	char *key1, *key2;

	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 1);
	ca_paths(f->ca_dir, cert, sizeof(cert), key, sizeof(key));
	path_join(parent, sizeof(parent), f->root, "state");
	assert_int_equal(stat(parent, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0700);
	assert_int_equal(stat(f->ca_dir, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0700);
	assert_int_equal(stat(key, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0600);
	assert_int_equal(stat(cert, &sb), 0);
	assert_true(S_ISREG(sb.st_mode));
	assert_int_equal(ca_fingerprint(f->ca_dir, fp1, sizeof(fp1), err, sizeof(err)), 0);
	assert_int_equal(strlen(fp1), 95);
	key1 = read_file(key);

	/* again: nothing made, nothing changed */
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 0);
	assert_int_equal(ca_fingerprint(f->ca_dir, fp2, sizeof(fp2), err, sizeof(err)), 0);
	assert_string_equal(fp1, fp2);
	key2 = read_file(key);
	assert_string_equal(key1, key2);
	free(key1);
	free(key2);
}

static void
test_ca_cert_fields(void **state)
{
	struct fx *f = *state;
	char err[512];
	X509 *ca;
	EVP_PKEY *pub;
	BASIC_CONSTRAINTS *bc;
	const ASN1_INTEGER *serial;
	BIGNUM *bn;

	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 1);
	ca = load_ca_cert(f->ca_dir);
	assert_int_equal(X509_check_ca(ca), 1);
	bc = X509_get_ext_d2i(ca, NID_basic_constraints, NULL, NULL);
	assert_non_null(bc);
	assert_true(bc->ca);
	BASIC_CONSTRAINTS_free(bc);
	assert_true(X509_get_key_usage(ca) & KU_KEY_CERT_SIGN);
	assert_non_null(X509_get0_subject_key_id(ca));
	assert_int_equal(X509_get_signature_nid(ca), NID_ecdsa_with_SHA256);
	pub = X509_get0_pubkey(ca);
	assert_int_equal(X509_verify(ca, pub), 1);
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(ca), X509_get_issuer_name(ca)), 0);
	assert_non_null(strstr(X509_NAME_oneline(X509_get_subject_name(ca), err, sizeof(err)),
			       "CN=smtptap local CA ("));
	serial = X509_get0_serialNumber(ca);
	bn = ASN1_INTEGER_to_BN(serial, NULL);
	assert_non_null(bn);
	assert_true(BN_num_bits(bn) > 64); /* random 128 bits: below 65 is 2^-64 */
	BN_free(bn);
	/* ten years, give or take a leap day */
	assert_true(X509_cmp_time(X509_get0_notAfter(ca), NULL) > 0);
	{
		int days, secs;

		assert_int_equal(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(ca), X509_get0_notAfter(ca)), 1);
		assert_in_range(days, 3650, 3652);
	}
	X509_free(ca);
}

static void
test_ca_half_made_refused(void **state)
{
	struct fx *f = *state;
	char cert[PATH_MAX], key[PATH_MAX], tmp[PATH_MAX + 8], err[1024], fp[96];
	char *before, *after;
	struct stat sb;

	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 1);
	ca_paths(f->ca_dir, cert, sizeof(cert), key, sizeof(key));

	/* key without certificate: an error naming both, the key untouched */
	before = read_file(key);
	assert_int_equal(unlink(cert), 0);
	err[0] = '\0';
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), -1);
	assert_non_null(strstr(err, cert));
	assert_non_null(strstr(err, key));
	after = read_file(key);
	assert_string_equal(before, after);
	assert_int_equal(stat(cert, &sb), -1);
	free(before);
	free(after);

	/* certificate without key */
	assert_int_equal(unlink(key), 0);
	write_pem(cert, f->up_ca, NULL);
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), -1);
	assert_non_null(strstr(err, key));
	assert_int_equal(stat(key, &sb), -1);

	/* both, but they do not belong together */
	write_pem(key, NULL, f->up_ca_key); /* up_ca is signed by that key: matches */
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 0);
	{
		EVP_PKEY *other = EVP_EC_gen("P-256");

		assert_int_equal(unlink(key), 0);
		write_pem(key, NULL, other);
		EVP_PKEY_free(other);
	}
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), -1);
	assert_non_null(strstr(err, key));

	/* garbage in the certificate file */
	{
		FILE *g = fopen(cert, "w");

		assert_non_null(g);
		fputs("not a certificate\n", g);
		fclose(g);
	}
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), -1);
	assert_non_null(strstr(err, cert));
	assert_int_equal(ca_fingerprint(f->ca_dir, fp, sizeof(fp), err, sizeof(err)), -1);
	assert_non_null(strstr(err, cert));

	/* neither, but the temporary files of a crashed attempt: made anew */
	assert_int_equal(unlink(cert), 0);
	assert_int_equal(unlink(key), 0);
	snprintf(tmp, sizeof(tmp), "%s.new", key);
	write_pem(tmp, f->up_ca, NULL);
	snprintf(tmp, sizeof(tmp), "%s.new", cert);
	write_pem(tmp, f->up_ca, NULL);
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 1);
	assert_int_equal(stat(tmp, &sb), -1);
	assert_int_equal(stat(key, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0600);
	assert_int_equal(ca_init(f->ca_dir, err, sizeof(err)), 0);
}

static void
test_ca_created_on_first_use(void **state)
{
	struct fx *f = *state;
	struct tls_config cfg;
	struct tls *t;
	char err[512], dir[PATH_MAX], fp[96];
	const char *def;
	char *old_xdg = getenv("XDG_DATA_HOME") ? strdup(getenv("XDG_DATA_HOME")) : NULL;

	/* no --ca-dir: the XDG default, made by tls_new */
	assert_int_equal(setenv("XDG_DATA_HOME", f->root, 1), 0);
	def = ca_default_dir();
	assert_non_null(def);
	path_join(dir, sizeof(dir), f->root, "smtptap/ca");
	assert_string_equal(def, dir);
	memset(&cfg, 0, sizeof(cfg));
	t = tls_new(&cfg, true, false, err, sizeof(err));
	if (t == NULL)
		fail_msg("tls_new: %s", err);
	assert_int_equal(ca_fingerprint(dir, fp, sizeof(fp), err, sizeof(err)), 0);
	tls_free(t);

	/* a relative XDG_DATA_HOME is ignored (XDG spec): HOME is used */
	assert_int_equal(setenv("XDG_DATA_HOME", "relative/dir", 1), 0);
	{
		char *old_home = getenv("HOME") ? strdup(getenv("HOME")) : NULL;

		assert_int_equal(setenv("HOME", "/home/someone", 1), 0);
		assert_string_equal(ca_default_dir(), "/home/someone/.local/share/smtptap/ca");
		unsetenv("XDG_DATA_HOME");
		unsetenv("HOME");
		assert_null(ca_default_dir());
		if (old_home != NULL)
			setenv("HOME", old_home, 1);
		free(old_home);
	}
	if (old_xdg != NULL)
		setenv("XDG_DATA_HOME", old_xdg, 1);
	else
		unsetenv("XDG_DATA_HOME");
	free(old_xdg);
}

/* ------------------------------------------------------------------------
 * Forging.
 */

static void
test_forge_mirrors_upstream(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *up, *leaf, *ca;
	X509_STORE *store;
	X509_STORE_CTX *sctx;
	long verify;

	up = make_cert(k, f->up_ca, f->up_ca_key, "CN=mail.example.org,O=Example Mail",
		       "DNS:mail.example.org,DNS:*.example.net,IP:192.0.2.7", false);
	ca = load_ca_cert(f->ca_dir);
	leaf = serve(t, up, "mail.example.org", NULL, ca, &verify);
	assert_int_equal(verify, X509_V_OK);

	/* names copied, issuer is the local CA, signed by it with SHA-256 */
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(leaf), X509_get_subject_name(up)), 0);
	assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(ca)), 0);
	assert_int_equal(X509_check_host(leaf, "mail.example.org", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(leaf, "smtp.example.net", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(leaf, "192.0.2.7", 0), 1);
	assert_int_not_equal(X509_check_host(leaf, "other.example.com", 0, 0, NULL), 1);
	assert_int_equal(X509_verify(leaf, X509_get0_pubkey(ca)), 1);
	assert_int_equal(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);
	/* a server certificate and nothing more */
	assert_int_equal(X509_check_ca(leaf), 0);
	assert_int_equal(X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0), 1);
	assert_true(X509_get_extended_key_usage(leaf) & XKU_SSL_SERVER);
	assert_true(X509_get_key_usage(leaf) & KU_DIGITAL_SIGNATURE);
	assert_non_null(X509_get0_subject_key_id(leaf));
	assert_non_null(X509_get0_authority_key_id(leaf));
	assert_int_equal(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf), X509_get0_subject_key_id(ca)), 0);
	/* different serial from the upstream's */
	assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(leaf), X509_get0_serialNumber(up)), 0);

	/* and verifies against the local CA with the name check */
	store = X509_STORE_new();
	assert_non_null(store);
	assert_int_equal(X509_STORE_add_cert(store, ca), 1);
	sctx = X509_STORE_CTX_new();
	assert_non_null(sctx);
	assert_int_equal(X509_STORE_CTX_init(sctx, store, leaf, NULL), 1);
	X509_VERIFY_PARAM_set_purpose(X509_STORE_CTX_get0_param(sctx), X509_PURPOSE_SSL_SERVER);
	/* what Python 3.13's default context asks for */
	X509_VERIFY_PARAM_set_flags(X509_STORE_CTX_get0_param(sctx), X509_V_FLAG_X509_STRICT);
	assert_int_equal(X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(sctx), "mail.example.org", 0), 1);
	assert_int_equal(X509_verify_cert(sctx), 1);
	X509_STORE_CTX_free(sctx);
	sctx = X509_STORE_CTX_new();
	assert_int_equal(X509_STORE_CTX_init(sctx, store, leaf, NULL), 1);
	assert_int_equal(X509_VERIFY_PARAM_set1_host(X509_STORE_CTX_get0_param(sctx), "wrong.example.com", 0), 1);
	assert_int_not_equal(X509_verify_cert(sctx), 1);
	assert_int_equal(X509_STORE_CTX_get_error(sctx), X509_V_ERR_HOSTNAME_MISMATCH);
	X509_STORE_CTX_free(sctx);
	X509_STORE_free(store);

	X509_free(leaf);
	X509_free(ca);
	X509_free(up);
	EVP_PKEY_free(k);
	tls_free(t);
}

static void
test_forge_upstream_without_san(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *up, *leaf;

	/* an old-style certificate naming its host in the CN only */
	up = make_cert(k, f->up_ca, f->up_ca_key, "CN=legacy.example.org", NULL, false);
	leaf = serve(t, up, "legacy.example.org", NULL, NULL, NULL);
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(leaf), X509_get_subject_name(up)), 0);
	/* the CN became a DNS SAN: checked with the CN fallback off */
	assert_int_equal(X509_check_host(leaf, "legacy.example.org", 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL),
			 1);
	X509_free(leaf);
	X509_free(up);
	EVP_PKEY_free(k);
	tls_free(t);
}

static void
test_forge_from_name(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	X509 *leaf, *ca = load_ca_cert(f->ca_dir);
	char cn[128];
	long verify;

	/* sink mode: a host name */
	leaf = serve(t, NULL, "smtp.test", NULL, ca, &verify);
	assert_int_equal(verify, X509_V_OK);
	assert_int_equal(X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof(cn)),
			 9);
	assert_string_equal(cn, "smtp.test");
	assert_int_equal(X509_check_host(leaf, "smtp.test", 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL), 1);
	assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(ca)), 0);
	X509_free(leaf);

	/* an address literal: an IP SAN (and the CN) */
	leaf = serve(t, NULL, "127.0.0.1", NULL, ca, NULL);
	assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
	assert_int_not_equal(X509_check_host(leaf, "127.0.0.1", 0, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT, NULL), 1);
	assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(leaf), NID_commonName, cn, sizeof(cn)) > 0);
	assert_string_equal(cn, "127.0.0.1");
	X509_free(leaf);

	leaf = serve(t, NULL, "[::1]", NULL, ca, NULL);
	assert_int_equal(X509_check_ip_asc(leaf, "::1", 0), 1);
	X509_free(leaf);

	X509_free(ca);
	tls_free(t);
}

static void
test_sni_reforge(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	EVP_PKEY *k = EVP_EC_gen("P-256");
	struct tls_stats st;
	X509 *up, *leaf, *ca = load_ca_cert(f->ca_dir);
	long verify;

	up = make_cert(k, f->up_ca, f->up_ca_key, "CN=mx1.example.org", "DNS:mx1.example.org", false);

	/* an SNI the mirrored names cover: no second forge */
	leaf = serve(t, up, "mx1.example.org", "mx1.example.org", ca, &verify);
	assert_int_equal(verify, X509_V_OK);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 1);
	X509_free(leaf);

	/* an alias the upstream's certificate does not name: added */
	leaf = serve(t, up, "mx1.example.org", "smtp.customer.test", ca, &verify);
	assert_int_equal(verify, X509_V_OK);
	assert_int_equal(X509_check_host(leaf, "smtp.customer.test", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(leaf, "mx1.example.org", 0, 0, NULL), 1);
	assert_int_equal(X509_NAME_cmp(X509_get_subject_name(leaf), X509_get_subject_name(up)), 0);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 2);
	X509_free(leaf);

	/* the same alias again: both leaves from the cache */
	leaf = serve(t, up, "mx1.example.org", "smtp.customer.test", ca, NULL);
	assert_int_equal(X509_check_host(leaf, "smtp.customer.test", 0, 0, NULL), 1);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 2);
	assert_int_equal(st.cache_hits, 3); /* the base leaf once before, base and alias now */
	X509_free(leaf);

	/* an SNI that cannot be a host name is not worth a forge */
	leaf = serve(t, up, "mx1.example.org", "bad name\x01<>", ca, NULL);
	assert_int_equal(X509_check_host(leaf, "mx1.example.org", 0, 0, NULL), 1);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 2);
	X509_free(leaf);

	/* sink mode: name and SNI differ */
	leaf = serve(t, NULL, "127.0.0.1", "catcher.test", ca, NULL);
	assert_int_equal(X509_check_host(leaf, "catcher.test", 0, 0, NULL), 1);
	assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
	X509_free(leaf);

	X509_free(ca);
	X509_free(up);
	EVP_PKEY_free(k);
	tls_free(t);
}

static void
test_cache_hit_and_shared_key(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	EVP_PKEY *k = EVP_EC_gen("P-256");
	struct tls_stats st;
	X509 *up1, *up2, *l1, *l2, *l3;

	up1 = make_cert(k, f->up_ca, f->up_ca_key, "CN=a.example.org", "DNS:a.example.org", false);
	up2 = make_cert(k, f->up_ca, f->up_ca_key, "CN=b.example.org", "DNS:b.example.org", false);

	l1 = serve(t, up1, "a.example.org", NULL, NULL, NULL);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 1);
	assert_int_equal(st.cache_hits, 0);
	l2 = serve(t, up1, "a.example.org", NULL, NULL, NULL);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 1);
	assert_int_equal(st.cache_hits, 1);
	assert_int_equal(X509_cmp(l1, l2), 0);

	l3 = serve(t, up2, "b.example.org", NULL, NULL, NULL);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 2);
	assert_int_equal(st.cached, 2);
	assert_int_not_equal(X509_cmp(l1, l3), 0);
	/* one key for every leaf */
	assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(l1), X509_get0_pubkey(l3)), 1);
	assert_int_not_equal(EVP_PKEY_eq(X509_get0_pubkey(l1), k), 1);

	X509_free(l1);
	X509_free(l2);
	X509_free(l3);
	X509_free(up1);
	X509_free(up2);
	EVP_PKEY_free(k);
	tls_free(t);
}

static void
test_cache_eviction_bound(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	struct tls_stats st;
	SSL *held, *c;
	SSL_CTX *cctx;
	X509 *leaf;
	char name[64], err[512];
	int i;

	tls_cache_set_max(t, 4);
	/* an SSL whose leaf will be evicted before its handshake */
	held = tls_server_ssl_new(t, NULL, "held.test", err, sizeof(err));
	assert_non_null(held);
	for (i = 0; i < 10; i++) {
		snprintf(name, sizeof(name), "n%d.test", i);
		leaf = serve(t, NULL, name, NULL, NULL, NULL);
		X509_free(leaf);
	}
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 11);
	assert_int_equal(st.cached, 4);
	assert_int_equal(st.evicted, 7);

	/* the most recent are still there, the oldest forged again */
	leaf = serve(t, NULL, "n9.test", NULL, NULL, NULL);
	X509_free(leaf);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 11);
	assert_int_equal(st.cache_hits, 1);
	leaf = serve(t, NULL, "n0.test", NULL, NULL, NULL);
	X509_free(leaf);
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 12);
	assert_int_equal(st.cached, 4);

	/* the evicted leaf is still whole for the SSL that holds it */
	cctx = client_ctx_trusting(NULL);
	c = SSL_new(cctx);
	assert_non_null(c);
	assert_int_equal(handshake(c, held), 0);
	leaf = SSL_get1_peer_certificate(c);
	assert_int_equal(X509_check_host(leaf, "held.test", 0, 0, NULL), 1);
	X509_free(leaf);
	SSL_free(c);
	SSL_free(held);
	SSL_CTX_free(cctx);

	/* shrinking evicts at once */
	tls_cache_set_max(t, 1);
	tls_stats_get(t, &st);
	assert_int_equal(st.cached, 1);
	tls_free(t);
}

/* ------------------------------------------------------------------------
 * The upstream leg.
 */

/* Handshake tls_client_ssl_new(sni, verify_name) against a server
 * serving cert/key; returns tls_verify_result, why in why. */
static int
upstream_verify(struct tls *t, X509 *cert, EVP_PKEY *key, const char *sni, const char *verify_name,
		char *why, size_t whysz, char *sni_seen, size_t sni_seensz)
{
	SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
	SSL *c, *s;
	struct tls_info info;
	const char *seen;
	char err[512];
	int r;

	assert_non_null(sctx);
	assert_int_equal(SSL_CTX_use_certificate(sctx, cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(sctx, key), 1);
	s = SSL_new(sctx);
	c = tls_client_ssl_new(t, sni, verify_name, err, sizeof(err));
	if (c == NULL)
		fail_msg("tls_client_ssl_new: %s", err);
	/* never fails on verification: the result is read afterwards */
	assert_int_equal(handshake(c, s), 0);
	seen = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
	snprintf(sni_seen, sni_seensz, "%s", seen != NULL ? seen : "");
	r = tls_verify_result(c, why, whysz);
	memset(&info, 0, sizeof(info));
	tls_info_get(c, false, &info);
	assert_int_equal(info.verified, r);
	assert_string_equal(info.verify_error, why);
	assert_string_equal(info.sni, sni_seen); /* what was sent is what arrived */
	assert_false(info.forged);
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(sctx);
	return r;
}

static void
test_upstream_verification(void **state)
{
	struct fx *f = *state;
	struct tls_config cfg;
	struct tls *t;
	EVP_PKEY *k = EVP_EC_gen("P-256");
	X509 *self, *good;
	char err[512], why[256], sni[256];

	memset(&cfg, 0, sizeof(cfg));
	cfg.upstream_verify = true;
	cfg.upstream_ca = f->up_ca_file;
	t = tls_new(&cfg, false, true, err, sizeof(err));
	if (t == NULL)
		fail_msg("tls_new: %s", err);
	assert_true(tls_upstream_verify(t));
	self = make_cert(k, NULL, NULL, "CN=mx.example.org", "DNS:mx.example.org", false);
	good = make_cert(k, f->up_ca, f->up_ca_key, "CN=mx.example.org", "DNS:mx.example.org,IP:127.0.0.1", false);

	assert_int_equal(upstream_verify(t, self, k, "mx.example.org", "mx.example.org", why, sizeof(why), sni,
					 sizeof(sni)),
			 0);
	assert_non_null(strstr(why, "self-signed"));
	assert_string_equal(sni, "mx.example.org");

	assert_int_equal(upstream_verify(t, good, k, "mx.example.org", "mx.example.org", why, sizeof(why), sni,
					 sizeof(sni)),
			 1);
	assert_string_equal(why, "");

	assert_int_equal(upstream_verify(t, good, k, "wrong.example.org", "wrong.example.org", why, sizeof(why),
					 sni, sizeof(sni)),
			 0);
	assert_non_null(strstr(why, "mismatch"));

	/* an address: no SNI sent, the IP SAN checked */
	assert_int_equal(upstream_verify(t, good, k, "127.0.0.1", "127.0.0.1", why, sizeof(why), sni, sizeof(sni)),
			 1);
	assert_string_equal(sni, "");
	assert_int_equal(upstream_verify(t, good, k, "127.0.0.2", "127.0.0.2", why, sizeof(why), sni, sizeof(sni)),
			 0);
	assert_non_null(strstr(why, "mismatch"));

	X509_free(self);
	X509_free(good);
	EVP_PKEY_free(k);
	tls_free(t);

	/* a trust bundle that is not there is named */
	cfg.upstream_ca = "/nonexistent/bundle.pem";
	assert_null(tls_new(&cfg, false, true, err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/bundle.pem"));
	assert_int_equal(ERR_peek_error(), 0);
}

/* ------------------------------------------------------------------------
 * --cert/--key.
 */

static void
test_static_cert(void **state)
{
	struct fx *f = *state;
	struct tls_config cfg;
	struct tls_stats st;
	struct tls_info info;
	struct tls *t;
	EVP_PKEY *k = EVP_EC_gen("P-256"), *other = EVP_EC_gen("P-256");
	X509 *cert, *got;
	SSL_CTX *cctx;
	SSL *c, *s;
	char certf[PATH_MAX], keyf[PATH_MAX], otherf[PATH_MAX], err[1024], cadir[PATH_MAX];
	struct stat sb;

	cert = make_cert(k, f->up_ca, f->up_ca_key, "CN=static.test", "DNS:static.test", false);
	path_join(certf, sizeof(certf), f->root, "static.pem");
	path_join(keyf, sizeof(keyf), f->root, "static.key");
	path_join(otherf, sizeof(otherf), f->root, "other.key");
	write_pem(certf, cert, NULL);
	write_pem(keyf, NULL, k);
	write_pem(otherf, NULL, other);
	path_join(cadir, sizeof(cadir), f->root, "unused-ca");

	memset(&cfg, 0, sizeof(cfg));
	cfg.ca_dir = cadir;
	cfg.cert_file = certf;
	cfg.key_file = keyf;
	t = tls_new(&cfg, true, false, err, sizeof(err));
	if (t == NULL)
		fail_msg("tls_new: %s", err);
	/* no CA made when none is needed */
	assert_int_equal(stat(cadir, &sb), -1);

	cctx = client_ctx_trusting(NULL);
	c = SSL_new(cctx);
	s = tls_server_ssl_new(t, NULL, "ignored.test", err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(SSL_set_tlsext_host_name(c, "elsewhere.test"), 1);
	assert_int_equal(handshake(c, s), 0);
	got = SSL_get1_peer_certificate(c);
	assert_int_equal(X509_cmp(got, cert), 0);
	memset(&info, 0, sizeof(info));
	tls_info_get(s, true, &info);
	assert_false(info.forged);
	assert_int_equal(info.verified, -1);
	assert_string_equal(info.sni, "elsewhere.test");
	tls_stats_get(t, &st);
	assert_int_equal(st.forged, 0);
	X509_free(got);
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);
	tls_free(t);

	/* the wrong key */
	cfg.key_file = otherf;
	assert_null(tls_new(&cfg, true, false, err, sizeof(err)));
	assert_non_null(strstr(err, otherf));
	assert_int_equal(ERR_peek_error(), 0);
	/* half the pair */
	cfg.key_file = NULL;
	assert_null(tls_new(&cfg, true, false, err, sizeof(err)));
	assert_non_null(strstr(err, "--key"));
	/* a file that is not there */
	cfg.key_file = keyf;
	cfg.cert_file = "/nonexistent/cert.pem";
	assert_null(tls_new(&cfg, true, false, err, sizeof(err)));
	assert_non_null(strstr(err, "/nonexistent/cert.pem"));
	assert_int_equal(ERR_peek_error(), 0);

	X509_free(cert);
	EVP_PKEY_free(k);
	EVP_PKEY_free(other);
}

/* ------------------------------------------------------------------------
 * Handshake facts, key log, errors.
 */

static bool
is_fingerprint(const char *s)
{
	size_t i;

	if (strlen(s) != 95)
		return false;
	for (i = 0; i < 95; i++) {
		if (i % 3 == 2 ? s[i] != ':' : strchr("0123456789ABCDEF", s[i]) == NULL || s[i] == '\0')
			return false;
	}
	return true;
}

static void
test_info_and_json(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	struct tls_info info;
	SSL_CTX *cctx = client_ctx_trusting(NULL);
	SSL *c, *s;
	X509 *ca = load_ca_cert(f->ca_dir);
	char err[512], fp[96];
	char *js;

	s = tls_server_ssl_new(t, NULL, "info.test", err, sizeof(err));
	assert_non_null(s);
	c = SSL_new(cctx);
	assert_int_equal(SSL_set_tlsext_host_name(c, "info.test"), 1);
	assert_int_equal(handshake(c, s), 0);

	memset(&info, 0, sizeof(info));
	snprintf(info.mode, sizeof(info.mode), "starttls");
	info.handshake_us = 1234;
	tls_info_get(s, true, &info);
	assert_string_equal(info.mode, "starttls"); /* left for the caller */
	assert_int_equal(info.handshake_us, 1234);
	assert_string_equal(info.version, "TLSv1.3");
	assert_true(strncmp(info.cipher, "TLS_", 4) == 0);
	assert_string_equal(info.sni, "info.test");
	assert_string_equal(info.cert_subject, "CN=info.test");
	assert_non_null(strstr(info.cert_issuer, "CN=smtptap local CA ("));
	assert_true(is_fingerprint(info.cert_sha256));
	assert_int_equal(info.verified, -1);
	assert_true(info.forged);

	/* the same fingerprint the client computes, and the CA's in its format */
	assert_int_equal(ca_fingerprint(f->ca_dir, fp, sizeof(fp), err, sizeof(err)), 0);
	assert_true(is_fingerprint(fp));

	js = tls_info_json(&info);
	assert_non_null(js);
	assert_true(json_valid(js, strlen(js)));
	assert_null(strchr(js, '\n'));
	assert_non_null(strstr(js, "\"mode\""));
	assert_non_null(strstr(js, "\"starttls\""));
	assert_non_null(strstr(js, "\"TLSv1.3\""));
	assert_non_null(strstr(js, info.cert_sha256));
	assert_non_null(strstr(js, "\"info.test\""));
	assert_non_null(strstr(js, "\"handshake_us\""));
	free(js);

	/* client side: a TLS 1.2 handshake reads as such */
	memset(&info, 0, sizeof(info));
	tls_info_get(c, false, &info);
	assert_string_equal(info.version, "TLSv1.3");
	assert_int_equal(info.verified, 0); /* the client trusted nothing */
	assert_true(info.verify_error[0] != '\0');
	js = tls_info_json(&info);
	assert_non_null(js);
	assert_true(json_valid(js, strlen(js)));
	free(js);

	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);
	X509_free(ca);
	tls_free(t);
}

static void
test_keylog(void **state)
{
	struct fx *f = *state;
	char path[PATH_MAX], err[512];
	struct tls *t;
	SSL_CTX *cctx;
	SSL *c, *s;
	struct stat sb;
	char *text;

	path_join(path, sizeof(path), f->root, "keys.log");
	t = tls_forging(f, path);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 07777, 0600);

	/* TLS 1.3 */
	cctx = client_ctx_trusting(NULL);
	c = SSL_new(cctx);
	s = tls_server_ssl_new(t, NULL, "keylog.test", err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(handshake(c, s), 0);
	SSL_free(c);
	SSL_free(s);
	/* TLS 1.2 */
	assert_int_equal(SSL_CTX_set_max_proto_version(cctx, TLS1_2_VERSION), 1);
	c = SSL_new(cctx);
	s = tls_server_ssl_new(t, NULL, "keylog.test", err, sizeof(err));
	assert_int_equal(handshake(c, s), 0);
	{
		struct tls_info info;

		memset(&info, 0, sizeof(info));
		tls_info_get(s, true, &info);
		assert_string_equal(info.version, "TLSv1.2");
	}
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);

	/* written as they come, before tls_free */
	text = read_file(path);
	assert_non_null(strstr(text, "CLIENT_HANDSHAKE_TRAFFIC_SECRET "));
	assert_non_null(strstr(text, "SERVER_TRAFFIC_SECRET_0 "));
	assert_non_null(strstr(text, "\nCLIENT_RANDOM "));
	assert_int_equal(text[strlen(text) - 1], '\n');
	free(text);
	tls_free(t);

	/* a key log that cannot be opened is named */
	{
		struct tls_config cfg;

		memset(&cfg, 0, sizeof(cfg));
		cfg.keylog = "/nonexistent/dir/keys.log";
		assert_null(tls_new(&cfg, false, true, err, sizeof(err)));
		assert_non_null(strstr(err, "--keylog /nonexistent/dir/keys.log"));
	}
}

static void
test_error_text_and_untrusted(void **state)
{
	struct fx *f = *state;
	struct tls *t = tls_forging(f, NULL);
	SSL_CTX *cctx;
	SSL *c, *s;
	char err[512], small[8];
	unsigned long e;
	bool untrusted = false;

	ERR_raise(ERR_LIB_SSL, SSL_R_TLSV1_ALERT_UNKNOWN_CA);
	ERR_raise(ERR_LIB_SSL, SSL_R_SSLV3_ALERT_BAD_CERTIFICATE);
	tls_error_text(err, sizeof(err));
	assert_non_null(strstr(err, "; "));
	assert_non_null(strstr(err, "unknown ca"));
	assert_int_equal(ERR_peek_error(), 0);
	/* a short buffer still drains the queue */
	ERR_raise(ERR_LIB_SSL, SSL_R_TLSV1_ALERT_UNKNOWN_CA);
	ERR_raise(ERR_LIB_SSL, SSL_R_TLSV1_ALERT_UNKNOWN_CA);
	tls_error_text(small, sizeof(small));
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_int_equal(ERR_peek_error(), 0);
	tls_error_text(err, sizeof(err));
	assert_string_equal(err, "");

	assert_true(tls_error_is_untrusted(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_TLSV1_ALERT_UNKNOWN_CA)));
	assert_true(tls_error_is_untrusted(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN)));
	assert_false(tls_error_is_untrusted(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_WRONG_VERSION_NUMBER)));
	assert_false(tls_error_is_untrusted(ERR_PACK(ERR_LIB_X509, 0, SSL_R_TLSV1_ALERT_UNKNOWN_CA)));

	/* a real client that does not trust the CA: its alert is recognised */
	cctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
	c = SSL_new(cctx);
	s = tls_server_ssl_new(t, NULL, "untrusted.test", err, sizeof(err));
	assert_non_null(s);
	ERR_clear_error();
	/* the client fails first; one more server step reads its alert */
	assert_int_equal(handshake(c, s), -1);
	ERR_clear_error();
	if (SSL_do_handshake(s) != 1) {
		while ((e = ERR_get_error()) != 0)
			untrusted = untrusted || tls_error_is_untrusted(e);
	}
	assert_true(untrusted);
	SSL_free(c);
	SSL_free(s);
	SSL_CTX_free(cctx);
	tls_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ca_init_modes_idempotent, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_ca_cert_fields, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_ca_half_made_refused, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_ca_created_on_first_use, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_forge_mirrors_upstream, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_forge_upstream_without_san, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_forge_from_name, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_sni_reforge, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_cache_hit_and_shared_key, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_cache_eviction_bound, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_upstream_verification, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_static_cert, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_info_and_json, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_keylog, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(test_error_text_and_untrusted, fx_setup, fx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
