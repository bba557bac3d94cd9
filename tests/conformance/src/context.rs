//! Context assembly over a backend: every tier's records reach the context, cited, within
//! the budget; a critical event the ring evicts is kept by the store; another tenant's
//! context holds none of it.

use std::sync::Arc;

use engram_core::context::{Tier, TokenizerKind};
use engram_core::context_service::{ContextRequest, ContextService};
use engram_core::ops::{InMemoryOps, NewEvent, OpsConfig, OpsService, Severity};
use engram_core::working::service::{Verbatim, WorkingService};
use engram_core::working::RecordKind;
use engram_core::{
    EmbedderSlot, MemoryService, NewMemory, Scope, SearchConfig, SearchService, TenantId,
};
use serde_json::{json, Map, Value};

use crate::Backend;

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

pub async fn context_cites_every_tier_within_the_budget(b: Arc<dyn Backend>) {
    let s = b.fresh().await;
    let t = TenantId::parse("ctx").unwrap();
    let other = TenantId::parse("ctx-other").unwrap();
    // No embedder: hybrid search runs as keyword search, the same on every backend.
    let search = SearchService::new(
        s.memories.clone(),
        s.search.clone(),
        s.embeddings.clone(),
        EmbedderSlot::default(),
        SearchConfig::default(),
    );
    let working = WorkingService::new(s.records.clone(), s.memories.clone(), Some(search.clone()));
    let config = OpsConfig {
        capacity: 2,
        ..OpsConfig::default()
    };
    let ops = OpsService::new(
        Arc::new(InMemoryOps::new(&config)),
        Arc::new(working.clone()),
        config,
    );
    let ctx = ContextService::new(ops.clone(), working.clone(), search);
    let agent = "deployer";
    let scoped = |extra: Value| {
        let mut o = obj(extra);
        o.insert("agent_id".into(), json!(agent));
        o
    };

    // Operational: a critical event pushed out of the ring by two more, and a metric.
    for (severity, payload) in [
        (Severity::Critical, "canary failed on node seven"),
        (Severity::Info, "tick"),
        (Severity::Info, "tock"),
    ] {
        ops.record(
            &t,
            agent,
            NewEvent {
                category: "canary".into(),
                severity,
                payload: json!(payload),
                at: None,
            },
        )
        .await
        .unwrap();
    }
    ops.set_metric(&t, agent, "error_rate", json!(0.07))
        .await
        .unwrap();
    // Working: a task, a decision, a tool call.
    let task = working
        .create(
            &t,
            RecordKind::Task,
            scoped(json!({"title": "Roll back the canary deployment", "status": "in_progress"})),
        )
        .await
        .unwrap();
    let decision = working
        .create(
            &t,
            RecordKind::Decision,
            scoped(json!({"what": "Pause the canary deployment", "why": "error rate above 5%"})),
        )
        .await
        .unwrap();
    let call = working
        .create(
            &t,
            RecordKind::ToolCall,
            scoped(
                json!({"tool": "kubectl", "arguments": {"cmd": "rollout undo canary deployment"}}),
            ),
        )
        .await
        .unwrap();
    // Long-term: a finished task moved by the tier migration.
    working
        .create(
            &t,
            RecordKind::Task,
            scoped(json!({"title": "Previous canary deployment rollback drill", "status": "done"})),
        )
        .await
        .unwrap();
    let cutoff = engram_core::time::now() + chrono::Duration::seconds(1);
    let moved = working.migrate_tiers(&t, cutoff, &Verbatim).await.unwrap();
    // The done task, the decision, the tool call and the kept event moved; the open task stayed.
    assert_eq!(moved.moved, 4, "{moved:?}");
    // Knowledge: a plain memory.
    let mems = MemoryService::new(s.memories.clone());
    let (fact, _) = mems
        .remember(
            &t,
            NewMemory::note("Canary deployment runbook: roll back first, then investigate")
                .unwrap(),
            None,
        )
        .await
        .unwrap();
    mems.remember(
        &other,
        NewMemory::note("Canary deployment secrets of another tenant").unwrap(),
        None,
    )
    .await
    .unwrap();

    let req = ContextRequest::new(
        "roll back the canary deployment",
        Scope {
            agent_id: Some(agent.into()),
            ..Scope::default()
        },
        Some(1500),
        Vec::new(),
        Default::default(),
        TokenizerKind::Cl100k,
    )
    .unwrap();
    let out = ctx.assemble(&t, &req).await.unwrap();
    assert!(out.total_tokens <= 1500);
    let tier_of = |source: &str| {
        out.chunks
            .iter()
            .find(|c| c.source_id == source)
            .map(|c| c.tier)
    };
    assert_eq!(
        tier_of(&format!("task:{}", task.id)),
        Some(Tier::Operational),
        "{}",
        out.rendered
    );
    assert_eq!(
        tier_of(&format!("metrics:{agent}")),
        Some(Tier::Operational)
    );
    assert_eq!(
        tier_of(&format!("memory:{}", fact.id)),
        Some(Tier::Knowledge),
        "{}",
        out.rendered
    );
    // The decision and the tool call were moved: they are long-term memories now.
    let long_term: Vec<_> = out
        .chunks
        .iter()
        .filter(|c| c.tier == Tier::LongTerm)
        .collect();
    for needle in [
        "Pause the canary deployment",
        "kubectl",
        "canary failed on node seven",
    ] {
        assert!(
            long_term.iter().any(|c| c.content.contains(needle)),
            "{needle} in the long-term tier of:\n{}",
            out.rendered
        );
    }
    assert_eq!(
        tier_of(&format!("decision:{}", decision.id)),
        None,
        "moved on"
    );
    assert_eq!(tier_of(&format!("tool_call:{}", call.id)), None, "moved on");
    assert!(!out.rendered.contains("another tenant"), "{}", out.rendered);
    for c in &out.chunks {
        assert!(out.rendered.contains(&format!("[{}]", c.source_id)));
    }

    // The other tenant's context is only its own.
    let theirs = ctx.assemble(&other, &req).await.unwrap();
    assert!(theirs.chunks.iter().all(|c| !c.content.contains("runbook")));
    assert!(
        theirs.chunks.iter().all(|c| c.tier == Tier::Knowledge),
        "{}",
        theirs.rendered
    );
}
