//! Activation buffers of the GPU decoder, sized once for a number of rows (tokens per
//! forward pass) and reused: nothing is allocated in the decode loop.

use std::sync::Arc;

use std::sync::atomic::{AtomicU64, Ordering};

use gemma3n_compute::cuda::{DevPtr, DeviceBuffer, Gpu, Graph, PinnedBuffer};

use super::decoder::GEMV_ROWS;
use super::gpu_err;
use crate::config::TextConfig;
use crate::error::Result;
use crate::matformer::SlicePlan;

/// Most captured batched steps a workspace keeps (the oldest goes first beyond): one per
/// (rows, key splits, slice) seen, at most 15 x 6 per slice.
const MAX_BATCH_GRAPHS: usize = 64;

/// A batched decode step captured as a graph: `rows` sequences with `splits` key splits of
/// attention on slice `plan`. Everything a step changes (token ids, positions, per-layer
/// rows, the table of each row's key/value pointers) lives in the workspace's device
/// buffers, so one capture serves every later step of that shape.
pub struct BatchGraph {
    pub rows: usize,
    pub splits: usize,
    /// Held so that its address, the key, cannot be reused by another plan.
    pub plan: Arc<SlicePlan>,
    pub graph: Graph,
}

/// Most key splits of attention (one block per row, head and split).
pub const DECODE_SPLITS: usize = 32;
/// Attention splits keys only while rows x heads is below this (beyond, the rows alone
/// give enough blocks): so the split partials never exceed this many (row, head) pairs.
pub const SPLIT_PAIRS: usize = 256;

/// Byte offset of the chosen id in `Workspace::pick`, after the scratch of `Gpu::argmax`.
pub const PICK_ID: usize = 8 * (Gpu::ARGMAX_BLOCKS + 1);

/// Bytes of `Gpu::top_k`'s result: count, overflow flag, then (value, index) pairs.
pub const TOPK_BYTES: usize = 4 * (2 + 2 * Gpu::TOPK_OUT);

/// Identifies a workspace (a captured decode step is tied to its buffers).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Values of each bf16 weight part of a quantized GEMM (32 MB): matrices go in pieces of
/// rows of this size.
pub const WPART_VALUES: usize = 16 << 20;

pub struct Workspace {
    pub id: u64,
    /// Rows the buffers hold.
    pub cap: usize,
    /// Stride between AltUp streams (`cap · D` floats).
    pub ss: usize,
    /// Width of a q/k/v/LAuReL-left row: `H·hd + 2·G·hd + r`.
    pub qw: usize,
    /// Largest FFN width.
    pub fmax: usize,
    /// The step's inputs, packed: ids (u32), positions (i32), multimodal flags (i32), each
    /// `cap` long, then the per-layer table rows (`cap · L·P`, f32 or bf16).
    pub inputs: DeviceBuffer,
    /// Their page-locked host copy (one asynchronous upload per step).
    pub stage: PinnedBuffer,
    /// Bytes per per-layer table value in `inputs` (2: a bf16 table copied raw; 4: f32).
    pub ple_elt: usize,
    pub over: DeviceBuffer,
    pub plp: DeviceBuffer,
    pub pi: DeviceBuffer,
    pub s: DeviceBuffer,
    pub pred: DeviceBuffer,
    /// AltUp's prediction coefficients of each row (`cap x A·A`), from `altup_predict` to
    /// `post_ffn_correct`.
    pub rc: DeviceBuffer,
    pub x: DeviceBuffer,
    pub qkv: DeviceBuffer,
    pub q: DeviceBuffer,
    pub att: DeviceBuffer,
    /// Partial results of split-key attention (`SPLIT_PAIRS` (row, head) pairs at most).
    pub part: DeviceBuffer,
    /// Scratch of the sparse down product (`Gpu::sparse_t`): partial sums, counters.
    pub sparse: (DeviceBuffer, DeviceBuffer),
    /// Finished-split counters of decode attention (`cap · H`, kept zeroed).
    pub done: DeviceBuffer,
    /// The persistent decode kernel's barrier counters (64 bytes, kept zeroed), then its
    /// copy of the AltUp prediction of stream 0 (`D` floats).
    pub pk: DeviceBuffer,
    /// Where the persistent decode kernel records its barriers (`GEMMA3N_CUDA_PK_TRACE=1`;
    /// `bench --device cuda` prints the summary).
    pub pk_trace: Option<DeviceBuffer>,
    pub o: DeviceBuffer,
    pub lr: DeviceBuffer,
    pub h: DeviceBuffer,
    pub y: DeviceBuffer,
    /// Gate at column 0, up at column `fmax` of each `2·fmax` row.
    pub gu: DeviceBuffer,
    pub act: DeviceBuffer,
    pub fo: DeviceBuffer,
    pub v: DeviceBuffer,
    pub pg: DeviceBuffer,
    pub pq: DeviceBuffer,
    pub ys: DeviceBuffer,
    pub hf: DeviceBuffer,
    /// The bf16 parts of a GEMM's activations (see `Gpu::gemm`).
    pub xparts: [DeviceBuffer; 3],
    /// A batched decode step's per-layer table of each row's (keys, values) pointers
    /// (`L x cap` u64 pairs).
    pub kv_rows: DeviceBuffer,
    /// Quantized weights of a GEMM written to bf16, up to three parts of `WPART_VALUES`
    /// values each (only with quantized weights and more rows than the GEMV takes).
    pub wparts: Vec<DeviceBuffer>,
    /// Attention scores of a prefill (`H x rows x keys`), sized per prefill; `None` for
    /// steps that use the per-row attention kernel.
    pub scores: Option<DeviceBuffer>,
    /// Logits of `logit_rows` rows, and their page-locked host copy.
    pub logits: DeviceBuffer,
    pub logits_host: PinnedBuffer,
    pub logit_rows: usize,
    /// Greedy decoding on the device: the scratch of `Gpu::argmax`, then the chosen id
    /// (an i32), and its page-locked host copy.
    pub pick: DeviceBuffer,
    pub pick_host: PinnedBuffer,
    /// Sampling on the device: the scratch of `Gpu::top_k`, its candidates and their
    /// page-locked host copy.
    pub topk_scratch: DeviceBuffer,
    pub topk: DeviceBuffer,
    pub topk_host: PinnedBuffer,
    /// Captured batched steps on these buffers (dropped with them).
    pub batch_graphs: Vec<BatchGraph>,
}

impl Workspace {
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &TextConfig,
        cap: usize,
        logit_rows: usize,
        ple_elt: usize,
        quantized: bool,
    ) -> Result<Workspace> {
        let d = cfg.hidden_size;
        let lp = cfg.num_hidden_layers * cfg.hidden_size_per_layer_input;
        let p = cfg.hidden_size_per_layer_input;
        let (h, g, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let a = cfg.altup_num_inputs;
        let qw = h * hd + 2 * g * hd + cfg.laurel_rank;
        let fmax = cfg.intermediate_size.iter().copied().max().unwrap_or(0);
        let kmax = [d, fmax, h * hd, p, lp, cfg.laurel_rank]
            .into_iter()
            .max()
            .unwrap_or(d);
        let f = |n: usize| gpu.alloc(4 * n).map_err(gpu_err);
        let input_bytes = 12 * cap + ple_elt * cap * lp;
        Ok(Workspace {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            cap,
            ss: cap * d,
            qw,
            fmax,
            inputs: gpu.alloc(input_bytes).map_err(gpu_err)?,
            stage: gpu.alloc_pinned(input_bytes).map_err(gpu_err)?,
            ple_elt,
            over: f(cap * d)?,
            plp: f(cap * lp)?,
            pi: f(cap * lp)?,
            s: f(a * cap * d)?,
            pred: f(a * cap * d)?,
            rc: f(cap * a * a)?,
            x: f(cap * d)?,
            qkv: f(cap * qw)?,
            q: f(cap * h * hd)?,
            att: f(cap * h * hd)?,
            part: f((cap * h).min(SPLIT_PAIRS) * DECODE_SPLITS * (hd + 2))?,
            done: f(cap * h)?,
            pk: f(16 + d)?,
            pk_trace: match std::env::var_os("GEMMA3N_CUDA_PK_TRACE") {
                Some(v) if v != "0" => Some(gpu.alloc(gpu.pk_trace_bytes()).map_err(gpu_err)?),
                _ => None,
            },
            sparse: {
                let (p, c) = Gpu::sparse_t_scratch_bytes(fmax, d, cap.min(GEMV_ROWS));
                (
                    gpu.alloc(p).map_err(gpu_err)?,
                    gpu.alloc(c).map_err(gpu_err)?,
                )
            },
            o: f(cap * d)?,
            lr: f(cap * d)?,
            h: f(cap * d)?,
            y: f(cap * d)?,
            gu: f(cap * 2 * fmax)?,
            act: f(cap * fmax)?,
            fo: f(cap * d)?,
            v: f(cap * d)?,
            pg: f(cap * p)?,
            pq: f(cap * d)?,
            ys: f((a - 1) * cap * d)?,
            hf: f(cap * d)?,
            xparts: [
                gpu.alloc(2 * cap * kmax).map_err(gpu_err)?,
                gpu.alloc(2 * cap * kmax).map_err(gpu_err)?,
                gpu.alloc(2 * cap * kmax).map_err(gpu_err)?,
            ],
            kv_rows: gpu
                .alloc(16 * cfg.num_hidden_layers * cap)
                .map_err(gpu_err)?,
            wparts: if quantized && cap > GEMV_ROWS {
                (0..3)
                    .map(|_| gpu.alloc(2 * WPART_VALUES).map_err(gpu_err))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            logits: f(logit_rows * cfg.vocab_size)?,
            logits_host: gpu
                .alloc_pinned(4 * logit_rows * cfg.vocab_size)
                .map_err(gpu_err)?,
            logit_rows,
            pick: gpu.alloc(PICK_ID + 8).map_err(gpu_err)?,
            pick_host: gpu.alloc_pinned(8).map_err(gpu_err)?,
            topk_scratch: gpu
                .alloc(Gpu::top_k_scratch_bytes(cfg.vocab_size))
                .map_err(gpu_err)?,
            topk: gpu.alloc(TOPK_BYTES).map_err(gpu_err)?,
            topk_host: gpu.alloc_pinned(TOPK_BYTES).map_err(gpu_err)?,
            scores: None,
            batch_graphs: Vec::new(),
        })
    }

    /// The captured batched step of this shape, recording it with `capture` first if needed.
    pub fn batch_graph(
        &mut self,
        rows: usize,
        splits: usize,
        plan: &Arc<SlicePlan>,
        capture: impl FnOnce(&Workspace) -> Result<Graph>,
    ) -> Result<&Graph> {
        let same =
            |g: &BatchGraph| g.rows == rows && g.splits == splits && Arc::ptr_eq(&g.plan, plan);
        let i = match self.batch_graphs.iter().position(same) {
            Some(i) => i,
            None => {
                let graph = capture(self)?;
                if self.batch_graphs.len() == MAX_BATCH_GRAPHS {
                    self.batch_graphs.remove(0);
                }
                self.batch_graphs.push(BatchGraph {
                    rows,
                    splits,
                    plan: plan.clone(),
                    graph,
                });
                self.batch_graphs.len() - 1
            }
        };
        Ok(&self.batch_graphs[i].graph)
    }

    /// The quantized GEMMs' weight scratch buffers (`wparts`), as pointers.
    pub fn wpart_ptrs(&self) -> Vec<DevPtr> {
        self.wparts.iter().map(|b| b.ptr()).collect()
    }

    pub fn ids(&self) -> DevPtr {
        self.inputs.ptr()
    }

    pub fn pos(&self) -> DevPtr {
        self.inputs.f32_at(self.cap)
    }

    pub fn flag(&self) -> DevPtr {
        self.inputs.f32_at(2 * self.cap)
    }

    pub fn ple_rows(&self) -> DevPtr {
        self.inputs.f32_at(3 * self.cap)
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        [
            &self.inputs,
            &self.done,
            &self.over,
            &self.plp,
            &self.pi,
            &self.s,
            &self.pred,
            &self.rc,
            &self.x,
            &self.qkv,
            &self.q,
            &self.att,
            &self.part,
            &self.o,
            &self.lr,
            &self.h,
            &self.y,
            &self.gu,
            &self.act,
            &self.fo,
            &self.v,
            &self.pg,
            &self.pq,
            &self.ys,
            &self.hf,
            &self.xparts[0],
            &self.xparts[1],
            &self.xparts[2],
            &self.logits,
            &self.kv_rows,
        ]
        .into_iter()
        .chain(&self.wparts)
        .chain(&self.scores)
        .map(|b| b.bytes())
        .sum()
    }
}
