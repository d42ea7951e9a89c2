/*
 * session_tls.c - TLS on either leg of a session.
 *
 * The order of things, for each way a session can use TLS:
 *
 *  - Implicit upstream (--upstream-tls implicit): the handshake starts as
 *    soon as TCP is up; the greeting follows it.
 *  - The upstream prelude (--upstream-tls starttls, or auto when the client
 *    leg will not ask for STARTTLS itself: --client-tls off or implicit):
 *    the upstream's greeting is held, smtptap sends its own EHLO and
 *    STARTTLS (recorded as injected; their replies as not passed on),
 *    upgrades, then passes the greeting on.  The client's own EHLO is the
 *    first command the upstream sees over TLS.
 *  - Client STARTTLS (--client-tls auto or starttls): smtptap answers it
 *    itself.  When the upstream leg is still plaintext and offers STARTTLS
 *    (and --upstream-tls allows), the client's STARTTLS goes to the
 *    upstream first; on its 220 the upstream leg is upgraded and verified,
 *    and only then does the client get that 220 and its leg a certificate
 *    forged to mirror the upstream's.  Otherwise smtptap answers 220 in
 *    the FIFO's order.  Either way, client bytes pipelined after STARTTLS
 *    are recorded as dropped and never interpreted (RFC 3207 4.2).
 *  - Implicit client (--client-tls implicit): the client's handshake waits
 *    until the upstream's certificate is known (after the implicit
 *    handshake or the prelude), so the forged leaf can mirror it; output
 *    queued meanwhile (the greeting) goes out after the handshake.
 *
 * A failed upstream verification (on by default) gives the client
 * "421 4.7.0" with the reason; --upstream-verify off relays and records it.
 */
#include "smtptap/session_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <openssl/err.h>

#include "smtptap/log.h"
#include "smtptap/proxy.h"
#include "smtptap/tls.h"
#include "smtptap/util.h"

static const char local_starttls_220[] = "220 2.0.0 smtptap: ready to start TLS\r\n";
static const char local_starttls_off[] =
	"454 4.7.0 TLS not available: smtptap runs with --client-tls off for this listener\r\n";
static const char local_starttls_again[] = "503 5.5.1 smtptap: TLS already active\r\n";

static bool session_tls_needs_prelude(struct session *s);
static void session_tls_prelude_ehlo(struct session *s);
static void session_tls_prelude_plain(struct session *s, const char *why);
static void session_tls_upstream_ready(struct session *s);
static void session_tls_hold(struct session *s, const struct pending *p, struct evbuffer *reply, unsigned flags);
static void session_tls_record(struct session *s, struct leg *leg, bool client_side);
static const char *session_tls_client_name(struct session *s, char *buf, size_t bufsz);

/* At session start, once the upstream connection is under way. */
void
session_tls_start(struct session *s)
{
	if (s->client_tls != PROXY_TLS_IMPLICIT || !s->client.open)
		return;
	s->client_tls_implicit = true;
	s->ctls = CTLS_WAIT_UPSTREAM;
	s->client.hold_output = true;
	/* With no upstream certificate to learn, start now. */
	if (s->sink_mode || s->upstream_tls == PROXY_TLS_OFF)
		session_tls_start_client(s);
}

void
session_tls_upstream_connected(struct session *s)
{
	s->upstream_connected = true;
	session_update_timeouts(s);
	if (s->upstream_tls == PROXY_TLS_IMPLICIT) {
		s->upstream_tls_implicit = true;
		session_tls_start_upstream(s);
	}
	/* else the greeting decides (session_tls_reply) */
}

/* The upstream leg is plaintext and smtptap itself must upgrade it before
 * the client's first command. */
static bool
session_tls_needs_prelude(struct session *s)
{
	if (s->sink_mode || s->upstream_tls_on || s->upstream.tls)
		return false;
	/* A replayed client's own STARTTLS upgrades the upstream. */
	if (s->upstream_tls == PROXY_TLS_STARTTLS)
		return !s->replay_client_starttls;
	return s->upstream_tls == PROXY_TLS_AUTO &&
	       (s->client_tls == PROXY_TLS_OFF || s->client_tls == PROXY_TLS_IMPLICIT);
}

/* An EHLO name for smtptap's own EHLO: the address literal of our end of
 * the upstream connection (RFC 5321 4.1.3), which needs no configuration. */
static void
session_tls_prelude_ehlo(struct session *s)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[UTIL_ADDR_MAX], cmd[UTIL_ADDR_MAX + 16], *colon;
	int n;

	snprintf(addr, sizeof(addr), "[127.0.0.1]");
	if (getsockname(s->upstream.fd, (struct sockaddr *)&ss, &sl) == 0) {
		char a[UTIL_ADDR_MAX];

		util_format_addr((struct sockaddr *)&ss, a, sizeof(a));
		colon = strrchr(a, ':');
		if (colon != NULL && a[0] == '[') /* "[::1]:25" -> "[IPv6:::1]" */
			snprintf(addr, sizeof(addr), "[IPv6:%.*s]", (int)(colon - a - 2), a + 1);
		else if (colon != NULL)
			snprintf(addr, sizeof(addr), "[%.*s]", (int)(colon - a), a);
	}
	n = snprintf(cmd, sizeof(cmd), "EHLO %s\r\n", addr);
	/* Prompted by the greeting just recorded; the EHLO is what its reply
	 * will answer. */
	session_inject_upstream_cause(s, cmd, (size_t)n, s->seq);
	session_pend_push(s, PEND_PRELUDE_EHLO, SMTP_VERB_EHLO);
}

/* The prelude found no TLS: fail when it was required, else go on in
 * plaintext and say so. */
static void
session_tls_prelude_plain(struct session *s, const char *why)
{
	char reply[400];

	if (s->upstream_tls == PROXY_TLS_STARTTLS) {
		snprintf(reply, sizeof(reply), "421 4.7.0 smtptap: %s (--upstream-tls starttls requires TLS)\r\n", why);
		session_fail_client(s, reply, "upstream-tls-error", why);
		return;
	}
	session_note(s, STORE_KIND_TLS, "%s: the upstream leg stays plaintext (--upstream-tls auto)", why);
	s->prelude = false;
	session_greeting_release(s);
	if (s->ctls == CTLS_WAIT_UPSTREAM)
		session_tls_start_client(s);
}

/* Keep a reply for later (the greeting during the prelude, the upstream's
 * 220 until its handshake is done): recorded now, passed on later. */
static void
session_tls_hold(struct session *s, const struct pending *p, struct evbuffer *reply, unsigned flags)
{
	session_record_link(s, p->cmd_seq, 0, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, flags, 0,
			    evbuffer_pullup(reply, -1), evbuffer_get_length(reply), NULL);
	if (s->held_greeting == NULL)
		s->held_greeting = evbuffer_new();
	if (s->held_greeting != NULL)
		evbuffer_add_buffer(s->held_greeting, reply);
	else
		evbuffer_drain(reply, evbuffer_get_length(reply));
}

/*
 * A reply matched with a pending entry: handle what belongs to TLS.
 * Returns true when the reply was consumed here (recorded, and passed on
 * or held), false when the ordinary path should handle it.
 */
bool
session_tls_reply(struct session *s, const struct pending *p, struct evbuffer *reply, int code)
{
	size_t len = evbuffer_get_length(reply);
	char why[300], *text;

	switch (p->kind) {
	case PEND_GREETING:
		if (code != 220 || !session_tls_needs_prelude(s))
			return false;
		s->prelude = true;
		session_tls_hold(s, p, reply, 0);
		session_tls_prelude_ehlo(s);
		return true;
	case PEND_PRELUDE_EHLO: {
		char *out = malloc(len + 16);
		size_t outlen;
		bool had = false;
		int64_t seq;

		seq = session_record_link(s, p->cmd_seq, 0, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_DROPPED, 0,
					  evbuffer_pullup(reply, -1), len, NULL);
		if (out != NULL)
			smtp_ehlo_edit((const char *)evbuffer_pullup(reply, -1), len, "STARTTLS", true, out, len + 16,
				       &outlen, &had);
		free(out);
		evbuffer_drain(reply, len);
		if (code / 100 == 2 && had) {
			session_inject_upstream_cause(s, "STARTTLS\r\n", 10, seq);
			session_pend_push(s, PEND_PRELUDE_STARTTLS, SMTP_VERB_STARTTLS);
		} else {
			snprintf(why, sizeof(why), "upstream %s does not offer STARTTLS", s->route->upstream);
			session_tls_prelude_plain(s, why);
		}
		return true;
	}
	case PEND_PRELUDE_STARTTLS:
		session_record_link(s, p->cmd_seq, 0, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_DROPPED, 0,
				    evbuffer_pullup(reply, -1), len, NULL);
		if (code == 220) {
			evbuffer_drain(reply, len);
			session_tls_start_upstream(s);
		} else {
			text = session_reply_text((const char *)evbuffer_pullup(reply, -1), len);
			snprintf(why, sizeof(why), "upstream %s refused STARTTLS: %s", s->route->upstream,
				 text ? text : "");
			free(text);
			evbuffer_drain(reply, len);
			session_tls_prelude_plain(s, why);
		}
		return true;
	case PEND_STARTTLS:
		if (code == 220) {
			session_tls_hold(s, p, reply, 0);
			session_tls_start_upstream(s);
			return true;
		}
		/* Refused: the client hears it as it would without smtptap. */
		session_note_cause(s, p->cmd_seq, STORE_KIND_TLS,
				   "upstream refused STARTTLS (%d): both legs stay plaintext", code);
		session_enter_state(s, ST_CMD);
		return false;
	default:
		return false;
	}
}

/* The client sent STARTTLS (the line is at the head of in). */
void
session_tls_client_starttls(struct session *s, struct evbuffer *in, const char *line, size_t len)
{
	bool offer = (s->client_tls == PROXY_TLS_AUTO || s->client_tls == PROXY_TLS_STARTTLS) &&
		     s->ctx->tls != NULL;
	/* The upstream is upgraded first, with the client's own command. */
	bool upstream_first = offer && s->ctls == CTLS_NONE && !s->sink_mode && session_upstream_usable(s) &&
			      !s->upstream.tls && s->upstream_offers_starttls &&
			      (s->upstream_tls == PROXY_TLS_AUTO || s->upstream_tls == PROXY_TLS_STARTTLS);
	struct mock_reply mr;
	int64_t cmd;

	cmd = session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, upstream_first ? 0 : STORE_F_DROPPED, 0, line,
			     len, NULL);
	session_rules_starttls_recorded(s);
	if (s->mock != NULL && !mock_starttls(s->mock, &mr)) {
		/* A mock answers what the recording does not expect itself. */
		struct pending *p;

		evbuffer_drain(in, len);
		session_note_cause(s, cmd, STORE_KIND_ACTION, "%s", mr.note);
		p = session_pend_push(s, PEND_LOCAL, SMTP_VERB_UNKNOWN);
		p->owned_text = strndup(mr.p, mr.len);
		p->text = p->owned_text != NULL ? p->owned_text : "503 5.5.1 smtptap mock: STARTTLS was not expected\r\n";
		p->cmd_seq = cmd;
		session_pend_flush_local(s);
		return;
	}
	if (!offer || s->ctls != CTLS_NONE) {
		evbuffer_drain(in, len);
		session_local_push_answer(s, s->ctls != CTLS_NONE ? local_starttls_again : local_starttls_off, false, cmd);
		return;
	}
	session_enter_state(s, ST_TLS);
	if (upstream_first) {
		session_pend_push(s, PEND_STARTTLS, SMTP_VERB_STARTTLS)->cmd_seq = cmd;
		leg_write_from(&s->upstream, in, len);
	} else {
		evbuffer_drain(in, len);
		if (!s->sink_mode && s->upstream_tls == PROXY_TLS_STARTTLS && !s->upstream_tls_on) {
			session_fail_client(s, "421 4.7.0 smtptap: the upstream does not offer STARTTLS\r\n",
					    "upstream-tls-error",
					    "upstream does not offer STARTTLS (--upstream-tls starttls requires TLS)");
			return;
		}
		if (!s->sink_mode && !s->upstream.tls)
			session_note_cause(s, cmd, STORE_KIND_TLS,
					   "client STARTTLS answered by smtptap; the upstream leg stays "
					   "plaintext (%s)",
					   s->upstream_tls == PROXY_TLS_OFF ? "--upstream-tls off" :
									      "the upstream does not offer STARTTLS");
		session_local_push_answer(s, local_starttls_220, true, cmd);
	}
	session_client_discard(s, "client plaintext pipelined after STARTTLS is never interpreted (RFC 3207)");
}

/* Once the local 220 is written: upgrade the client leg. */
void
session_tls_client_drained(struct session *s)
{
	if (s->ctls != CTLS_AFTER_FLUSH || leg_output_len(&s->client) > 0 || !s->client.open)
		return;
	session_tls_start_client(s);
}

/* The name the forged leaf carries when there is no upstream certificate:
 * the upstream's host name, or in sink mode the listener's address. */
static const char *
session_tls_client_name(struct session *s, char *buf, size_t bufsz)
{
	char port[8], err[128];

	if (!s->sink_mode) {
		const char *sni = s->ctx->cfg->upstream_sni;

		return sni != NULL ? sni : s->route->upstream_host;
	}
	if (util_split_hostport(s->listener, buf, bufsz, port, sizeof(port), err, sizeof(err)) < 0 || buf[0] == '\0')
		snprintf(buf, bufsz, "localhost");
	return buf;
}

void
session_tls_start_client(struct session *s)
{
	char err[256], name[256];
	SSL *ssl;

	if (!s->client.open || s->ctls == CTLS_HANDSHAKE || s->ctls == CTLS_ON)
		return;
	if (s->inproc) {
		/* The client is in this process (replay): only the upstream
		 * leg speaks TLS.  The client side goes on as after a
		 * handshake: what it said before is forgotten. */
		session_note(s, STORE_KIND_TLS, "client leg in-process: no TLS on it, the conversation goes on in plaintext");
		s->ctls = CTLS_ON;
		session_env_reset(s);
		if (s->state == ST_TLS)
			session_enter_state(s, ST_CMD);
		session_client_process(s);
		return;
	}
	if (session_rules_tls(s, RULES_LEG_CLIENT))
		return; /* delayed, stalled or failed by a rule */
	if (s->ctx->tls == NULL) {
		session_fail_client(s, NULL, "client-tls-error", "TLS is not set up for this listener");
		return;
	}
	ssl = tls_server_ssl_new(s->ctx->tls, s->upstream_cert, session_tls_client_name(s, name, sizeof(name)), err,
				 sizeof(err));
	if (!s->client_tls_implicit)
		session_client_discard(s, "client plaintext pipelined after STARTTLS is never interpreted (RFC 3207)");
	if (ssl == NULL || leg_start_tls(&s->client, ssl, true) < 0) {
		char why[400];

		snprintf(why, sizeof(why), "cannot start TLS with the client: %s", ssl ? leg_error(&s->client) : err);
		s->ctls = CTLS_NONE;
		session_set_outcome(s, "client-tls-error", "%s", why);
		session_note(s, STORE_KIND_TLS, "%s", why);
		session_close_legs(s);
		return;
	}
	s->ctls = CTLS_HANDSHAKE;
}

void
session_tls_start_upstream(struct session *s)
{
	const char *sni = s->ctx->cfg->upstream_sni ? s->ctx->cfg->upstream_sni : s->route->upstream_host;
	char err[256], why[400], reply[500];
	SSL *ssl = NULL;
	size_t left;

	if (!session_upstream_usable(s) || session_rules_tls(s, RULES_LEG_UPSTREAM))
		return; /* delayed, stalled or failed by a rule */
	if (s->ctx->tls != NULL)
		ssl = tls_client_ssl_new(s->ctx->tls, sni, sni, err, sizeof(err)); /* no SNI for an address */
	else
		snprintf(err, sizeof(err), "TLS is not set up");
	/* Bytes after the 220 are not the server's TLS: never read as such
	 * (the upstream-side twin of the STARTTLS injection). */
	left = evbuffer_get_length(leg_input(&s->upstream));
	if (left > 0) {
		int64_t dropped = session_record(s, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_DROPPED, 0,
						 evbuffer_pullup(leg_input(&s->upstream), -1), left, NULL);

		session_note_cause(s, dropped, STORE_KIND_ACTION,
				   "%zu bytes the upstream sent after its 220 to STARTTLS discarded", left);
	}
	if (ssl == NULL || leg_start_tls(&s->upstream, ssl, false) < 0) {
		snprintf(why, sizeof(why), "cannot start TLS with upstream %s: %s", s->route->upstream,
			 ssl ? leg_error(&s->upstream) : err);
		snprintf(reply, sizeof(reply), "421 4.7.0 smtptap: %.400s\r\n", why);
		session_fail_client(s, reply, "upstream-tls-error", why);
	}
}

/* Both implicit and STARTTLS upgrades of the upstream end here. */
static void
session_tls_upstream_ready(struct session *s)
{
	s->upstream_tls_on = true;
	s->upstream_offers_starttls = false;
	session_update_timeouts(s);
	if (s->prelude) {
		s->prelude = false;
		session_greeting_release(s);
	} else if (s->held_greeting != NULL && evbuffer_get_length(s->held_greeting) > 0) {
		/* The client's STARTTLS: now it gets the upstream's 220. */
		leg_write_from(&s->client, s->held_greeting, (size_t)-1);
		s->ctls = CTLS_AFTER_FLUSH;
	}
	if (s->ctls == CTLS_WAIT_UPSTREAM)
		session_tls_start_client(s);
}

void
session_tls_leg_done(struct session *s, struct leg *leg)
{
	bool client_side = leg == &s->client;
	SSL *ssl = leg_ssl(leg);

	tls_stats_count_handshake(s->ctx->tls, client_side);
	if (!client_side) {
		char why[256], reply[400];
		bool verified = tls_verify_result(ssl, why, sizeof(why)) == 1;

		X509_free(s->upstream_cert);
		s->upstream_cert = tls_peer_cert(ssl);
		session_tls_record(s, leg, false);
		if (!verified && tls_upstream_verify(s->ctx->tls)) {
			char detail[400];

			snprintf(detail, sizeof(detail), "upstream %s certificate not trusted: %s", s->route->upstream, why);
			snprintf(reply, sizeof(reply),
				 "421 4.7.0 smtptap: upstream certificate not trusted: %.200s (--upstream-verify off "
				 "relays anyway)\r\n",
				 why);
			session_fail_client(s, reply, "upstream-tls-error", detail);
			return;
		}
		session_tls_upstream_ready(s);
		session_upstream_lines(s);
		return;
	}
	session_tls_record(s, leg, true);
	s->ctls = CTLS_ON;
	/* RFC 3207 4.2: what was said before TLS is forgotten; the client
	 * starts again with EHLO. */
	session_env_reset(s);
	if (s->sink_mode) {
		unsigned nmsg = s->sink.nmsg; /* queue ids stay unique */

		sink_init(&s->sink, s->id);
		s->sink.nmsg = nmsg;
	}
	if (s->state == ST_TLS)
		session_enter_state(s, ST_CMD);
	session_client_process(s);
}

void
session_tls_leg_failed(struct session *s, struct leg *leg)
{
	char why[LEG_ERR_MAX + 200], reply[LEG_ERR_MAX + 200];

	if (leg == &s->client) {
		bool untrusted = tls_error_is_untrusted(leg->tls_error);

		snprintf(why, sizeof(why), "client TLS handshake failed: %s%s", leg_error(leg),
			 untrusted ? " (the client does not trust smtptap's CA: see 'smtptap ca show')" : "");
		if (untrusted)
			log_warnx("s=%" PRId64 " client %s rejected smtptap's certificate: trust the CA printed by "
				  "'smtptap ca show'",
				  s->id, s->client.addr);
		s->ctls = CTLS_NONE;
		session_set_outcome(s, "client-tls-error", "%s", why);
		session_note(s, STORE_KIND_TLS, "%s", why);
		session_close_legs(s);
		return;
	}
	snprintf(why, sizeof(why), "TLS handshake with upstream %s failed: %s", s->route->upstream, leg_error(leg));
	snprintf(reply, sizeof(reply), "421 4.7.0 smtptap: %.400s\r\n", why);
	session_note(s, STORE_KIND_TLS, "%s", why);
	session_fail_client(s, reply, "upstream-tls-error", why);
}

/* One transcript line and the session's client_tls / upstream_tls. */
static void
session_tls_record(struct session *s, struct leg *leg, bool client_side)
{
	struct tls_info info;
	char *json;
	bool implicit = client_side ? s->client_tls_implicit : s->upstream_tls_implicit;

	memset(&info, 0, sizeof(info));
	tls_info_get(leg_ssl(leg), client_side, &info);
	snprintf(info.mode, sizeof(info.mode), "%s", implicit ? "implicit" : "starttls");
	info.handshake_us = util_now_us() - leg->tls_started_us;
	if (client_side)
		session_note(s, STORE_KIND_TLS,
			     "client TLS (%s): %s %s, sni \"%s\", certificate \"%s\" %s by \"%s\", handshake %.1f ms",
			     info.mode, info.version, info.cipher, info.sni, info.cert_subject,
			     info.forged ? "forged" : "issued", info.cert_issuer, (double)info.handshake_us / 1000.0);
	else
		session_note(s, STORE_KIND_TLS,
			     "upstream TLS (%s): %s %s, certificate \"%s\" issued by \"%s\", %s%s%s, handshake %.1f ms",
			     info.mode, info.version, info.cipher, info.cert_subject, info.cert_issuer,
			     info.verified == 1 ? "verified" : "NOT verified: ", info.verified == 1 ? "" : info.verify_error,
			     info.verified == 1 || !tls_upstream_verify(s->ctx->tls) ? "" : " (refused)",
			     (double)info.handshake_us / 1000.0);
	json = tls_info_json(&info);
	if (json != NULL)
		store_session_set_tls(s->ctx->store, s->id, client_side ? STORE_SIDE_CLIENT : STORE_SIDE_UPSTREAM, json);
	free(json);
}

/*
 * STARTTLS in an EHLO reply is smtptap's to offer: never once the client
 * leg is TLS or when the listener says off/implicit; always with
 * --client-tls starttls; with auto exactly when the upstream offers it.
 * Returns true with the rewritten reply in out.
 */
bool
session_tls_ehlo_rewrite(struct session *s, struct evbuffer *reply, struct evbuffer *out)
{
	size_t len = evbuffer_get_length(reply), outlen = 0;
	const char *raw = (const char *)evbuffer_pullup(reply, -1);
	char *buf = malloc(len + 16);
	bool had = false, want;
	int r;

	if (buf == NULL)
		return false;
	r = smtp_ehlo_edit(raw, len, "STARTTLS", false, buf, len + 16, &outlen, &had);
	if (r < 0) {
		/* Over 1024 lines: passed on as is, noted. */
		session_note(s, STORE_KIND_ACTION, "EHLO reply of over 1024 lines passed on without the STARTTLS check");
		free(buf);
		return false;
	}
	if (!s->sink_mode && !s->upstream.tls)
		s->upstream_offers_starttls = had;
	if (s->inproc) {
		/* replay compares the server's own reply: passed on as is */
		free(buf);
		return false;
	}
	if (s->ctls != CTLS_NONE || s->ctx->tls == NULL)
		want = false;
	else if (s->client_tls == PROXY_TLS_STARTTLS)
		want = true;
	else if (s->client_tls == PROXY_TLS_AUTO)
		want = s->upstream_offers_starttls || s->upstream_tls_on;
	else
		want = false;
	if (want && !had)
		r = smtp_ehlo_edit(raw, len, "STARTTLS", true, buf, len + 16, &outlen, &had);
	else if (want == had)
		r = 0;
	if (r == 1)
		evbuffer_add(out, buf, outlen);
	free(buf);
	return r == 1;
}

void
session_tls_free(struct session *s)
{
	X509_free(s->upstream_cert);
	s->upstream_cert = NULL;
	if (s->held_greeting != NULL)
		evbuffer_free(s->held_greeting);
	s->held_greeting = NULL;
}
