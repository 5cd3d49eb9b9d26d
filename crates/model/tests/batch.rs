//! Batched decode: one forward pass over the next token of several sequences (different
//! lengths, positions, and sliding windows already in effect) gives bit for bit the logits
//! each sequence gets alone, on every text fixture (dense and sparse FFN layers, shared KV).

mod common;

use common::*;
use gemma3n_model::{Checkpoint, Logits, TextModel};

fn fixtures() -> Vec<std::path::PathBuf> {
    let base = root().join("tests/fixtures/text");
    let mut v: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    v.sort();
    v
}

#[test]
fn batched_decode_equals_each_sequence_alone() {
    for dir in fixtures() {
        let ckpt = Checkpoint::open(&dir).unwrap();
        let model = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
        let v = model.cfg.vocab_size;
        // Five sequences with prompts of different lengths (some past the sliding window).
        let lens = [1usize, 3, 7, 20, 40];
        let prompts: Vec<Vec<u32>> = lens
            .iter()
            .enumerate()
            .map(|(s, &n)| {
                (0..n)
                    .map(|i| ((i * 37 + s * 11 + 5) % 200) as u32 + 3)
                    .collect()
            })
            .collect();
        let mut alone = Vec::new();
        let mut batch = Vec::new();
        for p in &prompts {
            let mut a = model.new_cache();
            model.forward(p, &mut a, Logits::Last).unwrap();
            alone.push(a);
            let mut b = model.new_cache();
            model.forward(p, &mut b, Logits::Last).unwrap();
            batch.push(b);
        }
        // Three decode steps: each sequence alone, then all together.
        for step in 0..3u32 {
            let ids: Vec<u32> = (0..prompts.len() as u32)
                .map(|s| 3 + (s * 7 + step * 13) % 190)
                .collect();
            let want: Vec<f32> = ids
                .iter()
                .zip(alone.iter_mut())
                .flat_map(|(&id, c)| model.forward(&[id], c, Logits::Last).unwrap())
                .collect();
            let mut refs: Vec<&mut _> = batch.iter_mut().collect();
            let got = model.forward_batch(&ids, &mut refs).unwrap();
            assert_eq!(got.len(), ids.len() * v);
            assert!(
                got == want,
                "{}: step {step}: batched logits differ from single-sequence ones (max diff {:e})",
                dir.display(),
                got.iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max)
            );
        }
    }
}
