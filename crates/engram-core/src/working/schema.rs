//! The fields of each record kind, and the one parser every create and update goes through.
//!
//! A request body is a JSON object: the scope fields (`user_id`, `agent_id`, `project`,
//! `domain`, `session_id`) go to the record's envelope, every other field must be one of
//! the kind's fields, of its type, within its bounds. Unknown fields are rejected, `null`
//! clears an optional field, defaults fill what is absent, and computed fields (a
//! pattern's `confidence`) are the engram's to set. Errors name the field.

use serde_json::{Map, Value};

use super::{RecordId, RecordKind};
use crate::error::CoreError;
use crate::memory::Scope;
use crate::time::{format_rfc3339, parse_rfc3339, Timestamp};
use crate::validate::SCOPE_MAX_CHARS;

/// The type of a body field.
#[derive(Clone, Copy, Debug)]
pub enum FieldType {
    /// A string of 1..=max characters, without NUL.
    Text(usize),
    /// One of these strings.
    Enum(&'static [&'static str]),
    /// Any JSON value whose encoding is at most this many bytes.
    Json(usize),
    /// An integer ≥ 0.
    Count,
    /// An RFC 3339 instant; stored normalised (UTC, microseconds).
    Time,
    /// A record id (UUID).
    Id,
    /// A list of at most `.0` strings of 1..=`.1` characters.
    TextList(usize, usize),
}

/// One field of a kind.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    /// The value an absent field takes on create: a JSON literal, or else a string.
    pub default: Option<&'static str>,
}

const fn f(name: &'static str, ty: FieldType) -> Field {
    Field {
        name,
        ty,
        required: false,
        default: None,
    }
}

const fn req(name: &'static str, ty: FieldType) -> Field {
    Field {
        name,
        ty,
        required: true,
        default: None,
    }
}

const fn def(name: &'static str, ty: FieldType, default: &'static str) -> Field {
    Field {
        name,
        ty,
        required: false,
        default: Some(default),
    }
}

/// A kind's fields, and which of them the envelope indexes.
#[derive(Clone, Copy, Debug)]
pub struct Schema {
    pub kind: RecordKind,
    pub fields: &'static [Field],
    /// The field holding the parent record's id, and the parent's kind.
    pub parent: Option<(&'static str, RecordKind)>,
    /// The field holding the status.
    pub status: Option<&'static str>,
    /// Fields engram computes; a client may not set them.
    pub computed: &'static [&'static str],
}

const TITLE: usize = 500;
const TEXT: usize = 10_000;
const LONG_TEXT: usize = 50_000;
const NAME: usize = 200;
pub const PRIORITIES: &[&str] = &["low", "medium", "high", "urgent"];
pub const GOAL_STATUSES: &[&str] = &["active", "paused", "achieved", "abandoned"];
pub const TASK_STATUSES: &[&str] = &["open", "in_progress", "blocked", "done", "cancelled"];
/// Task statuses that count as active (the operational snapshot shows these).
pub const TASK_ACTIVE: &[&str] = &["open", "in_progress", "blocked"];
pub const TOOL_CALL_STATUSES: &[&str] = &["pending", "running", "succeeded", "failed"];
pub const SESSION_STATUSES: &[&str] = &["active", "ended"];
pub const ROLES: &[&str] = &["user", "assistant", "system", "tool"];
pub const SEVERITIES: &[&str] = &["debug", "info", "warning", "error", "critical"];

use FieldType::*;

static GOAL: Schema = Schema {
    kind: RecordKind::Goal,
    fields: &[
        req("title", Text(TITLE)),
        f("description", Text(LONG_TEXT)),
        def("status", Enum(GOAL_STATUSES), "active"),
        def("priority", Enum(PRIORITIES), "medium"),
        f("parent_id", Id),
        f("due_at", Time),
        f("completed_at", Time),
    ],
    parent: Some(("parent_id", RecordKind::Goal)),
    status: Some("status"),
    computed: &[],
};

static TASK: Schema = Schema {
    kind: RecordKind::Task,
    fields: &[
        req("title", Text(TITLE)),
        def("status", Enum(TASK_STATUSES), "open"),
        def("priority", Enum(PRIORITIES), "medium"),
        f("assigned_agent", Text(SCOPE_MAX_CHARS)),
        f("due_at", Time),
        f("context", Text(LONG_TEXT)),
        f("result", Text(LONG_TEXT)),
        f("goal_id", Id),
        f("completed_at", Time),
    ],
    parent: Some(("goal_id", RecordKind::Goal)),
    status: Some("status"),
    computed: &[],
};

static TOOL_CALL: Schema = Schema {
    kind: RecordKind::ToolCall,
    fields: &[
        req("tool", Text(NAME)),
        def("arguments", Json(64 * 1024), "{}"),
        f("result", Json(256 * 1024)),
        def("status", Enum(TOOL_CALL_STATUSES), "succeeded"),
        f("duration_ms", Count),
        f("error", Text(TEXT)),
        f("task_id", Id),
        f("at", Time),
    ],
    parent: Some(("task_id", RecordKind::Task)),
    status: Some("status"),
    computed: &[],
};

static DECISION: Schema = Schema {
    kind: RecordKind::Decision,
    fields: &[
        f("who", Text(NAME)),
        req("what", Text(TEXT)),
        f("why", Text(TEXT)),
        def("alternatives", TextList(50, 1000), "[]"),
        f("outcome", Text(TEXT)),
        f("context", Text(TEXT)),
    ],
    parent: None,
    status: None,
    computed: &[],
};

static PATTERN: Schema = Schema {
    kind: RecordKind::Pattern,
    fields: &[
        req("trigger", Text(TEXT)),
        req("action", Text(TEXT)),
        def("success_count", Count, "0"),
        def("failure_count", Count, "0"),
        f("confidence", Json(64)),
    ],
    parent: None,
    status: None,
    computed: &["confidence"],
};

static AGENT_STATE: Schema = Schema {
    kind: RecordKind::AgentState,
    fields: &[req("value", Json(64 * 1024))],
    parent: None,
    status: None,
    computed: &[],
};

static SESSION: Schema = Schema {
    kind: RecordKind::Session,
    fields: &[
        f("title", Text(TITLE)),
        def("status", Enum(SESSION_STATUSES), "active"),
        f("summary", Text(LONG_TEXT)),
        f("ended_at", Time),
    ],
    parent: None,
    status: Some("status"),
    computed: &[],
};

static MESSAGE: Schema = Schema {
    kind: RecordKind::Message,
    fields: &[
        req("role", Enum(ROLES)),
        req("content", Text(LONG_TEXT)),
        f("name", Text(NAME)),
        f("at", Time),
    ],
    parent: None,
    status: None,
    computed: &[],
};

static CHECKPOINT: Schema = Schema {
    kind: RecordKind::Checkpoint,
    fields: &[
        req("name", Text(NAME)),
        req("summary", Text(LONG_TEXT)),
        f("at", Time),
    ],
    parent: None,
    status: None,
    computed: &[],
};

static EVENT: Schema = Schema {
    kind: RecordKind::Event,
    fields: &[
        req("category", Text(64)),
        req("severity", Enum(SEVERITIES)),
        def("payload", Json(64 * 1024), "null"),
        req("at", Time),
        req("seq", Count),
    ],
    parent: None,
    status: Some("severity"),
    computed: &[],
};

impl RecordKind {
    pub fn schema(self) -> &'static Schema {
        match self {
            RecordKind::Goal => &GOAL,
            RecordKind::Task => &TASK,
            RecordKind::ToolCall => &TOOL_CALL,
            RecordKind::Decision => &DECISION,
            RecordKind::Pattern => &PATTERN,
            RecordKind::AgentState => &AGENT_STATE,
            RecordKind::Session => &SESSION,
            RecordKind::Message => &MESSAGE,
            RecordKind::Checkpoint => &CHECKPOINT,
            RecordKind::Event => &EVENT,
        }
    }
}

const SCOPE_FIELDS: [&str; 5] = ["user_id", "agent_id", "project", "domain", "session_id"];

/// A parsed create or update: scope changes (`Some(None)` clears one) and the body fields
/// given (`Value::Null` clears one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordInput {
    pub scope: [Option<Option<String>>; 5],
    pub body: Map<String, Value>,
}

impl RecordInput {
    /// Applies the scope changes to `scope`.
    pub fn apply_scope(&self, scope: &mut Scope) {
        let slots = [
            &mut scope.user_id,
            &mut scope.agent_id,
            &mut scope.project,
            &mut scope.domain,
            &mut scope.session_id,
        ];
        for (slot, change) in slots.into_iter().zip(&self.scope) {
            if let Some(v) = change {
                *slot = v.clone();
            }
        }
    }
}

impl Schema {
    /// Splits and checks a request object. Scope fields are labels; body fields must be
    /// the kind's and of its types. `allowed_scope` limits which scope fields the caller may
    /// set (a message takes its scope from its session).
    pub fn parse_input(
        &self,
        input: Map<String, Value>,
        allowed_scope: &[&str],
    ) -> Result<RecordInput, CoreError> {
        let mut out = RecordInput::default();
        for (name, value) in input {
            if let Some(i) = SCOPE_FIELDS.iter().position(|s| *s == name) {
                if !allowed_scope.contains(&name.as_str()) {
                    return Err(CoreError::validation(
                        &name,
                        format!(
                            "a {} takes `{name}` from where it belongs",
                            self.kind.noun()
                        ),
                    ));
                }
                out.scope[i] = Some(match value {
                    Value::Null => None,
                    Value::String(s) => {
                        crate::validate::Label::parse(s.clone(), &name)?;
                        Some(s)
                    }
                    _ => return Err(CoreError::validation(&name, "must be a string")),
                });
                continue;
            }
            let Some(field) = self.fields.iter().find(|f| f.name == name) else {
                return Err(CoreError::validation(
                    &name,
                    format!(
                        "unknown field for a {}; its fields are: {}",
                        self.kind.noun(),
                        self.field_names(allowed_scope)
                    ),
                ));
            };
            if self.computed.contains(&field.name) {
                return Err(CoreError::validation(
                    &name,
                    "is computed by engram and cannot be set",
                ));
            }
            let value = match value {
                Value::Null if field.required => {
                    return Err(CoreError::validation(&name, "is required"))
                }
                Value::Null => Value::Null,
                v => check_value(field, v)?,
            };
            out.body.insert(name, value);
        }
        Ok(out)
    }

    fn field_names(&self, allowed_scope: &[&str]) -> String {
        self.fields
            .iter()
            .filter(|f| !self.computed.contains(&f.name))
            .map(|f| f.name)
            .chain(allowed_scope.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The body a create makes of `given`: defaults filled, required fields checked.
    pub fn create_body(&self, given: Map<String, Value>) -> Result<Map<String, Value>, CoreError> {
        let mut body = Map::new();
        let mut given = given;
        for field in self.fields {
            match given.remove(field.name) {
                Some(Value::Null) | None => {
                    if field.required {
                        return Err(CoreError::validation(field.name, "is required"));
                    }
                    if let Some(d) = field.default {
                        // A JSON literal (`0`, `[]`, `{}`, `null`), or else a string.
                        let v =
                            serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.to_owned()));
                        body.insert(field.name.to_owned(), v);
                    }
                }
                Some(v) => {
                    body.insert(field.name.to_owned(), v);
                }
            }
        }
        Ok(body)
    }

    /// `current` with `changes` applied (`null` removes an optional field).
    pub fn patch_body(
        &self,
        current: &Map<String, Value>,
        changes: Map<String, Value>,
    ) -> Map<String, Value> {
        let mut body = current.clone();
        for (k, v) in changes {
            if v.is_null() {
                body.remove(&k);
            } else {
                body.insert(k, v);
            }
        }
        body
    }

    /// The parent record id the body names, if any.
    pub fn parent_of(&self, body: &Map<String, Value>) -> Option<RecordId> {
        let (field, _) = self.parent?;
        body.get(field)
            .and_then(Value::as_str)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
            .map(RecordId)
    }

    /// The status the body holds, if the kind has one.
    pub fn status_of(&self, body: &Map<String, Value>) -> Option<String> {
        body.get(self.status?)
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// Checks one value against its field's type; returns it normalised.
fn check_value(field: &Field, v: Value) -> Result<Value, CoreError> {
    let name = field.name;
    let text = |v: &Value, max: usize, field: &str| -> Result<String, CoreError> {
        let Some(s) = v.as_str() else {
            return Err(CoreError::validation(field, "must be a string"));
        };
        if s.trim().is_empty() {
            return Err(CoreError::validation(field, "must not be empty"));
        }
        if s.contains('\0') {
            return Err(CoreError::validation(
                field,
                "must not contain NUL characters",
            ));
        }
        let n = s.chars().count();
        if n > max {
            return Err(CoreError::validation(
                field,
                format!("is {n} characters long; the maximum is {max}"),
            ));
        }
        Ok(s.to_owned())
    };
    Ok(match field.ty {
        Text(max) => Value::String(text(&v, max, name)?),
        Enum(options) => match v.as_str() {
            Some(s) if options.contains(&s) => v,
            _ => {
                return Err(CoreError::validation(
                    name,
                    format!("must be one of: {}", options.join(", ")),
                ))
            }
        },
        Json(max) => {
            let n = serde_json::to_vec(&v)
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            if n > max {
                return Err(CoreError::validation(
                    name,
                    format!("is {n} bytes as JSON; the maximum is {max}"),
                ));
            }
            if json_has_nul(&v) {
                return Err(CoreError::validation(
                    name,
                    "must not contain NUL characters",
                ));
            }
            if json_depth(&v) > 16 {
                return Err(CoreError::validation(name, "is nested more than 16 deep"));
            }
            v
        }
        Count => match v.as_u64() {
            Some(n) if n <= i64::MAX as u64 => v,
            _ => return Err(CoreError::validation(name, "must be an integer ≥ 0")),
        },
        Time => {
            let t = v.as_str().and_then(parse_rfc3339).ok_or_else(|| {
                CoreError::validation(name, "must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z")
            })?;
            Value::String(format_rfc3339(t))
        }
        Id => {
            let id = RecordId::parse(v.as_str().unwrap_or(""), name)?;
            Value::String(id.to_string())
        }
        TextList(max_items, max_len) => {
            let Some(items) = v.as_array() else {
                return Err(CoreError::validation(name, "must be a list of strings"));
            };
            if items.len() > max_items {
                return Err(CoreError::validation(
                    name,
                    format!("has {} items; the maximum is {max_items}", items.len()),
                ));
            }
            let items = items
                .iter()
                .enumerate()
                .map(|(i, s)| text(s, max_len, &format!("{name}[{i}]")).map(Value::String))
                .collect::<Result<Vec<_>, _>>()?;
            Value::Array(items)
        }
    })
}

fn json_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(json_has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_has_nul(v)),
        _ => false,
    }
}

fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A body time field, if set and valid.
pub fn time_field(body: &Map<String, Value>, field: &str) -> Option<Timestamp> {
    body.get(field)
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_task_gets_defaults_and_its_scope_is_split_off() {
        let s = RecordKind::Task.schema();
        let input = s
            .parse_input(
                obj(json!({"title": "ship", "project": "engram"})),
                &SCOPE_FIELDS,
            )
            .unwrap();
        assert_eq!(input.scope[2], Some(Some("engram".into())));
        let body = s.create_body(input.body).unwrap();
        assert_eq!(body["status"], "open");
        assert_eq!(body["priority"], "medium");
        assert_eq!(s.status_of(&body).as_deref(), Some("open"));
    }

    #[test]
    fn errors_name_the_field() {
        let s = RecordKind::Task.schema();
        let cases = [
            (json!({"title": ""}), "title"),
            (json!({"title": "x", "status": "doing"}), "status"),
            (json!({"title": "x", "nope": 1}), "nope"),
            (json!({"title": "x", "due_at": "tomorrow"}), "due_at"),
            (json!({"title": "x", "goal_id": "12"}), "goal_id"),
            (json!({"title": "x", "user_id": 3}), "user_id"),
            (json!({"title": null}), "title"),
        ];
        for (input, field) in cases {
            let err = s
                .parse_input(obj(input.clone()), &SCOPE_FIELDS)
                .unwrap_err();
            assert_eq!(err.field(), Some(field), "{input}");
        }
        let err = s.create_body(Map::new()).unwrap_err();
        assert_eq!(err.field(), Some("title"));
        let err = RecordKind::Decision
            .schema()
            .parse_input(obj(json!({"what": "x", "alternatives": ["a", ""]})), &[])
            .unwrap_err();
        assert_eq!(err.field(), Some("alternatives[1]"));
        let err = RecordKind::Pattern
            .schema()
            .parse_input(obj(json!({"confidence": 1})), &[])
            .unwrap_err();
        assert_eq!(err.field(), Some("confidence"));
        let err = RecordKind::Message
            .schema()
            .parse_input(
                obj(json!({"role": "user", "content": "x", "user_id": "u"})),
                &[],
            )
            .unwrap_err();
        assert_eq!(err.field(), Some("user_id"));
    }

    #[test]
    fn patch_null_clears_and_times_are_normalised() {
        let s = RecordKind::Task.schema();
        let input = s
            .parse_input(
                obj(json!({"title": "t", "due_at": "2026-01-31T13:00:00+01:00"})),
                &[],
            )
            .unwrap();
        let body = s.create_body(input.body).unwrap();
        assert_eq!(body["due_at"], "2026-01-31T12:00:00.000000Z");
        let change = s.parse_input(obj(json!({"due_at": null})), &[]).unwrap();
        let next = s.patch_body(&body, change.body);
        assert!(!next.contains_key("due_at"));
        assert_eq!(next["title"], "t");
    }
}
