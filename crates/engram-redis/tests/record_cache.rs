//! The working tier behind the cache: the mirror memories records' writes make, change
//! and delete (in the record's transaction) must invalidate exactly what the same write
//! through the memory port would, outages included; conversation buffers (a session's
//! first page of messages) are served from Redis and dropped by every write to them.

mod common;

use std::time::Duration;

use common::*;
use engram_core::working::service::render;
use engram_core::working::{Record, RecordKind};
use engram_core::{
    ChangeOp, CoreError, MemoryId, MemoryStore, MirrorWrite, RecordStore, StoreError,
};
use engram_redis::CacheConfig;
use serde_json::{json, Map, Value};

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().expect("an object")
}

async fn decision(env: &Env, what: &str, user: &str) -> (Record, MemoryId) {
    let d = env
        .working
        .create(
            &tenant("acme"),
            RecordKind::Decision,
            obj(json!({"what": what, "user_id": user})),
        )
        .await
        .expect("create decision");
    let mid = d.memory_id.expect("a decision has a mirror");
    (d, mid)
}

async fn contents(env: &Env, user: &str) -> Vec<String> {
    env.service
        .list(&tenant("acme"), &by_user(user))
        .await
        .expect("list")
        .result
        .items
        .into_iter()
        .map(|m| m.content)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_writes_invalidate_what_memory_writes_do() {
    let env = Env::new().await;
    let t = tenant("acme");
    // Cached empty lists for both users.
    assert!(contents(&env, "alice").await.is_empty());
    assert!(contents(&env, "bob").await.is_empty());
    let lists = env.counting.lists();
    assert!(contents(&env, "alice").await.is_empty());
    assert_eq!(env.counting.lists(), lists, "the list came from Redis");

    // Create: the mirror joins its user's list.
    let (d, mid) = decision(&env, "adopt postgres", "alice").await;
    assert_eq!(contents(&env, "alice").await, [render(&d)]);
    env.service.get(&t, mid).await.expect("get");
    let gets = env.counting.gets();
    env.service.get(&t, mid).await.expect("get");
    assert_eq!(env.counting.gets(), gets, "the mirror is cached");

    // Update: the entry and the list follow.
    let d2 = env
        .working
        .update(
            &t,
            RecordKind::Decision,
            d.id,
            obj(json!({"what": "adopt postgres 18"})),
        )
        .await
        .expect("update");
    let got = env.service.get(&t, mid).await.expect("get");
    assert_eq!(
        (got.content.as_str(), got.version),
        (render(&d2).as_str(), 2)
    );
    assert_eq!(contents(&env, "alice").await, [render(&d2)]);

    // Move to another user: both users' lists change.
    env.working
        .update(
            &t,
            RecordKind::Decision,
            d.id,
            obj(json!({"user_id": "bob"})),
        )
        .await
        .expect("move");
    assert!(contents(&env, "alice").await.is_empty());
    assert_eq!(contents(&env, "bob").await, [render(&d2)]);

    // Delete: gone from the entry and the list at once.
    env.working
        .delete(&t, RecordKind::Decision, d.id)
        .await
        .expect("delete");
    assert_eq!(
        env.service.get(&t, mid).await.unwrap_err(),
        CoreError::NotFound { what: "memory" }
    );
    assert!(contents(&env, "bob").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_migration_invalidates_the_mirrors_it_keeps_and_the_lists_it_grows() {
    let env = Env::new().await;
    let t = tenant("acme");
    let (d, mid) = decision(&env, "keep a long-term tier", "alice").await;
    let task = env
        .working
        .create(
            &t,
            RecordKind::Task,
            obj(json!({"title": "ship", "status": "done", "user_id": "alice"})),
        )
        .await
        .expect("task");
    env.service.get(&t, mid).await.expect("cache the mirror");
    assert_eq!(contents(&env, "alice").await, [render(&d)]);

    let cutoff = engram_core::time::now() + chrono::Duration::seconds(1);
    let report = env
        .working
        .migrate_tiers(&t, cutoff, &engram_core::working::service::Verbatim)
        .await
        .expect("migrate");
    assert_eq!((report.moved, report.kept_mirrors), (2, 1));
    let kept = env.service.get(&t, mid).await.expect("get");
    assert!(
        kept.tags.iter().any(|t| t == "tier:long_term"),
        "{:?}",
        kept.tags
    );
    let mut listed = contents(&env, "alice").await;
    listed.sort();
    let mut want = vec![render(&d), render(&task)];
    want.sort();
    assert_eq!(listed, want, "the new long-term memory is in the list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_write_the_store_refused_clears_only_the_memory_entry() {
    let env = Env::new().await;
    let t = tenant("acme");
    let (d, mid) = decision(&env, "first", "alice").await;
    env.service.get(&t, mid).await.expect("cache the mirror");
    assert_eq!(contents(&env, "alice").await.len(), 1);
    let mut r = redis().await;
    let entry = format!("{}:acme:memory:{mid}", env.prefix());
    let recent = format!("{}:acme:memories:user:alice:recent:20", env.prefix());
    assert!(get_raw(&mut r, &entry).await.is_some());
    assert!(get_raw(&mut r, &recent).await.is_some());

    let m = env.store.get(&t, mid).await.expect("get").expect("mirror");
    let mut stale = m.clone();
    stale.content = "never stored".into();
    stale.version = m.version + 2;
    let mut next = d.clone();
    next.version += 1;
    let out = env
        .records
        .replace_record(
            &next,
            d.version,
            Some(MirrorWrite::Replace {
                next: stale,
                expected_version: m.version + 1,
                op: ChangeOp::Updated,
            }),
        )
        .await;
    assert!(matches!(out, Err(StoreError::Conflict(_))), "{out:?}");
    assert!(
        get_raw(&mut r, &entry).await.is_none(),
        "the entry may be what was stale: dropped"
    );
    assert!(
        get_raw(&mut r, &recent).await.is_some(),
        "nothing was written: the list stays"
    );
    assert_eq!(
        env.service.get(&t, mid).await.expect("get").content,
        m.content
    );
}

fn fast(prefix: &str) -> CacheConfig {
    CacheConfig {
        prefix: prefix.into(),
        op_timeout: Duration::from_millis(300),
        health_interval: Duration::from_millis(50),
        ..CacheConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_write_during_an_outage_is_never_served_stale_afterwards() {
    let proxy = Proxy::start().await;
    let prefix = unique_prefix();
    // Replica A reaches Redis through the proxy; replica B directly. Same store.
    let a = Env::with(&proxy.url(), fast(&prefix)).await;
    let b = a.replica(&redis_url(), fast(&prefix));
    let t = tenant("acme");
    let (d, mid) = decision(&a, "v1", "alice").await;
    a.service.get(&t, mid).await.expect("cache v1");
    assert_eq!(contents(&a, "alice").await, [render(&d)]);

    proxy.cut();
    eventually(5, "A notices the outage", || !a.cache.is_up()).await;
    let d2 = a
        .working
        .update(&t, RecordKind::Decision, d.id, obj(json!({"what": "v2"})))
        .await
        .expect("update during the outage");
    assert_eq!(
        a.service.get(&t, mid).await.expect("get").content,
        render(&d2)
    );
    assert_eq!(
        a.cache.pending_invalidations(),
        1,
        "the invalidation is queued"
    );

    // The stale entry is still in Redis; B may serve it until A is back (the bound).
    let mut r = redis().await;
    let key = format!("{prefix}:acme:memory:{mid}");
    assert!(get_raw(&mut r, &key).await.is_some());
    assert_eq!(
        b.service.get(&t, mid).await.expect("get").content,
        render(&d)
    );

    proxy.restore().await;
    eventually(10, "A is back and has applied its queue", || {
        a.cache.is_up()
    })
    .await;
    assert_eq!(a.cache.pending_invalidations(), 0);
    assert!(
        get_raw(&mut r, &key).await.is_none(),
        "the stale entry was removed"
    );
    for env in [&a, &b] {
        let got = env.service.get(&t, mid).await.expect("get");
        assert_eq!((got.content, got.version), (render(&d2), 2));
        assert_eq!(contents(env, "alice").await, [render(&d2)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_read_from_the_store() {
    let env = Env::new().await;
    let t = tenant("acme");
    let (d, _) = decision(&env, "not cached", "alice").await;
    let got = env
        .records
        .get_record(&t, d.id)
        .await
        .expect("get")
        .expect("record");
    assert_eq!(got, d);
    let mut r = redis().await;
    let keys = scan(&mut r, &format!("{}:*", env.prefix())).await;
    assert!(
        keys.iter().all(|k| !k.contains(&d.id.to_string())),
        "no key names the record: {keys:?}"
    );
}

async fn say(
    w: &engram_core::working::service::WorkingService,
    session: &Record,
    content: &str,
) -> Record {
    w.add_to_session(
        &tenant("acme"),
        session.id,
        RecordKind::Message,
        obj(json!({"role": "user", "content": content})),
    )
    .await
    .expect("add message")
}

async fn buffer(env: &Env, session: &Record) -> Vec<String> {
    let mut q = engram_core::working::RecordQuery::of(RecordKind::Message);
    q.parent_id = Some(session.id);
    q.oldest_first = true;
    q.limit = 20;
    env.working
        .list(&tenant("acme"), &q)
        .await
        .expect("list messages")
        .items
        .into_iter()
        .map(|r| r.body["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversation_buffers_come_from_redis_and_are_never_stale_after_a_write() {
    let env = Env::new().await;
    let t = tenant("acme");
    let session = env
        .working
        .create(&t, RecordKind::Session, obj(json!({"title": "standup"})))
        .await
        .expect("session");
    say(&env.working, &session, "m1").await;
    let m2 = say(&env.working, &session, "m2").await;
    assert_eq!(buffer(&env, &session).await, ["m1", "m2"]);

    // The buffer is in Redis, under the session.
    let mut conn = redis().await;
    let key = format!(
        "{}:acme:working:session:{}:buffer:asc:20",
        env.prefix(),
        session.id
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(exists, "{key} holds the buffer");

    // A write that bypasses this cache (straight to the store) is not seen while the
    // buffer lives: the page is served from Redis.
    let direct = engram_core::working::service::WorkingService::new(
        std::sync::Arc::new(env.sqlite.clone()),
        std::sync::Arc::new(env.sqlite.clone()),
        None,
    );
    say(&direct, &session, "m3").await;
    assert_eq!(buffer(&env, &session).await, ["m1", "m2"]);

    // Writes through the cache drop it: the next read is the store's.
    say(&env.working, &session, "m4").await;
    assert_eq!(buffer(&env, &session).await, ["m1", "m2", "m3", "m4"]);
    env.working
        .update(
            &t,
            RecordKind::Message,
            m2.id,
            obj(json!({"content": "m2'"})),
        )
        .await
        .expect("update");
    assert_eq!(buffer(&env, &session).await, ["m1", "m2'", "m3", "m4"]);
    env.working
        .delete(&t, RecordKind::Message, m2.id)
        .await
        .expect("delete");
    assert_eq!(buffer(&env, &session).await, ["m1", "m3", "m4"]);

    // Another replica on the same Redis sees the same, and its writes reach this one.
    let other = env.replica(&redis_url(), env.cache.config().clone());
    assert_eq!(buffer(&other, &session).await, ["m1", "m3", "m4"]);
    say(&other.working, &session, "m5").await;
    assert_eq!(buffer(&env, &session).await, ["m1", "m3", "m4", "m5"]);

    // Deleting the session takes its messages, and the buffer with them.
    env.working
        .delete(&t, RecordKind::Session, session.id)
        .await
        .expect("delete session");
    let kept: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("exists");
    assert!(!kept, "the buffer was dropped");
    assert!(buffer(&env, &session).await.is_empty());
}
