//! GGUF block formats: dequantization against the `gguf` package's goldens, quantization error,
//! and every matmul path against f64 references.

use std::path::PathBuf;

use gemma3n_compute::cpu::{matmul_with, MatmulPath};
use gemma3n_compute::quant::{dequantize_row, quantize_row};
use gemma3n_compute::testing::values;
use gemma3n_compute::{DType, Matrix};

const QTYPES: [DType; 5] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn dequantization_matches_gguf_exactly() {
    for dt in QTYPES {
        let name = dt.to_string();
        let blocks = data(&format!("{name}.blocks"));
        let want = f32s(&data(&format!("{name}.f32")));
        assert_eq!(blocks.len(), dt.row_bytes(want.len()), "{name}");
        let mut got = vec![0f32; want.len()];
        dequantize_row(dt, &blocks, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{name} element {i}: {g} vs gguf {w}"
            );
        }
        // The same bytes as a matrix (4 rows) dequantize the same way.
        let rows = 4;
        let m = Matrix::owned(
            gemma3n_compute::storage::AlignedBytes::from_bytes(&blocks),
            dt,
            rows,
            want.len() / rows,
        );
        assert_eq!(m.to_f32_vec(), want, "{name} matrix");
    }
}

#[test]
fn q8_0_and_q4_0_quantization_is_bit_identical_to_gguf() {
    for dt in [DType::Q8_0, DType::Q4_0] {
        let name = dt.to_string();
        let x = f32s(&data(&format!("{name}.input.f32")));
        let want = data(&format!("{name}.blocks"));
        let mut got = vec![0u8; dt.row_bytes(x.len())];
        quantize_row(dt, &x, &mut got);
        assert_eq!(got, want, "{name}");
    }
}

/// Half the spacing of subnormal f16 values (the absolute rounding of tiny scales).
const F16_HALF_ULP_MIN: f32 = 2.9802322e-8;

/// Relative RMS error bound of quantize -> dequantize on uniform [-1, 1) data.
fn rms_bound(dt: DType) -> f64 {
    match dt {
        DType::Q8_0 => 0.005,
        DType::Q4_0 => 0.075,
        DType::Q4_K => 0.065,
        DType::Q5_K => 0.032,
        DType::Q6_K => 0.016,
        DType::Q8_K => 0.005,
        _ => 0.0,
    }
}

#[test]
fn quantization_error_within_format_bounds() {
    let k = 4096;
    for dt in QTYPES.into_iter().chain([DType::Q8_K]) {
        for (seed, scale) in [(1u64, 1.0f32), (2, 1e-3), (3, 40.0)] {
            let x: Vec<f32> = values(k, seed).iter().map(|v| v * scale).collect();
            let mut b = vec![0u8; dt.row_bytes(k)];
            quantize_row(dt, &x, &mut b);
            let mut y = vec![0f32; k];
            dequantize_row(dt, &b, &mut y);
            let (mut e2, mut x2) = (0f64, 0f64);
            for (a, c) in x.iter().zip(&y) {
                e2 += ((a - c) as f64).powi(2);
                x2 += (*a as f64).powi(2);
            }
            let rel = (e2 / x2).sqrt();
            println!("{dt} scale {scale}: relative rms error {rel:.5}");
            if scale >= 1.0 {
                assert!(rel <= rms_bound(dt), "{dt} scale {scale}: rms error {rel}");
            } else {
                // Tiny values: f16 scales become subnormal (a limit of the format itself).
                assert!(
                    rel <= 4.0 * rms_bound(dt),
                    "{dt} scale {scale}: rms error {rel}"
                );
            }
            // Element-wise: Q8_0 within half a step, Q4_0 within one step (the far end of
            // its asymmetric range), plus the f16 rounding of the scale (relative 2^-11)
            // times the largest |q| (127 or 8); subnormal f16 scales round absolutely.
            if matches!(dt, DType::Q8_0 | DType::Q4_0) {
                for (blk, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let bound = if dt == DType::Q8_0 {
                        amax / 127.0 * (0.5 + 127.0 / 2048.0) * 1.001 + 127.0 * F16_HALF_ULP_MIN
                    } else {
                        amax / 8.0 * (1.0 + 8.0 / 2048.0) * 1.001 + 8.0 * F16_HALF_ULP_MIN
                    };
                    for (a, c) in xb.iter().zip(yb) {
                        assert!((a - c).abs() <= bound, "{dt} block {blk}: {a} -> {c}");
                    }
                }
            }
        }
        // All zeros stay zeros.
        let mut b = vec![0u8; dt.row_bytes(256)];
        quantize_row(dt, &[0.0; 256], &mut b);
        let mut y = vec![1f32; 256];
        dequantize_row(dt, &b, &mut y);
        assert!(y.iter().all(|&v| v == 0.0), "{dt} zeros");
    }
}

/// The int8 activation blocks the integer kernels use (d = max|x| / 127, round to nearest).
fn quantize_act(x: &[f32], bs: usize) -> (Vec<f64>, Vec<f64>) {
    let mut xq = vec![0f64; x.len()];
    let mut half_step = vec![0f64; x.len()];
    for (b, xb) in x.chunks(bs).enumerate() {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax == 0.0 { 0.0 } else { 127.0 / amax };
        for (l, &v) in xb.iter().enumerate() {
            let q = (v * id).round().clamp(-127.0, 127.0);
            xq[b * bs + l] = q as f64 * d as f64;
            half_step[b * bs + l] = d as f64 * 0.5;
        }
    }
    (xq, half_step)
}

/// Checks every path for weight view `w` against f64 references built from its dequantized
/// values: the integer paths against the same int8-quantized activations (to 2e-5 of
/// Σ|ŵ·x̂|) and against the pure f32 activations (within the activation rounding bound
/// Σ|ŵ|·d_x/2); the GEMM path (dequantized panels) against the pure activations (1e-5).
fn check_all_paths(x: &[f32], t: usize, w: &Matrix, what: &str) {
    let (n, k) = (w.rows(), w.cols());
    let wf = w.to_f32_vec();
    let bs = if matches!(w.dtype(), DType::Q8_0 | DType::Q4_0) {
        32
    } else {
        256
    };
    let mut outs = Vec::new();
    for path in [
        MatmulPath::Auto,
        MatmulPath::Gemv,
        MatmulPath::Scalar,
        MatmulPath::Gemm,
    ] {
        let mut out = vec![f32::NAN; t * n];
        matmul_with(x, t, w, &mut out, path);
        outs.push((path, out));
    }
    for i in 0..t {
        let xr = &x[i * k..(i + 1) * k];
        let (xq, hs) = quantize_act(xr, bs);
        for j in 0..n {
            let wr = &wf[j * k..(j + 1) * k];
            let (mut sq, mut magq, mut s, mut mag, mut act_err) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for kk in 0..k {
                let wv = wr[kk] as f64;
                sq += wv * xq[kk];
                magq += (wv * xq[kk]).abs();
                s += wv * xr[kk] as f64;
                mag += (wv * xr[kk] as f64).abs();
                act_err += wv.abs() * hs[kk];
            }
            // SIMD and scalar integer kernels agree closely (same integer sums, f32 order
            // differs).
            let (gv, sv) = (outs[1].1[i * n + j] as f64, outs[2].1[i * n + j] as f64);
            assert!(
                (gv - sv).abs() <= 1e-5 * magq + 1e-30,
                "{what} t={t} out[{i},{j}]: SIMD {gv} vs scalar {sv}"
            );
            for (path, out) in &outs {
                let g = out[i * n + j] as f64;
                // Auto sends batches longer than the format's `quant_int_max_t` to GEMM
                // (Q4_0 without AVX-512, Q8_0 without AVX2; never the K-quants).
                let int_path = *path != MatmulPath::Gemm
                    && !(*path == MatmulPath::Auto
                        && t > gemma3n_compute::cpu::quant_int_max_t(w.dtype()));
                if int_path {
                    let err = (g - sq).abs();
                    assert!(
                        err <= 2e-5 * magq + 1e-30,
                        "{what} {path:?} t={t} out[{i},{j}] = {g}, int8 reference {sq} \
                         (err {err:e}, scale {magq:e})"
                    );
                    let err = (g - s).abs();
                    assert!(
                        err <= act_err * 1.001 + 2e-5 * mag + 1e-30,
                        "{what} {path:?} t={t} out[{i},{j}] = {g}, f32 reference {s} \
                         (err {err:e}, activation rounding bound {act_err:e})"
                    );
                } else {
                    let err = (g - s).abs();
                    assert!(
                        err <= 1e-5 * mag + 1e-30,
                        "{what} {path:?} t={t} out[{i},{j}] = {g}, expected {s} (err {err:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_odd_shapes_every_format() {
    for dt in QTYPES {
        for (n, k) in [(1, 256), (5, 512), (300, 256)] {
            let wf: Vec<f32> = values(n * k, (n * 31 + k) as u64);
            let w = Matrix::from_f32_as(&wf, n, k, dt);
            for t in [1, 2, 3, 4, 5, 6, 7, 33, 130] {
                if n == 300 && t == 33 {
                    continue;
                }
                let x = values(t * k, (t * 7 + k) as u64 + 1);
                check_all_paths(&x, t, &w, &format!("{dt} {n}x{k}"));
            }
        }
    }
}

#[test]
fn matmul_parallel_and_views() {
    for dt in QTYPES {
        // Large enough (> 128 KiB) to be split over threads.
        let (n, k) = (520, 1024);
        let full = Matrix::from_f32_as(&values(n * k, 77), n, k, dt);
        assert_eq!(full.nbytes(), n * dt.row_bytes(k));
        let views = [
            ("full", full.clone()),
            ("row_range", full.row_range(9, 301)),
            ("row_prefix", full.row_prefix(17)),
            ("col_prefix", full.col_prefix(512)),
            (
                "row_range+col_prefix",
                full.row_range(3, 61).col_prefix(768),
            ),
        ];
        for (name, v) in &views {
            // Views read the same values as the full matrix.
            let vf = v.to_f32_vec();
            let ff = full.to_f32_vec();
            let (r0, _) = match *name {
                "row_range" => (9, 0),
                "row_range+col_prefix" => (3, 0),
                _ => (0, 0),
            };
            for r in 0..v.rows() {
                assert_eq!(
                    &vf[r * v.cols()..(r + 1) * v.cols()],
                    &ff[(r0 + r) * k..(r0 + r) * k + v.cols()],
                    "{dt} {name} row {r}"
                );
            }
            for t in [1, 3, 9] {
                let x = values(t * v.cols(), t as u64 + 5);
                check_all_paths(&x, t, v, &format!("{dt} {name}"));
            }
        }
    }
}

#[test]
#[should_panic(expected = "multiple of its 256-element blocks")]
fn col_prefix_inside_a_block_panics() {
    let m = Matrix::from_f32_as(&values(512, 1), 1, 512, DType::Q4_K);
    let _ = m.col_prefix(300);
}

#[test]
fn matrix_api_with_block_formats() {
    let (n, k) = (3, 512);
    let x = values(n * k, 9);
    let f = Matrix::from_f32(&x, n, k);
    for dt in QTYPES {
        let q = f.quantize(dt);
        assert_eq!((q.rows(), q.cols(), q.dtype()), (n, k, dt));
        assert_eq!(q.row_bytes(1).len(), dt.row_bytes(k));
        assert_eq!(
            q.to_f32_vec(),
            Matrix::from_f32_as(&x, n, k, dt).to_f32_vec()
        );
        // Back to f32 and bf16 through dequantization.
        assert_eq!(q.quantize(DType::F32).to_f32_vec(), q.to_f32_vec());
        let _ = q.quantize(DType::BF16);
        // Matrix::new over the same bytes, at an odd offset (block formats need no alignment).
        let mut bytes = vec![0u8; 1];
        for r in 0..n {
            bytes.extend_from_slice(q.row_bytes(r));
        }
        let st = std::sync::Arc::new(gemma3n_compute::Storage::Owned(
            gemma3n_compute::storage::AlignedBytes::from_bytes(&bytes),
        ));
        let m = Matrix::new(st.clone(), 1, dt, n, k).expect("new");
        assert_eq!(m.to_f32_vec(), q.to_f32_vec());
        assert!(Matrix::new(st.clone(), 2, dt, n, k).is_err(), "too short");
        assert!(Matrix::new(st, 1, dt, 1, k - 1).is_err(), "partial block");
        assert_eq!(DType::from_ggml_type(dt.ggml_type()), Some(dt));
    }
}

/// Q8_0 and Q4_K rows interleaved in groups of eight (the CPU decode layouts) hold the same
/// values as the file layout, in every view, and every matmul path gives the same results on
/// them.
#[test]
fn interleaved_rows_match_the_row_layout() {
    use gemma3n_compute::Layout;
    for (dt, layout) in [(DType::Q8_0, Layout::Q8_0x8), (DType::Q4_K, Layout::Q4_Kx8)] {
        interleaved_matches(dt, layout);
    }
    let m = Matrix::from_f32_as(&values(16 * 256, 2), 16, 256, DType::Q4_0);
    assert!(m.interleave8().is_none(), "Q4_0 keeps its rows");
}

fn interleaved_matches(dt: DType, layout: gemma3n_compute::Layout) {
    use gemma3n_compute::cpu::matmul::gather_rows_quant;
    let (n, k) = (520, 1024);
    let rows = Matrix::from_f32_as(&values(n * k, 91), n, k, dt);
    let il = rows.interleave8().expect("520 rows interleave");
    assert_eq!(il.layout(), layout);
    assert_eq!((il.rows(), il.cols(), il.nbytes()), (n, k, rows.nbytes()));
    assert_eq!(il.to_f32_vec(), rows.to_f32_vec());
    for r in [0, 1, 7, 8, 13, 519] {
        assert_eq!(&*il.row_blocks(r), rows.row_bytes(r), "{dt} row {r} bytes");
    }
    // Only the row layout; a partial last group is padded.
    assert!(il.interleave8().is_none());
    let views = [
        ("full", rows.clone(), il.clone()),
        // A partial last group: the kernel computes the group, writes its first 5 rows.
        ("row_prefix", rows.row_prefix(13), il.row_prefix(13)),
        (
            "interleaved row_prefix",
            rows.row_prefix(21),
            rows.row_prefix(21).interleave8().expect("padded"),
        ),
        ("row_range", rows.row_range(8, 301), il.row_range(8, 301)),
        ("col_prefix", rows.col_prefix(512), il.col_prefix(512)),
        (
            "row_range+col_prefix",
            rows.row_range(16, 61).col_prefix(768),
            il.row_range(16, 61).col_prefix(768),
        ),
    ];
    for (name, r, v) in &views {
        assert_eq!(v.to_f32_vec(), r.to_f32_vec(), "{dt} {name} values");
        for t in [1, 2, 3, 4, 5, 9, 70] {
            let x = values(t * v.cols(), t as u64 + 40);
            check_all_paths(&x, t, v, &format!("interleaved {dt} {name}"));
            // The row layout's kernels give the same outputs up to f32 summation order.
            let (mut a, mut b) = (vec![0f32; t * v.rows()], vec![0f32; t * v.rows()]);
            matmul_with(&x, t, r, &mut a, MatmulPath::Gemv);
            matmul_with(&x, t, v, &mut b, MatmulPath::Gemv);
            for (j, (a, b)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                    "{dt} {name} t={t} [{j}]: {a} vs {b}"
                );
            }
        }
        // Gathered rows of an interleaved matrix (the portable kernel) equal the dense ones.
        let x = values(v.cols(), 3);
        let mut dense = vec![0f32; v.rows()];
        matmul_with(&x, 1, v, &mut dense, MatmulPath::Scalar);
        let sel: Vec<usize> = (0..v.rows()).step_by(3).collect();
        let mut got = vec![0f32; sel.len()];
        gather_rows_quant(&x, v, &sel, &mut got, true);
        for (&j, g) in sel.iter().zip(&got) {
            assert_eq!(*g, dense[j], "{dt} {name} gathered row {j}");
        }
    }
}

#[test]
#[should_panic(expected = "must start on a group of 8")]
fn interleaved_row_range_off_a_group_panics() {
    let m = Matrix::from_f32_as(&values(16 * 64, 1), 16, 64, DType::Q8_0);
    let _ = m.interleave8().expect("16 rows").row_range(3, 5);
}

/// Releasing the mapped pages of a matrix copied into another layout leaves its bytes
/// readable and unchanged (they come back from the file).
#[test]
fn released_mapped_pages_read_back_the_same() {
    let (n, k) = (64, 2048);
    let m = Matrix::from_f32_as(&values(n * k, 5), n, k, DType::Q8_0);
    let bytes: Vec<u8> = (0..n).flat_map(|r| m.row_bytes(r).to_vec()).collect();
    let path = std::env::temp_dir().join(format!("gemma3n-release-{}", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let st = std::sync::Arc::new(gemma3n_compute::Storage::open_file(&path).unwrap());
    let mapped = Matrix::new(st, 0, DType::Q8_0, n, k).unwrap();
    let before = mapped.to_f32_vec();
    let il = mapped.interleave8().unwrap();
    mapped.release_mapped_pages();
    assert_eq!(mapped.to_f32_vec(), before);
    assert_eq!(il.to_f32_vec(), before);
    let _ = std::fs::remove_file(&path);
}

/// Several products of the same activations in one parallel loop give exactly what each
/// product gives alone: block formats sharing an activation block size (file and interleaved
/// layouts), mixed block sizes and float matrices (one after another).
#[test]
fn matmul_many_equals_each_product_alone() {
    use gemma3n_compute::cpu::{matmul, matmul_many};
    let k = 1024;
    let m = |n: usize, dt: DType, seed: u64| Matrix::from_f32_as(&values(n * k, seed), n, k, dt);
    let q4k = m(520, DType::Q4_K, 1);
    let sets: Vec<Vec<Matrix>> = vec![
        vec![
            m(520, DType::Q8_0, 2),
            m(64, DType::Q8_0, 3),
            m(300, DType::Q4_0, 4),
        ],
        vec![
            m(520, DType::Q8_0, 5).interleave8().unwrap(),
            m(13, DType::Q8_0, 6).interleave8().unwrap(),
        ],
        vec![
            q4k.interleave8().unwrap(),
            m(256, DType::Q6_K, 7),
            q4k.row_prefix(100),
        ],
        vec![
            m(64, DType::Q8_0, 8),
            m(64, DType::Q4_K, 9),
            m(40, DType::BF16, 10),
        ],
    ];
    for (si, ws) in sets.iter().enumerate() {
        for t in [1, 2, 3, 5, 70] {
            let x = values(t * k, (si * 10 + t) as u64);
            let refs: Vec<&Matrix> = ws.iter().collect();
            let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; t * w.rows()]).collect();
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            matmul_many(&x, t, &refs, &mut views);
            for (w, got) in ws.iter().zip(&outs) {
                let mut want = vec![0f32; t * w.rows()];
                matmul(&x, t, w, &mut want);
                assert_eq!(got, &want, "set {si} t={t} {w:?}");
            }
        }
    }
}
