-- Provisioning jobs: one row per requested create, update or delete of an agent on its
-- gateway. Jobs of one agent run in id order; a claim is a lease (claimed_until).
-- No foreign key to agents: a delete job outlives the agent row, so it carries the
-- gateway placement it has to remove.

CREATE TABLE provision_jobs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id          uuid NOT NULL,
    gateway_id        uuid NOT NULL,
    -- create | update | delete
    action            text NOT NULL,
    -- For delete: the agent's id and main session key on the gateway.
    gateway_agent_id  text,
    session_key       text,
    -- pending | done | failed
    state             text NOT NULL,
    attempts          bigint NOT NULL DEFAULT 0,
    last_error        text,
    next_attempt_at   timestamptz NOT NULL,
    claimed_until     timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX provision_jobs_due ON provision_jobs (next_attempt_at) WHERE state = 'pending';
CREATE INDEX provision_jobs_agent ON provision_jobs (agent_id, id);
