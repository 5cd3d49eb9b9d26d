//! `--device` of `run`, `chat`, `logits` and `serve`: `--device cpu` is the default (same
//! output as without the flag), unknown devices are refused, and a build without the `cuda`
//! feature refuses `--device cuda` with a message that says how to get it; `--activation-parts`
//! and `--prefill-rows` (how a GPU prefill multiplies, in what pieces) are refused on the CPU.

mod common;

use common::*;

const NAME: &str = "tiny_text_f32";

/// `ARGS` then `--device DEVICE` when given.
fn with_device<'a>(args: &[&'a str], device: Option<&'a str>) -> Vec<&'a str> {
    let mut v = args.to_vec();
    if let Some(d) = device {
        v.extend(["--device", d]);
    }
    v
}

fn run(dir: &TempDir, device: Option<&str>) -> Run {
    let args = [
        "run",
        "--model",
        dir.s(),
        "--prompt",
        "w5 w6 w7",
        "--temperature",
        "0",
        "--max-tokens",
        "6",
    ];
    let r = gemma3n(&with_device(&args, device), None);
    r.expect_ok(&format!("run --device {device:?}"));
    r
}

fn chat(dir: &TempDir, device: Option<&str>) -> Run {
    let args = [
        "chat",
        "--model",
        dir.s(),
        "--temperature",
        "0",
        "--max-tokens",
        "4",
    ];
    let r = gemma3n(&with_device(&args, device), Some("w5 w6\nw7\n/exit\n"));
    r.expect_ok(&format!("chat --device {device:?}"));
    r
}

/// `logits` over the fixture's golden prefill ids: the logits tensor.
fn logits(device: Option<&str>) -> Vec<f32> {
    let info = fixture(NAME);
    let ids = ids_arg(&goldens(NAME)["prefill_ids"].ids());
    let out = TempDir::new("device-logits");
    let f = out.join("logits.safetensors");
    let args = [
        "logits",
        "--model",
        info.dir.to_str().unwrap(),
        "--ids",
        &ids,
        "--out",
        f.to_str().unwrap(),
    ];
    gemma3n(&with_device(&args, device), None).expect_ok(&format!("logits --device {device:?}"));
    read_safetensors(&f)["logits"].f32s()
}

#[test]
fn run_on_the_cpu_explicitly_is_the_default() {
    let dir = model_with_tokenizer(NAME);
    let default = run(&dir, None);
    let cpu = run(&dir, Some("cpu"));
    assert!(!default.stdout.trim().is_empty(), "{}", default.stderr);
    assert_eq!(cpu.stdout, default.stdout);
    let (a, b) = (speed_lines(&default.stderr), speed_lines(&cpu.stderr));
    assert_eq!(a.len(), 1, "{}", default.stderr);
    assert_eq!(a, b);
}

#[test]
fn chat_on_the_cpu_explicitly_is_the_default() {
    let dir = model_with_tokenizer(NAME);
    let default = chat(&dir, None);
    let cpu = chat(&dir, Some("cpu"));
    assert_eq!(default.stdout.lines().count(), 2, "{}", default.stderr);
    assert_eq!(cpu.stdout, default.stdout);
    // Both second turns prefill only the new tokens.
    assert_eq!(speed_lines(&cpu.stderr), speed_lines(&default.stderr));
}

#[test]
fn logits_on_the_cpu_explicitly_are_the_default() {
    let default = logits(None);
    let cpu = logits(Some("cpu"));
    assert_eq!(cpu, default, "--device cpu changed the logits");
    let reference = goldens(NAME)["prefill_logits"].f32s();
    let rel = max_rel_diff(&cpu, &reference);
    assert!(rel <= 1e-4, "max|ours-ref|/max|ref| = {rel:e}");
}

/// Every command that takes `--device` refuses a device it does not know, before any work.
/// `run`, `chat`, `logits` (writing `out`) and `serve` on the model in `dir`.
fn commands<'a>(dir: &'a TempDir, out: &'a std::path::Path) -> [Vec<&'a str>; 4] {
    [
        vec!["run", "--model", dir.s(), "--prompt", "w5"],
        vec!["chat", "--model", dir.s()],
        vec!["serve", "--model", dir.s(), "--port", "0"],
        vec![
            "logits",
            "--model",
            dir.s(),
            "--ids",
            "2,5",
            "--out",
            out.to_str().unwrap(),
        ],
    ]
}

#[test]
fn unknown_devices_are_refused() {
    let dir = model_with_tokenizer(NAME);
    let out = TempDir::new("device-bad");
    let f = out.join("logits.safetensors");
    for bad in ["bogus", "gpu", "cuda:x", "cuda:", "cpu:0"] {
        for cmd in commands(&dir, &f) {
            let r = gemma3n(&with_device(&cmd, Some(bad)), None);
            let what = format!("{} --device {bad}", cmd[0]);
            r.expect_clean_failure(&what, &["--device", &format!("`{bad}`"), "cuda:N"]);
            assert!(r.stdout.is_empty(), "{what}: {}", r.stdout);
        }
    }
    assert!(!f.exists(), "a refused logits command wrote its output");
}

/// Without the `cuda` feature, `--device cuda[:N]` fails cleanly and says how to build a
/// binary that has it, before loading anything.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_is_refused_without_the_feature() {
    let dir = model_with_tokenizer(NAME);
    let out = TempDir::new("device-nocuda");
    let f = out.join("logits.safetensors");
    for dev in ["cuda", "cuda:0", "cuda:1"] {
        for cmd in commands(&dir, &f) {
            let r = gemma3n(&with_device(&cmd, Some(dev)), None);
            let what = format!("{} --device {dev}", cmd[0]);
            r.expect_clean_failure(
                &what,
                &[
                    &format!("--device {dev}"),
                    "built without CUDA support",
                    "--features cuda",
                ],
            );
            assert!(r.stdout.is_empty(), "{what}: {}", r.stdout);
        }
    }
    assert!(!f.exists(), "a refused logits command wrote its output");
}

/// `--activation-parts` sets how exactly a GPU prefill multiplies, and `--prefill-rows` the
/// pieces it runs in; the CPU decoder multiplies in f32 and has no such pieces, so any
/// explicit value (but the default parts) is refused there with a message naming the flag
/// and the device it is for, before any work; values out of range (parts 1..=3, rows at
/// least 1) are refused by the parser.
#[test]
fn gpu_prefill_flags_are_refused_on_the_cpu() {
    let dir = model_with_tokenizer(NAME);
    let out = TempDir::new("device-parts");
    let f = out.join("logits.safetensors");
    for cmd in commands(&dir, &f) {
        for (flag, value, want) in [
            (
                "--activation-parts",
                "1",
                vec!["--activation-parts 1", "--device cuda"],
            ),
            (
                "--activation-parts",
                "2",
                vec!["--activation-parts 2", "--device cuda"],
            ),
            ("--activation-parts", "4", vec!["--activation-parts"]),
            (
                "--prefill-rows",
                "2048",
                vec!["--prefill-rows 2048", "--device cuda"],
            ),
            ("--prefill-rows", "0", vec!["--prefill-rows"]),
        ] {
            let mut args = cmd.to_vec();
            args.extend([flag, value]);
            let r = gemma3n(&args, None);
            let what = format!("{} {flag} {value}", cmd[0]);
            r.expect_clean_failure(&what, &want);
            assert!(r.stdout.is_empty(), "{what}: {}", r.stdout);
        }
    }
    assert!(!f.exists(), "a refused logits command wrote its output");
}
