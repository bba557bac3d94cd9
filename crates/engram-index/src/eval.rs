//! Measuring an index against exact search on real vectors.
//!
//! Shared by the benchmark examples (`ann_bench`, `ann_compare`), the fixture generator
//! (`make_fixture`) and the recall test, so all of them read vectors, compute ground
//! truth and summarise latencies the same way. Nothing here is used when serving.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use half::f16;

/// Row-major vectors of one dimension; row `i` has key `i`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    /// Components per vector.
    pub dim: usize,
    /// `len() * dim` components, one vector after another.
    pub data: Vec<f32>,
}

impl Vectors {
    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    /// True when there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Vector `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// Vectors `range` as a new set.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Vectors {
        Vectors {
            dim: self.dim,
            data: self.data[range.start * self.dim..range.end * self.dim].to_vec(),
        }
    }

    /// Reads at most `limit` rows of a raw little-endian f32 file (the corpus'
    /// `vectors.f32`).
    pub fn read_f32(path: &Path, dim: usize, limit: usize) -> io::Result<Vectors> {
        let bytes = fs::read(path)?;
        let row_bytes = dim * 4;
        if dim == 0 || bytes.len() % row_bytes != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {} bytes is not a whole number of {dim}-d f32 rows",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        let rows = (bytes.len() / row_bytes).min(limit);
        let data = bytes[..rows * row_bytes]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Vectors { dim, data })
    }
}

/// Where the benchmark corpus lives: `$ENGRAM_BENCH_CORPUS`, else
/// `~/.cache/engram/bench/corpus` (`sentences.txt`, `vectors.f32`, `meta.json`).
pub fn default_corpus_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ENGRAM_BENCH_CORPUS") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache/engram/bench/corpus")
}

/// Reads the corpus' vector dimension from its `meta.json` (`"dim"` or `"dimension"`),
/// defaulting to 384 (all-MiniLM-L6-v2) when the file does not say.
pub fn corpus_dim(dir: &Path) -> io::Result<usize> {
    let meta = fs::read(dir.join("meta.json"))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&meta).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(["dim", "dimension", "dimensions"]
        .iter()
        .find_map(|k| meta.get(k).and_then(|v| v.as_u64()))
        .map_or(384, |d| d as usize))
}

/// A small set of real vectors saved compactly (f16): `base` to index and `queries` to
/// ask, kept apart so no query is its own nearest neighbour.
#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// Vectors to index.
    pub base: Vectors,
    /// Held-out queries.
    pub queries: Vectors,
}

const FIXTURE_MAGIC: &[u8; 8] = b"EIDXFX01";

impl Fixture {
    /// Writes the fixture: magic, then dim, base count and query count as u32 LE, then
    /// every component as f16 LE, base rows first.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let mut out = Vec::with_capacity(20 + 2 * (self.base.data.len() + self.queries.data.len()));
        out.extend_from_slice(FIXTURE_MAGIC);
        for n in [self.base.dim, self.base.len(), self.queries.len()] {
            let n = u32::try_from(n).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            out.extend_from_slice(&n.to_le_bytes());
        }
        for x in self.base.data.iter().chain(&self.queries.data) {
            out.extend_from_slice(&f16::from_f32(*x).to_le_bytes());
        }
        let mut file = fs::File::create(path)?;
        file.write_all(&out)?;
        file.sync_all()
    }

    /// Reads a fixture written by [`Fixture::write`].
    pub fn read(path: &Path) -> io::Result<Fixture> {
        let bytes = fs::read(path)?;
        let invalid = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        if bytes.len() < 20 || &bytes[..8] != FIXTURE_MAGIC {
            return Err(invalid("not a vector fixture"));
        }
        let word = |i: usize| {
            let at = 8 + 4 * i;
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        };
        let (dim, n_base, n_queries) = (word(0), word(1), word(2));
        if dim == 0 || bytes.len() != 20 + 2 * dim * (n_base + n_queries) {
            return Err(invalid("length does not match its header"));
        }
        let mut all = bytes[20..]
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32());
        let base = Vectors {
            dim,
            data: all.by_ref().take(dim * n_base).collect(),
        };
        let queries = Vectors {
            dim,
            data: all.collect(),
        };
        Ok(Fixture { base, queries })
    }
}

/// Keys (row numbers) of the `k` rows of `base` most similar to `query` by cosine,
/// among rows whose key passes `filter`; best first, ties to the smaller key.
pub fn exact_top_k(
    base: &Vectors,
    query: &[f32],
    k: usize,
    filter: &(dyn Fn(u64) -> bool + Sync),
) -> Vec<u64> {
    let q_norm = crate::vector::norm(query);
    let mut top = crate::vector::TopK::new(k);
    for i in 0..base.len() {
        let key = i as u64;
        if filter(key) {
            top.push(crate::Hit {
                key,
                similarity: crate::vector::cosine(query, q_norm, base.row(i)),
                margin: 0.0,
            });
        }
    }
    top.into_sorted().into_iter().map(|h| h.key).collect()
}

/// [`exact_top_k`] for every query, on all cores.
pub fn ground_truth(
    base: &Vectors,
    queries: &Vectors,
    k: usize,
    filter: &(dyn Fn(u64) -> bool + Sync),
) -> Vec<Vec<u64>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = queries.len().div_ceil(threads).max(1);
    let indices: Vec<usize> = (0..queries.len()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&q| exact_top_k(base, queries.row(q), k, filter))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// A fixed pseudo-random subset of keys for filtered-search measurements: `percent` %
/// of all keys pass (by a SplitMix64 hash of the key, so the subset is spread evenly
/// and the same on every run).
pub fn percent_filter(percent: f64) -> impl Fn(u64) -> bool + Sync + Copy {
    let threshold = (percent.clamp(0.0, 100.0) / 100.0 * u64::MAX as f64) as u64;
    move |key| splitmix64(key) < threshold
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Recall@k: the share of the true top-k keys that were found, over all queries. A
/// query whose true top-k is shorter than k (a filter passing fewer keys) counts only
/// the keys that exist.
pub fn recall(truth: &[Vec<u64>], found: &[Vec<u64>]) -> f64 {
    let mut hit = 0usize;
    let mut total = 0usize;
    for (t, f) in truth.iter().zip(found) {
        total += t.len();
        hit += t.iter().filter(|key| f.contains(key)).count();
    }
    if total == 0 {
        return 1.0;
    }
    hit as f64 / total as f64
}

/// Latency percentiles of a set of timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl Latency {
    /// Percentiles of `samples` (nearest-rank); all zero when there are none.
    pub fn of(samples: &[Duration]) -> Latency {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |p: f64| {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Latency {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
        }
    }
}

/// This process' resident set size in bytes (Linux; `None` elsewhere).
pub fn rss_bytes() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_round_trips_at_half_precision() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fx");
        let fixture = Fixture {
            base: Vectors {
                dim: 2,
                data: vec![0.5, -0.25, 0.125, 1.0],
            },
            queries: Vectors {
                dim: 2,
                data: vec![0.75, 0.0],
            },
        };
        fixture.write(&path).unwrap();
        assert_eq!(Fixture::read(&path).unwrap(), fixture);
        fs::write(&path, b"EIDXFX01short").unwrap();
        assert!(Fixture::read(&path).is_err());
    }

    #[test]
    fn exact_top_k_and_recall() {
        let base = Vectors {
            dim: 2,
            data: vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7, -1.0, 0.0],
        };
        assert_eq!(exact_top_k(&base, &[1.0, 0.1], 2, &|_| true), vec![0, 2]);
        assert_eq!(exact_top_k(&base, &[1.0, 0.1], 2, &|k| k != 0), vec![2, 1]);
        let truth = ground_truth(&base.slice(0..4), &base.slice(0..2), 1, &|_| true);
        assert_eq!(truth, vec![vec![0], vec![1]]);
        assert_eq!(
            recall(&[vec![1, 2], vec![3]], &[vec![2, 9], vec![3]]),
            2.0 / 3.0
        );
        assert_eq!(recall(&[vec![]], &[vec![]]), 1.0);
    }

    #[test]
    fn percent_filter_passes_about_that_share() {
        let one = percent_filter(1.0);
        let passing = (0..100_000u64).filter(|&k| one(k)).count();
        assert!((900..1100).contains(&passing), "{passing}");
        assert!((0..1000u64).all(percent_filter(100.0)));
        assert!(!(0..1000u64).any(percent_filter(0.0)));
    }

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.p50, Duration::from_micros(50));
        assert_eq!(l.p95, Duration::from_micros(95));
        assert_eq!(l.p99, Duration::from_micros(99));
        assert_eq!(Latency::of(&[]).p50, Duration::ZERO);
    }
}
