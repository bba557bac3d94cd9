-- One user's vectors side by side (see 0005_vector_scope.sql), for exact search over a
-- user's, or a small tenant's, memories without reading the memories.
CREATE INDEX memory_vectors_scope ON memory_vectors (tenant, user_id, model_key)
    INCLUDE (memory_id, rid, embedding);
