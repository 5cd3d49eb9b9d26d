//! The op set of the CUDA backend: one method per kernel (plus cuBLAS GEMMs), each queued
//! on the GPU's stream. Pointers are [`DevPtr`]s into live buffers; sizes are in elements
//! and strides ("ld") in elements between consecutive rows.

use cudarc::cublas::sys as blas;
use cudarc::driver::DeviceRepr;

use std::sync::Arc;

use super::{CudaError, DevPtr, DeviceBuffer, Gpu, Result};

/// Output rows per block of the f32 GEMV kernels (one warp each).
const GEMV_WARPS: usize = 8;
/// Threads of a block of the tensor-core GEMV kernels, and its output rows.
const TC_THREADS: usize = 256;
const TC_ROWS: usize = 16;
/// Activation rows the GEMV kernels take at once.
pub const GEMV_MAX_BATCH: usize = 16;
/// Activation rows of one `sparse_t_bf16` launch.
const SPT_ROWS: usize = 8;
/// Units (rows of the transposed matrix) per block of `sparse_tc_bf16_*`.
const TT_UNITS: usize = 1024;
/// `sparse_up_rows_bf16`: units and threads per block, the longest rows.
const SU_UNITS: usize = 128;
const SU_THREADS: usize = 256;
const SU_MAX_K: usize = 4096;
/// `sparse_rows_bf16`: columns (and threads) per block, units per block at most.
const SR_COLS: usize = 256;
const SR_MAX_UNITS: usize = 2048;

/// Unit groups (`grid.y`) of `sparse_rows_bf16`: 16 (with E2B's 8 column stripes, 128
/// blocks), more where a group would pass its list's capacity.
fn sparse_rows_groups(units: usize) -> usize {
    units.div_ceil(SR_MAX_UNITS).max(16)
}

/// Whether `sparse_rows_bf16` can read a `[_, ncols]` bf16 matrix of stride `ldw` at `wt`.
fn sparse_rows_fits(wt: DevPtr, ldw: usize, ncols: usize) -> bool {
    (ncols | ldw).is_multiple_of(8) && wt.0.is_multiple_of(16)
}
const GEMV_MAX_SEGS: usize = 4;
/// Warps per block (one key split of one row and head) of decode attention: attention.cu's
/// `ATT_WARPS`.
const ATT_WARPS: usize = 8;

/// How a weight matrix is stored on the device (common.cu's W_* values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// bf16 values.
    #[default]
    Bf16,
    /// GGUF Q8_0's values: int8 rows and an f16 scale per 32 values.
    Q8,
    /// GGUF Q4_K's values: 4-bit rows (32 values in 16 bytes) and per 256 values the
    /// super-block scales with the sub-block scales and mins unpacked (20 bytes).
    Q4K,
}

impl WeightFormat {
    fn code(self) -> i32 {
        match self {
            WeightFormat::Bf16 => 0,
            WeightFormat::Q8 => 1,
            WeightFormat::Q4K => 2,
        }
    }
}

/// A weight matrix on the device: its values and, for the quantized formats, its scales.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightPtr {
    pub w: DevPtr,
    pub sc: DevPtr,
    pub fmt: WeightFormat,
}

/// Where a layer's keys and values are: one cache for every row (`k`, `v`), or a device
/// table of each row's own (keys, values) pointers (`rows`, u64 pairs).
#[derive(Clone, Copy, Debug, Default)]
pub struct KvPtrs {
    pub k: DevPtr,
    pub v: DevPtr,
    pub rows: DevPtr,
}

/// What a product writes (gemv.cu's EPI_* values), with `acc = x · W[r]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Epilogue {
    /// `acc` (soft-capped when the launch has a cap).
    #[default]
    Plain,
    /// `gelu(acc) · (x · W2[r])`: the gate and up products of a dense FFN at once (W2
    /// in the format of W).
    Pair(WeightPtr),
    /// `gelu(aux[b, r]) · acc` (aux row stride given): up after the sparse gate.
    GeluAux(DevPtr, usize),
    /// `gelu(acc) · aux[b, r]`: the per-layer input gate.
    GeluAcc(DevPtr, usize),
}

/// One product `y[b, r] = Σ_k x[b, k] · W[r, k]` of a multi-product launch.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemvSeg {
    pub w: WeightPtr,
    pub x: DevPtr,
    pub y: DevPtr,
    /// Optional: rows `r` with every `mask[b, r] <= 0` are skipped (y = 0).
    pub mask: DevPtr,
    pub rows: usize,
    pub k: usize,
    pub ldw: usize,
    pub ldx: usize,
    pub ldy: usize,
    pub ldm: usize,
    pub epi: Epilogue,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawSeg {
    w: u64,
    w2: u64,
    sc: u64,
    sc2: u64,
    x: u64,
    y: u64,
    mask: u64,
    aux: u64,
    rows: i32,
    k: i32,
    ldw: i32,
    ldx: i32,
    ldy: i32,
    ldm: i32,
    ldaux: i32,
    epi: i32,
    block_start: i32,
    fmt: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawGemvArgs {
    seg: [RawSeg; GEMV_MAX_SEGS],
    nseg: i32,
    batch: i32,
    cap: f32,
    rows_per_block: i32,
}

/// Bytes of the GEMV kernels' by-value argument (checked against the compiled kernels by
/// tests/cuda_kernels.rs).
#[doc(hidden)]
pub const GEMV_ARGS_BYTES: usize = std::mem::size_of::<RawGemvArgs>();

// SAFETY: plain C struct of integers and floats, laid out as `GemvArgs` in gemv.cu.
unsafe impl DeviceRepr for RawGemvArgs {}

fn i(v: usize) -> i32 {
    i32::try_from(v).expect("size fits in a 32-bit kernel argument")
}

/// The GEMV kernels: for one activation row one kernel for every weight format (a quantized
/// model's single-sequence step needs no extra launches); for 2 to 16 rows the tensor-core
/// kernels, one per format (`WeightFormat::code`), for up to 8 rows and for up to 16.
pub const GEMV_KERNEL_ONE: &str = "gemv_any_b1";
pub const GEMV_KERNELS: [[&str; 2]; 3] = [
    ["gemv_tc_bf16_b8", "gemv_tc_bf16_b16"],
    ["gemv_tc_q8_b8", "gemv_tc_q8_b16"],
    ["gemv_tc_q4k_b8", "gemv_tc_q4k_b16"],
];

/// The single-row kernel for one bf16 product whose rows it splits over several warps
/// (see [`RowBlock`]).
pub const GEMV_KERNEL_ROWBLOCK: &str = "gemv_rowblock_b1";

/// Which lone bf16 products of one activation row run on `gemv_rowblock_b1`, which splits
/// each output row over several warps (`GEMMA3N_CUDA_ROWBLOCK`: `0` for none, or
/// `ROWS,K[,WARPS[,RUN]]`), and over how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowBlock {
    /// Products of at most this many rows...
    pub max_rows: usize,
    /// ... of at least this many values.
    pub min_k: usize,
    /// Each row goes to the fewest warps (1, 2, 4 or 8) that make at least this many warps
    /// in all and give each warp at most `max_run` values of the row, or to 8.
    pub warps: usize,
    /// The longest run of a row one warp takes, where a split of 8 warps or fewer allows.
    pub max_run: usize,
}

impl RowBlock {
    /// Measured on an H200 (docs/perf.md): every lone bf16 product of up to 16384 rows of
    /// at least 2048 values; 16384 warps in all, each with at most 1024 values of its row
    /// (the down projection's 2048 rows go to 8 warps each, the gate and up rows of E2B and
    /// E4B, 2048 values, to 2).
    pub const DEFAULT: RowBlock = RowBlock {
        max_rows: 16384,
        min_k: 2048,
        warps: 16384,
        max_run: 1024,
    };
    pub const OFF: RowBlock = RowBlock {
        max_rows: 0,
        min_k: usize::MAX,
        warps: 0,
        max_run: 0,
    };

    /// From the value of `GEMMA3N_CUDA_ROWBLOCK` (unset or unreadable: the default).
    pub fn from_env(v: Option<&str>) -> RowBlock {
        if v == Some("0") {
            return RowBlock::OFF;
        }
        let parse = |v: &str| -> Option<RowBlock> {
            let mut it = v.split(',').map(|x| x.trim().parse::<usize>().ok());
            Some(RowBlock {
                max_rows: it.next()??,
                min_k: it.next()??,
                warps: it.next().unwrap_or(Some(RowBlock::DEFAULT.warps))?,
                max_run: it.next().unwrap_or(Some(RowBlock::DEFAULT.max_run))?,
            })
        };
        v.and_then(parse).unwrap_or(RowBlock::DEFAULT)
    }

    /// Output rows per block of `gemv_rowblock_b1` for product `s` (each row then goes to
    /// `GEMV_WARPS` / that many warps), or `None` when it does not go there: bf16, no
    /// mask, 16-byte-aligned rows and activations, each warp's run of values a multiple
    /// of 8.
    fn rows_per_block(self, s: &GemvSeg) -> Option<usize> {
        let pair_w = match s.epi {
            Epilogue::Pair(w2) => w2.w.0,
            _ => s.w.w.0,
        };
        let fits = s.w.fmt == WeightFormat::Bf16
            && s.mask.is_null()
            && s.rows <= self.max_rows
            && s.k >= self.min_k
            && s.ldw.is_multiple_of(8)
            && (s.w.w.0 | pair_w | s.x.0).is_multiple_of(16);
        if !fits {
            return None;
        }
        let ok = |wpr: usize| s.k.is_multiple_of(8 * wpr);
        let wpr = ROWBLOCK_SPLITS
            .into_iter()
            .find(|&w| ok(w) && s.rows * w >= self.warps && s.k <= w * self.max_run)
            .or_else(|| ROWBLOCK_SPLITS.into_iter().rev().find(|&w| ok(w)))?;
        Some(GEMV_WARPS / wpr)
    }
}

/// Warps per output row `gemv_rowblock_b1` can take (its blocks have `GEMV_WARPS`).
const ROWBLOCK_SPLITS: [usize; 4] = [1, 2, 4, 8];

/// Output rows and threads per block of a GEMV kernel (`gemv_rowblock_b1`: `rpb` rows).
fn gemv_block(name: &str, rpb: usize) -> (usize, usize) {
    if name == GEMV_KERNEL_ROWBLOCK {
        (rpb, GEMV_WARPS * 32)
    } else if name.starts_with("gemv_tc") {
        (TC_ROWS, TC_THREADS)
    } else {
        (GEMV_WARPS, GEMV_WARPS * 32)
    }
}

/// attention.cu's flash prefill kernels: (head dim, name). A block of `FA_THREADS` takes
/// `FA_ROWS` query rows of one head, or half as many of two heads that share a KV head.
pub(crate) const FLASH_HEAD_DIMS: [(usize, &str); 4] = [
    (16, "attention_flash_hd16"),
    (64, "attention_flash_hd64"),
    (128, "attention_flash_hd128"),
    (256, "attention_flash_hd256"),
];
const FA_ROWS: usize = 128;
const FA_KEYS: usize = 32;
const FA_THREADS: usize = 256;
/// The dynamic shared memory of the flash kernel for heads of `hd` (`FA_ROWS` query rows,
/// `FA_KEYS` key and value rows, of `hd + 8` bf16 values); set as its limit when the module
/// loads.
pub(crate) const fn flash_smem(hd: usize) -> usize {
    (FA_ROWS + 2 * FA_KEYS) * (hd + 8) * 2
}

/// Warps of a block of `ple_combine` (rows.cu's PLE_WARPS), one per (row, layer).
const PLE_WARPS: usize = 8;

/// Warps of a block of `qkv_prep` (attention.cu's QKV_WARPS), one per (head, row).
const QKV_WARPS: usize = 8;

/// Threads of a block of `ffn_act_split` (rows.cu's FFN_ACT_THREADS).
const FFN_ACT_THREADS: usize = 256;

/// Part `j` of a kernel's bf16 outputs, or null.
fn part_at(parts: &[DevPtr], j: usize) -> u64 {
    assert!(parts.len() <= 3, "at most 3 activation parts");
    parts.get(j).map_or(0, |p| p.0)
}

/// Query heads per flash block: two where the KV heads' groups allow (the keys and values a
/// block brings in serve both).
fn flash_heads_per_block(h: usize, g: usize) -> usize {
    if (h / g).is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// How the flash kernel shares out key tiles (see [`Gpu::flash_plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlashPlan {
    /// Runs of key tiles a row block is split into, at most (1: not split).
    pub nchunks: usize,
    /// Tiles per run, about.
    pub chunk: usize,
}

impl FlashPlan {
    /// Bytes of the partial results for `rows` query rows of `h` heads of `hd` values.
    pub fn scratch_bytes(&self, rows: usize, h: usize, hd: usize) -> usize {
        if self.nchunks > 1 {
            4 * rows * h * self.nchunks * (hd + 2)
        } else {
            0
        }
    }
}

/// How the flash kernel shares out the key tiles of `rows` query rows (the last `rows` of
/// `keys` positions, `h` query heads over `g` KV heads, `window` 0 for full attention) on
/// `sms` multiprocessors: whole rows per block when the longest rows are near the fair share
/// of a multiprocessor, else runs of about `chunk` tiles merged at the end (a long prompt's
/// full-attention layers: the last rows of 2048 read 2048 / 32 = 64 tiles, the first 2).
pub fn flash_plan(
    rows: usize,
    keys: usize,
    h: usize,
    g: usize,
    window: usize,
    sms: usize,
) -> FlashPlan {
    let hpb = flash_heads_per_block(h, g);
    let rpb = FA_ROWS / hpb;
    let pos0 = keys.saturating_sub(rows);
    let tiles = |b: usize| {
        let (lo, hi) = (pos0 + b * rpb, (pos0 + (b + 1) * rpb).min(keys).max(1) - 1);
        let first = if window > 0 {
            (lo + 1).saturating_sub(window)
        } else {
            0
        };
        (hi - (first - first % FA_KEYS)) / FA_KEYS + 1
    };
    let nrb = rows.div_ceil(rpb);
    let longest = (0..nrb).map(tiles).max().unwrap_or(1);
    let total = (0..nrb).map(tiles).sum::<usize>() * (h / hpb);
    let fair = total.div_ceil(sms.max(1));
    if 4 * longest <= 5 * fair {
        return FlashPlan {
            nchunks: 1,
            chunk: longest.max(1),
        };
    }
    let chunk = total.div_ceil(2 * sms.max(1)).max(8);
    FlashPlan {
        nchunks: longest.div_ceil(chunk),
        chunk,
    }
}

/// The flash kernel for heads of `hd` values, if there is one.
fn flash_kernel(hd: usize) -> Option<&'static str> {
    FLASH_HEAD_DIMS
        .iter()
        .find(|&&(d, _)| d == hd)
        .map(|&(_, name)| name)
}

/// rows.cu's TOPK_* sizes of `topk_f32`.
const TOPK_THREADS: usize = 512;
const TOPK_SPAN: usize = TOPK_THREADS * 8;
const TOPK_LOCAL: usize = 128;
const TOPK_MERGE_PER_THREAD: usize = 20;

/// Rows longer than this do not fit the register-resident row kernels (rows.cu: RPT = 8
/// values per thread, at most 256 threads, which keeps their registers within bounds).
pub const MAX_ROW: usize = 2048;

/// The AltUp row kernel `name` for `rows` rows: its decode form for a step's few rows, its
/// `_rows` form (registers bounded, two blocks per multiprocessor) for a prefill's many
/// (E4B, 2048 rows: `altup_predict` 100 -> 76 us, `post_ffn_correct` 91 -> 62 us).
fn row_kernel(name: &'static str, rows: usize) -> &'static str {
    const PREFILL_FORM: usize = 64;
    match (name, rows >= PREFILL_FORM) {
        (_, false) => name,
        ("altup_predict", true) => "altup_predict_rows",
        ("post_ffn_correct", true) => "post_ffn_correct_rows",
        _ => unreachable!("no prefill form of {name}"),
    }
}

/// Threads of a register-resident row kernel for rows of `d` values.
fn row_threads(d: usize) -> usize {
    assert!(
        d <= MAX_ROW,
        "row of {d} values is too long for the row kernels"
    );
    (d.div_ceil(8).div_ceil(32) * 32).clamp(32, 256)
}

/// persistent.cu's limits: threads of a block, products of a step, and the dynamic shared
/// memory a step's activations may take (set as the kernel's limit when the module loads).
const PK_THREADS: usize = 512;
/// Barriers a `decode_layers` trace holds (persistent.cu's PK_TRACE_MAX).
const PK_TRACE_MAX: usize = 512;
const PK_MAX_SEGS: usize = 4;
/// Most stages and steps of `products_chain_tma` (persistent.cu's PKT_MAX_STAGES,
/// PKT_MAX_STEPS).
const PKT_MAX_STAGES: usize = 64;
const PKT_MAX_STEPS: usize = 512;
/// Column chunks of 8 a block takes in the sparse down (persistent.cu's PK_DOWN_CHUNKS).
const PK_DOWN_CHUNKS: usize = 4;
pub(crate) const PK_MAX_SMEM: usize = 160 * 1024;
/// Room left for the kernels' static shared memory (`decode_layers`: 1.6 KB).
pub(crate) const PK_STATIC_SMEM: usize = 4096;

/// persistent.cu's `PkProducts`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawProducts {
    seg: [RawSeg; PK_MAX_SEGS],
    nseg: i32,
}

/// One layer of the persistent decode kernel (`decode_layers`): its bf16 matrices with
/// their row strides (in values), vectors, key/value cache and shape. See persistent.cu.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeLayer {
    /// q, k, v, o, gate, up, down, LAuReL left and right, per-layer input gate and
    /// projection (k and v null where the layer reads another layer's cache).
    pub mats: [(DevPtr, usize); 11],
    /// q_norm, k_norm, input_ln, post_attn_ln, pre_ffn_ln, post_ffn_ln, laurel_norm,
    /// router_norm, router, pred_coefs, corr_coefs, corr_scale (null: none), post_pl_norm,
    /// the layer's RoPE frequencies, its per-layer input row.
    pub vecs: [DevPtr; 15],
    /// The cache this layer reads (and writes when it owns it).
    pub kcache: DevPtr,
    pub vcache: DevPtr,
    /// FFN width.
    pub f: usize,
    /// The Gaussian top-k's z (activation sparsity).
    pub sparsity_z: Option<f32>,
    /// `down` is stored transposed (`[f, d]`).
    pub down_t: bool,
    pub own_kv: bool,
    /// Sliding window (0: full attention).
    pub window: usize,
}

/// persistent.cu's `PkLayer`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawPkLayer {
    mats: [u64; 11],
    vecs: [u64; 15],
    kv: [u64; 2],
    ld: [i32; 11],
    f: i32,
    sparse: i32,
    z: f32,
    own_kv: i32,
    window: i32,
    down_t: i32,
}

/// The activation buffers and shape of one persistent decode step (`decode_layers`; one
/// activation row). Buffer names as in persistent.cu's `PkStep`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeStep {
    /// The table from [`Gpu::decode_layers_table`] and its layer count.
    pub layers: DevPtr,
    pub nl: usize,
    /// s, t, pos, x, qkv, q, att, part, o, lr, h, p0, rc, gate, act, fo, pg, pq, the barrier
    /// counters (two u32, zeroed), the split counters (h u32, zeroed), and the norm weight
    /// of the injection pending at the first layer (null: none).
    pub bufs: [DevPtr; 21],
    /// Stride between the streams of s and t, in floats.
    pub ss: usize,
    /// d, heads, KV heads, head dim, per-layer input width, LAuReL rank.
    pub shape: [usize; 6],
    pub eps: f32,
    /// Null, or a buffer of [`Gpu::pk_trace_bytes`] where the kernel records when each
    /// block reached and left each barrier ([`Gpu::pk_trace_report`]).
    pub trace: DevPtr,
}

/// persistent.cu's `PkStep`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawPkStep {
    layers: u64,
    bufs: [u64; 21],
    ss: i64,
    nl: i32,
    shape: [i32; 6],
    eps: f32,
    trace: u64,
}

// SAFETY: plain C structs of integers and floats, laid out as in persistent.cu.
unsafe impl DeviceRepr for RawPkLayer {}

/// Bytes of persistent.cu's structs, for the kernel test to check against the PTX.
#[doc(hidden)]
pub const PK_STEP_BYTES: usize = std::mem::size_of::<RawPkStep>();
#[doc(hidden)]
pub const PK_LAYER_BYTES: usize = std::mem::size_of::<RawPkLayer>();

/// A product as the kernels take it (gemv.cu's `GemvSeg`), its blocks from `block_start`.
fn raw_seg(s: &GemvSeg, block_start: usize) -> RawSeg {
    let (epi, w2, aux, ldaux) = match s.epi {
        Epilogue::Plain => (0, WeightPtr::default(), 0, 0),
        Epilogue::Pair(w2) => {
            assert_eq!(w2.fmt, s.w.fmt, "the matrices of a pair share a format");
            (1, w2, 0, 0)
        }
        Epilogue::GeluAux(a, ld) => (2, WeightPtr::default(), a.0, ld),
        Epilogue::GeluAcc(a, ld) => (3, WeightPtr::default(), a.0, ld),
    };
    RawSeg {
        w: s.w.w.0,
        w2: w2.w.0,
        sc: s.w.sc.0,
        sc2: w2.sc.0,
        x: s.x.0,
        y: s.y.0,
        mask: s.mask.0,
        aux,
        rows: i(s.rows),
        k: i(s.k),
        ldw: i(s.ldw),
        ldx: i(s.ldx),
        ldy: i(s.ldy),
        ldm: i(s.ldm),
        ldaux: i(ldaux),
        epi,
        block_start: i(block_start),
        fmt: s.w.fmt.code(),
    }
}

/// A kernel argument.
enum KArg<'a> {
    U64(u64),
    I32(i32),
    F32(f32),
    Gemv(&'a mut RawGemvArgs),
    Step(&'a mut RawPkStep),
}

impl From<u64> for KArg<'_> {
    fn from(v: u64) -> Self {
        KArg::U64(v)
    }
}
impl From<i32> for KArg<'_> {
    fn from(v: i32) -> Self {
        KArg::I32(v)
    }
}
impl From<f32> for KArg<'_> {
    fn from(v: f32) -> Self {
        KArg::F32(v)
    }
}
impl<'a> From<&'a mut RawPkStep> for KArg<'a> {
    fn from(v: &'a mut RawPkStep) -> Self {
        KArg::Step(v)
    }
}
impl<'a> From<&'a mut RawGemvArgs> for KArg<'a> {
    fn from(v: &'a mut RawGemvArgs) -> Self {
        KArg::Gemv(v)
    }
}

/// Most parameters a kernel of kernels/ takes.
const MAX_KERNEL_ARGS: usize = 32;

/// Launches kernel `$name` with the given grid, block and arguments (each a value whose
/// reference is a kernel argument).
macro_rules! launch {
    ($gpu:expr, $name:expr, $grid:expr, $block:expr; $($arg:expr),* $(,)?) => {{
        let mut vals = [$(KArg::from($arg)),*];
        $gpu.launch_raw($name, $grid, $block, 0, &mut vals)
    }};
    ($gpu:expr, $name:expr, $grid:expr, $block:expr, smem $smem:expr; $($arg:expr),* $(,)?) => {{
        let mut vals = [$(KArg::from($arg)),*];
        $gpu.launch_raw($name, $grid, $block, $smem, &mut vals)
    }};
}

impl Gpu {
    /// Queues kernel `name`. With programmatic dependent launch (the default; off with
    /// `GEMMA3N_CUDA_PDL=0`) the kernel may start while the one before finishes: every
    /// kernel of kernels/ waits for its predecessor (`pdl_start`) before touching
    /// activations.
    fn launch_raw(
        &self,
        name: &'static str,
        grid: (usize, usize, usize),
        block: usize,
        smem: usize,
        vals: &mut [KArg<'_>],
    ) -> Result<()> {
        use cudarc::driver::sys;
        if self.skip.iter().any(|k| k == name) {
            return Ok(());
        }
        // No allocation per launch: the parameter pointers live on the stack.
        assert!(
            vals.len() <= MAX_KERNEL_ARGS,
            "{name}: too many kernel arguments"
        );
        let mut params = [std::ptr::null_mut::<std::ffi::c_void>(); MAX_KERNEL_ARGS];
        for (p, v) in params.iter_mut().zip(vals.iter_mut()) {
            *p = match v {
                KArg::U64(x) => x as *mut u64 as *mut std::ffi::c_void,
                KArg::I32(x) => x as *mut i32 as *mut std::ffi::c_void,
                KArg::F32(x) => x as *mut f32 as *mut std::ffi::c_void,
                KArg::Gemv(x) => &mut **x as *mut RawGemvArgs as *mut std::ffi::c_void,
                KArg::Step(x) => &mut **x as *mut RawPkStep as *mut std::ffi::c_void,
            };
        }
        let f = self.func(name).cu_function();
        self.timed(name, || {
            self.ctx.bind_to_thread().map_err(super::drv)?;
            // SAFETY: a zeroed attribute value is valid plain data; the field set is the
            // one its id selects.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            attr.id =
                sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attr.value.programmaticStreamSerializationAllowed = 1;
            let config = sys::CUlaunchConfig {
                gridDimX: grid.0 as u32,
                gridDimY: grid.1 as u32,
                gridDimZ: grid.2 as u32,
                blockDimX: block as u32,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem as u32,
                hStream: self.stream().cu_stream(),
                attrs: &mut attr,
                numAttrs: u32::from(self.pdl),
            };
            // SAFETY: `params` points at one value per kernel parameter, of the types and
            // in the order of the kernel's signature; the pointers among them are device
            // addresses of live buffers sized by the caller; `vals` outlives the call.
            unsafe { sys::cuLaunchKernelEx(&config, f, params.as_mut_ptr(), std::ptr::null_mut()) }
                .result()
                .map_err(|e| CudaError::Driver(format!("launching {name}: {e}")))
        })
    }
    /// Up to 4 independent products in one launch (decode: `batch` ≤ 16 activation rows).
    /// `cap > 0` soft-caps every output (`tanh(y / cap) · cap`). With more than one
    /// activation row, products of different weight formats go in separate launches (one
    /// kernel per format).
    pub fn gemv(&self, segs: &[GemvSeg], batch: usize, cap: f32) -> Result<()> {
        assert!((1..=GEMV_MAX_BATCH).contains(&batch), "gemv batch {batch}");
        if batch == 1 {
            if let [s] = segs {
                if let Some(rpb) = self.rowblock.rows_per_block(s) {
                    return self.gemv_launch(segs, GEMV_KERNEL_ROWBLOCK, batch, cap, rpb);
                }
            }
            return self.gemv_launches(segs, |_| true, GEMV_KERNEL_ONE, batch, cap);
        }
        for fmt in [WeightFormat::Bf16, WeightFormat::Q8, WeightFormat::Q4K] {
            let name = GEMV_KERNELS[fmt.code() as usize][usize::from(batch > 8)];
            self.gemv_launches(segs, |s| s.w.fmt == fmt, name, batch, cap)?;
        }
        Ok(())
    }

    /// Product `s` on `gemv_rowblock_b1` with each row split over `wpr` warps (1, 2, 4
    /// or 8), whatever `GEMMA3N_CUDA_ROWBLOCK` says (for the kernel checks: `s` must
    /// be a product that kernel takes, each warp's run of values a multiple of 8).
    pub fn gemv_rowblock(&self, s: &GemvSeg, wpr: usize, cap: f32) -> Result<()> {
        let any = RowBlock {
            max_rows: usize::MAX,
            min_k: 0,
            warps: 0,
            max_run: usize::MAX,
        };
        assert!(
            ROWBLOCK_SPLITS.contains(&wpr)
                && any.rows_per_block(s).is_some()
                && s.k.is_multiple_of(8 * wpr),
            "a product gemv_rowblock_b1 cannot take with rows split over {wpr} warps"
        );
        let rpb = GEMV_WARPS / wpr;
        self.gemv_launch(std::slice::from_ref(s), GEMV_KERNEL_ROWBLOCK, 1, cap, rpb)
    }

    /// The products `segs` selected by `keep`, through kernel `name`, up to
    /// `GEMV_MAX_SEGS` per launch.
    fn gemv_launches(
        &self,
        segs: &[GemvSeg],
        keep: impl Fn(&GemvSeg) -> bool,
        name: &'static str,
        batch: usize,
        cap: f32,
    ) -> Result<()> {
        let mut buf = [GemvSeg::default(); GEMV_MAX_SEGS];
        let mut n = 0;
        for s in segs.iter().filter(|s| keep(s)) {
            buf[n] = *s;
            n += 1;
            if n == GEMV_MAX_SEGS {
                self.gemv_launch(&buf[..n], name, batch, cap, 1)?;
                n = 0;
            }
        }
        if n > 0 {
            self.gemv_launch(&buf[..n], name, batch, cap, 1)?;
        }
        Ok(())
    }

    /// One launch of GEMV kernel `name` over at most `GEMV_MAX_SEGS` products
    /// (`gemv_rowblock_b1`: one product, `rpb` output rows per block; others ignore it).
    fn gemv_launch(
        &self,
        chunk: &[GemvSeg],
        name: &'static str,
        batch: usize,
        cap: f32,
        rpb: usize,
    ) -> Result<()> {
        let mut a = RawGemvArgs {
            nseg: chunk.len() as i32,
            batch: batch as i32,
            cap,
            rows_per_block: i(rpb),
            ..Default::default()
        };
        let (block_rows, threads) = gemv_block(name, rpb);
        let mut blocks = 0usize;
        for (r, s) in a.seg.iter_mut().zip(chunk) {
            *r = raw_seg(s, blocks);
            blocks += s.rows.div_ceil(block_rows);
        }
        if blocks == 0 {
            return Ok(());
        }
        let mut vals = [KArg::from(&mut a)];
        self.launch_raw(name, (blocks, 1, 1), threads, 0, &mut vals)
    }

    /// Uploads steps of products for [`Gpu::products_chain`] (each step up to
    /// `PK_MAX_SEGS` bf16 products of one activation row, plain, pair or gelu-times-aux;
    /// weight rows 16-byte aligned) and returns the table with the shared memory its
    /// largest step needs.
    pub fn products_table(
        self: &Arc<Self>,
        steps: &[Vec<GemvSeg>],
    ) -> Result<(DeviceBuffer, usize)> {
        let mut raw = Vec::with_capacity(steps.len());
        let mut smem = 0;
        for step in steps {
            assert!(
                (1..=PK_MAX_SEGS).contains(&step.len()),
                "a step of {} products",
                step.len()
            );
            let mut r = RawProducts {
                nseg: i(step.len()),
                ..Default::default()
            };
            let mut floats = 0;
            for (j, s) in step.iter().enumerate() {
                assert!(
                    s.w.fmt == WeightFormat::Bf16
                        && s.k.is_multiple_of(8)
                        && s.ldw.is_multiple_of(8)
                        && s.w.w.0.is_multiple_of(16)
                        && !matches!(s.epi, Epilogue::GeluAux(..))
                        && s.mask.is_null(),
                    "a product the persistent kernel cannot take"
                );
                let shared = j > 0 && step[j - 1].x == s.x && s.k <= step[j - 1].k;
                if !shared {
                    floats += s.k.next_multiple_of(8);
                }
                r.seg[j] = raw_seg(s, 0);
            }
            smem = smem.max(4 * floats);
            raw.push(r);
        }
        assert!(
            smem <= PK_MAX_SMEM,
            "a step's activations take {smem} bytes"
        );
        Ok((self.upload(&raw)?, smem))
    }

    /// Runs `n` steps of a table from [`Gpu::products_table`] in one persistent launch (one
    /// block per multiprocessor, a barrier across the grid between steps). `ctr`: two
    /// zeroed u32 counters, which the kernel leaves zeroed.
    pub fn products_chain(&self, table: DevPtr, n: usize, smem: usize, ctr: DevPtr) -> Result<()> {
        launch!(self, "products_chain", (self.sms, 1, 1), PK_THREADS, smem smem;
            table.0, i(n), ctr.0)
    }

    /// Whether `products_chain_tma` runs, its stage size and a cap on its stages: only when
    /// `GEMMA3N_CUDA_PKT=KB[,STAGES]` asks for it (an experiment: correct at every stage
    /// count, slower than a launch a step; docs/perf.md).
    fn pkt_config() -> Option<(usize, usize)> {
        let v = std::env::var("GEMMA3N_CUDA_PKT").ok()?;
        let mut it = v.split(',').map(|t| t.trim().parse::<usize>().ok());
        let kb = it
            .next()
            .flatten()
            .filter(|&k| (1..=128).contains(&k))
            .unwrap_or(16);
        let cap = it.next().flatten().unwrap_or(PKT_MAX_STAGES);
        Some((kb * 1024, cap.min(PKT_MAX_STAGES)))
    }

    /// Shared-memory stages `products_chain_tma` gets beside `smem` bytes of activations
    /// (0: it does not run: not asked for, no bulk copies before sm_90, or fewer than two
    /// stages fit).
    pub fn products_chain_tma_stages(&self, smem: usize) -> usize {
        let Some((stage, cap)) = Self::pkt_config() else {
            return 0;
        };
        let stages = (self.pk_smem.saturating_sub(smem) / stage).min(cap);
        if self.arch.0 >= 9 && stages >= 2 {
            stages
        } else {
            0
        }
    }

    /// [`Gpu::products_chain`] with the weights streamed through a ring of shared-memory
    /// stages by bulk copies (persistent.cu's `products_chain_tma`; see
    /// [`Gpu::products_chain_tma_stages`]).
    pub fn products_chain_tma(
        &self,
        table: DevPtr,
        n: usize,
        smem: usize,
        ctr: DevPtr,
    ) -> Result<()> {
        let stages = self.products_chain_tma_stages(smem);
        assert!(stages > 0, "no room for the bulk-copy stages");
        assert!(n <= PKT_MAX_STEPS, "a chain of {n} steps");
        let (stage, _) = Self::pkt_config().expect("asked for");
        launch!(self, "products_chain_tma", (self.sms, 1, 1), PK_THREADS,
            smem smem + stages * stage; table.0, i(n), i(stages), i(stage), ctr.0)
    }

    /// Uploads the layer table of [`Gpu::decode_layers`].
    pub fn decode_layers_table(self: &Arc<Self>, layers: &[DecodeLayer]) -> Result<DeviceBuffer> {
        let raw: Vec<RawPkLayer> = layers
            .iter()
            .map(|l| RawPkLayer {
                mats: l.mats.map(|(p, _)| p.0),
                vecs: l.vecs.map(|p| p.0),
                kv: [l.kcache.0, l.vcache.0],
                ld: l.mats.map(|(_, ld)| i(ld)),
                f: i(l.f),
                sparse: i32::from(l.sparsity_z.is_some()),
                z: l.sparsity_z.unwrap_or(0.0),
                own_kv: i32::from(l.own_kv),
                window: i(l.window),
                down_t: i32::from(l.down_t),
            })
            .collect();
        self.upload(&raw)
    }

    /// Shared memory `decode_layers` needs for hidden size `d`, head dim `hd`, `hq` query
    /// values (heads x head dim), LAuReL rank `r` and largest FFN width `fmax`.
    pub fn decode_layers_smem(d: usize, hd: usize, hq: usize, r: usize, fmax: usize) -> usize {
        4 * ((4 * d)
            .max(PK_THREADS / 32 * hd)
            .max(PK_THREADS / 32 * PK_DOWN_CHUNKS * 8)
            + d.max(hq.next_multiple_of(8) + r.next_multiple_of(8))
                .max(fmax))
    }

    /// Whether `decode_layers` can run a step of this shape: shared memory, head dim, the
    /// 8-value alignment of its rows, and the sparse down's column chunks.
    pub fn decode_layers_fit(&self, d: usize, hd: usize, hq: usize, r: usize, fmax: usize) -> bool {
        Gpu::decode_layers_smem(d, hd, hq, r, fmax) <= self.pk_smem
            && self.arch.0 >= 7
            && hd <= 256
            && hd.is_multiple_of(2)
            && d.is_multiple_of(8)
            && (d / 8).div_ceil(self.sms) <= PK_DOWN_CHUNKS
    }

    /// Bytes of a `decode_layers` trace (persistent.cu's PK_TRACE_MAX barriers).
    pub fn pk_trace_bytes(&self) -> usize {
        8 * (1 + PK_TRACE_MAX * (1 + 2 * self.sms))
    }

    /// What a `decode_layers` trace shows: per phase of a layer, the mean time from the
    /// barrier before to the one after, the blocks' median and longest work in it, and the
    /// time from the last block's arrival to the barrier's release.
    pub fn pk_trace_report(&self, trace: DevPtr) -> Result<String> {
        let g = self.sms;
        let mut t = vec![0u64; self.pk_trace_bytes() / 8];
        self.read_at(trace, &mut t)?;
        let n = (t[0] as usize).min(PK_TRACE_MAX);
        if n < 2 {
            return Ok("pk trace   (no barriers recorded)".into());
        }
        let at = |b: usize, blk: usize, k: usize| t[1 + PK_TRACE_MAX + (b * g + blk) * 2 + k];
        const NAMES: [&str; 10] = [
            "start",
            "q k v",
            "prep",
            "attend",
            "o",
            "gate up",
            "sparse up",
            "down",
            "pl gate",
            "pl proj",
        ];
        // Per phase: count, span, median work, longest work, release.
        let mut sums = [(0usize, 0f64, 0f64, 0f64, 0f64); 10];
        for b in 1..n {
            let ph = (t[1 + b] as usize).min(9);
            let mut work: Vec<f64> = (0..g)
                .map(|k| at(b, k, 0).saturating_sub(at(b - 1, k, 1)) as f64)
                .collect();
            work.sort_by(f64::total_cmp);
            let last_in = (0..g).map(|k| at(b, k, 0)).max().unwrap_or(0);
            let out = (0..g).map(|k| at(b, k, 1)).max().unwrap_or(0);
            let prev_out = (0..g).map(|k| at(b - 1, k, 1)).max().unwrap_or(0);
            let e = &mut sums[ph];
            e.0 += 1;
            e.1 += out.saturating_sub(prev_out) as f64;
            e.2 += work[g / 2];
            e.3 += work[g - 1];
            e.4 += out.saturating_sub(last_in) as f64;
        }
        let start = (0..g).map(|k| at(0, k, 0)).min().unwrap_or(0);
        let end = (0..g).map(|k| at(n - 1, k, 1)).max().unwrap_or(0);
        let mut r = format!(
            "pk trace   {} barriers, {:.1} us from the first block's start to the last release",
            n - 1,
            end.saturating_sub(start) as f64 / 1e3
        );
        for (ph, e) in sums.iter().enumerate().filter(|(_, e)| e.0 > 0) {
            let c = e.0 as f64 * 1e3;
            r += &format!(
                "\npk trace   {:<10} {:>3}x {:>7.2} us (work: median {:.2}, longest {:.2}; release {:.2}) = {:.0} us",
                NAMES[ph],
                e.0,
                e.1 / c,
                e.2 / c,
                e.3 / c,
                e.4 / c,
                e.1 / 1e3
            );
        }
        Ok(r)
    }

    /// The layers of a single-row decode step in one persistent launch (persistent.cu's
    /// `decode_layers`): one block per multiprocessor.
    pub fn decode_layers(&self, step: &DecodeStep, smem: usize) -> Result<()> {
        let mut raw = RawPkStep {
            layers: step.layers.0,
            bufs: step.bufs.map(|b| b.0),
            ss: step.ss as i64,
            nl: i(step.nl),
            shape: step.shape.map(i),
            eps: step.eps,
            trace: step.trace.0,
        };
        let mut vals = [KArg::from(&mut raw)];
        self.launch_raw(
            "decode_layers",
            (self.sms, 1, 1),
            PK_THREADS,
            smem,
            &mut vals,
        )
    }

    /// The same products for many activation rows on the tensor cores (cuBLAS, bf16 inputs,
    /// f32 accumulation and output). The activations are split into `parts.len()` (1 to 3)
    /// bf16 parts, `x = p0 + p1 + p2`, each multiplied and summed: one part is a bf16
    /// rounding, two keep about 16 bits, three about 24 (near f32). Each scratch buffer
    /// holds at least `batch · k` bf16 values.
    ///
    /// Quantized weights are first written to bf16 in pieces of rows (`wparts`: scratch
    /// buffers of `wcap` values, one per activation part), split into as many parts as the
    /// activations; the products of weight part i and activation part j with i + j below
    /// the number of parts are summed (three parts: near-f32 weights and activations).
    pub fn gemm(
        &self,
        s: &GemvSeg,
        batch: usize,
        parts: &[DevPtr],
        wparts: &[DevPtr],
        wcap: usize,
    ) -> Result<()> {
        self.split_bf16(s.x, s.ldx, parts, batch, s.k)?;
        self.gemm_parts(s, batch, parts, wparts, wcap)
    }

    /// [`Gpu::gemm`] on activations already split into `parts` (`batch` rows of `s.k`
    /// values each; `s.x` is not read).
    pub fn gemm_parts(
        &self,
        s: &GemvSeg,
        batch: usize,
        parts: &[DevPtr],
        wparts: &[DevPtr],
        wcap: usize,
    ) -> Result<()> {
        assert!(
            s.mask.is_null() && s.epi == Epilogue::Plain,
            "masked products and epilogues run on the gemv path"
        );
        if s.w.fmt == WeightFormat::Bf16 {
            for (j, &p) in parts.iter().enumerate() {
                let beta = if j == 0 { 0.0 } else { 1.0 };
                self.gemm_raw(
                    s.w.w, false, s.rows, s.ldw, p, s.k, batch, s.k, s.y, s.ldy, beta, false,
                )?;
            }
            return Ok(());
        }
        let np = parts.len();
        assert!(
            wparts.len() >= np && wcap >= s.k,
            "quantized GEMM without weight scratch"
        );
        let wp = |j: usize| if j < np { wparts[j] } else { DevPtr::NULL };
        let per = wcap / s.k;
        let mut r0 = 0;
        while r0 < s.rows {
            let n = per.min(s.rows - r0);
            let total = n * s.k;
            launch!(self, "weights_to_bf16", (total.div_ceil(256), 1, 1), 256;
                s.w.fmt.code(), s.w.w.0, s.w.sc.0, i(s.ldw), i(n), i(s.k), wp(0).0, wp(1).0,
                wp(2).0, i(s.k), i(r0))?;
            let y = s.y.add_f32(r0);
            let mut first = true;
            for wi in 0..np {
                for &p in &parts[..np - wi] {
                    let beta = if first { 0.0 } else { 1.0 };
                    first = false;
                    self.gemm_raw(
                        wp(wi),
                        false,
                        n,
                        s.k,
                        p,
                        s.k,
                        batch,
                        s.k,
                        y,
                        s.ldy,
                        beta,
                        false,
                    )?;
                }
            }
            r0 += n;
        }
        Ok(())
    }

    /// [`Gpu::gemm_parts`] with one activation part and bf16 weights, the result rounded to
    /// bf16: `s.y` holds bf16 values, rows of `s.ldy` of them (a prefill with bf16
    /// activations, whose next op reads bf16). Returns false, launching nothing, for
    /// weights of another format.
    pub fn gemm_bf16_out(&self, s: &GemvSeg, batch: usize, part: DevPtr) -> Result<bool> {
        assert!(
            s.mask.is_null() && s.epi == Epilogue::Plain,
            "masked products and epilogues run on the gemv path"
        );
        if s.w.fmt != WeightFormat::Bf16 {
            return Ok(false);
        }
        self.gemm_raw(
            s.w.w, false, s.rows, s.ldw, part, s.k, batch, s.k, s.y, s.ldy, 0.0, true,
        )?;
        Ok(true)
    }

    /// [`Gpu::gemm`] with a transposed weight (`wt` = `[k, rows]`, stride `ldw`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_t(
        &self,
        wt: DevPtr,
        rows: usize,
        ldw: usize,
        x: DevPtr,
        ldx: usize,
        batch: usize,
        k: usize,
        y: DevPtr,
        ldy: usize,
        parts: &[DevPtr],
    ) -> Result<()> {
        self.split_bf16(x, ldx, parts, batch, k)?;
        self.gemm_t_parts(wt, rows, ldw, batch, k, y, ldy, parts)
    }

    /// [`Gpu::gemm_t`] on activations already split into `parts` (`batch` rows of `k`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_t_parts(
        &self,
        wt: DevPtr,
        rows: usize,
        ldw: usize,
        batch: usize,
        k: usize,
        y: DevPtr,
        ldy: usize,
        parts: &[DevPtr],
    ) -> Result<()> {
        for (j, &p) in parts.iter().enumerate() {
            let beta = if j == 0 { 0.0 } else { 1.0 };
            self.gemm_raw(wt, true, rows, ldw, p, k, batch, k, y, ldy, beta, false)?;
        }
        Ok(())
    }

    /// `rows x n` f32 values to 1 to 3 packed bf16 parts.
    pub fn split_bf16(
        &self,
        x: DevPtr,
        ldx: usize,
        parts: &[DevPtr],
        rows: usize,
        n: usize,
    ) -> Result<()> {
        assert!((1..=3).contains(&parts.len()), "1 to 3 activation parts");
        // 8 values per thread, one row per grid row (at most 65535 rows a launch).
        let at = |j: usize, r0: usize| match parts.get(j) {
            Some(&q) => q.0 + 2 * (r0 * n) as u64,
            None => 0,
        };
        for r0 in (0..rows).step_by(65535) {
            let m = (rows - r0).min(65535);
            let xr = x.add_f32(r0 * ldx);
            launch!(self, "split_bf16_rows", (n.div_ceil(8 * 256), m, 1), 256;
                xr.0, i(ldx), at(0, r0), at(1, r0), at(2, r0), i(n), i(m), i(n))?;
        }
        Ok(())
    }

    /// `y = op(W) · xb (+ beta · y)` with bf16 `xb` (row stride `ldx`): `y[b, n] = Σ_k xb[b, k] · W(n, k)`;
    /// W is `[rows, k]` row-major with stride `ldw` (`transposed` = false), or stored as `Wᵀ`
    /// (`[k, rows]`, stride `ldw`; `transposed` = true). `y` is f32, or bf16 with `y_bf16`
    /// (sums in f32 either way).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_raw(
        &self,
        w: DevPtr,
        transposed: bool,
        rows: usize,
        ldw: usize,
        xb: DevPtr,
        ldx: usize,
        batch: usize,
        k: usize,
        y: DevPtr,
        ldy: usize,
        beta: f32,
        y_bf16: bool,
    ) -> Result<()> {
        // Column-major view: Yᵀ[rows, batch] = op(W) · Xᵀ[k, batch].
        let alpha = 1.0f32;
        let op = if transposed {
            blas::cublasOperation_t::CUBLAS_OP_N
        } else {
            blas::cublasOperation_t::CUBLAS_OP_T
        };
        let name = if transposed {
            "cublas_gemm_t"
        } else {
            "cublas_gemm"
        };
        // SAFETY: pointers are live device buffers of the sizes given by the caller.
        self.timed(name, || unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                op,
                blas::cublasOperation_t::CUBLAS_OP_N,
                i(rows),
                i(batch),
                i(k),
                &alpha as *const f32 as *const _,
                w.0 as *const _,
                blas::cudaDataType_t::CUDA_R_16BF,
                i(ldw),
                xb.0 as *const _,
                blas::cudaDataType_t::CUDA_R_16BF,
                i(ldx),
                &beta as *const f32 as *const _,
                y.0 as *mut _,
                if y_bf16 {
                    blas::cudaDataType_t::CUDA_R_16BF
                } else {
                    blas::cudaDataType_t::CUDA_R_32F
                },
                i(ldy),
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
            .map_err(|e| CudaError::Blas(format!("{e:?}")))
        })
    }

    /// Bytes of the two scratch buffers of [`Gpu::sparse_t`] for products of up to
    /// `units` x `ncols` and `batch` rows: (partial sums, counters). Zeroed when allocated;
    /// left zeroed.
    pub fn sparse_t_scratch_bytes(units: usize, ncols: usize, batch: usize) -> (usize, usize) {
        (
            4 * ncols * (units.div_ceil(TT_UNITS) * batch).max(sparse_rows_groups(units)),
            4 * ncols.div_ceil(64),
        )
    }

    /// [`Gpu::sparse_t`] for one activation row on the kernel that reads only the weight
    /// rows of the kept units (`a[i] ≠ 0`), whatever `GEMMA3N_CUDA_SPARSE_ROWS` says.
    /// Needs `ncols` and `ldw` multiples of 8 and a 16-byte-aligned `wt`. Overwrites `y`;
    /// the sums come in a fixed order.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_rows(
        &self,
        wt: DevPtr,
        ldw: usize,
        a: DevPtr,
        y: DevPtr,
        units: usize,
        ncols: usize,
        scratch: (DevPtr, DevPtr),
    ) -> Result<()> {
        assert!(
            sparse_rows_fits(wt, ldw, ncols),
            "sparse_rows: ncols {ncols}, ldw {ldw} and the matrix's address must allow 16-byte loads"
        );
        let grid = (ncols.div_ceil(SR_COLS), sparse_rows_groups(units), 1);
        let (part, cnt) = scratch;
        launch!(self, "sparse_rows_bf16", grid, SR_COLS;
            wt.0, i(ldw), a.0, y.0, i(units), i(ncols), part.0, cnt.0)
    }

    /// Sparse product with a transposed matrix (`wt` = `[units, ncols]` bf16, stride `ldw`):
    /// `y[b, c] = Σ_{i: a[b,i] ≠ 0} a[b, i] · wt[i, c]`. Overwrites `y`. `scratch`: the
    /// buffers of [`Gpu::sparse_t_scratch_bytes`], which make the tensor-core kernel's sums
    /// come in a fixed order (the same result on every run).
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_t(
        &self,
        wt: DevPtr,
        ldw: usize,
        a: DevPtr,
        lda: usize,
        y: DevPtr,
        ldy: usize,
        batch: usize,
        units: usize,
        ncols: usize,
        scratch: (DevPtr, DevPtr),
    ) -> Result<()> {
        assert!(
            (1..=GEMV_MAX_BATCH).contains(&batch),
            "sparse_t batch {batch}"
        );
        if batch == 1 && self.sparse_rows && sparse_rows_fits(wt, ldw, ncols) {
            return self.sparse_rows(wt, ldw, a, y, units, ncols, scratch);
        }
        // The tensor-core kernel (dense but for runs of 16 units no row keeps), also for one
        // row: its 256 blocks (E2B) read more bytes than the per-unit kernel's 16 but at
        // the bandwidth (E2B decode step 2.68 -> 2.62 ms); the per-unit kernel remains for
        // shapes the tensor-core loads cannot take.
        let tc = (ncols | ldw).is_multiple_of(8)
            && lda.is_multiple_of(2)
            && wt.0.is_multiple_of(16)
            && a.0.is_multiple_of(8);
        if tc {
            let grid = (ncols.div_ceil(64), units.div_ceil(TT_UNITS), 1);
            let (part, cnt) = scratch;
            return if batch <= 8 {
                launch!(self, "sparse_tc_bf16_b8", grid, TC_THREADS;
                    wt.0, i(ldw), a.0, i(lda), y.0, i(ldy), i(batch), i(units), i(ncols),
                    part.0, cnt.0)
            } else {
                launch!(self, "sparse_tc_bf16_b16", grid, TC_THREADS;
                    wt.0, i(ldw), a.0, i(lda), y.0, i(ldy), i(batch), i(units), i(ncols),
                    part.0, cnt.0)
            };
        }
        // The per-unit kernel adds into y (atomically: its sums' order may vary).
        self.timed("memset", || {
            if ldy == ncols {
                return self.zero(y, batch * ncols * 4);
            }
            for b in 0..batch {
                self.zero(y.add_f32(b * ldy), ncols * 4)?;
            }
            Ok(())
        })?;
        let per_block = if ncols.is_multiple_of(8) {
            256 * 8
        } else {
            256
        };
        let splits = units.div_ceil(512);
        // At most SPT_ROWS activation rows per launch.
        for r0 in (0..batch).step_by(SPT_ROWS) {
            let (a, y) = (a.add_f32(r0 * lda), y.add_f32(r0 * ldy));
            let n = SPT_ROWS.min(batch - r0);
            launch!(self, "sparse_t_bf16", (ncols.div_ceil(per_block), splits, 1), 256;
                wt.0, i(ldw), a.0, i(lda), y.0, i(ldy), i(n), i(units), i(ncols))?;
        }
        Ok(())
    }

    /// Blocks of [`Gpu::argmax`]; its scratch holds `ARGMAX_BLOCKS + 1` u64 values.
    pub const ARGMAX_BLOCKS: usize = 64;

    /// `out` (an i32) = the index of the largest of the `n` f32 values at `x` (the lowest
    /// index among equal values; NaN and -inf never win), or -1 when there is none.
    /// `scratch`: `8 · (ARGMAX_BLOCKS + 1)` bytes, zeroed when allocated and left zeroed.
    pub fn argmax(&self, x: DevPtr, n: usize, scratch: DevPtr, out: DevPtr) -> Result<()> {
        let done = scratch.0 + 8 * Self::ARGMAX_BLOCKS as u64;
        launch!(self, "argmax_f32", (Self::ARGMAX_BLOCKS, 1, 1), 256;
            x.0, i(n), scratch.0, done, out.0)
    }

    /// Most values [`Gpu::top_k`] searches (blocks of `TOPK_SPAN` values, each keeping at
    /// most `TOPK_LOCAL` candidates, all of which the last block must hold).
    pub const TOPK_MAX_VALUES: usize =
        TOPK_SPAN * (TOPK_THREADS * TOPK_MERGE_PER_THREAD / TOPK_LOCAL);
    /// Largest `k` of [`Gpu::top_k`].
    pub const TOPK_MAX_K: usize = 64;
    /// Most candidates [`Gpu::top_k`] returns.
    pub const TOPK_OUT: usize = 256;

    /// Bytes of the scratch buffer of [`Gpu::top_k`] over at most `n` values (zeroed when
    /// allocated, left zeroed; one buffer serves any shorter length too).
    pub fn top_k_scratch_bytes(n: usize) -> usize {
        4 * (2 + n.div_ceil(TOPK_SPAN) * (TOPK_LOCAL + 1))
    }

    /// The candidates of a top-`k` draw among the `n` f32 values at `x`: the `k` largest
    /// and every value tied with the `k`-th (NaN and -inf never). `out` receives `2 +
    /// 2 · TOPK_OUT` i32: their count, 1 when they did not all fit (more than `TOPK_OUT`,
    /// or many ties: read the values instead), then (f32 bits, index) pairs in no order.
    pub fn top_k(&self, x: DevPtr, n: usize, k: usize, scratch: DevPtr, out: DevPtr) -> Result<()> {
        assert!(
            (1..=Self::TOPK_MAX_K).contains(&k) && (1..=Self::TOPK_MAX_VALUES).contains(&n),
            "top_k of {k} among {n} values"
        );
        launch!(self, "topk_f32", (n.div_ceil(TOPK_SPAN), 1, 1), TOPK_THREADS;
            x.0, i(n), i(k), scratch.0, out.0)
    }

    /// `out[b] = table[ids[b]] · scale` (bf16 table of width d), or `over[b]` where
    /// `flag[b] ≠ 0` (flag may be null).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_rows(
        &self,
        ids: DevPtr,
        table: WeightPtr,
        d: usize,
        scale: f32,
        over: DevPtr,
        flag: DevPtr,
        out: DevPtr,
        rows: usize,
    ) -> Result<()> {
        launch!(self, "embed_rows", (rows, 1, 1), 256;
            ids.0, table.w.0, table.sc.0, table.fmt.code(), i(d), scale, over.0, flag.0, out.0)
    }

    /// Per-layer inputs from the projection `proj` and the host table rows `rows_in`
    /// (`rows x layers·p` each; bf16 when `rows_bf16`, else f32).
    #[allow(clippy::too_many_arguments)]
    pub fn ple_combine(
        &self,
        proj: DevPtr,
        rows_in: DevPtr,
        rows_bf16: bool,
        norm: DevPtr,
        out: DevPtr,
        rows: usize,
        layers: usize,
        p: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let items = layers * rows;
        launch!(self, "ple_combine", (items.div_ceil(PLE_WARPS), 1, 1), 32 * PLE_WARPS;
            proj.0, rows_in.0, i32::from(rows_bf16), norm.0, out.0, i(items), i(p),
            1.0f32 / (d as f32).sqrt(), (p as f32).sqrt(), eps)
    }

    /// Matches the magnitude of `n` blocks of `rows x d` (at `y + k·ys` floats) to `reference`.
    pub fn match_magnitude(
        &self,
        y: DevPtr,
        ys: usize,
        n: usize,
        reference: DevPtr,
        rows: usize,
        d: usize,
    ) -> Result<()> {
        launch!(self, "match_magnitude", (n, rows, 1), 256; y.0, ys as u64, reference.0, i(d))
    }

    /// AltUp predict and the input norm (see rows.cu), after the previous layer's PLE
    /// injection `inj` (null: none) is added to streams 1.. of `s`. Writes the active
    /// prediction to `pred` and the prediction coefficients to `rc` (`rows x 16`; see
    /// [`Gpu::post_ffn_correct`]). `x_parts`: where the normed input also goes as the bf16
    /// parts of the next GEMM (none: not written).
    #[allow(clippy::too_many_arguments)]
    pub fn altup_predict(
        &self,
        s: DevPtr,
        ss: usize,
        inj: DevPtr,
        w_inj: DevPtr,
        router_norm: DevPtr,
        router: DevPtr,
        coefs: DevPtr,
        in_norm: DevPtr,
        pred: DevPtr,
        rc: DevPtr,
        x: DevPtr,
        x_parts: &[DevPtr],
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let xp = |j| part_at(x_parts, j);
        launch!(self, row_kernel("altup_predict", rows), (rows, 1, 1), row_threads(d);
            s.0, ss as u64, inj.0, w_inj.0, router_norm.0, router.0, coefs.0, in_norm.0, pred.0,
            rc.0, x.0, xp(0), xp(1), xp(2), i(d), eps)
    }

    /// LAuReL's output, the residual merge after attention and the FFN input norm (see
    /// rows.cu); `y_parts` as `x_parts` of [`Gpu::altup_predict`].
    #[allow(clippy::too_many_arguments)]
    pub fn post_attention(
        &self,
        a: DevPtr,
        o: DevPtr,
        ldo: usize,
        w_pa: DevPtr,
        lr: DevPtr,
        w_lau: DevPtr,
        x: DevPtr,
        w_pf: DevPtr,
        h: DevPtr,
        y: DevPtr,
        y_parts: &[DevPtr],
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let yp = |j| part_at(y_parts, j);
        launch!(self, "post_attention", (rows, 1, 1), row_threads(d);
            a.0, o.0, i(ldo), w_pa.0, lr.0, w_lau.0, x.0, w_pf.0, h.0, y.0, yp(0), yp(1), yp(2),
            i(d), eps)
    }

    /// Gaussian top-k cutoff of `rows` gate rows of `f` values, in place.
    /// One activation row of a sparse layer's up product with the Gaussian top-k folded
    /// in: `act[u] = gelu(gate[u] - cut) · (up[u] · y)` for the units with `gate[u] > cut`
    /// (`cut` = mean + z · std of the `f` gate values), 0 for the others. `up`: bf16 rows of
    /// `k` values, `ldw` apart. Returns false (launching nothing) where the kernel cannot
    /// take the shapes or alignments; the caller then runs [`Gpu::sparsity_cutoff`] and a
    /// masked product.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_up_rows(
        &self,
        gate: DevPtr,
        up: WeightPtr,
        ldw: usize,
        y: DevPtr,
        k: usize,
        act: DevPtr,
        f: usize,
        z: f32,
    ) -> Result<bool> {
        let fits = up.fmt == WeightFormat::Bf16
            && f.is_multiple_of(4)
            && (k | ldw).is_multiple_of(8)
            && k <= SU_MAX_K
            && [gate, up.w, y].iter().all(|p| p.0.is_multiple_of(16));
        if !fits {
            return Ok(false);
        }
        launch!(self, "sparse_up_rows_bf16", (f.div_ceil(SU_UNITS), 1, 1), SU_THREADS;
            gate.0, up.w.0, i(ldw), y.0, i(k), act.0, i(f), z)?;
        Ok(true)
    }

    pub fn sparsity_cutoff(
        &self,
        g: DevPtr,
        ldg: usize,
        rows: usize,
        f: usize,
        z: f32,
    ) -> Result<()> {
        assert!(f <= 16 * 1024, "FFN width {f} > 16384");
        let threads = (f.div_ceil(16).div_ceil(32) * 32).clamp(32, 1024);
        launch!(self, "sparsity_cutoff", (rows, 1, 1), threads; g.0, i(ldg), i(f), z)
    }

    /// The FFN activation of `rows` prefill rows straight into the down product's bf16
    /// `parts` (rows of `f` values): `gelu(g') · u`, `g'` the gate after the Gaussian top-k
    /// cut-off with `z` (`None`: the gate itself). One pass instead of `sparsity_cutoff`,
    /// `gelu_mul` and the split. `g` and `u` hold f32 values, or bf16 with `in_bf16` (rows
    /// of `ldg` / `ldu` values either way). Returns false, launching nothing, for rows the
    /// kernel does not take (widths not a multiple of 4, unaligned rows).
    #[allow(clippy::too_many_arguments)]
    pub fn ffn_act_split(
        &self,
        g: DevPtr,
        ldg: usize,
        u: DevPtr,
        ldu: usize,
        in_bf16: bool,
        parts: &[DevPtr],
        rows: usize,
        f: usize,
        z: Option<f32>,
    ) -> Result<bool> {
        assert!((1..=3).contains(&parts.len()), "1 to 3 activation parts");
        // 16-byte (f32) or 8-byte (bf16) loads of 4 values.
        let (lds, align) = if in_bf16 { (2, 8) } else { (4, 16) };
        let fits = f.is_multiple_of(4)
            && (g.0 | u.0).is_multiple_of(align)
            && ((ldg | ldu) * lds).is_multiple_of(align as usize)
            && parts.iter().all(|p| p.0.is_multiple_of(8));
        if !fits {
            return Ok(false);
        }
        let part = |j| part_at(parts, j);
        let name = if in_bf16 {
            "ffn_act_split_bf16"
        } else {
            "ffn_act_split"
        };
        launch!(self, name, (rows, 1, 1), FFN_ACT_THREADS;
            g.0, i(ldg), u.0, i(ldu), part(0), part(1), part(2), i(f), i(f),
            i32::from(z.is_some()), z.unwrap_or(0.0))?;
        Ok(true)
    }

    /// `out = gelu(g) · u`.
    #[allow(clippy::too_many_arguments)]
    pub fn gelu_mul(
        &self,
        g: DevPtr,
        ldg: usize,
        u: DevPtr,
        ldu: usize,
        out: DevPtr,
        ldo: usize,
        rows: usize,
        f: usize,
    ) -> Result<()> {
        // 4 values per thread, one row per grid row (at most 65535 rows a launch).
        for r0 in (0..rows).step_by(65535) {
            let m = (rows - r0).min(65535);
            launch!(self, "gelu_mul", (f.div_ceil(4 * 256), m, 1), 256;
                g.add_f32(r0 * ldg).0, i(ldg), u.add_f32(r0 * ldu).0, i(ldu),
                out.add_f32(r0 * ldo).0, i(ldo), i(m), i(f))?;
        }
        Ok(())
    }

    /// The FFN residual, AltUp correct and the PLE gate input (see rows.cu): the
    /// predictions made again from the streams `s` and the coefficients `rc` of
    /// [`Gpu::altup_predict`], corrected into `p`. `v_parts` as `x_parts` of
    /// [`Gpu::altup_predict`].
    #[allow(clippy::too_many_arguments)]
    pub fn post_ffn_correct(
        &self,
        h: DevPtr,
        f: DevPtr,
        w_pf: DevPtr,
        s: DevPtr,
        rc: DevPtr,
        p: DevPtr,
        ss: usize,
        router_norm: DevPtr,
        router: DevPtr,
        coefs: DevPtr,
        out_scale: DevPtr,
        h2: DevPtr,
        v: DevPtr,
        v_parts: &[DevPtr],
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        let vp = |j| part_at(v_parts, j);
        launch!(self, row_kernel("post_ffn_correct", rows), (rows, 1, 1), row_threads(d);
            h.0, f.0, w_pf.0, s.0, rc.0, p.0, ss as u64, router_norm.0, router.0, coefs.0,
            out_scale.0, h2.0, v.0, vp(0), vp(1), vp(2), i(d), eps)
    }

    /// `g = gelu(g) · pi[:, off..off+p]` (pi rows of `lp` values); `g_parts` as `x_parts` of
    /// [`Gpu::altup_predict`].
    #[allow(clippy::too_many_arguments)]
    pub fn ple_gate(
        &self,
        g: DevPtr,
        pi: DevPtr,
        lp: usize,
        off: usize,
        p: usize,
        rows: usize,
        g_parts: &[DevPtr],
    ) -> Result<()> {
        let blocks = (rows * p).div_ceil(256).min(4096);
        let gp = |j| part_at(g_parts, j);
        launch!(self, "ple_gate", (blocks, 1, 1), 256;
            g.0, pi.0, i(lp), i(off), i(p), i(rows), gp(0), gp(1), gp(2))
    }

    /// Streams 1..n += RMSNorm(q) · w.
    #[allow(clippy::too_many_arguments)]
    pub fn ple_inject(
        &self,
        q: DevPtr,
        w: DevPtr,
        s: DevPtr,
        ss: usize,
        nstreams: usize,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "ple_inject", (rows, 1, 1), 256; q.0, w.0, s.0, ss as u64, i(nstreams), i(d), eps)
    }

    /// The final stream merge and norm (see rows.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn unembed_merge(
        &self,
        s0: DevPtr,
        y: DevPtr,
        ys: usize,
        ny: usize,
        w: DevPtr,
        out: DevPtr,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "unembed_merge", (rows, 1, 1), 256;
            s0.0, y.0, ys as u64, i(ny), w.0, out.0, i(d), eps)
    }

    /// Copies row `src` of `n` streams to row 0.
    pub fn keep_row(&self, s: DevPtr, ss: usize, n: usize, src: usize, d: usize) -> Result<()> {
        launch!(self, "keep_row", (1, 1, 1), 256; s.0, ss as u64, i(n), i(src), i(d))
    }

    /// q/k/v norms, RoPE and the cache write (see attention.cu). `own`: the layer writes
    /// its K/V (k and v follow q in each `qkv` row). `kv.rows` (not null): a table of each
    /// row's own (keys, values) pointers, for a step of several sequences.
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_prep(
        &self,
        qkv: DevPtr,
        ldqkv: usize,
        wq: DevPtr,
        wk: DevPtr,
        pos: DevPtr,
        inv_freq: DevPtr,
        q_out: DevPtr,
        kv: KvPtrs,
        own: bool,
        rows: usize,
        h: usize,
        g: usize,
        hd: usize,
        eps: f32,
    ) -> Result<()> {
        assert!(hd <= 256, "qkv_prep head_dim {hd} > 256");
        assert!(hd.is_multiple_of(2), "qkv_prep head_dim {hd} is odd");
        let heads = if own { h + 2 * g } else { h };
        launch!(self, "qkv_prep", ((heads * rows).div_ceil(QKV_WARPS), 1, 1), 32 * QKV_WARPS;
            qkv.0, i(ldqkv), wq.0, wk.0, pos.0, inv_freq.0, q_out.0, kv.k.0, kv.v.0,
            i(h), i(g), i(hd), eps, kv.rows.0, i(heads), i(rows))
    }

    /// Attention of `rows` query rows over a cache (`window` 0: full). With `nsplit > 1`,
    /// `part` holds `rows · h · nsplit · (hd + 2)` floats and `done` `rows · h` zeroed
    /// counters (left zeroed).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: DevPtr,
        kv: KvPtrs,
        pos: DevPtr,
        out: DevPtr,
        part: DevPtr,
        done: DevPtr,
        nsplit: usize,
        rows: usize,
        h: usize,
        g: usize,
        hd: usize,
        window: usize,
    ) -> Result<()> {
        assert!(hd <= 256, "attention head_dim {hd} > 256");
        launch!(self, "attention_decode", (h, rows, nsplit), ATT_WARPS * 32;
            q.0, kv.k.0, kv.v.0, pos.0, out.0, part.0, done.0, i(h), i(g), i(hd), i(window),
            kv.rows.0)
    }

    /// Attention of `rows` query rows of one sequence over `keys` cached positions with
    /// two f32 GEMMs per KV head (cuBLAS, batched over the query heads of the group) and a
    /// masked softmax between them: for prefills, where the rows share every key.
    /// `scores` holds `h · rows · keys` floats. With `tf32` the two GEMMs run on the tensor
    /// cores with their inputs rounded to TF32 (10-bit mantissas: for prefills whose other
    /// products take bf16 activations), else in full f32.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill(
        &self,
        tf32: bool,
        q: DevPtr,
        kcache: DevPtr,
        vcache: DevPtr,
        pos: DevPtr,
        out: DevPtr,
        scores: DevPtr,
        rows: usize,
        keys: usize,
        h: usize,
        g: usize,
        hd: usize,
        window: usize,
    ) -> Result<()> {
        if tf32 {
            self.set_math(blas::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH)?;
        }
        let r = (|| -> Result<()> {
            let group = h / g;
            let t = blas::cublasOperation_t::CUBLAS_OP_T;
            let n = blas::cublasOperation_t::CUBLAS_OP_N;
            let plane = rows * keys;
            for kv in 0..g {
                // Sᵀ[keys, rows] = K_gᵀ · Q_h (column-major), for each query head of the group.
                self.sgemm_batched(
                    "cublas_sgemm_qk",
                    (t, n),
                    (keys, rows, hd),
                    (kcache.add_f32(kv * hd), g * hd, 0),
                    (q.add_f32(kv * group * hd), h * hd, hd),
                    (scores.add_f32(kv * group * rows * keys), keys, plane),
                    group,
                )?;
            }
            launch!(self, "softmax_masked", (rows, h, 1), 256;
                scores.0, i(keys), i(rows), pos.0, i(window))?;
            for kv in 0..g {
                // Oᵀ[hd, rows] = V_gᵀ · Pᵀ (column-major), for each query head of the group.
                self.sgemm_batched(
                    "cublas_sgemm_pv",
                    (n, n),
                    (hd, rows, keys),
                    (vcache.add_f32(kv * hd), g * hd, 0),
                    (scores.add_f32(kv * group * rows * keys), keys, plane),
                    (out.add_f32(kv * group * hd), h * hd, hd),
                    group,
                )?;
            }
            Ok(())
        })();
        if tf32 {
            self.set_math(blas::cublasMath_t::CUBLAS_DEFAULT_MATH)?;
        }
        r
    }

    /// Whether [`Gpu::attention_flash`] takes heads of `hd` values on this GPU.
    pub fn flash_attention(&self, hd: usize) -> bool {
        self.flash && flash_kernel(hd).is_some()
    }

    /// How [`Gpu::attention_flash`] shares out the key tiles of `rows` query rows (the last
    /// `rows` of `keys` positions) on this GPU: see [`flash_plan`].
    pub fn flash_plan(
        &self,
        rows: usize,
        keys: usize,
        h: usize,
        g: usize,
        window: usize,
    ) -> FlashPlan {
        flash_plan(rows, keys, h, g, window, self.sms)
    }

    /// Prefill attention on the tensor cores, one kernel: q, k and v rounded to bf16, the
    /// softmax weights too, f32 sums (the precision of a prefill with bf16 activations).
    /// Arguments as for [`Gpu::attention_prefill`]; needs [`Gpu::flash_attention`]. With
    /// `out_bf16` the result is written as bf16 (the o projection's activations). `split`:
    /// scratch for the partial results of [`Gpu::flash_plan`]'s key runs, (buffer, its
    /// bytes, `rows` zeroed counters, left zeroed); without it, or when it is too small,
    /// each block takes all of its rows' keys.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_flash(
        &self,
        q: DevPtr,
        kcache: DevPtr,
        vcache: DevPtr,
        pos: DevPtr,
        out: DevPtr,
        out_bf16: bool,
        rows: usize,
        keys: usize,
        h: usize,
        g: usize,
        hd: usize,
        window: usize,
        split: Option<(DevPtr, usize, DevPtr)>,
    ) -> Result<()> {
        let name = flash_kernel(hd)
            .unwrap_or_else(|| panic!("no flash attention kernel for heads of {hd}"));
        let hpb = flash_heads_per_block(h, g);
        let mut plan = self.flash_plan(rows, keys, h, g, window);
        let (part, done) = match split {
            Some((part, bytes, done)) if plan.scratch_bytes(rows, h, hd) <= bytes => (part, done),
            _ => {
                plan.nchunks = 1;
                (DevPtr::NULL, DevPtr::NULL)
            }
        };
        let (out, outb) = if out_bf16 {
            (DevPtr::NULL, out)
        } else {
            (out, DevPtr::NULL)
        };
        let blocks = rows.div_ceil(FA_ROWS / hpb) * plan.nchunks * (h / hpb);
        launch!(self, name, (blocks, 1, 1), FA_THREADS, smem flash_smem(hd);
            q.0, kcache.0, vcache.0, pos.0, out.0, outb.0, part.0, done.0, i(rows), i(keys),
            i(h), i(g), i(window), i(hpb), i(plan.nchunks), i(plan.chunk))
    }

    /// The math mode of the cuBLAS handle's later calls.
    fn set_math(&self, mode: blas::cublasMath_t) -> Result<()> {
        // SAFETY: the handle is live; the mode is a valid enum value.
        unsafe { blas::cublasSetMathMode(*self.blas.handle(), mode) }
            .result()
            .map_err(|e| CudaError::Blas(format!("{e:?}")))
    }

    /// `batch` f32 GEMMs `C = op(A) · op(B)` (column-major, cuBLAS), operands given as
    /// (pointer, leading dimension, stride between the GEMMs of the batch).
    #[allow(clippy::too_many_arguments)]
    fn sgemm_batched(
        &self,
        name: &'static str,
        (ta, tb): (blas::cublasOperation_t, blas::cublasOperation_t),
        (m, n, k): (usize, usize, usize),
        (a, lda, sa): (DevPtr, usize, usize),
        (b, ldb, sb): (DevPtr, usize, usize),
        (c, ldc, sc): (DevPtr, usize, usize),
        batch: usize,
    ) -> Result<()> {
        let (one, zero) = (1.0f32, 0.0f32);
        self.timed(name, || {
            // SAFETY: the operands are live device buffers holding the strided matrices the
            // caller describes.
            unsafe {
                cudarc::cublas::result::sgemm_strided_batched(
                    *self.blas.handle(),
                    ta,
                    tb,
                    i(m),
                    i(n),
                    i(k),
                    &one,
                    a.0 as *const f32,
                    i(lda),
                    sa as i64,
                    b.0 as *const f32,
                    i(ldb),
                    sb as i64,
                    &zero,
                    c.0 as *mut f32,
                    i(ldc),
                    sc as i64,
                    i(batch),
                )
            }
            .map_err(|e| CudaError::Blas(format!("{e:?}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flash kernel and every prefill form of a row kernel is one the module loads, and
    /// each flash kernel's shared memory fits the 227 KB a block may opt into on sm_80/sm_90
    /// (past it the launch fails on the GPU only).
    #[test]
    fn launched_kernels_are_loaded_and_fit() {
        for (hd, name) in FLASH_HEAD_DIMS {
            assert!(super::super::KERNELS.contains(&name), "{name} not loaded");
            let bytes = flash_smem(hd);
            assert!(
                bytes <= 227 * 1024,
                "{name}: {bytes} bytes of shared memory"
            );
        }
        for name in ["altup_predict", "post_ffn_correct"] {
            for rows in [1, 16, 63, 64, 2048] {
                let k = row_kernel(name, rows);
                assert!(super::super::KERNELS.contains(&k), "{k} not loaded");
            }
            assert_eq!(
                row_kernel(name, 1),
                name,
                "a decode step keeps the decode form"
            );
        }
    }

    /// The persistent decode kernel takes both real shapes on an H200 (132 multiprocessors):
    /// their activations fit its shared memory, and the sparse down's 8-column chunks fit
    /// its 4 a block. (Past either, the decode step silently stays on the per-op kernels.)
    #[test]
    fn persistent_decode_takes_e2b_and_e4b() {
        // d, FFN width: E2B, E4B; 8 heads of 256, LAuReL rank 64.
        for (d, f) in [(2048, 8192), (2560, 16384)] {
            let smem = Gpu::decode_layers_smem(d, 256, 8 * 256, 64, f);
            assert!(smem <= PK_MAX_SMEM, "d {d}: {smem} bytes");
            assert!(smem + PK_STATIC_SMEM <= 227 * 1024, "d {d}: {smem} bytes");
            assert!((d / 8).div_ceil(132) <= PK_DOWN_CHUNKS, "d {d}");
        }
    }

    /// The flash kernel splits keys only where rows are unequal: a 2048-token prompt's
    /// full-attention layers (the last row block reads 64 tiles, the fair share of one of
    /// 132 multiprocessors is 32), not its 512-key sliding layers (18 tiles at most, all
    /// blocks alike) nor rows of fewer than 8 tiles; split runs stay near the fair share, and
    /// the partial results need room only when split.
    #[test]
    fn flash_plan_splits_only_unequal_rows() {
        // (rows, keys, window, sms): E4B/E2B heads, 8 query heads over 2 KV heads.
        let full = flash_plan(2048, 2048, 8, 2, 0, 132);
        assert!(full.nchunks > 1, "{full:?}");
        // 64 tiles for the longest rows; each run at most about a fair share.
        assert!(64usize.div_ceil(full.nchunks) <= 32, "{full:?}");
        assert_eq!(
            full.scratch_bytes(2048, 8, 256),
            4 * 2048 * 8 * full.nchunks * 258
        );
        for (rows, keys, window) in [(2048, 2048, 512), (100, 137, 0), (4096, 4096, 512)] {
            let p = flash_plan(rows, keys, 8, 2, window, 132);
            assert_eq!(
                p.nchunks, 1,
                "{rows} rows, {keys} keys, window {window}: {p:?}"
            );
            assert_eq!(p.scratch_bytes(rows, 8, 256), 0);
        }
        // 512 rows make 32 blocks for 132 multiprocessors: the longest rows' 16 tiles split.
        assert!(flash_plan(512, 512, 8, 2, 0, 132).nchunks > 1);
    }

    /// A lone bf16 product of `rows` rows of `k` values at 16-byte-aligned addresses.
    fn product(rows: usize, k: usize) -> GemvSeg {
        GemvSeg {
            w: WeightPtr {
                w: DevPtr(1 << 20),
                ..Default::default()
            },
            x: DevPtr(1 << 21),
            y: DevPtr(1 << 22),
            rows,
            k,
            ldw: k,
            ldx: k,
            ldy: rows,
            ..Default::default()
        }
    }

    #[test]
    fn rowblock_setting_reads_the_environment_value() {
        assert_eq!(RowBlock::from_env(None), RowBlock::DEFAULT);
        assert_eq!(RowBlock::from_env(Some("0")), RowBlock::OFF);
        assert_eq!(RowBlock::from_env(Some("junk")), RowBlock::DEFAULT);
        let two = RowBlock::from_env(Some("2048, 1024"));
        assert_eq!((two.max_rows, two.min_k), (2048, 1024));
        assert_eq!(two.warps, RowBlock::DEFAULT.warps);
        let three = RowBlock::from_env(Some("100,200,300"));
        assert_eq!((three.max_rows, three.min_k, three.warps), (100, 200, 300));
        assert_eq!(three.max_run, RowBlock::DEFAULT.max_run);
        let four = RowBlock::from_env(Some("100,200,300,400"));
        assert_eq!(four.max_run, 400);
    }

    #[test]
    fn rowblock_splits_rows_over_the_fewest_warps_that_fill_the_target() {
        let rb = RowBlock {
            max_rows: 16384,
            min_k: 2048,
            warps: 16384,
            max_run: 1024,
        };
        // Rows per block of GEMV_WARPS warps: 1 row over 8 warps, 4 over 2, 8 over 1.
        assert_eq!(rb.rows_per_block(&product(2048, 16384)), Some(1));
        assert_eq!(rb.rows_per_block(&product(8192, 2048)), Some(4));
        // 16384 rows fill the target at one warp each, but 2048 values a warp is too long.
        assert_eq!(rb.rows_per_block(&product(16384, 2048)), Some(4));
        let long_runs = RowBlock {
            max_run: usize::MAX,
            ..rb
        };
        assert_eq!(long_runs.rows_per_block(&product(16384, 2048)), Some(8));
        // Too few rows for the target even at 8 warps each: 8.
        assert_eq!(rb.rows_per_block(&product(256, 2048)), Some(1));
        // Each warp's run must be a multiple of 8 values: 2056 splits over 1 warp only.
        assert_eq!(rb.rows_per_block(&product(256, 2056)), Some(8));
        // Outside the setting, masked, quantized or misaligned: the one-warp kernel.
        assert_eq!(rb.rows_per_block(&product(16385, 2048)), None);
        assert_eq!(rb.rows_per_block(&product(2048, 1024)), None);
        let mut masked = product(2048, 2048);
        masked.mask = DevPtr(1 << 23);
        assert_eq!(rb.rows_per_block(&masked), None);
        let mut q8 = product(2048, 2048);
        q8.w.fmt = WeightFormat::Q8;
        assert_eq!(rb.rows_per_block(&q8), None);
        let mut odd = product(2048, 2048);
        odd.x = DevPtr((1 << 21) + 4);
        assert_eq!(rb.rows_per_block(&odd), None);
        assert_eq!(RowBlock::OFF.rows_per_block(&product(256, 2048)), None);
    }
}
