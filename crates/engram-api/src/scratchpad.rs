//! Scratchpads on the wire: an agent's ephemeral notes with a TTL.

use std::time::Duration;

use engram_core::scratchpad::{validate_ttl_secs, Entry};
use engram_core::time::format_rfc3339;
use engram_core::CoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// `PUT /api/v1/agents/{agent}/scratchpad/{key}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScratchpadPutRequest {
    /// Any JSON but `null` (≤ 64 KiB as compact JSON).
    #[schema(value_type = Object)]
    pub value: Option<Value>,
    /// How long the entry lives, 1..=2592000 seconds (30 days); default 3600.
    pub ttl_secs: Option<u64>,
}

impl ScratchpadPutRequest {
    /// The value (`Null` when absent, which the service refuses naming `value`) and TTL.
    pub fn into_domain(self) -> Result<(Value, Duration), CoreError> {
        let ttl = validate_ttl_secs(self.ttl_secs)?;
        Ok((self.value.unwrap_or(Value::Null), ttl))
    }
}

/// One entry of an agent's scratchpad.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ScratchpadEntryResponse {
    pub key: String,
    #[schema(value_type = Object)]
    pub value: Value,
    /// When it vanishes (RFC 3339).
    pub expires_at: String,
    /// When it was last written (RFC 3339).
    pub updated_at: String,
}

impl From<Entry> for ScratchpadEntryResponse {
    fn from(e: Entry) -> Self {
        ScratchpadEntryResponse {
            key: e.key,
            value: e.value,
            expires_at: format_rfc3339(e.expires_at),
            updated_at: format_rfc3339(e.updated_at),
        }
    }
}

/// `GET /api/v1/agents/{agent}/scratchpad`: the live entries, sorted by key.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct ScratchpadListResponse {
    pub entries: Vec<ScratchpadEntryResponse>,
}
