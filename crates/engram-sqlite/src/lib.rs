//! engram's embedded backend: one SQLite database (WAL mode) in the data directory.
//!
//! It implements the core's `MemoryStore` and `KeyStore` ports. Writes go through one
//! writer thread that group-commits concurrent writes with `synchronous=FULL`, so an
//! acknowledged write survives `kill -9` and power loss; reads use a small pool of
//! connections on blocking threads. Versioned migrations run when the store opens.
//! It does not know about HTTP, embeddings or search ranking.

mod ann;
mod attrs;
mod embedding;
mod keywords;
mod migrate;
mod records;
mod rows;
pub mod search;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use async_trait::async_trait;
use engram_core::filter::Position;
use engram_core::time::to_micros;
use engram_core::{
    ApiKeyRecord, ChangeOp, ChangeRecord, InsertMemory, InsertOutcome, KeyStore, ListQuery,
    ListResult, Memory, MemoryFilter, MemoryId, MemoryStore, ModelInfo, Nearest, RerankFields,
    Scored, SearchIndex, SortBy, SortOrder, StoreError, TenantId, Timestamp,
};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::Semaphore;

pub use engram_index::Quantization as VectorQuantization;
/// How the in-process vector index keeps vectors unless configured otherwise.
pub const DEFAULT_VECTOR_QUANTIZATION: VectorQuantization =
    engram_index::IndexConfig::DEFAULT_QUANTIZATION;
/// How many of a search's best keys are scored again from f32 when the index holds i8.
pub const DEFAULT_VECTOR_RESCORE: usize = ann::RESCORE;
/// [`SqliteConfig::vector_shortlist`] unless configured otherwise.
pub const DEFAULT_VECTOR_SHORTLIST: usize = ann::SHORTLIST;
/// The ANN graph search's `ef` for a semantic search unless configured otherwise: at
/// 100,000 MiniLM vectors kept in i8, recall@10 0.9915 (0.9885 at 160, 0.9945 at 240), the
/// qdrant-edge peer's being 0.990 (docs/benchmarks.md).
pub const DEFAULT_VECTOR_SEARCH_EXPANSION: usize = 200;
/// The ANN graph search's `ef` for the vector half of a hybrid search unless configured
/// otherwise: at 100,000 MiniLM vectors kept in i8, hybrid recall@10 0.9845 (0.989 at 160),
/// and at a million, with the walk widened as the graph grows, hybrid p95 2.6–3.6 ms
/// against 3.9–4.1 (docs/benchmarks.md).
pub const DEFAULT_VECTOR_HYBRID_EXPANSION: usize = 128;
/// The values the ANN graph search's `ef` may take.
pub const VECTOR_SEARCH_EXPANSION_RANGE: std::ops::RangeInclusive<usize> =
    engram_index::IndexConfig::EXPANSION_RANGE;
pub use migrate::{MigrationReport, MIGRATIONS};
use rows::{append_change, get_by_id, row_to_memory, update_row, NewRow, COLUMNS};
use writer::{in_savepoint, Checkpoints, Writer};

/// The database file inside the data directory.
pub const DB_FILE: &str = "engram.db";

/// How to open the store.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    pub data_dir: PathBuf,
    /// Read connections (reads run in parallel with each other and with the writer).
    pub readers: usize,
    /// Keep the in-process ANN index (`<data_dir>/index/`) for semantic search. Without
    /// it, semantic search is exact (a scan of the tenant's vectors).
    pub vector_index: bool,
    /// Filtered semantic searches with at most this many candidates (as SQLite counts
    /// them) are answered exactly over the candidates instead of through the graph.
    pub exact_search_max: usize,
    /// The metadata key naming who said a memory, which the keyword index holds for the
    /// re-ranker (the search configuration's `speaker_key`).
    pub speaker_key: String,
    /// How the ANN index keeps each vector in memory and on disk (the store's own copy
    /// is always f32). Changing it rebuilds the index at the next open.
    pub vector_quantization: VectorQuantization,
    /// With i8 vectors, how many keys of a list that is the answer
    /// ([`engram_core::NearestFor::Answer`]) may be scored again against the store's f32
    /// vectors, at most (0: none): those of the memories whose side of the caller's cut
    /// (`Nearest::keep`) the rounding leaves open. A list for fusion keeps the graph's
    /// scores.
    pub vector_rescore: usize,
    /// The ANN graph search's `ef` for a semantic search: how many candidates it keeps
    /// while it walks (raised to the number of keys asked for). Wider finds more of the
    /// true nearest, slower.
    pub vector_search_expansion: usize,
    /// The same for the vector half of a hybrid search, which fusion makes less
    /// dependent on the walk (see [`engram_core::NearestFor::Fusion`]).
    pub vector_hybrid_expansion: usize,
    /// An exact search over a filter's candidates first ranks them by a one-bit sketch of
    /// each vector (held in memory, 48 bytes a memory) and scores exactly only the best
    /// `vector_shortlist × k` of them, at least 200 (0: every candidate).
    pub vector_shortlist: usize,
}

impl SqliteConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            data_dir: data_dir.into(),
            readers: 4,
            vector_index: true,
            exact_search_max: ann::EXACT_MAX,
            speaker_key: engram_core::RerankConfig::default().speaker_key,
            vector_quantization: DEFAULT_VECTOR_QUANTIZATION,
            vector_rescore: DEFAULT_VECTOR_RESCORE,
            vector_search_expansion: DEFAULT_VECTOR_SEARCH_EXPANSION,
            vector_hybrid_expansion: DEFAULT_VECTOR_HYBRID_EXPANSION,
            vector_shortlist: DEFAULT_VECTOR_SHORTLIST,
        }
    }
}

/// Maps a driver error into the port's error type.
pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DatabaseBusy | C::DatabaseLocked => {
                StoreError::Unavailable(format!("database busy: {e}"))
            }
            C::ConstraintViolation => StoreError::Conflict(e.to_string()),
            C::CannotOpen
            | C::DiskFull
            | C::SystemIoFailure
            | C::ReadOnly
            | C::PermissionDenied => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        },
        rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
        _ => StoreError::Other(e.to_string()),
    }
}

/// Page cache of the writer's connection, in KiB: the pages of the table and indexes
/// that every insert touches stay in it.
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// Page cache of each read connection, in KiB. Reads of single rows and index ranges;
/// what is not cached comes from the operating system's page cache, which all
/// connections share (each connection's own cache is private, so four readers with
/// large caches held four copies of the same hot pages). At a million memories, 4 MiB
/// instead of 16 lowered the searching process's peak RSS by 65–80 MiB with search
/// latency unchanged within noise, at a million and at 100,000 (docs/benchmarks.md).
const READER_CACHE_KIB: u32 = 4 * 1024;
/// Page cache of the index upkeep's connection, in KiB: it scans the tables (rebuilds,
/// catching up), which a cache does not help.
const UPKEEP_CACHE_KIB: u32 = 4 * 1024;
/// Page cache of the WAL checkpoint thread's connection, in KiB: a checkpoint copies
/// pages from the WAL file to the database file without caching them.
const CHECKPOINT_CACHE_KIB: u32 = 1024;

fn open_conn(path: &Path, read_only: bool, cache_kib: u32) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot open the database at {}: {e}",
            path.display()
        ))
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db_err)?;
    // WAL: readers never block the writer. synchronous=FULL: every commit is fsynced, so
    // an acknowledged write survives power loss, not only a process crash. A connection
    // that commits checkpoints the WAL every 8,192 pages (32 MiB) rather than 1,000, so
    // hot index pages are copied back less often; the writer's connection replaces this
    // with checkpoints on another thread (`writer::Checkpoints`).
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -{cache_kib};
         PRAGMA wal_autocheckpoint = 8192;"
    ))
    .map_err(db_err)?;
    if read_only {
        conn.execute_batch("PRAGMA query_only = ON")
            .map_err(db_err)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

impl ReadPool {
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let started = Instant::now();
        let (_permit, conn) = self.checkout().await?;
        let (conn, out) = tokio::task::spawn_blocking(move || {
            let out = f(&conn);
            (conn, out)
        })
        .await
        .map_err(|e| StoreError::Other(format!("read task failed: {e}")))?;
        self.give_back(conn, op, started);
        out
    }

    /// A permit and an idle connection (or a new one).
    async fn checkout(&self) -> Result<(tokio::sync::SemaphorePermit<'_>, Connection), StoreError> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        let conn = match self.idle.lock().expect("pool lock").pop() {
            Some(c) => c,
            None => open_conn(&self.path, true, READER_CACHE_KIB)?,
        };
        Ok((permit, conn))
    }

    /// Runs `f`, a read that takes a millisecond of CPU or so (a vector search), on the
    /// calling thread when the runtime has several workers: `block_in_place` hands this
    /// worker's other tasks to another thread, and the read starts and returns without
    /// waking a blocking thread and then the task (on a virtual machine each wake-up of
    /// an idle CPU costs tens of µs, and a thread woken on another core starts with cold
    /// caches). On a single-threaded runtime it runs as `run` does.
    async fn run_here<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi {
            return self.run(op, f).await;
        }
        let started = Instant::now();
        let (_permit, conn) = self.checkout().await?;
        let out = tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)))
        });
        match out {
            Ok(out) => {
                self.give_back(conn, op, started);
                out
            }
            // As from `run`: the read fails, and its connection is not reused.
            Err(_) => Err(StoreError::Other(format!(
                "read task failed: the {op} read panicked"
            ))),
        }
    }

    /// Returns a connection to the pool and records how long `op` took.
    fn give_back(&self, conn: Connection, op: &'static str, started: Instant) {
        self.idle.lock().expect("pool lock").push(conn);
        metrics::histogram!("engram_store_op_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
    }

    /// Runs `f` on the calling thread, for a read of a few rows by key (µs of work, tens
    /// of µs if a page must come from the OS): handing it to a blocking thread and back
    /// would cost more than the read. In WAL mode a reader does not wait for the writer,
    /// so this does not stall the async runtime. With no idle connection it runs as `run`
    /// does (opening one is not a µs of work).
    async fn run_inline<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let started = Instant::now();
        let idle = match self.permits.try_acquire() {
            Ok(permit) => self
                .idle
                .lock()
                .expect("pool lock")
                .pop()
                .map(|c| (permit, c)),
            Err(_) => None,
        };
        let Some((_permit, conn)) = idle else {
            return self.run(op, f).await;
        };
        let out = f(&conn);
        self.give_back(conn, op, started);
        out
    }
}

/// `get_many` of at most this many ids runs on the calling thread.
const INLINE_GET_MAX: usize = 32;

/// The embedded store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Writer,
    readers: ReadPool,
    migration: MigrationReport,
    ann: Option<Arc<ann::Ann>>,
    keywords: Arc<keywords::Keywords>,
    saver: Mutex<Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>>,
}

impl Drop for Inner {
    /// The last handle is gone: stop the index saver (it saves once more on the way out).
    fn drop(&mut self) {
        let saver = self.saver.get_mut().map(Option::take).unwrap_or(None);
        if let Some((stop, handle)) = saver {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
    }
}

/// How often the in-process indexes catch up and the vector index is saved when it
/// changed.
const ANN_SAVE_EVERY: Duration = Duration::from_secs(5);

/// Brings both indexes up to date, saves the vector index when it changed, and truncates
/// the change log up to what both have applied (the vector index: saved).
fn upkeep(
    ann: &ann::Ann,
    keywords: &keywords::Keywords,
    conn: &Connection,
) -> Result<(), StoreError> {
    keywords.catch_up(conn)?;
    ann.catch_up(conn)?;
    if let Some(seq) = ann.save()? {
        let upto = keywords.applied_seq().map_or(seq, |k| k.min(seq));
        keywords::truncate_log(conn, upto)?;
    }
    Ok(())
}

fn spawn_saver(
    ann: Arc<ann::Ann>,
    keywords: Arc<keywords::Keywords>,
    path: PathBuf,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>), StoreError> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let conn = open_conn(&path, false, UPKEEP_CACHE_KIB)?;
    let handle = std::thread::Builder::new()
        .name("engram-index-upkeep".into())
        .spawn(move || {
            // The first round builds the keyword index soon after open, rather than in
            // the first search.
            let mut last: Option<Instant> = None;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if last.is_some_and(|l| l.elapsed() < ANN_SAVE_EVERY) {
                    continue;
                }
                last = Some(Instant::now());
                // Apply what changed (so vectors become searchable without waiting for a
                // search), then save.
                if let Err(e) = upkeep(&ann, &keywords, &conn) {
                    tracing::warn!(error = %e, "index upkeep failed; retrying");
                }
            }
            if let Err(e) = upkeep(&ann, &keywords, &conn) {
                tracing::warn!(error = %e, "the vector index was not saved at close; it will catch up at the next start");
            }
        })
        .map_err(|e| StoreError::Other(format!("cannot start the index saver: {e}")))?;
    Ok((stop, handle))
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `cfg.data_dir` and applies pending
    /// migrations. Blocking; call it before serving.
    pub fn open(cfg: &SqliteConfig) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create the data directory {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
        let path = cfg.data_dir.join(DB_FILE);
        let mut conn = open_conn(&path, false, WRITER_CACHE_KIB)?;
        let migration = migrate::migrate(&mut conn)?;
        let readers = cfg.readers.max(1);
        let keywords = Arc::new(keywords::Keywords::new(&cfg.speaker_key));
        // Without the vector index (one-shot commands), the keyword index is built by the
        // first keyword search, if any.
        let (ann, saver) = if cfg.vector_index {
            let ann = Arc::new(ann::Ann::new(&cfg.data_dir.join("index"), cfg));
            ann.open(&conn)?;
            // Loading read every vector through this connection; its cache would keep
            // them (they are in the index now) while the writer has no use for them.
            conn.execute_batch("PRAGMA shrink_memory").map_err(db_err)?;
            let saver = spawn_saver(ann.clone(), keywords.clone(), path.clone())?;
            (Some(ann), Some(saver))
        } else {
            (None, None)
        };
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Writer::start(
                    conn,
                    open_conn(&path, false, CHECKPOINT_CACHE_KIB)?,
                    Checkpoints::default(),
                ),
                readers: ReadPool {
                    path,
                    idle: Mutex::new(Vec::new()),
                    permits: Semaphore::new(readers),
                },
                migration,
                ann,
                keywords,
                saver: Mutex::new(saver),
            }),
        })
    }

    /// The migrations this open applied, and the schema version.
    pub fn migration_report(&self) -> &MigrationReport {
        &self.inner.migration
    }

    /// Writes what is queued, including deferred `accessed_at` updates, and stops the
    /// writer. Later writes fail with `Unavailable`.
    pub fn close(&self) {
        self.inner.writer.close();
        let saver = self.inner.saver.lock().expect("saver lock").take();
        if let Some((stop, handle)) = saver {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
    }

    /// Memories whose vectors the in-process index holds (0 without one).
    pub fn indexed_memories(&self) -> usize {
        self.inner.ann.as_ref().map_or(0, |a| a.len())
    }

    /// Live memories the in-process keyword index holds (0 until it is built: by the
    /// upkeep thread soon after open, or by the first keyword search).
    pub fn keyword_indexed(&self) -> usize {
        self.inner.keywords.len()
    }
}

fn tenant_str(t: &TenantId) -> String {
    t.as_str().to_owned()
}

/// What the writer did with one insert; a created memory is handed back to the caller
/// from its own copy, off the writer thread.
enum Inserted {
    Created,
    Replayed(Box<Memory>),
    KeyReused,
}

fn insert_one(
    conn: &Connection,
    tenant: &str,
    item: &InsertMemory,
    row: &NewRow,
) -> Result<Inserted, StoreError> {
    if let Some(idem) = &item.idempotency {
        let prior: Option<(String, Vec<u8>)> = conn
            .prepare_cached("SELECT fingerprint, memory_id FROM idempotency_keys WHERE tenant = ?1 AND key = ?2")
            .and_then(|mut s| {
                s.query_row(params![tenant, idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(db_err)?;
        if let Some((fingerprint, memory_id)) = prior {
            if fingerprint != idem.fingerprint {
                return Ok(Inserted::KeyReused);
            }
            return match get_by_id(conn, tenant, &memory_id, true)? {
                Some(m) => Ok(Inserted::Replayed(Box::new(m))),
                // The memory was purged since; the key is free again.
                None => {
                    conn.execute(
                        "DELETE FROM idempotency_keys WHERE tenant = ?1 AND key = ?2",
                        params![tenant, idem.key],
                    )
                    .map_err(db_err)?;
                    insert_one(conn, tenant, item, row)
                }
            };
        }
    }
    let m = &item.memory;
    row.insert(conn, m)?;
    if let Some(idem) = &item.idempotency {
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (tenant, key, fingerprint, memory_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .and_then(|mut s| {
            s.execute(params![
                tenant,
                idem.key,
                idem.fingerprint,
                m.id.as_bytes().as_slice(),
                to_micros(m.created_at)
            ])
        })
        .map_err(db_err)?;
    }
    Ok(Inserted::Created)
}

/// Replaces a memory still at `expected_version` and appends its change record.
pub(crate) fn replace_memory(
    conn: &Connection,
    m: &Memory,
    expected_version: i64,
    op: ChangeOp,
) -> Result<(), StoreError> {
    if update_row(conn, m, expected_version)?.is_some() {
        append_change(conn, m, op)?;
        return Ok(());
    }
    match get_by_id(conn, m.tenant.as_str(), m.id.as_bytes(), false)? {
        Some(cur) => Err(StoreError::Conflict(format!(
            "memory is at version {}, not {expected_version}",
            cur.version
        ))),
        None => Err(StoreError::NotFound),
    }
}

pub(crate) fn sort_column(s: SortBy) -> &'static str {
    match s {
        SortBy::CreatedAt => "m.created_at",
        SortBy::UpdatedAt => "m.updated_at",
        SortBy::AccessedAt => "m.accessed_at",
    }
}

/// The SQL condition (over `memories m`) and its arguments for a tenant's live memories
/// that pass `f`. The tenant is always `?1`.
pub(crate) fn filter_sql(tenant: &str, f: &MemoryFilter) -> (String, Vec<Value>) {
    let mut cond = String::from("m.tenant = ?1 AND m.deleted_at IS NULL");
    let mut args: Vec<Value> = vec![Value::Text(tenant.to_owned())];
    fn push(cond: &mut String, args: &mut Vec<Value>, sql: &str, v: Value) {
        args.push(v);
        cond.push_str(&sql.replace("{}", &format!("?{}", args.len())));
    }
    let text = |s: &str| Value::Text(s.to_owned());
    if !f.memory_types.is_empty() {
        let mut any = String::from(" AND m.memory_type IN (");
        for (i, t) in f.memory_types.iter().enumerate() {
            args.push(text(t.as_str()));
            any.push_str(&format!(
                "{}?{}",
                if i == 0 { "" } else { ", " },
                args.len()
            ));
        }
        any.push(')');
        cond.push_str(&any);
    }
    if let Some(s) = f.source {
        push(&mut cond, &mut args, " AND m.source = {}", text(s.as_str()));
    }
    if let Some(s) = f.embedding_status {
        push(
            &mut cond,
            &mut args,
            " AND m.embedding_status = {}",
            text(s.as_str()),
        );
    }
    for (col, v) in [
        ("user_id", &f.user_id),
        ("agent_id", &f.agent_id),
        ("project", &f.project),
        ("domain", &f.domain),
        ("session_id", &f.session_id),
    ] {
        if let Some(v) = v {
            push(
                &mut cond,
                &mut args,
                &format!(" AND m.{col} = {{}}"),
                text(v),
            );
        }
    }
    if let Some(t) = f.created_after {
        push(
            &mut cond,
            &mut args,
            " AND m.created_at > {}",
            Value::Integer(to_micros(t)),
        );
    }
    if let Some(t) = f.created_before {
        push(
            &mut cond,
            &mut args,
            " AND m.created_at < {}",
            Value::Integer(to_micros(t)),
        );
    }
    for tag in &f.tags {
        push(
            &mut cond,
            &mut args,
            " AND EXISTS (SELECT 1 FROM json_each(m.tags) WHERE json_each.value = {})",
            text(tag),
        );
    }
    for (key, want) in &f.metadata {
        // The key is bound as a JSON path; `json_extract` turns JSON scalars into SQL
        // values (true/false become 1/0), so the wanted value is bound the same way.
        args.push(Value::Text(format!("$.\"{}\"", key.replace('"', "\\\""))));
        let path = args.len();
        let v = match want {
            serde_json::Value::String(s) => Value::Text(s.clone()),
            serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            // Objects, arrays and null are refused at the edge; match nothing.
            _ => Value::Null,
        };
        args.push(v);
        let val = args.len();
        let typed = match want {
            serde_json::Value::Bool(_) => {
                format!(" AND json_type(m.metadata, ?{path}) IN ('true', 'false')")
            }
            serde_json::Value::String(_) => format!(" AND json_type(m.metadata, ?{path}) = 'text'"),
            _ => format!(" AND json_type(m.metadata, ?{path}) IN ('integer', 'real')"),
        };
        cond.push_str(&format!(
            " AND json_extract(m.metadata, ?{path}) = ?{val}{typed}"
        ));
    }
    (cond, args)
}

fn list_rows(conn: &Connection, tenant: &str, q: &ListQuery) -> Result<ListResult, StoreError> {
    let (cond, mut args) = filter_sql(tenant, &q.filter);
    let count_sql = format!("SELECT COUNT(*) FROM memories m WHERE {cond}");
    let total: i64 = conn
        .prepare_cached(&count_sql)
        .and_then(|mut s| s.query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0)))
        .map_err(db_err)?;

    let col = sort_column(q.sort_by);
    let (cmp, dir) = match q.sort_order {
        SortOrder::Asc => (">", "ASC"),
        SortOrder::Desc => ("<", "DESC"),
    };
    let mut page_cond = cond.clone();
    let mut offset = 0i64;
    match q.position {
        Position::Page(p) => offset = i64::from(p.saturating_sub(1)) * i64::from(q.per_page),
        Position::After { sort_key, id, .. } => {
            args.push(Value::Integer(sort_key));
            args.push(Value::Blob(id.as_bytes().to_vec()));
            let (a, b) = (args.len() - 1, args.len());
            page_cond.push_str(&format!(" AND ({col}, m.id) {cmp} (?{a}, ?{b})"));
        }
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM memories m WHERE {page_cond} ORDER BY {col} {dir}, m.id {dir} LIMIT {} OFFSET {offset}",
        q.per_page + 1
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut items: Vec<Memory> = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), row_to_memory)
        .and_then(|rows| rows.collect())
        .map_err(db_err)?;
    let has_more = items.len() > q.per_page as usize;
    items.truncate(q.per_page as usize);
    Ok(ListResult {
        items,
        total: total.max(0) as u64,
        has_more,
    })
}

fn purge(conn: &Connection, tenant: &str, user: Option<&str>) -> Result<u64, StoreError> {
    let scope = match user {
        Some(_) => "tenant = ?1 AND user_id = ?2",
        None => "tenant = ?1",
    };
    let bind = |sql: &str| -> Result<usize, StoreError> {
        let mut stmt = conn.prepare(sql).map_err(db_err)?;
        match user {
            Some(u) => stmt.execute(params![tenant, u]),
            None => stmt.execute(params![tenant]),
        }
        .map_err(db_err)
    };
    bind(&format!(
        "DELETE FROM changes WHERE tenant = ?1 AND memory_id IN (SELECT id FROM memories WHERE {scope})"
    ))?;
    records::purge(conn, tenant, user)?;
    bind(&format!(
        "DELETE FROM memory_vectors WHERE rid IN (SELECT rid FROM memories WHERE {scope})"
    ))?;
    bind(&format!(
        "DELETE FROM idempotency_keys WHERE memory_id IN (SELECT id FROM memories WHERE {scope})"
    ))?;
    let n = bind(&format!("DELETE FROM memories WHERE {scope}"))?;
    // Cached vectors of content no memory holds any more go too.
    conn.execute(
        "DELETE FROM embedding_cache WHERE content_hash NOT IN (SELECT content_hash FROM memories)",
        [],
    )
    .map_err(db_err)?;
    // The sessions left without memories need no context work (the delete trigger
    // queued every session it touched).
    conn.execute(
        "DELETE FROM context_queue WHERE tenant = ?1 AND NOT EXISTS (
             SELECT 1 FROM memories m WHERE m.tenant = context_queue.tenant
             AND m.session_id = context_queue.session_id)",
        params![tenant],
    )
    .map_err(db_err)?;
    if user.is_none() {
        bind("DELETE FROM changes WHERE tenant = ?1")?;
        bind("DELETE FROM idempotency_keys WHERE tenant = ?1")?;
        bind("DELETE FROM api_keys WHERE tenant = ?1")?;
    }
    Ok(n as u64)
}

#[async_trait]
impl MemoryStore for SqliteStore {
    async fn insert(
        &self,
        tenant: &TenantId,
        items: Vec<InsertMemory>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
        let tenant = tenant_str(tenant);
        if items.iter().any(|i| i.memory.tenant.as_str() != tenant) {
            return Err(StoreError::Invalid(
                "insert items belong to another tenant".into(),
            ));
        }
        let rows = items
            .iter()
            .map(|i| NewRow::of(&i.memory))
            .collect::<Result<Vec<_>, _>>()?;
        let items = Arc::new(items);
        let job_items = items.clone();
        let done = self
            .inner
            .writer
            .write("insert", move |conn, careful| {
                let each = job_items.iter().zip(&rows);
                if careful {
                    // Each item on its own: a failing item is undone alone.
                    return Ok(each
                        .map(|(item, row)| {
                            in_savepoint(conn, "item", |c| insert_one(c, &tenant, item, row))
                        })
                        .collect::<Vec<_>>());
                }
                // Fast path: any failure fails the job, and the writer replays it carefully.
                each.map(|(item, row)| insert_one(conn, &tenant, item, row).map(Ok))
                    .collect()
            })
            .await?;
        // The job (and its share of `items`) is dropped before the answer is sent.
        let items = Arc::try_unwrap(items).unwrap_or_else(|shared| (*shared).clone());
        Ok(items
            .into_iter()
            .zip(done)
            .map(|(item, done)| {
                done.map(|d| match d {
                    Inserted::Created => InsertOutcome::Created(item.memory),
                    Inserted::Replayed(m) => InsertOutcome::Replayed(*m),
                    Inserted::KeyReused => InsertOutcome::KeyReused,
                })
            })
            .collect())
    }

    async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        let tenant = tenant_str(tenant);
        // One row by id: less work than handing it to a blocking thread and back.
        self.inner
            .readers
            .run_inline("get", move |conn| {
                get_by_id(conn, &tenant, id.as_bytes(), false)
            })
            .await
    }

    async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (tenant, ids) = (tenant_str(tenant), ids.to_vec());
        // Read by the row ids the keyword index holds for them, where it does.
        let rids = self.inner.keywords.rids_of(&ids);
        let readers = &self.inner.readers;
        // A search loads its hits with this: a few dozen rows looked up by id, less work
        // than handing it to a blocking thread and back.
        if ids.len() <= INLINE_GET_MAX {
            return readers
                .run_inline("get_many", move |conn| {
                    search::get_many(conn, &tenant, &ids, &rids)
                })
                .await;
        }
        readers
            .run("get_many", move |conn| {
                search::get_many(conn, &tenant, &ids, &rids)
            })
            .await
    }

    async fn touch(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        // Deferred: the writer folds these into its next commit (at most ~0.5 s later).
        let at = to_micros(at);
        let mut touches = self.inner.writer.touches.lock().expect("touch buffer");
        for id in ids {
            let e = touches
                .entry((tenant.clone(), *id.as_bytes()))
                .or_insert(at);
            *e = (*e).max(at);
        }
        Ok(())
    }

    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListResult, StoreError> {
        let tenant = tenant_str(tenant);
        let q = query.clone();
        let keywords = self.inner.keywords.clone();
        self.inner
            .readers
            .run("list", move |conn| {
                match keywords.list(conn, &tenant, &q)? {
                    Some(page) => Ok(page),
                    None => list_rows(conn, &tenant, &q),
                }
            })
            .await
    }

    async fn replace(
        &self,
        next: &Memory,
        expected_version: i64,
        op: ChangeOp,
    ) -> Result<(), StoreError> {
        let m = next.clone();
        self.inner
            .writer
            .write("replace", move |conn, _| {
                replace_memory(conn, &m, expected_version, op)
            })
            .await
    }

    async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let tenant = tenant_str(tenant);
        self.inner
            .readers
            .run("changes", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT seq, op, version, at, payload FROM changes WHERE tenant = ?1 AND entity = 'memory' AND seq > ?2 ORDER BY seq LIMIT ?3",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![tenant, after_seq, limit], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, String>(4)?,
                        ))
                    })
                    .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                    .map_err(db_err)?;
                rows.into_iter()
                    .map(|(seq, op, version, at, payload)| {
                        let memory: Memory = serde_json::from_str(&payload)
                            .map_err(|e| StoreError::Other(format!("corrupt change record {seq}: {e}")))?;
                        Ok(ChangeRecord {
                            seq,
                            tenant: memory.tenant.clone(),
                            memory_id: memory.id,
                            op: ChangeOp::parse(&op)
                                .ok_or_else(|| StoreError::Other(format!("unknown change op {op}")))?,
                            version,
                            at: engram_core::time::from_micros(at),
                            memory,
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        let tenant = tenant_str(tenant);
        self.inner
            .writer
            .write("purge_tenant", move |conn, _| purge(conn, &tenant, None))
            .await
    }

    async fn purge_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64, StoreError> {
        let tenant = tenant_str(tenant);
        let user = user_id.to_owned();
        self.inner
            .writer
            .write("purge_user", move |conn, _| {
                purge(conn, &tenant, Some(&user))
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if !self.inner.writer.is_open() {
            return Err(StoreError::Unavailable(
                "the store's writer has stopped".into(),
            ));
        }
        self.inner
            .readers
            .run("ping", |conn| {
                conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .map(|_| ())
                    .map_err(db_err)
            })
            .await
    }
}

#[async_trait]
impl SearchIndex for SqliteStore {
    async fn keyword(
        &self,
        tenant: &TenantId,
        query: &str,
        filter: &MemoryFilter,
        limit: u32,
        bm25: engram_core::Bm25,
    ) -> Result<Vec<Scored>, StoreError> {
        let (tenant, filter) = (tenant_str(tenant), filter.clone());
        let words = search::query_terms(query);
        let keywords = self.inner.keywords.clone();
        self.inner
            .readers
            .run("keyword_search", move |conn| {
                keywords.search(conn, &tenant, &words, &filter, limit, bm25)
            })
            .await
    }

    async fn similarities(
        &self,
        tenant: &TenantId,
        model: &ModelInfo,
        vector: &[f32],
        ids: &[MemoryId],
        context_weight: f32,
    ) -> Result<Vec<Scored>, StoreError> {
        // Only the graph's search is approximate (an exact search's left-outs all score
        // below its last), and it holds every vector in memory. The row ids are the
        // keyword index's (a hybrid search's keyword half has just read them), else
        // looked up; the graph checks each is the memory's and the tenant's.
        let Some(ann) = &self.inner.ann else {
            return Ok(Vec::new());
        };
        let mut memories: Vec<(MemoryId, i64)> = Vec::with_capacity(ids.len());
        let mut unknown: Vec<MemoryId> = Vec::new();
        for (id, rid) in ids.iter().zip(self.inner.keywords.rids_of(ids)) {
            match rid {
                Some(rid) => memories.push((*id, rid)),
                None => unknown.push(*id),
            }
        }
        if !unknown.is_empty() {
            let found = self
                .inner
                .readers
                .run_inline("similarities", move |conn| {
                    let mut stmt = conn
                        .prepare_cached("SELECT rid FROM memories WHERE id = ?1")
                        .map_err(db_err)?;
                    let mut found = Vec::with_capacity(unknown.len());
                    for id in unknown {
                        let rid: Option<i64> = stmt
                            .query_row([&id.as_bytes()[..]], |r| r.get(0))
                            .optional()
                            .map_err(db_err)?;
                        found.extend(rid.map(|rid| (id, rid)));
                    }
                    Ok(found)
                })
                .await?;
            memories.extend(found);
        }
        Ok(ann
            .similarities(tenant.as_str(), model, vector, &memories, context_weight)?
            .unwrap_or_default())
    }

    async fn rerank_fields(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        speaker_key: &str,
    ) -> Result<HashMap<MemoryId, RerankFields>, StoreError> {
        // In memory: no connection needed.
        Ok(self
            .inner
            .keywords
            .rerank_fields(tenant.as_str(), ids, speaker_key))
    }

    async fn nearest(
        &self,
        tenant: &TenantId,
        model: &ModelInfo,
        vector: &[f32],
        filter: &MemoryFilter,
        want: Nearest,
    ) -> Result<Vec<Scored>, StoreError> {
        let (tenant, model, vector, filter) = (
            tenant_str(tenant),
            model.clone(),
            vector.to_vec(),
            filter.clone(),
        );
        let ann = self.inner.ann.clone();
        self.inner
            .readers
            // On this thread: a hybrid search's keyword half is a task of its own, its
            // search on a blocking thread, so the two halves still run at the same time.
            .run_here("vector_search", move |conn| {
                // One read transaction for the whole search: outside one, each of its
                // statements (the index's catch-up, a rescore's point reads) takes and
                // releases WAL's read lock by itself, two system calls apiece.
                let tx = conn.unchecked_transaction().map_err(db_err)?;
                let conn = &*tx;
                if let Some(ann) = ann {
                    let q = ann::VectorQuery {
                        model: &model,
                        vector: &vector,
                        filter: &filter,
                        want,
                    };
                    if let Some(hits) = ann.nearest(conn, &tenant, &q)? {
                        return Ok(hits);
                    }
                }
                search::nearest_exact(
                    conn,
                    &tenant,
                    &model,
                    &vector,
                    &filter,
                    want.limit,
                    want.context_weight,
                )
            })
            .await
    }
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    let tenant: String = r.get(1)?;
    Ok(ApiKeyRecord {
        id: r.get(0)?,
        tenant: TenantId::parse(&tenant)
            .map_err(|_| rusqlite::Error::ToSqlConversionFailure("corrupt tenant".into()))?,
        hash: r.get(2)?,
        created_at: engram_core::time::from_micros(r.get(3)?),
        revoked_at: r
            .get::<_, Option<i64>>(4)?
            .map(engram_core::time::from_micros),
    })
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create_key(&self, record: &ApiKeyRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.inner
            .writer
            .write("create_key", move |conn, _| {
                conn.execute(
                    "INSERT INTO api_keys (id, tenant, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![r.id, r.tenant.as_str(), r.hash, to_micros(r.created_at)],
                )
                .map_err(db_err)?;
                Ok(())
            })
            .await
    }

    async fn find_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let hash = hash.to_owned();
        self.inner
            .readers
            .run("find_key", move |conn| {
                conn.prepare_cached(
                    "SELECT id, tenant, hash, created_at, revoked_at FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                )
                .and_then(|mut s| s.query_row([hash], key_from_row).optional())
                .map_err(db_err)
            })
            .await
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let tenant = tenant.map(tenant_str);
        self.inner
            .readers
            .run("list_keys", move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT id, tenant, hash, created_at, revoked_at FROM api_keys
                         WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at, id",
                    )
                    .map_err(db_err)?;
                stmt.query_map([tenant], key_from_row)
                    .and_then(|rows| rows.collect())
                    .map_err(db_err)
            })
            .await
    }

    async fn revoke_key(&self, key_id: &str, at: Timestamp) -> Result<bool, StoreError> {
        let id = key_id.to_owned();
        self.inner
            .writer
            .write("revoke_key", move |conn, _| {
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, to_micros(at)],
                )
                .map(|n| n > 0)
                .map_err(db_err)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attrs::tests::Rng;
    use engram_core::{
        EmbeddingStore, MemoryFilter, MemoryService, MemoryType, ModelInfo, NewMemory, Source,
    };

    fn model() -> ModelInfo {
        ModelInfo {
            id: "test/axes".into(),
            revision: "1".into(),
            dim: 4,
        }
    }

    /// The unit vector of axis `i % 4`, tilted by `i` so no two are equal.
    fn vector(i: usize) -> Vec<f32> {
        let mut v = vec![0.01 * i as f32; 4];
        v[i % 4] = 1.0;
        v
    }

    /// Stores memories `from..to` with their vectors; returns their ids.
    async fn add(store: &SqliteStore, t: &TenantId, from: usize, to: usize) -> Vec<MemoryId> {
        let svc = MemoryService::new(Arc::new(store.clone()));
        let mut ids = Vec::new();
        for i in from..to {
            let m = NewMemory::note(&format!("memory {i}")).unwrap();
            ids.push(svc.remember(t, m, None).await.unwrap().0.id);
        }
        let lease = engram_core::time::now() + chrono::Duration::minutes(5);
        let jobs = store.claim_embeddings(100, lease).await.unwrap();
        let results = jobs
            .into_iter()
            .map(|j| {
                let i = from + ids.iter().position(|id| *id == j.memory_id).unwrap();
                (j, vec![vector(i)])
            })
            .collect();
        store
            .complete_embeddings(&model(), results, engram_core::time::now())
            .await
            .unwrap();
        ids
    }

    const TYPES: [MemoryType; 3] = [MemoryType::Note, MemoryType::Task, MemoryType::Fact];
    const SOURCES: [Source; 2] = [Source::Chat, Source::Manual];
    const TAGS: [&str; 4] = ["red", "green", "blue", "grey"];

    /// A memory of `tenant` with random fields; its times are one of a few, so that many
    /// share a sort key and the id decides their order.
    fn random_memory(rng: &mut Rng, tenant: &TenantId, i: usize) -> Memory {
        let at = chrono::DateTime::from_timestamp(1_700_000_000 + rng.index(12) as i64, 0).unwrap();
        let mut m = NewMemory::note(&format!("memory {i}"))
            .unwrap()
            .into_memory(tenant.clone(), at);
        m.scope.user_id = rng.pick(&["u0", "u1", "u2"]);
        m.scope.agent_id = rng.pick(&["a0", "a1"]);
        m.scope.project = rng.pick(&["p0"]);
        m.scope.domain = rng.pick(&["d0", "d1"]);
        m.scope.session_id = rng.pick(&["s0", "s1", "s2", "s3"]);
        m.memory_type = TYPES[rng.index(3)];
        m.source = SOURCES[rng.index(2)];
        m.tags = TAGS
            .iter()
            .filter(|_| rng.index(2) == 0)
            .map(|t| t.to_string())
            .collect();
        m.accessed_at = at + chrono::Duration::seconds(rng.index(5) as i64);
        m.metadata = serde_json::json!({ "k": rng.index(3) })
            .as_object()
            .cloned()
            .unwrap();
        m
    }

    fn random_filter(rng: &mut Rng) -> MemoryFilter {
        let time = |rng: &mut Rng| {
            (rng.index(3) == 0).then(|| {
                chrono::DateTime::from_timestamp(1_700_000_000 + rng.index(12) as i64, 0).unwrap()
            })
        };
        MemoryFilter {
            memory_types: TYPES.into_iter().filter(|_| rng.index(4) == 0).collect(),
            tags: TAGS
                .iter()
                .filter(|_| rng.index(5) == 0)
                .map(|t| t.to_string())
                .collect(),
            source: (rng.index(4) == 0).then(|| SOURCES[rng.index(2)]),
            // "zz" is a value no memory has.
            user_id: rng
                .pick(&["u0", "u1", "u2", "zz", "", ""])
                .filter(|s| !s.is_empty()),
            agent_id: rng
                .pick(&["a0", "a1", "", "", ""])
                .filter(|s| !s.is_empty()),
            project: rng.pick(&["p0", "", "", ""]).filter(|s| !s.is_empty()),
            domain: rng.pick(&["d0", "", "", ""]).filter(|s| !s.is_empty()),
            session_id: rng
                .pick(&["s1", "s2", "", "", ""])
                .filter(|s| !s.is_empty()),
            created_after: time(rng),
            created_before: time(rng),
            metadata: match rng.index(6) {
                0 => vec![("k".into(), serde_json::json!(rng.index(3)))],
                _ => Vec::new(),
            },
            embedding_status: match rng.index(8) {
                0 => Some(engram_core::EmbeddingStatus::Pending),
                1 => Some(engram_core::EmbeddingStatus::Completed),
                _ => None,
            },
        }
    }

    /// Every page of `q`'s list, by cursor or by page number, through `list`; with the
    /// totals and `has_more` flags seen.
    fn all_pages(
        mut list: impl FnMut(&ListQuery) -> ListResult,
        q: &ListQuery,
        by_cursor: bool,
    ) -> (Vec<MemoryId>, Vec<(u64, bool)>) {
        let (mut ids, mut seen) = (Vec::new(), Vec::new());
        let mut q = q.clone();
        for page in 1..=400u32 {
            let r = list(&q);
            seen.push((r.total, r.has_more));
            let last = r.items.last().cloned();
            ids.extend(r.items.iter().map(|m| m.id));
            match (r.has_more, last) {
                (true, Some(m)) => {
                    q.position = if by_cursor {
                        Position::After {
                            sort_key: q.sort_by.key_of(&m),
                            id: m.id,
                            page: page + 1,
                        }
                    } else {
                        Position::Page(page + 1)
                    }
                }
                _ => break,
            }
        }
        (ids, seen)
    }

    #[tokio::test]
    async fn get_many_by_row_checks_each_row_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig {
            vector_index: false,
            ..SqliteConfig::new(dir.path())
        })
        .unwrap();
        let svc = MemoryService::new(Arc::new(store.clone()));
        let (t, other) = (
            TenantId::parse("t1").unwrap(),
            TenantId::parse("t2").unwrap(),
        );
        let mut mine = Vec::new();
        for i in 0..5 {
            let m = NewMemory::note(&format!("mine {i}")).unwrap();
            mine.push(svc.remember(&t, m, None).await.unwrap().0.id);
        }
        let m = NewMemory::note("theirs").unwrap();
        let theirs = svc.remember(&other, m, None).await.unwrap().0.id;
        svc.forget(&t, mine[1]).await.unwrap();
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let rid = |id: &MemoryId| -> i64 {
            conn.query_row(
                "SELECT rid FROM memories WHERE id = ?1",
                [id.as_bytes().to_vec()],
                |r| r.get(0),
            )
            .unwrap()
        };
        let ids = [mine[0], mine[1], mine[2], mine[3], mine[4]];
        let rids = [
            Some(rid(&mine[0])),
            // Deleted since: its row says so.
            Some(rid(&mine[1])),
            // A stale entry naming another tenant's row: looked up by id instead.
            Some(rid(&theirs)),
            // A row that is not there.
            Some(1_000_000),
            None,
        ];
        let mut got: Vec<MemoryId> = search::get_many(&conn, "t1", &ids, &rids)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        got.sort();
        let mut want = vec![mine[0], mine[2], mine[3], mine[4]];
        want.sort();
        assert_eq!(got, want);
        // Another tenant's memory by its own row: not this tenant's.
        let leak = search::get_many(&conn, "t1", &[theirs], &[Some(rid(&theirs))]).unwrap();
        assert!(leak.is_empty(), "{leak:?}");
        let own = search::get_many(&conn, "t2", &[theirs], &[Some(rid(&theirs))]).unwrap();
        assert_eq!(own.len(), 1);
        assert_eq!(own[0].content, "theirs");
        store.close();
    }

    #[tokio::test]
    async fn lists_from_the_keyword_index_agree_with_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        // No upkeep thread: the keyword index is built below, when the test says.
        let store = SqliteStore::open(&SqliteConfig {
            vector_index: false,
            ..SqliteConfig::new(dir.path())
        })
        .unwrap();
        let (t, other) = (
            TenantId::parse("t1").unwrap(),
            TenantId::parse("t2").unwrap(),
        );
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut insert = |tenant: &TenantId, from: usize, n: usize| {
            (from..from + n)
                .map(|i| InsertMemory {
                    memory: random_memory(&mut rng, tenant, i),
                    idempotency: None,
                })
                .collect::<Vec<_>>()
        };
        let (mine, theirs) = (insert(&t, 0, 300), insert(&other, 300, 60));
        let mut all: Vec<Memory> = mine.iter().map(|i| i.memory.clone()).collect();
        for (tenant, items) in [(&t, mine), (&other, theirs)] {
            for r in store.insert(tenant, items).await.unwrap() {
                r.unwrap();
            }
        }
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let keywords = store.inner.keywords.clone();
        let q0 = ListQuery::default();
        assert!(
            keywords.list(&conn, "t1", &q0).unwrap().is_none(),
            "not built yet"
        );
        keywords.catch_up(&conn).unwrap();

        // Changes after the build reach lists at once: moved, retagged, deleted.
        for (n, m) in all.iter_mut().enumerate().filter(|(n, _)| n % 7 == 0) {
            let before = m.version;
            m.version += 1;
            m.updated_at += chrono::Duration::seconds(30 + (n % 3) as i64);
            if n % 2 == 0 {
                m.deleted_at = Some(m.updated_at);
            } else {
                m.scope.user_id = Some("u2".into());
                m.tags = vec!["grey".into()];
            }
            store.replace(m, before, ChangeOp::Updated).await.unwrap();
        }

        let mut in_memory = 0;
        for round in 0..150 {
            let filter = random_filter(&mut rng);
            let q = ListQuery {
                filter,
                sort_by: [SortBy::CreatedAt, SortBy::UpdatedAt, SortBy::AccessedAt][round % 3],
                sort_order: [SortOrder::Asc, SortOrder::Desc][(round / 3) % 2],
                per_page: [1, 7, 20, 100][rng.index(4)],
                position: Position::Page(1),
            };
            let mut reference: Vec<&Memory> = all.iter().filter(|m| q.filter.matches(m)).collect();
            reference.sort_by_key(|m| (q.sort_by.key_of(m), *m.id.as_bytes()));
            if q.sort_order == SortOrder::Desc {
                reference.reverse();
            }
            let reference: Vec<MemoryId> = reference.into_iter().map(|m| m.id).collect();
            for by_cursor in [false, true] {
                let held = all_pages(
                    |q| {
                        let r = keywords.list(&conn, "t1", q).unwrap();
                        in_memory += usize::from(r.is_some());
                        r.unwrap_or_else(|| list_rows(&conn, "t1", q).unwrap())
                    },
                    &q,
                    by_cursor,
                );
                let sql = all_pages(|q| list_rows(&conn, "t1", q).unwrap(), &q, by_cursor);
                assert_eq!(held.0, reference, "{q:?}");
                assert_eq!(held, sql, "{q:?}");
            }
        }
        assert!(
            in_memory > 300,
            "the held fields answered {in_memory} pages"
        );

        // Filters with a condition only SQLite checks: the held conditions' memories are
        // listed, and SQLite reads only those rows.
        let mut narrowed = 0;
        for round in 0..100 {
            let mut filter = random_filter(&mut rng);
            if round % 2 == 0 {
                filter.metadata = vec![("k".into(), serde_json::json!(rng.index(3)))];
            } else {
                filter.embedding_status = Some(engram_core::EmbeddingStatus::Pending);
            }
            let mut reference: Vec<i64> = Vec::new();
            let mut all_rids = attrs::filter_rids(&conn, "t1", &filter, None, None).unwrap();
            let within = keywords.held_part("t1", &filter);
            narrowed += usize::from(within.is_some());
            let mut rids =
                attrs::filter_rids(&conn, "t1", &filter, None, within.as_deref()).unwrap();
            for m in all.iter().filter(|m| filter.matches(m)) {
                let rid: i64 = conn
                    .query_row(
                        "SELECT rid FROM memories WHERE id = ?1",
                        [m.id.as_bytes()],
                        |r| r.get(0),
                    )
                    .unwrap();
                reference.push(rid);
            }
            for v in [&mut reference, &mut all_rids, &mut rids] {
                v.sort_unstable();
            }
            assert_eq!(all_rids, reference, "{filter:?}");
            assert_eq!(rids, reference, "{filter:?}");
            if !reference.is_empty() {
                let one =
                    attrs::filter_rids(&conn, "t1", &filter, Some(1), within.as_deref()).unwrap();
                assert_eq!(one.len(), 1);
                assert!(reference.contains(&one[0]), "{filter:?}");
            }
        }
        assert!(narrowed > 30, "held conditions narrowed {narrowed} filters");
    }

    /// A read that panics fails as an error, in place or on a blocking thread, and the
    /// pool goes on serving reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_read_is_an_error_either_way() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig::new(dir.path())).unwrap();
        let readers = &store.inner.readers;
        let boom = |_: &Connection| -> Result<(), StoreError> { panic!("boom") };
        for _ in 0..3 {
            let here = readers.run_here("test", boom).await.unwrap_err();
            let there = readers.run("test", boom).await.unwrap_err();
            for e in [here, there] {
                assert!(e.to_string().contains("read task failed"), "{e}");
            }
            let one: i64 = readers
                .run_here("test", |c| {
                    c.query_row("SELECT 1", [], |r| r.get(0)).map_err(db_err)
                })
                .await
                .unwrap();
            assert_eq!(one, 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_search_while_the_index_saves_sees_vectors_stored_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&SqliteConfig {
            exact_search_max: 0,
            ..SqliteConfig::new(dir.path())
        })
        .unwrap();
        let t = TenantId::parse("t").unwrap();
        store.register_model(&model()).await.unwrap();
        let mut ids = add(&store, &t, 0, 8).await;
        let search = |q: Vec<f32>| {
            let store = store.clone();
            let t = t.clone();
            async move {
                store
                    .nearest(
                        &t,
                        &model(),
                        &q,
                        &MemoryFilter::default(),
                        Nearest::answer(20, 0.0),
                    )
                    .await
                    .unwrap()
            }
        };
        assert_eq!(search(vector(0)).await.len(), 8);

        // A save is running (the upkeep thread holds the index) while more vectors land.
        let ann = store.inner.ann.clone().unwrap();
        ann.set_saving(true);
        ids.extend(add(&store, &t, 8, 12).await);
        let hits = search(vector(11)).await;
        ann.set_saving(false);
        assert_eq!(hits.len(), 12, "a search during a save missed new vectors");
        assert_eq!(hits[0].id, ids[11]);
        store.close();
    }
}
