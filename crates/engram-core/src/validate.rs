//! Newtypes that parse untrusted input at the edge. A value of one of these types is valid
//! by construction, so the core and the stores never re-check it. Every error names the
//! field it is about.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::CoreError;
use crate::ids::MemoryId;

pub const CONTENT_MAX_CHARS: usize = 50_000;
pub const TITLE_MAX_CHARS: usize = 500;
pub const TAGS_MAX: usize = 50;
pub const TAG_MAX_CHARS: usize = 64;
pub const METADATA_MAX_BYTES: usize = 16 * 1024;
pub const METADATA_MAX_DEPTH: usize = 8;
pub const SCOPE_MAX_CHARS: usize = 256;
pub const SOURCE_REF_MAX_CHARS: usize = 1024;
pub const RELATED_IDS_MAX: usize = 100;

fn no_nul(s: &str, field: &str) -> Result<(), CoreError> {
    if s.contains('\0') {
        Err(CoreError::validation(
            field,
            "must not contain NUL characters",
        ))
    } else {
        Ok(())
    }
}

fn bounded(s: &str, field: &str, max_chars: usize) -> Result<(), CoreError> {
    no_nul(s, field)?;
    if s.trim().is_empty() {
        return Err(CoreError::validation(field, "must not be empty or blank"));
    }
    let n = s.chars().count();
    if n > max_chars {
        return Err(CoreError::validation(
            field,
            format!("is {n} characters long; the maximum is {max_chars}"),
        ));
    }
    Ok(())
}

/// A name (an agent, a category, a key): 1..=`max_chars` characters, not blank, no
/// control characters.
pub fn name(s: &str, field: &str, max_chars: usize) -> Result<(), CoreError> {
    if s.trim().is_empty() {
        return Err(CoreError::validation(field, "must not be empty or blank"));
    }
    if s.chars().any(char::is_control) {
        return Err(CoreError::validation(
            field,
            "must not contain control characters (NUL, newlines, tabs, …)",
        ));
    }
    let n = s.chars().count();
    if n > max_chars {
        return Err(CoreError::validation(
            field,
            format!("is {n} characters long; the maximum is {max_chars}"),
        ));
    }
    Ok(())
}

/// A memory's text: 1..=50,000 characters, not blank, no NUL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Content(String);

impl Content {
    pub fn parse(s: String, field: &str) -> Result<Self, CoreError> {
        bounded(&s, field, CONTENT_MAX_CHARS)?;
        Ok(Content(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A title: 1..=500 characters, no NUL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Title(String);

impl Title {
    pub fn parse(s: String, field: &str) -> Result<Self, CoreError> {
        bounded(&s, field, TITLE_MAX_CHARS)?;
        Ok(Title(s))
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A short label such as a scope value (`user_id`, `project`, …), a conversation id or a
/// source reference: not blank, bounded, no NUL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Label(String);

impl Label {
    pub fn parse(s: String, field: &str) -> Result<Self, CoreError> {
        bounded(&s, field, SCOPE_MAX_CHARS)?;
        Ok(Label(s))
    }
    pub fn parse_source_ref(s: String, field: &str) -> Result<Self, CoreError> {
        bounded(&s, field, SOURCE_REF_MAX_CHARS)?;
        Ok(Label(s))
    }
    pub fn into_inner(self) -> String {
        self.0
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One tag: trimmed, 1..=64 characters, no NUL and no comma (lists are comma-separated).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str, field: &str) -> Result<Self, CoreError> {
        let t = s.trim();
        no_nul(t, field)?;
        if t.is_empty() {
            return Err(CoreError::validation(field, "a tag must not be empty"));
        }
        if t.contains(',') {
            return Err(CoreError::validation(field, "a tag must not contain ','"));
        }
        let n = t.chars().count();
        if n > TAG_MAX_CHARS {
            return Err(CoreError::validation(
                field,
                format!("a tag is {n} characters long; the maximum is {TAG_MAX_CHARS}"),
            ));
        }
        Ok(Tag(t.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most 50 distinct tags, in the order given (duplicates dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tags(Vec<Tag>);

impl Tags {
    pub fn parse<S: AsRef<str>>(items: &[S], field: &str) -> Result<Self, CoreError> {
        if items.len() > TAGS_MAX {
            return Err(CoreError::validation(
                field,
                format!("{} tags given; the maximum is {TAGS_MAX}", items.len()),
            ));
        }
        let mut out: Vec<Tag> = Vec::with_capacity(items.len());
        for (i, s) in items.iter().enumerate() {
            // The field's name with the index is made only for an error.
            let tag = Tag::parse(s.as_ref(), field).map_err(|e| match e {
                CoreError::Validation { message, .. } => {
                    CoreError::validation(format!("{field}[{i}]"), message)
                }
                other => other,
            })?;
            // At most 50: comparing with those kept costs less than hashing each.
            if !out.iter().any(|t| t.0 == tag.0) {
                out.push(tag);
            }
        }
        Ok(Tags(out))
    }
    pub fn into_strings(self) -> Vec<String> {
        self.0.into_iter().map(|t| t.0).collect()
    }
    pub fn as_slice(&self) -> &[Tag] {
        &self.0
    }
}

/// Free-form metadata: a JSON object of at most 16 KiB serialised, nested at most 8 deep,
/// with no NUL in any key or string.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    pub fn parse(v: Value, field: &str) -> Result<Self, CoreError> {
        let Value::Object(map) = v else {
            return Err(CoreError::validation(field, "must be a JSON object"));
        };
        let size = serialized_len(&map);
        if size > METADATA_MAX_BYTES {
            return Err(CoreError::validation(
                field,
                format!("is {size} bytes serialised; the maximum is {METADATA_MAX_BYTES}"),
            ));
        }
        map.iter().try_for_each(|(k, v)| {
            no_nul(k, field)?;
            check_json(v, 2, field)
        })?;
        Ok(Metadata(map))
    }
    pub fn into_inner(self) -> Map<String, Value> {
        self.0
    }
}

/// How many bytes `v` takes as JSON, counted without making the text.
fn serialized_len(v: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    match serde_json::to_writer(&mut n, v) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

fn check_json(v: &Value, depth: usize, field: &str) -> Result<(), CoreError> {
    match v {
        Value::String(s) => no_nul(s, field),
        Value::Array(_) | Value::Object(_) if depth > METADATA_MAX_DEPTH => {
            Err(CoreError::validation(
                field,
                format!("is nested more than {METADATA_MAX_DEPTH} levels deep"),
            ))
        }
        Value::Array(items) => items
            .iter()
            .try_for_each(|x| check_json(x, depth + 1, field)),
        Value::Object(map) => map.iter().try_for_each(|(k, x)| {
            no_nul(k, field)?;
            check_json(x, depth + 1, field)
        }),
        _ => Ok(()),
    }
}

/// Ids of related memories: at most 100 UUIDs, duplicates dropped.
pub fn parse_related_ids<S: AsRef<str>>(
    items: &[S],
    field: &str,
) -> Result<Vec<MemoryId>, CoreError> {
    if items.len() > RELATED_IDS_MAX {
        return Err(CoreError::validation(
            field,
            format!(
                "{} ids given; the maximum is {RELATED_IDS_MAX}",
                items.len()
            ),
        ));
    }
    let mut out: Vec<MemoryId> = Vec::with_capacity(items.len());
    for (i, s) in items.iter().enumerate() {
        let id = MemoryId::parse(s.as_ref(), &format!("{field}[{i}]"))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(r: Result<impl std::fmt::Debug, CoreError>) -> String {
        r.unwrap_err().field().unwrap().to_owned()
    }

    #[test]
    fn content_bounds() {
        assert!(Content::parse("x".into(), "content").is_ok());
        assert!(Content::parse("é".repeat(CONTENT_MAX_CHARS), "content").is_ok());
        assert_eq!(
            field_of(Content::parse("é".repeat(CONTENT_MAX_CHARS + 1), "content")),
            "content"
        );
        assert!(Content::parse("".into(), "content").is_err());
        assert!(Content::parse("  \n".into(), "content").is_err());
        assert!(Content::parse("a\0b".into(), "content").is_err());
    }

    #[test]
    fn title_bounds() {
        assert!(Title::parse("t".repeat(TITLE_MAX_CHARS), "title").is_ok());
        assert!(Title::parse("t".repeat(TITLE_MAX_CHARS + 1), "title").is_err());
    }

    #[test]
    fn tags_are_trimmed_deduplicated_and_bounded() {
        let t = Tags::parse(&[" a", "b", "a "], "tags").unwrap();
        assert_eq!(t.into_strings(), vec!["a", "b"]);
        let many: Vec<String> = (0..=TAGS_MAX).map(|i| format!("t{i}")).collect();
        assert_eq!(field_of(Tags::parse(&many, "tags")), "tags");
        assert_eq!(
            field_of(Tags::parse(&["ok", &"x".repeat(65)], "tags")),
            "tags[1]"
        );
        assert_eq!(field_of(Tags::parse(&["a,b"], "tags")), "tags[0]");
        assert_eq!(field_of(Tags::parse(&[""], "tags")), "tags[0]");
    }

    #[test]
    fn metadata_rules() {
        assert!(Metadata::parse(json!({"a": {"b": [1, 2, {"c": null}]}}), "metadata").is_ok());
        assert!(Metadata::parse(json!([1]), "metadata").is_err());
        assert!(Metadata::parse(json!("s"), "metadata").is_err());
        // 8 levels is fine, 9 is not.
        let mut v = json!(1);
        for _ in 0..8 {
            v = json!({ "k": v });
        }
        assert!(Metadata::parse(v.clone(), "metadata").is_ok());
        assert!(Metadata::parse(json!({ "k": v }), "metadata").is_err());
        let big = "x".repeat(METADATA_MAX_BYTES);
        assert!(Metadata::parse(json!({ "k": big }), "metadata").is_err());
        // The bound is on the serialised bytes: `{"k":"…"}` is 8 bytes around the string.
        let at = |n: usize| json!({ "k": "x".repeat(n) });
        assert_eq!(
            serde_json::to_vec(&at(METADATA_MAX_BYTES - 8))
                .unwrap()
                .len(),
            METADATA_MAX_BYTES
        );
        assert!(Metadata::parse(at(METADATA_MAX_BYTES - 8), "metadata").is_ok());
        assert!(Metadata::parse(at(METADATA_MAX_BYTES - 7), "metadata").is_err());
        // Escapes count as written: a newline is two bytes.
        let escaped = json!({ "k": "\n".repeat((METADATA_MAX_BYTES - 8) / 2 + 1) });
        assert!(Metadata::parse(escaped, "metadata").is_err());
        assert!(Metadata::parse(json!({ "k\u{0}": 1 }), "metadata").is_err());
        assert!(Metadata::parse(json!({ "k": ["a\u{0}"] }), "metadata").is_err());
    }

    #[test]
    fn related_ids_must_be_uuids() {
        let id = MemoryId::new().to_string();
        assert_eq!(
            parse_related_ids(&[&id, &id], "related_ids").unwrap().len(),
            1
        );
        assert_eq!(
            field_of(parse_related_ids(&[id.as_str(), "nope"], "related_ids")),
            "related_ids[1]"
        );
    }
}
