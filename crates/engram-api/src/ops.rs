//! The operational tier on the wire: events, metrics and an agent's snapshot.

use engram_core::ops::{MetricValue, NewEvent, OpsEvent, Severity};
use engram_core::time::{format_rfc3339, parse_rfc3339};
use engram_core::CoreError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::records::RecordResponse;

/// `POST /api/v1/agents/{agent}/events`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// What kind of event (1..64 characters), e.g. `tool_error`.
    pub category: String,
    /// `debug`, `info` (default), `warning`, `error` or `critical`. A critical event is
    /// never lost: when the ring evicts it, it is kept in the working tier first.
    pub severity: Option<String>,
    /// Any JSON (≤ `ops.max_payload_bytes`, default 16 KiB).
    #[schema(value_type = Object)]
    pub payload: Option<Value>,
    /// When it happened (RFC 3339); now when absent.
    pub at: Option<String>,
}

impl EventRequest {
    pub fn into_domain(self) -> Result<NewEvent, CoreError> {
        let severity = match self.severity.as_deref() {
            None => Severity::Info,
            Some(s) => Severity::parse(s)?,
        };
        let at = self
            .at
            .map(|s| {
                parse_rfc3339(&s).ok_or_else(|| {
                    CoreError::validation(
                        "at",
                        "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z",
                    )
                })
            })
            .transpose()?;
        Ok(NewEvent {
            category: self.category,
            severity,
            payload: self.payload.unwrap_or(Value::Null),
            at,
        })
    }
}

/// An event of an agent's ring.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct EventResponse {
    /// Increasing per agent.
    pub seq: u64,
    pub agent: String,
    pub category: String,
    pub severity: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub at: String,
}

impl From<OpsEvent> for EventResponse {
    fn from(e: OpsEvent) -> Self {
        EventResponse {
            seq: e.seq,
            agent: e.agent,
            category: e.category,
            severity: e.severity.as_str().to_owned(),
            payload: e.payload,
            at: format_rfc3339(e.at),
        }
    }
}

/// `GET /api/v1/agents/{agent}/events`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsParams {
    /// How many, newest first, 1..1000 (default 50).
    #[param(value_type = Option<u32>)]
    pub count: Option<String>,
    /// Only this category.
    pub category: Option<String>,
}

impl EventsParams {
    pub fn count(&self) -> Result<usize, CoreError> {
        match self.count.as_deref() {
            None => Ok(50),
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| CoreError::validation("count", "must be an integer from 1 to 1000")),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct EventsResponse {
    pub events: Vec<EventResponse>,
}

/// `PUT /api/v1/agents/{agent}/metrics/{key}`.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricRequest {
    /// A number, string or boolean.
    #[schema(value_type = Object)]
    pub value: Value,
}

#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct MetricResponse {
    #[schema(value_type = Object)]
    pub value: Value,
    /// When it was set.
    pub at: String,
}

impl From<MetricValue> for MetricResponse {
    fn from(m: MetricValue) -> Self {
        MetricResponse {
            value: m.value,
            at: format_rfc3339(m.at),
        }
    }
}

/// `GET /api/v1/agents/{agent}/snapshot`: what the agent is doing now.
#[derive(Clone, Debug, Deserialize, Serialize, ToSchema)]
pub struct SnapshotResponse {
    pub agent: String,
    /// The latest value of each metric key.
    pub metrics: std::collections::BTreeMap<String, MetricResponse>,
    /// Open, in-progress and blocked tasks of the agent, newest first.
    pub active_tasks: Vec<RecordResponse>,
    /// The newest critical events, newest first.
    pub recent_critical: Vec<EventResponse>,
}
