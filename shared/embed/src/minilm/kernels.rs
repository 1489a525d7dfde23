//! The two CPU kernels candle has no fast path for, as candle custom ops:
//!
//! * [`Gelu`]: exact (erf) GELU. candle's own calls a scalar `erff` per element, which was about
//!   a fifth of MiniLM's time; this one uses a branch-free erf approximation (max abs error
//!   5e-7 in f32, about four ulps near 1) that the compiler vectorises.
//! * [`Attention`]: multi-head self-attention over *packed* sequences. The rows of the fused
//!   `[q | k | v]` projection hold the tokens of several texts back to back, with no padding; each
//!   text attends only to its own tokens. candle's batched matmul would have run one tiny GEMM
//!   (with a thread hand-off) per text and head; here each text is one task on rayon's pool and
//!   every inner loop runs along contiguous memory.
//!
//! Both are plain safe Rust: the loops are written so the compiler vectorises them, and run under
//! [`pulp::Arch::dispatch`], which compiles them for AVX-512 or AVX2 and picks the best the CPU
//! has at run time (the release build itself targets baseline x86-64). The tests pin them against
//! straightforward reference code.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use rayon::prelude::*;

/// Branch-free `e^x` for `x <= 0` (softmax inputs after subtracting the row maximum): Cody–Waite
/// range reduction to `r` in [-ln2/2, ln2/2] and a degree-6 Taylor polynomial, relative error
/// below 2.5e-7 (two ulps). Inputs below -87 give ~0, as `exp` does in f32.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in plain float arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // n is an integer in [-126, 0], held in t's low mantissa bits: 2^n is built from its
    // exponent bits with integer arithmetic only (a float-to-int cast would not vectorise).
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (max abs error 1.5e-7 in exact arithmetic, 5e-7 as
/// evaluated in f32), branch-free.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_8;
    const A4: f32 = -1.453_152;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let y = 1.0 - poly * exp_neg(-a * a);
    y.copysign(x)
}

/// GELU as BERT defines it: `x * Φ(x) = 0.5 x (1 + erf(x / √2))`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// Rows handed to one rayon task by the element-wise kernels.
const ROWS_PER_TASK: usize = 64;

fn contiguous_f32<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: expected f32 storage");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: expected a contiguous tensor");
    };
    data.get(start..end)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: layout out of bounds")))
}

/// GELU over a slice, as a [`pulp::WithSimd`] so it is compiled for each instruction set
/// (a closure passed to `dispatch` is not reliably inlined into the SIMD-enabled function).
struct GeluSlice<'a> {
    input: &'a [f32],
    out: &'a mut [f32],
}

impl pulp::WithSimd for GeluSlice<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (o, &i) in self.out.iter_mut().zip(self.input) {
            *o = gelu(i);
        }
    }
}

/// Element-wise exact GELU on a contiguous f32 tensor of any shape.
pub(crate) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "heimdex-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let input = contiguous_f32(self.name(), storage, layout)?;
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; input.len()];
        let arch = pulp::Arch::new();
        out.par_chunks_mut(width * ROWS_PER_TASK)
            .zip(input.par_chunks(width * ROWS_PER_TASK))
            .for_each(|(o, i)| arch.dispatch(GeluSlice { input: i, out: o }));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Self-attention over packed texts.
///
/// Input: `[tokens, 3 * hidden]` rows of `[q | k | v]`, with `q` already scaled by
/// `1/sqrt(head_dim)`. `lens` gives each text's token count, in row order (they sum to
/// `tokens`). Output: `[tokens, hidden]`, every head's context written at `head * head_dim`.
pub(crate) struct Attention<'a> {
    pub lens: &'a [usize],
    pub heads: usize,
    pub head_dim: usize,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "heimdex-packed-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(self.name(), storage, layout)?;
        let hidden = self.heads * self.head_dim;
        let tokens: usize = self.lens.iter().sum();
        if layout.dims() != [tokens, 3 * hidden] {
            candle_core::bail!(
                "{}: expected [{tokens}, {}], got {:?}",
                self.name(),
                3 * hidden,
                layout.dims()
            );
        }
        let mut out = vec![0f32; tokens * hidden];
        // One (input rows, output rows) pair per text.
        let mut tasks = Vec::with_capacity(self.lens.len());
        let (mut qkv_rest, mut out_rest) = (qkv, out.as_mut_slice());
        for &len in self.lens {
            let (q, qr) = qkv_rest.split_at(len * 3 * hidden);
            let (o, or) = out_rest.split_at_mut(len * hidden);
            tasks.push((q, o));
            (qkv_rest, out_rest) = (qr, or);
        }
        let arch = pulp::Arch::new();
        tasks
            .into_par_iter()
            .for_each_init(Scratch::default, |scratch, (q, o)| {
                arch.dispatch(AttendOne {
                    qkv: q,
                    out: o,
                    heads: self.heads,
                    head_dim: self.head_dim,
                    scratch,
                })
            });
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

/// Keys are processed in blocks of this many lanes (one AVX-512 register of f32).
const LANES: usize = 16;

/// Per-thread buffers reused across texts.
#[derive(Default)]
struct Scratch {
    /// One head's keys in blocks of [`LANES`] keys: element `[block * head_dim + d][t]` is
    /// dimension `d` of key `block * LANES + t` (zero past the last key).
    keys: Vec<[f32; LANES]>,
    /// One head's values in blocks of [`LANES`] dimensions: element `[block * len + j][t]` is
    /// dimension `block * LANES + t` of value `j` (zero past the head's width).
    values: Vec<[f32; LANES]>,
    /// One query's scores, then probabilities: `[key blocks * LANES]`.
    scores: Vec<f32>,
}

/// [`attend_one`] as a [`pulp::WithSimd`], compiled for each instruction set.
struct AttendOne<'a> {
    qkv: &'a [f32],
    out: &'a mut [f32],
    heads: usize,
    head_dim: usize,
    scratch: &'a mut Scratch,
}

impl pulp::WithSimd for AttendOne<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        attend_one(self.qkv, self.out, self.heads, self.head_dim, self.scratch);
    }
}

/// Attention for one text: `qkv` is `[len, 3 * hidden]`, `out` is `[len, hidden]`.
///
/// The inner loops work on whole `[f32; LANES]` blocks with the running sums in a local array,
/// so they compile to one vector multiply-add per step with the sums held in registers.
#[inline(always)]
fn attend_one(qkv: &[f32], out: &mut [f32], heads: usize, head_dim: usize, s: &mut Scratch) {
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    let len = qkv.len() / stride;
    let key_blocks = len.div_ceil(LANES);
    let dim_blocks = head_dim.div_ceil(LANES);
    s.scores.resize(key_blocks * LANES, 0.0);
    for h in 0..heads {
        let (k_off, v_off) = (hidden + h * head_dim, 2 * hidden + h * head_dim);
        s.keys.clear();
        s.keys.resize(key_blocks * head_dim, [0.0; LANES]);
        s.values.clear();
        s.values.resize(dim_blocks * len, [0.0; LANES]);
        for (j, row) in qkv.chunks_exact(stride).enumerate() {
            let (block, t) = (j / LANES, j % LANES);
            let keys = &mut s.keys[block * head_dim..(block + 1) * head_dim];
            for (k, &x) in keys.iter_mut().zip(&row[k_off..k_off + head_dim]) {
                k[t] = x;
            }
            for (d, &x) in row[v_off..v_off + head_dim].iter().enumerate() {
                s.values[(d / LANES) * len + j][d % LANES] = x;
            }
        }
        for (row, out_row) in qkv.chunks_exact(stride).zip(out.chunks_exact_mut(hidden)) {
            let q = &row[h * head_dim..(h + 1) * head_dim];
            // scores = K q, one block of keys at a time.
            for (scores, keys) in s
                .scores
                .chunks_exact_mut(LANES)
                .zip(s.keys.chunks_exact(head_dim))
            {
                let mut acc = [0f32; LANES];
                for (&qd, k) in q.iter().zip(keys) {
                    for (a, &k) in acc.iter_mut().zip(k) {
                        *a += qd * k;
                    }
                }
                scores.copy_from_slice(&acc);
            }
            let scores = &mut s.scores[..len];
            let max = max_f32(scores);
            for sc in scores.iter_mut() {
                *sc = exp_neg(*sc - max);
            }
            let inv = 1.0 / sum_f32(scores);
            // context = softmax(scores) V, one block of dimensions at a time, normalised once.
            let ctx = &mut out_row[h * head_dim..(h + 1) * head_dim];
            for (c, values) in ctx.chunks_mut(LANES).zip(s.values.chunks_exact(len)) {
                let mut acc = [0f32; LANES];
                for (&p, v) in scores.iter().zip(values) {
                    for (a, &v) in acc.iter_mut().zip(v) {
                        *a += p * v;
                    }
                }
                for (c, a) in c.iter_mut().zip(acc) {
                    *c = a * inv;
                }
            }
        }
    }
}

/// Maximum with 16 independent lanes, so it vectorises (inputs are finite).
#[inline(always)]
fn max_f32(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter()
        .chain(rest)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Sum with 16 independent accumulators, so it vectorises.
#[inline(always)]
fn sum_f32(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn exp_matches_f64_within_3e_7_relative() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1000.0) < 1e-37);
    }

    #[test]
    fn erf_matches_libm_within_6e_7() {
        let mut worst = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f64 / 10_000.0; // [-10, 10]
            let got = erf(x as f32) as f64;
            worst = worst.max((got - libm::erf(x)).abs());
        }
        assert!(worst < 6e-7, "max abs error {worst:e}");
    }

    #[test]
    fn gelu_op_matches_the_exact_formula() {
        let xs: Vec<f32> = (-3000..3000).map(|i| i as f32 / 500.0).collect();
        let t = Tensor::from_vec(xs.clone(), (60, 100), &Device::Cpu).unwrap();
        let got = t.apply_op1_no_bwd(&Gelu).unwrap().flatten_all().unwrap();
        let got = got.to_vec1::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let x = *x as f64;
            let want = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            assert!(
                (g as f64 - want).abs() < 1e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
    }

    /// Straightforward attention on one text: softmax(q kᵀ) v per head, in f64.
    fn reference(qkv: &[f32], len: usize, heads: usize, hd: usize) -> Vec<f64> {
        let hidden = heads * hd;
        let at = |t: usize, c: usize| qkv[t * 3 * hidden + c] as f64;
        let mut out = vec![0f64; len * hidden];
        for h in 0..heads {
            for i in 0..len {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|d| at(i, h * hd + d) * at(j, hidden + h * hd + d))
                            .sum()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    out[i * hidden + h * hd + d] = (0..len)
                        .map(|j| e[j] / z * at(j, 2 * hidden + h * hd + d))
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn packed_attention_matches_per_text_reference() {
        let (heads, hd) = (3, 8);
        let hidden = heads * hd;
        let lens = [5usize, 1, 17, 2];
        let tokens: usize = lens.iter().sum();
        // Deterministic values in [-2, 2).
        let qkv: Vec<f32> = (0..tokens * 3 * hidden)
            .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
            .collect();
        let t = Tensor::from_vec(qkv.clone(), (tokens, 3 * hidden), &Device::Cpu).unwrap();
        let op = Attention {
            lens: &lens,
            heads,
            head_dim: hd,
        };
        let got = t.apply_op1_no_bwd(&op).unwrap().to_vec2::<f32>().unwrap();
        let mut row = 0;
        for &len in &lens {
            let want = reference(
                &qkv[row * 3 * hidden..(row + len) * 3 * hidden],
                len,
                heads,
                hd,
            );
            for i in 0..len {
                for c in 0..hidden {
                    let (g, w) = (got[row + i][c] as f64, want[i * hidden + c]);
                    assert!((g - w).abs() < 1e-5, "text row {i} col {c}: {g} vs {w}");
                }
            }
            row += len;
        }
    }

    #[test]
    fn attention_refuses_a_shape_that_does_not_match_the_lengths() {
        let t = Tensor::zeros((4, 3 * 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let op = Attention {
            lens: &[2, 3],
            heads: 2,
            head_dim: 3,
        };
        assert!(t.apply_op1_no_bwd(&op).is_err());
    }
}
