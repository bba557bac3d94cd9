//! The Redis handle: connection, per-operation time-outs, health, metrics, the Lua
//! scripts that make fills conditional, and the queue of invalidations that could not be
//! applied while Redis was unreachable.
//!
//! **Fills never overwrite a newer write.** Every cached entry has a *generation* key
//! (per memory, per user for lists) and all fills also check the global *epoch*. A
//! reader that misses gets the current generation and epoch in the same round trip as
//! the miss (created if absent, from Redis' clock, so a value is never reused), reads the
//! store, and fills only if neither moved (one Lua script, atomic). A writer first
//! commits to the store, then bumps the generation and deletes the entries (again one
//! script). So a reader that read the old row before the write cannot land it after the
//! invalidation: its generation is stale and the fill is dropped.
//!
//! **Outages.** Every Redis call has a short time-out. The first failure marks the
//! cache down (logged once, `engram_cache_up` = 0): from then on reads and fills skip
//! Redis and invalidations are queued in memory. A background task pings Redis; when it
//! answers, the queued invalidations are applied in order (overflow collapses the queue
//! into one flush of the whole prefix), and only then is the cache used again.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::Duration;

use engram_core::working::RecordId;
use engram_core::{MemoryId, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::keys::{valid_prefix, Keys};

/// How the cache is named and how long entries live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The first segment of every key: 1 to 64 of `[A-Za-z0-9_.-]`. Deployments that
    /// share one Redis need distinct prefixes.
    pub prefix: String,
    /// `GET /memories/{id}` entries.
    pub memory_ttl: Duration,
    /// List pages filtered by user.
    pub list_ttl: Duration,
    /// The first page, newest first, of a user's memories.
    pub recent_ttl: Duration,
    /// Vectors by (model, content hash).
    pub embedding_ttl: Duration,
    /// Conversation buffers: the first page of a session's messages.
    pub buffer_ttl: Duration,
    /// The longest a request waits for Redis before treating it as down.
    pub op_timeout: Duration,
    /// How often the background task pings Redis (and retries after an outage).
    pub health_interval: Duration,
    /// Invalidations kept while Redis is unreachable; beyond this the queue becomes one
    /// flush of the whole prefix.
    pub max_pending: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            prefix: "engram".into(),
            memory_ttl: Duration::from_secs(300),
            list_ttl: Duration::from_secs(120),
            recent_ttl: Duration::from_secs(60),
            embedding_ttl: Duration::from_secs(3600),
            buffer_ttl: Duration::from_secs(300),
            op_timeout: Duration::from_millis(100),
            health_interval: Duration::from_secs(1),
            max_pending: 10_000,
        }
    }
}

/// Why a [`RedisCache`] could not be built. Redis being unreachable is not one of them.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CacheError {
    #[error(
        "invalid Redis URL `{url}`: {reason}; expected redis://[user:password@]host[:port][/db]"
    )]
    InvalidUrl { url: String, reason: String },
    #[error("invalid cache key prefix `{0}`: use 1 to 64 letters, digits, '_', '-' or '.'")]
    InvalidPrefix(String),
    #[error("invalid cache configuration: {0}")]
    InvalidConfig(String),
    #[error("RedisCache::new must be called inside a tokio runtime")]
    NoRuntime,
}

/// What must be removed from Redis after a write to the store.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Invalidation {
    /// Memory entries, and every cached list of some users.
    Keys {
        memories: Vec<(TenantId, MemoryId)>,
        users: Vec<(TenantId, String)>,
    },
    /// Everything cached of a tenant, or of one user of it (plus the tenant's memory
    /// entries, which are not indexed by user).
    Purge {
        tenant: TenantId,
        user: Option<String>,
    },
    /// Every cached conversation buffer of some sessions.
    Sessions(Vec<(TenantId, RecordId)>),
    /// Everything under the prefix but the global keys.
    Flush,
}

/// One looked-up entry: its bytes, or the generation a fill must be made under.
pub(crate) enum Slot {
    Hit(Vec<u8>),
    Miss { gen: String },
}

/// The result of one lookup round trip.
pub(crate) struct Lookup {
    /// The epoch, present when any slot missed.
    pub epoch: Option<String>,
    pub slots: Vec<Slot>,
}

/// One conditional fill: (generation key, data key, generation seen, value).
pub(crate) type Fill = (String, String, String, Vec<u8>);

const PRELUDE: &str = r#"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function stamp(key, ttl)
  local v = redis.call('GET', key)
  if not v then
    v = string.format('%.0f', now_us())
    redis.call('SET', key, v, 'PX', ttl)
  end
  return v
end
local function bump(key, ttl)
  local old = tonumber(redis.call('GET', key) or '0') or 0
  redis.call('SET', key, string.format('%.0f', math.max(old + 1, now_us())), 'PX', ttl)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// KEYS: epoch, then (generation, data) pairs. ARGV: generation TTL, epoch TTL (ms).
/// Returns {epoch|nil, data1|nil, gen1|nil, …}: a hit has data, a miss its generation.
static READ: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local out = {false}
local miss = false
for i = 2, #KEYS, 2 do
  local v = redis.call('GET', KEYS[i + 1])
  if v then
    out[i] = v
    out[i + 1] = false
  else
    out[i] = false
    out[i + 1] = stamp(KEYS[i], ARGV[1])
    miss = true
  end
end
if miss then out[1] = stamp(KEYS[1], ARGV[2]) end
return out
"#,
    )
});

/// KEYS: epoch, then (generation, data) pairs. ARGV: epoch seen, TTL (ms), then
/// (generation seen, value) pairs. Sets each value whose generation did not move.
static FILL: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = 0
for i = 2, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('SET', KEYS[i + 1], ARGV[i + 2], 'PX', ARGV[2])
    n = n + 1
  end
end
return n
"#,
    )
});

/// KEYS: epoch, generation, data, index. ARGV: epoch seen, generation seen, value, TTL,
/// index TTL (ms). Like FILL for one list page, which also joins the user's index.
static FILL_LIST: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[4], KEYS[3])
redis.call('PEXPIRE', KEYS[4], ARGV[5])
return 1
"#,
    )
});

/// KEYS: memory (generation, data) pairs, then user (generation, index) pairs. ARGV:
/// number of memory KEYS, generation TTL (ms).
static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local m = tonumber(ARGV[1])
for i = 1, m, 2 do
  bump(KEYS[i], ARGV[2])
  redis.call('DEL', KEYS[i + 1])
end
for i = m + 1, #KEYS, 2 do
  bump(KEYS[i], ARGV[2])
  for _, k in ipairs(redis.call('SMEMBERS', KEYS[i + 1])) do
    redis.call('DEL', k)
  end
  redis.call('DEL', KEYS[i + 1])
end
return 1
"#,
    )
});

/// KEYS: the epoch. ARGV: its TTL (ms).
static BUMP: LazyLock<Script> = LazyLock::new(|| script("bump(KEYS[1], ARGV[1])\nreturn 1"));

const EPOCH_TTL: Duration = Duration::from_secs(24 * 3600);
const SCAN_COUNT: usize = 1000;

/// A cheap-to-clone handle on the Redis cache. Redis is never ground truth: every
/// failure is a cache miss, and the caller reads the store.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    cfg: CacheConfig,
    keys: Keys,
    /// The URL without its password, for messages.
    target: String,
    /// Whether reads and fills use Redis. False while Redis is unreachable and until
    /// every queued invalidation has been applied.
    up: AtomicBool,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    items: VecDeque<(u64, Invalidation)>,
    next_seq: u64,
}

impl Pending {
    fn push(&mut self, inv: Invalidation, max: usize) {
        let flush_queued = self.items.iter().any(|(_, i)| *i == Invalidation::Flush);
        if flush_queued || self.items.len() >= max {
            // A flush covers every invalidation, earlier or later (it runs after them).
            self.items.clear();
            self.items.push_back((self.next_seq, Invalidation::Flush));
        } else {
            self.items.push_back((self.next_seq, inv));
        }
        self.next_seq += 1;
        metrics::gauge!("engram_cache_pending_invalidations").set(self.items.len() as f64);
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// A connection to the Redis at `url` that connects lazily, in the background, and never
/// retries a command itself (callers bound each call by `op_timeout`), so it is made while
/// Redis is down. Fails only on a malformed URL.
pub(crate) fn connect(url: &str, op_timeout: Duration) -> Result<ConnectionManager, CacheError> {
    let bad_url = |e: redis::RedisError| CacheError::InvalidUrl {
        url: redact(url),
        reason: e.to_string(),
    };
    let client = redis::Client::open(url).map_err(bad_url)?;
    let connect_timeout = op_timeout.max(Duration::from_secs(1));
    let manager_cfg = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(connect_timeout));
    ConnectionManager::new_lazy_with_config(client, manager_cfg).map_err(bad_url)
}

pub(crate) fn count(cache: &'static str, outcome: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!("engram_cache_requests_total", "cache" => cache, "outcome" => outcome)
            .increment(n as u64);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisCache {
    /// A cache over the Redis at `url`. Connects lazily and in the background, so it
    /// succeeds while Redis is down (requests are then served by the store) and recovers
    /// by itself. Fails only on a malformed URL or configuration, or outside a tokio
    /// runtime.
    pub fn new(url: &str, cfg: CacheConfig) -> Result<RedisCache, CacheError> {
        if !valid_prefix(&cfg.prefix) {
            return Err(CacheError::InvalidPrefix(cfg.prefix.clone()));
        }
        let durations = [
            ("memory_ttl", cfg.memory_ttl),
            ("list_ttl", cfg.list_ttl),
            ("recent_ttl", cfg.recent_ttl),
            ("embedding_ttl", cfg.embedding_ttl),
            ("buffer_ttl", cfg.buffer_ttl),
            ("op_timeout", cfg.op_timeout),
            ("health_interval", cfg.health_interval),
        ];
        for (name, d) in durations {
            if d < Duration::from_millis(1) {
                return Err(CacheError::InvalidConfig(format!(
                    "{name} must be at least 1 ms"
                )));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CacheError::NoRuntime)?;
        let target = redact(url);
        let conn = connect(url, cfg.op_timeout)?;
        describe_metrics();
        metrics::gauge!("engram_cache_up").set(1.0);
        let inner = Arc::new(Inner {
            conn,
            keys: Keys::new(&cfg.prefix),
            cfg,
            target,
            up: AtomicBool::new(true),
            pending: Mutex::new(Pending::default()),
        });
        runtime.spawn(supervise(Arc::downgrade(&inner)));
        Ok(RedisCache { inner })
    }

    /// Whether the cache is in use: Redis answered the last call and no invalidation
    /// missed during an outage is still waiting.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// For readiness: `Err` says what is wrong and what to do. engram keeps serving from
    /// the store either way.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        match self.run(ping.query_async::<String>(&mut conn)).await {
            Err(e) => Err(format!(
                "Redis cache at {} is unreachable ({e}); requests are served from the store \
                 (slower) and the cache comes back by itself once Redis answers: start Redis \
                 or fix the cache URL",
                self.inner.target
            )),
            Ok(_) if !self.is_up() => Err(format!(
                "Redis cache at {} answers again; it is used once the {} invalidation(s) \
                 missed during the outage are applied",
                self.inner.target,
                self.pending_invalidations()
            )),
            Ok(_) => Ok(()),
        }
    }

    /// Invalidations waiting for Redis to come back.
    pub fn pending_invalidations(&self) -> usize {
        self.lock().items.len()
    }

    pub fn config(&self) -> &CacheConfig {
        &self.inner.cfg
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Generations live as long as the longest entry they guard.
    fn gen_ttl(&self) -> u64 {
        let c = &self.inner.cfg;
        ms(c.memory_ttl
            .max(c.list_ttl)
            .max(c.recent_ttl)
            .max(c.buffer_ttl))
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one Redis call under the per-operation time-out.
    async fn run<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
        match tokio::time::timeout(self.inner.cfg.op_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.inner.cfg.op_timeout)),
        }
    }

    /// Stops using the cache until the background task sees Redis answer again.
    fn mark_down(&self, reason: &str) {
        if self.inner.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("engram_cache_up").set(0.0);
            warn!(
                redis = %self.inner.target,
                error = %reason,
                "Redis cache unavailable: serving from the store until it answers again"
            );
        }
    }

    /// Looks up `entries` (generation key, data key) in one round trip. `None` when the
    /// cache is not in use or the call failed (counted as `bypass` or `error`).
    pub(crate) async fn lookup(
        &self,
        cache: &'static str,
        entries: &[(String, String)],
    ) -> Option<Lookup> {
        if !self.is_up() {
            count(cache, "bypass", entries.len());
            return None;
        }
        let mut inv = READ.prepare_invoke();
        inv.key(self.inner.keys.epoch());
        for (gen, data) in entries {
            inv.key(gen).key(data);
        }
        inv.arg(self.gen_ttl()).arg(ms(EPOCH_TTL));
        let mut conn = self.inner.conn.clone();
        let reply = self
            .run(inv.invoke_async::<Vec<Option<Vec<u8>>>>(&mut conn))
            .await;
        let parsed = reply.and_then(|r| parse_lookup(r, entries.len()));
        match parsed {
            Ok(l) => Some(l),
            Err(e) => {
                count(cache, "error", entries.len());
                self.mark_down(&e);
                None
            }
        }
    }

    /// Sets each value whose generation (and the epoch) did not move since the lookup.
    pub(crate) async fn fill(&self, epoch: &str, ttl: Duration, fills: Vec<Fill>) {
        if fills.is_empty() || !self.is_up() {
            return;
        }
        let mut inv = FILL.prepare_invoke();
        inv.key(self.inner.keys.epoch()).arg(epoch).arg(ms(ttl));
        for (gen_key, data_key, gen, value) in fills {
            inv.key(gen_key).key(data_key).arg(gen).arg(value);
        }
        let mut conn = self.inner.conn.clone();
        match self.run(inv.invoke_async::<i64>(&mut conn)).await {
            Ok(_) => {}
            Err(e) => self.mark_down(&e),
        }
    }

    /// Like [`fill`](Self::fill) for one list page, which also joins its index (its
    /// user's, or its session's); the index lives as long as the longest list entry.
    pub(crate) async fn fill_list(
        &self,
        epoch: &str,
        (gen_key, data_key, gen, value): Fill,
        index_key: String,
        ttl: Duration,
    ) {
        if !self.is_up() {
            return;
        }
        let cfg = &self.inner.cfg;
        let mut inv = FILL_LIST.prepare_invoke();
        inv.key(self.inner.keys.epoch())
            .key(gen_key)
            .key(data_key)
            .key(index_key)
            .arg(epoch)
            .arg(gen)
            .arg(value)
            .arg(ms(ttl))
            .arg(ms(ttl
                .max(cfg.list_ttl)
                .max(cfg.recent_ttl)
                .max(cfg.buffer_ttl)));
        let mut conn = self.inner.conn.clone();
        if let Err(e) = self.run(inv.invoke_async::<i64>(&mut conn)).await {
            self.mark_down(&e);
        }
    }

    /// One cached page (a list page, a conversation buffer) under a generation and an
    /// index: served from Redis when it is there and `valid` accepts it, otherwise
    /// `load`ed from the store and filled unless a write moved the generation meanwhile.
    pub(crate) async fn page<T, Fut>(
        &self,
        metric: &'static str,
        (gen_key, data_key, index_key): (String, String, String),
        ttl: Duration,
        valid: impl Fn(&T) -> bool,
        load: impl FnOnce() -> Fut,
    ) -> Result<T, engram_core::StoreError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        Fut: Future<Output = Result<T, engram_core::StoreError>>,
    {
        let entries = [(gen_key.clone(), data_key.clone())];
        let Some(mut lookup) = self.lookup(metric, &entries).await else {
            return load().await;
        };
        let gen = match lookup.slots.pop() {
            Some(Slot::Hit(bytes)) => {
                let cached = serde_json::from_slice::<T>(&bytes).ok().filter(&valid);
                if let Some(page) = cached {
                    count(metric, "hit", 1);
                    return Ok(page);
                }
                None
            }
            Some(Slot::Miss { gen }) => Some(gen),
            None => None,
        };
        count(metric, "miss", 1);
        let page = load().await?;
        if let (Some(epoch), Some(gen), Ok(value)) = (&lookup.epoch, gen, serde_json::to_vec(&page))
        {
            self.fill_list(epoch, (gen_key, data_key, gen, value), index_key, ttl)
                .await;
        }
        Ok(page)
    }

    /// Plain values by key (the embedding cache), or `None` if the cache is not usable.
    pub(crate) async fn mget(
        &self,
        cache: &'static str,
        keys: &[String],
    ) -> Option<Vec<Option<Vec<u8>>>> {
        if !self.is_up() {
            count(cache, "bypass", keys.len());
            return None;
        }
        let mut conn = self.inner.conn.clone();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(keys);
        match self
            .run(cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn))
            .await
        {
            Ok(v) if v.len() == keys.len() => Some(v),
            Ok(v) => {
                count(cache, "error", keys.len());
                self.mark_down(&format!("MGET of {} keys answered {}", keys.len(), v.len()));
                None
            }
            Err(e) => {
                count(cache, "error", keys.len());
                self.mark_down(&e);
                None
            }
        }
    }

    /// Sets plain values (the embedding cache), best effort.
    pub(crate) async fn set_many(&self, entries: Vec<(String, Vec<u8>)>, ttl: Duration) {
        if entries.is_empty() || !self.is_up() {
            return;
        }
        let mut pipe = redis::pipe();
        for (k, v) in entries {
            pipe.cmd("SET")
                .arg(k)
                .arg(v)
                .arg("PX")
                .arg(ms(ttl))
                .ignore();
        }
        let mut conn = self.inner.conn.clone();
        if let Err(e) = self.run(pipe.query_async::<()>(&mut conn)).await {
            self.mark_down(&e);
        }
    }

    /// Applies an invalidation now, or queues it if Redis is unreachable (it is applied
    /// before the cache is used again).
    pub(crate) async fn invalidate(&self, inv: Invalidation) {
        {
            let mut pending = self.lock();
            if !self.is_up() {
                pending.push(inv, self.inner.cfg.max_pending);
                metrics::counter!("engram_cache_invalidations_total", "outcome" => "queued")
                    .increment(1);
                return;
            }
        }
        match self.apply(&inv).await {
            Ok(()) => {
                metrics::counter!("engram_cache_invalidations_total", "outcome" => "applied")
                    .increment(1);
            }
            Err(e) => {
                // Queue and go down under one lock, so the recovery never marks the cache
                // up between the two.
                let mut pending = self.lock();
                pending.push(inv, self.inner.cfg.max_pending);
                self.mark_down(&e);
                drop(pending);
                metrics::counter!("engram_cache_invalidations_total", "outcome" => "queued")
                    .increment(1);
            }
        }
    }

    async fn apply(&self, inv: &Invalidation) -> Result<(), String> {
        let keys = &self.inner.keys;
        match inv {
            Invalidation::Keys { memories, users } => {
                if memories.is_empty() && users.is_empty() {
                    return Ok(());
                }
                let mut s = INVALIDATE.prepare_invoke();
                for (t, id) in memories {
                    s.key(keys.memory_gen(t, *id)).key(keys.memory(t, *id));
                }
                for (t, u) in users {
                    s.key(keys.user_gen(t, u)).key(keys.user_index(t, u));
                }
                s.arg(memories.len() * 2).arg(self.gen_ttl());
                let mut conn = self.inner.conn.clone();
                self.run(s.invoke_async::<i64>(&mut conn)).await.map(|_| ())
            }
            Invalidation::Sessions(sessions) => {
                if sessions.is_empty() {
                    return Ok(());
                }
                let mut s = INVALIDATE.prepare_invoke();
                for (t, id) in sessions {
                    s.key(keys.session_gen(t, *id))
                        .key(keys.session_index(t, *id));
                }
                s.arg(0).arg(self.gen_ttl());
                let mut conn = self.inner.conn.clone();
                self.run(s.invoke_async::<i64>(&mut conn)).await.map(|_| ())
            }
            Invalidation::Purge { tenant, user } => {
                self.bump_epoch().await?;
                match user {
                    None => self.scan_delete(&keys.pattern_tenant(tenant), None).await?,
                    Some(u) => {
                        self.scan_delete(&keys.pattern_tenant_memories(tenant), None)
                            .await?;
                        self.scan_delete(&keys.pattern_user(tenant, u), None)
                            .await?;
                        // Buffers are kept by session, not by user: every one of the
                        // tenant's goes (purges are rare; they refill from the store).
                        self.scan_delete(&keys.pattern_tenant_sessions(tenant), None)
                            .await?
                    }
                }
                // Cached vectors are keyed by content, not by tenant: which of them only
                // the purged memories held is the store's to know, so all of them go
                // (erasure is rare; they refill from the store on demand).
                self.scan_delete(&keys.pattern_embeddings(), None).await
            }
            Invalidation::Flush => {
                self.bump_epoch().await?;
                let keep = keys.global_prefix();
                self.scan_delete(&keys.pattern_all(), Some(keep.as_bytes()))
                    .await
            }
        }
    }

    /// Makes every fill that looked up before now fail.
    async fn bump_epoch(&self) -> Result<(), String> {
        let mut s = BUMP.prepare_invoke();
        s.key(self.inner.keys.epoch()).arg(ms(EPOCH_TTL));
        let mut conn = self.inner.conn.clone();
        self.run(s.invoke_async::<i64>(&mut conn)).await.map(|_| ())
    }

    /// Deletes every key matching `pattern`, except those starting with `keep`.
    async fn scan_delete(&self, pattern: &str, keep: Option<&[u8]>) -> Result<(), String> {
        let mut cursor: u64 = 0;
        loop {
            let mut conn = self.inner.conn.clone();
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, found): (u64, Vec<Vec<u8>>) = self.run(scan.query_async(&mut conn)).await?;
            let doomed: Vec<Vec<u8>> = found
                .into_iter()
                .filter(|k| keep.is_none_or(|p| !k.starts_with(p)))
                .collect();
            if !doomed.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(doomed);
                self.run(unlink.query_async::<i64>(&mut conn)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Asks for every cached memory and list to be dropped (after a change the cache
    /// cannot name, such as switching the active embedding model). Takes effect in the
    /// background; the cache is not used on this replica until it has.
    pub(crate) fn request_flush(&self) {
        let mut pending = self.lock();
        pending.push(Invalidation::Flush, self.inner.cfg.max_pending);
        if self.inner.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("engram_cache_up").set(0.0);
            info!("Redis cache: flushing every cached memory and list");
        }
    }

    /// One health round: ping; after an outage, apply what is queued, then resume.
    async fn tick(&self) {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        if let Err(e) = self.run(ping.query_async::<String>(&mut conn)).await {
            self.mark_down(&e);
            return;
        }
        if self.is_up() {
            return;
        }
        loop {
            let next = self.lock().items.front().cloned();
            match next {
                Some((seq, inv)) => {
                    if let Err(e) = self.apply(&inv).await {
                        debug!(error = %e, "Redis cache: replaying invalidations failed; will retry");
                        return;
                    }
                    let mut pending = self.lock();
                    pending.items.retain(|(s, _)| *s != seq);
                    metrics::gauge!("engram_cache_pending_invalidations")
                        .set(pending.items.len() as f64);
                }
                None => {
                    let pending = self.lock();
                    if pending.items.is_empty() {
                        self.inner.up.store(true, Ordering::Release);
                        metrics::gauge!("engram_cache_up").set(1.0);
                        info!(redis = %self.inner.target, "Redis cache available again");
                        return;
                    }
                }
            }
        }
    }
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("redis", &self.inner.target)
            .field("prefix", &self.inner.cfg.prefix)
            .field("up", &self.is_up())
            .finish()
    }
}

/// Splits a READ reply into the epoch and one slot per entry.
fn parse_lookup(reply: Vec<Option<Vec<u8>>>, n: usize) -> Result<Lookup, String> {
    if reply.len() != 1 + 2 * n {
        return Err(format!(
            "cache lookup of {n} keys answered {} values",
            reply.len()
        ));
    }
    let mut it = reply.into_iter();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let epoch = it.next().flatten().map(text);
    let mut slots = Vec::with_capacity(n);
    while let (Some(data), Some(gen)) = (it.next(), it.next()) {
        slots.push(match (data, gen) {
            (Some(bytes), _) => Slot::Hit(bytes),
            (None, Some(gen)) => Slot::Miss { gen: text(gen) },
            (None, None) => return Err("cache lookup returned neither data nor generation".into()),
        });
    }
    if slots.iter().any(|s| matches!(s, Slot::Miss { .. })) && epoch.is_none() {
        return Err("cache lookup returned no epoch".into());
    }
    Ok(Lookup { epoch, slots })
}

/// Pings Redis every `health_interval` while any handle lives.
async fn supervise(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let interval = strong.cfg.health_interval;
        let cache = RedisCache { inner: strong };
        cache.tick().await;
        drop(cache);
        tokio::time::sleep(interval).await;
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "engram_cache_requests_total",
        "Cache lookups by cache (memory, list, recent, embedding) and outcome (hit, miss, error, bypass: not tried because Redis is down)"
    );
    metrics::describe_gauge!(
        "engram_cache_up",
        "1 while the Redis cache is in use, 0 while requests bypass it"
    );
    metrics::describe_gauge!(
        "engram_cache_pending_invalidations",
        "Invalidations waiting for Redis to come back"
    );
    metrics::describe_counter!(
        "engram_cache_invalidations_total",
        "Cache invalidations after writes, applied at once or queued during an outage"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://u:p@ss@h"), "rediss://u:***@h");
    }

    #[test]
    fn the_queue_collapses_into_a_flush() {
        let mut p = Pending::default();
        let purge = |t: &str| Invalidation::Purge {
            tenant: TenantId::parse(t).expect("tenant"),
            user: None,
        };
        p.push(purge("a"), 2);
        p.push(purge("b"), 2);
        assert_eq!(p.items.len(), 2);
        p.push(purge("c"), 2);
        assert_eq!(p.items.len(), 1);
        p.push(purge("d"), 2);
        let only: Vec<_> = p.items.iter().map(|(_, i)| i.clone()).collect();
        assert_eq!(only, vec![Invalidation::Flush]);
    }

    #[test]
    fn lookup_replies_are_checked() {
        let ok = parse_lookup(
            vec![
                Some(b"7".to_vec()),
                Some(b"x".to_vec()),
                None,
                None,
                Some(b"9".to_vec()),
            ],
            2,
        )
        .expect("valid reply");
        assert_eq!(ok.epoch.as_deref(), Some("7"));
        assert!(matches!(ok.slots[0], Slot::Hit(_)));
        assert!(matches!(&ok.slots[1], Slot::Miss { gen } if gen == "9"));
        assert!(parse_lookup(vec![None, None, None], 1).is_err());
        assert!(parse_lookup(vec![None], 1).is_err());
    }
}
