//! Deterministic pseudo-random vision tower weights, the same values that
//! `tools/reference/make_vision_fixtures.py` (`prand`, `prand_rule`) gives timm: the real
//! architecture is tested (and benchmarked) without storing its 294 M weights.

use gemma3n_compute::Matrix;

use crate::checkpoint::TensorSource;
use crate::error::{ModelError, Result};

pub use crate::synthetic::prand;

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
