-- Mission Control, SQLite schema 1. Timestamps are INTEGER milliseconds since the epoch (UTC);
-- ids are lowercase hyphenated UUID text; booleans are 0/1.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    is_default  INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX organizations_default_key ON organizations (is_default) WHERE is_default = 1;

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    external_id  TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    email        TEXT,
    created_at   INTEGER NOT NULL
);

CREATE TABLE organization_members (
    organization_id   TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role              TEXT NOT NULL,
    all_boards_read   INTEGER NOT NULL,
    all_boards_write  INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE TABLE gateways (
    id                      TEXT PRIMARY KEY,
    organization_id         TEXT NOT NULL REFERENCES organizations (id),
    name                    TEXT NOT NULL,
    url                     TEXT NOT NULL,
    token                   TEXT,
    workspace_root          TEXT NOT NULL,
    allow_insecure_tls      INTEGER NOT NULL,
    disable_device_pairing  INTEGER NOT NULL,
    created_at              INTEGER NOT NULL,
    updated_at              INTEGER NOT NULL
);
CREATE INDEX gateways_org_created ON gateways (organization_id, created_at);

CREATE TABLE boards (
    id                                          TEXT PRIMARY KEY,
    organization_id                             TEXT NOT NULL REFERENCES organizations (id),
    name                                        TEXT NOT NULL,
    slug                                        TEXT NOT NULL,
    description                                 TEXT NOT NULL,
    gateway_id                                  TEXT NOT NULL REFERENCES gateways (id),
    require_approval_for_done                   INTEGER NOT NULL,
    require_review_before_done                  INTEGER NOT NULL,
    comment_required_for_review                 INTEGER NOT NULL,
    block_status_changes_with_pending_approval  INTEGER NOT NULL,
    only_lead_can_change_status                 INTEGER NOT NULL,
    max_agents                                  INTEGER NOT NULL,
    created_at                                  INTEGER NOT NULL,
    updated_at                                  INTEGER NOT NULL
);
CREATE UNIQUE INDEX boards_slug_key ON boards (organization_id, slug);
CREATE INDEX boards_gateway ON boards (gateway_id);

CREATE TABLE enrollment_tokens (
    id            TEXT PRIMARY KEY,
    board_id      TEXT NOT NULL REFERENCES boards (id) ON DELETE CASCADE,
    token_digest  BLOB NOT NULL UNIQUE,
    expires_at    INTEGER NOT NULL,
    max_uses      INTEGER,
    uses          INTEGER NOT NULL DEFAULT 0,
    revoked_at    INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX enrollment_tokens_board ON enrollment_tokens (board_id, created_at);

CREATE TABLE agents (
    id                           TEXT PRIMARY KEY,
    board_id                     TEXT REFERENCES boards (id) ON DELETE CASCADE,
    gateway_id                   TEXT NOT NULL REFERENCES gateways (id),
    name                         TEXT NOT NULL,
    name_key                     TEXT NOT NULL,
    is_board_lead                INTEGER NOT NULL,
    is_mc_agent                  INTEGER NOT NULL,
    gateway_agent_id             TEXT,
    workspace_path               TEXT,
    openclaw_session_id          TEXT,
    heartbeat_interval_seconds   INTEGER NOT NULL,
    heartbeat_missing_tolerance  INTEGER NOT NULL,
    identity_profile             TEXT,
    identity_template            TEXT,
    soul_template                TEXT,
    last_provision_error         TEXT,
    token_digest                 BLOB UNIQUE,
    enrolled_via                 TEXT REFERENCES enrollment_tokens (id) ON DELETE SET NULL,
    created_at                   INTEGER NOT NULL,
    updated_at                   INTEGER NOT NULL
);
-- Names are unique per board, case-insensitively (name_key is the lowercased name).
CREATE UNIQUE INDEX agents_board_name_key ON agents (board_id, name_key);
CREATE INDEX agents_name_key ON agents (name_key);
CREATE INDEX agents_created ON agents (created_at, id);
CREATE INDEX agents_board_created ON agents (board_id, created_at);
CREATE INDEX agents_gateway_created ON agents (gateway_id, created_at);

-- What heartbeats change, apart from the settings: narrow rows in a clustered table, so
-- the write-behind batches (tens of thousands of rows a second with a large fleet) touch
-- few pages.
CREATE TABLE agent_liveness (
    agent_id          TEXT PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    last_seen_at      INTEGER,
    reported_health   TEXT,
    published_status  TEXT NOT NULL,
    own_token_used    INTEGER NOT NULL DEFAULT 0,
    updated_at        INTEGER NOT NULL
) WITHOUT ROWID;

-- The activity log. No foreign keys: history outlives the agents and boards it mentions.
CREATE TABLE activity_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type  TEXT NOT NULL,
    message     TEXT NOT NULL,
    agent_id    TEXT,
    board_id    TEXT,
    data        TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX activity_events_agent ON activity_events (agent_id, id);
CREATE INDEX activity_events_board ON activity_events (board_id, id);
