//! What a filter can ask of a memory, held in memory by the in-process indexes (vector
//! and keyword) so that they filter inside their search instead of after a top-k cut.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use engram_core::time::to_micros;
use engram_core::{MemoryFilter, MemoryId, MemoryType, Source, StoreError};
use foldhash::fast::RandomState;

use crate::db_err;
use engram_index::KeySlots;

/// A string held by an [`Interner`], by number; 0 is "none".
pub(crate) type Name = u32;

/// A memory's filterable fields. The strings (tenant, scope, tags) are [`Name`]s of the
/// interner of the index holding them: a million memories repeat a few thousand distinct
/// values, and four bytes per value instead of a 16-byte shared pointer halve what each
/// memory costs the two in-process indexes (each holds these for every memory).
pub(crate) struct Fields {
    pub id: MemoryId,
    created_at: i64,
    tenant: Name,
    /// user, agent, project, domain, session (0 when absent).
    scope: [Name; 5],
    memory_type: MemoryType,
    source: Source,
    tags: Box<[Name]>,
}

/// Positions in [`Fields::scope`].
const SESSION_AT: usize = 4;

impl Fields {
    /// A memory of `tenant` with no other field set.
    #[cfg(test)]
    pub fn of(id: MemoryId, tenant: Name) -> Fields {
        Fields {
            id,
            created_at: 0,
            tenant,
            scope: [0; 5],
            memory_type: MemoryType::Note,
            source: Source::Manual,
            tags: Box::default(),
        }
    }

    pub fn tenant(&self) -> Name {
        self.tenant
    }

    /// When the memory was created, in microseconds.
    pub fn created_at(&self) -> i64 {
        self.created_at
    }

    pub fn session_id(&self) -> Name {
        self.scope[SESSION_AT]
    }

    pub fn tag_names(&self) -> &[Name] {
        &self.tags
    }

    /// Whether the memory passes the resolved filter `f`. Metadata and embedding-status
    /// conditions are not held here: see [`needs_sql`].
    pub fn matches(&self, f: &Resolved) -> bool {
        self.tenant == f.tenant
            && self
                .scope
                .iter()
                .zip(&f.scope)
                .all(|(have, want)| want.is_none_or(|w| *have == w))
            && (f.memory_types.is_empty() || f.memory_types.contains(&self.memory_type))
            && f.source.is_none_or(|s| s == self.source)
            && f.created_after.is_none_or(|t| self.created_at > t)
            && f.created_before.is_none_or(|t| self.created_at < t)
            && f.tags.iter().all(|t| self.tags.contains(t))
    }
}

/// A tenant and filter in the [`Name`]s of one interner, ready to check held memories
/// against. Only made when every string the filter names is known to the interner: a
/// value no held memory has matches nothing.
pub(crate) struct Resolved {
    pub tenant: Name,
    scope: [Option<Name>; 5],
    memory_types: Vec<MemoryType>,
    source: Option<Source>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    tags: Vec<Name>,
}

/// Whether `f` asks for something [`Fields`] does not hold (the candidates then come from
/// SQLite).
pub(crate) fn needs_sql(f: &MemoryFilter) -> bool {
    !f.metadata.is_empty() || f.embedding_status.is_some()
}

/// The row ids of `tenant`'s live memories that pass `f`, listed through SQLite; at most
/// `limit` of them when one is given. With `within` (the memories passing the conditions
/// of `f` that held fields answer, from [`FieldMap::held_part`]), only those rows are
/// read and checked against the rest of `f`, instead of every row of the tenant's.
pub(crate) fn filter_rids(
    conn: &rusqlite::Connection,
    tenant: &str,
    f: &MemoryFilter,
    limit: Option<usize>,
    within: Option<&[i64]>,
) -> Result<Vec<i64>, StoreError> {
    let (cond, args) = crate::filter_sql(tenant, f);
    let Some(within) = within else {
        // SQLite's LIMIT is a signed 64-bit integer; a larger bound is no bound.
        let limit = limit
            .filter(|n| i64::try_from(*n).is_ok())
            .map_or(String::new(), |n| format!(" LIMIT {n}"));
        return conn
            .prepare_cached(&format!("SELECT m.rid FROM memories m WHERE {cond}{limit}"))
            .and_then(|mut s| {
                s.query_map(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
                    .collect::<Result<Vec<i64>, _>>()
            })
            .map_err(db_err);
    };
    let rows = rows_passing(
        conn,
        tenant,
        f,
        within,
        "m.rid",
        limit.unwrap_or(usize::MAX),
    )?;
    Ok(rows.into_iter().map(|(rid, _)| rid).collect())
}

/// Of the memories `rids`, at most `limit` of those that are `tenant`'s, live and pass
/// `f`, each with its integer column `key` (e.g. `m.updated_at`): read by row id, a
/// chunk of row ids per statement.
pub(crate) fn rows_passing(
    conn: &rusqlite::Connection,
    tenant: &str,
    f: &MemoryFilter,
    rids: &[i64],
    key: &str,
    limit: usize,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let (cond, args) = crate::filter_sql(tenant, f);
    let mut out = Vec::new();
    for chunk in rids.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len())
            .map(|i| format!("?{}", args.len() + i))
            .collect();
        let sql = format!(
            "SELECT m.rid, {key} FROM memories m WHERE m.rid IN ({}) AND {cond}",
            marks.join(", ")
        );
        let bound = args
            .iter()
            .cloned()
            .chain(chunk.iter().map(|r| rusqlite::types::Value::Integer(*r)));
        let rows = conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(rusqlite::params_from_iter(bound), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<Vec<(i64, i64)>, _>>()
            })
            .map_err(db_err)?;
        out.extend(rows);
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    Ok(out)
}

/// [`FieldMap::held_part`] lists at most this many memories for SQLite to check the rest of
/// a filter on (a point read each); a filter whose held conditions pass more is listed
/// by SQLite alone.
const HELD_PART_MAX: usize = 50_000;

/// Numbers each distinct string (tenants, scope values, tags, speakers) once, from 1.
/// Shared by reference and locked inside, briefly, per call; its lock is always the last
/// one taken and is never held while another is taken. Names are never reused or dropped,
/// so a [`Name`] stays valid for the interner's life (an index gets a new interner when it
/// is rebuilt).
#[derive(Default)]
pub(crate) struct Interner(RwLock<Names>);

#[derive(Default)]
struct Names {
    ids: HashMap<Arc<str>, Name, RandomState>,
    /// By name − 1.
    strs: Vec<Arc<str>>,
}

impl Interner {
    /// The name of `s`, numbering it when it is new.
    pub fn intern(&self, s: &str) -> Name {
        if let Some(n) = self.lookup(s) {
            return n;
        }
        let mut names = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(&n) = names.ids.get(s) {
            return n;
        }
        let n = Name::try_from(names.strs.len() + 1).expect("fewer than 2^32 distinct strings");
        let a: Arc<str> = Arc::from(s);
        names.strs.push(a.clone());
        names.ids.insert(a, n);
        n
    }

    fn opt(&self, s: Option<String>) -> Name {
        s.map_or(0, |s| self.intern(&s))
    }

    /// The name of `s`, if it was ever interned.
    pub fn lookup(&self, s: &str) -> Option<Name> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .get(s)
            .copied()
    }

    /// The string named `n` (none for 0).
    pub fn name(&self, n: Name) -> Option<Arc<str>> {
        let i = usize::try_from(n).ok()?.checked_sub(1)?;
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .strs
            .get(i)
            .cloned()
    }

    /// `tenant` and `f` in names, or `None` when one of the strings they name was never
    /// interned (then no memory held passes).
    pub fn resolve(&self, tenant: &str, f: &MemoryFilter) -> Option<Resolved> {
        let names = self.0.read().unwrap_or_else(|p| p.into_inner());
        let known = |s: &str| names.ids.get(s).copied();
        let want = |v: &Option<String>| -> Option<Option<Name>> {
            match v {
                None => Some(None),
                Some(s) => known(s).map(Some),
            }
        };
        Some(Resolved {
            tenant: known(tenant)?,
            scope: [
                want(&f.user_id)?,
                want(&f.agent_id)?,
                want(&f.project)?,
                want(&f.domain)?,
                want(&f.session_id)?,
            ],
            memory_types: f.memory_types.clone(),
            source: f.source,
            created_after: f.created_after.map(to_micros),
            created_before: f.created_before.map(to_micros),
            tags: f
                .tags
                .iter()
                .map(|t| known(t))
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// The columns [`fields_of`] reads, as columns 1–11 of a query on `memories m` whose
/// column 0 is `m.rid`.
pub(crate) const COLUMNS: &str = "m.rid, m.id, m.tenant, m.user_id, m.agent_id, m.project, \
     m.domain, m.session_id, m.memory_type, m.source, m.created_at, m.tags";

/// A memory's filterable fields from columns 1–11 of a row (see [`COLUMNS`]).
pub(crate) fn fields_of(r: &rusqlite::Row<'_>, interner: &Interner) -> Result<Fields, StoreError> {
    let corrupt = |what: &str| StoreError::Other(format!("corrupt {what} in memories"));
    let id: Vec<u8> = r.get(1).map_err(db_err)?;
    let tags: String = r.get(11).map_err(db_err)?;
    let tags: Vec<String> = serde_json::from_str(&tags).map_err(|_| corrupt("tags"))?;
    let mt: String = r.get(8).map_err(db_err)?;
    let src: String = r.get(9).map_err(db_err)?;
    let mut scope = [0; 5];
    for (i, n) in scope.iter_mut().enumerate() {
        *n = interner.opt(r.get(3 + i).map_err(db_err)?);
    }
    Ok(Fields {
        id: MemoryId::from_bytes(&id).ok_or_else(|| corrupt("id"))?,
        created_at: r.get(10).map_err(db_err)?,
        tenant: interner.intern(&r.get::<_, String>(2).map_err(db_err)?),
        scope,
        memory_type: MemoryType::parse(&mt, "memory_type").map_err(|_| corrupt("type"))?,
        source: Source::parse(&src, "source").map_err(|_| corrupt("source"))?,
        tags: tags.iter().map(|t| interner.intern(t)).collect(),
    })
}

/// Something held per memory that carries its [`Fields`].
pub(crate) trait HasFields {
    fn fields(&self) -> &Fields;
}

/// The fields a filter can ask for by equality, as positions in [`FieldMap`]'s lists: the
/// five scope fields (as in [`Fields::scope`]), then type, source and tags.
const TYPE: usize = 5;
const SOURCE: usize = 6;
const TAG: usize = 7;
const LISTED: usize = 8;

/// Per field, the row ids under each value (a [`Name`], or the type's or source's
/// position in its enum). Row ids are listed in 4 bytes (see [`FieldMap::wide`]).
type Lists = [HashMap<u32, Vec<u32>, RandomState>; LISTED];

/// Memories by row id, with a posting list per tenant, field and value: the row ids of
/// the memories holding that user, agent, project, domain, session, type, source or tag.
/// A selective filter's candidates then come from the shortest list of its conditions
/// instead of a query through SQLite's indexes (which cost about 1,000 instructions per
/// row listed); since migration 12 SQLite has no index for most of these conditions, and
/// filtered lists are answered from here too (`Keywords::list`).
///
/// The memories themselves are kept densely, in a vector with a map from row id to
/// position beside it, rather than as the values of a hash map: a hash table keeps its
/// values in place and is at most 7/8 full, so a million memories of about 150–200 bytes
/// each took a table of 2,097,152 slots (twice the memory the values need), all of it
/// touched. The map from row id to position is itself a vector indexed by row id
/// ([`KeySlots`]: 4 bytes per row id instead of a hash table's 17–34 per memory).
pub(crate) struct FieldMap<T> {
    rows: Vec<(i64, T)>,
    slots: KeySlots,
    lists: HashMap<Name, Lists, RandomState>,
    /// Memories held per tenant.
    tenants: HashMap<Name, usize, RandomState>,
    /// Whether a memory whose row id does not fit the lists' 4 bytes was ever held: it is
    /// not listed, so the lists no longer answer filters ([`FieldMap::passing`] says so
    /// and its callers list through SQLite). SQLite gives row ids one after the other, so
    /// this takes 4 billion inserts.
    wide: bool,
}

impl<T> Default for FieldMap<T> {
    fn default() -> Self {
        FieldMap {
            rows: Vec::new(),
            slots: KeySlots::new(),
            lists: HashMap::default(),
            tenants: HashMap::default(),
            wide: false,
        }
    }
}

/// A row id as a [`KeySlots`] key (row ids are positive; any other goes to its hash map).
fn key(rid: i64) -> u64 {
    rid as u64
}

/// Each (field, value) `f` is listed under.
fn listed(f: &Fields) -> impl Iterator<Item = (usize, u32)> + '_ {
    f.scope
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != 0)
        .map(|(field, n)| (field, *n))
        .chain([(TYPE, f.memory_type as u32), (SOURCE, f.source as u32)])
        .chain(f.tags.iter().map(|t| (TAG, *t)))
}

impl<T: HasFields> FieldMap<T> {
    pub fn get(&self, rid: &i64) -> Option<&T> {
        self.slots.get(key(*rid)).map(|i| &self.rows[i as usize].1)
    }

    pub fn contains_key(&self, rid: &i64) -> bool {
        self.slots.contains(key(*rid))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// How many of the memories of the tenant named `tenant` are held.
    pub fn tenant_len(&self, tenant: Name) -> usize {
        self.tenants.get(&tenant).copied().unwrap_or(0)
    }

    /// Gives back spare capacity: call after loading many memories.
    pub fn shrink_to_fit(&mut self) {
        self.rows.shrink_to_fit();
        self.slots.shrink_to_fit();
        for lists in self.lists.values_mut() {
            for by_value in lists.iter_mut() {
                by_value.values_mut().for_each(Vec::shrink_to_fit);
                by_value.shrink_to_fit();
            }
        }
    }

    pub fn insert(&mut self, rid: i64, row: T) -> Option<T> {
        // A memory refreshed with the same listed fields (a new vector, new content) keeps
        // its list entries: removing one costs a scan of the list.
        if let Some(i) = self.slots.get(key(rid)) {
            let old = &mut self.rows[i as usize].1;
            let (was, is) = (old.fields(), row.fields());
            if was.tenant == is.tenant && listed(was).eq(listed(is)) {
                return Some(std::mem::replace(old, row));
            }
        }
        let old = self.remove(&rid);
        let f = row.fields();
        *self.tenants.entry(f.tenant).or_default() += 1;
        match u32::try_from(rid) {
            Ok(listed_rid) => {
                let lists = self.lists.entry(f.tenant).or_default();
                for (field, value) in listed(f) {
                    lists[field].entry(value).or_default().push(listed_rid);
                }
            }
            Err(_) => self.wide = true,
        }
        let slot = u32::try_from(self.rows.len()).expect("fewer than 2^32 memories held");
        self.rows.push((rid, row));
        self.slots.insert(key(rid), slot);
        old
    }

    pub fn remove(&mut self, rid: &i64) -> Option<T> {
        let i = self.slots.remove(key(*rid))? as usize;
        let (_, row) = self.rows.swap_remove(i);
        if let Some((moved, _)) = self.rows.get(i) {
            self.slots.insert(key(*moved), i as u32);
        }
        let f = row.fields();
        if let Some(n) = self.tenants.get_mut(&f.tenant) {
            *n -= 1;
            if *n == 0 {
                self.tenants.remove(&f.tenant);
            }
        }
        let listed_rid = u32::try_from(*rid).ok();
        if let (Some(lists), Some(rid)) = (self.lists.get_mut(&f.tenant), listed_rid) {
            for (field, value) in listed(f) {
                if let Some(list) = lists[field].get_mut(&value) {
                    if let Some(i) = list.iter().rposition(|r| *r == rid) {
                        list.swap_remove(i);
                    }
                    if list.is_empty() {
                        lists[field].remove(&value);
                    }
                }
            }
            if lists.iter().all(HashMap::is_empty) {
                self.lists.remove(&f.tenant);
            }
        }
        Some(row)
    }

    /// For a filter with conditions the fields do not hold ([`needs_sql`]): the row ids of
    /// the memories that pass its other conditions (resolved as `f`), for SQLite to check
    /// the rest on ([`filter_rids`]). `None` when no condition has a posting list, or more
    /// than [`HELD_PART_MAX`] pass.
    pub fn held_part(&self, filter: &MemoryFilter, f: &Resolved) -> Option<Vec<i64>> {
        if !needs_sql(filter) {
            return None;
        }
        let held = MemoryFilter {
            metadata: Vec::new(),
            embedding_status: None,
            ..filter.clone()
        };
        self.passing(&held, f, HELD_PART_MAX).flatten()
    }

    /// The row ids of the memories that pass `filter` (resolved as `f`): `Some(Some(rids))`
    /// when at most `max` pass, `Some(None)` when more do, `None` when no equality
    /// condition of `filter` has a list here, or it has conditions in [`needs_sql`] (the
    /// caller then lists through SQLite).
    pub fn passing(
        &self,
        filter: &MemoryFilter,
        f: &Resolved,
        max: usize,
    ) -> Option<Option<Vec<i64>>> {
        if needs_sql(filter) || self.wide {
            return None;
        }
        // No list of this tenant's: nothing of theirs is held, and every list is empty.
        let lists = self.lists.get(&f.tenant);
        let empty: &[u32] = &[];
        let list = |field: usize, value: u32| -> &[u32] {
            lists
                .and_then(|l| l[field].get(&value))
                .map_or(empty, Vec::as_slice)
        };
        // Several types: their lists together (a memory has one type, so they are
        // disjoint).
        let mut types: Vec<u32> = f.memory_types.iter().map(|t| *t as u32).collect();
        types.sort_unstable();
        types.dedup();
        let types: Vec<&[u32]> = types.into_iter().map(|t| list(TYPE, t)).collect();
        let shortest: Vec<&[u32]> = f
            .scope
            .iter()
            .enumerate()
            .filter_map(|(field, v)| v.map(|v| vec![list(field, v)]))
            .chain((!types.is_empty()).then_some(types))
            .chain(f.source.map(|s| vec![list(SOURCE, s as u32)]))
            .chain(f.tags.iter().map(|t| vec![list(TAG, *t)]))
            .min_by_key(|lists| lists.iter().map(|l| l.len()).sum::<usize>())?;
        let mut out = Vec::new();
        for &rid in shortest.into_iter().flatten() {
            let rid = i64::from(rid);
            if self.get(&rid).is_some_and(|r| r.fields().matches(f)) {
                if out.len() == max {
                    return Some(None);
                }
                out.push(rid);
            }
        }
        Some(Some(out))
    }
}

impl<T> std::ops::Index<&i64> for FieldMap<T> {
    type Output = T;
    fn index(&self, rid: &i64) -> &T {
        let slot = self.slots.get(key(*rid)).expect("a row id held");
        &self.rows[slot as usize].1
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    struct Row(Fields);
    impl HasFields for Row {
        fn fields(&self) -> &Fields {
            &self.0
        }
    }

    /// A small deterministic generator (xorshift64*), for this crate's randomised tests.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
        }
        /// [`Rng::below`] for positions.
        pub fn index(&mut self, n: usize) -> usize {
            self.below(n as u64) as usize
        }
        /// One of `values`, or none (one time in `values.len() + 1`).
        pub fn pick(&mut self, values: &[&str]) -> Option<String> {
            let i = self.below(values.len() as u64 + 1) as usize;
            values.get(i).map(|v| v.to_string())
        }
    }

    const TYPES: [MemoryType; 3] = [MemoryType::Note, MemoryType::Fact, MemoryType::Task];
    const SOURCES: [Source; 2] = [Source::Chat, Source::Manual];

    fn fields(rng: &mut Rng, names: &Interner) -> Fields {
        let mut scope = [0; 5];
        let values: [&[&str]; 5] = [
            &["u1", "u2", "u3"],
            &["a1", "a2"],
            &["p1"],
            &["d1", "d2"],
            &["s1", "s2", "s3", "s4"],
        ];
        for (n, values) in scope.iter_mut().zip(values) {
            *n = names.opt(rng.pick(values));
        }
        Fields {
            id: MemoryId::new(),
            tenant: names.intern(["t1", "t2"][rng.below(2) as usize]),
            scope,
            memory_type: TYPES[rng.below(3) as usize],
            source: SOURCES[rng.below(2) as usize],
            created_at: rng.below(1_000) as i64,
            tags: ["x", "y", "z"]
                .into_iter()
                .filter(|_| rng.below(2) == 0)
                .map(|t| names.intern(t))
                .collect(),
        }
    }

    /// `f` checked the slow way, on the strings: the reference the names must agree with.
    fn matches_by_string(names: &Interner, have: &Fields, tenant: &str, f: &MemoryFilter) -> bool {
        let s = |n: Name| names.name(n);
        let eq = |want: &Option<String>, n: Name| {
            want.as_deref().is_none_or(|w| s(n).as_deref() == Some(w))
        };
        s(have.tenant).as_deref() == Some(tenant)
            && eq(&f.user_id, have.scope[0])
            && eq(&f.agent_id, have.scope[1])
            && eq(&f.project, have.scope[2])
            && eq(&f.domain, have.scope[3])
            && eq(&f.session_id, have.scope[4])
            && (f.memory_types.is_empty() || f.memory_types.contains(&have.memory_type))
            && f.source.is_none_or(|x| x == have.source)
            && f.created_after
                .is_none_or(|t| have.created_at > to_micros(t))
            && f.created_before
                .is_none_or(|t| have.created_at < to_micros(t))
            && f.tags.iter().all(|t| {
                have.tags
                    .iter()
                    .any(|x| s(*x).as_deref() == Some(t.as_str()))
            })
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
        let names = Interner::default();
        let mut map: FieldMap<Row> = FieldMap::default();
        // What the map should hold: row id → memory id.
        let mut model: HashMap<i64, MemoryId> = HashMap::new();
        for round in 0..20 {
            for _ in 0..100 {
                // Row ids collide often: replacements as well as inserts.
                let rid = rng.below(600) as i64;
                let f = fields(&mut rng, &names);
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
            for t in ["t1", "t2"] {
                let n = names.lookup(t).expect("interned");
                let held = map.rows.iter().filter(|(_, r)| r.0.tenant == n).count();
                assert_eq!(map.tenant_len(n), held);
            }
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
                        tenant: f.tenant,
                        scope: f.scope,
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
                    .filter(|(_, r)| matches_by_string(&names, &r.0, tenant, &f))
                    .map(|(rid, _)| *rid)
                    .collect();
                want.sort_unstable();
                let listed = f.user_id.is_some()
                    || f.agent_id.is_some()
                    || f.project.is_some()
                    || f.domain.is_some()
                    || f.session_id.is_some()
                    || !f.memory_types.is_empty()
                    || f.source.is_some()
                    || !f.tags.is_empty();
                let resolved = names.resolve(tenant, &f);
                // The names agree with the strings for every held memory.
                for (_, r) in &map.rows {
                    assert_eq!(
                        resolved.as_ref().is_some_and(|q| r.0.matches(q)),
                        matches_by_string(&names, &r.0, tenant, &f)
                    );
                }
                // A filter naming a string never interned: nothing passes (callers stop
                // there).
                let Some(resolved) = resolved else {
                    assert!(want.is_empty());
                    continue;
                };
                let got = map.passing(&f, &resolved, max).map(|rids| {
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
        assert!(map.tenants.is_empty());
    }

    /// A row id past 4 bytes is held and found by id, but the lists no longer answer
    /// filters (callers then list through SQLite) rather than miss it.
    #[test]
    fn a_row_id_past_four_bytes_turns_the_lists_off() {
        let mut rng = Rng(7);
        let names = Interner::default();
        let mut map: FieldMap<Row> = FieldMap::default();
        let f = fields(&mut rng, &names);
        let (tenant, memory_type) = (f.tenant, f.memory_type);
        let filter = MemoryFilter {
            memory_types: vec![memory_type],
            ..MemoryFilter::default()
        };
        let tenant_name = names.name(tenant).expect("interned");
        let wanted = names.resolve(&tenant_name, &filter).expect("resolved");
        map.insert(1, Row(f));
        assert_eq!(map.passing(&filter, &wanted, 10), Some(Some(vec![1])));

        let mut far = fields(&mut rng, &names);
        (far.tenant, far.memory_type) = (tenant, memory_type);
        let far_rid = i64::from(u32::MAX) + 1;
        map.insert(far_rid, Row(far));
        assert!(map.get(&far_rid).is_some());
        assert_eq!(map.tenant_len(tenant), 2);
        assert_eq!(map.passing(&filter, &wanted, 10), None);
        assert_eq!(map.remove(&far_rid).map(|r| r.0.tenant), Some(tenant));
        assert_eq!(map.tenant_len(tenant), 1);
    }
}
