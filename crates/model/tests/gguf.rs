//! GGUF reader/writer and the Gemma 3n mapping, against files written by the `gguf` Python
//! package and by llama.cpp's own converter (tools/reference/make_gguf_fixtures.py).

use std::path::{Path, PathBuf};

use gemma3n_compute::dtype::{f16_to_f32, f32_to_f16};
use gemma3n_compute::DType;
use gemma3n_model::checkpoint::WeightFiles;
use gemma3n_model::gguf::gemma3n::{self, Part};
use gemma3n_model::gguf::{self, bytes_to_f32, Gguf, TensorSpec, Value, ValueType, WriteTensor};
use gemma3n_model::ModelConfig;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/gguf").join(name)
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gemma3n-gguf-{}-{name}", std::process::id()))
}

/// Compares a parsed value with the fixture's JSON expectation.
fn check_value(key: &str, v: &Value, want: &serde_json::Value) {
    match (v, want) {
        (Value::Array(_, items), serde_json::Value::Array(w)) => {
            assert_eq!(items.len(), w.len(), "{key}: length");
            for (i, (a, b)) in items.iter().zip(w).enumerate() {
                check_value(&format!("{key}[{i}]"), a, b);
            }
        }
        (Value::String(s), serde_json::Value::String(w)) => assert_eq!(s, w, "{key}"),
        (Value::Bool(b), serde_json::Value::Bool(w)) => assert_eq!(b, w, "{key}"),
        (Value::F32(x), w) => assert_eq!(*x, w.as_f64().unwrap() as f32, "{key}"),
        // serde_json's default float parsing may be 1 ulp off the shortest repr Python wrote.
        (Value::F64(x), w) => {
            let w = w.as_f64().unwrap();
            assert!(
                *x == w || (x - w).abs() <= 4.0 * f64::EPSILON * w.abs(),
                "{key}: {x} vs {w}"
            );
        }
        (v, w) => {
            let got = v
                .as_int()
                .unwrap_or_else(|| panic!("{key}: {v} is not an integer"));
            let want = w
                .as_i64()
                .map(|x| x as i128)
                .or(w.as_u64().map(|x| x as i128))
                .unwrap_or_else(|| panic!("{key}: expected {w}"));
            assert_eq!(got, want, "{key}");
        }
    }
}

#[test]
fn reads_every_value_type_and_tensor_written_by_gguf_py() {
    let g = Gguf::open(&fixture("all_types.gguf")).unwrap();
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("all_types.json")).unwrap()).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.architecture().unwrap(), "testarch");
    for (key, w) in want["metadata"].as_object().unwrap() {
        let v = g.get(key).unwrap_or_else(|| panic!("missing {key}"));
        assert_eq!(
            v.value_type().id() as u64,
            w["type"].as_u64().unwrap(),
            "{key}: type"
        );
        check_value(key, v, &w["value"]);
    }
    // The nested array keeps its structure and element types.
    match g.get("t.arr_nested").unwrap() {
        Value::Array(ValueType::Array, items) => {
            assert_eq!(
                items[0],
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)])
            );
        }
        v => panic!("t.arr_nested is {v:?}"),
    }
    let tensors = want["tensors"].as_object().unwrap();
    assert_eq!(g.tensors().len(), tensors.len());
    for (name, w) in tensors {
        let t = g.tensor(name).unwrap();
        assert_eq!(t.ggml_type as u64, w["type"].as_u64().unwrap(), "{name}");
        let dims: Vec<u64> = w["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(
            t.shape(),
            dims.iter().rev().map(|&d| d as usize).collect::<Vec<_>>()
        );
        assert_eq!(t.start % 64, 0, "{name} is aligned");
        if let Some(hex) = w.get("bytes_hex") {
            let bytes = g.tensor_bytes(name).unwrap();
            let got: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&got, hex.as_str().unwrap(), "{name}");
            let e = t.dtype().unwrap_err().to_string();
            assert!(
                e.contains(name) && e.contains("unsupported GGUF tensor type 8 (Q8_0)"),
                "{e}"
            );
        } else {
            let vals: Vec<f32> = w["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(g.read_f32(name).unwrap(), vals, "{name}");
            let m = g.matrix(name, 1, vals.len()).unwrap();
            assert_eq!(m.to_f32_vec(), vals, "{name} as a matrix");
        }
    }
    assert_eq!(gguf::ggml_type_to_dtype(30).unwrap(), DType::BF16);
    assert!(gguf::ggml_type_to_dtype(12)
        .unwrap_err()
        .to_string()
        .contains("Q4_K"));
    assert_eq!((gguf::Q4_K.block_size, gguf::Q4_K.type_size), (256, 144));
    assert_eq!((gguf::Q6_K.block_size, gguf::Q6_K.type_size), (256, 210));
    assert_eq!((gguf::Q5_K.block_size, gguf::Q5_K.type_size), (256, 176));
    assert_eq!((gguf::Q8_0.block_size, gguf::Q8_0.type_size), (32, 34));
    assert_eq!((gguf::Q4_0.block_size, gguf::Q4_0.type_size), (32, 18));
}

#[test]
fn writer_round_trips_everything() {
    let src = Gguf::open(&fixture("all_types.gguf")).unwrap();
    let mut meta: Vec<(String, Value)> = src.metadata().to_vec();
    meta.push((
        "t.arr_empty".into(),
        Value::Array(ValueType::String, vec![]),
    ));
    let tensors: Vec<WriteTensor> = src
        .tensors()
        .iter()
        .map(|t| WriteTensor {
            spec: TensorSpec::new(&t.name, t.dims.clone(), t.ggml_type),
            data: src.tensor_bytes(&t.name).unwrap().into(),
        })
        .collect();
    let out = tmp("roundtrip.gguf");
    gguf::write(&out, &meta, &tensors).unwrap();
    let g = Gguf::open(&out).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.metadata(), &meta[..]);
    for t in src.tensors() {
        let u = g.tensor(&t.name).unwrap();
        assert_eq!((&u.dims, u.ggml_type), (&t.dims, t.ggml_type));
        assert_eq!(
            g.tensor_bytes(&t.name).unwrap(),
            src.tensor_bytes(&t.name).unwrap()
        );
    }
    python_check(&out, &src);
    std::fs::remove_file(&out).unwrap();

    // A producer writing the wrong number of bytes is an error, and no file is left.
    let specs = vec![TensorSpec::from_shape("x", &[2, 3], gguf::GGML_F32)];
    let e = gguf::write_with(&out, &[], &specs, &mut |_, w| w.write_all(&[0u8; 20]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`x`") && e.contains("wrote 20 bytes") && e.contains("24"),
        "{e}"
    );
    assert!(!out.exists());
    let specs = vec![TensorSpec::from_shape("q", &[2, 33], gguf::Q8_0.id)];
    let e = gguf::write_with(&out, &[], &specs, &mut |_, _| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not a multiple of the Q8_0 block size 32"),
        "{e}"
    );
}

/// Reads our writer's output with the `gguf` Python package, where the reference venv exists.
fn python_check(path: &Path, src: &Gguf) {
    let py = root().join("tools/reference/.venv/bin/python");
    if !py.exists() {
        eprintln!(
            "note: {} not found; skipping the gguf-py read-back",
            py.display()
        );
        return;
    }
    let out = std::process::Command::new(py)
        .arg(root().join("tools/reference/make_gguf_fixtures.py"))
        .arg("--check")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, val) in src.metadata() {
        let w = &v["metadata"][k];
        assert_eq!(
            w["types"][0].as_u64().unwrap(),
            val.value_type().id() as u64,
            "{k}"
        );
        if !matches!(val, Value::Array(ValueType::Array, _)) {
            check_value(k, val, &w["value"]);
        }
    }
    assert_eq!(v["metadata"]["t.arr_empty"]["value"], serde_json::json!([]));
    for t in src.tensors() {
        let w = &v["tensors"][&t.name];
        assert_eq!(w["type"].as_u64().unwrap(), t.ggml_type as u64);
        let hex: String = src
            .tensor_bytes(&t.name)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(w["bytes_hex"].as_str().unwrap(), hex, "{}", t.name);
    }
}

#[test]
fn truncated_and_corrupt_files_are_errors() {
    let good = std::fs::read(fixture("all_types.gguf")).unwrap();
    let p = Path::new("broken.gguf");
    let err = |b: &[u8]| match Gguf::from_bytes(p, b) {
        Ok(_) => panic!("a broken file parsed"),
        Err(e) => e.to_string(),
    };
    // Every truncation is an error (never a panic), naming the file.
    // (gguf-py pads after the last tensor too: cutting that padding is harmless.)
    let src = Gguf::open(&fixture("all_types.gguf")).unwrap();
    let total = src.tensors().iter().map(|t| t.start + t.len).max().unwrap();
    for n in (0..total).step_by(7).chain([total - 1]) {
        let e = err(&good[..n]);
        assert!(e.starts_with("broken.gguf: "), "{e}");
    }
    assert!(err(&good[..10]).contains("shorter than the 24-byte header"));
    assert!(err(&good[..total - 1]).contains("truncated: tensor `"));
    let mut b = good.clone();
    b[0] = b'X';
    assert!(err(&b).contains("not a GGUF file"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&7u32.to_le_bytes());
    assert!(err(&b).contains("unsupported GGUF version 7"));
    let mut b = good.clone();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err(&b).contains("big-endian"));
    // Absurd counts are refused before anything is allocated.
    let mut b = good.clone();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("claims 18446744073709551615 tensors"));
    let mut b = good.clone();
    b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(&b).contains("metadata entries"));
    // A huge string length.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(err(&b).contains("truncated"), "{}", err(&b));
    // An unknown value type on the first key (`general.architecture`, 20 bytes).
    let mut b = good.clone();
    b[52..56].copy_from_slice(&99u32.to_le_bytes());
    assert!(err(&b).contains("unknown value type 99"), "{}", err(&b));

    // Tensor-info corruption.
    let t = src.tensor("t_f32").unwrap();
    let find = |b: &[u8]| {
        let pat = b"t_f32";
        b.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
    };
    let at = find(&good); // n_dims u32, dims, type u32, offset u64
    let type_at = at + 4 + 8 * t.dims.len();
    let mut b = good.clone();
    b[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(err(&b).contains("tensor `t_f32`: unknown ggml type 77"));
    let mut b = good.clone();
    b[type_at + 4..type_at + 12].copy_from_slice(&(t.offset + 1).to_le_bytes());
    assert!(err(&b).contains("not a multiple of the alignment 64"));
    let mut b = good.clone();
    b[type_at + 4..type_at + 12].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&b).contains("truncated: tensor `t_f32`"));
    let mut b = good.clone();
    b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(err(&b).contains("9 dimensions"));
    let mut b = good.clone();
    b[at + 4..at + 12].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("t_f32"), "{}", err(&b));
    // Two tensors at the same offset overlap.
    let f16_at = find_name(&good, b"t_f16") + 4 + 8 + 4;
    let mut b = good.clone();
    b[f16_at..f16_at + 8].copy_from_slice(&t.offset.to_le_bytes());
    assert!(err(&b).contains("overlaps"), "{}", err(&b));
    // A missing file.
    let e = Gguf::open(Path::new("/nonexistent/x.gguf"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("/nonexistent/x.gguf"), "{e}");
}

fn find_name(b: &[u8], pat: &[u8]) -> usize {
    b.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
}

fn tiny_dir() -> PathBuf {
    root().join("tests/fixtures/text/tiny_text_f32")
}

#[test]
fn converted_tiny_model_maps_to_its_config() {
    let g = Gguf::open(&fixture("tiny_text_f16.gguf")).unwrap();
    let want = ModelConfig::from_file(&tiny_dir().join("config.json")).unwrap();
    let got = gemma3n::model_config(&g).unwrap();
    assert_eq!(got, want);
    // The converter's sparsity scales are Φ⁻¹ of the pattern; ours agree.
    let scales = g
        .get_array("gemma3n.activation_sparsity_scale")
        .unwrap()
        .unwrap();
    for (s, p) in scales.iter().zip(&want.text.activation_sparsity_pattern) {
        let s = s.as_f64().unwrap();
        let ours = gemma3n::normal_icdf(*p as f64);
        assert!(s == ours || (s - ours).abs() < 1e-6, "{s} vs {ours}");
    }
}

#[test]
fn converted_tiny_model_tensors_equal_the_hf_ones() {
    let g = Gguf::open(&fixture("tiny_text_f16.gguf")).unwrap();
    let cfg = gemma3n::model_config(&g).unwrap();
    let hf = WeightFiles::open_dir(&tiny_dir()).unwrap();
    let maps = gemma3n::tensor_map(&g, &cfg.text).unwrap();
    assert!(
        gemma3n::unmapped(&g, &maps).is_empty(),
        "{:?}",
        gemma3n::unmapped(&g, &maps)
    );
    let hf_names: Vec<String> = hf.names().cloned().collect();
    assert_eq!(maps.len(), hf_names.len(), "every HF tensor is mapped once");
    for m in &maps {
        let full = format!("model.{}", m.hf_name);
        let want = hf.f32_tensor(&full, &m.hf_shape).unwrap();
        let t = g.tensor(&m.gguf_name).unwrap();
        let dt = t.dtype().unwrap();
        let got = bytes_to_f32(gemma3n::hf_bytes(&g, m).unwrap(), dt);
        // The converter stores matrices in f16 (our HF source is f32) and 1-D tensors,
        // norms and the AltUp coefficients in f32.
        let expect: Vec<f32> = match dt {
            DType::F16 => want.iter().map(|&x| f16_to_f32(f32_to_f16(x))).collect(),
            _ => want.clone(),
        };
        assert_eq!(got, expect, "{} <- {}", m.hf_name, m.gguf_name);
        if m.hf_shape.len() == 1 || m.hf_name.contains("coefs") {
            assert_eq!(dt, DType::F32, "{}", m.gguf_name);
        }
        if let Part::RowPrefix { rows } = m.part {
            // The rows past vocab_size_per_layer_input are the converter's zero padding.
            let all = g.tensor_bytes(&m.gguf_name).unwrap();
            let r = m.byte_range(all.len());
            assert_eq!(r.end, all.len() / t.dims[1] as usize * rows);
            assert!(all[r.end..].iter().all(|&b| b == 0));
            assert!(t.dims[1] as usize > rows);
        }
    }
}

#[test]
fn our_writer_reproduces_the_converter_layout() {
    // Write the tiny HF model with our writer, the name table and the converter metadata,
    // then read it back: same config, same tensors as the converter's file.
    let conv = Gguf::open(&fixture("tiny_text_f16.gguf")).unwrap();
    let cfg = ModelConfig::from_file(&tiny_dir().join("config.json")).unwrap();
    let hf = WeightFiles::open_dir(&tiny_dir()).unwrap();
    let layout = gemma3n::gguf_layout(&cfg.text, &|n| hf.contains(&format!("model.{n}")));
    let specs: Vec<TensorSpec> = layout
        .iter()
        .map(|t| {
            TensorSpec::new(
                &t.gguf_name,
                t.dims.clone(),
                conv.tensor(&t.gguf_name).unwrap().ggml_type,
            )
        })
        .collect();
    let mut meta = gemma3n::gguf_metadata(&cfg);
    meta.push(("general.alignment".into(), Value::U32(32)));
    let out = tmp("tiny_ours.gguf");
    gguf::write_with(&out, &meta, &specs, &mut |i, w| {
        let t = &layout[i];
        let f16 = specs[i].ggml_type == gguf::GGML_F16;
        let mut n = 0u64;
        for p in &t.parts {
            for x in hf
                .f32_tensor(&format!("model.{}", p.hf_name), &p.hf_shape)
                .unwrap()
            {
                if f16 {
                    w.write_all(&f32_to_f16(x).to_le_bytes())?;
                } else {
                    w.write_all(&x.to_le_bytes())?;
                }
                n += 1;
            }
        }
        let total: u64 = t.dims.iter().product();
        let el = if f16 { 2 } else { 4 };
        w.write_all(&vec![0u8; ((total - n) * el) as usize])
    })
    .unwrap();
    let g = Gguf::open(&out).unwrap();
    assert_eq!(gemma3n::model_config(&g).unwrap(), cfg);
    assert_eq!(g.tensors().len(), conv.tensors().len());
    for t in conv.tensors() {
        assert_eq!(g.tensor(&t.name).unwrap().dims, t.dims, "{}", t.name);
        assert_eq!(
            g.tensor_bytes(&t.name).unwrap(),
            conv.tensor_bytes(&t.name).unwrap(),
            "{}",
            t.name
        );
    }
    // Every gemma3n.* key the converter wrote is written with the same type and value
    // (the sparsity scales up to the f32 rounding of Φ⁻¹).
    for (k, v) in conv.metadata() {
        if !k.starts_with("gemma3n.") {
            continue;
        }
        let ours = g.get(k).unwrap_or_else(|| panic!("we do not write {k}"));
        assert_eq!(ours.value_type(), v.value_type(), "{k}");
        if k == "gemma3n.activation_sparsity_scale" {
            for (a, b) in ours.as_array().unwrap().iter().zip(v.as_array().unwrap()) {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                assert!(a == b || (a - b).abs() < 1e-6, "{k}: {a} vs {b}");
            }
        } else {
            assert_eq!(ours, v, "{k}");
        }
    }
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn mapping_errors_name_the_tensor_and_key() {
    let conv = Gguf::open(&fixture("tiny_text_f16.gguf")).unwrap();
    let cfg = gemma3n::model_config(&conv).unwrap();
    // A config that disagrees with the file's shapes.
    let mut bad = cfg.text.clone();
    bad.intermediate_size[3] += 1;
    let e = gemma3n::tensor_map(&conv, &bad).unwrap_err().to_string();
    assert!(
        e.contains("blk.3.ffn_") && e.contains("config implies"),
        "{e}"
    );
    // Metadata: wrong architecture, a per-layer array of the wrong length.
    type Meta = Vec<(String, Value)>;
    let rewrite = |edit: &dyn Fn(&mut Meta)| {
        let mut meta = conv.metadata().to_vec();
        edit(&mut meta);
        let tensors: Vec<WriteTensor> = conv
            .tensors()
            .iter()
            .map(|t| WriteTensor {
                spec: TensorSpec::new(&t.name, t.dims.clone(), t.ggml_type),
                data: conv.tensor_bytes(&t.name).unwrap().into(),
            })
            .collect();
        let out = tmp("edited.gguf");
        gguf::write(&out, &meta, &tensors).unwrap();
        let g = Gguf::open(&out).unwrap();
        let r = gemma3n::model_config(&g)
            .map(|_| ())
            .map_err(|e| e.to_string());
        std::fs::remove_file(&out).unwrap();
        r
    };
    let set = |meta: &mut Vec<(String, Value)>, k: &str, v: Value| {
        meta.iter_mut().find(|(kk, _)| kk == k).unwrap().1 = v;
    };
    let e =
        rewrite(&|m| set(m, "general.architecture", Value::String("llama".into()))).unwrap_err();
    assert!(e.contains("`general.architecture` is `llama`"), "{e}");
    let e = rewrite(&|m| {
        set(
            m,
            "gemma3n.attention.sliding_window_pattern",
            Value::Array(ValueType::Bool, vec![Value::Bool(true)]),
        )
    })
    .unwrap_err();
    assert!(
        e.contains("gemma3n.attention.sliding_window_pattern") && e.contains("has 1 entries"),
        "{e}"
    );
    let e = rewrite(&|m| m.retain(|(k, _)| k != "gemma3n.attention.sliding_window")).unwrap_err();
    assert!(
        e.contains("gemma3n.attention.sliding_window") && e.contains("missing"),
        "{e}"
    );
    let e = rewrite(&|m| set(m, "gemma3n.block_count", Value::String("12".into()))).unwrap_err();
    assert!(
        e.contains("gemma3n.block_count") && e.contains("integer"),
        "{e}"
    );
    // Our explicit vocab_size_per_layer_input key wins over the zero-row detection.
    let r = rewrite(&|m| {
        m.push((
            gemma3n::KEY_VOCAB_SIZE_PER_LAYER_INPUT.into(),
            Value::U32(256),
        ))
    });
    assert_eq!(r, Ok(()));
}

#[test]
fn normal_cdf_inverts_icdf() {
    for p in [0.0f64, 0.01, 0.5, 0.9, 0.95, 0.999] {
        let s = gemma3n::normal_icdf(p);
        assert!((gemma3n::normal_cdf(s) - p).abs() < 1e-14, "{p}");
    }
    assert!((gemma3n::normal_icdf(0.95) - 1.6448536269514722).abs() < 1e-12);
    assert_eq!(gemma3n::normal_cdf(f64::NEG_INFINITY), 0.0);
    assert!((gemma3n::normal_cdf(-3.5) - 2.3262907903552504e-4).abs() < 1e-16);
}

#[test]
fn quantize_writes_the_converters_vocabulary_and_tensors() {
    // The tiny checkpoint with the SentencePiece model, tokenizer_config.json and
    // added_tokens.json the converter was given: our `quantize --type f16` must write the
    // same tokenizer.* metadata (every key, same types and values) and the same tensors.
    let dir = tmp("quantize-vocab");
    std::fs::create_dir_all(&dir).unwrap();
    for src in [tiny_dir(), fixture("tiny_tokenizer")] {
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "golden.safetensors" {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
    }
    let ckpt = gemma3n_model::Checkpoint::open(&dir).unwrap();
    let out = dir.join("ours.gguf");
    let policy = gemma3n_model::quantize::QuantPolicy::preset("f16").unwrap();
    assert!(gemma3n_model::quantize::quantize(&ckpt, policy, &out, None, &mut |_, _| {}).unwrap());
    let ours = Gguf::open(&out).unwrap();
    let conv = Gguf::open(&fixture("tiny_text_f16.gguf")).unwrap();
    let keys = |g: &Gguf| {
        let mut k: Vec<String> = g
            .metadata()
            .iter()
            .map(|(k, _)| k.clone())
            .filter(|k| k.starts_with("tokenizer."))
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(&ours), keys(&conv));
    for k in keys(&conv) {
        assert_eq!(ours.get(&k), conv.get(&k), "{k}");
    }
    for t in conv.tensors() {
        assert_eq!(
            ours.tensor_bytes(&t.name).unwrap(),
            conv.tensor_bytes(&t.name).unwrap(),
            "{}",
            t.name
        );
    }
    // Without tokenizer files the file has no vocabulary, and `quantize` says so.
    for f in [
        "tokenizer.model",
        "tokenizer_config.json",
        "added_tokens.json",
    ] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let ckpt = gemma3n_model::Checkpoint::open(&dir).unwrap();
    assert!(!gemma3n_model::quantize::quantize(&ckpt, policy, &out, None, &mut |_, _| {}).unwrap());
    assert!(Gguf::open(&out)
        .unwrap()
        .get("tokenizer.ggml.tokens")
        .is_none());
    // A corrupt SentencePiece model is a clear error naming the file.
    std::fs::write(dir.join("tokenizer.model"), [0x0a, 0x40, 1, 2]).unwrap();
    let ckpt = gemma3n_model::Checkpoint::open(&dir).unwrap();
    let e = gemma3n_model::quantize::quantize(&ckpt, policy, &out, None, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.model") && e.contains("truncated"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
