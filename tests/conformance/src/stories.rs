//! The stories. Each takes a backend, makes its own fresh stores and asserts behaviour
//! through the core's use cases.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use engram_core::filter::Position;
use engram_core::validate::{Content, Label, Metadata, Tags, Title};
use engram_core::{
    BulkItemResult, ChangeOp, CoreError, EmbeddingStatus, KeyService, ListQuery, Memory,
    MemoryFilter, MemoryId, MemoryPatch, MemoryService, MemoryType, NewMemory, PageToken, SortBy,
    SortOrder, Source, TenantId,
};
use proptest::prelude::*;
use serde_json::json;

use crate::{Backend, Stores};

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn label(s: &str) -> Option<Label> {
    Some(Label::parse(s.to_owned(), "f").unwrap())
}

fn note(content: &str) -> NewMemory {
    NewMemory::note(content).unwrap()
}

fn rich(content: &str) -> NewMemory {
    let now = engram_core::time::now();
    NewMemory {
        content: Content::parse(content.to_owned(), "content").unwrap(),
        memory_type: MemoryType::Decision,
        source: Source::Chat,
        source_ref: Some(Label::parse_source_ref("history.jsonl:42".into(), "source_ref").unwrap()),
        title: Some(Title::parse("A title".into(), "title").unwrap()),
        tags: Tags::parse(&["alpha", "beta"], "tags").unwrap(),
        metadata: Metadata::parse(json!({"k": [1, {"n": null}], "s": "é"}), "metadata").unwrap(),
        user_id: label("u1"),
        agent_id: label("a1"),
        project: label("p1"),
        domain: label("d1"),
        session_id: label("s1"),
        valid_from: Some(now),
        valid_to: Some(now + chrono::Duration::days(1)),
        related_ids: vec![MemoryId::new()],
        conversation_id: label("c1"),
    }
}

fn service(s: &Stores) -> MemoryService {
    MemoryService::new(s.memories.clone())
}

pub async fn create_then_get_round_trips_every_field(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (created, replayed) = svc.remember(&t, rich("the content"), None).await.unwrap();
    assert!(!replayed);
    assert_eq!(created.embedding_status, EmbeddingStatus::Pending);
    assert_eq!(created.version, 1);
    assert_eq!(created.id.0.get_version_num(), 7, "ids are UUIDv7");
    let got = svc.get(&t, created.id).await.unwrap();
    let mut expected = created.clone();
    expected.accessed_at = got.accessed_at;
    assert_eq!(got, expected, "every field round-trips");
    assert!(got.accessed_at >= created.accessed_at);
    let missing = svc.get(&t, MemoryId::new()).await.unwrap_err();
    assert_eq!(missing, CoreError::NotFound { what: "memory" });
}

pub async fn idempotency_key_returns_the_original(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (first, r1) = svc.remember(&t, note("once"), Some("key-1")).await.unwrap();
    let (second, r2) = svc.remember(&t, note("once"), Some("key-1")).await.unwrap();
    assert!(!r1 && r2);
    assert_eq!(first.id, second.id);
    let err = svc
        .remember(&t, note("different"), Some("key-1"))
        .await
        .unwrap_err();
    assert_eq!(err, CoreError::IdempotencyKeyReused);
    // The same key in another tenant is another key.
    let (other, r3) = svc
        .remember(&tenant("t2"), note("once"), Some("key-1"))
        .await
        .unwrap();
    assert!(!r3);
    assert_ne!(other.id, first.id);
    // Concurrent retries create exactly one memory.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let svc = svc.clone();
            let t = t.clone();
            tokio::spawn(async move {
                svc.remember(&t, note("race"), Some("key-2"))
                    .await
                    .unwrap()
                    .0
                    .id
            })
        })
        .collect();
    let ids: Vec<MemoryId> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    let all = svc.list(&t, &ListQuery::default()).await.unwrap();
    assert_eq!(all.result.total, 2);
    let bad = svc
        .remember(&t, note("x"), Some("has space"))
        .await
        .unwrap_err();
    assert_eq!(bad.field(), Some("Idempotency-Key"));
}

pub async fn update_changes_only_given_fields(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (m, _) = svc.remember(&t, rich("before"), None).await.unwrap();
    let patch = MemoryPatch {
        title: Some(None),
        tags: Some(Tags::parse(&["gamma"], "tags").unwrap()),
        ..Default::default()
    };
    let u = svc.update(&t, m.id, patch).await.unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(u.title, None);
    assert_eq!(u.tags, vec!["gamma"]);
    assert_eq!(u.content, m.content);
    assert_eq!(u.scope, m.scope);
    assert_eq!(u.metadata, m.metadata);
    assert_eq!(u.created_at, m.created_at);
    assert!(u.updated_at >= m.updated_at);
    let got = svc.get(&t, m.id).await.unwrap();
    assert_eq!(got.tags, vec!["gamma"]);
    assert_eq!(got.version, 2);

    let patch = MemoryPatch {
        content: Some(Content::parse("after".into(), "content").unwrap()),
        ..Default::default()
    };
    let u = svc.update(&t, m.id, patch).await.unwrap();
    assert_eq!(u.version, 3);
    assert_eq!(u.embedding_status, EmbeddingStatus::Pending);
    assert_eq!(u.content_hash, engram_core::memory::content_hash("after"));
    // A patch that changes nothing is not a change.
    let same = svc.update(&t, m.id, MemoryPatch::default()).await.unwrap();
    assert_eq!(same.version, 3);
    // Tag filters follow the update.
    let q = ListQuery {
        filter: MemoryFilter {
            tags: vec!["alpha".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(svc.list(&t, &q).await.unwrap().result.total, 0);
    let missing = svc
        .update(&t, MemoryId::new(), MemoryPatch::default())
        .await
        .unwrap_err();
    assert_eq!(missing, CoreError::NotFound { what: "memory" });
}

pub async fn concurrent_updates_all_land(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (m, _) = svc.remember(&t, note("shared"), None).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let svc = svc.clone();
            let t = t.clone();
            tokio::spawn(async move {
                let patch = MemoryPatch {
                    metadata: Some(Metadata::parse(json!({ "writer": i }), "metadata").unwrap()),
                    ..Default::default()
                };
                svc.update(&t, m.id, patch).await.unwrap()
            })
        })
        .collect();
    for r in futures::future::join_all(tasks).await {
        r.unwrap();
    }
    let got = svc.get(&t, m.id).await.unwrap();
    assert_eq!(
        got.version, 11,
        "every concurrent update bumped the version once"
    );
    let changes = svc.changes(&t, 0, 100).await.unwrap();
    assert_eq!(changes.len(), 11);
}

pub async fn delete_hides_everywhere(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (m, _) = svc.remember(&t, rich("to forget"), None).await.unwrap();
    let (keep, _) = svc.remember(&t, rich("to keep"), None).await.unwrap();
    svc.forget(&t, m.id).await.unwrap();
    assert_eq!(
        svc.get(&t, m.id).await.unwrap_err(),
        CoreError::NotFound { what: "memory" }
    );
    assert_eq!(
        svc.forget(&t, m.id).await.unwrap_err(),
        CoreError::NotFound { what: "memory" }
    );
    assert_eq!(
        svc.update(&t, m.id, MemoryPatch::default())
            .await
            .unwrap_err(),
        CoreError::NotFound { what: "memory" }
    );
    assert_eq!(
        svc.retry_embedding(&t, m.id).await.unwrap_err(),
        CoreError::NotFound { what: "memory" }
    );
    for filter in [
        MemoryFilter::default(),
        MemoryFilter {
            tags: vec!["alpha".into()],
            ..Default::default()
        },
        MemoryFilter {
            user_id: Some("u1".into()),
            ..Default::default()
        },
        MemoryFilter {
            memory_types: vec![MemoryType::Decision],
            ..Default::default()
        },
    ] {
        let q = ListQuery {
            filter,
            ..Default::default()
        };
        let l = svc.list(&t, &q).await.unwrap();
        assert_eq!(l.result.total, 1);
        assert_eq!(l.result.items[0].id, keep.id);
    }
    let log = svc.changes(&t, 0, 10).await.unwrap();
    let last = log.last().unwrap();
    assert_eq!(last.op, ChangeOp::Deleted);
    assert!(last.memory.deleted_at.is_some());
}

/// A corpus with varied attributes, to compare store filtering with `MemoryFilter::matches`.
async fn corpus(svc: &MemoryService, t: &TenantId, n: usize) -> Vec<Memory> {
    let types = [MemoryType::Note, MemoryType::Task, MemoryType::Fact];
    let sources = [Source::Manual, Source::Chat];
    let mut out = Vec::new();
    for i in 0..n {
        let mut new = note(&format!("memory number {i}"));
        new.memory_type = types[i % 3];
        new.source = sources[i % 2];
        new.user_id = label(&format!("user{}", i % 4));
        new.agent_id = if i % 5 == 0 { None } else { label("agent") };
        new.project = label(&format!("p{}", i % 2));
        new.domain = if i % 3 == 0 { label("work") } else { None };
        new.session_id = label(&format!("s{}", i % 7));
        let tags: Vec<&str> = ["red", "green", "blue"]
            .into_iter()
            .enumerate()
            .filter(|(k, _)| i % (k + 2) == 0)
            .map(|(_, t)| t)
            .collect();
        new.tags = Tags::parse(&tags, "tags").unwrap();
        new.metadata = engram_core::validate::Metadata::parse(
            serde_json::json!({
                "parity": if i % 2 == 0 { "even" } else { "odd" },
                "rem": i % 3,
                "flag": i % 4 == 0,
            }),
            "metadata",
        )
        .unwrap();
        out.push(svc.remember(t, new, None).await.unwrap().0);
    }
    out
}

fn reference(all: &[Memory], q: &ListQuery) -> Vec<MemoryId> {
    let mut v: Vec<&Memory> = all.iter().filter(|m| q.filter.matches(m)).collect();
    v.sort_by_key(|m| (q.sort_by.key_of(m), m.id));
    if q.sort_order == SortOrder::Desc {
        v.reverse();
    }
    v.into_iter().map(|m| m.id).collect()
}

pub async fn list_filters_agree_with_the_reference(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let mut all = corpus(&svc, &t, 60).await;
    // Another tenant's memories never show.
    corpus(&svc, &tenant("t2"), 10).await;
    // Some have their embedding moved on, so that filter has something to find.
    for m in all.iter_mut().step_by(4) {
        svc.forget(&t, m.id).await.unwrap();
        m.deleted_at = Some(engram_core::time::now());
    }
    let mid = all[30].created_at;
    let filters = vec![
        MemoryFilter::default(),
        MemoryFilter {
            memory_types: vec![MemoryType::Task],
            ..Default::default()
        },
        MemoryFilter {
            memory_types: vec![MemoryType::Task, MemoryType::Fact],
            ..Default::default()
        },
        MemoryFilter {
            metadata: vec![("parity".into(), serde_json::json!("even"))],
            ..Default::default()
        },
        MemoryFilter {
            // Numbers compare by value: 1.0 finds the 1s.
            metadata: vec![("rem".into(), serde_json::json!(1.0))],
            ..Default::default()
        },
        MemoryFilter {
            metadata: vec![
                ("flag".into(), serde_json::json!(true)),
                ("rem".into(), serde_json::json!(2)),
            ],
            ..Default::default()
        },
        MemoryFilter {
            // A string never equals a number, nor a boolean 1.
            metadata: vec![("rem".into(), serde_json::json!("1"))],
            ..Default::default()
        },
        MemoryFilter {
            metadata: vec![("flag".into(), serde_json::json!(1))],
            ..Default::default()
        },
        MemoryFilter {
            source: Some(Source::Chat),
            ..Default::default()
        },
        MemoryFilter {
            embedding_status: Some(EmbeddingStatus::Pending),
            ..Default::default()
        },
        MemoryFilter {
            embedding_status: Some(EmbeddingStatus::Completed),
            ..Default::default()
        },
        MemoryFilter {
            user_id: Some("user1".into()),
            ..Default::default()
        },
        MemoryFilter {
            agent_id: Some("agent".into()),
            ..Default::default()
        },
        MemoryFilter {
            project: Some("p0".into()),
            ..Default::default()
        },
        MemoryFilter {
            domain: Some("work".into()),
            ..Default::default()
        },
        MemoryFilter {
            session_id: Some("s3".into()),
            ..Default::default()
        },
        MemoryFilter {
            tags: vec!["red".into()],
            ..Default::default()
        },
        MemoryFilter {
            tags: vec!["red".into(), "green".into()],
            ..Default::default()
        },
        MemoryFilter {
            tags: vec!["red".into(), "green".into(), "blue".into()],
            ..Default::default()
        },
        MemoryFilter {
            tags: vec!["nope".into()],
            ..Default::default()
        },
        MemoryFilter {
            created_after: Some(mid),
            ..Default::default()
        },
        MemoryFilter {
            created_before: Some(mid),
            ..Default::default()
        },
        MemoryFilter {
            memory_types: vec![MemoryType::Note],
            user_id: Some("user0".into()),
            tags: vec!["red".into()],
            created_before: Some(mid),
            ..Default::default()
        },
    ];
    for filter in filters {
        for sort_by in [SortBy::CreatedAt, SortBy::UpdatedAt, SortBy::AccessedAt] {
            for sort_order in [SortOrder::Asc, SortOrder::Desc] {
                let q = ListQuery {
                    filter: filter.clone(),
                    sort_by,
                    sort_order,
                    per_page: 100,
                    ..Default::default()
                };
                let got = svc.list(&t, &q).await.unwrap();
                let want = reference(&all, &q);
                let ids: Vec<MemoryId> = got.result.items.iter().map(|m| m.id).collect();
                assert_eq!(
                    ids, want,
                    "filter {filter:?} sorted by {sort_by:?} {sort_order:?}"
                );
                assert_eq!(got.result.total as usize, want.len());
                assert!(!got.result.has_more);
                assert!(got.next_cursor.is_none());
            }
        }
    }
}

pub async fn pages_and_cursors_cover_everything_once(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let all = corpus(&svc, &t, 45).await;
    for sort_order in [SortOrder::Asc, SortOrder::Desc] {
        let base = ListQuery {
            filter: MemoryFilter {
                project: Some("p1".into()),
                ..Default::default()
            },
            sort_order,
            per_page: 7,
            ..Default::default()
        };
        let want = reference(&all, &base);
        // Offset pages.
        let mut by_page = Vec::new();
        for page in 1..=10 {
            let q = ListQuery {
                position: Position::Page(page),
                ..base.clone()
            };
            let l = svc.list(&t, &q).await.unwrap();
            assert_eq!(l.result.total as usize, want.len());
            assert_eq!(l.page, page);
            by_page.extend(l.result.items.iter().map(|m| m.id));
        }
        assert_eq!(by_page, want);
        // Cursors.
        let mut q = base.clone();
        let mut by_cursor = Vec::new();
        let mut pages = 0;
        loop {
            let l = svc.list(&t, &q).await.unwrap();
            pages += 1;
            assert_eq!(l.page, pages);
            by_cursor.extend(l.result.items.iter().map(|m| m.id));
            match l.next_cursor {
                Some(c) => {
                    q = base.clone();
                    PageToken::resume(&mut q, &c).unwrap();
                }
                None => break,
            }
        }
        assert_eq!(by_cursor, want);
        assert_eq!(pages as usize, want.len().div_ceil(7));
    }
}

pub async fn bulk_stores_valid_items_when_others_fail(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let items = vec![
        Ok(note("one")),
        Err(CoreError::validation("content", "bad")),
        Ok(note("three")),
        Ok({
            let mut n = note("four");
            let now = engram_core::time::now();
            n.valid_from = Some(now);
            n.valid_to = Some(now - chrono::Duration::hours(1));
            n
        }),
    ];
    let out = svc.remember_bulk(&t, items, Some("bulk-1")).await.unwrap();
    assert!(matches!(out[0], BulkItemResult::Created(_)));
    assert!(matches!(&out[1], BulkItemResult::Failed(e) if e.field() == Some("content")));
    assert!(matches!(out[2], BulkItemResult::Created(_)));
    assert!(matches!(&out[3], BulkItemResult::Failed(e) if e.field() == Some("valid_to")));
    assert_eq!(
        svc.list(&t, &ListQuery::default())
            .await
            .unwrap()
            .result
            .total,
        2
    );
    // Retrying the whole request with the same key creates nothing new.
    let again = svc
        .remember_bulk(
            &t,
            vec![
                Ok(note("one")),
                Err(CoreError::validation("content", "bad")),
                Ok(note("three")),
            ],
            Some("bulk-1"),
        )
        .await
        .unwrap();
    assert!(matches!(again[0], BulkItemResult::Replayed(_)));
    assert!(matches!(again[2], BulkItemResult::Replayed(_)));
    assert_eq!(
        svc.list(&t, &ListQuery::default())
            .await
            .unwrap()
            .result
            .total,
        2
    );
    let too_many: Vec<_> = (0..101).map(|i| Ok(note(&format!("n{i}")))).collect();
    assert_eq!(
        svc.remember_bulk(&t, too_many, None)
            .await
            .unwrap_err()
            .field(),
        Some("memories")
    );
    // A full batch goes in whole.
    let full: Vec<_> = (0..100).map(|i| Ok(note(&format!("n{i}")))).collect();
    let out = svc.remember_bulk(&t, full, None).await.unwrap();
    assert!(out.iter().all(|r| matches!(r, BulkItemResult::Created(_))));
    assert_eq!(
        svc.list(&t, &ListQuery::default())
            .await
            .unwrap()
            .result
            .total,
        102
    );
}

pub async fn a_failing_insert_is_undone_alone(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let now = engram_core::time::now();
    let first = note("first").into_memory(t.clone(), now);
    let mut dup = note("same id, different content").into_memory(t.clone(), now);
    dup.id = first.id;
    let third = note("third").into_memory(t.clone(), now);
    let item = |m: &Memory| engram_core::InsertMemory {
        memory: m.clone(),
        idempotency: None,
    };
    // Concurrent writers share the batch with the failing item.
    let others: Vec<_> = (0..8)
        .map(|i| {
            let svc = svc.clone();
            let t = t.clone();
            tokio::spawn(async move {
                svc.remember(&t, note(&format!("bystander {i}")), None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let out = s
        .memories
        .insert(&t, vec![item(&first), item(&dup), item(&third)])
        .await
        .unwrap();
    assert!(matches!(&out[0], Ok(engram_core::InsertOutcome::Created(m)) if m.id == first.id));
    assert!(
        matches!(&out[1], Err(engram_core::StoreError::Conflict(_))),
        "{:?}",
        out[1]
    );
    assert!(matches!(
        &out[2],
        Ok(engram_core::InsertOutcome::Created(_))
    ));
    for o in others {
        o.await.unwrap();
    }
    assert_eq!(svc.get(&t, first.id).await.unwrap().content, "first");
    let all = svc
        .list(
            &t,
            &ListQuery {
                per_page: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.result.total, 10);
    // The change log holds exactly the stored memories.
    assert_eq!(svc.changes(&t, 0, 100).await.unwrap().len(), 10);
}

pub async fn retry_embedding_requeues(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (m, _) = svc.remember(&t, note("embed me"), None).await.unwrap();
    // Already pending: nothing changes.
    let same = svc.retry_embedding(&t, m.id).await.unwrap();
    assert_eq!(same.version, 1);
    // Simulate a failed embedding through the port, as the pipeline will.
    let mut failed = m.clone();
    failed.embedding_status = EmbeddingStatus::Failed;
    failed.embedding_error = Some("boom".into());
    failed.version = 2;
    s.memories
        .replace(&failed, 1, ChangeOp::Updated)
        .await
        .unwrap();
    let r = svc.retry_embedding(&t, m.id).await.unwrap();
    assert_eq!(r.embedding_status, EmbeddingStatus::Pending);
    assert_eq!(r.embedding_error, None);
    assert_eq!(r.version, 3);
    assert_eq!(
        svc.get(&t, m.id).await.unwrap().embedding_status,
        EmbeddingStatus::Pending
    );
    // A stale compare-and-swap is refused.
    let err = s
        .memories
        .replace(&failed, 1, ChangeOp::Updated)
        .await
        .unwrap_err();
    assert!(
        matches!(err, engram_core::StoreError::Conflict(_)),
        "{err:?}"
    );
}

pub async fn touch_records_access(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let (m, _) = svc.remember(&t, note("read me"), None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let read = svc.get(&t, m.id).await.unwrap();
    assert!(read.accessed_at > m.accessed_at);
    // The read is recorded (possibly deferred) without bumping the version.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let q = ListQuery {
            sort_by: SortBy::AccessedAt,
            ..Default::default()
        };
        let l = svc.list(&t, &q).await.unwrap();
        let stored = &l.result.items[0];
        if stored.accessed_at >= read.accessed_at {
            assert_eq!(stored.version, 1);
            assert_eq!(stored.updated_at, m.updated_at);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "accessed_at was never recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Of several touches of one memory the latest wins, and an older one never moves
    // `accessed_at` back, however the deferred writes are grouped.
    let later = read.accessed_at + chrono::TimeDelta::seconds(1);
    let earlier = read.accessed_at - chrono::TimeDelta::hours(1);
    s.memories.touch(&t, &[m.id], later).await.unwrap();
    s.memories.touch(&t, &[m.id], earlier).await.unwrap();
    // A memory touched after them: once its touch is stored, theirs are too.
    let (sentinel, _) = svc.remember(&t, note("sentinel"), None).await.unwrap();
    touch_and_wait(&s, &t, sentinel.id).await;
    let stored = stored(&s, &t, m.id).await;
    assert_eq!(stored.accessed_at, later);
    assert_eq!(stored.version, 1);
}

/// A memory as the store holds it (a list: a cache in front may hold what `get` gave
/// earlier, since a read does not invalidate it).
pub async fn stored(s: &Stores, t: &TenantId, id: MemoryId) -> Memory {
    let q = ListQuery {
        per_page: 100,
        ..Default::default()
    };
    let l = s.memories.list(t, &q).await.unwrap();
    l.items.into_iter().find(|m| m.id == id).expect("listed")
}

/// Touches `id` a minute ahead and waits (at most 5 s) until the store shows it: every
/// touch made before is stored by then.
pub async fn touch_and_wait(s: &Stores, t: &TenantId, id: MemoryId) {
    let at = engram_core::time::now() + chrono::TimeDelta::minutes(1);
    s.memories.touch(t, &[id], at).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while stored(s, t, id).await.accessed_at != at {
        assert!(
            std::time::Instant::now() < deadline,
            "accessed_at was never recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn change_log_replays_to_current_state(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let t = tenant("t1");
    let all = corpus(&svc, &t, 12).await;
    for (i, m) in all.iter().enumerate() {
        match i % 3 {
            0 => svc.forget(&t, m.id).await.unwrap(),
            1 => {
                let patch = MemoryPatch {
                    content: Some(Content::parse(format!("edited {i}"), "content").unwrap()),
                    ..Default::default()
                };
                svc.update(&t, m.id, patch).await.unwrap();
            }
            _ => {}
        }
    }
    let log = svc.changes(&t, 0, 1000).await.unwrap();
    assert!(
        log.windows(2).all(|w| w[0].seq < w[1].seq),
        "seq strictly increases"
    );
    assert_eq!(log.len(), 12 + 8);
    let mut replayed: BTreeMap<MemoryId, Memory> = BTreeMap::new();
    for c in &log {
        assert_eq!(c.version, c.memory.version);
        replayed.insert(c.memory_id, c.memory.clone());
    }
    let live: HashMap<MemoryId, Memory> = svc
        .list(
            &t,
            &ListQuery {
                per_page: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .result
        .items
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let replayed_live: Vec<&Memory> = replayed
        .values()
        .filter(|m| m.deleted_at.is_none())
        .collect();
    assert_eq!(replayed_live.len(), live.len());
    for m in replayed_live {
        let mut l = live[&m.id].clone();
        l.accessed_at = m.accessed_at;
        assert_eq!(&l, m);
    }
    // Paging through the log.
    let first = svc.changes(&t, 0, 5).await.unwrap();
    let rest = svc
        .changes(&t, first.last().unwrap().seq, 1000)
        .await
        .unwrap();
    assert_eq!(first.len() + rest.len(), log.len());
    assert!(svc
        .changes(&tenant("other"), 0, 1000)
        .await
        .unwrap()
        .is_empty());
}

pub async fn purge_user_and_tenant_remove_everything(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let svc = service(&s);
    let keys = KeyService::new(s.keys.clone());
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    corpus(&svc, &t1, 20).await;
    corpus(&svc, &t2, 8).await;
    let (k1, _) = keys.create(&t1).await.unwrap();
    let (k2, _) = keys.create(&t2).await.unwrap();
    let n = s.memories.purge_user(&t1, "user1").await.unwrap();
    assert_eq!(n, 5);
    let q = ListQuery {
        filter: MemoryFilter {
            user_id: Some("user1".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(svc.list(&t1, &q).await.unwrap().result.total, 0);
    assert_eq!(
        svc.list(&t1, &ListQuery::default())
            .await
            .unwrap()
            .result
            .total,
        15
    );
    assert!(svc.changes(&t1, 0, 1000).await.unwrap().iter().all(|c| c
        .memory
        .scope
        .user_id
        .as_deref()
        != Some("user1")));
    // t2's user1 is untouched.
    assert_eq!(svc.list(&t2, &q).await.unwrap().result.total, 2);

    let n = s.memories.purge_tenant(&t1).await.unwrap();
    assert_eq!(n, 15);
    assert_eq!(
        svc.list(&t1, &ListQuery::default())
            .await
            .unwrap()
            .result
            .total,
        0
    );
    assert!(svc.changes(&t1, 0, 1000).await.unwrap().is_empty());
    assert_eq!(
        keys.authenticate(k1.expose()).await.unwrap_err(),
        CoreError::Unauthorized
    );
    assert_eq!(keys.authenticate(k2.expose()).await.unwrap(), t2);
    assert_eq!(
        svc.list(&t2, &ListQuery::default())
            .await
            .unwrap()
            .result
            .total,
        8
    );
}

pub async fn keys_are_hashed_scoped_and_revocable(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let keys = KeyService::new(s.keys.clone());
    assert!(!keys.any().await.unwrap());
    let (k, rec) = keys.create(&tenant("acme")).await.unwrap();
    assert!(k.expose().starts_with(&format!("egk_{}_", rec.id)));
    assert_ne!(rec.hash, k.expose());
    assert!(
        !format!("{k:?}").contains(k.expose()),
        "Debug hides the key"
    );
    assert_eq!(keys.authenticate(k.expose()).await.unwrap(), tenant("acme"));
    assert_eq!(
        keys.authenticate("egk_nope").await.unwrap_err(),
        CoreError::Unauthorized
    );
    assert_eq!(
        keys.authenticate("").await.unwrap_err(),
        CoreError::Unauthorized
    );
    let (_k2, _) = keys.create(&tenant("other")).await.unwrap();
    let listed = keys.list(Some(&tenant("acme"))).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|r| r.hash != k.expose()));
    assert_eq!(keys.list(None).await.unwrap().len(), 2);
    keys.revoke(&rec.id).await.unwrap();
    assert_eq!(
        keys.authenticate(k.expose()).await.unwrap_err(),
        CoreError::Unauthorized
    );
    assert!(
        keys.revoke(&rec.id).await.is_err(),
        "revoking twice is NotFound"
    );
    assert!(keys
        .list(None)
        .await
        .unwrap()
        .iter()
        .any(|r| r.revoked_at.is_some()));
}

/// One step of the isolation property.
#[derive(Clone, Debug)]
enum Op {
    Create {
        tenant: usize,
        user: u8,
        tag: bool,
    },
    Get {
        tenant: usize,
        pick: usize,
    },
    Update {
        tenant: usize,
        pick: usize,
    },
    Delete {
        tenant: usize,
        pick: usize,
    },
    List {
        tenant: usize,
        user: Option<u8>,
        tag: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..3u8, any::<bool>()).prop_map(|(tenant, user, tag)| Op::Create { tenant, user, tag }),
        2 => (0..2usize, any::<usize>()).prop_map(|(tenant, pick)| Op::Get { tenant, pick }),
        1 => (0..2usize, any::<usize>()).prop_map(|(tenant, pick)| Op::Update { tenant, pick }),
        1 => (0..2usize, any::<usize>()).prop_map(|(tenant, pick)| Op::Delete { tenant, pick }),
        2 => (0..2usize, proptest::option::of(0..3u8), any::<bool>()).prop_map(|(tenant, user, tag)| Op::List { tenant, user, tag }),
    ]
}

/// Two tenants' random operations, interleaved: a tenant sees exactly its own live
/// memories, and every attempt to touch the other tenant's memory by id is NotFound.
pub fn tenant_isolation_property<B: Backend>(backend: B) {
    let backend = Arc::new(backend);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40))| {
        let backend = backend.clone();
        rt.block_on(async move {
            let s = backend.fresh().await;
            let svc = service(&s);
            let tenants = [tenant("alpha"), tenant("beta")];
            // Model: every memory ever created, with its owner, user, tag and liveness.
            let mut model: Vec<(usize, MemoryId, u8, bool, bool)> = Vec::new();
            let not_found = CoreError::NotFound { what: "memory" };
            for op in ops {
                match op {
                    Op::Create { tenant: t, user, tag } => {
                        let mut n = note(&format!("secret of tenant {t}"));
                        n.user_id = label(&format!("u{user}"));
                        if tag {
                            n.tags = Tags::parse(&["shared-tag"], "tags").unwrap();
                        }
                        let (m, _) = svc.remember(&tenants[t], n, None).await.unwrap();
                        assert_eq!(m.tenant, tenants[t]);
                        model.push((t, m.id, user, tag, true));
                    }
                    Op::Get { tenant: t, pick } if !model.is_empty() => {
                        let (owner, id, _, _, live) = model[pick % model.len()];
                        let r = svc.get(&tenants[t], id).await;
                        if owner == t && live {
                            assert_eq!(r.unwrap().tenant, tenants[t]);
                        } else {
                            assert_eq!(r.unwrap_err(), not_found.clone());
                        }
                    }
                    Op::Update { tenant: t, pick } if !model.is_empty() => {
                        let (owner, id, _, _, live) = model[pick % model.len()];
                        let patch = MemoryPatch {
                            content: Some(Content::parse(format!("rewritten by {t}"), "content").unwrap()),
                            ..Default::default()
                        };
                        let r = svc.update(&tenants[t], id, patch).await;
                        if owner == t && live {
                            r.unwrap();
                        } else {
                            assert_eq!(r.unwrap_err(), not_found.clone());
                        }
                    }
                    Op::Delete { tenant: t, pick } if !model.is_empty() => {
                        let i = pick % model.len();
                        let (owner, id, _, _, live) = model[i];
                        let r = svc.forget(&tenants[t], id).await;
                        if owner == t && live {
                            r.unwrap();
                            model[i].4 = false;
                        } else {
                            assert_eq!(r.unwrap_err(), not_found.clone());
                        }
                    }
                    Op::List { tenant: t, user, tag } => {
                        let filter = MemoryFilter {
                            user_id: user.map(|u| format!("u{u}")),
                            tags: if tag { vec!["shared-tag".into()] } else { vec![] },
                            ..Default::default()
                        };
                        let q = ListQuery { filter, per_page: 100, ..Default::default() };
                        let l = svc.list(&tenants[t], &q).await.unwrap();
                        let mut want: Vec<MemoryId> = model
                            .iter()
                            .filter(|(o, _, u, g, live)| {
                                *o == t && *live && user.is_none_or(|x| x == *u) && (!tag || *g)
                            })
                            .map(|m| m.1)
                            .collect();
                        let mut got: Vec<MemoryId> = l.result.items.iter().map(|m| m.id).collect();
                        assert!(l.result.items.iter().all(|m| m.tenant == tenants[t]));
                        want.sort();
                        got.sort();
                        assert_eq!(got, want);
                        assert_eq!(l.result.total as usize, want.len());
                    }
                    _ => {}
                }
            }
            // The other tenant's change log never mentions this tenant's memories.
            for (t, name) in tenants.iter().enumerate() {
                for c in svc.changes(name, 0, 10_000).await.unwrap() {
                    assert_eq!(&c.tenant, name);
                    assert!(model.iter().any(|(o, id, ..)| *o == t && *id == c.memory_id));
                }
            }
        });
    });
}
