//! The memory model.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::CoreError;
use crate::ids::{MemoryId, TenantId};
use crate::time::Timestamp;
use crate::validate::{Content, Label, Metadata, Tags, Title};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Parses the wire name; `field` names the field in the error.
            pub fn parse(s: &str, field: &str) -> Result<Self, CoreError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(CoreError::validation(field, format!(
                        "`{}` is not one of: {}",
                        crate::ids::truncate(s, 40),
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What kind of thing a memory records.
    MemoryType {
        Note = "note", Meeting = "meeting", Task = "task", Insight = "insight",
        Decision = "decision", Contact = "contact", File = "file", Fact = "fact",
        Episode = "episode", Procedure = "procedure", Incident = "incident", Custom = "custom",
    }
);

string_enum!(
    /// Where a memory came from.
    Source {
        Manual = "manual", Chat = "chat", File = "file", Integration = "integration",
        AiExtracted = "ai_extracted", Import = "import",
    }
);

string_enum!(
    /// Where a memory is in the embedding pipeline. The status column is the queue.
    EmbeddingStatus {
        Pending = "pending", Processing = "processing", Completed = "completed", Failed = "failed",
    }
);

/// Who and what a memory belongs to, below the tenant. All optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// A stored memory: ground state.
/// Its serde form is the compact change-log encoding (absent fields omitted, timestamps as
/// integer microseconds); the API's wire form is `engram_api::MemoryResponse`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub id: MemoryId,
    pub tenant: TenantId,
    #[serde(default)]
    pub scope: Scope,
    pub content: String,
    pub memory_type: MemoryType,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    /// Hex SHA-256 of `content`.
    pub content_hash: String,
    pub embedding_status: EmbeddingStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_microseconds_option"
    )]
    pub embedding_updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_error: Option<String>,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub created_at: Timestamp,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub updated_at: Timestamp,
    #[serde(with = "chrono::serde::ts_microseconds")]
    pub accessed_at: Timestamp,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_microseconds_option"
    )]
    pub deleted_at: Option<Timestamp>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_microseconds_option"
    )]
    pub valid_from: Option<Timestamp>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "chrono::serde::ts_microseconds_option"
    )]
    pub valid_to: Option<Timestamp>,
    /// Starts at 1 and is bumped on every change.
    pub version: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_ids: Vec<MemoryId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// Hex SHA-256 of a memory's content.
pub fn content_hash(content: &str) -> String {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(content.as_bytes()), &mut hex)
        .expect("a SHA-256 digest is 32 bytes, 64 hex digits");
    // Hex digits are ASCII: one pass over a stack buffer instead of a char at a time.
    String::from_utf8_lossy(&hex).into_owned()
}

/// A validated request to remember something.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NewMemory {
    pub content: Content,
    pub memory_type: MemoryType,
    pub source: Source,
    pub source_ref: Option<Label>,
    pub title: Option<Title>,
    pub tags: Tags,
    pub metadata: Metadata,
    pub user_id: Option<Label>,
    pub agent_id: Option<Label>,
    pub project: Option<Label>,
    pub domain: Option<Label>,
    pub session_id: Option<Label>,
    pub valid_from: Option<Timestamp>,
    pub valid_to: Option<Timestamp>,
    pub related_ids: Vec<MemoryId>,
    pub conversation_id: Option<Label>,
}

impl NewMemory {
    /// A note with the given content and defaults for everything else.
    pub fn note(content: &str) -> Result<Self, CoreError> {
        Ok(NewMemory {
            content: Content::parse(content.to_owned(), "content")?,
            memory_type: MemoryType::Note,
            source: Source::Manual,
            source_ref: None,
            title: None,
            tags: Tags::default(),
            metadata: Metadata::default(),
            user_id: None,
            agent_id: None,
            project: None,
            domain: None,
            session_id: None,
            valid_from: None,
            valid_to: None,
            related_ids: Vec::new(),
            conversation_id: None,
        })
    }

    /// Cross-field rules.
    pub fn check(&self) -> Result<(), CoreError> {
        check_validity(self.valid_from, self.valid_to)
    }

    /// A fingerprint of the request, to tell a retry from a different request that reuses
    /// an idempotency key.
    pub fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(&bytes))
    }

    /// The memory this request creates, at `now`, for `tenant`.
    pub fn into_memory(self, tenant: TenantId, now: Timestamp) -> Memory {
        let content = self.content.into_inner();
        Memory {
            id: MemoryId::new(),
            tenant,
            scope: Scope {
                user_id: self.user_id.map(Label::into_inner),
                agent_id: self.agent_id.map(Label::into_inner),
                project: self.project.map(Label::into_inner),
                domain: self.domain.map(Label::into_inner),
                session_id: self.session_id.map(Label::into_inner),
            },
            content_hash: content_hash(&content),
            content,
            memory_type: self.memory_type,
            source: self.source,
            source_ref: self.source_ref.map(Label::into_inner),
            title: self.title.map(Title::into_inner),
            tags: self.tags.into_strings(),
            metadata: self.metadata.into_inner(),
            embedding_status: EmbeddingStatus::Pending,
            embedding_model: None,
            embedding_updated_at: None,
            embedding_error: None,
            created_at: now,
            updated_at: now,
            accessed_at: now,
            deleted_at: None,
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            version: 1,
            related_ids: self.related_ids,
            conversation_id: self.conversation_id.map(Label::into_inner),
        }
    }
}

fn check_validity(from: Option<Timestamp>, to: Option<Timestamp>) -> Result<(), CoreError> {
    match (from, to) {
        (Some(f), Some(t)) if t < f => Err(CoreError::validation(
            "valid_to",
            "must not be before valid_from",
        )),
        _ => Ok(()),
    }
}

/// A validated partial update. `None` leaves a field alone; for nullable fields
/// `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryPatch {
    pub content: Option<Content>,
    pub memory_type: Option<MemoryType>,
    pub source: Option<Source>,
    pub source_ref: Option<Option<Label>>,
    pub title: Option<Option<Title>>,
    pub tags: Option<Tags>,
    pub metadata: Option<Metadata>,
    pub user_id: Option<Option<Label>>,
    pub agent_id: Option<Option<Label>>,
    pub project: Option<Option<Label>>,
    pub domain: Option<Option<Label>>,
    pub session_id: Option<Option<Label>>,
    pub valid_from: Option<Option<Timestamp>>,
    pub valid_to: Option<Option<Timestamp>>,
    pub related_ids: Option<Vec<MemoryId>>,
    pub conversation_id: Option<Option<Label>>,
}

fn set<T: PartialEq>(slot: &mut T, value: Option<T>, changed: &mut bool) {
    if let Some(v) = value {
        if *slot != v {
            *slot = v;
            *changed = true;
        }
    }
}

fn labels(v: Option<Option<Label>>) -> Option<Option<String>> {
    v.map(|o| o.map(Label::into_inner))
}

impl MemoryPatch {
    /// Applies the patch to `m` at `now`. Returns `Ok(false)` and leaves `m` untouched
    /// when nothing would change. A changed content resets the embedding to pending.
    pub fn apply(self, m: &mut Memory, now: Timestamp) -> Result<bool, CoreError> {
        let mut next = m.clone();
        let mut changed = false;
        let mut content_changed = false;
        if let Some(c) = self.content {
            let c = c.into_inner();
            if c != next.content {
                next.content_hash = content_hash(&c);
                next.content = c;
                content_changed = true;
                changed = true;
            }
        }
        set(&mut next.memory_type, self.memory_type, &mut changed);
        set(&mut next.source, self.source, &mut changed);
        set(&mut next.source_ref, labels(self.source_ref), &mut changed);
        set(
            &mut next.title,
            self.title.map(|o| o.map(Title::into_inner)),
            &mut changed,
        );
        set(
            &mut next.tags,
            self.tags.map(Tags::into_strings),
            &mut changed,
        );
        set(
            &mut next.metadata,
            self.metadata.map(Metadata::into_inner),
            &mut changed,
        );
        set(&mut next.scope.user_id, labels(self.user_id), &mut changed);
        set(
            &mut next.scope.agent_id,
            labels(self.agent_id),
            &mut changed,
        );
        set(&mut next.scope.project, labels(self.project), &mut changed);
        set(&mut next.scope.domain, labels(self.domain), &mut changed);
        set(
            &mut next.scope.session_id,
            labels(self.session_id),
            &mut changed,
        );
        set(&mut next.valid_from, self.valid_from, &mut changed);
        set(&mut next.valid_to, self.valid_to, &mut changed);
        set(&mut next.related_ids, self.related_ids, &mut changed);
        set(
            &mut next.conversation_id,
            labels(self.conversation_id),
            &mut changed,
        );
        check_validity(next.valid_from, next.valid_to)?;
        if !changed {
            return Ok(false);
        }
        if content_changed {
            next.embedding_status = EmbeddingStatus::Pending;
            next.embedding_error = None;
        }
        next.version += 1;
        next.updated_at = now.max(next.updated_at);
        *m = next;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            content_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn memory() -> Memory {
        NewMemory::note("hello")
            .unwrap()
            .into_memory(TenantId::parse("t").unwrap(), crate::time::now())
    }

    #[test]
    fn new_memory_is_pending_version_one_with_hash() {
        let m = memory();
        assert_eq!(m.embedding_status, EmbeddingStatus::Pending);
        assert_eq!(m.version, 1);
        assert_eq!(m.content_hash, content_hash("hello"));
        assert_eq!(m.content_hash.len(), 64);
    }

    #[test]
    fn content_patch_resets_embedding_and_bumps_version() {
        let mut m = memory();
        m.embedding_status = EmbeddingStatus::Completed;
        let patch = MemoryPatch {
            content: Some(Content::parse("bye".into(), "content").unwrap()),
            ..Default::default()
        };
        assert!(patch.apply(&mut m, crate::time::now()).unwrap());
        assert_eq!(m.embedding_status, EmbeddingStatus::Pending);
        assert_eq!(m.version, 2);
        assert_eq!(m.content_hash, content_hash("bye"));
    }

    #[test]
    fn other_patch_keeps_embedding_status() {
        let mut m = memory();
        m.embedding_status = EmbeddingStatus::Completed;
        let patch = MemoryPatch {
            title: Some(Some(Title::parse("t".into(), "title").unwrap())),
            ..Default::default()
        };
        assert!(patch.apply(&mut m, crate::time::now()).unwrap());
        assert_eq!(m.embedding_status, EmbeddingStatus::Completed);
        assert_eq!(m.version, 2);
    }

    #[test]
    fn noop_patch_changes_nothing() {
        let mut m = memory();
        let before = m.clone();
        let patch = MemoryPatch {
            content: Some(Content::parse("hello".into(), "content").unwrap()),
            title: Some(None),
            ..Default::default()
        };
        assert!(!patch.apply(&mut m, crate::time::now()).unwrap());
        assert_eq!(m, before);
    }

    #[test]
    fn validity_window_is_checked_after_patch() {
        let mut m = memory();
        let now = crate::time::now();
        let patch = MemoryPatch {
            valid_from: Some(Some(now)),
            valid_to: Some(Some(now - chrono::Duration::seconds(1))),
            ..Default::default()
        };
        assert_eq!(
            patch.apply(&mut m, now).unwrap_err().field(),
            Some("valid_to")
        );
    }

    #[test]
    fn enums_round_trip_and_name_the_field() {
        for t in MemoryType::ALL {
            assert_eq!(MemoryType::parse(t.as_str(), "memory_type").unwrap(), *t);
        }
        let e = Source::parse("nope", "source").unwrap_err();
        assert_eq!(e.field(), Some("source"));
        assert!(e.to_string().contains("ai_extracted"));
    }
}
