//! The generation worker: one thread owns the model and runs every active request with
//! continuous batching. Each step, every active sequence picks its next token, and the tokens
//! to feed back go through the model in one batched forward pass per MatFormer slice
//! ([`gemma3n_engine::AnyDecoder::forward_batch`]: on the CPU bit-identical to running each
//! sequence alone; on a GPU up to 8 sequences through the decode kernels at once); new requests
//! join between steps (their prompt is prefilled on its own, a piece per step), finished or cancelled ones
//! leave and free their KV cache at once. A request whose channel is closed (the client went
//! away) is cancelled at its next token.

use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use gemma3n_engine::{Sampler, SamplingParams, SeqCache, TokenStream};
use gemma3n_model::matformer::SlicePlan;
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::vision::preprocess::PixelValues;
use gemma3n_model::Logits;
use tokio::sync::mpsc::UnboundedSender;

use crate::Model;

/// One alternative of a token's log-probability report.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// What a request's channel receives.
#[derive(Debug)]
pub enum Event {
    /// New text (possibly empty) and, when asked for, the log-probabilities of the tokens
    /// that produced it.
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The end: why, and the token counts.
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// A queued request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub plan: Arc<SlicePlan>,
    pub params: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    /// `Some(n)`: report each token's log-probability and the `n` most likely.
    pub logprobs: Option<usize>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// The soft tokens of the request's images and audio clips ([`encode_media`]), which fill
    /// the prompt's placeholders in order.
    pub image_tokens: Vec<Vec<f32>>,
    pub clip_tokens: Vec<Vec<f32>>,
    pub events: UnboundedSender<Event>,
    /// When the request was queued (for the time-to-first-token histogram).
    pub submitted: std::time::Instant,
}

/// Upper bounds (seconds) of the time-to-first-token histogram buckets.
pub const TTFT_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Batched decode passes, the rows they carried, and the most rows in one.
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    pub max_rows: AtomicUsize,
    /// Time to first token: count per bucket of [`TTFT_BUCKETS`] (cumulative counts are
    /// formed when printed), the overflow, and the sum in microseconds.
    pub ttft_buckets: [AtomicU64; TTFT_BUCKETS.len() + 1],
    pub ttft_sum_us: AtomicU64,
}

impl Stats {
    fn record_ttft(&self, secs: f64) {
        let b = TTFT_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(TTFT_BUCKETS.len());
        self.ttft_buckets[b].fetch_add(1, Ordering::Relaxed);
        self.ttft_sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Where the first stop string starts in `text`, if any.
fn find_stop(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// Length of the longest suffix of `text` that is a proper prefix of a stop string (that text
/// is held back until it is known not to start one).
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > best && text.ends_with(&s[..i]) {
                best = i;
            }
        }
    }
    best
}

/// One block of `[tokens, text width]` soft tokens per image or clip.
pub type SoftTokens = Vec<Vec<f32>>;

/// The soft tokens of preprocessed images and 16 kHz clips (at most 30 s each), through the
/// model's towers. Runs outside the worker (the HTTP side calls it on a blocking thread), so
/// encoding a request's media does not stall the running streams.
pub fn encode_media(
    m: &Model,
    images: &[PixelValues],
    clips: &[Vec<f32>],
) -> Result<(SoftTokens, SoftTokens), String> {
    let image_tokens = match (&m.vision, images.is_empty()) {
        (_, true) => Vec::new(),
        (None, false) => return Err("this model has no vision tower".into()),
        (Some(v), false) => images
            .iter()
            .map(|px| v.encode(&px.data, px.size))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?,
    };
    let clip_tokens = match (&m.audio, clips.is_empty()) {
        (_, true) => Vec::new(),
        (None, false) => return Err("this model has no audio tower".into()),
        (Some(a), false) => {
            let refs: Vec<&[f32]> = clips.iter().map(|c| c.as_slice()).collect();
            a.encode_clips(&refs).map_err(|e| e.to_string())?
        }
    };
    Ok((image_tokens, clip_tokens))
}

/// The prompt that places the job's soft tokens (moved out of the job).
fn media_prompt<'m>(m: &'m Model, job: &mut Job) -> Result<Option<MediaPrompt<'m>>, String> {
    let images = std::mem::take(&mut job.image_tokens);
    let clips = std::mem::take(&mut job.clip_tokens);
    if images.is_empty() && clips.is_empty() {
        return Ok(None);
    }
    let images = m
        .vision
        .as_ref()
        .filter(|_| !images.is_empty())
        .zip(Some(images));
    let clips = m
        .audio
        .as_ref()
        .filter(|_| !clips.is_empty())
        .zip(Some(clips));
    MediaPrompt::new(&job.prompt, 0, m.text.cfg.hidden_size, images, clips)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// One active request.
struct Seq<'m> {
    job: Job,
    /// The soft tokens of its media, placed at the prompt's placeholders.
    media: Option<MediaPrompt<'m>>,
    /// Prompt tokens already in the cache; the request decodes once all are.
    prefilled: usize,
    cache: Box<dyn SeqCache>,
    sampler: Sampler,
    stream: TokenStream<'m>,
    /// The tokens in the cache (prompt, then the fed-back tokens).
    history: Vec<u32>,
    /// Logits for the next pick: this sequence's row of a (batched) forward pass's result,
    /// shared with the other rows rather than copied out.
    logits: LogitRow,
    counts: HashMap<u32, u32>,
    completion: usize,
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
    lps: Vec<TokenLogprob>,
    /// The next token, picked ahead (in parallel with the other sequences') for `step`.
    picked: Option<Result<u32, String>>,
}

/// One row of logits: `len` values at `start` of a forward pass's result, which the rows of
/// a batched step share.
#[derive(Default)]
struct LogitRow {
    data: Arc<Vec<f32>>,
    start: usize,
    len: usize,
}

impl LogitRow {
    /// A result of one row.
    fn whole(v: Vec<f32>) -> LogitRow {
        let len = v.len();
        LogitRow {
            data: Arc::new(v),
            start: 0,
            len,
        }
    }

    /// Row `r` of a batch result with rows of `v` values.
    fn row(data: &Arc<Vec<f32>>, r: usize, v: usize) -> LogitRow {
        LogitRow {
            data: data.clone(),
            start: r * v,
            len: v,
        }
    }

    fn as_slice(&self) -> &[f32] {
        &self.data[self.start..self.start + self.len]
    }
}

/// What a sequence does after its pick.
enum Step {
    /// Feed this token and continue.
    Feed(u32),
    /// Finished (reported) or cancelled.
    Done,
}

impl<'m> Seq<'m> {
    /// A new request: nothing prefilled yet.
    fn start(m: &'m Model, mut job: Job) -> Result<Seq<'m>, String> {
        let media = media_prompt(m, &mut job)?;
        let cache = m
            .decoder()
            .new_cache(job.plan.clone())
            .map_err(|e| e.to_string())?;
        let sampler = Sampler::new(job.params.clone(), m.tokenizer.text_vocab_size())
            .map_err(|e| e.to_string())?;
        Ok(Seq {
            history: Vec::with_capacity(job.prompt.len() + job.max_tokens),
            job,
            media,
            prefilled: 0,
            cache,
            sampler,
            stream: TokenStream::new(&m.tokenizer, true),
            logits: LogitRow::default(),
            counts: HashMap::new(),
            completion: 0,
            text: String::new(),
            sent: 0,
            lps: Vec::new(),
            picked: None,
        })
    }

    /// Whether the whole prompt is in the cache.
    fn decoding(&self) -> bool {
        self.prefilled == self.job.prompt.len()
    }

    /// Whether this step's `step` picks a token.
    fn will_pick(&self) -> bool {
        self.decoding() && self.completion < self.job.max_tokens
    }

    /// Prefills the next piece of the prompt.
    fn prefill_chunk(&mut self, m: &Model, chunk: usize) -> Result<(), String> {
        let media = &self.media;
        let embed = |pos: usize, id: u32, row: &mut [f32]| match media {
            Some(p) => p.embed(pos, id, row),
            None => Ok(()),
        };
        let end = (self.prefilled + chunk.max(1)).min(self.job.prompt.len());
        let piece = &self.job.prompt[self.prefilled..end];
        self.logits = LogitRow::whole(
            m.decoder()
                .forward_sequence(
                    piece,
                    &mut *self.cache,
                    Logits::Last,
                    media
                        .as_ref()
                        .map(|_| &embed as gemma3n_model::text::EmbedFn),
                )
                .map_err(|e| e.to_string())?,
        );
        self.history.extend_from_slice(piece);
        self.prefilled = end;
        Ok(())
    }

    /// The next token from the current logits (penalties, sampling, log-probabilities).
    fn pick(&mut self, m: &Model) -> Result<u32, String> {
        let job = &self.job;
        let mut penalized = Vec::new();
        let logits = if job.presence_penalty != 0.0 || job.frequency_penalty != 0.0 {
            penalized.extend_from_slice(self.logits.as_slice());
            for (&id, &c) in &self.counts {
                if let Some(v) = penalized.get_mut(id as usize) {
                    *v -= job.presence_penalty + job.frequency_penalty * c as f32;
                }
            }
            &penalized[..]
        } else {
            self.logits.as_slice()
        };
        let id = self
            .sampler
            .sample(logits, &self.history)
            .map_err(|e| e.to_string())?;
        if let Some(n) = job.logprobs {
            self.lps.push(logprobs(m, logits, id, n));
        }
        Ok(id)
    }

    /// Picks and emits the next token, as `Session::generate` would.
    fn step(&mut self, m: &Model, stats: &Stats) -> Result<Step, String> {
        if self.completion == 0 {
            stats.record_ttft(self.job.submitted.elapsed().as_secs_f64());
        }
        if self.completion == self.job.max_tokens {
            return Ok(self.finish("length"));
        }
        let next = match self.picked.take() {
            Some(p) => p?,
            None => self.pick(m)?,
        };
        if m.stop_ids.contains(&next) {
            self.lps.pop();
            return Ok(self.finish("stop"));
        }
        self.completion += 1;
        *self.counts.entry(next).or_insert(0) += 1;
        let piece = self.stream.push(next).unwrap_or_default();
        self.text.push_str(&piece);
        let stop_at = find_stop(&self.text[self.sent..], &self.job.stop);
        if let Some(at) = stop_at {
            self.text.truncate(self.sent + at);
        }
        let safe = if stop_at.is_some() {
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text[self.sent..], &self.job.stop)
        };
        if safe > self.sent || !self.lps.is_empty() {
            let ev = Event::Delta {
                text: self.text[self.sent..safe].to_string(),
                logprobs: std::mem::take(&mut self.lps),
            };
            self.sent = safe;
            if self.job.events.send(ev).is_err() {
                return Ok(Step::Done); // the client went away
            }
        }
        if stop_at.is_some() {
            return Ok(self.finish("stop"));
        }
        if self.history.len() == m.text.cfg.max_position_embeddings
            || self.completion == self.job.max_tokens
        {
            return Ok(self.finish("length"));
        }
        Ok(Step::Feed(next))
    }

    /// Sends the held-back text and the end.
    fn finish(&mut self, reason: &'static str) -> Step {
        let rest = self.stream.flush().unwrap_or_default();
        self.text.push_str(&rest);
        let end = find_stop(&self.text[self.sent..], &self.job.stop)
            .map_or(self.text.len(), |at| self.sent + at);
        let reason = if end < self.text.len() {
            "stop"
        } else {
            reason
        };
        if end > self.sent || !self.lps.is_empty() {
            let _ = self.job.events.send(Event::Delta {
                text: self.text[self.sent..end].to_string(),
                logprobs: std::mem::take(&mut self.lps),
            });
        }
        self.sent = end;
        let _ = self.job.events.send(Event::Done {
            finish_reason: reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.completion,
        });
        Step::Done
    }
}

/// The log-probability report of `id` from `logits` (log-softmax over the text ids).
fn logprobs(m: &Model, logits: &[f32], id: u32, n: usize) -> TokenLogprob {
    let decode = |id: u32| m.tokenizer.decode(&[id], false).unwrap_or_default();
    let v = m.tokenizer.text_vocab_size().min(logits.len());
    let max = logits[..v]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let lse = max
        + logits[..v]
            .iter()
            .map(|&x| ((x - max) as f64).exp())
            .sum::<f64>()
            .ln() as f32;
    let mut top = Vec::new();
    if n > 0 {
        let mut idx: Vec<u32> = (0..v as u32).collect();
        let k = n.min(v);
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        top = idx
            .into_iter()
            .map(|i| (decode(i), logits[i as usize] - lse))
            .collect();
    }
    TokenLogprob {
        token: decode(id),
        logprob: logits
            .get(id as usize)
            .map_or(f32::NEG_INFINITY, |&x| x - lse),
        top,
    }
}

/// Runs the scheduler until the queue's senders are all gone and nothing is active. At most
/// `max_batch` requests are active; a prompt is prefilled `prefill_chunk` tokens per step, so
/// a long one does not stall the running streams.
pub fn run(
    model: Arc<Model>,
    jobs: std::sync::mpsc::Receiver<Job>,
    stats: Arc<Stats>,
    max_batch: usize,
    prefill_chunk: usize,
) {
    let m: &Model = &model;
    let mut active: Vec<Seq<'_>> = Vec::new();
    loop {
        // Admit waiting requests between steps (block only when idle).
        let mut incoming = Vec::new();
        if active.is_empty() {
            match jobs.recv() {
                Ok(j) => incoming.push(j),
                Err(_) => return,
            }
        }
        while active.len() + incoming.len() < max_batch {
            match jobs.try_recv() {
                Ok(j) => incoming.push(j),
                Err(_) => break,
            }
        }
        for job in incoming {
            stats.queued.fetch_sub(1, Ordering::Relaxed);
            stats.requests.fetch_add(1, Ordering::Relaxed);
            stats
                .prompt_tokens
                .fetch_add(job.prompt.len() as u64, Ordering::Relaxed);
            let events = job.events.clone();
            match Seq::start(m, job) {
                Ok(seq) => active.push(seq),
                Err(e) => {
                    let _ = events.send(Event::Error(e));
                }
            }
        }
        stats.active.store(active.len(), Ordering::Relaxed);
        // Every decoding sequence picks its next token, all at once (sampling and
        // log-probabilities scan the whole vocabulary); then, in order, each emits it and
        // the ones that continue are fed back together.
        active
            .par_iter_mut()
            .filter(|s| s.will_pick())
            .for_each(|s| s.picked = Some(s.pick(m)));
        let mut feed: Vec<(usize, u32)> = Vec::new();
        let mut keep = vec![true; active.len()];
        for (i, seq) in active.iter_mut().enumerate() {
            // Requests still prefilling take one piece of their prompt this step.
            if !seq.decoding() {
                if let Err(e) = seq.prefill_chunk(m, prefill_chunk) {
                    let _ = seq.job.events.send(Event::Error(e));
                    keep[i] = false;
                }
                continue;
            }
            match seq.step(m, &stats) {
                Ok(Step::Feed(id)) => feed.push((i, id)),
                Ok(Step::Done) => keep[i] = false,
                Err(e) => {
                    let _ = seq.job.events.send(Event::Error(e));
                    keep[i] = false;
                }
            }
        }
        stats
            .generated_tokens
            .fetch_add(feed.len() as u64, Ordering::Relaxed);
        // One batched forward per slice.
        let mut failed: Vec<(usize, String)> = Vec::new();
        let mut groups: Vec<Vec<(usize, u32)>> = Vec::new();
        for &(i, id) in &feed {
            match groups
                .iter_mut()
                .find(|g| Arc::ptr_eq(active[g[0].0].cache.plan(), active[i].cache.plan()))
            {
                Some(g) => g.push((i, id)),
                None => groups.push(vec![(i, id)]),
            }
        }
        for g in groups {
            let ids: Vec<u32> = g.iter().map(|&(_, id)| id).collect();
            let idx: Vec<usize> = g.iter().map(|&(i, _)| i).collect();
            let mut caches: Vec<&mut dyn SeqCache> = active
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| idx.contains(i))
                .map(|(_, s)| &mut *s.cache as &mut dyn SeqCache)
                .collect();
            stats.decode_steps.fetch_add(1, Ordering::Relaxed);
            stats
                .decode_rows
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            stats.max_rows.fetch_max(ids.len(), Ordering::Relaxed);
            match m.decoder().forward_sequences(&ids, &mut caches) {
                Ok(logits) => {
                    let v = logits.len() / ids.len();
                    let logits = Arc::new(logits);
                    for (r, (&i, &id)) in idx.iter().zip(&ids).enumerate() {
                        let seq = &mut active[i];
                        seq.logits = LogitRow::row(&logits, r, v);
                        seq.history.push(id);
                    }
                }
                Err(e) => failed.extend(idx.iter().map(|&i| (i, e.to_string()))),
            }
        }
        for (i, e) in failed {
            let _ = active[i].job.events.send(Event::Error(e));
            keep[i] = false;
        }
        let mut k = keep.into_iter();
        active.retain(|_| k.next().unwrap_or(false));
        stats.active.store(active.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_prefixes_held_back() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(find_stop("abcENDx", &stops), Some(3));
        assert_eq!(find_stop("a\n\nEND", &stops), Some(1));
        assert_eq!(find_stop("abc", &stops), None);
        assert_eq!(held_back("abcE", &stops), 1);
        assert_eq!(held_back("abcEN", &stops), 2);
        assert_eq!(held_back("abc\n", &stops), 1);
        assert_eq!(held_back("abc", &stops), 0);
        assert_eq!(held_back("", &stops), 0);
    }
}
