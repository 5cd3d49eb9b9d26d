//! `gemma3n logits`: one prefill over the given ids, every position's logits to a
//! safetensors file (tensor `logits`, f32, `[T, vocab_size]`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::safetensors::{self, WriteTensor};
use gemma3n_model::text::EmbedFn;
use gemma3n_model::Logits;

use crate::device::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Comma-separated token ids, e.g. 2,105,2364.
    #[arg(long)]
    ids: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// An image whose soft tokens fill the ids' image placeholders (in order); repeatable.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// An audio file whose soft tokens fill the ids' audio placeholders (in order; 188 per
    /// window of at most 30 s); repeatable.
    #[arg(long = "audio")]
    audio: Vec<PathBuf>,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
    #[command(flatten)]
    device: crate::device::DeviceArgs,
}

pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids = s
        .split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("--ids: `{t}` is not a token id"))
        })
        .collect::<Result<Vec<_>>>()?;
    if ids.is_empty() {
        bail!("--ids: no token ids given");
    }
    Ok(ids)
}

pub fn main(a: Args) -> Result<()> {
    let ids = parse_ids(&a.ids)?;
    let device = a.device.parse()?;
    let pixels = crate::images::read_images(&a.images)?;
    let sound = crate::audio::read_audio(&a.audio)?;
    let mut model = crate::load::load_any(&a.model)?;
    if device == Device::Cpu {
        model = crate::load::cpu_layout(model);
    }
    let model = std::sync::Arc::new(model);
    let plan = a.slice.plan(&model.cfg)?;
    // The towers run on the CPU; their soft tokens reach the decoder through `embed`.
    let (vision, image_soft) = match pixels.is_empty() {
        true => None,
        false => Some(crate::images::encode_images(&a.model, &pixels)?),
    }
    .unzip();
    let (audio, clip_soft) = match sound.clips.is_empty() {
        true => None,
        false => Some(crate::audio::encode_audio(&a.model, &sound)?),
    }
    .unzip();
    let prompt = if vision.is_none() && audio.is_none() {
        None
    } else {
        Some(MediaPrompt::new(
            &ids,
            0,
            model.cfg.hidden_size,
            vision.as_ref().zip(image_soft),
            audio.as_ref().zip(clip_soft),
        )?)
    };
    let f = |pos: usize, id: u32, row: &mut [f32]| match &prompt {
        Some(p) => p.embed(pos, id, row),
        None => Ok(()),
    };
    let embed = prompt.as_ref().map(|_| &f as EmbedFn);
    let logits = match device {
        Device::Cpu => {
            let mut cache = model.new_cache_with_plan(plan);
            model.forward_embedded(&ids, &mut cache, Logits::All, embed)?
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let gpu = crate::device::to_gpu(model.clone(), n, &a.device)?;
            let mut cache = gpu.new_cache_with_plan(plan, ids.len())?;
            gpu.forward_embedded(&ids, &mut cache, Logits::All, embed)?
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => unreachable!("DeviceArgs::parse refuses cuda without the cuda feature"),
    };
    let v = model.cfg.vocab_size;
    safetensors::write(
        &a.out,
        &[WriteTensor::f32("logits", vec![ids.len(), v], &logits)],
    )?;
    eprintln!("wrote logits [{}, {v}] to {}", ids.len(), a.out.display());
    Ok(())
}
