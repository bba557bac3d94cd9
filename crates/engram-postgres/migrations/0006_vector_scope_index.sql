-- One user's vectors side by side (see 0005_vector_scope.sql), for exact search over a
-- user's memories without reading the memories. A B-tree entry holds at most 2,704 bytes,
-- so the index takes the vectors that surely fit — at most 384 dimensions (1,544 bytes),
-- beside a user id and a model key of at most 200 bytes each — and searches over any
-- other go through the memories (search.rs checks the same bounds).
CREATE INDEX memory_vectors_scope ON memory_vectors (tenant, user_id, model_key)
    INCLUDE (memory_id, rid, embedding)
    WHERE user_id IS NOT NULL AND octet_length(user_id) <= 200
      AND octet_length(model_key) <= 200 AND vector_dims(embedding) <= 384;
