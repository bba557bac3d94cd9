//! OpenAI-compatible endpoints: `POST {base}/v1/embeddings` with `{"model", "input": [...]}`
//! and `Authorization: Bearer <key>`, answered by `{"data": [{"index", "embedding"}, ...]}`.

use std::time::Duration;

use engram_core::embed::{EmbedError, Embedder, ModelInfo};
use serde::{Deserialize, Serialize};

use super::{join_url, Client, Dim, Hints, RetryPolicy};
use crate::config::OpenAiConfig;

const PROVIDER: &str = "openai";

/// Embeddings from an OpenAI-compatible endpoint (OpenAI itself, vLLM, LM Studio,
/// llama.cpp's server, …). One vector per document. `model()` is `openai:<model>`, revision
/// `<model>`. The API key is read from the configured environment variable when the
/// embedder is built and never printed.
pub struct OpenAiEmbedder {
    client: Client,
    url: String,
    model: String,
    api_key_env: String,
    api_key: Option<String>,
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
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl std::fmt::Debug for OpenAiEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiEmbedder")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("dim", &self.dim.get())
            .finish()
    }
}

/// `{base}/v1/embeddings`, or `{base}/embeddings` when the base already ends in `/v1`.
fn endpoint(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1") {
        join_url(base, "/embeddings")
    } else {
        join_url(base, "/v1/embeddings")
    }
}

impl OpenAiEmbedder {
    /// Reads the key from `cfg.api_key_env` (no header is sent when it is unset or empty).
    /// No I/O otherwise.
    pub fn new(cfg: &OpenAiConfig) -> Result<Self, EmbedError> {
        let api_key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty());
        Self::with_key(cfg, api_key)
    }

    /// As [`OpenAiEmbedder::new`], with the key given rather than read from the environment.
    pub fn with_key(cfg: &OpenAiConfig, api_key: Option<String>) -> Result<Self, EmbedError> {
        let policy = RetryPolicy {
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
            max_retries: cfg.max_retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
        };
        Ok(Self {
            client: Client::new(PROVIDER, policy)?,
            url: endpoint(&cfg.base_url),
            model: cfg.model.clone(),
            api_key_env: cfg.api_key_env.clone(),
            api_key,
            dim: Dim::new(cfg.dim),
            batch_size: cfg.batch_size.max(1),
        })
    }

    /// Embeds one short text: checks the endpoint and key, and learns the dimension.
    pub async fn probe(&self) -> Result<ModelInfo, EmbedError> {
        self.embed(&["engram embedding probe".to_string()]).await?;
        Ok(self.model())
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let hints = Hints {
            auth: match &self.api_key {
                Some(_) => format!("the key in {} was refused", self.api_key_env),
                None => format!(
                    "{} is not set: set it to an API key for this endpoint",
                    self.api_key_env
                ),
            },
            not_found: format!(
                "check the base URL and that the endpoint serves the model {:?}",
                self.model
            ),
        };
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.batch_size) {
            let request = Request {
                model: &self.model,
                input: chunk,
            };
            let resp: Response = self
                .client
                .post(&self.url, &request, self.api_key.as_deref(), &hints)
                .await?;
            let mut vectors: Vec<Option<Vec<f32>>> = vec![None; chunk.len()];
            for item in resp.data {
                match vectors.get_mut(item.index) {
                    Some(slot @ None) => *slot = Some(item.embedding),
                    _ => {
                        return Err(EmbedError::Other(format!(
                            "{PROVIDER} at {} returned index {} (duplicate or out of range) for {} inputs",
                            self.url,
                            item.index,
                            chunk.len()
                        )))
                    }
                }
            }
            let mut vectors: Vec<Vec<f32>> =
                vectors.into_iter().collect::<Option<_>>().ok_or_else(|| {
                    EmbedError::Other(format!(
                        "{PROVIDER} at {} returned fewer embeddings than the {} inputs",
                        self.url,
                        chunk.len()
                    ))
                })?;
            self.dim.accept(PROVIDER, &self.model, &mut vectors)?;
            out.extend(vectors);
        }
        Ok(out)
    }
}

remote_embedder!(OpenAiEmbedder);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_accepts_bases_with_or_without_v1() {
        assert_eq!(endpoint("http://h:8000"), "http://h:8000/v1/embeddings");
        assert_eq!(endpoint("http://h:8000/"), "http://h:8000/v1/embeddings");
        assert_eq!(endpoint("http://h:8000/v1"), "http://h:8000/v1/embeddings");
        assert_eq!(
            endpoint("http://h:8000/proxy/v1/"),
            "http://h:8000/proxy/v1/embeddings"
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let e =
            OpenAiEmbedder::with_key(&OpenAiConfig::default(), Some("sk-secret".into())).unwrap();
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("sk-secret") && shown.contains("<hidden>"),
            "{shown}"
        );
    }
}
