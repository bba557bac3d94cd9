//! Rate limits in Redis, so that every replica counts against one budget per key.
//!
//! [`RedisRateLimiter`] runs the core's GCRA step ([`engram_core::rate_limit::decide`])
//! in one Lua script: it reads the key's theoretical arrival time (TAT), takes the time
//! from Redis (`TIME`, so replicas with skewed clocks still agree), and stores the new TAT
//! only when the request is allowed, with a TTL of the time until the budget is full
//! again (past it, no state equals a full budget). The script returns Redis' time, the
//! TAT it read and its verdict; the decision is then computed by the same Rust function
//! the in-process limiter uses, so both agree to the microsecond.
//!
//! Key: `{p}::ratelimit:{k}` — `{p}` the cache prefix, `{k}` the limited key
//! percent-encoded like user ids (`docs/redis.md`). It lives in the prefix' global
//! namespace (`{p}::`), which no tenant's keys, tenant purges or cache flushes touch.
//!
//! **Redis down: fail open.** A rate limit protects capacity; it is not worth refusing
//! every request while Redis is away. A call that fails or exceeds `op_timeout` allows the
//! request as if its key had a full budget (the decision a fresh key gets) and counts it
//! in `engram_rate_limit_unavailable_total`; a warning is logged once per outage. Until
//! `health_interval` has passed, further requests are allowed without trying Redis, then
//! one request tries it again, so a hung Redis costs at most one time-out per interval.
//! Counting resumes where Redis left it.

use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engram_core::rate_limit::{decide, Decision, Quota, RateLimiter};
use engram_core::StoreError;
use redis::aio::ConnectionManager;
use redis::Script;
use tracing::{info, warn};

use crate::cache::{connect, CacheConfig, CacheError};
use crate::keys::{escape, valid_prefix};

/// KEYS: the key. ARGV: the emission interval T and the tolerance τ (µs). Returns
/// {Redis' time in µs, the TAT read or -1, 1 if allowed (and stored) else 0}.
static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '')
local base = now
if tat and tat > now then base = tat end
local next_tat = base + interval
local seen = tat or -1
if next_tat - now <= tolerance then
  local ttl = math.ceil((next_tat - now) / 1000)
  redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', ttl)
  return {now, seen, 1}
end
return {now, seen, 0}
"#,
    )
});

/// A rate limiter whose state is in Redis, shared by every process using the same Redis
/// and prefix.
pub struct RedisRateLimiter {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
    retry_every: Duration,
    /// Set while Redis is known down: when the next request may try it again.
    down_until: Mutex<Option<Instant>>,
}

impl RedisRateLimiter {
    /// A limiter over the Redis at `url`, with the cache's `prefix`, `op_timeout` (the
    /// longest a request waits for Redis) and `health_interval` (how long it stops trying
    /// after a failure). Connects lazily, so it succeeds while Redis is down. Fails only
    /// on a malformed URL or configuration.
    pub fn new(url: &str, cfg: &CacheConfig) -> Result<RedisRateLimiter, CacheError> {
        if !valid_prefix(&cfg.prefix) {
            return Err(CacheError::InvalidPrefix(cfg.prefix.clone()));
        }
        for (name, d) in [
            ("op_timeout", cfg.op_timeout),
            ("health_interval", cfg.health_interval),
        ] {
            if d < Duration::from_millis(1) {
                return Err(CacheError::InvalidConfig(format!(
                    "{name} must be at least 1 ms"
                )));
            }
        }
        let conn = connect(url, cfg.op_timeout)?;
        metrics::describe_counter!(
            "engram_rate_limit_unavailable_total",
            "Requests allowed without a rate-limit check because its state could not be reached (fail open)"
        );
        Ok(RedisRateLimiter {
            conn,
            prefix: cfg.prefix.clone(),
            op_timeout: cfg.op_timeout,
            retry_every: cfg.health_interval,
            down_until: Mutex::new(None),
        })
    }

    /// The Redis key holding `key`'s TAT.
    pub fn key(&self, key: &str) -> String {
        format!("{}::ratelimit:{}", self.prefix, escape(key))
    }

    /// Whether the last call to Redis failed and it has not answered since.
    pub fn is_down(&self) -> bool {
        self.lock().is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Instant>> {
        self.down_until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to skip Redis now. After the pause, the first caller tries again (and
    /// pushes the next try one interval further, so the others keep skipping meanwhile).
    fn skip(&self) -> bool {
        let mut down = self.lock();
        match *down {
            None => false,
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    return true;
                }
                *down = Some(now + self.retry_every);
                false
            }
        }
    }

    fn mark_down(&self, reason: &str) {
        let was_up = self
            .lock()
            .replace(Instant::now() + self.retry_every)
            .is_none();
        if was_up {
            warn!(
                error = %reason,
                "Redis rate limiter unavailable: requests are allowed without a limit until it answers again"
            );
        }
    }

    fn mark_up(&self) {
        if self.lock().take().is_some() {
            info!("Redis rate limiter available again: limits apply");
        }
    }

    fn fail_open(quota: &Quota) -> Decision {
        metrics::counter!("engram_rate_limit_unavailable_total").increment(1);
        quota.fresh()
    }

    async fn eval(&self, key: &str, quota: &Quota) -> Result<Decision, String> {
        let mut inv = GCRA.prepare_invoke();
        inv.key(self.key(key))
            .arg(quota.interval_us())
            .arg(quota.tolerance_us());
        let mut conn = self.conn.clone();
        let call = inv.invoke_async::<(i64, i64, i64)>(&mut conn);
        let (now, seen, allowed) = match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", self.op_timeout)),
        };
        let tat = (seen >= 0).then_some(seen);
        let (decision, stored) = decide(quota, tat, now);
        if stored.is_some() != (allowed == 1) {
            return Err(format!(
                "the rate-limit script answered {allowed} for TAT {seen} at {now}, which GCRA \
                 decides the other way"
            ));
        }
        Ok(decision)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    /// Never fails: when Redis cannot answer, the request is allowed (see the module
    /// documentation).
    async fn check(&self, key: &str, quota: &Quota) -> Result<Decision, StoreError> {
        if self.skip() {
            return Ok(Self::fail_open(quota));
        }
        match self.eval(key, quota).await {
            Ok(d) => {
                self.mark_up();
                Ok(d)
            }
            Err(e) => {
                self.mark_down(&e);
                Ok(Self::fail_open(quota))
            }
        }
    }
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .field("down", &self.is_down())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_escaped_into_the_global_namespace() {
        let cfg = CacheConfig {
            prefix: "p".into(),
            ..CacheConfig::default()
        };
        let l = RedisRateLimiter::new("redis://127.0.0.1:1", &cfg).expect("limiter");
        assert_eq!(l.key("acme"), "p::ratelimit:acme");
        assert_eq!(l.key("a:b*c"), "p::ratelimit:a%3Ab%2Ac");
    }

    #[tokio::test]
    async fn bad_configuration_is_refused_and_passwords_are_hidden() {
        let bad_prefix = CacheConfig {
            prefix: "a:b".into(),
            ..CacheConfig::default()
        };
        assert!(matches!(
            RedisRateLimiter::new("redis://127.0.0.1", &bad_prefix),
            Err(CacheError::InvalidPrefix(_))
        ));
        let zero = CacheConfig {
            op_timeout: Duration::ZERO,
            ..CacheConfig::default()
        };
        assert!(matches!(
            RedisRateLimiter::new("redis://127.0.0.1", &zero),
            Err(CacheError::InvalidConfig(_))
        ));
        match RedisRateLimiter::new("http://u:secret@h", &CacheConfig::default()) {
            Err(CacheError::InvalidUrl { url, .. }) => assert_eq!(url, "http://u:***@h"),
            other => panic!("expected an invalid URL, got {other:?}"),
        }
    }
}
