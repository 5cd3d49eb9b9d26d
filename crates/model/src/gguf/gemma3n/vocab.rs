//! The `tokenizer.ggml.*` metadata of a Gemma 3n GGUF file, built from the tokenizer files of
//! a Hugging Face checkpoint directory, so that llama.cpp can run the files `quantize` writes.
//!
//! Two sources:
//! - `tokenizer.model` (SentencePiece), as llama.cpp's converter reads it: every piece with
//!   its score and type, then `added_tokens.json` and `tokenizer_config.json`'s
//!   `added_tokens_decoder` on top, `[PAD{i}]` for the ids no file names, up to `vocab_size`.
//! - `tokenizer.json` alone (no SentencePiece model beside it): the same SentencePiece-style
//!   vocabulary derived from the BPE model. llama.cpp's SentencePiece tokenizer merges the
//!   adjacent pair whose concatenation has the highest score first, so a token's score is
//!   minus the rank of the first merge that produces it, which reproduces the BPE merge order.
//!
//! Special ids, `add_bos/eos_token` and the chat template follow the converter's
//! `SpecialVocab`: `tokenizer.json` added tokens named by `tokenizer_config.json`, its
//! post-processor template, then `config.json`'s `*_token_id` for what is still unset.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::error::{ModelError, Result};
use crate::gguf::{Value, ValueType};

/// llama.cpp's token types (the SentencePiece piece types, same numbers).
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_UNKNOWN: i32 = 2;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;
pub const TOKEN_UNUSED: i32 = 5;
pub const TOKEN_BYTE: i32 = 6;

/// A vocabulary in llama.cpp's "llama" (SentencePiece) form.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

/// The `tokenizer.ggml.*` metadata for the checkpoint in `dir` with `vocab_size` ids, or
/// `None` when the directory has neither `tokenizer.model` nor `tokenizer.json`.
pub fn vocab_metadata(dir: &Path, vocab_size: usize) -> Result<Option<Vec<(String, Value)>>> {
    let spm = dir.join("tokenizer.model");
    let hf = dir.join("tokenizer.json");
    let tokenizer_json = read_json_if_present(&hf)?;
    let tokenizer_config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
    let vocab = if spm.is_file() {
        let bytes = std::fs::read(&spm).map_err(|e| ModelError::io(&spm, e))?;
        let pieces = parse_sentencepiece(&bytes).map_err(|m| ModelError::file(&spm, m))?;
        let mut v = from_sentencepiece(&pieces, vocab_size);
        let added = dir.join("added_tokens.json");
        if added.is_file() {
            apply_added_tokens_json(&mut v, &read_json(&added)?);
        }
        if let Some(tc) = &tokenizer_config {
            apply_added_tokens_decoder(&mut v, tc);
        }
        v
    } else if let Some(tj) = &tokenizer_json {
        from_tokenizer_json(tj, vocab_size).map_err(|m| ModelError::file(&hf, m))?
    } else {
        return Ok(None);
    };
    let config = read_json_if_present(&dir.join("config.json"))?;
    let special = special_vocab(
        tokenizer_json.as_ref(),
        tokenizer_config.as_ref(),
        config.as_ref(),
        dir,
        vocab_size,
    )?;
    let mut m: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                ValueType::String,
                vocab.tokens.into_iter().map(Value::String).collect(),
            ),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(
                ValueType::F32,
                vocab.scores.into_iter().map(Value::F32).collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                ValueType::I32,
                vocab.types.into_iter().map(Value::I32).collect(),
            ),
        ),
    ];
    m.extend(special);
    m.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
    Ok(Some(m))
}

fn read_json_if_present(p: &Path) -> Result<Option<Json>> {
    if p.is_file() {
        read_json(p).map(Some)
    } else {
        Ok(None)
    }
}

fn read_json(p: &Path) -> Result<Json> {
    let s = std::fs::read_to_string(p).map_err(|e| ModelError::io(p, e))?;
    serde_json::from_str(&s).map_err(|e| ModelError::file(p, format!("invalid JSON: {e}")))
}

/// One SentencePiece piece: text, score, type (SentencePiece's enum, 1 = normal).
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: i32,
}

/// The pieces of a SentencePiece `ModelProto` (field 1, repeated `SentencePiece` with
/// `piece` = 1, `score` = 2, `type` = 3); everything else is skipped.
pub fn parse_sentencepiece(bytes: &[u8]) -> std::result::Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut r = Wire { b: bytes, pos: 0 };
    while !r.done() {
        let (field, wt) = r.key()?;
        if field == 1 && wt == 2 {
            let body = r.bytes()?;
            let mut p = Piece {
                piece: String::new(),
                score: 0.0,
                kind: TOKEN_NORMAL,
            };
            let mut s = Wire { b: body, pos: 0 };
            while !s.done() {
                let (f, w) = s.key()?;
                match (f, w) {
                    (1, 2) => {
                        p.piece = String::from_utf8(s.bytes()?.to_vec())
                            .map_err(|_| format!("piece {} is not UTF-8", out.len()))?
                    }
                    (2, 5) => p.score = f32::from_bits(s.fixed32()?),
                    (3, 0) => p.kind = s.varint()? as i32,
                    _ => s.skip(w)?,
                }
            }
            out.push(p);
        } else {
            r.skip(wt)?;
        }
    }
    if out.is_empty() {
        return Err("not a SentencePiece model (no pieces)".into());
    }
    Ok(out)
}

/// A protobuf wire-format reader.
struct Wire<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Wire<'a> {
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }
    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.pos).ok_or("truncated protobuf (varint)")?;
            self.pos += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("malformed protobuf varint".into())
    }
    fn key(&mut self) -> std::result::Result<(u64, u8), String> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("truncated protobuf (field runs past the end)")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn bytes(&mut self) -> std::result::Result<&'a [u8], String> {
        let n = self.varint()? as usize;
        self.take(n)
    }
    fn fixed32(&mut self) -> std::result::Result<u32, String> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn skip(&mut self, wt: u8) -> std::result::Result<(), String> {
        match wt {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            _ => Err(format!("unsupported protobuf wire type {wt}")),
        }
    }
}

fn padded(vocab_size: usize) -> SpmVocab {
    SpmVocab {
        tokens: (0..vocab_size).map(|i| format!("[PAD{i}]")).collect(),
        scores: vec![-10000.0; vocab_size],
        types: vec![TOKEN_UNUSED; vocab_size],
    }
}

/// The converter's `_create_vocab_sentencepiece` before the added-token files: pieces keep
/// their score; user-defined pieces become normal tokens (the converter only tells unknown,
/// control, unused and byte apart).
pub fn from_sentencepiece(pieces: &[Piece], vocab_size: usize) -> SpmVocab {
    let mut v = padded(vocab_size);
    for (id, p) in pieces.iter().enumerate().take(vocab_size) {
        v.tokens[id] = p.piece.clone();
        v.scores[id] = p.score;
        v.types[id] = match p.kind {
            TOKEN_UNKNOWN | TOKEN_CONTROL | TOKEN_UNUSED | TOKEN_BYTE => p.kind,
            _ => TOKEN_NORMAL,
        };
    }
    v
}

fn apply_added_tokens_json(v: &mut SpmVocab, added: &Json) {
    if let Some(map) = added.as_object() {
        for (text, id) in map {
            if let Some(id) = id
                .as_u64()
                .map(|i| i as usize)
                .filter(|&i| i < v.tokens.len())
            {
                v.tokens[id] = text.clone();
                v.scores[id] = -1000.0;
                v.types[id] = TOKEN_USER_DEFINED;
            }
        }
    }
}

/// Tokens the converter treats as control even when not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn apply_added_tokens_decoder(v: &mut SpmVocab, tc: &Json) {
    let Some(map) = tc.get("added_tokens_decoder").and_then(|d| d.as_object()) else {
        return;
    };
    for (id, data) in map {
        let (Ok(id), Some(content)) = (
            id.parse::<usize>(),
            data.get("content").and_then(|c| c.as_str()),
        ) else {
            continue;
        };
        if id >= v.tokens.len() {
            continue;
        }
        let special = data.get("special").and_then(|s| s.as_bool()) == Some(true);
        if special || looks_special(content) {
            v.types[id] = TOKEN_CONTROL;
            v.tokens[id] = content.to_string();
        } else {
            v.types[id] = TOKEN_USER_DEFINED;
            v.tokens[id] = content.replace('\u{2581}', " ");
        }
        v.scores[id] = -1000.0;
    }
}

/// A SentencePiece-style vocabulary from a `tokenizer.json` with a BPE model (how Gemma's
/// tokenizer is published): see the module docs for the scores.
pub fn from_tokenizer_json(tj: &Json, vocab_size: usize) -> std::result::Result<SpmVocab, String> {
    let model = tj.get("model").ok_or("no `model` object")?;
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(
            "only BPE tokenizer.json models can be converted (or put tokenizer.model beside it)"
                .into(),
        );
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or("no `model.vocab` object")?;
    let mut v = padded(vocab_size);
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = id.as_u64().ok_or("vocab id is not a number")? as usize;
        ids.insert(text.as_str(), id);
        if id < vocab_size {
            v.tokens[id] = text.clone();
            v.scores[id] = 0.0;
            v.types[id] = if is_byte_token(text) {
                TOKEN_BYTE
            } else {
                TOKEN_NORMAL
            };
        }
    }
    let merges = model
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or("no `model.merges` array")?;
    let mut scored = vec![false; vocab_size];
    for (rank, m) in merges.iter().enumerate() {
        let merged = match m {
            Json::String(s) => s.split_once(' ').map(|(a, b)| format!("{a}{b}")),
            Json::Array(p) if p.len() == 2 => Some(format!(
                "{}{}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            )),
            _ => None,
        }
        .ok_or_else(|| format!("merge {rank} is malformed"))?;
        if let Some(&id) = ids.get(merged.as_str()) {
            if id < vocab_size && !scored[id] {
                scored[id] = true;
                v.scores[id] = -(rank as f32) - 1.0;
            }
        }
    }
    if let Some(unk) = model.get("unk_token").and_then(|u| u.as_str()) {
        if let Some(&id) = ids.get(unk).filter(|&&i| i < vocab_size) {
            v.types[id] = TOKEN_UNKNOWN;
        }
    }
    for a in tj
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(|i| i.as_u64()).map(|i| i as usize),
            a.get("content").and_then(|c| c.as_str()),
        ) else {
            continue;
        };
        if id >= vocab_size || v.types[id] == TOKEN_UNKNOWN {
            continue;
        }
        let special = a.get("special").and_then(|s| s.as_bool()) == Some(true);
        v.tokens[id] = content.to_string();
        v.scores[id] = -1000.0;
        v.types[id] = if special || looks_special(content) {
            TOKEN_CONTROL
        } else {
            TOKEN_USER_DEFINED
        };
    }
    Ok(v)
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// `tokenizer.ggml.{bos,eos,unk,pad}_token_id`, `add_{bos,eos}_token` and `chat_template`
/// as the converter's `SpecialVocab` finds them.
fn special_vocab(
    tokenizer_json: Option<&Json>,
    tokenizer_config: Option<&Json>,
    config: Option<&Json>,
    dir: &Path,
    vocab_size: usize,
) -> Result<Vec<(String, Value)>> {
    const TYPES: [&str; 4] = ["bos", "eos", "unk", "pad"];
    let mut ids: Vec<(&str, u32)> = Vec::new();
    let mut add: Vec<(&str, bool)> = Vec::new();
    let set_id = |ids: &mut Vec<(&str, u32)>, typ: &'static str, id: Option<u64>| {
        if let Some(id) = id.filter(|&i| (i as usize) < vocab_size) {
            if !ids.iter().any(|(t, _)| *t == typ) {
                ids.push((typ, id as u32));
            }
        }
    };
    let content = |e: Option<&Json>| -> Option<String> {
        match e? {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let mut chat_template: Option<String> = None;
    if let Some(tc) = tokenizer_config {
        if let Some(tj) = tokenizer_json {
            // TemplateProcessing: a leading special token that is the BOS means add_bos.
            let bos = content(tc.get("bos_token"));
            let eos = content(tc.get("eos_token"));
            if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
                let procs: Vec<&Json> = match pp.get("processors").and_then(|p| p.as_array()) {
                    Some(a) => a.iter().collect(),
                    None => vec![pp],
                };
                for p in procs {
                    if p.get("type").and_then(|t| t.as_str()) != Some("TemplateProcessing") {
                        continue;
                    }
                    let single = p.get("single").and_then(|s| s.as_array());
                    if let Some(single) = single.filter(|s| s.len() > 1) {
                        let sp = |e: &Json| {
                            e.get("SpecialToken")
                                .and_then(|s| s.get("id"))
                                .and_then(|i| i.as_str())
                                .map(str::to_string)
                        };
                        if let Some(first) = sp(&single[0]) {
                            add.push(("bos", Some(&first) == bos.as_ref()));
                        }
                        if let Some(last) = sp(&single[single.len() - 1]) {
                            add.push(("eos", Some(&last) == eos.as_ref()));
                        }
                    }
                }
            }
        }
        chat_template = match tc.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            _ => {
                let p = dir.join("chat_template.jinja");
                if p.is_file() {
                    Some(std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?)
                } else {
                    None
                }
            }
        };
        let added: Vec<(String, u64)> = tokenizer_json
            .and_then(|t| t.get("added_tokens"))
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a.get("content")?.as_str()?.to_string(),
                    a.get("id")?.as_u64()?,
                ))
            })
            .collect();
        for typ in TYPES {
            if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(|b| b.as_bool()) {
                if !add.iter().any(|(t, _)| *t == typ) {
                    add.push((typ, b));
                }
            }
            if let Some(c) = content(tc.get(format!("{typ}_token"))) {
                let id = added.iter().find(|(t, _)| *t == c).map(|(_, i)| *i);
                set_id(&mut ids, typ, id);
            }
        }
    }
    if let Some(cfg) = config {
        for typ in TYPES {
            let key = format!("{typ}_token_id");
            let v = cfg
                .get(&key)
                .or_else(|| cfg.get("text_config").and_then(|t| t.get(&key)));
            set_id(&mut ids, typ, v.and_then(|v| v.as_u64()));
        }
    }
    let name = |typ: &str| match typ {
        "pad" => "padding".to_string(),
        "unk" => "unknown".to_string(),
        t => t.to_string(),
    };
    let mut m: Vec<(String, Value)> = ids
        .into_iter()
        .map(|(t, id)| {
            (
                format!("tokenizer.ggml.{}_token_id", name(t)),
                Value::U32(id),
            )
        })
        .collect();
    m.extend(
        add.into_iter()
            .map(|(t, b)| (format!("tokenizer.ggml.add_{t}_token"), Value::Bool(b))),
    );
    if let Some(t) = chat_template {
        m.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_pieces_round_trip() {
        // Hand-encoded ModelProto: two pieces and an unknown field 2 that must be skipped.
        let mut b = Vec::new();
        for (text, score, kind) in [("<unk>", 0.0f32, 2u8), ("▁a", -1.5, 1)] {
            let mut p = vec![0x0a, text.len() as u8];
            p.extend(text.as_bytes());
            p.push(0x15);
            p.extend(score.to_le_bytes());
            p.extend([0x18, kind]);
            b.push(0x0a);
            b.push(p.len() as u8);
            b.extend(p);
        }
        b.extend([0x12, 0x02, 0x08, 0x01]);
        let pieces = parse_sentencepiece(&b).unwrap();
        assert_eq!(pieces.len(), 2);
        assert_eq!(pieces[0].kind, TOKEN_UNKNOWN);
        assert_eq!(pieces[1].piece, "▁a");
        assert_eq!(pieces[1].score, -1.5);
        assert!(parse_sentencepiece(&b[..b.len() - 3]).is_err());
        assert!(parse_sentencepiece(&[]).is_err());
    }

    #[test]
    fn bpe_scores_follow_merge_order() {
        let tj: Json = serde_json::from_str(
            r#"{"model":{"type":"BPE","unk_token":"<unk>",
                "vocab":{"<unk>":0,"a":1,"b":2,"ab":3,"abb":4,"<0x0A>":5},
                "merges":[["a","b"],"ab b"]},
                "added_tokens":[{"id":6,"content":"<start_of_turn>","special":true}]}"#,
        )
        .unwrap();
        let v = from_tokenizer_json(&tj, 8).unwrap();
        assert_eq!(v.types, [2, 1, 1, 1, 1, 6, 3, 5]);
        assert!(v.scores[3] > v.scores[4]);
        assert_eq!(v.tokens[7], "[PAD7]");
    }
}
