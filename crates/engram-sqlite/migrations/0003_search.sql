-- Full-text search: BM25 over content, title and tags of live memories. Derived state,
-- kept in step by triggers, so a write is keyword-searchable in the transaction that
-- stores it. Contentless (the text lives in `memories`); rowid = memories.rid.
CREATE VIRTUAL TABLE memories_fts USING fts5(
    content, title, tags,
    content = '',
    contentless_delete = 1,
    tokenize = 'porter unicode61 remove_diacritics 2'
);

INSERT INTO memories_fts (rowid, content, title, tags)
    SELECT rid, content, coalesce(title, ''), tags FROM memories WHERE deleted_at IS NULL;

CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories
WHEN new.deleted_at IS NULL
BEGIN
    INSERT INTO memories_fts (rowid, content, title, tags)
        VALUES (new.rid, new.content, coalesce(new.title, ''), new.tags);
END;

-- Only when the indexed text or the deletion changes: status bookkeeping updates the row
-- often and must not rewrite the index.
CREATE TRIGGER memories_fts_update AFTER UPDATE ON memories
WHEN old.content IS NOT new.content OR old.title IS NOT new.title
    OR old.tags IS NOT new.tags OR old.deleted_at IS NOT new.deleted_at
BEGIN
    DELETE FROM memories_fts WHERE rowid = old.rid;
    INSERT INTO memories_fts (rowid, content, title, tags)
        SELECT new.rid, new.content, coalesce(new.title, ''), new.tags
        WHERE new.deleted_at IS NULL;
END;

CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories
BEGIN
    DELETE FROM memories_fts WHERE rowid = old.rid;
END;

-- The vector index's change feed: the row id of every memory whose vectors, deletion or
-- filterable fields changed, in commit order. The in-process index applies it after the
-- sequence number its last save covers, then truncates it.
CREATE TABLE ann_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rid INTEGER NOT NULL
);

CREATE TRIGGER ann_vectors_insert AFTER INSERT ON memory_vectors
WHEN new.window = 0
BEGIN
    INSERT INTO ann_log (rid) VALUES (new.rid);
END;

CREATE TRIGGER ann_vectors_delete AFTER DELETE ON memory_vectors
WHEN old.window = 0
BEGIN
    INSERT INTO ann_log (rid) VALUES (old.rid);
END;

CREATE TRIGGER ann_memories_update AFTER UPDATE ON memories
WHEN old.deleted_at IS NOT new.deleted_at OR old.content_hash IS NOT new.content_hash
    OR old.user_id IS NOT new.user_id OR old.agent_id IS NOT new.agent_id
    OR old.project IS NOT new.project OR old.domain IS NOT new.domain
    OR old.session_id IS NOT new.session_id OR old.memory_type IS NOT new.memory_type
    OR old.source IS NOT new.source OR old.tags IS NOT new.tags
BEGIN
    INSERT INTO ann_log (rid) VALUES (new.rid);
END;

CREATE TRIGGER ann_memories_delete AFTER DELETE ON memories
BEGIN
    INSERT INTO ann_log (rid) VALUES (old.rid);
END;
