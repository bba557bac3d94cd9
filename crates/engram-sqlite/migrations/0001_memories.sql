-- Memories: ground state. Timestamps are microseconds since the Unix epoch (UTC).
CREATE TABLE memories (
    rid                  INTEGER PRIMARY KEY,
    id                   BLOB NOT NULL UNIQUE,          -- UUIDv7, 16 bytes
    tenant               TEXT NOT NULL,
    user_id              TEXT,
    agent_id             TEXT,
    project              TEXT,
    domain               TEXT,
    session_id           TEXT,
    content              TEXT NOT NULL,
    memory_type          TEXT NOT NULL,
    source               TEXT NOT NULL,
    source_ref           TEXT,
    title                TEXT,
    tags                 TEXT NOT NULL DEFAULT '[]',    -- JSON array
    metadata             TEXT NOT NULL DEFAULT '{}',    -- JSON object
    content_hash         TEXT NOT NULL,
    embedding_status     TEXT NOT NULL,
    embedding_model      TEXT,
    embedding_updated_at INTEGER,
    embedding_error      TEXT,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    accessed_at          INTEGER NOT NULL,
    deleted_at           INTEGER,
    valid_from           INTEGER,
    valid_to             INTEGER,
    version              INTEGER NOT NULL,
    related_ids          TEXT NOT NULL DEFAULT '[]',    -- JSON array of UUID strings
    conversation_id      TEXT
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

-- Tag membership, for "all of these tags" filters. Rows of deleted memories are removed.
-- Maintained by the store (no foreign key: updates delete a memory's old tags by key, and
-- purges delete by tenant), so inserts pay for no extra index.
CREATE TABLE memory_tags (
    tenant TEXT NOT NULL,
    tag    TEXT NOT NULL,
    rid    INTEGER NOT NULL,
    PRIMARY KEY (tenant, tag, rid)
) WITHOUT ROWID;

-- The change log: one record per change to a memory, in commit order.
CREATE TABLE changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant    TEXT NOT NULL,
    memory_id BLOB NOT NULL,
    op        TEXT NOT NULL,
    version   INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    payload   TEXT NOT NULL                             -- the memory after the change, JSON
);
CREATE INDEX changes_tenant ON changes (tenant, seq);

-- Idempotency keys of creates: a retried request returns the memory it first created.
CREATE TABLE idempotency_keys (
    tenant      TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    memory_id   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_memory ON idempotency_keys (memory_id);

-- API keys, stored as SHA-256 hashes.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);
