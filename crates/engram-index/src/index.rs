//! [`VectorIndex`]: the HNSW graph (usearch) behind a lock, with persistence.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use usearch::MetricKind;

use crate::arena::{self, Arena, Shared, QUERY_VALUE};
use crate::persist::{self, Meta, FORMAT_VERSION};
use crate::vector::{self, TopK};
use crate::{IndexConfig, IndexError, Quantization, Sketch};

/// The smallest capacity reserved; it then doubles as vectors are added.
const MIN_CAPACITY: usize = 1024;

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// The key the vector was added under.
    pub key: u64,
    /// Cosine similarity to the query, in [-1, 1] (1 = same direction).
    pub similarity: f32,
    /// How far `similarity` may be from the cosine with the vector as it was added, since
    /// the index rounds what it stores: 0 for f32 vectors; for f16 a bound (2^-10, or
    /// 2^-9 for the graph's own scores, whose query is rounded too); for i8 seven standard
    /// deviations of the rounding's error for this vector, about 0.0026 for a MiniLM
    /// vector (an i8 search's hits are always scored with the f32 query). So two hits
    /// whose similarities differ by more than the sum of their margins are in the right
    /// order.
    pub margin: f32,
}

/// A persistent HNSW index of vectors under `u64` keys, compared by cosine similarity.
///
/// Every method takes `&self`: share it in an `Arc`. Searches run concurrently with each
/// other; [`add`](Self::add), [`add_batch`](Self::add_batch) and
/// [`remove`](Self::remove) take an internal write lock, so they wait for running
/// searches and block new ones for as long as the change takes (tens to hundreds of
/// microseconds for one vector). [`save`](Self::save) blocks changes, not searches,
/// while the engine writes the file.
///
/// Changes live in memory until [`save`](Self::save): the index is derived state, and
/// the caller replays whatever the last save missed from its own store.
pub struct VectorIndex {
    path: PathBuf,
    cfg: IndexConfig,
    engine: RwLock<Engine>,
    /// The engine keeps one search context per thread it reserved; a search that finds
    /// none free fails, so concurrent searches are limited to that many here.
    permits: Permits,
    threads: usize,
    save_lock: Mutex<()>,
}

impl fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VectorIndex")
            .field("path", &self.path)
            .field("config", &self.cfg)
            .field("len", &self.len())
            .finish()
    }
}

impl VectorIndex {
    /// Opens the index saved at `path`, or starts an empty one there if no file exists.
    ///
    /// Fails with [`IndexError::Corrupt`] when the file or its sidecar
    /// (`path.meta.json`) is missing, truncated, garbled or of an unknown format, and
    /// with [`IndexError::Mismatch`] when it holds vectors of another dimension or
    /// quantization than `cfg`; for both, delete the files and rebuild
    /// ([`IndexError::needs_rebuild`]). A saved index keeps the `connectivity` it was
    /// built with; the expansion factors come from `cfg`.
    pub fn open(path: &Path, cfg: IndexConfig) -> Result<Self, IndexError> {
        cfg.validate()?;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        for leftover in [
            persist::with_suffix(path, ".tmp"),
            persist::with_suffix(&persist::meta_path(path), ".tmp"),
            persist::with_suffix(&persist::vectors_path(path), ".tmp"),
        ] {
            // Debris of a save that crashed; the saved files are intact without it.
            let _ = fs::remove_file(leftover);
        }

        let (engine, cfg) = match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Engine::new(&cfg)?, cfg),
            Err(e) => return Err(IndexError::io(path, e)),
            Ok(_) => load(path, cfg)?,
        };
        let graph = &engine.graph;
        let capacity = graph.size().max(MIN_CAPACITY);
        graph
            .reserve_capacity_and_threads(capacity, threads)
            .map_err(IndexError::backend)?;
        graph.change_expansion_add(cfg.expansion_add);
        graph.change_expansion_search(cfg.expansion_search);

        Ok(VectorIndex {
            path: path.to_path_buf(),
            cfg,
            engine: RwLock::new(engine),
            permits: Permits::new(threads),
            threads,
            save_lock: Mutex::new(()),
        })
    }

    /// Deletes the files of the index saved at `path` (the graph, its sidecar and its
    /// vectors, and any debris of a crashed save), for a rebuild from scratch. Files that
    /// do not exist are not an error.
    pub fn remove_files(path: &Path) -> Result<(), IndexError> {
        let meta = persist::meta_path(path);
        let vectors = persist::vectors_path(path);
        for file in [
            persist::with_suffix(path, ".tmp"),
            persist::with_suffix(&meta, ".tmp"),
            persist::with_suffix(&vectors, ".tmp"),
            // The sidecar first: without it the other files are never read.
            meta,
            path.to_path_buf(),
            vectors,
        ] {
            match fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(IndexError::io(file, e)),
            }
        }
        Ok(())
    }

    /// Where the index is saved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration in force (`connectivity` is the saved graph's when one was
    /// loaded).
    pub fn config(&self) -> &IndexConfig {
        &self.cfg
    }

    /// Number of vectors in the index.
    pub fn len(&self) -> usize {
        self.read().graph.size()
    }

    /// True when the index holds no vectors.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a vector is stored under `key`.
    pub fn contains(&self, key: u64) -> bool {
        self.read().graph.contains(key)
    }

    /// Stores `vector` under `key`, replacing the vector already there.
    ///
    /// The vector is normalised to unit length before it is stored. Fails (changing
    /// nothing) when it has the wrong dimension, a NaN or infinite component, or zero
    /// length, or when `key` is `u64::MAX`.
    pub fn add(&self, key: u64, vector: &[f32]) -> Result<(), IndexError> {
        check_key(key)?;
        let unit = vector::normalized(vector, self.cfg.dim)?;
        let mut engine = self.write();
        self.ensure_capacity(&engine, 1)?;
        if engine.graph.contains(key) {
            engine.graph.remove(key).map_err(IndexError::backend)?;
        }
        let Some(arena) = engine.arena_mut() else {
            return add_unit(&engine.graph, key, &unit);
        };
        let slot = arena.put(key, &vector::quantize_i8(&unit));
        let added = engine.graph.add::<i8>(key, &arena::value_of(slot.into()));
        if added.is_err() {
            engine.forget(&[key]);
        }
        added.map_err(IndexError::backend)
    }

    /// Stores many vectors at once, replacing those whose keys are already present; on
    /// a duplicate key within `items` the last one wins. Inserts on every core, so it is
    /// the way to build or rebuild an index.
    ///
    /// Every item is checked before anything changes: one invalid vector or key fails
    /// the whole batch with nothing stored. Blocks searches until it returns.
    pub fn add_batch<V>(&self, items: &[(u64, V)]) -> Result<(), IndexError>
    where
        V: AsRef<[f32]> + Sync,
    {
        let mut last: HashMap<u64, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(items.len(), Default::default());
        for (i, (key, v)) in items.iter().enumerate() {
            check_key(*key)?;
            check_vector(v.as_ref(), self.cfg.dim)?;
            last.insert(*key, i);
        }
        let mut order: Vec<usize> = last.into_values().collect();
        order.sort_unstable();

        let mut engine = self.write();
        self.ensure_capacity(&engine, order.len())?;
        for &i in &order {
            let key = items[i].0;
            if engine.graph.contains(key) {
                engine.graph.remove(key).map_err(IndexError::backend)?;
            }
        }
        // With an arena, the vectors go there first (the graph's workers only read it);
        // `slots[n]` is `order[n]`'s.
        let slots: Vec<u32> = match engine.arena_mut() {
            None => Vec::new(),
            Some(arena) => {
                arena.reserve(order.len());
                let mut slots = Vec::with_capacity(order.len());
                for &i in &order {
                    let (key, v) = &items[i];
                    let unit = vector::normalized(v.as_ref(), self.cfg.dim)?;
                    slots.push(arena.put(*key, &vector::quantize_i8(&unit)));
                }
                slots
            }
        };
        let graph = &engine.graph;

        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<IndexError>> = Mutex::new(None);
        let workers = self.threads.min(order.len().div_ceil(256)).max(1);
        let insert = || {
            while !failed.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = order.get(n) else { break };
                let (key, v) = &items[i];
                let result = match slots.get(n) {
                    Some(&slot) => graph
                        .add::<i8>(*key, &arena::value_of(slot.into()))
                        .map_err(IndexError::backend),
                    None => vector::normalized(v.as_ref(), self.cfg.dim)
                        .and_then(|unit| add_unit(graph, *key, &unit)),
                };
                if let Err(e) = result {
                    failed.store(true, Ordering::Relaxed);
                    lock(&first_error).get_or_insert(e);
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..workers {
                s.spawn(insert);
            }
            insert();
        });
        match first_error
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(e) => {
                // Keep the arena to what the graph holds.
                let missing: Vec<u64> = order
                    .iter()
                    .map(|&i| items[i].0)
                    .filter(|key| !engine.graph.contains(*key))
                    .collect();
                engine.forget(&missing);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Removes the vector under `key`; returns whether there was one.
    pub fn remove(&self, key: u64) -> Result<bool, IndexError> {
        let mut engine = self.write();
        let removed = engine.graph.remove(key).map_err(IndexError::backend)?;
        engine.forget(&[key]);
        Ok(removed > 0)
    }

    /// The vector stored under `key`, as the index holds it: unit length, and rounded to
    /// the index's quantization.
    pub fn get(&self, key: u64) -> Result<Option<Vec<f32>>, IndexError> {
        Ok(self.stored(key)?.map(|mut v| {
            let norm = vector::norm(&v);
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
            v
        }))
    }

    /// The [`Sketch`] of the vector stored under `key`, as the index holds it: the same
    /// whether the vector was just added or loaded with a saved index.
    pub fn sketch(&self, key: u64) -> Result<Option<Sketch>, IndexError> {
        Ok(self.stored(key)?.map(|v| Sketch::of(&v)))
    }

    /// The vector stored under `key` widened to f32, at the engine's scale (a sketch needs
    /// only its signs, so only [`get`](Self::get) normalises it).
    fn stored(&self, key: u64) -> Result<Option<Vec<f32>>, IndexError> {
        let engine = self.read();
        if let Some(arena) = engine.arena() {
            return Ok(arena
                .vector_of(key)
                .map(|v| v.iter().map(|&x| f32::from(x)).collect()));
        }
        let mut buf = vec![0f32; self.cfg.dim];
        let found = engine
            .graph
            .get::<f32>(key, &mut buf)
            .map_err(IndexError::backend)?;
        Ok((found > 0).then_some(buf))
    }

    /// The (approximately) `k` most similar vectors to `query`, best first.
    ///
    /// With a `filter`, only keys for which it returns true are returned, and the
    /// filter is applied inside the graph search: the search goes on until it has
    /// gathered `max(k, expansion_search)` keys that pass, so a filter that passes few
    /// keys still finds its best matches (at the cost of visiting more of the graph).
    /// When the filter passes only a few thousand keys that the caller can list,
    /// [`exact_search`](Self::exact_search) over them is faster and exact.
    ///
    /// A panic in `filter` is caught at the engine boundary and resumed here once the
    /// search has stopped.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_walking(query, k, 0, filter)
    }

    /// [`search`](Self::search), walking the graph at least `walk` wide for this search
    /// alone, whatever [`expansion_search`](Self::expansion_search) is.
    ///
    /// The engine walks as wide as the larger of its `ef` and the keys asked for, so this
    /// asks for `max(k, walk)` keys and keeps the `k` best: the same keys, in the same
    /// order (ties at the cut aside), as a `k`-key search with `ef` set to `walk` (checked
    /// on MiniLM vectors in the tests), without changing `ef` for the searches running
    /// beside it. With i8 vectors only the `k` kept are scored again.
    pub fn search_walking(
        &self,
        query: &[f32],
        k: usize,
        walk: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>, IndexError> {
        let unit = vector::normalized(query, self.cfg.dim)?;
        let engine = self.read();
        let k = k.min(engine.graph.size());
        if k == 0 {
            return Ok(Vec::new());
        }
        let asked = k.max(walk);
        let query = Query::new(self.cfg.quantization, &unit);
        let _permit = self.permits.acquire();
        let matches = match filter {
            None => query.search(&engine.graph, asked),
            Some(filter) => {
                // After a panic the filter is not called again; the search winds down
                // passing nothing.
                let stopped = Cell::new(false);
                let panicked = Cell::new(None);
                let guarded = |key: u64| {
                    if stopped.get() {
                        return false;
                    }
                    panic::catch_unwind(AssertUnwindSafe(|| filter(key))).unwrap_or_else(
                        |payload| {
                            stopped.set(true);
                            panicked.set(Some(payload));
                            false
                        },
                    )
                };
                let matches = query.filtered_search(&engine.graph, asked, guarded);
                if let Some(payload) = panicked.take() {
                    panic::resume_unwind(payload);
                }
                matches
            }
        }?;
        let mut hits = to_hits(&matches, query.margin(self.cfg.quantization));
        hits.truncate(k);
        if self.cfg.quantization == Quantization::I8 {
            // The graph compared the query rounded to i8 with each stored vector, so both
            // roundings moved its scores. The hits are scored again as the exact search
            // scores: the f32 query multiplied into the stored bytes, which leaves only
            // the stored vector's rounding. A few hundred nanoseconds per hit.
            let keys: Vec<u64> = hits.iter().map(|h| h.key).collect();
            return self.exact_among(&engine, &unit, &keys, keys.len());
        }
        Ok(hits)
    }

    /// The exact `k` most similar vectors to `query` among `keys`, best first, by brute
    /// force over their stored vectors. Keys not in the index are skipped; duplicates
    /// count once. For selective filters: a few thousand keys take well under a
    /// millisecond.
    pub fn exact_search(
        &self,
        query: &[f32],
        keys: &[u64],
        k: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        let unit = vector::normalized(query, self.cfg.dim)?;
        let engine = self.read();
        self.exact_among(&engine, &unit, keys, k)
    }

    /// [`exact_search`](Self::exact_search) with the unit query, under a lock already held.
    fn exact_among(
        &self,
        engine: &Engine,
        unit: &[f32],
        keys: &[u64],
        k: usize,
    ) -> Result<Vec<Hit>, IndexError> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let mut top = TopK::new(k);
        let mut seen: HashSet<u64, foldhash::fast::RandomState> =
            HashSet::with_capacity_and_hasher(keys.len(), Default::default());
        let arena = engine.arena();
        let graph = &engine.graph;
        let mut buf = vec![0f32; self.cfg.dim];
        // f16 vectors are read as stored and widened while they are multiplied (with the
        // CPU's vector instructions), not one component at a time inside the engine.
        let mut raw = vec![0i16; self.cfg.dim];
        let mut bits = Vec::with_capacity(self.cfg.dim);
        for &key in keys {
            if !seen.insert(key) {
                continue;
            }
            let scored = match (arena, self.cfg.quantization) {
                (Some(arena), _) => arena.slot_of(key).and_then(|s| score_slot(arena, unit, s)),
                (None, Quantization::F16) => {
                    let found = graph
                        .get::<usearch::f16>(key, usearch::f16::from_mut_i16s(&mut raw))
                        .map_err(IndexError::backend)?;
                    (found > 0).then(|| {
                        bits.clear();
                        bits.extend(raw.iter().map(|r| *r as u16));
                        let similarity = vector::cosine_f16(unit, 1.0, &bits, &mut buf);
                        (similarity, vector::F16_MARGIN)
                    })
                }
                // An i8 index always has its arena.
                (None, Quantization::F32 | Quantization::I8) => {
                    let found = graph
                        .get::<f32>(key, &mut buf)
                        .map_err(IndexError::backend)?;
                    (found > 0).then(|| (vector::cosine(unit, 1.0, &buf), 0.0))
                }
            };
            if let Some((similarity, margin)) = scored {
                top.push(Hit {
                    key,
                    similarity,
                    margin,
                });
            }
        }
        Ok(top.into_sorted())
    }

    /// The exact `k` most similar vectors to `query` in the whole index, best first, by
    /// brute force (linear in the index size: for ground truth in tests and benchmarks,
    /// not for serving).
    pub fn exact_search_all(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        let unit = vector::normalized(query, self.cfg.dim)?;
        let engine = self.read();
        let k = k.min(engine.graph.size());
        if k == 0 {
            return Ok(Vec::new());
        }
        if let Some(arena) = engine.arena() {
            let mut top = TopK::new(k);
            for (key, slot) in arena.live() {
                if let Some((similarity, margin)) = score_slot(arena, &unit, slot) {
                    top.push(Hit {
                        key,
                        similarity,
                        margin,
                    });
                }
            }
            return Ok(top.into_sorted());
        }
        let _permit = self.permits.acquire();
        let matches = engine
            .graph
            .exact_search(&unit, k)
            .map_err(IndexError::backend)?;
        // The engine rounds the query to the stored precision.
        let margin = match self.cfg.quantization {
            Quantization::F16 => vector::F16_GRAPH_MARGIN,
            Quantization::F32 | Quantization::I8 => 0.0,
        };
        Ok(to_hits(&matches, margin))
    }

    /// Changes how wide searches look (`ef`); takes effect for the next search.
    pub fn set_expansion_search(&self, expansion: usize) -> Result<(), IndexError> {
        if !IndexConfig::EXPANSION_RANGE.contains(&expansion) {
            return Err(IndexError::InvalidConfig(format!(
                "expansion_search must be between 1 and {}, got {expansion}",
                IndexConfig::EXPANSION_RANGE.end()
            )));
        }
        self.write().graph.change_expansion_search(expansion);
        Ok(())
    }

    /// How wide searches look (`ef`).
    pub fn expansion_search(&self) -> usize {
        self.read().graph.expansion_search()
    }

    /// Bytes held in memory for the graph and the vectors.
    pub fn memory_usage(&self) -> usize {
        let engine = self.read();
        engine.graph.memory_usage() + engine.arena().map_or(0, Arena::memory_usage)
    }

    /// Writes the index to its path atomically: a crash at any point leaves either the
    /// previous save or this one, never a mix that `open` would accept.
    ///
    /// Searches go on meanwhile; changes wait until the engine has written the file.
    pub fn save(&self) -> Result<(), IndexError> {
        let _one_save_at_a_time = lock(&self.save_lock);
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| IndexError::io(dir, e))?;
        }
        let tmp = persist::with_suffix(&self.path, ".tmp");
        let meta_path = persist::meta_path(&self.path);
        let meta_tmp = persist::with_suffix(&meta_path, ".tmp");
        let vectors_path = persist::vectors_path(&self.path);
        let vectors_tmp = persist::with_suffix(&vectors_path, ".tmp");

        let (count, vectors) = {
            let engine = self.read();
            engine
                .graph
                .save(utf8(&tmp)?)
                .map_err(|e| IndexError::io(&tmp, io::Error::other(e.to_string())))?;
            let vectors = match engine.arena() {
                Some(arena) => Some(persist::write_hashed(&vectors_tmp, |w| arena.write_to(w))?),
                None => None,
            };
            (engine.graph.size(), vectors)
        };
        persist::sync_file(&tmp)?;
        let index = persist::checksum(&tmp)?;
        let meta = Meta {
            format_version: FORMAT_VERSION,
            engine: format!("usearch {}", usearch::version()),
            dim: self.cfg.dim,
            quantization: self.cfg.quantization,
            connectivity: self.cfg.connectivity,
            count,
            index,
            vectors,
        };
        persist::write_meta_tmp(&meta_tmp, &meta)?;
        persist::rename(&tmp, &self.path)?;
        if vectors.is_some() {
            persist::rename(&vectors_tmp, &vectors_path)?;
        } else {
            // An index of another quantization saved here before left its vectors.
            let _ = fs::remove_file(&vectors_path);
        }
        persist::rename(&meta_tmp, &meta_path)?;
        persist::sync_parent_dir(&self.path)
    }

    fn ensure_capacity(&self, engine: &Engine, extra: usize) -> Result<(), IndexError> {
        let graph = &engine.graph;
        let needed = graph.size().saturating_add(extra);
        if needed > graph.capacity() {
            let capacity = needed
                .max(graph.capacity().saturating_mul(2))
                .max(MIN_CAPACITY);
            graph
                .reserve_capacity_and_threads(capacity, self.threads)
                .map_err(IndexError::backend)?;
        }
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, Engine> {
        // The graph is only touched through its own API, and the arena only through
        // methods that leave it whole, so a panic (in a filter, say) unwinding past a
        // guard leaves nothing half changed.
        self.engine.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Engine> {
        self.engine.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The graph, and for i8 indexes the arena holding its vectors.
struct Engine {
    graph: usearch::Index,
    /// For i8: the vectors, by slot; the graph holds each node's slot and compares nodes
    /// by reading this ([`arena`]). f32 and f16 vectors are held by the graph itself.
    arena: Option<Arc<Shared>>,
}

impl Engine {
    /// An empty engine for `cfg`.
    fn new(cfg: &IndexConfig) -> Result<Engine, IndexError> {
        let graph = usearch::Index::new(&engine_options(cfg)).map_err(IndexError::backend)?;
        let arena = (cfg.quantization == Quantization::I8).then(|| Arena::new(cfg.dim));
        Engine::with_arena(graph, arena)
    }

    /// `graph` with `arena` as its vectors (and its metric reading them).
    fn with_arena(mut graph: usearch::Index, arena: Option<Arena>) -> Result<Engine, IndexError> {
        let arena = arena.map(|a| Arc::new(Shared::new(a)));
        if let Some(shared) = &arena {
            graph.change_metric::<i8>(arena::metric(Arc::clone(shared)));
        }
        Ok(Engine { graph, arena })
    }

    fn arena(&self) -> Option<&Arena> {
        // SAFETY: the arena is changed only through `arena_mut`, which borrows the engine
        // mutably, so not while this shared borrow (or a graph call reading it) lives.
        self.arena.as_deref().map(|shared| unsafe { shared.get() })
    }

    fn arena_mut(&mut self) -> Option<&mut Arena> {
        // SAFETY: the engine is borrowed mutably for as long as the result lives, so no
        // other reference to the arena (`arena`, or the graph's metric, which runs only
        // inside graph calls made through `&self.graph`) can exist meanwhile.
        self.arena
            .as_deref()
            .map(|shared| unsafe { shared.get_mut() })
    }

    /// Drops `keys` from the arena (not from the graph).
    fn forget(&mut self, keys: &[u64]) {
        if let Some(arena) = self.arena_mut() {
            for key in keys {
                arena.remove(*key);
            }
        }
    }
}

/// The similarity and margin of the vector in `slot`: the unit f32 query multiplied into
/// the stored bytes (so only the stored vector's rounding is left in the score).
fn score_slot(arena: &Arena, unit: &[f32], slot: u32) -> Option<(f32, f32)> {
    let (bytes, length) = arena.entry(slot)?;
    let (dot, _) = vector::dot_i8(unit, bytes);
    Some((
        vector::cosine_of(dot, 1.0, length * length),
        vector::i8_margin(length),
    ))
}

/// A normalised query in the form the engine compares with the stored vectors.
enum Query {
    /// The engine converts f32 to its storage type itself.
    F32(Vec<f32>),
    /// i8: the query's components in this crate's own scaling (see
    /// [`vector::quantize_i8`]), which the arena's metric reads ([`arena::with_query`]).
    I8(Vec<i8>),
}

impl Query {
    fn new(quantization: Quantization, unit: &[f32]) -> Self {
        match quantization {
            Quantization::F32 | Quantization::F16 => Query::F32(unit.to_vec()),
            Quantization::I8 => Query::I8(vector::quantize_i8(unit)),
        }
    }

    fn search(&self, graph: &usearch::Index, k: usize) -> Result<Matches, IndexError> {
        match self {
            Query::F32(q) => graph.search(q, k),
            Query::I8(q) => arena::with_query(q.clone(), || {
                graph.search::<i8>(&arena::value_of(QUERY_VALUE), k)
            }),
        }
        .map_err(IndexError::backend)
    }

    fn filtered_search(
        &self,
        graph: &usearch::Index,
        k: usize,
        filter: impl Fn(u64) -> bool,
    ) -> Result<Matches, IndexError> {
        match self {
            Query::F32(q) => graph.filtered_search(q, k, filter),
            Query::I8(q) => arena::with_query(q.clone(), || {
                graph.filtered_search::<i8, _>(&arena::value_of(QUERY_VALUE), k, filter)
            }),
        }
        .map_err(IndexError::backend)
    }

    /// The [`Hit::margin`] of the engine's own scores for this query under `quantization`.
    /// For i8 the query is rounded too, and the stored vector's length is not known here:
    /// its margin is taken at its widest (a vector whose largest component is ±127 is at
    /// least 127 long).
    fn margin(&self, quantization: Quantization) -> f32 {
        match (self, quantization) {
            (Query::I8(q), _) => {
                let q_norm = q.iter().map(|&x| f32::from(x).powi(2)).sum::<f32>().sqrt();
                vector::i8_margin(q_norm) + vector::i8_margin(127.0)
            }
            (Query::F32(_), Quantization::F16) => vector::F16_GRAPH_MARGIN,
            (Query::F32(_), _) => 0.0,
        }
    }
}

type Matches = usearch::ffi::Matches;

/// Adds an already normalised vector to a graph that holds its vectors (f32 or f16: the
/// engine converts).
fn add_unit(graph: &usearch::Index, key: u64, unit: &[f32]) -> Result<(), IndexError> {
    graph.add(key, unit).map_err(IndexError::backend)
}

/// The engine's matches as hits, best first, each with `margin`.
fn to_hits(matches: &Matches, margin: f32) -> Vec<Hit> {
    let mut hits: Vec<Hit> = matches
        .keys
        .iter()
        .zip(&matches.distances)
        .map(|(&key, &distance)| Hit {
            key,
            // The engine's cosine distance is 1 - cosine similarity.
            similarity: (1.0 - distance).clamp(-1.0, 1.0),
            margin,
        })
        .collect();
    vector::sort_hits(&mut hits);
    hits
}

fn check_key(key: u64) -> Result<(), IndexError> {
    if key == u64::MAX {
        return Err(IndexError::ReservedKey(key));
    }
    Ok(())
}

/// The checks of [`vector::normalized`] without building the normalised copy.
fn check_vector(v: &[f32], dim: usize) -> Result<(), IndexError> {
    if v.len() != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            actual: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::InvalidVector("it contains NaN or infinity"));
    }
    if !vector::norm(v).is_normal() {
        return Err(IndexError::InvalidVector(
            "it has zero length, so it has no direction to compare",
        ));
    }
    Ok(())
}

/// The graph's dimensions: the vectors', or for i8 the 8 bytes of a slot.
fn graph_dims(cfg: &IndexConfig) -> usize {
    match cfg.quantization {
        Quantization::I8 => 8,
        Quantization::F32 | Quantization::F16 => cfg.dim,
    }
}

fn engine_options(cfg: &IndexConfig) -> usearch::IndexOptions {
    usearch::IndexOptions {
        dimensions: graph_dims(cfg),
        metric: MetricKind::Cos,
        quantization: cfg.quantization.scalar_kind(),
        connectivity: cfg.connectivity,
        expansion_add: cfg.expansion_add,
        expansion_search: cfg.expansion_search,
        multi: false,
    }
}

/// Loads a saved index after checking its sidecar and every byte of its files.
fn load(path: &Path, cfg: IndexConfig) -> Result<(Engine, IndexConfig), IndexError> {
    let corrupt = |reason: String| IndexError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let meta = persist::read_meta(path)?;
    if meta.format_version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            meta.format_version
        )));
    }
    if meta.dim != cfg.dim || meta.quantization != cfg.quantization {
        return Err(IndexError::Mismatch {
            path: path.to_path_buf(),
            reason: format!(
                "saved with dim {} and {}, opened with dim {} and {}",
                meta.dim, meta.quantization, cfg.dim, cfg.quantization
            ),
        });
    }
    meta.index
        .check(persist::checksum(path)?)
        .map_err(corrupt)?;
    let arena = match (cfg.quantization, meta.vectors) {
        (Quantization::I8, Some(sum)) => {
            let vectors = persist::vectors_path(path);
            let (arena, found) = persist::read_hashed(&vectors, |r| Arena::read_from(r, cfg.dim))?;
            let arena = arena.map_err(corrupt)?;
            sum.check(found)
                .map_err(|reason| corrupt(format!("its vectors file: {reason}")))?;
            Some(arena)
        }
        (Quantization::I8, None) => {
            return Err(corrupt("its sidecar records no vectors file".into()));
        }
        (_, _) => None,
    };

    let cfg = IndexConfig {
        connectivity: meta.connectivity,
        ..cfg
    };
    cfg.validate().map_err(|e| corrupt(e.to_string()))?;
    let graph = usearch::Index::new(&engine_options(&cfg)).map_err(IndexError::backend)?;
    graph
        .load(utf8(path)?)
        .map_err(|e| corrupt(format!("the engine cannot load it: {e}")))?;
    let expected_kind = cfg.quantization.scalar_kind();
    let held = arena.as_ref().map_or(meta.count, Arena::len);
    if graph.dimensions() != graph_dims(&cfg)
        || graph.metric_kind() != MetricKind::Cos
        || graph.scalar_kind() != expected_kind
        || graph.size() != meta.count
        || held != meta.count
    {
        return Err(corrupt(format!(
            "it holds {} vectors of dim {} ({:?}, {:?}) and its vectors file {held}, where the sidecar records {} of dim {} ({:?}, Cos)",
            graph.size(),
            graph.dimensions(),
            graph.scalar_kind(),
            graph.metric_kind(),
            meta.count,
            graph_dims(&cfg),
            expected_kind,
        )));
    }
    // Loading gives the graph its built-in metric back: the arena's is set again.
    Ok((Engine::with_arena(graph, arena)?, cfg))
}

fn utf8(path: &Path) -> Result<&str, IndexError> {
    path.to_str().ok_or_else(|| {
        IndexError::InvalidConfig(format!("index path {} is not valid UTF-8", path.display()))
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counting semaphore for the engine's per-thread search contexts.
struct Permits {
    free: Mutex<usize>,
    returned: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    fn new(n: usize) -> Self {
        Permits {
            free: Mutex::new(n),
            returned: Condvar::new(),
        }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self
                .returned
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.returned.notify_one();
    }
}
