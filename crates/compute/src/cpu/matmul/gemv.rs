//! Decode-path matmul: each weight row is read from memory once and multiplied with every
//! activation row (in groups of up to four) while it is hot in L1.

use super::{chunk_rows, OutPtr};
use crate::matrix::Matrix;

/// Activation rows handled together by one kernel call.
const TB: usize = 4;

/// Weight bytes per rayon task.
const CHUNK_BYTES: usize = 256 * 1024;

/// `out = x · Wᵀ`, split over output rows. `simd` selects the intrinsics kernels where the CPU
/// has them; otherwise (or when `false`) the portable kernel runs.
pub(super) fn gemv(x: &[f32], t: usize, w: &Matrix, out: &mut [f32], simd: bool) {
    let n = w.rows();
    let k = w.cols();
    let rows = chunk_rows(n, w.dtype().row_bytes(k), CHUNK_BYTES, 4);
    let outp = OutPtr(out.as_mut_ptr());
    let run = |c: usize| {
        let r0 = c * rows;
        let r1 = (r0 + rows).min(n);
        // SAFETY: this task writes only output columns r0..r1, disjoint from other tasks, and
        // `out` (t * n elements, checked by the caller) outlives the loop.
        unsafe { gemv_rows(x, t, w, r0, r1, outp, simd) };
    };
    // One chunk runs inline on this thread.
    crate::cpu::pool::for_each(n.div_ceil(rows), run);
}

/// Computes output columns `r0..r1` (weight rows) for all `t` activation rows.
///
/// # Safety
/// `out` must point to `t * w.rows()` floats, and no other thread may access columns
/// `r0..r1` of it meanwhile. `x` must hold `t * w.cols()` floats and `r1 <= w.rows()`.
unsafe fn gemv_rows(
    x: &[f32],
    t: usize,
    w: &Matrix,
    r0: usize,
    r1: usize,
    out: OutPtr,
    simd: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if simd && super::has_avx2() {
        use crate::dtype::DType;
        use x86::gemv_rows_avx2;
        // SAFETY: the required CPU features were detected; the rest is the caller's contract.
        match w.dtype() {
            DType::F32 => gemv_rows_avx2::<F32>(x, t, w, r0, r1, out),
            DType::BF16 => gemv_rows_avx2::<BF16>(x, t, w, r0, r1, out),
            DType::F16 => gemv_rows_avx2::<F16>(x, t, w, r0, r1, out),
            d => unreachable!("gemv: block format {d} goes to the integer kernels"),
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if simd {
        // SAFETY: NEON is part of every aarch64 target; the rest is the caller's contract.
        super::gemv_neon::gemv_rows_neon(x, t, w, r0, r1, out);
        return;
    }
    let _ = simd;
    gemv_rows_scalar(x, t, w, r0, r1, out);
}

/// Elements of a weight row widened at a time by the scalar kernel.
const SCALAR_CHUNK: usize = 256;

/// Portable kernel: widens a piece of a weight row into a stack buffer, then accumulates it
/// against up to [`TB`] activation rows in 8 independent lanes (which compilers vectorise).
///
/// # Safety
/// As [`gemv_rows`].
unsafe fn gemv_rows_scalar(x: &[f32], t: usize, w: &Matrix, r0: usize, r1: usize, out: OutPtr) {
    let k = w.cols();
    let n = w.rows();
    let es = w.dtype().size();
    let mut buf = [0f32; SCALAR_CHUNK];
    for j in r0..r1 {
        let row = w.row_bytes(j);
        let mut t0 = 0;
        while t0 < t {
            let tn = TB.min(t - t0);
            let mut acc = [[0f32; 8]; TB];
            let mut c0 = 0;
            while c0 < k {
                let c1 = (c0 + SCALAR_CHUNK).min(k);
                let wb = &mut buf[..c1 - c0];
                super::convert::widen_scalar(w.dtype(), &row[c0 * es..c1 * es], wb);
                for (i, a) in acc.iter_mut().enumerate().take(tn) {
                    let xr = &x[(t0 + i) * k + c0..(t0 + i) * k + c1];
                    dot_lanes(xr, wb, a);
                }
                c0 = c1;
            }
            for (i, a) in acc.iter().enumerate().take(tn) {
                // SAFETY: (t0 + i) < t and j < n: in bounds, and column j is ours.
                out.write((t0 + i) * n + j, a.iter().sum());
            }
            t0 += tn;
        }
    }
}

/// `acc[l] += Σ a[8m + l] · b[8m + l]`.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], acc: &mut [f32; 8]) {
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (p, q) in (&mut ca).zip(&mut cb) {
        for l in 0..8 {
            acc[l] += p[l] * q[l];
        }
    }
    for (l, (p, q)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[l] += p * q;
    }
}

/// Stored dtype codes (const generic parameters of the SIMD kernels).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const F32: u8 = 0;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const BF16: u8 = 1;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const F16: u8 = 2;

/// Bytes of activations kept hot while a task's weight rows stream past them.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const X_BLOCK_BYTES: usize = 128 * 1024;

/// Bytes per element of dtype code `D`.
#[inline(always)]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) const fn elem_size<const D: u8>() -> usize {
    if D == F32 {
        4
    } else {
        2
    }
}

/// Loads element `i` of dtype code `D` at `p` as f32 (the SIMD tiles' tail elements).
///
/// # Safety
/// `p` must be readable for `i + 1` elements.
#[inline(always)]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn load1<const D: u8>(p: *const u8, i: usize) -> f32 {
    use crate::dtype::{bf16_to_f32, f16_to_f32};
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

/// Adds the products of elements `k8..k` (the tail after the 8-element steps) to `res`,
/// one at a time, in the order every SIMD tile uses.
///
/// # Safety
/// Each `x[i]` readable for `k` floats and each `w[r]` for `k` elements of dtype `D`.
#[inline(always)]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) unsafe fn add_tail<const D: u8, const T: usize, const R: usize>(
    x: &[*const f32; T],
    w: &[*const u8; R],
    k8: usize,
    k: usize,
    res: &mut [[f32; R]; T],
) {
    for kk in k8..k {
        for r in 0..R {
            let wv = load1::<D>(w[r], kk);
            for i in 0..T {
                res[i][r] += *x[i].add(kk) * wv;
            }
        }
    }
}

/// A SIMD kernel's tile: the dot products of `T` activation rows `x[i]` with `R` weight rows
/// `w[r]` of dtype code `D`, `k` long, with `T * R` accumulators in registers while the
/// weight rows stream through. Every (activation row, weight row) pair must be computed by
/// the same operations whatever `T` and `R`, so that a row's result does not depend on the
/// batch it is in. The driver below ([`rows_simd`]) is shared by the architectures.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) trait Tile {
    /// # Safety
    /// The CPU features of the implementation available; each `x[i]` readable for `k`
    /// floats and each `w[r]` for `k` elements of dtype `D`.
    unsafe fn tile<const D: u8, const T: usize, const R: usize>(
        x: [*const f32; T],
        w: [*const u8; R],
        k: usize,
    ) -> [[f32; R]; T];
}

/// Runs the tile of `K` for activation rows `t0..t0+T` and weight rows `j..j+R`, and stores
/// the results.
///
/// # Safety
/// As [`Tile::tile`], plus `out` valid for `t * n` floats with columns `j..j+R` owned by the
/// caller.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn tile_store<K: Tile, const D: u8, const T: usize, const R: usize>(
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
    let res = K::tile::<D, T, R>(xs, ws, k);
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
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn row_group<K: Tile, const D: u8, const R: usize>(
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
        // Four weight rows with one or two activation rows (up to 8 accumulators); two
        // weight rows at a time with three or four activation rows.
        match (tn, R) {
            (1, 4) => tile_store::<K, D, 1, 4>(x, t0, k, w, j, n, out),
            (2, 4) => tile_store::<K, D, 2, 4>(x, t0, k, w, j, n, out),
            (3, 4) => {
                tile_store::<K, D, 3, 2>(x, t0, k, &w[..2], j, n, out);
                tile_store::<K, D, 3, 2>(x, t0, k, &w[2..], j + 2, n, out);
            }
            (4, 4) => {
                tile_store::<K, D, 4, 2>(x, t0, k, &w[..2], j, n, out);
                tile_store::<K, D, 4, 2>(x, t0, k, &w[2..], j + 2, n, out);
            }
            (1, _) => tile_store::<K, D, 1, 1>(x, t0, k, w, j, n, out),
            (2, _) => tile_store::<K, D, 2, 1>(x, t0, k, w, j, n, out),
            (3, _) => tile_store::<K, D, 3, 1>(x, t0, k, w, j, n, out),
            _ => tile_store::<K, D, 4, 1>(x, t0, k, w, j, n, out),
        }
        t0 += tn;
    }
}

/// `gemv_rows` through the tiles of `K` for dtype code `D`.
///
/// # Safety
/// The CPU features of `K` available, and the contract of `gemv_rows`.
#[inline(always)]
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) unsafe fn rows_simd<K: Tile, const D: u8>(
    x: &[f32],
    t: usize,
    w: &Matrix,
    r0: usize,
    r1: usize,
    out: OutPtr,
) {
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
            row_group::<K, D, 4>(xp, bn, k, &ws, j, n, ob);
            j += 4;
        }
        while j < r1 {
            row_group::<K, D, 1>(xp, bn, k, &[w.row_ptr(j)], j, n, ob);
            j += 1;
        }
        b0 += bn;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    //! AVX2 + FMA + F16C kernels.

    use std::arch::x86_64::*;

    use super::{elem_size, OutPtr, Tile, BF16, F32};

    use crate::cpu::ops::x86::hsum;
    use crate::matrix::Matrix;

    /// Loads 8 consecutive elements of dtype code `D` at `p` (unaligned) as f32.
    /// bf16 is widened by a 16-bit left shift of each zero-extended element; f16 by F16C.
    ///
    /// # Safety
    /// AVX2 and F16C must be available (callers are `target_feature` functions), and `p` must
    /// be readable for 8 elements.
    #[inline(always)]
    pub(crate) unsafe fn load8<const D: u8>(p: *const u8) -> __m256 {
        if D == F32 {
            _mm256_loadu_ps(p as *const f32)
        } else if D == BF16 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    /// The AVX2/FMA/F16C tile: one 8-lane FMA chain per (activation row, weight row) pair,
    /// reduced by `hsum`, then the tail elements one by one.
    pub(crate) struct Avx2;

    impl Tile for Avx2 {
        #[inline(always)]
        unsafe fn tile<const D: u8, const T: usize, const R: usize>(
            x: [*const f32; T],
            w: [*const u8; R],
            k: usize,
        ) -> [[f32; R]; T] {
            let es = elem_size::<D>();
            let mut acc = [[_mm256_setzero_ps(); R]; T];
            let k8 = k & !7;
            let mut kk = 0;
            while kk < k8 {
                let mut wv = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    wv[r] = load8::<D>(w[r].add(kk * es));
                }
                for i in 0..T {
                    let xv = _mm256_loadu_ps(x[i].add(kk));
                    for r in 0..R {
                        acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
                    }
                }
                kk += 8;
            }
            let mut res = [[0f32; R]; T];
            for i in 0..T {
                for r in 0..R {
                    res[i][r] = hsum(acc[i][r]);
                }
            }
            super::add_tail::<D, T, R>(&x, &w, k & !7, k, &mut res);
            res
        }
    }

    /// AVX2 version of `gemv_rows` for dtype code `D`.
    ///
    /// # Safety
    /// AVX2/FMA/F16C available, and the contract of `gemv_rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn gemv_rows_avx2<const D: u8>(
        x: &[f32],
        t: usize,
        w: &Matrix,
        r0: usize,
        r1: usize,
        out: OutPtr,
    ) {
        super::rows_simd::<Avx2, D>(x, t, w, r0, r1, out)
    }
}
