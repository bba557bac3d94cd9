-- The embedding pipeline. The memory's embedding_status is the queue; these columns hold
-- a claim's lease and the retry schedule.
ALTER TABLE memories ADD COLUMN embedding_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE memories ADD COLUMN embedding_claim INTEGER;            -- token of the claim holding the lease
ALTER TABLE memories ADD COLUMN embedding_lease_until INTEGER;
ALTER TABLE memories ADD COLUMN embedding_next_attempt_at INTEGER;  -- when a failed embedding is retried

-- Claims take due rows across tenants, oldest first; completed rows are not in it.
CREATE INDEX memories_embed_queue ON memories (embedding_status, rid)
    WHERE deleted_at IS NULL AND embedding_status != 'completed';

-- Every model that produced vectors: id, revision (weights hash) and dimension.
CREATE TABLE embedding_models (
    key        TEXT PRIMARY KEY,            -- "<id>@<revision>"
    model_id   TEXT NOT NULL,
    revision   TEXT NOT NULL,
    dim        INTEGER NOT NULL,
    active     INTEGER NOT NULL DEFAULT 0,  -- the model search uses; exactly one when any exists
    created_at INTEGER NOT NULL
);

-- Derived state: one vector per window of a memory's content, per model.
CREATE TABLE memory_vectors (
    rid          INTEGER NOT NULL,
    model_key    TEXT NOT NULL,
    window       INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    vector       BLOB NOT NULL,             -- little-endian f32 × dim
    PRIMARY KEY (rid, model_key, window)
) WITHOUT ROWID;

-- Derived state: identical content is never embedded twice by the same model.
CREATE TABLE embedding_cache (
    model_key    TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    windows      INTEGER NOT NULL,
    vectors      BLOB NOT NULL,             -- windows × dim little-endian f32
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (model_key, content_hash)
) WITHOUT ROWID;
