//! Failures a user can cause: each must exit non-zero without a panic and name the culprit
//! (file, tensor, field or flag) on stderr.

mod common;

use common::*;
use serde_json::Value;

const NAME: &str = "tiny_text_f32";

fn logits_on(dir: &str, ids: &str) -> Run {
    let out = TempDir::new("bad-out");
    let f = out.join("l.safetensors");
    let r = gemma3n(
        &[
            "logits",
            "--model",
            dir,
            "--ids",
            ids,
            "--out",
            f.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        r.ok() || !f.exists(),
        "a failed logits run left an output file"
    );
    r
}

fn edit_config(dir: &TempDir, edit: impl FnOnce(&mut Value)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_model_dir() {
    let t = TempDir::new("nomodel");
    let missing = t.join("does-not-exist");
    let m = missing.to_str().unwrap();
    logits_on(m, "2,5").expect_clean_failure("logits", &[m]);
    gemma3n(&["inspect", "--model", m], None).expect_clean_failure("inspect", &[m]);
    gemma3n(&["run", "--model", m, "--prompt", "w5"], None).expect_clean_failure("run", &[m]);
}

#[test]
fn model_dir_without_config() {
    let t = copy_checkpoint(NAME);
    std::fs::remove_file(t.join("config.json")).unwrap();
    logits_on(t.s(), "2,5").expect_clean_failure("logits", &["config.json"]);
    gemma3n(&["inspect", "--model", t.s()], None).expect_clean_failure("inspect", &["config.json"]);
}

#[test]
fn truncated_safetensors() {
    let t = copy_checkpoint(NAME);
    let p = t.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    logits_on(t.s(), "2,5").expect_clean_failure("truncated data", &["model.safetensors"]);
    // Cut inside the header too.
    std::fs::write(&p, &bytes[..100]).unwrap();
    logits_on(t.s(), "2,5").expect_clean_failure("truncated header", &["model.safetensors"]);
}

/// A tensor whose header shape is transposed (same byte size, so the file itself is valid).
#[test]
fn tensor_of_the_wrong_shape() {
    let t = copy_checkpoint(NAME);
    let p = t.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    let (n, h) = safetensors_header(&bytes);
    let name = "model.layers.0.mlp.gate_proj.weight";
    let shape = h[name]["shape"].clone();
    assert_eq!(shape, serde_json::json!([128, 64]));
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let key = format!("\"{name}\":");
    let at = header.find(&key).unwrap();
    let entry_end = at + header[at..].find('}').unwrap();
    let entry = &header[at..entry_end];
    let edited = entry.replacen("[128,64]", "[64,128]", 1);
    assert_ne!(edited, entry, "header entry {entry}");
    let new_header = format!("{}{}{}", &header[..at], edited, &header[entry_end..]);
    assert_eq!(new_header.len(), n);
    bytes[8..8 + n].copy_from_slice(new_header.as_bytes());
    std::fs::write(&p, &bytes).unwrap();
    logits_on(t.s(), "2,5").expect_clean_failure("wrong shape", &[name]);
}

#[test]
fn intermediate_size_list_of_the_wrong_length() {
    let t = copy_checkpoint(NAME);
    edit_config(&t, |v| {
        v["intermediate_size"] = serde_json::json!([128, 128, 64])
    });
    logits_on(t.s(), "2,5").expect_clean_failure("logits", &["intermediate_size"]);
    gemma3n(&["inspect", "--model", t.s()], None)
        .expect_clean_failure("inspect", &["intermediate_size"]);
}

#[test]
fn unknown_model_type() {
    let t = copy_checkpoint(NAME);
    edit_config(&t, |v| v["model_type"] = "llama".into());
    logits_on(t.s(), "2,5").expect_clean_failure("logits", &["model_type", "llama"]);
    gemma3n(&["inspect", "--model", t.s()], None)
        .expect_clean_failure("inspect", &["model_type", "llama"]);
}

#[test]
fn ids_with_a_non_number() {
    let dir = fixture_dir(NAME);
    logits_on(dir.to_str().unwrap(), "2,5,abc,7").expect_clean_failure("logits", &["--ids", "abc"]);
    logits_on(dir.to_str().unwrap(), "2,-1").expect_clean_failure("logits", &["--ids", "-1"]);
    logits_on(dir.to_str().unwrap(), ",").expect_clean_failure("logits", &["--ids"]);
}

#[test]
fn ids_outside_the_vocabulary() {
    let info = fixture(NAME);
    let v = info.vocab_size.to_string();
    logits_on(info.dir.to_str().unwrap(), &format!("2,5,{v}"))
        .expect_clean_failure("logits", &[&v, "vocab"]);
}

#[test]
fn raw_prompt_longer_than_the_context() {
    let info = fixture(NAME);
    let dir = model_with_tokenizer(NAME);
    let n = info.max_position_embeddings + 10;
    let ids: Vec<u32> = (0..n as u32).map(|i| 20 + i % 200).collect();
    let prompt = tiny_text(&ids);
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            &prompt,
            "--raw",
            "--max-tokens",
            "4",
        ],
        None,
    );
    r.expect_clean_failure(
        "long prompt",
        &[
            "context",
            &info.max_position_embeddings.to_string(),
            &(n + 1).to_string(),
        ],
    );
    assert!(
        r.stdout.trim().is_empty(),
        "no output for a rejected prompt: {}",
        r.stdout
    );
}

/// A prompt that fits exactly fills the context and stops there without error.
#[test]
fn raw_prompt_that_fills_the_context() {
    let info = fixture(NAME);
    let dir = model_with_tokenizer(NAME);
    let n = info.max_position_embeddings - 1; // + BOS = the whole context
    let ids: Vec<u32> = (0..n as u32).map(|i| 20 + i % 200).collect();
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            &tiny_text(&ids),
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ],
        None,
    );
    r.expect_ok("full context");
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines[0].0, info.max_position_embeddings);
    assert!(
        lines[0].1 <= 1,
        "at most one token once the context is full: {}",
        r.stderr
    );
}

#[test]
fn run_without_tokenizer() {
    let t = copy_checkpoint(NAME);
    let r = gemma3n(&["run", "--model", t.s(), "--prompt", "w5"], None);
    r.expect_clean_failure("run", &["tokenizer.json"]);
    let r = gemma3n(&["chat", "--model", t.s()], Some("w5\n"));
    r.expect_clean_failure("chat", &["tokenizer.json"]);
    let r = gemma3n(&["tokenize", "--model", t.s(), "w5"], None);
    r.expect_clean_failure("tokenize", &["tokenizer.json"]);
}

#[test]
fn chat_template_missing() {
    let t = model_with_tokenizer(NAME);
    std::fs::remove_file(t.join("chat_template.jinja")).unwrap();
    let r = gemma3n(&["run", "--model", t.s(), "--prompt", "w5"], None);
    r.expect_clean_failure("run", &["chat template"]);
}

#[test]
fn bench_unknown_synthetic_shape() {
    gemma3n(&["bench", "--synthetic", "e9b"], None).expect_clean_failure("bench", &["e9b"]);
}

#[test]
fn zero_threads() {
    let dir = fixture_dir(NAME);
    let r = gemma3n_raw(
        &[
            "--threads",
            "0",
            "inspect",
            "--model",
            dir.to_str().unwrap(),
        ],
        None,
    );
    r.expect_clean_failure("--threads 0", &["--threads"]);
}

#[test]
fn missing_shard() {
    let t = copy_checkpoint("tiny_mm_bf16");
    std::fs::remove_file(t.join("model-00002-of-00002.safetensors")).unwrap();
    logits_on(t.s(), "2,5").expect_clean_failure("logits", &["model-00002-of-00002.safetensors"]);
}

#[test]
fn invalid_sampling_flags() {
    let dir = model_with_tokenizer(NAME);
    for (flag, value, culprit) in [
        ("--top-p", "2", "top_p"),
        ("--top-p", "0", "top_p"),
        ("--min-p", "1.5", "min_p"),
        ("--temperature", "nan", "temperature"),
        ("--repetition-penalty", "0", "repetition_penalty"),
        ("--temperature", "-1", "-1"),
    ] {
        let r = gemma3n(
            &[
                "run",
                "--model",
                dir.s(),
                "--prompt",
                "w5",
                "--max-tokens",
                "2",
                flag,
                value,
            ],
            None,
        );
        r.expect_clean_failure(&format!("{flag} {value}"), &[culprit]);
    }
}

/// A chat turn that cannot fit in the context is refused with a message; the chat goes on
/// (from a fresh conversation) and exits 0.
#[test]
fn chat_turn_longer_than_the_context() {
    let info = fixture(NAME);
    let dir = model_with_tokenizer(NAME);
    let long = tiny_text(
        &(0..info.max_position_embeddings as u32)
            .map(|i| 20 + i % 200)
            .collect::<Vec<_>>(),
    );
    let r = gemma3n(
        &[
            "chat",
            "--model",
            dir.s(),
            "--temperature",
            "0",
            "--max-tokens",
            "3",
        ],
        Some(&format!("{long}\nw7\n/exit\n")),
    );
    r.expect_ok("chat");
    assert!(!r.stderr.contains("panicked"));
    assert!(r.stderr.contains("context"), "{}", r.stderr);
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert_eq!(
        lines[0].0,
        tiny_encode(&gemma_render(None, &[("user", "w7")], true)).len()
    );
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
}

/// An I/O error names the file and gives the OS reason once.
#[test]
fn io_errors_state_the_cause_once() {
    let t = copy_checkpoint(NAME);
    let r = gemma3n(&["tokenize", "--model", t.s(), "w5"], None);
    r.expect_clean_failure("tokenize", &["tokenizer.json"]);
    assert_eq!(r.stderr.matches("os error 2").count(), 1, "{}", r.stderr);
    let missing = t.join("no-such-dir/l.safetensors");
    let r = gemma3n(
        &[
            "logits",
            "--model",
            t.s(),
            "--ids",
            "2",
            "--out",
            missing.to_str().unwrap(),
        ],
        None,
    );
    r.expect_clean_failure("logits --out", &["no-such-dir"]);
    assert_eq!(r.stderr.matches("os error 2").count(), 1, "{}", r.stderr);
}
