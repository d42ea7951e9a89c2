/*
 * ca.h - the local certificate authority on disk: where it lives, creating
 * it once (under a lock, never half-written), loading it, and its
 * fingerprint.  What `smtptap ca init|show` and tls_new() need.
 *
 * A CA directory holds ca.pem (the self-signed certificate, 0644) and
 * ca.key (an EC P-256 key, 0600); the directory itself is made 0700.
 * The key is never printed and never read except to sign.
 *
 * Also here: the few certificate-building steps the CA shares with the
 * leaves tls.c forges under it (serial, extensions, fingerprint form).
 * No state: every function works on the directory or certificate given.
 */
#ifndef SMTPTAP_CA_H
#define SMTPTAP_CA_H

#include <stddef.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

/* Room for a fingerprint in the form ca_cert_fingerprint() writes. */
#define CA_FINGERPRINT_MAX 96

/* $XDG_DATA_HOME/smtptap/ca, else $HOME/.local/share/smtptap/ca; NULL
 * when neither variable is usable.  Static storage. */
const char *ca_default_dir(void);

/* Paths of the CA certificate and key in dir ("ca.pem", "ca.key"). */
void ca_paths(const char *dir, char *cert, size_t certsz, char *key, size_t keysz);

/*
 * Create the CA in dir (missing directories 0700, the key 0600) unless it
 * exists.  Returns 1 created, 0 already there (and loadable), -1 with one
 * line in err.  Safe against a second process doing the same at once.
 */
int ca_init(const char *dir, char *err, size_t errsz);

/* Load the CA in dir and check the key matches the certificate.  Returns
 * 0 with new references in *cert and *key (the caller frees them), or -1
 * with err and both NULL. */
int ca_load(const char *dir, X509 **cert, EVP_PKEY **key, char *err, size_t errsz);

/* SHA-256 fingerprint of the CA certificate in dir (see
 * ca_cert_fingerprint).  Returns 0 or -1 with err. */
int ca_fingerprint(const char *dir, char *out, size_t outsz, char *err, size_t errsz);

/* "AB:CD:..." for the SHA-256 of x's DER form; out at least
 * CA_FINGERPRINT_MAX bytes (else cut short).  "" when x is NULL. */
void ca_cert_fingerprint(X509 *x, char *out, size_t outsz);

/* A random positive 128-bit serial for x.  Returns 1, or 0 with OpenSSL's
 * error queue set. */
int ca_cert_set_serial(X509 *x);

/* Add one extension to subject from its OpenSSL config-string form
 * ("critical,CA:FALSE"); issuer serves keyid references.  Returns 1, or 0
 * with OpenSSL's error queue set. */
int ca_cert_add_ext(X509 *issuer, X509 *subject, int nid, const char *value);

#endif
