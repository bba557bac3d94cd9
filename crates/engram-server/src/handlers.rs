//! Handlers: unpack, call the core, map the result. Nothing else.

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_api::{
    BulkCreateRequest, BulkCreateResponse, CreateMemoryRequest, ListParams, ListResponse,
    MemoryResponse, UpdateMemoryRequest,
};
use engram_core::{ErrorCode, TenantId};
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{IdPath, JsonBody, QueryParams};
use crate::{header_value, AppState, REPLAYED_HEADER};

type Result<T> = std::result::Result<T, ApiError>;

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

pub async fn bulk_create(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<BulkCreateRequest>,
) -> Result<Json<BulkCreateResponse>> {
    let key = idempotency_key(&headers)?;
    let items = req.into_domain()?;
    let results = state
        .memories
        .remember_bulk(&tenant, items, key.as_deref())
        .await?;
    Ok(Json(BulkCreateResponse::from_results(results)))
}

pub async fn get_one(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
) -> Result<Json<MemoryResponse>> {
    Ok(Json(state.memories.get(&tenant, id).await?.into()))
}

pub async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    QueryParams(params): QueryParams<ListParams>,
) -> Result<Json<ListResponse>> {
    let query = params.into_domain()?;
    Ok(Json(state.memories.list(&tenant, &query).await?.into()))
}

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

pub async fn delete(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
) -> Result<StatusCode> {
    state.memories.forget(&tenant, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn retry_embedding(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    IdPath(id): IdPath,
) -> Result<Json<MemoryResponse>> {
    Ok(Json(
        state.memories.retry_embedding(&tenant, id).await?.into(),
    ))
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

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
