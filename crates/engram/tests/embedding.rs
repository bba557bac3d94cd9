//! The embedding pipeline end to end, through the `engram` binary: with the real
//! all-MiniLM-L6-v2 model memories become `completed`; with no model engram still takes
//! writes and `/readyz` says what to fix; `engram embed` matches the reference vectors.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{create_key, serve_with};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_engram");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_writes_work_and_readyz_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let empty_cache = tempfile::tempdir().unwrap();
    let key = create_key(dir.path());
    let (mut server, base) = serve_with(
        dir.path(),
        &[
            ("ENGRAM__EMBEDDING__LOCAL__ALLOW_DOWNLOAD", "false"),
            ("ENGRAM__EMBEDDING__LOCAL__USE_HF_CACHE", "false"),
            (
                "ENGRAM__EMBEDDING__LOCAL__CACHE_DIR",
                empty_cache.path().to_str().unwrap(),
            ),
        ],
        &["ENGRAM__EMBEDDING__MODEL_DIR"],
    );
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/memories"))
        .bearer_auth(&key)
        .json(&json!({"content": "written without a model"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The embedder check settles to "unavailable" with the fix, and the server stays ready
    // for writes (degraded, not down).
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let r = http.get(format!("{base}/readyz")).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if body["status"] == "degraded"
            && !body["checks"]["embedder"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("loading")
        {
            assert_eq!(status, 200);
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "readyz never reported the missing model: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["checks"]["store"]["ok"], true);
    assert_eq!(ready["checks"]["embedder"]["ok"], false);
    let why = ready["checks"]["embedder"]["error"].as_str().unwrap();
    assert!(
        why.contains("ENGRAM__EMBEDDING__MODEL_DIR"),
        "the message names the fix: {why}"
    );
    assert!(why.contains("pip"), "the message names the fix: {why}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = common::get_json(&http, &format!("{base}/api/v1/memories/{id}"), &key).await;
    assert_eq!(m["embedding_status"], "pending");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_memories_are_embedded_by_the_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let key = create_key(dir.path());
    let (mut server, base) = serve_with(dir.path(), &[], &[]);
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for text in [
        "The deploy failed because the cache was cold.",
        "Alice prefers tea over coffee.",
        "Alice prefers tea over coffee.",
    ] {
        let r = http
            .post(format!("{base}/api/v1/memories"))
            .bearer_auth(&key)
            .json(&json!({ "content": text }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The first start may fetch the model (pip), so allow for it.
    let deadline = Instant::now() + Duration::from_secs(600);
    for id in &ids {
        loop {
            let m = common::get_json(&http, &format!("{base}/api/v1/memories/{id}"), &key).await;
            if m["embedding_status"] == "completed" {
                assert_eq!(
                    m["embedding_model"],
                    "sentence-transformers/all-MiniLM-L6-v2"
                );
                assert!(m["embedding_updated_at"].is_string());
                break;
            }
            assert_ne!(m["embedding_status"], "failed", "{m}");
            assert!(
                Instant::now() < deadline,
                "memory {id} never completed: {m}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ready: Value = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("engram_embeddings_total"), "{metrics}");
    assert!(metrics.contains("engram_embedding_batch_seconds"));
    server.kill();
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn engram_embed_json_matches_the_reference_vectors() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../engram-embed/tests/fixtures/reference.json"
        ))
        .expect("the reference fixture"),
    )
    .unwrap();
    let sentences: Vec<&str> = fixture["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let picked = [0usize, 2, 4];
    let mut cmd = Command::new(BIN);
    cmd.arg("embed").arg("--json").env_remove("ENGRAM_CONFIG");
    for i in picked {
        cmd.arg(sentences[i]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "engram embed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(v["dim"], 384);
    let vectors = v["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), picked.len());
    for (k, i) in picked.iter().enumerate() {
        let got: Vec<f64> = vectors[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let want: Vec<f64> = fixture["vectors"][*i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 384);
        let c = cosine(&got, &want);
        assert!(c >= 0.9999, "sentence {i}: cosine {c}");
    }
}

#[test]
fn reembed_embeds_every_memory_and_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("ENGRAM_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let mut ids = Vec::new();
    for text in ["first memory for reembed", "second memory for reembed"] {
        ids.push(
            run(&["add", text, "--json"])["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let report = run(&["reembed", "--json"]);
    assert_eq!(report["model"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(report["dim"], 384);
    assert_eq!(
        report["embedded"].as_u64().unwrap() + report["cache_hits"].as_u64().unwrap(),
        2
    );
    for id in &ids {
        let m = run(&["get", id, "--json"]);
        assert_eq!(m["embedding_status"], "completed");
        assert_eq!(
            m["embedding_model"],
            "sentence-transformers/all-MiniLM-L6-v2"
        );
    }
    // Nothing left to do the second time.
    let again = run(&["reembed", "--json"]);
    assert_eq!(again["embedded"], 0);
    assert_eq!(again["was_active"], true);
}
