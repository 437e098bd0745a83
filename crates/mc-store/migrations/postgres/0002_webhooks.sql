-- Outbound webhooks: subscriptions and the delivery queue (one row per event and
-- subscription, queued in the transaction that records the event).

CREATE TABLE webhooks (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url              text NOT NULL,
    -- ',type,type,' or '' for every event type.
    event_types      text NOT NULL DEFAULT '',
    secret           text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX webhooks_org_created ON webhooks (organization_id, created_at);

CREATE TABLE webhook_deliveries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id        uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id          bigint NOT NULL,
    event_type        text NOT NULL,
    state             text NOT NULL,
    attempts          bigint NOT NULL DEFAULT 0,
    last_status_code  bigint,
    last_error        text,
    next_attempt_at   timestamptz,
    -- A worker attempting the delivery holds it until then.
    claimed_until     timestamptz,
    created_at        timestamptz NOT NULL,
    last_attempt_at   timestamptz,
    CONSTRAINT webhook_deliveries_once UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
