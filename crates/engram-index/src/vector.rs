//! Vector arithmetic done on the Rust side: checking input, normalising, quantising to
//! i8, and the brute-force top-k used by the exact searches.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{Hit, IndexError};

/// Checks `v` has `dim` finite components, not all zero, and returns it scaled to unit
/// length.
pub(crate) fn normalized(v: &[f32], dim: usize) -> Result<Vec<f32>, IndexError> {
    if v.len() != dim {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            actual: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::InvalidVector("it contains NaN or infinity"));
    }
    let norm = norm(v);
    if !norm.is_normal() {
        return Err(IndexError::InvalidVector(
            "it has zero length, so it has no direction to compare",
        ));
    }
    Ok(v.iter().map(|x| x / norm).collect())
}

/// Euclidean length, accumulated in f64 so long vectors of tiny components keep precision.
pub(crate) fn norm(v: &[f32]) -> f32 {
    v.iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32
}

/// Scales `v` so its largest component becomes ±127 and rounds to the nearest integer.
/// Cosine similarity ignores the scale, so this keeps as much of the direction as 8 bits
/// can (the engine's own conversion assumes components near ±1 and truncates, which
/// leaves unit vectors of hundreds of dimensions with a handful of levels).
pub(crate) fn quantize_i8(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return vec![0; v.len()];
    }
    let scale = 127.0 / max;
    v.iter()
        .map(|x| (x * scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// Cosine similarity of `a` and `b`; `a_norm` is `a`'s precomputed length.
///
/// One pass for the dot product and `b`'s length, over independent lanes the compiler
/// turns into SIMD (a single running sum cannot be reordered, so it would run one
/// dependent addition at a time: ~4× slower at 384 dimensions).
pub(crate) fn cosine(a: &[f32], a_norm: f32, b: &[f32]) -> f32 {
    cosine_widened(a, a_norm, b, |y| y)
}

/// [`cosine`] of `a` and `b` with `b`'s components widened to f32 by `widen` as they are
/// read; inlined into each caller, so the loop is vectorised for the component type and
/// the caller's target features.
#[inline(always)]
fn cosine_widened<T: Copy>(a: &[f32], a_norm: f32, b: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let (dot, b_squared) = dot_widened(a, b, widen);
    cosine_of(dot, a_norm, b_squared)
}

/// The dot product of `a` and `b` and `b`'s squared length, `b`'s components widened to
/// f32 by `widen`: the sums behind [`cosine_widened`].
#[inline(always)]
fn dot_widened<T: Copy>(a: &[f32], b: &[T], widen: impl Fn(T) -> f32) -> (f32, f32) {
    const LANES: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut dot = [0f32; LANES];
    let mut bb = [0f32; LANES];
    let split = n - n % LANES;
    for (x, y) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            let y = widen(y[i]);
            dot[i] += x[i] * y;
            bb[i] += y * y;
        }
    }
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        let y = widen(*y);
        dot[0] += x * y;
        bb[0] += y * y;
    }
    (dot.iter().sum(), bb.iter().sum())
}

/// The cosine from a dot product, `a`'s length and `b`'s squared length (0 when either
/// vector is zero).
pub(crate) fn cosine_of(dot: f32, a_norm: f32, b_squared: f32) -> f32 {
    let b_norm = b_squared.sqrt();
    if b_norm == 0.0 || a_norm == 0.0 {
        return 0.0;
    }
    (dot / (a_norm * b_norm)).clamp(-1.0, 1.0)
}

/// Cosine similarity of `a` (f32, of length `a_norm`) and `b`, f16 values given by their
/// bits (as the index stores them). Widens and multiplies in one pass: with AVX2, FMA and
/// F16C (checked once at run time) eight components at a time; elsewhere through
/// [`cosine`] over the widened vector. Both sum in f32.
pub(crate) fn cosine_f16(a: &[f32], a_norm: f32, b: &[u16], buf: &mut Vec<f32>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
            return unsafe { x86::cosine_f16(a, a_norm, b) };
        }
    }
    cosine_f16_portable(a, a_norm, b, buf)
}

/// [`cosine_f16`] on any CPU: widen into `buf`, then [`cosine`].
fn cosine_f16_portable(a: &[f32], a_norm: f32, b: &[u16], buf: &mut Vec<f32>) -> f32 {
    buf.clear();
    buf.resize(b.len(), 0.0);
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(
        half::slice::HalfBitsSliceExt::reinterpret_cast::<half::f16>(b),
        buf,
    );
    cosine(a, a_norm, buf)
}

/// Cosine similarity of `a` (f32, of length `a_norm`) and `b`, i8 components as the index
/// stores them (any scale: cosine ignores it). Widens and multiplies in one pass, compiled
/// for AVX2 and FMA where the CPU has them (checked once at run time), else for the
/// baseline; both sum in f32 over independent lanes.
#[cfg(test)]
pub(crate) fn cosine_i8(a: &[f32], a_norm: f32, b: &[i8]) -> f32 {
    let (dot, b_squared) = dot_i8(a, b);
    cosine_of(dot, a_norm, b_squared)
}

/// The dot product of `a` and `b` and `b`'s squared length, the sums behind
/// [`cosine_i8`] (whose caller may want `b`'s length too: see [`i8_margin`]).
pub(crate) fn dot_i8(a: &[f32], b: &[i8]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return unsafe { x86::dot_i8(a, b) };
        }
    }
    dot_i8_lanes(a, b)
}

/// [`dot_i8`]'s loop, inlined into each caller so it is vectorised for the caller's
/// target features.
#[inline(always)]
fn dot_i8_lanes(a: &[f32], b: &[i8]) -> (f32, f32) {
    dot_widened(a, b, f32::from)
}

/// The dot product of two i8 vectors, summed exactly in i32 (any length up to 2^17
/// components cannot overflow: each product is at most 127²). With the fastest kernel the
/// CPU has, chosen once: AVX-512 VNNI (64 components an instruction), AVX2 (32), or the
/// baseline loop over independent lanes. About 15 ns for 384 components with VNNI.
pub(crate) fn dot_i8_i8(a: &[i8], b: &[i8]) -> i32 {
    static KERNEL: std::sync::OnceLock<DotI8> = std::sync::OnceLock::new();
    let kernel = KERNEL.get_or_init(|| {
        I8_KERNELS
            .iter()
            .copied()
            .find(|k| (k.available)())
            .unwrap_or(I8_PORTABLE)
    });
    // SAFETY: a kernel is chosen only when the CPU has its instructions (`available`).
    unsafe { (kernel.dot)(a, b) }
}

/// One implementation of [`dot_i8_i8`] and whether this CPU can run it.
#[derive(Clone, Copy)]
pub(crate) struct DotI8 {
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) name: &'static str,
    pub(crate) available: fn() -> bool,
    /// Unsafe to call unless `available()` is true.
    pub(crate) dot: unsafe fn(&[i8], &[i8]) -> i32,
}

/// The baseline kernel, which runs anywhere.
const I8_PORTABLE: DotI8 = DotI8 {
    name: "portable",
    available: || true,
    dot: dot_i8_i8_portable,
};

/// The kernels of [`dot_i8_i8`], fastest first.
pub(crate) const I8_KERNELS: &[DotI8] = &[
    #[cfg(target_arch = "x86_64")]
    DotI8 {
        name: "avx512-vnni",
        available: || {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        },
        dot: x86::dot_i8_i8_vnni,
    },
    #[cfg(target_arch = "x86_64")]
    DotI8 {
        name: "avx2",
        available: || std::arch::is_x86_feature_detected!("avx2"),
        dot: x86::dot_i8_i8_avx2,
    },
    I8_PORTABLE,
];

/// [`dot_i8_i8`] in plain Rust, over 16 independent lanes (which the compiler vectorises
/// for the caller's target features). Safe on any CPU; `unsafe` only to share the
/// kernels' type.
unsafe fn dot_i8_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_i8_lanes(a, b)
}

#[inline(always)]
fn dot_i8_i8_lanes(a: &[i8], b: &[i8]) -> i32 {
    const LANES: usize = 16;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; LANES];
    let split = n - n % LANES;
    for (x, y) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let tail: i32 = a[split..]
        .iter()
        .zip(&b[split..])
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// How far the cosine of a unit f32 query with an i8 vector of length `b_norm` (as
/// [`quantize_i8`] rounds it: largest component ±127) may be from its cosine with the
/// vector before rounding: seven standard deviations of the rounding's error.
///
/// Rounding moves each component by up to half a step, uniformly, so by a variance of 1/12
/// of a step squared, and the query's product with those moves has a standard deviation
/// of at most `sqrt(1/12) / b_norm` (less the part along the vector itself, which the
/// cosine normalises away). For the 100,000 real MiniLM vectors of `engram bench search`
/// the margin is 0.0019–0.0046 (median 0.0026: `b_norm` about 780; a vector with a few
/// outsized components is shorter once rounded, and gets a wider one), and over 100
/// million pairs of them with 1,000 queries the largest error was 0.82 of its margin.
pub(crate) fn i8_margin(b_norm: f32) -> f32 {
    /// Seven times the square root of 1/12.
    const SEVEN_SIGMA: f32 = 2.020_726;
    if b_norm > 0.0 {
        SEVEN_SIGMA / b_norm
    } else {
        0.0
    }
}

/// How far the cosine of an f32 query with a vector stored in f16 may be from its cosine
/// with the vector before rounding, at most: each component moves by at most 2^-11 of
/// itself, so the product of two unit vectors by at most 2^-11 and the stored vector's
/// length by as much again.
pub(crate) const F16_MARGIN: f32 = 1.0 / 1024.0;

/// [`F16_MARGIN`] when the query was rounded to f16 too (the graph's own scores).
pub(crate) const F16_GRAPH_MARGIN: f32 = 1.0 / 512.0;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::dot_i8`] compiled for AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_i8(a: &[f32], b: &[i8]) -> (f32, f32) {
        super::dot_i8_lanes(a, b)
    }

    /// [`super::dot_i8_i8`] with AVX2: 32 components at a time. `vpmaddubsw` multiplies
    /// unsigned by signed bytes and adds pairs into 16 bits, so `a`'s magnitudes are
    /// multiplied by `b` with `a`'s signs moved onto it (`vpsignb`), which is `a · b`
    /// (a pair of products is at most 2 · 128 · 127 = 32,512, inside i16); `vpmaddwd` by
    /// ones then widens the pairs into 32-bit lanes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_i8_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let ones = _mm256_set1_epi16(1);
        let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut i = 0;
        // A macro, not a closure: the intrinsics stay inside this AVX2 function.
        macro_rules! step {
            ($acc:expr, $va:expr, $vb:expr) => {{
                let (va, vb) = ($va, $vb);
                let pairs =
                    _mm256_maddubs_epi16(_mm256_sign_epi8(va, va), _mm256_sign_epi8(vb, va));
                _mm256_add_epi32($acc, _mm256_madd_epi16(pairs, ones))
            }};
        }
        while i + 64 <= n {
            // SAFETY: i + 64 <= n, so the four 32-byte loads are in bounds.
            let (va0, vb0, va1, vb1) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(a.as_ptr().add(i + 32).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i + 32).cast()),
                )
            };
            acc0 = step!(acc0, va0, vb0);
            acc1 = step!(acc1, va1, vb1);
            i += 64;
        }
        if i + 32 <= n {
            // SAFETY: i + 32 <= n.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_si256(a.as_ptr().add(i).cast()),
                    _mm256_loadu_si256(b.as_ptr().add(i).cast()),
                )
            };
            acc0 = step!(acc0, va, vb);
            i += 32;
        }
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` is 32 bytes.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_add_epi32(acc0, acc1)) };
        lanes.iter().sum::<i32>() + super::dot_i8_i8_lanes(&a[i..n], &b[i..n])
    }

    /// [`super::dot_i8_i8`] with AVX-512 VNNI: 64 components at a time, widened to 16
    /// bits, then multiplied, added in pairs and accumulated by one instruction
    /// (`vpdpwssd`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_i8_i8_vnni(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (mut acc0, mut acc1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        let mut i = 0;
        while i + 64 <= n {
            // SAFETY: i + 64 <= n, so both 64-byte loads are in bounds.
            let (va, vb) = unsafe {
                (
                    _mm512_loadu_si512(a.as_ptr().add(i).cast()),
                    _mm512_loadu_si512(b.as_ptr().add(i).cast()),
                )
            };
            let (a0, a1) = (
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(va)),
                _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(va)),
            );
            let (b0, b1) = (
                _mm512_cvtepi8_epi16(_mm512_castsi512_si256(vb)),
                _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64::<1>(vb)),
            );
            acc0 = _mm512_dpwssd_epi32(acc0, a0, b0);
            acc1 = _mm512_dpwssd_epi32(acc1, a1, b1);
            i += 64;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1))
            + super::dot_i8_i8_lanes(&a[i..n], &b[i..n])
    }

    /// [`super::cosine_f16`] with AVX2, FMA and F16C: two accumulators of eight lanes
    /// each for the dot product and for `b`'s squared length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn cosine_f16(a: &[f32], a_norm: f32, b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let (mut dot0, mut dot1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut bb0, mut bb1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, so both 16-component loads are in bounds.
            let (x0, x1, h0, h1) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm_loadu_si128(b.as_ptr().add(i).cast()),
                    _mm_loadu_si128(b.as_ptr().add(i + 8).cast()),
                )
            };
            let (y0, y1) = (_mm256_cvtph_ps(h0), _mm256_cvtph_ps(h1));
            dot0 = _mm256_fmadd_ps(x0, y0, dot0);
            dot1 = _mm256_fmadd_ps(x1, y1, dot1);
            bb0 = _mm256_fmadd_ps(y0, y0, bb0);
            bb1 = _mm256_fmadd_ps(y1, y1, bb1);
            i += 16;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(dot0, dot1));
        let mut dot: f32 = lanes.iter().sum();
        _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(bb0, bb1));
        let mut bb: f32 = lanes.iter().sum();
        for j in i..n {
            let y = half::f16::from_bits(b[j]).to_f32();
            dot += a[j] * y;
            bb += y * y;
        }
        super::cosine_of(dot, a_norm, bb)
    }
}

/// Keeps the `k` best hits seen so far.
pub(crate) struct TopK {
    k: usize,
    // A min-heap on similarity (via `Worst`), so the root is the hit to evict.
    heap: BinaryHeap<Worst>,
}

struct Worst(Hit);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the lowest similarity (then the highest key) is the "greatest".
        other
            .0
            .similarity
            .total_cmp(&self.0.similarity)
            .then(self.0.key.cmp(&other.0.key))
    }
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(4096)),
        }
    }

    pub(crate) fn push(&mut self, hit: Hit) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if Worst(hit).cmp(&worst) == Ordering::Less {
                *worst = Worst(hit);
            }
        }
    }

    /// The hits, best first (ties broken by the smaller key).
    pub(crate) fn into_sorted(self) -> Vec<Hit> {
        let mut hits: Vec<Hit> = self.heap.into_iter().map(|w| w.0).collect();
        sort_hits(&mut hits);
        hits
    }
}

/// Sorts hits by similarity, best first, ties broken by the smaller key.
pub(crate) fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| {
        b.similarity
            .total_cmp(&a.similarity)
            .then(a.key.cmp(&b.key))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic sequence of values in [-1, 1) from `seed` (xorshift; no dependency
    /// needed for this).
    fn uniform(mut state: u64) -> impl FnMut() -> f32 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    #[test]
    fn normalized_checks_and_scales() {
        let v = normalized(&[3.0, 4.0], 2).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(matches!(
            normalized(&[1.0], 2),
            Err(IndexError::DimensionMismatch {
                expected: 2,
                actual: 1
            })
        ));
        assert!(matches!(
            normalized(&[0.0, 0.0], 2),
            Err(IndexError::InvalidVector(_))
        ));
        assert!(matches!(
            normalized(&[f32::NAN, 1.0], 2),
            Err(IndexError::InvalidVector(_))
        ));
        assert!(matches!(
            normalized(&[f32::INFINITY, 1.0], 2),
            Err(IndexError::InvalidVector(_))
        ));
    }

    #[test]
    fn i8_quantization_uses_the_full_range_and_keeps_direction() {
        let v = [0.01, -0.02, 0.005, 0.0];
        let q = quantize_i8(&v);
        assert_eq!(q, vec![64, -127, 32, 0]);
        let back: Vec<f32> = q.iter().map(|&x| f32::from(x)).collect();
        assert!(cosine(&v, norm(&v), &back) > 0.9999);
        assert_eq!(quantize_i8(&[0.0, 0.0]), vec![0, 0]);
    }

    #[test]
    fn cosine_agrees_with_an_f64_reference_at_every_length() {
        let mut next = uniform(0x9e37_79b9_7f4a_7c15);
        for n in [1, 2, 15, 16, 17, 31, 33, 383, 384, 385, 1536] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let dot: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let want = dot / (f64::from(norm(&a)) * f64::from(norm(&b)));
            let got = cosine(&a, norm(&a), &b);
            assert!(
                (f64::from(got) - want).abs() < 1e-5,
                "n={n}: {got} vs {want}"
            );
            // Identical vectors: 1; a zero vector: 0.
            assert!((cosine(&a, norm(&a), &a) - 1.0).abs() < 1e-5, "n={n}");
            assert_eq!(cosine(&a, norm(&a), &vec![0.0; n]), 0.0);
        }
    }

    #[test]
    fn f16_cosine_agrees_with_the_widened_one_at_every_length() {
        let mut next = uniform(0x2545_f491_4f6c_dd1d);
        let mut buf = Vec::new();
        for n in [1, 2, 7, 8, 15, 16, 17, 31, 33, 383, 384, 385, 1536] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<u16> = (0..n)
                .map(|_| half::f16::from_f32(next()).to_bits())
                .collect();
            let wide: Vec<f32> = b
                .iter()
                .map(|h| half::f16::from_bits(*h).to_f32())
                .collect();
            let want = cosine(&a, norm(&a), &wide);
            let zero = vec![0u16; n];
            // The dispatching one (AVX2/FMA/F16C on most x86 CPUs) and the portable one.
            for f in [cosine_f16, cosine_f16_portable] {
                let got = f(&a, norm(&a), &b, &mut buf);
                assert!((got - want).abs() < 1e-5, "n={n}: {got} vs {want}");
                assert_eq!(f(&a, norm(&a), &zero, &mut buf), 0.0);
            }
        }
    }

    #[test]
    fn i8_cosine_agrees_with_the_widened_one_at_every_length() {
        let mut next = uniform(0x5851_f42d_4c95_7f2d);
        for n in [1, 2, 7, 8, 15, 16, 17, 31, 33, 383, 384, 385, 1536] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<i8> = quantize_i8(&(0..n).map(|_| next()).collect::<Vec<_>>());
            let wide: Vec<f32> = b.iter().map(|&x| f32::from(x)).collect();
            let want = cosine(&a, norm(&a), &wide);
            let wide_squared: f32 = wide.iter().map(|x| x * x).sum();
            // The dispatching sums (AVX2/FMA on most x86 CPUs) and the baseline ones.
            for (dot, b_squared) in [dot_i8(&a, &b), dot_i8_lanes(&a, &b)] {
                let got = cosine_of(dot, norm(&a), b_squared);
                assert!((got - want).abs() < 1e-5, "n={n}: {got} vs {want}");
                let off = (b_squared - wide_squared).abs();
                assert!(
                    off <= wide_squared * 1e-6,
                    "n={n}: {b_squared} vs {wide_squared}"
                );
            }
            assert!((cosine_i8(&a, norm(&a), &b) - want).abs() < 1e-5, "n={n}");
            assert_eq!(cosine_i8(&a, norm(&a), &vec![0i8; n]), 0.0);
            assert_eq!(dot_i8_lanes(&a, &vec![0i8; n]), (0.0, 0.0));
        }
    }

    #[test]
    fn every_i8_kernel_agrees_with_the_widened_sum_at_every_length() {
        let mut next = uniform(0x1405_7b7e_f767_814f);
        for n in [
            0, 1, 7, 16, 31, 32, 33, 63, 64, 65, 127, 383, 384, 385, 1536,
        ] {
            let a: Vec<i8> = (0..n).map(|_| (next() * 127.9) as i8).collect();
            let b: Vec<i8> = (0..n).map(|_| (next() * 127.9) as i8).collect();
            let want: i32 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| i32::from(*x) * i32::from(*y))
                .sum();
            let extremes = vec![-127i8; n];
            let most = n as i32 * 127 * 127;
            // -128 (never stored, but a valid i8) against 127: the largest products there
            // are of the other sign.
            let (low, high) = (vec![-128i8; n], vec![127i8; n]);
            for kernel in I8_KERNELS.iter().filter(|k| (k.available)()) {
                // SAFETY: the CPU has the kernel's instructions (just checked).
                let (got, top) =
                    unsafe { ((kernel.dot)(&a, &b), (kernel.dot)(&extremes, &extremes)) };
                assert_eq!(got, want, "{} at n={n}", kernel.name);
                assert_eq!(top, most, "{} at n={n}", kernel.name);
                // SAFETY: as above.
                let least = unsafe { (kernel.dot)(&low, &high) };
                assert_eq!(least, n as i32 * -128 * 127, "{} at n={n}", kernel.name);
            }
            assert_eq!(dot_i8_i8(&a, &b), want, "n={n}");
        }
    }

    #[test]
    fn top_k_keeps_the_best_sorted() {
        let mut top = TopK::new(3);
        for (key, similarity) in [(1, 0.1), (2, 0.9), (3, 0.5), (4, 0.7), (5, -0.2), (6, 0.7)] {
            top.push(Hit {
                key,
                similarity,
                margin: 0.0,
            });
        }
        let keys: Vec<u64> = top.into_sorted().iter().map(|h| h.key).collect();
        assert_eq!(keys, vec![2, 4, 6]);

        let mut none = TopK::new(0);
        none.push(Hit {
            key: 1,
            similarity: 1.0,
            margin: 0.0,
        });
        assert!(none.into_sorted().is_empty());
    }
}
