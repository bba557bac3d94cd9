//! `CachedEmbeddingStore`: the embedding cache in Redis, in front of the store's own.
//!
//! Vectors are content-addressed: `{p}::emb:{model key}:{content hash}` holds every
//! window's vector as little-endian f32, one after the other (the window count is the
//! length over `4 · dim`). Content never changes under its hash, so these entries are
//! never invalidated, only expired (`embedding_ttl`, 1 h by default). They are shared by
//! every tenant whose content has that hash, so a purge does not delete them: vectors of
//! purged content stay in Redis until their TTL at most (the store's own cache drops
//! them at once).
//!
//! Embedding bookkeeping changes memories (status, model, `version`), so `claim`,
//! `complete` and `fail` invalidate the cached entries of the memories they touched, and
//! a model switch flushes every cached memory and list. `sweep_embeddings` reports only
//! counts: the memories it re-queues keep a cached `embedding_status` up to `memory_ttl`
//! old. Cached list pages are not invalidated by embedding bookkeeping (the jobs do not
//! name the user): their `embedding_status` may lag by up to `list_ttl`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use engram_core::embed::{vectors_from_bytes, vectors_to_bytes};
use engram_core::{
    ContextJob, ContextVector, EmbeddingJob, EmbeddingStatus, EmbeddingStore, MemoryId, ModelInfo,
    SessionTurn, StoreError, SweepReport, TenantId, Timestamp,
};

use crate::cache::{count, Invalidation, RedisCache};

/// An `EmbeddingStore` whose vector cache is backed by Redis. Everything but the cache
/// passes through to `inner`.
#[derive(Clone)]
pub struct CachedEmbeddingStore {
    inner: Arc<dyn EmbeddingStore>,
    cache: RedisCache,
}

impl CachedEmbeddingStore {
    pub fn new(inner: Arc<dyn EmbeddingStore>, cache: RedisCache) -> Self {
        CachedEmbeddingStore { inner, cache }
    }

    async fn put(&self, model: &ModelInfo, vectors: Vec<(String, &[Vec<f32>])>) {
        let key = model.key();
        let entries = vectors
            .into_iter()
            .filter(|(_, w)| !w.is_empty() && w.iter().all(|v| v.len() == model.dim))
            .map(|(hash, w)| {
                (
                    self.cache.keys().embedding(&key, &hash),
                    vectors_to_bytes(w),
                )
            })
            .collect();
        self.cache
            .set_many(entries, self.cache.config().embedding_ttl)
            .await;
    }

    async fn forget_memories(&self, memories: Vec<(TenantId, MemoryId)>) {
        if !memories.is_empty() {
            self.cache
                .invalidate(Invalidation::Keys {
                    memories,
                    users: Vec::new(),
                })
                .await;
        }
    }
}

/// The jobs whose result is `true`.
fn done<'a>(
    results: &'a [(EmbeddingJob, Vec<Vec<f32>>)],
    ok: &'a [bool],
) -> impl Iterator<Item = &'a (EmbeddingJob, Vec<Vec<f32>>)> {
    results
        .iter()
        .zip(ok)
        .filter(|(_, ok)| **ok)
        .map(|(r, _)| r)
}

#[async_trait]
impl EmbeddingStore for CachedEmbeddingStore {
    async fn register_model(&self, model: &ModelInfo) -> Result<(), StoreError> {
        self.inner.register_model(model).await
    }

    async fn active_model(&self) -> Result<Option<ModelInfo>, StoreError> {
        self.inner.active_model().await
    }

    async fn claim_embeddings(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<EmbeddingJob>, StoreError> {
        let jobs = self.inner.claim_embeddings(limit, lease_until).await?;
        self.forget_memories(
            jobs.iter()
                .map(|j| (j.tenant.clone(), j.memory_id))
                .collect(),
        )
        .await;
        Ok(jobs)
    }

    async fn complete_embeddings(
        &self,
        model: &ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
        at: Timestamp,
    ) -> Result<Vec<bool>, StoreError> {
        let kept = results.clone();
        let ok = self.inner.complete_embeddings(model, results, at).await?;
        self.forget_memories(
            done(&kept, &ok)
                .map(|(j, _)| (j.tenant.clone(), j.memory_id))
                .collect(),
        )
        .await;
        let vectors = done(&kept, &ok)
            .map(|(j, w)| (j.content_hash.clone(), w.as_slice()))
            .collect();
        self.put(model, vectors).await;
        Ok(ok)
    }

    async fn fail_embedding(
        &self,
        job: &EmbeddingJob,
        error: &str,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let failed = self.inner.fail_embedding(job, error, retry_at, at).await?;
        if failed {
            self.forget_memories(vec![(job.tenant.clone(), job.memory_id)])
                .await;
        }
        Ok(failed)
    }

    async fn sweep_embeddings(
        &self,
        now: Timestamp,
        retry_since: Timestamp,
    ) -> Result<SweepReport, StoreError> {
        self.inner.sweep_embeddings(now, retry_since).await
    }

    async fn cached_embeddings(
        &self,
        model: &ModelInfo,
        content_hashes: &[String],
    ) -> Result<HashMap<String, Vec<Vec<f32>>>, StoreError> {
        let mut hashes = content_hashes.to_vec();
        hashes.sort();
        hashes.dedup();
        if hashes.is_empty() {
            return Ok(HashMap::new());
        }
        let key = model.key();
        let keys: Vec<String> = hashes
            .iter()
            .map(|h| self.cache.keys().embedding(&key, h))
            .collect();
        let Some(values) = self.cache.mget("embedding", &keys).await else {
            return self.inner.cached_embeddings(model, &hashes).await;
        };
        let mut found = HashMap::with_capacity(hashes.len());
        let mut missing = Vec::new();
        for (hash, value) in hashes.into_iter().zip(values) {
            match value.and_then(|b| vectors_from_bytes(&b, model.dim)) {
                Some(w) => {
                    found.insert(hash, w);
                }
                None => missing.push(hash),
            }
        }
        count("embedding", "hit", found.len());
        count("embedding", "miss", missing.len());
        if !missing.is_empty() {
            let loaded = self.inner.cached_embeddings(model, &missing).await?;
            self.put(
                model,
                loaded
                    .iter()
                    .map(|(h, w)| (h.clone(), w.as_slice()))
                    .collect(),
            )
            .await;
            found.extend(loaded);
        }
        Ok(found)
    }

    async fn embedding_queue_depth(&self) -> Result<Vec<(EmbeddingStatus, u64)>, StoreError> {
        self.inner.embedding_queue_depth().await
    }

    async fn missing_vectors(
        &self,
        model: &ModelInfo,
        limit: u32,
    ) -> Result<Vec<EmbeddingJob>, StoreError> {
        self.inner.missing_vectors(model, limit).await
    }

    async fn store_vectors(
        &self,
        model: &ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
    ) -> Result<Vec<bool>, StoreError> {
        let kept = results.clone();
        let ok = self.inner.store_vectors(model, results).await?;
        let vectors = done(&kept, &ok)
            .map(|(j, w)| (j.content_hash.clone(), w.as_slice()))
            .collect();
        self.put(model, vectors).await;
        Ok(ok)
    }

    async fn activate_model(&self, model: &ModelInfo, at: Timestamp) -> Result<u64, StoreError> {
        let left = self.inner.activate_model(model, at).await?;
        if left == 0 {
            // Every live memory changed its embedding model: drop every cached one.
            self.cache.request_flush();
        }
        Ok(left)
    }

    async fn claim_contexts(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ContextJob>, StoreError> {
        self.inner.claim_contexts(limit, lease_until).await
    }

    async fn session_turns(
        &self,
        job: &ContextJob,
        model: &ModelInfo,
    ) -> Result<Vec<SessionTurn>, StoreError> {
        self.inner.session_turns(job, model).await
    }

    async fn complete_context(
        &self,
        job: &ContextJob,
        model: &ModelInfo,
        vectors: Vec<ContextVector>,
    ) -> Result<bool, StoreError> {
        self.inner.complete_context(job, model, vectors).await
    }

    async fn memory_vectors(
        &self,
        tenant: &TenantId,
        id: MemoryId,
        model: &ModelInfo,
    ) -> Result<Vec<Vec<f32>>, StoreError> {
        self.inner.memory_vectors(tenant, id, model).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_as_little_endian_f32() {
        let w = vec![vec![1.0, -2.5, 0.0], vec![3.25, 4.0, -0.125]];
        let bytes = vectors_to_bytes(&w);
        assert_eq!(bytes.len(), 24);
        assert_eq!(&bytes[..4], &1.0f32.to_le_bytes());
        assert_eq!(vectors_from_bytes(&bytes, 3), Some(w));
        assert_eq!(vectors_from_bytes(&bytes, 5), None);
        assert_eq!(vectors_from_bytes(&[], 3), None);
        assert_eq!(vectors_from_bytes(&bytes, 0), None);
    }
}
