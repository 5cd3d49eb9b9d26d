//! Convolutions and the other spatial operations of the vision tower (MobileNet-V5), on
//! channels-last (`[h, w, c]` row-major) f32 images, with PyTorch/timm semantics and TF
//! "SAME" padding ([`same_padding`]).
//!
//! - [`Conv2d`]: full convolution (groups = 1) as im2col times the weight repacked to
//!   `[cout, k·k·cin]`. Output pixels are split into blocks; each rayon task builds its
//!   block's im2col rows in a per-thread buffer (a few MB, cache-resident) and multiplies
//!   them with one single-threaded call of the `gemm` crate. Measured against im2col blocks
//!   fed to the multi-threaded [`crate::cpu::matmul`]: about 10-20% faster on the tower's
//!   192×192×128 → 512 convolution, and no large im2col buffer.
//! - [`DepthwiseConv2d`]: groups = channels, weights repacked to `[k·k, c]` (channels
//!   contiguous); an AVX2/FMA kernel over channel slabs × bands of rows, and a portable
//!   kernel parallel over output rows.
//! - [`upsample_nearest`], [`resize_bilinear`], [`avg_pool`]: the MSFA resampling.
//! - [`multi_query_attention`]: softmax attention of many query heads against one shared
//!   K/V head, as two GEMMs per block of query rows.
//!
//! Large outputs are allocated on transparent huge pages where available (see `output`).

use std::cell::RefCell;

use rayon::prelude::*;

/// Target size of the im2col rows one [`Conv2d`] task builds and multiplies (bytes): a few
/// hundred output pixels, so the block stays in the core's L2/L3 share while the GEMM reads it.
const TASK_COL_BYTES: usize = 2 << 20;

/// Bytes of the `k` packed input rows of one channel slab of the depthwise kernel: large
/// enough that the input is read in long contiguous runs (whole pixels where it fits), small
/// enough to stay in the core's share of the cache.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const DW_RING_BYTES: usize = 1 << 20;

/// Output pixels the depthwise AVX2 kernel computes together in the interior of a row.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const DW_SPAN: usize = 4;

/// Largest score block one [`multi_query_attention`] task holds (bytes).
const SCORES_BYTES: usize = 1 << 20;

thread_local! {
    /// Scratch (im2col rows, attention scores) reused by every task this thread runs.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer, grown to at least `n` floats (contents
/// unspecified).
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < n {
                buf.resize(n, 0.0);
            }
            f(&mut buf[..n])
        }
        // Only a re-entrant task on this thread would find the buffer taken.
        Err(_) => f(&mut vec![0f32; n]),
    })
}

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

/// A zeroed output buffer of `n` floats; large ones are backed by transparent huge pages
/// where the kernel offers them (a fresh 4 KiB page fault costs about as much as writing the
/// page, and the tower writes gigabytes of fresh activations).
fn output(n: usize) -> Vec<f32> {
    const HUGE: usize = 2 << 20;
    let v = vec![0f32; n];
    #[cfg(target_os = "linux")]
    if n * 4 >= 2 * HUGE {
        let p = v.as_ptr() as usize;
        let start = p.div_ceil(HUGE) * HUGE;
        let end = (p + n * 4) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside this live allocation; MADV_HUGEPAGE changes only
            // how the kernel backs it (the zeroed contents are kept).
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// `dst[i·ldd + j] = Σ_p a[i·lda + p] · b[p·b_rs + j·b_cs]` for `i < m`, `j < n`, `p < kk`:
/// one single-threaded call of the `gemm` crate (callers parallelise over blocks of rows).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    kk: usize,
    dst: &mut [f32],
    ldd: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        n <= ldd && dst.len() >= (m - 1) * ldd + n,
        "sgemm: dst too short"
    );
    if kk == 0 {
        for r in dst.chunks_mut(ldd).take(m) {
            r[..n].fill(0.0);
        }
        return;
    }
    assert!(
        kk <= lda && a.len() >= (m - 1) * lda + kk,
        "sgemm: a too short"
    );
    assert!(
        b.len() > (kk - 1) * b_rs + (n - 1) * b_cs,
        "sgemm: b too short"
    );
    // SAFETY: the asserts above bound every element the call reads (a: rows < m, columns
    // < kk; b: (p, j) with p < kk, j < n) and writes (dst: rows < m, columns < n); `dst` is
    // uniquely borrowed. With `read_dst = false` the crate computes dst = 1 · a · b.
    unsafe {
        gemm::gemm(
            m,
            n,
            kk,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            false,
            a.as_ptr(),
            1,
            lda as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    };
}

/// A full convolution (groups = 1), square kernel, TF "SAME" padding, weights repacked once.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// `[cout, k·k·cin]`: column `(ky·k + kx)·cin + ci`, the im2col order.
    w: Vec<f32>,
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
        let mut w = vec![0f32; cout * cols];
        for (o, row) in w.chunks_exact_mut(cols).enumerate() {
            for ci in 0..cin {
                let src = &weight[(o * cin + ci) * kk..][..kk];
                for (t, &v) in src.iter().enumerate() {
                    row[t * cin + ci] = v;
                }
            }
        }
        Conv2d {
            w,
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
    ///
    /// Output pixels are split into blocks of about [`TASK_COL_BYTES`] of im2col rows; each
    /// rayon task builds its block's rows (`k·k·cin` per pixel) in a per-thread buffer and
    /// multiplies them by the repacked weight with a single-threaded GEMM.
    pub fn forward(&self, x: &[f32], h: usize, w: usize) -> Vec<f32> {
        let (pt, _, ho) = same_padding(h, self.k, self.stride);
        let (pl, _, wo) = same_padding(w, self.k, self.stride);
        self.forward_blocked(x, h, w, (pt, pl, ho, wo), self.task_pixels())
    }

    /// The convolution with explicit zero padding `[top, bottom, left, right]` instead of
    /// "SAME": returns `([ho, wo, cout], ho, wo)` with `ho = (h + top + bottom − k)/s + 1`
    /// (no output when the padded input is smaller than the kernel).
    pub fn forward_padded(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        pad: [usize; 4],
    ) -> (Vec<f32>, usize, usize) {
        let out_len = |n: usize, a: usize, b: usize| {
            (n + a + b)
                .checked_sub(self.k)
                .map_or(0, |span| span / self.stride + 1)
        };
        let ho = out_len(h, pad[0], pad[1]);
        let wo = out_len(w, pad[2], pad[3]);
        let y = self.forward_blocked(x, h, w, (pad[0], pad[2], ho, wo), self.task_pixels());
        (y, ho, wo)
    }

    fn task_pixels(&self) -> usize {
        let cols = self.k * self.k * self.cin;
        (TASK_COL_BYTES / (4 * cols)).clamp(16, 1024)
    }

    /// The convolution with padding `pt` on top and `pl` on the left and output size
    /// `ho × wo` (zeros read past the input), `pixels` output pixels per task.
    fn forward_blocked(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        (pt, pl, ho, wo): (usize, usize, usize, usize),
        pixels: usize,
    ) -> Vec<f32> {
        let (cin, cout, k, s) = (self.cin, self.cout, self.k, self.stride);
        assert_eq!(
            x.len(),
            h * w * cin,
            "Conv2d::forward: x has {} elements, expected [{h}, {w}, {cin}]",
            x.len()
        );
        let mut out = output(ho * wo * cout);
        let cols = k * k * cin;
        let task = |(b, ob): (usize, &mut [f32])| {
            let p0 = b * pixels;
            let np = ob.len() / cout;
            if k == 1 && s == 1 && pt == 0 && pl == 0 && ho == h && wo == w {
                // A 1×1 convolution: x is already the im2col matrix.
                sgemm(
                    np,
                    cout,
                    cols,
                    ob,
                    cout,
                    &x[p0 * cin..],
                    cin,
                    &self.w,
                    1,
                    cols,
                );
            } else {
                with_scratch(np * cols, |col| {
                    for (i, dst) in col.chunks_exact_mut(cols).enumerate() {
                        let p = p0 + i;
                        self.im2col_pixel(x, h, w, p / wo, p % wo, pt, pl, dst);
                    }
                    sgemm(np, cout, cols, ob, cout, col, cols, &self.w, 1, cols);
                });
            }
            if let Some(bias) = &self.bias {
                for px in ob.chunks_exact_mut(cout) {
                    px.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                }
            }
        };
        out.par_chunks_mut(pixels * cout).enumerate().for_each(task);
        out
    }

    /// The im2col row (`k·k·cin` floats) of output pixel `(oy, ox)` into `dst`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn im2col_pixel(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        oy: usize,
        ox: usize,
        pt: usize,
        pl: usize,
        dst: &mut [f32],
    ) {
        let (cin, k, s) = (self.cin, self.k, self.stride);
        let (ky0, ky1, iy0) = tap_range((oy * s) as isize - pt as isize, k, h);
        let (kx0, kx1, ix0) = tap_range((ox * s) as isize - pl as isize, k, w);
        for (ky, row) in dst.chunks_exact_mut(k * cin).enumerate() {
            if ky < ky0 || ky >= ky1 || kx0 == kx1 {
                row.fill(0.0);
                continue;
            }
            let iy = iy0 + (ky - ky0);
            row[..kx0 * cin].fill(0.0);
            // Taps kx0..kx1 read consecutive input pixels: one contiguous copy.
            let src = (iy * w + ix0) * cin;
            row[kx0 * cin..kx1 * cin].copy_from_slice(&x[src..src + (kx1 - kx0) * cin]);
            row[kx1 * cin..].fill(0.0);
        }
    }
}

/// Depthwise convolution (groups = channels), square kernel, TF "SAME" padding.
#[derive(Clone, Debug)]
pub struct DepthwiseConv2d {
    /// `[k·k, cp]` with `cp = c` rounded up to 16: row `ky·k + kx` holds that tap for every
    /// channel, zeros past `c`.
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
    /// `c` rounded up to 16: the weight row stride.
    cp: usize,
    k: usize,
    s: usize,
    pt: usize,
    pl: usize,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    wo: usize,
}

impl DwShape {
    /// Kernel rows `ky0..ky1` of output row `oy` that fall inside the image, and the input
    /// row of `ky0`.
    #[inline]
    fn rows(&self, oy: usize) -> (usize, usize, usize) {
        tap_range((oy * self.s) as isize - self.pt as isize, self.k, self.h)
    }
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
        let cp = c.next_multiple_of(16);
        let mut w = vec![0f32; kk * cp];
        for ch in 0..c {
            for t in 0..kk {
                w[t * cp + ch] = weight[ch * kk + t];
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
        let (ho, wo) = self.out_size(h, w);
        let mut out = output(ho * wo * self.c);
        self.forward_into(x, h, w, &mut out, simd);
        out
    }

    /// [`Self::forward`] into `out` (`[ho, wo, c]`, overwritten); `simd: false` forces the
    /// portable kernel. Parallel over output rows.
    fn forward_into(&self, x: &[f32], h: usize, w: usize, out: &mut [f32], simd: bool) {
        let (c, k, s) = (self.c, self.k, self.stride);
        assert_eq!(
            x.len(),
            h * w * c,
            "DepthwiseConv2d::forward: x has {} elements, expected [{h}, {w}, {c}]",
            x.len()
        );
        let (pt, _, ho) = same_padding(h, k, s);
        let (pl, _, wo) = same_padding(w, k, s);
        assert_eq!(
            out.len(),
            ho * wo * c,
            "DepthwiseConv2d::forward: out length"
        );
        if out.is_empty() {
            return;
        }
        let sh = DwShape {
            h,
            w,
            c,
            cp: c.next_multiple_of(16),
            k,
            s,
            pt,
            pl,
            wo,
        };
        #[cfg(target_arch = "x86_64")]
        let simd = simd && crate::cpu::has_avx2();
        #[cfg(not(target_arch = "x86_64"))]
        let _ = simd;
        #[cfg(target_arch = "x86_64")]
        if simd {
            // Tasks: channel slabs (whose k packed input rows stay in cache from one output
            // row to the next, so each input element is read once per task) times bands of
            // rows (when there are too few slabs to keep every thread busy).
            let wp = (wo - 1) * s + k;
            let slab = ((DW_RING_BYTES / (4 * k * wp)) & !15).clamp(16, sh.cp);
            let nslabs = c.div_ceil(slab);
            let threads = rayon::current_num_threads().max(1);
            let bands = (4 * threads).div_ceil(nslabs).clamp(1, ho);
            let band = ho.div_ceil(bands);
            let outp = DwOut(out.as_mut_ptr());
            (0..nslabs * bands).into_par_iter().for_each(|t| {
                let (s0, b) = ((t / bands) * slab, t % bands);
                let s1 = (s0 + slab).min(c);
                let rows = b * band..((b + 1) * band).min(ho);
                with_scratch(k * wp * (s1 - s0).next_multiple_of(16), |ring| {
                    // SAFETY: AVX2 and FMA were detected above; `x` holds h·w·c floats
                    // (checked), `self.w` k·k·cp, `ring` k·wp·(s1 − s0 rounded up to 16);
                    // this task alone writes channels s0..s1 of output rows `rows`, inside
                    // `out` (ho·wo·c floats).
                    unsafe { dw_task_avx2(&sh, x, &self.w, s0, s1, rows, ring, outp) };
                });
            });
            return;
        }
        out.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(oy, row)| dw_row_scalar(&sh, x, &self.w, oy, row));
    }
}

/// The output of a depthwise convolution, shared by tasks that write disjoint channel
/// ranges or rows of it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct DwOut(*mut f32);

// SAFETY: only handed to tasks that write disjoint elements of a buffer that outlives the
// parallel loop.
#[cfg(target_arch = "x86_64")]
unsafe impl Send for DwOut {}
// SAFETY: as above.
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for DwOut {}

#[cfg(target_arch = "x86_64")]
impl DwOut {
    /// Pointer to element `i`.
    ///
    /// # Safety
    /// `i` must be within the buffer.
    #[inline]
    unsafe fn at(self, i: usize) -> *mut f32 {
        self.0.add(i)
    }
}

/// Output row `oy` of a depthwise convolution, portable code: pixel by pixel, every tap
/// added over all channels (contiguous) in turn.
fn dw_row_scalar(sh: &DwShape, x: &[f32], wt: &[f32], oy: usize, row: &mut [f32]) {
    let (c, k) = (sh.c, sh.k);
    let (ky0, ky1, iy0) = sh.rows(oy);
    for (ox, acc) in row.chunks_exact_mut(c).enumerate() {
        let (kx0, kx1, ix0) = tap_range((ox * sh.s) as isize - sh.pl as isize, k, sh.w);
        acc.fill(0.0);
        for ky in ky0..ky1 {
            let iy = iy0 + (ky - ky0);
            for kx in kx0..kx1 {
                let ix = ix0 + (kx - kx0);
                let xs = &x[(iy * sh.w + ix) * c..][..c];
                let ws = &wt[(ky * k + kx) * sh.cp..][..c];
                for ((a, &xv), &wv) in acc.iter_mut().zip(xs).zip(ws) {
                    *a += xv * wv;
                }
            }
        }
    }
}

/// Channels `s0..s1` of output rows `rows` of a depthwise convolution with AVX2.
///
/// The input rows the output rows read are copied once each into `ring` (a slot per kernel
/// row, input row `iy` in slot `iy % k`), zero-padded left and right to `wp = (wo − 1)·s + k`
/// columns and grouped by 16 channels (`[group][column][16]` per slot; channels past `c`
/// are zeros). The multiply then reads small contiguous blocks with no border cases: in the
/// image itself, pixels are `c` floats apart, often a multiple of 1 KiB, which maps the
/// taps of an output pixel onto a few L1 sets. Each group is computed [`DW_SPAN`] output
/// pixels at a time, so every weight load feeds that many FMAs.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` must hold `h·w·c` floats, `wt` `k·k·cp`, `ring`
/// `k·wp·g16` with `g16 = (s1 − s0)` rounded up to 16; `s0` a multiple of 16, `s1 <= c`;
/// `out` valid for `ho·wo·c` floats whose channels `s0..s1` of `rows` nobody else accesses
/// meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_task_avx2(
    sh: &DwShape,
    x: &[f32],
    wt: &[f32],
    s0: usize,
    s1: usize,
    rows: std::ops::Range<usize>,
    ring: &mut [f32],
    out: DwOut,
) {
    use std::arch::x86_64::*;
    let (c, cp, k, s, wo) = (sh.c, sh.cp, sh.k, sh.s, sh.wo);
    let wp = (wo - 1) * s + k;
    let groups = (s1 - s0).div_ceil(16);
    let slot = groups * wp * 16;
    debug_assert!(x.len() >= sh.h * sh.w * c && wt.len() >= k * k * cp);
    debug_assert!(ring.len() >= k * slot && s0.is_multiple_of(16) && s1 <= c);
    // Which input row each slot holds.
    let mut held = [usize::MAX; 16];
    let mut held_vec;
    let held: &mut [usize] = if k <= 16 {
        &mut held[..k]
    } else {
        held_vec = vec![usize::MAX; k];
        &mut held_vec
    };
    for oy in rows {
        let (ky0, ky1, iy0) = sh.rows(oy);
        for iy in iy0..iy0 + (ky1 - ky0) {
            if held[iy % k] == iy {
                continue;
            }
            held[iy % k] = iy;
            let dst = ring.as_mut_ptr().add((iy % k) * slot);
            let zero = _mm256_setzero_ps();
            for j in 0..wp {
                let ix = j as isize - sh.pl as isize;
                if ix < 0 || ix as usize >= sh.w {
                    for g in 0..groups {
                        let d = dst.add((g * wp + j) * 16);
                        _mm256_storeu_ps(d, zero);
                        _mm256_storeu_ps(d.add(8), zero);
                    }
                    continue;
                }
                // Channels s0..s1 of input pixel (iy, ix) (iy < h, ix < w).
                let src = x.as_ptr().add((iy * sh.w + ix as usize) * c + s0);
                if iy + s < sh.h {
                    // The same pixel `s` rows down is packed for the next output row: start
                    // loading it now (a prefetch never faults).
                    let next = src.add(s * sh.w * c);
                    let mut off = 0;
                    while off < s1 - s0 {
                        _mm_prefetch::<_MM_HINT_T0>(next.add(off) as *const i8);
                        off += 16;
                    }
                    _mm_prefetch::<_MM_HINT_T0>(next.add(s1 - s0 - 1) as *const i8);
                }
                for g in 0..groups {
                    let d = dst.add((g * wp + j) * 16);
                    let n = (s1 - s0 - 16 * g).min(16);
                    if n == 16 {
                        _mm256_storeu_ps(d, _mm256_loadu_ps(src.add(16 * g)));
                        _mm256_storeu_ps(d.add(8), _mm256_loadu_ps(src.add(16 * g + 8)));
                    } else {
                        let mut tmp = [0f32; 16];
                        std::ptr::copy_nonoverlapping(src.add(16 * g), tmp.as_mut_ptr(), n);
                        _mm256_storeu_ps(d, _mm256_loadu_ps(tmp.as_ptr()));
                        _mm256_storeu_ps(d.add(8), _mm256_loadu_ps(tmp.as_ptr().add(8)));
                    }
                }
            }
        }
        let orow = out.at(oy * wo * c);
        for g in 0..groups {
            let ch0 = s0 + 16 * g;
            let n = (s1 - ch0).min(16);
            // Slot base of kernel row ky0 + r for this group, and its weights.
            let mut bases = [std::ptr::null::<f32>(); 16];
            let mut bases_vec;
            let bases: &mut [*const f32] = if k <= 16 {
                &mut bases[..k]
            } else {
                bases_vec = vec![std::ptr::null::<f32>(); k];
                &mut bases_vec
            };
            let kr = ky1 - ky0;
            for (r, b) in bases.iter_mut().enumerate().take(kr) {
                *b = ring.as_ptr().add(((iy0 + r) % k) * slot + g * wp * 16);
            }
            let wg = wt.as_ptr().add(ky0 * k * cp + ch0);
            let mut ox = 0;
            while ox < wo {
                let span = (wo - ox).min(DW_SPAN);
                let mut acc = [[_mm256_setzero_ps(); 2]; DW_SPAN];
                if span == DW_SPAN {
                    dw_span::<DW_SPAN>(&bases[..kr], wg, k, s, cp, ox, &mut acc);
                } else {
                    for (p, a) in acc.iter_mut().enumerate().take(span) {
                        let mut one = [[_mm256_setzero_ps(); 2]; 1];
                        dw_span::<1>(&bases[..kr], wg, k, s, cp, ox + p, &mut one);
                        *a = one[0];
                    }
                }
                for (p, a) in acc.iter().enumerate().take(span) {
                    let o = orow.add((ox + p) * c + ch0);
                    if n == 16 {
                        _mm256_storeu_ps(o, a[0]);
                        _mm256_storeu_ps(o.add(8), a[1]);
                    } else {
                        let mut tmp = [0f32; 16];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), a[0]);
                        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), a[1]);
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, n);
                    }
                }
                ox += span;
            }
        }
    }
}

/// Accumulates 16 channels of the `P` output pixels `ox..ox + P` into `acc`: `bases[r]` is
/// the packed row (`[wp][16]`) of kernel row `ky0 + r`, `wg` the weight of tap `(ky0, 0)`
/// (tap `(ky0 + r, kx)` at `(r·k + kx)·cp`).
///
/// # Safety
/// AVX2 and FMA; `(ox + P − 1)·s + k <= wp` for the packed rows; `wg` valid for every tap.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dw_span<const P: usize>(
    bases: &[*const f32],
    wg: *const f32,
    k: usize,
    s: usize,
    cp: usize,
    ox: usize,
    acc: &mut [[std::arch::x86_64::__m256; 2]; P],
) {
    use std::arch::x86_64::*;
    for (r, &base) in bases.iter().enumerate() {
        let xr = base.add(ox * s * 16);
        let wr = wg.add(r * k * cp);
        for kx in 0..k {
            let w0 = _mm256_loadu_ps(wr.add(kx * cp));
            let w1 = _mm256_loadu_ps(wr.add(kx * cp + 8));
            for (p, a) in acc.iter_mut().enumerate() {
                let xi = xr.add((p * s + kx) * 16);
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xi), w0, a[0]);
                a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(xi.add(8)), w1, a[1]);
            }
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
    let mut out = output(ho * wo * c);
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
    let mut out = output(ho * wo * c);
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
    let mut out = output(ho * wo * c);
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
/// `v`: two single-threaded GEMMs per block of rows (the score block stays below
/// [`SCORES_BYTES`]), blocks in parallel.
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
    let mut out = output(rows * d);
    if out.is_empty() {
        return out;
    }
    assert!(m > 0, "multi_query_attention: no keys");
    let scale = 1.0 / (d as f32).sqrt();
    let threads = rayon::current_num_threads().max(1);
    let block = (SCORES_BYTES / (4 * m))
        .min(rows.div_ceil(4 * threads))
        .clamp(1, rows);
    out.par_chunks_mut(block * d)
        .zip(q.par_chunks(block * d))
        .for_each(|(ob, qb)| {
            let t = qb.len() / d;
            with_scratch(t * m, |scores| {
                // scores = q · kᵀ: b(p, j) = k[j·d + p].
                sgemm(t, m, d, scores, m, qb, d, k, 1, d);
                for r in scores.chunks_exact_mut(m) {
                    crate::cpu::ops::scale(r, scale);
                    crate::cpu::ops::softmax(r);
                }
                // out = P · v: b(p, j) = v[p·d + j].
                sgemm(t, d, m, ob, d, scores, m, v, d, 1);
            });
        });
    out
}

#[cfg(test)]
mod tests;
