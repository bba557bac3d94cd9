//! The embedder port. Implementations (the local model, Ollama, OpenAI-compatible
//! endpoints) live in `engram-embed`, so the model's heavy dependencies rebuild nothing else.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Which vectors an embedder makes: every stored vector records this.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelInfo {
    /// e.g. `sentence-transformers/all-MiniLM-L6-v2` or `ollama:nomic-embed-text`.
    pub id: String,
    /// Identifies the weights, e.g. the SHA-256 of the safetensors file.
    pub revision: String,
    pub dim: usize,
}

impl ModelInfo {
    /// Identifies the vectors this model makes: `<id>@<revision>`.
    pub fn key(&self) -> String {
        format!("{}@{}", self.id, self.revision)
    }
}

/// Vectors as stores and caches keep them: little-endian f32, back to back.
pub fn vectors_to_bytes(vectors: &[Vec<f32>]) -> Vec<u8> {
    vectors
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

/// The vectors of `dim` floats in `bytes` (as `vectors_to_bytes` wrote them); `None`
/// unless `bytes` holds one or more whole vectors.
pub fn vectors_from_bytes(bytes: &[u8], dim: usize) -> Option<Vec<Vec<f32>>> {
    let width = dim.checked_mul(4).filter(|w| *w > 0)?;
    let chunks = bytes.chunks_exact(width);
    if bytes.is_empty() || !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|v| {
                v.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect(),
    )
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum EmbedError {
    /// The embedder cannot run at all (no model, service down); the message says how to fix it.
    #[error("embedder unavailable: {0}")]
    Unavailable(String),
    /// A call took too long.
    #[error("embedding timed out: {0}")]
    Timeout(String),
    /// The provider refused this input; retrying the same input will not help.
    #[error("embedding rejected: {0}")]
    Rejected(String),
    /// Anything else; worth a retry.
    #[error("embedding failed: {0}")]
    Other(String),
}

/// A document's vectors: one per window of the model's context (a long text is split
/// into overlapping windows; a document scores as its best window).
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentEmbedding {
    pub windows: Vec<Vec<f32>>,
}

#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    fn model(&self) -> ModelInfo;
    /// Embeds documents for storage; the result has one entry per input, in order.
    async fn embed_documents(&self, texts: &[String])
        -> Result<Vec<DocumentEmbedding>, EmbedError>;
    /// Embeds a search query into one vector.
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError>;
}
