//! [`Arena`]: the i8 vectors of an index, held by this crate and addressed by slot.
//!
//! The HNSW graph (usearch) keeps, for each node, an 8-byte "vector" holding the node's
//! slot in the arena, and compares nodes through [`metric`], which reads the arena. So a
//! vector is stored once, where this crate can read it directly: an exact search over a
//! filter's candidates finds a key's slot in a plain array ([`KeySlots`]) and multiplies
//! the query into the stored bytes, without the engine's lock, key table and copy (about
//! half a microsecond a candidate before; docs/benchmarks.md).
//!
//! A query is not in the arena: a search puts it in a per-thread place ([`with_query`])
//! and hands the graph [`QUERY_VALUE`], which the metric recognises. usearch compares a
//! query with the graph's nodes on the thread that called the search.
//!
//! Saved as one file next to the graph's: a header, then each slot's key (or [`FREE`]),
//! then the slots' vectors. Each vector's length is computed again when it is read.

use std::cell::{RefCell, UnsafeCell};
use std::io::{self, Read, Write};

use crate::vector;
use crate::KeySlots;

/// The key of a slot that holds no vector (`u64::MAX` cannot be a key).
pub(crate) const FREE: u64 = u64::MAX;

/// The graph's value for "the query of this search" (no slot is this large).
pub(crate) const QUERY_VALUE: u64 = 1 << 63;

/// The distance the metric gives a value it cannot resolve (a slot beyond the arena, or a
/// query outside a search): the largest cosine distance, so the graph never prefers it.
const FAR: f32 = 2.0;

/// The first bytes of a saved arena.
const MAGIC: &[u8; 8] = b"engramva";
/// The version of the saved layout.
const LAYOUT: u32 = 1;

/// Bytes before a record's components: its length, an f32.
const HEAD: usize = 4;

/// i8 vectors by slot, with their lengths and keys, and each key's slot.
pub(crate) struct Arena {
    dim: usize,
    /// Slot `s`'s record is `records[s * stride..(s + 1) * stride]`: the vector's
    /// Euclidean length (f32, little-endian; 0 for a free slot) and then its components,
    /// together so that a comparison touches one place in memory.
    records: Vec<i8>,
    /// `HEAD + dim`.
    stride: usize,
    /// Each slot's key, or [`FREE`].
    keys: Vec<u64>,
    /// Free slots, reused before the arena grows.
    free: Vec<u32>,
    /// Each key's slot.
    slots: KeySlots,
}

impl Arena {
    pub(crate) fn new(dim: usize) -> Arena {
        Arena {
            dim,
            records: Vec::new(),
            stride: HEAD + dim,
            keys: Vec::new(),
            free: Vec::new(),
            slots: KeySlots::new(),
        }
    }

    /// Vectors held.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn slot_of(&self, key: u64) -> Option<u32> {
        self.slots.get(key)
    }

    /// Slot `slot`'s components and length (`None` beyond the arena).
    #[inline]
    pub(crate) fn entry(&self, slot: u32) -> Option<(&[i8], f32)> {
        let start = (slot as usize).checked_mul(self.stride)?;
        let record = self.records.get(start..start.checked_add(self.stride)?)?;
        let (head, v) = record.split_at(HEAD);
        let length =
            f32::from_le_bytes([head[0] as u8, head[1] as u8, head[2] as u8, head[3] as u8]);
        Some((v, length))
    }

    /// Slot `s`'s record, to fill.
    fn record_mut(&mut self, s: usize) -> (&mut [i8], &mut [i8]) {
        self.records[s * self.stride..(s + 1) * self.stride].split_at_mut(HEAD)
    }

    /// Sets slot `s`'s components to `v` and its length to match.
    fn set(&mut self, s: usize, v: &[i8]) {
        let length = length(v);
        let (head, components) = self.record_mut(s);
        components.copy_from_slice(v);
        for (h, b) in head.iter_mut().zip(length.to_le_bytes()) {
            *h = b as i8;
        }
    }

    /// The components stored under `key`.
    pub(crate) fn vector_of(&self, key: u64) -> Option<&[i8]> {
        self.entry(self.slot_of(key)?).map(|(v, _)| v)
    }

    /// The keys held and their slots, in slot order.
    pub(crate) fn live(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| **k != FREE)
            .map(|(s, k)| (*k, s as u32))
    }

    /// Stores `v` (of `dim` components) under `key`, in the slot `key` already has, else a
    /// free one, else a new one; returns the slot. `key` must not be [`FREE`].
    pub(crate) fn put(&mut self, key: u64, v: &[i8]) -> u32 {
        debug_assert!(key != FREE && v.len() == self.dim);
        let slot = match self.slots.get(key).or_else(|| self.free.pop()) {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.keys.len())
                    .ok()
                    .filter(|s| u64::from(*s) < QUERY_VALUE && *s != u32::MAX)
                    .expect("an index holds fewer than 2^32 - 1 vectors");
                self.keys.push(FREE);
                self.records.resize(self.records.len() + self.stride, 0);
                slot
            }
        };
        let s = slot as usize;
        self.set(s, v);
        self.keys[s] = key;
        self.slots.insert(key, slot);
        slot
    }

    /// Frees `key`'s slot; returns it. The slot's bytes stay until it is reused, so a
    /// search still walking through the graph's removed node reads a valid vector.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u32> {
        let slot = self.slots.remove(key)?;
        self.keys[slot as usize] = FREE;
        self.free.push(slot);
        Some(slot)
    }

    /// Makes room for `extra` more vectors without reallocating.
    pub(crate) fn reserve(&mut self, extra: usize) {
        let new = extra.saturating_sub(self.free.len());
        self.records.reserve(new.saturating_mul(self.stride));
        self.keys.reserve(new);
    }

    /// Bytes held in memory.
    pub(crate) fn memory_usage(&self) -> usize {
        self.records.capacity()
            + 8 * self.keys.capacity()
            + 4 * self.free.capacity()
            + 4 * self.slots.len()
    }

    /// The cosine distance (1 - cosine similarity) between two of the graph's values:
    /// slots, or [`QUERY_VALUE`] for this thread's query.
    fn distance(&self, a: u64, b: u64) -> f32 {
        let (a, b) = if a == QUERY_VALUE { (b, a) } else { (a, b) };
        let Some((av, al)) = u32::try_from(a).ok().and_then(|s| self.entry(s)) else {
            return FAR;
        };
        if b == QUERY_VALUE {
            return QUERY.with_borrow(|q| match q {
                Some(q) if q.components.len() == av.len() => {
                    cosine_distance(vector::dot_i8_i8(av, &q.components), al, q.length)
                }
                _ => FAR,
            });
        }
        match u32::try_from(b).ok().and_then(|s| self.entry(s)) {
            Some((bv, bl)) => cosine_distance(vector::dot_i8_i8(av, bv), al, bl),
            None => FAR,
        }
    }

    /// Writes the arena in its saved layout.
    pub(crate) fn write_to(&self, mut w: impl Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&LAYOUT.to_le_bytes())?;
        w.write_all(&(self.dim as u64).to_le_bytes())?;
        w.write_all(&(self.keys.len() as u64).to_le_bytes())?;
        for chunk in self.keys.chunks(8192) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|k| k.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        let mut bytes = Vec::with_capacity(4096 * self.dim);
        for records in self.records.chunks(4096 * self.stride) {
            bytes.clear();
            for record in records.chunks_exact(self.stride) {
                bytes.extend(record[HEAD..].iter().map(|&x| x as u8));
            }
            w.write_all(&bytes)?;
        }
        w.flush()
    }

    /// Reads an arena of `dim`-component vectors in the saved layout; the error says what
    /// is wrong with it. Reads to the end: bytes after the last vector are an error.
    pub(crate) fn read_from(mut r: impl Read, dim: usize) -> Result<Arena, String> {
        let short = |e: io::Error| format!("its vectors file is short or unreadable: {e}");
        let mut header = [0u8; 28];
        r.read_exact(&mut header).map_err(short)?;
        if &header[..8] != MAGIC {
            return Err("its vectors file does not start as one".into());
        }
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        let layout = u32::from_le_bytes(header[8..12].try_into().unwrap());
        if layout != LAYOUT {
            return Err(format!(
                "its vectors file has layout {layout} (this build reads {LAYOUT})"
            ));
        }
        if word(12) != dim as u64 {
            return Err(format!(
                "its vectors file holds vectors of dim {}, not {dim}",
                word(12)
            ));
        }
        let count = usize::try_from(word(20))
            .ok()
            .filter(|n| *n < u32::MAX as usize)
            .ok_or("its vectors file records an impossible number of slots")?;
        let mut key_bytes = vec![0u8; count.checked_mul(8).ok_or("too many slots")?];
        r.read_exact(&mut key_bytes).map_err(short)?;
        let keys: Vec<u64> = key_bytes
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        drop(key_bytes);
        let stride = HEAD + dim;
        let mut arena = Arena {
            dim,
            records: vec![0; count.checked_mul(stride).ok_or("too many slots")?],
            stride,
            keys: Vec::with_capacity(count),
            free: Vec::new(),
            slots: KeySlots::new(),
        };
        let mut bytes = vec![0u8; 4096 * dim];
        let mut v = vec![0i8; dim];
        for (s, key) in keys.into_iter().enumerate() {
            if s % 4096 == 0 {
                let block = (count - s).min(4096) * dim;
                r.read_exact(&mut bytes[..block]).map_err(short)?;
            }
            let at = (s % 4096) * dim;
            for (x, b) in v.iter_mut().zip(&bytes[at..at + dim]) {
                *x = *b as i8;
            }
            arena.keys.push(key);
            if key == FREE {
                arena.free.push(s as u32);
                continue;
            }
            arena.set(s, &v);
            if arena.slots.insert(key, s as u32).is_some() {
                return Err(format!("its vectors file holds key {key} twice"));
            }
        }
        let mut rest = [0u8; 1];
        if r.read(&mut rest).map_err(short)? != 0 {
            return Err("its vectors file has bytes after its last vector".into());
        }
        arena.free.reverse();
        arena.slots.shrink_to_fit();
        Ok(arena)
    }
}

fn length(v: &[i8]) -> f32 {
    (vector::dot_i8_i8(v, v) as f32).sqrt()
}

fn cosine_distance(dot: i32, a_length: f32, b_length: f32) -> f32 {
    let lengths = a_length * b_length;
    if lengths > 0.0 {
        1.0 - dot as f32 / lengths
    } else {
        1.0
    }
}

/// A query as the metric reads it.
struct Query {
    components: Vec<i8>,
    length: f32,
}

thread_local! {
    /// The query of the search running on this thread.
    static QUERY: RefCell<Option<Query>> = const { RefCell::new(None) };
}

/// Runs `search` with `components` as this thread's query ([`QUERY_VALUE`]).
pub(crate) fn with_query<R>(components: Vec<i8>, search: impl FnOnce() -> R) -> R {
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            QUERY.set(None);
        }
    }
    let length = length(&components);
    QUERY.set(Some(Query { components, length }));
    let _clear = Clear;
    search()
}

/// The graph's value for `slot`, as the 8 bytes of an i8 "vector".
pub(crate) fn value_of(slot: u64) -> [i8; 8] {
    slot.to_le_bytes().map(|b| b as i8)
}

/// An [`Arena`] shared by an index and its graph's metric.
///
/// The arena changes only through [`get_mut`](Self::get_mut), which the index calls only
/// under its write lock and between calls into the graph; the metric reads it only from
/// inside such calls. So a reference handed out here is never alive while the other
/// kind is.
pub(crate) struct Shared(UnsafeCell<Arena>);

// SAFETY: see the type's contract: shared references are only taken while nothing
// mutates, and the mutable one only while nothing else reads.
unsafe impl Sync for Shared {}

impl Shared {
    pub(crate) fn new(arena: Arena) -> Shared {
        Shared(UnsafeCell::new(arena))
    }

    /// The arena, to read.
    ///
    /// # Safety
    /// No reference from [`get_mut`](Self::get_mut) may be alive.
    pub(crate) unsafe fn get(&self) -> &Arena {
        // SAFETY: the caller's promise.
        unsafe { &*self.0.get() }
    }

    /// The arena, to change.
    ///
    /// # Safety
    /// No other reference to the arena may be alive while this one is.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut(&self) -> &mut Arena {
        // SAFETY: the caller's promise.
        unsafe { &mut *self.0.get() }
    }
}

/// The graph's metric over arena slots: the function usearch calls with pointers to two
/// of its 8-byte values (each a slot or [`QUERY_VALUE`]), valid for the call. Never
/// panics (it runs inside C++): what it cannot resolve is [`FAR`].
pub(crate) type Metric = Box<dyn Fn(*const i8, *const i8) -> f32 + Send + Sync>;

pub(crate) fn metric(shared: std::sync::Arc<Shared>) -> Metric {
    Box::new(move |a: *const i8, b: *const i8| {
        // SAFETY: usearch passes pointers to two values of the graph's 8 dimensions.
        let (a, b) = unsafe {
            (
                std::ptr::read_unaligned(a.cast::<u64>()),
                std::ptr::read_unaligned(b.cast::<u64>()),
            )
        };
        // SAFETY: the metric runs only inside the graph's calls, while the arena is not
        // being changed (`Shared`'s contract).
        let arena = unsafe { shared.get() };
        arena.distance(a, b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena_of(items: &[(u64, [i8; 4])]) -> Arena {
        let mut arena = Arena::new(4);
        for (k, v) in items {
            arena.put(*k, v);
        }
        arena
    }

    #[test]
    fn slots_are_reused_and_keys_keep_theirs() {
        let mut arena = arena_of(&[(10, [1, 0, 0, 0]), (20, [0, 1, 0, 0]), (30, [0, 0, 1, 0])]);
        assert_eq!(arena.slot_of(20), Some(1));
        assert_eq!(arena.put(20, &[0, 2, 0, 0]), 1, "a key keeps its slot");
        assert_eq!(arena.vector_of(20), Some(&[0, 2, 0, 0][..]));
        assert_eq!(arena.remove(10), Some(0));
        assert_eq!(arena.remove(10), None);
        assert_eq!(arena.len(), 2);
        assert_eq!(arena.put(40, &[3, 4, 0, 0]), 0, "a free slot is reused");
        assert_eq!(arena.entry(0), Some((&[3, 4, 0, 0][..], 5.0)));
        assert_eq!(arena.entry(3), None);
        let live: Vec<(u64, u32)> = arena.live().collect();
        assert_eq!(live, vec![(40, 0), (20, 1), (30, 2)]);
    }

    #[test]
    fn distances_between_slots_and_with_the_query() {
        let arena = arena_of(&[(1, [1, 0, 0, 0]), (2, [1, 1, 0, 0]), (3, [-1, 0, 0, 0])]);
        assert!((arena.distance(0, 0) - 0.0).abs() < 1e-6);
        assert!((arena.distance(0, 2) - 2.0).abs() < 1e-6);
        assert!((arena.distance(0, 1) - (1.0 - 0.5f32.sqrt())).abs() < 1e-6);
        // Beyond the arena, or the query outside a search: as far as can be.
        assert_eq!(arena.distance(0, 7), FAR);
        assert_eq!(arena.distance(QUERY_VALUE, 0), FAR);
        let d = with_query(vec![0, 2, 0, 0], || arena.distance(QUERY_VALUE, 1));
        assert!((d - (1.0 - 0.5f32.sqrt())).abs() < 1e-6);
        assert_eq!(
            arena.distance(1, QUERY_VALUE),
            FAR,
            "the query is gone after"
        );
        // A query of another dimension is never compared.
        assert_eq!(
            with_query(vec![1, 0], || arena.distance(0, QUERY_VALUE)),
            FAR
        );
    }

    #[test]
    fn saved_and_read_back_whole_or_reported() {
        let mut arena = arena_of(&[(5, [1, 2, 3, 4]), (6, [-4, 3, -2, 1]), (7, [0, 0, 9, 0])]);
        arena.remove(6);
        let mut bytes = Vec::new();
        arena.write_to(&mut bytes).unwrap();
        let back = Arena::read_from(&bytes[..], 4).unwrap();
        assert_eq!(
            back.live().collect::<Vec<_>>(),
            arena.live().collect::<Vec<_>>()
        );
        assert_eq!(back.entry(2), arena.entry(2));
        assert_eq!(back.vector_of(5), Some(&[1, 2, 3, 4][..]));
        let mut back = back;
        assert_eq!(
            back.put(8, &[1, 1, 1, 1]),
            1,
            "the freed slot is reused after a load"
        );

        assert!(Arena::read_from(&bytes[..bytes.len() - 1], 4).is_err());
        assert!(Arena::read_from(&bytes[..10], 4).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Arena::read_from(&longer[..], 4).is_err());
        assert!(Arena::read_from(&bytes[..], 3).is_err());
        let mut twice = bytes.clone();
        // Slot 2's key becomes slot 0's.
        twice[28 + 16..28 + 24].copy_from_slice(&5u64.to_le_bytes());
        assert!(Arena::read_from(&twice[..], 4).is_err());
    }
}
