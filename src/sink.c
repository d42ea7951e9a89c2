/*
 * sink.c - replies of the permissive capture server; see sink.h.
 *
 * The replies follow Postfix's wording and RFC 3463 codes where a client
 * might parse them, so an application tested against smtptap's sink sees
 * what it would see from a real MTA that accepts everything.  Queue ids are
 * "smtptap-SESSION-N" so a user can go straight from the id their app logged
 * to `smtptap show SESSION`.
 */
#include "smtptap/sink.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static size_t sink_put(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sink_reset_tx(struct sink *sk);

static size_t
sink_put(char *out, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, SINK_REPLY_MAX, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= SINK_REPLY_MAX)
		n = SINK_REPLY_MAX - 1;
	return (size_t)n;
}

static void
sink_reset_tx(struct sink *sk)
{
	sk->in_tx = false;
	sk->nrcpt = 0;
	sk->bdat_bytes = 0;
	sk->in_bdat = false;
}

void
sink_init(struct sink *sk, int64_t session_id)
{
	memset(sk, 0, sizeof(*sk));
	sk->session_id = session_id;
}

size_t
sink_reply_greeting(struct sink *sk, char *out)
{
	(void)sk;
	return sink_put(out, "220 smtptap ESMTP capture server ready\r\n");
}

size_t
sink_reply_command(struct sink *sk, const struct smtp_cmd *cmd, char *out)
{
	switch (cmd->verb) {
	case SMTP_VERB_EHLO:
	case SMTP_VERB_LHLO:
		sk->helo = true;
		sink_reset_tx(sk);
		/* SIZE 0: no fixed limit (RFC 1870 section 4). */
		return sink_put(out,
				"250-smtptap Hello %.*s\r\n"
				"250-PIPELINING\r\n"
				"250-SIZE 0\r\n"
				"250-8BITMIME\r\n"
				"250-SMTPUTF8\r\n"
				"250-CHUNKING\r\n"
				"250-BINARYMIME\r\n"
				"250-ENHANCEDSTATUSCODES\r\n"
				"250-DSN\r\n"
				"250 AUTH PLAIN LOGIN\r\n",
				(int)(cmd->arg.len > 64 ? 64 : cmd->arg.len), cmd->arg.len ? cmd->arg.p : "");
	case SMTP_VERB_HELO:
		sk->helo = true;
		sink_reset_tx(sk);
		return sink_put(out, "250 smtptap\r\n");
	case SMTP_VERB_MAIL:
		if (sk->in_tx)
			return sink_put(out, "503 5.5.1 Error: nested MAIL command\r\n");
		if (!cmd->has_path)
			return sink_put(out, "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
		sk->in_tx = true;
		return sink_put(out, "250 2.1.0 Ok\r\n");
	case SMTP_VERB_RCPT:
		if (!sk->in_tx)
			return sink_put(out, "503 5.5.1 Error: need MAIL command\r\n");
		if (!cmd->has_path)
			return sink_put(out, "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
		sk->nrcpt++;
		return sink_put(out, "250 2.1.5 Ok\r\n");
	case SMTP_VERB_DATA:
		if (sk->nrcpt == 0)
			return sink_put(out, "554 5.5.1 Error: no valid recipients\r\n");
		/* RFC 3030 2: DATA within a BDAT transaction is refused. */
		if (sk->in_bdat)
			return sink_put(out, "503 5.5.1 Error: DATA after BDAT in the same transaction\r\n");
		return sink_put(out, "354 End data with <CR><LF>.<CR><LF>\r\n");
	case SMTP_VERB_BDAT:
		/* The reply comes after the chunk: sink_reply_bdat_chunk(). */
		return sink_reply_bdat_chunk(sk, cmd, out);
	case SMTP_VERB_RSET:
		sink_reset_tx(sk);
		return sink_put(out, "250 2.0.0 Ok\r\n");
	case SMTP_VERB_NOOP:
		return sink_put(out, "250 2.0.0 Ok\r\n");
	case SMTP_VERB_VRFY:
		return sink_put(out, "252 2.0.0 Cannot VRFY user, but will accept message\r\n");
	case SMTP_VERB_EXPN:
		return sink_put(out, "502 5.5.1 EXPN not supported\r\n");
	case SMTP_VERB_HELP:
		return sink_put(out, "214 2.0.0 smtptap capture server: every message is accepted and recorded\r\n");
	case SMTP_VERB_QUIT:
		return sink_put(out, "221 2.0.0 Bye\r\n");
	case SMTP_VERB_STARTTLS:
		return sink_put(out, "454 4.7.0 TLS not available\r\n");
	case SMTP_VERB_AUTH:
		if (sk->authed)
			return sink_put(out, "503 5.5.1 Error: already authenticated\r\n");
		if (smtp_str_eq_ci(cmd->auth_mech, "PLAIN")) {
			if (cmd->auth_initial.len > 0) {
				sk->authed = true;
				return sink_put(out, "235 2.7.0 Authentication successful\r\n");
			}
			sk->auth = SINK_AUTH_PLAIN_WAIT;
			return sink_put(out, "334 \r\n");
		}
		if (smtp_str_eq_ci(cmd->auth_mech, "LOGIN")) {
			if (cmd->auth_initial.len > 0) {
				sk->auth = SINK_AUTH_LOGIN_PASS;
				return sink_put(out, "334 UGFzc3dvcmQ6\r\n");
			}
			sk->auth = SINK_AUTH_LOGIN_USER;
			return sink_put(out, "334 VXNlcm5hbWU6\r\n");
		}
		return sink_put(out, "504 5.5.4 Unrecognized authentication type\r\n");
	case SMTP_VERB_UNKNOWN:
		break;
	}
	return sink_put(out, "502 5.5.2 Error: command not recognized\r\n");
}

size_t
sink_reply_auth_line(struct sink *sk, const char *line, size_t len, char *out)
{
	enum sink_auth st = sk->auth;

	sk->auth = SINK_AUTH_NONE;
	if (len == 1 && line[0] == '*')
		return sink_put(out, "501 5.7.0 Authentication aborted\r\n");
	switch (st) {
	case SINK_AUTH_LOGIN_USER:
		sk->auth = SINK_AUTH_LOGIN_PASS;
		return sink_put(out, "334 UGFzc3dvcmQ6\r\n");
	case SINK_AUTH_PLAIN_WAIT:
	case SINK_AUTH_LOGIN_PASS:
		sk->authed = true;
		return sink_put(out, "235 2.7.0 Authentication successful\r\n");
	case SINK_AUTH_NONE:
		break;
	}
	return sink_put(out, "503 5.5.1 Error: no authentication in progress\r\n");
}

size_t
sink_reply_data_end(struct sink *sk, uint64_t size, char *out)
{
	sk->nmsg++;
	sink_reset_tx(sk);
	return sink_put(out, "250 2.0.0 Ok: %" PRIu64 " bytes queued as smtptap-%" PRId64 "-%u\r\n", size,
			sk->session_id, sk->nmsg);
}

size_t
sink_reply_bdat_chunk(struct sink *sk, const struct smtp_cmd *cmd, char *out)
{
	if (!cmd->bdat_ok)
		return sink_put(out, "501 5.5.4 Syntax: BDAT size [LAST]\r\n");
	if (sk->nrcpt == 0)
		return sink_put(out, "554 5.5.1 Error: no valid recipients\r\n");
	sk->bdat_bytes += cmd->bdat_size;
	sk->in_bdat = true;
	if (cmd->bdat_last)
		return sink_reply_data_end(sk, sk->bdat_bytes, out);
	return sink_put(out, "250 2.0.0 Ok: %" PRIu64 " octets received\r\n", cmd->bdat_size);
}
