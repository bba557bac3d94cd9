//! The only place backends are chosen: `[store] url` (`--store`) picks the embedded
//! SQLite store (`sqlite://DIR`, the default, in `--data-dir`) or Postgres
//! (`postgres://…`); everything else sees the core's ports as trait objects.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use engram_core::rate_limit::{InMemoryRateLimiter, RateLimiter};
use engram_core::{EmbeddingStore, KeyStore, MemoryStore, RecordStore, SearchIndex};
use engram_postgres::{PgConfig, PgStore};
use engram_redis::rate_limit::RedisRateLimiter;
use engram_redis::{CachedEmbeddingStore, CachedMemoryStore, CachedRecordStore, RedisCache};
use engram_server::{ReadinessCheck, StoreCheck};
use engram_sqlite::{SqliteConfig, SqliteStore};

use crate::config::Config;

/// Which store a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreUrl {
    /// `sqlite://DIR` (or `sqlite:DIR`), `postgres://…` / `postgresql://…`; none: SQLite
    /// in `data_dir`.
    pub fn parse(url: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<StoreUrl> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(StoreUrl::Sqlite(data_dir.to_path_buf()));
        };
        if let Some(dir) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if dir.is_empty() {
                return Ok(StoreUrl::Sqlite(data_dir.to_path_buf()));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(dir)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreUrl::Postgres(url.to_owned()));
        }
        anyhow::bail!(
            "unknown store URL {}: use sqlite://DIR or postgres://USER@HOST:PORT/DB",
            engram_postgres::redact_url(url)
        )
    }
}

#[derive(Clone)]
enum Engine {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// The chosen backends, as the core's ports.
#[derive(Clone)]
pub struct Backends {
    pub memories: Arc<dyn MemoryStore>,
    pub keys: Arc<dyn KeyStore>,
    pub embeddings: Arc<dyn EmbeddingStore>,
    pub search: Arc<dyn SearchIndex>,
    pub records: Arc<dyn RecordStore>,
    cache: Option<RedisCache>,
    engine: Engine,
    url: StoreUrl,
}

/// What opening the store did.
pub struct Opened {
    pub applied: Vec<(i64, &'static str)>,
    pub current: i64,
}

impl Backends {
    /// The store answering every semantic search exactly: the reference benchmarks
    /// measure recall against. The embedded store scores every candidate against the
    /// vectors its in-process index holds (brute force in memory: reading them all from
    /// SQLite instead took the whole database file per search at a million memories);
    /// Postgres scans its table.
    pub async fn open_exact(cfg: &Config) -> anyhow::Result<Backends> {
        let mut cfg = cfg.clone();
        cfg.store.exact_search_max = Some(usize::MAX);
        // Every candidate scored exactly, not a shortlist of them.
        cfg.store.vector_shortlist = 0;
        Self::open(&cfg, true).await
    }

    /// Opens the configured store and runs its migrations. `vector_index`: keep the
    /// embedded store's in-process ANN index (servers; one-shot commands search exactly).
    pub async fn open(cfg: &Config, vector_index: bool) -> anyhow::Result<Backends> {
        let url = StoreUrl::parse(cfg.store.url.as_deref(), &cfg.store.data_dir)?;
        let engine = match &url {
            StoreUrl::Sqlite(dir) => {
                let ef = engram_sqlite::VECTOR_SEARCH_EXPANSION_RANGE;
                for (name, value) in [
                    ("vector_search_expansion", cfg.store.vector_search_expansion),
                    ("vector_hybrid_expansion", cfg.store.vector_hybrid_expansion),
                ] {
                    anyhow::ensure!(
                        ef.contains(&value),
                        "store.{name} must be between {} and {}, got {value}",
                        ef.start(),
                        ef.end(),
                    );
                }
                let mut sc = SqliteConfig {
                    readers: cfg.store.readers,
                    vector_index,
                    speaker_key: cfg.search.speaker_key.clone(),
                    vector_quantization: cfg.store.vector_quantization,
                    vector_rescore: cfg.store.vector_rescore,
                    vector_search_expansion: cfg.store.vector_search_expansion,
                    vector_hybrid_expansion: cfg.store.vector_hybrid_expansion,
                    vector_shortlist: cfg.store.vector_shortlist,
                    ..SqliteConfig::new(dir)
                };
                if let Some(max) = cfg.store.exact_search_max {
                    sc.exact_search_max = max;
                }
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&sc))
                    .await
                    .context("opening the store")?
                    .with_context(|| format!("cannot open the store in {}", dir.display()))?;
                crate::release_freed_heap();
                Engine::Sqlite(store)
            }
            StoreUrl::Postgres(u) => {
                let mut pc = PgConfig::new(u.clone());
                pc.pool_size = cfg.store.pool_size;
                pc.schema = cfg.store.schema.clone();
                if let Some(max) = cfg.store.exact_search_max {
                    pc.exact_search_max = max;
                }
                let store = PgStore::connect(&pc).await.with_context(|| {
                    format!(
                        "cannot open the Postgres store at {}",
                        engram_postgres::redact_url(u)
                    )
                })?;
                Engine::Postgres(store)
            }
        };
        /// Every port served by one store.
        fn ports<S>(s: &S, engine: Engine, url: StoreUrl) -> Backends
        where
            S: MemoryStore + KeyStore + EmbeddingStore + SearchIndex + RecordStore + Clone,
        {
            Backends {
                memories: Arc::new(s.clone()),
                keys: Arc::new(s.clone()),
                embeddings: Arc::new(s.clone()),
                search: Arc::new(s.clone()),
                records: Arc::new(s.clone()),
                cache: None,
                engine,
                url,
            }
        }
        let mut b = match &engine {
            Engine::Sqlite(s) => ports(s, engine.clone(), url),
            Engine::Postgres(s) => ports(s, engine.clone(), url),
        };
        if let Some(url) = cfg.cache.url.as_deref().filter(|u| !u.trim().is_empty()) {
            // Connects in the background: a Redis that is down at start is not an error.
            let cache = RedisCache::new(url, cfg.cache.to_redis())
                .map_err(|e| anyhow::anyhow!("[cache] url: {e}"))?;
            // The record decorator reads mirrors from the store itself, never the cache.
            let raw = b.memories.clone();
            b.memories = Arc::new(CachedMemoryStore::new(raw.clone(), cache.clone()));
            b.records = Arc::new(CachedRecordStore::new(
                b.records.clone(),
                raw,
                cache.clone(),
            ));
            b.embeddings = Arc::new(CachedEmbeddingStore::new(
                b.embeddings.clone(),
                cache.clone(),
            ));
            b.cache = Some(cache);
        }
        Ok(b)
    }

    /// The store, for logs: its directory or its URL without a password.
    pub fn describe(&self) -> String {
        match &self.url {
            StoreUrl::Sqlite(d) => format!("sqlite://{}", d.display()),
            StoreUrl::Postgres(u) => engram_postgres::redact_url(u),
        }
    }

    /// The migrations opening applied, and the schema version.
    pub fn migrations(&self) -> Opened {
        match &self.engine {
            Engine::Sqlite(s) => {
                let r = s.migration_report();
                Opened {
                    applied: r.applied.clone(),
                    current: r.current,
                }
            }
            Engine::Postgres(s) => {
                let r = s.migration_report();
                Opened {
                    applied: r.applied.clone(),
                    current: r.current,
                }
            }
        }
    }

    /// The embedded store, when that is the one in use (for its in-process index).
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match &self.engine {
            Engine::Sqlite(s) => Some(s),
            Engine::Postgres(_) => None,
        }
    }

    /// The Redis cache, when `[cache] url` is set.
    pub fn cache(&self) -> Option<&RedisCache> {
        self.cache.as_ref()
    }

    /// Where rate limits are counted: in Redis when `[cache] url` is set, so every replica
    /// shares one budget per key (same prefix and time-out as the cache; fails open while
    /// Redis is down), else in this process.
    pub fn rate_limiter(&self, cfg: &Config) -> anyhow::Result<Arc<dyn RateLimiter>> {
        match (self.cache(), cfg.cache.url.as_deref()) {
            (Some(cache), Some(url)) => {
                let limiter = RedisRateLimiter::new(url, cache.config())
                    .map_err(|e| anyhow::anyhow!("[cache] url: {e}"))?;
                Ok(Arc::new(limiter))
            }
            _ => Ok(Arc::new(InMemoryRateLimiter::default())),
        }
    }

    /// Where the operational tier lives: in Redis when `[cache] url` is set, so every
    /// replica serves the same rings, else in this process.
    pub fn ops_store(&self, cfg: &Config) -> anyhow::Result<Arc<dyn engram_core::ops::OpsStore>> {
        match (self.cache(), cfg.cache.url.as_deref()) {
            (Some(cache), Some(url)) => {
                let rc = engram_redis::ops::RedisOpsConfig {
                    prefix: cache.config().prefix.clone(),
                    op_timeout: cache.config().op_timeout,
                    ..Default::default()
                };
                let ops = engram_redis::ops::RedisOps::new(url, rc, &cfg.ops)
                    .map_err(|e| anyhow::anyhow!("[cache] url: {e}"))?;
                Ok(Arc::new(ops))
            }
            _ => Ok(Arc::new(engram_core::ops::InMemoryOps::new(&cfg.ops))),
        }
    }

    /// Where agents' scratchpads live: in Redis when `[cache] url` is set, so every replica
    /// sees the same entries (same prefix and time-out as the cache), else in this process.
    pub fn scratchpads(
        &self,
        cfg: &Config,
    ) -> anyhow::Result<Arc<dyn engram_core::scratchpad::ScratchpadStore>> {
        match (self.cache(), cfg.cache.url.as_deref()) {
            (Some(cache), Some(url)) => {
                let pads = engram_redis::scratchpad::RedisScratchpads::new(url, cache.config())
                    .map_err(|e| anyhow::anyhow!("[cache] url: {e}"))?;
                Ok(Arc::new(pads))
            }
            _ => Ok(Arc::new(
                engram_core::scratchpad::InMemoryScratchpads::default(),
            )),
        }
    }

    /// Readiness checks of the backends.
    pub fn checks(&self) -> Vec<Arc<dyn ReadinessCheck>> {
        let mut checks: Vec<Arc<dyn ReadinessCheck>> =
            vec![Arc::new(StoreCheck(self.memories.clone()))];
        if let Some(c) = &self.cache {
            checks.push(Arc::new(CacheCheck(c.clone())));
        }
        checks
    }

    /// A lease for work one process at a time may do. The embedded store has one
    /// process by construction; on Postgres the replicas take turns.
    pub fn leases(&self) -> Arc<dyn Leases> {
        match &self.engine {
            Engine::Sqlite(_) => Arc::new(SoleProcess),
            Engine::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Rebuilds the vector indexes of `model` from the stored vectors; returns how many
    /// memories have vectors of it. Postgres only (the embedded index is rebuilt by
    /// opening the store without its index files).
    pub async fn rebuild_vector_index(
        &self,
        model: &engram_core::ModelInfo,
    ) -> anyhow::Result<usize> {
        match &self.engine {
            Engine::Postgres(s) => Ok(s.rebuild_vector_index(model).await?),
            Engine::Sqlite(_) => anyhow::bail!("the embedded index is rebuilt by `engram reindex`"),
        }
    }

    /// Drops a Postgres schema and everything in it (a benchmark's fresh schema).
    pub async fn drop_schema(&self, schema: &str) -> anyhow::Result<()> {
        if let Engine::Postgres(s) = &self.engine {
            s.drop_schema(schema).await?;
        }
        Ok(())
    }

    /// Flushes deferred writes and stops background work.
    pub fn close(&self) {
        if let Engine::Sqlite(s) = &self.engine {
            s.close();
        }
    }
}

/// On Postgres with no `[store] schema`, points `cfg` at a fresh schema named
/// `<prefix>_<uuid>` (for a benchmark's throwaway data) and returns its name.
pub fn temp_schema(cfg: &mut Config, prefix: &str) -> anyhow::Result<Option<String>> {
    let url = StoreUrl::parse(cfg.store.url.as_deref(), &cfg.store.data_dir)?;
    if !matches!(url, StoreUrl::Postgres(_)) || cfg.store.schema.is_some() {
        return Ok(None);
    }
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    cfg.store.schema = Some(schema.clone());
    Ok(Some(schema))
}

/// `/readyz` entry for Redis. Not critical: without it requests are served from the
/// store, slower.
struct CacheCheck(RedisCache);

#[async_trait]
impl ReadinessCheck for CacheCheck {
    fn name(&self) -> &'static str {
        "cache"
    }
    fn critical(&self) -> bool {
        false
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await
    }
}

/// Leader election for periodic jobs.
#[async_trait]
pub trait Leases: Send + Sync {
    /// Takes or renews `name` for `holder` for `ttl`; false while another holds it.
    async fn try_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> bool;
}

struct SoleProcess;

#[async_trait]
impl Leases for SoleProcess {
    async fn try_lease(&self, _: &str, _: &str, _: std::time::Duration) -> bool {
        true
    }
}

#[async_trait]
impl Leases for PgStore {
    async fn try_lease(&self, name: &str, holder: &str, ttl: std::time::Duration) -> bool {
        match PgStore::try_lease(self, name, holder, ttl).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, lease = name, "cannot renew the lease; not leading");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn store_urls() {
        let d = Path::new("/data");
        assert_eq!(
            StoreUrl::parse(None, d).unwrap(),
            StoreUrl::Sqlite("/data".into())
        );
        assert_eq!(
            StoreUrl::parse(Some("sqlite:///var/lib/engram"), d).unwrap(),
            StoreUrl::Sqlite("/var/lib/engram".into())
        );
        assert_eq!(
            StoreUrl::parse(Some("sqlite://rel/dir"), d).unwrap(),
            StoreUrl::Sqlite("rel/dir".into())
        );
        assert_eq!(
            StoreUrl::parse(Some("postgres://u@h:5432/db"), d).unwrap(),
            StoreUrl::Postgres("postgres://u@h:5432/db".into())
        );
        let err = StoreUrl::parse(Some("mysql://u:pw@h/db"), d).unwrap_err();
        assert!(err.to_string().contains("sqlite://DIR"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[tokio::test]
    async fn a_walk_out_of_range_is_refused_by_name() {
        for (key, value) in [
            ("vector_search_expansion", 0),
            ("vector_hybrid_expansion", 0),
            ("vector_hybrid_expansion", 1 << 20),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config::default();
            cfg.store.data_dir = dir.path().to_path_buf();
            match key {
                "vector_search_expansion" => cfg.store.vector_search_expansion = value,
                _ => cfg.store.vector_hybrid_expansion = value,
            }
            let Err(err) = Backends::open(&cfg, true).await else {
                panic!("{key} = {value} was accepted");
            };
            assert!(
                err.to_string()
                    .contains(&format!("store.{key} must be between")),
                "{err}"
            );
            // Refused before the store was opened.
            assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
        }
    }
}
