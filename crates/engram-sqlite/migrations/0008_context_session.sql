-- A memory that leaves its session loses its context vector (its window was over the
-- old session's turns); before, only a delete removed it, so a memory taken out of every
-- session kept mixing a stale window into its score. Stale vectors are removed here too.
DROP TRIGGER context_memory_update;

CREATE TRIGGER context_memory_update AFTER UPDATE ON memories
WHEN old.content_hash IS NOT new.content_hash OR old.session_id IS NOT new.session_id
    OR old.user_id IS NOT new.user_id OR old.valid_from IS NOT new.valid_from
    OR old.deleted_at IS NOT new.deleted_at
BEGIN
    DELETE FROM context_vectors WHERE rid = new.rid
        AND (new.deleted_at IS NOT NULL OR old.session_id IS NOT new.session_id);
    INSERT INTO context_queue (tenant, session_id)
        SELECT old.tenant, old.session_id WHERE old.session_id IS NOT NULL
        ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1;
    INSERT INTO context_queue (tenant, session_id)
        SELECT new.tenant, new.session_id
        WHERE new.session_id IS NOT NULL AND new.session_id IS NOT old.session_id
        ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1;
END;

DELETE FROM context_vectors
WHERE rid IN (SELECT rid FROM memories WHERE session_id IS NULL);
