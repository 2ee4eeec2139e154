//! Integration tests of issue 14 (wide networks): sigmoid and softplus against finite
//! differences; L-BFGS and Newton-CG on functions with known minima; the squared loss
//! with real targets and the layer-block Hessian against finite differences and the
//! dense Hessian; the rank report against an independent eigendecomposition; the
//! deep-linear optimum against a closed form computed another way; the ReLU certificate.

use crate::common::{mlp_config as config, TempDir};
use landscape::autodiff::hvp as tape_hvp;
use landscape::experiments::wide::linear::{linear_networks, linear_optimum, LinearConfig};
use landscape::experiments::wide::rank::{
    default_tol, jacobi_svd, projection_residual, rank_report,
};
use landscape::experiments::wide::relu::constructed_relu_point;
use landscape::experiments::wide::sweep::dense_of;
use landscape::experiments::wide::{
    layer_range, loss_and_grad, BlockOp, SquaredLoss, TrainSettings,
};
use landscape::hessian::small_eig::jacobi_eigenvalues;
use landscape::hessian::{dense_hessian, HessianOperator, Part};
use landscape::linalg::SymOp;
use landscape::nn::backprop::loss_and_grad_analytic;
use landscape::nn::{Activation, Init, LossKind, Mlp, Mode};
use landscape::optim::{
    lbfgs, newton_cg, LbfgsConfig, NewtonCgConfig, Objective, SecondOrder, StopReason,
};
use landscape::rng::Rng;
use landscape::Matrix;

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(u, v)| (u - v).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

fn randn(r: usize, c: usize, seed: u64) -> Matrix<f64> {
    let mut rng = Rng::new(seed);
    Matrix::from_fn(r, c, |_, _| rng.normal())
}

#[test]
fn sigmoid_softplus_derivatives_match_finite_differences() {
    for act in [Activation::Sigmoid, Activation::Softplus] {
        for &z in &[-30.0f64, -7.3, -1.0, -0.2, 0.0, 0.4, 1.7, 9.0, 35.0] {
            let h = 1e-5;
            let d1 = (act.apply(z + h, 0.0) - act.apply(z - h, 0.0)) / (2.0 * h);
            let d2 = (act.derivative(z + h, 0.0) - act.derivative(z - h, 0.0)) / (2.0 * h);
            assert!((act.derivative(z, 0.0) - d1).abs() <= 1e-9, "{act:?} z={z}");
            assert!(
                (act.second_derivative(z) - d2).abs() <= 1e-9,
                "{act:?} z={z}"
            );
        }
        assert!(!act.is_piecewise_linear());
    }
    // Closed forms and overflow-free tails.
    assert!((Activation::Sigmoid.apply(0.0f64, 0.0) - 0.5).abs() < 1e-16);
    assert!((Activation::Softplus.apply(0.0f64, 0.0) - 2f64.ln()).abs() < 1e-16);
    assert_eq!(Activation::Softplus.apply(800.0f64, 0.0), 800.0);
    assert_eq!(Activation::Sigmoid.apply(-800.0f64, 0.0), 0.0);
}

/// Central differences of the analytic gradient.
fn fd_hessian(model: &Mlp<f64>, x: &Matrix<f64>, y: &[usize]) -> Matrix<f64> {
    let theta = model.param_vector();
    let p = theta.len();
    let grad = |t: &[f64]| -> Vec<f64> {
        let mut m = model.clone();
        m.set_param_vector(t).unwrap();
        let (_, g) = loss_and_grad_analytic(&m, x, y).unwrap();
        g.iter().flat_map(|t| t.as_slice().to_vec()).collect()
    };
    let h = 1e-5;
    let mut out = Matrix::zeros(p, p);
    for j in 0..p {
        let (mut tp, mut tm) = (theta.clone(), theta.clone());
        tp[j] += h;
        tm[j] -= h;
        let (gp, gm) = (grad(&tp), grad(&tm));
        for i in 0..p {
            out.set(i, j, (gp[i] - gm[i]) / (2.0 * h));
        }
    }
    out
}

#[test]
fn sigmoid_softplus_exact_hessians_match_finite_differences_and_double_backward() {
    let mut seed = 0;
    for act in [Activation::Sigmoid, Activation::Softplus] {
        for (widths, bias, loss) in [
            (vec![3, 4, 2], true, LossKind::Mse),
            (vec![2, 3, 7, 3], false, LossKind::CrossEntropy),
            (vec![4, 1, 2], true, LossKind::CrossEntropy),
        ] {
            seed += 1;
            let cfg = config(&widths, act, bias, loss);
            let model = Mlp::<f64>::init(cfg, Init::Xavier, 1.5, seed).unwrap();
            let x = randn(5, widths[0], seed);
            let y: Vec<usize> = (0..5).map(|i| i % widths[widths.len() - 1]).collect();
            // Gradient against central differences of the loss.
            let (l0, g) = loss_and_grad_analytic(&model, &x, &y).unwrap();
            assert!(l0.is_finite());
            let g: Vec<f64> = g.iter().flat_map(|t| t.as_slice().to_vec()).collect();
            let theta = model.param_vector();
            let fd_g: Vec<f64> = (0..theta.len())
                .map(|j| {
                    let f = |d: f64| {
                        let mut t = theta.clone();
                        t[j] += d;
                        let mut m = model.clone();
                        m.set_param_vector(&t).unwrap();
                        loss_and_grad_analytic(&m, &x, &y).unwrap().0
                    };
                    (f(1e-6) - f(-1e-6)) / 2e-6
                })
                .collect();
            assert!(rel(&g, &fd_g) < 1e-7, "{act:?} gradient {}", rel(&g, &fd_g));
            let h = dense_hessian(&model, &x, &y, Part::Full, 1 << 28).unwrap();
            let fd = fd_hessian(&model, &x, &y);
            let e = rel(h.as_slice(), fd.as_slice());
            assert!(e <= 1e-6, "{act:?} {widths:?}: dense vs FD {e:.2e}");
            // HVP operator and tape double backward against the dense matrix.
            let mut rng = Rng::new(seed + 50);
            let v: Vec<f64> = (0..theta.len()).map(|_| rng.normal()).collect();
            let hv = HessianOperator::new(&model, &x, &y, Part::Full)
                .unwrap()
                .apply(&v)
                .unwrap();
            let dense_v: Vec<f64> = (0..theta.len())
                .map(|i| (0..theta.len()).map(|j| h.get(i, j) * v[j]).sum())
                .collect();
            assert!(rel(&hv, &dense_v) < 1e-12, "{act:?} HVP vs dense");
            let params: Vec<Matrix<f64>> = model
                .named_params()
                .into_iter()
                .map(|(_, m)| m.clone())
                .collect();
            let mut off = 0;
            let vm: Vec<Matrix<f64>> = params
                .iter()
                .map(|m| {
                    let t = Matrix::from_vec(m.rows(), m.cols(), v[off..off + m.len()].to_vec());
                    off += m.len();
                    t
                })
                .collect();
            let (_, _, tv) = tape_hvp(&params, &vm, |t, vars| {
                model
                    .loss_tape(vars, t.constant(x.clone()), &y, Mode::Eval)
                    .0
            });
            let tv: Vec<f64> = tv.iter().flat_map(|m| m.as_slice().to_vec()).collect();
            assert!(
                rel(&tv, &dense_v) < 1e-10,
                "{act:?} tape vs dense {}",
                rel(&tv, &dense_v)
            );
        }
    }
}

struct Quadratic {
    a: Matrix<f64>,
    b: Vec<f64>,
}

impl Objective for Quadratic {
    fn dim(&self) -> usize {
        self.b.len()
    }
    fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let n = self.b.len();
        let ax: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| self.a.get(i, j) * x[j]).sum())
            .collect();
        let f = 0.5 * x.iter().zip(&ax).map(|(u, v)| u * v).sum::<f64>()
            - x.iter().zip(&self.b).map(|(u, v)| u * v).sum::<f64>();
        (f, ax.iter().zip(&self.b).map(|(u, v)| u - v).collect())
    }
}

#[test]
fn lbfgs_minimises_a_convex_quadratic() {
    let n = 7;
    let r = randn(n, n, 3);
    // A = R^T R + I (SPD, condition number ~ 50).
    let a = Matrix::from_fn(n, n, |i, j| {
        (0..n).map(|k| r.get(k, i) * r.get(k, j)).sum::<f64>() + if i == j { 1.0 } else { 0.0 }
    });
    let b: Vec<f64> = (0..n).map(|i| (i as f64) - 2.5).collect();
    let q = Quadratic {
        a: a.clone(),
        b: b.clone(),
    };
    let res = lbfgs(
        &q,
        &vec![0.0; n],
        &LbfgsConfig {
            grad_rtol: 1e-12,
            ..Default::default()
        },
    );
    assert_eq!(res.stop, StopReason::GradientSmall);
    // Known minimiser A^{-1} b: check A x* = b.
    let ax: Vec<f64> = (0..n)
        .map(|i| (0..n).map(|j| a.get(i, j) * res.x[j]).sum())
        .collect();
    assert!(rel(&ax, &b) < 1e-10, "{}", rel(&ax, &b));
    assert!(res.iterations < 60, "{} iterations", res.iterations);
}

struct Rosenbrock;

impl Objective for Rosenbrock {
    fn dim(&self) -> usize {
        2
    }
    fn value_grad(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let (a, b) = (x[0], x[1]);
        let f = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
        (
            f,
            vec![
                -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
                200.0 * (b - a * a),
            ],
        )
    }
}

struct Dense2(Matrix<f64>);
impl SymOp for Dense2 {
    fn dim(&self) -> usize {
        2
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.0.get(i, 0) * v[0] + self.0.get(i, 1) * v[1];
        }
    }
}

impl SecondOrder for Rosenbrock {
    fn with_hessian(&self, x: &[f64], f: &mut dyn FnMut(&dyn SymOp)) {
        let (a, b) = (x[0], x[1]);
        let h = Matrix::from_vec(
            2,
            2,
            vec![
                2.0 - 400.0 * (b - 3.0 * a * a),
                -400.0 * a,
                -400.0 * a,
                200.0,
            ],
        );
        f(&Dense2(h));
    }
}

#[test]
fn lbfgs_and_newton_cg_find_the_rosenbrock_minimum() {
    let res = lbfgs(&Rosenbrock, &[-1.2, 1.0], &LbfgsConfig::default());
    assert!(res.stop.is_converged(), "{:?}", res.stop);
    assert!(
        (res.x[0] - 1.0).abs() < 1e-6 && (res.x[1] - 1.0).abs() < 1e-6,
        "{:?}",
        res.x
    );
    let nt = newton_cg(
        &Rosenbrock,
        &[-1.2, 1.0],
        &NewtonCgConfig {
            max_iter: 100,
            ..Default::default()
        },
    );
    assert!(
        (nt.x[0] - 1.0).abs() < 1e-8 && (nt.x[1] - 1.0).abs() < 1e-8,
        "{:?} {:?}",
        nt.x,
        nt.stop
    );
    // The cap is reported as still descending, not as a minimum.
    let capped = lbfgs(
        &Rosenbrock,
        &[-1.2, 1.0],
        &LbfgsConfig {
            max_iter: 3,
            ..Default::default()
        },
    );
    assert_eq!(capped.stop, StopReason::IterationCap);
    assert!(!capped.stop.is_converged());
    // No progress over a window stops the run.
    let stalled = lbfgs(
        &Rosenbrock,
        &[-1.2, 1.0],
        &LbfgsConfig {
            window: 2,
            ftol: 10.0,
            ..Default::default()
        },
    );
    assert_eq!(stalled.stop, StopReason::NoProgress);
}

fn problem(seed: u64, act: Activation) -> (Mlp<f64>, Matrix<f64>, Matrix<f64>, Vec<usize>) {
    let cfg = landscape::experiments::wide::mse_config(4, &[5, 3], 3, act, true);
    let model = Mlp::<f64>::init(cfg, Init::Xavier, 1.3, seed).unwrap();
    let x = randn(9, 4, seed + 1);
    let labels: Vec<usize> = (0..9).map(|i| (i * 2) % 3).collect();
    let y = randn(9, 3, seed + 2);
    (model, x, y, labels)
}

#[test]
fn squared_loss_with_real_targets_matches_finite_differences() {
    for (s, act) in [Activation::Tanh, Activation::Sigmoid, Activation::Softplus]
        .into_iter()
        .enumerate()
    {
        let (model, x, y, _) = problem(10 + s as u64, act);
        let theta = model.param_vector();
        let obj = SquaredLoss::new(model.clone(), &x, &y).unwrap();
        let (_, g) = obj.value_grad(&theta);
        let fd: Vec<f64> = (0..theta.len())
            .map(|j| {
                let f = |d: f64| {
                    let mut t = theta.clone();
                    t[j] += d;
                    obj.value_grad(&t).0
                };
                (f(1e-6) - f(-1e-6)) / 2e-6
            })
            .collect();
        assert!(rel(&g, &fd) < 1e-7, "{act:?} gradient {}", rel(&g, &fd));
        // HVP with real targets against differences of the gradient.
        let mut rng = Rng::new(77);
        let v: Vec<f64> = (0..theta.len()).map(|_| rng.normal()).collect();
        let mut hv = vec![0.0; theta.len()];
        obj.with_hessian(&theta, &mut |h: &dyn SymOp| h.apply(&v, &mut hv));
        let h = 1e-5;
        let tp: Vec<f64> = theta.iter().zip(&v).map(|(a, b)| a + h * b).collect();
        let tm: Vec<f64> = theta.iter().zip(&v).map(|(a, b)| a - h * b).collect();
        let fdv: Vec<f64> = obj
            .value_grad(&tp)
            .1
            .iter()
            .zip(obj.value_grad(&tm).1)
            .map(|(a, b)| (a - b) / (2.0 * h))
            .collect();
        assert!(rel(&hv, &fdv) < 1e-7, "{act:?} HVP {}", rel(&hv, &fdv));
    }
    // Bad targets give an error, not a panic.
    let (model, x, _, _) = problem(1, Activation::Tanh);
    assert!(HessianOperator::with_targets(&model, &x, &randn(8, 3, 0), Part::Full).is_err());
}

#[test]
fn layer_block_hessian_matches_the_dense_block() {
    let (model, x, _, labels) = problem(21, Activation::Tanh);
    let onehot = landscape::experiments::wide::make_targets(
        landscape::experiments::wide::TargetKind::Onehot,
        &labels,
        3,
        0,
    );
    // One-hot targets: the squared loss is the engine's MSE, so the dense Hessian is a reference.
    let dense = dense_hessian(&model, &x, &labels, Part::Full, 1 << 28).unwrap();
    let (l_ours, g_ours) = loss_and_grad(&model, &x, &onehot);
    let (l_eng, g_eng) = loss_and_grad_analytic(&model, &x, &labels).unwrap();
    assert!((l_ours - l_eng).abs() < 1e-14);
    let g_eng: Vec<f64> = g_eng.iter().flat_map(|t| t.as_slice().to_vec()).collect();
    assert!(rel(&g_ours, &g_eng) < 1e-13);
    let op = HessianOperator::with_targets(&model, &x, &onehot, Part::Full).unwrap();
    for first in 0..3 {
        let range = layer_range(&model.config, first);
        let block = dense_of(&BlockOp {
            inner: &op,
            range: range.clone(),
        });
        let n = range.len();
        let reference = Matrix::from_fn(n, n, |i, j| dense.get(range.start + i, range.start + j));
        let e = rel(block.as_slice(), reference.as_slice());
        assert!(e < 1e-12, "layers {first}..: {e:.2e}");
    }
    assert_eq!(layer_range(&model.config, 3).len(), 0);
}

#[test]
fn rank_report_matches_an_independent_eigendecomposition() {
    // Full rank, 13 x 6: singular values vs sqrt of the Jacobi eigenvalues of A^T A.
    let a = randn(13, 6, 5);
    let s = jacobi_svd(&a, default_tol(13, 6));
    let ata = Matrix::from_fn(6, 6, |i, j| {
        (0..13).map(|k| a.get(k, i) * a.get(k, j)).sum()
    });
    let mut ev: Vec<f64> = jacobi_eigenvalues(&ata)
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .collect();
    ev.sort_by(|a, b| b.total_cmp(a));
    assert!(rel(&s.sigma, &ev) < 1e-12, "{:?} vs {ev:?}", s.sigma);
    let rep = rank_report(&s.sigma, 13, 6, default_tol(13, 6));
    assert_eq!(rep.rank, 6);
    assert!(rep.margin_decades > 10.0);
    // Rank 3 by construction (13 x 3 times 3 x 8): rank 3, tiny singular values beyond,
    // and a large gap.
    let b = randn(13, 3, 6);
    let c = randn(3, 8, 7);
    let bc = Matrix::from_fn(13, 8, |i, j| {
        (0..3).map(|k| b.get(i, k) * c.get(k, j)).sum()
    });
    let s = jacobi_svd(&bc, default_tol(13, 8));
    let rep = rank_report(&s.sigma, 13, 8, default_tol(13, 8));
    assert_eq!(rep.rank, 3, "{:?}", s.sigma);
    assert!(rep.gap > 1e10, "{}", rep.gap);
    // U V^T reconstructs: the least-squares solve of bc B = bc is exact on its column space.
    assert!(projection_residual(&s.u_kept, &bc) < 1e-24);
    let y = randn(13, 2, 8);
    let sol = s.solve(&y);
    let fit = Matrix::from_fn(13, 2, |i, k| {
        (0..8).map(|j| bc.get(i, j) * sol.get(j, k)).sum()
    });
    let resid: f64 = fit
        .as_slice()
        .iter()
        .zip(y.as_slice())
        .map(|(a, b): (&f64, &f64)| (a - b).powi(2))
        .sum::<f64>()
        / 13.0;
    assert!((resid - projection_residual(&s.u_kept, &y)).abs() < 1e-12);
}

/// `(X^T X)^{-1} X^T Y` by Gauss-Jordan elimination (independent of the Jacobi SVD).
fn normal_equations(x: &Matrix<f64>, y: &Matrix<f64>) -> Matrix<f64> {
    let (m, d, k) = (x.rows(), x.cols(), y.cols());
    let mut aug = Matrix::from_fn(d, d + k, |i, j| {
        if j < d {
            (0..m).map(|r| x.get(r, i) * x.get(r, j)).sum::<f64>()
        } else {
            (0..m).map(|r| x.get(r, i) * y.get(r, j - d)).sum::<f64>()
        }
    });
    for c in 0..d {
        let p = (c..d)
            .max_by(|&a, &b| aug.get(a, c).abs().total_cmp(&aug.get(b, c).abs()))
            .unwrap();
        for j in 0..d + k {
            let (u, v) = (aug.get(c, j), aug.get(p, j));
            aug.set(c, j, v);
            aug.set(p, j, u);
        }
        let piv = aug.get(c, c);
        for j in 0..d + k {
            aug.set(c, j, aug.get(c, j) / piv);
        }
        for r in 0..d {
            if r != c {
                let f = aug.get(r, c);
                for j in 0..d + k {
                    aug.set(r, j, aug.get(r, j) - f * aug.get(c, j));
                }
            }
        }
    }
    Matrix::from_fn(d, k, |i, j| aug.get(i, d + j))
}

#[test]
fn deep_linear_networks_reach_the_closed_form_optimum() {
    let (m, d, k) = (20, 5, 4);
    let x = randn(m, d, 11);
    let y = randn(m, k, 12);
    // Independent closed form: Yh = X B (normal equations), eigenvalues of Yh^T Yh.
    let b = normal_equations(&x, &y);
    let yh = Matrix::from_fn(m, k, |i, c| (0..d).map(|j| x.get(i, j) * b.get(j, c)).sum());
    let resid: f64 = yh
        .as_slice()
        .iter()
        .zip(y.as_slice())
        .map(|(a, b): (&f64, &f64)| (a - b).powi(2))
        .sum();
    let gram = Matrix::from_fn(k, k, |i, j| {
        (0..m).map(|r| yh.get(r, i) * yh.get(r, j)).sum()
    });
    let mut ev = jacobi_eigenvalues(&gram);
    ev.sort_by(|a, b| a.total_cmp(b));
    for r in [1usize, 2, 4] {
        let tail: f64 = ev.iter().take(k - r).sum();
        let reference = (resid + tail) / m as f64;
        let ours = linear_optimum(&x, &y, r);
        assert!(
            (ours - reference).abs() < 1e-12 * reference,
            "r={r}: {ours} vs {reference}"
        );
    }
    // Training from several initialisations reaches it, with and without a bottleneck.
    let recs = linear_networks(
        &x,
        &y,
        &LinearConfig {
            architectures: vec![vec![6, 6], vec![2, 6]],
            seeds: 2,
            seed: 0,
            train: TrainSettings::default(),
        },
        &|| {},
    )
    .unwrap();
    for r in &recs {
        assert!(r.rel_gap.abs() < 1e-7, "{r:?}");
    }
    assert_eq!(recs[2].bottleneck, 2);
}

#[test]
fn constructed_relu_point_is_a_certified_bad_local_minimum() {
    let (m, d, k) = (16, 3, 2);
    let x = randn(m, d, 31);
    let y = randn(m, k, 32);
    let model = constructed_relu_point(&x, &y, m, 1.0, 3).unwrap();
    let obj = SquaredLoss::new(model.clone(), &x, &y).unwrap();
    let theta = model.param_vector();
    let (loss, g) = obj.value_grad(&theta);
    // The affine least-squares loss, computed by the normal equations on [X, 1].
    let x1 = Matrix::from_fn(m, d + 1, |i, j| if j < d { x.get(i, j) } else { 1.0 });
    let b = normal_equations(&x1, &y);
    let ls: f64 = (0..m)
        .flat_map(|i| (0..k).map(move |c| (i, c)))
        .map(|(i, c)| {
            ((0..=d).map(|j| x1.get(i, j) * b.get(j, c)).sum::<f64>() - y.get(i, c)).powi(2)
        })
        .sum::<f64>()
        / m as f64;
    assert!((loss - ls).abs() < 1e-12 * ls, "{loss} vs {ls}");
    assert!(g.iter().map(|v| v * v).sum::<f64>().sqrt() < 1e-10);
    // Every pre-activation >= 1, so within rho no unit changes; probe the ball.
    let pre = model.forward(&x).unwrap().pre[0].clone();
    assert!(pre.as_slice().iter().all(|&z| z >= 1.0 - 1e-12));
    let xmax = (0..m)
        .map(|i| x.row(i).iter().map(|v| v * v).sum::<f64>())
        .fold(0.0, f64::max);
    let rho = 1.0 / (xmax + 1.0).sqrt();
    let mut rng = Rng::new(9);
    for _ in 0..50 {
        let dir: Vec<f64> = theta.iter().map(|_| rng.normal()).collect();
        let n = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
        let t: Vec<f64> = theta
            .iter()
            .zip(&dir)
            .map(|(a, b)| a + 0.99 * rho * b / n)
            .collect();
        assert!(obj.value_grad(&t).0 >= ls - 1e-12);
    }
}

#[test]
fn wide_command_writes_results_and_rejects_bad_input() {
    let d = TempDir::new("wide-cli");
    let out = d.join("w");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args([
            "wide",
            "--m",
            "40",
            "--only",
            "rank,linear",
            "--rank-draws",
            "2",
            "--seeds",
            "1",
            "--activations",
            "tanh,relu",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("rank.json")).unwrap()).unwrap();
    assert_eq!(v["command"], "wide rank");
    assert!(v["provenance"]["dataset"]["data"]["sha256"].is_string());
    assert!(out.join("rank_spectra.png").exists() && out.join("rank_spectra.svg").exists());
    assert!(out.join("report.md").exists() && out.join("linear.json").exists());
    for bad in [
        vec!["wide", "--m", "1"],
        vec!["wide", "--m", "5000"],
        vec!["wide", "--widths", "0"],
        vec!["wide", "--downsample", "0"],
        vec!["wide", "--downsample", "3"],
        vec!["wide", "--rank-widths", "0"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_landscape"))
            .args(&bad)
            .arg("--out")
            .arg(d.join("bad"))
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && !e.contains("panicked"),
            "{bad:?}: {e}"
        );
        assert_eq!(
            e.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{e}"
        );
    }
}

#[test]
fn width_sweep_is_reproducible_and_classifies_end_points() {
    use landscape::experiments::wide::sweep::{width_sweep, SweepConfig};
    let x = randn(12, 3, 41);
    let y = randn(12, 2, 42);
    let cfg = SweepConfig {
        activations: vec![Activation::Tanh],
        widths: vec![1, 11],
        seeds: 2,
        seed: 5,
        bias: true,
        train: TrainSettings::default(),
    };
    let a = width_sweep(&x, &y, &cfg, &|| {}).unwrap();
    let b = width_sweep(&x, &y, &cfg, &|| {}).unwrap();
    let bits = |r: &landscape::experiments::wide::sweep::SweepResult| -> Vec<u64> {
        r.runs.iter().map(|r| r.loss.to_bits()).collect()
    };
    assert_eq!(bits(&a), bits(&b));
    // Width 1 cannot fit 12 Gaussian targets in R^2 (P = 9 < 24): loss stays positive and
    // the end point is classified by its eigenvalue (never "global").
    for r in a.runs.iter().filter(|r| r.hidden[0] == 1) {
        assert!(r.loss > 1e-3 && !r.reached_zero, "{r:?}");
    }
    // Duplicate samples are rejected (the theorems assume distinct samples).
    let mut xd = x.clone();
    let row0 = xd.row(0).to_vec();
    xd.row_mut(1).copy_from_slice(&row0);
    assert!(width_sweep(&xd, &y, &cfg, &|| {}).is_err());
}
