//! Per-tenant rate limits on `/api/v1`: a middleware that runs after authentication,
//! counts the request against its tenant's budget ([`RateLimiter`]), and either answers
//! 429 `rate_limited` with `Retry-After` or lets the request through. Either way the
//! response carries `RateLimit-Limit` (the burst), `RateLimit-Remaining` and
//! `RateLimit-Reset` (seconds until the whole burst is available again).
//!
//! A limiter that cannot reach its state fails open: the request goes through without
//! RateLimit headers and is counted in `engram_rate_limit_unavailable_total`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_core::rate_limit::{ceil_secs, Decision, Quota};
use engram_core::{CoreError, TenantId};

use crate::error::ApiError;
use crate::AppState;

pub const LIMIT_HEADER: &str = "ratelimit-limit";
pub const REMAINING_HEADER: &str = "ratelimit-remaining";
pub const RESET_HEADER: &str = "ratelimit-reset";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "engram_rate_limited_total",
        "Requests refused with 429 because their tenant exceeded its rate limit"
    );
    metrics::describe_counter!(
        "engram_rate_limit_unavailable_total",
        "Requests allowed without a rate-limit check because its state could not be reached (fail open)"
    );
}

fn set(headers: &mut HeaderMap, name: &'static str, value: u64) {
    headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
}

fn rate_limit_headers(headers: &mut HeaderMap, quota: &Quota, d: &Decision) {
    set(headers, LIMIT_HEADER, u64::from(quota.burst));
    set(headers, REMAINING_HEADER, u64::from(d.remaining));
    set(headers, RESET_HEADER, ceil_secs(d.reset_after));
}

/// The middleware. Routes it wraps must sit behind [`crate::authenticate`], which puts the
/// tenant into the request.
pub(crate) async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some((limiter, quota)) = state.rate_limit.as_ref() else {
        return next.run(req).await;
    };
    let Some(tenant) = req.extensions().get::<TenantId>().cloned() else {
        // Not authenticated: nothing to count against (authentication answers first).
        return next.run(req).await;
    };
    let decision = match limiter.check(tenant.as_str(), quota).await {
        Ok(d) => d,
        Err(e) => {
            metrics::counter!("engram_rate_limit_unavailable_total").increment(1);
            tracing::warn!(error = %e, %tenant, "rate limit not checked: request allowed");
            return next.run(req).await;
        }
    };
    if !decision.allowed {
        metrics::counter!("engram_rate_limited_total").increment(1);
        tracing::debug!(%tenant, retry_after = ?decision.retry_after, "rate limited");
        // At least 1 s: a refusal is never told to retry at once.
        let retry_after = ceil_secs(decision.retry_after).max(1);
        let mut resp = ApiError::from(CoreError::RateLimited {
            per_minute: quota.per_minute,
            burst: quota.burst,
            retry_after_secs: retry_after,
        })
        .into_response();
        let headers = resp.headers_mut();
        headers.insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(retry_after),
        );
        rate_limit_headers(headers, quota, &decision);
        return resp;
    }
    let mut resp = next.run(req).await;
    rate_limit_headers(resp.headers_mut(), quota, &decision);
    resp
}
