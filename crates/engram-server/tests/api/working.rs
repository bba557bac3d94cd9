//! The memory tiers over HTTP: every working record type round-trips with validation and
//! tenant isolation; the operational tier keeps evicted critical events; context assembly
//! cites everything an agent logged, within its budget.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_ops, Resp, TestApp};

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_owned()
}

async fn created(app: &TestApp, path: &str, body: Value) -> Value {
    let r = app.post(path, body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{path}: {}", r.body);
    let loc = r.headers["location"].to_str().unwrap();
    assert_eq!(loc, format!("{path}/{}", id(&r.body)));
    r.body
}

/// Create, read, list, update, delete: one kind's whole life over REST.
async fn round_trip(app: &TestApp, path: &str, create: Value, patch: Value) -> Value {
    let rec = created(app, path, create.clone()).await;
    for (k, v) in create.as_object().unwrap() {
        assert_eq!(&rec[k], v, "{path}: field {k} of {}", rec);
    }
    assert_eq!(rec["version"], 1);
    let item = format!("{path}/{}", id(&rec));
    let got = app.get(&item).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body, rec);

    let listed = app.get(path).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    assert!(listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == rec["id"]));

    let updated = app.patch(&item, patch.clone()).await;
    assert_eq!(updated.status, StatusCode::OK, "{path}: {}", updated.body);
    for (k, v) in patch.as_object().unwrap() {
        if v.is_null() {
            assert!(updated.body.get(k).is_none(), "{path}: {k} cleared");
        } else {
            assert_eq!(&updated.body[k], v, "{path}: patched {k}");
        }
    }
    assert_eq!(updated.body["version"], 2);
    assert_eq!(app.get(&item).await.body, updated.body);

    let gone = app.delete(&item).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);
    app.get(&item).await.assert_error(404, "not_found", None);
    app.delete(&item).await.assert_error(404, "not_found", None);
    rec
}

#[tokio::test]
async fn every_working_record_type_round_trips() {
    let app = spawn_app().await;
    let goal = created(&app, "/api/v1/goals", json!({"title": "Launch"})).await;
    round_trip(
        &app,
        "/api/v1/goals",
        json!({"title": "Ship v1", "priority": "high", "parent_id": id(&goal), "project": "engram"}),
        json!({"status": "achieved", "description": "done in time"}),
    )
    .await;
    let task = round_trip(
        &app,
        "/api/v1/tasks",
        json!({"title": "Write the tier tests", "project": "engram", "priority": "urgent",
               "assigned_agent": "coder", "goal_id": id(&goal), "due_at": "2026-12-31T00:00:00.000000Z",
               "context": "issue 5"}),
        json!({"status": "done", "result": "all green", "due_at": null}),
    )
    .await;
    // A finished task records when.
    assert!(task["completed_at"].is_null());
    round_trip(
        &app,
        "/api/v1/tool-calls",
        json!({"tool": "grep", "arguments": {"pattern": "fn main"}, "result": {"hits": 3},
               "status": "succeeded", "duration_ms": 12}),
        json!({"status": "failed", "error": "timeout"}),
    )
    .await;
    let decision = round_trip(
        &app,
        "/api/v1/decisions",
        json!({"who": "lead", "what": "Use SQLite by default", "why": "no server to run",
               "alternatives": ["Postgres only", "files"], "agent_id": "planner"}),
        json!({"outcome": "kept", "why": "laptops"}),
    )
    .await;
    assert!(
        decision["memory_id"].is_string(),
        "a decision is searchable"
    );
    let pattern = round_trip(
        &app,
        "/api/v1/patterns",
        json!({"trigger": "flaky test", "action": "rerun once, then bisect"}),
        json!({"action": "rerun once, then read the log"}),
    )
    .await;
    assert_eq!(pattern["success_count"], 0);
    assert_eq!(pattern["confidence"], 0.5);
    round_trip(
        &app,
        "/api/v1/sessions",
        json!({"title": "pairing", "user_id": "ana"}),
        json!({"status": "ended", "summary": "fixed the bug"}),
    )
    .await;

    let session = created(
        &app,
        "/api/v1/sessions",
        json!({"title": "chat", "user_id": "ana"}),
    )
    .await;
    let base = format!("/api/v1/sessions/{}", id(&session));
    let msg = round_trip(
        &app,
        &format!("{base}/messages"),
        json!({"role": "user", "content": "where is the config?"}),
        json!({"content": "where is engram.toml?"}),
    )
    .await;
    assert_eq!(msg["user_id"], "ana", "a message takes its session's scope");
    assert_eq!(msg["session_id"], id(&session));
    round_trip(
        &app,
        &format!("{base}/checkpoints"),
        json!({"name": "after setup", "summary": "config found"}),
        json!({"summary": "config found and edited"}),
    )
    .await;
    // A session goes with its messages, checkpoints and their memories.
    let kept = created(
        &app,
        &format!("{base}/messages"),
        json!({"role": "assistant", "content": "in engram.toml"}),
    )
    .await;
    let cp = created(
        &app,
        &format!("{base}/checkpoints"),
        json!({"name": "end", "summary": "done"}),
    )
    .await;
    assert_eq!(app.delete(&base).await.status, StatusCode::NO_CONTENT);
    app.get(&format!("{base}/messages/{}", id(&kept)))
        .await
        .assert_error(404, "not_found", None);
    app.get(&format!("{base}/checkpoints/{}", id(&cp)))
        .await
        .assert_error(404, "not_found", None);
    app.get(&format!(
        "/api/v1/memories/{}",
        kept["memory_id"].as_str().unwrap()
    ))
    .await
    .assert_error(404, "not_found", None);

    // Agent state: put, read, replace, list, delete.
    let st = "/api/v1/agents/coder/state/cwd";
    let put = app.put(st, json!({"value": "/work"})).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["value"], "/work");
    assert_eq!(put.body["key"], "cwd");
    let again = app.put(st, json!({"value": {"dir": "/tmp"}})).await;
    assert_eq!(again.body["id"], put.body["id"], "one entry per key");
    assert_eq!(again.body["version"], 2);
    assert_eq!(app.get(st).await.body["value"], json!({"dir": "/tmp"}));
    let list = app.get("/api/v1/agents/coder/state").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.delete(st).await.status, StatusCode::NO_CONTENT);
    app.get(st).await.assert_error(404, "not_found", None);
}

#[tokio::test]
async fn lists_filter_page_and_order() {
    let app = spawn_app().await;
    let goal = created(&app, "/api/v1/goals", json!({"title": "g"})).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let status = if i % 2 == 0 { "open" } else { "blocked" };
        let body = json!({"title": format!("t{i}"), "status": status, "project": "p",
                          "goal_id": if i < 3 { Value::String(id(&goal)) } else { Value::Null }});
        ids.push(id(&created(&app, "/api/v1/tasks", body).await));
    }
    created(
        &app,
        "/api/v1/tasks",
        json!({"title": "elsewhere", "project": "q"}),
    )
    .await;
    let ids_of =
        |r: &Resp| -> Vec<String> { r.body["data"].as_array().unwrap().iter().map(id).collect() };
    let by_goal = app
        .get(&format!("/api/v1/tasks?goal_id={}", id(&goal)))
        .await;
    assert_eq!(
        ids_of(&by_goal),
        vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    let blocked = app.get("/api/v1/tasks?status=blocked&project=p").await;
    assert_eq!(ids_of(&blocked).len(), 3);
    let either = app.get("/api/v1/tasks?status=open,blocked&project=p").await;
    assert_eq!(ids_of(&either).len(), 7);

    // Pages of 3, newest first, then oldest first: everything once, in order.
    for (order, expect) in [
        ("desc", ids.iter().rev().cloned().collect::<Vec<_>>()),
        ("asc", ids.clone()),
    ] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q = format!("/api/v1/tasks?project=p&per_page=3&order={order}");
            if let Some(c) = &cursor {
                q.push_str(&format!("&cursor={c}"));
            }
            let page = app.get(&q).await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            seen.extend(ids_of(&page));
            match page.body["meta"]["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, expect, "order {order}");
    }
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let app = spawn_app().await;
    let cases = [
        ("/api/v1/tasks", json!({}), "title"),
        (
            "/api/v1/tasks",
            json!({"title": "x", "status": "doing"}),
            "status",
        ),
        (
            "/api/v1/tasks",
            json!({"title": "x", "colour": "red"}),
            "colour",
        ),
        (
            "/api/v1/tasks",
            json!({"title": "x", "goal_id": "not-a-uuid"}),
            "goal_id",
        ),
        (
            "/api/v1/tasks",
            json!({"title": "x", "goal_id": "0193f0c1-7a2b-7c3d-8e4f-5a6b7c8d9e0f"}),
            "goal_id",
        ),
        (
            "/api/v1/tasks",
            json!({"title": "x", "due_at": "soon"}),
            "due_at",
        ),
        ("/api/v1/tasks", json!({"title": "x".repeat(501)}), "title"),
        (
            "/api/v1/tool-calls",
            json!({"tool": "t", "duration_ms": -1}),
            "duration_ms",
        ),
        (
            "/api/v1/decisions",
            json!({"what": "x", "alternatives": "a"}),
            "alternatives",
        ),
        (
            "/api/v1/patterns",
            json!({"trigger": "t", "action": "a", "confidence": 0.9}),
            "confidence",
        ),
        ("/api/v1/sessions", json!({"status": "paused"}), "status"),
        (
            "/api/v1/goals",
            json!({"title": "g", "user_id": 7}),
            "user_id",
        ),
    ];
    for (path, body, field) in cases {
        let r = app.post(path, body.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{path} {body}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{path} {body}: {}", r.body);
    }
    app.get("/api/v1/tasks?per_page=0").await.assert_error(
        422,
        "validation_failed",
        Some("per_page"),
    );
    app.get("/api/v1/tasks?status=late").await.assert_error(
        422,
        "validation_failed",
        Some("status"),
    );
    app.get("/api/v1/tasks?task_id=x").await.assert_error(
        422,
        "validation_failed",
        Some("task_id"),
    );
    app.get("/api/v1/tasks?cursor=zzz").await.assert_error(
        422,
        "validation_failed",
        Some("cursor"),
    );
    app.get("/api/v1/tasks?nope=1")
        .await
        .assert_error(422, "validation_failed", Some("nope"));
    app.get("/api/v1/tasks/12")
        .await
        .assert_error(422, "validation_failed", Some("id"));
    let session = created(&app, "/api/v1/sessions", json!({})).await;
    let r = app
        .post(
            &format!("/api/v1/sessions/{}/messages", id(&session)),
            json!({"role": "bot", "content": "hi"}),
        )
        .await;
    r.assert_error(422, "validation_failed", Some("role"));
    let r = app
        .post(
            &format!("/api/v1/sessions/{}/messages", id(&session)),
            json!({"role": "user", "content": "hi", "user_id": "u"}),
        )
        .await;
    r.assert_error(422, "validation_failed", Some("user_id"));
    // Malformed JSON is 400; a message of a missing session is 404.
    let r = app
        .raw(
            Method::POST,
            "/api/v1/tasks",
            b"{".to_vec(),
            Some("application/json"),
        )
        .await;
    r.assert_error(400, "invalid_json", None);
    let r = app
        .post(
            "/api/v1/sessions/0193f0c1-7a2b-7c3d-8e4f-5a6b7c8d9e0f/messages",
            json!({"role": "user", "content": "hi"}),
        )
        .await;
    r.assert_error(404, "not_found", None);
    // A task's id does not name a goal.
    let task = created(&app, "/api/v1/tasks", json!({"title": "t"})).await;
    app.get(&format!("/api/v1/goals/{}", id(&task)))
        .await
        .assert_error(404, "not_found", None);
}

#[tokio::test]
async fn another_tenant_sees_nothing() {
    let app = spawn_app().await;
    let other = app.key_for("tenant-b").await;
    let task = created(&app, "/api/v1/tasks", json!({"title": "secret plan"})).await;
    let session = created(&app, "/api/v1/sessions", json!({})).await;
    let msg = created(
        &app,
        &format!("/api/v1/sessions/{}/messages", id(&session)),
        json!({"role": "user", "content": "the password is swordfish"}),
    )
    .await;
    app.put("/api/v1/agents/a/state/k", json!({"value": 1}))
        .await;
    let as_b = |m: Method, p: String| {
        let app = &app;
        let other = other.clone();
        async move { app.send(m, &p, Some(&other), None, &[]).await }
    };
    for path in [
        format!("/api/v1/tasks/{}", id(&task)),
        format!("/api/v1/sessions/{}", id(&session)),
        format!("/api/v1/sessions/{}/messages/{}", id(&session), id(&msg)),
        "/api/v1/agents/a/state/k".to_owned(),
    ] {
        as_b(Method::GET, path.clone())
            .await
            .assert_error(404, "not_found", None);
        as_b(Method::DELETE, path)
            .await
            .assert_error(404, "not_found", None);
    }
    let r = app
        .send(
            Method::PATCH,
            &format!("/api/v1/tasks/{}", id(&task)),
            Some(&other),
            Some(&json!({"title": "mine"})),
            &[],
        )
        .await;
    r.assert_error(404, "not_found", None);
    for path in [
        "/api/v1/tasks",
        "/api/v1/sessions",
        "/api/v1/agents/a/state",
    ] {
        let r = as_b(Method::GET, path.to_owned()).await;
        assert_eq!(r.body["data"], json!([]), "{path}");
    }
    let r = as_b(Method::GET, "/api/v1/memories".to_owned()).await;
    assert_eq!(
        r.body["data"],
        json!([]),
        "mirror memories are the tenant's too"
    );
    // Still there for its owner.
    assert_eq!(
        app.get(&format!("/api/v1/tasks/{}", id(&task)))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn mirrors_follow_their_records_and_patterns_count_outcomes() {
    let app = spawn_app().await;
    let d = created(
        &app,
        "/api/v1/decisions",
        json!({"what": "Adopt Rust", "why": "speed"}),
    )
    .await;
    let mem = format!("/api/v1/memories/{}", d["memory_id"].as_str().unwrap());
    let m = app.get(&mem).await.body;
    assert_eq!(m["memory_type"], "decision");
    assert!(m["content"].as_str().unwrap().contains("Adopt Rust"));
    assert!(m["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("kind:decision")));
    app.patch(
        &format!("/api/v1/decisions/{}", id(&d)),
        json!({"what": "Adopt Rust and Python"}),
    )
    .await;
    assert!(app.get(&mem).await.body["content"]
        .as_str()
        .unwrap()
        .contains("and Python"));
    // Keyword search finds it at once, across tiers.
    let hits = app
        .post(
            "/api/v1/search",
            json!({"query": "Python", "mode": "keyword"}),
        )
        .await;
    assert_eq!(hits.body["hits"][0]["memory"]["id"], d["memory_id"]);
    let similar = app
        .post("/api/v1/decisions/similar", json!({"text": "Python"}))
        .await;
    assert_eq!(similar.status, StatusCode::OK, "{}", similar.body);
    assert_eq!(similar.body["hits"][0]["record"]["id"], d["id"]);
    app.post("/api/v1/decisions/similar", json!({"text": " "}))
        .await
        .assert_error(422, "validation_failed", Some("text"));
    app.delete(&format!("/api/v1/decisions/{}", id(&d))).await;
    app.get(&mem).await.assert_error(404, "not_found", None);

    let p = created(
        &app,
        "/api/v1/patterns",
        json!({"trigger": "disk full", "action": "prune caches"}),
    )
    .await;
    let outcome = format!("/api/v1/patterns/{}/outcome", id(&p));
    for ok in [true, true, true, false] {
        let r = app.post(&outcome, json!({"success": ok})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let p = app.get(&format!("/api/v1/patterns/{}", id(&p))).await.body;
    assert_eq!(p["success_count"], 3);
    assert_eq!(p["failure_count"], 1);
    assert_eq!(p["confidence"], 0.6667);
    let found = app
        .post(
            "/api/v1/patterns/match",
            json!({"text": "the disk is full"}),
        )
        .await;
    assert_eq!(found.body["hits"][0]["record"]["id"], p["id"]);
}

#[tokio::test]
async fn an_evicted_critical_event_is_kept_and_cited() {
    let app = spawn_app_ops(engram_core::ops::OpsConfig {
        capacity: 3,
        ..Default::default()
    })
    .await;
    let ev = "/api/v1/agents/ops-bot/events";
    let r = app
        .post(ev, json!({"category": "db", "severity": "critical", "payload": {"error": "replica lag 90s"}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for i in 0..5 {
        let r = app
            .post(ev, json!({"category": "tick", "payload": i}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let recent = app.get(&format!("{ev}?count=10")).await;
    let events = recent.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 3, "the ring holds its capacity");
    assert_eq!(events[0]["payload"], 4, "newest first");
    assert!(events.iter().all(|e| e["category"] == "tick"));
    let ticks = app.get(&format!("{ev}?count=2&category=tick")).await;
    assert_eq!(ticks.body["events"].as_array().unwrap().len(), 2);
    app.get(&format!("{ev}?count=0"))
        .await
        .assert_error(422, "validation_failed", Some("count"));
    app.post(ev, json!({"category": "x", "severity": "fatal"}))
        .await
        .assert_error(422, "validation_failed", Some("severity"));

    // Evicted from the ring, the critical event lives on in the working tier.
    let ctx = app
        .post("/api/v1/context", json!({"task": "why is the database replica lagging", "scope": {"agent_id": "ops-bot"}}))
        .await;
    assert_eq!(ctx.status, StatusCode::OK, "{}", ctx.body);
    let rendered = ctx.body["rendered"].as_str().unwrap();
    assert!(rendered.contains("replica lag 90s"), "{rendered}");
}

#[tokio::test]
async fn context_cites_everything_an_agent_logged() {
    let app = spawn_app().await;
    let agent = "builder";
    let r = app
        .put(
            &format!("/api/v1/agents/{agent}/metrics/queue_depth"),
            json!({"value": 17}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = app
        .post(&format!("/api/v1/agents/{agent}/events"), json!({"category": "deploy", "severity": "critical", "payload": "rollback of release 42"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let task = created(
        &app,
        "/api/v1/tasks",
        json!({"title": "Fix the release pipeline", "agent_id": agent, "status": "in_progress"}),
    )
    .await;
    let decision = created(&app, "/api/v1/decisions", json!({"what": "Pin the release pipeline to runner v2", "why": "v3 breaks caching", "agent_id": agent})).await;
    let call = created(&app, "/api/v1/tool-calls", json!({"tool": "ci.rerun", "arguments": {"pipeline": "release"}, "agent_id": agent, "status": "failed", "error": "release pipeline cache miss"})).await;
    app.create(
        json!({"content": "The release pipeline runs on self-hosted runners", "agent_id": agent}),
    )
    .await;

    let snap = app.get(&format!("/api/v1/agents/{agent}/snapshot")).await;
    assert_eq!(snap.status, StatusCode::OK, "{}", snap.body);
    assert_eq!(snap.body["metrics"]["queue_depth"]["value"], 17);
    assert_eq!(snap.body["active_tasks"][0]["id"], task["id"]);
    assert_eq!(snap.body["recent_critical"][0]["category"], "deploy");
    // A task scoped to another agent but assigned to this one is active for it; a
    // finished one is not, nor is another agent's own.
    created(
        &app,
        "/api/v1/tasks",
        json!({"title": "Plan the sprint", "agent_id": "planner", "status": "open"}),
    )
    .await;
    let assigned = created(
        &app,
        "/api/v1/tasks",
        json!({"title": "Review the runner upgrade", "agent_id": "planner", "assigned_agent": agent, "status": "open"}),
    )
    .await;
    created(
        &app,
        "/api/v1/tasks",
        json!({"title": "Old chore", "agent_id": "planner", "assigned_agent": agent, "status": "done"}),
    )
    .await;
    let snap = app.get(&format!("/api/v1/agents/{agent}/snapshot")).await;
    let active: Vec<&serde_json::Value> = snap.body["active_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(active, [&assigned["id"], &task["id"]], "{}", snap.body);

    let ctx = app
        .post("/api/v1/context", json!({"task": "fix the release pipeline", "scope": {"agent_id": agent}, "max_tokens": 2000}))
        .await;
    assert_eq!(ctx.status, StatusCode::OK, "{}", ctx.body);
    let rendered = ctx.body["rendered"].as_str().unwrap();
    let chunks = ctx.body["chunks"].as_array().unwrap();
    for source in [
        format!("task:{}", id(&task)),
        format!("decision:{}", id(&decision)),
        format!("tool_call:{}", id(&call)),
    ] {
        assert!(rendered.contains(&source), "{source} cited in:\n{rendered}");
        assert!(chunks.iter().any(|c| c["source_id"] == source.as_str()));
    }
    assert!(rendered.contains("queue_depth=17"), "{rendered}");
    assert!(rendered.contains("rollback of release 42"), "{rendered}");
    assert!(rendered.contains("self-hosted runners"), "{rendered}");
    assert!(ctx.body["total_tokens"].as_u64().unwrap() <= 2000);
    assert_eq!(chunks[0]["tier"], "operational", "the snapshot comes first");
    let tiers: Vec<&str> = chunks.iter().map(|c| c["tier"].as_str().unwrap()).collect();
    let mut sorted = tiers.clone();
    sorted.sort_by_key(|t| {
        ["operational", "working", "long_term", "knowledge"]
            .iter()
            .position(|x| x == t)
    });
    assert_eq!(tiers, sorted, "chunks are grouped by tier in order");

    // A small budget is honoured, with the o200k tokenizer too.
    let small = app
        .post("/api/v1/context", json!({"task": "release pipeline", "scope": {"agent_id": agent}, "max_tokens": 40, "tokenizer": "o200k"}))
        .await;
    assert_eq!(small.status, StatusCode::OK, "{}", small.body);
    assert!(
        small.body["total_tokens"].as_u64().unwrap() <= 40,
        "{}",
        small.body
    );
    // Only the tiers asked for.
    let knowledge = app
        .post("/api/v1/context", json!({"task": "release pipeline", "scope": {"agent_id": agent}, "tiers": ["knowledge"]}))
        .await;
    assert!(
        knowledge.body["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["tier"] == "knowledge"),
        "{}",
        knowledge.body
    );
}

#[tokio::test]
async fn context_rejects_bad_input_by_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"task": ""}), "task"),
        (json!({"task": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"task": "x", "max_tokens": 200001}), "max_tokens"),
        (
            json!({"task": "x", "tiers": ["working", "dreams"]}),
            "tiers[1]",
        ),
        (json!({"task": "x", "tokenizer": "gpt2"}), "tokenizer"),
        (
            json!({"task": "x", "quotas": {"working": 0}}),
            "quotas.working",
        ),
        (json!({"task": "x", "quotas": {"soon": 10}}), "quotas.soon"),
        (json!({"task": "x", "scope": {"team": "a"}}), "scope.team"),
        (json!({"task": "x", "budget": 10}), "budget"),
    ];
    for (body, field) in cases {
        let r = app.post("/api/v1/context", body.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.body);
    }
}
