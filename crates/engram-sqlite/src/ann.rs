//! The in-process ANN index of embedded mode: an HNSW graph (`engram-index`) over the
//! active model's vectors, kept in step with the database through `ann_log`.
//!
//! Derived state, rebuilt whenever it cannot be trusted. Triggers append the row id of
//! every memory whose vectors, deletion or filterable fields change to `ann_log`, in the
//! transaction that changes them. Before each search the index applies the log after the
//! last sequence number it saw, re-reading each named memory's current state (so replaying
//! a record twice is harmless). It saves itself every few seconds when it changed, records
//! the sequence number the save covers beside the graph, and truncates the log up to it.
//! At start it opens the saved graph and replays the log after that number; a missing,
//! corrupt or other-model graph is rebuilt from `memory_vectors`.
//!
//! A vector's key is `rid << 8 | window`; window 255 is the memory's context vector (its
//! session window), whose similarity is mixed with the best window's. Filters are applied inside the graph walk with
//! each memory's filterable fields held in memory; a selective filter (few candidates, as
//! listed from the posting lists held beside them, else by SQLite) is searched exactly
//! over its candidates instead.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use engram_core::{MemoryFilter, MemoryId, ModelInfo, Nearest, NearestFor, Scored, StoreError};
use engram_index::{Hit, IndexConfig, IndexError, Quantization, Sketch, SketchQuery, VectorIndex};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::attrs::{fields_of, filter_rids, needs_sql, FieldMap, Fields, HasFields, Interner};
use crate::{db_err, SqliteConfig};

/// Candidates up to which a filtered search is exact.
pub const EXACT_MAX: usize = 10_000;
/// The most keys of a search over i8 vectors scored again against the store's f32 vectors,
/// unless configured otherwise: those of the memories around the caller's cut whose side
/// of it the rounding leaves open ([`unsettled`]; about four keys of a MiniLM search).
/// Scoring the best 16 keys again took semantic recall@10 at a million real MiniLM vectors
/// from 0.983 to 0.987 and filtered recall to 1.0 (docs/benchmarks.md); the keys the
/// rounding leaves open are what changed it.
pub const RESCORE: usize = 16;
/// An exact search over a filter's candidates scores exactly only the `SHORTLIST × k`
/// (at least [`SHORTLIST_MIN`]) whose sketches score best, unless configured otherwise:
/// with the 100 keys a search asks for, the top 10 of 1,000 or 10,000 real MiniLM
/// candidates were always among the best 300 sketches (docs/benchmarks.md).
pub const SHORTLIST: usize = 3;
/// The fewest candidates a shortlist keeps.
pub const SHORTLIST_MIN: usize = 200;
/// Windows per memory the index holds (longer texts are matched on their first ones).
const MAX_WINDOWS: i64 = 255;
/// The window number of a memory's context vector.
const CONTEXT_WINDOW: i64 = 255;
const STATE_VERSION: u32 = 1;

fn key(rid: i64, window: i64) -> u64 {
    ((rid as u64) << 8) | (window as u64 & 0xff)
}

fn rid_of(key: u64) -> i64 {
    (key >> 8) as i64
}

/// Scores `hits` again against the f32 vectors the store holds. The graph keeps i8
/// vectors, whose rounding moves similarities by up to a few thousandths ([`Hit::margin`]):
/// enough to swap near ties at the caller's cut, where recall@10 is decided (at a million
/// memories i8 alone returned 98.2 % of the true top 10). One point read per key, so only
/// the keys whose order at the cut the rounding leaves open are read ([`unsettled`]). A
/// key scored again has margin 0; one whose vector is gone keeps its i8 score and margin.
///
/// A first window is read by the row id `vector_row` gives for its memory (one B-tree
/// descent instead of two: the key's unique index, then the table), checked against the
/// key, so a row replaced or renumbered since the index read it is read by its key.
fn rescore<'h>(
    conn: &Connection,
    model_key: &str,
    query: &[f32],
    hits: impl Iterator<Item = &'h mut Hit>,
    vector_row: &dyn Fn(i64) -> Option<i64>,
) -> Result<(), StoreError> {
    if query.iter().all(|x| *x == 0.0) {
        return Ok(());
    }
    // By key alone: a memory changed since the index caught up is scored on whichever of
    // its vectors the row holds now, as a search a moment later would score it.
    let mut by_row = conn
        .prepare_cached(
            "SELECT vector FROM memory_vectors WHERE rowid = ?1 AND rid = ?2 AND model_key = ?3 AND window = 0",
        )
        .map_err(db_err)?;
    let mut window = conn
        .prepare_cached(
            "SELECT vector FROM memory_vectors WHERE rid = ?1 AND model_key = ?2 AND window = ?3",
        )
        .map_err(db_err)?;
    let mut context = conn
        .prepare_cached("SELECT vector FROM context_vectors WHERE rid = ?1 AND model_key = ?2")
        .map_err(db_err)?;
    // Scores `h` on the first row of `rows`; false when there is none.
    let score = |h: &mut Hit, rid: i64, mut rows: rusqlite::Rows<'_>| {
        let Some(row) = rows.next().map_err(db_err)? else {
            return Ok::<_, StoreError>(false);
        };
        let bytes = row
            .get_ref(0)
            .map_err(db_err)?
            .as_blob()
            .map_err(|e| StoreError::Other(format!("stored vector of row {rid}: {e}")))?;
        // One vector of the query's dimension, or not this model's: the score stays.
        if let Some([stored]) =
            engram_core::embed::vectors_from_bytes(bytes, query.len()).as_deref()
        {
            h.similarity = crate::search::cosine(query, stored);
            h.margin = 0.0;
        }
        Ok(true)
    };
    for h in hits {
        let (rid, w) = (rid_of(h.key), (h.key & 0xff) as i64);
        if let Some(row) = vector_row(rid).filter(|_| w == 0) {
            let rows = by_row
                .query(rusqlite::params![row, rid, model_key])
                .map_err(db_err)?;
            if score(h, rid, rows)? {
                continue;
            }
        }
        let rows = if w == CONTEXT_WINDOW {
            context.query(rusqlite::params![rid, model_key])
        } else {
            window.query(rusqlite::params![rid, model_key, w])
        }
        .map_err(db_err)?;
        score(h, rid, rows)?;
    }
    Ok(())
}

/// Each of `rids` scored as its best window of `scored_keys`, mixed by `context_weight`
/// with its context vector's score when `mixing`; a memory with no window scored is left
/// out. In the order of `rids`.
fn memory_scores(
    attrs: &FieldMap<Attrs>,
    rids: &[i64],
    scored_keys: &[Hit],
    mixing: bool,
    context_weight: f32,
) -> Vec<Scored> {
    scored_memories(rids, scored_keys, mixing, context_weight)
        .into_iter()
        .map(|m| Scored {
            id: attrs[&m.rid].f.id,
            score: m.score,
        })
        .collect()
}

/// A memory's score from its keys' scores, how far it may be from its score on the
/// vectors as they were added (the largest margin of the keys it was scored on), and how
/// many keys it was scored on.
#[derive(Clone, Copy, Debug, PartialEq)]
struct MemoryScore {
    rid: i64,
    score: f32,
    margin: f32,
    keys: usize,
}

/// [`memory_scores`] by row id, each with its margin and its number of keys.
fn scored_memories(
    rids: &[i64],
    scored_keys: &[Hit],
    mixing: bool,
    context_weight: f32,
) -> Vec<MemoryScore> {
    // Best window, context score, largest margin, keys.
    let mut best: HashMap<i64, (f32, Option<f32>, f32, usize)> = HashMap::with_capacity(rids.len());
    for h in scored_keys {
        let rid = rid_of(h.key);
        let e = best.entry(rid).or_insert((f32::NEG_INFINITY, None, 0.0, 0));
        if h.key & 0xff == CONTEXT_WINDOW as u64 {
            e.1 = Some(h.similarity);
        } else {
            e.0 = e.0.max(h.similarity);
        }
        e.2 = e.2.max(h.margin);
        e.3 += 1;
    }
    let w = context_weight.clamp(0.0, 1.0);
    rids.iter()
        .filter_map(|rid| {
            let (turn, ctx, margin, keys) = best.get(rid)?;
            let score = match ctx {
                Some(c) if mixing && turn.is_finite() => (1.0 - w) * turn + w * c,
                _ if turn.is_finite() => *turn,
                _ => return None,
            };
            Some(MemoryScore {
                rid: *rid,
                score,
                margin: *margin,
                keys: *keys,
            })
        })
        .collect()
}

/// The memories of `ranked` (best first) whose side of the cut after the first `keep`
/// their rounded scores leave open, nearest the cut first, as many as have at most `cap`
/// keys between them (the memory at the cut always).
///
/// With every score within `m` (the largest margin) of its exact value, and `c` the
/// `keep`-th score: a memory scoring above `c + 2m` is in the exact top `keep` (it is
/// above `c + m` exactly; `keep` memories beating that exactly would all score above `c`
/// rounded, where fewer than `keep` do), and one below `c - 2m` is not (the `keep`
/// memories at or above `c` are all above `c - m` exactly). So scoring the memories in
/// between exactly settles which are the exact top `keep`: those above the window keep
/// their rounded scores, which stay above the exact score of any memory in it that is
/// not among them (at most `c + m`). Empty when the list is no longer than `keep` (no cut
/// in it).
fn unsettled(ranked: &[MemoryScore], keep: usize, cap: usize) -> Vec<i64> {
    if keep == 0 || ranked.len() <= keep {
        return Vec::new();
    }
    let cut = ranked[keep - 1].score;
    let m = ranked.iter().map(|r| r.margin).fold(0f32, f32::max);
    let mut open: Vec<&MemoryScore> = ranked
        .iter()
        .filter(|r| (r.score - cut).abs() <= 2.0 * m)
        .collect();
    open.sort_by(|a, b| (a.score - cut).abs().total_cmp(&(b.score - cut).abs()));
    let mut out = Vec::new();
    let mut reads = 0;
    for r in open {
        reads += r.keys;
        if reads > cap && !out.is_empty() {
            break;
        }
        out.push(r.rid);
    }
    out
}

/// Up to this many vectors, a graph search walks as wide as configured.
const WALK_BASE: usize = 100_000;

/// How wide a graph search of `vectors` walks, for the configured `ef`: as configured up
/// to [`WALK_BASE`] vectors, then wider by `ef` for each tenfold growth (twice at a
/// million). A walk of fixed width finds less of the true top 10 as the graph grows:
/// at a million real MiniLM vectors (i8, 16 re-scored) `ef` 160 gave recall@10 0.9745,
/// 256 gave 0.9845 and 320 gave 0.992 (0.989 in a later store of another machine), where
/// 160 gives 0.9885 at 100,000
/// (docs/benchmarks.md). 0 below the base: the configured `ef` applies as it is.
fn walk_width(ef: usize, vectors: usize) -> usize {
    if vectors <= WALK_BASE {
        return 0;
    }
    let growth = (vectors as f64 / WALK_BASE as f64).log10();
    (ef as f64 * (1.0 + growth)).round() as usize
}

/// The keys of `held` worth scoring exactly against `query`: the first windows of the
/// `keep` memories whose sketches score best, and every key without a sketch (later
/// windows, context vectors, a first window not in the graph). `None` when there are no
/// more than `keep` sketches to choose from.
fn shortlist(held: &[(i64, &Attrs)], query: &[f32], keep: usize) -> Option<Vec<u64>> {
    let sketched: Vec<(i64, &Sketch)> = held
        .iter()
        .filter_map(|(rid, a)| a.sketch.as_ref().map(|s| (*rid, s)))
        .collect();
    if sketched.len() <= keep {
        return None;
    }
    let mut keys: Vec<u64> = SketchQuery::new(query)
        .shortlist(&sketched, keep)
        .into_iter()
        .map(|rid| key(rid, 0))
        .collect();
    for (rid, a) in held {
        let first_sketched = a.sketch.is_some();
        keys.extend(a.keys(*rid).filter(|k| !(first_sketched && k & 0xff == 0)));
    }
    Some(keys)
}

fn index_err(e: IndexError) -> StoreError {
    StoreError::Other(format!("vector index: {e}"))
}

/// A memory in the graph: its filterable fields and which of its vectors are there.
struct Attrs {
    f: Fields,
    windows: u16,
    /// Whether the memory's context vector is in the graph.
    context: bool,
    /// The sketch of the memory's first window, when that is in the graph: exact searches
    /// over many candidates shortlist by it.
    sketch: Option<Sketch>,
    /// The row id of the first window's row in `memory_vectors` when it fits 4 bytes (0:
    /// not known), which rescoring reads it by.
    vector_row: u32,
}

impl HasFields for Attrs {
    fn fields(&self) -> &Fields {
        &self.f
    }
}

impl Attrs {
    /// Every key of the memory in the graph.
    fn keys(&self, rid: i64) -> impl Iterator<Item = u64> + '_ {
        (0..i64::from(self.windows))
            .map(move |w| key(rid, w))
            .chain(self.context.then(|| key(rid, CONTEXT_WINDOW)))
    }
}

/// A nearest-neighbour query: see `SearchIndex::nearest`.
#[derive(Clone, Copy)]
pub struct VectorQuery<'a> {
    pub model: &'a ModelInfo,
    pub vector: &'a [f32],
    pub filter: &'a MemoryFilter,
    pub want: Nearest,
}

/// What a save covers, written beside the graph.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct SavedState {
    version: u32,
    model_key: String,
    dim: usize,
    applied_seq: i64,
}

struct Loaded {
    model_key: String,
    dim: usize,
    index: VectorIndex,
    attrs: RwLock<FieldMap<Attrs>>,
    /// Names the strings of `attrs`.
    interner: Interner,
    applied_seq: AtomicI64,
    saved_seq: AtomicI64,
}

/// The index of the active model, if there is one.
pub struct Ann {
    dir: PathBuf,
    loaded: RwLock<Option<Arc<Loaded>>>,
    /// Held while the log is applied or the index saved.
    sync: Mutex<()>,
    saving: AtomicBool,
    exact_max: usize,
    /// How the graph keeps vectors; a saved graph kept otherwise is rebuilt at open.
    quantization: Quantization,
    /// With i8 vectors, the most keys of an answer ([`NearestFor::Answer`]) scored again
    /// from the f32 vectors: those whose side of the caller's cut the rounding leaves open.
    rescore: usize,
    /// How wide a graph search walks for a list that is the answer
    /// ([`NearestFor::Answer`]), up to [`WALK_BASE`] vectors.
    expansion_search: usize,
    /// How wide it walks for a list that is fused ([`NearestFor::Fusion`]).
    fusion_expansion: usize,
    /// An exact search over a filter's candidates scores exactly only the best
    /// `shortlist × k` (at least [`SHORTLIST_MIN`]) by their sketches (0: all).
    shortlist: usize,
}

const SELECT_ROWS: &str = "SELECT m.rid, m.id, m.tenant, m.user_id, m.agent_id, m.project, m.domain, \
     m.session_id, m.memory_type, m.source, m.created_at, m.tags, v.window, v.vector, v.rowid \
     FROM memories m JOIN memory_vectors v ON v.rid = m.rid AND v.model_key = ?1 AND v.content_hash = m.content_hash \
     WHERE m.deleted_at IS NULL";

fn attrs_of(
    r: &rusqlite::Row<'_>,
    interner: &Interner,
    windows: u16,
    context: bool,
) -> Result<Attrs, StoreError> {
    Ok(Attrs {
        f: fields_of(r, interner)?,
        windows,
        context,
        sketch: None,
        vector_row: 0,
    })
}

/// One memory's current state: its attributes and vectors.
struct Row {
    rid: i64,
    attrs: Attrs,
    vectors: Vec<(i64, Vec<f32>)>,
    context: Option<Vec<f32>>,
}

fn blob_vector(blob: &[u8]) -> Vec<f32> {
    blob.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Adds each row's context vector of the model, if it has one.
fn attach_contexts(
    conn: &Connection,
    model_key: &str,
    dim: usize,
    rows: &mut [Row],
) -> Result<(), StoreError> {
    let mut at: HashMap<i64, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        at.insert(r.rid, i);
    }
    let rids: Vec<i64> = rows.iter().map(|r| r.rid).collect();
    for chunk in rids.chunks(500) {
        let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
        let sql = format!(
            "SELECT rid, vector FROM context_vectors WHERE model_key = ?1 AND rid IN ({})",
            marks.join(", ")
        );
        let mut args = vec![Value::Text(model_key.to_owned())];
        args.extend(chunk.iter().map(|r| Value::Integer(*r)));
        let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
        let mut found = stmt
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(db_err)?;
        while let Some(r) = found.next().map_err(db_err)? {
            let rid: i64 = r.get(0).map_err(db_err)?;
            let blob = r.get_ref(1).map_err(db_err)?;
            let Ok(blob) = blob.as_blob() else { continue };
            if blob.len() != 4 * dim {
                continue;
            }
            if let Some(&i) = at.get(&rid) {
                rows[i].context = Some(blob_vector(blob));
                rows[i].attrs.context = true;
            }
        }
    }
    Ok(())
}

fn read_rows(
    conn: &Connection,
    interner: &Interner,
    model_key: &str,
    dim: usize,
    extra: &str,
    args: Vec<Value>,
) -> Result<Vec<Row>, StoreError> {
    let sql = format!("{SELECT_ROWS} {extra}");
    let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
    let mut all = vec![Value::Text(model_key.to_owned())];
    all.extend(args);
    let mut rows = stmt
        .query(rusqlite::params_from_iter(all.iter()))
        .map_err(db_err)?;
    let mut out: Vec<Row> = Vec::new();
    let corrupt = |what: &str| StoreError::Other(format!("corrupt {what} in memories"));
    while let Some(r) = rows.next().map_err(db_err)? {
        let rid: i64 = r.get(0).map_err(db_err)?;
        let window: i64 = r.get(12).map_err(db_err)?;
        let blob = r.get_ref(13).map_err(db_err)?;
        let blob = blob.as_blob().map_err(|_| corrupt("vector"))?;
        if blob.len() != 4 * dim || window >= MAX_WINDOWS {
            continue;
        }
        let v = blob_vector(blob);
        if out.last().is_some_and(|l| l.rid == rid) {
            let last = out.last_mut().expect("checked");
            last.vectors.push((window, v));
            last.attrs.windows += 1;
            continue;
        }
        let mut attrs = attrs_of(r, interner, 1, false)?;
        if window == 0 {
            attrs.vector_row = u32::try_from(r.get::<_, i64>(14).map_err(db_err)?).unwrap_or(0);
        }
        out.push(Row {
            rid,
            attrs,
            vectors: vec![(window, v)],
            context: None,
        });
    }
    attach_contexts(conn, model_key, dim, &mut out)?;
    Ok(out)
}

impl Loaded {
    fn memories(&self) -> usize {
        self.attrs.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Brings the given memories to their current state in the graph.
    fn refresh(&self, conn: &Connection, rids: &[i64]) -> Result<(), StoreError> {
        for chunk in rids.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
            let extra = format!(
                "AND m.rid IN ({}) ORDER BY m.rid, v.window",
                marks.join(", ")
            );
            let args = chunk.iter().map(|r| Value::Integer(*r)).collect();
            let rows = read_rows(
                conn,
                &self.interner,
                &self.model_key,
                self.dim,
                &extra,
                args,
            )?;
            let present: HashSet<i64> = rows.iter().map(|r| r.rid).collect();
            for rid in chunk.iter().filter(|r| !present.contains(r)) {
                self.remove(*rid)?;
            }
            self.put(rows)?;
        }
        Ok(())
    }

    fn remove(&self, rid: i64) -> Result<(), StoreError> {
        let old = self
            .attrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&rid);
        if let Some(old) = old {
            for k in old.keys(rid) {
                self.index.remove(k).map_err(index_err)?;
            }
        }
        Ok(())
    }

    fn put(&self, rows: Vec<Row>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        for r in &rows {
            // A memory may have fewer windows than before.
            self.remove(r.rid)?;
        }
        let items: Vec<(u64, &[f32])> = rows
            .iter()
            .flat_map(|r| {
                r.vectors
                    .iter()
                    .map(|(w, v)| (key(r.rid, *w), v.as_slice()))
                    .chain(
                        r.context
                            .as_ref()
                            .map(|v| (key(r.rid, CONTEXT_WINDOW), v.as_slice())),
                    )
            })
            .collect();
        self.index.add_batch(&items).map_err(index_err)?;
        // From the graph's copy, as when a saved graph is loaded: the same sketch either
        // way, so results do not change across a restart. Taken before the fields are
        // locked, so no lock is held while another is taken.
        let sketches = rows
            .iter()
            .map(|r| self.index.sketch(key(r.rid, 0)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(index_err)?;
        let mut attrs = self.attrs.write().unwrap_or_else(|p| p.into_inner());
        for (mut r, sketch) in rows.into_iter().zip(sketches) {
            r.attrs.sketch = sketch;
            attrs.insert(r.rid, r.attrs);
        }
        Ok(())
    }
}

fn active_model(conn: &Connection) -> Result<Option<(String, usize)>, StoreError> {
    conn.query_row(
        "SELECT key, dim FROM embedding_models WHERE active = 1",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize)),
    )
    .optional()
    .map_err(db_err)
}

fn log_head(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("SELECT coalesce(max(seq), 0) FROM ann_log", [], |r| {
        r.get(0)
    })
    .map_err(db_err)
}

impl Ann {
    /// The index of the store configured by `cfg`, kept in `dir` (see [`SqliteConfig`]'s
    /// `vector_*` settings and `exact_search_max`).
    pub fn new(dir: &Path, cfg: &SqliteConfig) -> Ann {
        Ann {
            dir: dir.to_path_buf(),
            loaded: RwLock::new(None),
            sync: Mutex::new(()),
            saving: AtomicBool::new(false),
            exact_max: cfg.exact_search_max,
            quantization: cfg.vector_quantization,
            rescore: cfg.vector_rescore,
            expansion_search: cfg.vector_search_expansion,
            fusion_expansion: cfg.vector_hybrid_expansion,
            shortlist: cfg.vector_shortlist,
        }
    }

    fn graph_path(&self) -> PathBuf {
        self.dir.join("vectors.usearch")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("vectors.state.json")
    }

    fn current(&self) -> Option<Arc<Loaded>> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Loads the saved graph of the active model (or rebuilds it) and replays the log.
    /// Returns how many vectors it holds.
    pub fn open(&self, conn: &Connection) -> Result<usize, StoreError> {
        let _sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        self.load(conn)?;
        Ok(self.len())
    }

    fn load(&self, conn: &Connection) -> Result<(), StoreError> {
        let Some((model_key, dim)) = active_model(conn)? else {
            *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = None;
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        let saved: Option<SavedState> = std::fs::read(self.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let usable = saved.as_ref().is_some_and(|s| {
            s.version == STATE_VERSION && s.model_key == model_key && s.dim == dim
        });
        let cfg = IndexConfig {
            expansion_search: self.graph_ef(0),
            ..IndexConfig::new(dim).with_quantization(self.quantization)
        };
        let opened = if usable {
            match VectorIndex::open(&self.graph_path(), cfg) {
                Ok(ix) => Some(ix),
                Err(e) if e.needs_rebuild() => {
                    tracing::warn!(error = %e, "the vector index is unusable; rebuilding it");
                    None
                }
                Err(e) => return Err(index_err(e)),
            }
        } else {
            None
        };
        let (index, from_seq, rebuilt) = match opened {
            Some(ix) => (ix, saved.map_or(0, |s| s.applied_seq), false),
            None => {
                let _ = std::fs::remove_file(self.state_path());
                VectorIndex::remove_files(&self.graph_path()).map_err(index_err)?;
                let ix = VectorIndex::open(&self.graph_path(), cfg).map_err(index_err)?;
                (ix, log_head(conn)?, true)
            }
        };
        let loaded = Arc::new(Loaded {
            model_key: model_key.clone(),
            dim,
            index,
            attrs: RwLock::new(FieldMap::default()),
            interner: Interner::default(),
            applied_seq: AtomicI64::new(from_seq),
            saved_seq: AtomicI64::new(if rebuilt { -1 } else { from_seq }),
        });
        let started = std::time::Instant::now();
        if rebuilt {
            // Every vector of the active model, in chunks.
            let mut after = 0i64;
            loop {
                let rids: Vec<i64> = conn
                    .prepare_cached(
                        "SELECT rid FROM memory_vectors WHERE model_key = ?1 AND window = 0 AND rid > ?2 ORDER BY rid LIMIT 5000",
                    )
                    .and_then(|mut s| {
                        s.query_map(params![model_key, after], |r| r.get(0))?
                            .collect::<Result<Vec<i64>, _>>()
                    })
                    .map_err(db_err)?;
                let Some(&last) = rids.last() else { break };
                after = last;
                let extra = "AND m.rid >= ?2 AND m.rid <= ?3 ORDER BY m.rid, v.window";
                let rows = read_rows(
                    conn,
                    &loaded.interner,
                    &model_key,
                    dim,
                    extra,
                    vec![Value::Integer(rids[0]), Value::Integer(last)],
                )?;
                loaded.put(rows)?;
            }
        } else {
            // The graph is as saved; the filterable fields are read afresh (they are not
            // saved), without the vectors.
            let mut stmt = conn
                .prepare(
                    "SELECT m.rid, m.id, m.tenant, m.user_id, m.agent_id, m.project, m.domain, m.session_id, \
                     m.memory_type, m.source, m.created_at, m.tags, count(*), \
                     EXISTS (SELECT 1 FROM context_vectors c WHERE c.rid = m.rid AND c.model_key = ?1), \
                     min(CASE WHEN v.window = 0 THEN v.rowid END) \
                     FROM memories m JOIN memory_vectors v ON v.rid = m.rid AND v.model_key = ?1 AND v.content_hash = m.content_hash \
                     WHERE m.deleted_at IS NULL GROUP BY m.rid",
                )
                .map_err(db_err)?;
            let mut rows = stmt.query(params![model_key]).map_err(db_err)?;
            let mut attrs = loaded.attrs.write().unwrap_or_else(|p| p.into_inner());
            while let Some(r) = rows.next().map_err(db_err)? {
                let rid: i64 = r.get(0).map_err(db_err)?;
                let windows: i64 = r.get(12).map_err(db_err)?;
                let context: bool = r.get(13).map_err(db_err)?;
                let mut a = attrs_of(
                    r,
                    &loaded.interner,
                    windows.clamp(1, MAX_WINDOWS) as u16,
                    context,
                )?;
                a.sketch = loaded.index.sketch(key(rid, 0)).map_err(index_err)?;
                let row: Option<i64> = r.get(14).map_err(db_err)?;
                a.vector_row = row.and_then(|r| u32::try_from(r).ok()).unwrap_or(0);
                attrs.insert(rid, a);
            }
        }
        loaded
            .attrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .shrink_to_fit();
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded.clone());
        self.apply_log(conn, &loaded)?;
        self.fit_walk(&loaded)?;
        tracing::info!(
            memories = loaded.memories(),
            rebuilt,
            secs = started.elapsed().as_secs_f64(),
            "vector index ready"
        );
        Ok(())
    }

    /// How wide a search for `purpose` walks a graph of `vectors`, at most the widest
    /// `ef` the index takes.
    fn walk(&self, purpose: NearestFor, vectors: usize) -> usize {
        let ef = match purpose {
            NearestFor::Answer => self.expansion_search,
            NearestFor::Fusion => self.fusion_expansion,
        };
        ef.max(walk_width(ef, vectors))
            .min(*IndexConfig::EXPANSION_RANGE.end())
    }

    /// The graph's own `ef` for `vectors`: the narrower of the two walks. A search walks
    /// wider by asking for more keys ([`VectorIndex::search_walking`]), never narrower.
    fn graph_ef(&self, vectors: usize) -> usize {
        self.walk(NearestFor::Answer, vectors)
            .min(self.walk(NearestFor::Fusion, vectors))
    }

    /// Sets the graph's `ef` for its size ([`graph_ef`](Self::graph_ef)) when the size
    /// has moved it: after the index is loaded and whenever changes are applied, not in
    /// each search (usearch walks at the larger of it and the keys a search asks for).
    fn fit_walk(&self, loaded: &Loaded) -> Result<(), StoreError> {
        let ef = self.graph_ef(loaded.index.len());
        if loaded.index.expansion_search() != ef {
            loaded.index.set_expansion_search(ef).map_err(index_err)?;
        }
        Ok(())
    }

    fn apply_log(&self, conn: &Connection, loaded: &Loaded) -> Result<(), StoreError> {
        let mut applied = false;
        loop {
            let from = loaded.applied_seq.load(Ordering::SeqCst);
            let rows: Vec<(i64, i64)> = conn
                .prepare_cached(
                    "SELECT seq, rid FROM ann_log WHERE seq > ?1 ORDER BY seq LIMIT 5000",
                )
                .and_then(|mut s| {
                    s.query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(db_err)?;
            let Some(&(last, _)) = rows.last() else {
                return if applied {
                    self.fit_walk(loaded)
                } else {
                    Ok(())
                };
            };
            let mut rids: Vec<i64> = rows.into_iter().map(|(_, r)| r).collect();
            rids.sort_unstable();
            rids.dedup();
            loaded.refresh(conn, &rids)?;
            loaded.applied_seq.store(last, Ordering::SeqCst);
            applied = true;
        }
    }

    /// Applies what changed since the last call. While a save runs, a search that finds
    /// nothing new does not wait for it; one that finds changes waits, so a vector stored
    /// before the search began is always searchable.
    pub fn catch_up(&self, conn: &Connection) -> Result<(), StoreError> {
        if self.saving.load(Ordering::SeqCst) && self.up_to_date(conn)? {
            return Ok(());
        }
        let _sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        if self.model_changed(conn)? {
            return self.load(conn);
        }
        match self.current() {
            Some(l) => self.apply_log(conn, &l),
            None => Ok(()),
        }
    }

    /// Whether the active model is not the one whose vectors the loaded index holds.
    fn model_changed(&self, conn: &Connection) -> Result<bool, StoreError> {
        let want = active_model(conn)?.map(|(k, _)| k);
        let have = self.current();
        Ok(want.as_deref() != have.as_ref().map(|l| l.model_key.as_str()))
    }

    /// Whether the loaded index is of the active model and has applied the whole log.
    fn up_to_date(&self, conn: &Connection) -> Result<bool, StoreError> {
        if self.model_changed(conn)? {
            return Ok(false);
        }
        Ok(match self.current() {
            Some(l) => log_head(conn)? <= l.applied_seq.load(Ordering::SeqCst),
            None => true,
        })
    }

    /// Marks a save as running (or not), as `save` does for its duration.
    #[cfg(test)]
    pub(crate) fn set_saving(&self, on: bool) {
        self.saving.store(on, Ordering::SeqCst);
    }

    /// Saves the graph if it changed since the last save. Returns the sequence number the
    /// saved graph covers (the log up to it may be truncated), if it saved.
    pub fn save(&self) -> Result<Option<i64>, StoreError> {
        let Some(loaded) = self.current() else {
            return Ok(None);
        };
        let _sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
        let seq = loaded.applied_seq.load(Ordering::SeqCst);
        if loaded.saved_seq.load(Ordering::SeqCst) == seq {
            return Ok(None);
        }
        self.saving.store(true, Ordering::SeqCst);
        let result = (|| {
            loaded.index.save().map_err(index_err)?;
            let state = SavedState {
                version: STATE_VERSION,
                model_key: loaded.model_key.clone(),
                dim: loaded.dim,
                applied_seq: seq,
            };
            let tmp = self.state_path().with_extension("json.tmp");
            let bytes = serde_json::to_vec(&state).map_err(|e| StoreError::Other(e.to_string()))?;
            std::fs::write(&tmp, bytes)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, self.state_path()))
                .map_err(|e| {
                    StoreError::Other(format!("cannot save the vector index state: {e}"))
                })?;
            Ok(())
        })();
        self.saving.store(false, Ordering::SeqCst);
        result?;
        loaded.saved_seq.store(seq, Ordering::SeqCst);
        Ok(Some(seq))
    }

    /// Nearest memories, or `None` when the index does not hold `model`'s vectors (the
    /// caller then searches exactly).
    pub fn nearest(
        &self,
        conn: &Connection,
        tenant: &str,
        q: &VectorQuery<'_>,
    ) -> Result<Option<Vec<Scored>>, StoreError> {
        let VectorQuery {
            model,
            vector,
            filter,
            want:
                Nearest {
                    limit,
                    keep,
                    context_weight,
                    purpose,
                },
        } = *q;
        self.catch_up(conn)?;
        let Some(loaded) = self.current() else {
            return Ok(None);
        };
        if loaded.model_key != model.key() || vector.len() != loaded.dim {
            return Ok(None);
        }
        let limit = limit as usize;
        let only_tenant = *filter == MemoryFilter::default();
        // Conditions the in-memory fields cannot answer.
        let needs_sql = needs_sql(filter);
        // The filter in the index's names; one naming a value this index never held
        // passes none. Resolved before the fields are locked: the names lock is never
        // held while another is taken.
        let Some(wanted) = loaded.interner.resolve(tenant, filter) else {
            return Ok(Some(Vec::new()));
        };
        let attrs = loaded.attrs.read().unwrap_or_else(|p| p.into_inner());
        let tenant_size = attrs.tenant_len(wanted.tenant);
        if tenant_size == 0 {
            return Ok(Some(Vec::new()));
        }
        // A selective filter: its candidates, searched exactly. They come from the posting
        // lists held in memory when one of the filter's conditions has one (with the
        // conditions only SQLite checks checked on those rows), else from SQLite.
        let exact_max = self.exact_max;
        // With conditions SQLite checks, the memories passing the others.
        let within = attrs.held_part(filter, &wanted);
        let candidates: Option<Vec<i64>> = if only_tenant && tenant_size > exact_max {
            None
        } else if let Some(listed) = attrs.passing(filter, &wanted, exact_max) {
            listed
        } else {
            // One more than the bound tells a filter over it; no bound lists them all.
            let limit = exact_max.checked_add(1);
            let rids = filter_rids(conn, tenant, filter, limit, within.as_deref())?;
            (rids.len() <= exact_max).then_some(rids)
        };
        // The graph returns keys: with every memory held as one vector, `limit` keys are
        // `limit` memories; once some memory has several (windows of a long text, a context
        // vector), twice as many are asked for. The graph walks at least as wide as the
        // keys asked for, so asking for more than needed would override its `ef`.
        let keys_per_memory = if loaded.index.len() > attrs.len() {
            2
        } else {
            1
        };
        // With i8 vectors the keys of an answer whose side of the caller's cut their
        // rounding leaves open (at most `rescore` of them) are scored again at full
        // precision: the search finds at least `rescore` keys whatever the caller keeps
        // (a semantic search keeps k and a quarter), so those just under the cut are
        // there to compare. A list for fusion is not: fusion weighs its scores against
        // the keyword candidates' `similarities`, which are the graph's scores too, and
        // re-scoring made hybrid recall no better (docs/benchmarks.md, "A hybrid search's
        // vector half keeps the graph's scores").
        let rescoring = match (self.quantization, purpose) {
            (Quantization::I8, NearestFor::Answer) => self.rescore,
            _ => 0,
        };
        let graph_keys = (limit * keys_per_memory).max(rescoring);
        let walk = self.walk(purpose, loaded.index.len());
        let hits = match candidates {
            Some(rids) => {
                let held: Vec<(i64, &Attrs)> = rids
                    .iter()
                    .filter_map(|rid| attrs.get(rid).map(|a| (*rid, a)))
                    .collect();
                // Keys in all, the most windows of a memory, and whether any memory has a
                // context vector, in one pass.
                let (all_keys, windows, any_context) =
                    held.iter().fold((0, 1, false), |(n, w, c), (_, a)| {
                        let mine = usize::from(a.windows);
                        (
                            n + mine + usize::from(a.context),
                            w.max(mine),
                            c || a.context,
                        )
                    });
                // Mixing in context vectors needs every key scored. Without any, the top
                // `limit × most windows` keys are enough: a memory whose best window is
                // not among them has at least `limit` memories scoring above it (and at
                // least the keys re-scored, for the same reason as the graph's).
                let mixes = context_weight > 0.0 && any_context;
                let k = if mixes {
                    all_keys
                } else {
                    (limit * windows).max(rescoring).min(all_keys)
                };
                let short = (!mixes && self.shortlist > 0)
                    .then(|| {
                        let keep = k.saturating_mul(self.shortlist).max(SHORTLIST_MIN);
                        shortlist(&held, vector, keep)
                    })
                    .flatten();
                let keys = short
                    .unwrap_or_else(|| held.iter().flat_map(|(rid, a)| a.keys(*rid)).collect());
                loaded
                    .index
                    .exact_search(vector, &keys, k)
                    .map_err(index_err)?
            }
            None if needs_sql => {
                // Not held in memory: every candidate from SQLite, then the graph.
                let rids: HashSet<i64> =
                    filter_rids(conn, tenant, filter, None, within.as_deref())?
                        .into_iter()
                        .collect();
                let pass = |k: u64| rids.contains(&rid_of(k));
                loaded
                    .index
                    .search_walking(vector, graph_keys, walk, Some(&pass))
                    .map_err(index_err)?
            }
            None => {
                let single_tenant = attrs.len() == tenant_size;
                let pass = |k: u64| attrs.get(&rid_of(k)).is_some_and(|a| a.f.matches(&wanted));
                let pass: Option<&dyn Fn(u64) -> bool> =
                    (!(only_tenant && single_tenant)).then_some(&pass);
                loaded
                    .index
                    .search_walking(vector, graph_keys, walk, pass)
                    .map_err(index_err)?
            }
        };
        // A memory scores as its best window, mixed with its context vector when it has
        // one: every key of each memory found is scored exactly, so a memory found through
        // one of its vectors is scored on both.
        let mut rids: Vec<i64> = Vec::new();
        let mut seen = HashSet::new();
        for h in &hits {
            let rid = rid_of(h.key);
            if attrs.contains_key(&rid) && seen.insert(rid) {
                rids.push(rid);
            }
        }
        let mixing = context_weight > 0.0 && rids.iter().any(|r| attrs[r].context);
        let mut scored_keys = hits;
        if mixing {
            // The keys of the memories found that the search did not score.
            let have: HashSet<u64> = scored_keys.iter().map(|h| h.key).collect();
            let missing: Vec<u64> = rids
                .iter()
                .flat_map(|r| attrs[r].keys(*r))
                .filter(|k| !have.contains(k))
                .collect();
            if !missing.is_empty() {
                let more = loaded
                    .index
                    .exact_search(vector, &missing, missing.len())
                    .map_err(index_err)?;
                scored_keys.extend(more);
            }
        }
        if rescoring > 0 {
            // The memories around the caller's cut whose side of it the rounding leaves
            // open, all their keys scored again (so a memory's score is its exact one).
            let mut ranked = scored_memories(&rids, &scored_keys, mixing, context_weight);
            ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.rid.cmp(&b.rid)));
            let keep = (keep as usize).min(limit);
            let open: HashSet<i64> = unsettled(&ranked, keep, rescoring).into_iter().collect();
            let vector_row = |rid: i64| {
                attrs
                    .get(&rid)
                    .filter(|a| a.vector_row != 0)
                    .map(|a| i64::from(a.vector_row))
            };
            rescore(
                conn,
                &loaded.model_key,
                vector,
                scored_keys
                    .iter_mut()
                    .filter(|h| open.contains(&rid_of(h.key))),
                &vector_row,
            )?;
        }
        let mut out = memory_scores(&attrs, &rids, &scored_keys, mixing, context_weight);
        engram_core::search::sort_desc(&mut out);
        out.truncate(limit);
        Ok(Some(out))
    }

    /// The score [`Ann::nearest`] would give each memory of `memories` (id and row id)
    /// held as a live memory of `tenant` with vectors of `model`
    /// (`SearchIndex::similarities`): every key of each scored on its graph vector, as an
    /// exact search scores them. `None` when the index does not hold `model`'s vectors. In
    /// memory only, as of the last catch-up.
    pub fn similarities(
        &self,
        tenant: &str,
        model: &ModelInfo,
        vector: &[f32],
        memories: &[(MemoryId, i64)],
        context_weight: f32,
    ) -> Result<Option<Vec<Scored>>, StoreError> {
        let Some(loaded) = self.current() else {
            return Ok(None);
        };
        if loaded.model_key != model.key() || vector.len() != loaded.dim {
            return Ok(None);
        }
        let Some(wanted) = loaded.interner.resolve(tenant, &MemoryFilter::default()) else {
            return Ok(Some(Vec::new()));
        };
        let attrs = loaded.attrs.read().unwrap_or_else(|p| p.into_inner());
        let mut held: Vec<i64> = memories
            .iter()
            .filter(|(id, rid)| {
                attrs
                    .get(rid)
                    .is_some_and(|a| a.f.id == *id && a.f.matches(&wanted))
            })
            .map(|(_, rid)| *rid)
            .collect();
        held.sort_unstable();
        held.dedup();
        let keys: Vec<u64> = held.iter().flat_map(|r| attrs[r].keys(*r)).collect();
        if keys.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let scored = loaded
            .index
            .exact_search(vector, &keys, keys.len())
            .map_err(index_err)?;
        let mixing = context_weight > 0.0 && held.iter().any(|r| attrs[r].context);
        Ok(Some(memory_scores(
            &attrs,
            &held,
            &scored,
            mixing,
            context_weight,
        )))
    }

    /// Memories whose vectors the index holds.
    pub fn len(&self) -> usize {
        self.current().map_or(0, |l| l.memories())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each held memory costs: the fields (72 bytes), the windows and context flags,
    /// the sketch (49) and the vector row id fill 128 bytes with no padding; a million
    /// memories take 128 MB of them (docs/benchmarks.md, the memory budget).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_held_memory_takes_128_bytes() {
        assert_eq!(std::mem::size_of::<Fields>(), 72);
        assert_eq!(std::mem::size_of::<Attrs>(), 128);
    }

    #[test]
    fn the_walk_widens_with_the_graph_past_its_base() {
        assert_eq!(walk_width(160, 0), 0);
        assert_eq!(walk_width(160, WALK_BASE), 0);
        assert_eq!(walk_width(160, 1_000_000), 320);
        assert_eq!(walk_width(160, 10_000_000), 480);
        let w = walk_width(160, 300_000);
        assert!(w > 160 && w < 320, "{w}");
    }

    /// Memories of one key each, all with `margin`.
    fn ranked(scores: &[(i64, f32)], margin: f32) -> Vec<MemoryScore> {
        scores
            .iter()
            .map(|&(rid, score)| MemoryScore {
                rid,
                score,
                margin,
                keys: 1,
            })
            .collect()
    }

    #[test]
    fn only_the_memories_the_rounding_leaves_on_either_side_of_the_cut_are_unsettled() {
        let list = ranked(
            &[
                (1, 0.90),
                (2, 0.80),
                (3, 0.705),
                (4, 0.70),
                (5, 0.697),
                (6, 0.69),
                (7, 0.60),
            ],
            0.003,
        );
        // The cut after the 4th (0.70): within 2 × 0.003 of it, nearest first.
        assert_eq!(unsettled(&list, 4, 16), vec![4, 5, 3]);
        // At most `cap` keys, the memory at the cut first; it always, whatever it has.
        assert_eq!(unsettled(&list, 4, 2), vec![4, 5]);
        let three_keys: Vec<MemoryScore> =
            list.iter().map(|m| MemoryScore { keys: 3, ..*m }).collect();
        assert_eq!(unsettled(&three_keys, 4, 2), vec![4]);
        // Exact scores (no margin): only the memories tied with the cut.
        let exact = ranked(&[(1, 0.9), (2, 0.9), (3, 0.8)], 0.0);
        assert_eq!(unsettled(&exact, 2, 16), vec![1, 2]);
        // No cut inside the list: nothing to settle.
        assert!(unsettled(&list, 7, 16).is_empty());
        assert!(unsettled(&list, 0, 16).is_empty());
        // The widest margin of the list counts for all of it.
        let mut mixed = ranked(&[(1, 0.9), (2, 0.8), (3, 0.79), (4, 0.5)], 0.0);
        mixed[0].margin = 0.01;
        assert_eq!(unsettled(&mixed, 2, 16), vec![2, 3]);
    }
}
