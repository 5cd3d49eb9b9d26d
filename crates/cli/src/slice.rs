//! MatFormer slice selection flags (`--size NAME`, `--slice FILE`) and `gemma3n slice`,
//! which writes a slice as a standalone checkpoint.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use gemma3n_model::matformer::{self, Slice, SlicePlan};
use gemma3n_model::{KvCache, TextConfig, TextModel};
use indicatif::{ProgressBar, ProgressStyle};

/// Which MatFormer slice of the model to run.
#[derive(clap::Args, Clone, Default)]
pub struct SliceArgs {
    /// A named slice of an E4B checkpoint: E4B, E2B, E1.96B, E2.54B, ... (see `inspect`).
    #[arg(long, conflicts_with_all = ["slice", "skip_layers", "ffn_dims"])]
    pub size: Option<String>,
    /// A custom slice: JSON with `layers_to_skip` and `ffn_hidden_dims`.
    #[arg(long, conflicts_with_all = ["skip_layers", "ffn_dims"])]
    pub slice: Option<PathBuf>,
    /// A custom slice: stored layers to skip, comma-separated (e.g. 20,21,22,23,24).
    #[arg(long, value_delimiter = ',')]
    pub skip_layers: Option<Vec<usize>>,
    /// A custom slice: the FFN width of each kept layer, comma-separated, or one width for
    /// all of them (default: the stored widths).
    #[arg(long, value_delimiter = ',')]
    pub ffn_dims: Option<Vec<usize>>,
}

impl SliceArgs {
    /// The chosen slice of a model of config `cfg`, if any.
    pub fn slice(&self, cfg: &TextConfig) -> Result<Option<Slice>> {
        if let Some(n) = &self.size {
            return Ok(Some(Slice::named(n)?));
        }
        if let Some(p) = &self.slice {
            return Ok(Some(Slice::from_file(p)?));
        }
        if self.skip_layers.is_none() && self.ffn_dims.is_none() {
            return Ok(None);
        }
        let skip = self.skip_layers.clone().unwrap_or_default();
        let kept: Vec<usize> = (0..cfg.num_hidden_layers)
            .filter(|l| !skip.contains(l))
            .collect();
        let dims = match self.ffn_dims.as_deref() {
            None => kept.iter().map(|&l| cfg.intermediate_size[l]).collect(),
            Some([w]) => vec![*w; kept.len()],
            Some(v) => v.to_vec(),
        };
        Ok(Some(Slice {
            name: "custom".into(),
            layers_to_skip: skip,
            ffn_hidden_dims: dims,
        }))
    }

    /// The checked plan of the chosen slice of a model of config `cfg` (the whole model
    /// when no slice is chosen).
    pub fn plan(&self, cfg: &TextConfig) -> Result<Arc<SlicePlan>> {
        let Some(s) = self.slice(cfg)? else {
            return Ok(Arc::new(SlicePlan::full(cfg)));
        };
        let r = SlicePlan::new(cfg, &s);
        let plan = if self.size.is_some() && r.is_err() {
            r.context("the named slices are for E4B-shaped checkpoints (35 layers, FFN 16384); use --slice FILE for other models")?
        } else {
            r?
        };
        Ok(Arc::new(plan))
    }

    /// A fresh KV cache (a sequence) running the chosen slice of `model`.
    pub fn cache(&self, model: &TextModel) -> Result<KvCache> {
        Ok(model.new_cache_with_plan(self.plan(&model.cfg)?))
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
    let ckpt = gemma3n_model::Checkpoint::open(&a.model)?;
    let slice = a.which.slice(&ckpt.config.text)?.context(
        "give the slice to write: --size NAME, --slice FILE or --skip-layers/--ffn-dims",
    )?;
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
