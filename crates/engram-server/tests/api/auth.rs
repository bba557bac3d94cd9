//! Keys and tenant isolation over HTTP.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    let app = spawn_app().await;
    for key in [None, Some("egk_wrong_key"), Some("")] {
        let r = app
            .send(Method::GET, "/api/v1/memories", key, None, &[])
            .await;
        r.assert_error(401, "unauthorized", None);
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    let r = app
        .send(
            Method::GET,
            "/api/v1/memories",
            None,
            None,
            &[("authorization", &format!("Basic {}", app.key))],
        )
        .await;
    r.assert_error(401, "unauthorized", None);
    // Even a bad body is judged only after the key.
    let r = app
        .send(
            Method::POST,
            "/api/v1/memories",
            None,
            Some(&json!({"nope": 1})),
            &[],
        )
        .await;
    r.assert_error(401, "unauthorized", None);
    // The scheme is case-insensitive.
    let r = app
        .send(
            Method::GET,
            "/api/v1/memories",
            None,
            None,
            &[("authorization", &format!("bearer {}", app.key))],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_key_stops_working() {
    let app = spawn_app().await;
    let key = app.key_for("tenant-r").await;
    let r = app
        .send(Method::GET, "/api/v1/memories", Some(&key), None, &[])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let id = key.split('_').nth(1).unwrap();
    app.keys.revoke(id).await.unwrap();
    let r = app
        .send(Method::GET, "/api/v1/memories", Some(&key), None, &[])
        .await;
    r.assert_error(401, "unauthorized", None);
}

#[tokio::test]
async fn another_tenants_memory_is_404_everywhere() {
    let app = spawn_app().await;
    let b = app.key_for("tenant-b").await;
    let m = app
        .create(json!({"content": "tenant a's secret", "tags": ["s"], "user_id": "shared-user"}))
        .await;
    let id = m["id"].as_str().unwrap();
    let path = format!("/api/v1/memories/{id}");
    let as_b = |method: Method, path: String, body: Option<serde_json::Value>| {
        let app = &app;
        let b = b.clone();
        async move { app.send(method, &path, Some(&b), body.as_ref(), &[]).await }
    };
    as_b(Method::GET, path.clone(), None)
        .await
        .assert_error(404, "not_found", None);
    as_b(
        Method::PATCH,
        path.clone(),
        Some(json!({"content": "stolen"})),
    )
    .await
    .assert_error(404, "not_found", None);
    as_b(Method::DELETE, path.clone(), None)
        .await
        .assert_error(404, "not_found", None);
    as_b(Method::POST, format!("{path}/retry-embedding"), None)
        .await
        .assert_error(404, "not_found", None);
    for q in ["", "?user_id=shared-user", "?tags=s"] {
        let r = as_b(Method::GET, format!("/api/v1/memories{q}"), None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["meta"]["total"], 0, "query {q}");
    }
    // Tenant a still has it, untouched.
    let r = app.get(&path).await;
    assert_eq!(r.body["content"], "tenant a's secret");
    assert_eq!(r.body["version"], 1);
}
