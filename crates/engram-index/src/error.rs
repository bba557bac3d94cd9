//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong with a [`VectorIndex`](crate::VectorIndex).
///
/// [`Corrupt`](IndexError::Corrupt) and [`Mismatch`](IndexError::Mismatch) come only from
/// [`VectorIndex::open`](crate::VectorIndex::open) and mean "this file cannot be used":
/// the index is derived state, so the caller deletes it and rebuilds it from the stored
/// vectors. [`IndexError::needs_rebuild`] tells the two apart from the other errors.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The configuration passed to `open` is unusable.
    #[error("invalid index configuration: {0}")]
    InvalidConfig(String),

    /// A vector or query has the wrong number of dimensions.
    #[error("vector has {actual} dimensions, the index expects {expected}")]
    DimensionMismatch { expected: usize, actual: usize },

    /// A vector or query cannot be compared by cosine similarity: it holds a NaN or an
    /// infinity, or it is all zeros.
    #[error("invalid vector: {0}")]
    InvalidVector(&'static str),

    /// `u64::MAX` marks deleted slots inside the index and cannot be a key.
    #[error("key {0} is reserved and cannot be stored")]
    ReservedKey(u64),

    /// The saved index (or its `.meta.json` sidecar) is damaged: truncated, garbled,
    /// written by an unknown format version, or half of a save that never finished.
    /// Delete it and rebuild.
    #[error("index file {path} is corrupt ({reason}); delete it and rebuild the index")]
    Corrupt { path: PathBuf, reason: String },

    /// The saved index is intact but was built with another dimension or quantization
    /// than the one requested. Delete it and rebuild.
    #[error("index file {path} does not match the configuration ({reason}); delete it and rebuild the index")]
    Mismatch { path: PathBuf, reason: String },

    /// Reading or writing the index files failed.
    #[error("index I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The HNSW engine reported a failure (usually out of memory).
    #[error("vector index engine: {0}")]
    Backend(String),
}

impl IndexError {
    /// True for the errors that mean the saved file must be discarded and the index
    /// rebuilt from ground state ([`Corrupt`](IndexError::Corrupt),
    /// [`Mismatch`](IndexError::Mismatch)).
    pub fn needs_rebuild(&self) -> bool {
        matches!(
            self,
            IndexError::Corrupt { .. } | IndexError::Mismatch { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn backend(err: impl std::fmt::Display) -> Self {
        IndexError::Backend(err.to_string())
    }
}
