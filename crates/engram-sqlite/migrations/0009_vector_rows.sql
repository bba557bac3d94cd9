-- Vector tables become ordinary (rowid) tables with their key as a UNIQUE constraint.
-- As WITHOUT ROWID tables their rows (a 1,536-byte f32 vector at 384 dimensions, plus
-- the model key and content hash) were far above the ~1 KB a 4 KiB page keeps of an
-- index-organised row, so each row spilled into an overflow page of its own: 4.7 KB on
-- disk per vector, and two page reads per vector read. A rowid table keeps such a row in
-- its leaf page (about 2 KB per vector). Same columns, same keys, same statements.
--
-- legacy_alter_table: the triggers on `memories` name `context_vectors`, which does not
-- exist between the DROP and the RENAME below; the modern RENAME would reject the schema.
-- The triggers on the vector tables themselves go with the old tables and are recreated
-- after the copy, so copying writes nothing to `ann_log`.
PRAGMA legacy_alter_table = ON;

CREATE TABLE memory_vectors_next (
    rid          INTEGER NOT NULL,
    model_key    TEXT NOT NULL,
    window       INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    vector       BLOB NOT NULL,             -- little-endian f32 × dim
    UNIQUE (rid, model_key, window)
);
INSERT INTO memory_vectors_next (rid, model_key, window, content_hash, vector)
    SELECT rid, model_key, window, content_hash, vector FROM memory_vectors
    ORDER BY rid, model_key, window;
DROP TABLE memory_vectors;
ALTER TABLE memory_vectors_next RENAME TO memory_vectors;

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

CREATE TABLE embedding_cache_next (
    model_key    TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    windows      INTEGER NOT NULL,
    vectors      BLOB NOT NULL,             -- windows × dim little-endian f32
    created_at   INTEGER NOT NULL,
    UNIQUE (model_key, content_hash)
);
INSERT INTO embedding_cache_next (model_key, content_hash, windows, vectors, created_at)
    SELECT model_key, content_hash, windows, vectors, created_at FROM embedding_cache
    ORDER BY model_key, content_hash;
DROP TABLE embedding_cache;
ALTER TABLE embedding_cache_next RENAME TO embedding_cache;

CREATE TABLE context_vectors_next (
    rid          INTEGER NOT NULL,
    model_key    TEXT NOT NULL,
    context_hash TEXT NOT NULL,            -- SHA-256 of the window text embedded
    vector       BLOB NOT NULL,            -- little-endian f32 × dim
    UNIQUE (rid, model_key)
);
INSERT INTO context_vectors_next (rid, model_key, context_hash, vector)
    SELECT rid, model_key, context_hash, vector FROM context_vectors
    ORDER BY rid, model_key;
DROP TABLE context_vectors;
ALTER TABLE context_vectors_next RENAME TO context_vectors;

CREATE TRIGGER ann_context_insert AFTER INSERT ON context_vectors
BEGIN
    INSERT INTO ann_log (rid) VALUES (new.rid);
END;

CREATE TRIGGER ann_context_update AFTER UPDATE ON context_vectors
BEGIN
    INSERT INTO ann_log (rid) VALUES (new.rid);
END;

CREATE TRIGGER ann_context_delete AFTER DELETE ON context_vectors
BEGIN
    INSERT INTO ann_log (rid) VALUES (old.rid);
END;

PRAGMA legacy_alter_table = OFF;
