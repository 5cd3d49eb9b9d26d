//! `gemma3n run`: one prompt, streamed answer.

use std::path::PathBuf;

use anyhow::{bail, Result};
use gemma3n_engine::{
    expand_image_placeholders, ChatMessage, ContentPart, Session, IMAGE_PLACEHOLDER,
};
use gemma3n_model::prompt::MediaPrompt;
use gemma3n_model::text::EmbedFn;

use crate::text::{report_speed, stream_generation, SamplingArgs, TextStack};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Directory with tokenizer.json (and chat template, generation config) for a GGUF
    /// model (default: the GGUF file's directory).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
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
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
}

pub fn main(a: Args) -> Result<()> {
    // Images are read before any model work: a bad file fails fast.
    let pixels = crate::images::read_images(&a.images)?;
    if a.raw && !a.images.is_empty() {
        let n = a.prompt.matches(IMAGE_PLACEHOLDER).count();
        if n != a.images.len() {
            bail!(
                "--raw with {} image(s): the prompt must hold one {IMAGE_PLACEHOLDER} per image (it has {n})",
                a.images.len()
            );
        }
    }
    let stack = TextStack::load(&a.model, a.tokenizer.as_deref())?;
    let vision = if pixels.is_empty() {
        None
    } else {
        Some(crate::images::encode_images(&a.model, &pixels)?)
    };
    let image_tokens = vision
        .as_ref()
        .map_or(0, |(v, _)| v.cfg.soft_tokens_per_image);
    let ids = if a.raw {
        let text = expand_image_placeholders(&a.prompt, image_tokens);
        stack.tokenizer.encode(&text, true)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::system(s.as_str()));
        }
        if pixels.is_empty() {
            msgs.push(ChatMessage::user(a.prompt.as_str()));
        } else {
            let mut parts: Vec<ContentPart> = a
                .images
                .iter()
                .map(|p| ContentPart::Image {
                    url: Some(p.display().to_string()),
                })
                .collect();
            parts.push(ContentPart::Text {
                text: a.prompt.clone(),
            });
            msgs.push(ChatMessage::user(parts));
        }
        stack
            .template()?
            .render_and_tokenize_with_images(&stack.tokenizer, &msgs, true, image_tokens)?
            .ids
    };
    let mut sampler = stack.sampler(&a.sampling)?;
    let mut session = Session::with_cache(&stack.model, a.slice.cache(&stack.model)?);
    let prompt = match &vision {
        Some((v, images)) => Some(MediaPrompt::new(
            &ids,
            0,
            stack.model.cfg.hidden_size,
            Some((v, images.clone())),
            None,
        )?),
        None => None,
    };
    let f = |pos: usize, id: u32, row: &mut [f32]| match &prompt {
        Some(p) => p.embed(pos, id, row),
        None => Ok(()),
    };
    let (g, _) = stream_generation(
        &stack,
        &mut session,
        &mut sampler,
        &ids,
        prompt.as_ref().map(|_| &f as EmbedFn),
        a.sampling.max_tokens,
    )?;
    println!();
    report_speed(&g);
    Ok(())
}
