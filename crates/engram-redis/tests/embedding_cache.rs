//! The embedding cache in Redis, in front of SQLite's, and the memory entries that
//! embedding bookkeeping invalidates.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use engram_core::{EmbeddingStatus, EmbeddingStore, MemoryStore, ModelInfo};
use engram_redis::{CacheConfig, CachedEmbeddingStore};

fn model() -> ModelInfo {
    ModelInfo {
        id: "test/model".into(),
        revision: "r1".into(),
        dim: 3,
    }
}

fn in_an_hour() -> engram_core::Timestamp {
    engram_core::time::now() + chrono::Duration::hours(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_are_cached_by_model_and_content_hash() {
    let env = Env::new().await;
    let emb = CachedEmbeddingStore::new(Arc::new(env.sqlite.clone()), env.cache.clone());
    let t = tenant("acme");
    emb.register_model(&model()).await.expect("register");
    let m = env.remember(&t, "embed me", None).await;
    let jobs = emb.claim_embeddings(10, in_an_hour()).await.expect("claim");
    assert_eq!(jobs.len(), 1);
    let windows = vec![vec![0.5, -1.0, 2.0], vec![1.0, 0.0, 0.25]];
    let ok = emb
        .complete_embeddings(
            &model(),
            vec![(jobs[0].clone(), windows.clone())],
            engram_core::time::now(),
        )
        .await
        .expect("complete");
    assert_eq!(ok, vec![true]);

    let mut r = redis().await;
    let key = format!("{}::emb:test/model@r1:{}", env.prefix(), m.content_hash);
    let raw = get_raw(&mut r, &key).await.expect("vectors in Redis");
    assert_eq!(raw.len(), 2 * 3 * 4);
    assert_eq!(&raw[..4], &0.5f32.to_le_bytes());

    // Drop SQLite's copy (a purge without the cache removes cached vectors of content no
    // memory holds): the vectors can now only come from Redis.
    env.sqlite.purge_tenant(&t).await.expect("purge");
    let inner = env
        .sqlite
        .cached_embeddings(&model(), std::slice::from_ref(&m.content_hash))
        .await
        .expect("inner");
    assert!(inner.is_empty());
    let got = emb
        .cached_embeddings(&model(), &[m.content_hash.clone(), "0".repeat(64)])
        .await
        .expect("cached");
    assert_eq!(got.len(), 1);
    assert_eq!(got[&m.content_hash], windows);

    // Another model's vectors are a different key.
    let other = ModelInfo {
        revision: "r2".into(),
        ..model()
    };
    assert!(emb
        .cached_embeddings(&other, std::slice::from_ref(&m.content_hash))
        .await
        .expect("cached")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_are_read_from_the_store_and_filled() {
    let env = Env::new().await;
    let t = tenant("acme");
    // Vectors made without the Redis cache: only SQLite has them.
    env.sqlite.register_model(&model()).await.expect("register");
    let m = env.remember(&t, "embedded elsewhere", None).await;
    let jobs = env
        .sqlite
        .claim_embeddings(10, in_an_hour())
        .await
        .expect("claim");
    env.sqlite
        .complete_embeddings(
            &model(),
            vec![(jobs[0].clone(), vec![vec![1.0, 2.0, 3.0]])],
            engram_core::time::now(),
        )
        .await
        .expect("complete");
    let mut r = redis().await;
    let key = format!("{}::emb:test/model@r1:{}", env.prefix(), m.content_hash);
    assert!(get_raw(&mut r, &key).await.is_none());

    let emb = CachedEmbeddingStore::new(Arc::new(env.sqlite.clone()), env.cache.clone());
    let got = emb
        .cached_embeddings(&model(), std::slice::from_ref(&m.content_hash))
        .await
        .expect("cached");
    assert_eq!(got[&m.content_hash], vec![vec![1.0, 2.0, 3.0]]);
    assert!(get_raw(&mut r, &key).await.is_some(), "the miss was filled");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .expect("PTTL");
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "embedding TTL is 1 h, got {ttl} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_bookkeeping_refreshes_cached_memories() {
    let env = Env::new().await;
    let emb = CachedEmbeddingStore::new(Arc::new(env.sqlite.clone()), env.cache.clone());
    let t = tenant("acme");
    emb.register_model(&model()).await.expect("register");
    let m = env.remember(&t, "status", None).await;
    let status = |env: &Env| {
        let (s, t) = (env.service.clone(), t.clone());
        async move { s.get(&t, m.id).await.expect("get").embedding_status }
    };
    assert_eq!(status(&env).await, EmbeddingStatus::Pending); // now cached

    let jobs = emb.claim_embeddings(10, in_an_hour()).await.expect("claim");
    assert_eq!(status(&env).await, EmbeddingStatus::Processing);

    let failed = emb
        .fail_embedding(
            &jobs[0],
            "boom",
            Some(engram_core::time::now()),
            engram_core::time::now(),
        )
        .await
        .expect("fail");
    assert!(failed);
    assert_eq!(status(&env).await, EmbeddingStatus::Failed);

    emb.sweep_embeddings(
        engram_core::time::now() + chrono::Duration::seconds(1),
        engram_core::time::now() - chrono::Duration::hours(1),
    )
    .await
    .expect("sweep");
    let jobs = emb
        .claim_embeddings(10, in_an_hour())
        .await
        .expect("claim again");
    assert_eq!(jobs.len(), 1);
    emb.complete_embeddings(
        &model(),
        vec![(jobs[0].clone(), vec![vec![0.0, 1.0, 0.0]])],
        engram_core::time::now(),
    )
    .await
    .expect("complete");
    let got = env.service.get(&t, m.id).await.expect("get");
    assert_eq!(got.embedding_status, EmbeddingStatus::Completed);
    assert_eq!(got.embedding_model.as_deref(), Some("test/model"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_vectors_come_from_the_store() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("redis://{}", l.local_addr().expect("addr"));
    drop(l);
    let cfg = CacheConfig {
        prefix: unique_prefix(),
        op_timeout: Duration::from_millis(300),
        ..CacheConfig::default()
    };
    let env = Env::with(&url, cfg).await;
    let emb = CachedEmbeddingStore::new(Arc::new(env.sqlite.clone()), env.cache.clone());
    let t = tenant("acme");
    emb.register_model(&model()).await.expect("register");
    let m = env.remember(&t, "no redis", None).await;
    let jobs = emb.claim_embeddings(10, in_an_hour()).await.expect("claim");
    emb.complete_embeddings(
        &model(),
        vec![(jobs[0].clone(), vec![vec![3.0, 2.0, 1.0]])],
        engram_core::time::now(),
    )
    .await
    .expect("complete");
    let got = emb
        .cached_embeddings(&model(), std::slice::from_ref(&m.content_hash))
        .await
        .expect("cached");
    assert_eq!(got[&m.content_hash], vec![vec![3.0, 2.0, 1.0]]);
    assert!(!env.cache.is_up());
}
