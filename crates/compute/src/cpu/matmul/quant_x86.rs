//! AVX2 integer dot products of block-format weight rows with int8 activation rows.
//!
//! Products of an unsigned and a signed byte are summed in pairs to i16 by
//! `_mm256_maddubs_epi16` (no saturation is possible: |q_w| <= 63 and |q_x| <= 127), then in
//! pairs to i32 by `_mm256_madd_epi16`, where the sub-block scales multiply in. Signed Q8_0 /
//! Q4_0 weights use the sign trick (`|w|` times `x · sign(w)`). One f32 multiply-add per block
//! combines the weight and activation scales.

use std::arch::x86_64::*;

use super::quant::QAct;
use super::OutPtr;
use crate::cpu::ops::x86::hsum;
use crate::matrix::Matrix;
use crate::quant::{QK, QK_K};

/// Weight format codes (const generic parameters).
pub(crate) const Q8_0: u8 = 0;
pub(crate) const Q4_0: u8 = 1;
pub(crate) const Q4_K: u8 = 2;
pub(crate) const Q5_K: u8 = 3;
pub(crate) const Q6_K: u8 = 4;

/// An f16 at `p` as f32.
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 8 x i32 partial sums of `w · x` for 32 signed bytes each.
#[inline(always)]
unsafe fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// Q8_0 or Q4_0 weights (`D`) · Q8_0 activations, `nb` blocks.
#[inline(always)]
unsafe fn dot_q8<const D: u8>(w: *const u8, nb: usize, xq: *const i8, xd: *const f32) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 2];
    let m4 = _mm_set1_epi8(15);
    let eight = _mm256_set1_epi8(8);
    for b in 0..nb {
        let x = load(xq.add(QK * b) as *const u8);
        let (wq, d) = if D == Q8_0 {
            let wb = w.add(34 * b);
            (load(wb.add(2)), f16(wb))
        } else {
            let wb = w.add(18 * b);
            let qs = _mm_loadu_si128(wb.add(2) as *const __m128i);
            let lo = _mm_and_si128(qs, m4);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), m4);
            (_mm256_sub_epi8(_mm256_set_m128i(hi, lo), eight), f16(wb))
        };
        let p = _mm256_cvtepi32_ps(dot_i8(wq, x));
        let s = _mm256_set1_ps(d * *xd.add(b));
        acc[b & 1] = _mm256_fmadd_ps(s, p, acc[b & 1]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Q4_K or Q5_K weights (`D`) · Q8_K activations, `nb` blocks.
#[inline(always)]
unsafe fn dot_qk_scale_min<const D: u8>(
    w: *const u8,
    nb: usize,
    xq: *const i8,
    xd: *const f32,
    xs: *const i16,
) -> f32 {
    let bb = if D == Q5_K { 176 } else { 144 };
    let m4 = _mm256_set1_epi8(15);
    let one = _mm256_set1_epi8(1);
    // Duplicates each of 8 bytes: [0, 0, 1, 1, ..., 7, 7].
    let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let wb = w.add(bb * b);
        let xdb = *xd.add(b);
        let d = f16(wb) * xdb;
        let dmin = f16(wb.add(2)) * xdb;
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
        // Mins against the sums of 16 activations: Σ m[s] · (sums of sub-block s).
        let mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(mn as i64), dup));
        let sums = _mm256_loadu_si256(xs.add(16 * b) as *const __m256i);
        let summ = _mm256_madd_epi16(sums, mins16);
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summ), acc);

        let qs = wb.add(if D == Q5_K { 48 } else { 16 });
        let mut qh = if D == Q5_K {
            load(wb.add(16))
        } else {
            _mm256_setzero_si256()
        };
        let x = xq.add(QK_K * b) as *const u8;
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q = load(qs.add(32 * c));
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            if D == Q5_K {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(qh, one)));
                qh = _mm256_srli_epi16::<1>(qh);
                hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(_mm256_and_si256(qh, one)));
                qh = _mm256_srli_epi16::<1>(qh);
            }
            let p0 = _mm256_maddubs_epi16(lo, load(x.add(64 * c)));
            let p1 = _mm256_maddubs_epi16(hi, load(x.add(64 * c + 32)));
            let s0 = _mm256_set1_epi16(((sc >> (16 * c)) & 0xff) as i16);
            let s1 = _mm256_set1_epi16(((sc >> (16 * c + 8)) & 0xff) as i16);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p0, s0));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p1, s1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// Q6_K weights · Q8_K activations, `nb` blocks.
#[inline(always)]
unsafe fn dot_q6_k(w: *const u8, nb: usize, xq: *const i8, xd: *const f32, xs: *const i16) -> f32 {
    let m4 = _mm256_set1_epi8(15);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    for b in 0..nb {
        let wb = w.add(210 * b);
        let d = f16(wb.add(208)) * *xd.add(b);
        let scb = _mm_loadu_si128(wb.add(192) as *const __m128i);
        // The -32 offset: Σ sc[s] · 32 · (sum of sub-block s).
        let sums = _mm256_loadu_si256(xs.add(16 * b) as *const __m256i);
        let off = _mm256_madd_epi16(sums, _mm256_cvtepi8_epi16(scb));
        let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(off));
        let x = xq.add(QK_K * b) as *const u8;
        for half in 0..2 {
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
            for (c, &vc) in v.iter().enumerate() {
                let p = _mm256_maddubs_epi16(vc, load(x.add(128 * half + 32 * c)));
                // Sub-blocks s0 = 8·half + 2c (first 16 values) and s0 + 1.
                let s0 = 8 * half + 2 * c;
                let sc = *wb.add(192 + s0) as i8 as i16;
                let sc1 = *wb.add(193 + s0) as i8 as i16;
                let scv = _mm256_set_m128i(_mm_set1_epi16(sc1), _mm_set1_epi16(sc));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

/// Dot product of weight row `w` (format `D`, `k` elements) with activation row `i`.
#[inline(always)]
unsafe fn dot<const D: u8>(w: *const u8, k: usize, act: &QAct, i: usize) -> f32 {
    if D == Q8_0 || D == Q4_0 {
        let nb = k / QK;
        dot_q8::<D>(w, nb, act.q.as_ptr().add(i * k), act.d.as_ptr().add(i * nb))
    } else {
        let nb = k / QK_K;
        let xq = act.q.as_ptr().add(i * k);
        let xd = act.d.as_ptr().add(i * nb);
        let xs = act.s.as_ptr().add(i * k / 16);
        if D == Q6_K {
            dot_q6_k(w, nb, xq, xd, xs)
        } else {
            dot_qk_scale_min::<D>(w, nb, xq, xd, xs)
        }
    }
}

/// Output columns `r0..r1` for all `t` activation rows, weights of format `D`.
///
/// # Safety
/// AVX2/FMA/F16C available; `w` of format `D`; `act` holds `t` rows of `w.cols()` quantized
/// for that format; `out` valid for `t * w.rows()` floats with columns `r0..r1` owned by the
/// caller.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rows_avx2<const D: u8>(
    w: &Matrix,
    r0: usize,
    r1: usize,
    act: &QAct,
    t: usize,
    out: OutPtr,
) {
    let k = w.cols();
    let n = w.rows();
    for j in r0..r1 {
        let wp = w.row_ptr(j);
        for i in 0..t {
            out.write(i * n + j, dot::<D>(wp, k, act, i));
        }
    }
}
