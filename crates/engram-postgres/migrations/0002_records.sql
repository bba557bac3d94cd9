-- The working tier: records of every kind (goals, tasks, tool calls, decisions, patterns,
-- agent state, sessions, messages, checkpoints, kept events). The envelope is indexed;
-- the kind's own fields are the JSON body. Timestamps are microseconds since the Unix
-- epoch, as everywhere else.
CREATE TABLE records (
    id         uuid PRIMARY KEY,
    tenant     text NOT NULL,
    kind       text NOT NULL,
    user_id    text,
    agent_id   text,
    project    text,
    domain     text,
    session_id text,
    parent_id  uuid,
    status     text,
    key        text,
    memory_id  uuid,
    body       jsonb NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    version    bigint NOT NULL
);
CREATE INDEX records_kind    ON records (tenant, kind, created_at, id);
CREATE INDEX records_parent  ON records (tenant, parent_id, created_at, id) WHERE parent_id IS NOT NULL;
CREATE INDEX records_status  ON records (tenant, kind, status, created_at, id) WHERE status IS NOT NULL;
CREATE INDEX records_project ON records (tenant, kind, project, created_at, id) WHERE project IS NOT NULL;
CREATE INDEX records_agent   ON records (tenant, kind, agent_id, created_at, id) WHERE agent_id IS NOT NULL;
CREATE INDEX records_user    ON records (tenant, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX records_updated ON records (tenant, updated_at);
-- Agent state keys and kept events' ids are unique per (tenant, kind, agent).
CREATE UNIQUE INDEX records_key ON records (tenant, kind, coalesce(agent_id, ''), key) WHERE key IS NOT NULL;

-- Records share the change log (and its seq order, given by the sequencer) with
-- memories. For a record's entries, `memory_id` holds the record's id and `payload` the
-- record. A constant default: existing rows are not rewritten.
ALTER TABLE changes ADD COLUMN entity text NOT NULL DEFAULT 'memory';
