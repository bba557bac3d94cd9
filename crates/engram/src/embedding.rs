//! Wiring the embedder and the embedding pipeline into `engram serve`.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use engram_core::{Embedder, EmbedderSlot, EmbeddingPipeline, EmbeddingStore};
use engram_server::ReadinessCheck;
use tokio::sync::watch;

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
/// busy.
pub fn spawn_workers(
    pipeline: &EmbeddingPipeline,
    n: usize,
    stop: &watch::Receiver<bool>,
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
    tasks.push(tokio::spawn(pipeline.clone().run_sweeper(until_stopped())));
    tasks
}

/// Builds the configured embedder in the background and, once it works, puts it in `slot`
/// for queries and runs the pipeline until `stop` turns true. Returns the readiness check and the worker's handle.
pub fn start(
    cfg: &Config,
    store: Arc<dyn EmbeddingStore>,
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
        for w in spawn_workers(&pipeline, workers, &stop) {
            let _ = w.await;
        }
    });
    (check, handle)
}
