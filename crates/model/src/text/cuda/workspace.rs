//! Activation buffers of the GPU decoder, sized once for a number of rows (tokens per
//! forward pass) and reused: nothing is allocated in the decode loop.

use std::sync::Arc;

use gemma3n_compute::cuda::{DeviceBuffer, Gpu};

use super::gpu_err;
use crate::config::TextConfig;
use crate::error::Result;

/// Key splits of single-row (decode) attention: one block per head and split.
pub const DECODE_SPLITS: usize = 16;

pub struct Workspace {
    /// Rows the buffers hold.
    pub cap: usize,
    /// Stride between AltUp streams (`cap · D` floats).
    pub ss: usize,
    /// Width of a q/k/v/LAuReL-left row: `H·hd + 2·G·hd + r`.
    pub qw: usize,
    /// Largest FFN width.
    pub fmax: usize,
    pub ids: DeviceBuffer,
    pub pos: DeviceBuffer,
    pub flag: DeviceBuffer,
    pub over: DeviceBuffer,
    pub ple_rows: DeviceBuffer,
    pub plp: DeviceBuffer,
    pub pi: DeviceBuffer,
    pub s: DeviceBuffer,
    pub pred: DeviceBuffer,
    pub x: DeviceBuffer,
    pub qkv: DeviceBuffer,
    pub q: DeviceBuffer,
    pub att: DeviceBuffer,
    pub part: DeviceBuffer,
    pub o: DeviceBuffer,
    pub lr: DeviceBuffer,
    pub lau: DeviceBuffer,
    pub h: DeviceBuffer,
    pub y: DeviceBuffer,
    /// Gate at column 0, up at column `fmax` of each `2·fmax` row.
    pub gu: DeviceBuffer,
    pub act: DeviceBuffer,
    pub fo: DeviceBuffer,
    pub h2: DeviceBuffer,
    pub v: DeviceBuffer,
    pub pg: DeviceBuffer,
    pub pq: DeviceBuffer,
    pub ys: DeviceBuffer,
    pub hf: DeviceBuffer,
    /// bf16 copy of a GEMM's activations.
    pub xb: DeviceBuffer,
    /// bf16 remainder `x - bf16(x)` for split-activation GEMMs.
    pub xlo: DeviceBuffer,
    /// Logits of `logit_rows` rows.
    pub logits: DeviceBuffer,
    pub logit_rows: usize,
}

impl Workspace {
    pub fn new(
        gpu: &Arc<Gpu>,
        cfg: &TextConfig,
        cap: usize,
        logit_rows: usize,
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
        let splits = if cap == 1 { DECODE_SPLITS } else { 1 };
        Ok(Workspace {
            cap,
            ss: cap * d,
            qw,
            fmax,
            ids: f(cap)?,
            pos: f(cap)?,
            flag: f(cap)?,
            over: f(cap * d)?,
            ple_rows: f(cap * lp)?,
            plp: f(cap * lp)?,
            pi: f(cap * lp)?,
            s: f(a * cap * d)?,
            pred: f(a * cap * d)?,
            x: f(cap * d)?,
            qkv: f(cap * qw)?,
            q: f(cap * h * hd)?,
            att: f(cap * h * hd)?,
            part: f(cap * h * splits.max(DECODE_SPLITS) * (hd + 2))?,
            o: f(cap * d)?,
            lr: f(cap * d)?,
            lau: f(cap * d)?,
            h: f(cap * d)?,
            y: f(cap * d)?,
            gu: f(cap * 2 * fmax)?,
            act: f(cap * fmax)?,
            fo: f(cap * d)?,
            h2: f(cap * d)?,
            v: f(cap * d)?,
            pg: f(cap * p)?,
            pq: f(cap * d)?,
            ys: f((a - 1) * cap * d)?,
            hf: f(cap * d)?,
            xb: gpu.alloc(2 * cap * kmax).map_err(gpu_err)?,
            xlo: gpu.alloc(2 * cap * kmax).map_err(gpu_err)?,
            logits: f(logit_rows * cfg.vocab_size)?,
            logit_rows,
        })
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        [
            &self.ids,
            &self.pos,
            &self.flag,
            &self.over,
            &self.ple_rows,
            &self.plp,
            &self.pi,
            &self.s,
            &self.pred,
            &self.x,
            &self.qkv,
            &self.q,
            &self.att,
            &self.part,
            &self.o,
            &self.lr,
            &self.lau,
            &self.h,
            &self.y,
            &self.gu,
            &self.act,
            &self.fo,
            &self.h2,
            &self.v,
            &self.pg,
            &self.pq,
            &self.ys,
            &self.hf,
            &self.xb,
            &self.xlo,
            &self.logits,
        ]
        .iter()
        .map(|b| b.bytes())
        .sum()
    }
}
