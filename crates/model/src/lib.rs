//! gemma3n-model: configuration, checkpoint readers, the Gemma 3n text decoder, the vision
//! tower and the audio front end (decoding, log-mel features).

pub mod audio;
pub mod checkpoint;
pub mod config;
pub mod embedder;
pub mod error;
pub mod gguf;
pub mod matformer;
pub mod prompt;
pub mod quantize;
pub mod safetensors;
pub mod synthetic;
pub mod text;
pub mod vision;

pub use checkpoint::Checkpoint;
pub use config::{ModelConfig, TextConfig};
pub use error::{ModelError, Result};
pub use matformer::{Slice, SlicePlan};
pub use text::{KvCache, Logits, TextModel};
