//! `engram bench search`: search latency and recall on N real sentences with their real
//! MiniLM embeddings (the cached corpus of `engram bench corpus`), through the same
//! `SearchService` the API calls.
//!
//! Two processes. This one loads the corpus into a fresh store (memories by bulk insert,
//! vectors through the embedding store's claim/complete path, as the pipeline stores
//! them), rebuilds the vector index from scratch and times that (`build_s`), computes the
//! exact top 10 of a sample of queries by brute force, and writes the queries and the
//! ground truth to a file. A child process (`--measure DIR`) then opens the store as
//! `engram serve` does, reads its database file once (so its pages are in the operating
//! system's cache, as on a server in use), runs every query in every mode (or those of
//! `--modes`), unfiltered and filtered to one user of 100 (1% of the data), and reports
//! latency, recall@10 against exact search and its own peak RSS — which therefore counts
//! the engine, not the benchmark's copy of the corpus. Query embedding is excluded: each
//! query's vector is its cached embedding.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use engram_core::{
    DocumentEmbedding, EmbedError, Embedder, EmbedderSlot, MemoryFilter, MemoryService, ModelInfo,
    NewMemory, SearchMode, SearchRequest, TenantId,
};
use engram_sqlite::{SqliteConfig, SqliteStore};

use crate::backends::Backends;
use serde::{Deserialize, Serialize};

use super::corpus;
use crate::config::Config;

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Memories in the store.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Queries (the last rows of the corpus; never memories).
    #[arg(long, default_value_t = corpus::QUERIES)]
    pub queries: usize,
    /// Queries whose exact top 10 is computed for recall (brute force is slow at 1M).
    #[arg(long, default_value_t = 200)]
    pub recall_queries: usize,
    /// The store: `--data-dir DIR` keeps it (and the plan) there instead of a temporary
    /// directory; `--store postgres://…` loads it into a fresh schema (kept with
    /// `--data-dir`, else dropped), `--cache redis://…` puts Redis in front.
    #[command(flatten)]
    pub store: crate::cli::StoreArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Only measure, over a store a run with `--data-dir DIR` prepared (its plan is kept
    /// there): latency figures again on a quieter machine, without reloading. Prints the
    /// measuring process's JSON.
    #[arg(long, value_name = "DIR")]
    pub measure: Option<PathBuf>,
    /// With `--measure`: latency only, no recall (its exact searches would dominate a
    /// profile of the run, e.g. under `perf record`).
    #[arg(long, requires = "measure")]
    pub no_recall: bool,
    /// With `--measure`: only these modes (comma-separated: keyword, semantic, hybrid),
    /// e.g. to profile one of them.
    #[arg(long, requires = "measure", value_delimiter = ',', value_parser = parse_mode)]
    pub modes: Vec<SearchMode>,
}

fn parse_mode(s: &str) -> Result<SearchMode, String> {
    SearchMode::parse(s).map_err(|e| e.to_string())
}

const TOP: usize = 10;
pub(super) const TENANT: &str = "bench";

/// What the parent hands the child.
#[derive(Serialize, Deserialize)]
struct Plan {
    model: ModelInfo,
    queries: Vec<PlannedQuery>,
    /// The store and cache the parent loaded (none: SQLite in the plan's directory).
    #[serde(default)]
    store_url: Option<String>,
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    cache_url: Option<String>,
    /// `[store] exact_search_max` of the parent's configuration.
    #[serde(default)]
    exact_search_max: Option<usize>,
}

#[derive(Serialize, Deserialize)]
struct PlannedQuery {
    text: String,
    vector: Vec<f32>,
    user: String,
    /// Exact top-10 memory rows, unfiltered and filtered (for the recall sample only).
    exact: Option<Vec<usize>>,
    exact_filtered: Option<Vec<usize>>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct ModeResult {
    pub mode: String,
    pub filtered: bool,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Against exact search (for hybrid: hybrid search run with exact vector search);
    /// `null` for keyword search, which is exact by construction.
    pub recall_at_10: Option<f64>,
    /// The searching process's resident set once this mode's queries ran (indexes are
    /// loaded as first used, and page caches fill), in MB.
    #[serde(default)]
    pub rss_after_mb: f64,
}

#[derive(Serialize, Deserialize)]
struct Measured {
    rss_mb: f64,
    /// Resident set right after the store opened, in MB.
    #[serde(default)]
    rss_open_mb: f64,
    /// The vector index's settings the figures were measured with.
    #[serde(flatten)]
    vector: VectorSettings,
    open_s: f64,
    results: Vec<ModeResult>,
}

/// The in-process vector index's `[store] vector_*` settings, reported beside the figures
/// (each 0 or empty when a saved report predates it).
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct VectorSettings {
    /// How the vector index kept vectors (`vector_quantization`).
    vector_quantization: String,
    /// The most keys of a semantic search scored again from the database (`vector_rescore`).
    vector_rescore: usize,
    /// The graph search's `ef` (`vector_search_expansion`).
    vector_search_expansion: usize,
    /// The graph search's `ef` for hybrid search (`vector_hybrid_expansion`).
    vector_hybrid_expansion: usize,
    /// `vector_shortlist`.
    vector_shortlist: usize,
}

impl VectorSettings {
    fn of(store: &crate::config::StoreConfig) -> Self {
        VectorSettings {
            vector_quantization: store.vector_quantization.to_string(),
            vector_rescore: store.vector_rescore,
            vector_search_expansion: store.vector_search_expansion,
            vector_hybrid_expansion: store.vector_hybrid_expansion,
            vector_shortlist: store.vector_shortlist,
        }
    }
}

/// Answers each planned query with its cached embedding, so latency excludes the model.
struct CachedQueries {
    model: ModelInfo,
    vectors: HashMap<String, Vec<f32>>,
}

#[async_trait]
impl Embedder for CachedQueries {
    fn model(&self) -> ModelInfo {
        self.model.clone()
    }
    async fn embed_documents(
        &self,
        _texts: &[String],
    ) -> Result<Vec<DocumentEmbedding>, EmbedError> {
        Err(EmbedError::Unavailable(
            "the search benchmark embeds no documents".into(),
        ))
    }
    async fn embed_query(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.vectors
            .get(text)
            .cloned()
            .ok_or_else(|| EmbedError::Rejected(format!("no cached vector for `{text}`")))
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = dot(v, v).sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// The exact top k rows by cosine among `rows`.
fn exact_top(c: &corpus::Corpus, q: &[f32], rows: impl Iterator<Item = usize>) -> Vec<usize> {
    let q = unit(q);
    let mut scored: Vec<(f32, usize)> = rows
        .map(|i| {
            let v = c.memory_vector(i);
            (dot(&q, v) / dot(v, v).sqrt().max(1e-12), i)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.truncate(TOP);
    scored.into_iter().map(|(_, i)| i).collect()
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Loads memories and vectors into a fresh store.
pub(super) async fn load(
    backends: &Backends,
    c: &corpus::Corpus,
    model: &ModelInfo,
    quiet: bool,
) -> anyhow::Result<()> {
    // Claimed jobs carry their content's hash; it leads back to the corpus row.
    let rows: HashMap<String, usize> = (0..c.memories())
        .map(|i| (engram_core::memory::content_hash(c.memory_text(i)), i))
        .collect();
    let store = backends.embeddings.clone();
    let svc = MemoryService::new(backends.memories.clone());
    let tenant = TenantId::parse(TENANT)?;
    let started = Instant::now();
    for chunk in (0..c.memories())
        .collect::<Vec<_>>()
        .chunks(engram_core::BULK_MAX)
    {
        let items = chunk
            .iter()
            .map(|&i| {
                let mut m = NewMemory::note(c.memory_text(i))?;
                m.user_id = Some(engram_core::validate::Label::parse(
                    c.memory_user(i),
                    "user_id",
                )?);
                m.source_ref = Some(engram_core::validate::Label::parse(
                    i.to_string(),
                    "source_ref",
                )?);
                Ok(m)
            })
            .collect();
        for r in svc.remember_bulk(&tenant, items, None).await? {
            if let engram_core::BulkItemResult::Failed(e) = r {
                anyhow::bail!("memory not stored: {e}");
            }
        }
    }
    if !quiet {
        eprintln!(
            "  stored {} memories in {:.1} s",
            c.memories(),
            started.elapsed().as_secs_f64()
        );
    }
    // The vectors, as the pipeline stores them: claim, then complete with the vectors.
    let started = Instant::now();
    store.register_model(model).await?;
    let lease = engram_core::time::now() + chrono::Duration::hours(1);
    loop {
        let jobs = store.claim_embeddings(2_000, lease).await?;
        if jobs.is_empty() {
            break;
        }
        let results = jobs
            .into_iter()
            .map(|j| {
                let row = *rows
                    .get(&j.content_hash)
                    .context("a claimed memory is not in the corpus")?;
                Ok((j, vec![c.memory_vector(row).to_vec()]))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let done = store
            .complete_embeddings(model, results, engram_core::time::now())
            .await?;
        anyhow::ensure!(done.iter().all(|d| *d), "a vector was not stored");
    }
    if !quiet {
        eprintln!(
            "  stored vectors in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The configuration the benchmark's processes open the store with: the plan's store,
/// with the in-process vector index's settings of the configuration the run was started
/// with (`own`: file, `ENGRAM__STORE__…`).
pub(super) fn bench_config(
    plan_dir: &Path,
    store_url: Option<String>,
    schema: Option<String>,
    cache_url: Option<String>,
    own: &Config,
) -> Config {
    let mut cfg = Config::default();
    cfg.store.data_dir = plan_dir.to_path_buf();
    cfg.store.url = store_url;
    cfg.store.schema = schema;
    cfg.cache.url = cache_url;
    cfg.store.vector_quantization = own.store.vector_quantization;
    cfg.store.vector_rescore = own.store.vector_rescore;
    cfg.store.vector_search_expansion = own.store.vector_search_expansion;
    cfg.store.vector_hybrid_expansion = own.store.vector_hybrid_expansion;
    cfg.store.vector_shortlist = own.store.vector_shortlist;
    cfg
}

pub async fn search(cfg: &Config, args: SearchArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.measure {
        let m = measure(dir, !args.no_recall, &args.modes, cfg).await?;
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    anyhow::ensure!(args.n > 0, "--n must be at least 1");
    let quiet = args.json;
    let c = corpus::ensure(cfg, args.n, args.queries).await?;
    let embedder = engram_embed::build(&cfg.embedding).await?;
    let model = embedder.model();
    anyhow::ensure!(
        model.dim == c.dim,
        "the corpus was embedded with another model"
    );
    drop(embedder);
    let tmp;
    let dir = match &args.store.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let exact_search_max = cfg.store.exact_search_max;
    let mut cfg = bench_config(
        &dir,
        args.store.store_url.clone(),
        cfg.store.schema.clone(),
        args.store.cache_url.clone(),
        cfg,
    );
    let temp_schema = crate::backends::temp_schema(&mut cfg, "bench")?;
    let backends = Backends::open(&cfg, false).await?;
    if !quiet {
        eprintln!(
            "loading {} memories into {}",
            c.memories(),
            backends.describe()
        );
    }
    load(&backends, &c, &model, quiet).await?;

    // Index build: from scratch, as `engram reindex` and a first start do (on Postgres:
    // REINDEX of the model's HNSW indexes).
    let started = Instant::now();
    let vectors = match backends.sqlite() {
        Some(_) => {
            backends.close();
            let _ = std::fs::remove_dir_all(dir.join("index"));
            let store = SqliteStore::open(&SqliteConfig::new(&dir))?;
            let n = store.indexed_memories();
            store.close();
            n
        }
        None => backends.rebuild_vector_index(&model).await?,
    };
    let build_s = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!("  built the vector index ({vectors} memories) in {build_s:.1} s");
    }

    // The plan: every query, and exact answers for a sample.
    let by_user: HashMap<String, Vec<usize>> =
        (0..c.memories()).fold(HashMap::new(), |mut m, i| {
            m.entry(c.memory_user(i)).or_default().push(i);
            m
        });
    let sample = args.recall_queries.min(c.queries());
    let started = Instant::now();
    let queries: Vec<PlannedQuery> = (0..c.queries())
        .map(|j| {
            let v = c.query_vector(j);
            let user = c.query_user(j);
            let (exact, exact_filtered) = if j < sample {
                (
                    Some(exact_top(&c, v, 0..c.memories())),
                    Some(exact_top(
                        &c,
                        v,
                        by_user.get(&user).into_iter().flatten().copied(),
                    )),
                )
            } else {
                (None, None)
            };
            PlannedQuery {
                text: c.query_text(j).to_owned(),
                vector: v.to_vec(),
                user,
                exact,
                exact_filtered,
            }
        })
        .collect();
    if !quiet {
        eprintln!(
            "  exact top 10 of {sample} queries in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    drop(c);
    let plan_path = dir.join("bench-plan.json");
    std::fs::write(
        &plan_path,
        serde_json::to_vec(&Plan {
            model,
            queries,
            store_url: cfg.store.url.clone(),
            schema: cfg.store.schema.clone(),
            cache_url: cfg.cache.url.clone(),
            exact_search_max,
        })?,
    )?;

    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe)
        .args(["bench", "search", "--measure"])
        .arg(&dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the measuring process")?;
    anyhow::ensure!(out.status.success(), "the measuring process failed");
    let m: Measured = serde_json::from_slice(&out.stdout).context("measuring process output")?;
    if args.store.data_dir.is_none() {
        let _ = std::fs::remove_file(&plan_path);
        if let Some(schema) = temp_schema {
            backends.drop_schema(&schema).await?;
        }
    }
    backends.close();

    if args.json {
        // The measuring process's report, with the run's size and build time.
        let mut report = serde_json::to_value(&m)?;
        report["n"] = args.n.into();
        report["build_s"] = build_s.into();
        println!("{report}");
    } else {
        println!(
            "search over {} memories ({} vectors in the index): index built in {build_s:.1} s, reopened in {:.2} s, peak RSS of the searching process {:.0} MB",
            args.n, m.vector.vector_quantization, m.open_s, m.rss_mb
        );
        println!(
            "(resident {:.0} MB once opened; the last column: after each mode's queries)",
            m.rss_open_mb
        );
        println!(
            "{:<9} {:<9} {:>8} {:>8} {:>8} {:>10} {:>7}",
            "mode", "filtered", "p50 ms", "p95 ms", "p99 ms", "recall@10", "RSS MB"
        );
        for r in &m.results {
            println!(
                "{:<9} {:<9} {:>8.3} {:>8.3} {:>8.3} {:>10} {:>7.0}",
                r.mode,
                r.filtered,
                r.p50_ms,
                r.p95_ms,
                r.p99_ms,
                r.recall_at_10
                    .map_or("exact".to_owned(), |x| format!("{x:.4}")),
                r.rss_after_mb
            );
        }
    }
    Ok(())
}

/// Reads the SQLite database (and its WAL) once, so that searches find its pages in the
/// operating system's cache, as on a server answering queries. A store prepared earlier may
/// have been paged out since: some hosts reclaim file pages idle for a minute (DAMON), and a
/// point read then costs a disk read (80–130 µs instead of ~10 µs, measured on one), which
/// made the figures depend on how long ago the store was last read. Done after `open_s`
/// is taken, so that figure is as before; page cache is not the process's resident set, so
/// the RSS figures are unchanged.
fn warm_file_cache(dir: &Path) -> anyhow::Result<()> {
    let db = dir.join(engram_sqlite::DB_FILE);
    let wal = dir.join(format!("{}-wal", engram_sqlite::DB_FILE));
    for path in [db, wal] {
        // No WAL file: nothing to read.
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        std::io::copy(&mut f, &mut std::io::sink())
            .with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(())
}

/// The child: open the store as `engram serve` does and run the plan. The vector index
/// keeps vectors as `own` (the child's configuration) says: measuring a store with
/// another quantization than it was built with rebuilds its index at open.
async fn measure(
    dir: &Path,
    recall: bool,
    modes: &[SearchMode],
    own: &Config,
) -> anyhow::Result<Measured> {
    let plan: Plan = serde_json::from_slice(&std::fs::read(dir.join("bench-plan.json"))?)?;
    let mut cfg = bench_config(
        dir,
        plan.store_url.clone(),
        plan.schema.clone(),
        plan.cache_url.clone(),
        own,
    );
    cfg.store.exact_search_max = plan.exact_search_max;
    let started = Instant::now();
    let store = Backends::open(&cfg, true).await?;
    let open_s = started.elapsed().as_secs_f64();
    if plan.store_url.is_none() {
        warm_file_cache(dir)?;
    }
    let rss_open_mb = super::rss_mb();
    let slot = EmbedderSlot::default();
    slot.set(Arc::new(CachedQueries {
        model: plan.model.clone(),
        vectors: plan
            .queries
            .iter()
            .map(|q| (q.text.clone(), q.vector.clone()))
            .collect(),
    }));
    let svc = crate::serve::search_service(&store, slot.clone(), Default::default());
    // The same store answering semantic searches exactly, so its hybrid results are what
    // hybrid search would return with exact vector search. Opened only to measure recall:
    // it holds indexes of its own, which would count in the peak RSS.
    let exact_store = if recall {
        Some(Backends::open_exact(&cfg).await?)
    } else {
        None
    };
    let exact_svc = exact_store
        .as_ref()
        .map(|s| crate::serve::search_service(s, slot, Default::default()));
    let tenant = TenantId::parse(TENANT)?;
    let rows_of = |r: &engram_core::SearchResult| -> Vec<usize> {
        r.hits
            .iter()
            .filter_map(|h| h.memory.source_ref.as_deref()?.parse::<usize>().ok())
            .collect()
    };
    // The keyword index is built in the background soon after open, or by the first
    // keyword search; one search here waits for it, so that no mode's figures include the
    // build or share the CPU with it.
    if let Some(q) = plan.queries.first() {
        let req = SearchRequest::new(
            &q.text,
            MemoryFilter::default(),
            None,
            SearchMode::Keyword,
            None,
        )?;
        svc.search(&tenant, &req).await?;
    }
    let mut results = Vec::new();
    let all = [
        SearchMode::Keyword,
        SearchMode::Semantic,
        SearchMode::Hybrid,
    ];
    for mode in all
        .into_iter()
        .filter(|m| modes.is_empty() || modes.contains(m))
    {
        for filtered in [false, true] {
            let mut lat = Vec::with_capacity(plan.queries.len());
            let (mut found, mut total) = (0usize, 0usize);
            for q in &plan.queries {
                let filter = MemoryFilter {
                    user_id: filtered.then(|| q.user.clone()),
                    ..Default::default()
                };
                let req = SearchRequest::new(&q.text, filter, Some(TOP as u32), mode, None)?;
                let t = Instant::now();
                let r = svc.search(&tenant, &req).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                let exact = if filtered {
                    &q.exact_filtered
                } else {
                    &q.exact
                };
                let Some(exact) = exact.as_ref().filter(|_| recall) else {
                    continue;
                };
                let want: HashSet<usize> = match mode {
                    SearchMode::Semantic => exact.iter().copied().collect(),
                    SearchMode::Hybrid => {
                        let exact_svc = exact_svc.as_ref().context("no reference store")?;
                        rows_of(&exact_svc.search(&tenant, &req).await?)
                            .into_iter()
                            .collect()
                    }
                    SearchMode::Keyword => continue,
                };
                found += rows_of(&r).iter().filter(|row| want.contains(row)).count();
                total += want.len();
            }
            lat.sort_by(f64::total_cmp);
            results.push(ModeResult {
                mode: mode.as_str().to_owned(),
                filtered,
                p50_ms: percentile(&lat, 0.50),
                p95_ms: percentile(&lat, 0.95),
                p99_ms: percentile(&lat, 0.99),
                recall_at_10: (total > 0).then(|| found as f64 / total as f64),
                rss_after_mb: super::rss_mb(),
            });
        }
    }
    store.close();
    if let Some(s) = exact_store {
        s.close();
    }
    Ok(Measured {
        rss_mb: super::peak_rss_mb(),
        rss_open_mb,
        vector: VectorSettings::of(&cfg.store),
        open_s,
        results,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{BenchCommand, Cli, Command};

    fn parse(args: &[&str]) -> Result<SearchArgs, clap::Error> {
        let cli = Cli::try_parse_from(["engram", "bench", "search"].iter().chain(args))?;
        match cli.command {
            Command::Bench {
                command: BenchCommand::Search(a),
            } => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn modes_name_the_modes_measured() {
        let a = parse(&["--measure", "d", "--modes", "semantic,hybrid"]).unwrap();
        assert_eq!(a.modes, vec![SearchMode::Semantic, SearchMode::Hybrid]);
        // None named: every mode.
        assert!(parse(&["--measure", "d"]).unwrap().modes.is_empty());
        let bad = parse(&["--measure", "d", "--modes", "semantic,fuzzy"])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("fuzzy") && bad.contains("--modes"), "{bad}");
        // Only a measuring run takes them.
        let alone = parse(&["--modes", "keyword"]).unwrap_err().to_string();
        assert!(alone.contains("--measure"), "{alone}");
    }
}
