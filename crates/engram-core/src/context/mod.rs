//! Context assembly: packing candidate snippets from the memory tiers into prompt-ready
//! text within a token budget. Pure logic; gathering the candidates is someone else's job.
//!
//! **Guarantee:** `Assembled::total_tokens` is the exact token count of
//! `Assembled::rendered` with the budget's tokenizer, and it is at most `max_tokens`,
//! headings and citations included. A chunk's content is the candidate's content unaltered,
//! unless the chunk is marked `truncated`.
//!
//! The algorithm, in [`assemble`]:
//! 1. Drop blank candidates; read a NaN relevance as 0.
//! 2. Collapse near-duplicates (`dedup`): of a group, the most relevant candidate stays and
//!    lists the others' source ids in `duplicates`.
//! 3. Select, operational candidates first, then the rest by relevance across tiers. Each
//!    candidate's rendered line (`[source_id] content\n`) is counted once, with a counter
//!    that gives up as soon as the line is over the room left (`tokens::count_capped`), and
//!    is taken if it fits both the budget (less the heading of its tier, if that is still
//!    to come) and its tier's quota; otherwise it is skipped, never cut, and smaller ones
//!    after it may still fit.
//! 4. Only if nothing fits, the best candidate is cut at a token boundary to fit and marked
//!    `truncated`.
//! 5. Render grouped by tier under a heading, each tier's chunks by relevance. The text's
//!    count is the sum of its headings' and lines' counts: every line ends with a newline
//!    and begins with `[` or `#`, where both tokenizers always start a new piece
//!    (the `tokens` module gives the argument; a property test checks it).
//!
//! Quotas cap the sum of a tier's chunk lines; headings count against `max_tokens` only.

mod dedup;
mod tokens;

use std::collections::BTreeMap;

pub use dedup::NEAR_DUPLICATE_JACCARD;

use crate::error::CoreError;
use tokens::{count, count_capped, longest_prefix};

/// The largest budget a caller may ask for.
pub const MAX_TOKENS_LIMIT: u32 = 200_000;

/// Which tokenizer counts the budget: OpenAI's cl100k_base or o200k_base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenizerKind {
    Cl100k,
    O200k,
}

impl TokenizerKind {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "cl100k" => Ok(TokenizerKind::Cl100k),
            "o200k" => Ok(TokenizerKind::O200k),
            _ => Err(CoreError::validation(
                "tokenizer",
                format!("unknown tokenizer {s:?}; use \"cl100k\" (GPT-4, GPT-3.5) or \"o200k\" (GPT-4o and later)"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenizerKind::Cl100k => "cl100k",
            TokenizerKind::O200k => "o200k",
        }
    }
}

/// The memory tiers, in render order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    Operational,
    Working,
    LongTerm,
    Knowledge,
}

impl Tier {
    pub const ALL: [Tier; 4] = [
        Tier::Operational,
        Tier::Working,
        Tier::LongTerm,
        Tier::Knowledge,
    ];

    /// Parses a tier name; `field` names the request field in the error (`"tiers[2]"`).
    pub fn parse(s: &str, field: &str) -> Result<Self, CoreError> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                CoreError::validation(
                    field,
                    format!(
                        "unknown tier {s:?}; use one of operational, working, long_term, knowledge"
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Operational => "operational",
            Tier::Working => "working",
            Tier::LongTerm => "long_term",
            Tier::Knowledge => "knowledge",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Tier::Operational => "## Operational (now)\n",
            Tier::Working => "## Working\n",
            Tier::LongTerm => "## Long-term\n",
            Tier::Knowledge => "## Knowledge\n",
        }
    }
}

/// A snippet that may go into the context.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub tier: Tier,
    pub kind: String,
    pub content: String,
    pub relevance: f32,
    pub source_id: String,
}

/// How much context to assemble. Build it with [`Budget::new`], which validates it;
/// [`assemble`] keeps its guarantee for any value (a `max_tokens` of 0 gives empty text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub max_tokens: u32,
    /// Optional caps on the sum of a tier's chunk tokens.
    pub quotas: BTreeMap<Tier, u32>,
    pub tokenizer: TokenizerKind,
}

impl Budget {
    /// Rejects `max_tokens` outside `1..=MAX_TOKENS_LIMIT` and quotas outside `1..=max_tokens`.
    pub fn new(
        max_tokens: u32,
        quotas: BTreeMap<Tier, u32>,
        tokenizer: TokenizerKind,
    ) -> Result<Self, CoreError> {
        if !(1..=MAX_TOKENS_LIMIT).contains(&max_tokens) {
            return Err(CoreError::validation(
                "max_tokens",
                format!("max_tokens must be between 1 and {MAX_TOKENS_LIMIT}, got {max_tokens}"),
            ));
        }
        if let Some((tier, quota)) = quotas.iter().find(|(_, q)| !(1..=max_tokens).contains(*q)) {
            let tier = tier.as_str();
            return Err(CoreError::validation(
                format!("quotas.{tier}"),
                format!(
                    "the quota for {tier} must be between 1 and max_tokens ({max_tokens}), got \
                     {quota}; leave {tier} out of quotas to cap it by max_tokens alone"
                ),
            ));
        }
        Ok(Budget {
            max_tokens,
            quotas,
            tokenizer,
        })
    }
}

/// A candidate placed in the context.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub tier: Tier,
    pub kind: String,
    pub content: String,
    pub relevance: f32,
    /// Tokens of the chunk's rendered line (citation and newline included).
    pub tokens: u32,
    pub source_id: String,
    /// The content was cut to fit: only ever the single chunk of a context nothing else fit.
    pub truncated: bool,
    /// Source ids of near-duplicates collapsed into this chunk.
    pub duplicates: Vec<String>,
}

/// The packed context.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembled {
    /// In render order: by tier, then by relevance.
    pub chunks: Vec<Chunk>,
    /// The exact token count of `rendered`; at most the budget's `max_tokens`.
    pub total_tokens: u32,
    pub rendered: String,
}

/// Packs `candidates` into at most `budget.max_tokens` tokens (see the module docs).
pub fn assemble(candidates: Vec<Candidate>, budget: &Budget) -> Assembled {
    let bpe = budget.tokenizer.bpe();
    let mut candidates: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| !c.content.trim().is_empty())
        .map(|c| Candidate {
            relevance: if c.relevance.is_nan() {
                0.0
            } else {
                c.relevance
            },
            ..c
        })
        .collect();
    // Best first (ties: tier order, then input order) for the collapse; then, stably,
    // operational first for the selection.
    candidates.sort_by(|a, b| {
        b.relevance
            .total_cmp(&a.relevance)
            .then(a.tier.cmp(&b.tier))
    });
    let mut candidates = dedup::collapse(candidates);
    candidates.sort_by_key(|(c, _)| c.tier != Tier::Operational);

    let headings = Tier::ALL.map(|t| count(bpe, t.heading()));
    let mut chunks = select(&candidates, budget, &headings);
    if chunks.is_empty() {
        chunks.extend(
            candidates
                .iter()
                .find_map(|(c, dups)| truncated(c, dups, budget)),
        );
    }
    // Every line ends with a newline and begins with `[` (its citation) or `#` (a
    // heading), so no regex piece of either tokenizer spans two lines (see the `tokens` module):
    // the text's count is the sum of its lines' counts, each taken when it was selected.
    chunks.sort_by_key(|c| c.tier); // stable: each tier keeps its relevance order
    let rendered = render(&chunks);
    // One heading per tier group (the chunks are sorted by tier), plus every line.
    let total_tokens = chunks
        .chunk_by(|a, b| a.tier == b.tier)
        .map(|group| headings[group[0].tier as usize])
        .chain(chunks.iter().map(|c| c.tokens))
        .sum();
    Assembled {
        chunks,
        total_tokens,
        rendered,
    }
}

/// Takes each candidate, in order, whose line fits the room left and its tier's quota.
fn select(
    candidates: &[(Candidate, Vec<String>)],
    budget: &Budget,
    headings: &[u32; 4],
) -> Vec<Chunk> {
    let bpe = budget.tokenizer.bpe();
    let mut used = 0u32;
    let mut tier_used: [Option<u32>; 4] = [None; 4]; // None: the tier has no chunk yet
    let mut chunks = Vec::new();
    for (c, duplicates) in candidates {
        let t = c.tier as usize;
        let heading = if tier_used[t].is_some() {
            0
        } else {
            headings[t]
        };
        let Some(room) = budget.max_tokens.checked_sub(used.saturating_add(heading)) else {
            continue;
        };
        let quota_left = budget
            .quotas
            .get(&c.tier)
            .map_or(u32::MAX, |q| q.saturating_sub(tier_used[t].unwrap_or(0)));
        let Some(tokens) = count_capped(bpe, &line(&c.source_id, &c.content), room.min(quota_left))
        else {
            continue;
        };
        used += heading + tokens;
        tier_used[t] = Some(tier_used[t].unwrap_or(0) + tokens);
        chunks.push(chunk(c, duplicates, c.content.clone(), tokens, false));
    }
    chunks
}

/// `c` cut to the longest token prefix whose line fits its quota and whose rendering, alone
/// under its heading, fits the budget; `None` if not even one token of it fits.
fn truncated(c: &Candidate, duplicates: &[String], budget: &Budget) -> Option<Chunk> {
    let bpe = budget.tokenizer.bpe();
    let quota = budget.quotas.get(&c.tier).copied().unwrap_or(u32::MAX);
    let excess = |prefix: &str| {
        let line = line(&c.source_id, prefix);
        let over_quota = count(bpe, &line).saturating_sub(quota);
        let over_budget =
            count(bpe, &(c.tier.heading().to_owned() + &line)).saturating_sub(budget.max_tokens);
        over_quota.max(over_budget)
    };
    if excess("") > 0 {
        return None; // not even the heading and citation fit: spare encoding the content
    }
    let content = longest_prefix(bpe, &c.content, budget.max_tokens, excess)?;
    let tokens = count(bpe, &line(&c.source_id, &content));
    Some(chunk(c, duplicates, content, tokens, true))
}

fn chunk(
    c: &Candidate,
    duplicates: &[String],
    content: String,
    tokens: u32,
    truncated: bool,
) -> Chunk {
    Chunk {
        tier: c.tier,
        kind: c.kind.clone(),
        content,
        relevance: c.relevance,
        tokens,
        source_id: c.source_id.clone(),
        truncated,
        duplicates: duplicates.to_vec(),
    }
}

fn line(source_id: &str, content: &str) -> String {
    format!("[{source_id}] {content}\n")
}

/// Each tier that has chunks, in tier order: its heading, then its chunks' lines in the
/// order given.
fn render(chunks: &[Chunk]) -> String {
    let mut out = String::new();
    for tier in Tier::ALL {
        let mut group = chunks.iter().filter(|c| c.tier == tier).peekable();
        if group.peek().is_some() {
            out.push_str(tier.heading());
        }
        for c in group {
            out.push_str(&line(&c.source_id, &c.content));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cand(tier: Tier, source_id: &str, relevance: f32, content: &str) -> Candidate {
        Candidate {
            tier,
            kind: "memory".into(),
            content: content.into(),
            relevance,
            source_id: source_id.into(),
        }
    }

    fn budget(max_tokens: u32, quotas: &[(Tier, u32)]) -> Budget {
        Budget::new(
            max_tokens,
            quotas.iter().copied().collect(),
            TokenizerKind::Cl100k,
        )
        .unwrap()
    }

    fn ids(a: &Assembled) -> Vec<&str> {
        a.chunks.iter().map(|c| c.source_id.as_str()).collect()
    }

    fn field(e: CoreError) -> String {
        e.field().unwrap().to_string()
    }

    #[test]
    fn names_parse_and_print() {
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.as_str(), "tiers[0]"), Ok(t));
        }
        for k in [TokenizerKind::Cl100k, TokenizerKind::O200k] {
            assert_eq!(TokenizerKind::parse(k.as_str()), Ok(k));
        }
        assert_eq!(
            field(Tier::parse("long-term", "tiers[2]").unwrap_err()),
            "tiers[2]"
        );
        assert_eq!(
            field(TokenizerKind::parse("gpt2").unwrap_err()),
            "tokenizer"
        );
    }

    #[test]
    fn invalid_budgets_name_the_field() {
        let err = |max, quotas: &[(Tier, u32)]| {
            field(
                Budget::new(max, quotas.iter().copied().collect(), TokenizerKind::O200k)
                    .unwrap_err(),
            )
        };
        assert_eq!(err(0, &[]), "max_tokens");
        assert_eq!(err(MAX_TOKENS_LIMIT + 1, &[]), "max_tokens");
        assert_eq!(err(100, &[(Tier::Working, 0)]), "quotas.working");
        assert_eq!(
            err(100, &[(Tier::Working, 5), (Tier::LongTerm, 101)]),
            "quotas.long_term"
        );
        assert!(Budget::new(
            MAX_TOKENS_LIMIT,
            BTreeMap::from([(Tier::Knowledge, 1)]),
            TokenizerKind::O200k
        )
        .is_ok());
    }

    #[test]
    fn renders_operational_first_then_tiers_in_order_each_by_relevance() {
        let a = assemble(
            vec![
                cand(Tier::Knowledge, "k:1", 0.9, "Rust moves values by default."),
                cand(Tier::LongTerm, "m:1", 0.5, "The user lives in Lyon."),
                cand(
                    Tier::Operational,
                    "task:1",
                    0.1,
                    "Deploy is blocked on review.",
                ),
                cand(Tier::LongTerm, "m:2", 0.7, "The user prefers dark mode."),
                cand(
                    Tier::Working,
                    "w:1",
                    f32::NAN,
                    "We are editing the billing page.",
                ),
                cand(Tier::Working, "w:2", 0.2, "   \n"),
            ],
            &budget(1000, &[]),
        );
        assert_eq!(
            a.rendered,
            "## Operational (now)\n[task:1] Deploy is blocked on review.\n\
             ## Working\n[w:1] We are editing the billing page.\n\
             ## Long-term\n[m:2] The user prefers dark mode.\n[m:1] The user lives in Lyon.\n\
             ## Knowledge\n[k:1] Rust moves values by default.\n"
        );
        assert_eq!(ids(&a), ["task:1", "w:1", "m:2", "m:1", "k:1"]);
        assert_eq!(a.chunks[1].relevance, 0.0);
        let bpe = TokenizerKind::Cl100k.bpe();
        assert_eq!(a.total_tokens, count(bpe, &a.rendered));
        let headings: u32 = Tier::ALL.iter().map(|t| count(bpe, t.heading())).sum();
        assert_eq!(
            a.chunks.iter().map(|c| c.tokens).sum::<u32>() + headings,
            a.total_tokens
        );
    }

    #[test]
    fn operational_candidates_are_taken_before_more_relevant_ones() {
        let op = cand(
            Tier::Operational,
            "op",
            0.0,
            "Current task: ship the context endpoint.",
        );
        let lt = cand(
            Tier::LongTerm,
            "lt",
            1.0,
            "Context endpoints pack memories into prompts.",
        );
        let one = assemble(vec![lt.clone(), op.clone()], &budget(1000, &[])).chunks[0].tokens;
        let a = assemble(vec![lt, op], &budget(one + 8, &[]));
        assert_eq!(ids(&a), ["op"]);
    }

    #[test]
    fn a_quota_caps_its_tier_only() {
        let texts = [
            "alpha beta gamma",
            "delta epsilon zeta",
            "eta theta iota",
            "kappa lambda mu",
        ];
        let mut cs: Vec<Candidate> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| cand(Tier::LongTerm, &format!("lt:{i}"), 0.9 - i as f32 / 10.0, t))
            .collect();
        cs.push(cand(Tier::Working, "w:0", 0.1, "nu xi omicron"));
        let line = count(TokenizerKind::Cl100k.bpe(), "[lt:0] alpha beta gamma\n");
        let a = assemble(cs, &budget(1000, &[(Tier::LongTerm, 2 * line + 1)]));
        assert_eq!(ids(&a), ["w:0", "lt:0", "lt:1"]);
        let long_term: u32 = a
            .chunks
            .iter()
            .filter(|c| c.tier == Tier::LongTerm)
            .map(|c| c.tokens)
            .sum();
        assert!(long_term <= 2 * line + 1);
    }

    #[test]
    fn a_chunk_that_does_not_fit_is_skipped_whole_and_smaller_ones_still_go_in() {
        let big = cand(
            Tier::LongTerm,
            "big",
            0.9,
            &"the deployment failed because of a timeout ".repeat(40),
        );
        let small = cand(Tier::LongTerm, "small", 0.5, "Retry later.");
        let a = assemble(vec![big, small], &budget(40, &[]));
        assert_eq!(ids(&a), ["small"]);
        assert!(!a.chunks[0].truncated);
        assert_eq!(a.chunks[0].content, "Retry later.");
    }

    #[test]
    fn only_when_nothing_fits_the_best_candidate_is_truncated() {
        let text = "the deployment failed because of a timeout ".repeat(40);
        let a = assemble(
            vec![
                cand(Tier::Knowledge, "worse", 0.2, &text),
                cand(Tier::LongTerm, "best", 0.9, &text),
            ],
            &budget(30, &[]),
        );
        assert_eq!(ids(&a), ["best"]);
        let c = &a.chunks[0];
        assert!(c.truncated && text.starts_with(&c.content) && c.content.len() < text.len());
        assert!(
            a.total_tokens <= 30 && a.total_tokens >= 25,
            "{}",
            a.total_tokens
        );

        // A quota binds the cut too; a budget smaller than the heading gives nothing.
        let a = assemble(
            vec![cand(Tier::LongTerm, "best", 0.9, &text)],
            &budget(30, &[(Tier::LongTerm, 10)]),
        );
        assert!(a.chunks[0].truncated && a.chunks[0].tokens <= 10);
        let a = assemble(
            vec![cand(Tier::LongTerm, "best", 0.9, &text)],
            &budget(3, &[]),
        );
        assert_eq!(
            (a.chunks.len(), a.total_tokens, a.rendered.as_str()),
            (0, 0, "")
        );
    }

    #[test]
    fn near_duplicates_collapse_into_the_most_relevant() {
        let sentence = "the user asked to keep weekly reports short and to send them on friday mornings before ten";
        let a = assemble(
            vec![
                cand(Tier::Working, "w:1", 0.4, "The user prefers DARK mode!"),
                cand(Tier::LongTerm, "m:1", 0.8, "the user prefers dark   mode"),
                cand(Tier::LongTerm, "m:2", 0.3, sentence),
                cand(
                    Tier::Knowledge,
                    "k:1",
                    0.6,
                    &sentence.replace("ten", "eleven"),
                ),
                cand(Tier::Working, "m:2", 0.2, sentence), // the same memory from another tier
                cand(Tier::LongTerm, "m:3", 0.5, "the user prefers light mode"),
            ],
            &budget(1000, &[]),
        );
        assert_eq!(ids(&a), ["m:1", "m:3", "k:1"]);
        assert_eq!(a.chunks[0].duplicates, ["w:1"]);
        assert_eq!(a.chunks[2].duplicates, ["m:2"]);
        assert!(a.chunks[1].duplicates.is_empty());
    }

    fn content() -> impl Strategy<Value = String> {
        let words = [
            "memory",
            "the",
            "user",
            "prefers",
            "dark",
            "mode",
            "🦀",
            "日本語",
            "naïve",
            "can't",
            "42",
            "…",
            "\n",
        ];
        prop_oneof![
            "\\PC{0,120}",
            "[a-z]{50,400}",
            proptest::collection::vec(proptest::sample::select(words.to_vec()), 0..150)
                .prop_map(|w| w.join(" ")),
            ("[a-zA-Z ]{1,20}", 1usize..60).prop_map(|(s, n)| s.repeat(n)),
            Just("🦀🧠👩‍👩‍👧".repeat(30)),
        ]
    }

    fn tier() -> impl Strategy<Value = Tier> {
        proptest::sample::select(Tier::ALL.to_vec())
    }

    fn inputs() -> impl Strategy<Value = (Vec<Candidate>, Budget)> {
        let candidates = proptest::collection::vec(
            (
                tier(),
                content(),
                prop_oneof![9 => 0.0f32..1.0, 1 => Just(f32::NAN)],
            ),
            0..30,
        )
        .prop_map(|cs| {
            cs.into_iter()
                .enumerate()
                .map(|(i, (tier, content, relevance))| {
                    cand(tier, &format!("src:{i}"), relevance, &content)
                })
                .collect()
        });
        let budget = (
            prop_oneof![1u32..=80, 1u32..=5000],
            proptest::collection::btree_map(tier(), 1u32..=5000, 0..3),
            prop_oneof![Just(TokenizerKind::Cl100k), Just(TokenizerKind::O200k)],
        )
            .prop_map(|(max, quotas, kind)| {
                let quotas = quotas.into_iter().map(|(t, q)| (t, q.min(max))).collect();
                Budget::new(max, quotas, kind).unwrap()
            });
        (candidates, budget)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(192))]

        #[test]
        fn the_budget_is_never_exceeded_and_content_is_never_altered((candidates, budget) in inputs()) {
            let bpe = budget.tokenizer.bpe();
            let a = assemble(candidates.clone(), &budget);
            prop_assert_eq!(count(bpe, &a.rendered), a.total_tokens);
            prop_assert!(a.total_tokens <= budget.max_tokens);
            let truncated = a.chunks.iter().filter(|c| c.truncated).count();
            prop_assert!(truncated == 0 || a.chunks.len() == 1);
            for c in &a.chunks {
                let line = line(&c.source_id, &c.content);
                prop_assert!(a.rendered.contains(&line));
                prop_assert_eq!(count(bpe, &line), c.tokens);
                let original = candidates.iter().find(|o| o.source_id == c.source_id).unwrap();
                if c.truncated {
                    prop_assert!(original.content.starts_with(&c.content));
                } else {
                    prop_assert_eq!(&c.content, &original.content);
                }
            }
            for (tier, quota) in &budget.quotas {
                let used: u32 = a.chunks.iter().filter(|c| c.tier == *tier).map(|c| c.tokens).sum();
                prop_assert!(used <= *quota);
            }
            for pair in a.chunks.windows(2) {
                prop_assert!(pair[0].tier < pair[1].tier || (pair[0].tier == pair[1].tier && pair[0].relevance >= pair[1].relevance));
            }
        }
    }
}
