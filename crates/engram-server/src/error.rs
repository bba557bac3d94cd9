//! The one place core errors become HTTP responses.

use std::any::Any;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engram_api::ErrorBody;
use engram_core::{CoreError, ErrorCode};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>, field: Option<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field,
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        ApiError {
            code: e.code(),
            message: e.to_string(),
            field: e.field().map(str::to_owned),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status.is_server_error() {
            // Details are logged once, here, and never sent to the client.
            tracing::error!(code = self.code.as_str(), error = %self.message, "request failed");
            match self.code {
                ErrorCode::Unavailable => {
                    "the service is temporarily unavailable; retry later (details are in the server log)".to_owned()
                }
                _ => "internal error (details are in the server log under this request's x-request-id)".to_owned(),
            }
        } else {
            self.message
        };
        let body = ErrorBody::new(self.code.as_str(), message, self.field);
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A panic in a handler becomes a 500 with the usual error body.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    ApiError::new(
        ErrorCode::Internal,
        format!("handler panicked: {detail}"),
        None,
    )
    .into_response()
}
