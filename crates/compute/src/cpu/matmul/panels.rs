//! f32 weights rearranged once, at load, for products with many activation rows (the audio
//! conformer's: hundreds of frames against 1536-wide matrices).
//!
//! [`GemmWeight`] stores the rows of `W` in panels of [`PANEL`]: panel `p` holds, for every
//! column `kk`, the sixteen values `W[16p .. 16p + 16, kk]` side by side. The AVX2 kernel then
//! computes a tile of 6 activation rows x 16 output columns in twelve registers: per column of
//! the reduction, two loads of the panel, six broadcasts of the activations and twelve
//! multiply-adds. The activations are copied once per product into tiles of 6 rows laid out
//! the same way (one contiguous run for the broadcasts); the general GEMM path instead hands
//! the `gemm` crate weight panels of a row-major matrix, and the crate packs the activations
//! again for every panel.
//!
//! Loops, per task (a run of [`PANELS_PER_TASK`] panels, the output columns it owns): the
//! reduction in slices of [`KC`] columns, the activation rows in blocks of [`MC`], the panels,
//! the row tiles. A panel's slice (16 KB) stays in L1 over a block's tiles, a block of
//! activation rows (120 KB) and the task's panel slices (128 KB) in L2.
//!
//! Only where AVX2 and FMA are present and AVX-512 is not: with AVX-512 the crate's 512-bit
//! kernels are faster than this 256-bit one. Elsewhere the weight is kept as it is and
//! multiplied by [`super::matmul`].

#[cfg(target_arch = "x86_64")]
use super::OutPtr;
use crate::matrix::Matrix;
use crate::storage::AlignedBytes;
use crate::DType;

/// Weight rows per panel (two 8-float registers).
const PANEL: usize = 16;
/// Activation rows per kernel tile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 6;
/// Reduction columns per slice.
#[cfg(target_arch = "x86_64")]
const KC: usize = 256;
/// Activation rows per block (a multiple of [`MR`]).
#[cfg(target_arch = "x86_64")]
const MC: usize = 120;
/// Panels per parallel task.
#[cfg(target_arch = "x86_64")]
const PANELS_PER_TASK: usize = 8;

/// An f32 weight `[rows, cols]` for `out = x · Wᵀ`, in panels where this CPU has the kernel
/// for them (see the module doc), else as it was given.
pub struct GemmWeight {
    inner: Inner,
}

enum Inner {
    Panels {
        rows: usize,
        cols: usize,
        /// `rows.div_ceil(16)` panels of `16 * cols` floats (rows past the end are zero).
        data: AlignedBytes,
    },
    Plain(Matrix),
}

impl GemmWeight {
    /// `w` in panels if it is f32 and the kernel runs here (a copy: a memory-mapped `w`'s
    /// pages are released from the resident set); otherwise `w` itself.
    pub fn new(w: Matrix) -> GemmWeight {
        if w.dtype() != DType::F32 || !panels_here() {
            return GemmWeight {
                inner: Inner::Plain(w),
            };
        }
        let data = pack(&w);
        // A memory-mapped weight is not read again: its pages leave the resident set.
        w.release_mapped_pages();
        GemmWeight {
            inner: Inner::Panels {
                rows: w.rows(),
                cols: w.cols(),
                data,
            },
        }
    }

    pub fn rows(&self) -> usize {
        match &self.inner {
            Inner::Panels { rows, .. } => *rows,
            Inner::Plain(m) => m.rows(),
        }
    }

    pub fn cols(&self) -> usize {
        match &self.inner {
            Inner::Panels { cols, .. } => *cols,
            Inner::Plain(m) => m.cols(),
        }
    }

    /// Whether the weight is held in panels (the kernel of this module runs).
    pub fn in_panels(&self) -> bool {
        matches!(self.inner, Inner::Panels { .. })
    }

    /// `out = x · Wᵀ` for `t` rows of `x` (`out` is `t x rows`, overwritten).
    pub fn matmul(&self, x: &[f32], t: usize, out: &mut [f32]) {
        match &self.inner {
            Inner::Plain(m) => super::matmul(x, t, m, out),
            Inner::Panels { rows, cols, data } => {
                let (n, k) = (*rows, *cols);
                assert_eq!(x.len(), t * k, "GemmWeight::matmul: x length");
                assert_eq!(out.len(), t * n, "GemmWeight::matmul: out length");
                if t == 0 || n == 0 {
                    return;
                }
                if k == 0 {
                    out.fill(0.0);
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                {
                    XTILES.with(|cell| {
                        // (A product started from inside another on this thread would find
                        // the buffer borrowed: it gets its own.)
                        let mut own = Vec::new();
                        let mut held = cell.try_borrow_mut();
                        let xt = match held.as_deref_mut() {
                            Ok(v) => v,
                            Err(_) => &mut own,
                        };
                        tile_rows(x, t, k, xt);
                        // Addresses as plain integers, which the tasks can share.
                        let (w, xt) = (data.as_slice().as_ptr() as usize, xt.as_ptr() as usize);
                        let outp = OutPtr(out.as_mut_ptr());
                        let panels = n.div_ceil(PANEL);
                        crate::cpu::pool::for_each(panels.div_ceil(PANELS_PER_TASK), |task| {
                            let p0 = task * PANELS_PER_TASK;
                            let p1 = (p0 + PANELS_PER_TASK).min(panels);
                            // SAFETY: panels exist only where `panels_here()` found AVX2 and
                            // FMA; `w` holds `panels` panels of 16 * k floats; `xt` holds the
                            // t.div_ceil(6) row tiles of 6 * k floats; this task writes only
                            // output columns 16 p0 .. 16 p1 (below n).
                            unsafe {
                                x86::task(xt as *const f32, t, k, w as *const f32, n, p0, p1, outp)
                            };
                        });
                    });
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = data;
                    unreachable!("panels are only built on x86-64");
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// The activations in row tiles ([`tile_rows`]), reused by every product on this thread.
    static XTILES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `x` (`t` rows of `k`) rearranged in tiles of [`MR`] rows: tile `r` holds, for every column
/// `kk`, the values `x[6r .. 6r + 6, kk]` side by side (rows past `t` are zero), so that the
/// kernel's broadcasts read one contiguous run.
#[cfg(target_arch = "x86_64")]
fn tile_rows(x: &[f32], t: usize, k: usize, xt: &mut Vec<f32>) {
    let tiles = t.div_ceil(MR);
    xt.clear();
    xt.resize(tiles * MR * k, 0.0);
    for (r, tile) in xt.chunks_exact_mut(MR * k).enumerate() {
        for i in 0..MR.min(t - MR * r) {
            let row = &x[(MR * r + i) * k..][..k];
            for (kk, &v) in row.iter().enumerate() {
                tile[MR * kk + i] = v;
            }
        }
    }
}

/// Whether [`GemmWeight::new`] puts f32 weights in panels on this CPU.
fn panels_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::has_avx2() && !crate::cpu::has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `w`'s values in panels (see the module doc).
fn pack(w: &Matrix) -> AlignedBytes {
    use rayon::prelude::*;
    let (n, k) = (w.rows(), w.cols());
    let panel_floats = PANEL * k;
    let mut bytes = AlignedBytes::zeroed(n.div_ceil(PANEL) * panel_floats * 4);
    if panel_floats > 0 {
        bytes
            .as_mut_slice()
            .par_chunks_mut(panel_floats * 4)
            .enumerate()
            .for_each(|(p, out)| {
                let mut row = vec![0f32; k];
                for r in 0..PANEL.min(n - PANEL * p) {
                    w.row_to_f32(PANEL * p + r, &mut row);
                    for (kk, &v) in row.iter().enumerate() {
                        let at = 4 * (PANEL * kk + r);
                        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            });
    }
    bytes
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{OutPtr, KC, MC, MR, PANEL};

    /// Output columns of panels `p0..p1` for all `t` rows.
    ///
    /// # Safety
    /// AVX2 and FMA available; `w` holds panels `0..p1` of `16 * k` floats; `x` holds the
    /// `t.div_ceil(6)` row tiles of `6 * k` floats ([`super::tile_rows`]); `out` holds `t`
    /// rows of `n` floats, columns `16 p0 .. min(16 p1, n)` owned by the caller.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn task(
        x: *const f32,
        t: usize,
        k: usize,
        w: *const f32,
        n: usize,
        p0: usize,
        p1: usize,
        out: OutPtr,
    ) {
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let first = k0 == 0;
            for i0 in (0..t).step_by(MC) {
                let i1 = (i0 + MC).min(t);
                for p in p0..p1 {
                    let wp = w.add(p * PANEL * k + k0 * PANEL);
                    let cols = PANEL.min(n - PANEL * p);
                    for i in (i0..i1).step_by(MR) {
                        // Row tile i / 6 from column k0 on.
                        let xp = x.add(i * k + MR * k0);
                        let c = out.0.add(i * n + PANEL * p);
                        tile(xp, wp, kc, c, n, (i1 - i).min(MR), cols, first);
                    }
                }
            }
        }
    }

    /// `C[rows x cols] (=|+=) X[rows x kc] · P[kc x 16]`: `x` a row tile's slice (6 values
    /// per reduction column), the panel slice `w` (16 floats per reduction column), `c` rows
    /// `c_rs` apart, the first `rows` rows and `cols` columns written; `first`: write, else add
    /// to what `c` holds.
    ///
    /// # Safety
    /// AVX2 and FMA available; the pointers valid for those extents.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile(
        x: *const f32,
        w: *const f32,
        kc: usize,
        c: *mut f32,
        c_rs: usize,
        rows: usize,
        cols: usize,
        first: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // One reduction column: two loads of the panel, 6 broadcasts, 12 multiply-adds.
        macro_rules! step {
            ($kk:expr) => {{
                let kk = $kk;
                let w0 = _mm256_loadu_ps(w.add(PANEL * kk));
                let w1 = _mm256_loadu_ps(w.add(PANEL * kk + 8));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xb = _mm256_broadcast_ss(&*x.add(MR * kk + i));
                    a[0] = _mm256_fmadd_ps(xb, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xb, w1, a[1]);
                }
            }};
        }
        let mut kk = 0;
        // Four columns per pass: the loop's own instructions once per 48 multiply-adds.
        while kk + 4 <= kc {
            step!(kk);
            step!(kk + 1);
            step!(kk + 2);
            step!(kk + 3);
            kk += 4;
        }
        while kk < kc {
            step!(kk);
            kk += 1;
        }
        for (i, a) in acc.iter().enumerate().take(rows) {
            let row = c.add(i * c_rs);
            if cols == PANEL {
                let (mut v0, mut v1) = (a[0], a[1]);
                if !first {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(row));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(row.add(8)));
                }
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            } else {
                // The last panel of a weight whose rows are not a multiple of 16.
                let mut v = [0f32; PANEL];
                _mm256_storeu_ps(v.as_mut_ptr(), a[0]);
                _mm256_storeu_ps(v.as_mut_ptr().add(8), a[1]);
                for (j, &vj) in v.iter().enumerate().take(cols) {
                    let o = row.add(j);
                    *o = if first { vj } else { *o + vj };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::values;

    /// Every shape against an f64 sum, on this CPU's path (panels where they run, else the
    /// plain matmul), and on the panel kernel wherever AVX2 and FMA exist (also on AVX-512
    /// machines, where `new` would not choose it).
    #[test]
    fn panel_products_equal_f64_sums() {
        // Odd row counts (a partial last panel), reductions over several slices of 256 with
        // a partial one, activation rows over several blocks of 120 with partial tiles.
        for &(n, k) in &[(1, 1), (17, 5), (37, 300), (64, 513), (100, 1030)] {
            let w = Matrix::from_f32(&values(n * k, (n + 3 * k) as u64), n, k);
            #[allow(unused_mut)]
            let mut weights = vec![GemmWeight::new(w.clone())];
            #[cfg(target_arch = "x86_64")]
            if crate::cpu::has_avx2() {
                weights.push(GemmWeight {
                    inner: Inner::Panels {
                        rows: n,
                        cols: k,
                        data: pack(&w),
                    },
                });
            }
            for gw in &weights {
                assert_eq!((gw.rows(), gw.cols()), (n, k));
                for t in [1, 5, 6, 7, 121, 250] {
                    let x = values(t * k, 7 + t as u64);
                    let mut out = vec![f32::NAN; t * n];
                    gw.matmul(&x, t, &mut out);
                    let what = format!("n {n} k {k} t {t} panels {}", gw.in_panels());
                    super::super::tests::check(&x, t, &w, &out, &what);
                }
            }
        }
    }

    #[test]
    fn other_dtypes_stay_as_they_are() {
        let w = Matrix::from_f32_as(&values(40 * 64, 1), 40, 64, DType::BF16);
        assert!(!GemmWeight::new(w).in_panels());
    }
}
