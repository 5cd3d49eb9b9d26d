//! `gemma3n quantize`: writes a checkpoint as a Gemma 3n GGUF file (llama.cpp's layout) in
//! one of the preset formats.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gemma3n_model::quantize::{quantize, QuantPolicy};
use gemma3n_model::Checkpoint;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// Preset: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k.
    #[arg(long = "type")]
    kind: String,
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let policy = QuantPolicy::preset(&a.kind)?;
    let ckpt = Checkpoint::open(&a.model)?;
    eprintln!("policy {}", policy.describe());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("quantizing {bar:40} {pos}/{len} tensors {elapsed}")
            .expect("valid template"),
    );
    quantize(&ckpt, policy, &a.out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("cannot write {}", a.out.display()))?;
    bar.finish_and_clear();
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({}; text decoder only, no tokenizer metadata yet)",
        a.out.display(),
        crate::inspect::gb(size as f64)
    );
    Ok(())
}
