-- When a provisioning job first reached its gateway. Its retry bound counts from then, not
-- from its request: a job that waited in the queue behind others (a burst of creates onto
-- one gateway) still gets its whole bound to retry. NULL until its first attempt.
ALTER TABLE provision_jobs ADD COLUMN first_attempt_at INTEGER;
