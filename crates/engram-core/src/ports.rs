//! Ports: what the core needs from a storage backend, in the domain's words. Nothing here
//! is SQLite-shaped: a Postgres backend implements the same traits unchanged, and
//! `tests/conformance` holds every backend to the same behaviour.

use std::collections::HashMap;

use async_trait::async_trait;

use crate::change::{ChangeOp, ChangeRecord};
use crate::error::StoreError;
use crate::filter::{ListQuery, ListResult, MemoryFilter};
use crate::ids::{MemoryId, TenantId};
use crate::keys::ApiKeyRecord;
use crate::memory::Memory;
use crate::rerank::RerankFields;
use crate::search::Scored;
use crate::time::Timestamp;

/// A client-chosen key that makes a create idempotent, with a fingerprint of the request
/// it was first used for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// One memory to insert.
#[derive(Clone, Debug, PartialEq)]
pub struct InsertMemory {
    pub memory: Memory,
    pub idempotency: Option<IdempotencyKey>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum InsertOutcome {
    /// Stored now.
    Created(Memory),
    /// The idempotency key was used before with the same fingerprint: the original memory.
    Replayed(Memory),
    /// The idempotency key was used before for a different request.
    KeyReused,
}

/// Ground state for memories, plus the change log.
///
/// Every method is scoped by tenant: no call can read or change another tenant's data.
/// Writes are durable when the returned future resolves `Ok`.
#[async_trait]
pub trait MemoryStore: Send + Sync + 'static {
    /// Inserts each item atomically and independently (one failing item does not affect
    /// the others) and appends a `Created` change record for each. Items are for one tenant.
    async fn insert(
        &self,
        tenant: &TenantId,
        items: Vec<InsertMemory>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError>;

    /// A memory that is not deleted.
    async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Option<Memory>, StoreError>;

    /// The memories with these ids that exist and are not deleted, in any order.
    async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>, StoreError>;

    /// Records that memories were read at `at`. Best effort and possibly deferred: it does
    /// not bump `version` or write a change record.
    async fn touch(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Memories that are not deleted and match the query, in its order.
    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListResult, StoreError>;

    /// Replaces a memory's state with `next` if its stored version is still
    /// `expected_version` (compare-and-swap), and appends a change record with `op`.
    /// `Err(NotFound)` if absent or deleted, `Err(Conflict)` if the version moved on.
    async fn replace(
        &self,
        next: &Memory,
        expected_version: i64,
        op: ChangeOp,
    ) -> Result<(), StoreError>;

    /// The change log of a tenant after `after_seq`, oldest first.
    async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError>;

    /// Removes every row of a tenant: memories, change records, idempotency keys, API keys.
    /// Returns the number of memories removed.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, StoreError>;

    /// Removes every memory of one user of a tenant and their change records.
    async fn purge_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64, StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// How many of the nearest memories a vector search wants, how they are scored, and what
/// the list is for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nearest {
    /// At most this many memories.
    pub limit: u32,
    /// How many of the list the caller keeps at most: a semantic search's `k`, where
    /// `limit` adds a margin for memories gone since the index saw them. A store whose
    /// scores are rounded (an index of i8 vectors) settles the order exactly where the
    /// caller cuts, at the `keep`-th place; above it, hits within the rounding's margin
    /// of each other may trade places. At least `limit` keeps every place.
    pub keep: u32,
    /// The weight of a memory's context vector in its score (0: its windows alone).
    pub context_weight: f32,
    /// What the caller does with the list.
    pub purpose: NearestFor,
}

impl Nearest {
    /// A list of `limit` memories that is the answer, all of it kept (see
    /// [`NearestFor::Answer`]).
    pub fn answer(limit: u32, context_weight: f32) -> Self {
        Nearest {
            limit,
            keep: limit,
            context_weight,
            purpose: NearestFor::Answer,
        }
    }
}

/// What a vector search's list is for. An approximate index's recall depends on how widely
/// it walks its graph, and the two uses need different recall.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NearestFor {
    /// The list is the answer, ranked by its own scores (a semantic search): every true
    /// neighbour it misses is a hit lost, so the store walks as widely as it is
    /// configured to for its recall.
    #[default]
    Answer,
    /// The list is fused with the keyword retriever's (a hybrid search), which scores the
    /// keyword candidates it left out through [`SearchIndex::similarities`], so a memory
    /// found by both retrievers is not lost when the walk misses it: the store may walk
    /// less widely. Its scores are weighed against those `similarities` gives, so they
    /// need be no more precise than those.
    Fusion,
}

/// The two retrievers search runs on, over a tenant's live memories that pass a filter.
/// Both are derived state a store keeps in step with its memories: the keyword index in
/// the same transaction as the write, the vectors as the embedding pipeline stores them.
#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// Up to `limit` memories matching the words of `query`, best first; the score is
    /// BM25 with `bm25`'s parameters, or BM25-like where the backend cannot set them
    /// (higher is better, not comparable across queries).
    async fn keyword(
        &self,
        tenant: &TenantId,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
        bm25: crate::search::Bm25,
    ) -> Result<Vec<Scored>, StoreError>;

    /// Up to `want.limit` memories whose vectors of `model` are nearest to `vector`, best
    /// first; the score is the cosine similarity of the memory's best window, or for a
    /// memory with a context vector `(1 - w) · best window + w · context` with `w =
    /// want.context_weight`. The filter is applied during the search, never after a top-k
    /// cut. A store with an approximate index may walk it less widely for
    /// [`NearestFor::Fusion`] than for [`NearestFor::Answer`].
    async fn nearest(
        &self,
        tenant: &TenantId,
        model: &crate::embed::ModelInfo,
        vector: &[f32],
        filter: &MemoryFilter,
        want: Nearest,
    ) -> Result<Vec<Scored>, StoreError>;

    /// The score `nearest` gives each of `ids` that the index holds as a live memory of
    /// `tenant` with vectors of `model` (the same scoring, context vector mixed in), in any
    /// order; an id left out counts as the least near of the vector candidates.
    ///
    /// Hybrid search asks it for the keyword candidates the vector retriever did not
    /// return: an approximate search can miss a memory that exact search would have
    /// returned, and scored as the least near it would fuse below where it belongs. A
    /// store whose `nearest` is exact gains nothing from it (every memory it left out
    /// scores below the ones it returned), hence the default: none.
    async fn similarities(
        &self,
        _tenant: &TenantId,
        _model: &crate::embed::ModelInfo,
        _vector: &[f32],
        _ids: &[MemoryId],
        _context_weight: f32,
    ) -> Result<Vec<Scored>, StoreError> {
        Ok(Vec::new())
    }

    /// What the re-ranker reads of those of `ids` the index holds as live memories of
    /// `tenant`, the speaker read from the metadata key `speaker_key`. An id left out is
    /// loaded from the store instead, so an index that holds none of this returns an empty
    /// map (the default). The fields may lag a write by as much as the index does: they
    /// only order candidates, and every hit returned is loaded and checked.
    async fn rerank_fields(
        &self,
        _tenant: &TenantId,
        _ids: &[MemoryId],
        _speaker_key: &str,
    ) -> Result<HashMap<MemoryId, RerankFields>, StoreError> {
        Ok(HashMap::new())
    }
}

/// API keys, stored hashed.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    async fn create_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError>;
    /// The key with this hash, if it exists and is not revoked.
    async fn find_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// All keys, revoked ones included; of one tenant when given.
    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes the key with this public id. `Ok(false)` if there is none, or it was revoked.
    async fn revoke_key(&self, key_id: &str, at: Timestamp) -> Result<bool, StoreError>;
}

/// A memory claimed for embedding. `claim` identifies this claim: completing or failing it
/// succeeds only while the claim still holds (not expired and re-claimed, content unchanged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingJob {
    pub memory_id: MemoryId,
    pub tenant: TenantId,
    pub content: String,
    pub content_hash: String,
    /// Claims so far, this one included.
    pub attempts: u32,
    pub claim: i64,
}

/// A session whose context windows may be out of date, claimed by one worker. `claim`
/// is the session's change counter when claimed: completing clears the session from the
/// queue only if nothing changed since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextJob {
    pub tenant: TenantId,
    pub session_id: String,
    pub claim: i64,
}

/// One live memory of a session, in session order (`valid_from` or else `created_at`,
/// then insertion), with the hash of the window text its stored context vector of the
/// asked model was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTurn {
    pub memory_id: MemoryId,
    pub user_id: Option<String>,
    pub content: String,
    pub context_hash: Option<String>,
}

/// A context vector to store: the memory, the hash of its window text, the vector.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextVector {
    pub memory_id: MemoryId,
    pub context_hash: String,
    pub vector: Vec<f32>,
}

/// What the sweeper did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// `processing` rows whose lease expired, back to `pending`.
    pub expired_leases: u64,
    /// `failed` rows due for a retry, back to `pending`.
    pub retried: u64,
}

/// The embedding pipeline's view of the store: the memory's `embedding_status` is the
/// queue. Vectors and the cache are derived state. Status bookkeeping bumps `version` (so
/// a concurrent update retries rather than overwrite it) but is not a change-log entry.
#[async_trait]
pub trait EmbeddingStore: Send + Sync + 'static {
    /// Records a model (id, revision, dimension); the first one recorded becomes active.
    async fn register_model(&self, model: &crate::embed::ModelInfo) -> Result<(), StoreError>;
    /// The model whose vectors search uses, if any.
    async fn active_model(&self) -> Result<Option<crate::embed::ModelInfo>, StoreError>;
    /// Atomically moves up to `limit` due `pending` memories (any tenant, oldest first) to
    /// `processing`, leased until `lease_until`.
    async fn claim_embeddings(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<EmbeddingJob>, StoreError>;
    /// Stores each job's vectors (one per window) for `model` and marks it `completed`, in
    /// one transaction. A job whose claim no longer holds (content changed, lease lost,
    /// deleted) is skipped: the result is `false` at its index. Also fills the cache.
    async fn complete_embeddings(
        &self,
        model: &crate::embed::ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
        at: Timestamp,
    ) -> Result<Vec<bool>, StoreError>;
    /// Marks a claimed job `failed` with `error`; `retry_at` schedules a retry (None: give up).
    async fn fail_embedding(
        &self,
        job: &EmbeddingJob,
        error: &str,
        retry_at: Option<Timestamp>,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
    /// Re-queues expired leases, and failed rows whose retry is due and was scheduled after
    /// `retry_since`.
    async fn sweep_embeddings(
        &self,
        now: Timestamp,
        retry_since: Timestamp,
    ) -> Result<SweepReport, StoreError>;
    /// Cached vectors of `model` for these content hashes.
    async fn cached_embeddings(
        &self,
        model: &crate::embed::ModelInfo,
        content_hashes: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<Vec<f32>>>, StoreError>;
    /// Memories by embedding status, over all tenants.
    async fn embedding_queue_depth(
        &self,
    ) -> Result<Vec<(crate::memory::EmbeddingStatus, u64)>, StoreError>;
    /// Live memories (any tenant) with no vectors of `model` for their current content,
    /// oldest first. The jobs carry no claim (`claim = 0`).
    async fn missing_vectors(
        &self,
        model: &crate::embed::ModelInfo,
        limit: u32,
    ) -> Result<Vec<EmbeddingJob>, StoreError>;
    /// Stores vectors of `model` beside any others, without touching the memories' status,
    /// for memories whose content is still the one embedded. `false` where it was not.
    async fn store_vectors(
        &self,
        model: &crate::embed::ModelInfo,
        results: Vec<(EmbeddingJob, Vec<Vec<f32>>)>,
    ) -> Result<Vec<bool>, StoreError>;
    /// Makes `model` the active one, atomically, if every live memory has its vectors;
    /// then every live memory is `completed` by it. Returns how many memories still lack
    /// vectors (0: switched; otherwise nothing changed).
    async fn activate_model(
        &self,
        model: &crate::embed::ModelInfo,
        at: Timestamp,
    ) -> Result<u64, StoreError>;
    /// Claims up to `limit` queued sessions (any tenant) whose lease is free or expired,
    /// leased until `lease_until`. Sessions enter the queue in the transaction that adds,
    /// changes or removes one of their memories.
    async fn claim_contexts(
        &self,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ContextJob>, StoreError>;
    /// The session's live memories in session order, with the window hash of each one's
    /// context vector of `model`.
    async fn session_turns(
        &self,
        job: &ContextJob,
        model: &crate::embed::ModelInfo,
    ) -> Result<Vec<SessionTurn>, StoreError>;
    /// Stores context vectors of `model` for memories still live in the job's session, in
    /// one transaction, and takes the session off the queue if it did not change since the
    /// claim (otherwise frees the lease, so the newer state is worked on). Returns whether
    /// the session left the queue.
    async fn complete_context(
        &self,
        job: &ContextJob,
        model: &crate::embed::ModelInfo,
        vectors: Vec<ContextVector>,
    ) -> Result<bool, StoreError>;
    /// The stored vectors (one per window) of a memory for `model`.
    async fn memory_vectors(
        &self,
        tenant: &TenantId,
        id: MemoryId,
        model: &crate::embed::ModelInfo,
    ) -> Result<Vec<Vec<f32>>, StoreError>;
}

/// A write to a record's mirror memory, made in the same transaction as the record's own.
#[derive(Clone, Debug, PartialEq)]
pub enum MirrorWrite {
    /// Stores a new memory, with its `Created` change record.
    Insert(Memory),
    /// Replaces a memory still at `expected_version` (a delete sets `deleted_at`, op
    /// `Deleted`), with a change record of `op`.
    Replace {
        next: Memory,
        expected_version: i64,
        op: ChangeOp,
    },
}

impl MirrorWrite {
    /// The memory as it will be stored.
    pub fn memory(&self) -> &Memory {
        match self {
            MirrorWrite::Insert(m) => m,
            MirrorWrite::Replace { next, .. } => next,
        }
    }
}

/// Ground state for the working tier: records of every kind, with their mirror memories,
/// and their entries in the change log (shared with memories, in one `seq` order).
///
/// Every method is scoped by tenant. A write and its mirror write commit together or not
/// at all: `Err(Conflict)` when a version moved on (the record's or the mirror's) or a
/// record with the same (tenant, kind, agent, key) exists; `Err(NotFound)` when the record
/// or the mirror to replace is gone.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Inserts a record (version 1) and its mirror; appends `Created` change records.
    async fn insert_record(
        &self,
        record: &crate::working::Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError>;

    async fn get_record(
        &self,
        tenant: &TenantId,
        id: crate::working::RecordId,
    ) -> Result<Option<crate::working::Record>, StoreError>;

    /// The record of `kind` with this key, for this agent (or none).
    async fn get_keyed(
        &self,
        tenant: &TenantId,
        kind: crate::working::RecordKind,
        agent_id: Option<&str>,
        key: &str,
    ) -> Result<Option<crate::working::Record>, StoreError>;

    /// Records matching the query, in its order, after its keyset position.
    async fn list_records(
        &self,
        tenant: &TenantId,
        query: &crate::working::RecordQuery,
    ) -> Result<crate::working::RecordPage, StoreError>;

    /// Replaces a record still at `expected_version` with `next`, and writes the mirror;
    /// appends `Updated` change records.
    async fn replace_record(
        &self,
        next: &crate::working::Record,
        expected_version: i64,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError>;

    /// Deletes a record still at `record.version` and writes the mirror (deleting it, or —
    /// for the tier migration — keeping it as a long-term memory); appends a `Deleted`
    /// change record holding the record's last state.
    async fn delete_record(
        &self,
        record: &crate::working::Record,
        mirror: Option<MirrorWrite>,
    ) -> Result<(), StoreError>;

    /// The change log's record entries of a tenant after `after_seq`, oldest first.
    async fn record_changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<crate::working::RecordChange>, StoreError>;
}
