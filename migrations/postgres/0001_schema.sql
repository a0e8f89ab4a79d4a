-- The whole schema for PostgreSQL, equivalent to migrations/sqlite/0001–0005.
-- Text that is compared or ordered uses the "C" collation (byte order), so
-- prefix ranges, sort order and paging cursors behave exactly as in SQLite.
-- The JSON text in versions.body is the record, exactly as served: TEXT, not
-- JSONB (JSONB would reorder keys and rewrite numbers).

CREATE TABLE versions (
    vid             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- global write order
    res_type        TEXT    COLLATE "C" NOT NULL,
    res_id          TEXT    COLLATE "C" NOT NULL,
    version         BIGINT  NOT NULL,
    last_updated_ms BIGINT  NOT NULL,
    deleted         BIGINT  NOT NULL,
    method          TEXT    NOT NULL,              -- POST | PUT | DELETE
    body            TEXT    NOT NULL,              -- '' for deletions
    UNIQUE (res_type, res_id, version)
);
CREATE INDEX versions_by_type ON versions (res_type, vid);

-- The current version of every resource that ever existed.
CREATE TABLE resources (
    rid             BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    res_type        TEXT    COLLATE "C" NOT NULL,
    res_id          TEXT    COLLATE "C" NOT NULL,
    version         BIGINT  NOT NULL,
    vid             BIGINT  NOT NULL REFERENCES versions (vid),
    last_updated_ms BIGINT  NOT NULL,
    deleted         BIGINT  NOT NULL,
    -- Organisations (organisationsnummer, space-separated) that may see it
    -- besides region and admin clients; searches use `_access` rows of idx_token.
    access          TEXT    NOT NULL DEFAULT '',
    -- The patients (`Patient/id`, space-separated) it is about, for audit entries.
    patients        TEXT    NOT NULL DEFAULT '',
    UNIQUE (res_type, res_id)
);
CREATE INDEX resources_by_updated ON resources (res_type, last_updated_ms);

-- Search index of current, non-deleted versions; rows replaced on every write.
CREATE TABLE idx_token (
    rid       BIGINT NOT NULL,
    param     TEXT   COLLATE "C" NOT NULL,
    system    TEXT   COLLATE "C",
    code      TEXT   COLLATE "C",
    text_norm TEXT   COLLATE "C"
);
CREATE INDEX idx_token_code ON idx_token (param, code, system);
CREATE INDEX idx_token_rid ON idx_token (rid, param);

CREATE TABLE idx_string (
    rid   BIGINT NOT NULL,
    param TEXT   COLLATE "C" NOT NULL,
    norm  TEXT   COLLATE "C" NOT NULL,
    exact TEXT   COLLATE "C" NOT NULL
);
CREATE INDEX idx_string_norm ON idx_string (param, norm);
CREATE INDEX idx_string_rid ON idx_string (rid, param);

CREATE TABLE idx_date (
    rid   BIGINT NOT NULL,
    param TEXT   COLLATE "C" NOT NULL,
    low   BIGINT NOT NULL,
    high  BIGINT NOT NULL
);
CREATE INDEX idx_date_low ON idx_date (param, low);
CREATE INDEX idx_date_high ON idx_date (param, high);
CREATE INDEX idx_date_rid ON idx_date (rid, param);

CREATE TABLE idx_reference (
    rid         BIGINT NOT NULL,
    param       TEXT   COLLATE "C" NOT NULL,
    ref         TEXT   COLLATE "C",
    target_type TEXT   COLLATE "C",
    target_id   TEXT   COLLATE "C",
    id_system   TEXT   COLLATE "C",
    id_value    TEXT   COLLATE "C"
);
CREATE INDEX idx_reference_target ON idx_reference (target_id, param, target_type);
CREATE INDEX idx_reference_identifier ON idx_reference (id_value) WHERE id_value IS NOT NULL;
CREATE INDEX idx_reference_rid ON idx_reference (rid, param);

CREATE TABLE idx_number (
    rid   BIGINT           NOT NULL,
    param TEXT             COLLATE "C" NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    text  TEXT             NOT NULL
);
CREATE INDEX idx_number_value ON idx_number (param, value);
CREATE INDEX idx_number_rid ON idx_number (rid, param);

CREATE TABLE idx_quantity (
    rid    BIGINT           NOT NULL,
    param  TEXT             COLLATE "C" NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    system TEXT             COLLATE "C",
    code   TEXT             COLLATE "C",
    unit   TEXT             COLLATE "C"
);
CREATE INDEX idx_quantity_value ON idx_quantity (param, value);
CREATE INDEX idx_quantity_rid ON idx_quantity (rid, param);

CREATE TABLE idx_uri (
    rid   BIGINT NOT NULL,
    param TEXT   COLLATE "C" NOT NULL,
    uri   TEXT   COLLATE "C" NOT NULL
);
CREATE INDEX idx_uri_value ON idx_uri (param, uri);
CREATE INDEX idx_uri_rid ON idx_uri (rid, param);

-- The audit log: one row per AuditEvent, chained by hash. Append-only.
-- Appends lock the audit_head row, so all replicas extend one chain.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    recorded_ms BIGINT NOT NULL,
    body        TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL
);
CREATE INDEX audit_log_recorded ON audit_log (recorded_ms);

CREATE TABLE audit_patient (
    patient TEXT   COLLATE "C" NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (patient, seq)
);

CREATE TABLE audit_head (
    one  BIGINT PRIMARY KEY CHECK (one = 1),
    seq  BIGINT NOT NULL,
    hash TEXT   NOT NULL
);
INSERT INTO audit_head (one, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE ingest_records (
    source_system TEXT   NOT NULL,
    record_id     TEXT   NOT NULL,
    mapping       TEXT   NOT NULL,
    content_hash  TEXT   NOT NULL,
    resources     TEXT   NOT NULL,
    municipality  TEXT   COLLATE "C",
    info_type     TEXT   COLLATE "C",
    first_ms      BIGINT NOT NULL,
    last_ms       BIGINT NOT NULL,
    PRIMARY KEY (source_system, record_id)
);
CREATE INDEX ingest_records_observed ON ingest_records (last_ms, info_type, municipality);

CREATE TABLE npo_organizations (
    code                TEXT    COLLATE "C" PRIMARY KEY,
    name                TEXT    NOT NULL,
    delregion           TEXT,
    hsa_id              TEXT,
    organisationsnummer TEXT,
    is_region           BIGINT  NOT NULL,
    updated_ms          BIGINT  NOT NULL,
    updated_by          TEXT    NOT NULL
);

CREATE TABLE npo_statements (
    seq                BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code               TEXT    NOT NULL,
    info_type          TEXT    NOT NULL,
    declared_producer  BIGINT,
    declared_consumer  BIGINT,
    declared_at        TEXT    NOT NULL,
    source             TEXT    NOT NULL,
    recorded_by        TEXT    NOT NULL,
    recorded_ms        BIGINT  NOT NULL
);
CREATE INDEX npo_statements_by_org ON npo_statements (code, info_type, seq);

CREATE TABLE transfers (
    task_id        TEXT    COLLATE "C" PRIMARY KEY,
    document_id    TEXT    NOT NULL,
    binary_id      TEXT,
    sender_key     TEXT    NOT NULL,
    recipient_key  TEXT    NOT NULL,
    patient        TEXT    NOT NULL,
    doc_type       TEXT    NOT NULL,
    content_hash   TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    created_ms     BIGINT  NOT NULL,
    updated_ms     BIGINT  NOT NULL,
    duplicate_of   TEXT
);
CREATE INDEX transfers_by_binary ON transfers (binary_id);
CREATE INDEX transfers_open ON transfers (status, created_ms);
CREATE INDEX transfers_same_content ON transfers (patient, doc_type, content_hash);

CREATE TABLE subscriptions (
    sub_id          TEXT    COLLATE "C" PRIMARY KEY,
    owner_key       TEXT    NOT NULL,
    criteria        TEXT    NOT NULL,
    endpoint        TEXT    NOT NULL,
    payload         TEXT,
    headers         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    failing_since   BIGINT
);

CREATE TABLE outbox (
    event_id        TEXT    PRIMARY KEY,
    sub_id          TEXT    NOT NULL,
    resource        TEXT    NOT NULL,
    version         BIGINT  NOT NULL,
    created_ms      BIGINT  NOT NULL,
    next_attempt_ms BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL,
    claimed_until   BIGINT  NOT NULL,
    delivered_ms    BIGINT,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (delivered_ms, next_attempt_ms);

-- Client assertions (client id and jti) the token endpoint accepted, kept
-- until they expire, so an assertion replayed to another replica (or after a
-- restart) is refused too. Expired rows are pruned.
CREATE TABLE token_assertions (
    client_jti TEXT   PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX token_assertions_expires ON token_assertions (expires_ms);
