//! `CachedRecordStore`: the working tier's `RecordStore`, passed through, with the cache
//! kept right for the mirror memories its writes make.
//!
//! Records themselves are not cached: every read goes to the store. But a decision,
//! pattern or message has a *mirror memory*, written in the record's own transaction, and
//! that memory may be cached (its entry, its user's lists) by [`CachedMemoryStore`]. So
//! after the store answers, a write with a mirror invalidates exactly what the same
//! write through the memory port would:
//! - a mirror insert: the lists of the mirror's user;
//! - a mirror replace (an update, a delete, the tier migration's re-tagging): the
//!   memory's entry, and the lists of its user before and after (the state before is read
//!   from the store first, so a move between users clears both); when the store answers
//!   `Conflict`/`NotFound` (nothing was written), only the memory's entry.
//!
//! Any other error may hide a commit, so it invalidates as a success would. While Redis
//! is unreachable the invalidations are queued, as every other write's (see `cache`).
//!
//! [`CachedMemoryStore`]: crate::CachedMemoryStore

use std::sync::Arc;

use async_trait::async_trait;
use engram_core::working::{Record, RecordChange, RecordId, RecordKind, RecordPage, RecordQuery};
use engram_core::{Memory, MemoryStore, MirrorWrite, RecordStore, StoreError, TenantId};

use crate::cache::RedisCache;
use crate::memory::{invalidate_written, replaced_users};

/// A `RecordStore` that invalidates the cached state of the mirror memories its writes
/// change. Ground truth, and every record read, stay in `inner`.
#[derive(Clone)]
pub struct CachedRecordStore {
    inner: Arc<dyn RecordStore>,
    memories: Arc<dyn MemoryStore>,
    cache: RedisCache,
}

/// A mirror write under way: what it writes, and the memory's state before it.
struct MirrorInFlight {
    next: Memory,
    replacing: bool,
    before: Option<Memory>,
}

impl CachedRecordStore {
    /// `records` and `memories` are the same store's ports, *not* the cached memory port:
    /// `memories` is read (never written) for a mirror's state before it is replaced.
    /// `cache` is the handle the `CachedMemoryStore` in front of that store uses.
    pub fn new(
        records: Arc<dyn RecordStore>,
        memories: Arc<dyn MemoryStore>,
        cache: RedisCache,
    ) -> Self {
        CachedRecordStore {
            inner: records,
            memories,
            cache,
        }
    }

    pub fn cache(&self) -> &RedisCache {
        &self.cache
    }

    /// Reads what the invalidation after `mirror` needs: for a replace, the memory's
    /// state before it, for the user it leaves. If the write succeeds, this read saw
    /// exactly the expected version (versions only grow, and a newer one would have made
    /// the write fail).
    async fn begin(
        &self,
        tenant: &TenantId,
        mirror: Option<&MirrorWrite>,
    ) -> Result<Option<MirrorInFlight>, StoreError> {
        let Some(mirror) = mirror else {
            return Ok(None);
        };
        let next = mirror.memory().clone();
        let (replacing, before) = match mirror {
            MirrorWrite::Insert(_) => (false, None),
            MirrorWrite::Replace { .. } => (true, self.memories.get(tenant, next.id).await?),
        };
        Ok(Some(MirrorInFlight {
            next,
            replacing,
            before,
        }))
    }

    /// After the store answered: invalidates what the mirror write made stale, as the
    /// same write through `CachedMemoryStore` would.
    async fn finish(
        &self,
        tenant: &TenantId,
        mirror: Option<MirrorInFlight>,
        result: &Result<(), StoreError>,
    ) {
        let Some(m) = mirror else {
            return;
        };
        // A new memory has no entry yet; a replaced one's entry may be what was stale.
        let memories = if m.replacing {
            vec![m.next.id]
        } else {
            Vec::new()
        };
        let users = replaced_users(m.before.as_ref(), &m.next, result);
        invalidate_written(&self.cache, tenant, memories, users).await;
    }
}

#[async_trait]
impl RecordStore for CachedRecordStore {
    async fn insert_record(
        &self,
        record: &Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        let tenant = &record.tenant;
        let in_flight = self.begin(tenant, mirror.as_ref()).await?;
        let result = self.inner.insert_record(record, mirror).await;
        self.finish(tenant, in_flight, &result).await;
        result
    }

    async fn get_record(
        &self,
        tenant: &TenantId,
        id: RecordId,
    ) -> Result<Option<Record>, StoreError> {
        self.inner.get_record(tenant, id).await
    }

    async fn get_keyed(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        agent_id: Option<&str>,
        key: &str,
    ) -> Result<Option<Record>, StoreError> {
        self.inner.get_keyed(tenant, kind, agent_id, key).await
    }

    async fn list_records(
        &self,
        tenant: &TenantId,
        query: &RecordQuery,
    ) -> Result<RecordPage, StoreError> {
        self.inner.list_records(tenant, query).await
    }

    async fn replace_record(
        &self,
        next: &Record,
        expected_version: i64,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        let tenant = &next.tenant;
        let in_flight = self.begin(tenant, mirror.as_ref()).await?;
        let result = self
            .inner
            .replace_record(next, expected_version, mirror)
            .await;
        self.finish(tenant, in_flight, &result).await;
        result
    }

    async fn delete_record(
        &self,
        record: &Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError> {
        let tenant = &record.tenant;
        let in_flight = self.begin(tenant, mirror.as_ref()).await?;
        let result = self.inner.delete_record(record, mirror).await;
        self.finish(tenant, in_flight, &result).await;
        result
    }

    async fn record_changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<RecordChange>, StoreError> {
        self.inner.record_changes(tenant, after_seq, limit).await
    }
}
