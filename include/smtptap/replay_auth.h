/*
 * replay_auth.h - AUTH exchanges made again from a user name and a
 * password, for `smtptap replay --auth USER:PASS` (a recording keeps
 * credentials redacted, so they cannot be sent as recorded).
 *
 * The exchange keeps the recorded shape: the same mechanism, with or
 * without an initial response as the client sent it, one line per
 * recorded response line.  CRAM-MD5 answers the challenge the server
 * sends now.  Pure: bytes in, bytes out, no I/O.
 */
#ifndef SMTPTAP_REPLAY_AUTH_H
#define SMTPTAP_REPLAY_AUTH_H

#include <stdbool.h>
#include <stddef.h>

/* PLAIN, LOGIN, CRAM-MD5, XOAUTH2 (case-insensitive). */
bool replay_auth_supported(const char *mech);

/*
 * Step `step` of the exchange into out (CRLF-terminated, NUL-terminated):
 * step 0 is the AUTH command itself ("AUTH PLAIN <initial>" when
 * `initial`, else "AUTH PLAIN"), steps 1, 2, ... the lines answering the
 * server's 334 challenges; `challenge` is the text of the latest 334
 * (base64, as sent), used by CRAM-MD5.  verb is the AUTH verb as recorded
 * ("AUTH", "auth").  A step the mechanism has no line for (a server asking
 * more than it should) is an empty line.  Returns the length, or 0 when
 * the mechanism is not supported, the challenge is not valid base64 or out
 * (outsz) is too small.
 */
size_t replay_auth_step(const char *verb, const char *mech, bool initial, unsigned step, const char *user,
			const char *pass, const char *challenge, char *out, size_t outsz);

#endif
