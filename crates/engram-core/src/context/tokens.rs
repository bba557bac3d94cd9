//! Token counting with the two BPEs tiktoken-rs bundles (its `*_singleton` functions build
//! each one once per process, in a `LazyLock`), and an exact counter that stops reading as
//! soon as a text is known to exceed a cap.
//!
//! Why a text can be counted piecewise: tiktoken first splits text with a regex into
//! pieces and encodes each piece on its own, so a token never spans two pieces. For both
//! cl100k_base and o200k_base, a space between two ASCII letters always starts a piece (no
//! letter piece takes a trailing space; the piece before ends at the letter) and the regexes
//! have no look-behind, so `count(a ++ b) == count(a) + count(b)` when `a` ends with a letter
//! and `b` starts with " " and a letter. Texts are counted in segments cut there.
//!
//! Why a context's lines can be counted apart (`count(a ++ b) == count(a) + count(b)` when
//! `a` ends with a newline and `b` starts with `[` or `#`): in both regexes, the only
//! alternatives that can match a newline are runs of whitespace and
//! ` ?[^\s\p{L}\p{N}]+[\r\n]*` (o200k: `[\r\n/]*`), and each ends at the last newline of
//! its run: none continues into a `[` or a `#`. The whitespace-with-newline alternative
//! (`\s*[\r\n]+`) comes before the one with a look-ahead (`\s+(?!\S)`), so what follows
//! `a` cannot change how `a` is cut either. So the pieces of `a ++ b` are those of `a`
//! then those of `b`, and BPE never merges across pieces.

use tiktoken_rs::CoreBPE;

use super::TokenizerKind;

/// The longest token of cl100k_base and of o200k_base is 128 bytes. With every token at
/// least one byte long, a text of `n` bytes has between `ceil(n / 128)` and `n` tokens.
const MAX_TOKEN_BYTES: usize = 128;

/// Segments are at least this long: long enough to make the per-call cost negligible,
/// short enough that a text far over the cap is rejected after reading little of it.
const SEGMENT_BYTES: usize = 256;

impl TokenizerKind {
    pub(super) fn bpe(self) -> &'static CoreBPE {
        match self {
            TokenizerKind::Cl100k => tiktoken_rs::cl100k_base_singleton(),
            TokenizerKind::O200k => tiktoken_rs::o200k_base_singleton(),
        }
    }
}

/// The exact token count of `text` (special-token strings count as ordinary text).
pub(super) fn count(bpe: &CoreBPE, text: &str) -> u32 {
    u32::try_from(bpe.count_ordinary(text)).unwrap_or(u32::MAX)
}

/// The exact token count of `text` if it is at most `cap`, else `None`, having read only
/// about as much of the text as `cap` tokens cover.
pub(super) fn count_capped(bpe: &CoreBPE, text: &str, cap: u32) -> Option<u32> {
    if text.len().div_ceil(MAX_TOKEN_BYTES) > cap as usize {
        return None;
    }
    let mut total = 0u32;
    let mut rest = text;
    while !rest.is_empty() {
        let (segment, tail) = rest.split_at(piece_boundary(rest));
        total = total.saturating_add(count(bpe, segment));
        if total > cap {
            return None;
        }
        rest = tail;
    }
    Some(total)
}

/// The first index from `SEGMENT_BYTES` on where `text` has a space between two ASCII
/// letters (the index of the space), else `text.len()`. ASCII bytes never occur inside a
/// multi-byte character, so the index is a char boundary.
fn piece_boundary(text: &str) -> usize {
    let b = text.as_bytes();
    (SEGMENT_BYTES..b.len().saturating_sub(1))
        .find(|&i| b[i] == b' ' && b[i - 1].is_ascii_alphabetic() && b[i + 1].is_ascii_alphabetic())
        .unwrap_or(b.len())
}

/// The longest prefix of `content`, cut at a token boundary (at most `max_tokens` of its
/// tokens) and decoding to valid UTF-8 that is not blank, for which `excess` is 0.
/// `excess(prefix)` tells by how many tokens a rendering with that prefix is over its limits.
pub(super) fn longest_prefix(
    bpe: &CoreBPE,
    content: &str,
    max_tokens: u32,
    excess: impl Fn(&str) -> u32,
) -> Option<String> {
    let tokens = bpe.encode_ordinary(content);
    let mut k = tokens.len().min(max_tokens as usize);
    while k > 0 {
        // A cut inside a multi-byte character does not decode: back off a token.
        let Ok(prefix) = bpe.decode(&tokens[..k]) else {
            k -= 1;
            continue;
        };
        if prefix.trim().is_empty() {
            return None; // every shorter prefix is blank too
        }
        match excess(&prefix) {
            0 => return Some(prefix),
            over => k = k.saturating_sub(over as usize),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn kinds() -> impl Strategy<Value = TokenizerKind> {
        prop_oneof![Just(TokenizerKind::Cl100k), Just(TokenizerKind::O200k)]
    }

    fn text() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            "[a-zA-Z]{1,12}",
            "[a-z]{30,200}",
            "[0-9]{1,8}",
            "[ .,;:'!?()\\-\n\t]{1,4}",
            "\\PC{1,6}",
            Just("🦀".to_string()),
            Just("can't".to_string()),
            Just("<|endoftext|>".to_string()),
        ];
        proptest::collection::vec(
            (
                word,
                prop_oneof![Just(" "), Just(""), Just("  "), Just("\n")],
            ),
            0..400,
        )
        .prop_map(|parts| parts.into_iter().map(|(w, sep)| w + sep).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn segmented_count_is_exact(kind in kinds(), text in text()) {
            let bpe = kind.bpe();
            let exact = count(bpe, &text);
            prop_assert_eq!(count_capped(bpe, &text, u32::MAX), Some(exact));
            prop_assert_eq!(count_capped(bpe, &text, exact), Some(exact));
            if exact > 0 {
                prop_assert_eq!(count_capped(bpe, &text, exact - 1), None);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn lines_count_apart(
            kind in kinds(),
            a in text(),
            a_end in prop_oneof![Just("\n"), Just(" \n"), Just("!\n"), Just("\r\n"), Just("\n\n"), Just("/\n")],
            b_start in prop_oneof![Just("["), Just("#"), Just("## "), Just("[1] "), Just("[[")],
            b in text(),
        ) {
            let bpe = kind.bpe();
            let (a, b) = (a + a_end, b_start.to_owned() + &b);
            prop_assert_eq!(count(bpe, &(a.clone() + &b)), count(bpe, &a) + count(bpe, &b));
        }
    }

    #[test]
    fn a_cap_stops_early_and_a_prefix_is_valid_utf8() {
        let bpe = TokenizerKind::Cl100k.bpe();
        let long = "memory ".repeat(10_000);
        assert_eq!(count_capped(bpe, &long, 10), None);
        assert_eq!(count_capped(bpe, "", 0), Some(0));

        // Each emoji is several tokens: most token prefixes end inside a character.
        let emoji = "🦀🧠🦀🧠🦀🧠";
        for max in 1..=count(bpe, emoji) {
            let prefix = longest_prefix(bpe, emoji, max, |_| 0).unwrap_or_default();
            assert!(emoji.starts_with(&prefix), "{prefix:?}");
            assert!(count(bpe, &prefix) <= max);
        }
        assert_eq!(
            longest_prefix(bpe, "one two three", 9, |p| u32::from(p.len() > 4)).as_deref(),
            Some("one")
        );
        assert_eq!(longest_prefix(bpe, "   x", 9, |_| 1), None);
    }
}
