//! The change log: every change to ground state is an ordered, replayable record. Stores
//! append a record in the same transaction as the change; later sync, audit and erasure
//! receipts read it in `seq` order.

use serde::{Deserialize, Serialize};

use crate::ids::{MemoryId, TenantId};
use crate::memory::Memory;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Created,
    Updated,
    Deleted,
    EmbeddingRequeued,
}

impl ChangeOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Created => "created",
            ChangeOp::Updated => "updated",
            ChangeOp::Deleted => "deleted",
            ChangeOp::EmbeddingRequeued => "embedding_requeued",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => ChangeOp::Created,
            "updated" => ChangeOp::Updated,
            "deleted" => ChangeOp::Deleted,
            "embedding_requeued" => ChangeOp::EmbeddingRequeued,
            _ => return None,
        })
    }
}

/// One entry of the change log. `memory` is the full state after the change, so replaying
/// the log in `seq` order rebuilds the memories table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Strictly increasing per store.
    pub seq: i64,
    pub tenant: TenantId,
    pub memory_id: MemoryId,
    pub op: ChangeOp,
    pub version: i64,
    pub at: Timestamp,
    pub memory: Memory,
}
