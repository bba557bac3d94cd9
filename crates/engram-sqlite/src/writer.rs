//! The single writer thread and its group commit.
//!
//! Every write is a job sent to one thread that owns the write connection. The thread
//! takes every job that is waiting, runs each inside its own savepoint (a failing job is
//! rolled back alone), commits them together with one fsync, and only then answers each
//! caller. Concurrent writers thus share the cost of durability instead of paying it each.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engram_core::TenantId;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::{db_err, StoreError};

/// One write. `run` may be called twice: first in a shared transaction without a
/// savepoint (the fast path); if any job of the batch fails, the batch is rolled back and
/// every job runs again inside its own savepoint (`careful = true`), so one failure never
/// undoes another job and never leaves half a job behind.
trait Job: Send {
    fn run(&mut self, conn: &Connection, careful: bool) -> bool;
    /// Answers the caller once the transaction's fate is known.
    fn complete(self: Box<Self>, committed: Result<(), StoreError>);
}

struct TypedJob<T, F> {
    f: F,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnMut(&Connection, bool) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection, careful: bool) -> bool {
        let r = (self.f)(conn, careful);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn complete(self: Box<Self>, committed: Result<(), StoreError>) {
        let TypedJob { result, reply, .. } = *self;
        let out = committed.and_then(|()| {
            result.unwrap_or_else(|| Err(StoreError::Other("write job never ran".into())))
        });
        let _ = reply.send(out);
    }
}

/// Most jobs in one transaction.
const MAX_BATCH: usize = 1024;
/// How often deferred `accessed_at` updates are written.
const TOUCH_FLUSH: Duration = Duration::from_millis(500);

/// Deferred `accessed_at` updates: (tenant, memory id, time).
pub(crate) type TouchBuffer = Arc<Mutex<Vec<(TenantId, Vec<u8>, i64)>>>;

pub(crate) struct Writer {
    tx: Mutex<Option<Sender<Box<dyn Job>>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    pub(crate) touches: TouchBuffer,
}

impl Writer {
    pub(crate) fn start(conn: Connection) -> Writer {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let touches: TouchBuffer = Arc::default();
        let t = touches.clone();
        let handle = std::thread::Builder::new()
            .name("engram-sqlite-writer".into())
            .spawn(move || run(conn, rx, t))
            .expect("spawn the sqlite writer thread");
        Writer {
            tx: Mutex::new(Some(tx)),
            handle: Mutex::new(Some(handle)),
            touches,
        }
    }

    /// Runs `f` in the next group commit and resolves once it is durable. `f` may run
    /// more than once (see [`Job`]); its `careful` argument asks it to isolate
    /// independent parts (e.g. bulk items) in savepoints.
    pub(crate) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Connection, bool) -> Result<T, StoreError> + Send + 'static,
    {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(TypedJob {
            f,
            result: None,
            reply,
        });
        let sender = self.tx.lock().expect("writer lock").clone();
        sender
            .ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?
            .send(job)
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        let out = rx
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer stopped mid-write".into()))?;
        metrics::histogram!("engram_store_op_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        out
    }

    /// Whether the writer still accepts writes.
    pub(crate) fn is_open(&self) -> bool {
        self.tx.lock().expect("writer lock").is_some()
            && self
                .handle
                .lock()
                .expect("writer lock")
                .as_ref()
                .is_some_and(|h| !h.is_finished())
    }

    /// Stops accepting writes, writes what is queued (and pending touches), and joins the
    /// thread.
    pub(crate) fn close(&self) {
        drop(self.tx.lock().expect("writer lock").take());
        if let Some(h) = self.handle.lock().expect("writer lock").take() {
            let _ = h.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs `f` inside a named savepoint: its changes are kept if it succeeds and undone if
/// it fails, without affecting the rest of the transaction.
pub(crate) fn in_savepoint<T>(
    conn: &Connection,
    name: &str,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch(&format!("SAVEPOINT {name}"))
        .map_err(db_err)?;
    let res = f(conn);
    let end = if res.is_ok() {
        format!("RELEASE {name}")
    } else {
        format!("ROLLBACK TO {name}; RELEASE {name}")
    };
    conn.execute_batch(&end).map_err(db_err)?;
    res
}

fn run(conn: Connection, rx: Receiver<Box<dyn Job>>, touches: TouchBuffer) {
    let mut last_touch_flush = Instant::now();
    let mut open = true;
    while open {
        let mut batch = Vec::new();
        match rx.recv_timeout(TOUCH_FLUSH) {
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let flush_touches = !open || last_touch_flush.elapsed() >= TOUCH_FLUSH;
        let pending_touches = if flush_touches {
            last_touch_flush = Instant::now();
            std::mem::take(&mut *touches.lock().expect("touch buffer"))
        } else {
            Vec::new()
        };
        if batch.is_empty() && pending_touches.is_empty() {
            continue;
        }
        commit_batch(&conn, batch, pending_touches);
    }
    tracing::debug!("sqlite writer stopped");
}

fn commit_batch(
    conn: &Connection,
    mut batch: Vec<Box<dyn Job>>,
    touches: Vec<(TenantId, Vec<u8>, i64)>,
) {
    let started = Instant::now();
    let n = batch.len();
    let begin = || conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err);
    if let Err(e) = begin() {
        // Nothing ran; every caller learns the store is unavailable.
        tracing::error!(error = %e, jobs = n, "could not begin a write transaction");
        for job in batch {
            job.complete(Err(e.clone()));
        }
        return;
    }
    // Fast path: every job in one transaction, no savepoints (a savepoint makes SQLite
    // copy each page it touches into a sub-journal).
    let mut all_ok = true;
    for job in batch.iter_mut() {
        all_ok &= job.run(conn, false);
    }
    let mut committed = Ok(());
    if !all_ok {
        // Slow path: undo everything, then run each job in its own savepoint.
        tracing::debug!(jobs = n, "a write failed; replaying the batch job by job");
        let _ = conn.execute_batch("ROLLBACK");
        committed = begin();
        if committed.is_ok() {
            for job in batch.iter_mut() {
                let _ = in_savepoint(conn, "job", |c| {
                    if job.run(c, true) {
                        Ok(())
                    } else {
                        Err(StoreError::Other("job failed".into()))
                    }
                });
            }
        }
    }
    if committed.is_ok() && !touches.is_empty() {
        let res = (|| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE memories SET accessed_at = MAX(accessed_at, ?3) WHERE id = ?1 AND tenant = ?2",
                )
                .map_err(db_err)?;
            for (tenant, id, at) in &touches {
                stmt.execute(rusqlite::params![id, tenant.as_str(), at])
                    .map_err(db_err)?;
            }
            Ok::<_, StoreError>(())
        })();
        if let Err(e) = res {
            tracing::warn!(error = %e, "could not record accessed_at");
        }
    }
    if committed.is_ok() {
        committed = conn.execute_batch("COMMIT").map_err(db_err);
    }
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    metrics::histogram!("engram_store_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("engram_store_commit_jobs").record(n as f64);
    if let Err(e) = &committed {
        tracing::error!(error = %e, jobs = n, "group commit failed");
    }
    for job in batch {
        job.complete(committed.clone());
    }
}
