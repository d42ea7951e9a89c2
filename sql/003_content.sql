-- 003_content.sql - message content out of the database file
-- (PRAGMA user_version 3).
--
-- Message data (events of kind 'data': DATA streams, BDAT chunks) is
-- written once, appended to segment files in the directory PATH-content/
-- beside the database PATH, and the event row says where its bytes are
-- instead of holding them in `raw` (see docs/architecture.md, "Where
-- message content lives").  Inside SQLite every byte of a message was
-- written twice (WAL, then checkpoint) and cut into overflow pages: on
-- 1 MiB messages that cost the writer thread ~6.5 ms per message.
--
-- For such an event raw is NULL and the three columns below are set;
-- for every other event (and every data event recorded before this
-- migration, or too small to be worth a reference) they are NULL and raw
-- holds the bytes as before.  A row is committed only after its bytes
-- are written and fdatasync()ed, so a reference always points at bytes
-- that are there.
ALTER TABLE events ADD COLUMN content_segment INTEGER; -- segment NNNNNNNNNN.seg, >= 1
ALTER TABLE events ADD COLUMN content_offset INTEGER;  -- byte offset in it
ALTER TABLE events ADD COLUMN content_length INTEGER;  -- bytes (what raw's length would be)

-- A session's message bytes kept in segments (the writer adds them with
-- the rest of its summary, prune takes them away with the session): the
-- size limit of proxy --max-db-size counts them with the database's pages.
ALTER TABLE sessions ADD COLUMN content_bytes INTEGER NOT NULL DEFAULT 0;

-- Which segments are still referenced (prune deletes the others).  Most
-- events have no reference, so they are left out.
CREATE INDEX events_content ON events (content_segment) WHERE content_segment IS NOT NULL;
