//! Small element-wise and per-row operations (f32).
//!
//! Each public function runs an AVX2/FMA kernel when the CPU has it and the input is long
//! enough to benefit, and the portable version in [`scalar`] otherwise.

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use rayon::prelude::*;

/// Inputs of at least this many elements are split over rayon threads by the functions that
/// support it ([`rms_norm_rows`], [`gelu_tanh`]).
const PAR_MIN: usize = 1 << 18;

/// Elements per rayon task in those functions (a multiple of 8; rounded to whole rows for
/// the norm).
const PAR_CHUNK: usize = 1 << 16;

/// Inputs shorter than this take the portable path (dispatch would cost more than it saves).
#[cfg(target_arch = "x86_64")]
const SIMD_MIN: usize = 16;

/// Whether the AVX2 kernels should handle `len` elements.
#[cfg(target_arch = "x86_64")]
#[inline]
fn use_simd(len: usize) -> bool {
    len >= SIMD_MIN && super::has_avx2()
}

/// Evaluates `$simd` (an unsafe call into [`x86`]) when [`use_simd`] allows it, else
/// `$fallback`.
macro_rules! dispatch {
    ($len:expr, $simd:expr, $fallback:expr) => {{
        #[cfg(target_arch = "x86_64")]
        let r = if use_simd($len) {
            // SAFETY: AVX2, FMA and F16C were detected by `use_simd`; the kernels in `x86`
            // need nothing else (slice lengths are checked by the callers below).
            unsafe { $simd }
        } else {
            $fallback
        };
        #[cfg(not(target_arch = "x86_64"))]
        let r = $fallback;
        r
    }};
}

/// RMSNorm of every `dim`-long row of `x`, in place:
/// `x · (mean(x²) + eps)^(-1/2)`, times `weight` when given (no `1 + w` offset).
pub fn rms_norm_rows(x: &mut [f32], dim: usize, weight: Option<&[f32]>, eps: f32) {
    assert!(dim > 0 || x.is_empty(), "rms_norm_rows: dim 0");
    if x.is_empty() {
        return;
    }
    assert_eq!(x.len() % dim, 0, "rms_norm_rows: length");
    if let Some(w) = weight {
        assert_eq!(w.len(), dim, "rms_norm_rows: weight length");
    }
    let rows = |x: &mut [f32]| {
        for row in x.chunks_exact_mut(dim) {
            let inv = 1.0 / (mean_square(row) + eps).sqrt();
            match weight {
                Some(w) => dispatch!(
                    dim,
                    x86::scale_mul(row, inv, w),
                    scalar::scale_mul(row, inv, w)
                ),
                None => scale(row, inv),
            }
        }
    };
    if x.len() >= PAR_MIN {
        // Whole rows per task: every row is computed exactly as in the sequential loop.
        let chunk = dim * (PAR_CHUNK / dim).max(1);
        x.par_chunks_mut(chunk).for_each(rows);
    } else {
        rows(x);
    }
}

/// `gelu_pytorch_tanh`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, in place.
///
/// Evaluated as the equivalent `x / (1 + exp(-2·√(2/π)·(x + 0.044715·x³)))`, which has no
/// cancellation for negative `x`: relative error about 1e-7·(1 + x²) against the f64 formula.
pub fn gelu_tanh(x: &mut [f32]) {
    if x.len() < PAR_MIN {
        return dispatch!(x.len(), x86::gelu_tanh(x), scalar::gelu_tanh(x));
    }
    // Chunks of a multiple of 8 elements, all through the kernel the whole slice would take:
    // every element goes through the same code (8-lane body or scalar tail) as sequentially.
    #[cfg(target_arch = "x86_64")]
    let simd = use_simd(x.len());
    x.par_chunks_mut(PAR_CHUNK).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C were detected by `use_simd`.
            unsafe { x86::gelu_tanh(c) };
            return;
        }
        scalar::gelu_tanh(c)
    });
}

/// Applies the elementwise op `f` to `dim`-long rows of `x`, each computed exactly as if
/// alone: the kernel choice (8-lane body or scalar tail) depends on the length, so rows are
/// handed over one by one unless every row would take the 8-lane body anyway. Batched rows of
/// several sequences then match each sequence's own results bit for bit.
fn rows_as_alone(x: &mut [f32], dim: usize, f: impl Fn(&mut [f32])) {
    #[cfg(target_arch = "x86_64")]
    let whole = dim.is_multiple_of(8) && use_simd(dim);
    #[cfg(not(target_arch = "x86_64"))]
    let whole = true;
    if whole || dim == 0 || x.len() <= dim {
        f(x);
    } else {
        x.chunks_mut(dim).for_each(f);
    }
}

/// [`gelu_tanh`] on `dim`-long rows, each computed exactly as if alone.
pub fn gelu_tanh_rows(x: &mut [f32], dim: usize) {
    rows_as_alone(x, dim, gelu_tanh);
}

/// Soft-capping, `cap · tanh(x / cap)`, in place (the final logit soft-cap), computed as
/// `sign(x) · cap · (1 - e) / (1 + e)` with `e = e^(-2|x|/cap)`: absolute error within a few
/// 1e-8 of `cap`.
pub fn soft_cap(x: &mut [f32], cap: f32) {
    if x.len() < PAR_MIN {
        return dispatch!(x.len(), x86::soft_cap(x, cap), scalar::soft_cap(x, cap));
    }
    #[cfg(target_arch = "x86_64")]
    let simd = use_simd(x.len());
    x.par_chunks_mut(PAR_CHUNK).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C were detected by `use_simd`.
            unsafe { x86::soft_cap(c, cap) };
            return;
        }
        scalar::soft_cap(c, cap)
    });
}

/// [`soft_cap`] on `dim`-long rows, each computed exactly as if alone: batched logits match
/// each sequence's own bit for bit.
pub fn soft_cap_rows(x: &mut [f32], dim: usize, cap: f32) {
    rows_as_alone(x, dim, |r| soft_cap(r, cap));
}

/// SiLU, `x · sigmoid(x)`, in place (computed as `x / (1 + e^(-x))`).
pub fn silu(x: &mut [f32]) {
    if x.len() < PAR_MIN {
        return dispatch!(x.len(), x86::silu(x), scalar::silu(x));
    }
    #[cfg(target_arch = "x86_64")]
    let simd = use_simd(x.len());
    x.par_chunks_mut(PAR_CHUNK).for_each(|c| {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: AVX2, FMA and F16C were detected by `use_simd`.
            unsafe { x86::silu(c) };
            return;
        }
        scalar::silu(c)
    });
}

/// Gated linear unit over rows: each `2·dim`-long row `[a, b]` of `x` gives the `dim`-long
/// row `a · sigmoid(b)` of the result (PyTorch's `glu` on the last axis).
pub fn glu_rows(x: &[f32], dim: usize) -> Vec<f32> {
    assert!(dim > 0, "glu_rows: dim 0");
    assert_eq!(x.len() % (2 * dim), 0, "glu_rows: length");
    let mut out = vec![0f32; x.len() / 2];
    let row = |(src, dst): (&[f32], &mut [f32])| {
        let (a, b) = src.split_at(dim);
        dispatch!(dim, x86::glu(a, b, dst), scalar::glu(a, b, dst))
    };
    if x.len() >= PAR_MIN {
        x.par_chunks(2 * dim)
            .zip(out.par_chunks_mut(dim))
            .with_min_len((PAR_CHUNK / dim).max(1))
            .for_each(row);
    } else {
        x.chunks(2 * dim).zip(out.chunks_mut(dim)).for_each(row);
    }
    out
}

/// Softmax in place over the whole slice.
pub fn softmax(x: &mut [f32]) {
    dispatch!(x.len(), x86::softmax(x), scalar::softmax(x))
}

/// Dot product.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths");
    dispatch!(a.len(), x86::dot(a, b), scalar::dot(a, b))
}

/// `y += alpha · x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: lengths");
    dispatch!(x.len(), x86::axpy(alpha, x, y), scalar::axpy(alpha, x, y))
}

/// Checks the shapes shared by [`dot_rows`] and [`axpy_rows`]; returns the vector length `d`.
fn rows_shape(vecs: usize, m: usize, rows: &[f32], stride: usize, n: usize, name: &str) -> usize {
    assert!(
        m > 0 && vecs.is_multiple_of(m),
        "{name}: {vecs} values for {m} vectors"
    );
    let d = vecs / m;
    assert!(
        n == 0 || (stride >= d && rows.len() >= (n - 1) * stride + d),
        "{name}: rows"
    );
    d
}

/// Scores of `m` query vectors against `n` key rows (grouped-query attention: each key row is
/// read once for every query head that shares it): `out[i·n + j] = q_i · k_j` with
/// `q_i = q[i·d..(i+1)·d]`, `k_j = k[j·stride..j·stride + d]`, `d = q.len() / m`.
pub fn dot_rows(q: &[f32], m: usize, k: &[f32], stride: usize, n: usize, out: &mut [f32]) {
    let d = rows_shape(q.len(), m, k, stride, n, "dot_rows");
    assert_eq!(out.len(), m * n, "dot_rows: out length");
    dispatch!(
        d,
        x86::dot_rows(q, m, k, stride, n, out),
        scalar::dot_rows(q, m, k, stride, n, out)
    )
}

/// The weighted sums of attention for `m` heads that share value rows:
/// `y_i += Σ_j a[i·n + j] · v_j` with `y_i = y[i·d..(i+1)·d]`, `v_j = v[j·stride..j·stride + d]`,
/// `d = y.len() / m`.
pub fn axpy_rows(a: &[f32], m: usize, v: &[f32], stride: usize, n: usize, y: &mut [f32]) {
    let d = rows_shape(y.len(), m, v, stride, n, "axpy_rows");
    assert_eq!(a.len(), m * n, "axpy_rows: weights length");
    dispatch!(
        d,
        x86::axpy_rows(a, m, v, stride, n, y),
        scalar::axpy_rows(a, m, v, stride, n, y)
    )
}

/// `x *= s`.
pub fn scale(x: &mut [f32], s: f32) {
    dispatch!(x.len(), x86::scale(x, s), scalar::scale(x, s))
}

/// Mean of squares.
pub fn mean_square(x: &[f32]) -> f32 {
    let ss = dispatch!(x.len(), x86::sum_squares(x), scalar::sum_squares(x));
    ss / x.len() as f32
}

/// Portable implementations (the reference for the SIMD kernels, and what other
/// architectures run).
pub mod scalar {
    /// `x[i] *= s · w[i]` (the second half of an RMSNorm with weight).
    pub fn scale_mul(x: &mut [f32], s: f32, w: &[f32]) {
        x.iter_mut().zip(w).for_each(|(v, w)| *v = *v * s * w);
    }

    /// See [`super::gelu_tanh`].
    pub fn gelu_tanh(x: &mut [f32]) {
        const C2: f32 = -2.0 * 0.797_884_6; // -2·sqrt(2/pi)
        for v in x.iter_mut() {
            let u = *v;
            let e = (C2 * u * (1.0 + 0.044715 * u * u)).exp();
            *v = u / (1.0 + e);
        }
    }

    /// See [`super::soft_cap`].
    pub fn soft_cap(x: &mut [f32], cap: f32) {
        for v in x.iter_mut() {
            let e = ((-2.0 / cap) * v.abs()).exp();
            *v = (cap * (1.0 - e) / (1.0 + e)).copysign(*v);
        }
    }

    /// See [`super::silu`].
    pub fn silu(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v /= 1.0 + (-*v).exp();
        }
    }

    /// One row of [`super::glu_rows`].
    pub fn glu(a: &[f32], b: &[f32], out: &mut [f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a / (1.0 + (-b).exp());
        }
    }

    /// See [`super::softmax`].
    pub fn softmax(x: &mut [f32]) {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // The sum is kept in f64 so long rows lose no precision to sequential rounding.
        let mut s = 0f64;
        for v in x.iter_mut() {
            *v = (*v - m).exp();
            s += *v as f64;
        }
        let inv = (1.0 / s) as f32;
        x.iter_mut().for_each(|v| *v *= inv);
    }

    /// Dot product with 8 independent partial sums.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let mut ca = a.chunks_exact(8);
        let mut cb = b.chunks_exact(8);
        for (p, q) in (&mut ca).zip(&mut cb) {
            for l in 0..8 {
                acc[l] += p[l] * q[l];
            }
        }
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(p, q)| p * q)
            .sum();
        acc.iter().sum::<f32>() + tail
    }

    /// `y += alpha · x`.
    pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
    }

    /// See [`super::dot_rows`].
    pub fn dot_rows(q: &[f32], m: usize, k: &[f32], stride: usize, n: usize, out: &mut [f32]) {
        let d = q.len() / m;
        for (i, qi) in q.chunks_exact(d).enumerate() {
            for j in 0..n {
                out[i * n + j] = dot(qi, &k[j * stride..j * stride + d]);
            }
        }
    }

    /// See [`super::axpy_rows`].
    pub fn axpy_rows(a: &[f32], m: usize, v: &[f32], stride: usize, n: usize, y: &mut [f32]) {
        let d = y.len() / m;
        for (i, yi) in y.chunks_exact_mut(d).enumerate() {
            for j in 0..n {
                axpy(a[i * n + j], &v[j * stride..j * stride + d], yi);
            }
        }
    }

    /// `x *= s`.
    pub fn scale(x: &mut [f32], s: f32) {
        x.iter_mut().for_each(|v| *v *= s);
    }

    /// Σ x².
    pub fn sum_squares(x: &[f32]) -> f32 {
        dot(x, x)
    }
}

#[cfg(test)]
mod tests;
