//! `engram bench crud`: CRUD throughput and latency over real HTTP, against an in-process
//! server on a fresh data directory (or an existing server with `--server`).

pub mod context;
pub mod corpus;
pub mod locomo;
pub mod replicas;
pub mod search;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use engram_api::{BulkCreateResponse, CreateMemoryRequest, ListResponse, MemoryResponse};
use engram_core::{KeyService, TenantId};
use rand::prelude::*;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::Config;

#[derive(Args, Debug)]
pub struct CrudArgs {
    /// Memories in the store when GET and list latencies are measured.
    #[arg(long, default_value_t = 100_000)]
    pub memories: usize,
    /// Creates measured with one client.
    #[arg(long, default_value_t = 2_000)]
    pub single_creates: usize,
    /// Creates measured with 32 concurrent clients.
    #[arg(long, default_value_t = 20_000)]
    pub concurrent_creates: usize,
    /// Concurrent clients sending bulk requests of 100.
    #[arg(long, default_value_t = 16)]
    pub bulk_clients: usize,
    /// GET and list requests sampled for latency.
    #[arg(long, default_value_t = 2_000)]
    pub samples: usize,
    /// The store (default: SQLite in a fresh temporary directory, removed afterwards; on
    /// Postgres, a fresh schema, dropped afterwards, unless `[store] schema` names one).
    #[command(flatten)]
    pub store: crate::cli::StoreArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

const USERS: usize = 100;
const TYPES: [&str; 4] = ["note", "task", "decision", "fact"];
const WORDS: [&str; 32] = [
    "agent",
    "deploy",
    "customer",
    "invoice",
    "meeting",
    "schema",
    "rollback",
    "latency",
    "budget",
    "roadmap",
    "incident",
    "database",
    "release",
    "feedback",
    "contract",
    "design",
    "migration",
    "alert",
    "pricing",
    "review",
    "sprint",
    "ticket",
    "vendor",
    "cluster",
    "backup",
    "report",
    "policy",
    "session",
    "memory",
    "search",
    "index",
    "cache",
];

fn memory_request(rng: &mut impl Rng, i: usize) -> CreateMemoryRequest {
    let n = rng.random_range(20..40);
    let words: Vec<&str> = (0..n)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    CreateMemoryRequest {
        content: format!("Memory {i}: {}.", words.join(" ")),
        memory_type: Some(TYPES[i % TYPES.len()].into()),
        user_id: Some(format!("user-{}", i % USERS)),
        project: Some(format!("project-{}", i % 7)),
        tags: Some(vec![WORDS[i % WORDS.len()].into(), "bench".into()]),
        metadata: Some(json!({ "seq": i })),
        ..Default::default()
    }
}

#[derive(serde::Serialize)]
struct BulkBody<'a> {
    memories: &'a [CreateMemoryRequest],
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted_ms.len() - 1) as f64).round() as usize;
    sorted_ms[rank.min(sorted_ms.len() - 1)]
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn create(&self, req: &CreateMemoryRequest) -> anyhow::Result<MemoryResponse> {
        let r = self
            .http
            .post(format!("{}/memories", self.base))
            .bearer_auth(&self.key)
            .json(req)
            .send()
            .await?;
        ensure!(r.status() == 201, "create answered {}", r.status());
        Ok(r.json().await?)
    }
}

/// Runs `total` requests over `clients` concurrent workers; returns requests per second.
async fn concurrent<F, Fut>(
    clients: usize,
    total: usize,
    f: F,
) -> anyhow::Result<(f64, Vec<String>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<String>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                ids.push(f(i).await?);
            }
            anyhow::Ok(ids)
        }));
    }
    let mut ids = Vec::with_capacity(total);
    for t in tasks {
        ids.extend(t.await??);
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), ids))
}

/// An in-process server over a store in `cfg.store.data_dir`, with a key for the tenant
/// `bench`.
struct BenchServer {
    store: crate::backends::Backends,
    key: engram_core::ApiKey,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl BenchServer {
    async fn start(cfg: &Config) -> anyhow::Result<BenchServer> {
        let store = crate::backends::Backends::open(cfg, true).await?;
        let keys = KeyService::new(store.keys.clone());
        let (key, _) = keys.create(&TenantId::parse("bench")?).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = engram_server::router(
            crate::serve::app_state(
                &store,
                crate::serve::search_service(&store, Default::default(), cfg.search.to_core()),
                store.ops_store(cfg)?,
                &cfg.ops,
                Vec::new(),
            ),
            &crate::serve::http_config(cfg),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(BenchServer {
            store,
            key,
            addr,
            server,
        })
    }
}

pub async fn crud(args: CrudArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = args.store.apply(Config::default());
    if args.store.data_dir.is_none() {
        cfg.store.data_dir = tmp.path().to_path_buf();
    }
    let temp_schema = crate::backends::temp_schema(&mut cfg, "bench")?;
    let BenchServer {
        store,
        key,
        addr,
        server,
    } = BenchServer::start(&cfg).await?;
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?,
        base: format!("http://{addr}/api/v1"),
        key: key.expose().to_owned(),
    });
    let log = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    log(format!(
        "bench crud: server on {addr}, store {}",
        store.describe()
    ));

    // 1. Creates, one client.
    let c = client.clone();
    let (creates_1, mut ids) = concurrent(1, args.single_creates, move |i| {
        let c = c.clone();
        async move {
            let req = memory_request(&mut rand::rng(), i);
            Ok(c.create(&req).await?.id.to_string())
        }
    })
    .await?;
    log(format!("creates, 1 client:   {creates_1:>9.0}/s"));

    // 2. Creates, 32 clients.
    let c = client.clone();
    let offset = ids.len();
    let (creates_32, more) = concurrent(32, args.concurrent_creates, move |i| {
        let c = c.clone();
        async move {
            let req = memory_request(&mut rand::rng(), offset + i);
            Ok(c.create(&req).await?.id.to_string())
        }
    })
    .await?;
    ids.extend(more);
    log(format!("creates, 32 clients: {creates_32:>9.0}/s"));

    // 3. Bulk, 100 per request, several clients, up to the target size. The request
    // bodies are made before the clock starts, as a load generator on another machine
    // would have them: on two shared cores, serialising them in the timed loop took CPU
    // from the server being measured.
    let remaining = args.memories.saturating_sub(ids.len());
    let offset = ids.len();
    let bodies: Arc<Vec<Vec<u8>>> = {
        let mut rng = rand::rng();
        Arc::new(
            (0..remaining.div_ceil(100))
                .map(|r| {
                    let n = 100.min(remaining - r * 100);
                    let items: Vec<CreateMemoryRequest> = (0..n)
                        .map(|k| memory_request(&mut rng, offset + r * 100 + k))
                        .collect();
                    serde_json::to_vec(&BulkBody { memories: &items })
                })
                .collect::<Result<_, _>>()?,
        )
    };
    let c = client.clone();
    let started = Instant::now();
    let (_, bulk_ids) = concurrent(args.bulk_clients, bodies.len(), move |r| {
        let (c, bodies) = (c.clone(), bodies.clone());
        async move {
            let resp = c
                .http
                .post(format!("{}/memories/bulk", c.base))
                .bearer_auth(&c.key)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bodies[r].clone())
                .send()
                .await?;
            ensure!(resp.status() == 200, "bulk answered {}", resp.status());
            let body: BulkCreateResponse = resp.json().await?;
            ensure!(
                body.failed == 0,
                "bulk items failed: {:?}",
                body.errors.first()
            );
            Ok(body
                .items
                .first()
                .map(|i| i.id.to_string())
                .unwrap_or_default())
        }
    })
    .await?;
    let bulk_per_s = remaining as f64 / started.elapsed().as_secs_f64();
    ids.extend(bulk_ids.into_iter().filter(|s| !s.is_empty()));
    log(format!(
        "bulk inserts:        {bulk_per_s:>9.0} memories/s ({remaining} memories)"
    ));

    // Let deferred work settle before measuring latency.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // 4. GET latency, one client, random ids.
    let mut rng = rand::rng();
    let sample: Vec<&String> = (0..args.samples)
        .map(|_| ids.choose(&mut rng).context("no ids"))
        .collect::<anyhow::Result<_>>()?;
    let get_all = |sample: Vec<&String>| {
        let client = client.clone();
        let sample: Vec<String> = sample.into_iter().cloned().collect();
        async move {
            let mut ms = Vec::with_capacity(sample.len());
            for id in sample {
                let t = Instant::now();
                let r = client
                    .http
                    .get(format!("{}/memories/{id}", client.base))
                    .bearer_auth(&client.key)
                    .send()
                    .await?;
                ensure!(r.status() == 200, "get answered {}", r.status());
                let _ = r.bytes().await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(f64::total_cmp);
            anyhow::Ok(ms)
        }
    };
    let get_ms = get_all(sample.clone()).await?;
    // 4b. The same ids again: with a cache (`--cache`), every one is a hit.
    let get_again_ms = get_all(sample).await?;

    // 5. Filtered list latency: one user's tasks, first page of 20.
    let mut list_ms = Vec::with_capacity(args.samples);
    for i in 0..args.samples {
        let t = Instant::now();
        let r = client
            .http
            .get(format!("{}/memories", client.base))
            .query(&[
                ("user_id", format!("user-{}", i % USERS)),
                ("memory_type", TYPES[i % TYPES.len()].to_owned()),
                ("per_page", "20".to_owned()),
            ])
            .bearer_auth(&client.key)
            .send()
            .await?;
        ensure!(r.status() == 200, "list answered {}", r.status());
        let body: ListResponse = r.json().await?;
        ensure!(!body.data.is_empty(), "the filtered list found nothing");
        list_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    list_ms.sort_by(f64::total_cmp);

    let result = json!({
        "memories": ids.len().max(args.memories),
        "creates_per_s_1": creates_1.round(),
        "creates_per_s_32": creates_32.round(),
        "bulk_per_s": bulk_per_s.round(),
        "get_p50_ms": percentile(&get_ms, 0.50),
        "get_p95_ms": percentile(&get_ms, 0.95),
        "get_again_p50_ms": percentile(&get_again_ms, 0.50),
        "get_again_p95_ms": percentile(&get_again_ms, 0.95),
        "list_p50_ms": percentile(&list_ms, 0.50),
        "list_p95_ms": percentile(&list_ms, 0.95),
    });
    if args.json {
        println!("{result}");
    } else {
        eprintln!(
            "GET at {} memories:  p50 {:.3} ms  p95 {:.3} ms",
            args.memories,
            percentile(&get_ms, 0.5),
            percentile(&get_ms, 0.95)
        );
        eprintln!(
            "the same GETs again: p50 {:.3} ms  p95 {:.3} ms",
            percentile(&get_again_ms, 0.5),
            percentile(&get_again_ms, 0.95)
        );
        eprintln!(
            "filtered list:       p50 {:.3} ms  p95 {:.3} ms",
            percentile(&list_ms, 0.5),
            percentile(&list_ms, 0.95)
        );
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    server.abort();
    store.close();
    if let Some(schema) = temp_schema {
        store.drop_schema(&schema).await?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Memories POSTed for the end-to-end measurement.
    #[arg(long, default_value_t = 10_000)]
    pub memories: usize,
    /// Seconds spent on each raw workload.
    #[arg(long, default_value_t = 5)]
    pub min_secs: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Peak resident set size of this process, in MB (Linux; 0 elsewhere).
pub(crate) fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set size of this process now, in MB (Linux; 0 elsewhere).
pub(crate) fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// A size line of `/proc/self/status`, in MB.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

pub async fn embed(cfg: &Config, args: EmbedArgs) -> anyhow::Result<()> {
    use engram_core::{EmbeddingPipeline, EmbeddingStatus, EmbeddingStore};
    let log = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let local = engram_embed::LocalEmbedder::new(cfg.embedding.local.clone()).await?;
    log(format!(
        "bench embed: model in {}",
        local.model_dir().display()
    ));

    // (a) + (c): the raw model.
    let opts = engram_embed::BenchOptions {
        min_time: Duration::from_secs(args.min_secs),
        ..Default::default()
    };
    let l = local.clone();
    let raw = tokio::task::spawn_blocking(move || engram_embed::bench_raw(&l, opts)).await??;
    log(format!("raw: {raw}"));

    // (b): end to end, POSTed over HTTP until every memory is completed.
    let tmp = tempfile::tempdir()?;
    let mut scfg = cfg.clone();
    scfg.store.data_dir = tmp.path().to_path_buf();
    let BenchServer {
        store,
        key,
        addr,
        server,
    } = BenchServer::start(&scfg).await?;
    let embeddings: Arc<dyn EmbeddingStore> = store.embeddings.clone();
    let pipeline =
        EmbeddingPipeline::new(embeddings.clone(), Arc::new(local), cfg.pipeline.to_core()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers = crate::embedding::spawn_workers(
        &pipeline,
        cfg.pipeline.workers,
        &stop_rx,
        store.leases(),
        cfg.pipeline.to_core().sweep_every,
    );
    let http = reqwest::Client::new();
    // Distinct sentences, so the cache does not flatter the figure.
    let texts = engram_embed::bench_sentences(args.memories, 12, 7);
    let started = Instant::now();
    for chunk in texts.chunks(100) {
        let items: Vec<CreateMemoryRequest> = chunk
            .iter()
            .map(|t| CreateMemoryRequest::with_content(t.clone()))
            .collect();
        let r = http
            .post(format!("http://{addr}/api/v1/memories/bulk"))
            .bearer_auth(key.expose())
            .json(&BulkBody { memories: &items })
            .send()
            .await?;
        ensure!(r.status() == 200, "bulk answered {}", r.status());
    }
    loop {
        let depth = embeddings.embedding_queue_depth().await?;
        let done = depth
            .iter()
            .find(|(s, _)| *s == EmbeddingStatus::Completed)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let failed = depth
            .iter()
            .find(|(s, _)| *s == EmbeddingStatus::Failed)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        ensure!(failed == 0, "{failed} embeddings failed");
        if done as usize >= args.memories {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "the pipeline did not finish within an hour"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e2e = args.memories as f64 / started.elapsed().as_secs_f64();
    log(format!(
        "end to end: {e2e:.0} memories/s ({} memories)",
        args.memories
    ));
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    server.abort();
    store.close();
    let result = json!({
        "raw_sentences_per_s": raw.sentences_per_sec.round(),
        "raw_passages_per_s": (raw.passages_per_sec * 10.0).round() / 10.0,
        "end_to_end_per_s": e2e.round(),
        "query_p50_ms": (raw.query_p50_ms * 100.0).round() / 100.0,
        "peak_rss_mb": peak_rss_mb().round(),
    });
    println!("{result}");
    Ok(())
}
