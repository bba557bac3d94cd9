//! The working tier's use cases: create, read, list, update and delete records of every
//! kind; agent state by key; the semantic look-ups over decisions and patterns; keeping
//! critical events the operational tier evicts; and the tier migration that moves old
//! records into the long-term tier as memories.

use std::sync::Arc;

use serde_json::{json, Map, Value};
use tracing::instrument;

use super::schema::{time_field, TASK_ACTIVE};
use super::{Record, RecordChange, RecordId, RecordKind, RecordPage, RecordQuery};
use crate::change::ChangeOp;
use crate::error::{CoreError, StoreError};
use crate::filter::MemoryFilter;
use crate::ids::TenantId;
use crate::memory::{Memory, MemoryPatch, MemoryType, NewMemory, Scope, Source};
use crate::ports::{MemoryStore, MirrorWrite, RecordStore};
use crate::search::{SearchMode, SearchRequest, SearchService};
use crate::time::{now, Timestamp};
use crate::validate::{Content, Label, Metadata, Tags, Title};

const CAS_ATTEMPTS: u32 = 20;
/// Most records a listing returns per page.
pub const RECORDS_PER_PAGE_MAX: u32 = 100;
/// The scope fields a client may set on each kind (a message or checkpoint takes its
/// session's; agent state and events belong to the agent in the path).
pub const ALL_SCOPE: &[&str] = &["user_id", "agent_id", "project", "domain", "session_id"];
/// Metadata key naming the record a memory mirrors or was migrated from.
pub const RECORD_ID_KEY: &str = "record_id";
/// Metadata key naming the kind of that record.
pub const RECORD_KIND_KEY: &str = "record_kind";
/// Longest JSON value (tool arguments, results, state) a rendered record shows.
const RENDERED_JSON_MAX_CHARS: usize = 1000;
/// Tag carried by memories the tier migration made.
pub const LONG_TERM_TAG: &str = "tier:long_term";

/// Turns working records into long-term memories during the tier migration. The default
/// keeps each record's own text; a later summariser (an LLM in the background) plugs in
/// here and may fold a session's records into one memory.
pub trait Summariser: Send + Sync {
    /// The memory content that keeps `record` in the long-term tier.
    fn long_term_text(&self, record: &Record) -> String;
}

/// Keeps each record verbatim ([`render`]).
pub struct Verbatim;

impl Summariser for Verbatim {
    fn long_term_text(&self, record: &Record) -> String {
        render(record)
    }
}

/// What a tier migration did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Records moved into the long-term tier.
    pub moved: u64,
    /// Of those, records whose mirror memory was kept (re-tagged) rather than a new one made.
    pub kept_mirrors: u64,
}

#[derive(Clone)]
pub struct WorkingService {
    store: Arc<dyn RecordStore>,
    memories: Arc<dyn MemoryStore>,
    search: Option<SearchService>,
}

fn not_found(kind: RecordKind) -> CoreError {
    CoreError::NotFound { what: kind.noun() }
}

fn store_err(kind: RecordKind, e: StoreError) -> CoreError {
    match e {
        StoreError::NotFound => not_found(kind),
        e => e.into(),
    }
}

impl WorkingService {
    pub fn new(
        store: Arc<dyn RecordStore>,
        memories: Arc<dyn MemoryStore>,
        search: Option<SearchService>,
    ) -> Self {
        WorkingService {
            store,
            memories,
            search,
        }
    }

    /// Creates a goal, task, tool call, decision, pattern or session from a request object.
    #[instrument(skip_all, fields(tenant = %tenant, kind = %kind))]
    pub async fn create(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        input: Map<String, Value>,
    ) -> Result<Record, CoreError> {
        if matches!(
            kind,
            RecordKind::Message
                | RecordKind::Checkpoint
                | RecordKind::AgentState
                | RecordKind::Event
        ) {
            return Err(CoreError::Internal(format!(
                "a {} is created through its owner",
                kind.noun()
            )));
        }
        let schema = kind.schema();
        let parsed = schema.parse_input(input, ALL_SCOPE)?;
        let mut scope = Scope::default();
        parsed.apply_scope(&mut scope);
        let body = finish_body(kind, None, schema.create_body(parsed.body)?);
        let record = self.new_record(tenant, kind, scope, None, None, body);
        self.check_parent(&record).await?;
        self.insert(record).await
    }

    /// Adds a message or checkpoint to a session; it takes the session's scope.
    #[instrument(skip_all, fields(tenant = %tenant, kind = %kind))]
    pub async fn add_to_session(
        &self,
        tenant: &TenantId,
        session: RecordId,
        kind: RecordKind,
        input: Map<String, Value>,
    ) -> Result<Record, CoreError> {
        let parent = self.get(tenant, RecordKind::Session, session).await?;
        let schema = kind.schema();
        let parsed = schema.parse_input(input, &[])?;
        let mut body = schema.create_body(parsed.body)?;
        if !body.contains_key("at") {
            body.insert("at".into(), json!(crate::time::format_rfc3339(now())));
        }
        let mut scope = parent.scope.clone();
        scope.session_id = Some(parent.id.to_string());
        let record = self.new_record(tenant, kind, scope, Some(parent.id), None, body);
        self.insert(record).await
    }

    /// Sets an agent's state entry: creates it or replaces its value.
    #[instrument(skip_all, fields(tenant = %tenant))]
    pub async fn put_state(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        value: Value,
    ) -> Result<Record, CoreError> {
        let agent = Label::parse(agent.to_owned(), "agent")?.into_inner();
        let key = Label::parse(key.to_owned(), "key")?.into_inner();
        let mut given = Map::new();
        given.insert("value".into(), value);
        let schema = RecordKind::AgentState.schema();
        let body = schema.create_body(schema.parse_input(given, &[])?.body)?;
        self.put_keyed(tenant, RecordKind::AgentState, &agent, &key, body)
            .await
    }

    /// Keeps a critical event the operational tier evicts. Idempotent on (agent, key): the
    /// same event kept twice is one record.
    pub async fn keep_event(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
        body: Map<String, Value>,
    ) -> Result<Record, CoreError> {
        let agent = &Label::parse(agent.to_owned(), "agent")?.into_inner();
        let key = &Label::parse(key.to_owned(), "key")?.into_inner();
        let schema = RecordKind::Event.schema();
        let body = schema.create_body(schema.parse_input(body, &[])?.body)?;
        // The same event kept again has the same body: the stored record is returned.
        self.put_keyed(tenant, RecordKind::Event, agent, key, body)
            .await
    }

    async fn put_keyed(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        agent: &str,
        key: &str,
        body: Map<String, Value>,
    ) -> Result<Record, CoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            match self.store.get_keyed(tenant, kind, Some(agent), key).await? {
                Some(cur) => {
                    if cur.body == body {
                        return Ok(cur);
                    }
                    let mut next = cur.clone();
                    next.body = body.clone();
                    bump(&mut next);
                    match self.store.replace_record(&next, cur.version, None).await {
                        Ok(()) => return Ok(next),
                        Err(StoreError::Conflict(_) | StoreError::NotFound) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let scope = Scope {
                        agent_id: Some(agent.to_owned()),
                        ..Scope::default()
                    };
                    let r =
                        self.new_record(tenant, kind, scope, None, Some(key.into()), body.clone());
                    match self.store.insert_record(&r, None).await {
                        Ok(()) => return Ok(r),
                        Err(StoreError::Conflict(_)) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(conflict())
    }

    /// An agent's state entry.
    pub async fn get_state(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
    ) -> Result<Record, CoreError> {
        self.store
            .get_keyed(tenant, RecordKind::AgentState, Some(agent), key)
            .await?
            .ok_or_else(|| not_found(RecordKind::AgentState))
    }

    /// Deletes an agent's state entry.
    pub async fn delete_state(
        &self,
        tenant: &TenantId,
        agent: &str,
        key: &str,
    ) -> Result<(), CoreError> {
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let cur = self.get_state(tenant, agent, key).await?;
            match self.store.delete_record(&cur, None).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(RecordKind::AgentState, e)),
            }
        }
        Err(conflict())
    }

    /// A record of `kind`; any other kind's id answers 404, like a missing one.
    pub async fn get(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        id: RecordId,
    ) -> Result<Record, CoreError> {
        match self.store.get_record(tenant, id).await? {
            Some(r) if r.kind == kind => Ok(r),
            _ => Err(not_found(kind)),
        }
    }

    /// A message or checkpoint of a session.
    pub async fn get_in_session(
        &self,
        tenant: &TenantId,
        session: RecordId,
        kind: RecordKind,
        id: RecordId,
    ) -> Result<Record, CoreError> {
        let r = self.get(tenant, kind, id).await?;
        if r.parent_id != Some(session) {
            return Err(not_found(kind));
        }
        Ok(r)
    }

    /// One page of records.
    pub async fn list(
        &self,
        tenant: &TenantId,
        query: &RecordQuery,
    ) -> Result<RecordPage, CoreError> {
        if !(1..=RECORDS_PER_PAGE_MAX).contains(&query.limit) {
            return Err(CoreError::validation(
                "per_page",
                format!("must be from 1 to {RECORDS_PER_PAGE_MAX}"),
            ));
        }
        Ok(self.store.list_records(tenant, query).await?)
    }

    /// Applies a partial update: only the given fields change, `null` clears one. The
    /// mirror memory follows in the same transaction.
    #[instrument(skip_all, fields(tenant = %tenant, kind = %kind, id = %id))]
    pub async fn update(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        id: RecordId,
        input: Map<String, Value>,
    ) -> Result<Record, CoreError> {
        let schema = kind.schema();
        let allowed: &[&str] = match kind {
            RecordKind::Message | RecordKind::Checkpoint => &[],
            _ => ALL_SCOPE,
        };
        let parsed = schema.parse_input(input, allowed)?;
        let mut checked_parent = false;
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let cur = self.get(tenant, kind, id).await?;
            let mut next = cur.clone();
            parsed.apply_scope(&mut next.scope);
            next.body = finish_body(
                kind,
                Some(&cur.body),
                schema.patch_body(&cur.body, parsed.body.clone()),
            );
            next.parent_id = match kind {
                RecordKind::Message | RecordKind::Checkpoint => cur.parent_id,
                _ => schema.parent_of(&next.body),
            };
            next.status = schema.status_of(&next.body);
            if next.scope == cur.scope && next.body == cur.body {
                return Ok(cur);
            }
            if !checked_parent {
                self.check_parent(&next).await?;
                checked_parent = true;
            }
            bump(&mut next);
            let mirror = self.mirror_update(&cur, &next).await?;
            match self.store.replace_record(&next, cur.version, mirror).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(kind, e)),
            }
        }
        Err(conflict())
    }

    /// Deletes a record, and its mirror memory with it. A session goes with its messages
    /// and checkpoints (they go first, so a delete cut short leaves the session to delete
    /// again, never orphans).
    #[instrument(skip_all, fields(tenant = %tenant, kind = %kind, id = %id))]
    pub async fn delete(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        id: RecordId,
    ) -> Result<(), CoreError> {
        if kind == RecordKind::Session {
            self.get(tenant, kind, id).await?;
            loop {
                let mut q = RecordQuery {
                    parent_id: Some(id),
                    limit: RECORDS_PER_PAGE_MAX,
                    ..RecordQuery::default()
                };
                q.oldest_first = true;
                let page = self.store.list_records(tenant, &q).await?;
                for child in &page.items {
                    match Box::pin(self.delete(tenant, child.kind, child.id)).await {
                        Ok(()) | Err(CoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                if !page.has_more {
                    break;
                }
            }
        }
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let cur = self.get(tenant, kind, id).await?;
            let mirror = match self.load_mirror(&cur).await? {
                Some(m) => {
                    let mut next = m.clone();
                    let at = now().max(m.updated_at);
                    next.deleted_at = Some(at);
                    next.updated_at = at;
                    next.version += 1;
                    Some(MirrorWrite::Replace {
                        next,
                        expected_version: m.version,
                        op: ChangeOp::Deleted,
                    })
                }
                None => None,
            };
            match self.store.delete_record(&cur, mirror).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(kind, e)),
            }
        }
        Err(conflict())
    }

    /// Counts one more success or failure of a pattern; its confidence follows.
    pub async fn record_pattern_outcome(
        &self,
        tenant: &TenantId,
        id: RecordId,
        success: bool,
    ) -> Result<Record, CoreError> {
        let field = if success {
            "success_count"
        } else {
            "failure_count"
        };
        for attempt in 0..CAS_ATTEMPTS {
            backoff(attempt).await;
            let cur = self.get(tenant, RecordKind::Pattern, id).await?;
            let mut next = cur.clone();
            let n = next.body.get(field).and_then(Value::as_u64).unwrap_or(0);
            next.body.insert(field.into(), json!(n + 1));
            next.body = finish_body(RecordKind::Pattern, Some(&cur.body), next.body);
            bump(&mut next);
            match self.store.replace_record(&next, cur.version, None).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(store_err(RecordKind::Pattern, e)),
            }
        }
        Err(conflict())
    }

    /// Decisions whose text is nearest to `context` (hybrid search over their mirrors),
    /// best first, with their scores.
    pub async fn find_similar(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        text: &str,
        k: Option<u32>,
        scope: Scope,
    ) -> Result<Vec<(Record, f32)>, CoreError> {
        let Some(search) = &self.search else {
            return Err(CoreError::Unavailable(
                "search is not configured on this server".into(),
            ));
        };
        let filter = MemoryFilter {
            tags: vec![kind_tag(kind)],
            user_id: scope.user_id,
            agent_id: scope.agent_id,
            project: scope.project,
            domain: scope.domain,
            session_id: scope.session_id,
            metadata: vec![(RECORD_KIND_KEY.into(), json!(kind.as_str()))],
            ..MemoryFilter::default()
        };
        let req = SearchRequest::new(text, filter, k, SearchMode::Hybrid, None)
            .map_err(|e| rename_field(e, "query", "text"))?;
        let hits = search.search(tenant, &req).await?.hits;
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            let Some(id) = record_id_of(&hit.memory) else {
                continue;
            };
            // A hit whose record is gone (deleted or migrated since) is skipped.
            if let Some(r) = self.store.get_record(tenant, id).await? {
                if r.kind == kind {
                    out.push((r, hit.score));
                }
            }
        }
        Ok(out)
    }

    /// The tenant's record changes after `after_seq`.
    pub async fn changes(
        &self,
        tenant: &TenantId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<RecordChange>, CoreError> {
        Ok(self
            .store
            .record_changes(tenant, after_seq, limit.clamp(1, 1000))
            .await?)
    }

    /// Moves the tenant's records last changed before `cutoff` into the long-term tier:
    /// each becomes a memory (a mirrored record keeps its mirror, re-tagged) with
    /// provenance back to the record, and leaves the working tier in the same transaction,
    /// so running twice moves nothing twice. Agent state, patterns, and goals, tasks and
    /// sessions still in progress stay.
    #[instrument(skip_all, fields(tenant = %tenant))]
    pub async fn migrate_tiers(
        &self,
        tenant: &TenantId,
        cutoff: Timestamp,
        summariser: &dyn Summariser,
    ) -> Result<MigrationReport, CoreError> {
        let mut report = MigrationReport::default();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_records(
                    tenant,
                    &RecordQuery {
                        updated_before: Some(cutoff),
                        oldest_first: true,
                        after,
                        limit: 200,
                        ..RecordQuery::default()
                    },
                )
                .await?;
            after = page.items.last().map(|r| (r.created_at, r.id));
            for r in page.items.iter().filter(|r| migrates(r)) {
                match self.move_to_long_term(r, summariser).await {
                    Ok(kept) => {
                        report.moved += 1;
                        report.kept_mirrors += u64::from(kept);
                    }
                    // Changed or removed meanwhile: it is no longer past the age, or gone.
                    Err(StoreError::Conflict(_) | StoreError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !page.has_more {
                break;
            }
        }
        if report.moved > 0 {
            tracing::info!(
                moved = report.moved,
                "moved working records to the long-term tier"
            );
        }
        metrics::counter!("engram_tier_migrated_total").increment(report.moved);
        Ok(report)
    }

    async fn move_to_long_term(
        &self,
        r: &Record,
        summariser: &dyn Summariser,
    ) -> Result<bool, StoreError> {
        let at = now();
        if let Some(m) = self.load_mirror(r).await.map_err(|e| match e {
            CoreError::Unavailable(m) => StoreError::Unavailable(m),
            e => StoreError::Other(e.to_string()),
        })? {
            let mut next = m.clone();
            if !next.tags.iter().any(|t| t == LONG_TERM_TAG) {
                next.tags.push(LONG_TERM_TAG.into());
            }
            next.updated_at = at.max(m.updated_at);
            next.version += 1;
            let mirror = MirrorWrite::Replace {
                next,
                expected_version: m.version,
                op: ChangeOp::Updated,
            };
            self.store.delete_record(r, Some(mirror)).await?;
            return Ok(true);
        }
        let text = summariser.long_term_text(r);
        let new = memory_of(r, &text, long_term_type(r.kind), &[LONG_TERM_TAG])
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let memory = new.into_memory(r.tenant.clone(), at);
        self.store
            .delete_record(r, Some(MirrorWrite::Insert(memory)))
            .await?;
        Ok(false)
    }

    fn new_record(
        &self,
        tenant: &TenantId,
        kind: RecordKind,
        scope: Scope,
        parent_id: Option<RecordId>,
        key: Option<String>,
        body: Map<String, Value>,
    ) -> Record {
        let schema = kind.schema();
        let at = now();
        Record {
            id: RecordId::new(),
            tenant: tenant.clone(),
            kind,
            scope,
            parent_id: parent_id.or_else(|| schema.parent_of(&body)),
            status: schema.status_of(&body),
            key,
            body,
            memory_id: None,
            created_at: at,
            updated_at: at,
            version: 1,
        }
    }

    async fn insert(&self, mut record: Record) -> Result<Record, CoreError> {
        let mirror = match mirror_new(&record)? {
            Some(new) => {
                let m = new.into_memory(record.tenant.clone(), record.created_at);
                record.memory_id = Some(m.id);
                Some(MirrorWrite::Insert(m))
            }
            None => None,
        };
        self.store.insert_record(&record, mirror).await?;
        Ok(record)
    }

    /// The parent a body names must exist, be of the right kind, and not be the record.
    async fn check_parent(&self, r: &Record) -> Result<(), CoreError> {
        let schema = r.kind.schema();
        let (Some((field, parent_kind)), Some(pid)) = (schema.parent, schema.parent_of(&r.body))
        else {
            return Ok(());
        };
        if pid == r.id {
            return Err(CoreError::validation(
                field,
                "a record cannot be its own parent",
            ));
        }
        match self.store.get_record(&r.tenant, pid).await? {
            Some(p) if p.kind == parent_kind => Ok(()),
            _ => Err(CoreError::validation(
                field,
                format!("no {} with this id", parent_kind.noun()),
            )),
        }
    }

    async fn load_mirror(&self, r: &Record) -> Result<Option<Memory>, CoreError> {
        match r.memory_id {
            Some(id) => Ok(self.memories.get(&r.tenant, id).await?),
            None => Ok(None),
        }
    }

    /// The mirror write an update needs: none when the mirror text is unchanged.
    async fn mirror_update(
        &self,
        cur: &Record,
        next: &Record,
    ) -> Result<Option<MirrorWrite>, CoreError> {
        let Some(new) = mirror_new(next)? else {
            return Ok(None);
        };
        let Some(m) = self.load_mirror(cur).await? else {
            return Ok(None);
        };
        let patch = MemoryPatch {
            content: Some(new.content),
            title: Some(new.title),
            user_id: Some(new.user_id),
            agent_id: Some(new.agent_id),
            project: Some(new.project),
            domain: Some(new.domain),
            session_id: Some(new.session_id),
            valid_from: Some(new.valid_from),
            ..MemoryPatch::default()
        };
        let mut updated = m.clone();
        if !patch.apply(&mut updated, now())? {
            return Ok(None);
        }
        Ok(Some(MirrorWrite::Replace {
            next: updated,
            expected_version: m.version,
            op: ChangeOp::Updated,
        }))
    }
}

fn conflict() -> CoreError {
    CoreError::VersionConflict(
        "the record kept changing while this update was applied; retry".into(),
    )
}

fn rename_field(e: CoreError, from: &str, to: &str) -> CoreError {
    match e {
        CoreError::Validation { field, message } if field == from => {
            CoreError::validation(to, message)
        }
        e => e,
    }
}

async fn backoff(attempt: u32) {
    if attempt > 0 {
        let cap_us = 200u64 << attempt.min(6);
        let us = rand::Rng::random_range(&mut rand::rng(), cap_us / 2..=cap_us);
        tokio::time::sleep(std::time::Duration::from_micros(us)).await;
    }
}

fn bump(r: &mut Record) {
    r.updated_at = now().max(r.updated_at);
    r.version += 1;
}

/// Fields engram keeps: a pattern's confidence, and when a goal or task was completed.
fn finish_body(
    kind: RecordKind,
    before: Option<&Map<String, Value>>,
    mut body: Map<String, Value>,
) -> Map<String, Value> {
    match kind {
        RecordKind::Pattern => {
            let s = body
                .get("success_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let f = body
                .get("failure_count")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            body.insert("confidence".into(), json!(pattern_confidence(s, f)));
        }
        RecordKind::Goal | RecordKind::Task => {
            let done = matches!(
                body.get("status").and_then(Value::as_str),
                Some("achieved" | "abandoned" | "done" | "cancelled")
            );
            let was_done = before
                .and_then(|b| b.get("status"))
                .and_then(Value::as_str)
                .is_some_and(|s| matches!(s, "achieved" | "abandoned" | "done" | "cancelled"));
            if done && !was_done && !body.contains_key("completed_at") {
                body.insert(
                    "completed_at".into(),
                    json!(crate::time::format_rfc3339(now())),
                );
            }
        }
        _ => {}
    }
    body
}

/// A pattern's confidence from its outcomes: the Laplace-smoothed success rate
/// `(s + 1) / (s + f + 2)`, so a new pattern starts at 0.5 and one outcome does not make
/// it certain.
pub fn pattern_confidence(success: u64, failure: u64) -> f64 {
    let c = (success as f64 + 1.0) / (success as f64 + failure as f64 + 2.0);
    (c * 1e4).round() / 1e4
}

/// Whether the tier migration moves this record once it is old enough.
fn migrates(r: &Record) -> bool {
    let status = r.status.as_deref().unwrap_or("");
    match r.kind {
        RecordKind::AgentState | RecordKind::Pattern => false,
        RecordKind::Task => !TASK_ACTIVE.contains(&status),
        RecordKind::Goal => !matches!(status, "active" | "paused"),
        RecordKind::Session => status != "active",
        _ => true,
    }
}

fn long_term_type(kind: RecordKind) -> MemoryType {
    match kind {
        RecordKind::Goal | RecordKind::Task => MemoryType::Task,
        RecordKind::Decision => MemoryType::Decision,
        RecordKind::Pattern => MemoryType::Procedure,
        RecordKind::Event => MemoryType::Incident,
        RecordKind::Checkpoint => MemoryType::Insight,
        RecordKind::ToolCall | RecordKind::Session | RecordKind::Message => MemoryType::Episode,
        RecordKind::AgentState => MemoryType::Fact,
    }
}

/// The tag a mirror or migrated memory carries for its record's kind.
pub fn kind_tag(kind: RecordKind) -> String {
    format!("kind:{kind}")
}

/// The record a memory mirrors or was migrated from.
pub fn record_id_of(m: &Memory) -> Option<RecordId> {
    m.metadata
        .get(RECORD_ID_KEY)
        .and_then(Value::as_str)
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .map(RecordId)
}

/// The mirror memory a decision, pattern or message has; `None` for other kinds.
fn mirror_new(r: &Record) -> Result<Option<NewMemory>, CoreError> {
    let (ty, text) = match r.kind {
        RecordKind::Decision => (MemoryType::Decision, render(r)),
        // What the pattern is, not its statistics (they change with every outcome).
        RecordKind::Pattern => (
            MemoryType::Procedure,
            format!(
                "{}\naction: {}",
                headline(r),
                r.text("action").unwrap_or_default()
            ),
        ),
        RecordKind::Message => (MemoryType::Episode, render(r)),
        _ => return Ok(None),
    };
    memory_of(r, &text, ty, &[]).map(Some)
}

/// A memory holding `text` for a record, with its scope and provenance.
fn memory_of(
    r: &Record,
    text: &str,
    ty: MemoryType,
    extra_tags: &[&str],
) -> Result<NewMemory, CoreError> {
    let label = |v: &Option<String>, f: &str| v.clone().map(|s| Label::parse(s, f)).transpose();
    let mut tags = vec![kind_tag(r.kind)];
    tags.extend(extra_tags.iter().map(|t| t.to_string()));
    let mut metadata = Map::new();
    metadata.insert(RECORD_KIND_KEY.into(), json!(r.kind.as_str()));
    metadata.insert(RECORD_ID_KEY.into(), json!(r.id.to_string()));
    let title = match r.kind {
        RecordKind::Message => None,
        _ => Some(Title::parse(clip(&headline(r), 200), "title")?),
    };
    Ok(NewMemory {
        content: Content::parse(clip(text, crate::validate::CONTENT_MAX_CHARS), "content")?,
        memory_type: ty,
        source: match r.kind {
            RecordKind::Message => Source::Chat,
            _ => Source::Integration,
        },
        source_ref: Some(Label::parse_source_ref(r.source_id(), "source_ref")?),
        title,
        tags: Tags::parse(&tags, "tags")?,
        metadata: Metadata::parse(Value::Object(metadata), "metadata")?,
        // A message's speaker is its role's owner: the session's user for the user's turns.
        user_id: label(&r.scope.user_id, "user_id")?,
        agent_id: label(&r.scope.agent_id, "agent_id")?,
        project: label(&r.scope.project, "project")?,
        domain: label(&r.scope.domain, "domain")?,
        session_id: label(&r.scope.session_id, "session_id")?,
        valid_from: match r.kind {
            RecordKind::Message => time_field(&r.body, "at"),
            _ => None,
        },
        valid_to: None,
        related_ids: Vec::new(),
        conversation_id: None,
    })
}

fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// A one-line name for a record.
pub fn headline(r: &Record) -> String {
    let t = |f: &str| r.text(f).unwrap_or("").to_owned();
    match r.kind {
        RecordKind::Goal => format!("Goal: {}", t("title")),
        RecordKind::Task => format!("Task: {}", t("title")),
        RecordKind::ToolCall => format!("Tool call: {}", t("tool")),
        RecordKind::Decision => format!("Decision: {}", t("what")),
        RecordKind::Pattern => format!("Pattern: {}", t("trigger")),
        RecordKind::AgentState => format!("State: {}", r.key.clone().unwrap_or_default()),
        RecordKind::Session => format!("Session: {}", t("title")),
        RecordKind::Message => format!("{}: {}", t("role"), t("content")),
        RecordKind::Checkpoint => format!("Checkpoint: {}", t("name")),
        RecordKind::Event => format!("Event: {} ({})", t("category"), t("severity")),
    }
}

/// A record as prompt-ready text: its headline, then its other fields, one per line.
pub fn render(r: &Record) -> String {
    let mut out = headline(r);
    if r.kind == RecordKind::Message {
        return out;
    }
    let shown: &[&str] = match r.kind {
        RecordKind::Goal => &["title"],
        RecordKind::Task => &["title"],
        RecordKind::ToolCall => &["tool"],
        RecordKind::Decision => &["what"],
        RecordKind::Pattern => &["trigger"],
        RecordKind::Session => &["title"],
        RecordKind::Checkpoint => &["name"],
        RecordKind::Event => &["category", "severity", "seq"],
        _ => &[],
    };
    for (k, v) in &r.body {
        if shown.contains(&k.as_str()) {
            continue;
        }
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Array(a) if a.iter().all(Value::is_string) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; "),
            // Tool arguments and results can be large: a prompt needs their start.
            v => {
                let s = v.to_string();
                if s.chars().count() > RENDERED_JSON_MAX_CHARS {
                    format!("{}…", clip(&s, RENDERED_JSON_MAX_CHARS))
                } else {
                    s
                }
            }
        };
        if !v.is_empty() && v != "[]" && v != "{}" && v != "null" {
            out.push('\n');
            out.push_str(k);
            out.push_str(": ");
            out.push_str(&v);
        }
    }
    out
}

impl WorkingService {
    /// An agent's active tasks (open, in progress or blocked): those scoped to the agent
    /// (`agent_id`) and those assigned to it (`assigned_agent`), newest first.
    pub async fn active_tasks(
        &self,
        tenant: &TenantId,
        agent: &str,
        limit: u32,
    ) -> Result<Vec<Record>, CoreError> {
        let statuses: Vec<String> = TASK_ACTIVE.iter().map(|s| s.to_string()).collect();
        let mut q = RecordQuery::of(RecordKind::Task);
        q.statuses = statuses;
        q.limit = limit;
        q.agent_id = Some(agent.to_owned());
        let mut tasks = self.store.list_records(tenant, &q).await?.items;
        // Assigned to it, whatever their scope.
        q.agent_id = None;
        q.assigned_agent = Some(agent.to_owned());
        for t in self.store.list_records(tenant, &q).await?.items {
            if !tasks.iter().any(|x| x.id == t.id) {
                tasks.push(t);
            }
        }
        tasks.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        tasks.truncate(limit as usize);
        Ok(tasks)
    }
}

/// Critical events the operational tier evicts are kept as `event` records, one per
/// (agent, seq): keeping the same event twice stores it once.
#[async_trait::async_trait]
impl crate::ops::CriticalSink for WorkingService {
    async fn persist_critical(
        &self,
        tenant: &TenantId,
        event: &crate::ops::OpsEvent,
    ) -> Result<(), CoreError> {
        let mut body = Map::new();
        body.insert("category".into(), json!(event.category));
        body.insert("severity".into(), json!(event.severity.as_str()));
        body.insert("payload".into(), event.payload.clone());
        body.insert("at".into(), json!(crate::time::format_rfc3339(event.at)));
        body.insert("seq".into(), json!(event.seq));
        self.keep_event(tenant, &event.agent, &event.seq.to_string(), body)
            .await
            .map(|_| ())
    }
}
