//! Scratchpads over HTTP: round trip, expiry, validation naming the field, tenant
//! isolation, and 503 when the server has no scratchpad store.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use engram_core::time::parse_rfc3339;

use crate::helpers::{spawn_app, spawn_app_without_scratchpads};

const PAD: &str = "/api/v1/agents/coder/scratchpad";

#[tokio::test]
async fn entries_round_trip_and_are_deleted() {
    let app = spawn_app().await;
    let r = app
        .put(
            &format!("{PAD}/plan"),
            json!({"value": {"step": 1, "todo": ["a", "b"]}, "ttl_secs": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"], "plan");
    assert_eq!(r.body["value"], json!({"step": 1, "todo": ["a", "b"]}));
    let expires = parse_rfc3339(r.body["expires_at"].as_str().unwrap()).unwrap();
    let updated = parse_rfc3339(r.body["updated_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - updated).num_seconds(), 600);
    let entry = r.body;

    let got = app.get(&format!("{PAD}/plan")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body, entry);

    // Default TTL: one hour. A key with spaces and slashes, percent-encoded in the path.
    let r = app
        .put(&format!("{PAD}/a%20b%2Fc"), json!({"value": "note"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["key"], "a b/c");
    let expires = parse_rfc3339(r.body["expires_at"].as_str().unwrap()).unwrap();
    let updated = parse_rfc3339(r.body["updated_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - updated).num_seconds(), 3600);

    let listed = app.get(PAD).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let keys: Vec<_> = listed.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["a b/c", "plan"]);

    let gone = app.delete(&format!("{PAD}/plan")).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    app.get(&format!("{PAD}/plan"))
        .await
        .assert_error(404, "not_found", None);
    app.delete(&format!("{PAD}/plan"))
        .await
        .assert_error(404, "not_found", None);
    let empty = app.get("/api/v1/agents/nobody/scratchpad").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!({"entries": []}));
}

#[tokio::test]
async fn entries_expire_after_ttl_secs() {
    let app = spawn_app().await;
    let r = app
        .put(&format!("{PAD}/short"), json!({"value": 1, "ttl_secs": 1}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app.put(&format!("{PAD}/long"), json!({"value": 2})).await;
    assert_eq!(
        app.get(&format!("{PAD}/short")).await.status,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.get(&format!("{PAD}/short"))
        .await
        .assert_error(404, "not_found", None);
    let listed = app.get(PAD).await;
    assert_eq!(listed.body["entries"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["entries"][0]["key"], "long");
}

#[tokio::test]
async fn invalid_input_is_422_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (format!("{PAD}/k"), json!({}), "value"),
        (format!("{PAD}/k"), json!({"value": null}), "value"),
        (
            format!("{PAD}/k"),
            json!({"value": 1, "ttl_secs": 0}),
            "ttl_secs",
        ),
        (
            format!("{PAD}/k"),
            json!({"value": 1, "ttl_secs": 30 * 24 * 3600 + 1}),
            "ttl_secs",
        ),
        (
            format!("{PAD}/k"),
            json!({"value": 1, "ttl_secs": -5}),
            "ttl_secs",
        ),
        (
            format!("{PAD}/k"),
            json!({"value": 1, "ttl_secs": "1h"}),
            "ttl_secs",
        ),
        (
            format!("{PAD}/k"),
            json!({"value": 1, "extra": true}),
            "extra",
        ),
        (
            format!("{PAD}/k"),
            json!({"value": "v".repeat(64 * 1024)}),
            "value",
        ),
        (
            format!("{PAD}/{}", "k".repeat(129)),
            json!({"value": 1}),
            "key",
        ),
        (
            format!("/api/v1/agents/{}/scratchpad/k", "a".repeat(129)),
            json!({"value": 1}),
            "agent",
        ),
        (
            "/api/v1/agents/%20/scratchpad/k".to_owned(),
            json!({"value": 1}),
            "agent",
        ),
        (format!("{PAD}/a%0Ab"), json!({"value": 1}), "key"),
    ];
    for (path, body, field) in cases {
        let r = app.put(&path, body.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{path} {body}: {}", r.body);
        assert_eq!(r.body["error"]["code"], "validation_failed", "{}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{path} {body}: {}", r.body);
    }
    app.get(&format!("/api/v1/agents/{}/scratchpad", "a".repeat(129)))
        .await
        .assert_error(422, "validation_failed", Some("agent"));
    app.get(&format!("{PAD}/{}", "k".repeat(129)))
        .await
        .assert_error(422, "validation_failed", Some("key"));
    // Nothing was stored.
    assert_eq!(app.get(PAD).await.body, json!({"entries": []}));
}

#[tokio::test]
async fn tenants_are_isolated_and_a_key_is_needed() {
    let app = spawn_app().await;
    let other = app.key_for("tenant-b").await;
    let r = app.put(&format!("{PAD}/k"), json!({"value": "a"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let path = format!("{PAD}/k");
    app.send(Method::GET, &path, Some(&other), None, &[])
        .await
        .assert_error(404, "not_found", None);
    app.send(Method::DELETE, &path, Some(&other), None, &[])
        .await
        .assert_error(404, "not_found", None);
    let listed = app.send(Method::GET, PAD, Some(&other), None, &[]).await;
    assert_eq!(listed.body, json!({"entries": []}));
    let b = app
        .send(
            Method::PUT,
            &path,
            Some(&other),
            Some(&json!({"value": "b"})),
            &[],
        )
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    assert_eq!(app.get(&path).await.body["value"], "a");
    app.send(Method::GET, &path, None, None, &[])
        .await
        .assert_error(401, "unauthorized", None);
}

#[tokio::test]
async fn without_a_store_the_routes_answer_503() {
    let app = spawn_app_without_scratchpads().await;
    let r = app.get(PAD).await;
    r.assert_error(503, "unavailable", None);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scratchpads are not configured"),
        "{}",
        r.body
    );
    app.put(&format!("{PAD}/k"), json!({"value": 1}))
        .await
        .assert_error(503, "unavailable", None);
}
