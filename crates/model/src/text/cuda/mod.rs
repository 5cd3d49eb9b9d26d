//! The text decoder on a CUDA GPU (feature `cuda`): the same forward pass as the CPU
//! decoder (`text/decoder.rs`), layer by layer, on the op set of
//! `gemma3n_compute::cuda`. Weights are bf16 on the device (activations, norms, router,
//! softmax and RoPE in f32); the per-layer embedding table stays in host memory.
//!
//! Files: `weights` (upload), `kv_cache` (the device KV cache), `workspace` (activation
//! buffers sized once per batch shape), `decoder` (the layer loop), `kernel_check` (the
//! product kernels against the host on random data, for `gemma3n parity`).

mod decoder;
mod gemv_speed;
mod kernel_check;
mod kv_cache;
mod weights;
mod workspace;

pub use gemv_speed::{ChainSpeed, GemvSpeed};
pub use kernel_check::{check_kernels, top_k_naive, KernelCheck};
pub use kv_cache::CudaKvCache;

use std::sync::{Arc, Mutex};

use gemma3n_compute::cuda::{CudaError, DeviceBuffer, Gpu};

use crate::error::{ModelError, Result};
use crate::matformer::{Slice, SlicePlan};
use crate::text::TextModel;
use weights::DevWeights;
use workspace::Workspace;

pub(crate) fn gpu_err(e: CudaError) -> ModelError {
    ModelError::Invalid(e.to_string())
}

/// The CPU decoder with the weights the GPU holds: Q8_0 and Q4_K matrices dequantized
/// (the GPU reads their exact values), every other matrix rounded to bf16 as the upload
/// does (the AltUp router, kept in f32 on the device, too; the per-layer table stays as it
/// is). Against this, the two backends differ only in how they compute.
pub fn with_device_weights(model: &TextModel) -> TextModel {
    use gemma3n_compute::{cuda::WeightFormat, DType};
    let mut w = model.weights.map_matrices(false, &|m| {
        if m.dtype() == DType::BF16 {
            m.clone()
        } else if weights::device_format(m) != WeightFormat::Bf16 {
            m.quantize(DType::F32)
        } else {
            m.quantize(DType::BF16)
        }
    });
    // Layers with activation sparsity keep `down` transposed on the GPU, in bf16 for every
    // format (weights.rs): the CPU's `down` of those layers holds the same values.
    for (l, src) in w.layers.iter_mut().zip(&model.weights.layers) {
        if src.down_proj_t.is_some() && src.down_proj.dtype() != DType::BF16 {
            l.down_proj = src.down_proj.quantize(DType::BF16);
        }
    }
    TextModel::new(model.cfg.clone(), w)
}

/// bf16 parts of prefill GEMM activations by default (see
/// [`CudaTextModel::set_activation_parts`]).
pub const DEFAULT_ACTIVATION_PARTS: usize = 3;

/// A text decoder with its weights on a GPU. It keeps the CPU model for the configuration
/// and the per-layer embedding table (read in host memory).
pub struct CudaTextModel {
    pub cpu: Arc<TextModel>,
    gpu: Arc<Gpu>,
    w: DevWeights,
    /// RoPE inverse frequencies, `[L, head_dim / 2]`.
    inv_freq: DeviceBuffer,
    ws: Mutex<Option<Workspace>>,
    /// bf16 parts the activations of prefill GEMMs are split into (1 to 3).
    activation_parts: std::sync::atomic::AtomicUsize,
    /// Bytes per per-layer table value sent to the device: 2 for a bf16 table (rows copied
    /// as they are), else 4 (rows converted to f32 on the host).
    ple_elt: usize,
    /// Device bytes the upload took (every weight, vectors included).
    weight_bytes: usize,
    /// Switches read from the environment once, at load.
    settings: Settings,
}

/// Run-time switches of the GPU decoder, from the environment (for comparisons and tests).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Replay single-token steps as CUDA graphs (`GEMMA3N_CUDA_GRAPHS=0`: off; off while
    /// profiling).
    pub graphs: bool,
    /// Prefill attention as GEMMs (`GEMMA3N_CUDA_GEMM_ATTENTION=0`: the per-row kernel).
    pub gemm_attention: bool,
    /// Rows a prefill runs at once (`GEMMA3N_CUDA_PREFILL_CHUNK`, default 512;
    /// [`CudaTextModel::set_prefill_rows`]).
    pub prefill_chunk: usize,
    /// Prefills of at least this many rows with bf16 activations run their attention on
    /// the flash kernel (`GEMMA3N_CUDA_FLASH`: the rows, or 0 for never).
    pub flash_rows: usize,
    /// The flash kernel splits long rows' keys over several blocks
    /// (`GEMMA3N_CUDA_FLASH_SPLIT=0`: off).
    pub flash_split: bool,
    /// In a prefill, the kernels that make a GEMM's activations also write its bf16 parts
    /// (`GEMMA3N_CUDA_FUSED_SPLIT=0`: a split kernel before each GEMM instead).
    pub fused_split: bool,
    /// With one activation part, the gate and up GEMMs of a prefill write bf16
    /// (`GEMMA3N_CUDA_BF16_GATE_UP=0`: f32).
    pub bf16_gate_up: bool,
    /// A prefill's q, k, v and LAuReL-left products run as one GEMM over their stacked
    /// matrices where they are stacked (`GEMMA3N_CUDA_STACKED_QKV=0`: four GEMMs).
    pub stacked_qkv: bool,
    /// A single sequence's decode step runs every layer in one persistent launch where the
    /// weights allow (`GEMMA3N_CUDA_PERSISTENT=1`; off by default until measured).
    pub persistent: bool,
    /// A single sequence's sparse layers run the cut-off and the up product as one kernel on
    /// the kept units (`GEMMA3N_CUDA_SPARSE_UP=0`: the cut-off, then a masked product).
    pub sparse_up: bool,
}

impl Settings {
    fn from_env(gpu: &Gpu) -> Settings {
        let off = |name: &str| std::env::var_os(name).is_some_and(|v| v == "0");
        Settings {
            graphs: !off("GEMMA3N_CUDA_GRAPHS") && !gpu.profiling(),
            gemm_attention: !off("GEMMA3N_CUDA_GEMM_ATTENTION"),
            prefill_chunk: std::env::var("GEMMA3N_CUDA_PREFILL_CHUNK")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&c: &usize| c > 0)
                .unwrap_or(decoder::PREFILL_CHUNK),
            flash_rows: match std::env::var("GEMMA3N_CUDA_FLASH").ok().map(|v| v.parse()) {
                Some(Ok(0)) => usize::MAX,
                Some(Ok(rows)) => rows,
                _ => decoder::FLASH_ROWS,
            },
            flash_split: !off("GEMMA3N_CUDA_FLASH_SPLIT"),
            fused_split: !off("GEMMA3N_CUDA_FUSED_SPLIT"),
            bf16_gate_up: !off("GEMMA3N_CUDA_BF16_GATE_UP"),
            stacked_qkv: !off("GEMMA3N_CUDA_STACKED_QKV"),
            persistent: std::env::var_os("GEMMA3N_CUDA_PERSISTENT").is_some_and(|v| v == "1"),
            sparse_up: !off("GEMMA3N_CUDA_SPARSE_UP"),
        }
    }
}

/// Where the model's bytes live.
#[derive(Clone, Copy, Debug)]
pub struct MemoryReport {
    /// Weights on the device.
    pub device_weight_bytes: usize,
    /// The per-layer embedding table, in host memory.
    pub host_bytes: usize,
}

impl CudaTextModel {
    /// Uploads `model` to `gpu` (every weight but the per-layer table).
    pub fn new(
        model: Arc<TextModel>,
        gpu: Arc<Gpu>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<CudaTextModel> {
        let cfg = &model.cfg;
        if cfg.altup_num_inputs != 4 {
            return Err(ModelError::Invalid(format!(
                "the CUDA backend supports 4 AltUp streams (config has {})",
                cfg.altup_num_inputs
            )));
        }
        if cfg.hidden_size > gemma3n_compute::cuda::MAX_ROW {
            return Err(ModelError::Invalid(format!(
                "the CUDA backend supports hidden_size up to {} (config has {})",
                gemma3n_compute::cuda::MAX_ROW,
                cfg.hidden_size
            )));
        }
        if cfg.intermediate_size.iter().any(|&f| f > 16384) {
            return Err(ModelError::Invalid(
                "the CUDA backend supports FFN widths up to 16384".into(),
            ));
        }
        if cfg.head_dim > 256 || !cfg.head_dim.is_multiple_of(2) {
            return Err(ModelError::Invalid(format!(
                "the CUDA backend supports even head_dim up to 256 (config has {})",
                cfg.head_dim
            )));
        }
        let before = gpu.allocated_bytes();
        let w = DevWeights::upload(&gpu, &model.weights, progress)?;
        let weight_bytes = gpu.allocated_bytes() - before;
        let half = cfg.head_dim / 2;
        let mut freqs = Vec::with_capacity(cfg.num_hidden_layers * half);
        for l in 0..cfg.num_hidden_layers {
            freqs.extend_from_slice(&model.inv_freq[l]);
        }
        let inv_freq = gpu.upload(&freqs).map_err(gpu_err)?;
        let table = &model.weights.embed_tokens_per_layer;
        let ple_elt = if table.dtype() == gemma3n_compute::DType::BF16
            && table.row_stride_bytes() == table.cols() * 2
        {
            2
        } else {
            4
        };
        let settings = Settings::from_env(&gpu);
        Ok(CudaTextModel {
            cpu: model,
            gpu,
            w,
            inv_freq,
            ws: Mutex::new(None),
            activation_parts: std::sync::atomic::AtomicUsize::new(DEFAULT_ACTIVATION_PARTS),
            ple_elt,
            weight_bytes,
            settings,
        })
    }

    /// How prefill GEMMs (tensor cores, bf16 inputs) see their f32 activations: split into
    /// `parts` bf16 parts whose products are summed. 3 (the default) keeps about 24 bits,
    /// near-f32 results, for three times the tensor-core work; 2 keeps about 16 bits; 1 is
    /// one bf16 rounding, as other GPU engines do (fastest; larger differences from the f32
    /// reference). Clamped to 1..=3.
    pub fn set_activation_parts(&self, parts: usize) {
        self.activation_parts
            .store(parts.clamp(1, 3), std::sync::atomic::Ordering::Relaxed);
    }

    /// The most rows one prefill pass takes (at least 1); longer prompts go in pieces. The
    /// activation workspace is sized for the largest pass run so far.
    pub fn set_prefill_rows(&mut self, rows: usize) {
        self.settings.prefill_chunk = rows.max(1);
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Device bytes of the weights and host bytes of the per-layer table.
    pub fn memory(&self) -> MemoryReport {
        let ple = &self.cpu.weights.embed_tokens_per_layer;
        MemoryReport {
            device_weight_bytes: self.weight_bytes,
            host_bytes: ple.nbytes(),
        }
    }

    /// Device bytes of the activation workspace (sized by the largest forward so far).
    pub fn workspace_bytes(&self) -> usize {
        let ws = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        ws.as_ref().map_or(0, |w| w.bytes())
    }

    /// A new sequence running the whole model, with room for `capacity` positions to
    /// start with (it grows as needed).
    pub fn new_cache(&self, capacity: usize) -> Result<CudaKvCache> {
        self.new_cache_with_plan(Arc::new(SlicePlan::full(&self.cpu.cfg)), capacity)
    }

    /// A new sequence running a MatFormer slice.
    pub fn new_cache_for(&self, slice: &Slice, capacity: usize) -> Result<CudaKvCache> {
        self.new_cache_with_plan(Arc::new(SlicePlan::new(&self.cpu.cfg, slice)?), capacity)
    }

    pub fn new_cache_with_plan(
        &self,
        plan: Arc<SlicePlan>,
        capacity: usize,
    ) -> Result<CudaKvCache> {
        CudaKvCache::new(&self.gpu, &self.cpu.cfg, plan, capacity)
    }
}
