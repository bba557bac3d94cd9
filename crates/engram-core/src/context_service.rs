//! Context assembly across the tiers: the one call that turns what an agent is doing now
//! (operational), what it is working on (working), what it learned (long-term) and what
//! it knows (knowledge) into prompt-ready text within a token budget.
//!
//! Candidates come from three places:
//! - the operational snapshot of the scope's agent (metrics, active tasks, recent critical
//!   events), taken first when the tier is asked for;
//! - one hybrid search for the task over the tenant's memories of the scope's user,
//!   project and domain (an agent draws on knowledge it did not write itself); a hit is
//!   *working* when it mirrors a working record (a decision, pattern or message) of the
//!   scope's agent and session, *long-term* when the tier migration made it or it is a
//!   procedure or incident, *knowledge* otherwise;
//! - the newest working records of the kinds search does not cover (goals, tasks, tool
//!   calls, checkpoints, kept events), scored by how many of the task's words they hold.
//!
//! Then [`crate::context::assemble`] packs them: the budget is never exceeded, counted with
//! the named tokenizer.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::instrument;

use crate::context::{assemble, Assembled, Budget, Candidate, Tier, TokenizerKind};
use crate::error::CoreError;
use crate::filter::MemoryFilter;
use crate::ids::TenantId;
use crate::memory::{Memory, MemoryType, Scope};
use crate::ops::{OpsService, OpsSnapshot};
use crate::search::{SearchMode, SearchRequest, SearchService, QUERY_MAX_BYTES};
use crate::working::service::{
    headline, record_id_of, render, WorkingService, LONG_TERM_TAG, RECORD_KIND_KEY,
};
use crate::working::{Record, RecordKind, RecordQuery};

/// The default budget.
pub const MAX_TOKENS_DEFAULT: u32 = 4000;
/// How many search hits are considered.
const SEARCH_DEPTH: u32 = 50;
/// How many of the newest records of each unsearched working kind are considered.
const RECORDS_PER_KIND: u32 = 50;
/// How many of the newest records of each kind are considered even when they share no
/// word with the task.
const RECENT_ALWAYS: usize = 3;
/// How many active tasks the operational snapshot shows.
const ACTIVE_TASKS: u32 = 20;

/// A validated context request.
#[derive(Clone, Debug, PartialEq)]
pub struct ContextRequest {
    pub task: String,
    pub scope: Scope,
    pub tiers: Vec<Tier>,
    pub budget: Budget,
}

impl ContextRequest {
    /// Checks the task; `tiers` empty means all; `max_tokens` defaults to 4000.
    pub fn new(
        task: &str,
        scope: Scope,
        max_tokens: Option<u32>,
        tiers: Vec<Tier>,
        quotas: BTreeMap<Tier, u32>,
        tokenizer: TokenizerKind,
    ) -> Result<Self, CoreError> {
        let task = task.trim();
        if task.is_empty() {
            return Err(CoreError::validation("task", "must not be empty"));
        }
        if task.len() > QUERY_MAX_BYTES {
            return Err(CoreError::validation(
                "task",
                format!("must be at most {QUERY_MAX_BYTES} bytes"),
            ));
        }
        let budget = Budget::new(max_tokens.unwrap_or(MAX_TOKENS_DEFAULT), quotas, tokenizer)?;
        let tiers = if tiers.is_empty() {
            Tier::ALL.to_vec()
        } else {
            tiers
        };
        Ok(ContextRequest {
            task: task.to_owned(),
            scope,
            tiers,
            budget,
        })
    }
}

/// Runs `f` and says how long it took.
async fn timed(
    f: impl std::future::Future<Output = Result<Vec<Candidate>, CoreError>>,
) -> Result<(Vec<Candidate>, Duration), CoreError> {
    let started = Instant::now();
    f.await.map(|c| (c, started.elapsed()))
}

/// How long each phase of an assembly took (the first three run concurrently).
#[derive(Clone, Copy, Debug, Default)]
pub struct ContextTimings {
    pub snapshot: Duration,
    /// The task's embedding and the hybrid search.
    pub search: Duration,
    pub records: Duration,
    pub pack: Duration,
    /// Candidates handed to the packer.
    pub candidates: usize,
}

/// What an agent is doing now: the operational snapshot with its active tasks.
#[derive(Clone, Debug)]
pub struct AgentSnapshot {
    pub ops: OpsSnapshot,
    pub active_tasks: Vec<Record>,
}

#[derive(Clone)]
pub struct ContextService {
    ops: OpsService,
    working: WorkingService,
    search: SearchService,
}

impl ContextService {
    pub fn new(ops: OpsService, working: WorkingService, search: SearchService) -> Self {
        ContextService {
            ops,
            working,
            search,
        }
    }

    /// The agent's metrics, active tasks and recent critical events.
    pub async fn snapshot(
        &self,
        tenant: &TenantId,
        agent: &str,
    ) -> Result<AgentSnapshot, CoreError> {
        let ops = self.ops.snapshot(tenant, agent).await?;
        let active_tasks = self
            .working
            .active_tasks(tenant, agent, ACTIVE_TASKS)
            .await?;
        Ok(AgentSnapshot { ops, active_tasks })
    }

    /// Assembles the context for a task.
    #[instrument(skip_all, fields(tenant = %tenant))]
    pub async fn assemble(
        &self,
        tenant: &TenantId,
        req: &ContextRequest,
    ) -> Result<Assembled, CoreError> {
        self.assemble_timed(tenant, req).await.map(|(out, _)| out)
    }

    /// [`Self::assemble`], with the time each phase took. The three sources are read
    /// concurrently: the task's embedding and search overlap the record reads.
    pub async fn assemble_timed(
        &self,
        tenant: &TenantId,
        req: &ContextRequest,
    ) -> Result<(Assembled, ContextTimings), CoreError> {
        let wants = |t: Tier| req.tiers.contains(&t);
        let snapshot = timed(async {
            match (&req.scope.agent_id, wants(Tier::Operational)) {
                (Some(agent), true) => match self.snapshot(tenant, agent).await {
                    Ok(snap) => Ok(operational(&snap)),
                    // The rings live in Redis in server mode: without them the context
                    // still has every durable tier.
                    Err(CoreError::Unavailable(why)) => {
                        tracing::warn!(%why, "operational tier unavailable; context without it");
                        Ok(Vec::new())
                    }
                    Err(e) => Err(e),
                },
                _ => Ok(Vec::new()),
            }
        });
        let searched = timed(async {
            if wants(Tier::Working) || wants(Tier::LongTerm) || wants(Tier::Knowledge) {
                let mut found = self.searched(tenant, req).await?;
                found.retain(|c| wants(c.tier));
                Ok(found)
            } else {
                Ok(Vec::new())
            }
        });
        let records = timed(async {
            if wants(Tier::Working) {
                self.recent_records(tenant, req).await
            } else {
                Ok(Vec::new())
            }
        });
        let (snapshot, searched, records) = tokio::join!(snapshot, searched, records);
        let ((mut candidates, snapshot_t), (found, search_t), (recent, records_t)) =
            (snapshot?, searched?, records?);
        candidates.extend(found);
        candidates.extend(recent);
        // A task in the snapshot need not appear again among working records.
        let in_snapshot: HashSet<String> = candidates
            .iter()
            .filter(|c| c.tier == Tier::Operational)
            .map(|c| c.source_id.clone())
            .collect();
        candidates.retain(|c| c.tier == Tier::Operational || !in_snapshot.contains(&c.source_id));
        let considered = candidates.len();
        let started = Instant::now();
        let out = assemble(candidates, &req.budget);
        let timings = ContextTimings {
            snapshot: snapshot_t,
            search: search_t,
            records: records_t,
            pack: started.elapsed(),
            candidates: considered,
        };
        metrics::histogram!("engram_context_tokens").record(f64::from(out.total_tokens));
        metrics::histogram!("engram_context_pack_seconds").record(timings.pack.as_secs_f64());
        Ok((out, timings))
    }

    async fn searched(
        &self,
        tenant: &TenantId,
        req: &ContextRequest,
    ) -> Result<Vec<Candidate>, CoreError> {
        let filter = MemoryFilter {
            user_id: req.scope.user_id.clone(),
            project: req.scope.project.clone(),
            domain: req.scope.domain.clone(),
            ..MemoryFilter::default()
        };
        let sreq = SearchRequest::new(
            &req.task,
            filter,
            Some(SEARCH_DEPTH),
            SearchMode::Hybrid,
            None,
        )
        .map_err(|e| match e {
            CoreError::Validation { message, .. } => CoreError::validation("task", message),
            e => e,
        })?;
        let mut hits = self.search.search(tenant, &sreq).await?.hits;
        // Another agent's (or session's) working records are not this one's work.
        let own = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        hits.retain(|h| {
            !h.memory.metadata.contains_key(RECORD_KIND_KEY)
                || h.memory.tags.iter().any(|t| t == LONG_TERM_TAG)
                || (own(&req.scope.agent_id, &h.memory.scope.agent_id)
                    && own(&req.scope.session_id, &h.memory.scope.session_id))
        });
        let (lo, hi) = hits.iter().fold((f32::MAX, f32::MIN), |(lo, hi), h| {
            (lo.min(h.score), hi.max(h.score))
        });
        Ok(hits
            .into_iter()
            .map(|h| {
                // Min-max over the list, into [0.2, 1]: the best hit of any task is fully
                // relevant; the recent-record scores below share the scale.
                let rel = if hi > lo {
                    0.2 + 0.8 * (h.score - lo) / (hi - lo)
                } else {
                    1.0
                };
                memory_candidate(&h.memory, rel)
            })
            .collect())
    }

    async fn recent_records(
        &self,
        tenant: &TenantId,
        req: &ContextRequest,
    ) -> Result<Vec<Candidate>, CoreError> {
        let words = terms(&req.task);
        let kinds = [
            RecordKind::Goal,
            RecordKind::Task,
            RecordKind::ToolCall,
            RecordKind::Checkpoint,
            RecordKind::Event,
        ];
        let pages = futures::future::try_join_all(kinds.map(|kind| {
            let mut q = RecordQuery::of(kind);
            q.limit = RECORDS_PER_KIND;
            q.user_id = req.scope.user_id.clone();
            q.agent_id = req.scope.agent_id.clone();
            q.project = req.scope.project.clone();
            q.domain = req.scope.domain.clone();
            async move { self.working.list(tenant, &q).await }
        }))
        .await?;
        let mut out = Vec::new();
        for (kind, page) in kinds.into_iter().zip(pages) {
            let n = page.items.len().max(1) as f32;
            for (i, r) in page.items.iter().enumerate() {
                let text = render(r);
                let have = terms(&text);
                let shared = words.iter().filter(|w| have.contains(*w)).count();
                // A record that shares no word with the task is only worth a place when
                // it is among the newest of its kind.
                if shared == 0 && i >= RECENT_ALWAYS {
                    continue;
                }
                let overlap = shared as f32 / words.len().max(1) as f32;
                // Mostly how much of the task it speaks of; a little how recent it is.
                let rel = 0.9 * overlap + 0.1 * (1.0 - i as f32 / n);
                out.push(Candidate {
                    tier: Tier::Working,
                    kind: kind.as_str().to_owned(),
                    content: text,
                    relevance: rel,
                    source_id: r.source_id(),
                });
            }
        }
        Ok(out)
    }
}

/// The tier a memory belongs to, and the id a context cites it by.
fn memory_candidate(m: &Memory, relevance: f32) -> Candidate {
    let kind = m
        .metadata
        .get(RECORD_KIND_KEY)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let long_term = m.tags.iter().any(|t| t == LONG_TERM_TAG)
        || matches!(m.memory_type, MemoryType::Procedure | MemoryType::Incident);
    let tier = match (&kind, long_term) {
        (_, true) => Tier::LongTerm,
        (Some(_), false) => Tier::Working,
        (None, false) => Tier::Knowledge,
    };
    let source_id = match (tier, &kind, record_id_of(m)) {
        (Tier::Working, Some(k), Some(id)) => format!("{k}:{id}"),
        _ => format!("memory:{}", m.id),
    };
    let content = match &m.title {
        Some(t) if !m.content.starts_with(t.as_str()) && tier != Tier::Working => {
            format!("{t}: {}", m.content)
        }
        _ => m.content.clone(),
    };
    Candidate {
        tier,
        kind: kind.unwrap_or_else(|| m.memory_type.as_str().to_owned()),
        content,
        relevance,
        source_id,
    }
}

/// The snapshot as candidates: metrics in one chunk, then each active task and critical event.
fn operational(s: &AgentSnapshot) -> Vec<Candidate> {
    let mut out = Vec::new();
    if !s.ops.metrics.is_empty() {
        let line = s
            .ops
            .metrics
            .iter()
            .map(|(k, v)| match &v.value {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Candidate {
            tier: Tier::Operational,
            kind: "metrics".into(),
            content: format!("Metrics of {}: {line}", s.ops.agent),
            relevance: 1.0,
            source_id: format!("metrics:{}", s.ops.agent),
        });
    }
    for t in &s.active_tasks {
        out.push(Candidate {
            tier: Tier::Operational,
            kind: "task".into(),
            content: format!(
                "{} [{}]",
                headline(t),
                t.status.as_deref().unwrap_or("open")
            ),
            relevance: 0.95,
            source_id: t.source_id(),
        });
    }
    for e in &s.ops.recent_critical {
        let payload = match &e.payload {
            Value::Null => String::new(),
            p => format!(": {p}"),
        };
        out.push(Candidate {
            tier: Tier::Operational,
            kind: "event".into(),
            content: format!(
                "Critical {} at {}{payload}",
                e.category,
                crate::time::format_rfc3339(e.at)
            ),
            relevance: 0.9,
            source_id: format!("event:{}#{}", e.agent, e.seq),
        });
    }
    out
}

/// Lower-cased words of three letters or more.
fn terms(s: &str) -> HashSet<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect()
}
