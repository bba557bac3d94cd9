//! Listing: filters, sort orders, page requests and the opaque page token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::CoreError;
use crate::ids::MemoryId;
use crate::memory::{EmbeddingStatus, Memory, MemoryType, Source};
use crate::time::{to_micros, Timestamp};

pub const PER_PAGE_DEFAULT: u32 = 20;
pub const PER_PAGE_MAX: u32 = 100;
pub const PAGE_MAX: u32 = 1_000_000;

/// Every condition must hold. `memory_types`: the memory is of one of them (any, when
/// empty). `tags`: the memory carries all of them. `metadata`: each key holds exactly that
/// value (numbers compare by value). `created_after` and `created_before` are exclusive.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryFilter {
    pub memory_types: Vec<MemoryType>,
    pub tags: Vec<String>,
    pub source: Option<Source>,
    pub embedding_status: Option<EmbeddingStatus>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub project: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub metadata: Vec<(String, Value)>,
}

/// Whether a stored metadata value equals a filter value: JSON equality, except that
/// numbers compare by value (`1` equals `1.0`), as SQL does.
pub fn metadata_value_eq(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => have == want,
    }
}

impl MemoryFilter {
    /// Whether `m` passes the filter (deleted memories never do). Stores use SQL; this is
    /// the reference the conformance suite checks them against.
    pub fn matches(&self, m: &Memory) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.is_none() || want == have
        }
        m.deleted_at.is_none()
            && (self.memory_types.is_empty() || self.memory_types.contains(&m.memory_type))
            && self.source.is_none_or(|s| s == m.source)
            && self
                .embedding_status
                .is_none_or(|s| s == m.embedding_status)
            && self.tags.iter().all(|t| m.tags.contains(t))
            && eq(&self.user_id, &m.scope.user_id)
            && eq(&self.agent_id, &m.scope.agent_id)
            && eq(&self.project, &m.scope.project)
            && eq(&self.domain, &m.scope.domain)
            && eq(&self.session_id, &m.scope.session_id)
            && self.created_after.is_none_or(|t| m.created_at > t)
            && self.created_before.is_none_or(|t| m.created_at < t)
            && self.metadata.iter().all(|(k, want)| {
                m.metadata
                    .get(k)
                    .is_some_and(|have| metadata_value_eq(have, want))
            })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortBy {
    #[default]
    CreatedAt,
    UpdatedAt,
    AccessedAt,
}

impl SortBy {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "created_at" => Ok(SortBy::CreatedAt),
            "updated_at" => Ok(SortBy::UpdatedAt),
            "accessed_at" => Ok(SortBy::AccessedAt),
            _ => Err(CoreError::validation(
                "sort_by",
                "must be one of: created_at, updated_at, accessed_at",
            )),
        }
    }

    /// The value of this sort key on `m`, in microseconds.
    pub fn key_of(self, m: &Memory) -> i64 {
        to_micros(match self {
            SortBy::CreatedAt => m.created_at,
            SortBy::UpdatedAt => m.updated_at,
            SortBy::AccessedAt => m.accessed_at,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

impl SortOrder {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s {
            "asc" => Ok(SortOrder::Asc),
            "desc" => Ok(SortOrder::Desc),
            _ => Err(CoreError::validation(
                "sort_order",
                "must be one of: asc, desc",
            )),
        }
    }
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// 1-based page number (offset pagination).
    Page(u32),
    /// Keyset pagination: the items strictly after (`sort_key`, `id`) in the list's order.
    /// `page` is the page number this position corresponds to, for the response meta.
    After {
        sort_key: i64,
        id: MemoryId,
        page: u32,
    },
}

/// A fully parsed list request.
#[derive(Clone, Debug, PartialEq)]
pub struct ListQuery {
    pub filter: MemoryFilter,
    pub sort_by: SortBy,
    pub sort_order: SortOrder,
    pub per_page: u32,
    pub position: Position,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            filter: MemoryFilter::default(),
            sort_by: SortBy::default(),
            sort_order: SortOrder::default(),
            per_page: PER_PAGE_DEFAULT,
            position: Position::Page(1),
        }
    }
}

impl ListQuery {
    /// Identifies the filter and order a token belongs to, so a token is not replayed
    /// against a different query.
    fn shape_hash(&self) -> String {
        let bytes =
            serde_json::to_vec(&(&self.filter, self.sort_by, self.sort_order)).unwrap_or_default();
        hex::encode(&Sha256::digest(&bytes)[..8])
    }

    pub fn page_number(&self) -> u32 {
        match self.position {
            Position::Page(p) | Position::After { page: p, .. } => p,
        }
    }
}

/// What a store returns for a list request.
#[derive(Clone, Debug, PartialEq)]
pub struct ListResult {
    pub items: Vec<Memory>,
    /// Memories matching the filter, over all pages.
    pub total: u64,
    /// Whether another page follows this one.
    pub has_more: bool,
}

/// The opaque `cursor` of a list response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    v: u8,
    k: i64,
    id: MemoryId,
    p: u32,
    h: String,
}

impl PageToken {
    /// The token for the page after `last`, the final item of a page of `q`.
    pub fn after(q: &ListQuery, last: &Memory) -> String {
        let t = PageToken {
            v: 1,
            k: q.sort_by.key_of(last),
            id: last.id,
            p: q.page_number() + 1,
            h: q.shape_hash(),
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
    }

    /// Decodes `token` and positions `q` after it. Fails if the token is malformed or was
    /// issued for a different filter or order.
    pub fn resume(q: &mut ListQuery, token: &str) -> Result<(), CoreError> {
        let bad = || CoreError::validation("cursor", "is not a cursor issued by this server");
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| bad())?;
        let t: PageToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if t.v != 1 {
            return Err(bad());
        }
        if t.h != q.shape_hash() {
            return Err(CoreError::validation(
                "cursor",
                "was issued for a different filter or sort order; repeat the original query parameters",
            ));
        }
        q.position = Position::After {
            sort_key: t.k,
            id: t.id,
            page: t.p.clamp(1, PAGE_MAX),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::memory::NewMemory;

    #[test]
    fn token_round_trips_and_is_bound_to_the_query() {
        let m = NewMemory::note("x")
            .unwrap()
            .into_memory(TenantId::parse("t").unwrap(), crate::time::now());
        let q = ListQuery::default();
        let token = PageToken::after(&q, &m);
        let mut q2 = ListQuery::default();
        PageToken::resume(&mut q2, &token).unwrap();
        assert_eq!(
            q2.position,
            Position::After {
                sort_key: to_micros(m.created_at),
                id: m.id,
                page: 2
            }
        );
        let mut other = ListQuery {
            sort_order: SortOrder::Asc,
            ..Default::default()
        };
        assert_eq!(
            PageToken::resume(&mut other, &token).unwrap_err().field(),
            Some("cursor")
        );
        assert!(PageToken::resume(&mut q2, "garbage!").is_err());
        assert!(PageToken::resume(&mut q2, "e30").is_err());
    }
}
