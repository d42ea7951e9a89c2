/*
 * session_reply.c - replies: the upstream's (assembled from lines), the
 * sink's, and smtptap's own, all matched in order with the FIFO of commands
 * awaiting a reply, so PIPELINING works and a local reply never overtakes
 * one still due from the upstream.
 */
#include "smtptap/session_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "smtptap/log.h"

static void session_reply_handle(struct session *s, struct evbuffer *reply, enum store_side side, int code);
static bool session_reply_desync(struct session *s, struct evbuffer *reply, enum store_side side, int code);

/* ------------------------------------------------------------------------
 * the FIFO of commands awaiting a reply
 */

struct pending *
session_pend_push(struct session *s, enum pend_kind kind, enum smtp_verb verb)
{
	struct pending *p;

	/* Callers check for room first (session_client_process stops at PEND_MAX). */
	p = &s->pend[(s->pend_head + s->pend_len) % PEND_MAX];
	memset(p, 0, sizeof(*p));
	p->kind = kind;
	p->verb = verb;
	p->cmd_seq = s->seq; /* the command, recorded just before */
	s->pend_len++;
	return p;
}

int
session_pend_pop(struct session *s, struct pending *out)
{
	if (s->pend_len == 0)
		return -1;
	*out = s->pend[s->pend_head];
	s->pend_head = (s->pend_head + 1) % PEND_MAX;
	s->pend_len--;
	return 0;
}

/* smtptap answers in the FIFO's order: `text` (static storage) once every
 * reply due before it has been passed on; `starttls`: then upgrade the
 * client leg. */
void
session_local_push(struct session *s, const char *text, bool starttls)
{
	session_local_push_answer(s, text, starttls, s->seq);
}

/* The same, answering event answers_seq (not the last one recorded). */
void
session_local_push_answer(struct session *s, const char *text, bool starttls, int64_t answers_seq)
{
	struct pending *p = session_pend_push(s, PEND_LOCAL, SMTP_VERB_UNKNOWN);

	p->text = text;
	p->local_starttls = starttls;
	p->cmd_seq = answers_seq;
	session_pend_flush_local(s);
}

/* Answer the local entries that reached the head of the FIFO. */
void
session_pend_flush_local(struct session *s)
{
	while (s->pend_len > 0 && s->pend[s->pend_head].kind == PEND_LOCAL) {
		struct pending p;

		session_pend_pop(s, &p);
		if (p.text[0] != '\0')
			session_inject_client_link_flags(s, p.text, strlen(p.text), p.cmd_seq, p.cause_seq,
							 p.by_rule ? STORE_F_RULE : 0);
		free(p.owned_text);
		free(p.rule);
		if (p.local_starttls)
			s->ctls = CTLS_AFTER_FLUSH; /* upgraded once the 220 is out */
		if (p.after != RULE_AFTER_NONE) {
			session_rules_after(s, p.after,
					    p.after == RULE_AFTER_RESET ? "connection reset by a rule after its reply" :
									  "connection closed by a rule after its reply");
			return;
		}
	}
}

/* ------------------------------------------------------------------------
 * the upstream's replies
 */

void
session_upstream_lines(struct session *s)
{
	/* While a rule holds a unit (a delayed command, message end, reply or
	 * handshake) the replies wait: there is one hold at a time, and a
	 * reply that a rule delayed as well would replace the other. */
	while (session_upstream_usable(s) && !s->upstream.handshaking && !session_rules_holding(s)) {
		struct evbuffer *in = leg_input(&s->upstream);
		struct evbuffer_ptr eol;
		struct smtp_reply_line rl;
		size_t eol_len = 0, len;
		const char *line;

		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos < 0) {
			if (evbuffer_get_length(in) < SMTP_LINE_MAX)
				return;
			len = SMTP_LINE_MAX;
		} else {
			len = (size_t)eol.pos + eol_len;
		}
		if (len > SMTP_LINE_MAX || evbuffer_get_length(s->reply_buf) + len > REPLY_MAX || eol.pos < 0) {
			evbuffer_remove_buffer(in, s->reply_buf, len < SMTP_LINE_MAX ? len : SMTP_LINE_MAX);
			session_record(s, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY, STORE_F_DROPPED | STORE_F_INCOMPLETE, 0,
				       evbuffer_pullup(s->reply_buf, -1), evbuffer_get_length(s->reply_buf), NULL);
			evbuffer_drain(s->reply_buf, evbuffer_get_length(s->reply_buf));
			session_fail_client(s, "421 4.5.0 smtptap: upstream sent an over-long reply, closing\r\n",
					    "protocol-error", "upstream sent a reply line or reply over the size limit");
			return;
		}
		line = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
		smtp_parse_reply_line(line, len, &rl);
		evbuffer_remove_buffer(in, s->reply_buf, len);
		if (rl.last)
			session_reply_handle(s, s->reply_buf, STORE_SIDE_UPSTREAM, rl.code);
	}
}

/*
 * The upstream closed: the lines of a reply it did not finish, and a last
 * line without its LF, are recorded (flagged incomplete) and passed to the
 * client as a direct connection would have: nothing a peer sent is lost.
 */
void
session_upstream_tail(struct session *s)
{
	size_t len;

	if (s->upstream.open && !s->upstream.handshaking)
		evbuffer_add_buffer(s->reply_buf, leg_input(&s->upstream));
	len = evbuffer_get_length(s->reply_buf);
	if (len == 0)
		return;
	session_record(s, STORE_SIDE_UPSTREAM, STORE_KIND_REPLY,
		       STORE_F_INCOMPLETE | (s->prelude || !s->client.open ? STORE_F_DROPPED : 0), 0,
		       evbuffer_pullup(s->reply_buf, -1), len, NULL);
	if (s->prelude || !s->client.open)
		evbuffer_drain(s->reply_buf, len);
	else
		leg_write_from(&s->client, s->reply_buf, (size_t)-1);
}

/* A reply a rule delayed goes on (it waited in reply_buf). */
void
session_reply_resume(struct session *s)
{
	if (s->rhold != RHOLD_REPLY)
		return;
	session_reply_handle(s, s->reply_buf, s->rhold_side, s->rhold_code);
}

/* In sink mode the sink's reply takes the same road as an upstream's. */
void
session_sink_answer(struct session *s, const char *text, size_t len)
{
	struct smtp_reply_line rl;
	const char *last = text;
	size_t i;

	for (i = 0; i + 1 < len; i++) {
		if (text[i] == '\n')
			last = text + i + 1;
	}
	smtp_parse_reply_line(last, len - (size_t)(last - text), &rl);
	evbuffer_add(s->reply_buf, text, len);
	session_reply_handle(s, s->reply_buf, STORE_SIDE_PROXY, rl.code);
}

/* ------------------------------------------------------------------------
 * smtptap's own replies: the sink's, or a recording's (mock)
 */

/* The sink writes into r->buf (SINK_REPLY_MAX fits in it). */
static void
session_respond_sink(struct mock_reply *r, size_t n)
{
	r->p = r->buf;
	r->len = n;
	r->note[0] = '\0';
}

void
session_respond_greeting(struct session *s, struct mock_reply *r)
{
	if (s->mock != NULL)
		mock_greeting(s->mock, r);
	else
		session_respond_sink(r, sink_reply_greeting(&s->sink, r->buf));
}

void
session_respond_command(struct session *s, const struct smtp_cmd *cmd, const char *line, size_t len,
			struct mock_reply *r)
{
	if (s->mock != NULL)
		mock_command(s->mock, cmd, line, len, r);
	else
		session_respond_sink(r, sink_reply_command(&s->sink, cmd, r->buf));
}

void
session_respond_auth_line(struct session *s, const char *line, size_t len, struct mock_reply *r)
{
	if (s->mock != NULL)
		mock_auth_line(s->mock, r);
	else
		session_respond_sink(r, sink_reply_auth_line(&s->sink, line, len, r->buf));
}

void
session_respond_data_end(struct session *s, uint64_t size, struct mock_reply *r)
{
	if (s->mock != NULL)
		mock_data_end(s->mock, r);
	else
		session_respond_sink(r, sink_reply_data_end(&s->sink, size, r->buf));
}

void
session_respond_bdat_chunk(struct session *s, const struct smtp_cmd *cmd, struct mock_reply *r)
{
	if (s->mock != NULL)
		mock_bdat_chunk(s->mock, cmd, r);
	else
		session_respond_sink(r, sink_reply_bdat_chunk(&s->sink, cmd, r->buf));
}

void
session_respond_send(struct session *s, struct mock_reply *r, int64_t cause_seq)
{
	/* A client that left the recorded conversation: a proxy action. */
	if (r->note[0] != '\0')
		session_note_cause(s, cause_seq, STORE_KIND_ACTION, "%s", r->note);
	session_sink_answer(s, r->p, r->len);
}

/* The upstream's greeting reaches the client (held during the prelude). */
void
session_greeting_release(struct session *s)
{
	s->upstream_ready = true;
	if (s->held_greeting != NULL)
		leg_write_from(&s->client, s->held_greeting, (size_t)-1);
	if (s->state == ST_CONNECTING)
		session_enter_state(s, ST_CMD);
}

/*
 * A reply while smtptap still counts the client's bytes as message data:
 * the upstream ended the data where smtptap did not (a lenient server
 * taking a bare-LF "\n.\n" for the end, say).  The proxy must not stall or
 * swallow it: the message ends here, marked incomplete, the reply is
 * recorded and passed on, and what the client sends next is read as
 * commands again, as the upstream reads it.
 */
static bool
session_reply_desync(struct session *s, struct evbuffer *reply, enum store_side side, int code)
{
	struct msg *m = s->cur_msg;
	size_t len = evbuffer_get_length(reply);
	const char *raw;
	char *text;

	if (side != STORE_SIDE_UPSTREAM || s->state != ST_DATA || m == NULL || s->pend_len > 0)
		return false;
	raw = (const char *)evbuffer_pullup(reply, -1);
	session_note(s, STORE_KIND_ACTION,
		     "desync: the upstream replied %d while smtptap still read message %d as data (the upstream "
		     "ended the data elsewhere%s); resynchronising on the upstream's view",
		     code, m->idx, m->data.bare_lf ? ", likely at a bare LF" : "");
	session_record(s, side, STORE_KIND_REPLY, s->client.open ? 0 : STORE_F_DROPPED, 0, raw, len, NULL);
	text = session_reply_text(raw, len);
	s->cur_msg = NULL;
	session_msg_close(s, m, code, text);
	free(text);
	session_enter_state(s, ST_CMD);
	leg_write_from(&s->client, reply, (size_t)-1);
	return true;
}

/*
 * A complete reply arrived (from the upstream, or from the sink).  Match it
 * with the oldest outstanding command, apply its effect on the session,
 * record it and pass it to the client.
 */
static void
session_reply_handle(struct session *s, struct evbuffer *reply, enum store_side side, int code)
{
	struct pending p = { .kind = PEND_COMMAND, .verb = SMTP_VERB_UNKNOWN };
	bool have;
	unsigned flags = side == STORE_SIDE_PROXY ? STORE_F_INJECTED | STORE_F_TO_CLIENT : 0;
	size_t len = evbuffer_get_length(reply);
	const char *raw, *txraw;
	size_t txlen;
	int txcode;
	struct evbuffer *altered = NULL;
	char *text = NULL;
	struct rules_reply rr;
	int orig_code = code;
	bool stripped = false;
	int64_t answers, seq;

	if (session_reply_desync(s, reply, side, code))
		return;
	if (s->pend_len > 0 && s->pend[s->pend_head].kind == PEND_SILENT) {
		/* the answer to smtptap's own RSET or "*": the client asked
		 * nothing */
		session_pend_pop(s, &p);
		session_record(s, side, STORE_KIND_REPLY, STORE_F_DROPPED, 0, evbuffer_pullup(reply, -1), len, NULL);
		evbuffer_drain(reply, len);
		session_pend_flush_local(s);
		return;
	}
	session_rules_reply(s, reply, side, &code, &rr);
	if (rr.held) {
		s->rhold_code = orig_code;
		s->rhold_side = side;
		return;
	}
	if (rr.replaced) {
		side = STORE_SIDE_PROXY;
		flags = STORE_F_INJECTED | STORE_F_TO_CLIENT | STORE_F_RULE;
		len = evbuffer_get_length(reply);
	}
	if (rr.suppress)
		flags |= STORE_F_DROPPED | (s->stalled || rr.rule_line ? STORE_F_RULE : 0);
	have = session_pend_pop(s, &p) == 0;
	if (have && session_tls_reply(s, &p, reply, code)) {
		free(p.rule);
		free(rr.orig_raw);
		session_pend_flush_local(s);
		return;
	}
	raw = (const char *)evbuffer_pullup(reply, -1);
	if (rr.orig_raw != NULL) {
		/* The records of the message and its recipients say what the
		 * upstream did (a rewritten 250 was a delivery); the events
		 * say what the client was told. */
		txraw = rr.orig_raw;
		txlen = rr.orig_len;
		txcode = rr.orig_code;
	} else {
		txraw = raw;
		txlen = len;
		txcode = code;
	}
	switch (have ? p.kind : PEND_COMMAND) {
	case PEND_GREETING:
		s->upstream_ready = true;
		if (s->state == ST_CONNECTING)
			session_enter_state(s, ST_CMD);
		break;
	case PEND_DATA_END:
		text = session_reply_text(txraw, txlen);
		session_msg_close(s, p.msg, txcode, text);
		p.msg = NULL;
		break;
	case PEND_AUTH_LINE:
		session_enter_state(s, code == 334 ? ST_AUTH : ST_CMD);
		break;
	case PEND_LOCAL:
	case PEND_STARTTLS:
	case PEND_PRELUDE_EHLO:
	case PEND_PRELUDE_STARTTLS:
	case PEND_SILENT:
		break;
	case PEND_COMMAND:
		switch (p.verb) {
		case SMTP_VERB_EHLO:
		case SMTP_VERB_LHLO:
			if (code / 100 == 2) {
				altered = evbuffer_new();
				if (altered != NULL && !session_tls_ehlo_rewrite(s, reply, altered)) {
					evbuffer_free(altered);
					altered = NULL;
				}
			}
			break;
		case SMTP_VERB_MAIL:
			if (have)
				session_env_mail_reply(s, &p, txcode, txraw, txlen);
			break;
		case SMTP_VERB_RCPT:
			/* a recipient keeps the server's own reply */
			if (have)
				session_env_rcpt_reply(s, &p, txcode, txraw, txlen);
			break;
		case SMTP_VERB_DATA:
			if (s->state == ST_HOLD) {
				/* A server that takes DATA in the middle of a BDAT
				 * transaction (RFC 3030 says 503) ends that message. */
				if (code == 354)
					session_msg_abandon(s);
				if (code == 354 && (s->cur_msg = session_msg_new(s, false)) != NULL) {
					session_msg_open(s, s->cur_msg);
					session_enter_state(s, ST_DATA);
				} else {
					session_enter_state(s, ST_CMD);
				}
			}
			break;
		case SMTP_VERB_AUTH:
			if (s->state == ST_HOLD)
				session_enter_state(s, code == 334 ? ST_AUTH : ST_CMD);
			break;
		case SMTP_VERB_BDAT:
			if (p.bdat_last) {
				text = session_reply_text(txraw, txlen);
				if (p.msg != NULL) {
					session_msg_close(s, p.msg, txcode, text);
					p.msg = NULL;
				} else if (s->cur_msg != NULL && s->cur_msg->bdat) {
					/* answered before the chunk was through */
					s->cur_msg->early_reply = true;
					s->cur_msg->reply_code = txcode;
					s->cur_msg->reply = text;
					text = NULL;
				}
			}
			break;
		case SMTP_VERB_QUIT:
			s->quit_ok = code / 100 == 2;
			break;
		default:
			break;
		}
		break;
	}

	if (rr.strip != NULL && code / 100 == 2) {
		size_t before = evbuffer_get_length(altered != NULL ? altered : reply);

		/* stripping only removes: a shorter reply is one the rule changed */
		if (session_rules_strip(s, rr.strip, reply, &altered) && evbuffer_get_length(altered) != before)
			stripped = true;
	}
	if (!s->client.open)
		flags |= STORE_F_DROPPED; /* nobody to pass it to */
	if (altered != NULL || rr.truncate > 0)
		flags &= ~(unsigned)(STORE_F_INJECTED | STORE_F_TO_CLIENT); /* the sink's own, which the client never saw */
	answers = have ? p.cmd_seq : 0;
	seq = session_record_link(s, answers, rr.replaced ? rr.rule_seq : 0, side, STORE_KIND_REPLY,
				  flags | (altered || rr.truncate ? STORE_F_ALTERED : 0) |
					  (rr.truncate || stripped ? STORE_F_RULE : 0),
				  0, raw, len, NULL);
	if (rr.suppress) {
		evbuffer_drain(reply, len);
		if (altered != NULL)
			evbuffer_free(altered);
	} else if (rr.truncate > 0) {
		struct evbuffer *src = altered != NULL ? altered : reply;
		size_t n = rr.truncate < evbuffer_get_length(src) ? rr.truncate : evbuffer_get_length(src);

		/* the client gets the reply cut mid-line, then the close */
		session_record_link(s, answers, seq, STORE_SIDE_PROXY, STORE_KIND_REPLY,
				    STORE_F_INJECTED | STORE_F_TO_CLIENT | STORE_F_INCOMPLETE | STORE_F_RULE |
					    (s->client.open ? 0 : STORE_F_DROPPED),
				    0, evbuffer_pullup(src, (ev_ssize_t)n), n, NULL);
		leg_write_from(&s->client, src, n);
		if (altered != NULL)
			evbuffer_free(altered);
		evbuffer_drain(reply, evbuffer_get_length(reply));
	} else if (altered != NULL) {
		/* What the client got instead (the TLS offer, a rule's strip):
		 * it answers the same command, and the altered reply is why it
		 * exists. */
		session_record_link(s, answers, seq, STORE_SIDE_PROXY, STORE_KIND_REPLY,
				    STORE_F_INJECTED | STORE_F_TO_CLIENT | (stripped ? STORE_F_RULE : 0) |
					    (s->client.open ? 0 : STORE_F_DROPPED),
				    0, evbuffer_pullup(altered, -1), evbuffer_get_length(altered), NULL);
		leg_write_from(&s->client, altered, (size_t)-1);
		evbuffer_free(altered);
		evbuffer_drain(reply, len);
	} else {
		leg_write_from(&s->client, reply, (size_t)-1);
	}
	free(text);
	if (p.msg != NULL)
		session_msg_close(s, p.msg, 0, NULL);
	free(p.rule); /* rr.strip pointed into it: done with */
	free(rr.orig_raw);

	session_pend_flush_local(s);
	if (rr.rule_line != 0 || rr.stall)
		session_rules_reply_done(s, &p, orig_code, code, &rr);
	if (p.verb == SMTP_VERB_QUIT && have && p.kind == PEND_COMMAND) {
		/* After QUIT nothing more is said: close the upstream, and the
		 * client once it has the reply. */
		session_enter_state(s, ST_CLOSING);
		leg_close(&s->upstream, LEG_CLOSE_NOW);
		leg_close_after_flush(&s->client);
	} else if (!s->client.open && s->pend_len == 0) {
		leg_close(&s->upstream, LEG_CLOSE_NOW);
	}
}
