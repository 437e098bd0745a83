-- Mission Control, PostgreSQL schema 1: the same logical schema as sqlite/0001_initial.sql,
-- in PostgreSQL's own types. Timestamps are timestamptz (the domain keeps milliseconds,
-- which timestamptz holds exactly); ids are uuid; booleans are boolean; digests are bytea.
-- Constraint names are part of the contract: the store maps unique violations to domain
-- conflicts by these names.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    is_default  boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE UNIQUE INDEX organizations_default_key ON organizations (is_default) WHERE is_default;

CREATE TABLE users (
    id           uuid PRIMARY KEY,
    external_id  text NOT NULL CONSTRAINT users_external_id_key UNIQUE,
    name         text NOT NULL,
    email        text,
    created_at   timestamptz NOT NULL
);

CREATE TABLE organization_members (
    organization_id   uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role              text NOT NULL,
    all_boards_read   boolean NOT NULL,
    all_boards_write  boolean NOT NULL,
    created_at        timestamptz NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE TABLE gateways (
    id                      uuid PRIMARY KEY,
    organization_id         uuid NOT NULL REFERENCES organizations (id),
    name                    text NOT NULL,
    url                     text NOT NULL,
    token                   text,
    workspace_root          text NOT NULL,
    allow_insecure_tls      boolean NOT NULL,
    disable_device_pairing  boolean NOT NULL,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL
);
CREATE INDEX gateways_org_created ON gateways (organization_id, created_at);

CREATE TABLE boards (
    id                                          uuid PRIMARY KEY,
    organization_id                             uuid NOT NULL REFERENCES organizations (id),
    name                                        text NOT NULL,
    slug                                        text NOT NULL,
    description                                 text NOT NULL,
    gateway_id                                  uuid NOT NULL
        CONSTRAINT boards_gateway_id_fkey REFERENCES gateways (id),
    require_approval_for_done                   boolean NOT NULL,
    require_review_before_done                  boolean NOT NULL,
    comment_required_for_review                 boolean NOT NULL,
    block_status_changes_with_pending_approval  boolean NOT NULL,
    only_lead_can_change_status                 boolean NOT NULL,
    max_agents                                  bigint NOT NULL,
    created_at                                  timestamptz NOT NULL,
    updated_at                                  timestamptz NOT NULL,
    CONSTRAINT boards_slug_key UNIQUE (organization_id, slug)
);
CREATE INDEX boards_gateway ON boards (gateway_id);

CREATE TABLE enrollment_tokens (
    id            uuid PRIMARY KEY,
    board_id      uuid NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    token_digest  bytea NOT NULL CONSTRAINT enrollment_tokens_token_digest_key UNIQUE,
    expires_at    timestamptz NOT NULL,
    max_uses      bigint,
    uses          bigint NOT NULL DEFAULT 0,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL
);
CREATE INDEX enrollment_tokens_board ON enrollment_tokens (board_id, created_at);

CREATE TABLE agents (
    id                           uuid PRIMARY KEY,
    board_id                     uuid REFERENCES boards (id) ON DELETE CASCADE,
    gateway_id                   uuid NOT NULL REFERENCES gateways (id),
    name                         text NOT NULL,
    name_key                     text NOT NULL,
    is_board_lead                boolean NOT NULL,
    is_mc_agent                  boolean NOT NULL,
    gateway_agent_id             text,
    workspace_path               text,
    openclaw_session_id          text,
    heartbeat_interval_seconds   bigint NOT NULL,
    heartbeat_missing_tolerance  bigint NOT NULL,
    identity_profile             jsonb,
    identity_template            text,
    soul_template                text,
    last_provision_error         text,
    token_digest                 bytea CONSTRAINT agents_token_digest_key UNIQUE,
    enrolled_via                 uuid REFERENCES enrollment_tokens (id) ON DELETE SET NULL,
    created_at                   timestamptz NOT NULL,
    updated_at                   timestamptz NOT NULL,
    -- Names are unique per board, case-insensitively (name_key is the lowercased name).
    CONSTRAINT agents_board_name_key UNIQUE (board_id, name_key)
);
CREATE INDEX agents_name_key ON agents (name_key);
CREATE INDEX agents_created ON agents (created_at, id);
CREATE INDEX agents_board_created ON agents (board_id, created_at);
CREATE INDEX agents_gateway_created ON agents (gateway_id, created_at);

-- What heartbeats change, apart from the settings: narrow rows, so the write-behind
-- batches rewrite small tuples. The fill factor leaves room on each page for the new
-- row versions, so most batch updates are HOT (no index maintenance).
CREATE TABLE agent_liveness (
    agent_id          uuid PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    last_seen_at      timestamptz,
    reported_health   text,
    published_status  text NOT NULL,
    own_token_used    boolean NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL
) WITH (fillfactor = 70);

-- The activity log. No foreign keys: history outlives the agents and boards it mentions.
-- The id is the SSE event id (`Last-Event-ID`): it only grows, and the store allocates it
-- in commit order (see `insert_activities` in the PostgreSQL backend).
CREATE TABLE activity_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type  text NOT NULL,
    message     text NOT NULL,
    agent_id    uuid,
    board_id    uuid,
    data        jsonb,
    created_at  timestamptz NOT NULL
);
CREATE INDEX activity_events_agent ON activity_events (agent_id, id);
CREATE INDEX activity_events_board ON activity_events (board_id, id);
