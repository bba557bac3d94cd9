//! The in-process keyword index as derived state: two handles on one data directory (as
//! two processes) see each other's writes, title changes and deletions at once, and a
//! change log truncated past one of them makes it rebuild rather than miss changes.

use engram_core::validate::{Tags, Title};
use engram_core::{
    Bm25, MemoryFilter, MemoryId, MemoryPatch, MemoryService, NewMemory, SearchIndex, TenantId,
};
use engram_sqlite::{SqliteConfig, SqliteStore, DB_FILE};

async fn keyword(store: &SqliteStore, t: &TenantId, q: &str) -> Vec<MemoryId> {
    store
        .keyword(t, q, &MemoryFilter::default(), 10, Bm25::default())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

#[tokio::test]
async fn a_second_handle_sees_writes_updates_and_deletes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = SqliteStore::open(&SqliteConfig::new(dir.path())).unwrap();
    // Like a one-shot command: no vector index, no upkeep thread.
    let b = SqliteStore::open(&SqliteConfig {
        vector_index: false,
        ..SqliteConfig::new(dir.path())
    })
    .unwrap();
    let t = TenantId::parse("acme").unwrap();
    let other = TenantId::parse("other").unwrap();
    let svc = MemoryService::new(std::sync::Arc::new(a.clone()));

    let (m, _) = svc
        .remember(
            &t,
            NewMemory::note("The deploy pipeline broke").unwrap(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(b.keyword_indexed(), 0);
    assert_eq!(keyword(&b, &t, "pipelines").await, [m.id]);
    assert_eq!(b.keyword_indexed(), 1);
    assert!(keyword(&b, &other, "pipeline").await.is_empty());

    // Built by b's first search; later writes are found without a rebuild.
    let (n, _) = svc
        .remember(&t, NewMemory::note("Rollback of the deploy").unwrap(), None)
        .await
        .unwrap();
    let both = keyword(&b, &t, "deploy").await;
    assert_eq!(both.len(), 2);
    assert!(both.contains(&n.id));

    // A new title and tags are searchable; the old text is not.
    let patch = MemoryPatch {
        title: Some(Some(
            Title::parse("Quarterly retrospective".into(), "title").unwrap(),
        )),
        tags: Some(Tags::parse(&["kubernetes"], "tags").unwrap()),
        content: Some(engram_core::validate::Content::parse("Renamed".into(), "content").unwrap()),
        ..MemoryPatch::default()
    };
    svc.update(&t, m.id, patch).await.unwrap();
    assert_eq!(keyword(&b, &t, "retrospective").await, [m.id]);
    assert_eq!(keyword(&b, &t, "kubernetes").await, [m.id]);
    assert!(keyword(&b, &t, "pipeline").await.is_empty());

    svc.forget(&t, n.id).await.unwrap();
    assert!(keyword(&b, &t, "rollback").await.is_empty());
    assert!(keyword(&a, &t, "rollback").await.is_empty());
}

#[tokio::test]
async fn a_log_truncated_past_the_index_makes_it_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig {
        vector_index: false,
        ..SqliteConfig::new(dir.path())
    })
    .unwrap();
    let t = TenantId::parse("acme").unwrap();
    let svc = MemoryService::new(std::sync::Arc::new(store.clone()));
    let (m, _) = svc
        .remember(&t, NewMemory::note("alpha bravo").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(keyword(&store, &t, "alpha").await, [m.id]);

    // Another process changes the memory, then cuts the log past this index.
    svc.update(
        &t,
        m.id,
        MemoryPatch {
            content: Some(
                engram_core::validate::Content::parse("charlie delta".into(), "content").unwrap(),
            ),
            ..MemoryPatch::default()
        },
    )
    .await
    .unwrap();
    let raw = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute_batch(
        "UPDATE ann_log_floor SET upto = (SELECT max(seq) FROM ann_log); DELETE FROM ann_log;",
    )
    .unwrap();
    drop(raw);

    assert!(keyword(&store, &t, "alpha").await.is_empty());
    assert_eq!(keyword(&store, &t, "charlie").await, [m.id]);
}
