//! Opening a checkpoint with a progress bar.

use std::path::Path;

use anyhow::{Context, Result};
use gemma3n_model::{Checkpoint, TextModel};
use indicatif::{ProgressBar, ProgressStyle};

/// Opens the checkpoint at `dir` and loads its text decoder, showing a progress bar on
/// stderr (hidden when stderr is not a terminal).
pub fn load_text_model(dir: &Path) -> Result<(Checkpoint, TextModel)> {
    let ckpt =
        Checkpoint::open(dir).with_context(|| format!("cannot open model {}", dir.display()))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("loading weights {bar:40} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let model = TextModel::load(&ckpt, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("cannot load the text decoder of {}", dir.display()))?;
    bar.finish_and_clear();
    Ok((ckpt, model))
}

/// The text configuration of `--synthetic NAME` (random weights of the real shapes).
pub fn synthetic_shape(name: &str) -> Result<gemma3n_model::TextConfig> {
    match name {
        "e2b" => Ok(gemma3n_model::TextConfig::e2b()),
        "e4b" => Ok(gemma3n_model::TextConfig::e4b()),
        other => anyhow::bail!("--synthetic: unknown shape `{other}` (expected e2b or e4b)"),
    }
}

/// `model` with its weights in the CPU decoder's layout ([`TextModel::into_cpu_layout`]),
/// with a spinner while the matrices are rearranged.
pub fn cpu_layout(model: TextModel) -> TextModel {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid"));
    spinner.set_message("arranging weights for the CPU kernels");
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let model = model.into_cpu_layout();
    spinner.finish_and_clear();
    model
}

/// Loads the text decoder from a checkpoint directory or a GGUF file (`*.gguf`).
pub fn load_any(path: &Path) -> Result<TextModel> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("loading weights {bar:40} {pos}/{len} {msg}")
                .expect("valid template"),
        );
        let (_, model) = TextModel::load_gguf(path, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .with_context(|| format!("cannot load the GGUF model {}", path.display()))?;
        bar.finish_and_clear();
        Ok(model)
    } else {
        Ok(load_text_model(path)?.1)
    }
}
