//! `gemma3n run` with the chat template, sampling, `tokenize` and `chat`, on a fixture copied
//! with the tiny tokenizer (see tests/common/mod.rs).

mod common;

use common::*;

const NAME: &str = "tiny_text_f32";

/// `run --system` renders the Gemma template: the prompt it prefills has as many ids as the
/// hand-rendered template (spec/text.md §7) tokenized with the tiny tokenizer.
#[test]
fn run_with_chat_template_and_system_prefills_the_rendered_prompt() {
    let dir = model_with_tokenizer(NAME);
    let (system, user) = ("w9 w20 w31", "  w5 w6 w7  ");
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            user,
            "--system",
            system,
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ],
        None,
    );
    r.expect_ok("run --system");
    let rendered = gemma_render(Some(system), &[("user", user)], true);
    let expect = tiny_encode(&rendered);
    // <bos> <sot> user w9 w20 w31 w5 w6 w7 <eot> <sot> model
    assert_eq!(
        expect,
        vec![BOS, SOT, USER_ID, 9, 20, 31, 5, 6, 7, EOT, SOT, MODEL_ID]
    );
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert_eq!(lines[0].0, expect.len(), "prompt tokens\n{}", r.stderr);
    assert!(lines[0].1 <= 4);
}

/// The chat template's generation matches the raw prompt of the same ids: `run` with the
/// template == `run --raw` with the rendered text minus `<bos>` (which --raw adds).
#[test]
fn run_with_template_equals_raw_rendered_prompt() {
    let dir = model_with_tokenizer(NAME);
    let args = ["--temperature", "0", "--max-tokens", "8"];
    let mut a = vec!["run", "--model", dir.s(), "--prompt", "w40 w41"];
    a.extend_from_slice(&args);
    let templ = gemma3n(&a, None);
    templ.expect_ok("run (template)");
    let rendered = gemma_render(None, &[("user", "w40 w41")], true);
    let raw_prompt = rendered.strip_prefix("<bos>").unwrap();
    let mut b = vec!["run", "--model", dir.s(), "--prompt", raw_prompt, "--raw"];
    b.extend_from_slice(&args);
    let raw = gemma3n(&b, None);
    raw.expect_ok("run --raw (rendered)");
    assert_eq!(templ.stdout, raw.stdout);
    assert_eq!(
        speed_lines(&templ.stderr)[0].0,
        speed_lines(&raw.stderr)[0].0
    );
}

fn sample(dir: &TempDir, seed: &str) -> Run {
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            "w5 w6 w7",
            "--raw",
            "--temperature",
            "0.8",
            "--top-k",
            "5",
            "--seed",
            seed,
            "--max-tokens",
            "12",
        ],
        None,
    );
    r.expect_ok("sampling run");
    r
}

/// Sampling with a seed is reproducible.
#[test]
fn sampling_with_a_seed_is_reproducible() {
    let dir = model_with_tokenizer(NAME);
    let a = sample(&dir, "7");
    let b = sample(&dir, "7");
    assert_eq!(a.stdout, b.stdout);
    assert!(!a.stdout.trim().is_empty());
}

/// Every token sampled with `--top-k 5` is among the 5 largest logits at its position (logits
/// from `gemma3n logits` over prompt + generated ids, which match HF per golden.rs).
#[test]
fn top_k_sampling_stays_in_the_top_k() {
    let dir = model_with_tokenizer(NAME);
    let mut checked = 0;
    for seed in ["7", "8", "9"] {
        let r = sample(&dir, seed);
        let generated = tiny_encode(&r.stdout);
        let (_, decoded, _) = speed_lines(&r.stderr)[0].clone();
        if generated.len() != decoded {
            // A special id was sampled: it is invisible in the text, so the ids are unknown.
            continue;
        }
        let mut ids = vec![BOS, 5, 6, 7];
        let prompt_len = ids.len();
        ids.extend(&generated);
        let out = TempDir::new("topk");
        let f = out.join("l.safetensors");
        gemma3n(
            &[
                "logits",
                "--model",
                dir.s(),
                "--ids",
                &ids_arg(&ids),
                "--out",
                f.to_str().unwrap(),
            ],
            None,
        )
        .expect_ok("logits");
        let t = &read_safetensors(&f)["logits"];
        let v = t.shape[1];
        let l = t.f32s();
        for (i, &tok) in generated.iter().enumerate() {
            let row = &l[(prompt_len - 1 + i) * v..(prompt_len + i) * v];
            let x = row[tok as usize];
            let above = row.iter().filter(|&&y| y > x).count();
            assert!(
                above < 5,
                "seed {seed}: token {i} ({tok}) has {above} larger logits"
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "every sample held a special id");
}

/// `tokenize` prints the ids as a JSON array, with BOS on request and special tokens parsed.
#[test]
fn tokenize_prints_json_ids() {
    let dir = model_with_tokenizer(NAME);
    let r = gemma3n(&["tokenize", "--model", dir.s(), "w5 w7"], None);
    r.expect_ok("tokenize");
    assert_eq!(r.stdout.trim(), "[5,7]");
    let r = gemma3n(&["tokenize", "--model", dir.s(), "w5 w7", "--bos"], None);
    r.expect_ok("tokenize --bos");
    let v: Vec<u32> = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v, vec![2, 5, 7]);
    let r = gemma3n(
        &[
            "tokenize",
            "--model",
            dir.s(),
            "<start_of_turn>user\nw299<end_of_turn>",
        ],
        None,
    );
    r.expect_ok("tokenize specials");
    let v: Vec<u32> = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v, vec![SOT, USER_ID, 299, EOT]);
}

fn chat(dir: &TempDir, input: &str) -> Run {
    let r = gemma3n(
        &[
            "chat",
            "--model",
            dir.s(),
            "--temperature",
            "0",
            "--max-tokens",
            "5",
        ],
        Some(input),
    );
    r.expect_ok("chat");
    r
}

fn run_templated(dir: &TempDir, prompt: &str) -> Run {
    let r = gemma3n(
        &[
            "run",
            "--model",
            dir.s(),
            "--prompt",
            prompt,
            "--temperature",
            "0",
            "--max-tokens",
            "5",
        ],
        None,
    );
    r.expect_ok("run");
    r
}

/// A chat with /reset prints two replies; after /reset the reply is that of a fresh
/// conversation, and each reply is what `run` gives for the same single message.
#[test]
fn chat_two_replies_with_reset() {
    let dir = model_with_tokenizer(NAME);
    let r = chat(&dir, "w5 w6\n/reset\nw7\n/exit\n");
    let replies: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        replies.len(),
        2,
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("reset"), "{}", r.stderr);
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    // Each turn is a whole fresh prompt: <bos> <sot> user w.. <eot> <sot> model.
    assert_eq!(
        lines[0].0,
        tiny_encode(&gemma_render(None, &[("user", "w5 w6")], true)).len()
    );
    assert_eq!(
        lines[1].0,
        tiny_encode(&gemma_render(None, &[("user", "w7")], true)).len()
    );
    let one = run_templated(&dir, "w5 w6");
    let two = run_templated(&dir, "w7");
    assert_eq!(replies[0], one.stdout.trim_end_matches('\n'));
    assert_eq!(replies[1], two.stdout.trim_end_matches('\n'));
}

/// The second turn of a conversation prefills only the new tokens (the KV cache keeps the
/// first turn): exactly the rendered conversation minus what the cache holds.
#[test]
fn chat_second_turn_prefills_only_new_tokens() {
    let dir = model_with_tokenizer(NAME);
    let r = chat(&dir, "w5 w6\nw7\n/exit\n");
    let replies: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        replies.len(),
        2,
        "stdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
    let lines = speed_lines(&r.stderr);
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    let first_prompt = tiny_encode(&gemma_render(None, &[("user", "w5 w6")], true));
    assert_eq!(lines[0].0, first_prompt.len());
    let whole = tiny_encode(&gemma_render(
        None,
        &[("user", "w5 w6"), ("assistant", replies[0]), ("user", "w7")],
        true,
    ));
    assert!(
        lines[1].0 < whole.len(),
        "second turn prefilled {} of {} tokens",
        lines[1].0,
        whole.len()
    );
    // In the cache after turn 1: its prompt and the generated ids fed back (all but the last
    // when generation stopped at --max-tokens; all of them when a stop id ended it).
    let (_, generated, stop) = &lines[0];
    let fed = if stop == "MaxTokens" {
        generated - 1
    } else {
        *generated
    };
    assert_eq!(
        tiny_encode(replies[0]).len(),
        *generated,
        "reply 1 holds no special id"
    );
    assert_eq!(
        lines[1].0,
        whole.len() - first_prompt.len() - fed,
        "{}",
        r.stderr
    );
}

/// Empty lines are skipped and end of input ends the chat like /exit.
#[test]
fn chat_ends_at_end_of_input() {
    let dir = model_with_tokenizer(NAME);
    let r = chat(&dir, "\n\nw5\n");
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert_eq!(speed_lines(&r.stderr).len(), 1);
}
