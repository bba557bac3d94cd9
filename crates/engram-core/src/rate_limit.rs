//! Rate limits: a per-key budget of requests, enforced with GCRA (the generic cell rate
//! algorithm).
//!
//! A [`Quota`] is a sustained rate (`per_minute`) and a `burst`: how many requests may
//! arrive back to back after a quiet spell. GCRA keeps **one value per key**, the
//! *theoretical arrival time* (TAT): when the key's budget would be full again. With the
//! emission interval `T = 60 s / per_minute` and the tolerance `τ = burst · T`, a request
//! at `now` is allowed when `max(TAT, now) + T − now ≤ τ`, and then the TAT moves to
//! `max(TAT, now) + T`; a refused request changes nothing. A key whose TAT is in the past
//! is indistinguishable from a key never seen, so stored state can be dropped once it
//! expires (the Redis key carries that as its TTL; [`InMemoryRateLimiter`] sweeps it).
//!
//! All arithmetic is in whole microseconds ([`decide`]), so the in-process limiter and
//! the Redis one (`engram-redis`, the same steps in a Lua script, times from Redis'
//! clock) reach exactly the same decisions. Values stay below 2^53, so Lua's doubles hold
//! them exactly: `T` is at least 1 µs (rates above 60,000,000 a minute are capped there)
//! and the tolerance at most [`MAX_TOLERANCE`].
//!
//! Not here: which key a request is counted against and what is answered when it is
//! refused (the server), where the state lives in server mode (`engram-redis`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::time::{self, Timestamp};

/// The longest a burst may take to refill; larger `burst · T` are capped to it.
pub const MAX_TOLERANCE: Duration = Duration::from_secs(24 * 3600);

const MICROS_PER_MINUTE: i64 = 60_000_000;

/// A budget: `per_minute` requests a minute sustained, up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub per_minute: u32,
    pub burst: u32,
}

impl Quota {
    /// A quota, or `None` when either number is 0 (no quota: nothing would be allowed).
    pub fn new(per_minute: u32, burst: u32) -> Option<Quota> {
        (per_minute > 0 && burst > 0).then_some(Quota { per_minute, burst })
    }

    /// `T`: the time one request's share of the budget takes to come back, in µs (at
    /// least 1; a `per_minute` of 0 counts as 1).
    pub fn interval_us(&self) -> i64 {
        (MICROS_PER_MINUTE / i64::from(self.per_minute.max(1))).max(1)
    }

    /// `τ = burst · T` in µs, at most [`MAX_TOLERANCE`] (a `burst` of 0 counts as 1).
    pub fn tolerance_us(&self) -> i64 {
        let max = MAX_TOLERANCE.as_micros() as i64;
        (i64::from(self.burst.max(1)) * self.interval_us()).min(max)
    }

    /// `T` as a duration.
    pub fn emission_interval(&self) -> Duration {
        micros(self.interval_us())
    }

    /// What a key never seen (or whose state expired) is told: one request counted
    /// against a full budget. Also what a limiter that fails open reports.
    pub fn fresh(&self) -> Decision {
        decide(self, None, 0).0
    }
}

/// What a limiter answers for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go ahead (it was counted); a refused one was not.
    pub allowed: bool,
    /// Requests that would still be allowed right now, after this one.
    pub remaining: u32,
    /// Zero when allowed; else how long until the same request would be allowed.
    pub retry_after: Duration,
    /// How long until the whole budget (`burst` requests) is available again.
    pub reset_after: Duration,
}

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// Whole seconds, rounded up: what `Retry-After` and messages say.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// One GCRA step. `tat_us` is the stored TAT (`None`: no state), `now_us` the time, both
/// in µs since the epoch. Returns the decision and, when the request is allowed, the TAT
/// to store (it expires `reset_after` from now). A refused request stores nothing.
pub fn decide(quota: &Quota, tat_us: Option<i64>, now_us: i64) -> (Decision, Option<i64>) {
    let t = quota.interval_us();
    let tau = quota.tolerance_us();
    let base = tat_us.map_or(now_us, |tat| tat.max(now_us));
    let next = base + t;
    if next - now_us <= tau {
        let remaining = (tau - (next - now_us)) / t;
        let decision = Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            retry_after: Duration::ZERO,
            reset_after: micros(next - now_us),
        };
        (decision, Some(next))
    } else {
        let decision = Decision {
            allowed: false,
            remaining: 0,
            retry_after: micros(next - tau - now_us),
            reset_after: micros(base - now_us),
        };
        (decision, None)
    }
}

/// Counts requests against per-key budgets.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request against `key`'s budget under `quota`, at the limiter's own
    /// clock (the process' in memory, Redis' in Redis, so replicas with skewed clocks
    /// still share one budget). `Err` only when the state cannot be reached; callers
    /// decide whether that allows the request.
    async fn check(&self, key: &str, quota: &Quota) -> Result<Decision, StoreError>;
}

/// How many keys [`InMemoryRateLimiter::default`] tracks at most.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// How often (by the clock of the requests) expired state is swept.
const SWEEP_EVERY_US: i64 = 60_000_000;

/// The limiter of the embedded mode: one process' budgets, in memory.
///
/// Bounded: at most `max_keys` keys are tracked. Keys whose TAT is in the past are swept
/// once a minute and whenever the table is full, which changes no decision (their state
/// equals no state). If the table is still full of live keys, the ones closest to a full
/// budget (smallest TAT) are dropped down to 90 % of `max_keys`: those keys get their full
/// budget back early (counted in `engram_rate_limit_evictions_total`). Size `max_keys`
/// above the number of keys active within one refill (`burst · T`).
pub struct InMemoryRateLimiter {
    max_keys: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    tats: HashMap<String, i64>,
    next_sweep_us: i64,
}

impl Table {
    fn sweep(&mut self, now_us: i64) {
        self.tats.retain(|_, tat| *tat > now_us);
        self.next_sweep_us = now_us.saturating_add(SWEEP_EVERY_US);
    }

    /// Makes room for one more key.
    fn make_room(&mut self, now_us: i64, max_keys: usize) {
        self.sweep(now_us);
        if self.tats.len() < max_keys {
            return;
        }
        let keep = (max_keys - max_keys / 10).saturating_sub(1);
        let mut by_tat: Vec<(i64, String)> = self.tats.drain().map(|(k, v)| (v, k)).collect();
        let evicted = by_tat.len() - keep;
        by_tat.select_nth_unstable_by(evicted.saturating_sub(1), |a, b| a.0.cmp(&b.0));
        self.tats = by_tat.drain(evicted..).map(|(v, k)| (k, v)).collect();
        metrics::counter!("engram_rate_limit_evictions_total").increment(evicted as u64);
        tracing::debug!(
            evicted,
            max_keys,
            "rate limiter full of live keys: the closest to a full budget were dropped"
        );
    }
}

impl Default for InMemoryRateLimiter {
    fn default() -> Self {
        InMemoryRateLimiter::new(DEFAULT_MAX_KEYS)
    }
}

impl InMemoryRateLimiter {
    /// A limiter tracking at most `max_keys` keys (at least 1).
    pub fn new(max_keys: usize) -> InMemoryRateLimiter {
        metrics::describe_counter!(
            "engram_rate_limit_evictions_total",
            "Rate-limit keys dropped from a full in-process table before their budget was full again"
        );
        InMemoryRateLimiter {
            max_keys: max_keys.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    /// [`RateLimiter::check`] at a given time (the trait uses the current time).
    pub fn check_at(&self, key: &str, quota: &Quota, now: Timestamp) -> Decision {
        let now_us = time::to_micros(now);
        let mut table = self.lock();
        if now_us >= table.next_sweep_us {
            table.sweep(now_us);
        }
        let (decision, store) = decide(quota, table.tats.get(key).copied(), now_us);
        if let Some(tat) = store {
            match table.tats.get_mut(key) {
                Some(slot) => *slot = tat,
                None => {
                    if table.tats.len() >= self.max_keys {
                        table.make_room(now_us, self.max_keys);
                    }
                    table.tats.insert(key.to_owned(), tat);
                }
            }
        }
        decision
    }

    /// Keys currently tracked.
    pub fn tracked_keys(&self) -> usize {
        self.lock().tats.len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl RateLimiter for InMemoryRateLimiter {
    async fn check(&self, key: &str, quota: &Quota) -> Result<Decision, StoreError> {
        Ok(self.check_at(key, quota, time::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000;

    fn at(us: i64) -> Timestamp {
        time::from_micros(1_800_000_000 * SEC + us)
    }

    fn q(per_minute: u32, burst: u32) -> Quota {
        Quota::new(per_minute, burst).expect("valid quota")
    }

    #[test]
    fn a_burst_is_allowed_then_refused_until_one_interval_has_passed() {
        let l = InMemoryRateLimiter::default();
        let quota = q(60, 5); // T = 1 s, τ = 5 s
        for left in (0..5).rev() {
            let d = l.check_at("k", &quota, at(0));
            assert!(d.allowed);
            assert_eq!(d.remaining, left);
            assert_eq!(d.retry_after, Duration::ZERO);
            assert_eq!(d.reset_after, Duration::from_secs(5 - u64::from(left)));
        }
        let refused = l.check_at("k", &quota, at(0));
        assert_eq!(
            refused,
            Decision {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_secs(1),
                reset_after: Duration::from_secs(5),
            }
        );
        // A refusal costs nothing: the same answer 0.25 s later, a quarter second less.
        let later = l.check_at("k", &quota, at(SEC / 4));
        assert!(!later.allowed);
        assert_eq!(later.retry_after, Duration::from_millis(750));
        assert_eq!(later.reset_after, Duration::from_millis(4750));
    }

    #[test]
    fn retry_after_is_exact_to_the_microsecond() {
        let l = InMemoryRateLimiter::default();
        let quota = q(7, 3); // T = 8,571,428 µs
        let t = quota.interval_us();
        assert_eq!(t, 8_571_428);
        for i in 0..3 {
            assert!(l.check_at("k", &quota, at(i)).allowed);
        }
        let refused = l.check_at("k", &quota, at(10));
        assert!(!refused.allowed);
        // TAT = 3T (from 0); allowed again once 3T + T − now ≤ 3T, i.e. at T.
        let wait = i64::try_from(refused.retry_after.as_micros()).unwrap();
        assert_eq!(wait, t - 10);
        assert!(!l.check_at("k", &quota, at(10 + wait - 1)).allowed);
        let d = l.check_at("k", &quota, at(10 + wait));
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(ceil_secs(refused.retry_after), 9);
    }

    #[test]
    fn a_steady_rate_at_the_quota_is_never_refused() {
        let l = InMemoryRateLimiter::default();
        let quota = q(120, 4); // T = 0.5 s
        for i in 0..1000 {
            let d = l.check_at("k", &quota, at(i * SEC / 2));
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 3, "request {i}");
        }
        // Twice as fast: after the burst, every other request is refused.
        let l = InMemoryRateLimiter::default();
        let outcomes: Vec<bool> = (0..20)
            .map(|i| l.check_at("k", &quota, at(i * SEC / 4)).allowed)
            .collect();
        let allowed = outcomes.iter().filter(|a| **a).count();
        // 19 quarter-seconds = 4.75 s: the burst of 4 plus 9 refills.
        assert_eq!(allowed, 4 + 9, "{outcomes:?}");
    }

    #[test]
    fn after_reset_after_the_whole_burst_is_back() {
        let l = InMemoryRateLimiter::default();
        let quota = q(30, 3); // T = 2 s
        l.check_at("k", &quota, at(0));
        let d = l.check_at("k", &quota, at(SEC / 2));
        // TAT = 4 s.
        assert_eq!(d.reset_after, Duration::from_millis(3500));
        assert_eq!(d.remaining, 1);
        let reset = i64::try_from(d.reset_after.as_micros()).unwrap();
        let full = l.check_at("k", &quota, at(SEC / 2 + reset));
        assert_eq!(full, quota.fresh());
        assert_eq!(full.remaining, 2);
    }

    #[test]
    fn keys_are_independent() {
        let l = InMemoryRateLimiter::default();
        let quota = q(1, 2);
        assert!(l.check_at("a", &quota, at(0)).allowed);
        assert!(l.check_at("a", &quota, at(0)).allowed);
        assert!(!l.check_at("a", &quota, at(0)).allowed);
        let b = l.check_at("b", &quota, at(0));
        assert!(b.allowed);
        assert_eq!(b.remaining, 1);
        assert!(!l.check_at("a", &quota, at(1)).allowed);
    }

    #[test]
    fn memory_is_bounded_and_expired_keys_are_swept() {
        let l = InMemoryRateLimiter::new(100);
        let quota = q(60, 10);
        for i in 0..10_000 {
            assert!(l.check_at(&format!("k{i}"), &quota, at(i)).allowed);
            assert!(l.tracked_keys() <= 100);
        }
        // The most recent keys (largest TAT) are kept: the newest one is still counted.
        let d = l.check_at("k9999", &quota, at(10_000));
        assert_eq!(d.remaining, 8);
        // A minute later every TAT is in the past: the next request sweeps them all.
        l.check_at("late", &quota, at(120 * SEC));
        assert_eq!(l.tracked_keys(), 1);
        // A refused request stores nothing new.
        let l = InMemoryRateLimiter::new(10);
        for _ in 0..100 {
            l.check_at("x", &q(1, 1), at(0));
        }
        assert_eq!(l.tracked_keys(), 1);
    }

    #[test]
    fn a_full_table_of_expired_keys_is_swept_without_evicting_live_ones() {
        let l = InMemoryRateLimiter::new(4);
        let quota = q(60, 2); // T = 1 s
        l.check_at("live", &quota, at(0));
        l.check_at("live", &quota, at(0)); // TAT = 2 s
        for k in ["a", "b", "c"] {
            l.check_at(k, &quota, at(0)); // TAT = 1 s
        }
        assert_eq!(l.tracked_keys(), 4);
        l.check_at("new", &quota, at(SEC + SEC / 2));
        assert_eq!(l.tracked_keys(), 2);
        // "live" kept its state (TAT 2 s): at 1.5 s its last request is left.
        let d = l.check_at("live", &quota, at(SEC + SEC / 2));
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn quotas_are_validated_and_clamped() {
        assert_eq!(Quota::new(0, 5), None);
        assert_eq!(Quota::new(5, 0), None);
        let fast = q(u32::MAX, 3);
        assert_eq!(fast.interval_us(), 1);
        assert_eq!(fast.tolerance_us(), 3);
        let huge = q(1, u32::MAX);
        assert_eq!(huge.tolerance_us(), MAX_TOLERANCE.as_micros() as i64);
        assert_eq!(q(60, 1).emission_interval(), Duration::from_secs(1));
        assert_eq!(
            q(60, 7).fresh(),
            Decision {
                allowed: true,
                remaining: 6,
                retry_after: Duration::ZERO,
                reset_after: Duration::from_secs(1),
            }
        );
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_micros(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    }

    #[tokio::test]
    async fn the_trait_uses_the_current_time() {
        let l = InMemoryRateLimiter::default();
        let quota = q(1, 1);
        assert!(l.check("k", &quota).await.expect("check").allowed);
        let refused = l.check("k", &quota).await.expect("check");
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::from_secs(59));
        assert!(refused.retry_after <= Duration::from_secs(60));
    }

    proptest! {
        /// Over any arrivals, no window [a, b] admits more than burst + (b − a) / T
        /// requests, a refusal's retry_after is exact, and expired state never matters.
        #[test]
        fn gcra_never_exceeds_the_quota(
            per_minute in 1u32..600,
            burst in 1u32..20,
            gaps in proptest::collection::vec(0i64..3 * SEC, 1..200),
        ) {
            let quota = q(per_minute, burst);
            let t = quota.interval_us();
            let mut tat = None;
            let mut now = 0;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += gap;
                let (d, next) = decide(&quota, tat, now);
                // Dropping a TAT in the past changes nothing.
                if tat.is_some_and(|v| v <= now) {
                    prop_assert_eq!(decide(&quota, None, now), (d, next));
                }
                if d.allowed {
                    prop_assert_eq!(d.retry_after, Duration::ZERO);
                    admitted.push(now);
                    tat = next;
                } else {
                    prop_assert!(next.is_none());
                    let wait = i64::try_from(d.retry_after.as_micros()).unwrap();
                    prop_assert!(wait > 0);
                    prop_assert!(!decide(&quota, tat, now + wait - 1).0.allowed);
                    prop_assert!(decide(&quota, tat, now + wait).0.allowed);
                }
            }
            for (i, a) in admitted.iter().enumerate() {
                for (j, b) in admitted.iter().enumerate().skip(i) {
                    let n = (j - i + 1) as i64;
                    prop_assert!(n <= i64::from(burst) + (b - a) / t, "{} in [{}, {}]", n, a, b);
                }
            }
        }
    }
}
