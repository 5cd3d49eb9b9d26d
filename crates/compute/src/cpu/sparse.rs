//! Kernels that read only selected rows of a weight matrix: the exact sparse FFN of
//! Gemma 3n's activation-sparse layers, where after the Gaussian top-k only ~5% of the
//! hidden units are non-zero, so only their rows of `up` and of `downᵀ` are needed.

use rayon::prelude::*;

use super::{ops, pool};
use crate::matrix::Matrix;

/// Rows per parallel task (a few KB of weights each, enough to amortise the fork).
const ROWS_PER_TASK: usize = 64;

/// `out[j] = w[rows[j]] · x` for each selected row (`x` has `w.cols()` elements).
/// Block-format rows go through the int8 kernels: the same values as the dense quantized
/// matmul gives those rows.
pub fn gather_dot(w: &Matrix, rows: &[usize], x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), w.cols(), "gather_dot: x length");
    assert_eq!(out.len(), rows.len(), "gather_dot: out length");
    if w.dtype().is_quantized() {
        return super::matmul::gather_rows_quant(x, w, rows, out, true);
    }
    pool::for_each_chunk_mut(out, ROWS_PER_TASK, |c, o| {
        let r = &rows[c * ROWS_PER_TASK..][..o.len()];
        let mut buf = vec![0f32; w.cols()];
        for (o, &row) in o.iter_mut().zip(r) {
            w.row_to_f32(row, &mut buf);
            *o = ops::dot(&buf, x);
        }
    });
}

/// `out = Σ_j a[j] · w[rows[j]]` (`out` has `w.cols()` elements and is overwritten).
pub fn weighted_row_sum(w: &Matrix, rows: &[usize], a: &[f32], out: &mut [f32]) {
    assert_eq!(a.len(), rows.len(), "weighted_row_sum: a length");
    assert_eq!(out.len(), w.cols(), "weighted_row_sum: out length");
    let n = w.cols();
    // Each task sums its run of rows into its own slot; the slots are added in order after.
    let tasks = rows.len().div_ceil(ROWS_PER_TASK);
    let mut partial = vec![0f32; tasks * n];
    pool::for_each_chunk_mut(&mut partial, n.max(1), |c, acc| {
        let r = &rows[c * ROWS_PER_TASK..((c + 1) * ROWS_PER_TASK).min(rows.len())];
        let a = &a[c * ROWS_PER_TASK..][..r.len()];
        let mut buf = Vec::new();
        for (&row, &aj) in r.iter().zip(a) {
            // f32 rows (the transposed `down` copies) are read in place.
            let v = match w.row_f32(row) {
                Some(v) => v,
                None => {
                    buf.resize(n, 0.0);
                    w.row_to_f32(row, &mut buf);
                    &buf
                }
            };
            ops::axpy(aj, v, acc);
        }
    });
    out.fill(0.0);
    for acc in partial.chunks_exact(n.max(1)) {
        ops::axpy(1.0, acc, out);
    }
}

/// The transpose of `w`, `[cols, rows]`: in its own dtype for float dtypes, in f32 for block
/// formats (a block value `d · q` is exact in f32, so the copy holds the same numbers).
pub fn transpose(w: &Matrix) -> Matrix {
    let (r, c) = (w.rows(), w.cols());
    if w.dtype().is_quantized() {
        let dense = w.to_f32_vec();
        let mut bytes = crate::storage::AlignedBytes::zeroed(r * c * 4);
        bytes
            .as_mut_slice()
            .par_chunks_mut(r * 4)
            .enumerate()
            .for_each(|(j, orow)| {
                for (i, o) in orow.chunks_exact_mut(4).enumerate() {
                    o.copy_from_slice(&dense[i * c + j].to_le_bytes());
                }
            });
        return Matrix::owned(bytes, crate::DType::F32, c, r);
    }
    let es = w.dtype().size();
    let mut bytes = crate::storage::AlignedBytes::zeroed(r * c * es);
    let out = bytes.as_mut_slice();
    // Column blocks of the output are independent: parallel over output rows.
    out.par_chunks_mut(r * es)
        .enumerate()
        .for_each(|(j, orow)| {
            for i in 0..r {
                let src = &w.row_bytes(i)[j * es..(j + 1) * es];
                orow[i * es..(i + 1) * es].copy_from_slice(src);
            }
        });
    Matrix::owned(bytes, w.dtype(), c, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn sparse_kernels_equal_naive_sums() {
        let (r, c) = (300, 70);
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let w = Matrix::from_f32_as(&data(r * c, 7), r, c, dt);
            let dense = w.to_f32_vec();
            let rows: Vec<usize> = (0..r).filter(|i| i % 7 == 3 || i % 11 == 0).collect();
            let x = data(c, 3);
            let mut out = vec![0f32; rows.len()];
            gather_dot(&w, &rows, &x, &mut out);
            for (j, &row) in rows.iter().enumerate() {
                let want: f64 = (0..c)
                    .map(|k| dense[row * c + k] as f64 * x[k] as f64)
                    .sum();
                assert!(
                    (out[j] as f64 - want).abs() < 1e-4,
                    "{dt} gather_dot row {row}"
                );
            }
            let a = data(rows.len(), 9);
            let mut sum = vec![0f32; c];
            weighted_row_sum(&w, &rows, &a, &mut sum);
            for k in 0..c {
                let want: f64 = rows
                    .iter()
                    .zip(&a)
                    .map(|(&row, &aj)| aj as f64 * dense[row * c + k] as f64)
                    .sum();
                assert!(
                    (sum[k] as f64 - want).abs() < 1e-4,
                    "{dt} weighted_row_sum col {k}"
                );
            }
            let t = transpose(&w);
            assert_eq!((t.rows(), t.cols()), (c, r));
            let td = t.to_f32_vec();
            for i in 0..r {
                for k in 0..c {
                    assert_eq!(td[k * r + i], dense[i * c + k]);
                }
            }
            // Views: a row prefix of the transpose is a column prefix of the original.
            let tp = t.row_prefix(40);
            let mut o = vec![0f32; 1];
            gather_dot(&tp, &[39], &data(r, 1), &mut o);
            assert!(o[0].is_finite());
        }
        let mut empty = vec![1f32; 5];
        weighted_row_sum(&Matrix::from_f32(&[0.0; 10], 2, 5), &[], &[], &mut empty);
        assert_eq!(empty, vec![0.0; 5]);
    }
}
