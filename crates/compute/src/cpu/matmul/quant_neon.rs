//! NEON integer dot products of block-format weight rows with int8 activation rows (aarch64).
//!
//! Weights are unpacked to signed bytes in registers (Q4_0 nibbles minus 8, Q6_K values
//! minus 32, Q4_K/Q5_K values 0..31 as they are) and multiplied with the activation bytes in
//! one of two ways, chosen at run time:
//! - with the dot-product extension (Armv8.4, optional from Armv8.2: Apple M1 and later,
//!   Cortex-A55/A76 and later), `SDOT` sums four byte products per i32 lane;
//! - otherwise `SMULL`/`SMLAL2` give i16 lanes of two products each (at most
//!   2 · 128 · 127 = 32512 in magnitude, as activations are clamped to ±127), and `SADALP`
//!   adds pairs of them into i32 lanes.
//!
//! Both give the exact integer dot product of every block (sub-block scales of the K-quants
//! are multiplied in at i32, which cannot overflow: |Σ| <= 128 · 63 · 127 · 256 < 2^31), and
//! the f32 part is then done in the portable kernels' order: per block,
//! `acc += (d_w · d_x) · (sumi as f32)` (the K-quants also subtract the min term), with one
//! scalar accumulator per (weight row, activation row). So a result does not depend on the
//! tile shape, on how many activation rows are computed together, on whether `SDOT` is used,
//! and equals the portable kernel's bit for bit: batched decode, single decode and the
//! gathered rows of the sparse FFN agree exactly.
//!
//! The kernels work on tiles of `R` weight rows x `T` activation rows like the AVX2 ones:
//! every weight block is loaded and unpacked once and multiplied with the `T` activation rows
//! while it is in registers; the `R` rows give independent dependency chains. No software
//! prefetch: the cores' stream prefetchers follow the few sequential row streams.

use std::arch::aarch64::*;
use std::arch::asm;

use super::quant::{Ctx, QAct};
use super::OutPtr;
use crate::dtype::{f16_to_f32, DType};
use crate::matrix::Matrix;
use crate::quant::{QK, QK_K};

/// Weight format codes (const generic parameters).
const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_K: u8 = 2;
const Q5_K: u8 = 3;
const Q6_K: u8 = 4;

/// `acc + Σ` of the four byte products `w·x` in each i32 lane, by `SDOT`.
///
/// Inline assembly because the `vdotq_s32` intrinsic is not stable yet; the function carries
/// the `dotprod` feature so that the assembler accepts the instruction, and is inlined into
/// the `dotprod` kernels only.
///
/// # Safety
/// The CPU must have the dot-product extension.
#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction, available per the caller's contract.
    asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        x = in(vreg) x,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `acc` plus the products `w·x` of 16 signed bytes, spread over the four i32 lanes (the
/// lane split differs between the two ways; the total is exact either way). `DP`: by
/// `SDOT`, else by widening multiplies (|w·x| <= 128 · 127 so i16 pairs cannot overflow).
///
/// # Safety
/// `DP` only where the CPU has the dot-product extension.
#[inline(always)]
unsafe fn dot16<const DP: bool>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    if DP {
        sdot(acc, w, x)
    } else {
        let p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
        vpadalq_s16(acc, vmlal_high_s8(p, w, x))
    }
}

/// The products of 32 weight bytes `w` with 32 activation bytes `x`, in four i32 lanes.
#[inline(always)]
unsafe fn dot32<const DP: bool>(w: [int8x16_t; 2], x: [int8x16_t; 2]) -> int32x4_t {
    dot16::<DP>(dot16::<DP>(vdupq_n_s32(0), w[0], x[0]), w[1], x[1])
}

/// Four f16 values (the `u16` lanes of `h`) converted to f32 (exact).
#[inline(always)]
unsafe fn f16x4(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: `FCVTL` is baseline Armv8 AdvSIMD; register-only. (The `vcvt_f32_f16`
    // intrinsic needs the unstable f16 vector types.)
    asm!(
        "fcvtl {o:v}.4s, {h:v}.4h",
        o = lateout(vreg) out,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    out
}

/// The 32 bytes at `p`.
#[inline(always)]
unsafe fn load32(p: *const i8) -> [int8x16_t; 2] {
    [vld1q_s8(p), vld1q_s8(p.add(16))]
}

/// Pointers to one quantized activation row.
#[derive(Clone, Copy)]
struct Act {
    /// Values.
    q: *const i8,
    /// One scale per block.
    d: *const f32,
    /// Sums of 16 values (Q8_K rows only; null otherwise).
    s: *const i16,
}

impl Act {
    /// Row `i` of `act`, quantized in blocks of `bs` from rows of `k` values.
    #[inline(always)]
    unsafe fn new(act: &QAct, i: usize, k: usize, bs: usize) -> Self {
        Act {
            q: act.q.as_ptr().add(i * k),
            d: act.d.as_ptr().add(i * (k / bs)),
            s: if bs == QK_K {
                act.s.as_ptr().add(i * k / 16)
            } else {
                std::ptr::null()
            },
        }
    }
}

/// Block size of the activations for weight format `D`.
const fn act_bs(d: u8) -> usize {
    if d == Q8_0 || d == Q4_0 {
        QK
    } else {
        QK_K
    }
}

/// The 32 weights of a Q8_0 or Q4_0 block (`D`) at `wb` as signed bytes, elements 0..16 and
/// 16..32 (Q4_0: low nibbles then high nibbles, minus 8).
#[inline(always)]
unsafe fn block_q8_values<const D: u8>(wb: *const u8) -> [int8x16_t; 2] {
    if D == Q8_0 {
        load32(wb.add(2) as *const i8)
    } else {
        let q = vld1q_u8(wb.add(2));
        let eight = vdupq_n_s8(8);
        let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15)));
        let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
        [vsubq_s8(lo, eight), vsubq_s8(hi, eight)]
    }
}

/// Q8_0 or Q4_0 weights (`D`): `R` rows x `T` activation rows of `nb` blocks.
///
/// Blocks go four at a time: their four integer dot products are reduced into one vector by
/// pairwise adds, converted and scaled together (lane `l` gets `(d_w · d_x) · sumi` of block
/// `l`), and the lanes are then added to the accumulator one after the other, which is the
/// portable kernel's order. The remaining blocks go one at a time.
#[inline(always)]
unsafe fn tile_q8<const D: u8, const R: usize, const T: usize, const DP: bool>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
) -> [[f32; T]; R] {
    let bb = if D == Q8_0 { 34 } else { 18 };
    let zero = vdupq_n_s32(0);
    let mut acc = [[0f32; T]; R];
    let mut b = 0;
    while b + 4 <= nb {
        // Combined scales d_w · d_x of the four blocks.
        let mut sc = [[vdupq_n_f32(0.0); T]; R];
        unroll!(R, |r| {
            let f = |l: usize| (w[r].add(bb * (b + l)) as *const u16).read_unaligned() as u64;
            let dw = f16x4(vcreate_u16(f(0) | f(1) << 16 | f(2) << 32 | f(3) << 48));
            unroll!(T, |i| {
                sc[r][i] = vmulq_f32(dw, vld1q_f32(a[i].d.add(b)));
            });
        });
        // Pairwise adds: [s0, s1] -> [s0₀₁, s0₂₃, s1₀₁, s1₂₃]; twice -> [Σs0, Σs1, Σs2, Σs3].
        let mut half = [[[zero; T]; R]; 2];
        unroll!(2, |h| {
            let mut pair = [[[zero; T]; R]; 2];
            unroll!(2, |m| {
                let blk = b + 2 * h + m;
                let mut xs = [[vdupq_n_s8(0); 2]; T];
                unroll!(T, |i| {
                    xs[i] = load32(a[i].q.add(QK * blk));
                });
                unroll!(R, |r| {
                    let wv = block_q8_values::<D>(w[r].add(bb * blk));
                    unroll!(T, |i| {
                        pair[m][r][i] = dot32::<DP>(wv, xs[i]);
                    });
                });
            });
            unroll!(R, |r| {
                unroll!(T, |i| {
                    half[h][r][i] = vpaddq_s32(pair[0][r][i], pair[1][r][i]);
                });
            });
        });
        unroll!(R, |r| {
            unroll!(T, |i| {
                let sums = vpaddq_s32(half[0][r][i], half[1][r][i]);
                let p = vmulq_f32(sc[r][i], vcvtq_f32_s32(sums));
                let mut s = acc[r][i];
                s += vgetq_lane_f32::<0>(p);
                s += vgetq_lane_f32::<1>(p);
                s += vgetq_lane_f32::<2>(p);
                s += vgetq_lane_f32::<3>(p);
                acc[r][i] = s;
            });
        });
        b += 4;
    }
    while b < nb {
        let mut xs = [[vdupq_n_s8(0); 2]; T];
        unroll!(T, |i| {
            xs[i] = load32(a[i].q.add(QK * b));
        });
        unroll!(R, |r| {
            let wb = w[r].add(bb * b);
            let dw = f16_to_f32((wb as *const u16).read_unaligned());
            let wv = block_q8_values::<D>(wb);
            unroll!(T, |i| {
                let sumi = vaddvq_s32(dot32::<DP>(wv, xs[i]));
                acc[r][i] += dw * *a[i].d.add(b) * sumi as f32;
            });
        });
        b += 1;
    }
    acc
}

/// The f16 pair at `p` (a K-quant super-block's `d` and `dmin`) as f32.
#[inline(always)]
unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
    let v = f16x4(vcreate_u16((p as *const u32).read_unaligned() as u64));
    (vgetq_lane_f32::<0>(v), vgetq_lane_f32::<1>(v))
}

/// Bit `k` of every byte of `qh` moved to bit 4, other bits cleared (Q5_K's fifth bit).
#[inline(always)]
unsafe fn bit_to_4(qh: uint8x16_t, k: usize) -> uint8x16_t {
    // USHL by a negative count shifts right.
    let sh = vshlq_u8(qh, vdupq_n_s8(4 - k as i8));
    vandq_u8(sh, vdupq_n_u8(0x10))
}

/// Q4_K or Q5_K weights (`D`): `R` rows x `T` activation rows of `nb` super-blocks.
///
/// Per super-block and pair of rows: `sumi = Σ_s sc[s] · (q·x over sub-block s)` and
/// `summ = Σ_s m[s] · (Σx over sub-block s)` in i32, then
/// `acc += d·d_x·sumi - dmin·d_x·summ` as the portable kernel does.
#[inline(always)]
unsafe fn tile_qk_scale_min<const D: u8, const R: usize, const T: usize, const DP: bool>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
) -> [[f32; T]; R] {
    let bb = if D == Q5_K { 176 } else { 144 };
    let m4 = vdupq_n_u8(15);
    let mut acc = [[0f32; T]; R];
    for b in 0..nb {
        // Activation sums of the eight sub-blocks of 32 (from the sums of 16; |Σ| <= 4064).
        let mut xsum = [vdupq_n_s16(0); T];
        let mut dx = [0f32; T];
        unroll!(T, |i| {
            let s = a[i].s.add(16 * b);
            xsum[i] = vpaddq_s16(vld1q_s16(s), vld1q_s16(s.add(8)));
            dx[i] = *a[i].d.add(b);
        });
        unroll!(R, |r| {
            let wb = w[r].add(bb * b);
            let (d, dmin) = f16_pair(wb);
            // 6-bit scales and mins, unpacked four at a time in u32 words: bytes of `sc` and
            // `mn` are those of sub-blocks 0..8.
            let sp = wb.add(4) as *const u32;
            let (w0, w1, w2) = (
                sp.read_unaligned(),
                sp.add(1).read_unaligned(),
                sp.add(2).read_unaligned(),
            );
            let sc = (w0 & 0x3f3f_3f3f) as u64
                | ((((w2 & 0x0f0f_0f0f) | ((w0 >> 2) & 0x3030_3030)) as u64) << 32);
            let mn = (w1 & 0x3f3f_3f3f) as u64
                | (((((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 2) & 0x3030_3030)) as u64) << 32);
            let mins = vreinterpretq_s16_u16(vmovl_u8(vcreate_u8(mn)));
            let scale = |s: usize| ((sc >> (8 * s)) & 0xff) as i32;
            let qs = wb.add(if D == Q5_K { 48 } else { 16 });
            let qh = if D == Q5_K {
                [vld1q_u8(wb.add(16)), vld1q_u8(wb.add(32))]
            } else {
                [vdupq_n_u8(0); 2]
            };
            let mut sumi = [vdupq_n_s32(0); T];
            unroll!(4, |c| {
                // Bytes 32c..32c+32: low nibbles are sub-block 2c, high nibbles 2c + 1.
                let q = [vld1q_u8(qs.add(32 * c)), vld1q_u8(qs.add(32 * c + 16))];
                let mut lo = [vandq_u8(q[0], m4), vandq_u8(q[1], m4)];
                let mut hi = [vshrq_n_u8::<4>(q[0]), vshrq_n_u8::<4>(q[1])];
                if D == Q5_K {
                    for h in 0..2 {
                        lo[h] = vorrq_u8(lo[h], bit_to_4(qh[h], 2 * c));
                        hi[h] = vorrq_u8(hi[h], bit_to_4(qh[h], 2 * c + 1));
                    }
                }
                let lo = [vreinterpretq_s8_u8(lo[0]), vreinterpretq_s8_u8(lo[1])];
                let hi = [vreinterpretq_s8_u8(hi[0]), vreinterpretq_s8_u8(hi[1])];
                let (s0, s1) = (scale(2 * c), scale(2 * c + 1));
                unroll!(T, |i| {
                    let x = a[i].q.add(QK_K * b + 64 * c);
                    let p0 = dot32::<DP>(lo, load32(x));
                    let p1 = dot32::<DP>(hi, load32(x.add(32)));
                    sumi[i] = vmlaq_n_s32(vmlaq_n_s32(sumi[i], p0, s0), p1, s1);
                });
            });
            unroll!(T, |i| {
                let m = vmull_s16(vget_low_s16(xsum[i]), vget_low_s16(mins));
                let summ = vaddvq_s32(vmlal_high_s16(m, xsum[i], mins));
                let sumi = vaddvq_s32(sumi[i]);
                acc[r][i] += d * dx[i] * sumi as f32 - dmin * dx[i] * summ as f32;
            });
        });
    }
    acc
}

/// Q6_K weights: `R` rows x `T` activation rows of `nb` super-blocks.
///
/// Values are unpacked to `q - 32` (signed) so that the offset needs no activation sums;
/// `sumi = Σ_s sc[s] · ((q - 32)·x over sub-block s of 16)` in i32, then
/// `acc += d·d_x·sumi`.
#[inline(always)]
unsafe fn tile_q6_k<const R: usize, const T: usize, const DP: bool>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
) -> [[f32; T]; R] {
    let m4 = vdupq_n_u8(15);
    let m30 = vdupq_n_u8(0x30);
    let m32 = vdupq_n_s8(32);
    let zero = vdupq_n_s32(0);
    let mut acc = [[0f32; T]; R];
    for b in 0..nb {
        let mut dx = [0f32; T];
        unroll!(T, |i| {
            dx[i] = *a[i].d.add(b);
        });
        unroll!(R, |r| {
            let wb = w[r].add(210 * b);
            let d = f16_to_f32((wb.add(208) as *const u16).read_unaligned());
            let sc = wb.add(192) as *const i8;
            let mut sumi = [zero; T];
            unroll!(2, |half| {
                // Elements 128·half + 32·quarter + l (l < 32): the low 4 bits are in byte
                // 64·half + 32·(quarter % 2) + l of `ql` (low nibble for quarters 0 and 1),
                // the high 2 bits are bits 2·quarter of byte 32·half + l of `qh`.
                let ql = wb.add(64 * half);
                let qh = wb.add(128 + 32 * half);
                unroll!(2, |h16| {
                    let q4a = vld1q_u8(ql.add(16 * h16));
                    let q4b = vld1q_u8(ql.add(32 + 16 * h16));
                    let qhv = vld1q_u8(qh.add(16 * h16));
                    let v = [
                        vorrq_u8(vandq_u8(q4a, m4), vandq_u8(vshlq_n_u8::<4>(qhv), m30)),
                        vorrq_u8(vandq_u8(q4b, m4), vandq_u8(vshlq_n_u8::<2>(qhv), m30)),
                        vorrq_u8(vshrq_n_u8::<4>(q4a), vandq_u8(qhv, m30)),
                        vorrq_u8(vshrq_n_u8::<4>(q4b), vandq_u8(vshrq_n_u8::<2>(qhv), m30)),
                    ];
                    unroll!(4, |quarter| {
                        let vq = vsubq_s8(vreinterpretq_s8_u8(v[quarter]), m32);
                        // Sub-block of 16 elements 128·half + 32·quarter + 16·h16 ...
                        let s = 8 * half + 2 * quarter + h16;
                        let scale = *sc.add(s) as i32;
                        unroll!(T, |i| {
                            let x = vld1q_s8(a[i].q.add(QK_K * b + 16 * s));
                            let p = dot16::<DP>(zero, vq, x);
                            sumi[i] = vmlaq_n_s32(sumi[i], p, scale);
                        });
                    });
                });
            });
            unroll!(T, |i| {
                acc[r][i] += d * dx[i] * vaddvq_s32(sumi[i]) as f32;
            });
        });
    }
    acc
}

/// The dot products of the `R` weight rows at `w` with the `T` activation rows `a`.
#[inline(always)]
unsafe fn tile_res<const D: u8, const R: usize, const T: usize, const DP: bool>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
) -> [[f32; T]; R] {
    match D {
        Q8_0 | Q4_0 => tile_q8::<D, R, T, DP>(w, nb, a),
        Q6_K => tile_q6_k::<R, T, DP>(w, nb, a),
        _ => tile_qk_scale_min::<D, R, T, DP>(w, nb, a),
    }
}

/// Output columns `j..j + R` for activation rows `i0..i0 + T` (`a`).
///
/// # Safety
/// As [`rows_neon`], with `j + R <= r1` and `i0 + T <= t`.
#[inline(always)]
unsafe fn tile<const D: u8, const R: usize, const T: usize, const DP: bool>(
    cx: Ctx,
    j: usize,
    a: [Act; T],
    i0: usize,
) {
    let wp: [*const u8; R] = std::array::from_fn(|r| cx.base.add((j + r) * cx.stride));
    let res = tile_res::<D, R, T, DP>(wp, cx.nb, a);
    for (r, row) in res.iter().enumerate() {
        for (i, &v) in row.iter().enumerate() {
            cx.out.write((i0 + i) * cx.n + j + r, v);
        }
    }
}

/// Output columns `r0..r1` for activation rows `i0..i0 + T`, `R` weight rows at a time
/// (the remaining rows one at a time).
///
/// # Safety
/// As [`rows_neon`].
#[inline(always)]
unsafe fn rows_rt<const D: u8, const R: usize, const T: usize, const DP: bool>(
    cx: Ctx,
    r0: usize,
    r1: usize,
    act: &QAct,
    i0: usize,
    k: usize,
) {
    let a: [Act; T] = std::array::from_fn(|i| Act::new(act, i0 + i, k, act_bs(D)));
    let mut j = r0;
    while j + R <= r1 {
        tile::<D, R, T, DP>(cx, j, a, i0);
        j += R;
    }
    while j < r1 {
        tile::<D, 1, T, DP>(cx, j, a, i0);
        j += 1;
    }
}

/// Output columns `r0..r1` for all `t` activation rows (the tile shapes by `t`; every shape
/// gives the same values).
///
/// # Safety
/// As [`rows_neon`].
#[inline(always)]
unsafe fn rows_impl<const D: u8, const DP: bool>(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
) {
    let k = w.cols();
    let bs = act_bs(D);
    let cx = Ctx {
        base: w.base_ptr(),
        stride: w.row_stride_bytes(),
        nb: k / bs,
        n: w.rows(),
        out,
    };
    // One or two activation rows: several weight rows per tile for independent streams and
    // dependency chains (Q8_0/Q4_0 blocks are small: four rows).
    match t {
        1 if bs == QK => return rows_rt::<D, 4, 1, DP>(cx, r0, r1, act, 0, k),
        1 => return rows_rt::<D, 2, 1, DP>(cx, r0, r1, act, 0, k),
        2 => return rows_rt::<D, 2, 2, DP>(cx, r0, r1, act, 0, k),
        _ => {}
    }
    // More: each weight row (hot in L1 after the first group) against all of them, four at a
    // time.
    for j in r0..r1 {
        let mut i0 = 0;
        while i0 < t {
            let a = |i: usize| Act::new(act, i0 + i, k, bs);
            match t - i0 {
                1 => tile::<D, 1, 1, DP>(cx, j, [a(0)], i0),
                2 => tile::<D, 1, 2, DP>(cx, j, [a(0), a(1)], i0),
                3 => tile::<D, 1, 3, DP>(cx, j, [a(0), a(1), a(2)], i0),
                _ => tile::<D, 1, 4, DP>(cx, j, [a(0), a(1), a(2), a(3)], i0),
            }
            i0 += 4;
        }
    }
}

/// [`rows_impl`] with `SDOT`.
///
/// # Safety
/// The CPU has the dot-product extension; the rest as [`rows_neon`].
#[target_feature(enable = "dotprod")]
unsafe fn rows_dotprod<const D: u8>(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
) {
    rows_impl::<D, true>(w, r0, r1, act, t, out)
}

/// [`rows_impl`] with baseline NEON.
///
/// # Safety
/// As [`rows_neon`].
unsafe fn rows_base<const D: u8>(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
) {
    rows_impl::<D, false>(w, r0, r1, act, t, out)
}

/// Output columns `r0..r1` for all `t` activation rows of a block-format `w`: the values of
/// the portable kernels, bit for bit. `dotprod`: use `SDOT` (only where the CPU has it;
/// `false` forces the baseline kernels, which give the same values).
///
/// # Safety
/// `dotprod` only if the CPU has the dot-product extension; `w` is Q8_0, Q4_0, Q4_K, Q5_K or
/// Q6_K; `act` holds `t` rows of `w.cols()` quantized for that format; `out` valid for
/// `t * w.rows()` floats with columns `r0..r1 <= w.rows()` owned by the caller.
pub(crate) unsafe fn rows_neon(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
    dotprod: bool,
) {
    macro_rules! go {
        ($d:expr) => {
            if dotprod {
                rows_dotprod::<{ $d }>(w, r0, r1, act, t, out)
            } else {
                rows_base::<{ $d }>(w, r0, r1, act, t, out)
            }
        };
    }
    match w.dtype() {
        DType::Q8_0 => go!(Q8_0),
        DType::Q4_0 => go!(Q4_0),
        DType::Q4_K => go!(Q4_K),
        DType::Q5_K => go!(Q5_K),
        DType::Q6_K => go!(Q6_K),
        d => unreachable!("{d}"),
    }
}

/// `out[j] = w[rows[j]] · x` for activation row 0 of `act`: the selected rows two at a time.
///
/// # Safety
/// As [`gather_neon`].
#[inline(always)]
unsafe fn gather_impl<const D: u8, const DP: bool>(
    w: &Matrix,
    rows: &[usize],
    act: &QAct,
    out: &mut [f32],
) {
    let k = w.cols();
    let nb = k / act_bs(D);
    let a = [Act::new(act, 0, k, act_bs(D))];
    let mut pairs = rows.chunks_exact(2);
    let mut j = 0;
    for p in &mut pairs {
        let res = tile_res::<D, 2, 1, DP>([w.row_ptr(p[0]), w.row_ptr(p[1])], nb, a);
        out[j] = res[0][0];
        out[j + 1] = res[1][0];
        j += 2;
    }
    if let [r] = pairs.remainder() {
        out[j] = tile_res::<D, 1, 1, DP>([w.row_ptr(*r)], nb, a)[0][0];
    }
}

/// [`gather_impl`] with `SDOT`.
///
/// # Safety
/// The CPU has the dot-product extension; the rest as [`gather_neon`].
#[target_feature(enable = "dotprod")]
unsafe fn gather_dotprod<const D: u8>(w: &Matrix, rows: &[usize], act: &QAct, out: &mut [f32]) {
    gather_impl::<D, true>(w, rows, act, out)
}

/// [`gather_impl`] with baseline NEON.
///
/// # Safety
/// As [`gather_neon`].
unsafe fn gather_base<const D: u8>(w: &Matrix, rows: &[usize], act: &QAct, out: &mut [f32]) {
    gather_impl::<D, false>(w, rows, act, out)
}

/// `out[j] = w[rows[j]] · x` for one activation row (`act` row 0) of a block-format `w`:
/// the values [`rows_neon`] gives those rows (and the portable kernels), bit for bit.
///
/// # Safety
/// `dotprod` only if the CPU has the dot-product extension; `w` is Q8_0, Q4_0, Q4_K, Q5_K or
/// Q6_K; every `rows[j] < w.rows()`; `out.len() == rows.len()`; `act` holds one row of
/// `w.cols()` quantized for that format.
pub(crate) unsafe fn gather_neon(
    w: &Matrix,
    rows: &[usize],
    act: &QAct,
    out: &mut [f32],
    dotprod: bool,
) {
    macro_rules! go {
        ($d:expr) => {
            if dotprod {
                gather_dotprod::<{ $d }>(w, rows, act, out)
            } else {
                gather_base::<{ $d }>(w, rows, act, out)
            }
        };
    }
    match w.dtype() {
        DType::Q8_0 => go!(Q8_0),
        DType::Q4_0 => go!(Q4_0),
        DType::Q4_K => go!(Q4_K),
        DType::Q5_K => go!(Q5_K),
        DType::Q6_K => go!(Q6_K),
        d => unreachable!("{d}"),
    }
}

/// One block of activations to int8, exactly as the portable `quantize_act_block`: the scale
/// `amax / 127` (`vmaxnm` skips NaN as `f32::max` does), each value times `127 / amax`
/// rounded to nearest with ties away from zero (`FCVTAS`, as `f32::round`; NaN to 0 and the
/// saturated out-of-range values to ±127, as the portable clamp and cast), the sums of 16 and
/// the offset `-8 · Σq`.
///
/// # Safety
/// NEON only (part of every aarch64 CPU). `x.len()` a multiple of 32, `q.len() == x.len()`,
/// `s` empty or of `x.len() / 16` sums.
pub(crate) unsafe fn quantize_act_block_neon(
    x: &[f32],
    q: &mut [i8],
    d: &mut f32,
    s: &mut [i16],
    o: &mut i32,
) {
    let n = x.len();
    assert!(n.is_multiple_of(32) && q.len() == n && (s.is_empty() || s.len() == n / 16));
    let xp = x.as_ptr();
    let mut m = vdupq_n_f32(0.0);
    for c in (0..n).step_by(4) {
        m = vmaxnmq_f32(m, vabsq_f32(vld1q_f32(xp.add(c))));
    }
    let amax = vmaxnmvq_f32(m);
    *d = amax / 127.0;
    let id = vdupq_n_f32(if amax == 0.0 { 0.0 } else { 127.0 / amax });
    let (lo, hi) = (vdupq_n_s32(-127), vdupq_n_s32(127));
    let quant = |p: *const f32| {
        let r = vcvtaq_s32_f32(vmulq_f32(vld1q_f32(p), id));
        vmaxq_s32(vminq_s32(r, hi), lo)
    };
    let mut total = 0i32;
    for c in (0..n).step_by(16) {
        let (a, b) = (quant(xp.add(c)), quant(xp.add(c + 4)));
        let (e, f) = (quant(xp.add(c + 8)), quant(xp.add(c + 12)));
        let ab = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
        let ef = vcombine_s16(vqmovn_s32(e), vqmovn_s32(f));
        vst1q_s8(
            q.as_mut_ptr().add(c),
            vcombine_s8(vqmovn_s16(ab), vqmovn_s16(ef)),
        );
        let sum = vaddvq_s32(vaddq_s32(vaddq_s32(a, b), vaddq_s32(e, f)));
        if !s.is_empty() {
            s[c / 16] = sum as i16;
        }
        total += sum;
    }
    *o = -8 * total;
}
