//! `gemma3n tokenize`: prints the ids of a text as a JSON array.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gemma3n_engine::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (its tokenizer.json is used).
    #[arg(long)]
    model: PathBuf,
    /// Text to tokenize.
    text: String,
    /// Prepend the BOS id.
    #[arg(long)]
    bos: bool,
}

pub fn main(a: Args) -> Result<()> {
    let path = a.model.join("tokenizer.json");
    let tok = Tokenizer::from_file(&path)
        .with_context(|| format!("cannot load the tokenizer of {}", a.model.display()))?;
    let ids = tok.encode(&a.text, a.bos)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
