//! engram's transports. Today: the REST API under `/api/v1` (axum), health and readiness
//! probes, Prometheus metrics, and per-tenant rate limits on `/api/v1` ([`rate_limit`]).
//! Every handler only unpacks the request into the core's types, calls the one core use
//! case, and maps the result; errors are converted to HTTP exactly once, in [`error`]. It
//! chooses no backend: the binary hands it trait objects.

pub mod error;
mod extract;
mod handlers;
pub mod metrics;
pub mod openapi;
pub mod rate_limit;
mod records;
mod scratchpad;
mod tiers;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use engram_core::rate_limit::{Quota, RateLimiter};
use engram_core::{CoreError, KeyService, MemoryService, MemoryStore, SearchService};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;

pub use error::ApiError;

/// Something `/readyz` checks.
#[async_trait]
pub trait ReadinessCheck: Send + Sync + 'static {
    /// The check's name in the `/readyz` body.
    fn name(&self) -> &'static str;
    /// `Err` says what is wrong and how to fix it.
    async fn check(&self) -> Result<(), String>;
    /// Whether a failure makes the server not ready (503). A non-critical failure (e.g. no
    /// embedding model: writes and reads still work) reports `degraded` with 200.
    fn critical(&self) -> bool {
        true
    }
}

/// The store is reachable.
pub struct StoreCheck(pub Arc<dyn MemoryStore>);

#[async_trait]
impl ReadinessCheck for StoreCheck {
    fn name(&self) -> &'static str {
        "store"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.ping().await.map_err(|e| e.to_string())
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub memories: MemoryService,
    pub search: SearchService,
    pub keys: KeyService,
    pub working: engram_core::working::service::WorkingService,
    pub ops: engram_core::ops::OpsService,
    pub context: engram_core::context_service::ContextService,
    pub checks: Arc<Vec<Arc<dyn ReadinessCheck>>>,
    /// The per-tenant budget of `/api/v1` requests; `None`: no limit.
    pub rate_limit: Option<(Arc<dyn RateLimiter>, Quota)>,
    /// Agents' scratchpads; `None`: their routes answer 503 `unavailable`.
    pub scratchpads: Option<engram_core::scratchpad::ScratchpadService>,
}

impl AppState {
    /// The use cases over the given ports. The operational tier keeps critical events it
    /// evicts in the working tier.
    pub fn new(
        memories: Arc<dyn MemoryStore>,
        keys: Arc<dyn engram_core::KeyStore>,
        records: Arc<dyn engram_core::RecordStore>,
        search: SearchService,
        ops: Arc<dyn engram_core::ops::OpsStore>,
        ops_config: engram_core::ops::OpsConfig,
        checks: Vec<Arc<dyn ReadinessCheck>>,
    ) -> AppState {
        let working = engram_core::working::service::WorkingService::new(
            records,
            memories.clone(),
            Some(search.clone()),
        );
        let ops = engram_core::ops::OpsService::new(ops, Arc::new(working.clone()), ops_config);
        AppState {
            memories: MemoryService::new(memories),
            context: engram_core::context_service::ContextService::new(
                ops.clone(),
                working.clone(),
                search.clone(),
            ),
            search,
            keys: KeyService::new(keys),
            working,
            ops,
            checks: Arc::new(checks),
            rate_limit: None,
            scratchpads: None,
        }
    }

    /// Limits every tenant's `/api/v1` requests to `quota`, counted by `limiter` (answers
    /// 429 `rate_limited` beyond it).
    pub fn with_rate_limit(mut self, limiter: Arc<dyn RateLimiter>, quota: Quota) -> AppState {
        self.rate_limit = Some((limiter, quota));
        self
    }

    /// Serves agents' scratchpads (`/agents/{agent}/scratchpad`) from `store`.
    pub fn with_scratchpads(
        mut self,
        store: Arc<dyn engram_core::scratchpad::ScratchpadStore>,
    ) -> AppState {
        self.scratchpads = Some(engram_core::scratchpad::ScratchpadService::new(store));
        self
    }
}

/// HTTP settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes (larger is 413).
    pub body_limit: usize,
    /// Longest a request may take before it is answered 503.
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    let Some(key) = presented else {
        return ApiError::from(CoreError::Unauthorized).into_response();
    };
    match state.keys.authenticate(&key).await {
        Ok(tenant) => {
            req.extensions_mut().insert(tenant);
            next.run(req).await
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id)
}

/// The working tier's routes.
fn working_routes() -> Router<AppState> {
    use axum::routing::put;
    use records::*;
    macro_rules! crud {
        ($r:ident, $m:ident, $coll:literal, $item:literal) => {
            $r.route($coll, post($m::create).get($m::list))
                .route($item, get($m::get).patch($m::update).delete($m::delete))
        };
    }
    let r = Router::new()
        .route("/context", post(tiers::context))
        .route(
            "/agents/{agent}/events",
            post(tiers::record_event).get(tiers::recent_events),
        )
        .route("/agents/{agent}/metrics/{key}", put(tiers::set_metric))
        .route("/agents/{agent}/snapshot", get(tiers::snapshot))
        .route("/decisions/similar", post(similar_decisions))
        .route("/patterns/match", post(match_patterns))
        .route("/patterns/{id}/outcome", post(pattern_outcome))
        .route("/agents/{agent}/scratchpad", get(scratchpad::list))
        .route(
            "/agents/{agent}/scratchpad/{key}",
            put(scratchpad::put)
                .get(scratchpad::get)
                .delete(scratchpad::delete),
        )
        .route("/agents/{agent}/state", get(list_state))
        .route(
            "/agents/{agent}/state/{key}",
            put(put_state).get(get_state).delete(delete_state),
        );
    let r = crud!(r, goals, "/goals", "/goals/{id}");
    let r = crud!(r, tasks, "/tasks", "/tasks/{id}");
    let r = crud!(r, tool_calls, "/tool-calls", "/tool-calls/{id}");
    let r = crud!(r, decisions, "/decisions", "/decisions/{id}");
    let r = crud!(r, patterns, "/patterns", "/patterns/{id}");
    let r = crud!(r, sessions, "/sessions", "/sessions/{id}");
    let r = crud!(
        r,
        messages,
        "/sessions/{session}/messages",
        "/sessions/{session}/messages/{id}"
    );
    crud!(
        r,
        checkpoints,
        "/sessions/{session}/checkpoints",
        "/sessions/{session}/checkpoints/{id}"
    )
}

/// The whole HTTP application.
pub fn router(state: AppState, cfg: &HttpConfig) -> Router {
    rate_limit::describe_metrics();
    let api = Router::new()
        .route("/memories", post(handlers::create).get(handlers::list))
        .route("/memories/bulk", post(handlers::bulk_create))
        .route("/search", post(handlers::search))
        .route(
            "/memories/{id}",
            get(handlers::get_one)
                .patch(handlers::update)
                .delete(handlers::delete),
        )
        .route(
            "/memories/{id}/retry-embedding",
            post(handlers::retry_embedding),
        )
        .merge(working_routes())
        // The last layer runs first: authentication, then the tenant's rate limit.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(cfg.body_limit));

    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::serve))
        .nest("/api/v1", api)
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn(metrics::track))
        .with_state(state)
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(
                            DefaultOnResponse::new()
                                .level(Level::INFO)
                                .latency_unit(LatencyUnit::Micros),
                        ),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(error::panic_response))
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    cfg.request_timeout,
                )),
        )
}

/// Header that marks a create answered from an earlier request with the same
/// `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}
