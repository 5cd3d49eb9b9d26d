//! Self-attention with q/k/v norms, RoPE, GQA, sliding or full masks and shared KV
//! (spec §4.2–§4.4).

use gemma3n_compute::cpu::{matmul, matmul_many, ops};

use super::kv_cache::KvCache;
use super::rope;
use super::weights::LayerWeights;
use crate::config::{KvSource, LayerType, TextConfig};

/// Attention of layer `l` for `n` rows of the normalised input `x`: row `t` belongs to the
/// sequence held by `caches[seq[t]]` (each sequence's rows contiguous) and sits at absolute
/// position `pos[t]` (ascending within a sequence). Owning layers append their K/V to the
/// caches first; shared layers read their producer's entry. Returns `n x D` (after
/// `o_proj`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    cfg: &TextConfig,
    l: usize,
    w: &LayerWeights,
    x: &[f32],
    n: usize,
    pos: &[usize],
    seq: &[usize],
    inv_freq: &[f32],
    caches: &mut [&mut KvCache],
) -> Vec<f32> {
    let (h, g, hd) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let eps = cfg.rms_norm_eps;
    let mut q = vec![0f32; n * h * hd];
    // A layer with its own keys and values projects q, k and v in one parallel pass.
    let mut kv = match cfg.kv_source(l) {
        KvSource::Own => {
            let (kp, vp) = (w.k_proj.as_ref().unwrap(), w.v_proj.as_ref().unwrap());
            let mut k = vec![0f32; n * g * hd];
            let mut v = vec![0f32; n * g * hd];
            matmul_many(x, n, &[&w.q_proj, kp, vp], &mut [&mut q, &mut k, &mut v]);
            Some((k, v))
        }
        _ => {
            matmul(x, n, &w.q_proj, &mut q);
            None
        }
    };
    ops::rms_norm_rows(&mut q, hd, Some(&w.q_norm), eps);
    for (t, row) in q.chunks_exact_mut(h * hd).enumerate() {
        for head in row.chunks_exact_mut(hd) {
            rope::apply(head, pos[t], inv_freq);
        }
    }
    let source = match cfg.kv_source(l) {
        KvSource::Own => {
            let (mut k, mut v) = kv.take().expect("projected above");
            ops::rms_norm_rows(&mut k, hd, w.k_norm.as_deref(), eps);
            ops::rms_norm_rows(&mut v, hd, None, eps);
            for (t, row) in k.chunks_exact_mut(g * hd).enumerate() {
                for head in row.chunks_exact_mut(hd) {
                    rope::apply(head, pos[t], inv_freq);
                }
            }
            let row = g * hd;
            let mut t0 = 0;
            while t0 < n {
                let s = seq[t0];
                let t1 = t0 + seq[t0..].iter().take_while(|&&x| x == s).count();
                caches[s].append(l, &k[t0 * row..t1 * row], &v[t0 * row..t1 * row]);
                t0 = t1;
            }
            l
        }
        KvSource::Shared(p) => p,
    };
    let views: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    let window = match cfg.layer_types[l] {
        LayerType::Sliding => Some(cfg.sliding_window),
        LayerType::Full => None,
    };
    let group = h / g;
    let mut out = vec![0f32; n * h * hd];
    // One task per (row, KV head): the query heads of a group read each key and value row
    // once, together.
    gemma3n_compute::cpu::pool::for_each_chunk_mut(&mut out, group * hd, |idx, o| {
        let (t, kvh) = (idx / g, idx % g);
        let p = pos[t];
        let kv = views[seq[t]].layer(source);
        // Allowed absolute key positions: (p − W, p] for sliding, [0, p] for full.
        let lo = window
            .map_or(0, |w| (p + 1).saturating_sub(w))
            .max(kv.start);
        let hi = p + 1;
        debug_assert!(hi <= kv.start + kv.len(), "key for position {p} missing");
        let len = hi - lo;
        o.fill(0.0);
        if len == 0 {
            return;
        }
        let first = (lo - kv.start) * hd;
        let qg = &q[(t * h + kvh * group) * hd..(t * h + (kvh + 1) * group) * hd];
        let mut scores = vec![0f32; group * len];
        ops::dot_rows(qg, group, &kv.k[kvh][first..], hd, len, &mut scores);
        scores.chunks_exact_mut(len).for_each(ops::softmax);
        ops::axpy_rows(&scores, group, &kv.v[kvh][first..], hd, len, o);
    });
    let d = w.o_proj.rows();
    let mut y = vec![0f32; n * d];
    matmul(&out, n, &w.o_proj, &mut y);
    y
}
