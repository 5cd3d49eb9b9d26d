//! Every matmul path against a naive f64 reference, on odd shapes and strided views.

use super::*;
use crate::dtype::DType;
use crate::testing::values;

/// Checks `got` against the f64 reference computed from the weight values the view holds.
/// The bound is relative to Σ|x·w| (the scale of the rounding errors of any summation order).
pub(super) fn check(x: &[f32], t: usize, w: &Matrix, got: &[f32], what: &str) {
    let (n, k) = (w.rows(), w.cols());
    let wf = w.to_f32_vec();
    for i in 0..t {
        for j in 0..n {
            let (mut s, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let p = x[i * k + kk] as f64 * wf[j * k + kk] as f64;
                s += p;
                mag += p.abs();
            }
            let g = got[i * n + j] as f64;
            let err = (g - s).abs();
            assert!(
                err <= 1e-5 * mag + 1e-30,
                "{what}: out[{i},{j}] = {g}, expected {s} (err {err:e}, scale {mag:e})"
            );
        }
    }
}

const PATHS: [MatmulPath; 4] = [
    MatmulPath::Auto,
    MatmulPath::Gemv,
    MatmulPath::Gemm,
    MatmulPath::Scalar,
];
const DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

fn run_all(x: &[f32], t: usize, w: &Matrix, what: &str) {
    for path in PATHS {
        let mut out = vec![f32::NAN; t * w.rows()];
        matmul_with(x, t, w, &mut out, path);
        check(x, t, w, &out, &format!("{what} {path:?} t={t} {w:?}"));
    }
}

#[test]
fn odd_shapes_all_paths_all_dtypes() {
    let shapes = [
        (1, 1),
        (1, 37),
        (3, 8),
        (5, 16),
        (13, 65),
        (7, 31),
        (37, 129),
        (20, 256),
    ];
    let ts = [1, 2, 3, 4, 5, 6, 7, 8, 16, 33];
    for dt in DTYPES {
        for &(n, k) in &shapes {
            let w = Matrix::from_f32_as(&values(n * k, (n * 31 + k) as u64), n, k, dt);
            for &t in &ts {
                let x = values(t * k, (t * 7 + k) as u64 + 1);
                run_all(&x, t, &w, "dense");
            }
        }
    }
}

#[test]
fn t_130_and_parallel_chunks() {
    // Large enough (> 128 KiB of weights) that both paths split the rows over threads.
    for dt in DTYPES {
        let (n, k) = (301, 203);
        let w = Matrix::from_f32_as(&values(n * k, 5), n, k, dt);
        for t in [1, 3, 4, 130] {
            let x = values(t * k, 11 + t as u64);
            run_all(&x, t, &w, "parallel");
        }
    }
}

#[test]
fn activation_blocks_in_gemv() {
    // k = 2050: the GEMV path takes activation rows in blocks of 16, so t = 37 spans blocks
    // 16 + 16 + 5.
    for dt in DTYPES {
        let (n, k) = (9, 2050);
        let w = Matrix::from_f32_as(&values(n * k, 21), n, k, dt);
        for t in [17, 37] {
            let x = values(t * k, 40 + t as u64);
            run_all(&x, t, &w, "blocks");
        }
    }
}

#[test]
fn views_with_stride_and_offset() {
    for dt in DTYPES {
        let (n, k) = (70, 301);
        let full = Matrix::from_f32_as(&values(n * k, 99), n, k, dt);
        let views = [
            ("col_prefix", full.col_prefix(133)),
            ("row_range", full.row_range(9, 45)),
            ("row_range+col_prefix", full.row_range(3, 61).col_prefix(77)),
            ("row_prefix+col_prefix", full.row_prefix(1).col_prefix(9)),
            ("col_prefix 1", full.col_prefix(1)),
        ];
        for (name, v) in &views {
            assert!(v.row_stride() >= v.cols());
            for t in [1, 2, 3, 4, 5, 7, 33] {
                let x = values(t * v.cols(), t as u64);
                run_all(&x, t, v, name);
            }
        }
    }
}

#[test]
fn scalar_matches_simd_paths() {
    let (n, k) = (67, 515);
    for dt in DTYPES {
        let w = Matrix::from_f32_as(&values(n * k, 3), n, k, dt);
        for t in [1, 2, 3, 4, 6, 17] {
            let x = values(t * k, 100 + t as u64);
            let mut s = vec![0.0; t * n];
            matmul_scalar(&x, t, &w, &mut s);
            for path in [MatmulPath::Gemv, MatmulPath::Gemm, MatmulPath::Auto] {
                let mut o = vec![0.0; t * n];
                matmul_with(&x, t, &w, &mut o, path);
                for (a, b) in s.iter().zip(&o) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                        "{dt} {path:?} t={t}"
                    );
                }
            }
        }
    }
}

#[test]
fn empty_dimensions() {
    let w = Matrix::from_f32(&[], 0, 5);
    let mut out = vec![];
    matmul(&[0.0; 10], 2, &w, &mut out);
    let w = Matrix::from_f32(&[], 3, 0);
    let mut out = vec![1.0; 6];
    for path in PATHS {
        matmul_with(&[], 2, &w, &mut out, path);
        assert_eq!(out, vec![0.0; 6]);
    }
    let w = Matrix::from_f32(&[1.0; 6], 3, 2);
    matmul(&[], 0, &w, &mut []);
}

#[test]
fn widen_matches_scalar() {
    for dt in DTYPES {
        for len in [0, 1, 7, 8, 9, 63, 64, 100] {
            let m = Matrix::from_f32_as(&values(len, len as u64), 1, len, dt);
            let b = m.row_bytes(0);
            let (mut a, mut s) = (vec![0.0; len], vec![0.0; len]);
            widen(dt, b, &mut a, true);
            convert::widen_scalar(dt, b, &mut s);
            assert_eq!(a, s);
            assert_eq!(a, m.to_f32_vec());
        }
    }
}

#[test]
fn gathered_quant_rows_equal_the_dense_matmul() {
    // The sparse FFN reads selected rows only; each must equal what the dense t = 1 matmul
    // gives that row (same activation quantization, same kernel), SIMD and scalar.
    let (n, k) = (203, 512);
    let x = values(k, 4);
    for dt in crate::testing::QUANT_DTYPES {
        let w = Matrix::from_f32(&values(n * k, 9), n, k).quantize(dt);
        let rows: Vec<usize> = (0..n).filter(|r| r % 5 == 1 || r % 17 == 0).rev().collect();
        for simd in [true, false] {
            let path = if simd {
                MatmulPath::Gemv
            } else {
                MatmulPath::Scalar
            };
            let mut dense = vec![0f32; n];
            matmul_with(&x, 1, &w, &mut dense, path);
            let mut got = vec![0f32; rows.len()];
            gather_rows_quant(&x, &w, &rows, &mut got, simd);
            for (g, &r) in got.iter().zip(&rows) {
                assert_eq!(*g, dense[r], "{dt} simd={simd} row {r}");
            }
            // Row views (a MatFormer prefix) keep their row indices.
            let v = w.row_prefix(100);
            let sub: Vec<usize> = rows.iter().copied().filter(|&r| r < 100).collect();
            let mut got = vec![0f32; sub.len()];
            gather_rows_quant(&x, &v, &sub, &mut got, simd);
            for (g, &r) in got.iter().zip(&sub) {
                assert_eq!(*g, dense[r], "{dt} view row {r}");
            }
        }
    }
}

#[test]
fn rows_of_a_batch_equal_each_row_alone() {
    // Batched decode is exact only if a row's output does not depend on the other rows: every
    // tile shape (1 to 4 activation rows, one or several weight rows) must do the same
    // arithmetic per output, for every weight format, up to the batch sizes the GEMV and
    // integer paths take.
    let (n, k) = (37, 512);
    for dt in [
        DType::F32,
        DType::BF16,
        DType::F16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ] {
        let v = values(n * k, 21);
        let w = if dt.is_quantized() {
            Matrix::from_f32(&v, n, k).quantize(dt)
        } else {
            Matrix::from_f32_as(&v, n, k, dt)
        };
        for t in [2, 3, 4, 5, 7, 8, 13, 16, 33, 64] {
            let x = values(t * k, t as u64);
            let mut all = vec![0f32; t * n];
            matmul(&x, t, &w, &mut all);
            for i in 0..t {
                let mut one = vec![0f32; n];
                matmul(&x[i * k..(i + 1) * k], 1, &w, &mut one);
                assert!(
                    one == all[i * n..(i + 1) * n],
                    "{dt} t={t}: row {i} differs from the same row alone"
                );
            }
        }
    }
}
