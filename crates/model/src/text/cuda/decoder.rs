//! The forward pass on the GPU: the layer loop of `text/decoder.rs` on device buffers.
//!
//! Up to 8 rows, matrix products are the decode GEMV kernel (several products that share
//! an input in one launch, with fused epilogues); beyond, cuBLAS GEMMs on the activations
//! split into bf16 parts, and from 32 rows attention as two f32 GEMMs per KV head. Prompts
//! over 512 tokens go in pieces. A single-token step of a sequence, and a batched step of
//! 2 to 16 sequences, is captured as a CUDA graph and replayed.

use gemma3n_compute::cuda::{
    DecodeLayer, DecodeStep, DevPtr, Epilogue, GemvSeg, Gpu, Graph, KvPtrs, WeightFormat,
};
use rayon::prelude::*;

use super::kv_cache::CudaKvCache;
use super::weights::{DevMatrix, Down};
use super::workspace::{Workspace, DECODE_SPLITS, PICK_ID, SPLIT_PAIRS, TOPK_BYTES, WPART_VALUES};
use super::{gpu_err, CudaTextModel};
use crate::config::{KvSource, LayerType};
use crate::error::{ModelError, Result};
use crate::matformer::SlicePlan;
use crate::text::{EmbedFn, Logits, StreamHook, TopScores};

/// Rows up to which products run on the GEMV kernel.
pub(super) const GEMV_ROWS: usize = 16;
/// Rows a prefill runs at once (`--prefill-rows` or `GEMMA3N_CUDA_PREFILL_CHUNK` override):
/// longer prompts go in pieces of this size, which bounds the activation workspace (E4B:
/// about 0.4 GB).
pub(super) const PREFILL_CHUNK: usize = 512;

/// Rows from which a prefill's attention runs as two GEMMs per KV head.
const GEMM_ATTENTION_ROWS: usize = 32;
/// Rows from which a prefill with bf16 activations runs attention on the flash kernel
/// (`GEMMA3N_CUDA_FLASH` overrides). Below, its grid is too small: 512-row pieces of a
/// 2048-token E4B prompt took 48.4 ms with it against 45.5 ms with the GEMMs (H200).
pub(super) const FLASH_ROWS: usize = 1024;
/// Largest score buffer (heads x rows x keys, f32) of GEMM attention; longer prefills over
/// long caches use the per-row kernel.
const MAX_SCORE_BYTES: usize = 1 << 30;

/// Rows up to which sparse layers read only the active rows of `up` and `downᵀ`.
const SPARSE_ROWS: usize = 4;

/// The logits out of the page-locked buffer, copied in parallel (16 rows of 262144 logits
/// are 16 MB) into memory that is not zeroed first.
fn copy_rows(src: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    out.par_extend(src.par_iter().copied());
    out
}

/// A product `y = x · Wᵀ` over the first `rows` rows and `k` columns of `w`.
pub(super) fn seg(
    w: &DevMatrix,
    rows: usize,
    k: usize,
    x: DevPtr,
    ldx: usize,
    y: DevPtr,
    ldy: usize,
) -> GemvSeg {
    GemvSeg {
        w: w.wp(),
        x,
        y,
        mask: DevPtr::NULL,
        rows,
        k,
        ldw: w.cols,
        ldx,
        ldy,
        ldm: 0,
        epi: Epilogue::Plain,
    }
}

/// Key splits of attention for `rows` query rows of `heads` heads over up to `keys` keys:
/// enough blocks to spread a long context over the GPU (a power of two, so a captured
/// decode step is re-recorded only a few times as the context grows), one when the rows
/// alone give enough blocks.
fn attention_splits(rows: usize, heads: usize, keys: usize) -> usize {
    if rows * heads >= SPLIT_PAIRS {
        return 1;
    }
    // About 4 keys per warp (8 warps per split, 32 keys) up to 1024 keys: one step of
    // attention.cu's loop, loaded before the wait.
    keys.div_ceil(32).next_power_of_two().min(DECODE_SPLITS)
}

/// Where the rows of a forward pass keep their keys and values.
enum Caches<'a> {
    /// Every row is a position of this sequence.
    One(&'a CudaKvCache),
    /// Each row is the next token of its own sequence (a batched decode step): for each
    /// stored layer, `table` holds the rows' (keys, values) pointers (`rows` u64 pairs per
    /// layer, in the workspace).
    Rows {
        plan: &'a std::sync::Arc<SlicePlan>,
        table: DevPtr,
        rows: usize,
    },
}

impl Caches<'_> {
    fn plan(&self) -> &std::sync::Arc<SlicePlan> {
        match self {
            Caches::One(c) => c.plan(),
            Caches::Rows { plan, .. } => plan,
        }
    }

    /// The keys and values of stored layer `layer` (one that owns them).
    fn layer(&self, layer: usize) -> KvPtrs {
        match self {
            Caches::One(c) => {
                let (k, v) = c.layer(layer);
                KvPtrs {
                    k,
                    v,
                    rows: DevPtr::NULL,
                }
            }
            // u64 pairs: 4 floats' worth of bytes per row.
            Caches::Rows { table, rows, .. } => KvPtrs {
                rows: table.add_f32(4 * layer * rows),
                ..KvPtrs::default()
            },
        }
    }
}

/// What a forward pass copies back from the device.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    Logits,
    /// The index of the largest of the last row's first `n` logits.
    Argmax(usize),
    /// The candidates of a top-`k` draw among the last row's first `n` logits
    /// ([`Gpu::top_k`]; the logits when they do not fit).
    TopK(usize, usize),
}

enum Fetched {
    Logits(Vec<f32>),
    Id(u32),
    Top(Vec<(f32, u32)>),
}

impl Fetched {
    fn into_logits(self) -> Vec<f32> {
        match self {
            Fetched::Logits(l) => l,
            _ => unreachable!("a logits fetch returns logits"),
        }
    }
}

impl CudaTextModel {
    /// Runs `ids` (the next tokens of the sequence held by `cache`) and returns logits:
    /// `1 x V` for [`Logits::Last`], `T x V` for [`Logits::All`]. Same contract as
    /// [`crate::TextModel::forward`].
    pub fn forward(&self, ids: &[u32], cache: &mut CudaKvCache, want: Logits) -> Result<Vec<f32>> {
        self.forward_embedded(ids, cache, want, None)
    }

    /// [`CudaTextModel::forward`] with multimodal embedding rows (see
    /// [`crate::TextModel::forward_embedded`]).
    pub fn forward_embedded(
        &self,
        ids: &[u32],
        cache: &mut CudaKvCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>> {
        self.forward_full(ids, cache, want, embed, None, Fetch::Logits)
            .map(Fetched::into_logits)
    }

    /// Runs `id` (the next token of the sequence held by `cache`) and returns the
    /// candidates of a top-`k` draw among its first `vocab` logits, found on the device
    /// ([`TopScores::Top`]: a few hundred bytes come back instead of the logits), or all
    /// its logits when `k` is outside `1..=64` or the candidates do not fit (many ties).
    pub fn forward_top_k(
        &self,
        id: u32,
        cache: &mut CudaKvCache,
        vocab: usize,
        k: usize,
    ) -> Result<TopScores> {
        let vocab = vocab.min(self.cpu.cfg.vocab_size);
        let fetch = if (1..=Gpu::TOPK_MAX_K).contains(&k) && vocab <= Gpu::TOPK_MAX_VALUES {
            Fetch::TopK(vocab, k)
        } else {
            Fetch::Logits
        };
        Ok(
            match self.forward_full(&[id], cache, Logits::Last, None, None, fetch)? {
                Fetched::Top(c) => TopScores::Top(c),
                Fetched::Logits(l) => TopScores::Logits(l),
                Fetched::Id(_) => unreachable!("a top-k fetch returns candidates or logits"),
            },
        )
    }

    /// Runs `id` (the next token of the sequence held by `cache`) and returns the index of
    /// the largest of its first `vocab` logits (the lowest among equal ones; NaN and -inf
    /// never win), found on the device: greedy decoding copies back one id instead of the
    /// logits. An error when every one of those logits is NaN or -inf.
    pub fn forward_argmax(&self, id: u32, cache: &mut CudaKvCache, vocab: usize) -> Result<u32> {
        match self.forward_full(&[id], cache, Logits::Last, None, None, Fetch::Argmax(vocab))? {
            Fetched::Id(id) => Ok(id),
            _ => unreachable!("an argmax fetch returns an id"),
        }
    }

    /// [`CudaTextModel::forward`] calling `hook` with the AltUp streams (read back from
    /// the device) after the stream initialisation and after each layer, as
    /// [`crate::TextModel::forward_with_hook`] does: for finding where two backends part.
    pub fn forward_with_hook(
        &self,
        ids: &[u32],
        cache: &mut CudaKvCache,
        want: Logits,
        hook: StreamHook<'_>,
    ) -> Result<Vec<f32>> {
        self.forward_full(ids, cache, want, None, Some(hook), Fetch::Logits)
            .map(Fetched::into_logits)
    }

    fn forward_full(
        &self,
        ids: &[u32],
        cache: &mut CudaKvCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
        hook: Option<StreamHook<'_>>,
        fetch: Fetch,
    ) -> Result<Fetched> {
        let cfg = &self.cpu.cfg;
        let n = ids.len();
        if n == 0 {
            return Err(ModelError::Invalid("forward called with no tokens".into()));
        }
        crate::text::decoder::check_ids(ids, cfg.vocab_size)?;
        let pos0 = cache.pos();
        cache.reserve(pos0 + n)?;
        let chunk = self.settings.prefill_chunk;
        if n > chunk && hook.is_none() {
            // A long prompt goes in pieces, so the activation workspace stays sized for
            // `chunk` rows; each piece continues the sequence in the cache.
            let mut out = Vec::new();
            let mut last = None;
            for part in ids.chunks(chunk) {
                match self.forward_full(part, cache, want, embed, None, fetch)? {
                    Fetched::Logits(l) if want == Logits::All => out.extend_from_slice(&l),
                    f => last = Some(f),
                }
            }
            return Ok(last.unwrap_or(Fetched::Logits(out)));
        }
        let logit_rows = if want == Logits::All { n } else { 1 };
        let mut guard = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        let ws = self.workspace(&mut guard, n, logit_rows)?;
        let positions: Vec<u32> = (pos0..pos0 + n).map(|p| p as u32).collect();
        self.upload_inputs(ws, ids, &positions, embed)?;
        if n == 1 && self.settings.persistent && hook.is_none() && embed.is_none() {
            let key = (ws.id, cache.generation);
            if cache.layer_table.as_ref().map(|(k, _)| *k) != Some(key) {
                cache.layer_table = None;
                let table = self
                    .decode_layers(ws, cache)
                    .map(|layers| self.gpu.decode_layers_table(&layers))
                    .transpose()
                    .map_err(gpu_err)?;
                cache.layer_table = Some((key, table));
            }
        }
        let rows = if n == 1 && embed.is_none() && hook.is_none() && self.settings.graphs {
            // A decode step: replay the captured graph of this sequence (recorded on first
            // use, again after the cache or the workspace moved).
            let splits = attention_splits(1, cfg.num_attention_heads, pos0 + 1);
            let key = (ws.id, cache.generation, splits);
            if cache.graph.as_ref().map(|(k, _)| *k) != Some(key) {
                cache.graph = None;
                let graph = self.capture(|| {
                    self.run(ws, &Caches::One(cache), 1, want, false, None, splits)
                        .map(|_| ())
                })?;
                cache.graph = Some((key, graph));
            }
            let (_, graph) = cache.graph.as_ref().expect("captured");
            graph.launch().map_err(gpu_err)?;
            1
        } else {
            let splits = attention_splits(n, cfg.num_attention_heads, pos0 + n);
            // Prefills of many rows run attention as GEMMs over a score buffer, when it
            // stays within bounds.
            let score_bytes = cfg.num_attention_heads * n * (pos0 + n) * 4;
            // Or on the flash kernel, which needs room for partial results when it splits
            // the keys of long rows (full attention has the longest rows).
            let need = if !self.settings.gemm_attention || n < GEMM_ATTENTION_ROWS {
                0
            } else if self.flash_attention(ws, n) {
                if self.settings.flash_split {
                    let (h, hd) = (cfg.num_attention_heads, cfg.head_dim);
                    self.gpu
                        .flash_plan(n, pos0 + n, h, cfg.num_key_value_heads, 0)
                        .scratch_bytes(n, h, hd)
                } else {
                    0
                }
            } else if score_bytes <= MAX_SCORE_BYTES {
                score_bytes
            } else {
                0
            };
            if need == 0 {
                ws.scores = None;
            } else if ws.scores.as_ref().is_none_or(|b| b.bytes() < need) {
                ws.scores = None;
                ws.scores = Some(self.gpu.alloc(need).map_err(gpu_err)?);
            }
            self.run(
                ws,
                &Caches::One(cache),
                n,
                want,
                embed.is_some(),
                hook,
                splits,
            )?
        };
        cache.advance(n);
        let v = cfg.vocab_size;
        // The argmax and the top-k read the last row's logits (soft-capped on the device:
        // a single row goes through the GEMV path).
        assert!(
            fetch == Fetch::Logits || rows <= GEMV_ROWS,
            "a fetch of one id or candidates from {rows} logit rows"
        );
        let last = ws.logits.ptr().add_f32((rows - 1) * v);
        match fetch {
            Fetch::Argmax(vocab) => {
                let id = ws.pick.ptr().add_f32(PICK_ID / 4);
                self.gpu
                    .argmax(last, vocab.min(v), ws.pick.ptr(), id)
                    .map_err(gpu_err)?;
                self.gpu.profile_collect().map_err(gpu_err)?;
                self.gpu
                    .download(id, &mut ws.pick_host, 4)
                    .map_err(gpu_err)?;
                let id = ws.pick_host.as_slice::<i32>()[0];
                return u32::try_from(id).map(Fetched::Id).map_err(|_| {
                    ModelError::Invalid("no token can be chosen: every logit is -inf or NaN".into())
                });
            }
            Fetch::TopK(vocab, k) => {
                self.gpu
                    .top_k(last, vocab.min(v), k, ws.topk_scratch.ptr(), ws.topk.ptr())
                    .map_err(gpu_err)?;
                self.gpu.profile_collect().map_err(gpu_err)?;
                self.gpu
                    .download(ws.topk.ptr(), &mut ws.topk_host, TOPK_BYTES)
                    .map_err(gpu_err)?;
                let r = ws.topk_host.as_slice::<u32>();
                let (count, overflow) = (r[0] as usize, r[1] != 0);
                if !overflow {
                    let pairs = r[2..2 + 2 * count]
                        .chunks_exact(2)
                        .map(|p| (f32::from_bits(p[0]), p[1]))
                        .collect();
                    return Ok(Fetched::Top(pairs));
                }
                // Too many ties to send: the logits, below.
            }
            Fetch::Logits => {}
        }
        self.gpu.profile_collect().map_err(gpu_err)?;
        self.gpu
            .download(ws.logits.ptr(), &mut ws.logits_host, 4 * rows * v)
            .map_err(gpu_err)?;
        let mut logits = copy_rows(&ws.logits_host.as_slice::<f32>()[..rows * v]);
        if rows > GEMV_ROWS {
            // The GEMM path leaves the soft-cap to the host.
            if let Some(cap) = cfg.final_logit_softcapping {
                gemma3n_compute::cpu::ops::soft_cap_rows(&mut logits, v, cap);
            }
        }
        Ok(Fetched::Logits(logits))
    }

    /// The workspace, grown (never shrunk, so alternating prefills and batched steps do
    /// not reallocate each time) to hold `n` rows and `logit_rows` rows of logits.
    fn workspace<'w>(
        &self,
        guard: &'w mut Option<Workspace>,
        n: usize,
        logit_rows: usize,
    ) -> Result<&'w mut Workspace> {
        let fits = guard
            .as_ref()
            .is_some_and(|w| w.cap >= n && w.logit_rows >= logit_rows);
        if !fits {
            let (cap, rows) = guard.as_ref().map_or((n, logit_rows), |w| {
                (w.cap.max(n), w.logit_rows.max(logit_rows))
            });
            *guard = None;
            *guard = Some(Workspace::new(
                &self.gpu,
                &self.cpu.cfg,
                cap,
                rows,
                self.ple_elt,
                self.w.quantized,
            )?);
        }
        Ok(guard.as_mut().expect("workspace"))
    }

    /// One decode step of several sequences running the same slice: `ids[b]` is the next
    /// token of the sequence held by `caches[b]`. Returns their logits, `B x V` (the
    /// contract of [`crate::TextModel::forward_batch`]). Up to 16 sequences go through the
    /// decode kernels together (each row attending to its own cache); a lone sequence
    /// replays its captured step.
    pub fn forward_batch(&self, ids: &[u32], caches: &mut [&mut CudaKvCache]) -> Result<Vec<f32>> {
        let cfg = &self.cpu.cfg;
        crate::text::decoder::check_batch(ids.len(), caches.iter().map(|c| c.plan()))?;
        crate::text::decoder::check_ids(ids, cfg.vocab_size)?;
        if (2..=GEMV_ROWS).contains(&ids.len()) {
            // One batched step: its result as it is, not copied again.
            return self.step_rows(ids, caches);
        }
        let mut out = Vec::with_capacity(ids.len() * cfg.vocab_size);
        for (ids, caches) in ids.chunks(GEMV_ROWS).zip(caches.chunks_mut(GEMV_ROWS)) {
            if ids.len() == 1 {
                out.extend(self.forward(ids, caches[0], Logits::Last)?);
            } else {
                out.extend(self.step_rows(ids, caches)?);
            }
        }
        Ok(out)
    }

    /// [`CudaTextModel::forward_batch`] for 2 to 16 sequences.
    fn step_rows(&self, ids: &[u32], caches: &mut [&mut CudaKvCache]) -> Result<Vec<f32>> {
        let cfg = &self.cpu.cfg;
        let n = ids.len();
        for c in caches.iter_mut() {
            let p = c.pos();
            c.reserve(p + 1)?;
        }
        let mut guard = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        let ws = self.workspace(&mut guard, n, n)?;
        let positions: Vec<u32> = caches.iter().map(|c| c.pos() as u32).collect();
        self.upload_inputs(ws, ids, &positions, None)?;
        // Each stored layer's (keys, values) pointers of every row.
        let mut table = vec![0u64; cfg.num_hidden_layers * n * 2];
        for sl in &caches[0].plan().layers {
            if sl.kv != KvSource::Own {
                continue;
            }
            for (b, c) in caches.iter().enumerate() {
                let (k, v) = c.layer(sl.layer);
                table[(sl.layer * n + b) * 2] = k.addr();
                table[(sl.layer * n + b) * 2 + 1] = v.addr();
            }
        }
        self.gpu.write(&ws.kv_rows, 0, &table).map_err(gpu_err)?;
        let longest = positions.iter().max().copied().unwrap_or(0) as usize;
        let splits = attention_splits(n, cfg.num_attention_heads, longest + 1);
        let plan = caches[0].plan().clone();
        let kv = Caches::Rows {
            plan: &plan,
            table: ws.kv_rows.ptr(),
            rows: n,
        };
        if self.settings.graphs {
            // Replayed from its graph (recorded on the first step of this shape).
            let graph = ws.batch_graph(n, splits, &plan, |ws| {
                self.capture(|| {
                    self.run(ws, &kv, n, Logits::All, false, None, splits)
                        .map(|_| ())
                })
            })?;
            graph.launch().map_err(gpu_err)?;
        } else {
            self.run(ws, &kv, n, Logits::All, false, None, splits)?;
        }
        for c in caches.iter_mut() {
            c.advance(1);
        }
        self.gpu.profile_collect().map_err(gpu_err)?;
        let v = cfg.vocab_size;
        self.gpu
            .download(ws.logits.ptr(), &mut ws.logits_host, 4 * n * v)
            .map_err(gpu_err)?;
        Ok(copy_rows(&ws.logits_host.as_slice::<f32>()[..n * v]))
    }

    /// The summary of the last persistent decode step's barrier trace, when tracing
    /// (`GEMMA3N_CUDA_PK_TRACE=1`).
    pub fn pk_trace_report(&self) -> Result<Option<String>> {
        let ws = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        match ws.as_ref().and_then(|w| w.pk_trace.as_ref()) {
            Some(t) => {
                self.gpu.sync().map_err(gpu_err)?;
                self.gpu.pk_trace_report(t.ptr()).map(Some).map_err(gpu_err)
            }
            None => Ok(None),
        }
    }

    /// GPU time of one decode step of `cache` (milliseconds, mean of `reps` replays of its
    /// captured step), or `None` before its first graph-captured step.
    pub fn decode_step_ms(&self, cache: &CudaKvCache, reps: usize) -> Result<Option<f64>> {
        let Some((_, graph)) = &cache.graph else {
            return Ok(None);
        };
        self.replay_ms(graph, reps).map(Some)
    }

    /// The ops `f` queues, recorded as a graph instead of run (the capture ends even when
    /// `f` fails).
    pub(super) fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
        self.gpu.begin_capture().map_err(gpu_err)?;
        let r = f();
        let graph = self.gpu.end_capture().map_err(gpu_err);
        r?;
        graph
    }

    /// Mean milliseconds of `reps` replays of `graph` (after one untimed replay).
    pub(super) fn replay_ms(&self, graph: &Graph, reps: usize) -> Result<f64> {
        graph.launch().map_err(gpu_err)?;
        let ms = self
            .gpu
            .time_ms(&mut || {
                for _ in 0..reps {
                    graph.launch()?;
                }
                Ok(())
            })
            .map_err(gpu_err)?;
        Ok(ms as f64 / reps as f64)
    }

    /// GPU time of the last captured batched step of `rows` sequences (milliseconds, mean
    /// of `reps` replays; each replay recomputes that step, writing the same keys and
    /// values again), or `None` if none was captured.
    pub fn batch_step_ms(&self, rows: usize, reps: usize) -> Result<Option<f64>> {
        let guard = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        let Some(graph) = guard
            .as_ref()
            .and_then(|ws| ws.batch_graphs.iter().rev().find(|g| g.rows == rows))
        else {
            return Ok(None);
        };
        self.replay_ms(&graph.graph, reps).map(Some)
    }

    /// Token ids, positions, multimodal rows and the per-layer table rows of the tokens
    /// (gathered here in host memory: the table never leaves it) to the device, through
    /// the page-locked stage in one asynchronous copy.
    fn upload_inputs(
        &self,
        ws: &mut Workspace,
        ids: &[u32],
        positions: &[u32],
        embed: Option<EmbedFn<'_>>,
    ) -> Result<()> {
        let cfg = &self.cpu.cfg;
        let w = &self.cpu.weights;
        let (n, d, cap) = (ids.len(), cfg.hidden_size, ws.cap);
        let lp = cfg.num_hidden_layers * cfg.hidden_size_per_layer_input;
        let mut flags = vec![0i32; n];
        if let Some(f) = embed {
            let scale = (d as f32).sqrt();
            let mut over = vec![0f32; n * d];
            for (t, &id) in ids.iter().enumerate() {
                if (id as usize) < cfg.vocab_size_per_layer_input {
                    continue;
                }
                let row = &mut over[t * d..(t + 1) * d];
                w.embed_tokens.row_to_f32(id as usize, row);
                row.iter_mut().for_each(|v| *v *= scale);
                f(positions[t] as usize, id, row)?;
                flags[t] = 1;
            }
            self.gpu.write(&ws.over, 0, &over).map_err(gpu_err)?;
        }
        let table = &w.embed_tokens_per_layer;
        let row_of = |id: u32| {
            if (id as usize) < cfg.vocab_size_per_layer_input {
                id as usize
            } else {
                0
            }
        };
        let elt = ws.ple_elt;
        {
            let stage = ws.stage.as_mut_slice::<u32>();
            stage[..n].copy_from_slice(ids);
            for t in 0..n {
                stage[cap + t] = positions[t];
                stage[2 * cap + t] = flags[t] as u32;
            }
        }
        let bytes = ws.stage.as_mut_slice::<u8>();
        let rows = &mut bytes[12 * cap..12 * cap + n * lp * elt];
        // Row `id` of the table into `out`: raw when the table is bf16 (elt 2), else as f32
        // (through `tmp`).
        let fill = |out: &mut [u8], id: u32, tmp: &mut Vec<f32>| {
            if elt == 2 {
                out.copy_from_slice(&table.row_bytes(row_of(id))[..lp * 2]);
            } else {
                tmp.resize(lp, 0.0);
                table.row_to_f32(row_of(id), tmp);
                for (o, v) in out.chunks_exact_mut(4).zip(tmp.iter()) {
                    o.copy_from_slice(&v.to_ne_bytes());
                }
            }
        };
        if n == 1 {
            // A decode step: one row, on this thread (handing it to the thread pool costs
            // more than the copy).
            fill(rows, ids[0], &mut Vec::new());
        } else {
            rows.par_chunks_mut(lp * elt)
                .zip(ids)
                .for_each_init(Vec::new, |tmp, (out, &id)| fill(out, id, tmp));
        }
        self.gpu
            .upload_async(&ws.stage, 0, ws.inputs.ptr(), 12 * cap + n * lp * elt)
            .map_err(gpu_err)
    }

    /// Whether the attention of a prefill of `n` rows runs on the flash kernel: with bf16
    /// activations (one part), where the GPU has it.
    fn flash_attention(&self, ws: &Workspace, n: usize) -> bool {
        self.settings.gemm_attention
            && n >= self.settings.flash_rows
            && self.parts(ws).len() == 1
            && self.gpu.flash_attention(self.cpu.cfg.head_dim)
    }

    /// The scratch buffers of the activation parts prefill GEMMs use (see
    /// [`CudaTextModel::set_activation_parts`]).
    fn parts(&self, ws: &Workspace) -> Vec<DevPtr> {
        let n = self
            .activation_parts
            .load(std::sync::atomic::Ordering::Relaxed);
        ws.xparts[..n].iter().map(|b| b.ptr()).collect()
    }

    /// Products `y = x · Wᵀ`: one GEMV launch up to 16 rows, else one GEMM each.
    fn mm(&self, ws: &Workspace, segs: &[GemvSeg], n: usize, cap: f32) -> Result<()> {
        self.mm_split(ws, segs, n, cap, false)
    }

    /// [`Self::mm`]; with `presplit`, the first product's input is already in the bf16
    /// parts (written by the kernel that made it).
    fn mm_split(
        &self,
        ws: &Workspace,
        segs: &[GemvSeg],
        n: usize,
        cap: f32,
        presplit: bool,
    ) -> Result<()> {
        if n <= GEMV_ROWS {
            self.gpu.gemv(segs, n, cap).map_err(gpu_err)
        } else {
            let (parts, wparts) = (self.parts(ws), ws.wpart_ptrs());
            // Consecutive products of one input (q, k, v and LAuReL's left; gate and up)
            // split it into bf16 parts once.
            let mut split = segs.first().filter(|_| presplit).map(|s| (s.x, s.ldx, s.k));
            for s in segs {
                let input = Some((s.x, s.ldx, s.k));
                if input == split {
                    self.gpu.gemm_parts(s, n, &parts, &wparts, WPART_VALUES)
                } else {
                    split = input;
                    self.gpu.gemm(s, n, &parts, &wparts, WPART_VALUES)
                }
                .map_err(gpu_err)?;
            }
            Ok(())
        }
    }

    /// The layer loop and the output head. Returns the number of logit rows written.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ws: &Workspace,
        caches: &Caches<'_>,
        n_all: usize,
        want: Logits,
        multimodal: bool,
        mut hook: Option<StreamHook<'_>>,
        mut splits: usize,
    ) -> Result<usize> {
        let cfg = &self.cpu.cfg;
        let w = &self.w;
        let g = &self.gpu;
        let e = |r: gemma3n_compute::cuda::CudaError| gpu_err(r);
        let (d, p) = (cfg.hidden_size, cfg.hidden_size_per_layer_input);
        let nl = cfg.num_hidden_layers;
        let lp = nl * p;
        let (h, kvh, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let a = cfg.altup_num_inputs;
        let eps = cfg.rms_norm_eps;
        let ss = ws.ss;
        let qw = ws.qw;
        let r = cfg.laurel_rank;
        let (q_off, k_off, v_off, ll_off) = (0, h * hd, h * hd + kvh * hd, h * hd + 2 * kvh * hd);

        // Embeddings (stream 0), the other streams, the per-layer inputs.
        let flag = if multimodal { ws.flag() } else { DevPtr::NULL };
        let mut s = ws.s.ptr();
        let mut pr = ws.pred.ptr();
        g.embed_rows(
            ws.ids(),
            w.embed.wp(),
            d,
            (d as f32).sqrt(),
            ws.over.ptr(),
            flag,
            s,
            n_all,
        )
        .map_err(e)?;
        let init: Vec<GemvSeg> = w
            .altup_proj
            .iter()
            .enumerate()
            .map(|(k, m)| seg(m, d, d, s, d, s.add_f32((k + 1) * ss), d))
            .collect();
        self.mm(ws, &init, n_all, 0.0)?;
        g.match_magnitude(s.add_f32(ss), ss, a - 1, s, n_all, d)
            .map_err(e)?;
        self.mm(
            ws,
            &[seg(&w.ple_proj, lp, d, s, d, ws.plp.ptr(), lp)],
            n_all,
            0.0,
        )?;
        g.ple_combine(
            ws.plp.ptr(),
            ws.ple_rows(),
            ws.ple_elt == 2,
            w.ple_norm.ptr(),
            ws.pi.ptr(),
            n_all,
            nl,
            p,
            d,
            eps,
        )
        .map_err(e)?;

        // Whether this pass's prefill attention (all rows at once) runs on the flash kernel.
        let flash = self.flash_attention(ws, n_all);
        // The bf16 parts a GEMM's activations go to: a prefill's row kernels write them
        // along with their f32 output (none for the GEMV's few rows).
        let parts = self.parts(ws);
        let watching = hook.is_some();
        let mut observe = |k: usize, s: DevPtr, n: usize| -> Result<()> {
            if let Some(h) = hook.as_mut() {
                let mut streams = vec![vec![0f32; n * d]; a];
                for (i, st) in streams.iter_mut().enumerate() {
                    g.read_at(s.add_f32(i * ss), st).map_err(gpu_err)?;
                }
                h(k, &streams);
            }
            Ok(())
        };
        observe(0, s, n_all)?;
        // A single sequence's decode step: every layer in one persistent launch, where its
        // layer table was built (`forward_full`).
        let table = match caches {
            Caches::One(c) if n_all == 1 && !watching && !multimodal => c
                .layer_table
                .as_ref()
                .filter(|(key, _)| *key == (ws.id, c.generation))
                .and_then(|(_, t)| t.as_ref()),
            _ => None,
        };
        let mut n = n_all;
        if let Some(table) = table {
            let step = DecodeStep {
                layers: table.ptr(),
                nl: caches.plan().layers.len(),
                bufs: [
                    ws.s.ptr(),
                    ws.pred.ptr(),
                    ws.pos(),
                    ws.x.ptr(),
                    ws.qkv.ptr(),
                    ws.q.ptr(),
                    ws.att.ptr(),
                    ws.part.ptr(),
                    ws.o.ptr(),
                    ws.lr.ptr(),
                    ws.h.ptr(),
                    ws.pk.f32_at(16),
                    ws.rc.ptr(),
                    ws.gu.ptr(),
                    ws.act.ptr(),
                    ws.fo.ptr(),
                    ws.pg.ptr(),
                    ws.pq.ptr(),
                    ws.pk.ptr(),
                    ws.done.ptr(),
                    DevPtr::NULL,
                ],
                ss,
                shape: [d, h, kvh, hd, p, r],
                eps,
                trace: ws.pk_trace.as_ref().map_or(DevPtr::NULL, |b| b.ptr()),
            };
            let smem = Gpu::decode_layers_smem(d, hd, h * hd, r, ws.fmax);
            g.decode_layers(&step, smem).map_err(e)?;
            s = ws.s.ptr();
        } else {
            let plan = caches.plan().clone();
            // The per-layer input injection of the previous layer, when not yet applied.
            let mut pending: Option<(DevPtr, DevPtr)> = None;
            let mut row0 = 0;
            for (k, sl) in plan.layers.iter().enumerate() {
                let l = sl.layer;
                if sl.kv != KvSource::Own && want == Logits::Last && n > 1 {
                    // Fast prefill: later layers only feed the last position's logits.
                    if let Some((q, wq)) = pending.take() {
                        g.ple_inject(q, wq, s, ss, a, n, d, eps).map_err(e)?;
                    }
                    g.keep_row(s, ss, a, n - 1, d).map_err(e)?;
                    row0 += n - 1;
                    n = 1;
                    // One query row: its keys split over blocks again.
                    if let Caches::One(c) = caches {
                        splits = attention_splits(1, h, c.pos() + n_all);
                    }
                }
                let lw = &w.layers[l];
                let pos = ws.pos().add_f32(row0);
                // Where this layer's row kernels also write the next GEMM's bf16 input.
                let xp: &[DevPtr] = if self.settings.fused_split && n > GEMV_ROWS {
                    &parts
                } else {
                    &[]
                };
                let presplit = !xp.is_empty();
                // The previous layer's per-layer input injection happens here, in one pass
                // with the prediction.
                let (inj, w_inj) = pending.take().unwrap_or((DevPtr::NULL, DevPtr::NULL));
                g.altup_predict(
                    s,
                    ss,
                    inj,
                    w_inj,
                    lw.router_norm.ptr(),
                    lw.router.ptr(),
                    lw.pred_coefs.ptr(),
                    lw.input_ln.ptr(),
                    pr,
                    ws.rc.ptr(),
                    ws.x.ptr(),
                    xp,
                    n,
                    d,
                    eps,
                )
                .map_err(e)?;
                // q, k, v and LAuReL's left product share the input.
                let x = ws.x.ptr();
                let qkv = ws.qkv.ptr();
                let own = sl.kv == KvSource::Own;
                let mut segs = vec![seg(&lw.q, h * hd, d, x, d, qkv.add_f32(q_off), qw)];
                let stacked = lw
                    .qkvl
                    .as_ref()
                    .filter(|_| own && n > GEMV_ROWS && self.settings.stacked_qkv);
                if let Some(all) = stacked {
                    // One GEMM: the stacked rows' outputs are a q/k/v row in order.
                    segs = vec![seg(all, qw, d, x, d, qkv, qw)];
                } else if own {
                    let (km, vm) = (lw.k.as_ref(), lw.v.as_ref());
                    let (km, vm) = km.zip(vm).ok_or_else(|| {
                        ModelError::Invalid(format!("layer {l}: k/v weights missing"))
                    })?;
                    segs.push(seg(km, kvh * hd, d, x, d, qkv.add_f32(k_off), qw));
                    segs.push(seg(vm, kvh * hd, d, x, d, qkv.add_f32(v_off), qw));
                }
                if stacked.is_none() {
                    segs.push(seg(&lw.laurel_left, r, d, x, d, qkv.add_f32(ll_off), qw));
                }
                self.mm_split(ws, &segs, n, 0.0, presplit)?;
                let src = match sl.kv {
                    KvSource::Own => l,
                    KvSource::Shared(p) => p,
                };
                let kv = caches.layer(src);
                let half = hd / 2;
                g.qkv_prep(
                    qkv,
                    qw,
                    lw.q_norm.ptr(),
                    lw.k_norm.as_ref().map_or(DevPtr::NULL, |b| b.ptr()),
                    pos,
                    self.inv_freq.f32_at(l * half),
                    ws.q.ptr(),
                    kv,
                    own,
                    n,
                    h,
                    kvh,
                    hd,
                    eps,
                )
                .map_err(e)?;
                let window = match sl.kind {
                    LayerType::Sliding => cfg.sliding_window,
                    LayerType::Full => 0,
                };
                // A prefill: every row of the step sees the same cached keys; one tensor-core
                // kernel with bf16 activations, else two GEMMs. (Never in a captured decode
                // step: the sizes would be frozen into the graph.)
                let many = n == n_all && n >= GEMM_ATTENTION_ROWS;
                // The flash kernel writes the o projection's bf16 activations itself (it runs
                // with one part only).
                let att_split = flash && many && matches!(caches, Caches::One(_)) && presplit;
                match (&ws.scores, caches, many) {
                    (scratch, Caches::One(cache), true) if flash => g.attention_flash(
                        ws.q.ptr(),
                        kv.k,
                        kv.v,
                        pos,
                        if att_split { parts[0] } else { ws.att.ptr() },
                        att_split,
                        n,
                        cache.pos() + n,
                        h,
                        kvh,
                        hd,
                        window,
                        scratch
                            .as_ref()
                            .map(|b| (b.ptr(), b.bytes(), ws.done.ptr())),
                    ),
                    (Some(sc), Caches::One(cache), true) => g.attention_prefill(
                        self.parts(ws).len() == 1,
                        ws.q.ptr(),
                        kv.k,
                        kv.v,
                        pos,
                        ws.att.ptr(),
                        sc.ptr(),
                        n,
                        cache.pos() + n,
                        h,
                        kvh,
                        hd,
                        window,
                    ),
                    _ => g.attention(
                        ws.q.ptr(),
                        kv,
                        pos,
                        ws.att.ptr(),
                        ws.part.ptr(),
                        ws.done.ptr(),
                        splits,
                        n,
                        h,
                        kvh,
                        hd,
                        window,
                    ),
                }
                .map_err(e)?;
                // o_proj and LAuReL's right product.
                self.mm_split(
                    ws,
                    &[
                        seg(&lw.o, d, h * hd, ws.att.ptr(), h * hd, ws.o.ptr(), d),
                        seg(
                            &lw.laurel_right,
                            d,
                            r,
                            qkv.add_f32(ll_off),
                            qw,
                            ws.lr.ptr(),
                            d,
                        ),
                    ],
                    n,
                    0.0,
                    att_split,
                )?;
                g.post_attention(
                    pr,
                    ws.o.ptr(),
                    d,
                    lw.post_attn_ln.ptr(),
                    ws.lr.ptr(),
                    lw.laurel_norm.ptr(),
                    x,
                    lw.pre_ffn_ln.ptr(),
                    ws.h.ptr(),
                    ws.y.ptr(),
                    xp,
                    n,
                    d,
                    eps,
                )
                .map_err(e)?;
                self.ffn(ws, l, sl.ffn_width, sl.sparsity_z, n, presplit)?;
                g.post_ffn_correct(
                    ws.h.ptr(),
                    ws.fo.ptr(),
                    lw.post_ffn_ln.ptr(),
                    s,
                    ws.rc.ptr(),
                    pr,
                    ss,
                    lw.router_norm.ptr(),
                    lw.router.ptr(),
                    lw.corr_coefs.ptr(),
                    if cfg.altup_correct_scale {
                        lw.corr_scale.ptr()
                    } else {
                        DevPtr::NULL
                    },
                    DevPtr::NULL,
                    ws.v.ptr(),
                    xp,
                    n,
                    d,
                    eps,
                )
                .map_err(e)?;
                // Per-layer input injection: gate = gelu(v · W_gᵀ) ⊙ π_l, then the projection.
                let pi_l = ws.pi.f32_at(row0 * lp + l * p);
                let mut gate = seg(&lw.pl_gate, p, d, ws.v.ptr(), d, ws.pg.ptr(), p);
                if n <= GEMV_ROWS {
                    gate.epi = Epilogue::GeluAcc(pi_l, lp);
                    self.mm(ws, &[gate], n, 0.0)?;
                } else {
                    self.mm_split(ws, &[gate], n, 0.0, presplit)?;
                    g.ple_gate(ws.pg.ptr(), ws.pi.f32_at(row0 * lp), lp, l * p, p, n, xp)
                        .map_err(e)?;
                }
                self.mm_split(
                    ws,
                    &[seg(&lw.pl_proj, d, p, ws.pg.ptr(), p, ws.pq.ptr(), d)],
                    n,
                    0.0,
                    presplit,
                )?;
                std::mem::swap(&mut s, &mut pr);
                pending = Some((ws.pq.ptr(), lw.post_pl_norm.ptr()));
                if watching || k + 1 == plan.layers.len() {
                    let (q, wq) = pending.take().expect("set above");
                    g.ple_inject(q, wq, s, ss, a, n, d, eps).map_err(e)?;
                }
                observe(k + 1, s, n)?;
            }
        }

        if want == Logits::Last && n > 1 {
            g.keep_row(s, ss, a, n - 1, d).map_err(e)?;
            n = 1;
        }
        let unembed: Vec<GemvSeg> = w
            .altup_unembed
            .iter()
            .enumerate()
            .map(|(k, m)| seg(m, d, d, s.add_f32((k + 1) * ss), d, ws.ys.f32_at(k * ss), d))
            .collect();
        self.mm(ws, &unembed, n, 0.0)?;
        g.unembed_merge(
            s,
            ws.ys.ptr(),
            ss,
            a - 1,
            w.norm.ptr(),
            ws.hf.ptr(),
            n,
            d,
            eps,
        )
        .map_err(e)?;
        let v = cfg.vocab_size;
        let cap = cfg.final_logit_softcapping.unwrap_or(0.0);
        self.mm(
            ws,
            &[seg(&w.embed, v, d, ws.hf.ptr(), d, ws.logits.ptr(), v)],
            n,
            if n <= GEMV_ROWS { cap } else { 0.0 },
        )?;
        Ok(n)
    }

    /// The layers of `cache`'s slice as the persistent decode kernel takes them, or `None`
    /// where it cannot run them: weights other than bf16, or rows, widths or a shape it does
    /// not take.
    fn decode_layers(&self, ws: &Workspace, cache: &CudaKvCache) -> Option<Vec<DecodeLayer>> {
        let cfg = &self.cpu.cfg;
        let (d, h, kvh, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let (r, p) = (cfg.laurel_rank, cfg.hidden_size_per_layer_input);
        if self.w.quantized
            || cfg.altup_num_inputs != 4
            || kvh == 0
            || !h.is_multiple_of(kvh)
            || !self.gpu.decode_layers_fit(d, hd, h * hd, r, ws.fmax)
        {
            return None;
        }
        // The kernel reads rows of 8-aligned lengths 8 values at a time, others (a small
        // LAuReL rank or per-layer input width) one value at a time.
        let mat = |m: &DevMatrix| -> Option<(DevPtr, usize)> {
            let wp = m.wp();
            (wp.fmt == WeightFormat::Bf16 && wp.w.addr().is_multiple_of(16))
                .then_some((wp.w, m.cols))
        };
        let caches = Caches::One(cache);
        let none = (DevPtr::NULL, 0);
        cache
            .plan()
            .layers
            .iter()
            .map(|sl| {
                let l = sl.layer;
                let lw = &self.w.layers[l];
                let own = sl.kv == KvSource::Own;
                let (k, v) = if own {
                    (mat(lw.k.as_ref()?)?, mat(lw.v.as_ref()?)?)
                } else {
                    (none, none)
                };
                let (down, down_t) = match &lw.down {
                    Down::Normal(m) => (mat(m)?, false),
                    Down::Transposed(m) => (mat(m)?, true),
                };
                if !sl.ffn_width.is_multiple_of(8) {
                    return None;
                }
                let kv = caches.layer(match sl.kv {
                    KvSource::Own => l,
                    KvSource::Shared(src) => src,
                });
                Some(DecodeLayer {
                    mats: [
                        mat(&lw.q)?,
                        k,
                        v,
                        mat(&lw.o)?,
                        mat(&lw.gate)?,
                        mat(&lw.up)?,
                        down,
                        mat(&lw.laurel_left)?,
                        mat(&lw.laurel_right)?,
                        mat(&lw.pl_gate)?,
                        mat(&lw.pl_proj)?,
                    ],
                    vecs: [
                        lw.q_norm.ptr(),
                        lw.k_norm.as_ref().map_or(DevPtr::NULL, |b| b.ptr()),
                        lw.input_ln.ptr(),
                        lw.post_attn_ln.ptr(),
                        lw.pre_ffn_ln.ptr(),
                        lw.post_ffn_ln.ptr(),
                        lw.laurel_norm.ptr(),
                        lw.router_norm.ptr(),
                        lw.router.ptr(),
                        lw.pred_coefs.ptr(),
                        lw.corr_coefs.ptr(),
                        if cfg.altup_correct_scale {
                            lw.corr_scale.ptr()
                        } else {
                            DevPtr::NULL
                        },
                        lw.post_pl_norm.ptr(),
                        self.inv_freq.f32_at(l * (hd / 2)),
                        ws.pi.f32_at(l * p),
                    ],
                    kcache: kv.k,
                    vcache: kv.v,
                    f: sl.ffn_width,
                    sparsity_z: sl.sparsity_z,
                    down_t,
                    own_kv: own,
                    window: match sl.kind {
                        LayerType::Sliding => cfg.sliding_window,
                        LayerType::Full => 0,
                    },
                })
            })
            .collect()
    }

    /// The FFN of stored layer `l` at width `f` for `n` rows of `ws.y`, into `ws.fo`
    /// (`presplit`: `ws.y` is already in the bf16 parts).
    fn ffn(
        &self,
        ws: &Workspace,
        l: usize,
        f: usize,
        z: Option<f32>,
        n: usize,
        presplit: bool,
    ) -> Result<()> {
        let cfg = &self.cpu.cfg;
        let g = &self.gpu;
        let e = |r: gemma3n_compute::cuda::CudaError| gpu_err(r);
        let lw = &self.w.layers[l];
        let d = cfg.hidden_size;
        let fmax = ws.fmax;
        let ldgu = 2 * fmax;
        let (gate, up) = (ws.gu.ptr(), ws.gu.f32_at(fmax));
        let y = ws.y.ptr();
        let gate_seg = seg(&lw.gate, f, d, y, d, gate, ldgu);
        let mut up_seg = seg(&lw.up, f, d, y, d, up, ldgu);
        let act = ws.act.ptr();
        match (z, n <= GEMV_ROWS) {
            (None, true) => {
                // gelu(gate) ⊙ up in one pass over both matrices.
                let mut pair = seg(&lw.gate, f, d, y, d, act, fmax);
                pair.epi = Epilogue::Pair(lw.up.wp());
                self.mm(ws, &[pair], n, 0.0)?;
            }
            (Some(z), true) => {
                self.mm(ws, &[gate_seg], n, 0.0)?;
                // One row: the cut-off and the kept units' up rows in one kernel.
                if n == 1
                    && self.settings.sparse_up
                    && g.sparse_up_rows(gate, up_seg.w, up_seg.ldw, y, d, act, f, z)
                        .map_err(e)?
                {
                    return self.down(ws, l, f, n);
                }
                g.sparsity_cutoff(gate, ldgu, n, f, z).map_err(e)?;
                up_seg.y = act;
                up_seg.ldy = fmax;
                up_seg.epi = Epilogue::GeluAux(gate, ldgu);
                if n <= SPARSE_ROWS {
                    // Only the rows of units some row keeps.
                    up_seg.mask = gate;
                    up_seg.ldm = ldgu;
                }
                self.mm(ws, &[up_seg], n, 0.0)?;
            }
            (z, false) => {
                let parts = self.parts(ws);
                // With one part and bf16 weights, gate and up come out of the GEMMs as bf16
                // (rows of 2·fmax values): half the bytes for the activation to read.
                let gu_bf16 = self.settings.bf16_gate_up
                    && parts.len() == 1
                    && f.is_multiple_of(4)
                    && [&gate_seg, &up_seg]
                        .iter()
                        .all(|s| s.w.fmt == WeightFormat::Bf16);
                let (gate, up) = if gu_bf16 {
                    if !presplit {
                        g.split_bf16(y, d, &parts, n, d).map_err(e)?;
                    }
                    let (gb, ub) = (ws.gu.ptr(), ws.gu.ptr().add_bf16(fmax));
                    for (s, out) in [(gate_seg, gb), (up_seg, ub)] {
                        let s = GemvSeg { y: out, ..s };
                        if !g.gemm_bf16_out(&s, n, parts[0]).map_err(e)? {
                            unreachable!("bf16 weights checked above");
                        }
                    }
                    (gb, ub)
                } else {
                    self.mm_split(ws, &[gate_seg, up_seg], n, 0.0, presplit)?;
                    (gate, up)
                };
                // The activation straight into the down product's bf16 parts.
                if g.ffn_act_split(gate, ldgu, up, ldgu, gu_bf16, &parts, n, f, z)
                    .map_err(e)?
                {
                    return match &lw.down {
                        Down::Normal(m) => {
                            let s = seg(m, d, f, DevPtr::NULL, f, ws.fo.ptr(), d);
                            g.gemm_parts(&s, n, &parts, &ws.wpart_ptrs(), WPART_VALUES)
                        }
                        Down::Transposed(m) => {
                            g.gemm_t_parts(m.ptr(), d, m.cols, n, f, ws.fo.ptr(), d, &parts)
                        }
                    }
                    .map_err(e);
                }
                if gu_bf16 {
                    return Err(ModelError::Invalid(format!(
                        "layer {l}: the FFN activation kernel does not take rows of {f}"
                    )));
                }
                if let Some(z) = z {
                    g.sparsity_cutoff(gate, ldgu, n, f, z).map_err(e)?;
                }
                g.gelu_mul(gate, ldgu, up, ldgu, act, fmax, n, f)
                    .map_err(e)?;
            }
        }
        self.down(ws, l, f, n)
    }

    /// The FFN's down product of `n` rows of activations (`ws.act`) into `ws.fo`.
    fn down(&self, ws: &Workspace, l: usize, f: usize, n: usize) -> Result<()> {
        let g = &self.gpu;
        let e = |r: gemma3n_compute::cuda::CudaError| gpu_err(r);
        let lw = &self.w.layers[l];
        let d = self.cpu.cfg.hidden_size;
        let fmax = ws.fmax;
        match &lw.down {
            Down::Normal(m) => self.mm(
                ws,
                &[seg(m, d, f, ws.act.ptr(), fmax, ws.fo.ptr(), d)],
                n,
                0.0,
            ),
            Down::Transposed(m) => {
                if n <= GEMV_ROWS {
                    let scratch = (ws.sparse.0.ptr(), ws.sparse.1.ptr());
                    g.sparse_t(
                        m.ptr(),
                        m.cols,
                        ws.act.ptr(),
                        fmax,
                        ws.fo.ptr(),
                        d,
                        n,
                        f,
                        d,
                        scratch,
                    )
                    .map_err(e)
                } else {
                    g.gemm_t(
                        m.ptr(),
                        d,
                        m.cols,
                        ws.act.ptr(),
                        fmax,
                        n,
                        f,
                        ws.fo.ptr(),
                        d,
                        &self.parts(ws),
                    )
                    .map_err(e)
                }
            }
        }
    }
}
