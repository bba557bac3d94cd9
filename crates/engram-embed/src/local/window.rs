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
pub fn windows(content: &[u32], cls: u32, sep: u32, window_content: usize, stride: usize) -> Vec<Vec<u32>> {
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
    /// Padded tokens per batch (sequences × longest); bounds the attention matrices' memory.
    pub max_tokens: usize,
}

/// Groups sequence indices into batches: sequences sorted by length (longest first), cut
/// greedily so each batch respects `limits`. Sorting keeps lengths within a batch close, so
/// the attention step (the only padded one) wastes little. Every index appears exactly once.
pub fn plan_batches(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let max_sequences = limits.max_sequences.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_max = 0;
    for i in order {
        let len = lengths[i];
        let new_max = current_max.max(len);
        let fits = current.len() < max_sequences && new_max * (current.len() + 1) <= limits.max_tokens;
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
            current_max = 0;
        }
        current_max = current_max.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
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

    #[test]
    fn batches_respect_limits_and_cover_all_indices() {
        let lengths = vec![5, 256, 17, 3, 256, 40, 12, 12, 200, 9];
        let limits = BatchLimits { max_sequences: 3, max_tokens: 520 };
        let batches = plan_batches(&lengths, limits);
        let mut all: Vec<usize> = batches.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            assert!(!b.is_empty() && b.len() <= 3);
            let max = b.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(max * b.len() <= 520 || b.len() == 1);
        }
        // Longest first, sorted: the two 256s share a batch (512 <= 520), 200 goes alone next.
        assert_eq!(batches[0], vec![1, 4]);
    }

    #[test]
    fn oversized_single_sequence_still_gets_a_batch() {
        let batches = plan_batches(&[300], BatchLimits { max_sequences: 4, max_tokens: 100 });
        assert_eq!(batches, vec![vec![0]]);
    }

    #[test]
    fn no_sequences_no_batches() {
        assert!(plan_batches(&[], BatchLimits { max_sequences: 4, max_tokens: 100 }).is_empty());
    }
}
