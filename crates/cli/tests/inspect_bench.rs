//! `gemma3n inspect` (layer count, KV sharing, parameter counts from the safetensors headers)
//! and `gemma3n bench --json`.

mod common;

use common::*;
use serde_json::Value;

/// The KV-sharing consumers of each fixture, `consumer<-producer`, from
/// tests/fixtures/text/README.md.
fn kv_sharing(name: &str) -> &'static str {
    match name {
        "tiny_text_f32" => "8<-7 9<-5 10<-7 11<-5",
        "tiny_mm_bf16" => "10<-8 11<-8 12<-8 13<-8 14<-9",
        "tiny_text_f16" => "8<-6 9<-6 10<-7 11<-6",
        _ => unreachable!(),
    }
}

/// The number printed after `label` on its own line.
fn number_after(stdout: &str, label: &str) -> usize {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line `{label}` in\n{stdout}"));
    line.trim_start()[label.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("line `{line}`"))
}

fn check_inspect(name: &str) {
    let info = fixture(name);
    let r = gemma3n(&["inspect", "--model", info.dir.to_str().unwrap()], None);
    r.expect_ok(name);
    let out = &r.stdout;
    assert!(
        out.contains(&format!("{} layers", info.num_hidden_layers)),
        "{name}:\n{out}"
    );
    let first_shared = info.num_hidden_layers - info.num_kv_shared_layers;
    let kv = out
        .lines()
        .find(|l| l.starts_with("kv sharing"))
        .expect("kv sharing line");
    assert!(
        kv.contains(&format!("{first_shared} own-cache layers")),
        "{name}: {kv}"
    );
    assert!(kv.trim_end().ends_with(kv_sharing(name)), "{name}: {kv}");

    // Parameters from the headers: every tensor under the text prefix (the multimodal
    // fixture's two vision/audio decoys are outside it).
    let shapes = checkpoint_shapes(&info.dir);
    let numel = |s: &Vec<usize>| s.iter().product::<usize>();
    let text: Vec<(&String, &Vec<usize>)> = shapes
        .iter()
        .filter(|(n, _)| n.starts_with(&info.text_prefix))
        .collect();
    let in_file: usize = text.iter().map(|(_, s)| numel(s)).sum();
    let embed = numel(&shapes[&format!("{}embed_tokens.weight", info.text_prefix)]);
    let ple = numel(&shapes[&format!("{}embed_tokens_per_layer.weight", info.text_prefix)]);
    assert_eq!(embed, info.vocab_size * info.hidden_size);
    // The KV-shared layers' k_proj/v_proj/k_norm are unused; HF counts them (the real
    // checkpoints hold them, as tiny_mm_bf16 does; transformers 5.24 does not create them, so
    // tiny_text_* lack them). inspect reports the HF count, so add the missing ones.
    let kv_dim = info.num_key_value_heads * info.head_dim;
    let unused_per_layer = 2 * kv_dim * info.hidden_size + info.head_dim;
    let unused = info.num_kv_shared_layers * unused_per_layer;
    let unused_in_file: usize = text
        .iter()
        .filter(|(n, _)| {
            let rest = n.strip_prefix(&format!("{}layers.", info.text_prefix));
            rest.is_some_and(|r| {
                let l: usize = r.split('.').next().unwrap().parse().unwrap();
                l >= first_shared
                    && (r.contains("self_attn.k_proj")
                        || r.contains("self_attn.v_proj")
                        || r.contains("self_attn.k_norm"))
            })
        })
        .map(|(_, s)| numel(s))
        .sum();
    if name == "tiny_mm_bf16" {
        assert_eq!(
            unused_in_file, unused,
            "{name}: the checkpoint holds the unused k/v"
        );
    } else {
        assert_eq!(unused_in_file, 0);
    }
    let total = in_file + unused - unused_in_file;
    assert_eq!(number_after(out, "unused shared k/v"), unused, "{name}");
    assert_eq!(number_after(out, "total"), total, "{name}:\n{out}");
    assert_eq!(
        number_after(out, "effective"),
        total - embed - ple,
        "{name}:\n{out}"
    );
    assert_eq!(
        number_after(out, "embeddings (tied LM head)"),
        embed,
        "{name}"
    );
    assert_eq!(number_after(out, "per-layer embeddings"), ple, "{name}");
}

#[test]
fn inspect_tiny_text_f32() {
    check_inspect("tiny_text_f32");
}

#[test]
fn inspect_tiny_mm_bf16() {
    check_inspect("tiny_mm_bf16");
}

#[test]
fn inspect_tiny_text_f16() {
    check_inspect("tiny_text_f16");
}

fn check_bench(name: &str) {
    let info = fixture(name);
    let r = gemma3n(
        &[
            "bench",
            "--model",
            info.dir.to_str().unwrap(),
            "--prompt-len",
            "8",
            "--gen",
            "4",
            "--json",
        ],
        None,
    );
    r.expect_ok(name);
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name}: one JSON line\n{}", r.stdout);
    let v: Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{name}: {e}: {}", lines[0]));
    assert!(v.is_object());
    for k in [
        "prefill_tok_s",
        "decode_tok_s",
        "decode_gb_s",
        "bandwidth_gb_s",
    ] {
        let x = v[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: `{k}` is not a number: {v}"));
        assert!(x.is_finite() && x > 0.0, "{name}: {k} = {x}");
    }
    assert_eq!(v["prompt_len"], 8);
    assert_eq!(v["gen"], 4);
    // One probe per decode repetition (one by default), its share equal to the median.
    let reps = v["bandwidth_pct_reps"]
        .as_array()
        .expect("bandwidth_pct_reps");
    assert_eq!(reps.len(), 1, "{name}: {v}");
    assert_eq!(reps[0].as_f64(), v["bandwidth_pct"].as_f64(), "{name}: {v}");
}

#[test]
fn bench_json_tiny_text_f32() {
    check_bench("tiny_text_f32");
}

#[test]
fn bench_json_tiny_mm_bf16() {
    check_bench("tiny_mm_bf16");
}

#[test]
fn inspect_reads_a_gguf_file() {
    let path = repo_root().join("tests/fixtures/gguf/tiny_text_f16.gguf");
    let r = gemma3n(&["inspect", "--model", path.to_str().unwrap()], None);
    r.expect_ok("inspect gguf");
    // The file is tiny_text_f32 converted to f16 by llama.cpp's converter.
    let info = fixture("tiny_text_f32");
    assert!(
        r.stdout
            .contains(&format!("{} layers", info.num_hidden_layers)),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("vocab {}", info.vocab_size)),
        "{}",
        r.stdout
    );
    for ty in ["F16", "F32"] {
        assert!(
            r.stdout.lines().any(|l| l.trim_start().starts_with(ty)),
            "no {ty} row:\n{}",
            r.stdout
        );
    }
}
