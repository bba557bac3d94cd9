//! Errors. `StoreError` is what every backend maps its driver errors into; `CoreError` is
//! what the use cases return. Each `ErrorCode` has one stable code string, one HTTP status
//! and one gRPC code, in one table, so every transport maps errors the same way.

use thiserror::Error;

/// The stable, documented error codes clients can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    ValidationFailed,
    InvalidJson,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    IdempotencyKeyReused,
    VersionConflict,
    RateLimited,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// (code string, HTTP status, gRPC status code number)
    const fn row(self) -> (&'static str, u16, i32) {
        match self {
            ErrorCode::ValidationFailed => ("validation_failed", 422, 3), // INVALID_ARGUMENT
            ErrorCode::InvalidJson => ("invalid_json", 400, 3),
            ErrorCode::PayloadTooLarge => ("payload_too_large", 413, 8), // RESOURCE_EXHAUSTED
            ErrorCode::UnsupportedMediaType => ("unsupported_media_type", 415, 3),
            ErrorCode::Unauthorized => ("unauthorized", 401, 16), // UNAUTHENTICATED
            ErrorCode::NotFound => ("not_found", 404, 5),
            ErrorCode::MethodNotAllowed => ("method_not_allowed", 405, 12), // UNIMPLEMENTED
            ErrorCode::IdempotencyKeyReused => ("idempotency_key_reused", 409, 6), // ALREADY_EXISTS
            ErrorCode::VersionConflict => ("version_conflict", 409, 10),    // ABORTED
            ErrorCode::RateLimited => ("rate_limited", 429, 8),             // RESOURCE_EXHAUSTED
            ErrorCode::Unavailable => ("unavailable", 503, 14),
            ErrorCode::Internal => ("internal", 500, 13),
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.row().0
    }

    pub const fn http_status(self) -> u16 {
        self.row().1
    }

    pub const fn grpc_code(self) -> i32 {
        self.row().2
    }
}

/// What a storage backend reports. Backends map their driver errors into this themselves,
/// so no driver type crosses a port.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("store error: {0}")]
    Other(String),
}

/// What a use case returns.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{what} not found")]
    NotFound { what: &'static str },
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("{0}")]
    VersionConflict(String),
    #[error("missing or invalid API key; send `Authorization: Bearer <key>` (create one with `engram keys create --tenant NAME`)")]
    Unauthorized,
    #[error(
        "too many requests for this tenant (at most {per_minute} a minute, {burst} at once); \
         slow down; retry after {retry_after_secs} s"
    )]
    RateLimited {
        per_minute: u32,
        burst: u32,
        /// Whole seconds, rounded up (what `Retry-After` says).
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl CoreError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::Validation { .. } => ErrorCode::ValidationFailed,
            CoreError::NotFound { .. } => ErrorCode::NotFound,
            CoreError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            CoreError::VersionConflict(_) => ErrorCode::VersionConflict,
            CoreError::Unauthorized => ErrorCode::Unauthorized,
            CoreError::RateLimited { .. } => ErrorCode::RateLimited,
            CoreError::Unavailable(_) => ErrorCode::Unavailable,
            CoreError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The field a validation error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            CoreError::Validation { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<StoreError> for CoreError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => CoreError::NotFound { what: "memory" },
            StoreError::Conflict(m) => CoreError::VersionConflict(m),
            StoreError::Unavailable(m) => CoreError::Unavailable(m),
            StoreError::Invalid(m) => CoreError::Internal(format!("store rejected a value: {m}")),
            StoreError::Other(m) => CoreError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_string_and_a_4xx_or_5xx_status() {
        let all = [
            ErrorCode::ValidationFailed,
            ErrorCode::InvalidJson,
            ErrorCode::PayloadTooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::VersionConflict,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ];
        let mut seen = std::collections::HashSet::new();
        for c in all {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c.as_str());
            assert!((400..600).contains(&c.http_status()));
            assert!((1..=16).contains(&c.grpc_code()));
        }
    }

    #[test]
    fn a_rate_limit_error_says_when_to_retry() {
        let e = CoreError::RateLimited {
            per_minute: 60,
            burst: 10,
            retry_after_secs: 3,
        };
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(e.code().as_str(), "rate_limited");
        assert_eq!(e.code().http_status(), 429);
        assert_eq!(e.code().grpc_code(), 8);
        assert_eq!(
            e.to_string(),
            "too many requests for this tenant (at most 60 a minute, 10 at once); slow down; \
             retry after 3 s"
        );
        assert_eq!(e.field(), None);
    }
}
