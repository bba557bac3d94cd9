//! `engram bench corpus`: a benchmark corpus of real English sentences gathered from this
//! machine, embedded once with the configured embedder and cached on disk.
//!
//! # Sources
//!
//! Unique sentences are taken, in this order, from: man pages (`/usr/share/man/man*/`, the
//! troff sources read directly with their macros stripped), `/usr/share/doc` (plain text,
//! Markdown and gzipped text; `copyright` files skipped), Python docstrings and comments
//! under `/root/.pyenv/versions/3.11.7/lib/python3.11/`, Rust comments and Markdown under
//! `~/.cargo/registry/src/`, then — needed for a million — Python docstrings and comments
//! of `/usr/lib/google-cloud-sdk` and `/usr/lib/python3/dist-packages`, the Javadoc of the
//! JDK's `src.zip` (read with `unzip -p`), one Rust toolchain's HTML documentation (books
//! and API docs, `share/doc/rust/html`, source listings skipped) and comments in
//! `/usr/include` headers, and last the directories `$ENGRAM_BENCH_CORPUS_EXTRA` names
//! (`:`-separated; Python, Markdown, reStructuredText, text and HTML files). Missing sources
//! are skipped. Text is split into sentences,
//! whitespace normalised, and a sentence is kept when it has 6–60 words, starts with a
//! capital letter, ends with `.`, `!` or `?`, is mostly alphabetic ASCII without code-like
//! characters, looks like English (common function words) and is not
//! licence boilerplate. Then duplicates go: a sentence whose lowercase-alphanumeric-only
//! form occurs three times or more is boilerplate and dropped altogether, otherwise only its
//! first occurrence stays; and of sentences sharing their first 8 and last 4 words only the
//! first stays. The survivors are shuffled with a fixed seed so the sources are mixed.
//!
//! # Cache layout (a contract: `engram bench search` and `bench/peers/run.py` read it)
//!
//! Directory `$ENGRAM_BENCH_CORPUS`, else `~/.cache/engram/bench/corpus/`:
//!
//! * `sentences.txt`: one sentence per line (UTF-8, `\n`), in the fixed shuffled order. It
//!   only ever grows, by appending, so row numbers never change.
//! * `vectors.f32`: row `i` is the embedding of line `i`: row-major little-endian `f32`,
//!   `dim` values per row, no header. It may cover only a prefix of the sentences (embedding
//!   is incremental and resumable), and may hold a partly written row past `meta.vectors`.
//! * `meta.json`: `{"model": "<ModelInfo::key()>", "dim": 384, "sentences": <lines in
//!   sentences.txt>, "vectors": <complete rows in vectors.f32>}` (plus informational
//!   `sources`, `pool` and `seed`). When the configured model's key differs from `model`, the
//!   vectors are rebuilt from scratch into a fresh file.
//! * `lock`: present while a process gathers or embeds (holds its pid); others wait.
//!
//! # Benchmark protocol
//!
//! The corpus is the embedded rows, `0..total` with `total = meta.vectors` (which never
//! exceeds `meta.sentences`). With `n` memories and `q` queries (default 1,000):
//!
//! * memories are rows `0..n`;
//! * queries are the last `q` rows, `total - q..total` — never memories while
//!   `n <= total - q`, which [`ensure`] guarantees by embedding at least `n + q` rows;
//! * memory `i` belongs to user [`user_of`]`(i)` = `user-{i % 100}`;
//! * query `j` (0-based among the queries) has a filtered variant restricted to user
//!   [`user_of`]`(j)`, 1% of the memories;
//! * results are the top 10; recall@10 is measured against exact search (brute-force cosine
//!   over the memories, or over that user's memories for filtered queries).
//!
//! [`query_rows`] gives the query rows for a given `total`. Note that `total` grows when a
//! larger `n` is asked for, so the query set of a given `n` changes after the cache grows;
//! the memories `0..n` never do.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure as check, Context};
use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::Config;

/// Queries per benchmark unless told otherwise.
pub const QUERIES: usize = 1_000;
/// Users the memories are spread over.
pub const USERS: usize = 100;
/// Seed of the shuffle.
pub const SEED: u64 = 0x656e_6772_616d_2d31; // "engram-1"
/// The environment variable naming the cache directory.
pub const DIR_ENV: &str = "ENGRAM_BENCH_CORPUS";
/// The environment variable naming extra directories of text to gather (`:`-separated).
pub const EXTRA_ENV: &str = "ENGRAM_BENCH_CORPUS_EXTRA";
/// Sentences per embedding call.
const BATCH: usize = 64;
/// Embedding calls in flight.
const IN_FLIGHT: usize = 2;

#[derive(Args, Debug)]
pub struct CorpusArgs {
    /// Memories the corpus must hold (it gets `n + queries` embedded sentences).
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Query sentences kept apart from the memories.
    #[arg(long, default_value_t = QUERIES)]
    pub queries: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Only gather, and print how many unique sentences each source yields; the cache is
    /// left alone.
    #[arg(long)]
    pub sources_only: bool,
}

/// `n` memories followed by the queries: rows `0..n` of `sentences` (and of `vectors`, `dim`
/// values each) are the memories, the rest the queries.
pub struct Corpus {
    pub sentences: Vec<String>,
    pub vectors: Vec<f32>,
    pub dim: usize,
    /// How many of the rows are memories.
    pub n: usize,
}

impl Corpus {
    pub fn memories(&self) -> usize {
        self.n
    }
    pub fn queries(&self) -> usize {
        self.sentences.len() - self.n
    }
    pub fn memory_text(&self, i: usize) -> &str {
        assert!(i < self.n);
        &self.sentences[i]
    }
    pub fn memory_vector(&self, i: usize) -> &[f32] {
        assert!(i < self.n);
        self.row(i)
    }
    /// The user memory `i` belongs to.
    pub fn memory_user(&self, i: usize) -> String {
        user_of(i)
    }
    pub fn query_text(&self, j: usize) -> &str {
        &self.sentences[self.n + j]
    }
    pub fn query_vector(&self, j: usize) -> &[f32] {
        self.row(self.n + j)
    }
    /// The user query `j`'s filtered variant is restricted to.
    pub fn query_user(&self, j: usize) -> String {
        user_of(j)
    }
    /// All memory vectors, row-major.
    #[allow(dead_code)] // part of the protocol's API, for callers that index in bulk
    pub fn memory_vectors(&self) -> &[f32] {
        &self.vectors[..self.n * self.dim]
    }
    fn row(&self, r: usize) -> &[f32] {
        &self.vectors[r * self.dim..(r + 1) * self.dim]
    }
}

/// The user memory `i` belongs to, and the user query `i`'s filtered variant asks for.
pub fn user_of(i: usize) -> String {
    format!("user-{}", i % USERS)
}

/// The query rows of a corpus of `total` embedded rows.
pub fn query_rows(total: usize, queries: usize) -> std::ops::Range<usize> {
    total.saturating_sub(queries)..total
}

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/engram/bench/corpus")
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub model: String,
    pub dim: usize,
    pub sentences: usize,
    pub vectors: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceStats>,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SourceStats {
    pub source: String,
    pub files: usize,
    /// Sentences that passed the cleaner, before deduplication.
    pub clean: usize,
    /// Unique sentences this source contributed to the pool.
    pub unique: usize,
}

fn read_meta(dir: &Path) -> Option<Meta> {
    let s = fs::read_to_string(dir.join("meta.json")).ok()?;
    serde_json::from_str(&s).ok()
}

fn write_meta(dir: &Path, meta: &Meta) -> anyhow::Result<()> {
    let tmp = dir.join("meta.json.tmp");
    fs::write(&tmp, serde_json::to_string_pretty(meta)? + "\n")?;
    fs::rename(&tmp, dir.join("meta.json"))?;
    Ok(())
}

fn count_lines(path: &Path) -> anyhow::Result<usize> {
    match File::open(path) {
        Ok(f) => {
            let mut n = 0;
            let mut r = BufReader::with_capacity(1 << 20, f);
            loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                n += buf.iter().filter(|&&b| b == b'\n').count();
                let len = buf.len();
                r.consume(len);
            }
            Ok(n)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A lock file holding our pid; removed on drop. Waits while a live process holds it.
struct Lock(PathBuf);

impl Lock {
    fn take(dir: &Path) -> anyhow::Result<Lock> {
        let path = dir.join("lock");
        let mut warned = false;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    write!(f, "{}", std::process::id())?;
                    return Ok(Lock(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = fs::read_to_string(&path).unwrap_or_default();
                    let pid = pid.trim();
                    let alive = !pid.is_empty() && Path::new("/proc").join(pid).exists();
                    if !alive {
                        // Stale (its process died), or being written this instant.
                        std::thread::sleep(Duration::from_millis(200));
                        let again = fs::read_to_string(&path).unwrap_or_default();
                        if again.trim() == pid {
                            let _ = fs::remove_file(&path);
                        }
                        continue;
                    }
                    if !warned {
                        eprintln!(
                            "bench corpus: waiting for process {pid}, which is building the corpus in {}",
                            dir.display()
                        );
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_secs(2));
                }
                Err(e) => return Err(e).context(format!("creating {}", path.display())),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// What [`prepare`] did.
#[derive(Debug, Default)]
pub struct Report {
    pub dir: PathBuf,
    pub model: String,
    pub dim: usize,
    pub sentences: usize,
    pub vectors: usize,
    pub gather_s: f64,
    pub embed_s: f64,
    pub sources: Vec<SourceStats>,
}

/// Makes sure the cache holds at least `rows` sentences with their vectors under the
/// configured model, gathering and embedding what is missing.
pub async fn prepare(cfg: &Config, rows: usize) -> anyhow::Result<Report> {
    let dir = cache_dir();
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let embedder = engram_embed::build(&cfg.embedding).await?;
    let model = embedder.model();
    let key = model.key();
    let dim = model.dim;
    let mut report = Report {
        dir: dir.clone(),
        model: key.clone(),
        dim,
        ..Default::default()
    };

    // Nothing to do?
    if let Some(m) = read_meta(&dir) {
        if m.model == key && m.dim == dim && m.vectors >= rows && m.sentences >= m.vectors {
            report.sentences = m.sentences;
            report.vectors = m.vectors;
            report.sources = m.sources;
            return Ok(report);
        }
    }
    let _lock = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || Lock::take(&dir)
    })
    .await??;

    let sentences_path = dir.join("sentences.txt");
    let vectors_path = dir.join("vectors.f32");
    let mut meta = read_meta(&dir).unwrap_or_default();
    let mut sentences = count_lines(&sentences_path)?;
    if meta.sentences != sentences {
        meta.sentences = sentences;
    }

    // 1. Sentences.
    if sentences < rows {
        let started = Instant::now();
        let existing: Vec<String> = if sentences > 0 {
            fs::read_to_string(&sentences_path)?
                .lines()
                .map(str::to_owned)
                .collect()
        } else {
            Vec::new()
        };
        eprintln!(
            "bench corpus: gathering sentences ({} cached, {rows} needed)…",
            existing.len()
        );
        let (pool, stats) = tokio::task::spawn_blocking(gather_pool).await??;
        let extra = extend(&existing, pool, rows - existing.len());
        check!(
            existing.len() + extra.len() >= rows,
            "this machine yields only {} unique sentences; {rows} are needed (name \
             directories of more text in {EXTRA_ENV})",
            existing.len() + extra.len()
        );
        let tmp = dir.join("sentences.txt.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            for s in existing.iter().chain(extra.iter()) {
                w.write_all(s.as_bytes())?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
        }
        fs::rename(&tmp, &sentences_path)?;
        sentences = existing.len() + extra.len();
        meta.sentences = sentences;
        meta.pool = stats.iter().map(|s| s.unique).sum::<usize>().into();
        meta.sources = stats.clone();
        meta.seed = SEED;
        report.sources = stats;
        report.gather_s = started.elapsed().as_secs_f64();
        eprintln!(
            "bench corpus: {sentences} sentences in {} ({:.1} s)",
            sentences_path.display(),
            report.gather_s
        );
    } else {
        report.sources = meta.sources.clone();
    }

    // 2. Vectors.
    let row_bytes = (dim * 4) as u64;
    let fresh = meta.model != key || meta.dim != dim;
    if fresh && vectors_path.exists() {
        eprintln!(
            "bench corpus: cached vectors are of {:?}, not {key}; embedding afresh",
            meta.model
        );
        fs::remove_file(&vectors_path)?;
    }
    meta.model = key.clone();
    meta.dim = dim;
    let on_disk = fs::metadata(&vectors_path).map(|m| m.len()).unwrap_or(0) / row_bytes;
    let mut done = (on_disk as usize).min(sentences);
    {
        // Drop a partly written row, and anything past the sentences.
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&vectors_path)?;
        f.set_len(done as u64 * row_bytes)?;
    }
    meta.vectors = done;
    write_meta(&dir, &meta)?;
    if done < rows {
        let started = Instant::now();
        let todo: Vec<String> = read_rows(&sentences_path, done, rows)?;
        let first = done;
        eprintln!(
            "bench corpus: embedding rows {first}..{rows} with {key} ({} to go)",
            rows - first
        );
        let mut out = BufWriter::with_capacity(
            1 << 20,
            OpenOptions::new().append(true).open(&vectors_path)?,
        );
        let mut batches = futures::stream::iter(todo.chunks(BATCH).map(|c| {
            let e = embedder.clone();
            let texts = c.to_vec();
            async move { e.embed_documents(&texts).await }
        }))
        .buffered(IN_FLIGHT);
        let mut last = Instant::now();
        let mut bytes = Vec::with_capacity(BATCH * dim * 4);
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            bytes.clear();
            for doc in &batch {
                let v = doc
                    .windows
                    .first()
                    .context("the embedder returned no vector")?;
                check!(v.len() == dim, "the embedder returned {} values", v.len());
                for x in v {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
            }
            out.write_all(&bytes)?;
            done += batch.len();
            if last.elapsed() >= Duration::from_secs(5) || done >= rows {
                out.flush()?;
                meta.vectors = done;
                write_meta(&dir, &meta)?;
                let secs = started.elapsed().as_secs_f64();
                let rate = (done - first) as f64 / secs;
                let eta = (rows - done) as f64 / rate.max(1e-9);
                eprintln!(
                    "bench corpus: {done}/{rows} embedded, {rate:.0}/s, {:.0} s elapsed, ~{:.0} s left",
                    secs, eta
                );
                last = Instant::now();
            }
        }
        out.flush()?;
        out.get_ref().sync_data()?;
        meta.vectors = done;
        write_meta(&dir, &meta)?;
        report.embed_s = started.elapsed().as_secs_f64();
    }
    report.sentences = meta.sentences;
    report.vectors = meta.vectors;
    Ok(report)
}

/// Lines `from..to` of a file.
fn read_rows(path: &Path, from: usize, to: usize) -> anyhow::Result<Vec<String>> {
    let r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let rows: Vec<String> = r
        .lines()
        .skip(from)
        .take(to - from)
        .collect::<Result<_, _>>()?;
    check!(rows.len() == to - from, "{} is short", path.display());
    Ok(rows)
}

/// Rows `from..to` of the vectors file, read in large blocks.
fn read_vectors(path: &Path, dim: usize, from: usize, to: usize) -> anyhow::Result<Vec<f32>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start((from * dim * 4) as u64))?;
    let total = (to - from) * dim;
    let mut out = Vec::with_capacity(total);
    let mut buf = vec![0u8; (1 << 24).min(total * 4).max(4)];
    while out.len() < total {
        let want = ((total - out.len()) * 4).min(buf.len());
        f.read_exact(&mut buf[..want])
            .with_context(|| format!("{} is short", path.display()))?;
        out.extend(
            buf[..want]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(out)
}

/// Gathers and embeds what is missing, then returns `n` memories followed by `queries`
/// queries, per the protocol in the module documentation.
pub async fn ensure(cfg: &Config, n: usize, queries: usize) -> anyhow::Result<Corpus> {
    let report = prepare(cfg, n + queries).await?;
    let dir = report.dir;
    // Another process may have grown the cache meanwhile: take the vectors as meta says.
    let meta = read_meta(&dir).context("meta.json vanished")?;
    let total = meta.vectors.min(meta.sentences);
    check!(total >= n + queries, "the corpus holds only {total} rows");
    let dim = meta.dim;
    let qr = query_rows(total, queries);
    let sentences_path = dir.join("sentences.txt");
    let vectors_path = dir.join("vectors.f32");
    let mut sentences = Vec::with_capacity(n + queries);
    {
        let r = BufReader::with_capacity(1 << 20, File::open(&sentences_path)?);
        for (i, line) in r.lines().enumerate() {
            if i >= qr.end {
                break;
            }
            if i < n || qr.contains(&i) {
                sentences.push(line?);
            }
        }
    }
    check!(sentences.len() == n + queries, "sentences.txt is short");
    let mut vectors = read_vectors(&vectors_path, dim, 0, n)?;
    vectors.extend(read_vectors(&vectors_path, dim, qr.start, qr.end)?);
    Ok(Corpus {
        sentences,
        vectors,
        dim,
        n,
    })
}

pub async fn run(cfg: &Config, args: CorpusArgs) -> anyhow::Result<()> {
    check!(args.n > 0, "--n must be positive");
    if args.sources_only {
        let started = Instant::now();
        let (pool, stats) = tokio::task::spawn_blocking(gather_pool).await??;
        println!(
            "{}",
            json!({
                "pool": pool.len(),
                "sources": stats,
                "gather_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            })
        );
        return Ok(());
    }
    let r = prepare(cfg, args.n + args.queries).await?;
    let mut out = json!({
        "sentences": r.sentences,
        "vectors": r.vectors,
        "dim": r.dim,
        "model": r.model,
        "dir": r.dir.display().to_string(),
        "gather_s": (r.gather_s * 10.0).round() / 10.0,
        "embed_s": (r.embed_s * 10.0).round() / 10.0,
    });
    if !r.sources.is_empty() {
        out["sources"] = serde_json::to_value(
            r.sources
                .iter()
                .map(|s| (s.source.clone(), s.unique))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )?;
    }
    if args.json {
        println!("{out}");
    } else {
        for s in &r.sources {
            eprintln!(
                "  {:<8} {:>7} files {:>9} clean sentences {:>9} unique",
                s.source, s.files, s.clean, s.unique
            );
        }
        println!(
            "{} sentences, {} vectors ({} dims, {}) in {}",
            r.sentences,
            r.vectors,
            r.dim,
            r.model,
            r.dir.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Gathering.

/// The `.py` files among `paths`.
fn python_files(paths: Vec<PathBuf>) -> Vec<(PathBuf, Kind)> {
    paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .map(|p| (p, Kind::Python))
        .collect()
}

/// Kinds of text a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Troff,
    Text,
    Markdown,
    Python,
    Rust,
    /// C, C++, Java, JavaScript: block and line comments, Javadoc markup removed.
    CLike,
    Html,
}

struct Source {
    name: &'static str,
    files: Vec<(PathBuf, Kind)>,
}

fn walk(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(root) else { return };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            walk(&p, out);
        } else if ft.is_file() {
            out.push(p);
        }
    }
}

fn sources() -> Vec<Source> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let mut out = Vec::new();

    let mut man = Vec::new();
    for sec in 1..=9 {
        walk(Path::new(&format!("/usr/share/man/man{sec}")), &mut man);
    }
    out.push(Source {
        name: "man",
        files: man.into_iter().map(|p| (p, Kind::Troff)).collect(),
    });

    let mut doc = Vec::new();
    walk(Path::new("/usr/share/doc"), &mut doc);
    let doc = doc
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_ascii_lowercase();
            if name.starts_with("copyright") || name.contains("license") {
                return None;
            }
            let base = name.strip_suffix(".gz").unwrap_or(&name);
            let kind = if base.ends_with(".md") {
                Kind::Markdown
            } else if base.ends_with(".txt")
                || base.starts_with("readme")
                || base.starts_with("changelog")
                || base.starts_with("news")
                || base.starts_with("faq")
                || !base.contains('.')
                || base.ends_with(".debian")
                || base.ends_with(".rst")
            {
                Kind::Text
            } else {
                return None;
            };
            Some((p, kind))
        })
        .collect();
    out.push(Source {
        name: "doc",
        files: doc,
    });

    let mut py = Vec::new();
    walk(
        Path::new("/root/.pyenv/versions/3.11.7/lib/python3.11"),
        &mut py,
    );
    out.push(Source {
        name: "python",
        files: python_files(py),
    });

    let mut rs = Vec::new();
    walk(&home.join(".cargo/registry/src"), &mut rs);
    out.push(Source {
        name: "rust",
        files: rs
            .into_iter()
            .filter_map(|p| {
                let kind = match p.extension()?.to_str()? {
                    "rs" => Kind::Rust,
                    "md" => Kind::Markdown,
                    _ => return None,
                };
                Some((p, kind))
            })
            .collect(),
    });

    // More Python docstrings and comments: the Google Cloud SDK and Debian's packages.
    let mut more_py = Vec::new();
    walk(Path::new("/usr/lib/google-cloud-sdk"), &mut more_py);
    walk(Path::new("/usr/lib/python3/dist-packages"), &mut more_py);
    out.push(Source {
        name: "python-more",
        files: python_files(more_py),
    });

    // Javadoc of the JDK's sources, one module of src.zip at a time.
    let mut java = Vec::new();
    for zip in [
        "/usr/lib/jvm/temurin-25-jdk-amd64/lib/src.zip",
        "/usr/lib/jvm/java-17-openjdk-amd64/lib/src.zip",
    ] {
        if let Some(modules) = zip_modules(Path::new(zip)) {
            java.extend(
                modules
                    .into_iter()
                    .map(|m| (PathBuf::from(format!("{zip}{ZIP_SEP}{m}")), Kind::CLike)),
            );
        }
    }
    out.push(Source {
        name: "java",
        files: java,
    });

    // The Rust documentation shipped with one toolchain (books and API docs), as HTML: the
    // `stable` one, else the first by name. Several toolchains hold largely the same pages,
    // and a sentence met three times counts as boilerplate, so reading them all would drop
    // most of their text.
    let mut rustdoc = Vec::new();
    let toolchains = home.join(".rustup/toolchains");
    let html = |name: &str| toolchains.join(name).join("share/doc/rust/html");
    if let Ok(rd) = fs::read_dir(&toolchains) {
        let names = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| html(n).is_dir());
        if let Some(tc) = pick_toolchain(names) {
            walk(&html(&tc), &mut rustdoc);
        }
    }
    out.push(Source {
        name: "rustdoc",
        files: rustdoc
            .into_iter()
            .filter(|p| {
                p.extension().is_some_and(|e| e == "html")
                    && !p.components().any(|c| c.as_os_str() == "src")
            })
            .map(|p| (p, Kind::Html))
            .collect(),
    });

    // C headers' comments.
    let mut c = Vec::new();
    walk(Path::new("/usr/include"), &mut c);
    out.push(Source {
        name: "c",
        files: c
            .into_iter()
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "h" || e == "hpp" || e == "hh")
            })
            .map(|p| (p, Kind::CLike))
            .collect(),
    });

    // Directories named by `ENGRAM_BENCH_CORPUS_EXTRA` (separated by `:`), for machines
    // whose own text falls short of a large corpus: Python, Markdown, reStructuredText,
    // plain text and HTML files under them.
    let mut extra = Vec::new();
    if let Some(dirs) = std::env::var_os(EXTRA_ENV) {
        for d in std::env::split_paths(&dirs) {
            walk(&d, &mut extra);
        }
    }
    out.push(Source {
        name: "extra",
        files: extra
            .into_iter()
            .filter_map(|p| {
                let kind = match p.extension()?.to_str()? {
                    "py" => Kind::Python,
                    "md" => Kind::Markdown,
                    "rst" | "txt" => Kind::Text,
                    "html" | "htm" => Kind::Html,
                    _ => return None,
                };
                Some((p, kind))
            })
            .collect(),
    });
    out
}

/// The toolchain whose documentation is read: the `stable` one, else the first by name.
fn pick_toolchain(names: impl Iterator<Item = String>) -> Option<String> {
    let mut names: Vec<String> = names.collect();
    names.sort();
    let stable = names.iter().position(|n| n.starts_with("stable"));
    let i = stable.unwrap_or(0);
    (i < names.len()).then(|| names.swap_remove(i))
}

/// Separates a zip archive from a top-level folder in a source path.
const ZIP_SEP: &str = "//";

/// Top-level folders of a zip archive (`unzip -Z1`).
fn zip_modules(zip: &Path) -> Option<Vec<String>> {
    if !zip.exists() {
        return None;
    }
    let out = Command::new("unzip")
        .arg("-Z1")
        .arg(zip)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let mut mods: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(".java"))
        .filter_map(|l| l.split('/').next().map(str::to_owned))
        .collect();
    mods.sort();
    mods.dedup();
    Some(mods)
}

/// A file's text: gunzipped by `gzip -dc` when it ends in `.gz`; lossy UTF-8.
fn read_text(path: &Path) -> Option<String> {
    let as_str = path.to_string_lossy();
    let bytes = if let Some((zip, module)) = as_str.split_once(ZIP_SEP) {
        let out = Command::new("unzip")
            .arg("-p")
            .arg(zip)
            .arg(format!("{module}/*.java"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.stdout
    } else if path.extension().is_some_and(|e| e == "gz") {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(path)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.stdout
    } else {
        let meta = fs::metadata(path).ok()?;
        if meta.len() > 20 << 20 {
            return None;
        }
        fs::read(path).ok()?
    };
    if bytes.iter().take(8192).any(|&b| b == 0) {
        return None; // binary
    }
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn sentences_of_file(path: &Path, kind: Kind) -> Vec<String> {
    let Some(text) = read_text(path) else {
        return Vec::new();
    };
    let paragraphs = match kind {
        Kind::Troff => troff_paragraphs(&text),
        Kind::Text => text_paragraphs(&text),
        Kind::Markdown => markdown_paragraphs(&text),
        Kind::Python => python_paragraphs(&text),
        Kind::Rust => rust_paragraphs(&text),
        Kind::CLike => c_paragraphs(&text),
        Kind::Html => html_paragraphs(&text),
    };
    let mut out = Vec::new();
    for p in paragraphs {
        for s in split_sentences(&p) {
            if let Some(s) = clean(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// Every unique sentence of every source, shuffled, and what each source gave.
fn gather_pool() -> anyhow::Result<(Vec<String>, Vec<SourceStats>)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let mut all: Vec<(u8, String)> = Vec::new();
    let mut stats = Vec::new();
    for (si, src) in sources().into_iter().enumerate() {
        let started = Instant::now();
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Vec<String>>> = Mutex::new(vec![Vec::new(); src.files.len()]);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((path, kind)) = src.files.get(i) else {
                        break;
                    };
                    let got = sentences_of_file(path, *kind);
                    results.lock().unwrap()[i] = got;
                });
            }
        });
        let results = results.into_inner().unwrap();
        let clean: usize = results.iter().map(Vec::len).sum();
        eprintln!(
            "bench corpus: {:<7} {:>6} files, {:>8} clean sentences ({:.1} s)",
            src.name,
            src.files.len(),
            clean,
            started.elapsed().as_secs_f64()
        );
        stats.push(SourceStats {
            source: src.name.to_owned(),
            files: src.files.len(),
            clean,
            unique: 0,
        });
        all.extend(
            results
                .into_iter()
                .flatten()
                .map(|s| (u8::try_from(si).unwrap_or(u8::MAX), s)),
        );
    }
    let kept = dedup(all);
    for (si, _) in &kept {
        if let Some(s) = stats.get_mut(*si as usize) {
            s.unique += 1;
        }
    }
    let mut pool: Vec<String> = kept.into_iter().map(|(_, s)| s).collect();
    shuffle(&mut pool, SEED);
    eprintln!(
        "bench corpus: {} unique sentences ({})",
        pool.len(),
        stats
            .iter()
            .map(|s| format!("{} {}", s.source, s.unique))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((pool, stats))
}

/// The next `want` sentences of the shuffled pool that are not near duplicates of what is
/// already cached.
fn extend(existing: &[String], pool: Vec<String>, want: usize) -> Vec<String> {
    let mut seen_exact: HashSet<u64> = existing.iter().map(|s| hash(&norm_key(s))).collect();
    let mut seen_near: HashSet<u64> = existing.iter().map(|s| hash(&near_key(s))).collect();
    let mut out = Vec::with_capacity(want);
    for s in pool {
        if out.len() >= want {
            break;
        }
        if seen_exact.insert(hash(&norm_key(&s))) && seen_near.insert(hash(&near_key(&s))) {
            out.push(s);
        }
    }
    out
}

fn hash(s: &str) -> u64 {
    // SipHash with fixed keys: stable across runs.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// The lowercase-alphanumeric-only form.
pub fn norm_key(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// First 8 and last 4 words, normalised: sentences sharing it are near duplicates.
pub fn near_key(s: &str) -> String {
    let words: Vec<String> = s
        .split_whitespace()
        .map(norm_key)
        .filter(|w| !w.is_empty())
        .collect();
    let head = &words[..words.len().min(8)];
    let tail = &words[words.len().saturating_sub(4)..];
    format!("{}|{}", head.join(" "), tail.join(" "))
}

/// Forms seen this often or more are boilerplate and dropped altogether.
const BOILERPLATE_COUNT: u32 = 3;

/// Count-based deduplication, keeping input order: a sentence whose normalised form occurs
/// [`BOILERPLATE_COUNT`] times or more is dropped altogether; otherwise the first occurrence
/// stays, unless an earlier kept sentence has the same first 8 and last 4 words.
pub fn dedup<T>(items: Vec<(T, String)>) -> Vec<(T, String)> {
    let keys: Vec<u64> = items.iter().map(|(_, s)| hash(&norm_key(s))).collect();
    let mut counts: HashMap<u64, u32> = HashMap::with_capacity(items.len());
    for k in &keys {
        *counts.entry(*k).or_default() += 1;
    }
    let mut seen: HashSet<u64> = HashSet::with_capacity(items.len());
    let mut near: HashSet<u64> = HashSet::with_capacity(items.len());
    items
        .into_iter()
        .zip(keys)
        .filter(|((_, s), k)| {
            counts[k] < BOILERPLATE_COUNT && seen.insert(*k) && near.insert(hash(&near_key(s)))
        })
        .map(|(item, _)| item)
        .collect()
}

/// Fisher–Yates with SplitMix64: the same order for the same input, whatever the version
/// of any crate.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

// ---------------------------------------------------------------------------------------
// Paragraphs of each kind of file. A paragraph is text whose line breaks mean nothing.

/// Collects lines into paragraphs.
#[derive(Default)]
struct Paras {
    out: Vec<String>,
    cur: String,
}

impl Paras {
    fn push(&mut self, text: &str) {
        let t = text.trim();
        if t.is_empty() {
            return;
        }
        if !self.cur.is_empty() {
            self.cur.push(' ');
        }
        self.cur.push_str(t);
    }
    fn brk(&mut self) {
        if !self.cur.is_empty() {
            self.out.push(std::mem::take(&mut self.cur));
        }
    }
    fn finish(mut self) -> Vec<String> {
        self.brk();
        self.out
    }
}

/// Starts a list item or heading (which begins a paragraph of its own).
fn is_item(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("* ")
        || t.starts_with("- ")
        || t.starts_with("+ ")
        || t.starts_with('#')
        || t.starts_with('|')
        || t.starts_with("o ")
        || {
            let digits = t.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") "))
        }
}

fn strip_item(line: &str) -> &str {
    let t = line.trim_start();
    for p in ["* ", "- ", "+ ", "o "] {
        if let Some(r) = t.strip_prefix(p) {
            return r;
        }
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") ")) {
        return &t[digits + 2..];
    }
    t
}

/// Plain text: blank lines, list items and strongly indented lines separate paragraphs.
pub fn text_paragraphs(text: &str) -> Vec<String> {
    let mut p = Paras::default();
    let mut last_indent = 0;
    for line in text.lines() {
        if line.trim().is_empty() {
            p.brk();
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if is_item(line) || indent.abs_diff(last_indent) >= 4 {
            p.brk();
        }
        last_indent = indent;
        if line.trim_start().starts_with('#') {
            continue;
        }
        p.push(strip_item(line));
    }
    p.finish()
}

/// Markdown: as text, without code blocks, headings, tables, and inline markup.
pub fn markdown_paragraphs(text: &str) -> Vec<String> {
    let mut p = Paras::default();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
            p.brk();
            continue;
        }
        if fenced || line.starts_with("    ") || line.starts_with('\t') {
            p.brk();
            continue;
        }
        if t.is_empty() || t.starts_with('#') || t.starts_with('|') || t.starts_with('<') {
            p.brk();
            continue;
        }
        if is_item(t) || t.starts_with('>') {
            p.brk();
        }
        p.push(&unmark(strip_item(t.trim_start_matches('>').trim_start())));
    }
    p.finish()
}

/// Removes Markdown inline markup: `code` ticks, emphasis, links `[text](url)` → text.
pub fn unmark(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' | '*' => {}
            '[' => {}
            ']' => {
                // Drop a following (url) or [ref].
                if let Some(&open) = chars.peek() {
                    let close = match open {
                        '(' => ')',
                        '[' => ']',
                        _ => {
                            continue;
                        }
                    };
                    let rest: String = chars.clone().collect();
                    if let Some(end) = rest.find(close) {
                        if !rest[1..end].contains(' ') {
                            for _ in 0..rest[..=end].chars().count() {
                                chars.next();
                            }
                        }
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Python: comments (runs of `#` lines) and docstrings.
pub fn python_paragraphs(text: &str) -> Vec<String> {
    let mut p = Paras::default();
    let mut in_doc: Option<&str> = None;
    let mut example = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(q) = in_doc {
            let (body, closed) = match t.find(q) {
                Some(i) => (&t[..i], true),
                None => (t, false),
            };
            doc_line(&mut p, &mut example, body);
            if closed {
                p.brk();
                in_doc = None;
            }
            continue;
        }
        if let Some(c) = t.strip_prefix('#') {
            if c.starts_with('!') || c.starts_with('#') {
                p.brk();
                continue;
            }
            let c = c.trim();
            if c.is_empty() || is_item(c) {
                p.brk();
            }
            p.push(strip_item(c));
            continue;
        }
        p.brk();
        // A docstring opens a line (possibly after a string prefix).
        let t2 = t
            .strip_prefix(['r', 'u', 'R', 'U'])
            .filter(|r| r.starts_with(['"', '\'']))
            .unwrap_or(t);
        for q in ["\"\"\"", "'''"] {
            if let Some(rest) = t2.strip_prefix(q) {
                example = false;
                match rest.find(q) {
                    Some(i) => {
                        doc_line(&mut p, &mut example, &rest[..i]);
                        p.brk();
                    }
                    None => {
                        doc_line(&mut p, &mut example, rest);
                        in_doc = Some(q);
                    }
                }
                break;
            }
        }
    }
    p.finish()
}

/// One line of a docstring: doctest examples (to the next blank line), reST directives,
/// fields and rules are left out.
fn doc_line(p: &mut Paras, example: &mut bool, t: &str) {
    let t = t.trim();
    if t.is_empty() {
        *example = false;
        p.brk();
        return;
    }
    if t.starts_with(">>>") {
        *example = true;
        p.brk();
        return;
    }
    if *example {
        return;
    }
    if t.starts_with("..")
        || t.starts_with(':')
        || t.starts_with("---")
        || t.starts_with("===")
        || t.starts_with("~~~")
    {
        p.brk();
        return;
    }
    if is_item(t) {
        p.brk();
    }
    p.push(&unmark(strip_item(t)));
}

/// Rust: `///`, `//!` and `//` comments, without code blocks in docs.
pub fn rust_paragraphs(text: &str) -> Vec<String> {
    let mut p = Paras::default();
    let mut fenced = false;
    for line in text.lines() {
        let t = line.trim();
        let Some(c) = t
            .strip_prefix("///")
            .or_else(|| t.strip_prefix("//!"))
            .or_else(|| t.strip_prefix("//"))
        else {
            p.brk();
            fenced = false;
            continue;
        };
        if c.starts_with('/') {
            p.brk();
            continue;
        }
        let c = c.trim();
        if c.starts_with("```") {
            fenced = !fenced;
            p.brk();
            continue;
        }
        if fenced {
            continue;
        }
        if c.is_empty() || c.starts_with('#') || c.starts_with('|') || is_item(c) {
            p.brk();
            if c.starts_with('#') || c.starts_with('|') {
                continue;
            }
        }
        p.push(&unmark(strip_item(c)));
    }
    p.finish()
}

/// C-like sources: `/* */` and `//` comments, with Javadoc and HTML markup removed and
/// `@param`-style tags ending paragraphs.
pub fn c_paragraphs(text: &str) -> Vec<String> {
    let mut p = Paras::default();
    let mut in_block = false;
    let mut pre = false;
    for line in text.lines() {
        let t = line.trim();
        let body: &str;
        let mut ends = false;
        if in_block {
            let (b, closed) = match t.find("*/") {
                Some(i) => (&t[..i], true),
                None => (t, false),
            };
            if closed {
                in_block = false;
                ends = true;
            }
            body = b.trim_start_matches('*').trim();
        } else if let Some(r) = t.strip_prefix("/*") {
            let r = r.trim_start_matches(['*', '!']);
            match r.find("*/") {
                Some(i) => {
                    body = r[..i].trim();
                    ends = true;
                }
                None => {
                    in_block = true;
                    body = r.trim();
                }
            }
        } else if let Some(r) = t.strip_prefix("//") {
            body = r.trim_start_matches(['/', '!']).trim();
        } else {
            p.brk();
            pre = false;
            continue;
        }
        let lower = body.to_ascii_lowercase();
        if pre || lower.contains("<pre") {
            pre = !lower.contains("</pre");
            p.brk();
        } else if body.is_empty() || body.starts_with('@') || body.starts_with('#') {
            p.brk();
        } else {
            if is_item(body) {
                p.brk();
            }
            p.push(strip_item(body));
        }
        if ends {
            p.brk();
            pre = false;
        }
    }
    p.finish()
        .iter()
        .flat_map(|para| {
            strip_tags(para)
                .split('\u{1}')
                .map(|part| unmark(part.trim()))
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Removes Javadoc inline tags (`{@code x}` → `x`) and HTML tags; block-level tags
/// become `\u{1}`, a paragraph break.
pub fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['<', '{', '&']) {
        out.push_str(&rest[..i]);
        let r = &rest[i..];
        if let Some(inner) = r.strip_prefix("{@") {
            // {@code x}, {@link a.B#c label}: the label, else the target.
            let end = inner.find('}').unwrap_or(inner.len());
            let words: Vec<&str> = inner[..end].split_whitespace().skip(1).collect();
            let text = if words.len() > 1 && r.starts_with("{@link") {
                words[1..].join(" ")
            } else {
                words.join(" ").replace('#', ".")
            };
            out.push_str(&text);
            rest = inner.get(end + 1..).unwrap_or("");
        } else if r.starts_with('<') {
            let end = r.find('>').map(|e| e + 1).unwrap_or(r.len());
            // A lone '<' at the end of the text has no tag name.
            let tag = r
                .get(1..end.saturating_sub(1))
                .unwrap_or("")
                .trim_start_matches('/')
                .split([' ', '/'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if matches!(
                tag.as_str(),
                "p" | "br"
                    | "li"
                    | "ul"
                    | "ol"
                    | "dl"
                    | "dt"
                    | "dd"
                    | "div"
                    | "table"
                    | "tr"
                    | "td"
                    | "th"
                    | "h1"
                    | "h2"
                    | "h3"
                    | "h4"
                    | "h5"
                    | "h6"
                    | "pre"
                    | "section"
                    | "blockquote"
                    | "hr"
                    | "summary"
                    | "details"
            ) {
                out.push('\u{1}');
            }
            rest = &r[end..];
        } else if let Some(after) = r.strip_prefix('&') {
            match after.find(';').filter(|&e| e < 9) {
                Some(e) => {
                    out.push_str(match &after[..e] {
                        "amp" => "&",
                        "lt" => "<",
                        "gt" => ">",
                        "quot" => "\"",
                        "apos" | "#39" | "#x27" => "'",
                        "nbsp" => " ",
                        "mdash" | "ndash" => "-",
                        _ => "",
                    });
                    rest = &after[e + 1..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        } else {
            // A lone `{`.
            out.push('{');
            rest = r.strip_prefix('{').unwrap_or(&r[1..]);
        }
    }
    out.push_str(rest);
    out
}

/// HTML pages: the text of paragraphs and list items, without scripts, styles, code
/// blocks, navigation and headings.
pub fn html_paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut flush = |cur: &mut String| {
        let t = strip_tags(cur).replace('\u{1}', " ");
        let t = t.split_whitespace().collect::<Vec<_>>().join(" ");
        if !t.is_empty() {
            out.push(t);
        }
        cur.clear();
    };
    let mut rest = text;
    while !rest.is_empty() {
        let Some(i) = rest.find('<') else {
            cur.push_str(rest);
            break;
        };
        cur.push_str(&rest[..i]);
        let r = &rest[i..];
        let end = r.find('>').map(|e| e + 1).unwrap_or(r.len());
        let closing = r[1..].starts_with('/');
        let tag = r[1..end.saturating_sub(1)]
            .split([' ', '/', '\n'])
            .find(|s| !s.is_empty())
            .unwrap_or("")
            .to_ascii_lowercase();
        rest = &r[end..];
        let skip_to = |rest: &str, close: &str| -> usize {
            match rest.find(close) {
                Some(j) => j + rest[j..].find('>').map(|e| e + 1).unwrap_or(rest.len() - j),
                None => rest.len(),
            }
        };
        if closing {
            if matches!(
                tag.as_str(),
                "p" | "li" | "div" | "td" | "dd" | "dt" | "blockquote" | "section"
            ) {
                flush(&mut cur);
            }
            continue;
        }
        match tag.as_str() {
            "script" | "style" | "pre" | "nav" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                flush(&mut cur);
                let close = match tag.as_str() {
                    "script" => "</script",
                    "style" => "</style",
                    "pre" => "</pre",
                    "nav" => "</nav",
                    _ => "</h",
                };
                rest = &rest[skip_to(rest, close)..];
            }
            "p" | "br" | "li" | "ul" | "ol" | "div" | "table" | "tr" | "td" | "th" | "dt"
            | "dd" | "section" | "blockquote" | "hr" | "summary" | "details" => flush(&mut cur),
            _ => {}
        }
    }
    flush(&mut cur);
    out
}

/// Man pages in troff (man or mdoc macros): macros stripped, text-bearing macros kept as
/// text, no-fill blocks and tables skipped.
pub fn troff_paragraphs(text: &str) -> Vec<String> {
    let mut p = Paras::default();
    let mut skip_until: Option<&str> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        if let Some(end) = skip_until {
            if line.starts_with(end) {
                skip_until = None;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('.').or_else(|| line.strip_prefix('\'')) {
            let rest = rest.trim_start();
            if rest.starts_with("\\\"") || rest.is_empty() {
                continue; // comment
            }
            let (name, args) = match rest.find([' ', '\t']) {
                Some(i) => (&rest[..i], rest[i..].trim()),
                None => (rest, ""),
            };
            match name {
                "nf" => {
                    p.brk();
                    skip_until = Some(".fi");
                }
                "EX" => {
                    p.brk();
                    skip_until = Some(".EE");
                }
                "TS" => {
                    p.brk();
                    skip_until = Some(".TE");
                }
                "de" => skip_until = Some(".."),
                "Bd" => {
                    p.brk();
                    if args.contains("-literal") || args.contains("-unfilled") {
                        skip_until = Some(".Ed");
                    }
                }
                // Inline font and mdoc macros whose arguments are running text.
                "B" | "I" | "BI" | "IB" | "BR" | "RB" | "IR" | "RI" | "SM" | "SB" | "Nm" | "Ar"
                | "Fl" | "Cm" | "Em" | "Sy" | "Pa" | "Xr" | "Dq" | "Qq" | "Sq" | "Li" | "Va"
                | "Fn" | "Fa" | "Ev" | "Ql" | "Dv" | "Er" | "Ic" | "Tn" => {
                    let words: String = args
                        .split_whitespace()
                        .filter(|w| !MDOC_CALLABLE.contains(w))
                        .collect::<Vec<_>>()
                        .join(" ");
                    let words = words.replace('"', "");
                    p.push(&troff_inline(&words));
                }
                _ => p.brk(),
            }
            continue;
        }
        if line.trim().is_empty() {
            p.brk();
            continue;
        }
        p.push(&troff_inline(line));
    }
    p.finish()
}

/// mdoc macros that may appear among another macro's arguments.
const MDOC_CALLABLE: &[&str] = &[
    "Ns", "Ar", "Fl", "Cm", "Pa", "Xr", "Ql", "Op", "Oo", "Oc", "Pq", "Dq", "Sq", "Em", "Sy", "Li",
    "Va", "Ev", "Nm", "No", "Ic", "Dv", "Er", "Fa", "Fn", "Tn", "Qq", "Aq", "Bq", "Brq",
];

/// Troff escapes in running text.
pub fn troff_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else { break };
        match e {
            '"' => break, // comment to the end of the line
            'f' | 'F' | 'n' | 'g' | 'k' | '$' => {
                // \fB, \f(CW, \f[B]
                match chars.next() {
                    Some('(') => {
                        chars.next();
                        chars.next();
                    }
                    Some('[') => {
                        for c in chars.by_ref() {
                            if c == ']' {
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
            '*' => match chars.next() {
                Some('(') => {
                    let a = chars.next().unwrap_or(' ');
                    let b = chars.next().unwrap_or(' ');
                    out.push_str(special(&format!("{a}{b}")));
                }
                Some('[') => {
                    let mut name = String::new();
                    for c in chars.by_ref() {
                        if c == ']' {
                            break;
                        }
                        name.push(c);
                    }
                    out.push_str(special(&name));
                }
                _ => {}
            },
            '(' => {
                let a = chars.next().unwrap_or(' ');
                let b = chars.next().unwrap_or(' ');
                out.push_str(special(&format!("{a}{b}")));
            }
            '[' => {
                let mut name = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    name.push(c);
                }
                out.push_str(special(&name));
            }
            's' => {
                // \s+1, \s-1, \s0, \s(12
                if matches!(chars.peek(), Some('+') | Some('-')) {
                    chars.next();
                }
                while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                    chars.next();
                }
            }
            'h' | 'v' | 'w' | 'l' | 'L' | 'o' | 'X' | 'Z' | 'b' | 'D' | 'x' | 'R' => {
                // \h'...' and friends: drop the delimited argument.
                if let Some(delim) = chars.next() {
                    for c in chars.by_ref() {
                        if c == delim {
                            break;
                        }
                    }
                }
            }
            '-' => out.push('-'),
            'e' | '\\' => out.push('\\'),
            ' ' | '~' | '0' => out.push(' '),
            '\'' => out.push('\''),
            '`' => out.push('`'),
            '.' => out.push('.'),
            _ => {} // \& \% \c \| \^ \/ \, \: and the rest
        }
    }
    out
}

fn special(name: &str) -> &'static str {
    match name {
        "em" | "en" | "hy" | "mi" => "-",
        "lq" | "rq" | "Lq" | "Rq" | "dq" => "\"",
        "aq" | "oq" | "cq" => "'",
        "bu" => "",
        "co" => "(c)",
        _ => "",
    }
}

// ---------------------------------------------------------------------------------------
// Sentences.

const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "no", "fig", "approx", "resp",
    "al", "eg", "ie", "viz", "jr", "sr", "vol", "ch", "sec", "p", "pp", "ver", "op", "inc", "ltd",
    "co", "corp", "dept", "est", "min", "max",
];

/// Splits a paragraph at `.`, `!` or `?` (plus closing quotes or brackets) followed by
/// whitespace and a capital letter, digit or opening quote, except after an abbreviation
/// or an initial.
pub fn split_sentences(p: &str) -> Vec<String> {
    let words: Vec<&str> = p.split_whitespace().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..words.len() {
        let w = words[i];
        let trimmed = w.trim_end_matches(['"', '\'', ')', ']']);
        let ends = trimmed.ends_with(['.', '!', '?']);
        let next_starts = words.get(i + 1).is_none_or(|n| {
            n.chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || c == '"' || c == '\'' || c == '(')
        });
        if !ends || !next_starts {
            continue;
        }
        if trimmed.ends_with('.') {
            let stem = trimmed
                .trim_end_matches('.')
                .trim_start_matches(['(', '"', '\''])
                .to_ascii_lowercase();
            if ABBREVIATIONS.contains(&stem.as_str())
                || (stem.chars().count() == 1 && stem.chars().all(char::is_alphabetic))
                || trimmed.ends_with("...") && i + 1 < words.len()
            {
                continue;
            }
        }
        out.push(words[start..=i].join(" "));
        start = i + 1;
    }
    if start < words.len() {
        out.push(words[start..].join(" "));
    }
    out
}

const STOPWORDS: &[&str] = &[
    "the", "a", "an", "is", "are", "was", "were", "be", "to", "of", "and", "in", "that", "it",
    "for", "on", "with", "as", "this", "by", "or", "not", "can", "if", "from", "will", "when",
    "which", "at", "you", "we", "has", "have", "may", "should", "must", "into", "than", "there",
    "these", "its", "their", "but", "all", "any", "only", "so", "also", "does", "do", "used",
];

const BOILERPLATE: &[&str] = &[
    "license",
    "licence",
    "licensed",
    "warranty",
    "copyright",
    "all rights reserved",
    "redistribut",
    "free software foundation",
    "merchantability",
    "lorem ipsum",
];

/// The sentence with whitespace normalised, when it is worth keeping: 6–60 words, a
/// capital first letter, a final `.`, `!` or `?`, mostly alphabetic ASCII prose with
/// common English words, no code-like characters, no licence text.
pub fn clean(s: &str) -> Option<String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    if !(6..=60).contains(&words.len()) {
        return None;
    }
    let s = words.join(" ");
    let first = s.chars().next()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    let last = s.trim_end_matches(['"', '\'', ')']).chars().last()?;
    if !matches!(last, '.' | '!' | '?') {
        return None;
    }
    if s.contains([
        '{', '}', '<', '>', '|', '\\', '=', '$', '#', '@', '~', '^', '*', '`', '[', ']',
    ]) || s.contains("://")
        || s.contains("www.")
        || s.contains("..")
        || s.contains(" .")
    {
        return None;
    }
    let mut letters = 0usize;
    let mut other = 0usize;
    let mut non_ascii = 0usize;
    for c in s.chars() {
        if c.is_whitespace() {
            continue;
        }
        if !c.is_ascii() {
            non_ascii += 1;
        }
        if c.is_alphabetic() {
            letters += 1;
        } else {
            other += 1;
        }
    }
    if non_ascii > 0 || letters * 100 < (letters + other) * 85 {
        return None;
    }
    if words.iter().any(|w| w.len() > 25) {
        return None;
    }
    let lower = s.to_ascii_lowercase();
    if BOILERPLATE.iter().any(|b| lower.contains(b)) {
        return None;
    }
    let stop = lower
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphabetic()))
        .filter(|w| STOPWORDS.contains(w))
        .count();
    if stop < 2 || stop * 100 < words.len() * 15 {
        return None;
    }
    // Runs of capitals (headings, acronyms soup) and camelCase identifiers are not prose.
    let odd = words
        .iter()
        .filter(|w| {
            let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let caps = w.chars().filter(char::is_ascii_uppercase).count();
            (w.len() > 1 && caps == w.len() && w.len() > 4)
                || (caps >= 2 && w.chars().skip(1).any(|c| c.is_ascii_uppercase()) && {
                    let first_lower = w.chars().next().is_some_and(|c| c.is_ascii_lowercase());
                    first_lower || caps < w.len()
                })
        })
        .count();
    if odd * 5 > words.len() {
        return None;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences_but_not_abbreviations() {
        let p = "The cache is flushed on exit, e.g. when the server stops. Then it is \
                 reopened! Is it fast? See J. Smith for details.";
        assert_eq!(
            split_sentences(p),
            vec![
                "The cache is flushed on exit, e.g. when the server stops.",
                "Then it is reopened!",
                "Is it fast?",
                "See J. Smith for details.",
            ]
        );
        // No capital after the period: not a boundary.
        assert_eq!(
            split_sentences("Use version 2.0 or file.txt. next word here."),
            vec!["Use version 2.0 or file.txt. next word here."]
        );
    }

    #[test]
    fn cleaner_keeps_prose_and_drops_the_rest() {
        assert_eq!(
            clean("  The  server writes\tthe index to disk   when it stops. ").as_deref(),
            Some("The server writes the index to disk when it stops.")
        );
        assert_eq!(
            clean("The  server writes the index   to disk when it stops.").as_deref(),
            Some("The server writes the index to disk when it stops.")
        );
        // Too short, too long, no final punctuation, lower-case start.
        assert!(clean("It stops.").is_none());
        assert!(clean(&format!("The {}end.", "word ".repeat(70))).is_none());
        assert!(clean("The server writes the index to disk").is_none());
        assert!(clean("the server writes the index to disk when it stops.").is_none());
        // Code and licence boilerplate.
        assert!(clean("Set the value with x = foo_bar(1) in the config file.").is_none());
        assert!(
            clean("This program is distributed WITHOUT ANY WARRANTY of any kind to the user.")
                .is_none()
        );
        assert!(clean("Licensed under the Apache License, Version 2.0 for all of it.").is_none());
        // Not English.
        assert!(clean("Der Server schreibt den Index beim Beenden auf die Platte.").is_none());
        assert!(clean("Le serveur écrit l'index sur le disque quand il s'arrête.").is_none());
    }

    #[test]
    fn dedup_drops_duplicates_boilerplate_and_near_duplicates() {
        let items: Vec<(u8, String)> = [
            "The quick brown fox jumps over the lazy dog today.",
            "The quick brown fox jumps over the lazy dog, today!", // same alnum form
            "Each file is read once and then closed by the caller.",
            "Each file is read once and then closed by the caller.", // exact
            "This is boilerplate that every package repeats somewhere.",
            "This is boilerplate that every package repeats somewhere.",
            "this is BOILERPLATE that every package repeats somewhere",
            // Same first 8 and last 4 words as the first kept sentence: near duplicate.
            "The quick brown fox jumps over the lazy cat and then the lazy dog today.",
            "A completely different sentence about the network stack.",
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u8, s.to_string()))
        .collect();
        let kept = dedup(items);
        let ids: Vec<u8> = kept.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, vec![0, 2, 8]);
    }

    #[test]
    fn one_toolchain_is_read() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let tcs = names(&[
            "nightly-x86_64-unknown-linux-gnu",
            "stable-x86_64-unknown-linux-gnu",
            "1.95.0-x86_64-unknown-linux-gnu",
        ]);
        assert_eq!(
            pick_toolchain(tcs.into_iter()).as_deref(),
            Some("stable-x86_64-unknown-linux-gnu")
        );
        let tcs = names(&["nightly-x86_64", "1.95.0-x86_64"]);
        assert_eq!(
            pick_toolchain(tcs.into_iter()).as_deref(),
            Some("1.95.0-x86_64")
        );
        assert_eq!(pick_toolchain(std::iter::empty()), None);
    }

    #[test]
    fn keys() {
        assert_eq!(norm_key("Hello, World! 42"), "helloworld42");
        assert_eq!(
            near_key("One two three four five six seven eight nine ten eleven twelve."),
            "one two three four five six seven eight|nine ten eleven twelve"
        );
        assert_eq!(near_key("Short one."), "short one|short one");
    }

    #[test]
    fn shuffle_is_deterministic_and_a_permutation() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        shuffle(&mut a, SEED);
        shuffle(&mut b, SEED);
        assert_eq!(a, b);
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        let mut c = a.clone();
        c.sort();
        assert_eq!(c, (0..1000).collect::<Vec<_>>());
        let mut d: Vec<u32> = (0..1000).collect();
        shuffle(&mut d, SEED + 1);
        assert_ne!(a, d);
    }

    #[test]
    fn troff_is_stripped() {
        let src = r#".\" a comment
.TH LS 1
.SH DESCRIPTION
List information about the \fBFILE\fRs (the current directory by default).
Sort entries alphabetically if none of
.B \-cftuvSUX
nor \fB\-\-sort\fP is specified\(em for example, by \*(lqname\*(rq.
.PP
.nf
code block that must go
.fi
Mandatory arguments to long options are mandatory for short options too.
"#;
        let paras = troff_paragraphs(src);
        assert_eq!(
            paras,
            vec![
                "List information about the FILEs (the current directory by default). \
                 Sort entries alphabetically if none of -cftuvSUX nor --sort is specified- \
                 for example, by \"name\".",
                "Mandatory arguments to long options are mandatory for short options too.",
            ]
        );
    }

    #[test]
    fn python_comments_and_docstrings() {
        let src = r#"#!/usr/bin/env python3
# The parser keeps state between calls,
# so it must not be shared between threads.
def f(x):
    """Return the value of x.

    The value is computed lazily and cached for later calls.

    >>> f(1)
    1
    """
    return x  # trailing
"#;
        let paras = python_paragraphs(src);
        assert_eq!(
            paras,
            vec![
                "The parser keeps state between calls, so it must not be shared between threads.",
                "Return the value of x.",
                "The value is computed lazily and cached for later calls.",
            ]
        );
    }

    #[test]
    fn rust_comments_without_code() {
        let src = "/// Opens the store at `path`, creating it when it is\n\
                   /// missing. See [`Store::open`](crate::Store) for details.\n\
                   ///\n\
                   /// ```\n\
                   /// let s = Store::open(\"x\");\n\
                   /// ```\n\
                   pub fn open() {}\n\
                   // A plain comment about the code below.\n";
        assert_eq!(
            rust_paragraphs(src),
            vec![
                "Opens the store at path, creating it when it is missing. \
                 See Store::open for details.",
                "A plain comment about the code below.",
            ]
        );
    }

    #[test]
    fn markdown_and_text_paragraphs() {
        let md = "# Title\n\nSome *emphasis* and a [link](http://x.invalid/a) here.\n\
                  More text.\n\n```\ncode\n```\n- An item of a list.\n- Another item.\n";
        assert_eq!(
            markdown_paragraphs(md),
            vec![
                "Some emphasis and a link here. More text.",
                "An item of a list.",
                "Another item.",
            ]
        );
        let txt = "First paragraph line one\nline two.\n\n  * A bullet item.\n  * Another one.\n";
        assert_eq!(
            text_paragraphs(txt),
            vec![
                "First paragraph line one line two.",
                "A bullet item.",
                "Another one."
            ]
        );
    }

    #[test]
    fn c_comments_and_javadoc() {
        let src = "/**\n * Returns the {@code size} of this list, as {@link java.util.List#size the\n                    * spec} says.<p>\n * Never negative &amp; never null.\n *\n * @param x ignored\n */\n                   int size();\n// The size is cached.\n\
                   /* <pre>\n code(); \n </pre> */\n";
        assert_eq!(
            c_paragraphs(src),
            vec![
                "Returns the size of this list, as the spec says.",
                "Never negative & never null.",
                "The size is cached.",
            ]
        );
        assert_eq!(strip_tags("a <b>bold</b> &lt;x&gt;"), "a bold <x>");
        // A text ending in a lone '<' (seen in C sources) is not a tag to panic on.
        assert_eq!(strip_tags("if a <"), "if a ");
        assert_eq!(strip_tags("<"), "");
    }

    #[test]
    fn html_text() {
        let html = "<html><head><style>p {}</style><script>var x;</script></head><body>\
                    <nav>Menu</nav><h1>Title</h1><p>First <code>para</code>graph\nhere.</p>\
                    <pre>let x = 1;</pre><ul><li>An item &amp; more.</li></ul></body></html>";
        assert_eq!(
            html_paragraphs(html),
            vec!["First paragraph here.", "An item & more."]
        );
    }

    #[test]
    fn protocol() {
        assert_eq!(user_of(0), "user-0");
        assert_eq!(user_of(199), "user-99");
        assert_eq!(query_rows(101_000, 1_000), 100_000..101_000);
        let c = Corpus {
            sentences: vec!["m0".into(), "m1".into(), "q0".into()],
            vectors: vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            dim: 2,
            n: 2,
        };
        assert_eq!(c.memories(), 2);
        assert_eq!(c.queries(), 1);
        assert_eq!(c.query_text(0), "q0");
        assert_eq!(c.query_vector(0), &[4.0, 5.0]);
        assert_eq!(c.memory_vector(1), &[2.0, 3.0]);
        assert_eq!(c.memory_vectors().len(), 4);
    }

    #[test]
    fn vectors_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        let data: Vec<f32> = (0..30).map(|i| i as f32 * 0.5).collect();
        let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        fs::write(&path, bytes).unwrap();
        assert_eq!(read_vectors(&path, 3, 2, 5).unwrap(), data[6..15].to_vec());
        assert!(read_vectors(&path, 3, 8, 11).is_err());
    }
}
