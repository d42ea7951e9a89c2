-- 007_message_seqs.sql - where a message's data events are, kept on the
-- message instead of indexed per event (PRAGMA user_version 7).
--
-- export, show --raw and replay read a message's data events in order.
-- Through 006 the partial index events_message (message_row, seq) found
-- them; but SQLite weighs every partial index on every insert, and that
-- one cost the writer ~11,700 instructions per 1 KiB message (callgrind,
-- 2000 messages over 10 connections, with and without it: 7.7% of the
-- writer's work).  A message's data events all lie in its session between
-- the message's start and its end, so the message row keeps that range of
-- event seqs, and a reader walks the session's events there through
-- events_session_seq, which every insert maintains anyway.
-- NULL: not known (not ended, or written by hand): the session's start or
-- end bounds the walk instead.
ALTER TABLE messages ADD COLUMN data_seq_first INTEGER; -- no data event of it has a lower seq
ALTER TABLE messages ADD COLUMN data_seq_last INTEGER;  -- nor a higher one

-- Existing messages: read through events_message while it is still there.
UPDATE messages SET data_seq_first = r.lo, data_seq_last = r.hi
	FROM (SELECT message_row, min(seq) AS lo, max(seq) AS hi
	      FROM events WHERE message_row IS NOT NULL GROUP BY message_row) AS r
	WHERE r.message_row = messages.id;
-- A message without data events: an empty range, so readers find nothing
-- at once.
UPDATE messages SET data_seq_first = 1, data_seq_last = 0 WHERE data_seq_first IS NULL;

DROP INDEX events_message;
