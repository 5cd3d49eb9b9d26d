//! The KV cache: one entry per KV-owning layer (KV-shared layers read their producer's).
//!
//! Full-attention layers keep every position. Sliding layers need only the last `W − 1`
//! positions between steps (spec §5.2); they keep at least `2W − 1`, so that the cache can be
//! truncated back by up to `W` positions (multi-turn chat re-using a prefix), and drop the
//! older ones `W` at a time. During a step they also hold the step's new tokens, so every key
//! a query may see (`t − W < s ≤ t`) is present.

use std::sync::Arc;

use crate::config::{KvSource, LayerType, TextConfig};
use crate::matformer::SlicePlan;

/// Keys and values of one layer, one run per KV head (`head_dim` values per position, so a
/// head's keys are contiguous for attention to stream), the first at absolute position `start`.
#[derive(Clone, Debug, Default)]
pub struct LayerKv {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub start: usize,
    head_dim: usize,
    /// `Some(W)` for sliding layers.
    window: Option<usize>,
}

impl LayerKv {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.k.first().map_or(0, |k| k.len() / self.head_dim)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends rows of `kv_heads · head_dim` keys and values.
    fn append(&mut self, k: &[f32], v: &[f32]) {
        let (hd, g) = (self.head_dim, self.k.len());
        for (kr, vr) in k.chunks_exact(g * hd).zip(v.chunks_exact(g * hd)) {
            for h in 0..g {
                self.k[h].extend_from_slice(&kr[h * hd..(h + 1) * hd]);
                self.v[h].extend_from_slice(&vr[h * hd..(h + 1) * hd]);
            }
        }
    }

    /// Drops positions no future query (after a truncation of up to `W`) can see: down to
    /// `2W − 1` once `W` more have piled up (dropping one position per step would move the
    /// whole cache every step).
    fn trim(&mut self) {
        if let Some(w) = self.window {
            let keep = 2 * w - 1;
            let n = self.len();
            if n >= keep + w {
                let drop = (n - keep) * self.head_dim;
                for x in self.k.iter_mut().chain(&mut self.v) {
                    x.drain(..drop);
                }
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
        let g = cfg.num_key_value_heads;
        let mut layers: Vec<Option<LayerKv>> = vec![None; cfg.num_hidden_layers];
        for sl in &plan.layers {
            if sl.kv == KvSource::Own {
                layers[sl.layer] = Some(LayerKv {
                    k: vec![Vec::new(); g],
                    v: vec![Vec::new(); g],
                    head_dim: cfg.head_dim,
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
            l.k.iter_mut().chain(&mut l.v).for_each(Vec::clear);
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
            let keep = (n - l.start) * l.head_dim;
            l.k.iter_mut()
                .chain(&mut l.v)
                .for_each(|x| x.truncate(keep));
        }
        self.pos = n;
        true
    }

    /// Bytes held by the cache (f32).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flat_map(|l| l.k.iter().chain(&l.v))
            .map(|x| x.len() * 4)
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
