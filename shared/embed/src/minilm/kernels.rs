//! The encoder's kernels besides the matrix products, on plain slices:
//!
//! * [`bias_gelu`]: the intermediate layer's bias and exact (erf) GELU in one pass. A scalar
//!   `erff` per element was about a fifth of MiniLM's time; this uses a branch-free erf
//!   approximation (max abs error 5e-7 in f32, about four ulps near 1) that the compiler
//!   vectorises.
//! * [`add_norm`]: a product's bias, the residual and LayerNorm in one pass over each row.
//! * [`attend`]: multi-head self-attention over one text of a *packed* pass. The rows of the fused
//!   `[q | k | v]` projection hold the tokens of several texts back to back, with no padding; each
//!   text attends only to its own tokens, and every inner loop runs along contiguous memory.
//!
//! All are plain safe Rust: the loops are written so the compiler vectorises them, and run under
//! [`pulp::Arch::dispatch`], which compiles them for AVX-512 (with the `avx512` feature) or AVX2
//! and picks the best the CPU has at run time (the release build itself targets baseline x86-64).
//! The tests pin them against straightforward reference code.

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

/// A per-row kernel over a slice, as a [`pulp::WithSimd`] so it is compiled for each instruction
/// set (a closure passed to `dispatch` is not reliably inlined into the SIMD-enabled function).
struct Rows<'a, F> {
    rows: &'a mut [f32],
    width: usize,
    f: F,
}

impl<F: Fn(usize, &mut [f32])> pulp::WithSimd for Rows<'_, F> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for (i, row) in self.rows.chunks_exact_mut(self.width).enumerate() {
            (self.f)(i, row);
        }
    }
}

/// `x = gelu(x + bias)` for every row of `x` (rows as wide as `bias`): the intermediate layer's
/// bias and activation in one pass over its output.
pub(crate) fn bias_gelu(arch: pulp::Arch, x: &mut [f32], bias: &[f32]) {
    arch.dispatch(Rows {
        rows: x,
        width: bias.len(),
        f: |_, row: &mut [f32]| {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v = gelu(*v + b);
            }
        },
    });
}

/// `x = bias + x` for every row of `x`: the bias of a product, before it accumulates.
pub(crate) fn fill_rows(arch: pulp::Arch, x: &mut [f32], bias: &[f32]) {
    arch.dispatch(Rows {
        rows: x,
        width: bias.len(),
        f: |_, row: &mut [f32]| row.copy_from_slice(bias),
    });
}

/// LayerNorm parameters.
pub(crate) struct Norm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

/// The residual step of a BERT layer, row by row: `x = LayerNorm(x + y + bias)`, with the mean
/// and the variance computed in two passes over the row (as PyTorch does), or `x = LayerNorm(x)`
/// when `add` is `None` (the embeddings). `y` holds the same rows as `x`.
pub(crate) fn add_norm(
    arch: pulp::Arch,
    x: &mut [f32],
    add: Option<(&[f32], &[f32])>,
    norm: &Norm<'_>,
) {
    let width = norm.gamma.len();
    arch.dispatch(Rows {
        rows: x,
        width,
        f: |i, row: &mut [f32]| {
            if let Some((y, bias)) = add {
                let y = &y[i * width..(i + 1) * width];
                for ((v, &y), &b) in row.iter_mut().zip(y).zip(bias) {
                    *v += y + b;
                }
            }
            let inv_n = 1.0 / width as f32;
            let mean = sum_f32(row) * inv_n;
            let var = sum_sq_dev(row, mean) * inv_n;
            let inv_std = 1.0 / (var + norm.eps).sqrt();
            for ((v, &g), &b) in row.iter_mut().zip(norm.gamma).zip(norm.beta) {
                *v = (*v - mean) * inv_std * g + b;
            }
        },
    });
}

/// Σ (x - mean)² with 16 independent accumulators, so it vectorises.
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            let d = x - mean;
            *a += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().map(|&x| (x - mean) * (x - mean)).sum::<f32>()
}

/// Self-attention over packed texts, one text at a time (the caller spreads texts over threads).
///
/// `qkv` holds one text's `[len, 3 * hidden]` rows of `[q | k | v]`, with `q` already scaled by
/// `1/sqrt(head_dim)`; `out` receives its `[len, hidden]` context rows, every head's context
/// written at `head * head_dim`.
pub(crate) fn attend(
    arch: pulp::Arch,
    qkv: &[f32],
    out: &mut [f32],
    heads: usize,
    head_dim: usize,
    scratch: &mut Scratch,
) {
    arch.dispatch(AttendOne {
        qkv,
        out,
        heads,
        head_dim,
        scratch,
    });
}

/// Keys are processed in blocks of this many lanes (one AVX-512 register of f32).
const LANES: usize = 16;

/// Per-thread buffers reused across texts.
#[derive(Default)]
pub(crate) struct Scratch {
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
    fn bias_gelu_matches_the_exact_formula() {
        let xs: Vec<f32> = (-3000..3000).map(|i| i as f32 / 500.0).collect();
        let bias: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) / 1000.0).collect();
        let mut got = xs.clone();
        bias_gelu(pulp::Arch::new(), &mut got, &bias);
        for (i, (x, g)) in xs.iter().zip(got).enumerate() {
            let x = f64::from(*x) + f64::from(bias[i % 100]);
            let want = 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
            assert!(
                (f64::from(g) - want).abs() < 1e-6,
                "gelu({x}) = {g}, want {want}"
            );
        }
    }

    #[test]
    fn add_norm_matches_a_two_pass_layer_norm_in_f64() {
        let width = 48;
        let rows = 5;
        let x: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 37 % 101) as f32 / 20.0) - 2.5)
            .collect();
        let y: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 53 % 89) as f32 / 30.0) - 1.5)
            .collect();
        let bias: Vec<f32> = (0..width).map(|i| i as f32 / 100.0).collect();
        let gamma: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 / 50.0).collect();
        let beta: Vec<f32> = (0..width).map(|i| i as f32 / -70.0).collect();
        let norm = Norm {
            gamma: &gamma,
            beta: &beta,
            eps: 1e-12,
        };
        for residual in [true, false] {
            let mut got = x.clone();
            add_norm(
                pulp::Arch::new(),
                &mut got,
                residual.then_some((&y[..], &bias[..])),
                &norm,
            );
            for r in 0..rows {
                let v: Vec<f64> = (0..width)
                    .map(|j| {
                        let i = r * width + j;
                        let add = if residual {
                            f64::from(y[i]) + f64::from(bias[j])
                        } else {
                            0.0
                        };
                        f64::from(x[i]) + add
                    })
                    .collect();
                let mean = v.iter().sum::<f64>() / width as f64;
                let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / width as f64;
                for j in 0..width {
                    let want = (v[j] - mean) / (var + 1e-12).sqrt() * f64::from(gamma[j])
                        + f64::from(beta[j]);
                    let g = f64::from(got[r * width + j]);
                    assert!((g - want).abs() < 1e-5, "row {r} col {j}: {g} vs {want}");
                }
            }
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
    fn attention_matches_per_text_reference() {
        let (heads, hd) = (3, 8);
        let hidden = heads * hd;
        let mut scratch = Scratch::default();
        // Lengths around the 16-key blocks, reusing one scratch as the encoder does.
        for len in [5usize, 1, 17, 2, 16, 33] {
            // Deterministic values in [-2, 2).
            let qkv: Vec<f32> = (0..len * 3 * hidden)
                .map(|i| ((i * 7919 % 1000) as f32 / 250.0) - 2.0)
                .collect();
            let mut got = vec![0f32; len * hidden];
            attend(pulp::Arch::new(), &qkv, &mut got, heads, hd, &mut scratch);
            let want = reference(&qkv, len, heads, hd);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() < 1e-5,
                    "len {len} [{i}]: {g} vs {w}"
                );
            }
        }
    }
}
