//! The gated FFN with optional Gaussian top-k activation sparsity (spec §3.4 g).

use gemma3n_compute::cpu::{matmul, matmul_many, ops, sparse};

use super::weights::LayerWeights;

/// Φ⁻¹(p) as the reference computes it in float32: `erfinv(2p − 1) · √2`.
pub fn normal_icdf_f32(p: f32) -> f32 {
    let a = 2.0f32 * p - 1.0;
    let e = erfinv(a as f64) as f32;
    e * std::f32::consts::SQRT_2
}

/// erf by its Taylor series (accurate to ~1e-14 for |x| < 3).
fn erf(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    let x2 = x * x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) {
        n += 1.0;
        term *= -x2 / n;
        sum += term / (2.0 * n + 1.0);
        if n > 200.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// erfinv by Newton's method on erf (|y| < erf(3) ≈ 0.99998).
fn erfinv(y: f64) -> f64 {
    let mut x = 0.0f64;
    for _ in 0..100 {
        let err = erf(x) - y;
        let step = err / (2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp());
        x -= step;
        if step.abs() < 1e-16 {
            break;
        }
    }
    x
}

/// Up to this many rows, sparse layers read only the active rows of `up` and `downᵀ`
/// (each row has its own active set; beyond a few rows their union is most of the matrix).
pub const SPARSE_MAX_ROWS: usize = 4;

/// `h + RMSNorm(down(gelu(sparse(gate(y))) ⊙ up(y)))` is assembled by the caller; this
/// returns `down(...)` for `n` rows of the normalised input `y`, using the first `f` hidden
/// units (the nested MatFormer FFN: prefix rows of gate/up, prefix columns of down, no
/// copy). `cutoff_z` is Φ⁻¹ of the layer's sparsity, or `None` for a dense layer.
pub fn ffn(w: &LayerWeights, y: &[f32], n: usize, f: usize, cutoff_z: Option<f32>) -> Vec<f32> {
    let d = w.down_proj.rows();
    let mut g = vec![0f32; n * f];
    let mut u = Vec::new();
    let (gate, up) = (w.gate_proj.row_prefix(f), w.up_proj.row_prefix(f));
    if cutoff_z.is_none() {
        // Dense layer: gate and up in one parallel pass.
        u.resize(n * f, 0.0);
        matmul_many(y, n, &[&gate, &up], &mut [&mut g, &mut u]);
    } else {
        matmul(y, n, &gate, &mut g);
    }
    if let Some(z) = cutoff_z {
        for row in g.chunks_exact_mut(f) {
            let mean = row.iter().sum::<f32>() / f as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / f as f32;
            let cutoff = mean + var.sqrt() * z;
            row.iter_mut().for_each(|v| *v = (*v - cutoff).max(0.0));
        }
        if let (Some(down_t), true) = (&w.down_proj_t, n <= SPARSE_MAX_ROWS) {
            return sparse_rows(w, down_t, y, &g, n, f, d);
        }
    }
    if cutoff_z.is_some() {
        // A sparse layer over more rows than the sparse path takes: up, densely.
        u.resize(n * f, 0.0);
        matmul(y, n, &up, &mut u);
    }
    ops::gelu_tanh_rows(&mut g, f);
    g.iter_mut().zip(&u).for_each(|(g, u)| *g *= u);
    let mut out = vec![0f32; n * d];
    matmul(&g, n, &w.down_proj.col_prefix(f), &mut out);
    out
}

/// The exact sparse path: gelu(0) = 0, so hidden units whose gate is 0 after the top-k
/// contribute nothing; only the other units' rows of `up` and `downᵀ` are read.
fn sparse_rows(
    w: &LayerWeights,
    down_t: &gemma3n_compute::Matrix,
    y: &[f32],
    g: &[f32],
    n: usize,
    f: usize,
    d: usize,
) -> Vec<f32> {
    let dm = y.len() / n;
    let up = w.up_proj.row_prefix(f);
    let down_t = down_t.row_prefix(f);
    let mut out = vec![0f32; n * d];
    for t in 0..n {
        let gt = &g[t * f..(t + 1) * f];
        let active: Vec<usize> = (0..f).filter(|&i| gt[i] > 0.0).collect();
        let mut u = vec![0f32; active.len()];
        sparse::gather_dot(&up, &active, &y[t * dm..(t + 1) * dm], &mut u);
        let mut a: Vec<f32> = active.iter().map(|&i| gt[i]).collect();
        ops::gelu_tanh(&mut a);
        a.iter_mut().zip(&u).for_each(|(a, u)| *a *= u);
        sparse::weighted_row_sum(&down_t, &active, &a, &mut out[t * d..(t + 1) * d]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icdf_matches_known_quantiles() {
        // Standard normal quantiles (tables): z(0.95) = 1.6448536269, z(0.9) = 1.2815515655.
        assert_eq!(normal_icdf_f32(0.95), 1.644_853_6);
        assert!((normal_icdf_f32(0.9) - 1.281_551_6).abs() < 2e-7);
        assert!((normal_icdf_f32(0.5)).abs() < 1e-7);
        assert!((erf(1.0) - 0.842_700_792_949_714_9).abs() < 1e-14);
    }
}
