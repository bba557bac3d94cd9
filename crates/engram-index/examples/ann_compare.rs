//! usearch (through `VectorIndex`) against `hnsw_rs` on the same real vectors: the
//! measurement behind the choice of engine recorded in the crate README.
//!
//! ```text
//! cargo run --release -p engram-index --features compare-hnsw-rs --example ann_compare -- \
//!     [--n 100000] [--queries 1000] [--m 16] [--ef-add 128] [--ef-search 32,64,128] \
//!     [--filter-percent 1] [--corpus DIR]
//! ```
//!
//! Same corpus, held-out queries, ground truth and filter as `ann_bench`. Both engines
//! get the same `M`, `efConstruction` and `ef`, insert on all cores and answer queries
//! one at a time on one thread. Memory is the growth of the process' RSS while the index
//! is built (the corpus is already loaded), since `hnsw_rs` reports no figure itself.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engram_index::eval::{self, Latency, Vectors};
use engram_index::{IndexConfig, Quantization, VectorIndex};
use hnsw_rs::prelude::{AnnT, DistCosine, Hnsw};

struct Args {
    n: usize,
    queries: usize,
    m: usize,
    ef_add: usize,
    ef_search: Vec<usize>,
    filter_percent: f64,
    corpus: PathBuf,
}

const K: usize = 10;

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        n: 100_000,
        queries: 1000,
        m: IndexConfig::DEFAULT_CONNECTIVITY,
        ef_add: IndexConfig::DEFAULT_EXPANSION_ADD,
        ef_search: vec![32, 64, IndexConfig::DEFAULT_EXPANSION_SEARCH],
        filter_percent: 1.0,
        corpus: eval::default_corpus_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value()?.parse()?,
            "--queries" => args.queries = value()?.parse()?,
            "--m" => args.m = value()?.parse()?,
            "--ef-add" => args.ef_add = value()?.parse()?,
            "--ef-search" => {
                args.ef_search = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--filter-percent" => args.filter_percent = value()?.parse()?,
            "--corpus" => args.corpus = value()?.into(),
            other => return Err(format!("unknown argument {other}; see the file's header").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let dim = eval::corpus_dim(&args.corpus)?;
    let all = Vectors::read_f32(&args.corpus.join("vectors.f32"), dim, usize::MAX)?;
    if all.len() < args.queries + 1 {
        return Err(format!("the corpus has only {} vectors", all.len()).into());
    }
    let n = args.n.min(all.len() - args.queries);
    let base = all.slice(0..n);
    let queries = all.slice(all.len() - args.queries..all.len());
    drop(all);
    let filter = eval::percent_filter(args.filter_percent);
    let truth = eval::ground_truth(&base, &queries, K, &|_| true);
    let truth_filtered = eval::ground_truth(&base, &queries, K, &filter);
    println!(
        "{n} base vectors, {} queries, dim {dim}, M {}, ef_add {}",
        queries.len(),
        args.m,
        args.ef_add
    );
    println!();
    println!("| engine | build s | RSS growth MiB | file MiB | ef | recall@10 | p50 µs | p95 µs | p99 µs | 1% filter recall@10 | p50 µs | p95 µs |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");

    for quant in [Quantization::F32, Quantization::F16] {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cmp.usearch");
        let cfg = IndexConfig {
            dim,
            quantization: quant,
            connectivity: args.m,
            expansion_add: args.ef_add,
            expansion_search: args.ef_search[0],
        };
        let rss_before = eval::rss_bytes().unwrap_or(0);
        let index = VectorIndex::open(&path, cfg)?;
        let items: Vec<(u64, &[f32])> = (0..n).map(|i| (i as u64, base.row(i))).collect();
        let started = Instant::now();
        index.add_batch(&items)?;
        let build = started.elapsed();
        let grown = eval::rss_bytes().unwrap_or(0).saturating_sub(rss_before);
        index.save()?;
        let file = std::fs::metadata(&path)?.len();
        for &ef in &args.ef_search {
            index.set_expansion_search(ef)?;
            let (r, lat) = run(&queries, &truth, |q| {
                Ok(keys(index.search(q, K, None)?.iter().map(|h| h.key)))
            })?;
            let (fr, flat) = run(&queries, &truth_filtered, |q| {
                Ok(keys(
                    index.search(q, K, Some(&filter))?.iter().map(|h| h.key),
                ))
            })?;
            row(
                &format!("usearch {quant}"),
                build,
                grown,
                file,
                ef,
                r,
                lat,
                fr,
                flat,
            );
        }
    }

    {
        let dir = tempfile::tempdir()?;
        let rss_before = eval::rss_bytes().unwrap_or(0);
        let hnsw: Hnsw<f32, DistCosine> = Hnsw::new(args.m, n, 16, args.ef_add, DistCosine {});
        let items: Vec<(&[f32], usize)> = (0..n).map(|i| (base.row(i), i)).collect();
        let started = Instant::now();
        hnsw.parallel_insert_slice(&items);
        let build = started.elapsed();
        let grown = eval::rss_bytes().unwrap_or(0).saturating_sub(rss_before);
        let name = hnsw
            .file_dump(dir.path(), "cmp")
            .map_err(|e| e.to_string())?;
        let file = ["hnsw.graph", "hnsw.data"]
            .iter()
            .map(|ext| {
                std::fs::metadata(dir.path().join(format!("{name}.{ext}"))).map_or(0, |m| m.len())
            })
            .sum();
        for &ef in &args.ef_search {
            let (r, lat) = run(&queries, &truth, |q| {
                Ok(keys(hnsw.search(q, K, ef).iter().map(|nb| nb.d_id as u64)))
            })?;
            let pass = |id: &usize| filter(*id as u64);
            let (fr, flat) = run(&queries, &truth_filtered, |q| {
                Ok(keys(
                    hnsw.search_filter(q, K, ef, Some(&pass))
                        .iter()
                        .map(|nb| nb.d_id as u64),
                ))
            })?;
            row("hnsw_rs f32", build, grown, file, ef, r, lat, fr, flat);
        }
    }
    Ok(())
}

fn keys(it: impl Iterator<Item = u64>) -> Vec<u64> {
    it.collect()
}

#[allow(clippy::too_many_arguments)]
fn row(
    engine: &str,
    build: Duration,
    grown: u64,
    file: u64,
    ef: usize,
    recall: f64,
    lat: Latency,
    f_recall: f64,
    f_lat: Latency,
) {
    println!(
        "| {engine} | {:.1} | {:.0} | {:.0} | {ef} | {recall:.4} | {} | {} | {} | {f_recall:.4} | {} | {} |",
        build.as_secs_f64(),
        grown as f64 / 1048576.0,
        file as f64 / 1048576.0,
        lat.p50.as_micros(),
        lat.p95.as_micros(),
        lat.p99.as_micros(),
        f_lat.p50.as_micros(),
        f_lat.p95.as_micros(),
    );
}

fn run(
    queries: &Vectors,
    truth: &[Vec<u64>],
    search: impl Fn(&[f32]) -> Result<Vec<u64>, Box<dyn Error>>,
) -> Result<(f64, Latency), Box<dyn Error>> {
    let mut found = Vec::with_capacity(queries.len());
    let mut times = Vec::with_capacity(queries.len());
    for i in 0..queries.len() {
        let started = Instant::now();
        found.push(search(queries.row(i))?);
        times.push(started.elapsed());
    }
    Ok((eval::recall(truth, &found), Latency::of(&times)))
}
