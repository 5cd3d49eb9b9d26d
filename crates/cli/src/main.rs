//! The `gemma3n` command-line tool.

mod audio;
mod bench;
mod bench_audio;
#[cfg(feature = "cuda")]
mod bench_cuda;
mod bench_vision;
mod chat;
mod device;
mod images;
mod inspect;
mod load;
mod logits;
#[cfg(feature = "cuda")]
mod parity;
mod quantize;
mod run;
mod serve;
mod slice;
mod text;
mod tokenize;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gemma3n", version, about = "Gemma 3n inference engine")]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Read weight files into memory (on transparent huge pages where the kernel has them)
    /// instead of memory-mapping them: a slower load, a faster decode (fewer TLB misses).
    #[arg(long, global = true)]
    no_mmap: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate a reply to one prompt, streamed to stdout.
    Run(run::Args),
    /// An interactive multi-turn conversation (/reset, /exit).
    Chat(chat::Args),
    /// Write a checkpoint as a Gemma 3n GGUF file (f16, bf16, q8_0, q4_0, q4_k_m, ...).
    Quantize(quantize::Args),
    /// Write a MatFormer slice of a checkpoint as a standalone checkpoint.
    Slice(slice::Args),
    /// Print the token ids of a text as JSON.
    Tokenize(tokenize::Args),
    /// One prefill over token ids; writes every position's logits to a safetensors file.
    Logits(logits::Args),
    /// Config summary, parameter counts, bytes per token, memory plan.
    Inspect(inspect::Args),
    /// Prefill and decode speed, effective GB/s and % of memory bandwidth.
    Bench(bench::Args),
    /// The CUDA decoder against the CPU decoder on a checkpoint (logit error, greedy
    /// agreement); non-zero exit on failure.
    #[cfg(feature = "cuda")]
    Parity(parity::Args),
    /// An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models).
    Serve(serve::Args),
}

/// Keeps freed memory of up to 32 MiB a block in the process for reuse. The towers and long
/// prefills allocate and free activations of several MiB per layer. By default glibc returns
/// them to the kernel (mmap above a threshold that moves with use, heap trimming, and the
/// per-thread arenas' heaps unmapped when empty), so every layer faulted in and zeroed fresh
/// pages again: about 100,000 faults per pass of the audio tower, none with these settings.
/// One arena: the threads' few large allocations do not contend.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's thresholds; called before any thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() {
    // Die quietly on a closed pipe (`gemma3n inspect ... | head`), as command-line tools do,
    // instead of panicking in println!.
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    if cli.threads == Some(0) {
        eprintln!("error: --threads must be at least 1");
        std::process::exit(2);
    }
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(cli.threads.unwrap_or(0))
        .stack_size(8 << 20)
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot start the worker threads: {e}");
            std::process::exit(1);
        }
    };
    gemma3n_compute::storage::set_read_files(cli.no_mmap);
    // The command itself runs on one of the pool's threads: each parallel operation then
    // starts with the caller already working and the other workers spinning nearby, instead
    // of a thread outside the pool handing the job over and sleeping until it is done (two
    // wake-ups per matmul; E2B Q8_0 decode does about 250 per token).
    let r = match cli.cmd {
        // The server's own threads handle HTTP; its generation worker runs on the pool.
        Cmd::Serve(a) => {
            let pool = std::sync::Arc::new(pool);
            serve::main(a, Box::new(move |f| pool.spawn(f)))
        }
        cmd => pool.install(move || run_command(cmd)),
    };
    if let Err(e) = r {
        eprintln!("error: {}", describe(&e));
        std::process::exit(1);
    }
}

fn run_command(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => run::main(a),
        Cmd::Chat(a) => chat::main(a),
        Cmd::Tokenize(a) => tokenize::main(a),
        Cmd::Slice(a) => slice::main(a),
        Cmd::Quantize(a) => quantize::main(a),
        Cmd::Logits(a) => logits::main(a),
        Cmd::Inspect(a) => inspect::main(a),
        Cmd::Bench(a) => bench::main(a),
        #[cfg(feature = "cuda")]
        Cmd::Parity(a) => parity::main(a),
        Cmd::Serve(_) => unreachable!("handled in main"),
    }
}

/// The error and its causes, each cause once: errors that already quote their cause in
/// their own message (I/O errors naming the file) do not repeat it.
fn describe(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}
