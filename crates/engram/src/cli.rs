//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use engram_api::{CreateMemoryRequest, ListParams, UpdateMemoryRequest};
use engram_core::{KeyService, TenantId};

use crate::backends::Backends;
use crate::config::{self, Config};
use crate::target::Target;
use crate::{bench, logging, output, serve};

#[derive(Parser, Debug)]
#[command(name = "engram", version, about = "Long-term memory for AI agents")]
pub struct Cli {
    /// Config file (default: ./engram.toml if present; also ENGRAM_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        addr: Option<SocketAddr>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Store a memory.
    Add(AddArgs),
    /// Show one memory.
    Get {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// List memories, newest first.
    List(ListArgs),
    /// Search memories: hybrid (default), semantic or keyword.
    Search(SearchArgs),
    /// Assemble a prompt-ready context for a task from every tier, within a token budget.
    Context(ContextArgs),
    /// Move working records unchanged for a while into the long-term tier as memories
    /// (`engram serve` also does it on a schedule: `[tiers]`). Running it twice moves
    /// nothing twice.
    MigrateTiers {
        /// Age of the last change, e.g. 30d, 12h, 90m.
        #[arg(long, default_value = "30d")]
        older_than: String,
        /// Only this tenant (default: every tenant with an API key).
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change fields of a memory; the others stay as they are.
    Update(UpdateArgs),
    /// Delete a memory (soft delete: it disappears from get, list and search).
    Delete {
        id: String,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Print the embedding of each text (truncated to the model's 256-token window), for
    /// debugging and checks.
    Embed {
        /// One or more texts.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Print `{"model", "dim", "vectors": [[...], ...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Build vectors of the configured embedding model for every memory, beside the current
    /// ones, then switch search to it atomically. Run it after changing `[embedding]`, then
    /// restart `engram serve` with the new configuration.
    Reembed {
        #[command(flatten)]
        store: StoreArgs,
        /// Memories embedded per batch.
        #[arg(long, default_value_t = 64)]
        batch_size: u32,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the vector index (`<data_dir>/index/`) from the stored vectors. Run it with
    /// the server stopped; a server also rebuilds a missing or damaged index at start.
    Reindex {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Manage API keys (works on the local data directory).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Apply pending database migrations and print the schema version.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print the OpenAPI document of the REST API (also served at /openapi.json).
    Openapi,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key for a tenant and print it (it is shown only once).
    Create {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// List keys (their public ids, never the keys themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its public id (the part after `egk_`).
    Revoke {
        key_id: String,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a commented configuration file with every default.
    Default,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// CRUD throughput and latency over HTTP against an in-process server.
    Crud(bench::CrudArgs),
    /// Embedding speed: raw model throughput, end to end through the pipeline, query latency.
    Embed(bench::EmbedArgs),
    /// Real English sentences from this machine, embedded once and cached: the corpus of
    /// the search benchmarks.
    Corpus(bench::corpus::CorpusArgs),
    /// Retrieval quality on LoCoMo conversations: recall, NDCG and MRR per category.
    Locomo(bench::locomo::LocomoArgs),
    /// Search latency and recall@10 on real sentence embeddings (keyword, semantic,
    /// hybrid; unfiltered and filtered), index build time, peak RSS.
    Search(bench::search::SearchArgs),
    /// Request throughput of 1 and of N `engram serve` replicas sharing one Postgres
    /// (and Redis).
    Replicas(bench::replicas::ReplicasArgs),
    /// Context assembly latency (task embedding included) at 100,000 memories and
    /// 10,000 working records.
    Context(bench::context::ContextArgs),
}

/// Which store (and cache) a command works on.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Data directory: the embedded store, and local files such as the model cache.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The store: sqlite://DIR or postgres://USER@HOST:PORT/DB (default: SQLite in the
    /// data directory).
    #[arg(long = "store", value_name = "URL")]
    pub store_url: Option<String>,
    /// A Redis cache in front of the store: redis://HOST:PORT.
    #[arg(long = "cache", value_name = "URL")]
    pub cache_url: Option<String>,
}

impl StoreArgs {
    /// Applies the flags over the configuration.
    pub fn apply(&self, mut cfg: Config) -> Config {
        if let Some(d) = &self.data_dir {
            cfg.store.data_dir = d.clone();
        }
        if let Some(u) = &self.store_url {
            cfg.store.url = Some(u.clone());
        }
        if let Some(u) = &self.cache_url {
            cfg.cache.url = Some(u.clone());
        }
        cfg
    }
}

/// Where a memory command runs: a server, or the local data directory.
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Talk to this engram server instead of the local data directory.
    #[arg(long, env = "ENGRAM_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "ENGRAM_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The local store (when no --server is given).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Tenant for local mode.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Print JSON instead of human-readable text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScopeArgs {
    #[arg(long)]
    pub user_id: Option<String>,
    #[arg(long)]
    pub agent_id: Option<String>,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub session_id: Option<String>,
}

#[derive(Args, Debug)]
pub struct ContextArgs {
    /// What the agent is about to do.
    pub task: String,
    /// The budget in tokens, 1..200000.
    #[arg(long, default_value_t = 4000)]
    pub max_tokens: u32,
    /// Tiers to draw on (repeatable): operational, working, long_term, knowledge (default all).
    #[arg(long = "tier")]
    pub tiers: Vec<String>,
    /// cl100k or o200k.
    #[arg(long, default_value = "cl100k")]
    pub tokenizer: String,
    /// A per-tier cap, TIER=TOKENS (repeatable).
    #[arg(long = "quota", value_name = "TIER=TOKENS")]
    pub quotas: Vec<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

impl ContextArgs {
    pub fn into_body(self) -> anyhow::Result<engram_api::ContextBody> {
        let mut quotas = std::collections::BTreeMap::new();
        for q in &self.quotas {
            let (tier, n) = q
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--quota takes TIER=TOKENS, got `{q}`"))?;
            let n: u32 = n
                .parse()
                .map_err(|_| anyhow::anyhow!("--quota {tier}: `{n}` is not a number of tokens"))?;
            quotas.insert(tier.to_owned(), n);
        }
        Ok(engram_api::ContextBody {
            task: self.task,
            scope: engram_api::ScopeBody {
                user_id: self.scope.user_id,
                agent_id: self.scope.agent_id,
                project: self.scope.project,
                domain: self.scope.domain,
                session_id: self.scope.session_id,
            },
            max_tokens: Some(self.max_tokens),
            tiers: (!self.tiers.is_empty()).then_some(self.tiers),
            quotas: (!quotas.is_empty()).then_some(quotas),
            tokenizer: Some(self.tokenizer),
        })
    }
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The memory's text.
    pub content: String,
    /// note, meeting, task, insight, decision, contact, file, fact, episode, procedure, incident, custom.
    #[arg(long = "type")]
    pub memory_type: Option<String>,
    #[arg(long)]
    pub title: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// manual, chat, file, integration, ai_extracted, import.
    #[arg(long)]
    pub source: Option<String>,
    /// Provenance, e.g. history.jsonl:42.
    #[arg(long)]
    pub source_ref: Option<String>,
    /// A JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Makes a retried add return the original memory.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// What to look for.
    pub query: String,
    /// Hits to return, 1..100.
    #[arg(short, long, default_value_t = 10)]
    pub k: i64,
    /// hybrid, semantic or keyword.
    #[arg(long, default_value = "hybrid")]
    pub mode: String,
    #[arg(long)]
    pub min_score: Option<f64>,
    /// One type, or several separated by commas.
    #[arg(long = "type")]
    pub memory_type: Option<String>,
    /// Comma-separated; all must match.
    #[arg(long)]
    pub tags: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[arg(long)]
    pub created_after: Option<String>,
    #[arg(long)]
    pub created_before: Option<String>,
    /// Metadata equality, KEY=VALUE (repeatable); VALUE is parsed as JSON when it can be
    /// (numbers, true/false), else taken as a string.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

impl SearchArgs {
    pub fn into_body(self) -> anyhow::Result<engram_api::SearchBody> {
        let mut metadata = serde_json::Map::new();
        for kv in &self.metadata {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--meta takes KEY=VALUE, got `{kv}`"))?;
            let v = match serde_json::from_str::<serde_json::Value>(v) {
                Ok(j) if j.is_number() || j.is_boolean() || j.is_string() => j,
                _ => serde_json::Value::String(v.to_owned()),
            };
            metadata.insert(k.to_owned(), v);
        }
        let split = |s: Option<String>| {
            s.map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_owned())
                    .collect::<Vec<_>>()
            })
        };
        let filters = engram_api::SearchFilters {
            user_id: self.scope.user_id,
            agent_id: self.scope.agent_id,
            project: self.scope.project,
            domain: self.scope.domain,
            session_id: self.scope.session_id,
            memory_type: split(self.memory_type).map(engram_api::OneOrMany::Many),
            tags: split(self.tags),
            source: self.source,
            created_after: self.created_after,
            created_before: self.created_before,
            metadata: (!metadata.is_empty()).then_some(metadata),
        };
        Ok(engram_api::SearchBody {
            query: self.query,
            filters: Some(filters),
            k: Some(self.k),
            mode: Some(self.mode),
            min_score: self.min_score,
        })
    }
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long = "type")]
    pub memory_type: Option<String>,
    /// Comma-separated; all must match.
    #[arg(long)]
    pub tags: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub embedding_status: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[arg(long)]
    pub created_after: Option<String>,
    #[arg(long)]
    pub created_before: Option<String>,
    /// created_at, updated_at or accessed_at.
    #[arg(long)]
    pub sort_by: Option<String>,
    /// asc or desc.
    #[arg(long)]
    pub sort_order: Option<String>,
    #[arg(long)]
    pub page: Option<u32>,
    #[arg(long)]
    pub per_page: Option<u32>,
    #[arg(long)]
    pub cursor: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    pub id: String,
    #[arg(long)]
    pub content: Option<String>,
    #[arg(long = "type")]
    pub memory_type: Option<String>,
    #[arg(long)]
    pub title: Option<String>,
    /// Replace the tags (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Remove every tag.
    #[arg(long, conflicts_with = "tags")]
    pub clear_tags: bool,
    /// Replace the metadata with this JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

fn metadata_arg(s: Option<String>) -> anyhow::Result<Option<serde_json::Value>> {
    s.map(|s| serde_json::from_str(&s).context("--metadata must be a JSON object"))
        .transpose()
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { addr, store } => {
            let mut cfg = store.apply(cfg);
            if let Some(a) = addr {
                cfg.server.addr = a;
            }
            logging::init(&cfg.log);
            serve::run(cfg).await?;
        }
        Command::Add(a) => {
            let target = Target::open(&cfg, &a.target).await?;
            let req = CreateMemoryRequest {
                content: a.content,
                memory_type: a.memory_type,
                source: a.source,
                source_ref: a.source_ref,
                title: a.title,
                tags: (!a.tags.is_empty()).then_some(a.tags),
                metadata: metadata_arg(a.metadata)?,
                user_id: a.scope.user_id,
                agent_id: a.scope.agent_id,
                project: a.scope.project,
                domain: a.scope.domain,
                session_id: a.scope.session_id,
                ..Default::default()
            };
            let m = target.add(req, a.idempotency_key).await?;
            output::memory(&m, a.target.json);
        }
        Command::Get { id, target } => {
            let t = Target::open(&cfg, &target).await?;
            output::memory(&t.get(&id).await?, target.json);
        }
        Command::List(a) => {
            let t = Target::open(&cfg, &a.target).await?;
            let params = ListParams {
                page: a.page.map(|p| p.to_string()),
                per_page: a.per_page.map(|p| p.to_string()),
                cursor: a.cursor,
                memory_type: a.memory_type,
                tags: a.tags,
                source: a.source,
                embedding_status: a.embedding_status,
                user_id: a.scope.user_id,
                agent_id: a.scope.agent_id,
                project: a.scope.project,
                domain: a.scope.domain,
                session_id: a.scope.session_id,
                created_after: a.created_after,
                created_before: a.created_before,
                sort_by: a.sort_by,
                sort_order: a.sort_order,
            };
            output::list(&t.list(params).await?, a.target.json);
        }
        Command::Search(a) => {
            let t = Target::open(&cfg, &a.target).await?;
            let json = a.target.json;
            output::search(&t.search(a.into_body()?).await?, json);
        }
        Command::Context(a) => {
            let t = Target::open(&cfg, &a.target).await?;
            let json = a.target.json;
            output::context(&t.context(a.into_body()?).await?, json);
        }
        Command::MigrateTiers {
            older_than,
            tenant,
            store,
            json,
        } => {
            let age = crate::tiers::parse_age(&older_than)?;
            let cfg = store.apply(cfg);
            let backends = Backends::open(&cfg, false).await?;
            let tenant = tenant.map(|t| TenantId::parse(&t)).transpose()?;
            let r = crate::tiers::migrate(&backends, tenant, age).await;
            backends.close();
            let r = r?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"tenants": r.tenants, "moved": r.moved, "kept_mirrors": r.kept_mirrors})
                );
            } else {
                println!(
                    "moved {} working records into the long-term tier ({} tenants)",
                    r.moved, r.tenants
                );
            }
        }
        Command::Update(a) => {
            let t = Target::open(&cfg, &a.target).await?;
            let tags = if a.clear_tags {
                Some(None)
            } else {
                (!a.tags.is_empty()).then_some(Some(a.tags))
            };
            let req = UpdateMemoryRequest {
                content: a.content.map(Some),
                memory_type: a.memory_type.map(Some),
                title: a.title.map(Some),
                tags,
                metadata: metadata_arg(a.metadata)?.map(Some),
                user_id: a.scope.user_id.map(Some),
                agent_id: a.scope.agent_id.map(Some),
                project: a.scope.project.map(Some),
                domain: a.scope.domain.map(Some),
                session_id: a.scope.session_id.map(Some),
                ..Default::default()
            };
            output::memory(&t.update(&a.id, req).await?, a.target.json);
        }
        Command::Delete { id, target } => {
            let t = Target::open(&cfg, &target).await?;
            t.delete(&id).await?;
            output::deleted(&id, target.json);
        }
        Command::Embed { texts, json } => embed(&cfg, texts, json).await?,
        Command::Reembed {
            store,
            batch_size,
            json,
        } => reembed(store.apply(cfg), batch_size, json).await?,
        Command::Keys { command } => keys(cfg, command).await?,
        Command::Reindex { store, json } => {
            let mut cfg = store.apply(cfg);
            let started = std::time::Instant::now();
            let url =
                crate::backends::StoreUrl::parse(cfg.store.url.as_deref(), &cfg.store.data_dir)?;
            let crate::backends::StoreUrl::Sqlite(dir) = url else {
                anyhow::bail!(
                    "reindex rebuilds the embedded store's vector index; Postgres keeps its HNSW indexes itself (REINDEX in psql rebuilds them)"
                );
            };
            cfg.store.data_dir = dir;
            let index_dir = cfg.store.data_dir.join("index");
            match std::fs::remove_dir_all(&index_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove {}: {e}", index_dir.display()),
            }
            // Opening with the index rebuilds it from the stored vectors; closing saves it.
            let backends = Backends::open(&cfg, true).await?;
            let n = backends.sqlite().map_or(0, |s| s.indexed_memories());
            backends.close();
            let secs = started.elapsed().as_secs_f64();
            if json {
                println!("{}", serde_json::json!({ "memories": n, "seconds": secs }));
            } else {
                println!("vector index rebuilt: {n} memories in {secs:.1} s");
            }
        }
        Command::Migrate { store } => {
            let cfg = store.apply(cfg);
            let backends = Backends::open(&cfg, false).await?;
            let r = backends.migrations();
            backends.close();
            if r.applied.is_empty() {
                println!("schema is up to date at version {}", r.current);
            } else {
                for (v, name) in &r.applied {
                    println!("applied migration {v} ({name})");
                }
                println!("schema is now at version {}", r.current);
            }
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => print!("{}", config::DEFAULT_TOML),
        Command::Openapi => println!("{}", engram_server::openapi::json()),
        Command::Bench {
            command: BenchCommand::Crud(args),
        } => bench::crud(args).await?,
        Command::Bench {
            command: BenchCommand::Embed(args),
        } => bench::embed(&cfg, args).await?,
        Command::Bench {
            command: BenchCommand::Corpus(args),
        } => bench::corpus::run(&cfg, args).await?,
        Command::Bench {
            command: BenchCommand::Locomo(args),
        } => bench::locomo::locomo(&cfg, args).await?,
        Command::Bench {
            command: BenchCommand::Search(args),
        } => bench::search::search(&cfg, args).await?,
        Command::Bench {
            command: BenchCommand::Replicas(args),
        } => bench::replicas::replicas(&cfg, args).await?,
        Command::Bench {
            command: BenchCommand::Context(args),
        } => bench::context::context(&cfg, args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn embed(cfg: &Config, texts: Vec<String>, json: bool) -> anyhow::Result<()> {
    let embedder = engram_embed::build(&cfg.embedding).await?;
    let model = embedder.model();
    let mut vectors = Vec::with_capacity(texts.len());
    for t in &texts {
        vectors.push(embedder.embed_query(t).await?);
    }
    output::embeddings(&model, &texts, &vectors, json);
    Ok(())
}

async fn reembed(cfg: Config, batch_size: u32, json: bool) -> anyhow::Result<()> {
    let store = Backends::open(&cfg, false).await?;
    let embedder = engram_embed::build(&cfg.embedding).await?;
    let model = embedder.model();
    if !json {
        eprintln!("re-embedding every memory with {}", model.key());
    }
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let res = engram_core::reembed(store.embeddings.clone(), embedder, batch_size, |done| {
        if !json && last.elapsed() >= std::time::Duration::from_secs(2) {
            last = std::time::Instant::now();
            eprintln!("  {done} memories embedded…");
        }
    })
    .await;
    store.close();
    let report = res?;
    let summary = serde_json::json!({
        "model": model.id,
        "revision": model.revision,
        "dim": model.dim,
        "embedded": report.embedded,
        "cache_hits": report.cache_hits,
        "was_active": report.was_active,
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    if json {
        println!("{summary}");
    } else {
        println!(
            "{} is now the active embedding model ({} embedded, {} from the cache, {:.1} s)",
            model.key(),
            report.embedded,
            report.cache_hits,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn keys(cfg: Config, command: KeysCommand) -> anyhow::Result<()> {
    let (store_args, json) = match &command {
        KeysCommand::Create { store, json, .. }
        | KeysCommand::List { store, json, .. }
        | KeysCommand::Revoke { store, json, .. } => (store.clone(), *json),
    };
    let cfg = store_args.apply(cfg);
    let store = Backends::open(&cfg, false).await?;
    let keys = KeyService::new(store.keys.clone());
    let res = async {
        match command {
            KeysCommand::Create { tenant, .. } => {
                let tenant = TenantId::parse(&tenant)?;
                let (key, record) = keys.create(&tenant).await?;
                output::key_created(key.expose(), &record, json);
            }
            KeysCommand::List { tenant, .. } => {
                let tenant = tenant.map(|t| TenantId::parse(&t)).transpose()?;
                output::key_list(&keys.list(tenant.as_ref()).await?, json);
            }
            KeysCommand::Revoke { key_id, .. } => {
                keys.revoke(&key_id).await?;
                output::key_revoked(&key_id, json);
            }
        }
        anyhow::Ok(())
    }
    .await;
    store.close();
    res
}
