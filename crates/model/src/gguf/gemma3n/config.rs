//! Gemma 3n GGUF metadata <-> `ModelConfig` (see `../README.md` for the key table).

use serde_json::{json, Value as Json};

use super::{key, ARCH, KEY_VOCAB_SIZE_PER_LAYER_INPUT};
use crate::config::{LayerType, ModelConfig};
use crate::error::{ModelError, Result};
use crate::gguf::{Gguf, Value, ValueType};

/// Standard normal CDF (to ~1e-15 absolute), used to turn the converter's
/// `activation_sparsity_scale` (= Φ⁻¹(sparsity)) back into the sparsity.
pub fn normal_cdf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let z = x.abs() / std::f64::consts::SQRT_2;
    let erfc = if z < 2.0 {
        // erf series: 2/√π Σ (-1)^n z^(2n+1) / (n! (2n+1))
        let (mut term, mut sum, z2) = (z, z, z * z);
        for n in 1..200 {
            term *= -z2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 {
                break;
            }
        }
        1.0 - sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if z > 27.0 {
        0.0
    } else {
        // continued fraction erfc(z) = e^{-z²}/√π / (z + (1/2)/(z + 1/(z + (3/2)/(z + ...))))
        let mut t = z;
        for k in (1..300).rev() {
            t = z + (k as f64 / 2.0) / t;
        }
        (-z * z).exp() / std::f64::consts::PI.sqrt() / t
    };
    if x >= 0.0 {
        1.0 - 0.5 * erfc
    } else {
        0.5 * erfc
    }
}

/// Φ⁻¹(p) (the converter's `Normal(0, 1).icdf`), by bisection on [`normal_cdf`]; 0 -> -inf.
pub fn normal_icdf(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The HF `config.json` (text-only layout, `model_type: gemma3n_text`) equivalent to the
/// file's `gemma3n.*` metadata and tensor shapes.
pub fn hf_config_json(g: &Gguf) -> Result<Json> {
    let arch = g.architecture()?;
    if arch != ARCH {
        return Err(ModelError::file(
            g.path(),
            format!("metadata `general.architecture` is `{arch}`, expected `{ARCH}`"),
        ));
    }
    let err = |k: &str, msg: String| ModelError::file(g.path(), format!("metadata `{k}`: {msg}"));
    let req = |k: &str| -> Result<u64> {
        let k = key(k);
        g.get_u64(&k)?.ok_or_else(|| err(&k, "missing".into()))
    };
    let l = req("block_count")? as usize;
    if l == 0 {
        return Err(err(&key("block_count"), "must be at least 1".into()));
    }
    let d = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = g.get_u64(&key("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = match g.get_u64(&key("attention.key_length"))? {
        Some(h) => h,
        None if heads > 0 => d / heads,
        None => return Err(err(&key("attention.head_count"), "is 0".into())),
    };
    if let Some(v) = g.get_u64(&key("attention.value_length"))? {
        if v != head_dim {
            return Err(err(
                &key("attention.value_length"),
                format!("{v} differs from key_length {head_dim} (Gemma 3n has one head_dim)"),
            ));
        }
    }
    // Per-layer arrays must have one entry per layer.
    let per_layer = |k: &str| -> Result<Option<&[Value]>> {
        let kk = key(k);
        match g.get_array(&kk)? {
            Some(a) if a.len() != l => Err(err(
                &kk,
                format!("has {} entries, block_count is {l}", a.len()),
            )),
            a => Ok(a),
        }
    };
    let ffn_key = key("feed_forward_length");
    let ffn: Vec<u64> = match g.get(&ffn_key) {
        None => return Err(err(&ffn_key, "missing".into())),
        Some(Value::Array(..)) => per_layer("feed_forward_length")?
            .unwrap_or_default()
            .iter()
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    err(&ffn_key, format!("entry {v} is not a non-negative integer"))
                })
            })
            .collect::<Result<_>>()?,
        Some(v) => vec![
            v.as_u64().ok_or_else(|| err(
                &ffn_key,
                format!("expected an integer or array, got {v}")
            ))?;
            l
        ],
    };
    let sparsity: Json = match per_layer("activation_sparsity_scale")? {
        None => Json::Null,
        Some(a) => a
            .iter()
            .map(|v| {
                v.as_f64()
                    .filter(|s| !s.is_nan())
                    .map(|s| json!(normal_cdf(s)))
                    .ok_or_else(|| {
                        err(
                            &key("activation_sparsity_scale"),
                            format!("entry {v} is not a number"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?
            .into(),
    };
    let layer_types: Json = match per_layer("attention.sliding_window_pattern")? {
        None => Json::Null,
        Some(a) => a
            .iter()
            .map(|v| match v.as_bool() {
                Some(true) => Ok(json!("sliding_attention")),
                Some(false) => Ok(json!("full_attention")),
                None => Err(err(
                    &key("attention.sliding_window_pattern"),
                    format!("entry {v} is not a bool"),
                )),
            })
            .collect::<Result<Vec<_>>>()?
            .into(),
    };
    let f64_or = |k: &str, dflt: f64| -> Result<f64> { Ok(g.get_f64(&key(k))?.unwrap_or(dflt)) };
    let u64_or = |k: &str, dflt: u64| -> Result<u64> { Ok(g.get_u64(&key(k))?.unwrap_or(dflt)) };
    let vocab = g
        .tensor("token_embd.weight")?
        .dims
        .get(1)
        .copied()
        .unwrap_or(0);
    let laurel_rank = g
        .tensor("blk.0.laurel_l.weight")?
        .dims
        .get(1)
        .copied()
        .unwrap_or(0);
    let vp = vocab_size_per_layer_input(g, vocab)?;
    let tok = |k: &str, dflt: u64| -> Result<u64> {
        Ok(g.get_u64(&format!("tokenizer.ggml.{k}"))?.unwrap_or(dflt))
    };
    let mut eos = vec![tok("eos_token_id", 1)?];
    if let Some(eot) = g.get_u64("tokenizer.ggml.eot_token_id")? {
        if !eos.contains(&eot) {
            eos.push(eot);
        }
    }
    let mut v = json!({
        "model_type": "gemma3n_text",
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vp,
        "hidden_size": d,
        "hidden_size_per_layer_input": u64_or("embedding_length_per_layer_input", 256)?,
        "intermediate_size": ffn,
        "num_hidden_layers": l,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": u64_or("context_length", 32768)?,
        "rms_norm_eps": f64_or("attention.layer_norm_rms_epsilon", 1e-6)?,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": f64_or("rope.freq_base", 1e6)?},
            "sliding_attention": {"rope_type": "default", "rope_theta": f64_or("rope.freq_base_swa", 1e4)?},
        },
        "sliding_window": req("attention.sliding_window")?,
        "final_logit_softcapping": g.get_f64(&key("final_logit_softcapping"))?,
        "altup_active_idx": u64_or("altup.active_idx", 0)?,
        "altup_num_inputs": u64_or("altup.num_inputs", 4)?,
        "altup_correct_scale": true,
        // llama.cpp hard-codes 20 KV layers when the key is absent.
        "num_kv_shared_layers": u64_or("attention.shared_kv_layers", (l as u64).saturating_sub(20))?,
        "laurel_rank": laurel_rank,
        "attention_bias": false,
        "bos_token_id": tok("bos_token_id", 2)?,
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
        "pad_token_id": tok("padding_token_id", 0)?,
    });
    let o = v.as_object_mut().expect("object");
    if !sparsity.is_null() {
        o.insert("activation_sparsity_pattern".into(), sparsity);
    }
    if !layer_types.is_null() {
        o.insert("layer_types".into(), layer_types);
    }
    Ok(v)
}

/// The HF `vocab_size_per_layer_input`: our metadata key if present, else the rows of
/// `per_layer_token_embd` minus its trailing all-zero rows (the converter pads the table
/// with zero rows from `vocab_size_per_layer_input` up to `vocab_size`).
pub fn vocab_size_per_layer_input(g: &Gguf, vocab: u64) -> Result<u64> {
    if let Some(v) = g.get_u64(KEY_VOCAB_SIZE_PER_LAYER_INPUT)? {
        return Ok(v);
    }
    let name = "per_layer_token_embd.weight";
    let t = g.tensor(name)?;
    let rows = t.dims.get(1).copied().unwrap_or(1);
    if rows == 0 || rows < vocab {
        return Ok(rows);
    }
    let b = g.tensor_bytes(name)?;
    let row_bytes = b.len() / rows as usize;
    let mut n = rows;
    while n > 1
        && b[(n as usize - 1) * row_bytes..n as usize * row_bytes]
            .iter()
            .all(|&x| x == 0)
    {
        n -= 1;
    }
    Ok(n)
}

/// The model configuration of a Gemma 3n GGUF file (text only: `model_type`
/// `gemma3n_text`, no vision/audio), validated like a `config.json`.
pub fn model_config(g: &Gguf) -> Result<ModelConfig> {
    let v = hf_config_json(g)?;
    ModelConfig::from_json(&v, &format!("{} (GGUF metadata)", g.path().display()))
}

/// The `gemma3n.*` metadata the converter writes for `cfg` (plus `general.architecture`,
/// the token ids, and our `vocab_size_per_layer_input`); tokenizer vocabulary, `general.name`
/// and `general.file_type` are the caller's.
pub fn gguf_metadata(cfg: &ModelConfig) -> Vec<(String, Value)> {
    let t = &cfg.text;
    let u = |x: usize| Value::U32(x as u32);
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(ARCH.into())),
        (key("block_count"), u(t.num_hidden_layers)),
        (key("context_length"), u(t.max_position_embeddings)),
        (key("embedding_length"), u(t.hidden_size)),
        (
            key("feed_forward_length"),
            Value::Array(
                ValueType::I32,
                t.intermediate_size
                    .iter()
                    .map(|&f| Value::I32(f as i32))
                    .collect(),
            ),
        ),
        (key("attention.head_count"), u(t.num_attention_heads)),
        (key("attention.head_count_kv"), u(t.num_key_value_heads)),
        (key("rope.freq_base"), Value::F32(t.rope_theta_full)),
        (key("rope.freq_base_swa"), Value::F32(t.rope_theta_sliding)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(t.rms_norm_eps),
        ),
        (key("attention.key_length"), u(t.head_dim)),
        (key("attention.value_length"), u(t.head_dim)),
    ];
    if let Some(c) = t.final_logit_softcapping {
        m.push((key("final_logit_softcapping"), Value::F32(c)));
    }
    m.extend([
        (key("attention.sliding_window"), u(t.sliding_window)),
        (key("altup.active_idx"), u(t.altup_active_idx)),
        (key("altup.num_inputs"), u(t.altup_num_inputs)),
        (
            key("embedding_length_per_layer_input"),
            u(t.hidden_size_per_layer_input),
        ),
        (key("attention.shared_kv_layers"), u(t.num_kv_shared_layers)),
        (
            key("activation_sparsity_scale"),
            Value::Array(
                ValueType::F32,
                t.activation_sparsity_pattern
                    .iter()
                    .map(|&s| Value::F32(normal_icdf(s as f64) as f32))
                    .collect(),
            ),
        ),
        (
            key("attention.sliding_window_pattern"),
            Value::Array(
                ValueType::Bool,
                t.layer_types
                    .iter()
                    .map(|&lt| Value::Bool(lt == LayerType::Sliding))
                    .collect(),
            ),
        ),
        (
            KEY_VOCAB_SIZE_PER_LAYER_INPUT.into(),
            u(t.vocab_size_per_layer_input),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(cfg.bos_token_id),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(cfg.eos_token_ids.first().copied().unwrap_or(1)),
        ),
        (
            "tokenizer.ggml.padding_token_id".into(),
            Value::U32(cfg.pad_token_id),
        ),
    ]);
    if let Some(&eot) = cfg.eos_token_ids.get(1) {
        m.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(eot)));
    }
    m
}
