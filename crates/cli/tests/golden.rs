//! `gemma3n logits` and greedy `gemma3n run --raw` against the HF transformers goldens of the
//! fixtures (tests/fixtures/text/*/golden.safetensors).

mod common;

use common::*;

/// `logits` over `prefill_ids` writes F32 `[T, vocab_size]` logits within 1e-4 (relative to
/// max |ref|) of HF's `prefill_logits`.
fn check_logits(name: &str, threads: &str) {
    check_logits_with(name, &["--threads", threads]);
}

/// HF's prefill logits through `gemma3n <global> logits`.
fn check_logits_with(name: &str, global: &[&str]) {
    let info = fixture(name);
    let g = goldens(name);
    let ids = g["prefill_ids"].ids();
    let reference = g["prefill_logits"].f32s();
    let out = TempDir::new("logits");
    let f = out.join("logits.safetensors");
    let ids_s = ids_arg(&ids);
    let mut args: Vec<&str> = global.to_vec();
    args.extend([
        "logits",
        "--model",
        info.dir.to_str().unwrap(),
        "--ids",
        &ids_s,
        "--out",
        f.to_str().unwrap(),
    ]);
    gemma3n_raw(&args, None).expect_ok(name);
    let t = read_safetensors(&f);
    let l = &t["logits"];
    assert_eq!(l.dtype, "F32", "{name}");
    assert_eq!(l.shape, vec![ids.len(), info.vocab_size], "{name}");
    let rel = max_rel_diff(&l.f32s(), &reference);
    assert!(rel <= 1e-4, "{name}: max|ours-ref|/max|ref| = {rel:e}");
}

#[test]
fn logits_without_mmap_match_hf() {
    // Weights read into memory (sharded bf16 checkpoint) instead of mapped.
    check_logits_with("tiny_mm_bf16", &["--no-mmap"]);
}

#[test]
fn logits_tiny_text_f32_match_hf() {
    check_logits("tiny_text_f32", "1");
}

#[test]
fn logits_tiny_mm_bf16_match_hf() {
    check_logits("tiny_mm_bf16", "1");
}

#[test]
fn logits_tiny_text_f16_match_hf() {
    check_logits("tiny_text_f16", "1");
}

/// The same through the multi-threaded kernels.
#[test]
fn logits_two_threads_match_hf() {
    check_logits("tiny_text_f32", "2");
}

/// The tiny tokenizer written by the tests is what the other tests assume: the engine's
/// `Tokenizer` reads it with every fixture id inside its text vocabulary (so sampling masks
/// none of them), the Gemma special ids, and the same id <-> text mapping as `tiny_encode` /
/// `tiny_decode`.
#[test]
fn tiny_tokenizer_covers_the_fixture_vocab() {
    for name in FIXTURES {
        let info = fixture(name);
        let dir = model_with_tokenizer(name);
        let tok = gemma3n_engine::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.text_vocab_size(), info.vocab_size, "{name}");
        assert_eq!(tok.vocab_size(), info.vocab_size, "{name}");
        let sp = tok.special();
        assert_eq!(
            (sp.pad, sp.eos, sp.bos, sp.start_of_turn, sp.end_of_turn),
            (0, 1, 2, 105, 106)
        );
        let all: Vec<u32> = (0..info.vocab_size as u32).collect();
        let text = tiny_text(&all);
        assert_eq!(tok.encode(&text, false).unwrap(), all, "{name}: encode");
        assert_eq!(tiny_encode(&text), all, "{name}: tiny_encode");
        assert_eq!(
            tok.decode(&all, true).unwrap(),
            tiny_decode(&all),
            "{name}: decode"
        );
        let chat = gemma_render(
            Some("w9  w20"),
            &[("user", " w7 w8 "), ("assistant", "w3")],
            true,
        );
        assert_eq!(
            tok.encode(&chat, false).unwrap(),
            tiny_encode(&chat),
            "{name}: chat text"
        );
    }
}

/// `run --raw --temperature 0` continues `greedy_prompt` with HF's greedy tokens, up to the
/// first stop id (1 or 106), and reports prefill and decode speed.
fn check_greedy(name: &str) {
    let g = goldens(name);
    let prompt = g["greedy_prompt"].ids();
    let greedy = g["greedy_tokens"].ids();
    assert_eq!(prompt[0], BOS);
    let prompt_text = tiny_text(&prompt[1..]);
    assert_eq!(tiny_encode(&prompt_text), prompt[1..]);
    let expect_ids: Vec<u32> = greedy
        .iter()
        .copied()
        .take_while(|&i| i != 1 && i != 106)
        .collect();
    let expected = tiny_decode(&expect_ids);

    let dir = model_with_tokenizer(name);
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            &prompt_text,
            "--raw",
            "--temperature",
            "0",
            "--max-tokens",
            "20",
        ],
        None,
    );
    r.expect_ok(name);
    assert_eq!(
        r.stdout.trim_end_matches('\n'),
        expected,
        "{name}: greedy text\n{}",
        r.stderr
    );
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{name}: one speed line\n{}", r.stderr);
    let (prefill, decoded, stop) = &lines[0];
    assert_eq!(
        *prefill,
        prompt.len(),
        "{name}: prefill count (BOS + prompt)"
    );
    assert_eq!(*decoded, expect_ids.len(), "{name}: decoded count");
    if expect_ids.len() == 20 {
        assert_eq!(stop, "MaxTokens");
    }
    assert!(r.stderr.contains("tok/s"));
}

#[test]
fn run_raw_greedy_tiny_text_f32_matches_hf() {
    check_greedy("tiny_text_f32");
}

#[test]
fn run_raw_greedy_tiny_mm_bf16_matches_hf() {
    check_greedy("tiny_mm_bf16");
}

#[test]
fn run_raw_greedy_tiny_text_f16_matches_hf() {
    check_greedy("tiny_text_f16");
}

/// Sampling with `--top-k 1` keeps only the argmax, whatever the temperature and seed: it must
/// give HF's greedy continuation too.
#[test]
fn run_top_k_1_sampling_is_greedy() {
    let name = "tiny_text_f32";
    let g = goldens(name);
    let prompt = g["greedy_prompt"].ids();
    let greedy = g["greedy_tokens"].ids();
    let expect_ids: Vec<u32> = greedy
        .iter()
        .copied()
        .take_while(|&i| i != 1 && i != 106)
        .collect();
    let dir = model_with_tokenizer(name);
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            &tiny_text(&prompt[1..]),
            "--raw",
            "--temperature",
            "1.5",
            "--top-k",
            "1",
            "--seed",
            "123",
            "--max-tokens",
            "20",
        ],
        None,
    );
    r.expect_ok(name);
    assert_eq!(r.stdout.trim_end_matches('\n'), tiny_decode(&expect_ids));
}

/// `logits --model FILE.gguf` on the GGUF that llama.cpp's converter wrote for
/// tiny_text_f32 (`--outtype f16`) gives HF's fp32 logits within the f16 rounding of the
/// weights (2e-2 of the logit range; the library test pins it to the f16-rounded model),
/// and the same top token at most positions.
#[test]
fn logits_from_converter_gguf_match_hf() {
    let g = goldens("tiny_text_f32");
    let ids = g["prefill_ids"].ids();
    let reference = g["prefill_logits"].f32s();
    let out = TempDir::new("logits-gguf");
    let f = out.join("logits.safetensors");
    let gguf = repo_root().join("tests/fixtures/gguf/tiny_text_f16.gguf");
    gemma3n_raw(
        &[
            // The GGUF read into memory (the other GGUF tests map it).
            "--no-mmap",
            "logits",
            "--model",
            gguf.to_str().unwrap(),
            "--ids",
            &ids_arg(&ids),
            "--out",
            f.to_str().unwrap(),
        ],
        None,
    )
    .expect_ok("gguf");
    let ours = read_safetensors(&f)["logits"].f32s();
    let max_ref = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max_diff = ours
        .iter()
        .zip(&reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff / max_ref <= 2e-2, "rel {}", max_diff / max_ref);
    let v = ours.len() / ids.len();
    let argmax = |x: &[f32]| (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b });
    let agree = (0..ids.len())
        .filter(|&t| argmax(&ours[t * v..(t + 1) * v]) == argmax(&reference[t * v..(t + 1) * v]))
        .count();
    assert!(
        agree * 10 >= ids.len() * 9,
        "top-1 agrees at {agree}/{} positions",
        ids.len()
    );
}

/// `run` on a GGUF model takes its tokenizer from `--tokenizer DIR`; without one (and none
/// beside the file) it says so before loading anything.
#[test]
fn run_from_gguf_with_a_tokenizer_dir() {
    let tok = model_with_tokenizer("tiny_text_f32");
    let gguf = repo_root().join("tests/fixtures/gguf/tiny_text_f16.gguf");
    let g = goldens("tiny_text_f32");
    let prompt = g["greedy_prompt"].ids();
    let text = tiny_text(&prompt[1..]);
    let r = gemma3n(
        &[
            "run",
            "--model",
            gguf.to_str().unwrap(),
            "--tokenizer",
            tok.s(),
            "--raw",
            "--prompt",
            &text,
            "--temperature",
            "0",
            "--max-tokens",
            "20",
        ],
        None,
    );
    assert!(r.ok(), "{}", r.stderr);
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert_eq!(lines[0].0, prompt.len(), "prefill count");
    // f16 weights: HF's fp32 greedy continuation holds at least for its first tokens.
    let want = g["greedy_tokens"].ids();
    let first = tiny_text(&want[..3]);
    assert!(
        r.stdout.trim_start().starts_with(&first),
        "{} vs {first}",
        r.stdout
    );

    let r = gemma3n(
        &["run", "--model", gguf.to_str().unwrap(), "--prompt", "w5"],
        None,
    );
    assert!(!r.ok());
    assert!(r.stderr.contains("--tokenizer"), "{}", r.stderr);
}

/// `quantize --type f16` writes the same tensors as llama.cpp's converter did for the same
/// checkpoint, so `logits` from either file are identical; an unknown type is refused.
#[test]
fn quantize_f16_equals_the_converter() {
    let out = TempDir::new("quantize");
    let ours = out.join("ours.gguf");
    let src = fixture("tiny_text_f32").dir;
    gemma3n_raw(
        &[
            "quantize",
            "--model",
            src.to_str().unwrap(),
            "--type",
            "f16",
            "--out",
            ours.to_str().unwrap(),
        ],
        None,
    )
    .expect_ok("quantize");
    let theirs = repo_root().join("tests/fixtures/gguf/tiny_text_f16.gguf");
    let ids = ids_arg(&goldens("tiny_text_f32")["prefill_ids"].ids());
    let run = |m: &std::path::Path, f: &std::path::Path| {
        gemma3n_raw(
            &[
                "logits",
                "--model",
                m.to_str().unwrap(),
                "--ids",
                &ids,
                "--out",
                f.to_str().unwrap(),
            ],
            None,
        )
        .expect_ok("logits");
        read_safetensors(f)["logits"].f32s()
    };
    assert_eq!(
        run(&ours, &out.join("a.st")),
        run(&theirs, &out.join("b.st"))
    );
    let r = gemma3n(
        &[
            "quantize",
            "--model",
            src.to_str().unwrap(),
            "--type",
            "q3",
            "--out",
            ours.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !r.ok() && r.stderr.contains("q3") && r.stderr.contains("q8_0"),
        "{}",
        r.stderr
    );
}
