//! The KV cache: one entry per KV-owning layer (KV-shared layers read their producer's).
//!
//! Full-attention layers keep every position. Sliding layers keep the last `W − 1`
//! positions between steps; during a step they hold those plus the step's new tokens,
//! so every key a query may see (`t − W < s ≤ t`) is present (spec §5.2).

use crate::config::{KvSource, LayerType, TextConfig};

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

    /// Drops positions no future query can see.
    fn trim(&mut self) {
        if let Some(w) = self.window {
            let keep = w.saturating_sub(1);
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

/// The cache of one sequence.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    pos: usize,
}

impl KvCache {
    pub fn new(cfg: &TextConfig) -> KvCache {
        let row = cfg.num_key_value_heads * cfg.head_dim;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                (cfg.kv_source(l) == KvSource::Own).then(|| LayerKv {
                    row,
                    window: (cfg.layer_types[l] == LayerType::Sliding).then_some(cfg.sliding_window),
                    ..Default::default()
                })
            })
            .collect();
        KvCache { layers, pos: 0 }
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

    /// Bytes held by the cache (f32).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|l| (l.k.len() + l.v.len()) * 4).sum()
    }

    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        self.layers[layer]
            .as_mut()
            .expect("append to a layer without its own KV")
            .append(k, v);
    }

    pub(crate) fn layer(&self, layer: usize) -> &LayerKv {
        self.layers[layer].as_ref().expect("layer has no KV of its own")
    }

    /// Ends a forward step of `t` tokens.
    pub(crate) fn finish_step(&mut self, t: usize) {
        for l in self.layers.iter_mut().flatten() {
            l.trim();
        }
        self.pos += t;
    }
}
