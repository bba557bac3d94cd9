//! `engram bench locomo`: retrieval quality on LoCoMo-style conversations.
//!
//! One store per conversation, one memory per turn: content
//! `[<session date_time>] <speaker>: <text>` (plus ` [shares <blip_caption>]` when the turn
//! has an image), with the session in `session_id`, the speaker in `metadata.speaker`, the
//! session's time in `valid_from`, the conversation in `conversation_id` and the turn's
//! id (`D3:12`) in `source_ref`. Every memory is embedded with the configured model, then
//! each question is a hybrid search through the same `SearchService` the API uses.
//!
//! Metrics per category (1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5
//! adversarial; "main" pools 1–4): recall@5, recall@10, hit@10, NDCG@10 (binary
//! relevance) and MRR. With `--loo`, each conversation is also ranked with the parameters
//! that scored best on the other four (leave-one-conversation-out).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use engram_core::validate::{Content, Label, Metadata};
use engram_core::{
    EmbedderSlot, EmbeddingPipeline, MemoryFilter, MemoryService, MemoryType, NewMemory,
    SearchConfig, SearchMode, SearchRequest, SearchService, Source, TenantId,
};
use engram_sqlite::{SqliteConfig, SqliteStore};
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;

#[derive(Args, Debug)]
pub struct LocomoArgs {
    /// The LoCoMo JSON file (a list of samples with `conversation` and `qa`).
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Write one JSON line per question: `{"qid", "ranked": [dia_id, ...]}`.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also report leave-one-conversation-out figures (parameters chosen on the others).
    #[arg(long)]
    pub loo: bool,
    /// Also rank under single changes of the `[search]` configuration, one at a time:
    /// `--vary keyword_weight=0.3,0.5 --vary diversity=0` (repeatable); prints main
    /// R@10, NDCG@10 and multi-hop R@10 for each.
    #[arg(long, value_name = "KEY=V1,V2")]
    pub vary: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The `[search]` configurations of `--vary`, each named `key=value`.
fn variations(
    base: &crate::config::SearchConfig,
    vary: &[String],
) -> anyhow::Result<Vec<(String, SearchConfig)>> {
    let mut out = Vec::new();
    for spec in vary {
        let (key, values) = spec
            .split_once('=')
            .with_context(|| format!("--vary {spec}: expected KEY=V1,V2"))?;
        for v in values.split(',') {
            let mut json = serde_json::to_value(base)?;
            let value: Value = serde_json::from_str(v).unwrap_or(Value::String(v.to_owned()));
            json[key] = value;
            let cfg: crate::config::SearchConfig = serde_json::from_value(json)
                .with_context(|| format!("--vary {key}={v}: not a [search] setting"))?;
            out.push((format!("{key}={v}"), cfg.to_core()));
        }
    }
    Ok(out)
}

/// Ids ranked per question (at least this many, when the conversation has them).
const RANKED: u32 = 50;

struct Question {
    qid: String,
    text: String,
    category: u8,
    evidence: HashSet<String>,
}

struct Conversation {
    sample_id: String,
    store: SqliteStore,
    tenant: TenantId,
    questions: Vec<Question>,
    _dir: tempfile::TempDir,
}

/// `D30:05` → `D30:5`; `None` if it is not a dialogue id.
pub fn normalise_dia_id(s: &str) -> Option<String> {
    let s = s
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric() && c != ':');
    let rest = s.strip_prefix('D')?;
    let (a, b) = rest.split_once(':')?;
    let a: u32 = a.trim().parse().ok()?;
    let b: u32 = b.trim().parse().ok()?;
    Some(format!("D{a}:{b}"))
}

/// Every dialogue id in an evidence list (a string may hold several).
pub fn evidence_ids(evidence: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |s: &str| {
        for part in s.split([';', ',', ' ']) {
            if let Some(id) = normalise_dia_id(part) {
                out.push(id);
            }
        }
    };
    match evidence {
        Value::Array(items) => {
            for v in items {
                if let Some(s) = v.as_str() {
                    push(s);
                }
            }
        }
        Value::String(s) => push(s),
        _ => {}
    }
    out
}

/// "1:56 pm on 8 May, 2023" → a UTC timestamp.
pub fn parse_session_time(s: &str) -> Option<engram_core::Timestamp> {
    let s = s.trim().to_uppercase();
    chrono::NaiveDateTime::parse_from_str(&s, "%I:%M %p ON %d %B, %Y")
        .ok()
        .map(|t| t.and_utc())
}

#[derive(Clone, Copy, Default, Serialize)]
pub struct Scores {
    pub questions: usize,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub hit_at_10: f64,
    pub ndcg_at_10: f64,
    pub mrr: f64,
}

/// Per-question metrics of a ranking against the relevant ids.
fn score(ranked: &[String], relevant: &HashSet<String>) -> [f64; 5] {
    let hits = |k: usize| {
        ranked
            .iter()
            .take(k)
            .filter(|d| relevant.contains(*d))
            .count()
    };
    let n = relevant.len().max(1) as f64;
    let dcg: f64 = ranked
        .iter()
        .take(10)
        .enumerate()
        .filter(|(_, d)| relevant.contains(*d))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let idcg: f64 = (0..relevant.len().min(10))
        .map(|i| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let mrr = ranked
        .iter()
        .position(|d| relevant.contains(d))
        .map_or(0.0, |p| 1.0 / (p + 1) as f64);
    [
        hits(5) as f64 / n,
        hits(10) as f64 / n,
        f64::from(u8::from(hits(10) > 0)),
        if idcg > 0.0 { dcg / idcg } else { 0.0 },
        mrr,
    ]
}

#[derive(Default)]
struct Acc {
    n: usize,
    sums: [f64; 5],
}

impl Acc {
    fn add(&mut self, s: [f64; 5]) {
        self.n += 1;
        for (a, b) in self.sums.iter_mut().zip(s) {
            *a += b;
        }
    }
    fn scores(&self) -> Scores {
        let d = self.n.max(1) as f64;
        Scores {
            questions: self.n,
            recall_at_5: self.sums[0] / d,
            recall_at_10: self.sums[1] / d,
            hit_at_10: self.sums[2] / d,
            ndcg_at_10: self.sums[3] / d,
            mrr: self.sums[4] / d,
        }
    }
}

/// Category name → scores, with "main" pooling 1–4.
fn table(per_question: &[(u8, [f64; 5])]) -> BTreeMap<String, Scores> {
    let mut accs: BTreeMap<String, Acc> = BTreeMap::new();
    for (cat, s) in per_question {
        accs.entry(cat.to_string()).or_default().add(*s);
        if (1..=4).contains(cat) {
            accs.entry("main".into()).or_default().add(*s);
        }
    }
    accs.into_iter().map(|(k, a)| (k, a.scores())).collect()
}

async fn load(
    cfg: &Config,
    data: &Value,
    embedder: Arc<dyn engram_core::Embedder>,
) -> anyhow::Result<(Vec<Conversation>, usize)> {
    let samples = data
        .as_array()
        .context("the data file is not a JSON list")?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for sample in samples {
        let sample_id = sample["sample_id"].as_str().unwrap_or("sample").to_owned();
        let conv = &sample["conversation"];
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&SqliteConfig {
            readers: cfg.store.readers,
            speaker_key: cfg.search.speaker_key.clone(),
            ..SqliteConfig::new(dir.path())
        })?;
        let svc = MemoryService::new(Arc::new(store.clone()));
        let tenant = TenantId::parse("locomo")?;
        let mut sessions: Vec<(u32, &str)> = conv
            .as_object()
            .context("conversation is not an object")?
            .keys()
            .filter_map(|k| {
                let n = k.strip_prefix("session_")?;
                n.parse::<u32>().ok().map(|n| (n, k.as_str()))
            })
            .collect();
        sessions.sort();
        let mut dia_ids = HashSet::new();
        for (n, key) in sessions {
            let Some(turns) = conv[key].as_array() else {
                continue;
            };
            let when = conv[format!("session_{n}_date_time")]
                .as_str()
                .unwrap_or_default();
            for turn in turns {
                let (Some(speaker), Some(dia)) =
                    (turn["speaker"].as_str(), turn["dia_id"].as_str())
                else {
                    continue;
                };
                let Some(dia) = normalise_dia_id(dia) else {
                    continue;
                };
                let mut text = format!(
                    "[{when}] {speaker}: {}",
                    turn["text"].as_str().unwrap_or_default()
                );
                if let Some(c) = turn["blip_caption"].as_str() {
                    text.push_str(&format!(" [shares {c}]"));
                }
                let mut new = NewMemory::note(&text)?;
                new.content = Content::parse(text, "content")?;
                new.memory_type = MemoryType::Episode;
                new.source = Source::Import;
                new.source_ref = Some(Label::parse(dia.clone(), "source_ref")?);
                new.session_id = Some(Label::parse(format!("session_{n}"), "session_id")?);
                new.conversation_id = Some(Label::parse(sample_id.clone(), "conversation_id")?);
                new.metadata =
                    Metadata::parse(serde_json::json!({ "speaker": speaker }), "metadata")?;
                new.valid_from = parse_session_time(when);
                svc.remember(&tenant, new, None).await?;
                dia_ids.insert(dia);
            }
        }
        let pipeline = EmbeddingPipeline::new(
            Arc::new(store.clone()),
            embedder.clone(),
            cfg.pipeline.to_core(),
        )
        .await?;
        while pipeline.run_batch().await?.claimed > 0 {}
        while pipeline.run_context_batch().await? > 0 {}
        let mut questions = Vec::new();
        for (i, qa) in sample["qa"].as_array().into_iter().flatten().enumerate() {
            let evidence: HashSet<String> = evidence_ids(&qa["evidence"])
                .into_iter()
                .filter(|d| dia_ids.contains(d))
                .collect();
            let text = qa["question"].as_str().unwrap_or_default().trim();
            if evidence.is_empty() || text.is_empty() {
                skipped += 1;
                continue;
            }
            questions.push(Question {
                qid: format!("{sample_id}#{i}"),
                text: text.to_owned(),
                category: qa["category"].as_u64().unwrap_or(0).min(255) as u8,
                evidence,
            });
        }
        out.push(Conversation {
            sample_id,
            store,
            tenant,
            questions,
            _dir: dir,
        });
    }
    Ok((out, skipped))
}

/// The ranked dialogue ids of every question of one conversation.
async fn rank(
    conv: &Conversation,
    slot: &EmbedderSlot,
    search: &SearchConfig,
) -> anyhow::Result<Vec<Vec<String>>> {
    let s = Arc::new(conv.store.clone());
    let svc = SearchService::new(s.clone(), s.clone(), s, slot.clone(), search.clone());
    let mut out = Vec::with_capacity(conv.questions.len());
    for q in &conv.questions {
        let req = SearchRequest::new(
            &q.text,
            MemoryFilter::default(),
            Some(RANKED),
            SearchMode::Hybrid,
            None,
        )?;
        let r = svc.search(&conv.tenant, &req).await?;
        out.push(
            r.hits
                .into_iter()
                .filter_map(|h| h.memory.source_ref)
                .collect(),
        );
    }
    Ok(out)
}

/// The parameter sets `--loo` chooses among.
fn grid(base: &SearchConfig) -> Vec<SearchConfig> {
    let mut out = Vec::new();
    for kw in [0.4f32, 0.5, 0.6] {
        for sw in [0.3f32, 0.5, 0.7] {
            for spk in [3.0f32, 4.0] {
                for ctx in [0.5f32, 0.7] {
                    let mut c = base.clone();
                    c.keyword_weight = kw;
                    c.rerank.session_weight = sw;
                    c.rerank.speaker_weight = spk;
                    c.context_weight = ctx;
                    out.push(c);
                }
            }
        }
    }
    out
}

fn per_question(convs: &[Conversation], rankings: &[Vec<Vec<String>>]) -> Vec<(u8, [f64; 5])> {
    convs
        .iter()
        .zip(rankings)
        .flat_map(|(c, r)| {
            c.questions
                .iter()
                .zip(r)
                .map(|(q, ranked)| (q.category, score(ranked, &q.evidence)))
        })
        .collect()
}

fn main_recall(per_q: &[(u8, [f64; 5])]) -> f64 {
    table(per_q).get("main").map_or(0.0, |s| s.recall_at_10)
}

pub async fn locomo(cfg: &Config, args: LocomoArgs) -> anyhow::Result<()> {
    let data: Value = serde_json::from_slice(
        &std::fs::read(&args.data)
            .with_context(|| format!("cannot read {}", args.data.display()))?,
    )
    .context("the data file is not JSON")?;
    let embedder = engram_embed::build(&cfg.embedding).await?;
    let slot = EmbedderSlot::default();
    slot.set(embedder.clone());
    let started = std::time::Instant::now();
    let (convs, skipped) = load(cfg, &data, embedder).await?;
    let load_s = started.elapsed().as_secs_f64();
    let search = cfg.search.to_core();
    let varied = variations(&cfg.search, &args.vary)?;

    let started = std::time::Instant::now();
    let mut rankings = Vec::new();
    for c in &convs {
        rankings.push(rank(c, &slot, &search).await?);
    }
    let search_s = started.elapsed().as_secs_f64();
    let in_sample = table(&per_question(&convs, &rankings));

    let mut variation_rows = Vec::new();
    for (name, set) in &varied {
        let mut r = Vec::new();
        for c in &convs {
            r.push(rank(c, &slot, set).await?);
        }
        let t = table(&per_question(&convs, &r));
        let (Some(main), multi) = (t.get("main"), t.get("1")) else {
            anyhow::bail!("no question of categories 1-4 in the data");
        };
        variation_rows.push(serde_json::json!({
            "set": name,
            "main_recall_at_10": main.recall_at_10,
            "main_ndcg_at_10": main.ndcg_at_10,
            "multi_hop_recall_at_10": multi.map(|m| m.recall_at_10),
        }));
        if !args.json {
            println!(
                "{name:<28} main R@10 {:.3}  NDCG@10 {:.3}  multi-hop R@10 {:.3}",
                main.recall_at_10,
                main.ndcg_at_10,
                multi.map_or(0.0, |m| m.recall_at_10)
            );
        }
    }

    let loo = if args.loo {
        // Rank every conversation under every parameter set once, then for each held-out
        // conversation pick the set that did best on the others.
        let sets = grid(&search);
        let mut by_set: Vec<Vec<Vec<Vec<String>>>> = Vec::new();
        for set in &sets {
            let mut r = Vec::new();
            for c in &convs {
                r.push(rank(c, &slot, set).await?);
            }
            by_set.push(r);
        }
        let mut pooled = Vec::new();
        for held in 0..convs.len() {
            let best = (0..sets.len())
                .max_by(|&a, &b| {
                    let on_others = |s: usize| {
                        let pq: Vec<_> = convs
                            .iter()
                            .zip(&by_set[s])
                            .enumerate()
                            .filter(|(i, _)| *i != held)
                            .flat_map(|(_, (c, r))| {
                                c.questions
                                    .iter()
                                    .zip(r)
                                    .map(|(q, ranked)| (q.category, score(ranked, &q.evidence)))
                                    .collect::<Vec<_>>()
                            })
                            .collect();
                        main_recall(&pq)
                    };
                    on_others(a).total_cmp(&on_others(b))
                })
                .unwrap_or(0);
            let c = &convs[held];
            pooled.extend(
                c.questions
                    .iter()
                    .zip(&by_set[best][held])
                    .map(|(q, ranked)| (q.category, score(ranked, &q.evidence))),
            );
        }
        Some(table(&pooled))
    } else {
        None
    };

    if let Some(path) = &args.out {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot write {}", path.display()))?,
        );
        for (c, r) in convs.iter().zip(&rankings) {
            for (q, ranked) in c.questions.iter().zip(r) {
                writeln!(
                    f,
                    "{}",
                    serde_json::json!({ "qid": q.qid, "ranked": ranked })
                )?;
            }
        }
        f.flush()?;
    }
    let questions: usize = convs.iter().map(|c| c.questions.len()).sum();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "conversations": convs.iter().map(|c| &c.sample_id).collect::<Vec<_>>(),
                "questions": questions,
                "skipped_questions": skipped,
                "load_s": load_s,
                "search_s": search_s,
                "in_sample": in_sample,
                "leave_one_out": loo,
                "variations": variation_rows,
            }))?
        );
    } else {
        println!(
            "LoCoMo: {} conversations, {questions} questions ({skipped} without usable evidence skipped); loaded and embedded in {load_s:.1} s, searched in {search_s:.1} s",
            convs.len()
        );
        print_table("in-sample", &in_sample);
        if let Some(l) = &loo {
            print_table("leave-one-conversation-out", l);
        }
    }
    for c in &convs {
        c.store.close();
    }
    Ok(())
}

fn print_table(title: &str, t: &BTreeMap<String, Scores>) {
    println!("\n{title}");
    println!(
        "{:<14} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "category", "n", "R@5", "R@10", "hit@10", "NDCG@10", "MRR"
    );
    fn name(k: &str) -> &str {
        match k {
            "1" => "1 multi-hop",
            "2" => "2 temporal",
            "3" => "3 open-domain",
            "4" => "4 single-hop",
            "5" => "5 adversarial",
            "main" => "main (1-4)",
            other => other,
        }
    }
    let order = ["1", "2", "3", "4", "main", "5"];
    for k in order {
        if let Some(s) = t.get(k) {
            println!(
                "{:<14} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                name(k),
                s.questions,
                s.recall_at_5,
                s.recall_at_10,
                s.hit_at_10,
                s.ndcg_at_10,
                s.mrr
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_ids_are_normalised_and_split() {
        assert_eq!(normalise_dia_id("D30:05").as_deref(), Some("D30:5"));
        assert_eq!(normalise_dia_id("D1:3").as_deref(), Some("D1:3"));
        assert_eq!(normalise_dia_id("session_1"), None);
        assert_eq!(
            evidence_ids(&serde_json::json!(["D1:3", "D2:08; D3:1", "junk"])),
            vec!["D1:3", "D2:8", "D3:1"]
        );
    }

    #[test]
    fn session_times_parse() {
        let t = parse_session_time("1:56 pm on 8 May, 2023").unwrap();
        assert_eq!(t.to_rfc3339(), "2023-05-08T13:56:00+00:00");
        assert!(parse_session_time("yesterday").is_none());
    }

    #[test]
    fn metrics_of_a_known_ranking() {
        let ranked: Vec<String> = ["a", "x", "b", "y", "z", "w", "v", "u", "t", "s", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rel: HashSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let [r5, r10, hit, ndcg, mrr] = score(&ranked, &rel);
        assert!((r5 - 2.0 / 3.0).abs() < 1e-9);
        assert!((r10 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(hit, 1.0);
        assert_eq!(mrr, 1.0);
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((ndcg - dcg / idcg).abs() < 1e-9);
    }
}
