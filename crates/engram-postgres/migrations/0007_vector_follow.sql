-- One shape for every database that took migrations 5 and 6. Their first texts (shipped
-- in 015d9d3, kept in superseded/) copied a memory's new user to its vectors inside
-- engram_memories_changed, and built memory_vectors_scope over every vector. The texts that
-- replaced them keep engram_memories_changed as 0004 left it, move that work to a trigger
-- of its own (engram_vectors_follow_memory), and index only the vectors that surely fit a
-- B-tree page. A database may hold either text of each; this migration brings all of them
-- to the second shape, and changes nothing where it is already there.

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

-- Vectors follow their memory: a new content drops the old content's vectors (a delete
-- drops them all, in engram_memories_changed), a new user is copied to them.
CREATE OR REPLACE FUNCTION engram_vectors_follow_memory() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.content_hash IS DISTINCT FROM NEW.content_hash THEN
        DELETE FROM memory_vectors WHERE rid = NEW.rid AND content_hash <> NEW.content_hash;
    END IF;
    IF OLD.user_id IS DISTINCT FROM NEW.user_id THEN
        UPDATE memory_vectors SET user_id = NEW.user_id WHERE rid = NEW.rid;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS memories_vectors_follow ON memories;
CREATE TRIGGER memories_vectors_follow AFTER UPDATE ON memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash
        OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION engram_vectors_follow_memory();

-- The first memory_vectors_scope indexed every vector (and failed on any entry too big for
-- a B-tree page); rebuilt partial only where it is not partial yet.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index i
               JOIN pg_class c ON c.oid = i.indexrelid
               WHERE c.relname = 'memory_vectors_scope'
                 AND c.relnamespace = (SELECT oid FROM pg_namespace
                                       WHERE nspname = current_schema())
                 AND i.indpred IS NULL) THEN
        DROP INDEX memory_vectors_scope;
        CREATE INDEX memory_vectors_scope ON memory_vectors (tenant, user_id, model_key)
            INCLUDE (memory_id, rid, embedding)
            WHERE user_id IS NOT NULL AND octet_length(user_id) <= 200
              AND octet_length(model_key) <= 200 AND vector_dims(embedding) <= 384;
    END IF;
END;
$$;
