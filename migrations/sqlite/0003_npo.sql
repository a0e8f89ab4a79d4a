-- The NPÖ coverage registry: organisations (the municipalities and the
-- region) and every declared status ever recorded. The current status of an
-- organisation, information type and role is its latest statement.
CREATE TABLE npo_organizations (
    code                TEXT    PRIMARY KEY,   -- kommunkod, or the region's länskod
    name                TEXT    NOT NULL,
    delregion           TEXT,                  -- NULL: not known
    hsa_id              TEXT,
    organisationsnummer TEXT,
    is_region           INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL,
    updated_by          TEXT    NOT NULL
);

CREATE TABLE npo_statements (
    seq                INTEGER PRIMARY KEY,
    code               TEXT    NOT NULL,
    info_type          TEXT    NOT NULL,       -- funktionsstatus-adl | vardplan
    declared_producer  INTEGER,                -- NULL: this statement says nothing about it
    declared_consumer  INTEGER,
    declared_at        TEXT    NOT NULL,       -- YYYY-MM-DD
    source             TEXT    NOT NULL,
    recorded_by        TEXT    NOT NULL,       -- client id, or nara-gateway for the seed
    recorded_ms        INTEGER NOT NULL
);
CREATE INDEX npo_statements_by_org ON npo_statements (code, info_type, seq);
