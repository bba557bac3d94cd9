//! The embedding pipeline's port over Postgres: the `embedding_status` column is the
//! queue (claimed with `FOR UPDATE SKIP LOCKED`, so replicas never claim the same memory),
//! vectors live in `memory_vectors` as pgvector values, `embedding_cache` keeps vectors by
//! content hash, and each model gets its own HNSW index when it registers.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use engram_core::time::to_micros;
use engram_core::{
    ContextJob, ContextVector, EmbeddingJob, EmbeddingStatus, EmbeddingStore, MemoryId, ModelInfo,
    SessionTurn, StoreError, SweepReport, TenantId, Timestamp,
};
use pgvector::Vector;
use sha2::{Digest, Sha256};

use crate::{db_err, PgStore};

fn from_bytes(b: &[u8], dim: usize) -> Result<Vec<Vec<f32>>, StoreError> {
    engram_core::embed::vectors_from_bytes(b, dim).ok_or_else(|| {
        StoreError::Other(format!(
            "corrupt cached vectors of {} bytes for dim {dim}",
            b.len()
        ))
    })
}

fn dims_ok(model: &ModelInfo, vectors: &[Vec<f32>]) -> bool {
    !vectors.is_empty() && vectors.iter().all(|v| v.len() == model.dim)
}

fn bad_dims(model: &ModelInfo) -> StoreError {
    StoreError::Invalid(format!(
        "expected one or more vectors of dimension {} from {}",
        model.dim,
        model.key()
    ))
}

/// The name of a model's HNSW index over `table`.
pub(crate) fn index_name(table: &str, model_key: &str) -> String {
    let h = hex::encode(&Sha256::digest(model_key.as_bytes())[..6]);
    format!("{table}_hnsw_{h}")
}

/// A SQL string literal.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn job_from(
    id: uuid::Uuid,
    tenant: &str,
    content: String,
    content_hash: String,
    attempts: i32,
    claim: i64,
) -> Result<EmbeddingJob, StoreError> {
    Ok(EmbeddingJob {
        memory_id: MemoryId(id),
        tenant: TenantId::parse(tenant).map_err(|_| StoreError::Other("corrupt tenant".into()))?,
        content,
        content_hash,
        attempts: attempts.max(0) as u32,
        claim,
    })
}

/// Replaces a memory's vectors of one model (one row per window) and fills the cache.
async fn write_vectors<C: GenericClient>(
    c: &C,
    key: &str,
    rid: i64,
    content_hash: &str,
    vectors: &[Vec<f32>],
    at: i64,
) -> Result<(), StoreError> {
    let del = c
        .prepare_cached("DELETE FROM memory_vectors WHERE rid = $1 AND model_key = $2")
        .await
        .map_err(db_err)?;
    c.execute(&del, &[&rid, &key]).await.map_err(db_err)?;
    let ins = c
        .prepare_cached(
            // With the memory's scope (migration 0005); the caller holds its row lock.
            "INSERT INTO memory_vectors (rid, model_key, win, content_hash, embedding, tenant, user_id, memory_id)
             SELECT $1, $2, $3, $4, $5, m.tenant, m.user_id, m.id FROM memories m WHERE m.rid = $1",
        )
        .await
        .map_err(db_err)?;
    for (w, v) in vectors.iter().enumerate() {
        let win = w as i32;
        c.execute(
            &ins,
            &[&rid, &key, &win, &content_hash, &Vector::from(v.clone())],
        )
        .await
        .map_err(db_err)?;
    }
    let cache = c
        .prepare_cached(
            "INSERT INTO embedding_cache (model_key, content_hash, windows, vectors, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(db_err)?;
    c.execute(
        &cache,
        &[
            &key,
            &content_hash,
            &(vectors.len() as i32),
            &engram_core::embed::vectors_to_bytes(vectors),
            &at,
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A random claim token.
fn claim_token() -> i64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64
}

#[async_trait]
impl EmbeddingStore for PgStore {
    async fn register_model(&self, model: &ModelInfo) -> Result<(), StoreError> {
        let key = model.key();
        let c = self.client().await?;
        c.execute(
            "INSERT INTO embedding_models (key, model_id, revision, dim, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
            &[
                &key,
                &model.id,
                &model.revision,
                &(model.dim as i32),
                &to_micros(engram_core::time::now()),
            ],
        )
        .await
        .map_err(db_err)?;
        // The first model becomes the active one. Two replicas registering at once race
        // here; the unique index on `active` lets one win.
        match c
            .execute(
                "UPDATE embedding_models SET active = true WHERE key = $1
                 AND NOT EXISTS (SELECT 1 FROM embedding_models WHERE active)",
                &[&key],
            )
            .await
            .map_err(db_err)
        {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        // Each model's vectors get an HNSW index of their own (cosine), over the rows of
        // that model cast to its dimension.
        for table in ["memory_vectors", "context_vectors"] {
            let sql = format!(
                "CREATE INDEX IF NOT EXISTS {} ON {table} USING hnsw ((embedding::vector({})) vector_cosine_ops)
                 WITH (m = 16, ef_construction = 64) WHERE model_key = {}",
                index_name(table, &key),
                model.dim,
                literal(&key)
            );
            match c.batch_execute(&sql).await.map_err(db_err) {
                // Two replicas creating the same index at once: one wins.
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn active_model(&self) -> Result<Option<ModelInfo>, StoreError> {
        let c = self.client().await?;
        // Prepared once per connection: every semantic search asks.
        let st = c
            .prepare_cached("SELECT model_id, revision, dim FROM embedding_models WHERE active")
            .await
            .map_err(db_err)?;
        let row = c.query_opt(&st, &[]).await.map_err(db_err)?;
        Ok(row.map(|r| ModelInfo {
            id: r.get(0),
            revision: r.get(1),
            dim: r.get::<_, i32>(2).max(0) as usize,
        }))
    }

    async fn claim_embeddings(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<EmbeddingJob>, StoreError> {
        let claim = claim_token();
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "UPDATE memories SET embedding_status = 'processing', embedding_claim = $1,
                     embedding_lease_until = $2, embedding_attempts = embedding_attempts + 1,
                     version = version + 1
                 WHERE rid IN (
                     SELECT rid FROM memories
                     WHERE embedding_status = 'pending' AND embedding_status <> 'completed'
                       AND deleted_at IS NULL
                     ORDER BY rid LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, tenant, content, content_hash, embedding_attempts",
            )
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&st, &[&claim, &to_micros(lease_until), &i64::from(limit)])
            .await
            .map_err(db_err)?;
        let mut jobs: Vec<EmbeddingJob> = rows
            .iter()
            .map(|r| {
                job_from(
                    r.get(0),
                    r.get::<_, &str>(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    claim,
                )
            })
            .collect::<Result<_, _>>()?;
        jobs.sort_by_key(|j| j.memory_id);
        Ok(jobs)
    }

    async fn complete_embeddings(
        &self,
        model: &ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
        at: Timestamp,
    ) -> Result<Vec<bool>, StoreError> {
        let key = model.key();
        let at = to_micros(at);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // Only while the claim holds, the content is the one embedded, and the model is the
        // active one (a worker of a replaced model must not land vectors of the wrong model).
        let done = tx
            .prepare_cached(
                "UPDATE memories SET embedding_status = 'completed', embedding_model = $1, embedding_updated_at = $2,
                     embedding_error = NULL, embedding_claim = NULL, embedding_lease_until = NULL,
                     embedding_next_attempt_at = NULL, version = version + 1
                 WHERE id = $3 AND embedding_status = 'processing' AND embedding_claim = $4 AND content_hash = $5
                   AND deleted_at IS NULL
                   AND EXISTS (SELECT 1 FROM embedding_models WHERE key = $6 AND active)
                 RETURNING rid",
            )
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(results.len());
        for (job, vectors) in &results {
            // One bad result (e.g. a wrong dimension) fails alone.
            if !dims_ok(model, vectors) {
                out.push(false);
                continue;
            }
            let row = tx
                .query_opt(
                    &done,
                    &[
                        &model.id,
                        &at,
                        &job.memory_id.0,
                        &job.claim,
                        &job.content_hash,
                        &key,
                    ],
                )
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => {
                    write_vectors(&tx, &key, r.get(0), &job.content_hash, vectors, at).await?;
                    out.push(true);
                }
                None => out.push(false),
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn fail_embedding(
        &self,
        job: &EmbeddingJob,
        error: &str,
        retry_at: Option<Timestamp>,
        _at: Timestamp,
    ) -> Result<bool, StoreError> {
        let error: String = error.chars().take(2000).collect();
        let retry = retry_at.map(to_micros);
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE memories SET embedding_status = 'failed', embedding_error = $1,
                     embedding_next_attempt_at = $2, embedding_claim = NULL, embedding_lease_until = NULL,
                     version = version + 1
                 WHERE id = $3 AND embedding_status = 'processing' AND embedding_claim = $4",
                &[&error, &retry, &job.memory_id.0, &job.claim],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    async fn sweep_embeddings(
        &self,
        now: Timestamp,
        retry_since: Timestamp,
    ) -> Result<SweepReport, StoreError> {
        let (now, since) = (to_micros(now), to_micros(retry_since));
        let c = self.client().await?;
        let expired_leases = c
            .execute(
                "UPDATE memories SET embedding_status = 'pending', embedding_claim = NULL,
                     embedding_lease_until = NULL, version = version + 1
                 WHERE embedding_status = 'processing' AND embedding_status <> 'completed'
                   AND deleted_at IS NULL AND embedding_lease_until < $1",
                &[&now],
            )
            .await
            .map_err(db_err)?;
        let retried = c
            .execute(
                "UPDATE memories SET embedding_status = 'pending', embedding_next_attempt_at = NULL,
                     version = version + 1
                 WHERE embedding_status = 'failed' AND embedding_status <> 'completed'
                   AND deleted_at IS NULL AND embedding_next_attempt_at <= $1
                   AND embedding_next_attempt_at >= $2",
                &[&now, &since],
            )
            .await
            .map_err(db_err)?;
        Ok(SweepReport {
            expired_leases,
            retried,
        })
    }

    async fn cached_embeddings(
        &self,
        model: &ModelInfo,
        content_hashes: &[String],
    ) -> Result<HashMap<String, Vec<Vec<f32>>>, StoreError> {
        if content_hashes.is_empty() {
            return Ok(HashMap::new());
        }
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT content_hash, vectors FROM embedding_cache
                 WHERE model_key = $1 AND content_hash = ANY($2)",
                &[&model.key(), &content_hashes],
            )
            .await
            .map_err(db_err)?;
        let mut out = HashMap::new();
        for r in rows {
            out.insert(r.get(0), from_bytes(r.get(1), model.dim)?);
        }
        Ok(out)
    }

    async fn embedding_queue_depth(&self) -> Result<Vec<(EmbeddingStatus, u64)>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT embedding_status, COUNT(*) FROM memories WHERE deleted_at IS NULL
                 GROUP BY embedding_status",
                &[],
            )
            .await
            .map_err(db_err)?;
        let counts: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(EmbeddingStatus::ALL
            .iter()
            .map(|s| {
                (
                    *s,
                    counts.get(s.as_str()).copied().unwrap_or(0).max(0) as u64,
                )
            })
            .collect())
    }

    async fn missing_vectors(
        &self,
        model: &ModelInfo,
        limit: u32,
    ) -> Result<Vec<EmbeddingJob>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT m.id, m.tenant, m.content, m.content_hash FROM memories m
                 WHERE m.deleted_at IS NULL AND NOT EXISTS (
                     SELECT 1 FROM memory_vectors v
                     WHERE v.rid = m.rid AND v.model_key = $1 AND v.content_hash = m.content_hash)
                 ORDER BY m.rid LIMIT $2",
                &[&model.key(), &i64::from(limit)],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| job_from(r.get(0), r.get::<_, &str>(1), r.get(2), r.get(3), 0, 0))
            .collect()
    }

    async fn store_vectors(
        &self,
        model: &ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
    ) -> Result<Vec<bool>, StoreError> {
        let key = model.key();
        let at = to_micros(engram_core::time::now());
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let mut out = Vec::with_capacity(results.len());
        for (job, vectors) in &results {
            if !dims_ok(model, vectors) {
                return Err(bad_dims(model));
            }
            let row = tx
                .query_opt(
                    // FOR SHARE: no change of content or user until the vectors are in.
                    "SELECT rid FROM memories WHERE id = $1 AND content_hash = $2 AND deleted_at IS NULL FOR SHARE",
                    &[&job.memory_id.0, &job.content_hash],
                )
                .await
                .map_err(db_err)?;
            match row {
                Some(r) => {
                    write_vectors(&tx, &key, r.get(0), &job.content_hash, vectors, at).await?;
                    out.push(true);
                }
                None => out.push(false),
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(out)
    }

    async fn activate_model(&self, model: &ModelInfo, at: Timestamp) -> Result<u64, StoreError> {
        let key = model.key();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        // No memory may be added or changed between the count and the switch.
        tx.batch_execute("LOCK TABLE memories IN SHARE ROW EXCLUSIVE MODE")
            .await
            .map_err(db_err)?;
        let missing: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM memories m WHERE m.deleted_at IS NULL AND NOT EXISTS (
                     SELECT 1 FROM memory_vectors v
                     WHERE v.rid = m.rid AND v.model_key = $1 AND v.content_hash = m.content_hash)",
                &[&key],
            )
            .await
            .map_err(db_err)?
            .get(0);
        if missing > 0 {
            return Ok(missing as u64);
        }
        tx.execute(
            "UPDATE embedding_models SET active = false WHERE active AND key <> $1",
            &[&key],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "UPDATE embedding_models SET active = true WHERE key = $1",
            &[&key],
        )
        .await
        .map_err(db_err)?;
        tx.execute(
            "UPDATE memories SET embedding_status = 'completed', embedding_model = $1, embedding_updated_at = $2,
                 embedding_error = NULL, embedding_claim = NULL, embedding_lease_until = NULL,
                 embedding_next_attempt_at = NULL, embedding_attempts = 0, version = version + 1
             WHERE deleted_at IS NULL",
            &[&model.id, &to_micros(at)],
        )
        .await
        .map_err(db_err)?;
        // Every session's context vectors are remade with the new model.
        tx.execute(
            "INSERT INTO context_queue (tenant, session_id)
             SELECT DISTINCT tenant, session_id FROM memories
             WHERE session_id IS NOT NULL AND deleted_at IS NULL
             ON CONFLICT (tenant, session_id) DO UPDATE SET claim = context_queue.claim + 1",
            &[],
        )
        .await
        .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(0)
    }

    async fn claim_contexts(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ContextJob>, StoreError> {
        let now = to_micros(engram_core::time::now());
        let c = self.client().await?;
        let rows = c
            .query(
                "UPDATE context_queue q SET lease_until = $1
                 FROM (SELECT tenant, session_id FROM context_queue
                       WHERE lease_until IS NULL OR lease_until < $2
                       ORDER BY queued LIMIT $3
                       FOR UPDATE SKIP LOCKED) due
                 WHERE q.tenant = due.tenant AND q.session_id = due.session_id
                 RETURNING q.tenant, q.session_id, q.claim",
                &[&to_micros(lease_until), &now, &i64::from(limit)],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(ContextJob {
                    tenant: TenantId::parse(r.get::<_, &str>(0))
                        .map_err(|_| StoreError::Other("corrupt tenant".into()))?,
                    session_id: r.get(1),
                    claim: r.get(2),
                })
            })
            .collect()
    }

    async fn session_turns(
        &self,
        job: &ContextJob,
        model: &ModelInfo,
    ) -> Result<Vec<SessionTurn>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT m.id, m.user_id, m.content, c.context_hash FROM memories m
                 LEFT JOIN context_vectors c ON c.rid = m.rid AND c.model_key = $3
                 WHERE m.tenant = $1 AND m.session_id = $2 AND m.deleted_at IS NULL
                 ORDER BY coalesce(m.valid_from, m.created_at), m.rid",
                &[&job.tenant.as_str(), &job.session_id, &model.key()],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| SessionTurn {
                memory_id: MemoryId(r.get(0)),
                user_id: r.get(1),
                content: r.get(2),
                context_hash: r.get(3),
            })
            .collect())
    }

    async fn complete_context(
        &self,
        job: &ContextJob,
        model: &ModelInfo,
        vectors: Vec<ContextVector>,
    ) -> Result<bool, StoreError> {
        let key = model.key();
        for v in &vectors {
            if v.vector.len() != model.dim {
                return Err(bad_dims(model));
            }
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let put = tx
            .prepare_cached(
                "INSERT INTO context_vectors (rid, model_key, context_hash, embedding)
                 SELECT rid, $2, $3, $4 FROM memories
                 WHERE id = $1 AND tenant = $5 AND session_id = $6 AND deleted_at IS NULL
                 ON CONFLICT (rid, model_key) DO UPDATE
                 SET context_hash = excluded.context_hash, embedding = excluded.embedding",
            )
            .await
            .map_err(db_err)?;
        for v in &vectors {
            tx.execute(
                &put,
                &[
                    &v.memory_id.0,
                    &key,
                    &v.context_hash,
                    &Vector::from(v.vector.clone()),
                    &job.tenant.as_str(),
                    &job.session_id,
                ],
            )
            .await
            .map_err(db_err)?;
        }
        let done = tx
            .execute(
                "DELETE FROM context_queue WHERE tenant = $1 AND session_id = $2 AND claim = $3",
                &[&job.tenant.as_str(), &job.session_id, &job.claim],
            )
            .await
            .map_err(db_err)?
            > 0;
        if !done {
            tx.execute(
                "UPDATE context_queue SET lease_until = NULL WHERE tenant = $1 AND session_id = $2",
                &[&job.tenant.as_str(), &job.session_id],
            )
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(done)
    }

    async fn memory_vectors(
        &self,
        tenant: &TenantId,
        id: MemoryId,
        model: &ModelInfo,
    ) -> Result<Vec<Vec<f32>>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT v.embedding FROM memory_vectors v JOIN memories m ON m.rid = v.rid
                 WHERE m.id = $1 AND m.tenant = $2 AND m.deleted_at IS NULL AND v.model_key = $3
                 ORDER BY v.win",
                &[&id.0, &tenant.as_str(), &model.key()],
            )
            .await
            .map_err(db_err)?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, Vector>(0).to_vec())
            .collect())
    }
}
