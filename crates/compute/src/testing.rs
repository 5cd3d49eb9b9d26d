//! Deterministic test inputs shared by the crate's unit and integration tests (not part of
//! the engine's API).

use crate::DType;

/// The block formats of the integer matmul kernels.
pub const QUANT_DTYPES: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// `n` pseudo-random values in [-1, 1) from `seed` (xorshift64, 24-bit mantissas).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
