-- The patients an audit entry concerns (a JSON array of `Patient/id`),
-- written with the entry. audit_patient, the index behind a patient's log
-- extract, is filled from it in the background in sorted batches: each of
-- its pages is written about once per batch instead of once per entry.
-- Entries after audit_indexed.seq are found through this column.
ALTER TABLE audit_log ADD COLUMN patients TEXT NOT NULL DEFAULT '[]';

CREATE TABLE audit_indexed (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL            -- every entry up to here is in audit_patient
);
INSERT INTO audit_indexed (one, seq) SELECT 1, COALESCE(MAX(seq), 0) FROM audit_log;
