//! Batched (prefill) matmul: weight rows are taken in panels; a bf16/f16 panel is widened to
//! f32 in a per-thread scratch buffer (f32 weights are used in place) and multiplied with all
//! activation rows by the `gemm` crate, single-threaded per panel. Panels run in parallel.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{chunk_rows, OutPtr};
use crate::dtype::DType;
use crate::matrix::{Layout, Matrix};

/// Bytes of f32 scratch per panel and the panel height's multiple, by the crate's kernels.
/// Larger panels amortise the crate's packing of `x` (done once per call) over more weight
/// rows. With AVX2, 1 MiB in multiples of 16 rows measured best (128 rows at k = 2048). The
/// AVX-512 kernels take weight rows 64 at a time and fall back to a half-height kernel for
/// the rest: 32-row panels (k = 6144) ran at 168-171 GFLOP/s, 64-row ones at 199-222, and
/// 2 MiB panels were best for every conformer shape (`kernel_speed 2 --audio`).
fn panel_shape() -> (usize, usize) {
    if crate::cpu::has_avx512() {
        (2 << 20, 64)
    } else {
        (1 << 20, 16)
    }
}

/// f32 weights with at least this many activation rows go to the crate in one call.
const WHOLE_MIN_T: usize = 1024;

thread_local! {
    /// Widened weight panel, reused by every panel this thread computes.
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = x · Wᵀ` through f32 GEMM on panels of `W`.
pub(super) fn gemm(x: &[f32], t: usize, w: &Matrix, out: &mut [f32]) {
    let n = w.rows();
    let k = w.cols();
    // Panel height: `bytes` of f32, a multiple of `align` rows, at least `align`.
    let (bytes, align) = panel_shape();
    let by_scratch = (bytes / (4 * k)).max(align) / align * align;
    let nb = chunk_rows(n, 4 * k, bytes, align).min(by_scratch).max(1);
    let panels = n.div_ceil(nb);
    let outp = OutPtr(out.as_mut_ptr());
    // f32 weights whose rows are 4-byte aligned can be read in place.
    let direct = w.dtype() == DType::F32 && (w.base_ptr() as usize).is_multiple_of(4);
    if direct && t >= WHOLE_MIN_T {
        // Many activation rows (a convolution's pixels): one call, parallel inside the
        // crate, packs each operand once instead of re-packing `x` for every weight panel.
        // SAFETY: as below with the whole matrix as one panel; the crate's threads write
        // disjoint blocks of `out`.
        unsafe {
            panel_gemm_with(
                x,
                t,
                k,
                w.base_ptr() as *const f32,
                w.row_stride(),
                0,
                n,
                n,
                outp,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            )
        };
        return;
    }
    let run = |p: usize| {
        let j0 = p * nb;
        let j1 = (j0 + nb).min(n);
        if direct {
            // SAFETY: rows j0..j1 of `w` are in bounds and 4-byte aligned; `base_ptr` covers
            // every element of the view, reached through `row_stride`.
            let rhs = unsafe { w.base_ptr().add(j0 * w.row_stride() * 4) } as *const f32;
            // SAFETY: `rhs` holds (j1 - j0) rows of k floats, `row_stride` apart; this task
            // owns output columns j0..j1.
            unsafe { panel_gemm(x, t, k, rhs, w.row_stride(), j0, j1, n, outp) };
            return;
        }
        PANEL.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => widen_and_multiply(x, t, w, j0, j1, &mut buf, outp),
            // Only reachable if a panel were computed re-entrantly on this thread; stay
            // correct with a temporary buffer.
            Err(_) => widen_and_multiply(x, t, w, j0, j1, &mut Vec::new(), outp),
        });
    };
    if panels == 1 {
        run(0);
    } else {
        (0..panels).into_par_iter().for_each(run);
    }
}

/// Widens weight rows `j0..j1` into `buf` and multiplies them.
fn widen_and_multiply(
    x: &[f32],
    t: usize,
    w: &Matrix,
    j0: usize,
    j1: usize,
    buf: &mut Vec<f32>,
    out: OutPtr,
) {
    let k = w.cols();
    let m = j1 - j0;
    if buf.len() < m * k {
        buf.resize(m * k, 0.0);
    }
    for (r, dst) in buf[..m * k].chunks_exact_mut(k).enumerate() {
        if w.layout() == Layout::Rows {
            super::widen(w.dtype(), w.row_bytes(j0 + r), dst, true);
        } else {
            w.row_to_f32(j0 + r, dst);
        }
    }
    // SAFETY: `buf` holds m rows of k floats (stride k); this task owns output columns j0..j1.
    unsafe { panel_gemm(x, t, k, buf.as_ptr(), k, j0, j1, w.rows(), out) };
}

/// `out[i, j0 + j] = Σ_kk x[i, kk] · rhs[j * stride + kk]` for `j < j1 - j0`.
///
/// # Safety
/// `rhs` readable for rows `0..j1-j0` of `k` floats, `stride` apart; `out` valid for `t * n`
/// floats with columns `j0..j1` owned by the caller; `x` holds `t * k` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn panel_gemm(
    x: &[f32],
    t: usize,
    k: usize,
    rhs: *const f32,
    stride: usize,
    j0: usize,
    j1: usize,
    n: usize,
    out: OutPtr,
) {
    panel_gemm_with(
        x,
        t,
        k,
        rhs,
        stride,
        j0,
        j1,
        n,
        out,
        gemm::Parallelism::None,
    )
}

/// [`panel_gemm`] with the crate's own parallelism.
///
/// # Safety
/// As [`panel_gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn panel_gemm_with(
    x: &[f32],
    t: usize,
    k: usize,
    rhs: *const f32,
    stride: usize,
    j0: usize,
    j1: usize,
    n: usize,
    out: OutPtr,
    par: gemm::Parallelism,
) {
    debug_assert!(x.len() >= t * k);
    // dst (t x m) = lhs (t x k, row-major x) · rhs (k x m; element (kk, j) at j*stride + kk).
    // With `read_dst = false` the crate computes dst = beta · lhs · rhs.
    gemm::gemm(
        t,
        j1 - j0,
        k,
        out.0.add(j0),
        1,
        n as isize,
        false,
        x.as_ptr(),
        1,
        k as isize,
        rhs,
        stride as isize,
        1,
        0.0f32,
        1.0f32,
        false,
        false,
        false,
        par,
    );
}
