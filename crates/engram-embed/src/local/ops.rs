//! CPU kernels for the BERT forward pass, on plain `f32` slices.
//!
//! Elementwise work is fused where BERT puts it side by side (bias + GELU; bias + residual +
//! layer norm; head split + bias) and written so the compiler vectorises it; on x86-64 each
//! kernel is also compiled for AVX2+FMA and chosen at run time. Matrix products go to the
//! `gemm` crate (candle's own CPU matmul engine) called directly, with the thread count
//! given explicitly.

use gemm::Parallelism;

// ---------------------------------------------------------------------------------------
// Scalar maths, written branch-free so loops over them vectorise.

/// erf(x) as a rational minimax approximation on [-4, 4] (erf is ±1 in f32 beyond);
/// the coefficients are Eigen's / XLA's `erf` for f32. Absolute error < 2e-7.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_2e-3;
    q = x2 * q + -1.426_473_9e-2;
    p / q
}

/// GELU in its exact erf form, as BERT (and `transformers`' `gelu`) defines it.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// e^x for x <= 0 (softmax after subtracting the row maximum): range reduction to
/// x = n·ln2 + r with |r| <= ln2/2, then a degree-7 Taylor polynomial.
/// Relative error < 3e-7; inputs below -87 give ~1e-38 instead of a denormal.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 0.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = r * (1.0 / 5040.0) + 1.0 / 720.0;
    p = r * p + 1.0 / 120.0;
    p = r * p + 1.0 / 24.0;
    p = r * p + 1.0 / 6.0;
    p = r * p + 0.5;
    p = r * p + 1.0;
    p = r * p + 1.0;
    p * f32::from_bits(((ni + 127) << 23) as u32)
}

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

// ---------------------------------------------------------------------------------------
// Row kernels. Each has a portable body (`#[inline(always)]`) and, on x86-64, a copy
// compiled with AVX2+FMA that `dispatch!` picks when the CPU has it.

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident, $generic:ident, ($($arg:ident : $ty:ty),*)) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if has_avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    unsafe { avx2($($arg),*) };
                    return;
                }
            }
            $generic($($arg),*)
        }
    };
}

#[inline(always)]
fn bias_gelu_generic(xs: &mut [f32], bias: &[f32]) {
    for row in xs.chunks_exact_mut(bias.len()) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x = gelu(*x + b);
        }
    }
}
dispatch!(
    /// `x = gelu(x + bias)` over the rows of `xs` (row length `bias.len()`).
    bias_gelu,
    bias_gelu_generic,
    (xs: &mut [f32], bias: &[f32])
);

#[inline(always)]
fn layer_norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let mut sq = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            let d = c[i] - mean;
            sq[i] += d * d;
        }
    }
    let var =
        (sq.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

#[inline(always)]
fn add_layer_norm_generic(
    xs: &mut [f32],
    residual: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let n = gamma.len();
    for (row, r_row) in xs.chunks_exact_mut(n).zip(residual.chunks_exact(n)) {
        for ((x, &r), &b) in row.iter_mut().zip(r_row).zip(bias) {
            *x += r + b;
        }
        layer_norm_row(row, gamma, beta, eps);
    }
}
dispatch!(
    /// `x = layer_norm(x + residual + bias)` over rows of length `gamma.len()`.
    add_layer_norm,
    add_layer_norm_generic,
    (xs: &mut [f32], residual: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32)
);

#[inline(always)]
fn layer_norm_generic(xs: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    for row in xs.chunks_exact_mut(gamma.len()) {
        layer_norm_row(row, gamma, beta, eps);
    }
}
dispatch!(
    /// Layer norm of each row of `xs` (row length `gamma.len()`), in place.
    layer_norm,
    layer_norm_generic,
    (xs: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32)
);

#[inline(always)]
fn softmax_rows_generic(scores: &mut [f32], row_len: usize) {
    for row in scores.chunks_exact_mut(row_len) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for v in row.iter_mut() {
            *v = exp_neg(*v - max);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}
dispatch!(
    /// Softmax of each row (length `row_len`) of `scores`, in place.
    softmax_rows,
    softmax_rows_generic,
    (scores: &mut [f32], row_len: usize)
);

// ---------------------------------------------------------------------------------------
// Matrix products.

/// A `*mut f32` that may cross threads: tasks write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint output regions to parallel tasks (see `attention`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

fn parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// `out[m, n] = x[m, k] · w[k, n]`, all row-major and contiguous, on up to `threads`
/// threads of the current rayon pool (`gemm` decides how many are worth it).
pub fn matmul(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, threads: usize) -> Vec<f32> {
    assert!(x.len() == m * k && w.len() == k * n);
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    // SAFETY: the sizes are checked above, so every read stays inside x and w and every
    // write inside `out`, a fresh buffer that aliases neither.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(threads),
        );
    }
    out
}

// ---------------------------------------------------------------------------------------
// Attention.

/// Where each sequence of a packed batch lives: sequence `s` has `lens[s]` tokens starting
/// at row `offsets[s]` of the packed `[total, hidden]` matrix.
#[derive(Clone, Debug)]
pub struct Packing {
    pub lens: Vec<usize>,
    pub offsets: Vec<usize>,
    pub total: usize,
}

impl Packing {
    pub fn new(lens: Vec<usize>) -> Self {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut total = 0;
        for &l in &lens {
            offsets.push(total);
            total += l;
        }
        Self {
            lens,
            offsets,
            total,
        }
    }

    pub fn batch(&self) -> usize {
        self.lens.len()
    }
}

/// Packed `[total, 3 * hidden]` (the fused Q|K|V projection, bias not yet added) to one
/// block per sequence, `[3, heads, len, head_dim]` (Q, K, V; head-major), blocks back to
/// back: sequence `s` starts at element `3 * hidden * offsets[s]`. No padding anywhere.
pub fn split_heads(
    qkv: &[f32],
    p: &Packing,
    heads: usize,
    head_dim: usize,
    bias: &[f32],
) -> Vec<f32> {
    let hidden = heads * head_dim;
    let cols = 3 * hidden;
    assert!(qkv.len() == p.total * cols && bias.len() == cols);
    let mut out = vec![0f32; qkv.len()];
    for s in 0..p.batch() {
        let len = p.lens[s];
        let block = &mut out[cols * p.offsets[s]..][..cols * len];
        for t in 0..len {
            let row = &qkv[(p.offsets[s] + t) * cols..][..cols];
            for part in 0..3 {
                for head in 0..heads {
                    let from = part * hidden + head * head_dim;
                    let to = ((part * heads + head) * len + t) * head_dim;
                    for ((o, &x), &b) in block[to..to + head_dim]
                        .iter_mut()
                        .zip(&row[from..from + head_dim])
                        .zip(&bias[from..from + head_dim])
                    {
                        *o = x + b;
                    }
                }
            }
        }
    }
    out
}

/// Scaled dot-product attention of every (sequence, head), each at its sequence's own
/// length, from `split` (see [`split_heads`]; Q already carries the 1/sqrt(head_dim) scale)
/// into a packed `[total, hidden]` context matrix. Pairs are shared among `threads`.
pub fn attention(
    split: &[f32],
    p: &Packing,
    heads: usize,
    head_dim: usize,
    threads: usize,
) -> Vec<f32> {
    let hidden = heads * head_dim;
    assert!(split.len() == p.total * 3 * hidden);
    let mut context = vec![0f32; p.total * hidden];
    let out = SendPtr(context.as_mut_ptr());
    let pair = |(s, head): (usize, usize)| {
        let len = p.lens[s];
        let block = &split[3 * hidden * p.offsets[s]..][..3 * hidden * len];
        let q = &block[head * len * head_dim..][..len * head_dim];
        let k = &block[(heads + head) * len * head_dim..][..len * head_dim];
        let v = &block[(2 * heads + head) * len * head_dim..][..len * head_dim];
        let mut scores = vec![0f32; len * len];
        let dst = out;
        // SAFETY: every product stays inside its slices (q, k, v: len × head_dim; scores:
        // len × len). The context rows offsets[s]..+len, columns head·d..+d, belong to this
        // (sequence, head) pair alone, so parallel pairs write disjoint memory, and
        // `context` outlives the tasks.
        unsafe {
            // scores = q · kᵀ
            gemm::gemm(
                len,
                len,
                head_dim,
                scores.as_mut_ptr(),
                1,
                len as isize,
                false,
                q.as_ptr(),
                1,
                head_dim as isize,
                k.as_ptr(),
                head_dim as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
            softmax_rows(&mut scores, len);
            // context[rows of s, columns of head] = softmax(scores) · v
            gemm::gemm(
                len,
                head_dim,
                len,
                dst.0.add(p.offsets[s] * hidden + head * head_dim),
                1,
                hidden as isize,
                false,
                scores.as_ptr(),
                1,
                len as isize,
                v.as_ptr(),
                1,
                head_dim as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    let pairs = (0..p.batch()).flat_map(|s| (0..heads).map(move |h| (s, h)));
    let work: usize = p.lens.iter().map(|l| l * l).sum::<usize>() * heads * head_dim;
    if threads > 1 && work >= 1 << 18 {
        use rayon::prelude::*;
        pairs.collect::<Vec<_>>().into_par_iter().for_each(pair);
    } else {
        pairs.for_each(pair);
    }
    context
}

/// Merges one sequence's `[heads, len, head_dim]` back into packed rows (the inverse of
/// [`split_heads`] for one part); used by tests.
#[cfg(test)]
fn merge_heads(
    ctx: &[f32],
    heads: usize,
    len: usize,
    head_dim: usize,
    out: &mut [f32],
    first: usize,
) {
    let hidden = heads * head_dim;
    for head in 0..heads {
        for t in 0..len {
            let from = (head * len + t) * head_dim;
            let to = (first + t) * hidden + head * head_dim;
            out[to..to + head_dim].copy_from_slice(&ctx[from..from + head_dim]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // erf(x) = 2/sqrt(pi) ∫0^x e^{-t²} dt, by Simpson's rule with 2000 steps.
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            s += w * f(i as f64 * h);
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_matches_the_integral() {
        let mut worst = 0f64;
        for i in -600..=600 {
            let x = i as f64 / 100.0;
            worst = worst.max((erf(x as f32) as f64 - erf_f64(x)).abs());
        }
        assert!(worst < 3e-7, "worst erf error {worst}");
    }

    #[test]
    fn exp_neg_matches_std() {
        let mut worst = 0f32;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let want = x.exp();
            worst = worst.max(((exp_neg(x) - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative exp error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_known_values() {
        // gelu(1) = 0.5 * (1 + erf(1/sqrt 2)) = 0.841344746...
        assert!((gelu(1.0) - 0.841_344_8).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(10.0) - 10.0).abs() < 1e-6);
        assert!(gelu(-10.0).abs() < 1e-6);
        let mut xs = vec![1.0f32, -1.0];
        bias_gelu(&mut xs, &[0.0, 2.0]);
        assert!((xs[0] - gelu(1.0)).abs() < 1e-7 && (xs[1] - gelu(1.0)).abs() < 1e-7);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut scores = vec![1.0, 2.0, 3.0, 0.5, 0.5, 0.5];
        softmax_rows(&mut scores, 3);
        let e: Vec<f32> = [1f32, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let z: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((scores[i] - e[i] / z).abs() < 1e-6);
            assert!((scores[3 + i] - 1.0 / 3.0).abs() < 1e-6);
        }
    }

    #[test]
    fn add_layer_norm_matches_definition() {
        let mut xs: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let orig = xs.clone();
        let res: Vec<f32> = (0..20).map(|i| i as f32 * 0.01).collect();
        let bias = vec![0.5f32; 10];
        let gamma: Vec<f32> = (0..10).map(|i| 1.0 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..10).map(|i| i as f32 * -0.2).collect();
        add_layer_norm(&mut xs, &res, &bias, &gamma, &beta, 1e-12);
        for r in 0..2 {
            let v: Vec<f64> = (0..10)
                .map(|i| (orig[r * 10 + i] + res[r * 10 + i] + 0.5) as f64)
                .collect();
            let mean = v.iter().sum::<f64>() / 10.0;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 10.0;
            for i in 0..10 {
                let want = (v[i] - mean) / (var + 1e-12).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!(
                    (xs[r * 10 + i] as f64 - want).abs() < 1e-5,
                    "row {r} col {i}"
                );
            }
        }
    }

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum();
            }
        }
        out
    }

    #[test]
    fn products_match_a_naive_one() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for (k, n) in [(40, 48), (64, 272)] {
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 10.0)
                .collect();
            for m in [1, 2, 7, 14, 64, 65, 200] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 5 % 17) as f32 - 8.0) / 7.0)
                    .collect();
                let want = naive(&x, m, k, &w, n);
                for threads in [1, 2] {
                    let got = pool.install(|| matmul(&x, m, k, &w, n, threads));
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() < 1e-3,
                            "{m}x{k}x{n}, {threads} threads, at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn split_heads_then_merge_gives_back_the_columns() {
        let p = Packing::new(vec![3, 1, 2]);
        let (heads, head_dim) = (2, 2);
        let hidden = heads * head_dim;
        let data: Vec<f32> = (0..p.total * 3 * hidden).map(|i| i as f32).collect();
        let bias: Vec<f32> = (0..3 * hidden).map(|i| i as f32 * 1000.0).collect();
        let split = split_heads(&data, &p, heads, head_dim, &bias);
        let mut merged = vec![vec![0f32; p.total * hidden]; 3];
        for s in 0..p.batch() {
            let len = p.lens[s];
            let block = &split[3 * hidden * p.offsets[s]..][..3 * hidden * len];
            for (part, m) in merged.iter_mut().enumerate() {
                merge_heads(
                    &block[part * hidden * len..][..hidden * len],
                    heads,
                    len,
                    head_dim,
                    m,
                    p.offsets[s],
                );
            }
        }
        for row in 0..p.total {
            for part in 0..3 {
                for c in 0..hidden {
                    let want = data[row * 3 * hidden + part * hidden + c] + bias[part * hidden + c];
                    assert_eq!(
                        merged[part][row * hidden + c],
                        want,
                        "row {row} part {part} col {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_matches_a_naive_one_per_sequence() {
        let p = Packing::new(vec![4, 1, 3]);
        let (heads, d) = (2, 3);
        let hidden = heads * d;
        let qkv: Vec<f32> = (0..p.total * 3 * hidden)
            .map(|i| ((i * 7 % 19) as f32 - 9.0) / 10.0)
            .collect();
        let split = split_heads(&qkv, &p, heads, d, &vec![0.0; 3 * hidden]);
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let ctx = pool.install(|| attention(&split, &p, heads, d, threads));
            for s in 0..p.batch() {
                for h in 0..heads {
                    for t in 0..p.lens[s] {
                        let row = |r: usize, part: usize| {
                            &qkv[(p.offsets[s] + r) * 3 * hidden + part * hidden + h * d..][..d]
                        };
                        let scores: Vec<f64> = (0..p.lens[s])
                            .map(|j| {
                                row(t, 0)
                                    .iter()
                                    .zip(row(j, 1))
                                    .map(|(a, b)| (a * b) as f64)
                                    .sum()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                        let z: f64 = e.iter().sum();
                        for c in 0..d {
                            let want: f64 =
                                (0..p.lens[s]).map(|j| e[j] / z * row(j, 2)[c] as f64).sum();
                            let got = ctx[(p.offsets[s] + t) * hidden + h * d + c] as f64;
                            assert!(
                                (got - want).abs() < 1e-5,
                                "threads {threads} s {s} h {h} t {t} c {c}"
                            );
                        }
                    }
                }
            }
        }
    }
}
