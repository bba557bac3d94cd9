//! The OpenAPI document of the REST API, generated from the handlers and wire types, served
//! at `GET /openapi.json` and committed as `docs/openapi.json` (a test keeps it current).

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::handlers;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "engram",
        description = "Long-term memory for AI agents. Every /api/v1 request needs `Authorization: Bearer <key>`; errors are `{\"error\": {\"code\", \"message\", \"field\"}}`."
    ),
    paths(
        handlers::create,
        handlers::list,
        handlers::bulk_create,
        handlers::get_one,
        handlers::update,
        handlers::delete,
        handlers::retry_embedding,
        handlers::search,
        crate::records::goals::create,
        crate::records::goals::list,
        crate::records::goals::get,
        crate::records::goals::update,
        crate::records::goals::delete,
        crate::records::tasks::create,
        crate::records::tasks::list,
        crate::records::tasks::get,
        crate::records::tasks::update,
        crate::records::tasks::delete,
        crate::records::tool_calls::create,
        crate::records::tool_calls::list,
        crate::records::tool_calls::get,
        crate::records::tool_calls::update,
        crate::records::tool_calls::delete,
        crate::records::decisions::create,
        crate::records::decisions::list,
        crate::records::decisions::get,
        crate::records::decisions::update,
        crate::records::decisions::delete,
        crate::records::patterns::create,
        crate::records::patterns::list,
        crate::records::patterns::get,
        crate::records::patterns::update,
        crate::records::patterns::delete,
        crate::records::sessions::create,
        crate::records::sessions::list,
        crate::records::sessions::get,
        crate::records::sessions::update,
        crate::records::sessions::delete,
        crate::records::messages::create,
        crate::records::messages::list,
        crate::records::messages::get,
        crate::records::messages::update,
        crate::records::messages::delete,
        crate::records::checkpoints::create,
        crate::records::checkpoints::list,
        crate::records::checkpoints::get,
        crate::records::checkpoints::update,
        crate::records::checkpoints::delete,
        crate::records::list_state,
        crate::records::put_state,
        crate::records::get_state,
        crate::records::delete_state,
        crate::records::similar_decisions,
        crate::records::match_patterns,
        crate::records::pattern_outcome,
        crate::scratchpad::put,
        crate::scratchpad::get,
        crate::scratchpad::list,
        crate::scratchpad::delete,
        crate::tiers::record_event,
        crate::tiers::recent_events,
        crate::tiers::set_metric,
        crate::tiers::snapshot,
        crate::tiers::context,
        handlers::healthz,
        handlers::readyz,
    ),
    components(responses(handlers::RateLimited)),
    modifiers(&BearerAuth),
    tags(
        (name = "memories", description = "Store, read, list, change and delete memories"),
        (name = "search", description = "Keyword, semantic and hybrid search"),
        (name = "working", description = "The working tier: goals, tasks, tool calls, decisions, patterns, agent state, sessions with messages and checkpoints"),
        (name = "scratchpad", description = "Agents' scratchpads: ephemeral key/value notes that expire after their TTL"),
        (name = "operational", description = "The operational tier: an agent's recent events, metrics and snapshot"),
        (name = "context", description = "Prompt-ready context from every tier within a token budget"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as pretty JSON, with engram's version.
pub fn json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json().unwrap_or_default()
}

/// `GET /openapi.json`
pub async fn serve() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
        .into_response()
}
