//! Checks of the decode product kernels on random data against an f64 product on the host,
//! run by `gemma3n parity` on the GPU machine. They cover what the fixtures cannot: Q4_K
//! matrices (rows of 256 values and more), every batch size of the tensor-core kernels
//! (one tile of activation rows and two), row counts that are not a multiple of a block's,
//! and the sparse product with the transposed matrix.

use std::sync::Arc;

use gemma3n_compute::cuda::{Epilogue, GemvSeg, Gpu};
use gemma3n_compute::{DType, Matrix};

use super::gpu_err;
use super::weights::DevMatrix;
use crate::error::Result;

/// One check: what ran, its max relative error (max |got - want| / max |want|) and the
/// most it may be.
pub struct KernelCheck {
    pub name: String,
    pub err: f64,
    pub tol: f64,
}

/// Tolerance of the checks of f32 arithmetic.
const F32_TOLERANCE: f64 = 1e-5;
/// Tolerance of the flash attention check: its softmax weights are rounded to bf16 before
/// they multiply the values (relative 2^-9 each).
const FLASH_TOLERANCE: f64 = 1e-2;

/// Batch sizes the checks run: the single-row kernel, one tile of 8 activation rows, two.
const BATCHES: [usize; 6] = [1, 2, 5, 8, 9, 16];

/// `n` pseudo-random values in [-scale, scale).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = gemma3n_compute::testing::values(n, seed);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0f64, f64::max);
    let den = want.iter().map(|w| w.abs()).fold(0f64, f64::max);
    num / den.max(f64::MIN_POSITIVE)
}

/// The dequantized values of `m`, row-major.
fn values(m: &Matrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows() * m.cols()];
    for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.row_to_f32(r, row);
    }
    out
}

/// Runs every check.
pub fn check_kernels(gpu: &Arc<Gpu>) -> Result<Vec<KernelCheck>> {
    let e = gpu_err;
    let mut out = Vec::new();
    // 300 rows: the last block of 16 (and of 8) output rows is partial.
    let (rows, cols) = (300, 1024);
    let data = random(rows * cols, 1, 1.5);
    for (dtype, label) in [
        (DType::BF16, "bf16"),
        (DType::Q8_0, "Q8_0"),
        (DType::Q4_K, "Q4_K"),
    ] {
        let m = Matrix::from_f32_as(&data, rows, cols, dtype);
        let w = values(&m);
        let dm = DevMatrix::upload(gpu, &m)?;
        for (pair, what) in [(false, "x.W"), (true, "gelu(x.W)*(x.W2)")] {
            for &batch in &BATCHES {
                let x = random(batch * cols, 10 + batch as u64, 1.0);
                let xb = gpu.upload(&x).map_err(e)?;
                let yb = gpu.alloc(batch * rows * 4).map_err(e)?;
                let mut seg = GemvSeg {
                    w: dm.wp(),
                    x: xb.ptr(),
                    y: yb.ptr(),
                    rows,
                    k: cols,
                    ldw: dm.cols,
                    ldx: cols,
                    ldy: rows,
                    ..Default::default()
                };
                if pair {
                    // The same matrix twice: gelu(a) * a.
                    seg.epi = Epilogue::Pair(dm.wp());
                }
                gpu.gemv(&[seg], batch, 0.0).map_err(e)?;
                let mut got = vec![0f32; batch * rows];
                gpu.read_at(yb.ptr(), &mut got).map_err(e)?;
                // One activation row, bf16: also the kernel that splits each row over
                // warps, at every split (300 rows: a partial last block of 8, 4 or 2 rows).
                let mut split = Vec::new();
                if dtype == DType::BF16 && batch == 1 {
                    for wpr in [1, 2, 4, 8] {
                        gpu.zero(yb.ptr(), batch * rows * 4).map_err(e)?;
                        gpu.gemv_rowblock(&seg, wpr, 0.0).map_err(e)?;
                        let mut y = vec![0f32; rows];
                        gpu.read_at(yb.ptr(), &mut y).map_err(e)?;
                        split.push((wpr, y));
                    }
                }
                let want: Vec<f64> = (0..batch * rows)
                    .map(|i| {
                        let (b, r) = (i / rows, i % rows);
                        let dot: f64 = x[b * cols..(b + 1) * cols]
                            .iter()
                            .zip(&w[r * cols..(r + 1) * cols])
                            .map(|(&a, &v)| a as f64 * v as f64)
                            .sum();
                        if pair {
                            gelu_tanh(dot) * dot
                        } else {
                            dot
                        }
                    })
                    .collect();
                out.push(KernelCheck {
                    name: format!("gemv {label} {what}, {batch} rows"),
                    err: rel_err(&got, &want),
                    tol: F32_TOLERANCE,
                });
                for (wpr, y) in split {
                    out.push(KernelCheck {
                        name: format!("gemv {label} {what}, each row over {wpr} warps"),
                        err: rel_err(&y, &want),
                        tol: F32_TOLERANCE,
                    });
                }
            }
        }
    }
    // The sparse product with a transposed bf16 matrix: most activations zero, as after
    // the Gaussian top-k, and a run of units no row keeps; 200 columns for the tensor-core
    // kernel (one row: the kept-rows kernel, unless GEMMA3N_CUDA_SPARSE_ROWS=0), 203 for the
    // per-unit one.
    for (ncols, kernel) in [(200, "tensor cores"), (203, "per unit")] {
        check_sparse(gpu, ncols, kernel, &mut out)?;
    }
    check_sparse_rows(gpu, &mut out)?;
    check_sparse_up(gpu, &mut out)?;
    check_argmax(gpu, &mut out)?;
    check_top_k(gpu, &mut out)?;
    check_flash(gpu, &mut out)?;
    check_ffn_act(gpu, &mut out)?;
    Ok(out)
}

/// The candidates of a top-`k` draw written out plainly: (value bits, index) of every
/// value (NaN and -inf left out) at least the `k`-th largest, by index. The reference for
/// the device's top-k here and in `gemma3n parity`.
pub fn top_k_naive(x: &[f32], k: usize) -> Vec<(u32, u32)> {
    let mut finite: Vec<f32> = x
        .iter()
        .copied()
        .filter(|v| *v > f32::NEG_INFINITY)
        .collect();
    if finite.is_empty() {
        return Vec::new();
    }
    finite.sort_by(|a, b| b.total_cmp(a));
    let t = finite[k.min(finite.len()) - 1];
    x.iter()
        .enumerate()
        .filter(|(_, &v)| v >= t)
        .map(|(i, &v)| (v.to_bits(), i as u32))
        .collect()
}

/// The device's top-k candidates against [`top_k_naive`]: a vocabulary-sized row with its
/// largest value past the `n` searched, ties at the `k`-th, NaN and -inf, k = 1, fewer
/// candidates than k, and too many ties to return (which must say so). Each case runs
/// twice (the counters must be left at zero). Error 0 when the sets match, 1 when not.
fn check_top_k(gpu: &Arc<Gpu>, out: &mut Vec<KernelCheck>) -> Result<()> {
    let e = gpu_err;
    let v = 262_400;
    let mut big = random(v, 81, 30.0);
    big[262_300] = 100.0;
    let mut ties = random(v, 82, 30.0);
    // Ten values tied at the 60th largest, spread over the blocks.
    let mut order: Vec<usize> = (0..262_144).collect();
    order.sort_by(|&a, &b| ties[b].total_cmp(&ties[a]));
    for &i in &order[59..69] {
        ties[i] = ties[order[59]];
    }
    let mut odd = random(v, 83, 30.0);
    for i in (0..v).step_by(997) {
        odd[i] = if i % 2 == 0 {
            f32::NAN
        } else {
            f32::NEG_INFINITY
        };
    }
    odd[4] = f32::INFINITY;
    let mut few = vec![f32::NEG_INFINITY; 1000];
    for (i, s) in few.iter_mut().enumerate().step_by(100) {
        *s = i as f32;
    }
    let flat = vec![1.5f32; 300];
    let cases: [(&str, &[f32], usize, usize); 6] = [
        ("vocabulary, larger value past n, k 64", &big, 262_144, 64),
        ("ties at the k-th, k 64", &ties, 262_144, 64),
        ("NaN, -inf and +inf, k 40", &odd, v, 40),
        ("k 1", &big, 262_144, 1),
        ("10 candidates, k 64", &few, few.len(), 64),
        ("300 ties: too many", &flat, flat.len(), 5),
    ];
    let scratch = gpu.alloc(Gpu::top_k_scratch_bytes(v)).map_err(e)?;
    let res = gpu.alloc(4 * (2 + 2 * Gpu::TOPK_OUT)).map_err(e)?;
    for (what, x, n, k) in cases {
        let xb = gpu.upload(x).map_err(e)?;
        let want = top_k_naive(&x[..n], k);
        let mut err = 0.0;
        for _ in 0..2 {
            gpu.top_k(xb.ptr(), n, k, scratch.ptr(), res.ptr())
                .map_err(e)?;
            let mut got = vec![0u32; 2 + 2 * Gpu::TOPK_OUT];
            gpu.read_at(res.ptr(), &mut got).map_err(e)?;
            let (count, overflow) = (got[0] as usize, got[1] != 0);
            let ok = if want.len() > Gpu::TOPK_OUT {
                overflow
            } else {
                let mut pairs: Vec<(u32, u32)> = got[2..2 + 2 * count]
                    .chunks_exact(2)
                    .map(|p| (p[0], p[1]))
                    .collect();
                pairs.sort_by_key(|p| p.1);
                !overflow && pairs == want
            };
            if !ok {
                err = 1.0;
            }
        }
        out.push(KernelCheck {
            name: format!("top-k, {what}"),
            err,
            tol: F32_TOLERANCE,
        });
    }
    Ok(())
}

/// The index of the largest of `x` (the first among equal values; NaN and -inf never win),
/// or -1.
fn argmax_naive(x: &[f32]) -> i32 {
    let mut best: Option<usize> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() || v == f32::NEG_INFINITY {
            continue;
        }
        if best.is_none_or(|b| v > x[b]) {
            best = Some(i);
        }
    }
    best.map_or(-1, |b| b as i32)
}

/// The device argmax of greedy decoding against [`argmax_naive`]: a vocabulary-sized row
/// whose largest value lies past the `n` searched, ties, NaN, only negative values, fewer
/// values than threads, and nothing to choose. Each case runs twice (the kernel's finished-
/// block counter must be left at zero). Error 0 when the index matches, 1 when not.
fn check_argmax(gpu: &Arc<Gpu>, out: &mut Vec<KernelCheck>) -> Result<()> {
    let e = gpu_err;
    let v = 262_400;
    let mut big = random(v, 77, 30.0);
    big[262_300] = 100.0; // past n: must not win
    let mut ties = random(v, 78, 30.0);
    ties[200_000] = 50.0;
    ties[1000] = 50.0;
    let mut nan = random(v, 79, 30.0);
    nan[5] = f32::NAN;
    nan[70_000] = 60.0;
    nan[70_001] = f32::NAN;
    let negative: Vec<f32> = random(v, 80, 1.0).iter().map(|x| -1.0 - x.abs()).collect();
    let mut none = vec![f32::NEG_INFINITY; 1000];
    none[3] = f32::NAN;
    let cases: [(&str, &[f32], usize); 6] = [
        ("vocabulary, larger value past n", &big, 262_144),
        ("ties", &ties, 262_144),
        ("NaN", &nan, v),
        ("only negative values", &negative, v),
        ("5 values", &big[..5], 5),
        ("only -inf and NaN", &none, none.len()),
    ];
    let scratch = gpu.alloc(8 * (Gpu::ARGMAX_BLOCKS + 2)).map_err(e)?;
    let id = scratch.ptr().add_f32(2 * (Gpu::ARGMAX_BLOCKS + 1));
    for (what, x, n) in cases {
        let xb = gpu.upload(x).map_err(e)?;
        let want = argmax_naive(&x[..n]);
        let mut err = 0.0;
        for _ in 0..2 {
            gpu.argmax(xb.ptr(), n, scratch.ptr(), id).map_err(e)?;
            let mut got = [0i32];
            gpu.read_at(id, &mut got).map_err(e)?;
            if got[0] != want {
                err = 1.0;
            }
        }
        out.push(KernelCheck {
            name: format!("argmax, {what}"),
            err,
            tol: F32_TOLERANCE,
        });
    }
    Ok(())
}

fn check_sparse(
    gpu: &Arc<Gpu>,
    ncols: usize,
    kernel: &str,
    out: &mut Vec<KernelCheck>,
) -> Result<()> {
    let e = gpu_err;
    // 2500 units: three chunks of the tensor-core kernel's 1024, the last one partial.
    let units = 2500;
    let (pb, cb) = Gpu::sparse_t_scratch_bytes(units, ncols, 16);
    let (part, cnt) = (gpu.alloc(pb).map_err(e)?, gpu.alloc(cb).map_err(e)?);
    let wt = Matrix::from_f32_as(&random(units * ncols, 2, 1.0), units, ncols, DType::BF16);
    let w = values(&wt);
    let dm = DevMatrix::upload(gpu, &wt)?;
    for &batch in &BATCHES {
        let mut a = random(batch * units, 20 + batch as u64, 1.0);
        for (i, v) in a.iter_mut().enumerate() {
            let unit = i % units;
            if (unit * 7 + i / units) % 10 != 0 || (300..340).contains(&unit) {
                *v = 0.0;
            }
        }
        let ab = gpu.upload(&a).map_err(e)?;
        // NaN first: the product must overwrite every output.
        let yb = gpu.upload(&vec![f32::NAN; batch * ncols]).map_err(e)?;
        let mut runs = Vec::new();
        for _ in 0..3 {
            gpu.sparse_t(
                dm.ptr(),
                dm.cols,
                ab.ptr(),
                units,
                yb.ptr(),
                ncols,
                batch,
                units,
                ncols,
                (part.ptr(), cnt.ptr()),
            )
            .map_err(e)?;
            let mut got = vec![0f32; batch * ncols];
            gpu.read_at(yb.ptr(), &mut got).map_err(e)?;
            runs.push(got);
        }
        // The tensor-core kernel sums in a fixed order: the same bits on every run.
        let same = runs.windows(2).all(|r| {
            r[0].iter()
                .zip(&r[1])
                .all(|(x, y)| x.to_bits() == y.to_bits())
        });
        let got = runs.pop().expect("three runs");
        let want: Vec<f64> = (0..batch * ncols)
            .map(|i| {
                let (b, c) = (i / ncols, i % ncols);
                (0..units)
                    .map(|u| a[b * units + u] as f64 * w[u * ncols + c] as f64)
                    .sum()
            })
            .collect();
        out.push(KernelCheck {
            name: format!("sparse down ({kernel}), {batch} rows"),
            err: if same || kernel != "tensor cores" {
                rel_err(&got, &want)
            } else {
                f64::INFINITY
            },
            tol: F32_TOLERANCE,
        });
    }
    Ok(())
}

/// The one-row sparse product that reads only the kept units' rows (`Gpu::sparse_rows`)
/// against f64 sums: 5% of the units kept (as after the Gaussian top-k), every unit kept
/// (each block's list full), and 40000 units (20 groups of 2000, the list's capacity
/// nearly reached) with a third kept; each three times, which must give the same bits (the
/// sums' order is fixed) and leave the counters at zero.
fn check_sparse_rows(gpu: &Arc<Gpu>, out: &mut Vec<KernelCheck>) -> Result<()> {
    let e = gpu_err;
    for (units, ncols, keep, what) in [
        (2500, 264, 20, "5% kept"),
        (2500, 264, 1, "all kept"),
        (40_000, 24, 3, "a third of 40000 kept"),
    ] {
        let (pb, cb) = Gpu::sparse_t_scratch_bytes(units, ncols, 1);
        let (part, cnt) = (gpu.alloc(pb).map_err(e)?, gpu.alloc(cb).map_err(e)?);
        let wt = Matrix::from_f32_as(&random(units * ncols, 7, 1.0), units, ncols, DType::BF16);
        let w = values(&wt);
        let dm = DevMatrix::upload(gpu, &wt)?;
        let mut a = random(units, 8, 1.0);
        for (u, v) in a.iter_mut().enumerate() {
            if (u * 7) % keep != 0 {
                *v = 0.0;
            }
        }
        let ab = gpu.upload(&a).map_err(e)?;
        let yb = gpu.upload(&vec![f32::NAN; ncols]).map_err(e)?;
        let mut runs = Vec::new();
        for _ in 0..3 {
            gpu.sparse_rows(
                dm.ptr(),
                dm.cols,
                ab.ptr(),
                yb.ptr(),
                units,
                ncols,
                (part.ptr(), cnt.ptr()),
            )
            .map_err(e)?;
            let mut got = vec![0f32; ncols];
            gpu.read_at(yb.ptr(), &mut got).map_err(e)?;
            runs.push(got);
        }
        let same = runs.windows(2).all(|r| {
            r[0].iter()
                .zip(&r[1])
                .all(|(x, y)| x.to_bits() == y.to_bits())
        });
        let got = runs.pop().expect("three runs");
        let want: Vec<f64> = (0..ncols)
            .map(|c| {
                (0..units)
                    .map(|u| a[u] as f64 * w[u * ncols + c] as f64)
                    .sum()
            })
            .collect();
        out.push(KernelCheck {
            name: format!("sparse down (kept rows only), {what}"),
            err: if same {
                rel_err(&got, &want)
            } else {
                f64::INFINITY
            },
            tol: F32_TOLERANCE,
        });
    }
    Ok(())
}

/// The one-row sparse up product with its cut-off (`Gpu::sparse_up_rows`) against f64: the
/// cut-off mean + z · std of the gate row, the kept units' gelu(gate - cut) · (up · y), 0 for
/// the others (the output starts as NaN, so every unit must be written). E2B's shape, a
/// width that leaves the last block partial, and a fixture's short rows.
fn check_sparse_up(gpu: &Arc<Gpu>, out: &mut Vec<KernelCheck>) -> Result<()> {
    let e = gpu_err;
    let z = 1.644_853_6f32; // the normal quantile of 0.95
    for (f, k) in [(8192, 2048), (1000, 256), (64, 48)] {
        let mut gate = random(f, 31, 2.0);
        // Two clear outliers, so that even 64 units keep some.
        gate[5] = 9.0;
        gate[f - 3] = 7.0;
        let y = random(k, 32, 1.0);
        let up = Matrix::from_f32_as(&random(f * k, 33, 1.0), f, k, DType::BF16);
        let w = values(&up);
        let dm = DevMatrix::upload(gpu, &up)?;
        let (gb, yb) = (gpu.upload(&gate).map_err(e)?, gpu.upload(&y).map_err(e)?);
        let ab = gpu.upload(&vec![f32::NAN; f]).map_err(e)?;
        if !gpu
            .sparse_up_rows(gb.ptr(), dm.wp(), dm.cols, yb.ptr(), k, ab.ptr(), f, z)
            .map_err(e)?
        {
            return Err(crate::error::ModelError::Invalid(format!(
                "sparse_up_rows did not take f {f}, k {k}"
            )));
        }
        let mut got = vec![0f32; f];
        gpu.read_at(ab.ptr(), &mut got).map_err(e)?;
        let mean = gate.iter().map(|&v| v as f64).sum::<f64>() / f as f64;
        let var = gate.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / f as f64;
        let cut = mean + var.sqrt() * z as f64;
        let want: Vec<f64> = (0..f)
            .map(|u| {
                let g = gate[u] as f64 - cut;
                if g <= 0.0 {
                    return 0.0;
                }
                let dot: f64 = (0..k).map(|i| w[u * k + i] as f64 * y[i] as f64).sum();
                gelu_tanh(g) * dot
            })
            .collect();
        let kept = want.iter().filter(|v| **v != 0.0).count();
        out.push(KernelCheck {
            name: format!("sparse up with its cut-off, {f} units ({kept} kept), k {k}"),
            err: rel_err(&got, &want),
            tol: F32_TOLERANCE,
        });
    }
    Ok(())
}

/// gelu with the tanh approximation, in f64.
fn gelu_tanh(u: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * u * (1.0 + (c * (u + 0.044715 * u * u * u)).tanh())
}

/// bf16 rounding (to nearest even) of `v`, as the flash kernel rounds its inputs.
fn bf16_round(v: f32) -> f64 {
    gemma3n_compute::dtype::bf16_to_f32(gemma3n_compute::dtype::f32_to_bf16(v)) as f64
}

/// The flash prefill attention against softmax attention in f64 on the same bf16-rounded
/// queries, keys and values: a cached prefix before the rows, a partial last block of rows,
/// a sliding window narrower and wider than a key tile, grouped query heads. Each case runs
/// twice: every block taking all of its rows' keys, f32 out; and as [`Gpu::flash_plan`]
/// shares out the keys (long rows split into runs merged at the end), bf16 out.
fn check_flash(gpu: &Arc<Gpu>, out: &mut Vec<KernelCheck>) -> Result<()> {
    let e = gpu_err;
    // (head dim, query heads, KV heads, rows, cached keys before them, window)
    let cases = [
        (256, 4, 2, 100, 37, 0),
        (256, 4, 2, 100, 37, 20),
        (256, 2, 1, 70, 0, 48),
        (128, 4, 1, 130, 5, 0),
        (64, 2, 2, 33, 200, 64),
        (16, 4, 2, 65, 3, 5),
        // Long rows: their keys split into runs.
        (256, 4, 2, 200, 700, 0),
        (128, 2, 1, 150, 1000, 0),
        (64, 4, 2, 260, 400, 300),
    ];
    for (seed, &(hd, h, g, rows, pos0, window)) in cases.iter().enumerate() {
        if !gpu.flash_attention(hd) {
            continue;
        }
        let keys = pos0 + rows;
        let seed = 100 + 10 * seed as u64;
        // Scores of a few units, as after the q/k norms.
        let q = random(rows * h * hd, seed, 0.25);
        let k = random(keys * g * hd, seed + 1, 0.25);
        let v = random(keys * g * hd, seed + 2, 1.0);
        let pos: Vec<i32> = (0..rows).map(|b| (pos0 + b) as i32).collect();
        let (qb, kb, vb) = (
            gpu.upload(&q).map_err(e)?,
            gpu.upload(&k).map_err(e)?,
            gpu.upload(&v).map_err(e)?,
        );
        let pb = gpu.upload(&pos).map_err(e)?;
        let ob = gpu.upload(&vec![f32::NAN; rows * h * hd]).map_err(e)?;
        gpu.attention_flash(
            qb.ptr(),
            kb.ptr(),
            vb.ptr(),
            pb.ptr(),
            ob.ptr(),
            false,
            rows,
            keys,
            h,
            g,
            hd,
            window,
            None,
        )
        .map_err(e)?;
        let mut got = vec![0f32; rows * h * hd];
        gpu.read_at(ob.ptr(), &mut got).map_err(e)?;
        // As planned, bf16 out: the counters (one per row block and head group) start and
        // end at zero, so running it twice shows they were reset.
        let plan = gpu.flash_plan(rows, keys, h, g, window);
        let scratch = gpu
            .alloc(plan.scratch_bytes(rows, h, hd).max(4))
            .map_err(e)?;
        let done = gpu.alloc(4 * rows * h).map_err(e)?;
        let obb = gpu.alloc(2 * rows * h * hd).map_err(e)?;
        let mut got_split = vec![0f32; rows * h * hd];
        let mut stable = true;
        for run in 0..2 {
            gpu.attention_flash(
                qb.ptr(),
                kb.ptr(),
                vb.ptr(),
                pb.ptr(),
                obb.ptr(),
                true,
                rows,
                keys,
                h,
                g,
                hd,
                window,
                Some((scratch.ptr(), scratch.bytes(), done.ptr())),
            )
            .map_err(e)?;
            let mut raw = vec![0u16; rows * h * hd];
            gpu.read_at(obb.ptr(), &mut raw).map_err(e)?;
            let vals: Vec<f32> = raw
                .iter()
                .map(|&b| gemma3n_compute::dtype::bf16_to_f32(b))
                .collect();
            if run == 1 {
                stable = vals == got_split;
            }
            got_split = vals;
        }
        let mut want = vec![0f64; rows * h * hd];
        for b in 0..rows {
            let p = pos0 + b;
            let lo = if window > 0 {
                (p + 1).saturating_sub(window)
            } else {
                0
            };
            for head in 0..h {
                let kvh = head / (h / g);
                let qr = &q[(b * h + head) * hd..][..hd];
                let at = |key: usize| (key * g + kvh) * hd;
                let scores: Vec<f64> = (lo..=p)
                    .map(|key| {
                        (0..hd)
                            .map(|i| bf16_round(qr[i]) * bf16_round(k[at(key) + i]))
                            .sum()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let sum: f64 = w.iter().sum();
                for i in 0..hd {
                    want[(b * h + head) * hd + i] = (lo..=p)
                        .zip(&w)
                        .map(|(key, wt)| wt * bf16_round(v[at(key) + i]))
                        .sum::<f64>()
                        / sum;
                }
            }
        }
        out.push(KernelCheck {
            name: format!("flash attention hd {hd}, {rows} rows after {pos0}, window {window}"),
            err: rel_err(&got, &want),
            tol: FLASH_TOLERANCE,
        });
        out.push(KernelCheck {
            name: format!(
                "flash attention hd {hd}, {rows} rows after {pos0}, window {window}: \
                 keys in up to {} runs of about {} tiles, bf16 out{}",
                plan.nchunks,
                plan.chunk,
                if stable { "" } else { ", NOT the same twice" }
            ),
            err: if stable {
                rel_err(&got_split, &want)
            } else {
                f64::INFINITY
            },
            tol: FLASH_TOLERANCE,
        });
    }
    Ok(())
}

/// The prefill FFN activation written as bf16 parts, against gelu(cut-off gate) * up in f64:
/// with and without the Gaussian top-k, one to three parts (the parts must sum to the value
/// within what they keep); gate and up as f32, and as bf16 (the bf16 output of a prefill's
/// gate/up GEMMs).
fn check_ffn_act(gpu: &Arc<Gpu>, out: &mut Vec<KernelCheck>) -> Result<()> {
    use gemma3n_compute::dtype::{bf16_to_f32, f32_to_bf16};
    let e = gpu_err;
    // A width that leaves threads partly empty, and E4B's 16384. The last row sits away
    // from zero (uniform in [1, 5]): the cut-off's mean and variance must lose no digits to
    // it. (Further out, what survives the cut-off is small against the cut-off's own f32
    // rounding.)
    for ((rows, f, ld), in_bf16) in [
        ((3, 1000, 1024), false),
        ((3, 1000, 1024), true),
        ((3, 16384, 16384), true),
    ] {
        let mut gate = random(rows * ld, 40, 2.0);
        for v in &mut gate[(rows - 1) * ld..] {
            *v += 3.0;
        }
        let up = random(rows * ld, 41, 1.0);
        let (gate, up, gb, ub) = if in_bf16 {
            let (g16, u16): (Vec<u16>, Vec<u16>) = (
                gate.iter().map(|&v| f32_to_bf16(v)).collect(),
                up.iter().map(|&v| f32_to_bf16(v)).collect(),
            );
            (
                g16.iter().map(|&b| bf16_to_f32(b)).collect::<Vec<f32>>(),
                u16.iter().map(|&b| bf16_to_f32(b)).collect::<Vec<f32>>(),
                gpu.upload(&g16).map_err(e)?,
                gpu.upload(&u16).map_err(e)?,
            )
        } else {
            (
                gate.clone(),
                up.clone(),
                gpu.upload(&gate).map_err(e)?,
                gpu.upload(&up).map_err(e)?,
            )
        };
        check_ffn_act_on(gpu, out, (&gate, &up), (&gb, &ub), in_bf16, (rows, f, ld))?;
    }
    Ok(())
}

/// [`check_ffn_act`] on one upload of `gate` and `up` (their values as the kernel sees
/// them, and the buffers).
fn check_ffn_act_on(
    gpu: &Arc<Gpu>,
    out: &mut Vec<KernelCheck>,
    (gate, up): (&[f32], &[f32]),
    (gb, ub): (
        &gemma3n_compute::cuda::DeviceBuffer,
        &gemma3n_compute::cuda::DeviceBuffer,
    ),
    in_bf16: bool,
    (rows, f, ld): (usize, usize, usize),
) -> Result<()> {
    let e = gpu_err;
    for z in [None, Some(1.6448536f32)] {
        // Each row's cut-off, in f64 with the mean first.
        let cuts: Vec<f64> = (0..rows)
            .map(|r| {
                let row = &gate[r * ld..r * ld + f];
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / f as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / f as f64;
                z.map_or(f64::NEG_INFINITY, |z| mean + var.sqrt() * z as f64)
            })
            .collect();
        let want: Vec<f64> = (0..rows * f)
            .map(|i| {
                let (r, c) = (i / f, i % f);
                let g = gate[r * ld + c] as f64;
                let g = if z.is_some() {
                    (g - cuts[r]).max(0.0)
                } else {
                    g
                };
                gelu_tanh(g) * up[r * ld + c] as f64
            })
            .collect();
        for np in 1..=3 {
            let bufs: Vec<_> = (0..np)
                .map(|_| gpu.alloc(rows * f * 2).map_err(e))
                .collect::<Result<_>>()?;
            let parts: Vec<_> = bufs.iter().map(|b| b.ptr()).collect();
            let ran = gpu
                .ffn_act_split(gb.ptr(), ld, ub.ptr(), ld, in_bf16, &parts, rows, f, z)
                .map_err(e)?;
            let mut sum = vec![0f32; rows * f];
            for b in &bufs {
                let mut p = vec![0u16; rows * f];
                gpu.read_at(b.ptr(), &mut p).map_err(e)?;
                for (s, &v) in sum.iter_mut().zip(&p) {
                    *s += gemma3n_compute::dtype::bf16_to_f32(v);
                }
            }
            // A bf16 part keeps 8 bits: one part is within 2^-8 of the value, two 2^-16.
            let tol = [4e-3, 2e-5, F32_TOLERANCE][np - 1];
            out.push(KernelCheck {
                name: format!(
                    "FFN activation{}, {np} part(s){}",
                    if z.is_some() { " after the top-k" } else { "" },
                    if in_bf16 { ", bf16 gate and up" } else { "" }
                ),
                err: if ran {
                    rel_err(&sum, &want)
                } else {
                    f64::INFINITY
                },
                tol,
            });
        }
    }
    Ok(())
}
