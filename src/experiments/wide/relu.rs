//! A certified bad local minimum of a one-hidden-layer ReLU net of width `>= m`, and
//! the same construction with tanh.
//!
//! Construction: let `(A*, b*)` be the least-squares affine fit of the targets on
//! the inputs (loss `L*`, positive when the targets are not an affine function of
//! the inputs). Set `W1 = [A*; R]` (`R` small random rows), `b1_j = mu - min_i (W1 x_i)_j`
//! so every pre-activation is `>= mu > 0`, `W2 = [I_K, 0]`, `b2 = b* - b1[..K]`.
//! Then `f(x) = A* x + b*` and the loss is `L*`.
//!
//! Certificate: a perturbation `(dW1, db1)` changes `z_ij` by at most
//! `||(dW1_j, db1_j)|| sqrt(||x_i||^2 + 1)`, so within parameter distance
//! `rho = mu / sqrt(max_i ||x_i||^2 + 1)` every unit stays active on every sample,
//! the network is the affine map `W2 (W1 x + b1) + b2`, and the loss is at least the
//! affine least-squares loss `L*`: the point is a local minimum (non-strict: the
//! parametrisation of the affine map is redundant) with loss `L* > 0`, while a net
//! of this width can reach loss 0 (shown by training).

use super::objective::{smallest_eig, CertifiedEig};
use super::rank::{default_tol, jacobi_svd, projection_residual, with_ones};
use super::sweep::RunRecord;
use super::{mse_config, Progress, SquaredLoss, TrainSettings};
use crate::error::{Error, Result};
use crate::linalg::SymOp;
use crate::nn::{Activation, Mlp};
use crate::optim::{lbfgs, Objective, SecondOrder};
use crate::rng::Rng;
use crate::tensor::Matrix;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ReluConfig {
    pub width: usize,
    /// The activation margin `mu` of the construction.
    pub margin: f64,
    pub seed: u64,
    /// Random perturbations checked inside the certified ball.
    pub probes: usize,
    pub train: TrainSettings,
    /// Random initialisations trained at the same width (to show loss 0 is reachable).
    pub seeds: usize,
    /// Scale of the tanh construction: `W1, b1` times `s`, `W2` divided by `s`, so
    /// `tanh(s z) / s ~ z` (smaller is more linear and more ill-conditioned).
    pub tanh_scale: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConstructionReport {
    pub activation: String,
    pub width: usize,
    /// Loss at the constructed point.
    pub loss: f64,
    /// Affine least-squares loss `L*` computed independently (projection on `[X, 1]`).
    pub affine_ls_loss: f64,
    pub grad_norm: f64,
    /// Smallest pre-activation over samples and units (`mu`).
    pub min_preactivation: f64,
    /// Certified radius `rho` (ReLU only).
    pub radius: Option<f64>,
    /// Smallest loss over random points at distance `0.99 rho` minus `L*` (ReLU).
    pub probe_min_excess: Option<f64>,
    pub lambda_min: CertifiedEig,
    /// L-BFGS started at the constructed point: loss reached, stop reason.
    pub lbfgs_from_point_loss: f64,
    pub lbfgs_from_point_stop: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReluResult {
    pub m: usize,
    pub relu: ConstructionReport,
    pub tanh: ConstructionReport,
    /// ReLU nets of the same width trained from random initialisations.
    pub relu_trained: Vec<RunRecord>,
    /// Certified: radius > 0, loss = L* > eps, and a trained net of this width reached `<= eps`.
    pub certified_bad_minimum: bool,
}

/// The constructed parameters for `act` (`scale` multiplies `W1`, `b1` and divides `W2`;
/// for tanh a small scale makes the units nearly linear).
fn construct(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    act: Activation,
    width: usize,
    margin: f64,
    scale: f64,
    seed: u64,
) -> Result<Mlp<f64>> {
    let (d, k) = (x.cols(), y.cols());
    if width < k {
        return Err(Error::InvalidArgument(format!(
            "the construction needs width >= outputs ({k})"
        )));
    }
    let a1 = with_ones(x);
    let svd = jacobi_svd(&a1, default_tol(x.rows(), d + 1));
    let coef = svd.solve(y); // (d+1) x k: rows 0..d are A*^T, row d is b*.
    let cfg = mse_config(d, &[width], k, act, true);
    let mut model = Mlp::<f64>::init(cfg, crate::nn::Init::Torch, 0.1, seed)?;
    let mut rng = Rng::derived(seed, 0xbad);
    let mut w1 = Matrix::from_fn(width, d, |_, _| 0.1 * rng.normal() / (d as f64).sqrt());
    for j in 0..k {
        for c in 0..d {
            w1.set(j, c, coef.get(c, j));
        }
    }
    let mut b1 = vec![0.0; width];
    if act == Activation::Relu {
        for (j, b) in b1.iter_mut().enumerate() {
            let lo = (0..x.rows())
                .map(|i| (0..d).map(|c| w1.get(j, c) * x.get(i, c)).sum::<f64>())
                .fold(f64::INFINITY, f64::min);
            *b = margin - lo;
        }
    }
    let mut w2 = Matrix::zeros(k, width);
    for j in 0..k {
        w2.set(j, j, 1.0 / scale);
    }
    let b2: Vec<f64> = (0..k).map(|j| coef.get(d, j) - b1[j]).collect();
    model.layers[0].weight = w1.scale(scale);
    model.layers[0].bias = Some(Matrix::from_vec(
        1,
        width,
        b1.iter().map(|v| v * scale).collect(),
    ));
    model.layers[1].weight = w2;
    model.layers[1].bias = Some(Matrix::from_vec(1, k, b2));
    Ok(model)
}

fn report(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    model: &Mlp<f64>,
    cfg: &ReluConfig,
    ls: f64,
) -> Result<ConstructionReport> {
    let obj = SquaredLoss::new(model.clone(), x, y)?;
    let theta = model.param_vector();
    let (loss, g) = obj.value_grad(&theta);
    let fwd = model.forward(x)?;
    let min_pre = fwd.pre[0]
        .as_slice()
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let relu = model.config.activation == Activation::Relu;
    let xmax = (0..x.rows())
        .map(|i| x.row(i).iter().map(|v| v * v).sum::<f64>())
        .fold(0.0f64, f64::max);
    let radius = (relu && min_pre > 0.0).then(|| min_pre / (xmax + 1.0).sqrt());
    let probe_min_excess = radius.map(|r| {
        let mut rng = Rng::derived(cfg.seed, 0x9e0b);
        let mut best = f64::INFINITY;
        for _ in 0..cfg.probes {
            let mut dir: Vec<f64> = theta.iter().map(|_| rng.normal()).collect();
            let n = dir.iter().map(|v| v * v).sum::<f64>().sqrt();
            for v in dir.iter_mut() {
                *v *= 0.99 * r / n;
            }
            let t: Vec<f64> = theta.iter().zip(&dir).map(|(a, b)| a + b).collect();
            best = best.min(obj.value_grad(&t).0 - ls);
        }
        best
    });
    let mut eig = None;
    obj.with_hessian(&theta, &mut |h: &dyn SymOp| {
        eig = Some(smallest_eig(h, cfg.train.lanczos_iter, cfg.seed));
    });
    let after = lbfgs(&obj, &theta, &cfg.train.lbfgs);
    Ok(ConstructionReport {
        activation: model.config.activation.name().into(),
        width: cfg.width,
        loss,
        affine_ls_loss: ls,
        grad_norm: g.iter().map(|v| v * v).sum::<f64>().sqrt(),
        min_preactivation: min_pre,
        radius,
        probe_min_excess,
        lambda_min: eig.expect("callback ran")?,
        lbfgs_from_point_loss: after.f,
        lbfgs_from_point_stop: after.stop.name().into(),
    })
}

pub fn relu_certificate(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &ReluConfig,
    progress: Progress<'_>,
) -> Result<ReluResult> {
    cfg.train.validate()?;
    super::check_problem(x, y)?;
    if !(cfg.margin > 0.0 && cfg.margin.is_finite() && cfg.tanh_scale > 0.0) {
        return Err(Error::InvalidArgument(
            "the margin and the tanh scale must be positive".into(),
        ));
    }
    let a1 = with_ones(x);
    let ls = projection_residual(
        &jacobi_svd(&a1, default_tol(x.rows(), x.cols() + 1)).u_kept,
        y,
    );
    let relu_model = construct(x, y, Activation::Relu, cfg.width, cfg.margin, 1.0, cfg.seed)?;
    let relu = report(x, y, &relu_model, cfg, ls)?;
    progress();
    let tanh_model = construct(
        x,
        y,
        Activation::Tanh,
        cfg.width,
        cfg.margin,
        cfg.tanh_scale,
        cfg.seed,
    )?;
    let tanh = report(x, y, &tanh_model, cfg, ls)?;
    progress();
    let sweep = super::sweep::width_sweep(
        x,
        y,
        &super::sweep::SweepConfig {
            activations: vec![Activation::Relu],
            widths: vec![cfg.width],
            seeds: cfg.seeds,
            seed: cfg.seed,
            bias: true,
            train: cfg.train.clone(),
        },
        progress,
    )?;
    let reached = sweep.runs.iter().any(|r| r.reached_zero);
    let certified = relu.radius.is_some_and(|r| r > 0.0)
        && ls > cfg.train.eps
        && (relu.loss - ls).abs() <= 1e-9 * ls.max(1.0)
        && reached;
    Ok(ReluResult {
        m: x.rows(),
        relu,
        tanh,
        relu_trained: sweep.runs,
        certified_bad_minimum: certified,
    })
}

/// Convenience for tests: the constructed ReLU point.
pub fn constructed_relu_point(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    width: usize,
    margin: f64,
    seed: u64,
) -> Result<Mlp<f64>> {
    construct(x, y, Activation::Relu, width, margin, 1.0, seed)
}
