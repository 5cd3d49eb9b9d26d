//! GGUF/ggml block formats: dequantization (exact to the format) and quantization from f32.
//!
//! Layouts (little-endian, `d`/`dmin` are f16 unless noted):
//!
//! | format | elements | bytes | layout |
//! |---|---|---|---|
//! | Q8_0 | 32 | 34 | `d`, `qs[32]` (i8); `x = d·q` |
//! | Q4_0 | 32 | 18 | `d`, `qs[16]`: element `l` in the low nibble of `qs[l]`, element `l + 16` in its high nibble; `x = d·(q - 8)` |
//! | Q4_K | 256 | 144 | `d`, `dmin`, `scales[12]` (8 x 6-bit scale + 8 x 6-bit min), `qs[128]`: in each 64-element chunk `c`, element `64c + l` is the low and `64c + 32 + l` the high nibble of `qs[32c + l]`; sub-block `s` (32 elements): `x = d·sc[s]·q - dmin·m[s]` |
//! | Q5_K | 256 | 176 | `d`, `dmin`, `scales[12]`, `qh[32]`, `qs[128]`: as Q4_K, plus bit `s` of `qh[l]` is bit 4 of element `l` of sub-block `s` |
//! | Q6_K | 256 | 210 | `ql[128]`, `qh[64]`, `scales[16]` (i8), `d`: sub-block of 16 elements `s`: `x = d·sc[s]·(q - 32)` |
//! | Q8_K | 256 | 292 | `d` (f32), `qs[256]` (i8), `bsums[16]` (i16 sums of 16 `q`); `x = d·q` |
//!
//! Scale packing of Q4_K/Q5_K (`b` = `scales`): for `j < 4`, `sc[j] = b[j] & 63` and
//! `m[j] = b[j + 4] & 63`; for `j >= 4`, `sc[j] = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4` and
//! `m[j] = (b[j + 4] >> 4) | (b[j] >> 6) << 4`.
//!
//! Dequantization evaluates the same f32 operations in the same order as ggml (and the `gguf`
//! Python package), so it reproduces their values bit for bit. Q8_0 and Q4_0 quantization is
//! bit-identical to ggml's reference quantizer; the K-quants use their own scale search (see
//! [`kquant`]), writing valid blocks that any GGUF reader decodes to our values.

mod kquant;

use crate::dtype::{f16_to_f32, f32_to_f16, DType};

pub(crate) use kquant::{quantize_q4_k, quantize_q5_k, quantize_q6_k};

/// Elements per block of the K-quants.
pub const QK_K: usize = 256;
/// Elements per block of Q8_0 / Q4_0.
pub const QK: usize = 32;

#[inline(always)]
pub(crate) fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline(always)]
fn wr_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
}

/// Unpacks the 6-bit scales and mins of a Q4_K/Q5_K block (`b` = its 12 scale bytes).
#[inline(always)]
pub fn unpack_scales_mins(b: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = b[j] & 63;
        m[j] = b[j + 4] & 63;
        sc[j + 4] = (b[j + 8] & 15) | ((b[j] >> 6) << 4);
        m[j + 4] = (b[j + 8] >> 4) | ((b[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// Packs 6-bit scales and mins (each < 64) into the 12 scale bytes of a Q4_K/Q5_K block.
pub(crate) fn pack_scales_mins(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut b = [0u8; 12];
    for j in 0..4 {
        b[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        b[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        b[j + 8] = (sc[j + 4] & 15) | ((m[j + 4] & 15) << 4);
    }
    b
}

/// Dequantizes `out.len()` elements (a whole number of blocks) of block format `dtype` from
/// `bytes`.
///
/// # Panics
/// If `dtype` is not a block format, `out.len()` is not a multiple of its block size, or
/// `bytes` is too short.
pub fn dequantize_row(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let bs = dtype.block_size();
    let bb = dtype.block_bytes();
    assert!(
        dtype.is_quantized(),
        "dequantize_row: {dtype} is not a block format"
    );
    let need = dtype.row_bytes(out.len());
    assert!(
        bytes.len() >= need,
        "dequantize_row: {} bytes, need {need}",
        bytes.len()
    );
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        match dtype {
            DType::Q8_0 => {
                let d = rd_f16(b, 0);
                for (o, &q) in y.iter_mut().zip(&b[2..34]) {
                    *o = (q as i8) as f32 * d;
                }
            }
            DType::Q4_0 => {
                let d = rd_f16(b, 0);
                for l in 0..16 {
                    let q = b[2 + l];
                    y[l] = d * ((q & 15) as i32 - 8) as f32;
                    y[l + 16] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
            DType::Q4_K | DType::Q5_K => {
                let d = rd_f16(b, 0);
                let dmin = rd_f16(b, 2);
                let (sc, m) = unpack_scales_mins(&b[4..16]);
                let (qh, qs) = if dtype == DType::Q5_K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for s in 0..8 {
                    let ds = d * sc[s] as f32;
                    let dm = dmin * m[s] as f32;
                    let c = s / 2;
                    let shift = 4 * (s % 2);
                    for l in 0..32 {
                        let mut q = (qs[32 * c + l] >> shift) & 15;
                        if let Some(h) = qh {
                            q |= ((h[l] >> s) & 1) << 4;
                        }
                        y[32 * s + l] = ds * q as f32 - dm;
                    }
                }
            }
            DType::Q6_K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = rd_f16(b, 208);
                for e in 0..QK_K {
                    let q = q6_at(ql, qh, e);
                    let ds = d * (sc[e / 16] as i8) as f32;
                    y[e] = ds * (q as i32 - 32) as f32;
                }
            }
            DType::Q8_K => {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                for (o, &q) in y.iter_mut().zip(&b[4..260]) {
                    *o = d * (q as i8) as f32;
                }
            }
            _ => unreachable!(),
        }
    }
}

/// The 6-bit value (0..63) of element `e` of a Q6_K block.
#[inline(always)]
pub(crate) fn q6_at(ql: &[u8], qh: &[u8], e: usize) -> u8 {
    let half = e / 128;
    let i = e % 128;
    let quarter = i / 32;
    let l = i % 32;
    let low_byte = ql[64 * half + 32 * (quarter % 2) + l];
    let low = if quarter >= 2 {
        low_byte >> 4
    } else {
        low_byte & 15
    };
    let high = (qh[32 * half + l] >> (2 * quarter)) & 3;
    low | (high << 4)
}

/// Quantizes `x` (a whole number of blocks) to block format `dtype` into `out`
/// (`dtype.row_bytes(x.len())` bytes).
///
/// # Panics
/// If `dtype` is not a block format or the lengths do not match.
pub fn quantize_row(dtype: DType, x: &[f32], out: &mut [u8]) {
    assert!(
        dtype.is_quantized(),
        "quantize_row: {dtype} is not a block format"
    );
    assert_eq!(
        out.len(),
        dtype.row_bytes(x.len()),
        "quantize_row: output length"
    );
    let bs = dtype.block_size();
    let bb = dtype.block_bytes();
    for (xb, b) in x.chunks_exact(bs).zip(out.chunks_exact_mut(bb)) {
        match dtype {
            DType::Q8_0 => quantize_q8_0(xb, b),
            DType::Q4_0 => quantize_q4_0(xb, b),
            DType::Q4_K => quantize_q4_k(xb, b),
            DType::Q5_K => quantize_q5_k(xb, b),
            DType::Q6_K => quantize_q6_k(xb, b),
            DType::Q8_K => quantize_q8_k(xb, b),
            _ => unreachable!(),
        }
    }
}

/// One Q8_0 block: `d = max|x| / 127`, `q = round(x / d)` (ggml's reference, bit for bit).
fn quantize_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    wr_f16(b, 0, d);
    for (o, &v) in b[2..34].iter_mut().zip(x) {
        *o = ((v * id).round() as i8) as u8;
    }
}

/// One Q4_0 block: `d = -m / 8` for the element `m` of largest magnitude (the first one on
/// ties), `q = min(15, trunc(x / d + 8.5))` (ggml's reference, bit for bit).
fn quantize_q4_0(x: &[f32], b: &mut [u8]) {
    let mut mx = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            mx = v;
        }
    }
    let d = mx / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    wr_f16(b, 0, d);
    let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
    for l in 0..16 {
        b[2 + l] = q(x[l]) | (q(x[l + 16]) << 4);
    }
}

/// One Q8_K block: `d = max|x| / 127`, `q = round(x / d)` in -127..=127, and the sums of 16.
pub(crate) fn quantize_q8_k(x: &[f32], b: &mut [u8]) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    b[0..4].copy_from_slice(&d.to_le_bytes());
    for g in 0..16 {
        let mut s = 0i16;
        for l in 0..16 {
            let q = (x[16 * g + l] * id).round().clamp(-127.0, 127.0) as i8;
            b[4 + 16 * g + l] = q as u8;
            s += q as i16;
        }
        b[260 + 2 * g..262 + 2 * g].copy_from_slice(&s.to_le_bytes());
    }
}
