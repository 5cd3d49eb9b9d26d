//! The text decoder's weights on the GPU: every matrix in bf16, the norm vectors and AltUp
//! coefficients in f32. The per-layer embedding table is not uploaded: it stays in host
//! memory (the mmap'd checkpoint) and only the rows of the current tokens travel.

use std::sync::Arc;

use gemma3n_compute::cuda::{DevPtr, DeviceBuffer, Gpu};
use gemma3n_compute::{DType, Matrix};
use rayon::prelude::*;

use super::gpu_err;
use crate::error::{ModelError, Result};
use crate::text::weights::{LayerWeights, TextWeights};

/// A row-major bf16 matrix on the device.
pub struct DevMatrix {
    buf: DeviceBuffer,
    /// Row length (the stride of the rows).
    pub cols: usize,
}

impl DevMatrix {
    pub fn ptr(&self) -> DevPtr {
        self.buf.ptr()
    }

    /// Uploads `m` converted to bf16 (bf16 matrices are copied as they are).
    pub fn upload(gpu: &Arc<Gpu>, m: &Matrix) -> Result<DevMatrix> {
        let (rows, cols) = (m.rows(), m.cols());
        let buf = if m.dtype() == DType::BF16 && m.row_stride_bytes() == cols * 2 {
            // SAFETY: a bf16 matrix with packed rows is rows·cols·2 contiguous bytes.
            let bytes = unsafe { std::slice::from_raw_parts(m.base_ptr(), rows * cols * 2) };
            gpu.upload(bytes).map_err(gpu_err)?
        } else {
            let mut host = vec![0u16; rows * cols];
            host.par_chunks_mut(cols.max(1)).enumerate().for_each_init(
                || vec![0f32; cols],
                |tmp, (r, out)| {
                    m.row_to_f32(r, tmp);
                    for (o, &v) in out.iter_mut().zip(tmp.iter()) {
                        *o = half::bf16::from_f32(v).to_bits();
                    }
                },
            );
            gpu.upload(&host).map_err(gpu_err)?
        };
        Ok(DevMatrix { buf, cols })
    }
}

/// `down` of a layer: as stored (`[D, F]`), or transposed (`[F, D]`) in layers with
/// activation sparsity, whose decode path reads only the rows of the active units.
pub enum Down {
    Normal(DevMatrix),
    Transposed(DevMatrix),
}

pub struct DevLayer {
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
    Ok(DevLayer {
        q: m(&lw.q_proj)?,
        k: lw.k_proj.as_ref().map(m).transpose()?,
        v: lw.v_proj.as_ref().map(m).transpose()?,
        o: m(&lw.o_proj)?,
        gate: m(&lw.gate_proj)?,
        up: m(&lw.up_proj)?,
        down,
        laurel_left: m(&lw.laurel_left)?,
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
        Ok(DevWeights {
            embed,
            ple_proj,
            ple_norm: vec_f32(gpu, &w.per_layer_projection_norm)?,
            altup_proj,
            altup_unembed,
            norm: vec_f32(gpu, &w.norm)?,
            layers,
        })
    }
}
