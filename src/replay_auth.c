/*
 * replay_auth.c - see replay_auth.h.  RFC 4954 (AUTH), RFC 4616 (PLAIN),
 * RFC 2195 (CRAM-MD5), the LOGIN draft, Google's XOAUTH2.
 */
#include "smtptap/replay_auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

/* Credentials are bounded: more is refused, not allocated. */
#define AUTH_CRED_MAX 2048

static size_t auth_b64(const void *in, size_t len, char *out, size_t outsz);
static size_t auth_unb64(const char *in, unsigned char *out, size_t outsz);
static size_t auth_line(char *out, size_t outsz, const char *pfx, const void *resp, size_t len, bool encode);

bool
replay_auth_supported(const char *mech)
{
	return strcasecmp(mech, "PLAIN") == 0 || strcasecmp(mech, "LOGIN") == 0 || strcasecmp(mech, "CRAM-MD5") == 0 ||
	       strcasecmp(mech, "XOAUTH2") == 0;
}

/* Base64 of in into out; returns its length, 0 when it does not fit. */
static size_t
auth_b64(const void *in, size_t len, char *out, size_t outsz)
{
	if (len > AUTH_CRED_MAX * 3 || (len + 2) / 3 * 4 + 1 > outsz)
		return 0;
	return (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

/* Decode base64 text (NUL-terminated, no white space); returns the
 * length, or (size_t)-1 when it is not base64 or does not fit. */
static size_t
auth_unb64(const char *in, unsigned char *out, size_t outsz)
{
	size_t len = strlen(in), pad = 0;
	int n;

	if (len % 4 != 0 || len / 4 * 3 > outsz)
		return (size_t)-1;
	if (len == 0)
		return 0;
	if (in[len - 1] == '=')
		pad++;
	if (len > 1 && in[len - 2] == '=')
		pad++;
	n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
	if (n < 0 || (size_t)n < pad)
		return (size_t)-1;
	return (size_t)n - pad;
}

/* "PFX RESP\r\n" (pfx NULL: "RESP\r\n"), RESP base64 of resp when
 * encode.  Returns the length, 0 when it does not fit. */
static size_t
auth_line(char *out, size_t outsz, const char *pfx, const void *resp, size_t len, bool encode)
{
	size_t n = 0, k;

	if (pfx != NULL) {
		int w = snprintf(out, outsz, "%s%s", pfx, resp != NULL ? " " : "");

		if (w < 0 || (size_t)w >= outsz)
			return 0;
		n = (size_t)w;
	}
	if (resp != NULL) {
		if (encode) {
			if ((k = auth_b64(resp, len, out + n, outsz - n)) == 0 && len > 0)
				return 0;
		} else {
			if (n + len >= outsz)
				return 0;
			memcpy(out + n, resp, len);
			k = len;
		}
		n += k;
	}
	if (n + 3 > outsz)
		return 0;
	memcpy(out + n, "\r\n", 3);
	return n + 2;
}

size_t
replay_auth_step(const char *verb, const char *mech, bool initial, unsigned step, const char *user, const char *pass,
		 const char *challenge, char *out, size_t outsz)
{
	char cred[3 * AUTH_CRED_MAX], pfx[128];
	size_t ul = strlen(user), pl = strlen(pass), n = 0;
	const void *resp = NULL;
	size_t rlen = 0;

	if (!replay_auth_supported(mech) || ul > AUTH_CRED_MAX || pl > AUTH_CRED_MAX || outsz == 0)
		return 0;
	if (snprintf(pfx, sizeof(pfx), "%s %s", verb, mech) >= (int)sizeof(pfx))
		return 0;
	if (strcasecmp(mech, "PLAIN") == 0) {
		/* authzid (empty) NUL authcid NUL passwd */
		cred[0] = '\0';
		memcpy(cred + 1, user, ul);
		cred[1 + ul] = '\0';
		memcpy(cred + 2 + ul, pass, pl);
		n = 2 + ul + pl;
		if ((step == 0 && initial) || step == 1) {
			resp = cred;
			rlen = n;
		}
	} else if (strcasecmp(mech, "LOGIN") == 0) {
		/* "Username:", then "Password:"; an initial response is the user */
		unsigned pass_step = initial ? 1 : 2;

		if ((step == 0 && initial) || (step == 1 && !initial)) {
			resp = user;
			rlen = ul;
		} else if (step == pass_step) {
			resp = pass;
			rlen = pl;
		}
	} else if (strcasecmp(mech, "XOAUTH2") == 0) {
		int w = snprintf(cred, sizeof(cred), "user=%s\001auth=Bearer %s\001\001", user, pass);

		if (w < 0 || (size_t)w >= sizeof(cred))
			return 0;
		if ((step == 0 && initial) || (step == 1 && !initial)) {
			resp = cred;
			rlen = (size_t)w;
		}
	} else if (step == 1) {
		/* CRAM-MD5: "user hex(HMAC-MD5(pass, challenge))" */
		unsigned char ch[AUTH_CRED_MAX], mac[EVP_MAX_MD_SIZE];
		unsigned int maclen = 0, i;
		size_t chlen = challenge != NULL ? auth_unb64(challenge, ch, sizeof(ch)) : (size_t)-1;

		if (chlen == (size_t)-1 || HMAC(EVP_md5(), pass, (int)pl, ch, chlen, mac, &maclen) == NULL)
			return 0;
		memcpy(cred, user, ul);
		n = ul;
		cred[n++] = ' ';
		for (i = 0; i < maclen; i++)
			n += (size_t)snprintf(cred + n, sizeof(cred) - n, "%02x", mac[i]);
		resp = cred;
		rlen = n;
	}
	if (step == 0)
		n = auth_line(out, outsz, pfx, initial ? resp : NULL, rlen, true);
	else if (resp == NULL)
		n = auth_line(out, outsz, NULL, "", 0, false); /* nothing more to say */
	else
		n = auth_line(out, outsz, NULL, resp, rlen, true);
	OPENSSL_cleanse(cred, sizeof(cred));
	return n;
}
