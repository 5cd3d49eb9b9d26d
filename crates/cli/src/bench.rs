//! `gemma3n bench`: prefill and decode speed, effective GB/s and % of this machine's
//! memory bandwidth (measured by the command itself).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use gemma3n_compute::DType;
use gemma3n_model::{Logits, TextModel};
use indicatif::{ProgressBar, ProgressStyle};

use crate::slice::SliceArgs;

#[derive(clap::Args)]
pub struct Args {
    /// Time the vision tower on one 768x768 image instead of the text decoder (--model: the
    /// checkpoint's tower; --synthetic: the real architecture on pseudo-random weights).
    #[arg(long)]
    pub vision: bool,
    /// Time the audio tower on --audio-seconds of audio instead of the text decoder (--model:
    /// the checkpoint's tower; --synthetic: the real size on pseudo-random weights).
    #[arg(long, conflicts_with = "vision")]
    pub audio: bool,
    /// Length of the clip for --audio (at most 30: one clip).
    #[arg(long, default_value_t = 30.0)]
    pub audio_seconds: f64,
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long, conflicts_with = "synthetic")]
    pub model: Option<PathBuf>,
    /// Random weights with the real shapes, built in memory: e2b or e4b.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Weight dtype for --synthetic: bf16, f16, f32, q8_0, q4_0, q4_k, q5_k or q6_k
    /// (block formats for every matrix whose rows hold whole blocks; the others bf16).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 32)]
    pub gen: usize,
    /// Timed repetitions (after one untimed warm-up pass that touches every weight); the
    /// report gives the median prefill and the median decode speed.
    #[arg(long, default_value_t = 1)]
    pub reps: usize,
    /// Seed of the synthetic weights and the random prompt.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also time batched decode: this many sequences decoded together, one forward pass per
    /// step (as `serve` does with concurrent requests); reports the aggregate tokens/s.
    #[arg(long)]
    pub batch: Option<usize>,
    #[command(flatten)]
    pub slice: crate::slice::SliceArgs,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
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
    /// Median of the read-bandwidth probes, one right after each decode repetition.
    bandwidth_gb_s: f64,
    /// Median over the repetitions of each one's decode GB/s against its own probe.
    bandwidth_pct: f64,
    /// Each repetition's decode GB/s as a percentage of its own probe.
    bandwidth_pct_reps: Vec<f64>,
}

/// The index of the largest logit (greedy decoding), as the engine's sampler picks it (0
/// when none is finite).
pub fn argmax(x: &[f32]) -> u32 {
    gemma3n_engine::sampling::argmax(x).unwrap_or(0)
}

/// The benchmark prompt: BOS, then `len - 1` pseudo-random ordinary text ids (above the
/// special ones, below the multimodal ones) from `seed`.
pub fn random_prompt(cfg: &gemma3n_model::TextConfig, len: usize, seed: u64) -> Vec<u32> {
    let text_vocab = cfg.vocab_size_per_layer_input.min(cfg.vocab_size) as u64;
    let low = if text_vocab > 2000 {
        1000
    } else {
        3.min(text_vocab - 1)
    };
    let mut x = seed ^ 0x0005_DEEC_E66D;
    std::iter::once(2)
        .chain((1..len).map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (low + (x >> 33) % (text_vocab - low)) as u32
        }))
        .collect()
}

pub fn main(a: Args) -> Result<()> {
    if a.vision {
        if a.reps == 0 {
            bail!("--reps must be at least 1");
        }
        return crate::bench_vision::run(&a);
    }
    if a.audio {
        if a.reps == 0 {
            bail!("--reps must be at least 1");
        }
        return crate::bench_audio::run(&a);
    }
    if a.prompt_len == 0 || a.gen == 0 || a.reps == 0 {
        bail!("--prompt-len, --gen and --reps must be at least 1");
    }
    if a.batch.is_some_and(|b| b == 0 || b > 256) {
        bail!("--batch must be in 1..=256");
    }
    let (name, model, dtype) = match (&a.model, &a.synthetic) {
        (Some(path), None) => {
            let m = crate::load::load_any(path)?;
            // The format of the layer matrices decides the bytes per parameter.
            let dt = m.weights.layers[0].gate_proj.dtype().to_string();
            (path.display().to_string(), m, dt)
        }
        (None, Some(s)) => {
            let cfg = crate::load::synthetic_shape(s)?;
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
    if a.prompt_len + a.gen > model.cfg.max_position_embeddings {
        bail!(
            "--prompt-len + --gen exceeds the context length {}",
            model.cfg.max_position_embeddings
        );
    }
    if let crate::device::Device::Cuda(n) = a.device.parse()? {
        return gpu_bench(&a, model, &name, n);
    }
    let model = crate::load::cpu_layout(model);
    let cfg = &model.cfg;
    if a.prompt_len + a.gen > cfg.max_position_embeddings {
        bail!(
            "--prompt-len + --gen exceeds the context length {}",
            cfg.max_position_embeddings
        );
    }
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
    if let Some(b) = a.batch {
        return batch_decode(&a, &model, b);
    }
    for sel in &selections {
        let r = measure(&a, &model, sel, &name, &dtype)?;
        print_report(&r, a.json)?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_bench(a: &Args, model: TextModel, name: &str, n: usize) -> Result<()> {
    crate::bench_cuda::run(a, model, name, n)
}

#[cfg(not(feature = "cuda"))]
fn gpu_bench(_: &Args, _: TextModel, _: &str, _: usize) -> Result<()> {
    unreachable!("--device cuda is refused by DeviceArgs::parse without the cuda feature")
}

/// Prefill and decode of one slice.
fn measure(
    a: &Args,
    model: &TextModel,
    sel: &SliceArgs,
    name: &str,
    dtype: &str,
) -> Result<Report> {
    let cfg = &model.cfg;
    let threads = rayon::current_num_threads();
    let mut cache = sel.cache(model)?;
    let plan = cache.plan().clone();
    // Float weights take the exact sparse FFN in decode (only the active rows of up and
    // downᵀ are read); quantized ones read every row.
    let bytes_per_token = bytes_per_token(model, &plan);

    let prompt = random_prompt(cfg, a.prompt_len, a.seed);

    // Warm-up: a short prompt and two steps read every weight once (page faults of a
    // memory-mapped file, caches), untimed.
    model.forward(&prompt[..prompt.len().min(8)], &mut cache, Logits::Last)?;
    model.forward(&prompt[..1], &mut cache, Logits::Last)?;
    let mut prefills = Vec::new();
    let mut decodes = Vec::new();
    // The machine's read bandwidth drifts (other tenants, clocks), so each repetition's
    // decode is set against a probe taken right after it, not one probe for all.
    let mut probes = Vec::new();
    let mut pct_reps = Vec::new();
    // Effective weight GB/s of a decode of `a.gen` tokens in `secs`.
    let gb_s = |secs: f64| a.gen as f64 * bytes_per_token / secs / 1e9;
    for _ in 0..a.reps {
        cache = sel.cache(model)?;
        let t0 = Instant::now();
        let mut logits = model.forward(&prompt, &mut cache, Logits::Last)?;
        prefills.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        for _ in 0..a.gen {
            let next = argmax(&logits[..cfg.vocab_size_per_layer_input.min(cfg.vocab_size)]);
            logits = model.forward(&[next], &mut cache, Logits::Last)?;
        }
        let decode_s = t1.elapsed().as_secs_f64();
        decodes.push(decode_s);
        let probe = gemma3n_compute::cpu::bandwidth::measure_read_gb_s(1 << 30, threads);
        probes.push(probe);
        pct_reps.push(100.0 * gb_s(decode_s) / probe);
    }
    let prefill_s = median(&mut prefills);
    let decode_s = median(&mut decodes);
    let decode_tok_s = a.gen as f64 / decode_s;
    let decode_gb_s = gb_s(decode_s);
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
        bandwidth_gb_s: median(&mut probes),
        bandwidth_pct: median(&mut pct_reps.clone()),
        bandwidth_pct_reps: pct_reps,
    };
    Ok(r)
}

/// Weight bytes one decode step reads, from the stored formats: every matrix of the kept
/// layers (FFNs at the slice's width; in sparse layers with a transposed `down` copy only the
/// active share of `up` and `downᵀ`), the LM head, the per-layer projection, the AltUp
/// projections and one row of the per-layer table. Norm vectors are left out (< 0.1%).
fn bytes_per_token(model: &TextModel, plan: &gemma3n_model::SlicePlan) -> f64 {
    let w = &model.weights;
    let per_el = |m: &gemma3n_compute::Matrix| {
        m.dtype().block_bytes() as f64 / m.dtype().block_size() as f64
    };
    let all = |m: &gemma3n_compute::Matrix| per_el(m) * (m.rows() * m.cols()) as f64;
    let mut b = 0.0;
    for sl in &plan.layers {
        let lw = &w.layers[sl.layer];
        b += all(&lw.q_proj) + all(&lw.o_proj);
        if sl.kv == gemma3n_model::config::KvSource::Own {
            b += lw.k_proj.as_ref().map_or(0.0, all) + lw.v_proj.as_ref().map_or(0.0, all);
        }
        let (d, f) = (lw.gate_proj.cols() as f64, sl.ffn_width as f64);
        let active = if lw.down_proj_t.is_some() && sl.sparsity > 0.0 {
            1.0 - sl.sparsity as f64
        } else {
            1.0
        };
        let down = lw.down_proj_t.as_ref().unwrap_or(&lw.down_proj);
        b += per_el(&lw.gate_proj) * d * f
            + active * (per_el(&lw.up_proj) * d * f + per_el(down) * d * f);
        b += all(&lw.laurel_left) + all(&lw.laurel_right);
        b += all(&lw.per_layer_input_gate) + all(&lw.per_layer_projection);
        b += all(&lw.altup.modality_router);
    }
    b += all(&w.embed_tokens) + all(&w.per_layer_model_projection);
    b += w
        .altup_projections
        .iter()
        .chain(&w.altup_unembed_projections)
        .map(all)
        .sum::<f64>();
    b += per_el(&w.embed_tokens_per_layer) * w.embed_tokens_per_layer.cols() as f64;
    b
}

fn median(x: &mut [f64]) -> f64 {
    x.sort_by(f64::total_cmp);
    let n = x.len();
    if n % 2 == 1 {
        x[n / 2]
    } else {
        (x[n / 2 - 1] + x[n / 2]) / 2.0
    }
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
        if r.bandwidth_pct_reps.len() > 1 {
            let each: Vec<String> = r
                .bandwidth_pct_reps
                .iter()
                .map(|p| format!("{p:.0}%"))
                .collect();
            println!(
                "           each repetition against the probe right after it: {} (median {:.0}%)",
                each.join(", "),
                r.bandwidth_pct
            );
        }
    }
    Ok(())
}

/// Decode of `b` sequences together (one `forward_batch` per step) against one sequence
/// alone: aggregate tokens/s of each (median of `--reps`).
fn batch_decode(a: &Args, model: &TextModel, b: usize) -> Result<()> {
    let cfg = &model.cfg;
    let text_vocab = cfg.vocab_size_per_layer_input.min(cfg.vocab_size) as u32;
    let low = if text_vocab > 2000 { 1000 } else { 3 };
    let token = |s: usize, i: usize| low + ((s * 7919 + i * 104_729) as u32 % (text_vocab - low));
    let run = |n: usize| -> Result<f64> {
        let mut caches: Vec<_> = (0..n).map(|_| model.new_cache()).collect();
        let mut next: Vec<u32> = Vec::with_capacity(n);
        for (s, c) in caches.iter_mut().enumerate() {
            let prompt: Vec<u32> = std::iter::once(2)
                .chain((1..a.prompt_len).map(|i| token(s, i)))
                .collect();
            let l = model.forward(&prompt, c, Logits::Last)?;
            next.push(argmax(&l));
        }
        let t = Instant::now();
        for _ in 0..a.gen {
            let mut refs: Vec<&mut _> = caches.iter_mut().collect();
            let l = model.forward_batch(&next, &mut refs)?;
            let v = l.len() / n;
            next = l.chunks(v).map(argmax).collect();
        }
        Ok((n * a.gen) as f64 / t.elapsed().as_secs_f64())
    };
    let median = |n: usize| -> Result<f64> {
        let mut v = (0..a.reps).map(|_| run(n)).collect::<Result<Vec<_>>>()?;
        v.sort_by(f64::total_cmp);
        Ok(v[v.len() / 2])
    };
    let one = median(1)?;
    let many = median(b)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"threads": rayon::current_num_threads(), "prompt_len": a.prompt_len,
                "gen": a.gen, "batch": b, "single_tok_s": one, "batch_tok_s": many, "speedup": many / one})
        );
    } else {
        println!(
            "decode, 1 sequence      {one:.2} tok/s\n\
             decode, {b} sequences   {many:.2} tok/s aggregate ({:.2} per sequence), {:.2}x one",
            many / b as f64,
            many / one
        );
    }
    Ok(())
}
