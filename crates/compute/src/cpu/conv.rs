//! Convolutions and the other spatial operations of the vision tower (MobileNet-V5), on
//! channels-last (`[h, w, c]` row-major) f32 images, with PyTorch/timm semantics.
//!
//! - [`Conv2d`]: full convolution (groups = 1) with TF "SAME" padding, as im2col (built in
//!   parallel, a bounded block of output rows at a time) times the repacked weight through
//!   [`crate::cpu::matmul`] (the multi-threaded f32 GEMM).
//! - [`DepthwiseConv2d`]: groups = channels, weights repacked to `[k·k, c]` so the inner
//!   loop runs over contiguous channels; AVX2/FMA kernel with a portable fallback, parallel
//!   over output rows.
//! - [`upsample_nearest`], [`resize_bilinear`], [`avg_pool`]: the MSFA resampling.
//! - [`multi_query_attention`]: softmax attention of many query heads against one shared
//!   K/V head, as two GEMMs per block of query rows.

use rayon::prelude::*;

use crate::matrix::Matrix;

/// Largest im2col buffer [`Conv2d::forward`] builds at once (bytes). Small enough that the
/// GEMM's repeated reads of it (one per weight panel) mostly hit the shared L3.
const IM2COL_BYTES: usize = 8 << 20;

/// Largest score block [`multi_query_attention`] holds per task (bytes).
const SCORES_BYTES: usize = 1 << 20;

/// TF "SAME" padding of one spatial dimension of size `i` for kernel `k` and stride `s`
/// (dilation 1): `(pad before, pad after, output size)`. The output size is `ceil(i / s)`
/// and the total padding `max((out − 1)·s + k − i, 0)`, the odd element going after.
pub fn same_padding(i: usize, k: usize, s: usize) -> (usize, usize, usize) {
    assert!(k > 0, "same_padding: kernel size 0");
    assert!(s > 0, "same_padding: stride 0");
    let out = i.div_ceil(s);
    if out == 0 {
        return (0, 0, 0);
    }
    let total = ((out - 1) * s + k).saturating_sub(i);
    (total / 2, total - total / 2, out)
}

/// The taps `lo..hi` of a kernel of size `k` that fall inside `0..n` when tap 0 reads input
/// index `base` (which may be negative), with the input index of tap `lo`.
#[inline(always)]
fn tap_range(base: isize, k: usize, n: usize) -> (usize, usize, usize) {
    let lo = (-base).clamp(0, k as isize) as usize;
    let hi = (n as isize - base).clamp(lo as isize, k as isize) as usize;
    (lo, hi, (base + lo as isize).max(0) as usize)
}

/// A full convolution (groups = 1), square kernel, TF "SAME" padding, weights repacked once.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// `[cout, k·k·cin]`: column `(ky·k + kx)·cin + ci`, the im2col order.
    w: Matrix,
    cout: usize,
    cin: usize,
    k: usize,
    stride: usize,
    bias: Option<Vec<f32>>,
}

impl Conv2d {
    /// `weight`: PyTorch layout `[cout, cin, k, k]`; `bias`: `[cout]`.
    pub fn new(
        weight: &[f32],
        cout: usize,
        cin: usize,
        k: usize,
        stride: usize,
        bias: Option<Vec<f32>>,
    ) -> Conv2d {
        assert!(
            cout > 0 && cin > 0 && k > 0,
            "Conv2d: cout {cout}, cin {cin}, k {k} must be positive"
        );
        assert!(stride > 0, "Conv2d: stride 0");
        assert_eq!(
            weight.len(),
            cout * cin * k * k,
            "Conv2d: weight has {} elements, expected [{cout}, {cin}, {k}, {k}]",
            weight.len()
        );
        if let Some(b) = &bias {
            assert_eq!(
                b.len(),
                cout,
                "Conv2d: bias has {} elements, expected {cout}",
                b.len()
            );
        }
        let kk = k * k;
        let cols = kk * cin;
        let mut packed = vec![0f32; cout * cols];
        for (o, row) in packed.chunks_exact_mut(cols).enumerate() {
            for ci in 0..cin {
                let src = &weight[(o * cin + ci) * kk..][..kk];
                for (t, &v) in src.iter().enumerate() {
                    row[t * cin + ci] = v;
                }
            }
        }
        Conv2d {
            w: Matrix::from_f32(&packed, cout, cols),
            cout,
            cin,
            k,
            stride,
            bias,
        }
    }

    /// Output channels.
    pub fn cout(&self) -> usize {
        self.cout
    }

    /// Input channels.
    pub fn cin(&self) -> usize {
        self.cin
    }

    /// `(ho, wo)` for an `h × w` input.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            same_padding(h, self.k, self.stride).2,
            same_padding(w, self.k, self.stride).2,
        )
    }

    /// `x`: `[h, w, cin]`; returns `[ho, wo, cout]`.
    pub fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (cin, cout, k, s) = (self.cin, self.cout, self.k, self.stride);
        assert_eq!(
            x.len(),
            h * w * cin,
            "Conv2d::forward: x has {} elements, expected [{h}, {w}, {cin}]",
            x.len()
        );
        let (pt, _, ho) = same_padding(h, k, s);
        let (pl, _, wo) = same_padding(w, k, s);
        let mut out = vec![0f32; ho * wo * cout];
        if out.is_empty() {
            return out;
        }
        if k == 1 && s == 1 {
            // A 1×1 convolution is a per-pixel matmul: x is already the im2col matrix.
            crate::cpu::matmul(x, h * w, &self.w, &mut out);
        } else {
            let cols = k * k * cin;
            let rows_per_block = (IM2COL_BYTES / (4 * wo * cols)).clamp(1, ho);
            let mut col = vec![0f32; rows_per_block * wo * cols];
            for (b, out_block) in out.chunks_mut(rows_per_block * wo * cout).enumerate() {
                let oy0 = b * rows_per_block;
                let npix = out_block.len() / cout;
                let col = &mut col[..npix * cols];
                col.par_chunks_mut(wo * cols)
                    .enumerate()
                    .for_each(|(r, dst)| {
                        self.im2col_row(x, h, w, oy0 + r, pt, pl, wo, dst);
                    });
                crate::cpu::matmul(col, npix, &self.w, out_block);
            }
        }
        if let Some(bias) = &self.bias {
            out.par_chunks_mut(cout * ((1 << 16) / cout).max(1))
                .for_each(|chunk| {
                    for px in chunk.chunks_exact_mut(cout) {
                        px.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    }
                });
        }
        out
    }

    /// EXPERIMENT: per-task im2col + single-threaded GEMM.
    pub(crate) fn forward_tasks(&self, x: &[f32], h: usize, w: usize, rows_per_task: usize) -> Vec<f32> {
        let (cin, cout, k, s) = (self.cin, self.cout, self.k, self.stride);
        let (pt, _, ho) = same_padding(h, k, s);
        let (pl, _, wo) = same_padding(w, k, s);
        let mut out = vec![0f32; ho * wo * cout];
        let cols = k * k * cin;
        let wptr = self.w.base_ptr() as *const f32;
        let wp = WPtr(wptr);
        out.par_chunks_mut(rows_per_task * wo * cout)
            .enumerate()
            .for_each(|(b, ob)| {
                let wp = wp;
                let npix = ob.len() / cout;
                let mut col = vec![0f32; npix * cols];
                for (r, dst) in col.chunks_mut(wo * cols).enumerate() {
                    self.im2col_row(x, h, w, b * rows_per_task + r, pt, pl, wo, dst);
                }
                unsafe {
                    gemm::gemm(
                        npix,
                        cout,
                        cols,
                        ob.as_mut_ptr(),
                        1,
                        cout as isize,
                        false,
                        col.as_ptr(),
                        1,
                        cols as isize,
                        wp.0,
                        cols as isize,
                        1,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                };
            });
        out
    }

    /// The im2col rows of output row `oy` (`wo` rows of `k·k·cin`) into `dst`.
    #[allow(clippy::too_many_arguments)]
    fn im2col_row(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        oy: usize,
        pt: usize,
        pl: usize,
        wo: usize,
        dst: &mut [f32],
    ) {
        let (cin, k, s) = (self.cin, self.k, self.stride);
        let cols = k * k * cin;
        let (ky0, ky1, iy0) = tap_range((oy * s) as isize - pt as isize, k, h);
        for (ox, px) in dst.chunks_exact_mut(cols).take(wo).enumerate() {
            let (kx0, kx1, ix0) = tap_range((ox * s) as isize - pl as isize, k, w);
            for ky in 0..k {
                let row = &mut px[ky * k * cin..(ky + 1) * k * cin];
                if ky < ky0 || ky >= ky1 {
                    row.fill(0.0);
                    continue;
                }
                let iy = iy0 + (ky - ky0);
                row[..kx0 * cin].fill(0.0);
                // Taps kx0..kx1 read consecutive input pixels: one contiguous copy.
                let n = (kx1 - kx0) * cin;
                let src = (iy * w + ix0) * cin;
                row[kx0 * cin..kx1 * cin].copy_from_slice(&x[src..src + n]);
                row[kx1 * cin..].fill(0.0);
            }
        }
    }
}

#[derive(Clone, Copy)]
struct WPtr(*const f32);
unsafe impl Send for WPtr {}
unsafe impl Sync for WPtr {}

/// Depthwise convolution (groups = channels), square kernel, TF "SAME" padding.
#[derive(Clone, Debug)]
pub struct DepthwiseConv2d {
    /// `[k·k, c]`: row `ky·k + kx` holds that tap for every channel.
    w: Vec<f32>,
    c: usize,
    k: usize,
    stride: usize,
}

/// The geometry of one depthwise forward pass.
#[derive(Clone, Copy)]
struct DwShape {
    h: usize,
    w: usize,
    c: usize,
    k: usize,
    s: usize,
    pt: usize,
    pl: usize,
    wo: usize,
}

impl DepthwiseConv2d {
    /// `weight`: PyTorch layout `[c, 1, k, k]`.
    pub fn new(weight: &[f32], c: usize, k: usize, stride: usize) -> DepthwiseConv2d {
        assert!(
            c > 0 && k > 0,
            "DepthwiseConv2d: c {c}, k {k} must be positive"
        );
        assert!(stride > 0, "DepthwiseConv2d: stride 0");
        assert_eq!(
            weight.len(),
            c * k * k,
            "DepthwiseConv2d: weight has {} elements, expected [{c}, 1, {k}, {k}]",
            weight.len()
        );
        let kk = k * k;
        let mut w = vec![0f32; kk * c];
        for ch in 0..c {
            for t in 0..kk {
                w[t * c + ch] = weight[ch * kk + t];
            }
        }
        DepthwiseConv2d { w, c, k, stride }
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// `(ho, wo)` for an `h × w` input.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            same_padding(h, self.k, self.stride).2,
            same_padding(w, self.k, self.stride).2,
        )
    }

    /// `x`: `[h, w, c]`; returns `[ho, wo, c]`.
    pub fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        self.forward_with(x, h, w, true)
    }

    /// [`Self::forward`] through the portable kernel only (the reference for the SIMD one).
    pub fn forward_scalar(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        self.forward_with(x, h, w, false)
    }

    fn forward_with(&self, x: &[f32], h: usize, w: usize, simd: bool) -> Vec<f32> {
        let (c, k, s) = (self.c, self.k, self.stride);
        assert_eq!(
            x.len(),
            h * w * c,
            "DepthwiseConv2d::forward: x has {} elements, expected [{h}, {w}, {c}]",
            x.len()
        );
        let (pt, _, ho) = same_padding(h, k, s);
        let (pl, _, wo) = same_padding(w, k, s);
        let mut out = vec![0f32; ho * wo * c];
        if out.is_empty() {
            return out;
        }
        let sh = DwShape {
            h,
            w,
            c,
            k,
            s,
            pt,
            pl,
            wo,
        };
        #[cfg(target_arch = "x86_64")]
        let simd = simd && c >= 8 && crate::cpu::has_avx2();
        #[cfg(not(target_arch = "x86_64"))]
        let simd = {
            let _ = simd;
            false
        };
        out.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(oy, row)| {
                if simd {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX2 and FMA were detected above; `x` holds h·w·c floats (checked),
                    // `self.w` k·k·c, `row` wo·c.
                    unsafe {
                        dw_row_avx2(&sh, x, &self.w, oy, row)
                    };
                } else {
                    dw_row_scalar(&sh, x, &self.w, oy, row, 0, c);
                }
            });
        out
    }
}

/// Output row `oy` of a depthwise convolution, channels `c0..c1` only, portable code.
fn dw_row_scalar(
    sh: &DwShape,
    x: &[f32],
    wt: &[f32],
    oy: usize,
    row: &mut [f32],
    c0: usize,
    c1: usize,
) {
    let (c, k) = (sh.c, sh.k);
    let (ky0, ky1, iy0) = tap_range((oy * sh.s) as isize - sh.pt as isize, k, sh.h);
    for (ox, px) in row.chunks_exact_mut(c).enumerate() {
        let (kx0, kx1, ix0) = tap_range((ox * sh.s) as isize - sh.pl as isize, k, sh.w);
        let acc = &mut px[c0..c1];
        acc.fill(0.0);
        for ky in ky0..ky1 {
            let iy = iy0 + (ky - ky0);
            for kx in kx0..kx1 {
                let ix = ix0 + (kx - kx0);
                let xs = &x[(iy * sh.w + ix) * c..][c0..c1];
                let ws = &wt[(ky * k + kx) * c..][c0..c1];
                for ((a, &xv), &wv) in acc.iter_mut().zip(xs).zip(ws) {
                    *a += xv * wv;
                }
            }
        }
    }
}

/// Output row `oy` of a depthwise convolution (`row`: `wo · c` floats): blocks of 32 and 8
/// channels in AVX2 registers, the last `c % 8` channels by [`dw_row_scalar`].
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` must hold `h·w·c` floats, `wt` `k·k·c`, `row` `wo·c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_row_avx2(sh: &DwShape, x: &[f32], wt: &[f32], oy: usize, row: &mut [f32]) {
    debug_assert!(x.len() >= sh.h * sh.w * sh.c);
    debug_assert!(wt.len() >= sh.k * sh.k * sh.c && row.len() >= sh.wo * sh.c);
    let c8 = sh.c & !7;
    let mut cb = 0;
    while cb + 32 <= c8 {
        dw_block_avx2::<4>(sh, x, wt, oy, row, cb);
        cb += 32;
    }
    while cb + 8 <= c8 {
        dw_block_avx2::<1>(sh, x, wt, oy, row, cb);
        cb += 8;
    }
    if c8 < sh.c {
        dw_row_scalar(sh, x, wt, oy, row, c8, sh.c);
    }
}

/// Channels `cb..cb + 8·NV` of output row `oy`.
///
/// # Safety
/// As [`dw_row_avx2`], and `cb + 8·NV <= c`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dw_block_avx2<const NV: usize>(
    sh: &DwShape,
    x: &[f32],
    wt: &[f32],
    oy: usize,
    row: &mut [f32],
    cb: usize,
) {
    use std::arch::x86_64::*;
    let (c, k) = (sh.c, sh.k);
    let (ky0, ky1, iy0) = tap_range((oy * sh.s) as isize - sh.pt as isize, k, sh.h);
    let (xp, wp, op) = (x.as_ptr(), wt.as_ptr(), row.as_mut_ptr());
    for ox in 0..sh.wo {
        let (kx0, kx1, ix0) = tap_range((ox * sh.s) as isize - sh.pl as isize, k, sh.w);
        let mut acc = [_mm256_setzero_ps(); NV];
        for ky in ky0..ky1 {
            let iy = iy0 + (ky - ky0);
            // Input pixel (iy, ix0) and weight tap (ky, kx0), channel cb: iy < h, and the
            // kx1 - kx0 taps read pixels ix0..ix0 + (kx1 - kx0) <= w of that row.
            let xrow = xp.add((iy * sh.w + ix0) * c + cb);
            let wrow = wp.add((ky * k + kx0) * c + cb);
            for t in 0..kx1 - kx0 {
                let (xi, wi) = (xrow.add(t * c), wrow.add(t * c));
                for (v, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(
                        _mm256_loadu_ps(xi.add(8 * v)),
                        _mm256_loadu_ps(wi.add(8 * v)),
                        *a,
                    );
                }
            }
        }
        let o = op.add(ox * c + cb);
        for (v, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * v), *a);
        }
    }
}

/// PyTorch `F.interpolate(mode="nearest")` (legacy nearest): output pixel `(oy, ox)` is input
/// pixel `(⌊oy·h/ho⌋, ⌊ox·w/wo⌋)`. `x`: `[h, w, c]`; returns `[ho, wo, c]`.
pub fn upsample_nearest(x: &[f32], h: usize, w: usize, c: usize, ho: usize, wo: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        h * w * c,
        "upsample_nearest: x has {} elements, expected [{h}, {w}, {c}]",
        x.len()
    );
    assert!(
        (h > 0 && w > 0) || ho * wo * c == 0,
        "upsample_nearest: empty input {h}x{w} to non-empty output {ho}x{wo}"
    );
    let mut out = vec![0f32; ho * wo * c];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(wo * c)
        .enumerate()
        .for_each(|(oy, row)| {
            let iy = oy * h / ho;
            for (ox, px) in row.chunks_exact_mut(c).enumerate() {
                let ix = ox * w / wo;
                px.copy_from_slice(&x[(iy * w + ix) * c..][..c]);
            }
        });
    out
}

/// Source index and weight of one output coordinate of a bilinear resize
/// (`align_corners=False`), computed in f32 as PyTorch's CPU kernel does:
/// `(i0, i1, λ)` with output `(1 − λ)·x[i0] + λ·x[i1]`.
fn bilinear_coeffs(out_len: usize, in_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|d| {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, (i0 + 1).min(in_len - 1), lambda)
        })
        .collect()
}

/// PyTorch `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing).
/// `x`: `[h, w, c]`; returns `[ho, wo, c]`.
pub fn resize_bilinear(x: &[f32], h: usize, w: usize, c: usize, ho: usize, wo: usize) -> Vec<f32> {
    assert_eq!(
        x.len(),
        h * w * c,
        "resize_bilinear: x has {} elements, expected [{h}, {w}, {c}]",
        x.len()
    );
    assert!(
        (h > 0 && w > 0) || ho * wo * c == 0,
        "resize_bilinear: empty input {h}x{w} to non-empty output {ho}x{wo}"
    );
    let mut out = vec![0f32; ho * wo * c];
    if out.is_empty() {
        return out;
    }
    let cy = bilinear_coeffs(ho, h);
    let cx = bilinear_coeffs(wo, w);
    out.par_chunks_mut(wo * c)
        .enumerate()
        .for_each(|(oy, row)| {
            let (y0, y1, ly) = cy[oy];
            let (h0, h1) = (1.0 - ly, ly);
            for (ox, px) in row.chunks_exact_mut(c).enumerate() {
                let (x0, x1, lx) = cx[ox];
                let (w0, w1) = (1.0 - lx, lx);
                let p00 = &x[(y0 * w + x0) * c..][..c];
                let p01 = &x[(y0 * w + x1) * c..][..c];
                let p10 = &x[(y1 * w + x0) * c..][..c];
                let p11 = &x[(y1 * w + x1) * c..][..c];
                for (ch, o) in px.iter_mut().enumerate() {
                    *o = h0 * (w0 * p00[ch] + w1 * p01[ch]) + h1 * (w0 * p10[ch] + w1 * p11[ch]);
                }
            }
        });
    out
}

/// `F.avg_pool2d` with kernel = stride = `(kh, kw)`, no padding: output
/// `[⌊h/kh⌋, ⌊w/kw⌋, c]`, each the mean of its `kh·kw` input pixels.
pub fn avg_pool(x: &[f32], h: usize, w: usize, c: usize, kh: usize, kw: usize) -> Vec<f32> {
    assert!(
        kh > 0 && kw > 0,
        "avg_pool: kernel {kh}x{kw} must be positive"
    );
    assert_eq!(
        x.len(),
        h * w * c,
        "avg_pool: x has {} elements, expected [{h}, {w}, {c}]",
        x.len()
    );
    let (ho, wo) = (h / kh, w / kw);
    let mut out = vec![0f32; ho * wo * c];
    if out.is_empty() {
        return out;
    }
    let div = (kh * kw) as f32;
    out.par_chunks_mut(wo * c)
        .enumerate()
        .for_each(|(oy, row)| {
            for (ox, px) in row.chunks_exact_mut(c).enumerate() {
                px.fill(0.0);
                for iy in oy * kh..(oy + 1) * kh {
                    for ix in ox * kw..(ox + 1) * kw {
                        let src = &x[(iy * w + ix) * c..][..c];
                        px.iter_mut().zip(src).for_each(|(o, v)| *o += v);
                    }
                }
                px.iter_mut().for_each(|o| *o /= div);
            }
        });
    out
}

/// Multi-query attention: `heads` query heads share one K/V head. `q`: `[n, heads · d]`
/// (head-major channels), `k`, `v`: `[m, d]`; returns `[n, heads · d]`:
/// `softmax(q_h · kᵀ / √d) · v` per head, no mask.
///
/// `q` viewed as `[n·heads, d]` rows is multiplied by `kᵀ` and then, after the softmax, by
/// `v`, in blocks of rows (the score block stays below [`SCORES_BYTES`]) run in parallel.
pub fn multi_query_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    m: usize,
    heads: usize,
    d: usize,
) -> Vec<f32> {
    assert!(d > 0, "multi_query_attention: head dim 0");
    assert_eq!(
        q.len(),
        n * heads * d,
        "multi_query_attention: q has {} elements, expected [{n}, {heads}·{d}]",
        q.len()
    );
    assert_eq!(
        k.len(),
        m * d,
        "multi_query_attention: k has {} elements, expected [{m}, {d}]",
        k.len()
    );
    assert_eq!(
        v.len(),
        m * d,
        "multi_query_attention: v has {} elements, expected [{m}, {d}]",
        v.len()
    );
    let rows = n * heads;
    let mut out = vec![0f32; rows * d];
    if out.is_empty() {
        return out;
    }
    assert!(m > 0, "multi_query_attention: no keys");
    let km = Matrix::from_f32(k, m, d);
    let mut vt = vec![0f32; d * m];
    for (j, vr) in v.chunks_exact(d).enumerate() {
        for (dd, &val) in vr.iter().enumerate() {
            vt[dd * m + j] = val;
        }
    }
    let vtm = Matrix::from_f32(&vt, d, m);
    let scale = 1.0 / (d as f32).sqrt();
    let threads = rayon::current_num_threads().max(1);
    let block = (SCORES_BYTES / (4 * m))
        .min(rows.div_ceil(threads))
        .clamp(1, rows);
    out.par_chunks_mut(block * d)
        .zip(q.par_chunks(block * d))
        .for_each(|(ob, qb)| {
            let t = qb.len() / d;
            let mut scores = vec![0f32; t * m];
            crate::cpu::matmul(qb, t, &km, &mut scores);
            for r in scores.chunks_exact_mut(m) {
                crate::cpu::ops::scale(r, scale);
                crate::cpu::ops::softmax(r);
            }
            crate::cpu::matmul(&scores, t, &vtm, ob);
        });
    out
}

#[cfg(test)]
mod tests;
