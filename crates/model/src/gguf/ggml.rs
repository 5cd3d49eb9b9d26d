//! ggml tensor types: ids, block geometry, and the mapping to our `DType`s.
//!
//! A ggml tensor of type T with `ne[0]` elements per row stores each row as
//! `ne[0] / block_size` blocks of `type_size` bytes (plain types have `block_size` 1).

use gemma3n_compute::DType;

use crate::error::{ModelError, Result};

/// Geometry of one ggml type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    /// The id stored in the GGUF tensor info.
    pub id: u32,
    /// ggml's name (`F32`, `Q4_K`, ...).
    pub name: &'static str,
    /// Elements per block (1 for the plain types).
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
}

impl GgmlType {
    /// Bytes of `n` elements (`n` must be a multiple of the block size).
    pub fn bytes_for(&self, n: u64) -> Option<u64> {
        if !n.is_multiple_of(self.block_size as u64) {
            return None;
        }
        (n / self.block_size as u64).checked_mul(self.type_size as u64)
    }

    pub fn is_quantized(&self) -> bool {
        self.block_size > 1
    }
}

const fn t(id: u32, name: &'static str, block_size: usize, type_size: usize) -> GgmlType {
    GgmlType {
        id,
        name,
        block_size,
        type_size,
    }
}

pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_BF16: u32 = 30;

/// The five quantized formats the engine implements (issue 4), with their block geometry.
/// Wiring one to a compute `DType` is one arm in [`ggml_type_to_dtype`].
pub const Q4_0: GgmlType = t(2, "Q4_0", 32, 2 + 16);
pub const Q8_0: GgmlType = t(8, "Q8_0", 32, 2 + 32);
pub const Q4_K: GgmlType = t(12, "Q4_K", 256, 2 + 2 + 128 + 12);
pub const Q5_K: GgmlType = t(13, "Q5_K", 256, 2 + 2 + 128 + 32 + 12);
pub const Q6_K: GgmlType = t(14, "Q6_K", 256, 128 + 64 + 16 + 2);

/// Every ggml type id known to the `gguf` package (gguf-py 0.19, `GGML_QUANT_SIZES`), so
/// that any file's tensor sizes can be validated even when we cannot compute with its type.
pub const GGML_TYPES: &[GgmlType] = &[
    t(GGML_F32, "F32", 1, 4),
    t(GGML_F16, "F16", 1, 2),
    Q4_0,
    t(3, "Q4_1", 32, 2 + 2 + 16),
    t(6, "Q5_0", 32, 2 + 4 + 16),
    t(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    Q8_0,
    t(9, "Q8_1", 32, 4 + 4 + 32),
    t(10, "Q2_K", 256, 2 + 2 + 16 + 64),
    t(11, "Q3_K", 256, 2 + 64 + 32 + 12),
    Q4_K,
    Q5_K,
    Q6_K,
    t(15, "Q8_K", 256, 4 + 256 + 32),
    t(16, "IQ2_XXS", 256, 2 + 64),
    t(17, "IQ2_XS", 256, 2 + 64 + 8),
    t(18, "IQ3_XXS", 256, 2 + 64 + 32),
    t(19, "IQ1_S", 256, 2 + 32 + 16),
    t(20, "IQ4_NL", 32, 2 + 16),
    t(21, "IQ3_S", 256, 2 + 64 + 32 + 8 + 4),
    t(22, "IQ2_S", 256, 2 + 64 + 16),
    t(23, "IQ4_XS", 256, 2 + 2 + 128 + 4),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", 256, 32 + 16 + 8),
    t(GGML_BF16, "BF16", 1, 2),
    t(34, "TQ1_0", 256, 2 + 4 * 13),
    t(35, "TQ2_0", 256, 2 + 64),
    t(39, "MXFP4", 32, 1 + 16),
    t(40, "NVFP4", 64, 4 + 32),
    t(41, "Q1_0", 128, 2 + 16),
];

/// The geometry of ggml type `id`, if known.
pub fn ggml_type(id: u32) -> Option<&'static GgmlType> {
    GGML_TYPES.iter().find(|t| t.id == id)
}

/// ggml's name of type `id` (`"type 99"` when unknown).
pub fn ggml_type_name(id: u32) -> String {
    ggml_type(id)
        .map(|t| t.name.to_string())
        .unwrap_or_else(|| format!("type {id}"))
}

/// The compute `DType` a ggml type is loaded as.
pub fn ggml_type_to_dtype(id: u32) -> Result<DType> {
    match id {
        GGML_F32 => Ok(DType::F32),
        GGML_F16 => Ok(DType::F16),
        GGML_BF16 => Ok(DType::BF16),
        _ => Err(ModelError::Invalid(format!(
            "unsupported GGUF tensor type {id} ({}): supported are F32 (0), F16 (1), BF16 (30)",
            ggml_type_name(id)
        ))),
    }
}

/// The ggml type id a compute `DType` is stored as in a GGUF file.
pub fn dtype_to_ggml_type(d: DType) -> Option<u32> {
    #[allow(unreachable_patterns)]
    match d {
        DType::F32 => Some(GGML_F32),
        DType::F16 => Some(GGML_F16),
        DType::BF16 => Some(GGML_BF16),
        _ => None,
    }
}
