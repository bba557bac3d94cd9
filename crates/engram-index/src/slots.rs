//! [`KeySlots`]: a map from `u64` keys to `u32` slots for keys that are mostly small,
//! dense integers, such as a table's row ids.

use std::collections::HashMap;

use foldhash::fast::RandomState;

/// An empty place in the dense part.
const NONE: u32 = u32::MAX;

/// Keys past this many per live key (plus [`DENSE_FLOOR`]) go to the hash map.
const DENSE_PER_KEY: usize = 4;
/// Keys below this always go in the dense part.
const DENSE_FLOOR: usize = 4096;

/// Keys to slots, where the keys are mostly small and dense (row ids assigned one after
/// the other). A key below a bound that grows with the map is a place in a vector (4 bytes
/// per key up to the largest), any other key an entry of a hash map. A hash table of a
/// million `(u64, u32)` entries takes 2,097,152 places of 17 bytes (it is at most 7/8
/// full, and grows by doubling), 36 MB; the vector of a million row ids takes 4 MB.
///
/// The bound is 4 places per live key (and at least 4,096), so a map whose keys are
/// sparse (most rows deleted before the map was built, say) degrades to the hash map
/// rather than to a vector of mostly empty places. A slot must be below `u32::MAX`.
#[derive(Default)]
pub struct KeySlots {
    dense: Vec<u32>,
    /// Keys that were beyond the dense bound when inserted. A key is never in both parts.
    sparse: HashMap<u64, u32, RandomState>,
    len: usize,
}

impl KeySlots {
    pub fn new() -> KeySlots {
        KeySlots::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: u64) -> Option<u32> {
        match usize::try_from(key).ok().and_then(|k| self.dense.get(k)) {
            Some(&NONE) | None if !self.sparse.is_empty() => self.sparse.get(&key).copied(),
            Some(&NONE) | None => None,
            Some(&slot) => Some(slot),
        }
    }

    pub fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key`'s slot; returns the slot it had.
    pub fn insert(&mut self, key: u64, slot: u32) -> Option<u32> {
        assert!(slot != NONE, "a slot must be below u32::MAX");
        let bound = (self.len + 1) * DENSE_PER_KEY + DENSE_FLOOR;
        match usize::try_from(key) {
            Ok(k) if k < self.dense.len() || k < bound => {
                if k >= self.dense.len() {
                    // Doubling, so that keys arriving in order cost amortised O(1).
                    let to = (k + 1).max(self.dense.len() * 2).min(bound.max(k + 1));
                    self.dense.resize(to, NONE);
                }
                // The key may have gone to the hash map when the bound was lower.
                let old = match std::mem::replace(&mut self.dense[k], slot) {
                    NONE if !self.sparse.is_empty() => self.sparse.remove(&key),
                    NONE => None,
                    old => Some(old),
                };
                if old.is_none() {
                    self.len += 1;
                }
                old
            }
            _ => {
                let old = self.sparse.insert(key, slot);
                if old.is_none() {
                    self.len += 1;
                }
                old
            }
        }
    }

    /// Removes `key`; returns its slot.
    pub fn remove(&mut self, key: u64) -> Option<u32> {
        let dense = usize::try_from(key)
            .ok()
            .and_then(|k| self.dense.get_mut(k));
        let old = match dense {
            Some(place) if *place != NONE => Some(std::mem::replace(place, NONE)),
            _ => self.sparse.remove(&key),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Replaces every slot `s` with `f(s)`.
    pub fn remap(&mut self, mut f: impl FnMut(u32) -> u32) {
        for place in self.dense.iter_mut().filter(|p| **p != NONE) {
            *place = f(*place);
        }
        for slot in self.sparse.values_mut() {
            *slot = f(*slot);
        }
    }

    /// Gives back spare capacity.
    pub fn shrink_to_fit(&mut self) {
        let used = self
            .dense
            .iter()
            .rposition(|p| *p != NONE)
            .map_or(0, |i| i + 1);
        self.dense.truncate(used);
        self.dense.shrink_to_fit();
        self.sparse.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so the test needs no dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn behaves_as_a_hash_map_for_any_keys() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for round in 0..20 {
            let mut slots = KeySlots::new();
            let mut model: HashMap<u64, u32> = HashMap::new();
            // Mostly dense keys, some huge ones, and some that become dense later.
            for _ in 0..5000 {
                let r = next(&mut seed);
                let key = match r % 10 {
                    0 => r >> 3,
                    1 => 20_000 + r % 50_000,
                    _ => r % (2_000 + round * 500),
                };
                match (r >> 40) % 4 {
                    0 => assert_eq!(slots.remove(key), model.remove(&key), "remove {key}"),
                    _ => {
                        let slot = (r >> 20) as u32 % 1_000_000;
                        assert_eq!(
                            slots.insert(key, slot),
                            model.insert(key, slot),
                            "insert {key}"
                        );
                    }
                }
                assert_eq!(slots.len(), model.len());
            }
            slots.remap(|s| s + 1);
            for v in model.values_mut() {
                *v += 1;
            }
            slots.shrink_to_fit();
            for (k, v) in &model {
                assert_eq!(slots.get(*k), Some(*v), "key {k}");
            }
            for _ in 0..2000 {
                let key = next(&mut seed) % 100_000;
                assert_eq!(slots.get(key), model.get(&key).copied(), "key {key}");
                assert_eq!(slots.contains(key), model.contains_key(&key));
            }
        }
    }

    #[test]
    fn row_ids_in_order_take_four_bytes_each() {
        let mut slots = KeySlots::new();
        for rid in 1..=100_000u64 {
            slots.insert(rid, rid as u32 - 1);
        }
        slots.shrink_to_fit();
        assert_eq!(slots.len(), 100_000);
        assert!(slots.sparse.is_empty());
        assert!(
            slots.dense.capacity() <= 100_001,
            "{}",
            slots.dense.capacity()
        );
        assert_eq!(slots.get(100_000), Some(99_999));
        assert_eq!(slots.get(0), None);
        assert_eq!(slots.get(100_001), None);
    }

    #[test]
    fn sparse_keys_do_not_grow_the_vector() {
        let mut slots = KeySlots::new();
        for i in 0..1000u64 {
            slots.insert(1_000_000 + i * 1000, i as u32);
        }
        assert!(slots.dense.len() <= DENSE_FLOOR + 4 * 1000);
        assert_eq!(slots.get(1_000_000 + 999 * 1000), Some(999));
        assert_eq!(slots.remove(1_000_000), Some(0));
        assert_eq!(slots.len(), 999);
    }
}
