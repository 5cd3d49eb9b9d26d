//! `--device cpu|cuda[:N]`: where the text decoder runs; `--activation-parts` and
//! `--prefill-rows`: how exactly, and in what pieces, a GPU prefill multiplies.

use anyhow::{bail, Result};

/// The device flag shared by the commands that run the decoder.
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to run the text decoder: cpu, cuda or cuda:N (a CUDA GPU; this binary must be
    /// built with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// With --device cuda: the bf16 parts prefill GEMMs split their f32 activations into:
    /// 3 (default, near-f32 results), 2 (about 16 bits) or 1 (one bf16 rounding, as a bf16
    /// model in PyTorch computes: the fastest prefill).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub activation_parts: u8,
    /// With --device cuda: the most prompt rows one GPU prefill pass takes (default 512;
    /// longer prompts go in pieces). The device workspace grows with it: 2048 runs a
    /// 2048-token E4B prompt in one pass, on the fused flash-attention kernel when
    /// --activation-parts is 1 (about 0.9 GB more device memory, a third less time).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub prefill_rows: Option<u32>,
}

/// A parsed `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl DeviceArgs {
    pub fn parse(&self) -> Result<Device> {
        let s = self.device.trim();
        if s == "cpu" {
            if self.activation_parts != 3 {
                bail!(
                    "--activation-parts {} applies to --device cuda only (the CPU decoder multiplies in f32)",
                    self.activation_parts
                );
            }
            if let Some(rows) = self.prefill_rows {
                bail!("--prefill-rows {rows} applies to --device cuda only");
            }
            return Ok(Device::Cpu);
        }
        let ordinal = match s {
            "cuda" => Some(0),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()),
        };
        match ordinal {
            Some(n) if cfg!(feature = "cuda") => Ok(Device::Cuda(n)),
            Some(_) => bail!(
                "--device {s}: this gemma3n was built without CUDA support (build it with `cargo build --release --features cuda`)"
            ),
            None => bail!("--device: unknown device `{s}` (expected cpu, cuda or cuda:N)"),
        }
    }
}

/// Uploads a loaded decoder to GPU `ordinal`, with a progress bar; its prefills split their
/// activations into bf16 parts and run in pieces as `args` says (`--activation-parts`,
/// `--prefill-rows`).
#[cfg(feature = "cuda")]
pub fn to_gpu(
    model: std::sync::Arc<gemma3n_model::TextModel>,
    ordinal: usize,
    args: &DeviceArgs,
) -> Result<gemma3n_model::text::cuda::CudaTextModel> {
    use anyhow::Context;
    use indicatif::{ProgressBar, ProgressStyle};
    let gpu = gemma3n_compute::cuda::Gpu::open(ordinal)
        .with_context(|| format!("cannot open CUDA device {ordinal}"))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("uploading weights {bar:40} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_message(gpu.describe());
    let mut m = gemma3n_model::text::cuda::CudaTextModel::new(model, gpu, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .context("cannot upload the text decoder to the GPU")?;
    bar.finish_and_clear();
    m.set_activation_parts(usize::from(args.activation_parts));
    if let Some(rows) = args.prefill_rows {
        m.set_prefill_rows(rows as usize);
    }
    Ok(m)
}
