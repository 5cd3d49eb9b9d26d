//! `gemma3n quantize`: a checkpoint written as a Gemma 3n GGUF file in llama.cpp's layout,
//! with a mixed-precision policy per preset. The policy is data ([`QuantPolicy`]): which
//! format each class of tensor gets.

use std::io::Write;

use gemma3n_compute::{quant, DType};
use rayon::prelude::*;

use crate::checkpoint::{Checkpoint, TensorSource};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::gguf::gemma3n::vocab::vocab_metadata;
use crate::gguf::gemma3n::{gguf_layout, gguf_metadata, GgufTensorLayout};
use crate::gguf::{write_with, TensorSpec, Value};

/// The format of each class of tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantPolicy {
    pub name: &'static str,
    /// Attention and FFN matrices (and the AltUp (un)embedding projections).
    pub matrices: DType,
    /// `ffn_down` (llama.cpp's `_M` presets give it more bits).
    pub ffn_down: DType,
    /// `token_embd` (also the tied LM head, read in full every token).
    pub embed: DType,
    /// `per_layer_token_embd` (one row read per token: capacity, not bandwidth).
    pub ple: DType,
    /// Keep the small AltUp / LAuReL / router tensors in f32 (norms and 1-D tensors always
    /// are). False only for the float presets, which follow llama.cpp's converter exactly.
    pub small_f32: bool,
    /// llama.cpp's `general.file_type` for this preset.
    pub file_type: u32,
}

const PRESETS: &[QuantPolicy] = &[
    QuantPolicy {
        name: "f32",
        matrices: DType::F32,
        ffn_down: DType::F32,
        embed: DType::F32,
        ple: DType::F32,
        small_f32: false,
        file_type: 0,
    },
    QuantPolicy {
        name: "f16",
        matrices: DType::F16,
        ffn_down: DType::F16,
        embed: DType::F16,
        ple: DType::F16,
        small_f32: false,
        file_type: 1,
    },
    QuantPolicy {
        name: "bf16",
        matrices: DType::BF16,
        ffn_down: DType::BF16,
        embed: DType::BF16,
        ple: DType::BF16,
        small_f32: false,
        file_type: 32,
    },
    QuantPolicy {
        name: "q8_0",
        matrices: DType::Q8_0,
        ffn_down: DType::Q8_0,
        embed: DType::Q8_0,
        ple: DType::Q8_0,
        small_f32: true,
        file_type: 7,
    },
    QuantPolicy {
        name: "q4_0",
        matrices: DType::Q4_0,
        ffn_down: DType::Q4_0,
        embed: DType::Q8_0,
        ple: DType::Q8_0,
        small_f32: true,
        file_type: 2,
    },
    QuantPolicy {
        name: "q4_k_m",
        matrices: DType::Q4_K,
        ffn_down: DType::Q6_K,
        embed: DType::Q6_K,
        ple: DType::Q8_0,
        small_f32: true,
        file_type: 15,
    },
    QuantPolicy {
        name: "q5_k_m",
        matrices: DType::Q5_K,
        ffn_down: DType::Q6_K,
        embed: DType::Q6_K,
        ple: DType::Q8_0,
        small_f32: true,
        file_type: 17,
    },
    QuantPolicy {
        name: "q6_k",
        matrices: DType::Q6_K,
        ffn_down: DType::Q6_K,
        embed: DType::Q6_K,
        ple: DType::Q8_0,
        small_f32: true,
        file_type: 18,
    },
];

impl QuantPolicy {
    /// All presets, in order.
    pub fn presets() -> &'static [QuantPolicy] {
        PRESETS
    }

    pub fn preset(name: &str) -> Result<&'static QuantPolicy> {
        let lower = name.to_ascii_lowercase();
        PRESETS.iter().find(|p| p.name == lower).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            ModelError::Invalid(format!(
                "unknown quantization type `{name}`; types: {}",
                names.join(", ")
            ))
        })
    }

    /// The format of the GGUF tensor `gguf_name` with `dims` (GGUF order).
    pub fn dtype_for(&self, gguf_name: &str, dims: &[u64]) -> DType {
        let small = [
            "altup_correct_coef",
            "altup_predict_coef",
            "altup_router",
            "laurel",
            "altup_correct_scale",
        ];
        if dims.len() == 1 || gguf_name.ends_with("_norm.weight") {
            return DType::F32;
        }
        // The converter keeps the AltUp coefficients in f32 whatever the output type.
        if gguf_name.contains("altup_correct_coef") || gguf_name.contains("altup_predict_coef") {
            return DType::F32;
        }
        if self.small_f32 && small.iter().any(|s| gguf_name.contains(s)) {
            return DType::F32;
        }
        let want = if gguf_name == "token_embd.weight" {
            self.embed
        } else if gguf_name == "per_layer_token_embd.weight" {
            self.ple
        } else if gguf_name.contains("ffn_down") {
            self.ffn_down
        } else {
            self.matrices
        };
        // Block formats need whole blocks per row.
        if want.is_quantized() && !(dims[0] as usize).is_multiple_of(want.block_size()) {
            DType::F16
        } else {
            want
        }
    }

    /// The policy as lines of text (for `inspect`).
    pub fn describe(&self) -> String {
        format!(
            "{}: attention/FFN {}, ffn_down {}, token_embd (LM head) {}, per-layer table {}, AltUp/LAuReL/router {}, norms f32",
            self.name,
            self.matrices,
            self.ffn_down,
            self.embed,
            self.ple,
            if self.small_f32 {
                "f32".to_string()
            } else {
                format!("{} (AltUp coefficients f32, as the converter)", self.matrices)
            }
        )
    }
}

/// Rows converted per parallel batch (bounds memory on the 262k-row tables).
const ROWS_PER_BATCH: usize = 2048;

/// Writes `ckpt`'s text decoder to `out` as a Gemma 3n GGUF file under `policy`.
/// `progress(done, total)` is called per tensor. The tokenizer vocabulary comes from the
/// `tokenizer.model` or `tokenizer.json` in `tokenizer_dir` (default: the checkpoint's
/// directory; see [`vocab_metadata`]); without either the
/// file has none (our loader does not need it, llama.cpp does) and this returns `false`.
pub fn quantize(
    ckpt: &Checkpoint,
    policy: &QuantPolicy,
    out: &std::path::Path,
    tokenizer_dir: Option<&std::path::Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<bool> {
    let prefix = &ckpt.text_prefix;
    let has = |n: &str| ckpt.weights.contains(&format!("{prefix}{n}"));
    let input = QuantizeInput {
        config: &ckpt.config,
        source: &ckpt.weights,
        prefix,
        has: &has,
        tokenizer_dir: Some(tokenizer_dir.unwrap_or(&ckpt.dir)),
    };
    quantize_from(&input, policy, out, progress)
}

/// What [`quantize_from`] converts: a configuration, tensors by HF name, and where the
/// tokenizer files are.
pub struct QuantizeInput<'a> {
    pub config: &'a ModelConfig,
    pub source: &'a (dyn TensorSource + Sync),
    /// Prefix of the text decoder's tensor names in `source`.
    pub prefix: &'a str,
    /// Whether the optional tensor (name relative to `prefix`) exists.
    pub has: &'a dyn Fn(&str) -> bool,
    /// Directory with `tokenizer.model` / `tokenizer.json` (and their config files).
    pub tokenizer_dir: Option<&'a std::path::Path>,
}

/// [`quantize`] from any tensor source (a checkpoint, or random weights for benchmarks).
pub fn quantize_from(
    input: &QuantizeInput,
    policy: &QuantPolicy,
    out: &std::path::Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<bool> {
    let cfg = input.config;
    let prefix = input.prefix;
    let has = input.has;
    let layout: Vec<GgufTensorLayout> = gguf_layout(&cfg.text, &has);
    let specs: Vec<TensorSpec> = layout
        .iter()
        .map(|t| {
            TensorSpec::new(
                t.gguf_name.clone(),
                t.dims.clone(),
                policy.dtype_for(&t.gguf_name, &t.dims).ggml_type(),
            )
        })
        .collect();
    let mut meta = gguf_metadata(cfg);
    meta.retain(|(k, _)| k != "general.file_type" && k != "general.quantization_version");
    meta.push(("general.file_type".into(), Value::U32(policy.file_type)));
    meta.push(("general.quantization_version".into(), Value::U32(2)));
    let vocab = match input.tokenizer_dir {
        Some(dir) => vocab_metadata(dir, cfg.text.vocab_size)?,
        None => None,
    };
    let has_vocab = match vocab {
        Some(v) => {
            // The tokenizer's special ids replace the config-derived ones.
            meta.retain(|(k, _)| !v.iter().any(|(vk, _)| vk == k));
            meta.extend(v);
            true
        }
        None => false,
    };
    let total = layout.len();
    let mut done = 0;
    write_with(out, &meta, &specs, &mut |i, w: &mut dyn Write| {
        let t = &layout[i];
        let dtype = DType::from_ggml_type(specs[i].ggml_type).expect("policy types are ours");
        let cols = t.dims[0] as usize;
        let total_rows: usize = t.dims[1..].iter().product::<u64>() as usize;
        let mut rows_written = 0;
        for part in &t.parts {
            let name = format!("{prefix}{}", part.hf_name);
            let m = input
                .source
                .matrix(&name, &part.hf_shape)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if m.cols() != cols {
                return Err(std::io::Error::other(format!(
                    "{name}: {} columns, GGUF {} wants {cols}",
                    m.cols(),
                    t.gguf_name
                )));
            }
            write_rows(w, dtype, m.rows(), cols, &|r, buf| m.row_to_f32(r, buf))?;
            rows_written += m.rows();
        }
        // Zero rows up to the GGUF shape (the per-layer table is padded to vocab_size).
        if rows_written < total_rows {
            write_rows(w, dtype, total_rows - rows_written, cols, &|_, buf| {
                buf.fill(0.0)
            })?;
        }
        done += 1;
        progress(done, total);
        Ok(())
    })?;
    Ok(has_vocab)
}

/// Converts `rows` rows produced by `row(r, buf)` to `dtype` and writes them.
fn write_rows(
    w: &mut dyn Write,
    dtype: DType,
    rows: usize,
    cols: usize,
    row: &(dyn Fn(usize, &mut [f32]) + Sync),
) -> std::io::Result<()> {
    let rb = dtype.row_bytes(cols);
    let mut start = 0;
    while start < rows {
        let n = ROWS_PER_BATCH.min(rows - start);
        let mut bytes = vec![0u8; n * rb];
        bytes.par_chunks_mut(rb).enumerate().for_each(|(i, out)| {
            let mut buf = vec![0f32; cols];
            row(start + i, &mut buf);
            encode_row(dtype, &buf, out);
        });
        w.write_all(&bytes)?;
        start += n;
    }
    Ok(())
}

fn encode_row(dtype: DType, x: &[f32], out: &mut [u8]) {
    match dtype {
        DType::F32 => out
            .chunks_exact_mut(4)
            .zip(x)
            .for_each(|(o, v)| o.copy_from_slice(&v.to_le_bytes())),
        DType::F16 => out
            .chunks_exact_mut(2)
            .zip(x)
            .for_each(|(o, v)| o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())),
        DType::BF16 => out.chunks_exact_mut(2).zip(x).for_each(|(o, v)| {
            o.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes())
        }),
        q => quant::quantize_row(q, x, out),
    }
}
