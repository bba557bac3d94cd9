//! The conformance suite against the embedded SQLite store, each test in its own temp dir:
//! once as shipped, and once with every semantic search forced through the HNSW graph
//! (no exact search over a filter's candidates), so both paths are held to the same
//! stories.

use std::sync::Arc;

use async_trait::async_trait;
use engram_conformance::{conformance_tests, Backend, Stores};
use engram_sqlite::{SqliteConfig, SqliteStore};

struct Sqlite {
    exact_search_max: Option<usize>,
}

#[async_trait]
impl Backend for Sqlite {
    async fn fresh(&self) -> Stores {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = SqliteConfig::new(dir.path());
        if let Some(max) = self.exact_search_max {
            cfg.exact_search_max = max;
        }
        let store = SqliteStore::open(&cfg).expect("open sqlite store");
        Stores {
            memories: Arc::new(store.clone()),
            keys: Arc::new(store.clone()),
            embeddings: Arc::new(store.clone()),
            search: Arc::new(store.clone()),
            records: Arc::new(store),
            guard: Box::new(dir),
        }
    }
}

mod shipped {
    use super::*;
    conformance_tests!(Sqlite {
        exact_search_max: None
    });
}

mod graph_only {
    use super::*;
    conformance_tests!(Sqlite {
        exact_search_max: Some(0)
    });
}
