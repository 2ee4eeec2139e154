//! Exact per-sample directional derivatives of the loss along one parameter direction.
//!
//! For `l_i(eps) = loss(f(t + eps d; x_i), y_i)` this computes, for every sample at once,
//! `l_i`, `l_i' = g_i . d` and `l_i'' = d^T H_i d` (the full per-sample Hessian), by
//! forward-mode propagation of first and second tangents (`d = [vec(V0), vb0, ...]`):
//!
//! * `z(p) = W x + b`, `z' = V x + W x' + vb`, `z'' = 2 V x' + W x''`;
//! * `x(p+1) = act(z)`, `x' = act'(z) z'`, `x'' = act''(z) z'^2 + act'(z) z''`;
//! * `l' = r . z'`, `l'' = z'^T A z' + r . z''` at the logits (`r`, `A` as in `structure.rs`).
//!
//! Three forward passes' worth of GEMMs, no Hessian is formed.

use super::structure::{check_model, softmax, ParamLayout};
use crate::error::{Error, Result};
use crate::nn::{LossKind, Mlp};
use crate::tensor::{gemm, sample_blocks, Matrix};
use rayon::prelude::*;

/// Samples per parallel block.
pub const DIRECTIONAL_BLOCK: usize = 256;

/// Per-sample values along a direction: losses, slopes `g_i . d`, curvatures `d^T H_i d`.
#[derive(Clone, Debug, Default)]
pub struct Directional {
    pub losses: Vec<f64>,
    pub slopes: Vec<f64>,
    pub curvatures: Vec<f64>,
}

/// [`Directional`] values of every row of `x` along `d` (parameter order).
pub fn directional_derivatives(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    d: &[f64],
) -> Result<Directional> {
    check_model(model)?;
    super::structure::check_samples(model, x, labels)?;
    let layout = ParamLayout::of(model);
    if d.len() != layout.total {
        return Err(Error::Shape(format!(
            "direction of length {} for a model with {} parameters",
            d.len(),
            layout.total
        )));
    }
    if !d.iter().all(|v| v.is_finite()) {
        return Err(Error::NonFiniteInput(
            "direction contains NaN or Inf".into(),
        ));
    }
    let dirs: Vec<(Matrix<f64>, Option<Vec<f64>>)> = (0..layout.num_layers())
        .map(|p| {
            let (dd, n) = (layout.widths[p + 1], layout.widths[p]);
            let o = layout.offsets[p];
            let w = Matrix::from_vec(dd, n, d[o..o + dd * n].to_vec());
            let b = layout.bias.then(|| d[o + dd * n..o + dd * n + dd].to_vec());
            (w, b)
        })
        .collect();
    let parts: Vec<Directional> = sample_blocks(x.rows(), DIRECTIONAL_BLOCK)
        .into_par_iter()
        .map(|r| {
            block(
                model,
                &dirs,
                &x.rows_view(r.start, r.end).to_owned(),
                &labels[r],
            )
        })
        .collect();
    let mut out = Directional::default();
    for p in parts {
        out.losses.extend(p.losses);
        out.slopes.extend(p.slopes);
        out.curvatures.extend(p.curvatures);
    }
    Ok(out)
}

fn block(
    model: &Mlp<f64>,
    dirs: &[(Matrix<f64>, Option<Vec<f64>>)],
    x: &Matrix<f64>,
    labels: &[usize],
) -> Directional {
    let m = x.rows();
    let nl = model.num_layers();
    let act = model.config.activation;
    let slope = model.config.leaky_slope;
    let mut h = x.clone();
    let mut h1 = Matrix::zeros(m, x.cols());
    let mut h2 = Matrix::zeros(m, x.cols());
    let mut z = Matrix::zeros(0, 0);
    let mut z1 = Matrix::zeros(0, 0);
    let mut z2 = Matrix::zeros(0, 0);
    for (p, layer) in model.layers.iter().enumerate() {
        let w = &layer.weight;
        let (v, vb) = &dirs[p];
        let dout = w.rows();
        z = Matrix::zeros(m, dout);
        gemm(1.0, h.view(), w.t(), 0.0, &mut z);
        if let Some(b) = &layer.bias {
            for i in 0..m {
                for (t, &bv) in z.row_mut(i).iter_mut().zip(b.as_slice()) {
                    *t += bv;
                }
            }
        }
        z1 = Matrix::zeros(m, dout);
        gemm(1.0, h.view(), v.t(), 0.0, &mut z1);
        gemm(1.0, h1.view(), w.t(), 1.0, &mut z1);
        if let Some(vb) = vb {
            for i in 0..m {
                for (t, &bv) in z1.row_mut(i).iter_mut().zip(vb) {
                    *t += bv;
                }
            }
        }
        z2 = Matrix::zeros(m, dout);
        gemm(2.0, h1.view(), v.t(), 0.0, &mut z2);
        gemm(1.0, h2.view(), w.t(), 1.0, &mut z2);
        if p + 1 < nl {
            h = z.map(|t| act.apply(t, slope));
            h1 = Matrix::zeros(m, dout);
            h2 = Matrix::zeros(m, dout);
            for idx in 0..m * dout {
                let zv = z.as_slice()[idx];
                let (a1, a2) = (act.derivative(zv, slope), act.second_derivative(zv));
                let (u1, u2) = (z1.as_slice()[idx], z2.as_slice()[idx]);
                h1.as_mut_slice()[idx] = a1 * u1;
                h2.as_mut_slice()[idx] = a2 * u1 * u1 + a1 * u2;
            }
        }
    }
    let losses = model.config.loss.per_sample(&z, labels);
    let k = z.cols();
    let mut slopes = Vec::with_capacity(m);
    let mut curvatures = Vec::with_capacity(m);
    for (i, &y) in labels.iter().enumerate() {
        let (zi, u, u2) = (z.row(i), z1.row(i), z2.row(i));
        let (r, quad): (Vec<f64>, f64) = match model.config.loss {
            LossKind::CrossEntropy => {
                let pr = softmax(zi);
                let pu: f64 = pr.iter().zip(u).map(|(a, b)| a * b).sum();
                let puu: f64 = pr.iter().zip(u).map(|(a, b)| a * b * b).sum();
                let r = (0..k)
                    .map(|j| pr[j] - if j == y { 1.0 } else { 0.0 })
                    .collect();
                (r, puu - pu * pu)
            }
            LossKind::Mse => {
                let r = (0..k)
                    .map(|j| 2.0 * (zi[j] - if j == y { 1.0 } else { 0.0 }))
                    .collect();
                (r, 2.0 * u.iter().map(|v| v * v).sum::<f64>())
            }
        };
        slopes.push(r.iter().zip(u).map(|(a, b)| a * b).sum());
        curvatures.push(quad + r.iter().zip(u2).map(|(a, b)| a * b).sum::<f64>());
    }
    Directional {
        losses,
        slopes,
        curvatures,
    }
}
