//! `POST /api/v1/search`: request, filters and response.

use engram_core::validate::{Label, Tags};
use engram_core::{
    CoreError, MemoryFilter, MemoryType, SearchMode, SearchRequest, SearchResult, Source,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::memory::MemoryResponse;

/// One memory type, or several (any of them).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Conditions every hit meets. The tenant is always the caller's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// A type (`"fact"`) or several (`["fact", "decision"]`): any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_type: Option<OneOrMany>,
    /// A hit carries all of these tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::Source>)]
    pub source: Option<String>,
    /// Created strictly after this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_after: Option<String>,
    /// Created strictly before this RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_before: Option<String>,
    /// Metadata equality: each key must hold exactly this string, number or boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// Longest metadata key a filter may name.
const METADATA_KEY_MAX: usize = 128;

impl SearchFilters {
    pub fn into_domain(self) -> Result<MemoryFilter, CoreError> {
        let label = |v: Option<String>, field: &str| {
            v.map(|s| Label::parse(s, field).map(Label::into_inner))
                .transpose()
        };
        let ts = |v: Option<String>, field: &str| {
            v.map(|s| {
                engram_core::time::parse_rfc3339(&s).ok_or_else(|| {
                    CoreError::validation(
                        field,
                        "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z",
                    )
                })
            })
            .transpose()
        };
        let memory_types = match self.memory_type {
            None => Vec::new(),
            Some(OneOrMany::One(s)) => vec![MemoryType::parse(&s, "filters.memory_type")?],
            Some(OneOrMany::Many(v)) => {
                if v.is_empty() {
                    return Err(CoreError::validation(
                        "filters.memory_type",
                        "must name at least one type",
                    ));
                }
                let mut out = Vec::new();
                for s in v {
                    let t = MemoryType::parse(&s, "filters.memory_type")?;
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
                out
            }
        };
        let mut metadata = Vec::new();
        for (k, v) in self.metadata.unwrap_or_default() {
            let field = "filters.metadata";
            if k.is_empty()
                || k.len() > METADATA_KEY_MAX
                || k.chars().any(|c| c == '"' || c == '\\' || c.is_control())
            {
                return Err(CoreError::validation(
                    field,
                    format!("keys must be 1 to {METADATA_KEY_MAX} characters without quotes, backslashes or control characters"),
                ));
            }
            match v {
                Value::String(_) | Value::Number(_) | Value::Bool(_) => metadata.push((k, v)),
                _ => {
                    return Err(CoreError::validation(
                        format!("filters.metadata.{k}"),
                        "must be a string, a number or a boolean",
                    ))
                }
            }
        }
        Ok(MemoryFilter {
            memory_types,
            tags: Tags::parse(&self.tags.unwrap_or_default(), "filters.tags")?.into_strings(),
            source: self
                .source
                .map(|s| Source::parse(&s, "filters.source"))
                .transpose()?,
            embedding_status: None,
            user_id: label(self.user_id, "filters.user_id")?,
            agent_id: label(self.agent_id, "filters.agent_id")?,
            project: label(self.project, "filters.project")?,
            domain: label(self.domain, "filters.domain")?,
            session_id: label(self.session_id, "filters.session_id")?,
            created_after: ts(self.created_after, "filters.created_after")?,
            created_before: ts(self.created_before, "filters.created_before")?,
            metadata,
        })
    }
}

/// `filters` must be a JSON object (serde would otherwise take a struct from an array).
fn object_only<'de, D>(d: D) -> Result<Option<SearchFilters>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Obj;
    impl<'de> serde::de::Visitor<'de> for Obj {
        type Value = Option<SearchFilters>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of filters")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            SearchFilters::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Obj)
}

/// `POST /api/v1/search`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// What to look for, in words.
    pub query: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "object_only"
    )]
    pub filters: Option<SearchFilters>,
    /// Hits to return, 1..100 (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<i64>,
    /// `hybrid` (default), `semantic` or `keyword`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::SearchMode>)]
    pub mode: Option<String>,
    /// Drop hits whose `score` is lower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
}

impl SearchBody {
    pub fn into_domain(self) -> Result<SearchRequest, CoreError> {
        let k = match self.k {
            None => None,
            Some(k) => Some(
                u32::try_from(k)
                    .ok()
                    .filter(|k| (1..=engram_core::search::K_MAX).contains(k))
                    .ok_or_else(|| {
                        CoreError::validation(
                            "k",
                            format!(
                                "must be an integer from 1 to {}",
                                engram_core::search::K_MAX
                            ),
                        )
                    })?,
            ),
        };
        SearchRequest::new(
            &self.query,
            self.filters.unwrap_or_default().into_domain()?,
            k,
            self.mode
                .map(|m| SearchMode::parse(&m))
                .transpose()?
                .unwrap_or_default(),
            self.min_score.map(|s| s as f32),
        )
    }
}

/// Each retriever's score of a hit.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct HitScoresResponse {
    /// Cosine similarity of the query and the memory's best window (absent: not retrieved
    /// by vector).
    pub vector: Option<f32>,
    /// BM25 (absent: no query word matched).
    pub keyword: Option<f32>,
    /// The score hits are ranked by.
    pub fused: f32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct SearchHitResponse {
    pub memory: MemoryResponse,
    pub score: f32,
    pub scores: HitScoresResponse,
    /// 1-based position.
    pub rank: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct SearchResponse {
    pub hits: Vec<SearchHitResponse>,
    pub took_ms: f64,
    /// The mode that ran.
    #[schema(value_type = crate::schema::SearchMode)]
    pub mode: SearchMode,
    /// Set when a hybrid search ran as keyword search (no embedder or no vectors yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

impl From<SearchResult> for SearchResponse {
    fn from(r: SearchResult) -> Self {
        SearchResponse {
            hits: r
                .hits
                .into_iter()
                .map(|h| SearchHitResponse {
                    memory: h.memory.into(),
                    score: h.score,
                    scores: HitScoresResponse {
                        vector: h.scores.vector,
                        keyword: h.scores.keyword,
                        fused: h.scores.fused,
                    },
                    rank: h.rank,
                })
                .collect(),
            took_ms: r.took_ms,
            mode: r.mode,
            degraded: r.degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: SearchBody) -> String {
        body.into_domain()
            .unwrap_err()
            .field()
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn bad_input_names_the_field() {
        let q = |s: &str| SearchBody {
            query: s.into(),
            ..Default::default()
        };
        assert_eq!(field(q("")), "query");
        assert_eq!(
            field(SearchBody {
                k: Some(0),
                ..q("x")
            }),
            "k"
        );
        assert_eq!(
            field(SearchBody {
                k: Some(1000),
                ..q("x")
            }),
            "k"
        );
        assert_eq!(
            field(SearchBody {
                mode: Some("fuzzy".into()),
                ..q("x")
            }),
            "mode"
        );
        let with = |f: SearchFilters| SearchBody {
            filters: Some(f),
            ..q("x")
        };
        assert_eq!(
            field(with(SearchFilters {
                memory_type: Some(OneOrMany::Many(vec!["fact".into(), "poem".into()])),
                ..Default::default()
            })),
            "filters.memory_type"
        );
        assert_eq!(
            field(with(SearchFilters {
                created_after: Some("yesterday".into()),
                ..Default::default()
            })),
            "filters.created_after"
        );
        let mut meta = serde_json::Map::new();
        meta.insert("speaker".into(), serde_json::json!({"nested": true}));
        assert_eq!(
            field(with(SearchFilters {
                metadata: Some(meta),
                ..Default::default()
            })),
            "filters.metadata.speaker"
        );
    }

    #[test]
    fn filters_parse_into_the_domain() {
        let body: SearchBody = serde_json::from_value(serde_json::json!({
            "query": "paint",
            "k": 5,
            "mode": "keyword",
            "filters": {"memory_type": ["fact", "note", "fact"], "user_id": "u1",
                        "metadata": {"speaker": "Mel", "turn": 3}}
        }))
        .unwrap();
        let r = body.into_domain().unwrap();
        assert_eq!((r.k, r.mode), (5, SearchMode::Keyword));
        assert_eq!(
            r.filter.memory_types,
            vec![MemoryType::Fact, MemoryType::Note]
        );
        assert_eq!(r.filter.user_id.as_deref(), Some("u1"));
        assert_eq!(r.filter.metadata.len(), 2);
    }
}
