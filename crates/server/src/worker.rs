//! The generation worker: one thread owns the model and runs the queued requests, streaming
//! each token's text to the request's channel. A request whose channel is closed (the client
//! went away) is cancelled at its next token.
//!
//! Requests run one at a time (first come, first served); batching several sequences into one
//! forward pass is not done yet.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use gemma3n_engine::{Sampler, SamplingParams, Session, StopReason, TokenStream};
use gemma3n_model::matformer::SlicePlan;
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::vision::preprocess::PixelValues;
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
    /// Preprocessed images and 16 kHz clips (at most 30 s each) whose soft tokens fill the
    /// prompt's placeholders, in order.
    pub images: Vec<PixelValues>,
    pub clips: Vec<Vec<f32>>,
    pub events: UnboundedSender<Event>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub queued: AtomicUsize,
    pub active: AtomicUsize,
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
}

/// Runs jobs until the queue's senders are all gone.
pub fn run(model: Arc<Model>, jobs: std::sync::mpsc::Receiver<Job>, stats: Arc<Stats>) {
    for job in jobs {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let events = job.events.clone();
        if let Err(e) = generate(&model, job, &stats) {
            let _ = events.send(Event::Error(e));
        }
        stats.active.fetch_sub(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
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

/// The soft tokens of the job's images and clips, and the prompt that places them.
fn media_prompt<'m>(m: &'m Model, job: &Job) -> Result<Option<MediaPrompt<'m>>, String> {
    if job.images.is_empty() && job.clips.is_empty() {
        return Ok(None);
    }
    let width = m.text.cfg.hidden_size;
    let images = match (&m.vision, job.images.is_empty()) {
        (_, true) => None,
        (None, false) => return Err("this model has no vision tower".into()),
        (Some(v), false) => Some((
            v,
            job.images
                .iter()
                .map(|px| v.encode(&px.data, px.size))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?,
        )),
    };
    let clips = match (&m.audio, job.clips.is_empty()) {
        (_, true) => None,
        (None, false) => return Err("this model has no audio tower".into()),
        (Some(a), false) => {
            let refs: Vec<&[f32]> = job.clips.iter().map(|c| c.as_slice()).collect();
            Some((a, a.encode_clips(&refs).map_err(|e| e.to_string())?))
        }
    };
    MediaPrompt::new(&job.prompt, 0, width, images, clips)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn generate(m: &Model, job: Job, stats: &Stats) -> Result<(), String> {
    let media = media_prompt(m, &job)?;
    let embed = |pos: usize, id: u32, row: &mut [f32]| match &media {
        Some(p) => p.embed(pos, id, row),
        None => Ok(()),
    };
    let cache = m.text.new_cache_with_plan(job.plan.clone());
    let mut session = Session::with_cache(&m.text, cache);
    let mut sampler = Sampler::new(job.params.clone(), m.tokenizer.text_vocab_size())
        .map_err(|e| e.to_string())?;
    let stream = RefCell::new(TokenStream::new(&m.tokenizer, true));
    let pending_lp: RefCell<Option<TokenLogprob>> = RefCell::new(None);
    let counts: RefCell<HashMap<u32, u32>> = RefCell::new(HashMap::new());
    let prompt_len = job.prompt.len();
    let text = RefCell::new(String::new());
    let mut sent = 0usize;
    let mut lps: Vec<TokenLogprob> = Vec::new();
    let mut completion = 0usize;
    let mut stopped_by_string = false;
    let mut gone = false;
    let mut sample_error = None;
    let decode = |id: u32| m.tokenizer.decode(&[id], false).unwrap_or_default();

    let mut pick = |logits: &[f32], previous: &[u32]| -> u32 {
        let penalize = job.presence_penalty != 0.0 || job.frequency_penalty != 0.0;
        let adjusted;
        let logits = if penalize {
            let mut l = logits.to_vec();
            for (&id, &c) in counts.borrow().iter() {
                if let Some(v) = l.get_mut(id as usize) {
                    *v -= job.presence_penalty + job.frequency_penalty * c as f32;
                }
            }
            adjusted = l;
            &adjusted[..]
        } else {
            logits
        };
        let id = match sampler.sample(logits, previous) {
            Ok(id) => id,
            Err(e) => {
                sample_error = Some(e.to_string());
                0
            }
        };
        if let Some(n) = job.logprobs {
            // Log-softmax of the model's distribution (after penalties), over the text ids.
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
            let mut top: Vec<(u32, f32)> = Vec::new();
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
                    .map(|i| (i, logits[i as usize] - lse))
                    .collect();
            }
            *pending_lp.borrow_mut() = Some(TokenLogprob {
                token: decode(id),
                logprob: logits
                    .get(id as usize)
                    .map_or(f32::NEG_INFINITY, |&x| x - lse),
                top: top.into_iter().map(|(i, l)| (decode(i), l)).collect(),
            });
        }
        id
    };
    let mut on_token = |id: u32| -> bool {
        completion += 1;
        *counts.borrow_mut().entry(id).or_insert(0) += 1;
        if let Some(lp) = pending_lp.borrow_mut().take() {
            lps.push(lp);
        }
        let piece = stream.borrow_mut().push(id).unwrap_or_default();
        let mut t = text.borrow_mut();
        t.push_str(&piece);
        if let Some(at) = find_stop(&t[sent..], &job.stop) {
            t.truncate(sent + at);
            stopped_by_string = true;
        }
        let safe = if stopped_by_string {
            t.len()
        } else {
            t.len() - held_back(&t[sent..], &job.stop)
        };
        if safe > sent || !lps.is_empty() {
            let ev = Event::Delta {
                text: t[sent..safe].to_string(),
                logprobs: std::mem::take(&mut lps),
            };
            sent = safe;
            if job.events.send(ev).is_err() {
                gone = true;
                return false;
            }
        }
        !stopped_by_string
    };
    let g = session
        .generate_embedded(
            &job.prompt,
            media
                .as_ref()
                .map(|_| &embed as gemma3n_model::text::EmbedFn),
            job.max_tokens,
            &m.stop_ids,
            &mut pick,
            &mut on_token,
        )
        .map_err(|e| e.to_string())?;
    stats
        .prompt_tokens
        .fetch_add(prompt_len as u64, Ordering::Relaxed);
    stats
        .generated_tokens
        .fetch_add(completion as u64, Ordering::Relaxed);
    if let Some(e) = sample_error {
        return Err(e);
    }
    if gone {
        return Ok(());
    }
    if !stopped_by_string {
        // The text the stream or the stop check still held back.
        let mut t = text.borrow_mut();
        let rest = stream.borrow_mut().flush().unwrap_or_default();
        t.push_str(&rest);
        let end = find_stop(&t[sent..], &job.stop).map_or(t.len(), |at| sent + at);
        if end > sent {
            let _ = job.events.send(Event::Delta {
                text: t[sent..end].to_string(),
                logprobs: Vec::new(),
            });
        }
    }
    let finish_reason = match (stopped_by_string, g.stop) {
        (true, _) | (_, StopReason::Stop(_)) => "stop",
        _ => "length",
    };
    let _ = job.events.send(Event::Done {
        finish_reason,
        prompt_tokens: prompt_len,
        completion_tokens: completion,
    });
    Ok(())
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
