//! The memory use cases. Every transport (REST, the CLI's local mode, later gRPC and MCP)
//! calls these functions; a handler only unpacks the request and maps the result.

use std::sync::Arc;

use tracing::instrument;

use crate::change::{ChangeOp, ChangeRecord};
use crate::error::{CoreError, StoreError};
use crate::filter::{ListQuery, ListResult, PageToken};
use crate::ids::{MemoryId, TenantId};
use crate::memory::{EmbeddingStatus, Memory, MemoryPatch, NewMemory};
use crate::ports::{IdempotencyKey, InsertMemory, InsertOutcome, MemoryStore};
use crate::time::now;

pub const BULK_MAX: usize = 100;
const CAS_ATTEMPTS: u32 = 40;

/// One item of a bulk create.
#[derive(Clone, Debug, PartialEq)]
pub enum BulkItemResult {
    Created(Memory),
    Replayed(Memory),
    Failed(CoreError),
}

/// A page of memories and the cursor of the next page, if any.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    pub result: ListResult,
    pub next_cursor: Option<String>,
    pub page: u32,
    pub per_page: u32,
}

#[derive(Clone)]
pub struct MemoryService {
    store: Arc<dyn MemoryStore>,
}

/// Checks a client's `Idempotency-Key`: 1..=255 visible ASCII characters.
pub fn parse_idempotency_key(key: &str) -> Result<String, CoreError> {
    let ok = !key.is_empty() && key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(key.to_owned())
    } else {
        Err(CoreError::validation(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        ))
    }
}

impl MemoryService {
    pub fn new(store: Arc<dyn MemoryStore>) -> Self {
        MemoryService { store }
    }

    /// Stores a memory. With an idempotency key, a retry returns the original memory
    /// (`replayed = true`) instead of storing a duplicate.
    #[instrument(skip_all, fields(tenant = %tenant))]
    pub async fn remember(
        &self,
        tenant: &TenantId,
        new: NewMemory,
        idempotency_key: Option<&str>,
    ) -> Result<(Memory, bool), CoreError> {
        new.check()?;
        let idempotency = idempotency_key
            .map(|k| {
                Ok::<_, CoreError>(IdempotencyKey {
                    key: parse_idempotency_key(k)?,
                    fingerprint: new.fingerprint(),
                })
            })
            .transpose()?;
        let item = InsertMemory {
            memory: new.into_memory(tenant.clone(), now()),
            idempotency,
        };
        let mut out = self.store.insert(tenant, vec![item]).await?;
        match out.pop() {
            Some(Ok(InsertOutcome::Created(m))) => Ok((m, false)),
            Some(Ok(InsertOutcome::Replayed(m))) => Ok((m, true)),
            Some(Ok(InsertOutcome::KeyReused)) => Err(CoreError::IdempotencyKeyReused),
            Some(Err(e)) => Err(e.into()),
            None => Err(CoreError::Internal(
                "store returned no result for an insert".into(),
            )),
        }
    }

    /// Stores up to 100 memories; items that failed validation are passed in as errors and
    /// reported back at their index, while valid items are stored. With an idempotency
    /// key, item `i` uses the key `<key>#<i>`, so a retried request creates nothing twice.
    #[instrument(skip_all, fields(tenant = %tenant, n = items.len()))]
    pub async fn remember_bulk(
        &self,
        tenant: &TenantId,
        items: Vec<Result<NewMemory, CoreError>>,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<BulkItemResult>, CoreError> {
        if items.len() > BULK_MAX {
            return Err(CoreError::validation(
                "memories",
                format!(
                    "{} memories given; the maximum per request is {BULK_MAX}",
                    items.len()
                ),
            ));
        }
        let key = idempotency_key.map(parse_idempotency_key).transpose()?;
        let at = now();
        let mut results: Vec<Option<BulkItemResult>> = Vec::with_capacity(items.len());
        let mut inserts = Vec::new();
        let mut slots = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item.and_then(|n| n.check().map(|_| n)) {
                Ok(new) => {
                    let idempotency = key.as_ref().map(|k| IdempotencyKey {
                        key: format!("{k}#{i}"),
                        fingerprint: new.fingerprint(),
                    });
                    inserts.push(InsertMemory {
                        memory: new.into_memory(tenant.clone(), at),
                        idempotency,
                    });
                    slots.push(i);
                    results.push(None);
                }
                Err(e) => results.push(Some(BulkItemResult::Failed(e))),
            }
        }
        if !inserts.is_empty() {
            let outcomes = self.store.insert(tenant, inserts).await?;
            for (slot, outcome) in slots.into_iter().zip(outcomes) {
                results[slot] = Some(match outcome {
                    Ok(InsertOutcome::Created(m)) => BulkItemResult::Created(m),
                    Ok(InsertOutcome::Replayed(m)) => BulkItemResult::Replayed(m),
                    Ok(InsertOutcome::KeyReused) => {
                        BulkItemResult::Failed(CoreError::IdempotencyKeyReused)
                    }
                    Err(e) => BulkItemResult::Failed(e.into()),
                });
            }
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| BulkItemResult::Failed(CoreError::Internal("no result".into())))
            })
            .collect())
    }

    /// A memory, and records the read in `accessed_at`.
    #[instrument(skip_all, fields(tenant = %tenant, id = %id))]
    pub async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Memory, CoreError> {
        let mut m = self.load(tenant, id).await?;
        let at = now();
        self.store.touch(tenant, &[id], at).await?;
        m.accessed_at = at.max(m.accessed_at);
        Ok(m)
    }

    async fn load(&self, tenant: &TenantId, id: MemoryId) -> Result<Memory, CoreError> {
        self.store
            .get(tenant, id)
            .await?
            .ok_or(CoreError::NotFound { what: "memory" })
    }

    /// One page of memories.
    #[instrument(skip_all, fields(tenant = %tenant))]
    pub async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<Listing, CoreError> {
        let result = self.store.list(tenant, query).await?;
        let next_cursor = match result.items.last() {
            Some(last) if result.has_more => Some(PageToken::after(query, last)),
            _ => None,
        };
        Ok(Listing {
            result,
            next_cursor,
            page: query.page_number(),
            per_page: query.per_page,
        })
    }

    /// Applies a partial update. Only the given fields change; a changed content puts the
    /// embedding back to pending. Concurrent updates are serialised by version.
    #[instrument(skip_all, fields(tenant = %tenant, id = %id))]
    pub async fn update(
        &self,
        tenant: &TenantId,
        id: MemoryId,
        patch: MemoryPatch,
    ) -> Result<Memory, CoreError> {
        self.modify(tenant, id, ChangeOp::Updated, |m| {
            patch.clone().apply(m, now())
        })
        .await
    }

    /// Soft-deletes a memory: it disappears from get, list and search.
    #[instrument(skip_all, fields(tenant = %tenant, id = %id))]
    pub async fn forget(&self, tenant: &TenantId, id: MemoryId) -> Result<(), CoreError> {
        self.modify(tenant, id, ChangeOp::Deleted, |m| {
            let at = now().max(m.updated_at);
            m.deleted_at = Some(at);
            m.updated_at = at;
            m.version += 1;
            Ok(true)
        })
        .await
        .map(|_| ())
    }

    /// Puts a memory's embedding back in the queue.
    #[instrument(skip_all, fields(tenant = %tenant, id = %id))]
    pub async fn retry_embedding(
        &self,
        tenant: &TenantId,
        id: MemoryId,
    ) -> Result<Memory, CoreError> {
        self.modify(tenant, id, ChangeOp::EmbeddingRequeued, |m| {
            if m.embedding_status == EmbeddingStatus::Pending && m.embedding_error.is_none() {
                return Ok(false);
            }
            m.embedding_status = EmbeddingStatus::Pending;
            m.embedding_error = None;
            m.updated_at = now().max(m.updated_at);
            m.version += 1;
            Ok(true)
        })
        .await
    }

    /// The tenant's change log after `after_seq`.
    pub async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, CoreError> {
        Ok(self
            .store
            .changes(tenant, after_seq, limit.clamp(1, 1000))
            .await?)
    }

    /// Read-modify-write with compare-and-swap on `version`, retried on conflict.
    async fn modify<F>(
        &self,
        tenant: &TenantId,
        id: MemoryId,
        op: ChangeOp,
        mut f: F,
    ) -> Result<Memory, CoreError>
    where
        F: FnMut(&mut Memory) -> Result<bool, CoreError>,
    {
        for attempt in 0..CAS_ATTEMPTS {
            if attempt > 0 {
                // Jittered backoff, so contending writers stop colliding.
                let cap_us = 200u64 << attempt.min(6);
                let us = rand::Rng::random_range(&mut rand::rng(), cap_us / 2..=cap_us);
                tokio::time::sleep(std::time::Duration::from_micros(us)).await;
            }
            let mut m = self.load(tenant, id).await?;
            let expected = m.version;
            if !f(&mut m)? {
                return Ok(m);
            }
            match self.store.replace(&m, expected, op).await {
                Ok(()) => return Ok(m),
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::NotFound) => return Err(CoreError::NotFound { what: "memory" }),
                Err(e) => return Err(e.into()),
            }
        }
        Err(CoreError::VersionConflict(
            "the memory kept changing while this update was applied; retry".into(),
        ))
    }
}
