//! Analytic backpropagation for MLPs without BatchNorm: the training hot path.
//!
//! For a batch of `n` samples (rows) and the mean loss `(1/n) sum_i l_i`:
//! `r_i = dl_i/dz(L)` (CE: `softmax(z_i) - onehot(y_i)`; MSE: `2 (z_i - onehot(y_i))`),
//! `delta(L) = r / n`, and going down the layers
//! `dL/dW(p) = delta(p)^T x(p)`, `dL/db(p) = sum_i delta(p)_i`,
//! `delta(p-1) = (delta(p) W(p)) .* act'(z(p-1))`.
//!
//! The batch is cut into fixed blocks of [`SAMPLE_BLOCK`] rows. With two or more
//! blocks, blocks run in parallel (each with single-threaded GEMMs) and their
//! partial gradients are summed in block order; a single block uses
//! row-parallel GEMMs instead. Either way the result depends only on the block
//! size, never on the thread count or scheduling.

use super::{LossKind, Mlp};
use crate::error::{Error, Result};
use crate::tensor::{gemm_par, sample_blocks, Matrix, Par, Scalar};
use rayon::prelude::*;

/// Rows per block in [`loss_and_grad_analytic`].
pub const SAMPLE_BLOCK: usize = 64;

/// Residuals `r = dl/dz` (one row per sample) and the summed per-sample losses of logits `z`.
pub fn loss_residuals<T: Scalar>(
    kind: LossKind,
    z: &Matrix<T>,
    labels: &[usize],
) -> (Matrix<T>, f64) {
    let mut r = z.clone();
    let mut loss = 0.0;
    for (i, &y) in labels.iter().enumerate() {
        let row = r.row_mut(i);
        match kind {
            LossKind::CrossEntropy => {
                let m = row.iter().copied().fold(row[0], T::max);
                let mut s = T::ZERO;
                for v in row.iter_mut() {
                    *v = (*v - m).exp();
                    s += *v;
                }
                let zy = z.get(i, y);
                loss += (m + s.ln() - zy).to_f64();
                for v in row.iter_mut() {
                    *v /= s;
                }
                row[y] -= T::ONE;
            }
            LossKind::Mse => {
                for (k, v) in row.iter_mut().enumerate() {
                    let d = *v - if k == y { T::ONE } else { T::ZERO };
                    loss += (d * d).to_f64();
                    *v = d + d;
                }
            }
        }
    }
    (r, loss)
}

/// Mean loss and its gradient (one matrix per parameter tensor, in
/// parameter-vector order) over the rows of `x`. Models with BatchNorm are
/// rejected: use the tape (`train::loss_and_grad`).
pub fn loss_and_grad_analytic<T: Scalar>(
    model: &Mlp<T>,
    x: &Matrix<T>,
    labels: &[usize],
) -> Result<(f64, Vec<Matrix<T>>)> {
    if model.layers.iter().any(|l| l.bn.is_some()) {
        return Err(Error::Unsupported(
            "analytic backpropagation does not handle BatchNorm layers".into(),
        ));
    }
    model.check_input(x)?;
    if labels.len() != x.rows() || labels.is_empty() {
        return Err(Error::Shape(format!(
            "{} samples but {} labels",
            x.rows(),
            labels.len()
        )));
    }
    let n = x.rows();
    let scale = T::from_f64(1.0 / n as f64);
    let blocks = sample_blocks(n, SAMPLE_BLOCK);
    let run = |range: std::ops::Range<usize>, par: Par| -> Result<(f64, Vec<Matrix<T>>)> {
        let xb = x.rows_view(range.start, range.end).to_owned();
        block_grad(model, xb, &labels[range], scale, par)
    };
    let parts: Vec<Result<(f64, Vec<Matrix<T>>)>> = if blocks.len() == 1 {
        vec![run(0..n, Par::Rayon)]
    } else {
        blocks.into_par_iter().map(|r| run(r, Par::Seq)).collect()
    };
    let mut it = parts.into_iter();
    let (mut loss, mut grads) = it.next().expect("at least one block")?;
    for part in it {
        let (l, g) = part?;
        loss += l;
        for (a, b) in grads.iter_mut().zip(&g) {
            a.axpy(T::ONE, b);
        }
    }
    Ok((loss / n as f64, grads))
}

/// Summed loss and `scale`-weighted gradient over one block of samples.
fn block_grad<T: Scalar>(
    model: &Mlp<T>,
    x: Matrix<T>,
    labels: &[usize],
    scale: T,
    par: Par,
) -> Result<(f64, Vec<Matrix<T>>)> {
    let cache = model.forward_owned(x, par)?;
    let (mut delta, loss) = loss_residuals(model.config.loss, cache.logits(), labels);
    for v in delta.as_mut_slice() {
        *v *= scale;
    }
    let act = model.config.activation;
    let slope = T::from_f64(model.config.leaky_slope);
    let nl = model.num_layers();
    // Gradients per layer, collected top-down then reversed into parameter order.
    let mut per_layer: Vec<(Matrix<T>, Option<Matrix<T>>)> = Vec::with_capacity(nl);
    for p in (0..nl).rev() {
        let layer = &model.layers[p];
        let mut dw = Matrix::zeros(layer.weight.rows(), layer.weight.cols());
        gemm_par(
            par,
            T::ONE,
            delta.t(),
            cache.inputs[p].view(),
            T::ZERO,
            &mut dw,
        );
        let db = layer.bias.as_ref().map(|_| delta.sum_rows());
        if p > 0 {
            let mut below = Matrix::zeros(delta.rows(), layer.weight.cols());
            gemm_par(
                par,
                T::ONE,
                delta.view(),
                layer.weight.view(),
                T::ZERO,
                &mut below,
            );
            for (d, &z) in below
                .as_mut_slice()
                .iter_mut()
                .zip(cache.pre[p - 1].as_slice())
            {
                *d *= act.derivative(z, slope);
            }
            delta = below;
        }
        per_layer.push((dw, db));
    }
    let mut grads = Vec::with_capacity(2 * nl);
    for (dw, db) in per_layer.into_iter().rev() {
        grads.push(dw);
        grads.extend(db);
    }
    Ok((loss, grads))
}
