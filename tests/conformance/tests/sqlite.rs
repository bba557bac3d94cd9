//! The conformance suite against the embedded SQLite store, each test in its own temp dir.

use std::sync::Arc;

use async_trait::async_trait;
use engram_conformance::{conformance_tests, Backend, Stores};
use engram_sqlite::{SqliteConfig, SqliteStore};

struct Sqlite;

#[async_trait]
impl Backend for Sqlite {
    async fn fresh(&self) -> Stores {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&SqliteConfig::new(dir.path())).expect("open sqlite store");
        Stores {
            memories: Arc::new(store.clone()),
            keys: Arc::new(store.clone()),
            embeddings: Arc::new(store),
            guard: Box::new(dir),
        }
    }
}

conformance_tests!(Sqlite);
