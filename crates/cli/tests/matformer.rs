//! MatFormer slicing end to end through the `gemma3n` binary (spec/text.md §6), against the
//! reference slices of tests/fixtures/matformer: each slice was made from `base/` by the
//! MatFormer Lab procedure in Python and its goldens computed by HF transformers in float32.
//!
//! - `logits --slice` (run-time slicing of `base/`) reproduces every slice's HF logits;
//! - `slice` writes exactly the reference checkpoint (tensors bit for bit, config, generation
//!   config), and the written checkpoint reproduces the goldens too;
//! - `run`, `bench` and `inspect` take/report slices; bad slices are refused cleanly.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Relative tolerance of the logits: max|diff| / max|ref|. The HF f32-vs-f64 noise floor of
/// these fixtures is at most 6.2e-4 absolute on logits up to 18.9 (3.3e-5 relative).
const REL_TOL: f32 = 1e-4;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// max|a - b| / max|b|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(a.iter().all(|x| x.is_finite()), "non-finite logits");
    d / m
}

/// The slice's golden prefill ids and logits.
fn slice_goldens(name: &str) -> (Vec<u32>, Tensor) {
    let g = read_safetensors(&matformer_slice_dir(name).join("golden.safetensors"));
    (g["prefill_ids"].ids(), g["prefill_logits"].clone())
}

/// `gemma3n logits --model DIR [extra] --ids IDS`: the `logits` tensor.
fn logits(model: &Path, extra: &[&str], ids: &[u32], tag: &str) -> Tensor {
    let t = TempDir::new("mf-logits");
    let out = t.join("logits.safetensors");
    let ids = ids_arg(ids);
    let mut args = vec![
        "logits",
        "--model",
        s(model),
        "--ids",
        &ids,
        "--out",
        s(&out),
    ];
    args.extend_from_slice(extra);
    gemma3n(&args, None).expect_ok(tag);
    read_safetensors(&out)
        .remove("logits")
        .expect("tensor `logits`")
}

fn check_against_golden(name: &str, got: &Tensor, gold: &Tensor, what: &str) {
    assert_eq!(got.dtype, "F32", "{what}");
    assert_eq!(got.shape, gold.shape, "{what}: logits shape");
    let r = rel_diff(&got.f32s(), &gold.f32s());
    assert!(
        r <= REL_TOL,
        "{what} ({name}): relative max|diff| {r:.2e} > {REL_TOL:.0e}"
    );
}

/// Run-time slicing: `logits --model base --slice S/slice.json` matches HF on the sliced
/// checkpoint, for every reference slice (layer skips before/after the producers, mixed
/// widths, identity).
#[test]
fn runtime_slice_logits_match_hf_goldens() {
    for name in MATFORMER_SLICES {
        let (ids, gold) = slice_goldens(name);
        let json = matformer_slice_json(name);
        let got = logits(
            &matformer_base(),
            &["--slice", s(&json)],
            &ids,
            &format!("logits --slice {name}"),
        );
        check_against_golden(name, &got, &gold, "logits --slice");
    }
}

/// The identity slice runs exactly the unsliced model: same logits, bit for bit.
#[test]
fn full_slice_is_the_unsliced_model() {
    let (ids, _) = slice_goldens("full");
    let base = logits(&matformer_base(), &[], &ids, "logits (no slice)");
    let json = matformer_slice_json("full");
    let full = logits(
        &matformer_base(),
        &["--slice", s(&json)],
        &ids,
        "logits --slice full",
    );
    assert_eq!(base.shape, full.shape);
    assert!(
        base.data == full.data,
        "--slice full changes the logits: rel {:.2e}",
        rel_diff(&full.f32s(), &base.f32s())
    );
}

/// The keys of config.json that slicing changes (spec §6.2 step 3, plus `layer_types`).
const SLICED_FIELDS: [&str; 5] = [
    "num_hidden_layers",
    "intermediate_size",
    "num_kv_shared_layers",
    "activation_sparsity_pattern",
    "layer_types",
];

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `gemma3n slice` writes the reference checkpoint: the same tensors (names, dtypes, shapes,
/// bytes), the same config (the sliced fields and every other one), generation_config.json
/// copied; and that checkpoint, loaded as a model of its own, reproduces the HF goldens and
/// the run-time slice's logits.
#[test]
fn slice_export_is_the_reference_checkpoint() {
    for name in MATFORMER_SLICES {
        let refdir = matformer_slice_dir(name);
        let t = TempDir::new(&format!("mf-export-{name}"));
        let out = t.join("out"); // does not exist yet: `slice` creates it
        let json = matformer_slice_json(name);
        gemma3n(
            &[
                "slice",
                "--model",
                s(&matformer_base()),
                "--slice",
                s(&json),
                "--out",
                s(&out),
            ],
            None,
        )
        .expect_ok(&format!("slice {name}"));

        // Tensors.
        let ours = read_safetensors(&out.join("model.safetensors"));
        let want = read_safetensors(&refdir.join("model.safetensors"));
        let on: Vec<&String> = ours.keys().collect();
        let wn: Vec<&String> = want.keys().collect();
        assert_eq!(on, wn, "{name}: tensor names");
        for (k, w) in &want {
            let o = &ours[k];
            assert_eq!(o.dtype, w.dtype, "{name}: {k} dtype");
            assert_eq!(o.shape, w.shape, "{name}: {k} shape");
            assert!(o.data == w.data, "{name}: {k} bytes differ");
        }

        // Config: the sliced fields by name (clear failure messages), then all of it.
        let oc = read_json(&out.join("config.json"));
        let wc = read_json(&refdir.join("config.json"));
        for f in SLICED_FIELDS {
            assert!(wc.get(f).is_some(), "reference {name} config lacks {f}");
            assert_eq!(oc.get(f), wc.get(f), "{name}: config.json `{f}`");
        }
        assert_eq!(oc, wc, "{name}: config.json (other fields)");

        // generation_config.json: copied from base (which equals the reference's).
        let g = std::fs::read(out.join("generation_config.json"))
            .unwrap_or_else(|e| panic!("{name}: generation_config.json not written: {e}"));
        assert_eq!(
            g,
            std::fs::read(matformer_base().join("generation_config.json")).unwrap(),
            "{name}: generation_config.json is not a copy of base's"
        );
        assert_eq!(
            read_json(&out.join("generation_config.json")),
            read_json(&refdir.join("generation_config.json")),
            "{name}: generation_config.json"
        );

        // The written checkpoint runs on its own and reproduces the goldens, and the same
        // numbers as the run-time slice of base (same weights, same math).
        let (ids, gold) = slice_goldens(name);
        let exported = logits(&out, &[], &ids, &format!("logits --model <slice {name}>"));
        check_against_golden(name, &exported, &gold, "logits of the exported slice");
        let runtime = logits(
            &matformer_base(),
            &["--slice", s(&json)],
            &ids,
            &format!("logits --slice {name}"),
        );
        let r = rel_diff(&exported.f32s(), &runtime.f32s());
        assert!(
            r <= 1e-6,
            "{name}: exported slice vs run-time slice: rel {r:.2e}"
        );
    }
}

/// `run --raw --temperature 0 --max-tokens 8` on base with the tiny tokenizer.
fn greedy_run(dir: &Path, slice: Option<&Path>) -> Run {
    let prompt = tiny_text(&[5, 7, 9, 20, 30, 40]);
    let mut args = vec![
        "run",
        "--model",
        s(dir),
        "--prompt",
        &prompt,
        "--raw",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    ];
    if let Some(p) = slice {
        args.push("--slice");
        args.push(s(p));
    }
    let r = gemma3n(&args, None);
    r.expect_ok(&format!("run --slice {slice:?}"));
    r
}

fn base_vocab() -> usize {
    read_json(&matformer_base().join("config.json"))["vocab_size"]
        .as_u64()
        .unwrap() as usize
}

/// `run --slice <full>` generates what `run` without a slice generates.
#[test]
fn run_with_full_slice_equals_run_without_slice() {
    let dir = dir_with_tokenizer(&matformer_base(), base_vocab(), "mf-run-full");
    let plain = greedy_run(dir.path(), None);
    let full = greedy_run(dir.path(), Some(&matformer_slice_json("full")));
    assert_eq!(full.stdout, plain.stdout, "--slice full changes the text");
    assert_eq!(
        speed_lines(&full.stderr).len(),
        1,
        "speed line:\n{}",
        full.stderr
    );
}

/// `run --slice <e2b_like>` works, is deterministic, differs from the unsliced model, and
/// generates what the exported e2b_like checkpoint generates without a slice (15 tokens with
/// a sliding window of 5: the sliced KV cache is exercised in decode, too).
#[test]
fn run_with_e2b_like_slice_is_deterministic_and_equals_the_export() {
    let vocab = base_vocab();
    let dir = dir_with_tokenizer(&matformer_base(), vocab, "mf-run-e2b");
    let json = matformer_slice_json("e2b_like");
    let a = greedy_run(dir.path(), Some(&json));
    let b = greedy_run(dir.path(), Some(&json));
    assert_eq!(
        a.stdout, b.stdout,
        "greedy run --slice is not deterministic"
    );
    let (_, m, _) = speed_lines(&a.stderr)[0].clone();
    assert!(m >= 1, "no token decoded:\n{}", a.stderr);
    // The slice is applied: the half-width 12-layer model says something else than base.
    let plain = greedy_run(dir.path(), None);
    assert_ne!(
        a.stdout, plain.stdout,
        "--slice e2b_like generates base's text"
    );

    let t = TempDir::new("mf-run-e2b-export");
    let out = t.join("out");
    gemma3n(
        &[
            "slice",
            "--model",
            s(&matformer_base()),
            "--slice",
            s(&json),
            "--out",
            s(&out),
        ],
        None,
    )
    .expect_ok("slice e2b_like");
    let exported = dir_with_tokenizer(&out, vocab, "mf-run-e2b-exported");
    let c = greedy_run(exported.path(), None);
    assert_eq!(
        a.stdout, c.stdout,
        "run --slice e2b_like != run on the exported e2b_like checkpoint"
    );
}

fn bench_json(extra: &[&str]) -> Value {
    let base = matformer_base();
    let mut args = vec![
        "bench",
        "--model",
        s(&base),
        "--prompt-len",
        "8",
        "--gen",
        "4",
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = gemma3n(&args, None);
    r.expect_ok(&format!("bench {extra:?}"));
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("bench --json output is not JSON ({e}):\n{}", r.stdout))
}

/// `bench --slice` names the slice (the file stem) and reads fewer bytes per token.
#[test]
fn bench_reports_the_slice_and_fewer_bytes_per_token() {
    let json = matformer_slice_json("e2b_like");
    let sliced = bench_json(&["--slice", s(&json)]);
    let plain = bench_json(&[]);
    let stem = json.file_stem().unwrap().to_str().unwrap();
    assert_eq!(sliced["slice"], Value::from(stem), "{sliced}");
    let bs = sliced["bytes_per_token"].as_f64().expect("bytes_per_token");
    let bp = plain["bytes_per_token"].as_f64().expect("bytes_per_token");
    assert!(
        bs > 0.0 && bs < bp,
        "sliced {bs} vs unsliced {bp} bytes/token"
    );
}

// ---------------------------------------------------------------------------------------
// Refused slices
// ---------------------------------------------------------------------------------------

/// `logits --model base ARGS` on two ids.
fn logits_with(args: &[&str]) -> Run {
    let t = TempDir::new("mf-bad");
    let out = t.join("x.safetensors");
    let base = matformer_base();
    let mut all = vec![
        "logits",
        "--model",
        s(&base),
        "--ids",
        "2,5",
        "--out",
        s(&out),
    ];
    all.extend_from_slice(args);
    let r = gemma3n(&all, None);
    assert!(
        !out.exists() || r.ok(),
        "a refused command wrote its output"
    );
    r
}

/// A slice file with `text`, in a temp dir; returns (dir guard, path).
fn slice_file(stem: &str, text: &str) -> (TempDir, std::path::PathBuf) {
    let t = TempDir::new("mf-slicefile");
    let p = t.join(&format!("{stem}.json"));
    std::fs::write(&p, text).unwrap();
    (t, p)
}

/// A refused custom slice, through `logits` and through `slice` (which must not create the
/// output directory).
fn refused(stem: &str, text: &str, culprits: &[&str]) {
    let (_t, p) = slice_file(stem, text);
    logits_with(&["--slice", s(&p)])
        .expect_clean_failure(&format!("logits --slice {stem}"), culprits);
    let o = TempDir::new("mf-bad-out");
    let out = o.join("out");
    gemma3n(
        &[
            "slice",
            "--model",
            s(&matformer_base()),
            "--slice",
            s(&p),
            "--out",
            s(&out),
        ],
        None,
    )
    .expect_clean_failure(&format!("slice --slice {stem}"), culprits);
    assert!(
        !out.exists(),
        "slice {stem}: refused, but wrote {}",
        out.display()
    );
}

/// The official slices are for the 35-layer E4B: on the 15-layer base they are refused, and
/// the message says which layer / how many entries do not fit the 15 layers.
#[test]
fn official_sizes_do_not_fit_the_small_model() {
    logits_with(&["--size", "E2B"])
        .expect_clean_failure("--size E2B on base", &["E2B", "layer 20", "15 layers"]);
    logits_with(&["--size", "E4B"])
        .expect_clean_failure("--size E4B on base", &["E4B", "35", "15 layers"]);
}

/// An unknown name is refused with the list of known ones.
#[test]
fn unknown_size_lists_the_known_names() {
    logits_with(&["--size", "E9B"]).expect_clean_failure(
        "--size E9B",
        &["E9B", "E4B", "E2B", "E2.54B", "E3.79B-block"],
    );
}

/// Skipping KV producer 8 (sliding; consumers 10..13 read its K/V) is refused.
#[test]
fn skipping_a_kv_producer_is_refused() {
    refused(
        "skip8",
        r#"{"layers_to_skip": [8], "ffn_hidden_dims": [64,64,64,64,64,64,64,64,64,64,64,64,64,64]}"#,
        &["layer 8", "cannot be skipped"],
    );
}

#[test]
fn wrong_number_of_widths_is_refused() {
    // Skips 2 layers, so 13 widths are needed; 14 given.
    refused(
        "count",
        r#"{"layers_to_skip": [1, 2], "ffn_hidden_dims": [64,64,64,64,64,64,64,64,64,64,64,64,64,64]}"#,
        &["ffn_hidden_dims", "14", "13"],
    );
}

#[test]
fn width_above_the_stored_width_is_refused() {
    refused(
        "wide",
        r#"{"layers_to_skip": [], "ffn_hidden_dims": [64,64,64,64,64,64,160,64,64,64,64,64,64,64,64]}"#,
        &["layer 6", "160", "128"],
    );
}

#[test]
fn width_not_a_multiple_of_32_is_refused() {
    refused(
        "odd",
        r#"{"layers_to_skip": [], "ffn_hidden_dims": [64,64,64,64,64,64,48,64,64,64,64,64,64,64,64]}"#,
        &["layer 6", "48", "multiple of 32"],
    );
}

#[test]
fn malformed_slice_json_is_refused() {
    refused(
        "broken",
        r#"{"layers_to_skip": [1, 2], "ffn_hidden_dims": [64,"#,
        &["broken.json", "JSON"],
    );
    refused(
        "nodims",
        r#"{"layers_to_skip": []}"#,
        &["nodims.json", "ffn_hidden_dims"],
    );
    refused(
        "negative",
        r#"{"layers_to_skip": [-1], "ffn_hidden_dims": [64]}"#,
        &["negative.json", "layers_to_skip"],
    );
}

#[test]
fn missing_slice_file_is_refused() {
    let t = TempDir::new("mf-missing");
    let p = t.join("no_such_slice.json");
    logits_with(&["--slice", s(&p)])
        .expect_clean_failure("missing --slice file", &["no_such_slice.json"]);
}

#[test]
fn slice_command_needs_exactly_one_selection() {
    let t = TempDir::new("mf-noselect");
    let out = t.join("out");
    let base = matformer_base();
    gemma3n(&["slice", "--model", s(&base), "--out", s(&out)], None)
        .expect_clean_failure("slice without --size/--slice", &["--size", "--slice"]);
    assert!(!out.exists());
    let json = matformer_slice_json("full");
    gemma3n(
        &[
            "slice",
            "--model",
            s(&base),
            "--size",
            "E2B",
            "--slice",
            s(&json),
            "--out",
            s(&out),
        ],
        None,
    )
    .expect_clean_failure("slice --size with --slice", &["--size", "--slice"]);
    assert!(!out.exists());
}

// ---------------------------------------------------------------------------------------
// inspect: the official table on an E4B config
// ---------------------------------------------------------------------------------------

/// spec/text.md §6.3: official name, #layers, computed effective parameters (HF
/// `num_parameters(exclude_embeddings=True)` of the sliced E4B config).
const OFFICIAL: [(&str, usize, u64); 16] = [
    ("Main model", 35, 3_980_491_248),
    ("Config for official E2B Model", 30, 1_905_495_648),
    ("Config for E1.96B (layer-level)", 30, 1_955_827_296),
    ("Config for E2.54B (layer-level)", 35, 2_520_873_456),
    ("Config for E2.69B (layer-level)", 35, 2_671_868_400),
    ("Config for E2.98B (layer-level)", 35, 2_973_858_288),
    ("Config for E3.18B (layer-level)", 35, 3_175_184_880),
    ("Config for E3.39B (layer-level)", 35, 3_376_511_472),
    ("Config for E3.59B (layer-level)", 35, 3_577_838_064),
    ("Config for E3.79B (layer-level)", 35, 3_779_164_656),
    ("Config for E2.49B (block-level)", 35, 2_470_541_808),
    ("Config for E2.73B (block-level)", 35, 2_722_200_048),
    ("Config for E2.98B (block-level)", 35, 2_973_858_288),
    ("Config for E3.24B (block-level)", 35, 3_225_516_528),
    ("Config for E3.49B (block-level)", 35, 3_477_174_768),
    ("Config for E3.79B (block-level)", 35, 3_728_833_008),
];

/// `inspect` on a config-only E4B directory lists the 16 official slices with the spec's
/// layer counts and effective parameter counts; on the 15-layer base it lists none.
#[test]
fn inspect_lists_the_official_slices_of_e4b() {
    let t = TempDir::new("mf-inspect-e4b");
    std::fs::write(
        t.join("config.json"),
        r#"{"model_type":"gemma3n","text_config":{"model_type":"gemma3n_text"}}"#,
    )
    .unwrap();
    let r = gemma3n(&["inspect", "--model", t.s()], None);
    r.expect_ok("inspect (E4B config)");
    let lines: Vec<&str> = r.stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("MatFormer slices"))
        .unwrap_or_else(|| panic!("no slice table:\n{}", r.stdout));
    // Header line, then one row per slice: short, layers, params, bytes (2 words), MMLU%, name.
    let rows: Vec<&str> = lines[head + 2..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .copied()
        .collect();
    assert_eq!(rows.len(), 16, "slice rows:\n{}", r.stdout);
    for (row, (official, layers, params)) in rows.iter().zip(OFFICIAL) {
        let w: Vec<&str> = row.split_whitespace().collect();
        let name = row
            .split("%  ")
            .nth(1)
            .unwrap_or_else(|| panic!("row `{row}`"))
            .trim();
        assert_eq!(name, official, "row `{row}`");
        assert_eq!(
            w[1].parse::<usize>().ok(),
            Some(layers),
            "{official}: layers in `{row}`"
        );
        assert_eq!(
            w[2].parse::<u64>().ok(),
            Some(params),
            "{official}: effective params in `{row}`"
        );
    }

    let r = gemma3n(&["inspect", "--model", s(&matformer_base())], None);
    r.expect_ok("inspect base");
    assert!(
        !r.stdout.contains("Main model"),
        "official slices listed for a 15-layer model:\n{}",
        r.stdout
    );
}

/// A custom slice given by flags runs like the same slice given as a JSON file.
#[test]
fn slice_flags_equal_the_slice_files() {
    let (ids, gold) = slice_goldens("e2b_like");
    let got = logits(
        &matformer_base(),
        &["--skip-layers", "10,11,12", "--ffn-dims", "64"],
        &ids,
        "logits --skip-layers --ffn-dims",
    );
    check_against_golden(
        "e2b_like",
        &got,
        &gold,
        "logits --skip-layers 10,11,12 --ffn-dims 64",
    );
    let (ids, gold) = slice_goldens("skip_early");
    let got = logits(
        &matformer_base(),
        &[
            "--skip-layers",
            "1,6",
            "--ffn-dims",
            "32,64,32,128,64,32,64,128,64,32,64,32,128",
        ],
        &ids,
        "logits --skip-layers 1,6 --ffn-dims ...",
    );
    check_against_golden("skip_early", &got, &gold, "logits --skip-layers 1,6");
}

/// `inspect --size` describes the slice: the E2B slice of an E4B config has the E2B
/// layer count and the published effective parameter count (spec §8: 1,905,495,648).
#[test]
fn inspect_describes_a_slice() {
    let dir = std::env::temp_dir().join(format!("gemma3n-inspect-slice-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"gemma3n","text_config":{"model_type":"gemma3n_text"}}"#,
    )
    .unwrap();
    let r = gemma3n(
        &["inspect", "--model", dir.to_str().unwrap(), "--size", "E2B"],
        None,
    );
    assert!(r.ok(), "{}", r.stderr);
    assert!(r.stdout.contains("30 layers"), "{}", r.stdout);
    assert!(r.stdout.contains("1905495648"), "{}", r.stdout);
    assert!(r.stdout.contains("4.84 GB"), "{}", r.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}
