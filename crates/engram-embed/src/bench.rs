//! Raw speed of the local model, for `engram bench embed` and the `bench_raw` example.
//! Not run by `cargo test`.

use std::time::{Duration, Instant};

use engram_core::embed::EmbedError;

use crate::local::LocalEmbedder;

/// What to measure and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchOptions {
    /// Minimum time spent on each workload (after one warm-up call).
    pub min_time: Duration,
    /// Sentences per call in the short-sentence workload.
    pub sentence_batch: usize,
    /// 256-token passages per call in the passage workload.
    pub passage_batch: usize,
    /// Single-query calls timed for the latency percentiles.
    pub queries: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            min_time: Duration::from_secs(3),
            sentence_batch: 32,
            passage_batch: 16,
            queries: 60,
        }
    }
}

/// Results; each figure covers the whole path (tokenising, batching, forward, pooling).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// ~12-word sentences per second, `sentence_batch` per call.
    pub sentences_per_sec: f64,
    /// Mean tokens per sentence (with `[CLS]`/`[SEP]`).
    pub sentence_tokens: f64,
    /// 256-token passages per second, `passage_batch` per call.
    pub passages_per_sec: f64,
    /// One 10-word query: median and 90th percentile latency.
    pub query_p50_ms: f64,
    pub query_p90_ms: f64,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "short sentences: {:.0}/s ({:.1} tokens each); 256-token passages: {:.1}/s; one 10-word query: p50 {:.2} ms, p90 {:.2} ms",
            self.sentences_per_sec, self.sentence_tokens, self.passages_per_sec, self.query_p50_ms, self.query_p90_ms
        )
    }
}

const WORDS: &[&str] = &[
    "memory",
    "agent",
    "remembers",
    "the",
    "user",
    "prefers",
    "dark",
    "mode",
    "and",
    "short",
    "answers",
    "project",
    "deadline",
    "moved",
    "to",
    "friday",
    "after",
    "meeting",
    "with",
    "design",
    "team",
    "database",
    "migration",
    "failed",
    "because",
    "of",
    "a",
    "missing",
    "index",
    "on",
    "orders",
    "table",
    "coffee",
    "is",
    "best",
    "without",
    "sugar",
    "in",
    "morning",
    "she",
    "lives",
    "near",
    "river",
    "works",
    "at",
    "hospital",
    "as",
    "nurse",
    "weekend",
    "hiking",
    "trip",
    "was",
    "cancelled",
    "due",
    "rain",
    "server",
    "logs",
    "show",
    "timeouts",
    "from",
    "payment",
    "service",
    "every",
    "night",
    "around",
    "midnight",
    "when",
    "backup",
    "runs",
    "new",
    "laptop",
    "arrives",
    "next",
    "week",
    "please",
    "remind",
    "me",
    "call",
    "mother",
    "birthday",
    "gift",
    "ideas",
    "include",
    "books",
    "about",
    "gardening",
    "history",
    "travel",
];

/// `count` deterministic pseudo-random sentences of `words` words.
pub fn sentences(count: usize, words: usize, seed: u64) -> Vec<String> {
    let mut state = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..count)
        .map(|_| {
            let mut s = Vec::with_capacity(words);
            for _ in 0..words {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                s.push(WORDS[(state >> 33) as usize % WORDS.len()]);
            }
            let mut text = s.join(" ");
            text.push('.');
            text
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Measures `embedder` (blocking; run it on a blocking thread). Passages are cut at 256
/// tokens (sentence-transformers' truncation), so each is exactly one full window.
pub fn bench_raw(embedder: &LocalEmbedder, opts: BenchOptions) -> Result<BenchReport, EmbedError> {
    // Short sentences.
    let pool = sentences(opts.sentence_batch * 16, 12, 1);
    let sentence_tokens = pool
        .iter()
        .map(|s| embedder.tokenize(s).map(|t| t.len() + 2))
        .sum::<Result<usize, _>>()? as f64
        / pool.len() as f64;
    let chunks: Vec<Vec<&str>> = pool
        .chunks(opts.sentence_batch)
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    embedder.embed_truncated_blocking(&chunks[0])?;
    let (mut done, mut round, started) = (0usize, 0usize, Instant::now());
    while started.elapsed() < opts.min_time || round < 3 {
        let batch = &chunks[round % chunks.len()];
        embedder.embed_truncated_blocking(batch)?;
        done += batch.len();
        round += 1;
    }
    let sentences_per_sec = done as f64 / started.elapsed().as_secs_f64();

    // 256-token passages.
    let passages: Vec<String> = (0..opts.passage_batch * 4)
        .map(|i| sentences(30, 12, 100 + i as u64).join(" "))
        .collect();
    let chunks: Vec<Vec<&str>> = passages
        .chunks(opts.passage_batch)
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    embedder.embed_truncated_blocking(&chunks[0])?;
    let (mut done, mut round, started) = (0usize, 0usize, Instant::now());
    while started.elapsed() < opts.min_time || round < 2 {
        let batch = &chunks[round % chunks.len()];
        embedder.embed_truncated_blocking(batch)?;
        done += batch.len();
        round += 1;
    }
    let passages_per_sec = done as f64 / started.elapsed().as_secs_f64();

    // One 10-word query at a time.
    let queries = sentences(opts.queries.max(1), 10, 7);
    embedder.embed_truncated_blocking(&[queries[0].as_str()])?;
    let mut times: Vec<f64> = queries
        .iter()
        .map(|q| {
            let t = Instant::now();
            embedder
                .embed_truncated_blocking(&[q.as_str()])
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);

    Ok(BenchReport {
        sentences_per_sec,
        sentence_tokens,
        passages_per_sec,
        query_p50_ms: percentile(&times, 0.5),
        query_p90_ms: percentile(&times, 0.9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_deterministic_and_sized() {
        let a = sentences(5, 12, 3);
        assert_eq!(a, sentences(5, 12, 3));
        assert_ne!(a, sentences(5, 12, 4));
        assert!(a
            .iter()
            .all(|s| s.split(' ').count() == 12 && s.ends_with('.')));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=11).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 6.0);
        assert_eq!(percentile(&v, 0.9), 10.0);
        assert_eq!(percentile(&[3.0], 0.9), 3.0);
    }
}
