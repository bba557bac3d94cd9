//! Embedders: implementations of `engram_core::embed::Embedder`.
//!
//! This crate owns turning text into vectors: the local all-MiniLM-L6-v2 model run
//! in-process ([`LocalEmbedder`]: weights read with candle, a packed, unpadded BERT forward
//! pass on candle's `gemm` engine and fused kernels), finding or fetching its files
//! ([`ModelLocator`]), HTTP clients for Ollama ([`OllamaEmbedder`]) and OpenAI-compatible
//! endpoints ([`OpenAiEmbedder`]) with time-outs and retries, choosing among them without
//! mixing models ([`FallbackEmbedder`]), their configuration ([`EmbeddingConfig`]), and
//! the raw speed benchmark ([`bench_raw`]). It does not own what vectors are for: storing
//! them, indexing them, recording which model made them, or re-embedding when the model
//! changes belong to `engram-core` and the backends. Its heavy dependencies (candle,
//! tokenizers) stay here so that nothing else rebuilds them.

mod bench;
mod config;
mod fallback;
mod local;
mod locate;
mod remote;

use std::sync::Arc;

pub use engram_core::embed::{DocumentEmbedding, EmbedError, Embedder, ModelInfo};

pub use bench::{bench_raw, sentences as bench_sentences, BenchOptions, BenchReport};
pub use config::{EmbeddingConfig, LocalConfig, OllamaConfig, OpenAiConfig, ProviderKind};
pub use fallback::{probe, FallbackEmbedder};
pub use local::window::{WINDOW_CONTENT, WINDOW_STRIDE, WINDOW_TOKENS};
pub use local::{LocalEmbedder, LocalRuntime};
pub use locate::{
    default_cache_dir, sha256_file, ModelFiles, ModelLocator, ModelSource, MODEL_DIR_ENV, MODEL_ID,
    MODEL_SHA256, PIP_REQUIREMENT, REQUIRED_FILES,
};
pub use remote::{OllamaEmbedder, OpenAiEmbedder, RetryPolicy};

/// Builds the embedder the configuration asks for.
///
/// Providers are tried in the configured order and the first that works is returned: the
/// local model when it can be found (or fetched) and loaded, a remote one when it answers a
/// probe. That choice holds for the whole run, for the reasons given in [`FallbackEmbedder`].
/// A lone remote provider with a configured `dim` is not probed, so engram can start
/// before the server does. Fails with `Unavailable`, naming each provider's problem, when
/// none works.
pub async fn build(cfg: &EmbeddingConfig) -> Result<Arc<dyn Embedder>, EmbedError> {
    if cfg.providers.is_empty() {
        return Err(EmbedError::Unavailable(
            "embedding.providers is empty; list at least one of local, ollama, openai".into(),
        ));
    }
    let alone = cfg.providers.len() == 1;
    let mut failures = Vec::new();
    for kind in &cfg.providers {
        let made: Result<Arc<dyn Embedder>, EmbedError> = match kind {
            ProviderKind::Local => LocalEmbedder::new(cfg.local.clone())
                .await
                .map(|e| Arc::new(e) as Arc<dyn Embedder>),
            ProviderKind::Ollama => match OllamaEmbedder::new(&cfg.ollama) {
                Ok(e) if alone && cfg.ollama.dim.is_some() => Ok(Arc::new(e)),
                Ok(e) => probe(&e).await.map(|_| Arc::new(e) as Arc<dyn Embedder>),
                Err(e) => Err(e),
            },
            ProviderKind::OpenAi => match OpenAiEmbedder::new(&cfg.openai) {
                Ok(e) if alone && cfg.openai.dim.is_some() => Ok(Arc::new(e)),
                Ok(e) => probe(&e).await.map(|_| Arc::new(e) as Arc<dyn Embedder>),
                Err(e) => Err(e),
            },
        };
        match made {
            Ok(e) => {
                let info = e.model();
                tracing::info!(provider = %kind, model = %info.id, revision = %info.revision, dim = info.dim, "embedding provider selected");
                return Ok(e);
            }
            Err(e) if alone => return Err(e),
            Err(e) => {
                tracing::warn!(provider = %kind, error = %e, "embedding provider unusable; trying the next");
                failures.push(format!("{kind}: {e}"));
            }
        }
    }
    Err(EmbedError::Unavailable(format!(
        "no embedding provider works: {}",
        failures.join("; ")
    )))
}
