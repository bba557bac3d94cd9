//! engram's core: the memory model, the newtypes that parse input at the edge, the ports
//! (traits) that storage backends and embedders implement, and the use cases every
//! transport calls (`MemoryService`, `KeyService`).
//!
//! It owns the rules: what a valid memory is, how a patch applies, how a page token is
//! formed, which error code maps to which HTTP status. It does not own persistence (see
//! `engram-sqlite`), wire formats (see `engram-api`) or transports (see `engram-server`),
//! and it never imports an HTTP, SQL or Redis crate.

pub mod change;
pub mod context;
pub mod context_service;
pub mod embed;
pub mod error;
pub mod filter;
pub mod ids;
pub mod keys;
pub mod memory;
pub mod ops;
pub mod pipeline;
pub mod ports;
pub mod rate_limit;
pub mod rerank;
pub mod scratchpad;
pub mod search;
pub mod service;
pub mod time;
pub mod validate;
pub mod working;

pub use change::{ChangeOp, ChangeRecord};
pub use embed::{DocumentEmbedding, EmbedError, Embedder, ModelInfo};
pub use error::{CoreError, ErrorCode, StoreError};
pub use filter::{ListQuery, ListResult, MemoryFilter, PageToken, Position, SortBy, SortOrder};
pub use ids::{MemoryId, TenantId};
pub use keys::{ApiKey, ApiKeyRecord, KeyService};
pub use memory::{EmbeddingStatus, Memory, MemoryPatch, MemoryType, NewMemory, Scope, Source};
pub use pipeline::{reembed, CoreErrorOrEmbed, EmbeddingPipeline, PipelineConfig, ReembedReport};
pub use ports::{
    ContextJob, ContextVector, EmbeddingJob, EmbeddingStore, IdempotencyKey, InsertMemory,
    InsertOutcome, KeyStore, MemoryStore, MirrorWrite, Nearest, NearestFor, RecordStore,
    SearchIndex, SessionTurn, SweepReport,
};
pub use rerank::{RerankConfig, RerankFields};
pub use search::{
    Bm25, EmbedderSlot, HitScores, Scored, SearchConfig, SearchHit, SearchMode, SearchRequest,
    SearchResult, SearchService,
};
pub use service::{parse_idempotency_key, BulkItemResult, Listing, MemoryService, BULK_MAX};
pub use time::Timestamp;
