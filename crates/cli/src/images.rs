//! `--image FILE` for `run` and `logits`: every image is read and preprocessed first (bad
//! files fail before any model work), then the checkpoint's vision tower encodes them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gemma3n_model::vision::preprocess::{load_image, PixelValues};
use gemma3n_model::vision::VisionModel;
use gemma3n_model::Checkpoint;
use indicatif::{ProgressBar, ProgressStyle};

/// Reads and preprocesses `files` (no model needed).
pub fn read_images(files: &[PathBuf]) -> Result<Vec<PixelValues>> {
    files
        .iter()
        .map(|f| load_image(f).with_context(|| format!("--image {}", f.display())))
        .collect()
}

/// Loads the vision tower of the checkpoint at `model` and encodes `images` (soft tokens
/// in text-embedding space, one `[tokens, width]` block per image).
pub fn encode_images(model: &Path, images: &[PixelValues]) -> Result<(VisionModel, Vec<Vec<f32>>)> {
    if !model.is_dir() {
        bail!(
            "{}: images need a Hugging Face checkpoint directory with the vision tower (GGUF files hold the text decoder only)",
            model.display()
        );
    }
    let ckpt = Checkpoint::open(model)
        .with_context(|| format!("cannot open model {}", model.display()))?;
    let vision = VisionModel::load(&ckpt)?;
    let bar = ProgressBar::new(images.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("encoding images {bar:20} {pos}/{len} {elapsed}")
            .expect("valid template"),
    );
    let mut out = Vec::with_capacity(images.len());
    for px in images {
        out.push(vision.encode(&px.data, px.size)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((vision, out))
}
