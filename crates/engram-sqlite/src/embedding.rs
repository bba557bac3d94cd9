//! The embedding pipeline's port over SQLite: the `embedding_status` column is the queue,
//! vectors live in `memory_vectors`, and `embedding_cache` keeps vectors by content hash.

use std::collections::HashMap;

use async_trait::async_trait;
use engram_core::time::to_micros;
use engram_core::{
    ContextJob, ContextVector, EmbeddingJob, EmbeddingStatus, EmbeddingStore, MemoryId, ModelInfo,
    SessionTurn, StoreError, SweepReport, TenantId, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{db_err, SqliteStore};

fn to_blob(vectors: &[Vec<f32>]) -> Vec<u8> {
    engram_core::embed::vectors_to_bytes(vectors)
}

fn from_blob(b: &[u8], dim: usize) -> Result<Vec<Vec<f32>>, StoreError> {
    engram_core::embed::vectors_from_bytes(b, dim).ok_or_else(|| {
        StoreError::Other(format!(
            "corrupt vector blob of {} bytes for dim {dim}",
            b.len()
        ))
    })
}

fn check_dims(model: &ModelInfo, vectors: &[Vec<f32>]) -> Result<(), StoreError> {
    if vectors.is_empty() || vectors.iter().any(|v| v.len() != model.dim) {
        return Err(StoreError::Invalid(format!(
            "expected one or more vectors of dimension {} from {}",
            model.dim,
            model.key()
        )));
    }
    Ok(())
}

fn complete_one(
    conn: &Connection,
    model: &ModelInfo,
    key: &str,
    job: &EmbeddingJob,
    vectors: &[Vec<f32>],
    at: i64,
) -> Result<bool, StoreError> {
    check_dims(model, vectors)?;
    // Only while the claim holds, the content is the one embedded, and the model is the
    // active one (a worker of a replaced model must not land vectors of the wrong model).
    let rid: Option<i64> = conn
        .prepare_cached(
            "UPDATE memories SET embedding_status = 'completed', embedding_model = ?1, embedding_updated_at = ?2,
                 embedding_error = NULL, embedding_claim = NULL, embedding_lease_until = NULL,
                 embedding_next_attempt_at = NULL, version = version + 1
             WHERE id = ?3 AND embedding_status = 'processing' AND embedding_claim = ?4 AND content_hash = ?5
               AND deleted_at IS NULL
               AND EXISTS (SELECT 1 FROM embedding_models WHERE key = ?6 AND active = 1)
             RETURNING rid",
        )
        .and_then(|mut s| {
            s.query_row(
                params![model.id, at, job.memory_id.as_bytes().as_slice(), job.claim, job.content_hash, key],
                |r| r.get(0),
            )
            .optional()
        })
        .map_err(db_err)?;
    let Some(rid) = rid else {
        return Ok(false);
    };
    write_vectors(conn, key, rid, &job.content_hash, vectors, at)?;
    Ok(true)
}

/// Replaces a memory's vectors of one model (one row per window) and fills the cache.
fn write_vectors(
    conn: &Connection,
    key: &str,
    rid: i64,
    content_hash: &str,
    vectors: &[Vec<f32>],
    at: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM memory_vectors WHERE rid = ?1 AND model_key = ?2")
        .and_then(|mut s| s.execute(params![rid, key]))
        .map_err(db_err)?;
    let mut ins = conn
        .prepare_cached(
            "INSERT INTO memory_vectors (rid, model_key, window, content_hash, vector) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .map_err(db_err)?;
    for (w, v) in vectors.iter().enumerate() {
        ins.execute(params![
            rid,
            key,
            w as i64,
            content_hash,
            to_blob(std::slice::from_ref(v))
        ])
        .map_err(db_err)?;
    }
    conn.prepare_cached(
        "INSERT OR IGNORE INTO embedding_cache (model_key, content_hash, windows, vectors, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut s| s.execute(params![key, content_hash, vectors.len() as i64, to_blob(vectors), at]))
    .map_err(db_err)?;
    Ok(())
}

#[async_trait]
impl EmbeddingStore for SqliteStore {
    async fn register_model(&self, model: &ModelInfo) -> Result<(), StoreError> {
        let m = model.clone();
        self.inner
            .writer
            .write("register_model", move |conn, _| {
                let any_active: bool = conn
                    .query_row("SELECT EXISTS (SELECT 1 FROM embedding_models WHERE active = 1)", [], |r| r.get(0))
                    .map_err(db_err)?;
                conn.execute(
                    "INSERT INTO embedding_models (key, model_id, revision, dim, active, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (key) DO NOTHING",
                    params![m.key(), m.id, m.revision, m.dim as i64, !any_active, to_micros(engram_core::time::now())],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn active_model(&self) -> Result<Option<ModelInfo>, StoreError> {
        // Every semantic search asks: one row of a table of a few rows.
        self.inner
            .readers
            .run_inline("active_model", |conn| {
                conn.prepare_cached(
                    "SELECT model_id, revision, dim FROM embedding_models WHERE active = 1",
                )
                .map_err(db_err)?
                .query_row([], |r| {
                    Ok(ModelInfo {
                        id: r.get(0)?,
                        revision: r.get(1)?,
                        dim: r.get::<_, i64>(2)? as usize,
                    })
                })
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn claim_embeddings(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<EmbeddingJob>, StoreError> {
        let lease = to_micros(lease_until);
        self.inner
            .writer
            .write("claim_embeddings", move |conn, _| {
                let claim: i64 = rand_token();
                let mut stmt = conn
                    .prepare_cached(
                        "UPDATE memories SET embedding_status = 'processing', embedding_claim = ?1,
                             embedding_lease_until = ?2, embedding_attempts = embedding_attempts + 1,
                             version = version + 1
                         WHERE rid IN (
                             SELECT rid FROM memories
                             WHERE embedding_status = 'pending' AND embedding_status != 'completed'
                               AND deleted_at IS NULL
                             ORDER BY rid LIMIT ?3)
                         RETURNING id, tenant, content, content_hash, embedding_attempts",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![claim, lease, limit], |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(db_err)?;
                rows.into_iter()
                    .map(|(id, tenant, content, content_hash, attempts)| {
                        Ok(EmbeddingJob {
                            memory_id: MemoryId::from_bytes(&id).ok_or_else(|| StoreError::Other("corrupt id".into()))?,
                            tenant: TenantId::parse(&tenant).map_err(|_| StoreError::Other("corrupt tenant".into()))?,
                            content,
                            content_hash,
                            attempts: attempts.clamp(0, u32::MAX as i64) as u32,
                            claim,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn complete_embeddings(
        &self,
        model: &ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
        at: Timestamp,
    ) -> Result<Vec<bool>, StoreError> {
        let model = model.clone();
        let key = model.key();
        let at = to_micros(at);
        self.inner
            .writer
            .write("complete_embeddings", move |conn, careful| {
                results
                    .iter()
                    .map(|(job, vectors)| {
                        if careful {
                            // One bad result (e.g. a wrong dimension) fails alone.
                            Ok(crate::writer::in_savepoint(conn, "item", |c| {
                                complete_one(c, &model, &key, job, vectors, at)
                            })
                            .unwrap_or(false))
                        } else {
                            complete_one(conn, &model, &key, job, vectors, at)
                        }
                    })
                    .collect()
            })
            .await
    }

    async fn fail_embedding(
        &self,
        job: &EmbeddingJob,
        error: &str,
        retry_at: Option<Timestamp>,
        _at: Timestamp,
    ) -> Result<bool, StoreError> {
        let (id, claim) = (job.memory_id, job.claim);
        let error: String = error.chars().take(2000).collect();
        let retry = retry_at.map(to_micros);
        self.inner
            .writer
            .write("fail_embedding", move |conn, _| {
                conn.prepare_cached(
                    "UPDATE memories SET embedding_status = 'failed', embedding_error = ?1,
                         embedding_next_attempt_at = ?2, embedding_claim = NULL, embedding_lease_until = NULL,
                         version = version + 1
                     WHERE id = ?3 AND embedding_status = 'processing' AND embedding_claim = ?4",
                )
                .and_then(|mut s| s.execute(params![error, retry, id.as_bytes().as_slice(), claim]))
                .map(|n| n > 0)
                .map_err(db_err)
            })
            .await
    }

    async fn sweep_embeddings(
        &self,
        now: Timestamp,
        retry_since: Timestamp,
    ) -> Result<SweepReport, StoreError> {
        let (now, since) = (to_micros(now), to_micros(retry_since));
        self.inner
            .writer
            .write("sweep_embeddings", move |conn, _| {
                let expired_leases = conn
                    .execute(
                        "UPDATE memories SET embedding_status = 'pending', embedding_claim = NULL,
                             embedding_lease_until = NULL, version = version + 1
                         WHERE embedding_status = 'processing' AND embedding_status != 'completed'
                           AND deleted_at IS NULL AND embedding_lease_until < ?1",
                        params![now],
                    )
                    .map_err(db_err)? as u64;
                let retried = conn
                    .execute(
                        "UPDATE memories SET embedding_status = 'pending', embedding_next_attempt_at = NULL,
                             version = version + 1
                         WHERE embedding_status = 'failed' AND embedding_status != 'completed'
                           AND deleted_at IS NULL AND embedding_next_attempt_at <= ?1
                           AND embedding_next_attempt_at >= ?2",
                        params![now, since],
                    )
                    .map_err(db_err)? as u64;
                Ok(SweepReport { expired_leases, retried })
            })
            .await
    }

    async fn cached_embeddings(
        &self,
        model: &ModelInfo,
        content_hashes: &[String],
    ) -> Result<HashMap<String, Vec<Vec<f32>>>, StoreError> {
        let (key, dim) = (model.key(), model.dim);
        let hashes = content_hashes.to_vec();
        self.inner
            .readers
            .run("cached_embeddings", move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT vectors FROM embedding_cache WHERE model_key = ?1 AND content_hash = ?2")
                    .map_err(db_err)?;
                let mut out = HashMap::new();
                for h in hashes {
                    let blob: Option<Vec<u8>> = stmt.query_row(params![key, h], |r| r.get(0)).optional().map_err(db_err)?;
                    if let Some(b) = blob {
                        out.insert(h, from_blob(&b, dim)?);
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn embedding_queue_depth(&self) -> Result<Vec<(EmbeddingStatus, u64)>, StoreError> {
        self.inner
            .readers
            .run("embedding_queue_depth", |conn| {
                // One pass over the index of live memories, grouped by status.
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT embedding_status, COUNT(*) FROM memories WHERE deleted_at IS NULL
                         GROUP BY embedding_status",
                    )
                    .map_err(db_err)?;
                let counts: std::collections::HashMap<String, i64> = stmt
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(db_err)?;
                let out: Vec<(EmbeddingStatus, u64)> = EmbeddingStatus::ALL
                    .iter()
                    .map(|s| {
                        (
                            *s,
                            counts.get(s.as_str()).copied().unwrap_or(0).max(0) as u64,
                        )
                    })
                    .collect();
                Ok(out)
            })
            .await
    }

    async fn missing_vectors(
        &self,
        model: &ModelInfo,
        limit: u32,
    ) -> Result<Vec<EmbeddingJob>, StoreError> {
        let key = model.key();
        self.inner
            .readers
            .run("missing_vectors", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT m.id, m.tenant, m.content, m.content_hash FROM memories m
                         WHERE m.deleted_at IS NULL AND NOT EXISTS (
                             SELECT 1 FROM memory_vectors v
                             WHERE v.rid = m.rid AND v.model_key = ?1 AND v.content_hash = m.content_hash)
                         ORDER BY m.rid LIMIT ?2",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![key, limit], |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(db_err)?;
                rows.into_iter()
                    .map(|(id, tenant, content, content_hash)| {
                        Ok(EmbeddingJob {
                            memory_id: MemoryId::from_bytes(&id).ok_or_else(|| StoreError::Other("corrupt id".into()))?,
                            tenant: TenantId::parse(&tenant).map_err(|_| StoreError::Other("corrupt tenant".into()))?,
                            content,
                            content_hash,
                            attempts: 0,
                            claim: 0,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn store_vectors(
        &self,
        model: &ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
    ) -> Result<Vec<bool>, StoreError> {
        let model = model.clone();
        let key = model.key();
        let at = to_micros(engram_core::time::now());
        self.inner
            .writer
            .write("store_vectors", move |conn, _| {
                let mut out = Vec::with_capacity(results.len());
                for (job, vectors) in &results {
                    check_dims(&model, vectors)?;
                    let rid: Option<i64> = conn
                        .prepare_cached("SELECT rid FROM memories WHERE id = ?1 AND content_hash = ?2 AND deleted_at IS NULL")
                        .and_then(|mut s| {
                            s.query_row(params![job.memory_id.as_bytes().as_slice(), job.content_hash], |r| r.get(0))
                                .optional()
                        })
                        .map_err(db_err)?;
                    match rid {
                        Some(rid) => {
                            write_vectors(conn, &key, rid, &job.content_hash, vectors, at)?;
                            out.push(true);
                        }
                        None => out.push(false),
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn activate_model(&self, model: &ModelInfo, at: Timestamp) -> Result<u64, StoreError> {
        let model = model.clone();
        let key = model.key();
        let at = to_micros(at);
        self.inner
            .writer
            .write("activate_model", move |conn, _| {
                let missing: i64 = conn
                    .query_row(
                        "SELECT COUNT(*) FROM memories m WHERE m.deleted_at IS NULL AND NOT EXISTS (
                             SELECT 1 FROM memory_vectors v
                             WHERE v.rid = m.rid AND v.model_key = ?1 AND v.content_hash = m.content_hash)",
                        params![key],
                        |r| r.get(0),
                    )
                    .map_err(db_err)?;
                if missing > 0 {
                    return Ok(missing as u64);
                }
                conn.execute("UPDATE embedding_models SET active = (key = ?1)", params![key])
                    .map_err(db_err)?;
                conn.execute(
                    "UPDATE memories SET embedding_status = 'completed', embedding_model = ?1, embedding_updated_at = ?2,
                         embedding_error = NULL, embedding_claim = NULL, embedding_lease_until = NULL,
                         embedding_next_attempt_at = NULL, embedding_attempts = 0, version = version + 1
                     WHERE deleted_at IS NULL",
                    params![model.id, at],
                )
                .map_err(db_err)?;
                // Every session's context vectors are remade with the new model.
                conn.execute(
                    "INSERT INTO context_queue (tenant, session_id)
                     SELECT DISTINCT tenant, session_id FROM memories
                     WHERE session_id IS NOT NULL AND deleted_at IS NULL
                     ON CONFLICT (tenant, session_id) DO UPDATE SET claim = claim + 1",
                    [],
                )
                .map_err(db_err)?;
                Ok(0)
            })
            .await
    }

    async fn claim_contexts(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ContextJob>, StoreError> {
        let lease = to_micros(lease_until);
        let now = to_micros(engram_core::time::now());
        self.inner
            .writer
            .write("claim_contexts", move |conn, _| {
                let rows = conn
                    .prepare_cached(
                        "UPDATE context_queue SET lease_until = ?1
                         WHERE rowid IN (
                             SELECT rowid FROM context_queue
                             WHERE lease_until IS NULL OR lease_until < ?2
                             ORDER BY rowid LIMIT ?3)
                         RETURNING tenant, session_id, claim",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![lease, now, limit], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, i64>(2)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(db_err)?;
                rows.into_iter()
                    .map(|(tenant, session_id, claim)| {
                        Ok(ContextJob {
                            tenant: TenantId::parse(&tenant)
                                .map_err(|_| StoreError::Other("corrupt tenant".into()))?,
                            session_id,
                            claim,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn session_turns(
        &self,
        job: &ContextJob,
        model: &ModelInfo,
    ) -> Result<Vec<SessionTurn>, StoreError> {
        let (tenant, session, key) = (
            job.tenant.as_str().to_owned(),
            job.session_id.clone(),
            model.key(),
        );
        self.inner
            .readers
            .run("session_turns", move |conn| {
                let rows = conn
                    .prepare_cached(
                        "SELECT m.id, m.user_id, m.content, c.context_hash FROM memories m
                         LEFT JOIN context_vectors c ON c.rid = m.rid AND c.model_key = ?3
                         WHERE m.tenant = ?1 AND m.session_id = ?2 AND m.deleted_at IS NULL
                         ORDER BY coalesce(m.valid_from, m.created_at), m.rid",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![tenant, session, key], |r| {
                            Ok((
                                r.get::<_, Vec<u8>>(0)?,
                                r.get::<_, Option<String>>(1)?,
                                r.get::<_, String>(2)?,
                                r.get::<_, Option<String>>(3)?,
                            ))
                        })?
                        .collect::<Result<Vec<_>, _>>()
                    })
                    .map_err(db_err)?;
                rows.into_iter()
                    .map(|(id, user_id, content, context_hash)| {
                        Ok(SessionTurn {
                            memory_id: MemoryId::from_bytes(&id)
                                .ok_or_else(|| StoreError::Other("corrupt id".into()))?,
                            user_id,
                            content,
                            context_hash,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn complete_context(
        &self,
        job: &ContextJob,
        model: &ModelInfo,
        vectors: Vec<ContextVector>,
    ) -> Result<bool, StoreError> {
        let (job, model) = (job.clone(), model.clone());
        self.inner
            .writer
            .write("complete_context", move |conn, _| {
                let key = model.key();
                let mut put = conn
                    .prepare_cached(
                        "INSERT INTO context_vectors (rid, model_key, context_hash, vector)
                         SELECT rid, ?2, ?3, ?4 FROM memories
                         WHERE id = ?1 AND tenant = ?5 AND session_id = ?6 AND deleted_at IS NULL
                         ON CONFLICT (rid, model_key) DO UPDATE
                         SET context_hash = excluded.context_hash, vector = excluded.vector",
                    )
                    .map_err(db_err)?;
                for v in &vectors {
                    check_dims(&model, std::slice::from_ref(&v.vector))?;
                    put.execute(params![
                        v.memory_id.as_bytes().as_slice(),
                        key,
                        v.context_hash,
                        to_blob(std::slice::from_ref(&v.vector)),
                        job.tenant.as_str(),
                        job.session_id,
                    ])
                    .map_err(db_err)?;
                }
                let done = conn
                    .prepare_cached(
                        "DELETE FROM context_queue WHERE tenant = ?1 AND session_id = ?2 AND claim = ?3",
                    )
                    .and_then(|mut s| s.execute(params![job.tenant.as_str(), job.session_id, job.claim]))
                    .map_err(db_err)?
                    > 0;
                if !done {
                    conn.prepare_cached(
                        "UPDATE context_queue SET lease_until = NULL WHERE tenant = ?1 AND session_id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![job.tenant.as_str(), job.session_id]))
                    .map_err(db_err)?;
                }
                Ok(done)
            })
            .await
    }

    async fn memory_vectors(
        &self,
        tenant: &TenantId,
        id: MemoryId,
        model: &ModelInfo,
    ) -> Result<Vec<Vec<f32>>, StoreError> {
        let (tenant, key, dim) = (tenant.as_str().to_owned(), model.key(), model.dim);
        self.inner
            .readers
            .run("memory_vectors", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT v.vector FROM memory_vectors v JOIN memories m ON m.rid = v.rid
                         WHERE m.id = ?1 AND m.tenant = ?2 AND m.deleted_at IS NULL AND v.model_key = ?3
                         ORDER BY v.window",
                    )
                    .map_err(db_err)?;
                let blobs = stmt
                    .query_map(params![id.as_bytes().as_slice(), tenant, key], |r| r.get::<_, Vec<u8>>(0))
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(db_err)?;
                let mut out = Vec::new();
                for b in blobs {
                    out.extend(from_blob(&b, dim)?);
                }
                Ok(out)
            })
            .await
    }
}

/// A random claim token.
fn rand_token() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as i64
}
