/*
 * session_tx.c - the transaction being built: the envelope (MAIL, RCPT
 * and their replies) and each message from its first content byte to its
 * final reply, with the header summary the mime parser makes on the way.
 *
 * The store sees a transaction (one per MAIL command) once, when its
 * MAIL reply arrives (or, when the envelope is reset first, then, without
 * it), each recipient when its RCPT reply arrives (or, with no reply, when
 * the session ends), and each message tied to its transaction.  One row
 * per transaction, written once: its cost is one insert per message.  What a recipient row needs travels in its pending entry,
 * not in the envelope, so a pipelined RSET or MAIL that resets the
 * envelope before the reply arrives loses nothing.
 */
#include "smtptap/session_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "smtptap/log.h"
#include "smtptap/util.h"

static const char *session_nonempty(const char *s);
static char *session_params_dup(const struct smtp_cmd *cmd, const char *line, size_t len);

/* Write the current transaction's row, with its MAIL reply (code 0:
 * none yet), unless it was written. */
static void
session_tx_write(struct session *s, int code, const char *reply)
{
	if (s->tx_idx == 0 || s->env.written)
		return;
	store_transaction_open(s->ctx->store, &(struct store_transaction){
		.session_id = s->id,
		.idx = s->tx_idx,
		.started_us = s->env.started_us,
		.mail_seq = s->env.mail_seq,
		.mail_from = s->env.mail_from ? s->env.mail_from : "",
		.mail_params = s->env.mail_params,
		.mail_code = code,
		.mail_reply = reply,
	});
	s->env.written = true;
}

void
session_env_reset(struct session *s)
{
	size_t i;

	session_tx_write(s, 0, NULL);
	for (i = 0; i < s->env.nrcpts; i++) {
		free(s->env.rcpts[i].address);
		free(s->env.rcpts[i].params);
		free(s->env.rcpts[i].reply);
	}
	s->env.nrcpts = 0;
	s->env.bytes = 0;
	free(s->env.mail_from);
	free(s->env.mail_params);
	s->env.mail_from = NULL;
	s->env.mail_params = NULL;
	s->env.gen++;
	s->tx_idx = 0; /* the transaction ends with its envelope */
	s->tx_nrcpts = 0;
}

/* The ESMTP parameters of a MAIL/RCPT line as written, or NULL. */
static char *
session_params_dup(const struct smtp_cmd *cmd, const char *line, size_t len)
{
	const char *start, *end = line + len;

	if (cmd->nparams_total == 0)
		return NULL;
	start = cmd->params[0].key.p;
	while (end > start && (end[-1] == '\n' || end[-1] == '\r'))
		end--;
	return strndup(start, (size_t)(end - start));
}

/* MAIL FROM (recorded as p->cmd_seq): a new envelope and transaction. */
void
session_env_add_mail(struct session *s, struct pending *p, const struct smtp_cmd *cmd, const char *line,
		     size_t len)
{
	session_env_reset(s);
	s->env.mail_from = strndup(cmd->has_path ? cmd->path.p : "", cmd->has_path ? cmd->path.len : 0);
	s->env.mail_params = session_params_dup(cmd, line, len);
	s->tx_idx = ++s->ntx;
	s->env.started_us = util_now_us();
	s->env.mail_seq = p->cmd_seq;
	s->env.written = false;
	p->tx_idx = s->tx_idx;
}

void
session_env_mail_reply(struct session *s, const struct pending *p, int code, const char *raw, size_t len)
{
	char *text;

	if (p->tx_idx == 0)
		return;
	text = session_reply_text(raw, len);
	if (p->tx_idx == s->tx_idx && !s->env.written)
		session_tx_write(s, code, text);
	else /* reset before its reply came (pipelined RSET or MAIL) */
		store_transaction_mail_reply(s->ctx->store, s->id, p->tx_idx, code, text);
	free(text);
}

/*
 * RCPT TO (recorded as p->cmd_seq).  Its recipient row is written when the
 * reply comes, from what p keeps (an address longer than RCPT_TEXT_MAX is
 * cut there: the event has it whole).  The envelope keeps it too, within
 * its bounds; beyond them a recipient is still recorded, just not kept in
 * memory for the session.
 */
void
session_env_add_rcpt(struct session *s, struct pending *p, const struct smtp_cmd *cmd, const char *line,
		     size_t len)
{
	struct rcpt *r;
	char *params;

	p->rcpt_idx = UINT32_MAX;
	if (s->tx_idx != 0) {
		p->tx_idx = s->tx_idx;
		p->tx_rcpt_idx = ++s->tx_nrcpts;
		p->rcpt_address = strndup(cmd->has_path ? cmd->path.p : "",
					  cmd->has_path ? (cmd->path.len < RCPT_TEXT_MAX ? cmd->path.len : RCPT_TEXT_MAX) : 0);
		params = session_params_dup(cmd, line, len);
		if (params != NULL && strlen(params) > RCPT_TEXT_MAX)
			params[RCPT_TEXT_MAX] = '\0';
		p->rcpt_params = params;
	}
	if (s->env.nrcpts >= RCPT_MAX || s->env.bytes + len > ENV_BYTES_MAX)
		return;
	if (s->env.nrcpts == s->env.cap) {
		size_t cap = s->env.cap ? s->env.cap * 2 : 8;
		struct rcpt *n = realloc(s->env.rcpts, cap * sizeof(*n));

		if (n == NULL)
			return;
		s->env.rcpts = n;
		s->env.cap = cap;
	}
	r = &s->env.rcpts[s->env.nrcpts];
	memset(r, 0, sizeof(*r));
	r->address = strndup(cmd->has_path ? cmd->path.p : "", cmd->has_path ? cmd->path.len : 0);
	r->params = session_params_dup(cmd, line, len);
	p->env_gen = s->env.gen;
	p->rcpt_idx = (uint32_t)s->env.nrcpts++;
	s->env.bytes += len;
}

/* A RCPT reply (p is the popped entry, whose strings this frees). */
void
session_env_rcpt_reply(struct session *s, struct pending *p, int code, const char *raw, size_t len)
{
	struct rcpt *r;
	char *text = session_reply_text(raw, len);

	if (p->tx_idx != 0) {
		store_rcpt_add(s->ctx->store, &(struct store_rcpt){
			.session_id = s->id,
			.transaction_idx = p->tx_idx,
			.idx = (int)p->tx_rcpt_idx,
			.rcpt_seq = p->cmd_seq,
			.address = p->rcpt_address ? p->rcpt_address : "",
			.params = p->rcpt_params,
			.reply_code = code,
			.reply = text,
		});
	}
	free(p->rcpt_address);
	free(p->rcpt_params);
	p->rcpt_address = p->rcpt_params = NULL;
	if (p->env_gen != s->env.gen || p->rcpt_idx >= s->env.nrcpts) {
		free(text);
		return;
	}
	r = &s->env.rcpts[p->rcpt_idx];
	r->code = code;
	free(r->reply);
	r->reply = text;
}

/* See session_int.h: the entry's message never got its final reply, its
 * recipient no reply at all. */
void
session_pend_release(struct session *s, struct pending *p)
{
	if (p->msg != NULL) {
		session_msg_close(s, p->msg, 0, NULL);
		p->msg = NULL;
	}
	if (p->kind == PEND_COMMAND && p->verb == SMTP_VERB_RCPT && p->tx_idx != 0) {
		store_rcpt_add(s->ctx->store, &(struct store_rcpt){
			.session_id = s->id,
			.transaction_idx = p->tx_idx,
			.idx = (int)p->tx_rcpt_idx,
			.rcpt_seq = p->cmd_seq,
			.address = p->rcpt_address ? p->rcpt_address : "",
			.params = p->rcpt_params,
		});
	}
	free(p->rcpt_address);
	free(p->rcpt_params);
	p->rcpt_address = p->rcpt_params = NULL;
	free(p->owned_text);
	p->owned_text = NULL;
	free(p->rule);
	p->rule = NULL;
}

struct msg *
session_msg_new(struct session *s, bool bdat)
{
	struct msg *m = malloc(sizeof(*m));

	if (m == NULL) {
		log_warn("s=%" PRId64 " cannot record a message", s->id);
		return NULL;
	}
	memset(m, 0, offsetof(struct msg, mime));
	m->id = store_message_new_id(s->ctx->store);
	m->idx = ++s->nmsgs;
	m->bdat = bdat;
	smtp_data_init(&m->data);
	mime_hdr_init(&m->mime);
	return m;
}

void
session_msg_open(struct session *s, struct msg *m)
{
	store_message_open(s->ctx->store, &(struct store_message){
		.id = m->id,
		.session_id = s->id,
		.transaction_idx = s->tx_idx,
		.idx = m->idx,
		.started_us = util_now_us(),
		.mail_from = s->env.mail_from ? s->env.mail_from : "",
		.mail_params = s->env.mail_params,
		.transport = m->bdat ? "bdat" : "data",
		/* Its data events get seqs from here on (messages.data_seq_first). */
		.data_seq_first = s->seq + 1,
	});
}

void
session_msg_feed(struct msg *m, const char *p, size_t len)
{
	if (!m->mime.done && len > 0)
		mime_hdr_feed(&m->mime, p, len);
}

/* The message being received (if any) ends here without a final reply. */
void
session_msg_abandon(struct session *s)
{
	if (s->cur_msg == NULL)
		return;
	session_msg_close(s, s->cur_msg, 0, NULL);
	s->cur_msg = NULL;
}

/* Record the end of a message and free it.  code 0: no final reply. */
void
session_msg_close(struct session *s, struct msg *m, int code, const char *reply)
{
	struct mime_summary *sum = malloc(sizeof(*sum));

	/* Its content is queued before its end, so a committed end implies
	 * committed content. */
	session_data_flush(s);
	if (sum != NULL)
		mime_hdr_summarise(&m->mime, sum);
	if (!m->complete)
		session_note(s, STORE_KIND_ACTION, "message %d cut short after %" PRIu64 " bytes: recorded as incomplete",
			     m->idx, m->bdat ? m->size : m->data.body_bytes);
	store_message_close(s->ctx->store, &(struct store_message_end){
		.id = m->id,
		.ended_us = util_now_us(),
		.size = m->bdat ? m->size : m->data.body_bytes,
		.complete = m->complete,
		.subject = session_nonempty(sum ? sum->subject : NULL),
		.from = session_nonempty(sum ? sum->from : NULL),
		.to = session_nonempty(sum ? sum->to : NULL),
		.message_id_hdr = session_nonempty(sum ? sum->message_id : NULL),
		.date = session_nonempty(sum ? sum->date : NULL),
		.reply_code = code,
		.reply = reply,
		.data_seq_last = s->seq, /* its data was flushed above */
	});
	if (s->ctx->cfg->verbosity > 0)
		log_info("s=%" PRId64 " ** message %d: %" PRIu64 " bytes%s, subject \"%s\", final reply %d", s->id, m->idx,
			 m->bdat ? m->size : m->data.body_bytes, m->complete ? "" : " (incomplete)",
			 sum ? sum->subject : "", code);
	free(sum);
	free(m->reply);
	free(m);
}

/* An absent header is NULL in the store ("unknown"), not "". */
static const char *
session_nonempty(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

/* A reply's text as kept with a recipient or message: CRLFs as "\n", no
 * trailing newline, bounded. */
char *
session_reply_text(const char *raw, size_t len)
{
	char *t;
	size_t i, n = 0;

	if (len > REPLY_TEXT_MAX)
		len = REPLY_TEXT_MAX;
	t = malloc(len + 1);
	if (t == NULL)
		return NULL;
	for (i = 0; i < len; i++) {
		if (raw[i] == '\r' && i + 1 < len && raw[i + 1] == '\n')
			continue;
		t[n++] = raw[i];
	}
	while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r'))
		n--;
	t[n] = '\0';
	return t;
}
