//! The Redis rate limiter against the real Redis: GCRA's answers, one budget shared by
//! every limiter on the same Redis and prefix, and failing open while Redis is away.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use engram_core::rate_limit::{Quota, RateLimiter};
use engram_redis::rate_limit::RedisRateLimiter;
use engram_redis::CacheConfig;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

fn cfg(prefix: &str) -> CacheConfig {
    CacheConfig {
        prefix: prefix.into(),
        op_timeout: Duration::from_millis(300),
        health_interval: Duration::from_millis(50),
        ..CacheConfig::default()
    }
}

/// A limiter on the local Redis under `prefix`; fails the test when Redis is absent.
async fn limiter(prefix: &str) -> RedisRateLimiter {
    redis().await;
    RedisRateLimiter::new(&redis_url(), &cfg(prefix)).expect("limiter")
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    Quota::new(per_minute, burst).expect("quota")
}

fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).expect("fits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_allowed_then_refused_with_the_exact_retry_after() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let l = limiter(&prefix).await;
    let q = quota(6, 5); // T = 10 s, τ = 50 s
    let t = q.interval_us();
    let started = Instant::now();
    for left in (0..5).rev() {
        let d = l.check("tenant-a", &q).await.expect("check");
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.remaining, left);
        assert_eq!(d.retry_after, Duration::ZERO);
    }
    let refused = l.check("tenant-a", &q).await.expect("check");
    let elapsed = us(started.elapsed());
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    // The TAT is (first request) + 5T; a refusal is told TAT + T − τ − now to wait and
    // TAT − now until the budget is full: the two differ by exactly τ − T.
    assert_eq!(
        us(refused.reset_after) - us(refused.retry_after),
        q.tolerance_us() - t
    );
    let wait = us(refused.retry_after);
    assert!(wait <= t, "retry_after {wait} µs > T");
    assert!(
        wait >= t - elapsed - 50_000,
        "retry_after {wait} µs, but only {elapsed} µs passed"
    );

    // The state is one value, the TAT, expiring when the budget is full again.
    let key = l.key("tenant-a");
    assert_eq!(key, format!("{prefix}::ratelimit:tenant-a"));
    let tat: i64 = String::from_utf8(get_raw(&mut conn, &key).await.expect("stored TAT"))
        .expect("utf-8")
        .parse()
        .expect("a number of µs");
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    let redis_now = secs * 1_000_000 + micros;
    assert!(tat > redis_now && tat - redis_now <= q.tolerance_us());
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    // Expiry is in whole milliseconds, rounded up, from the script's time: within a few
    // milliseconds of the TAT.
    let ahead_ms = (tat - redis_now) / 1000;
    assert!(
        (ahead_ms - 1000..=ahead_ms + 5).contains(&pttl),
        "PTTL {pttl} ms for a TAT {ahead_ms} ms ahead"
    );

    // A refusal stores nothing.
    l.check("tenant-a", &q).await.expect("check");
    let again: i64 = String::from_utf8(get_raw(&mut conn, &key).await.expect("stored TAT"))
        .expect("utf-8")
        .parse()
        .expect("a number");
    assert_eq!(again, tat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_limiters_share_one_budget() {
    let prefix = unique_prefix();
    let a = limiter(&prefix).await;
    let b = limiter(&prefix).await;
    let q = quota(6, 4);
    assert_eq!(a.check("acme", &q).await.expect("a").remaining, 3);
    assert_eq!(b.check("acme", &q).await.expect("b").remaining, 2);
    assert_eq!(a.check("acme", &q).await.expect("a").remaining, 1);
    assert_eq!(b.check("acme", &q).await.expect("b").remaining, 0);
    assert!(!a.check("acme", &q).await.expect("a").allowed);
    assert!(!b.check("acme", &q).await.expect("b").allowed);

    // Concurrent requests from both: exactly the burst gets through (the script is atomic).
    let a = Arc::new(a);
    let b = Arc::new(b);
    let q = quota(1, 10);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let l = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            l.check("burst", &q).await.expect("check").allowed
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.expect("task"));
    }
    assert_eq!(allowed, 10);

    // Another prefix is another budget.
    let other = limiter(&unique_prefix()).await;
    assert!(other.check("burst", &q).await.expect("check").allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_independent() {
    let mut conn = redis().await;
    let prefix = unique_prefix();
    let l = limiter(&prefix).await;
    let q = quota(1, 2);
    for key in ["tenant-a", "a:b*", "a:b"] {
        assert!(l.check(key, &q).await.expect("check").allowed, "{key}");
        let d = l.check(key, &q).await.expect("check");
        assert!(d.allowed && d.remaining == 0, "{key}: {d:?}");
        assert!(!l.check(key, &q).await.expect("check").allowed, "{key}");
    }
    let fresh = l.check("tenant-b", &q).await.expect("check");
    assert_eq!(fresh.remaining, 1);
    // Keys are escaped: `a:b*` cannot reach into another key's name or a pattern.
    let keys = scan(&mut conn, &format!("{prefix}::ratelimit:*")).await;
    assert_eq!(
        keys,
        vec![
            format!("{prefix}::ratelimit:a%3Ab"),
            format!("{prefix}::ratelimit:a%3Ab%2A"),
            format!("{prefix}::ratelimit:tenant-a"),
            format!("{prefix}::ratelimit:tenant-b"),
        ]
    );
}

/// Counters by name, for a test that installs it on its own thread.
#[derive(Clone, Default)]
struct Counters(Arc<Mutex<HashMap<String, Arc<Count>>>>);

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::SeqCst);
    }
    fn absolute(&self, v: u64) {
        self.0.fetch_max(v, Ordering::SeqCst);
    }
}

impl Counters {
    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .expect("counters")
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let slot = self
            .0
            .lock()
            .expect("counters")
            .entry(key.name().to_owned())
            .or_default()
            .clone();
        Counter::from_arc(slot)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

const UNAVAILABLE: &str = "engram_rate_limit_unavailable_total";

/// Runs `f` on a single-threaded runtime whose thread records metrics into `counters`
/// alone (so the other tests of this binary, on other threads, do not count here).
fn with_counters<F: std::future::Future<Output = ()>>(counters: &Counters, f: F) {
    metrics::with_local_recorder(counters, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    });
}

#[test]
fn an_outage_allows_requests_counts_them_and_counting_resumes() {
    let counters = Counters::default();
    with_counters(&counters, async {
        let proxy = Proxy::start().await;
        let l = RedisRateLimiter::new(&proxy.url(), &cfg(&unique_prefix())).expect("limiter");
        let q = quota(1, 2);
        assert!(l.check("acme", &q).await.expect("check").allowed);
        assert!(l.check("acme", &q).await.expect("check").allowed);
        assert!(!l.check("acme", &q).await.expect("check").allowed);
        assert_eq!(counters.get(UNAVAILABLE), 0);

        proxy.cut();
        for i in 1..=5 {
            let d = l.check("acme", &q).await.expect("fails open, never errs");
            assert_eq!(d, q.fresh(), "request {i} during the outage");
            assert_eq!(counters.get(UNAVAILABLE), i);
        }
        assert!(l.is_down());

        proxy.restore().await;
        // Within a few health intervals a request tries Redis again, which still holds
        // the exhausted budget.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = l.check("acme", &q).await.expect("check");
            if !d.allowed {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the limiter never used Redis again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!l.is_down());
    });
}

#[test]
fn redis_down_from_the_start_allows_everything() {
    let counters = Counters::default();
    with_counters(&counters, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("redis://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let l = RedisRateLimiter::new(&url, &cfg(&unique_prefix())).expect("built while down");
        let q = quota(1, 1);
        for _ in 0..10 {
            assert!(l.check("acme", &q).await.expect("check").allowed);
        }
        assert_eq!(counters.get(UNAVAILABLE), 10);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_at_most_one_time_out_per_interval() {
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
    let config = CacheConfig {
        prefix: unique_prefix(),
        op_timeout: Duration::from_millis(100),
        health_interval: Duration::from_secs(60),
        ..CacheConfig::default()
    };
    let l = RedisRateLimiter::new(&url, &config).expect("limiter");
    let q = quota(1, 1);
    let started = Instant::now();
    for _ in 0..50 {
        assert!(l.check("acme", &q).await.expect("check").allowed);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "50 checks took {:?} against a hung Redis",
        started.elapsed()
    );
    assert!(l.is_down());
    hold.abort();
}
