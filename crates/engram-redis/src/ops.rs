//! The operational tier in Redis: [`RedisOps`] implements
//! [`OpsStore`](engram_core::ops::OpsStore) so that any number of `engram serve`
//! replicas share each agent's ring of recent events and its metrics.
//!
//! Unlike the caches, this is the tier's only copy: it is not ground truth (events and
//! metrics are "now", and may be lost with Redis), except critical events, which
//! [`OpsService`](engram_core::ops::OpsService) writes to the working tier before a ring
//! may evict them. This module keeps that promise across processes and across time:
//!
//! - **Atomic pushes.** Every change to a ring is one Lua script, so Redis runs it alone:
//!   the script works out which of the oldest events must leave for the count and byte
//!   bounds and, if one of them is a critical event not yet marked persisted, returns
//!   those events and changes nothing ([`PushOutcome::PersistFirst`]); otherwise it
//!   evicts them, numbers the event and stores it. Concurrent pushes from several
//!   processes therefore never exceed the bounds and never evict an unpersisted critical
//!   event. `mark_persisted`, `set_metric` and `purge_agent` are scripts too.
//! - **Sequence numbers** come from one clock key per prefix, `max(previous + 1, Redis'
//!   clock in µs)`, set in the push script. They increase per agent (and globally), are
//!   never reused while the clock key lives, and still start above every earlier number
//!   if it is lost (Redis restarted empty), unless Redis' clock went backwards. Purges do
//!   not touch the clock.
//! - **TTLs.** Every write gives all of the agent's keys a TTL (`ttl`, default 7 days),
//!   so idle agents vanish — but not while the agent's ring holds a critical event not
//!   yet persisted: then the agent's keys have no TTL at all, and get it back from the
//!   write that empties that set (the `mark_persisted` after the sink, or a purge). An
//!   expiring ring therefore only ever drops non-critical events and persisted critical
//!   ones. The price: an agent that reported a critical event and then went quiet keeps
//!   its ring (at most `max_ring_bytes`) until it is purged or pushes again.
//! - **Failures.** Every call has a time-out (`op_timeout`); a Redis error or time-out is
//!   [`StoreError::Unavailable`] (the API answers 503). A push that timed out may still
//!   have been applied.
//!
//! Key names live under `{prefix}::ops:` (see [`RedisOps`] and `docs/redis.md`), beside
//! the cache's global keys, so the cache's flushes and tenant purges (`{prefix}:{t}:*`)
//! never reach them. Single Redis node only, like the cache (the scripts touch keys they
//! compute), with `maxmemory-policy` `noeviction` or a `volatile-*` policy (keys without
//! a TTL, such as a ring holding an unpersisted critical event, are then never evicted).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use engram_core::ops::{
    MetricOutcome, MetricValue, NewEvent, OpsConfig, OpsEvent, OpsStore, PushOutcome, Severity,
};
use engram_core::time::{from_micros, now, to_micros};
use engram_core::{StoreError, TenantId};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::{connect, redact, CacheError};
use crate::keys::{escape, valid_prefix};

/// What one event counts against `max_ring_bytes` beyond its stored JSON: an estimate of
/// Redis' per-entry overhead in the ring's sorted sets and hash (and the sequence number
/// stored beside it).
pub const EVENT_OVERHEAD: usize = 128;

/// The longest TTL accepted (Redis rejects expiry times that overflow).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SCAN_COUNT: usize = 1000;

/// `RedisOps`' own settings; the bounds come from [`OpsConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOpsConfig {
    /// The first segment of every key: 1 to 64 of `[A-Za-z0-9_.-]`. Use the cache's
    /// prefix (the namespaces do not overlap); deployments sharing a Redis need distinct
    /// prefixes.
    pub prefix: String,
    /// How long an agent's keys live after its last write, unless its ring holds a
    /// critical event not yet persisted (then they do not expire). 1 ms to 10 years.
    pub ttl: Duration,
    /// The longest a call waits for Redis before answering `Unavailable`.
    pub op_timeout: Duration,
}

impl Default for RedisOpsConfig {
    fn default() -> Self {
        RedisOpsConfig {
            prefix: "engram".into(),
            ttl: Duration::from_secs(7 * 24 * 3600),
            op_timeout: Duration::from_secs(1),
        }
    }
}

/// An event as stored in the ring's hash, under its sequence number. `category` comes
/// first, so a category filter compares a prefix of the stored text (see
/// [`category_prefix`]) without decoding the payload. The agent is in the key.
#[derive(Serialize)]
struct StoredRef<'a> {
    category: &'a str,
    severity: Severity,
    /// Microseconds since the Unix epoch.
    at: i64,
    payload: &'a Value,
}

#[derive(Deserialize)]
struct Stored {
    category: String,
    severity: Severity,
    at: i64,
    payload: Value,
}

fn stored_json(category: &str, severity: Severity, at: i64, payload: &Value) -> String {
    let stored = StoredRef {
        category,
        severity,
        at,
        payload,
    };
    // Strings, an enum, an integer and a `Value`: serialising cannot fail.
    serde_json::to_string(&stored).unwrap_or_default()
}

/// The text every stored event of `category` starts with.
fn category_prefix(category: &str) -> String {
    format!("{{\"category\":{},", Value::from(category))
}

/// What `event` counts against `max_ring_bytes` in Redis: its stored JSON (category,
/// severity, time and payload) plus [`EVENT_OVERHEAD`].
pub fn footprint(event: &OpsEvent) -> usize {
    let json = stored_json(
        &event.category,
        event.severity,
        to_micros(event.at),
        &event.payload,
    );
    json.len() + EVENT_OVERHEAD
}

/// Key names. `{p}` is the prefix, `{t}` the tenant, `{a}` the agent percent-encoded like
/// the cache's user ids (every byte outside `[A-Za-z0-9_.@+=-]` becomes `%XX`).
#[derive(Clone, Debug)]
struct OpsKeys {
    prefix: String,
}

/// One agent's keys, in the order every write script takes them (`KEYS[1..8]`).
struct AgentKeys {
    /// Sorted set: every event in the ring, member and score its sequence number.
    ring: String,
    /// Hash: sequence number → the stored event (JSON).
    events: String,
    /// Sorted set: the critical events in the ring.
    critical: String,
    /// Sorted set: the critical events in the ring not yet marked persisted.
    unpersisted: String,
    /// String: the ring's byte total.
    bytes: String,
    /// Hash: metric key → `{"value":…,"at":…}`.
    metrics: String,
    /// The tenant's agent index.
    agents: String,
    /// The global sequence clock.
    clock: String,
}

impl OpsKeys {
    fn tenant_base(&self, tenant: &TenantId) -> String {
        format!("{}::ops:{tenant}", self.prefix)
    }

    /// Sorted set: agent name → when its keys expire (ms since the epoch; `+inf` while
    /// they do not).
    fn agents(&self, tenant: &TenantId) -> String {
        format!("{}:agents", self.tenant_base(tenant))
    }

    /// Never any tenant's key: tenant names are never empty.
    fn clock(&self) -> String {
        format!("{}::ops::clock", self.prefix)
    }

    fn agent(&self, tenant: &TenantId, agent: &str) -> AgentKeys {
        let base = format!("{}:agent:{}", self.tenant_base(tenant), escape(agent));
        AgentKeys {
            ring: format!("{base}:ring"),
            events: format!("{base}:events"),
            critical: format!("{base}:critical"),
            unpersisted: format!("{base}:unpersisted"),
            bytes: format!("{base}:bytes"),
            metrics: format!("{base}:metrics"),
            agents: self.agents(tenant),
            clock: self.clock(),
        }
    }

    /// Every key of a tenant.
    fn pattern_tenant(&self, tenant: &TenantId) -> String {
        format!("{}:*", self.tenant_base(tenant))
    }
}

/// Shared by the write scripts. KEYS: ring, events, critical, unpersisted, bytes,
/// metrics (the agent's six keys), the tenant's agent index, the clock. ARGV[1] the
/// agent's name, ARGV[2] the TTL (ms).
///
/// `touch()` runs after every write: the agent's keys expire TTL ms from now, or never
/// while the agent has unpersisted critical events; the index records when (or `+inf`),
/// drops agents whose keys have expired, and lives as long as its longest-lived agent.
const PRELUDE: &str = r#"
local RING, EVENTS, CRITICAL, UNPERSISTED, BYTES, METRICS, AGENTS, CLOCK =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local AGENT, TTL = ARGV[1], ARGV[2]

local function int(n)
  return string.format('%.0f', n)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function touch()
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', AGENTS, '-inf', '(' .. int(now))
  if redis.call('EXISTS', RING, METRICS) == 0 then
    redis.call('ZREM', AGENTS, AGENT)
  elseif redis.call('EXISTS', UNPERSISTED) == 1 then
    for i = 1, 6 do redis.call('PERSIST', KEYS[i]) end
    redis.call('ZADD', AGENTS, '+inf', AGENT)
  else
    for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], TTL) end
    redis.call('ZADD', AGENTS, int(now + tonumber(TTL)), AGENT)
  end
  if redis.call('ZCOUNT', AGENTS, '+inf', '+inf') > 0 then
    redis.call('PERSIST', AGENTS)
  else
    local top = redis.call('ZRANGE', AGENTS, -1, -1, 'WITHSCORES')
    if top[2] then redis.call('PEXPIREAT', AGENTS, int(tonumber(top[2]))) end
  end
end
"#;

fn write_script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// ARGV[3] the stored event, ARGV[4] `1` if critical, ARGV[5] capacity, ARGV[6] max ring
/// bytes, ARGV[7] per-event overhead. Returns `{'stored', seq}` or, changing nothing,
/// `{'persist', seq, event, …}` with the unpersisted critical events that would leave,
/// oldest first.
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
local value, critical = ARGV[3], ARGV[4] == '1'
local cap, max_bytes, overhead = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local size = #value + overhead
local n = redis.call('ZCARD', RING)
local total = 0
if n > 0 then total = tonumber(redis.call('GET', BYTES) or '0') or 0 end

-- The oldest k events leave, freeing `freed` bytes; `last` is the newest of them.
local k, freed, last, doomed = 0, 0, nil, {}
local function over()
  return n - k >= cap or total - freed + size > max_bytes
end
while k < n and over() do
  local batch = redis.call('ZRANGE', RING, k, k + 127)
  if #batch == 0 then break end
  for _, seq in ipairs(batch) do
    if not over() then break end
    freed = freed + redis.call('HSTRLEN', EVENTS, seq) + overhead
    doomed[#doomed + 1] = seq
    last = seq
    k = k + 1
  end
end

if last then
  local held = redis.call('ZRANGEBYSCORE', UNPERSISTED, '-inf', last)
  local out = {'persist'}
  for i = 1, #held, 256 do
    local chunk = {unpack(held, i, math.min(i + 255, #held))}
    local bodies = redis.call('HMGET', EVENTS, unpack(chunk))
    for j, seq in ipairs(chunk) do
      if bodies[j] then
        out[#out + 1] = seq
        out[#out + 1] = bodies[j]
      end
    end
  end
  if #out > 1 then return out end
  redis.call('ZREMRANGEBYRANK', RING, 0, k - 1)
  redis.call('ZREMRANGEBYSCORE', CRITICAL, '-inf', last)
  -- Only entries without an event (never in a consistent ring) can be left here.
  redis.call('ZREMRANGEBYSCORE', UNPERSISTED, '-inf', last)
  for i = 1, #doomed, 256 do
    redis.call('HDEL', EVENTS, unpack(doomed, i, math.min(i + 255, #doomed)))
  end
end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seq = int(math.max((tonumber(redis.call('GET', CLOCK) or '0') or 0) + 1, now_us))
redis.call('SET', CLOCK, seq)
redis.call('ZADD', RING, seq, seq)
redis.call('HSET', EVENTS, seq, value)
if critical then
  redis.call('ZADD', CRITICAL, seq, seq)
  redis.call('ZADD', UNPERSISTED, seq, seq)
end
local kept = total - freed
if k == n then kept = 0 end
redis.call('SET', BYTES, int(kept + size))
touch()
return {'stored', seq}
"#,
    )
});

/// ARGV[3..]: sequence numbers now persisted. Returns how many were waiting.
static MARK_PERSISTED: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
local removed = 0
for i = 3, #ARGV, 256 do
  removed = removed + redis.call('ZREM', UNPERSISTED, unpack(ARGV, i, math.min(i + 255, #ARGV)))
end
if removed > 0 then touch() end
return removed
"#,
    )
});

/// ARGV[3] metric key, ARGV[4] value (JSON), ARGV[5] most keys. Returns 1 if stored, 0
/// if the key is new and the agent has the most keys already (nothing changed).
static SET_METRIC: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
if redis.call('HEXISTS', METRICS, ARGV[3]) == 0
   and redis.call('HLEN', METRICS) >= tonumber(ARGV[5]) then
  return 0
end
redis.call('HSET', METRICS, ARGV[3], ARGV[4])
touch()
return 1
"#,
    )
});

/// Deletes the agent's keys and its index entry.
static PURGE_AGENT: LazyLock<Script> = LazyLock::new(|| {
    write_script(
        r#"
redis.call('DEL', RING, EVENTS, CRITICAL, UNPERSISTED, BYTES, METRICS)
touch()
return 1
"#,
    )
});

/// KEYS: an ordered set of sequence numbers (the ring or its critical events), the
/// events hash. ARGV[1] how many, ARGV[2] the stored prefix events must start with (empty:
/// any). Returns `{seq, event, …}`, newest first.
static RECENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local want, prefix = tonumber(ARGV[1]), ARGV[2]
local batch = want
if prefix ~= '' then batch = math.max(want, 256) end
batch = math.min(batch, 1000)
local out, found, start = {}, 0, 0
while found < want do
  local seqs = redis.call('ZREVRANGE', KEYS[1], start, start + batch - 1)
  if #seqs == 0 then break end
  local bodies = redis.call('HMGET', KEYS[2], unpack(seqs))
  for i, seq in ipairs(seqs) do
    local v = bodies[i]
    if v and (prefix == '' or string.sub(v, 1, #prefix) == prefix) then
      out[#out + 1] = seq
      out[#out + 1] = v
      found = found + 1
      if found == want then break end
    end
  end
  start = start + batch
end
return out
"#,
    )
});

/// KEYS: the tenant's agent index. Returns the agents whose keys have not expired.
static AGENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('%.0f', now), '+inf')
"#,
    )
});

/// The operational tier in Redis, shared by every replica that uses the same Redis and
/// prefix. Cheap to clone.
///
/// Keys (`{p}` prefix, `{t}` tenant, `{a}` agent percent-encoded):
///
/// | key | type | holds |
/// |---|---|---|
/// | `{p}::ops:{t}:agent:{a}:ring` | sorted set | sequence numbers of the events in the ring |
/// | `{p}::ops:{t}:agent:{a}:events` | hash | sequence number → event JSON |
/// | `{p}::ops:{t}:agent:{a}:critical` | sorted set | the ring's critical events |
/// | `{p}::ops:{t}:agent:{a}:unpersisted` | sorted set | the ring's critical events not yet persisted |
/// | `{p}::ops:{t}:agent:{a}:bytes` | string | the ring's byte total ([`footprint`]) |
/// | `{p}::ops:{t}:agent:{a}:metrics` | hash | metric key → `{"value":…,"at":…}` |
/// | `{p}::ops:{t}:agents` | sorted set | agent → when its keys expire (ms; `+inf` while held) |
/// | `{p}::ops::clock` | string | the last sequence number handed out (no TTL) |
#[derive(Clone)]
pub struct RedisOps {
    conn: ConnectionManager,
    keys: OpsKeys,
    cfg: RedisOpsConfig,
    capacity: usize,
    max_ring_bytes: usize,
    max_metrics: usize,
    /// The URL without its password, for messages.
    target: String,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_seq(s: &str) -> Result<u64, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Other(format!("Redis returned `{s}` as a sequence number")))
}

impl RedisOps {
    /// The operational tier over the Redis at `url`, bounded by `ops` (capacity, bytes
    /// and metric keys per agent). Connects lazily, so it succeeds while Redis is down
    /// (calls then answer `Unavailable` until it is back). Fails only on a malformed URL
    /// or configuration, or outside a tokio runtime.
    pub fn new(url: &str, cfg: RedisOpsConfig, ops: &OpsConfig) -> Result<RedisOps, CacheError> {
        if !valid_prefix(&cfg.prefix) {
            return Err(CacheError::InvalidPrefix(cfg.prefix.clone()));
        }
        if cfg.ttl < Duration::from_millis(1) || cfg.ttl > MAX_TTL {
            return Err(CacheError::InvalidConfig(
                "the operational tier's ttl must be between 1 ms and 10 years".into(),
            ));
        }
        if cfg.op_timeout < Duration::from_millis(1) {
            return Err(CacheError::InvalidConfig(
                "the operational tier's op_timeout must be at least 1 ms".into(),
            ));
        }
        tokio::runtime::Handle::try_current().map_err(|_| CacheError::NoRuntime)?;
        let target = redact(url);
        let conn = connect(url, cfg.op_timeout)?;
        Ok(RedisOps {
            conn,
            keys: OpsKeys {
                prefix: cfg.prefix.clone(),
            },
            cfg,
            capacity: ops.capacity.max(1),
            max_ring_bytes: ops.max_ring_bytes,
            max_metrics: ops.max_metrics_per_agent,
            target,
        })
    }

    pub fn config(&self) -> &RedisOpsConfig {
        &self.cfg
    }

    /// For readiness: `Err` says what is wrong and what to do. Without Redis the
    /// operational tier answers 503.
    pub async fn ping(&self) -> Result<(), String> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        self.run(ping.query_async::<String>(&mut conn))
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "{e}; the operational tier (events, metrics) answers 503 until Redis \
                     answers: start Redis or fix the URL"
                )
            })
    }

    /// Runs one Redis call under the time-out; every failure is `Unavailable`.
    async fn run<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.cfg.op_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "the operational tier's Redis at {} failed: {e}",
                self.target
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the operational tier's Redis at {} did not answer within {:?}",
                self.target, self.cfg.op_timeout
            ))),
        }
    }

    /// Starts a write script's invocation: the agent's keys, its name and the TTL.
    fn invoke<'a>(
        &self,
        script: &'a Script,
        tenant: &TenantId,
        agent: &str,
    ) -> redis::ScriptInvocation<'a> {
        let k = self.keys.agent(tenant, agent);
        let mut inv = script.prepare_invoke();
        inv.key(k.ring)
            .key(k.events)
            .key(k.critical)
            .key(k.unpersisted)
            .key(k.bytes)
            .key(k.metrics)
            .key(k.agents)
            .key(k.clock)
            .arg(agent)
            .arg(ms(self.cfg.ttl));
        inv
    }

    /// Turns `{seq, stored event, …}` into events of `agent`.
    fn events(agent: &str, flat: &[String]) -> Result<Vec<OpsEvent>, StoreError> {
        flat.chunks_exact(2)
            .map(|pair| {
                let seq = parse_seq(&pair[0])?;
                let s: Stored = serde_json::from_str(&pair[1]).map_err(|e| {
                    StoreError::Other(format!(
                        "the stored operational event {seq} of agent `{agent}` is not valid: {e}"
                    ))
                })?;
                Ok(OpsEvent {
                    seq,
                    agent: agent.to_owned(),
                    category: s.category,
                    severity: s.severity,
                    payload: s.payload,
                    at: from_micros(s.at),
                })
            })
            .collect()
    }

    /// The newest `count` events of the ordered set `index`, starting with `prefix`.
    async fn newest(
        &self,
        agent: &str,
        index: String,
        events: String,
        count: usize,
        prefix: &str,
    ) -> Result<Vec<OpsEvent>, StoreError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut inv = RECENT.prepare_invoke();
        inv.key(index).key(events).arg(count).arg(prefix);
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        Self::events(agent, &flat)
    }
}

impl std::fmt::Debug for RedisOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOps")
            .field("redis", &self.target)
            .field("prefix", &self.cfg.prefix)
            .field("ttl", &self.cfg.ttl)
            .field("capacity", &self.capacity)
            .field("max_ring_bytes", &self.max_ring_bytes)
            .finish()
    }
}

#[async_trait]
impl OpsStore for RedisOps {
    async fn push(
        &self,
        tenant: &TenantId,
        agent: &str,
        event: NewEvent,
    ) -> Result<PushOutcome, StoreError> {
        let at = to_micros(event.at.unwrap_or_else(now));
        let value = stored_json(&event.category, event.severity, at, &event.payload);
        let bytes = value.len() + EVENT_OVERHEAD;
        if bytes > self.max_ring_bytes {
            return Err(StoreError::Invalid(format!(
                "an event of {bytes} bytes exceeds the ring's bound of {} bytes (ops.max_ring_bytes)",
                self.max_ring_bytes
            )));
        }
        let mut inv = self.invoke(&PUSH, tenant, agent);
        inv.arg(value)
            .arg(u8::from(event.severity == Severity::Critical))
            .arg(self.capacity)
            .arg(self.max_ring_bytes)
            .arg(EVENT_OVERHEAD);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        match reply.split_first() {
            Some((tag, rest)) if tag == "stored" && rest.len() == 1 => {
                Ok(PushOutcome::Stored(OpsEvent {
                    seq: parse_seq(&rest[0])?,
                    agent: agent.to_owned(),
                    category: event.category,
                    severity: event.severity,
                    payload: event.payload,
                    at: from_micros(at),
                }))
            }
            Some((tag, rest)) if tag == "persist" && !rest.is_empty() && rest.len() % 2 == 0 => {
                let critical = Self::events(agent, rest)?;
                Ok(PushOutcome::PersistFirst { event, critical })
            }
            _ => Err(StoreError::Other(format!(
                "unexpected reply from the push script: {} values",
                reply.len()
            ))),
        }
    }

    async fn mark_persisted(
        &self,
        tenant: &TenantId,
        agent: &str,
        seqs: &[u64],
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let mut inv = self.invoke(&MARK_PERSISTED, tenant, agent);
        for seq in seqs {
            inv.arg(*seq);
        }
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    async fn recent(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
        category: Option<&str>,
    ) -> Result<Vec<OpsEvent>, StoreError> {
        let k = self.keys.agent(tenant, agent);
        let prefix = category.map(category_prefix).unwrap_or_default();
        self.newest(agent, k.ring, k.events, count, &prefix).await
    }

    async fn recent_critical(
        &self,
        tenant: &TenantId,
        agent: &str,
        count: usize,
    ) -> Result<Vec<OpsEvent>, StoreError> {
        let k = self.keys.agent(tenant, agent);
        self.newest(agent, k.critical, k.events, count, "").await
    }

    async fn set_metric(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: MetricValue,
    ) -> Result<MetricOutcome, StoreError> {
        let json = serde_json::to_string(&value)
            .map_err(|e| StoreError::Invalid(format!("metric `{key}`: {e}")))?;
        let mut inv = self.invoke(&SET_METRIC, tenant, agent);
        inv.arg(key).arg(json).arg(self.max_metrics);
        let mut conn = self.conn.clone();
        match self.run(inv.invoke_async::<i64>(&mut conn)).await? {
            1 => Ok(MetricOutcome::Stored),
            _ => Ok(MetricOutcome::TooManyKeys),
        }
    }

    async fn metrics(
        &self,
        tenant: &TenantId,
        agent: &str,
    ) -> Result<BTreeMap<String, MetricValue>, StoreError> {
        let key = self.keys.agent(tenant, agent).metrics;
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key);
        let raw: BTreeMap<String, String> = self.run(cmd.query_async(&mut conn)).await?;
        raw.into_iter()
            .map(|(k, v)| {
                let value = serde_json::from_str(&v).map_err(|e| {
                    StoreError::Other(format!(
                        "the stored metric `{k}` of agent `{agent}` is not valid: {e}"
                    ))
                })?;
                Ok((k, value))
            })
            .collect()
    }

    async fn agents(&self, tenant: &TenantId) -> Result<Vec<String>, StoreError> {
        let mut inv = AGENTS.prepare_invoke();
        inv.key(self.keys.agents(tenant));
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        names.sort();
        Ok(names)
    }

    /// Deletes every key of the tenant (`SCAN` + `UNLINK`, so agents missing from the
    /// index go too). Pushes that run concurrently may leave what they write.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        let pattern = self.keys.pattern_tenant(tenant);
        let mut cursor: u64 = 0;
        loop {
            let mut conn = self.conn.clone();
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, found): (u64, Vec<Vec<u8>>) = self.run(scan.query_async(&mut conn)).await?;
            if !found.is_empty() {
                let mut unlink = redis::cmd("UNLINK");
                unlink.arg(found);
                self.run(unlink.query_async::<i64>(&mut conn)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), StoreError> {
        let inv = self.invoke(&PURGE_AGENT, tenant, agent);
        let mut conn = self.conn.clone();
        self.run(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::keys::Keys;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).expect("tenant")
    }

    /// Glob match for the `*` patterns used here (no other glob characters occur).
    fn glob(pattern: &str, key: &str) -> bool {
        match pattern.strip_suffix('*') {
            Some(p) => key.starts_with(p),
            None => pattern == key,
        }
    }

    #[test]
    fn ops_keys_are_out_of_reach_of_the_caches_flushes_and_purges() {
        let ops = OpsKeys {
            prefix: "engram".into(),
        };
        let cache = Keys::new("engram");
        let t = tenant("acme");
        let k = ops.agent(&t, "a:b*");
        assert_eq!(k.ring, "engram::ops:acme:agent:a%3Ab%2A:ring");
        assert_eq!(k.agents, "engram::ops:acme:agents");
        assert_eq!(k.clock, "engram::ops::clock");
        let all = [
            k.ring,
            k.events,
            k.critical,
            k.unpersisted,
            k.bytes,
            k.metrics,
            k.agents,
            k.clock,
        ];
        for key in &all {
            // A cache flush keeps the global keys; a cache tenant purge matches `{p}:{t}:*`.
            assert!(key.starts_with(&cache.global_prefix()), "{key}");
            assert!(!glob(&cache.pattern_tenant(&t), key), "{key}");
            assert!(!glob(&cache.pattern_embeddings(), key), "{key}");
        }
        // The tenant's purge pattern covers its keys but not the clock, nor the tenant
        // `acme.x`, nor an agent's keys colliding with the index.
        let pattern = ops.pattern_tenant(&t);
        assert!(all[..7].iter().all(|key| glob(&pattern, key)));
        assert!(!glob(&pattern, &all[7]));
        assert!(!glob(&pattern, &ops.agents(&tenant("acme.x"))));
        assert!(!glob(&pattern, &ops.agents(&tenant("acm"))));
        assert_ne!(ops.agent(&t, "agents").ring, ops.agents(&t));
    }

    #[test]
    fn a_category_filter_matches_exactly_its_stored_category() {
        for category in ["tool", "to\"ol", "é ü", "a,b", "{\"x\":1}"] {
            let stored = stored_json(category, Severity::Info, 1, &json!({ "n": 1 }));
            assert!(stored.starts_with(&category_prefix(category)), "{stored}");
            let back: Stored = serde_json::from_str(&stored).expect("stored event");
            assert_eq!(back.category, category);
        }
        let tools = stored_json("tools", Severity::Info, 1, &json!(null));
        assert!(!tools.starts_with(&category_prefix("tool")));
    }

    #[test]
    fn the_footprint_is_the_stored_json_and_the_overhead() {
        let e = OpsEvent {
            seq: 7,
            agent: "a".into(),
            category: "x".into(),
            severity: Severity::Critical,
            payload: json!({ "k": [1, 2.5, "s"] }),
            at: from_micros(1_700_000_000_000_001),
        };
        let json = r#"{"category":"x","severity":"critical","at":1700000000000001,"payload":{"k":[1,2.5,"s"]}}"#;
        assert_eq!(footprint(&e), json.len() + EVENT_OVERHEAD);
    }

    #[test]
    fn configurations_are_checked() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let ops = OpsConfig::default();
        let url = "redis://127.0.0.1:1";
        let bad = |cfg: RedisOpsConfig| RedisOps::new(url, cfg, &ops).unwrap_err();
        assert!(matches!(
            bad(RedisOpsConfig {
                prefix: "a:b".into(),
                ..RedisOpsConfig::default()
            }),
            CacheError::InvalidPrefix(_)
        ));
        assert!(matches!(
            bad(RedisOpsConfig {
                ttl: Duration::ZERO,
                ..RedisOpsConfig::default()
            }),
            CacheError::InvalidConfig(_)
        ));
        assert!(matches!(
            bad(RedisOpsConfig {
                op_timeout: Duration::ZERO,
                ..RedisOpsConfig::default()
            }),
            CacheError::InvalidConfig(_)
        ));
        assert!(matches!(
            RedisOps::new("http://x", RedisOpsConfig::default(), &ops),
            Err(CacheError::InvalidUrl { .. })
        ));
        let ok = RedisOps::new("redis://:pw@127.0.0.1:1", RedisOpsConfig::default(), &ops)
            .expect("valid");
        assert!(!format!("{ok:?}").contains("pw"));
    }
}
