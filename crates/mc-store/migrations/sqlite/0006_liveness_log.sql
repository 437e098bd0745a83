-- The liveness log: each write-behind batch appends one row holding every heartbeat of
-- the batch that changed nothing but last_seen_at and updated_at, as a blob of fixed-size
-- records (agent UUID, last_seen_at ms, updated_at ms; see `liveness_log` in the store).
-- One row per batch costs the same whatever the fleet size, where one agent_liveness row
-- per heartbeat did not. A periodic fold writes each agent's latest heartbeat into
-- agent_liveness and deletes the folded rows; at start the log is replayed over the table.
-- SQLite only: PostgreSQL writes those heartbeats straight to agent_liveness, because other
-- replicas read the rows (the leader re-reads them before it declares an agent offline).
CREATE TABLE agent_liveness_log (
    seq      INTEGER PRIMARY KEY,
    entries  BLOB NOT NULL
);
