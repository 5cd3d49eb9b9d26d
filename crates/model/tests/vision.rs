//! The vision tower, the vision embedder and text+image logits against timm / HF
//! transformers (fp32): the tiny variant of tests/fixtures/vision/tiny_vision and the real
//! `mobilenetv5_300m_enc` on pseudo-random weights (tools/reference/make_vision_fixtures.py).

mod common;

use common::{ids, rel_err, root};
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::safetensors::SafeTensors;
use gemma3n_model::text::EmbedFn;
use gemma3n_model::vision::arch::VisionArch;
use gemma3n_model::vision::synthetic::{pixel_values, tower_weights};
use gemma3n_model::vision::tower::{Map, VisionTower};
use gemma3n_model::vision::VisionModel;
use gemma3n_model::{Checkpoint, Logits, TextModel};

fn tiny() -> (Checkpoint, SafeTensors) {
    let dir = root().join("tests/fixtures/vision/tiny_vision");
    let ckpt = Checkpoint::open(&dir).unwrap();
    let golden = SafeTensors::open(&dir.join("golden.safetensors")).unwrap();
    (ckpt, golden)
}

/// `[c, h, w]` (the reference's layout) to channels-last.
fn chw_to_hwc(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for ch in 0..c {
        for p in 0..hw {
            out[p * c + ch] = x[ch * hw + p];
        }
    }
    out
}

#[test]
fn tiny_tower_matches_timm_block_by_block() {
    let (ckpt, g) = tiny();
    let vm = VisionModel::load(&ckpt).unwrap();
    let px = g.read_f32("pixel_values").unwrap();
    let size = 128;
    let one = 3 * size * size;
    let mut checked = 0;
    let mut hook = |name: &str, m: &Map| {
        let want = g
            .read_f32(name)
            .unwrap_or_else(|e| panic!("golden {name}: {e}"));
        let want = chw_to_hwc(&want, m.c, m.h * m.w);
        let e = rel_err(&m.data, &want);
        assert!(e <= 1e-4, "{name}: max relative error {e:e}");
        checked += 1;
    };
    let out0 = vm
        .tower
        .forward_with_hook(&px[..one], size, Some(&mut hook))
        .unwrap();
    assert_eq!(checked, 1 + vm.cfg.arch.num_blocks());
    let tower = g.read_f32("tower_output").unwrap();
    let c = vm.tower.out_channels();
    let n = vm.tower.tokens();
    let out1 = vm.tower.forward(&px[one..], size).unwrap();
    for (i, out) in [out0, out1].iter().enumerate() {
        let want = chw_to_hwc(&tower[i * c * n..(i + 1) * c * n], c, n);
        let e = rel_err(out, &want);
        assert!(
            e <= 1e-4,
            "image {i}: tower output max relative error {e:e}"
        );
    }
}

#[test]
fn tiny_image_features_and_logits_match_hf() {
    let (ckpt, g) = tiny();
    let vm = VisionModel::load(&ckpt).unwrap();
    let text = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let px = g.read_f32("pixel_values").unwrap();
    let size = 128;
    let one = 3 * size * size;
    let feats = g.read_f32("image_features").unwrap();
    let images: Vec<Vec<f32>> = (0..2)
        .map(|i| vm.encode(&px[i * one..(i + 1) * one], size).unwrap())
        .collect();
    let per = feats.len() / 2;
    for (i, img) in images.iter().enumerate() {
        let e = rel_err(img, &feats[i * per..(i + 1) * per]);
        assert!(e <= 1e-4, "image {i}: soft tokens max relative error {e:e}");
    }
    let prompt = ids(&g, "input_ids");
    let d = text.cfg.hidden_size;
    let mm = MediaPrompt::new(&prompt, 0, d, Some((&vm, images)), None).unwrap();
    let f = |pos: usize, id: u32, row: &mut [f32]| mm.embed(pos, id, row);
    let embed: EmbedFn = &f;
    let mut cache = text.new_cache();
    let logits = text
        .forward_embedded(&prompt, &mut cache, Logits::All, Some(embed))
        .unwrap();
    let want = g.read_f32("logits").unwrap();
    let e = rel_err(&logits, &want);
    assert!(e <= 1e-4, "logits max relative error {e:e}");

    // Without the images' content the logits after the first image differ: the soft
    // tokens matter (a check that the merge is not a no-op).
    let blank: Vec<Vec<f32>> = (0..2).map(|_| vec![0.5; per]).collect();
    let mm2 = MediaPrompt::new(&prompt, 0, d, Some((&vm, blank)), None).unwrap();
    let f2 = |pos: usize, id: u32, row: &mut [f32]| mm2.embed(pos, id, row);
    let mut cache = text.new_cache();
    let other = text
        .forward_embedded(&prompt, &mut cache, Logits::All, Some(&f2))
        .unwrap();
    assert!(rel_err(&other, &want) > 1e-2);

    // Placeholder count and image count must agree.
    let err = MediaPrompt::new(&prompt, 0, d, Some((&vm, vec![vec![0.0; per]])), None)
        .err()
        .expect("one image for two images' placeholders");
    assert!(err.to_string().contains("placeholder"), "{err}");
}

#[test]
fn real_architecture_matches_timm_on_pseudo_random_weights() {
    let g = SafeTensors::open(&root().join("tests/fixtures/vision/mnv5_300m_golden.safetensors"))
        .unwrap();
    let arch = VisionArch::mobilenetv5_300m_enc();
    let src = tower_weights("");
    let tower = VisionTower::load(&src, "", &arch).unwrap();
    let out = tower.forward(&pixel_values(768), 768).unwrap();
    // The golden is every `stride`-th value of the flattened [2048, 16, 16] output.
    let stride = g.read_i64("stride").unwrap()[0] as usize;
    let want = g.read_f32("output_strided").unwrap();
    let (c, n) = (2048, 256);
    let got: Vec<f32> = (0..c * n)
        .step_by(stride)
        .map(|i| out[(i % n) * c + i / n])
        .collect();
    let e = rel_err(&got, &want);
    assert!(e <= 1e-4, "tower output max relative error {e:e}");
}

/// Where the real tower spends its time, per stage (run with --ignored --nocapture).
#[test]
#[ignore]
fn real_architecture_time_per_stage() {
    let arch = VisionArch::mobilenetv5_300m_enc();
    let src = tower_weights("");
    let tower = VisionTower::load(&src, "", &arch).unwrap();
    let px = pixel_values(768);
    tower.forward(&px, 768).unwrap();
    let mut last = std::time::Instant::now();
    let mut per: std::collections::BTreeMap<String, f64> = Default::default();
    let mut hook = |name: &str, _m: &Map| {
        let key = name.rsplit_once('.').map_or(name, |(a, _)| a).to_string();
        *per.entry(key).or_default() += last.elapsed().as_secs_f64();
        last = std::time::Instant::now();
    };
    let t0 = std::time::Instant::now();
    tower.forward_with_hook(&px, 768, Some(&mut hook)).unwrap();
    let total = t0.elapsed().as_secs_f64();
    let mut sum = 0.0;
    for (k, v) in &per {
        eprintln!("{k:10} {v:6.2} s");
        sum += v;
    }
    eprintln!("fusion     {:6.2} s\ntotal      {total:6.2} s", total - sum);
}
