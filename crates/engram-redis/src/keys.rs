//! The key namespaces. `{p}` is the configured prefix (default `engram`), `{t}` the
//! tenant, `{u}` the user id percent-encoded (every byte outside `[A-Za-z0-9_.@+=-]`
//! becomes `%XX`, so a user id can never reach into another key's namespace or glob).
//!
//! | key | holds | TTL |
//! |---|---|---|
//! | `{p}:{t}:memory:{id}` | one live memory, JSON | `memory_ttl` (300 s) |
//! | `{p}:{t}:memory:{id}:gen` | the memory's generation | the longest entry TTL |
//! | `{p}:{t}:memories:user:{u}:list:{hash}` | one page of a list filtered by user `u`: items, total, has_more; `hash` covers the whole query | `list_ttl` (120 s) |
//! | `{p}:{t}:memories:user:{u}:recent:{per_page}` | the first page, newest first, of a list filtered by nothing but user `u` | `recent_ttl` (60 s) |
//! | `{p}:{t}:memories:user:{u}:keys` | the set of `u`'s cached list and recent keys | the longer of list and recent, refreshed on each fill |
//! | `{p}:{t}:memories:user:{u}:gen` | `u`'s list generation | the longest entry TTL |
//! | `{p}:{t}:working:session:{s}:buffer:{asc\|desc}:{n}` | a conversation buffer: the first page (`n` messages, oldest or newest first) of session `s`'s messages | `buffer_ttl` (300 s) |
//! | `{p}:{t}:working:session:{s}:keys` | the set of `s`'s buffer keys | the longest entry TTL, refreshed on each fill |
//! | `{p}:{t}:working:session:{s}:gen` | `s`'s buffer generation | the longest entry TTL |
//! | `{p}::epoch` | the global epoch | 24 h |
//! | `{p}::emb:{model key}:{content hash}` | vectors (one per window) of content, little-endian f32 | `embedding_ttl` (1 h) |
//!
//! Lists without a `user_id` filter are not cached. There is no separate count key: the
//! store's list answer carries the total, cached inside each page.
//!
//! Tenant names are `[A-Za-z0-9_.-]`, so a tenant segment never contains `:` and never
//! is empty: `{p}::…` (the global keys) cannot collide with any tenant's keys, and a
//! tenant's pattern `{p}:{t}:*` never matches another tenant's key.

use std::fmt::Write as _;

use engram_core::working::RecordId;
use engram_core::{ListQuery, MemoryFilter, MemoryId, Position, SortBy, SortOrder, TenantId};
use sha2::{Digest, Sha256};

/// Bumped when the cached list format or the query hash changes, so replicas of two
/// versions never read each other's list entries.
const LIST_FORMAT: &str = "list-v1";

/// Which list cache a query falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListKind {
    /// `…:list:{hash}`.
    List,
    /// `…:recent:{per_page}`.
    Recent,
}

impl ListKind {
    pub(crate) fn metric(self) -> &'static str {
        match self {
            ListKind::List => "list",
            ListKind::Recent => "recent",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

/// Whether `s` is a valid prefix: 1..=64 of `[A-Za-z0-9_.-]` (no glob characters, no `:`).
pub(crate) fn valid_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Percent-encodes every byte outside `[A-Za-z0-9_.@+=-]`.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'+' | b'=') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Keys {
    /// `prefix` must pass [`valid_prefix`] (checked by `RedisCache::new`).
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn epoch(&self) -> String {
        format!("{}::epoch", self.prefix)
    }

    /// The start of every key that is not a tenant's (the epoch, embeddings).
    pub(crate) fn global_prefix(&self) -> String {
        format!("{}::", self.prefix)
    }

    pub(crate) fn embedding(&self, model_key: &str, content_hash: &str) -> String {
        format!("{}::emb:{model_key}:{content_hash}", self.prefix)
    }

    pub(crate) fn memory(&self, tenant: &TenantId, id: MemoryId) -> String {
        format!("{}:{tenant}:memory:{id}", self.prefix)
    }

    pub(crate) fn memory_gen(&self, tenant: &TenantId, id: MemoryId) -> String {
        format!("{}:{tenant}:memory:{id}:gen", self.prefix)
    }

    fn user_base(&self, tenant: &TenantId, user: &str) -> String {
        format!("{}:{tenant}:memories:user:{}", self.prefix, escape(user))
    }

    pub(crate) fn user_gen(&self, tenant: &TenantId, user: &str) -> String {
        format!("{}:gen", self.user_base(tenant, user))
    }

    pub(crate) fn user_index(&self, tenant: &TenantId, user: &str) -> String {
        format!("{}:keys", self.user_base(tenant, user))
    }

    /// The key a list query filtered by `user` is cached under, or `None` if the query
    /// cannot be hashed (then it is not cached).
    pub(crate) fn list(
        &self,
        tenant: &TenantId,
        user: &str,
        q: &ListQuery,
    ) -> Option<(String, ListKind)> {
        let base = self.user_base(tenant, user);
        if is_recent(q, user) {
            return Some((format!("{base}:recent:{}", q.per_page), ListKind::Recent));
        }
        Some((format!("{base}:list:{}", query_hash(q)?), ListKind::List))
    }

    fn session_base(&self, tenant: &TenantId, session: RecordId) -> String {
        format!("{}:{tenant}:working:session:{session}", self.prefix)
    }

    pub(crate) fn session_gen(&self, tenant: &TenantId, session: RecordId) -> String {
        format!("{}:gen", self.session_base(tenant, session))
    }

    pub(crate) fn session_index(&self, tenant: &TenantId, session: RecordId) -> String {
        format!("{}:keys", self.session_base(tenant, session))
    }

    /// The conversation buffer of a session's first `limit` messages in one order.
    pub(crate) fn session_buffer(
        &self,
        tenant: &TenantId,
        session: RecordId,
        oldest_first: bool,
        limit: u32,
    ) -> String {
        let order = if oldest_first { "asc" } else { "desc" };
        format!(
            "{}:buffer:{order}:{limit}",
            self.session_base(tenant, session)
        )
    }

    /// Every conversation buffer key (and index, generation) of a tenant.
    pub(crate) fn pattern_tenant_sessions(&self, tenant: &TenantId) -> String {
        format!("{}:{tenant}:working:session:*", self.prefix)
    }

    /// Every cached embedding, of every model.
    pub(crate) fn pattern_embeddings(&self) -> String {
        format!("{}::emb:*", self.prefix)
    }

    /// Every key of the prefix (global keys included; the caller skips those).
    pub(crate) fn pattern_all(&self) -> String {
        format!("{}:*", self.prefix)
    }

    /// Every key of a tenant.
    pub(crate) fn pattern_tenant(&self, tenant: &TenantId) -> String {
        format!("{}:{tenant}:*", self.prefix)
    }

    /// Every memory entry (and generation) of a tenant.
    pub(crate) fn pattern_tenant_memories(&self, tenant: &TenantId) -> String {
        format!("{}:{tenant}:memory:*", self.prefix)
    }

    /// Every list key, index and generation of one user of a tenant.
    pub(crate) fn pattern_user(&self, tenant: &TenantId, user: &str) -> String {
        format!("{}:*", self.user_base(tenant, user))
    }
}

/// The "recent" view: the first page, newest first, filtered by the user alone.
fn is_recent(q: &ListQuery, user: &str) -> bool {
    q.position == Position::Page(1)
        && q.sort_by == SortBy::CreatedAt
        && q.sort_order == SortOrder::Desc
        && q.filter
            == MemoryFilter {
                user_id: Some(user.to_owned()),
                ..Default::default()
            }
}

/// A hash of the whole query. The destructuring is exhaustive on purpose: a field added
/// to `ListQuery` or `Position` fails to compile here instead of silently sharing a key
/// between two different queries.
fn query_hash(q: &ListQuery) -> Option<String> {
    let ListQuery {
        filter,
        sort_by,
        sort_order,
        per_page,
        position,
    } = q;
    let position = match position {
        Position::Page(p) => serde_json::json!(["page", p]),
        Position::After { sort_key, id, page } => serde_json::json!(["after", sort_key, id, page]),
    };
    let bytes =
        serde_json::to_vec(&(LIST_FORMAT, filter, sort_by, sort_order, per_page, position)).ok()?;
    Some(hex::encode(&Sha256::digest(&bytes)[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    fn by_user(user: &str) -> ListQuery {
        ListQuery {
            filter: MemoryFilter {
                user_id: Some(user.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn user_ids_cannot_escape_their_namespace() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(escape("a:list:x"), "a%3Alist%3Ax");
        assert_eq!(escape("*?[]\\ é"), "%2A%3F%5B%5D%5C%20%C3%A9");
        let k = Keys::new("engram");
        assert!(!k
            .user_gen(&tenant(), "a:b")
            .starts_with(&k.pattern_user(&tenant(), "a").replace('*', "")));
    }

    #[test]
    fn recent_is_the_plain_first_page_newest_first() {
        let k = Keys::new("engram");
        let (key, kind) = k
            .list(&tenant(), "bob", &by_user("bob"))
            .expect("cacheable");
        assert_eq!(kind, ListKind::Recent);
        assert_eq!(key, "engram:acme:memories:user:bob:recent:20");

        let mut q = by_user("bob");
        q.filter.tags = vec!["x".into()];
        let (key, kind) = k.list(&tenant(), "bob", &q).expect("cacheable");
        assert_eq!(kind, ListKind::List);
        assert!(key.starts_with("engram:acme:memories:user:bob:list:"));
    }

    #[test]
    fn every_part_of_the_query_changes_the_hash() {
        let base = by_user("u");
        let mut variants = vec![base.clone()];
        let mut q = base.clone();
        q.per_page = 5;
        variants.push(q);
        let mut q = base.clone();
        q.sort_order = SortOrder::Asc;
        variants.push(q);
        let mut q = base.clone();
        q.sort_by = SortBy::UpdatedAt;
        variants.push(q);
        let mut q = base.clone();
        q.position = Position::Page(2);
        variants.push(q);
        let mut q = base.clone();
        q.filter.metadata = vec![("k".into(), serde_json::json!(1))];
        variants.push(q);
        let hashes: std::collections::HashSet<_> = variants.iter().map(query_hash).collect();
        assert_eq!(hashes.len(), variants.len());
    }
}
