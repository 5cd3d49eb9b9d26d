//! Per-layer inputs (PLE): token rows of the per-layer embedding table plus a projection
//! of the main embedding (spec §3.2), and their injection into the streams (§3.4 i).

use gemma3n_compute::cpu::{matmul, ops};

use super::weights::{LayerWeights, TextWeights};
use crate::config::TextConfig;

/// `π` for `ids` and their embeddings `e` (`n x D`), for the stored layers `layers`
/// (ascending; all of them unless a MatFormer slice skips some): `n x (K·P)` with the
/// k-th listed layer at `[k·P, (k+1)·P)`. Only the table rows of these tokens are read
/// (ids ≥ Vp use row 0), and only the projection rows of the listed layers.
pub fn per_layer_inputs(
    cfg: &TextConfig,
    w: &TextWeights,
    ids: &[u32],
    e: &[f32],
    layers: &[usize],
) -> Vec<f32> {
    let (d, p) = (cfg.hidden_size, cfg.hidden_size_per_layer_input);
    let lp = layers.len() * p;
    let n = ids.len();
    let mut proj = vec![0f32; n * lp];
    // One matmul per run of consecutive layers, into the columns of that run.
    let mut k = 0;
    while k < layers.len() {
        let mut run = 1;
        while k + run < layers.len() && layers[k + run] == layers[k] + run {
            run += 1;
        }
        let m = w
            .per_layer_model_projection
            .row_range(layers[k] * p, run * p);
        if run == layers.len() {
            matmul(e, n, &m, &mut proj);
        } else {
            let mut part = vec![0f32; n * run * p];
            matmul(e, n, &m, &mut part);
            for t in 0..n {
                proj[t * lp + k * p..t * lp + (k + run) * p]
                    .copy_from_slice(&part[t * run * p..(t + 1) * run * p]);
            }
        }
        k += run;
    }
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
    let mut row = vec![0f32; cfg.num_hidden_layers * p];
    for (t, &id) in ids.iter().enumerate() {
        let r = if (id as usize) < cfg.vocab_size_per_layer_input {
            id as usize
        } else {
            0
        };
        w.embed_tokens_per_layer.row_to_f32(r, &mut row);
        for (k, &l) in layers.iter().enumerate() {
            let out = &mut proj[t * lp + k * p..t * lp + (k + 1) * p];
            for (o, z) in out.iter_mut().zip(&row[l * p..(l + 1) * p]) {
                *o = (*o + z * scale_tok) * scale_sum;
            }
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
    ops::gelu_tanh_rows(&mut gate, p);
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
