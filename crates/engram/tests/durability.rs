//! Durability: `engram serve` as a child process takes writes from 8 concurrent clients,
//! is killed with SIGKILL mid-stream, restarted on the same data directory, and every
//! write that was acknowledged with a 2xx must be there, intact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

mod common;

use common::{create_key, serve};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path());
    let (mut child, base) = serve(dir.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // (id, content) of every acknowledged single create; (ids, contents) of bulk creates.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, base, key, acked, stop) = (
            http.clone(),
            base.clone(),
            key.clone(),
            acked.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                if c == 7 && i % 5 == 0 {
                    let items: Vec<Value> = (0..20)
                        .map(|k| json!({"content": format!("bulk {c}-{i}-{k}")}))
                        .collect();
                    let r = http
                        .post(format!("{base}/api/v1/memories/bulk"))
                        .bearer_auth(&key)
                        .json(&json!({ "memories": items }))
                        .send()
                        .await;
                    let Ok(r) = r else { break };
                    if !r.status().is_success() {
                        break;
                    }
                    let Ok(body) = r.json::<Value>().await else {
                        break;
                    };
                    let mut acked = acked.lock().unwrap();
                    for item in body["items"].as_array().unwrap() {
                        let k = item["index"].as_u64().unwrap();
                        acked.push((
                            item["id"].as_str().unwrap().to_owned(),
                            format!("bulk {c}-{i}-{k}"),
                        ));
                    }
                    continue;
                }
                let content = format!("client {c} write {i}");
                let r = http
                    .post(format!("{base}/api/v1/memories"))
                    .bearer_auth(&key)
                    .json(&json!({ "content": content, "tags": [format!("c{c}")] }))
                    .send()
                    .await;
                // Connection errors after the kill are expected: those writes were never acknowledged.
                let Ok(r) = r else { break };
                if r.status().as_u16() != 201 {
                    break;
                }
                let Ok(body) = r.json::<Value>().await else {
                    break;
                };
                acked
                    .lock()
                    .unwrap()
                    .push((body["id"].as_str().unwrap().to_owned(), content));
            }
        }));
    }
    // Let the writes flow, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too few writes were acknowledged to prove anything: {}",
        acked.len()
    );

    // Restart on the same directory; every acknowledged write is there.
    let (mut child, base) = serve(dir.path());
    let mut missing = Vec::new();
    for (id, content) in &acked {
        let r = http
            .get(format!("{base}/api/v1/memories/{id}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() != 200 {
            missing.push(id.clone());
            continue;
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["content"], content.as_str());
    }
    let total: Value =
        common::get_json(&http, &format!("{base}/api/v1/memories?per_page=1"), &key).await;
    child.kill();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes were lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // Unacknowledged writes may or may not have landed, but nothing acknowledged is missing.
    assert!(total["meta"]["total"].as_u64().unwrap() >= acked.len() as u64);
    eprintln!("{} acknowledged writes all survived SIGKILL", acked.len());
}

/// SIGTERM drains requests, stops the workers and flushes deferred writes (the read time
/// of a memory read just before) before exiting 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path());
    let (mut child, base) =
        common::serve_with(dir.path(), &[("ENGRAM__PIPELINE__ENABLED", "false")], &[]);
    let http = reqwest::Client::new();
    let m: Value = common::post_json(
        &http,
        &format!("{base}/api/v1/memories"),
        &key,
        &json!({ "content": "read me, then stop" }),
    )
    .await;
    let id = m["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let read: Value = common::get_json(&http, &format!("{base}/api/v1/memories/{id}"), &key).await;
    assert!(read["accessed_at"].as_str().unwrap() > m["accessed_at"].as_str().unwrap());
    // Stop at once, sooner than the deferred accessed_at flush would run on its own.
    let status = child.terminate();
    assert!(status.success(), "engram serve exited with {status}");

    let (mut child, base) =
        common::serve_with(dir.path(), &[("ENGRAM__PIPELINE__ENABLED", "false")], &[]);
    let list: Value = common::get_json(
        &http,
        &format!("{base}/api/v1/memories?sort_by=accessed_at"),
        &key,
    )
    .await;
    assert_eq!(
        list["data"][0]["accessed_at"], read["accessed_at"],
        "the read time was flushed at shutdown"
    );
    child.kill();
}
