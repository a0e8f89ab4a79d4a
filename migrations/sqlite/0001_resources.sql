-- Versioned FHIR resources and their search index (SQLite).
-- The JSON text in versions.body is the record, exactly as served.

CREATE TABLE versions (
    vid             INTEGER PRIMARY KEY,           -- global write order
    res_type        TEXT    NOT NULL,
    res_id          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    last_updated_ms INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    method          TEXT    NOT NULL,              -- POST | PUT | DELETE
    body            TEXT    NOT NULL,              -- '' for deletions
    UNIQUE (res_type, res_id, version)
);
CREATE INDEX versions_by_type ON versions (res_type, vid);

-- The current version of every resource that ever existed.
CREATE TABLE resources (
    rid             INTEGER PRIMARY KEY,
    res_type        TEXT    NOT NULL,
    res_id          TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    vid             INTEGER NOT NULL REFERENCES versions (vid),
    last_updated_ms INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    UNIQUE (res_type, res_id)
);
CREATE INDEX resources_by_updated ON resources (res_type, last_updated_ms);

-- Search index of current, non-deleted versions; rows replaced on every write.
CREATE TABLE idx_token (
    rid       INTEGER NOT NULL,
    param     TEXT    NOT NULL,
    system    TEXT,
    code      TEXT,
    text_norm TEXT
);
CREATE INDEX idx_token_code ON idx_token (param, code, system);
CREATE INDEX idx_token_rid ON idx_token (rid, param);

CREATE TABLE idx_string (
    rid   INTEGER NOT NULL,
    param TEXT    NOT NULL,
    norm  TEXT    NOT NULL,
    exact TEXT    NOT NULL
);
CREATE INDEX idx_string_norm ON idx_string (param, norm);
CREATE INDEX idx_string_rid ON idx_string (rid, param);

CREATE TABLE idx_date (
    rid   INTEGER NOT NULL,
    param TEXT    NOT NULL,
    low   INTEGER NOT NULL,
    high  INTEGER NOT NULL
);
CREATE INDEX idx_date_low ON idx_date (param, low);
CREATE INDEX idx_date_high ON idx_date (param, high);
CREATE INDEX idx_date_rid ON idx_date (rid, param);

CREATE TABLE idx_reference (
    rid         INTEGER NOT NULL,
    param       TEXT    NOT NULL,
    ref         TEXT,
    target_type TEXT,
    target_id   TEXT,
    id_system   TEXT,
    id_value    TEXT
);
CREATE INDEX idx_reference_target ON idx_reference (target_id, param, target_type);
-- Logical references (by identifier) are rare: only they enter this index.
CREATE INDEX idx_reference_identifier ON idx_reference (id_value) WHERE id_value IS NOT NULL;
CREATE INDEX idx_reference_rid ON idx_reference (rid, param);

CREATE TABLE idx_number (
    rid   INTEGER NOT NULL,
    param TEXT    NOT NULL,
    value REAL    NOT NULL,
    text  TEXT    NOT NULL
);
CREATE INDEX idx_number_value ON idx_number (param, value);
CREATE INDEX idx_number_rid ON idx_number (rid, param);

CREATE TABLE idx_quantity (
    rid    INTEGER NOT NULL,
    param  TEXT    NOT NULL,
    value  REAL    NOT NULL,
    system TEXT,
    code   TEXT,
    unit   TEXT
);
CREATE INDEX idx_quantity_value ON idx_quantity (param, value);
CREATE INDEX idx_quantity_rid ON idx_quantity (rid, param);

CREATE TABLE idx_uri (
    rid   INTEGER NOT NULL,
    param TEXT    NOT NULL,
    uri   TEXT    NOT NULL
);
CREATE INDEX idx_uri_value ON idx_uri (param, uri);
CREATE INDEX idx_uri_rid ON idx_uri (rid, param);
