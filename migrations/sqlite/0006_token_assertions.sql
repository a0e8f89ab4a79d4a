-- Client assertions (client id and jti) the token endpoint accepted, kept
-- until they expire, so a replayed assertion is refused after a restart and
-- by every replica sharing the database (the in-memory check is per process).
CREATE TABLE token_assertions (
    client_jti TEXT    PRIMARY KEY,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX token_assertions_expires ON token_assertions (expires_ms);
