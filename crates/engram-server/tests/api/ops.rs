//! Health, readiness, metrics, routing errors and request ids.

use reqwest::{Method, StatusCode};

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = app.send(Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["status"], "ok");
    let r = app.send(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["status"], "ready");
    assert_eq!(r.body["checks"]["store"]["ok"], true);
    // A store that no longer takes writes is not ready, and says why.
    app.store.close();
    let r = app.send(Method::GET, "/readyz", None, None, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(r.body["status"], "not_ready");
    assert_eq!(r.body["checks"]["store"]["ok"], false);
    assert!(r.body["checks"]["store"]["error"]
        .as_str()
        .unwrap()
        .contains("writer"));
    let r = app
        .post("/api/v1/memories", serde_json::json!({"content": "x"}))
        .await;
    r.assert_error(503, "unavailable", None);
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_time_the_store() {
    let app = spawn_app().await;
    let m = app.create_text("counted").await;
    app.get(&format!("/api/v1/memories/{}", m["id"].as_str().unwrap()))
        .await;
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    assert!(text.contains("engram_http_requests_total{"), "{text}");
    assert!(
        text.contains(r#"route="/api/v1/memories/{id}""#),
        "route templates, not raw ids"
    );
    assert!(!text.contains(m["id"].as_str().unwrap()));
    assert!(text.contains("engram_http_request_duration_seconds_bucket"));
    assert!(text.contains(r#"engram_store_op_seconds_bucket{op="insert""#));
    assert!(text.contains(r#"engram_store_op_seconds_bucket{op="get""#));
    assert!(text.contains("engram_store_commit_jobs_bucket"));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let r = app.get("/api/v2/nothing").await;
    r.assert_error(404, "not_found", None);
    let r = app
        .send(Method::PUT, "/api/v1/memories", Some(&app.key), None, &[])
        .await;
    r.assert_error(405, "method_not_allowed", None);
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let r = app.get("/api/v1/memories").await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
    let r = app
        .send(
            Method::GET,
            "/api/v1/memories",
            Some(&app.key),
            None,
            &[("x-request-id", "client-chosen-1")],
        )
        .await;
    assert_eq!(r.headers["x-request-id"], "client-chosen-1");
    let r = app
        .send(Method::GET, "/api/v1/memories", None, None, &[])
        .await;
    assert!(
        r.headers.get("x-request-id").is_some(),
        "errors carry it too"
    );
}

/// The served OpenAPI document is the committed docs/openapi.json, and it describes every
/// route of the API.
#[tokio::test]
async fn openapi_is_served_current_and_complete() {
    let app = spawn_app().await;
    let r = app
        .send(Method::GET, "/openapi.json", None, None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .expect("docs/openapi.json"),
    )
    .unwrap();
    assert_eq!(
        r.body, committed,
        "docs/openapi.json is out of date: run `cargo run -p engram -- openapi > docs/openapi.json`"
    );
    let paths = &r.body["paths"];
    for (path, methods) in [
        ("/api/v1/memories", &["get", "post"][..]),
        ("/api/v1/memories/bulk", &["post"]),
        ("/api/v1/memories/{id}", &["get", "patch", "delete"]),
        ("/api/v1/memories/{id}/retry-embedding", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths[path][m].is_object(),
                "{m} {path} is missing from the OpenAPI document"
            );
        }
    }
    let schemas = &r.body["components"]["schemas"];
    assert_eq!(schemas["MemoryType"]["enum"].as_array().unwrap().len(), 12);
    assert!(schemas["CreateMemoryRequest"]["required"]
        .as_array()
        .unwrap()
        .contains(&"content".into()));
    assert!(r.body["components"]["securitySchemes"]["bearer"].is_object());
}
