-- engram on Postgres: the same ground state as the embedded store, in Postgres types.
-- Timestamps are microseconds since the Unix epoch (UTC), as in the embedded store, so
-- page tokens and change records are identical on both backends.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE memories (
    rid                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                        uuid NOT NULL UNIQUE,
    tenant                    text NOT NULL,
    user_id                   text,
    agent_id                  text,
    project                   text,
    domain                    text,
    session_id                text,
    content                   text NOT NULL,
    memory_type               text NOT NULL,
    source                    text NOT NULL,
    source_ref                text,
    title                     text,
    tags                      text[] NOT NULL DEFAULT '{}',
    metadata                  jsonb NOT NULL DEFAULT '{}',
    content_hash              text NOT NULL,
    embedding_status          text NOT NULL,
    embedding_model           text,
    embedding_updated_at      bigint,
    embedding_error           text,
    created_at                bigint NOT NULL,
    updated_at                bigint NOT NULL,
    accessed_at               bigint NOT NULL,
    deleted_at                bigint,
    valid_from                bigint,
    valid_to                  bigint,
    version                   bigint NOT NULL,
    related_ids               jsonb NOT NULL DEFAULT '[]',
    conversation_id           text,
    -- The embedding queue: a claim's lease and the retry schedule.
    embedding_attempts        integer NOT NULL DEFAULT 0,
    embedding_claim           bigint,
    embedding_lease_until     bigint,
    embedding_next_attempt_at bigint,
    -- Full-text: content, title and tags, English stemming. Derived, written with the
    -- row (NULL once deleted), so a write is keyword-searchable when it commits.
    tsv                       tsvector
);

-- One index per list filter and sort key; deleted rows are left out of all of them.
CREATE INDEX memories_created   ON memories (tenant, created_at, id)  WHERE deleted_at IS NULL;
CREATE INDEX memories_updated   ON memories (tenant, updated_at, id)  WHERE deleted_at IS NULL;
CREATE INDEX memories_accessed  ON memories (tenant, accessed_at, id) WHERE deleted_at IS NULL;
CREATE INDEX memories_type      ON memories (tenant, memory_type, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX memories_source    ON memories (tenant, source, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX memories_embedding ON memories (tenant, embedding_status, created_at, id) WHERE deleted_at IS NULL;
CREATE INDEX memories_user      ON memories (tenant, user_id, created_at, id)    WHERE deleted_at IS NULL AND user_id IS NOT NULL;
CREATE INDEX memories_agent     ON memories (tenant, agent_id, created_at, id)   WHERE deleted_at IS NULL AND agent_id IS NOT NULL;
CREATE INDEX memories_project   ON memories (tenant, project, created_at, id)    WHERE deleted_at IS NULL AND project IS NOT NULL;
CREATE INDEX memories_domain    ON memories (tenant, domain, created_at, id)     WHERE deleted_at IS NULL AND domain IS NOT NULL;
CREATE INDEX memories_session   ON memories (tenant, session_id, created_at, id) WHERE deleted_at IS NULL AND session_id IS NOT NULL;
CREATE INDEX memories_tags      ON memories USING gin (tags) WHERE deleted_at IS NULL;
CREATE INDEX memories_fts       ON memories USING gin (tsv) WHERE deleted_at IS NULL;
-- Claims take due rows across tenants, oldest first; completed rows are not in it.
CREATE INDEX memories_embed_queue ON memories (embedding_status, rid)
    WHERE deleted_at IS NULL AND embedding_status <> 'completed';
-- Purges and the purge of orphaned cache entries look rows up by hash.
CREATE INDEX memories_content_hash ON memories (content_hash);

-- The change log. `seq` is given in commit order by the sequencer (see changes.rs), not
-- at insert: an identity assigned at insert would let a reader pass over a change whose
-- transaction commits after a later-numbered one.
CREATE TABLE changes (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq       bigint UNIQUE,
    tenant    text NOT NULL,
    memory_id uuid NOT NULL,
    op        text NOT NULL,
    version   bigint NOT NULL,
    at        bigint NOT NULL,
    payload   jsonb NOT NULL            -- the memory after the change
);
CREATE INDEX changes_tenant ON changes (tenant, seq);
CREATE INDEX changes_unsequenced ON changes (id) WHERE seq IS NULL;
CREATE INDEX changes_memory ON changes (memory_id);

CREATE TABLE idempotency_keys (
    tenant      text NOT NULL,
    key         text NOT NULL,
    fingerprint text NOT NULL,
    memory_id   uuid NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_memory ON idempotency_keys (memory_id);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    tenant     text NOT NULL,
    hash       text NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    revoked_at bigint
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- Every model that produced vectors: id, revision (weights hash) and dimension.
CREATE TABLE embedding_models (
    key        text PRIMARY KEY,            -- "<id>@<revision>"
    model_id   text NOT NULL,
    revision   text NOT NULL,
    dim        integer NOT NULL,
    active     boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL
);
CREATE UNIQUE INDEX embedding_models_one_active ON embedding_models (active) WHERE active;

-- Derived state: one vector per window of a memory's content, per model. Each model gets
-- an HNSW index over `embedding::vector(dim)` restricted to its rows when it registers.
CREATE TABLE memory_vectors (
    rid          bigint NOT NULL REFERENCES memories (rid) ON DELETE CASCADE,
    model_key    text NOT NULL,
    win          integer NOT NULL,
    content_hash text NOT NULL,
    embedding    vector NOT NULL,
    PRIMARY KEY (rid, model_key, win)
);

-- Derived state: identical content is never embedded twice by the same model.
CREATE TABLE embedding_cache (
    model_key    text NOT NULL,
    content_hash text NOT NULL,
    windows      integer NOT NULL,
    vectors      bytea NOT NULL,            -- windows × dim little-endian f32
    created_at   bigint NOT NULL,
    PRIMARY KEY (model_key, content_hash)
);

-- Context vectors: one per memory of a session, over its window of turns.
CREATE TABLE context_vectors (
    rid          bigint NOT NULL REFERENCES memories (rid) ON DELETE CASCADE,
    model_key    text NOT NULL,
    context_hash text NOT NULL,
    embedding    vector NOT NULL,
    PRIMARY KEY (rid, model_key)
);

-- Sessions whose windows may be out of date. `claim` grows with every change to the
-- session, so a worker that embedded an older state does not clear a newer one.
CREATE TABLE context_queue (
    tenant      text NOT NULL,
    session_id  text NOT NULL,
    claim       bigint NOT NULL DEFAULT 1,
    lease_until bigint,
    queued      bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (tenant, session_id)
);

CREATE FUNCTION engram_queue_session(t text, s text) RETURNS void LANGUAGE sql AS $$
    INSERT INTO context_queue (tenant, session_id) VALUES (t, s)
    ON CONFLICT (tenant, session_id) DO UPDATE SET claim = context_queue.claim + 1;
$$;

-- The context queue follows every change to what a window holds: the text, the order
-- (valid_from), who is in the conversation (user_id), the session, or the deletion.
CREATE FUNCTION engram_memories_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER memories_changed_insert AFTER INSERT ON memories
    FOR EACH ROW WHEN (NEW.session_id IS NOT NULL) EXECUTE FUNCTION engram_memories_changed();
CREATE TRIGGER memories_changed_update AFTER UPDATE ON memories
    FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash
        OR OLD.session_id IS DISTINCT FROM NEW.session_id
        OR OLD.user_id IS DISTINCT FROM NEW.user_id
        OR OLD.valid_from IS DISTINCT FROM NEW.valid_from
        OR OLD.deleted_at IS DISTINCT FROM NEW.deleted_at)
    EXECUTE FUNCTION engram_memories_changed();
CREATE TRIGGER memories_changed_delete AFTER DELETE ON memories
    FOR EACH ROW WHEN (OLD.session_id IS NOT NULL) EXECUTE FUNCTION engram_memories_changed();

-- Leases for work only one replica may do at a time (the sweeper, tier migration).
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      text NOT NULL,
    expires_at  bigint NOT NULL
);
