//! A deterministic embedder for pipeline stories: unit vectors derived from the text's
//! SHA-256, with switchable failure, so stories can script what the pipeline meets. The real
//! model is exercised end to end by the binary's tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use engram_core::{DocumentEmbedding, EmbedError, Embedder, ModelInfo};

pub const DIM: usize = 8;

#[derive(Default)]
pub struct HashEmbedder {
    /// Another revision is another model, with other vectors.
    pub revision: u32,
    /// Per-call delay, to make a run slow enough to observe.
    pub delay_ms: u64,
    pub failing: AtomicBool,
    /// Texts embedded so far (a cache hit embeds nothing).
    pub embedded: AtomicUsize,
    pub calls: AtomicUsize,
}

pub fn vector_of(text: &str) -> Vec<f32> {
    vector_of_rev(text, 0)
}

pub fn vector_of_rev(text: &str, revision: u32) -> Vec<f32> {
    let h = if revision == 0 {
        engram_core::memory::content_hash(text)
    } else {
        engram_core::memory::content_hash(&format!("{revision}:{text}"))
    };
    let v: Vec<f32> = h.as_bytes()[..DIM]
        .iter()
        .map(|b| f32::from(*b) - 80.0)
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.into_iter().map(|x| x / norm).collect()
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn model(&self) -> ModelInfo {
        ModelInfo {
            id: "test/hash".into(),
            revision: (self.revision + 1).to_string(),
            dim: DIM,
        }
    }

    async fn embed_documents(
        &self,
        texts: &[String],
    ) -> Result<Vec<DocumentEmbedding>, EmbedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.delay_ms)).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(EmbedError::Unavailable(
                "the test embedder is switched off".into(),
            ));
        }
        self.embedded.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts
            .iter()
            .map(|t| DocumentEmbedding {
                windows: vec![vector_of_rev(t, self.revision)],
            })
            .collect())
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(vector_of_rev(text, self.revision))
    }
}

/// An embedder of wide vectors (1,536 dimensions, as some hosted models make): the hash
/// vector repeated, so cosines are those of [`vector_of`].
pub struct WideEmbedder;

pub const WIDE_DIM: usize = 1536;

pub fn wide_vector_of(text: &str) -> Vec<f32> {
    let v = vector_of(text);
    let scale = ((WIDE_DIM / DIM) as f32).sqrt();
    (0..WIDE_DIM).map(|i| v[i % DIM] / scale).collect()
}

#[async_trait]
impl Embedder for WideEmbedder {
    fn model(&self) -> ModelInfo {
        ModelInfo {
            id: "test/wide".into(),
            revision: "1".into(),
            dim: WIDE_DIM,
        }
    }

    async fn embed_documents(
        &self,
        texts: &[String],
    ) -> Result<Vec<DocumentEmbedding>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| DocumentEmbedding {
                windows: vec![wide_vector_of(t)],
            })
            .collect())
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        Ok(wide_vector_of(text))
    }
}
