/*
 * session_rules.c - the session's side of fault rules.
 *
 * rules.c decides (pure: a unit and the session's facts in, a decision
 * out); this file asks it at each decision point, records what fired, and
 * carries the decision out on the legs.  The decision points are:
 *
 *   connect    session_rules_connect, before the upstream is contacted
 *   command    session_rules_command, before the command is forwarded
 *   data-end   session_rules_data_end, before the terminator is forwarded
 *   reply      session_rules_reply, before the reply reaches the client
 *   tls        session_rules_tls, before a handshake starts on a leg
 *
 * Whatever a rule does, each peer's protocol state stays consistent, and
 * what the upstream sees is written in docs/rules.md for each action: a
 * reply smtptap gives in place of a command means the command is never
 * forwarded; a message refused at its end means the terminator is never
 * forwarded and the upstream connection is reset (RFC 5321 4.1.1.4: no
 * delivery without the terminator); a 354 or 334 the client does not get
 * is taken back from the upstream (connection reset, or "*").
 */
#include "smtptap/session_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "smtptap/log.h"

static const struct rules_decision *session_rules_decide(struct session *s, struct rules_unit *u);
static void session_rules_fired(struct session *s, const struct rules_decision *d, const char *on);
static void session_rules_throttle(struct session *s, const struct rules_decision *d);
static bool session_rules_hold(struct session *s, enum rule_hold what, const struct rules_decision *d,
			       size_t bytes);
static void session_rules_timer_cb(evutil_socket_t fd, short what, void *arg);
static struct rules_decision *session_rules_dup(const struct rules_decision *d);
static void session_rules_local(struct session *s, const struct rules_decision *d, enum rule_after after);
static void session_rules_abort_upstream(struct session *s, const struct rules_decision *d, const char *why);
static void session_rules_facts(struct session *s, struct rules_facts *f);
static void session_rules_close_upstream(struct session *s, bool reset);
static void session_rules_unit_tx(struct session *s, struct rules_unit *u, const char **rcpts, size_t max);

/* Recipients looked at by one decision (the rest of a huge envelope is
 * not matched against `to`). */
#define RULES_RCPTS_SEEN 64

/* The TLS alert a failed handshake gets: fatal, handshake_failure. */
static const unsigned char tls_alert_handshake_failure[] = { 0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28 };

void
session_rules_init(struct session *s)
{
	struct session_ctx *ctx = s->ctx;

	s->session_no = ++ctx->sessions_started;
	if (ctx->rules == NULL)
		return;
	s->rdec = malloc(sizeof(*s->rdec));
	s->rules_st = rules_session_new(ctx->rules);
	if (s->rdec == NULL || s->rules_st == NULL) {
		log_warnx("s=%" PRId64 " out of memory: fault rules are off for this session", s->id);
		free(s->rdec);
		s->rdec = NULL;
		rules_session_free(s->rules_st);
		s->rules_st = NULL;
		return;
	}
	s->rules = rules_ref(ctx->rules);
}

void
session_rules_free(struct session *s)
{
	if (s->rtimer != NULL)
		event_free(s->rtimer);
	s->rtimer = NULL;
	free(s->rdec);
	free(s->rheld);
	free(s->rattach);
	s->rdec = s->rheld = s->rattach = NULL;
	rules_session_free(s->rules_st);
	s->rules_st = NULL;
	if (s->rules != NULL)
		rules_unref(s->rules);
	s->rules = NULL;
}

bool
session_rules_holding(const struct session *s)
{
	return s->rhold != RHOLD_NONE && !s->rresume;
}

static void
session_rules_facts(struct session *s, struct rules_facts *f)
{
	memset(f, 0, sizeof(*f));
	f->session_no = s->session_no;
	f->client = (const struct sockaddr *)&s->client_sa;
	f->listener = s->listener;
	f->sink = s->sink_mode;
}

/* The transaction so far, for from/to conditions. */
static void
session_rules_unit_tx(struct session *s, struct rules_unit *u, const char **rcpts, size_t max)
{
	size_t i, n = s->env.nrcpts < max ? s->env.nrcpts : max;

	if (s->env.mail_from != NULL) {
		u->mail_from = s->env.mail_from;
		u->mail_from_len = strlen(s->env.mail_from);
	}
	for (i = 0; i < n; i++)
		rcpts[i] = s->env.rcpts[i].address ? s->env.rcpts[i].address : "";
	u->rcpts = rcpts;
	u->nrcpts = n;
	u->helo = s->helo[0] ? s->helo : NULL;
}

static const struct rules_decision *
session_rules_decide(struct session *s, struct rules_unit *u)
{
	struct rules_facts f;

	if (s->rules == NULL)
		return NULL;
	session_rules_facts(s, &f);
	if (!rules_decide(s->rules, s->rules_st, u, &f, s->rdec))
		return NULL;
	return s->rdec;
}

/* The transcript says which rule fired, on what, linked to the event that
 * triggered it (the last one recorded), and how to reproduce a draw. */
static void
session_rules_fired(struct session *s, const struct rules_decision *d, const char *on)
{
	char seed[48] = "";

	if (d->seed != 0)
		snprintf(seed, sizeof(seed), " [seed %" PRIu64 "]", d->seed);
	char text[600];

	snprintf(text, sizeof(text), "rule %u fired on %s (event %" PRId64 "): %s%s", d->line, on, s->seq, d->text,
		 seed);
	s->rule_unit_seq = s->seq;
	s->rule_seq = session_record_link(s, 0, s->rule_unit_seq, STORE_SIDE_PROXY, STORE_KIND_ACTION, STORE_F_RULE, 0,
					  NULL, 0, text);
}

static struct rules_decision *
session_rules_dup(const struct rules_decision *d)
{
	struct rules_decision *c = malloc(sizeof(*c));

	if (c != NULL)
		memcpy(c, d, sizeof(*c));
	else
		log_warnx("out of memory: a rule's reply change is skipped");
	return c;
}

/* Does the decision keep the unit from going on (to the upstream, or to
 * the client for a reply)? */
bool
session_rules_consumes(const struct rules_decision *d)
{
	return d != NULL && (d->actions & (RULES_A_REPLY | RULES_A_STALL | RULES_A_CLOSE | RULES_A_RESET)) != 0;
}

static void
session_rules_throttle(struct session *s, const struct rules_decision *d)
{
	uint64_t up = 0, down = 0; /* bytes per second towards the upstream / the client */

	if (d->throttle_dir != RULES_DIR_TO_CLIENT)
		up = d->throttle_bps;
	if (d->throttle_dir != RULES_DIR_TO_UPSTREAM)
		down = d->throttle_bps;
	/* Towards the upstream: the client's bytes are read, and written to
	 * the upstream, at the rate; towards the client, the reverse. */
	s->rate_up = up;
	s->rate_down = down; /* an upstream leg not connected yet gets them in session_begin */
	if (leg_set_rate(&s->client, up, down) < 0 || (!s->sink_mode && leg_set_rate(&s->upstream, down, up) < 0))
		log_warnx("s=%" PRId64 " out of memory: cannot throttle", s->id);
}

/* Hold a unit for the decision's delay.  Returns false (go on now) when
 * the timer cannot be set up. */
static bool
session_rules_hold(struct session *s, enum rule_hold what, const struct rules_decision *d, size_t bytes)
{
	struct timeval tv = { d->delay_ms / 1000, (d->delay_ms % 1000) * 1000 };

	if (s->rtimer == NULL)
		s->rtimer = evtimer_new(s->ctx->base, session_rules_timer_cb, s);
	free(s->rheld);
	s->rheld = session_rules_dup(d);
	/* The delay counts from now, not from when this loop iteration began
	 * (libevent's cached time): "at least D" holds as measured outside. */
	event_base_update_cache_time(s->ctx->base);
	if (s->rtimer == NULL || s->rheld == NULL || evtimer_add(s->rtimer, &tv) < 0) {
		log_warnx("s=%" PRId64 " cannot set up a rule's delay: going on at once", s->id);
		return false;
	}
	s->rheld->actions &= ~RULES_A_DELAY;
	s->rhold = what;
	s->rhold_bytes = bytes;
	s->rresume = false;
	return true;
}

/* A delay is over: carry out the rest of the held decision. */
static void
session_rules_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	enum rule_hold held = s->rhold;

	(void)fd;
	(void)what;
	session_enter(s);
	s->rresume = true;
	switch (held) {
	case RHOLD_NONE:
		break;
	case RHOLD_CONNECT:
		if (session_rules_connect(s))
			session_begin(s);
		break;
	case RHOLD_COMMAND:
		session_client_process(s); /* the command at the head of the input, resumed */
		break;
	case RHOLD_DATA_END:
		session_client_data_end_resume(s);
		break;
	case RHOLD_REPLY:
		session_reply_resume(s);
		break;
	case RHOLD_TLS_CLIENT:
		session_tls_start_client(s);
		break;
	case RHOLD_TLS_UPSTREAM:
		session_tls_start_upstream(s);
		break;
	}
	if (s->rhold == held && held != RHOLD_NONE && s->rresume) {
		/* the held unit went away meanwhile (the session closed) */
		s->rhold = RHOLD_NONE;
		s->rresume = false;
	}
	session_upstream_lines(s);
	session_client_process(s);
	session_leave(s);
}

/*
 * Bytes at the head of the client's input that a rule holds and that are
 * recorded already: a delayed command's line (not STARTTLS's, recorded
 * when it goes on), a delayed message's last bytes.  When the session
 * ends before the delay does, the caller passes them on or drops them
 * without recording them a second time, and the hold is over (what was
 * recorded as forwarded and never was is taken back by an event).
 */
size_t
session_rules_held_input(const struct session *s, bool *dropped)
{
	*dropped = false;
	if (!session_rules_holding(s) || (s->rhold != RHOLD_COMMAND && s->rhold != RHOLD_DATA_END))
		return 0;
	/* a rule that answers in their place recorded them dropped */
	*dropped = session_rules_consumes(s->rheld);
	return s->rhold_bytes;
}

/*
 * The session ends during a hold.  `as_recorded`: the held bytes (`held`,
 * n) go where their record says; otherwise they were recorded as on their
 * way to the upstream and never get there, and an event says so: on the
 * proxy's side, towards the upstream, dropped, with those bytes.
 */
void
session_rules_end_hold(struct session *s, bool as_recorded, const void *held, size_t n)
{
	if (!session_rules_holding(s))
		return;
	if (s->rtimer != NULL)
		evtimer_del(s->rtimer);
	if (!as_recorded && n > 0 && (s->rhold == RHOLD_COMMAND || s->rhold == RHOLD_DATA_END)) {
		char text[200];

		snprintf(text, sizeof(text),
			 "rule %u: the session ended during the delay: the held %s never reached the upstream",
			 s->rheld != NULL ? s->rheld->line : 0,
			 s->rhold == RHOLD_COMMAND ? "command" : "end of the message");
		session_record(s, STORE_SIDE_PROXY, STORE_KIND_ACTION,
			       STORE_F_DROPPED | STORE_F_RULE | STORE_F_TO_UPSTREAM, 0, held, n, text);
	}
	s->rhold = RHOLD_NONE;
	s->rresume = false;
}

/* The resumed unit was carried out. */
static const struct rules_decision *
session_rules_take_resumed(struct session *s, enum rule_hold what)
{
	if (s->rhold != what || !s->rresume)
		return NULL;
	s->rhold = RHOLD_NONE;
	s->rresume = false;
	return s->rheld;
}

/* A reply of smtptap's, in its turn in the FIFO; then close or reset. */
static void
session_rules_local(struct session *s, const struct rules_decision *d, enum rule_after after)
{
	struct pending *p = session_pend_push(s, PEND_LOCAL, SMTP_VERB_UNKNOWN);

	p->owned_text = strndup(d->reply, d->reply_len);
	p->text = p->owned_text != NULL ? p->owned_text : "451 4.3.0 smtptap: out of memory\r\n";
	p->after = after;
	p->by_rule = true;
	p->cmd_seq = s->rule_unit_seq; /* it answers what the rule fired on */
	p->cause_seq = s->rule_seq;
	session_pend_flush_local(s);
}

static enum rule_after
session_rules_after_of(const struct rules_decision *d)
{
	if (d->actions & RULES_A_RESET)
		return RULE_AFTER_RESET;
	if (d->actions & (RULES_A_CLOSE | RULES_A_TRUNCATE))
		return RULE_AFTER_CLOSE;
	return RULE_AFTER_NONE;
}

/*
 * A rule ends the upstream connection: what was forwarded to it (and
 * recorded so) goes out first, then FIN, or RST with `reset`.  A leg still
 * in its TLS handshake has nothing of the client's yet: it closes at once.
 */
static void
session_rules_close_upstream(struct session *s, bool reset)
{
	if (s->upstream.handshaking)
		leg_close(&s->upstream, reset ? LEG_CLOSE_RESET : LEG_CLOSE_NOW);
	else if (reset)
		leg_reset_after_flush(&s->upstream);
	else
		leg_close_after_flush(&s->upstream);
}

/* Close (FIN once the output is out) or reset the client; the upstream
 * closes once what it was sent is out. */
void
session_rules_after(struct session *s, enum rule_after after, const char *why)
{
	if (after == RULE_AFTER_NONE)
		return;
	session_set_outcome(s, after == RULE_AFTER_RESET ? "rule-reset" : "rule-close", "%s", why);
	session_note(s, STORE_KIND_CLOSE, "%s", why);
	session_enter_state(s, ST_CLOSING);
	session_msg_abandon(s);
	session_rules_close_upstream(s, false);
	session_client_leftover(s, false);
	if (after == RULE_AFTER_RESET)
		leg_reset_after_flush(&s->client);
	else
		leg_close_after_flush(&s->client);
}

static void
session_rules_after_rule(struct session *s, const struct rules_decision *d, enum rule_after after)
{
	char why[96];

	snprintf(why, sizeof(why), "%s by rule %u", after == RULE_AFTER_RESET ? "connection reset" : "connection closed",
		 d->line);
	session_rules_after(s, after, why);
}

/*
 * The upstream must not complete what the client was told failed: its
 * connection is reset before it sees the end (a message without its
 * terminator is never delivered), and smtptap answers the rest itself.
 */
static void
session_rules_abort_upstream(struct session *s, const struct rules_decision *d, const char *why)
{
	struct pending kept[PEND_MAX];
	size_t n = 0;
	struct pending p;

	if (s->sink_mode || !session_upstream_usable(s))
		return;
	session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: upstream connection reset %s", d->line, why);
	session_rules_close_upstream(s, true); /* the message but its end goes out first */
	s->detached = DETACHED_ABORTED;
	/* Commands still waiting for the upstream's reply will never get
	 * one: smtptap answers them in order (only its own entries stay). */
	while (session_pend_pop(s, &p) == 0) {
		if (p.kind == PEND_LOCAL || p.kind == PEND_SILENT) {
			kept[n++] = p;
			continue;
		}
		session_pend_release(s, &p);
		if (p.kind == PEND_COMMAND || p.kind == PEND_DATA_END || p.kind == PEND_AUTH_LINE) {
			int64_t answers = p.cmd_seq;

			memset(&p, 0, sizeof(p));
			p.kind = PEND_LOCAL;
			p.text = "421 4.4.2 smtptap: the upstream connection was reset by a rule\r\n";
			p.cmd_seq = answers;
			p.cause_seq = s->rule_seq;
			kept[n++] = p;
		}
	}
	for (size_t i = 0; i < n; i++)
		*session_pend_push(s, kept[i].kind, kept[i].verb) = kept[i]; /* ownership moves back */
	session_pend_flush_local(s);
}

/* ------------------------------------------------------------------------
 * connect
 */

/* Returns true when the session may begin now (upstream, greeting). */
bool
session_rules_connect(struct session *s)
{
	const struct rules_decision *d = session_rules_take_resumed(s, RHOLD_CONNECT);
	struct rules_unit u = { .trigger = RULES_ON_CONNECT };

	if (d == NULL) {
		if ((d = session_rules_decide(s, &u)) == NULL)
			return true;
		session_rules_fired(s, d, "connect");
		if ((d->actions & RULES_A_DELAY) && session_rules_hold(s, RHOLD_CONNECT, d, 0))
			return false;
	}
	if (d->actions & RULES_A_THROTTLE)
		session_rules_throttle(s, d);
	if (d->actions & RULES_A_FAIL_TLS) {
		s->fail_client_tls = d->line;
		if (s->client_tls == PROXY_TLS_IMPLICIT) {
			/* The handshake is the first thing: fail it now; the
			 * upstream is never contacted. */
			session_rules_tls(s, RULES_LEG_CLIENT);
			return false;
		}
	}
	if (d->actions & RULES_A_REPLY) {
		struct pending p;

		/* In place of the greeting; no upstream is contacted.  RFC
		 * 5321 3.1: after a 554 greeting the server answers 503 to
		 * all but QUIT. */
		session_pend_pop(s, &p);
		s->upstream_ready = true;
		s->detached = DETACHED_REFUSED;
		session_enter_state(s, ST_CMD);
		session_rules_local(s, d, d->code == 421 ? RULE_AFTER_CLOSE : session_rules_after_of(d));
		return false;
	}
	if (d->actions & RULES_A_STALL) {
		s->stalled = true;
		session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: stalled: no greeting, the upstream is not contacted", d->line);
		return false;
	}
	if (d->actions & (RULES_A_CLOSE | RULES_A_RESET)) {
		session_rules_after_rule(s, d, session_rules_after_of(d));
		return false;
	}
	return true;
}

/* ------------------------------------------------------------------------
 * commands
 */

/*
 * A command line of len bytes is at the head of `in`, parsed into cmd;
 * raw/rawlen is what the transcript keeps of it (AUTH redacted).  Decide (or take
 * the decision of a command whose delay is over), record the command with
 * the right flags, and carry out what the rule says.  RV_GO: the caller
 * goes on as without rules (the command was recorded; *recorded says so).
 */
enum rules_verdict
session_rules_command(struct session *s, struct evbuffer *in, const struct smtp_cmd *cmd, size_t len,
		      const char *raw, size_t rawlen, unsigned flags, bool *recorded)
{
	const struct rules_decision *d = session_rules_take_resumed(s, RHOLD_COMMAND);
	bool starttls = cmd->verb == SMTP_VERB_STARTTLS;

	*recorded = false;
	if (d == NULL) {
		const char *rcpts[RULES_RCPTS_SEEN];
		struct rules_unit u = {
			.trigger = RULES_ON_COMMAND,
			.verb = cmd->verb,
			.verb_text = cmd->verb_text.p,
			.verb_text_len = cmd->verb_text.len,
			.arg = cmd->arg.p,
			.arg_len = cmd->arg.len,
		};
		char mech[64] = "", helo[256] = "", user[256], *rcpt = NULL;

		if (s->rules == NULL)
			return RV_GO;
		session_rules_unit_tx(s, &u, rcpts, RULES_RCPTS_SEEN);
		if (cmd->verb == SMTP_VERB_RCPT && cmd->has_path && (rcpt = strndup(cmd->path.p, cmd->path.len)) != NULL) {
			/* `to` on RCPT is this recipient */
			rcpts[0] = rcpt;
			u.nrcpts = 1;
		}
		if (cmd->verb == SMTP_VERB_MAIL && cmd->has_path) {
			u.mail_from = cmd->path.p;
			u.mail_from_len = cmd->path.len;
		}
		if (cmd->verb == SMTP_VERB_HELO || cmd->verb == SMTP_VERB_EHLO || cmd->verb == SMTP_VERB_LHLO) {
			snprintf(helo, sizeof(helo), "%.*s", (int)cmd->arg.len, cmd->arg.p);
			u.helo = helo;
		}
		if (cmd->verb == SMTP_VERB_AUTH) {
			snprintf(mech, sizeof(mech), "%.*s", (int)cmd->auth_mech.len, cmd->auth_mech.p);
			u.auth_mech = mech;
			/* the user in the initial response (PLAIN, LOGIN, ...);
			 * one sent later is not known when the command is decided */
			if (smtp_auth_user(cmd->auth_mech, cmd->auth_initial.p, cmd->auth_initial.len, user, sizeof(user)) > 0)
				u.auth_user = user;
		}
		d = session_rules_decide(s, &u);
		free(rcpt);
		if (d == NULL)
			return RV_GO;
		/* STARTTLS that goes on is recorded by session_tls.c. */
		if (!starttls || session_rules_consumes(d)) {
			session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND,
				       flags | (session_rules_consumes(d) ? STORE_F_DROPPED | STORE_F_RULE : 0), 0, raw, rawlen,
				       NULL);
			*recorded = true;
			session_rules_fired(s, d, rules_trigger_name(RULES_ON_COMMAND, cmd->verb));
		}
		if ((d->actions & RULES_A_DELAY) && session_rules_hold(s, RHOLD_COMMAND, d, *recorded ? len : 0))
			return RV_DONE; /* the line stays at the head of the input */
	} else {
		*recorded = !starttls || session_rules_consumes(d);
	}
	/* A STARTTLS that goes on: its firing follows the command, which
	 * session_tls.c records (after the delay, if any). */
	s->rfire_starttls = starttls && !session_rules_consumes(d) ? d : NULL;
	if (d->actions & RULES_A_THROTTLE)
		session_rules_throttle(s, d);
	if (d->actions & RULES_A_FAIL_TLS)
		s->fail_client_tls = d->line;
	if (d->actions & (RULES_A_REWRITE | RULES_A_TRUNCATE | RULES_A_STRIP) && !(d->actions & RULES_A_REPLY)) {
		free(s->rattach);
		s->rattach = session_rules_dup(d);
	}
	if (!session_rules_consumes(d))
		return RV_GO;

	/* never forwarded (len: the line in `in`, not its redacted record) */
	evbuffer_drain(in, len);
	if (d->actions & RULES_A_REPLY) {
		enum rule_after after = session_rules_after_of(d);

		if (cmd->verb == SMTP_VERB_BDAT && cmd->bdat_ok && cmd->bdat_size > 0) {
			/* Its chunk follows all the same: read and dropped. */
			s->bdat_left = cmd->bdat_size;
			s->bdat_discard = true;
			session_enter_state(s, ST_BDAT);
		}
		if (cmd->verb == SMTP_VERB_QUIT && after == RULE_AFTER_NONE)
			after = RULE_AFTER_CLOSE;
		session_rules_local(s, d, after);
		return RV_DONE;
	}
	if (d->actions & RULES_A_STALL) {
		s->stalled = true;
		session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: stalled: this command and what follows get no answer",
			     d->line);
		return RV_DONE;
	}
	session_rules_after_rule(s, d, session_rules_after_of(d));
	return RV_DONE;
}

/* session_tls.c recorded the client's STARTTLS: the rule that fired on
 * it is recorded right after. */
void
session_rules_starttls_recorded(struct session *s)
{
	const struct rules_decision *d = s->rfire_starttls;

	s->rfire_starttls = NULL;
	if (d != NULL)
		session_rules_fired(s, d, "starttls");
}

/* The reply change a rule asked for goes with the entry of its command. */
void
session_rules_attach(struct session *s, struct pending *p)
{
	if (s->rattach == NULL)
		return;
	if (p == NULL) { /* nothing left to change: the reply came early */
		free(s->rattach);
		s->rattach = NULL;
		return;
	}
	free(p->rule);
	p->rule = s->rattach;
	p->rule_seq = s->rule_seq; /* it fired just before */
	s->rattach = NULL;
}

/*
 * The upstream is gone because of a rule: smtptap answers what the client
 * still says.  After a refused greeting: 503 to everything but QUIT (RFC
 * 5321 3.1).  After an aborted message: RSET and NOOP 250, QUIT 221, and
 * anything else 421 and close, since there is no upstream to carry it.
 */
void
session_rules_detached(struct session *s, struct evbuffer *in, const struct smtp_cmd *cmd, const char *line,
		       size_t len, size_t inlen, unsigned flags)
{
	static const char r221[] = "221 2.0.0 smtptap: closing connection\r\n";
	static const char r250[] = "250 2.0.0 OK (smtptap: no upstream)\r\n";
	static const char r503[] = "503 5.5.1 smtptap: no service (refused by a rule); only QUIT is accepted\r\n";
	static const char r421[] =
		"421 4.4.2 smtptap: the upstream connection was reset by a rule; reconnect to go on\r\n";
	const char *reply;
	bool close = false;

	/* line: as recorded (AUTH secrets redacted); the line in `in` is inlen bytes */
	session_record(s, STORE_SIDE_CLIENT, STORE_KIND_COMMAND, flags | STORE_F_DROPPED, 0, line, len, NULL);
	evbuffer_drain(in, inlen);
	if (cmd->verb == SMTP_VERB_QUIT) {
		reply = r221;
		close = true;
		s->quit_sent = s->quit_ok = true;
	} else if (s->detached == DETACHED_REFUSED) {
		reply = r503;
	} else if (cmd->verb == SMTP_VERB_RSET || cmd->verb == SMTP_VERB_NOOP) {
		reply = r250;
	} else {
		reply = r421;
		close = true;
	}
	session_local_push(s, reply, false);
	if (close) {
		session_enter_state(s, ST_CLOSING);
		leg_close_after_flush(&s->client);
	}
}

/* ------------------------------------------------------------------------
 * the end of a message
 */

/* Decide about the end of message m; `record`: say in the transcript now
 * that the rule fired (else the caller does it with
 * session_rules_data_end_fired once the data is recorded). */
const struct rules_decision *
session_rules_data_end(struct session *s, struct msg *m, bool record)
{
	const char *rcpts[RULES_RCPTS_SEEN];
	struct rules_unit u = {
		.trigger = RULES_ON_DATA_END,
		.verb = m->bdat ? SMTP_VERB_BDAT : SMTP_VERB_DATA,
		.size = m->size,
		.has_size = true,
		.headers = m->mime.buf,
		.headers_len = m->mime.len,
	};
	const struct rules_decision *d;

	if (s->rules == NULL)
		return NULL;
	session_rules_unit_tx(s, &u, rcpts, RULES_RCPTS_SEEN);
	if ((d = session_rules_decide(s, &u)) == NULL)
		return NULL;
	if (record)
		session_rules_fired(s, d, "data-end");
	if (d->actions & RULES_A_THROTTLE)
		session_rules_throttle(s, d);
	if ((d->actions & (RULES_A_REWRITE | RULES_A_TRUNCATE)) && !session_rules_consumes(d)) {
		free(s->rattach);
		s->rattach = session_rules_dup(d); /* goes with the entry awaiting the message's reply */
	}
	return d;
}

void
session_rules_data_end_fired(struct session *s, const struct rules_decision *d)
{
	session_rules_fired(s, d, "data-end");
}

/* Hold the message's last bytes (at the head of the client's input) for
 * the decision's delay.  Returns false when the delay cannot be set up. */
bool
session_rules_hold_data_end(struct session *s, const struct rules_decision *d, size_t withheld)
{
	return session_rules_hold(s, RHOLD_DATA_END, d, withheld);
}

const struct rules_decision *
session_rules_data_end_resumed(struct session *s)
{
	return session_rules_take_resumed(s, RHOLD_DATA_END);
}

/*
 * A rule answers the end of message m itself (reply), or never (stall), or
 * closes: the message is not delivered.  `q`: the entry awaiting the
 * message's final reply (BDAT LAST), or NULL (DATA: none was pushed).
 */
void
session_rules_data_end_local(struct session *s, const struct rules_decision *d, struct msg *m, struct pending *q)
{
	enum rule_after after = session_rules_after_of(d);
	bool bdat = false;
	char *text;

	if (q != NULL) {
		/* BDAT LAST: smtptap answers its entry (the rule's reply, or
		 * nothing), set before the upstream is cut off: that turns what
		 * still awaits the upstream into 421s and moves the entries. */
		q->kind = PEND_LOCAL;
		q->msg = NULL;
		q->text = "";
		if (d->actions & RULES_A_REPLY) {
			q->owned_text = strndup(d->reply, d->reply_len);
			q->text = q->owned_text != NULL ? q->owned_text : "451 4.3.0 smtptap: out of memory\r\n";
			q->after = after;
			q->by_rule = true;
			q->cause_seq = s->rule_seq;
		}
		q = NULL; /* may have moved */
		bdat = true;
	}
	session_rules_abort_upstream(s, d, "before the end of the message, so it is not delivered");
	if (s->sink_mode) {
		char scratch[SINK_REPLY_MAX];
		struct smtp_cmd rset = { .verb = SMTP_VERB_RSET };

		sink_reply_command(&s->sink, &rset, scratch); /* the sink forgets the transaction */
	}
	/* No server saw its end: the rule's reply is the message's final
	 * reply (the one the client got). */
	text = (d->actions & RULES_A_REPLY) ? session_reply_text(d->reply, d->reply_len) : NULL;
	session_msg_close(s, m, (d->actions & RULES_A_REPLY) ? d->code : 0, text);
	free(text);
	if (d->actions & RULES_A_REPLY) {
		if (bdat)
			session_pend_flush_local(s);
		else
			session_rules_local(s, d, after);
		return;
	}
	if (d->actions & RULES_A_STALL) {
		s->stalled = true;
		session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: stalled: the message gets no answer", d->line);
		return;
	}
	session_rules_after_rule(s, d, after);
}

/* ------------------------------------------------------------------------
 * replies
 */

/*
 * A complete reply is in `reply` and about to be matched with the head of
 * the FIFO.  A rule attached to that entry (its command's rewrite,
 * truncate or strip) or a greeting/reply rule may change it: replaced in
 * place (the upstream's own is recorded, flagged altered), held for a
 * delay, kept from the client, then close or reset.  *code becomes the
 * code the client sees.
 */
void
session_rules_reply(struct session *s, struct evbuffer *reply, enum store_side side, int *code,
		    struct rules_reply *out)
{
	struct pending *head = s->pend_len > 0 ? &s->pend[s->pend_head] : NULL;
	const struct rules_decision *d = session_rules_take_resumed(s, RHOLD_REPLY);
	size_t len = evbuffer_get_length(reply);

	memset(out, 0, sizeof(*out));
	if (s->stalled) {
		out->suppress = true; /* stalled: nothing more reaches the client */
		return;
	}
	if (head != NULL && head->kind != PEND_COMMAND && head->kind != PEND_GREETING && head->kind != PEND_DATA_END &&
	    head->kind != PEND_AUTH_LINE)
		return; /* smtptap's own exchanges (TLS, prelude, silent, local) */
	if (d == NULL && head != NULL && head->rule != NULL) {
		d = head->rule; /* the command's rule: rewrite, truncate or strip its reply */
		out->rule_seq = head->rule_seq;
	} else if (d == NULL) {
		struct rules_unit u = { .trigger = RULES_ON_REPLY, .code = *code, .verb = SMTP_VERB_UNKNOWN };

		if (s->rules == NULL)
			return;
		if (head != NULL && head->kind == PEND_GREETING) {
			u.answers = RULES_ANSWERS_GREETING;
			u.trigger = RULES_ON_GREETING;
			d = session_rules_decide(s, &u);
			u.trigger = RULES_ON_REPLY;
		} else if (head != NULL && head->kind == PEND_DATA_END) {
			u.answers = RULES_ANSWERS_DATA_END;
			u.verb = SMTP_VERB_DATA;
		} else if (head != NULL && head->kind == PEND_COMMAND && head->verb == SMTP_VERB_BDAT && head->bdat_last) {
			u.answers = RULES_ANSWERS_DATA_END;
			u.verb = SMTP_VERB_BDAT;
		} else if (head != NULL) {
			u.verb = head->verb;
		}
		if (u.verb == SMTP_VERB_AUTH) {
			/* What the exchange has told so far: a LOGIN user is
			 * known from the reply to its first line on. */
			u.auth_mech = s->auth_mech[0] != '\0' ? s->auth_mech : NULL;
			u.auth_user = s->auth_user[0] != '\0' ? s->auth_user : NULL;
		}
		if (d != NULL)
			session_rules_fired(s, d, "greeting");
		else if ((d = session_rules_decide(s, &u)) != NULL)
			session_rules_fired(s, d, "reply");
		else
			return;
		if ((d->actions & RULES_A_DELAY) && session_rules_hold(s, RHOLD_REPLY, d, 0)) {
			out->held = true;
			return;
		}
		out->rule_seq = s->rule_seq;
	} else {
		out->rule_seq = s->rule_seq; /* resumed after its delay */
	}
	out->rule_line = d->line;
	if (d->actions & RULES_A_THROTTLE)
		session_rules_throttle(s, d);
	if (d->actions & (RULES_A_REPLY | RULES_A_REWRITE)) {
		/* The upstream's own reply is kept, marked altered; what the
		 * client gets is recorded as smtptap's. */
		session_record_link(s, head != NULL ? head->cmd_seq : 0, 0, side, STORE_KIND_REPLY,
				    STORE_F_ALTERED | STORE_F_RULE, 0, evbuffer_pullup(reply, -1), len, NULL);
		out->orig_code = *code;
		if ((out->orig_raw = malloc(len)) != NULL) {
			memcpy(out->orig_raw, evbuffer_pullup(reply, -1), len);
			out->orig_len = len;
		}
		evbuffer_drain(reply, len);
		evbuffer_add(reply, d->reply, d->reply_len);
		out->replaced = true;
		*code = d->code;
	}
	if (d->actions & RULES_A_STRIP)
		out->strip = d;
	if (d->actions & RULES_A_TRUNCATE) {
		size_t n = evbuffer_get_length(reply), first = n;
		struct evbuffer_ptr eol = evbuffer_search_eol(reply, NULL, NULL, EVBUFFER_EOL_LF);

		if (eol.pos >= 0)
			first = (size_t)eol.pos;
		out->truncate = d->truncate_at > 0 ? d->truncate_at : first / 2;
		if (out->truncate == 0)
			out->truncate = 1;
		if (out->truncate >= n)
			out->truncate = n > 1 ? n - 1 : 1;
	}
	if (d->actions & RULES_A_STALL) {
		out->suppress = true;
		out->stall = true;
	}
	if ((d->actions & (RULES_A_CLOSE | RULES_A_RESET)) && !(d->actions & (RULES_A_REPLY | RULES_A_REWRITE)))
		out->suppress = true; /* closed in place of the reply */
	out->after = session_rules_after_of(d);
}

/*
 * After a reply a rule changed went to the client (p: its entry, already
 * popped): keep the upstream's state in line with what the client now
 * believes, then stall, close or reset as the rule said.
 */
void
session_rules_reply_done(struct session *s, const struct pending *p, int orig_code, int code,
			 const struct rules_reply *rr)
{
	static const struct rules_decision none = { .line = 0 };
	bool cmd = p->kind == PEND_COMMAND;

	if (rr->replaced && !s->sink_mode && session_upstream_usable(s)) {
		if (cmd && p->verb == SMTP_VERB_DATA && orig_code == 354 && code != 354) {
			struct rules_decision d = none;

			d.line = rr->rule_line;
			/* The upstream waits for message data the client will
			 * not send; ending it with "." would deliver an empty
			 * message. */
			session_rules_abort_upstream(s, &d, "after its 354: the client was told DATA failed");
		} else if ((p->kind == PEND_AUTH_LINE || (cmd && p->verb == SMTP_VERB_AUTH)) && orig_code == 334 &&
			   code != 334) {
			/* RFC 4954 4: "*" cancels the exchange (the upstream
			 * answers 501, recorded but not passed on). */
			session_pend_push(s, PEND_SILENT, SMTP_VERB_AUTH);
			session_inject_upstream(s, "*\r\n", 3);
		} else if (cmd && (p->verb == SMTP_VERB_MAIL || (p->verb == SMTP_VERB_BDAT && !p->bdat_last)) &&
			   orig_code / 100 == 2 && code / 100 != 2) {
			/* The client believes there is no transaction; the
			 * upstream has one.  RSET it, unless commands are
			 * already on their way (they would land in it). */
			if (s->pend_len == 0 && s->state == ST_CMD) {
				session_pend_push(s, PEND_SILENT, SMTP_VERB_RSET);
				session_inject_upstream(s, "RSET\r\n", 6);
			} else {
				session_note(s, STORE_KIND_ACTION,
					     "rule %u: the upstream keeps its transaction (commands were already "
					     "pipelined after it)",
					     rr->rule_line);
			}
		}
	}
	if (rr->replaced && s->sink_mode && cmd &&
	    (p->verb == SMTP_VERB_MAIL || (p->verb == SMTP_VERB_BDAT && !p->bdat_last)) && orig_code / 100 == 2 &&
	    code / 100 != 2) {
		char scratch[SINK_REPLY_MAX];
		struct smtp_cmd rset = { .verb = SMTP_VERB_RSET };

		/* The sink forgets the transaction the client was told failed
		 * (its commands are answered in turn: none is pipelined in it). */
		sink_reply_command(&s->sink, &rset, scratch);
		session_msg_abandon(s);
	}
	if (rr->stall) {
		s->stalled = true;
		session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: stalled: no more replies reach the client", rr->rule_line);
	}
	if (rr->truncate > 0 || rr->after != RULE_AFTER_NONE) {
		char why[96];

		snprintf(why, sizeof(why), "%s by rule %u%s",
			 rr->after == RULE_AFTER_RESET ? "connection reset" : "connection closed", rr->rule_line,
			 rr->truncate > 0 ? " in the middle of a reply" : "");
		session_rules_after(s, rr->after == RULE_AFTER_NONE ? RULE_AFTER_CLOSE : rr->after, why);
	}
}

/* Strip a rule's capabilities from an EHLO reply (the one about to go to
 * the client: *altered if smtptap already changed it, else src; the result
 * is left in *altered).  Returns true when the rule changed the reply, so
 * that what the client gets is recorded as the rule's. */
bool
session_rules_strip(struct session *s, const struct rules_decision *d, struct evbuffer *src,
		    struct evbuffer **altered)
{
	struct evbuffer *from = *altered != NULL ? *altered : src;
	size_t len = evbuffer_get_length(from), outlen = 0, i, room = 16;
	char *a, *b, *cur;
	bool changed = false;

	for (i = 0; i < d->nstrip; i++)
		room += strlen(d->strip[i]); /* smtp_ehlo_edit wants room to add as well */
	a = malloc(len + room);
	b = malloc(len + room);

	if (a == NULL || b == NULL) {
		free(a);
		free(b);
		return false;
	}
	memcpy(a, evbuffer_pullup(from, -1), len);
	cur = a;
	for (i = 0; i < d->nstrip; i++) {
		bool had = false;
		char *other = cur == a ? b : a;

		if (smtp_ehlo_edit(cur, len, d->strip[i], false, other, len + room, &outlen, &had) == 1) {
			cur = other;
			len = outlen;
			changed = true;
		}
	}
	if (changed) {
		if (*altered == NULL)
			*altered = evbuffer_new();
		else
			evbuffer_drain(*altered, evbuffer_get_length(*altered));
		if (*altered != NULL)
			evbuffer_add(*altered, cur, len);
	} else {
		session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: nothing to strip from this EHLO reply", d->line);
	}
	free(a);
	free(b);
	return changed && *altered != NULL;
}

/* ------------------------------------------------------------------------
 * TLS handshakes
 */

/*
 * A handshake is about to start on `leg`.  Returns true when a rule took
 * it over (delayed, stalled, failed, closed): the caller does not start it.
 */
bool
session_rules_tls(struct session *s, enum rules_leg leg)
{
	enum rule_hold hold = leg == RULES_LEG_CLIENT ? RHOLD_TLS_CLIENT : RHOLD_TLS_UPSTREAM;
	const struct rules_decision *d = session_rules_take_resumed(s, hold);
	struct rules_unit u = { .trigger = RULES_ON_TLS, .leg = leg };
	unsigned fail = 0;

	if (s->stalled)
		return true; /* asked again (the client's bytes keep coming): still nothing */
	if (d == NULL) {
		if (leg == RULES_LEG_CLIENT && s->fail_client_tls != 0) {
			fail = s->fail_client_tls;
		} else if ((d = session_rules_decide(s, &u)) != NULL) {
			session_rules_fired(s, d, leg == RULES_LEG_CLIENT ? "tls client" : "tls upstream");
			if ((d->actions & RULES_A_DELAY) && session_rules_hold(s, hold, d, 0))
				return true;
		} else {
			return false;
		}
	}
	if (d != NULL && (d->actions & RULES_A_THROTTLE))
		session_rules_throttle(s, d);
	if (d != NULL && (d->actions & RULES_A_FAIL_TLS))
		fail = d->line;
	if (fail != 0 && leg == RULES_LEG_CLIENT) {
		char why[96];

		/* What a server that cannot agree on anything sends. */
		snprintf(why, sizeof(why), "client TLS handshake failed on purpose by rule %u", fail);
		session_note(s, STORE_KIND_TLS, "%s", why);
		session_client_discard(s, "the client's TLS handshake, failed by a rule");
		session_set_outcome(s, "rule-tls-fail", "%s", why);
		session_enter_state(s, ST_CLOSING);
		session_msg_abandon(s);
		session_rules_close_upstream(s, false);
		/* An implicit-TLS greeting queued for after the handshake
		 * never goes out in plaintext. */
		leg_drop_output(&s->client);
		leg_write(&s->client, tls_alert_handshake_failure, sizeof(tls_alert_handshake_failure));
		leg_close_after_flush(&s->client);
		/* Called from session_leave's own flush (the 220 just went
		 * out): nothing would write the alert otherwise. */
		leg_flush(&s->client);
		return true;
	}
	if (fail != 0) {
		char why[128], reply[200];

		snprintf(why, sizeof(why), "TLS handshake with upstream %s failed on purpose by rule %u", s->route->upstream,
			 fail);
		snprintf(reply, sizeof(reply), "421 4.7.0 smtptap: %s\r\n", why);
		session_note(s, STORE_KIND_TLS, "%s", why);
		session_fail_client(s, reply, "upstream-tls-error", why);
		return true;
	}
	if (d == NULL)
		return false;
	if (d->actions & RULES_A_STALL) {
		s->stalled = true;
		session_note_cause(s, s->rule_seq, STORE_KIND_ACTION, "rule %u: stalled: the %s TLS handshake never starts", d->line,
			     leg == RULES_LEG_CLIENT ? "client" : "upstream");
		return true;
	}
	if (d->actions & (RULES_A_CLOSE | RULES_A_RESET)) {
		session_rules_after_rule(s, d, session_rules_after_of(d));
		return true;
	}
	return false;
}
