//! Shared helpers of the `gemma3n` end-to-end tests: running the binary, temporary model
//! directories, a hand-written safetensors reader, and a tiny word-level tokenizer whose
//! id <-> text mapping the tests know independently of the engine.
//!
//! The tiny tokenizer maps id `n` to the piece `wN`, except the Gemma special tokens (at their
//! Gemma ids) and the two words the chat template writes (`user`, `model`). Its pre-tokenizer
//! splits on whitespace and it has no decoder, so `tokenizers` joins pieces with one space:
//! `"w5 w7"` <-> `[5, 7]`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

/// Root of the repository (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The committed text fixtures.
pub const FIXTURES: [&str; 3] = ["tiny_text_f32", "tiny_mm_bf16", "tiny_text_f16"];

pub fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/text").join(name)
}

/// Facts of a fixture read from its config.json (nested `text_config` for the multimodal one).
#[derive(Debug, Clone)]
pub struct FixtureInfo {
    pub name: String,
    pub dir: PathBuf,
    pub vocab_size: usize,
    pub vocab_size_per_layer_input: usize,
    pub max_position_embeddings: usize,
    pub num_hidden_layers: usize,
    pub num_kv_shared_layers: usize,
    pub hidden_size: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Tensor name prefix of the text decoder.
    pub text_prefix: String,
}

pub fn fixture(name: &str) -> FixtureInfo {
    let dir = fixture_dir(name);
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let (t, prefix) = match cfg.get("text_config") {
        Some(t) => (t.clone(), "model.language_model."),
        None => (cfg.clone(), "model."),
    };
    let u = |k: &str| {
        t[k].as_u64()
            .unwrap_or_else(|| panic!("{name}: config field {k}")) as usize
    };
    FixtureInfo {
        name: name.to_string(),
        dir: dir.clone(),
        vocab_size: u("vocab_size"),
        vocab_size_per_layer_input: u("vocab_size_per_layer_input"),
        max_position_embeddings: u("max_position_embeddings"),
        num_hidden_layers: u("num_hidden_layers"),
        num_kv_shared_layers: u("num_kv_shared_layers"),
        hidden_size: u("hidden_size"),
        num_key_value_heads: u("num_key_value_heads"),
        head_dim: u("head_dim"),
        text_prefix: prefix.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// The result of one run of the binary.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Panics with both streams unless the command exited 0.
    pub fn expect_ok(&self, what: &str) -> &Self {
        assert!(
            self.ok(),
            "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
    /// A failure a user caused: non-zero exit (not a signal), no panic, and stderr mentions
    /// every one of `culprits`.
    pub fn expect_clean_failure(&self, what: &str, culprits: &[&str]) {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "{what}: expected a non-zero exit, got {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: the binary panicked\n--- stderr\n{}",
            self.stderr
        );
        assert_ne!(
            self.code,
            Some(101),
            "{what}: exit code 101 is Rust's panic code\n{}",
            self.stderr
        );
        for c in culprits {
            assert!(
                self.stderr.contains(c),
                "{what}: stderr does not name `{c}`\n--- stderr\n{}",
                self.stderr
            );
        }
    }
}

/// Runs `gemma3n ARGS` (with `--threads 1`, since tests run side by side) and an optional stdin.
pub fn gemma3n(args: &[&str], stdin: Option<&str>) -> Run {
    let mut all = vec!["--threads", "1"];
    all.extend_from_slice(args);
    gemma3n_raw(&all, stdin)
}

/// Runs `gemma3n ARGS` exactly as given.
pub fn gemma3n_raw(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemma3n"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn gemma3n");
    if let Some(input) = stdin {
        let mut si = child.stdin.take().unwrap();
        // A command that fails before reading its input closes the pipe: not an error here.
        if let Err(e) = si.write_all(input.as_bytes()) {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        drop(si);
    }
    let out: Output = child.wait_with_output().expect("wait gemma3n");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The `[prefill N tokens: ... | decode M tokens: ... | stop: ...]` lines of stderr, as
/// `(N, M, stop)`.
pub fn speed_lines(stderr: &str) -> Vec<(usize, usize, String)> {
    let mut v = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.trim().strip_prefix("[prefill ") else {
            continue;
        };
        let n: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
        assert!(rest.contains(" tok/s | decode "), "speed line: {line}");
        let dec = rest.split("| decode ").nth(1).unwrap();
        let m: usize = dec.split_whitespace().next().unwrap().parse().unwrap();
        let stop = rest
            .split("stop: ")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches(']')
            .to_string();
        v.push((n, m, stop));
    }
    v
}

// ---------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "gemma3n-cli-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
    pub fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a fixture's checkpoint (everything but the goldens) to a new temp dir.
pub fn copy_checkpoint(name: &str) -> TempDir {
    let t = TempDir::new(name);
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        let n = e.file_name();
        if n == "golden.safetensors" {
            continue;
        }
        std::fs::copy(e.path(), t.0.join(&n)).unwrap();
    }
    t
}

/// A copy of a fixture with the tiny tokenizer, the Gemma chat template and an -it style
/// generation_config.json (stop ids 1 and 106).
pub fn model_with_tokenizer(name: &str) -> TempDir {
    let info = fixture(name);
    let t = copy_checkpoint(name);
    std::fs::write(t.join("tokenizer.json"), tokenizer_json(info.vocab_size)).unwrap();
    std::fs::copy(
        repo_root().join("tests/fixtures/tokenizer/chat_template.jinja"),
        t.join("chat_template.jinja"),
    )
    .unwrap();
    let gen = json!({
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
        "pad_token_id": 0,
        "do_sample": true,
        "top_k": 64,
        "top_p": 0.95
    });
    std::fs::write(
        t.join("generation_config.json"),
        serde_json::to_string_pretty(&gen).unwrap(),
    )
    .unwrap();
    t
}

// ---------------------------------------------------------------------------------------
// The tiny tokenizer
// ---------------------------------------------------------------------------------------

/// Gemma's special tokens (spec/text.md §7) that the engine needs, plus `<unk>` (WordLevel
/// needs one). `<mask>` (4) and `[multimodal]` (5) are left out so that ids 4 and 5 are the
/// ordinary `w4`, `w5`.
pub const SPECIALS: [(u32, &str); 6] = [
    (0, "<pad>"),
    (1, "<eos>"),
    (2, "<bos>"),
    (3, "<unk>"),
    (105, "<start_of_turn>"),
    (106, "<end_of_turn>"),
];
/// Ids of the two words the chat template writes.
pub const USER_ID: u32 = 10;
pub const MODEL_ID: u32 = 11;
pub const BOS: u32 = 2;
pub const SOT: u32 = 105;
pub const EOT: u32 = 106;

pub fn is_special(id: u32) -> bool {
    SPECIALS.iter().any(|&(i, _)| i == id)
}

/// The piece of an id.
pub fn piece(id: u32) -> String {
    if let Some(&(_, s)) = SPECIALS.iter().find(|&&(i, _)| i == id) {
        return s.to_string();
    }
    match id {
        USER_ID => "user".into(),
        MODEL_ID => "model".into(),
        n => format!("w{n}"),
    }
}

/// The id of a piece (`<unk>` for unknown words).
pub fn piece_id(p: &str) -> u32 {
    if let Some(&(i, _)) = SPECIALS.iter().find(|&&(_, s)| s == p) {
        return i;
    }
    match p {
        "user" => USER_ID,
        "model" => MODEL_ID,
        _ => p
            .strip_prefix('w')
            .and_then(|n| n.parse().ok())
            .filter(|n: &u32| !is_special(*n) && *n != USER_ID && *n != MODEL_ID)
            .unwrap_or(3),
    }
}

/// A `tokenizers` tokenizer.json: WordLevel over ids 0..vocab_size, specials as added tokens,
/// whitespace split, no decoder (pieces joined by spaces).
pub fn tokenizer_json(vocab_size: usize) -> String {
    let vocab: serde_json::Map<String, Value> = (0..vocab_size as u32)
        .map(|i| (piece(i), json!(i)))
        .collect();
    assert_eq!(vocab.len(), vocab_size, "pieces are unique");
    let added: Vec<Value> = SPECIALS
        .iter()
        .filter(|&&(i, _)| (i as usize) < vocab_size)
        .map(|&(id, content)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let t = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    serde_json::to_string(&t).unwrap()
}

/// Encodes like the tiny tokenizer (no BOS added): special token strings are cut out first,
/// the rest is split on whitespace.
pub fn tiny_encode(text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut rest = text;
    loop {
        let next = SPECIALS
            .iter()
            .filter_map(|&(id, s)| rest.find(s).map(|at| (at, id, s.len())))
            .min_by_key(|&(at, _, len)| (at, usize::MAX - len));
        let (plain, after) = match next {
            Some((at, _, _)) => (&rest[..at], Some(next.unwrap())),
            None => (rest, None),
        };
        ids.extend(plain.split_whitespace().map(piece_id));
        match after {
            Some((at, id, len)) => {
                ids.push(id);
                rest = &rest[at + len..];
            }
            None => break,
        }
    }
    ids
}

/// Decodes like the tiny tokenizer with `skip_special_tokens`: pieces joined by one space.
pub fn tiny_decode(ids: &[u32]) -> String {
    ids.iter()
        .filter(|&&i| !is_special(i))
        .map(|&i| piece(i))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A string that the tiny tokenizer encodes to `ids`.
pub fn tiny_text(ids: &[u32]) -> String {
    ids.iter().map(|&i| piece(i)).collect::<Vec<_>>().join(" ")
}

/// Renders a conversation by the Gemma rules of spec/text.md §7 (by hand, not with Jinja):
/// `<bos>`, the system content + "\n\n" prefixed to the first turn, each message as
/// `<start_of_turn>{role}\n{content|trim}<end_of_turn>\n` (assistant -> model), then the
/// generation prompt.
pub fn gemma_render(
    system: Option<&str>,
    turns: &[(&str, &str)],
    add_generation_prompt: bool,
) -> String {
    let mut s = String::from("<bos>");
    for (i, (role, content)) in turns.iter().enumerate() {
        let role = if *role == "assistant" { "model" } else { role };
        s.push_str("<start_of_turn>");
        s.push_str(role);
        s.push('\n');
        if i == 0 {
            if let Some(sys) = system {
                s.push_str(sys);
                s.push_str("\n\n");
            }
        }
        s.push_str(content.trim());
        s.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        s.push_str("<start_of_turn>model\n");
    }
    s
}

// ---------------------------------------------------------------------------------------
// safetensors, read by hand
// ---------------------------------------------------------------------------------------

/// One tensor of a safetensors file.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.dtype, "F32");
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn i64s(&self) -> Vec<i64> {
        assert_eq!(self.dtype, "I64");
        self.data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn ids(&self) -> Vec<u32> {
        self.i64s().into_iter().map(|x| x as u32).collect()
    }
}

/// Splits a safetensors file into (header length, header JSON).
pub fn safetensors_header(bytes: &[u8]) -> (usize, Value) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("safetensors header JSON");
    (n, h)
}

/// Every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (n, h) = safetensors_header(&bytes);
    let data = &bytes[8 + n..];
    let mut out = BTreeMap::new();
    for (name, e) in h.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let shape = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let off = e["data_offsets"].as_array().unwrap();
        let (b, en) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        out.insert(
            name.clone(),
            Tensor {
                dtype: e["dtype"].as_str().unwrap().to_string(),
                shape,
                data: data[b..en].to_vec(),
            },
        );
    }
    out
}

/// Name -> shape of every tensor in a checkpoint directory (one file or shards).
pub fn checkpoint_shapes(dir: &Path) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("model") || !name.ends_with(".safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let (_, h) = safetensors_header(&bytes);
        for (t, e) in h.as_object().unwrap() {
            if t == "__metadata__" {
                continue;
            }
            let shape = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert!(
                out.insert(t.clone(), shape).is_none(),
                "tensor {t} in two shards"
            );
        }
    }
    out
}

/// The goldens of a fixture.
pub fn goldens(name: &str) -> BTreeMap<String, Tensor> {
    read_safetensors(&fixture_dir(name).join("golden.safetensors"))
}

/// `ids` joined by commas, for `--ids`.
pub fn ids_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

// ---------------------------------------------------------------------------------------
// MatFormer fixtures (tests/fixtures/matformer)
// ---------------------------------------------------------------------------------------

/// The slices under tests/fixtures/matformer/slices.
pub const MATFORMER_SLICES: [&str; 4] = ["e2b_like", "full", "mix_layer_level", "skip_early"];

/// tests/fixtures/matformer/base.
pub fn matformer_base() -> PathBuf {
    repo_root().join("tests/fixtures/matformer/base")
}

/// tests/fixtures/matformer/slices/NAME (reference slice checkpoint, goldens, slice.json).
pub fn matformer_slice_dir(name: &str) -> PathBuf {
    repo_root()
        .join("tests/fixtures/matformer/slices")
        .join(name)
}

/// tests/fixtures/matformer/slices/NAME/slice.json.
pub fn matformer_slice_json(name: &str) -> PathBuf {
    matformer_slice_dir(name).join("slice.json")
}

/// A copy of the checkpoint in `src` (everything but golden.safetensors) with the tiny
/// tokenizer, the Gemma chat template and the same -it style generation_config.json as
/// [`model_with_tokenizer`].
pub fn dir_with_tokenizer(src: &Path, vocab_size: usize, tag: &str) -> TempDir {
    let t = TempDir::new(tag);
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let n = e.file_name();
        if n == "golden.safetensors" || !e.path().is_file() {
            continue;
        }
        std::fs::copy(e.path(), t.0.join(&n)).unwrap();
    }
    std::fs::write(t.join("tokenizer.json"), tokenizer_json(vocab_size)).unwrap();
    std::fs::copy(
        repo_root().join("tests/fixtures/tokenizer/chat_template.jinja"),
        t.join("chat_template.jinja"),
    )
    .unwrap();
    let gen = json!({
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
        "pad_token_id": 0,
        "do_sample": true,
        "top_k": 64,
        "top_p": 0.95
    });
    std::fs::write(
        t.join("generation_config.json"),
        serde_json::to_string_pretty(&gen).unwrap(),
    )
    .unwrap();
    t
}

/// max |ours − reference| / max |reference|, after checking every value is finite.
pub fn max_rel_diff(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "lengths differ");
    assert!(ours.iter().all(|x| x.is_finite()), "non-finite values");
    let max_ref = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max_diff = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    max_diff / max_ref
}

// ---------------------------------------------------------------------------------------
// gemma3n serve
// ---------------------------------------------------------------------------------------

/// A running `gemma3n serve` (killed on drop).
pub struct Server {
    pub child: std::process::Child,
    pub addr: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gemma3n serve` on `dir` (port 0) and waits for its address.
pub fn start_dir(dir: TempDir, extra: &[&str]) -> Server {
    let mut args = vec!["--threads", "1", "serve", "--model", dir.s(), "--port", "0"];
    args.extend_from_slice(extra);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gemma3n"))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn gemma3n serve");
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if std::io::BufRead::read_line(&mut err, &mut line).unwrap() == 0 {
            panic!("gemma3n serve exited before listening");
        }
        if let Some(a) = line
            .trim()
            .strip_prefix("gemma3n serve: listening on http://")
        {
            break a.to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut sink);
    });
    Server {
        child,
        addr,
        _dir: dir,
    }
}
