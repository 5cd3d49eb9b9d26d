//! Image input: preprocessing (spec/multimodal.md §1.1), the MobileNet-V5 tower (§1.2-§1.6),
//! the vision embedder (§2); the merge into a prompt is [`crate::prompt::MediaPrompt`].

pub mod arch;
pub mod preprocess;
pub mod synthetic;
pub mod tower;

use crate::checkpoint::Checkpoint;
use crate::config::VisionConfig;
use crate::embedder::MultimodalEmbedder;
use crate::error::{ModelError, Result};
pub use tower::VisionTower;

/// Prefix of the tower's tensors in the checkpoints.
pub const TOWER_PREFIX: &str = "model.vision_tower.timm_model.";
/// Prefix of the vision embedder's tensors.
pub const EMBEDDER_PREFIX: &str = "model.embed_vision.";

/// The tower and the embedder: an image in, its soft tokens in text-embedding space out.
pub struct VisionModel {
    pub cfg: VisionConfig,
    pub tower: VisionTower,
    pub embedder: MultimodalEmbedder,
}

impl VisionModel {
    /// Loads the vision part of a multimodal checkpoint; a clear error when it has none.
    pub fn load(ckpt: &Checkpoint) -> Result<VisionModel> {
        let cfg = ckpt.config.vision.clone().ok_or_else(|| {
            ModelError::Invalid(format!(
                "{}: this checkpoint has no vision tower (config.json has no vision_config), so it cannot take images",
                ckpt.dir.display()
            ))
        })?;
        let probe = format!("{TOWER_PREFIX}conv_stem.conv.weight");
        if !ckpt.weights.contains(&probe) {
            return Err(ModelError::Invalid(format!(
                "{}: the weights have no vision tower ({probe} is missing), so this checkpoint cannot take images",
                ckpt.dir.display()
            )));
        }
        let tower = VisionTower::load(&ckpt.weights, TOWER_PREFIX, &cfg.arch)?;
        let embedder = MultimodalEmbedder::load(
            &ckpt.weights,
            EMBEDDER_PREFIX,
            cfg.hidden_size,
            ckpt.config.text.hidden_size,
            cfg.vocab_size,
            cfg.vocab_offset,
            cfg.rms_norm_eps,
        )?;
        Ok(VisionModel {
            cfg,
            tower,
            embedder,
        })
    }

    /// The soft tokens of one preprocessed image (`3 × size × size`): `[tokens, text width]`
    /// (spec §1.7: tower output in raster order, times √width, through the embedder).
    pub fn encode(&self, pixels: &[f32], size: usize) -> Result<Vec<f32>> {
        let mut x = self.tower.forward(pixels, size)?;
        let n = self.tower.tokens();
        if n != self.cfg.soft_tokens_per_image {
            return Err(ModelError::Invalid(format!(
                "vision tower gives {n} tokens per image, the config says {}",
                self.cfg.soft_tokens_per_image
            )));
        }
        let s = (self.cfg.hidden_size as f32).sqrt();
        x.iter_mut().for_each(|v| *v *= s);
        Ok(self.embedder.soft(&x, n))
    }
}
