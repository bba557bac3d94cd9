//! The working tier's stories: records of every kind through `WorkingService` and the
//! `RecordStore` port, their mirror memories (written in the record's transaction), the
//! change log they share with memories, purges, tenant isolation and the tier migration.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use engram_core::working::service::{kind_tag, render, Verbatim, WorkingService, LONG_TERM_TAG};
use engram_core::working::{Record, RecordChange, RecordId, RecordKind, RecordQuery};
use engram_core::{
    ChangeOp, CoreError, ListQuery, Memory, MemoryFilter, MemoryService, MemoryType, MirrorWrite,
    NewMemory, Scope, StoreError, TenantId,
};
use serde_json::{json, Map, Value};

use crate::{Backend, Stores};

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn working(s: &Stores) -> WorkingService {
    WorkingService::new(s.records.clone(), s.memories.clone(), None)
}

fn not_found(kind: RecordKind) -> CoreError {
    CoreError::NotFound { what: kind.noun() }
}

/// A record made by hand, for driving the port directly.
fn hand_made(t: &TenantId, kind: RecordKind, body: Value) -> Record {
    let at = engram_core::time::now();
    Record {
        id: RecordId::new(),
        tenant: t.clone(),
        kind,
        scope: Scope::default(),
        parent_id: None,
        status: None,
        key: None,
        body: obj(body),
        memory_id: None,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

/// Every record of the tenant, paging through the whole listing.
async fn all_records(s: &Stores, t: &TenantId) -> Vec<Record> {
    let mut q = RecordQuery {
        oldest_first: true,
        limit: 50,
        ..RecordQuery::default()
    };
    let mut out = Vec::new();
    loop {
        let page = s.records.list_records(t, &q).await.unwrap();
        out.extend(page.items.iter().cloned());
        if !page.has_more {
            return out;
        }
        let last = page.items.last().unwrap();
        q.after = Some((last.created_at, last.id));
    }
}

async fn all_record_changes(s: &Stores, t: &TenantId) -> Vec<RecordChange> {
    s.records.record_changes(t, 0, 10_000).await.unwrap()
}

/// The tenant's live memories whose metadata names `record`.
async fn memories_of(s: &Stores, t: &TenantId, record: RecordId) -> Vec<Memory> {
    let q = ListQuery {
        filter: MemoryFilter {
            metadata: vec![("record_id".into(), json!(record.to_string()))],
            ..MemoryFilter::default()
        },
        per_page: 100,
        ..ListQuery::default()
    };
    s.memories.list(t, &q).await.unwrap().items
}

async fn user_list(svc: &MemoryService, t: &TenantId, user: &str) -> Vec<Memory> {
    let q = ListQuery {
        filter: MemoryFilter {
            user_id: Some(user.into()),
            ..MemoryFilter::default()
        },
        per_page: 100,
        ..ListQuery::default()
    };
    svc.list(t, &q).await.unwrap().result.items
}

pub async fn records_round_trip_every_kind(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let t = tenant("t1");
    let create = |kind, v| {
        let w = w.clone();
        let t = t.clone();
        async move { w.create(&t, kind, obj(v)).await.unwrap() }
    };
    let goal = create(
        RecordKind::Goal,
        json!({"title": "ship v1", "priority": "high", "user_id": "u1", "project": "engram"}),
    )
    .await;
    assert_eq!(goal.version, 1);
    assert_eq!(goal.id.0.get_version_num(), 7, "record ids are UUIDv7");
    assert_eq!(goal.status.as_deref(), Some("active"));
    assert_eq!(goal.scope.user_id.as_deref(), Some("u1"));
    assert_eq!(goal.scope.project.as_deref(), Some("engram"));
    assert_eq!(goal.body["priority"], "high");
    let task = create(
        RecordKind::Task,
        json!({"title": "write tests", "goal_id": goal.id.to_string(), "agent_id": "a1"}),
    )
    .await;
    assert_eq!(task.parent_id, Some(goal.id));
    assert_eq!(task.status.as_deref(), Some("open"));
    let call = create(
        RecordKind::ToolCall,
        json!({"tool": "grep", "arguments": {"pattern": "fn main", "n": [1, 2.5, null]},
               "task_id": task.id.to_string(), "duration_ms": 12}),
    )
    .await;
    assert_eq!(call.parent_id, Some(task.id));
    let decision = create(
        RecordKind::Decision,
        json!({"what": "use postgres", "why": "replicas", "alternatives": ["sqlite", "é ☃"]}),
    )
    .await;
    assert!(decision.memory_id.is_some(), "a decision has a mirror");
    let pattern = create(
        RecordKind::Pattern,
        json!({"trigger": "flaky test", "action": "retry once"}),
    )
    .await;
    assert_eq!(pattern.body["confidence"], json!(0.5));
    let session = create(
        RecordKind::Session,
        json!({"title": "support chat", "user_id": "u1"}),
    )
    .await;
    let message = w
        .add_to_session(
            &t,
            session.id,
            RecordKind::Message,
            obj(json!({"role": "user", "content": "hello"})),
        )
        .await
        .unwrap();
    assert_eq!(message.parent_id, Some(session.id));
    assert_eq!(
        message.scope.session_id.as_deref(),
        Some(session.id.to_string().as_str())
    );
    assert_eq!(message.scope.user_id.as_deref(), Some("u1"));
    let checkpoint = w
        .add_to_session(
            &t,
            session.id,
            RecordKind::Checkpoint,
            obj(json!({"name": "greeted", "summary": "said hello"})),
        )
        .await
        .unwrap();
    assert!(checkpoint.body.contains_key("at"));
    let event_body = json!({"category": "deploy", "severity": "critical",
                            "at": "2026-01-31T12:00:00Z", "seq": 7});
    let event = w
        .keep_event(&t, "a1", "evt-1", obj(event_body.clone()))
        .await
        .unwrap();
    assert_eq!(event.key.as_deref(), Some("evt-1"));
    let again = w
        .keep_event(&t, "a1", "evt-1", obj(event_body))
        .await
        .unwrap();
    assert_eq!(again, event, "keeping an event twice keeps one record");

    let made = [
        &goal,
        &task,
        &call,
        &decision,
        &pattern,
        &session,
        &message,
        &checkpoint,
        &event,
    ];
    for r in made {
        assert_eq!(
            &w.get(&t, r.kind, r.id).await.unwrap(),
            r,
            "{} round-trips",
            r.kind
        );
        assert_eq!(
            s.records.get_record(&t, r.id).await.unwrap().as_ref(),
            Some(r)
        );
    }
    assert_eq!(
        &w.get_in_session(&t, session.id, RecordKind::Message, message.id)
            .await
            .unwrap(),
        &message
    );
    assert_eq!(
        w.get_in_session(&t, RecordId::new(), RecordKind::Message, message.id)
            .await
            .unwrap_err(),
        not_found(RecordKind::Message)
    );

    // Updates: only the given fields change, the version goes up by one.
    let patches = [
        (&goal, json!({"status": "achieved"})),
        (
            &task,
            json!({"status": "in_progress", "result": "half done"}),
        ),
        (&call, json!({"status": "failed", "error": "boom"})),
        (&decision, json!({"outcome": "it scaled"})),
        (&pattern, json!({"action": "fix the race"})),
        (&session, json!({"status": "ended", "summary": "done"})),
        (&message, json!({"content": "hello there"})),
        (&checkpoint, json!({"summary": "said hello twice"})),
        (&event, json!({"severity": "error"})),
    ];
    let mut updated = Vec::new();
    for (r, patch) in patches {
        let u = w
            .update(&t, r.kind, r.id, obj(patch.clone()))
            .await
            .unwrap();
        assert_eq!(u.version, r.version + 1, "{}", r.kind);
        assert!(u.updated_at >= r.updated_at);
        assert_eq!((u.id, u.kind, u.created_at), (r.id, r.kind, r.created_at));
        for (k, v) in obj(patch.clone()) {
            assert_eq!(u.body[&k], v, "{}.{k}", r.kind);
        }
        for (k, v) in &r.body {
            if !patch.as_object().unwrap().contains_key(k) {
                assert_eq!(&u.body[k], v, "{}.{k} is untouched", r.kind);
            }
        }
        assert_eq!(w.get(&t, r.kind, r.id).await.unwrap(), u);
        // The same change again changes nothing.
        let same = w.update(&t, r.kind, r.id, obj(patch)).await.unwrap();
        assert_eq!(
            same, u,
            "{}: an update to the same values is a no-op",
            r.kind
        );
        updated.push(u);
    }
    let goal_now = &updated[0];
    assert_eq!(goal_now.status.as_deref(), Some("achieved"));
    assert!(goal_now.body.contains_key("completed_at"));
    assert_eq!(updated[5].status.as_deref(), Some("ended"));
    assert_eq!(updated[8].status.as_deref(), Some("error"));

    // Agent state: by key, per agent.
    let st = w
        .put_state(&t, "a1", "cursor", json!({"page": 3}))
        .await
        .unwrap();
    assert_eq!(
        (st.kind, st.version, st.key.as_deref()),
        (RecordKind::AgentState, 1, Some("cursor"))
    );
    assert_eq!(st.scope.agent_id.as_deref(), Some("a1"));
    assert_eq!(w.get_state(&t, "a1", "cursor").await.unwrap(), st);
    let same = w
        .put_state(&t, "a1", "cursor", json!({"page": 3}))
        .await
        .unwrap();
    assert_eq!(same, st, "the same value again changes nothing");
    let st2 = w
        .put_state(&t, "a1", "cursor", json!({"page": 4}))
        .await
        .unwrap();
    assert_eq!((st2.id, st2.version), (st.id, 2));
    assert_eq!(
        w.get_state(&t, "a1", "cursor").await.unwrap().body["value"],
        json!({"page": 4})
    );
    let other_agent = w.put_state(&t, "a2", "cursor", json!("x")).await.unwrap();
    assert_ne!(other_agent.id, st.id);
    w.delete_state(&t, "a1", "cursor").await.unwrap();
    assert_eq!(
        w.get_state(&t, "a1", "cursor").await.unwrap_err(),
        not_found(RecordKind::AgentState)
    );
    assert_eq!(
        w.delete_state(&t, "a1", "cursor").await.unwrap_err(),
        not_found(RecordKind::AgentState)
    );
    assert_eq!(w.get_state(&t, "a2", "cursor").await.unwrap(), other_agent);

    // Unknown ids, and another kind's id, answer NotFound.
    let missing = RecordId::new();
    for kind in RecordKind::ALL {
        assert_eq!(
            w.get(&t, *kind, missing).await.unwrap_err(),
            not_found(*kind)
        );
    }
    assert_eq!(
        w.get(&t, RecordKind::Task, goal.id).await.unwrap_err(),
        not_found(RecordKind::Task)
    );
    assert_eq!(
        w.update(&t, RecordKind::Task, goal.id, obj(json!({"title": "x"})))
            .await
            .unwrap_err(),
        not_found(RecordKind::Task)
    );
    assert_eq!(
        w.delete(&t, RecordKind::Task, goal.id).await.unwrap_err(),
        not_found(RecordKind::Task)
    );
    assert_eq!(
        w.update(&t, RecordKind::Goal, missing, obj(json!({"title": "x"})))
            .await
            .unwrap_err(),
        not_found(RecordKind::Goal)
    );
    assert!(s.records.get_record(&t, missing).await.unwrap().is_none());

    // The port's compare-and-swap.
    let cur = s.records.get_record(&t, task.id).await.unwrap().unwrap();
    let mut next = cur.clone();
    next.version += 1;
    next.body.insert("result".into(), json!("stale"));
    assert!(matches!(
        s.records.replace_record(&next, cur.version - 1, None).await,
        Err(StoreError::Conflict(_))
    ));
    let mut stale = cur.clone();
    stale.version -= 1;
    assert!(matches!(
        s.records.delete_record(&stale, None).await,
        Err(StoreError::Conflict(_))
    ));
    let mut ghost = cur.clone();
    ghost.id = missing;
    assert_eq!(
        s.records.replace_record(&ghost, ghost.version, None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.records.delete_record(&ghost, None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.records.get_record(&t, task.id).await.unwrap().unwrap(),
        cur,
        "failed swaps change nothing"
    );

    // Deletes. A session goes with its messages and checkpoints (and their memories).
    for r in &updated {
        let with_its_session = r.parent_id == Some(session.id);
        if !with_its_session {
            w.delete(&t, r.kind, r.id).await.unwrap();
        }
        assert_eq!(
            w.get(&t, r.kind, r.id).await.unwrap_err(),
            not_found(r.kind)
        );
        assert_eq!(
            w.delete(&t, r.kind, r.id).await.unwrap_err(),
            not_found(r.kind)
        );
    }
    let left: Vec<RecordId> = all_records(&s, &t).await.iter().map(|r| r.id).collect();
    assert_eq!(left, vec![other_agent.id]);
    let mirror = message.memory_id.expect("a message has a memory");
    assert_eq!(s.memories.get(&t, mirror).await.unwrap(), None);
}

pub async fn record_lists_agree_with_the_reference_and_pages_cover_everything(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let t = tenant("t1");
    let goals = [
        w.create(
            &t,
            RecordKind::Goal,
            obj(json!({"title": "g0", "user_id": "u0"})),
        )
        .await
        .unwrap(),
        w.create(
            &t,
            RecordKind::Goal,
            obj(json!({"title": "g1", "project": "p1"})),
        )
        .await
        .unwrap(),
    ];
    let statuses = ["open", "in_progress", "blocked", "done", "cancelled"];
    for i in 0..30usize {
        let mut input = json!({
            "title": format!("task {i}"),
            "status": statuses[i % statuses.len()],
            "user_id": format!("u{}", i % 3),
            "agent_id": format!("a{}", i % 2),
        });
        let m = input.as_object_mut().unwrap();
        if i % 4 != 0 {
            m.insert("project".into(), json!(format!("p{}", i % 2)));
        }
        if i % 5 == 0 {
            m.insert("domain".into(), json!("ops"));
        }
        if i % 3 != 2 {
            m.insert("goal_id".into(), json!(goals[i % 2].id.to_string()));
        }
        if i % 4 == 1 {
            m.insert("assigned_agent".into(), json!(format!("a{}", i % 3)));
        }
        w.create(&t, RecordKind::Task, obj(input)).await.unwrap();
    }
    let session = w
        .create(&t, RecordKind::Session, obj(json!({"user_id": "u1"})))
        .await
        .unwrap();
    for i in 0..6 {
        w.add_to_session(
            &t,
            session.id,
            RecordKind::Message,
            obj(
                json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                       "content": format!("turn {i}")}),
            ),
        )
        .await
        .unwrap();
    }
    for (agent, key) in [("a0", "k1"), ("a1", "k1"), ("a0", "k2")] {
        w.put_state(&t, agent, key, json!(1)).await.unwrap();
    }
    // Records created in the same microsecond are ordered by id.
    let same_instant = engram_core::time::now();
    for i in 0..5 {
        let mut r = hand_made(
            &t,
            RecordKind::Decision,
            json!({"what": format!("tie {i}")}),
        );
        r.created_at = same_instant;
        r.updated_at = same_instant;
        r.scope.user_id = Some("u2".into());
        s.records.insert_record(&r, None).await.unwrap();
    }
    // Some records change after a marker instant.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let marker = engram_core::time::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    for r in all_records(&s, &t)
        .await
        .into_iter()
        .filter(|r| r.kind == RecordKind::Task)
        .step_by(4)
    {
        w.update(
            &t,
            RecordKind::Task,
            r.id,
            obj(json!({"context": "revisited"})),
        )
        .await
        .unwrap();
    }
    // Another tenant's records never show.
    w.create(
        &tenant("t2"),
        RecordKind::Task,
        obj(json!({"title": "foreign", "user_id": "u0"})),
    )
    .await
    .unwrap();

    let reference = all_records(&s, &t).await;
    assert_eq!(reference.len(), 2 + 30 + 1 + 6 + 3 + 5);
    let queries = {
        let q = |f: &dyn Fn(&mut RecordQuery)| {
            let mut q = RecordQuery::default();
            f(&mut q);
            q
        };
        vec![
            q(&|_| {}),
            q(&|q| q.kind = Some(RecordKind::Task)),
            q(&|q| q.kind = Some(RecordKind::Decision)),
            q(&|q| q.user_id = Some("u1".into())),
            q(&|q| {
                q.kind = Some(RecordKind::Task);
                q.agent_id = Some("a1".into());
            }),
            q(&|q| q.project = Some("p0".into())),
            q(&|q| q.domain = Some("ops".into())),
            q(&|q| q.session_id = Some(session.id.to_string())),
            q(&|q| q.parent_id = Some(goals[0].id)),
            q(&|q| q.parent_id = Some(session.id)),
            q(&|q| q.statuses = vec!["open".into(), "done".into()]),
            q(&|q| {
                q.kind = Some(RecordKind::Task);
                q.statuses = vec!["blocked".into()];
                q.user_id = Some("u2".into());
            }),
            q(&|q| q.key = Some("k1".into())),
            q(&|q| {
                q.kind = Some(RecordKind::AgentState);
                q.agent_id = Some("a0".into());
                q.key = Some("k2".into());
            }),
            q(&|q| q.updated_before = Some(marker)),
            q(&|q| {
                q.kind = Some(RecordKind::Task);
                q.updated_before = Some(marker);
                q.project = Some("p1".into());
            }),
            q(&|q| q.user_id = Some("nobody".into())),
            q(&|q| q.assigned_agent = Some("a1".into())),
            q(&|q| {
                q.kind = Some(RecordKind::Task);
                q.assigned_agent = Some("a2".into());
                q.statuses = vec!["open".into(), "in_progress".into(), "blocked".into()];
            }),
        ]
    };
    for base in queries {
        let mut want: Vec<&Record> = reference.iter().filter(|r| base.matches(r)).collect();
        want.sort_by_key(|r| (r.created_at, r.id));
        for oldest_first in [true, false] {
            for limit in [1u32, 7, 100] {
                let mut q = base.clone();
                q.oldest_first = oldest_first;
                q.limit = limit;
                let mut got: Vec<Record> = Vec::new();
                loop {
                    let page = s.records.list_records(&t, &q).await.unwrap();
                    assert!(page.items.len() <= limit as usize);
                    if page.has_more {
                        assert_eq!(page.items.len(), limit as usize, "{q:?}");
                    }
                    got.extend(page.items.iter().cloned());
                    if !page.has_more {
                        break;
                    }
                    let last = page.items.last().unwrap();
                    q.after = Some((last.created_at, last.id));
                }
                let mut expected: Vec<Record> = want.iter().map(|r| (*r).clone()).collect();
                if !oldest_first {
                    expected.reverse();
                }
                assert_eq!(
                    got, expected,
                    "{base:?}, oldest_first {oldest_first}, limit {limit}"
                );
            }
        }
    }
    // Through the service, the page size is bounded.
    let mut q = RecordQuery::of(RecordKind::Task);
    q.limit = 0;
    assert!(matches!(
        w.list(&t, &q).await,
        Err(CoreError::Validation { .. })
    ));
    q.limit = 20;
    let page = w.list(&t, &q).await.unwrap();
    assert_eq!(page.items.len(), 20);
    assert!(page.has_more);
}

pub async fn concurrent_record_updates_all_land(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let t = tenant("t1");
    let pattern = w
        .create(
            &t,
            RecordKind::Pattern,
            obj(json!({"trigger": "disk full", "action": "rotate logs"})),
        )
        .await
        .unwrap();
    let n = 12u64;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (w, t) = (w.clone(), t.clone());
            tokio::spawn(async move {
                w.record_pattern_outcome(&t, pattern.id, i % 3 != 0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for r in futures::future::join_all(tasks).await {
        r.unwrap();
    }
    let p = w.get(&t, RecordKind::Pattern, pattern.id).await.unwrap();
    assert_eq!(p.body["success_count"], json!(8));
    assert_eq!(p.body["failure_count"], json!(4));
    assert_eq!(p.version, 1 + n as i64);
    assert_eq!(
        p.body["confidence"],
        json!(engram_core::working::service::pattern_confidence(8, 4))
    );

    // Concurrent updates of a mirrored record: each lands on the record and its mirror.
    let decision = w
        .create(
            &t,
            RecordKind::Decision,
            obj(json!({"what": "cache reads", "user_id": "u1"})),
        )
        .await
        .unwrap();
    let n = 8;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (w, t) = (w.clone(), t.clone());
            tokio::spawn(async move {
                w.update(
                    &t,
                    RecordKind::Decision,
                    decision.id,
                    obj(json!({"why": format!("reason {i}")})),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    for r in futures::future::join_all(tasks).await {
        r.unwrap();
    }
    let d = w.get(&t, RecordKind::Decision, decision.id).await.unwrap();
    assert_eq!(d.version, 1 + n as i64);
    let mirror = s
        .memories
        .get(&t, d.memory_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        mirror.version,
        1 + n as i64,
        "every update moved the mirror"
    );
    assert_eq!(
        mirror.content,
        render(&d),
        "the mirror holds the last state"
    );
    let versions: Vec<i64> = all_record_changes(&s, &t)
        .await
        .iter()
        .filter(|c| c.record.id == decision.id)
        .map(|c| c.record.version)
        .collect();
    assert_eq!(versions, (1..=1 + n as i64).collect::<Vec<_>>());
}

pub async fn a_decision_mirror_follows_its_record(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let d = w
        .create(
            &t,
            RecordKind::Decision,
            obj(
                json!({"what": "adopt postgres", "why": "replicas", "user_id": "u1",
                       "project": "engram"}),
            ),
        )
        .await
        .unwrap();
    let mid = d.memory_id.expect("a decision has a mirror");
    let m = svc.get(&t, mid).await.unwrap();
    assert_eq!(m.memory_type, MemoryType::Decision);
    assert!(
        m.tags.contains(&kind_tag(RecordKind::Decision)),
        "{:?}",
        m.tags
    );
    assert_eq!(m.tags, vec!["kind:decision".to_string()]);
    assert_eq!(m.metadata["record_id"], json!(d.id.to_string()));
    assert_eq!(m.metadata["record_kind"], json!("decision"));
    assert_eq!(m.source_ref.as_deref(), Some(d.source_id().as_str()));
    assert_eq!(m.scope.user_id.as_deref(), Some("u1"));
    assert_eq!(m.scope.project.as_deref(), Some("engram"));
    assert!(m.content.contains("adopt postgres"), "{}", m.content);
    assert!(m.content.contains("replicas"), "{}", m.content);
    assert_eq!(m.version, 1);
    // Read twice (a cache, if any, now holds the memory and the user's list).
    assert_eq!(svc.get(&t, mid).await.unwrap().content, m.content);
    assert_eq!(user_list(&svc, &t, "u1").await.len(), 1);

    // An update moves the mirror with it.
    let d2 = w
        .update(
            &t,
            RecordKind::Decision,
            d.id,
            obj(json!({"what": "adopt postgres 18"})),
        )
        .await
        .unwrap();
    let m2 = svc.get(&t, mid).await.unwrap();
    assert_eq!(m2.version, 2);
    assert!(m2.content.contains("adopt postgres 18"), "{}", m2.content);
    assert_eq!(m2.content, render(&d2));
    let listed = user_list(&svc, &t, "u1").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].content, m2.content, "the user's list follows");
    // A move to another user moves the mirror between the users' lists.
    let d3 = w
        .update(
            &t,
            RecordKind::Decision,
            d.id,
            obj(json!({"user_id": "u2"})),
        )
        .await
        .unwrap();
    assert_eq!(d3.scope.user_id.as_deref(), Some("u2"));
    let m3 = svc.get(&t, mid).await.unwrap();
    assert_eq!(m3.scope.user_id.as_deref(), Some("u2"));
    assert!(user_list(&svc, &t, "u1").await.is_empty());
    assert_eq!(user_list(&svc, &t, "u2").await.len(), 1);

    // Deleting the record soft-deletes the mirror, in the same transaction.
    w.delete(&t, RecordKind::Decision, d.id).await.unwrap();
    assert!(s.memories.get(&t, mid).await.unwrap().is_none());
    assert_eq!(
        svc.get(&t, mid).await.unwrap_err(),
        CoreError::NotFound { what: "memory" }
    );
    assert!(user_list(&svc, &t, "u2").await.is_empty());
    let log: Vec<(ChangeOp, i64)> = svc
        .changes(&t, 0, 1000)
        .await
        .unwrap()
        .iter()
        .filter(|c| c.memory_id == mid)
        .map(|c| (c.op, c.version))
        .collect();
    assert_eq!(
        log,
        vec![
            (ChangeOp::Created, 1),
            (ChangeOp::Updated, 2),
            (ChangeOp::Updated, 3),
            (ChangeOp::Deleted, 4)
        ]
    );

    // Patterns and messages are mirrored too; goals, tasks and sessions are not.
    let p = w
        .create(
            &t,
            RecordKind::Pattern,
            obj(json!({"trigger": "timeout", "action": "back off"})),
        )
        .await
        .unwrap();
    let pm = svc.get(&t, p.memory_id.unwrap()).await.unwrap();
    assert_eq!(pm.memory_type, MemoryType::Procedure);
    assert!(pm.tags.contains(&"kind:pattern".to_string()));
    let session = w
        .create(&t, RecordKind::Session, obj(json!({"user_id": "u3"})))
        .await
        .unwrap();
    assert!(session.memory_id.is_none());
    let msg = w
        .add_to_session(
            &t,
            session.id,
            RecordKind::Message,
            obj(json!({"role": "user", "content": "where is my order?"})),
        )
        .await
        .unwrap();
    let mm = svc.get(&t, msg.memory_id.unwrap()).await.unwrap();
    assert_eq!(mm.memory_type, MemoryType::Episode);
    assert!(mm.tags.contains(&"kind:message".to_string()));
    assert_eq!(mm.scope.session_id, msg.scope.session_id);
    assert_eq!(mm.scope.user_id.as_deref(), Some("u3"));
    assert!(mm.content.contains("where is my order?"));
    assert_eq!(user_list(&svc, &t, "u3").await.len(), 1);
    let goal = w
        .create(&t, RecordKind::Goal, obj(json!({"title": "no mirror"})))
        .await
        .unwrap();
    assert!(goal.memory_id.is_none());
    assert!(memories_of(&s, &t, goal.id).await.is_empty());
}

pub async fn a_failed_mirror_write_leaves_no_record(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let d = w
        .create(
            &t,
            RecordKind::Decision,
            obj(json!({"what": "first", "user_id": "u1"})),
        )
        .await
        .unwrap();
    let m = s
        .memories
        .get(&t, d.memory_id.unwrap())
        .await
        .unwrap()
        .unwrap();
    let changes_before = all_record_changes(&s, &t).await;
    let memory_log_before = svc.changes(&t, 0, 1000).await.unwrap();

    // Insert whose mirror replace is at a stale version: Conflict, and nothing stays.
    let mut stale_mirror = m.clone();
    stale_mirror.content = "hijacked".into();
    stale_mirror.version = m.version + 5;
    let conflicting = MirrorWrite::Replace {
        next: stale_mirror.clone(),
        expected_version: m.version + 4,
        op: ChangeOp::Updated,
    };
    let r = hand_made(&t, RecordKind::Decision, json!({"what": "second"}));
    assert!(matches!(
        s.records.insert_record(&r, Some(conflicting.clone())).await,
        Err(StoreError::Conflict(_))
    ));
    // Whose mirror is gone: NotFound, and nothing stays.
    let mut ghost = m.clone();
    ghost.id = engram_core::MemoryId::new();
    ghost.version = 2;
    let r2 = hand_made(&t, RecordKind::Decision, json!({"what": "third"}));
    assert_eq!(
        s.records
            .insert_record(
                &r2,
                Some(MirrorWrite::Replace {
                    next: ghost,
                    expected_version: 1,
                    op: ChangeOp::Updated,
                })
            )
            .await,
        Err(StoreError::NotFound)
    );
    // Whose mirror insert collides with an existing memory: Conflict, nothing stays.
    let r3 = hand_made(&t, RecordKind::Decision, json!({"what": "fourth"}));
    let mut dup = NewMemory::note("duplicate")
        .unwrap()
        .into_memory(t.clone(), r3.created_at);
    dup.id = m.id;
    assert!(matches!(
        s.records
            .insert_record(&r3, Some(MirrorWrite::Insert(dup)))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // Whose mirror belongs to another tenant: refused, nothing stays.
    let r4 = hand_made(&t, RecordKind::Decision, json!({"what": "fifth"}));
    let foreign = NewMemory::note("foreign")
        .unwrap()
        .into_memory(tenant("t2"), r4.created_at);
    assert!(s
        .records
        .insert_record(&r4, Some(MirrorWrite::Insert(foreign.clone())))
        .await
        .is_err());
    assert!(s
        .memories
        .get(&tenant("t2"), foreign.id)
        .await
        .unwrap()
        .is_none());
    for r in [&r, &r2, &r3, &r4] {
        assert!(
            s.records.get_record(&t, r.id).await.unwrap().is_none(),
            "a record whose mirror write failed must not exist"
        );
    }

    // A replace whose mirror write conflicts leaves the record as it was.
    let mut next = d.clone();
    next.body.insert("why".into(), json!("never stored"));
    next.version += 1;
    assert!(matches!(
        s.records
            .replace_record(&next, d.version, Some(conflicting.clone()))
            .await,
        Err(StoreError::Conflict(_))
    ));
    // So does a delete.
    assert!(matches!(
        s.records.delete_record(&d, Some(conflicting)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.records.get_record(&t, d.id).await.unwrap().unwrap(), d);
    assert_eq!(svc.get(&t, m.id).await.unwrap().content, m.content);
    assert_eq!(
        all_record_changes(&s, &t).await,
        changes_before,
        "no change record of a write that did not happen"
    );
    assert_eq!(svc.changes(&t, 0, 1000).await.unwrap(), memory_log_before);
    assert_eq!(all_records(&s, &t).await, vec![d.clone()]);

    // And a good write still goes through.
    let u = w
        .update(
            &t,
            RecordKind::Decision,
            d.id,
            obj(json!({"why": "because"})),
        )
        .await
        .unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(svc.get(&t, m.id).await.unwrap().version, 2);
}

pub async fn agent_state_keys_are_unique_per_agent(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let t = tenant("t1");
    let n = 16;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (w, t) = (w.clone(), t.clone());
            tokio::spawn(async move {
                w.put_state(&t, "a1", "plan", json!({"step": i}))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let written: Vec<Record> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ids: BTreeSet<RecordId> = written.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 1, "concurrent puts of one key make one record");
    let q = RecordQuery {
        kind: Some(RecordKind::AgentState),
        agent_id: Some("a1".into()),
        key: Some("plan".into()),
        limit: 100,
        ..RecordQuery::default()
    };
    let listed = s.records.list_records(&t, &q).await.unwrap().items;
    assert_eq!(listed.len(), 1);
    let cur = w.get_state(&t, "a1", "plan").await.unwrap();
    assert_eq!(listed[0], cur);
    assert!(written.iter().any(|r| r.body == cur.body));
    assert_eq!(
        s.records
            .get_keyed(&t, RecordKind::AgentState, Some("a1"), "plan")
            .await
            .unwrap(),
        Some(cur.clone())
    );
    assert_eq!(
        s.records
            .get_keyed(&t, RecordKind::AgentState, None, "plan")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.records
            .get_keyed(&t, RecordKind::Event, Some("a1"), "plan")
            .await
            .unwrap(),
        None
    );

    // The same key for another agent, or in another tenant, is another record.
    let a2 = w.put_state(&t, "a2", "plan", json!(1)).await.unwrap();
    let other = w
        .put_state(&tenant("t2"), "a1", "plan", json!(1))
        .await
        .unwrap();
    assert_ne!(a2.id, cur.id);
    assert_ne!(other.id, cur.id);

    // The port refuses a second record with the key, on insert and on replace.
    let mut dup = hand_made(&t, RecordKind::AgentState, json!({"value": 2}));
    dup.scope.agent_id = Some("a1".into());
    dup.key = Some("plan".into());
    assert!(matches!(
        s.records.insert_record(&dup, None).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.records.get_record(&t, dup.id).await.unwrap().is_none());
    let mut moved = a2.clone();
    moved.scope.agent_id = Some("a1".into());
    moved.version += 1;
    assert!(matches!(
        s.records.replace_record(&moved, a2.version, None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.records.get_record(&t, a2.id).await.unwrap(), Some(a2));
    // Keys without an agent are unique too.
    let mut lone = hand_made(&t, RecordKind::AgentState, json!({"value": 3}));
    lone.key = Some("global".into());
    s.records.insert_record(&lone, None).await.unwrap();
    let mut lone2 = lone.clone();
    lone2.id = RecordId::new();
    assert!(matches!(
        s.records.insert_record(&lone2, None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.records
            .get_keyed(&t, RecordKind::AgentState, None, "global")
            .await
            .unwrap(),
        Some(lone)
    );

    // Concurrent keeps of one event make one record.
    let body = json!({"category": "oom", "severity": "critical",
                      "at": "2026-02-01T00:00:00Z", "seq": 1});
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (w, t, body) = (w.clone(), t.clone(), body.clone());
            tokio::spawn(async move { w.keep_event(&t, "a1", "evt-9", obj(body)).await.unwrap() })
        })
        .collect();
    let kept: BTreeSet<RecordId> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap().id)
        .collect();
    assert_eq!(kept.len(), 1);
}

pub async fn record_changes_share_the_log_with_memories(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let (m1, _) = svc
        .remember(&t, NewMemory::note("plain memory").unwrap(), None)
        .await
        .unwrap();
    let goal = w
        .create(&t, RecordKind::Goal, obj(json!({"title": "g"})))
        .await
        .unwrap();
    svc.update(
        &t,
        m1.id,
        engram_core::MemoryPatch {
            content: Some(engram_core::validate::Content::parse("edited".into(), "c").unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let goal2 = w
        .update(
            &t,
            RecordKind::Goal,
            goal.id,
            obj(json!({"priority": "urgent"})),
        )
        .await
        .unwrap();
    let decision = w
        .create(
            &t,
            RecordKind::Decision,
            obj(json!({"what": "log everything"})),
        )
        .await
        .unwrap();
    let mirror = decision.memory_id.unwrap();
    w.delete(&t, RecordKind::Goal, goal.id).await.unwrap();
    svc.forget(&t, m1.id).await.unwrap();
    w.create(
        &tenant("t2"),
        RecordKind::Goal,
        obj(json!({"title": "elsewhere"})),
    )
    .await
    .unwrap();

    // The memory log holds memories only.
    let memory_log = s.memories.changes(&t, 0, 1000).await.unwrap();
    let got: Vec<(engram_core::MemoryId, ChangeOp)> =
        memory_log.iter().map(|c| (c.memory_id, c.op)).collect();
    assert_eq!(
        got,
        vec![
            (m1.id, ChangeOp::Created),
            (m1.id, ChangeOp::Updated),
            (mirror, ChangeOp::Created),
            (m1.id, ChangeOp::Deleted),
        ]
    );
    // The record log holds records only, each change with its state after it.
    let record_log = all_record_changes(&s, &t).await;
    let got: Vec<(RecordId, ChangeOp, i64)> = record_log
        .iter()
        .map(|c| (c.record.id, c.op, c.record.version))
        .collect();
    assert_eq!(
        got,
        vec![
            (goal.id, ChangeOp::Created, 1),
            (goal.id, ChangeOp::Updated, 2),
            (decision.id, ChangeOp::Created, 1),
            (goal.id, ChangeOp::Deleted, 2),
        ]
    );
    assert_eq!(record_log[0].record, goal);
    assert_eq!(record_log[1].record, goal2);
    assert_eq!(record_log[2].record, decision);
    assert_eq!(record_log[3].record, goal2, "a delete holds the last state");
    assert!(record_log.iter().all(|c| c.record.tenant == t));

    // One seq order across both, in the order the writes happened.
    let mut all: Vec<i64> = memory_log
        .iter()
        .map(|c| c.seq)
        .chain(record_log.iter().map(|c| c.seq))
        .collect();
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "no seq is shared");
    assert!(memory_log.windows(2).all(|p| p[0].seq < p[1].seq));
    assert!(record_log.windows(2).all(|p| p[0].seq < p[1].seq));
    let (m, r) = (&memory_log, &record_log);
    let order = [
        m[0].seq,               // m1 created
        r[0].seq,               // goal created
        m[1].seq,               // m1 updated
        r[1].seq,               // goal updated
        r[2].seq.max(m[2].seq), // the decision and its mirror, one transaction
        r[3].seq,               // goal deleted
        m[3].seq,               // m1 deleted
    ];
    assert!(
        order.windows(2).all(|p| p[0] < p[1]),
        "the log interleaves in write order: {order:?}"
    );
    assert!(r[1].seq < r[2].seq.min(m[2].seq));

    // Reading after a position, and a limit.
    let after = s.records.record_changes(&t, r[1].seq, 1000).await.unwrap();
    assert_eq!(after, record_log[2..].to_vec());
    let first = s.records.record_changes(&t, 0, 1).await.unwrap();
    assert_eq!(first, record_log[..1].to_vec());
    assert_eq!(
        w.changes(&t, r[2].seq, 10).await.unwrap(),
        record_log[3..].to_vec()
    );
    let other = s
        .records
        .record_changes(&tenant("t2"), 0, 1000)
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    assert!(s
        .memories
        .changes(&tenant("t2"), 0, 1000)
        .await
        .unwrap()
        .is_empty());

    // Replaying the record log rebuilds the live records.
    let mut replayed: BTreeMap<RecordId, Record> = BTreeMap::new();
    for c in &record_log {
        match c.op {
            ChangeOp::Deleted => {
                replayed.remove(&c.record.id);
            }
            _ => {
                replayed.insert(c.record.id, c.record.clone());
            }
        }
    }
    let live: BTreeMap<RecordId, Record> = all_records(&s, &t)
        .await
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    assert_eq!(replayed, live);
}

pub async fn purges_remove_records_and_their_changes(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let mut mirrors: HashMap<&str, Vec<engram_core::MemoryId>> = HashMap::new();
    for t in [&t1, &t2] {
        for user in ["u1", "u2"] {
            w.create(
                t,
                RecordKind::Goal,
                obj(json!({"title": "g", "user_id": user})),
            )
            .await
            .unwrap();
            let d = w
                .create(
                    t,
                    RecordKind::Decision,
                    obj(json!({"what": "d", "user_id": user})),
                )
                .await
                .unwrap();
            w.update(t, RecordKind::Decision, d.id, obj(json!({"why": "w"})))
                .await
                .unwrap();
            if t == &t1 {
                mirrors.entry(user).or_default().push(d.memory_id.unwrap());
            }
            let session = w
                .create(t, RecordKind::Session, obj(json!({"user_id": user})))
                .await
                .unwrap();
            w.add_to_session(
                t,
                session.id,
                RecordKind::Message,
                obj(json!({"role": "user", "content": "hi"})),
            )
            .await
            .unwrap();
            let gone = w
                .create(
                    t,
                    RecordKind::Task,
                    obj(json!({"title": "done", "user_id": user})),
                )
                .await
                .unwrap();
            w.delete(t, RecordKind::Task, gone.id).await.unwrap();
        }
        w.put_state(t, "a1", "k", json!(true)).await.unwrap();
    }
    let user_of = |r: &Record| r.scope.user_id.clone();
    let count = |rs: &[Record], u: &str| {
        rs.iter()
            .filter(|r| user_of(r).as_deref() == Some(u))
            .count()
    };
    let before = all_records(&s, &t1).await;
    assert_eq!((count(&before, "u1"), count(&before, "u2")), (4, 4));

    s.memories.purge_user(&t1, "u1").await.unwrap();
    let after = all_records(&s, &t1).await;
    assert_eq!(count(&after, "u1"), 0, "the user's records are gone");
    assert_eq!(count(&after, "u2"), 4);
    assert_eq!(after.len(), before.len() - 4);
    for r in before
        .iter()
        .filter(|r| user_of(r).as_deref() == Some("u1"))
    {
        assert!(s.records.get_record(&t1, r.id).await.unwrap().is_none());
    }
    let log = all_record_changes(&s, &t1).await;
    assert!(
        log.iter()
            .all(|c| c.record.scope.user_id.as_deref() != Some("u1")),
        "no change record of the user's records is left"
    );
    // u2's: 4 records created, a decision updated, a task created and deleted.
    assert_eq!(
        log.iter()
            .filter(|c| c.record.scope.user_id.as_deref() == Some("u2"))
            .count(),
        4 + 1 + 2
    );
    assert!(log.iter().any(|c| c.record.kind == RecordKind::AgentState));
    for id in &mirrors["u1"] {
        assert!(s.memories.get(&t1, *id).await.unwrap().is_none());
    }
    for id in &mirrors["u2"] {
        assert!(s.memories.get(&t1, *id).await.unwrap().is_some());
    }
    let t2_before = all_records(&s, &t2).await;
    assert_eq!(
        count(&t2_before, "u1"),
        4,
        "another tenant's user is untouched"
    );
    let t2_log = all_record_changes(&s, &t2).await;
    assert_eq!(t2_log.len(), 2 * (4 + 1 + 2) + 1);

    s.memories.purge_tenant(&t1).await.unwrap();
    assert!(all_records(&s, &t1).await.is_empty());
    assert!(all_record_changes(&s, &t1).await.is_empty());
    assert!(s.memories.changes(&t1, 0, 1000).await.unwrap().is_empty());
    assert_eq!(all_records(&s, &t2).await, t2_before);
    assert_eq!(all_record_changes(&s, &t2).await, t2_log);
    // The tenant starts afresh: its keys are free again.
    w.put_state(&t1, "a1", "k", json!(false)).await.unwrap();
}

pub async fn records_are_isolated_by_tenant(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let goal = w
        .create(&t1, RecordKind::Goal, obj(json!({"title": "secret plan"})))
        .await
        .unwrap();
    let decision = w
        .create(
            &t1,
            RecordKind::Decision,
            obj(json!({"what": "secret call"})),
        )
        .await
        .unwrap();
    let state = w.put_state(&t1, "a1", "k", json!("t1's")).await.unwrap();

    for (kind, id, patch) in [
        (RecordKind::Goal, goal.id, json!({"title": "x"})),
        (RecordKind::Decision, decision.id, json!({"what": "x"})),
    ] {
        assert_eq!(w.get(&t2, kind, id).await.unwrap_err(), not_found(kind));
        assert_eq!(
            w.update(&t2, kind, id, obj(patch)).await.unwrap_err(),
            not_found(kind)
        );
        assert_eq!(w.delete(&t2, kind, id).await.unwrap_err(), not_found(kind));
        assert!(s.records.get_record(&t2, id).await.unwrap().is_none());
    }
    assert_eq!(
        w.get_state(&t2, "a1", "k").await.unwrap_err(),
        not_found(RecordKind::AgentState)
    );
    assert!(s
        .records
        .get_keyed(&t2, RecordKind::AgentState, Some("a1"), "k")
        .await
        .unwrap()
        .is_none());
    assert!(all_records(&s, &t2).await.is_empty());
    assert!(all_record_changes(&s, &t2).await.is_empty());
    // The port, handed another tenant's id under its own tenant, finds nothing.
    let mut foreign = goal.clone();
    foreign.tenant = t2.clone();
    let mut next = foreign.clone();
    next.version += 1;
    assert_eq!(
        s.records.replace_record(&next, foreign.version, None).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        s.records.delete_record(&foreign, None).await,
        Err(StoreError::NotFound)
    );
    // A parent must be in the tenant.
    let err = w
        .create(
            &t2,
            RecordKind::Task,
            obj(json!({"title": "t", "goal_id": goal.id.to_string()})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::Validation { field, .. } if field == "goal_id"),
        "{err:?}"
    );
    // The same agent and key in t2 is t2's own.
    let theirs = w.put_state(&t2, "a1", "k", json!("t2's")).await.unwrap();
    assert_ne!(theirs.id, state.id);
    assert_eq!(w.get_state(&t1, "a1", "k").await.unwrap(), state);
    assert_eq!(all_records(&s, &t2).await, vec![theirs]);
    // t1 is untouched.
    assert_eq!(w.get(&t1, RecordKind::Goal, goal.id).await.unwrap(), goal);
    assert_eq!(
        w.get(&t1, RecordKind::Decision, decision.id).await.unwrap(),
        decision
    );
    assert_eq!(all_records(&s, &t1).await.len(), 3);
}

pub async fn tier_migration_moves_old_records_once(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let w = working(&s);
    let svc = MemoryService::new(s.memories.clone());
    let t = tenant("t1");
    let start = engram_core::time::now() - chrono::Duration::seconds(1);
    let create = |kind, v| {
        let (w, t) = (w.clone(), t.clone());
        async move { w.create(&t, kind, obj(v)).await.unwrap() }
    };
    let set = |kind, id, v| {
        let (w, t) = (w.clone(), t.clone());
        async move { w.update(&t, kind, id, obj(v)).await.unwrap() }
    };
    let done = create(
        RecordKind::Task,
        json!({"title": "migrate the schema", "user_id": "u1"}),
    )
    .await;
    let done = set(
        RecordKind::Task,
        done.id,
        json!({"status": "done", "result": "ok"}),
    )
    .await;
    let open = create(RecordKind::Task, json!({"title": "still open"})).await;
    let busy = create(
        RecordKind::Task,
        json!({"title": "in flight", "status": "in_progress"}),
    )
    .await;
    let ended = create(RecordKind::Session, json!({"title": "old chat"})).await;
    let ended = set(RecordKind::Session, ended.id, json!({"status": "ended"})).await;
    let live_session = create(RecordKind::Session, json!({"title": "ongoing"})).await;
    let achieved = create(RecordKind::Goal, json!({"title": "launch"})).await;
    let achieved = set(RecordKind::Goal, achieved.id, json!({"status": "achieved"})).await;
    let active = create(RecordKind::Goal, json!({"title": "grow"})).await;
    let decision = create(
        RecordKind::Decision,
        json!({"what": "keep a long-term tier", "user_id": "u1"}),
    )
    .await;
    let pattern = create(
        RecordKind::Pattern,
        json!({"trigger": "slow query", "action": "add an index"}),
    )
    .await;
    let state = w.put_state(&t, "a1", "k", json!(1)).await.unwrap();

    // Nothing is old enough yet.
    let report = w.migrate_tiers(&t, start, &Verbatim).await.unwrap();
    assert_eq!(report.moved, 0);

    let cutoff = engram_core::time::now() + chrono::Duration::seconds(1);
    let report = w.migrate_tiers(&t, cutoff, &Verbatim).await.unwrap();
    assert_eq!(report.moved, 4, "{report:?}");
    assert_eq!(report.kept_mirrors, 1);

    let left: BTreeSet<RecordId> = all_records(&s, &t).await.iter().map(|r| r.id).collect();
    let stayed: BTreeSet<RecordId> = [
        open.id,
        busy.id,
        live_session.id,
        active.id,
        pattern.id,
        state.id,
    ]
    .into_iter()
    .collect();
    assert_eq!(left, stayed);

    for (r, ty) in [
        (&done, MemoryType::Task),
        (&achieved, MemoryType::Task),
        (&ended, MemoryType::Episode),
    ] {
        assert!(s.records.get_record(&t, r.id).await.unwrap().is_none());
        let ms = memories_of(&s, &t, r.id).await;
        assert_eq!(ms.len(), 1, "{} became one memory", r.kind);
        let m = &ms[0];
        assert_eq!(m.memory_type, ty);
        assert!(m.tags.contains(&LONG_TERM_TAG.to_string()), "{:?}", m.tags);
        assert!(m.tags.contains(&kind_tag(r.kind)));
        assert_eq!(m.metadata["record_id"], json!(r.id.to_string()));
        assert_eq!(m.source_ref.as_deref(), Some(r.source_id().as_str()));
        assert_eq!(m.content, render(r));
        assert_eq!(m.scope, r.scope);
    }
    // The decision keeps its mirror, re-tagged.
    assert!(s
        .records
        .get_record(&t, decision.id)
        .await
        .unwrap()
        .is_none());
    let kept = svc.get(&t, decision.memory_id.unwrap()).await.unwrap();
    assert!(
        kept.tags.contains(&LONG_TERM_TAG.to_string()),
        "{:?}",
        kept.tags
    );
    assert!(kept.tags.contains(&"kind:decision".to_string()));
    assert_eq!(kept.version, 2);
    let ids: Vec<_> = memories_of(&s, &t, decision.id)
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![kept.id], "no second memory of the decision");
    // The pattern's mirror stays a working-tier mirror.
    let pm = svc.get(&t, pattern.memory_id.unwrap()).await.unwrap();
    assert!(!pm.tags.contains(&LONG_TERM_TAG.to_string()));
    // Each move is in the record log, as a delete.
    let deleted: BTreeSet<RecordId> = all_record_changes(&s, &t)
        .await
        .iter()
        .filter(|c| c.op == ChangeOp::Deleted)
        .map(|c| c.record.id)
        .collect();
    assert_eq!(
        deleted,
        [done.id, achieved.id, ended.id, decision.id]
            .into_iter()
            .collect()
    );

    // Idempotent: a second run moves nothing.
    let total = |svc: MemoryService| {
        let t = t.clone();
        async move {
            svc.list(&t, &ListQuery::default())
                .await
                .unwrap()
                .result
                .total
        }
    };
    let memories = total(svc.clone()).await;
    assert_eq!(memories, 3 + 2, "three new memories, two mirrors");
    let again = w.migrate_tiers(&t, cutoff, &Verbatim).await.unwrap();
    assert_eq!((again.moved, again.kept_mirrors), (0, 0));
    assert_eq!(total(svc.clone()).await, memories);
    assert_eq!(all_records(&s, &t).await.len(), stayed.len());
}
