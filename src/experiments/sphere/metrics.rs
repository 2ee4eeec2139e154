//! Per-epoch measurements of a network on the sphere (DESIGN.md section 12):
//! train loss and error over fixed unshuffled batches in train-mode BatchNorm,
//! the batch-gradient norms w.r.t. the SI weights (GM), the Fisher trace of the
//! SI block (exact from per-sample logit Jacobians, or Hutchinson), and the top
//! Hessian eigenvalue of the SI block with its residual.
//!
//! Batches are fixed consecutive blocks of the given size (a last block of one
//! sample is dropped in train mode: its variance is undefined); per-batch results
//! are computed in parallel and combined in batch order, so every number is
//! bit-identical for a given thread count (and independent of it).

use super::SiSpec;
use crate::autodiff::Tape;
use crate::error::{Error, Result};
use crate::hessian::network::{BlockOp, BnMode, NetObjective};
use crate::linalg::{lanczos, LanczosOptions, Which};
use crate::nn::loss::error_rate;
use crate::nn::{LossKind, Mode, Network};
use crate::rng::Rng;
use crate::tensor::{sample_blocks, Matrix, Scalar};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Fixed consecutive train-mode batches of `n` samples (a last block of one dropped).
pub fn train_batches(n: usize, batch: usize) -> Vec<Range<usize>> {
    sample_blocks(n, batch)
        .into_iter()
        .filter(|r| r.len() >= 2)
        .collect()
}

/// Train loss, error and batch-gradient norms over fixed batches.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchPass {
    /// Sample-weighted mean of the batch losses.
    pub loss: f64,
    pub error: f64,
    /// `||grad of batch loss w.r.t. the SI weights||`, one per batch.
    pub grad_norms: Vec<f64>,
    pub samples: usize,
}

impl BatchPass {
    /// Mean batch-gradient norm (GM, on the sphere of the network's radius).
    pub fn gm(&self) -> f64 {
        self.grad_norms.iter().sum::<f64>() / self.grad_norms.len().max(1) as f64
    }
}

/// One pass over `x` in fixed train-mode batches: loss, error and the norm of
/// each batch's SI gradient (`si`: indices of the SI tensors). Batch statistics
/// are not folded into the running averages.
pub fn batch_pass<T: Scalar>(
    net: &Network<T>,
    si: &[usize],
    x: &Matrix<T>,
    labels: &[usize],
    batch: usize,
) -> Result<BatchPass> {
    net.check_input(x)?;
    if batch < 2 {
        return Err(Error::InvalidArgument(
            "the batch size must be at least 2 (BatchNorm)".into(),
        ));
    }
    let blocks = train_batches(labels.len(), batch);
    if blocks.is_empty() {
        return Err(Error::InvalidArgument(
            "the metric set needs at least 2 samples".into(),
        ));
    }
    let parts: Vec<(f64, f64, f64, usize)> = blocks
        .par_iter()
        .map(|r| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let yb = &labels[r.clone()];
            let tape = Tape::new();
            let p = net.params_on_tape(&tape);
            let (l, f) = net.loss_tape(&p, &xb, yb, Mode::Train);
            let err = error_rate(&f.logits.value(), yb);
            let wrt: Vec<_> = si.iter().map(|&i| p[i]).collect();
            let g = tape.grad(l, &wrt);
            let n2: f64 = g
                .iter()
                .map(|v| {
                    v.value()
                        .as_slice()
                        .iter()
                        .map(|x| x.to_f64() * x.to_f64())
                        .sum::<f64>()
                })
                .sum();
            (l.item().to_f64(), err, n2.sqrt(), r.len())
        })
        .collect();
    let n: usize = parts.iter().map(|p| p.3).sum();
    let loss = parts.iter().map(|p| p.0 * p.3 as f64).sum::<f64>() / n as f64;
    let error = parts.iter().map(|p| p.1 * p.3 as f64).sum::<f64>() / n as f64;
    Ok(BatchPass {
        loss,
        error,
        grad_norms: parts.iter().map(|p| p.2).collect(),
        samples: n,
    })
}

/// How the Fisher trace is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum FisherMethod {
    /// `sum_{i,k} ||J_i^T c_ik||^2`: one backward pass per sample and class.
    Exact,
    /// `E ||sum_i J_i^T C_i u_i||^2` with Rademacher `u_i` per sample: one backward
    /// pass per batch and probe (the authors' estimator; unbiased).
    Hutchinson { probes: usize },
}

/// A Fisher-trace value with its standard error (0 when exact).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FisherTrace {
    pub value: f64,
    pub std_error: f64,
}

/// A factor `C` (K x K, row-major) with `C C^T = A`, the Hessian of the
/// per-sample loss in the logits (CE: `diag p - p p^T` with the model's own
/// probabilities; MSE `sum_k (z_k - y_k)^2`: `2 I`).
pub fn curvature_factor(kind: LossKind, z: &[f64]) -> Vec<f64> {
    let k = z.len();
    let mut c = vec![0.0; k * k];
    match kind {
        LossKind::CrossEntropy => {
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / s).collect();
            for a in 0..k {
                for b in 0..k {
                    let d = if a == b { p[a].sqrt() } else { 0.0 };
                    c[a * k + b] = d - p[a] * p[b].sqrt();
                }
            }
        }
        LossKind::Mse => {
            for a in 0..k {
                c[a * k + a] = std::f64::consts::SQRT_2;
            }
        }
    }
    c
}

/// Trace of the Fisher (Gauss-Newton) matrix `J^T A J` of the SI block in
/// train-mode BatchNorm over fixed batches of `batch`: per batch the mean over
/// its samples of `tr(J_i^T A_i J_i)` with `J_i` the Jacobian of sample `i`'s
/// logits w.r.t. the SI weights (through the batch statistics), averaged over
/// batches with equal weights (the loss is the mean of the batch losses).
pub fn fisher_trace(
    net: &Network<f64>,
    si: &[usize],
    x: &Matrix<f64>,
    batch: usize,
    method: FisherMethod,
    seed: u64,
) -> Result<FisherTrace> {
    net.check_input(x)?;
    let blocks = train_batches(x.rows(), batch);
    if blocks.is_empty() || batch < 2 {
        return Err(Error::InvalidArgument(
            "the Fisher trace needs batches of at least 2 samples".into(),
        ));
    }
    let probes = match method {
        FisherMethod::Exact => 0,
        FisherMethod::Hutchinson { probes } => {
            if probes < 2 {
                return Err(Error::InvalidArgument(
                    "Hutchinson needs at least 2 probes".into(),
                ));
            }
            probes
        }
    };
    let kind = net.arch.loss;
    // Per batch: exact value, or the per-probe samples.
    let parts: Vec<Vec<f64>> = blocks
        .par_iter()
        .enumerate()
        .map(|(bi, r)| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let nb = r.len();
            let tape = Tape::new();
            let p = net.params_on_tape(&tape);
            let z = net.forward_tape(&p, &xb, Mode::Train).logits;
            let zv = z.value().clone();
            let k = zv.cols();
            let wrt: Vec<_> = si.iter().map(|&i| p[i]).collect();
            let sq = |g: Vec<crate::autodiff::Var<f64>>| -> f64 {
                g.iter()
                    .map(|v| v.value().as_slice().iter().map(|x| x * x).sum::<f64>())
                    .sum()
            };
            let factors: Vec<Vec<f64>> =
                (0..nb).map(|i| curvature_factor(kind, zv.row(i))).collect();
            if probes == 0 {
                let mut total = 0.0;
                for (i, c) in factors.iter().enumerate() {
                    for col in 0..k {
                        let mut cot = Matrix::zeros(nb, k);
                        for a in 0..k {
                            cot.set(i, a, c[a * k + col]);
                        }
                        total += sq(tape.vjp(z, tape.constant(cot), &wrt));
                    }
                }
                vec![total / nb as f64]
            } else {
                let mut rng = Rng::derived(seed, bi as u64);
                (0..probes)
                    .map(|_| {
                        let mut cot = Matrix::zeros(nb, k);
                        for (i, c) in factors.iter().enumerate() {
                            let u: Vec<f64> = (0..k)
                                .map(|_| if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 })
                                .collect();
                            for a in 0..k {
                                let v: f64 = (0..k).map(|b| c[a * k + b] * u[b]).sum();
                                cot.set(i, a, v);
                            }
                        }
                        sq(tape.vjp(z, tape.constant(cot), &wrt)) / nb as f64
                    })
                    .collect()
            }
        })
        .collect();
    let nbat = parts.len() as f64;
    if probes == 0 {
        let value = parts.iter().map(|v| v[0]).sum::<f64>() / nbat;
        return Ok(FisherTrace {
            value,
            std_error: 0.0,
        });
    }
    // Per probe, the batch-averaged estimate; mean and standard error over probes.
    let per_probe: Vec<f64> = (0..probes)
        .map(|j| parts.iter().map(|v| v[j]).sum::<f64>() / nbat)
        .collect();
    let m = per_probe.iter().sum::<f64>() / probes as f64;
    let var = per_probe.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (probes - 1) as f64;
    Ok(FisherTrace {
        value: m,
        std_error: (var / probes as f64).sqrt(),
    })
}

/// Top Hessian eigenvalue of the SI block.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopEigen {
    pub value: f64,
    /// `||H v - l v||` of the Ritz pair.
    pub residual: f64,
    pub iterations: usize,
}

/// The largest eigenvalue of the Hessian block of the SI weights (the SI tensors
/// must be a prefix of the parameter vector, see [`SiSpec::of`]) of the mean
/// train-mode batch loss over fixed batches of `batch`, by Lanczos with full
/// reorthogonalisation on exact double-backward HVPs.
pub fn top_eigenvalue(
    net: &Network<f64>,
    spec: &SiSpec,
    x: &Matrix<f64>,
    labels: &[usize],
    batch: usize,
    max_iter: usize,
    seed: u64,
) -> Result<TopEigen> {
    let obj = NetObjective::new(net, x, labels, BnMode::Train { batch })?;
    let op = BlockOp {
        obj: &obj,
        range: spec.param_range(),
    };
    let r = lanczos(
        &op,
        Which::Largest(1),
        &LanczosOptions {
            max_iter: max_iter.max(2),
            tol: 1e-6,
            seed,
            check_every: 5,
        },
    )?;
    Ok(TopEigen {
        value: r.values[0],
        residual: r.residuals[0],
        iterations: r.iterations,
    })
}
