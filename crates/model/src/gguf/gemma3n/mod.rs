//! Gemma 3n in GGUF, as llama.cpp's `convert_hf_to_gguf.py` writes it (architecture
//! `gemma3n`, text part only): the metadata -> [`ModelConfig`] mapping, the tensor name table
//! GGUF <-> HF with shape checks, and the converter's metadata for writing. The full table
//! and the converter's transforms are in `README.md` beside this file.
//!
//! HF names here are relative to the text prefix (`model.language_model.` or `model.`),
//! e.g. `layers.3.mlp.gate_proj.weight`, like `Checkpoint::text_prefix`.

mod config;
pub mod vocab;

pub use config::{
    gguf_metadata, hf_config_json, model_config, normal_cdf, normal_icdf,
    vocab_size_per_layer_input,
};

use super::{Gguf, TensorInfo};
use crate::config::TextConfig;
use crate::error::{ModelError, Result};

pub const ARCH: &str = "gemma3n";
/// Our extension (llama.cpp ignores it): the HF `vocab_size_per_layer_input`, which the
/// converter does not store (it zero-pads `per_layer_token_embd` to `vocab_size` rows).
pub const KEY_VOCAB_SIZE_PER_LAYER_INPUT: &str = "gemma3n.vocab_size_per_layer_input";

fn key(k: &str) -> String {
    format!("{ARCH}.{k}")
}

/// Which part of a GGUF tensor an HF tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The whole tensor (same bytes, dims reversed).
    Whole,
    /// Slice `index` of `count` along the outermost GGUF dim (the converter stacks
    /// `altup_projections.{0,1,2}` into one `[D, D, 3]` tensor).
    Slice { index: usize, count: usize },
    /// The first `rows` rows (outermost GGUF dim); the rest is zero padding.
    RowPrefix { rows: usize },
}

/// One HF text tensor and where it lives in the GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct NameMap {
    pub hf_name: String,
    /// PyTorch order.
    pub hf_shape: Vec<usize>,
    pub gguf_name: String,
    /// The whole GGUF tensor's dims (GGUF order).
    pub gguf_dims: Vec<u64>,
    pub part: Part,
    /// May be absent: K/V projections and `k_norm` of KV-shared layers (unused).
    pub optional: bool,
}

impl NameMap {
    /// The byte range of this HF tensor inside the GGUF tensor's data of `len` bytes.
    pub fn byte_range(&self, len: usize) -> std::ops::Range<usize> {
        match self.part {
            Part::Whole => 0..len,
            Part::Slice { index, count } => {
                let n = len / count;
                index * n..(index + 1) * n
            }
            Part::RowPrefix { rows } => {
                let total = *self.gguf_dims.last().unwrap_or(&1) as usize;
                0..len / total.max(1) * rows
            }
        }
    }
}

/// Per-layer tensors: (HF suffix, GGUF suffix, optional in KV-shared layers).
pub const LAYER_NAMES: &[(&str, &str, bool)] = &[
    ("self_attn.q_proj.weight", "attn_q.weight", false),
    ("self_attn.k_proj.weight", "attn_k.weight", true),
    ("self_attn.v_proj.weight", "attn_v.weight", true),
    ("self_attn.o_proj.weight", "attn_output.weight", false),
    ("self_attn.q_norm.weight", "attn_q_norm.weight", false),
    ("self_attn.k_norm.weight", "attn_k_norm.weight", true),
    ("input_layernorm.weight", "attn_norm.weight", false),
    (
        "post_attention_layernorm.weight",
        "post_attention_norm.weight",
        false,
    ),
    ("pre_feedforward_layernorm.weight", "ffn_norm.weight", false),
    (
        "post_feedforward_layernorm.weight",
        "post_ffw_norm.weight",
        false,
    ),
    ("mlp.gate_proj.weight", "ffn_gate.weight", false),
    ("mlp.up_proj.weight", "ffn_up.weight", false),
    ("mlp.down_proj.weight", "ffn_down.weight", false),
    ("laurel.linear_left.weight", "laurel_l.weight", false),
    ("laurel.linear_right.weight", "laurel_r.weight", false),
    (
        "laurel.post_laurel_norm.weight",
        "laurel_post_norm.weight",
        false,
    ),
    (
        "altup.correct_output_scale",
        "altup_correct_scale.weight",
        false,
    ),
    (
        "altup.correction_coefs.weight",
        "altup_correct_coef.weight",
        false,
    ),
    (
        "altup.prediction_coefs.weight",
        "altup_predict_coef.weight",
        false,
    ),
    ("altup.modality_router.weight", "altup_router.weight", false),
    (
        "altup.router_norm.weight",
        "altup_router_norm.weight",
        false,
    ),
    ("per_layer_input_gate.weight", "inp_gate.weight", false),
    ("per_layer_projection.weight", "proj.weight", false),
    (
        "post_per_layer_input_norm.weight",
        "post_norm.weight",
        false,
    ),
];

fn rev(shape: &[usize]) -> Vec<u64> {
    shape.iter().rev().map(|&d| d as u64).collect()
}

/// Every HF text tensor of `cfg` with its GGUF name, part and expected shapes.
pub fn name_table(cfg: &TextConfig) -> Vec<NameMap> {
    let (d, l, p, a) = (
        cfg.hidden_size,
        cfg.num_hidden_layers,
        cfg.hidden_size_per_layer_input,
        cfg.altup_num_inputs,
    );
    let whole = |hf: String, shape: Vec<usize>, g: String, optional: bool| NameMap {
        gguf_dims: rev(&shape),
        hf_name: hf,
        hf_shape: shape,
        gguf_name: g,
        part: Part::Whole,
        optional,
    };
    let mut out = vec![
        whole(
            "embed_tokens.weight".into(),
            vec![cfg.vocab_size, d],
            "token_embd.weight".into(),
            false,
        ),
        NameMap {
            hf_name: "embed_tokens_per_layer.weight".into(),
            hf_shape: vec![cfg.vocab_size_per_layer_input, l * p],
            gguf_name: "per_layer_token_embd.weight".into(),
            gguf_dims: vec![
                (l * p) as u64,
                cfg.vocab_size.max(cfg.vocab_size_per_layer_input) as u64,
            ],
            part: Part::RowPrefix {
                rows: cfg.vocab_size_per_layer_input,
            },
            optional: false,
        },
        whole(
            "per_layer_model_projection.weight".into(),
            vec![l * p, d],
            "per_layer_model_proj.weight".into(),
            false,
        ),
        whole(
            "per_layer_projection_norm.weight".into(),
            vec![p],
            "per_layer_proj_norm.weight".into(),
            false,
        ),
        whole(
            "norm.weight".into(),
            vec![d],
            "output_norm.weight".into(),
            false,
        ),
    ];
    for (hf, g) in [
        ("altup_projections", "altup_proj.weight"),
        ("altup_unembed_projections", "altup_unembd_proj.weight"),
    ] {
        for k in 0..a - 1 {
            out.push(NameMap {
                hf_name: format!("{hf}.{k}.weight"),
                hf_shape: vec![d, d],
                gguf_name: g.into(),
                gguf_dims: vec![d as u64, d as u64, (a - 1) as u64],
                part: Part::Slice {
                    index: k,
                    count: a - 1,
                },
                optional: false,
            });
        }
    }
    let (q, kv, hd, r) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
        cfg.head_dim,
        cfg.laurel_rank,
    );
    for i in 0..l {
        let f = cfg.intermediate_size[i];
        let shared = i >= cfg.first_kv_shared_layer();
        for &(hf, g, opt) in LAYER_NAMES {
            let shape = match hf {
                "self_attn.q_proj.weight" => vec![q, d],
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, d],
                "self_attn.o_proj.weight" => vec![d, q],
                "self_attn.q_norm.weight" | "self_attn.k_norm.weight" => vec![hd],
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, d],
                "mlp.down_proj.weight" => vec![d, f],
                "laurel.linear_left.weight" => vec![r, d],
                "laurel.linear_right.weight" => vec![d, r],
                "altup.correction_coefs.weight" => vec![a, a],
                "altup.prediction_coefs.weight" => vec![a * a, a],
                "altup.modality_router.weight" => vec![a, d],
                "per_layer_input_gate.weight" => vec![p, d],
                "per_layer_projection.weight" => vec![d, p],
                _ => vec![d],
            };
            out.push(whole(
                format!("layers.{i}.{hf}"),
                shape,
                format!("blk.{i}.{g}"),
                opt && shared,
            ));
        }
    }
    out
}

/// The HF name table entries present in `g`, each checked against the file's dims.
/// Missing required tensors are an error; optional ones absent from the file are left out.
pub fn tensor_map(g: &Gguf, cfg: &TextConfig) -> Result<Vec<NameMap>> {
    let mut out = Vec::new();
    for m in name_table(cfg) {
        let Some(t) = g.info(&m.gguf_name) else {
            if m.optional {
                continue;
            }
            return Err(ModelError::tensor(
                &m.gguf_name,
                format!("missing from {} (HF `{}`)", g.path().display(), m.hf_name),
            ));
        };
        if t.dims != m.gguf_dims {
            return Err(ModelError::tensor(
                &m.gguf_name,
                format!(
                    "in {} has GGUF dims {:?}, the config implies {:?} (HF `{}` {:?})",
                    g.path().display(),
                    t.dims,
                    m.gguf_dims,
                    m.hf_name,
                    m.hf_shape
                ),
            ));
        }
        out.push(m);
    }
    Ok(out)
}

/// GGUF tensors of `g` that no HF text tensor maps to (e.g. an untied `output.weight`).
pub fn unmapped<'a>(g: &'a Gguf, maps: &[NameMap]) -> Vec<&'a TensorInfo> {
    let names: std::collections::HashSet<&str> =
        maps.iter().map(|m| m.gguf_name.as_str()).collect();
    g.tensors()
        .iter()
        .filter(|t| !names.contains(t.name.as_str()))
        .collect()
}

/// The raw bytes (in the GGUF tensor's ggml type) of the HF tensor `m`.
pub fn hf_bytes<'a>(g: &'a Gguf, m: &NameMap) -> Result<&'a [u8]> {
    let b = g.tensor_bytes(&m.gguf_name)?;
    Ok(&b[m.byte_range(b.len())])
}

/// How one GGUF tensor is assembled from HF tensors, for writing: the concatenation of
/// `parts`' bytes (each converted to the target type), then zero rows up to `dims`.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorLayout {
    pub gguf_name: String,
    pub dims: Vec<u64>,
    pub parts: Vec<NameMap>,
}

/// The GGUF tensors of a Gemma 3n text model in the converter's layout. `has(hf_name)` says
/// whether an optional tensor (K/V of KV-shared layers) exists in the source checkpoint.
pub fn gguf_layout(cfg: &TextConfig, has: &dyn Fn(&str) -> bool) -> Vec<GgufTensorLayout> {
    let mut out: Vec<GgufTensorLayout> = Vec::new();
    for m in name_table(cfg) {
        if m.optional && !has(&m.hf_name) {
            continue;
        }
        match out.iter_mut().find(|t| t.gguf_name == m.gguf_name) {
            Some(t) => t.parts.push(m),
            None => out.push(GgufTensorLayout {
                gguf_name: m.gguf_name.clone(),
                dims: m.gguf_dims.clone(),
                parts: vec![m],
            }),
        }
    }
    out
}
