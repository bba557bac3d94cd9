//! Near-duplicate collapse. Content is normalised (lowercased, punctuation stripped,
//! whitespace collapsed) and cut into overlapping word 3-grams (shingles), each hashed to a
//! `u64` (from per-word hashes, so each word is hashed once); two candidates are near-duplicates when the Jaccard similarity of their shingle
//! sets is at least [`NEAR_DUPLICATE_JACCARD`]. Equal normalised content gives equal sets.
//!
//! Pairs are found with the prefix filter of set-similarity joins rather than by comparing
//! every pair: with each set sorted by hash, two sets of similarity ≥ t share a hash among
//! the first `n − ⌈t·n⌉ + 1` of each. Only kept candidates' prefixes are indexed, and a pair
//! found that way is verified exactly, after a length-ratio check (`min/max ≥ t` is
//! necessary), stopping as soon as too few hashes are left to reach the threshold.

use std::collections::HashMap;

use super::Candidate;

/// Candidates whose shingle sets have at least this Jaccard similarity are near-duplicates.
pub const NEAR_DUPLICATE_JACCARD: f64 = 0.8;

/// Words per shingle; content with fewer words is one shingle.
const SHINGLE_WORDS: usize = 3;

/// Collapses near-duplicates. `candidates` come best first; each one either joins the best
/// kept candidate it near-duplicates (its source id is listed in that one's duplicates) or is
/// kept. Returns the kept candidates, in order, with their duplicates.
pub(super) fn collapse(candidates: Vec<Candidate>) -> Vec<(Candidate, Vec<String>)> {
    let mut kept: Vec<(Candidate, Vec<String>, Vec<u64>)> = Vec::new();
    let mut by_prefix_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut probed_by: Vec<usize> = Vec::new(); // per kept candidate: the last candidate probing it
    for (i, c) in candidates.into_iter().enumerate() {
        let set = shingles(&c.content);
        let prefix = &set[..prefix_len(set.len())];
        let mut probes: Vec<usize> = prefix
            .iter()
            .filter_map(|h| by_prefix_hash.get(h))
            .flatten()
            .copied()
            .filter(|&k| std::mem::replace(&mut probed_by[k], i) != i)
            .collect();
        probes.sort_unstable(); // the best kept candidate first
        match probes.into_iter().find(|&k| similar(&kept[k].2, &set)) {
            Some(k) => {
                let (best, duplicates, _) = &mut kept[k];
                if best.source_id != c.source_id && !duplicates.contains(&c.source_id) {
                    duplicates.push(c.source_id);
                }
            }
            None => {
                for &h in prefix {
                    by_prefix_hash.entry(h).or_default().push(kept.len());
                }
                probed_by.push(i);
                kept.push((c, Vec::new(), set));
            }
        }
    }
    kept.into_iter().map(|(c, d, _)| (c, d)).collect()
}

/// The sorted, deduplicated shingle hashes of `content`'s normalised words.
fn shingles(content: &str) -> Vec<u64> {
    let words: Vec<u64> = content.split_whitespace().filter_map(word_hash).collect();
    let shingle = |w: &[u64]| {
        w.iter()
            .fold(w.len() as u64, |h, &x| mix(h.rotate_left(23) ^ x))
    };
    let mut set: Vec<u64> = if words.len() < SHINGLE_WORDS {
        vec![shingle(&words)]
    } else {
        words.windows(SHINGLE_WORDS).map(shingle).collect()
    };
    set.sort_unstable();
    set.dedup();
    set
}

/// FNV-1a of the word lowercased without its punctuation; `None` if nothing is left.
fn word_hash(word: &str) -> Option<u64> {
    let fnv = |hash: u64, b: u8| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut empty = true;
    if word.is_ascii() {
        for b in word.bytes().filter(|b| !b.is_ascii_punctuation()) {
            (hash, empty) = (fnv(hash, b.to_ascii_lowercase()), false);
        }
    } else {
        let chars = word.chars().filter(|&c| !is_punctuation(c));
        for c in chars.flat_map(char::to_lowercase) {
            for &b in c.encode_utf8(&mut [0; 4]).as_bytes() {
                (hash, empty) = (fnv(hash, b), false);
            }
        }
    }
    (!empty).then_some(hash)
}

/// The splitmix64 finaliser: spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// ASCII punctuation and symbols, and the common Unicode punctuation (dashes, quotes,
/// ellipsis, CJK and full-width marks). Emoji and letters of every script stay.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c,
            '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{205E}' | '\u{3001}'..='\u{3003}'
            | '\u{3008}'..='\u{3011}' | '\u{FF01}'..='\u{FF0F}'
            | '¡' | '§' | '«' | '¶' | '·' | '»' | '¿')
}

/// How many of a sorted set's first hashes to index or probe: at least `n − ⌈t·n⌉ + 1`
/// (flooring instead of ceiling only lengthens it, which stays correct).
fn prefix_len(n: usize) -> usize {
    (n - (n as f64 * NEAR_DUPLICATE_JACCARD).floor() as usize + 1).min(n)
}

fn similar(a: &[u64], b: &[u64]) -> bool {
    let (la, lb) = (a.len(), b.len());
    if (la.min(lb) as f64) < NEAR_DUPLICATE_JACCARD * la.max(lb) as f64 {
        return false;
    }
    // J ≥ t ⇔ shared ≥ t·(la + lb)/(1 + t); give up once that is out of reach (floored, so
    // rounding never gives up too early).
    let needed =
        (NEAR_DUPLICATE_JACCARD * (la + lb) as f64 / (1.0 + NEAR_DUPLICATE_JACCARD)) as usize;
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < la && j < lb {
        if shared + (la - i).min(lb - j) < needed {
            return false;
        }
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => (i, j, shared) = (i + 1, j + 1, shared + 1),
        }
    }
    shared as f64 >= NEAR_DUPLICATE_JACCARD * (la + lb - shared) as f64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn jaccard(a: &[u64], b: &[u64]) -> f64 {
        let shared = a.iter().filter(|h| b.contains(h)).count();
        shared as f64 / (a.len() + b.len() - shared) as f64
    }

    #[test]
    fn normalisation_ignores_case_punctuation_and_spacing() {
        assert_eq!(
            shingles("The user prefers dark mode!"),
            shingles("the user\n  prefers “dark” mode…")
        );
        assert_ne!(shingles("🦀 crab"), shingles("🧠 crab"));
        assert_ne!(
            shingles("the user prefers dark mode"),
            shingles("the user prefers light mode")
        );
    }

    fn text(words: &[u8]) -> String {
        words
            .iter()
            .map(|w| format!("w{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest! {
        #[test]
        fn collapse_matches_an_all_pairs_comparison(texts in proptest::collection::vec(proptest::collection::vec(0u8..5, 0..10), 0..25)) {
            let candidates: Vec<Candidate> = texts.iter().enumerate().map(|(i, ws)| Candidate {
                tier: super::super::Tier::LongTerm,
                kind: "memory".into(),
                content: text(ws),
                relevance: 0.5,
                source_id: format!("s{i}"),
            }).collect();
            let mut expected: Vec<(String, Vec<String>, Vec<u64>)> = Vec::new();
            for c in &candidates {
                let set = shingles(&c.content);
                match expected.iter_mut().find(|k| jaccard(&k.2, &set) >= NEAR_DUPLICATE_JACCARD) {
                    Some(k) => k.1.push(c.source_id.clone()),
                    None => expected.push((c.source_id.clone(), Vec::new(), set)),
                }
            }
            let got: Vec<(String, Vec<String>)> = collapse(candidates).into_iter().map(|(c, d)| (c.source_id, d)).collect();
            let expected: Vec<(String, Vec<String>)> = expected.into_iter().map(|(s, d, _)| (s, d)).collect();
            prop_assert_eq!(got, expected);
        }

        // The prefix filter finds exactly the pairs an all-pairs comparison would.
        #[test]
        fn prefix_filter_misses_no_similar_pair(
            a in proptest::collection::vec(0u8..12, 0..30),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..12), 0..4),
        ) {
            let mut b = a.clone();
            for (at, w) in edits {
                if !b.is_empty() {
                    let i = at.index(b.len());
                    b[i] = w;
                }
            }
            let (sa, sb) = (shingles(&text(&a)), shingles(&text(&b)));
            let expected = jaccard(&sa, &sb) >= NEAR_DUPLICATE_JACCARD;
            prop_assert_eq!(similar(&sa, &sb), expected);
            let shares_prefix = sa[..prefix_len(sa.len())].iter().any(|h| sb[..prefix_len(sb.len())].contains(h));
            prop_assert!(!expected || shares_prefix);
        }
    }
}
