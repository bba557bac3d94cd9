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

/// The keyword index holds what the re-ranker reads of every live memory (so hybrid search
/// loads only its hits) and follows updates and deletes; for a speaker key other than
/// the one it was opened with it holds nothing, and search loads the memories instead.
#[tokio::test]
async fn the_index_holds_rerank_fields_of_live_memories() {
    use engram_core::validate::{Label, Metadata};
    use engram_core::RerankFields;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&SqliteConfig {
        vector_index: false,
        speaker_key: "who".into(),
        ..SqliteConfig::new(dir.path())
    })
    .unwrap();
    let svc = MemoryService::new(std::sync::Arc::new(store.clone()));
    let t = TenantId::parse("acme").unwrap();
    let mut n = NewMemory::note("Shall we move the standup to Tuesday?").unwrap();
    n.session_id = Some(Label::parse("s1".into(), "session_id").unwrap());
    n.metadata = Metadata::parse(serde_json::json!({"who": "Ann"}), "metadata").unwrap();
    n.valid_from = Some("2023-05-08T13:56:00Z".parse().unwrap());
    let (m, _) = svc.remember(&t, n, None).await.unwrap();
    let (plain, _) = svc
        .remember(&t, NewMemory::note("standup notes").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(keyword(&store, &t, "standup").await.len(), 2);

    let ids = [m.id, plain.id];
    let held = store.rerank_fields(&t, &ids, "who").await.unwrap();
    assert_eq!(held.len(), 2);
    let f = &held[&m.id];
    assert_eq!(*f, RerankFields::of(&m, "who"));
    assert_eq!(
        (
            f.session.as_deref(),
            f.speaker.as_deref(),
            f.words,
            f.question
        ),
        (Some("s1"), Some("Ann"), 7, true)
    );
    assert_eq!(held[&plain.id], RerankFields::of(&plain, "who"));
    assert!(store
        .rerank_fields(&t, &ids, "speaker")
        .await
        .unwrap()
        .is_empty());
    let other = TenantId::parse("other").unwrap();
    assert!(store
        .rerank_fields(&other, &ids, "who")
        .await
        .unwrap()
        .is_empty());

    // An update shows after the next search brings the index up to date.
    let patch = MemoryPatch {
        metadata: Some(Metadata::parse(serde_json::json!({"who": "Bo"}), "metadata").unwrap()),
        content: Some(
            engram_core::validate::Content::parse("Standup moved.".into(), "content").unwrap(),
        ),
        ..MemoryPatch::default()
    };
    let updated = svc.update(&t, m.id, patch).await.unwrap();
    svc.forget(&t, plain.id).await.unwrap();
    assert_eq!(keyword(&store, &t, "standup").await, [m.id]);
    let held = store.rerank_fields(&t, &ids, "who").await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[&m.id], RerankFields::of(&updated, "who"));
    assert_eq!(held[&m.id].speaker.as_deref(), Some("Bo"));
    assert!(!held[&m.id].question);
}
