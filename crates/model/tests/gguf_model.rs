//! The text decoder loaded from a GGUF file written by llama.cpp's own converter
//! (tests/fixtures/gguf/tiny_text_f16.gguf: tests/fixtures/text/tiny_text_f32 converted
//! with `--outtype f16`) gives HF's fp32 logits within the error of rounding the weight
//! matrices to f16 (norms and AltUp coefficients stay f32 in the file).

mod common;

use std::path::PathBuf;

use common::rel_err;
use gemma3n_model::safetensors::SafeTensors;
use gemma3n_model::{Checkpoint, Logits, TextModel};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// f16 keeps 11 significant bits (relative rounding 2^-11 ≈ 4.9e-4 per weight); through
/// 12 layers of this random model the logits move by ~8e-3 of their range.
const F16_BOUND: f32 = 2e-2;

/// The safetensors fixture with every weight matrix rounded to f16, as the converter's
/// `--outtype f16` stores it (1-D tensors and the AltUp coefficients stay f32).
fn f16_rounded_reference() -> TextModel {
    use gemma3n_compute::DType;
    let ck = Checkpoint::open(&root().join("text/tiny_text_f32")).unwrap();
    let mut m = TextModel::load(&ck, &mut |_, _| {}).unwrap();
    let w = &mut m.weights;
    let r = |x: &mut gemma3n_compute::Matrix| *x = x.quantize(DType::F16);
    r(&mut w.embed_tokens);
    r(&mut w.embed_tokens_per_layer);
    r(&mut w.per_layer_model_projection);
    w.altup_projections.iter_mut().for_each(r);
    w.altup_unembed_projections.iter_mut().for_each(r);
    for l in &mut w.layers {
        for x in [
            &mut l.q_proj,
            &mut l.o_proj,
            &mut l.gate_proj,
            &mut l.up_proj,
            &mut l.down_proj,
            &mut l.laurel_left,
            &mut l.laurel_right,
            &mut l.altup.modality_router,
            &mut l.per_layer_input_gate,
            &mut l.per_layer_projection,
        ] {
            r(x);
        }
        for x in [l.k_proj.as_mut(), l.v_proj.as_mut(), l.down_proj_t.as_mut()]
            .into_iter()
            .flatten()
        {
            r(x);
        }
    }
    m
}

#[test]
fn converter_gguf_matches_hf_and_the_safetensors_model() {
    let (cfg, model) =
        TextModel::load_gguf(&root().join("gguf/tiny_text_f16.gguf"), &mut |_, _| {}).unwrap();
    let st = Checkpoint::open(&root().join("text/tiny_text_f32")).unwrap();
    assert_eq!(cfg.text, st.config.text, "GGUF metadata -> config");
    let g = SafeTensors::open(&root().join("text/tiny_text_f32/golden.safetensors")).unwrap();
    let ids: Vec<u32> = g
        .read_i64("prefill_ids")
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect();
    let mut cache = model.new_cache();
    let got = model.forward(&ids, &mut cache, Logits::All).unwrap();
    let want = g.read_f32("prefill_logits").unwrap();
    let e = rel_err(&got, &want);
    eprintln!("GGUF (f16 weights) vs HF fp32: rel err {e:.2e}");
    assert!(e <= F16_BOUND, "GGUF logits rel err {e}");
    // Exactly the HF weights rounded to f16: the GGUF path adds nothing of its own.
    let reference = f16_rounded_reference();
    let mut c2 = reference.new_cache();
    let same = reference.forward(&ids, &mut c2, Logits::All).unwrap();
    let e = rel_err(&got, &same);
    assert!(e <= 1e-6, "GGUF vs f16-rounded safetensors: rel err {e}");
    // Cached decode too.
    let all: Vec<u32> = g
        .read_i64("decode_ids")
        .unwrap()
        .iter()
        .map(|&v| v as u32)
        .collect();
    let p = g.read_i64("decode_prefix_len").unwrap()[0] as usize;
    let want = g.read_f32("decode_logits").unwrap();
    let v = cfg.text.vocab_size;
    let mut cache = model.new_cache();
    model.forward(&all[..p], &mut cache, Logits::Last).unwrap();
    for (s, &id) in all[p..].iter().enumerate() {
        let got = model.forward(&[id], &mut cache, Logits::Last).unwrap();
        assert!(
            rel_err(&got, &want[s * v..(s + 1) * v]) <= F16_BOUND,
            "decode step {s}"
        );
    }
}

#[test]
fn gguf_errors_name_the_file() {
    let e = TextModel::load_gguf(&root().join("gguf/missing.gguf"), &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    // A GGUF that is not a Gemma 3n model.
    let dir = std::fs::read_dir(root().join("gguf")).unwrap();
    for f in dir.map(|e| e.unwrap().path()) {
        if f.extension().is_some_and(|x| x == "gguf") && !f.ends_with("tiny_text_f16.gguf") {
            let e = TextModel::load_gguf(&f, &mut |_, _| {})
                .err()
                .map(|e| e.to_string());
            assert!(e.is_some(), "{} loaded as Gemma 3n", f.display());
        }
    }
}
