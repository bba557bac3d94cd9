//! Times [`KeywordIndex::search`] alone over real sentences: the postings walk that sets
//! the pace of keyword and hybrid search at a million memories, without a store around it.
//!
//! ```sh
//! cargo run --release -p engram-index --example keyword_bench -- \
//!     [--corpus DIR] [--n 1000000] [--queries 1000] [--rounds 3]
//! ```
//!
//! Documents are the first `n` lines of the corpus cache's `sentences.txt` (see
//! `engram bench corpus`; no vectors needed), queries the `queries` lines after them, as
//! engram searches them: stopwords dropped ([`engram_core::search::query_terms`]), BM25
//! with engram's default `k1` and `b`, the top 100 (a hybrid search's keyword candidates),
//! no filter. Prints the build time, the index's heap bytes as the allocator counts them,
//! and per round p50 / p95 / p99 / mean of one search in milliseconds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use engram_index::keyword::{Bm25Params, KeywordIndex};

/// The system allocator, counting the bytes it holds.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size, Ordering::Relaxed);
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut corpus = std::env::var_os("ENGRAM_BENCH_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/engram/bench/corpus")
        });
    let (mut n, mut queries, mut rounds) = (1_000_000usize, 1_000usize, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--corpus" => corpus = PathBuf::from(value()?),
            "--n" => n = value()?.parse()?,
            "--queries" => queries = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let path = corpus.join("sentences.txt");
    let mut lines = BufReader::new(File::open(&path)?).lines();
    let before = HELD.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut ix = KeywordIndex::new();
    for key in 0..n as u64 {
        let line = lines
            .next()
            .ok_or(format!("{} has fewer than {n} lines", path.display()))??;
        ix.upsert(key, &[&line, "", ""]);
    }
    ix.shrink_to_fit();
    let build_s = started.elapsed().as_secs_f64();
    let held_mb = (HELD.load(Ordering::Relaxed) - before) as f64 / (1 << 20) as f64;
    let asked: Vec<Vec<String>> = lines
        .take(queries)
        .map(|l| l.map(|l| engram_core::search::query_terms(&l)))
        .collect::<Result<_, _>>()?;
    let defaults = engram_core::Bm25::default();
    let params = Bm25Params {
        k1: defaults.k1,
        b: defaults.b,
    };
    println!(
        "{n} documents indexed in {build_s:.1} s, {held_mb:.0} MiB held; {} queries",
        asked.len()
    );
    for round in 1..=rounds {
        let mut ms: Vec<f64> = Vec::with_capacity(asked.len());
        // A digest of every hit's key and score, to tell two builds' results apart.
        let mut digest = 0xcbf2_9ce4_8422_2325_u64;
        for words in &asked {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let t = Instant::now();
            let hits = ix.search(&words, params, 100, None);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            for (key, score) in hits {
                for x in [key, u64::from(score.to_bits())] {
                    digest = (digest ^ x).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        println!(
            "round {round}: p50 {:.3} p95 {:.3} p99 {:.3} mean {mean:.3} ms (hits {digest:016x})",
            at(0.5),
            at(0.95),
            at(0.99)
        );
    }
    Ok(())
}
