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

use super::gemv::{add_tail, elem_size, rows_simd, Tile, BF16, F16, F32};
use super::OutPtr;
use crate::dtype::DType;
use crate::matrix::Matrix;

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

/// The NEON tile: two 4-lane FMA chains per (activation row, weight row) pair (elements
/// `8m..8m+4` and `8m+4..8m+8`), added lane-wise and reduced, then the tail elements one by
/// one.
struct Neon;

impl Tile for Neon {
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
        add_tail::<D, T, R>(&x, &w, k8, k, &mut res);
        res
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
        DType::F32 => rows_simd::<Neon, F32>(x, t, w, r0, r1, out),
        DType::BF16 => rows_simd::<Neon, BF16>(x, t, w, r0, r1, out),
        DType::F16 => rows_simd::<Neon, F16>(x, t, w, r0, r1, out),
        d => unreachable!("gemv: block format {d} goes to the integer kernels"),
    }
}

/// NEON version of `convert::widen` for f32, bf16 and f16 rows, 8 elements per step (the
/// tail through the portable code).
///
/// # Safety
/// `src` must be readable for `out.len() * dtype.size()` bytes; `dtype` is F32, BF16 or F16.
pub(crate) unsafe fn widen_neon(dtype: DType, src: *const u8, out: &mut [f32]) {
    unsafe fn run<const D: u8>(src: *const u8, es: usize, out: &mut [f32]) -> usize {
        let n8 = out.len() & !7;
        let dst = out.as_mut_ptr();
        let mut i = 0;
        // SAFETY: i + 8 <= n8 <= out.len(): the 8 source elements and destination floats
        // are in bounds; loads and stores are unaligned.
        while i < n8 {
            let [lo, hi] = load8::<D>(src.add(i * es));
            vst1q_f32(dst.add(i), lo);
            vst1q_f32(dst.add(i + 4), hi);
            i += 8;
        }
        n8
    }
    let es = dtype.size();
    let n8 = match dtype {
        DType::F32 => run::<F32>(src, es, out),
        DType::BF16 => run::<BF16>(src, es, out),
        DType::F16 => run::<F16>(src, es, out),
        q => unreachable!("widen_neon: block format {q}"),
    };
    let n = out.len();
    let tail = std::slice::from_raw_parts(src.add(n8 * es), (n - n8) * es);
    super::convert::widen_scalar(dtype, tail, &mut out[n8..]);
}
