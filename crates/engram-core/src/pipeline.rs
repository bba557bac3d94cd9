//! The embedding pipeline: workers claim pending memories in batches, reuse cached vectors
//! for content already embedded, embed the rest, and store the vectors with the status in
//! one transaction. Failures back off exponentially; a sweeper re-queues the work of
//! crashed workers. The store's `embedding_status` column is the queue: no broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::instrument;

use crate::embed::{EmbedError, Embedder, ModelInfo};
use crate::error::StoreError;
use crate::memory::content_hash;
use crate::ports::{ContextVector, EmbeddingJob, EmbeddingStore, SessionTurn};
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
    /// Turns on each side of a session's memory embedded with it as its context vector
    /// (0: no context vectors). Only memories with a `session_id` have one.
    pub context_turns: usize,
    /// Sessions claimed together for context work.
    pub context_batch: u32,
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
            context_turns: 2,
            context_batch: 8,
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

    /// Brings the context vectors of up to `context_batch` queued sessions up to date:
    /// each memory's window (its session's `context_turns` turns on each side, of the same
    /// user) is embedded when its text changed since its vector was made. Memory vectors
    /// come first: the worker runs this only when no memory waits. Returns the sessions
    /// worked on (0: nothing to do).
    #[instrument(skip_all)]
    pub async fn run_context_batch(&self) -> Result<usize, StoreError> {
        if self.cfg.context_turns == 0 {
            return Ok(0);
        }
        let lease_until = now() + chrono_dur(self.cfg.lease);
        let jobs = self
            .store
            .claim_contexts(self.cfg.context_batch, lease_until)
            .await?;
        for job in &jobs {
            let turns = self.store.session_turns(job, &self.model).await?;
            let stale: Vec<(usize, String, String)> = windows(&turns, self.cfg.context_turns)
                .into_iter()
                .enumerate()
                // A window of the turn alone adds nothing to the turn's own vector.
                .filter(|(i, text)| *text != turns[*i].content)
                .filter_map(|(i, text)| {
                    let hash = content_hash(&text);
                    (turns[i].context_hash.as_deref() != Some(hash.as_str()))
                        .then_some((i, text, hash))
                })
                .collect();
            let mut vectors = Vec::with_capacity(stale.len());
            let hashes: Vec<String> = stale.iter().map(|s| s.1.clone()).collect();
            let cached = self.store.cached_embeddings(&self.model, &hashes).await?;
            let mut misses = Vec::new();
            for (i, text, hash) in stale {
                match cached.get(&hash).and_then(|w| mean_unit(w)) {
                    Some(v) => vectors.push(ContextVector {
                        memory_id: turns[i].memory_id,
                        context_hash: hash,
                        vector: v,
                    }),
                    None => misses.push((i, text, hash)),
                }
            }
            for chunk in misses.chunks(self.cfg.batch_size.max(1) as usize) {
                // Identical windows (repeated turns) are embedded once.
                let mut texts: Vec<String> = Vec::new();
                let mut slot: Vec<usize> = Vec::with_capacity(chunk.len());
                for m in chunk {
                    match texts.iter().position(|t| *t == m.1) {
                        Some(i) => slot.push(i),
                        None => {
                            slot.push(texts.len());
                            texts.push(m.1.clone());
                        }
                    }
                }
                let docs = match self.embedder.embed_documents(&texts).await {
                    Ok(d) if d.len() == texts.len() => d,
                    Ok(_) | Err(_) => {
                        // Left queued under its lease: claimed again once the lease expires.
                        tracing::warn!(session = %job.session_id, "context embedding failed");
                        metrics::counter!("engram_context_failures_total").increment(1);
                        return Ok(jobs.len());
                    }
                };
                for ((i, _, hash), s) in chunk.iter().zip(slot) {
                    if let Some(v) = mean_unit(&docs[s].windows) {
                        vectors.push(ContextVector {
                            memory_id: turns[*i].memory_id,
                            context_hash: hash.clone(),
                            vector: v,
                        });
                    }
                }
            }
            metrics::counter!("engram_context_vectors_total").increment(vectors.len() as u64);
            self.store
                .complete_context(job, &self.model, vectors)
                .await?;
        }
        Ok(jobs.len())
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
                Ok(r) if r.claimed > 0 => false,
                Ok(_) => match self.run_context_batch().await {
                    Ok(n) => n == 0,
                    Err(e) => {
                        tracing::warn!(error = %e, "context batch failed");
                        true
                    }
                },
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

/// The window text of each turn: the turns of the same user within `side` places on each
/// side of it, in session order, one per line.
pub fn windows(turns: &[SessionTurn], side: usize) -> Vec<String> {
    // Positions of each user's turns, so a window never mixes two users' memories.
    let mut by_user: std::collections::HashMap<Option<&str>, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, t) in turns.iter().enumerate() {
        by_user.entry(t.user_id.as_deref()).or_default().push(i);
    }
    let mut out = vec![String::new(); turns.len()];
    for positions in by_user.values() {
        for (p, &i) in positions.iter().enumerate() {
            let from = p.saturating_sub(side);
            let to = (p + side + 1).min(positions.len());
            out[i] = positions[from..to]
                .iter()
                .map(|&j| turns[j].content.as_str())
                .collect::<Vec<_>>()
                .join("\n");
        }
    }
    out
}

/// The normalised mean of a document's window vectors (a long window text is one vector).
fn mean_unit(windows: &[Vec<f32>]) -> Option<Vec<f32>> {
    let first = windows.first()?;
    let mut sum = vec![0f32; first.len()];
    for w in windows {
        for (s, x) in sum.iter_mut().zip(w) {
            *s += x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return None;
    }
    Some(sum.into_iter().map(|x| x / norm).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MemoryId;

    fn turn(user: Option<&str>, content: &str) -> SessionTurn {
        SessionTurn {
            memory_id: MemoryId::new(),
            user_id: user.map(str::to_owned),
            content: content.into(),
            context_hash: None,
        }
    }

    #[test]
    fn windows_span_turns_of_the_same_user_on_each_side() {
        let turns = vec![
            turn(None, "a"),
            turn(None, "b"),
            turn(Some("u"), "x"),
            turn(None, "c"),
            turn(None, "d"),
            turn(Some("u"), "y"),
        ];
        let w = windows(&turns, 1);
        assert_eq!(
            w,
            vec!["a\nb", "a\nb\nc", "x\ny", "b\nc\nd", "c\nd", "x\ny"]
        );
        assert_eq!(windows(&turns, 0)[1], "b");
        assert_eq!(windows(&turns, 9)[0], "a\nb\nc\nd");
        assert!(windows(&[], 2).is_empty());
    }

    #[test]
    fn a_long_window_is_the_unit_mean_of_its_parts() {
        let v = mean_unit(&[vec![1.0, 0.0], vec![0.0, 1.0]]).unwrap();
        assert!((v[0] - 0.70710677).abs() < 1e-6 && (v[1] - v[0]).abs() < 1e-6);
        assert!(mean_unit(&[vec![0.0, 0.0]]).is_none());
        assert!(mean_unit(&[]).is_none());
    }
}
