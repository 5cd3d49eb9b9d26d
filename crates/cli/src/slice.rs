//! MatFormer slice selection flags (`--size NAME`, `--slice FILE`) and `gemma3n slice`,
//! which writes a slice as a standalone checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gemma3n_model::matformer::{self, Slice, SlicePlan};
use gemma3n_model::{KvCache, TextModel};
use indicatif::{ProgressBar, ProgressStyle};

/// Which MatFormer slice of the model to run.
#[derive(clap::Args, Clone, Default)]
pub struct SliceArgs {
    /// A named slice of an E4B checkpoint: E4B, E2B, E1.96B, E2.54B, ... (see `inspect`).
    #[arg(long, conflicts_with = "slice")]
    pub size: Option<String>,
    /// A custom slice: JSON with `layers_to_skip` and `ffn_hidden_dims`.
    #[arg(long)]
    pub slice: Option<PathBuf>,
}

impl SliceArgs {
    /// The chosen slice, if any.
    pub fn slice(&self) -> Result<Option<Slice>> {
        Ok(match (&self.size, &self.slice) {
            (Some(n), _) => Some(Slice::named(n)?),
            (None, Some(p)) => Some(Slice::from_file(p)?),
            (None, None) => None,
        })
    }

    /// A fresh KV cache (a sequence) running the chosen slice of `model`.
    pub fn cache(&self, model: &TextModel) -> Result<KvCache> {
        Ok(match self.slice()? {
            Some(s) => {
                let r = model.new_cache_for(&s);
                if self.size.is_some() && r.is_err() {
                    r.context("the named slices are for E4B-shaped checkpoints (35 layers, FFN 16384); use --slice FILE for other models")?
                } else {
                    r?
                }
            }
            None => model.new_cache(),
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout), normally an E4B.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    which: SliceArgs,
    /// Output directory of the sliced checkpoint.
    #[arg(long)]
    out: PathBuf,
}

pub fn main(a: Args) -> Result<()> {
    let slice = a
        .which
        .slice()?
        .context("give the slice to write: --size NAME or --slice FILE")?;
    let ckpt = gemma3n_model::Checkpoint::open(&a.model)?;
    let plan = SlicePlan::new(&ckpt.config.text, &slice)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("writing slice {bar:40} {pos}/{len} tensors").expect("valid"),
    );
    matformer::export(&ckpt, &plan, &a.out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let c = plan.sliced_config(&ckpt.config.text);
    eprintln!(
        "wrote slice `{}` ({} layers, {} effective parameters) to {}",
        plan.name,
        c.num_hidden_layers,
        c.stats().effective_params(),
        a.out.display()
    );
    Ok(())
}
