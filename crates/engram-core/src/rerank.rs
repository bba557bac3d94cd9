//! Re-ranking fused candidates with what engram knows about each memory beyond its text.
//! Conversations are stored one memory per turn, and a question's answer often sits in a
//! turn that says little on its own: it belongs to a session the query clearly matches,
//! it was said by the person the question names, at the time the question names.
//!
//! Every mechanism is general — it reads engram's own fields (session, the speaker in
//! metadata, the memory's time, its length), never a dataset's — works in z units of
//! the fused score, and is turned off by a weight of 0. docs/retrieval.md gives what each
//! one is worth on LoCoMo.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Datelike;

use crate::ids::MemoryId;
use crate::memory::Memory;
use crate::search::{sort_desc, Scored};
use crate::time::Timestamp;

/// What the re-ranker reads of a memory. A search index may hold these for every memory
/// it indexes, so that a search loads only the hits it returns, not every candidate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RerankFields {
    pub session: Option<Arc<str>>,
    /// The string under the speaker key in the memory's metadata.
    pub speaker: Option<Arc<str>>,
    pub valid_from: Option<Timestamp>,
    /// Runs of letters and digits in the content.
    pub words: u32,
    /// The content ends in a question mark (trailing white space aside).
    pub question: bool,
}

impl RerankFields {
    /// The fields of a memory whose content is `content`.
    pub fn new(
        session: Option<Arc<str>>,
        speaker: Option<Arc<str>>,
        valid_from: Option<Timestamp>,
        content: &str,
    ) -> Self {
        RerankFields {
            session,
            speaker,
            valid_from,
            words: word_count(content),
            question: content.trim_end().ends_with('?'),
        }
    }

    /// A loaded memory's fields, its speaker under `speaker_key`.
    pub fn of(m: &Memory, speaker_key: &str) -> Self {
        RerankFields::new(
            m.scope.session_id.as_deref().map(Arc::from),
            m.metadata
                .get(speaker_key)
                .and_then(|v| v.as_str())
                .map(Arc::from),
            m.valid_from,
            &m.content,
        )
    }
}

/// How many runs of letters and digits `s` holds.
pub fn word_count(s: &str) -> u32 {
    let n = s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Clone, Debug, PartialEq)]
pub struct RerankConfig {
    /// Share of the best fused score in a memory's session added to the memory.
    pub session_weight: f32,
    /// Added to memories whose speaker the query names (a word of the name in the query).
    pub speaker_weight: f32,
    /// The metadata key holding who said a memory.
    pub speaker_key: String,
    /// Times the z-score of ln(1 + words) among the candidates: longer turns carry more.
    pub length_weight: f32,
    /// Added when every month name (capitalised) and year the query names matches the
    /// memory's `valid_from`.
    pub date_weight: f32,
    /// Subtracted from memories that end in a question mark: a question rarely holds the
    /// answer to another.
    pub question_penalty: f32,
    /// Subtracted per memory of the same session already placed in the head, so the head
    /// spans sessions (questions whose evidence is spread over several).
    pub diversity: f32,
    /// How many places of the head are diversified.
    pub diversity_depth: usize,
    /// Candidates re-ranked, as a multiple of `k` (at least `min_depth`).
    pub depth_factor: u32,
    pub min_depth: u32,
}

impl Default for RerankConfig {
    fn default() -> Self {
        RerankConfig {
            session_weight: 0.5,
            speaker_weight: 4.0,
            speaker_key: "speaker".into(),
            length_weight: 0.5,
            date_weight: 2.0,
            question_penalty: 1.0,
            diversity: 0.25,
            diversity_depth: 10,
            depth_factor: 5,
            min_depth: 100,
        }
    }
}

impl RerankConfig {
    /// How many fused candidates the re-ranker looks at for a top-`k` search.
    pub fn depth(&self, k: u32) -> u32 {
        k.saturating_mul(self.depth_factor).max(self.min_depth)
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Lowercased runs of letters and digits.
pub(crate) fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The months (1-based) and years a query names: capitalised month names ("May", not
/// "may") and four-digit years 1900–2099.
fn named_dates(query: &str) -> (Vec<u32>, Vec<i32>) {
    let mut months = Vec::new();
    let mut years = Vec::new();
    for w in query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if let Some(i) = MONTHS.iter().position(|m| *m == w) {
            months.push(i as u32 + 1);
        } else if w.len() == 4 && (w.starts_with("19") || w.starts_with("20")) {
            if let Ok(y) = w.parse() {
                years.push(y);
            }
        }
    }
    (months, years)
}

fn z_scores(xs: &[f32]) -> Vec<f32> {
    if xs.is_empty() {
        return Vec::new();
    }
    let n = xs.len() as f32;
    let mean = xs.iter().sum::<f32>() / n;
    let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
    xs.iter()
        .map(|x| if sd > 1e-9 { (x - mean) / sd } else { 0.0 })
        .collect()
}

/// The speakers among `speakers` a word of whose name the query contains, sorted and
/// deduplicated.
pub fn named_speakers<'a>(query: &str, speakers: impl Iterator<Item = &'a str>) -> Vec<String> {
    let query_words = words(query);
    let mut named: Vec<String> = speakers
        .filter(|name| words(name).iter().any(|w| query_words.contains(w)))
        .map(str::to_owned)
        .collect();
    named.sort();
    named.dedup();
    named
}

/// The query without the words of `names` (a possessive "'s" goes with its name); the
/// query itself when nothing else would be left.
pub fn strip_names(query: &str, names: &[String]) -> String {
    if names.is_empty() {
        return query.to_owned();
    }
    let drop: Vec<String> = names.iter().flat_map(|n| words(n)).collect();
    let kept: Vec<&str> = query
        .split_whitespace()
        .filter(|token| {
            let core: String = token
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            let core = core
                .strip_suffix("'s")
                .or_else(|| core.strip_suffix("’s"))
                .unwrap_or(&core);
            !drop.iter().any(|d| d == core)
        })
        .collect();
    if kept.iter().all(|t| words(t).is_empty()) {
        query.to_owned()
    } else {
        kept.join(" ")
    }
}

/// Re-ranks `pool` (best first) for `query`; candidates without fields are dropped.
pub fn rerank(
    query: &str,
    pool: Vec<Scored>,
    fields: &HashMap<MemoryId, RerankFields>,
    cfg: &RerankConfig,
) -> Vec<Scored> {
    let pool: Vec<(Scored, &RerankFields)> = pool
        .into_iter()
        .filter_map(|s| fields.get(&s.id).map(|f| (s, f)))
        .collect();
    if pool.is_empty() {
        return Vec::new();
    }

    // Best fused score per session.
    let mut best: HashMap<&str, f32> = HashMap::new();
    for (s, f) in &pool {
        if let Some(x) = f.session.as_deref() {
            let e = best.entry(x).or_insert(f32::NEG_INFINITY);
            *e = e.max(s.score);
        }
    }
    let named = named_speakers(query, pool.iter().filter_map(|(_, f)| f.speaker.as_deref()));
    // Length prior, in z units over the candidates.
    let lengths: Vec<f32> = pool
        .iter()
        .map(|(_, f)| (1.0 + f.words as f32).ln())
        .collect();
    let length_z = z_scores(&lengths);
    let (months, years) = named_dates(query);

    let mut scored: Vec<(Scored, Option<Arc<str>>)> = pool
        .iter()
        .zip(length_z)
        .map(|((s, m), len_z)| {
            let sess = m.session.clone();
            let mut f = s.score + cfg.length_weight * len_z;
            if let Some(b) = sess.as_deref().and_then(|x| best.get(x)) {
                f += cfg.session_weight * b;
            }
            if m.question {
                f -= cfg.question_penalty;
            }
            if m.speaker
                .as_deref()
                .is_some_and(|sp| named.iter().any(|n| n == sp))
            {
                f += cfg.speaker_weight;
            }
            if !(months.is_empty() && years.is_empty()) {
                if let Some(t) = m.valid_from {
                    let ok = months.iter().all(|mo| *mo == t.month())
                        && years.iter().all(|y| *y == t.year());
                    if ok {
                        f += cfg.date_weight;
                    }
                }
            }
            (Scored { id: s.id, score: f }, sess)
        })
        .collect();
    scored.sort_by(|a, b| b.0.score.total_cmp(&a.0.score).then(a.0.id.cmp(&b.0.id)));

    if cfg.diversity <= 0.0 || cfg.diversity_depth == 0 {
        return scored.into_iter().map(|(s, _)| s).collect();
    }
    // The head, picked one at a time with a penalty per memory of the same session
    // already picked; the rest follow in score order.
    let mut head = Vec::new();
    let mut per_session: HashMap<Arc<str>, f32> = HashMap::new();
    let mut rest = scored;
    for _ in 0..cfg.diversity_depth.min(rest.len()) {
        let adjusted = |(s, sess): &(Scored, Option<Arc<str>>)| {
            s.score
                - cfg.diversity
                    * sess
                        .as_ref()
                        .and_then(|x| per_session.get(x))
                        .copied()
                        .unwrap_or(0.0)
        };
        let Some(i) = (0..rest.len()).max_by(|&a, &b| {
            adjusted(&rest[a])
                .total_cmp(&adjusted(&rest[b]))
                .then(rest[b].0.id.cmp(&rest[a].0.id))
        }) else {
            break;
        };
        let (s, sess) = rest.remove(i);
        if let Some(x) = sess {
            *per_session.entry(x).or_default() += 1.0;
        }
        head.push(s);
    }
    let mut tail: Vec<Scored> = rest.into_iter().map(|(s, _)| s).collect();
    sort_desc(&mut tail);
    head.extend(tail);
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::memory::NewMemory;
    use crate::validate::{Label, Metadata};

    fn memory(text: &str, session: &str, speaker: &str) -> Memory {
        let mut n = NewMemory::note(text).unwrap();
        n.session_id = Some(Label::parse(session.into(), "s").unwrap());
        n.metadata = Metadata::parse(serde_json::json!({ "speaker": speaker }), "m").unwrap();
        n.into_memory(TenantId::parse("t").unwrap(), crate::time::now())
    }

    fn run(query: &str, items: &[(&Memory, f32)], cfg: &RerankConfig) -> Vec<MemoryId> {
        let fields: HashMap<_, _> = items
            .iter()
            .map(|(m, _)| (m.id, RerankFields::of(m, "speaker")))
            .collect();
        let pool = items
            .iter()
            .map(|(m, s)| Scored {
                id: m.id,
                score: *s,
            })
            .collect();
        rerank(query, pool, &fields, cfg)
            .iter()
            .map(|s| s.id)
            .collect()
    }

    fn only(f: impl FnOnce(&mut RerankConfig)) -> RerankConfig {
        let mut c = RerankConfig {
            session_weight: 0.0,
            speaker_weight: 0.0,
            length_weight: 0.0,
            date_weight: 0.0,
            question_penalty: 0.0,
            diversity: 0.0,
            ..Default::default()
        };
        f(&mut c);
        c
    }

    #[test]
    fn a_question_ranks_below_its_answer() {
        let q = memory("Where did you go camping?", "s1", "A");
        let a = memory("We camped at the lake.", "s1", "B");
        let cfg = only(|c| c.question_penalty = 1.0);
        assert_eq!(
            run("where camping", &[(&q, 0.5), (&a, 0.0)], &cfg),
            vec![a.id, q.id]
        );
        // Off: the fused order stands.
        assert_eq!(
            run("where camping", &[(&q, 0.5), (&a, 0.0)], &only(|_| {})),
            vec![q.id, a.id]
        );
    }

    #[test]
    fn the_named_speaker_wins() {
        let a = memory("I went hiking", "s1", "Melanie Smith");
        let b = memory("I went hiking too", "s1", "Caroline");
        let cfg = only(|c| c.speaker_weight = 3.0);
        assert_eq!(
            run("Where did Melanie go?", &[(&b, 1.0), (&a, 0.0)], &cfg),
            vec![a.id, b.id]
        );
        // Neither named: order kept.
        assert_eq!(
            run("Where did they go?", &[(&b, 1.0), (&a, 0.0)], &cfg),
            vec![b.id, a.id]
        );
    }

    #[test]
    fn named_speakers_are_left_out_of_the_embedded_query() {
        let a = memory("I went hiking", "s1", "Melanie Smith");
        let b = memory("me too", "s1", "Caroline");
        let speakers: Vec<RerankFields> = [&a, &b]
            .iter()
            .map(|m| RerankFields::of(m, "speaker"))
            .collect();
        let named = named_speakers(
            "What did Melanie's kids like?",
            speakers.iter().filter_map(|f| f.speaker.as_deref()),
        );
        assert_eq!(named, vec!["Melanie Smith".to_owned()]);
        assert_eq!(
            strip_names("What did Melanie's kids like?", &named),
            "What did kids like?"
        );
        assert_eq!(
            strip_names(
                "Did Caroline and MELANIE meet?",
                &["Caroline".into(), "Melanie".into()]
            ),
            "Did and meet?"
        );
        // Nothing but the name: the query is kept whole.
        assert_eq!(strip_names("Melanie?", &named), "Melanie?");
        assert_eq!(strip_names("hiking", &[]), "hiking");
    }

    #[test]
    fn a_strong_session_lifts_its_turns() {
        let strong = memory("the recital was great", "s1", "A");
        let quiet = memory("thanks!", "s1", "B");
        let other = memory("unrelated", "s2", "A");
        let cfg = only(|c| c.session_weight = 0.5);
        let got = run(
            "recital",
            &[(&strong, 4.0), (&other, 1.2), (&quiet, 0.0)],
            &cfg,
        );
        assert_eq!(got, vec![strong.id, quiet.id, other.id]);
    }

    #[test]
    fn named_months_and_years_match_the_memory_time() {
        let mut may = memory("we met", "s1", "A");
        may.valid_from = Some("2023-05-08T13:56:00Z".parse().unwrap());
        let mut june = memory("we met again", "s2", "A");
        june.valid_from = Some("2023-06-08T13:56:00Z".parse().unwrap());
        let cfg = only(|c| c.date_weight = 2.0);
        assert_eq!(
            run(
                "What happened in May 2023?",
                &[(&june, 1.0), (&may, 0.0)],
                &cfg
            ),
            vec![may.id, june.id]
        );
        // "may" the verb names no month.
        assert_eq!(
            run("what may happen", &[(&june, 1.0), (&may, 0.0)], &cfg),
            vec![june.id, may.id]
        );
        assert_eq!(
            named_dates("In May 2023 or 1999, not 3000"),
            (vec![5], vec![2023, 1999])
        );
    }

    #[test]
    fn the_head_spans_sessions() {
        let a1 = memory("a1", "s1", "A");
        let a2 = memory("a2", "s1", "A");
        let b1 = memory("b1", "s2", "A");
        let cfg = only(|c| {
            c.diversity = 1.0;
            c.diversity_depth = 2;
        });
        assert_eq!(
            run("q", &[(&a1, 3.0), (&a2, 2.9), (&b1, 2.5)], &cfg),
            vec![a1.id, b1.id, a2.id]
        );
    }
}
