//! `POST /api/v1/search` over HTTP: what a client sees. (Ranking and filters are held to
//! the conformance stories; here: the wire shape, errors, tenancy, deletes.)

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn ids(body: &Value) -> Vec<String> {
    body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory"]["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_write_is_found_by_keyword_at_once() {
    let app = spawn_app().await;
    let m = app
        .create(json!({"content": "The staging database moved to Frankfurt", "tags": ["infra"]}))
        .await;
    app.create_text("Buy oat milk").await;
    // No embedder in this server: hybrid runs as keyword search and says so.
    let r = app
        .post("/api/v1/search", json!({"query": "where is the database?"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(ids(&r.body), vec![m["id"].as_str().unwrap()]);
    let hit = &r.body["hits"][0];
    assert_eq!(hit["rank"], 1);
    assert_eq!(hit["memory"]["content"], m["content"]);
    assert!(hit["scores"]["keyword"].as_f64().unwrap() > 0.0);
    assert!(hit["scores"]["vector"].is_null());
    assert_eq!(r.body["mode"], "keyword");
    assert!(r.body["degraded"].as_str().is_some());
    assert!(r.body["took_ms"].as_f64().unwrap() >= 0.0);
    // Tags are searchable; filters apply.
    let r = app
        .post(
            "/api/v1/search",
            json!({"query": "infra", "mode": "keyword", "filters": {"tags": ["infra"], "memory_type": ["note", "fact"]}}),
        )
        .await;
    assert_eq!(ids(&r.body).len(), 1, "{}", r.body);
    let r = app
        .post(
            "/api/v1/search",
            json!({"query": "database", "mode": "keyword", "filters": {"user_id": "someone"}}),
        )
        .await;
    assert!(ids(&r.body).is_empty());
    // Semantic search without an embedder is 503, not an empty answer.
    let r = app
        .post(
            "/api/v1/search",
            json!({"query": "database", "mode": "semantic"}),
        )
        .await;
    r.assert_error(503, "unavailable", None);
}

#[tokio::test]
async fn deleted_and_foreign_memories_never_appear() {
    let app = spawn_app().await;
    let keep = app.create_text("quarterly budget review").await;
    let gone = app.create_text("quarterly budget draft").await;
    let r = app
        .delete(&format!(
            "/api/v1/memories/{}",
            gone["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let other = app.key_for("tenant-b").await;
    let r = app
        .send(
            Method::POST,
            "/api/v1/search",
            Some(&other),
            Some(&json!({"query": "quarterly budget"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(ids(&r.body).is_empty(), "{}", r.body);
    let r = app
        .post("/api/v1/search", json!({"query": "quarterly budget"}))
        .await;
    assert_eq!(ids(&r.body), vec![keep["id"].as_str().unwrap()]);
    // No key: 401.
    let r = app
        .send(
            Method::POST,
            "/api/v1/search",
            None,
            Some(&json!({"query": "x"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bad_search_input_names_the_field() {
    let app = spawn_app().await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"query": ""}), "query"),
        (json!({"query": "   "}), "query"),
        (json!({}), "query"),
        (json!({"query": 5}), "query"),
        (json!({"query": "x", "k": 0}), "k"),
        (json!({"query": "x", "k": 101}), "k"),
        (json!({"query": "x", "k": -3}), "k"),
        (json!({"query": "x", "k": "ten"}), "k"),
        (json!({"query": "x", "mode": "fuzzy"}), "mode"),
        (json!({"query": "x", "min_score": "high"}), "min_score"),
        (
            json!({"query": "x", "filters": {"colour": "red"}}),
            "filters.colour",
        ),
        (
            json!({"query": "x", "filters": {"memory_type": "poem"}}),
            "filters.memory_type",
        ),
        (
            json!({"query": "x", "filters": {"memory_type": []}}),
            "filters.memory_type",
        ),
        (
            json!({"query": "x", "filters": {"source": "mail"}}),
            "filters.source",
        ),
        (
            json!({"query": "x", "filters": {"created_after": "soon"}}),
            "filters.created_after",
        ),
        (
            json!({"query": "x", "filters": {"user_id": ""}}),
            "filters.user_id",
        ),
        (
            json!({"query": "x", "filters": {"metadata": {"a": [1]}}}),
            "filters.metadata.a",
        ),
        (
            json!({"query": "x", "filters": {"metadata": {"a\"b": 1}}}),
            "filters.metadata",
        ),
        (json!({"query": "x", "filters": []}), "filters"),
        (json!({"query": "x", "extra": 1}), "extra"),
    ];
    for (body, field) in cases {
        let r = app.post("/api/v1/search", body.clone()).await;
        assert!(
            r.status.is_client_error(),
            "{body} answered {}: {}",
            r.status,
            r.body
        );
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.body);
    }
}
