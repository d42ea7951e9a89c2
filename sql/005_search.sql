-- 005_search.sql - indexes for searching by a whole domain
-- (PRAGMA user_version 5).
--
-- `smtptap sessions --to @example.org` (and --from, and the reader's
-- filter for any consumer) finds every session with a recipient (sender)
-- at that domain.  recipients_address and transactions_mail_from are
-- ordered by the whole address, so a domain is a suffix they cannot
-- search; these index the domain itself: what follows the first '@', in
-- ASCII lower case (lower(), like COLLATE NOCASE, folds ASCII only).  The
-- expression must stay exactly as src/reader.c writes it
-- (READER_DOMAIN_OF), or SQLite will not use the index.
--
-- Built-in functions only, so the writer and the sqlite3 shell keep
-- inserting rows without registering anything.  Like the address indexes,
-- the entries carry the table's key, so the session is at hand without
-- reading the row, in session order within one domain.
CREATE INDEX recipients_domain ON recipients (lower(substr(address, instr(address, '@') + 1)));
CREATE INDEX transactions_domain ON transactions (lower(substr(mail_from, instr(mail_from, '@') + 1)));
