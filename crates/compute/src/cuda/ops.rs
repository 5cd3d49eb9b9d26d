//! The op set of the CUDA backend: one method per kernel (plus cuBLAS GEMMs), each queued
//! on the GPU's stream. Pointers are [`DevPtr`]s into live buffers; sizes are in elements
//! and strides ("ld") in elements between consecutive rows.

use cudarc::cublas::sys as blas;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::{CudaError, DevPtr, Gpu, Result};

/// Output rows per block of `gemv_bf16` (one warp each).
const GEMV_WARPS: usize = 8;
/// Activation rows `gemv_bf16` and `sparse_t_bf16` take at once.
pub const GEMV_MAX_BATCH: usize = 8;
const GEMV_MAX_SEGS: usize = 4;
/// Key splits of decode attention for one row (each split a block).
const ATT_WARPS: usize = 4;

/// One product `y[b, r] = Σ_k x[b, k] · W[r, k]` of a multi-product launch, W bf16.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemvSeg {
    pub w: DevPtr,
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
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawSeg {
    w: u64,
    x: u64,
    y: u64,
    mask: u64,
    rows: i32,
    k: i32,
    ldw: i32,
    ldx: i32,
    ldy: i32,
    ldm: i32,
    block_start: i32,
    pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawGemvArgs {
    seg: [RawSeg; GEMV_MAX_SEGS],
    nseg: i32,
    batch: i32,
    cap: f32,
    pad: i32,
}

// SAFETY: plain C struct of integers and floats, laid out as `GemvArgs` in gemv.cu.
unsafe impl DeviceRepr for RawGemvArgs {}

fn i(v: usize) -> i32 {
    i32::try_from(v).expect("size fits in a 32-bit kernel argument")
}

fn cfg(grid: (usize, usize, usize), block: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0 as u32, grid.1 as u32, grid.2 as u32),
        block_dim: (block as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel argument.
enum KArg {
    U64(u64),
    I32(i32),
    F32(f32),
    Gemv(Box<RawGemvArgs>),
}

impl From<u64> for KArg {
    fn from(v: u64) -> KArg {
        KArg::U64(v)
    }
}
impl From<i32> for KArg {
    fn from(v: i32) -> KArg {
        KArg::I32(v)
    }
}
impl From<f32> for KArg {
    fn from(v: f32) -> KArg {
        KArg::F32(v)
    }
}
impl From<RawGemvArgs> for KArg {
    fn from(v: RawGemvArgs) -> KArg {
        KArg::Gemv(Box::new(v))
    }
}

/// Launches kernel `$name` with the given grid, block and arguments (each a value whose
/// reference is a kernel argument).
macro_rules! launch {
    ($gpu:expr, $name:literal, $grid:expr, $block:expr; $($arg:expr),* $(,)?) => {{
        let vals: Vec<KArg> = vec![$(KArg::from($arg)),*];
        let f = $gpu.func($name);
        let mut b = $gpu.stream().launch_builder(f);
        for v in &vals {
            match v {
                KArg::U64(x) => b.arg(x),
                KArg::I32(x) => b.arg(x),
                KArg::F32(x) => b.arg(x),
                KArg::Gemv(x) => b.arg(&**x),
            };
        }
        // SAFETY: the arguments match the kernel's parameter list (types and order), and
        // the pointers are device addresses of live buffers sized by the caller.
        unsafe { b.launch(cfg($grid, $block)) }
            .map(|_| ())
            .map_err(|e| CudaError::Driver(format!("launching {}: {e}", $name)))
    }};
}

impl Gpu {
    /// Up to 4 independent products in one launch (decode: `batch` ≤ 8 activation rows).
    /// `cap > 0` soft-caps every output (`tanh(y / cap) · cap`).
    pub fn gemv(&self, segs: &[GemvSeg], batch: usize, cap: f32) -> Result<()> {
        assert!((1..=GEMV_MAX_BATCH).contains(&batch), "gemv batch {batch}");
        for chunk in segs.chunks(GEMV_MAX_SEGS) {
            let mut a = RawGemvArgs {
                nseg: chunk.len() as i32,
                batch: batch as i32,
                cap,
                ..Default::default()
            };
            let mut blocks = 0usize;
            for (r, s) in a.seg.iter_mut().zip(chunk) {
                *r = RawSeg {
                    w: s.w.0,
                    x: s.x.0,
                    y: s.y.0,
                    mask: s.mask.0,
                    rows: i(s.rows),
                    k: i(s.k),
                    ldw: i(s.ldw),
                    ldx: i(s.ldx),
                    ldy: i(s.ldy),
                    ldm: i(s.ldm),
                    block_start: i(blocks),
                    pad: 0,
                };
                blocks += s.rows.div_ceil(GEMV_WARPS);
            }
            if blocks == 0 {
                continue;
            }
            launch!(self, "gemv_bf16", (blocks, 1, 1), GEMV_WARPS * 32; a)?;
        }
        Ok(())
    }

    /// The same products for many activation rows on the tensor cores (cuBLAS, bf16 inputs,
    /// f32 accumulation and output). `scratch` holds at least `batch · k` bf16 values; with
    /// `lo` (as large) the activations are split as `x = hi + lo` in two bf16 parts and both
    /// multiplied (near-f32 precision, twice the work).
    pub fn gemm(
        &self,
        s: &GemvSeg,
        batch: usize,
        scratch: DevPtr,
        lo: Option<DevPtr>,
    ) -> Result<()> {
        assert!(s.mask.is_null(), "masked products run on the gemv path");
        self.split_bf16(s.x, s.ldx, scratch, lo, batch, s.k)?;
        self.gemm_raw(
            s.w, false, s.rows, s.ldw, scratch, s.k, batch, s.k, s.y, s.ldy, 0.0,
        )?;
        if let Some(lo) = lo {
            self.gemm_raw(
                s.w, false, s.rows, s.ldw, lo, s.k, batch, s.k, s.y, s.ldy, 1.0,
            )?;
        }
        Ok(())
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
        scratch: DevPtr,
        lo: Option<DevPtr>,
    ) -> Result<()> {
        self.split_bf16(x, ldx, scratch, lo, batch, k)?;
        self.gemm_raw(wt, true, rows, ldw, scratch, k, batch, k, y, ldy, 0.0)?;
        if let Some(lo) = lo {
            self.gemm_raw(wt, true, rows, ldw, lo, k, batch, k, y, ldy, 1.0)?;
        }
        Ok(())
    }

    /// `rows x n` f32 values to packed bf16 `hi` (and `lo = x - hi` when given).
    fn split_bf16(
        &self,
        x: DevPtr,
        ldx: usize,
        hi: DevPtr,
        lo: Option<DevPtr>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let total = rows * n;
        launch!(self, "split_bf16_rows", (total.div_ceil(256), 1, 1), 256;
            x.0, i(ldx), hi.0, lo.unwrap_or(DevPtr::NULL).0, i(n), i(rows), i(n))
    }

    /// `y = op(W) · xb (+ beta · y)` with bf16 `xb` (row stride `ldx`): `y[b, n] = Σ_k xb[b, k] · W(n, k)`;
    /// W is `[rows, k]` row-major with stride `ldw` (`transposed` = false), or stored as `Wᵀ`
    /// (`[k, rows]`, stride `ldw`; `transposed` = true).
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
    ) -> Result<()> {
        // Column-major view: Yᵀ[rows, batch] = op(W) · Xᵀ[k, batch].
        let alpha = 1.0f32;
        let op = if transposed {
            blas::cublasOperation_t::CUBLAS_OP_N
        } else {
            blas::cublasOperation_t::CUBLAS_OP_T
        };
        // SAFETY: pointers are live device buffers of the sizes given by the caller.
        unsafe {
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
                blas::cudaDataType_t::CUDA_R_32F,
                i(ldy),
                blas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Blas(format!("{e:?}")))
    }

    /// Sparse product with a transposed matrix (`wt` = `[units, ncols]` bf16, stride `ldw`):
    /// `y[b, c] = Σ_{i: a[b,i] ≠ 0} a[b, i] · wt[i, c]`. Overwrites `y`.
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
    ) -> Result<()> {
        assert!(
            (1..=GEMV_MAX_BATCH).contains(&batch),
            "sparse_t batch {batch}"
        );
        for b in 0..batch {
            self.zero(y.add_f32(b * ldy), ncols * 4)?;
        }
        let per_block = if ncols.is_multiple_of(8) {
            256 * 8
        } else {
            256
        };
        let splits = units.div_ceil(64).clamp(1, 256);
        launch!(self, "sparse_t_bf16", (ncols.div_ceil(per_block), splits, 1), 256;
            wt.0, i(ldw), a.0, i(lda), y.0, i(ldy), i(batch), i(units), i(ncols))
    }

    /// `out[b] = table[ids[b]] · scale` (bf16 table of width d), or `over[b]` where
    /// `flag[b] ≠ 0` (flag may be null).
    #[allow(clippy::too_many_arguments)]
    pub fn embed_rows(
        &self,
        ids: DevPtr,
        table: DevPtr,
        d: usize,
        scale: f32,
        over: DevPtr,
        flag: DevPtr,
        out: DevPtr,
        rows: usize,
    ) -> Result<()> {
        launch!(self, "embed_rows", (rows, 1, 1), 256;
            ids.0, table.0, i(d), scale, over.0, flag.0, out.0)
    }

    /// Per-layer inputs from the projection `proj` and the host table rows `rows_in`
    /// (`rows x layers·p` each).
    #[allow(clippy::too_many_arguments)]
    pub fn ple_combine(
        &self,
        proj: DevPtr,
        rows_in: DevPtr,
        norm: DevPtr,
        out: DevPtr,
        rows: usize,
        layers: usize,
        p: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "ple_combine", (layers, rows, 1), 32 * p.div_ceil(32).min(8);
            proj.0, rows_in.0, norm.0, out.0, i(layers * p), i(p),
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

    /// AltUp predict and the input norm (see rows.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn altup_predict(
        &self,
        s: DevPtr,
        ss: usize,
        router_norm: DevPtr,
        router: DevPtr,
        coefs: DevPtr,
        in_norm: DevPtr,
        pred: DevPtr,
        x: DevPtr,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "altup_predict", (rows, 1, 1), 256;
            s.0, ss as u64, router_norm.0, router.0, coefs.0, in_norm.0, pred.0, x.0, i(d), eps)
    }

    /// `out = add + RMSNorm(x) · w` per row.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_add(
        &self,
        x: DevPtr,
        ldx: usize,
        w: DevPtr,
        add: DevPtr,
        out: DevPtr,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "rms_norm_add", (rows, 1, 1), 256; x.0, i(ldx), w.0, add.0, out.0, i(d), eps)
    }

    /// The residual merge after attention and the FFN input norm (see rows.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn post_attention(
        &self,
        a: DevPtr,
        o: DevPtr,
        ldo: usize,
        w_pa: DevPtr,
        lau: DevPtr,
        w_pf: DevPtr,
        h: DevPtr,
        y: DevPtr,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "post_attention", (rows, 1, 1), 256;
            a.0, o.0, i(ldo), w_pa.0, lau.0, w_pf.0, h.0, y.0, i(d), eps)
    }

    /// Gaussian top-k cutoff of `rows` gate rows of `f` values, in place.
    pub fn sparsity_cutoff(
        &self,
        g: DevPtr,
        ldg: usize,
        rows: usize,
        f: usize,
        z: f32,
    ) -> Result<()> {
        launch!(self, "sparsity_cutoff", (rows, 1, 1), 256; g.0, i(ldg), i(f), z)
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
        let blocks = (rows * f).div_ceil(256).min(4096);
        launch!(self, "gelu_mul", (blocks, 1, 1), 256;
            g.0, i(ldg), u.0, i(ldu), out.0, i(ldo), i(rows), i(f))
    }

    /// The FFN residual, AltUp correct and the PLE gate input (see rows.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn post_ffn_correct(
        &self,
        h: DevPtr,
        f: DevPtr,
        w_pf: DevPtr,
        p: DevPtr,
        ss: usize,
        router_norm: DevPtr,
        router: DevPtr,
        coefs: DevPtr,
        out_scale: DevPtr,
        h2: DevPtr,
        v: DevPtr,
        rows: usize,
        d: usize,
        eps: f32,
    ) -> Result<()> {
        launch!(self, "post_ffn_correct", (rows, 1, 1), 256;
            h.0, f.0, w_pf.0, p.0, ss as u64, router_norm.0, router.0, coefs.0, out_scale.0,
            h2.0, v.0, i(d), eps)
    }

    /// `g = gelu(g) · pi[:, off..off+p]` (pi rows of `lp` values).
    pub fn ple_gate(
        &self,
        g: DevPtr,
        pi: DevPtr,
        lp: usize,
        off: usize,
        p: usize,
        rows: usize,
    ) -> Result<()> {
        let blocks = (rows * p).div_ceil(256).min(4096);
        launch!(self, "ple_gate", (blocks, 1, 1), 256; g.0, pi.0, i(lp), i(off), i(p), i(rows))
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
    /// its K/V (k and v follow q in each `qkv` row).
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
        kcache: DevPtr,
        vcache: DevPtr,
        own: bool,
        rows: usize,
        h: usize,
        g: usize,
        hd: usize,
        eps: f32,
    ) -> Result<()> {
        let heads = if own { h + 2 * g } else { h };
        launch!(self, "qkv_prep", (heads, rows, 1), 128;
            qkv.0, i(ldqkv), wq.0, wk.0, pos.0, inv_freq.0, q_out.0, kcache.0, vcache.0,
            i(h), i(g), i(hd), eps)
    }

    /// Attention of `rows` query rows over a cache (`window` 0: full). `part` holds
    /// `rows · h · nsplit · (hd + 2)` floats when `nsplit > 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: DevPtr,
        kcache: DevPtr,
        vcache: DevPtr,
        pos: DevPtr,
        out: DevPtr,
        part: DevPtr,
        nsplit: usize,
        rows: usize,
        h: usize,
        g: usize,
        hd: usize,
        window: usize,
    ) -> Result<()> {
        assert!(hd <= 256, "attention head_dim {hd} > 256");
        launch!(self, "attention_decode", (h, rows, nsplit), ATT_WARPS * 32;
            q.0, kcache.0, vcache.0, pos.0, out.0, part.0, i(h), i(g), i(hd), i(window))?;
        if nsplit > 1 {
            launch!(self, "attention_combine", (h, rows, 1), 128; part.0, out.0, i(h), i(hd), i(nsplit))?;
        }
        Ok(())
    }
}
