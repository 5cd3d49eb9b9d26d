//! `gemma3n run`: one prompt, streamed answer.

use std::path::PathBuf;

use anyhow::{bail, Result};
use gemma3n_engine::{
    expand_audio_placeholders, expand_image_placeholders, ChatMessage, ContentPart, Session,
    AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER,
};
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::text::EmbedFn;

use crate::device::Device;
use crate::text::{report_speed, stream_generation, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: crate::text::ModelArgs,
    /// The prompt (a user message, rendered with the chat template unless --raw).
    #[arg(long)]
    prompt: String,
    /// System prompt (merged into the first user turn, as Gemma's template does).
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// Feed the prompt as plain text (BOS + prompt), without the chat template.
    #[arg(long)]
    raw: bool,
    /// An image for the model to see (PNG, JPEG, WebP, GIF, BMP); repeatable. In a chat
    /// prompt the images come before the text; with --raw, write one `<image_soft_token>`
    /// in the prompt where each image goes.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// An audio file for the model to hear (WAV, FLAC, MP3, Ogg/Vorbis; any rate, mono or
    /// stereo); repeatable. Audio longer than 30 s becomes consecutive 30 s windows, one audio
    /// block (188 tokens) each. In a chat prompt the audio comes after the images, before the
    /// text; with --raw, write one `<audio_soft_token>` where each file goes.
    #[arg(long = "audio")]
    audio: Vec<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
    #[command(flatten)]
    device: crate::device::DeviceArgs,
}

pub fn main(a: Args) -> Result<()> {
    let device = a.device.parse()?;
    // Images are read before any model work: a bad file fails fast.
    let pixels = crate::images::read_images(&a.images)?;
    let sound = crate::audio::read_audio(&a.audio)?;
    if a.raw && !a.audio.is_empty() {
        let n = a.prompt.matches(AUDIO_PLACEHOLDER).count();
        if n != a.audio.len() {
            bail!(
                "--raw with {} audio file(s): the prompt must hold one {AUDIO_PLACEHOLDER} per file (it has {n})",
                a.audio.len()
            );
        }
    }
    if a.raw && !a.images.is_empty() {
        let n = a.prompt.matches(IMAGE_PLACEHOLDER).count();
        if n != a.images.len() {
            bail!(
                "--raw with {} image(s): the prompt must hold one {IMAGE_PLACEHOLDER} per image (it has {n})",
                a.images.len()
            );
        }
    }
    let stack = a.model.load(device)?;
    let (vision, image_soft) = if pixels.is_empty() {
        None
    } else {
        Some(crate::images::encode_images(&a.model.model, &pixels)?)
    }
    .unzip();
    let image_tokens = vision.as_ref().map_or(0, |v| v.cfg.soft_tokens_per_image);
    let (audio, clip_soft) = if sound.clips.is_empty() {
        None
    } else {
        Some(crate::audio::encode_audio(&a.model.model, &sound)?)
    }
    .unzip();
    let audio_tokens = audio.as_ref().map_or(0, |m| m.cfg.soft_tokens_per_clip);
    let ids = if a.raw {
        // One placeholder per file stands for all of the file's windows.
        let mut text = String::new();
        let mut rest = a.prompt.as_str();
        for &k in &sound.windows_per_file {
            let at = rest.find(AUDIO_PLACEHOLDER).expect("counted above");
            text.push_str(&rest[..at]);
            text.push_str(&AUDIO_PLACEHOLDER.repeat(k));
            rest = &rest[at + AUDIO_PLACEHOLDER.len()..];
        }
        text.push_str(rest);
        let text = expand_audio_placeholders(
            &expand_image_placeholders(&text, image_tokens),
            audio_tokens,
        );
        stack.tokenizer.encode(&text, true)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::system(s.as_str()));
        }
        if pixels.is_empty() && sound.clips.is_empty() {
            msgs.push(ChatMessage::user(a.prompt.as_str()));
        } else {
            let mut parts: Vec<ContentPart> = a
                .images
                .iter()
                .map(|p| ContentPart::Image {
                    url: Some(p.display().to_string()),
                })
                .collect();
            for (f, &k) in a.audio.iter().zip(&sound.windows_per_file) {
                for _ in 0..k {
                    parts.push(ContentPart::Audio {
                        url: Some(f.display().to_string()),
                    });
                }
            }
            parts.push(ContentPart::Text {
                text: a.prompt.clone(),
            });
            msgs.push(ChatMessage::user(parts));
        }
        stack
            .template()?
            .render_and_tokenize_with_media(
                &stack.tokenizer,
                &msgs,
                true,
                image_tokens,
                audio_tokens,
            )?
            .ids
    };
    let mut sampler = stack.sampler(&a.sampling)?;
    let prompt = if vision.is_some() || audio.is_some() {
        Some(MediaPrompt::new(
            &ids,
            0,
            stack.model.cfg.hidden_size,
            vision.as_ref().zip(image_soft),
            audio.as_ref().zip(clip_soft),
        )?)
    } else {
        None
    };
    let f = |pos: usize, id: u32, row: &mut [f32]| match &prompt {
        Some(p) => p.embed(pos, id, row),
        None => Ok(()),
    };
    // The towers ran on the CPU; their soft tokens reach the decoder through `embed`.
    let embed = prompt.as_ref().map(|_| &f as EmbedFn);
    let max_tokens = a.sampling.max_tokens;
    let (g, _) = match device {
        Device::Cpu => {
            let mut session = Session::with_cache(&*stack.model, a.slice.cache(&stack.model)?);
            stream_generation(&stack, &mut session, &mut sampler, &ids, embed, max_tokens)?
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let plan = a.slice.plan(&stack.model.cfg)?;
            let gpu = crate::device::to_gpu(stack.model.clone(), n, &a.device)?;
            // Room for the prompt and the answer to start with (the cache grows anyway).
            let cache = gpu.new_cache_with_plan(plan, ids.len() + max_tokens)?;
            let mut session = Session::with_cache(&gpu, cache);
            stream_generation(&stack, &mut session, &mut sampler, &ids, embed, max_tokens)?
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => unreachable!("DeviceArgs::parse refuses cuda without the cuda feature"),
    };
    println!();
    report_speed(&g);
    Ok(())
}
