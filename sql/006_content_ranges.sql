-- 006_content_ranges.sql - which content segments a session uses, kept
-- per session instead of indexed per event (PRAGMA user_version 6).
--
-- prune and retention delete the segments no session refers to any more
-- (content_sweep in src/content.c).  Through 005 they asked the partial
-- index events_content, one entry per data event; but SQLite weighs every
-- partial index on every insert, and that index cost the writer ~1,400
-- instructions per event of any kind (callgrind: 80,000 events with and
-- without it), ~7% of its work on small messages.  A session's content is
-- appended in order, so the segments it uses are one range: the writer
-- keeps its ends with the session's other summary columns (one UPDATE per
-- session per batch), and the sweep keeps every segment inside a range.
-- A segment inside a range that holds none of that session's bytes is
-- kept too: the range can only keep too much, never too little.
ALTER TABLE sessions ADD COLUMN content_seg_first INTEGER; -- lowest segment holding its content, NULL if none
ALTER TABLE sessions ADD COLUMN content_seg_last INTEGER;  -- highest

-- Existing content: read through events_content while it is still there.
UPDATE sessions SET content_seg_first = r.lo, content_seg_last = r.hi
	FROM (SELECT session_id, min(content_segment) AS lo, max(content_segment) AS hi
	      FROM events WHERE content_segment IS NOT NULL GROUP BY session_id) AS r
	WHERE r.session_id = sessions.id;

DROP INDEX events_content;

-- The sweep reads the ranges in order of their start; sessions without
-- content (most, in sink mode or before DATA) stay out of it.
CREATE INDEX sessions_content ON sessions (content_seg_first, content_seg_last)
	WHERE content_seg_first IS NOT NULL;
