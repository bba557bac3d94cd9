//! Scratchpads: ephemeral per-agent key/value notes with a TTL. An agent keeps them while
//! it works and they vanish on their own, unlike the durable agent state of the working
//! tier. They are not ground state: a store may lose them (Redis restarted) and nothing
//! else is derived from them.
//!
//! [`ScratchpadStore`] is the port: in process ([`InMemoryScratchpads`]) or in Redis
//! (`engram-redis`'s `RedisScratchpads`, shared by replicas). [`ScratchpadService`]
//! validates the input (agent, key, value, TTL) and maps the store's answers.
//!
//! Every store holds at most a bounded number of live entries per agent
//! ([`MAX_ENTRIES_PER_AGENT`] by default) and never returns an expired entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use crate::error::{CoreError, StoreError};
use crate::ids::TenantId;
use crate::ops::validate_agent;
use crate::time::{now, Timestamp};
use crate::validate::name;

/// The longest key, in characters.
pub const KEY_MAX_CHARS: usize = 128;
/// The largest value, in bytes of compact JSON.
pub const VALUE_MAX_BYTES: usize = 64 * 1024;
/// The shortest TTL accepted over the API, in seconds.
pub const MIN_TTL_SECS: u64 = 1;
/// The longest TTL, in seconds (30 days).
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// The TTL when none is given, in seconds (1 hour).
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// The most live entries an agent may hold (and the most a list returns).
pub const MAX_ENTRIES_PER_AGENT: usize = 1000;

/// One note of an agent's scratchpad.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    /// When it vanishes.
    pub expires_at: Timestamp,
    /// When it was last written.
    pub updated_at: Timestamp,
}

/// Where scratchpads live. Every call is scoped by tenant and agent; expired entries are
/// never returned.
#[async_trait]
pub trait ScratchpadStore: Send + Sync + 'static {
    /// Writes (or replaces) the entry, which expires `ttl` from now. A new key of an agent
    /// that already holds its store's maximum of live entries is refused with
    /// [`StoreError::Conflict`] and changes nothing.
    async fn put(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: Value,
        ttl: Duration,
    ) -> Result<Entry, StoreError>;

    /// The live entry under `key`, if any.
    async fn get(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
    ) -> Result<Option<Entry>, StoreError>;

    /// The agent's live entries, sorted by key, at most [`MAX_ENTRIES_PER_AGENT`].
    async fn list(&self, tenant: &TenantId, agent: &str) -> Result<Vec<Entry>, StoreError>;

    /// Deletes the entry; whether a live one was there.
    async fn delete(&self, tenant: &TenantId, agent: &str, key: &str) -> Result<bool, StoreError>;

    /// Forgets every scratchpad of the tenant.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError>;

    /// Forgets one agent's scratchpad.
    async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), StoreError>;
}

/// A scratchpad key: 1..=128 characters, not blank, no control characters.
pub fn validate_key(key: &str) -> Result<(), CoreError> {
    name(key, "key", KEY_MAX_CHARS)
}

/// A value: any JSON but `null`, at most [`VALUE_MAX_BYTES`] as compact JSON.
pub fn validate_value(value: &Value) -> Result<(), CoreError> {
    if value.is_null() {
        return Err(CoreError::validation(
            "value",
            "is required and must not be null (to remove an entry, DELETE it)",
        ));
    }
    let n = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(0);
    if n > VALUE_MAX_BYTES {
        return Err(CoreError::validation(
            "value",
            format!("is {n} bytes as JSON; the maximum is {VALUE_MAX_BYTES}"),
        ));
    }
    Ok(())
}

/// The TTL given in seconds: [`MIN_TTL_SECS`]..=[`MAX_TTL_SECS`], [`DEFAULT_TTL_SECS`]
/// when absent.
pub fn validate_ttl_secs(ttl_secs: Option<u64>) -> Result<Duration, CoreError> {
    match ttl_secs {
        None => Ok(Duration::from_secs(DEFAULT_TTL_SECS)),
        Some(s) if (MIN_TTL_SECS..=MAX_TTL_SECS).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => Err(CoreError::validation(
            "ttl_secs",
            format!(
                "is {s}; it must be from {MIN_TTL_SECS} to {MAX_TTL_SECS} (30 days), \
                 default {DEFAULT_TTL_SECS}"
            ),
        )),
    }
}

/// The scratchpad use cases: validation in front of a [`ScratchpadStore`].
#[derive(Clone)]
pub struct ScratchpadService {
    store: Arc<dyn ScratchpadStore>,
}

impl ScratchpadService {
    pub fn new(store: Arc<dyn ScratchpadStore>) -> ScratchpadService {
        ScratchpadService { store }
    }

    /// Writes `key`'s value for `ttl` (at most [`MAX_TTL_SECS`]; shorter than a second
    /// only from code, the API takes whole seconds).
    pub async fn put(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: Value,
        ttl: Duration,
    ) -> Result<Entry, CoreError> {
        validate_agent(agent)?;
        validate_key(key)?;
        validate_value(&value)?;
        if ttl.is_zero() || ttl > Duration::from_secs(MAX_TTL_SECS) {
            return Err(CoreError::validation(
                "ttl_secs",
                format!("must be from {MIN_TTL_SECS} to {MAX_TTL_SECS} (30 days)"),
            ));
        }
        self.store
            .put(tenant, agent, key, value, ttl)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(m) => CoreError::validation("key", m),
                e => e.into(),
            })
    }

    /// The live entry, or `NotFound`.
    pub async fn get(&self, tenant: &TenantId, agent: &str, key: &str) -> Result<Entry, CoreError> {
        validate_agent(agent)?;
        validate_key(key)?;
        self.store
            .get(tenant, agent, key)
            .await?
            .ok_or(CoreError::NotFound {
                what: "scratchpad entry",
            })
    }

    /// The agent's live entries, sorted by key.
    pub async fn list(&self, tenant: &TenantId, agent: &str) -> Result<Vec<Entry>, CoreError> {
        validate_agent(agent)?;
        Ok(self.store.list(tenant, agent).await?)
    }

    /// Deletes the live entry, or `NotFound`.
    pub async fn delete(&self, tenant: &TenantId, agent: &str, key: &str) -> Result<(), CoreError> {
        validate_agent(agent)?;
        validate_key(key)?;
        if self.store.delete(tenant, agent, key).await? {
            Ok(())
        } else {
            Err(CoreError::NotFound {
                what: "scratchpad entry",
            })
        }
    }

    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), CoreError> {
        Ok(self.store.purge_tenant(tenant).await?)
    }

    pub async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), CoreError> {
        validate_agent(agent)?;
        Ok(self.store.purge_agent(tenant, agent).await?)
    }
}

struct Slot {
    entry: Entry,
    /// When it expires, on the monotonic clock (what decides expiry).
    deadline: Instant,
}

type Pads = HashMap<(TenantId, String), BTreeMap<String, Slot>>;

/// Scratchpads in this process: bounded per agent ([`InMemoryScratchpads::new`]), expired
/// entries dropped from an agent's pad whenever it is touched and from every pad at most
/// once a minute (on a write), never returned.
pub struct InMemoryScratchpads {
    pads: Mutex<Pads>,
    max_entries: usize,
    /// When every pad was last swept for expired entries.
    swept: Mutex<Instant>,
}

impl Default for InMemoryScratchpads {
    fn default() -> Self {
        InMemoryScratchpads::new(MAX_ENTRIES_PER_AGENT)
    }
}

/// How often a write sweeps every pad.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn live(pad: &mut BTreeMap<String, Slot>, at: Instant) {
    pad.retain(|_, s| s.deadline > at);
}

impl InMemoryScratchpads {
    /// At most `max_entries` (at least 1) live entries per agent.
    pub fn new(max_entries: usize) -> InMemoryScratchpads {
        InMemoryScratchpads {
            pads: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
            swept: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pads> {
        self.pads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops every expired entry and empty pad, at most once per [`SWEEP_EVERY`].
    fn maybe_sweep(&self, pads: &mut Pads, at: Instant) {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        if at.duration_since(*swept) < SWEEP_EVERY {
            return;
        }
        *swept = at;
        pads.retain(|_, pad| {
            live(pad, at);
            !pad.is_empty()
        });
    }

    /// How many pads (agents with entries, live or not yet swept) are held.
    pub fn pads(&self) -> usize {
        self.lock().len()
    }
}

fn pad_key(tenant: &TenantId, agent: &str) -> (TenantId, String) {
    (tenant.clone(), agent.to_owned())
}

#[async_trait]
impl ScratchpadStore for InMemoryScratchpads {
    async fn put(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: Value,
        ttl: Duration,
    ) -> Result<Entry, StoreError> {
        let at = Instant::now();
        let wall = now();
        let mut pads = self.lock();
        self.maybe_sweep(&mut pads, at);
        let pad = pads.entry(pad_key(tenant, agent)).or_default();
        live(pad, at);
        if !pad.contains_key(key) && pad.len() >= self.max_entries {
            return Err(StoreError::Conflict(format!(
                "the agent's scratchpad already holds {} entries, the maximum; delete one or \
                 wait for one to expire",
                self.max_entries
            )));
        }
        let ttl_chrono = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let entry = Entry {
            key: key.to_owned(),
            value,
            expires_at: wall.checked_add_signed(ttl_chrono).unwrap_or(wall),
            updated_at: wall,
        };
        let deadline = at.checked_add(ttl).unwrap_or(at);
        pad.insert(
            key.to_owned(),
            Slot {
                entry: entry.clone(),
                deadline,
            },
        );
        Ok(entry)
    }

    async fn get(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let at = Instant::now();
        let pads = self.lock();
        Ok(pads
            .get(&pad_key(tenant, agent))
            .and_then(|pad| pad.get(key))
            .filter(|s| s.deadline > at)
            .map(|s| s.entry.clone()))
    }

    async fn list(&self, tenant: &TenantId, agent: &str) -> Result<Vec<Entry>, StoreError> {
        let at = Instant::now();
        let mut pads = self.lock();
        let k = pad_key(tenant, agent);
        let Some(pad) = pads.get_mut(&k) else {
            return Ok(Vec::new());
        };
        live(pad, at);
        let out = pad
            .values()
            .take(MAX_ENTRIES_PER_AGENT)
            .map(|s| s.entry.clone())
            .collect();
        if pad.is_empty() {
            pads.remove(&k);
        }
        Ok(out)
    }

    async fn delete(&self, tenant: &TenantId, agent: &str, key: &str) -> Result<bool, StoreError> {
        let at = Instant::now();
        let mut pads = self.lock();
        let k = pad_key(tenant, agent);
        let Some(pad) = pads.get_mut(&k) else {
            return Ok(false);
        };
        let was_live = pad.remove(key).is_some_and(|s| s.deadline > at);
        live(pad, at);
        if pad.is_empty() {
            pads.remove(&k);
        }
        Ok(was_live)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.lock().retain(|(t, _), _| t != tenant);
        Ok(())
    }

    async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), StoreError> {
        self.lock().remove(&pad_key(tenant, agent));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::parse(name).unwrap()
    }

    fn svc(store: InMemoryScratchpads) -> ScratchpadService {
        ScratchpadService::new(Arc::new(store))
    }

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn round_trip_sorted_list_and_delete() {
        let s = svc(InMemoryScratchpads::default());
        let a = t("a");
        let hour = Duration::from_secs(3600);
        let e = s
            .put(&a, "coder", "plan", json!({"step": 1}), hour)
            .await
            .unwrap();
        assert_eq!(e.value, json!({"step": 1}));
        assert!(e.expires_at > e.updated_at);
        s.put(&a, "coder", "b", json!("x"), hour).await.unwrap();
        s.put(&a, "coder", "plan", json!({"step": 2}), hour)
            .await
            .unwrap();
        assert_eq!(
            s.get(&a, "coder", "plan").await.unwrap().value,
            json!({"step": 2})
        );
        let keys: Vec<_> = s
            .list(&a, "coder")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["b", "plan"]);
        s.delete(&a, "coder", "plan").await.unwrap();
        assert!(matches!(
            s.get(&a, "coder", "plan").await,
            Err(CoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.delete(&a, "coder", "plan").await,
            Err(CoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn entries_expire_and_are_never_returned() {
        let store = Arc::new(InMemoryScratchpads::default());
        let s = ScratchpadService::new(store.clone());
        let a = t("a");
        s.put(&a, "x", "short", json!(1), 40 * MS).await.unwrap();
        s.put(&a, "x", "long", json!(2), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.list(&a, "x").await.unwrap().len(), 2);
        tokio::time::sleep(60 * MS).await;
        assert!(s.get(&a, "x", "short").await.is_err());
        assert!(s.delete(&a, "x", "short").await.is_err());
        let keys: Vec<_> = s
            .list(&a, "x")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["long"]);
        // Rewriting extends the TTL.
        s.put(&a, "x", "r", json!(1), 40 * MS).await.unwrap();
        tokio::time::sleep(20 * MS).await;
        s.put(&a, "x", "r", json!(2), Duration::from_secs(60))
            .await
            .unwrap();
        tokio::time::sleep(40 * MS).await;
        assert_eq!(s.get(&a, "x", "r").await.unwrap().value, json!(2));
        // An agent whose every entry expired leaves no pad behind once listed.
        s.put(&a, "gone", "k", json!(1), 10 * MS).await.unwrap();
        tokio::time::sleep(20 * MS).await;
        assert!(s.list(&a, "gone").await.unwrap().is_empty());
        assert_eq!(store.pads(), 1);
    }

    #[tokio::test]
    async fn tenants_and_agents_are_isolated() {
        let s = svc(InMemoryScratchpads::default());
        let hour = Duration::from_secs(3600);
        s.put(&t("a"), "x", "k", json!("a/x"), hour).await.unwrap();
        s.put(&t("b"), "x", "k", json!("b/x"), hour).await.unwrap();
        s.put(&t("a"), "y", "k", json!("a/y"), hour).await.unwrap();
        assert_eq!(s.get(&t("a"), "x", "k").await.unwrap().value, json!("a/x"));
        assert_eq!(s.get(&t("b"), "x", "k").await.unwrap().value, json!("b/x"));
        assert!(s.get(&t("b"), "y", "k").await.is_err());
        s.purge_agent(&t("a"), "x").await.unwrap();
        assert!(s.get(&t("a"), "x", "k").await.is_err());
        assert!(s.get(&t("a"), "y", "k").await.is_ok());
        s.purge_tenant(&t("a")).await.unwrap();
        assert!(s.list(&t("a"), "y").await.unwrap().is_empty());
        assert_eq!(s.list(&t("b"), "x").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_agent_holds_at_most_max_entries_live() {
        let s = svc(InMemoryScratchpads::new(2));
        let a = t("a");
        let hour = Duration::from_secs(3600);
        s.put(&a, "x", "1", json!(1), hour).await.unwrap();
        s.put(&a, "x", "2", json!(2), 20 * MS).await.unwrap();
        match s.put(&a, "x", "3", json!(3), hour).await {
            Err(CoreError::Validation { field, .. }) => assert_eq!(field, "key"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Replacing an existing key is fine; another agent has its own bound.
        s.put(&a, "x", "1", json!(10), hour).await.unwrap();
        s.put(&a, "y", "3", json!(3), hour).await.unwrap();
        // Expired entries do not count.
        tokio::time::sleep(30 * MS).await;
        s.put(&a, "x", "3", json!(3), hour).await.unwrap();
        assert_eq!(s.list(&a, "x").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn invalid_input_names_the_field() {
        let s = svc(InMemoryScratchpads::default());
        let a = t("a");
        let hour = Duration::from_secs(3600);
        let field = |r: Result<Entry, CoreError>| r.unwrap_err().field().map(str::to_owned);
        let long = "k".repeat(KEY_MAX_CHARS + 1);
        assert_eq!(
            field(s.put(&a, " ", "k", json!(1), hour).await).as_deref(),
            Some("agent")
        );
        assert_eq!(
            field(s.put(&a, &"a".repeat(129), "k", json!(1), hour).await).as_deref(),
            Some("agent")
        );
        assert_eq!(
            field(s.put(&a, "x", "", json!(1), hour).await).as_deref(),
            Some("key")
        );
        assert_eq!(
            field(s.put(&a, "x", &long, json!(1), hour).await).as_deref(),
            Some("key")
        );
        assert_eq!(
            field(s.put(&a, "x", "k", Value::Null, hour).await).as_deref(),
            Some("value")
        );
        let big = json!("v".repeat(VALUE_MAX_BYTES));
        assert_eq!(
            field(s.put(&a, "x", "k", big, hour).await).as_deref(),
            Some("value")
        );
        assert_eq!(
            field(s.put(&a, "x", "k", json!(1), Duration::ZERO).await).as_deref(),
            Some("ttl_secs")
        );
        let month = Duration::from_secs(MAX_TTL_SECS + 1);
        assert_eq!(
            field(s.put(&a, "x", "k", json!(1), month).await).as_deref(),
            Some("ttl_secs")
        );
        s.put(&a, "x", &"k".repeat(KEY_MAX_CHARS), json!(1), hour)
            .await
            .unwrap();

        assert_eq!(validate_ttl_secs(None).unwrap(), Duration::from_secs(3600));
        assert_eq!(validate_ttl_secs(Some(1)).unwrap(), Duration::from_secs(1));
        assert!(validate_ttl_secs(Some(MAX_TTL_SECS)).is_ok());
        for bad in [0, MAX_TTL_SECS + 1] {
            assert_eq!(
                validate_ttl_secs(Some(bad)).unwrap_err().field(),
                Some("ttl_secs")
            );
        }
    }
}
