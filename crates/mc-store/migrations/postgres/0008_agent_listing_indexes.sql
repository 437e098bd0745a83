-- The agent listing reads a page (newest first: created_at, then id, descending) from an
-- index alone, whatever the filter. The board index carries gateway_id too, for the rare
-- listing filtered by both. They replace the indexes without id, whose order the listing
-- had to finish with a sort of every matching agent.
CREATE INDEX agents_board_listed ON agents (board_id, created_at, id, gateway_id);
CREATE INDEX agents_gateway_listed ON agents (gateway_id, created_at, id);
DROP INDEX agents_board_created;
DROP INDEX agents_gateway_created;
