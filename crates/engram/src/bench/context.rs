//! `engram bench context`: latency of context assembly (`POST /api/v1/context`'s core
//! call) at 100,000 memories and 10,000 working records, the task's embedding included.
//!
//! The memories are the real sentences and MiniLM vectors of `engram bench corpus`, loaded
//! as `engram bench search` loads them; the working records (tasks, goals, tool calls,
//! decisions, checkpoints) are written through `WorkingService`, spread over 100 agents
//! and the corpus's 100 users, with text from the corpus; each agent's operational ring
//! holds events (some critical) and metrics. Each task is a corpus query, embedded by the
//! configured model at query time, for one agent and its user, with a 4,000-token budget.

use std::time::Instant;

use clap::Args;
use engram_core::context::{Tier, TokenizerKind};
use engram_core::context_service::ContextRequest;
use engram_core::ops::{NewEvent, Severity};
use engram_core::working::RecordKind;
use engram_core::{EmbedderSlot, Scope, TenantId};
use serde_json::json;

use super::corpus;
use super::search::{bench_config, load, percentile, TENANT};
use crate::backends::Backends;
use crate::config::Config;

#[derive(Args, Debug)]
pub struct ContextArgs {
    /// Memories in the store.
    #[arg(long, default_value_t = 100_000)]
    pub n: usize,
    /// Working records in the store.
    #[arg(long, default_value_t = 10_000)]
    pub records: usize,
    /// Context calls measured (after 10 to warm up).
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// The budget of each call.
    #[arg(long, default_value_t = 4000)]
    pub max_tokens: u32,
    /// `--data-dir DIR` keeps the loaded store there and reuses it on the next run;
    /// `--store postgres://…` loads a fresh schema (dropped afterwards).
    #[command(flatten)]
    pub store: crate::cli::StoreArgs,
    #[arg(long)]
    pub json: bool,
}

const AGENTS: usize = 100;

fn agent(i: usize) -> String {
    format!("agent-{:03}", i % AGENTS)
}

/// Writes `n` working records of every kind search does not index and some it does.
async fn seed_records(
    state: &engram_server::AppState,
    c: &corpus::Corpus,
    n: usize,
) -> anyhow::Result<()> {
    let tenant = TenantId::parse(TENANT)?;
    let text = |i: usize| c.memory_text(i % c.memories()).to_owned();
    let mut goals = Vec::new();
    for i in 0..n {
        let (user, agent) = (c.memory_user(i), agent(i));
        let (kind, body) = match i % 10 {
            0 => (
                RecordKind::Goal,
                json!({"title": text(i), "agent_id": agent, "user_id": user}),
            ),
            1..=4 => {
                let status = ["open", "in_progress", "blocked", "done"][i % 4];
                let mut b = json!({"title": text(i), "status": status, "agent_id": agent,
                                   "user_id": user, "context": text(i + 1)});
                if let Some(g) = goals.get(i % goals.len().max(1)) {
                    b["goal_id"] = json!(g);
                }
                (RecordKind::Task, b)
            }
            5..=7 => (
                RecordKind::ToolCall,
                json!({"tool": format!("tool-{}", i % 17), "arguments": {"query": text(i)},
                       "result": {"summary": text(i + 2)}, "duration_ms": i % 900,
                       "agent_id": agent, "user_id": user}),
            ),
            8 => (
                RecordKind::Decision,
                json!({"what": text(i), "why": text(i + 3), "who": agent, "agent_id": agent, "user_id": user}),
            ),
            _ => (
                RecordKind::Session,
                json!({"title": text(i), "agent_id": agent, "user_id": user}),
            ),
        };
        let r = state
            .working
            .create(&tenant, kind, body.as_object().cloned().unwrap_or_default())
            .await?;
        if kind == RecordKind::Goal {
            goals.push(r.id.to_string());
        }
        if kind == RecordKind::Session {
            state
                .working
                .add_to_session(
                    &tenant,
                    r.id,
                    RecordKind::Checkpoint,
                    json!({"name": "midway", "summary": text(i + 4)})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// Each agent's ring: 50 events (every tenth critical) and five metrics.
async fn seed_ops(state: &engram_server::AppState) -> anyhow::Result<()> {
    let tenant = TenantId::parse(TENANT)?;
    for a in 0..AGENTS {
        let agent = agent(a);
        for e in 0..50 {
            let severity = if e % 10 == 0 {
                Severity::Critical
            } else {
                Severity::Info
            };
            state
                .ops
                .record(
                    &tenant,
                    &agent,
                    NewEvent {
                        category: format!("cat-{}", e % 5),
                        severity,
                        payload: json!({"step": e}),
                        at: None,
                    },
                )
                .await?;
        }
        for m in 0..5 {
            state
                .ops
                .set_metric(&tenant, &agent, &format!("metric_{m}"), json!(a * m))
                .await?;
        }
    }
    Ok(())
}

pub async fn context(cfg: &Config, args: ContextArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.n > 0 && args.queries > 0,
        "--n and --queries must be at least 1"
    );
    let quiet = args.json;
    let c = corpus::ensure(cfg, args.n, corpus::QUERIES).await?;
    let embedder = engram_embed::build(&cfg.embedding).await?;
    let model = embedder.model();
    anyhow::ensure!(
        model.dim == c.dim,
        "the corpus was embedded with another model"
    );
    let tmp;
    let dir = match &args.store.data_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir)?;
    let mut bcfg = bench_config(
        &dir,
        args.store.store_url.clone(),
        cfg.store.schema.clone(),
        args.store.cache_url.clone(),
        cfg,
    );
    bcfg.ops = cfg.ops.clone();
    let temp_schema = crate::backends::temp_schema(&mut bcfg, "benchctx")?;
    let marker = dir.join("bench-context.json");
    let want = json!({"memories": args.n, "working_records": args.records});
    let loaded = temp_schema.is_none()
        && std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v == want);
    let slot = EmbedderSlot::default();
    slot.set(embedder);
    if !loaded {
        let backends = Backends::open(&bcfg, false).await?;
        if !quiet {
            eprintln!(
                "loading {} memories into {}",
                c.memories(),
                backends.describe()
            );
        }
        load(&backends, &c, &model, quiet).await?;
        let state = crate::serve::app_state(
            &backends,
            crate::serve::search_service(&backends, slot.clone(), bcfg.search.to_core()),
            backends.ops_store(&bcfg)?,
            &bcfg.ops,
            Vec::new(),
        );
        let started = Instant::now();
        seed_records(&state, &c, args.records).await?;
        if !quiet {
            eprintln!(
                "  wrote {} working records in {:.1} s",
                args.records,
                started.elapsed().as_secs_f64()
            );
        }
        backends.close();
        if temp_schema.is_none() {
            std::fs::write(&marker, want.to_string())?;
        }
    }
    // Opened as `engram serve` opens it, with the in-process vector index.
    let backends = Backends::open(&bcfg, true).await?;
    let state = crate::serve::app_state(
        &backends,
        crate::serve::search_service(&backends, slot, bcfg.search.to_core()),
        backends.ops_store(&bcfg)?,
        &bcfg.ops,
        Vec::new(),
    );
    seed_ops(&state).await?;
    let tenant = TenantId::parse(TENANT)?;
    let queries = args.queries.min(c.queries());
    // The warm-up calls use queries that are not measured, so no measured call finds its
    // task's embedding in the search's query cache.
    let warmups = 10.min(c.queries() - queries);
    let mut times = Vec::with_capacity(queries);
    let (mut chunks, mut tokens) = (0usize, 0u64);
    let mut phases = [0f64; 4];
    let mut considered = 0usize;
    for j in 0..warmups + queries {
        let (q, measured) = if j < warmups {
            (queries + j, false)
        } else {
            (j - warmups, true)
        };
        let req = ContextRequest::new(
            c.query_text(q),
            Scope {
                user_id: Some(c.query_user(q)),
                agent_id: Some(agent(q)),
                ..Scope::default()
            },
            Some(args.max_tokens),
            Tier::ALL.to_vec(),
            Default::default(),
            TokenizerKind::Cl100k,
        )?;
        let started = Instant::now();
        let (out, t) = state.context.assemble_timed(&tenant, &req).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        anyhow::ensure!(
            out.total_tokens <= args.max_tokens,
            "the budget was exceeded"
        );
        if measured {
            times.push(ms);
            chunks += out.chunks.len();
            tokens += u64::from(out.total_tokens);
            considered += t.candidates;
            for (acc, d) in phases
                .iter_mut()
                .zip([t.snapshot, t.search, t.records, t.pack])
            {
                *acc += d.as_secs_f64() * 1e3;
            }
        }
    }
    backends.close();
    if let Some(schema) = temp_schema {
        backends.drop_schema(&schema).await?;
    }
    times.sort_by(f64::total_cmp);
    let (p50, p95) = (percentile(&times, 0.5), percentile(&times, 0.95));
    let mean = |x: f64| x / queries as f64;
    let phases_ms = json!({"snapshot": mean(phases[0]), "search": mean(phases[1]),
                           "records": mean(phases[2]), "pack": mean(phases[3]),
                           "candidates": considered as f64 / queries as f64});
    if args.json {
        println!(
            "{}",
            json!({"memories": args.n, "working_records": args.records, "p50_ms": p50, "p95_ms": p95,
                   "queries": queries, "mean_chunks": chunks as f64 / queries as f64,
                   "mean_tokens": tokens as f64 / queries as f64, "mean_phase_ms": phases_ms,
                   "store": backends.describe()})
        );
    } else {
        println!(
            "context assembly over {} memories and {} working records ({}): p50 {p50:.1} ms, p95 {p95:.1} ms; {:.1} chunks, {:.0} tokens on average",
            args.n,
            args.records,
            backends.describe(),
            chunks as f64 / queries as f64,
            tokens as f64 / queries as f64
        );
        println!("mean per phase (ms; the first three run concurrently): {phases_ms}");
    }
    Ok(())
}
