-- Tasks assigned to an agent (the body's `assigned_agent`), newest first: an agent's
-- snapshot lists them without reading every active task. Queries must use the same
-- expression for the index to serve them.
CREATE INDEX records_assigned ON records (tenant, kind, (body->>'assigned_agent'), created_at, id);
