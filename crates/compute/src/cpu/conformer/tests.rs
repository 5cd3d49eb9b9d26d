//! The conformer kernels against naive f64 implementations written from the spec's formulas,
//! and the streaming property: any split of the input, with the state carried, gives the
//! same result as the whole input at once.

use super::*;
use crate::testing::values;

fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * scale,
            "{what}: element {i} = {g}, expected {w} (scale {scale:e})"
        );
    }
}

#[test]
fn cumulative_group_norm_matches_the_formula() {
    for &(t, f, c, relu) in &[
        (1, 1, 1, false),
        (7, 3, 4, true),
        (40, 16, 8, false),
        (5, 64, 128, true),
    ] {
        let g = f * c;
        // An offset so the mean matters.
        let x: Vec<f32> = values(t * g, (t * g) as u64)
            .iter()
            .map(|v| v * 2.0 + 0.7)
            .collect();
        let w = values(c, 99);
        let eps = 1e-3;
        let mut want = vec![0f64; t * g];
        let (mut sum, mut sq) = (0f64, 0f64);
        for s in 0..t {
            let row = &x[s * g..(s + 1) * g];
            sum += row.iter().map(|&v| v as f64).sum::<f64>();
            let n = ((s + 1) * g) as f64;
            let mean = sum / n;
            sq += row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>();
            let inv = 1.0 / (sq / n + eps).sqrt();
            for (i, &v) in row.iter().enumerate() {
                let y = (v as f64 - mean) * inv * w[i % c] as f64;
                want[s * g + i] = if relu { y.max(0.0) } else { y };
            }
        }
        let mut got = x.clone();
        cumulative_group_norm(
            &mut got,
            g,
            &w,
            eps as f32,
            relu,
            &mut CumulativeStats::default(),
        );
        close(&got, &want, 2e-6, &format!("group norm t{t} f{f} c{c}"));
        // Piece by piece with the stats carried: bit-identical.
        for split in [1, t / 2, t.saturating_sub(1)] {
            let mut stats = CumulativeStats::default();
            let mut a = x[..split * g].to_vec();
            let mut b = x[split * g..].to_vec();
            cumulative_group_norm(&mut a, g, &w, eps as f32, relu, &mut stats);
            cumulative_group_norm(&mut b, g, &w, eps as f32, relu, &mut stats);
            a.extend(b);
            assert_eq!(a, got, "split at {split}");
        }
    }
}

#[test]
fn causal_depthwise_conv1d_matches_the_formula() {
    for &(t, c, k) in &[(1, 1, 1), (9, 5, 5), (30, 37, 5), (6, 16, 3)] {
        let x = values(t * c, 5 + t as u64);
        let w = values(c * k, 6);
        let got = causal_depthwise_conv1d(&x, c, &w, k, &vec![0.0; (k - 1) * c]);
        let mut want = vec![0f64; t * c];
        for s in 0..t {
            for ch in 0..c {
                for j in 0..k {
                    let r = s as isize - (k as isize - 1) + j as isize;
                    if r >= 0 {
                        want[s * c + ch] += w[ch * k + j] as f64 * x[r as usize * c + ch] as f64;
                    }
                }
            }
        }
        close(&got, &want, 1e-6, &format!("conv t{t} c{c} k{k}"));
        // Split: the second piece gets the last k − 1 rows (zeros before the start) as history.
        for split in 0..=t {
            let mut hist = vec![0f32; (k - 1) * c];
            let mut out = causal_depthwise_conv1d(&x[..split * c], c, &w, k, &hist);
            let all: Vec<f32> = hist.iter().chain(&x[..split * c]).copied().collect();
            hist.copy_from_slice(&all[all.len() - (k - 1) * c..]);
            out.extend(causal_depthwise_conv1d(&x[split * c..], c, &w, k, &hist));
            assert_eq!(out, got, "split at {split}");
        }
    }
}

/// The reference's formulation: every (query, key) pair, the band `q − left ≤ key ≤ q` and
/// key validity as a mask, masked logits set to the most negative finite f32, softmax over
/// all keys, in f64.
fn naive_attention(
    a: &LocalAttention,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    valid: &[bool],
    rel: &[f32],
) -> Vec<f64> {
    let (h, hd) = (a.heads, a.head_dim);
    let d = h * hd;
    let t = q.len() / d;
    let mut out = vec![0f64; t * d];
    for i in 0..t {
        for head in 0..h {
            let dot = |x: &[f32], row: usize| -> f64 {
                (0..hd)
                    .map(|e| q[i * d + head * hd + e] as f64 * x[row * d + head * hd + e] as f64)
                    .sum()
            };
            let logits: Vec<f64> = (0..t)
                .map(|j| {
                    if j <= i && i - j <= a.left && valid[j] {
                        let l = dot(k, j) + dot(rel, i - j);
                        a.softcap as f64 * (l / a.softcap as f64).tanh()
                    } else {
                        f32::MIN as f64
                    }
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for j in 0..t {
                for x in 0..hd {
                    out[i * d + head * hd + x] += e[j] / s * v[j * d + head * hd + x] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn local_attention_matches_the_masked_softmax() {
    let a = LocalAttention {
        heads: 3,
        head_dim: 8,
        left: 4,
        softcap: 5.0,
    };
    let d = 24;
    for &(t, pad) in &[(1, 0), (6, 0), (17, 0), (17, 5)] {
        let q: Vec<f32> = values(t * d, 1).iter().map(|v| v * 2.0).collect();
        let k = values(t * d, 2);
        let v = values(t * d, 3);
        let rel = values((a.left + 1) * d, 4);
        let valid: Vec<bool> = (0..t).map(|i| i + pad < t).collect();
        let got = a.forward(&q, &k, &v, &valid, &rel);
        let want = naive_attention(&a, &q, &k, &v, &valid, &rel);
        // Compare the valid queries (padding queries are discarded by the tower).
        let n = (t - pad) * d;
        close(
            &got[..n],
            &want[..n],
            1e-5,
            &format!("attention t{t} pad{pad}"),
        );
        // Piece by piece: the second call sees the earlier keys/values as history.
        for split in 0..=t {
            let first = a.forward(
                &q[..split * d],
                &k[..split * d],
                &v[..split * d],
                &valid[..split],
                &rel,
            );
            let second = a.forward(&q[split * d..], &k, &v, &valid, &rel);
            let mut both = first;
            both.extend(second);
            assert_eq!(both, got, "split at {split}");
        }
    }
}
