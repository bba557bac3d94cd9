//! Keyword search of embedded mode: an in-memory BM25 index (`engram_index::keyword`)
//! over the content, title and tags of live memories, kept in step with the database.
//!
//! Derived state, never saved: it is built from `memories` by the first search (or the
//! store's upkeep thread, shortly after open) and followed from then on through two
//! feeds, both read before each search so that a write is keyword-searchable as soon as
//! it is acknowledged: memories with a row id above the highest it has seen (inserts; one
//! writer assigns row ids in commit order), and `ann_log`, where triggers record every
//! memory whose text, deletion or filterable fields changed. Each memory named is re-read
//! whole, so replaying a change twice is harmless. `ann_log` is truncated only up to what
//! this index has applied; when another process truncated past it (`ann_log_floor` says
//! how far the log was cut), the index is rebuilt.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, RwLock};

use foldhash::fast::RandomState;

use engram_core::filter::{ListQuery, ListResult, Position, SortBy, SortOrder};
use engram_core::time::{from_micros, Timestamp};
use engram_core::{MemoryFilter, MemoryId, RerankFields, Scored, StoreError};
use engram_index::keyword::{Bm25Params, KeywordIndex};
use rusqlite::types::Value;
use rusqlite::Connection;

use crate::attrs::{
    fields_of, filter_rids, needs_sql, rows_passing, FieldMap, Fields, HasFields, Interner, Name,
    COLUMNS,
};
use crate::db_err;

/// Rows read per statement while building or catching up.
const CHUNK: usize = 5000;

/// A filter with at most this many memories is searched over its candidates, listed from
/// the posting lists (else by SQLite) and scored one by one; a wider one through the postings, with the
/// filter checked for memories that would enter the top k.
const WITHIN_MAX: usize = 10_000;

/// A filtered list ordered by a key the held fields lack (`updated_at`, `accessed_at`), or
/// with conditions they lack (metadata, embedding status), reads each candidate's row
/// from SQLite, one point read each: a filter with more candidates than this is listed
/// through SQLite instead.
const LIST_READ_MAX: usize = 5_000;

/// How far `ann_log` was truncated: entries up to it are gone.
pub(crate) fn log_floor(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("SELECT upto FROM ann_log_floor", [], |r| r.get(0))
        .map_err(db_err)
}

/// The newest `ann_log` entry (or the floor, when the log is empty).
pub(crate) fn log_head(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row(
        "SELECT max(coalesce((SELECT max(seq) FROM ann_log), 0), (SELECT upto FROM ann_log_floor))",
        [],
        |r| r.get(0),
    )
    .map_err(db_err)
}

/// Drops the `ann_log` entries up to `upto` and records the cut.
pub(crate) fn truncate_log(conn: &Connection, upto: i64) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
    let done = conn
        .execute("DELETE FROM ann_log WHERE seq <= ?1", [upto])
        .and_then(|_| conn.execute("UPDATE ann_log_floor SET upto = max(upto, ?1)", [upto]))
        .and_then(|_| conn.execute_batch("COMMIT"));
    if let Err(e) = done {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(db_err(e));
    }
    Ok(())
}

/// What the index holds of one live memory: its filterable fields and what the
/// re-ranker reads (its session is among the fields).
struct Held {
    fields: Fields,
    speaker: Name,
    words: u32,
    question: bool,
    valid_from: Option<Timestamp>,
}

impl HasFields for Held {
    fn fields(&self) -> &Fields {
        &self.fields
    }
}

struct State {
    index: KeywordIndex,
    /// Names the strings of `held`.
    names: Arc<Interner>,
    /// Every live memory indexed, by row id.
    held: FieldMap<Held>,
    /// Row ids by memory id.
    rids: RidsById,
    /// The highest row id read from `memories`.
    max_rid: i64,
    /// The last `ann_log` entry applied.
    applied_seq: i64,
}

/// One memory's current state, as read for the index.
struct Doc {
    rid: i64,
    /// Not deleted.
    live: bool,
    fields: Fields,
    content: String,
    title: String,
    speaker: Option<String>,
    valid_from: Option<i64>,
}

impl State {
    fn put(&mut self, d: Doc) {
        let names = &self.names;
        // The tags as `fields_of` parsed them, one word list.
        let tags = d
            .fields
            .tag_names()
            .iter()
            .filter_map(|t| names.name(*t))
            .collect::<Vec<_>>()
            .join(" ");
        self.index
            .upsert(d.rid as u64, &[&d.content, &d.title, &tags]);
        let counted = RerankFields::new(None, None, None, &d.content);
        let id = d.fields.id;
        let held = Held {
            fields: d.fields,
            speaker: d.speaker.map_or(0, |s| names.intern(&s)),
            words: counted.words,
            question: counted.question,
            valid_from: d.valid_from.map(from_micros),
        };
        if let Some(old) = self.held.insert(d.rid, held) {
            // Same row, same memory: the id of a row never changes.
            debug_assert_eq!(old.fields.id, id);
        } else {
            self.rids.insert(id, d.rid, &self.held);
        }
    }

    fn remove(&mut self, rid: i64) {
        self.index.remove(rid as u64);
        if let Some(old) = self.held.remove(&rid) {
            self.rids.remove(&old.fields.id, rid);
        }
    }

    fn rid_of(&self, id: &MemoryId) -> Option<i64> {
        self.rids.get(id, &self.held)
    }
}

/// Row ids by memory id, for the re-ranker's look-ups. The table holds only row ids (4
/// bytes and a control byte per place, against 25 for a map from the 16-byte id to an
/// 8-byte row id: 10 MB instead of 52 at a million memories); an entry's id is read from
/// the memory the index holds under that row id, for hashing and comparing. A row id
/// past four bytes goes to a map of its own.
#[derive(Default)]
struct RidsById {
    table: hashbrown::HashTable<u32>,
    wide: HashMap<MemoryId, i64, RandomState>,
    hasher: RandomState,
}

impl RidsById {
    fn hash(&self, id: &MemoryId) -> u64 {
        self.hasher.hash_one(id)
    }

    /// `held` holds every row id of the table, and `rid` (the new one) need not be
    /// there yet.
    fn insert(&mut self, id: MemoryId, rid: i64, held: &FieldMap<Held>) {
        let Ok(short) = u32::try_from(rid) else {
            self.wide.insert(id, rid);
            return;
        };
        let hash = self.hash(&id);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, short, |r| held_hash(hasher, held, *r));
    }

    /// `id`'s entry under `rid` (by both: a purged memory's id may come back under a new
    /// row before the old row's removal is applied).
    fn remove(&mut self, id: &MemoryId, rid: i64) {
        match u32::try_from(rid) {
            Ok(short) => {
                if let Ok(entry) = self.table.find_entry(self.hash(id), |r| *r == short) {
                    entry.remove();
                }
            }
            Err(_) => {
                if self.wide.get(id) == Some(&rid) {
                    self.wide.remove(id);
                }
            }
        }
    }

    fn get(&self, id: &MemoryId, held: &FieldMap<Held>) -> Option<i64> {
        let is = |r: &u32| held.get(&i64::from(*r)).is_some_and(|h| h.fields.id == *id);
        match self.table.find(self.hash(id), is) {
            Some(r) => Some(i64::from(*r)),
            None => self.wide.get(id).copied(),
        }
    }

    fn shrink_to_fit(&mut self, held: &FieldMap<Held>) {
        let hasher = &self.hasher;
        self.table.shrink_to_fit(|r| held_hash(hasher, held, *r));
        self.wide.shrink_to_fit();
    }
}

/// The hash of the id of the memory `held` holds under row id `r` (every row id of the
/// table is held; one that were not could not be found, and hashes as 0).
fn held_hash(hasher: &RandomState, held: &FieldMap<Held>, r: u32) -> u64 {
    held.get(&i64::from(r))
        .map_or(0, |h| hasher.hash_one(h.fields.id))
}

/// The SQL expression reading the string under `key` in a memory's metadata (NULL when
/// the key cannot be written as a JSON path literal).
fn speaker_sql(key: &str) -> String {
    if key.is_empty()
        || key
            .chars()
            .any(|c| matches!(c, '"' | '\'' | '\\') || c.is_control())
    {
        return "NULL".into();
    }
    // json_extract gives an object or array as its JSON text: only a string is a speaker.
    let path = format!("'$.\"{key}\"'");
    format!(
        "CASE json_type(m.metadata, {path}) WHEN 'text' THEN json_extract(m.metadata, {path}) END"
    )
}

/// Reads memories, deleted ones included (`live` false): `extra` follows the `WHERE`,
/// with `args` from `?1`.
fn read_docs(
    conn: &Connection,
    interner: &Interner,
    speaker_key: &str,
    extra: &str,
    args: &[Value],
) -> Result<Vec<Doc>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, m.content, coalesce(m.title, ''), m.deleted_at IS NULL, {}, \
         m.valid_from FROM memories m WHERE {extra}",
        speaker_sql(speaker_key)
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(args.iter()))
        .map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        out.push(Doc {
            rid: r.get(0).map_err(db_err)?,
            fields: fields_of(r, interner)?,
            content: r.get(12).map_err(db_err)?,
            title: r.get(13).map_err(db_err)?,
            live: r.get(14).map_err(db_err)?,
            // Not a string (a number, an object): no speaker.
            speaker: match r.get(15).map_err(db_err)? {
                Value::Text(t) => Some(t),
                _ => None,
            },
            valid_from: r.get(16).map_err(db_err)?,
        });
    }
    Ok(out)
}

/// The keyword index and what it has applied.
pub(crate) struct Keywords {
    state: RwLock<Option<State>>,
    /// Held while the index is built or catches up.
    sync: Mutex<()>,
    /// The metadata key whose string the re-ranker reads as a memory's speaker.
    speaker_key: String,
}

impl Keywords {
    pub fn new(speaker_key: &str) -> Self {
        Keywords {
            state: RwLock::default(),
            sync: Mutex::default(),
            speaker_key: speaker_key.to_owned(),
        }
    }

    /// What the re-ranker reads of those of `ids` held as live memories of `tenant`,
    /// the speaker under `speaker_key` (none when that is not the key the index holds).
    pub fn rerank_fields(
        &self,
        tenant: &str,
        ids: &[MemoryId],
        speaker_key: &str,
    ) -> HashMap<MemoryId, RerankFields> {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        let Some(st) = guard.as_ref().filter(|_| speaker_key == self.speaker_key) else {
            return HashMap::new();
        };
        let Some(tenant) = st.names.lookup(tenant) else {
            return HashMap::new();
        };
        ids.iter()
            .filter_map(|id| {
                let held = st.held.get(&st.rid_of(id)?)?;
                (held.fields.tenant() == tenant).then(|| {
                    let fields = RerankFields {
                        session: st.names.name(held.fields.session_id()),
                        speaker: st.names.name(held.speaker),
                        valid_from: held.valid_from,
                        words: held.words,
                        question: held.question,
                    };
                    (*id, fields)
                })
            })
            .collect()
    }

    /// The row id the index holds for each of `ids`, if any (as of its last catch-up:
    /// a reader checks the row it finds).
    pub fn rids_of(&self, ids: &[MemoryId]) -> Vec<Option<i64>> {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(st) => ids.iter().map(|id| st.rid_of(id)).collect(),
            None => vec![None; ids.len()],
        }
    }

    /// The last `ann_log` entry applied, once the index is built: the log may be truncated
    /// up to it.
    pub fn applied_seq(&self) -> Option<i64> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.applied_seq)
    }

    /// Live memories indexed (0 before the first build).
    pub fn len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |s| s.index.len())
    }

    /// Builds the index from every live memory.
    fn build(&self, conn: &Connection) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        // Changes from here on are replayed after the build.
        let applied_seq = log_head(conn)?;
        let mut st = State {
            index: KeywordIndex::new(),
            names: Arc::default(),
            held: FieldMap::default(),
            rids: RidsById::default(),
            max_rid: 0,
            applied_seq,
        };
        loop {
            let docs = read_docs(
                conn,
                &st.names,
                &self.speaker_key,
                &format!("m.rid > ?1 ORDER BY m.rid LIMIT {CHUNK}"),
                &[Value::Integer(st.max_rid)],
            )?;
            let Some(last) = docs.last().map(|d| d.rid) else {
                break;
            };
            st.max_rid = last;
            for d in docs.into_iter().filter(|d| d.live) {
                st.put(d);
            }
        }
        st.index.shrink_to_fit();
        st.held.shrink_to_fit();
        st.rids.shrink_to_fit(&st.held);
        tracing::info!(
            memories = st.index.len(),
            secs = started.elapsed().as_secs_f64(),
            "keyword index ready"
        );
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Some(st);
        Ok(())
    }

    /// Builds the index if it is not built, then applies what changed since.
    pub fn catch_up(&self, conn: &Connection) -> Result<(), StoreError> {
        let _sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let at = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| (s.max_rid, s.applied_seq, s.names.clone()));
        let Some((max_rid, applied, names)) = at else {
            return self.build(conn);
        };
        if log_floor(conn)? > applied {
            tracing::info!("the change log was truncated past the keyword index; rebuilding it");
            return self.build(conn);
        }
        // Changed memories, from the log.
        let mut from = applied;
        loop {
            let entries: Vec<(i64, i64)> = conn
                .prepare_cached(&format!(
                    "SELECT seq, rid FROM ann_log WHERE seq > ?1 ORDER BY seq LIMIT {CHUNK}"
                ))
                .and_then(|mut s| {
                    s.query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err)?;
            let Some(&(last, _)) = entries.last() else {
                break;
            };
            let mut rids: Vec<i64> = entries.into_iter().map(|(_, r)| r).collect();
            rids.sort_unstable();
            rids.dedup();
            self.refresh(conn, &names, &rids, last)?;
            from = last;
        }
        // New memories.
        let mut after = max_rid;
        loop {
            let docs = read_docs(
                conn,
                &names,
                &self.speaker_key,
                &format!("m.rid > ?1 ORDER BY m.rid LIMIT {CHUNK}"),
                &[Value::Integer(after)],
            )?;
            let Some(last) = docs.last().map(|d| d.rid) else {
                return Ok(());
            };
            after = last;
            let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
            let Some(st) = guard.as_mut() else {
                return Ok(());
            };
            st.max_rid = st.max_rid.max(last);
            for d in docs.into_iter().filter(|d| d.live) {
                st.put(d);
            }
        }
    }

    /// Brings the given memories to their current state and records `seq` as applied.
    fn refresh(
        &self,
        conn: &Connection,
        names: &Interner,
        rids: &[i64],
        seq: i64,
    ) -> Result<(), StoreError> {
        let mut docs = Vec::new();
        for chunk in rids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("?{i}")).collect();
            let args: Vec<Value> = chunk.iter().map(|r| Value::Integer(*r)).collect();
            docs.extend(read_docs(
                conn,
                names,
                &self.speaker_key,
                &format!("m.rid IN ({})", marks.join(", ")),
                &args,
            )?);
        }
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        let Some(st) = guard.as_mut() else {
            return Ok(());
        };
        let live: HashSet<i64> = docs.iter().filter(|d| d.live).map(|d| d.rid).collect();
        for rid in rids.iter().filter(|r| !live.contains(r)) {
            st.remove(*rid);
        }
        for d in docs.into_iter().filter(|d| d.live) {
            st.put(d);
        }
        st.applied_seq = st.applied_seq.max(seq);
        Ok(())
    }

    /// A page of the list `q` of `tenant`'s memories, from the fields this index holds:
    /// the filter's candidates come from the posting lists, are counted, ordered and paged
    /// here, and only the page's memories are read from SQLite. Conditions the fields do
    /// not hold ([`needs_sql`]: metadata, embedding status) are checked on the rows of the
    /// candidates of the others. `None` (the caller lists through SQLite) when the index
    /// is not built (a list never builds it), when the filter has no condition with a
    /// posting list (a tenant's whole list is SQLite's `memories_created`), and when more
    /// than [`LIST_READ_MAX`] candidates would each be read from SQLite (for such
    /// conditions, or a sort key the fields lack).
    ///
    /// The order is SQLite's: by the sort key, then by the id's bytes, both in the asked
    /// direction; a cursor resumes strictly after its (key, id).
    pub fn list(
        &self,
        conn: &Connection,
        tenant: &str,
        q: &ListQuery,
    ) -> Result<Option<ListResult>, StoreError> {
        let built = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !built {
            return Ok(None);
        }
        self.catch_up(conn)?;
        // Conditions checked on the rows, for the candidates of the others.
        let sql_checks = needs_sql(&q.filter);
        // (sort key, id, row id) of every candidate.
        let mut keyed: Vec<(i64, [u8; 16], i64)> = {
            let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
            let Some(st) = guard.as_ref() else {
                return Ok(None);
            };
            let Some(wanted) = st.names.resolve(tenant, &q.filter) else {
                // A value no memory held here ever had: nothing passes.
                return Ok(Some(ListResult {
                    items: Vec::new(),
                    total: 0,
                    has_more: false,
                }));
            };
            let rids = if sql_checks {
                st.held.held_part(&q.filter, &wanted)
            } else {
                st.held.passing(&q.filter, &wanted, usize::MAX).flatten()
            };
            let Some(rids) = rids else {
                return Ok(None);
            };
            if (sql_checks || q.sort_by != SortBy::CreatedAt) && rids.len() > LIST_READ_MAX {
                return Ok(None);
            }
            rids.into_iter()
                .map(|rid| {
                    let f = &st.held[&rid].fields;
                    (f.created_at(), *f.id.as_bytes(), rid)
                })
                .collect()
        };
        if sql_checks || q.sort_by != SortBy::CreatedAt {
            // One read of each candidate's row: the conditions the fields lack, and the
            // sort key. A memory deleted since the index caught up is gone from the list.
            let rids: Vec<i64> = keyed.iter().map(|k| k.2).collect();
            let col = crate::sort_column(q.sort_by);
            let keys: HashMap<i64, i64> =
                rows_passing(conn, tenant, &q.filter, &rids, col, usize::MAX)?
                    .into_iter()
                    .collect();
            keyed.retain_mut(|k| keys.get(&k.2).map(|v| k.0 = *v).is_some());
        }
        let total = keyed.len() as u64;
        let ord = |a: &(i64, [u8; 16], i64), b: &(i64, [u8; 16], i64)| {
            let o = (a.0, a.1).cmp(&(b.0, b.1));
            match q.sort_order {
                SortOrder::Asc => o,
                SortOrder::Desc => o.reverse(),
            }
        };
        let skip = match q.position {
            Position::Page(p) => p.saturating_sub(1) as usize * q.per_page as usize,
            Position::After { sort_key, id, .. } => {
                let at = (sort_key, *id.as_bytes(), 0);
                keyed.retain(|k| ord(k, &at) == std::cmp::Ordering::Greater);
                0
            }
        };
        // The page and one more (whether another page follows), in order.
        let want = skip.saturating_add(q.per_page as usize + 1);
        if keyed.len() > want {
            keyed.select_nth_unstable_by(want, ord);
            keyed.truncate(want);
        }
        keyed.sort_unstable_by(ord);
        let (page, rids): (Vec<MemoryId>, Vec<Option<i64>>) = keyed
            .iter()
            .skip(skip)
            .take(q.per_page as usize)
            .map(|k| (MemoryId::from_bytes(&k.1).expect("16 bytes"), Some(k.2)))
            .unzip();
        let has_more = keyed.len() > skip.saturating_add(q.per_page as usize);
        let mut found: HashMap<MemoryId, engram_core::Memory> =
            crate::search::get_many(conn, tenant, &page, &rids)?
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
        // A memory changed since the index caught up is checked once more.
        let items = page
            .iter()
            .filter_map(|id| found.remove(id))
            .filter(|m| q.filter.matches(m))
            .collect();
        Ok(Some(ListResult {
            items,
            total,
            has_more,
        }))
    }

    /// [`FieldMap::held_part`] of the held fields, for tests.
    #[cfg(test)]
    pub(crate) fn held_part(&self, tenant: &str, filter: &MemoryFilter) -> Option<Vec<i64>> {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        let st = guard.as_ref()?;
        st.held
            .held_part(filter, &st.names.resolve(tenant, filter)?)
    }

    /// The best `limit` live memories of `tenant` passing `filter` for the query `words`,
    /// best first.
    pub fn search(
        &self,
        conn: &Connection,
        tenant: &str,
        words: &[String],
        filter: &MemoryFilter,
        limit: u32,
        bm25: engram_core::Bm25,
    ) -> Result<Vec<Scored>, StoreError> {
        self.catch_up(conn)?;
        if words.is_empty() {
            return Ok(Vec::new());
        }
        // A selective filter's candidates, when one of its conditions has a posting list
        // held in memory (see `within` below).
        let (tenant_size, held, part, wanted) = {
            let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
            let Some(st) = guard.as_ref() else {
                return Ok(Vec::new());
            };
            // A filter naming a value no memory held here ever had passes none.
            let Some(wanted) = st.names.resolve(tenant, filter) else {
                return Ok(Vec::new());
            };
            (
                st.held.tenant_len(wanted.tenant),
                st.held.passing(filter, &wanted, WITHIN_MAX),
                st.held.held_part(filter, &wanted),
                (st.names.clone(), wanted),
            )
        };
        if tenant_size == 0 {
            return Ok(Vec::new());
        }
        let only_tenant = *filter == MemoryFilter::default();
        let list = |limit| filter_rids(conn, tenant, filter, limit, part.as_deref());
        // A selective filter: its candidates (from the posting lists, else from SQLite),
        // scored one by one.
        let within = if only_tenant && tenant_size > WITHIN_MAX {
            None
        } else if let Some(held) = held {
            held
        } else {
            Some(list(Some(WITHIN_MAX + 1))?).filter(|rids| rids.len() <= WITHIN_MAX)
        };
        // Otherwise conditions the in-memory fields cannot answer: every candidate.
        let candidates: Option<HashSet<i64>> = match within {
            None if needs_sql(filter) => Some(list(None)?.into_iter().collect()),
            _ => None,
        };
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        let Some(st) = guard.as_ref() else {
            return Ok(Vec::new());
        };
        // Rebuilt meanwhile (by another search's catch-up): its names are new.
        let wanted = match wanted {
            (names, wanted) if Arc::ptr_eq(&names, &st.names) => wanted,
            _ => match st.names.resolve(tenant, filter) {
                Some(w) => w,
                None => return Ok(Vec::new()),
            },
        };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let params = Bm25Params {
            k1: bm25.k1,
            b: bm25.b,
        };
        let hits = match within {
            Some(rids) => {
                let keys: Vec<u64> = rids.into_iter().map(|r| r as u64).collect();
                st.index
                    .search_within(&words, params, limit as usize, &keys)
            }
            None if only_tenant && tenant_size == st.held.len() => {
                st.index.search(&words, params, limit as usize, None)
            }
            None => {
                let pass = |key: u64| {
                    let rid = key as i64;
                    st.held.get(&rid).is_some_and(|h| h.fields.matches(&wanted))
                        && candidates.as_ref().is_none_or(|c| c.contains(&rid))
                };
                st.index.search(&words, params, limit as usize, Some(&pass))
            }
        };
        Ok(hits
            .into_iter()
            .filter_map(|(key, score)| {
                st.held.get(&(key as i64)).map(|h| Scored {
                    id: h.fields.id,
                    score,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: MemoryId) -> Held {
        Held {
            fields: Fields::of(id, 1),
            speaker: 0,
            words: 0,
            question: false,
            valid_from: None,
        }
    }

    /// Random inserts and removals against a plain map; row ids past four bytes; a purged
    /// memory's id back under a new row before the old row's removal is applied.
    #[test]
    fn rids_by_id_follows_a_plain_map() {
        let mut held: FieldMap<Held> = FieldMap::default();
        let mut rids = RidsById::default();
        let mut model: HashMap<MemoryId, i64> = HashMap::new();
        let mut live: Vec<(MemoryId, i64)> = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut rid = 0i64;
        let mut put = |held: &mut FieldMap<Held>, rids: &mut RidsById, id: MemoryId| {
            rid += if rid == 2_000 { 1 << 32 } else { 1 };
            assert!(held.insert(rid, self::held(id)).is_none());
            rids.insert(id, rid, held);
            rid
        };
        for step in 0..20_000 {
            match next() % 10 {
                0..=5 => {
                    let id = MemoryId::new();
                    let r = put(&mut held, &mut rids, id);
                    model.insert(id, r);
                    live.push((id, r));
                }
                6..=8 if !live.is_empty() => {
                    let (id, r) = live.swap_remove((next() % live.len() as u64) as usize);
                    let old = held.remove(&r).unwrap();
                    rids.remove(&old.fields.id, r);
                    model.remove(&id);
                }
                _ if !live.is_empty() => {
                    // The same id under a new row, then the old row removed.
                    let at = (next() % live.len() as u64) as usize;
                    let (id, old_rid) = live[at];
                    let r = put(&mut held, &mut rids, id);
                    held.remove(&old_rid).unwrap();
                    rids.remove(&id, old_rid);
                    live[at] = (id, r);
                    model.insert(id, r);
                }
                _ => {}
            }
            if step % 5_000 == 0 {
                rids.shrink_to_fit(&held);
            }
        }
        assert!(!rids.wide.is_empty() && !rids.table.is_empty());
        assert_eq!(rids.table.len() + rids.wide.len(), model.len());
        for (id, r) in &model {
            assert_eq!(rids.get(id, &held), Some(*r));
        }
        assert_eq!(rids.get(&MemoryId::new(), &held), None);
    }
}
