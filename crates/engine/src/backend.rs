//! What the generation loop needs from a text decoder, so that one loop runs on every
//! backend: the CPU [`TextModel`] always, the GPU `CudaTextModel` with the `cuda` feature.

use gemma3n_model::text::EmbedFn;
use gemma3n_model::{KvCache, Logits, ModelError, TextConfig, TextModel};

/// A text decoder: runs new tokens of a sequence through the model.
pub trait Decoder {
    /// The KV cache of one sequence.
    type Cache: DecoderCache;

    fn config(&self) -> &TextConfig;

    /// Runs `ids` (the next tokens of the sequence held by `cache`) and returns logits,
    /// `embed` replacing the embedding rows of image and audio positions (the contract of
    /// [`TextModel::forward_embedded`]).
    fn forward_embedded(
        &self,
        ids: &[u32],
        cache: &mut Self::Cache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>, ModelError>;
}

/// The KV cache of one sequence (the contract of [`KvCache`]).
pub trait DecoderCache {
    /// Tokens held (the position of the next token).
    fn pos(&self) -> usize;
    /// Forgets every token.
    fn clear(&mut self);
    /// Keeps the first `n` tokens; false when the cache cannot (it must then be cleared).
    fn truncate(&mut self, n: usize) -> bool;
}

impl Decoder for TextModel {
    type Cache = KvCache;

    fn config(&self) -> &TextConfig {
        &self.cfg
    }

    fn forward_embedded(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>, ModelError> {
        TextModel::forward_embedded(self, ids, cache, want, embed)
    }
}

impl DecoderCache for KvCache {
    fn pos(&self) -> usize {
        KvCache::pos(self)
    }
    fn clear(&mut self) {
        KvCache::clear(self)
    }
    fn truncate(&mut self, n: usize) -> bool {
        KvCache::truncate(self, n)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use gemma3n_model::text::cuda::{CudaKvCache, CudaTextModel};

    impl Decoder for CudaTextModel {
        type Cache = CudaKvCache;

        fn config(&self) -> &TextConfig {
            &self.cpu.cfg
        }

        fn forward_embedded(
            &self,
            ids: &[u32],
            cache: &mut CudaKvCache,
            want: Logits,
            embed: Option<EmbedFn<'_>>,
        ) -> Result<Vec<f32>, ModelError> {
            CudaTextModel::forward_embedded(self, ids, cache, want, embed)
        }
    }

    impl DecoderCache for CudaKvCache {
        fn pos(&self) -> usize {
            CudaKvCache::pos(self)
        }
        fn clear(&mut self) {
            CudaKvCache::clear(self)
        }
        fn truncate(&mut self, n: usize) -> bool {
            CudaKvCache::truncate(self, n)
        }
    }
}
