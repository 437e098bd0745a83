-- A gateway has at most one main agent (the agent without a board). Replicas check for it
-- in memory before they create one; this makes two replicas creating it at once end with one.
CREATE UNIQUE INDEX agents_gateway_main ON agents (gateway_id) WHERE board_id IS NULL;
