//! `--audio FILE` for `run` and `logits`: every file is decoded to 16 kHz mono first (bad
//! files fail before any model work) and split into windows of at most 30 s, each of which
//! is one audio block (188 positions) of the prompt; then the checkpoint's audio tower
//! encodes the windows.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gemma3n_model::audio::decode::load_audio;
use gemma3n_model::audio::features::windows;
use gemma3n_model::audio::AudioModel;
use gemma3n_model::Checkpoint;
use indicatif::{ProgressBar, ProgressStyle};

/// The decoded audio of the `--audio` files.
pub struct AudioInput {
    /// Consecutive windows of at most 30 s of every file, in order.
    pub clips: Vec<Vec<f32>>,
    /// How many of `clips` each file gave.
    pub windows_per_file: Vec<usize>,
}

/// Decodes `files` and splits them into 30 s windows (no model needed).
pub fn read_audio(files: &[PathBuf]) -> Result<AudioInput> {
    let mut clips = Vec::new();
    let mut windows_per_file = Vec::new();
    for f in files {
        let w = load_audio(f).with_context(|| format!("--audio {}", f.display()))?;
        if w.samples.is_empty() {
            bail!("--audio {}: the file holds no audio samples", f.display());
        }
        let parts = windows(&w.samples);
        windows_per_file.push(parts.len());
        clips.extend(parts.into_iter().map(|p| p.to_vec()));
    }
    Ok(AudioInput {
        clips,
        windows_per_file,
    })
}

/// Loads the audio tower of the checkpoint at `model` and encodes the clips (soft tokens in
/// text-embedding space, one `[188, width]` block per clip). As HF's processor does with the
/// audio of one call, all clips are padded to the longest before feature extraction.
pub fn encode_audio(model: &Path, input: &AudioInput) -> Result<(AudioModel, Vec<Vec<f32>>)> {
    if !model.is_dir() {
        bail!(
            "{}: audio needs a Hugging Face checkpoint directory with the audio tower (GGUF files hold the text decoder only)",
            model.display()
        );
    }
    let ckpt = Checkpoint::open(model)
        .with_context(|| format!("cannot open model {}", model.display()))?;
    let audio = AudioModel::load(&ckpt)?;
    let refs: Vec<&[f32]> = input.clips.iter().map(|c| c.as_slice()).collect();
    let bar = ProgressBar::new(refs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("encoding audio {bar:20} {pos}/{len} windows {elapsed}")
            .expect("valid template"),
    );
    let out = audio.encode_clips_with_progress(&refs, &mut || bar.inc(1))?;
    bar.finish_and_clear();
    Ok((audio, out))
}
