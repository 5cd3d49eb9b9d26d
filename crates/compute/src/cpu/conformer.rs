//! The kernels of the audio tower (the USM-style conformer, spec/multimodal.md §4) that are
//! not matmuls: the cumulative group norm of the sub-sampling convolutions, the causal
//! depthwise convolution over time of the light-conv module, and local self-attention with a
//! relative-position term and a logit soft cap.
//!
//! Every one is causal in time, and each takes the state the earlier part of a stream left
//! ([`CumulativeStats`], the history rows of the convolution, the past keys and values of the
//! attention), so a stream can be encoded piece by piece with the same result as all at once.

use rayon::prelude::*;

use super::ops;

/// Running sums of a cumulative group norm: what the steps before the current input
/// contribute. `Default` is the start of a stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CumulativeStats {
    /// Σ of every value so far.
    pub sum: f64,
    /// Σ over earlier steps of each step's squared deviations from its own cumulative mean.
    pub sq: f64,
    /// Number of values so far.
    pub count: f64,
}

/// Cumulative group norm over time, in place (spec §4.1 step 3): `x` is `t` rows of `group`
/// values (one time step each: frequency × channel, channel innermost, `weight` per channel).
/// For step `s` with `G` values `h`: `μ_s = Σ_{τ≤s} Σh_τ / n_s`,
/// `σ²_s = Σ_{τ≤s} Σ(h_τ − μ_τ)² / n_s` (each step's deviations from *its own* cumulative
/// mean), `out = (h − μ_s) · (σ²_s + eps)^(-1/2) · weight[c]`, then `max(·, 0)` when `relu`.
/// Sums are kept in f64. `stats` carries the sums from the previous call and is updated.
pub fn cumulative_group_norm(
    x: &mut [f32],
    group: usize,
    weight: &[f32],
    eps: f32,
    relu: bool,
    stats: &mut CumulativeStats,
) {
    assert!(group > 0, "cumulative_group_norm: empty group");
    assert_eq!(x.len() % group, 0, "cumulative_group_norm: length");
    let c = weight.len();
    assert!(
        c > 0 && group.is_multiple_of(c),
        "cumulative_group_norm: {group} values per step are not whole groups of {c} channels"
    );
    let t = x.len() / group;
    if t == 0 {
        return;
    }
    let par_min = (1 << 14) / group + 1;
    // 1. Each step's sum (independent), then the cumulative means (sequential, t scalars).
    let sums: Vec<f64> = x
        .par_chunks(group)
        .with_min_len(par_min)
        .map(|r| r.iter().map(|&v| v as f64).sum())
        .collect();
    let mut means = Vec::with_capacity(t);
    let mut counts = Vec::with_capacity(t);
    let (mut sum, mut count) = (stats.sum, stats.count);
    for s in &sums {
        sum += s;
        count += group as f64;
        means.push(sum / count);
        counts.push(count);
    }
    // 2. Each step's squared deviations from its own mean, then the cumulative variances.
    let sq: Vec<f64> = x
        .par_chunks(group)
        .zip(means.par_iter())
        .with_min_len(par_min)
        .map(|(r, &m)| r.iter().map(|&v| (v as f64 - m).powi(2)).sum())
        .collect();
    let mut scales = Vec::with_capacity(t);
    let mut acc = stats.sq;
    for (q, n) in sq.iter().zip(&counts) {
        acc += q;
        scales.push((1.0 / (acc / n + eps as f64).sqrt()) as f32);
    }
    // 3. Normalize.
    x.par_chunks_mut(group)
        .zip(means.par_iter().zip(scales.par_iter()))
        .with_min_len(par_min)
        .for_each(|(r, (&m, &inv))| {
            let m = m as f32;
            for (px, _) in r.chunks_exact_mut(c).zip(0..) {
                for (v, w) in px.iter_mut().zip(weight) {
                    let y = (*v - m) * inv * w;
                    *v = if relu { y.max(0.0) } else { y };
                }
            }
        });
    *stats = CumulativeStats {
        sum,
        sq: acc,
        count,
    };
}

/// Causal depthwise convolution over time: `x` is `[t, c]`, `weight` PyTorch's `[c, 1, k]`,
/// `history` the `k − 1` rows before `x` (`[k − 1, c]`, zeros at the start of a stream).
/// `out[s][ch] = Σ_{j<k} weight[ch][j] · x[s − (k − 1) + j][ch]`, no bias.
pub fn causal_depthwise_conv1d(
    x: &[f32],
    c: usize,
    weight: &[f32],
    k: usize,
    history: &[f32],
) -> Vec<f32> {
    assert!(c > 0 && k > 0, "causal_depthwise_conv1d: c {c}, k {k}");
    assert_eq!(x.len() % c, 0, "causal_depthwise_conv1d: length");
    assert_eq!(weight.len(), c * k, "causal_depthwise_conv1d: weight");
    assert_eq!(
        history.len(),
        (k - 1) * c,
        "causal_depthwise_conv1d: history"
    );
    let t = x.len() / c;
    // Taps major: row j holds tap j of every channel.
    let mut wt = vec![0f32; k * c];
    for ch in 0..c {
        for j in 0..k {
            wt[j * c + ch] = weight[ch * k + j];
        }
    }
    let row = |r: isize| -> &[f32] {
        if r < 0 {
            let h = (k as isize - 1 + r) as usize;
            &history[h * c..(h + 1) * c]
        } else {
            &x[r as usize * c..(r as usize + 1) * c]
        }
    };
    let mut out = vec![0f32; t * c];
    out.par_chunks_mut(c)
        .enumerate()
        .with_min_len(16)
        .for_each(|(s, o)| {
            for j in 0..k {
                let src = row(s as isize - (k as isize - 1) + j as isize);
                let w = &wt[j * c..(j + 1) * c];
                for ((o, &v), &w) in o.iter_mut().zip(src).zip(w) {
                    *o += w * v;
                }
            }
        });
    out
}

/// Most keys one query of [`LocalAttention`] sees (its logits live on the stack).
const MAX_WINDOW: usize = 64;

/// The shape of one [`LocalAttention::forward`] call.
#[derive(Clone, Copy, Debug)]
pub struct LocalAttention {
    pub heads: usize,
    pub head_dim: usize,
    /// Past keys a query sees besides its own (12 in Gemma 3n: 13 keys in all).
    pub left: usize,
    /// Logits become `cap · tanh(logit / cap)` before masking.
    pub softcap: f32,
}

impl LocalAttention {
    /// Local self-attention with relative positions (spec §4.3). `q`: `[t, heads·head_dim]`,
    /// already scaled; `k`, `v`: `[p + t, heads·head_dim]` whose first `p` rows are keys and
    /// values of the frames before this call's queries (query `i` is key row `p + i`);
    /// `key_valid`: `[p + t]`; `rel`: `[left + 1, heads·head_dim]`, row `d` the projected
    /// position embedding of distance `d`. Query `i` attends to the valid keys `j` with
    /// `p + i − left ≤ j ≤ p + i`, logit `q·k_j + q·rel_{p+i−j}` per head, soft-capped; the
    /// softmax is over those keys only. A query with no valid key gets zeros (only padding
    /// frames can, and their output is discarded). Returns `[t, heads·head_dim]`.
    pub fn forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        key_valid: &[bool],
        rel: &[f32],
    ) -> Vec<f32> {
        let (h, hd, left) = (self.heads, self.head_dim, self.left);
        let d = h * hd;
        assert!(d > 0, "local_attention: empty heads");
        assert_eq!(q.len() % d, 0, "local_attention: q length");
        assert_eq!(k.len(), v.len(), "local_attention: k and v lengths");
        assert_eq!(k.len() % d, 0, "local_attention: k length");
        let t = q.len() / d;
        let n = k.len() / d;
        assert!(n >= t, "local_attention: fewer keys than queries");
        assert_eq!(key_valid.len(), n, "local_attention: key_valid length");
        assert_eq!(rel.len(), (left + 1) * d, "local_attention: rel length");
        assert!(
            left < MAX_WINDOW,
            "local_attention: window of {} keys",
            left + 1
        );
        let p = n - t;
        let cap = self.softcap;
        let mut out = vec![0f32; t * d];
        out.par_chunks_mut(d)
            .enumerate()
            .with_min_len(8)
            .for_each(|(i, o)| {
                let qi = p + i;
                let j0 = qi.saturating_sub(left);
                let mut logits = [0f32; MAX_WINDOW];
                let mut keys = [0usize; MAX_WINDOW];
                for head in 0..h {
                    let qh = &q[i * d + head * hd..][..hd];
                    let mut m = 0;
                    for j in j0..=qi {
                        if !key_valid[j] {
                            continue;
                        }
                        let kh = &k[j * d + head * hd..][..hd];
                        let rh = &rel[(qi - j) * d + head * hd..][..hd];
                        let a = ops::dot(qh, kh) + ops::dot(qh, rh);
                        logits[m] = (a / cap).tanh() * cap;
                        keys[m] = j;
                        m += 1;
                    }
                    if m == 0 {
                        continue;
                    }
                    ops::softmax(&mut logits[..m]);
                    let oh = &mut o[head * hd..][..hd];
                    for (&pj, &j) in logits[..m].iter().zip(&keys[..m]) {
                        ops::axpy(pj, &v[j * d + head * hd..][..hd], oh);
                    }
                }
            });
        out
    }
}

#[cfg(test)]
mod tests;
