//! LAuReL: the low-rank residual side path (spec §3.4 d).

use gemma3n_compute::cpu::{matmul, ops};

use super::weights::LayerWeights;

/// `x + RMSNorm(x · W_Lᵀ · W_Rᵀ)` for `n` rows of the normalised input `x`.
pub fn laurel(w: &LayerWeights, x: &[f32], n: usize, d: usize, eps: f32) -> Vec<f32> {
    let r = w.laurel_left.rows();
    let mut left = vec![0f32; n * r];
    matmul(x, n, &w.laurel_left, &mut left);
    let mut out = vec![0f32; n * d];
    matmul(&left, n, &w.laurel_right, &mut out);
    ops::rms_norm_rows(&mut out, d, Some(&w.laurel_norm), eps);
    out.iter_mut().zip(x).for_each(|(o, x)| *o += x);
    out
}
