//! How an index is shaped: dimension, storage precision and HNSW parameters.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::IndexError;

/// How each stored vector is kept in memory and on disk.
///
/// Every vector is normalised to unit length before it is stored, so the three
/// precisions differ only in how finely the direction is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// 4 bytes per dimension: exact.
    F32,
    /// 2 bytes per dimension (IEEE half precision): about 3 significant digits per
    /// component, indistinguishable from `F32` in recall on sentence embeddings.
    F16,
    /// 1 byte per dimension: each vector is scaled so its largest component is ±127 and
    /// rounded. Cosine similarity is scale-invariant, so only the rounding costs precision.
    I8,
}

impl Quantization {
    /// Bytes one stored component takes.
    pub fn bytes_per_component(self) -> usize {
        match self {
            Quantization::F32 => 4,
            Quantization::F16 => 2,
            Quantization::I8 => 1,
        }
    }

    pub(crate) fn scalar_kind(self) -> usearch::ScalarKind {
        match self {
            Quantization::F32 => usearch::ScalarKind::F32,
            Quantization::F16 => usearch::ScalarKind::F16,
            Quantization::I8 => usearch::ScalarKind::I8,
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantization::F32 => "f32",
            Quantization::F16 => "f16",
            Quantization::I8 => "i8",
        })
    }
}

impl std::str::FromStr for Quantization {
    type Err = IndexError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Quantization::F32),
            "f16" => Ok(Quantization::F16),
            "i8" => Ok(Quantization::I8),
            other => Err(IndexError::InvalidConfig(format!(
                "unknown quantization {other:?}; use f32, f16 or i8"
            ))),
        }
    }
}

/// The shape of a [`VectorIndex`](crate::VectorIndex).
///
/// `dim` and `quantization` are fixed when the index file is written: opening a saved
/// index with different values fails with [`IndexError::Mismatch`]. `connectivity` is
/// also fixed by the saved graph (a saved index keeps its own). The two expansion factors
/// are run-time settings and may change between opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexConfig {
    /// Dimensions of every vector (384 for all-MiniLM-L6-v2).
    pub dim: usize,
    /// Storage precision of the vectors.
    pub quantization: Quantization,
    /// HNSW `M`: the number of neighbours each node keeps per upper layer (twice as many
    /// on the base layer). More means better recall and more memory.
    pub connectivity: usize,
    /// HNSW `efConstruction`: how wide an insertion searches for neighbours.
    pub expansion_add: usize,
    /// HNSW `ef`: how wide a query searches. Raised to `k` when `k` is larger.
    pub expansion_search: usize,
}

impl IndexConfig {
    /// Default `connectivity` (`M`).
    pub const DEFAULT_CONNECTIVITY: usize = 16;
    /// Default `expansion_add` (`efConstruction`).
    pub const DEFAULT_EXPANSION_ADD: usize = 128;
    /// Default `expansion_search` (`ef`).
    pub const DEFAULT_EXPANSION_SEARCH: usize = 128;
    /// Default storage precision: i8, a byte per component (a quarter of f32), with the
    /// graph's hits scored again with the query at full precision. At a million real
    /// MiniLM vectors its recall@10 was 0.983 against f16's 0.988, in half the memory
    /// (docs/benchmarks.md).
    pub const DEFAULT_QUANTIZATION: Quantization = Quantization::I8;
    /// The values `expansion_add` and `expansion_search` may take.
    pub const EXPANSION_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;

    /// The defaults for vectors of `dim` dimensions. They hold recall@10 ≥ 0.98 on
    /// all-MiniLM-L6-v2 sentence embeddings at 100,000 vectors (0.993; `ef` = 64 gives
    /// only 0.978 there). The crate README has the measurements.
    pub fn new(dim: usize) -> Self {
        IndexConfig {
            dim,
            quantization: Self::DEFAULT_QUANTIZATION,
            connectivity: Self::DEFAULT_CONNECTIVITY,
            expansion_add: Self::DEFAULT_EXPANSION_ADD,
            expansion_search: Self::DEFAULT_EXPANSION_SEARCH,
        }
    }

    /// The same configuration with another storage precision.
    pub fn with_quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), IndexError> {
        if self.dim == 0 || self.dim > 65_536 {
            return Err(IndexError::InvalidConfig(format!(
                "dim must be between 1 and 65536, got {}",
                self.dim
            )));
        }
        if !(2..=1024).contains(&self.connectivity) {
            return Err(IndexError::InvalidConfig(format!(
                "connectivity must be between 2 and 1024, got {}",
                self.connectivity
            )));
        }
        for (name, value) in [
            ("expansion_add", self.expansion_add),
            ("expansion_search", self.expansion_search),
        ] {
            if !Self::EXPANSION_RANGE.contains(&value) {
                return Err(IndexError::InvalidConfig(format!(
                    "{name} must be between 1 and {}, got {value}",
                    Self::EXPANSION_RANGE.end()
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_round_trips_through_its_name() {
        for q in [Quantization::F32, Quantization::F16, Quantization::I8] {
            assert_eq!(q.to_string().parse::<Quantization>().unwrap(), q);
        }
        assert!("f8".parse::<Quantization>().is_err());
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(IndexConfig::new(384).validate().is_ok());
        assert!(IndexConfig::new(0).validate().is_err());
        let mut cfg = IndexConfig::new(384);
        cfg.connectivity = 1;
        assert!(cfg.validate().is_err());
        let mut cfg = IndexConfig::new(384);
        cfg.expansion_search = 0;
        assert!(cfg.validate().is_err());
    }
}
