//! Next-token selection: HF's logits processors (repetition penalty, temperature, top-k,
//! top-p, min-p, in that order) and a seeded draw, over a vocabulary of 262k ids.
//!
//! Ids at or above the text vocabulary size (262144 for Gemma: the multimodal ids, whose
//! logits equal the pad logit, spec §5.4) and any configured extra ids are never chosen.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use gemma3n_model::text::TopScores;

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Sample (true) or take the most likely token (false).
    pub do_sample: bool,
    /// Logits are divided by it; 0 means greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (ties at the boundary included); 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability sums to >= `top_p`
    /// (at least one); 1 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the largest; 0 disables.
    pub min_p: f32,
    /// HF repetition penalty over the ids passed as `previous`; 1 disables.
    pub repetition_penalty: f32,
    /// Seed of the random generator; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Ids never chosen, besides those at or above the text vocabulary size.
    pub banned_ids: Vec<u32>,
}

impl Default for SamplingParams {
    /// Gemma 3n's `generation_config.json`: sampling with top-k 64, top-p 0.95, temperature 1.
    fn default() -> Self {
        SamplingParams {
            do_sample: true,
            temperature: 1.0,
            top_k: 64,
            top_p: 0.95,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            banned_ids: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (argmax).
    pub fn greedy() -> Self {
        SamplingParams {
            do_sample: false,
            ..Self::default()
        }
    }

    /// Whether the next token is the argmax: `do_sample` false or temperature 0.
    pub fn is_greedy(&self) -> bool {
        !self.do_sample || self.temperature == 0.0
    }

    /// Checks the ranges: temperature >= 0, top_p in (0, 1], min_p in [0, 1],
    /// repetition_penalty > 0, all finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, v: f32, want: &str| {
            Err(Error::Sampling(format!("{field} = {v} is invalid: {want}")))
        };
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "it must be >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "it must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "it must be in [0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "it must be > 0",
            );
        }
        Ok(())
    }
}

/// The parts of a checkpoint's `generation_config.json` the engine uses.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// `eos_token_id`, an int or a list in the file (Gemma 3n IT: [1, 106]).
    pub eos_token_ids: Vec<u32>,
    pub max_new_tokens: Option<usize>,
    /// Sampling defaults; keys absent from the file take HF's `GenerationConfig` defaults
    /// (do_sample false, temperature 1, top_k 50, top_p 1, no min_p, repetition_penalty 1).
    pub sampling: SamplingParams,
}

impl GenerationConfig {
    /// Reads `generation_config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(path, format!("malformed JSON: {e}")))?;
        Self::from_json(&value, path)
    }

    /// Parses the JSON content of a `generation_config.json`; `path` names it in errors.
    pub fn from_json(value: &serde_json::Value, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let obj = value
            .as_object()
            .ok_or_else(|| Error::malformed(path, "expected a JSON object"))?;
        let field_err =
            |key: &str, want: &str| Error::malformed(path, format!("field `{key}` must be {want}"));
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let id = |key: &str| -> Result<Option<u32>> {
            get(key)
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(|| field_err(key, "a token id"))
                })
                .transpose()
        };
        let float = |key: &str, default: f32| -> Result<f32> {
            get(key).map_or(Ok(default), |v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| field_err(key, "a number"))
            })
        };
        let eos_token_ids = match get("eos_token_id") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| field_err("eos_token_id", "a token id or a list of token ids"))?,
            Some(_) => vec![id("eos_token_id")?.unwrap_or_default()],
        };
        let do_sample = get("do_sample").map_or(Ok(false), |v| {
            v.as_bool()
                .ok_or_else(|| field_err("do_sample", "a boolean"))
        })?;
        let top_k = get("top_k").map_or(Ok(50), |v| {
            v.as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| field_err("top_k", "a non-negative integer"))
        })?;
        let max_new_tokens = get("max_new_tokens")
            .map(|v| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| field_err("max_new_tokens", "a non-negative integer"))
            })
            .transpose()?;
        let sampling = SamplingParams {
            do_sample,
            temperature: float("temperature", 1.0)?,
            top_k,
            top_p: float("top_p", 1.0)?,
            min_p: float("min_p", 0.0)?,
            repetition_penalty: float("repetition_penalty", 1.0)?,
            seed: None,
            banned_ids: Vec::new(),
        };
        sampling
            .validate()
            .map_err(|e| Error::malformed(path, e.to_string()))?;
        Ok(GenerationConfig {
            bos_token_id: id("bos_token_id")?,
            pad_token_id: id("pad_token_id")?,
            eos_token_ids,
            max_new_tokens,
            sampling,
        })
    }
}

/// Chooses next tokens from logits. Keeps its buffers between calls (no allocation per token
/// once warmed up) and its random generator (a seeded sampler gives the same sequence).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    text_vocab_size: usize,
    rng: ChaCha20Rng,
    /// Logits after masking and repetition penalty.
    scores: Vec<f32>,
    /// Candidates (weight or score, id).
    cand: Vec<(f64, u32)>,
}

impl Sampler {
    /// A sampler; ids `>= text_vocab_size` (the tokenizer's text vocabulary, 262144 for
    /// Gemma) and `params.banned_ids` are never chosen.
    pub fn new(params: SamplingParams, text_vocab_size: usize) -> Result<Self> {
        params.validate()?;
        if text_vocab_size == 0 {
            return Err(Error::Sampling("the text vocabulary is empty".into()));
        }
        let rng = match params.seed {
            Some(seed) => ChaCha20Rng::seed_from_u64(seed),
            None => ChaCha20Rng::from_os_rng(),
        };
        Ok(Sampler {
            params,
            text_vocab_size,
            rng,
            scores: Vec::new(),
            cand: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// `Some(n)` when the next id is simply the largest of the first `n` logits (greedy,
    /// no repetition penalty, no banned ids): a decoder may then find it itself
    /// ([`crate::Decoder::forward_argmax`]), which is what [`Sampler::sample`] returns.
    pub fn argmax_vocab(&self) -> Option<usize> {
        let p = &self.params;
        (p.is_greedy() && p.repetition_penalty == 1.0 && p.banned_ids.is_empty())
            .then_some(self.text_vocab_size)
    }

    /// The next id given the logits over the model vocabulary and the ids seen so far (the
    /// repetition penalty applies to them; HF passes prompt and generated ids).
    pub fn sample(&mut self, logits: &[f32], previous: &[u32]) -> Result<u32> {
        if let Some(n) = self.argmax_vocab() {
            // Nothing changes the scores: the largest logit, without a copy.
            return argmax(&logits[..n.min(logits.len())]);
        }
        self.prepare_scores(logits, previous)?;
        if self.params.is_greedy() {
            return argmax(&self.scores);
        }
        self.filter_candidates()?;
        Ok(self.draw())
    }

    /// `Some((n, k))` when a draw needs only the `k` largest of the first `n` logits and
    /// the values tied with the `k`-th (sampling with top-k, no repetition penalty, no
    /// banned ids): a decoder may then send just those ([`crate::Decoder::forward_top_k`]),
    /// and [`Sampler::sample_scores`] draws from them what [`Sampler::sample`] draws from
    /// all the logits.
    pub fn top_k_request(&self) -> Option<(usize, usize)> {
        let p = &self.params;
        (!p.is_greedy() && p.repetition_penalty == 1.0 && p.banned_ids.is_empty() && p.top_k > 0)
            .then_some((self.text_vocab_size, p.top_k))
    }

    /// [`Sampler::sample`] from what a decoder sent: all the logits, or the candidates of
    /// a [`Sampler::top_k_request`] as (score, id) pairs in any order.
    pub fn sample_scores(&mut self, scores: &TopScores, previous: &[u32]) -> Result<u32> {
        let cands = match scores {
            TopScores::Logits(l) => return self.sample(l, previous),
            TopScores::Top(c) => c,
        };
        if self.top_k_request().is_none() {
            return Err(Error::Sampling(
                "top-k candidates given to a sampler that needs every logit".into(),
            ));
        }
        // As the scan over every logit would have found them: ascending ids, NaN and -inf
        // left out.
        self.cand.clear();
        self.cand.extend(
            cands
                .iter()
                .filter(|&&(s, id)| s > f32::NEG_INFINITY && (id as usize) < self.text_vocab_size)
                .map(|&(s, id)| (f64::from(s), id)),
        );
        self.cand.sort_unstable_by_key(|c| c.1);
        self.keep_top_k();
        self.weigh_candidates()?;
        Ok(self.draw())
    }

    /// One draw from `cand` by weight.
    fn draw(&mut self) -> u32 {
        let total: f64 = self.cand.iter().map(|c| c.0).sum();
        let mut u = self.rng.random::<f64>() * total;
        for &(w, id) in &self.cand {
            if u < w {
                return id;
            }
            u -= w;
        }
        // Rounding left u >= the last weight: the last kept candidate.
        self.cand.last().map(|c| c.1).unwrap_or_default()
    }

    /// The distribution `sample` draws from: kept ids with their probabilities, most likely
    /// first (a single id with probability 1 when greedy).
    pub fn distribution(&mut self, logits: &[f32], previous: &[u32]) -> Result<Vec<(u32, f64)>> {
        self.prepare_scores(logits, previous)?;
        if self.params.is_greedy() {
            return Ok(vec![(argmax(&self.scores)?, 1.0)]);
        }
        self.filter_candidates()?;
        self.cand
            .sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let total: f64 = self.cand.iter().map(|c| c.0).sum();
        Ok(self.cand.iter().map(|&(w, id)| (id, w / total)).collect())
    }

    /// Masks ids that may not be chosen and applies the repetition penalty, into `scores`.
    fn prepare_scores(&mut self, logits: &[f32], previous: &[u32]) -> Result<()> {
        let n = logits.len().min(self.text_vocab_size);
        if n == 0 {
            return Err(Error::Sampling("empty logits".into()));
        }
        self.scores.clear();
        self.scores.extend_from_slice(&logits[..n]);
        let penalty = self.params.repetition_penalty;
        if penalty != 1.0 {
            // From the original logit, so an id seen several times is penalized once (HF
            // gathers then scatters).
            for &id in previous {
                if let Some(&l) = logits.get(id as usize).filter(|_| (id as usize) < n) {
                    self.scores[id as usize] = if l > 0.0 { l / penalty } else { l * penalty };
                }
            }
        }
        for &id in &self.params.banned_ids {
            if let Some(s) = self.scores.get_mut(id as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Fills `cand` with the kept ids and their unnormalized probabilities (f64).
    fn filter_candidates(&mut self) -> Result<()> {
        let desc = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0);
        let finite = self
            .scores
            .iter()
            .enumerate()
            .filter(|(_, &s)| s > f32::NEG_INFINITY)
            .map(|(i, &s)| (f64::from(s), i as u32));
        self.cand.clear();
        let k = self.params.top_k;
        if k == 0 {
            self.cand.extend(finite);
        } else {
            // Top-k in one pass: a buffer of at most ~2k candidates, pruned to the k largest
            // (plus ties) whenever it fills; scores below the running k-th are skipped.
            let mut cap = (2 * k).max(64);
            let mut threshold = f64::NEG_INFINITY;
            for c in finite {
                if c.0 < threshold {
                    continue;
                }
                self.cand.push(c);
                if self.cand.len() >= cap {
                    self.cand.select_nth_unstable_by(k - 1, desc);
                    threshold = self.cand[k - 1].0;
                    self.cand.retain(|c| c.0 >= threshold);
                    cap = cap.max(2 * self.cand.len());
                }
            }
            self.keep_top_k();
        }
        self.weigh_candidates()
    }

    /// With top-k: keeps the `k` largest candidates and every one tied with the `k`-th (as
    /// HF does), most likely first (the lower id first among equal scores), so the order
    /// does not depend on how they were found.
    fn keep_top_k(&mut self) {
        let k = self.params.top_k;
        if k == 0 {
            return;
        }
        let desc = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0);
        if self.cand.len() > k {
            self.cand.select_nth_unstable_by(k - 1, desc);
            let threshold = self.cand[k - 1].0;
            self.cand.retain(|c| c.0 >= threshold);
        }
        self.cand
            .sort_unstable_by(|a, b| desc(a, b).then(a.1.cmp(&b.1)));
    }

    /// Turns the candidates' scores into weights and applies top-p and min-p.
    fn weigh_candidates(&mut self) -> Result<()> {
        let t = f64::from(self.params.temperature);
        let desc = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0);
        if self.cand.is_empty() {
            return Err(nothing_to_sample());
        }

        // Softmax weights of the temperature-scaled scores, relative to the largest (which
        // gets weight 1).
        let max = self
            .cand
            .iter()
            .map(|c| c.0)
            .fold(f64::NEG_INFINITY, f64::max);
        for c in &mut self.cand {
            c.0 = ((c.0 - max) / t).exp();
        }

        let top_p = f64::from(self.params.top_p);
        if top_p < 1.0 {
            let total: f64 = self.cand.iter().map(|c| c.0).sum();
            let target = top_p * total;
            // Find a prefix of most likely candidates holding `target` without sorting them all:
            // select the m largest for growing m, then sort only those.
            let len = self.cand.len();
            let mut m = len.min(1024);
            loop {
                if m < len {
                    self.cand.select_nth_unstable_by(m - 1, desc);
                }
                let mass: f64 = self.cand[..m].iter().map(|c| c.0).sum();
                if mass >= target || m == len {
                    break;
                }
                m = (m * 4).min(len);
            }
            self.cand[..m].sort_unstable_by(|a, b| desc(a, b).then(a.1.cmp(&b.1)));
            // Keep candidates while the mass before them is below top_p (so at least one).
            let mut before = 0.0;
            let mut keep = 0;
            while keep < m && before < target {
                before += self.cand[keep].0;
                keep += 1;
            }
            self.cand.truncate(keep.max(1));
        }

        let min_p = f64::from(self.params.min_p);
        if min_p > 0.0 {
            // The largest weight is exactly 1.
            self.cand.retain(|c| c.0 >= min_p);
        }
        Ok(())
    }
}

/// Index of the largest score (the lowest id among ties, as torch.argmax); NaN and -inf
/// never win. Two passes that the compiler vectorizes: the maximum, then its first place.
pub fn argmax(scores: &[f32]) -> Result<u32> {
    if scores.is_empty() {
        return Err(Error::Sampling("empty logits".into()));
    }
    // f32::max ignores NaN, so the maximum is that of the other scores.
    let best = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    if best == f32::NEG_INFINITY {
        return Err(nothing_to_sample());
    }
    let at = scores
        .iter()
        .position(|&s| s == best)
        .expect("the maximum is a score");
    Ok(at as u32)
}

fn nothing_to_sample() -> Error {
    Error::Sampling("no token can be chosen: every logit is masked, -inf or NaN".into())
}
