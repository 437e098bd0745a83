-- The check-in waits that are due, in deadline order: with several replicas on one
-- database, the leading one reads the waits that came due from the database (another
-- replica's provisioning job may have started them), so it needs them without a scan.
CREATE INDEX agent_liveness_checkin_due ON agent_liveness (checkin_deadline_at)
    WHERE checkin_deadline_at IS NOT NULL;
