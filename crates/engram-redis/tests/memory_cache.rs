//! The memory and list caches against the real Redis, over a real SQLite store, driven
//! through `MemoryService`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use engram_core::{
    ChangeOp, ChangeRecord, CoreError, InsertMemory, InsertOutcome, ListQuery, ListResult, Memory,
    MemoryId, MemoryService, MemoryStore, StoreError, TenantId, Timestamp,
};
use engram_redis::CachedMemoryStore;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_get_is_served_from_redis() {
    let env = Env::new().await;
    let t = tenant("acme");
    let m = env.remember(&t, "the first memory", Some("alice")).await;

    let first = env.service.get(&t, m.id).await.expect("get");
    let after_first = env.counting.gets();
    let second = env.service.get(&t, m.id).await.expect("get");
    assert_eq!(
        env.counting.gets(),
        after_first,
        "second get reached the store"
    );
    assert_eq!(first.content, second.content);
    assert_eq!(second.version, m.version);

    let mut r = redis().await;
    let key = format!("{}:acme:memory:{}", env.prefix(), m.id);
    let raw = get_raw(&mut r, &key).await.expect("memory entry in Redis");
    let cached: Memory = serde_json::from_slice(&raw).expect("cached memory is JSON");
    assert_eq!(cached.id, m.id);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut r)
        .await
        .expect("PTTL");
    assert!(
        ttl > 290_000 && ttl <= 300_000,
        "memory TTL is 5 min, got {ttl} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_mixes_hits_and_misses() {
    let env = Env::new().await;
    let t = tenant("acme");
    let a = env.remember(&t, "a", None).await;
    let b = env.remember(&t, "b", None).await;
    env.service.get(&t, a.id).await.expect("get a");
    let got = env
        .store
        .get_many(&t, &[a.id, b.id, MemoryId::new(), a.id])
        .await
        .expect("get_many");
    let mut ids: Vec<_> = got.iter().map(|m| m.id).collect();
    ids.sort();
    let mut want = vec![a.id, b.id];
    want.sort();
    assert_eq!(ids, want);
    let before = env.counting.gets();
    let again = env
        .store
        .get_many(&t, &[a.id, b.id])
        .await
        .expect("get_many");
    assert_eq!(again.len(), 2);
    assert_eq!(env.counting.gets(), before, "both are cached now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_is_visible_at_once() {
    let env = Env::new().await;
    let t = tenant("acme");
    let m = env.remember(&t, "v1", Some("alice")).await;
    for i in 2..=20 {
        env.service.get(&t, m.id).await.expect("get"); // cached
        let written = env.set_content(&t, m.id, &format!("v{i}")).await;
        let read = env.service.get(&t, m.id).await.expect("get");
        assert_eq!(read.content, format!("v{i}"));
        assert_eq!(read.version, written.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_memory_is_gone_at_once() {
    let env = Env::new().await;
    let t = tenant("acme");
    let m = env.remember(&t, "to forget", Some("alice")).await;
    env.service.get(&t, m.id).await.expect("get");
    let listed = env.service.list(&t, &by_user("alice")).await.expect("list");
    assert_eq!(listed.result.items.len(), 1);

    env.service.forget(&t, m.id).await.expect("forget");
    assert!(matches!(
        env.service.get(&t, m.id).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(env
        .store
        .get_many(&t, &[m.id])
        .await
        .expect("get_many")
        .is_empty());
    let listed = env.service.list(&t, &by_user("alice")).await.expect("list");
    assert!(listed.result.items.is_empty());
    assert_eq!(listed.result.total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_lists_follow_create_update_move_and_delete() {
    let env = Env::new().await;
    let t = tenant("acme");
    let contents = |l: &engram_core::Listing| -> Vec<String> {
        l.result.items.iter().map(|m| m.content.clone()).collect()
    };
    let list = |u: &'static str| {
        let s = env.service.clone();
        let t = t.clone();
        async move { s.list(&t, &by_user(u)).await.expect("list") }
    };

    assert!(list("alice").await.result.items.is_empty());
    let lists = env.counting.lists();
    assert!(list("alice").await.result.items.is_empty());
    assert_eq!(env.counting.lists(), lists, "second list came from Redis");

    // Create.
    let m = env.remember(&t, "alice 1", Some("alice")).await;
    assert_eq!(contents(&list("alice").await), ["alice 1"]);
    assert!(list("bob").await.result.items.is_empty()); // bob's list cached, empty

    // Update.
    env.set_content(&t, m.id, "alice 1 edited").await;
    assert_eq!(contents(&list("alice").await), ["alice 1 edited"]);

    // Move to bob: both lists change.
    env.service
        .update(&t, m.id, user_patch("bob"))
        .await
        .expect("move");
    assert!(list("alice").await.result.items.is_empty());
    let bob = list("bob").await;
    assert_eq!(contents(&bob), ["alice 1 edited"]);
    assert_eq!(bob.result.total, 1);

    // A list with more filters (its own key) is invalidated too.
    let mut tagged = by_user("bob");
    tagged.per_page = 5;
    assert_eq!(
        env.service
            .list(&t, &tagged)
            .await
            .expect("list")
            .result
            .total,
        1
    );

    // Delete.
    env.service.forget(&t, m.id).await.expect("forget");
    assert!(list("bob").await.result.items.is_empty());
    assert_eq!(
        env.service
            .list(&t, &tagged)
            .await
            .expect("list")
            .result
            .total,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_keys_are_named_per_user_and_tenant_wide_lists_are_not_cached() {
    let env = Env::new().await;
    let t = tenant("acme");
    env.remember(&t, "one", Some("al:ice*")).await;
    env.service
        .list(&t, &by_user("al:ice*"))
        .await
        .expect("list");
    let mut paged = by_user("al:ice*");
    paged.per_page = 7;
    paged.sort_order = engram_core::SortOrder::Asc;
    env.service.list(&t, &paged).await.expect("list");

    let mut r = redis().await;
    let keys = scan(&mut r, &format!("{}:acme:memories:*", env.prefix())).await;
    let base = format!("{}:acme:memories:user:al%3Aice%2A", env.prefix());
    assert!(keys.contains(&format!("{base}:recent:20")), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.starts_with(&format!("{base}:list:"))),
        "{keys:?}"
    );
    assert!(keys.contains(&format!("{base}:keys")), "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{base}:recent:20"))
        .query_async(&mut r)
        .await
        .expect("PTTL");
    assert!(
        ttl > 50_000 && ttl <= 60_000,
        "recent TTL is 1 min, got {ttl} ms"
    );

    let before = env.counting.lists();
    env.service
        .list(&t, &ListQuery::default())
        .await
        .expect("list");
    env.service
        .list(&t, &ListQuery::default())
        .await
        .expect("list");
    assert_eq!(
        env.counting.lists(),
        before + 2,
        "tenant-wide lists pass through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_other() {
    let env = Env::new().await;
    let (t1, t2) = (tenant("one"), tenant("two"));
    let m1 = env
        .remember(&t1, "tenant one's secret", Some("alice"))
        .await;
    let m2 = env.remember(&t2, "tenant two's note", Some("alice")).await;
    env.service.get(&t1, m1.id).await.expect("cached for t1");
    env.service
        .list(&t1, &by_user("alice"))
        .await
        .expect("cached for t1");

    assert!(matches!(
        env.service.get(&t2, m1.id).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(env
        .store
        .get_many(&t2, &[m1.id])
        .await
        .expect("get_many")
        .is_empty());
    let l2 = env
        .service
        .list(&t2, &by_user("alice"))
        .await
        .expect("list");
    assert_eq!(l2.result.items.len(), 1);
    assert_eq!(l2.result.items[0].id, m2.id);
    let l1 = env
        .service
        .list(&t1, &by_user("alice"))
        .await
        .expect("list");
    assert_eq!(l1.result.items[0].id, m1.id);

    // Even an entry planted under the wrong tenant's key is not served.
    let mut r = redis().await;
    let raw = get_raw(&mut r, &format!("{}:one:memory:{}", env.prefix(), m1.id))
        .await
        .expect("cached");
    let _: () = redis::cmd("SET")
        .arg(format!("{}:two:memory:{}", env.prefix(), m1.id))
        .arg(raw)
        .query_async(&mut r)
        .await
        .expect("SET");
    assert!(matches!(
        env.service.get(&t2, m1.id).await,
        Err(CoreError::NotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_bypassed_the_cache_does_not_wedge_updates() {
    let env = Env::new().await;
    let t = tenant("acme");
    let m = env.remember(&t, "v1", None).await;
    env.service.get(&t, m.id).await.expect("cached at v1");
    // Another writer without the cache moves the memory on.
    MemoryService::new(Arc::new(env.sqlite.clone()))
        .update(&t, m.id, content_patch("v2"))
        .await
        .expect("direct update");
    // The cached v1 makes the first compare-and-swap fail; the conflict drops the entry.
    let m3 = env.set_content(&t, m.id, "v3").await;
    assert_eq!(m3.version, 3);
    assert_eq!(env.service.get(&t, m.id).await.expect("get").content, "v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_user_leaves_nothing_of_that_user_in_redis() {
    let env = Env::new().await;
    let t = tenant("acme");
    let a = env.remember(&t, "alice's", Some("alice")).await;
    let b = env.remember(&t, "bob's", Some("bob")).await;
    for m in [&a, &b] {
        env.service.get(&t, m.id).await.expect("get");
    }
    env.service.list(&t, &by_user("alice")).await.expect("list");
    env.service.list(&t, &by_user("bob")).await.expect("list");
    let mut r = redis().await;
    let tenant_keys = format!("{}:acme:*", env.prefix());
    let before = scan(&mut r, &tenant_keys).await;
    assert!(before.iter().any(|k| k.contains(&a.id.to_string())));
    assert!(before.iter().any(|k| k.contains(":user:alice:")));

    assert_eq!(env.store.purge_user(&t, "alice").await.expect("purge"), 1);

    let after = scan(&mut r, &tenant_keys).await;
    assert!(
        !after
            .iter()
            .any(|k| k.contains(&a.id.to_string()) || k.contains(":user:alice:")),
        "keys of the purged user remain: {after:?}"
    );
    assert!(matches!(
        env.service.get(&t, a.id).await,
        Err(CoreError::NotFound { .. })
    ));
    assert!(env
        .service
        .list(&t, &by_user("alice"))
        .await
        .expect("list")
        .result
        .items
        .is_empty());
    assert_eq!(
        env.service.get(&t, b.id).await.expect("bob's").content,
        "bob's"
    );
    assert_eq!(
        env.service
            .list(&t, &by_user("bob"))
            .await
            .expect("list")
            .result
            .total,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_tenant_leaves_no_key_of_the_tenant() {
    let env = Env::new().await;
    let (t, other) = (tenant("gone"), tenant("stays"));
    for (tn, u) in [(&t, "alice"), (&t, "bob"), (&other, "alice")] {
        let m = env.remember(tn, "something", Some(u)).await;
        env.service.get(tn, m.id).await.expect("get");
        env.service.list(tn, &by_user(u)).await.expect("list");
    }
    let mut r = redis().await;
    assert!(!scan(&mut r, &format!("{}:gone:*", env.prefix()))
        .await
        .is_empty());

    env.store.purge_tenant(&t).await.expect("purge");

    let left = scan(&mut r, &format!("{}:gone:*", env.prefix())).await;
    assert!(
        left.is_empty(),
        "keys of the purged tenant remain: {left:?}"
    );
    let others = scan(&mut r, &format!("{}:stays:*", env.prefix())).await;
    assert!(others.iter().any(|k| k.contains(":memory:")), "{others:?}");
}

/// A store that holds the first `get_many` after it has read, until released: the reader
/// then carries a row that a writer replaces meanwhile.
struct Gate {
    inner: Arc<dyn MemoryStore>,
    armed: AtomicBool,
    parked: Notify,
    release: Notify,
}

#[async_trait]
impl MemoryStore for Gate {
    async fn insert(
        &self,
        tenant: &TenantId,
        items: Vec<InsertMemory>,
    ) -> Result<Vec<Result<InsertOutcome, StoreError>>, StoreError> {
        self.inner.insert(tenant, items).await
    }
    async fn get(&self, tenant: &TenantId, id: MemoryId) -> Result<Option<Memory>, StoreError> {
        self.inner.get(tenant, id).await
    }
    async fn get_many(
        &self,
        tenant: &TenantId,
        ids: &[MemoryId],
    ) -> Result<Vec<Memory>, StoreError> {
        let rows = self.inner.get_many(tenant, ids).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.parked.notify_one();
            self.release.notified().await;
        }
        rows
    }
    async fn touch(&self, t: &TenantId, ids: &[MemoryId], at: Timestamp) -> Result<(), StoreError> {
        self.inner.touch(t, ids, at).await
    }
    async fn list(&self, tenant: &TenantId, query: &ListQuery) -> Result<ListResult, StoreError> {
        let rows = self.inner.list(tenant, query).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.parked.notify_one();
            self.release.notified().await;
        }
        rows
    }
    async fn replace(&self, next: &Memory, v: i64, op: ChangeOp) -> Result<(), StoreError> {
        self.inner.replace(next, v, op).await
    }
    async fn changes(&self, t: &TenantId, s: i64, l: u32) -> Result<Vec<ChangeRecord>, StoreError> {
        self.inner.changes(t, s, l).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_an_old_row_cannot_put_it_back() {
    let env = Env::new().await;
    let t = tenant("acme");
    let m = env.remember(&t, "old", Some("alice")).await;
    let gate = Arc::new(Gate {
        inner: Arc::new(env.sqlite.clone()),
        armed: AtomicBool::new(false),
        parked: Notify::new(),
        release: Notify::new(),
    });
    let gated = Arc::new(CachedMemoryStore::new(gate.clone(), env.cache.clone()));
    let mut r = redis().await;

    // The memory: the reader misses, reads "old", and waits; the write lands; the reader
    // then tries to fill with "old".
    gate.armed.store(true, Ordering::SeqCst);
    let reader = tokio::spawn({
        let (gated, t) = (gated.clone(), t.clone());
        async move { gated.get(&t, m.id).await }
    });
    gate.parked.notified().await;
    let written = env.set_content(&t, m.id, "new").await;
    gate.release.notify_one();
    let stale = reader.await.expect("reader").expect("get").expect("found");
    assert_eq!(stale.content, "old", "the reader did read before the write");
    let key = format!("{}:acme:memory:{}", env.prefix(), m.id);
    if let Some(raw) = get_raw(&mut r, &key).await {
        let cached: Memory = serde_json::from_slice(&raw).expect("json");
        assert!(cached.version >= written.version, "the old row was cached");
    }
    assert_eq!(
        gated
            .get(&t, m.id)
            .await
            .expect("get")
            .expect("found")
            .content,
        "new"
    );

    // The same for a user's list.
    gate.armed.store(true, Ordering::SeqCst);
    let reader = tokio::spawn({
        let (gated, t) = (gated.clone(), t.clone());
        async move { gated.list(&t, &by_user("alice")).await }
    });
    gate.parked.notified().await;
    env.set_content(&t, m.id, "newer").await;
    gate.release.notify_one();
    let stale = reader.await.expect("reader").expect("list");
    assert_eq!(stale.items[0].content, "new");
    let fresh = env.service.list(&t, &by_user("alice")).await.expect("list");
    assert_eq!(fresh.result.items[0].content, "newer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_never_see_a_version_older_than_an_acknowledged_write() {
    let env = Env::new().await;
    let t = tenant("acme");
    let ids: Vec<MemoryId> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                env.remember(&t, &format!("m{i} v1"), Some("alice"))
                    .await
                    .id,
            );
        }
        v
    };
    let acked: Arc<Vec<AtomicI64>> = Arc::new(ids.iter().map(|_| AtomicI64::new(1)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    for w in 0..2 {
        let (s, t, ids, acked, stop) = (
            env.service.clone(),
            t.clone(),
            ids.clone(),
            acked.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let i = ((n + w) % ids.len() as u64) as usize;
                let m = s
                    .update(&t, ids[i], content_patch(&format!("w{w} n{n}")))
                    .await
                    .expect("update");
                acked[i].fetch_max(m.version, Ordering::SeqCst);
                n += 1;
            }
            n
        }));
    }
    for _ in 0..4 {
        let (s, t, ids, acked, stop) = (
            env.service.clone(),
            t.clone(),
            ids.clone(),
            acked.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let i = (n % ids.len() as u64) as usize;
                let floor = acked[i].load(Ordering::SeqCst);
                let m = s.get(&t, ids[i]).await.expect("get");
                assert!(
                    m.version >= floor,
                    "read version {} after version {floor} was acknowledged",
                    m.version
                );
                let floors: Vec<i64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
                let listed = s.list(&t, &by_user("alice")).await.expect("list");
                for m in &listed.result.items {
                    let j = ids.iter().position(|id| *id == m.id).expect("known id");
                    assert!(
                        m.version >= floors[j],
                        "listed version {} after version {} was acknowledged",
                        m.version,
                        floors[j]
                    );
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("task");
    }
    assert!(total > 50, "too few operations to mean anything: {total}");
}
