//! `gemma3n run`: one prompt, streamed answer.

use std::path::PathBuf;

use anyhow::Result;
use gemma3n_engine::{ChatMessage, Session};

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
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
}

pub fn main(a: Args) -> Result<()> {
    let stack = TextStack::load(&a.model, a.tokenizer.as_deref())?;
    let ids = if a.raw {
        stack.tokenizer.encode(&a.prompt, true)?
    } else {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(ChatMessage::system(s.as_str()));
        }
        msgs.push(ChatMessage::user(a.prompt.as_str()));
        stack
            .template()?
            .render_and_tokenize(&stack.tokenizer, &msgs, true)?
            .ids
    };
    let mut sampler = stack.sampler(&a.sampling)?;
    let mut session = Session::with_cache(&stack.model, a.slice.cache(&stack.model)?);
    let (g, _) = stream_generation(
        &stack,
        &mut session,
        &mut sampler,
        &ids,
        a.sampling.max_tokens,
    )?;
    println!();
    report_speed(&g);
    Ok(())
}
