//! Bandwidth of the decode product kernels on the model's own matrices, each launch alone:
//! a graph of repeated launches of one product, timed with events (`bench --device cuda`
//! under `GEMMA3N_CUDA_PROFILE=1`). It tells how far each product is from the memory
//! bandwidth, apart from the small kernels between them.

use gemma3n_compute::cuda::{Epilogue, GemvSeg, Graph};

use super::decoder::seg;
use super::weights::{DevMatrix, Down};
use super::{gpu_err, CudaTextModel};
use crate::error::Result;

/// One product's speed.
pub struct GemvSpeed {
    /// Which matrix (of which layer) and how many activation rows.
    pub name: String,
    /// Bytes of weights one launch reads.
    pub bytes: usize,
    /// Microseconds per launch.
    pub us: f64,
}

/// The decode products as one dependent chain, three ways
/// ([`CudaTextModel::products_chain_speed`]).
pub struct ChainSpeed {
    pub steps: usize,
    /// Bytes of weights the chain reads.
    pub bytes: usize,
    /// Microseconds: one persistent launch (weights through registers), one launch a step.
    pub us_persistent: f64,
    pub us_launches: f64,
    /// One persistent launch with the weights streamed through shared memory by bulk
    /// copies (when `GEMMA3N_CUDA_PKT` asks for it and the device has them): microseconds,
    /// and the max relative difference of its outputs from the launches'.
    pub tma: Option<(f64, f32)>,
}

/// Launches per timed graph.
const LAUNCHES: usize = 50;

impl CudaTextModel {
    /// Times the products of the first layer with a stored-layout `down` (q, o, gate and up
    /// together, down) and the LM head, for 1 and 16 activation rows.
    pub fn gemv_speed(&self) -> Result<Vec<GemvSpeed>> {
        self.gpu.without_timing(|| self.gemv_speed_untimed())
    }

    fn gemv_speed_untimed(&self) -> Result<Vec<GemvSpeed>> {
        let cfg = &self.cpu.cfg;
        let g = &self.gpu;
        let (d, hd, h) = (cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads);
        let l = (0..self.w.layers.len())
            .find(|&l| matches!(self.w.layers[l].down, Down::Normal(_)))
            .unwrap_or(0);
        let lw = &self.w.layers[l];
        let f = cfg.intermediate_size[l];
        let kmax = d.max(f).max(h * hd);
        let nmax = cfg.vocab_size.max(f);
        let x = g.upload(&vec![0.01f32; 16 * kmax]).map_err(gpu_err)?;
        let y = g.alloc(4 * 16 * nmax).map_err(gpu_err)?;
        let (xp, yp) = (x.ptr(), y.ptr());
        let mut cases: Vec<(String, GemvSeg, usize)> = vec![
            (
                format!("layer {l} q"),
                seg(&lw.q, h * hd, d, xp, kmax, yp, nmax),
                lw.q.bytes(),
            ),
            (
                format!("layer {l} o"),
                seg(&lw.o, d, h * hd, xp, kmax, yp, nmax),
                lw.o.bytes(),
            ),
        ];
        let mut pair = seg(&lw.gate, f, d, xp, kmax, yp, nmax);
        pair.epi = Epilogue::Pair(lw.up.wp());
        cases.push((
            format!("layer {l} gate+up"),
            pair,
            lw.gate.bytes() + lw.up.bytes(),
        ));
        if let Down::Normal(m) = &lw.down {
            cases.push((
                format!("layer {l} down"),
                seg(m, d, f, xp, kmax, yp, nmax),
                m.bytes(),
            ));
        }
        let head: &DevMatrix = &self.w.embed;
        cases.push((
            "LM head".into(),
            seg(head, cfg.vocab_size, d, xp, kmax, yp, nmax),
            head.bytes(),
        ));
        let mut out = Vec::new();
        for rows in [1, 16] {
            for (name, s, bytes) in &cases {
                let graph = self.capture(|| {
                    for _ in 0..LAUNCHES {
                        g.gemv(std::slice::from_ref(s), rows, 0.0)
                            .map_err(gpu_err)?;
                    }
                    Ok(())
                })?;
                let ms = self.replay_ms(&graph, 1)?;
                out.push(GemvSpeed {
                    name: format!("{name}, {rows} row{}", if rows > 1 { "s" } else { "" }),
                    bytes: *bytes,
                    us: 1e3 * ms / LAUNCHES as f64,
                });
            }
        }
        Ok(out)
    }

    /// The decode step's products of every layer (q/k/v/LAuReL, o/LAuReL, the FFN, the
    /// per-layer input's gate and projection; a sparse layer's gate only, its up and down
    /// reading few rows) as a chain of dependent steps: one persistent launch with a barrier
    /// between steps (weights read into registers, or streamed through shared memory),
    /// against one launch a step, all in graphs; `None` for weights the persistent kernels
    /// do not take.
    pub fn products_chain_speed(&self) -> Result<Option<ChainSpeed>> {
        self.gpu.without_timing(|| self.products_chain_untimed())
    }

    fn products_chain_untimed(&self) -> Result<Option<ChainSpeed>> {
        if self.w.quantized {
            return Ok(None);
        }
        let cfg = &self.cpu.cfg;
        let g = &self.gpu;
        let (d, hd, h, kvh) = (
            cfg.hidden_size,
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
        );
        let (r, p) = (cfg.laurel_rank, cfg.hidden_size_per_layer_input);
        let fmax = cfg.intermediate_size.iter().copied().max().unwrap_or(d);
        let kmax = d.max(fmax).max(h * hd);
        let x = g.upload(&vec![0.01f32; kmax]).map_err(gpu_err)?;
        let y = g
            .alloc(4 * 4 * fmax.max(h * hd + 2 * kvh * hd + r))
            .map_err(gpu_err)?;
        let aux = g.upload(&vec![0.5f32; p]).map_err(gpu_err)?;
        // Two barrier counters (allocations start zeroed).
        let ctr = g.alloc(8).map_err(gpu_err)?;
        let (xp, yp) = (x.ptr(), y.ptr());
        let mut steps: Vec<Vec<GemvSeg>> = Vec::new();
        let mut bytes = 0;
        for (l, lw) in self.w.layers.iter().enumerate() {
            let f = cfg.intermediate_size[l];
            let mut qkv = vec![seg(&lw.q, h * hd, d, xp, d, yp, 0)];
            bytes += lw.q.bytes();
            for m in [lw.k.as_ref(), lw.v.as_ref()].into_iter().flatten() {
                qkv.push(seg(m, kvh * hd, d, xp, d, yp, 0));
                bytes += m.bytes();
            }
            qkv.push(seg(&lw.laurel_left, r, d, xp, d, yp, 0));
            bytes += lw.laurel_left.bytes();
            steps.push(qkv);
            steps.push(vec![
                seg(&lw.o, d, h * hd, xp, h * hd, yp, 0),
                seg(&lw.laurel_right, d, r, xp, r, yp, 0),
            ]);
            bytes += lw.o.bytes() + lw.laurel_right.bytes();
            match &lw.down {
                Down::Normal(m) => {
                    let mut pair = seg(&lw.gate, f, d, xp, d, yp, 0);
                    pair.epi = Epilogue::Pair(lw.up.wp());
                    steps.push(vec![pair]);
                    steps.push(vec![seg(m, d, f, xp, f, yp, 0)]);
                    bytes += lw.gate.bytes() + lw.up.bytes() + m.bytes();
                }
                Down::Transposed(_) => {
                    steps.push(vec![seg(&lw.gate, f, d, xp, d, yp, 0)]);
                    bytes += lw.gate.bytes();
                }
            }
            let mut gate = seg(&lw.pl_gate, p, d, xp, d, yp, 0);
            gate.epi = Epilogue::GeluAcc(aux.ptr(), p);
            steps.push(vec![gate]);
            steps.push(vec![seg(&lw.pl_proj, d, p, xp, p, yp, 0)]);
            bytes += lw.pl_gate.bytes() + lw.pl_proj.bytes();
        }
        let (table, smem) = g.products_table(&steps).map_err(gpu_err)?;
        let n = steps.len();
        let persistent = self.capture(|| {
            g.products_chain(table.ptr(), n, smem, ctr.ptr())
                .map_err(gpu_err)
        })?;
        let launches = self.capture(|| {
            for step in &steps {
                g.gemv(step, 1, 0.0).map_err(gpu_err)?;
            }
            Ok(())
        })?;
        // The same chain with its weights streamed through shared memory (bulk copies),
        // when asked for (`Gpu::products_chain_tma_stages`).
        let tma = if g.products_chain_tma_stages(smem) > 0 {
            Some(self.capture(|| {
                g.products_chain_tma(table.ptr(), n, smem, ctr.ptr())
                    .map_err(gpu_err)
            })?)
        } else {
            None
        };
        let mut best = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..5 {
            best.0 = best.0.min(self.replay_ms(&persistent, 1)?);
            best.1 = best.1.min(self.replay_ms(&launches, 1)?);
            if let Some(t) = &tma {
                best.2 = best.2.min(self.replay_ms(t, 1)?);
            }
        }
        // Every step reads the same x, so what the last writer of each output left is the
        // same in every version: the streamed chain's against the launches'.
        let tma_err = |t: &Graph| -> Result<f32> {
            let ny = y.bytes() / 4;
            let mut want = vec![0f32; ny];
            let mut got = vec![0f32; ny];
            launches.launch().map_err(gpu_err)?;
            g.read_at(yp, &mut want).map_err(gpu_err)?;
            t.launch().map_err(gpu_err)?;
            g.read_at(yp, &mut got).map_err(gpu_err)?;
            let scale = want
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()))
                .max(f32::MIN_POSITIVE);
            let diff = want
                .iter()
                .zip(&got)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            Ok(diff / scale)
        };
        let tma = match &tma {
            Some(t) => Some((1e3 * best.2, tma_err(t)?)),
            None => None,
        };
        Ok(Some(ChainSpeed {
            steps: n,
            bytes,
            us_persistent: 1e3 * best.0,
            us_launches: 1e3 * best.1,
            tma,
        }))
    }
}
