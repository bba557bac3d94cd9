//! Writes the recall test's fixture: real all-MiniLM-L6-v2 sentence embeddings, in f16.
//!
//! ```text
//! cargo run --release -p engram-index --example make_fixture -- \
//!     [--base 2000] [--queries 100] [--corpus DIR] \
//!     [--out crates/engram-index/tests/fixtures/minilm-2k.f16]
//! ```
//!
//! Takes `--base` rows spread evenly over the corpus (all but its last 1,000 rows, which
//! `ann_bench` keeps for queries) and `--queries` rows spread evenly over those last
//! 1,000, so no query is also a base vector.

use std::error::Error;
use std::path::PathBuf;

use engram_index::eval::{self, Fixture, Vectors};

const HELD_OUT: usize = 1000;

fn main() -> Result<(), Box<dyn Error>> {
    let mut base_n = 2000;
    let mut queries_n = 100;
    let mut corpus = eval::default_corpus_dir();
    let mut out = PathBuf::from("crates/engram-index/tests/fixtures/minilm-2k.f16");
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--base" => base_n = value()?.parse()?,
            "--queries" => queries_n = value()?.parse()?,
            "--corpus" => corpus = value()?.into(),
            "--out" => out = value()?.into(),
            other => return Err(format!("unknown argument {other}; see the file's header").into()),
        }
    }

    let dim = eval::corpus_dim(&corpus)?;
    let all = Vectors::read_f32(&corpus.join("vectors.f32"), dim, usize::MAX)?;
    if all.len() < HELD_OUT + base_n || queries_n > HELD_OUT {
        return Err(format!(
            "the corpus has {} vectors; need {} base rows plus {HELD_OUT} held out, and at most {HELD_OUT} queries",
            all.len(),
            base_n
        )
        .into());
    }
    let pool = all.len() - HELD_OUT;
    let pick = |count: usize, from: usize, span: usize| -> Vectors {
        let mut data = Vec::with_capacity(count * dim);
        for i in 0..count {
            data.extend_from_slice(all.row(from + i * span / count));
        }
        Vectors { dim, data }
    };
    let fixture = Fixture {
        base: pick(base_n, 0, pool),
        queries: pick(queries_n, pool, HELD_OUT),
    };
    fixture.write(&out)?;
    println!(
        "wrote {}: {} base and {} query vectors of dim {dim} from {} ({} bytes)",
        out.display(),
        fixture.base.len(),
        fixture.queries.len(),
        corpus.display(),
        std::fs::metadata(&out)?.len()
    );
    Ok(())
}
