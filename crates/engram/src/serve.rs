//! `engram serve`: wires the chosen backends into the core and the HTTP server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use engram_core::ops::{OpsConfig, OpsStore};
use engram_core::{EmbedderSlot, KeyService, SearchConfig, SearchService, TenantId};
use engram_server::{AppState, HttpConfig, ReadinessCheck};
use tokio::net::TcpListener;

use crate::backends::Backends;
use crate::config::Config;

/// Search over the backends, embedding queries with whatever embedder `slot` holds.
pub fn search_service(b: &Backends, slot: EmbedderSlot, cfg: SearchConfig) -> SearchService {
    SearchService::new(
        b.memories.clone(),
        b.search.clone(),
        b.embeddings.clone(),
        slot,
        cfg,
    )
}

/// The application state over the backends, with extra readiness checks.
pub fn app_state(
    b: &Backends,
    search: SearchService,
    ops: Arc<dyn OpsStore>,
    ops_config: &OpsConfig,
    extra_checks: Vec<Arc<dyn ReadinessCheck>>,
) -> AppState {
    let mut checks = b.checks();
    checks.extend(extra_checks);
    AppState::new(
        b.memories.clone(),
        b.keys.clone(),
        b.records.clone(),
        search,
        ops,
        ops_config.clone(),
        checks,
    )
}

pub fn http_config(cfg: &Config) -> HttpConfig {
    HttpConfig {
        body_limit: cfg.server.body_limit_bytes,
        request_timeout: Duration::from_secs(cfg.server.request_timeout_secs.max(1)),
    }
}

/// On a store with no API key at all, creates one for the `default` tenant and prints it.
async fn first_key(keys: &KeyService) -> anyhow::Result<()> {
    if keys.any().await? {
        return Ok(());
    }
    let tenant = TenantId::parse("default")?;
    let (key, record) = keys.create(&tenant).await?;
    println!(
        "No API key existed, so one was created for tenant `default` (id {}).",
        record.id
    );
    println!("It is shown only this once; keep it:");
    println!();
    println!("    {}", key.expose());
    println!();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let rate_limit = cfg.server.rate_limit()?;
    engram_server::metrics::install();
    let store = Backends::open(&cfg, true).await?;
    let report = store.migrations();
    tracing::info!(
        store = %store.describe(),
        schema_version = report.current,
        migrations_applied = report.applied.len(),
        "store opened"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slot = EmbedderSlot::default();
    let (embedder_check, worker) = crate::embedding::start(
        &cfg,
        store.embeddings.clone(),
        store.leases(),
        slot.clone(),
        stop_rx.clone(),
    );
    let migration = (cfg.tiers.migrate_every_hours > 0).then(|| {
        tokio::spawn(crate::tiers::run_scheduled(
            store.clone(),
            store.leases(),
            Duration::from_secs(u64::from(cfg.tiers.migrate_after_days) * 86_400),
            Duration::from_secs(u64::from(cfg.tiers.migrate_every_hours) * 3_600),
            stop_rx.clone(),
        ))
    });
    let search = search_service(&store, slot, cfg.search.to_core());
    let mut state = app_state(
        &store,
        search,
        store.ops_store(&cfg)?,
        &cfg.ops,
        vec![Arc::new(embedder_check)],
    )
    .with_scratchpads(store.scratchpads(&cfg)?);
    if let Some(quota) = rate_limit {
        tracing::info!(
            per_minute = quota.per_minute,
            burst = quota.burst,
            counted_in = if store.cache().is_some() {
                "redis"
            } else {
                "process"
            },
            "per-tenant rate limit on /api/v1"
        );
        state = state.with_rate_limit(store.rate_limiter(&cfg)?, quota);
    }
    first_key(&state.keys).await?;
    let listener = TcpListener::bind(cfg.server.addr)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.server.addr))?;
    let addr = listener.local_addr()?;
    println!("engram listening on http://{addr}");
    tracing::info!(%addr, "listening");
    let app = engram_server::router(state, &http_config(&cfg));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server error")?;
    // Let the worker finish its batch, then flush the store.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), worker).await;
    if let Some(m) = migration {
        let _ = tokio::time::timeout(Duration::from_secs(30), m).await;
    }
    store.close();
    tracing::info!("stopped");
    Ok(())
}
