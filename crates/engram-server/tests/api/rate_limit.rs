//! Per-tenant rate limits on `/api/v1`: a burst, then 429 with `Retry-After` and the
//! RateLimit headers; other tenants, unauthenticated requests and the operational routes
//! are untouched; a limiter that cannot answer lets requests through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engram_core::rate_limit::{Decision, InMemoryRateLimiter, Quota, RateLimiter};
use engram_core::StoreError;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_rate_limited, Resp, TestApp};

fn quota(per_minute: u32, burst: u32) -> Quota {
    Quota::new(per_minute, burst).expect("quota")
}

async fn limited(q: Quota) -> TestApp {
    spawn_app_rate_limited(Arc::new(InMemoryRateLimiter::default()), q).await
}

fn header(r: &Resp, name: &str) -> Option<u64> {
    r.headers
        .get(name)
        .map(|v| v.to_str().expect("ASCII").parse().expect("a number"))
}

#[track_caller]
fn assert_no_rate_limit_headers(r: &Resp) {
    for h in [
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
    ] {
        assert!(
            r.headers.get(h).is_none(),
            "unexpected {h}: {:?}",
            r.headers
        );
    }
}

/// Spends tenant-a's whole burst of 3 (1 a minute).
async fn exhaust(app: &TestApp) {
    for left in (0..3).rev() {
        let r = app.get("/api/v1/memories").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(header(&r, "ratelimit-remaining"), Some(left));
    }
}

#[tokio::test]
async fn a_burst_is_allowed_then_refused_with_429_and_headers() {
    let app = limited(quota(1, 3)).await; // T = 60 s
    for (i, left) in [2u64, 1, 0].into_iter().enumerate() {
        let r = app.get("/api/v1/memories").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(header(&r, "ratelimit-limit"), Some(3));
        assert_eq!(header(&r, "ratelimit-remaining"), Some(left));
        // The whole burst is back 60 s after the last request's share: 60, 120, 180 s
        // from the first (less the few milliseconds between requests, rounded up).
        let full = 60 * (i as u64 + 1);
        let reset = header(&r, "ratelimit-reset").expect("RateLimit-Reset");
        assert!(
            (full - 1..=full).contains(&reset),
            "reset {reset}, expected {full}"
        );
        assert!(r.headers.get("retry-after").is_none());
    }

    let r = app.get("/api/v1/memories").await;
    r.assert_error(429, "rate_limited", None);
    let retry = header(&r, "retry-after").expect("Retry-After");
    assert!((59..=60).contains(&retry), "Retry-After {retry}");
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("slow down") && message.contains(&format!("retry after {retry} s")),
        "{message}"
    );
    assert_eq!(header(&r, "ratelimit-limit"), Some(3));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    let reset = header(&r, "ratelimit-reset").expect("RateLimit-Reset");
    assert!((179..=180).contains(&reset), "reset {reset}");
    assert!(r.headers.get("x-request-id").is_some());

    // Writes share the budget, and a refused one never reaches the store.
    let r = app
        .post("/api/v1/memories", json!({"content": "not stored"}))
        .await;
    r.assert_error(429, "rate_limited", None);
    let stored = engram_core::MemoryStore::list(
        &app.store,
        &engram_core::TenantId::parse("tenant-a").unwrap(),
        &Default::default(),
    )
    .await
    .expect("list");
    assert_eq!(stored.total, 0);

    // Authentication comes first: without a valid key it is 401, and nothing is counted.
    for key in [None, Some("egk_wrong_key")] {
        let r = app
            .send(Method::GET, "/api/v1/memories", key, None, &[])
            .await;
        r.assert_error(401, "unauthorized", None);
        assert_no_rate_limit_headers(&r);
    }

    // Refusals are counted.
    let metrics = app.send(Method::GET, "/metrics", None, None, &[]).await;
    let text = metrics.body.as_str().expect("text");
    let refused: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("engram_rate_limited_total "))
        .expect("engram_rate_limited_total is exported")
        .trim()
        .parse()
        .expect("a number");
    assert!(refused >= 2.0, "{refused}");
}

#[tokio::test]
async fn another_tenant_is_unaffected() {
    let app = limited(quota(1, 3)).await;
    exhaust(&app).await;
    app.get("/api/v1/memories")
        .await
        .assert_error(429, "rate_limited", None);
    let other = app.key_for("tenant-b").await;
    for left in [2, 1, 0] {
        let r = app
            .send(Method::GET, "/api/v1/memories", Some(&other), None, &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(header(&r, "ratelimit-remaining"), Some(left));
    }
    // A second key of tenant-a shares tenant-a's budget.
    let second = app.key_for("tenant-a").await;
    app.send(Method::GET, "/api/v1/memories", Some(&second), None, &[])
        .await
        .assert_error(429, "rate_limited", None);
}

#[tokio::test]
async fn health_readiness_metrics_and_the_document_are_never_limited() {
    let app = limited(quota(1, 3)).await;
    exhaust(&app).await;
    for _ in 0..10 {
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let r = app.send(Method::GET, path, Some(&app.key), None, &[]).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
            assert_no_rate_limit_headers(&r);
        }
    }
    app.get("/api/v1/memories")
        .await
        .assert_error(429, "rate_limited", None);
}

#[tokio::test]
async fn after_retry_after_the_request_goes_through() {
    let app = limited(quota(60, 2)).await; // T = 1 s
    for _ in 0..2 {
        assert_eq!(app.get("/api/v1/memories").await.status, StatusCode::OK);
    }
    let r = app.get("/api/v1/memories").await;
    r.assert_error(429, "rate_limited", None);
    // Less than a second to wait, rounded up.
    assert_eq!(header(&r, "retry-after"), Some(1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app.get("/api/v1/memories").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
}

#[tokio::test]
async fn without_a_limit_there_are_no_rate_limit_headers() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let r = app.get("/api/v1/memories").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_no_rate_limit_headers(&r);
    }
}

/// A limiter whose state is unreachable.
struct Unreachable;

#[async_trait]
impl RateLimiter for Unreachable {
    async fn check(&self, _: &str, _: &Quota) -> Result<Decision, StoreError> {
        Err(StoreError::Unavailable(
            "rate-limit state unreachable".into(),
        ))
    }
}

#[tokio::test]
async fn a_limiter_that_cannot_answer_lets_requests_through() {
    let app = spawn_app_rate_limited(Arc::new(Unreachable), quota(1, 1)).await;
    for _ in 0..5 {
        let r = app.get("/api/v1/memories").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_no_rate_limit_headers(&r);
    }
    let created = app
        .post("/api/v1/memories", json!({"content": "stored"}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}
