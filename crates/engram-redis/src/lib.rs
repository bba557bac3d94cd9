//! engram's Redis layer: caches in front of the store, never ground truth, and the shared
//! state of server mode that is not ground truth either. It owns the memory cache
//! (`GET /memories/{id}`), the per-user list caches, the embedding cache by (model,
//! content hash), their key namespaces and invalidation, and how engram behaves while
//! Redis is away; the operational tier's rings and metrics shared by every replica
//! ([`ops::RedisOps`], an `OpsStore`: a critical event is persisted to the working tier
//! before it may leave a ring, and its ring never expires while it holds one); and rate
//! limits ([`rate_limit`]). No cache entry is data: every entry can be dropped at any
//! time, every Redis failure is a cache miss, and every write goes to the store first. It
//! does not choose whether Redis is used (the binary does) and does not cache working-tier
//! records (it keeps their mirror memories' cached state right).
//!
//! Wiring: build one [`RedisCache`] and wrap the store's ports with it:
//! [`CachedMemoryStore::new`] for `MemoryStore` (hand it to `MemoryService` and
//! `SearchService`) and [`CachedEmbeddingStore::new`] for `EmbeddingStore` (hand it to the
//! embedding pipeline, so its bookkeeping invalidates cached memories) and
//! [`CachedRecordStore::new`] for `RecordStore` (hand it to `WorkingService`, so the
//! mirror memories written with records invalidate what a memory write would; records
//! themselves are not cached). Report [`RedisCache::ping`] in `/readyz` as a
//! non-critical check.
//!
//! # The guarantee
//!
//! A successful write through these wrappers invalidates what it changed before it
//! returns, and a read that started before the write can never put the old state back
//! (conditional fills, see [`cache`]): after the write, no replica serves the old state
//! from Redis. When the writer cannot reach Redis, its invalidations are queued and this
//! replica stops using the cache until Redis answers and the queue has been applied (a
//! queue longer than `max_pending` becomes one flush of the whole prefix). Until then,
//! *other* replicas that still reach Redis may serve the entry the write made stale, for
//! at most its TTL (`memory_ttl` 5 min, `list_ttl` 2 min, `recent_ttl` 1 min); a replica
//! that dies with a non-empty queue leaves such entries to their TTL too. Writes that
//! bypass these wrappers (the CLI writing to the data directory, a second process without
//! the cache) are not seen: point every writer at the same cache. Redis must not evict a
//! user's list index before its pages (`maxmemory-policy` `noeviction` or `volatile-ttl`),
//! and must be a single node (the scripts touch keys they compute; no Redis Cluster).
//!
//! Key names, TTLs and invalidation rules: [`keys`] and `docs/redis.md`.

pub mod cache;
mod embedding;
pub mod keys;
mod memory;
pub mod ops;
pub mod rate_limit;
mod records;
pub mod scratchpad;

pub use cache::{CacheConfig, CacheError, RedisCache};
pub use embedding::CachedEmbeddingStore;
pub use memory::CachedMemoryStore;
pub use records::CachedRecordStore;
