-- The check-in after a wake: an agent woken by a provisioning job has until
-- checkin_deadline_at to heartbeat; checkin_wakes counts the wakes sent so far. When the
-- last wake goes unanswered, checkin_gave_up is set (the agent reads offline until it
-- heartbeats). Written behind the heartbeat hot path with the other liveness fields, so a
-- deadline survives a restart.
ALTER TABLE agent_liveness ADD COLUMN checkin_deadline_at INTEGER;
ALTER TABLE agent_liveness ADD COLUMN checkin_wakes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_liveness ADD COLUMN checkin_gave_up INTEGER NOT NULL DEFAULT 0;
