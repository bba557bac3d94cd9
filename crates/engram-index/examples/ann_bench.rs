//! Recall, latency, build time and memory of `VectorIndex` on real sentence embeddings.
//!
//! ```text
//! cargo run --release -p engram-index --example ann_bench -- \
//!     [--n 100000] [--queries 1000] [--quant f32,f16,i8] [--m 16] [--ef-add 128] \
//!     [--ef-search 32,64,128] [--filter-percent 1] [--k 10] [--corpus DIR]
//! ```
//!
//! Reads the corpus at `--corpus` (default `$ENGRAM_BENCH_CORPUS` or
//! `~/.cache/engram/bench/corpus`: `vectors.f32`, row-major little-endian f32, and
//! `meta.json`). The first `--n` rows are indexed; the last `--queries` rows of the file
//! are the held-out queries. Ground truth is exact cosine over the original f32 vectors.
//! For each quantization it builds the index with `add_batch` (all cores), saves and
//! reopens it (reporting file size, save and load time), then runs the queries one at a
//! time on one thread at each `--ef-search`: unfiltered, and with a predicate that passes
//! `--filter-percent` % of the keys (pseudo-random), both through the graph (`search`)
//! and by brute force over the passing keys (`exact_search`).

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engram_index::eval::{self, Latency, Vectors};
use engram_index::{IndexConfig, Quantization, VectorIndex};

struct Args {
    n: usize,
    queries: usize,
    quant: Vec<Quantization>,
    m: usize,
    ef_add: usize,
    ef_search: Vec<usize>,
    filter_percent: f64,
    k: usize,
    corpus: PathBuf,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        n: 100_000,
        queries: 1000,
        quant: vec![Quantization::F32, Quantization::F16, Quantization::I8],
        m: IndexConfig::DEFAULT_CONNECTIVITY,
        ef_add: IndexConfig::DEFAULT_EXPANSION_ADD,
        ef_search: vec![32, 64, IndexConfig::DEFAULT_EXPANSION_SEARCH],
        filter_percent: 1.0,
        k: 10,
        corpus: eval::default_corpus_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value()?.parse()?,
            "--queries" => args.queries = value()?.parse()?,
            "--quant" => {
                args.quant = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--m" => args.m = value()?.parse()?,
            "--ef-add" => args.ef_add = value()?.parse()?,
            "--ef-search" => {
                args.ef_search = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--filter-percent" => args.filter_percent = value()?.parse()?,
            "--k" => args.k = value()?.parse()?,
            "--corpus" => args.corpus = value()?.into(),
            other => return Err(format!("unknown argument {other}; see the file's header").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let dim = eval::corpus_dim(&args.corpus)
        .map_err(|e| format!("reading {}/meta.json: {e}", args.corpus.display()))?;
    let all = Vectors::read_f32(&args.corpus.join("vectors.f32"), dim, usize::MAX)
        .map_err(|e| format!("reading {}/vectors.f32: {e}", args.corpus.display()))?;
    if all.len() < args.queries + 1 {
        return Err(format!("the corpus has only {} vectors", all.len()).into());
    }
    let n = args.n.min(all.len() - args.queries);
    let base = all.slice(0..n);
    let queries = all.slice(all.len() - args.queries..all.len());
    drop(all);
    println!(
        "corpus {}: {n} base vectors, {} held-out queries, dim {dim}, k {}, {} cores",
        args.corpus.display(),
        queries.len(),
        args.k,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );

    let filter = eval::percent_filter(args.filter_percent);
    let passing: Vec<u64> = (0..n as u64).filter(|&k| filter(k)).collect();
    let started = Instant::now();
    let truth = eval::ground_truth(&base, &queries, args.k, &|_| true);
    let truth_filtered = eval::ground_truth(&base, &queries, args.k, &filter);
    println!(
        "ground truth (exact f32 cosine) in {:.1}s; the filter passes {} keys ({}%)",
        started.elapsed().as_secs_f64(),
        passing.len(),
        args.filter_percent
    );
    let items: Vec<(u64, &[f32])> = (0..n).map(|i| (i as u64, base.row(i))).collect();

    println!();
    println!("| quant | M | ef_add | build s | engine MiB | file MiB | save s | load s | RSS MiB | ef | recall@{k} | p50 µs | p95 µs | p99 µs | 1% filter recall@{k} | p50 µs | p95 µs | p99 µs | exact over filter p50 µs | p95 µs |", k = args.k);
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &quant in &args.quant {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bench.usearch");
        let cfg = IndexConfig {
            dim,
            quantization: quant,
            connectivity: args.m,
            expansion_add: args.ef_add,
            expansion_search: args.ef_search[0],
        };
        let index = VectorIndex::open(&path, cfg)?;
        let started = Instant::now();
        index.add_batch(&items)?;
        let build = started.elapsed();
        let engine_bytes = index.memory_usage();
        let started = Instant::now();
        index.save()?;
        let save = started.elapsed();
        let file_bytes = std::fs::metadata(&path)?.len();
        drop(index);
        let started = Instant::now();
        let index = VectorIndex::open(&path, cfg)?;
        let load = started.elapsed();
        let rss = eval::rss_bytes().unwrap_or(0);

        for &ef in &args.ef_search {
            index.set_expansion_search(ef)?;
            let (recall, lat) = run(&queries, &truth, |q| index.search(q, args.k, None))?;
            let (f_recall, f_lat) = run(&queries, &truth_filtered, |q| {
                index.search(q, args.k, Some(&filter))
            })?;
            let (_, exact_lat) = run(&queries, &truth_filtered, |q| {
                index.exact_search(q, &passing, args.k)
            })?;
            println!(
                "| {quant} | {} | {} | {:.1} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {ef} | {recall:.4} | {} | {} | {} | {f_recall:.4} | {} | {} | {} | {} | {} |",
                args.m,
                args.ef_add,
                build.as_secs_f64(),
                mib(engine_bytes as u64),
                mib(file_bytes),
                save.as_secs_f64(),
                load.as_secs_f64(),
                mib(rss),
                us(lat.p50),
                us(lat.p95),
                us(lat.p99),
                us(f_lat.p50),
                us(f_lat.p95),
                us(f_lat.p99),
                us(exact_lat.p50),
                us(exact_lat.p95),
            );
        }
    }
    Ok(())
}

/// Runs every query through `search` on this thread; returns recall@k against `truth`
/// and the latency percentiles.
fn run(
    queries: &Vectors,
    truth: &[Vec<u64>],
    search: impl Fn(&[f32]) -> Result<Vec<engram_index::Hit>, engram_index::IndexError>,
) -> Result<(f64, Latency), Box<dyn Error>> {
    let mut found = Vec::with_capacity(queries.len());
    let mut times = Vec::with_capacity(queries.len());
    for i in 0..queries.len() {
        let started = Instant::now();
        let hits = search(queries.row(i))?;
        times.push(started.elapsed());
        found.push(hits.iter().map(|h| h.key).collect());
    }
    Ok((eval::recall(truth, &found), Latency::of(&times)))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}
