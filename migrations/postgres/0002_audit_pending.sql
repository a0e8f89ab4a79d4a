-- Audit entries as their transaction writes them: durable at its commit,
-- without waiting for other transactions. A sealer (one at a time across
-- replicas, under the lock of audit_head) moves them into the hash chain
-- (audit_log) in batches, shortly after; reads of the audit log seal first.
CREATE TABLE audit_pending (
    pending_id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    recorded_ms BIGINT NOT NULL,
    body        TEXT   NOT NULL,
    patients    TEXT   NOT NULL        -- `Patient/id`, space-separated
);
