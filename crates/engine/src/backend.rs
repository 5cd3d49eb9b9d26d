//! What the generation loop needs from a text decoder, so that one loop runs on every
//! backend: the CPU [`TextModel`] always, the GPU `CudaTextModel` with the `cuda` feature.

use std::any::Any;
use std::sync::Arc;

use gemma3n_model::matformer::SlicePlan;
use gemma3n_model::text::{EmbedFn, TopScores};
use gemma3n_model::{KvCache, Logits, ModelError, TextConfig, TextModel};

/// A text decoder: runs new tokens of a sequence through the model.
pub trait Decoder {
    /// The KV cache of one sequence.
    type Cache: DecoderCache;

    fn config(&self) -> &TextConfig;

    /// An empty sequence running `plan` (the whole model or a MatFormer slice).
    fn new_cache_with_plan(&self, plan: Arc<SlicePlan>) -> Result<Self::Cache, ModelError>;

    /// One decode step of several sequences of the same slice (the contract of
    /// [`TextModel::forward_batch`]): `ids[b]` is the next token of `caches[b]`; returns
    /// `B x V` logits.
    fn forward_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut Self::Cache],
    ) -> Result<Vec<f32>, ModelError>;

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

    /// Runs `id` (the next token of the sequence held by `cache`) and returns the index of
    /// the largest of its first `vocab` logits, the lowest among equal ones (greedy
    /// decoding; [`crate::sampling::argmax`]). A GPU decoder finds it on the device and
    /// copies back one id instead of the logits.
    fn forward_argmax(
        &self,
        id: u32,
        cache: &mut Self::Cache,
        vocab: usize,
    ) -> Result<u32, ModelError> {
        let logits = self.forward_embedded(&[id], cache, Logits::Last, None)?;
        argmax_of_first(&logits, vocab)
    }

    /// Runs `id` (the next token of the sequence held by `cache`) and returns what a top-`k`
    /// draw among its first `vocab` logits needs ([`TopScores`]): by default all the
    /// logits; a GPU decoder finds the candidates on the device and copies back only those.
    fn forward_top_k(
        &self,
        id: u32,
        cache: &mut Self::Cache,
        vocab: usize,
        k: usize,
    ) -> Result<TopScores, ModelError> {
        let _ = (vocab, k);
        self.forward_embedded(&[id], cache, Logits::Last, None)
            .map(TopScores::Logits)
    }
}

/// The index of the largest of the first `n` of `logits` ([`crate::sampling::argmax`]), as
/// a model error when there is none.
pub(crate) fn argmax_of_first(logits: &[f32], n: usize) -> Result<u32, ModelError> {
    crate::sampling::argmax(&logits[..n.min(logits.len())])
        .map_err(|e| ModelError::Invalid(e.to_string()))
}

/// The KV cache of one sequence (the contract of [`KvCache`]).
pub trait DecoderCache {
    /// Tokens held (the position of the next token).
    fn pos(&self) -> usize;
    /// Forgets every token.
    fn clear(&mut self);
    /// Keeps the first `n` tokens; false when the cache cannot (it must then be cleared).
    fn truncate(&mut self, n: usize) -> bool;
    /// The slice the sequence runs.
    fn plan(&self) -> &Arc<SlicePlan>;
}

/// The KV cache of a sequence of an [`AnyDecoder`].
pub trait SeqCache: Send {
    fn plan(&self) -> &Arc<SlicePlan>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A [`Decoder`] chosen at run time (the server holds one behind a pointer).
/// (Its methods are named apart from [`Decoder`]'s, which every decoder also has.)
pub trait AnyDecoder: Send + Sync {
    fn text_config(&self) -> &TextConfig;
    fn new_cache(&self, plan: Arc<SlicePlan>) -> Result<Box<dyn SeqCache>, ModelError>;
    /// [`Decoder::forward_embedded`].
    fn forward_sequence(
        &self,
        ids: &[u32],
        cache: &mut dyn SeqCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>, ModelError>;
    /// [`Decoder::forward_batch`].
    fn forward_sequences(
        &self,
        ids: &[u32],
        caches: &mut [&mut dyn SeqCache],
    ) -> Result<Vec<f32>, ModelError>;
}

impl<C: DecoderCache + Send + 'static> SeqCache for C {
    fn plan(&self) -> &Arc<SlicePlan> {
        DecoderCache::plan(self)
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn downcast<C: 'static>(cache: &mut dyn SeqCache) -> Result<&mut C, ModelError> {
    cache
        .as_any_mut()
        .downcast_mut::<C>()
        .ok_or_else(|| ModelError::Invalid("a KV cache of another decoder".into()))
}

impl<D> AnyDecoder for D
where
    D: Decoder + Send + Sync,
    D::Cache: Send + 'static,
{
    fn text_config(&self) -> &TextConfig {
        Decoder::config(self)
    }
    fn new_cache(&self, plan: Arc<SlicePlan>) -> Result<Box<dyn SeqCache>, ModelError> {
        Ok(Box::new(self.new_cache_with_plan(plan)?))
    }
    fn forward_sequence(
        &self,
        ids: &[u32],
        cache: &mut dyn SeqCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>, ModelError> {
        Decoder::forward_embedded(self, ids, downcast::<D::Cache>(cache)?, want, embed)
    }
    fn forward_sequences(
        &self,
        ids: &[u32],
        caches: &mut [&mut dyn SeqCache],
    ) -> Result<Vec<f32>, ModelError> {
        let mut typed = caches
            .iter_mut()
            .map(|c| downcast::<D::Cache>(&mut **c))
            .collect::<Result<Vec<_>, _>>()?;
        Decoder::forward_batch(self, ids, &mut typed)
    }
}

impl Decoder for TextModel {
    type Cache = KvCache;

    fn config(&self) -> &TextConfig {
        &self.cfg
    }

    fn new_cache_with_plan(&self, plan: Arc<SlicePlan>) -> Result<KvCache, ModelError> {
        Ok(TextModel::new_cache_with_plan(self, plan))
    }

    fn forward_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<f32>, ModelError> {
        TextModel::forward_batch(self, ids, caches)
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
    fn plan(&self) -> &Arc<SlicePlan> {
        KvCache::plan(self)
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

        fn new_cache_with_plan(&self, plan: Arc<SlicePlan>) -> Result<CudaKvCache, ModelError> {
            // Room for 256 positions to start with; the cache grows as needed.
            CudaTextModel::new_cache_with_plan(self, plan, 256)
        }

        fn forward_batch(
            &self,
            ids: &[u32],
            caches: &mut [&mut CudaKvCache],
        ) -> Result<Vec<f32>, ModelError> {
            CudaTextModel::forward_batch(self, ids, caches)
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

        fn forward_argmax(
            &self,
            id: u32,
            cache: &mut CudaKvCache,
            vocab: usize,
        ) -> Result<u32, ModelError> {
            CudaTextModel::forward_argmax(self, id, cache, vocab)
        }

        fn forward_top_k(
            &self,
            id: u32,
            cache: &mut CudaKvCache,
            vocab: usize,
            k: usize,
        ) -> Result<TopScores, ModelError> {
            CudaTextModel::forward_top_k(self, id, cache, vocab, k)
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
        fn plan(&self) -> &Arc<SlicePlan> {
            CudaKvCache::plan(self)
        }
    }
}
