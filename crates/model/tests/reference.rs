//! The text decoder against HF transformers (fp32) on the committed tiny random models
//! of tests/fixtures/text (made by tools/reference/make_text_fixtures.py).

mod common;

use std::path::PathBuf;

use common::{argmax, ids, rel_err};
use gemma3n_model::safetensors::SafeTensors;
use gemma3n_model::{Checkpoint, Logits, TextModel};

fn fixtures() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/text");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures/text exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("golden.safetensors").exists())
        .collect();
    v.sort();
    assert!(
        v.len() >= 3,
        "expected at least 3 text fixtures in {}",
        root.display()
    );
    v
}

fn load(dir: &std::path::Path) -> (TextModel, SafeTensors) {
    let ckpt = Checkpoint::open(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let model = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let golden = SafeTensors::open(&dir.join("golden.safetensors")).unwrap();
    (model, golden)
}

#[test]
fn prefill_logits_and_streams_match_hf() {
    for dir in fixtures() {
        let (model, g) = load(&dir);
        let cfg = &model.cfg;
        let (d, a) = (cfg.hidden_size, cfg.altup_num_inputs);
        let prompt = ids(&g, "prefill_ids");
        let t = prompt.len();
        let hidden = g.read_f32("prefill_hidden").unwrap();
        let per_layer = a * t * d;
        assert_eq!(hidden.len(), (cfg.num_hidden_layers + 1) * per_layer);
        let mut worst = Vec::new();
        let mut hook = |l: usize, s: &[Vec<f32>]| {
            let ours: Vec<f32> = s.iter().flatten().copied().collect();
            let e = rel_err(&ours, &hidden[l * per_layer..(l + 1) * per_layer]);
            worst.push((l, e));
        };
        let mut cache = model.new_cache();
        let logits = model
            .forward_with_hook(&prompt, &mut cache, Logits::All, Some(&mut hook))
            .unwrap();
        for (l, e) in &worst {
            assert!(
                *e <= 1e-4,
                "{}: streams after step {l}: rel err {e}",
                dir.display()
            );
        }
        let want = g.read_f32("prefill_logits").unwrap();
        let e = rel_err(&logits, &want);
        eprintln!("{}: prefill logits rel err {e:.2e}", dir.display());
        assert!(e <= 1e-4, "{}: prefill logits rel err {e}", dir.display());

        // Fast prefill (only the last position) gives that position's logits.
        let mut cache = model.new_cache();
        let last = model.forward(&prompt, &mut cache, Logits::Last).unwrap();
        let v = cfg.vocab_size;
        let e = rel_err(&last, &want[(t - 1) * v..]);
        assert!(
            e <= 1e-4,
            "{}: last-position logits rel err {e}",
            dir.display()
        );
    }
}

#[test]
fn cached_decode_matches_hf() {
    for dir in fixtures() {
        let (model, g) = load(&dir);
        let all = ids(&g, "decode_ids");
        let p = g.read_i64("decode_prefix_len").unwrap()[0] as usize;
        let want = g.read_f32("decode_logits").unwrap();
        let v = model.cfg.vocab_size;
        assert_eq!(want.len(), (all.len() - p) * v);
        let mut cache = model.new_cache();
        model.forward(&all[..p], &mut cache, Logits::Last).unwrap();
        for (step, &id) in all[p..].iter().enumerate() {
            let got = model.forward(&[id], &mut cache, Logits::Last).unwrap();
            let e = rel_err(&got, &want[step * v..(step + 1) * v]);
            assert!(
                e <= 1e-4,
                "{}: decode step {step}: rel err {e}",
                dir.display()
            );
        }
        assert_eq!(cache.pos(), all.len());
    }
}

#[test]
fn greedy_tokens_match_hf() {
    for dir in fixtures() {
        let (model, g) = load(&dir);
        let prompt = ids(&g, "greedy_prompt");
        let want = ids(&g, "greedy_tokens");
        let mut cache = model.new_cache();
        let mut logits = model.forward(&prompt, &mut cache, Logits::Last).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let next = argmax(&logits) as u32;
            got.push(next);
            logits = model.forward(&[next], &mut cache, Logits::Last).unwrap();
        }
        assert_eq!(got, want, "{}: greedy tokens", dir.display());
    }
}

/// Truncating the cache and re-feeding gives the same logits as never having gone further.
#[test]
fn cache_truncation_matches_a_fresh_run() {
    let dir = fixtures().into_iter().next().unwrap();
    let (model, g) = load(&dir);
    let all = ids(&g, "decode_ids");
    let w = model.cfg.sliding_window;
    let v = model.cfg.vocab_size;
    let mut fresh = model.new_cache();
    let want = model
        .forward(&all[..w + 3], &mut fresh, Logits::All)
        .unwrap();
    // Run everything, then go back to a position whose sliding keys are still cached.
    let mut cache = model.new_cache();
    model
        .forward(&all[..w + 1], &mut cache, Logits::Last)
        .unwrap();
    model
        .forward(&all[w + 1..w + 3], &mut cache, Logits::Last)
        .unwrap();
    assert!(cache.truncate(w + 2));
    let got = model
        .forward(&all[w + 2..w + 3], &mut cache, Logits::Last)
        .unwrap();
    assert!(rel_err(&got, &want[(w + 2) * v..(w + 3) * v]) <= 1e-4);
    // Too far back for the sliding layers (after 3W positions they have dropped their
    // oldest keys): refused, cache unchanged.
    let mut cache = model.new_cache();
    let n = (3 * w + 2).min(all.len());
    assert!(n > 3 * w - 1, "fixture too short for the test");
    model.forward(&all[..n], &mut cache, Logits::Last).unwrap();
    assert!(!cache.truncate(1));
    assert_eq!(cache.pos(), n);
}
