//! Element types a weight can be stored in.

use std::fmt;

/// Element type of a stored weight: a float type, or one of the GGUF/ggml block formats
/// (bit-compatible with ggml's blocks; see [`crate::quant`] for the layouts).
///
/// Block formats store `block_size()` consecutive elements of a row in `block_bytes()`
/// bytes; a row of a block-format matrix holds a whole number of blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// 32 elements: f16 scale `d`, 32 x i8; value = d · q.
    Q8_0,
    /// 32 elements: f16 scale `d`, 16 bytes of 4-bit `q`; value = d · (q - 8).
    Q4_0,
    /// 256 elements: f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block scales and mins, 128
    /// bytes of 4-bit `q`; value = d · sc · q - dmin · m (8 sub-blocks of 32).
    Q4_K,
    /// 256 elements: as Q4_K plus a fifth bit per element (32 bytes `qh`).
    Q5_K,
    /// 256 elements: 6-bit `q` (128 bytes low 4 bits, 64 bytes high 2 bits), 16 x i8
    /// sub-block scales, f16 `d`; value = d · sc · (q - 32) (16 sub-blocks of 16).
    Q6_K,
    /// 256 elements: f32 `d`, 256 x i8, 16 x i16 sums of 16 consecutive `q`. ggml's
    /// activation format for the K-quant dot products (rarely a weight format).
    Q8_K,
}

impl DType {
    /// Bytes per element of a float type.
    ///
    /// # Panics
    /// For block formats, which have no whole number of bytes per element: use
    /// [`DType::block_size`], [`DType::block_bytes`] or [`DType::row_bytes`].
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            q => panic!("DType::size: {q} is a block format (use block_bytes/row_bytes)"),
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 => 32,
            DType::Q4_K | DType::Q5_K | DType::Q6_K | DType::Q8_K => 256,
        }
    }

    /// Bytes per block (the element size for the float types).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
            DType::Q8_K => 292,
        }
    }

    /// Whether this is a block (quantized) format.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of `n` consecutive elements of a row.
    ///
    /// # Panics
    /// If `n` is not a multiple of [`DType::block_size`].
    pub fn row_bytes(self, n: usize) -> usize {
        let bs = self.block_size();
        assert!(
            n.is_multiple_of(bs),
            "{self}: {n} elements is not a whole number of {bs}-element blocks"
        );
        n / bs * self.block_bytes()
    }

    /// The ggml type id (`GGMLQuantizationType`) of this dtype.
    pub fn ggml_type(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q8_0 => 8,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::Q8_K => 15,
            DType::BF16 => 30,
        }
    }

    /// The dtype of a ggml type id, if supported.
    pub fn from_ggml_type(id: u32) -> Option<DType> {
        [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::Q8_0,
            DType::Q4_0,
            DType::Q4_K,
            DType::Q5_K,
            DType::Q6_K,
            DType::Q8_K,
        ]
        .into_iter()
        .find(|d| d.ggml_type() == id)
    }

    /// Parses a safetensors dtype string ("F32", "F16", "BF16").
    pub fn from_safetensors(s: &str) -> Option<DType> {
        match s {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            _ => None,
        }
    }

    /// The safetensors name of this dtype.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            q => panic!("{q} has no safetensors name"),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
            DType::Q8_K => "q8_k",
        };
        f.write_str(s)
    }
}

/// bf16 bits -> f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// f16 bits -> f32 (exact).
#[inline(always)]
pub fn f16_to_f32(b: u16) -> f32 {
    half::f16::from_bits(b).to_f32()
}

/// f32 -> f16 bits, round to nearest even.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}
