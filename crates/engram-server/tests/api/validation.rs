//! Every validation rule answers a 4xx JSON error naming the field; nothing is half-written.

use engram_server::HttpConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn create_rejects_each_bad_field() {
    let app = spawn_app().await;
    let deep = (0..9).fold(json!(1), |v, _| json!({ "k": v }));
    let cases: Vec<(Value, &str)> = vec![
        (json!({"content": ""}), "content"),
        (json!({"content": "   "}), "content"),
        (json!({"content": "x".repeat(50_001)}), "content"),
        (json!({"content": "nul\u{0}here"}), "content"),
        (json!({"content": 42}), "content"),
        (json!({"title": "no content"}), "content"),
        (json!({"content": "x", "title": "t".repeat(501)}), "title"),
        (json!({"content": "x", "title": "a\u{0}"}), "title"),
        (
            json!({"content": "x", "tags": (0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags",
        ),
        (
            json!({"content": "x", "tags": ["ok", "t".repeat(65)]}),
            "tags[1]",
        ),
        (json!({"content": "x", "tags": ["a,b"]}), "tags[0]"),
        (json!({"content": "x", "tags": "a"}), "tags"),
        (json!({"content": "x", "metadata": [1, 2]}), "metadata"),
        (json!({"content": "x", "metadata": "s"}), "metadata"),
        (
            json!({"content": "x", "metadata": {"big": "x".repeat(16 * 1024)}}),
            "metadata",
        ),
        (json!({"content": "x", "metadata": deep}), "metadata"),
        (
            json!({"content": "x", "metadata": {"k": "a\u{0}"}}),
            "metadata",
        ),
        (
            json!({"content": "x", "memory_type": "poem"}),
            "memory_type",
        ),
        (json!({"content": "x", "source": "rumour"}), "source"),
        (json!({"content": "x", "colour": "red"}), "colour"),
        (json!({"content": "x", "user_id": ""}), "user_id"),
        (
            json!({"content": "x", "project": "p".repeat(257)}),
            "project",
        ),
        (
            json!({"content": "x", "related_ids": ["not-a-uuid"]}),
            "related_ids[0]",
        ),
        (
            json!({"content": "x", "valid_from": "yesterday"}),
            "valid_from",
        ),
        (
            json!({"content": "x", "valid_from": "2026-02-01T00:00:00Z", "valid_to": "2026-01-01T00:00:00Z"}),
            "valid_to",
        ),
    ];
    for (body, field) in cases {
        let r = app.post("/api/v1/memories", body.clone()).await;
        r.assert_error(422, "validation_failed", Some(field));
    }
    // Limits are inclusive.
    app.create(
        json!({"content": "é".repeat(50_000), "title": "t".repeat(500),
        "tags": (0..50).map(|i| format!("{i}{}", "t".repeat(60))).collect::<Vec<_>>(),
        "metadata": (0..7).fold(json!(1), |v, _| json!({ "k": v }))}),
    )
    .await;
    assert_eq!(
        app.list_ids("").await.len(),
        1,
        "only the valid memory was written"
    );
}

#[tokio::test]
async fn malformed_json_is_400_and_wrong_media_type_415() {
    let app = spawn_app().await;
    for body in [
        &b"{\"content\": "[..],
        b"not json",
        b"",
        b"{\"content\": \"x\"} trailing",
    ] {
        let r = app
            .raw(
                Method::POST,
                "/api/v1/memories",
                body.to_vec(),
                Some("application/json"),
            )
            .await;
        r.assert_error(400, "invalid_json", None);
    }
    let r = app
        .raw(
            Method::POST,
            "/api/v1/memories",
            br#"{"content":"x"}"#.to_vec(),
            Some("text/plain"),
        )
        .await;
    r.assert_error(415, "unsupported_media_type", None);
    // No content type at all is accepted as JSON.
    let r = app
        .raw(
            Method::POST,
            "/api/v1/memories",
            br#"{"content":"x"}"#.to_vec(),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = app
        .raw(
            Method::POST,
            "/api/v1/memories",
            b"[1,2]".to_vec(),
            Some("application/json"),
        )
        .await;
    r.assert_error(422, "validation_failed", None);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(HttpConfig {
        body_limit: 64 * 1024,
        ..Default::default()
    })
    .await;
    let big = json!({ "content": "x".repeat(70 * 1024) })
        .to_string()
        .into_bytes();
    let r = app
        .raw(
            Method::POST,
            "/api/v1/memories",
            big,
            Some("application/json"),
        )
        .await;
    r.assert_error(413, "payload_too_large", None);
    let default_app = spawn_app().await;
    let big = json!({ "memories": [{ "content": "x".repeat(1024 * 1024) }] })
        .to_string()
        .into_bytes();
    let r = default_app
        .raw(
            Method::POST,
            "/api/v1/memories/bulk",
            big,
            Some("application/json"),
        )
        .await;
    r.assert_error(413, "payload_too_large", None);
}

#[tokio::test]
async fn ids_must_be_uuids() {
    let app = spawn_app().await;
    app.get("/api/v1/memories/not-a-uuid")
        .await
        .assert_error(422, "validation_failed", Some("id"));
    app.delete("/api/v1/memories/123")
        .await
        .assert_error(422, "validation_failed", Some("id"));
    app.patch("/api/v1/memories/xyz", json!({"title": "t"}))
        .await
        .assert_error(422, "validation_failed", Some("id"));
    app.post("/api/v1/memories/xyz/retry-embedding", json!({}))
        .await
        .assert_error(422, "validation_failed", Some("id"));
}

#[tokio::test]
async fn patch_rejects_each_bad_field() {
    let app = spawn_app().await;
    let m = app.create_text("original").await;
    let path = format!("/api/v1/memories/{}", m["id"].as_str().unwrap());
    let cases: Vec<(Value, &str)> = vec![
        (json!({"content": null}), "content"),
        (json!({"content": ""}), "content"),
        (json!({"memory_type": "poem"}), "memory_type"),
        (json!({"memory_type": null}), "memory_type"),
        (json!({"title": "t".repeat(501)}), "title"),
        (json!({"tags": ["x".repeat(65)]}), "tags[0]"),
        (json!({"metadata": 5}), "metadata"),
        (json!({"id": "x"}), "id"),
        (json!({"version": 3}), "version"),
        (json!({"valid_to": "nope"}), "valid_to"),
    ];
    for (body, field) in cases {
        app.patch(&path, body)
            .await
            .assert_error(422, "validation_failed", Some(field));
    }
    let after = app.get(&path).await;
    assert_eq!(
        after.body["version"], 1,
        "no rejected patch changed anything"
    );
    assert_eq!(after.body["content"], "original");
}

#[tokio::test]
async fn list_rejects_each_bad_parameter() {
    let app = spawn_app().await;
    let cases = [
        ("per_page=0", "per_page"),
        ("per_page=101", "per_page"),
        ("per_page=ten", "per_page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("cursor=garbage", "cursor"),
        ("cursor=abc&page=2", "cursor"),
        ("sort_by=size", "sort_by"),
        ("sort_order=sideways", "sort_order"),
        ("memory_type=poem", "memory_type"),
        ("source=rumour", "source"),
        ("embedding_status=done", "embedding_status"),
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01", "created_before"),
        ("tags=a,".to_owned().leak(), "tags"),
        ("colour=red", "colour"),
    ];
    for (q, field) in cases {
        let r = app.get(&format!("/api/v1/memories?{q}")).await;
        if q == "tags=a," {
            // A trailing comma is tolerated.
            assert_eq!(r.status, StatusCode::OK);
            continue;
        }
        r.assert_error(422, "validation_failed", Some(field));
    }
    let long_tag = "t".repeat(65);
    app.get(&format!("/api/v1/memories?tags={long_tag}"))
        .await
        .assert_error(422, "validation_failed", Some("tags[0]"));
}

#[tokio::test]
async fn idempotency_key_header_is_validated() {
    let app = spawn_app().await;
    let long = "k".repeat(256);
    let r = app
        .send(
            Method::POST,
            "/api/v1/memories",
            Some(&app.key),
            Some(&json!({"content": "x"})),
            &[("Idempotency-Key", long.as_str())],
        )
        .await;
    r.assert_error(422, "validation_failed", Some("Idempotency-Key"));
    assert!(app.list_ids("").await.is_empty());
}

/// Arbitrary JSON thrown at every write endpoint never produces a 5xx.
#[tokio::test]
async fn arbitrary_json_never_causes_a_server_error() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;
    let app = spawn_app().await;
    let id = app.create_text("target").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let leaf = proptest::prop_oneof![
        proptest::strategy::Just(Value::Null),
        proptest::bool::ANY.prop_map(Value::from),
        proptest::num::i64::ANY.prop_map(Value::from),
        "[a-z\\x00é日 ]{0,12}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        proptest::prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::hash_map(
                proptest::prop_oneof![
                    proptest::strategy::Just("content".to_owned()),
                    proptest::strategy::Just("tags".to_owned()),
                    proptest::strategy::Just("metadata".to_owned()),
                    proptest::strategy::Just("title".to_owned()),
                    proptest::strategy::Just("memory_type".to_owned()),
                    proptest::strategy::Just("memories".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let mut runner = TestRunner::deterministic();
    for _ in 0..150 {
        let v = value.new_tree(&mut runner).unwrap().current();
        for (method, path) in [
            (Method::POST, "/api/v1/memories".to_owned()),
            (Method::POST, "/api/v1/memories/bulk".to_owned()),
            (Method::PATCH, format!("/api/v1/memories/{id}")),
        ] {
            let r = app.send(method, &path, Some(&app.key), Some(&v), &[]).await;
            assert!(
                r.status.is_success() || r.status.is_client_error(),
                "{path} {v} -> {}",
                r.status
            );
            if r.status.is_client_error() {
                assert!(r.body["error"]["code"].is_string(), "{}", r.body);
            }
        }
    }
}
