//! The cache's metrics, read from a recorder installed for this test binary alone.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use engram_redis::CacheConfig;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

#[derive(Default)]
struct Value(AtomicU64);

impl CounterFn for Value {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::SeqCst);
    }
    fn absolute(&self, v: u64) {
        self.0.fetch_max(v, Ordering::SeqCst);
    }
}

impl GaugeFn for Value {
    fn increment(&self, v: f64) {
        self.set(self.get() + v);
    }
    fn decrement(&self, v: f64) {
        self.set(self.get() - v);
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::SeqCst);
    }
}

impl Value {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

/// Keeps every counter and gauge by `name{label=value,...}`.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<HashMap<String, Arc<Value>>>>);

impl Memory {
    fn slot(&self, key: &Key) -> Arc<Value> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0
            .lock()
            .expect("metrics")
            .entry(name)
            .or_default()
            .clone()
    }

    fn counter(&self, name: &str) -> u64 {
        self.0
            .lock()
            .expect("metrics")
            .get(name)
            .map_or(0, |v| v.0.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        self.0.lock().expect("metrics").get(name).map(|v| v.get())
    }
}

impl Recorder for Memory {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_misses_and_outages_are_counted() {
    let recorder = Memory::default();
    metrics::set_global_recorder(recorder.clone()).expect("the only recorder of this binary");
    let hit = "engram_cache_requests_total{cache=memory,outcome=hit}";
    let miss = "engram_cache_requests_total{cache=memory,outcome=miss}";
    let bypass = "engram_cache_requests_total{cache=memory,outcome=bypass}";
    let recent_miss = "engram_cache_requests_total{cache=recent,outcome=miss}";
    let up = "engram_cache_up{}";

    let proxy = Proxy::start().await;
    let cfg = CacheConfig {
        prefix: unique_prefix(),
        op_timeout: Duration::from_millis(300),
        health_interval: Duration::from_millis(50),
        ..CacheConfig::default()
    };
    let env = Env::with(&proxy.url(), cfg).await;
    let t = tenant("acme");
    let m = env.remember(&t, "counted", Some("alice")).await;
    env.service.get(&t, m.id).await.expect("get");
    env.service.get(&t, m.id).await.expect("get");
    env.service.list(&t, &by_user("alice")).await.expect("list");
    assert_eq!(recorder.counter(miss), 1);
    assert_eq!(recorder.counter(hit), 1);
    assert_eq!(recorder.counter(recent_miss), 1);
    assert_eq!(recorder.gauge(up), Some(1.0));

    proxy.cut();
    eventually(5, "the outage shows in engram_cache_up", || {
        recorder.gauge(up) == Some(0.0)
    })
    .await;
    env.service.get(&t, m.id).await.expect("get");
    assert!(recorder.counter(bypass) >= 1);

    proxy.restore().await;
    eventually(10, "engram_cache_up returns to 1", || {
        recorder.gauge(up) == Some(1.0)
    })
    .await;
}
