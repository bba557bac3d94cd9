//! Scratchpads against the real Redis: round trip, expiry with short TTLs, isolation of
//! tenants and agents, the per-agent bound, and two instances sharing entries.

mod common;

use std::time::Duration;

use common::*;
use engram_core::scratchpad::{ScratchpadService, ScratchpadStore};
use engram_core::CoreError;
use engram_redis::scratchpad::RedisScratchpads;
use engram_redis::CacheConfig;
use serde_json::json;

const HOUR: Duration = Duration::from_secs(3600);

fn cfg(prefix: &str) -> CacheConfig {
    CacheConfig {
        prefix: prefix.into(),
        op_timeout: Duration::from_secs(2),
        ..CacheConfig::default()
    }
}

/// Scratchpads on the local Redis under `prefix`; fails the test when Redis is absent.
async fn pads(prefix: &str) -> RedisScratchpads {
    redis().await;
    RedisScratchpads::new(&redis_url(), &cfg(prefix)).expect("scratchpads")
}

fn keys(entries: &[engram_core::scratchpad::Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.key.as_str()).collect()
}

#[tokio::test]
async fn entries_round_trip_sorted_and_are_deleted() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let s = pads(&prefix).await;
    let t = tenant("acme");
    let e = s
        .put(
            &t,
            "coder:1",
            "plan/a b",
            json!({"step": 1, "why": "é"}),
            HOUR,
        )
        .await
        .unwrap();
    assert_eq!(e.key, "plan/a b");
    let ttl = (e.expires_at - e.updated_at).num_milliseconds();
    assert!((3_599_000..=3_600_001).contains(&ttl), "{ttl}");
    let got = s.get(&t, "coder:1", "plan/a b").await.unwrap().unwrap();
    assert_eq!(got, e);
    s.put(&t, "coder:1", "a", json!([1, 2]), HOUR)
        .await
        .unwrap();
    s.put(&t, "coder:1", "z", json!("last"), HOUR)
        .await
        .unwrap();
    let listed = s.list(&t, "coder:1").await.unwrap();
    assert_eq!(keys(&listed), ["a", "plan/a b", "z"]);
    assert_eq!(listed[1], e);

    // The keys are in the working namespace, escaped, with the TTL.
    let found = scan(&mut conn, &format!("{prefix}::working:acme:agent:*")).await;
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found.contains(&format!(
        "{prefix}::working:acme:agent:coder%3A1:scratch:plan%2Fa%20b"
    )));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(s.entry_key(&t, "coder:1", "a"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 3_500_000, "{pttl}");

    assert!(s.delete(&t, "coder:1", "a").await.unwrap());
    assert!(!s.delete(&t, "coder:1", "a").await.unwrap());
    assert!(s.get(&t, "coder:1", "a").await.unwrap().is_none());
    assert_eq!(
        keys(&s.list(&t, "coder:1").await.unwrap()),
        ["plan/a b", "z"]
    );
    s.purge_agent(&t, "coder:1").await.unwrap();
    assert!(s.list(&t, "coder:1").await.unwrap().is_empty());
    assert!(scan(&mut conn, &format!("{prefix}::*")).await.is_empty());
}

#[tokio::test]
async fn entries_expire_after_their_ttl() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let s = pads(&prefix).await;
    let t = tenant("acme");
    let short = Duration::from_millis(300);
    s.put(&t, "x", "short", json!(1), short).await.unwrap();
    s.put(&t, "x", "long", json!(2), HOUR).await.unwrap();
    s.put(&t, "y", "only", json!(3), short).await.unwrap();
    assert_eq!(s.list(&t, "x").await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(s.get(&t, "x", "short").await.unwrap().is_none());
    assert!(!s.delete(&t, "x", "short").await.unwrap());
    assert_eq!(keys(&s.list(&t, "x").await.unwrap()), ["long"]);
    assert!(s.list(&t, "y").await.unwrap().is_empty());
    // An agent whose entries all expired leaves no key behind (its index expires too).
    assert!(
        scan(&mut conn, &format!("{prefix}::working:acme:agent:y:*"))
            .await
            .is_empty()
    );
    // Rewriting an entry gives it the new TTL.
    s.put(&t, "x", "r", json!(1), short).await.unwrap();
    s.put(&t, "x", "r", json!(2), HOUR).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.get(&t, "x", "r").await.unwrap().unwrap().value, json!(2));
    s.purge_tenant(&t).await.unwrap();
}

#[tokio::test]
async fn tenants_and_agents_are_isolated() {
    let prefix = unique_prefix();
    let s = pads(&prefix).await;
    let (a, b) = (tenant("a"), tenant("b"));
    s.put(&a, "x", "k", json!("a/x"), HOUR).await.unwrap();
    s.put(&b, "x", "k", json!("b/x"), HOUR).await.unwrap();
    s.put(&a, "y", "k", json!("a/y"), HOUR).await.unwrap();
    assert_eq!(
        s.get(&a, "x", "k").await.unwrap().unwrap().value,
        json!("a/x")
    );
    assert_eq!(
        s.get(&b, "x", "k").await.unwrap().unwrap().value,
        json!("b/x")
    );
    assert!(s.get(&b, "y", "k").await.unwrap().is_none());
    assert!(!s.delete(&b, "y", "k").await.unwrap());
    s.purge_tenant(&a).await.unwrap();
    assert!(s.list(&a, "x").await.unwrap().is_empty());
    assert!(s.list(&a, "y").await.unwrap().is_empty());
    assert_eq!(keys(&s.list(&b, "x").await.unwrap()), ["k"]);
    s.purge_tenant(&b).await.unwrap();
}

#[tokio::test]
async fn an_agent_holds_at_most_max_entries_live() {
    let prefix = unique_prefix();
    let s = ScratchpadService::new(std::sync::Arc::new(pads(&prefix).await.with_max_entries(2)));
    let t = tenant("acme");
    s.put(&t, "x", "1", json!(1), HOUR).await.unwrap();
    s.put(&t, "x", "2", json!(2), Duration::from_millis(200))
        .await
        .unwrap();
    match s.put(&t, "x", "3", json!(3), HOUR).await {
        Err(CoreError::Validation { field, .. }) => assert_eq!(field, "key"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    s.put(&t, "x", "1", json!(10), HOUR).await.unwrap();
    s.put(&t, "y", "3", json!(3), HOUR).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.put(&t, "x", "3", json!(3), HOUR).await.unwrap();
    assert_eq!(s.list(&t, "x").await.unwrap().len(), 2);
    s.purge_tenant(&t).await.unwrap();
}

#[tokio::test]
async fn two_instances_see_the_same_entries_and_cache_flushes_keep_them() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let one = pads(&prefix).await;
    let two = pads(&prefix).await;
    let t = tenant("acme");
    one.put(&t, "x", "k", json!("from one"), HOUR)
        .await
        .unwrap();
    assert_eq!(
        two.get(&t, "x", "k").await.unwrap().unwrap().value,
        json!("from one")
    );
    two.put(&t, "x", "k2", json!("from two"), HOUR)
        .await
        .unwrap();
    assert_eq!(keys(&one.list(&t, "x").await.unwrap()), ["k", "k2"]);
    assert!(one.delete(&t, "x", "k2").await.unwrap());
    assert!(two.get(&t, "x", "k2").await.unwrap().is_none());

    // A tenant's cache keys (`{p}:{t}:*`) do not include scratchpads.
    assert!(scan(&mut conn, &format!("{prefix}:acme:*"))
        .await
        .is_empty());
    // Another prefix is another deployment.
    let other = pads(&unique_prefix()).await;
    assert!(other.get(&t, "x", "k").await.unwrap().is_none());
    one.purge_tenant(&t).await.unwrap();
    assert!(two.list(&t, "x").await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_down_is_unavailable() {
    let s = RedisScratchpads::new(
        "redis://127.0.0.1:1",
        &CacheConfig {
            op_timeout: Duration::from_millis(200),
            ..CacheConfig::default()
        },
    )
    .expect("lazy");
    let t = tenant("acme");
    assert!(matches!(
        s.get(&t, "x", "k").await,
        Err(engram_core::StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.put(&t, "x", "k", json!(1), HOUR).await,
        Err(engram_core::StoreError::Unavailable(_))
    ));
}
