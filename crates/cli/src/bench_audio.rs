//! `gemma3n bench --audio`: the audio tower on one clip (30 s by default).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use gemma3n_model::audio::features::{num_frames, padded_len, MAX_SAMPLES};
use gemma3n_model::audio::synthetic::{features, tower_weights};
use gemma3n_model::audio::{AudioModel, AudioTower};
use gemma3n_model::config::ModelConfig;
use gemma3n_model::Checkpoint;

/// Multiply-adds ×2 of the real-size tower per 40 ms conformer frame (spec/multimodal.md
/// §4.6: ≈ 652 M MAC per frame; 983.7 GFLOP for 30 s, counted by torch's flop counter).
const GFLOP_30S: f64 = 983.7;

#[derive(serde::Serialize)]
struct Report {
    model: String,
    threads: usize,
    seconds: f64,
    mel_frames: usize,
    load_s: f64,
    tower_s: f64,
    realtime_factor: f64,
    gflop_s: Option<f64>,
}

pub fn run(a: &super::bench::Args) -> Result<()> {
    if !(a.audio_seconds > 0.0 && a.audio_seconds <= 30.0) {
        bail!("--audio-seconds must be in (0, 30] (one clip)");
    }
    let t0 = Instant::now();
    let (name, tower, real) = match (&a.model, &a.synthetic) {
        (Some(dir), None) => {
            let ckpt = Checkpoint::open(dir)
                .with_context(|| format!("cannot open model {}", dir.display()))?;
            let m = AudioModel::load(&ckpt)?;
            let real = m.cfg.hidden_size == 1536 && m.cfg.num_layers == 12;
            (dir.display().to_string(), m.tower, real)
        }
        (None, Some(_)) => {
            let cfg = ModelConfig::from_json(
                &serde_json::json!({
                    "model_type": "gemma3n",
                    "text_config": {"model_type": "gemma3n_text"},
                    "audio_config": {},
                }),
                "(default audio config)",
            )?
            .audio
            .context("default audio config")?;
            let src = tower_weights("");
            let t = AudioTower::load(&src, "", &cfg)?;
            (
                "synthetic Gemma 3n audio tower (pseudo-random weights)".into(),
                t,
                true,
            )
        }
        _ => bail!("give either --model DIR or --synthetic NAME"),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let samples = ((a.audio_seconds * 16_000.0).round() as usize).min(MAX_SAMPLES);
    let frames = num_frames(padded_len(samples));
    if frames == 0 {
        bail!(
            "--audio-seconds {}: too short for one mel frame",
            a.audio_seconds
        );
    }
    let mel = features(frames);
    let valid = vec![true; frames];
    tower.forward(&mel, &valid, None)?; // warm-up
    let mut times: Vec<f64> = (0..a.reps)
        .map(|_| {
            let t = Instant::now();
            tower
                .forward(&mel, &valid, None)
                .map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let tower_s = times[times.len() / 2];
    let seconds = samples as f64 / 16_000.0;
    // The FLOP count scales with the conformer frames (750 for 30 s).
    let t2 = frames.div_ceil(2).div_ceil(2) as f64;
    let r = Report {
        model: name,
        threads: rayon::current_num_threads(),
        seconds,
        mel_frames: frames,
        load_s,
        tower_s,
        realtime_factor: seconds / tower_s,
        gflop_s: real.then(|| GFLOP_30S * t2 / 750.0 / tower_s),
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model      {}, {} threads", r.model, r.threads);
        println!("load       {:.2} s", r.load_s);
        print!(
            "tower      {seconds:.1} s of audio ({frames} mel frames) in {:.2} s (median of {}), {:.1}x real time",
            r.tower_s, a.reps, r.realtime_factor
        );
        match r.gflop_s {
            Some(g) => println!(", {g:.1} GFLOP/s"),
            None => println!(),
        }
    }
    Ok(())
}
