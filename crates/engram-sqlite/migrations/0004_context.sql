-- Context vectors: a second vector per memory of a session, over the text of the turns
-- around it (its window), so a turn that says little on its own ("Yes, last May!") is
-- found through what it answers. Derived state, rebuilt by the embedding pipeline.
CREATE TABLE context_vectors (
    rid          INTEGER NOT NULL,
    model_key    TEXT NOT NULL,
    context_hash TEXT NOT NULL,            -- SHA-256 of the window text embedded
    vector       BLOB NOT NULL,            -- little-endian f32 × dim
    PRIMARY KEY (rid, model_key)
) WITHOUT ROWID;

-- Sessions whose windows may be out of date. `claim` grows with every change to the
-- session, so a worker that embedded an older state does not clear a newer one.
CREATE TABLE context_queue (
    tenant       TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    claim        INTEGER NOT NULL DEFAULT 1,
    lease_until  INTEGER,                  -- microseconds; NULL when not claimed
    PRIMARY KEY (tenant, session_id)
);

INSERT INTO context_queue (tenant, session_id)
    SELECT DISTINCT tenant, session_id FROM memories
    WHERE session_id IS NOT NULL AND deleted_at IS NULL;

CREATE TRIGGER context_memory_insert AFTER INSERT ON memories
WHEN new.session_id IS NOT NULL AND new.deleted_at IS NULL
BEGIN
    INSERT INTO context_queue (tenant, session_id) VALUES (new.tenant, new.session_id)
        ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1;
END;

-- A change to what a window holds: the text, the order (valid_from), who is in the
-- conversation (user_id), the session, or the deletion. Both the old and the new session.
CREATE TRIGGER context_memory_update AFTER UPDATE ON memories
WHEN old.content_hash IS NOT new.content_hash OR old.session_id IS NOT new.session_id
    OR old.user_id IS NOT new.user_id OR old.valid_from IS NOT new.valid_from
    OR old.deleted_at IS NOT new.deleted_at
BEGIN
    DELETE FROM context_vectors WHERE rid = new.rid AND new.deleted_at IS NOT NULL;
    INSERT INTO context_queue (tenant, session_id)
        SELECT old.tenant, old.session_id WHERE old.session_id IS NOT NULL
        ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1;
    INSERT INTO context_queue (tenant, session_id)
        SELECT new.tenant, new.session_id
        WHERE new.session_id IS NOT NULL AND new.session_id IS NOT old.session_id
        ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1;
END;

-- A purge removes the memory's context vector with it, and its neighbours' windows change.
CREATE TRIGGER context_memory_delete AFTER DELETE ON memories
BEGIN
    DELETE FROM context_vectors WHERE rid = old.rid;
    INSERT INTO context_queue (tenant, session_id)
        SELECT old.tenant, old.session_id WHERE old.session_id IS NOT NULL
        ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1;
END;

-- The vector index follows context vectors like the memories' own.
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
