-- When a provisioning job first reached its gateway. Its retry bound counts from then, not
-- from its request: a job that waited in the queue behind others (a burst of creates onto
-- one gateway) still gets its whole bound to retry. NULL until its first attempt.
-- (0006 is the SQLite-only liveness log; the numbers stay aligned across backends.)
ALTER TABLE provision_jobs ADD COLUMN first_attempt_at timestamptz;
