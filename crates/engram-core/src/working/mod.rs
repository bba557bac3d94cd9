//! The working tier: what an agent is doing. Goals, tasks, tool calls, decisions,
//! patterns, agent state, conversation sessions with their messages and checkpoints, and
//! critical events kept from the operational tier.
//!
//! Every kind is one [`Record`]: an envelope the stores index (tenant, kind, scope,
//! parent, status, key, timestamps, version) and a body of the kind's own fields, checked
//! against the kind's schema ([`schema`]) on every create and update, so a store never
//! sees an invalid body and the wire, the store and the change log share one form.
//! Decisions, patterns and messages also have a *mirror memory* (kind-tagged), written in
//! the same transaction as the record, so one search spans the tiers.

pub mod schema;
pub mod service;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::CoreError;
use crate::ids::{MemoryId, TenantId};
use crate::memory::Scope;
use crate::time::Timestamp;

/// A working-tier record's id: a UUIDv7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordId(pub Uuid);

impl RecordId {
    pub fn new() -> Self {
        RecordId(Uuid::now_v7())
    }

    /// Parses a client-supplied id; `field` names it in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, CoreError> {
        MemoryId::parse(s, field).map(|m| RecordId(m.0))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(RecordId)
    }
}

impl Default for RecordId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! kinds {
    ($($variant:ident = $s:literal, $noun:literal;)+) => {
        /// What a record is.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum RecordKind { $($variant),+ }

        impl RecordKind {
            pub const ALL: &'static [RecordKind] = &[$(RecordKind::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $(RecordKind::$variant => $s),+ }
            }

            /// The human name used in messages ("task not found").
            pub const fn noun(self) -> &'static str {
                match self { $(RecordKind::$variant => $noun),+ }
            }

            pub fn parse(s: &str, field: &str) -> Result<Self, CoreError> {
                match s {
                    $($s => Ok(RecordKind::$variant),)+
                    _ => Err(CoreError::validation(field, format!(
                        "`{}` is not one of: {}",
                        crate::ids::truncate(s, 40),
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

kinds! {
    Goal = "goal", "goal";
    Task = "task", "task";
    ToolCall = "tool_call", "tool call";
    Decision = "decision", "decision";
    Pattern = "pattern", "pattern";
    AgentState = "agent_state", "agent state entry";
    Session = "session", "session";
    Message = "message", "message";
    Checkpoint = "checkpoint", "checkpoint";
    Event = "event", "event";
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One working-tier record: ground state.
///
/// `parent_id`, `status` and `key` are copies of body fields that the stores index (see
/// [`schema::Schema`] for which field each is, per kind); the body stays the whole truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: RecordId,
    pub tenant: TenantId,
    pub kind: RecordKind,
    #[serde(default)]
    pub scope: Scope,
    /// The record this one belongs to: a goal's parent goal, a task's goal, a tool call's
    /// task, a message's or checkpoint's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<RecordId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Unique per (tenant, kind, agent): an agent state key, a kept event's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub body: Map<String, Value>,
    /// The mirror memory of a decision, pattern or message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_id: Option<MemoryId>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub created_at: Timestamp,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub updated_at: Timestamp,
    /// Starts at 1 and is bumped on every change.
    pub version: i64,
}

impl Record {
    /// The id a context or a citation names it by: `<kind>:<id>`.
    pub fn source_id(&self) -> String {
        format!("{}:{}", self.kind, self.id)
    }

    /// A body field as a string, if it is one.
    pub fn text(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }
}

/// Which records a listing returns. Every condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordQuery {
    /// Of this kind (any, for `None`: the tier migration walks every kind).
    pub kind: Option<RecordKind>,
    pub user_id: Option<String>,
    pub agent_id: Option<String>,
    pub project: Option<String>,
    pub domain: Option<String>,
    pub session_id: Option<String>,
    pub parent_id: Option<RecordId>,
    /// The status is one of these (any, when empty).
    pub statuses: Vec<String>,
    pub key: Option<String>,
    /// The body's `assigned_agent` (a task's) is this.
    pub assigned_agent: Option<String>,
    /// Last changed strictly before this instant.
    pub updated_before: Option<Timestamp>,
    /// Oldest first (messages, the migration) or newest first (the default).
    pub oldest_first: bool,
    /// Keyset position: records strictly after this (created_at, id) in the listing's order.
    pub after: Option<(Timestamp, RecordId)>,
    pub limit: u32,
}

impl RecordQuery {
    pub fn of(kind: RecordKind) -> Self {
        RecordQuery {
            kind: Some(kind),
            limit: 20,
            ..Default::default()
        }
    }

    /// Whether `r` passes the query's conditions (not its position or limit). Stores use
    /// SQL; this is the reference the conformance suite checks them against.
    pub fn matches(&self, r: &Record) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.is_none() || want == have
        }
        self.kind.is_none_or(|k| k == r.kind)
            && eq(&self.user_id, &r.scope.user_id)
            && eq(&self.agent_id, &r.scope.agent_id)
            && eq(&self.project, &r.scope.project)
            && eq(&self.domain, &r.scope.domain)
            && eq(&self.session_id, &r.scope.session_id)
            && self.parent_id.is_none_or(|p| Some(p) == r.parent_id)
            && (self.statuses.is_empty()
                || r.status.as_ref().is_some_and(|s| self.statuses.contains(s)))
            && eq(&self.key, &r.key)
            && (self.assigned_agent.is_none()
                || self.assigned_agent.as_deref() == r.text("assigned_agent"))
            && self.updated_before.is_none_or(|t| r.updated_at < t)
    }
}

/// A page of records, and whether more follow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordPage {
    pub items: Vec<Record>,
    pub has_more: bool,
}

/// One entry of the change log about a record (records share the log, and its `seq`
/// order, with memories). `record` is the state after the change; for a delete, the last
/// state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordChange {
    pub seq: i64,
    pub op: crate::change::ChangeOp,
    pub at: Timestamp,
    pub record: Record,
}
