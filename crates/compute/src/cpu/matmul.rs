//! `out = x · Wᵀ` for f32 activations and a weight `Matrix` of any stored dtype.

use crate::matrix::Matrix;

/// `out[t, n] = Σ_k x[t, k] · w[n, k]` for `t` rows of `x` (each `w.cols()` long).
/// `out` has `t * w.rows()` elements and is overwritten.
pub fn matmul(x: &[f32], t: usize, w: &Matrix, out: &mut [f32]) {
    let k = w.cols();
    let n = w.rows();
    assert_eq!(x.len(), t * k, "matmul: x length");
    assert_eq!(out.len(), t * n, "matmul: out length");
    let mut row = vec![0f32; k];
    for j in 0..n {
        w.row_to_f32(j, &mut row);
        for i in 0..t {
            let xi = &x[i * k..(i + 1) * k];
            out[i * n + j] = xi.iter().zip(&row).map(|(a, b)| a * b).sum();
        }
    }
}
