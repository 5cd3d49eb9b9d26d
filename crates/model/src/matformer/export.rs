//! `gemma3n slice`: writes a MatFormer slice as a standalone checkpoint (spec §6.2) that
//! HF transformers loads: the kept layers renamed in order, FFN matrices cut to their
//! prefixes, the per-layer embedding table and projection reduced to the kept layers,
//! config.json edited, every other file and tensor copied unchanged.

use std::io::Write;
use std::path::Path;

use serde_json::Value;

use super::SlicePlan;
use crate::checkpoint::Checkpoint;
use crate::config::LayerType;
use crate::error::{ModelError, Result};
use crate::safetensors::{write_with, Entry};

/// How one output tensor is made from the input.
enum Source {
    /// The whole input tensor.
    Copy(String),
    /// The first `rows` rows of `[rows_in, cols]`.
    Rows {
        name: String,
        row_bytes: usize,
        rows: usize,
    },
    /// The first `cols` columns of every row.
    Cols {
        name: String,
        rows: usize,
        row_bytes_in: usize,
        cols_bytes: usize,
    },
    /// Blocks of `block` bytes picked from each row (`row_bytes_in` long): PLE columns.
    RowBlocks {
        name: String,
        rows: usize,
        row_bytes_in: usize,
        block: usize,
        keep: Vec<usize>,
    },
}

/// Writes the slice `plan` of `ckpt` to `out` (created if needed; must not be the input).
/// `progress(done, total)` is called per tensor.
pub fn export(
    ckpt: &Checkpoint,
    plan: &SlicePlan,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<()> {
    let cfg = &ckpt.config.text;
    if out.exists() && out.canonicalize().ok() == ckpt.dir.canonicalize().ok() {
        return Err(ModelError::file(
            out,
            "the output directory is the input checkpoint",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let prefix = &ckpt.text_prefix;
    let p = cfg.hidden_size_per_layer_input;
    let mut new_index = vec![None; cfg.num_hidden_layers];
    for (k, sl) in plan.layers.iter().enumerate() {
        new_index[sl.layer] = Some(k);
    }
    let kept: Vec<usize> = plan.layers.iter().map(|sl| sl.layer).collect();

    let mut entries = Vec::new();
    let mut sources = Vec::new();
    for name in ckpt.weights.names() {
        let info = ckpt.weights.info(name).expect("listed");
        let es = info.len / info.shape.iter().product::<usize>().max(1);
        let mut shape = info.shape.clone();
        let rest = name.strip_prefix(prefix.as_str());
        let source = match rest {
            Some(r) if r.starts_with("layers.") => {
                let mut parts = r.splitn(3, '.');
                let (_, idx, tail) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
                let old: usize = idx
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(|| ModelError::tensor(name, "unexpected layer tensor name"))?;
                let Some(k) = new_index.get(old).copied().flatten() else {
                    continue; // a skipped layer
                };
                let f = plan.layers[k].ffn_width;
                let new_name = format!("{prefix}layers.{k}.{tail}");
                let src = match tail {
                    "mlp.gate_proj.weight" | "mlp.up_proj.weight" => {
                        shape[0] = f;
                        Source::Rows {
                            name: name.clone(),
                            row_bytes: info.shape[1] * es,
                            rows: f,
                        }
                    }
                    "mlp.down_proj.weight" => {
                        shape[1] = f;
                        Source::Cols {
                            name: name.clone(),
                            rows: info.shape[0],
                            row_bytes_in: info.shape[1] * es,
                            cols_bytes: f * es,
                        }
                    }
                    _ => Source::Copy(name.clone()),
                };
                entries.push(Entry {
                    name: new_name,
                    dtype: info.dtype_name.clone(),
                    shape,
                    len: 0,
                });
                sources.push(src);
                continue;
            }
            Some("embed_tokens_per_layer.weight") => {
                shape[1] = kept.len() * p;
                Source::RowBlocks {
                    name: name.clone(),
                    rows: info.shape[0],
                    row_bytes_in: info.shape[1] * es,
                    block: p * es,
                    keep: kept.clone(),
                }
            }
            Some("per_layer_model_projection.weight") => {
                // [L·P, D] viewed as L blocks of P rows: one block = P·D elements.
                shape[0] = kept.len() * p;
                Source::RowBlocks {
                    name: name.clone(),
                    rows: 1,
                    row_bytes_in: info.len,
                    block: p * info.shape[1] * es,
                    keep: kept.clone(),
                }
            }
            _ => Source::Copy(name.clone()),
        };
        entries.push(Entry {
            name: name.clone(),
            dtype: info.dtype_name.clone(),
            shape,
            len: 0,
        });
        sources.push(source);
    }
    for (e, s) in entries.iter_mut().zip(&sources) {
        let n: usize = e.shape.iter().product();
        let es = match s {
            Source::Copy(name)
            | Source::Rows { name, .. }
            | Source::Cols { name, .. }
            | Source::RowBlocks { name, .. } => {
                let i = ckpt.weights.info(name).expect("listed");
                i.len / i.shape.iter().product::<usize>().max(1)
            }
        };
        e.len = n * es;
    }

    let total = entries.len();
    let path = out.join("model.safetensors");
    let mut done = 0;
    write_with(&path, &entries, &mut |i, w: &mut dyn Write| {
        let r = write_source(ckpt, &sources[i], w);
        done += 1;
        progress(done, total);
        r
    })?;

    // config.json: the text config edited, everything else as it was.
    let cfg_path = ckpt.dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
    let mut v: Value =
        serde_json::from_str(&text).map_err(|e| ModelError::file(&cfg_path, e.to_string()))?;
    let tc = if v.get("text_config").is_some() {
        &mut v["text_config"]
    } else {
        &mut v
    };
    let sliced = plan.sliced_config(cfg);
    tc["num_hidden_layers"] = sliced.num_hidden_layers.into();
    tc["intermediate_size"] = sliced.intermediate_size.clone().into();
    tc["num_kv_shared_layers"] = sliced.num_kv_shared_layers.into();
    // Keep the file's own spelling of each kept layer's sparsity (0.95, not its f32 value).
    let original = tc
        .get("activation_sparsity_pattern")
        .and_then(Value::as_array)
        .cloned();
    tc["activation_sparsity_pattern"] = Value::Array(
        plan.layers
            .iter()
            .map(|sl| match &original {
                Some(a) if a.len() == cfg.num_hidden_layers => a[sl.layer].clone(),
                // The shortest decimal that reads back as the same f32 (0.95, not 0.9499999).
                _ => Value::from(sl.sparsity.to_string().parse::<f64>().unwrap_or(0.0)),
            })
            .collect(),
    );
    tc["layer_types"] = Value::Array(
        sliced
            .layer_types
            .iter()
            .map(|t| {
                Value::from(if *t == LayerType::Full {
                    "full_attention"
                } else {
                    "sliding_attention"
                })
            })
            .collect(),
    );
    let out_cfg = out.join("config.json");
    std::fs::write(
        &out_cfg,
        serde_json::to_string_pretty(&v).expect("json") + "\n",
    )
    .map_err(|e| ModelError::io(&out_cfg, e))?;

    // Every other file (tokenizer, templates, generation config) copied as is.
    let rd = std::fs::read_dir(&ckpt.dir).map_err(|e| ModelError::io(&ckpt.dir, e))?;
    for e in rd {
        let e = e.map_err(|e| ModelError::io(&ckpt.dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = name == "config.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if !skip && e.path().is_file() {
            std::fs::copy(e.path(), out.join(&name))
                .map_err(|err| ModelError::io(e.path(), err))?;
        }
    }
    Ok(())
}

fn write_source(ckpt: &Checkpoint, s: &Source, w: &mut dyn Write) -> std::io::Result<()> {
    let bytes = |name: &str| {
        ckpt.weights
            .bytes(name)
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    match s {
        Source::Copy(name) => w.write_all(bytes(name)?),
        Source::Rows {
            name,
            row_bytes,
            rows,
        } => w.write_all(&bytes(name)?[..row_bytes * rows]),
        Source::Cols {
            name,
            rows,
            row_bytes_in,
            cols_bytes,
        } => {
            let b = bytes(name)?;
            for r in 0..*rows {
                w.write_all(&b[r * row_bytes_in..r * row_bytes_in + cols_bytes])?;
            }
            Ok(())
        }
        Source::RowBlocks {
            name,
            rows,
            row_bytes_in,
            block,
            keep,
        } => {
            let b = bytes(name)?;
            for r in 0..*rows {
                let row = &b[r * row_bytes_in..(r + 1) * row_bytes_in];
                for &l in keep {
                    w.write_all(&row[l * block..(l + 1) * block])?;
                }
            }
            Ok(())
        }
    }
}
