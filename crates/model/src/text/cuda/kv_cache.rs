//! The KV cache of one sequence on the GPU: for each KV-owning layer of the sequence's
//! slice, keys and values (f32 rows of `kv_heads · head_dim`) at their absolute positions.
//! It grows by doubling (a copy, outside the decode step) when a step needs more room.

use std::sync::Arc;

use gemma3n_compute::cuda::{DevPtr, DeviceBuffer, Gpu};

use super::gpu_err;
use crate::config::{KvSource, TextConfig};
use crate::error::{ModelError, Result};
use crate::matformer::SlicePlan;

pub struct CudaKvCache {
    gpu: Arc<Gpu>,
    plan: Arc<SlicePlan>,
    layers: Vec<Option<(DeviceBuffer, DeviceBuffer)>>,
    row: usize,
    capacity: usize,
    max: usize,
    pos: usize,
    /// Bumped whenever the buffers move (a captured decode step must then be re-recorded).
    pub(crate) generation: u64,
    /// The captured decode step of this sequence, with the (workspace id, generation,
    /// attention splits) it was recorded for.
    pub(crate) graph: Option<((u64, u64, usize), gemma3n_compute::cuda::Graph)>,
    /// The persistent decode kernel's layer table for this sequence, with the (workspace
    /// id, generation) it was built for (its pointers reach into both); `None` inside: the
    /// kernel cannot run this slice.
    pub(crate) layer_table: Option<((u64, u64), Option<DeviceBuffer>)>,
}

impl CudaKvCache {
    /// An empty cache for `plan`, with room for `capacity` positions to start with.
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &TextConfig,
        plan: Arc<SlicePlan>,
        capacity: usize,
    ) -> Result<CudaKvCache> {
        let row = cfg.num_key_value_heads * cfg.head_dim;
        let capacity = capacity.clamp(1, cfg.max_position_embeddings);
        let mut c = CudaKvCache {
            gpu: gpu.clone(),
            layers: (0..cfg.num_hidden_layers).map(|_| None).collect(),
            plan,
            row,
            capacity: 0,
            max: cfg.max_position_embeddings,
            pos: 0,
            generation: 0,
            graph: None,
            layer_table: None,
        };
        c.grow_to(capacity)?;
        Ok(c)
    }

    /// Whether this sequence's last single-row step ran its layers in one persistent launch
    /// (`GEMMA3N_CUDA_PERSISTENT=1` and a model the kernel takes).
    pub fn persistent_step(&self) -> bool {
        self.layer_table.as_ref().is_some_and(|(_, t)| t.is_some())
    }

    pub fn plan(&self) -> &Arc<SlicePlan> {
        &self.plan
    }

    /// Tokens held (the position of the next token).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets everything (the buffers stay).
    pub fn clear(&mut self) {
        self.pos = 0;
    }

    /// Keeps the first `n` positions (every position is kept, so this always works).
    pub fn truncate(&mut self, n: usize) -> bool {
        if n <= self.pos {
            self.pos = n;
        }
        n == self.pos
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| k.bytes() + v.bytes())
            .sum()
    }

    /// Makes room for `total` positions.
    pub(crate) fn reserve(&mut self, total: usize) -> Result<()> {
        if total > self.max {
            return Err(ModelError::Invalid(format!(
                "sequence of {total} tokens exceeds the context length (max_position_embeddings = {})",
                self.max
            )));
        }
        if total > self.capacity {
            self.grow_to(total.max(2 * self.capacity).min(self.max))?;
        }
        Ok(())
    }

    fn grow_to(&mut self, capacity: usize) -> Result<()> {
        let bytes = capacity * self.row * 4;
        let keep = self.pos * self.row * 4;
        for sl in &self.plan.layers {
            if sl.kv != KvSource::Own {
                continue;
            }
            let k = self.gpu.alloc(bytes).map_err(gpu_err)?;
            let v = self.gpu.alloc(bytes).map_err(gpu_err)?;
            if let Some((ok, ov)) = &self.layers[sl.layer] {
                self.gpu.copy(ok.ptr(), k.ptr(), keep).map_err(gpu_err)?;
                self.gpu.copy(ov.ptr(), v.ptr(), keep).map_err(gpu_err)?;
            }
            self.layers[sl.layer] = Some((k, v));
        }
        self.gpu.sync().map_err(gpu_err)?;
        self.capacity = capacity;
        self.generation += 1;
        Ok(())
    }

    /// Keys and values of stored layer `layer` (a KV-owning layer of the slice).
    pub(crate) fn layer(&self, layer: usize) -> (DevPtr, DevPtr) {
        let (k, v) = self.layers[layer]
            .as_ref()
            .expect("layer has no KV of its own");
        (k.ptr(), v.ptr())
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.pos += n;
    }
}
