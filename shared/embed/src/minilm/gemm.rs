//! Matrix products for the encoder: the workspace's one module with `unsafe` code.
//!
//! Why `unsafe` at all: every dense layer of the encoder is one matrix product, and most of a
//! forward pass is spent in them. Two implementations are used, each the fastest one measured for
//! its shapes on the bench machine (docs/BENCHMARKS.md, "The embedder on AVX2"), and both can only
//! be called through raw pointers:
//!
//! * **BLIS** (Debian's `libblis4-serial`, linked from the system; `deploy/setup.sh` installs it)
//!   for products of [`BLIS_MIN_ROWS`] rows and more on CPUs without AVX-512: its hand-written
//!   kernels sustain about 120 GFLOP/s a core with AVX2 where the `gemm` crate's reach about 86.
//!   BLIS picks its kernels from the CPU it runs on; a CPU newer than the library (BLIS 0.9 on
//!   an AMD Zen 5) gets its reference kernels (about 39 GFLOP/s).
//! * the **`gemm` crate** (pure Rust) for short products, a search query's dozen rows: with the
//!   weights stored input-major it reads them in place instead of packing them first, which is
//!   most of the work at that size; for everything on a CPU with AVX-512 (when this build has
//!   its AVX-512 kernels), where they beat BLIS 0.9's (10 % on a Zen 4 with BLIS's zen3 or skx
//!   kernels, twice its reference kernels on a Zen 5); and when BLIS has no kernels for the CPU
//!   (or [`Products::GemmCrate`] is asked for). [`Products::Auto`] states the rule.
//!
//! Both run on the calling thread only: BLIS is told once to use one thread
//! (`bli_thread_set_num_threads(1)`, whichever of Debian's BLIS builds is installed) and `gemm`
//! gets `Parallelism::None`. The encoder splits large products by rows over its own thread pool,
//! so the embedder's thread budget is the size of that pool and nothing else.
//!
//! The audit: [`matmul`] is the only entry point. It checks every slice length against the
//! dimensions before the calls, both libraries read `a` and `b` and write only `c` (BLIS's
//! `const`-less prototypes notwithstanding), the three slices cannot overlap (two shared borrows
//! and one exclusive), strides describe dense row-major matrices inside those slices, and the
//! dimensions fit the libraries' integer types. The fidelity suite (`tests/fidelity.rs`) and the
//! unit tests below check the results against plain Rust on every backend this machine has.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

/// Products with at least this many rows go to BLIS (when it has kernels for this CPU). Below,
/// packing the weights costs more than it saves: a 12-row product ran about twice as fast in the
/// `gemm` crate, which reads input-major weights in place.
pub(crate) const BLIS_MIN_ROWS: usize = 32;

/// BLIS's `dim_t` and `inc_t` (`gint_t`: 64 bits in Debian's build, BLIS_INT_TYPE_SIZE 64).
type Dim = i64;
/// BLIS's `trans_t` and `arch_t`: C enums.
type Enum = c_int;
const BLIS_NO_TRANSPOSE: Enum = 0;

#[link(name = "blis")]
unsafe extern "C" {
    fn bli_sgemm(
        transa: Enum,
        transb: Enum,
        m: Dim,
        n: Dim,
        k: Dim,
        alpha: *const f32,
        a: *const f32,
        rs_a: Dim,
        cs_a: Dim,
        b: *const f32,
        rs_b: Dim,
        cs_b: Dim,
        beta: *const f32,
        c: *mut f32,
        rs_c: Dim,
        cs_c: Dim,
    );
    fn bli_thread_set_num_threads(n: Dim);
    fn bli_arch_query_id() -> Enum;
    fn bli_arch_string(id: Enum) -> *const c_char;
    fn bli_info_get_version_str() -> *const c_char;
}

/// Which library multiplies a model's large products (a query's short ones always go to the
/// `gemm` crate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Products {
    /// The `gemm` crate's AVX-512 kernels where this build has them and the CPU runs them;
    /// else BLIS where it has kernels for this CPU; else the `gemm` crate.
    #[default]
    Auto,
    /// BLIS, whatever kernels it has (its reference kernels are correct, only slow).
    Blis,
    /// The `gemm` crate.
    GemmCrate,
}

/// What [`Products`] resolved to on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Large {
    Blis,
    Gemm,
}

/// What BLIS says of itself: its version and the configuration (kernels) it picked for this CPU.
struct Blis {
    version: String,
    arch: String,
}

fn c_string(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: BLIS returns pointers to static, NUL-terminated strings (its version and the
    // names of its configurations), never freed.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// BLIS, initialised once per process.
fn blis_info() -> &'static Blis {
    static BLIS: OnceLock<Blis> = OnceLock::new();
    BLIS.get_or_init(|| {
        // SAFETY: plain calls without pointers in; BLIS initialises itself on first use
        // (thread-safe, `pthread_once`). One thread per call: the encoder splits the work.
        let (arch, version) = unsafe {
            bli_thread_set_num_threads(1);
            (
                c_string(bli_arch_string(bli_arch_query_id())),
                c_string(bli_info_get_version_str()),
            )
        };
        Blis { version, arch }
    })
}

impl Products {
    pub(crate) fn resolve(self) -> Large {
        match self {
            Products::Blis => Large::Blis,
            Products::GemmCrate => Large::Gemm,
            Products::Auto => {
                let arch = &blis_info().arch;
                if super::MiniLm::avx512() || arch == "generic" || arch.is_empty() {
                    Large::Gemm
                } else {
                    Large::Blis
                }
            }
        }
    }
}

impl Large {
    /// For logs and benchmarks, e.g. `BLIS 0.9.0 (zen3 kernels)`.
    pub(crate) fn describe(self) -> String {
        let blis = blis_info();
        match self {
            Large::Blis => format!("BLIS {} ({} kernels)", blis.version, blis.arch),
            Large::Gemm => format!(
                "gemm crate (BLIS {} would use its {} kernels)",
                blis.version, blis.arch
            ),
        }
    }
}

/// `c = a · b`, or `c += a · b` when `accumulate`, on the calling thread. Row-major and dense:
/// `a` is `m × k`, `b` is `k × n`, `c` is `m × n`. Products of fewer than [`BLIS_MIN_ROWS`]
/// rows go to the `gemm` crate whatever `large` says.
///
/// # Panics
/// If a slice's length does not match the dimensions (a bug in the caller).
pub(crate) fn matmul(
    large: Large,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    assert_eq!(a.len(), m * k, "matmul: a is not {m} x {k}");
    assert_eq!(b.len(), k * n, "matmul: b is not {k} x {n}");
    assert_eq!(c.len(), m * n, "matmul: c is not {m} x {n}");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    match large {
        Large::Blis if m >= BLIS_MIN_ROWS => blis(a, b, c, (m, k, n), accumulate),
        Large::Blis | Large::Gemm => gemm_crate(a, b, c, (m, k, n), accumulate),
    }
}

fn dim(x: usize) -> Dim {
    Dim::try_from(x).unwrap_or_else(|_| panic!("matmul: dimension {x} overflows BLIS's dim_t"))
}

fn blis(a: &[f32], b: &[f32], c: &mut [f32], (m, k, n): (usize, usize, usize), accumulate: bool) {
    blis_info(); // one thread per call, set before the first
    let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
    // SAFETY: the lengths were checked in `matmul`: `a` holds m×k elements with row stride k,
    // `b` k×n with row stride n, `c` m×n with row stride n, so every element BLIS addresses
    // lies inside its slice. BLIS only reads `a`, `b`, `alpha` and `beta` and writes `c`
    // (exclusively borrowed, so nothing else aliases it); with beta = 0 it does not read `c`.
    unsafe {
        bli_sgemm(
            BLIS_NO_TRANSPOSE,
            BLIS_NO_TRANSPOSE,
            dim(m),
            dim(n),
            dim(k),
            &alpha,
            a.as_ptr(),
            dim(k),
            1,
            b.as_ptr(),
            dim(n),
            1,
            &beta,
            c.as_mut_ptr(),
            dim(n),
            1,
        );
    }
}

fn stride(x: usize) -> isize {
    isize::try_from(x).unwrap_or_else(|_| panic!("matmul: stride {x} overflows isize"))
}

fn gemm_crate(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
) {
    // SAFETY: as for BLIS: the lengths were checked in `matmul`, the strides (column stride 1,
    // row strides k, n, n) keep every addressed element inside its slice, `gemm` reads `a` and
    // `b` and writes `c` (reading it first only when `read_dst`), on this thread only
    // (`Parallelism::None`). In `gemm`'s convention dst = alpha·dst + beta·lhs·rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            stride(n),
            accumulate,
            a.as_ptr(),
            1,
            stride(k),
            b.as_ptr(),
            1,
            stride(n),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reference(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                    .sum();
            }
        }
        c
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0)
            .collect()
    }

    /// Every size class (below and above BLIS_MIN_ROWS, odd sizes that leave kernel edges), both
    /// with and without accumulation, through BLIS (whatever kernels it picked here) and the
    /// `gemm` crate, directly and through `matmul`.
    #[test]
    fn products_match_plain_rust_on_both_libraries() {
        println!("auto: {}", Products::Auto.resolve().describe());
        type Product = fn(&[f32], &[f32], &mut [f32], (usize, usize, usize), bool);
        let paths: [(&str, Product); 4] = [
            ("blis", blis),
            ("gemm crate", gemm_crate),
            ("matmul, BLIS", |a, b, c, d, acc| {
                matmul(Large::Blis, a, b, c, d, acc)
            }),
            ("matmul, gemm", |a, b, c, d, acc| {
                matmul(Large::Gemm, a, b, c, d, acc)
            }),
        ];
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (13, 384, 96),
            (31, 33, 65),
            (32, 64, 48),
            (70, 384, 1152),
            (257, 129, 40),
        ] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let want = reference(&a, &b, (m, k, n));
            let tol = 1e-4 * (k as f64).sqrt();
            for (name, f) in paths {
                let mut c = vec![f32::NAN; m * n];
                f(&a, &b, &mut c, (m, k, n), false);
                let mut acc = vec![1.0f32; m * n];
                f(&a, &b, &mut acc, (m, k, n), true);
                for i in 0..m * n {
                    assert!(
                        (f64::from(c[i]) - want[i]).abs() < tol,
                        "{name} {m}x{k}x{n} [{i}]: {} vs {}",
                        c[i],
                        want[i]
                    );
                    assert!(
                        (f64::from(acc[i]) - want[i] - 1.0).abs() < tol,
                        "{name} accumulate {m}x{k}x{n} [{i}]"
                    );
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "is not")]
    fn a_slice_of_the_wrong_length_is_refused_before_any_call() {
        let mut c = vec![0f32; 4];
        matmul(Large::Blis, &[0.0; 3], &[0.0; 4], &mut c, (2, 2, 2), false);
    }
}
