//! The text decoder's weights, checked against the config and kept in their stored
//! dtype (the big matrices are views into the mmap'd checkpoint).

use gemma3n_compute::cpu::sparse;
use gemma3n_compute::Matrix;

use crate::checkpoint::TensorSource;
use crate::config::{KvSource, TextConfig};
use crate::error::Result;

/// Weights of one decoder layer (spec/text.md §2.2).
pub struct LayerWeights {
    pub q_proj: Matrix,
    /// `None` for KV-shared layers (their k/v weights are never used).
    pub k_proj: Option<Matrix>,
    pub v_proj: Option<Matrix>,
    pub o_proj: Matrix,
    pub q_norm: Vec<f32>,
    pub k_norm: Option<Vec<f32>>,
    pub input_layernorm: Vec<f32>,
    pub post_attention_layernorm: Vec<f32>,
    pub pre_feedforward_layernorm: Vec<f32>,
    pub post_feedforward_layernorm: Vec<f32>,
    pub gate_proj: Matrix,
    pub up_proj: Matrix,
    pub down_proj: Matrix,
    /// `down_proj` transposed (`[F, D]`), only for layers with activation sparsity: the
    /// sparse decode path reads the rows of the few active hidden units contiguously.
    pub down_proj_t: Option<Matrix>,
    pub laurel_left: Matrix,
    pub laurel_right: Matrix,
    pub laurel_norm: Vec<f32>,
    pub altup: AltUpWeights,
    pub per_layer_input_gate: Matrix,
    pub per_layer_projection: Matrix,
    pub post_per_layer_input_norm: Vec<f32>,
}

/// A layer's AltUp parameters (A = number of streams).
pub struct AltUpWeights {
    /// `[A, D]` router.
    pub modality_router: Matrix,
    pub router_norm: Vec<f32>,
    /// `[A*A, A]`: row `A·i + j` = coefficient of source stream j for target stream i.
    pub prediction_coefs: Vec<f32>,
    /// `[A, A]`: row i = stream, column q = router output.
    pub correction_coefs: Vec<f32>,
    pub correct_output_scale: Vec<f32>,
}

/// All text-decoder weights.
pub struct TextWeights {
    /// `[V, D]`; also the tied LM head.
    pub embed_tokens: Matrix,
    /// `[Vp, L·P]`, read one row per token in place.
    pub embed_tokens_per_layer: Matrix,
    /// `[L·P, D]`.
    pub per_layer_model_projection: Matrix,
    pub per_layer_projection_norm: Vec<f32>,
    /// A−1 matrices `[D, D]` (stream k uses index k−1).
    pub altup_projections: Vec<Matrix>,
    pub altup_unembed_projections: Vec<Matrix>,
    pub norm: Vec<f32>,
    pub layers: Vec<LayerWeights>,
}

impl TextWeights {
    /// Loads every text tensor under `prefix`, checking each shape against `cfg`.
    /// `progress(done, total)` is called once per layer.
    pub fn load(
        w: &dyn TensorSource,
        prefix: &str,
        cfg: &TextConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<TextWeights> {
        let (d, l, p, a) = (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.hidden_size_per_layer_input,
            cfg.altup_num_inputs,
        );
        let n = |s: &str| format!("{prefix}{s}");
        let total = l + 1;
        let embed_tokens = w.matrix(&n("embed_tokens.weight"), &[cfg.vocab_size, d])?;
        let embed_tokens_per_layer = w.matrix(
            &n("embed_tokens_per_layer.weight"),
            &[cfg.vocab_size_per_layer_input, l * p],
        )?;
        let per_layer_model_projection =
            w.matrix(&n("per_layer_model_projection.weight"), &[l * p, d])?;
        let per_layer_projection_norm = w.vector(&n("per_layer_projection_norm.weight"), p)?;
        let altup_projections = (0..a - 1)
            .map(|i| w.matrix(&n(&format!("altup_projections.{i}.weight")), &[d, d]))
            .collect::<Result<Vec<_>>>()?;
        let altup_unembed_projections = (0..a - 1)
            .map(|i| {
                w.matrix(
                    &n(&format!("altup_unembed_projections.{i}.weight")),
                    &[d, d],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = w.vector(&n("norm.weight"), d)?;
        progress(1, total);
        let (h, g, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let mut layers = Vec::with_capacity(l);
        for i in 0..l {
            let ln = |s: &str| format!("{prefix}layers.{i}.{s}");
            let own = cfg.kv_source(i) == KvSource::Own;
            let f = cfg.intermediate_size[i];
            let r = cfg.laurel_rank;
            layers.push(LayerWeights {
                q_proj: w.matrix(&ln("self_attn.q_proj.weight"), &[h * hd, d])?,
                k_proj: own
                    .then(|| w.matrix(&ln("self_attn.k_proj.weight"), &[g * hd, d]))
                    .transpose()?,
                v_proj: own
                    .then(|| w.matrix(&ln("self_attn.v_proj.weight"), &[g * hd, d]))
                    .transpose()?,
                o_proj: w.matrix(&ln("self_attn.o_proj.weight"), &[d, h * hd])?,
                q_norm: w.vector(&ln("self_attn.q_norm.weight"), hd)?,
                k_norm: own
                    .then(|| w.vector(&ln("self_attn.k_norm.weight"), hd))
                    .transpose()?,
                input_layernorm: w.vector(&ln("input_layernorm.weight"), d)?,
                post_attention_layernorm: w.vector(&ln("post_attention_layernorm.weight"), d)?,
                pre_feedforward_layernorm: w.vector(&ln("pre_feedforward_layernorm.weight"), d)?,
                post_feedforward_layernorm: w
                    .vector(&ln("post_feedforward_layernorm.weight"), d)?,
                gate_proj: w.matrix(&ln("mlp.gate_proj.weight"), &[f, d])?,
                up_proj: w.matrix(&ln("mlp.up_proj.weight"), &[f, d])?,
                down_proj: w.matrix(&ln("mlp.down_proj.weight"), &[d, f])?,
                down_proj_t: None,
                laurel_left: w.matrix(&ln("laurel.linear_left.weight"), &[r, d])?,
                laurel_right: w.matrix(&ln("laurel.linear_right.weight"), &[d, r])?,
                laurel_norm: w.vector(&ln("laurel.post_laurel_norm.weight"), d)?,
                altup: AltUpWeights {
                    modality_router: w.matrix(&ln("altup.modality_router.weight"), &[a, d])?,
                    router_norm: w.vector(&ln("altup.router_norm.weight"), d)?,
                    prediction_coefs: w
                        .f32_tensor(&ln("altup.prediction_coefs.weight"), &[a * a, a])?,
                    correction_coefs: w
                        .f32_tensor(&ln("altup.correction_coefs.weight"), &[a, a])?,
                    correct_output_scale: w.vector(&ln("altup.correct_output_scale"), d)?,
                },
                per_layer_input_gate: w.matrix(&ln("per_layer_input_gate.weight"), &[p, d])?,
                per_layer_projection: w.matrix(&ln("per_layer_projection.weight"), &[d, p])?,
                post_per_layer_input_norm: w.vector(&ln("post_per_layer_input_norm.weight"), d)?,
            });
            progress(i + 2, total);
        }
        add_sparse_down_copies(&mut layers, &cfg.activation_sparsity_pattern);
        Ok(TextWeights {
            embed_tokens,
            embed_tokens_per_layer,
            per_layer_model_projection,
            per_layer_projection_norm,
            altup_projections,
            altup_unembed_projections,
            norm,
            layers,
        })
    }
}

impl TextWeights {
    /// A copy with every matrix replaced by `f(matrix)` (the per-layer table included when
    /// `table` is set); vectors and coefficients copied as they are.
    pub fn map_matrices(&self, table: bool, f: &(dyn Fn(&Matrix) -> Matrix + Sync)) -> TextWeights {
        let layers = self
            .layers
            .iter()
            .map(|l| LayerWeights {
                q_proj: f(&l.q_proj),
                k_proj: l.k_proj.as_ref().map(f),
                v_proj: l.v_proj.as_ref().map(f),
                o_proj: f(&l.o_proj),
                q_norm: l.q_norm.clone(),
                k_norm: l.k_norm.clone(),
                input_layernorm: l.input_layernorm.clone(),
                post_attention_layernorm: l.post_attention_layernorm.clone(),
                pre_feedforward_layernorm: l.pre_feedforward_layernorm.clone(),
                post_feedforward_layernorm: l.post_feedforward_layernorm.clone(),
                gate_proj: f(&l.gate_proj),
                up_proj: f(&l.up_proj),
                down_proj: f(&l.down_proj),
                down_proj_t: l.down_proj_t.as_ref().map(f),
                laurel_left: f(&l.laurel_left),
                laurel_right: f(&l.laurel_right),
                laurel_norm: l.laurel_norm.clone(),
                altup: AltUpWeights {
                    modality_router: f(&l.altup.modality_router),
                    router_norm: l.altup.router_norm.clone(),
                    prediction_coefs: l.altup.prediction_coefs.clone(),
                    correction_coefs: l.altup.correction_coefs.clone(),
                    correct_output_scale: l.altup.correct_output_scale.clone(),
                },
                per_layer_input_gate: f(&l.per_layer_input_gate),
                per_layer_projection: f(&l.per_layer_projection),
                post_per_layer_input_norm: l.post_per_layer_input_norm.clone(),
            })
            .collect();
        TextWeights {
            embed_tokens: f(&self.embed_tokens),
            embed_tokens_per_layer: if table {
                f(&self.embed_tokens_per_layer)
            } else {
                self.embed_tokens_per_layer.clone()
            },
            per_layer_model_projection: f(&self.per_layer_model_projection),
            per_layer_projection_norm: self.per_layer_projection_norm.clone(),
            altup_projections: self.altup_projections.iter().map(f).collect(),
            altup_unembed_projections: self.altup_unembed_projections.iter().map(f).collect(),
            norm: self.norm.clone(),
            layers,
        }
    }
}

/// Gives every activation-sparse layer the transposed `down` copy that the exact sparse FFN
/// reads (f32 for block formats, where the block values are exact in f32).
pub(crate) fn add_sparse_down_copies(layers: &mut [LayerWeights], sparsity: &[f32]) {
    for (lw, &s) in layers.iter_mut().zip(sparsity) {
        if s > 0.0 {
            lw.down_proj_t = Some(sparse::transpose(&lw.down_proj));
        }
    }
}
