//! Identifiers: memory ids (UUIDv7, time-ordered) and tenant names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CoreError;

/// A memory's id: a UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryId(pub Uuid);

impl MemoryId {
    pub fn new() -> Self {
        MemoryId(Uuid::now_v7())
    }

    /// Parses a client-supplied id; `field` names it in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, CoreError> {
        Uuid::parse_str(s.trim()).map(MemoryId).map_err(|_| {
            CoreError::validation(field, format!("`{}` is not a UUID", truncate(s, 64)))
        })
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(MemoryId)
    }
}

impl Default for MemoryId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MemoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for MemoryId {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemoryId::parse(s, "id")
    }
}

/// A tenant: the wall between customers. 1..=64 characters of `[A-Za-z0-9_.-]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(TenantId(s.to_owned()))
        } else {
            Err(CoreError::validation(
                "tenant",
                "a tenant name is 1 to 64 characters of letters, digits, '_', '-' or '.'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
