//! `gemma3n bench --vision`: the vision tower on one 768×768 image.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use gemma3n_model::vision::arch::VisionArch;
use gemma3n_model::vision::synthetic::{pixel_values, tower_weights};
use gemma3n_model::vision::{VisionModel, VisionTower};
use gemma3n_model::Checkpoint;

/// Multiply-adds ×2 of one 768×768 image through `mobilenetv5_300m_enc`
/// (spec/multimodal.md §1.9, counted by torch's flop counter).
const TOWER_GFLOP: f64 = 871.48;

#[derive(serde::Serialize)]
struct Report {
    model: String,
    threads: usize,
    image_size: usize,
    load_s: f64,
    tower_s: f64,
    gflop_s: f64,
}

pub fn run(a: &super::bench::Args) -> Result<()> {
    let t0 = Instant::now();
    let (name, tower) = match (&a.model, &a.synthetic) {
        (Some(dir), None) => {
            let ckpt = Checkpoint::open(dir)
                .with_context(|| format!("cannot open model {}", dir.display()))?;
            (dir.display().to_string(), VisionModel::load(&ckpt)?.tower)
        }
        (None, Some(_)) => {
            let src = tower_weights("");
            let t = VisionTower::load(&src, "", &VisionArch::mobilenetv5_300m_enc())?;
            (
                "synthetic mobilenetv5_300m_enc (pseudo-random weights)".into(),
                t,
            )
        }
        _ => bail!("give either --model DIR or --synthetic NAME"),
    };
    let load_s = t0.elapsed().as_secs_f64();
    let size = 768;
    let px = pixel_values(size);
    tower.forward(&px, size)?; // warm-up: first touch of every buffer
    let mut times: Vec<f64> = (0..a.reps)
        .map(|_| {
            let t = Instant::now();
            tower.forward(&px, size).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let tower_s = times[times.len() / 2];
    let r = Report {
        model: name,
        threads: rayon::current_num_threads(),
        image_size: size,
        load_s,
        tower_s,
        gflop_s: TOWER_GFLOP / tower_s,
    };
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model      {}, {} threads", r.model, r.threads);
        println!("load       {:.2} s", r.load_s);
        println!(
            "tower      {size}x{size} image in {:.2} s (median of {}): {:.1} GFLOP/s",
            r.tower_s, a.reps, r.gflop_s
        );
    }
    Ok(())
}
