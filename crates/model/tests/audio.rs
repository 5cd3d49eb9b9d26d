//! The audio tower, the audio embedder and the merge of audio soft tokens into a prompt,
//! against HF transformers (tools/reference/make_audio_tower_fixtures.py): the tiny fixture
//! layer by layer and end to end (logits of prompts with two clips, an image and a clip, and
//! a 31 s recording in two windows), and the real 12-layer, 1536-wide tower on pseudo-random
//! weights both sides generate. Plus the streaming property: any split of the input gives the
//! same encodings as the whole clip.

mod common;

use common::*;
use gemma3n_model::audio::decode::load_audio;
use gemma3n_model::audio::features::windows;
use gemma3n_model::audio::synthetic::{features, tower_weights};
use gemma3n_model::audio::{AudioModel, AudioTower};
use gemma3n_model::config::ModelConfig;
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::safetensors::SafeTensors;
use gemma3n_model::vision::preprocess::load_image;
use gemma3n_model::vision::VisionModel;
use gemma3n_model::{Checkpoint, Logits, TextModel};

fn tiny_dir() -> std::path::PathBuf {
    root().join("tests/fixtures/audio/tiny_audio")
}

fn tiny() -> (Checkpoint, SafeTensors) {
    let ckpt = Checkpoint::open(&tiny_dir()).unwrap();
    let golden = SafeTensors::open(&tiny_dir().join("golden.safetensors")).unwrap();
    (ckpt, golden)
}

fn mask(g: &SafeTensors, name: &str) -> Vec<bool> {
    g.read_i64(name).unwrap().iter().map(|&v| v == 1).collect()
}

fn wav(name: &str) -> Vec<f32> {
    load_audio(&root().join("tests/fixtures/audio").join(name))
        .unwrap()
        .samples
}

#[test]
fn tiny_tower_matches_hf_layer_by_layer() {
    let (ckpt, g) = tiny();
    let am = AudioModel::load(&ckpt).unwrap();
    let d = am.tower.width();
    for clip in ["speech_b", "speech_a"] {
        let mel = g.read_f32(&format!("{clip}.features")).unwrap();
        let valid = mask(&g, &format!("{clip}.features_mask"));
        // The hook sees each call's frames (the clip's push, then its finish): concatenate.
        let mut seen: Vec<(String, Vec<f32>)> = Vec::new();
        let mut hook = |name: &str, x: &[f32]| match seen.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.extend_from_slice(x),
            None => seen.push((name.to_string(), x.to_vec())),
        };
        let (x, ok) = am.tower.forward(&mel, &valid, Some(&mut hook)).unwrap();
        let last = format!("block.{}", am.cfg.num_layers - 1);
        for (name, got) in &seen {
            let key = format!("{clip}.{}", name.replace("block.", "block"));
            let mut want = g.read_f32(&key).unwrap();
            if *name == last {
                // The last block computes only the frames the decimation keeps.
                let r = am.cfg.reduction_factor;
                want = want.chunks(d).step_by(r).flatten().copied().collect();
            }
            let e = rel_err(got, &want);
            eprintln!("{key}: {e:e}");
            assert!(e <= 1e-5, "{key}: max relative error {e:e}");
        }
        assert_eq!(seen.len(), 1 + am.cfg.num_layers);
        assert_eq!(ok, mask(&g, &format!("{clip}.tower_mask")));
        let e = rel_err(&x, &g.read_f32(&format!("{clip}.tower")).unwrap());
        assert!(e <= 1e-5, "{clip} tower: {e:e}");
        let soft = am.embedder.soft(&x, ok.len());
        let e = rel_err(&soft, &g.read_f32(&format!("{clip}.soft")).unwrap());
        assert!(e <= 1e-5, "{clip} soft tokens: {e:e}");
        assert_eq!(soft.len(), ok.len() * d);
    }
}

#[test]
fn padded_batch_matches_hf() {
    let (ckpt, g) = tiny();
    let am = AudioModel::load(&ckpt).unwrap();
    let d = am.tower.width();
    let mel = g.read_f32("batch.features").unwrap();
    let fmask = mask(&g, "batch.features_mask");
    let want = g.read_f32("batch.tower").unwrap();
    let wmask = mask(&g, "batch.tower_mask");
    let (frames, n) = (fmask.len() / 2, wmask.len() / 2);
    for b in 0..2 {
        let (x, ok) = am
            .tower
            .forward(
                &mel[b * frames * 128..(b + 1) * frames * 128],
                &fmask[b * frames..(b + 1) * frames],
                None,
            )
            .unwrap();
        assert_eq!(ok, wmask[b * n..(b + 1) * n], "item {b} mask");
        // Padding rows are zero on both sides.
        let e = rel_err(&x, &want[b * n * d..(b + 1) * n * d]);
        assert!(e <= 1e-5, "batch item {b}: {e:e}");
    }
    // Our features of the two clips padded together are the extractor's.
    let (a, bb) = (wav("speech_a.wav"), wav("speech_b.wav"));
    let f = gemma3n_model::audio::features::log_mel_batch(&[&bb, &a]);
    assert_eq!(f[0].mask, fmask[..frames]);
    assert!(rel_err(&f[0].mel, &mel[..frames * 128]) <= 1e-6);
}

/// Logits of `prompt` (ids from the golden) with the given media, against the golden.
fn check_logits(
    text: &TextModel,
    g: &SafeTensors,
    name: &str,
    images: Option<(&VisionModel, Vec<Vec<f32>>)>,
    clips: Option<(&AudioModel, Vec<Vec<f32>>)>,
) {
    let prompt = ids(g, &format!("{name}.input_ids"));
    let d = text.cfg.hidden_size;
    let mm = MediaPrompt::new(&prompt, 0, d, images, clips).unwrap();
    let f = |pos: usize, id: u32, row: &mut [f32]| mm.embed(pos, id, row);
    let mut cache = text.new_cache();
    let logits = text
        .forward_embedded(&prompt, &mut cache, Logits::All, Some(&f))
        .unwrap();
    let want = g.read_f32(&format!("{name}.logits")).unwrap();
    let e = rel_err(&logits, &want);
    eprintln!("{name}: logits max relative error {e:e}");
    assert!(e <= 1e-4, "{name}: logits max relative error {e:e}");
}

#[test]
fn text_and_audio_logits_match_hf() {
    let (ckpt, g) = tiny();
    let text = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let am = AudioModel::load(&ckpt).unwrap();
    let (a, b) = (wav("speech_a.wav"), wav("speech_b.wav"));
    // Two clips in one prompt, padded together as the processor does.
    let clips = am.encode_clips(&[&b, &a]).unwrap();
    check_logits(&text, &g, "two_clips", None, Some((&am, clips.clone())));

    // The soft tokens matter: swapping the clips changes the logits.
    let swapped = vec![clips[1].clone(), clips[0].clone()];
    let prompt = ids(&g, "two_clips.input_ids");
    let mm =
        MediaPrompt::new(&prompt, 0, text.cfg.hidden_size, None, Some((&am, swapped))).unwrap();
    let f = |pos: usize, id: u32, row: &mut [f32]| mm.embed(pos, id, row);
    let other = text
        .forward_embedded(&prompt, &mut text.new_cache(), Logits::All, Some(&f))
        .unwrap();
    assert!(rel_err(&other, &g.read_f32("two_clips.logits").unwrap()) > 1e-2);

    // A clip count that does not match the placeholders is an error.
    let err = MediaPrompt::new(
        &prompt,
        0,
        text.cfg.hidden_size,
        None,
        Some((&am, vec![clips[0].clone()])),
    )
    .err()
    .expect("one clip for two clips' placeholders");
    assert!(err.to_string().contains("placeholder"), "{err}");
}

#[test]
fn image_and_audio_in_one_prompt_match_hf() {
    let (ckpt, g) = tiny();
    let text = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let am = AudioModel::load(&ckpt).unwrap();
    let vm = VisionModel::load(&ckpt).unwrap();
    let px = load_image(&root().join("tests/fixtures/vision/images/coffee_97x61.bmp")).unwrap();
    let img = vm.encode(&px.data, px.size).unwrap();
    let clips = am.encode_clips(&[&wav("speech_b.wav")]).unwrap();
    // The golden's image went through PIL's resize, which our preprocessing reproduces.
    let prompt = ids(&g, "image_audio.input_ids");
    let mm = MediaPrompt::new(
        &prompt,
        0,
        text.cfg.hidden_size,
        Some((&vm, vec![img])),
        Some((&am, clips)),
    )
    .unwrap();
    let f = |pos: usize, id: u32, row: &mut [f32]| mm.embed(pos, id, row);
    let logits = text
        .forward_embedded(&prompt, &mut text.new_cache(), Logits::All, Some(&f))
        .unwrap();
    let e = rel_err(&logits, &g.read_f32("image_audio.logits").unwrap());
    eprintln!("image_audio: {e:e}");
    assert!(e <= 1e-4, "image + audio logits: {e:e}");
}

#[test]
fn long_recording_in_30_s_windows_matches_hf() {
    let (ckpt, g) = tiny();
    let text = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let am = AudioModel::load(&ckpt).unwrap();
    // The 31 s clip of tools/reference/make_audio_fixtures.py.
    let a = wav("speech_a.wav");
    let mut rep = a.clone();
    rep.extend(a.iter().rev());
    let long: Vec<f32> = rep.iter().copied().cycle().take(496_000).collect();
    let w = windows(&long);
    assert_eq!(
        w.iter().map(|x| x.len()).collect::<Vec<_>>(),
        [480_000, 16_000]
    );
    let clips = am.encode_clips(&w).unwrap();
    check_logits(&text, &g, "long", None, Some((&am, clips)));
    // Longer than 30 s in one clip: an error, not a silent cut.
    let err = am.encode_clips(&[&long]).expect_err("31 s clip");
    assert!(err.to_string().contains("30 s"), "{err}");
}

#[test]
fn stream_in_pieces_equals_whole_clip() {
    let (ckpt, g) = tiny();
    let am = AudioModel::load(&ckpt).unwrap();
    let mel = g.read_f32("speech_a.features").unwrap();
    let valid = mask(&g, "speech_a.features_mask");
    let (whole, ok) = am.tower.forward(&mel, &valid, None).unwrap();
    let frames = valid.len();
    for piece in [1usize, 2, 3, 5, 7, 16, 50, 128, frames] {
        let mut s = am.tower.stream();
        let (mut x, mut m) = (Vec::new(), Vec::new());
        for start in (0..frames).step_by(piece) {
            let end = (start + piece).min(frames);
            let (a, b) = s
                .push(&mel[start * 128..end * 128], &valid[start..end])
                .unwrap();
            x.extend(a);
            m.extend(b);
        }
        let (a, b) = s.finish().unwrap();
        x.extend(a);
        m.extend(b);
        assert_eq!(m, ok, "pieces of {piece}: mask");
        // Same operations on the same values, only grouped differently into matmul calls.
        let e = rel_err(&x, &whole);
        assert!(e <= 1e-6, "pieces of {piece} frames: {e:e}");
    }
}

#[test]
fn real_size_tower_matches_hf_on_pseudo_random_weights() {
    let g = SafeTensors::open(&root().join("tests/fixtures/audio/audio_real_golden.safetensors"))
        .unwrap();
    let cfg = ModelConfig::from_json(
        &serde_json::json!({
            "model_type": "gemma3n",
            "text_config": {"model_type": "gemma3n_text"},
            "audio_config": {},
        }),
        "(real audio config)",
    )
    .unwrap()
    .audio
    .unwrap();
    assert_eq!(
        (cfg.num_layers, cfg.hidden_size, cfg.num_heads),
        (12, 1536, 8)
    );
    let src = tower_weights("");
    let tower = AudioTower::load(&src, "", &cfg).unwrap();
    let frames = 497;
    let mel = features(frames);
    let mut sscp = Vec::new();
    let mut hook = |name: &str, x: &[f32]| {
        if name == "sscp" {
            sscp.extend_from_slice(x)
        }
    };
    let t0 = std::time::Instant::now();
    let (x, ok) = tower
        .forward(&mel, &vec![true; frames], Some(&mut hook))
        .unwrap();
    eprintln!("real tower, 5 s: {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!(ok, mask(&g, "tower_mask"));
    let stride = g.read_i64("sscp_stride").unwrap()[0] as usize;
    let strided: Vec<f32> = sscp.iter().step_by(stride).copied().collect();
    let e = rel_err(&strided, &g.read_f32("sscp_strided").unwrap());
    eprintln!("sscp: {e:e}");
    assert!(e <= 1e-5, "sub-sampling output: {e:e}");
    let e = rel_err(&x, &g.read_f32("tower").unwrap());
    eprintln!("tower: {e:e}");
    assert!(e <= 1e-4, "tower output: {e:e}");
}

#[test]
fn samples_streamed_in_pieces_give_the_whole_recordings_soft_tokens() {
    use gemma3n_model::audio::features::{log_mel, LogMelStream};
    let (ckpt, _) = tiny();
    let am = AudioModel::load(&ckpt).unwrap();
    let a = wav("speech_a.wav");
    let whole = log_mel(&a);
    let (want, want_ok) = am.tower.forward(&whole.mel, &whole.mask, None).unwrap();
    for piece in [1usize, 100, 160, 513, 777, 5000, a.len()] {
        let mut feats = LogMelStream::new();
        let mut tower = am.tower.stream();
        let (mut mel, mut mask) = (Vec::new(), Vec::new());
        let (mut x, mut ok) = (Vec::new(), Vec::new());
        let mut feed = |m: Vec<f32>, k: Vec<bool>, mel: &mut Vec<f32>, mask: &mut Vec<bool>| {
            let (y, v) = tower.push(&m, &k).unwrap();
            mel.extend(m);
            mask.extend(k);
            x.extend(y);
            ok.extend(v);
        };
        for c in a.chunks(piece) {
            let (m, k) = feats.push(c);
            feed(m, k, &mut mel, &mut mask);
        }
        let (m, k) = feats.finish();
        feed(m, k, &mut mel, &mut mask);
        let (y, v) = tower.finish().unwrap();
        x.extend(y);
        ok.extend(v);
        // The features are the whole clip's, bit for bit; the soft tokens equal up to the
        // grouping of rows into matmul calls.
        assert_eq!(mask, whole.mask, "pieces of {piece}: feature mask");
        assert!(mel == whole.mel, "pieces of {piece}: features differ");
        assert_eq!(ok, want_ok, "pieces of {piece}: token mask");
        // One frame per call takes other matmul kernels than the whole clip: f32 rounding.
        let e = rel_err(&x, &want);
        assert!(e <= 5e-6, "pieces of {piece} samples: {e:e}");
    }
}
