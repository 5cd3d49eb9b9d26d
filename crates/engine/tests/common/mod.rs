//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use gemma3n_engine::Tokenizer;

/// The repository root.
pub fn repo_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The committed fixtures of the tokenizer tests.
pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/tokenizer")
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma3n-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small SentencePiece-style tokenizer.json in the same shape as Gemma's (BPE with byte
/// fallback, spaces as "▁", decoder Replace + ByteFallback + Fuse), written by hand so the
/// tests below do not need the real one: the specials, "▁", lowercase letters, a few words
/// with their merges, newline, and the 256 byte pieces. Everything else goes through byte
/// fallback.
pub fn tiny_tokenizer_json() -> String {
    let specials = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<image_soft_token>",
    ];
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    for b in 0..=255u8 {
        vocab.push(format!("<0x{b:02X}>"));
    }
    vocab.push("▁".into());
    vocab.push("\n".into());
    for c in 'a'..='z' {
        vocab.push(c.to_string());
    }
    let merges = [
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
        ("▁", "hello"),
        ("o", "r"),
        ("w", "or"),
        ("wor", "l"),
        ("worl", "d"),
        ("▁", "world"),
    ];
    for (a, b) in merges {
        vocab.push(format!("{a}{b}"));
    }
    let vocab_json: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let merges: Vec<String> = merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
            "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": true, "ignore_merges": false, "vocab": vocab_json, "merges": merges}
    })
    .to_string()
}

/// The tiny tokenizer, loaded once.
pub fn tiny_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_bytes(tiny_tokenizer_json().as_bytes(), "tiny").unwrap())
}

/// Path of the real Gemma 3n tokenizer built by tools/fetch_tokenizer.sh.
pub fn real_tokenizer_path() -> PathBuf {
    repo_root().join(".cache/tokenizer-gemma3/gemma3n/tokenizer.json")
}

/// The real Gemma 3n tokenizer, loaded once; `None` only when the file is absent and
/// GEMMA3N_SKIP_REAL_TOKENIZER=1. A missing file otherwise fails the test.
pub fn real_tokenizer() -> Option<&'static Tokenizer> {
    static TOK: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = real_tokenizer_path();
        if !path.is_file() {
            if std::env::var("GEMMA3N_SKIP_REAL_TOKENIZER").as_deref() == Ok("1") {
                eprintln!(
                    "skipping: {} is absent (GEMMA3N_SKIP_REAL_TOKENIZER=1)",
                    path.display()
                );
                return None;
            }
            panic!(
                "{} is missing: run tools/fetch_tokenizer.sh first \
                 (or set GEMMA3N_SKIP_REAL_TOKENIZER=1 to skip the real-tokenizer tests)",
                path.display()
            );
        }
        Some(Tokenizer::from_file(&path).unwrap())
    })
    .as_ref()
}
