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
        handlers::healthz,
        handlers::readyz,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "memories", description = "Store, read, list, change and delete memories"),
        (name = "search", description = "Keyword, semantic and hybrid search"),
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
