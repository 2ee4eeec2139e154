//! Deep linear networks `W_L ... W_1 x` (no biases) under the squared loss: every
//! local minimum is global (Kawaguchi 2016), so every initialisation should reach the
//! closed-form optimum. With `P` the projection on the column space of `X` (samples as
//! rows) and `Yh = P Y`, the best map of rank at most `r` (the narrowest width) gives
//! `L* = (||Y - Yh||_F^2 + sum_{i > r} sigma_i(Yh)^2) / m` (Eckart-Young on `Yh`).

use super::rank::{default_tol, jacobi_svd, projection_residual};
use super::{mse_config, train_to_convergence, Progress, SquaredLoss, TrainSettings};
use crate::error::Result;
use crate::nn::{Activation, Mlp};
use crate::tensor::Matrix;
use serde::Serialize;

/// The closed-form optimum of a linear network whose narrowest layer has width `r`.
pub fn linear_optimum(x: &Matrix<f64>, y: &Matrix<f64>, r: usize) -> f64 {
    let m = x.rows();
    let sx = jacobi_svd(x, default_tol(m, x.cols()));
    let u = &sx.u_kept;
    let resid = projection_residual(u, y);
    // Yh = U (U^T Y).
    let (k, q) = (y.cols(), u.cols());
    let mut uty = Matrix::<f64>::zeros(q, k);
    for j in 0..q {
        for c in 0..k {
            uty.set(j, c, (0..m).map(|i| u.get(i, j) * y.get(i, c)).sum());
        }
    }
    let yh = Matrix::from_fn(m, k, |i, c| {
        (0..q).map(|j| u.get(i, j) * uty.get(j, c)).sum()
    });
    let s = jacobi_svd(&yh, default_tol(m, k)).sigma;
    let tail: f64 = s.iter().skip(r).map(|v| v * v).sum();
    resid + tail / m as f64
}

#[derive(Clone, Debug, Serialize)]
pub struct LinearConfig {
    /// Hidden widths of each architecture.
    pub architectures: Vec<Vec<usize>>,
    pub seeds: usize,
    pub seed: u64,
    pub train: TrainSettings,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinearRecord {
    pub hidden: Vec<usize>,
    pub bottleneck: usize,
    pub seed: u64,
    pub optimum: f64,
    pub loss: f64,
    /// `(loss - optimum) / optimum`.
    pub rel_gap: f64,
    pub stop: String,
}

pub fn linear_networks(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &LinearConfig,
    progress: Progress<'_>,
) -> Result<Vec<LinearRecord>> {
    cfg.train.validate()?;
    super::check_problem(x, y)?;
    let mut out = Vec::new();
    for hidden in &cfg.architectures {
        let mcfg = mse_config(x.cols(), hidden, y.cols(), Activation::Identity, false);
        mcfg.validate()?;
        let r = hidden
            .iter()
            .copied()
            .chain([x.cols(), y.cols()])
            .min()
            .unwrap_or(0);
        let opt = linear_optimum(x, y, r);
        for i in 0..cfg.seeds {
            let seed = cfg.seed.wrapping_add(31 + i as u64);
            let model = Mlp::<f64>::init(mcfg.clone(), cfg.train.init, cfg.train.init_scale, seed)?;
            let th0 = model.param_vector();
            let obj = SquaredLoss::new(model, x, y)?;
            let (first, polish) = train_to_convergence(&obj, &th0, &cfg.train);
            let best = match polish {
                Some(p) if p.f < first.f => p,
                _ => first,
            };
            out.push(LinearRecord {
                hidden: hidden.clone(),
                bottleneck: r,
                seed,
                optimum: opt,
                loss: best.f,
                rel_gap: (best.f - opt) / opt.max(1e-300),
                stop: best.stop.name().into(),
            });
            progress();
        }
    }
    Ok(out)
}
