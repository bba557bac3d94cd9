//! Scratchpads: an agent's ephemeral notes with a TTL (`/agents/{agent}/scratchpad`).

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_api::{
    ErrorBody, ScratchpadEntryResponse, ScratchpadListResponse, ScratchpadPutRequest,
};
use engram_core::scratchpad::ScratchpadService;
use engram_core::{CoreError, ErrorCode, TenantId};

use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::handlers::{BodyErrors, KeyAndFieldErrors};
use crate::AppState;

type Result<T> = std::result::Result<T, Error>;

/// What a scratchpad route fails with: a core error, or no store at all.
pub enum Error {
    Core(CoreError),
    /// 503 with the reason (the generic 5xx message would hide it).
    NotConfigured,
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Core(e)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        match self {
            Error::Core(e) => ApiError::from(e).into_response(),
            Error::NotConfigured => {
                let body = ErrorBody::new(
                    ErrorCode::Unavailable.as_str(),
                    "scratchpads are not configured on this server (no scratchpad store was \
                     attached; `engram serve` always attaches one)",
                    None,
                );
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
        }
    }
}

fn service(state: &AppState) -> Result<&ScratchpadService> {
    state.scratchpads.as_ref().ok_or(Error::NotConfigured)
}

/// Write one of the agent's notes; it vanishes `ttl_secs` (default 3600) after its last
/// write.
#[utoipa::path(put, path = "/api/v1/agents/{agent}/scratchpad/{key}", tag = "scratchpad",
    params(("agent" = String, Path), ("key" = String, Path)),
    request_body = ScratchpadPutRequest,
    responses(
        (status = 200, body = ScratchpadEntryResponse),
        KeyAndFieldErrors,
        BodyErrors,
        (status = 503, description = "No scratchpad store, or it cannot be reached", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
    JsonBody(req): JsonBody<ScratchpadPutRequest>,
) -> Result<Json<ScratchpadEntryResponse>> {
    let svc = service(&state)?;
    let (value, ttl) = req.into_domain()?;
    let entry = svc.put(&tenant, &agent, &key, value, ttl).await?;
    Ok(Json(entry.into()))
}

/// One of the agent's notes, while it lives.
#[utoipa::path(get, path = "/api/v1/agents/{agent}/scratchpad/{key}", tag = "scratchpad",
    params(("agent" = String, Path), ("key" = String, Path)),
    responses(
        (status = 200, body = ScratchpadEntryResponse),
        (status = 404, description = "No live entry under this key", body = ErrorBody),
        KeyAndFieldErrors,
        (status = 503, description = "No scratchpad store, or it cannot be reached", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
) -> Result<Json<ScratchpadEntryResponse>> {
    let entry = service(&state)?.get(&tenant, &agent, &key).await?;
    Ok(Json(entry.into()))
}

/// The agent's live notes, sorted by key (at most 1000).
#[utoipa::path(get, path = "/api/v1/agents/{agent}/scratchpad", tag = "scratchpad",
    params(("agent" = String, Path)),
    responses(
        (status = 200, body = ScratchpadListResponse),
        KeyAndFieldErrors,
        (status = 503, description = "No scratchpad store, or it cannot be reached", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path(agent): Path<String>,
) -> Result<Json<ScratchpadListResponse>> {
    let entries = service(&state)?.list(&tenant, &agent).await?;
    Ok(Json(ScratchpadListResponse {
        entries: entries.into_iter().map(Into::into).collect(),
    }))
}

/// Delete one of the agent's notes.
#[utoipa::path(delete, path = "/api/v1/agents/{agent}/scratchpad/{key}", tag = "scratchpad",
    params(("agent" = String, Path), ("key" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No live entry under this key", body = ErrorBody),
        KeyAndFieldErrors,
        (status = 503, description = "No scratchpad store, or it cannot be reached", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    service(&state)?.delete(&tenant, &agent, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
