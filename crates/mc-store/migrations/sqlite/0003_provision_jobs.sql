-- Provisioning jobs: one row per requested create, update or delete of an agent on its
-- gateway. Jobs of one agent run in id order; a claim is a lease (claimed_until).
-- No foreign key to agents: a delete job outlives the agent row, so it carries the
-- gateway placement it has to remove.

CREATE TABLE provision_jobs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id          TEXT NOT NULL,
    gateway_id        TEXT NOT NULL,
    -- create | update | delete
    action            TEXT NOT NULL,
    -- For delete: the agent's id and main session key on the gateway.
    gateway_agent_id  TEXT,
    session_key       TEXT,
    -- pending | done | failed
    state             TEXT NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT,
    next_attempt_at   INTEGER NOT NULL,
    claimed_until     INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX provision_jobs_due ON provision_jobs (next_attempt_at) WHERE state = 'pending';
CREATE INDEX provision_jobs_agent ON provision_jobs (agent_id, id);
