//! The in-process embedder: sentence-transformers all-MiniLM-L6-v2 (weights read with candle;
//! the forward pass is in `bert`, its kernels in `ops`).

mod bert;
pub(crate) mod ops;
pub mod window;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use engram_core::embed::{DocumentEmbedding, EmbedError, Embedder, ModelInfo};
use tokenizers::Tokenizer;

use crate::config::LocalConfig;
use crate::locate::{sha256_file, ModelFiles, ModelLocator, MODEL_ID, MODEL_SHA256};
use bert::Bert;
use window::{plan_batches, truncated, windows, BatchLimits, WINDOW_CONTENT, WINDOW_STRIDE};

/// How the local model runs; the defaults come from [`LocalConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalRuntime {
    pub batch_size: usize,
    pub max_batch_tokens: usize,
    /// Threads (0: one per core).
    pub threads: usize,
    /// Several batches at once (one per thread) rather than one batch over all threads.
    pub parallel_batches: bool,
}

impl From<&LocalConfig> for LocalRuntime {
    fn from(cfg: &LocalConfig) -> Self {
        Self {
            batch_size: cfg.batch_size,
            max_batch_tokens: cfg.max_batch_tokens,
            threads: cfg.threads,
            parallel_batches: cfg.parallel_batches,
        }
    }
}

impl Default for LocalRuntime {
    fn default() -> Self {
        Self::from(&LocalConfig::default())
    }
}

/// all-MiniLM-L6-v2 (384-d), exactly as sentence-transformers computes it: BERT, mean
/// pooling over the attention mask, L2 normalisation, inputs truncated at 256 tokens.
///
/// Documents longer than one window (256 tokens with `[CLS]` and `[SEP]`) get one vector per
/// window; windows start every 200 tokens, so neighbours overlap by 54. Queries are
/// truncated to the first window. The work runs on a thread pool of its own, off the async
/// runtime; cheap to clone.
#[derive(Clone)]
pub struct LocalEmbedder {
    inner: Arc<Inner>,
}

struct Inner {
    model: Bert,
    tokenizer: Tokenizer,
    cls: u32,
    sep: u32,
    info: ModelInfo,
    dir: PathBuf,
    limits: BatchLimits,
    parallel_batches: bool,
    pool: rayon::ThreadPool,
    /// Forward passes run so far (for tests and metrics).
    batches_run: AtomicUsize,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEmbedder")
            .field("model", &self.inner.info)
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> EmbedError {
    EmbedError::Other(format!("local model ({MODEL_ID}): {what}: {e}"))
}

impl LocalEmbedder {
    /// Locates the model as the configuration says (downloading it if allowed) and loads it,
    /// on a blocking thread.
    pub async fn new(cfg: LocalConfig) -> Result<Self, EmbedError> {
        tokio::task::spawn_blocking(move || Self::load(&cfg))
            .await
            .map_err(|e| other("loading task failed", e))?
    }

    /// Blocking form of [`LocalEmbedder::new`].
    pub fn load(cfg: &LocalConfig) -> Result<Self, EmbedError> {
        let files = ModelLocator::from_config(cfg).locate()?;
        Self::from_files(&files, LocalRuntime::from(cfg))
    }

    /// Loads the model in `files.dir` (blocking).
    pub fn from_files(files: &ModelFiles, runtime: LocalRuntime) -> Result<Self, EmbedError> {
        Self::from_dir(&files.dir, runtime)
    }

    /// Loads the model in `dir` (blocking): `model.safetensors`, `tokenizer.json`, `config.json`.
    pub fn from_dir(dir: &Path, runtime: LocalRuntime) -> Result<Self, EmbedError> {
        let started = std::time::Instant::now();
        let unavailable = |what: String| {
            EmbedError::Unavailable(format!(
                "cannot load the embedding model from {}: {what}",
                dir.display()
            ))
        };
        let weights = dir.join("model.safetensors");
        let revision = sha256_file(&weights)
            .map_err(|e| unavailable(format!("{}: {e}", weights.display())))?;
        if revision != MODEL_SHA256 {
            tracing::warn!(
                path = %weights.display(),
                sha256 = %revision,
                expected = MODEL_SHA256,
                "model.safetensors is not the upstream {MODEL_ID} file; vectors are labelled with its hash"
            );
        }
        let model = Bert::load(dir).map_err(|e| unavailable(e.to_string()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| unavailable(format!("{}: {e}", tokenizer_path.display())))?;
        // The shipped tokenizer.json truncates and pads to 128; windows are cut here instead.
        tokenizer
            .with_truncation(None)
            .map_err(|e| unavailable(e.to_string()))?;
        tokenizer.with_padding(None);
        let id = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| unavailable(format!("tokenizer has no {tok}")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        if model.max_positions() < WINDOW_CONTENT + 2 {
            return Err(unavailable(format!(
                "the model has only {} positions",
                model.max_positions()
            )));
        }
        let threads = match runtime.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("engram-embed-{i}"))
            .build()
            .map_err(|e| unavailable(format!("cannot start threads: {e}")))?;
        let info = ModelInfo {
            id: MODEL_ID.to_string(),
            revision,
            dim: model.hidden_size(),
        };
        tracing::info!(dir = %dir.display(), threads, ms = started.elapsed().as_millis() as u64, "local embedding model loaded");
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                tokenizer,
                cls,
                sep,
                info,
                dir: dir.to_path_buf(),
                limits: BatchLimits {
                    max_sequences: runtime.batch_size.max(1),
                    max_tokens: runtime.max_batch_tokens.max(WINDOW_CONTENT + 2),
                },
                parallel_batches: runtime.parallel_batches && threads > 1,
                pool,
                batches_run: AtomicUsize::new(0),
            }),
        })
    }

    /// The directory the model was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Forward passes run since loading.
    pub fn batches_run(&self) -> usize {
        self.inner.batches_run.load(Ordering::Relaxed)
    }

    /// Token ids of `text` without special tokens.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        self.inner.content_ids(&[text]).map(|mut v| v.remove(0))
    }

    /// Blocking: one vector per window of each text (call from a blocking thread).
    pub fn embed_documents_blocking(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
        let inner = &self.inner;
        let ids = inner.content_ids(texts)?;
        let per_text: Vec<Vec<Vec<u32>>> = ids
            .iter()
            .map(|c| windows(c, inner.cls, inner.sep, WINDOW_CONTENT, WINDOW_STRIDE))
            .collect();
        let flat: Vec<&[u32]> = per_text.iter().flatten().map(|w| w.as_slice()).collect();
        let mut vectors = inner.run(&flat)?.into_iter();
        Ok(per_text
            .iter()
            .map(|ws| vectors.by_ref().take(ws.len()).collect())
            .collect())
    }

    /// Blocking: one vector per text, each truncated to the first window, as
    /// sentence-transformers' `encode` does.
    pub fn embed_truncated_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inner = &self.inner;
        let ids = inner.content_ids(texts)?;
        let seqs: Vec<Vec<u32>> = ids
            .iter()
            .map(|c| truncated(c, inner.cls, inner.sep, WINDOW_CONTENT))
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        inner.run(&refs)
    }
}

impl Inner {
    fn content_ids(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedError> {
        if texts.len() == 1 {
            let enc = self
                .tokenizer
                .encode(texts[0], false)
                .map_err(|e| other("tokenizing", e))?;
            return Ok(vec![enc.get_ids().to_vec()]);
        }
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| other("tokenizing", e))?;
        Ok(encs.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeds sequences (ids with special tokens), in input order.
    fn run(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let threads = self.pool.current_num_threads();
        let workers = if self.parallel_batches { threads } else { 1 };
        let batches = plan_batches(&lengths, self.limits, workers);
        let forward = |batch: &Vec<usize>, threads: usize| -> Result<Vec<Vec<f32>>, EmbedError> {
            let input: Vec<&[u32]> = batch.iter().map(|&i| seqs[i]).collect();
            self.batches_run.fetch_add(1, Ordering::Relaxed);
            self.model
                .embed(&input, threads)
                .map_err(|e| other("forward pass", e))
        };
        // The pool's size bounds the work in flight, whatever the number of requests.
        let results: Vec<Result<Vec<Vec<f32>>, EmbedError>> =
            if self.parallel_batches && batches.len() > 1 {
                // One batch per thread, each single-threaded inside.
                use rayon::prelude::*;
                self.pool.install(|| {
                    batches
                        .par_iter()
                        .with_max_len(1)
                        .map(|b| forward(b, 1))
                        .collect()
                })
            } else {
                // One batch at a time, its products and attention spread over the pool.
                self.pool
                    .install(|| batches.iter().map(|b| forward(b, threads)).collect())
            };
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); seqs.len()];
        for (batch, result) in batches.iter().zip(results) {
            for (&i, v) in batch.iter().zip(result?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn model(&self) -> ModelInfo {
        self.inner.info.clone()
    }

    async fn embed_documents(
        &self,
        texts: &[String],
    ) -> Result<Vec<DocumentEmbedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let this = self.clone();
        let texts = texts.to_vec();
        let windows = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            this.embed_documents_blocking(&refs)
        })
        .await
        .map_err(|e| other("embedding task failed", e))??;
        Ok(windows
            .into_iter()
            .map(|windows| DocumentEmbedding { windows })
            .collect())
    }

    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let this = self.clone();
        let text = text.to_string();
        let mut v =
            tokio::task::spawn_blocking(move || this.embed_truncated_blocking(&[text.as_str()]))
                .await
                .map_err(|e| other("embedding task failed", e))??;
        Ok(v.remove(0))
    }
}
