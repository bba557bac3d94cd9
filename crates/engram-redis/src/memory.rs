//! `CachedMemoryStore`: cache-aside in front of any `MemoryStore`.
//!
//! Reads: `get`/`get_many` look up `{p}:{t}:memory:{id}`; `list` looks up the user's
//! list or recent key when the query filters by `user_id` (tenant-wide lists are not
//! cached). A miss reads the store and fills conditionally (see `cache`).
//!
//! Writes go to the store first; only after it answers is the cache invalidated:
//! - `insert`: the lists of every user who got a new memory;
//! - `replace`: the memory's entry, and the lists of its user before and after (the state
//!   before is read from the store first, so a move between users clears both);
//!   on `Conflict`/`NotFound` only the memory's entry (it may be what was stale);
//! - `purge_user`: every memory entry of the tenant and every key of the user;
//! - `purge_tenant`: every key of the tenant;
//! - both: every cached embedding (content-addressed, so shared across tenants).
//!
//! `touch` passes through without invalidating: the service stamps `accessed_at` on
//! what `get` returns itself, but cached list pages show (and, sorted by `accessed_at`,
//! order by) an `accessed_at` up to `list_ttl` old.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use engram_core::{
    ChangeOp, ChangeRecord, InsertMemory, InsertOutcome, ListQuery, ListResult, Memory, MemoryId,
    MemoryStore, StoreError, TenantId, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::cache::{count, Invalidation, RedisCache, Slot};
use crate::keys::ListKind;

/// A `MemoryStore` that serves reads from Redis when it can. Ground truth stays in
/// `inner`.
#[derive(Clone)]
pub struct CachedMemoryStore {
    inner: Arc<dyn MemoryStore>,
    cache: RedisCache,
}

/// A cached list page.
#[derive(Serialize, Deserialize)]
struct CachedList {
    items: Vec<Memory>,
    total: u64,
    has_more: bool,
}

/// A cached memory, if it decodes and is what was asked for.
fn decode_memory(bytes: &[u8], tenant: &TenantId, id: MemoryId) -> Option<Memory> {
    let m: Memory = serde_json::from_slice(bytes).ok()?;
    (m.tenant == *tenant && m.id == id && m.deleted_at.is_none()).then_some(m)
}

impl CachedMemoryStore {
    pub fn new(inner: Arc<dyn MemoryStore>, cache: RedisCache) -> Self {
        CachedMemoryStore { inner, cache }
    }

    pub fn cache(&self) -> &RedisCache {
        &self.cache
    }
}

/// Drops the entries of `memories` and every cached list of `users` (or queues that,
/// while Redis is unreachable).
pub(crate) async fn invalidate_written(
    cache: &RedisCache,
    tenant: &TenantId,
    memories: Vec<MemoryId>,
    users: BTreeSet<String>,
) {
    if memories.is_empty() && users.is_empty() {
        return;
    }
    cache
        .invalidate(Invalidation::Keys {
            memories: memories
                .into_iter()
                .map(|id| (tenant.clone(), id))
                .collect(),
            users: users.into_iter().map(|u| (tenant.clone(), u)).collect(),
        })
        .await;
}

/// The users whose lists a replace of a memory (from `before` to `next`) made stale: its
/// user before and after, unless the store said the replace did not happen (`Conflict`,
/// `NotFound`). Any other error may hide a commit, so it counts as a write.
pub(crate) fn replaced_users<T>(
    before: Option<&Memory>,
    next: &Memory,
    result: &Result<T, StoreError>,
) -> BTreeSet<String> {
    match result {
        Err(StoreError::Conflict(_)) | Err(StoreError::NotFound) => BTreeSet::new(),
        _ => before
            .and_then(|m| m.scope.user_id.clone())
            .into_iter()
            .chain(next.scope.user_id.clone())
            .collect(),
    }
}

#[async_trait]
impl MemoryStore for CachedMemoryStore {
    async fn insert(
        &self,
        tenant: &TenantId,
        items: Vec<InsertMemory>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
        let all_users: BTreeSet<String> = items
            .iter()
            .filter_map(|i| i.memory.scope.user_id.clone())
            .collect();
        let out = self.inner.insert(tenant, items).await;
        let users = match &out {
            Ok(results) => results
                .iter()
                .filter_map(|r| match r {
                    Ok(InsertOutcome::Created(m)) => m.scope.user_id.clone(),
                    _ => None,
                })
                .collect(),
            // Whether anything was written is unknown: assume everything was.
            Err(_) => all_users,
        };
        invalidate_written(&self.cache, tenant, Vec::new(), users).await;
        out
    }

    async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        Ok(self.get_many(tenant, &[id]).await?.pop())
    }

    async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>, StoreError> {
        let ids: Vec<MemoryId> = ids
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.cache.keys();
        let entries: Vec<(String, String)> = ids
            .iter()
            .map(|id| (keys.memory_gen(tenant, *id), keys.memory(tenant, *id)))
            .collect();
        let Some(lookup) = self.cache.lookup("memory", &entries).await else {
            return self.inner.get_many(tenant, &ids).await;
        };
        let mut found = Vec::with_capacity(ids.len());
        let mut missing: HashMap<MemoryId, Option<String>> = HashMap::new();
        for (id, slot) in ids.iter().zip(lookup.slots) {
            match slot {
                Slot::Hit(bytes) => match decode_memory(&bytes, tenant, *id) {
                    Some(m) => found.push(m),
                    // Unreadable (another version's format): read through, do not fill.
                    None => {
                        missing.insert(*id, None);
                    }
                },
                Slot::Miss { gen } => {
                    missing.insert(*id, Some(gen));
                }
            }
        }
        count("memory", "hit", found.len());
        count("memory", "miss", missing.len());
        if missing.is_empty() {
            return Ok(found);
        }
        let missing_ids: Vec<MemoryId> = missing.keys().copied().collect();
        let loaded = self.inner.get_many(tenant, &missing_ids).await?;
        if let Some(epoch) = &lookup.epoch {
            let fills = loaded
                .iter()
                .filter(|m| m.tenant == *tenant && m.deleted_at.is_none())
                .filter_map(|m| {
                    let gen = missing.get(&m.id)?.clone()?;
                    let value = serde_json::to_vec(m).ok()?;
                    Some((
                        keys.memory_gen(tenant, m.id),
                        keys.memory(tenant, m.id),
                        gen,
                        value,
                    ))
                })
                .collect();
            self.cache
                .fill(epoch, self.cache.config().memory_ttl, fills)
                .await;
        }
        found.extend(loaded);
        Ok(found)
    }

    async fn touch(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.touch(tenant, ids, at).await
    }

    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListResult, StoreError> {
        let Some(user) = query.filter.user_id.as_deref() else {
            return self.inner.list(tenant, query).await;
        };
        let keys = self.cache.keys();
        let Some((key, kind)) = keys.list(tenant, user, query) else {
            return self.inner.list(tenant, query).await;
        };
        let cfg = self.cache.config();
        let ttl = match kind {
            ListKind::List => cfg.list_ttl,
            ListKind::Recent => cfg.recent_ttl,
        };
        let slot = (
            keys.user_gen(tenant, user),
            key,
            keys.user_index(tenant, user),
        );
        let own = |c: &CachedList| c.items.iter().all(|m| m.tenant == *tenant);
        let page = self
            .cache
            .page(kind.metric(), slot, ttl, own, || async {
                let r = self.inner.list(tenant, query).await?;
                Ok(CachedList {
                    items: r.items,
                    total: r.total,
                    has_more: r.has_more,
                })
            })
            .await?;
        Ok(ListResult {
            items: page.items,
            total: page.total,
            has_more: page.has_more,
        })
    }

    async fn replace(
        &self,
        next: &Memory,
        expected_version: i64,
        op: ChangeOp,
    ) -> Result<(), StoreError> {
        let tenant = &next.tenant;
        // The state being replaced, for the user it leaves. If the swap succeeds, this
        // read saw exactly `expected_version` (versions only grow, and a newer one would
        // have made the swap fail).
        let before = self.inner.get(tenant, next.id).await?;
        let result = self.inner.replace(next, expected_version, op).await;
        let users = replaced_users(before.as_ref(), next, &result);
        invalidate_written(&self.cache, tenant, vec![next.id], users).await;
        result
    }

    async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        self.inner.changes(tenant, after_seq, limit).await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let result = self.inner.purge_tenant(tenant).await;
        self.cache
            .invalidate(Invalidation::Purge {
                tenant: tenant.clone(),
                user: None,
            })
            .await;
        result
    }

    async fn purge_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64, StoreError> {
        let result = self.inner.purge_user(tenant, user_id).await;
        self.cache
            .invalidate(Invalidation::Purge {
                tenant: tenant.clone(),
                user: Some(user_id.to_owned()),
            })
            .await;
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}
