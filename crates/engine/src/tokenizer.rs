//! The text tokenizer: a thin layer over the `tokenizers` crate with Gemma's conventions
//! (spec/text.md §5.4 and §7): `<bos>` prepended on request, never an `<eos>` appended, and the
//! special ids looked up by name from the tokenizer file.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Names and ids of the Gemma 3n special tokens (spec/text.md §7). The ids are the expectation;
/// the ids actually used are the ones the tokenizer file gives these names.
pub const GEMMA3N_SPECIAL_TOKENS: [(&str, u32); 14] = [
    ("<pad>", 0),
    ("<eos>", 1),
    ("<bos>", 2),
    ("<unk>", 3),
    ("<mask>", 4),
    ("[multimodal]", 5),
    ("<start_of_turn>", 105),
    ("<end_of_turn>", 106),
    ("<start_of_image>", 255_999),
    ("<start_of_audio>", 256_000),
    ("<end_of_image>", 262_144),
    ("<image_soft_token>", 262_145),
    ("<end_of_audio>", 262_272),
    ("<audio_soft_token>", 262_273),
];

/// The special token ids of a tokenizer, found by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub pad: u32,
    pub eos: u32,
    pub bos: u32,
    pub start_of_turn: u32,
    pub end_of_turn: u32,
    pub unk: Option<u32>,
    pub start_of_image: Option<u32>,
    pub end_of_image: Option<u32>,
    pub image_soft_token: Option<u32>,
    pub start_of_audio: Option<u32>,
    pub end_of_audio: Option<u32>,
    pub audio_soft_token: Option<u32>,
}

impl SpecialTokens {
    /// The ids the engine stops on by default: `<eos>` and `<end_of_turn>` (spec §5.4).
    pub fn stop_ids(&self) -> [u32; 2] {
        [self.eos, self.end_of_turn]
    }
}

/// Token ids with, for each, the byte range of the text it covers.
pub type IdsWithOffsets = (Vec<u32>, Vec<(usize, usize)>);

/// A text tokenizer loaded from a HF `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    origin: PathBuf,
    special: SpecialTokens,
    text_vocab_size: usize,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("origin", &self.origin)
            .field("text_vocab_size", &self.text_vocab_size)
            .field("vocab_size", &self.vocab_size)
            .field("special", &self.special)
            .finish()
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. Errors name the path: missing file, malformed JSON, or a
    /// tokenizer lacking one of `<pad>`, `<eos>`, `<bos>`, `<start_of_turn>`, `<end_of_turn>`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the content of a `tokenizer.json`; `origin` is the name used in error messages.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self> {
        let origin = origin.as_ref().to_path_buf();
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::malformed(&origin, format!("not a valid tokenizer.json: {e}")))?;
        let required = |name: &str| {
            inner.token_to_id(name).ok_or_else(|| {
                Error::malformed(&origin, format!("the tokenizer has no token {name}"))
            })
        };
        let special = SpecialTokens {
            pad: required("<pad>")?,
            eos: required("<eos>")?,
            bos: required("<bos>")?,
            start_of_turn: required("<start_of_turn>")?,
            end_of_turn: required("<end_of_turn>")?,
            unk: inner.token_to_id("<unk>"),
            start_of_image: inner.token_to_id("<start_of_image>"),
            end_of_image: inner.token_to_id("<end_of_image>"),
            image_soft_token: inner.token_to_id("<image_soft_token>"),
            start_of_audio: inner.token_to_id("<start_of_audio>"),
            end_of_audio: inner.token_to_id("<end_of_audio>"),
            audio_soft_token: inner.token_to_id("<audio_soft_token>"),
        };
        let text_vocab_size = inner.get_vocab_size(false);
        let max_added = inner
            .get_added_tokens_decoder()
            .keys()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        let vocab_size = text_vocab_size.max(max_added);
        Ok(Tokenizer {
            inner,
            origin,
            special,
            text_vocab_size,
            vocab_size,
        })
    }

    /// Encodes `text` into ids. With `add_bos`, `<bos>` is prepended (HF `add_bos_token=True`);
    /// no `<eos>` is ever appended. Special tokens written in the text (`<start_of_turn>` ...)
    /// become their ids, as in HF. A rendered chat prompt already holds its `<bos>`: encode it
    /// through `ChatTemplate::render_and_tokenize`, which encodes without adding one.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + usize::from(add_bos));
        if add_bos {
            ids.push(self.special.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Encodes without `<bos>` and returns, with each id, the byte range of `text` it covers.
    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsWithOffsets> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Decodes ids to text (ids the tokenizer does not know are skipped, as in HF). With
    /// `skip_special_tokens`, special tokens (`<bos>`, `<end_of_turn>` ...) are left out.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenizer(format!("cannot decode ids: {e}")))
    }

    /// The id of a token (a vocabulary piece such as `▁the`, or an added token such as
    /// `<end_of_turn>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The piece of an id (`<0xE2>` for byte-fallback ids, `▁` for a leading space).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids the tokenizer defines: `max id + 1` over the text vocabulary and the added
    /// tokens (262400 for the Gemma 3n tokenizer, which covers the multimodal ids).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Size of the text vocabulary (the SentencePiece model, 262144 for Gemma): ids at or
    /// above it are multimodal/control ids that text generation never samples.
    pub fn text_vocab_size(&self) -> usize {
        self.text_vocab_size
    }

    /// The special ids found by name in the tokenizer file.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Whether `id` is a special added token (skipped by `decode(.., true)`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// Where the tokenizer was loaded from.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Lists how this tokenizer's special ids differ from the Gemma 3n ones of spec §7, as
    /// `"<name>: expected E, found F"` lines (empty for a Gemma 3n tokenizer). A Gemma 3
    /// tokenizer, for instance, names 256000 `<end_of_image>` and lacks the audio tokens.
    pub fn gemma3n_mismatches(&self) -> Vec<String> {
        GEMMA3N_SPECIAL_TOKENS
            .iter()
            .filter_map(|&(name, want)| match self.token_to_id(name) {
                Some(id) if id == want => None,
                Some(id) => Some(format!("{name}: expected {want}, found {id}")),
                None => Some(format!("{name}: expected {want}, not defined")),
            })
            .collect()
    }
}
