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

-- Vectors follow their memory: a new content drops the old content's vectors (a delete
-- drops them all, in engram_memories_changed), a new user is copied to them.
CREATE FUNCTION engram_vectors_follow_memory() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER memories_vectors_follow AFTER UPDATE ON memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash
        OR OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION engram_vectors_follow_memory();
