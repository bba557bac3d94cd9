//! The single writer thread and its group commit.
//!
//! Every write is a job sent to one thread that owns the write connection. The thread
//! takes every job that is waiting, runs them in one transaction (and, if one fails, each
//! again inside its own savepoint, so a failing job is rolled back alone), commits them
//! together with one fsync, and only then answers each caller. Concurrent writers thus
//! share the cost of durability instead of paying it each.
//!
//! The WAL is checkpointed (copied back into the database file) by a second thread with
//! its own connection, so the writer goes on committing meanwhile; the writer itself
//! copies only the pages of the commits made during that checkpoint (see
//! [`Checkpoints`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
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
        // `f` goes first: what it shares with the caller is the caller's alone again by
        // the time the answer arrives.
        let TypedJob { f, result, reply } = *self;
        drop(f);
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

/// Deferred `accessed_at` updates: (tenant, memory id) → the latest read time. A memory
/// read many times between two flushes is written once.
pub(crate) type TouchBuffer = Arc<Mutex<HashMap<(TenantId, [u8; 16]), i64>>>;

/// When the WAL is checkpointed, in pages (4 KiB each).
///
/// SQLite's own automatic checkpoint runs inside the commit that crosses its bound, on the
/// writer thread: at bulk-insert rates it was a tenth of that thread's work, plus the
/// database file's fsync, while the other core idled. Here the first commit that leaves
/// `soft` or more pages in the WAL asks the checkpoint thread for a passive checkpoint
/// and goes on. That checkpoint copies back every page committed before it began, but
/// the WAL starts over only at a commit whose transaction began with every page copied
/// back, and under a steady stream of writes the commits made meanwhile are never
/// copied. So the first commit after the checkpoint thread is done checkpoints on the
/// writer itself: only the pages of those few commits are left, and the next commit
/// writes the WAL from its start again, which keeps the WAL file from growing (a growing
/// file costs every commit's fsync a metadata update). Should the checkpoint thread fall
/// behind, a commit that leaves `hard` or more pages checkpoints on the writer anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoints {
    pub(crate) soft: i32,
    pub(crate) hard: i32,
}

impl Default for Checkpoints {
    fn default() -> Self {
        // 32 MiB (as the automatic checkpoint was set before) and 128 MiB.
        Checkpoints {
            soft: 8192,
            hard: 4 * 8192,
        }
    }
}

thread_local! {
    /// Pages in the WAL after the last commit on this thread's connection (set by the
    /// connection's WAL hook, which SQLite calls on the committing thread).
    static WAL_PAGES: Cell<i32> = const { Cell::new(0) };
}

fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// A passive checkpoint: copies back what no reader still needs, never waits for anyone.
fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    // (busy, pages in the WAL, pages copied back); busy only means another checkpoint
    // ran at the same moment, and the next commit asks again.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .map_err(db_err)
}

/// The writer's side of [`Checkpoints`]: asks the checkpoint thread, and finishes its work.
struct Checkpointer {
    limits: Checkpoints,
    ask: SyncSender<()>,
    /// Checkpoints the checkpoint thread has done.
    done: Arc<AtomicU64>,
    /// `done` when the writer last asked for one, until it finished it.
    asked: Option<u64>,
}

impl Checkpointer {
    /// Starts the checkpoint thread on `conn`; it ends when the returned side is dropped.
    fn spawn(conn: Connection, limits: Checkpoints) -> (Checkpointer, JoinHandle<()>) {
        // One request waiting is enough: the checkpoint it starts covers every commit
        // before it.
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let done = Arc::new(AtomicU64::new(0));
        let counted = done.clone();
        let thread = std::thread::Builder::new()
            .name("engram-sqlite-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    if let Err(e) = checkpoint(&conn) {
                        tracing::warn!(error = %e, "WAL checkpoint failed; the writer checkpoints");
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            })
            .expect("spawn the sqlite checkpoint thread");
        let side = Checkpointer {
            limits,
            ask,
            done,
            asked: None,
        };
        (side, thread)
    }

    /// After each commit on the writer's connection `conn`, whose WAL hook has noted the
    /// pages now in the WAL.
    fn after_commit(&mut self, conn: &Connection) {
        let pages = WAL_PAGES.with(Cell::get);
        let done = self.done.load(Ordering::SeqCst);
        let finish = match self.asked {
            _ if pages >= self.limits.hard => true,
            _ if pages < self.limits.soft => false,
            None => {
                self.asked = Some(done);
                // Full: a checkpoint is asked for already.
                let _ = self.ask.try_send(());
                false
            }
            // Done since it was asked: what is left is the last commits' pages.
            Some(at) => done != at,
        };
        if pages < self.limits.soft || finish {
            self.asked = None;
        }
        if finish {
            if let Err(e) = checkpoint(conn) {
                tracing::warn!(error = %e, pages, "WAL checkpoint failed; the next commit tries again");
            }
        }
    }
}

pub(crate) struct Writer {
    tx: Mutex<Option<Sender<Box<dyn Job>>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    pub(crate) touches: TouchBuffer,
}

impl Writer {
    /// Starts the writer thread on `conn` and the checkpoint thread on `checkpoints_conn`
    /// (another connection to the same database).
    pub(crate) fn start(
        conn: Connection,
        checkpoints_conn: Connection,
        checkpoints: Checkpoints,
    ) -> Writer {
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        let (checkpoints, checkpointer) = Checkpointer::spawn(checkpoints_conn, checkpoints);
        let touches: TouchBuffer = Arc::default();
        let t = touches.clone();
        let handle = std::thread::Builder::new()
            .name("engram-sqlite-writer".into())
            .spawn(move || {
                // Replaces SQLite's automatic checkpoint on this connection.
                conn.wal_hook(Some(note_wal_pages));
                run(conn, rx, t, checkpoints)
            })
            .expect("spawn the sqlite writer thread");
        Writer {
            tx: Mutex::new(Some(tx)),
            handle: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some(checkpointer)),
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
        if let Some(h) = self.checkpointer.lock().expect("writer lock").take() {
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

fn run(
    conn: Connection,
    rx: Receiver<Box<dyn Job>>,
    touches: TouchBuffer,
    mut checkpoints: Checkpointer,
) {
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
            HashMap::new()
        };
        if batch.is_empty() && pending_touches.is_empty() {
            continue;
        }
        commit_batch(&conn, batch, pending_touches);
        checkpoints.after_commit(&conn);
    }
    tracing::debug!("sqlite writer stopped");
}

fn commit_batch(
    conn: &Connection,
    mut batch: Vec<Box<dyn Job>>,
    touches: HashMap<(TenantId, [u8; 16]), i64>,
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
        // In id order (UUIDv7: creation order), so rows written together share pages. A
        // row whose `accessed_at` is already as new is not rewritten: each rewrite moves
        // the row's entry in the `accessed_at` index and dirties both their pages.
        let mut touches: Vec<_> = touches.into_iter().collect();
        touches.sort_unstable();
        let res = (|| {
            let mut stmt = conn
                .prepare_cached(
                    "UPDATE memories SET accessed_at = ?3 WHERE id = ?1 AND tenant = ?2 AND deleted_at IS NULL AND accessed_at < ?3",
                )
                .map_err(db_err)?;
            for ((tenant, id), at) in &touches {
                stmt.execute(rusqlite::params![&id[..], tenant.as_str(), at])
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

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn file_len(p: &std::path::Path) -> u64 {
        std::fs::metadata(p).map_or(0, |m| m.len())
    }

    /// Writes 8 × 150 rows of about a page each from 8 concurrent callers (so commits
    /// hold 1–8 writes) through a writer with `limits`; checks that every write is there
    /// and that all but `wal_bound` bytes reached the database file while the writer ran.
    /// Returns the widest the WAL file grew.
    async fn widest_wal(limits: Checkpoints, wal_bound: u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = crate::open_conn(&path, false, 1024).unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
            .unwrap();
        let writer = Arc::new(Writer::start(
            conn,
            crate::open_conn(&path, false, 1024).unwrap(),
            limits,
        ));
        let wal = dir.path().join("w.db-wal");
        let (callers, each) = (8, 150);
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let (w, wal) = (writer.clone(), wal.clone());
            tasks.push(tokio::spawn(async move {
                let mut widest = 0;
                for _ in 0..each {
                    w.write("t", |c, _| {
                        c.execute("INSERT INTO t (b) VALUES (zeroblob(3000))", [])
                            .map_err(db_err)
                    })
                    .await
                    .unwrap();
                    widest = widest.max(file_len(&wal));
                }
                widest
            }));
        }
        let mut widest = 0;
        for t in tasks {
            widest = widest.max(t.await.unwrap());
        }
        assert!(widest > 0, "the WAL was never written");
        let written = (callers * each) as u64 * 3000;
        let db = file_len(&path);
        assert!(
            db + wal_bound >= written,
            "only {db} bytes reached the database file of {written} written"
        );
        // Every acknowledged write is there, read through another connection.
        let reader = crate::open_conn(&path, true, 1024).unwrap();
        let rows: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, (callers * each) as i64);
        drop(reader);
        writer.close();
        widest
    }

    /// The WAL's header, and per page a frame header.
    fn wal_bytes(pages: u64) -> u64 {
        32 + pages * (PAGE + 24)
    }

    /// Under a steady stream of commits, the checkpoint thread and the writer's own short
    /// checkpoints keep the WAL file near `soft` pages: it starts over again and again.
    /// (Without checkpoints it grows to over 1,200 pages; with the checkpoint thread
    /// alone it never starts over and grows as far.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_near_the_soft_bound_while_writes_keep_coming() {
        // No hard bound: only the checkpoint thread and the writer finishing its work.
        let limits = Checkpoints {
            soft: 32,
            hard: i32::MAX,
        };
        // `soft` pages and what is committed while the checkpoint thread works (30–40
        // pages here; 143 once while a build kept both cores busy), with room for a
        // slower disk: still far below the 1,200 pages it grows to unchecked.
        let bound = wal_bytes(8 * limits.soft as u64);
        let widest = widest_wal(limits, bound).await;
        assert!(
            widest <= bound,
            "the WAL grew to {widest} bytes, over {bound}"
        );
    }

    /// Should the checkpoint thread never be asked (or fall behind), the writer
    /// checkpoints at the hard bound, and the WAL starts over there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_checkpoints_at_the_hard_bound() {
        let limits = Checkpoints {
            soft: i32::MAX,
            hard: 64,
        };
        // `hard` pages and the last commit (at most 8 writes of a page or two).
        let bound = wal_bytes(limits.hard as u64 + 24);
        let widest = widest_wal(limits, bound).await;
        assert!(
            widest <= bound,
            "the WAL grew to {widest} bytes, over {bound}"
        );
    }
}
