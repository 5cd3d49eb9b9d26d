//! Deterministic pseudo-random audio tower weights, the same values that
//! `tools/reference/make_audio_tower_fixtures.py` gives HF's `Gemma3nAudioEncoder`: the real
//! 12-layer, 1536-wide tower is tested and benchmarked without storing its 681 M weights.

use crate::synthetic::{prand, PseudoRandomWeights};

/// `(scale, offset)` of a tower tensor by its name (relative to the tower) and shape:
/// weights of two or more dimensions `√(3 / fan_in)` (fan_in: all but the first dimension),
/// `per_dim_scale` 1, other vectors (norm weights) `1 ± 0.25`.
fn rule(name: &str, shape: &[usize]) -> (f32, f32) {
    if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        ((3.0 / fan_in as f64).sqrt() as f32, 0.0)
    } else if name.ends_with("per_dim_scale") {
        (1.0, 0.0)
    } else {
        (0.25, 1.0)
    }
}

/// The tower's weights under `prefix` (+ the encoder's own name), generated on request.
pub fn tower_weights(prefix: &str) -> PseudoRandomWeights {
    PseudoRandomWeights {
        prefix: prefix.to_string(),
        rule,
    }
}

/// The pseudo-random input features of the real-size fixture: `frames × 128` values in
/// [−5, 1).
pub fn features(frames: usize) -> Vec<f32> {
    prand("audio_features", frames * 128, 3.0, -2.0)
}
