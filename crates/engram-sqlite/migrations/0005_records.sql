-- The working tier: records of every kind (goals, tasks, tool calls, decisions, patterns,
-- agent state, sessions, messages, checkpoints, kept events). The envelope is indexed;
-- the kind's own fields are the JSON body.
CREATE TABLE records (
    rid        INTEGER PRIMARY KEY,
    id         BLOB NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    user_id    TEXT,
    agent_id   TEXT,
    project    TEXT,
    domain     TEXT,
    session_id TEXT,
    parent_id  BLOB,
    status     TEXT,
    key        TEXT,
    memory_id  BLOB,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version    INTEGER NOT NULL
);
CREATE INDEX records_kind ON records (tenant, kind, created_at, id);
CREATE INDEX records_parent ON records (tenant, parent_id, created_at, id) WHERE parent_id IS NOT NULL;
CREATE INDEX records_status ON records (tenant, kind, status, created_at, id) WHERE status IS NOT NULL;
CREATE INDEX records_project ON records (tenant, kind, project, created_at, id) WHERE project IS NOT NULL;
CREATE INDEX records_agent ON records (tenant, kind, agent_id, created_at, id) WHERE agent_id IS NOT NULL;
CREATE INDEX records_user ON records (tenant, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX records_updated ON records (tenant, updated_at);
CREATE UNIQUE INDEX records_key ON records (tenant, kind, ifnull(agent_id, ''), key) WHERE key IS NOT NULL;

-- Records share the change log (and its seq order) with memories.
ALTER TABLE changes ADD COLUMN entity TEXT NOT NULL DEFAULT 'memory';
