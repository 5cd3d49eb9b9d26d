//! Per-layer inputs (PLE): token rows of the per-layer embedding table plus a projection
//! of the main embedding (spec §3.2), and their injection into the streams (§3.4 i).

use gemma3n_compute::cpu::{matmul, ops};

use super::weights::{LayerWeights, TextWeights};
use crate::config::TextConfig;

/// `π` for `ids` and their embeddings `e` (`n x D`): `n x (L·P)`, layer l at `[l·P, (l+1)·P)`.
/// Only the table rows of these tokens are read (ids ≥ Vp use row 0).
pub fn per_layer_inputs(cfg: &TextConfig, w: &TextWeights, ids: &[u32], e: &[f32]) -> Vec<f32> {
    let (d, p) = (cfg.hidden_size, cfg.hidden_size_per_layer_input);
    let lp = cfg.num_hidden_layers * p;
    let n = ids.len();
    let mut proj = vec![0f32; n * lp];
    matmul(e, n, &w.per_layer_model_projection, &mut proj);
    let s = 1.0 / (d as f32).sqrt();
    proj.iter_mut().for_each(|v| *v *= s);
    ops::rms_norm_rows(
        &mut proj,
        p,
        Some(&w.per_layer_projection_norm),
        cfg.rms_norm_eps,
    );
    let scale_tok = (p as f32).sqrt();
    let scale_sum = std::f32::consts::FRAC_1_SQRT_2;
    let mut row = vec![0f32; lp];
    for (t, &id) in ids.iter().enumerate() {
        let r = if (id as usize) < cfg.vocab_size_per_layer_input {
            id as usize
        } else {
            0
        };
        w.embed_tokens_per_layer.row_to_f32(r, &mut row);
        for (o, z) in proj[t * lp..(t + 1) * lp].iter_mut().zip(&row) {
            *o = (*o + z * scale_tok) * scale_sum;
        }
    }
    proj
}

/// Adds the layer's per-layer input to streams 1.. (not stream 0):
/// `q = RMSNorm(W_proj · (gelu(W_g · (c^0 ⊙ γ)) ⊙ π_l))`.
pub fn inject(
    cfg: &TextConfig,
    w: &LayerWeights,
    streams: &mut [Vec<f32>],
    pi_l: &[f32],
    n: usize,
) {
    let (d, p) = (cfg.hidden_size, cfg.hidden_size_per_layer_input);
    let mut v = streams[0].clone();
    if cfg.altup_correct_scale {
        for row in v.chunks_exact_mut(d) {
            row.iter_mut()
                .zip(&w.altup.correct_output_scale)
                .for_each(|(x, s)| *x *= s);
        }
    }
    let mut gate = vec![0f32; n * p];
    matmul(&v, n, &w.per_layer_input_gate, &mut gate);
    ops::gelu_tanh(&mut gate);
    gate.iter_mut().zip(pi_l).for_each(|(g, x)| *g *= x);
    let mut q = vec![0f32; n * d];
    matmul(&gate, n, &w.per_layer_projection, &mut q);
    ops::rms_norm_rows(
        &mut q,
        d,
        Some(&w.post_per_layer_input_norm),
        cfg.rms_norm_eps,
    );
    for s in streams.iter_mut().skip(1) {
        s.iter_mut().zip(&q).for_each(|(a, b)| *a += b);
    }
}
