//! Extractors that turn request parts into wire DTOs, with errors in engram's format.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use engram_api::{parse_json, JsonError};
use engram_core::{ErrorCode, MemoryId};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON object body parsed into `T`: 400 when it is not JSON, 413 when it is too large,
/// 415 when it claims another media type, 422 naming the field when it has the wrong shape.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBytes(bytes) = JsonBytes::from_request(req, state).await?;
        parse_json::<T>(&bytes).map(JsonBody).map_err(json_error)
    }
}

/// The bytes of a body that claims to be JSON (or claims nothing), for a handler that
/// parses them itself: 413 when it is too large, 415 when it claims another media type.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("send Content-Type: application/json (got `{essence}`)"),
                    None,
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than the server's limit (server.body_limit_bytes)",
                    None,
                )
            } else {
                ApiError::new(
                    ErrorCode::InvalidJson,
                    format!("could not read the body: {rej}"),
                    None,
                )
            }
        })?;
        Ok(JsonBytes(bytes))
    }
}

/// A body that is not the JSON asked for, as engram's error: 400 when it is not JSON, 422
/// naming the field when it has the wrong shape.
pub fn json_error(e: JsonError) -> ApiError {
    match e {
        JsonError::Syntax(m) => ApiError::new(ErrorCode::InvalidJson, m, None),
        JsonError::Data { field, message } => ApiError::new(
            ErrorCode::ValidationFailed,
            message,
            (!field.is_empty()).then_some(field),
        ),
    }
}

/// The query string parsed into `T`, unknown parameters rejected with their name.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<T>(q)
            .map(QueryParams)
            .map_err(|e| {
                let msg = e.to_string();
                let field = msg.find('`').and_then(|s| {
                    msg[s + 1..]
                        .find('`')
                        .map(|l| msg[s + 1..s + 1 + l].to_owned())
                });
                ApiError::new(
                    ErrorCode::ValidationFailed,
                    format!("bad query string: {msg}"),
                    field,
                )
            })
    }
}

/// The `{id}` path segment, which must be a UUID.
pub struct IdPath(pub MemoryId);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::ValidationFailed,
                        e.to_string(),
                        Some("id".into()),
                    )
                })?;
        MemoryId::parse(&raw, "id")
            .map(IdPath)
            .map_err(ApiError::from)
    }
}
