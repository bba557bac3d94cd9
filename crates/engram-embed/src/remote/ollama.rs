//! Ollama: `POST {base}/api/embed` with `{"model", "input": [...]}`, answered by
//! `{"embeddings": [[...], ...]}` (one vector per input, in order).

use std::time::Duration;

use engram_core::embed::{EmbedError, Embedder, ModelInfo};
use serde::{Deserialize, Serialize};

use super::{join_url, Client, Dim, Hints, RetryPolicy};
use crate::config::OllamaConfig;

const PROVIDER: &str = "ollama";

/// Embeddings from an Ollama server. One vector per document (the server truncates long
/// inputs to the model's context). `model()` is `ollama:<model>`, revision `<model>`.
pub struct OllamaEmbedder {
    client: Client,
    url: String,
    model: String,
    dim: Dim,
    batch_size: usize,
}

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: &'a [String],
}

#[derive(Deserialize)]
struct Response {
    embeddings: Vec<Vec<f32>>,
}

impl std::fmt::Debug for OllamaEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaEmbedder")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("dim", &self.dim.get())
            .finish()
    }
}

impl OllamaEmbedder {
    /// No I/O: the server is first contacted by [`OllamaEmbedder::probe`] or an embedding call.
    pub fn new(cfg: &OllamaConfig) -> Result<Self, EmbedError> {
        let policy = RetryPolicy {
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            max_retries: cfg.max_retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
        };
        Ok(Self {
            client: Client::new(PROVIDER, policy)?,
            url: join_url(&cfg.base_url, "/api/embed"),
            model: cfg.model.clone(),
            dim: Dim::new(cfg.dim),
            batch_size: cfg.batch_size.max(1),
        })
    }

    /// Embeds one short text, which checks that the server answers and teaches the
    /// dimension when it was not configured.
    pub async fn probe(&self) -> Result<ModelInfo, EmbedError> {
        self.embed(&["engram embedding probe".to_string()]).await?;
        Ok(self.model())
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let hints = Hints {
            auth: "Ollama itself needs no key: check the base URL (is a proxy in front?)".into(),
            not_found: format!(
                "run `ollama pull {}` on the server, or check the base URL",
                self.model
            ),
        };
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            let resp: Response = self
                .client
                .post(
                    &self.url,
                    &Request {
                        model: &self.model,
                        input: chunk,
                    },
                    None,
                    &hints,
                )
                .await?;
            let mut vectors = resp.embeddings;
            if vectors.len() != chunk.len() {
                return Err(EmbedError::Other(format!(
                    "{PROVIDER} at {} returned {} embeddings for {} inputs",
                    self.url,
                    vectors.len(),
                    chunk.len()
                )));
            }
            self.dim.accept(PROVIDER, &self.model, &mut vectors)?;
            out.extend(vectors);
        }
        Ok(out)
    }
}

remote_embedder!(OllamaEmbedder);
