//! Bad checkpoints and inputs get clear errors naming the file, tensor or field; never a
//! panic. Each case copies a good fixture to a temporary directory and breaks one thing.

use std::path::{Path, PathBuf};

use gemma3n_model::{Checkpoint, Logits, TextModel};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/text")
        .join(name)
}

/// A fresh copy of a fixture in a temporary directory.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("gemma3n-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

/// Opens and loads; returns the error message.
fn load_err(dir: &Path) -> String {
    let r = Checkpoint::open(dir).and_then(|c| TextModel::load(&c, &mut |_, _| {}).map(|_| ()));
    match r {
        Ok(()) => panic!("{} loaded although it is broken", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites one header entry of a single-file safetensors checkpoint.
fn edit_header(file: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let data = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    f(h.as_object_mut().unwrap());
    let mut hb = serde_json::to_vec(&h).unwrap();
    // Keep the data section where it was: pad the header to its old length.
    assert!(hb.len() <= n, "edited header grew");
    hb.resize(n, b' ');
    let mut out = data[..8].to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(&data[8 + n..]);
    std::fs::write(file, out).unwrap();
}

#[test]
fn missing_directory_and_files() {
    let e = load_err(Path::new("/nonexistent/gemma3n-model"));
    assert!(
        e.contains("/nonexistent/gemma3n-model") && e.contains("does not exist"),
        "{e}"
    );

    let d = copy_fixture("tiny_text_f32", "nocfg");
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");

    let d = copy_fixture("tiny_text_f32", "noweights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");

    let d = copy_fixture("tiny_mm_bf16", "noshard");
    let shard = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("model-0000")
        })
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains(&*shard.file_name().unwrap().to_string_lossy()) && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let d = copy_fixture("tiny_text_f32", "trunc");
    let p = d.join("model.safetensors");
    let data = std::fs::read(&p).unwrap();
    std::fs::write(&p, &data[..data.len() - 1000]).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // Cut inside the header, and to a few bytes.
    std::fs::write(&p, &data[..100]).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("header"),
        "{e}"
    );
    std::fs::write(&p, &data[..3]).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn tensor_of_wrong_shape_or_dtype() {
    let d = copy_fixture("tiny_text_f32", "shape");
    let name = "model.layers.3.mlp.up_proj.weight";
    edit_header(&d.join("model.safetensors"), |h| {
        let e = h.get_mut(name).unwrap();
        let s = e["shape"].as_array().unwrap().clone();
        // Same byte count, transposed shape.
        e["shape"] = serde_json::json!([s[1], s[0]]);
    });
    let e = load_err(&d);
    assert!(e.contains(name) && e.contains("shape"), "{e}");

    let d = copy_fixture("tiny_text_f32", "dtype");
    let name = "model.layers.2.self_attn.q_proj.weight";
    edit_header(&d.join("model.safetensors"), |h| {
        let e = h.get_mut(name).unwrap();
        // Same byte count as F32: I32 of the same shape.
        e["dtype"] = serde_json::json!("I32");
    });
    let e = load_err(&d);
    assert!(e.contains(name) && e.contains("I32"), "{e}");

    let d = copy_fixture("tiny_text_f32", "missing-tensor");
    let name = "model.layers.5.laurel.linear_left.weight";
    edit_header(&d.join("model.safetensors"), |h| {
        let v = h.remove(name).unwrap();
        h.insert("model.something_else".into(), v);
    });
    let e = load_err(&d);
    assert!(e.contains(name) && e.contains("missing"), "{e}");
}

#[test]
fn inconsistent_config() {
    let d = copy_fixture("tiny_text_f32", "ffnlen");
    edit_config(&d, |v| {
        v["intermediate_size"].as_array_mut().unwrap().pop();
    });
    let e = load_err(&d);
    assert!(
        e.contains("intermediate_size") && e.contains("num_hidden_layers"),
        "{e}"
    );

    let d = copy_fixture("tiny_text_f32", "modeltype");
    edit_config(&d, |v| v["model_type"] = serde_json::json!("llama"));
    let e = load_err(&d);
    assert!(e.contains("model_type") && e.contains("llama"), "{e}");

    let d = copy_fixture("tiny_text_f32", "malformed");
    std::fs::write(d.join("config.json"), "{\"model_type\": \"gemma3n_text\",").unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("malformed JSON"),
        "{e}"
    );

    let d = copy_fixture("tiny_mm_bf16", "notext");
    edit_config(&d, |v| {
        v.as_object_mut().unwrap().remove("text_config");
    });
    let e = load_err(&d);
    assert!(e.contains("text_config"), "{e}");

    let d = copy_fixture("tiny_text_f32", "layertypes");
    edit_config(&d, |v| v["layer_types"][0] = serde_json::json!("global"));
    let e = load_err(&d);
    assert!(e.contains("layer_types") && e.contains("entry 0"), "{e}");

    // A width that disagrees with the stored tensor is caught by the shape check.
    let d = copy_fixture("tiny_text_f32", "width");
    edit_config(&d, |v| v["intermediate_size"][0] = serde_json::json!(100));
    let e = load_err(&d);
    assert!(
        e.contains("layers.0.mlp.gate_proj.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn prompt_past_the_context_and_bad_ids() {
    let ckpt = Checkpoint::open(&fixture("tiny_text_f16")).unwrap();
    let model = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let max = model.cfg.max_position_embeddings;
    let ids = vec![5u32; max + 1];
    let mut cache = model.new_cache();
    let e = model
        .forward(&ids, &mut cache, Logits::Last)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("context length") && e.contains(&max.to_string()),
        "{e}"
    );
    // A full-length prompt is fine, and then one more token is not.
    let mut cache = model.new_cache();
    model
        .forward(&ids[..max], &mut cache, Logits::Last)
        .unwrap();
    assert!(model.forward(&[5], &mut cache, Logits::Last).is_err());

    let mut cache = model.new_cache();
    let v = model.cfg.vocab_size as u32;
    let e = model
        .forward(&[2, v], &mut cache, Logits::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&v.to_string()) && e.contains("vocab"), "{e}");
    assert_eq!(
        cache.pos(),
        0,
        "a refused forward leaves the cache untouched"
    );
}
