//! Three `engram serve` replicas on one Postgres and one Redis behave as one server:
//! eight clients write, read and search through all of them; every write is stored once,
//! every memory embedded once (by the real model), no request gets a 5xx, and a read
//! through any replica right after a write sees it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{engram_ok, get_json, postgres_url, redis_url, serve_with};
use serde_json::{json, Value};

const REPLICAS: usize = 3;
const CLIENTS: usize = 8;
const WRITES: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_store_and_one_cache() {
    let pg = postgres_url();
    let schema = format!("replicas_{}", uuid_like());
    let prefix = format!("replicas{}", &uuid_like()[..12]);
    let redis = redis_url();
    let env: Vec<(&str, &str)> = vec![
        ("ENGRAM__STORE__URL", pg.as_str()),
        ("ENGRAM__STORE__SCHEMA", schema.as_str()),
        ("ENGRAM__STORE__POOL_SIZE", "8"),
        ("ENGRAM__CACHE__URL", redis.as_str()),
        ("ENGRAM__CACHE__PREFIX", prefix.as_str()),
        ("ENGRAM__PIPELINE__WORKERS", "1"),
    ];
    let dirs: Vec<tempfile::TempDir> = (0..REPLICAS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    // The key goes to Postgres, named by the environment.
    let created = engram_ok(
        &[
            "keys",
            "create",
            "--tenant",
            "team",
            "--json",
            "--data-dir",
            dirs[0].path().to_str().unwrap(),
        ],
        &env,
    );
    let key = serde_json::from_str::<Value>(&created).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut servers = Vec::new();
    let mut bases = Vec::new();
    for d in &dirs {
        let (s, base) = serve_with(d.path(), &env, &[]);
        servers.push(s);
        bases.push(base);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let bases = Arc::new(bases);
    let five_xx = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, bases, key, five_xx) =
            (http.clone(), bases.clone(), key.clone(), five_xx.clone());
        tasks.push(tokio::spawn(async move {
            let mut written: Vec<(String, String)> = Vec::new();
            for i in (c..WRITES).step_by(CLIENTS) {
                let content = format!("client {c} write {i}: the replica test note number {i}");
                let (w, r) = (bases[i % REPLICAS].clone(), bases[(i + 1) % REPLICAS].clone());
                let resp = http
                    .post(format!("{w}/api/v1/memories"))
                    .bearer_auth(&key)
                    .json(&json!({ "content": content, "user_id": format!("u{}", i % 10) }))
                    .send()
                    .await
                    .unwrap();
                if resp.status().is_server_error() {
                    five_xx.fetch_add(1, Ordering::SeqCst);
                }
                assert_eq!(resp.status(), 201, "write {i} through {w}");
                let id = resp.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                // Read it back through another replica, at once.
                let resp = http
                    .get(format!("{r}/api/v1/memories/{id}"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                if resp.status().is_server_error() {
                    five_xx.fetch_add(1, Ordering::SeqCst);
                }
                assert_eq!(resp.status(), 200, "read of {id} through {r}");
                let m: Value = resp.json().await.unwrap();
                assert_eq!(m["content"], content.as_str());
                if i % 20 == 0 {
                    let s = bases[(i + 2) % REPLICAS].clone();
                    let resp = http
                        .post(format!("{s}/api/v1/search"))
                        .bearer_auth(&key)
                        .json(&json!({ "query": format!("note number {i}"), "mode": "keyword", "k": 5 }))
                        .send()
                        .await
                        .unwrap();
                    if resp.status().is_server_error() {
                        five_xx.fetch_add(1, Ordering::SeqCst);
                    }
                    assert_eq!(resp.status(), 200, "search through {s}");
                    let hits: Value = resp.json().await.unwrap();
                    assert!(
                        hits["hits"].as_array().unwrap().iter().any(|h| h["memory"]["id"] == id.as_str()),
                        "a keyword search right after the write finds it: {hits}"
                    );
                }
                written.push((id, content));
            }
            written
        }));
    }
    let mut written: HashMap<String, String> = HashMap::new();
    for t in tasks {
        for (id, content) in t.await.unwrap() {
            assert!(
                written.insert(id, content).is_none(),
                "an id was returned twice"
            );
        }
    }
    assert_eq!(written.len(), WRITES);
    assert_eq!(five_xx.load(Ordering::SeqCst), 0, "no request got a 5xx");

    // Every memory gets embedded (the first start may fetch the model).
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let page = get_json(
            &http,
            &format!(
                "{}/api/v1/memories?embedding_status=completed&per_page=1",
                bases[0]
            ),
            &key,
        )
        .await;
        if page["meta"]["total"].as_u64() == Some(WRITES as u64) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every memory was embedded: {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Stored once each, and embedded once each: created at version 1, claimed once (2),
    // completed once (3). A second claim would have left a higher version.
    let mut seen: HashSet<String> = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/api/v1/memories?per_page=100&sort_order=asc", bases[1]);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page = get_json(&http, &url, &key).await;
        for m in page["data"].as_array().unwrap() {
            let id = m["id"].as_str().unwrap().to_owned();
            assert_eq!(
                written.get(&id).map(String::as_str),
                m["content"].as_str(),
                "stored memory {id} matches what was written"
            );
            assert_eq!(m["version"], 3, "memory {id} was embedded once: {m}");
            assert_eq!(m["embedding_status"], "completed");
            assert!(seen.insert(id), "a memory was listed twice");
        }
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), WRITES, "every write stored once");

    // The working tier is in Postgres and the operational tier in Redis: any replica
    // answers for a record or an agent's events another replica took.
    let task = http
        .post(format!("{}/api/v1/tasks", bases[0]))
        .bearer_auth(&key)
        .json(&serde_json::json!({"title": "ship the replicas", "agent_id": "fleet"}))
        .send()
        .await
        .unwrap();
    assert_eq!(task.status().as_u16(), 201);
    let task: Value = task.json().await.unwrap();
    let event = http
        .post(format!("{}/api/v1/agents/fleet/events", bases[1]))
        .bearer_auth(&key)
        .json(&serde_json::json!({"category": "deploy", "severity": "critical", "payload": "rolled out"}))
        .send()
        .await
        .unwrap();
    assert_eq!(event.status().as_u16(), 201);
    let snap = get_json(
        &http,
        &format!("{}/api/v1/agents/fleet/snapshot", bases[2]),
        &key,
    )
    .await;
    assert_eq!(snap["active_tasks"][0]["id"], task["id"], "{snap}");
    assert_eq!(
        snap["recent_critical"][0]["payload"], "rolled out",
        "{snap}"
    );
    for s in &mut servers {
        s.kill();
    }
    drop_schema(&pg, &schema);
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{:016x}{:08x}", h.finish(), std::process::id())
}

/// Removes the test's schema (psql is on every machine that has a Postgres to test).
fn drop_schema(url: &str, schema: &str) {
    let _ = std::process::Command::new("psql")
        .args([
            url,
            "-qAt",
            "-c",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output();
}
