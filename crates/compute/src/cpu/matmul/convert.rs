//! Widening a row of stored weights (f32, bf16, f16; block formats are dequantized) to f32.
//!
//! Used by the batched path to turn a panel of weight rows into an f32 scratch buffer, and by
//! the scalar fallback of the decode path.

use crate::dtype::{bf16_to_f32, f16_to_f32, DType};

/// Widens `out.len()` elements of `dtype` read from `bytes` (little-endian) into `out`.
/// `bytes` must hold at least `dtype.row_bytes(out.len())` bytes (for block formats,
/// `out.len()` is a multiple of the block size).
pub(crate) fn widen(dtype: DType, bytes: &[u8], out: &mut [f32], simd: bool) {
    assert!(
        bytes.len() >= dtype.row_bytes(out.len()),
        "widen: source too short"
    );
    if dtype.is_quantized() {
        crate::quant::dequantize_row(dtype, bytes, out);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd && super::has_avx2() {
        // SAFETY: the features the function is compiled for were detected at run time, and
        // `bytes` holds `out.len()` elements (asserted above).
        unsafe { widen_avx2(dtype, bytes.as_ptr(), out) };
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if simd {
        // SAFETY: NEON is part of aarch64, and `bytes` holds `out.len()` elements
        // (asserted above).
        unsafe { super::gemv_neon::widen_neon(dtype, bytes.as_ptr(), out) };
        return;
    }
    let _ = simd;
    widen_scalar(dtype, bytes, out);
}

/// Portable version of [`widen`].
pub(crate) fn widen_scalar(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        q => crate::quant::dequantize_row(q, bytes, out),
    }
}

/// AVX2/F16C version of [`widen`], 8 elements per step.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `src` must be readable for
/// `out.len() * dtype.size()` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_avx2(dtype: DType, src: *const u8, out: &mut [f32]) {
    use super::gemv::x86::load8;
    use super::gemv::{BF16, F16, F32};
    use std::arch::x86_64::_mm256_storeu_ps;
    let n = out.len();
    let n8 = n & !7;
    let es = dtype.size();
    let dst = out.as_mut_ptr();
    let mut i = 0;
    // SAFETY (all loads/stores below): i + 8 <= n8 <= n, so both the 8 source elements and
    // the 8 destination floats are in bounds; loads and stores are unaligned.
    match dtype {
        DType::F32 => {
            while i < n8 {
                _mm256_storeu_ps(dst.add(i), load8::<F32>(src.add(i * es)));
                i += 8;
            }
        }
        DType::BF16 => {
            while i < n8 {
                _mm256_storeu_ps(dst.add(i), load8::<BF16>(src.add(i * es)));
                i += 8;
            }
        }
        DType::F16 => {
            while i < n8 {
                _mm256_storeu_ps(dst.add(i), load8::<F16>(src.add(i * es)));
                i += 8;
            }
        }
        q => unreachable!("widen_avx2: block format {q}"),
    }
    let tail = std::slice::from_raw_parts(src.add(n8 * es), (n - n8) * es);
    widen_scalar(dtype, tail, &mut out[n8..]);
}
