-- 002_schema2.sql - schema 2 (PRAGMA user_version 2), migrated in place
-- from schema 1 (001_init.sql, whose comments still describe every column
-- not mentioned here).
--
-- What schema 2 adds, and why:
--   * clear names: a row id and a header are no longer both "message_id"
--       events.message_id   -> events.message_row     (a messages.id)
--       messages.message_id -> messages.message_id_hdr (the Message-ID header)
--   * links between events: a reply names the event it answers, and what
--     smtptap did names the event that caused it (events.answers_seq,
--     events.cause_seq), so a reader never re-simulates the pipelining FIFO
--   * transactions: one row per MAIL FROM, with its reply, whether or not
--     a message follows; recipients belong to a transaction and are written
--     when their RCPT reply arrives (with it), so RCPT-without-DATA and
--     pipelined MAIL/RCPT/BDAT sessions keep every recipient and its reply
--   * per-session summary columns (counts, bytes, HELO name, AUTH mechanism
--     and user, TLS versions, client IP) kept up to date by the writer
--     thread, once per batch: listing sessions is one indexed read
--   * indexes for the questions users ask: by sender, recipient,
--     Message-ID header, client address, outcome and time (not a full-text
--     index: see the end of this file)
--   * id_floor, so that deleting the newest sessions (prune) never lets an
--     id be handed out twice
--
-- Sessions recorded under schema 1 are migrated as they were recorded: each
-- of their messages becomes a transaction of its own (same idx), with the
-- message's recipients; their links (answers_seq, cause_seq) and their
-- transactions' MAIL replies stay NULL (not recorded then); their summary
-- columns are computed from their events.  The backfill uses functions
-- smtptap registers on its connection (smtptap_client_ip, smtptap_helo,
-- smtptap_auth_mech, smtptap_auth_user: the writer's own code), so this
-- file is applied by smtptap, not by the sqlite3 shell.
--
-- New files also get PRAGMA auto_vacuum = INCREMENTAL (set by store.c
-- before the first table: it cannot be switched on later without a VACUUM),
-- so that `smtptap prune` and the proxy's --retain/--max-db-size give the
-- space back to the file system.

-- ---- clear names -----------------------------------------------------
-- (RENAME COLUMN also rewrites the index events_message.)
ALTER TABLE events RENAME COLUMN message_id TO message_row;
ALTER TABLE messages RENAME COLUMN message_id TO message_id_hdr;

-- ---- links between events ---------------------------------------------
-- Both are the seq of another event of the same session, or NULL (none, or
-- not recorded: sessions of schema 1).
--   answers_seq  on a reply (kind 'reply', any side): the event it answers:
--                the command, the AUTH response line, the last 'data'
--                event of a DATA stream (for the final reply), or the
--                client's 'connect' event (for the greeting).  An altered
--                reply and the reply smtptap sent in its place both answer
--                the same command.
--   cause_seq    on what smtptap did or noted (side 'proxy'): the event that
--                caused it: for a reply sent in place of an altered one,
--                that altered event (flag 2); for smtptap's own EHLO and
--                STARTTLS to the upstream, the reply that prompted them; for
--                a reply smtptap injects when it gives up on a session, the
--                note saying why; for a note about discarded bytes, the
--                dropped event.  Fault rules link their actions the same way.
-- Finding the other direction (what answers this command, what replaced
-- this altered reply) is a read of one session's events, which
-- events_session_seq already serves.
ALTER TABLE events ADD COLUMN answers_seq INTEGER;
ALTER TABLE events ADD COLUMN cause_seq INTEGER;

-- ---- transactions ---------------------------------------------------------
-- One row per MAIL FROM command, written once by the writer: when its
-- reply arrives (with it), or, if the envelope is reset before that, then
-- (and the reply filled in when it comes).  A transaction ends at the next
-- MAIL, RSET, HELO/EHLO/LHLO, a STARTTLS that resets the envelope, or the
-- end of the session.  Most have one message; one refused or abandoned
-- before DATA has none.  A pipelined BDAT message can be recorded a moment
-- before its transaction (its MAIL reply comes after the chunk): readers
-- join them, never assume one comes first.
--
-- Keyed by (session_id, idx), WITHOUT ROWID, like recipients below: the
-- writer adds one row and one B-tree entry per transaction, and a
-- session's transactions and recipients are one range each (show, prune).
CREATE TABLE transactions (
	session_id INTEGER NOT NULL,	-- sessions.id
	idx INTEGER NOT NULL,		-- 1, 2, ... within the session
	started_us INTEGER NOT NULL,	-- the MAIL command was read
	mail_seq INTEGER,		-- events.seq of the MAIL command
	mail_from TEXT,			-- path without <>; '' for the null sender
	mail_params TEXT,		-- ESMTP parameters as written, or NULL
	mail_code INTEGER,		-- the reply to MAIL (250, 550, ...), NULL if none came
	mail_reply TEXT,		-- its full text, lines joined by "\n"
	PRIMARY KEY (session_id, idx)
) WITHOUT ROWID;
-- "what did this sender send": case-insensitive; the entries carry the
-- key, so the session is at hand without reading the row
CREATE INDEX transactions_mail_from ON transactions (mail_from COLLATE NOCASE);

-- The transaction (its idx within the session) each message belongs to;
-- NULL for a message opened without a MAIL command, which a server refuses.
ALTER TABLE messages ADD COLUMN transaction_idx INTEGER;

-- Schema 1 had one envelope per message: each message becomes a
-- transaction of its own, numbered as the message was.
INSERT INTO transactions (session_id, idx, started_us, mail_from, mail_params)
	SELECT session_id, idx, started_us, mail_from, mail_params FROM messages;
UPDATE messages SET transaction_idx = idx;

-- ---- recipients, now per transaction ------------------------------------------
-- One row per RCPT TO, written when its reply arrives (with it), or at the
-- end of the session when none came.
CREATE TABLE recipients_v2 (
	session_id INTEGER NOT NULL,	-- sessions.id
	transaction_idx INTEGER NOT NULL, -- transactions.idx within the session
	idx INTEGER NOT NULL,		-- 1, 2, ... in RCPT TO order within the transaction
	rcpt_seq INTEGER,		-- events.seq of the RCPT command (its reply: the
					-- reply event whose answers_seq is this)
	address TEXT,			-- path without <>
	params TEXT,			-- RCPT TO ESMTP parameters as written, or NULL
	reply_code INTEGER,		-- the reply to this RCPT TO, NULL if none was seen
	reply_text TEXT,		-- its full text, lines joined by "\n"
	PRIMARY KEY (session_id, transaction_idx, idx)
) WITHOUT ROWID;
INSERT INTO recipients_v2 (session_id, transaction_idx, idx, address, params, reply_code, reply_text)
	SELECT m.session_id, m.idx, r.idx, r.address, r.params, r.reply_code, r.reply_text
	FROM recipients r JOIN messages m ON m.id = r.message_id;
DROP TABLE recipients;
ALTER TABLE recipients_v2 RENAME TO recipients;
-- "what did we send to this address": case-insensitive, the session at hand
CREATE INDEX recipients_address ON recipients (address COLLATE NOCASE);

-- ---- session summaries --------------------------------------------------------
-- Kept by the writer thread in the same transactions as the rows they
-- count (one UPDATE per session per batch), so they always agree with the
-- events and messages a reader sees.
ALTER TABLE sessions ADD COLUMN client_ip TEXT;		-- the client's address without the port
ALTER TABLE sessions ADD COLUMN helo TEXT;		-- the latest HELO/EHLO/LHLO name given
ALTER TABLE sessions ADD COLUMN auth_mech TEXT;		-- the latest AUTH mechanism tried ("PLAIN")
ALTER TABLE sessions ADD COLUMN auth_user TEXT;		-- its user name when it could be decoded
							-- (PLAIN, LOGIN, CRAM-MD5, XOAUTH2); the
							-- password is never stored
ALTER TABLE sessions ADD COLUMN client_tls_version TEXT; -- client_tls's "version" ("TLSv1.3")
ALTER TABLE sessions ADD COLUMN upstream_tls_version TEXT; -- upstream_tls's
ALTER TABLE sessions ADD COLUMN nevents INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN ntransactions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN nmessages INTEGER NOT NULL DEFAULT 0;
-- The bytes each party sent, as recorded in events.raw (message data with
-- its dot-stuffing; a redacted AUTH line counts as its redacted form):
ALTER TABLE sessions ADD COLUMN client_bytes INTEGER NOT NULL DEFAULT 0;	-- the client
ALTER TABLE sessions ADD COLUMN upstream_bytes INTEGER NOT NULL DEFAULT 0;	-- the upstream
ALTER TABLE sessions ADD COLUMN proxy_bytes INTEGER NOT NULL DEFAULT 0;	-- smtptap itself (sink
									-- replies, injected bytes)

UPDATE sessions SET client_ip = smtptap_client_ip(client),
	client_tls_version = CASE WHEN json_valid(client_tls) THEN json_extract(client_tls, '$.version') END,
	upstream_tls_version = CASE WHEN json_valid(upstream_tls) THEN json_extract(upstream_tls, '$.version') END;
UPDATE sessions SET nevents = e.n, client_bytes = e.cb, upstream_bytes = e.ub, proxy_bytes = e.pb
	FROM (SELECT session_id, count(*) AS n,
		     coalesce(sum(CASE WHEN side = 'client' THEN length(raw) END), 0) AS cb,
		     coalesce(sum(CASE WHEN side = 'upstream' THEN length(raw) END), 0) AS ub,
		     coalesce(sum(CASE WHEN side = 'proxy' THEN length(raw) END), 0) AS pb
	      FROM events GROUP BY session_id) AS e
	WHERE e.session_id = sessions.id;
UPDATE sessions SET nmessages = m.n, ntransactions = m.n
	FROM (SELECT session_id, count(*) AS n FROM messages GROUP BY session_id) AS m
	WHERE m.session_id = sessions.id;
-- The latest HELO/EHLO/LHLO the client sent (not one smtptap dropped).
UPDATE sessions SET helo = (
	SELECT smtptap_helo(raw) FROM events
	WHERE session_id = sessions.id AND side = 'client' AND kind = 'command' AND (flags & 4) = 0
	  AND smtptap_helo(raw) IS NOT NULL
	ORDER BY seq DESC LIMIT 1);
-- The latest AUTH command; its user from the initial response or, failing
-- that, the first response line after it, unless recorded redacted (flag 8).
UPDATE sessions SET (auth_mech, auth_user) = (
	SELECT smtptap_auth_mech(a.raw),
	       coalesce(CASE WHEN (a.flags & 8) = 0 THEN smtptap_auth_user(a.raw, NULL) END,
			(SELECT CASE WHEN (l.flags & 8) = 0 THEN smtptap_auth_user(a.raw, l.raw) END
			 FROM events l
			 WHERE l.session_id = a.session_id AND l.seq > a.seq AND l.side = 'client' AND l.kind = 'auth'
			 ORDER BY l.seq LIMIT 1))
	FROM events a
	WHERE a.session_id = sessions.id AND a.side = 'client' AND a.kind = 'command'
	  AND smtptap_auth_mech(a.raw) IS NOT NULL
	ORDER BY a.seq DESC LIMIT 1);

-- ---- indexes for the questions users ask --------------------------------------
-- time: a range of started_us (--since/--until); the newest N is the
-- rowid order (ORDER BY id DESC) and needs no index
CREATE INDEX sessions_started ON sessions (started_us);
-- client address, outcome: with id, so "the newest N with this outcome"
-- walks the index backwards without sorting
CREATE INDEX sessions_client_ip ON sessions (client_ip, id);
CREATE INDEX sessions_outcome ON sessions (outcome, id);
-- a message by its Message-ID header (from an application's log)
CREATE INDEX messages_message_id_hdr ON messages (message_id_hdr) WHERE message_id_hdr IS NOT NULL;
-- sender and recipient: transactions_mail_from and recipients_address above.
-- No full-text index: FTS5 (trigram, kept by triggers) was measured at
-- about 200 us of writer CPU per 1 KiB message, three times what the
-- writer spent on the whole message before; a substring search (--search)
-- scans the summaries of the sessions its other filters leave instead.

-- ---- ids ----------------------------------------------------------------------
-- Ids are handed out by smtptap from the highest one in each table.  When
-- prune deletes the newest rows too, it records here the highest id it
-- deleted, and the next proxy continues above it: an id printed once never
-- names another session later.
CREATE TABLE id_floor (
	name TEXT PRIMARY KEY,	-- 'sessions' or 'messages'
	max_id INTEGER NOT NULL	-- the highest id deleted from that table
) WITHOUT ROWID;
