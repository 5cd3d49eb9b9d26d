//! `gemma3n chat`: an interactive conversation that keeps the KV cache across turns.

use std::io::{BufRead, Write};

use anyhow::Result;
use gemma3n_engine::{ChatTemplate, Conversation, Decoder, Sampler, Session};

use crate::device::Device;
use crate::text::{report_speed, stream_generation, SamplingArgs, TextStack};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: crate::text::ModelArgs,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    slice: crate::slice::SliceArgs,
    #[command(flatten)]
    device: crate::device::DeviceArgs,
}

fn new_conversation(system: &Option<String>) -> Conversation {
    match system {
        Some(s) => Conversation::with_system(s.as_str()),
        None => Conversation::new(),
    }
}

pub fn main(a: Args) -> Result<()> {
    let device = a.device.parse()?;
    let stack = a.model.load(device)?;
    let template = stack.template()?;
    let mut sampler = stack.sampler(&a.sampling)?;
    match device {
        Device::Cpu => {
            let session = Session::with_cache(&*stack.model, a.slice.cache(&stack.model)?);
            converse(&a, &stack, &template, &mut sampler, session)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => {
            let plan = a.slice.plan(&stack.model.cfg)?;
            let gpu = crate::device::to_gpu(stack.model.clone(), n, &a.device)?;
            // Room for a first turn to start with; the cache grows with the conversation.
            let cache =
                gpu.new_cache_with_plan(plan, a.sampling.max_tokens.saturating_add(1024))?;
            let session = Session::with_cache(&gpu, cache);
            converse(&a, &stack, &template, &mut sampler, session)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => unreachable!("DeviceArgs::parse refuses cuda without the cuda feature"),
    }
}

/// The conversation loop, on the device `session` runs on.
fn converse<M: Decoder>(
    a: &Args,
    stack: &TextStack,
    template: &ChatTemplate,
    sampler: &mut Sampler,
    mut session: Session<'_, M>,
) -> Result<()> {
    let mut conv = new_conversation(&a.system);
    eprintln!("gemma3n chat: type a message; /reset starts over, /exit quits.");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line?;
        let msg = line.trim();
        match msg {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                conv = new_conversation(&a.system);
                session.reset();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        let turn = match conv.add_user(template, &stack.tokenizer, msg) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                continue;
            }
        };
        // Prefill only what the cache does not hold yet.
        let start = session.reuse_prefix(&turn.prompt.ids);
        let new_ids = &turn.prompt.ids[start..];
        if new_ids.len() > session.room() {
            eprintln!(
                "error: this turn needs {} more tokens but only {} fit in the context; /reset to start over",
                new_ids.len(),
                session.room()
            );
            conv = new_conversation(&a.system);
            session.reset();
            continue;
        }
        let (g, text) = stream_generation(
            stack,
            &mut session,
            sampler,
            new_ids,
            None,
            a.sampling.max_tokens,
        )?;
        println!();
        report_speed(&g);
        conv.add_assistant(text, &[]);
    }
    Ok(())
}
