//! Deterministic pseudo-random vision tower weights, the same values that
//! `tools/reference/make_vision_fixtures.py` (`prand`, `prand_rule`) gives timm: the real
//! architecture is tested (and benchmarked) without storing its 294 M weights.

use gemma3n_compute::Matrix;
use rayon::prelude::*;

use crate::checkpoint::TensorSource;
use crate::error::{ModelError, Result};

fn fnv1a64(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// `n` values `(2u − 1)·scale + offset` where `u` is 24 bits of a splitmix64 finaliser of
/// `fnv1a64(name) ^ i·φ` over 2²⁴ (every step exact or one f32 rounding, as in the script).
pub fn prand(name: &str, n: usize, scale: f32, offset: f32) -> Vec<f32> {
    let seed = fnv1a64(name);
    (0..n)
        .into_par_iter()
        .with_min_len(1 << 14)
        .map(|i| {
            let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / 16_777_216.0;
            (u * 2.0 - 1.0) * scale + offset
        })
        .collect()
}

/// `(scale, offset)` of a tower tensor by its timm name and shape.
fn rule(name: &str, shape: &[usize]) -> (f32, f32) {
    if shape.len() == 4 {
        let fan_in = (shape[1] * shape[2] * shape[3]) as f64;
        ((3.0 / fan_in).sqrt() as f32, 0.0)
    } else if name.ends_with("gamma") {
        (1.0, 0.0)
    } else if name.ends_with("bias") {
        (0.1, 0.0)
    } else {
        (0.25, 1.0)
    }
}

/// Tower weights by name (`prefix` + timm name), generated on request.
pub struct PseudoRandomTower {
    pub prefix: String,
}

impl PseudoRandomTower {
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let timm = name.strip_prefix(&self.prefix).ok_or_else(|| {
            ModelError::Invalid(format!("{name}: not under the prefix `{}`", self.prefix))
        })?;
        let (scale, offset) = rule(timm, shape);
        Ok(prand(timm, shape.iter().product(), scale, offset))
    }
}

impl TensorSource for PseudoRandomTower {
    fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        let v = self.values(name, shape)?;
        let cols = *shape.last().unwrap_or(&1);
        Ok(Matrix::from_f32(&v, v.len() / cols.max(1), cols))
    }
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        self.values(name, &[n])
    }
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.values(name, shape)
    }
}

/// The pseudo-random input image of the real-architecture fixture: `3 × size × size`
/// planar values in [0, 1).
pub fn pixel_values(size: usize) -> Vec<f32> {
    prand("pixel_values", 3 * size * size, 0.5, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_splitmix_match_their_definitions() {
        // FNV-1a 64 of "a" (published test vector).
        assert_eq!(fnv1a64("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(""), 0xcbf29ce484222325);
        // Values stay in [offset - scale, offset + scale).
        let v = prand("x", 10_000, 0.5, 0.5);
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
    }
}
