//! Losses and layers composed from tape primitives, so every one of them is
//! twice differentiable through the tape.

use super::tape::Var;
use crate::nn::LossKind;
use crate::tensor::{Matrix, Scalar};
use std::sync::Arc;

/// One-hot matrix (`n x classes`) of integer labels.
pub fn one_hot<T: Scalar>(labels: &[usize], classes: usize) -> Matrix<T> {
    let mut m = Matrix::zeros(labels.len(), classes);
    for (i, &y) in labels.iter().enumerate() {
        m.set(i, y, T::ONE);
    }
    m
}

/// Mean softmax cross-entropy of logits `z` (`n x K`):
/// `(1/n) sum_i [logsumexp(z_i) - z_{i, y_i}]`.
///
/// The row maximum is subtracted as a constant first (an exact shift, so the
/// gradient is unchanged) to keep `exp` finite.
pub fn softmax_cross_entropy<'t, T: Scalar>(z: Var<'t, T>, labels: &[usize]) -> Var<'t, T> {
    let tape = z.tape();
    let (n, k) = z.shape();
    assert_eq!(
        n,
        labels.len(),
        "cross-entropy: {n} logit rows, {} labels",
        labels.len()
    );
    let row_max = {
        let zv = z.value();
        Matrix::col_vector(
            (0..n)
                .map(|i| zv.row(i).iter().copied().fold(zv.get(i, 0), T::max))
                .collect(),
        )
    };
    let shifted = z.sub(tape.constant(row_max).broadcast(n, k));
    let lse = shifted.exp().sum_to(n, 1).ln();
    let picked = shifted.mul_const(Arc::new(one_hot(labels, k))).sum();
    lse.sum().sub(picked).scale(T::ONE / T::from_f64(n as f64))
}

/// Mean squared error `(1/n) sum_i sum_k (z_ik - onehot_ik)^2`.
pub fn mse<'t, T: Scalar>(z: Var<'t, T>, labels: &[usize]) -> Var<'t, T> {
    let tape = z.tape();
    let (n, k) = z.shape();
    assert_eq!(n, labels.len(), "mse: {n} rows, {} labels", labels.len());
    z.sub(tape.constant(one_hot(labels, k)))
        .square()
        .sum()
        .scale(T::ONE / T::from_f64(n as f64))
}

/// The loss of `kind` on logits `z`.
pub fn loss<'t, T: Scalar>(kind: LossKind, z: Var<'t, T>, labels: &[usize]) -> Var<'t, T> {
    match kind {
        LossKind::CrossEntropy => softmax_cross_entropy(z, labels),
        LossKind::Mse => mse(z, labels),
    }
}

/// Output of a training-mode BatchNorm1d.
pub struct BatchNormOutput<'t, T: Scalar> {
    pub out: Var<'t, T>,
    /// Batch mean (`1 x d`).
    pub mean: Matrix<T>,
    /// Biased batch variance (`1 x d`), the one used to normalise.
    pub var: Matrix<T>,
}

/// BatchNorm1d in training mode over the rows of `z` (`n x d`):
/// `u = gamma * (z - mean) / sqrt(var + eps) + beta` with batch mean and biased
/// batch variance; `gamma`, `beta` (`1 x d`) optional (`affine=False`).
pub fn batchnorm_train<'t, T: Scalar>(
    z: Var<'t, T>,
    gamma: Option<Var<'t, T>>,
    beta: Option<Var<'t, T>>,
    eps: f64,
) -> BatchNormOutput<'t, T> {
    let d = z.shape().1;
    // One fused node (and a fused backward node) instead of a graph of row ops.
    let (mut out, stats) = z.bn_normalize(eps);
    if let Some(g) = gamma {
        out = out.mul_row(g);
    }
    if let Some(b) = beta {
        out = out.add_row(b);
    }
    BatchNormOutput {
        out,
        mean: Matrix::from_vec(1, d, stats.mean),
        var: Matrix::from_vec(1, d, stats.var),
    }
}

/// BatchNorm1d in evaluation mode with fixed statistics.
pub fn batchnorm_eval<'t, T: Scalar>(
    z: Var<'t, T>,
    gamma: Option<Var<'t, T>>,
    beta: Option<Var<'t, T>>,
    running_mean: &Matrix<T>,
    running_var: &Matrix<T>,
    eps: f64,
) -> Var<'t, T> {
    let tape = z.tape();
    let inv_std = running_var.map(|v| T::ONE / (v + T::from_f64(eps)).sqrt());
    let neg_mean = running_mean.map(|m| -m);
    let mut out = z
        .add_row(tape.constant(neg_mean))
        .mul_row(tape.constant(inv_std));
    if let Some(g) = gamma {
        out = out.mul_row(g);
    }
    if let Some(b) = beta {
        out = out.add_row(b);
    }
    out
}

/// L2 penalty `lambda/2 * sum_j ||theta_j||^2` over the given tensors.
pub fn weight_decay<'t, T: Scalar>(params: &[Var<'t, T>], lambda: f64) -> Option<Var<'t, T>> {
    let mut acc: Option<Var<'t, T>> = None;
    for p in params {
        let s = p.square().sum();
        acc = Some(match acc {
            Some(a) => a.add(s),
            None => s,
        });
    }
    acc.map(|a| a.scale(T::from_f64(lambda / 2.0)))
}
