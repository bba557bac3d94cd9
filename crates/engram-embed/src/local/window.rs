//! Pure logic of the local model's input side: cutting a token sequence into
//! overlapping windows, and grouping windows into batches that waste little padding.

/// Tokens in one window, `[CLS]` and `[SEP]` included: the model's `max_seq_length`
/// (sentence-transformers' `sentence_bert_config.json` says 256 for all-MiniLM-L6-v2).
pub const WINDOW_TOKENS: usize = 256;
/// Content tokens (without `[CLS]`/`[SEP]`) in one window.
pub const WINDOW_CONTENT: usize = WINDOW_TOKENS - 2;
/// How far the next window starts after the previous one, in content tokens; windows
/// therefore overlap by `WINDOW_CONTENT - WINDOW_STRIDE` = 54 tokens, so a sentence cut by
/// one window boundary is whole in the neighbouring window.
pub const WINDOW_STRIDE: usize = 200;

/// Splits `content` (token ids without special tokens) into windows of at most
/// `window_content` ids, each starting `stride` ids after the previous one, and wraps each
/// in `cls … sep`. A text that fits yields exactly one window, identical to what
/// sentence-transformers feeds the model after truncation; an empty text yields `[cls, sep]`.
pub fn windows(
    content: &[u32],
    cls: u32,
    sep: u32,
    window_content: usize,
    stride: usize,
) -> Vec<Vec<u32>> {
    assert!(window_content > 0 && stride > 0 && stride <= window_content);
    let wrap = |part: &[u32]| {
        let mut ids = Vec::with_capacity(part.len() + 2);
        ids.push(cls);
        ids.extend_from_slice(part);
        ids.push(sep);
        ids
    };
    if content.len() <= window_content {
        return vec![wrap(content)];
    }
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + window_content).min(content.len());
        out.push(wrap(&content[start..end]));
        if end == content.len() {
            break;
        }
        start += stride;
    }
    out
}

/// The first window only: what a query (or sentence-transformers' truncation) sees.
pub fn truncated(content: &[u32], cls: u32, sep: u32, window_content: usize) -> Vec<u32> {
    let end = content.len().min(window_content);
    let mut ids = Vec::with_capacity(end + 2);
    ids.push(cls);
    ids.extend_from_slice(&content[..end]);
    ids.push(sep);
    ids
}

/// Limits on one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Sequences per batch.
    pub max_sequences: usize,
    /// Tokens per batch (nothing is padded, so this bounds the activations' memory).
    pub max_tokens: usize,
}

/// Groups sequence indices into batches for `workers` parallel workers.
///
/// Sequences, sorted by length (longest first), are cut greedily into batches within
/// `limits`. With several workers the limits are first tightened to a `workers`-th (or a
/// smaller share) of the request, so that it makes at least one batch per worker, as many
/// as the sequences allow. Every index appears exactly once; a batch exceeds `max_tokens`
/// only when a single sequence does.
pub fn plan_batches(lengths: &[usize], limits: BatchLimits, workers: usize) -> Vec<Vec<usize>> {
    let n = lengths.len();
    if n == 0 {
        return Vec::new();
    }
    let mut max_sequences = limits.max_sequences.max(1);
    let mut max_tokens = limits.max_tokens.max(1);
    if workers > 1 {
        let tokens: usize = lengths.iter().sum();
        let longest = lengths.iter().copied().max().unwrap_or(1);
        let needed = n.div_ceil(max_sequences).max(tokens.div_ceil(max_tokens));
        let target = (needed.max(workers).div_ceil(workers) * workers).min(n);
        max_sequences = max_sequences.min(n.div_ceil(target));
        max_tokens = max_tokens.min(tokens.div_ceil(target).max(longest));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches = Vec::new();
    let mut batch: Vec<usize> = Vec::new();
    let mut batch_tokens = 0;
    for i in order {
        let fits = batch.len() < max_sequences && batch_tokens + lengths[i] <= max_tokens;
        if !batch.is_empty() && !fits {
            batches.push(std::mem::take(&mut batch));
            batch_tokens = 0;
        }
        batch_tokens += lengths[i];
        batch.push(i);
    }
    batches.push(batch);
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_window_like_truncation() {
        let content: Vec<u32> = (1000..1010).collect();
        let w = windows(&content, 101, 102, 254, 200);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0], truncated(&content, 101, 102, 254));
        assert_eq!(w[0].first(), Some(&101));
        assert_eq!(w[0].last(), Some(&102));
        assert_eq!(w[0].len(), 12);
    }

    #[test]
    fn empty_text_is_cls_sep() {
        assert_eq!(windows(&[], 101, 102, 254, 200), vec![vec![101, 102]]);
        assert_eq!(truncated(&[], 101, 102, 254), vec![101, 102]);
    }

    #[test]
    fn long_text_windows_overlap_and_cover_everything() {
        let content: Vec<u32> = (0..1000).collect();
        let w = windows(&content, 7, 8, 254, 200);
        // starts at 0, 200, 400, 600, 800 (800 + 254 > 1000 ends it).
        assert_eq!(w.len(), 5);
        for (i, win) in w.iter().enumerate() {
            assert!(win.len() <= 256);
            assert_eq!(win[0], 7);
            assert_eq!(*win.last().unwrap(), 8);
            assert_eq!(win[1], (i * 200) as u32);
        }
        let mut seen = vec![false; 1000];
        for win in &w {
            for &t in &win[1..win.len() - 1] {
                seen[t as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        // Consecutive windows share WINDOW_CONTENT - WINDOW_STRIDE tokens.
        assert_eq!(w[0][1 + 200..255], w[1][1..55]);
    }

    #[test]
    fn exactly_one_window_plus_one_token_gives_two_windows() {
        let content: Vec<u32> = (0..255).collect();
        let w = windows(&content, 1, 2, 254, 200);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1][1], 200);
        assert_eq!(w[1].len(), 55 + 2);
    }

    #[test]
    fn truncation_keeps_the_first_window() {
        let content: Vec<u32> = (0..600).collect();
        let t = truncated(&content, 1, 2, 254);
        assert_eq!(t.len(), 256);
        assert_eq!(t[1..255], content[..254]);
    }

    fn check(lengths: &[usize], limits: BatchLimits, workers: usize) -> Vec<Vec<usize>> {
        let batches = plan_batches(lengths, limits, workers);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(
            all,
            (0..lengths.len()).collect::<Vec<_>>(),
            "every index once"
        );
        for b in &batches {
            assert!(!b.is_empty() && b.len() <= limits.max_sequences);
            let tokens: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(
                tokens <= limits.max_tokens || b.len() == 1,
                "{b:?} has {tokens} tokens"
            );
        }
        batches
    }

    #[test]
    fn batches_respect_limits_and_cover_all_indices() {
        let lengths = vec![5, 256, 17, 3, 256, 40, 12, 12, 200, 9];
        let limits = BatchLimits {
            max_sequences: 3,
            max_tokens: 520,
        };
        for workers in 1..=4 {
            check(&lengths, limits, workers);
        }
        let batches = check(&lengths, limits, 1);
        // Longest first, greedy: [256, 256], [200, 40, 17], [12, 12, 9], [5, 3].
        assert_eq!(
            batches,
            vec![vec![1, 4], vec![8, 5, 2], vec![6, 7, 9], vec![0, 3]]
        );
    }

    #[test]
    fn work_is_shared_evenly_among_workers() {
        let short = vec![15; 32];
        let limits = BatchLimits {
            max_sequences: 32,
            max_tokens: 1024,
        };
        assert_eq!(check(&short, limits, 1).len(), 1);
        let two = check(&short, limits, 2);
        assert_eq!(two.iter().map(Vec::len).collect::<Vec<_>>(), vec![16, 16]);
        // 16 passages of 256 tokens: 4 batches by the token limit, already a multiple of 2.
        let long = vec![256; 16];
        let four = check(&long, limits, 2);
        assert_eq!(
            four.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 4, 4]
        );
        // 3 batches needed with 2 workers: tightened towards 4, so both workers stay busy.
        let ten = vec![256; 10];
        assert!(check(&ten, limits, 2).len() >= 4);
        // Never more batches than sequences.
        assert_eq!(check(&[7], limits, 8).len(), 1);
        assert_eq!(check(&[7, 9, 11], limits, 8).len(), 3);
    }

    #[test]
    fn uneven_lengths_still_give_every_worker_a_batch() {
        let mut lengths = vec![200, 180];
        lengths.extend(std::iter::repeat_n(10, 38));
        let limits = BatchLimits {
            max_sequences: 64,
            max_tokens: 4096,
        };
        assert_eq!(check(&lengths, limits, 1).len(), 1);
        let batches = check(&lengths, limits, 2);
        assert!(batches.len() >= 2);
        let sums: Vec<usize> = batches
            .iter()
            .map(|b| b.iter().map(|&i| lengths[i]).sum())
            .collect();
        assert!(sums.iter().all(|&t| t <= 380), "{sums:?}");
    }

    #[test]
    fn oversized_single_sequence_still_gets_a_batch() {
        assert_eq!(
            plan_batches(
                &[300],
                BatchLimits {
                    max_sequences: 4,
                    max_tokens: 100
                },
                1
            ),
            vec![vec![0]]
        );
    }

    #[test]
    fn no_sequences_no_batches() {
        assert!(plan_batches(
            &[],
            BatchLimits {
                max_sequences: 4,
                max_tokens: 100
            },
            2
        )
        .is_empty());
    }
}
