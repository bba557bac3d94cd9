//! The operational tier in Redis (`RedisOps`) against the local Redis, each test under a
//! prefix of its own: the behaviour of the in-process reference (`InMemoryOps`), plus
//! what only a shared store has to get right — two replicas pushing to one agent at once,
//! TTLs that never drop an unpersisted critical event, sequence numbers that survive a
//! restart, and Redis being away.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{redis, redis_url, scan, tenant, unique_prefix};
use engram_core::ops::{
    CriticalSink, NewEvent, OpsConfig, OpsEvent, OpsService, OpsStore, PushOutcome, Severity,
    RECENT_MAX,
};
use engram_core::{CoreError, StoreError, TenantId};
use engram_redis::ops::{footprint, RedisOps, RedisOpsConfig, EVENT_OVERHEAD};
use serde_json::json;

/// Records what it persists; can be made to fail; when given the store, checks that each
/// event is still in its ring when persisted.
#[derive(Default)]
struct TestSink {
    persisted: Mutex<Vec<(TenantId, OpsEvent)>>,
    fail: AtomicBool,
    check_in: Option<Arc<RedisOps>>,
}

impl TestSink {
    fn ns(&self) -> Vec<i64> {
        let persisted = self.persisted.lock().expect("sink");
        persisted.iter().map(|(_, e)| n(e)).collect()
    }
}

#[async_trait]
impl CriticalSink for TestSink {
    async fn persist_critical(&self, tenant: &TenantId, event: &OpsEvent) -> Result<(), CoreError> {
        tokio::task::yield_now().await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(CoreError::Unavailable("the working tier is down".into()));
        }
        if let Some(store) = &self.check_in {
            let ring = store
                .recent(tenant, &event.agent, RECENT_MAX, None)
                .await
                .expect("recent");
            assert!(
                ring.contains(event),
                "persisted after it left the ring: {event:?}"
            );
        }
        assert_eq!(event.severity, Severity::Critical);
        self.persisted
            .lock()
            .expect("sink")
            .push((tenant.clone(), event.clone()));
        Ok(())
    }
}

fn ev(severity: Severity, category: &str, n: i64) -> NewEvent {
    NewEvent {
        category: category.into(),
        severity,
        payload: json!({ "n": n }),
        at: None,
    }
}

fn n(e: &OpsEvent) -> i64 {
    e.payload["n"].as_i64().expect("payload n")
}

fn ns(events: &[OpsEvent]) -> Vec<i64> {
    events.iter().map(n).collect()
}

fn cap(capacity: usize) -> OpsConfig {
    OpsConfig {
        capacity,
        ..OpsConfig::default()
    }
}

fn redis_config(prefix: &str) -> RedisOpsConfig {
    RedisOpsConfig {
        prefix: prefix.into(),
        op_timeout: Duration::from_secs(5),
        ..RedisOpsConfig::default()
    }
}

/// A `RedisOps` under `prefix` on the test Redis (checked to be there first).
async fn store_at(prefix: &str, config: &OpsConfig, ttl: Option<Duration>) -> Arc<RedisOps> {
    redis().await;
    let mut cfg = redis_config(prefix);
    if let Some(ttl) = ttl {
        cfg.ttl = ttl;
    }
    Arc::new(RedisOps::new(&redis_url(), cfg, config).expect("RedisOps"))
}

async fn store(config: &OpsConfig) -> Arc<RedisOps> {
    store_at(&unique_prefix(), config, None).await
}

async fn service_with(
    config: OpsConfig,
    check_in: bool,
) -> (OpsService, Arc<RedisOps>, Arc<TestSink>) {
    let store = store(&config).await;
    let sink = Arc::new(TestSink {
        check_in: check_in.then(|| Arc::clone(&store)),
        ..TestSink::default()
    });
    let svc = OpsService::new(store.clone(), sink.clone(), config);
    (svc, store, sink)
}

async fn service(config: OpsConfig) -> (OpsService, Arc<RedisOps>, Arc<TestSink>) {
    service_with(config, true).await
}

fn seqs(events: &[OpsEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn a_full_ring_evicts_the_oldest_and_keeps_its_capacity() {
    let t = tenant("t");
    let (svc, _, _) = service(cap(3)).await;
    let mut stored = Vec::new();
    for i in 1..=5 {
        stored.push(
            svc.record(&t, "a", ev(Severity::Info, "x", i))
                .await
                .expect("record")
                .seq,
        );
    }
    assert!(stored.windows(2).all(|w| w[0] < w[1]), "{stored:?}");
    let got = svc.recent(&t, "a", 10, None).await.expect("recent");
    assert_eq!(ns(&got), [5, 4, 3]);
    assert_eq!(seqs(&got), [stored[4], stored[3], stored[2]]);
    assert!(got.iter().all(|e| e.agent == "a" && e.category == "x"));
}

#[tokio::test]
async fn recent_is_newest_first_with_and_without_a_category() {
    let t = tenant("t");
    let (svc, _, _) = service(OpsConfig::default()).await;
    for i in 1..=6 {
        let category = if i % 2 == 0 { "tool" } else { "llm" };
        svc.record(&t, "a", ev(Severity::Info, category, i))
            .await
            .expect("record");
    }
    // Categories a prefix comparison could confuse with "tool".
    for (category, i) in [("tools", 7), ("to\"ol", 8), ("tool\\", 9)] {
        svc.record(&t, "a", ev(Severity::Info, category, i))
            .await
            .expect("record");
    }
    let (s, tt) = (&svc, &t);
    let all = |c| async move { ns(&s.recent(tt, "a", 1000, c).await.expect("recent")) };
    assert_eq!(all(None).await, [9, 8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(
        ns(&svc.recent(&t, "a", 2, None).await.expect("recent")),
        [9, 8]
    );
    assert_eq!(
        ns(&svc.recent(&t, "a", 2, Some("tool")).await.expect("recent")),
        [6, 4]
    );
    assert_eq!(all(Some("tool")).await, [6, 4, 2]);
    assert_eq!(all(Some("llm")).await, [5, 3, 1]);
    assert_eq!(all(Some("to\"ol")).await, [8]);
    assert_eq!(all(Some("tool\\")).await, [9]);
    assert!(all(Some("none")).await.is_empty());
    assert!(svc
        .recent(&t, "nobody", 10, None)
        .await
        .expect("recent")
        .is_empty());
}

#[tokio::test]
async fn a_category_filter_looks_past_the_first_batch() {
    let t = tenant("t");
    let store = store(&OpsConfig::default()).await;
    store
        .push(&t, "a", ev(Severity::Info, "rare", 0))
        .await
        .expect("push");
    for i in 1..=700 {
        store
            .push(&t, "a", ev(Severity::Info, "common", i))
            .await
            .expect("push");
    }
    let rare = store.recent(&t, "a", 5, Some("rare")).await.expect("rare");
    assert_eq!(ns(&rare), [0]);
    let common = store
        .recent(&t, "a", RECENT_MAX, Some("common"))
        .await
        .expect("common");
    assert_eq!(common.len(), 700);
    assert!(common.windows(2).all(|w| w[0].seq > w[1].seq));
}

#[tokio::test]
async fn payloads_times_and_names_round_trip_exactly() {
    let t = tenant("t");
    let store = store(&OpsConfig::default()).await;
    let payload = json!({
        "empty_list": [], "empty_map": {}, "float": 0.1, "big": 9_007_199_254_740_993_u64,
        "neg": -17, "text": "é \"q\" \n ü", "nested": [{ "a": [null, true] }]
    });
    let at = engram_core::time::from_micros(1_700_000_000_123_456);
    let agent = "agent:with*glob?chars [é]";
    let new = NewEvent {
        category: "cat \"x\"".into(),
        severity: Severity::Warning,
        payload: payload.clone(),
        at: Some(at),
    };
    let PushOutcome::Stored(stored) = store.push(&t, agent, new).await.expect("push") else {
        panic!("an empty ring takes the event");
    };
    assert_eq!(stored.payload, payload);
    assert_eq!(stored.at, at);
    let got = store.recent(&t, agent, 1, None).await.expect("recent");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], stored);
    assert_eq!(
        store
            .recent(&t, agent, 1, Some("cat \"x\""))
            .await
            .expect("recent"),
        [stored]
    );
    assert_eq!(store.agents(&t).await.expect("agents"), [agent]);
    assert!(store
        .recent(&t, "agent", 1, None)
        .await
        .expect("recent")
        .is_empty());
}

#[tokio::test]
async fn exactly_the_evicted_critical_events_are_persisted_before_they_leave() {
    let t = tenant("t");
    let (svc, store, sink) = service(cap(3)).await;
    use Severity::{Critical, Info};
    for (sev, i) in [(Critical, 1), (Info, 2), (Critical, 3), (Info, 4)] {
        svc.record(&t, "a", ev(sev, "x", i)).await.expect("record");
    }
    assert_eq!(sink.ns(), [1], "the evicted critical event, before it left");
    for (sev, i) in [(Info, 5), (Info, 6), (Critical, 7)] {
        svc.record(&t, "a", ev(sev, "x", i)).await.expect("record");
    }
    assert_eq!(sink.ns(), [1, 3]);
    assert_eq!(
        ns(&svc.recent(&t, "a", 10, None).await.expect("recent")),
        [7, 6, 5]
    );
    assert_eq!(
        ns(&store.recent_critical(&t, "a", 10).await.expect("critical")),
        [7]
    );
    let persisted = sink.persisted.lock().expect("sink");
    assert!(persisted.iter().all(|(pt, e)| *pt == t && e.agent == "a"));
}

#[tokio::test]
async fn the_store_refuses_to_evict_an_unpersisted_critical_event() {
    let t = tenant("t");
    let store = store(&cap(2)).await;
    let mut conn = redis().await;
    for (sev, i) in [(Severity::Critical, 1), (Severity::Info, 2)] {
        assert!(matches!(
            store.push(&t, "a", ev(sev, "x", i)).await.expect("push"),
            PushOutcome::Stored(_)
        ));
    }
    let before = store.recent(&t, "a", 10, None).await.expect("recent");
    let pattern = format!("{}::ops:*", store.config().prefix);
    let dump = |conn: &mut redis::aio::MultiplexedConnection| {
        let pattern = pattern.clone();
        let mut conn = conn.clone();
        async move {
            let mut out = Vec::new();
            for key in scan(&mut conn, &pattern).await {
                let v: Vec<u8> = redis::cmd("DUMP")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("DUMP");
                out.push((key, v));
            }
            out
        }
    };
    let raw_before = dump(&mut conn).await;
    let PushOutcome::PersistFirst { event, critical } = store
        .push(&t, "a", ev(Severity::Info, "x", 3))
        .await
        .expect("push")
    else {
        panic!("evicted an unpersisted critical event");
    };
    assert_eq!(
        event,
        ev(Severity::Info, "x", 3),
        "the event is handed back"
    );
    assert_eq!(critical, before[1..]);
    assert_eq!(
        store.recent(&t, "a", 10, None).await.expect("recent"),
        before,
        "unchanged"
    );
    assert_eq!(dump(&mut conn).await, raw_before, "not one key changed");
    store
        .mark_persisted(&t, "a", &[critical[0].seq, 12345])
        .await
        .expect("mark");
    let PushOutcome::Stored(stored) = store.push(&t, "a", event).await.expect("push") else {
        panic!("a persisted critical event must be evictable");
    };
    assert!(stored.seq > before[0].seq);
    assert_eq!(
        ns(&store.recent(&t, "a", 10, None).await.expect("recent")),
        [3, 2]
    );
    assert!(store
        .recent_critical(&t, "a", 10)
        .await
        .expect("critical")
        .is_empty());
}

#[tokio::test]
async fn a_failing_sink_fails_the_push_and_leaves_the_ring_unchanged() {
    let t = tenant("t");
    let (svc, _, sink) = service(cap(2)).await;
    svc.record(&t, "a", ev(Severity::Critical, "x", 1))
        .await
        .expect("record");
    svc.record(&t, "a", ev(Severity::Info, "x", 2))
        .await
        .expect("record");
    let before = svc.recent(&t, "a", 10, None).await.expect("recent");
    sink.fail.store(true, Ordering::SeqCst);
    let err = svc
        .record(&t, "a", ev(Severity::Info, "x", 3))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CoreError::Unavailable("the working tier is down".into())
    );
    assert_eq!(svc.recent(&t, "a", 10, None).await.expect("recent"), before);
    assert!(sink.ns().is_empty());
    sink.fail.store(false, Ordering::SeqCst);
    svc.record(&t, "a", ev(Severity::Info, "x", 3))
        .await
        .expect("record");
    assert_eq!(
        ns(&svc.recent(&t, "a", 10, None).await.expect("recent")),
        [3, 2]
    );
    assert_eq!(sink.ns(), [1]);
}

#[tokio::test]
async fn the_byte_bound_evicts_as_many_events_as_needed() {
    let t = tenant("t");
    let probe = |i: i64, pad: usize, severity| OpsEvent {
        seq: 0,
        agent: "a".into(),
        category: "x".into(),
        severity,
        payload: json!({ "n": i, "pad": "x".repeat(pad) }),
        at: engram_core::time::now(),
    };
    let one = footprint(&probe(0, 990, Severity::Info));
    let config = OpsConfig {
        capacity: 100,
        max_ring_bytes: 3 * one + one / 2,
        ..OpsConfig::default()
    };
    let (svc, store, sink) = service(config.clone()).await;
    let mut conn = redis().await;
    let bytes_key = format!("{}::ops:t:agent:a:bytes", store.config().prefix);
    for i in 0..10 {
        let severity = if i == 8 {
            Severity::Critical
        } else {
            Severity::Info
        };
        let e = probe(i, 990, severity);
        let new = NewEvent {
            category: e.category,
            severity,
            payload: e.payload,
            at: None,
        };
        svc.record(&t, "a", new).await.expect("record");
    }
    let sizes = |ring: &[OpsEvent]| -> usize { ring.iter().map(footprint).sum() };
    let total = |conn: &mut redis::aio::MultiplexedConnection| {
        let (mut conn, key) = (conn.clone(), bytes_key.clone());
        async move {
            let v: usize = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .expect("GET");
            v
        }
    };
    let ring = svc.recent(&t, "a", 100, None).await.expect("recent");
    assert_eq!(ns(&ring), [9, 8, 7]);
    assert!(sizes(&ring) <= config.max_ring_bytes);
    assert_eq!(
        total(&mut conn).await,
        sizes(&ring),
        "the byte total is exact"
    );

    // One large event pushes out several small ones, the critical one through the sink.
    let big = NewEvent {
        category: "x".into(),
        severity: Severity::Info,
        payload: json!({ "n": 10, "pad": "x".repeat(2 * 1000 + 500) }),
        at: None,
    };
    svc.record(&t, "a", big).await.expect("record");
    let ring = svc.recent(&t, "a", 100, None).await.expect("recent");
    assert_eq!(ns(&ring), [10, 9]);
    assert!(sizes(&ring) <= config.max_ring_bytes);
    assert_eq!(total(&mut conn).await, sizes(&ring));
    assert_eq!(sink.ns(), [8]);

    // An event that cannot fit even alone is refused by the store, before Redis.
    let huge = NewEvent {
        payload: json!("x".repeat(config.max_ring_bytes - EVENT_OVERHEAD)),
        ..ev(Severity::Info, "x", 0)
    };
    assert!(matches!(
        store.push(&t, "a", huge).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        ns(&svc.recent(&t, "a", 100, None).await.expect("recent")),
        [10, 9]
    );
}

#[tokio::test]
async fn one_large_event_can_evict_more_events_than_one_batch() {
    let t = tenant("t");
    let tiny = footprint(&OpsEvent {
        seq: 0,
        agent: "a".into(),
        category: "x".into(),
        severity: Severity::Info,
        payload: json!({ "n": 1000 }),
        at: engram_core::time::now(),
    });
    let config = OpsConfig {
        capacity: 10_000,
        max_ring_bytes: 600 * tiny,
        ..OpsConfig::default()
    };
    let store = store(&config).await;
    for i in 1000..1600 {
        store
            .push(&t, "a", ev(Severity::Info, "x", i))
            .await
            .expect("push");
    }
    assert_eq!(
        store
            .recent(&t, "a", RECENT_MAX, None)
            .await
            .expect("all")
            .len(),
        600
    );
    let big = NewEvent {
        payload: json!({ "n": 1, "pad": "x".repeat(590 * tiny) }),
        ..ev(Severity::Info, "x", 1)
    };
    assert!(matches!(
        store.push(&t, "a", big).await.expect("push"),
        PushOutcome::Stored(_)
    ));
    let ring = store.recent(&t, "a", RECENT_MAX, None).await.expect("all");
    assert!(ring.len() < 15, "{} events left", ring.len());
    assert_eq!(n(&ring[0]), 1);
    assert!(ring.iter().map(footprint).sum::<usize>() <= config.max_ring_bytes);
}

#[tokio::test]
async fn metrics_keep_the_latest_value_within_the_key_limit() {
    let t = tenant("t");
    let (svc, store, _) = service(OpsConfig {
        max_metrics_per_agent: 2,
        ..OpsConfig::default()
    })
    .await;
    svc.set_metric(&t, "a", "cpu", json!(0.5))
        .await
        .expect("metric");
    let latest = svc
        .set_metric(&t, "a", "cpu", json!(0.75))
        .await
        .expect("metric");
    svc.set_metric(&t, "a", "status", json!("busy"))
        .await
        .expect("metric");
    let err = svc
        .set_metric(&t, "a", "third", json!(true))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("key"));
    svc.set_metric(&t, "a", "status", json!("idle"))
        .await
        .expect("metric");
    let snap = svc.snapshot(&t, "a").await.expect("snapshot");
    assert_eq!(snap.metrics.len(), 2);
    assert_eq!(snap.metrics["cpu"], latest);
    assert_eq!(snap.metrics["status"].value, json!("idle"));
    assert_eq!(store.agents(&t).await.expect("agents"), ["a"]);
}

#[tokio::test]
async fn the_snapshot_holds_metrics_and_the_newest_critical_events() {
    let t = tenant("t");
    let (svc, _, _) = service(OpsConfig {
        critical_in_snapshot: 2,
        ..OpsConfig::default()
    })
    .await;
    use Severity::{Critical, Error, Info};
    for (sev, i) in [
        (Critical, 1),
        (Info, 2),
        (Critical, 3),
        (Error, 4),
        (Critical, 5),
    ] {
        svc.record(&t, "a", ev(sev, "x", i)).await.expect("record");
    }
    svc.set_metric(&t, "a", "tokens", json!(120))
        .await
        .expect("metric");
    let snap = svc.snapshot(&t, "a").await.expect("snapshot");
    assert_eq!(snap.agent, "a");
    assert_eq!(ns(&snap.recent_critical), [5, 3]);
    assert_eq!(snap.metrics["tokens"].value, json!(120));
    let empty = svc.snapshot(&t, "nobody").await.expect("snapshot");
    assert!(empty.metrics.is_empty() && empty.recent_critical.is_empty());
}

#[tokio::test]
async fn another_tenants_agent_of_the_same_name_sees_nothing() {
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let (svc, store, _) = service(OpsConfig::default()).await;
    svc.record(&t1, "a", ev(Severity::Critical, "x", 1))
        .await
        .expect("record");
    svc.set_metric(&t1, "a", "cpu", json!(1))
        .await
        .expect("metric");
    assert!(svc
        .recent(&t2, "a", 10, None)
        .await
        .expect("recent")
        .is_empty());
    let snap = svc.snapshot(&t2, "a").await.expect("snapshot");
    assert!(snap.metrics.is_empty() && snap.recent_critical.is_empty());
    assert!(store.agents(&t2).await.expect("agents").is_empty());
    store.purge_tenant(&t2).await.expect("purge");
    store.purge_agent(&t2, "a").await.expect("purge");
    // A tenant whose name starts like t1's is another tenant.
    store.purge_tenant(&tenant("t")).await.expect("purge");
    assert_eq!(
        ns(&svc.recent(&t1, "a", 10, None).await.expect("recent")),
        [1]
    );
    assert_eq!(store.agents(&t1).await.expect("agents"), ["a"]);
}

#[tokio::test]
async fn purges_forget_events_and_metrics_and_sequence_numbers_are_not_reused() {
    let t = tenant("t");
    let (svc, store, _) = service(OpsConfig::default()).await;
    let mut conn = redis().await;
    let prefix = store.config().prefix.clone();
    let mut last = 0;
    for agent in ["b", "a", "a*"] {
        last = svc
            .record(&t, agent, ev(Severity::Critical, "x", 1))
            .await
            .expect("record")
            .seq;
        svc.set_metric(&t, agent, "cpu", json!(1))
            .await
            .expect("metric");
    }
    assert_eq!(store.agents(&t).await.expect("agents"), ["a", "a*", "b"]);
    store.purge_agent(&t, "a").await.expect("purge");
    assert_eq!(store.agents(&t).await.expect("agents"), ["a*", "b"]);
    assert!(svc
        .recent(&t, "a", 10, None)
        .await
        .expect("recent")
        .is_empty());
    assert!(store.metrics(&t, "a").await.expect("metrics").is_empty());
    assert!(scan(&mut conn, &format!("{prefix}::ops:t:agent:a:*"))
        .await
        .is_empty());
    assert_eq!(
        ns(&svc.recent(&t, "b", 10, None).await.expect("recent")),
        [1]
    );
    assert_eq!(
        ns(&svc.recent(&t, "a*", 10, None).await.expect("recent")),
        [1]
    );
    let again = svc
        .record(&t, "a", ev(Severity::Info, "x", 2))
        .await
        .expect("record");
    assert!(again.seq > last, "a sequence number is never reused");
    store.purge_tenant(&t).await.expect("purge");
    assert!(store.agents(&t).await.expect("agents").is_empty());
    assert!(svc
        .recent(&t, "b", 10, None)
        .await
        .expect("recent")
        .is_empty());
    assert_eq!(
        scan(&mut conn, &format!("{prefix}::ops:*")).await,
        [format!("{prefix}::ops::clock")],
        "nothing of the tenant is left; the clock stays"
    );
    // A new process on the same Redis (a restart) continues above every number given.
    let restarted = store_at(&prefix, &OpsConfig::default(), None).await;
    let PushOutcome::Stored(after) = restarted
        .push(&t, "a", ev(Severity::Info, "x", 3))
        .await
        .expect("push")
    else {
        panic!("an empty ring takes the event");
    };
    assert!(after.seq > again.seq);
}

#[tokio::test]
async fn the_documented_keys_are_the_ones_written() {
    let t = tenant("acme");
    let store = store(&cap(10)).await;
    let mut conn = redis().await;
    let p = store.config().prefix.clone();
    store
        .push(&t, "bot:1", ev(Severity::Critical, "x", 1))
        .await
        .expect("push");
    store
        .set_metric(
            &t,
            "bot:1",
            "cpu",
            engram_core::ops::MetricValue {
                value: json!(1),
                at: engram_core::time::now(),
            },
        )
        .await
        .expect("metric");
    let base = format!("{p}::ops:acme:agent:bot%3A1");
    let mut want: Vec<String> = [
        "bytes",
        "critical",
        "events",
        "metrics",
        "ring",
        "unpersisted",
    ]
    .iter()
    .map(|k| format!("{base}:{k}"))
    .collect();
    want.push(format!("{p}::ops:acme:agents"));
    want.insert(0, format!("{p}::ops::clock"));
    want.sort();
    assert_eq!(scan(&mut conn, &format!("{p}:*")).await, want);
}

/// Two replicas (two `RedisOps` on one Redis and prefix), each with its own service,
/// pushing to one agent at once: the ring never exceeds its capacity and every critical
/// event is either still in the ring or was persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_pushing_at_once_lose_no_critical_event_and_stay_within_capacity() {
    const REPLICAS: i64 = 2;
    const TASKS: i64 = 4;
    const PER_TASK: i64 = 100;
    const CAPACITY: usize = 16;
    let t = tenant("t");
    let prefix = unique_prefix();
    let config = cap(CAPACITY);
    let sink = Arc::new(TestSink::default());
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        let store = store_at(&prefix, &config, None).await;
        let svc = OpsService::new(store.clone(), sink.clone(), config.clone());
        replicas.push((Arc::new(svc), store));
    }
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (store, done, t) = (replicas[1].1.clone(), done.clone(), t.clone());
        tokio::spawn(async move {
            let mut largest = 0;
            while !done.load(Ordering::SeqCst) {
                let ring = store
                    .recent(&t, "a", RECENT_MAX, None)
                    .await
                    .expect("recent");
                assert!(ring.windows(2).all(|w| w[0].seq > w[1].seq));
                largest = largest.max(ring.len());
                tokio::task::yield_now().await;
            }
            largest
        })
    };
    let critical = |i: i64| i % PER_TASK % 3 == 0;
    let mut writers = Vec::new();
    for (r, (svc, _)) in replicas.iter().enumerate() {
        for k in 0..TASKS {
            let (svc, t) = (svc.clone(), t.clone());
            let first = (r as i64 * TASKS + k) * PER_TASK;
            writers.push(tokio::spawn(async move {
                let mut stored = Vec::new();
                for i in first..first + PER_TASK {
                    let sev = if critical(i) {
                        Severity::Critical
                    } else {
                        Severity::Info
                    };
                    stored.push(svc.record(&t, "a", ev(sev, "x", i)).await.expect("record"));
                }
                stored
            }));
        }
    }
    let mut all_seqs = Vec::new();
    for w in writers {
        let stored = w.await.expect("writer");
        assert!(stored.windows(2).all(|w| w[0].seq < w[1].seq));
        all_seqs.extend(stored.into_iter().map(|e| e.seq));
    }
    done.store(true, Ordering::SeqCst);
    assert!(watcher.await.expect("watcher") <= CAPACITY);

    let total = REPLICAS * TASKS * PER_TASK;
    let distinct: BTreeSet<u64> = all_seqs.iter().copied().collect();
    assert_eq!(distinct.len() as i64, total, "every event got its own seq");

    let ring = replicas[0]
        .1
        .recent(&t, "a", RECENT_MAX, None)
        .await
        .expect("recent");
    assert_eq!(ring.len(), CAPACITY);
    let newest: Vec<u64> = distinct.iter().rev().take(CAPACITY).copied().collect();
    assert_eq!(seqs(&ring), newest, "the ring holds the newest events");
    let in_ring: BTreeSet<i64> = ring
        .iter()
        .filter(|e| e.severity == Severity::Critical)
        .map(n)
        .collect();
    let persisted: BTreeSet<i64> = sink.ns().into_iter().collect();
    let all: BTreeSet<i64> = (0..total).filter(|&i| critical(i)).collect();
    assert!(
        persisted.is_disjoint(&in_ring),
        "only evicted events are persisted"
    );
    assert_eq!(
        &persisted | &in_ring,
        all,
        "every critical event is in the ring or persisted"
    );
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PTTL")
}

/// Waits until `key` is gone, up to `secs` seconds.
async fn gone(conn: &mut redis::aio::MultiplexedConnection, key: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query_async(conn)
            .await
            .expect("EXISTS");
        if exists == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} still exists after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_agents_expire_but_not_while_they_hold_an_unpersisted_critical_event() {
    const TTL: Duration = Duration::from_millis(600);
    let t = tenant("t");
    let prefix = unique_prefix();
    let store = store_at(&prefix, &cap(10), Some(TTL)).await;
    let mut conn = redis().await;
    let base = |agent: &str| format!("{prefix}::ops:t:agent:{agent}");
    let agents_key = format!("{prefix}::ops:t:agents");

    // A quiet agent with events and metrics: every key gets the TTL, then vanishes.
    let PushOutcome::Stored(first) = store
        .push(&t, "quiet", ev(Severity::Info, "x", 1))
        .await
        .expect("push")
    else {
        panic!("an empty ring takes the event");
    };
    store
        .set_metric(
            &t,
            "quiet",
            "cpu",
            engram_core::ops::MetricValue {
                value: json!(1),
                at: engram_core::time::now(),
            },
        )
        .await
        .expect("metric");
    for key in ["ring", "events", "bytes", "metrics"] {
        let ms = pttl(&mut conn, &format!("{}:{key}", base("quiet"))).await;
        assert!(ms > 0 && ms <= 600, "{key}: PTTL {ms}");
    }
    let ms = pttl(&mut conn, &agents_key).await;
    assert!(ms > 0 && ms <= 600, "agents: PTTL {ms}");

    // An agent with an unpersisted critical event: no TTL at all, on any of its keys.
    store
        .push(&t, "loud", ev(Severity::Critical, "x", 1))
        .await
        .expect("push");
    store
        .push(&t, "loud", ev(Severity::Info, "x", 2))
        .await
        .expect("push");
    for key in ["ring", "events", "critical", "unpersisted", "bytes"] {
        assert_eq!(
            pttl(&mut conn, &format!("{}:{key}", base("loud"))).await,
            -1
        );
    }
    assert_eq!(pttl(&mut conn, &agents_key).await, -1);

    gone(&mut conn, &format!("{}:ring", base("quiet")), 10).await;
    tokio::time::sleep(2 * TTL).await;
    assert!(store
        .recent(&t, "quiet", 10, None)
        .await
        .expect("recent")
        .is_empty());
    assert!(store
        .metrics(&t, "quiet")
        .await
        .expect("metrics")
        .is_empty());
    assert_eq!(store.agents(&t).await.expect("agents"), ["loud"]);
    assert_eq!(
        scan(&mut conn, &format!("{}:*", base("quiet"))).await.len(),
        0
    );
    let loud = store.recent(&t, "loud", 10, None).await.expect("recent");
    assert_eq!(ns(&loud), [2, 1], "held well past the TTL");

    // Once persisted, the agent expires like any other, and so does the index.
    store
        .mark_persisted(&t, "loud", &[loud[1].seq])
        .await
        .expect("mark");
    let ms = pttl(&mut conn, &format!("{}:ring", base("loud"))).await;
    assert!(ms > 0 && ms <= 600, "ring: PTTL {ms}");
    let ms = pttl(&mut conn, &format!("{}:critical", base("loud"))).await;
    assert!(ms > 0 && ms <= 600, "critical: PTTL {ms}");
    let ms = pttl(&mut conn, &agents_key).await;
    assert!(ms > 0 && ms <= 600, "agents: PTTL {ms}");
    gone(&mut conn, &format!("{}:ring", base("loud")), 10).await;
    gone(&mut conn, &agents_key, 10).await;
    assert!(store.agents(&t).await.expect("agents").is_empty());
    assert_eq!(
        scan(&mut conn, &format!("{prefix}::ops:*")).await,
        [format!("{prefix}::ops::clock")]
    );

    // An expired agent starts again above its old numbers.
    let PushOutcome::Stored(again) = store
        .push(&t, "quiet", ev(Severity::Info, "x", 3))
        .await
        .expect("push")
    else {
        panic!("an empty ring takes the event");
    };
    assert!(again.seq > first.seq);
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

#[tokio::test]
async fn without_redis_every_call_is_unavailable() {
    let cfg = RedisOpsConfig {
        prefix: unique_prefix(),
        op_timeout: Duration::from_millis(500),
        ..RedisOpsConfig::default()
    };
    let store = RedisOps::new(&closed_port().await, cfg, &OpsConfig::default())
        .expect("built while Redis is down");
    let t = tenant("t");
    let unavailable = |r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    };
    unavailable(
        store
            .push(&t, "a", ev(Severity::Info, "x", 1))
            .await
            .map(|_| ()),
    );
    unavailable(store.mark_persisted(&t, "a", &[1]).await);
    unavailable(store.recent(&t, "a", 10, None).await.map(|_| ()));
    unavailable(store.recent_critical(&t, "a", 10).await.map(|_| ()));
    unavailable(store.metrics(&t, "a").await.map(|_| ()));
    unavailable(store.agents(&t).await.map(|_| ()));
    unavailable(store.purge_agent(&t, "a").await);
    unavailable(store.purge_tenant(&t).await);
    let err = store.ping().await.unwrap_err();
    assert!(err.contains("503"), "{err}");

    // Through the service, the failure is the core's `Unavailable` (503).
    let svc = OpsService::new(
        Arc::new(store),
        Arc::new(TestSink::default()),
        OpsConfig::default(),
    );
    assert!(matches!(
        svc.record(&t, "a", ev(Severity::Info, "x", 1)).await,
        Err(CoreError::Unavailable(_))
    ));
}
