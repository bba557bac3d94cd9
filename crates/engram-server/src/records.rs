//! The working tier's routes: create, list, read, update and delete for every record kind,
//! sessions' messages and checkpoints, agent state by key, and the look-ups over decisions
//! and patterns. Each handler unpacks the request and calls `WorkingService`.

use axum::extract::{Extension, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_api::{
    record_response, ErrorBody, PatternOutcomeRequest, RecordListParams, RecordListResponse,
    RecordResponse, SimilarRequest, SimilarResponse, StateValue,
};
use engram_core::working::{RecordId, RecordKind};
use engram_core::TenantId;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::handlers::{BodyErrors, KeyAndFieldErrors, NotFoundError};
use crate::{header_value, AppState};

type Result<T> = std::result::Result<T, ApiError>;

/// A record's fields: the kind's own (see docs/api.md) and the scope fields `user_id`,
/// `agent_id`, `project`, `domain`, `session_id`. Unknown fields are rejected; in an
/// update, `null` clears an optional field.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct RecordFields(Map<String, Value>);

fn parse_id(raw: &str, field: &str) -> Result<RecordId> {
    RecordId::parse(raw, field).map_err(ApiError::from)
}

fn created(location: String, body: RecordResponse) -> Response {
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, header_value(&location));
    resp
}

async fn create_kind(
    kind: RecordKind,
    state: AppState,
    tenant: TenantId,
    body: Map<String, Value>,
    collection: &str,
) -> Result<Response> {
    let r = state.working.create(&tenant, kind, body).await?;
    Ok(created(
        format!("{collection}/{}", r.id),
        record_response(&r),
    ))
}

async fn list_kind(
    kind: RecordKind,
    state: AppState,
    tenant: TenantId,
    params: RecordListParams,
) -> Result<Json<RecordListResponse>> {
    let q = params.into_query(kind, false)?;
    let page = state.working.list(&tenant, &q).await?;
    Ok(Json(RecordListResponse::new(page, q.limit)))
}

async fn get_kind(
    kind: RecordKind,
    state: AppState,
    tenant: TenantId,
    id: String,
) -> Result<Json<RecordResponse>> {
    let id = parse_id(&id, "id")?;
    Ok(Json(record_response(
        &state.working.get(&tenant, kind, id).await?,
    )))
}

async fn update_kind(
    kind: RecordKind,
    state: AppState,
    tenant: TenantId,
    id: String,
    body: Map<String, Value>,
) -> Result<Json<RecordResponse>> {
    let id = parse_id(&id, "id")?;
    let r = state.working.update(&tenant, kind, id, body).await?;
    Ok(Json(record_response(&r)))
}

async fn delete_kind(
    kind: RecordKind,
    state: AppState,
    tenant: TenantId,
    id: String,
) -> Result<StatusCode> {
    let id = parse_id(&id, "id")?;
    state.working.delete(&tenant, kind, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The five routes of a top-level record kind, each documented for OpenAPI.
macro_rules! record_crud {
    ($module:ident, $kind:expr, $tag:tt, $collection:tt, $item:tt, $noun:tt) => {
        pub mod $module {
            use super::*;

            #[doc = concat!("Create a ", $noun, ".")]
            #[utoipa::path(post, path = $collection, tag = $tag, operation_id = concat!("create_", stringify!($module)),
                request_body = RecordFields,
                responses((status = 201, body = RecordResponse), KeyAndFieldErrors, BodyErrors),
                security(("bearer" = [])))]
            pub async fn create(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                JsonBody(body): JsonBody<Map<String, Value>>,
            ) -> Result<Response> {
                create_kind($kind, state, tenant, body, $collection).await
            }

            #[doc = concat!("List ", $noun, "s, newest first, with filters and a cursor.")]
            #[utoipa::path(get, path = $collection, tag = $tag, operation_id = concat!("list_", stringify!($module)),
                params(RecordListParams),
                responses((status = 200, body = RecordListResponse), KeyAndFieldErrors),
                security(("bearer" = [])))]
            pub async fn list(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                QueryParams(params): QueryParams<RecordListParams>,
            ) -> Result<Json<RecordListResponse>> {
                list_kind($kind, state, tenant, params).await
            }

            #[doc = concat!("Read one ", $noun, ".")]
            #[utoipa::path(get, path = $item, tag = $tag, operation_id = concat!("get_", stringify!($module)),
                params(("id" = uuid::Uuid, Path)),
                responses((status = 200, body = RecordResponse), KeyAndFieldErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn get(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path(id): Path<String>,
            ) -> Result<Json<RecordResponse>> {
                get_kind($kind, state, tenant, id).await
            }

            #[doc = concat!("Change only the given fields of a ", $noun, "; `null` clears one.")]
            #[utoipa::path(patch, path = $item, tag = $tag, operation_id = concat!("update_", stringify!($module)),
                params(("id" = uuid::Uuid, Path)),
                request_body = RecordFields,
                responses((status = 200, body = RecordResponse), KeyAndFieldErrors, BodyErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn update(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path(id): Path<String>,
                JsonBody(body): JsonBody<Map<String, Value>>,
            ) -> Result<Json<RecordResponse>> {
                update_kind($kind, state, tenant, id, body).await
            }

            #[doc = concat!("Delete a ", $noun, " (and the memory that mirrors it, if any).")]
            #[utoipa::path(delete, path = $item, tag = $tag, operation_id = concat!("delete_", stringify!($module)),
                params(("id" = uuid::Uuid, Path)),
                responses((status = 204, description = "Deleted"), KeyAndFieldErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn delete(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path(id): Path<String>,
            ) -> Result<StatusCode> {
                delete_kind($kind, state, tenant, id).await
            }
        }
    };
}

record_crud!(
    goals,
    RecordKind::Goal,
    "working",
    "/api/v1/goals",
    "/api/v1/goals/{id}",
    "goal"
);
record_crud!(
    tasks,
    RecordKind::Task,
    "working",
    "/api/v1/tasks",
    "/api/v1/tasks/{id}",
    "task"
);
record_crud!(
    tool_calls,
    RecordKind::ToolCall,
    "working",
    "/api/v1/tool-calls",
    "/api/v1/tool-calls/{id}",
    "tool call"
);
record_crud!(
    decisions,
    RecordKind::Decision,
    "working",
    "/api/v1/decisions",
    "/api/v1/decisions/{id}",
    "decision"
);
record_crud!(
    patterns,
    RecordKind::Pattern,
    "working",
    "/api/v1/patterns",
    "/api/v1/patterns/{id}",
    "pattern"
);
record_crud!(
    sessions,
    RecordKind::Session,
    "working",
    "/api/v1/sessions",
    "/api/v1/sessions/{id}",
    "session"
);

/// The routes of a session's messages or checkpoints.
macro_rules! session_children {
    ($module:ident, $kind:expr, $collection:tt, $item:tt, $noun:tt) => {
        pub mod $module {
            use super::*;

            #[doc = concat!("Add a ", $noun, " to a session; it takes the session's scope.")]
            #[utoipa::path(post, path = $collection, tag = "working", operation_id = concat!("create_", stringify!($module)),
                params(("session" = uuid::Uuid, Path)),
                request_body = RecordFields,
                responses((status = 201, body = RecordResponse), KeyAndFieldErrors, BodyErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn create(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path(session): Path<String>,
                JsonBody(body): JsonBody<Map<String, Value>>,
            ) -> Result<Response> {
                let sid = parse_id(&session, "session")?;
                let r = state.working.add_to_session(&tenant, sid, $kind, body).await?;
                let base = format!("/api/v1/sessions/{sid}/{}", stringify!($module));
                Ok(created(format!("{base}/{}", r.id), record_response(&r)))
            }

            #[doc = concat!("A session's ", $noun, "s, oldest first.")]
            #[utoipa::path(get, path = $collection, tag = "working", operation_id = concat!("list_", stringify!($module)),
                params(("session" = uuid::Uuid, Path), RecordListParams),
                responses((status = 200, body = RecordListResponse), KeyAndFieldErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn list(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path(session): Path<String>,
                QueryParams(params): QueryParams<RecordListParams>,
            ) -> Result<Json<RecordListResponse>> {
                let sid = parse_id(&session, "session")?;
                state.working.get(&tenant, RecordKind::Session, sid).await?;
                let mut q = params.into_query($kind, true)?;
                q.parent_id = Some(sid);
                let page = state.working.list(&tenant, &q).await?;
                Ok(Json(RecordListResponse::new(page, q.limit)))
            }

            #[doc = concat!("Read one ", $noun, " of a session.")]
            #[utoipa::path(get, path = $item, tag = "working", operation_id = concat!("get_", stringify!($module)),
                params(("session" = uuid::Uuid, Path), ("id" = uuid::Uuid, Path)),
                responses((status = 200, body = RecordResponse), KeyAndFieldErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn get(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path((session, id)): Path<(String, String)>,
            ) -> Result<Json<RecordResponse>> {
                let (sid, id) = (parse_id(&session, "session")?, parse_id(&id, "id")?);
                let r = state.working.get_in_session(&tenant, sid, $kind, id).await?;
                Ok(Json(record_response(&r)))
            }

            #[doc = concat!("Change only the given fields of a ", $noun, ".")]
            #[utoipa::path(patch, path = $item, tag = "working", operation_id = concat!("update_", stringify!($module)),
                params(("session" = uuid::Uuid, Path), ("id" = uuid::Uuid, Path)),
                request_body = RecordFields,
                responses((status = 200, body = RecordResponse), KeyAndFieldErrors, BodyErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn update(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path((session, id)): Path<(String, String)>,
                JsonBody(body): JsonBody<Map<String, Value>>,
            ) -> Result<Json<RecordResponse>> {
                let (sid, id) = (parse_id(&session, "session")?, parse_id(&id, "id")?);
                state.working.get_in_session(&tenant, sid, $kind, id).await?;
                let r = state.working.update(&tenant, $kind, id, body).await?;
                Ok(Json(record_response(&r)))
            }

            #[doc = concat!("Delete a ", $noun, " of a session.")]
            #[utoipa::path(delete, path = $item, tag = "working", operation_id = concat!("delete_", stringify!($module)),
                params(("session" = uuid::Uuid, Path), ("id" = uuid::Uuid, Path)),
                responses((status = 204, description = "Deleted"), KeyAndFieldErrors, NotFoundError),
                security(("bearer" = [])))]
            pub async fn delete(
                State(state): State<AppState>,
                Extension(tenant): Extension<TenantId>,
                Path((session, id)): Path<(String, String)>,
            ) -> Result<StatusCode> {
                let (sid, id) = (parse_id(&session, "session")?, parse_id(&id, "id")?);
                state.working.get_in_session(&tenant, sid, $kind, id).await?;
                state.working.delete(&tenant, $kind, id).await?;
                Ok(StatusCode::NO_CONTENT)
            }
        }
    };
}

session_children!(
    messages,
    RecordKind::Message,
    "/api/v1/sessions/{session}/messages",
    "/api/v1/sessions/{session}/messages/{id}",
    "message"
);
session_children!(
    checkpoints,
    RecordKind::Checkpoint,
    "/api/v1/sessions/{session}/checkpoints",
    "/api/v1/sessions/{session}/checkpoints/{id}",
    "checkpoint"
);

/// An agent's state entries, by key.
#[utoipa::path(get, path = "/api/v1/agents/{agent}/state", tag = "working",
    params(("agent" = String, Path), RecordListParams),
    responses((status = 200, body = RecordListResponse), KeyAndFieldErrors),
    security(("bearer" = [])))]
pub async fn list_state(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path(agent): Path<String>,
    QueryParams(params): QueryParams<RecordListParams>,
) -> Result<Json<RecordListResponse>> {
    if params.agent_id.is_some() {
        return Err(ApiError::from(engram_core::CoreError::validation(
            "agent_id",
            "the agent is in the path",
        )));
    }
    let mut q = params.into_query(RecordKind::AgentState, true)?;
    q.agent_id = Some(agent);
    let page = state.working.list(&tenant, &q).await?;
    Ok(Json(RecordListResponse::new(page, q.limit)))
}

/// Set an agent's state entry (created or replaced).
#[utoipa::path(put, path = "/api/v1/agents/{agent}/state/{key}", tag = "working",
    params(("agent" = String, Path), ("key" = String, Path)),
    request_body = StateValue,
    responses((status = 200, body = RecordResponse), KeyAndFieldErrors, BodyErrors),
    security(("bearer" = [])))]
pub async fn put_state(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
    JsonBody(body): JsonBody<StateValue>,
) -> Result<Json<RecordResponse>> {
    let r = state
        .working
        .put_state(&tenant, &agent, &key, body.value)
        .await?;
    Ok(Json(record_response(&r)))
}

/// Read an agent's state entry.
#[utoipa::path(get, path = "/api/v1/agents/{agent}/state/{key}", tag = "working",
    params(("agent" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = RecordResponse), KeyAndFieldErrors, NotFoundError),
    security(("bearer" = [])))]
pub async fn get_state(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
) -> Result<Json<RecordResponse>> {
    let r = state.working.get_state(&tenant, &agent, &key).await?;
    Ok(Json(record_response(&r)))
}

/// Delete an agent's state entry.
#[utoipa::path(delete, path = "/api/v1/agents/{agent}/state/{key}", tag = "working",
    params(("agent" = String, Path), ("key" = String, Path)),
    responses((status = 204, description = "Deleted"), KeyAndFieldErrors, NotFoundError),
    security(("bearer" = [])))]
pub async fn delete_state(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    state.working.delete_state(&tenant, &agent, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Decisions made in situations like this one (hybrid search over decisions).
#[utoipa::path(post, path = "/api/v1/decisions/similar", tag = "working",
    request_body = SimilarRequest,
    responses((status = 200, body = SimilarResponse), KeyAndFieldErrors, BodyErrors,
        (status = 503, description = "No search configured", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn similar_decisions(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    JsonBody(req): JsonBody<SimilarRequest>,
) -> Result<Json<SimilarResponse>> {
    similar(state, tenant, RecordKind::Decision, req).await
}

async fn similar(
    state: AppState,
    tenant: TenantId,
    kind: RecordKind,
    req: SimilarRequest,
) -> Result<Json<SimilarResponse>> {
    let hits = state
        .working
        .find_similar(&tenant, kind, &req.text, req.k, req.scope())
        .await?;
    Ok(Json(SimilarResponse::new(hits)))
}

/// Patterns whose trigger matches this situation (hybrid search over patterns).
#[utoipa::path(post, path = "/api/v1/patterns/match", tag = "working",
    request_body = SimilarRequest,
    responses((status = 200, body = SimilarResponse), KeyAndFieldErrors, BodyErrors,
        (status = 503, description = "No search configured", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn match_patterns(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    JsonBody(req): JsonBody<SimilarRequest>,
) -> Result<Json<SimilarResponse>> {
    similar(state, tenant, RecordKind::Pattern, req).await
}

/// Count one success or failure of a pattern; its `confidence` follows.
#[utoipa::path(post, path = "/api/v1/patterns/{id}/outcome", tag = "working",
    params(("id" = uuid::Uuid, Path)),
    request_body = PatternOutcomeRequest,
    responses((status = 200, body = RecordResponse), KeyAndFieldErrors, BodyErrors, NotFoundError),
    security(("bearer" = [])))]
pub async fn pattern_outcome(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PatternOutcomeRequest>,
) -> Result<Json<RecordResponse>> {
    let id = parse_id(&id, "id")?;
    let r = state
        .working
        .record_pattern_outcome(&tenant, id, req.success)
        .await?;
    Ok(Json(record_response(&r)))
}
