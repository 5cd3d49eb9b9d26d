//! Gemma 3n configuration: config.json in both layouts (top-level `gemma3n` with a nested
//! `text_config`, or the text-only `gemma3n_text`), validated field by field.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};

/// Attention type of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerType {
    Sliding,
    Full,
}

/// Where a layer's keys and values come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvSource {
    /// Computes and caches its own K/V.
    Own,
    /// Reads the K/V of layer `n` (same forward step).
    Shared(usize),
}

/// The text decoder's configuration (spec/text.md §1.1).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub vocab_size_per_layer_input: usize,
    pub hidden_size: usize,
    pub hidden_size_per_layer_input: usize,
    pub intermediate_size: Vec<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta_full: f32,
    pub rope_theta_sliding: f32,
    pub sliding_window: usize,
    pub layer_types: Vec<LayerType>,
    pub final_logit_softcapping: Option<f32>,
    pub altup_active_idx: usize,
    pub altup_num_inputs: usize,
    pub altup_correct_scale: bool,
    pub num_kv_shared_layers: usize,
    pub laurel_rank: usize,
    pub activation_sparsity_pattern: Vec<f32>,
}

/// Token ids and other top-level facts of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub text: TextConfig,
    /// `gemma3n` (multimodal layout) or `gemma3n_text`.
    pub model_type: String,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: u32,
    pub pad_token_id: u32,
    pub has_vision: bool,
    pub has_audio: bool,
    /// The vision tower and its token ids (multimodal checkpoints).
    pub vision: Option<VisionConfig>,
    /// The audio tower and its token ids (multimodal checkpoints).
    pub audio: Option<AudioConfig>,
}

/// `audio_config` and the audio token ids of the top level (spec/multimodal.md §0.3).
#[derive(Clone, Debug, PartialEq)]
pub struct AudioConfig {
    /// Mel bins of the input features (128).
    pub input_feat_size: usize,
    /// Conformer width (1536).
    pub hidden_size: usize,
    pub rms_norm_eps: f32,
    /// The bound of the reference's clamps (1e10).
    pub gradient_clipping: f32,
    /// Keys a query sees: itself and `context_left − 1` past frames (13).
    pub context_left: usize,
    pub logit_cap: f32,
    pub num_heads: usize,
    pub num_layers: usize,
    /// Kernel of the causal depthwise convolution (5).
    pub conv_kernel_size: usize,
    /// Output decimation (4).
    pub reduction_factor: usize,
    /// Weight of the half-step feed-forward residuals (0.5).
    pub residual_weight: f32,
    /// Channels of the two sub-sampling convolutions (128, 32).
    pub sscp_channels: [usize; 2],
    /// Square kernel and stride of each sub-sampling convolution (3, 2).
    pub sscp_kernel: [usize; 2],
    pub sscp_stride: [usize; 2],
    pub sscp_eps: f32,
    /// Hard-token rows of the audio embedder (128) and the first id they serve (262272).
    pub vocab_size: usize,
    pub vocab_offset: u32,
    /// Positions every clip takes in a prompt (188).
    pub soft_tokens_per_clip: usize,
    pub audio_token_id: u32,
    pub boa_token_id: u32,
    pub eoa_token_id: u32,
}

/// `vision_config` and the image token ids of the top level (spec/multimodal.md §0).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    /// The tower's blocks: `mobilenetv5_300m_enc`, or the `arch_def` a test variant writes.
    pub arch: crate::vision::arch::VisionArch,
    /// Width of the tower output and of the embedder input (2048).
    pub hidden_size: usize,
    /// Hard-token rows of the vision embedder (128) and the first id they serve (262144).
    pub vocab_size: usize,
    pub vocab_offset: u32,
    pub rms_norm_eps: f32,
    /// Soft tokens per image (256).
    pub soft_tokens_per_image: usize,
    pub image_token_id: u32,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
}

struct Fields<'a> {
    v: &'a Value,
    file: &'a str,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn err(&self, field: &str, msg: impl Into<String>) -> ModelError {
        ModelError::Config {
            file: self.file.to_string(),
            field: format!("{}{}", self.prefix, field),
            msg: msg.into(),
        }
    }
    fn get(&self, field: &str) -> Option<&'a Value> {
        self.v.get(field).filter(|v| !v.is_null())
    }
    fn usize_or(&self, field: &str, default: Option<usize>) -> Result<usize> {
        match self.get(field) {
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.err(field, format!("expected a non-negative integer, got {v}"))
            }),
            None => default.ok_or_else(|| self.err(field, "missing")),
        }
    }
    fn f64_or(&self, field: &str, default: Option<f64>) -> Result<f64> {
        match self.get(field) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, got {v}"))),
            None => default.ok_or_else(|| self.err(field, "missing")),
        }
    }
    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true/false, got {v}"))),
            None => Ok(default),
        }
    }
    /// An int, or a list of ints.
    fn ids(&self, field: &str) -> Result<Option<Vec<u32>>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|n| Some(vec![n as u32]))
                .ok_or_else(|| self.err(field, "expected a token id")),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.err(field, "expected a list of token ids")),
            Some(v) => Err(self.err(field, format!("expected a token id or a list, got {v}"))),
        }
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::file(path, format!("malformed JSON: {e}")))?;
        Self::from_json(&v, &path.display().to_string())
    }

    pub fn from_json(v: &Value, file: &str) -> Result<ModelConfig> {
        let top = Fields {
            v,
            file,
            prefix: "",
        };
        if !v.is_object() {
            return Err(top.err("(root)", "config is not a JSON object"));
        }
        let model_type = top
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| top.err("model_type", "missing"))?
            .to_string();
        let (text_v, prefix) = match model_type.as_str() {
            "gemma3n" => (
                top.get("text_config").ok_or_else(|| {
                    top.err("text_config", "missing (required for model_type gemma3n)")
                })?,
                "text_config.",
            ),
            "gemma3n_text" => (v, ""),
            other => {
                return Err(top.err(
                    "model_type",
                    format!("unknown model_type `{other}`: expected `gemma3n` or `gemma3n_text`"),
                ))
            }
        };
        let tf = Fields {
            v: text_v,
            file,
            prefix,
        };
        if let Some(mt) = tf.get("model_type").and_then(Value::as_str) {
            if mt != "gemma3n_text" {
                return Err(tf.err("model_type", format!("expected `gemma3n_text`, got `{mt}`")));
            }
        }
        let text = TextConfig::from_fields(&tf)?;
        // Token ids: the top level wins (the -it models list [1, 106] there).
        let eos = match top.ids("eos_token_id")? {
            Some(e) => e,
            None => tf.ids("eos_token_id")?.unwrap_or(vec![1]),
        };
        let first = |f: &str, d: u32| -> Result<u32> {
            Ok(match top.ids(f)? {
                Some(v) if !v.is_empty() => v[0],
                _ => tf.ids(f)?.and_then(|v| v.first().copied()).unwrap_or(d),
            })
        };
        Ok(ModelConfig {
            model_type: model_type.clone(),
            eos_token_ids: eos,
            bos_token_id: first("bos_token_id", 2)?,
            pad_token_id: first("pad_token_id", 0)?,
            has_vision: model_type == "gemma3n" && top.get("vision_config").is_some(),
            has_audio: model_type == "gemma3n" && top.get("audio_config").is_some(),
            vision: match (model_type.as_str(), top.get("vision_config")) {
                ("gemma3n", Some(vv)) => Some(VisionConfig::from_fields(&top, vv, file)?),
                _ => None,
            },
            audio: match (model_type.as_str(), top.get("audio_config")) {
                ("gemma3n", Some(av)) => Some(AudioConfig::from_fields(&top, av, file)?),
                _ => None,
            },
            text,
        })
    }
}

impl VisionConfig {
    fn from_fields(top: &Fields<'_>, v: &Value, file: &str) -> Result<VisionConfig> {
        let f = Fields {
            v,
            file,
            prefix: "vision_config.",
        };
        let soft = top.usize_or("vision_soft_tokens_per_image", Some(256))?;
        let side = (soft as f64).sqrt().round() as usize;
        if side * side != soft || soft == 0 {
            return Err(top.err(
                "vision_soft_tokens_per_image",
                format!("{soft} is not a positive square number (the tower outputs a square grid)"),
            ));
        }
        let hidden_size = f.usize_or("hidden_size", Some(2048))?;
        let arch_name = f
            .get("architecture")
            .and_then(Value::as_str)
            .unwrap_or("mobilenetv5_300m_enc");
        let arch = match (arch_name, f.get("arch_def")) {
            (_, Some(def)) => {
                // Our extension for test variants: timm block strings, one list per stage.
                let stages: Vec<Vec<String>> =
                    serde_json::from_value(def.clone()).map_err(|e| {
                        f.err("arch_def", format!("expected lists of block strings: {e}"))
                    })?;
                let stem = f.usize_or("stem_size", Some(64))?;
                let res = f.usize_or("msfa_output_resolution", Some(side))?;
                if res != side {
                    return Err(f.err(
                        "msfa_output_resolution",
                        format!("{res}x{res} tokens, but vision_soft_tokens_per_image is {soft}"),
                    ));
                }
                crate::vision::arch::VisionArch::from_strings(stem, &stages, res, hidden_size)
                    .map_err(|e| f.err("arch_def", e.to_string()))?
            }
            ("mobilenetv5_300m_enc", None) => {
                if side != 16 || hidden_size != 2048 {
                    return Err(f.err(
                        "hidden_size",
                        "mobilenetv5_300m_enc gives 2048 x 16 x 16 (256 soft tokens of width 2048)",
                    ));
                }
                crate::vision::arch::VisionArch::mobilenetv5_300m_enc()
            }
            (other, None) => {
                return Err(f.err(
                    "architecture",
                    format!("unknown vision tower `{other}` (supported: mobilenetv5_300m_enc)"),
                ))
            }
        };
        let id = |field: &str, d: u32| -> Result<u32> {
            Ok(top
                .ids(field)?
                .and_then(|v| v.first().copied())
                .unwrap_or(d))
        };
        Ok(VisionConfig {
            arch,
            hidden_size,
            vocab_size: f.usize_or("vocab_size", Some(128))?,
            vocab_offset: f.usize_or("vocab_offset", Some(262_144))? as u32,
            rms_norm_eps: f.f64_or("rms_norm_eps", Some(1e-6))? as f32,
            soft_tokens_per_image: soft,
            image_token_id: id("image_token_id", 262_145)?,
            boi_token_id: id("boi_token_id", 255_999)?,
            eoi_token_id: id("eoi_token_id", 262_144)?,
        })
    }
}

impl AudioConfig {
    fn from_fields(top: &Fields<'_>, v: &Value, file: &str) -> Result<AudioConfig> {
        let f = Fields {
            v,
            file,
            prefix: "audio_config.",
        };
        let positive = |field: &str, d: usize| -> Result<usize> {
            let n = f.usize_or(field, Some(d))?;
            if n == 0 {
                return Err(f.err(field, "must be at least 1"));
            }
            Ok(n)
        };
        let hidden_size = positive("hidden_size", 1536)?;
        let num_heads = positive("conf_num_attention_heads", 8)?;
        if hidden_size % num_heads != 0 {
            return Err(f.err(
                "conf_num_attention_heads",
                format!("{num_heads} heads do not divide hidden_size {hidden_size}"),
            ));
        }
        if hidden_size % 2 != 0 {
            return Err(f.err("hidden_size", "must be even (sin and cos halves)"));
        }
        let right = f.usize_or("conf_attention_context_right", Some(0))?;
        if right != 0 {
            return Err(f.err(
                "conf_attention_context_right",
                format!("{right}: only causal attention (0) is supported"),
            ));
        }
        let context_left = positive("conf_attention_context_left", 13)?;
        if context_left > 64 {
            return Err(f.err("conf_attention_context_left", "at most 64 is supported"));
        }
        let pair = |field: &str, d: [usize; 2]| -> Result<[usize; 2]> {
            match f.get(field) {
                None => Ok(d),
                Some(v) => serde_json::from_value::<[usize; 2]>(v.clone())
                    .map_err(|e| f.err(field, format!("expected two integers: {e}"))),
            }
        };
        let square = |field: &str, d: usize| -> Result<[usize; 2]> {
            match f.get(field) {
                None => Ok([d, d]),
                Some(v) => {
                    let p: [[usize; 2]; 2] = serde_json::from_value(v.clone()).map_err(|e| {
                        f.err(field, format!("expected two (time, freq) pairs: {e}"))
                    })?;
                    if p.iter().any(|q| q[0] != q[1] || q[0] == 0) {
                        return Err(f.err(
                            field,
                            "only equal, positive time and frequency sizes are supported",
                        ));
                    }
                    Ok([p[0][0], p[1][0]])
                }
            }
        };
        let id = |field: &str, d: u32| -> Result<u32> {
            Ok(top
                .ids(field)?
                .and_then(|v| v.first().copied())
                .unwrap_or(d))
        };
        let sscp_channels = pair("sscp_conv_channel_size", [128, 32])?;
        if sscp_channels.contains(&0) {
            return Err(f.err("sscp_conv_channel_size", "channels must be positive"));
        }
        Ok(AudioConfig {
            input_feat_size: positive("input_feat_size", 128)?,
            hidden_size,
            rms_norm_eps: f.f64_or("rms_norm_eps", Some(1e-6))? as f32,
            gradient_clipping: f.f64_or("gradient_clipping", Some(1e10))? as f32,
            context_left,
            logit_cap: f.f64_or("conf_attention_logit_cap", Some(50.0))? as f32,
            num_heads,
            num_layers: f.usize_or("conf_num_hidden_layers", Some(12))?,
            conv_kernel_size: positive("conf_conv_kernel_size", 5)?,
            reduction_factor: positive("conf_reduction_factor", 4)?,
            residual_weight: f.f64_or("conf_residual_weight", Some(0.5))? as f32,
            sscp_channels,
            sscp_kernel: square("sscp_conv_kernel_size", 3)?,
            sscp_stride: square("sscp_conv_stride_size", 2)?,
            sscp_eps: f.f64_or("sscp_conv_group_norm_eps", Some(1e-3))? as f32,
            vocab_size: positive("vocab_size", 128)?,
            vocab_offset: f.usize_or("vocab_offset", Some(262_272))? as u32,
            soft_tokens_per_clip: positive_top(top, "audio_soft_tokens_per_image", 188)?,
            audio_token_id: id("audio_token_id", 262_273)?,
            boa_token_id: id("boa_token_id", 256_000)?,
            eoa_token_id: id("eoa_token_id", 262_272)?,
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

fn positive_top(top: &Fields<'_>, field: &str, d: usize) -> Result<usize> {
    let n = top.usize_or(field, Some(d))?;
    if n == 0 {
        return Err(top.err(field, "must be at least 1"));
    }
    Ok(n)
}

impl TextConfig {
    fn from_fields(f: &Fields<'_>) -> Result<TextConfig> {
        let l = f.usize_or("num_hidden_layers", Some(35))?;
        if l == 0 {
            return Err(f.err("num_hidden_layers", "must be at least 1"));
        }
        let intermediate_size = match f.get("intermediate_size") {
            None => vec![16384; l],
            Some(Value::Number(n)) => {
                let n = n
                    .as_u64()
                    .ok_or_else(|| f.err("intermediate_size", "expected a positive integer"))?;
                vec![n as usize; l]
            }
            Some(Value::Array(a)) => {
                let v = a
                    .iter()
                    .map(|x| x.as_u64().map(|n| n as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| f.err("intermediate_size", "expected a list of integers"))?;
                if v.len() != l {
                    return Err(f.err(
                        "intermediate_size",
                        format!("list has {} entries, num_hidden_layers is {l}", v.len()),
                    ));
                }
                v
            }
            Some(v) => {
                return Err(f.err(
                    "intermediate_size",
                    format!("expected int or list, got {v}"),
                ))
            }
        };
        if let Some(i) = intermediate_size.iter().position(|&w| w == 0) {
            return Err(f.err("intermediate_size", format!("entry {i} is 0")));
        }
        let layer_types = match f.get("layer_types") {
            None => (0..l)
                .map(|i| {
                    if (i + 1) % 5 == 0 {
                        LayerType::Full
                    } else {
                        LayerType::Sliding
                    }
                })
                .collect(),
            Some(Value::Array(a)) => {
                let v = a
                    .iter()
                    .enumerate()
                    .map(|(i, x)| match x.as_str() {
                        Some("full_attention") => Ok(LayerType::Full),
                        Some("sliding_attention") => Ok(LayerType::Sliding),
                        _ => Err(f.err(
                            "layer_types",
                            format!("entry {i} is {x}: expected \"full_attention\" or \"sliding_attention\""),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?;
                if v.len() != l {
                    return Err(f.err(
                        "layer_types",
                        format!("list has {} entries, num_hidden_layers is {l}", v.len()),
                    ));
                }
                v
            }
            Some(v) => return Err(f.err("layer_types", format!("expected a list, got {v}"))),
        };
        let activation_sparsity_pattern = match f.get("activation_sparsity_pattern") {
            None => (0..l)
                .map(|i| if l > 10 && i < 10 { 0.95 } else { 0.0 })
                .collect(),
            Some(Value::Array(a)) => {
                let v = a
                    .iter()
                    .map(|x| x.as_f64().map(|n| n as f32))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        f.err("activation_sparsity_pattern", "expected a list of numbers")
                    })?;
                if v.len() != l {
                    return Err(f.err(
                        "activation_sparsity_pattern",
                        format!("list has {} entries, num_hidden_layers is {l}", v.len()),
                    ));
                }
                if let Some(i) = v.iter().position(|&s| !(0.0..1.0).contains(&s)) {
                    return Err(f.err(
                        "activation_sparsity_pattern",
                        format!("entry {i} is {}: must be in [0, 1)", v[i]),
                    ));
                }
                v
            }
            Some(v) => {
                return Err(f.err(
                    "activation_sparsity_pattern",
                    format!("expected a list, got {v}"),
                ))
            }
        };
        // RoPE: v5 `rope_parameters` {full_attention: {rope_theta}, sliding_attention: {rope_theta}}
        // or the legacy keys `rope_theta` (full) and `rope_local_base_freq` (sliding).
        let (mut full, mut sliding) = (1e6f64, 1e4f64);
        if let Some(rp) = f.get("rope_parameters") {
            let sub = |k: &str| -> Result<Option<f64>> {
                match rp.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(o) => {
                        let rt = o
                            .get("rope_type")
                            .and_then(Value::as_str)
                            .unwrap_or("default");
                        if rt != "default" {
                            return Err(f.err(
                                &format!("rope_parameters.{k}.rope_type"),
                                format!("`{rt}` is not supported (only `default`)"),
                            ));
                        }
                        Ok(o.get("rope_theta").and_then(Value::as_f64))
                    }
                }
            };
            if let Some(t) = sub("full_attention")? {
                full = t;
            }
            if let Some(t) = sub("sliding_attention")? {
                sliding = t;
            }
        } else {
            full = f.f64_or("rope_theta", Some(full))?;
            sliding = f.f64_or("rope_local_base_freq", Some(sliding))?;
            if let Some(rs) = f.get("rope_scaling") {
                let rt = rs
                    .get("rope_type")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if rt != "default" {
                    return Err(f.err("rope_scaling", format!("`{rt}` is not supported")));
                }
            }
        }
        if f.bool_or("attention_bias", false)? {
            return Err(f.err(
                "attention_bias",
                "true is not supported (Gemma 3n has no biases)",
            ));
        }
        if let Some(act) = f.get("hidden_activation").and_then(Value::as_str) {
            if act != "gelu_pytorch_tanh" {
                return Err(f.err(
                    "hidden_activation",
                    format!("`{act}` is not supported (expected gelu_pytorch_tanh)"),
                ));
            }
        }
        let hidden = f.usize_or("hidden_size", Some(2048))?;
        let heads = f.usize_or("num_attention_heads", Some(8))?;
        let kv_heads = f.usize_or("num_key_value_heads", Some(2))?;
        if kv_heads == 0 || heads % kv_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads {heads}"),
            ));
        }
        let head_dim = f.usize_or("head_dim", Some(256))?;
        if head_dim % 2 != 0 {
            return Err(f.err("head_dim", "must be even (RoPE rotates halves)"));
        }
        let altup_num_inputs = f.usize_or("altup_num_inputs", Some(4))?;
        let altup_active_idx = f.usize_or("altup_active_idx", Some(0))?;
        if altup_active_idx != 0 || altup_num_inputs < 2 {
            return Err(f.err(
                "altup_active_idx",
                "only altup_active_idx 0 with at least 2 AltUp inputs is supported",
            ));
        }
        let num_kv_shared_layers = f.usize_or("num_kv_shared_layers", Some(15))?;
        if num_kv_shared_layers >= l {
            return Err(f.err(
                "num_kv_shared_layers",
                format!("{num_kv_shared_layers} must be less than num_hidden_layers {l}"),
            ));
        }
        let cfg = TextConfig {
            vocab_size: f.usize_or("vocab_size", Some(262400))?,
            vocab_size_per_layer_input: f.usize_or("vocab_size_per_layer_input", Some(262144))?,
            hidden_size: hidden,
            hidden_size_per_layer_input: f.usize_or("hidden_size_per_layer_input", Some(256))?,
            intermediate_size,
            num_hidden_layers: l,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            max_position_embeddings: f.usize_or("max_position_embeddings", Some(32768))?,
            rms_norm_eps: f.f64_or("rms_norm_eps", Some(1e-6))? as f32,
            rope_theta_full: full as f32,
            rope_theta_sliding: sliding as f32,
            sliding_window: f.usize_or("sliding_window", Some(512))?,
            layer_types,
            final_logit_softcapping: match f.v.get("final_logit_softcapping") {
                // Absent: the HF default 30.0; an explicit null: no soft-cap.
                None => Some(30.0),
                Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_f64()
                        .ok_or_else(|| f.err("final_logit_softcapping", "expected a number"))?
                        as f32,
                ),
            },
            altup_active_idx,
            altup_num_inputs,
            altup_correct_scale: f.bool_or("altup_correct_scale", true)?,
            num_kv_shared_layers,
            laurel_rank: f.usize_or("laurel_rank", Some(64))?,
            activation_sparsity_pattern,
        };
        if cfg.sliding_window == 0 {
            return Err(f.err("sliding_window", "must be at least 1"));
        }
        // Every KV consumer needs a producer of its own type.
        for l in cfg.first_kv_shared_layer()..l {
            if cfg.kv_producer(cfg.layer_types[l]).is_none() {
                return Err(f.err(
                    "layer_types",
                    format!(
                        "KV-shared layer {l} is {:?} but no earlier non-shared layer has that type",
                        cfg.layer_types[l]
                    ),
                ));
            }
        }
        Ok(cfg)
    }

    /// Index of the first layer that reuses another layer's K/V.
    pub fn first_kv_shared_layer(&self) -> usize {
        self.num_hidden_layers - self.num_kv_shared_layers
    }

    /// The last non-shared layer of type `t` (the producer consumers of that type read).
    pub fn kv_producer(&self, t: LayerType) -> Option<usize> {
        (0..self.first_kv_shared_layer())
            .rev()
            .find(|&i| self.layer_types[i] == t)
    }

    pub fn kv_source(&self, layer: usize) -> KvSource {
        if layer < self.first_kv_shared_layer() {
            KvSource::Own
        } else {
            KvSource::Shared(
                self.kv_producer(self.layer_types[layer])
                    .expect("validated"),
            )
        }
    }

    pub fn rope_theta(&self, layer: usize) -> f32 {
        match self.layer_types[layer] {
            LayerType::Full => self.rope_theta_full,
            LayerType::Sliding => self.rope_theta_sliding,
        }
    }

    /// The real E2B text config (spec §1.1), for synthetic benchmarks.
    pub fn e2b() -> TextConfig {
        let mut c = Self::e4b();
        c.num_hidden_layers = 30;
        c.intermediate_size = vec![8192; 30];
        c.layer_types.truncate(30);
        c.activation_sparsity_pattern.truncate(30);
        c.num_kv_shared_layers = 10;
        c
    }

    /// The real E4B text config (spec §1.1).
    pub fn e4b() -> TextConfig {
        let v = serde_json::json!({"model_type": "gemma3n_text"});
        let f = Fields {
            v: &v,
            file: "(built-in)",
            prefix: "",
        };
        Self::from_fields(&f).expect("defaults are valid")
    }
}
