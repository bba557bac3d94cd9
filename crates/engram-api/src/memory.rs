//! Memory requests and responses.

use engram_core::filter::{Position, PAGE_MAX, PER_PAGE_DEFAULT, PER_PAGE_MAX};
use engram_core::validate::{parse_related_ids, Content, Label, Metadata, Tags, Title};
use engram_core::{
    BulkItemResult, CoreError, EmbeddingStatus, ListQuery, Listing, Memory, MemoryFilter, MemoryId,
    MemoryPatch, MemoryType, NewMemory, PageToken, SortBy, SortOrder, Source, Timestamp,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

/// `Some(None)` for an explicit `null`, `None` for an absent field.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn timestamp(s: &str, field: &str) -> Result<Timestamp, CoreError> {
    engram_core::time::parse_rfc3339(s).ok_or_else(|| {
        CoreError::validation(
            field,
            "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z",
        )
    })
}

fn label(v: Option<String>, field: &str) -> Result<Option<Label>, CoreError> {
    v.map(|s| Label::parse(s, field)).transpose()
}

fn nullable_label(
    v: Option<Option<String>>,
    field: &str,
) -> Result<Option<Option<Label>>, CoreError> {
    v.map(|o| label(o, field)).transpose()
}

fn nullable_ts(
    v: Option<Option<String>>,
    field: &str,
) -> Result<Option<Option<Timestamp>>, CoreError> {
    v.map(|o| o.map(|s| timestamp(&s, field)).transpose())
        .transpose()
}

/// `POST /api/v1/memories`, and each item of a bulk create.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMemoryRequest {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::MemoryType>)]
    pub memory_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::Source>)]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub valid_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub valid_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<uuid::Uuid>>)]
    pub related_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

impl CreateMemoryRequest {
    /// A request with only content set.
    pub fn with_content(content: impl Into<String>) -> Self {
        CreateMemoryRequest {
            content: content.into(),
            ..Default::default()
        }
    }

    /// Validates every field into the core's `NewMemory`.
    pub fn into_domain(self) -> Result<NewMemory, CoreError> {
        let new = NewMemory {
            content: Content::parse(self.content, "content")?,
            memory_type: self
                .memory_type
                .map(|s| MemoryType::parse(&s, "memory_type"))
                .transpose()?
                .unwrap_or(MemoryType::Note),
            source: self
                .source
                .map(|s| Source::parse(&s, "source"))
                .transpose()?
                .unwrap_or(Source::Manual),
            source_ref: self
                .source_ref
                .map(|s| Label::parse_source_ref(s, "source_ref"))
                .transpose()?,
            title: self.title.map(|s| Title::parse(s, "title")).transpose()?,
            tags: Tags::parse(&self.tags.unwrap_or_default(), "tags")?,
            metadata: self
                .metadata
                .map(|v| Metadata::parse(v, "metadata"))
                .transpose()?
                .unwrap_or_default(),
            user_id: label(self.user_id, "user_id")?,
            agent_id: label(self.agent_id, "agent_id")?,
            project: label(self.project, "project")?,
            domain: label(self.domain, "domain")?,
            session_id: label(self.session_id, "session_id")?,
            valid_from: self
                .valid_from
                .map(|s| timestamp(&s, "valid_from"))
                .transpose()?,
            valid_to: self
                .valid_to
                .map(|s| timestamp(&s, "valid_to"))
                .transpose()?,
            related_ids: parse_related_ids(&self.related_ids.unwrap_or_default(), "related_ids")?,
            conversation_id: label(self.conversation_id, "conversation_id")?,
        };
        new.check()?;
        Ok(new)
    }
}

/// `PATCH /api/v1/memories/{id}`: absent fields stay as they are; `null` clears a
/// nullable field.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMemoryRequest {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub content: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<crate::schema::MemoryType>)]
    pub memory_type: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<crate::schema::Source>)]
    pub source: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_ref: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub title: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub tags: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Option<Value>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_id: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub project: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub domain: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_id: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_to: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Vec<uuid::Uuid>>)]
    pub related_ids: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub conversation_id: Option<Option<String>>,
}

fn required<T>(v: Option<Option<T>>, field: &str) -> Result<Option<T>, CoreError> {
    match v {
        Some(None) => Err(CoreError::validation(field, "must not be null")),
        Some(Some(x)) => Ok(Some(x)),
        None => Ok(None),
    }
}

impl UpdateMemoryRequest {
    pub fn into_domain(self) -> Result<MemoryPatch, CoreError> {
        Ok(MemoryPatch {
            content: required(self.content, "content")?
                .map(|s| Content::parse(s, "content"))
                .transpose()?,
            memory_type: required(self.memory_type, "memory_type")?
                .map(|s| MemoryType::parse(&s, "memory_type"))
                .transpose()?,
            source: required(self.source, "source")?
                .map(|s| Source::parse(&s, "source"))
                .transpose()?,
            source_ref: self
                .source_ref
                .map(|o| {
                    o.map(|s| Label::parse_source_ref(s, "source_ref"))
                        .transpose()
                })
                .transpose()?,
            title: self
                .title
                .map(|o| o.map(|s| Title::parse(s, "title")).transpose())
                .transpose()?,
            // `null` tags, metadata and related ids clear them.
            tags: self
                .tags
                .map(|o| Tags::parse(&o.unwrap_or_default(), "tags"))
                .transpose()?,
            metadata: self
                .metadata
                .map(|o| {
                    Metadata::parse(
                        o.unwrap_or_else(|| Value::Object(Default::default())),
                        "metadata",
                    )
                })
                .transpose()?,
            user_id: nullable_label(self.user_id, "user_id")?,
            agent_id: nullable_label(self.agent_id, "agent_id")?,
            project: nullable_label(self.project, "project")?,
            domain: nullable_label(self.domain, "domain")?,
            session_id: nullable_label(self.session_id, "session_id")?,
            valid_from: nullable_ts(self.valid_from, "valid_from")?,
            valid_to: nullable_ts(self.valid_to, "valid_to")?,
            related_ids: self
                .related_ids
                .map(|o| parse_related_ids(&o.unwrap_or_default(), "related_ids"))
                .transpose()?,
            conversation_id: nullable_label(self.conversation_id, "conversation_id")?,
        })
    }
}

/// A memory as the API returns it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct MemoryResponse {
    #[schema(value_type = uuid::Uuid)]
    pub id: MemoryId,
    pub tenant: String,
    pub content: String,
    #[schema(value_type = crate::schema::MemoryType)]
    pub memory_type: MemoryType,
    #[schema(value_type = crate::schema::Source)]
    pub source: Source,
    pub source_ref: Option<String>,
    pub title: Option<String>,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, Value>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub project: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
    pub content_hash: String,
    #[schema(value_type = crate::schema::EmbeddingStatus)]
    pub embedding_status: EmbeddingStatus,
    pub embedding_model: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub embedding_updated_at: Option<Timestamp>,
    pub embedding_error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub accessed_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_from: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub valid_to: Option<Timestamp>,
    pub version: i64,
    #[schema(value_type = Vec<uuid::Uuid>)]
    pub related_ids: Vec<MemoryId>,
    pub conversation_id: Option<String>,
}

impl From<Memory> for MemoryResponse {
    fn from(m: Memory) -> Self {
        MemoryResponse {
            id: m.id,
            tenant: m.tenant.as_str().to_owned(),
            content: m.content,
            memory_type: m.memory_type,
            source: m.source,
            source_ref: m.source_ref,
            title: m.title,
            tags: m.tags,
            metadata: m.metadata,
            user_id: m.scope.user_id,
            agent_id: m.scope.agent_id,
            project: m.scope.project,
            domain: m.scope.domain,
            session_id: m.scope.session_id,
            content_hash: m.content_hash,
            embedding_status: m.embedding_status,
            embedding_model: m.embedding_model,
            embedding_updated_at: m.embedding_updated_at,
            embedding_error: m.embedding_error,
            created_at: m.created_at,
            updated_at: m.updated_at,
            accessed_at: m.accessed_at,
            deleted_at: m.deleted_at,
            valid_from: m.valid_from,
            valid_to: m.valid_to,
            version: m.version,
            related_ids: m.related_ids,
            conversation_id: m.conversation_id,
        }
    }
}

/// The query string of `GET /api/v1/memories`. Everything arrives as text and is parsed
/// here, so every error names its parameter.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1-based page number (default 1). Send either `page` or `cursor`.
    #[param(value_type = Option<u32>, minimum = 1)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<String>,
    /// Memories per page, 1..100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_page: Option<String>,
    /// The `next_cursor` of the previous page, with the same filters and order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Only these types: one, or several separated by commas (any of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_type: Option<String>,
    /// Comma-separated tags; a memory must carry all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    /// Only this source.
    #[param(value_type = Option<crate::schema::Source>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Only this embedding status.
    #[param(value_type = Option<crate::schema::EmbeddingStatus>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_status: Option<String>,
    /// Only this user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Only this agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Only this project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Only this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Only this session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Created strictly after this RFC 3339 time.
    #[param(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_after: Option<String>,
    /// Created strictly before this RFC 3339 time.
    #[param(format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<String>,
    /// `created_at` (default), `updated_at` or `accessed_at`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_by: Option<String>,
    /// `desc` (default) or `asc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_order: Option<String>,
}

fn number(s: &str, field: &str, min: u32, max: u32) -> Result<u32, CoreError> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            CoreError::validation(field, format!("must be an integer from {min} to {max}"))
        })
}

/// `note` or `note,fact`: one type or several.
fn memory_types(s: &str, field: &str) -> Result<Vec<MemoryType>, CoreError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let t = MemoryType::parse(part, field)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        return Err(CoreError::validation(field, "must name at least one type"));
    }
    Ok(out)
}

fn filter_label(v: Option<String>, field: &str) -> Result<Option<String>, CoreError> {
    Ok(label(v, field)?.map(Label::into_inner))
}

impl ListParams {
    pub fn into_domain(self) -> Result<ListQuery, CoreError> {
        let tags = match self.tags {
            Some(s) => {
                let parts: Vec<&str> = s.split(',').filter(|t| !t.trim().is_empty()).collect();
                Tags::parse(&parts, "tags")?.into_strings()
            }
            None => Vec::new(),
        };
        let mut q = ListQuery {
            filter: MemoryFilter {
                memory_types: self
                    .memory_type
                    .map(|s| memory_types(&s, "memory_type"))
                    .transpose()?
                    .unwrap_or_default(),
                tags,
                source: self
                    .source
                    .map(|s| Source::parse(&s, "source"))
                    .transpose()?,
                embedding_status: self
                    .embedding_status
                    .map(|s| EmbeddingStatus::parse(&s, "embedding_status"))
                    .transpose()?,
                user_id: filter_label(self.user_id, "user_id")?,
                agent_id: filter_label(self.agent_id, "agent_id")?,
                project: filter_label(self.project, "project")?,
                domain: filter_label(self.domain, "domain")?,
                session_id: filter_label(self.session_id, "session_id")?,
                created_after: self
                    .created_after
                    .map(|s| timestamp(&s, "created_after"))
                    .transpose()?,
                created_before: self
                    .created_before
                    .map(|s| timestamp(&s, "created_before"))
                    .transpose()?,
                metadata: Vec::new(),
            },
            sort_by: self
                .sort_by
                .map(|s| SortBy::parse(&s))
                .transpose()?
                .unwrap_or_default(),
            sort_order: self
                .sort_order
                .map(|s| SortOrder::parse(&s))
                .transpose()?
                .unwrap_or_default(),
            per_page: self
                .per_page
                .map(|s| number(&s, "per_page", 1, PER_PAGE_MAX))
                .transpose()?
                .unwrap_or(PER_PAGE_DEFAULT),
            position: Position::Page(1),
        };
        match (self.page, self.cursor) {
            (Some(_), Some(_)) => {
                return Err(CoreError::validation(
                    "cursor",
                    "send either page or cursor, not both",
                ))
            }
            (Some(p), None) => q.position = Position::Page(number(&p, "page", 1, PAGE_MAX)?),
            (None, Some(c)) => PageToken::resume(&mut q, &c)?,
            (None, None) => {}
        }
        Ok(q)
    }
}

/// Paging information of a list response.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct PageMeta {
    pub page: u32,
    pub per_page: u32,
    pub total: u64,
    pub total_pages: u64,
    pub next_cursor: Option<String>,
}

/// `GET /api/v1/memories`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct ListResponse {
    pub data: Vec<MemoryResponse>,
    pub meta: PageMeta,
}

impl From<Listing> for ListResponse {
    fn from(l: Listing) -> Self {
        let per_page = u64::from(l.per_page.max(1));
        ListResponse {
            meta: PageMeta {
                page: l.page,
                per_page: l.per_page,
                total: l.result.total,
                total_pages: l.result.total.div_ceil(per_page),
                next_cursor: l.next_cursor,
            },
            data: l.result.items.into_iter().map(Into::into).collect(),
        }
    }
}

/// `POST /api/v1/memories/bulk`. Items are parsed one by one, so a bad item fails alone.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCreateRequest {
    /// At most 100 memories, each as in `POST /memories`.
    #[schema(value_type = Vec<CreateMemoryRequest>)]
    pub memories: Vec<Box<serde_json::value::RawValue>>,
}

/// Where one bulk item ended up.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct BulkItem {
    pub index: usize,
    #[schema(value_type = uuid::Uuid)]
    pub id: MemoryId,
    /// `created`, or `replayed` when an idempotency key matched an earlier request.
    pub status: String,
}

/// One failed bulk item.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct BulkError {
    pub index: usize,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct BulkCreateResponse {
    pub created: usize,
    pub failed: usize,
    pub items: Vec<BulkItem>,
    pub errors: Vec<BulkError>,
}

/// A bulk body whose every item is well formed: parsed in one pass.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WellFormedBulk {
    memories: Vec<ObjectOnly<CreateMemoryRequest>>,
}

/// `T` from a JSON object only: serde's derived structs also accept an array of the
/// fields in order, which the API does not.
struct ObjectOnly<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
            .map(ObjectOnly)
    }
}

fn check_bulk_len(n: usize) -> Result<(), CoreError> {
    if n > engram_core::BULK_MAX {
        return Err(CoreError::validation(
            "memories",
            format!(
                "{n} memories given; the maximum per request is {}",
                engram_core::BULK_MAX
            ),
        ));
    }
    Ok(())
}

impl BulkCreateRequest {
    /// Parses a bulk body: `Err` when the body itself is not a bulk request, else one
    /// result per item, where an item that is not a valid memory is an error at its index.
    /// A body whose items all have the shape of a memory is parsed in one pass; otherwise
    /// each item is parsed alone, so that each bad one is named.
    pub fn parse_items(
        bytes: &[u8],
    ) -> Result<Result<Vec<Result<NewMemory, CoreError>>, CoreError>, crate::JsonError> {
        if let Ok(ObjectOnly(bulk)) = serde_json::from_slice::<ObjectOnly<WellFormedBulk>>(bytes) {
            return Ok(check_bulk_len(bulk.memories.len()).map(|()| {
                bulk.memories
                    .into_iter()
                    .map(|ObjectOnly(item)| item.into_domain())
                    .collect()
            }));
        }
        crate::parse_json::<BulkCreateRequest>(bytes).map(BulkCreateRequest::into_domain)
    }

    /// Parses each item; an item that is not a valid memory becomes an error at its index.
    pub fn into_domain(self) -> Result<Vec<Result<NewMemory, CoreError>>, CoreError> {
        check_bulk_len(self.memories.len())?;
        Ok(self
            .memories
            .into_iter()
            .map(
                |raw| match crate::parse_json::<CreateMemoryRequest>(raw.get().as_bytes()) {
                    Ok(req) => req.into_domain(),
                    Err(crate::JsonError::Data { field, message }) => {
                        Err(CoreError::validation(field, message))
                    }
                    Err(crate::JsonError::Syntax(m)) => Err(CoreError::validation("", m)),
                },
            )
            .collect())
    }
}

impl BulkCreateResponse {
    pub fn from_results(results: Vec<BulkItemResult>) -> Self {
        let mut items = Vec::new();
        let mut errors = Vec::new();
        for (index, r) in results.into_iter().enumerate() {
            match r {
                BulkItemResult::Created(m) => items.push(BulkItem {
                    index,
                    id: m.id,
                    status: "created".into(),
                }),
                BulkItemResult::Replayed(m) => items.push(BulkItem {
                    index,
                    id: m.id,
                    status: "replayed".into(),
                }),
                BulkItemResult::Failed(e) => errors.push(BulkError {
                    index,
                    code: e.code().as_str().to_owned(),
                    message: e.to_string(),
                    field: e.field().filter(|f| !f.is_empty()).map(str::to_owned),
                }),
            }
        }
        BulkCreateResponse {
            created: items.len(),
            failed: errors.len(),
            items,
            errors,
        }
    }
}

/// The body of every error response.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>, field: Option<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: message.into(),
                field,
            },
        }
    }
}

impl From<&CoreError> for ErrorBody {
    fn from(e: &CoreError) -> Self {
        ErrorBody::new(
            e.code().as_str(),
            e.to_string(),
            e.field().map(str::to_owned),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse_json, JsonError};

    fn data_field(r: Result<CreateMemoryRequest, JsonError>) -> String {
        match r.unwrap_err() {
            JsonError::Data { field, .. } => field,
            other => panic!("expected a data error, got {other:?}"),
        }
    }

    /// The one-pass parse of a bulk body gives what parsing each item alone gives.
    #[test]
    fn bulk_bodies_parse_alike_in_one_pass_or_item_by_item() {
        let item = |i: usize| {
            serde_json::json!({
                "content": format!("memory {i}"), "memory_type": "fact", "source": "chat",
                "title": "t", "tags": ["a", "b", " a "], "metadata": {"seq": i, "x": [1, {"y": null}]},
                "user_id": "u", "session_id": "s", "valid_from": "2026-01-02T03:04:05Z"
            })
        };
        let valid = serde_json::json!({ "memories": (0..3).map(item).collect::<Vec<_>>() });
        let valid = serde_json::to_vec(&valid).unwrap();
        assert!(serde_json::from_slice::<ObjectOnly<WellFormedBulk>>(&valid).is_ok());
        let too_many = serde_json::json!({ "memories": (0..=engram_core::BULK_MAX).map(item).collect::<Vec<_>>() });
        let bodies: Vec<Vec<u8>> = vec![
            valid,
            serde_json::to_vec(&too_many).unwrap(),
            br#"{"memories": []}"#.to_vec(),
            br#"{"memories": [{"content": "x"}, {"content": "y", "colour": 1}, {"content": "z"}]}"#
                .to_vec(),
            br#"{"memories": [{"content": "x", "memory_type": "banana"}, {"content": ""}]}"#
                .to_vec(),
            br#"{"memories": [{"content": "x"}, 5, "s", null]}"#.to_vec(),
            br#"{"memories": [{"content": "x", "tags": ["ok", 2]}]}"#.to_vec(),
            br#"{"memories": [{"content": "x"}], "colour": 1}"#.to_vec(),
            br#"{"memories": {"content": "x"}}"#.to_vec(),
            br#"{"memories": [{"content": "x"}"#.to_vec(),
            b"[]".to_vec(),
            br#"[[{"content": "x"}]]"#.to_vec(),
            br#"{"memories": [["x"]]}"#.to_vec(),
            br#"{"memories": [{"content": "x"}, ["x", null, null]]}"#.to_vec(),
            br#"{"memories": [{"content": "x", "content": "y"}]}"#.to_vec(),
        ];
        for body in &bodies {
            let one_pass = BulkCreateRequest::parse_items(body);
            let by_item = parse_json::<BulkCreateRequest>(body).map(BulkCreateRequest::into_domain);
            assert_eq!(
                format!("{one_pass:?}"),
                format!("{by_item:?}"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // And what those results are, for a few.
        let items = |b: &[u8]| BulkCreateRequest::parse_items(b).unwrap().unwrap();
        let mixed = items(bodies[3].as_slice());
        assert!(mixed[0].is_ok() && mixed[2].is_ok());
        assert_eq!(mixed[1].as_ref().unwrap_err().field(), Some("colour"));
        assert_eq!(items(bodies[0].as_slice()).len(), 3);
        assert_eq!(
            BulkCreateRequest::parse_items(&bodies[1])
                .unwrap()
                .unwrap_err()
                .field(),
            Some("memories")
        );
        assert!(matches!(
            BulkCreateRequest::parse_items(&bodies[7]),
            Err(JsonError::Data { field, .. }) if field == "colour"
        ));
        assert!(matches!(
            BulkCreateRequest::parse_items(&bodies[9]),
            Err(JsonError::Syntax(_))
        ));
    }

    #[test]
    fn json_errors_name_the_field() {
        assert!(matches!(
            parse_json::<CreateMemoryRequest>(b"{\"content\": "),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_json::<CreateMemoryRequest>(b""),
            Err(JsonError::Syntax(_))
        ));
        assert!(matches!(
            parse_json::<CreateMemoryRequest>(br#"{"content":"x"} {}"#),
            Err(JsonError::Syntax(_))
        ));
        assert!(parse_json::<CreateMemoryRequest>(b" {\"content\":\"x\"} \n").is_ok());
        assert_eq!(
            data_field(parse_json(br#"{"content":"x","colour":1}"#)),
            "colour"
        );
        assert_eq!(data_field(parse_json(br#"{"title":"x"}"#)), "content");
        assert_eq!(
            data_field(parse_json(br#"{"content":"x","tags":"a"}"#)),
            "tags"
        );
        assert_eq!(
            data_field(parse_json(br#"{"content":"x","tags":["a",2]}"#)),
            "tags[1]"
        );
        assert_eq!(data_field(parse_json(br#"{"content":5}"#)), "content");
        assert_eq!(data_field(parse_json(br#"[1]"#)), "");
    }

    #[test]
    fn patch_distinguishes_absent_from_null() {
        let p: UpdateMemoryRequest = parse_json(br#"{"title": null}"#).unwrap();
        assert_eq!(p.title, Some(None));
        assert_eq!(p.content, None);
        let patch = p.into_domain().unwrap();
        assert_eq!(patch.title, Some(None));
        let p: UpdateMemoryRequest = parse_json(br#"{"content": null}"#).unwrap();
        assert_eq!(p.into_domain().unwrap_err().field(), Some("content"));
    }

    #[test]
    fn list_params_validate_each_field() {
        let field = |p: ListParams| p.into_domain().unwrap_err().field().unwrap().to_owned();
        assert_eq!(
            field(ListParams {
                per_page: Some("0".into()),
                ..Default::default()
            }),
            "per_page"
        );
        assert_eq!(
            field(ListParams {
                per_page: Some("101".into()),
                ..Default::default()
            }),
            "per_page"
        );
        assert_eq!(
            field(ListParams {
                page: Some("x".into()),
                ..Default::default()
            }),
            "page"
        );
        assert_eq!(
            field(ListParams {
                sort_by: Some("size".into()),
                ..Default::default()
            }),
            "sort_by"
        );
        assert_eq!(
            field(ListParams {
                sort_order: Some("up".into()),
                ..Default::default()
            }),
            "sort_order"
        );
        assert_eq!(
            field(ListParams {
                created_after: Some("yesterday".into()),
                ..Default::default()
            }),
            "created_after"
        );
        assert_eq!(
            field(ListParams {
                memory_type: Some("poem".into()),
                ..Default::default()
            }),
            "memory_type"
        );
        assert_eq!(
            field(ListParams {
                cursor: Some("zzz".into()),
                ..Default::default()
            }),
            "cursor"
        );
        assert_eq!(
            field(ListParams {
                cursor: Some("zzz".into()),
                page: Some("1".into()),
                ..Default::default()
            }),
            "cursor"
        );
        let q = ListParams {
            tags: Some("a, b,,".into()),
            per_page: Some("100".into()),
            ..Default::default()
        }
        .into_domain()
        .unwrap();
        assert_eq!(q.filter.tags, vec!["a", "b"]);
        assert_eq!(q.per_page, 100);
    }
}
