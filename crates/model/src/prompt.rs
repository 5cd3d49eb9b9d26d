//! The embedding rows of a prompt with images and audio clips (spec/multimodal.md §6): the
//! soft tokens of each image and clip at their placeholders, in order, and the embedders'
//! hard tokens (end-of-image, end-of-audio, ...) at the other multimodal ids.

use std::collections::HashMap;

use crate::audio::AudioModel;
use crate::error::{ModelError, Result};
use crate::vision::VisionModel;

/// Which embedding a placeholder position takes.
#[derive(Clone, Copy)]
enum Slot {
    Image(usize, usize),
    Audio(usize, usize),
}

/// A prompt's multimodal rows, for [`crate::text::EmbedFn`] (`|pos, id, row|
/// prompt.embed(pos, id, row)`).
pub struct MediaPrompt<'a> {
    vision: Option<&'a VisionModel>,
    audio: Option<&'a AudioModel>,
    /// Absolute position → (item, token).
    slots: HashMap<usize, Slot>,
    images: Vec<Vec<f32>>,
    clips: Vec<Vec<f32>>,
    text_width: usize,
}

/// Absolute positions of `token` in `ids` (which start at `pos0`); checks that `items` blocks
/// of `per` rows of `width` fill them exactly.
fn placeholders(
    ids: &[u32],
    pos0: usize,
    token: u32,
    items: &[Vec<f32>],
    per: usize,
    width: usize,
    what: &str,
) -> Result<Vec<usize>> {
    let pos: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, &id)| id == token)
        .map(|(t, _)| pos0 + t)
        .collect();
    if pos.len() != items.len() * per {
        return Err(ModelError::Invalid(format!(
            "the prompt has {} {what} placeholder tokens but {} {what}(s) of {per} tokens were given",
            pos.len(),
            items.len()
        )));
    }
    if items.iter().any(|x| x.len() != per * width) {
        return Err(ModelError::Invalid(format!(
            "{what} soft tokens of the wrong size for this model"
        )));
    }
    Ok(pos)
}

impl<'a> MediaPrompt<'a> {
    /// `ids`: the prompt, starting at absolute position `pos0`. `images`: each image's soft
    /// tokens from [`VisionModel::encode`]; `clips`: each clip's from [`AudioModel::encode`].
    /// Every image and clip must have exactly its tokens' worth of placeholders, in order.
    pub fn new(
        ids: &[u32],
        pos0: usize,
        text_width: usize,
        images: Option<(&'a VisionModel, Vec<Vec<f32>>)>,
        clips: Option<(&'a AudioModel, Vec<Vec<f32>>)>,
    ) -> Result<MediaPrompt<'a>> {
        let mut slots = HashMap::new();
        let (vision, images) = match images {
            Some((v, imgs)) => {
                let per = v.cfg.soft_tokens_per_image;
                let pos = placeholders(
                    ids,
                    pos0,
                    v.cfg.image_token_id,
                    &imgs,
                    per,
                    text_width,
                    "image",
                )?;
                for (k, p) in pos.into_iter().enumerate() {
                    slots.insert(p, Slot::Image(k / per, k % per));
                }
                (Some(v), imgs)
            }
            None => (None, Vec::new()),
        };
        let (audio, clips) = match clips {
            Some((a, cl)) => {
                let per = a.cfg.soft_tokens_per_clip;
                let pos = placeholders(
                    ids,
                    pos0,
                    a.cfg.audio_token_id,
                    &cl,
                    per,
                    text_width,
                    "audio",
                )?;
                for (k, p) in pos.into_iter().enumerate() {
                    slots.insert(p, Slot::Audio(k / per, k % per));
                }
                (Some(a), cl)
            }
            None => (None, Vec::new()),
        };
        Ok(MediaPrompt {
            vision,
            audio,
            slots,
            images,
            clips,
            text_width,
        })
    }

    /// The embedding of `id` at absolute position `pos`.
    pub fn embed(&self, pos: usize, id: u32, row: &mut [f32]) -> Result<()> {
        let d = self.text_width;
        match self.slots.get(&pos) {
            Some(&Slot::Image(i, t)) => {
                row.copy_from_slice(&self.images[i][t * d..(t + 1) * d]);
                return Ok(());
            }
            Some(&Slot::Audio(i, t)) => {
                row.copy_from_slice(&self.clips[i][t * d..(t + 1) * d]);
                return Ok(());
            }
            None => {}
        }
        if let Some(v) = self.vision.filter(|v| v.embedder.owns(id)) {
            row.copy_from_slice(&v.embedder.hard(id)?);
            return Ok(());
        }
        if let Some(a) = self.audio.filter(|a| a.embedder.owns(id)) {
            row.copy_from_slice(&a.embedder.hard(id)?);
            return Ok(());
        }
        Err(ModelError::Invalid(format!(
            "token id {id} at position {pos} is a multimodal token, but no {} was given with this prompt",
            if self.audio.is_none() && self.vision.is_some() { "audio" } else { "image or audio" }
        )))
    }
}
