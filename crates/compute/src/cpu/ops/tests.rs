//! The ops against f64 formulas, and the SIMD kernels against the portable ones.

use super::*;

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = crate::testing::values(n, seed);
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// The tanh formula in f64, written as `x / (1 + e^(-2u))` (the same function) because
/// `1 + tanh(u)` cancels to 0 for u below about -19 even in f64.
fn gelu_f64(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let u = c * (x + 0.044715 * x * x * x);
    let r = x / (1.0 + (-2.0 * u).exp());
    if u > -2.0 {
        assert!((r - 0.5 * x * (1.0 + u.tanh())).abs() <= 1e-12 * r.abs() + 1e-300);
    }
    r
}

#[test]
fn gelu_is_accurate() {
    let mut xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 1e-3).collect();
    xs.extend(values(4099, 1, 3.0));
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 1e4, -1e4]);
    for simd in [true, false] {
        let mut y = xs.clone();
        if simd {
            gelu_tanh(&mut y);
        } else {
            scalar::gelu_tanh(&mut y);
        }
        let mut worst = 0f64;
        for (&x, &g) in xs.iter().zip(&y) {
            let r = gelu_f64(x as f64);
            let err = (g as f64 - r).abs();
            // ~1e-7 relative near 0, growing like x² for negative x (the exponent -2u is
            // rounded to f32); values below 1e-30 in magnitude only need to be tiny.
            let tol = 2e-7 * (1.0 + (x as f64) * (x as f64)) * r.abs() + 1e-30;
            assert!(err <= tol, "simd={simd} gelu({x}) = {g}, expected {r}");
            if x.abs() <= 4.0 && r.abs() > 1e-30 {
                worst = worst.max(err / r.abs());
            }
        }
        assert!(
            worst < 2e-6,
            "simd={simd}: worst relative error {worst:e} on [-4, 4]"
        );
    }
}

#[test]
fn exp_kernel_is_accurate() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut worst = 0f64;
        for i in -8700..8830 {
            let base = i as f32 * 0.01;
            let v: [f32; 8] = std::array::from_fn(|l| base + l as f32 * 0.00123);
            let e = x86::test_access::exp8(v);
            for l in 0..8 {
                let r = (v[l] as f64).exp();
                worst = worst.max((e[l] as f64 - r).abs() / r);
            }
        }
        assert!(worst < 3e-7, "exp8 worst relative error {worst:e}");
        let e = x86::test_access::exp8([-100.0, -88.0, 89.0, f32::NAN, 0.0, 1.0, -1.0, 88.0]);
        assert_eq!(e[0], 0.0);
        assert_eq!(e[1], 0.0);
        assert_eq!(e[2], f32::INFINITY);
        assert!(e[3].is_nan());
        assert_eq!(e[4], 1.0);
    }
}

#[test]
fn ops_match_f64_and_scalar() {
    for n in [0usize, 1, 7, 8, 15, 16, 17, 31, 33, 256, 1000, 2048] {
        let a = values(n, n as u64 + 1, 2.0);
        let b = values(n, n as u64 + 2, 2.0);
        let mag: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (*x as f64 * *y as f64).abs())
            .sum();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!(
            (dot(&a, &b) as f64 - exact).abs() <= 1e-6 * mag + 1e-30,
            "dot n={n}"
        );
        assert!((scalar::dot(&a, &b) as f64 - exact).abs() <= 1e-6 * mag + 1e-30);

        let mut y = b.clone();
        axpy(0.37, &a, &mut y);
        let mut ys = b.clone();
        scalar::axpy(0.37, &a, &mut ys);
        for i in 0..n {
            let r = b[i] as f64 + 0.37 * a[i] as f64;
            assert!(
                (y[i] as f64 - r).abs() <= 1e-6 * (1.0 + r.abs()),
                "axpy n={n}"
            );
            assert!((ys[i] - y[i]).abs() <= 1e-6 * (1.0 + y[i].abs()));
        }

        let mut s = a.clone();
        scale(&mut s, -1.5);
        assert!(
            s.iter().zip(&a).all(|(s, a)| *s == *a * -1.5),
            "scale n={n}"
        );

        if n > 0 {
            let ms_exact = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64;
            assert!(
                (mean_square(&a) as f64 - ms_exact).abs() <= 1e-6 * ms_exact,
                "ms n={n}"
            );
        }

        let inp = a.iter().map(|v| v * 10.0).collect::<Vec<_>>();
        let mut p = inp.clone();
        let mut ps = p.clone();
        softmax(&mut p);
        scalar::softmax(&mut ps);
        if n > 0 {
            let m = inp
                .iter()
                .map(|v| *v as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = inp.iter().map(|v| (*v as f64 - m).exp()).sum();
            for i in 0..n {
                let d = inp[i] as f64 - m;
                let r = d.exp() / z;
                // f32 rounds x - max, which the exponential turns into ~6e-8·|x - max|.
                let tol = 3e-7 * (1.0 + d.abs()) * r + 1e-30;
                assert!((p[i] as f64 - r).abs() <= tol, "softmax n={n}");
                assert!((ps[i] as f64 - r).abs() <= tol, "softmax scalar n={n}");
            }
        }
    }
}

#[test]
fn softmax_with_masked_entries() {
    let mut x = vec![f32::NEG_INFINITY; 40];
    x[3] = 1.0;
    x[17] = 1.0;
    x[39] = 1.0;
    softmax(&mut x);
    for (i, v) in x.iter().enumerate() {
        let expect = if [3, 17, 39].contains(&i) {
            1.0 / 3.0
        } else {
            0.0
        };
        assert!((v - expect).abs() <= 1e-7, "softmax[{i}] = {v}");
    }
}

#[test]
fn rms_norm_matches_f64() {
    for dim in [1usize, 5, 8, 33, 256, 2048] {
        let rows = 3;
        let x = values(rows * dim, dim as u64, 4.0);
        let w = values(dim, 7, 1.5);
        for weight in [None, Some(&w[..])] {
            let mut y = x.clone();
            rms_norm_rows(&mut y, dim, weight, 1e-6);
            for r in 0..rows {
                let row = &x[r * dim..(r + 1) * dim];
                let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
                let inv = 1.0 / (ms + 1e-6).sqrt();
                for i in 0..dim {
                    let e = row[i] as f64 * inv * weight.map_or(1.0, |w| w[i] as f64);
                    let g = y[r * dim + i] as f64;
                    assert!(
                        (g - e).abs() <= 1e-6 * (1.0 + e.abs()),
                        "dim {dim} [{r},{i}]"
                    );
                }
            }
        }
    }
    let mut empty: Vec<f32> = vec![];
    rms_norm_rows(&mut empty, 0, None, 1e-6);
}

#[test]
fn silu_and_glu_are_accurate() {
    let mut xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 5e-3).collect();
    xs.extend(values(4099, 7, 4.0));
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 200.0, -200.0]);
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for simd in [true, false] {
        let mut y = xs.clone();
        if simd {
            silu(&mut y);
        } else {
            scalar::silu(&mut y);
        }
        for (&x, &s) in xs.iter().zip(&y) {
            let r = x as f64 * sig(x as f64);
            let err = (s as f64 - r).abs();
            assert!(
                err <= 4e-7 * r.abs() + 1e-30,
                "simd={simd} silu({x}) = {s}, expected {r}"
            );
        }
    }
    // glu on rows [a, b] of several widths (SIMD body and scalar tails).
    for dim in [1usize, 7, 8, 37, 1536] {
        let x = values(3 * 2 * dim, dim as u64, 3.0);
        let g = glu_rows(&x, dim);
        assert_eq!(g.len(), 3 * dim);
        for r in 0..3 {
            for i in 0..dim {
                let (a, b) = (x[r * 2 * dim + i] as f64, x[r * 2 * dim + dim + i] as f64);
                let want = a * sig(b);
                let got = g[r * dim + i] as f64;
                assert!(
                    (got - want).abs() <= 4e-7 * want.abs() + 1e-37,
                    "glu dim {dim}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn soft_cap_is_accurate_and_rows_match_each_row_alone() {
    let cap = 30.0f32;
    let mut xs: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 1e-2).collect();
    xs.extend(values(4099, 7, 40.0));
    xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e4, -1e4, f32::MAX, f32::MIN]);
    for simd in [true, false] {
        let mut y = xs.clone();
        if simd {
            soft_cap(&mut y, cap);
        } else {
            scalar::soft_cap(&mut y, cap);
        }
        for (&x, &g) in xs.iter().zip(&y) {
            let r = cap as f64 * (x as f64 / cap as f64).tanh();
            // Absolute error against cap (the scale of every output): the cancellation in
            // 1 - e for small |x| costs a few f32 ulps of 1.
            assert!(
                (g as f64 - r).abs() <= 1e-6 * cap as f64,
                "simd={simd}: soft_cap({x}) = {g}, expected {r}"
            );
            assert_eq!(g.is_sign_negative(), x.is_sign_negative(), "sign of {x}");
        }
    }
    let mut nan = [f32::NAN; 9];
    soft_cap(&mut nan, cap);
    assert!(nan.iter().all(|v| v.is_nan()));
    // Rows of a length that leaves a scalar tail: each row as if alone.
    for dim in [5, 37, 300, 1000] {
        let x = values(4 * dim, dim as u64, 50.0);
        let mut all = x.clone();
        soft_cap_rows(&mut all, dim, cap);
        for (r, row) in x.chunks(dim).enumerate() {
            let mut one = row.to_vec();
            soft_cap(&mut one, cap);
            assert_eq!(one, all[r * dim..(r + 1) * dim], "dim {dim} row {r}");
        }
    }
}

#[test]
fn grouped_rows_match_f64() {
    // m query heads sharing n key/value rows of length d, stored `stride` apart.
    for &(m, d, n, stride) in &[
        (1usize, 256usize, 5usize, 512usize),
        (4, 256, 33, 512),
        (5, 16, 7, 16),
        (7, 17, 3, 40),
        (3, 264, 1, 300),
        (9, 8, 4, 8),
        (4, 31, 0, 31),
        (2, 3, 6, 5),
    ] {
        let q = values(m * d, (m * 31 + d) as u64, 1.0);
        let rows = values(n.saturating_sub(1) * stride + d, (n + 7) as u64, 1.0);
        let a = values(m * n, (d + 3) as u64, 1.0);
        let y0 = values(m * d, 99, 1.0);
        let row = |j: usize| &rows[j * stride..j * stride + d];

        let mut s = vec![0f32; m * n];
        let mut ss = vec![0f32; m * n];
        dot_rows(&q, m, &rows, stride, n, &mut s);
        scalar::dot_rows(&q, m, &rows, stride, n, &mut ss);
        for i in 0..m {
            for j in 0..n {
                let qi = &q[i * d..(i + 1) * d];
                let (exact, mag) = qi.iter().zip(row(j)).fold((0f64, 0f64), |(e, g), (x, y)| {
                    let p = *x as f64 * *y as f64;
                    (e + p, g + p.abs())
                });
                let tol = 1e-6 * mag + 1e-30;
                assert!(
                    (s[i * n + j] as f64 - exact).abs() <= tol,
                    "dot_rows {m} {d} {n}"
                );
                assert!(
                    (ss[i * n + j] as f64 - exact).abs() <= tol,
                    "scalar {m} {d} {n}"
                );
            }
        }

        let mut y = y0.clone();
        let mut ys = y0.clone();
        axpy_rows(&a, m, &rows, stride, n, &mut y);
        scalar::axpy_rows(&a, m, &rows, stride, n, &mut ys);
        for i in 0..m {
            for e in 0..d {
                let (mut exact, mut mag) = (y0[i * d + e] as f64, y0[i * d + e].abs() as f64);
                for j in 0..n {
                    let p = a[i * n + j] as f64 * row(j)[e] as f64;
                    exact += p;
                    mag += p.abs();
                }
                let tol = 1e-6 * mag + 1e-30;
                assert!(
                    (y[i * d + e] as f64 - exact).abs() <= tol,
                    "axpy_rows {m} {d} {n}"
                );
                assert!(
                    (ys[i * d + e] as f64 - exact).abs() <= tol,
                    "scalar {m} {d} {n}"
                );
            }
        }
    }
}
