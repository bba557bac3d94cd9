//! Shared by the integration tests: a real SQLite store in a temp dir behind a counting
//! wrapper, a `RedisCache` on the local Redis under a prefix of its own (so tests run in
//! parallel), the working tier over both, direct Redis access for inspection, and a TCP
//! proxy that can be cut.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engram_core::validate::{Content, Label};
use engram_core::working::service::WorkingService;
use engram_core::{
    ChangeOp, ChangeRecord, InsertMemory, InsertOutcome, ListQuery, ListResult, Memory,
    MemoryFilter, MemoryId, MemoryPatch, MemoryService, MemoryStore, NewMemory, StoreError,
    TenantId, Timestamp,
};
use engram_redis::{CacheConfig, CachedMemoryStore, CachedRecordStore, RedisCache};
use engram_sqlite::{SqliteConfig, SqliteStore};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

pub fn redis_url() -> String {
    std::env::var("ENGRAM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A direct connection for inspecting Redis. Fails the test when Redis is absent.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let fail = |e: redis::RedisError| -> ! {
        panic!(
            "these tests need a Redis at {url} ({e}); start one (`redis-server`) or point \
             ENGRAM_TEST_REDIS_URL at it"
        )
    };
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| fail(e));
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("these tests need a Redis at {url}: no answer within 5 s"))
    .unwrap_or_else(|e| fail(e));
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| fail(e));
    assert_eq!(pong, "PONG");
    conn
}

/// Every key matching `pattern`, sorted.
pub async fn scan(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        out.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out
}

pub async fn get_raw(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}

pub fn unique_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant")
}

/// A config for tests: a unique prefix and a time-out generous enough for a loaded CI
/// machine.
pub fn config() -> CacheConfig {
    CacheConfig {
        prefix: unique_prefix(),
        op_timeout: Duration::from_secs(2),
        health_interval: Duration::from_millis(100),
        ..CacheConfig::default()
    }
}

/// Counts the reads that reach the store.
pub struct Counting {
    pub inner: Arc<dyn MemoryStore>,
    pub gets: AtomicUsize,
    pub lists: AtomicUsize,
}

impl Counting {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
    pub fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl MemoryStore for Counting {
    async fn insert(
        &self,
        tenant: &TenantId,
        items: Vec<InsertMemory>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
        self.inner.insert(tenant, items).await
    }
    async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get(tenant, id).await
    }
    async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.inner.get_many(tenant, ids).await
    }
    async fn touch(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.touch(tenant, ids, at).await
    }
    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListResult, StoreError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(tenant, query).await
    }
    async fn replace(
        &self,
        next: &Memory,
        expected_version: i64,
        op: ChangeOp,
    ) -> Result<(), StoreError> {
        self.inner.replace(next, expected_version, op).await
    }
    async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        self.inner.changes(tenant, after_seq, limit).await
    }
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, StoreError> {
        self.inner.purge_tenant(tenant).await
    }
    async fn purge_user(&self, tenant: &TenantId, user_id: &str) -> Result<u64, StoreError> {
        self.inner.purge_user(tenant, user_id).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// One engram replica: SQLite (shared or fresh), a cache, the service over both.
pub struct Env {
    pub dir: Arc<tempfile::TempDir>,
    pub sqlite: SqliteStore,
    pub counting: Arc<Counting>,
    pub cache: RedisCache,
    pub store: Arc<CachedMemoryStore>,
    pub service: MemoryService,
    /// The working tier's port, through the cache (as the binary wires it).
    pub records: Arc<CachedRecordStore>,
    pub working: WorkingService,
}

impl Env {
    /// A fresh store and a cache on the local Redis.
    pub async fn new() -> Env {
        redis().await;
        Env::with(&redis_url(), config()).await
    }

    pub async fn with(url: &str, cfg: CacheConfig) -> Env {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let sqlite = SqliteStore::open(&SqliteConfig::new(dir.path())).expect("open sqlite");
        Env::over(dir, sqlite, url, cfg)
    }

    /// Another replica over the same store (and whatever cache `url`/`cfg` name).
    pub fn replica(&self, url: &str, cfg: CacheConfig) -> Env {
        Env::over(self.dir.clone(), self.sqlite.clone(), url, cfg)
    }

    fn over(dir: Arc<tempfile::TempDir>, sqlite: SqliteStore, url: &str, cfg: CacheConfig) -> Env {
        let counting = Arc::new(Counting {
            inner: Arc::new(sqlite.clone()),
            gets: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
        });
        let cache = RedisCache::new(url, cfg).expect("cache");
        let store = Arc::new(CachedMemoryStore::new(counting.clone(), cache.clone()));
        let service = MemoryService::new(store.clone());
        let records = Arc::new(CachedRecordStore::new(
            Arc::new(sqlite.clone()),
            counting.clone(),
            cache.clone(),
        ));
        let working = WorkingService::new(records.clone(), store.clone(), None);
        Env {
            dir,
            sqlite,
            counting,
            cache,
            store,
            service,
            records,
            working,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.cache.config().prefix
    }

    pub async fn remember(&self, t: &TenantId, content: &str, user: Option<&str>) -> Memory {
        let mut new = NewMemory::note(content).expect("note");
        new.user_id = user.map(|u| Label::parse(u.into(), "user_id").expect("user"));
        self.service
            .remember(t, new, None)
            .await
            .expect("remember")
            .0
    }

    pub async fn set_content(&self, t: &TenantId, id: MemoryId, content: &str) -> Memory {
        self.service
            .update(t, id, content_patch(content))
            .await
            .expect("update")
    }
}

pub fn content_patch(content: &str) -> MemoryPatch {
    MemoryPatch {
        content: Some(Content::parse(content.into(), "content").expect("content")),
        ..Default::default()
    }
}

pub fn user_patch(user: &str) -> MemoryPatch {
    MemoryPatch {
        user_id: Some(Some(Label::parse(user.into(), "user_id").expect("user"))),
        ..Default::default()
    }
}

pub fn by_user(user: &str) -> ListQuery {
    ListQuery {
        filter: MemoryFilter {
            user_id: Some(user.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Waits until `f` holds, up to `secs` seconds.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy in front of Redis that can be cut (listener closed, every connection
/// dropped) and restored on the same port.
pub struct Proxy {
    addr: SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        redis().await;
        let upstream = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = Proxy {
            addr,
            upstream,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        proxy.serve(listener);
        proxy
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn serve(&self, listener: TcpListener) {
        let tasks = self.tasks.clone();
        let upstream = self.upstream.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        tokio::select! {
                            _ = pump(&client, &server) => {}
                            _ = pump(&server, &client) => {}
                        }
                    }
                });
                tasks.lock().expect("tasks").push(conn.abort_handle());
            }
        });
        self.tasks
            .lock()
            .expect("tasks")
            .push(accept.abort_handle());
    }

    /// Closes the listener and every connection: Redis is gone for whoever uses the proxy.
    pub fn cut(&self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("reuseaddr");
            match socket.bind(self.addr).and_then(|()| socket.listen(128)) {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

/// Copies bytes from one socket to the other until either closes (tokio's `io-util` is
/// not enabled in this workspace).
async fn pump(from: &TcpStream, to: &TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        from.readable().await?;
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            to.writable().await?;
            match to.try_write(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}
