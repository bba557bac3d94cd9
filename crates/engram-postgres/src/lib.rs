//! engram's scale-out backend: Postgres is the source of truth, pgvector holds the vectors.
//!
//! It implements the same ports as the embedded store (`MemoryStore`, `KeyStore`,
//! `EmbeddingStore`, `SearchIndex`, `RecordStore`), so `tests/conformance` holds both to
//! one behaviour. A record's mirror memory is written in the record's own transaction,
//! through the same functions every memory write uses. Every query is scoped by tenant;
//! writes are acknowledged after Postgres commits them. Many `engram serve` replicas may
//! share one database: the embedding queue is claimed with `FOR UPDATE SKIP LOCKED`,
//! change records (of memories and records alike) get their `seq` in commit order from
//! a sequencer, migrations and leader leases use locks in the database.
//!
//! It does not know about HTTP, caches (see `engram-redis`) or search ranking.

mod changes;
mod embedding;
mod migrate;
mod records;
mod rows;
mod search;
mod sql;
mod tls;

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use engram_core::filter::Position;
use engram_core::time::{from_micros, to_micros};
use engram_core::{
    ApiKeyRecord, ChangeOp, ChangeRecord, InsertMemory, InsertOutcome, KeyStore, ListQuery,
    ListResult, Memory, MemoryId, MemoryStore, SortBy, SortOrder, StoreError, TenantId, Timestamp,
};
use tokio_postgres::error::SqlState;

pub use migrate::{MigrationReport, MIGRATIONS};
use rows::{memory_from_row, COLUMNS};
use sql::{filter_sql, Sql};

/// How to connect.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/db` (libpq-style URLs and key=value strings both work).
    /// libpq's `sslmode` (`disable`, `prefer` (the default), `require`, `verify-ca`,
    /// `verify-full`) and `sslrootcert` (a PEM file, or `system`) in it choose TLS.
    pub url: String,
    /// A schema of its own (created if missing) instead of `public`: tests give each
    /// store a fresh one, so they run in parallel on one database.
    pub schema: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Filtered semantic searches with at most this many candidates are answered exactly
    /// over the candidates instead of through the HNSW index.
    pub exact_search_max: usize,
    /// How long a request waits for a pooled connection.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgConfig {
    /// The URL may hold a password: only its host part is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("exact_search_max", &self.exact_search_max)
            .finish()
    }
}

/// The URL (or key=value string) without its password.
pub fn redact_url(url: &str) -> String {
    let url = &tls::hide_password_params(url);
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            if !creds.contains(':') {
                return url.to_owned();
            }
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            schema: None,
            pool_size: 16,
            exact_search_max: search::EXACT_MAX,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Maps a driver error into the port's error type.
pub(crate) fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        // The server's own words ("deadlock detected", …), not the driver's "db error".
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string());
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(detail);
        }
        if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            return StoreError::Conflict(format!("retry: {detail}"));
        }
        if code.code().starts_with("08")
            || code.code().starts_with("53")
            || code.code().starts_with("57")
        {
            return StoreError::Unavailable(format!("postgres {}: {detail}", code.code()));
        }
        return StoreError::Other(format!("postgres {}: {detail}", code.code()));
    }
    if e.is_closed() {
        return StoreError::Unavailable(format!("postgres connection closed: {e}"));
    }
    StoreError::Unavailable(format!("postgres: {e}"))
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => db_err(e),
        other => StoreError::Unavailable(format!("no postgres connection: {other}")),
    }
}

/// The Postgres store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    exact_search_max: usize,
    /// Advisory-lock keys are scoped to the schema, so stores in other schemas never wait
    /// for each other.
    lock_base: i64,
    migration: std::sync::Arc<MigrationReport>,
    /// pgvector 0.8+: HNSW scans continue past `ef_search` until the filter has let
    /// enough rows through.
    iterative_scan: bool,
    /// Deferred `accessed_at` updates, newest per memory, written every `TOUCH_EVERY`.
    touches: std::sync::Arc<Touches>,
}

/// Deferred `accessed_at` updates: (tenant, memory id) → the latest read time.
type Touches = std::sync::Mutex<std::collections::HashMap<(String, uuid::Uuid), i64>>;

/// How often deferred `accessed_at` updates are written.
const TOUCH_EVERY: Duration = Duration::from_millis(500);
/// Deferred `accessed_at` updates held at most (while Postgres cannot take them).
const TOUCH_MAX: usize = 100_000;

/// Writes deferred `accessed_at` updates in one statement. `accessed_at` is best effort:
/// the commit does not wait for the disk (`synchronous_commit = off`), so a read never
/// costs an fsync.
async fn flush_touches(pool: &Pool, touches: &Touches) -> Result<(), StoreError> {
    let mut batch: Vec<((String, uuid::Uuid), i64)> = {
        let mut t = touches.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            return Ok(());
        }
        std::mem::take(&mut *t).into_iter().collect()
    };
    // Rows are locked in id order, as the embedding queue's batches lock them, so the
    // two do not deadlock each other.
    batch.sort_unstable_by_key(|((_, id), _)| *id);
    let written = write_touches(pool, &batch).await;
    if written.is_err() {
        // Put them back for the next round (a newer read of the same memory wins).
        let mut t = touches.lock().unwrap_or_else(|e| e.into_inner());
        for (k, at) in batch {
            let e = t.entry(k).or_insert(at);
            *e = (*e).max(at);
        }
    }
    written
}

async fn write_touches(
    pool: &Pool,
    batch: &[((String, uuid::Uuid), i64)],
) -> Result<(), StoreError> {
    let (mut tenants, mut ids, mut ats) = (Vec::new(), Vec::new(), Vec::new());
    for ((tenant, id), at) in batch {
        tenants.push(tenant.as_str());
        ids.push(*id);
        ats.push(*at);
    }
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await
        .map_err(db_err)?;
    // Lock the rows in id order first (the update's join would lock them in any order).
    let lock = tx
        .prepare_cached("SELECT 1 FROM memories WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .await
        .map_err(db_err)?;
    tx.execute(&lock, &[&ids]).await.map_err(db_err)?;
    let st = tx
        .prepare_cached(
            "UPDATE memories m SET accessed_at = t.at
             FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS t(id, tenant, at)
             WHERE m.id = t.id AND m.tenant = t.tenant AND m.deleted_at IS NULL
               AND m.accessed_at < t.at",
        )
        .await
        .map_err(db_err)?;
    tx.execute(&st, &[&ids, &tenants, &ats])
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}

/// Flushes deferred touches every `TOUCH_EVERY` until the store is dropped (then once
/// more).
fn spawn_toucher(pool: Pool, touches: &std::sync::Arc<Touches>) {
    let weak = std::sync::Arc::downgrade(touches);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TOUCH_EVERY).await;
            let Some(touches) = weak.upgrade() else {
                return;
            };
            if let Err(e) = flush_touches(&pool, &touches).await {
                tracing::warn!(error = %e, "could not record accessed_at; will retry");
            }
        }
    });
}

/// A schema name engram accepts: letters, digits and underscores.
fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl PgStore {
    /// Connects, creates the schema if one is named, and applies pending migrations.
    pub async fn connect(cfg: &PgConfig) -> Result<PgStore, StoreError> {
        let bad_url = |e: String| {
            StoreError::Invalid(format!(
                "cannot parse the Postgres URL {}: {e}",
                redact_url(&cfg.url)
            ))
        };
        // `sslmode` and `sslrootcert` are read here; tokio-postgres parses the rest.
        let (url, tls) = tls::split(&cfg.url).map_err(bad_url)?;
        let mut pg: tokio_postgres::Config = url.parse().map_err(|e| bad_url(format!("{e}")))?;
        pg.ssl_mode(tls.pg_mode());
        pg.connect_timeout(cfg.connect_timeout);
        pg.application_name("engram");
        if let Some(schema) = &cfg.schema {
            if !valid_schema(schema) {
                return Err(StoreError::Invalid(format!(
                    "schema name {schema:?}: use letters, digits and underscores"
                )));
            }
            // The schema first; `public` after it for the `vector` type.
            pg.options(format!("-c search_path={schema},public"));
        }
        let connector = tls.connector()?;
        let mgr = Manager::from_config(
            pg,
            connector,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size.max(2))
            .wait_timeout(Some(cfg.connect_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Invalid(format!("postgres pool: {e}")))?;
        let schema = cfg.schema.clone().unwrap_or_else(|| "public".into());
        let lock_base = lock_base(&schema);
        let mut client = pool.get().await.map_err(|e| {
            let url = redact_url(&cfg.url);
            // tokio-postgres shows only the outermost error ("error connecting to server"):
            // the causes say what went wrong.
            let (tls_problem, detail) = match &e {
                deadpool_postgres::PoolError::Backend(e) => (tls.explain(e), tls::error_chain(e)),
                other => (None, other.to_string()),
            };
            StoreError::Unavailable(match tls_problem {
                Some(problem) => format!("cannot connect to Postgres at {url}: {problem}"),
                None => format!(
                    "cannot connect to Postgres at {url}: {detail}; is it running, and does the URL name an existing database?"
                ),
            })
        })?;
        if let Some(schema) = &cfg.schema {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(db_err)?;
        }
        let migration = migrate::migrate(&mut client, lock_base).await?;
        let version: Option<String> = client
            .query_opt(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
                &[],
            )
            .await
            .map_err(db_err)?
            .map(|r| r.get(0));
        let iterative_scan = version.as_deref().is_some_and(pgvector_at_least_0_8);
        if !iterative_scan {
            tracing::warn!(
                pgvector = version.as_deref().unwrap_or("none"),
                "pgvector before 0.8 has no iterative index scans: filtered semantic searches over more than exact_search_max candidates may miss results; upgrade pgvector"
            );
        }
        drop(client);
        let touches = std::sync::Arc::new(Touches::default());
        spawn_toucher(pool.clone(), &touches);
        Ok(PgStore {
            pool,
            exact_search_max: cfg.exact_search_max,
            lock_base,
            migration: std::sync::Arc::new(migration),
            iterative_scan,
            touches,
        })
    }

    /// The migrations this connect applied, and the schema version.
    pub fn migration_report(&self) -> &MigrationReport {
        &self.migration
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Whether this store's connections to Postgres are encrypted, as the server sees one
    /// of them (`pg_stat_ssl`).
    pub async fn connection_is_encrypted(&self) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let row = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(db_err)?;
        Ok(row.get(0))
    }

    /// An advisory-lock key for `what`, unique to this store's schema.
    pub(crate) fn lock_key(&self, what: i64) -> i64 {
        self.lock_base.wrapping_add(what)
    }

    /// Takes (or renews) the lease `name` for `holder` until `ttl` from now, if it is
    /// free, expired or already `holder`'s. Replicas run periodic jobs only while they
    /// hold its lease, so one replica at a time does.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = to_micros(engram_core::time::now());
        let until = now + ttl.as_micros() as i64;
        let c = self.client().await?;
        let n = c
            .execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
                &[&name, &holder, &until, &now],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }

    /// Gives the lease up if `holder` has it.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "DELETE FROM leases WHERE name = $1 AND holder = $2",
            &[&name, &holder],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Rebuilds the HNSW indexes of `model` (`REINDEX`); returns how many memories have
    /// vectors of it.
    pub async fn rebuild_vector_index(
        &self,
        model: &engram_core::ModelInfo,
    ) -> Result<usize, StoreError> {
        let key = model.key();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db_err)?;
        // An HNSW build is much faster while the graph fits in maintenance_work_mem.
        tx.batch_execute("SET LOCAL maintenance_work_mem = '1GB'")
            .await
            .map_err(db_err)?;
        for table in ["memory_vectors", "context_vectors"] {
            tx.batch_execute(&format!(
                "REINDEX INDEX {}",
                embedding::index_name(table, &key)
            ))
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        let c = self.client().await?;
        let n: i64 = c
            .query_one(
                "SELECT count(DISTINCT rid) FROM memory_vectors WHERE model_key = $1",
                &[&key],
            )
            .await
            .map_err(db_err)?
            .get(0);
        Ok(n.max(0) as usize)
    }

    /// Purges a tenant, or one user of it, in one transaction.
    async fn purge_in_tx(&self, tenant: &TenantId, user: Option<&str>) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let n = purge(&tx, tenant.as_str(), user).await?;
        tx.commit().await.map_err(db_err)?;
        Ok(n)
    }

    /// Drops the store's schema and everything in it (tests' fresh schemas). Refuses
    /// `public`.
    pub async fn drop_schema(&self, schema: &str) -> Result<(), StoreError> {
        if !valid_schema(schema) || schema == "public" {
            return Err(StoreError::Invalid(format!(
                "will not drop schema {schema:?}"
            )));
        }
        let c = self.client().await?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .map_err(db_err)
    }
}

/// Whether a pgvector version string (`0.8.1`) is 0.8 or newer.
fn pgvector_at_least_0_8(v: &str) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (0, 8)
}

fn lock_base(schema: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(schema.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // Leave room for the small offsets added to it.
    (i64::from_le_bytes(b) >> 8) << 8
}

/// Offsets of the advisory locks, added to the schema's base.
pub(crate) mod locks {
    pub const MIGRATE: i64 = 1;
    pub const SEQUENCER: i64 = 2;
}

async fn insert_one<C: GenericClient>(
    c: &C,
    tenant: &str,
    item: &InsertMemory,
) -> Result<InsertOutcome, StoreError> {
    let m = &item.memory;
    if let Some(idem) = &item.idempotency {
        // Claim the key first: a concurrent create with the same key waits here for this
        // transaction and then sees the key taken.
        let claimed = c
            .execute(
                "INSERT INTO idempotency_keys (tenant, key, fingerprint, memory_id, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, key) DO NOTHING",
                &[
                    &tenant,
                    &idem.key,
                    &idem.fingerprint,
                    &m.id.0,
                    &to_micros(m.created_at),
                ],
            )
            .await
            .map_err(db_err)?;
        if claimed == 0 {
            let row = c
                .query_one(
                    "SELECT fingerprint, memory_id FROM idempotency_keys WHERE tenant = $1 AND key = $2",
                    &[&tenant, &idem.key],
                )
                .await
                .map_err(db_err)?;
            let fingerprint: String = row.get(0);
            let memory_id: uuid::Uuid = row.get(1);
            if fingerprint != idem.fingerprint {
                return Ok(InsertOutcome::KeyReused);
            }
            return match rows::get_by_id(c, tenant, memory_id, true).await? {
                Some(m) => Ok(InsertOutcome::Replayed(m)),
                // The memory was purged since: the key is free again.
                None => {
                    c.execute(
                        "UPDATE idempotency_keys SET fingerprint = $3, memory_id = $4, created_at = $5
                         WHERE tenant = $1 AND key = $2",
                        &[
                            &tenant,
                            &idem.key,
                            &idem.fingerprint,
                            &m.id.0,
                            &to_micros(m.created_at),
                        ],
                    )
                    .await
                    .map_err(db_err)?;
                    insert_memory(c, m).await?;
                    Ok(InsertOutcome::Created(m.clone()))
                }
            };
        }
    }
    insert_memory(c, m).await?;
    Ok(InsertOutcome::Created(m.clone()))
}

/// Stores a new memory row and appends its `Created` change record. Every memory insert
/// (a create, a record's mirror) goes through here.
pub(crate) async fn insert_memory<C: GenericClient>(c: &C, m: &Memory) -> Result<(), StoreError> {
    rows::insert_row(c, m).await?;
    changes::append(c, m, ChangeOp::Created).await
}

/// Replaces a live memory still at `expected_version` and appends its change record;
/// `Conflict` when its version moved on, `NotFound` when it is gone or deleted. Every
/// memory replace (an update, a record's mirror) goes through here.
pub(crate) async fn replace_memory<C: GenericClient>(
    c: &C,
    next: &Memory,
    expected_version: i64,
    op: ChangeOp,
) -> Result<(), StoreError> {
    if rows::update_row(c, next, expected_version).await? {
        return changes::append(c, next, op).await;
    }
    match rows::get_by_id(c, next.tenant.as_str(), next.id.0, false).await? {
        Some(cur) => Err(StoreError::Conflict(format!(
            "memory is at version {}, not {expected_version}",
            cur.version
        ))),
        None => Err(StoreError::NotFound),
    }
}

fn sort_column(s: SortBy) -> &'static str {
    match s {
        SortBy::CreatedAt => "m.created_at",
        SortBy::UpdatedAt => "m.updated_at",
        SortBy::AccessedAt => "m.accessed_at",
    }
}

async fn purge<C: GenericClient>(
    c: &C,
    tenant: &str,
    user: Option<&str>,
) -> Result<u64, StoreError> {
    let (scope, args): (&str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>) = match &user {
        Some(u) => ("tenant = $1 AND user_id = $2", vec![&tenant, u]),
        None => ("tenant = $1", vec![&tenant]),
    };
    let run = |sql: String| {
        let args = args.clone();
        async move { c.execute(&sql, &args).await.map_err(db_err) }
    };
    run(format!(
        "DELETE FROM changes WHERE memory_id IN (SELECT id FROM memories WHERE {scope})"
    ))
    .await?;
    records::purge(c, tenant, user).await?;
    run(format!(
        "DELETE FROM idempotency_keys WHERE memory_id IN (SELECT id FROM memories WHERE {scope})"
    ))
    .await?;
    // Vectors and context vectors go with their rows (ON DELETE CASCADE); the delete
    // trigger queues the sessions the rows were in.
    let n = run(format!("DELETE FROM memories WHERE {scope}")).await?;
    // Cached vectors of content no memory holds any more go too.
    c.execute(
        "DELETE FROM embedding_cache e WHERE NOT EXISTS (
             SELECT 1 FROM memories m WHERE m.content_hash = e.content_hash)",
        &[],
    )
    .await
    .map_err(db_err)?;
    // Sessions left without memories need no context work.
    c.execute(
        "DELETE FROM context_queue q WHERE q.tenant = $1 AND NOT EXISTS (
             SELECT 1 FROM memories m WHERE m.tenant = q.tenant AND m.session_id = q.session_id)",
        &[&tenant],
    )
    .await
    .map_err(db_err)?;
    if user.is_none() {
        run("DELETE FROM changes WHERE tenant = $1".into()).await?;
        run("DELETE FROM idempotency_keys WHERE tenant = $1".into()).await?;
        run("DELETE FROM api_keys WHERE tenant = $1".into()).await?;
    }
    Ok(n)
}

#[async_trait]
impl MemoryStore for PgStore {
    async fn insert(
        &self,
        tenant: &TenantId,
        items: Vec<InsertMemory>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
        let tenant = tenant.as_str();
        if items.iter().any(|i| i.memory.tenant.as_str() != tenant) {
            return Err(StoreError::Invalid(
                "insert items belong to another tenant".into(),
            ));
        }
        let started = std::time::Instant::now();
        let mut client = self.client().await?;
        // Fast path: all items in one transaction. Any failure rolls it back and the
        // items are replayed each in a savepoint, so a failing item is undone alone.
        let fast: Result<Vec<InsertOutcome>, StoreError> = async {
            let tx = client.transaction().await.map_err(db_err)?;
            let mut out = Vec::with_capacity(items.len());
            for item in &items {
                out.push(insert_one(&tx, tenant, item).await?);
            }
            tx.commit().await.map_err(db_err)?;
            Ok(out)
        }
        .await;
        let out = match fast {
            Ok(out) => out.into_iter().map(Ok).collect(),
            Err(StoreError::Unavailable(e)) => return Err(StoreError::Unavailable(e)),
            Err(_) => {
                let mut tx = client.transaction().await.map_err(db_err)?;
                let mut out = Vec::with_capacity(items.len());
                for item in &items {
                    let sp = tx.savepoint("item").await.map_err(db_err)?;
                    match insert_one(&sp, tenant, item).await {
                        Ok(o) => {
                            sp.commit().await.map_err(db_err)?;
                            out.push(Ok(o));
                        }
                        Err(e) => {
                            sp.rollback().await.map_err(db_err)?;
                            out.push(Err(e));
                        }
                    }
                }
                tx.commit().await.map_err(db_err)?;
                out
            }
        };
        record("insert", started);
        Ok(out)
    }

    async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        let started = std::time::Instant::now();
        let c = self.client().await?;
        let out = rows::get_by_id(&c, tenant.as_str(), id.0, false).await;
        record("get", started);
        out
    }

    async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.0).collect();
        let c = self.client().await?;
        let st = c
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM memories m WHERE m.id = ANY($1) AND m.tenant = $2 AND m.deleted_at IS NULL"
            ))
            .await
            .map_err(db_err)?;
        let rows = c
            .query(&st, &[&ids, &tenant.as_str()])
            .await
            .map_err(db_err)?;
        record("get_many", started);
        rows.iter().map(memory_from_row).collect()
    }

    async fn touch(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        // Deferred: written within TOUCH_EVERY, never moving accessed_at back; no version
        // bump, no change record.
        let at = to_micros(at);
        let mut t = self.touches.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= TOUCH_MAX {
            // Postgres has been unreachable for a while: best effort gives way.
            return Ok(());
        }
        for id in ids {
            let e = t.entry((tenant.as_str().to_owned(), id.0)).or_insert(at);
            *e = (*e).max(at);
        }
        Ok(())
    }

    async fn list(&self, tenant: &TenantId, q: &ListQuery) -> Result<ListResult, StoreError> {
        let started = std::time::Instant::now();
        let mut s = Sql::default();
        let cond = filter_sql(&mut s, tenant.as_str(), &q.filter);
        let c = self.client().await?;
        let count = c
            .prepare_cached(&format!("SELECT COUNT(*) FROM memories m WHERE {cond}"))
            .await
            .map_err(db_err)?;
        let total: i64 = c.query_one(&count, &s.refs()).await.map_err(db_err)?.get(0);
        let col = sort_column(q.sort_by);
        let (cmp, dir) = match q.sort_order {
            SortOrder::Asc => (">", "ASC"),
            SortOrder::Desc => ("<", "DESC"),
        };
        let mut page_cond = cond;
        let mut offset = 0i64;
        match q.position {
            Position::Page(p) => offset = i64::from(p.saturating_sub(1)) * i64::from(q.per_page),
            Position::After { sort_key, id, .. } => {
                let k = s.bind(sort_key);
                let i = s.bind(id.0);
                page_cond.push_str(&format!(" AND ({col}, m.id) {cmp} ({k}, {i})"));
            }
        }
        // Bound, not formatted in: the statement is prepared once per connection.
        let limit = s.bind(i64::from(q.per_page) + 1);
        let offset = s.bind(offset);
        let sql = format!(
            "SELECT {COLUMNS} FROM memories m WHERE {page_cond} ORDER BY {col} {dir}, m.id {dir} LIMIT {limit} OFFSET {offset}"
        );
        let page = c.prepare_cached(&sql).await.map_err(db_err)?;
        let rows = c.query(&page, &s.refs()).await.map_err(db_err)?;
        let mut items: Vec<Memory> = rows.iter().map(memory_from_row).collect::<Result<_, _>>()?;
        let has_more = items.len() > q.per_page as usize;
        items.truncate(q.per_page as usize);
        record("list", started);
        Ok(ListResult {
            items,
            total: total.max(0) as u64,
            has_more,
        })
    }

    async fn replace(
        &self,
        next: &Memory,
        expected_version: i64,
        op: ChangeOp,
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        replace_memory(&tx, next, expected_version, op).await?;
        tx.commit().await.map_err(db_err)?;
        record("replace", started);
        Ok(())
    }

    async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let mut client = self.client().await?;
        changes::sequence(&mut client, self.lock_key(locks::SEQUENCER)).await?;
        let rows = client
            .query(
                "SELECT seq, op, version, at, payload FROM changes
                 WHERE tenant = $1 AND entity = 'memory' AND seq > $2 ORDER BY seq LIMIT $3",
                &[&tenant.as_str(), &after_seq, &i64::from(limit)],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let op: String = r.get(1);
                let memory: Memory = serde_json::from_value(r.get(4))
                    .map_err(|e| StoreError::Other(format!("corrupt change record {seq}: {e}")))?;
                Ok(ChangeRecord {
                    seq,
                    tenant: memory.tenant.clone(),
                    memory_id: memory.id,
                    op: ChangeOp::parse(&op)
                        .ok_or_else(|| StoreError::Other(format!("unknown change op {op}")))?,
                    version: r.get(2),
                    at: from_micros(r.get(3)),
                    memory,
                })
            })
            .collect()
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        self.purge_in_tx(tenant, None).await
    }

    async fn purge_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64, StoreError> {
        self.purge_in_tx(tenant, Some(user_id)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.query_one("SELECT 1", &[]).await.map_err(db_err)?;
        Ok(())
    }
}

pub(crate) fn record(op: &'static str, started: std::time::Instant) {
    metrics::histogram!("engram_store_op_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

fn key_from_row(r: &tokio_postgres::Row) -> Result<ApiKeyRecord, StoreError> {
    let tenant: String = r.get(1);
    Ok(ApiKeyRecord {
        id: r.get(0),
        tenant: TenantId::parse(&tenant)
            .map_err(|_| StoreError::Other("corrupt tenant in api_keys".into()))?,
        hash: r.get(2),
        created_at: from_micros(r.get(3)),
        revoked_at: r.get::<_, Option<i64>>(4).map(from_micros),
    })
}

#[async_trait]
impl KeyStore for PgStore {
    async fn create_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO api_keys (id, tenant, hash, created_at) VALUES ($1, $2, $3, $4)",
            &[
                &record.id,
                &record.tenant.as_str(),
                &record.hash,
                &to_micros(record.created_at),
            ],
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn find_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let c = self.client().await?;
        let st = c
            .prepare_cached(
                "SELECT id, tenant, hash, created_at, revoked_at FROM api_keys
                 WHERE hash = $1 AND revoked_at IS NULL",
            )
            .await
            .map_err(db_err)?;
        let row = c.query_opt(&st, &[&hash]).await.map_err(db_err)?;
        row.as_ref().map(key_from_row).transpose()
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let c = self.client().await?;
        let tenant = tenant.map(|t| t.as_str().to_owned());
        let rows = c
            .query(
                "SELECT id, tenant, hash, created_at, revoked_at FROM api_keys
                 WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at, id",
                &[&tenant],
            )
            .await
            .map_err(db_err)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, key_id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&key_id, &to_micros(at)],
            )
            .await
            .map_err(db_err)?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            redact_url("postgres://engram:s3cret@db:5432/engram"),
            "postgres://engram:***@db:5432/engram"
        );
        assert_eq!(
            redact_url("postgres://127.0.0.1/x"),
            "postgres://127.0.0.1/x"
        );
        assert_eq!(
            redact_url("postgres://u@db/x?sslmode=require&password=s3cret"),
            "postgres://u@db/x?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("host=db password='s3 cret' sslmode=verify-full"),
            "host=db password=*** sslmode=verify-full"
        );
        assert_eq!(
            redact_url("host=db password='s3cret"),
            "host=db password=***"
        );
    }

    #[test]
    fn pgvector_versions() {
        assert!(pgvector_at_least_0_8("0.8.0"));
        assert!(pgvector_at_least_0_8("0.10.1"));
        assert!(pgvector_at_least_0_8("1.0"));
        assert!(!pgvector_at_least_0_8("0.7.4"));
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("t_0123abc"));
        assert!(!valid_schema("a; DROP TABLE x"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema(""));
    }
}
