//! What a filter can ask of a memory, held in memory by the in-process indexes (vector
//! and keyword) so that they filter inside their search instead of after a top-k cut.

use std::collections::HashSet;
use std::sync::Arc;

use engram_core::time::to_micros;
use engram_core::{MemoryFilter, MemoryId, MemoryType, Source, StoreError};

use crate::db_err;

/// A memory's filterable fields.
pub(crate) struct Fields {
    pub id: MemoryId,
    pub tenant: Arc<str>,
    user_id: Option<Arc<str>>,
    agent_id: Option<Arc<str>>,
    project: Option<Arc<str>>,
    domain: Option<Arc<str>>,
    session_id: Option<Arc<str>>,
    memory_type: MemoryType,
    source: Source,
    created_at: i64,
    tags: Box<[Arc<str>]>,
}

impl Fields {
    pub fn session_id(&self) -> Option<&Arc<str>> {
        self.session_id.as_ref()
    }

    /// The memory's tags.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| &**t)
    }

    /// Whether the memory passes `f` for `tenant`. Metadata and embedding-status
    /// conditions are not held here: see [`needs_sql`].
    pub fn matches(&self, tenant: &str, f: &MemoryFilter) -> bool {
        fn eq(want: &Option<String>, have: &Option<Arc<str>>) -> bool {
            match want {
                None => true,
                Some(w) => have.as_deref() == Some(w.as_str()),
            }
        }
        &*self.tenant == tenant
            && (f.memory_types.is_empty() || f.memory_types.contains(&self.memory_type))
            && f.source.is_none_or(|s| s == self.source)
            && eq(&f.user_id, &self.user_id)
            && eq(&f.agent_id, &self.agent_id)
            && eq(&f.project, &self.project)
            && eq(&f.domain, &self.domain)
            && eq(&f.session_id, &self.session_id)
            && f.created_after
                .is_none_or(|t| self.created_at > to_micros(t))
            && f.created_before
                .is_none_or(|t| self.created_at < to_micros(t))
            && f.tags.iter().all(|t| self.tags.iter().any(|x| &**x == t))
    }
}

/// Whether `f` asks for something [`Fields`] does not hold (the candidates then come from
/// SQLite).
pub(crate) fn needs_sql(f: &MemoryFilter) -> bool {
    !f.metadata.is_empty() || f.embedding_status.is_some()
}

/// The row ids of `tenant`'s live memories that pass `f`, listed through SQLite's indexes;
/// at most `limit` of them when one is given.
pub(crate) fn filter_rids(
    conn: &rusqlite::Connection,
    tenant: &str,
    f: &MemoryFilter,
    limit: Option<usize>,
) -> Result<Vec<i64>, StoreError> {
    let (cond, args) = crate::filter_sql(tenant, f);
    // SQLite's LIMIT is a signed 64-bit integer; a larger bound is no bound.
    let limit = limit
        .filter(|n| i64::try_from(*n).is_ok())
        .map_or(String::new(), |n| format!(" LIMIT {n}"));
    conn.prepare_cached(&format!("SELECT m.rid FROM memories m WHERE {cond}{limit}"))
        .and_then(|mut s| {
            s.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
                .collect::<Result<Vec<i64>, _>>()
        })
        .map_err(db_err)
}

/// Shares one allocation per distinct string (tenants, users, sessions, tags).
#[derive(Default)]
pub(crate) struct Interner(HashSet<Arc<str>>);

impl Interner {
    pub fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(a.clone());
        a
    }
    fn opt(&mut self, s: Option<String>) -> Option<Arc<str>> {
        s.map(|s| self.get(&s))
    }
}

/// The columns [`fields_of`] reads, as columns 1–11 of a query on `memories m` whose
/// column 0 is `m.rid`.
pub(crate) const COLUMNS: &str = "m.rid, m.id, m.tenant, m.user_id, m.agent_id, m.project, \
     m.domain, m.session_id, m.memory_type, m.source, m.created_at, m.tags";

/// A memory's filterable fields from columns 1–11 of a row (see [`COLUMNS`]).
pub(crate) fn fields_of(
    r: &rusqlite::Row<'_>,
    interner: &mut Interner,
) -> Result<Fields, StoreError> {
    let corrupt = |what: &str| StoreError::Other(format!("corrupt {what} in memories"));
    let id: Vec<u8> = r.get(1).map_err(db_err)?;
    let tags: String = r.get(11).map_err(db_err)?;
    let tags: Vec<String> = serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?;
    let mt: String = r.get(8).map_err(db_err)?;
    let src: String = r.get(9).map_err(db_err)?;
    Ok(Fields {
        id: MemoryId::from_bytes(&id).ok_or_else(|| corrupt("id"))?,
        tenant: interner.get(&r.get::<_, String>(2).map_err(db_err)?),
        user_id: interner.opt(r.get(3).map_err(db_err)?),
        agent_id: interner.opt(r.get(4).map_err(db_err)?),
        project: interner.opt(r.get(5).map_err(db_err)?),
        domain: interner.opt(r.get(6).map_err(db_err)?),
        session_id: interner.opt(r.get(7).map_err(db_err)?),
        memory_type: MemoryType::parse(&mt, "memory_type").map_err(|_| corrupt("type"))?,
        source: Source::parse(&src, "source").map_err(|_| corrupt("source"))?,
        created_at: r.get(10).map_err(db_err)?,
        tags: tags.iter().map(|t| interner.get(t)).collect(),
    })
}
