//! Fused CPU kernels for the BERT forward pass, run as candle custom ops.
//!
//! candle's generic ops cost one allocation and one pass over memory each, its GELU calls
//! a scalar `erff` per element, and its softmax and layer norm cannot take a padding mask
//! or a bias. These kernels fuse what is adjacent in BERT (bias + GELU; bias + residual +
//! layer norm; head split + bias + padding; mask + softmax; head merge + unpadding) and are
//! written so that the compiler vectorises them; on x86-64 they are also compiled for
//! AVX2+FMA and chosen at run time. Matrix products stay with candle (the `gemm` crate).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape};

fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("engram-embed kernels need contiguous inputs"),
    }
}

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
    p = x2 * p + -2.954_600_0e-3;
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
    ($name:ident, $generic:ident, ($($arg:ident : $ty:ty),*)) => {
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
fn bias_gelu_generic(xs: &[f32], bias: &[f32], out: &mut [f32]) {
    let n = bias.len();
    for (x_row, o_row) in xs.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for ((o, &x), &b) in o_row.iter_mut().zip(x_row).zip(bias) {
            *o = gelu(x + b);
        }
    }
}
dispatch!(bias_gelu, bias_gelu_generic, (xs: &[f32], bias: &[f32], out: &mut [f32]));

#[inline(always)]
fn layer_norm_rows_generic(
    xs: &[f32],
    residual: &[f32],
    bias: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let n = gamma.len();
    for ((x_row, r_row), o_row) in xs.chunks_exact(n).zip(residual.chunks_exact(n)).zip(out.chunks_exact_mut(n)) {
        for (((o, &x), &r), &b) in o_row.iter_mut().zip(x_row).zip(r_row).zip(bias) {
            *o = x + r + b;
        }
        layer_norm_in_place_generic(o_row, gamma, beta, eps);
    }
}
dispatch!(
    layer_norm_rows,
    layer_norm_rows_generic,
    (xs: &[f32], residual: &[f32], bias: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32])
);

#[inline(always)]
fn layer_norm_in_place_generic(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
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
    let var = (sq.iter().sum::<f32>() + rest.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &b) in row.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * inv * g + b;
    }
}

/// Layer norm of each row of `rows` (row length = `gamma.len()`), in place.
pub fn layer_norm_in_place(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    #[inline(always)]
    fn all_rows(rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        for row in rows.chunks_exact_mut(gamma.len()) {
            layer_norm_in_place_generic(row, gamma, beta, eps);
        }
    }
    dispatch!(run, all_rows, (rows: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32));
    run(rows, gamma, beta, eps)
}

#[inline(always)]
fn softmax_rows_generic(scores: &mut [f32], row_len: usize, valid: usize) {
    for row in scores.chunks_exact_mut(row_len) {
        let (live, dead) = row.split_at_mut(valid);
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for v in live.iter_mut() {
            *v = exp_neg(*v - max);
        }
        let inv = 1.0 / sum(live);
        for v in live.iter_mut() {
            *v *= inv;
        }
        dead.fill(0.0);
    }
}
dispatch!(softmax_rows, softmax_rows_generic, (scores: &mut [f32], row_len: usize, valid: usize));

// ---------------------------------------------------------------------------------------
// The custom ops.

/// Where each sequence of a packed batch lives: sequence `s` has `lens[s]` tokens starting
/// at row `offsets[s]` of the packed `[total, hidden]` matrix.
#[derive(Clone, Debug)]
pub struct Packing {
    pub lens: Vec<usize>,
    pub offsets: Vec<usize>,
    pub total: usize,
    pub max_len: usize,
}

impl Packing {
    pub fn new(lens: Vec<usize>) -> Self {
        let mut offsets = Vec::with_capacity(lens.len());
        let mut total = 0;
        for &l in &lens {
            offsets.push(total);
            total += l;
        }
        let max_len = lens.iter().copied().max().unwrap_or(0);
        Self { lens, offsets, total, max_len }
    }

    pub fn batch(&self) -> usize {
        self.lens.len()
    }
}

/// gelu(x + bias) over a `[rows, bias.len()]` matrix.
pub struct BiasGelu<'a> {
    pub bias: &'a [f32],
}

impl CustomOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "engram-bias-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous(storage, layout)?;
        let (_, cols) = layout.shape().dims2()?;
        if cols != self.bias.len() {
            bail!("bias-gelu: {cols} columns, bias of {}", self.bias.len());
        }
        let mut out = vec![0f32; xs.len()];
        bias_gelu(xs, self.bias, &mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// layer_norm(x + bias + residual) over `[rows, hidden]` matrices.
pub struct BiasResidualLayerNorm<'a> {
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl CustomOp2 for BiasResidualLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "engram-bias-residual-layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = contiguous(s1, l1)?;
        let residual = contiguous(s2, l2)?;
        let (_, cols) = l1.shape().dims2()?;
        if l1.shape() != l2.shape() || cols != self.gamma.len() {
            bail!("layer norm: shapes {:?} and {:?}, hidden {}", l1.shape(), l2.shape(), self.gamma.len());
        }
        let mut out = vec![0f32; xs.len()];
        layer_norm_rows(xs, residual, self.bias, self.gamma, self.beta, self.eps, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Packed `[total, 3 * hidden]` (the fused Q|K|V projection, bias not yet added) to padded,
/// head-major `[3 * batch * heads, max_len, head_dim]`: Q for every (sequence, head), then
/// K, then V. Padding rows are zero (they are masked out as keys and dropped as queries).
pub struct SplitHeads<'a> {
    pub packing: &'a Packing,
    pub heads: usize,
    pub head_dim: usize,
    pub bias: &'a [f32],
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "engram-split-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous(storage, layout)?;
        let p = self.packing;
        let (h, d) = (self.heads, self.head_dim);
        let hidden = h * d;
        let (rows, cols) = layout.shape().dims2()?;
        if rows != p.total || cols != 3 * hidden || self.bias.len() != 3 * hidden {
            bail!("split-heads: input {rows}x{cols} for {} tokens, hidden {hidden}", p.total);
        }
        let b = p.batch();
        let l = p.max_len;
        let mut out = vec![0f32; 3 * b * h * l * d];
        for s in 0..b {
            for t in 0..p.lens[s] {
                let row = &src[(p.offsets[s] + t) * cols..][..cols];
                for part in 0..3 {
                    for head in 0..h {
                        let from = part * hidden + head * d;
                        let to = (((part * b + s) * h + head) * l + t) * d;
                        for ((o, &x), &bb) in out[to..to + d].iter_mut().zip(&row[from..from + d]).zip(&self.bias[from..from + d]) {
                            *o = x + bb;
                        }
                    }
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((3 * b * h, l, d))))
    }
}

/// Softmax over the last dimension of `[batch * heads, max_len, max_len]` attention scores,
/// keys past each sequence's length masked out (weight exactly zero).
pub struct MaskedSoftmax<'a> {
    pub packing: &'a Packing,
    pub heads: usize,
}

impl CustomOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "engram-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous(storage, layout)?;
        let p = self.packing;
        let l = p.max_len;
        let (bh, rows, cols) = layout.shape().dims3()?;
        if bh != p.batch() * self.heads || rows != l || cols != l {
            bail!("masked-softmax: scores {bh}x{rows}x{cols} for batch {} heads {}", p.batch(), self.heads);
        }
        let mut out = src.to_vec();
        for (i, block) in out.chunks_exact_mut(l * l).enumerate() {
            let len = p.lens[i / self.heads];
            // Query rows past the sequence's end are padding: their output is dropped.
            let (live, dead) = block.split_at_mut(len * l);
            softmax_rows(live, l, len);
            dead.fill(0.0);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Padded head-major `[batch * heads, max_len, head_dim]` back to packed `[total, hidden]`.
pub struct MergeHeads<'a> {
    pub packing: &'a Packing,
    pub heads: usize,
    pub head_dim: usize,
}

impl CustomOp1 for MergeHeads<'_> {
    fn name(&self) -> &'static str {
        "engram-merge-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous(storage, layout)?;
        let p = self.packing;
        let (h, d) = (self.heads, self.head_dim);
        let l = p.max_len;
        let (bh, rows, cols) = layout.shape().dims3()?;
        if bh != p.batch() * h || rows != l || cols != d {
            bail!("merge-heads: context {bh}x{rows}x{cols} for batch {} heads {h}", p.batch());
        }
        let hidden = h * d;
        let mut out = vec![0f32; p.total * hidden];
        for s in 0..p.batch() {
            for t in 0..p.lens[s] {
                let to_row = (p.offsets[s] + t) * hidden;
                for head in 0..h {
                    let from = ((s * h + head) * l + t) * d;
                    out[to_row + head * d..to_row + (head + 1) * d].copy_from_slice(&src[from..from + d]);
                }
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((p.total, hidden))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn erf_f64(x: f64) -> f64 {
        // Abramowitz-Stegun 7.1.28 is not precise enough to judge a 1e-7 approximation,
        // so integrate instead: erf(x) = 2/sqrt(pi) * ∫0^x e^{-t²} dt (Simpson, 2000 steps).
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
            let err = (erf(x as f32) as f64 - erf_f64(x)).abs();
            worst = worst.max(err);
        }
        assert!(worst < 3e-7, "worst erf error {worst}");
    }

    #[test]
    fn exp_neg_matches_std() {
        let mut worst = 0f32;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let want = x.exp();
            let rel = ((exp_neg(x) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative exp error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
    }

    #[test]
    fn gelu_known_values() {
        // gelu(1) = 0.5 * (1 + erf(1/sqrt 2)) = 0.841344746...
        assert!((gelu(1.0) - 0.841_344_75).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
        assert!((gelu(10.0) - 10.0).abs() < 1e-6);
        assert!(gelu(-10.0).abs() < 1e-6);
    }

    #[test]
    fn masked_softmax_rows_sum_to_one_and_ignore_padding() {
        let mut scores = vec![1.0, 2.0, 3.0, 100.0, 0.5, 0.5, 0.5, -7.0];
        softmax_rows(&mut scores, 4, 3);
        for row in scores.chunks(4) {
            assert!((row[..3].iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert_eq!(row[3], 0.0);
        }
        assert!((scores[4] - 1.0 / 3.0).abs() < 1e-6);
        let e: Vec<f32> = [1f32, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let z: f32 = e.iter().sum();
        for i in 0..3 {
            assert!((scores[i] - e[i] / z).abs() < 1e-6);
        }
    }

    #[test]
    fn layer_norm_matches_definition() {
        let xs: Vec<f32> = (0..20).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let res: Vec<f32> = (0..20).map(|i| i as f32 * 0.01).collect();
        let bias = vec![0.5f32; 10];
        let gamma: Vec<f32> = (0..10).map(|i| 1.0 + i as f32 * 0.1).collect();
        let beta: Vec<f32> = (0..10).map(|i| i as f32 * -0.2).collect();
        let mut out = vec![0f32; 20];
        layer_norm_rows(&xs, &res, &bias, &gamma, &beta, 1e-12, &mut out);
        for r in 0..2 {
            let v: Vec<f64> = (0..10).map(|i| (xs[r * 10 + i] + res[r * 10 + i] + 0.5) as f64).collect();
            let mean = v.iter().sum::<f64>() / 10.0;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 10.0;
            for i in 0..10 {
                let want = (v[i] - mean) / (var + 1e-12).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!((out[r * 10 + i] as f64 - want).abs() < 1e-5, "row {r} col {i}");
            }
        }
    }

    #[test]
    fn split_then_merge_round_trips_the_packed_rows() {
        use candle_core::{Device, Tensor};
        let packing = Packing::new(vec![3, 1, 2]);
        let (heads, head_dim) = (2, 2);
        let hidden = heads * head_dim;
        let data: Vec<f32> = (0..packing.total * 3 * hidden).map(|i| i as f32).collect();
        let bias = vec![0f32; 3 * hidden];
        let qkv = Tensor::from_vec(data.clone(), (packing.total, 3 * hidden), &Device::Cpu).unwrap();
        let split = qkv.apply_op1_no_bwd(&SplitHeads { packing: &packing, heads, head_dim, bias: &bias }).unwrap();
        assert_eq!(split.dims(), &[3 * 3 * heads, 3, head_dim]);
        // V (part 2) merged back gives the V columns of the packed input.
        let bh = packing.batch() * heads;
        let v = split.narrow(0, 2 * bh, bh).unwrap();
        let merged = v.apply_op1_no_bwd(&MergeHeads { packing: &packing, heads, head_dim }).unwrap();
        let merged = merged.to_vec2::<f32>().unwrap();
        for (row, got) in merged.iter().enumerate() {
            let want = &data[row * 3 * hidden + 2 * hidden..row * 3 * hidden + 3 * hidden];
            assert_eq!(got.as_slice(), want);
        }
        // The second sequence has one token: its padding rows (t = 1, 2) are zero.
        let k = split.narrow(0, bh, bh).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(k[heads][1], vec![0.0, 0.0]);
        assert_eq!(k[heads][2], vec![0.0, 0.0]);
    }
}
