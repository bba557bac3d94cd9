//! Choosing among several embedders without ever mixing their vectors.
//!
//! Vectors from two different models are not comparable, even at the same dimension, and
//! the [`Embedder`] port reports the model once (`model()`), not per call. So a chain that
//! moved from Ollama to the local model mid-run would stamp local vectors with Ollama's
//! [`ModelInfo`], or change `model()` under a caller that already read it. Instead:
//!
//! - **at startup** the first candidate that answers a probe becomes the *active* embedder,
//!   and `model()` is its `ModelInfo` for the life of the process (a later restart may
//!   choose differently; the core sees the new `ModelInfo` and re-embeds, embeddings being
//!   derived state);
//! - **at run time** a failed call (Unavailable, Timeout, Other) is retried only on
//!   *standbys*: other candidates producing the same model (same id and revision, e.g. a
//!   second Ollama server with the same model). With no standby the error is returned, and
//!   the caller's job queue retries later. `Rejected` is returned at once: the input is at
//!   fault, not the provider.
//! - every vector returned has `model().dim` components, whatever a provider sends.

use std::sync::Arc;

use async_trait::async_trait;
use engram_core::embed::{DocumentEmbedding, EmbedError, Embedder, ModelInfo};

const PROBE: &str = "engram embedding probe";

/// See the module documentation.
pub struct FallbackEmbedder {
    active: Arc<dyn Embedder>,
    standbys: Vec<Arc<dyn Embedder>>,
    info: ModelInfo,
}

impl std::fmt::Debug for FallbackEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackEmbedder")
            .field("model", &self.info)
            .field("standbys", &self.standbys.len())
            .finish()
    }
}

/// Probes an embedder with one short query; checks the vector has the advertised dimension.
pub async fn probe(e: &dyn Embedder) -> Result<ModelInfo, EmbedError> {
    let v = e.embed_query(PROBE).await?;
    let info = e.model();
    if v.len() != info.dim {
        return Err(EmbedError::Other(format!(
            "{} produced a {}-d vector but declares {} dimensions",
            info.id,
            v.len(),
            info.dim
        )));
    }
    Ok(info)
}

fn same_model(a: &ModelInfo, b: &ModelInfo) -> bool {
    a.id == b.id && a.revision == b.revision && (a.dim == b.dim || b.dim == 0)
}

fn retryable(e: &EmbedError) -> bool {
    !matches!(e, EmbedError::Rejected(_))
}

impl FallbackEmbedder {
    /// Probes `candidates` in order and makes the first that answers active; the other
    /// candidates producing the same model become its standbys. Fails with `Unavailable`,
    /// naming every candidate's error, when none answers.
    pub async fn select(candidates: Vec<Arc<dyn Embedder>>) -> Result<Self, EmbedError> {
        let mut failures = Vec::new();
        let mut chosen = None;
        for (i, c) in candidates.iter().enumerate() {
            match probe(c.as_ref()).await {
                Ok(info) => {
                    chosen = Some((i, info));
                    break;
                }
                Err(e) => {
                    tracing::warn!(model = %c.model().id, error = %e, "embedding provider unusable; trying the next");
                    failures.push(format!("{}: {e}", c.model().id));
                }
            }
        }
        let Some((index, info)) = chosen else {
            return Err(EmbedError::Unavailable(format!(
                "no embedding provider works: {}",
                failures.join("; ")
            )));
        };
        let active = candidates[index].clone();
        let standbys = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != index && same_model(&info, &c.model()))
            .map(|(_, c)| c.clone())
            .collect();
        tracing::info!(model = %info.id, revision = %info.revision, dim = info.dim, "embedding provider selected");
        Ok(Self {
            active,
            standbys,
            info,
        })
    }

    /// The embedder chosen at startup.
    pub fn active(&self) -> &Arc<dyn Embedder> {
        &self.active
    }

    /// How many standbys (same model) back the active embedder.
    pub fn standby_count(&self) -> usize {
        self.standbys.len()
    }

    fn check_dim(&self, v: &[f32]) -> Result<(), EmbedError> {
        if v.len() == self.info.dim {
            Ok(())
        } else {
            Err(EmbedError::Other(format!(
                "{} returned a {}-d vector, expected {}",
                self.info.id,
                v.len(),
                self.info.dim
            )))
        }
    }
}

#[async_trait]
impl Embedder for FallbackEmbedder {
    fn model(&self) -> ModelInfo {
        self.info.clone()
    }

    async fn embed_documents(
        &self,
        texts: &[String],
    ) -> Result<Vec<DocumentEmbedding>, EmbedError> {
        let mut result = self.active.embed_documents(texts).await;
        for standby in &self.standbys {
            match &result {
                Err(e) if retryable(e) => {
                    tracing::warn!(model = %self.info.id, error = %e, "embedding failed; trying a standby");
                    result = standby.embed_documents(texts).await;
                }
                _ => break,
            }
        }
        let docs = result?;
        for d in &docs {
            for w in &d.windows {
                self.check_dim(w)?;
            }
        }
        Ok(docs)
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut result = self.active.embed_query(text).await;
        for standby in &self.standbys {
            match &result {
                Err(e) if retryable(e) => {
                    tracing::warn!(model = %self.info.id, error = %e, "embedding failed; trying a standby");
                    result = standby.embed_query(text).await;
                }
                _ => break,
            }
        }
        let v = result?;
        self.check_dim(&v)?;
        Ok(v)
    }
}
