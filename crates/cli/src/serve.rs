//! `gemma3n serve`: the OpenAI-compatible HTTP server (crates/server).

use anyhow::Result;
use gemma3n_engine::SamplingParams;
use gemma3n_server::{Model, Options};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: crate::text::ModelArgs,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API routes.
    #[arg(long)]
    api_key: Option<String>,
    /// Requests decoded together in one batched forward pass per step.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Prompt tokens prefilled per step: a long prompt goes in pieces between the decode steps
    /// of the running requests.
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Requests that may wait beyond the running ones; more are answered 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    /// Base of the model ids (`NAME-E4B`, `NAME-E2B`, ... for an E4B-shaped model).
    #[arg(long, default_value = "gemma-3n")]
    served_model_name: String,
    #[command(flatten)]
    device: crate::device::DeviceArgs,
    /// Do not load the vision and audio towers (saves memory; image and audio parts are
    /// then refused).
    #[arg(long)]
    text_only: bool,
}

pub fn main(a: Args, spawn: gemma3n_server::Spawn) -> Result<()> {
    let device = a.device.parse()?;
    if let Some(rows) = a
        .device
        .prefill_rows
        .filter(|&r| r as usize > a.prefill_chunk)
    {
        eprintln!(
            "warning: --prefill-rows {rows} has no effect beyond --prefill-chunk {}: the server \
             prefills at most that many prompt tokens per step (a larger --prefill-chunk \
             prefills longer pieces, and delays the running requests' tokens more)",
            a.prefill_chunk
        );
    }
    let stack = a.model.load(device)?;
    let template = stack.template().ok();
    let stop_ids = stack.stop_ids();
    let defaults = match &stack.gen_config {
        Some(g) => g.sampling.clone(),
        None => SamplingParams::default(),
    };
    // The towers, when the checkpoint has them (image and audio parts need them).
    let (vision, audio) = match gemma3n_model::Checkpoint::open(&a.model.model) {
        Ok(ckpt) if !a.text_only => (
            ckpt.config
                .vision
                .is_some()
                .then(|| gemma3n_model::vision::VisionModel::load(&ckpt))
                .transpose()?,
            ckpt.config
                .audio
                .is_some()
                .then(|| gemma3n_model::audio::AudioModel::load(&ckpt))
                .transpose()?,
        ),
        _ => (None, None),
    };
    let decoder: Option<std::sync::Arc<dyn gemma3n_engine::AnyDecoder>> = match device {
        crate::device::Device::Cpu => None,
        #[cfg(feature = "cuda")]
        crate::device::Device::Cuda(n) => Some(std::sync::Arc::new(crate::device::to_gpu(
            stack.model.clone(),
            n,
            &a.device,
        )?)),
        #[cfg(not(feature = "cuda"))]
        crate::device::Device::Cuda(_) => unreachable!("parse refuses cuda without the feature"),
    };
    let model = Model {
        vision,
        audio,
        decoder,
        // Shared with the GPU copy, which reads its configuration and per-layer table.
        text: stack.model,
        tokenizer: stack.tokenizer,
        template,
        stop_ids,
        defaults,
        name: a.served_model_name,
    };
    gemma3n_server::run(
        model,
        Options {
            host: a.host,
            port: a.port,
            api_key: a.api_key,
            max_batch: a.max_batch.max(1),
            prefill_chunk: a.prefill_chunk.max(1),
            max_queue: a.max_queue.max(1),
            max_body: a.max_body_mib.max(1) << 20,
        },
        spawn,
    )
}
