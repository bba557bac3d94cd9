//! What a filter can ask of a memory, held in memory by the in-process indexes (vector
//! and keyword) so that they filter inside their search instead of after a top-k cut.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engram_core::time::to_micros;
use engram_core::{MemoryFilter, MemoryId, MemoryType, Source, StoreError};
use foldhash::fast::RandomState;

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

/// Something held per memory that carries its [`Fields`].
pub(crate) trait HasFields {
    fn fields(&self) -> &Fields;
}

/// The fields a filter can ask for by equality, as positions in [`FieldMap`]'s lists.
const USER: usize = 0;
const AGENT: usize = 1;
const PROJECT: usize = 2;
const DOMAIN: usize = 3;
const SESSION: usize = 4;
const TYPE: usize = 5;
const SOURCE: usize = 6;
const TAG: usize = 7;
const LISTED: usize = 8;

type Lists = [HashMap<Arc<str>, Vec<i64>, RandomState>; LISTED];

/// Memories by row id, with a posting list per tenant, field and value: the row ids of
/// the memories holding that user, agent, project, domain, session, type, source or tag.
/// A selective filter's candidates then come from the shortest list of its conditions
/// instead of a query through SQLite's indexes (which cost about 1,000 instructions per
/// row listed).
///
/// The memories themselves are kept densely, in a vector with a map from row id to
/// position beside it, rather than as the values of a hash map: a hash table keeps its
/// values in place and is at most 7/8 full, so a million memories of about 150–200 bytes
/// each took a table of 2,097,152 slots (twice the memory the values need), all of it
/// touched.
pub(crate) struct FieldMap<T> {
    rows: Vec<(i64, T)>,
    slots: HashMap<i64, u32, RandomState>,
    lists: HashMap<Arc<str>, Lists, RandomState>,
}

impl<T> Default for FieldMap<T> {
    fn default() -> Self {
        FieldMap {
            rows: Vec::new(),
            slots: HashMap::default(),
            lists: HashMap::default(),
        }
    }
}

/// The given ones of user, agent, project, domain and session, with their list positions.
fn scope<S: std::ops::Deref<Target = str>>(
    values: [&Option<S>; 5],
) -> impl Iterator<Item = (usize, &str)> {
    [USER, AGENT, PROJECT, DOMAIN, SESSION]
        .into_iter()
        .zip(values)
        .filter_map(|(field, v)| v.as_deref().map(|v| (field, v)))
}

/// Each (field, value) `f` is listed under.
fn listed(f: &Fields) -> impl Iterator<Item = (usize, &str)> {
    scope([
        &f.user_id,
        &f.agent_id,
        &f.project,
        &f.domain,
        &f.session_id,
    ])
    .chain([(TYPE, f.memory_type.as_str()), (SOURCE, f.source.as_str())])
    .chain(f.tags.iter().map(|t| (TAG, &**t)))
}

impl<T: HasFields> FieldMap<T> {
    pub fn get(&self, rid: &i64) -> Option<&T> {
        self.slots.get(rid).map(|&i| &self.rows[i as usize].1)
    }

    pub fn contains_key(&self, rid: &i64) -> bool {
        self.slots.contains_key(rid)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// How many of `tenant`'s memories are held (each is on exactly one type list).
    pub fn tenant_len(&self, tenant: &str) -> usize {
        self.lists
            .get(tenant)
            .map_or(0, |l| l[TYPE].values().map(Vec::len).sum())
    }

    pub fn insert(&mut self, rid: i64, row: T) -> Option<T> {
        // A memory refreshed with the same listed fields (a new vector, new content) keeps
        // its list entries: removing one costs a scan of the list.
        if let Some(&i) = self.slots.get(&rid) {
            let old = &mut self.rows[i as usize].1;
            let (was, is) = (old.fields(), row.fields());
            if was.tenant == is.tenant && listed(was).eq(listed(is)) {
                return Some(std::mem::replace(old, row));
            }
        }
        let old = self.remove(&rid);
        let f = row.fields();
        let lists = self.lists.entry(f.tenant.clone()).or_default();
        for (field, value) in listed(f) {
            match lists[field].get_mut(value) {
                Some(list) => list.push(rid),
                None => {
                    lists[field].insert(Arc::from(value), vec![rid]);
                }
            }
        }
        let slot = u32::try_from(self.rows.len()).expect("fewer than 2^32 memories held");
        self.rows.push((rid, row));
        self.slots.insert(rid, slot);
        old
    }

    pub fn remove(&mut self, rid: &i64) -> Option<T> {
        let i = self.slots.remove(rid)? as usize;
        let (_, row) = self.rows.swap_remove(i);
        if let Some((moved, _)) = self.rows.get(i) {
            self.slots.insert(*moved, i as u32);
        }
        let f = row.fields();
        if let Some(lists) = self.lists.get_mut(&f.tenant) {
            for (field, value) in listed(f) {
                if let Some(list) = lists[field].get_mut(value) {
                    if let Some(i) = list.iter().rposition(|r| r == rid) {
                        list.swap_remove(i);
                    }
                    if list.is_empty() {
                        lists[field].remove(value);
                    }
                }
            }
            if lists.iter().all(HashMap::is_empty) {
                self.lists.remove(&f.tenant);
            }
        }
        Some(row)
    }

    /// The row ids of `tenant`'s memories that pass `filter`: `Some(Some(rids))` when at
    /// most `max` pass, `Some(None)` when more do, `None` when no equality condition of
    /// `filter` has a list here, or it has conditions in [`needs_sql`] (the caller then
    /// lists through SQLite).
    pub fn passing(
        &self,
        tenant: &str,
        filter: &MemoryFilter,
        max: usize,
    ) -> Option<Option<Vec<i64>>> {
        if needs_sql(filter) {
            return None;
        }
        // No list of this tenant's: nothing of theirs is held, and every list is empty.
        let lists = self.lists.get(tenant);
        let empty: &[i64] = &[];
        let list = |field: usize, value: &str| -> &[i64] {
            lists
                .and_then(|l| l[field].get(value))
                .map_or(empty, Vec::as_slice)
        };
        let one_type = match filter.memory_types.as_slice() {
            [t] => Some(t.as_str()),
            _ => None,
        };
        let f = filter;
        let shortest = scope([
            &f.user_id,
            &f.agent_id,
            &f.project,
            &f.domain,
            &f.session_id,
        ])
        .map(|(field, v)| list(field, v))
        .chain(one_type.map(|t| list(TYPE, t)))
        .chain(filter.source.map(|s| list(SOURCE, s.as_str())))
        .chain(filter.tags.iter().map(|t| list(TAG, t)))
        .min_by_key(|l| l.len())?;
        let mut out = Vec::new();
        for rid in shortest {
            if self
                .get(rid)
                .is_some_and(|r| r.fields().matches(tenant, filter))
            {
                if out.len() == max {
                    return Some(None);
                }
                out.push(*rid);
            }
        }
        Some(Some(out))
    }
}

impl<T> std::ops::Index<&i64> for FieldMap<T> {
    type Output = T;
    fn index(&self, rid: &i64) -> &T {
        &self.rows[self.slots[rid] as usize].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row(Fields);
    impl HasFields for Row {
        fn fields(&self) -> &Fields {
            &self.0
        }
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
        fn pick(&mut self, values: &[&str]) -> Option<String> {
            let i = self.below(values.len() as u64 + 1) as usize;
            values.get(i).map(|v| v.to_string())
        }
    }

    const TYPES: [MemoryType; 3] = [MemoryType::Note, MemoryType::Fact, MemoryType::Task];
    const SOURCES: [Source; 2] = [Source::Chat, Source::Manual];

    fn fields(rng: &mut Rng) -> Fields {
        let arc = |s: Option<String>| s.map(Arc::<str>::from);
        Fields {
            id: MemoryId::new(),
            tenant: Arc::from(["t1", "t2"][rng.below(2) as usize]),
            user_id: arc(rng.pick(&["u1", "u2", "u3"])),
            agent_id: arc(rng.pick(&["a1", "a2"])),
            project: arc(rng.pick(&["p1"])),
            domain: arc(rng.pick(&["d1", "d2"])),
            session_id: arc(rng.pick(&["s1", "s2", "s3", "s4"])),
            memory_type: TYPES[rng.below(3) as usize],
            source: SOURCES[rng.below(2) as usize],
            created_at: rng.below(1_000) as i64,
            tags: ["x", "y", "z"]
                .into_iter()
                .filter(|_| rng.below(2) == 0)
                .map(Arc::from)
                .collect(),
        }
    }

    fn filter(rng: &mut Rng) -> MemoryFilter {
        let mut f = MemoryFilter {
            user_id: rng.pick(&["u1", "u2", "u3", "nobody"]),
            agent_id: rng.pick(&["a1", "a2"]),
            project: rng.pick(&["p1"]),
            domain: rng.pick(&["d1", "d2"]),
            session_id: rng.pick(&["s1", "s2", "s3", "s4"]),
            ..MemoryFilter::default()
        };
        // Each condition in about half the filters, so some have none held in lists.
        for v in [
            &mut f.user_id,
            &mut f.agent_id,
            &mut f.project,
            &mut f.domain,
            &mut f.session_id,
        ] {
            if rng.below(2) == 0 {
                *v = None;
            }
        }
        f.memory_types = (0..rng.below(3))
            .map(|_| TYPES[rng.below(3) as usize])
            .collect();
        if rng.below(3) == 0 {
            f.source = Some(SOURCES[rng.below(2) as usize]);
        }
        if rng.below(3) == 0 {
            f.tags = vec![["x", "y", "z"][rng.below(3) as usize].to_string()];
        }
        if rng.below(3) == 0 {
            f.created_after = engram_core::time::from_micros(rng.below(1_000) as i64).into();
        }
        f
    }

    /// The posting lists answer exactly what checking every held memory answers, through
    /// inserts, replacements and removals, for random filters and bounds.
    #[test]
    fn posting_lists_agree_with_checking_every_memory() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut map: FieldMap<Row> = FieldMap::default();
        // What the map should hold: row id → memory id.
        let mut model: HashMap<i64, MemoryId> = HashMap::new();
        for round in 0..20 {
            for _ in 0..100 {
                // Row ids collide often: replacements as well as inserts.
                let rid = rng.below(600) as i64;
                let f = fields(&mut rng);
                let (id, replaced) = (f.id, model.get(&rid).copied());
                let old = map.insert(rid, Row(f));
                assert_eq!(old.map(|r| r.0.id), replaced);
                model.insert(rid, id);
            }
            for _ in 0..30 {
                let rid = rng.below(600) as i64;
                assert_eq!(map.remove(&rid).map(|r| r.0.id), model.remove(&rid));
            }
            assert_eq!(map.len(), model.len());
            for rid in 0..600 {
                assert_eq!(map.get(&rid).map(|r| r.0.id), model.get(&rid).copied());
                assert_eq!(map.contains_key(&rid), model.contains_key(&rid));
            }
            // Refreshed with the same listed fields (another time): list entries kept.
            for _ in 0..20 {
                let rid = rng.below(600) as i64;
                if let Some(Row(f)) = map.get(&rid) {
                    let same = Fields {
                        id: f.id,
                        tenant: f.tenant.clone(),
                        user_id: f.user_id.clone(),
                        agent_id: f.agent_id.clone(),
                        project: f.project.clone(),
                        domain: f.domain.clone(),
                        session_id: f.session_id.clone(),
                        memory_type: f.memory_type,
                        source: f.source,
                        created_at: rng.below(1_000) as i64,
                        tags: f.tags.clone(),
                    };
                    map.insert(rid, Row(same));
                }
            }
            for _ in 0..50 {
                let f = filter(&mut rng);
                let tenant = ["t1", "t2", "t3"][rng.below(3) as usize];
                let max = [0, 5, 40, 1_000][rng.below(4) as usize];
                let mut want: Vec<i64> = map
                    .rows
                    .iter()
                    .filter(|(_, r)| r.0.matches(tenant, &f))
                    .map(|(rid, _)| *rid)
                    .collect();
                want.sort_unstable();
                let listed = f.user_id.is_some()
                    || f.agent_id.is_some()
                    || f.project.is_some()
                    || f.domain.is_some()
                    || f.session_id.is_some()
                    || f.memory_types.len() == 1
                    || f.source.is_some()
                    || !f.tags.is_empty();
                let got = map.passing(tenant, &f, max).map(|rids| {
                    rids.map(|mut r| {
                        r.sort_unstable();
                        r
                    })
                });
                let expected = listed.then(|| (want.len() <= max).then_some(want));
                assert_eq!(got, expected, "round {round}, {tenant}, max {max}: {f:?}");
            }
        }
        // Removing everything leaves no list behind.
        let rids: Vec<i64> = map.rows.iter().map(|(rid, _)| *rid).collect();
        for rid in rids {
            map.remove(&rid);
        }
        assert!(map.lists.is_empty());
    }
}
