//! The decoder layer and the whole text forward pass (spec §3).

use gemma3n_compute::cpu::{matmul, ops};

use super::kv_cache::KvCache;
use super::weights::TextWeights;
use super::{altup, attention, ffn, laurel, ple, TextModel};
use crate::config::KvSource;
use crate::error::{ModelError, Result};

/// Which positions' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation). Layers after the last KV-owning layer then
    /// process only that position ("fast prefill").
    Last,
    /// Every position.
    All,
}

/// What a decode step sent back for a top-k draw: all the logits of the position, or only
/// the candidates (the `k` largest of the first `n` and every value tied with the `k`-th,
/// as (logit, id) pairs in any order; NaN and -inf never among them).
#[derive(Clone, Debug, PartialEq)]
pub enum TopScores {
    Logits(Vec<f32>),
    Top(Vec<(f32, u32)>),
}

/// Observer of the AltUp streams: called with 0 after the stream initialisation and with
/// k+1 after the k-th layer run (layer k of the slice), with the A stream buffers
/// (`n x D` each).
pub type StreamHook<'a> = &'a mut dyn FnMut(usize, &[Vec<f32>]);

/// Replaces the embedding row of a multimodal position: `(absolute position, id, row)`.
pub type EmbedFn<'a> = &'a dyn Fn(usize, u32, &mut [f32]) -> Result<()>;

impl TextModel {
    /// Runs `ids` (the next tokens of the sequence held by `cache`, with the MatFormer slice
    /// the cache was made for) through the decoder and returns logits: `1 x V` for [`Logits::Last`], `T x V` for [`Logits::All`].
    pub fn forward(&self, ids: &[u32], cache: &mut KvCache, want: Logits) -> Result<Vec<f32>> {
        self.forward_with_hook(ids, cache, want, None)
    }

    /// [`TextModel::forward`] where `embed` may replace the embedding row of each position
    /// whose id is outside the base vocabulary (ids ≥ `vocab_size_per_layer_input`: image
    /// and audio tokens). It is called with the absolute position, the id and the row
    /// (holding the scaled text embedding). The per-layer inputs then see the merged rows
    /// (spec/multimodal.md §6).
    pub fn forward_embedded(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
    ) -> Result<Vec<f32>> {
        self.run(ids, cache, want, embed, None)
    }

    pub fn forward_with_hook(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        want: Logits,
        hook: Option<StreamHook<'_>>,
    ) -> Result<Vec<f32>> {
        self.run(ids, cache, want, None, hook)
    }

    /// One decode step for several sequences at once: `ids[i]` is the next token of the
    /// sequence held by `caches[i]`. All caches must run the same slice. Returns `B x V`
    /// logits; row `i` equals `forward(&[ids[i]], caches[i], Logits::Last)` (every step is
    /// row by row or a matmul whose rows do not interact; sparse FFN layers take the same
    /// per-row path as a single token).
    pub fn forward_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<f32>> {
        check_batch(ids.len(), caches.iter().map(|c| c.plan()))?;
        let seq: Vec<usize> = (0..ids.len()).collect();
        self.run_rows(ids, caches, &seq, Logits::All, None, None)
    }

    fn run(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        want: Logits,
        embed: Option<EmbedFn<'_>>,
        hook: Option<StreamHook<'_>>,
    ) -> Result<Vec<f32>> {
        let seq = vec![0; ids.len()];
        self.run_rows(ids, &mut [cache], &seq, want, embed, hook)
    }

    /// The forward pass over rows of one or more sequences: row `t` is the next token of
    /// sequence `seq[t]` (held by `caches[seq[t]]`; each sequence's rows contiguous, in
    /// order). `Logits::Last` is for a single sequence.
    fn run_rows(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
        seq: &[usize],
        want: Logits,
        embed: Option<EmbedFn<'_>>,
        mut hook: Option<StreamHook<'_>>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let w: &TextWeights = &self.weights;
        let (d, p) = (cfg.hidden_size, cfg.hidden_size_per_layer_input);
        let t_all = ids.len();
        if t_all == 0 {
            return Err(ModelError::Invalid("forward called with no tokens".into()));
        }
        let batched = caches.len() > 1;
        debug_assert!(!batched || want == Logits::All);
        // Rows per sequence, and each row's absolute position.
        let mut rows_of = vec![0usize; caches.len()];
        let mut pos: Vec<usize> = Vec::with_capacity(t_all);
        for &s in seq {
            pos.push(caches[s].pos() + rows_of[s]);
            rows_of[s] += 1;
        }
        for (s, c) in caches.iter().enumerate() {
            if c.pos() + rows_of[s] > cfg.max_position_embeddings {
                return Err(ModelError::Invalid(format!(
                    "sequence of {} tokens exceeds the context length (max_position_embeddings = {})",
                    c.pos() + rows_of[s],
                    cfg.max_position_embeddings
                )));
            }
        }
        let pos0 = pos[0];
        check_ids(ids, cfg.vocab_size)?;
        let eps = cfg.rms_norm_eps;

        // Embeddings, scaled by √D in f32.
        let scale = (d as f32).sqrt();
        let mut e = vec![0f32; t_all * d];
        for (t, &id) in ids.iter().enumerate() {
            let row = &mut e[t * d..(t + 1) * d];
            w.embed_tokens.row_to_f32(id as usize, row);
            row.iter_mut().for_each(|v| *v *= scale);
            if let Some(f) = embed {
                if id as usize >= cfg.vocab_size_per_layer_input {
                    f(pos0 + t, id, row)?;
                }
            }
        }
        let plan = caches[0].plan().clone();
        let kept: Vec<usize> = plan.layers.iter().map(|sl| sl.layer).collect();
        let nk = kept.len();
        let mut pi = ple::per_layer_inputs(cfg, w, ids, &e, &kept);
        let mut streams = altup::init_streams(&w.altup_projections, &e, t_all, d);
        if let Some(h) = hook.as_mut() {
            h(0, &streams);
        }
        let mut n = t_all;
        for (k, sl) in plan.layers.iter().enumerate() {
            let l = sl.layer;
            if sl.kv != KvSource::Own && want == Logits::Last && n > 1 && !batched {
                // Fast prefill: later layers only feed the last position's logits, and
                // their K/V come from the producers, which already saw every position.
                keep_last_row(&mut streams, d, n);
                pi.drain(..(n - 1) * nk * p);
                pos.drain(..n - 1);
                n = 1;
            }
            let lw = &w.layers[l];
            let mut pred = altup::predict(&lw.altup, &streams, n, d, eps);
            let a = &pred[0];
            let mut x = a.clone();
            ops::rms_norm_rows(&mut x, d, Some(&lw.input_layernorm), eps);
            let lau = laurel::laurel(lw, &x, n, d, eps);
            let seq_now = &seq[seq.len() - n..];
            let mut o =
                attention::attention(cfg, l, lw, &x, n, &pos, seq_now, &self.inv_freq[l], caches);
            ops::rms_norm_rows(&mut o, d, Some(&lw.post_attention_layernorm), eps);
            let sqrt2 = std::f32::consts::SQRT_2;
            let mut hbuf: Vec<f32> = (0..n * d).map(|i| (a[i] + o[i] + lau[i]) / sqrt2).collect();
            let mut y = hbuf.clone();
            ops::rms_norm_rows(&mut y, d, Some(&lw.pre_feedforward_layernorm), eps);
            let mut f = if batched && sl.sparsity_z.is_some() {
                // Sparse layers: rows in groups that take the per-row sparse path, so each
                // sequence gets exactly what it would get alone.
                y.chunks(ffn::SPARSE_MAX_ROWS * d)
                    .flat_map(|c| ffn::ffn(lw, c, c.len() / d, sl.ffn_width, sl.sparsity_z))
                    .collect()
            } else {
                ffn::ffn(lw, &y, n, sl.ffn_width, sl.sparsity_z)
            };
            ops::rms_norm_rows(&mut f, d, Some(&lw.post_feedforward_layernorm), eps);
            hbuf.iter_mut().zip(&f).for_each(|(h, f)| *h += f);
            altup::correct(&lw.altup, &mut pred, &hbuf, n, d, eps);
            let pi_l: Vec<f32> = (0..n)
                .flat_map(|t| {
                    pi[t * nk * p + k * p..t * nk * p + (k + 1) * p]
                        .iter()
                        .copied()
                })
                .collect();
            ple::inject(cfg, lw, &mut pred, &pi_l, n);
            streams = pred;
            if let Some(h) = hook.as_mut() {
                h(k + 1, &streams);
            }
        }
        for (c, &r) in caches.iter_mut().zip(&rows_of) {
            c.finish_step(r);
        }

        if want == Logits::Last && n > 1 {
            keep_last_row(&mut streams, d, n);
            n = 1;
        }
        let mut hf = altup::unembed_streams(&w.altup_unembed_projections, &streams, n, d);
        ops::rms_norm_rows(&mut hf, d, Some(&w.norm), eps);
        let v = cfg.vocab_size;
        let mut logits = vec![0f32; n * v];
        matmul(&hf, n, &w.embed_tokens, &mut logits);
        if let Some(cap) = cfg.final_logit_softcapping {
            ops::soft_cap_rows(&mut logits, v, cap);
        }
        Ok(logits)
    }
}

fn keep_last_row(streams: &mut [Vec<f32>], d: usize, n: usize) {
    for s in streams.iter_mut() {
        s.drain(..(n - 1) * d);
    }
}

/// The arguments of a batched step (either backend): one id per sequence, every sequence
/// on the same MatFormer slice.
/// Every token id below `vocab_size`, or an error naming the first that is not.
pub(crate) fn check_ids(ids: &[u32], vocab_size: usize) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(&bad) => Err(ModelError::Invalid(format!(
            "token id {bad} is outside the vocabulary (vocab_size = {vocab_size})"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn check_batch<'a>(
    ids: usize,
    plans: impl ExactSizeIterator<Item = &'a std::sync::Arc<crate::matformer::SlicePlan>>,
) -> Result<()> {
    let sequences = plans.len();
    if ids != sequences {
        return Err(ModelError::Invalid(format!(
            "forward_batch: {ids} ids for {sequences} sequences"
        )));
    }
    let mut first = None;
    for p in plans {
        if *first.get_or_insert(p) != p {
            return Err(ModelError::Invalid(
                "forward_batch: the sequences run different MatFormer slices".into(),
            ));
        }
    }
    Ok(())
}
