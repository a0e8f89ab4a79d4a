-- The audit journal's records carry the id of the database they belong to,
-- so that a journal folder left beside a new database of the same name (the
-- old file deleted, the folder not) is never imported into it. Set at the
-- first open (src/store/sqlite.rs, open_journal).
ALTER TABLE audit_journal ADD COLUMN journal_id TEXT NOT NULL DEFAULT '';
