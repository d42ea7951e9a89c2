/*
 * forge.h - the leaves shown to clients: forged under the local CA (ca.h)
 * to mirror the upstream's certificate, and the LRU cache that keeps them.
 *
 * A module of its own so tls.c (contexts, SSL objects, verification,
 * resumption, the key log, handshake facts) stays about SSL objects and
 * this stays about certificates.  tls.c is the only user: it makes one
 * struct forge when it forges (not with --cert/--key), asks it for the
 * leaf of (upstream certificate, name, SNI), and serves that leaf with the
 * one key every leaf shares.  No SSL objects, no sockets; event loop
 * thread only (no locks).
 */
#ifndef SMTPTAP_FORGE_H
#define SMTPTAP_FORGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

struct forge;

/* Counters for tls_stats_get (tls.h says what each means). */
struct forge_stats {
	uint64_t forged;
	uint64_t cache_hits;
	uint64_t cached;
	uint64_t evicted;
};

/*
 * Load (or create) the CA in dir (ca.h) and make the shared leaf key.
 * Returns NULL with one line in err naming the CA file or the step at
 * fault.
 */
struct forge *forge_new(const char *dir, char *err, size_t errsz);
void forge_free(struct forge *f);

/*
 * A new reference to the leaf for (upstream, name, sni), from the cache or
 * forged and cached; the caller frees it with X509_free.  upstream (may be
 * NULL) is mirrored: subject and subjectAltNames copied; without it the
 * leaf names `name` (a host name, or an address literal: an IP SAN).  sni,
 * when not NULL or "", is one more SAN.  NULL with OpenSSL's error queue
 * set.
 */
X509 *forge_leaf_get(struct forge *f, X509 *upstream, const char *name, const char *sni);

/* The key every leaf carries (borrowed: lives as long as f). */
EVP_PKEY *forge_leaf_key(const struct forge *f);

/* Bound the cache (default and ceiling 1024 leaves; at least 1), evicting
 * the least recently used at once. */
void forge_cache_set_max(struct forge *f, size_t max);

void forge_stats_get(const struct forge *f, struct forge_stats *out);

/* Is s an IPv4 or IPv6 address literal ("[::1]" too)?  The bare form goes
 * to out when it is (out may be NULL).  Exported because tls.c needs the
 * same answer for SNI and verification that a SAN gets here. */
bool forge_name_is_ip(const char *s, char *out, size_t outsz);

#endif
