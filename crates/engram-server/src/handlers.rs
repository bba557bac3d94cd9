//! Handlers: unpack, call the core, map the result. Nothing else.

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_api::{
    BulkCreateRequest, BulkCreateResponse, CreateMemoryRequest, ErrorBody, ListParams,
    ListResponse, MemoryResponse, SearchBody, SearchResponse, UpdateMemoryRequest,
};
use engram_core::{ErrorCode, TenantId};
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{json_error, IdPath, JsonBody, JsonBytes, QueryParams};
use crate::{header_value, AppState, REPLAYED_HEADER};

type Result<T> = std::result::Result<T, ApiError>;

/// Errors every `/api/v1` route may answer (for the OpenAPI document).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum KeyAndFieldErrors {
    /// Missing or unknown API key
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// A field is invalid; `field` names it
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// The tenant's rate limit is exhausted
    #[response(status = 429)]
    RateLimited(#[ref_response] RateLimited),
}

/// 429 `rate_limited`: the tenant's rate limit is exhausted (one response component, so
/// the OpenAPI document names it once).
#[derive(utoipa::ToResponse)]
#[response(
    description = "The tenant's rate limit is exhausted (`rate_limited`): retry after `Retry-After` seconds. With rate limits on, every `/api/v1` answer carries the `RateLimit-*` headers.",
    headers(
        ("Retry-After" = u64, description = "Seconds to wait before retrying"),
        ("RateLimit-Limit" = u32, description = "Requests allowed at once (the burst)"),
        ("RateLimit-Remaining" = u32, description = "Requests still allowed right now"),
        ("RateLimit-Reset" = u64, description = "Seconds until the whole burst is available again"),
    )
)]
#[allow(dead_code)]
pub struct RateLimited(ErrorBody);

/// Errors of routes that read a JSON body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// Malformed JSON
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// Body larger than `server.body_limit_bytes`
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Not JSON
    #[response(status = 415)]
    NotJson(ErrorBody),
}

/// The error of routes that name a memory.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum NotFoundError {
    /// No such memory for this tenant
    #[response(status = 404)]
    NotFound(ErrorBody),
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_owned())).map_err(|_| {
            ApiError::new(
                ErrorCode::ValidationFailed,
                "must be visible ASCII",
                Some("Idempotency-Key".into()),
            )
        }),
    }
}

/// Store a memory.
#[utoipa::path(post, path = "/api/v1/memories", tag = "memories",
    request_body = CreateMemoryRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST return the original memory")),
    responses(
        (status = 201, description = "Stored (or replayed: header `Idempotent-Replayed: true`)", body = MemoryResponse),
        KeyAndFieldErrors,
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        BodyErrors,
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<CreateMemoryRequest>,
) -> Result<Response> {
    let key = idempotency_key(&headers)?;
    let new = req.into_domain()?;
    let (memory, replayed) = state
        .memories
        .remember(&tenant, new, key.as_deref())
        .await?;
    let location = format!("/api/v1/memories/{}", memory.id);
    let mut resp = (StatusCode::CREATED, Json(MemoryResponse::from(memory))).into_response();
    resp.headers_mut()
        .insert(header::LOCATION, header_value(&location));
    if replayed {
        resp.headers_mut()
            .insert(REPLAYED_HEADER, header::HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Store up to 100 memories; valid items are stored even when others fail.
#[utoipa::path(post, path = "/api/v1/memories/bulk", tag = "memories",
    request_body = BulkCreateRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Item i uses `<key>#<i>`")),
    responses(
        (status = 200, description = "What was stored and what failed, by index", body = BulkCreateResponse),
        KeyAndFieldErrors,
        BodyErrors,
    ),
    security(("bearer" = [])))]
pub async fn bulk_create(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<Json<BulkCreateResponse>> {
    let items = BulkCreateRequest::parse_items(&body).map_err(json_error)?;
    let key = idempotency_key(&headers)?;
    let items = items?;
    let results = state
        .memories
        .remember_bulk(&tenant, items, key.as_deref())
        .await?;
    Ok(Json(BulkCreateResponse::from_results(results)))
}

/// Search memories: keyword (BM25), semantic (nearest vectors) or hybrid (both, fused).
#[utoipa::path(post, path = "/api/v1/search", tag = "search",
    request_body = SearchBody,
    responses(
        (status = 200, description = "Hits, best first", body = SearchResponse),
        KeyAndFieldErrors,
        BodyErrors,
        (status = 503, description = "Semantic search asked for while no embedder or no vectors are available", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn search(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    JsonBody(req): JsonBody<SearchBody>,
) -> Result<Json<SearchResponse>> {
    let req = req.into_domain()?;
    let result = state.search.search(&tenant, &req).await?;
    Ok(Json(SearchResponse::from(result)))
}

/// Read one memory (records the read in `accessed_at`).
#[utoipa::path(get, path = "/api/v1/memories/{id}", tag = "memories",
    params(("id" = uuid::Uuid, Path, description = "The memory's id")),
    responses(
        (status = 200, body = MemoryResponse),
        KeyAndFieldErrors,
        NotFoundError,
    ),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
) -> Result<Json<MemoryResponse>> {
    Ok(Json(state.memories.get(&tenant, id).await?.into()))
}

/// List memories with filters, sorting and pagination.
#[utoipa::path(get, path = "/api/v1/memories", tag = "memories",
    params(ListParams),
    responses(
        (status = 200, body = ListResponse),
        KeyAndFieldErrors,
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<ListResponse>> {
    let query = params.into_domain()?;
    Ok(Json(state.memories.list(&tenant, &query).await?.into()))
}

/// Change only the given fields; `null` clears a nullable field.
#[utoipa::path(patch, path = "/api/v1/memories/{id}", tag = "memories",
    params(("id" = uuid::Uuid, Path, description = "The memory's id")),
    request_body = UpdateMemoryRequest,
    responses(
        (status = 200, body = MemoryResponse),
        KeyAndFieldErrors,
        BodyErrors,
        NotFoundError,
    ),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
    JsonBody(req): JsonBody<UpdateMemoryRequest>,
) -> Result<Json<MemoryResponse>> {
    let patch = req.into_domain()?;
    Ok(Json(
        state.memories.update(&tenant, id, patch).await?.into(),
    ))
}

/// Soft-delete a memory.
#[utoipa::path(delete, path = "/api/v1/memories/{id}", tag = "memories",
    params(("id" = uuid::Uuid, Path, description = "The memory's id")),
    responses(
        (status = 204, description = "Deleted"),
        KeyAndFieldErrors,
        NotFoundError,
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    state.memories.forget(&tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Put a memory's embedding back in the queue.
#[utoipa::path(post, path = "/api/v1/memories/{id}/retry-embedding", tag = "memories",
    params(("id" = uuid::Uuid, Path, description = "The memory's id")),
    responses(
        (status = 200, body = MemoryResponse),
        KeyAndFieldErrors,
        NotFoundError,
    ),
    security(("bearer" = [])))]
pub async fn retry_embedding(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
) -> Result<Json<MemoryResponse>> {
    Ok(Json(
        state.memories.retry_embedding(&tenant, id).await?.into(),
    ))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process is alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: `ready`, `degraded` (200: a non-critical check such as the embedder fails)
/// or `not_ready` (503), with each check's error.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready or degraded"),
    (status = 503, description = "Not ready"),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let (mut ready, mut degraded) = (true, false);
    let mut checks = serde_json::Map::new();
    for c in state.checks.iter() {
        let entry = match c.check().await {
            Ok(()) => json!({ "ok": true }),
            Err(e) => {
                if c.critical() {
                    ready = false;
                } else {
                    degraded = true;
                }
                json!({ "ok": false, "critical": c.critical(), "error": e })
            }
        };
        checks.insert(c.name().to_owned(), entry);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = match (ready, degraded) {
        (false, _) => "not_ready",
        (true, true) => "degraded",
        (true, false) => "ready",
    };
    (status, Json(json!({ "status": word, "checks": checks }))).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; the API lives under /api/v1",
        None,
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not take that method",
        None,
    )
}
