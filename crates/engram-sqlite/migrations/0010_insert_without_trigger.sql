-- Inserting a memory no longer fires a trigger. Any trigger on a statement makes SQLite
-- open a statement journal for it (a copy of every page the statement touches, so that a
-- failing trigger can be undone alone), even when the trigger's WHEN clause is false: that
-- copying was a third of the writer thread's work per bulk-inserted memory. The store now
-- queues a new memory's session for its context vectors itself, in the statement after
-- the insert and in the same transaction (`rows::insert_row`).
DROP TRIGGER context_memory_insert;
