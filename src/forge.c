/*
 * forge.c - see forge.h.
 *
 * Forging follows SSLsplit's ssl_x509_forge in spirit: the leaf copies the
 * names a client checks (subject and subjectAltNames) from the upstream's
 * certificate, is issued by the local CA, and carries one key shared by
 * every leaf, so a connection costs one signature at most and, once the
 * cache is warm, none.  What the leaf does not copy is anything that could
 * make it more than a server certificate (CA:FALSE, serverAuth only) or
 * weaker than ours (always SHA-256, whatever the original used).
 *
 * Split from tls.c, which keeps everything about SSL objects, so each file
 * holds one concern and stays readable (the house bound is ~1,000 lines).
 *
 * Every X509 handed out is a reference of its own: the cache may evict a
 * leaf while an SSL still serves it, and the SSL's reference keeps it
 * alive.
 */
#include "smtptap/forge.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "smtptap/ca.h"
#include "smtptap/tls.h"
#include "smtptap/util.h"

/* Forged leaves kept; a leaf is a few hundred bytes of DER plus
 * OpenSSL's parsed form, so the default costs a few MiB at most. */
#define FORGE_CACHE_MAX 1024
#define FORGE_CACHE_BUCKETS 2048 /* power of two, >= FORGE_CACHE_MAX */

/* Validity: a leaf is good from a day ago (clients with a slow clock)
 * to just under a year ahead (browsers' and mail clients' upper bound
 * for leaves is 398 days). */
#define FORGE_LEAF_BACKDATE_DAYS 1
#define FORGE_LEAF_DAYS 364

#define FORGE_NAME_MAX 256 /* a DNS name is at most 253 characters */
#define FORGE_CN_MAX 64	   /* X.520 ub-common-name */

/* One cached leaf, in a hash bucket chain and in the LRU list. */
struct forge_leaf {
	unsigned char key[32]; /* SHA-256 of (upstream fingerprint, name, SNI) */
	X509 *cert;
	struct forge_leaf *hnext;
	struct forge_leaf *prev, *next; /* most recently used first */
};

struct forge_cache {
	struct forge_leaf *bucket[FORGE_CACHE_BUCKETS];
	struct forge_leaf *head, *tail;
	size_t n, max;
};

struct forge {
	X509 *ca_cert;
	EVP_PKEY *ca_key;
	EVP_PKEY *leaf_key; /* shared by every forged leaf */
	struct forge_cache cache;
	struct forge_stats stats; /* cached is read from cache.n instead */
};

static int forge_san_add(GENERAL_NAMES *gens, const char *name);
static X509 *forge_leaf_new(struct forge *f, X509 *upstream, const char *name, const char *sni);
static void forge_cache_key(X509 *upstream, const char *name, const char *sni, unsigned char key[32]);
static size_t forge_cache_slot(const unsigned char key[32]);
static struct forge_leaf *forge_cache_find(struct forge_cache *c, const unsigned char key[32]);
static void forge_cache_put(struct forge_cache *c, const unsigned char key[32], X509 *cert);
static void forge_cache_unlink(struct forge_cache *c, struct forge_leaf *l);
static void forge_cache_clear(struct forge_cache *c);

/* ------------------------------------------------------------------------
 * The forger's lifetime.
 */

struct forge *
forge_new(const char *dir, char *err, size_t errsz)
{
	struct forge *f;
	char ebuf[256];

	if ((f = calloc(1, sizeof(*f))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return NULL;
	}
	f->cache.max = FORGE_CACHE_MAX;
	if (ca_init(dir, err, errsz) < 0 || ca_load(dir, &f->ca_cert, &f->ca_key, err, errsz) < 0)
		goto fail;
	/* One key for every leaf: made once here, so no connection ever
	 * waits for a key generation. */
	if ((f->leaf_key = EVP_EC_gen("P-256")) == NULL) {
		util_errf(err, errsz, "OpenSSL: cannot make the leaf key: %s", tls_error_text(ebuf, sizeof(ebuf)));
		goto fail;
	}
	return f;
fail:
	forge_free(f);
	return NULL;
}

/* Safe while SSLs still serve leaves: each SSL holds references of its
 * own to its leaf and the key. */
void
forge_free(struct forge *f)
{
	if (f == NULL)
		return;
	forge_cache_clear(&f->cache);
	X509_free(f->ca_cert);
	EVP_PKEY_free(f->ca_key);
	EVP_PKEY_free(f->leaf_key);
	free(f);
}

EVP_PKEY *
forge_leaf_key(const struct forge *f)
{
	return f->leaf_key;
}

void
forge_stats_get(const struct forge *f, struct forge_stats *out)
{
	*out = f->stats;
	out->cached = f->cache.n;
}

void
forge_cache_set_max(struct forge *f, size_t max)
{
	f->cache.max = max == 0 ? 1 : max > FORGE_CACHE_MAX ? FORGE_CACHE_MAX : max;
	while (f->cache.n > f->cache.max) {
		struct forge_leaf *l = f->cache.tail;

		forge_cache_unlink(&f->cache, l);
		X509_free(l->cert);
		free(l);
		f->stats.evicted++;
	}
}

/* ------------------------------------------------------------------------
 * Forging and the leaf cache.
 */

/* forge.h.  inet_pton decides (strict: no "127.1" shorthand), the same
 * test for a SAN here and for SNI and verification in tls.c. */
bool
forge_name_is_ip(const char *s, char *out, size_t outsz)
{
	unsigned char buf[sizeof(struct in6_addr)];
	char tmp[INET6_ADDRSTRLEN + 2];
	size_t len;

	if (s == NULL)
		return false;
	len = strlen(s);
	if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
		if (len - 2 >= sizeof(tmp))
			return false;
		memcpy(tmp, s + 1, len - 2);
		tmp[len - 2] = '\0';
	} else {
		if (len >= sizeof(tmp))
			return false;
		memcpy(tmp, s, len + 1);
	}
	if (inet_pton(AF_INET, tmp, buf) != 1 && inet_pton(AF_INET6, tmp, buf) != 1)
		return false;
	if (out != NULL)
		snprintf(out, outsz, "%s", tmp);
	return true;
}

/* forge.h.  A hit costs a hash and a list move; a miss one signature. */
X509 *
forge_leaf_get(struct forge *f, X509 *upstream, const char *name, const char *sni)
{
	unsigned char key[32];
	struct forge_leaf *l;
	X509 *x;

	forge_cache_key(upstream, name, sni, key);
	if ((l = forge_cache_find(&f->cache, key)) != NULL) {
		f->stats.cache_hits++;
		X509_up_ref(l->cert);
		return l->cert;
	}
	if ((x = forge_leaf_new(f, upstream, name, sni)) == NULL)
		return NULL;
	f->stats.forged++;
	forge_cache_put(&f->cache, key, x);
	if (f->cache.n > f->cache.max)
		forge_cache_set_max(f, f->cache.max);
	return x;
}

/*
 * The cache key: SHA-256 over the upstream certificate's own SHA-256 (or
 * "-" without one), the name and the SNI added, NUL-separated so no two
 * triples collide.  A forged leaf depends on nothing else.
 */
static void
forge_cache_key(X509 *upstream, const char *name, const char *sni, unsigned char key[32])
{
	unsigned char fp[EVP_MAX_MD_SIZE];
	unsigned int fplen = 0;
	EVP_MD_CTX *md;

	memset(key, 0, 32);
	if (upstream == NULL || X509_digest(upstream, EVP_sha256(), fp, &fplen) != 1) {
		fp[0] = '-';
		fplen = 1;
	}
	if ((md = EVP_MD_CTX_new()) == NULL)
		return;
	if (EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1) {
		EVP_DigestUpdate(md, fp, fplen);
		EVP_DigestUpdate(md, "", 1);
		EVP_DigestUpdate(md, name != NULL ? name : "", name != NULL ? strlen(name) : 0);
		EVP_DigestUpdate(md, "", 1);
		EVP_DigestUpdate(md, sni != NULL ? sni : "", sni != NULL ? strlen(sni) : 0);
		EVP_DigestFinal_ex(md, key, NULL);
	}
	EVP_MD_CTX_free(md);
}

static size_t
forge_cache_slot(const unsigned char key[32])
{
	return ((size_t)key[0] | (size_t)key[1] << 8 | (size_t)key[2] << 16) & (FORGE_CACHE_BUCKETS - 1);
}

/* The leaf for key, moved to the front of the LRU list, or NULL. */
static struct forge_leaf *
forge_cache_find(struct forge_cache *c, const unsigned char key[32])
{
	struct forge_leaf *l;

	for (l = c->bucket[forge_cache_slot(key)]; l != NULL; l = l->hnext) {
		if (memcmp(l->key, key, 32) != 0)
			continue;
		if (l != c->head) {
			l->prev->next = l->next;
			if (l->next != NULL)
				l->next->prev = l->prev;
			else
				c->tail = l->prev;
			l->prev = NULL;
			l->next = c->head;
			c->head->prev = l;
			c->head = l;
		}
		return l;
	}
	return NULL;
}

/* Keep a reference to cert under key.  Out of memory: not cached. */
static void
forge_cache_put(struct forge_cache *c, const unsigned char key[32], X509 *cert)
{
	struct forge_leaf *l;
	size_t slot = forge_cache_slot(key);

	if ((l = calloc(1, sizeof(*l))) == NULL)
		return;
	memcpy(l->key, key, 32);
	X509_up_ref(cert);
	l->cert = cert;
	l->hnext = c->bucket[slot];
	c->bucket[slot] = l;
	l->next = c->head;
	if (c->head != NULL)
		c->head->prev = l;
	c->head = l;
	if (c->tail == NULL)
		c->tail = l;
	c->n++;
}

/* Take l out of its bucket and the LRU list (the caller frees it). */
static void
forge_cache_unlink(struct forge_cache *c, struct forge_leaf *l)
{
	struct forge_leaf **pp;

	for (pp = &c->bucket[forge_cache_slot(l->key)]; *pp != NULL; pp = &(*pp)->hnext) {
		if (*pp == l) {
			*pp = l->hnext;
			break;
		}
	}
	if (l->prev != NULL)
		l->prev->next = l->next;
	else
		c->head = l->next;
	if (l->next != NULL)
		l->next->prev = l->prev;
	else
		c->tail = l->prev;
	c->n--;
}

static void
forge_cache_clear(struct forge_cache *c)
{
	struct forge_leaf *l, *next;

	for (l = c->head; l != NULL; l = next) {
		next = l->next;
		X509_free(l->cert);
		free(l);
	}
	memset(c->bucket, 0, sizeof(c->bucket));
	c->head = c->tail = NULL;
	c->n = 0;
}

/* One more SAN: an IP address for an address literal, else a DNS name.
 * 1, or 0 (gens unchanged) with OpenSSL's error queue set. */
static int
forge_san_add(GENERAL_NAMES *gens, const char *name)
{
	GENERAL_NAME *gen;
	ASN1_OCTET_STRING *ip;
	ASN1_IA5STRING *dns;
	char bare[INET6_ADDRSTRLEN];

	if ((gen = GENERAL_NAME_new()) == NULL)
		return 0;
	if (forge_name_is_ip(name, bare, sizeof(bare))) {
		if ((ip = a2i_IPADDRESS(bare)) == NULL)
			goto fail;
		GENERAL_NAME_set0_value(gen, GEN_IPADD, ip);
	} else {
		if ((dns = ASN1_IA5STRING_new()) == NULL)
			goto fail;
		if (ASN1_STRING_set(dns, name, (int)strlen(name)) != 1) {
			ASN1_IA5STRING_free(dns);
			goto fail;
		}
		GENERAL_NAME_set0_value(gen, GEN_DNS, dns);
	}
	if (sk_GENERAL_NAME_push(gens, gen) <= 0)
		goto fail;
	return 1;
fail:
	GENERAL_NAME_free(gen);
	return 0;
}

/*
 * Forge a leaf signed by the CA with the shared key.  With an upstream
 * certificate its subject and subjectAltNames are copied (an upstream
 * without SANs gets its CNs as DNS names: clients ignore the CN when SANs
 * exist and many ignore it always); without one, the leaf names `name`
 * (CN and SAN).  sni, when given, is added as one more SAN.  Returns a
 * new certificate, or NULL with OpenSSL's error queue set.
 */
static X509 *
forge_leaf_new(struct forge *f, X509 *upstream, const char *name, const char *sni)
{
	X509 *x;
	X509_NAME *subj = NULL;
	GENERAL_NAMES *gens = NULL;
	const X509_NAME *usubj;
	X509_NAME_ENTRY *ne;
	ASN1_STRING *cn;
	unsigned char *utf8;
	int i, len;

	if ((x = X509_new()) == NULL)
		return NULL;
	if (X509_set_version(x, X509_VERSION_3) != 1 || !ca_cert_set_serial(x))
		goto fail;
	if (X509_gmtime_adj(X509_getm_notBefore(x), -(long)FORGE_LEAF_BACKDATE_DAYS * 86400) == NULL ||
	    X509_time_adj_ex(X509_getm_notAfter(x), FORGE_LEAF_DAYS, 0, NULL) == NULL)
		goto fail;
	if (X509_set_issuer_name(x, X509_get_subject_name(f->ca_cert)) != 1 || X509_set_pubkey(x, f->leaf_key) != 1)
		goto fail;

	if (upstream != NULL) {
		usubj = X509_get_subject_name(upstream);
		if (X509_set_subject_name(x, usubj) != 1)
			goto fail;
		gens = X509_get_ext_d2i(upstream, NID_subject_alt_name, NULL, NULL);
		if (gens == NULL) {
			if ((gens = sk_GENERAL_NAME_new_null()) == NULL)
				goto fail;
			for (i = -1; (i = X509_NAME_get_index_by_NID(usubj, NID_commonName, i)) >= 0;) {
				ne = X509_NAME_get_entry(usubj, i);
				cn = X509_NAME_ENTRY_get_data(ne);
				if ((len = ASN1_STRING_to_UTF8(&utf8, cn)) < 0) {
					ERR_clear_error();
					continue;
				}
				if (len > 0 && len < FORGE_NAME_MAX && memchr(utf8, '\0', (size_t)len) == NULL &&
				    !forge_san_add(gens, (const char *)utf8)) {
					OPENSSL_free(utf8);
					goto fail;
				}
				OPENSSL_free(utf8);
			}
		}
	} else {
		if ((subj = X509_NAME_new()) == NULL)
			goto fail;
		/* CN is bounded by X.520; a longer name lives in the SAN only. */
		if (name != NULL && name[0] != '\0' && strlen(name) <= FORGE_CN_MAX) {
			if (X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_UTF8,
						       (const unsigned char *)name, -1, -1, 0) != 1)
				goto fail;
		} else if (X509_NAME_add_entry_by_NID(subj, NID_organizationName, MBSTRING_UTF8,
						      (const unsigned char *)"smtptap", -1, -1, 0) != 1)
			goto fail;
		if (X509_set_subject_name(x, subj) != 1)
			goto fail;
		if ((gens = sk_GENERAL_NAME_new_null()) == NULL)
			goto fail;
	}
	if (sk_GENERAL_NAME_num(gens) == 0 && name != NULL && name[0] != '\0' && !forge_san_add(gens, name))
		goto fail;
	if (sni != NULL && sni[0] != '\0' && !forge_san_add(gens, sni))
		goto fail;
	if (sk_GENERAL_NAME_num(gens) > 0 && X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, 0) != 1)
		goto fail;

	if (!ca_cert_add_ext(f->ca_cert, x, NID_basic_constraints, "critical,CA:FALSE") ||
	    !ca_cert_add_ext(f->ca_cert, x, NID_key_usage, "critical,digitalSignature") ||
	    !ca_cert_add_ext(f->ca_cert, x, NID_ext_key_usage, "serverAuth") ||
	    !ca_cert_add_ext(f->ca_cert, x, NID_subject_key_identifier, "hash") ||
	    !ca_cert_add_ext(f->ca_cert, x, NID_authority_key_identifier, "keyid:always"))
		goto fail;
	if (X509_sign(x, f->ca_key, EVP_sha256()) <= 0)
		goto fail;
	GENERAL_NAMES_free(gens);
	X509_NAME_free(subj);
	return x;
fail:
	GENERAL_NAMES_free(gens);
	X509_NAME_free(subj);
	X509_free(x);
	return NULL;
}
