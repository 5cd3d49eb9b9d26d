//! Random weights with the real shapes, built in memory from a seed: full-size speed
//! measurements without a download. The values are random; the output is meaningless.

use gemma3n_compute::storage::AlignedBytes;
use gemma3n_compute::{DType, Matrix};
use rayon::prelude::*;

use super::weights::{AltUpWeights, LayerWeights, TextWeights};
use super::TextModel;
use crate::config::{KvSource, TextConfig};

/// splitmix64: a counter-based generator, so any element can be produced independently.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) from a counter.
fn unit(seed: u64, i: u64) -> f32 {
    let r = mix(seed ^ mix(i));
    ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

struct Gen {
    seed: u64,
    dtype: DType,
    next: u64,
}

impl Gen {
    /// A `rows x cols` matrix of uniform values with the variance of N(0, 1/cols).
    fn matrix(&mut self, rows: usize, cols: usize) -> Matrix {
        self.next += 1;
        let seed = mix(self.seed ^ self.next.wrapping_mul(0xA24B_AED4_963E_E407));
        random_matrix(seed, rows, cols, self.dtype)
    }

    /// A norm-like vector around 1.
    fn ones_ish(&mut self, n: usize) -> Vec<f32> {
        self.next += 1;
        let seed = mix(self.seed ^ self.next);
        (0..n).map(|i| 1.0 + 0.1 * unit(seed, i as u64)).collect()
    }

    fn small(&mut self, n: usize, amp: f32) -> Vec<f32> {
        self.next += 1;
        let seed = mix(self.seed ^ self.next);
        (0..n).map(|i| amp * unit(seed, i as u64)).collect()
    }
}

/// A `rows x cols` matrix of uniform values with the variance of N(0, 1/cols), stored as
/// `dtype` (block formats need whole blocks per row: narrower matrices stay bf16).
fn random_matrix(seed: u64, rows: usize, cols: usize, dtype: DType) -> Matrix {
    let amp = (3.0 / cols as f32).sqrt();
    let dtype = if dtype.is_quantized() && !cols.is_multiple_of(dtype.block_size()) {
        DType::BF16
    } else {
        dtype
    };
    let row_bytes = dtype.row_bytes(cols);
    let mut bytes = AlignedBytes::zeroed(rows * row_bytes);
    bytes
        .as_mut_slice()
        .par_chunks_mut(row_bytes)
        .enumerate()
        .for_each(|(r, row)| {
            let vals: Vec<f32> = (0..cols)
                .map(|c| amp * unit(seed, (r * cols + c) as u64))
                .collect();
            match dtype {
                DType::F32 => row
                    .chunks_exact_mut(4)
                    .zip(&vals)
                    .for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
                DType::BF16 => row.chunks_exact_mut(2).zip(&vals).for_each(|(o, v)| {
                    o.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes())
                }),
                DType::F16 => row.chunks_exact_mut(2).zip(&vals).for_each(|(o, v)| {
                    o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())
                }),
                q => gemma3n_compute::quant::quantize_row(q, &vals, row),
            }
        });
    Matrix::owned(bytes, dtype, rows, cols)
}

/// Random bf16 weights looked up by Hugging Face tensor name, as a checkpoint would hold them
/// (norms and scales around 1, AltUp coefficients small, matrices N(0, 1/cols)-like): what
/// `gemma3n quantize --synthetic` writes to a GGUF file. Each tensor depends only on the
/// seed and its name.
pub struct SyntheticSource {
    pub seed: u64,
}

impl SyntheticSource {
    fn seed_of(&self, name: &str) -> u64 {
        // FNV-1a of the name, mixed with the seed.
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        mix(self.seed ^ h)
    }

    /// The values of a one-dimensional (or coefficient) tensor, or `None` for a matrix.
    fn small_values(&self, name: &str, n: usize) -> Option<Vec<f32>> {
        let seed = self.seed_of(name);
        let (base, amp) = if name.ends_with("norm.weight") || name.ends_with("correct_output_scale")
        {
            (1.0, 0.1)
        } else if name.ends_with("_coefs.weight") {
            (0.0, 0.1)
        } else {
            return None;
        };
        Some((0..n).map(|i| base + amp * unit(seed, i as u64)).collect())
    }
}

impl crate::checkpoint::TensorSource for SyntheticSource {
    fn matrix(&self, name: &str, shape: &[usize]) -> crate::error::Result<Matrix> {
        let cols = *shape.last().unwrap_or(&1);
        let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        Ok(match self.small_values(name, rows * cols) {
            Some(v) => Matrix::from_f32(&v, rows, cols),
            None => random_matrix(self.seed_of(name), rows, cols, DType::BF16),
        })
    }
    fn vector(&self, name: &str, n: usize) -> crate::error::Result<Vec<f32>> {
        self.f32_tensor(name, &[n])
    }
    fn f32_tensor(&self, name: &str, shape: &[usize]) -> crate::error::Result<Vec<f32>> {
        Ok(self.matrix(name, shape)?.to_f32_vec())
    }
}

impl TextModel {
    /// A model of `cfg`'s shapes with random weights stored as `dtype`.
    pub fn synthetic(cfg: &TextConfig, dtype: DType, seed: u64) -> TextModel {
        let (d, p, a, l) = (
            cfg.hidden_size,
            cfg.hidden_size_per_layer_input,
            cfg.altup_num_inputs,
            cfg.num_hidden_layers,
        );
        let (h, g, hd, r) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.laurel_rank,
        );
        let mut gen = Gen {
            seed,
            dtype,
            next: 0,
        };
        let layers = (0..l)
            .map(|i| {
                let own = cfg.kv_source(i) == KvSource::Own;
                let f = cfg.intermediate_size[i];
                LayerWeights {
                    q_proj: gen.matrix(h * hd, d),
                    k_proj: own.then(|| gen.matrix(g * hd, d)),
                    v_proj: own.then(|| gen.matrix(g * hd, d)),
                    o_proj: gen.matrix(d, h * hd),
                    q_norm: gen.ones_ish(hd),
                    k_norm: own.then(|| gen.ones_ish(hd)),
                    input_layernorm: gen.ones_ish(d),
                    post_attention_layernorm: gen.ones_ish(d),
                    pre_feedforward_layernorm: gen.ones_ish(d),
                    post_feedforward_layernorm: gen.ones_ish(d),
                    gate_proj: gen.matrix(f, d),
                    up_proj: gen.matrix(f, d),
                    down_proj: gen.matrix(d, f),
                    down_proj_t: None,
                    laurel_left: gen.matrix(r, d),
                    laurel_right: gen.matrix(d, r),
                    laurel_norm: gen.ones_ish(d),
                    altup: AltUpWeights {
                        modality_router: gen.matrix(a, d),
                        router_norm: gen.ones_ish(d),
                        prediction_coefs: gen.small(a * a * a, 0.1),
                        correction_coefs: gen.small(a * a, 0.1),
                        correct_output_scale: gen.ones_ish(d),
                    },
                    per_layer_input_gate: gen.matrix(p, d),
                    per_layer_projection: gen.matrix(d, p),
                    post_per_layer_input_norm: gen.ones_ish(d),
                }
            })
            .collect();
        let mut layers: Vec<LayerWeights> = layers;
        super::weights::add_sparse_down_copies(&mut layers, &cfg.activation_sparsity_pattern);
        let weights = TextWeights {
            embed_tokens: gen.matrix(cfg.vocab_size, d),
            embed_tokens_per_layer: gen.matrix(cfg.vocab_size_per_layer_input, l * p),
            per_layer_model_projection: gen.matrix(l * p, d),
            per_layer_projection_norm: gen.ones_ish(p),
            altup_projections: (0..a - 1).map(|_| gen.matrix(d, d)).collect(),
            altup_unembed_projections: (0..a - 1).map(|_| gen.matrix(d, d)).collect(),
            norm: gen.ones_ish(d),
            layers,
        };
        TextModel::new(cfg.clone(), weights)
    }
}
