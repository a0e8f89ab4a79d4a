-- Organisation binding, the PDL audit log and ingest idempotency (SQLite).

-- Organisations (HSA-ids, space-separated) that may see a resource besides
-- region and admin clients. Searches use the `_access` rows of idx_token.
ALTER TABLE resources ADD COLUMN access TEXT NOT NULL DEFAULT '';
-- The patients (`Patient/id`, space-separated) a resource is about, for audit entries.
ALTER TABLE resources ADD COLUMN patients TEXT NOT NULL DEFAULT '';

-- The audit log: one row per AuditEvent, chained by hash. Append-only.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    recorded_ms INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX audit_log_recorded ON audit_log (recorded_ms);

-- Which patients each entry concerns (`Patient/id`), for a patient's log extract.
CREATE TABLE audit_patient (
    patient TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (patient, seq)
) WITHOUT ROWID;

-- The chain's head, written with every append: removing the newest entries
-- breaks the agreement between the head and the chain.
CREATE TABLE audit_head (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
INSERT INTO audit_head (one, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Every ingested record, by its source identity, for idempotency and for the
-- NPÖ observed-production figures.
CREATE TABLE ingest_records (
    source_system TEXT    NOT NULL,
    record_id     TEXT    NOT NULL,
    mapping       TEXT    NOT NULL,
    content_hash  TEXT    NOT NULL,
    resources     TEXT    NOT NULL,
    municipality  TEXT,
    info_type     TEXT,
    first_ms      INTEGER NOT NULL,
    last_ms       INTEGER NOT NULL,
    PRIMARY KEY (source_system, record_id)
);
CREATE INDEX ingest_records_observed ON ingest_records (last_ms, info_type, municipality);
