//! Embedders behind HTTP: Ollama and OpenAI-compatible endpoints, and what they share:
//! time-outs, retries with exponential backoff, and the mapping of failures to [`EmbedError`].

/// The `Embedder` impl shared by the HTTP providers: each has `model` (its name), `dim`
/// and an `embed(&[String])` that returns one vector per text (no windows: the service
/// truncates long inputs itself).
macro_rules! remote_embedder {
    ($ty:ident) => {
        #[async_trait::async_trait]
        impl engram_core::embed::Embedder for $ty {
            fn model(&self) -> engram_core::embed::ModelInfo {
                engram_core::embed::ModelInfo {
                    id: format!("{PROVIDER}:{}", self.model),
                    revision: self.model.clone(),
                    dim: self.dim.get(),
                }
            }

            async fn embed_documents(
                &self,
                texts: &[String],
            ) -> Result<Vec<engram_core::embed::DocumentEmbedding>, EmbedError> {
                if texts.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(self
                    .embed(texts)
                    .await?
                    .into_iter()
                    .map(|v| engram_core::embed::DocumentEmbedding { windows: vec![v] })
                    .collect())
            }

            async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
                Ok(self.embed(&[text.to_string()]).await?.remove(0))
            }
        }
    };
}

mod ollama;
mod openai;

pub use ollama::OllamaEmbedder;
pub use openai::OpenAiEmbedder;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use engram_core::embed::EmbedError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Longest wait between two attempts, whatever the backoff or `Retry-After` say.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// When and how often to try again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Per-attempt time limit.
    pub timeout: Duration,
    /// Attempts after the first one.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each time, capped at 8 s.
    pub backoff: Duration,
}

impl RetryPolicy {
    fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX));
        retry_after.unwrap_or(exp).min(MAX_DELAY)
    }
}

/// One failed attempt, and whether another might succeed.
enum Failure {
    Retry(EmbedError, Option<Duration>),
    Final(EmbedError),
}

/// What to tell the user when the provider refuses the credentials or the model.
pub(crate) struct Hints {
    pub auth: String,
    pub not_found: String,
}

/// A JSON-over-HTTP client for one provider, with its retry policy.
pub(crate) struct Client {
    http: reqwest::Client,
    provider: &'static str,
    policy: RetryPolicy,
}

impl Client {
    pub(crate) fn new(provider: &'static str, policy: RetryPolicy) -> Result<Self, EmbedError> {
        let http = reqwest::Client::builder()
            .connect_timeout(policy.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| {
                EmbedError::Unavailable(format!("{provider}: cannot build an HTTP client: {e}"))
            })?;
        Ok(Self {
            http,
            provider,
            policy,
        })
    }

    /// POSTs `body` as JSON to `url` and decodes the JSON answer, retrying on 429, 5xx,
    /// time-outs and connection failures.
    pub(crate) async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        bearer: Option<&str>,
        hints: &Hints,
    ) -> Result<R, EmbedError> {
        if !cfg!(feature = "rustls") && url.starts_with("https://") {
            return Err(EmbedError::Unavailable(format!(
                "{}: cannot reach {url}: this build has no TLS support; use an http:// base URL \
                 or build engram with engram-embed's `rustls` feature",
                self.provider
            )));
        }
        let mut retry = 0;
        loop {
            match self.attempt(url, body, bearer, hints).await {
                Ok(r) => return Ok(r),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry(e, retry_after)) => {
                    if retry >= self.policy.max_retries {
                        return Err(e);
                    }
                    let delay = self.policy.delay(retry, retry_after);
                    tracing::warn!(provider = self.provider, url, error = %e, retry = retry + 1, delay_ms = delay.as_millis() as u64, "embedding request failed; retrying");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
            }
        }
    }

    async fn attempt<B: Serialize, R: DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        bearer: Option<&str>,
        hints: &Hints,
    ) -> Result<R, Failure> {
        let p = self.provider;
        let mut req = self.http.post(url).timeout(self.policy.timeout).json(body);
        if let Some(key) = bearer {
            req = req.bearer_auth(key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(transport_failure(p, url, &e, self.policy.timeout)),
        };
        let status = resp.status();
        if status.is_success() {
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| transport_failure(p, url, &e, self.policy.timeout))?;
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure::Final(EmbedError::Other(format!(
                    "{p} at {url} answered {status} with a body that is not the expected JSON ({e}): {}",
                    snippet(&bytes)
                )))
            });
        }
        let retry_after = retry_after(resp.headers());
        let bytes = resp.bytes().await.unwrap_or_default();
        let what = format!("{p} at {url} answered {status}: {}", snippet(&bytes));
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => Failure::Retry(
                EmbedError::Other(format!("{what} (rate limited)")),
                retry_after,
            ),
            StatusCode::SERVICE_UNAVAILABLE => {
                Failure::Retry(EmbedError::Unavailable(what), retry_after)
            }
            s if s.is_server_error() => Failure::Retry(EmbedError::Other(what), retry_after),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Failure::Final(EmbedError::Unavailable(format!("{what}; {}", hints.auth)))
            }
            StatusCode::NOT_FOUND => Failure::Final(EmbedError::Unavailable(format!(
                "{what}; {}",
                hints.not_found
            ))),
            _ => Failure::Final(EmbedError::Rejected(what)),
        })
    }
}

fn transport_failure(provider: &str, url: &str, e: &reqwest::Error, timeout: Duration) -> Failure {
    if e.is_timeout() {
        return Failure::Retry(
            EmbedError::Timeout(format!(
                "{provider} at {url} did not answer within {} ms",
                timeout.as_millis()
            )),
            None,
        );
    }
    if e.is_connect() {
        return Failure::Retry(
            EmbedError::Unavailable(format!(
                "{provider} at {url} is unreachable ({}); is it running?",
                error_chain(e)
            )),
            None,
        );
    }
    if e.is_builder() {
        // A URL that cannot be used at all.
        return Failure::Final(EmbedError::Unavailable(format!(
            "{provider}: cannot send to {url} ({}); check the base URL",
            error_chain(e)
        )));
    }
    Failure::Retry(
        EmbedError::Other(format!("{provider} at {url}: {}", error_chain(e))),
        None,
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = inner.source();
    }
    s
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// `base` without trailing slashes, followed by `path`.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!("{}{}", base.trim_end_matches('/'), path)
}

/// The model's dimension: fixed by configuration, or learned from the first answer.
#[derive(Debug)]
pub(crate) struct Dim(AtomicUsize);

impl Dim {
    pub(crate) fn new(configured: Option<usize>) -> Self {
        Self(AtomicUsize::new(configured.unwrap_or(0)))
    }

    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Checks every vector against the known dimension (learning it from the first), and
    /// L2-normalises them so all embedders agree that vectors have unit length.
    pub(crate) fn accept(
        &self,
        provider: &str,
        model: &str,
        vectors: &mut [Vec<f32>],
    ) -> Result<(), EmbedError> {
        for v in vectors.iter_mut() {
            if v.is_empty() {
                return Err(EmbedError::Other(format!(
                    "{provider} returned an empty vector for model {model}"
                )));
            }
            let known =
                match self
                    .0
                    .compare_exchange(0, v.len(), Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => v.len(),
                    Err(known) => known,
                };
            if v.len() != known {
                return Err(EmbedError::Other(format!(
                    "{provider} returned a {}-dimensional vector for model {model}, expected {known} \
                     (set `dim` to the model's dimension, or check that the model did not change)",
                    v.len()
                )));
            }
            normalize(v);
        }
        Ok(())
    }
}

pub(crate) fn normalize(v: &mut [f32]) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    for x in v.iter_mut() {
        *x = (*x as f64 / norm) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            timeout: Duration::from_secs(1),
            max_retries: 10,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(p.delay(0, None), Duration::from_millis(100));
        assert_eq!(p.delay(1, None), Duration::from_millis(200));
        assert_eq!(p.delay(3, None), Duration::from_millis(800));
        assert_eq!(p.delay(10, None), MAX_DELAY);
        assert_eq!(p.delay(40, None), MAX_DELAY);
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(p.delay(0, Some(Duration::from_secs(600))), MAX_DELAY);
    }

    #[test]
    fn urls_join_without_double_slashes() {
        assert_eq!(
            join_url("http://h:1/", "/api/embed"),
            "http://h:1/api/embed"
        );
        assert_eq!(join_url("http://h:1", "/api/embed"), "http://h:1/api/embed");
    }

    #[test]
    fn dim_is_learned_then_enforced_and_vectors_normalised() {
        let dim = Dim::new(None);
        let mut vs = vec![vec![3.0, 4.0]];
        dim.accept("p", "m", &mut vs).unwrap();
        assert_eq!(dim.get(), 2);
        assert!((vs[0][0] - 0.6).abs() < 1e-6 && (vs[0][1] - 0.8).abs() < 1e-6);
        let err = dim
            .accept("p", "m", &mut [vec![1.0, 2.0, 3.0]])
            .unwrap_err();
        assert!(
            matches!(err, EmbedError::Other(ref m) if m.contains("3-dimensional")),
            "{err:?}"
        );
        let fixed = Dim::new(Some(3));
        assert!(fixed.accept("p", "m", &mut [vec![1.0, 2.0]]).is_err());
    }

    #[test]
    fn long_bodies_are_cut() {
        let long = "x".repeat(1000);
        assert_eq!(snippet(long.as_bytes()).chars().count(), 301);
        assert_eq!(snippet(b"  "), "(empty body)");
    }
}
