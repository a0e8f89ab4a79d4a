-- Document transfers (Task code `transfer`): one row per transfer Task, kept
-- in step with the Task in the same transaction. Serves the recipient's
-- first content fetch (`received`), the overdue list and duplicate detection.
CREATE TABLE transfers (
    task_id        TEXT    PRIMARY KEY,
    document_id    TEXT    NOT NULL,
    binary_id      TEXT,
    sender_key     TEXT    NOT NULL,      -- organisationsnummer of the requester
    recipient_key  TEXT    NOT NULL,      -- organisationsnummer of the owner
    patient        TEXT    NOT NULL,      -- Patient/id
    doc_type       TEXT    NOT NULL,      -- system|code of DocumentReference.type, or ''
    content_hash   TEXT    NOT NULL,      -- SHA-256 of the Binary's data, or ''
    status         TEXT    NOT NULL,
    created_ms     INTEGER NOT NULL,
    updated_ms     INTEGER NOT NULL,
    duplicate_of   TEXT                   -- task_id of the earlier identical transfer
);
CREATE INDEX transfers_by_binary ON transfers (binary_id);
CREATE INDEX transfers_open ON transfers (status, created_ms);
CREATE INDEX transfers_same_content ON transfers (patient, doc_type, content_hash);
