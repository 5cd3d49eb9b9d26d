//! aarch64: the NEON kernels against the portable ones.
//!
//! Block formats: the NEON integer kernels compute every block's integer dot product exactly
//! and do the f32 part in the portable kernel's order, so the stated bound is zero: each
//! output must equal the portable kernel's bit for bit, with and without `SDOT`, for every
//! tile shape (any `t`, any row range) and through the gather path. Float formats: within
//! `1e-5 · Σ|x·w|` of the portable kernel, and bit-identical between batched and single rows.
//!
//! `GEMMA3N_EXPECT_DOTPROD=0|1` (set by `tools/test_aarch64.sh` per QEMU CPU model) makes
//! [`expected_dotprod_detection`] check that the intended `SDOT` path is the one under test.

use std::time::Instant;

use super::quant::{act_block, scalar_dot, QAct};
use super::quant_neon::{gather_neon, rows_neon};
use super::*;
use crate::dtype::{f32_to_f16, DType};
use crate::quant::QK_K;
use crate::storage::AlignedBytes;
use crate::testing::values;

use crate::testing::QUANT_DTYPES as QUANT;

/// The `SDOT` settings this CPU can run: without, and with where it has the extension.
fn dotprod_modes() -> Vec<bool> {
    if has_neon_dotprod() {
        vec![false, true]
    } else {
        vec![false]
    }
}

#[test]
fn expected_dotprod_detection() {
    let has = has_neon_dotprod();
    eprintln!("dotprod detected: {has}");
    if let Ok(v) = std::env::var("GEMMA3N_EXPECT_DOTPROD") {
        assert_eq!(has, v == "1", "GEMMA3N_EXPECT_DOTPROD={v}");
    }
}

/// xorshift64 bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

/// A `n x k` matrix of `dt` with arbitrary block contents: rows `0..4` have every value byte
/// set to 0x00, 0x7f, 0x80 or 0xff (extreme weights, scales and mins, Q6_K scales of -128),
/// the other rows random bytes. The f16 scale fields hold finite values of either sign.
fn raw_matrix(dt: DType, n: usize, k: usize, seed: u64) -> Matrix {
    let bb = dt.block_bytes();
    let mut b = bytes(n * dt.row_bytes(k), seed);
    let scales = values(b.len() / bb * 2, seed ^ 77);
    // Byte offsets of the f16 fields in a block.
    let f16_at: &[usize] = match dt {
        DType::Q8_0 | DType::Q4_0 => &[0],
        DType::Q6_K => &[208],
        _ => &[0, 2],
    };
    for (blk, chunk) in b.chunks_exact_mut(bb).enumerate() {
        let row = blk / (k / dt.block_size());
        if row < 4 {
            chunk.fill([0x00, 0x7f, 0x80, 0xff][row]);
        }
        for (m, &at) in f16_at.iter().enumerate() {
            let v = scales[2 * blk + m] * 0.01;
            chunk[at..at + 2].copy_from_slice(&f32_to_f16(v).to_le_bytes());
        }
    }
    Matrix::owned(AlignedBytes::from_bytes(&b), dt, n, k)
}

/// `t` activation rows of `k`: row 0 all +1 and row 1 all -1 (every value quantizes to
/// ±127), row 2 of alternating sign, the rest pseudo-random with some zero blocks.
fn act_rows(t: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut x = values(t * k, seed);
    for (i, row) in x.chunks_exact_mut(k).enumerate() {
        match i {
            0 => row.fill(1.0),
            1 => row.fill(-1.0),
            2 => row
                .iter_mut()
                .enumerate()
                .for_each(|(e, v)| *v = if e % 2 == 0 { 0.5 } else { -0.5 }),
            _ if i % 3 == 0 => row[..32].fill(0.0),
            _ => {}
        }
    }
    x
}

/// The portable kernel's value for weight row `j` and activation row `i` of `act`.
fn scalar_value(w: &Matrix, act: &QAct, i: usize, j: usize) -> f32 {
    let (k, ab) = (w.cols(), act_block(w.dtype()));
    let s: &[i16] = if ab == QK_K {
        &act.s[i * k / 16..(i + 1) * k / 16]
    } else {
        &[]
    };
    scalar_dot(w.dtype())(
        w.row_bytes(j),
        &act.q[i * k..(i + 1) * k],
        &act.d[i * k / ab..(i + 1) * k / ab],
        s,
    )
}

/// `rows_neon` over columns `r0..r1` of a `t x n` output (the other columns stay NaN).
fn neon_rows(w: &Matrix, act: &QAct, t: usize, r0: usize, r1: usize, dp: bool) -> Vec<f32> {
    let mut out = vec![f32::NAN; t * w.rows()];
    // SAFETY: dotprod only where detected (`dotprod_modes`); `act` holds t rows of w.cols()
    // quantized for w's format; `out` holds t * n floats and nothing else accesses it.
    unsafe { rows_neon(w, r0, r1, act, t, OutPtr(out.as_mut_ptr()), dp) };
    out
}

/// Checks every NEON output of `w` against the portable kernel, bit for bit, for `t`
/// activation rows: the whole row range and a split into two ranges (other tile remainders).
fn check_quant_exact(w: &Matrix, t: usize, seed: u64) {
    let (n, k) = (w.rows(), w.cols());
    let x = act_rows(t, k, seed);
    let mut act = QAct::default();
    act.quantize(&x, k, act_block(w.dtype()), false);
    for dp in dotprod_modes() {
        let whole = neon_rows(w, &act, t, 0, n, dp);
        let mid = n / 2 + 1;
        let (a, b) = if mid < n {
            (
                neon_rows(w, &act, t, 0, mid, dp),
                neon_rows(w, &act, t, mid, n, dp),
            )
        } else {
            (whole.clone(), vec![f32::NAN; t * n])
        };
        for i in 0..t {
            for j in 0..n {
                let want = scalar_value(w, &act, i, j);
                let split = if j < mid { a[i * n + j] } else { b[i * n + j] };
                for (got, what) in [(whole[i * n + j], "whole"), (split, "split")] {
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{} {what} dotprod={dp} t={t} n={n} k={k}: out[{i},{j}] = {got}, \
                         portable {want}",
                        w.dtype()
                    );
                }
            }
        }
    }
}

#[test]
fn neon_quant_equals_portable_bit_for_bit() {
    for dt in QUANT {
        // Q8_0/Q4_0: 1, 3, 4, 5, 8 and 17 blocks (groups of four plus remainders).
        let ks: &[usize] = if dt.block_size() == 32 {
            &[32, 96, 128, 160, 256, 544]
        } else {
            &[256, 768]
        };
        for &k in ks {
            for n in [1, 2, 3, 5, 9] {
                let seed = (k * 31 + n) as u64;
                let quantized = Matrix::from_f32(&values(n * k, seed), n, k).quantize(dt);
                let raw = raw_matrix(dt, n, k, seed);
                for t in [1, 2, 3, 4, 5, 6, 7, 9] {
                    check_quant_exact(&quantized, t, seed + t as u64);
                    check_quant_exact(&raw, t, seed + 100 + t as u64);
                }
            }
        }
    }
}

#[test]
fn neon_quant_views() {
    // Row ranges and column prefixes: a row stride longer than the row.
    for dt in QUANT {
        let (n, k) = (11, 1024);
        let full = raw_matrix(dt, n, k, 5);
        for v in [
            full.row_range(3, 7),
            full.col_prefix(512),
            full.row_range(1, 9).col_prefix(256),
        ] {
            for t in [1, 2, 3, 5] {
                check_quant_exact(&v, t, 9 + t as u64);
            }
        }
    }
}

#[test]
fn neon_quant_batch_equals_single_rows_and_gather() {
    let (n, k) = (37, 512);
    let t = 9;
    for dt in QUANT {
        let w = raw_matrix(dt, n, k, 12);
        let x = act_rows(t, k, 3);
        let mut batch_act = QAct::default();
        batch_act.quantize(&x, k, act_block(dt), true);
        let rows: Vec<usize> = (0..n).filter(|r| r % 3 != 1).rev().collect();
        for dp in dotprod_modes() {
            let batch = neon_rows(&w, &batch_act, t, 0, n, dp);
            for i in 0..t {
                let mut act = QAct::default();
                act.quantize(&x[i * k..(i + 1) * k], k, act_block(dt), true);
                let single = neon_rows(&w, &act, 1, 0, n, dp);
                for j in 0..n {
                    assert_eq!(
                        single[j].to_bits(),
                        batch[i * n + j].to_bits(),
                        "{dt} dotprod={dp}: row {i} alone vs in a batch of {t}, column {j}"
                    );
                }
                let mut got = vec![f32::NAN; rows.len()];
                // SAFETY: dotprod only where detected; rows < n; out matches rows; act holds
                // one quantized row.
                unsafe { gather_neon(&w, &rows, &act, &mut got, dp) };
                for (g, &r) in got.iter().zip(&rows) {
                    assert_eq!(
                        g.to_bits(),
                        single[r].to_bits(),
                        "{dt} dotprod={dp}: gathered row {r}, activation row {i}"
                    );
                }
            }
        }
        // The public entry points (dotprod as detected) agree too.
        let mut dense = vec![0f32; t * n];
        matmul_with(&x, t, &w, &mut dense, MatmulPath::Gemv);
        for i in 0..t {
            let mut one = vec![0f32; n];
            let xi = &x[i * k..(i + 1) * k];
            matmul_with(xi, 1, &w, &mut one, MatmulPath::Scalar);
            assert_eq!(
                one,
                dense[i * n..(i + 1) * n],
                "{dt}: NEON batch vs portable"
            );
            let mut got = vec![0f32; rows.len()];
            gather_rows_quant(xi, &w, &rows, &mut got, true);
            for (g, &r) in got.iter().zip(&rows) {
                assert_eq!(*g, one[r], "{dt}: gather_rows_quant row {r}");
            }
        }
    }
}

/// `Σ|x·w|` and the f64 dot product of activation row `i` with weight row `j`.
fn f64_dot(x: &[f32], wf: &[f32], k: usize, i: usize, j: usize) -> (f64, f64) {
    let (mut s, mut mag) = (0f64, 0f64);
    for kk in 0..k {
        let p = x[i * k + kk] as f64 * wf[j * k + kk] as f64;
        s += p;
        mag += p.abs();
    }
    (s, mag)
}

#[test]
fn neon_gemv_matches_portable_and_is_batch_invariant() {
    for dt in [DType::F32, DType::BF16, DType::F16] {
        // k: below one step of 8, tails of 1..7, long rows. n: the 4-row tiles and remainders.
        for (n, k) in [(1, 3), (5, 8), (7, 13), (9, 64), (6, 203), (13, 1029)] {
            let full = Matrix::from_f32_as(&values(2 * n * k, (n + k) as u64), 2 * n, k, dt);
            for w in [
                full.row_prefix(n),
                full.row_range(n / 2, n).col_prefix(k - k / 3),
            ] {
                let (n, k) = (w.rows(), w.cols());
                let wf = w.to_f32_vec();
                let t = 11;
                let x = values(t * k, 7 * k as u64);
                let (mut neon, mut port) = (vec![0f32; t * n], vec![0f32; t * n]);
                matmul_with(&x, t, &w, &mut neon, MatmulPath::Gemv);
                matmul_with(&x, t, &w, &mut port, MatmulPath::Scalar);
                for i in 0..t {
                    let mut single = vec![0f32; n];
                    matmul_with(&x[i * k..(i + 1) * k], 1, &w, &mut single, MatmulPath::Gemv);
                    for j in 0..n {
                        let g = neon[i * n + j];
                        assert_eq!(
                            single[j].to_bits(),
                            g.to_bits(),
                            "{dt} n={n} k={k}: row {i} alone vs in a batch of {t}, column {j}"
                        );
                        let (s, mag) = f64_dot(&x, &wf, k, i, j);
                        let bound = 1e-5 * mag + 1e-30;
                        for (v, what) in [(g, "NEON"), (port[i * n + j], "portable")] {
                            assert!(
                                (v as f64 - s).abs() <= bound,
                                "{dt} {what} n={n} k={k}: out[{i},{j}] = {v}, expected {s}"
                            );
                        }
                        assert!(
                            (g - port[i * n + j]).abs() as f64 <= 2.0 * bound,
                            "{dt} n={n} k={k}: NEON {g} vs portable {}",
                            port[i * n + j]
                        );
                    }
                }
                // Every batch size against the batch of 11 (tile shapes 1..4 x 1, 2, 4).
                for tt in 2..t {
                    let mut part = vec![0f32; tt * n];
                    matmul_with(&x[..tt * k], tt, &w, &mut part, MatmulPath::Gemv);
                    assert_eq!(part, neon[..tt * n], "{dt} n={n} k={k} t={tt}");
                }
            }
        }
    }
}

/// Rough timing of the NEON kernels against the portable ones (meaningless under QEMU for
/// absolute numbers; a sanity check of the relative cost). Run with `--ignored --nocapture`.
#[test]
#[ignore]
fn neon_speed_vs_portable() {
    let (n, k) = (256, 2048);
    let time = |f: &mut dyn FnMut()| {
        f();
        let t0 = Instant::now();
        for _ in 0..3 {
            f();
        }
        t0.elapsed().as_secs_f64() / 3.0
    };
    for dt in [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ] {
        let w = Matrix::from_f32_as(&values(n * k, 1), n, k, dt);
        for t in [1, 4] {
            let x = values(t * k, 2);
            let mut out = vec![0f32; t * n];
            if dt.is_quantized() {
                // Both sides on the same quantized activations, on this thread.
                let mut act = QAct::default();
                act.quantize(&x, k, act_block(dt), false);
                let port = time(&mut || {
                    for j in 0..n {
                        for i in 0..t {
                            out[i * n + j] = scalar_value(&w, &act, i, j);
                        }
                    }
                });
                let mut line = format!("{dt:>5} t={t}: portable {:8.2} ms", port * 1e3);
                for dp in dotprod_modes() {
                    let s = time(&mut || {
                        // SAFETY: as in `neon_rows`.
                        unsafe { rows_neon(&w, 0, n, &act, t, OutPtr(out.as_mut_ptr()), dp) }
                    });
                    line += &format!(", NEON dotprod={dp} {:8.2} ms", s * 1e3);
                }
                eprintln!("{line}");
            } else {
                let port = time(&mut || matmul_with(&x, t, &w, &mut out, MatmulPath::Scalar));
                let s = time(&mut || matmul_with(&x, t, &w, &mut out, MatmulPath::Gemv));
                eprintln!(
                    "{dt:>5} t={t}: portable {:8.2} ms, NEON {:8.2} ms",
                    port * 1e3,
                    s * 1e3
                );
            }
        }
    }
}
