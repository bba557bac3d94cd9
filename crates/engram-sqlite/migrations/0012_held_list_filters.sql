-- Lists filtered by type, source, user, agent, project, domain or tags are answered from
-- the fields the keyword index holds for every live memory (its posting lists per
-- tenant, field and value; `keywords::Keywords::list`), and a search's candidates for
-- such a filter came from there already. The SQLite indexes that served those filters
-- cost the writer about 40 % of its work per inserted memory (docs/benchmarks.md), for
-- queries that no longer use them while the server runs. Without them, a one-shot
-- command (which builds no keyword index) and the first seconds after a start list such
-- filters by scanning the tenant's rows in `memories_created` order.
--
-- Kept: the three sort orders (`memories_created`, `memories_updated`,
-- `memories_accessed`: a tenant's whole list and its pages), `memories_embedding` (the
-- fields do not hold a memory's embedding status) and `memories_session` (a session's
-- turns are read by the context-vector worker).
DROP INDEX memories_type;
DROP INDEX memories_source;
DROP INDEX memories_user;
DROP INDEX memories_agent;
DROP INDEX memories_project;
DROP INDEX memories_domain;
-- Tag membership is checked on the row (`json_each(m.tags)`) where SQLite still lists.
DROP TABLE memory_tags;
