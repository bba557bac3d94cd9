//! Redis down at start, cut mid-flight, hung, and back again: engram keeps serving from
//! the store, says so, recovers by itself, and never serves what a write during the
//! outage made stale.

mod common;

use std::time::{Duration, Instant};

use common::*;
use engram_core::{CoreError, MemoryStore};
use engram_redis::{CacheConfig, CacheError, RedisCache};

fn fast(prefix: &str) -> CacheConfig {
    CacheConfig {
        prefix: prefix.into(),
        op_timeout: Duration::from_millis(300),
        health_interval: Duration::from_millis(50),
        ..CacheConfig::default()
    }
}

/// A port nothing listens on.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("redis://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_every_call_is_served_by_the_store() {
    let env = Env::with(&closed_port().await, fast(&unique_prefix())).await;
    let t = tenant("acme");
    let m = env.remember(&t, "v1", Some("alice")).await;
    assert_eq!(env.service.get(&t, m.id).await.expect("get").content, "v1");
    assert_eq!(
        env.store
            .get_many(&t, &[m.id])
            .await
            .expect("get_many")
            .len(),
        1
    );
    assert_eq!(
        env.service
            .list(&t, &by_user("alice"))
            .await
            .expect("list")
            .result
            .total,
        1
    );
    env.set_content(&t, m.id, "v2").await;
    assert_eq!(env.service.get(&t, m.id).await.expect("get").content, "v2");
    env.service
        .update(&t, m.id, user_patch("bob"))
        .await
        .expect("move");
    assert_eq!(
        env.service
            .list(&t, &by_user("bob"))
            .await
            .expect("list")
            .result
            .total,
        1
    );
    env.service.forget(&t, m.id).await.expect("forget");
    assert!(matches!(
        env.service.get(&t, m.id).await,
        Err(CoreError::NotFound { .. })
    ));
    env.remember(&t, "x", Some("carol")).await;
    assert_eq!(
        env.store.purge_user(&t, "carol").await.expect("purge user"),
        1
    );
    env.store.purge_tenant(&t).await.expect("purge tenant");

    assert!(!env.cache.is_up());
    let err = env.cache.ping().await.expect_err("not ready");
    assert!(
        err.contains("unreachable") && err.contains("start Redis"),
        "{err}"
    );
    assert!(env.cache.pending_invalidations() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_at_most_the_time_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("redis://{}", listener.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut cfg = fast(&unique_prefix());
    cfg.op_timeout = Duration::from_millis(80);
    let env = Env::with(&url, cfg).await;
    let t = tenant("acme");
    let m = env.remember(&t, "v1", Some("alice")).await;
    let started = Instant::now();
    for _ in 0..20 {
        env.service.get(&t, m.id).await.expect("get");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 gets took {:?} against a hung Redis",
        started.elapsed()
    );
    assert!(!env.cache.is_up());
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_comes_back_by_itself_after_an_outage() {
    let proxy = Proxy::start().await;
    let env = Env::with(&proxy.url(), fast(&unique_prefix())).await;
    let t = tenant("acme");
    let m = env.remember(&t, "v1", Some("alice")).await;
    env.service.get(&t, m.id).await.expect("get");
    let gets = env.counting.gets();
    env.service.get(&t, m.id).await.expect("get");
    assert_eq!(
        env.counting.gets(),
        gets,
        "served from Redis before the cut"
    );
    env.cache.ping().await.expect("ready");

    proxy.cut();
    eventually(5, "the cache notices the outage", || !env.cache.is_up()).await;
    for _ in 0..3 {
        assert_eq!(env.service.get(&t, m.id).await.expect("get").content, "v1");
    }
    assert!(
        env.counting.gets() >= gets + 3,
        "served from the store during the outage"
    );
    assert!(env.cache.ping().await.is_err());

    proxy.restore().await;
    eventually(10, "the cache comes back", || env.cache.is_up()).await;
    env.cache.ping().await.expect("ready again");
    env.service.get(&t, m.id).await.expect("get");
    let gets = env.counting.gets();
    env.service.get(&t, m.id).await.expect("get");
    assert_eq!(env.counting.gets(), gets, "served from Redis again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_an_outage_is_never_served_stale_afterwards() {
    let proxy = Proxy::start().await;
    let prefix = unique_prefix();
    // Replica A reaches Redis through the proxy; replica B directly. Same store.
    let a = Env::with(&proxy.url(), fast(&prefix)).await;
    let b = a.replica(&redis_url(), fast(&prefix));
    let t = tenant("acme");
    let m = a.remember(&t, "v1", Some("alice")).await;
    a.service.get(&t, m.id).await.expect("cache v1");
    a.service
        .list(&t, &by_user("alice"))
        .await
        .expect("cache the list");

    proxy.cut();
    eventually(5, "A notices the outage", || !a.cache.is_up()).await;
    let v2 = a.set_content(&t, m.id, "v2").await;
    assert_eq!(a.service.get(&t, m.id).await.expect("get").content, "v2");
    assert_eq!(a.cache.pending_invalidations(), 1);

    // The stale entry is still in Redis (A could not remove it); B, which reaches Redis,
    // may serve it until A is back or the entry expires: the documented bound.
    let mut r = redis().await;
    let key = format!("{prefix}:acme:memory:{}", m.id);
    assert!(get_raw(&mut r, &key).await.is_some());
    assert_eq!(b.service.get(&t, m.id).await.expect("get").content, "v1");

    proxy.restore().await;
    eventually(10, "A is back and has applied its queue", || {
        a.cache.is_up()
    })
    .await;
    assert_eq!(a.cache.pending_invalidations(), 0);
    assert!(
        get_raw(&mut r, &key).await.is_none(),
        "the stale entry was removed"
    );
    for env in [&a, &b] {
        let got = env.service.get(&t, m.id).await.expect("get");
        assert_eq!((got.content.as_str(), got.version), ("v2", v2.version));
        let listed = env.service.list(&t, &by_user("alice")).await.expect("list");
        assert_eq!(listed.result.items[0].content, "v2");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_during_an_outage_is_applied_when_redis_returns() {
    let proxy = Proxy::start().await;
    let env = Env::with(&proxy.url(), fast(&unique_prefix())).await;
    let t = tenant("acme");
    let m = env.remember(&t, "secret", Some("alice")).await;
    env.service.get(&t, m.id).await.expect("get");
    env.service.list(&t, &by_user("alice")).await.expect("list");
    let mut r = redis().await;
    let pattern = format!("{}:acme:*", env.prefix());
    assert!(!scan(&mut r, &pattern).await.is_empty());

    proxy.cut();
    eventually(5, "the outage is noticed", || !env.cache.is_up()).await;
    env.store.purge_tenant(&t).await.expect("purge");
    proxy.restore().await;
    eventually(10, "the cache is back", || env.cache.is_up()).await;
    let left = scan(&mut r, &pattern).await;
    assert!(
        left.is_empty(),
        "keys of the purged tenant remain: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_malformed_url_or_config_is_an_error() {
    let down = closed_port().await;
    assert!(RedisCache::new(&down, CacheConfig::default()).is_ok());
    assert!(matches!(
        RedisCache::new("http://:pw@nowhere", CacheConfig::default()),
        Err(CacheError::InvalidUrl { url, .. }) if !url.contains("pw")
    ));
    let bad_prefix = CacheConfig {
        prefix: "a:b*".into(),
        ..CacheConfig::default()
    };
    assert!(matches!(
        RedisCache::new(&down, bad_prefix),
        Err(CacheError::InvalidPrefix(_))
    ));
    let zero = CacheConfig {
        op_timeout: Duration::ZERO,
        ..CacheConfig::default()
    };
    assert!(matches!(
        RedisCache::new(&down, zero),
        Err(CacheError::InvalidConfig(_))
    ));
}

#[test]
fn outside_a_runtime_new_says_so() {
    assert_eq!(
        RedisCache::new("redis://127.0.0.1:6379", CacheConfig::default()).err(),
        Some(CacheError::NoRuntime)
    );
}
