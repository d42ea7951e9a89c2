/*
 * sink.h - the permissive capture server's replies (sink mode).
 *
 * When there is no upstream, smtptap answers the client itself like a
 * development mail catcher: every sender, recipient, credential and message
 * is accepted.  This module only decides the reply text; the session feeds
 * those replies through the same path as an upstream's, so recording,
 * pipelining order and DATA/BDAT/AUTH handling are shared with relay mode.
 * No I/O; unit-tested directly.
 */
#ifndef SMTPTAP_SINK_H
#define SMTPTAP_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtptap/smtp.h"

/* Big enough for the longest reply (the EHLO list). */
#define SINK_REPLY_MAX 512

enum sink_auth {
	SINK_AUTH_NONE = 0,
	SINK_AUTH_PLAIN_WAIT,	/* sent "334 ", waiting for the credentials */
	SINK_AUTH_LOGIN_USER,	/* sent "334 Username:" */
	SINK_AUTH_LOGIN_PASS,	/* sent "334 Password:" */
};

struct sink {
	int64_t session_id;
	bool helo;	    /* a HELO/EHLO was seen */
	bool in_tx;	    /* MAIL accepted */
	bool authed;
	unsigned nrcpt;	    /* RCPTs accepted in this transaction */
	unsigned nmsg;	    /* messages accepted in this session */
	uint64_t bdat_bytes; /* bytes in this BDAT transaction so far */
	bool in_bdat;	     /* a BDAT chunk was accepted in this transaction */
	enum sink_auth auth;
};

void sink_init(struct sink *sk, int64_t session_id);

/* Each function writes one complete reply (CRLF-terminated, possibly
 * multi-line) into out (SINK_REPLY_MAX bytes) and returns its length. */
size_t sink_reply_greeting(struct sink *sk, char *out);
size_t sink_reply_command(struct sink *sk, const struct smtp_cmd *cmd, char *out);
/* A client line answering a 334 challenge (terminator stripped). */
size_t sink_reply_auth_line(struct sink *sk, const char *line, size_t len, char *out);
/* The end of a DATA stream (after "."). */
size_t sink_reply_data_end(struct sink *sk, uint64_t size, char *out);
/* The end of a BDAT chunk of `size` bytes (called after the chunk). */
size_t sink_reply_bdat_chunk(struct sink *sk, const struct smtp_cmd *cmd, char *out);

#endif
