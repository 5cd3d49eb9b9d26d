//! `gemma3n inspect`: config summary, parameter counts, bytes per token, memory plan.

use std::path::PathBuf;

use anyhow::Result;
use gemma3n_model::config::{KvSource, LayerType};
use gemma3n_model::{Checkpoint, ModelConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Describe this MatFormer slice of the model instead of the whole model.
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
    /// With cuda[:N]: upload the decoder to the GPU and report the bytes it holds there
    /// and in host memory.
    #[command(flatten)]
    device: crate::device::DeviceArgs,
}

/// Bytes in the largest decimal unit that keeps the number >= 1.
pub fn gb(bytes: f64) -> String {
    let units = [(1e9, "GB"), (1e6, "MB"), (1e3, "KB")];
    for (scale, unit) in units {
        if bytes >= scale {
            return format!("{:.2} {unit}", bytes / scale);
        }
    }
    format!("{bytes:.0} B")
}

/// Layers, widths, heads and vocabulary of the text decoder.
fn print_shape(t: &gemma3n_model::TextConfig) {
    println!(
        "text         {} layers, hidden {}, heads {}/{} (kv), head_dim {}, vocab {}",
        t.num_hidden_layers,
        t.hidden_size,
        t.num_attention_heads,
        t.num_key_value_heads,
        t.head_dim,
        t.vocab_size
    );
    let widths: Vec<String> = t.intermediate_size.iter().map(|w| w.to_string()).collect();
    println!("ffn widths   [{}]", widths.join(", "));
}

/// A GGUF file: its config (from the metadata), and its tensors by storage type.
fn inspect_gguf(path: &std::path::Path) -> Result<()> {
    use gemma3n_model::gguf::{gemma3n, Gguf};
    use std::collections::BTreeMap;
    let g = Gguf::open(path)?;
    let c = gemma3n::model_config(&g)?;
    let t = &c.text;
    println!(
        "model        {} (GGUF v{}, {})",
        path.display(),
        g.version(),
        g.architecture()?
    );
    print_shape(t);
    // (count, elements, bytes) per storage type, and per role.
    let mut by_type: BTreeMap<String, (usize, u64, usize)> = BTreeMap::new();
    let (mut total, mut ple) = (0usize, 0usize);
    for ti in g.tensors() {
        let e = by_type.entry(ti.type_name()).or_default();
        e.0 += 1;
        e.1 += ti.n_elements();
        e.2 += ti.len;
        total += ti.len;
        if ti.name == "per_layer_token_embd.weight" {
            ple += ti.len;
        }
    }
    println!();
    println!("tensors by storage type");
    println!(
        "  {:<8} {:>7} {:>16} {:>12}",
        "type", "tensors", "elements", "bytes"
    );
    for (ty, (n, el, b)) in &by_type {
        println!("  {ty:<8} {n:>7} {el:>16} {:>12}", gb(*b as f64));
    }
    println!();
    println!("file data                         {}", gb(total as f64));
    println!("  PLE table (one row read/token)  {}", gb(ple as f64));
    println!(
        "  everything else (read per token before sparsity and KV sharing) {}",
        gb((total - ple) as f64)
    );
    println!("(exact bytes per token, with the sparse FFN reads: gemma3n bench --model FILE)");
    Ok(())
}

pub fn main(a: Args) -> Result<()> {
    let device = a.device.parse()?;
    if let crate::device::Device::Cuda(n) = device {
        return gpu_memory(&a, n);
    }
    if a.model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return inspect_gguf(&a.model);
    }
    // The config alone is enough; the weights add their dtype and layout.
    let c = ModelConfig::from_file(&a.model.join("config.json"))?;
    let weights = if a.model.join("model.safetensors").exists()
        || a.model.join("model.safetensors.index.json").exists()
    {
        Some(Checkpoint::open(&a.model)?)
    } else {
        None
    };
    let sliced;
    let t = match a.slice.slice(&c.text)? {
        Some(s) => {
            let plan = gemma3n_model::SlicePlan::new(&c.text, &s)?;
            let kept: Vec<usize> = plan.layers.iter().map(|l| l.layer).collect();
            println!("slice        `{}`: stored layers {kept:?}", plan.name);
            sliced = plan.sliced_config(&c.text);
            &sliced
        }
        None => &c.text,
    };
    let dtype = weights
        .as_ref()
        .and_then(|ck| {
            ck.weights
                .info(&format!("{}embed_tokens.weight", ck.text_prefix))
                .map(|i| i.dtype_name.clone())
        })
        .unwrap_or_else(|| "BF16".into());
    let es = match dtype.as_str() {
        "F32" => 4.0,
        _ => 2.0,
    };
    println!("model        {} ({})", a.model.display(), c.model_type);
    match &weights {
        Some(ck) => println!("weights      {dtype}, text prefix `{}`", ck.text_prefix),
        None => println!("weights      none found (config only; sizes assume BF16)"),
    }
    print_shape(t);
    let full: Vec<usize> = (0..t.num_hidden_layers)
        .filter(|&l| t.layer_types[l] == LayerType::Full)
        .collect();
    println!(
        "full attn    layers {full:?}; sliding window {}",
        t.sliding_window
    );
    let shared: Vec<String> = (0..t.num_hidden_layers)
        .filter_map(|l| match t.kv_source(l) {
            KvSource::Shared(p) => Some(format!("{l}<-{p}")),
            KvSource::Own => None,
        })
        .collect();
    println!(
        "kv sharing   {} own-cache layers; {}",
        t.first_kv_shared_layer(),
        shared.join(" ")
    );
    let sparse: Vec<String> = t
        .activation_sparsity_pattern
        .iter()
        .enumerate()
        .filter(|(_, &s)| s > 0.0)
        .map(|(l, s)| format!("{l}:{s}"))
        .collect();
    println!("sparsity     {}", sparse.join(" "));
    println!(
        "context      {} tokens; eos ids {:?}",
        t.max_position_embeddings, c.eos_token_ids
    );
    println!(
        "towers       vision: {}, audio: {}",
        c.has_vision, c.has_audio
    );
    let s = t.stats();
    println!();
    println!("parameters (text)");
    println!("  embeddings (tied LM head) {:>15}", s.embed_params);
    println!("  per-layer embeddings      {:>15}", s.ple_params);
    println!("  decoder layers            {:>15}", s.layer_params);
    println!(
        "  unused shared k/v         {:>15}",
        s.unused_shared_kv_params
    );
    println!("  other (PLE proj, AltUp)   {:>15}", s.other_params);
    println!("  effective                 {:>15}", s.effective_params());
    println!("  total                     {:>15}", s.total_params());
    println!();
    let per_tok = s.params_per_token as f64 * es;
    println!("bytes read per decoded token: {} ({dtype})", gb(per_tok));
    println!("memory plan");
    println!(
        "  weights other than PLE (mapped)   {}",
        gb((s.total_params() - s.ple_params) as f64 * es)
    );
    println!(
        "  PLE table, mapped, {}/token  {}",
        gb((t.num_hidden_layers * t.hidden_size_per_layer_input) as f64 * es),
        gb(s.ple_params as f64 * es)
    );
    let kv_per_tok = |n: usize| -> f64 {
        (0..t.first_kv_shared_layer())
            .map(|l| {
                let len = if t.layer_types[l] == LayerType::Sliding {
                    n.min(2 * t.sliding_window - 1)
                } else {
                    n
                };
                (len * 2 * t.num_key_value_heads * t.head_dim * 4) as f64
            })
            .sum()
    };
    println!(
        "  KV cache (f32) at 4096 tokens     {}",
        gb(kv_per_tok(4096))
    );
    println!(
        "  KV cache (f32) at {} tokens   {}",
        t.max_position_embeddings,
        gb(kv_per_tok(t.max_position_embeddings))
    );
    if a.slice.slice(&c.text)?.is_none() {
        print_slices(t, es);
    }
    println!();
    println!("quantization presets (gemma3n quantize --type NAME)");
    for p in gemma3n_model::quantize::QuantPolicy::presets() {
        println!("  {}", p.describe());
    }
    Ok(())
}

/// Every official MatFormer slice that fits this model: effective parameters, bytes read
/// per decoded token and the published MMLU figure.
fn print_slices(t: &gemma3n_model::TextConfig, es: f64) {
    use gemma3n_model::matformer::{official_slices, SlicePlan};
    println!();
    let fitting: Vec<_> = official_slices()
        .into_iter()
        .filter_map(|s| SlicePlan::new(t, &s.slice).ok().map(|p| (s, p)))
        .collect();
    if fitting.is_empty() {
        println!("MatFormer slices: the named slices are for E4B-shaped checkpoints (35 layers); use --slice FILE for a custom one");
        return;
    }
    println!("MatFormer slices (--size NAME)");
    println!(
        "  {:<14} {:>6} {:>16} {:>12} {:>7}  official name",
        "name", "layers", "effective params", "bytes/token", "MMLU"
    );
    for (s, plan) in fitting {
        let c = plan.sliced_config(t);
        let st = c.stats();
        println!(
            "  {:<14} {:>6} {:>16} {:>12} {:>6.1}%  {}",
            s.short,
            c.num_hidden_layers,
            st.effective_params(),
            gb(st.params_per_token as f64 * es),
            s.mmlu,
            s.official
        );
    }
}

/// `inspect --device cuda`: the decoder uploaded, and where its bytes are.
#[cfg(feature = "cuda")]
fn gpu_memory(a: &Args, ordinal: usize) -> Result<()> {
    let model = std::sync::Arc::new(crate::load::load_any(&a.model)?);
    let gm = crate::device::to_gpu(model.clone(), ordinal, &a.device)?;
    let plan = a.slice.plan(&model.cfg)?;
    let cache = gm.new_cache_with_plan(plan.clone(), 4096)?;
    let m = gm.memory();
    let (free, total) = gm.gpu().mem_info()?;
    println!(
        "model        {} on {}",
        a.model.display(),
        gm.gpu().describe()
    );
    println!("slice        {}", plan.name);
    println!(
        "device       weights {} (bf16, every layer: slices run on them without copies)",
        gb(m.device_weight_bytes as f64)
    );
    println!(
        "device       KV cache (f32) for 4096 positions {}",
        gb(cache.bytes() as f64)
    );
    println!(
        "host         per-layer embedding table {} (rows copied per token)",
        gb(m.host_bytes as f64)
    );
    println!(
        "GPU memory   {} free of {}",
        gb(free as f64),
        gb(total as f64)
    );
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu_memory(_: &Args, _: usize) -> Result<()> {
    unreachable!("--device cuda is refused by DeviceArgs::parse without the cuda feature")
}
