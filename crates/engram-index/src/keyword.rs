//! An in-memory BM25 keyword index: an inverted index from stemmed words to the
//! documents holding them, under `u64` keys, with BM25 ranking whose `k1` and `b` are
//! chosen per query.
//!
//! Words are what [`analyze`] makes of a text: runs of letters and digits, lower-cased,
//! diacritics removed, stemmed with the Snowball English stemmer. A document is a list of
//! fields (content, title, tags) scored as one: term frequency and length are counted over
//! all of them. Scoring is BM25 with `idf = ln((N − n + 0.5) / (n + 0.5))` (at least
//! 1e-6) over the live documents, as SQLite FTS5's `bm25()` computes it.
//!
//! Search is term-at-a-time into a per-thread accumulator: each query term's postings add
//! their share to the documents holding them, then the documents touched are cut to the
//! top `limit`, best first, ties broken by the smaller key; a predicate given to
//! [`KeywordIndex::search`] is asked only of documents that would enter the top `limit`.
//! Removing a document marks it dead and drops it from the statistics at once; its
//! postings are swept when dead documents outnumber a quarter of the index.
//!
//! ```
//! use engram_index::keyword::{Bm25Params, KeywordIndex};
//!
//! let mut ix = KeywordIndex::new();
//! ix.upsert(1, &["The cats were running home", "", ""]);
//! ix.upsert(2, &["A dog sleeps", "", "pets"]);
//! let hits = ix.search(&["cat", "runs"], Bm25Params::default(), 10, None);
//! assert_eq!(hits.len(), 1);
//! assert_eq!(hits[0].0, 1);
//! ix.remove(1);
//! assert!(ix.search(&["cat"], Bm25Params::default(), 10, None).is_empty());
//! ```

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use foldhash::fast::RandomState;

use rust_stemmers::{Algorithm, Stemmer};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::KeySlots;

/// BM25's free parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalisation: 0 ignores a document's length, 1 normalises fully.
    pub b: f32,
}

impl Default for Bm25Params {
    fn default() -> Self {
        Bm25Params { k1: 1.2, b: 0.75 }
    }
}

/// Calls `emit` with each word of `text` as the index stores it: lower-cased, without
/// diacritics, stemmed. The words pass through two buffers reused from word to word, so
/// analysing a text allocates nothing for words the stem cache holds.
pub fn analyze(text: &str, mut emit: impl FnMut(&str)) {
    let stemmer = Stemmer::create(Algorithm::English);
    let (mut folded, mut stemmed) = (String::new(), String::new());
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        folded.clear();
        if word.is_ascii() {
            folded.push_str(word);
            folded.make_ascii_lowercase();
        } else {
            let bare: String = word.nfd().filter(|c| !is_combining_mark(*c)).collect();
            folded.push_str(&bare.to_lowercase());
        }
        // A word that was all diacritics leaves nothing.
        if folded.is_empty() {
            continue;
        }
        stem_into(&stemmer, &folded, &mut stemmed);
        emit(&stemmed);
    }
}

/// Words whose stems each thread remembers: a direct-mapped cache, one entry per slot.
const STEM_CACHE_SLOTS: usize = 1 << 14;

/// A word and its stem.
type Stemmed = (Box<str>, Box<str>);

thread_local! {
    /// Recently stemmed words and their stems. Stemming was more than half the work of
    /// indexing a document, and the words of real text repeat (Zipf): a few thousand
    /// slots answer most of them. Bounded: at most `STEM_CACHE_SLOTS` words per thread
    /// (about 1 MB), on the threads that analyse text.
    static STEMS: RefCell<Vec<Option<Stemmed>>> = const { RefCell::new(Vec::new()) };
}

/// Longer words are stemmed every time (rare, and they would crowd the cache).
const STEM_CACHE_MAX_LEN: usize = 24;

/// Puts `stemmer`'s stem of the folded `word` in `out`, from this thread's cache when it
/// holds it.
fn stem_into(stemmer: &Stemmer, word: &str, out: &mut String) {
    out.clear();
    if word.len() > STEM_CACHE_MAX_LEN {
        out.push_str(&stemmer.stem(word));
        return;
    }
    // FNV-1a: a few instructions per byte, plenty for spreading words over slots.
    let hash = word.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let slot = (hash as usize) & (STEM_CACHE_SLOTS - 1);
    STEMS.with_borrow_mut(|cache| {
        if cache.is_empty() {
            cache.resize(STEM_CACHE_SLOTS, None);
        }
        if let Some((w, s)) = &cache[slot] {
            if **w == *word {
                out.push_str(s);
                return;
            }
        }
        let stemmed = stemmer.stem(word);
        out.push_str(&stemmed);
        cache[slot] = Some((word.into(), stemmed.as_ref().into()));
    })
}

/// Marks a dead slot in `lens`.
const DEAD: u32 = u32::MAX;
/// Dead slots tolerated before a sweep, at least.
const SWEEP_MIN: usize = 1024;

/// A number (a slot in a posting, a term in a forward list) and a term frequency, packed
/// into six bytes: the index holds one per word of every document twice, so this is most
/// of its memory. Frequencies saturate at 65,535 (engram's longest content, 50,000
/// characters, holds at most 25,000 words).
#[derive(Clone, Copy)]
#[repr(C, packed(2))]
struct Pair {
    id: u32,
    tf: u16,
}

impl Pair {
    fn new(id: u32, tf: u32) -> Pair {
        Pair {
            id,
            tf: u16::try_from(tf).unwrap_or(u16::MAX),
        }
    }

    fn id(self) -> u32 {
        self.id
    }

    fn tf(self) -> f32 {
        f32::from(self.tf)
    }
}

/// The inverted index. Not synchronised: wrap it in a lock to share it.
pub struct KeywordIndex {
    terms: HashMap<Box<str>, u32, RandomState>,
    /// Per term: (slot, frequency) of the documents holding it, dead ones included until
    /// the next sweep.
    postings: Vec<Vec<Pair>>,
    /// Live documents holding each term.
    df: Vec<u32>,
    /// Per slot: the document's length in words, or `DEAD`.
    lens: Vec<u32>,
    /// Per slot: the document's key.
    keys: Vec<u64>,
    /// Every slot's distinct terms, in term order, with their frequencies, one slot after
    /// the other (a dead slot's stay until the next sweep): slot `s`'s are
    /// `forward[forward_at[s]..forward_at[s + 1]]`. One vector rather than one
    /// allocation per document.
    forward: Vec<Pair>,
    forward_at: Vec<usize>,
    slots: KeySlots,
    total_len: u64,
    dead: usize,
}

impl Default for KeywordIndex {
    fn default() -> Self {
        KeywordIndex {
            terms: HashMap::default(),
            postings: Vec::new(),
            df: Vec::new(),
            lens: Vec::new(),
            keys: Vec::new(),
            forward: Vec::new(),
            forward_at: vec![0],
            slots: KeySlots::new(),
            total_len: 0,
            dead: 0,
        }
    }
}

/// Slot `s`'s entries of `forward` (see [`KeywordIndex::forward`]); a function of the two
/// fields rather than a method, so that other fields can be changed while it is read.
fn term_list<'a>(forward: &'a [Pair], forward_at: &[usize], s: usize) -> &'a [Pair] {
    &forward[forward_at[s]..forward_at[s + 1]]
}

/// A scored document, ordered so that the better one is greater.
#[derive(Clone, Copy, PartialEq)]
struct Ranked(f32, u64);
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(other.1.cmp(&self.1))
    }
}

thread_local! {
    /// Per-thread scores by slot, and the slots touched (reset after each search).
    static ACC: RefCell<(Vec<f32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Per-thread candidate set of `search_within`, a bit per slot (cleared after each).
    static MEMBERS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// `search_within` walks the postings when they are at most this many per candidate.
const WALK_PER_CANDIDATE: usize = 64;

impl KeywordIndex {
    pub fn new() -> KeywordIndex {
        KeywordIndex::default()
    }

    /// Live documents.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn contains(&self, key: u64) -> bool {
        self.slots.contains(key)
    }

    /// Indexes the document `key` as `fields`, replacing what it held before.
    pub fn upsert(&mut self, key: u64, fields: &[&str]) {
        self.remove(key);
        // (term, 1) per word, then merged into (term, frequency) in term order.
        let mut forward: Vec<(u32, u32)> = Vec::new();
        for f in fields {
            analyze(f, |w| {
                let t = self.term(w);
                forward.push((t, 1));
            });
        }
        let len = u32::try_from(forward.len()).unwrap_or(u32::MAX);
        forward.sort_unstable_by_key(|&(t, _)| t);
        forward.dedup_by(|next, kept| {
            let same = next.0 == kept.0;
            if same {
                kept.1 += next.1;
            }
            same
        });
        let slot = u32::try_from(self.lens.len()).expect("fewer than 2^32 documents");
        for &(t, tf) in &forward {
            self.postings[t as usize].push(Pair::new(slot, tf));
            self.df[t as usize] += 1;
            self.forward.push(Pair::new(t, tf));
        }
        self.forward_at.push(self.forward.len());
        self.lens.push(len);
        self.keys.push(key);
        self.slots.insert(key, slot);
        self.total_len += u64::from(len);
    }

    /// The id of the analysed word `word`, a new term when it is new.
    fn term(&mut self, word: &str) -> u32 {
        if let Some(&t) = self.terms.get(word) {
            return t;
        }
        let t = u32::try_from(self.postings.len()).expect("fewer than 2^32 terms");
        self.terms.insert(word.into(), t);
        self.postings.push(Vec::new());
        self.df.push(0);
        t
    }

    /// Drops the document `key`; false when it was not indexed.
    pub fn remove(&mut self, key: u64) -> bool {
        let Some(slot) = self.slots.remove(key) else {
            return false;
        };
        let s = slot as usize;
        for p in term_list(&self.forward, &self.forward_at, s) {
            self.df[p.id() as usize] -= 1;
        }
        self.total_len -= u64::from(self.lens[s]);
        self.lens[s] = DEAD;
        self.dead += 1;
        if self.dead >= SWEEP_MIN && self.dead * 4 > self.lens.len() {
            self.sweep();
        }
        true
    }

    /// Slot `s`'s distinct terms and their frequencies, in term order.
    fn forward_of(&self, s: usize) -> &[Pair] {
        term_list(&self.forward, &self.forward_at, s)
    }

    /// Gives back the spare capacity of every list: call after building from many
    /// documents (a list grown by doubling holds up to twice what it uses).
    pub fn shrink_to_fit(&mut self) {
        for list in &mut self.postings {
            list.shrink_to_fit();
        }
        self.postings.shrink_to_fit();
        self.df.shrink_to_fit();
        self.lens.shrink_to_fit();
        self.keys.shrink_to_fit();
        self.forward.shrink_to_fit();
        self.forward_at.shrink_to_fit();
        self.terms.shrink_to_fit();
        self.slots.shrink_to_fit();
    }

    /// Renumbers the live documents densely and drops the postings of dead ones.
    fn sweep(&mut self) {
        let mut renumber = vec![DEAD; self.lens.len()];
        let mut next: u32 = 0;
        for (s, &len) in self.lens.iter().enumerate() {
            if len != DEAD {
                renumber[s] = next;
                next += 1;
            }
        }
        for list in &mut self.postings {
            list.retain_mut(|p| {
                let to = renumber[p.id() as usize];
                p.id = to;
                to != DEAD
            });
        }
        let live = |s: &usize| renumber[*s] != DEAD;
        self.keys = (0..self.keys.len())
            .filter(live)
            .map(|s| self.keys[s])
            .collect();
        let mut forward = Vec::with_capacity(self.forward.len());
        let mut forward_at = Vec::with_capacity(next as usize + 1);
        forward_at.push(0);
        for s in (0..self.lens.len()).filter(live) {
            forward.extend_from_slice(self.forward_of(s));
            forward_at.push(forward.len());
        }
        (self.forward, self.forward_at) = (forward, forward_at);
        self.lens.retain(|&l| l != DEAD);
        self.slots.remap(|s| renumber[s as usize]);
        self.dead = 0;
    }

    /// The query's terms (a word repeated counts twice, as in FTS5) with their BM25
    /// weights, and the length normalisation of `params`.
    fn prepare(&self, words: &[&str], params: Bm25Params) -> Prepared {
        let mut terms: Vec<(u32, f32)> = Vec::new();
        let n = self.slots.len() as f64;
        let (k1, b) = (
            f64::from(params.k1.max(0.0)),
            f64::from(params.b.clamp(0.0, 1.0)),
        );
        for w in words {
            analyze(w, |a| {
                if let Some(&t) = self.terms.get(a) {
                    let df = f64::from(self.df[t as usize]);
                    let idf = ((n - df + 0.5) / (df + 0.5)).ln().max(1e-6);
                    terms.push((t, (idf * (k1 + 1.0)) as f32));
                }
            });
        }
        let avgdl = (self.total_len as f64 / n.max(1.0)).max(f64::MIN_POSITIVE);
        Prepared {
            terms,
            base: (k1 * (1.0 - b)) as f32,
            per_word: (k1 * b / avgdl) as f32,
        }
    }

    /// The best `limit` documents for `words` (raw query words, analysed here), best
    /// first, as (key, score). A document matches when it holds any of the words. `pass`,
    /// when given, must accept a document's key for it to be returned.
    pub fn search(
        &self,
        words: &[&str],
        params: Bm25Params,
        limit: usize,
        pass: Option<&dyn Fn(u64) -> bool>,
    ) -> Vec<(u64, f32)> {
        if self.slots.is_empty() || limit == 0 {
            return Vec::new();
        }
        let q = self.prepare(words, params);
        self.walk(&q, limit, pass, None)
    }

    /// Scores the postings of `q`'s terms, term at a time into this thread's accumulator,
    /// then cuts the top `limit` (asking `pass`, when given, of documents that would enter
    /// it). With `members`, a bit per slot, only the documents whose bit is set count.
    fn walk(
        &self,
        q: &Prepared,
        limit: usize,
        pass: Option<&dyn Fn(u64) -> bool>,
        members: Option<&[u64]>,
    ) -> Vec<(u64, f32)> {
        let top = ACC.with(|acc| {
            let (scores, touched) = &mut *acc.borrow_mut();
            if scores.len() < self.lens.len() {
                scores.resize(self.lens.len(), 0.0);
            }
            for &(t, lift) in &q.terms {
                for &p in &self.postings[t as usize] {
                    let s = p.id() as usize;
                    if members.is_some_and(|m| m[s / 64] & (1 << (s % 64)) == 0) {
                        continue;
                    }
                    let len = self.lens[s];
                    if len == DEAD {
                        continue;
                    }
                    let tf = p.tf();
                    let norm = q.base + q.per_word * len as f32;
                    if scores[s] == 0.0 {
                        touched.push(p.id());
                    }
                    scores[s] += lift * tf / (tf + norm);
                }
            }
            let mut top = TopK::new(limit);
            for &slot in touched.iter() {
                let s = slot as usize;
                // The key is another scattered read: `offer` reads it only for a score
                // that could enter.
                top.offer(std::mem::take(&mut scores[s]), || self.keys[s], pass);
            }
            touched.clear();
            top
        });
        top.into_sorted()
    }

    /// Like [`KeywordIndex::search`], over the documents of `keys` only (keys not indexed
    /// are ignored): the way to search within a selective filter. Few candidates against
    /// long postings are each scored from their own term list, so the work grows with the
    /// candidates, not with the postings; otherwise the postings are walked with the
    /// candidates as a bit per slot, which reads the postings in order and touches each
    /// candidate's entries once, where scoring one by one costs several scattered reads
    /// per candidate (a million documents: 10,000 candidates took 6.5 ms that way).
    pub fn search_within(
        &self,
        words: &[&str],
        params: Bm25Params,
        limit: usize,
        keys: &[u64],
    ) -> Vec<(u64, f32)> {
        if self.slots.is_empty() || limit == 0 || keys.is_empty() {
            return Vec::new();
        }
        let q = self.prepare(words, params);
        if q.terms.is_empty() {
            return Vec::new();
        }
        let postings: usize = q
            .terms
            .iter()
            .map(|&(t, _)| self.postings[t as usize].len())
            .sum();
        // One by one, a candidate costs a slot lookup and a binary search per query term,
        // a few hundred nanoseconds in a large index (scattered reads); a posting walked
        // in order with a bit test costs a few.
        if postings <= keys.len().saturating_mul(WALK_PER_CANDIDATE) {
            return MEMBERS.with(|bits| {
                let bits = &mut *bits.borrow_mut();
                let words = self.lens.len().div_ceil(64);
                if bits.len() < words {
                    bits.resize(words, 0);
                }
                let slots: Vec<usize> = keys
                    .iter()
                    .filter_map(|k| self.slots.get(*k).map(|s| s as usize))
                    .collect();
                for &s in &slots {
                    bits[s / 64] |= 1 << (s % 64);
                }
                let top = self.walk(&q, limit, None, Some(&bits[..words]));
                for &s in &slots {
                    bits[s / 64] = 0;
                }
                top
            });
        }
        let mut top = TopK::new(limit);
        for key in keys {
            let Some(slot) = self.slots.get(*key) else {
                continue;
            };
            let s = slot as usize;
            let forward = self.forward_of(s);
            let norm = q.base + q.per_word * self.lens[s] as f32;
            let mut score = 0.0f32;
            let mut any = false;
            for &(t, lift) in &q.terms {
                if let Ok(i) = forward.binary_search_by_key(&t, |p| p.id()) {
                    let tf = forward[i].tf();
                    score += lift * tf / (tf + norm);
                    any = true;
                }
            }
            if any {
                top.offer(score, || *key, None);
            }
        }
        top.into_sorted()
    }
}

/// A query ready to score: its terms with `idf · (k1 + 1)`, and per document
/// `k1 · (1 − b + b · len / avgdl)` = `base + per_word · len`.
struct Prepared {
    terms: Vec<(u32, f32)>,
    base: f32,
    per_word: f32,
}

/// The best `limit` documents offered.
struct TopK {
    limit: usize,
    heap: BinaryHeap<Reverse<Ranked>>,
}

impl TopK {
    fn new(limit: usize) -> TopK {
        TopK {
            limit,
            heap: BinaryHeap::with_capacity(limit.saturating_add(1).min(4096)),
        }
    }

    /// Keeps the document `key()` scoring `score` if it is among the best so far and
    /// `pass` (asked only then) accepts it. `key` is called only for a score at least the
    /// lowest kept (a tie goes to the smaller key).
    fn offer(&mut self, score: f32, key: impl FnOnce() -> u64, pass: Option<&dyn Fn(u64) -> bool>) {
        let full = self.heap.len() == self.limit;
        let min = self.heap.peek().filter(|_| full).map(|Reverse(min)| *min);
        if min.is_some_and(|min| score.total_cmp(&min.0).is_lt()) {
            return;
        }
        let r = Ranked(score, key());
        if min.is_some_and(|min| r <= min) {
            return;
        }
        if pass.is_some_and(|p| !p(r.1)) {
            return;
        }
        self.heap.push(Reverse(r));
        if self.heap.len() > self.limit {
            self.heap.pop();
        }
    }

    /// Best first.
    fn into_sorted(self) -> Vec<(u64, f32)> {
        let mut out: Vec<Ranked> = self.heap.into_iter().map(|Reverse(r)| r).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.into_iter().map(|r| (r.1, r.0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        analyze(text, |w| out.push(w.to_owned()));
        out
    }

    #[test]
    fn analysis_folds_case_and_diacritics_and_stems() {
        assert_eq!(
            words("Café RUNNING, runs; naïve-résumé 42x"),
            ["cafe", "run", "run", "naiv", "resum", "42x"]
        );
        assert!(words("  ...  ").is_empty());
    }

    /// The stem cache answers what the stemmer would, including for words that share a
    /// slot: far more distinct words than slots, each asked twice.
    #[test]
    fn cached_stems_are_the_stemmers_stems() {
        let stemmer = Stemmer::create(Algorithm::English);
        // Distinct words (a letter prefix spelling the number) with stemmable endings.
        let vocabulary: Vec<String> = (0..3 * STEM_CACHE_SLOTS)
            .map(|i| {
                let (mut n, mut prefix) = (i, String::new());
                loop {
                    prefix.push(char::from(b'a' + (n % 26) as u8));
                    n /= 26;
                    if n == 0 {
                        break;
                    }
                }
                let endings = ["running", "generously", "national", "hopefulness", "agreed"];
                prefix + endings[i % endings.len()]
            })
            .collect();
        for _ in 0..2 {
            for w in &vocabulary {
                let mut out = String::new();
                stem_into(&stemmer, w, &mut out);
                assert_eq!(out, stemmer.stem(w), "{w}");
            }
        }
    }

    /// BM25 computed naively over whole documents, for comparison.
    fn reference(docs: &[(u64, Vec<String>)], query: &[String], p: Bm25Params) -> Vec<(u64, f64)> {
        let n = docs.len() as f64;
        let avgdl = docs.iter().map(|d| d.1.len()).sum::<usize>() as f64 / n;
        let (k1, b) = (f64::from(p.k1), f64::from(p.b));
        let mut out: Vec<(u64, f64)> = docs
            .iter()
            .filter_map(|(key, doc)| {
                let mut score = 0.0;
                let mut any = false;
                for q in query {
                    let df = docs.iter().filter(|d| d.1.contains(q)).count() as f64;
                    let tf = doc.iter().filter(|w| *w == q).count() as f64;
                    if tf > 0.0 {
                        any = true;
                        let idf = ((n - df + 0.5) / (df + 0.5)).ln().max(1e-6);
                        let norm = k1 * (1.0 - b + b * doc.len() as f64 / avgdl);
                        score += idf * tf * (k1 + 1.0) / (tf + norm);
                    }
                }
                any.then_some((*key, score))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }

    /// A small deterministic pseudo-random generator.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    const VOCAB: [&str; 12] = [
        "alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper", "light", "green",
        "quick", "slow",
    ];

    #[test]
    fn a_frequency_past_what_a_posting_holds_saturates() {
        let mut ix = KeywordIndex::new();
        ix.upsert(1, &[&"echo ".repeat(70_000), "", ""]);
        ix.upsert(2, &[&"echo ".repeat(65_535), "", ""]);
        ix.upsert(3, &["echo once", "", ""]);
        let hits = ix.search(&["echo"], Bm25Params { k1: 1.2, b: 0.0 }, 10, None);
        assert_eq!(hits.len(), 3);
        // Without length normalisation, 70,000 and 65,535 occurrences score the same.
        let score = |k: u64| hits.iter().find(|h| h.0 == k).map(|h| h.1);
        assert_eq!(score(1), score(2));
        assert!(score(1) > score(3));
        assert!(hits.iter().all(|h| h.1.is_finite()));
    }

    #[test]
    fn scores_match_naive_bm25_through_updates_removals_and_sweeps() {
        let mut rng = Lcg(7);
        let mut ix = KeywordIndex::new();
        let mut docs: HashMap<u64, String> = HashMap::new();
        for step in 0..6000u64 {
            let key = rng.next(2500);
            if rng.next(5) == 0 {
                assert_eq!(ix.remove(key), docs.remove(&key).is_some());
            } else {
                let len = 1 + rng.next(12);
                let text: Vec<&str> = (0..len).map(|_| VOCAB[rng.next(12) as usize]).collect();
                let text = text.join(" ");
                ix.upsert(key, &[&text, "", if step % 3 == 0 { "paper" } else { "" }]);
                let full = format!("{text} {}", if step % 3 == 0 { "paper" } else { "" });
                docs.insert(key, full);
            }
            if step == 3000 {
                // Trimmed lists take further documents as before.
                ix.shrink_to_fit();
            }
        }
        assert_eq!(ix.len(), docs.len());
        let mut corpus: Vec<(u64, Vec<String>)> =
            docs.iter().map(|(k, t)| (*k, words(t))).collect();
        corpus.sort_by_key(|d| d.0);
        for (query, p) in [
            (vec!["river", "stone"], Bm25Params::default()),
            (vec!["paper"], Bm25Params { k1: 0.9, b: 0.2 }),
            (
                vec!["quick", "slow", "green", "alpha"],
                Bm25Params { k1: 2.0, b: 1.0 },
            ),
        ] {
            let q: Vec<String> = query.iter().map(|w| words(w)[0].clone()).collect();
            let want = reference(&corpus, &q, p);
            let got = ix.search(&query, p, 20, None);
            assert_eq!(got.len(), 20.min(want.len()));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (f64::from(g.1) - w.1).abs() < 1e-3 * w.1.max(1.0),
                    "{query:?}: {g:?} vs {w:?}"
                );
            }
            // Same order, up to scores equal within float error.
            let got_keys: Vec<u64> = got.iter().map(|g| g.0).collect();
            let want_keys: Vec<u64> = want.iter().take(got.len()).map(|w| w.0).collect();
            if got_keys != want_keys {
                for (g, w) in got.iter().zip(&want) {
                    assert!((f64::from(g.1) - w.1).abs() < 1e-4 * w.1.max(1.0));
                }
            }
        }
    }

    #[test]
    fn searching_within_keys_equals_searching_with_a_predicate() {
        let mut rng = Lcg(11);
        let mut ix = KeywordIndex::new();
        for key in 0..3000u64 {
            let len = 1 + rng.next(10);
            let text: Vec<&str> = (0..len).map(|_| VOCAB[rng.next(12) as usize]).collect();
            ix.upsert(key, &[&text.join(" ")]);
        }
        for key in (0..3000u64).step_by(7) {
            ix.remove(key);
        }
        let p = Bm25Params { k1: 1.2, b: 0.2 };
        // Few candidates (scored one by one), many (the postings walked with a bit per
        // candidate), keys not indexed, duplicates in the query.
        for (every, query) in [
            (100u64, vec!["river", "stone", "river"]),
            (3, vec!["quick", "green"]),
            (1, vec!["alpha"]),
            (50, vec!["absent", "cloud"]),
        ] {
            let keys: Vec<u64> = (0..4000u64).filter(|k| k % every == 0).collect();
            let member = |k: u64| k.is_multiple_of(every);
            let want = ix.search(&query, p, 15, Some(&member));
            let got = ix.search_within(&query, p, 15, &keys);
            assert_eq!(got.len(), want.len(), "{query:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "{query:?}");
                assert!((g.1 - w.1).abs() < 1e-5, "{g:?} vs {w:?}");
            }
        }
        assert!(ix.search_within(&["river"], p, 5, &[]).is_empty());
        assert!(ix.search_within(&["nothing"], p, 5, &[1, 2]).is_empty());
    }

    #[test]
    fn the_predicate_filters_inside_the_top_k() {
        let mut ix = KeywordIndex::new();
        for key in 0..100u64 {
            let text = if key < 90 {
                "river river river"
            } else {
                "river"
            };
            ix.upsert(key, &[text]);
        }
        // The ten keys that pass score worst; they are still found.
        let odd = |k: u64| k >= 90;
        let hits = ix.search(&["river"], Bm25Params::default(), 10, Some(&odd));
        let keys: Vec<u64> = hits.iter().map(|h| h.0).collect();
        assert_eq!(keys, (90..100).collect::<Vec<u64>>());
    }

    #[test]
    fn ties_go_to_the_smaller_key_and_unknown_words_match_nothing() {
        let mut ix = KeywordIndex::new();
        // The smallest key indexed last: it must displace a larger one already kept.
        for key in [9u64, 5, 3] {
            ix.upsert(key, &["same words here"]);
        }
        let hits = ix.search(&["words"], Bm25Params::default(), 2, None);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), [3, 5]);
        assert!(ix
            .search(&["absent"], Bm25Params::default(), 2, None)
            .is_empty());
        assert!(ix.search(&[], Bm25Params::default(), 2, None).is_empty());
    }
}
