//! Wide networks (DESIGN.md section 14; seed 004, a handbook chapter): when is every
//! local minimum of the squared loss global?
//!
//! Each statement of the chapter is an experiment on a fixed set of `m` samples:
//! * [`rank`]: rank and singular values of the hidden features at initialisation
//!   (Lemma 1 vs ReLU), and the best output layer on fixed random features;
//! * [`sweep`]: width sweep with many initialisations (Theorem 1) and the deep-net
//!   conditions of Theorem 2 at every end point;
//! * [`relu`]: a certified bad non-strict minimum of a ReLU net at width `>= m`;
//! * [`path`]: trained low-loss Bezier paths between minima (sublevel sets);
//! * [`linear`]: deep linear networks against their closed-form optimum.
//!
//! Every experiment returns a typed, serialisable result; the CLI (`landscape wide`)
//! writes them as JSON with provenance, CSV and figures.

pub mod linear;
pub mod objective;
pub mod path;
pub mod rank;
pub mod relu;
pub mod sweep;

pub use objective::{
    classify, layer_range, loss_and_grad, make_targets, BlockOp, CertifiedEig, EndpointKind,
    SquaredLoss, TargetKind,
};

use crate::error::{Error, Result};
use crate::nn::{Activation, Init, LossKind, Mlp, MlpConfig};
use crate::optim::{lbfgs, newton_cg, LbfgsConfig, NewtonCgConfig, OptimResult, StopReason};
use crate::tensor::Matrix;
use serde::Serialize;

/// A progress callback: called once per finished unit of work.
pub type Progress<'a> = &'a (dyn Fn() + Sync);

/// Settings shared by every training run of the experiments.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSettings {
    pub lbfgs: LbfgsConfig,
    pub newton: NewtonCgConfig,
    /// A run "reaches zero" when its mean squared loss is `<= eps`.
    pub eps: f64,
    /// Lanczos iterations for the smallest Hessian eigenvalue.
    pub lanczos_iter: usize,
    /// Relative tolerance under which an eigenvalue counts as zero (beside its residual).
    pub eig_zero_rel: f64,
    pub init: Init,
    pub init_scale: f64,
    /// Also polish runs that hit the L-BFGS cap with Newton-CG (they are then judged by
    /// the polish's own stopping rule).
    pub polish_capped: bool,
}

impl Default for TrainSettings {
    fn default() -> Self {
        let eps = 1e-8;
        Self {
            lbfgs: LbfgsConfig {
                max_iter: 3000,
                loss_tol: eps * 1e-2,
                ..LbfgsConfig::default()
            },
            newton: NewtonCgConfig {
                max_iter: 10,
                max_cg: 100,
                loss_tol: eps * 1e-2,
                grad_atol: 1e-13,
            },
            eps,
            lanczos_iter: 200,
            eig_zero_rel: 1e-7,
            init: Init::Xavier,
            init_scale: 1.0,
            polish_capped: false,
        }
    }
}

impl TrainSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::InvalidArgument("eps must be positive".into()));
        }
        if self.lbfgs.max_iter == 0 {
            return Err(Error::InvalidArgument(
                "the L-BFGS iteration cap must be positive".into(),
            ));
        }
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return Err(Error::InvalidArgument("init scale must be positive".into()));
        }
        Ok(())
    }
}

/// An MSE MLP configuration `[input, hidden..., outputs]`.
pub fn mse_config(
    input: usize,
    hidden: &[usize],
    outputs: usize,
    act: Activation,
    bias: bool,
) -> MlpConfig {
    MlpConfig {
        input_dim: input,
        hidden: hidden.to_vec(),
        classes: outputs,
        activation: act,
        leaky_slope: 0.01,
        bias,
        batchnorm: None,
        loss: LossKind::Mse,
    }
}

/// L-BFGS then (unless the loss is already below the threshold, or the run hit its
/// cap and `polish_capped` is off) a Newton-CG polish. When a polish ran, its stop
/// reason decides whether the run converged.
pub fn train_to_convergence(
    obj: &SquaredLoss<'_>,
    theta0: &[f64],
    s: &TrainSettings,
) -> (OptimResult, Option<OptimResult>) {
    let first = lbfgs(obj, theta0, &s.lbfgs);
    if first.stop == StopReason::LossBelow
        || (first.stop == StopReason::IterationCap && !s.polish_capped)
    {
        return (first, None);
    }
    let polish = newton_cg(obj, &first.x, &s.newton);
    (first, Some(polish))
}

/// A fresh model's parameters.
pub fn init_params(cfg: &MlpConfig, s: &TrainSettings, seed: u64) -> Result<Vec<f64>> {
    Ok(Mlp::<f64>::init(cfg.clone(), s.init, s.init_scale, seed)?.param_vector())
}

/// Checks the problem data: finite, at least 2 samples, targets matching.
pub fn check_problem(x: &Matrix<f64>, y: &Matrix<f64>) -> Result<()> {
    if x.rows() < 2 {
        return Err(Error::InvalidArgument("need at least 2 samples".into()));
    }
    if y.rows() != x.rows() {
        return Err(Error::Shape(format!(
            "{} samples but {} target rows",
            x.rows(),
            y.rows()
        )));
    }
    if !x.all_finite() || !y.all_finite() {
        return Err(Error::NonFiniteInput("features or targets".into()));
    }
    // Distinct samples (the theorems assume them).
    let mut rows: Vec<Vec<u64>> = (0..x.rows())
        .map(|i| x.row(i).iter().map(|v| v.to_bits()).collect())
        .collect();
    rows.sort();
    if rows.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::InvalidArgument(
            "the samples are not distinct (the theorems assume distinct samples)".into(),
        ));
    }
    Ok(())
}
