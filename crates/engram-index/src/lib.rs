//! In-process indexes for embedded mode: approximate nearest neighbours, and BM25
//! keywords ([`keyword`]: an in-memory inverted index, rebuilt from the store at start).
//!
//! The vector side is a persistent HNSW graph of vectors under `u64` keys,
//! compared by cosine similarity ([`VectorIndex`]). It stores vectors in f32, f16 or i8
//! ([`Quantization`]), replaces and removes them, searches with a predicate applied
//! inside the graph walk, answers exact brute-force searches over a given set of keys,
//! and saves itself atomically next to a checksummed sidecar so a damaged file is
//! reported ([`IndexError::Corrupt`]) rather than loaded. The graph is usearch's
//! (C++, through cxx); the crate README records why it was chosen over `hnsw_rs`.
//!
//! It does not own what the keys mean, which vectors belong in the index, or when to
//! save: the index is derived state, and its caller (a storage backend) maps memory ids
//! to keys, filters by tenant and scope, and rebuilds the index from its stored vectors
//! when `open` reports the file unusable. It depends on no other engram crate.
//!
//! ```
//! use engram_index::{IndexConfig, VectorIndex};
//!
//! let dir = tempfile::tempdir()?;
//! let index = VectorIndex::open(&dir.path().join("vectors.usearch"), IndexConfig::new(3))?;
//! index.add(1, &[1.0, 0.0, 0.0])?;
//! index.add(2, &[0.0, 1.0, 0.0])?;
//! index.add(3, &[0.9, 0.1, 0.0])?;
//!
//! let hits = index.search(&[1.0, 0.0, 0.0], 2, None)?;
//! assert_eq!(hits[0].key, 1);
//! assert_eq!(hits[1].key, 3);
//!
//! let odd_only = |key: u64| key % 2 == 1;
//! let hits = index.search(&[0.0, 1.0, 0.0], 1, Some(&odd_only))?;
//! assert_eq!(hits[0].key, 3);
//!
//! index.save()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod arena;
mod config;
mod error;
pub mod eval;
mod index;
pub mod keyword;
mod persist;
mod sketch;
mod slots;
mod vector;

pub use config::{IndexConfig, Quantization};
pub use error::IndexError;
pub use index::{Hit, VectorIndex};
pub use sketch::{Sketch, SketchQuery, SKETCH_BITS};
pub use slots::KeySlots;
