//! The conformance suite against Postgres + pgvector, each test in a fresh schema of its
//! own: once as shipped, once with every semantic search forced through the HNSW index
//! (no exact search over a filter's candidates), and once behind the Redis cache (as
//! `engram serve --store postgres://… --cache redis://…` runs it).
//!
//! The server is `ENGRAM_TEST_POSTGRES_URL`, default the cluster `scripts/pgvector`
//! starts (`scripts/test` starts it); Redis is `ENGRAM_TEST_REDIS_URL`, default
//! 127.0.0.1:6379. A missing server fails every test, loudly.

use std::sync::Arc;

use async_trait::async_trait;
use engram_conformance::{conformance_tests, Backend, Stores};
use engram_postgres::{PgConfig, PgStore};

pub fn postgres_url() -> String {
    std::env::var("ENGRAM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:54329/postgres".into())
}

/// Drops the test's schema when the test ends.
struct SchemaGuard {
    store: PgStore,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (store, schema) = (self.store.clone(), self.schema.clone());
        // The story's runtime may be the one dropping us: drop the schema on a runtime
        // of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(store.drop_schema(&schema));
            }
        })
        .join();
    }
}

struct Postgres {
    exact_search_max: Option<usize>,
    cached: bool,
}

#[async_trait]
impl Backend for Postgres {
    async fn fresh(&self) -> Stores {
        let url = postgres_url();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut cfg = PgConfig::new(url.clone());
        cfg.schema = Some(schema.clone());
        cfg.pool_size = 8;
        if let Some(max) = self.exact_search_max {
            cfg.exact_search_max = max;
        }
        let store = PgStore::connect(&cfg).await.unwrap_or_else(|e| {
            panic!(
                "Postgres with pgvector is needed at {url} (set ENGRAM_TEST_POSTGRES_URL, \
                 or run scripts/pgvector to start one): {e}"
            )
        });
        let mut stores = Stores {
            memories: Arc::new(store.clone()),
            keys: Arc::new(store.clone()),
            embeddings: Arc::new(store.clone()),
            search: Arc::new(store.clone()),
            records: Arc::new(store.clone()),
            guard: Box::new(SchemaGuard {
                store,
                schema: schema.clone(),
            }),
        };
        if self.cached {
            let url = std::env::var("ENGRAM_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
            let cfg = engram_redis::CacheConfig {
                prefix: schema,
                ..Default::default()
            };
            let cache = engram_redis::RedisCache::new(&url, cfg).expect("cache config");
            cache.ping().await.unwrap_or_else(|e| {
                panic!("Redis is needed at {url} (set ENGRAM_TEST_REDIS_URL): {e}")
            });
            // The record decorator reads mirrors from the store's own memory port.
            stores.records = Arc::new(engram_redis::CachedRecordStore::new(
                stores.records,
                stores.memories.clone(),
                cache.clone(),
            ));
            stores.memories = Arc::new(engram_redis::CachedMemoryStore::new(
                stores.memories,
                cache.clone(),
            ));
            stores.embeddings = Arc::new(engram_redis::CachedEmbeddingStore::new(
                stores.embeddings,
                cache,
            ));
        }
        stores
    }
}

mod shipped {
    use super::*;
    conformance_tests!(Postgres {
        exact_search_max: None,
        cached: false,
    });
}

mod index_only {
    use super::*;
    conformance_tests!(Postgres {
        exact_search_max: Some(0),
        cached: false,
    });
}

mod cached {
    use super::*;
    conformance_tests!(Postgres {
        exact_search_max: None,
        cached: true,
    });
}
