//! `out = x · Wᵀ` for f32 activations and a weight [`Matrix`] of any stored dtype.
//!
//! Two strategies:
//! - **GEMV** ([`gemv`]), for few activation rows (decode, short prefill): every weight row is
//!   streamed from memory once, widened in registers and multiplied with up to four
//!   activation rows at a time. Memory-bandwidth-bound at t = 1..2; split over output rows
//!   with rayon.
//! - **GEMM** ([`gemm`]), for many activation rows (long prefill): a panel of weight rows is
//!   widened to f32 into a per-thread scratch buffer and multiplied by the `gemm` crate;
//!   panels are split over rayon threads.
//!
//! Every strategy has a portable scalar fallback; [`matmul_with`] can force one (tests and
//! benchmarks use it).

/// Repeats `body` with `$i` bound to the constants 0, 1, 2, 3 below `$n` (at most 4): the
/// SIMD kernels unroll their loops over tile rows, activation rows and blocks this way so that
/// accumulator arrays stay in registers.
#[allow(unused_macros)]
macro_rules! unroll {
    ($n:expr, |$i:ident| $body:block) => {{
        #[allow(clippy::reversed_empty_ranges, unused_comparisons)]
        {
            debug_assert!($n <= 4);
            {
                let $i = 0usize;
                if $i < $n $body
            }
            {
                let $i = 1usize;
                if $i < $n $body
            }
            {
                let $i = 2usize;
                if $i < $n $body
            }
            {
                let $i = 3usize;
                if $i < $n $body
            }
        }
    }};
}

mod convert;
mod gemm;
mod gemv;
#[cfg(target_arch = "aarch64")]
mod gemv_neon;
mod panels;
mod quant;
#[cfg(target_arch = "aarch64")]
mod quant_neon;
#[cfg(target_arch = "x86_64")]
mod quant_x86;

pub use panels::GemmWeight;

use crate::dtype::DType;
use crate::matrix::Matrix;

#[cfg(target_arch = "x86_64")]
pub(crate) use super::has_avx2;
#[cfg(target_arch = "aarch64")]
pub(crate) use super::has_neon_dotprod;

pub(crate) use convert::widen;

/// Largest number of activation rows that [`matmul`] sends to the GEMV path; more go to GEMM.
///
/// The GEMV kernels keep up to 4 x 2 dot products in registers and reach 50-75% of the FMA
/// peak for any `t` (activation rows are blocked to stay in L2), while the `gemm` crate on
/// widened panels pays per-panel packing that only pays off for long batches: measured on a
/// Zen 3 with k = 2048, GEMV is ahead up to t = 64 and about even at t = 128.
pub const GEMV_MAX_T: usize = 64;

/// Largest number of activation rows that [`matmul`] sends to the integer (int8 activation)
/// kernels for weights of format `dtype`; more go to GEMM on dequantized panels. Only Q8_0
/// and Q4_0 have a limit: the K-quants always take the integer kernels.
///
/// Measured with `kernel_speed 2 --quant` (8192 x 2048 at t = 128, weights in the layout the
/// decoder uses):
/// - AVX-512 (Zen 4): the integer kernels stay ahead for both formats (Q8_0 128 against 88
///   GFLOP/s, 185-205 on the interleaved layout, where the f32 GEMM itself peaks at
///   172-183), so there is no limit.
/// - AVX2 (Zen 3, 2026-12-02): interleaved Q8_0 145.6 against 80.6 GFLOP/s for dequantize +
///   GEMM (at t = 16, 153 against 23), so there is no limit for Q8_0 either. Q4_0, which has
///   no interleaved layout, measured even at t = 128 (93.8 against 97.3) and keeps the
///   limit of 64 measured on the first Zen 3.
/// - Elsewhere (NEON): 64 for both, as first measured.
pub fn quant_int_max_t(dtype: DType) -> usize {
    #[cfg(target_arch = "x86_64")]
    let avx2 = crate::cpu::has_avx2();
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    match dtype {
        DType::Q8_0 | DType::Q4_0 if crate::cpu::has_avx512() => usize::MAX,
        DType::Q8_0 if avx2 => usize::MAX,
        DType::Q8_0 | DType::Q4_0 => 64,
        _ => usize::MAX,
    }
}

/// Which implementation [`matmul_with`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPath {
    /// GEMV for `t <= GEMV_MAX_T`, GEMM above; SIMD where the CPU has it. Block-format
    /// weights: the integer kernels (up to [`quant_int_max_t`] rows, GEMM above).
    Auto,
    /// The GEMV strategy for any `t`, with SIMD where the CPU has it (block formats: the
    /// integer kernels with int8 activations).
    Gemv,
    /// The GEMM strategy for any `t` (block formats: panels dequantized to f32).
    Gemm,
    /// The portable scalar GEMV kernel for any `t` (no SIMD intrinsics, no `gemm` crate;
    /// block formats: the portable integer kernels).
    Scalar,
}

/// `out[i, j] = Σ_k x[i, k] · w[j, k]` for `t` rows of `x` (each `w.cols()` long):
/// `y = x · Wᵀ` (a PyTorch `Linear` without bias). `out` has `t * w.rows()` elements and is
/// overwritten.
pub fn matmul(x: &[f32], t: usize, w: &Matrix, out: &mut [f32]) {
    matmul_with(x, t, w, out, MatmulPath::Auto)
}

/// [`matmul`] through the portable scalar kernel only (reference for the SIMD paths).
pub fn matmul_scalar(x: &[f32], t: usize, w: &Matrix, out: &mut [f32]) {
    matmul_with(x, t, w, out, MatmulPath::Scalar)
}

/// [`matmul`] with the implementation chosen by `path`.
pub fn matmul_with(x: &[f32], t: usize, w: &Matrix, out: &mut [f32], path: MatmulPath) {
    let k = w.cols();
    let n = w.rows();
    assert_eq!(
        x.len(),
        t * k,
        "matmul: x has {} elements, expected {t} x {k}",
        x.len()
    );
    assert_eq!(
        out.len(),
        t * n,
        "matmul: out has {} elements, expected {t} x {n}",
        out.len()
    );
    if t == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    if w.dtype().is_quantized() {
        match path {
            MatmulPath::Gemm => gemm::gemm(x, t, w, out),
            // Q4_0 dequantizes cheaply and the f32 GEMM catches up with its integer kernel on
            // long batches without AVX-512; the K-quants' unpacking makes dequantized panels
            // slower than the integer kernels at any t (kernel_speed --quant: Q4_K 88 vs 62
            // GFLOP/s, Q6_K 150 vs 77 at t = 128).
            MatmulPath::Auto if t > quant_int_max_t(w.dtype()) => gemm::gemm(x, t, w, out),
            MatmulPath::Scalar => quant::matmul_quant(x, t, w, out, false),
            _ => quant::matmul_quant(x, t, w, out, true),
        }
        return;
    }
    let path = match path {
        MatmulPath::Auto if t <= GEMV_MAX_T => MatmulPath::Gemv,
        MatmulPath::Auto => MatmulPath::Gemm,
        p => p,
    };
    match path {
        MatmulPath::Gemm => gemm::gemm(x, t, w, out),
        MatmulPath::Scalar => gemv::gemv(x, t, w, out, false),
        _ => gemv::gemv(x, t, w, out, true),
    }
}

/// `outs[i] = x · ws[i]ᵀ` for several matrices of `k` columns applied to the same `t`
/// activation rows: the values [`matmul`] gives each. Block-format matrices that share an
/// activation block size run in one parallel loop (the activations quantized once, one fork
/// and join for all); others one after another.
pub fn matmul_many(x: &[f32], t: usize, ws: &[&Matrix], outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len(), "matmul_many: one output per matrix");
    let Some(first) = ws.first() else { return };
    for (w, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(
            w.cols(),
            first.cols(),
            "matmul_many: matrices of different widths"
        );
        assert_eq!(
            x.len(),
            t * w.cols(),
            "matmul_many: x has {} elements",
            x.len()
        );
        assert_eq!(o.len(), t * w.rows(), "matmul_many: output length");
    }
    // The integer kernels' range of `t` (where `matmul` also takes them for every block
    // format).
    let together = t >= 1
        && first.cols() > 0
        && ws.iter().all(|w| {
            w.dtype().is_quantized()
                && t <= quant_int_max_t(w.dtype())
                && w.dtype() != DType::Q8_K
                && w.rows() > 0
                && quant::act_block(w.dtype()) == quant::act_block(first.dtype())
        });
    if together {
        return quant::matmul_quant_many(x, t, ws, outs);
    }
    for (w, o) in ws.iter().zip(outs.iter_mut()) {
        matmul(x, t, w, o);
    }
}

/// `out[j] = w[rows[j]] · x` for the selected rows of a block-format `w` and one activation
/// row `x` (`w.cols()` long): the values [`matmul`] gives those rows at `t = 1`, reading only
/// them. `simd: false` forces the portable kernels.
pub fn gather_rows_quant(x: &[f32], w: &Matrix, rows: &[usize], out: &mut [f32], simd: bool) {
    assert!(
        w.dtype().is_quantized(),
        "gather_rows_quant: {} weights",
        w.dtype()
    );
    assert_eq!(x.len(), w.cols(), "gather_rows_quant: x length");
    assert_eq!(out.len(), rows.len(), "gather_rows_quant: out length");
    assert!(
        rows.iter().all(|&r| r < w.rows()),
        "gather_rows_quant: row out of range"
    );
    quant::gather_quant(x, w, rows, out, simd)
}

/// The output of a matmul shared by the rayon tasks that fill disjoint parts of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: `OutPtr` is only handed to tasks that write disjoint sets of elements (disjoint
// output columns `j`) of a buffer that outlives the parallel loop, so sharing it between
// threads cannot create a data race.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Writes `v` at element `idx`.
    ///
    /// # Safety
    /// `idx` must be in bounds of the output buffer and no other task may access it.
    #[inline(always)]
    unsafe fn write(self, idx: usize, v: f32) {
        *self.0.add(idx) = v;
    }
}

/// Splits `n` output rows of `row_bytes` bytes each into chunks of work for rayon: about
/// `target_bytes` of weights per chunk, at least `4 * threads` chunks when there are enough
/// rows, and a multiple of `align` rows per chunk. Returns `n` (one chunk) when the work is too
/// small to be worth splitting.
fn chunk_rows(n: usize, row_bytes: usize, target_bytes: usize, align: usize) -> usize {
    let threads = rayon::current_num_threads();
    let total = n.saturating_mul(row_bytes);
    if threads <= 1 || total < 128 * 1024 {
        return n.max(1);
    }
    let by_bytes = target_bytes / row_bytes.max(1);
    let by_balance = n.div_ceil(4 * threads);
    let rows = by_bytes.min(by_balance).max(align);
    rows.div_ceil(align) * align
}

#[cfg(test)]
mod tests;
#[cfg(all(test, target_arch = "aarch64"))]
mod tests_neon;
