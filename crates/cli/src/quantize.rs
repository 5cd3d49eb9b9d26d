//! `gemma3n quantize`: writes a checkpoint (or random weights of the real shapes) as a
//! Gemma 3n GGUF file (llama.cpp's layout) in one of the preset formats.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use gemma3n_model::quantize::{quantize, quantize_from, QuantPolicy, QuantizeInput};
use gemma3n_model::text::synthetic::SyntheticSource;
use gemma3n_model::{Checkpoint, ModelConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout).
    #[arg(long, conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Random bf16 weights of the real shapes instead of a checkpoint: e2b or e4b (for
    /// benchmarks; the output is meaningless).
    #[arg(long)]
    synthetic: Option<String>,
    /// Seed of the --synthetic weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory whose tokenizer.model / tokenizer.json (and tokenizer_config.json) go into
    /// the file; default: the checkpoint directory.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Preset: f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k.
    #[arg(long = "type")]
    kind: String,
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
}

/// The configuration of a synthetic model: Gemma 3n's shapes and special ids, text only.
fn synthetic_config(name: &str) -> Result<ModelConfig> {
    let text = crate::load::synthetic_shape(name)?;
    Ok(ModelConfig {
        text,
        model_type: "gemma3n_text".into(),
        eos_token_ids: vec![1, 106],
        bos_token_id: 2,
        pad_token_id: 0,
        has_vision: false,
        vision: None,
        audio: None,
        has_audio: false,
    })
}

pub fn main(a: Args) -> Result<()> {
    let policy = QuantPolicy::preset(&a.kind)?;
    eprintln!("policy {}", policy.describe());
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("quantizing {bar:40} {pos}/{len} tensors {elapsed}")
            .expect("valid template"),
    );
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let has_vocab = match (&a.model, &a.synthetic) {
        (Some(dir), None) => {
            let ckpt = Checkpoint::open(dir)?;
            quantize(&ckpt, policy, &a.out, a.tokenizer.as_deref(), &mut progress)
        }
        (None, Some(s)) => {
            let config = synthetic_config(s)?;
            let input = QuantizeInput {
                config: &config,
                source: &SyntheticSource { seed: a.seed },
                prefix: "model.language_model.",
                // Like a real checkpoint: the KV-shared layers keep their unused k/v.
                has: &|_| true,
                tokenizer_dir: a.tokenizer.as_deref(),
            };
            quantize_from(&input, policy, &a.out, &mut progress)
        }
        _ => bail!("give either --model DIR or --synthetic e2b|e4b"),
    }
    .with_context(|| format!("cannot write {}", a.out.display()))?;
    bar.finish_and_clear();
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "wrote {} ({}; text decoder{})",
        a.out.display(),
        crate::inspect::gb(size as f64),
        if has_vocab {
            " and tokenizer"
        } else {
            "; no tokenizer.model or tokenizer.json found, so llama.cpp cannot run it"
        }
    );
    Ok(())
}
