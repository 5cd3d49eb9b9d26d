//! `gemma3n bench`: prefill and decode speed, effective GB/s and % of this machine's
//! memory bandwidth (measured by the command itself).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use gemma3n_compute::DType;
use gemma3n_model::{Logits, TextConfig, TextModel};
use indicatif::{ProgressBar, ProgressStyle};

use crate::slice::SliceArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights with the real shapes, built in memory: e2b or e4b.
    #[arg(long)]
    synthetic: Option<String>,
    /// Weight dtype for --synthetic: bf16, f16, f32, q8_0, q4_0, q4_k, q5_k or q6_k
    /// (block formats for every matrix whose rows hold whole blocks; the others bf16).
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 32)]
    gen: usize,
    /// Seed of the synthetic weights and the random prompt.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    slice: String,
    dtype: String,
    threads: usize,
    prompt_len: usize,
    gen: usize,
    prefill_s: f64,
    prefill_tok_s: f64,
    decode_s: f64,
    decode_tok_s: f64,
    bytes_per_token: f64,
    decode_gb_s: f64,
    bandwidth_gb_s: f64,
    bandwidth_pct: f64,
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

pub fn main(a: Args) -> Result<()> {
    if a.prompt_len == 0 || a.gen == 0 {
        bail!("--prompt-len and --gen must be at least 1");
    }
    let (name, model, dtype) = match (&a.model, &a.synthetic) {
        (Some(path), None) => {
            let m = crate::load::load_any(path)?;
            // The format of the layer matrices decides the bytes per parameter.
            let dt = m.weights.layers[0].gate_proj.dtype().to_string();
            (path.display().to_string(), m, dt)
        }
        (None, Some(s)) => {
            let cfg = match s.as_str() {
                "e2b" => TextConfig::e2b(),
                "e4b" => TextConfig::e4b(),
                other => bail!("--synthetic: unknown shape `{other}` (expected e2b or e4b)"),
            };
            let dt = match a.dtype.as_str() {
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                "f32" => DType::F32,
                "q8_0" => DType::Q8_0,
                "q4_0" => DType::Q4_0,
                "q4_k" => DType::Q4_K,
                "q5_k" => DType::Q5_K,
                "q6_k" => DType::Q6_K,
                other => bail!(
                    "--dtype: unknown `{other}` (expected bf16, f16, f32, q8_0, q4_0, q4_k, q5_k or q6_k)"
                ),
            };
            let spinner = ProgressBar::new_spinner();
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"),
            );
            spinner.set_message(format!("building random {s} weights ({dt})"));
            spinner.enable_steady_tick(std::time::Duration::from_millis(200));
            let m = TextModel::synthetic(&cfg, dt, a.seed);
            spinner.finish_and_clear();
            (format!("synthetic {s} (random weights)"), m, dt.to_string())
        }
        _ => bail!("give either --model DIR or --synthetic e2b|e4b"),
    };
    let cfg = &model.cfg;
    if a.prompt_len + a.gen > cfg.max_position_embeddings {
        bail!(
            "--prompt-len + --gen exceeds the context length {}",
            cfg.max_position_embeddings
        );
    }
    let threads = rayon::current_num_threads();
    // Bytes per parameter of the layer matrices' format (block bytes / block size).
    let main = model.weights.layers[0].gate_proj.dtype();
    let es = main.block_bytes() as f64 / main.block_size() as f64;
    // `--size A,B,C` measures several slices of one loaded model (one report each).
    let selections: Vec<SliceArgs> = match &a.slice.size {
        Some(list) if list.contains(',') => list
            .split(',')
            .map(|n| SliceArgs {
                size: Some(n.trim().to_string()),
                ..Default::default()
            })
            .collect(),
        _ => vec![a.slice.clone()],
    };
    let mut reports = Vec::new();
    for sel in &selections {
        reports.push(measure(&a, &model, sel, &name, &dtype, es)?);
    }
    let bandwidth = gemma3n_compute::cpu::bandwidth::measure_read_gb_s(1 << 30, threads);
    for mut r in reports {
        r.bandwidth_gb_s = bandwidth;
        r.bandwidth_pct = 100.0 * r.decode_gb_s / bandwidth;
        print_report(&r, a.json)?;
    }
    Ok(())
}

/// Prefill and decode of one slice.
fn measure(
    a: &Args,
    model: &TextModel,
    sel: &SliceArgs,
    name: &str,
    dtype: &str,
    es: f64,
) -> Result<Report> {
    let cfg = &model.cfg;
    let threads = rayon::current_num_threads();
    let mut cache = sel.cache(model)?;
    let plan = cache.plan().clone();
    // Float weights take the exact sparse FFN in decode (only the active rows of up and
    // downᵀ are read); quantized ones read every row.
    let st = plan.sliced_config(cfg).stats();
    let sparse_read = !model.weights.layers[0].gate_proj.dtype().is_quantized();
    let params = if sparse_read {
        st.sparse_params_per_token
    } else {
        st.params_per_token
    };
    let bytes_per_token = params as f64 * es;

    // A deterministic pseudo-random prompt of ordinary text ids (above the special ones,
    // below the multimodal ones).
    let text_vocab = cfg.vocab_size_per_layer_input.min(cfg.vocab_size) as u64;
    let low = if text_vocab > 2000 {
        1000
    } else {
        3.min(text_vocab - 1)
    };
    let mut x = a.seed ^ 0x0005_DEEC_E66D;
    let prompt: Vec<u32> = std::iter::once(2)
        .chain((1..a.prompt_len).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (low + (x >> 33) % (text_vocab - low)) as u32
        }))
        .collect();

    let t0 = Instant::now();
    let mut logits = model.forward(&prompt, &mut cache, Logits::Last)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..a.gen {
        let next = argmax(&logits[..cfg.vocab_size_per_layer_input.min(cfg.vocab_size)]);
        logits = model.forward(&[next], &mut cache, Logits::Last)?;
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let decode_tok_s = a.gen as f64 / decode_s;
    let decode_gb_s = decode_tok_s * bytes_per_token / 1e9;
    let r = Report {
        model: name.to_string(),
        slice: plan.name.clone(),
        dtype: dtype.to_string(),
        threads,
        prompt_len: a.prompt_len,
        gen: a.gen,
        prefill_s,
        prefill_tok_s: a.prompt_len as f64 / prefill_s,
        decode_s,
        decode_tok_s,
        bytes_per_token,
        decode_gb_s,
        bandwidth_gb_s: 0.0,
        bandwidth_pct: 0.0,
    };
    Ok(r)
}

fn print_report(r: &Report, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "model      {} ({}), slice {}, {} threads",
            r.model, r.dtype, r.slice, r.threads
        );
        println!(
            "prefill    {} tokens in {:.2} s: {:.1} tok/s",
            r.prompt_len, r.prefill_s, r.prefill_tok_s
        );
        println!(
            "decode     {} tokens in {:.2} s: {:.2} tok/s",
            r.gen, r.decode_s, r.decode_tok_s
        );
        println!(
            "bandwidth  {:.2} GB/token -> {:.1} GB/s effective; machine read bandwidth {:.1} GB/s ({:.0}%)",
            r.bytes_per_token / 1e9,
            r.decode_gb_s,
            r.bandwidth_gb_s,
            r.bandwidth_pct
        );
    }
    Ok(())
}
