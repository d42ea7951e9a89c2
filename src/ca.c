/*
 * ca.c - see ca.h.
 *
 * The CA is made once and then only read: ca_init() takes a lock on the
 * directory, so a proxy starting and `smtptap ca init` run at the same
 * moment make one CA between them, and writes each file under a
 * temporary name renamed into place, so no reader ever sees half a PEM.
 *
 * OpenSSL's error queue is worded by tls_error_text() (tls.h), the one
 * place that drains it.
 */
#include "smtptap/ca.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "smtptap/tls.h"
#include "smtptap/util.h"

#define CA_DAYS 3650  /* the CA certificate is good for ten years */
#define CA_CN_MAX 64 /* X.520 ub-common-name */

static int ca_mkdir_p(const char *dir, char *err, size_t errsz);
static int ca_write_pem(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert, char *err, size_t errsz);
static X509 *ca_make(EVP_PKEY *key, char *err, size_t errsz);


/* ------------------------------------------------------------------------
 * Certificate-building steps shared with the forged leaves.
 */

void
ca_cert_fingerprint(X509 *x, char *out, size_t outsz)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0, i;
	size_t off = 0;

	if (outsz == 0)
		return;
	out[0] = '\0';
	if (x == NULL || X509_digest(x, EVP_sha256(), md, &len) != 1)
		return;
	for (i = 0; i < len && off + 3 <= outsz; i++) {
		snprintf(out + off, outsz - off, "%s%02X", i == 0 ? "" : ":", md[i]);
		off += i == 0 ? 2 : 3;
	}
}

/* A random positive 128-bit serial (RFC 5280: unique per issuer, at most
 * 20 octets; randomness also keeps a re-created CA's serials apart). */
int
ca_cert_set_serial(X509 *x)
{
	BIGNUM *bn;
	int ok = 0;

	if ((bn = BN_new()) == NULL)
		return 0;
	do {
		if (BN_rand(bn, 128, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1)
			goto out;
	} while (BN_is_zero(bn));
	ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
out:
	BN_free(bn);
	return ok;
}

/* One extension from its OpenSSL config-string form ("critical,CA:FALSE"). */
int
ca_cert_add_ext(X509 *issuer, X509 *subject, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&ctx, issuer, subject, NULL, NULL, 0);
	if ((ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value)) == NULL)
		return 0;
	ok = X509_add_ext(subject, ext, -1) == 1;
	X509_EXTENSION_free(ext);
	return ok;
}

/* ------------------------------------------------------------------------
 * The CA on disk.
 */

const char *
ca_default_dir(void)
{
	static char dir[PATH_MAX];
	const char *base;
	int n;

	/* XDG: a relative XDG_DATA_HOME is invalid and must be ignored. */
	base = getenv("XDG_DATA_HOME");
	if (base != NULL && base[0] == '/')
		n = snprintf(dir, sizeof(dir), "%s/smtptap/ca", base);
	else if ((base = getenv("HOME")) != NULL && base[0] != '\0')
		n = snprintf(dir, sizeof(dir), "%s/.local/share/smtptap/ca", base);
	else
		return NULL;
	if (n < 0 || (size_t)n >= sizeof(dir))
		return NULL;
	return dir;
}

void
ca_paths(const char *dir, char *cert, size_t certsz, char *key, size_t keysz)
{
	if (certsz > 0)
		snprintf(cert, certsz, "%s/ca.pem", dir);
	if (keysz > 0)
		snprintf(key, keysz, "%s/ca.key", dir);
}

/* mkdir -p: every missing component made 0700 (the CA key's directory
 * is nobody else's business); existing ones are left as they are. */
static int
ca_mkdir_p(const char *dir, char *err, size_t errsz)
{
	char path[PATH_MAX];
	struct stat sb;
	size_t len, i;

	len = strlen(dir);
	if (len == 0 || len >= sizeof(path)) {
		util_errf(err, errsz, "--ca-dir '%s': bad path", dir);
		return -1;
	}
	memcpy(path, dir, len + 1);
	for (i = 1; i <= len; i++) {
		if (path[i] != '/' && path[i] != '\0')
			continue;
		path[i] = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST) {
			util_errf(err, errsz, "creating %s: %s", path, strerror(errno));
			return -1;
		}
		path[i] = i == len ? '\0' : '/';
	}
	if (stat(dir, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		util_errf(err, errsz, "%s: not a directory", dir);
		return -1;
	}
	return 0;
}

/* Write key or cert as PEM to a new file (O_EXCL: never over another).
 * On failure the file is removed. */
static int
ca_write_pem(const char *path, mode_t mode, EVP_PKEY *key, X509 *cert, char *err, size_t errsz)
{
	FILE *f;
	int fd, ok;
	char ebuf[256];

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		util_errf(err, errsz, "creating %s: %s", path, strerror(errno));
		return -1;
	}
	if ((f = fdopen(fd, "w")) == NULL) {
		util_errf(err, errsz, "creating %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	if (key != NULL)
		ok = PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL) == 1;
	else
		ok = PEM_write_X509(f, cert) == 1;
	if (!ok) {
		util_errf(err, errsz, "writing %s: %s", path, tls_error_text(ebuf, sizeof(ebuf)));
		fclose(f);
		unlink(path);
		return -1;
	}
	if (fflush(f) != 0 || fsync(fd) != 0) {
		util_errf(err, errsz, "writing %s: %s", path, strerror(errno));
		fclose(f);
		unlink(path);
		return -1;
	}
	if (fclose(f) != 0) {
		util_errf(err, errsz, "writing %s: %s", path, strerror(errno));
		unlink(path);
		return -1;
	}
	return 0;
}

int
ca_load(const char *dir, X509 **cert, EVP_PKEY **key, char *err, size_t errsz)
{
	char cpath[PATH_MAX], kpath[PATH_MAX], ebuf[256];
	FILE *f;

	*cert = NULL;
	*key = NULL;
	ca_paths(dir, cpath, sizeof(cpath), kpath, sizeof(kpath));
	if ((f = fopen(cpath, "r")) == NULL) {
		util_errf(err, errsz, "%s: %s", cpath, strerror(errno));
		return -1;
	}
	*cert = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (*cert == NULL) {
		util_errf(err, errsz, "%s: not a PEM certificate: %s", cpath, tls_error_text(ebuf, sizeof(ebuf)));
		return -1;
	}
	if ((f = fopen(kpath, "r")) == NULL) {
		util_errf(err, errsz, "%s: %s", kpath, strerror(errno));
		goto fail;
	}
	*key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (*key == NULL) {
		util_errf(err, errsz, "%s: not a PEM private key (an encrypted key is not supported): %s", kpath,
			tls_error_text(ebuf, sizeof(ebuf)));
		goto fail;
	}
	if (X509_check_private_key(*cert, *key) != 1) {
		ERR_clear_error();
		util_errf(err, errsz, "%s does not match the certificate %s", kpath, cpath);
		goto fail;
	}
	return 0;
fail:
	X509_free(*cert);
	EVP_PKEY_free(*key);
	*cert = NULL;
	*key = NULL;
	return -1;
}

/* The self-signed CA certificate for key. */
static X509 *
ca_make(EVP_PKEY *key, char *err, size_t errsz)
{
	X509 *x;
	X509_NAME *name;
	char host[64], cn[CA_CN_MAX + 1], ebuf[256];

	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	/* Fit the 64 characters X.520 allows a CN: the host name is cut. */
	snprintf(cn, sizeof(cn), "smtptap local CA (%.*s)", CA_CN_MAX - 19, host);

	if ((x = X509_new()) == NULL)
		goto fail;
	if (X509_set_version(x, X509_VERSION_3) != 1 || !ca_cert_set_serial(x))
		goto fail;
	if (X509_gmtime_adj(X509_getm_notBefore(x), -86400) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), CA_DAYS, 0, NULL) == NULL)
		goto fail;
	name = X509_get_subject_name(x);
	if (X509_NAME_add_entry_by_NID(name, NID_organizationName, MBSTRING_UTF8, (const unsigned char *)"smtptap",
				       -1, -1, 0) != 1 ||
	    X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
				       0) != 1)
		goto fail;
	if (X509_set_issuer_name(x, name) != 1 || X509_set_pubkey(x, key) != 1)
		goto fail;
	if (!ca_cert_add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") ||
	    !ca_cert_add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") ||
	    !ca_cert_add_ext(x, x, NID_subject_key_identifier, "hash"))
		goto fail;
	if (X509_sign(x, key, EVP_sha256()) <= 0)
		goto fail;
	return x;
fail:
	util_errf(err, errsz, "making the CA certificate: %s", tls_error_text(ebuf, sizeof(ebuf)));
	X509_free(x);
	return NULL;
}

/*
 * Serialised by a lock on the directory, so two smtptap processes started
 * at once (a proxy and `ca init`) never both create a CA or see one half
 * written.  Each file is written under a temporary name and renamed into
 * place, key first: a crash leaves at most a stray *.new file, or (between
 * the two renames) a key without certificate, which is then reported.
 */
int
ca_init(const char *dir, char *err, size_t errsz)
{
	char cpath[PATH_MAX], kpath[PATH_MAX], ctmp[PATH_MAX + 8], ktmp[PATH_MAX + 8], ebuf[256];
	bool have_cert, have_key;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	struct stat sb;
	int dfd, rc = -1;

	if (ca_mkdir_p(dir, err, errsz) < 0)
		return -1;
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		util_errf(err, errsz, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while (flock(dfd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			util_errf(err, errsz, "locking %s: %s", dir, strerror(errno));
			close(dfd);
			return -1;
		}
	}
	ca_paths(dir, cpath, sizeof(cpath), kpath, sizeof(kpath));
	snprintf(ctmp, sizeof(ctmp), "%s.new", cpath);
	snprintf(ktmp, sizeof(ktmp), "%s.new", kpath);
	have_cert = lstat(cpath, &sb) == 0;
	have_key = lstat(kpath, &sb) == 0;
	if (have_cert && have_key) {
		if (ca_load(dir, &cert, &key, err, errsz) == 0)
			rc = 0;
		goto out;
	}
	/* Half a CA is someone's (or a crash's) work: never paper over it. */
	if (have_cert != have_key) {
		util_errf(err, errsz, "%s exists but %s does not: remove %s (or restore %s) to make a new CA",
			have_cert ? cpath : kpath, have_cert ? kpath : cpath, have_cert ? cpath : kpath,
			have_cert ? kpath : cpath);
		goto out;
	}
	if ((key = EVP_EC_gen("P-256")) == NULL) {
		util_errf(err, errsz, "making the CA key: %s", tls_error_text(ebuf, sizeof(ebuf)));
		goto out;
	}
	if ((cert = ca_make(key, err, errsz)) == NULL)
		goto out;
	/* Left over by a crash of an earlier attempt (we hold the lock). */
	unlink(ktmp);
	unlink(ctmp);
	if (ca_write_pem(ktmp, 0600, key, NULL, err, errsz) < 0)
		goto out;
	if (ca_write_pem(ctmp, 0644, NULL, cert, err, errsz) < 0) {
		unlink(ktmp);
		goto out;
	}
	if (rename(ktmp, kpath) < 0) {
		util_errf(err, errsz, "creating %s: %s", kpath, strerror(errno));
		unlink(ktmp);
		unlink(ctmp);
		goto out;
	}
	if (rename(ctmp, cpath) < 0) {
		util_errf(err, errsz, "creating %s: %s", cpath, strerror(errno));
		unlink(kpath);
		unlink(ctmp);
		goto out;
	}
	fsync(dfd);
	rc = 1;
out:
	X509_free(cert);
	EVP_PKEY_free(key);
	close(dfd); /* releases the lock */
	return rc;
}

int
ca_fingerprint(const char *dir, char *out, size_t outsz, char *err, size_t errsz)
{
	char cpath[PATH_MAX], kpath[PATH_MAX], ebuf[256];
	X509 *x;
	FILE *f;

	ca_paths(dir, cpath, sizeof(cpath), kpath, sizeof(kpath));
	if ((f = fopen(cpath, "r")) == NULL) {
		util_errf(err, errsz, "%s: %s", cpath, strerror(errno));
		return -1;
	}
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL) {
		util_errf(err, errsz, "%s: not a PEM certificate: %s", cpath, tls_error_text(ebuf, sizeof(ebuf)));
		return -1;
	}
	ca_cert_fingerprint(x, out, outsz);
	X509_free(x);
	return 0;
}
