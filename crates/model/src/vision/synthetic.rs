//! Deterministic pseudo-random vision tower weights, the same values that
//! `tools/reference/make_vision_fixtures.py` (`prand`, `prand_rule`) gives timm: the real
//! architecture is tested (and benchmarked) without storing its 294 M weights.

pub use crate::synthetic::prand;
use crate::synthetic::PseudoRandomWeights;

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

/// The tower's weights under `prefix` (+ the timm name), generated on request.
pub fn tower_weights(prefix: &str) -> PseudoRandomWeights {
    PseudoRandomWeights {
        prefix: prefix.to_string(),
        rule,
    }
}

/// The pseudo-random input image of the real-architecture fixture: `3 × size × size`
/// planar values in [0, 1).
pub fn pixel_values(size: usize) -> Vec<f32> {
    prand("pixel_values", 3 * size * size, 0.5, 0.5)
}
