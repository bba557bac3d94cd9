//! Scratchpads in Redis, so that every replica sees the same entries.
//!
//! [`RedisScratchpads`] implements [`ScratchpadStore`]. Keys (`{p}` the cache prefix,
//! `{t}` the tenant, `{a}` the agent and `{k}` the entry's key, both percent-encoded like
//! user ids, see [`crate::keys`]):
//!
//! | key | type | holds | TTL |
//! |---|---|---|---|
//! | `{p}::working:{t}:agent:{a}:scratch:{k}` | hash | `key`, `value` (JSON), `updated_at`, `expires_at` (µs) | the entry's TTL |
//! | `{p}::working:{t}:agent:{a}:scratchpad` | sorted set | `{k}` → when it expires (ms) | the longest-lived entry's |
//!
//! They live in the prefix' global namespace (`{p}::`), which the cache's flushes and
//! tenant purges (`{p}:{t}:*`) never touch. Each write is one Lua script (expired index
//! members are pruned, the per-agent bound is checked, the entry and its index member are
//! written with Redis' clock), so concurrent writers never exceed the bound. An entry
//! vanishes with its key (`PEXPIRE`), so Redis never returns an expired one; the index is
//! pruned on every access. Every call has a time-out (`op_timeout`); a Redis error or
//! time-out is [`StoreError::Unavailable`] (the API answers 503). Single Redis node only,
//! like the cache (the scripts touch keys they compute).

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use engram_core::scratchpad::{Entry, ScratchpadStore, MAX_ENTRIES_PER_AGENT};
use engram_core::time::from_micros;
use engram_core::{StoreError, TenantId};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};
use serde_json::Value;

use crate::cache::{connect, CacheConfig, CacheError};
use crate::keys::{escape, valid_prefix};

/// The longest TTL accepted (Redis rejects expiry times that overflow).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SCAN_COUNT: usize = 1000;

/// Shared by the scripts: Redis' time and pruning of the index (KEYS[2]).
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
local function int(n)
  return string.format('%.0f', n)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now_ms))
"#;

/// KEYS: the entry, the index. ARGV: the index member (escaped key), the key, the value
/// (JSON), the TTL (ms), the most entries. Returns `{0}` when the agent is full (nothing
/// changed), else `{1, updated_at µs, expires_at µs}` (all as strings).
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
local ttl = tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[2], ARGV[1])
   and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  return {'0'}
end
local exp_us = now_us + ttl * 1000
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'key', ARGV[2], 'value', ARGV[3],
  'updated_at', int(now_us), 'expires_at', int(exp_us))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], int(now_ms + ttl), ARGV[1])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] then redis.call('PEXPIREAT', KEYS[2], int(tonumber(top[2]) + 1)) end
return {'1', int(now_us), int(exp_us)}
"#
    ))
});

/// KEYS: the entry, the index. ARGV: the index member. Returns 1 if a live entry was
/// deleted.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"#
    ))
});

/// KEYS: (unused), the index. ARGV: the entry keys' common prefix, the most entries.
/// Returns `{key, value, updated_at, expires_at, …}` of the live entries.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PRELUDE}{}",
        r#"
local members = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, m in ipairs(members) do
  local f = redis.call('HMGET', ARGV[1] .. m, 'key', 'value', 'updated_at', 'expires_at')
  if f[1] and f[2] and f[3] and f[4] then
    out[#out + 1] = f[1]
    out[#out + 1] = f[2]
    out[#out + 1] = f[3]
    out[#out + 1] = f[4]
  end
end
return out
"#
    ))
});

/// Scratchpads in Redis, shared by every process using the same Redis and prefix. Cheap
/// to clone.
#[derive(Clone)]
pub struct RedisScratchpads {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    max_entries: usize,
}

fn parse_us(s: &str) -> Result<i64, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Other(format!("Redis returned `{s}` as a time")))
}

fn entry(
    key: String,
    value: &str,
    updated_at: &str,
    expires_at: &str,
) -> Result<Entry, StoreError> {
    let value: Value = serde_json::from_str(value)
        .map_err(|e| StoreError::Other(format!("a scratchpad value in Redis is not JSON: {e}")))?;
    Ok(Entry {
        key,
        value,
        updated_at: from_micros(parse_us(updated_at)?),
        expires_at: from_micros(parse_us(expires_at)?),
    })
}

impl RedisScratchpads {
    /// Scratchpads over the Redis at `url`, with the cache's `prefix` and `op_timeout`,
    /// at most [`MAX_ENTRIES_PER_AGENT`] live entries per agent. Connects lazily, so it
    /// succeeds while Redis is down (calls then answer `Unavailable`). Fails only on a
    /// malformed URL or configuration.
    pub fn new(url: &str, cfg: &CacheConfig) -> Result<RedisScratchpads, CacheError> {
        if !valid_prefix(&cfg.prefix) {
            return Err(CacheError::InvalidPrefix(cfg.prefix.clone()));
        }
        if cfg.op_timeout < Duration::from_millis(1) {
            return Err(CacheError::InvalidConfig(
                "op_timeout must be at least 1 ms".into(),
            ));
        }
        let conn = connect(url, cfg.op_timeout)?;
        Ok(RedisScratchpads {
            conn,
            prefix: cfg.prefix.clone(),
            op_timeout: cfg.op_timeout,
            max_entries: MAX_ENTRIES_PER_AGENT,
        })
    }

    /// At most `n` (1..=[`MAX_ENTRIES_PER_AGENT`]) live entries per agent.
    pub fn with_max_entries(mut self, n: usize) -> RedisScratchpads {
        self.max_entries = n.clamp(1, MAX_ENTRIES_PER_AGENT);
        self
    }

    fn agent_base(&self, tenant: &TenantId, agent: &str) -> String {
        format!("{}::working:{tenant}:agent:{}", self.prefix, escape(agent))
    }

    /// The Redis key of one entry.
    pub fn entry_key(&self, tenant: &TenantId, agent: &str, key: &str) -> String {
        format!("{}:scratch:{}", self.agent_base(tenant, agent), escape(key))
    }

    /// The Redis key of an agent's index.
    pub fn index_key(&self, tenant: &TenantId, agent: &str) -> String {
        format!("{}:scratchpad", self.agent_base(tenant, agent))
    }

    /// Runs one Redis call under the time-out; every failure is `Unavailable`.
    async fn run<T>(&self, f: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("Redis (scratchpads): {e}"))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "Redis (scratchpads) did not answer within {:?}",
                self.op_timeout
            ))),
        }
    }

    /// Deletes every key matching `pattern`.
    async fn delete_matching(&self, pattern: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = self.run(scan.query_async(&mut conn)).await?;
            if !keys.is_empty() {
                let mut del = redis::cmd("UNLINK");
                del.arg(&keys);
                self.run(del.query_async::<i64>(&mut conn)).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[async_trait]
impl ScratchpadStore for RedisScratchpads {
    async fn put(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: Value,
        ttl: Duration,
    ) -> Result<Entry, StoreError> {
        let ttl_ms = u64::try_from(ttl.min(MAX_TTL).as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let json = serde_json::to_string(&value).unwrap_or_default();
        let mut inv = PUT.prepare_invoke();
        inv.key(self.entry_key(tenant, agent, key))
            .key(self.index_key(tenant, agent))
            .arg(escape(key))
            .arg(key)
            .arg(&json)
            .arg(ttl_ms)
            .arg(self.max_entries);
        let mut conn = self.conn.clone();
        let reply: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        match reply.as_slice() {
            [ok, updated, expires] if ok == "1" => Ok(Entry {
                key: key.to_owned(),
                value,
                updated_at: from_micros(parse_us(updated)?),
                expires_at: from_micros(parse_us(expires)?),
            }),
            [full] if full == "0" => Err(StoreError::Conflict(format!(
                "the agent's scratchpad already holds {} entries, the maximum; delete one or \
                 wait for one to expire",
                self.max_entries
            ))),
            other => Err(StoreError::Other(format!(
                "the scratchpad script answered {other:?}"
            ))),
        }
    }

    async fn get(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
    ) -> Result<Option<Entry>, StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.entry_key(tenant, agent, key))
            .arg("value")
            .arg("updated_at")
            .arg("expires_at");
        let mut conn = self.conn.clone();
        let fields: Vec<Option<String>> = self.run(cmd.query_async(&mut conn)).await?;
        match fields.as_slice() {
            [Some(v), Some(u), Some(e)] => entry(key.to_owned(), v, u, e).map(Some),
            _ => Ok(None),
        }
    }

    async fn list(&self, tenant: &TenantId, agent: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = format!("{}:scratch:", self.agent_base(tenant, agent));
        let mut inv = LIST.prepare_invoke();
        inv.key(self.entry_key(tenant, agent, ""))
            .key(self.index_key(tenant, agent))
            .arg(&prefix)
            .arg(MAX_ENTRIES_PER_AGENT);
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self.run(inv.invoke_async(&mut conn)).await?;
        let mut out = flat
            .chunks_exact(4)
            .map(|c| entry(c[0].clone(), &c[1], &c[2], &c[3]))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(MAX_ENTRIES_PER_AGENT);
        Ok(out)
    }

    async fn delete(&self, tenant: &TenantId, agent: &str, key: &str) -> Result<bool, StoreError> {
        let mut inv = DELETE.prepare_invoke();
        inv.key(self.entry_key(tenant, agent, key))
            .key(self.index_key(tenant, agent))
            .arg(escape(key));
        let mut conn = self.conn.clone();
        let n: i64 = self.run(inv.invoke_async(&mut conn)).await?;
        Ok(n > 0)
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.delete_matching(&format!(
            "{}::working:{tenant}:agent:*:scratch*",
            self.prefix
        ))
        .await
    }

    async fn purge_agent(&self, tenant: &TenantId, agent: &str) -> Result<(), StoreError> {
        self.delete_matching(&format!("{}:scratch*", self.agent_base(tenant, agent)))
            .await
    }
}

impl std::fmt::Debug for RedisScratchpads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisScratchpads")
            .field("prefix", &self.prefix)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_escaped_into_the_working_namespace() {
        let cfg = CacheConfig {
            prefix: "p".into(),
            ..CacheConfig::default()
        };
        let s = RedisScratchpads::new("redis://127.0.0.1:1", &cfg).expect("store");
        let t = TenantId::parse("acme").unwrap();
        assert_eq!(
            s.entry_key(&t, "a:b", "k*1"),
            "p::working:acme:agent:a%3Ab:scratch:k%2A1"
        );
        assert_eq!(s.index_key(&t, "a"), "p::working:acme:agent:a:scratchpad");
    }
}
