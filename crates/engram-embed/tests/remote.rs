//! Ollama and OpenAI-compatible embedders against stand-in servers on 127.0.0.1 that speak
//! the documented JSON, and the fallback chain across them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use engram_embed::{
    build, EmbedError, Embedder, EmbeddingConfig, FallbackEmbedder, OllamaConfig, OllamaEmbedder,
    OpenAiConfig, OpenAiEmbedder, ProviderKind,
};
use serde_json::{json, Value};

/// What the stand-in does with the next request.
#[derive(Clone, Debug)]
enum Reply {
    Ok,
    Status(u16),
    RateLimited { retry_after_secs: u64 },
    Slow(Duration),
}

#[derive(Clone, Debug)]
struct Seen {
    path: String,
    auth: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Shared {
    script: Arc<Mutex<VecDeque<Reply>>>,
    /// Used when the script is empty.
    fallback: Arc<Mutex<Option<Reply>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    dim: usize,
}

struct StandIn {
    base: String,
    shared: Shared,
}

impl StandIn {
    async fn start(dim: usize) -> Self {
        let shared = Shared {
            dim,
            ..Shared::default()
        };
        let app = Router::new()
            .route("/api/embed", post(ollama))
            .route("/v1/embeddings", post(openai))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, shared }
    }

    fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    fn always(&self, reply: Reply) {
        *self.shared.fallback.lock().unwrap() = Some(reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// A deterministic, non-normalised vector for a text.
fn vector_for(text: &str, dim: usize) -> Vec<f32> {
    let seed = text
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..dim)
        .map(|i| {
            ((seed.wrapping_add((i as u32).wrapping_mul(2_654_435_761)) % 1000) as f32 / 100.0)
                + 1.0
        })
        .collect()
}

async fn handle(
    s: &Shared,
    path: &str,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Vec<Vec<f32>>, Response> {
    s.seen.lock().unwrap().push(Seen {
        path: path.to_string(),
        auth: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string()),
        body: body.clone(),
    });
    let reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| s.fallback.lock().unwrap().clone())
        .unwrap_or(Reply::Ok);
    match reply {
        Reply::Ok => {}
        Reply::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap();
            return Err(
                (status, Json(json!({"error": format!("scripted {code}")}))).into_response()
            );
        }
        Reply::RateLimited { retry_after_secs } => {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
                "slow down",
            )
                .into_response());
        }
        Reply::Slow(d) => tokio::time::sleep(d).await,
    }
    let inputs = body["input"].as_array().expect("input is an array");
    Ok(inputs
        .iter()
        .map(|t| vector_for(t.as_str().unwrap(), s.dim))
        .collect())
}

async fn ollama(State(s): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    match handle(&s, "/api/embed", &headers, &body).await {
        Ok(vs) => Json(json!({"model": body["model"], "embeddings": vs})).into_response(),
        Err(r) => r,
    }
}

async fn openai(State(s): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    match handle(&s, "/v1/embeddings", &headers, &body).await {
        Ok(vs) => {
            // Documented order is by index; send it reversed to check the client sorts.
            let data: Vec<Value> = vs
                .into_iter()
                .enumerate()
                .rev()
                .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
                .collect();
            Json(json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}}))
                .into_response()
        }
        Err(r) => r,
    }
}

fn ollama_cfg(base: &str) -> OllamaConfig {
    OllamaConfig {
        base_url: base.to_string(),
        model: "nomic-embed-text".into(),
        timeout_ms: 2_000,
        max_retries: 3,
        backoff_ms: 10,
        ..OllamaConfig::default()
    }
}

fn openai_cfg(base: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: base.to_string(),
        model: "text-embedding-3-small".into(),
        api_key_env: "ENGRAM_TEST_UNUSED_KEY_VAR".into(),
        timeout_ms: 2_000,
        max_retries: 3,
        backoff_ms: 10,
        ..OpenAiConfig::default()
    }
}

fn dead_base() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    base
}

fn unit(v: &[f32]) -> bool {
    (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt() - 1.0).abs() < 1e-5
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("text number {i}")).collect()
}

#[tokio::test]
async fn ollama_speaks_the_documented_api() {
    let s = StandIn::start(8).await;
    let e = OllamaEmbedder::new(&ollama_cfg(&s.base)).unwrap();
    assert_eq!(e.model().dim, 0, "unknown until the first answer");
    let docs = e.embed_documents(&texts(3)).await.unwrap();
    assert_eq!(docs.len(), 3);
    for (i, d) in docs.iter().enumerate() {
        assert_eq!(d.windows.len(), 1);
        assert!(unit(&d.windows[0]));
        let mut want = vector_for(&format!("text number {i}"), 8);
        let n = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        want.iter_mut().for_each(|x| *x /= n);
        assert!(
            d.windows[0]
                .iter()
                .zip(&want)
                .all(|(a, b)| (a - b).abs() < 1e-6),
            "order kept"
        );
    }
    let info = e.model();
    assert_eq!(
        (info.id.as_str(), info.revision.as_str(), info.dim),
        ("ollama:nomic-embed-text", "nomic-embed-text", 8)
    );
    let seen = s.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/api/embed");
    assert_eq!(
        seen[0].body,
        json!({"model": "nomic-embed-text", "input": ["text number 0", "text number 1", "text number 2"]})
    );
    assert_eq!(seen[0].auth, None);
    let q = e.embed_query("a query").await.unwrap();
    assert_eq!(q.len(), 8);
    assert_eq!(s.seen()[1].body["input"], json!(["a query"]));
}

#[tokio::test]
async fn ollama_requests_are_cut_at_batch_size() {
    let s = StandIn::start(4).await;
    let e = OllamaEmbedder::new(&OllamaConfig {
        batch_size: 2,
        ..ollama_cfg(&s.base)
    })
    .unwrap();
    assert_eq!(e.embed_documents(&texts(5)).await.unwrap().len(), 5);
    let sizes: Vec<usize> = s
        .seen()
        .iter()
        .map(|r| r.body["input"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![2, 2, 1]);
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let s = StandIn::start(4).await;
    s.script([Reply::Status(500)]);
    let e = OllamaEmbedder::new(&ollama_cfg(&s.base)).unwrap();
    assert_eq!(e.embed_query("x").await.unwrap().len(), 4);
    assert_eq!(s.seen().len(), 2);
}

#[tokio::test]
async fn rate_limits_are_retried_honouring_retry_after() {
    let s = StandIn::start(4).await;
    s.script([
        Reply::RateLimited {
            retry_after_secs: 1,
        },
        Reply::Status(429),
    ]);
    let e = OllamaEmbedder::new(&ollama_cfg(&s.base)).unwrap();
    let t = Instant::now();
    assert_eq!(e.embed_query("x").await.unwrap().len(), 4);
    assert_eq!(s.seen().len(), 3);
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );
}

#[tokio::test]
async fn bad_request_is_rejected_without_retry() {
    let s = StandIn::start(4).await;
    s.always(Reply::Status(400));
    let e = OllamaEmbedder::new(&ollama_cfg(&s.base)).unwrap();
    let err = e.embed_query("x").await.unwrap_err();
    let EmbedError::Rejected(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("ollama")
            && msg.contains(&s.base)
            && msg.contains("400")
            && msg.contains("scripted 400"),
        "{msg}"
    );
    assert_eq!(s.seen().len(), 1);
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_max_retries() {
    let s = StandIn::start(4).await;
    s.always(Reply::Status(502));
    let e = OllamaEmbedder::new(&OllamaConfig {
        max_retries: 2,
        ..ollama_cfg(&s.base)
    })
    .unwrap();
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Other(m) if m.contains("502")),
        "{err:?}"
    );
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn slow_answers_time_out() {
    let s = StandIn::start(4).await;
    s.always(Reply::Slow(Duration::from_secs(5)));
    let e = OllamaEmbedder::new(&OllamaConfig {
        timeout_ms: 200,
        max_retries: 1,
        ..ollama_cfg(&s.base)
    })
    .unwrap();
    let t = Instant::now();
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Timeout(m) if m.contains("200 ms") && m.contains(&s.base)),
        "{err:?}"
    );
    assert_eq!(s.seen().len(), 2, "a time-out is retried");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let base = dead_base();
    let e = OllamaEmbedder::new(&OllamaConfig {
        max_retries: 1,
        ..ollama_cfg(&base)
    })
    .unwrap();
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains(&base) && m.contains("unreachable")),
        "{err:?}"
    );
}

#[tokio::test]
async fn openai_speaks_the_documented_api_with_a_bearer_key() {
    let s = StandIn::start(6).await;
    let e = OpenAiEmbedder::with_key(&openai_cfg(&s.base), Some("sk-test-123".into())).unwrap();
    let docs = e.embed_documents(&texts(4)).await.unwrap();
    let seen = s.seen();
    assert_eq!(seen[0].path, "/v1/embeddings");
    assert_eq!(seen[0].auth.as_deref(), Some("Bearer sk-test-123"));
    assert_eq!(seen[0].body["model"], "text-embedding-3-small");
    assert_eq!(
        seen[0].body["input"],
        json!([
            "text number 0",
            "text number 1",
            "text number 2",
            "text number 3"
        ])
    );
    // The answer came in reverse index order: vectors must still follow the inputs.
    for (i, d) in docs.iter().enumerate() {
        let want = vector_for(&format!("text number {i}"), 6);
        let ratio = d.windows[0][0] / want[0];
        assert!(
            d.windows[0]
                .iter()
                .zip(&want)
                .all(|(a, b)| (a / b - ratio).abs() < 1e-5),
            "document {i} out of order"
        );
        assert!(unit(&d.windows[0]));
    }
    let info = e.model();
    assert_eq!(
        (info.id.as_str(), info.dim),
        ("openai:text-embedding-3-small", 6)
    );
}

#[tokio::test]
async fn openai_key_comes_from_the_named_variable_and_refusal_names_it() {
    let s = StandIn::start(4).await;
    // A variable name no one sets: no header is sent.
    let e = OpenAiEmbedder::new(&OpenAiConfig {
        base_url: format!("{}/v1", s.base),
        ..openai_cfg(&s.base)
    })
    .unwrap();
    e.embed_query("x").await.unwrap();
    assert_eq!(s.seen()[0].auth, None);
    assert_eq!(s.seen()[0].path, "/v1/embeddings");
    s.always(Reply::Status(401));
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains("ENGRAM_TEST_UNUSED_KEY_VAR") && m.contains("401")),
        "{err:?}"
    );
    assert_eq!(s.seen().len(), 2, "401 is not retried");
}

#[tokio::test]
async fn openai_retries_like_ollama() {
    let s = StandIn::start(4).await;
    s.script([Reply::Status(503), Reply::Status(429)]);
    let e = OpenAiEmbedder::with_key(&openai_cfg(&s.base), None).unwrap();
    assert_eq!(e.embed_query("x").await.unwrap().len(), 4);
    assert_eq!(s.seen().len(), 3);
    s.always(Reply::Status(422));
    assert!(matches!(
        e.embed_query("x").await,
        Err(EmbedError::Rejected(_))
    ));
    assert_eq!(s.seen().len(), 4);
}

#[tokio::test]
async fn a_dimension_change_is_an_error() {
    let s = StandIn::start(4).await;
    let e = OllamaEmbedder::new(&OllamaConfig {
        dim: Some(768),
        ..ollama_cfg(&s.base)
    })
    .unwrap();
    assert_eq!(e.model().dim, 768);
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Other(m) if m.contains("4-dimensional") && m.contains("768")),
        "{err:?}"
    );
}

#[tokio::test]
async fn fallback_picks_the_first_provider_that_answers() {
    let up = StandIn::start(5).await;
    let down: Arc<dyn Embedder> = Arc::new(
        OllamaEmbedder::new(&OllamaConfig {
            max_retries: 0,
            ..ollama_cfg(&dead_base())
        })
        .unwrap(),
    );
    let second: Arc<dyn Embedder> =
        Arc::new(OpenAiEmbedder::with_key(&openai_cfg(&up.base), None).unwrap());
    let chain = FallbackEmbedder::select(vec![down, second]).await.unwrap();
    assert_eq!(chain.model().id, "openai:text-embedding-3-small");
    assert_eq!(chain.model().dim, 5);
    assert_eq!(
        chain.standby_count(),
        0,
        "a different model is never a standby"
    );
    let docs = chain.embed_documents(&texts(2)).await.unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(up.seen().len(), 2, "probe, then the documents");
}

#[tokio::test]
async fn fallback_never_switches_models_mid_run() {
    let a = StandIn::start(4).await;
    let b = StandIn::start(4).await;
    let first: Arc<dyn Embedder> = Arc::new(
        OllamaEmbedder::new(&OllamaConfig {
            max_retries: 0,
            ..ollama_cfg(&a.base)
        })
        .unwrap(),
    );
    let other_model: Arc<dyn Embedder> =
        Arc::new(OpenAiEmbedder::with_key(&openai_cfg(&b.base), None).unwrap());
    let chain = FallbackEmbedder::select(vec![first, other_model])
        .await
        .unwrap();
    assert_eq!(chain.model().id, "ollama:nomic-embed-text");
    a.always(Reply::Status(500));
    let err = chain.embed_query("x").await.unwrap_err();
    assert!(matches!(err, EmbedError::Other(_)), "{err:?}");
    assert!(b.seen().is_empty(), "the other model was not asked");
    assert_eq!(chain.model().id, "ollama:nomic-embed-text");
}

#[tokio::test]
async fn fallback_fails_over_to_a_standby_serving_the_same_model() {
    let a = StandIn::start(4).await;
    let b = StandIn::start(4).await;
    let primary: Arc<dyn Embedder> = Arc::new(
        OllamaEmbedder::new(&OllamaConfig {
            max_retries: 0,
            ..ollama_cfg(&a.base)
        })
        .unwrap(),
    );
    let standby: Arc<dyn Embedder> = Arc::new(
        OllamaEmbedder::new(&OllamaConfig {
            max_retries: 0,
            ..ollama_cfg(&b.base)
        })
        .unwrap(),
    );
    let chain = FallbackEmbedder::select(vec![primary, standby])
        .await
        .unwrap();
    assert_eq!(chain.standby_count(), 1);
    a.always(Reply::Status(503));
    let docs = chain.embed_documents(&texts(3)).await.unwrap();
    assert_eq!(docs.len(), 3);
    assert_eq!(b.seen().len(), 1);
    // A rejection is about the input: no failover.
    a.always(Reply::Status(400));
    assert!(matches!(
        chain.embed_query("x").await,
        Err(EmbedError::Rejected(_))
    ));
    assert_eq!(b.seen().len(), 1);
}

#[tokio::test]
async fn fallback_with_nothing_working_names_every_provider() {
    let dead1 = dead_base();
    let dead2 = dead_base();
    let a: Arc<dyn Embedder> = Arc::new(
        OllamaEmbedder::new(&OllamaConfig {
            max_retries: 0,
            ..ollama_cfg(&dead1)
        })
        .unwrap(),
    );
    let b: Arc<dyn Embedder> = Arc::new(
        OpenAiEmbedder::with_key(
            &OpenAiConfig {
                max_retries: 0,
                ..openai_cfg(&dead2)
            },
            None,
        )
        .unwrap(),
    );
    let err = FallbackEmbedder::select(vec![a, b]).await.unwrap_err();
    let EmbedError::Unavailable(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("ollama:nomic-embed-text") && msg.contains("openai:text-embedding-3-small"),
        "{msg}"
    );
    assert!(msg.contains(&dead1) && msg.contains(&dead2), "{msg}");
}

#[tokio::test]
async fn build_follows_the_configured_chain() {
    let up = StandIn::start(3).await;
    let cfg = EmbeddingConfig {
        providers: vec![ProviderKind::Ollama, ProviderKind::OpenAi],
        ollama: OllamaConfig {
            max_retries: 0,
            ..ollama_cfg(&dead_base())
        },
        openai: openai_cfg(&up.base),
        ..EmbeddingConfig::default()
    };
    let e = build(&cfg).await.unwrap();
    assert_eq!(e.model().id, "openai:text-embedding-3-small");
    assert_eq!(e.model().dim, 3);
    assert_eq!(e.embed_query("q").await.unwrap().len(), 3);
}

#[tokio::test]
async fn build_of_a_lone_remote_with_known_dim_starts_while_it_is_down() {
    let base = dead_base();
    let mut cfg = EmbeddingConfig {
        providers: vec![ProviderKind::Ollama],
        ollama: OllamaConfig {
            dim: Some(768),
            max_retries: 0,
            ..ollama_cfg(&base)
        },
        ..EmbeddingConfig::default()
    };
    let e = build(&cfg).await.unwrap();
    assert_eq!(e.model().dim, 768);
    assert!(matches!(
        e.embed_query("x").await,
        Err(EmbedError::Unavailable(_))
    ));
    // Without a dim it must be reached at startup, and says so.
    cfg.ollama.dim = None;
    let err = build(&cfg).await.err().unwrap();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains(&base)),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_ollama_model_says_how_to_pull_it() {
    let s = StandIn::start(4).await;
    s.always(Reply::Status(404));
    let e = OllamaEmbedder::new(&ollama_cfg(&s.base)).unwrap();
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains("ollama pull nomic-embed-text") && m.contains("404")),
        "{err:?}"
    );
    assert_eq!(s.seen().len(), 1, "404 is not retried");
}

/// Without the `rustls` feature an https:// base cannot work; the error must say why.
#[cfg(not(feature = "rustls"))]
#[tokio::test]
async fn https_without_tls_support_is_explained() {
    let e = OpenAiEmbedder::with_key(
        &OpenAiConfig {
            max_retries: 2,
            ..openai_cfg("https://127.0.0.1:9")
        },
        None,
    )
    .unwrap();
    let err = e.embed_query("x").await.unwrap_err();
    assert!(
        matches!(&err, EmbedError::Unavailable(m) if m.contains("rustls") && m.contains("https://127.0.0.1:9")),
        "{err:?}"
    );
}
