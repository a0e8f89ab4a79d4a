-- Rest-hook Subscriptions: the active ones in a form matching needs (kept in
-- step with the Subscription resources), and the durable outbox of
-- notifications, written in the same transaction as the change they report.
CREATE TABLE subscriptions (
    sub_id          TEXT    PRIMARY KEY,
    owner_key       TEXT    NOT NULL,      -- organisationsnummer of the creator ('' for cross-organisation clients)
    criteria        TEXT    NOT NULL,      -- e.g. Task?owner=Organization/123
    endpoint        TEXT    NOT NULL,
    payload         TEXT,                  -- NULL: empty notification (ping)
    headers         TEXT    NOT NULL,      -- JSON array of "Name: value"
    status          TEXT    NOT NULL,      -- active | error | off
    failing_since   INTEGER               -- ms of the first failed delivery in a row
);

CREATE TABLE outbox (
    event_id        TEXT    PRIMARY KEY,   -- sent as X-Nara-Event-Id: receivers deduplicate on it
    sub_id          TEXT    NOT NULL,
    resource        TEXT    NOT NULL,      -- Task/id
    version         INTEGER NOT NULL,
    created_ms      INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    attempts        INTEGER NOT NULL,
    claimed_until   INTEGER NOT NULL,      -- a worker's lease; 0 when free
    delivered_ms    INTEGER,
    last_error      TEXT
);
CREATE INDEX outbox_due ON outbox (delivered_ms, next_attempt_ms);
