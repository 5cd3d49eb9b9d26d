//! AltUp: the A residual streams (spec §3.3, §3.4 a/b/h, §3.5).
//!
//! Streams are stored as `A` buffers of `n x D` (one row per active token).

use gemma3n_compute::cpu::{matmul, ops};
use gemma3n_compute::Matrix;

use super::weights::AltUpWeights;

/// Floor of the mean square when matching magnitudes (HF `epsilon_tensor`).
const MAGNITUDE_EPS: f32 = 1e-5;

/// Router `tanh(RMSNorm(x) · (1/D) · Rᵀ)` for `n` rows: returns `n x A`.
fn router(w: &AltUpWeights, x: &[f32], n: usize, d: usize, eps: f32) -> Vec<f32> {
    let mut xn = x.to_vec();
    ops::rms_norm_rows(&mut xn, d, Some(&w.router_norm), eps);
    let s = 1.0 / d as f32;
    xn.iter_mut().for_each(|v| *v *= s);
    let a = w.modality_router.rows();
    let mut m = vec![0f32; n * a];
    matmul(&xn, n, &w.modality_router, &mut m);
    m.iter_mut().for_each(|v| *v = v.tanh());
    m
}

/// Predict: `p^i = s^i + Σ_j C[i][j]·s^j` with `C = W_p · ρ(s^0)` reshaped `[A, A]`.
pub fn predict(w: &AltUpWeights, s: &[Vec<f32>], n: usize, d: usize, eps: f32) -> Vec<Vec<f32>> {
    let a = s.len();
    let m = router(w, &s[0], n, d, eps);
    let mut p: Vec<Vec<f32>> = s.to_vec();
    for t in 0..n {
        let mt = &m[t * a..(t + 1) * a];
        // c[4i + j] = Σ_q W_p[4i + j][q] · m[q]
        let c: Vec<f32> = (0..a * a)
            .map(|r| (0..a).map(|q| w.prediction_coefs[r * a + q] * mt[q]).sum())
            .collect();
        for i in 0..a {
            let out = &mut p[i][t * d..(t + 1) * d];
            for j in 0..a {
                ops::axpy(c[i * a + j], &s[j][t * d..(t + 1) * d], out);
            }
        }
    }
    p
}

/// Correct: `c^i = p^i + β_i · (h2 − p^0)` with `β = 1 + W_c · ρ(h2)`. Updates `p` in place.
pub fn correct(w: &AltUpWeights, p: &mut [Vec<f32>], h2: &[f32], n: usize, d: usize, eps: f32) {
    let a = p.len();
    let m = router(w, h2, n, d, eps);
    for t in 0..n {
        let mt = &m[t * a..(t + 1) * a];
        let delta: Vec<f32> = h2[t * d..(t + 1) * d]
            .iter()
            .zip(&p[0][t * d..(t + 1) * d])
            .map(|(h, p0)| h - p0)
            .collect();
        for (i, pi) in p.iter_mut().enumerate() {
            let beta: f32 = (0..a)
                .map(|q| w.correction_coefs[i * a + q] * mt[q])
                .sum::<f32>()
                + 1.0;
            ops::axpy(beta, &delta, &mut pi[t * d..(t + 1) * d]);
        }
    }
}

/// `y · r / sqrt(max(mean(y²), 1e-5))` per row, with `r = sqrt(mean(x²))` of the
/// matching row of `reference` (magnitude matching of §3.3 and §3.5).
fn match_magnitude(y: &mut [f32], reference: &[f32], d: usize) {
    for (yr, xr) in y.chunks_exact_mut(d).zip(reference.chunks_exact(d)) {
        let target = ops::mean_square(xr).sqrt();
        let new = ops::mean_square(yr).max(MAGNITUDE_EPS).sqrt();
        yr.iter_mut().for_each(|v| *v = *v * target / new);
    }
}

/// Initial streams from the embeddings `e` (`n x D`): `s^0 = e`, `s^k` = projected and
/// magnitude-matched.
pub fn init_streams(projections: &[Matrix], e: &[f32], n: usize, d: usize) -> Vec<Vec<f32>> {
    let mut s = vec![e.to_vec()];
    for proj in projections {
        let mut y = vec![0f32; n * d];
        matmul(e, n, proj, &mut y);
        match_magnitude(&mut y, e, d);
        s.push(y);
    }
    s
}

/// Final merge: project streams 1.. back, match magnitudes to stream 0, average.
pub fn unembed_streams(unembed: &[Matrix], s: &[Vec<f32>], n: usize, d: usize) -> Vec<f32> {
    let mut acc = s[0].clone();
    for (k, proj) in unembed.iter().enumerate() {
        let mut y = vec![0f32; n * d];
        matmul(&s[k + 1], n, proj, &mut y);
        match_magnitude(&mut y, &s[0], d);
        acc.iter_mut().zip(&y).for_each(|(a, y)| *a += y);
    }
    let inv = s.len() as f32;
    acc.iter_mut().for_each(|v| *v /= inv);
    acc
}
