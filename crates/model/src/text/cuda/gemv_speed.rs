//! Bandwidth of the decode product kernels on the model's own matrices, each launch alone:
//! a graph of repeated launches of one product, timed with events (`bench --device cuda`
//! under `GEMMA3N_CUDA_PROFILE=1`). It tells how far each product is from the memory
//! bandwidth, apart from the small kernels between them.

use gemma3n_compute::cuda::{Epilogue, GemvSeg};

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
}
