//! The KV cache: one entry per KV-owning layer (KV-shared layers read their producer's).
//!
//! Full-attention layers keep every position. Sliding layers need only the last `W − 1`
//! positions between steps (spec §5.2); they keep `2W − 1`, so that the cache can be
//! truncated back by up to `W` positions (multi-turn chat re-using a prefix). During a
//! step they also hold the step's new tokens, so every key a query may see
//! (`t − W < s ≤ t`) is present.

use std::sync::Arc;

use crate::config::{KvSource, LayerType, TextConfig};
use crate::matformer::SlicePlan;

/// Keys and values of one layer: rows of `kv_heads · head_dim` values, the first row
/// at absolute position `start`.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub start: usize,
    row: usize,
    /// `Some(W)` for sliding layers.
    window: Option<usize>,
}

impl LayerKv {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.k.len() / self.row
    }

    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    fn append(&mut self, k: &[f32], v: &[f32]) {
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
    }

    /// Drops positions no future query (after a truncation of up to `W`) can see.
    fn trim(&mut self) {
        if let Some(w) = self.window {
            let keep = 2 * w - 1;
            let n = self.len();
            if n > keep {
                let drop = (n - keep) * self.row;
                self.k.drain(..drop);
                self.v.drain(..drop);
                self.start += n - keep;
            }
        }
    }
}

/// The cache of one sequence, which runs one MatFormer slice (the whole model by
/// default): entries are indexed by stored layer, present for the slice's KV-owning layers.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    pos: usize,
    plan: Arc<SlicePlan>,
}

impl KvCache {
    /// A cache for `plan` (a slice of the model of `cfg`).
    pub fn new(cfg: &TextConfig, plan: Arc<SlicePlan>) -> KvCache {
        let row = cfg.num_key_value_heads * cfg.head_dim;
        let mut layers: Vec<Option<LayerKv>> = vec![None; cfg.num_hidden_layers];
        for sl in &plan.layers {
            if sl.kv == KvSource::Own {
                layers[sl.layer] = Some(LayerKv {
                    row,
                    window: (sl.kind == LayerType::Sliding).then_some(cfg.sliding_window),
                    ..Default::default()
                });
            }
        }
        KvCache {
            layers,
            pos: 0,
            plan,
        }
    }

    /// The slice this sequence runs.
    pub fn plan(&self) -> &Arc<SlicePlan> {
        &self.plan
    }

    /// Tokens seen so far (the position of the next token).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        for l in self.layers.iter_mut().flatten() {
            l.k.clear();
            l.v.clear();
            l.start = 0;
        }
        self.pos = 0;
    }

    /// Keeps only the first `n` positions, so the next token goes to position `n`.
    /// Returns false (and changes nothing) when a sliding layer has already dropped
    /// keys that position `n` would need; the caller then starts over.
    pub fn truncate(&mut self, n: usize) -> bool {
        if n >= self.pos {
            return n == self.pos;
        }
        let feasible = self.layers.iter().flatten().all(|l| match l.window {
            Some(w) => l.start <= (n + 1).saturating_sub(w),
            None => true,
        });
        if !feasible {
            return false;
        }
        for l in self.layers.iter_mut().flatten() {
            let keep = (n - l.start) * l.row;
            l.k.truncate(keep);
            l.v.truncate(keep);
        }
        self.pos = n;
        true
    }

    /// Bytes held by the cache (f32).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.len() + l.v.len()) * 4)
            .sum()
    }

    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.layers[layer]
            .as_mut()
            .expect("append to a layer without its own KV")
            .append(k, v);
    }

    pub(crate) fn layer(&self, layer: usize) -> &LayerKv {
        self.layers[layer]
            .as_ref()
            .expect("layer has no KV of its own")
    }

    /// Ends a forward step of `t` tokens.
    pub(crate) fn finish_step(&mut self, t: usize) {
        for l in self.layers.iter_mut().flatten() {
            l.trim();
        }
        self.pos += t;
    }
}
