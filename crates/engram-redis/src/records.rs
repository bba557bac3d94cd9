//! `CachedRecordStore`: the working tier's `RecordStore`, with conversation buffers in
//! Redis and the cache kept right for the mirror memories its writes make.
//!
//! **Conversation buffers.** The first page of a session's messages (nothing but the
//! session as filter, oldest or newest first, any page size) is cached under the session
//! (`{p}:{t}:working:session:{s}:buffer:…`, `buffer_ttl`), filled on a miss under the
//! session's generation as list pages are (a fill never lands over a newer write). Any
//! write to a message of the session, and the session's own update or delete, bumps the
//! generation and drops the session's buffers after the store answers. Other record
//! reads go to the store.
//!
//! **Mirror memories.** A decision,
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

use crate::cache::{Invalidation, RedisCache};
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

    /// After the store answered: drops the buffers of the session `record` belongs to (or
    /// is), and invalidates what the mirror write made stale, as the same write through
    /// `CachedMemoryStore` would.
    async fn finish(
        &self,
        record: &Record,
        mirror: Option<MirrorInFlight>,
        result: &Result<(), StoreError>,
    ) {
        let tenant = &record.tenant;
        let session = match record.kind {
            RecordKind::Message => record.parent_id,
            RecordKind::Session => Some(record.id),
            _ => None,
        };
        if let Some(s) = session {
            self.cache
                .invalidate(Invalidation::Sessions(vec![(tenant.clone(), s)]))
                .await;
        }
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

/// The `cache` label of the conversation buffers' metrics.
const BUFFER: &str = "buffer";

/// The session whose messages `q` lists, when it asks for a conversation buffer: the
/// first page of a session's messages with no other condition.
fn buffered_session(q: &RecordQuery) -> Option<RecordId> {
    let plain = q.kind == Some(RecordKind::Message)
        && q.user_id.is_none()
        && q.agent_id.is_none()
        && q.project.is_none()
        && q.domain.is_none()
        && q.session_id.is_none()
        && q.statuses.is_empty()
        && q.key.is_none()
        && q.updated_before.is_none()
        && q.after.is_none();
    if plain {
        q.parent_id
    } else {
        None
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
        self.finish(record, in_flight, &result).await;
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
        let Some(session) = buffered_session(query) else {
            return self.inner.list_records(tenant, query).await;
        };
        let keys = self.cache.keys();
        let slot = (
            keys.session_gen(tenant, session),
            keys.session_buffer(tenant, session, query.oldest_first, query.limit),
            keys.session_index(tenant, session),
        );
        let ttl = self.cache.config().buffer_ttl;
        let own = |p: &RecordPage| p.items.iter().all(|r| r.tenant == *tenant);
        self.cache
            .page(BUFFER, slot, ttl, own, || {
                self.inner.list_records(tenant, query)
            })
            .await
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
        self.finish(next, in_flight, &result).await;
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
        self.finish(record, in_flight, &result).await;
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
