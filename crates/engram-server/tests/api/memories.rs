//! Every memory endpoint, over HTTP.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::spawn_app;

#[tokio::test]
async fn create_returns_201_pending_with_every_field() {
    let app = spawn_app().await;
    let body = json!({
        "content": "The deploy failed because the cache was cold.",
        "memory_type": "incident",
        "source": "chat",
        "source_ref": "history.jsonl:42",
        "title": "Cold cache",
        "tags": ["deploy", "cache"],
        "metadata": {"severity": 2, "nested": {"ok": true}},
        "user_id": "u1", "agent_id": "a1", "project": "p1", "domain": "ops", "session_id": "s1",
        "valid_from": "2026-01-01T00:00:00Z", "valid_to": "2026-12-31T00:00:00Z",
        "related_ids": ["01a1ffd3-3127-7286-94be-83818d372a38"],
        "conversation_id": "c1"
    });
    let r = app.post("/api/v1/memories", body.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let m = &r.body;
    let id = m["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(
        r.headers["location"],
        format!("/api/v1/memories/{id}").as_str()
    );
    assert!(r.headers.get("x-request-id").is_some());
    assert_eq!(m["embedding_status"], "pending");
    assert_eq!(m["version"], 1);
    assert_eq!(m["tenant"], "tenant-a");
    assert_eq!(m["content_hash"].as_str().unwrap().len(), 64);
    for k in [
        "content",
        "memory_type",
        "source",
        "source_ref",
        "title",
        "tags",
        "metadata",
        "user_id",
        "agent_id",
        "project",
        "domain",
        "session_id",
        "related_ids",
        "conversation_id",
    ] {
        assert_eq!(m[k], body[k], "field {k}");
    }
    assert_eq!(m["valid_from"], "2026-01-01T00:00:00Z");
    for k in ["created_at", "updated_at", "accessed_at"] {
        assert!(m[k].is_string(), "{k}");
    }
    for k in ["deleted_at", "embedding_model", "embedding_updated_at"] {
        assert!(m[k].is_null(), "{k}");
    }
    // Defaults.
    let d = app.create_text("just text").await;
    assert_eq!(d["memory_type"], "note");
    assert_eq!(d["source"], "manual");
    assert_eq!(d["tags"], json!([]));
    assert_eq!(d["metadata"], json!({}));
}

#[tokio::test]
async fn get_returns_the_memory_and_records_access() {
    let app = spawn_app().await;
    let m = app.create_text("remember me").await;
    let id = m["id"].as_str().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = app.get(&format!("/api/v1/memories/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["content"], "remember me");
    assert!(r.body["accessed_at"].as_str().unwrap() > m["accessed_at"].as_str().unwrap());
    assert_eq!(r.body["version"], 1, "a read is not a change");
    app.get(&format!("/api/v1/memories/{}", uuid::Uuid::now_v7()))
        .await
        .assert_error(404, "not_found", None);
}

#[tokio::test]
async fn list_pages_with_meta_and_cursor() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(
            app.create_text(&format!("memory {i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let r = app.get("/api/v1/memories").await;
    assert_eq!(r.status, StatusCode::OK);
    let meta = &r.body["meta"];
    assert_eq!(meta["page"], 1);
    assert_eq!(meta["per_page"], 20);
    assert_eq!(meta["total"], 25);
    assert_eq!(meta["total_pages"], 2);
    assert!(meta["next_cursor"].is_string());
    assert_eq!(r.body["data"].as_array().unwrap().len(), 20);
    // Newest first by default.
    assert_eq!(r.body["data"][0]["id"], ids[24].as_str());

    let p2 = app.get("/api/v1/memories?page=2&per_page=20").await;
    assert_eq!(p2.body["data"].as_array().unwrap().len(), 5);
    assert_eq!(p2.body["meta"]["page"], 2);
    assert!(p2.body["meta"]["next_cursor"].is_null());

    // Walking with the cursor visits every memory once, in order.
    let mut seen = Vec::new();
    let mut url = "/api/v1/memories?per_page=7&sort_order=asc".to_owned();
    loop {
        let r = app.get(&url).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        seen.extend(
            r.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match r.body["meta"]["next_cursor"].as_str() {
            Some(c) => url = format!("/api/v1/memories?per_page=7&sort_order=asc&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    // A cursor is bound to its query.
    let c = app.get("/api/v1/memories?per_page=7").await.body["meta"]["next_cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get(&format!(
        "/api/v1/memories?per_page=7&sort_order=asc&cursor={c}"
    ))
    .await
    .assert_error(422, "validation_failed", Some("cursor"));
}

#[tokio::test]
async fn list_filters_each_field() {
    let app = spawn_app().await;
    let a = app
        .create(json!({"content": "a", "memory_type": "task", "source": "chat", "tags": ["x", "y"],
            "user_id": "u1", "agent_id": "a1", "project": "p1", "domain": "d1", "session_id": "s1"}))
        .await;
    let b = app
        .create(json!({"content": "b", "memory_type": "fact", "source": "file", "tags": ["x"],
            "user_id": "u2", "agent_id": "a2", "project": "p2", "domain": "d2", "session_id": "s2"}))
        .await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("memory_type=task", vec![a]),
        ("memory_type=fact", vec![b]),
        ("source=chat", vec![a]),
        ("tags=x", vec![b, a]),
        ("tags=x,y", vec![a]),
        ("tags=y,zzz", vec![]),
        ("embedding_status=pending", vec![b, a]),
        ("embedding_status=completed", vec![]),
        ("user_id=u1", vec![a]),
        ("agent_id=a2", vec![b]),
        ("project=p1", vec![a]),
        ("domain=d2", vec![b]),
        ("session_id=s1", vec![a]),
        ("user_id=u1&memory_type=fact", vec![]),
        ("sort_order=asc", vec![a, b]),
        ("sort_by=updated_at&sort_order=desc", vec![b, a]),
        ("sort_by=accessed_at&sort_order=asc", vec![a, b]),
    ];
    for (q, want) in cases {
        assert_eq!(app.list_ids(q).await, want, "query {q}");
    }
    let created_b = app.get(&format!("/api/v1/memories/{b}")).await.body["created_at"]
        .as_str()
        .unwrap()
        .to_owned();
    let enc = created_b.replace(':', "%3A");
    assert_eq!(
        app.list_ids(&format!("created_before={enc}")).await,
        vec![a]
    );
    assert_eq!(
        app.list_ids(&format!("created_after={enc}")).await,
        Vec::<&str>::new()
    );
    assert_eq!(
        app.list_ids("created_after=2000-01-01T00:00:00Z").await,
        vec![b, a]
    );
}

#[tokio::test]
async fn patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let m = app
        .create(json!({"content": "original", "title": "T", "tags": ["a"], "user_id": "u1", "metadata": {"k": 1}}))
        .await;
    let path = format!("/api/v1/memories/{}", m["id"].as_str().unwrap());
    let r = app
        .patch(&path, json!({"tags": ["b", "c"], "title": null}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["tags"], json!(["b", "c"]));
    assert!(r.body["title"].is_null());
    assert_eq!(r.body["content"], "original");
    assert_eq!(r.body["user_id"], "u1");
    assert_eq!(r.body["metadata"], json!({"k": 1}));
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.body["embedding_status"], "pending");
    assert_eq!(r.body["content_hash"], m["content_hash"]);

    let r = app.patch(&path, json!({"content": "rewritten"})).await;
    assert_eq!(r.body["version"], 3);
    assert_eq!(r.body["embedding_status"], "pending");
    assert_ne!(r.body["content_hash"], m["content_hash"]);
    let got = app.get(&path).await;
    assert_eq!(got.body["content"], "rewritten");
    assert_eq!(got.body["tags"], json!(["b", "c"]));
    // Nothing to change: no new version.
    assert_eq!(app.patch(&path, json!({})).await.body["version"], 3);
    app.patch(
        &format!("/api/v1/memories/{}", uuid::Uuid::now_v7()),
        json!({"title": "x"}),
    )
    .await
    .assert_error(404, "not_found", None);
}

#[tokio::test]
async fn delete_is_204_and_the_memory_disappears() {
    let app = spawn_app().await;
    let m = app
        .create(json!({"content": "gone soon", "tags": ["t"], "user_id": "u"}))
        .await;
    let keep = app.create_text("stays").await;
    let path = format!("/api/v1/memories/{}", m["id"].as_str().unwrap());
    let r = app.delete(&path).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_null());
    app.get(&path).await.assert_error(404, "not_found", None);
    app.delete(&path).await.assert_error(404, "not_found", None);
    app.patch(&path, json!({"title": "x"}))
        .await
        .assert_error(404, "not_found", None);
    app.post(&format!("{path}/retry-embedding"), json!({}))
        .await
        .assert_error(404, "not_found", None);
    for q in ["", "tags=t", "user_id=u"] {
        let ids = app.list_ids(q).await;
        assert!(
            !ids.contains(&m["id"].as_str().unwrap().to_owned()),
            "query {q}"
        );
    }
    assert_eq!(app.list_ids("").await, vec![keep["id"].as_str().unwrap()]);
}

#[tokio::test]
async fn bulk_stores_valid_items_and_reports_the_rest() {
    let app = spawn_app().await;
    let r = app
        .post(
            "/api/v1/memories/bulk",
            json!({"memories": [
                {"content": "one"},
                {"content": ""},
                {"content": "three", "tags": ["ok"]},
                {"content": "four", "colour": "red"},
                {"content": "five", "memory_type": "poem"},
                "not an object"
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["created"], 2);
    assert_eq!(r.body["failed"], 4);
    let items: Vec<u64> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap())
        .collect();
    assert_eq!(items, vec![0, 2]);
    let errors = r.body["errors"].as_array().unwrap();
    let summary: Vec<(u64, &str, Value)> = errors
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["code"].as_str().unwrap(),
                e["field"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "validation_failed", json!("content")),
            (3, "validation_failed", json!("colour")),
            (4, "validation_failed", json!("memory_type")),
            (5, "validation_failed", Value::Null),
        ]
    );
    assert!(errors
        .iter()
        .all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())));
    assert_eq!(app.list_ids("").await.len(), 2);
    let id = r.body["items"][1]["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/api/v1/memories/{id}")).await.body["content"],
        "three"
    );

    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"content": format!("m{i}")}))
        .collect();
    app.post("/api/v1/memories/bulk", json!({ "memories": too_many }))
        .await
        .assert_error(422, "validation_failed", Some("memories"));
    app.post("/api/v1/memories/bulk", json!({ "items": [] }))
        .await
        .assert_error(422, "validation_failed", Some("items"));
    assert_eq!(app.list_ids("").await.len(), 2, "nothing half-written");
}

#[tokio::test]
async fn retry_embedding_puts_the_memory_back_to_pending() {
    let app = spawn_app().await;
    let m = app.create_text("embed me").await;
    let r = app
        .post(
            &format!(
                "/api/v1/memories/{}/retry-embedding",
                m["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["embedding_status"], "pending");
    // Also without a body.
    let r = app
        .send(
            Method::POST,
            &format!(
                "/api/v1/memories/{}/retry-embedding",
                m["id"].as_str().unwrap()
            ),
            Some(&app.key),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

#[tokio::test]
async fn idempotency_key_returns_the_original_and_never_a_duplicate() {
    let app = spawn_app().await;
    let body = json!({"content": "charge the card once"});
    let send = |key: &'static str, body: Value| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/v1/memories",
                Some(&app.key),
                Some(&body),
                &[("Idempotency-Key", key)],
            )
            .await
        }
    };
    let first = send("retry-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = send("retry-1", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body["id"], first.body["id"]);
    send("retry-1", json!({"content": "something else"}))
        .await
        .assert_error(409, "idempotency_key_reused", None);
    // Concurrent retries.
    let results =
        futures::future::join_all((0..12).map(|_| send("retry-2", json!({"content": "race"}))))
            .await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.list_ids("").await.len(), 2);
    // Bulk with a key: a retried request creates nothing new.
    let bulk = json!({"memories": [{"content": "b1"}, {"content": "b2"}]});
    let h = [("Idempotency-Key", "bulk-1")];
    let r1 = app
        .send(
            Method::POST,
            "/api/v1/memories/bulk",
            Some(&app.key),
            Some(&bulk),
            &h,
        )
        .await;
    let r2 = app
        .send(
            Method::POST,
            "/api/v1/memories/bulk",
            Some(&app.key),
            Some(&bulk),
            &h,
        )
        .await;
    assert_eq!(r1.body["items"][0]["status"], "created");
    assert_eq!(r2.body["items"][0]["status"], "replayed");
    assert_eq!(r1.body["items"][1]["id"], r2.body["items"][1]["id"]);
    assert_eq!(app.list_ids("").await.len(), 4);
    // Keys are per tenant.
    let other = app.key_for("tenant-b").await;
    let r = app
        .send(
            Method::POST,
            "/api/v1/memories",
            Some(&other),
            Some(&body),
            &[("Idempotency-Key", "retry-1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_ne!(r.body["id"], first.body["id"]);
}
