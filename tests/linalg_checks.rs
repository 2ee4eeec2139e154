//! Integration tests: Lanczos, trace estimators and SLQ against matrices with a
//! known spectrum, and Lanczos on the analytic Hessian against dense eigenvalues.

use landscape::hessian::small_eig::jacobi_eigenvalues;
use landscape::hessian::{dense_hessian, HessianOperator, Part};
use landscape::linalg::{
    exact_trace, hutch_pp, hutchinson, lanczos, slq, DenseSym, LanczosOptions, SymOp, Which,
};
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig};
use landscape::rng::Rng;
use landscape::tensor::matmul;
use landscape::Matrix;

/// `Q diag(l) Q^T` with `Q` orthogonal (Gram-Schmidt of a Gaussian matrix).
fn with_spectrum(l: &[f64], seed: u64) -> Matrix<f64> {
    let n = l.len();
    let mut rng = Rng::new(seed);
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        for _ in 0..2 {
            for b in &q {
                let c: f64 = b.iter().zip(&v).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= c * y);
            }
        }
        let nv = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.iter_mut().for_each(|x| *x /= nv);
        q.push(v);
    }
    let qm = Matrix::from_fn(n, n, |i, j| q[j][i]);
    let ql = Matrix::from_fn(n, n, |i, j| qm.get(i, j) * l[j]);
    let a = matmul(ql.view(), qm.t());
    Matrix::from_fn(n, n, |i, j| 0.5 * (a.get(i, j) + a.get(j, i)))
}

#[test]
fn lanczos_recovers_known_spectra() {
    for (case, n) in [1usize, 2, 3, 7, 31, 100].into_iter().enumerate() {
        let l: Vec<f64> = (0..n)
            .map(|i| (i as f64 - n as f64 / 3.0) * 0.7 + if i % 5 == 0 { 3.0 } else { 0.0 })
            .collect();
        let a = with_spectrum(&l, case as u64);
        let mut sorted = l.clone();
        sorted.sort_by(|x, y| x.total_cmp(y));
        let anorm = sorted
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-300);
        let k = 3.min(n);
        for which in [
            Which::Largest(k),
            Which::Smallest(k),
            Which::BothEnds {
                largest: 1,
                smallest: 1,
            },
        ] {
            let res = lanczos(
                &DenseSym(&a),
                which,
                &LanczosOptions {
                    max_iter: n,
                    ..Default::default()
                },
            )
            .unwrap();
            let expect: Vec<f64> = match which {
                Which::Largest(k) => sorted.iter().rev().take(k).copied().collect(),
                Which::Smallest(k) => sorted.iter().take(k).copied().collect(),
                Which::BothEnds { .. } if n == 1 => vec![sorted[0]],
                Which::BothEnds { .. } => vec![sorted[n - 1], sorted[0]],
            };
            for (i, (&got, want)) in res.values.iter().zip(expect).enumerate() {
                assert!(
                    (got - want).abs() <= 1e-8 * anorm,
                    "n={n} {which:?}: {got} vs {want}"
                );
                assert!(
                    res.residuals[i] <= 1e-8 * anorm,
                    "n={n}: residual {}",
                    res.residuals[i]
                );
            }
        }
    }
}

#[test]
fn lanczos_handles_repeated_and_low_rank_spectra() {
    // Rank 3 in dimension 50, and a spectrum with a 20-fold repeated eigenvalue.
    let mut l = vec![0.0; 50];
    l[0] = 5.0;
    l[1] = -2.0;
    l[2] = 1.0;
    let a = with_spectrum(&l, 7);
    let res = lanczos(
        &DenseSym(&a),
        Which::BothEnds {
            largest: 2,
            smallest: 1,
        },
        &LanczosOptions::default(),
    )
    .unwrap();
    assert!(
        (res.values[0] - 5.0).abs() < 1e-9
            && (res.values[1] - 1.0).abs() < 1e-9
            && (res.values[2] + 2.0).abs() < 1e-9,
        "{:?}",
        res.values
    );
    let mut r = vec![1.0; 40];
    r.extend((0..10).map(|i| 2.0 + i as f64));
    let b = with_spectrum(&r, 8);
    let res = lanczos(
        &DenseSym(&b),
        Which::Smallest(2),
        &LanczosOptions::default(),
    )
    .unwrap();
    assert!(
        res.values.iter().all(|v| (v - 1.0).abs() < 1e-9),
        "{:?}",
        res.values
    );
    // Certificates: |l| - residual is a valid lower bound on the top magnitude.
    let top = lanczos(&DenseSym(&b), Which::Largest(1), &LanczosOptions::default()).unwrap();
    assert!(top.certified_lower_bound(0) <= 11.0 + 1e-12 && top.certified_lower_bound(0) > 10.99);
    // Bad requests are errors.
    assert!(lanczos(
        &DenseSym(&b),
        Which::Largest(51),
        &LanczosOptions::default()
    )
    .is_err());
    assert!(lanczos(&DenseSym(&b), Which::Largest(0), &LanczosOptions::default()).is_err());
}

#[test]
fn trace_estimators_cover_the_exact_trace() {
    let n = 60;
    let l: Vec<f64> = (0..n).map(|i| 10.0 * 0.8f64.powi(i) - 0.3).collect();
    let a = with_spectrum(&l, 3);
    let exact: f64 = l.iter().sum();
    assert!((exact_trace(&DenseSym(&a)) - exact).abs() < 1e-10);
    let (mut cover_h, mut cover_pp) = (0, 0);
    let (mut err_h, mut err_pp) = (0.0, 0.0);
    let trials = 200;
    for seed in 0..trials {
        let h = hutchinson(&DenseSym(&a), 30, seed).unwrap();
        let p = hutch_pp(&DenseSym(&a), 30, seed).unwrap();
        cover_h += usize::from(h.ci95.0 <= exact && exact <= h.ci95.1);
        cover_pp += usize::from(p.ci95.0 <= exact && exact <= p.ci95.1);
        err_h += (h.estimate - exact).abs();
        err_pp += (p.estimate - exact).abs();
    }
    assert!(
        cover_h as f64 >= 0.9 * trials as f64,
        "Hutchinson coverage {cover_h}/{trials}"
    );
    assert!(
        cover_pp as f64 >= 0.9 * trials as f64,
        "Hutch++ coverage {cover_pp}/{trials}"
    );
    assert!(
        err_pp < err_h,
        "Hutch++ mean error {} vs Hutchinson {}",
        err_pp / trials as f64,
        err_h / trials as f64
    );
}

#[test]
fn slq_density_integrates_to_one_and_estimates_the_trace() {
    let n = 80;
    let l: Vec<f64> = (0..n)
        .map(|i| (i as f64 * 0.37).sin() * 2.0 + if i < 3 { 10.0 } else { 0.0 })
        .collect();
    let a = with_spectrum(&l, 11);
    let sd = slq(&DenseSym(&a), 40, 30, 5).unwrap();
    let grid: Vec<f64> = (0..2001).map(|i| -6.0 + 18.0 * i as f64 / 2000.0).collect();
    let dens = sd.density(&grid, 0.1);
    let integral: f64 = dens.iter().sum::<f64>() * 18.0 / 2000.0;
    assert!((integral - 1.0).abs() < 1e-3, "{integral}");
    let exact: f64 = l.iter().sum();
    let est = sd.estimated_trace(n);
    assert!(
        (est - exact).abs() < 0.15 * exact.abs().max(10.0),
        "{est} vs {exact}"
    );
}

/// Lanczos on the analytic Hessian operator matches the dense eigenvalues,
/// with true residuals <= 1e-8 ||H||.
#[test]
fn lanczos_on_the_hessian_matches_dense_eigenvalues() {
    let cfg = MlpConfig {
        input_dim: 5,
        hidden: vec![7, 4],
        classes: 3,
        activation: Activation::Tanh,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let model = Mlp::<f64>::init(cfg, Init::Torch, 1.5, 2).unwrap();
    let mut rng = Rng::new(4);
    let x = Matrix::from_fn(40, 5, |_, _| rng.normal());
    let y: Vec<usize> = (0..40).map(|i| i % 3).collect();
    let h = dense_hessian(&model, &x, &y, Part::Full, 1 << 30).unwrap();
    let ev = jacobi_eigenvalues(&h);
    let hnorm = ev.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    struct Op<'a>(HessianOperator<'a>);
    impl SymOp for Op<'_> {
        fn dim(&self) -> usize {
            self.0.dim()
        }
        fn apply(&self, v: &[f64], out: &mut [f64]) {
            out.copy_from_slice(&self.0.apply(v).unwrap());
        }
    }
    let op = Op(HessianOperator::new(&model, &x, &y, Part::Full).unwrap());
    let res = lanczos(
        &op,
        Which::BothEnds {
            largest: 3,
            smallest: 2,
        },
        &LanczosOptions {
            max_iter: 200,
            tol: 1e-12,
            ..Default::default()
        },
    )
    .unwrap();
    let n = ev.len();
    let expect = [ev[n - 1], ev[n - 2], ev[n - 3], ev[0], ev[1]];
    for (i, (got, want)) in res.values.iter().zip(expect).enumerate() {
        assert!((got - want).abs() <= 1e-9 * hnorm, "{got} vs {want}");
        assert!(
            res.residuals[i] <= 1e-8 * hnorm,
            "residual {}",
            res.residuals[i]
        );
    }
}

#[test]
fn non_finite_operators_give_errors_not_panics() {
    struct Nan;
    impl SymOp for Nan {
        fn dim(&self) -> usize {
            5
        }
        fn apply(&self, _: &[f64], out: &mut [f64]) {
            out.fill(f64::NAN);
        }
    }
    assert!(lanczos(&Nan, Which::Largest(1), &LanczosOptions::default()).is_err());
    assert!(hutchinson(&Nan, 4, 0).is_err());
    assert!(hutch_pp(&Nan, 9, 0).is_err());
    assert!(slq(&Nan, 2, 3, 0).is_err());
}

/// `lanczos_mixed` builds its Krylov space with a perturbed operator, yet reports
/// the exact operator's eigenvalues and true residuals: against a known spectrum,
/// with a slightly wrong approximation (relative error 1e-4, as f32 HVPs) and with
/// a useless one (another matrix entirely).
#[test]
fn mixed_lanczos_certifies_with_the_exact_operator() {
    use landscape::linalg::lanczos_mixed;
    let n = 60;
    let l: Vec<f64> = (0..n).map(|i| ((i * 37) % n) as f64 * 0.1 - 2.0).collect();
    let a = with_spectrum(&l, 7);
    let mut sorted = l.clone();
    sorted.sort_by(|x, y| x.total_cmp(y));
    let anorm = sorted.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut rng = Rng::new(8);
    let noise = Matrix::from_fn(n, n, |_, _| rng.normal());
    let near = Matrix::from_fn(n, n, |i, j| {
        a.get(i, j) + 1e-4 * anorm / (n as f64).sqrt() * 0.5 * (noise.get(i, j) + noise.get(j, i))
    });
    let other = with_spectrum(&(0..n).map(|i| (i as f64).sin()).collect::<Vec<_>>(), 9);
    let opts = LanczosOptions {
        max_iter: n,
        tol: 1e-9,
        check_every: 1,
        ..Default::default()
    };
    for (case, approx) in [("near", &near), ("other", &other)] {
        let which = Which::BothEnds {
            largest: 2,
            smallest: 1,
        };
        let res = lanczos_mixed(DenseSym(approx), &DenseSym(&a), which, &opts).unwrap();
        assert!(res.converged, "{case}: not converged");
        assert!(res.approx_products > 0, "{case}: no approximate products");
        let want = [sorted[n - 1], sorted[n - 2], sorted[0]];
        for ((&got, &w), &r) in res.values.iter().zip(&want).zip(&res.residuals) {
            assert!((got - w).abs() <= 1e-8 * anorm, "{case}: {got} vs {w}");
            assert!(r <= 1e-8 * anorm, "{case}: residual {r}");
            // The reported residual is the exact operator's, recomputed here.
        }
        for (y, (&lv, &r)) in res
            .vectors
            .iter()
            .zip(res.values.iter().zip(&res.residuals))
        {
            let mut ay = vec![0.0; n];
            DenseSym(&a).apply(y, &mut ay);
            let true_r = ay
                .iter()
                .zip(y)
                .map(|(p, q)| (p - lv * q).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (true_r - r).abs() <= 1e-12 * anorm,
                "{case}: residual {r} reported, {true_r} recomputed"
            );
        }
    }
    let small = Matrix::from_fn(3, 3, |i, j| if i == j { 1.0 } else { 0.0 });
    assert!(lanczos_mixed(DenseSym(&small), &DenseSym(&a), Which::Largest(1), &opts).is_err());
}
