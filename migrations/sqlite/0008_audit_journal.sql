-- How far the audit journal (the folder `<database>-audit`, see
-- src/store/audit_journal.rs) has been imported into audit_log: updated in
-- the same transaction as the entries it imports, so an entry is imported
-- exactly once, also after a crash.
CREATE TABLE audit_journal (
    one     INTEGER PRIMARY KEY CHECK (one = 1),
    segment INTEGER NOT NULL,
    offset  INTEGER NOT NULL
);
INSERT INTO audit_journal (one, segment, offset) VALUES (1, 0, 0);
