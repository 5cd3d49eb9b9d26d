//! CPU kernels. Activations are f32; weights are read in their stored dtype.

pub mod matmul;
pub mod ops;

pub use matmul::matmul;
