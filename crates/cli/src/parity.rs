//! `gemma3n parity`: the GPU decoder against the CPU f32 decoder on one checkpoint (the
//! CUDA parity test, run on the GPU machine against the fixtures). Prompts of several
//! lengths (the GEMV and the GEMM paths, GEMM attention, a sliding window shorter than the
//! prompt), every position's logits, a prefill that continues a sequence, the fast-prefill
//! logits and greedy decoding: max relative logit error
//! (max |Δ| / max |reference|) and token agreement. Exits non-zero when a check fails.

use std::sync::Arc;

use anyhow::{bail, Result};
use gemma3n_model::{Logits, TextModel};

use crate::bench::argmax;
use crate::device::{Device, DeviceArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long)]
    model: std::path::PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Prompt lengths to check, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,5,20,80")]
    prompt_lens: Vec<usize>,
    /// Greedy decode steps after each prompt.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Largest allowed max relative logit error.
    #[arg(long, default_value_t = 2e-2)]
    tolerance: f32,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
}

/// Whether `top` (a device's top-`k` candidates) holds exactly the values of `logits` at
/// least the `k`-th largest (NaN and -inf left out), at their ids.
fn top_k_matches(top: &gemma3n_model::text::TopScores, logits: &[f32], k: usize) -> bool {
    let gemma3n_model::text::TopScores::Top(c) = top else {
        return false;
    };
    let mut got: Vec<(u32, u32)> = c.iter().map(|&(v, i)| (v.to_bits(), i)).collect();
    got.sort_by_key(|p| p.1);
    got == gemma3n_model::text::cuda::top_k_naive(logits, k)
}

fn rel_err(a: &[f32], reference: &[f32]) -> f32 {
    let num = a
        .iter()
        .zip(reference)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let den = reference.iter().map(|y| y.abs()).fold(0f32, f32::max);
    if a.iter().any(|x| !x.is_finite()) {
        return f32::INFINITY;
    }
    num / den.max(f32::MIN_POSITIVE)
}

pub fn main(a: Args) -> Result<()> {
    let ordinal = match a.device.parse()? {
        Device::Cuda(n) => n,
        Device::Cpu => bail!("parity compares a GPU with the CPU: pass --device cuda[:N]"),
    };
    let loaded = Arc::new(crate::load::load_any(&a.model)?);
    let gpu = crate::device::to_gpu(loaded.clone(), ordinal, &a.device)?;
    eprintln!("device: {}", gpu.gpu().describe());
    // The reference: the CPU f32 decoder on the weights the GPU holds (bf16).
    let cpu = gemma3n_model::text::cuda::with_device_weights(&loaded);
    drop(loaded);
    let cfg = &cpu.cfg;
    let slice = a.slice.slice(cfg)?;
    let text_vocab = cfg.vocab_size_per_layer_input.min(cfg.vocab_size) as u64;
    let mut failures = 0;
    let mut worst = 0f32;
    // A sequence on each side (the GPU one with room for a prompt of `len` and the steps).
    let new_cpu = || match &slice {
        Some(s) => cpu.new_cache_for(s),
        None => Ok(cpu.new_cache()),
    };
    let new_gpu = |len: usize| match &slice {
        Some(s) => gpu.new_cache_for(s, len + a.steps + 1),
        None => gpu.new_cache(len + a.steps + 1),
    };
    println!("prompt  check                      max rel err  tokens");
    for &len in &a.prompt_lens {
        if len == 0 {
            bail!("--prompt-lens: lengths must be at least 1");
        }
        let prompt = random_prompt(len, len as u64, text_vocab);
        let new_gpu = || new_gpu(len);
        // Every position.
        let want = cpu.forward(&prompt, &mut new_cpu()?, Logits::All)?;
        let got = gpu.forward(&prompt, &mut new_gpu()?, Logits::All)?;
        let e = rel_err(&got, &want);
        worst = worst.max(e);
        let ok = e <= a.tolerance;
        failures += usize::from(!ok);
        println!(
            "{len:>6}  all positions              {e:>11.3e}  {}",
            if ok { "" } else { "FAIL" }
        );
        if !ok && failures == 1 {
            trace(&cpu, &gpu, &prompt, new_cpu()?, new_gpu()?)?;
        }
        // A prefill that continues a sequence (a second chat turn): the first half, then
        // every position of the second half.
        if len >= 2 {
            let (a1, a2) = prompt.split_at(len / 2);
            let mut cc = new_cpu()?;
            let mut gc = new_gpu()?;
            cpu.forward(a1, &mut cc, Logits::Last)?;
            gpu.forward(a1, &mut gc, Logits::Last)?;
            let want = cpu.forward(a2, &mut cc, Logits::All)?;
            let got = gpu.forward(a2, &mut gc, Logits::All)?;
            let e = rel_err(&got, &want);
            worst = worst.max(e);
            let ok = e <= a.tolerance;
            failures += usize::from(!ok);
            println!(
                "{len:>6}  two-part prefill          {e:>11.3e}  {}",
                if ok { "" } else { "FAIL" }
            );
        }
        // Fast prefill, then greedy decoding on each side.
        let mut cc = new_cpu()?;
        let mut gc = new_gpu()?;
        let mut lc = cpu.forward(&prompt, &mut cc, Logits::Last)?;
        let mut lg = gpu.forward(&prompt, &mut gc, Logits::Last)?;
        let mut step_err = rel_err(&lg, &lc);
        let (mut same, mut first_diff) = (0usize, None);
        // A third sequence fed the same tokens, its next id chosen on the device
        // (`forward_argmax`, greedy decoding): it must match the host's argmax of the
        // GPU logits at every step.
        let mut dc = new_gpu()?;
        let mut td = argmax(&gpu.forward(&prompt, &mut dc, Logits::Last)?);
        let mut device_same = 0;
        // A fourth, the candidates of a top-64 draw chosen on the device: they must be
        // those of the GPU logits.
        let mut kc = new_gpu()?;
        gpu.forward(&prompt, &mut kc, Logits::Last)?;
        let mut top_same = 0;
        for step in 0..a.steps {
            let (tc, tg) = (argmax(&lc), argmax(&lg));
            device_same += usize::from(td == tg);
            if tc == tg && first_diff.is_none() {
                same += 1;
            } else if first_diff.is_none() {
                first_diff = Some(step);
            }
            lc = cpu.forward(&[tc], &mut cc, Logits::Last)?;
            lg = gpu.forward(&[tg], &mut gc, Logits::Last)?;
            td = gpu.forward_argmax(tg, &mut dc, cfg.vocab_size)?;
            let top = gpu.forward_top_k(tg, &mut kc, cfg.vocab_size, 64)?;
            top_same += usize::from(top_k_matches(&top, &lg, 64));
            if first_diff.is_none() {
                step_err = step_err.max(rel_err(&lg, &lc));
            }
        }
        device_same += usize::from(td == argmax(&lg));
        if top_same != a.steps {
            failures += 1;
            println!(
                "{len:>6}  device top-64: {top_same}/{} the candidates of the logits  FAIL",
                a.steps
            );
        }
        if device_same != a.steps + 1 {
            failures += 1;
            println!(
                "{len:>6}  device argmax: {device_same}/{} the host's choice  FAIL",
                a.steps + 1
            );
        }
        worst = worst.max(step_err);
        let ok = step_err <= a.tolerance && first_diff.is_none();
        failures += usize::from(!ok);
        println!(
            "{len:>6}  prefill + {:>2} greedy steps  {step_err:>11.3e}  {same}/{} same{}{}",
            a.steps,
            a.steps,
            if gc.persistent_step() {
                " (decode: layers in one persistent launch)"
            } else {
                ""
            },
            if ok { "" } else { "  FAIL" }
        );
    }
    // Sequences decoded together (a server's batched step; 10 = a group of 8 rows and one
    // of 2): each row against its sequence alone on the CPU, fed the CPU's greedy tokens.
    if a.steps > 0 {
        let n = 10;
        let mut cc = Vec::new();
        let mut gc = Vec::new();
        let mut lc = Vec::new();
        for i in 0..n {
            let len = 1 + 3 * i;
            let prompt = random_prompt(len, 1000 + i as u64, text_vocab);
            let (mut c, mut g) = (new_cpu()?, new_gpu(len)?);
            lc.push(cpu.forward(&prompt, &mut c, Logits::Last)?);
            gpu.forward(&prompt, &mut g, Logits::Last)?;
            cc.push(c);
            gc.push(g);
        }
        let v = cfg.vocab_size;
        let (mut e, mut same, mut total) = (0f32, 0usize, 0usize);
        let mut batch_ms = 0f64;
        gpu.gpu().profile_take();
        for _ in 0..a.steps {
            let toks: Vec<u32> = lc.iter().map(|l| argmax(l)).collect();
            let mut refs: Vec<_> = gc.iter_mut().collect();
            let t = std::time::Instant::now();
            let got = gpu.forward_batch(&toks, &mut refs)?;
            batch_ms += t.elapsed().as_secs_f64() * 1e3;
            for b in 0..n {
                lc[b] = cpu.forward(&[toks[b]], &mut cc[b], Logits::Last)?;
                let row = &got[b * v..(b + 1) * v];
                e = e.max(rel_err(row, &lc[b]));
                same += usize::from(argmax(row) == argmax(&lc[b]));
                total += 1;
            }
        }
        worst = worst.max(e);
        let ok = e <= a.tolerance && same == total;
        failures += usize::from(!ok);
        println!(
            "{n:>3} seqs  batched decode steps      {e:>11.3e}  {same}/{total} same{}",
            if ok { "" } else { "  FAIL" }
        );
        eprintln!(
            "(a batched step of {n} sequences: {:.2} ms)",
            batch_ms / a.steps as f64
        );
        for (name, count, ms) in gpu.gpu().profile_take().into_iter().take(12) {
            eprintln!("    {name:<24} {count:>6} launches {ms:>9.3} ms");
        }
    }
    // The product kernels alone, on random data (Q4_K and every batch size included).
    println!("kernel check                                  max rel err");
    let mut kernel_worst = 0f64;
    for c in gemma3n_model::text::cuda::check_kernels(gpu.gpu())? {
        let ok = c.err <= c.tol;
        failures += usize::from(!ok);
        kernel_worst = kernel_worst.max(c.err);
        println!(
            "{:<45} {:>11.3e}{}",
            c.name,
            c.err,
            if ok { "" } else { "  FAIL" }
        );
    }
    println!(
        "kernel checks: worst max rel err {kernel_worst:.3e} (tolerance 1e-5; flash attention 1e-2)"
    );
    println!(
        "parity {}: worst max rel err {worst:.3e} (tolerance {:.1e})",
        if failures == 0 { "PASSED" } else { "FAILED" },
        a.tolerance
    );
    if failures > 0 {
        bail!("{failures} parity check(s) failed");
    }
    Ok(())
}

/// `len` pseudo-random text ids (seeded).
fn random_prompt(len: usize, seed: u64, text_vocab: u64) -> Vec<u32> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (3 + (x >> 33) % (text_vocab - 3)) as u32
        })
        .collect()
}

/// Where the backends part: every AltUp stream after each layer, CPU against GPU.
fn trace(
    cpu: &TextModel,
    gpu: &gemma3n_model::text::cuda::CudaTextModel,
    prompt: &[u32],
    mut cc: gemma3n_model::KvCache,
    mut gc: gemma3n_model::text::cuda::CudaKvCache,
) -> Result<()> {
    let mut want: Vec<Vec<Vec<f32>>> = Vec::new();
    let mut got: Vec<Vec<Vec<f32>>> = Vec::new();
    cpu.forward_with_hook(
        prompt,
        &mut cc,
        Logits::All,
        Some(&mut |_, s| want.push(s.to_vec())),
    )?;
    gpu.forward_with_hook(prompt, &mut gc, Logits::All, &mut |_, s| {
        got.push(s.to_vec())
    })?;
    println!("        trace (stream errors after each layer; 0 = initial streams):");
    for (k, (w, g)) in want.iter().zip(&got).enumerate() {
        let errs: Vec<String> = w
            .iter()
            .zip(g)
            .map(|(a, b)| format!("{:.2e}", rel_err(b, a)))
            .collect();
        println!("        layer {k:>2}: {}", errs.join("  "));
    }
    Ok(())
}
