-- The list-filter indexes also hold `deleted_at` (always NULL in them: each is partial on
-- `deleted_at IS NULL`). SQLite does not count a partial index's `IS NULL` condition as
-- covering the column, so every query saying `m.deleted_at IS NULL` (all of them) read each
-- matching row from the table just to check it: listing the 1,000 memories of one user as
-- search candidates touched about as many table pages, scattered over the whole table,
-- where the index holds them in a dozen. With the column in the index, candidate lists and
-- counts are index-only. The key order is unchanged (the added column is constant).
DROP INDEX memories_created;
DROP INDEX memories_updated;
DROP INDEX memories_accessed;
DROP INDEX memories_type;
DROP INDEX memories_source;
DROP INDEX memories_embedding;
DROP INDEX memories_user;
DROP INDEX memories_agent;
DROP INDEX memories_project;
DROP INDEX memories_domain;
DROP INDEX memories_session;
CREATE INDEX memories_created   ON memories (tenant, created_at, id, deleted_at)  WHERE deleted_at IS NULL;
CREATE INDEX memories_updated   ON memories (tenant, updated_at, id, deleted_at)  WHERE deleted_at IS NULL;
CREATE INDEX memories_accessed  ON memories (tenant, accessed_at, id, deleted_at) WHERE deleted_at IS NULL;
CREATE INDEX memories_type      ON memories (tenant, memory_type, created_at, id, deleted_at) WHERE deleted_at IS NULL;
CREATE INDEX memories_source    ON memories (tenant, source, created_at, id, deleted_at) WHERE deleted_at IS NULL;
CREATE INDEX memories_embedding ON memories (tenant, embedding_status, created_at, id, deleted_at) WHERE deleted_at IS NULL;
CREATE INDEX memories_user      ON memories (tenant, user_id, created_at, id, deleted_at)    WHERE deleted_at IS NULL AND user_id IS NOT NULL;
CREATE INDEX memories_agent     ON memories (tenant, agent_id, created_at, id, deleted_at)   WHERE deleted_at IS NULL AND agent_id IS NOT NULL;
CREATE INDEX memories_project   ON memories (tenant, project, created_at, id, deleted_at)    WHERE deleted_at IS NULL AND project IS NOT NULL;
CREATE INDEX memories_domain    ON memories (tenant, domain, created_at, id, deleted_at)     WHERE deleted_at IS NULL AND domain IS NOT NULL;
CREATE INDEX memories_session   ON memories (tenant, session_id, created_at, id, deleted_at) WHERE deleted_at IS NULL AND session_id IS NOT NULL;
