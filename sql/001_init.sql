-- 001_init.sql - the first smtptap schema (PRAGMA user_version 1).
--
-- 002_schema2.sql changes it: events.message_id is renamed message_row and
-- messages.message_id message_id_hdr, recipients belong to transactions,
-- and sessions, events and messages gain columns.  The comments here
-- describe version 1; read 002 for what is current.
--
-- smtptap records every SMTP session it relays or answers:
--   sessions    one row per client connection
--   events      everything that crossed either leg, plus smtptap's own
--               notes, in the order it happened
--   messages    one row per message (DATA or BDAT) with its envelope and a
--               summary of its headers
--   recipients  the RCPT TO addresses of each message and their replies
--
-- Conventions:
--   * Times are unix time in microseconds (INTEGER); in the sqlite3 CLI,
--     datetime(t_us / 1000000, 'unixepoch') shows them.
--   * Text columns hold what was seen on the wire.  That is usually UTF-8
--     but not always (8BITMIME, broken clients): readers must treat it as
--     bytes.
--   * NULL means "not known" or "does not apply".
--   * Rows are written by one writer thread in batched transactions (WAL),
--     so the file can be read while a proxy records into it.
--
-- The store opens only files whose application_id is this value ('STAP'),
-- so it never migrates another program's SQLite database.
PRAGMA application_id = 1398030672;

CREATE TABLE sessions (
	id INTEGER PRIMARY KEY,		-- what `smtptap show ID` takes
	started_us INTEGER NOT NULL,	-- the client connected
	ended_us INTEGER,		-- both legs closed; NULL while live
	listener TEXT,			-- local address the client reached, "127.0.0.1:2525"
	client TEXT,			-- the client's address, "127.0.0.1:53422"
	upstream TEXT,			-- upstream as configured ("mx.example:25"), NULL in sink mode
	upstream_addr TEXT,		-- the address actually connected to, "[::1]:25"
	mode TEXT NOT NULL,		-- 'relay' or 'sink'
	client_tls TEXT,		-- JSON object describing TLS on the client leg, NULL if plaintext
	upstream_tls TEXT,		-- the same for the upstream leg
	outcome TEXT,			-- how it ended: 'quit', 'client-closed', ...; NULL while
					-- live, 'interrupted' if smtptap stopped without closing it
	detail TEXT			-- one human-readable line about the outcome, or NULL
);
-- The sessions still live, which smtptap marks 'interrupted' when it
-- starts: finding them must not read the whole table.
CREATE INDEX sessions_live ON sessions (id) WHERE outcome IS NULL;

-- One row per thing that happened in a session.  An ordinary rowid table
-- (not WITHOUT ROWID) because a row may carry up to ~64 KiB of message data.
CREATE TABLE events (
	session_id INTEGER NOT NULL,	-- sessions.id
	seq INTEGER NOT NULL,		-- 1, 2, ... within the session, in order of occurrence
	t_us INTEGER NOT NULL,		-- when
	side TEXT NOT NULL,		-- who produced it: 'client', 'upstream' or 'proxy' (smtptap)
	kind TEXT NOT NULL,		-- 'connect', 'command', 'reply', 'data', 'auth',
					-- 'action', 'close' or 'tls'
	flags INTEGER NOT NULL DEFAULT 0, -- bit set: 1 injected by smtptap, 2 altered,
					-- 4 dropped, 8 raw is redacted, 16 sent to the client,
					-- 32 sent to the upstream, 64 incomplete line
	message_id INTEGER,		-- messages.id for kind 'data' (and related events)
	text TEXT,			-- a human-readable note (connect, close, action), or NULL
	raw BLOB			-- the exact bytes on the wire (commands, replies, message
					-- data with dot-stuffing), or NULL
);
-- A session's transcript, in order; UNIQUE also catches a duplicated seq.
CREATE UNIQUE INDEX events_session_seq ON events (session_id, seq);
-- A message's data chunks, in order (`smtptap export`).  Most events belong
-- to no message, so they are left out of the index.
CREATE INDEX events_message ON events (message_id, seq) WHERE message_id IS NOT NULL;

CREATE TABLE messages (
	id INTEGER PRIMARY KEY,
	session_id INTEGER NOT NULL,	-- sessions.id
	idx INTEGER NOT NULL,		-- 1, 2, ... within the session (`export --message N`)
	started_us INTEGER NOT NULL,	-- DATA accepted (354) or first BDAT chunk sent
	ended_us INTEGER,		-- the final reply (or the cut), NULL while in progress
	mail_from TEXT,			-- MAIL FROM path without <>; '' for the null sender
	mail_params TEXT,		-- MAIL FROM ESMTP parameters as written ("SIZE=123 BODY=8BITMIME")
	transport TEXT,			-- 'data' or 'bdat'
	size INTEGER,			-- message bytes after dot-unstuffing
	complete INTEGER,		-- 1 whole message seen, 0 cut short; NULL while in progress
	subject TEXT,			-- header summaries, decoded (RFC 2047)
	from_hdr TEXT,
	to_hdr TEXT,
	message_id TEXT,		-- the Message-ID header (not a row id)
	date_hdr TEXT,
	upstream_code INTEGER,		-- the final reply's code (250, 554, ...), NULL if none came
	upstream_reply TEXT		-- its full text, lines joined by "\n"
);
CREATE INDEX messages_session ON messages (session_id);

CREATE TABLE recipients (
	message_id INTEGER NOT NULL,	-- messages.id
	idx INTEGER NOT NULL,		-- 1, 2, ... in RCPT TO order
	address TEXT,			-- path without <>
	params TEXT,			-- RCPT TO ESMTP parameters as written, or NULL
	reply_code INTEGER,		-- the reply to this RCPT TO, NULL if none was seen
	reply_text TEXT,		-- its full text, lines joined by "\n"
	PRIMARY KEY (message_id, idx)
);
