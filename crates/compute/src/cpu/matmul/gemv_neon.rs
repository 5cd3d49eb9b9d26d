//! NEON GEMV kernels for f32, f16 and bf16 weights (aarch64).
//!
//! The same scheme as the AVX2 kernels in `gemv.rs`: tiles of `T` activation rows x `R`
//! weight rows keep `T * R` accumulators in registers while the weight rows stream through,
//! eight elements per step (two f32x4 vectors). f16 is widened by `FCVTL`/`FCVTL2`, bf16 by a
//! 16-bit left shift.
//!
//! Every (activation row, weight row) pair is computed by the same sequence of operations
//! whatever the tile shape: two fused multiply-add chains over elements `8m..8m+4` and
//! `8m+4..8m+8`, added lane-wise and reduced, then the tail elements added one by one. So a
//! row's result is the same whether it is computed alone or in a batch.

use std::arch::aarch64::*;
use std::arch::asm;

use super::OutPtr;
use crate::dtype::{bf16_to_f32, f16_to_f32, DType};
use crate::matrix::Matrix;

/// Activation rows handled together by one kernel call (as the other GEMV kernels).
const TB: usize = 4;

/// Bytes of activations kept hot while a task's weight rows stream past them.
const X_BLOCK_BYTES: usize = 128 * 1024;

/// Stored dtype codes (const generic parameters of the kernels).
const F32: u8 = 0;
const BF16: u8 = 1;
const F16: u8 = 2;

/// Bytes per element of dtype code `D`.
#[inline(always)]
const fn elem_size<const D: u8>() -> usize {
    if D == F32 {
        4
    } else {
        2
    }
}

/// The 8 f16 values in the `u16` lanes of `h` converted to f32 (exact): lanes 0..4, 4..8.
#[inline(always)]
unsafe fn f16x8(h: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: `FCVTL`/`FCVTL2` are baseline Armv8 AdvSIMD; register-only. (The
    // `vcvt_f32_f16` intrinsics need the unstable f16 vector types.)
    asm!(
        "fcvtl {lo:v}.4s, {h:v}.4h",
        "fcvtl2 {hi:v}.4s, {h:v}.8h",
        lo = out(vreg) lo,
        hi = out(vreg) hi,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    [lo, hi]
}

/// Loads 8 consecutive elements of dtype code `D` at `p` (unaligned) as two f32x4.
///
/// # Safety
/// `p` must be readable for 8 elements.
#[inline(always)]
unsafe fn load8<const D: u8>(p: *const u8) -> [float32x4_t; 2] {
    if D == F32 {
        let f = p as *const f32;
        [vld1q_f32(f), vld1q_f32(f.add(4))]
    } else {
        let h = vld1q_u16(p as *const u16);
        if D == BF16 {
            [
                vreinterpretq_f32_u32(vshll_n_u16::<16>(vget_low_u16(h))),
                vreinterpretq_f32_u32(vshll_high_n_u16::<16>(h)),
            ]
        } else {
            f16x8(h)
        }
    }
}

/// Loads element `i` of dtype code `D` at `p` as f32.
///
/// # Safety
/// `p` must be readable for `i + 1` elements.
#[inline(always)]
unsafe fn load1<const D: u8>(p: *const u8, i: usize) -> f32 {
    if D == F32 {
        (p as *const f32).add(i).read_unaligned()
    } else {
        let b = (p as *const u16).add(i).read_unaligned();
        if D == BF16 {
            bf16_to_f32(b)
        } else {
            f16_to_f32(b)
        }
    }
}

/// Dot products of `T` activation rows `x[i]` with `R` weight rows `w[r]`, `k` long.
///
/// # Safety
/// Each `x[i]` readable for `k` floats and each `w[r]` for `k` elements of dtype `D`.
#[inline(always)]
unsafe fn tile<const D: u8, const T: usize, const R: usize>(
    x: [*const f32; T],
    w: [*const u8; R],
    k: usize,
) -> [[f32; R]; T] {
    let es = elem_size::<D>();
    let zero = vdupq_n_f32(0.0);
    let mut acc = [[[zero; 2]; R]; T];
    let k8 = k & !7;
    let mut kk = 0;
    while kk < k8 {
        let mut wv = [[zero; 2]; R];
        for r in 0..R {
            wv[r] = load8::<D>(w[r].add(kk * es));
        }
        for i in 0..T {
            let xv = [vld1q_f32(x[i].add(kk)), vld1q_f32(x[i].add(kk + 4))];
            for r in 0..R {
                acc[i][r][0] = vfmaq_f32(acc[i][r][0], xv[0], wv[r][0]);
                acc[i][r][1] = vfmaq_f32(acc[i][r][1], xv[1], wv[r][1]);
            }
        }
        kk += 8;
    }
    let mut res = [[0f32; R]; T];
    for i in 0..T {
        for r in 0..R {
            res[i][r] = vaddvq_f32(vaddq_f32(acc[i][r][0], acc[i][r][1]));
        }
    }
    for kk in k8..k {
        for r in 0..R {
            let wv = load1::<D>(w[r], kk);
            for i in 0..T {
                res[i][r] += *x[i].add(kk) * wv;
            }
        }
    }
    res
}

/// Runs [`tile`] for activation rows `t0..t0+T` and weight rows `j..j+R`, and stores the
/// results.
///
/// # Safety
/// As [`tile`], plus `out` valid for `t * n` floats with columns `j..j+R` owned by the
/// caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_store<const D: u8, const T: usize, const R: usize>(
    x: *const f32,
    t0: usize,
    k: usize,
    w: &[*const u8],
    j: usize,
    n: usize,
    out: OutPtr,
) {
    let xs: [*const f32; T] = std::array::from_fn(|i| x.add((t0 + i) * k));
    let ws: [*const u8; R] = std::array::from_fn(|r| w[r]);
    let res = tile::<D, T, R>(xs, ws, k);
    for (i, row) in res.iter().enumerate() {
        for (r, &v) in row.iter().enumerate() {
            out.write((t0 + i) * n + j + r, v);
        }
    }
}

/// All `t` activation rows against weight rows `j..j+R` (`R` = 4 or 1).
///
/// # Safety
/// As [`tile_store`] for every activation row `0..t`.
#[inline(always)]
unsafe fn row_group<const D: u8, const R: usize>(
    x: *const f32,
    t: usize,
    k: usize,
    w: &[*const u8; R],
    j: usize,
    n: usize,
    out: OutPtr,
) {
    let mut t0 = 0;
    while t0 < t {
        let tn = TB.min(t - t0);
        // Up to 16 accumulators (of the 32 vector registers): four weight rows with one or
        // two activation rows, two weight rows at a time with three or four.
        match (tn, R) {
            (1, 4) => tile_store::<D, 1, 4>(x, t0, k, w, j, n, out),
            (2, 4) => tile_store::<D, 2, 4>(x, t0, k, w, j, n, out),
            (3, 4) => {
                tile_store::<D, 3, 2>(x, t0, k, &w[..2], j, n, out);
                tile_store::<D, 3, 2>(x, t0, k, &w[2..], j + 2, n, out);
            }
            (4, 4) => {
                tile_store::<D, 4, 2>(x, t0, k, &w[..2], j, n, out);
                tile_store::<D, 4, 2>(x, t0, k, &w[2..], j + 2, n, out);
            }
            (1, _) => tile_store::<D, 1, 1>(x, t0, k, w, j, n, out),
            (2, _) => tile_store::<D, 2, 1>(x, t0, k, w, j, n, out),
            (3, _) => tile_store::<D, 3, 1>(x, t0, k, w, j, n, out),
            _ => tile_store::<D, 4, 1>(x, t0, k, w, j, n, out),
        }
        t0 += tn;
    }
}

/// `gemv_rows` for dtype code `D`.
///
/// # Safety
/// The contract of `gemv_rows`.
unsafe fn rows<const D: u8>(x: &[f32], t: usize, w: &Matrix, r0: usize, r1: usize, out: OutPtr) {
    let k = w.cols();
    let n = w.rows();
    // Activation rows are taken in blocks of about X_BLOCK_BYTES so that, with many of them,
    // the block stays in L2 while this task's weight rows pass over it.
    let tb = (X_BLOCK_BYTES / (4 * k)).max(TB) / TB * TB;
    let mut b0 = 0;
    while b0 < t {
        let bn = tb.min(t - b0);
        // Activation rows b0..b0+bn, written to rows b0.. of `out`.
        let xp = x.as_ptr().add(b0 * k);
        let ob = OutPtr(out.0.add(b0 * n));
        let mut j = r0;
        while j + 4 <= r1 {
            let ws = [
                w.row_ptr(j),
                w.row_ptr(j + 1),
                w.row_ptr(j + 2),
                w.row_ptr(j + 3),
            ];
            row_group::<D, 4>(xp, bn, k, &ws, j, n, ob);
            j += 4;
        }
        while j < r1 {
            row_group::<D, 1>(xp, bn, k, &[w.row_ptr(j)], j, n, ob);
            j += 1;
        }
        b0 += bn;
    }
}

/// NEON version of `gemv_rows` (f32, bf16 and f16 weights).
///
/// # Safety
/// The contract of `gemv_rows`: `out` points to `t * w.rows()` floats with columns `r0..r1`
/// owned by the caller, `x` holds `t * w.cols()` floats and `r1 <= w.rows()`.
pub(crate) unsafe fn gemv_rows_neon(
    x: &[f32],
    t: usize,
    w: &Matrix,
    r0: usize,
    r1: usize,
    out: OutPtr,
) {
    match w.dtype() {
        DType::F32 => rows::<F32>(x, t, w, r0, r1, out),
        DType::BF16 => rows::<BF16>(x, t, w, r0, r1, out),
        DType::F16 => rows::<F16>(x, t, w, r0, r1, out),
        d => unreachable!("gemv: block format {d} goes to the integer kernels"),
    }
}
