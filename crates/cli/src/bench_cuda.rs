//! `gemma3n bench --device cuda`: the text decoder on a GPU. Prefill time and the
//! TFLOP/s it reaches on the FLOPs it needs, decode tokens/s and % of the roofline
//! (dense bf16 bytes per token against the device-to-device copy bandwidth measured in the
//! same run), and where the bytes live (device: weights, KV, workspace; host: the
//! per-layer table).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use gemma3n_model::config::{KvSource, LayerType};
use gemma3n_model::text::cuda::{CudaKvCache, CudaTextModel};
use gemma3n_model::{Logits, SlicePlan, TextModel};
use rayon::prelude::*;

use crate::bench::{argmax, Args};

#[derive(serde::Serialize)]
struct Report {
    model: String,
    device: String,
    slice: String,
    activations: String,
    prompt_len: usize,
    gen: usize,
    reps: usize,
    prefill_ms: f64,
    prefill_tok_s: f64,
    prefill_tflop: f64,
    prefill_tflop_s: f64,
    decode_tok_s: f64,
    decode_ms_per_token: f64,
    /// The first decode step alone (its graph is recorded then), and the mean of the
    /// others (medians over the repetitions).
    first_step_ms: f64,
    later_ms_per_token: f64,
    /// GPU time of one decode step (replays of the captured step; no host work).
    decode_gpu_ms_per_token: Option<f64>,
    /// The decode step ran its layers in one persistent launch (`GEMMA3N_CUDA_PERSISTENT=1`
    /// and a model the kernel takes), else one launch per op.
    persistent_decode: bool,
    /// The roofline share of the GPU time alone.
    gpu_roofline_pct: Option<f64>,
    /// Dense bf16 bytes of the weights one decode step would read without sparsity.
    dense_bytes_per_token: f64,
    /// The same with the active share of `up`/`down` in activation-sparse layers.
    read_bytes_per_token: f64,
    copy_bandwidth_gb_s: f64,
    roofline_pct: f64,
    device_weight_bytes: usize,
    device_kv_bytes: usize,
    device_workspace_bytes: usize,
    device_total_bytes: usize,
    host_ple_bytes: usize,
    /// `--batch B`: sequences decoded together, one batched step per token of each.
    batch: Option<usize>,
    /// Their aggregate tokens/s (median of `--reps`), host work included.
    batch_tok_s: Option<f64>,
    /// GPU time of one batched step of up to 16 of them (replays of its captured graph).
    batch_gpu_ms_per_step: Option<f64>,
}

/// Matrix parameters of a layer at FFN width `f` (q, o, own k/v, FFN, LAuReL, per-layer
/// gate and projection): (everything but the FFN, the FFN).
fn layer_params(m: &TextModel, f: usize, own: bool) -> (f64, f64) {
    let c = &m.cfg;
    let (d, h, g, hd) = (
        c.hidden_size as f64,
        c.num_attention_heads as f64,
        c.num_key_value_heads as f64,
        c.head_dim as f64,
    );
    let attn = 2.0 * h * hd * d + if own { 2.0 * g * hd * d } else { 0.0 };
    let other = 2.0 * c.laurel_rank as f64 * d + 2.0 * c.hidden_size_per_layer_input as f64 * d;
    (attn + other, 3.0 * f as f64 * d)
}

/// (dense bytes, bytes read with sparsity) of one decode step, bf16.
fn bytes_per_token(m: &TextModel, plan: &SlicePlan) -> (f64, f64) {
    let c = &m.cfg;
    let d = c.hidden_size as f64;
    let (mut dense, mut read) = (0.0, 0.0);
    for sl in &plan.layers {
        let (other, ffn) = layer_params(m, sl.ffn_width, sl.kv == KvSource::Own);
        dense += other + ffn;
        let active = if sl.sparsity > 0.0 {
            (1.0 + 2.0 * (1.0 - sl.sparsity as f64)) / 3.0
        } else {
            1.0
        };
        read += other + ffn * active;
    }
    let head = c.vocab_size as f64 * d
        + (c.num_hidden_layers * c.hidden_size_per_layer_input) as f64 * d
        + 2.0 * (c.altup_num_inputs - 1) as f64 * d * d;
    (2.0 * (dense + head), 2.0 * (read + head))
}

/// FLOPs of a prefill of `t` tokens (fast prefill: layers after the last KV producer on
/// one row; attention included).
fn prefill_flops(m: &TextModel, plan: &SlicePlan, t: usize) -> f64 {
    let c = &m.cfg;
    let d = c.hidden_size as f64;
    let mut rows = t as f64;
    let mut f = 2.0
        * rows
        * ((c.num_hidden_layers * c.hidden_size_per_layer_input) as f64 * d
            + (c.altup_num_inputs - 1) as f64 * d * d);
    for sl in &plan.layers {
        if sl.kv != KvSource::Own {
            rows = 1.0;
        }
        let (other, ffn) = layer_params(m, sl.ffn_width, sl.kv == KvSource::Own);
        f += 2.0 * rows * (other + ffn);
        // Scores and weighted values over the visible keys of each row.
        let keys: f64 = if rows == 1.0 {
            match sl.kind {
                LayerType::Sliding => t.min(c.sliding_window) as f64,
                LayerType::Full => t as f64,
            }
        } else {
            (0..t)
                .map(|i| match sl.kind {
                    LayerType::Sliding => (i + 1).min(c.sliding_window) as f64,
                    LayerType::Full => (i + 1) as f64,
                })
                .sum()
        };
        f += 4.0 * (c.num_attention_heads * c.head_dim) as f64 * keys;
    }
    f + 2.0 * (c.vocab_size as f64 * d + (c.altup_num_inputs - 1) as f64 * d * d)
}

pub fn run(a: &Args, model: TextModel, name: &str, ordinal: usize) -> Result<()> {
    let model = Arc::new(model);
    let gm = crate::device::to_gpu(model.clone(), ordinal, &a.device)?;
    let gpu = gm.gpu().clone();
    let cfg = &model.cfg;
    let slice = a.slice.slice(cfg)?;
    let plan = match &slice {
        Some(s) => SlicePlan::new(cfg, s)?,
        None => SlicePlan::full(cfg),
    };
    let plan = Arc::new(plan);
    let text_vocab = cfg.vocab_size_per_layer_input.min(cfg.vocab_size);
    let prompt = crate::bench::random_prompt(cfg, a.prompt_len, a.seed);
    let room = a.prompt_len + a.gen + 1;
    // Warm-up: a short prompt, a full one (sizes the workspace) and a few steps.
    {
        let mut c = gm.new_cache_with_plan(plan.clone(), room)?;
        gm.forward(&prompt, &mut c, Logits::Last)?;
        let mut c = gm.new_cache_with_plan(plan.clone(), room)?;
        let mut l = gm.forward(&prompt[..prompt.len().min(8)], &mut c, Logits::Last)?;
        for _ in 0..3 {
            l = gm.forward(&[argmax(&l)], &mut c, Logits::Last)?;
        }
    }
    if gpu.profiling() {
        profile(&gm, cfg, &plan, a, &prompt, text_vocab)?;
        for s in gm.gemv_speed()? {
            println!(
                "product    {:<28} {:>9.1} us {:>8.1} MB {:>7.0} GB/s",
                s.name,
                s.us,
                s.bytes as f64 / 1e6,
                s.bytes as f64 / s.us / 1e3
            );
        }
        if let Some(c) = gm.products_chain_speed()? {
            let mut ways = vec![
                ("one persistent launch".to_string(), c.us_persistent),
                ("a launch a step".to_string(), c.us_launches),
            ];
            if let Some((us, err)) = c.tma {
                ways.push((
                    format!("one launch, bulk copies (max rel diff {err:.1e})"),
                    us,
                ));
            }
            for (how, us) in ways {
                println!(
                    "products   {} dependent steps, {how}: {us:>9.1} us {:>8.1} MB {:>7.0} GB/s",
                    c.steps,
                    c.bytes as f64 / 1e6,
                    c.bytes as f64 / us / 1e3
                );
            }
        }
    }
    let mut prefills = Vec::new();
    let mut decodes = Vec::new();
    let mut kv_bytes = 0;
    let mut persistent = false;
    let mut step_ms = Vec::new();
    let (mut firsts, mut laters) = (Vec::new(), Vec::new());
    for _ in 0..a.reps {
        let mut cache = gm.new_cache_with_plan(plan.clone(), room)?;
        let t0 = Instant::now();
        let logits = gm.forward(&prompt, &mut cache, Logits::Last)?;
        prefills.push(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        let mut first = 0.0;
        // Greedy (`run --temperature 0`): the argmax on the device, one id back.
        let mut next = argmax(&logits[..text_vocab]);
        for i in 0..a.gen {
            next = gm.forward_argmax(next, &mut cache, text_vocab)?;
            if i == 0 {
                first = t1.elapsed().as_secs_f64();
            }
        }
        let total = t1.elapsed().as_secs_f64();
        decodes.push(total);
        firsts.push(first);
        if a.gen > 1 {
            laters.push((total - first) / (a.gen - 1) as f64);
        }
        kv_bytes = cache.bytes();
        persistent = cache.persistent_step();
        if let Some(ms) = gm.decode_step_ms(&cache, 20)? {
            step_ms.push(ms);
        }
    }
    if let Some(t) = gm.pk_trace_report()? {
        println!("{t}");
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (batch_tok_s, batch_gpu_ms) = match a.batch {
        Some(b) => {
            let mut v = (0..a.reps)
                .map(|_| batch_decode(&gm, cfg, &plan, a, b, text_vocab))
                .collect::<Result<Vec<_>>>()?;
            (Some(median(&mut v)), gm.batch_step_ms(b.min(16), 20)?)
        }
        None => (None, None),
    };
    let prefill_s = median(&mut prefills);
    let decode_s = median(&mut decodes);
    // Device-to-device copy bandwidth (bytes read + written).
    let n = 1usize << 30;
    let (src, dst) = (gpu.alloc(n)?, gpu.alloc(n)?);
    gpu.copy(src.ptr(), dst.ptr(), n)?;
    let reps = 10;
    let ms = gpu.time_ms(&mut || {
        for _ in 0..reps {
            gpu.copy(src.ptr(), dst.ptr(), n)?;
        }
        Ok(())
    })?;
    drop((src, dst));
    let bw = 2.0 * (n * reps) as f64 / (ms as f64 / 1e3) / 1e9;
    let (dense, read) = bytes_per_token(&model, &plan);
    let flops = prefill_flops(&model, &plan, a.prompt_len);
    let decode_tok_s = a.gen as f64 / decode_s;
    let mem = gm.memory();
    let ws = gm.workspace_bytes();
    let r = Report {
        model: name.to_string(),
        device: gpu.describe(),
        slice: plan.name.clone(),
        activations: match a.device.activation_parts {
            1 => "bf16".to_string(),
            n => format!("split in {n} bf16 parts"),
        },
        prompt_len: a.prompt_len,
        gen: a.gen,
        reps: a.reps,
        prefill_ms: prefill_s * 1e3,
        prefill_tok_s: a.prompt_len as f64 / prefill_s,
        prefill_tflop: flops / 1e12,
        prefill_tflop_s: flops / prefill_s / 1e12,
        decode_tok_s,
        decode_ms_per_token: 1e3 / decode_tok_s,
        first_step_ms: 1e3 * median(&mut firsts),
        later_ms_per_token: if laters.is_empty() {
            0.0
        } else {
            1e3 * median(&mut laters)
        },
        dense_bytes_per_token: dense,
        read_bytes_per_token: read,
        copy_bandwidth_gb_s: bw,
        roofline_pct: 100.0 * decode_tok_s * dense / 1e9 / bw,
        decode_gpu_ms_per_token: (!step_ms.is_empty()).then(|| median(&mut step_ms)),
        persistent_decode: persistent,
        gpu_roofline_pct: (!step_ms.is_empty())
            .then(|| 100.0 * (1e3 / median(&mut step_ms)) * dense / 1e9 / bw),
        device_weight_bytes: mem.device_weight_bytes,
        device_kv_bytes: kv_bytes,
        device_workspace_bytes: ws,
        device_total_bytes: gpu.allocated_bytes(),
        host_ple_bytes: mem.host_bytes,
        batch: a.batch,
        batch_tok_s,
        batch_gpu_ms_per_step: batch_gpu_ms,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let gb = |b: usize| b as f64 / 1e9;
    println!(
        "model      {} (bf16 on {}), slice {}, prefill activations {}",
        r.model, r.device, r.slice, r.activations
    );
    println!(
        "prefill    {} tokens in {:.2} ms: {:.0} tok/s, {:.2} TFLOP -> {:.1} TFLOP/s",
        r.prompt_len, r.prefill_ms, r.prefill_tok_s, r.prefill_tflop, r.prefill_tflop_s
    );
    println!(
        "decode     {} tokens: {:.1} tok/s ({:.3} ms/token; the first step {:.3} ms with its graph recorded, then {:.3} ms/token)",
        r.gen, r.decode_tok_s, r.decode_ms_per_token, r.first_step_ms, r.later_ms_per_token
    );
    if let (Some(ms), Some(pct)) = (r.decode_gpu_ms_per_token, r.gpu_roofline_pct) {
        println!(
            "gpu step   {ms:.3} ms per decode step on the GPU alone: {pct:.1}% of roofline ({})",
            if r.persistent_decode {
                "layers in one persistent launch"
            } else {
                "a launch per op"
            }
        );
    }
    println!(
        "roofline   {:.2} GB/token dense ({:.2} GB read with sparsity); copy bandwidth {:.0} GB/s; {:.1}% of roofline",
        r.dense_bytes_per_token / 1e9,
        r.read_bytes_per_token / 1e9,
        r.copy_bandwidth_gb_s,
        r.roofline_pct
    );
    if let (Some(b), Some(t)) = (r.batch, r.batch_tok_s) {
        println!(
            "batch      {b} sequences: {t:.1} tok/s aggregate ({:.3} ms per step), {:.2}x one sequence",
            1e3 * b as f64 / t,
            t / r.decode_tok_s
        );
        if let Some(ms) = r.batch_gpu_ms_per_step {
            println!(
                "batch step {ms:.3} ms per step of {} sequences on the GPU alone",
                b.min(16)
            );
        }
    }
    println!(
        "memory     device {:.2} GB (weights {:.2}, KV {:.3}, workspace {:.3}); host per-layer table {:.2} GB",
        gb(r.device_total_bytes),
        gb(r.device_weight_bytes),
        gb(r.device_kv_bytes),
        gb(r.device_workspace_bytes),
        gb(r.host_ple_bytes)
    );
    Ok(())
}

/// `b` sequences ready for batched decode: each prefilled with its own random prompt of
/// `--prompt-len` tokens, with its greedy next token.
fn batch_start(
    gm: &CudaTextModel,
    cfg: &gemma3n_model::TextConfig,
    plan: &Arc<SlicePlan>,
    a: &Args,
    b: usize,
    text_vocab: usize,
) -> Result<(Vec<CudaKvCache>, Vec<u32>)> {
    let room = a.prompt_len + a.gen + 1;
    let mut caches = Vec::with_capacity(b);
    let mut next = Vec::with_capacity(b);
    for s in 0..b {
        let prompt = crate::bench::random_prompt(cfg, a.prompt_len, a.seed + s as u64);
        let mut c = gm.new_cache_with_plan(plan.clone(), room)?;
        let l = gm.forward(&prompt, &mut c, Logits::Last)?;
        next.push(argmax(&l[..text_vocab]));
        caches.push(c);
    }
    Ok((caches, next))
}

/// `steps` batched decode steps of the sequences in `caches`, greedy, the picks made in
/// parallel on the host as `serve` makes them.
fn batch_steps(
    gm: &CudaTextModel,
    caches: &mut [CudaKvCache],
    next: &mut Vec<u32>,
    steps: usize,
    text_vocab: usize,
) -> Result<()> {
    for _ in 0..steps {
        let mut refs: Vec<&mut _> = caches.iter_mut().collect();
        let l = gm.forward_batch(next, &mut refs)?;
        let v = l.len() / caches.len();
        *next = l.par_chunks(v).map(|r| argmax(&r[..text_vocab])).collect();
    }
    Ok(())
}

/// Aggregate tokens/s of `b` sequences decoded together: [`batch_start`], then `--gen`
/// batched steps timed with the host's work (logits download, picks).
fn batch_decode(
    gm: &CudaTextModel,
    cfg: &gemma3n_model::TextConfig,
    plan: &Arc<SlicePlan>,
    a: &Args,
    b: usize,
    text_vocab: usize,
) -> Result<f64> {
    let (mut caches, mut next) = batch_start(gm, cfg, plan, a, b, text_vocab)?;
    let t = Instant::now();
    batch_steps(gm, &mut caches, &mut next, a.gen, text_vocab)?;
    Ok((b * a.gen) as f64 / t.elapsed().as_secs_f64())
}

/// `GEMMA3N_CUDA_PROFILE=1`: GPU time per op of one prefill and of `steps` decode steps
/// (with `--batch`, also of `steps` batched steps of up to 16 sequences).
fn profile(
    gm: &CudaTextModel,
    cfg: &gemma3n_model::TextConfig,
    plan: &Arc<SlicePlan>,
    a: &Args,
    prompt: &[u32],
    text_vocab: usize,
) -> Result<()> {
    let steps = a.gen.min(32);
    let gpu = gm.gpu();
    gpu.profile_take();
    let mut cache = gm.new_cache_with_plan(plan.clone(), prompt.len() + steps + 1)?;
    let mut logits = gm.forward(prompt, &mut cache, Logits::Last)?;
    let table = |title: &str, per: usize| {
        let ops = gpu.profile_take();
        let total: f64 = ops.iter().map(|o| o.2).sum();
        println!(
            "profile    {title}: {:.3} ms of GPU time per {}",
            total / per as f64,
            if per == 1 { "pass" } else { "token" }
        );
        for (name, count, ms) in ops {
            println!(
                "           {name:<20} {:>6} launches {:>9.3} ms {:>8.1} us each {:>5.1}%",
                count / per,
                ms / per as f64,
                1e3 * ms / count as f64,
                100.0 * ms / total
            );
        }
    };
    table(&format!("prefill of {} tokens", prompt.len()), 1);
    let t = Instant::now();
    for _ in 0..steps {
        logits = gm.forward(&[argmax(&logits)], &mut cache, Logits::Last)?;
    }
    let wall = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    table("decode", steps);
    println!("profile    decode wall time {wall:.3} ms per token (events on every op)");
    if let Some(b) = a.batch.filter(|&b| b > 1) {
        let b = b.min(16);
        let (mut caches, mut next) = batch_start(gm, cfg, plan, a, b, text_vocab)?;
        gpu.profile_take();
        batch_steps(gm, &mut caches, &mut next, steps, text_vocab)?;
        table(&format!("batched decode of {b} sequences"), steps);
    }
    Ok(())
}
