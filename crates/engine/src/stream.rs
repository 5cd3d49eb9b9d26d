//! Incremental detokenization: feed generated ids one at a time, get back the text they
//! complete.
//!
//! The stream decodes a short window of recent ids with the tokenizer's own decoder (so "▁" ->
//! space, byte fallback and any other decoder step behave exactly as in `Tokenizer::decode`)
//! and emits the part of the window's text that is new. Text is held back while it ends in
//! U+FFFD, which is what the byte-fallback decoder produces for an unfinished UTF-8 sequence:
//! `<0xE2>` `<0x82>` yield nothing, `<0xAC>` then yields "€". A partial character is never
//! emitted. `flush` returns whatever is held back at the end (a truncated sequence comes out
//! as U+FFFD, as `decode` gives it).
//!
//! For valid text the concatenation of all pieces equals `decode(all ids)`. The one
//! divergence: a run of byte-fallback ids holding invalid UTF-8 decodes, in HF, to one
//! U+FFFD per byte of the whole run; characters of that run already emitted stay emitted.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

const REPLACEMENT: char = '\u{fffd}';

/// An incremental detokenizer over a [`Tokenizer`].
#[derive(Debug)]
pub struct TokenStream<'t> {
    tokenizer: &'t Tokenizer,
    skip_special_tokens: bool,
    /// Ids from the start of the current window (older ids are dropped).
    ids: Vec<u32>,
    /// `ids[..read]` have been turned into emitted text.
    read: usize,
    /// The decoding of `ids[..read]`.
    emitted_window_text: String,
}

impl<'t> TokenStream<'t> {
    /// A new stream. `skip_special_tokens` as in [`Tokenizer::decode`].
    pub fn new(tokenizer: &'t Tokenizer, skip_special_tokens: bool) -> Self {
        TokenStream {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            read: 0,
            emitted_window_text: String::new(),
        }
    }

    /// Feeds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        if text.len() <= self.emitted_window_text.len() || text.ends_with(REPLACEMENT) {
            return Ok(String::new());
        }
        let piece = new_suffix(&self.emitted_window_text, &text).to_string();
        // The window restarts at the last emitted boundary: decoding from there reproduces the
        // text emitted since, and earlier ids can no longer change anything.
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.emitted_window_text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        Ok(piece)
    }

    /// Feeds several ids; returns the text they complete.
    pub fn push_all(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(id)?);
        }
        Ok(out)
    }

    /// Ends the stream: returns the text still held back (an unfinished byte sequence decodes
    /// to U+FFFD, as `Tokenizer::decode` does) and resets the stream.
    pub fn flush(&mut self) -> Result<String> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        let piece = new_suffix(&self.emitted_window_text, &text).to_string();
        self.ids.clear();
        self.read = 0;
        self.emitted_window_text.clear();
        Ok(piece)
    }
}

/// The part of `now` after what was already emitted (`before`). Normally `now` extends
/// `before`; if a later byte turned an already emitted run invalid, the texts diverge and only
/// what follows their common prefix is new.
fn new_suffix<'a>(before: &str, now: &'a str) -> &'a str {
    if let Some(rest) = now.strip_prefix(before) {
        return rest;
    }
    let common = before
        .char_indices()
        .zip(now.chars())
        .find(|((_, a), b)| a != b)
        .map_or(before.len().min(now.len()), |((i, _), _)| i);
    now.get(common..).unwrap_or("")
}
