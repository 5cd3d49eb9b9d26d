//! The Gemma 3n text decoder. One file per part of the spec:
//! `ple` (per-layer inputs), `altup` (streams), `laurel`, `attention` (+ `rope`,
//! `kv_cache`), `ffn` (with activation sparsity), `decoder` (layer loop, output head).

pub mod altup;
pub mod attention;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod decoder;
pub mod ffn;
pub mod kv_cache;
pub mod laurel;
pub mod ple;
pub mod rope;
pub mod stats;
pub mod synthetic;
pub mod weights;

pub use decoder::{EmbedFn, Logits, StreamHook, TopScores};
pub use kv_cache::KvCache;
pub use stats::TextStats;
pub use weights::{LayerWeights, TextWeights};

use std::sync::Arc;

use crate::checkpoint::Checkpoint;
use crate::config::TextConfig;
use crate::error::Result;
use crate::matformer::{Slice, SlicePlan};

/// A loaded text decoder.
pub struct TextModel {
    pub cfg: TextConfig,
    pub weights: TextWeights,
    /// RoPE inverse frequencies per layer (θ by layer type).
    pub(crate) inv_freq: Vec<Vec<f32>>,
    /// The plan that runs every layer at its stored width.
    full: Arc<SlicePlan>,
}

impl TextModel {
    pub fn new(cfg: TextConfig, weights: TextWeights) -> TextModel {
        let inv_freq = (0..cfg.num_hidden_layers)
            .map(|l| rope::inv_freq(cfg.rope_theta(l), cfg.head_dim))
            .collect();
        let full = Arc::new(SlicePlan::full(&cfg));
        TextModel {
            cfg,
            weights,
            inv_freq,
            full,
        }
    }

    /// Loads the text decoder of a checkpoint.
    pub fn load(ckpt: &Checkpoint, progress: &mut dyn FnMut(usize, usize)) -> Result<TextModel> {
        let cfg = ckpt.config.text.clone();
        let weights = TextWeights::load(&ckpt.weights, &ckpt.text_prefix, &cfg, progress)?;
        Ok(TextModel::new(cfg, weights))
    }

    /// The model with its weights rearranged for the CPU's kernels (see
    /// [`gemma3n_compute::cpu::decode_layout`]): the matrices the decoder multiplies whole
    /// change layout where this CPU has a faster kernel for another one; the per-layer table
    /// and the `up` matrices of activation-sparse layers (read a row at a time in decode)
    /// keep theirs. Values are unchanged. For the CPU decoder only: the GPU upload reads
    /// the file layout.
    pub fn into_cpu_layout(mut self) -> TextModel {
        use gemma3n_compute::cpu::decode_layout;
        use gemma3n_compute::Matrix;
        fn re(m: &mut Matrix) {
            if let Some(n) = decode_layout(m) {
                // The file's copy is not read again: its mapped pages leave the resident set
                // (each tensor here has its own bytes).
                m.release_mapped_pages();
                *m = n;
            }
        }
        let w = &mut self.weights;
        re(&mut w.embed_tokens);
        re(&mut w.per_layer_model_projection);
        w.altup_projections.iter_mut().for_each(re);
        w.altup_unembed_projections.iter_mut().for_each(re);
        for l in &mut w.layers {
            re(&mut l.q_proj);
            l.k_proj.iter_mut().for_each(re);
            l.v_proj.iter_mut().for_each(re);
            re(&mut l.o_proj);
            re(&mut l.gate_proj);
            if l.down_proj_t.is_none() {
                re(&mut l.up_proj);
            }
            re(&mut l.down_proj);
            re(&mut l.laurel_left);
            re(&mut l.laurel_right);
            re(&mut l.altup.modality_router);
            re(&mut l.per_layer_input_gate);
            re(&mut l.per_layer_projection);
        }
        self
    }

    /// A new sequence running the whole model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.cfg, self.full.clone())
    }

    /// A new sequence running a MatFormer slice of the model (checked here).
    pub fn new_cache_for(&self, slice: &Slice) -> Result<KvCache> {
        Ok(self.new_cache_with_plan(Arc::new(SlicePlan::new(&self.cfg, slice)?)))
    }

    /// A new sequence running an already checked plan.
    pub fn new_cache_with_plan(&self, plan: Arc<SlicePlan>) -> KvCache {
        KvCache::new(&self.cfg, plan)
    }
}
