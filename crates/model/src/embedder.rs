//! The multimodal embedder (spec/multimodal.md §2), one for vision and one for audio: maps
//! the tower's soft tokens, or the modality's own hard token ids, into the text model's
//! embedding space.

use gemma3n_compute::cpu::{matmul, ops};
use gemma3n_compute::Matrix;

use crate::checkpoint::TensorSource;
use crate::error::{ModelError, Result};

pub struct MultimodalEmbedder {
    /// `[vocab_size, width]`: rows of the hard tokens (ids from `vocab_offset`).
    embedding: Matrix,
    hard_norm: Vec<f32>,
    soft_norm: Vec<f32>,
    /// `[text_width, width]`.
    projection: Matrix,
    eps: f32,
    pub vocab_offset: u32,
    pub width: usize,
}

impl MultimodalEmbedder {
    /// Loads `prefix` + `embedding.weight`, `hard_embedding_norm.weight`,
    /// `soft_embedding_norm.weight`, `embedding_projection.weight`.
    pub fn load(
        src: &dyn TensorSource,
        prefix: &str,
        width: usize,
        text_width: usize,
        vocab_size: usize,
        vocab_offset: u32,
        eps: f32,
    ) -> Result<MultimodalEmbedder> {
        let n = |s: &str| format!("{prefix}{s}");
        Ok(MultimodalEmbedder {
            embedding: src.matrix(&n("embedding.weight"), &[vocab_size, width])?,
            hard_norm: src.vector(&n("hard_embedding_norm.weight"), width)?,
            soft_norm: src.vector(&n("soft_embedding_norm.weight"), width)?,
            projection: src.matrix(&n("embedding_projection.weight"), &[text_width, width])?,
            eps,
            vocab_offset,
            width,
        })
    }

    /// Hard-token ids this embedder owns.
    pub fn owns(&self, id: u32) -> bool {
        id >= self.vocab_offset && ((id - self.vocab_offset) as usize) < self.embedding.rows()
    }

    /// The embedding of hard token `id`: `RMSNorm(RMSNorm(E[id − offset]; hard) · Wᵀ)`.
    pub fn hard(&self, id: u32) -> Result<Vec<f32>> {
        if !self.owns(id) {
            return Err(ModelError::Invalid(format!(
                "token id {id} is not a multimodal token of this embedder (ids {}..{})",
                self.vocab_offset,
                self.vocab_offset as usize + self.embedding.rows()
            )));
        }
        let mut e = vec![0f32; self.width];
        self.embedding
            .row_to_f32((id - self.vocab_offset) as usize, &mut e);
        ops::rms_norm_rows(&mut e, self.width, Some(&self.hard_norm), self.eps);
        Ok(self.project(&e, 1))
    }

    /// The embeddings of `n` soft tokens (`n × width`): `RMSNorm(RMSNorm(x; soft) · Wᵀ)`.
    pub fn soft(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.width, "soft tokens: length");
        let mut e = x.to_vec();
        ops::rms_norm_rows(&mut e, self.width, Some(&self.soft_norm), self.eps);
        self.project(&e, n)
    }

    fn project(&self, e: &[f32], n: usize) -> Vec<f32> {
        let d = self.projection.rows();
        let mut out = vec![0f32; n * d];
        matmul(e, n, &self.projection, &mut out);
        ops::rms_norm_rows(&mut out, d, None, self.eps);
        out
    }
}
