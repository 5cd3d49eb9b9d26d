//! AVX2 integer dot products of block-format weight rows with int8 activation rows.
//!
//! Products of an unsigned and a signed byte are summed in pairs to i16 by
//! `_mm256_maddubs_epi16` (no saturation is possible: |q_w| <= 63 and |q_x| <= 127, or
//! q_w <= 15 for Q4_0), then in pairs to i32 by `_mm256_madd_epi16`, where the sub-block
//! scales multiply in. Signed Q8_0 weights use the sign trick (`|w|` times `x · sign(w)`);
//! Q4_0 weights are multiplied unsigned (0..15) and the `-8` offset is added back with the
//! activation block's precomputed `-8 · Σq` ([`QAct::o`]). One f32 multiply-add per block (per
//! 256-element super-block for the K-quants) combines the weight and activation scales.
//!
//! The kernels work on tiles of `R` weight rows x `T` activation rows: every weight block is
//! loaded and unpacked once and multiplied with the `T` activation rows while it is in
//! registers; the `R` rows give independent dependency chains and memory streams.

use std::arch::x86_64::*;

use super::quant::{Ctx, QAct};
use super::OutPtr;
use crate::cpu::ops::x86::hsum;
use crate::matrix::{Layout, Matrix, Q4KX8_GROUP_BLOCK, Q8X8_GROUP_BLOCK, Q8X8_SLOT};
use crate::quant::{QK, QK_K};

/// Weight format codes (const generic parameters).
pub(crate) const Q8_0: u8 = 0;
pub(crate) const Q4_0: u8 = 1;
pub(crate) const Q4_K: u8 = 2;
pub(crate) const Q5_K: u8 = 3;
pub(crate) const Q6_K: u8 = 4;

/// The f16 at `p` converted to f32 in all 8 lanes.
#[inline(always)]
unsafe fn f16x8(p: *const u8) -> __m256 {
    let bits = (p as *const u16).read_unaligned();
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Pointers to one quantized activation row.
#[derive(Clone, Copy)]
struct Act {
    q: *const u8,
    d: *const f32,
    s: *const i16,
    o: *const i32,
}

impl Act {
    #[inline(always)]
    unsafe fn new(act: &QAct, i: usize, k: usize, bs: usize) -> Self {
        let nb = k / bs;
        Act {
            q: act.q.as_ptr().add(i * k) as *const u8,
            d: act.d.as_ptr().add(i * nb),
            s: if bs == QK_K {
                act.s.as_ptr().add(i * k / 16)
            } else {
                std::ptr::null()
            },
            o: if bs == QK {
                act.o.as_ptr().add(i * nb)
            } else {
                std::ptr::null()
            },
        }
    }
}

/// Bounds of the prefetch distance (weight bytes ahead of the current block). The upper one
/// lets a four-row Q8_0 tile of 2048-value rows (8704 bytes) prefetch exactly the next tile;
/// at 8192 it fell 512 bytes short of it.
const PF_MIN: usize = 768;
const PF_MAX: usize = 32768;

/// One Q8_0 / Q4_0 block `b` of `R` weight rows times `T` activation rows, accumulated into
/// `acc`. The combined scale of weight row `r` and activation row `i` (weight scale times
/// activation scale) is `sc[(r * T + i) * 8 + l]`: broadcast straight from memory, a load
/// rather than two shuffles on the vector pipes that the integer products need.
#[inline(always)]
unsafe fn block_q8<const D: u8, const R: usize, const T: usize>(
    w: &[*const u8; R],
    b: usize,
    a: &[Act; T],
    sc: *const f32,
    l: usize,
    acc: &mut [[__m256; T]; R],
    pf: usize,
) {
    let bb = if D == Q8_0 { 34 } else { 18 };
    let ones = _mm256_set1_epi16(1);
    let mut xs = [_mm256_setzero_si256(); T];
    unroll!(T, |i| {
        xs[i] = load(a[i].q.add(QK * b));
    });
    unroll!(R, |r| {
        let wb = w[r].add(bb * b);
        if b.is_multiple_of(2) || D == Q8_0 {
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(pf) as *const i8);
        }
        if D == Q8_0 {
            let wq = load(wb.add(2));
            let aw = _mm256_sign_epi8(wq, wq);
            unroll!(T, |i| {
                let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xs[i], wq));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                let s = _mm256_broadcast_ss(&*sc.add((r * T + i) * 8 + l));
                acc[r][i] = _mm256_fmadd_ps(s, p, acc[r][i]);
            });
        } else {
            // Low nibbles (elements 0..16) in the low lane, high nibbles in the high one.
            let qs = _mm256_broadcastsi128_si256(_mm_loadu_si128(wb.add(2) as *const __m128i));
            let wq = _mm256_and_si256(
                _mm256_srlv_epi64(qs, _mm256_setr_epi64x(0, 0, 4, 4)),
                _mm256_set1_epi8(15),
            );
            unroll!(T, |i| {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq, xs[i]), ones);
                // -8 · Σx of the block, in lane 0.
                let off = _mm256_zextsi128_si256(_mm_cvtsi32_si128(*a[i].o.add(b)));
                let p = _mm256_cvtepi32_ps(_mm256_add_epi32(p, off));
                let s = _mm256_broadcast_ss(&*sc.add((r * T + i) * 8 + l));
                acc[r][i] = _mm256_fmadd_ps(s, p, acc[r][i]);
            });
        }
    });
}

/// Q8_0 or Q4_0 weights (`D`): `R` rows x `T` activation rows of `nb` blocks.
///
/// The weight scales of 8 blocks are converted together (one f16 conversion and one
/// multiply by the 8 activation scales) and stored; each block then broadcasts its own.
#[inline(always)]
unsafe fn tile_q8<const D: u8, const R: usize, const T: usize>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
    pf: usize,
) -> [[f32; T]; R] {
    let bb = if D == Q8_0 { 34 } else { 18 };
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    // Combined scales of 8 blocks, [r][i][block]. Shown to `black_box` after each write so
    // that the compiler reads them back from memory instead of turning the broadcasts into
    // shuffles of the stored vectors.
    let mut scales = [[[0f32; 8]; T]; R];
    let sc = scales.as_mut_ptr() as *mut f32;
    for g in 0..nb / 8 {
        unroll!(R, |r| {
            let f = |l: usize| (w[r].add(bb * (8 * g + l)) as *const u16).read_unaligned() as u64;
            let lo = f(0) | f(1) << 16 | f(2) << 32 | f(3) << 48;
            let hi = f(4) | f(5) << 16 | f(6) << 32 | f(7) << 48;
            let dw = _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64));
            unroll!(T, |i| {
                let s8 = _mm256_mul_ps(dw, _mm256_loadu_ps(a[i].d.add(8 * g)));
                _mm256_storeu_ps(sc.add((r * T + i) * 8), s8);
            });
        });
        std::hint::black_box(sc);
        unroll!(2, |h| {
            unroll!(4, |m| {
                let l = 4 * h + m;
                block_q8::<D, R, T>(&w, 8 * g + l, &a, sc, l, &mut acc, pf);
            });
        });
    }
    for b in nb / 8 * 8..nb {
        unroll!(R, |r| {
            let dw = f16x8(w[r].add(bb * b));
            unroll!(T, |i| {
                let s = _mm256_mul_ps(dw, _mm256_broadcast_ss(&*a[i].d.add(b)));
                _mm256_storeu_ps(sc.add((r * T + i) * 8), s);
            });
        });
        std::hint::black_box(sc);
        block_q8::<D, R, T>(&w, b, &a, sc, 0, &mut acc, pf);
    }
    let mut res = [[0f32; T]; R];
    unroll!(R, |r| {
        unroll!(T, |i| {
            res[r][i] = hsum(acc[r][i]);
        });
    });
    res
}

/// Shuffle that broadcasts i16 element `j` (0..8) of each 128-bit lane to the whole lane.
#[inline(always)]
unsafe fn bcast16(j: usize) -> __m256i {
    let lo = (2 * j) as i8;
    let hi = lo + 1;
    _mm256_setr_epi8(
        lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo, hi, lo,
        hi, lo, hi, lo, hi, lo, hi, lo, hi,
    )
}

/// Shuffle that broadcasts i16 element `j` to the low lane and `j + 1` to the high lane.
#[inline(always)]
unsafe fn bcast16_pair(j: usize) -> __m256i {
    let (a, b) = ((2 * j) as i8, (2 * j + 1) as i8);
    let (c, d) = (a + 2, b + 2);
    _mm256_setr_epi8(
        a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, c, d, c, d, c, d, c, d, c, d, c, d, c, d,
        c, d,
    )
}

/// Bit `K` of every byte of `qh` moved to bit 4 (other bits cleared).
#[inline(always)]
unsafe fn bit_to_4(qh: __m256i, k: usize) -> __m256i {
    let m = _mm256_and_si256(qh, _mm256_set1_epi8((1u8 << k) as i8));
    match k {
        0 => _mm256_slli_epi16::<4>(m),
        1 => _mm256_slli_epi16::<3>(m),
        2 => _mm256_slli_epi16::<2>(m),
        3 => _mm256_slli_epi16::<1>(m),
        4 => m,
        5 => _mm256_srli_epi16::<1>(m),
        6 => _mm256_srli_epi16::<2>(m),
        _ => _mm256_srli_epi16::<3>(m),
    }
}

/// Q4_K or Q5_K weights (`D`): `R` rows x `T` activation rows of `nb` super-blocks.
#[inline(always)]
unsafe fn tile_qk_scale_min<const D: u8, const R: usize, const T: usize>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
    pf: usize,
) -> [[f32; T]; R] {
    let bb = if D == Q5_K { 176 } else { 144 };
    let m4 = _mm256_set1_epi8(15);
    // Duplicates each of 8 bytes: [0, 0, 1, 1, ..., 7, 7].
    let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut dx = [_mm256_setzero_ps(); T];
        unroll!(T, |i| {
            dx[i] = _mm256_broadcast_ss(&*a[i].d.add(b));
        });
        unroll!(R, |r| {
            let wb = w[r].add(bb * b);
            for l in 0..bb.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(pf + 64 * l) as *const i8);
            }
            let d = f16x8(wb);
            let dmin = f16x8(wb.add(2));
            // 6-bit scales and mins, unpacked four at a time in u32 words.
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
            let mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(mn as i64), dup));
            let sc16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
            let scv = _mm256_broadcastsi128_si256(sc16);
            // Mins against the sums of 16 activations: Σ m[s] · (sums of sub-block s).
            unroll!(T, |i| {
                let sums = _mm256_loadu_si256(a[i].s.add(16 * b) as *const __m256i);
                let summ = _mm256_cvtepi32_ps(_mm256_madd_epi16(sums, mins16));
                acc[r][i] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx[i]), summ, acc[r][i]);
            });
            let qs = wb.add(if D == Q5_K { 48 } else { 16 });
            let qh = if D == Q5_K {
                load(wb.add(16))
            } else {
                _mm256_setzero_si256()
            };
            let mut sumi = [_mm256_setzero_si256(); T];
            unroll!(4, |c| {
                let q = load(qs.add(32 * c));
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                if D == Q5_K {
                    lo = _mm256_or_si256(lo, bit_to_4(qh, 2 * c));
                    hi = _mm256_or_si256(hi, bit_to_4(qh, 2 * c + 1));
                }
                let s0 = _mm256_shuffle_epi8(scv, bcast16(2 * c));
                let s1 = _mm256_shuffle_epi8(scv, bcast16(2 * c + 1));
                unroll!(T, |i| {
                    let x = a[i].q.add(QK_K * b + 64 * c);
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load(x)), s0);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load(x.add(32))), s1);
                    sumi[i] = _mm256_add_epi32(sumi[i], _mm256_add_epi32(p0, p1));
                });
            });
            unroll!(T, |i| {
                acc[r][i] = _mm256_fmadd_ps(
                    _mm256_mul_ps(d, dx[i]),
                    _mm256_cvtepi32_ps(sumi[i]),
                    acc[r][i],
                );
            });
        });
    }
    let mut res = [[0f32; T]; R];
    unroll!(R, |r| {
        unroll!(T, |i| {
            res[r][i] = hsum(acc[r][i]);
        });
    });
    res
}

/// Q6_K weights: `R` rows x `T` activation rows of `nb` super-blocks.
#[inline(always)]
unsafe fn tile_q6_k<const R: usize, const T: usize>(
    w: [*const u8; R],
    nb: usize,
    a: [Act; T],
    pf: usize,
) -> [[f32; T]; R] {
    let m4 = _mm256_set1_epi8(15);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut dx = [_mm256_setzero_ps(); T];
        unroll!(T, |i| {
            dx[i] = _mm256_broadcast_ss(&*a[i].d.add(b));
        });
        unroll!(R, |r| {
            let wb = w[r].add(210 * b);
            for l in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(pf + 64 * l) as *const i8);
            }
            let d = f16x8(wb.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i));
            // Scales 0..8 / 8..16 in both lanes.
            let sch = [
                _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                _mm256_permute2x128_si256::<0x11>(sc16, sc16),
            ];
            // The -32 offset: Σ sc[s] · 32 · (sum of sub-block s).
            let mut sumi = [_mm256_setzero_si256(); T];
            unroll!(T, |i| {
                let sums = _mm256_loadu_si256(a[i].s.add(16 * b) as *const __m256i);
                let off = _mm256_madd_epi16(sums, sc16);
                sumi[i] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(off));
            });
            unroll!(2, |half| {
                let q4a = load(wb.add(64 * half));
                let q4b = load(wb.add(64 * half + 32));
                let qh = load(wb.add(128 + 32 * half));
                let v = [
                    _mm256_or_si256(
                        _mm256_and_si256(q4a, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(q4b, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q4a), m4),
                        _mm256_and_si256(qh, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q4b), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                unroll!(4, |c| {
                    let vc = v[c];
                    // Sub-blocks 8·half + 2c (first 16 values) and the next one.
                    let scv = _mm256_shuffle_epi8(sch[half], bcast16_pair(2 * c));
                    unroll!(T, |i| {
                        let x = a[i].q.add(QK_K * b + 128 * half + 32 * c);
                        let p = _mm256_maddubs_epi16(vc, load(x));
                        sumi[i] = _mm256_add_epi32(sumi[i], _mm256_madd_epi16(p, scv));
                    });
                });
            });
            unroll!(T, |i| {
                acc[r][i] = _mm256_fmadd_ps(
                    _mm256_mul_ps(d, dx[i]),
                    _mm256_cvtepi32_ps(sumi[i]),
                    acc[r][i],
                );
            });
        });
    }
    let mut res = [[0f32; T]; R];
    unroll!(R, |r| {
        unroll!(T, |i| {
            res[r][i] = hsum(acc[r][i]);
        });
    });
    res
}

/// [`tile_q6_k`] for one weight row on 512-bit registers (AVX-512 BW): each register holds
/// two 32-value chunks, their 2-bit high parts shifted into place by per-half shift counts.
/// Every i32 lane of the 256-bit kernel receives the same integer terms here (the two
/// halves of a 512-bit sum are added at the end), so the outputs are identical.
#[inline(always)]
unsafe fn tile_q6_k_512<const T: usize>(
    w: *const u8,
    nb: usize,
    a: [Act; T],
    pf: usize,
) -> [f32; T] {
    let m4 = _mm512_set1_epi8(15);
    let m30 = _mm512_set1_epi8(0x30);
    // Shift counts per 16-bit lane: the first chunk's high bits in the low 256 bits, the
    // second's in the high 256 (v0/v1 left by 4 and 2; v2/v3 right by 0 and 2).
    let up = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let down = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    // vpermw indices: 128-bit lane `l` of a register of chunks (2p, 2p + 1) of half `h` takes
    // the scale of sub-block 8h + 4p + l.
    // (Loaded here, not in a closure: closures do not inherit the target features, so the
    // load would become a call.)
    let lanes: [[[i16; 32]; 2]; 2] = std::array::from_fn(|h| {
        std::array::from_fn(|p| std::array::from_fn(|e| (8 * h + 4 * p + e / 8) as i16))
    });
    let mut idx = [[_mm512_setzero_si512(); 2]; 2];
    unroll!(2, |h| {
        unroll!(2, |p| {
            idx[h][p] = _mm512_loadu_si512(lanes[h][p].as_ptr() as *const __m512i);
        });
    });
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let wb = w.add(210 * b);
        for l in 0..4 {
            _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(pf + 64 * l) as *const i8);
        }
        let d = f16x8(wb.add(208));
        let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.add(192) as *const __m128i));
        let sc = _mm512_castsi256_si512(sc16);
        let mut sumi = [_mm256_setzero_si256(); T];
        let mut wide = [_mm512_setzero_si512(); T];
        unroll!(T, |i| {
            let sums = _mm256_loadu_si256(a[i].s.add(16 * b) as *const __m256i);
            let off = _mm256_madd_epi16(sums, sc16);
            sumi[i] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(off));
        });
        unroll!(2, |half| {
            let q4 = _mm512_loadu_si512(wb.add(64 * half) as *const __m512i);
            let qh = _mm512_broadcast_i64x4(load(wb.add(128 + 32 * half)));
            let v = [
                _mm512_or_si512(
                    _mm512_and_si512(q4, m4),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, up), m30),
                ),
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(q4), m4),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, down), m30),
                ),
            ];
            unroll!(2, |p| {
                let scv = _mm512_permutexvar_epi16(idx[half][p], sc);
                unroll!(T, |i| {
                    let x = a[i].q.add(QK_K * b + 128 * half + 64 * p);
                    let x = _mm512_loadu_si512(x as *const __m512i);
                    let prod = _mm512_maddubs_epi16(v[p], x);
                    wide[i] = _mm512_add_epi32(wide[i], _mm512_madd_epi16(prod, scv));
                });
            });
        });
        unroll!(T, |i| {
            let lo = _mm512_castsi512_si256(wide[i]);
            let hi = _mm512_extracti64x4_epi64::<1>(wide[i]);
            let s = _mm256_add_epi32(sumi[i], _mm256_add_epi32(lo, hi));
            acc[i] = _mm256_fmadd_ps(
                _mm256_mul_ps(d, _mm256_broadcast_ss(&*a[i].d.add(b))),
                _mm256_cvtepi32_ps(s),
                acc[i],
            );
        });
    }
    let mut res = [0f32; T];
    unroll!(T, |i| {
        res[i] = hsum(acc[i]);
    });
    res
}

/// One Q6_K weight row `j` against activation rows `i0..i0 + T` on the 512-bit kernel.
///
/// # Safety
/// As [`tile`], and AVX-512 F/BW available.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn tile_q6k_512<const T: usize>(cx: Ctx, j: usize, a: [Act; T], i0: usize) {
    let pf = cx.stride.clamp(PF_MIN, PF_MAX);
    let res = tile_q6_k_512::<T>(cx.base.add(j * cx.stride), cx.nb, a, pf);
    for (i, &v) in res.iter().enumerate() {
        cx.out.write((i0 + i) * cx.n + j, v);
    }
}

/// The dot products of the `R` weight rows at `wp` with the `T` activation rows `a`.
#[inline(always)]
unsafe fn tile_res<const D: u8, const R: usize, const T: usize>(
    wp: [*const u8; R],
    nb: usize,
    a: [Act; T],
    pf: usize,
) -> [[f32; T]; R] {
    match D {
        Q8_0 | Q4_0 => tile_q8::<D, R, T>(wp, nb, a, pf),
        Q6_K => tile_q6_k::<R, T>(wp, nb, a, pf),
        _ => tile_qk_scale_min::<D, R, T>(wp, nb, a, pf),
    }
}

/// `out[j] = w[rows[j]] · x` for one activation row (`act` row 0), weights of format `D`:
/// the selected rows two at a time.
///
/// # Safety
/// AVX2/FMA/F16C available; `w` of format `D`; every `rows[j] < w.rows()`;
/// `out.len() == rows.len()`; `act` holds one row of `w.cols()` quantized for `D`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gather_avx2<const D: u8>(
    w: &Matrix,
    rows: &[usize],
    act: &QAct,
    out: &mut [f32],
) {
    let k = w.cols();
    let bs = if D == Q8_0 || D == Q4_0 { QK } else { QK_K };
    let nb = k / bs;
    let a = [Act::new(act, 0, k, bs)];
    let mut j = 0;
    while j + 2 <= rows.len() {
        let wp = [w.row_ptr(rows[j]), w.row_ptr(rows[j + 1])];
        let res = tile_res::<D, 2, 1>(wp, nb, a, PF_MIN);
        out[j] = res[0][0];
        out[j + 1] = res[1][0];
        j += 2;
    }
    if j < rows.len() {
        out[j] = tile_res::<D, 1, 1>([w.row_ptr(rows[j])], nb, a, PF_MIN)[0][0];
    }
}

/// Output columns `j..j + R` for activation rows `i0..i0 + T` (`a`).
///
/// # Safety
/// As [`rows_avx2`], with `j + R <= r1` and `i0 + T <= t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const D: u8, const R: usize, const T: usize>(
    cx: Ctx,
    j: usize,
    a: [Act; T],
    i0: usize,
) {
    let wp: [*const u8; R] = std::array::from_fn(|r| cx.base.add((j + r) * cx.stride));
    // Prefetch the same position R rows further on: the next tile's rows when the rows are
    // short (a whole tile ahead hides the memory latency), at most PF_MAX bytes ahead.
    let pf = (R * cx.stride).clamp(PF_MIN, PF_MAX);
    let res = tile_res::<D, R, T>(wp, cx.nb, a, pf);
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
/// As [`rows_avx2`].
#[inline(always)]
unsafe fn rows_rt<const D: u8, const R: usize, const T: usize>(
    cx: Ctx,
    r0: usize,
    r1: usize,
    act: &QAct,
    i0: usize,
    k: usize,
) {
    let bs = if D == Q8_0 || D == Q4_0 { QK } else { QK_K };
    let a: [Act; T] = std::array::from_fn(|i| Act::new(act, i0 + i, k, bs));
    let mut j = r0;
    while j + R <= r1 {
        tile::<D, R, T>(cx, j, a, i0);
        j += R;
    }
    while j < r1 {
        tile::<D, 1, T>(cx, j, a, i0);
        j += 1;
    }
}

/// Output columns `r0..r1` for all `t` activation rows, weights of format `D`; with `wide`,
/// Q6_K on the 512-bit kernel ([`tile_q6_k_512`]).
///
/// # Safety
/// AVX2/FMA/F16C available, and AVX-512 F/BW with `wide`; `w` of format `D`; `act` holds `t`
/// rows of `w.cols()` quantized for that format; `out` valid for `t * w.rows()` floats with columns `r0..r1` owned by the
/// caller.
pub(crate) unsafe fn rows_avx2<const D: u8>(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
    wide: bool,
) {
    let k = w.cols();
    let bs = if D == Q8_0 || D == Q4_0 { QK } else { QK_K };
    let cx = Ctx {
        base: w.base_ptr(),
        stride: w.row_stride_bytes(),
        nb: k / bs,
        n: w.rows(),
        out,
    };
    let wide = D == Q6_K && wide;
    if t <= 4 && !wide {
        // Weight rows per tile: enough independent work per block, few enough accumulators
        // to stay in registers. Q8_0/Q4_0 at t = 1: four rows (E2B Q8_0 decode +5-11% over
        // two in alternating runs); the K-quants' larger unpacking keeps one.
        let small_blocks = D == Q8_0 || D == Q4_0;
        match (t, small_blocks) {
            (1, true) => rows_rt::<D, 4, 1>(cx, r0, r1, act, 0, k),
            (1, false) => rows_rt::<D, 1, 1>(cx, r0, r1, act, 0, k),
            (2, _) => rows_rt::<D, 1, 2>(cx, r0, r1, act, 0, k),
            (3, _) => rows_rt::<D, 1, 3>(cx, r0, r1, act, 0, k),
            _ => rows_rt::<D, 1, 4>(cx, r0, r1, act, 0, k),
        }
        return;
    }
    // Many activation rows (and the 512-bit Q6_K kernel for any count): each weight row (hot
    // in L1 after the first group) against all of them, four at a time. (Two weight rows per
    // tile, so that each activation load serves both, measured no faster: the integer
    // multiplies are the bound.)
    for j in r0..r1 {
        let mut i0 = 0;
        while i0 < t {
            let a = |i: usize| Act::new(act, i0 + i, k, bs);
            match t - i0 {
                1 => row_tile::<D, 1>(cx, j, [a(0)], i0, wide),
                2 => row_tile::<D, 2>(cx, j, [a(0), a(1)], i0, wide),
                3 => row_tile::<D, 3>(cx, j, [a(0), a(1), a(2)], i0, wide),
                _ => row_tile::<D, 4>(cx, j, [a(0), a(1), a(2), a(3)], i0, wide),
            }
            i0 += 4;
        }
    }
}

/// Weight row `j` against activation rows `i0..i0 + T`: on the 512-bit Q6_K kernel with
/// `wide`, else on [`tile`].
///
/// # Safety
/// As [`tile`], and AVX-512 F/BW available with `wide` (which only Q6_K sets).
#[inline(always)]
unsafe fn row_tile<const D: u8, const T: usize>(
    cx: Ctx,
    j: usize,
    a: [Act; T],
    i0: usize,
    wide: bool,
) {
    if wide {
        tile_q6k_512::<T>(cx, j, a, i0)
    } else {
        tile::<D, 1, T>(cx, j, a, i0)
    }
}

/// Prefetch distance of the interleaved Q8_0 kernel: four group blocks ahead in its one
/// stream (1024 to 4096 bytes measured the same; the hardware prefetcher follows a single
/// stream well).
const PF_X8: usize = 1024;

/// Prefetch distance of the interleaved Q4_K kernel: two group blocks ahead. Measured from
/// DRAM (`kernel_speed 2 --quant --decode`, t = 1, five rounds over two sessions), two blocks
/// was the fastest of 1, 2, 4 and 8 in every round (at 1024 bytes, less than one block, the
/// 8192x2048 product read at 53-73% of the probe; at two blocks 80-103%).
const PF_Q4KX8: usize = 2 * Q4KX8_GROUP_BLOCK;

/// One group of eight interleaved Q8_0 rows ([`Layout::Q8_0x8`], `nb` blocks at `g`) times
/// `T` activation rows: each activation row's eight sums, the rows in scale-slot order
/// ([`Q8X8_SLOT`]).
///
/// Per block and 8-value chunk, a 32-byte load holds four rows' chunks; the activation's
/// chunk is broadcast to all four, so `maddubs` + `madd` leave two partial sums per row. The
/// chunks' sums stay in i32 over the block; one horizontal add then gives the eight rows'
/// block sums in one vector, scaled and accumulated with one multiply-add for all eight.
#[inline(always)]
unsafe fn group_q8x8<const T: usize>(g: *const u8, nb: usize, a: &[Act; T]) -> [__m256; T] {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let p = g.add(b * Q8X8_GROUP_BLOCK);
        for l in 0..Q8X8_GROUP_BLOCK.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_X8 + 64 * l) as *const i8);
        }
        let mut sums = [[_mm256_setzero_si256(); 2]; T];
        unroll!(4, |c| {
            let w0 = load(p.add(16 + 64 * c));
            let w1 = load(p.add(48 + 64 * c));
            let a0 = _mm256_sign_epi8(w0, w0);
            let a1 = _mm256_sign_epi8(w1, w1);
            unroll!(T, |i| {
                let x = (a[i].q.add(QK * b + 8 * c) as *const i64).read_unaligned();
                let x = _mm256_set1_epi64x(x);
                let p0 = _mm256_maddubs_epi16(a0, _mm256_sign_epi8(x, w0));
                let p1 = _mm256_maddubs_epi16(a1, _mm256_sign_epi8(x, w1));
                sums[i][0] = _mm256_add_epi32(sums[i][0], _mm256_madd_epi16(p0, ones));
                sums[i][1] = _mm256_add_epi32(sums[i][1], _mm256_madd_epi16(p1, ones));
            });
        });
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        unroll!(T, |i| {
            // Lanes: rows 0,1,4,5 | 2,3,6,7, the order of the scales.
            let h = _mm256_cvtepi32_ps(_mm256_hadd_epi32(sums[i][0], sums[i][1]));
            let sc = _mm256_mul_ps(dw, _mm256_broadcast_ss(&*a[i].d.add(b)));
            acc[i] = _mm256_fmadd_ps(sc, h, acc[i]);
        });
    }
    acc
}

/// [`group_q8x8`] on 512-bit registers with AVX-512 VNNI: one 64-byte load holds the eight
/// rows' chunk of 8 values, and one `vpdpbusd` per activation row multiplies it with the
/// broadcast activation chunk and adds each four byte products into an i32 lane (two lanes a
/// row). `vpdpbusd` takes unsigned weights: the sign bit is flipped (`w + 128`), and the
/// `128 · Σx` this adds to a row's block sum is taken off by starting both of its lanes at
/// `-64 · Σx` (the activation's `o` is `-8 · Σx`). The block sums equal the 256-bit kernel's
/// and are scaled in the same order, so the outputs are identical.
#[inline(always)]
unsafe fn group_q8x8_vnni<const T: usize>(g: *const u8, nb: usize, a: &[Act; T]) -> [__m256; T] {
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let p = g.add(b * Q8X8_GROUP_BLOCK);
        for l in 0..Q8X8_GROUP_BLOCK.div_ceil(64) {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_X8 + 64 * l) as *const i8);
        }
        // At most 16 x 255 x 127 + 64 x 32 x 127 in magnitude per lane: no overflow.
        let mut s = [_mm512_setzero_si512(); T];
        unroll!(T, |i| {
            s[i] = _mm512_set1_epi32(8 * *a[i].o.add(b));
        });
        unroll!(4, |c| {
            let w = _mm512_loadu_si512(p.add(16 + 64 * c) as *const __m512i);
            let w = _mm512_xor_si512(w, flip);
            unroll!(T, |i| {
                let x = (a[i].q.add(QK * b + 8 * c) as *const i64).read_unaligned();
                s[i] = _mm512_dpbusd_epi32(s[i], w, _mm512_set1_epi64(x));
            });
        });
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        unroll!(T, |i| {
            // Rows 0-3 in the low half, 4-7 in the high one, two lanes each: after the
            // pairwise add, rows 0,1,4,5 | 2,3,6,7, the order of the scales.
            let lo = _mm512_castsi512_si256(s[i]);
            let hi = _mm512_extracti64x4_epi64::<1>(s[i]);
            let h = _mm256_cvtepi32_ps(_mm256_hadd_epi32(lo, hi));
            let sc = _mm256_mul_ps(dw, _mm256_broadcast_ss(&*a[i].d.add(b)));
            acc[i] = _mm256_fmadd_ps(sc, h, acc[i]);
        });
    }
    acc
}

/// Group `g` of an interleaved weight of format `D` (Q8_0 or Q4_K; output columns below
/// `r1`) for activation rows `i0..i0 + T`, on the kernel of level `L`: 0 the 256-bit ones, 1
/// the 512-bit Q4_K one, 2 the VNNI Q8_0 one. The entry points below differ only in the
/// instruction sets they enable, which a closure would not inherit.
#[inline(always)]
unsafe fn groups_with<const D: u8, const L: u8, const T: usize>(
    w: &Matrix,
    g: usize,
    r1: usize,
    act: &QAct,
    i0: usize,
    out: OutPtr,
) {
    let k = w.cols();
    let bs = if D == Q8_0 { QK } else { QK_K };
    let a: [Act; T] = std::array::from_fn(|i| Act::new(act, i0 + i, k, bs));
    let p = w.base_ptr().add(g * w.group_stride_bytes());
    let acc = match (D, L) {
        (Q8_0, 0) => group_q8x8::<T>(p, k / bs, &a),
        (Q8_0, _) => group_q8x8_vnni::<T>(p, k / bs, &a),
        (_, 0) => group_q4kx8::<T>(p, k / bs, &a),
        _ => group_q4kx8_512::<T>(p, k / bs, &a),
    };
    store_group::<T>(&acc, g, r1, i0, w.rows(), out);
}

/// [`groups_with`] on the 256-bit kernels.
///
/// # Safety
/// As [`rows_avx2_x8`], with `i0 + T <= t`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn groups_x8<const D: u8, const T: usize>(
    w: &Matrix,
    g: usize,
    r1: usize,
    act: &QAct,
    i0: usize,
    out: OutPtr,
) {
    groups_with::<D, 0, T>(w, g, r1, act, i0, out)
}

/// [`groups_with`] for Q4_K on the 512-bit kernel.
///
/// # Safety
/// As [`groups_x8`], and AVX-512 F/BW available.
#[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
unsafe fn groups_q4kx8_512<const T: usize>(
    w: &Matrix,
    g: usize,
    r1: usize,
    act: &QAct,
    i0: usize,
    out: OutPtr,
) {
    groups_with::<Q4_K, 1, T>(w, g, r1, act, i0, out)
}

/// [`groups_with`] for Q8_0 on the VNNI kernel.
///
/// # Safety
/// As [`groups_x8`], and AVX-512 F/BW/VNNI available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn groups_q8x8_vnni<const T: usize>(
    w: &Matrix,
    g: usize,
    r1: usize,
    act: &QAct,
    i0: usize,
    out: OutPtr,
) {
    groups_with::<Q8_0, 2, T>(w, g, r1, act, i0, out)
}

/// Writes a group's sums (slot order) for activation rows `i0..i0 + T`, output columns
/// `8 g..` below `r1`.
///
/// # Safety
/// `out` valid for the activation rows times `n` floats, those columns owned by the caller.
#[inline(always)]
unsafe fn store_group<const T: usize>(
    acc: &[__m256; T],
    g: usize,
    r1: usize,
    i0: usize,
    n: usize,
    out: OutPtr,
) {
    unroll!(T, |i| {
        let mut v = [0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), acc[i]);
        for (r, &slot) in Q8X8_SLOT.iter().enumerate() {
            let row = 8 * g + r;
            if row < r1 {
                out.write((i0 + i) * n + row, v[slot]);
            }
        }
    });
}

/// Output columns `r0..r1` for all `t` activation rows of an interleaved Q8_0 or Q4_K
/// weight ([`Layout::Q8_0x8`], [`Layout::Q4_Kx8`]): each group of eight rows against the
/// activation rows four (Q4_K: two) at a time, the group's bytes staying in L1/L2 between
/// the passes.
///
/// `wide`: Q4_K on the 512-bit kernel ([`group_q4kx8_512`]), Q8_0 on the VNNI kernel
/// ([`group_q8x8_vnni`]) where the CPU has VNNI.
///
/// # Safety
/// AVX2/FMA/F16C available, and AVX-512 F/BW with `wide`; `w` in one of those layouts; `r0`
/// a multiple of 8 and `r1 <= w.rows()`; `act` holds `t` rows of `w.cols()` quantized for `w`'s format; `out`
/// valid for `t * w.rows()` floats with columns `r0..r1` owned by the caller.
pub(crate) unsafe fn rows_avx2_x8(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
    wide: bool,
) {
    debug_assert!(r0.is_multiple_of(8));
    let q4k = w.layout() == Layout::Q4_Kx8;
    let vnni = !q4k && wide && crate::cpu::has_avx512_vnni();
    for g in r0 / 8..r1.div_ceil(8) {
        let mut i0 = 0;
        if q4k && wide {
            // Four activation rows at a time: 8 accumulators of 32 registers.
            while i0 < t {
                match t - i0 {
                    1 => groups_q4kx8_512::<1>(w, g, r1, act, i0, out),
                    2 => groups_q4kx8_512::<2>(w, g, r1, act, i0, out),
                    3 => groups_q4kx8_512::<3>(w, g, r1, act, i0, out),
                    _ => groups_q4kx8_512::<4>(w, g, r1, act, i0, out),
                }
                i0 += 4;
            }
            continue;
        }
        if q4k {
            while i0 < t {
                match t - i0 {
                    1 => groups_x8::<Q4_K, 1>(w, g, r1, act, i0, out),
                    _ => groups_x8::<Q4_K, 2>(w, g, r1, act, i0, out),
                }
                i0 += 2;
            }
            continue;
        }
        debug_assert!(w.layout() == Layout::Q8_0x8);
        if vnni {
            while i0 < t {
                match t - i0 {
                    1 => groups_q8x8_vnni::<1>(w, g, r1, act, i0, out),
                    2 => groups_q8x8_vnni::<2>(w, g, r1, act, i0, out),
                    3 => groups_q8x8_vnni::<3>(w, g, r1, act, i0, out),
                    _ => groups_q8x8_vnni::<4>(w, g, r1, act, i0, out),
                }
                i0 += 4;
            }
            continue;
        }
        while i0 < t {
            match t - i0 {
                1 => groups_x8::<Q8_0, 1>(w, g, r1, act, i0, out),
                2 => groups_x8::<Q8_0, 2>(w, g, r1, act, i0, out),
                3 => groups_x8::<Q8_0, 3>(w, g, r1, act, i0, out),
                _ => groups_x8::<Q8_0, 4>(w, g, r1, act, i0, out),
            }
            i0 += 4;
        }
    }
}

/// `pshufb` masks that widen the eight per-row bytes of a broadcast 64-bit word to i16 lanes,
/// four lanes a row, in the order `maddubs` leaves four rows' sums: rows 0,1 | 2,3 (`[0]`)
/// and 4,5 | 6,7 (`[1]`).
#[inline(always)]
unsafe fn row_byte_masks() -> [__m256i; 2] {
    const Z: i8 = -128;
    let m = |a: i8, b: i8, c: i8, d: i8| {
        _mm256_setr_epi8(
            a, Z, a, Z, a, Z, a, Z, b, Z, b, Z, b, Z, b, Z, c, Z, c, Z, c, Z, c, Z, d, Z, d, Z, d,
            Z, d, Z,
        )
    };
    [m(0, 1, 2, 3), m(4, 5, 6, 7)]
}

/// One group of eight interleaved Q4_K rows ([`Layout::Q4_Kx8`], `nb` super-blocks at `g`)
/// times `T` activation rows: each activation row's eight sums in scale-slot order.
///
/// Per super-block and 8-byte piece of a 64-value chunk, a 32-byte load holds four rows'
/// pieces: their low nibbles against the broadcast activation values of the chunk's first
/// sub-block, the high nibbles against its second; each product is scaled by its row's
/// sub-block scale (`madd` with the scales widened to i16). The mins are applied once per
/// super-block for all eight rows against the activation's sums of 32.
#[inline(always)]
unsafe fn group_q4kx8<const T: usize>(g: *const u8, nb: usize, a: &[Act; T]) -> [__m256; T] {
    let m4 = _mm256_set1_epi8(15);
    let masks = row_byte_masks();
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let p = g.add(b * Q4KX8_GROUP_BLOCK);
        let (d, dx) = q4kx8_start::<T>(p, b, a, &mut acc);
        let mut s0 = [_mm256_setzero_si256(); T];
        let mut s1 = [_mm256_setzero_si256(); T];
        unroll!(4, |c| {
            // The four pieces' products summed in i16 before the sub-block scales are
            // applied: each lane is at most 4 x 2 x 15 x 127 = 15240 in magnitude.
            let mut l = [[_mm256_setzero_si256(); 2]; T];
            let mut h = [[_mm256_setzero_si256(); 2]; T];
            unroll!(4, |q| {
                let v0 = load(p.add(160 + 64 * (4 * c + q)));
                let v1 = load(p.add(192 + 64 * (4 * c + q)));
                let lo = [_mm256_and_si256(v0, m4), _mm256_and_si256(v1, m4)];
                let hi = [
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v0), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v1), m4),
                ];
                unroll!(T, |i| {
                    let x = a[i].q.add(QK_K * b + 64 * c + 8 * q);
                    let xl = _mm256_set1_epi64x((x as *const i64).read_unaligned());
                    let xh = _mm256_set1_epi64x((x.add(32) as *const i64).read_unaligned());
                    l[i][0] = _mm256_add_epi16(l[i][0], _mm256_maddubs_epi16(lo[0], xl));
                    l[i][1] = _mm256_add_epi16(l[i][1], _mm256_maddubs_epi16(lo[1], xl));
                    h[i][0] = _mm256_add_epi16(h[i][0], _mm256_maddubs_epi16(hi[0], xh));
                    h[i][1] = _mm256_add_epi16(h[i][1], _mm256_maddubs_epi16(hi[1], xh));
                });
            });
            let scl = _mm256_set1_epi64x((p.add(32 + 16 * c) as *const i64).read_unaligned());
            let sch = _mm256_set1_epi64x((p.add(40 + 16 * c) as *const i64).read_unaligned());
            let sl = [
                _mm256_shuffle_epi8(scl, masks[0]),
                _mm256_shuffle_epi8(scl, masks[1]),
            ];
            let sh = [
                _mm256_shuffle_epi8(sch, masks[0]),
                _mm256_shuffle_epi8(sch, masks[1]),
            ];
            unroll!(T, |i| {
                let p0 = _mm256_add_epi32(
                    _mm256_madd_epi16(l[i][0], sl[0]),
                    _mm256_madd_epi16(h[i][0], sh[0]),
                );
                let p1 = _mm256_add_epi32(
                    _mm256_madd_epi16(l[i][1], sl[1]),
                    _mm256_madd_epi16(h[i][1], sh[1]),
                );
                s0[i] = _mm256_add_epi32(s0[i], p0);
                s1[i] = _mm256_add_epi32(s1[i], p1);
            });
        });
        unroll!(T, |i| {
            // Lanes: rows 0,1,4,5 | 2,3,6,7, the order of d.
            let h = _mm256_cvtepi32_ps(_mm256_hadd_epi32(s0[i], s1[i]));
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx[i]), h, acc[i]);
        });
    }
    acc
}

/// The start of super-block `b` (at `p`) of an interleaved Q4_K group: prefetches ahead,
/// applies the eight rows' mins against each activation row's sums of 32 (into `acc`), and
/// returns the rows' `d` (slot order) and each activation row's scale.
#[inline(always)]
unsafe fn q4kx8_start<const T: usize>(
    p: *const u8,
    b: usize,
    a: &[Act; T],
    acc: &mut [__m256; T],
) -> (__m256, [__m256; T]) {
    for l in 0..Q4KX8_GROUP_BLOCK.div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF_Q4KX8 + 64 * l) as *const i8);
    }
    let d = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16) as *const __m128i));
    let mut dx = [_mm256_setzero_ps(); T];
    unroll!(T, |i| {
        dx[i] = _mm256_broadcast_ss(&*a[i].d.add(b));
        // Σ_s m[r][s] · (sum of sub-block s of x), two sub-blocks per madd.
        let s16 = a[i].s.add(16 * b);
        let mut ms = _mm256_setzero_si256();
        unroll!(4, |q| {
            let bs0 = *s16.add(4 * q) as i32 + *s16.add(4 * q + 1) as i32;
            let bs1 = *s16.add(4 * q + 2) as i32 + *s16.add(4 * q + 3) as i32;
            let pair = (bs0 as u16 as u32 | (bs1 as u16 as u32) << 16) as i32;
            let m16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(96 + 16 * q) as *const __m128i));
            ms = _mm256_add_epi32(ms, _mm256_madd_epi16(m16, _mm256_set1_epi32(pair)));
        });
        acc[i] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, dx[i]), _mm256_cvtepi32_ps(ms), acc[i]);
    });
    (d, dx)
}

/// [`group_q4kx8`] on 512-bit registers (AVX-512 BW): one 64-byte load holds the eight rows'
/// pieces, so each broadcast activation piece takes one `maddubs` per nibble half where the
/// 256-bit kernel takes two. The integer sums are the same, so the outputs are identical.
#[inline(always)]
unsafe fn group_q4kx8_512<const T: usize>(g: *const u8, nb: usize, a: &[Act; T]) -> [__m256; T] {
    let m4 = _mm512_set1_epi8(15);
    let [m0, m1] = row_byte_masks();
    let masks = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(m0), m1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let p = g.add(b * Q4KX8_GROUP_BLOCK);
        let (d, dx) = q4kx8_start::<T>(p, b, a, &mut acc);
        let mut s = [_mm512_setzero_si512(); T];
        unroll!(4, |c| {
            // As in the 256-bit kernel: at most 4 x 2 x 15 x 127 = 15240 per i16 lane.
            let mut l = [_mm512_setzero_si512(); T];
            let mut h = [_mm512_setzero_si512(); T];
            unroll!(4, |q| {
                let v = _mm512_loadu_si512(p.add(160 + 64 * (4 * c + q)) as *const __m512i);
                let lo = _mm512_and_si512(v, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                unroll!(T, |i| {
                    let x = a[i].q.add(QK_K * b + 64 * c + 8 * q);
                    let xl = _mm512_set1_epi64((x as *const i64).read_unaligned());
                    let xh = _mm512_set1_epi64((x.add(32) as *const i64).read_unaligned());
                    l[i] = _mm512_add_epi16(l[i], _mm512_maddubs_epi16(lo, xl));
                    h[i] = _mm512_add_epi16(h[i], _mm512_maddubs_epi16(hi, xh));
                });
            });
            let scl = _mm512_set1_epi64((p.add(32 + 16 * c) as *const i64).read_unaligned());
            let sch = _mm512_set1_epi64((p.add(40 + 16 * c) as *const i64).read_unaligned());
            let sl = _mm512_shuffle_epi8(scl, masks);
            let sh = _mm512_shuffle_epi8(sch, masks);
            unroll!(T, |i| {
                let pl = _mm512_madd_epi16(l[i], sl);
                let ph = _mm512_madd_epi16(h[i], sh);
                s[i] = _mm512_add_epi32(s[i], _mm512_add_epi32(pl, ph));
            });
        });
        unroll!(T, |i| {
            // Lanes: rows 0,1 | 2,3 (low half), 4,5 | 6,7 (high half), as s0 and s1 of the
            // 256-bit kernel.
            let lo = _mm512_castsi512_si256(s[i]);
            let hi = _mm512_extracti64x4_epi64::<1>(s[i]);
            let h = _mm256_cvtepi32_ps(_mm256_hadd_epi32(lo, hi));
            acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(d, dx[i]), h, acc[i]);
        });
    }
    acc
}

/// Sum of the 8 i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// AVX2 version of [`super::quant::quantize_act_block`], with the same values: `x * id`
/// rounded half away from zero (as `f32::round`) and clamped to -127..=127.
///
/// # Safety
/// AVX2/FMA available; `x.len() == q.len()`, a multiple of 32; `s` empty or `x.len() / 16`
/// long.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_act_block_avx2(
    x: &[f32],
    q: &mut [i8],
    d: &mut f32,
    s: &mut [i16],
    o: &mut i32,
) {
    let n = x.len();
    assert!(n.is_multiple_of(32) && q.len() == n && (s.is_empty() || s.len() == n / 16));
    let xp = x.as_ptr();
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in (0..n).step_by(8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xp.add(c))));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
    *d = amax / 127.0;
    let id = _mm256_set1_ps(if amax == 0.0 { 0.0 } else { 127.0 / amax });
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let lim = _mm256_set1_ps(127.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let quant = |p: *const f32| {
        let y = _mm256_mul_ps(_mm256_loadu_ps(p), id);
        let ti = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        // y - trunc(y) is exact; |frac| >= 0.5 rounds away from zero.
        let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(y, ti));
        let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, half);
        let step = _mm256_or_ps(_mm256_and_ps(y, sign), one);
        let r = _mm256_add_ps(ti, _mm256_and_ps(up, step));
        let r = _mm256_max_ps(
            _mm256_min_ps(r, lim),
            _mm256_sub_ps(_mm256_setzero_ps(), lim),
        );
        _mm256_cvttps_epi32(r)
    };
    let mut total = _mm256_setzero_si256();
    for c in (0..n).step_by(32) {
        let a = quant(xp.add(c));
        let b = quant(xp.add(c + 8));
        let e = quant(xp.add(c + 16));
        let f = quant(xp.add(c + 24));
        let ab = _mm256_packs_epi32(a, b);
        let ef = _mm256_packs_epi32(e, f);
        let v = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, ef), perm);
        _mm256_storeu_si256(q.as_mut_ptr().add(c) as *mut __m256i, v);
        let (s0, s1) = (_mm256_add_epi32(a, b), _mm256_add_epi32(e, f));
        if !s.is_empty() {
            s[c / 16] = hsum_i32(s0) as i16;
            s[c / 16 + 1] = hsum_i32(s1) as i16;
        }
        total = _mm256_add_epi32(total, _mm256_add_epi32(s0, s1));
    }
    *o = -8 * hsum_i32(total);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::testing::values;

    /// Runs `rows` (all `n` output columns of a `k`-column weight) with the 256-bit and the
    /// 512-bit kernels for every count of activation rows left over after groups of four, and
    /// requires the same bits from both.
    fn same_bits(n: usize, k: usize, bs: usize, rows: impl Fn(&QAct, usize, OutPtr, bool)) {
        for t in [1, 2, 3, 4, 5, 7, 9] {
            let x = values(t * k, 11 + t as u64);
            let mut act = QAct::default();
            act.quantize(&x, k, bs, false);
            let mut narrow = vec![f32::NAN; t * n];
            let mut wide = vec![f32::NAN; t * n];
            rows(&act, t, OutPtr(narrow.as_mut_ptr()), false);
            rows(&act, t, OutPtr(wide.as_mut_ptr()), true);
            for (j, (a, b)) in narrow.iter().zip(&wide).enumerate() {
                assert!(a.is_finite(), "t={t} [{j}] not written");
                assert_eq!(a.to_bits(), b.to_bits(), "t={t} [{j}]: {a} vs {b}");
            }
        }
    }

    fn has_both() -> bool {
        let ok = crate::cpu::has_avx2() && crate::cpu::has_avx512();
        if !ok {
            eprintln!("skipped: this CPU has no AVX-512 F/BW");
        }
        ok
    }

    /// The 512-bit Q4_K group kernel gives exactly the 256-bit kernel's outputs (the same
    /// integer sums, scaled in the same order), with a partial last group of weight rows. Both
    /// are checked against the portable kernel through the public paths in tests/quant.rs.
    #[test]
    fn q4kx8_512_bit_kernel_equals_the_256_bit_one() {
        if !has_both() {
            return;
        }
        let (n, k) = (21, 768);
        let w = Matrix::from_f32_as(&values(n * k, 7), n, k, DType::Q4_K)
            .interleave8()
            .expect("21 rows interleave");
        // SAFETY: AVX2 and AVX-512 F/BW detected; row 0 starts a group; the outputs hold t
        // rows of n floats.
        same_bits(n, k, QK_K, |act, t, out, wide| unsafe {
            rows_avx2_x8(&w, 0, n, act, t, out, wide)
        });
    }

    /// The 512-bit Q6_K kernel gives exactly the 256-bit kernel's outputs.
    #[test]
    fn q6_k_512_bit_kernel_equals_the_256_bit_one() {
        if !has_both() {
            return;
        }
        let (n, k) = (13, 768);
        let w = Matrix::from_f32_as(&values(n * k, 5), n, k, DType::Q6_K);
        // SAFETY: AVX2 and AVX-512 F/BW detected; the outputs hold t rows of n floats.
        same_bits(n, k, QK_K, |act, t, out, wide| unsafe {
            rows_avx2::<Q6_K>(&w, 0, n, act, t, out, wide)
        });
    }

    /// The VNNI Q8_0 group kernel gives exactly the 256-bit kernel's outputs: weights at both
    /// ends of the byte range (the sign flip), a partial last group of weight rows.
    #[test]
    fn q8x8_vnni_kernel_equals_the_256_bit_one() {
        if !has_both() || !crate::cpu::has_avx512_vnni() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let (n, k) = (21, 256);
        let mut v = values(n * k, 3);
        // Blocks whose largest magnitude is negative or positive give the quantized values
        // -127 and 127; one block of equal values quantizes to all 127.
        v[5] = -4.0;
        v[40] = 4.0;
        v[64..96].fill(0.5);
        let w = Matrix::from_f32_as(&v, n, k, DType::Q8_0)
            .interleave8()
            .expect("21 rows interleave");
        // SAFETY: AVX2 and AVX-512 F/BW/VNNI detected; row 0 starts a group; the outputs hold
        // t rows of n floats.
        same_bits(n, k, QK, |act, t, out, wide| unsafe {
            rows_avx2_x8(&w, 0, n, act, t, out, wide)
        });
    }
}
