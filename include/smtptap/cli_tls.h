/*
 * cli_tls.h - a leg's TLS record (the JSON object tls_info_json stored
 * for the session) as one readable line, for the header of `smtptap show`:
 *
 *   TLSv1.3 TLS_AES_256_GCM_SHA384 (starttls), sni mail.example,
 *   certificate CN=mail.example forged by smtptap (CN=smtptap local CA),
 *   sha256 B9:2A:..., handshake 2.7 ms
 *
 * (on one line).  The record is read as data from a database that may be
 * old, newer or edited by hand: a missing, null or mistyped field is left
 * out, an unknown one ignored, and a record that is not a JSON object, or
 * has none of the known fields, is printed as it is stored.  Every piece
 * of text is escaped for the terminal (the SNI is the client's choice, the
 * certificate names the upstream's).
 */
#ifndef SMTPTAP_CLI_TLS_H
#define SMTPTAP_CLI_TLS_H

#include <stdio.h>

/* Print the summary of the record `json` (NUL-terminated) to f, without
 * a newline. */
void cli_tls_put_summary(FILE *f, const char *json);

/*
 * A leg's TLS in a word, for the `sessions` table: "-" for a plaintext leg
 * (json NULL), its mode ("starttls", "implicit"; "tls" when the record
 * says none), with "!" appended when the record says the upstream was not
 * verified.  Written to buf (at least 16 bytes).
 */
void cli_tls_mode_word(const char *json, char *buf, size_t bufsz);

#endif
