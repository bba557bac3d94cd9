//! The operational tier's routes (events, metrics, snapshot) and context assembly.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::Json;
use engram_api::{
    record_response, ContextBody, ContextResponse, EventRequest, EventResponse, EventsParams,
    EventsResponse, MetricRequest, MetricResponse, SnapshotResponse,
};
use engram_core::TenantId;

use crate::error::ApiError;
use crate::extract::{JsonBody, QueryParams};
use crate::handlers::{BodyErrors, KeyAndFieldErrors};
use crate::AppState;

type Result<T> = std::result::Result<T, ApiError>;

/// Record an event in the agent's ring (newest kept; a critical event the ring evicts is
/// kept in the working tier first).
#[utoipa::path(post, path = "/api/v1/agents/{agent}/events", tag = "operational",
    params(("agent" = String, Path)),
    request_body = EventRequest,
    responses((status = 201, body = EventResponse), KeyAndFieldErrors, BodyErrors),
    security(("bearer" = [])))]
pub async fn record_event(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path(agent): Path<String>,
    JsonBody(req): JsonBody<EventRequest>,
) -> Result<(StatusCode, Json<EventResponse>)> {
    let event = state
        .ops
        .record(&tenant, &agent, req.into_domain()?)
        .await?;
    Ok((StatusCode::CREATED, Json(event.into())))
}

/// The agent's newest events, newest first.
#[utoipa::path(get, path = "/api/v1/agents/{agent}/events", tag = "operational",
    params(("agent" = String, Path), EventsParams),
    responses((status = 200, body = EventsResponse), KeyAndFieldErrors),
    security(("bearer" = [])))]
pub async fn recent_events(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path(agent): Path<String>,
    QueryParams(params): QueryParams<EventsParams>,
) -> Result<Json<EventsResponse>> {
    let events = state
        .ops
        .recent(&tenant, &agent, params.count()?, params.category.as_deref())
        .await?;
    Ok(Json(EventsResponse {
        events: events.into_iter().map(Into::into).collect(),
    }))
}

/// Set the latest value of one of the agent's metrics.
#[utoipa::path(put, path = "/api/v1/agents/{agent}/metrics/{key}", tag = "operational",
    params(("agent" = String, Path), ("key" = String, Path)),
    request_body = MetricRequest,
    responses((status = 200, body = MetricResponse), KeyAndFieldErrors, BodyErrors),
    security(("bearer" = [])))]
pub async fn set_metric(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path((agent, key)): Path<(String, String)>,
    JsonBody(req): JsonBody<MetricRequest>,
) -> Result<Json<MetricResponse>> {
    let m = state
        .ops
        .set_metric(&tenant, &agent, &key, req.value)
        .await?;
    Ok(Json(m.into()))
}

/// What the agent is doing now: metrics, active tasks, recent critical events.
#[utoipa::path(get, path = "/api/v1/agents/{agent}/snapshot", tag = "operational",
    params(("agent" = String, Path)),
    responses((status = 200, body = SnapshotResponse), KeyAndFieldErrors),
    security(("bearer" = [])))]
pub async fn snapshot(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    Path(agent): Path<String>,
) -> Result<Json<SnapshotResponse>> {
    let s = state.context.snapshot(&tenant, &agent).await?;
    Ok(Json(SnapshotResponse {
        agent: s.ops.agent,
        metrics: s
            .ops
            .metrics
            .into_iter()
            .map(|(k, v)| (k, v.into()))
            .collect(),
        active_tasks: s.active_tasks.iter().map(record_response).collect(),
        recent_critical: s.ops.recent_critical.into_iter().map(Into::into).collect(),
    }))
}

/// Assemble a prompt-ready context for a task from every tier, within a token budget.
#[utoipa::path(post, path = "/api/v1/context", tag = "context",
    request_body = ContextBody,
    responses((status = 200, body = ContextResponse), KeyAndFieldErrors, BodyErrors),
    security(("bearer" = [])))]
pub async fn context(
    State(state): State<AppState>,
    Extension(tenant): Extension<TenantId>,
    JsonBody(req): JsonBody<ContextBody>,
) -> Result<Json<ContextResponse>> {
    let req = req.into_domain()?;
    Ok(Json(state.context.assemble(&tenant, &req).await?.into()))
}
