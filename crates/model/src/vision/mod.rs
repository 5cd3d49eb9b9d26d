//! Image input: preprocessing (spec/multimodal.md §1.1), the MobileNet-V5 tower (§1.2-§1.6),
//! the vision embedder (§2) and the merge of image soft tokens into a prompt (§5-§6).

pub mod arch;
pub mod preprocess;
pub mod synthetic;
pub mod tower;

use std::collections::HashMap;

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

/// The embedding rows a prompt with images needs: the soft tokens of each image at the
/// image placeholders (in order), and the vision embedder's hard tokens (end-of-image) at
/// the other ids of its range.
pub struct ImagePrompt<'a> {
    vision: &'a VisionModel,
    /// Absolute position → (image, token).
    slots: HashMap<usize, (usize, usize)>,
    images: Vec<Vec<f32>>,
    text_width: usize,
}

impl<'a> ImagePrompt<'a> {
    /// `images`: each image's soft tokens from [`VisionModel::encode`]; `ids`: the prompt,
    /// which starts at absolute position `pos0`. Every image must have exactly its tokens'
    /// worth of placeholders, in order.
    pub fn new(
        vision: &'a VisionModel,
        images: Vec<Vec<f32>>,
        ids: &[u32],
        pos0: usize,
        text_width: usize,
    ) -> Result<ImagePrompt<'a>> {
        let per = vision.cfg.soft_tokens_per_image;
        let placeholders: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == vision.cfg.image_token_id)
            .map(|(t, _)| pos0 + t)
            .collect();
        if placeholders.len() != images.len() * per {
            return Err(ModelError::Invalid(format!(
                "the prompt has {} image placeholder tokens but {} image(s) of {per} tokens were given",
                placeholders.len(),
                images.len()
            )));
        }
        for img in &images {
            if img.len() != per * text_width {
                return Err(ModelError::Invalid(
                    "image soft tokens of the wrong size for this model".into(),
                ));
            }
        }
        let slots = placeholders
            .into_iter()
            .enumerate()
            .map(|(k, p)| (p, (k / per, k % per)))
            .collect();
        Ok(ImagePrompt {
            vision,
            slots,
            images,
            text_width,
        })
    }

    /// The embedding of `id` at absolute position `pos` (for [`crate::text::EmbedFn`]).
    pub fn embed(&self, pos: usize, id: u32, row: &mut [f32]) -> Result<()> {
        if let Some(&(i, t)) = self.slots.get(&pos) {
            let d = self.text_width;
            row.copy_from_slice(&self.images[i][t * d..(t + 1) * d]);
            return Ok(());
        }
        if self.vision.embedder.owns(id) {
            row.copy_from_slice(&self.vision.embedder.hard(id)?);
            return Ok(());
        }
        Err(ModelError::Invalid(format!(
            "token id {id} at position {pos} is an audio token; audio input is not supported yet"
        )))
    }
}
