//! The working tier on the wire: a record is one flat JSON object — its id, kind, scope
//! fields, its kind's own fields, and `created_at`, `updated_at`, `version` — and a create
//! or update is a JSON object of the kind's fields (checked by the core's schema, which
//! names the field on every failure). Listings page with an opaque keyset cursor.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use engram_core::time::{format_rfc3339, from_micros, to_micros};
use engram_core::working::{Record, RecordId, RecordKind, RecordPage, RecordQuery};
use engram_core::CoreError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

/// A record as the API shows it: one flat object.
pub fn record_response(r: &Record) -> RecordResponse {
    let mut o = Map::new();
    o.insert("id".into(), json!(r.id.to_string()));
    o.insert("kind".into(), json!(r.kind.as_str()));
    let scope = [
        ("user_id", &r.scope.user_id),
        ("agent_id", &r.scope.agent_id),
        ("project", &r.scope.project),
        ("domain", &r.scope.domain),
        ("session_id", &r.scope.session_id),
    ];
    for (k, v) in scope {
        if let Some(v) = v {
            o.insert(k.into(), json!(v));
        }
    }
    if let Some(k) = &r.key {
        o.insert("key".into(), json!(k));
    }
    for (k, v) in &r.body {
        o.insert(k.clone(), v.clone());
    }
    if let Some(m) = r.memory_id {
        o.insert("memory_id".into(), json!(m.to_string()));
    }
    o.insert("created_at".into(), json!(format_rfc3339(r.created_at)));
    o.insert("updated_at".into(), json!(format_rfc3339(r.updated_at)));
    o.insert("version".into(), json!(r.version));
    RecordResponse(o)
}

/// A working-tier record: `id`, `kind`, the scope fields, the kind's own fields,
/// `memory_id` (decisions, patterns and messages: the memory that makes it searchable),
/// `created_at`, `updated_at`, `version`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({"id": "0193f0c1-7a2b-7c3d-8e4f-5a6b7c8d9e0f", "kind": "task", "project": "engram", "title": "Ship the working tier", "status": "in_progress", "priority": "high", "created_at": "2026-12-02T06:00:00.000000Z", "updated_at": "2026-12-02T06:00:00.000000Z", "version": 1}))]
pub struct RecordResponse(pub Map<String, Value>);

/// A page of records.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct RecordListResponse {
    pub data: Vec<RecordResponse>,
    pub meta: RecordPageMeta,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct RecordPageMeta {
    pub per_page: u32,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl RecordListResponse {
    pub fn new(page: RecordPage, per_page: u32) -> Self {
        let next_cursor = match page.items.last() {
            Some(last) if page.has_more => Some(encode_cursor(last)),
            _ => None,
        };
        RecordListResponse {
            data: page.items.iter().map(record_response).collect(),
            meta: RecordPageMeta {
                per_page,
                next_cursor,
            },
        }
    }
}

fn encode_cursor(r: &Record) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", to_micros(r.created_at), r.id))
}

fn decode_cursor(s: &str) -> Result<(engram_core::Timestamp, RecordId), CoreError> {
    let bad = || CoreError::validation("cursor", "is not a cursor this server issued");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = raw.split_once(':').ok_or_else(bad)?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    let id = RecordId::parse(id, "cursor").map_err(|_| bad())?;
    Ok((from_micros(at), id))
}

/// The query string of a record listing. Which parent parameter applies depends on the
/// kind (`goal_id` for tasks, `task_id` for tool calls, `parent_id` for goals).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordListParams {
    /// Records per page, 1..100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub per_page: Option<String>,
    /// The `next_cursor` of the previous page, with the same filters.
    pub cursor: Option<String>,
    /// `asc` (oldest first) or `desc` (newest first; the default, except for messages).
    pub order: Option<String>,
    /// Only these statuses: one, or several separated by commas.
    pub status: Option<String>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub project: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
    /// Goals: the parent goal.
    pub parent_id: Option<String>,
    /// Tasks: their goal.
    pub goal_id: Option<String>,
    /// Tool calls: their task.
    pub task_id: Option<String>,
}

impl RecordListParams {
    /// The query for a listing of `kind`. `oldest_first` is the kind's default order.
    pub fn into_query(
        self,
        kind: RecordKind,
        oldest_first: bool,
    ) -> Result<RecordQuery, CoreError> {
        let mut q = RecordQuery::of(kind);
        q.limit = match self.per_page.as_deref() {
            None => 20,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    CoreError::validation("per_page", "must be an integer from 1 to 100")
                })?,
        };
        q.oldest_first = match self.order.as_deref() {
            None => oldest_first,
            Some("asc") => true,
            Some("desc") => false,
            Some(_) => return Err(CoreError::validation("order", "must be asc or desc")),
        };
        if let Some(c) = self.cursor.as_deref() {
            q.after = Some(decode_cursor(c)?);
        }
        let schema = kind.schema();
        if let Some(s) = self.status {
            let Some(field) = schema.status else {
                return Err(CoreError::validation(
                    "status",
                    format!("a {} has no status", kind.noun()),
                ));
            };
            let allowed = schema
                .fields
                .iter()
                .find(|f| f.name == field)
                .and_then(|f| match f.ty {
                    engram_core::working::schema::FieldType::Enum(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(&[]);
            for st in s.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if !allowed.contains(&st) {
                    return Err(CoreError::validation(
                        "status",
                        format!("`{st}` is not one of: {}", allowed.join(", ")),
                    ));
                }
                q.statuses.push(st.to_owned());
            }
        }
        q.user_id = self.user_id;
        q.agent_id = self.agent_id;
        q.project = self.project;
        q.domain = self.domain;
        q.session_id = self.session_id;
        let parents = [
            ("parent_id", self.parent_id),
            ("goal_id", self.goal_id),
            ("task_id", self.task_id),
        ];
        for (name, value) in parents {
            let Some(v) = value else { continue };
            if schema.parent.map(|(f, _)| f) != Some(name) {
                return Err(CoreError::validation(
                    name,
                    format!("is not a filter of {} listings", kind.noun()),
                ));
            }
            q.parent_id = Some(RecordId::parse(&v, name)?);
        }
        Ok(q)
    }
}

/// `POST /api/v1/decisions/similar` and `POST /api/v1/patterns/match`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarRequest {
    /// The situation to match (a decision's context, a pattern's trigger).
    pub text: String,
    /// How many, 1..100 (default 10).
    pub k: Option<u32>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub project: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
}

impl SimilarRequest {
    pub fn scope(&self) -> engram_core::Scope {
        engram_core::Scope {
            user_id: self.user_id.clone(),
            agent_id: self.agent_id.clone(),
            project: self.project.clone(),
            domain: self.domain.clone(),
            session_id: self.session_id.clone(),
        }
    }
}

/// One match: the record and how well it matched.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct SimilarHit {
    pub record: RecordResponse,
    pub score: f32,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct SimilarResponse {
    pub hits: Vec<SimilarHit>,
}

impl SimilarResponse {
    pub fn new(hits: Vec<(Record, f32)>) -> Self {
        SimilarResponse {
            hits: hits
                .into_iter()
                .map(|(r, score)| SimilarHit {
                    record: record_response(&r),
                    score,
                })
                .collect(),
        }
    }
}

/// `POST /api/v1/patterns/{id}/outcome`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternOutcomeRequest {
    /// Whether applying the pattern worked this time.
    pub success: bool,
}

/// `PUT /api/v1/agents/{agent}/state/{key}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateValue {
    /// Any JSON value (≤ 64 KiB).
    pub value: Value,
}
