//! AVX2 + FMA versions of the ops. Every function here requires those CPU features (the
//! callers in `super` check them); slice lengths are checked by the callers too, and every
//! memory access below stays within the slices (8-element steps below `len & !7`, then a
//! scalar tail).

use std::arch::x86_64::*;

use super::scalar;

/// Sum of the 8 lanes.
#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Max of the 8 lanes.
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// `e^x` per lane, relative error within about 2 ulp for normal results. Inputs below -87.3
/// give 0 (the true result is subnormal or smaller), above 88.3 give +inf, NaN stays NaN.
///
/// Method: `x = n·ln2 + r` with `n` the nearest integer to `x/ln2` and `|r| <= ln2/2`
/// (ln2 split in two parts so `r` is computed almost exactly), `e^r` by its Taylor series to
/// degree 7 (truncation error below 6e-9 relative), times `2^n` built in the exponent bits.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    const LO: f32 = -87.3;
    const HI: f32 = 88.3;
    let too_small = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO));
    let too_big = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(HI));
    // max/min return their second operand when it is NaN, so NaN passes through.
    let xc = _mm256_min_ps(_mm256_set1_ps(HI), _mm256_max_ps(_mm256_set1_ps(LO), x));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        xc,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln2 = 355/512 - 2.12194440e-4; the literal 0.6933594 rounds to exactly 355/512 =
    // 0.693359375, which has 9 significant bits, so n·(355/512) is exact for |n| <= 127.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    // n is in -126..=127 after the clamp: 2^n is a normal float with exponent field n + 127.
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    )));
    let y = _mm256_mul_ps(p, pow2);
    let y = _mm256_andnot_ps(too_small, y);
    _mm256_blendv_ps(y, _mm256_set1_ps(f32::INFINITY), too_big)
}

/// `x[i] *= s · w[i]`; `w.len() == x.len()`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn scale_mul(x: &mut [f32], s: f32, w: &[f32]) {
    let n8 = x.len() & !7;
    let (px, pw) = (x.as_mut_ptr(), w.as_ptr());
    let sv = _mm256_set1_ps(s);
    let mut i = 0;
    while i < n8 {
        let v = _mm256_mul_ps(_mm256_loadu_ps(px.add(i)), sv);
        _mm256_storeu_ps(px.add(i), _mm256_mul_ps(v, _mm256_loadu_ps(pw.add(i))));
        i += 8;
    }
    scalar::scale_mul(&mut x[n8..], s, &w[n8..]);
}

/// `gelu_tanh` in place (see `super::gelu_tanh`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gelu_tanh(x: &mut [f32]) {
    let n8 = x.len() & !7;
    let p = x.as_mut_ptr();
    let c2 = _mm256_set1_ps(-2.0 * 0.797_884_6);
    let a = _mm256_set1_ps(0.044715);
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n8 {
        let u = _mm256_loadu_ps(p.add(i));
        // -2·c·u·(1 + a·u²)
        let inner = _mm256_fmadd_ps(_mm256_mul_ps(a, u), u, one);
        let e = exp8(_mm256_mul_ps(_mm256_mul_ps(c2, u), inner));
        _mm256_storeu_ps(p.add(i), _mm256_div_ps(u, _mm256_add_ps(one, e)));
        i += 8;
    }
    scalar::gelu_tanh(&mut x[n8..]);
}

/// `soft_cap` in place (see `super::soft_cap`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn soft_cap(x: &mut [f32], cap: f32) {
    let n8 = x.len() & !7;
    let p = x.as_mut_ptr();
    let k = _mm256_set1_ps(-2.0 / cap);
    let c = _mm256_set1_ps(cap);
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    let mut i = 0;
    while i < n8 {
        let v = _mm256_loadu_ps(p.add(i));
        let e = exp8(_mm256_mul_ps(k, _mm256_andnot_ps(sign, v)));
        let t = _mm256_div_ps(
            _mm256_mul_ps(c, _mm256_sub_ps(one, e)),
            _mm256_add_ps(one, e),
        );
        _mm256_storeu_ps(p.add(i), _mm256_or_ps(t, _mm256_and_ps(sign, v)));
        i += 8;
    }
    scalar::soft_cap(&mut x[n8..], cap);
}

/// `silu` in place (see `super::silu`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn silu(x: &mut [f32]) {
    let n8 = x.len() & !7;
    let p = x.as_mut_ptr();
    let one = _mm256_set1_ps(1.0);
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        let u = _mm256_loadu_ps(p.add(i));
        let e = exp8(_mm256_sub_ps(zero, u));
        _mm256_storeu_ps(p.add(i), _mm256_div_ps(u, _mm256_add_ps(one, e)));
        i += 8;
    }
    scalar::silu(&mut x[n8..]);
}

/// `glu` of one row (see `super::glu_rows`): `out[i] = a[i] · sigmoid(b[i])`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn glu(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n8 = out.len() & !7;
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let one = _mm256_set1_ps(1.0);
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i < n8 {
        let e = exp8(_mm256_sub_ps(zero, _mm256_loadu_ps(pb.add(i))));
        let g = _mm256_div_ps(_mm256_loadu_ps(pa.add(i)), _mm256_add_ps(one, e));
        _mm256_storeu_ps(po.add(i), g);
        i += 8;
    }
    scalar::glu(&a[n8..], &b[n8..], &mut out[n8..]);
}

/// Softmax in place (see `super::softmax`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn softmax(x: &mut [f32]) {
    let n8 = x.len() & !7;
    let p = x.as_mut_ptr();
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n8 {
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
        i += 8;
    }
    let m = x[n8..].iter().copied().fold(hmax(mv), f32::max);
    let mb = _mm256_set1_ps(m);
    let mut sv = _mm256_setzero_ps();
    i = 0;
    while i < n8 {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), mb));
        _mm256_storeu_ps(p.add(i), e);
        sv = _mm256_add_ps(sv, e);
        i += 8;
    }
    let mut s = hsum(sv);
    for v in x[n8..].iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    scale(x, 1.0 / s);
}

/// Dot product, 32 elements per step into four accumulators.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (l, c) in acc.iter_mut().enumerate() {
            let o = i + 8 * l;
            *c = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *c);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i)),
            _mm256_loadu_ps(pb.add(i)),
            acc[0],
        );
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(p, q)| p * q).sum();
    hsum(v) + tail
}

/// `y += alpha · x`; `x.len() == y.len()`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n8 = x.len().min(y.len()) & !7;
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let av = _mm256_set1_ps(alpha);
    let mut i = 0;
    while i < n8 {
        let r = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
        _mm256_storeu_ps(py.add(i), r);
        i += 8;
    }
    scalar::axpy(alpha, &x[n8..], &mut y[n8..]);
}

/// See `super::dot_rows`: the query heads four at a time, each key row loaded once for them.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot_rows(
    q: &[f32],
    m: usize,
    k: &[f32],
    stride: usize,
    n: usize,
    out: &mut [f32],
) {
    let d = q.len() / m;
    let mut i = 0;
    while i < m {
        let (qp, op) = (q.as_ptr().add(i * d), out.as_mut_ptr().add(i * n));
        match m - i {
            1 => dot_rows_m::<1>(qp, d, k.as_ptr(), stride, n, op),
            2 => dot_rows_m::<2>(qp, d, k.as_ptr(), stride, n, op),
            3 => dot_rows_m::<3>(qp, d, k.as_ptr(), stride, n, op),
            _ => dot_rows_m::<4>(qp, d, k.as_ptr(), stride, n, op),
        }
        i += 4;
    }
}

/// `M` query vectors (length `d`, contiguous at `q`) against `n` key rows; output row `i` at
/// `out + i·n`. Two accumulators per head: eight independent sums for four heads.
#[inline(always)]
unsafe fn dot_rows_m<const M: usize>(
    q: *const f32,
    d: usize,
    k: *const f32,
    stride: usize,
    n: usize,
    out: *mut f32,
) {
    let d16 = d & !15;
    let d8 = d & !7;
    for j in 0..n {
        let kj = k.add(j * stride);
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        let mut c = 0;
        while c < d16 {
            let k0 = _mm256_loadu_ps(kj.add(c));
            let k1 = _mm256_loadu_ps(kj.add(c + 8));
            for (h, a) in acc.iter_mut().enumerate() {
                let qh = q.add(h * d + c);
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qh), k0, a[0]);
                a[1] = _mm256_fmadd_ps(_mm256_loadu_ps(qh.add(8)), k1, a[1]);
            }
            c += 16;
        }
        if c < d8 {
            let k0 = _mm256_loadu_ps(kj.add(c));
            for (h, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(h * d + c)), k0, a[0]);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            let mut s = hsum(_mm256_add_ps(a[0], a[1]));
            for e in d8..d {
                s += *q.add(h * d + e) * *kj.add(e);
            }
            *out.add(h * n + j) = s;
        }
    }
}

/// See `super::axpy_rows`: the value rows in blocks of eight; per 16 output values of four
/// heads, the block's rows are summed in registers and stored once.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy_rows(
    a: &[f32],
    m: usize,
    v: &[f32],
    stride: usize,
    n: usize,
    y: &mut [f32],
) {
    let d = y.len() / m;
    let mut i = 0;
    while i < m {
        let (ap, yp) = (a.as_ptr().add(i * n), y.as_mut_ptr().add(i * d));
        match m - i {
            1 => axpy_rows_m::<1>(ap, n, v.as_ptr(), stride, d, yp),
            2 => axpy_rows_m::<2>(ap, n, v.as_ptr(), stride, d, yp),
            3 => axpy_rows_m::<3>(ap, n, v.as_ptr(), stride, d, yp),
            _ => axpy_rows_m::<4>(ap, n, v.as_ptr(), stride, d, yp),
        }
        i += 4;
    }
}

/// Value rows summed per pass over the output in [`axpy_rows`].
const ROW_BLOCK: usize = 8;

/// `M` heads: weights of head `h` at `a + h·n`, output at `y + h·d`.
#[inline(always)]
unsafe fn axpy_rows_m<const M: usize>(
    a: *const f32,
    n: usize,
    v: *const f32,
    stride: usize,
    d: usize,
    y: *mut f32,
) {
    let d16 = d & !15;
    let mut j0 = 0;
    while j0 < n {
        let j1 = (j0 + ROW_BLOCK).min(n);
        let mut c = 0;
        while c < d16 {
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            for (h, s) in acc.iter_mut().enumerate() {
                s[0] = _mm256_loadu_ps(y.add(h * d + c));
                s[1] = _mm256_loadu_ps(y.add(h * d + c + 8));
            }
            for j in j0..j1 {
                let vj = v.add(j * stride + c);
                let (v0, v1) = (_mm256_loadu_ps(vj), _mm256_loadu_ps(vj.add(8)));
                for (h, s) in acc.iter_mut().enumerate() {
                    let w = _mm256_broadcast_ss(&*a.add(h * n + j));
                    s[0] = _mm256_fmadd_ps(w, v0, s[0]);
                    s[1] = _mm256_fmadd_ps(w, v1, s[1]);
                }
            }
            for (h, s) in acc.iter().enumerate() {
                _mm256_storeu_ps(y.add(h * d + c), s[0]);
                _mm256_storeu_ps(y.add(h * d + c + 8), s[1]);
            }
            c += 16;
        }
        for h in 0..M {
            for j in j0..j1 {
                let w = *a.add(h * n + j);
                for e in d16..d {
                    *y.add(h * d + e) += w * *v.add(j * stride + e);
                }
            }
        }
        j0 = j1;
    }
}

/// `x *= s`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn scale(x: &mut [f32], s: f32) {
    let n8 = x.len() & !7;
    let p = x.as_mut_ptr();
    let sv = _mm256_set1_ps(s);
    let mut i = 0;
    while i < n8 {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), sv));
        i += 8;
    }
    scalar::scale(&mut x[n8..], s);
}

/// Σ x².
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn sum_squares(x: &[f32]) -> f32 {
    dot(x, x)
}

#[cfg(test)]
pub(super) mod test_access {
    use std::arch::x86_64::*;

    /// `exp8` on 8 values, for the tests.
    pub fn exp8(v: [f32; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        if !crate::cpu::has_avx2() {
            v.iter().zip(&mut out).for_each(|(a, o)| *o = a.exp());
            return out;
        }
        // SAFETY: AVX2/FMA detected just above; loads and stores stay within the arrays.
        unsafe { helper(&v, &mut out) };
        out
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn helper(v: &[f32; 8], out: &mut [f32; 8]) {
        _mm256_storeu_ps(out.as_mut_ptr(), super::exp8(_mm256_loadu_ps(v.as_ptr())));
    }
}
