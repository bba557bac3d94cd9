//! `engram bench replicas`: throughput of 1 and of N `engram serve` processes sharing one
//! Postgres (and Redis, with `--cache`). Each run gets a fresh schema; the replicas are
//! child processes of this binary, the load is `--clients` concurrent clients spreading
//! creates and reads of what they created over every replica. The embedding pipeline is
//! off, so the figure is the request path's (the model would take the CPU otherwise). A
//! warm-up (`--warmup` creates, untimed) first opens the replicas' Postgres connections, so
//! the figure is the steady state's, not the start-up of each replica's pool.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use engram_core::{KeyService, TenantId};
use serde_json::json;

use crate::backends::{temp_schema, Backends, StoreUrl};
use crate::cli::StoreArgs;
use crate::config::Config;

#[derive(Args, Debug)]
pub struct ReplicasArgs {
    /// The shared store (`--store postgres://…`, required) and cache (`--cache`).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Replica counts to measure, comma-separated.
    #[arg(long, default_value = "1,3")]
    pub replicas: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Creates per run (each followed by a read of it through another replica).
    #[arg(long, default_value_t = 20_000)]
    pub creates: usize,
    /// Creates (each read back) sent first and not timed: they open every replica's
    /// Postgres connections and warm their caches, so the figure is the steady state's.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Child `engram serve` processes, killed when dropped.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_replica(cfg: &Config) -> anyhow::Result<(Child, String)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(&cfg.store.data_dir)
        .env("ENGRAM__LOG__LEVEL", "warn")
        .env("ENGRAM__PIPELINE__ENABLED", "false")
        .env("ENGRAM__STORE__POOL_SIZE", cfg.store.pool_size.to_string())
        .env_remove("ENGRAM_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in [
        ("ENGRAM__STORE__URL", &cfg.store.url),
        ("ENGRAM__STORE__SCHEMA", &cfg.store.schema),
        ("ENGRAM__CACHE__URL", &cfg.cache.url),
    ] {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let mut child = cmd.spawn().context("cannot start engram serve")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(line) = lines.next() else { break };
        if let Some(url) = line?.strip_prefix("engram listening on ") {
            let url = url.trim().to_owned();
            std::thread::spawn(move || for _ in lines {});
            return Ok((child, url));
        }
    }
    let _ = child.kill();
    anyhow::bail!("a replica did not start")
}

/// One run: `n` replicas, the clients' creates each followed by a read of it through the
/// next replica; requests (creates + reads) per second.
async fn run(base_cfg: &Config, n: usize, args: &ReplicasArgs) -> anyhow::Result<f64> {
    let mut cfg = base_cfg.clone();
    let schema = temp_schema(&mut cfg, "bench_replicas")?;
    let backends = Backends::open(&cfg, false).await?;
    let (key, _) = KeyService::new(backends.keys.clone())
        .create(&TenantId::parse("bench")?)
        .await?;
    let mut children = Replicas(Vec::new());
    let mut bases = Vec::new();
    for _ in 0..n {
        let (child, url) = start_replica(&cfg)?;
        children.0.push(child);
        bases.push(format!("{url}/api/v1"));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let (bases, key) = (Arc::new(bases), Arc::new(key.expose().to_owned()));
    drive(&http, &bases, &key, 0..args.warmup, args.clients).await?;
    let started = Instant::now();
    drive(
        &http,
        &bases,
        &key,
        args.warmup..args.warmup + args.creates,
        args.clients,
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(children);
    if let Some(s) = schema {
        backends.drop_schema(&s).await?;
    }
    backends.close();
    Ok(2.0 * args.creates as f64 / elapsed)
}

/// `clients` concurrent clients send the creates numbered `range`, creates spread over the
/// replicas, each read back through the next replica.
async fn drive(
    http: &reqwest::Client,
    bases: &Arc<Vec<String>>,
    key: &Arc<String>,
    range: std::ops::Range<usize>,
    clients: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, bases, key, next) = (http.clone(), bases.clone(), key.clone(), next.clone());
        let total = range.end;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let (w, r) = (&bases[i % bases.len()], &bases[(i + 1) % bases.len()]);
                let resp = http
                    .post(format!("{w}/memories"))
                    .bearer_auth(key.as_str())
                    .json(&json!({
                        "content": format!("replica benchmark memory {i} about the deploy"),
                        "user_id": format!("u{}", i % 100),
                    }))
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 201, "create answered {}", resp.status());
                let id = resp.json::<serde_json::Value>().await?["id"]
                    .as_str()
                    .context("no id")?
                    .to_owned();
                let resp = http
                    .get(format!("{r}/memories/{id}"))
                    .bearer_auth(key.as_str())
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 200, "read answered {}", resp.status());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn replicas(cfg: &Config, args: ReplicasArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = args.store.apply(cfg.clone());
    if args.store.data_dir.is_none() {
        cfg.store.data_dir = tmp.path().to_path_buf();
    }
    anyhow::ensure!(
        matches!(
            StoreUrl::parse(cfg.store.url.as_deref(), &cfg.store.data_dir)?,
            StoreUrl::Postgres(_)
        ),
        "bench replicas needs --store postgres://… (replicas share a Postgres store)"
    );
    anyhow::ensure!(
        args.clients > 0 && args.creates > 0,
        "--clients and --creates must be positive"
    );
    let counts: Vec<usize> = args
        .replicas
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--replicas takes counts like 1,3")?;
    let mut results = Vec::new();
    for n in counts {
        anyhow::ensure!(n > 0, "a replica count must be positive");
        let rps = run(&cfg, n, &args).await?;
        if !args.json {
            eprintln!(
                "{n} replica(s): {rps:.0} requests/s ({:.0} creates/s, each read back)",
                rps / 2.0
            );
        }
        results.push(json!({
            "replicas": n,
            "requests_per_s": rps.round(),
            "creates_per_s": (rps / 2.0).round(),
        }));
    }
    let out = json!({
        "clients": args.clients,
        "creates": args.creates,
        "warmup": args.warmup,
        "cache": cfg.cache.url.is_some(),
        "pool_size": cfg.store.pool_size,
        "results": results,
    });
    println!("{out}");
    Ok(())
}
