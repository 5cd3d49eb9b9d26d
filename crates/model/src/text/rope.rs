//! Rotary position embedding, half-split ("rotate_half") style (spec §4.3).

/// Inverse frequencies `1 / θ^(2i/d)`, computed in f32 as the reference does.
pub fn inv_freq(theta: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

/// Rotates one head vector `x` (length d) in place for absolute position `pos`.
pub fn apply(x: &mut [f32], pos: usize, inv_freq: &[f32]) {
    let h = inv_freq.len();
    debug_assert_eq!(x.len(), 2 * h);
    let p = pos as f32;
    for i in 0..h {
        // The angle is an f32 product, cos/sin in f32 (matches the reference tables).
        let (s, c) = (p * inv_freq[i]).sin_cos();
        let (a, b) = (x[i], x[i + h]);
        x[i] = a * c - b * s;
        x[i + h] = b * c + a * s;
    }
}
