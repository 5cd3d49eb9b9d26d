//! The generation loop: prefill new tokens into a sequence's KV cache, then decode one
//! token at a time, streaming each to a callback.

use std::time::{Duration, Instant};

use gemma3n_model::text::{EmbedFn, TopScores};
use gemma3n_model::{Logits, ModelError, TextModel};

use crate::backend::{argmax_of_first, Decoder, DecoderCache};

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id was sampled (it is not part of the output and not in the cache).
    Stop(u32),
    /// `max_new_tokens` were generated.
    MaxTokens,
    /// The context (max_position_embeddings) is full.
    ContextFull,
    /// The token callback asked to stop.
    Cancelled,
}

/// The outcome of one `generate` call.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    /// Single-token forward passes run while decoding.
    pub decode_steps: usize,
    pub decode_time: Duration,
}

impl Generation {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
    /// Decode speed over the tokens fed back through the model.
    pub fn decode_tok_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// How [`Session::generate`] chooses each next token.
pub enum Pick<'a> {
    /// The largest of the first `n` logits, the lowest id among equal ones (greedy
    /// decoding): the decoder may find it where the logits are ([`Decoder::forward_argmax`]:
    /// on a GPU, without copying them back).
    Argmax(usize),
    /// Any rule: `f(logits, ids so far)` is the next id.
    With(&'a mut dyn FnMut(&[f32], &[u32]) -> u32),
    /// A draw that needs only the `k` largest of the first `vocab` logits and the values
    /// tied with the `k`-th: `f(scores, ids so far)` is the next id, given all the logits
    /// or, when the decoder can find them ([`Decoder::forward_top_k`]), just those. With
    /// `k = 0`, `f` always gets every logit.
    TopK {
        vocab: usize,
        k: usize,
        f: &'a mut dyn FnMut(&TopScores, &[u32]) -> u32,
    },
}

/// One sequence: the model (on any backend, the CPU by default), its KV cache and the
/// tokens the cache holds.
pub struct Session<'m, M: Decoder = TextModel> {
    model: &'m M,
    cache: M::Cache,
    tokens: Vec<u32>,
}

impl<'m> Session<'m, TextModel> {
    /// A sequence running the whole model on the CPU.
    pub fn new(model: &'m TextModel) -> Session<'m, TextModel> {
        Self::with_cache(model, model.new_cache())
    }
}

impl<'m, M: Decoder> Session<'m, M> {
    /// A sequence running the MatFormer slice `cache` was made for (an empty cache of
    /// `model`: `model.new_cache_for(&slice)`).
    pub fn with_cache(model: &'m M, mut cache: M::Cache) -> Session<'m, M> {
        cache.clear();
        Session {
            model,
            cache,
            tokens: Vec::new(),
        }
    }

    /// The tokens held by the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Makes the cache hold the longest prefix of `ids` it can (at most all but the last
    /// id, so the next call has something to prefill) and returns its length: the caller
    /// then generates from `ids[returned..]`. Used by multi-turn chat, whose prompts
    /// extend the previous ones.
    pub fn reuse_prefix(&mut self, ids: &[u32]) -> usize {
        let common = self
            .tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = common.min(ids.len().saturating_sub(1));
        if keep < self.tokens.len() {
            if self.cache.truncate(keep) {
                self.tokens.truncate(keep);
            } else {
                self.reset();
                return 0;
            }
        }
        keep
    }

    /// Tokens that still fit in the context.
    pub fn room(&self) -> usize {
        self.model.config().max_position_embeddings - self.tokens.len()
    }

    /// Appends `prompt` to the sequence (one prefill), then generates up to
    /// `max_new_tokens`: `pick` chooses each next id, `on_token(id)` receives it and
    /// returns false to stop. Stop ids end generation without being
    /// emitted. The prompt must fit in the context; generation stops when it is full.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_new_tokens: usize,
        stop_ids: &[u32],
        pick: Pick<'_>,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation, ModelError> {
        self.generate_embedded(prompt, None, max_new_tokens, stop_ids, pick, on_token)
    }

    /// [`Session::generate`] with the embeddings of the prompt's image (or audio) positions
    /// given by `embed` (see [`TextModel::forward_embedded`]).
    pub fn generate_embedded(
        &mut self,
        prompt: &[u32],
        embed: Option<EmbedFn<'_>>,
        max_new_tokens: usize,
        stop_ids: &[u32],
        mut pick: Pick<'_>,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Generation, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Invalid("empty prompt".into()));
        }
        let ctx = self.model.config().max_position_embeddings;
        if self.tokens.len() + prompt.len() > ctx {
            return Err(ModelError::Invalid(format!(
                "prompt of {} tokens (plus {} already in the conversation) exceeds the context length of {ctx} tokens",
                prompt.len(),
                self.tokens.len()
            )));
        }
        let t0 = Instant::now();
        let logits = self
            .model
            .forward_embedded(prompt, &mut self.cache, Logits::Last, embed)?;
        self.tokens.extend_from_slice(prompt);
        // The next id: from the prefill's logits, then from each decode step.
        let mut next = match &mut pick {
            _ if max_new_tokens == 0 => 0,
            Pick::Argmax(n) => argmax_of_first(&logits, *n)?,
            Pick::With(f) => f(&logits, &self.tokens),
            Pick::TopK { f, .. } => f(&TopScores::Logits(logits), &self.tokens),
        };
        let prefill_time = t0.elapsed();
        let t1 = Instant::now();
        let mut out = Vec::new();
        let mut decode_steps = 0;
        let stop = loop {
            if out.len() == max_new_tokens {
                break StopReason::MaxTokens;
            }
            if stop_ids.contains(&next) {
                break StopReason::Stop(next);
            }
            out.push(next);
            if !on_token(next) {
                break StopReason::Cancelled;
            }
            if self.tokens.len() == ctx {
                break StopReason::ContextFull;
            }
            if out.len() == max_new_tokens {
                // The last token is not fed back: nothing would read its logits. It is
                // fed at the start of the next call if the conversation continues.
                break StopReason::MaxTokens;
            }
            match &mut pick {
                Pick::Argmax(n) => {
                    let id = self.model.forward_argmax(next, &mut self.cache, *n)?;
                    self.tokens.push(next);
                    next = id;
                }
                Pick::With(f) => {
                    let logits = self.model.forward_embedded(
                        &[next],
                        &mut self.cache,
                        Logits::Last,
                        None,
                    )?;
                    self.tokens.push(next);
                    next = f(&logits, &self.tokens);
                }
                Pick::TopK { vocab, k, f } => {
                    let scores = self
                        .model
                        .forward_top_k(next, &mut self.cache, *vocab, *k)?;
                    self.tokens.push(next);
                    next = f(&scores, &self.tokens);
                }
            }
            decode_steps += 1;
        };
        Ok(Generation {
            tokens: out,
            stop,
            prompt_tokens: prompt.len(),
            prefill_time,
            decode_steps,
            decode_time: t1.elapsed(),
        })
    }
}
