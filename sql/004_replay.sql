-- 004_replay.sql - replays and mocks link to what they replay
-- (PRAGMA user_version 4).
--
-- `smtptap replay ID` re-sends the client side of session ID to a server,
-- and `smtptap mock ID` plays its server side to a client; either is
-- recorded as a session of its own (mode 'replay' or 'mock') whose
-- replay_of names session ID, so that `sessions` and `show` lead from one
-- to the other.  NULL for every other session (and for every session
-- recorded before this migration).  Not a foreign key: the original may
-- be pruned before its replays, which then keep the number it had.
ALTER TABLE sessions ADD COLUMN replay_of INTEGER;

-- "what replays this session": only replays and mocks are in the index.
CREATE INDEX sessions_replay_of ON sessions (replay_of) WHERE replay_of IS NOT NULL;
