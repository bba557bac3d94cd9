//! Wiring the embedder and the embedding pipeline into `engram serve`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use engram_core::{Embedder, EmbedderSlot, EmbeddingPipeline, EmbeddingStore};
use engram_server::ReadinessCheck;
use tokio::sync::watch;

use crate::backends::Leases;
use crate::config::Config;

/// Where the embedder is.
#[derive(Clone, Debug)]
pub enum EmbedderState {
    Loading,
    Ready,
    Unavailable(String),
    Disabled,
}

/// `/readyz` entry for the embedder. Not critical: without a model engram still takes
/// takes writes and serves reads, and memories wait as `pending`.
#[derive(Clone)]
pub struct EmbedderCheck(pub Arc<RwLock<EmbedderState>>);

#[async_trait]
impl ReadinessCheck for EmbedderCheck {
    fn name(&self) -> &'static str {
        "embedder"
    }
    fn critical(&self) -> bool {
        false
    }
    async fn check(&self) -> Result<(), String> {
        match &*self.0.read().expect("embedder state") {
            EmbedderState::Ready => Ok(()),
            EmbedderState::Loading => {
                Err("the embedding model is loading; memories wait as pending".into())
            }
            EmbedderState::Unavailable(why) => Err(format!(
                "{why}; memories stay pending until it is fixed and engram restarted"
            )),
            EmbedderState::Disabled => {
                Err("the embedding pipeline is disabled (pipeline.enabled = false)".into())
            }
        }
    }
}

/// Runs `n` pipeline workers and one sweeper until `stop` turns true. Claims are atomic,
/// so workers never share a memory; while one waits on the store, another keeps the model
/// busy. The sweeper sweeps only while this process holds the sweeper's lease, so among
/// replicas sharing a store one sweeps at a time.
pub fn spawn_workers(
    pipeline: &EmbeddingPipeline,
    n: usize,
    stop: &watch::Receiver<bool>,
    leases: Arc<dyn Leases>,
    sweep_every: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let until_stopped = || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let mut tasks: Vec<_> = (0..n.max(1))
        .map(|_| tokio::spawn(pipeline.clone().run(until_stopped())))
        .collect();
    tasks.push(tokio::spawn(run_sweeper(
        pipeline.clone(),
        leases,
        sweep_every,
        until_stopped(),
    )));
    tasks
}

/// The lease the embedding sweeper holds while it sweeps.
const SWEEPER_LEASE: &str = "embedding-sweeper";

/// Sweeps every `every` while holding the sweeper's lease (renewed each time, lost after
/// three missed renewals), until `shutdown` resolves.
async fn run_sweeper(
    pipeline: EmbeddingPipeline,
    leases: Arc<dyn Leases>,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let mut leading = false;
    tokio::pin!(shutdown);
    loop {
        let held = leases.try_lease(SWEEPER_LEASE, &holder, every * 3).await;
        if held != leading {
            tracing::info!(holder, leading = held, "embedding sweeper lease");
            leading = held;
        }
        if held {
            if let Err(e) = pipeline.sweep().await {
                tracing::warn!(error = %e, "embedding sweep failed");
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Builds the configured embedder in the background and, once it works, puts it in `slot`
/// for queries and runs the pipeline until `stop` turns true. Returns the readiness check and the worker's handle.
pub fn start(
    cfg: &Config,
    store: Arc<dyn EmbeddingStore>,
    leases: Arc<dyn Leases>,
    slot: EmbedderSlot,
    stop: watch::Receiver<bool>,
) -> (EmbedderCheck, tokio::task::JoinHandle<()>) {
    let state = Arc::new(RwLock::new(if cfg.pipeline.enabled {
        EmbedderState::Loading
    } else {
        EmbedderState::Disabled
    }));
    let check = EmbedderCheck(state.clone());
    let (embedding, pipeline_cfg, enabled, workers) = (
        cfg.embedding.clone(),
        cfg.pipeline.to_core(),
        cfg.pipeline.enabled,
        cfg.pipeline.workers,
    );
    let sweep_every = pipeline_cfg.sweep_every;
    let handle = tokio::spawn(async move {
        if !enabled {
            return;
        }
        let embedder: Arc<dyn Embedder> = match engram_embed::build(&embedding).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "no embedder: memories stay pending; writes and reads work");
                *state.write().expect("embedder state") = EmbedderState::Unavailable(e.to_string());
                return;
            }
        };
        let pipeline = match EmbeddingPipeline::new(store, embedder.clone(), pipeline_cfg).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "the embedding pipeline cannot start");
                *state.write().expect("embedder state") = EmbedderState::Unavailable(e.to_string());
                return;
            }
        };
        slot.set(embedder);
        *state.write().expect("embedder state") = EmbedderState::Ready;
        for w in spawn_workers(&pipeline, workers, &stop, leases, sweep_every) {
            let _ = w.await;
        }
    });
    (check, handle)
}
