//! The tier migration: `engram migrate-tiers`, and the scheduled run in `engram serve`
//! (one replica at a time, under a lease).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use engram_core::working::service::{Verbatim, WorkingService};
use engram_core::TenantId;

use crate::backends::{Backends, Leases};

/// What a migration over tenants did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub tenants: u64,
    pub moved: u64,
    pub kept_mirrors: u64,
}

/// `30d`, `12h`, `90m`, `45s`.
pub fn parse_age(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| {
        anyhow::anyhow!("--older-than takes a number and a unit (d, h, m, s), e.g. 30d; got `{s}`")
    })?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        "s" => n,
        _ => anyhow::bail!("--older-than: unknown unit `{unit}`; use d, h, m or s (e.g. 30d)"),
    };
    Ok(Duration::from_secs(secs))
}

/// Moves working records unchanged for `age` into the long-term tier, for one tenant or
/// every tenant with an API key.
pub async fn migrate(
    b: &Backends,
    tenant: Option<TenantId>,
    age: Duration,
) -> anyhow::Result<Report> {
    let tenants: BTreeSet<TenantId> = match tenant {
        Some(t) => [t].into(),
        None => b
            .keys
            .list_keys(None)
            .await?
            .into_iter()
            .map(|k| k.tenant)
            .collect(),
    };
    let cutoff = engram_core::time::now()
        - chrono::Duration::from_std(age)
            .map_err(|_| anyhow::anyhow!("--older-than is too large"))?;
    let working = WorkingService::new(b.records.clone(), b.memories.clone(), None);
    let mut report = Report::default();
    for t in &tenants {
        let r = working.migrate_tiers(t, cutoff, &Verbatim).await?;
        report.tenants += 1;
        report.moved += r.moved;
        report.kept_mirrors += r.kept_mirrors;
    }
    Ok(report)
}

/// The lease the scheduled migration holds.
const LEASE: &str = "tier-migration";
/// How often the lease is renewed; the run itself is every `every`.
const RENEW: Duration = Duration::from_secs(300);

/// Runs the migration every `every` while this process holds the lease, until `stop`.
pub async fn run_scheduled(
    b: Backends,
    leases: Arc<dyn Leases>,
    age: Duration,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut last_run: Option<tokio::time::Instant> = None;
    loop {
        if leases.try_lease(LEASE, &holder, RENEW * 3).await
            && last_run.is_none_or(|t| t.elapsed() >= every)
        {
            last_run = Some(tokio::time::Instant::now());
            match migrate(&b, None, age).await {
                Ok(r) => tracing::info!(moved = r.moved, tenants = r.tenants, "tier migration ran"),
                Err(e) => tracing::warn!(error = %e, "tier migration failed; retried next round"),
            }
        }
        tokio::select! {
            _ = stop.changed() => break,
            _ = tokio::time::sleep(RENEW.min(every)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3_600));
        assert_eq!(parse_age("90m").unwrap(), Duration::from_secs(90 * 60));
        assert_eq!(parse_age("0s").unwrap(), Duration::ZERO);
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("3w").is_err());
    }
}
