/*
 * cli_tls.c - see cli_tls.h.
 *
 * The fields are those of struct tls_info (tls.h): mode, version, cipher,
 * sni, cert_subject, cert_issuer, cert_sha256, verified (upstream leg;
 * null on the client leg), verify_error, forged (client leg) and
 * handshake_us.  The order on the line follows what a reader asks first:
 * which protocol, to which name, which certificate and whether it was
 * trusted, then the details.
 */
#include "smtptap/cli_tls.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "smtptap/cli_read.h"
#include "smtptap/jsonread.h"

static void cli_tls_sep(FILE *f, bool *first);
static const char *cli_tls_text(const struct jsonread_obj *o, const char *key, size_t *len);
static bool cli_tls_put_field(FILE *f, const struct jsonread_obj *o, const char *key, const char *before);

void
cli_tls_put_summary(FILE *f, const char *json)
{
	struct jsonread_obj o;
	const struct jsonread_value *v, *sni;
	const char *subject, *issuer, *why;
	size_t sublen = 0, isslen = 0, whylen = 0;
	bool first = true, head = false;
	int forged, verified;
	double ms;

	if (jsonread_object(&o, json, strlen(json)) != JSONREAD_OK) {
		cli_read_put_escaped_str(f, json); /* not ours to interpret */
		return;
	}

	/* "TLSv1.3 TLS_AES_256_GCM_SHA384 (starttls)" */
	head |= cli_tls_put_field(f, &o, "version", "");
	head |= cli_tls_put_field(f, &o, "cipher", head ? " " : "");
	if (cli_tls_text(&o, "mode", NULL) != NULL) {
		fputs(head ? " (" : "(", f);
		cli_tls_put_field(f, &o, "mode", "");
		fputc(')', f);
		head = true;
	}
	first = !head;

	/* The SNI: absent from the record says nothing, null says none was
	 * sent, which explains a certificate for the wrong name. */
	if ((sni = jsonread_get(&o, "sni")) != NULL) {
		if (sni->type == JSONREAD_STRING && sni->len > 0) {
			cli_tls_sep(f, &first);
			fputs("sni ", f);
			cli_read_put_escaped(f, sni->s, sni->len);
		} else if (sni->type == JSONREAD_NULL || sni->type == JSONREAD_STRING) {
			cli_tls_sep(f, &first);
			fputs("no sni", f);
		}
	}

	subject = cli_tls_text(&o, "cert_subject", &sublen);
	issuer = cli_tls_text(&o, "cert_issuer", &isslen);
	forged = jsonread_get_bool(&o, "forged");
	if (subject != NULL || issuer != NULL) {
		cli_tls_sep(f, &first);
		fputs("certificate ", f);
		if (subject != NULL)
			cli_read_put_escaped(f, subject, sublen);
		else
			fputs("(empty subject)", f);
		if (forged == 1) {
			fputs(" forged by smtptap", f);
			if (issuer != NULL) {
				fputs(" (", f);
				cli_read_put_escaped(f, issuer, isslen);
				fputc(')', f);
			}
		} else if (issuer != NULL) {
			fputs(" issued by ", f);
			cli_read_put_escaped(f, issuer, isslen);
		}
	} else if (forged == 1) {
		cli_tls_sep(f, &first);
		fputs("certificate forged by smtptap", f);
	}

	verified = jsonread_get_bool(&o, "verified");
	if (verified == 1) {
		cli_tls_sep(f, &first);
		fputs("verified", f);
	} else if (verified == 0) {
		cli_tls_sep(f, &first);
		fputs("NOT verified", f);
		if ((why = cli_tls_text(&o, "verify_error", &whylen)) != NULL) {
			fputs(": ", f);
			cli_read_put_escaped(f, why, whylen);
		}
	}

	if (cli_tls_text(&o, "cert_sha256", NULL) != NULL) {
		cli_tls_sep(f, &first);
		cli_tls_put_field(f, &o, "cert_sha256", "sha256 ");
	}

	v = jsonread_get(&o, "handshake_us");
	if (v != NULL && v->type == JSONREAD_NUMBER && isfinite(v->num) && v->num >= 0) {
		ms = v->is_int ? (double)v->i / 1000.0 : v->num / 1000.0;
		cli_tls_sep(f, &first);
		fprintf(f, "handshake %.1f ms", ms);
	}

	/* None of the fields this version knows: show what is there. */
	if (first)
		cli_read_put_escaped_str(f, json);
	jsonread_free(&o);
}

/* ", " between the line's parts. */
static void
cli_tls_sep(FILE *f, bool *first)
{
	if (!*first)
		fputs(", ", f);
	*first = false;
}

/* The string member `key`, or NULL when it is absent, not a string or
 * empty (the record writes null for "", an edited one may not). */
static const char *
cli_tls_text(const struct jsonread_obj *o, const char *key, size_t *len)
{
	const char *s;
	size_t n;

	if ((s = jsonread_get_string(o, key, &n)) == NULL || n == 0)
		return NULL;
	if (len != NULL)
		*len = n;
	return s;
}

/* `before` and the string member `key`, escaped; nothing when
 * cli_tls_text has none.  Returns whether something was printed. */
static bool
cli_tls_put_field(FILE *f, const struct jsonread_obj *o, const char *key, const char *before)
{
	const char *s;
	size_t len;

	if ((s = cli_tls_text(o, key, &len)) == NULL)
		return false;
	fputs(before, f);
	cli_read_put_escaped(f, s, len);
	return true;
}

void
cli_tls_mode_word(const char *json, char *buf, size_t bufsz)
{
	struct jsonread_obj o;
	const char *mode;
	size_t len = 0;

	if (json == NULL) {
		snprintf(buf, bufsz, "-");
		return;
	}
	if (jsonread_object(&o, json, strlen(json)) != JSONREAD_OK) {
		snprintf(buf, bufsz, "tls");
		return;
	}
	mode = jsonread_get_string(&o, "mode", &len);
	/* Only the words smtptap writes: the table is no place for the
	 * escaping a hand-edited record would need. */
	if (mode == NULL || (strcmp(mode, "starttls") != 0 && strcmp(mode, "implicit") != 0))
		mode = "tls";
	snprintf(buf, bufsz, "%s%s", mode, jsonread_get_bool(&o, "verified") == 0 ? "!" : "");
	jsonread_free(&o);
}
