//! Audio input: decoding any common audio file to 16 kHz mono `f32` ([`decode`]), the Gemma 3n
//! log-mel features (spec/multimodal.md §3, [`features`]), the conformer audio tower (§4,
//! [`tower`]) and the audio embedder (§2): an audio clip in, its soft tokens in text-embedding
//! space out.

pub mod decode;
pub mod features;
pub mod synthetic;
pub mod tower;

use crate::checkpoint::Checkpoint;
use crate::config::AudioConfig;
use crate::embedder::MultimodalEmbedder;
use crate::error::{ModelError, Result};
pub use tower::{AudioStream, AudioTower};

/// Prefix of the tower's tensors in the checkpoints.
pub const TOWER_PREFIX: &str = "model.audio_tower.";
/// Prefix of the audio embedder's tensors.
pub const EMBEDDER_PREFIX: &str = "model.embed_audio.";

/// The tower and the embedder.
pub struct AudioModel {
    pub cfg: AudioConfig,
    pub tower: AudioTower,
    pub embedder: MultimodalEmbedder,
    /// The embedding of the audio padding id (text `vocab_size − 1`, spec §6 step 5): fills
    /// the positions of padding frames and the rest of each clip's 188 positions.
    pub pad_embedding: Vec<f32>,
}

impl AudioModel {
    /// Loads the audio part of a multimodal checkpoint; a clear error when it has none.
    pub fn load(ckpt: &Checkpoint) -> Result<AudioModel> {
        let cfg = ckpt.config.audio.clone().ok_or_else(|| {
            ModelError::Invalid(format!(
                "{}: this checkpoint has no audio tower (config.json has no audio_config), so it cannot take audio",
                ckpt.dir.display()
            ))
        })?;
        let probe = format!("{TOWER_PREFIX}subsample_conv_projection.conv_0.conv.weight");
        if !ckpt.weights.contains(&probe) {
            return Err(ModelError::Invalid(format!(
                "{}: the weights have no audio tower ({probe} is missing), so this checkpoint cannot take audio",
                ckpt.dir.display()
            )));
        }
        let tower = AudioTower::load(&ckpt.weights, TOWER_PREFIX, &cfg)?;
        let text = &ckpt.config.text;
        let embedder = MultimodalEmbedder::load(
            &ckpt.weights,
            EMBEDDER_PREFIX,
            cfg.hidden_size,
            text.hidden_size,
            cfg.vocab_size,
            cfg.vocab_offset,
            cfg.rms_norm_eps,
        )?;
        let pad_embedding = embedder.hard(text.vocab_size as u32 - 1)?;
        Ok(AudioModel {
            cfg,
            tower,
            embedder,
            pad_embedding,
        })
    }

    /// The soft tokens of one clip's features (`mel`: frames × 128, `valid`: frame mask):
    /// `[soft_tokens_per_clip, text width]`, the valid encodings through the embedder, padding
    /// frames and the rest of the clip's positions filled with the pad embedding (spec §6).
    pub fn encode(&self, mel: &[f32], valid: &[bool]) -> Result<Vec<f32>> {
        let (x, ok) = self.tower.forward(mel, valid, None)?;
        self.embed(&x, &ok)
    }

    /// The soft tokens of several clips of one prompt (16 kHz mono samples, each at most 30 s:
    /// split longer audio with [`features::windows`] first). As the reference processor does
    /// with the audio of one call, the clips are padded to the longest before the features
    /// are computed (this changes the last soft token of a shorter clip slightly).
    pub fn encode_clips(&self, clips: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        self.encode_clips_with_progress(clips, &mut || {})
    }

    /// [`AudioModel::encode_clips`], calling `done` after each clip (progress bars).
    pub fn encode_clips_with_progress(
        &self,
        clips: &[&[f32]],
        done: &mut dyn FnMut(),
    ) -> Result<Vec<Vec<f32>>> {
        if let Some(c) = clips.iter().find(|c| c.len() > features::MAX_SAMPLES) {
            return Err(ModelError::Invalid(format!(
                "an audio clip of {} samples is longer than 30 s; split it into windows first",
                c.len()
            )));
        }
        features::log_mel_batch(clips)
            .iter()
            .map(|f| {
                let soft = self.encode(&f.mel, &f.mask);
                done();
                soft
            })
            .collect()
    }

    /// Encodings from the tower (`[n, width]` and their validity) to the clip's soft tokens.
    pub fn embed(&self, x: &[f32], valid: &[bool]) -> Result<Vec<f32>> {
        let n = valid.len();
        let per = self.cfg.soft_tokens_per_clip;
        if n > per {
            return Err(ModelError::Invalid(format!(
                "an audio clip gives {n} soft tokens, more than the {per} a clip has in the prompt (clips are at most 30 s)"
            )));
        }
        let soft = self.embedder.soft(x, n);
        let tw = self.pad_embedding.len();
        let mut out = Vec::with_capacity(per * tw);
        for (row, &ok) in soft.chunks_exact(tw).zip(valid) {
            out.extend_from_slice(if ok { row } else { &self.pad_embedding });
        }
        for _ in n..per {
            out.extend_from_slice(&self.pad_embedding);
        }
        Ok(out)
    }
}
