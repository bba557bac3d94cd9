//! One-bit sketches of vectors, to shortlist the candidates of an exact search.
//!
//! Scoring a filter's candidates exactly costs a look-up in the graph's key table and a
//! read of each stored vector (about half a microsecond each, dependent memory reads
//! under the engine's lock). A [`Sketch`] keeps one bit per component instead (its
//! sign), 48 bytes a vector, held by the caller next to the fields it filters on. The
//! query stays in full precision: [`SketchQuery::score`] is the dot product of the query
//! with the vector's signs (±1), up to a constant, which ranks a vector's true
//! neighbours near the top far better than comparing two sketches bit by bit
//! (docs/benchmarks.md: among 1,000 real MiniLM vectors, the exact top 10 were all in the
//! sketch's best 200 for every one of 300 queries). So an exact search over thousands of
//! candidates can score only the sketch's best few hundred exactly.
//!
//! Vectors of more than [`SKETCH_BITS`] components are folded: component `i` adds to
//! bit `i mod SKETCH_BITS`, for the vector and the query alike (a fixed projection onto
//! sums of orthogonal axes). Fewer components leave the last bits unused.

/// Bits in a sketch.
pub const SKETCH_BITS: usize = 384;
const BYTES: usize = SKETCH_BITS / 8;
const NIBBLES: usize = SKETCH_BITS / 4;

/// The signs of a vector's (folded) components, one bit each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sketch([u8; BYTES]);

impl Default for Sketch {
    fn default() -> Self {
        Sketch([0; BYTES])
    }
}

/// `v` folded to [`SKETCH_BITS`] components.
fn fold(v: &[f32]) -> [f32; SKETCH_BITS] {
    let mut out = [0f32; SKETCH_BITS];
    for part in v.chunks(SKETCH_BITS) {
        for (o, x) in out.iter_mut().zip(part) {
            *o += x;
        }
    }
    out
}

impl Sketch {
    /// The sketch of `v`: bit `j` is set when folded component `j` is positive. Any
    /// scale of `v` gives the same sketch.
    pub fn of(v: &[f32]) -> Sketch {
        let mut bytes = [0u8; BYTES];
        let set = |bytes: &mut [u8; BYTES], folded: &[f32]| {
            for (byte, part) in bytes.iter_mut().zip(folded.chunks(8)) {
                *byte = part
                    .iter()
                    .enumerate()
                    .fold(0, |b, (i, x)| b | (u8::from(*x > 0.0) << i));
            }
        };
        if v.len() <= SKETCH_BITS {
            set(&mut bytes, v);
        } else {
            set(&mut bytes, &fold(v));
        }
        Sketch(bytes)
    }
}

/// A query, ready to score sketches: for each group of four bits, the sum of the query's
/// components over each of the 16 ways they can be set (6 KiB, built in about a
/// microsecond).
pub struct SketchQuery {
    table: Box<[[f32; 16]; NIBBLES]>,
}

impl SketchQuery {
    pub fn new(query: &[f32]) -> SketchQuery {
        let q = fold(query);
        let mut table = Box::new([[0f32; 16]; NIBBLES]);
        for (n, row) in table.iter_mut().enumerate() {
            let part = &q[n * 4..n * 4 + 4];
            for m in 1..16usize {
                // The sum for `m` is the sum for `m` without its lowest bit, plus that bit's
                // component.
                row[m] = row[m & (m - 1)] + part[m.trailing_zeros() as usize];
            }
        }
        SketchQuery { table }
    }

    /// The sum of the query's components whose bit `s` sets. The dot product of the
    /// query with the sketched vector's signs is twice this less the sum of all the
    /// query's components, the same for every sketch: so this ranks sketches as that
    /// dot product does.
    pub fn score(&self, s: &Sketch) -> f32 {
        // Four running sums, so the additions do not wait on each other.
        let mut acc = [0f32; 4];
        for (i, pair) in s.0.chunks_exact(2).enumerate() {
            let n = i * 4;
            acc[0] += self.table[n][usize::from(pair[0] & 15)];
            acc[1] += self.table[n + 1][usize::from(pair[0] >> 4)];
            acc[2] += self.table[n + 2][usize::from(pair[1] & 15)];
            acc[3] += self.table[n + 3][usize::from(pair[1] >> 4)];
        }
        (acc[0] + acc[1]) + (acc[2] + acc[3])
    }

    /// The `keep` items whose sketches score best, in no particular order (all of them
    /// when there are no more than `keep`).
    pub fn shortlist<T: Copy>(&self, items: &[(T, &Sketch)], keep: usize) -> Vec<T> {
        if items.len() <= keep {
            return items.iter().map(|(t, _)| *t).collect();
        }
        let mut scored: Vec<(f32, T)> = items.iter().map(|(t, s)| (self.score(s), *t)).collect();
        if keep > 0 {
            scored.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
        }
        scored.truncate(keep);
        scored.into_iter().map(|(_, t)| t).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, dim: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..dim)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// The score by its definition: the query's components where the sign is positive.
    fn plain_score(query: &[f32], v: &[f32]) -> f32 {
        let (q, v) = (fold(query), fold(v));
        q.iter()
            .zip(v)
            .filter(|(_, x)| *x > 0.0)
            .map(|(c, _)| c)
            .sum()
    }

    #[test]
    fn bits_are_the_signs_and_scale_does_not_matter() {
        let mut v = vec![0f32; SKETCH_BITS];
        v[0] = 0.5;
        v[9] = 2.0;
        v[10] = -1.0;
        v[383] = 1e-6;
        let s = Sketch::of(&v);
        assert_eq!(s.0[0], 1);
        assert_eq!(s.0[1], 2);
        assert_eq!(s.0[47], 128);
        assert_eq!(s.0.iter().map(|b| b.count_ones()).sum::<u32>(), 3);
        let scaled: Vec<f32> = v.iter().map(|x| x * 1000.0).collect();
        assert_eq!(Sketch::of(&scaled), s);
        assert_eq!(Sketch::of(&[0.0; 8]), Sketch::default());
    }

    #[test]
    fn the_score_is_the_sum_over_set_bits_at_any_dimension() {
        for dim in [3, 16, 384, 385, 768, 1536] {
            let q = lcg(7, dim);
            let sq = SketchQuery::new(&q);
            for seed in 0..20 {
                let v = lcg(seed, dim);
                let (got, want) = (sq.score(&Sketch::of(&v)), plain_score(&q, &v));
                assert!((got - want).abs() < 1e-4, "dim {dim}: {got} against {want}");
            }
        }
    }

    #[test]
    fn folding_keeps_every_component() {
        // 768 components: component 384 + j folds onto bit j.
        let mut v = vec![0f32; 768];
        v[5] = -1.0;
        v[389] = 3.0;
        v[6] = 1.0;
        v[390] = -3.0;
        let s = Sketch::of(&v);
        assert_eq!(s.0[0], 1 << 5);
    }

    #[test]
    fn the_shortlist_keeps_the_best_scores() {
        let q = lcg(1, 64);
        let sq = SketchQuery::new(&q);
        let sketches: Vec<Sketch> = (0..500).map(|s| Sketch::of(&lcg(s + 100, 64))).collect();
        let items: Vec<(usize, &Sketch)> = sketches.iter().enumerate().collect();
        let kept = sq.shortlist(&items, 25);
        assert_eq!(kept.len(), 25);
        let mut all: Vec<(f32, usize)> = items.iter().map(|(i, s)| (sq.score(s), *i)).collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0));
        let cut = all[24].0;
        for i in &kept {
            assert!(sq.score(&sketches[*i]) >= cut);
        }
        let mut distinct = kept.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 25);
        // Fewer items than kept: all of them; none kept: none.
        assert_eq!(sq.shortlist(&items[..10], 25).len(), 10);
        assert!(sq.shortlist(&items, 0).is_empty());
    }
}
