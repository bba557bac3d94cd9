//! Could the graph's vectors live outside usearch? A measurement for that design
//! (docs/benchmarks.md, "Where a filtered search's last tenth of a millisecond goes").
//!
//! ```text
//! cargo run --release -p engram-index --features slot-metric --example slot_metric -- \
//!     [--n 100000] [--queries 1000] [--corpus DIR] [--kernel lanes|lanes-avx2|madd|vnni]
//! ```
//!
//! An exact search over a filter's candidates reads each one's vector from usearch by key
//! (its lock, its hash table, a copy): about half a microsecond a candidate. Vectors held
//! by the caller in one array, addressed by slot, would be read without any of that, but
//! a second copy costs 384 bytes a memory. usearch can instead keep, for each node, only
//! an 8-byte "vector" holding the caller's slot, and call back a metric that reads the
//! caller's array. This builds the same graph (i8, M 16, `ef` 128 to add, 200 to search,
//! two threads) three ways over the corpus of `engram bench corpus` and times the same
//! queries, one at a time, three passes each:
//!
//! - `native`: usearch keeps the i8 vectors and computes cosine with its own kernels;
//! - `custom`: usearch keeps the i8 vectors, the metric is a Rust closure (this file's
//!   i8 kernel, `--kernel` or the fastest the CPU has, through usearch's callback);
//! - `slots`: usearch keeps an 8-byte slot per node; the closure reads the vectors and
//!   their lengths from arrays this program holds; the query is passed as a tagged
//!   pointer to its i8 components and their length.
//!
//! Recall@10 is against exact cosine over the f32 vectors; "usearch MB" is usearch's own
//! `memory_usage`, to which `slots` adds its arrays (printed).

// The AVX-512 intrinsics of the VNNI kernel are stable since Rust 1.89, above the
// workspace's rust-version: this example is built only with the `slot-metric` feature.
#![allow(clippy::incompatible_msrv)]

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_index::eval::{self, Latency, Vectors};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Marks an 8-byte value as a pointer to a query's components rather than a slot.
const QUERY: u64 = 1 << 63;

fn quantize(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return vec![0; v.len()];
    }
    v.iter()
        .map(|x| (x * 127.0 / max).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// The dot product of two i8 vectors, over 16 independent lanes (vectorised by the
/// compiler for the features of the caller).
#[inline(always)]
fn dot_lanes(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += i32::from(ca[l]) * i32::from(cb[l]);
        }
    }
    let tail = a.len() / 16 * 16;
    let rest: i32 = a[tail..]
        .iter()
        .zip(&b[tail..])
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + rest
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::dot_lanes`] compiled for AVX2 (the compiler widens to 32-bit lanes).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_lanes_avx2(a: &[i8], b: &[i8]) -> i32 {
        super::dot_lanes(a, b)
    }

    /// The dot product with AVX2: 32 components at a time, widened to 16 bits and
    /// multiplied and added in pairs into 32-bit lanes (`vpmaddwd`).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_madd(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n, so both 32-byte loads are in bounds.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            let (a0, a1) = (
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(va)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(va)),
            );
            let (b0, b1) = (
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vb)),
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(vb)),
            );
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, b0));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, b1));
            i += 32;
        }
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` holds 8 i32, 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_add_epi32(acc0, acc1)) };
        lanes.iter().sum::<i32>() + super::dot_lanes(&a[i..n], &b[i..n])
    }

    /// The dot product with AVX-512 VNNI: 64 components at a time, widened to 16 bits,
    /// then multiplied, added in pairs and accumulated by one instruction (`vpdpwssd`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_vnni(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: i + 64 <= n, so both 64-byte loads are in bounds.
            let (va, vb) = unsafe {
                (
                    _mm512_loadu_si512(a.as_ptr().add(i).cast()),
                    _mm512_loadu_si512(b.as_ptr().add(i).cast()),
                )
            };
            let (a0, a1) = (
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(va)),
                _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(va)),
            );
            let (b0, b1) = (
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(vb)),
                _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(vb)),
            );
            acc0 = _mm512_dpwssd_epi32(acc0, a0, b0);
            acc1 = _mm512_dpwssd_epi32(acc1, a1, b1);
            i += 64;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1)) + super::dot_lanes(&a[i..n], &b[i..n])
    }
}

/// The i8 kernels the Rust metrics can run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    /// [`dot_lanes`] for the baseline target.
    Lanes,
    /// [`dot_lanes`] compiled for AVX2.
    LanesAvx2,
    /// `vpmaddwd` (AVX2).
    Madd,
    /// `vpdpwssd` (AVX-512 VNNI).
    Vnni,
}

impl Kernel {
    fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Lanes => true,
                Kernel::LanesAvx2 | Kernel::Madd => std::arch::is_x86_feature_detected!("avx2"),
                Kernel::Vnni => {
                    std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Kernel::Lanes
        }
    }
}

/// The kernel of this run: `--kernel`, or the fastest the CPU has.
static KERNEL: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();

fn dot(a: &[i8], b: &[i8]) -> i32 {
    match KERNEL.get().copied().unwrap_or(Kernel::Lanes) {
        Kernel::Lanes => dot_lanes(a, b),
        // SAFETY (each arm): `main` sets only a kernel the CPU has (`Kernel::available`).
        #[cfg(target_arch = "x86_64")]
        Kernel::LanesAvx2 => unsafe { x86::dot_lanes_avx2(a, b) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Madd => unsafe { x86::dot_madd(a, b) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => unsafe { x86::dot_vnni(a, b) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => dot_lanes(a, b),
    }
}

/// A query as the `slots` variant passes it: its components and their length.
struct Query {
    components: Vec<i8>,
    length: f32,
}

/// The vectors of the `slots` variant, as the caller would hold them.
struct Arena {
    dim: usize,
    vectors: Vec<i8>,
    lengths: Vec<f32>,
}

impl Arena {
    fn vector(&self, slot: usize) -> &[i8] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }
}

struct Args {
    n: usize,
    queries: usize,
    corpus: PathBuf,
    kernel: Option<Kernel>,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        n: 100_000,
        queries: 1000,
        corpus: eval::default_corpus_dir(),
        kernel: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => args.n = value()?.parse()?,
            "--queries" => args.queries = value()?.parse()?,
            "--corpus" => args.corpus = value()?.into(),
            "--kernel" => {
                args.kernel = Some(match value()?.as_str() {
                    "lanes" => Kernel::Lanes,
                    "lanes-avx2" => Kernel::LanesAvx2,
                    "madd" => Kernel::Madd,
                    "vnni" => Kernel::Vnni,
                    other => return Err(format!("unknown kernel {other}").into()),
                })
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let kernel = match args.kernel {
        Some(k) if !k.available() => return Err(format!("this CPU cannot run {k:?}").into()),
        Some(k) => k,
        None => [Kernel::Vnni, Kernel::Madd, Kernel::Lanes]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Kernel::Lanes),
    };
    KERNEL.set(kernel).map_err(|_| "the kernel was set twice")?;
    let dim = eval::corpus_dim(&args.corpus)?;
    let all = Vectors::read_f32(&args.corpus.join("vectors.f32"), dim, usize::MAX)?;
    if all.len() < args.n + args.queries {
        return Err(format!(
            "the corpus has {} rows, fewer than --n + --queries",
            all.len()
        )
        .into());
    }
    let base = all.slice(0..args.n);
    let queries = all.slice(all.len() - args.queries..all.len());
    let truth = eval::ground_truth(&base, &queries, 10, &|_| true);
    let stored: Vec<Vec<i8>> = (0..base.len()).map(|i| quantize(base.row(i))).collect();
    let arena = Arc::new(Arena {
        dim,
        vectors: stored.iter().flatten().copied().collect(),
        lengths: stored.iter().map(|v| (dot(v, v) as f32).sqrt()).collect(),
    });
    println!(
        "{} vectors of {dim}, {} queries; slots' arrays {:.1} MB; Rust metric kernel {kernel:?}",
        base.len(),
        queries.len(),
        (arena.vectors.len() + 4 * arena.lengths.len()) as f64 / 1e6
    );
    for variant in ["native", "custom", "slots"] {
        let options = IndexOptions {
            dimensions: if variant == "slots" { 8 } else { dim },
            metric: MetricKind::Cos,
            quantization: ScalarKind::I8,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 200,
            multi: false,
        };
        let mut index = Index::new(&options)?;
        index.reserve_capacity_and_threads(base.len(), 2)?;
        match variant {
            "custom" => index.change_metric::<i8>(Box::new(move |a: *const i8, b: *const i8| {
                // SAFETY: usearch passes pointers to two stored or query vectors of `dim`
                // components, valid for the call.
                let (a, b) = unsafe {
                    (
                        std::slice::from_raw_parts(a, dim),
                        std::slice::from_raw_parts(b, dim),
                    )
                };
                let lengths = (dot(a, a) as f32).sqrt() * (dot(b, b) as f32).sqrt();
                1.0 - dot(a, b) as f32 / lengths
            })),
            "slots" => {
                let arena = arena.clone();
                index.change_metric::<i8>(Box::new(move |a: *const i8, b: *const i8| {
                    // SAFETY: usearch passes pointers to two 8-byte values, valid for the
                    // call: each a slot, or a query pointer tagged with `QUERY`.
                    let (a, b) = unsafe {
                        (
                            std::ptr::read_unaligned(a.cast::<u64>()),
                            std::ptr::read_unaligned(b.cast::<u64>()),
                        )
                    };
                    let (a, b) = if b & QUERY != 0 { (b, a) } else { (a, b) };
                    let b = b as usize;
                    let (bv, b_length) = (arena.vector(b), arena.lengths[b]);
                    if a & QUERY != 0 {
                        // SAFETY: a tagged value is the address of a `Query`, which
                        // outlives the search that passed it.
                        let q = unsafe { &*((a & !QUERY) as usize as *const Query) };
                        1.0 - dot(&q.components, bv) as f32 / (q.length * b_length)
                    } else {
                        let a = a as usize;
                        1.0 - dot(arena.vector(a), bv) as f32 / (arena.lengths[a] * b_length)
                    }
                }))
            }
            _ => {}
        }
        let index = &index;
        let stored = &stored;
        let started = Instant::now();
        std::thread::scope(|s| {
            for thread in 0..2 {
                s.spawn(move || {
                    for i in (thread..stored.len()).step_by(2) {
                        let added = if variant == "slots" {
                            let slot = (i as u64).to_le_bytes().map(|b| b as i8);
                            index.add::<i8>(i as u64, &slot)
                        } else {
                            index.add::<i8>(i as u64, &stored[i])
                        };
                        added.expect("add");
                    }
                });
            }
        });
        let build = started.elapsed();
        for pass in 1..=3 {
            let mut times: Vec<Duration> = Vec::with_capacity(queries.len());
            let mut found: Vec<Vec<u64>> = Vec::with_capacity(queries.len());
            for j in 0..queries.len() {
                let components = quantize(queries.row(j));
                let started = Instant::now();
                let matches = if variant == "slots" {
                    let query = Query {
                        length: (dot(&components, &components) as f32).sqrt(),
                        components,
                    };
                    let tagged = (&query as *const Query as usize as u64 | QUERY).to_le_bytes();
                    index.search::<i8>(&tagged.map(|b| b as i8), 10)?
                } else {
                    index.search::<i8>(&components, 10)?
                };
                times.push(started.elapsed());
                found.push(matches.keys);
            }
            let latency = Latency::of(&times);
            println!(
                "{variant:>6} pass {pass}: build {:.1} s, usearch {:.0} MB, p50 {:.3} ms, p95 {:.3} ms, recall@10 {:.4}",
                build.as_secs_f64(),
                index.memory_usage() as f64 / 1e6,
                latency.p50.as_secs_f64() * 1e3,
                latency.p95.as_secs_f64() * 1e3,
                eval::recall(&truth, &found)
            );
        }
    }
    Ok(())
}
