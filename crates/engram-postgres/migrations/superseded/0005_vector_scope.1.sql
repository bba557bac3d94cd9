-- Vectors beside their scope: each memory vector carries its memory's tenant, user and id,
-- and one covering index holds a user's vectors side by side, so an exact search over one
-- user's memories reads a few hundred contiguous index pages instead of visiting each
-- memory's row and then its vector (about 4,000 scattered buffer visits for 1,000
-- memories). The price is a second copy of every vector, in that index.
--
-- Invariant from here on: a memory's vectors are of its current content, and carry its
-- current user. A change of content removes the vectors of the old content (they were
-- never used: every search compared content hashes); a change of user is copied to them.
-- Vectors are written under the memory's row lock (the completing UPDATE, or FOR SHARE),
-- so neither change can slip in between.
ALTER TABLE memory_vectors
    ADD COLUMN tenant    text,
    ADD COLUMN user_id   text,
    ADD COLUMN memory_id uuid;

DELETE FROM memory_vectors v USING memories m
WHERE v.rid = m.rid AND (v.content_hash <> m.content_hash OR m.deleted_at IS NOT NULL);

UPDATE memory_vectors v SET tenant = m.tenant, user_id = m.user_id, memory_id = m.id
FROM memories m WHERE m.rid = v.rid;

ALTER TABLE memory_vectors
    ALTER COLUMN tenant SET NOT NULL,
    ALTER COLUMN memory_id SET NOT NULL;

-- The covering index is built by the next migration, in its own transaction: built in
-- this one, it would also hold every row version the backfill above replaced.

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
    ELSE
        IF OLD.session_id IS DISTINCT FROM NEW.session_id THEN
            -- Its window was in the old session: gone with it (the new session's, if any,
            -- is embedded by the context worker).
            DELETE FROM context_vectors WHERE rid = NEW.rid;
        END IF;
        IF OLD.content_hash IS DISTINCT FROM NEW.content_hash THEN
            DELETE FROM memory_vectors WHERE rid = NEW.rid AND content_hash <> NEW.content_hash;
        END IF;
        IF OLD.user_id IS DISTINCT FROM NEW.user_id THEN
            UPDATE memory_vectors SET user_id = NEW.user_id WHERE rid = NEW.rid;
        END IF;
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
