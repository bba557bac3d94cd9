//! The operational tier ("now"): per agent, a bounded ring of recent events (category,
//! severity, payload, time), the latest value of each metric key, and — held by the
//! working tier, added to the snapshot by the caller — the agent's active tasks.
//!
//! Everything is scoped by tenant, then by agent name. The tier is memory-bound and keeps
//! the disk off the hot path: in embedded mode [`InMemoryOps`] holds it in process; server
//! mode will implement the same [`OpsStore`] port over Redis. [`OpsService`] is what every
//! transport calls.
//!
//! **Invariant: a critical event is never lost to eviction.** A full ring (by count or by
//! bytes) evicts its oldest events to make room, but a store never evicts a critical event
//! that is not marked persisted: [`OpsStore::push`] then changes nothing and answers
//! [`PushOutcome::PersistFirst`] with the critical events that would leave.
//! [`OpsService::record`] writes them to the working tier through the [`CriticalSink`],
//! tells the store with [`OpsStore::mark_persisted`], and pushes again. So an event is
//! durable before it leaves the ring; if the sink fails, the push fails with the sink's
//! error and the ring is unchanged. No lock is held across an await: the store's lock
//! covers one push, and the sink runs between pushes. Concurrent pushes to one agent race
//! freely: two of them may persist the same event, which is harmless because the sink is
//! idempotent on (tenant, agent, seq), and every retry follows another push's success, so
//! the agent's pushes as a whole always make progress.
//!
//! Not here: active tasks (working tier), wire types (`engram-api`), the Redis store.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::instrument;

use crate::error::{CoreError, StoreError};
use crate::ids::{truncate, TenantId};
use crate::time::{now, to_micros, Timestamp};
use crate::validate::name;

pub const AGENT_MAX_CHARS: usize = 128;
pub const CATEGORY_MAX_CHARS: usize = 64;
pub const METRIC_KEY_MAX_CHARS: usize = 128;
/// A string metric value is a status, not a document.
pub const METRIC_STRING_MAX_CHARS: usize = 1024;
/// The most events one `recent` call returns.
pub const RECENT_MAX: usize = 1000;

/// How serious an event is. Only `Critical` events are kept from eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Debug,
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Result<Self, CoreError> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CoreError::validation(
                    "severity",
                    format!(
                        "`{}` is not a severity; use debug, info, warning, error or critical",
                        truncate(s, 32)
                    ),
                )
            })
    }
}

/// An event as a client reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub category: String,
    pub severity: Severity,
    pub payload: Value,
    /// When it happened; the time it is recorded when absent.
    pub at: Option<Timestamp>,
}

/// An event in an agent's ring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpsEvent {
    /// Increasing within the agent and never reused for it, also after a purge or a
    /// restart: the critical sink deduplicates on (tenant, agent, seq).
    pub seq: u64,
    pub agent: String,
    pub category: String,
    pub severity: Severity,
    pub payload: Value,
    pub at: Timestamp,
}

/// The latest value of one metric key: a number, string or boolean, stamped when set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    pub value: Value,
    pub at: Timestamp,
}

/// `[ops]`: the operational tier's bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Events kept per agent; the oldest leave first (0 counts as 1).
    pub capacity: usize,
    /// Largest event payload, as compact JSON.
    pub max_payload_bytes: usize,
    /// Bytes of events kept per agent (payloads, names and a fixed per-event overhead),
    /// so memory stays bounded whatever the payloads' sizes.
    pub max_ring_bytes: usize,
    /// Distinct metric keys per agent.
    pub max_metrics_per_agent: usize,
    /// Critical events (newest first) in an agent's snapshot.
    pub critical_in_snapshot: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            capacity: 10_000,
            max_payload_bytes: 16 * 1024,
            max_ring_bytes: 32 * 1024 * 1024,
            max_metrics_per_agent: 1000,
            critical_in_snapshot: 20,
        }
    }
}

/// An agent's name: 1..=128 characters, not blank, no control characters.
pub fn validate_agent(agent: &str) -> Result<(), CoreError> {
    name(agent, "agent", AGENT_MAX_CHARS)
}

/// An event's category: 1..=64 characters, not blank, no control characters.
pub fn validate_category(category: &str) -> Result<(), CoreError> {
    name(category, "category", CATEGORY_MAX_CHARS)
}

/// A metric key: 1..=128 characters, not blank, no control characters.
pub fn validate_metric_key(key: &str) -> Result<(), CoreError> {
    name(key, "key", METRIC_KEY_MAX_CHARS)
}

/// An event payload: any JSON of at most `max_bytes` as compact JSON.
pub fn validate_payload(payload: &Value, max_bytes: usize) -> Result<(), CoreError> {
    let n = json_len(payload);
    if n > max_bytes {
        return Err(CoreError::validation(
            "payload",
            format!("is {n} bytes as JSON; the maximum is {max_bytes}"),
        ));
    }
    Ok(())
}

/// A metric value: a number, a boolean or a string of at most 1024 characters.
pub fn validate_metric_value(value: &Value) -> Result<(), CoreError> {
    match value {
        Value::Number(_) | Value::Bool(_) => Ok(()),
        Value::String(s) if s.chars().count() <= METRIC_STRING_MAX_CHARS => Ok(()),
        Value::String(_) => Err(CoreError::validation(
            "value",
            format!("a string value is at most {METRIC_STRING_MAX_CHARS} characters"),
        )),
        _ => Err(CoreError::validation(
            "value",
            "must be a number, a string or a boolean",
        )),
    }
}

/// How many recent events to return: 1..=1000.
pub fn validate_count(count: usize) -> Result<(), CoreError> {
    if (1..=RECENT_MAX).contains(&count) {
        Ok(())
    } else {
        Err(CoreError::validation(
            "count",
            format!("is {count}; ask for 1 to {RECENT_MAX} events"),
        ))
    }
}

/// The length of `v` as compact JSON, counted without allocating.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // A `Value` always serialises (its map keys are strings) and `Count` never fails.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// What [`OpsStore::push`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum PushOutcome {
    /// The event is in the ring, numbered. Older events may have left to make room; none
    /// of them was an unpersisted critical event.
    Stored(OpsEvent),
    /// Nothing changed: making room would evict these critical events (oldest first),
    /// which are not persisted yet. Persist them, [`OpsStore::mark_persisted`] them and
    /// push `event` again.
    PersistFirst {
        event: NewEvent,
        critical: Vec<OpsEvent>,
    },
}

/// What [`OpsStore::set_metric`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricOutcome {
    Stored,
    /// The key is new and the agent already has `max_metrics_per_agent` keys: not stored.
    TooManyKeys,
}

/// Where the operational tier lives: in process (embedded) or in Redis (server mode).
///
/// Every method is scoped by tenant, then agent; an agent nothing was recorded for reads
/// as empty. A store enforces `capacity`, `max_ring_bytes` and `max_metrics_per_agent` of
/// its [`OpsConfig`]; callers validate names and payloads first (the validators above).
#[async_trait]
pub trait OpsStore: Send + Sync + 'static {
    /// Appends an event to the agent's ring, numbering it (see [`OpsEvent::seq`]) and
    /// evicting the oldest events until the ring is within its count and byte bounds.
    /// Atomic: either the event is stored and those events are gone, or — when one of
    /// them is a critical event not marked persisted — nothing changes and the answer is
    /// [`PushOutcome::PersistFirst`]. An event larger than the byte bound on its own is
    /// [`StoreError::Invalid`].
    async fn push(
        &self,
        tenant: &TenantId,
        agent: &str,
        event: NewEvent,
    ) -> Result<PushOutcome, StoreError>;

    /// Records that these events of the agent are durably persisted, so they may be
    /// evicted. Sequence numbers no longer in the ring are ignored.
    async fn mark_persisted(
        &self,
        tenant: &TenantId,
        agent: &str,
        seqs: &[u64],
    ) -> Result<(), StoreError>;

    /// The newest `count` events of the agent, of `category` if given, newest first.
    async fn recent(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
        category: Option<&str>,
    ) -> Result<Vec<OpsEvent>, StoreError>;

    /// The newest `count` critical events still in the agent's ring, newest first.
    async fn recent_critical(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
    ) -> Result<Vec<OpsEvent>, StoreError>;

    /// Replaces the metric's value (last write wins).
    async fn set_metric(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: MetricValue,
    ) -> Result<MetricOutcome, StoreError>;

    /// The latest value of each of the agent's metric keys.
    async fn metrics(
        &self,
        tenant: &TenantId,
        agent: &str,
    ) -> Result<BTreeMap<String, MetricValue>, StoreError>;

    /// The tenant's agents that have events or metrics, sorted.
    async fn agents(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError>;

    /// Forgets all of the tenant's agents: events (persisted or not) and metrics.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError>;

    /// Forgets one agent's events (persisted or not) and metrics.
    async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), StoreError>;
}

/// Where a critical event goes before it leaves the ring: the working tier.
///
/// Must be idempotent on (tenant, `event.agent`, `event.seq`): concurrent pushes may
/// persist the same event twice, and a push retried after a failure persists again the
/// events it had persisted before the failure.
#[async_trait]
pub trait CriticalSink: Send + Sync + 'static {
    /// Returns once the event is durable.
    async fn persist_critical(&self, tenant: &TenantId, event: &OpsEvent) -> Result<(), CoreError>;
}

const SHARDS: usize = 16;

type Shard = HashMap<TenantId, HashMap<String, AgentState>>;

#[derive(Default)]
struct AgentState {
    /// Oldest first; sequence numbers increase from front to back.
    ring: VecDeque<Slot>,
    /// Sum of the slots' `bytes`.
    bytes: usize,
    metrics: BTreeMap<String, MetricValue>,
}

struct Slot {
    /// Shared so readers copy the payload after the lock is released.
    event: Arc<OpsEvent>,
    bytes: usize,
    persisted: bool,
}

impl Slot {
    fn blocks_eviction(&self) -> bool {
        self.event.severity == Severity::Critical && !self.persisted
    }
}

/// What one event counts against `max_ring_bytes`: its payload as JSON, its strings and a
/// fixed overhead. An estimate of the memory it holds, so the bound keeps memory
/// proportional to it, not equal.
fn footprint(agent: &str, category: &str, payload_len: usize) -> usize {
    size_of::<Slot>() + size_of::<OpsEvent>() + agent.len() + category.len() + payload_len
}

/// The in-process operational tier (embedded mode): a ring per (tenant, agent) in one of
/// 16 mutex-guarded shards, so agents rarely wait for each other.
///
/// Sequence numbers come from one clock for the whole store: `max(previous + 1, wall
/// clock in µs)`. They increase per agent, are never reused within the process (not even
/// after a purge), and a restarted process starts above the previous one's numbers unless
/// that one ran ahead of the wall clock (more than one event per µs, sustained).
pub struct InMemoryOps {
    capacity: usize,
    max_ring_bytes: usize,
    max_metrics: usize,
    clock: AtomicU64,
    hasher: RandomState,
    shards: [Mutex<Shard>; SHARDS],
}

impl InMemoryOps {
    pub fn new(config: &OpsConfig) -> Self {
        InMemoryOps {
            capacity: config.capacity.max(1),
            max_ring_bytes: config.max_ring_bytes,
            max_metrics: config.max_metrics_per_agent,
            clock: AtomicU64::new(0),
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }

    fn shard(&self, tenant: &TenantId, agent: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one((tenant, agent)) % SHARDS as u64;
        lock(&self.shards[i as usize])
    }

    /// Runs `f` on the agent's state under its shard's lock, if the agent exists.
    fn read<R>(
        &self,
        tenant: &TenantId,
        agent: &str,
        f: impl FnOnce(&AgentState) -> R,
    ) -> Option<R> {
        let shard = self.shard(tenant, agent);
        shard.get(tenant).and_then(|a| a.get(agent)).map(f)
    }

    /// The newest `count` events matching `keep`, newest first, copied outside the lock.
    fn newest(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
        keep: impl Fn(&OpsEvent) -> bool,
    ) -> Vec<OpsEvent> {
        let shared: Vec<Arc<OpsEvent>> = self
            .read(tenant, agent, |a| {
                a.ring
                    .iter()
                    .rev()
                    .filter(|s| keep(&s.event))
                    .take(count)
                    .map(|s| Arc::clone(&s.event))
                    .collect()
            })
            .unwrap_or_default();
        shared.into_iter().map(Arc::unwrap_or_clone).collect()
    }

    /// The next sequence number; called under the agent's shard lock so ring order is
    /// sequence order.
    fn next_seq(&self) -> u64 {
        let wall = u64::try_from(to_micros(now())).unwrap_or(0);
        let tick = |prev: u64| Some(prev.saturating_add(1).max(wall));
        match self
            .clock
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, tick)
        {
            Ok(prev) | Err(prev) => prev.saturating_add(1).max(wall),
        }
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|p| p.into_inner())
}

fn agent_mut<'a>(shard: &'a mut Shard, tenant: &TenantId, agent: &str) -> &'a mut AgentState {
    shard
        .entry(tenant.clone())
        .or_default()
        .entry(agent.to_owned())
        .or_default()
}

#[async_trait]
impl OpsStore for InMemoryOps {
    async fn push(
        &self,
        tenant: &TenantId,
        agent: &str,
        event: NewEvent,
    ) -> Result<PushOutcome, StoreError> {
        let bytes = footprint(agent, &event.category, json_len(&event.payload));
        if bytes > self.max_ring_bytes {
            return Err(StoreError::Invalid(format!(
                "an event of {bytes} bytes exceeds the ring's bound of {} bytes (ops.max_ring_bytes)",
                self.max_ring_bytes
            )));
        }
        let at = event.at.unwrap_or_else(now);
        let mut shard = self.shard(tenant, agent);
        let a = agent_mut(&mut shard, tenant, agent);
        // The oldest `evict` events leave, freeing `freed` bytes. Terminates within the
        // ring: an empty ring takes the event (capacity >= 1, bytes <= the bound).
        let (mut evict, mut freed) = (0, 0);
        while a.ring.len() - evict >= self.capacity || a.bytes - freed + bytes > self.max_ring_bytes
        {
            freed += a.ring[evict].bytes;
            evict += 1;
        }
        let blocking: Vec<Arc<OpsEvent>> = a
            .ring
            .iter()
            .take(evict)
            .filter(|s| s.blocks_eviction())
            .map(|s| Arc::clone(&s.event))
            .collect();
        if !blocking.is_empty() {
            drop(shard);
            let critical = blocking.into_iter().map(Arc::unwrap_or_clone).collect();
            return Ok(PushOutcome::PersistFirst { event, critical });
        }
        a.ring.drain(..evict);
        a.bytes -= freed;
        let stored = Arc::new(OpsEvent {
            seq: self.next_seq(),
            agent: agent.to_owned(),
            category: event.category,
            severity: event.severity,
            payload: event.payload,
            at,
        });
        a.ring.push_back(Slot {
            event: Arc::clone(&stored),
            bytes,
            persisted: false,
        });
        a.bytes += bytes;
        drop(shard);
        Ok(PushOutcome::Stored(Arc::unwrap_or_clone(stored)))
    }

    async fn mark_persisted(
        &self,
        tenant: &TenantId,
        agent: &str,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        let mut shard = self.shard(tenant, agent);
        if let Some(a) = shard.get_mut(tenant).and_then(|a| a.get_mut(agent)) {
            for seq in seqs {
                if let Ok(i) = a.ring.binary_search_by_key(seq, |s| s.event.seq) {
                    a.ring[i].persisted = true;
                }
            }
        }
        Ok(())
    }

    async fn recent(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
        category: Option<&str>,
    ) -> Result<Vec<OpsEvent>, StoreError> {
        Ok(self.newest(tenant, agent, count, |e| {
            category.is_none_or(|c| e.category == c)
        }))
    }

    async fn recent_critical(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
    ) -> Result<Vec<OpsEvent>, StoreError> {
        Ok(self.newest(tenant, agent, count, |e| e.severity == Severity::Critical))
    }

    async fn set_metric(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: MetricValue,
    ) -> Result<MetricOutcome, StoreError> {
        let mut shard = self.shard(tenant, agent);
        let a = agent_mut(&mut shard, tenant, agent);
        if let Some(slot) = a.metrics.get_mut(key) {
            *slot = value;
        } else if a.metrics.len() < self.max_metrics {
            a.metrics.insert(key.to_owned(), value);
        } else {
            return Ok(MetricOutcome::TooManyKeys);
        }
        Ok(MetricOutcome::Stored)
    }

    async fn metrics(
        &self,
        tenant: &TenantId,
        agent: &str,
    ) -> Result<BTreeMap<String, MetricValue>, StoreError> {
        Ok(self
            .read(tenant, agent, |a| a.metrics.clone())
            .unwrap_or_default())
    }

    async fn agents(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .get(tenant)
                    .map(|a| a.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        names.sort();
        Ok(names)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        for s in &self.shards {
            lock(s).remove(tenant);
        }
        Ok(())
    }

    async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), StoreError> {
        let mut shard = self.shard(tenant, agent);
        if let Some(agents) = shard.get_mut(tenant) {
            agents.remove(agent);
            if agents.is_empty() {
                shard.remove(tenant);
            }
        }
        Ok(())
    }
}

/// An agent's operational state at a glance. The caller adds the agent's active tasks
/// from the working tier (they are not held here).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpsSnapshot {
    pub agent: String,
    pub metrics: BTreeMap<String, MetricValue>,
    /// Up to `critical_in_snapshot` critical events still in the ring, newest first
    /// (evicted ones are in the working tier).
    pub recent_critical: Vec<OpsEvent>,
}

/// The operational tier's use cases, the same for every transport.
#[derive(Clone)]
pub struct OpsService {
    store: Arc<dyn OpsStore>,
    sink: Arc<dyn CriticalSink>,
    config: OpsConfig,
}

impl OpsService {
    /// `config` should be the one `store` was built with.
    pub fn new(store: Arc<dyn OpsStore>, sink: Arc<dyn CriticalSink>, config: OpsConfig) -> Self {
        OpsService {
            store,
            sink,
            config,
        }
    }

    /// Validates and appends an event to the agent's ring. Critical events the ring must
    /// evict for it are persisted through the sink first; if that fails, this fails with
    /// the sink's error and the ring is unchanged (retrying is safe).
    #[instrument(skip_all, fields(tenant = %tenant, agent = %agent))]
    pub async fn record(
        &self,
        tenant: &TenantId,
        agent: &str,
        event: NewEvent,
    ) -> Result<OpsEvent, CoreError> {
        validate_agent(agent)?;
        validate_category(&event.category)?;
        validate_payload(&event.payload, self.config.max_payload_bytes)?;
        // Stamped once, so a retried push keeps the time of the first attempt.
        let mut event = NewEvent {
            at: Some(event.at.unwrap_or_else(now)),
            ..event
        };
        loop {
            match self.store.push(tenant, agent, event).await? {
                PushOutcome::Stored(stored) => {
                    metrics::counter!("engram_ops_events_total", "severity" => stored.severity.as_str())
                        .increment(1);
                    return Ok(stored);
                }
                PushOutcome::PersistFirst {
                    event: back,
                    critical,
                } => {
                    for e in &critical {
                        self.sink.persist_critical(tenant, e).await?;
                        metrics::counter!("engram_ops_critical_persisted_total").increment(1);
                    }
                    let seqs: Vec<u64> = critical.iter().map(|e| e.seq).collect();
                    self.store.mark_persisted(tenant, agent, &seqs).await?;
                    event = back;
                }
            }
        }
    }

    /// The agent's newest `count` (1..=1000) events, of `category` if given, newest first.
    #[instrument(skip_all, fields(tenant = %tenant, agent = %agent))]
    pub async fn recent(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
        category: Option<&str>,
    ) -> Result<Vec<OpsEvent>, CoreError> {
        validate_agent(agent)?;
        validate_count(count)?;
        if let Some(c) = category {
            validate_category(c)?;
        }
        Ok(self.store.recent(tenant, agent, count, category).await?)
    }

    /// Sets the metric's latest value, stamped now. A new key beyond
    /// `max_metrics_per_agent` is a validation error on `key`.
    #[instrument(skip_all, fields(tenant = %tenant, agent = %agent, key = %key))]
    pub async fn set_metric(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: Value,
    ) -> Result<MetricValue, CoreError> {
        validate_agent(agent)?;
        validate_metric_key(key)?;
        validate_metric_value(&value)?;
        let metric = MetricValue { value, at: now() };
        match self.store.set_metric(tenant, agent, key, metric.clone()).await? {
            MetricOutcome::Stored => Ok(metric),
            MetricOutcome::TooManyKeys => Err(CoreError::validation(
                "key",
                format!(
                    "the agent already has {} metric keys, the maximum; reuse a key or purge the agent",
                    self.config.max_metrics_per_agent
                ),
            )),
        }
    }

    /// The agent's metrics and most recent critical events (active tasks: see
    /// [`OpsSnapshot`]).
    #[instrument(skip_all, fields(tenant = %tenant, agent = %agent))]
    pub async fn snapshot(&self, tenant: &TenantId, agent: &str) -> Result<OpsSnapshot, CoreError> {
        validate_agent(agent)?;
        let metrics = self.store.metrics(tenant, agent).await?;
        let recent_critical = self
            .store
            .recent_critical(tenant, agent, self.config.critical_in_snapshot)
            .await?;
        Ok(OpsSnapshot {
            agent: agent.to_owned(),
            metrics,
            recent_critical,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::AtomicBool;

    use serde_json::json;

    use super::*;

    /// Records what it persists; can be made to fail; when given the store, checks that
    /// each event is still in its ring when persisted.
    #[derive(Default)]
    struct TestSink {
        persisted: Mutex<Vec<(TenantId, OpsEvent)>>,
        fail: AtomicBool,
        check_in: Option<Arc<InMemoryOps>>,
    }

    impl TestSink {
        fn ns(&self) -> Vec<i64> {
            let persisted = self.persisted.lock().unwrap();
            persisted.iter().map(|(_, e)| n(e)).collect()
        }
    }

    #[async_trait]
    impl CriticalSink for TestSink {
        async fn persist_critical(
            &self,
            tenant: &TenantId,
            event: &OpsEvent,
        ) -> Result<(), CoreError> {
            tokio::task::yield_now().await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(CoreError::Unavailable("the working tier is down".into()));
            }
            if let Some(store) = &self.check_in {
                let ring = store
                    .recent(tenant, &event.agent, RECENT_MAX, None)
                    .await
                    .unwrap();
                assert!(
                    ring.contains(event),
                    "persisted after it left the ring: {event:?}"
                );
            }
            assert_eq!(event.severity, Severity::Critical);
            self.persisted
                .lock()
                .unwrap()
                .push((tenant.clone(), event.clone()));
            Ok(())
        }
    }

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
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
        e.payload["n"].as_i64().unwrap()
    }

    fn ns(events: &[OpsEvent]) -> Vec<i64> {
        events.iter().map(n).collect()
    }

    fn service_with(
        config: OpsConfig,
        check_in: bool,
    ) -> (OpsService, Arc<InMemoryOps>, Arc<TestSink>) {
        let store = Arc::new(InMemoryOps::new(&config));
        let sink = Arc::new(TestSink {
            check_in: check_in.then(|| Arc::clone(&store)),
            ..TestSink::default()
        });
        let svc = OpsService::new(store.clone(), sink.clone(), config);
        (svc, store, sink)
    }

    fn service(config: OpsConfig) -> (OpsService, Arc<InMemoryOps>, Arc<TestSink>) {
        service_with(config, true)
    }

    fn cap(capacity: usize) -> OpsConfig {
        OpsConfig {
            capacity,
            ..OpsConfig::default()
        }
    }

    #[tokio::test]
    async fn a_full_ring_evicts_the_oldest_and_keeps_its_capacity() {
        let t = tenant("t");
        let (svc, _, _) = service(cap(3));
        let mut seqs = Vec::new();
        for i in 1..=5 {
            seqs.push(
                svc.record(&t, "a", ev(Severity::Info, "x", i))
                    .await
                    .unwrap()
                    .seq,
            );
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let got = svc.recent(&t, "a", 10, None).await.unwrap();
        assert_eq!(ns(&got), [5, 4, 3]);
        assert_eq!(
            got.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [seqs[4], seqs[3], seqs[2]]
        );
        assert!(got.iter().all(|e| e.agent == "a" && e.category == "x"));
    }

    #[tokio::test]
    async fn recent_is_newest_first_with_and_without_a_category() {
        let t = tenant("t");
        let (svc, _, _) = service(OpsConfig::default());
        for i in 1..=6 {
            let category = if i % 2 == 0 { "tool" } else { "llm" };
            svc.record(&t, "a", ev(Severity::Info, category, i))
                .await
                .unwrap();
        }
        assert_eq!(
            ns(&svc.recent(&t, "a", 1000, None).await.unwrap()),
            [6, 5, 4, 3, 2, 1]
        );
        assert_eq!(ns(&svc.recent(&t, "a", 2, None).await.unwrap()), [6, 5]);
        assert_eq!(
            ns(&svc.recent(&t, "a", 2, Some("tool")).await.unwrap()),
            [6, 4]
        );
        assert_eq!(
            ns(&svc.recent(&t, "a", 10, Some("llm")).await.unwrap()),
            [5, 3, 1]
        );
        assert!(svc
            .recent(&t, "a", 10, Some("none"))
            .await
            .unwrap()
            .is_empty());
        assert!(svc.recent(&t, "nobody", 10, None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn exactly_the_evicted_critical_events_are_persisted_before_they_leave() {
        let t = tenant("t");
        let (svc, _, sink) = service(cap(3));
        use Severity::{Critical, Info};
        for (sev, i) in [(Critical, 1), (Info, 2), (Critical, 3), (Info, 4)] {
            svc.record(&t, "a", ev(sev, "x", i)).await.unwrap();
        }
        assert_eq!(sink.ns(), [1], "the evicted critical event, before it left");
        for (sev, i) in [(Info, 5), (Info, 6), (Critical, 7)] {
            svc.record(&t, "a", ev(sev, "x", i)).await.unwrap();
        }
        assert_eq!(sink.ns(), [1, 3]);
        assert_eq!(ns(&svc.recent(&t, "a", 10, None).await.unwrap()), [7, 6, 5]);
        let persisted = sink.persisted.lock().unwrap();
        assert!(persisted.iter().all(|(pt, e)| *pt == t && e.agent == "a"));
    }

    #[tokio::test]
    async fn the_store_refuses_to_evict_an_unpersisted_critical_event() {
        let t = tenant("t");
        let store = InMemoryOps::new(&cap(2));
        for (sev, i) in [(Severity::Critical, 1), (Severity::Info, 2)] {
            assert!(matches!(
                store.push(&t, "a", ev(sev, "x", i)).await.unwrap(),
                PushOutcome::Stored(_)
            ));
        }
        let before = store.recent(&t, "a", 10, None).await.unwrap();
        let PushOutcome::PersistFirst { event, critical } = store
            .push(&t, "a", ev(Severity::Info, "x", 3))
            .await
            .unwrap()
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
            store.recent(&t, "a", 10, None).await.unwrap(),
            before,
            "unchanged"
        );
        store
            .mark_persisted(&t, "a", &[critical[0].seq, 12345])
            .await
            .unwrap();
        let PushOutcome::Stored(stored) = store.push(&t, "a", event).await.unwrap() else {
            panic!("a persisted critical event must be evictable");
        };
        assert!(stored.seq > before[0].seq);
        assert_eq!(ns(&store.recent(&t, "a", 10, None).await.unwrap()), [3, 2]);
    }

    #[tokio::test]
    async fn a_failing_sink_fails_the_push_and_leaves_the_ring_unchanged() {
        let t = tenant("t");
        let (svc, _, sink) = service(cap(2));
        svc.record(&t, "a", ev(Severity::Critical, "x", 1))
            .await
            .unwrap();
        svc.record(&t, "a", ev(Severity::Info, "x", 2))
            .await
            .unwrap();
        let before = svc.recent(&t, "a", 10, None).await.unwrap();
        sink.fail.store(true, Ordering::SeqCst);
        let err = svc
            .record(&t, "a", ev(Severity::Info, "x", 3))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CoreError::Unavailable("the working tier is down".into())
        );
        assert_eq!(svc.recent(&t, "a", 10, None).await.unwrap(), before);
        assert!(sink.ns().is_empty());
        sink.fail.store(false, Ordering::SeqCst);
        svc.record(&t, "a", ev(Severity::Info, "x", 3))
            .await
            .unwrap();
        assert_eq!(ns(&svc.recent(&t, "a", 10, None).await.unwrap()), [3, 2]);
        assert_eq!(sink.ns(), [1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_pushes_lose_no_critical_event_and_stay_within_capacity() {
        const TASKS: i64 = 8;
        const PER_TASK: i64 = 200;
        const CAPACITY: usize = 16;
        let t = tenant("t");
        let (svc, store, sink) = service_with(cap(CAPACITY), false);
        let svc = Arc::new(svc);
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (store, done, t) = (store.clone(), done.clone(), t.clone());
            tokio::spawn(async move {
                let mut largest = 0;
                while !done.load(Ordering::SeqCst) {
                    let ring = store.recent(&t, "a", RECENT_MAX, None).await.unwrap();
                    assert!(ring.windows(2).all(|w| w[0].seq > w[1].seq));
                    largest = largest.max(ring.len());
                    tokio::task::yield_now().await;
                }
                largest
            })
        };
        let critical = |i: i64| i % PER_TASK % 3 == 0;
        let writers: Vec<_> = (0..TASKS)
            .map(|k| {
                let (svc, t) = (svc.clone(), t.clone());
                tokio::spawn(async move {
                    for i in k * PER_TASK..(k + 1) * PER_TASK {
                        let sev = if critical(i) {
                            Severity::Critical
                        } else {
                            Severity::Info
                        };
                        svc.record(&t, "a", ev(sev, "x", i)).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        assert!(watcher.await.unwrap() <= CAPACITY);

        let ring = store.recent(&t, "a", RECENT_MAX, None).await.unwrap();
        assert_eq!(ring.len(), CAPACITY);
        let in_ring: BTreeSet<i64> = ring
            .iter()
            .filter(|e| e.severity == Severity::Critical)
            .map(n)
            .collect();
        let persisted: BTreeSet<i64> = sink.ns().into_iter().collect();
        let all: BTreeSet<i64> = (0..TASKS * PER_TASK).filter(|&i| critical(i)).collect();
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

    #[tokio::test]
    async fn the_byte_bound_evicts_as_many_events_as_needed() {
        let t = tenant("t");
        let small = json!("x".repeat(1000));
        let one = footprint("a", "x", json_len(&small));
        let config = OpsConfig {
            capacity: 100,
            max_ring_bytes: 3 * one + one / 2,
            ..OpsConfig::default()
        };
        let (svc, store, sink) = service(config.clone());
        for i in 0..10 {
            let severity = if i == 8 {
                Severity::Critical
            } else {
                Severity::Info
            };
            let payload = json!({ "n": i, "pad": "x".repeat(990) });
            let e = NewEvent {
                category: "x".into(),
                severity,
                payload,
                at: None,
            };
            svc.record(&t, "a", e).await.unwrap();
        }
        let sizes = |ring: &[OpsEvent]| -> usize {
            ring.iter()
                .map(|e| footprint(&e.agent, &e.category, json_len(&e.payload)))
                .sum()
        };
        let ring = svc.recent(&t, "a", 100, None).await.unwrap();
        assert_eq!(ns(&ring), [9, 8, 7]);
        assert!(sizes(&ring) <= config.max_ring_bytes);

        // One large event pushes out several small ones, the critical one through the sink.
        let big = NewEvent {
            category: "x".into(),
            severity: Severity::Info,
            payload: json!({ "n": 10, "pad": "x".repeat(2 * 1000 + 500) }),
            at: None,
        };
        svc.record(&t, "a", big).await.unwrap();
        let ring = svc.recent(&t, "a", 100, None).await.unwrap();
        assert_eq!(ns(&ring), [10, 9]);
        assert!(sizes(&ring) <= config.max_ring_bytes);
        assert_eq!(sink.ns(), [8]);

        // An event that cannot fit even alone is refused by the store.
        let huge = ev(Severity::Info, "x", 0);
        let huge = NewEvent {
            payload: json!("x".repeat(8 * 1000)),
            ..huge
        };
        assert!(matches!(
            store.push(&t, "a", huge).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(ns(&svc.recent(&t, "a", 100, None).await.unwrap()), [10, 9]);
    }

    #[tokio::test]
    async fn metrics_keep_the_latest_value_within_the_key_limit() {
        let t = tenant("t");
        let (svc, _, _) = service(OpsConfig {
            max_metrics_per_agent: 2,
            ..OpsConfig::default()
        });
        svc.set_metric(&t, "a", "cpu", json!(0.5)).await.unwrap();
        let latest = svc.set_metric(&t, "a", "cpu", json!(0.75)).await.unwrap();
        svc.set_metric(&t, "a", "status", json!("busy"))
            .await
            .unwrap();
        let err = svc
            .set_metric(&t, "a", "third", json!(true))
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some("key"));
        svc.set_metric(&t, "a", "status", json!("idle"))
            .await
            .unwrap();
        let snap = svc.snapshot(&t, "a").await.unwrap();
        assert_eq!(snap.metrics.len(), 2);
        assert_eq!(snap.metrics["cpu"], latest);
        assert_eq!(snap.metrics["status"].value, json!("idle"));
    }

    #[tokio::test]
    async fn the_snapshot_holds_metrics_and_the_newest_critical_events() {
        let t = tenant("t");
        let (svc, _, _) = service(OpsConfig {
            critical_in_snapshot: 2,
            ..OpsConfig::default()
        });
        use Severity::{Critical, Error, Info};
        for (sev, i) in [
            (Critical, 1),
            (Info, 2),
            (Critical, 3),
            (Error, 4),
            (Critical, 5),
        ] {
            svc.record(&t, "a", ev(sev, "x", i)).await.unwrap();
        }
        svc.set_metric(&t, "a", "tokens", json!(120)).await.unwrap();
        let snap = svc.snapshot(&t, "a").await.unwrap();
        assert_eq!(snap.agent, "a");
        assert_eq!(ns(&snap.recent_critical), [5, 3]);
        assert_eq!(snap.metrics["tokens"].value, json!(120));
        let empty = svc.snapshot(&t, "nobody").await.unwrap();
        assert!(empty.metrics.is_empty() && empty.recent_critical.is_empty());
    }

    #[tokio::test]
    async fn another_tenants_agent_of_the_same_name_sees_nothing() {
        let (t1, t2) = (tenant("t1"), tenant("t2"));
        let (svc, store, _) = service(OpsConfig::default());
        svc.record(&t1, "a", ev(Severity::Critical, "x", 1))
            .await
            .unwrap();
        svc.set_metric(&t1, "a", "cpu", json!(1)).await.unwrap();
        assert!(svc.recent(&t2, "a", 10, None).await.unwrap().is_empty());
        let snap = svc.snapshot(&t2, "a").await.unwrap();
        assert!(snap.metrics.is_empty() && snap.recent_critical.is_empty());
        assert!(store.agents(&t2).await.unwrap().is_empty());
        store.purge_tenant(&t2).await.unwrap();
        store.purge_agent(&t2, "a").await.unwrap();
        assert_eq!(ns(&svc.recent(&t1, "a", 10, None).await.unwrap()), [1]);
        assert_eq!(store.agents(&t1).await.unwrap(), ["a"]);
    }

    #[tokio::test]
    async fn purges_forget_events_and_metrics_and_sequence_numbers_are_not_reused() {
        let t = tenant("t");
        let (svc, store, _) = service(OpsConfig::default());
        let mut last = 0;
        for agent in ["b", "a"] {
            last = svc
                .record(&t, agent, ev(Severity::Info, "x", 1))
                .await
                .unwrap()
                .seq;
            svc.set_metric(&t, agent, "cpu", json!(1)).await.unwrap();
        }
        assert_eq!(store.agents(&t).await.unwrap(), ["a", "b"]);
        store.purge_agent(&t, "a").await.unwrap();
        assert_eq!(store.agents(&t).await.unwrap(), ["b"]);
        assert!(svc.recent(&t, "a", 10, None).await.unwrap().is_empty());
        assert!(store.metrics(&t, "a").await.unwrap().is_empty());
        assert_eq!(ns(&svc.recent(&t, "b", 10, None).await.unwrap()), [1]);
        let again = svc
            .record(&t, "a", ev(Severity::Info, "x", 2))
            .await
            .unwrap();
        assert!(again.seq > last, "a sequence number is never reused");
        store.purge_tenant(&t).await.unwrap();
        assert!(store.agents(&t).await.unwrap().is_empty());
        assert!(svc.recent(&t, "b", 10, None).await.unwrap().is_empty());
    }

    fn field<T: std::fmt::Debug>(r: Result<T, CoreError>) -> String {
        r.unwrap_err().field().unwrap().to_owned()
    }

    #[tokio::test]
    async fn validation_errors_name_their_field() {
        let limit = OpsConfig::default().max_payload_bytes;
        let cases = [
            (field(validate_agent("")), "agent"),
            (field(validate_agent("  ")), "agent"),
            (field(validate_agent(&"a".repeat(129))), "agent"),
            (field(validate_agent("a\0b")), "agent"),
            (field(validate_agent("a\nb")), "agent"),
            (field(validate_category("")), "category"),
            (field(validate_category(&"c".repeat(65))), "category"),
            (field(validate_metric_key(&"k".repeat(129))), "key"),
            (field(validate_metric_key("k\u{7f}")), "key"),
            (
                field(validate_payload(&json!("x".repeat(limit)), limit)),
                "payload",
            ),
            (field(validate_metric_value(&json!({ "a": 1 }))), "value"),
            (field(validate_metric_value(&json!(null))), "value"),
            (field(validate_metric_value(&json!([1]))), "value"),
            (
                field(validate_metric_value(&json!("s".repeat(1025)))),
                "value",
            ),
            (field(validate_count(0)), "count"),
            (field(validate_count(1001)), "count"),
            (field(Severity::parse("fatal")), "severity"),
        ];
        for (i, (got, want)) in cases.iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
        validate_agent(&"é".repeat(128)).unwrap();
        validate_category(&"c".repeat(64)).unwrap();
        validate_payload(&json!("x".repeat(limit - 2)), limit).unwrap();
        for v in [json!(1.5), json!(-3), json!(true), json!("ok")] {
            validate_metric_value(&v).unwrap();
        }
        validate_count(1).unwrap();
        validate_count(1000).unwrap();

        let t = tenant("t");
        let (svc, _, _) = service(OpsConfig::default());
        assert_eq!(
            field(svc.record(&t, "a", ev(Severity::Info, "", 1)).await),
            "category"
        );
        assert_eq!(
            field(svc.record(&t, "", ev(Severity::Info, "x", 1)).await),
            "agent"
        );
        let big = NewEvent {
            payload: json!("x".repeat(limit)),
            ..ev(Severity::Info, "x", 1)
        };
        assert_eq!(field(svc.record(&t, "a", big).await), "payload");
        assert_eq!(field(svc.recent(&t, "a", 0, None).await), "count");
        assert_eq!(field(svc.recent(&t, "a", 5, Some("")).await), "category");
        assert_eq!(
            field(svc.set_metric(&t, "a", "k", json!([])).await),
            "value"
        );
        assert_eq!(field(svc.set_metric(&t, "a", "", json!(1)).await), "key");
        assert_eq!(field(svc.snapshot(&t, "a\tb").await), "agent");
        assert!(
            svc.recent(&t, "a", 10, None).await.unwrap().is_empty(),
            "nothing stored"
        );
    }

    #[test]
    fn severities_and_config_round_trip() {
        for s in Severity::ALL {
            assert_eq!(Severity::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        assert!(Severity::Warning < Severity::Critical);
        let config: OpsConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, OpsConfig::default());
        assert_eq!(config.capacity, 10_000);
        let config: OpsConfig = serde_json::from_str(r#"{"capacity": 5}"#).unwrap();
        assert_eq!((config.capacity, config.max_payload_bytes), (5, 16 * 1024));
        assert!(serde_json::from_str::<OpsConfig>(r#"{"capacty": 5}"#).is_err());
    }
}
