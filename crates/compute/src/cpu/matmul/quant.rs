//! Matmul with block-format (GGUF) weights: activations are quantized per block to int8
//! (Q8_0 blocks of 32 for Q8_0/Q4_0 weights, Q8_K blocks of 256 with sums of 16 for the
//! K-quants) and multiplied by integer dot products, one f32 scale product per block.
//!
//! Output rows (weight rows) are split over rayon tasks. Every weight row is read once per
//! call and multiplied with all `t` activation rows while it is hot in L1, so with several
//! tokens the quantized activations (about `t · k` bytes) are re-read from L2 instead.
//!
//! The result differs from `dequantize(W) · x` in f32 by the activation rounding only:
//! `|Σ w·(x - x̂)| <= Σ_blocks (Σ|w|) · d_x / 2` where `d_x = max|x_block| / 127`.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{chunk_rows, OutPtr};
use crate::dtype::DType;
use crate::matrix::{Layout, Matrix};
use crate::quant::{rd_f16, unpack_scales_mins, QK, QK_K};

/// Weight bytes per rayon task: 1 MiB (E2B Q8_0 decode +3-10% over 256 KiB in alternating
/// runs: fewer task starts, each with its first tile not yet prefetched).
const CHUNK_BYTES: usize = 1024 * 1024;

/// `t` activation rows quantized to int8 blocks.
#[derive(Default)]
pub(crate) struct QAct {
    /// `t * k` quantized values.
    pub(crate) q: Vec<i8>,
    /// One scale per block (32 or 256 values).
    pub(crate) d: Vec<f32>,
    /// Sums of 16 consecutive `q` (Q8_K activations only).
    pub(crate) s: Vec<i16>,
    /// `-8 · Σq` per block of 32 (Q8_0 activations only): the offset of Q4_0's unsigned
    /// nibbles.
    pub(crate) o: Vec<i32>,
}

/// Activation block size used with weights of `dtype` (32 for Q8_0/Q4_0, 256 otherwise).
pub(crate) fn act_block(dtype: DType) -> usize {
    match dtype {
        DType::Q8_0 | DType::Q4_0 => QK,
        _ => QK_K,
    }
}

/// A view of a call's operands for the SIMD tiles (quant_x86.rs, quant_neon.rs).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy)]
pub(super) struct Ctx {
    /// Row 0 of the weights.
    pub(super) base: *const u8,
    /// Bytes from one weight row to the next.
    pub(super) stride: usize,
    /// Blocks per row.
    pub(super) nb: usize,
    /// Output row length (weight rows).
    pub(super) n: usize,
    pub(super) out: OutPtr,
}

/// One activation block: values, quantized values, scale, sums of 16, offset.
type Block<'a> = (
    &'a [f32],
    &'a mut [i8],
    &'a mut f32,
    &'a mut [i16],
    &'a mut i32,
);

impl QAct {
    /// Quantizes `t` rows of `k` values with blocks of `bs` (32: offsets, no sums; 256: sums
    /// of 16, no offsets). `simd`: through the AVX2 quantizer where the CPU has it, or the
    /// NEON one on aarch64 (same values).
    pub(crate) fn quantize(&mut self, x: &[f32], k: usize, bs: usize, simd: bool) {
        let nb = x.len() / bs;
        self.q.resize(x.len(), 0);
        self.d.resize(nb, 0.0);
        let sums = bs == QK_K;
        self.s.resize(if sums { x.len() / 16 } else { 0 }, 0);
        self.o.resize(if sums { 0 } else { nb }, 0);
        #[cfg(target_arch = "x86_64")]
        let simd = simd && super::has_avx2();
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let _ = simd;
        let one = |(xb, q, d, s, o): Block| {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AVX2/FMA detected; the slices have matching lengths.
                unsafe { super::quant_x86::quantize_act_block_avx2(xb, q, d, s, o) };
                return;
            }
            #[cfg(target_arch = "aarch64")]
            if simd {
                // SAFETY: NEON is part of aarch64; the slices have matching lengths.
                unsafe { super::quant_neon::quantize_act_block_neon(xb, q, d, s, o) };
                return;
            }
            quantize_act_block(xb, q, d, s, o)
        };
        // Enough work to be worth splitting: about a few hundred KB of activations.
        let par = x.len() >= 64 * 1024 && k > 0;
        let mut no_o = vec![0i32; if sums { nb } else { 0 }];
        let o: &mut [i32] = if sums { &mut no_o } else { &mut self.o };
        if sums {
            if par {
                x.par_chunks_exact(bs)
                    .zip(self.q.par_chunks_exact_mut(bs))
                    .zip(self.d.par_iter_mut())
                    .zip(self.s.par_chunks_exact_mut(16))
                    .zip(o.par_iter_mut())
                    .for_each(|((((xb, q), d), s), o)| one((xb, q, d, s, o)));
            } else {
                x.chunks_exact(bs)
                    .zip(self.q.chunks_exact_mut(bs))
                    .zip(self.d.iter_mut())
                    .zip(self.s.chunks_exact_mut(16))
                    .zip(o.iter_mut())
                    .for_each(|((((xb, q), d), s), o)| one((xb, q, d, s, o)));
            }
        } else if par {
            x.par_chunks_exact(bs)
                .zip(self.q.par_chunks_exact_mut(bs))
                .zip(self.d.par_iter_mut())
                .zip(o.par_iter_mut())
                .for_each(|(((xb, q), d), o)| one((xb, q, d, &mut [], o)));
        } else {
            x.chunks_exact(bs)
                .zip(self.q.chunks_exact_mut(bs))
                .zip(self.d.iter_mut())
                .zip(o.iter_mut())
                .for_each(|(((xb, q), d), o)| one((xb, q, d, &mut [], o)));
        }
    }
}

/// `d = max|x| / 127`, `q = round(x / d)` in -127..=127; `s[g]` = sum of `q[16g..16g+16]`
/// (if `s` is not empty); `o = -8 · Σq`.
pub(crate) fn quantize_act_block(x: &[f32], q: &mut [i8], d: &mut f32, s: &mut [i16], o: &mut i32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    *d = amax / 127.0;
    let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
    for (o, &v) in q.iter_mut().zip(x) {
        *o = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    for (g, o) in s.iter_mut().enumerate() {
        *o = q[16 * g..16 * g + 16].iter().map(|&v| v as i16).sum();
    }
    *o = -8 * q.iter().map(|&v| v as i32).sum::<i32>();
}

thread_local! {
    /// Quantized activations, reused by every call on this thread.
    static ACT: RefCell<QAct> = RefCell::new(QAct::default());
}

/// `out = x · Wᵀ` for a block-format `w` through int8 activations.
pub(super) fn matmul_quant(x: &[f32], t: usize, w: &Matrix, out: &mut [f32], simd: bool) {
    with_act(|act| run(x, t, w, out, simd, act))
}

/// Runs `f` with this thread's activation buffer (no allocation per call in decode).
fn with_act<R>(f: impl FnOnce(&mut QAct) -> R) -> R {
    ACT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut a) => f(&mut a),
        // Re-entrant call on this thread (a rayon task waiting inside a matmul): stay correct
        // with a temporary buffer.
        Err(_) => f(&mut QAct::default()),
    })
}

/// `outs[i] = x · ws[i]ᵀ` for block-format matrices that share `x` and its activation
/// block size, in one parallel loop over all of their row chunks (one fork and join instead
/// of one per product). Each output equals [`matmul_quant`]'s.
pub(super) fn matmul_quant_many(x: &[f32], t: usize, ws: &[&Matrix], outs: &mut [&mut [f32]]) {
    with_act(|act| {
        act.quantize(x, ws[0].cols(), act_block(ws[0].dtype()), true);
        let act = &*act;
        let mut tasks = Vec::new();
        for (i, w) in ws.iter().enumerate() {
            let n = w.rows();
            let align = if w.layout() == Layout::Rows { 4 } else { 8 };
            let rows = chunk_rows(n, w.dtype().row_bytes(w.cols()), CHUNK_BYTES, align);
            tasks.extend((0..n.div_ceil(rows)).map(|c| (i, c * rows, (c * rows + rows).min(n))));
        }
        let outp: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
        crate::cpu::pool::for_each(tasks.len(), |c| {
            let (i, r0, r1) = tasks[c];
            // SAFETY: each task writes only output columns r0..r1 of its own product, disjoint
            // from every other task; the outputs (t x rows each, checked by the caller)
            // outlive the loop.
            unsafe { rows_dispatch(ws[i], r0, r1, act, t, outp[i], true) };
        });
    })
}

/// Selected rows per rayon task in [`gather_quant`].
const GATHER_ROWS_PER_TASK: usize = 64;

/// `out[j] = w[rows[j]] · x` for a block-format `w` and one activation row, through int8
/// activations: each value equals the corresponding output of [`matmul_quant`] with `t = 1`.
pub(super) fn gather_quant(x: &[f32], w: &Matrix, rows: &[usize], out: &mut [f32], simd: bool) {
    with_act(|act| gather(x, w, rows, out, simd, act))
}

fn gather(x: &[f32], w: &Matrix, rows: &[usize], out: &mut [f32], simd: bool, act: &mut QAct) {
    act.quantize(x, w.cols(), act_block(w.dtype()), simd);
    let act = &*act;
    crate::cpu::pool::for_each_chunk_mut(out, GATHER_ROWS_PER_TASK, |c, o| {
        let r = &rows[c * GATHER_ROWS_PER_TASK..][..o.len()];
        // Interleaved matrices (not used for gathers by the model) take the portable
        // kernel on their rows copied out of the groups.
        let rows_layout = w.layout() == Layout::Rows;
        #[cfg(target_arch = "x86_64")]
        if simd && rows_layout && super::has_avx2() {
            use super::quant_x86::*;
            // SAFETY: AVX2/FMA/F16C detected; rows checked by the caller; o matches r.
            unsafe {
                match w.dtype() {
                    DType::Q8_0 => gather_avx2::<Q8_0>(w, r, act, o),
                    DType::Q4_0 => gather_avx2::<Q4_0>(w, r, act, o),
                    DType::Q4_K => gather_avx2::<Q4_K>(w, r, act, o),
                    DType::Q5_K => gather_avx2::<Q5_K>(w, r, act, o),
                    DType::Q6_K => gather_avx2::<Q6_K>(w, r, act, o),
                    d => unreachable!("{d}"),
                }
            }
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if simd && rows_layout {
            // SAFETY: dotprod only where detected; rows checked by the caller; o matches r.
            unsafe { super::quant_neon::gather_neon(w, r, act, o, super::has_neon_dotprod()) };
            return;
        }
        let dot = scalar_dot(w.dtype());
        let s: &[i16] = if act_block(w.dtype()) == QK_K {
            &act.s
        } else {
            &[]
        };
        for (o, &row) in o.iter_mut().zip(r) {
            *o = dot(&w.row_blocks(row), &act.q, &act.d, s);
        }
    });
}

fn run(x: &[f32], t: usize, w: &Matrix, out: &mut [f32], simd: bool, act: &mut QAct) {
    let k = w.cols();
    let n = w.rows();
    let dtype = w.dtype();
    assert!(
        dtype != DType::Q8_K,
        "matmul: Q8_K is an activation format, not supported as weights"
    );
    act.quantize(x, k, act_block(dtype), simd);
    let act = &*act;
    // Interleaved matrices split on their groups of eight rows.
    let align = if w.layout() == Layout::Rows { 4 } else { 8 };
    let rows = chunk_rows(n, dtype.row_bytes(k), CHUNK_BYTES, align);
    let outp = OutPtr(out.as_mut_ptr());
    let task = |c: usize| {
        let r0 = c * rows;
        let r1 = (r0 + rows).min(n);
        // SAFETY: this task writes only output columns r0..r1, disjoint from other tasks, and
        // `out` (t * n elements, checked by the caller) outlives the loop.
        unsafe { rows_dispatch(w, r0, r1, act, t, outp, simd) };
    };
    // One chunk runs inline on this thread.
    crate::cpu::pool::for_each(n.div_ceil(rows), task);
}

/// Whether a product of `t` activation rows takes the 512-bit Q4_K and Q6_K kernels: where
/// the CPU has AVX-512 BW, for prefills (more than 4 rows). `kernel_speed 2 --quant
/// --batched` at t = 64-128: interleaved Q4_K 195-355 GFLOP/s against 167-231 on the 256-bit
/// kernel, Q6_K 115-174 against 96-136. Decode keeps the 256-bit kernels, measured longer;
/// it is bound by memory, not by the multiplies.
#[cfg(target_arch = "x86_64")]
fn wide_kernels(t: usize) -> bool {
    t > 4 && crate::cpu::has_avx512()
}

/// Output columns `r0..r1` for all `t` activation rows.
///
/// # Safety
/// `out` valid for `t * w.rows()` floats with columns `r0..r1` owned by the caller; `act`
/// holds `t` quantized rows of `w.cols()`.
unsafe fn rows_dispatch(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
    simd: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if simd && super::has_avx2() && w.layout() != Layout::Rows {
        // SAFETY: AVX2/FMA/F16C detected, AVX-512 where `wide`; r0 is on a group of 8 (`run`
        // splits on groups); the rest is the caller's contract.
        super::quant_x86::rows_avx2_x8(w, r0, r1, act, t, out, wide_kernels(t));
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd && super::has_avx2() {
        use super::quant_x86::*;
        let wide = wide_kernels(t);
        // SAFETY: AVX2/FMA/F16C detected, AVX-512 where `wide`; the rest is the caller's
        // contract.
        match w.dtype() {
            DType::Q8_0 => rows_avx2::<Q8_0>(w, r0, r1, act, t, out, wide),
            DType::Q4_0 => rows_avx2::<Q4_0>(w, r0, r1, act, t, out, wide),
            DType::Q4_K => rows_avx2::<Q4_K>(w, r0, r1, act, t, out, wide),
            DType::Q5_K => rows_avx2::<Q5_K>(w, r0, r1, act, t, out, wide),
            DType::Q6_K => rows_avx2::<Q6_K>(w, r0, r1, act, t, out, wide),
            d => unreachable!("{d}"),
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if simd && w.layout() == Layout::Rows {
        // SAFETY: dotprod only where detected; the rest is the caller's contract.
        super::quant_neon::rows_neon(w, r0, r1, act, t, out, super::has_neon_dotprod());
        return;
    }
    let _ = simd;
    let k = w.cols();
    let n = w.rows();
    let dot = scalar_dot(w.dtype());
    let ab = act_block(w.dtype());
    for j in r0..r1 {
        let wr = &*w.row_blocks(j);
        for i in 0..t {
            let q = &act.q[i * k..(i + 1) * k];
            let d = &act.d[i * k / ab..(i + 1) * k / ab];
            let s = if ab == QK_K {
                &act.s[i * k / 16..(i + 1) * k / 16]
            } else {
                &[][..]
            };
            // SAFETY: (i, j) in bounds; column j is ours.
            out.write(i * n + j, dot(wr, q, d, s));
        }
    }
}

/// A weight row's portable dot product with a quantized activation row (values, block
/// scales, sums of 16), by weight format.
pub(super) type DotFn = fn(&[u8], &[i8], &[f32], &[i16]) -> f32;

/// The portable dot product for weight format `dtype`.
pub(super) fn scalar_dot(dtype: DType) -> DotFn {
    match dtype {
        DType::Q8_0 => dot_q8_0,
        DType::Q4_0 => dot_q4_0,
        DType::Q4_K => dot_q4_k,
        DType::Q5_K => dot_q5_k,
        DType::Q6_K => dot_q6_k,
        d => unreachable!("{d}"),
    }
}

/// Portable Q8_0 · Q8_0 dot product (`q`, `d`: the activation row's values and scales).
pub(crate) fn dot_q8_0(w: &[u8], q: &[i8], d: &[f32], _s: &[i16]) -> f32 {
    let mut acc = 0f32;
    for ((b, xq), &xd) in w.chunks_exact(34).zip(q.chunks_exact(QK)).zip(d) {
        let sumi: i32 = b[2..34]
            .iter()
            .zip(xq)
            .map(|(&a, &c)| (a as i8) as i32 * c as i32)
            .sum();
        acc += rd_f16(b, 0) * xd * sumi as f32;
    }
    acc
}

/// Portable Q4_0 · Q8_0 dot product.
pub(crate) fn dot_q4_0(w: &[u8], q: &[i8], d: &[f32], _s: &[i16]) -> f32 {
    let mut acc = 0f32;
    for ((b, xq), &xd) in w.chunks_exact(18).zip(q.chunks_exact(QK)).zip(d) {
        let mut sumi = 0i32;
        for l in 0..16 {
            let v = b[2 + l];
            sumi += ((v & 15) as i32 - 8) * xq[l] as i32;
            sumi += ((v >> 4) as i32 - 8) * xq[l + 16] as i32;
        }
        acc += rd_f16(b, 0) * xd * sumi as f32;
    }
    acc
}

/// Portable Q4_K / Q5_K · Q8_K dot product (`HIGH`: Q5_K's fifth bit).
fn dot_qk_scale_min<const HIGH: bool>(w: &[u8], q: &[i8], d: &[f32], s: &[i16]) -> f32 {
    let bb = if HIGH { 176 } else { 144 };
    let mut acc = 0f32;
    for (((b, xq), &xd), xs) in w
        .chunks_exact(bb)
        .zip(q.chunks_exact(QK_K))
        .zip(d)
        .zip(s.chunks_exact(16))
    {
        let (sc, m) = unpack_scales_mins(&b[4..16]);
        let (qh, qs) = if HIGH {
            (&b[16..48], &b[48..176])
        } else {
            (&b[0..0], &b[16..144])
        };
        let (mut sumi, mut summ) = (0i32, 0i32);
        for sb in 0..8 {
            let c = sb / 2;
            let shift = 4 * (sb % 2);
            let mut p = 0i32;
            for l in 0..32 {
                let mut v = (qs[32 * c + l] >> shift) & 15;
                if HIGH {
                    v |= ((qh[l] >> sb) & 1) << 4;
                }
                p += v as i32 * xq[32 * sb + l] as i32;
            }
            sumi += sc[sb] as i32 * p;
            summ += m[sb] as i32 * (xs[2 * sb] as i32 + xs[2 * sb + 1] as i32);
        }
        acc += rd_f16(b, 0) * xd * sumi as f32 - rd_f16(b, 2) * xd * summ as f32;
    }
    acc
}

/// Portable Q4_K · Q8_K dot product.
pub(crate) fn dot_q4_k(w: &[u8], q: &[i8], d: &[f32], s: &[i16]) -> f32 {
    dot_qk_scale_min::<false>(w, q, d, s)
}

/// Portable Q5_K · Q8_K dot product.
pub(crate) fn dot_q5_k(w: &[u8], q: &[i8], d: &[f32], s: &[i16]) -> f32 {
    dot_qk_scale_min::<true>(w, q, d, s)
}

/// Portable Q6_K · Q8_K dot product.
pub(crate) fn dot_q6_k(w: &[u8], q: &[i8], d: &[f32], s: &[i16]) -> f32 {
    let mut acc = 0f32;
    for (((b, xq), &xd), xs) in w
        .chunks_exact(210)
        .zip(q.chunks_exact(QK_K))
        .zip(d)
        .zip(s.chunks_exact(16))
    {
        let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
        let mut sumi = 0i32;
        for sb in 0..16 {
            let mut p = 0i32;
            for l in 0..16 {
                let e = 16 * sb + l;
                p += crate::quant::q6_at(ql, qh, e) as i32 * xq[e] as i32;
            }
            // q - 32: subtract 32 · (sum of the 16 activation values).
            sumi += (sc[sb] as i8) as i32 * (p - 32 * xs[sb] as i32);
        }
        acc += rd_f16(b, 208) * xd * sumi as f32;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 (x86-64) or NEON (aarch64) activation quantizer gives exactly the portable
    /// one's values, ties included.
    #[test]
    fn simd_activation_quantization_matches_scalar() {
        let mut x: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.013)
            .collect();
        // Exact ties (y = n + 0.5 after scaling by 127 / 127) and values just below them.
        for (i, v) in x[..256].iter_mut().enumerate() {
            *v = (i as f32 - 128.0) * 0.5;
            if i % 3 == 0 {
                *v = f32::from_bits(v.to_bits().saturating_sub(1));
            }
        }
        x[0] = 127.0;
        x[300..332].fill(0.0);
        for bs in [QK, QK_K] {
            let (mut a, mut b) = (QAct::default(), QAct::default());
            a.quantize(&x, 1024, bs, false);
            b.quantize(&x, 1024, bs, true);
            assert_eq!(a.q, b.q, "bs {bs}");
            assert_eq!(a.d, b.d, "bs {bs}");
            assert_eq!(a.s, b.s, "bs {bs}");
            assert_eq!(a.o, b.o, "bs {bs}");
        }
    }
}
