//! The embedding pipeline: workers claim pending memories in batches, reuse cached vectors
//! for content already embedded, embed the rest, and store the vectors with the status in
//! one transaction. Failures back off exponentially; a sweeper re-queues the work of
//! crashed workers. The store's `embedding_status` column is the queue: no broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::instrument;

use crate::embed::{EmbedError, Embedder, ModelInfo};
use crate::error::StoreError;
use crate::ports::{EmbeddingJob, EmbeddingStore};
use crate::time::now;

/// Tuning of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Memories claimed and embedded together.
    pub batch_size: u32,
    /// How long a claim holds before the sweeper may give the work to another worker.
    pub lease: Duration,
    /// Retries after a failed first attempt before the memory is given up (stays `failed`).
    pub max_retries: u32,
    /// First retry delay; doubled for each later attempt.
    pub backoff: Duration,
    /// Failed memories are retried only while their failure is younger than this.
    pub retry_window: Duration,
    /// How often the sweeper runs.
    pub sweep_every: Duration,
    /// How long an idle worker waits before looking for work again.
    pub idle_poll: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: 32,
            lease: Duration::from_secs(120),
            max_retries: 3,
            backoff: Duration::from_secs(5),
            retry_window: Duration::from_secs(24 * 3600),
            sweep_every: Duration::from_secs(10),
            idle_poll: Duration::from_millis(100),
        }
    }
}

/// What one batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub completed: usize,
    pub cache_hits: usize,
    pub failed: usize,
    /// Results dropped because the memory changed or the claim was lost meanwhile.
    pub stale: usize,
}

#[derive(Clone)]
pub struct EmbeddingPipeline {
    store: Arc<dyn EmbeddingStore>,
    embedder: Arc<dyn Embedder>,
    model: ModelInfo,
    cfg: PipelineConfig,
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl EmbeddingPipeline {
    /// Registers the embedder's model with the store (the first model becomes active).
    /// Refuses to run a model that is not the active one: vectors of two models are never
    /// mixed; `reembed` switches models.
    pub async fn new(
        store: Arc<dyn EmbeddingStore>,
        embedder: Arc<dyn Embedder>,
        cfg: PipelineConfig,
    ) -> Result<Self, StoreError> {
        let model = embedder.model();
        store.register_model(&model).await?;
        if let Some(active) = store.active_model().await? {
            if active != model {
                return Err(StoreError::Conflict(format!(
                    "the configured embedding model {} is not the store's active model {}; run `engram reembed` to build its vectors and switch",
                    model.key(),
                    active.key()
                )));
            }
        }
        Ok(EmbeddingPipeline {
            store,
            embedder,
            model,
            cfg,
        })
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// Claims and processes one batch. Returns what happened (claimed = 0: nothing to do).
    #[instrument(skip_all)]
    pub async fn run_batch(&self) -> Result<BatchReport, StoreError> {
        let started = Instant::now();
        let lease_until = now() + chrono_dur(self.cfg.lease);
        let jobs = self
            .store
            .claim_embeddings(self.cfg.batch_size, lease_until)
            .await?;
        let mut report = BatchReport {
            claimed: jobs.len(),
            ..Default::default()
        };
        if jobs.is_empty() {
            return Ok(report);
        }
        let (mut results, misses) = from_cache(&*self.store, &self.model, jobs).await?;
        report.cache_hits = results.len();
        metrics::counter!("engram_embedding_cache_hits_total").increment(results.len() as u64);
        metrics::counter!("engram_embedding_cache_misses_total").increment(misses.len() as u64);
        if !misses.is_empty() {
            match embed_unique(&*self.embedder, &misses).await {
                Ok(vectors) => results.extend(misses.into_iter().zip(vectors)),
                Err(e) => report.failed += self.fail_all(&misses, &e).await?,
            }
        }
        if !results.is_empty() {
            let n = results.len();
            let applied = self
                .store
                .complete_embeddings(&self.model, results, now())
                .await?;
            let done = applied.iter().filter(|a| **a).count();
            report.completed = done;
            report.stale = n - done;
        }
        metrics::counter!("engram_embeddings_total").increment(report.completed as u64);
        metrics::counter!("engram_embedding_failures_total").increment(report.failed as u64);
        metrics::counter!("engram_embedding_stale_results_total").increment(report.stale as u64);
        metrics::histogram!("engram_embedding_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    async fn fail_all(&self, jobs: &[EmbeddingJob], e: &EmbedError) -> Result<usize, StoreError> {
        tracing::warn!(error = %e, jobs = jobs.len(), "embedding failed");
        let at = now();
        for j in jobs {
            // A rejected input will not get better by retrying.
            let retry = !matches!(e, EmbedError::Rejected(_)) && j.attempts <= self.cfg.max_retries;
            let retry_at = retry.then(|| {
                let factor = 1u32 << (j.attempts.saturating_sub(1)).min(16);
                at + chrono_dur(self.cfg.backoff * factor)
            });
            self.store
                .fail_embedding(j, &e.to_string(), retry_at, at)
                .await?;
        }
        Ok(jobs.len())
    }

    /// Re-queues expired leases and due retries.
    pub async fn sweep(&self) -> Result<crate::ports::SweepReport, StoreError> {
        let t = now();
        let r = self
            .store
            .sweep_embeddings(t, t - chrono_dur(self.cfg.retry_window))
            .await?;
        if r.expired_leases > 0 || r.retried > 0 {
            tracing::info!(
                expired_leases = r.expired_leases,
                retried = r.retried,
                "embedding sweep"
            );
        }
        for (status, n) in self.store.embedding_queue_depth().await? {
            metrics::gauge!("engram_embedding_queue_depth", "status" => status.as_str())
                .set(n as f64);
        }
        Ok(r)
    }

    /// Sweeps every `sweep_every` until `shutdown` resolves (one sweeper per process is
    /// enough, however many workers run). Store errors are logged and retried.
    pub async fn run_sweeper(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "embedding sweep failed");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.cfg.sweep_every) => {}
            }
        }
    }

    /// Works until `shutdown` resolves: batches back to back while there is work, polls
    /// when idle. Store errors are logged and retried. Run `run_sweeper` beside it.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(model = %self.model.key(), "embedding worker started");
        loop {
            let idle = match self.run_batch().await {
                Ok(r) => r.claimed == 0,
                Err(e) => {
                    tracing::warn!(error = %e, "embedding batch failed");
                    true
                }
            };
            if idle {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(self.cfg.idle_poll) => {}
                }
            } else if futures_poll_ready(&mut shutdown) {
                break;
            }
        }
        tracing::info!("embedding worker stopped");
    }
}

/// Whether `f` has completed, without waiting.
fn futures_poll_ready<F: std::future::Future<Output = ()> + Unpin>(f: &mut F) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    std::pin::Pin::new(f).poll(&mut cx).is_ready()
}

/// Splits jobs into those whose content is in the cache (with their vectors) and the rest.
async fn from_cache(
    store: &dyn EmbeddingStore,
    model: &ModelInfo,
    jobs: Vec<EmbeddingJob>,
) -> Result<(Vec<(EmbeddingJob, Vec<Vec<f32>>)>, Vec<EmbeddingJob>), StoreError> {
    let hashes: Vec<String> = jobs.iter().map(|j| j.content_hash.clone()).collect();
    let cached = store.cached_embeddings(model, &hashes).await?;
    let mut hits = Vec::new();
    let mut misses = Vec::new();
    for j in jobs {
        match cached.get(&j.content_hash) {
            Some(v) => {
                let v = v.clone();
                hits.push((j, v));
            }
            None => misses.push(j),
        }
    }
    Ok((hits, misses))
}

/// Embeds the jobs' contents, identical contents once; one entry of window vectors per
/// job, in order.
async fn embed_unique(
    embedder: &dyn Embedder,
    jobs: &[EmbeddingJob],
) -> Result<Vec<Vec<Vec<f32>>>, EmbedError> {
    let mut unique: Vec<String> = Vec::new();
    let mut slot_of = std::collections::HashMap::new();
    for j in jobs {
        slot_of.entry(j.content_hash.as_str()).or_insert_with(|| {
            unique.push(j.content.clone());
            unique.len() - 1
        });
    }
    let docs = embedder.embed_documents(&unique).await?;
    if docs.len() != unique.len() {
        return Err(EmbedError::Other(format!(
            "embedder returned {} results for {} inputs",
            docs.len(),
            unique.len()
        )));
    }
    Ok(jobs
        .iter()
        .map(|j| docs[slot_of[j.content_hash.as_str()]].windows.clone())
        .collect())
}

/// What `reembed` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReembedReport {
    pub embedded: usize,
    pub cache_hits: usize,
    /// Whether the model was already active before.
    pub was_active: bool,
}

/// Builds vectors of `embedder`'s model for every live memory beside the existing ones,
/// then makes it the active model in one transaction once none is missing. Memories
/// written meanwhile are picked up before the switch, so search never loses a memory.
pub async fn reembed(
    store: Arc<dyn EmbeddingStore>,
    embedder: Arc<dyn Embedder>,
    batch_size: u32,
    mut progress: impl FnMut(usize),
) -> Result<ReembedReport, CoreErrorOrEmbed> {
    let model = embedder.model();
    store.register_model(&model).await?;
    let mut report = ReembedReport {
        was_active: store.active_model().await?.as_ref() == Some(&model),
        ..Default::default()
    };
    loop {
        let jobs = store.missing_vectors(&model, batch_size.max(1)).await?;
        if jobs.is_empty() {
            if store.activate_model(&model, now()).await? == 0 {
                return Ok(report);
            }
            continue;
        }
        let (mut results, misses) = from_cache(&*store, &model, jobs).await?;
        report.cache_hits += results.len();
        if !misses.is_empty() {
            let vectors = embed_unique(&*embedder, &misses).await?;
            report.embedded += misses.len();
            results.extend(misses.into_iter().zip(vectors));
        }
        store.store_vectors(&model, results).await?;
        progress(report.embedded + report.cache_hits);
    }
}

/// Why `reembed` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoreErrorOrEmbed {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}
