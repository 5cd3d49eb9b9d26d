//! What `run` and `chat` share: loading the model with its tokenizer, chat template and
//! generation defaults, sampling flags, and streaming a generation to stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use gemma3n_engine::{
    ChatTemplate, Decoder, Generation, GenerationConfig, Pick, Sampler, SamplingParams, Session,
    TokenStream, Tokenizer,
};
use gemma3n_model::text::{EmbedFn, TopScores};
use gemma3n_model::TextModel;

/// Sampling flags; unset ones take the checkpoint's generation_config.json.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Temperature; 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `--model` and `--tokenizer`: where the text-generating commands find the model.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// Checkpoint directory (Hugging Face layout) or a Gemma 3n GGUF file.
    #[arg(long)]
    pub model: PathBuf,
    /// Directory with tokenizer.json (and chat template, generation config) for a GGUF
    /// model (default: the GGUF file's directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

impl ModelArgs {
    /// The model with its tokenizer, chat template and generation defaults, its weights in
    /// the CPU decoder's layout when `device` is the CPU.
    pub fn load(&self, device: crate::device::Device) -> Result<TextStack> {
        TextStack::load(
            &self.model,
            self.tokenizer.as_deref(),
            device == crate::device::Device::Cpu,
        )
    }
}

/// A model ready for text generation.
pub struct TextStack {
    /// The decoder on the CPU (shared with its GPU copy under `--device cuda`).
    pub model: Arc<TextModel>,
    /// Where the tokenizer, chat template and generation config were found.
    pub files_dir: PathBuf,
    pub eos_token_ids: Vec<u32>,
    pub tokenizer: Tokenizer,
    pub gen_config: Option<GenerationConfig>,
}

impl TextStack {
    /// `model` is a checkpoint directory, or a GGUF file with `tokenizer_dir` holding
    /// tokenizer.json (and the chat template / generation config) — for GGUF files the
    /// tokenizer directory defaults to the file's directory. `cpu`: arrange the weights for
    /// the CPU decoder.
    pub fn load(model: &Path, tokenizer_dir: Option<&Path>, cpu: bool) -> Result<TextStack> {
        let is_gguf = model
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let files_dir: PathBuf = match (tokenizer_dir, is_gguf) {
            (Some(d), _) => d.to_path_buf(),
            (None, true) => model.parent().unwrap_or(Path::new(".")).to_path_buf(),
            (None, false) => model.to_path_buf(),
        };
        // Cheap checks first, so a missing tokenizer fails before the weights load.
        let tok_path = files_dir.join("tokenizer.json");
        if (is_gguf || model.is_dir()) && !tok_path.exists() {
            anyhow::bail!(
                "{}: missing (text generation needs the tokenizer{})",
                tok_path.display(),
                if is_gguf {
                    "; pass --tokenizer DIR for a GGUF model"
                } else {
                    ""
                }
            );
        }
        let gen_config = match files_dir.join("generation_config.json") {
            p if p.exists() => Some(GenerationConfig::from_file(&p)?),
            _ => None,
        };
        let (model, eos_token_ids) = if is_gguf {
            let m = crate::load::load_any(model)?;
            let eos = gemma3n_model::gguf::gemma3n::model_config(
                &gemma3n_model::gguf::Gguf::open(model)?,
            )?
            .eos_token_ids;
            (m, eos)
        } else {
            let (ckpt, m) = crate::load::load_text_model(model)?;
            (m, ckpt.config.eos_token_ids)
        };
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let model = if cpu {
            crate::load::cpu_layout(model)
        } else {
            model
        };
        Ok(TextStack {
            model: Arc::new(model),
            files_dir,
            eos_token_ids,
            tokenizer,
            gen_config,
        })
    }

    pub fn template(&self) -> Result<ChatTemplate> {
        ChatTemplate::from_checkpoint_dir(&self.files_dir)
            .context("this checkpoint has no chat template (use --raw for a plain prompt)")
    }

    /// Ids that end generation: generation_config's eos ids and config.json's.
    pub fn stop_ids(&self) -> Vec<u32> {
        let mut v = self.eos_token_ids.clone();
        if let Some(g) = &self.gen_config {
            v.extend(&g.eos_token_ids);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    pub fn sampler(&self, a: &SamplingArgs) -> Result<Sampler> {
        let mut p = match &self.gen_config {
            Some(g) => g.sampling.clone(),
            None => SamplingParams::default(),
        };
        if let Some(t) = a.temperature {
            p.temperature = t;
            if t > 0.0 {
                p.do_sample = true;
            }
        }
        if let Some(k) = a.top_k {
            p.top_k = k;
        }
        if let Some(x) = a.top_p {
            p.top_p = x;
        }
        if let Some(x) = a.min_p {
            p.min_p = x;
        }
        if let Some(x) = a.repetition_penalty {
            p.repetition_penalty = x;
        }
        p.seed = a.seed;
        let text_vocab = self
            .tokenizer
            .text_vocab_size()
            .min(self.model.cfg.vocab_size);
        Ok(Sampler::new(p, text_vocab)?)
    }
}

/// Generates from `new_ids` (appended to `session`, on any device), streaming text to
/// stdout.
pub fn stream_generation<M: Decoder>(
    stack: &TextStack,
    session: &mut Session<'_, M>,
    sampler: &mut Sampler,
    new_ids: &[u32],
    embed: Option<EmbedFn<'_>>,
    max_tokens: usize,
) -> Result<(Generation, String)> {
    let stop = stack.stop_ids();
    let mut detok = TokenStream::new(&stack.tokenizer, true);
    let mut text = String::new();
    let mut err: Option<anyhow::Error> = None;
    let mut out = std::io::stdout();
    let mut sample_err = None;
    let greedy = sampler.argmax_vocab();
    // A draw that needs only the top-k candidates: the decoder may send just those (k = 0:
    // every logit).
    let (vocab, k) = sampler.top_k_request().unwrap_or((usize::MAX, 0));
    let mut sample = |scores: &TopScores, prev: &[u32]| match sampler.sample_scores(scores, prev) {
        Ok(id) => id,
        Err(e) => {
            sample_err.get_or_insert(e);
            stop[0]
        }
    };
    let g = session.generate_embedded(
        new_ids,
        embed,
        max_tokens,
        &stop,
        match greedy {
            // Greedy with nothing that changes the scores: the decoder's own argmax.
            Some(n) => Pick::Argmax(n),
            None => Pick::TopK {
                vocab,
                k,
                f: &mut sample,
            },
        },
        &mut |id| match detok.push(id) {
            Ok(piece) => {
                text.push_str(&piece);
                let _ = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
                true
            }
            Err(e) => {
                err = Some(e.into());
                false
            }
        },
    )?;
    if let Some(e) = sample_err {
        return Err(e.into());
    }
    if let Some(e) = err {
        return Err(e);
    }
    let tail = detok.flush()?;
    text.push_str(&tail);
    print!("{tail}");
    let _ = out.flush();
    Ok((g, text))
}

/// Prefill and decode speed on stderr.
pub fn report_speed(g: &Generation) {
    eprintln!(
        "\n[prefill {} tokens: {:.1} tok/s | decode {} tokens: {:.2} tok/s | stop: {:?}]",
        g.prompt_tokens,
        g.prefill_tok_s(),
        g.tokens.len(),
        g.decode_tok_s(),
        g.stop
    );
}
