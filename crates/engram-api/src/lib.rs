//! engram's wire types: the REST request and response bodies, the error body, and the
//! conversions between them and the core's types. Only this crate decides what goes over
//! the wire; the core's types may change freely behind it. It parses untrusted JSON into
//! the core's validated newtypes and names the offending field on every failure.
//! It knows nothing of HTTP frameworks or storage.

mod context;
mod json;
mod memory;
mod ops;
mod records;
pub mod schema;
mod scratchpad;
mod search;

pub use context::*;
pub use json::{parse_json, JsonError};
pub use memory::*;
pub use ops::*;
pub use records::*;
pub use scratchpad::*;
pub use search::*;
