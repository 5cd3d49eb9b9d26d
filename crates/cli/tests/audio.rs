//! `gemma3n logits --audio` end to end: audio files through our decoder, feature extractor,
//! audio tower and text decoder, against HF transformers (its feature extractor and model) on
//! the tiny audio fixture (tools/reference/make_audio_tower_fixtures.py); a recording longer
//! than 30 s becomes two windows; bad audio fails before any model work.

mod common;

use common::*;

fn tiny_dir() -> std::path::PathBuf {
    repo_root().join("tests/fixtures/audio/tiny_audio")
}

fn clip(name: &str) -> String {
    repo_root()
        .join("tests/fixtures/audio")
        .join(name)
        .display()
        .to_string()
}

fn logits(ids_name: &str, audio: &[String], out: &TempDir) -> Vec<f32> {
    let g = read_safetensors(&tiny_dir().join("golden.safetensors"));
    let ids: Vec<String> = g[ids_name].i64s().iter().map(|v| v.to_string()).collect();
    let f = out.join("logits.safetensors");
    let mut args = vec![
        "logits".to_string(),
        "--model".into(),
        tiny_dir().display().to_string(),
        "--ids".into(),
        ids.join(","),
        "--out".into(),
        f.display().to_string(),
    ];
    for a in audio {
        args.push("--audio".into());
        args.push(a.clone());
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    gemma3n_raw(&args, None).expect_ok("logits --audio");
    read_safetensors(&f)["logits"].f32s()
}

#[test]
fn logits_with_two_clips_match_hf() {
    let out = TempDir::new("audio-logits");
    let ours = logits(
        "two_clips.input_ids",
        &[clip("speech_b.wav"), clip("speech_a.wav")],
        &out,
    );
    let g = read_safetensors(&tiny_dir().join("golden.safetensors"));
    let rel = max_rel_diff(&ours, &g["two_clips.logits"].f32s());
    eprintln!("logits --audio: max|ours-ref|/max|ref| = {rel:e}");
    assert!(rel <= 1e-4, "max|ours-ref|/max|ref| = {rel:e}");
}

/// A mono 16-bit PCM WAV at 16 kHz.
fn write_wav(path: &std::path::Path, samples: &[i16]) {
    let data = (samples.len() * 2) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&32_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).unwrap();
}

fn read_wav_i16(path: &str) -> Vec<i16> {
    let b = std::fs::read(path).unwrap();
    let p = b.windows(4).position(|w| w == b"data").unwrap();
    b[p + 8..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn a_31_s_recording_becomes_two_windows_and_matches_hf() {
    let out = TempDir::new("audio-long");
    // The 31 s clip of tools/reference/make_audio_fixtures.py: speech_a, then reversed,
    // repeated, cut to 496000 samples.
    let a = read_wav_i16(&clip("speech_a.wav"));
    let mut rep = a.clone();
    rep.extend(a.iter().rev());
    let long: Vec<i16> = rep.iter().copied().cycle().take(496_000).collect();
    let path = out.join("long.wav");
    write_wav(&path, &long);
    let ours = logits("long.input_ids", &[path.display().to_string()], &out);
    let g = read_safetensors(&tiny_dir().join("golden.safetensors"));
    let rel = max_rel_diff(&ours, &g["long.logits"].f32s());
    eprintln!("logits --audio (31 s): {rel:e}");
    assert!(rel <= 1e-4, "max|ours-ref|/max|ref| = {rel:e}");
}

#[test]
fn audio_errors_are_clear() {
    let out = TempDir::new("audio-bad");
    let run = |model: &str, file: &str| {
        gemma3n_raw(
            &[
                "logits",
                "--model",
                model,
                "--ids",
                "2,3",
                "--audio",
                file,
                "--out",
                out.join("x.safetensors").to_str().unwrap(),
            ],
            None,
        )
    };
    // Bad files fail even with a model path that does not exist: audio is read first.
    let bad = out.join("bad.wav");
    std::fs::write(&bad, b"RIFF not really a wave file").unwrap();
    run("/nonexistent/model", bad.to_str().unwrap()).expect_clean_failure("corrupt", &["bad.wav"]);
    let empty = out.join("empty.flac");
    std::fs::write(&empty, b"").unwrap();
    run("/nonexistent/model", empty.to_str().unwrap())
        .expect_clean_failure("empty file", &["empty.flac"]);
    let silent = out.join("zero.wav");
    write_wav(&silent, &[]);
    run("/nonexistent/model", silent.to_str().unwrap())
        .expect_clean_failure("zero samples", &["zero.wav"]);
    run("/nonexistent/model", "/nonexistent/clip.wav")
        .expect_clean_failure("missing file", &["clip.wav"]);
    // A text-only checkpoint cannot take audio.
    run(
        fixture_dir("tiny_text_f32").to_str().unwrap(),
        &clip("speech_b.wav"),
    )
    .expect_clean_failure("text-only model", &["audio"]);
    // Placeholders and clips must agree (two clips, ids with no audio block).
    let r = gemma3n_raw(
        &[
            "logits",
            "--model",
            tiny_dir().to_str().unwrap(),
            "--ids",
            "2,3,4",
            "--audio",
            &clip("speech_b.wav"),
            "--out",
            out.join("x.safetensors").to_str().unwrap(),
        ],
        None,
    );
    r.expect_clean_failure("no placeholders", &["placeholder"]);
}
