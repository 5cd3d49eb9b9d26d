//! CPU kernels. Activations are f32; weights are read in their stored dtype.
//!
//! x86-64 kernels use AVX2 + FMA + F16C when the CPU has them (detected at run time); on
//! aarch64 the matmuls (float GEMV and every block format) use NEON, with `SDOT` where the CPU
//! has the dot-product extension. Every kernel has a portable scalar fallback, which is what
//! the other kernels run on aarch64 and what other architectures run.

pub mod bandwidth;
pub mod conformer;
pub mod conv;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod sparse;

pub use matmul::{
    matmul, matmul_many, matmul_scalar, matmul_with, quant_int_max_t, GemmWeight, MatmulPath,
    GEMV_MAX_T,
};

/// Whether the AVX2 + FMA + F16C kernels can run on this CPU (detected once by std, then a
/// relaxed atomic load).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Whether the `gemm` crate runs its AVX-512 kernels here (x86-64-v4: AVX-512 F, BW, CD, DQ
/// and VL).
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the AVX-512 kernels can also use VNNI (`vpdpbusd`: byte products summed in fours
/// into i32 lanes).
#[inline]
pub(crate) fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512() && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the NEON kernels can use the dot-product instructions (`SDOT`; Armv8.4, optional
/// from Armv8.2). NEON itself is part of every aarch64 target.
#[cfg(target_arch = "aarch64")]
#[inline]
pub(crate) fn has_neon_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// `m` rearranged for this CPU's decode kernels, or `None` where its stored layout is the
/// fastest: Q8_0 and Q4_K matrices get their rows interleaved in groups of eight
/// ([`crate::matrix::Layout::Q8_0x8`], [`crate::matrix::Layout::Q4_Kx8`]) on x86-64 with
/// AVX2, where the interleaved kernels stream one contiguous run of bytes per eight rows and
/// scale the eight rows' sums together. The values are unchanged.
pub fn decode_layout(m: &crate::Matrix) -> Option<crate::Matrix> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        return m.interleave8();
    }
    let _ = m;
    None
}
