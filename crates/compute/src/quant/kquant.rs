//! Quantizers of the K-quant formats (Q4_K, Q5_K, Q6_K).
//!
//! Each sub-block's scale (and min) is chosen by a small search: several candidate inverse
//! scales around `levels / range` are tried, each rounding is refitted by weighted least
//! squares, and the candidate with the smallest weighted squared error wins. The weights favour
//! large-magnitude elements (`rms + |x|` for Q4_K/Q5_K, `x²` for Q6_K), the same idea ggml's
//! reference quantizer uses. The 6-bit / 8-bit block-level scales are then quantized, and the
//! elements re-rounded against the scales actually stored.

use super::{pack_scales_mins, wr_f16, QK_K};
use crate::dtype::f16_to_f32;
use crate::dtype::f32_to_f16;

/// `y.round()` (half away from zero) without the libm call: the searches below round millions
/// of candidates, and without SSE4.1 in the baseline target `f32::round` is a function call.
/// Exact for |y| < 2^30; larger magnitudes (callers clamp to a few dozen levels) saturate.
#[inline(always)]
fn round(y: f32) -> f32 {
    let y = y.clamp(-1e9, 1e9);
    let i = y as i32;
    let f = y - i as f32;
    (i + (f >= 0.5) as i32 - (f <= -0.5) as i32) as f32
}

/// Rounds through f16 (the value a stored f16 scale decodes to).
fn via_f16(v: f32) -> f32 {
    f16_to_f32(f32_to_f16(v))
}

/// Best `(scale, min)` with `x ≈ scale · q + min`, `q` in `0..=nmax`, `min <= 0`, for one
/// sub-block under weights `w`.
fn fit_scale_min(x: &[f32], w: &[f32], nmax: f32) -> (f32, f32) {
    let mut lo = x.iter().fold(f32::INFINITY, |a, &v| a.min(v)).min(0.0);
    let hi = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if hi <= lo {
        return (0.0, lo);
    }
    let err_of = |scale: f32, mn: f32, iscale: f32| -> f32 {
        x.iter()
            .zip(w)
            .map(|(&v, &wi)| {
                let q = round(iscale * (v - mn)).clamp(0.0, nmax);
                let e = scale * q + mn - v;
                wi * e * e
            })
            .sum()
    };
    let mut best_scale = (hi - lo) / nmax;
    let mut best_min = lo;
    let mut best_err = err_of(best_scale, lo, 1.0 / best_scale);
    for step in 0..=20 {
        let iscale = (nmax - 1.0 + 0.1 * step as f32) / (hi - lo);
        let (mut sw, mut sq, mut sqq, mut sx, mut sqx) = (0f32, 0f32, 0f32, 0f32, 0f32);
        for (&v, &wi) in x.iter().zip(w) {
            let q = round(iscale * (v - lo)).clamp(0.0, nmax);
            sw += wi;
            sq += wi * q;
            sqq += wi * q * q;
            sx += wi * v;
            sqx += wi * q * v;
        }
        let det = sw * sqq - sq * sq;
        if det <= 0.0 {
            continue;
        }
        let mut scale = (sw * sqx - sq * sx) / det;
        let mut mn = (sqq * sx - sq * sqx) / det;
        if mn > 0.0 {
            mn = 0.0;
            scale = sqx / sqq;
        }
        if scale <= 0.0 {
            continue;
        }
        let err = err_of(scale, mn, 1.0 / scale);
        if err < best_err {
            best_err = err;
            best_scale = scale;
            best_min = mn;
        }
    }
    lo = best_min;
    (best_scale, lo)
}

/// Q4_K (`nmax` 15) or Q5_K (`nmax` 31): 6-bit scales and mins, `q` per element.
fn quantize_scale_min(x: &[f32], nmax: f32) -> (f32, f32, [u8; 8], [u8; 8], [u8; QK_K]) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for s in 0..8 {
        let xs = &x[32 * s..32 * s + 32];
        let rms = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let w: Vec<f32> = xs.iter().map(|v| rms + v.abs()).collect();
        let (sc, mn) = fit_scale_min(xs, &w, nmax);
        scales[s] = sc;
        mins[s] = -mn;
    }
    let max_scale = scales.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = mins.iter().fold(0f32, |a, &v| a.max(v));
    let d = via_f16(max_scale / 63.0);
    let dmin = via_f16(max_min / 63.0);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for s in 0..8 {
        if d > 0.0 {
            sc[s] = round(scales[s] / d).clamp(0.0, 63.0) as u8;
        }
        if dmin > 0.0 {
            m[s] = round(mins[s] / dmin).clamp(0.0, 63.0) as u8;
        }
    }
    let mut q = [0u8; QK_K];
    for s in 0..8 {
        let ds = d * sc[s] as f32;
        let dm = dmin * m[s] as f32;
        if ds == 0.0 {
            continue;
        }
        for l in 0..32 {
            let v = x[32 * s + l];
            q[32 * s + l] = round((v + dm) / ds).clamp(0.0, nmax) as u8;
        }
    }
    (d, dmin, sc, m, q)
}

/// One Q4_K block.
pub(crate) fn quantize_q4_k(x: &[f32], b: &mut [u8]) {
    let (d, dmin, sc, m, q) = quantize_scale_min(x, 15.0);
    wr_f16(b, 0, d);
    wr_f16(b, 2, dmin);
    b[4..16].copy_from_slice(&pack_scales_mins(&sc, &m));
    for c in 0..4 {
        for l in 0..32 {
            b[16 + 32 * c + l] = q[64 * c + l] | (q[64 * c + 32 + l] << 4);
        }
    }
}

/// One Q5_K block.
pub(crate) fn quantize_q5_k(x: &[f32], b: &mut [u8]) {
    let (d, dmin, sc, m, q) = quantize_scale_min(x, 31.0);
    wr_f16(b, 0, d);
    wr_f16(b, 2, dmin);
    b[4..16].copy_from_slice(&pack_scales_mins(&sc, &m));
    let (qh, qs) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for c in 0..4 {
        for l in 0..32 {
            let (a, h) = (q[64 * c + l], q[64 * c + 32 + l]);
            qs[32 * c + l] = (a & 15) | ((h & 15) << 4);
            qh[l] |= ((a >> 4) << (2 * c)) | ((h >> 4) << (2 * c + 1));
        }
    }
}

/// Best scale with `x ≈ scale · q`, `q` in `-32..=31`, for one 16-element sub-block.
fn fit_scale_q6(x: &[f32]) -> f32 {
    let mut mx = 0f32;
    for &v in x {
        if v.abs() > mx.abs() {
            mx = v;
        }
    }
    if mx == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, 0f32);
    for step in -9..=9 {
        let iscale = -(32.0 + 0.1 * step as f32) / mx;
        let (mut sqx, mut sqq) = (0f32, 0f32);
        for &v in x {
            let q = round(iscale * v).clamp(-32.0, 31.0);
            let w = v * v;
            sqx += w * q * v;
            sqq += w * q * q;
        }
        if sqq <= 0.0 {
            continue;
        }
        let scale = sqx / sqq;
        let err: f32 = x
            .iter()
            .map(|&v| {
                let q = round(v / scale).clamp(-32.0, 31.0);
                let e = scale * q - v;
                v * v * e * e
            })
            .sum();
        if err < best.0 {
            best = (err, scale);
        }
    }
    best.1
}

/// One Q6_K block.
pub(crate) fn quantize_q6_k(x: &[f32], b: &mut [u8]) {
    let mut scales = [0f32; 16];
    for (s, sc) in scales.iter_mut().enumerate() {
        *sc = fit_scale_q6(&x[16 * s..16 * s + 16]);
    }
    // The scale of largest magnitude maps to -128.
    let mut msc = 0f32;
    for &s in &scales {
        if s.abs() > msc.abs() {
            msc = s;
        }
    }
    let d = via_f16(msc / -128.0);
    let mut isc = [0i8; 16];
    if d != 0.0 {
        for s in 0..16 {
            isc[s] = round(scales[s] / d).clamp(-128.0, 127.0) as i8;
        }
    }
    let mut q = [32u8; QK_K];
    for s in 0..16 {
        let ds = d * isc[s] as f32;
        if ds == 0.0 {
            continue;
        }
        for l in 0..16 {
            let v = x[16 * s + l];
            q[16 * s + l] = (round(v / ds).clamp(-32.0, 31.0) + 32.0) as u8;
        }
    }
    let (ql, rest) = b.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for half in 0..2 {
        let qq = &q[128 * half..128 * half + 128];
        for l in 0..32 {
            ql[64 * half + l] = (qq[l] & 15) | ((qq[l + 64] & 15) << 4);
            ql[64 * half + 32 + l] = (qq[l + 32] & 15) | ((qq[l + 96] & 15) << 4);
            qh[32 * half + l] = (qq[l] >> 4)
                | ((qq[l + 32] >> 4) << 2)
                | ((qq[l + 64] >> 4) << 4)
                | ((qq[l + 96] >> 4) << 6);
        }
    }
    for s in 0..16 {
        rest[s] = isc[s] as u8;
    }
    wr_f16(rest, 16, d);
}

#[cfg(test)]
mod round_tests {
    #[test]
    fn fast_round_equals_f32_round() {
        let mut vals: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.25).collect();
        vals.extend((-1000..1000).map(|i| i as f32 * 0.013_7 + 0.000_1));
        vals.extend([
            0.499_999_97,
            -0.499_999_97,
            0.5,
            -0.5,
            1e6 + 0.5,
            -0.0,
            63.5,
        ]);
        for v in vals {
            assert_eq!(super::round(v), v.round(), "{v}");
        }
    }
}
