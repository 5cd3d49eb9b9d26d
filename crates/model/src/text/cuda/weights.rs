//! The text decoder's weights on the GPU: every matrix in bf16, or in its own values for
//! the block formats the GPU kernels read (Q8_0, Q4_K: exact, repacked for aligned loads),
//! the norm vectors and AltUp coefficients in f32. The per-layer embedding table is not
//! uploaded: it stays in host memory (the mmap'd checkpoint) and only the rows of the
//! current tokens travel.

use std::sync::Arc;

use gemma3n_compute::cuda::{DevPtr, DeviceBuffer, Gpu, WeightFormat, WeightPtr};
use gemma3n_compute::{DType, Matrix};
use rayon::prelude::*;

use super::gpu_err;
use crate::error::{ModelError, Result};
use crate::text::weights::{LayerWeights, TextWeights};

/// A row-major matrix on the device: a buffer of its own, or rows of a buffer it shares with
/// the matrices stacked above and below it (see [`DevMatrix::upload_stacked`]).
pub struct DevMatrix {
    buf: Arc<DeviceBuffer>,
    /// Where the values start in `buf`, in bytes.
    offset: usize,
    /// Bytes of the values.
    len: usize,
    /// The scales of a quantized format.
    sc: Option<DeviceBuffer>,
    fmt: WeightFormat,
    /// Row length (the stride of the rows, in values).
    pub cols: usize,
}

/// The device format `m` is uploaded in: its own values for Q8_0 and Q4_K (unless
/// `GEMMA3N_CUDA_BF16_WEIGHTS=1`), bf16 otherwise.
pub fn device_format(m: &Matrix) -> WeightFormat {
    let packed = m.row_stride_bytes() == m.dtype().row_bytes(m.cols());
    let forced = std::env::var_os("GEMMA3N_CUDA_BF16_WEIGHTS").is_some_and(|v| v == "1");
    match m.dtype() {
        DType::Q8_0 if packed && !forced => WeightFormat::Q8,
        DType::Q4_K if packed && !forced => WeightFormat::Q4K,
        _ => WeightFormat::Bf16,
    }
}

/// Q8_0 rows as the GPU reads them: the int8 values (`[rows, cols]`) and the f16 scales
/// (`[rows, cols / 32]`, raw bits).
pub fn repack_q8(m: &Matrix) -> (Vec<u8>, Vec<u16>) {
    let (rows, cols) = (m.rows(), m.cols());
    let nb = cols / 32;
    let mut q = vec![0u8; rows * cols];
    let mut sc = vec![0u16; rows * nb];
    q.par_chunks_mut(cols)
        .zip(sc.par_chunks_mut(nb))
        .enumerate()
        .for_each(|(r, (q, sc))| {
            for (b, blk) in m.row_bytes(r).chunks_exact(34).take(nb).enumerate() {
                sc[b] = u16::from_le_bytes([blk[0], blk[1]]);
                q[32 * b..32 * b + 32].copy_from_slice(&blk[2..34]);
            }
        });
    (q, sc)
}

/// Bytes of one Q4_K super-block's scales on the device (common.cu's `Q4KMeta`).
pub const Q4K_META_BYTES: usize = 20;

/// Q4_K rows as the GPU reads them: per 32-value sub-block 16 bytes (value j in the low
/// nibble of byte j, value j + 16 in the high one; `[rows, cols / 2]`), and per 256-value
/// super-block its `d`, `dmin` (f16 bits) and the unpacked 6-bit sub-block scales and
/// mins (`[rows, cols / 256]` of 20 bytes).
pub fn repack_q4k(m: &Matrix) -> (Vec<u8>, Vec<u8>) {
    let (rows, cols) = (m.rows(), m.cols());
    let nsb = cols / 256;
    let mut q = vec![0u8; rows * cols / 2];
    let mut meta = vec![0u8; rows * nsb * Q4K_META_BYTES];
    q.par_chunks_mut(cols / 2)
        .zip(meta.par_chunks_mut(nsb * Q4K_META_BYTES))
        .enumerate()
        .for_each(|(r, (q, meta))| {
            for (b, blk) in m.row_bytes(r).chunks_exact(144).take(nsb).enumerate() {
                let (sc, mn) = gemma3n_compute::quant::unpack_scales_mins(&blk[4..16]);
                let out = &mut meta[b * Q4K_META_BYTES..(b + 1) * Q4K_META_BYTES];
                out[..4].copy_from_slice(&blk[..4]);
                out[4..12].copy_from_slice(&sc);
                out[12..20].copy_from_slice(&mn);
                let qs = &blk[16..144];
                for s in 0..8 {
                    let (c, shift) = (s / 2, 4 * (s % 2));
                    let val = |l: usize| (qs[32 * c + l] >> shift) & 15;
                    let dst = &mut q[b * 128 + s * 16..b * 128 + s * 16 + 16];
                    for (j, o) in dst.iter_mut().enumerate() {
                        *o = val(j) | (val(j + 16) << 4);
                    }
                }
            }
        });
    (q, meta)
}

impl DevMatrix {
    /// Device bytes of the values and scales.
    pub fn bytes(&self) -> usize {
        self.len + self.sc.as_ref().map_or(0, |b| b.bytes())
    }

    /// The matrix as the kernels take it.
    pub fn wp(&self) -> WeightPtr {
        WeightPtr {
            w: self.values(),
            sc: self.sc.as_ref().map_or(DevPtr::NULL, |b| b.ptr()),
            fmt: self.fmt,
        }
    }

    /// The values of a bf16 matrix.
    pub fn ptr(&self) -> DevPtr {
        debug_assert_eq!(self.fmt, WeightFormat::Bf16);
        self.values()
    }

    fn values(&self) -> DevPtr {
        // Offsets are whole bf16 rows.
        self.buf.ptr().add_bf16(self.offset / 2)
    }

    /// Uploads matrices of one row length that are all bf16 on the device ([`device_format`])
    /// into one buffer, each below the one before: the matrices, then one more spanning them
    /// all (a single product of their stacked rows, for inputs they share). None, uploading
    /// nothing, when they are not all such matrices.
    pub fn upload_stacked(
        gpu: &Arc<Gpu>,
        ms: &[&Matrix],
    ) -> Result<Option<(Vec<DevMatrix>, DevMatrix)>> {
        let cols = ms.first().map_or(0, |m| m.cols());
        if ms.is_empty()
            || ms
                .iter()
                .any(|m| m.cols() != cols || device_format(m) != WeightFormat::Bf16)
        {
            return Ok(None);
        }
        let total: usize = ms.iter().map(|m| 2 * m.rows() * cols).sum();
        let buf = Arc::new(gpu.alloc(total).map_err(gpu_err)?);
        let mut views = Vec::with_capacity(ms.len());
        let mut offset = 0;
        for m in ms {
            let len = 2 * m.rows() * cols;
            gpu.write(&buf, offset, &bf16_values(m)).map_err(gpu_err)?;
            views.push(DevMatrix {
                buf: buf.clone(),
                offset,
                len,
                sc: None,
                fmt: WeightFormat::Bf16,
                cols,
            });
            offset += len;
        }
        let all = DevMatrix {
            buf,
            offset: 0,
            len: 0,
            sc: None,
            fmt: WeightFormat::Bf16,
            cols,
        };
        Ok(Some((views, all)))
    }

    /// Uploads `m` in its [`device_format`] (bf16 matrices are copied as they are, other
    /// non-native formats converted to bf16).
    pub fn upload(gpu: &Arc<Gpu>, m: &Matrix) -> Result<DevMatrix> {
        let cols = m.cols();
        let fmt = device_format(m);
        let up = |data: &[u8]| gpu.upload(data).map_err(gpu_err);
        let (buf, sc) = match fmt {
            WeightFormat::Q8 => {
                let (q, sc) = repack_q8(m);
                (up(&q)?, Some(gpu.upload(&sc).map_err(gpu_err)?))
            }
            WeightFormat::Q4K => {
                let (q, meta) = repack_q4k(m);
                (up(&q)?, Some(up(&meta)?))
            }
            WeightFormat::Bf16 => (up(&bf16_values(m))?, None),
        };
        Ok(DevMatrix {
            len: buf.bytes(),
            buf: Arc::new(buf),
            offset: 0,
            sc,
            fmt,
            cols,
        })
    }
}

/// The bf16 bytes of `m`'s values, rows packed (borrowed when it is such a matrix already).
fn bf16_values(m: &Matrix) -> std::borrow::Cow<'_, [u8]> {
    let (rows, cols) = (m.rows(), m.cols());
    if m.dtype() == DType::BF16 && m.row_stride_bytes() == cols * 2 {
        // SAFETY: a bf16 matrix with packed rows is rows·cols·2 contiguous bytes.
        return std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(m.base_ptr(), rows * cols * 2)
        });
    }
    let mut host = vec![0u8; rows * cols * 2];
    host.par_chunks_mut((2 * cols).max(1))
        .enumerate()
        .for_each_init(
            || vec![0f32; cols],
            |tmp, (r, out)| {
                m.row_to_f32(r, tmp);
                for (o, &v) in out.chunks_exact_mut(2).zip(tmp.iter()) {
                    o.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
                }
            },
        );
    std::borrow::Cow::Owned(host)
}

/// `down` of a layer: as stored (`[D, F]`), or transposed (`[F, D]`) in layers with
/// activation sparsity, whose decode path reads only the rows of the active units.
pub enum Down {
    Normal(DevMatrix),
    Transposed(DevMatrix),
}

pub struct DevLayer {
    /// q, k, v and LAuReL's left matrix stacked in one buffer (in that order, the order of
    /// their outputs in a q/k/v row), for a prefill's single GEMM over their shared input:
    /// layers with their own K/V and bf16 matrices only.
    pub qkvl: Option<DevMatrix>,
    pub q: DevMatrix,
    pub k: Option<DevMatrix>,
    pub v: Option<DevMatrix>,
    pub o: DevMatrix,
    pub gate: DevMatrix,
    pub up: DevMatrix,
    pub down: Down,
    pub laurel_left: DevMatrix,
    pub laurel_right: DevMatrix,
    pub pl_gate: DevMatrix,
    pub pl_proj: DevMatrix,
    pub q_norm: DeviceBuffer,
    pub k_norm: Option<DeviceBuffer>,
    pub input_ln: DeviceBuffer,
    pub post_attn_ln: DeviceBuffer,
    pub pre_ffn_ln: DeviceBuffer,
    pub post_ffn_ln: DeviceBuffer,
    pub laurel_norm: DeviceBuffer,
    pub router_norm: DeviceBuffer,
    /// `[A, D]` f32.
    pub router: DeviceBuffer,
    pub pred_coefs: DeviceBuffer,
    pub corr_coefs: DeviceBuffer,
    pub corr_scale: DeviceBuffer,
    pub post_pl_norm: DeviceBuffer,
}

pub struct DevWeights {
    /// `[V, D]`: the embedding and the tied LM head.
    pub embed: DevMatrix,
    /// `[L·P, D]`.
    pub ple_proj: DevMatrix,
    pub ple_norm: DeviceBuffer,
    pub altup_proj: Vec<DevMatrix>,
    pub altup_unembed: Vec<DevMatrix>,
    pub norm: DeviceBuffer,
    pub layers: Vec<DevLayer>,
    /// Whether any matrix is in a quantized format.
    pub quantized: bool,
}

fn vec_f32(gpu: &Arc<Gpu>, v: &[f32]) -> Result<DeviceBuffer> {
    gpu.upload(v).map_err(gpu_err)
}

fn bf16_rounded(m: &Matrix) -> Vec<f32> {
    m.to_f32_vec()
        .into_iter()
        .map(|v| half::bf16::from_f32(v).to_f32())
        .collect()
}

fn layer(gpu: &Arc<Gpu>, lw: &LayerWeights) -> Result<DevLayer> {
    let m = |x: &Matrix| DevMatrix::upload(gpu, x);
    let down = match &lw.down_proj_t {
        Some(t) => Down::Transposed(m(t)?),
        None => Down::Normal(m(&lw.down_proj)?),
    };
    let stacked = match (&lw.k_proj, &lw.v_proj) {
        (Some(k), Some(v)) => DevMatrix::upload_stacked(gpu, &[&lw.q_proj, k, v, &lw.laurel_left])?,
        _ => None,
    };
    let (q, k, v, laurel_left, qkvl) = match stacked {
        Some((views, all)) => {
            let mut it = views.into_iter();
            let mut next = || it.next().expect("four stacked matrices");
            (next(), Some(next()), Some(next()), next(), Some(all))
        }
        None => (
            m(&lw.q_proj)?,
            lw.k_proj.as_ref().map(m).transpose()?,
            lw.v_proj.as_ref().map(m).transpose()?,
            m(&lw.laurel_left)?,
            None,
        ),
    };
    Ok(DevLayer {
        qkvl,
        q,
        k,
        v,
        o: m(&lw.o_proj)?,
        gate: m(&lw.gate_proj)?,
        up: m(&lw.up_proj)?,
        down,
        laurel_left,
        laurel_right: m(&lw.laurel_right)?,
        pl_gate: m(&lw.per_layer_input_gate)?,
        pl_proj: m(&lw.per_layer_projection)?,
        q_norm: vec_f32(gpu, &lw.q_norm)?,
        k_norm: lw.k_norm.as_deref().map(|v| vec_f32(gpu, v)).transpose()?,
        input_ln: vec_f32(gpu, &lw.input_layernorm)?,
        post_attn_ln: vec_f32(gpu, &lw.post_attention_layernorm)?,
        pre_ffn_ln: vec_f32(gpu, &lw.pre_feedforward_layernorm)?,
        post_ffn_ln: vec_f32(gpu, &lw.post_feedforward_layernorm)?,
        laurel_norm: vec_f32(gpu, &lw.laurel_norm)?,
        router_norm: vec_f32(gpu, &lw.altup.router_norm)?,
        // In f32 on the device, at bf16 precision like every other matrix.
        router: vec_f32(gpu, &bf16_rounded(&lw.altup.modality_router))?,
        pred_coefs: vec_f32(gpu, &lw.altup.prediction_coefs)?,
        corr_coefs: vec_f32(gpu, &lw.altup.correction_coefs)?,
        corr_scale: vec_f32(gpu, &lw.altup.correct_output_scale)?,
        post_pl_norm: vec_f32(gpu, &lw.post_per_layer_input_norm)?,
    })
}

impl DevWeights {
    /// Uploads everything but the per-layer embedding table; `progress(done, total)` once
    /// per layer.
    pub fn upload(
        gpu: &Arc<Gpu>,
        w: &TextWeights,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<DevWeights> {
        let total = w.layers.len() + 1;
        let m = |x: &Matrix| DevMatrix::upload(gpu, x);
        let embed = m(&w.embed_tokens)?;
        let ple_proj = m(&w.per_layer_model_projection)?;
        let altup_proj = w.altup_projections.iter().map(m).collect::<Result<_>>()?;
        let altup_unembed = w
            .altup_unembed_projections
            .iter()
            .map(m)
            .collect::<Result<_>>()?;
        progress(1, total);
        let mut layers = Vec::with_capacity(w.layers.len());
        for (i, lw) in w.layers.iter().enumerate() {
            layers.push(layer(gpu, lw).map_err(|e| match e {
                ModelError::Invalid(msg) => ModelError::Invalid(format!("layer {i}: {msg}")),
                other => other,
            })?);
            progress(i + 2, total);
        }
        let quantized = [&embed, &ple_proj]
            .into_iter()
            .chain(&altup_proj)
            .chain(&altup_unembed)
            .chain(layers.iter().flat_map(|l| {
                let down = match &l.down {
                    Down::Normal(m) | Down::Transposed(m) => m,
                };
                [
                    &l.q,
                    &l.o,
                    &l.gate,
                    &l.up,
                    down,
                    &l.laurel_left,
                    &l.laurel_right,
                ]
                .into_iter()
                .chain([&l.pl_gate, &l.pl_proj])
                .chain(l.k.iter())
                .chain(l.v.iter())
            }))
            .any(|m| m.fmt != WeightFormat::Bf16);
        Ok(DevWeights {
            embed,
            ple_proj,
            ple_norm: vec_f32(gpu, &w.per_layer_projection_norm)?,
            altup_proj,
            altup_unembed,
            norm: vec_f32(gpu, &w.norm)?,
            layers,
            quantized,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Value `i` of row `r` of a repacked matrix, read as common.cu's `weight_at` reads it.
    fn read(fmt: WeightFormat, q: &[u8], sc: &[u8], cols: usize, r: usize, i: usize) -> f32 {
        let f16 = |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        match fmt {
            WeightFormat::Q8 => {
                let s = &sc[2 * (r * cols / 32 + i / 32)..];
                f16(s) * (q[r * cols + i] as i8) as f32
            }
            WeightFormat::Q4K => {
                let m = &sc[Q4K_META_BYTES * (r * cols / 256 + i / 256)..];
                let (sub, j) = ((i / 32) % 8, i % 32);
                let byte = q[r * cols / 2 + (i / 32) * 16 + (j & 15)];
                let v = if j < 16 { byte & 15 } else { byte >> 4 } as f32;
                let ds = f16(&m[0..2]) * m[4 + sub] as f32;
                let dm = f16(&m[2..4]) * m[12 + sub] as f32;
                ds.mul_add(v, -dm)
            }
            WeightFormat::Bf16 => unreachable!(),
        }
    }

    /// The repacked values are the format's own values: every element equals the CPU's
    /// dequantization of the GGUF block, bit for bit.
    #[test]
    fn repacked_quantized_matrices_hold_the_exact_values() {
        let (rows, cols) = (6, 512);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        for (dtype, fmt) in [
            (DType::Q8_0, WeightFormat::Q8),
            (DType::Q4_K, WeightFormat::Q4K),
        ] {
            let m = Matrix::from_f32_as(&data, rows, cols, dtype);
            assert_eq!(device_format(&m), fmt);
            let (q, sc) = match fmt {
                WeightFormat::Q8 => {
                    let (q, sc) = repack_q8(&m);
                    (
                        q,
                        sc.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                    )
                }
                _ => repack_q4k(&m),
            };
            let want = m.to_f32_vec();
            let mut nonzero_min = false;
            for r in 0..rows {
                for i in 0..cols {
                    let got = read(fmt, &q, &sc, cols, r, i);
                    assert_eq!(
                        got.to_bits(),
                        want[r * cols + i].to_bits(),
                        "{dtype}: row {r} value {i}: {got} vs {}",
                        want[r * cols + i]
                    );
                }
            }
            if fmt == WeightFormat::Q4K {
                // The mins matter in this data (values of both signs).
                nonzero_min = sc
                    .chunks_exact(Q4K_META_BYTES)
                    .any(|m| m[12..20].iter().any(|&v| v != 0));
            }
            assert!(fmt == WeightFormat::Q8 || nonzero_min);
        }
    }
}
