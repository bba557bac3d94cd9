//! Parsing JSON bodies with the path of the offending field.

use serde::de::DeserializeOwned;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at all (or truncated): HTTP 400.
    Syntax(String),
    /// JSON of the wrong shape (unknown, missing or mistyped field): HTTP 422.
    Data { field: String, message: String },
}

/// Finds the quoted name in serde's "unknown field `x`" / "missing field `x`" messages.
fn quoted(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(&msg[start..start + len])
}

/// Parses `bytes`, which must hold one JSON object, as a `T`, reporting the path of the
/// field that failed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(JsonError::Syntax(
                "the body is empty; send a JSON object".into(),
            ))
        }
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde_json::Value>(bytes).is_ok() => {
            return Err(JsonError::Data {
                field: String::new(),
                message: "the body must be a JSON object".into(),
            })
        }
        Some(_) => {}
    }
    // Fast path: valid input pays for no path tracking.
    if let Ok(v) = serde_json::from_slice::<T>(bytes) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let res: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let err = match res {
        Ok(v) => {
            // Anything but whitespace after the object is malformed.
            return de
                .end()
                .map(|()| v)
                .map_err(|e| JsonError::Syntax(format!("malformed JSON: {e}")));
        }
        Err(e) => e,
    };
    let path = err.path().to_string();
    let inner = err.into_inner();
    use serde_json::error::Category;
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            Err(JsonError::Syntax(format!("malformed JSON: {inner}")))
        }
        Category::Data => {
            let msg = inner.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            let parent = if path == "." {
                String::new()
            } else {
                path.clone()
            };
            let field = if msg.starts_with("unknown field") || msg.starts_with("missing field") {
                match quoted(&msg) {
                    Some(name) if parent.is_empty() || parent.ends_with(name) => {
                        if parent.is_empty() {
                            name.to_owned()
                        } else {
                            parent
                        }
                    }
                    Some(name) => format!("{parent}.{name}"),
                    None => parent,
                }
            } else {
                parent
            };
            Err(JsonError::Data {
                field,
                message: msg,
            })
        }
    }
}
