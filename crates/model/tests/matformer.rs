//! MatFormer slices run in place against HF transformers on checkpoints sliced the
//! MatFormer Lab way (tests/fixtures/matformer, made by
//! tools/reference/make_matformer_fixtures.py), and `export` against those checkpoints.

mod common;

use std::path::{Path, PathBuf};

use common::{ids, rel_err};
use gemma3n_model::matformer::{self, Slice, SlicePlan};
use gemma3n_model::safetensors::SafeTensors;
use gemma3n_model::{Checkpoint, Logits, TextModel};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/matformer")
}

fn slices() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("slices"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(v.len() >= 4, "expected at least 4 slice fixtures");
    v
}

fn base() -> (Checkpoint, TextModel) {
    let ckpt = Checkpoint::open(&root().join("base")).unwrap();
    let model = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    (ckpt, model)
}

#[test]
fn slices_in_place_match_hf_on_the_sliced_checkpoints() {
    let (_, model) = base();
    let v = model.cfg.vocab_size;
    for dir in slices() {
        let slice = Slice::from_file(&dir.join("slice.json")).unwrap();
        let g = SafeTensors::open(&dir.join("golden.safetensors")).unwrap();
        let prompt = ids(&g, "prefill_ids");
        let mut cache = model.new_cache_for(&slice).unwrap();
        let got = model.forward(&prompt, &mut cache, Logits::All).unwrap();
        let e = rel_err(&got, &g.read_f32("prefill_logits").unwrap());
        eprintln!("{}: rel err {e:.2e}", dir.display());
        assert!(e <= 1e-4, "{}: prefill logits rel err {e}", dir.display());
        if g.info("decode_logits").is_some() {
            let all = ids(&g, "decode_ids");
            let p = g.read_i64("decode_prefix_len").unwrap()[0] as usize;
            let want = g.read_f32("decode_logits").unwrap();
            let mut cache = model.new_cache_for(&slice).unwrap();
            model.forward(&all[..p], &mut cache, Logits::Last).unwrap();
            for (s, &id) in all[p..].iter().enumerate() {
                let got = model.forward(&[id], &mut cache, Logits::Last).unwrap();
                let e = rel_err(&got, &want[s * v..(s + 1) * v]);
                assert!(e <= 1e-4, "{}: decode step {s}: rel err {e}", dir.display());
            }
        }
    }
}

/// Sequences of different slices interleaved in one process give what each gives alone.
/// (That running a slice allocates no weight memory is in matformer_memory.rs: it needs a
/// process of its own.)
#[test]
fn interleaved_slices_are_independent() {
    let (_, model) = base();
    let plans: Vec<Slice> = slices()
        .iter()
        .map(|d| Slice::from_file(&d.join("slice.json")).unwrap())
        .collect();
    let prompt: Vec<u32> = vec![2, 17, 99, 5, 230, 41, 8, 77];
    let steps = [12u32, 250, 3, 64, 190, 7, 31, 140, 2, 55];
    let alone: Vec<Vec<f32>> = plans
        .iter()
        .map(|s| {
            let mut c = model.new_cache_for(s).unwrap();
            let mut out = model.forward(&prompt, &mut c, Logits::Last).unwrap();
            for &t in &steps {
                out.extend(model.forward(&[t], &mut c, Logits::Last).unwrap());
            }
            out
        })
        .collect();
    let mut caches: Vec<_> = plans
        .iter()
        .map(|s| model.new_cache_for(s).unwrap())
        .collect();
    let mut outs: Vec<Vec<f32>> = caches
        .iter_mut()
        .map(|c| model.forward(&prompt, c, Logits::Last).unwrap())
        .collect();
    for &t in &steps {
        for (c, o) in caches.iter_mut().zip(outs.iter_mut()) {
            o.extend(model.forward(&[t], c, Logits::Last).unwrap());
        }
    }
    for (i, (a, b)) in alone.iter().zip(&outs).enumerate() {
        assert_eq!(
            a, b,
            "slice {i}: interleaved run differs from the run alone"
        );
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `export` writes exactly the reference slice: same tensor names, dtypes, shapes and
/// bytes, and the same sliced config fields; our loader then reproduces HF's logits.
#[test]
fn export_equals_the_reference_slice_bit_for_bit() {
    let (ckpt, _) = base();
    for dir in slices() {
        let slice = Slice::from_file(&dir.join("slice.json")).unwrap();
        let plan = SlicePlan::new(&ckpt.config.text, &slice).unwrap();
        let out = std::env::temp_dir().join(format!(
            "gemma3n-slice-{}-{}",
            dir.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        matformer::export(&ckpt, &plan, &out, &mut |_, _| {}).unwrap();

        let ours = SafeTensors::open(&out.join("model.safetensors")).unwrap();
        let refs = SafeTensors::open(&dir.join("model.safetensors")).unwrap();
        let names: Vec<&String> = ours.tensors().keys().collect();
        let ref_names: Vec<&String> = refs.tensors().keys().collect();
        assert_eq!(names, ref_names, "{}: tensor names", dir.display());
        for n in names {
            let (a, b) = (ours.info(n).unwrap(), refs.info(n).unwrap());
            assert_eq!((&a.dtype_name, &a.shape), (&b.dtype_name, &b.shape), "{n}");
            assert!(
                ours.bytes(n).unwrap() == refs.bytes(n).unwrap(),
                "{}: {n} bytes differ",
                dir.display()
            );
        }
        let (c1, c2) = (
            read_json(&out.join("config.json")),
            read_json(&dir.join("config.json")),
        );
        for f in [
            "num_hidden_layers",
            "intermediate_size",
            "layer_types",
            "num_kv_shared_layers",
            "activation_sparsity_pattern",
        ] {
            assert_eq!(c1[f], c2[f], "{}: config field {f}", dir.display());
        }
        // Other files are copied.
        assert!(out.join("generation_config.json").exists());

        let g = SafeTensors::open(&dir.join("golden.safetensors")).unwrap();
        let ck = Checkpoint::open(&out).unwrap();
        let m = TextModel::load(&ck, &mut |_, _| {}).unwrap();
        let mut cache = m.new_cache();
        let got = m
            .forward(&ids(&g, "prefill_ids"), &mut cache, Logits::All)
            .unwrap();
        let e = rel_err(&got, &g.read_f32("prefill_logits").unwrap());
        assert!(
            e <= 1e-4,
            "{}: exported slice logits rel err {e}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn slices_refused_for_this_model() {
    let (_, model) = base();
    // Layer 8 produces the sliding K/V of layers 10.. (base: 15 layers, 5 shared).
    let bad = Slice {
        name: "bad".into(),
        layers_to_skip: vec![8],
        ffn_hidden_dims: vec![64; 14],
    };
    let e = model.new_cache_for(&bad).unwrap_err().to_string();
    assert!(e.contains("layer 8 cannot be skipped"), "{e}");
    // The official E4B names do not fit a 15-layer model.
    assert!(model.new_cache_for(&Slice::named("E2B").unwrap()).is_err());
}
