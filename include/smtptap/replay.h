/*
 * replay.h - client replay: re-send the client side of recorded sessions
 * to a server, through the same session machinery as the proxy.
 *
 * Each replay is a session (session.h, session_start_inproc) whose client
 * leg is one end of a bufferevent pair; the driver here holds the other
 * end and plays the recorded client (recording.h) into it: one pipelining
 * group at a time, then it waits for the group's replies, as the client
 * did.  The session relays, records (mode "replay", replay_of the
 * original) and upgrades the upstream leg to TLS exactly as it does for a
 * live client; the driver reads the replies the session passes on, like a
 * client, and keeps each with the unit it answers for the comparison.
 *
 * A driver takes a list of session ids and runs up to `concurrency` at
 * once on one event loop (batch replay builds on this); each result is
 * handed to a callback as it is complete.
 */
#ifndef SMTPTAP_REPLAY_H
#define SMTPTAP_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtptap/recording.h"
#include "smtptap/tls.h"

enum replay_tls {
	REPLAY_TLS_RECORDED = 0, /* the upstream leg's mode as recorded (in sink mode: the client's) */
	REPLAY_TLS_NONE,
	REPLAY_TLS_STARTTLS,
	REPLAY_TLS_IMPLICIT,
};

struct replay_opts {
	const char *db;		/* read from and recorded into */
	const char *to;		/* HOST:PORT */
	enum replay_tls tls;
	struct tls_config tls_cfg; /* verification, trust, key log (upstream side only) */
	const char *sni;	/* NULL: the host of `to` */
	const char *auth_user, *auth_pass; /* --auth: make the AUTH exchange again; NULL: as recorded */
	bool timing_original;	/* the recorded pauses between groups; else none */
	bool strict;		/* compare reply text too */
	bool redact_auth;	/* the replay's own record (default on) */
	int reply_timeout, connect_timeout; /* seconds */
	int verbosity;
	unsigned concurrency;	/* sessions at once, >= 1 */
	/* A session recorded with its credentials redacted, without --auth:
	 * a result with `skipped` set (batch replay) instead of an error. */
	bool skip_redacted;
};

/* What became of one unit of the recording. */
struct replay_unit {
	bool sent;
	const char *skipped; /* why it was not sent (static), NULL */
	char *reply;	     /* the reply it got (owned), NULL none */
	size_t reply_len;
	bool compared;	     /* a reply was due (recorded, or got now) */
	unsigned diff;	     /* REC_DIFF_* against the recorded reply */
	bool differs;	     /* one of them is missing, or diff != 0 */
};

struct replay_result {
	int64_t id;	   /* the recorded session */
	int64_t replay_id; /* the session that replayed it, 0 none */
	const struct recording *rec; /* NULL when it could not be loaded */
	char *greeting;	   /* the greeting the replay got (owned), NULL none */
	size_t greeting_len;
	unsigned greeting_diff;
	bool greeting_differs;
	struct replay_unit *units; /* rec->nunits of them */
	unsigned unsolicited;	   /* replies that answered nothing */
	unsigned cancelled;	   /* AUTH exchanges cancelled ("*"): the server asked more than recorded */
	const char *outcome;	   /* the replay session's (static), NULL none */
	size_t ndiff;		   /* units (and greeting) that differ */
	bool error;		   /* not replayed, or could not reach the server: errmsg says why */
	bool notfound;		   /* ... because there is no such session */
	bool skipped;		   /* not replayed, by choice (skip_redacted): errmsg says why */
	char errmsg[512];
};

typedef void (*replay_result_cb)(const struct replay_result *r, void *arg);

/*
 * Can `rec` be replayed with `o`?  (Redacted credentials without --auth,
 * a mechanism --auth cannot make again, a diff without reply links.)
 * Returns 0, or -1 with one line in err.  `diff`: a comparison is wanted.
 */
int replay_check(const struct recording *rec, const struct replay_opts *o, bool diff, char *err, size_t errsz);

/* The TLS mode a recording is replayed with under o. */
enum replay_tls replay_tls_mode(const struct recording *rec, const struct replay_opts *o);
const char *replay_tls_name(enum replay_tls t);

/*
 * Replay sessions ids[0..nids) to o->to, o->concurrency at once; cb gets
 * each result once it is complete (an error result too: a session that
 * does not exist or fails replay_check).  Returns 0 when everything ran
 * (whatever the results), -1 when the replay could not start at all
 * (database, TLS set-up: reported).
 */
int replay_run(const struct replay_opts *o, const int64_t *ids, size_t nids, bool diff, replay_result_cb cb,
	       void *arg);

#endif
