-- Keyword search moves from FTS5 to the in-process keyword index (engram-index's
-- `keyword`), which follows new row ids and `ann_log` as the vector index does: writes no
-- longer maintain a full-text index in their transaction.
DROP TRIGGER memories_fts_insert;
DROP TRIGGER memories_fts_update;
DROP TRIGGER memories_fts_delete;
DROP TABLE memories_fts;

-- The log now also feeds the keyword index, which needs to hear of title changes
-- (content changes change `content_hash`).
DROP TRIGGER ann_memories_update;
CREATE TRIGGER ann_memories_update AFTER UPDATE ON memories
WHEN old.deleted_at IS NOT new.deleted_at OR old.content_hash IS NOT new.content_hash
    OR old.title IS NOT new.title
    OR old.user_id IS NOT new.user_id OR old.agent_id IS NOT new.agent_id
    OR old.project IS NOT new.project OR old.domain IS NOT new.domain
    OR old.session_id IS NOT new.session_id OR old.memory_type IS NOT new.memory_type
    OR old.source IS NOT new.source OR old.tags IS NOT new.tags
BEGIN
    INSERT INTO ann_log (rid) VALUES (new.rid);
END;

-- How far `ann_log` has been truncated. A follower that applied less than this missed
-- entries (another process cut them) and rebuilds.
CREATE TABLE ann_log_floor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);
INSERT INTO ann_log_floor (id, upto) VALUES (1, 0);
