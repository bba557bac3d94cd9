-- A memory that leaves its session loses its context vector (its window was over the
-- old session's turns); before, only a delete removed it, so a memory taken out of every
-- session kept mixing a stale window into its score. Stale vectors are removed here too.
CREATE OR REPLACE FUNCTION engram_memories_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.session_id IS NOT NULL AND NEW.deleted_at IS NULL THEN
            PERFORM engram_queue_session(NEW.tenant, NEW.session_id);
        END IF;
        RETURN NULL;
    ELSIF TG_OP = 'DELETE' THEN
        IF OLD.session_id IS NOT NULL THEN
            PERFORM engram_queue_session(OLD.tenant, OLD.session_id);
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.deleted_at IS NOT NULL AND OLD.deleted_at IS NULL THEN
        -- Deleted means deleted from the derived state too.
        DELETE FROM memory_vectors WHERE rid = NEW.rid;
        DELETE FROM context_vectors WHERE rid = NEW.rid;
    ELSIF OLD.session_id IS DISTINCT FROM NEW.session_id THEN
        -- Its window was in the old session: gone with it (the new session's, if any,
        -- is embedded by the context worker).
        DELETE FROM context_vectors WHERE rid = NEW.rid;
    END IF;
    IF OLD.content_hash IS DISTINCT FROM NEW.content_hash
        OR OLD.session_id IS DISTINCT FROM NEW.session_id
        OR OLD.user_id IS DISTINCT FROM NEW.user_id
        OR OLD.valid_from IS DISTINCT FROM NEW.valid_from
        OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at THEN
        IF OLD.session_id IS NOT NULL THEN
            PERFORM engram_queue_session(OLD.tenant, OLD.session_id);
        END IF;
        IF NEW.session_id IS NOT NULL AND NEW.session_id IS DISTINCT FROM OLD.session_id THEN
            PERFORM engram_queue_session(NEW.tenant, NEW.session_id);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

DELETE FROM context_vectors x USING memories m
WHERE x.rid = m.rid AND m.session_id IS NULL;
