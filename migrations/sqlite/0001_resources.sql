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
CREATE INDEX versions_by_time ON versions (last_updated_ms);

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

-- Writing a version takes two statements, so a write holds the single writer
-- connection as briefly as possible:
-- 1. INSERT INTO versions: this trigger points `resources` at the new
--    version (inserting the row for a new resource) and drops the old index;
-- 2. one INSERT INTO idx_input with every index row of the version, which
--    the INSTEAD OF triggers below route to their tables.
CREATE TRIGGER versions_make_current AFTER INSERT ON versions
BEGIN
    INSERT INTO resources (res_type, res_id, version, vid, last_updated_ms, deleted)
    VALUES (NEW.res_type, NEW.res_id, NEW.version, NEW.vid, NEW.last_updated_ms, NEW.deleted)
    ON CONFLICT (res_type, res_id) DO UPDATE SET
        version = excluded.version,
        vid = excluded.vid,
        last_updated_ms = excluded.last_updated_ms,
        deleted = excluded.deleted;
    DELETE FROM idx_token WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
    DELETE FROM idx_string WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
    DELETE FROM idx_date WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
    DELETE FROM idx_reference WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
    DELETE FROM idx_number WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
    DELETE FROM idx_quantity WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
    DELETE FROM idx_uri WHERE rid = (SELECT rid FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id);
END;

CREATE VIEW idx_input (kind, res_type, res_id, param, a, b, c, d, e) AS
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL WHERE 0;

CREATE TRIGGER idx_input_token INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_token'
BEGIN
    INSERT INTO idx_token (rid, param, system, code, text_norm)
    SELECT rid, NEW.param, NEW.a, NEW.b, NEW.c FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
CREATE TRIGGER idx_input_string INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_string'
BEGIN
    INSERT INTO idx_string (rid, param, norm, exact)
    SELECT rid, NEW.param, NEW.a, NEW.b FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
CREATE TRIGGER idx_input_date INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_date'
BEGIN
    INSERT INTO idx_date (rid, param, low, high)
    SELECT rid, NEW.param, NEW.a, NEW.b FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
CREATE TRIGGER idx_input_reference INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_reference'
BEGIN
    INSERT INTO idx_reference (rid, param, ref, target_type, target_id, id_system, id_value)
    SELECT rid, NEW.param, NEW.a, NEW.b, NEW.c, NEW.d, NEW.e FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
CREATE TRIGGER idx_input_number INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_number'
BEGIN
    INSERT INTO idx_number (rid, param, value, text)
    SELECT rid, NEW.param, NEW.a, NEW.b FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
CREATE TRIGGER idx_input_quantity INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_quantity'
BEGIN
    INSERT INTO idx_quantity (rid, param, value, system, code, unit)
    SELECT rid, NEW.param, NEW.a, NEW.b, NEW.c, NEW.d FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
CREATE TRIGGER idx_input_uri INSTEAD OF INSERT ON idx_input WHEN NEW.kind = 'idx_uri'
BEGIN
    INSERT INTO idx_uri (rid, param, uri)
    SELECT rid, NEW.param, NEW.a FROM resources WHERE res_type = NEW.res_type AND res_id = NEW.res_id;
END;
