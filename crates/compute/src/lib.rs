//! gemma3n-compute: weight storage, weight formats and the CPU kernels.
//!
//! The model crate talks to this crate through [`Matrix`] (a 2-D weight view over
//! memory-mapped or owned bytes in its stored dtype) and the functions of [`cpu`].

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod matrix;
pub mod quant;
pub mod storage;
#[doc(hidden)]
pub mod testing;

pub use dtype::DType;
pub use matrix::{Layout, Matrix};
pub use storage::Storage;

/// Errors raised by this crate.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("{0}")]
    Invalid(String),
}
