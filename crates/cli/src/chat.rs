//! `gemma3n chat`: an interactive conversation that keeps the KV cache across turns.

use std::io::{BufRead, Write};

use anyhow::Result;
use gemma3n_engine::{Conversation, Session};

use crate::text::{report_speed, stream_generation, SamplingArgs};

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
}

fn new_conversation(system: &Option<String>) -> Conversation {
    match system {
        Some(s) => Conversation::with_system(s.as_str()),
        None => Conversation::new(),
    }
}

pub fn main(a: Args) -> Result<()> {
    let stack = a.model.load()?;
    let template = stack.template()?;
    let mut sampler = stack.sampler(&a.sampling)?;
    let mut session = Session::with_cache(&stack.model, a.slice.cache(&stack.model)?);
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
        let turn = match conv.add_user(&template, &stack.tokenizer, msg) {
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
            &stack,
            &mut session,
            &mut sampler,
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
