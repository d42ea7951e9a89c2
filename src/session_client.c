/*
 * session_client.c - the client's input: commands, DATA, BDAT and AUTH
 * response lines.  Each unit is recorded, then the very same bytes move to
 * the upstream leg's output (or are consumed in sink mode).
 *
 * Commands whose reply decides how to read what follows (DATA, AUTH) put the
 * client side in HOLD: its bytes stay in the input buffer, bounded by the
 * leg's read watermark, until the reply arrives.  That is the only way to
 * tell message content from commands when a server refuses DATA.
 */
#include "smtptap/session_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "smtptap/proxy.h"

/* Bits of struct msg.noted: what was already said about the data. */
#define NOTED_BARE_LF 0x1
#define NOTED_BARE_CR 0x2
#define NOTED_NUL 0x4

static bool session_client_may_run(struct session *s);
static int session_client_line(struct session *s, struct evbuffer *in);
static void session_client_command(struct session *s, struct evbuffer *in, const char *line, size_t len);
static void session_client_auth_line(struct session *s, struct evbuffer *in, const char *line, size_t len);
static void session_client_data(struct session *s, struct evbuffer *in);
static void session_client_data_flags(struct session *s, struct msg *m);
static void session_client_bdat(struct session *s, struct evbuffer *in);
static void session_client_bdat_end(struct session *s, const struct rules_decision *d, size_t hold);
static void session_client_bdat_sink(struct session *s);
static void session_client_data_end(struct session *s, struct msg *m, const struct rules_decision *d, size_t hold,
				    bool bdat);
static void session_client_data_end_tail(struct session *s, struct msg *m, const struct rules_decision *d,
					 size_t hold, bool bdat);
static void session_client_forward(struct session *s, struct evbuffer *in, size_t len);
static int64_t session_client_data_record(struct session *s, struct msg *m, const struct evbuffer_iovec *v,
				       const size_t *vused, int nv, size_t hold, bool dropped);

/* Client input is interpreted only while both outputs have room and the
 * store keeps up (see session_update_reading). */
static bool
session_client_may_run(struct session *s)
{
	return s->client.open && !s->paused_backlog && leg_output_len(&s->client) <= LEG_OUTPUT_HIGH &&
	       leg_output_len(&s->upstream) <= LEG_OUTPUT_HIGH;
}

/* Interpret as much buffered client input as the state allows. */
void
session_client_process(struct session *s)
{
	while (session_client_may_run(s)) {
		struct evbuffer *in = leg_input(&s->client);

		if (s->pend_len >= PEND_MAX - 1 || s->stalled || session_rules_holding(s))
			return;
		switch (s->state) {
		case ST_CONNECTING:
		case ST_HOLD:
		case ST_TLS:
		case ST_CLOSING:
			return;
		case ST_CMD:
		case ST_AUTH:
			if (evbuffer_get_length(in) == 0 || session_client_line(s, in) <= 0)
				return;
			break;
		case ST_DATA:
			if (evbuffer_get_length(in) == 0)
				return;
			session_client_data(s, in);
			break;
		case ST_BDAT:
			if (evbuffer_get_length(in) == 0)
				return;
			session_client_bdat(s, in);
			break;
		}
	}
}

/* Returns 1 when a line was handled, 0 when more input is needed, -1 when
 * the session is being closed. */
static int
session_client_line(struct session *s, struct evbuffer *in)
{
	struct evbuffer_ptr eol;
	size_t eol_len = 0, avail = evbuffer_get_length(in), len;
	char *line;

	/* A TLS ClientHello (handshake record, version 3.x) where a command
	 * should be: say so instead of relaying binary to the server. */
	if (s->state == ST_CMD && !s->spoke && avail >= 3 && s->ctls != CTLS_ON) {
		unsigned char hdr[3];

		evbuffer_copyout(in, hdr, sizeof(hdr));
		if (hdr[0] == 0x16 && hdr[1] == 0x03 && hdr[2] <= 0x04) {
			len = avail < SMTP_LINE_MAX ? avail : SMTP_LINE_MAX;
			session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED | STORE_F_INCOMPLETE, 0,
				       evbuffer_pullup(in, (ev_ssize_t)len), len, NULL);
			evbuffer_drain(in, len);
			session_fail_client(s, NULL, "protocol-error",
					    "client sent a TLS handshake on a plaintext port (an implicit-TLS client "
					    "such as port 465? see --client-tls implicit)");
			return -1;
		}
	}

	eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	if (eol.pos < 0) {
		if (avail < SMTP_LINE_MAX)
			return 0;
		len = SMTP_LINE_MAX;
	} else {
		len = (size_t)eol.pos + eol_len;
	}
	if (len > SMTP_LINE_MAX || eol.pos < 0) {
		len = SMTP_LINE_MAX;
		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED | STORE_F_INCOMPLETE, 0,
			       evbuffer_pullup(in, (ev_ssize_t)len), len, NULL);
		evbuffer_drain(in, len);
		session_fail_client(s, "500 5.5.2 smtptap: line too long (the limit is 65536 bytes)\r\n",
				    "protocol-error", "client sent a line longer than 65536 bytes");
		return -1;
	}
	line = (char *)evbuffer_pullup(in, (ev_ssize_t)len);
	s->spoke = true;
	if (s->state == ST_AUTH)
		session_client_auth_line(s, in, line, len);
	else
		session_client_command(s, in, line, len);
	return 1;
}

static void
session_client_command(struct session *s, struct evbuffer *in, const char *line, size_t len)
{
	const struct proxy_config *cfg = s->ctx->cfg;
	struct smtp_cmd cmd;
	struct pending *p;
	char redacted[256];
	struct mock_reply resp;
	const char *raw = line;
	size_t rawlen = len, hold = 0;
	int64_t cause;
	unsigned flags = 0;
	bool answer, bdat_empty = false, recorded = false;
	const struct rules_decision *end = NULL;

	if (smtp_parse_command(line, len, &cmd) < 0)
		memset(&cmd, 0, sizeof(cmd)); /* an empty line: unknown, passed through */

	if (cmd.verb == SMTP_VERB_AUTH && cfg->redact_auth && cmd.auth_initial.len > 0) {
		int n = snprintf(redacted, sizeof(redacted), "%.*s %.*s [redacted]%s", (int)cmd.verb_text.len,
				 cmd.verb_text.p, (int)(cmd.auth_mech.len > 64 ? 64 : cmd.auth_mech.len),
				 cmd.auth_mech.p, line[len - 1] == '\n' && len > 1 && line[len - 2] == '\r' ? "\r\n" : "\n");
		raw = redacted;
		rawlen = (size_t)n;
		flags |= STORE_F_REDACTED;
	}
	if (s->detached != DETACHED_NO) {
		session_rules_detached(s, in, &cmd, raw, rawlen, len, flags);
		return;
	}
	/* A rule may answer, hold, stall or close instead; it records the
	 * command itself when it fires (dropped, if it is not forwarded). */
	if (session_rules_command(s, in, &cmd, len, raw, rawlen, flags, &recorded) == RV_DONE)
		return;
	if (cmd.verb == SMTP_VERB_STARTTLS) {
		session_tls_client_starttls(s, in, line, len);
		return;
	}
	if (!recorded)
		session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, flags, 0, raw, rawlen, NULL);

	p = session_pend_push(s, PEND_COMMAND, cmd.verb);
	cause = p->cmd_seq;
	session_rules_attach(s, p);
	switch (cmd.verb) {
	case SMTP_VERB_HELO:
	case SMTP_VERB_EHLO:
	case SMTP_VERB_LHLO:
		snprintf(s->helo, sizeof(s->helo), "%.*s", (int)cmd.arg.len, cmd.arg.p);
		/* fall through */
	case SMTP_VERB_RSET:
		session_env_reset(s);
		session_msg_abandon(s); /* a BDAT transaction abandoned */
		break;
	case SMTP_VERB_MAIL:
		session_env_add_mail(s, p, &cmd, line, len);
		break;
	case SMTP_VERB_RCPT:
		session_env_add_rcpt(s, p, &cmd, line, len);
		break;
	case SMTP_VERB_AUTH:
		session_auth_command(s, &cmd);
		session_enter_state(s, ST_HOLD);
		break;
	case SMTP_VERB_DATA:
		session_enter_state(s, ST_HOLD);
		break;
	case SMTP_VERB_QUIT:
		s->quit_sent = true;
		break;
	case SMTP_VERB_BDAT:
		if (!cmd.bdat_ok)
			break; /* not a chunk the server can read either: a plain command */
		if (s->cur_msg == NULL) {
			s->cur_msg = session_msg_new(s, true);
			if (s->cur_msg != NULL)
				session_msg_open(s, s->cur_msg);
		}
		p->bdat_last = cmd.bdat_last;
		s->bdat_left = cmd.bdat_size;
		s->bdat_cur_size = cmd.bdat_size;
		s->bdat_cur_last = cmd.bdat_last;
		/* An empty chunk ("BDAT 0 LAST") is complete with its command:
		 * the message ends here, and a rule that keeps the end from
		 * the upstream keeps this very line. */
		bdat_empty = cmd.bdat_size == 0;
		if (!bdat_empty)
			session_enter_state(s, ST_BDAT);
		else if (cmd.bdat_last && s->cur_msg != NULL && (end = session_rules_data_end(s, s->cur_msg, true)) != NULL &&
			 (session_rules_consumes(end) || (end->actions & RULES_A_DELAY)))
			hold = len;
		break;
	default:
		break;
	}

	/* The sink answers BDAT once its chunk is in, anything else now; cmd
	 * points into the input buffer, so the reply is made before it goes. */
	answer = s->sink_mode && !(cmd.verb == SMTP_VERB_BDAT && cmd.bdat_ok);
	if (answer)
		session_respond_command(s, &cmd, line, len, &resp);
	session_client_forward(s, in, len - hold);
	if (answer)
		session_respond_send(s, &resp, cause);
	if (bdat_empty)
		session_client_bdat_end(s, end, hold);
}

static void
session_client_auth_line(struct session *s, struct evbuffer *in, const char *line, size_t len)
{
	struct mock_reply resp;
	int64_t seq;
	bool crlf = len >= 2 && line[len - 2] == '\r';
	bool cancel = (len == 2 && line[0] == '*') || (len == 3 && line[0] == '*' && crlf);

	if (!cancel)
		session_auth_line(s, line, len);
	if (s->ctx->cfg->redact_auth && !cancel) {
		const char *red = crlf ? "[redacted]\r\n" : "[redacted]\n";

		seq = session_record(s, STORE_SIDE_CLIENT, STORE_KIND_AUTH, STORE_F_REDACTED, 0, red, strlen(red), NULL);
	} else {
		seq = session_record(s, STORE_SIDE_CLIENT, STORE_KIND_AUTH, 0, 0, line, len, NULL);
	}
	session_pend_push(s, PEND_AUTH_LINE, SMTP_VERB_AUTH);
	session_enter_state(s, ST_HOLD);
	if (s->sink_mode)
		session_respond_auth_line(s, line, len - (crlf ? 2 : 1), &resp);
	session_client_forward(s, in, len);
	if (s->sink_mode)
		session_respond_send(s, &resp, seq);
}

/* Stream DATA content: record and forward up to the terminator. */
static void
session_client_data(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v[16];
	size_t vused[16];
	struct msg *m = s->cur_msg;
	const struct rules_decision *d = NULL;
	int i, n = evbuffer_peek(in, -1, NULL, v, 16), nv = 0;
	size_t total = 0, hold = 0;
	bool done = false;
	int64_t last = 0; /* the data event the final reply will answer */

	if (n > 16)
		n = 16;
	for (i = 0; i < n && !done; i++) {
		const char *base = v[i].iov_base;
		size_t len = v[i].iov_len, used = 0;

		/* While the headers are still coming, unstuff in slices for the
		 * header parser; after that only the terminator matters. */
		while (used < len && m->data.st != SMTP_DATA_DONE) {
			size_t slice = len - used, got = 0;
			char out[MIME_SLICE + 2];

			if (!m->mime.done) {
				if (slice > MIME_SLICE)
					slice = MIME_SLICE;
				used += smtp_data_scan(&m->data, base + used, slice, out, &got);
				session_msg_feed(m, out, got);
			} else {
				used += smtp_data_scan(&m->data, base + used, slice, NULL, NULL);
			}
		}
		vused[nv++] = used;
		total += used;
		done = m->data.st == SMTP_DATA_DONE;
	}
	session_client_data_flags(s, m);
	m->size = m->data.body_bytes;
	if (done) {
		m->complete = true;
		s->cur_msg = NULL;
		session_enter_state(s, ST_CMD);
		/* A rule that delays or refuses the message keeps the end of
		 * the terminator from the upstream (without its last LF no
		 * server takes the message as complete). */
		d = session_rules_data_end(s, m, false); /* recorded after the data */
		if (d != NULL && (session_rules_consumes(d) || (d->actions & RULES_A_DELAY)))
			hold = total < 3 ? total : 3;
	}
	last = session_client_data_record(s, m, v, vused, nv, hold, session_rules_consumes(d));
	if (done) {
		/* The final reply answers the message's last data event: record
		 * what was gathered now, so that it has a seq. */
		int64_t flushed = session_data_flush(s);

		m->end_seq = flushed != 0 ? flushed : last;
		if (d != NULL)
			session_rules_data_end_fired(s, d);
	}
	session_client_forward(s, in, total - hold);
	if (done)
		session_client_data_end(s, m, d, hold, false);
}

/*
 * Record the nv slices of message data just scanned; the last `hold`
 * bytes (the end a rule keeps back) on their own, flagged dropped when
 * the rule answers in the message's place: they never reach the upstream.
 */
static int64_t
session_client_data_record(struct session *s, struct msg *m, const struct evbuffer_iovec *v, const size_t *vused,
			   int nv, size_t hold, bool dropped)
{
	size_t total = 0, before;
	int64_t last = 0;
	int i;

	for (i = 0; i < nv; i++)
		total += vused[i];
	before = total - hold; /* bytes recorded as they are */
	for (i = 0; i < nv; i++) {
		const char *base = v[i].iov_base;
		size_t first = vused[i] < before ? vused[i] : before;

		if (first > 0)
			last = session_record(s, STORE_SIDE_CLIENT, STORE_KIND_DATA, 0, m->id, base, first, NULL);
		before -= first;
		if (vused[i] > first)
			last = session_record(s, STORE_SIDE_CLIENT, STORE_KIND_DATA,
					      dropped ? STORE_F_DROPPED | STORE_F_RULE : 0, m->id, base + first,
					      vused[i] - first, NULL);
	}
	return last;
}

/*
 * Message m's content is through (DATA terminator, or its last BDAT
 * chunk); `hold` bytes of its end are still at the head of the client's
 * input because rule d keeps them back: for a delay, or for good.
 */
static void
session_client_data_end(struct session *s, struct msg *m, const struct rules_decision *d, size_t hold, bool bdat)
{
	if (d != NULL && (d->actions & RULES_A_DELAY) && session_rules_hold_data_end(s, d, hold)) {
		s->rhold_msg = m;
		s->rhold_bdat = bdat;
		return;
	}
	session_client_data_end_tail(s, m, d, hold, bdat);
}

void
session_client_data_end_resume(struct session *s)
{
	const struct rules_decision *d = session_rules_data_end_resumed(s);
	struct msg *m = s->rhold_msg;

	s->rhold_msg = NULL;
	if (d == NULL || m == NULL)
		return;
	session_client_data_end_tail(s, m, d, s->rhold_bytes, s->rhold_bdat);
}

static void
session_client_data_end_tail(struct session *s, struct msg *m, const struct rules_decision *d, size_t hold,
			     bool bdat)
{
	struct evbuffer *in = leg_input(&s->client);
	struct pending *q = NULL;
	struct mock_reply resp;
	size_t k;

	if (bdat) {
		/* The BDAT LAST entry awaiting this message's reply, unless
		 * the server answered before the bytes were through. */
		for (k = 0; k < s->pend_len; k++) {
			struct pending *e = &s->pend[(s->pend_head + k) % PEND_MAX];

			if (e->kind == PEND_COMMAND && e->verb == SMTP_VERB_BDAT && e->bdat_last && e->msg == NULL)
				q = e;
		}
	}
	if (session_rules_consumes(d)) {
		evbuffer_drain(in, hold);
		session_rules_data_end_local(s, d, m, m->early_reply ? NULL : q);
		return;
	}
	if (hold > 0)
		session_client_forward(s, in, hold);
	if (!bdat) {
		struct pending *p = session_pend_push(s, PEND_DATA_END, SMTP_VERB_DATA);

		p->cmd_seq = m->end_seq;

		p->msg = m;
		session_rules_attach(s, p);
		if (s->sink_mode) {
			session_respond_data_end(s, m->size, &resp);
			session_respond_send(s, &resp, m->end_seq);
		}
		return;
	}
	if (m->early_reply || q == NULL) {
		session_rules_attach(s, NULL);
		session_msg_close(s, m, m->reply_code, m->reply);
	} else {
		q->msg = m;
		session_rules_attach(s, q);
	}
	session_client_bdat_sink(s);
}

/*
 * Say once per message what a strict server may choke on: a bare LF or CR
 * (the SMTP-smuggling shape; Postfix 3.9+ rejects bare LF) or a NUL byte.
 * They are relayed as sent: the transcript tells the user, the server
 * decides.
 */
static void
session_client_data_flags(struct session *s, struct msg *m)
{
	if (m->data.bare_lf && !(m->noted & NOTED_BARE_LF)) {
		m->noted |= NOTED_BARE_LF;
		session_note(s, STORE_KIND_ACTION,
			     "message %d: bare LF in the data (a line ending without CR: not a line end per RFC "
			     "5321; strict servers such as Postfix 3.9+ reject it, and it is the SMTP-smuggling shape)",
			     m->idx);
	}
	if (m->data.bare_cr && !(m->noted & NOTED_BARE_CR)) {
		m->noted |= NOTED_BARE_CR;
		session_note(s, STORE_KIND_ACTION, "message %d: bare CR in the data (a CR not followed by LF)", m->idx);
	}
	if (m->data.nul && !(m->noted & NOTED_NUL)) {
		m->noted |= NOTED_NUL;
		session_note(s, STORE_KIND_ACTION, "message %d: NUL byte in the data", m->idx);
	}
}

/* Stream a BDAT chunk: exactly the announced number of bytes, binary. */
static void
session_client_bdat(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v[16];
	size_t vused[16];
	struct msg *m = s->cur_msg;
	const struct rules_decision *d = NULL;
	int i, n = evbuffer_peek(in, -1, NULL, v, 16), nv = 0;
	size_t total = 0, hold = 0;

	if (n > 16)
		n = 16;
	for (i = 0; i < n && s->bdat_left > 0; i++) {
		size_t len = v[i].iov_len;

		if (len > s->bdat_left)
			len = (size_t)s->bdat_left;
		if (s->bdat_discard) {
			/* a chunk whose BDAT a rule answered: goes nowhere */
			session_record(s, STORE_SIDE_CLIENT, STORE_KIND_DATA, STORE_F_DROPPED, 0, v[i].iov_base, len,
				       NULL);
		} else if (m != NULL) {
			session_msg_feed(m, v[i].iov_base, len);
			m->size += len;
			vused[nv++] = len; /* recorded below, once the end is decided */
		}
		s->bdat_left -= len;
		total += len;
	}
	if (s->bdat_discard) {
		evbuffer_drain(in, total);
		if (s->bdat_left == 0) {
			s->bdat_discard = false;
			session_enter_state(s, ST_CMD);
		}
		return;
	}
	if (s->bdat_left == 0 && s->bdat_cur_last && m != NULL) {
		d = session_rules_data_end(s, m, false); /* recorded after the data */
		if (d != NULL && (session_rules_consumes(d) || (d->actions & RULES_A_DELAY)))
			hold = total > 0 ? 1 : 0; /* one byte short, the chunk is not complete */
	}
	if (m != NULL)
		session_client_data_record(s, m, v, vused, nv, hold, session_rules_consumes(d));
	/* The chunk is through: its data gets its seq now, before a rule's
	 * action on it and before its reply. */
	if (s->bdat_left == 0)
		session_data_flush(s);
	if (d != NULL)
		session_rules_data_end_fired(s, d);
	session_client_forward(s, in, total - hold);
	if (s->bdat_left == 0)
		session_client_bdat_end(s, d, hold);
}

/* The current BDAT chunk is through (but for `hold` bytes a rule keeps). */
static void
session_client_bdat_end(struct session *s, const struct rules_decision *d, size_t hold)
{
	struct msg *m = s->cur_msg;

	session_enter_state(s, ST_CMD);
	if (s->bdat_cur_last && m != NULL) {
		m->complete = true;
		s->cur_msg = NULL;
		session_client_data_end(s, m, d, hold, true);
		return;
	}
	session_client_bdat_sink(s);
}

/* In sink mode, a chunk gets its reply once it is in. */
static void
session_client_bdat_sink(struct session *s)
{
	struct mock_reply resp;
	struct smtp_cmd cmd = { .verb = SMTP_VERB_BDAT, .bdat_ok = true };

	if (!s->sink_mode)
		return;
	cmd.bdat_size = s->bdat_cur_size;
	cmd.bdat_last = s->bdat_cur_last;
	session_respond_bdat_chunk(s, &cmd, &resp);
	session_respond_send(s, &resp, s->seq);
}

/* Pass len bytes of client input on to the upstream (consumed, in sink
 * mode or once the upstream is gone). */
static void
session_client_forward(struct session *s, struct evbuffer *in, size_t len)
{
	if (s->sink_mode || !session_upstream_usable(s))
		evbuffer_drain(in, len);
	else
		leg_write_from(&s->upstream, in, len);
}

/*
 * Client bytes not interpreted when the session ends (a last line without
 * its CRLF, input held while a reply was due) are recorded all the same,
 * flagged incomplete: nothing a peer sent is lost.  `forward`: pass them
 * on to the upstream as well; otherwise they are flagged dropped and go
 * nowhere.
 */
void
session_client_leftover(struct session *s, bool forward)
{
	struct evbuffer *in;
	size_t left, held;
	bool dropped;

	if (!s->client.open)
		return;
	leg_input_all(&s->client);
	in = leg_input(&s->client);
	left = evbuffer_get_length(in);
	forward = forward && session_upstream_usable(s) && !s->sink_mode && s->upstream_ready;
	held = session_rules_held_input(s, &dropped);
	if (held > left)
		held = left;
	if (held > 0) {
		/* recorded when the rule held it: not twice */
		session_rules_end_hold(s, dropped || forward || s->sink_mode, evbuffer_pullup(in, (ev_ssize_t)held),
				       held);
		if (forward && !dropped)
			session_client_forward(s, in, held);
		else
			evbuffer_drain(in, held);
		left -= held;
	}
	if (left == 0)
		return;
	/* After a stall nothing the client says reaches the upstream, its
	 * last words at the close included (docs/rules.md). */
	forward = forward && s->upstream.open && !s->sink_mode && s->upstream_ready && !s->stalled;
	session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_INCOMPLETE | (forward ? 0 : STORE_F_DROPPED),
		       0, evbuffer_pullup(in, -1), left, NULL);
	if (forward)
		session_client_forward(s, in, left);
	else
		evbuffer_drain(in, left);
}

/* Client input that must not be interpreted (plaintext after STARTTLS,
 * RFC 3207 section 4.2): recorded as dropped, with why, and discarded. */
void
session_client_discard(struct session *s, const char *why)
{
	struct evbuffer *in;
	size_t left, held;
	bool dropped;
	int64_t dseq;

	if (!s->client.open)
		return;
	leg_input_all(&s->client);
	in = leg_input(&s->client);
	left = evbuffer_get_length(in);
	held = session_rules_held_input(s, &dropped);
	if (held > left)
		held = left;
	if (held > 0) {
		/* recorded already */
		session_rules_end_hold(s, dropped || s->sink_mode, evbuffer_pullup(in, (ev_ssize_t)held), held);
		evbuffer_drain(in, held);
		left -= held;
	}
	if (left == 0)
		return;
	dseq = session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, STORE_F_DROPPED, 0, evbuffer_pullup(in, -1), left,
			      NULL);
	session_note_cause(s, dseq, STORE_KIND_ACTION, "%zu bytes discarded: %s", left, why);
	evbuffer_drain(in, left);
}
