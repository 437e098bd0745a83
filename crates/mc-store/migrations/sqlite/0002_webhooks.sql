-- Outbound webhooks: subscriptions and the delivery queue (one row per event and
-- subscription, queued in the transaction that records the event).

CREATE TABLE webhooks (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id),
    url              TEXT NOT NULL,
    -- ',type,type,' or '' for every event type.
    event_types      TEXT NOT NULL DEFAULT '',
    secret           TEXT NOT NULL,
    enabled          INTEGER NOT NULL DEFAULT 1,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX webhooks_org_created ON webhooks (organization_id, created_at);

CREATE TABLE webhook_deliveries (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id        TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id          INTEGER NOT NULL,
    event_type        TEXT NOT NULL,
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_status_code  INTEGER,
    last_error        TEXT,
    next_attempt_at   INTEGER,
    -- A worker attempting the delivery holds it until then.
    claimed_until     INTEGER,
    created_at        INTEGER NOT NULL,
    last_attempt_at   INTEGER,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
