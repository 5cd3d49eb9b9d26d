//! Prints the speed of the CPU matmul kernels: GEMV GB/s against the measured read bandwidth,
//! and GEMM GFLOP/s.
//!
//! `cargo run --release -p gemma3n-compute --example kernel_speed [threads] [--quick] [--quant]`
//! (`--audio`: the audio conformer's f32 GEMM shapes only)
//! (threads defaults to 2; `--quick` skips the 1 GiB LM-head shape and the float GEMM
//! table; `--quant` runs only the block-format table, `--quant --decode` only its
//! decode-shaped rows, t = 1, 2, 4; `--quant --batched` the integer kernels' GFLOP/s for
//! t = 1..64 activation rows, as batched decode uses them).

use std::time::Instant;

use gemma3n_compute::cpu::{bandwidth, matmul_with, MatmulPath};
use gemma3n_compute::storage::AlignedBytes;
use gemma3n_compute::{DType, Matrix};

// The block formats of the integer kernels.
use gemma3n_compute::testing::QUANT_DTYPES as QUANT;

/// A `rows x cols` matrix of `dtype` (a float type) holding small pseudo-random values.
fn matrix(rows: usize, cols: usize, dtype: DType, seed: u64) -> Matrix {
    let mut b = AlignedBytes::zeroed(rows * cols * dtype.size());
    let mut s = seed | 1;
    for c in b.as_mut_slice().chunks_exact_mut(8) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        // Four 16-bit values in [-1, 1) with random mantissas (bf16: 0x3f00..0x3f7f-ish
        // exponent range; f16 likewise); two f32 values for f32.
        let v = match dtype {
            DType::BF16 => (s & 0x807f_807f_807f_807f) | 0x3e00_3e00_3e00_3e00,
            DType::F16 => (s & 0x83ff_83ff_83ff_83ff) | 0x3400_3400_3400_3400,
            DType::F32 => (s & 0x807f_ffff_807f_ffff) | 0x3e00_0000_3e00_0000,
            q => panic!("matrix: {q} is not a float type"),
        };
        c.copy_from_slice(&v.to_le_bytes());
    }
    Matrix::owned(b, dtype, rows, cols)
}

/// Best seconds of `iters` runs of `f` (after one warm-up run). The best, not the median,
/// because the machine may be shared: other load only ever makes a run slower.
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let threads: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("thread pool");

    let bw = bandwidth::measure_read_gb_s(512 << 20, threads);
    println!("threads {threads}; read bandwidth {bw:.1} GB/s (512 MiB buffer, best of 5)");
    if args.iter().any(|a| a == "--batched") {
        quant_batched();
        return;
    }
    if args.iter().any(|a| a == "--audio") {
        // The audio conformer's f32 products for a 30 s clip (750 frames).
        for (n, k) in [
            (6144, 1536),
            (1536, 6144),
            (4608, 1536),
            (3072, 1536),
            (1536, 1536),
        ] {
            let w = matrix(n, k, DType::F32, 5);
            let t = 750;
            let x = vec![0.01f32; t * k];
            let mut out = vec![0f32; t * n];
            let s = time(5, || matmul_with(&x, t, &w, &mut out, MatmulPath::Gemm));
            let gw = gemma3n_compute::cpu::GemmWeight::new(w);
            let sp = time(5, || gw.matmul(&x, t, &mut out));
            println!(
                "audio f32 t={t} k={k} n={n}: {:.1} GFLOP/s, {:.2} ms; as the tower holds it \
                 ({}): {:.1} GFLOP/s",
                2.0 * (t * k * n) as f64 / s / 1e9,
                s * 1e3,
                if gw.in_panels() {
                    "panels"
                } else {
                    "as stored"
                },
                2.0 * (t * k * n) as f64 / sp / 1e9,
            );
        }
        return;
    }
    if args.iter().any(|a| a == "--quant") {
        quant_speed(bw, args.iter().any(|a| a == "--decode"));
        return;
    }

    // Kernel throughput with the weights hot in L2 (one thread): how far above the memory
    // bandwidth the GEMV kernels could go.
    let k = 2048;
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let n = (256 << 10) / (k * dtype.size());
        let w = matrix(n, k, dtype, 9);
        for t in [1, 4] {
            let x = vec![0.01f32; t * k];
            let mut out = vec![0f32; t * n];
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .expect("pool");
            let s =
                pool.install(|| time(200, || matmul_with(&x, t, &w, &mut out, MatmulPath::Gemv)));
            println!(
                "gemv L2-hot 1 thread {n}x{k} {dtype} t={t}: {:.1} GB/s of weights",
                w.nbytes() as f64 / s / 1e9
            );
        }
    }

    // GEMV. "cold" cycles through copies totalling 8x the L3 (32 MiB) so every call streams
    // from DRAM, as a decode step does; "hot" repeats one matrix.
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let n = 8192;
        let copies = (256 << 20) / (n * k * dtype.size());
        let ws: Vec<Matrix> = (0..copies as u64)
            .map(|s| matrix(n, k, dtype, s + 1))
            .collect();
        for t in [1, 2, 4] {
            let x = vec![0.01f32; t * k];
            let mut out = vec![0f32; t * n];
            let bytes = ws[0].nbytes() as f64;
            let mut c = 0;
            let cold = time(4 * copies, || {
                c = (c + 1) % copies;
                matmul_with(&x, t, &ws[c], &mut out, MatmulPath::Gemv)
            });
            let hot = time(20, || {
                matmul_with(&x, t, &ws[0], &mut out, MatmulPath::Gemv)
            });
            println!(
                "gemv {n}x{k} {dtype} t={t}: cold {:.1} GB/s ({:.0}% of bw), hot {:.1} GB/s, {:.2} ms",
                bytes / cold / 1e9,
                100.0 * bytes / cold / 1e9 / bw,
                bytes / hot / 1e9,
                cold * 1e3
            );
        }
    }
    quant_speed(bw, false);
    if !quick {
        let n = 262_400;
        let w = matrix(n, k, DType::BF16, 7);
        let x = vec![0.01f32; k];
        let mut out = vec![0f32; n];
        let s = time(5, || matmul_with(&x, 1, &w, &mut out, MatmulPath::Gemv));
        let gbs = w.nbytes() as f64 / s / 1e9;
        println!(
            "gemv {n}x{k} bf16 t=1 (LM head): {gbs:.1} GB/s ({:.0}% of bw), {:.1} ms",
            100.0 * gbs / bw,
            s * 1e3
        );
    }

    // GEMM: t x k activations times an n x k weight.
    for (dtype, n, k) in [
        (DType::BF16, 8192, 2048),
        (DType::F32, 8192, 2048),
        (DType::BF16, 2048, 8192),
    ] {
        let w = matrix(n, k, dtype, 3);
        for t in [8, 16, 32, 64, 128, 512] {
            let x = vec![0.01f32; t * k];
            let mut out = vec![0f32; t * n];
            let iters = if t >= 128 { 3 } else { 5 };
            for path in [MatmulPath::Gemm, MatmulPath::Gemv] {
                if path == MatmulPath::Gemv && t > 128 {
                    continue;
                }
                let s = time(iters, || matmul_with(&x, t, &w, &mut out, path));
                println!(
                    "{path:?} t={t} k={k} n={n} {dtype}: {:.1} GFLOP/s, {:.2} ms",
                    2.0 * (t * k * n) as f64 / s / 1e9,
                    s * 1e3
                );
            }
        }
    }
}

/// Block formats (GGUF): the integer kernels with int8 activations, weights streamed from DRAM
/// (GB/s against the read bandwidth `bw`), and batched int8 against dequantize + GEMM.
fn quant_speed(bw: f64, decode_only: bool) {
    // Kernel throughput with the weights hot in L2 (one thread, best of many short runs):
    // the ceiling the DRAM-streaming figures below can reach.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    for dtype in QUANT {
        let k = 2048;
        let n = (256 << 10) / dtype.row_bytes(k);
        let w = matrix(n, k, DType::BF16, 11).quantize(dtype);
        let mut line = format!("quant L2-hot 1 thread {n}x{k} {dtype}:");
        for t in [1, 2, 4] {
            let x: Vec<f32> = (0..t * k)
                .map(|i| ((i % 89) as f32 - 44.0) * 0.01)
                .collect();
            let mut out = vec![0f32; t * n];
            let s =
                pool.install(|| time(300, || matmul_with(&x, t, &w, &mut out, MatmulPath::Gemv)));
            line += &format!(" t={t} {:.1} GB/s", w.nbytes() as f64 / s / 1e9);
        }
        println!("{line}");
    }

    // Block formats (GGUF): integer kernels with int8 activations, weights streamed from DRAM.
    for dtype in QUANT {
        for (n, k) in [(8192, 2048), (2048, 8192)] {
            let base = matrix(n, k, DType::BF16, 5).quantize(dtype);
            let copies = ((256 << 20) / base.nbytes()).max(2);
            let ws: Vec<Matrix> = (0..copies)
                .map(|_| {
                    let bytes: Vec<u8> = (0..n).flat_map(|r| base.row_bytes(r).to_vec()).collect();
                    let m = Matrix::owned(AlignedBytes::from_bytes(&bytes), dtype, n, k);
                    // The layout the CPU decoder uses.
                    gemma3n_compute::cpu::decode_layout(&m).unwrap_or(m)
                })
                .collect();
            let layout = format!("{:?}", ws[0].layout());
            let bytes = ws[0].nbytes() as f64;
            for t in [1, 2, 4] {
                let x = vec![0.01f32; t * k];
                let mut out = vec![0f32; t * n];
                let mut c = 0;
                let cold = time(2 * copies, || {
                    c = (c + 1) % copies;
                    matmul_with(&x, t, &ws[c], &mut out, MatmulPath::Gemv)
                });
                // One thread, the same matrix again and again (in L3): the kernel's own speed.
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .expect("pool");
                let hot = pool.install(|| {
                    time(10, || {
                        matmul_with(&x, t, &ws[0], &mut out, MatmulPath::Gemv)
                    })
                });
                println!(
                    "quant {n}x{k} {dtype} ({layout}) t={t}: cold {:.1} GB/s ({:.0}% of bw), \
                     {:.3} ms; 1 thread L3-hot {:.1} GB/s",
                    bytes / cold / 1e9,
                    100.0 * bytes / cold / 1e9 / bw,
                    cold * 1e3,
                    bytes / hot / 1e9
                );
            }
            if n == 8192 && !decode_only {
                for t in [16, 128] {
                    let x: Vec<f32> = (0..t * k)
                        .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
                        .collect();
                    let mut out = vec![0f32; t * n];
                    for path in [MatmulPath::Gemv, MatmulPath::Gemm] {
                        let s = time(2, || matmul_with(&x, t, &ws[0], &mut out, path));
                        let name = if path == MatmulPath::Gemv {
                            "int8"
                        } else {
                            "deq+gemm"
                        };
                        println!(
                            "quant {name} t={t} {n}x{k} {dtype}: {:.1} GFLOP/s, {:.2} ms",
                            2.0 * (t * k * n) as f64 / s / 1e9,
                            s * 1e3
                        );
                    }
                }
            }
        }
    }
}

/// The integer kernels' arithmetic throughput with several activation rows (batched decode):
/// 2048 x 2048 (a few MB, cache-resident after the first call) and 1024 x 8192 (long rows,
/// as a down projection), 1 thread and all.
fn quant_batched() {
    for ((n, k), dtype) in [(2048, 2048), (1024, 8192)]
        .into_iter()
        .flat_map(|nk| QUANT.map(|d| (nk, d)))
    {
        let rows = matrix(n, k, DType::BF16, 13).quantize(dtype);
        // Q8_0 and Q4_K also in the interleaved layout the CPU loader gives them.
        let il = rows.interleave8().map(|m| (m, " x8"));
        for (w, layout) in std::iter::once((rows, "")).chain(il) {
            quant_batched_one(dtype, &w, layout);
        }
    }
}

/// One table row per thread count: `w` against 1 to 128 activation rows.
fn quant_batched_one(dtype: DType, w: &Matrix, layout: &str) {
    let (n, k) = (w.rows(), w.cols());
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let mut line = format!("quant batched {n}x{k} {dtype}{layout} {threads} thr GFLOP/s:");
        for t in [1, 4, 8, 16, 32, 64, 128] {
            let x: Vec<f32> = (0..t * k)
                .map(|i| ((i % 97) as f32 - 48.0) * 0.01)
                .collect();
            let mut out = vec![0f32; t * n];
            let s = pool.install(|| time(20, || matmul_with(&x, t, w, &mut out, MatmulPath::Gemv)));
            line += &format!(" t={t} {:.1}", 2.0 * (t * k * n) as f64 / s / 1e9);
        }
        println!("{line}");
    }
}
