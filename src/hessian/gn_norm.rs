//! Exact per-sample Gauss-Newton norms through the `K x K` route.
//!
//! `GN_i = F_i^T A_i F_i` has the nonzero spectrum of `C_i^T (F_i F_i^T) C_i`
//! (with `A_i = C_i C_i^T`), and `F_i F_i^T = sum_p (||x_i(p)||^2 + [bias]) G_i(p) G_i(p)^T`
//! because each layer's Jacobian block is `G(p) (x) x~(p)^T`. So
//! `||GN_i||_2 = lambda_max(C_i^T M_i C_i)` costs `O(K^2 sum_p d_p + K^3)` per sample.

use super::small_eig::sym_eigenvalues_in_place;
use super::structure::{curvature_factor, BatchStructure};
use crate::error::{Error, Result};
use crate::nn::Mlp;
use crate::tensor::{matmul, sample_blocks, Matrix, Par};
use rayon::prelude::*;

/// Samples per parallel block.
pub const GN_NORM_BLOCK: usize = 512;

/// Per-sample results of [`per_sample_gn_norms`].
#[derive(Clone, Debug)]
pub struct GnNorms {
    /// `||GN_i||_2` for every sample.
    pub norms: Vec<f64>,
    /// Numerical rank of `GN_i` (eigenvalues above `1e-12 * lambda_max`; at most `K - 1` for CE).
    pub ranks: Vec<usize>,
    /// `||A_i||_2` (at most 1/2 for softmax cross-entropy); empty unless requested.
    pub a_norms: Vec<f64>,
    /// Per-sample losses.
    pub losses: Vec<f64>,
}

/// `M_i = F_i F_i^T = sum_p (||x_i(p)||^2 + [bias]) G_i(p) G_i(p)^T` (`K x K`).
pub fn jacobian_gram(st: &BatchStructure, i: usize) -> Matrix<f64> {
    let k = st.classes();
    let mut m = Matrix::zeros(k, k);
    for p in 0..st.num_layers() {
        let x = st.inputs[p].row(i);
        let c = x.iter().map(|v| v * v).sum::<f64>() + if st.bias { 1.0 } else { 0.0 };
        if p + 1 == st.num_layers() {
            // G(L-1) = I_K.
            for a in 0..k {
                let val = m.get(a, a) + c;
                m.set(a, a, val);
            }
            continue;
        }
        let g = &st.g[p];
        for a in 0..k {
            let ga = g.row(i * k + a);
            for b in 0..=a {
                let gb = g.row(i * k + b);
                let dot = crate::tensor::dot(ga, gb);
                let val = m.get(a, b) + c * dot;
                m.set(a, b, val);
                m.set(b, a, val);
            }
        }
    }
    m
}

/// `C^T M C` for square `C`, `M` (`K x K`), written into `out` row-major.
fn congruence(c: &Matrix<f64>, m: &Matrix<f64>, out: &mut [f64]) {
    let k = c.rows();
    let mut mc = vec![0.0; k * k];
    for a in 0..k {
        for b in 0..k {
            mc[a * k + b] = (0..k).map(|t| m.get(a, t) * c.get(t, b)).sum();
        }
    }
    for a in 0..k {
        for b in 0..k {
            out[a * k + b] = (0..k).map(|t| c.get(t, a) * mc[t * k + b]).sum();
        }
    }
}

/// Exact `||GN_i||_2` and rank for every row of `x`.
pub fn per_sample_gn_norms(model: &Mlp<f64>, x: &Matrix<f64>, labels: &[usize]) -> Result<GnNorms> {
    gn_norms_impl(model, x, labels, false)
}

/// [`per_sample_gn_norms`] plus the exact `||A_i||_2` of every sample (one more
/// `K x K` eigenproblem each; used by the structural checks).
pub fn per_sample_gn_norms_with_curvature(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
) -> Result<GnNorms> {
    gn_norms_impl(model, x, labels, true)
}

fn gn_norms_impl(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    with_a: bool,
) -> Result<GnNorms> {
    if x.rows() == 0 {
        return Err(Error::InvalidArgument("no samples".into()));
    }
    let kind = model.config.loss;
    let blocks = sample_blocks(x.rows(), GN_NORM_BLOCK);
    let par = if blocks.len() == 1 {
        Par::Rayon
    } else {
        Par::Seq
    };
    type Row = (f64, usize, f64, f64);
    let parts: Vec<Result<Vec<Row>>> = blocks
        .into_par_iter()
        .map(|r| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let st = BatchStructure::from_owned(model, xb, &labels[r], par)?;
            Ok((0..st.num_samples())
                .map(|i| {
                    let k = st.classes();
                    let c = curvature_factor(kind, st.logits(i));
                    let m = jacobian_gram(&st, i);
                    let mut scratch = vec![0.0; k * k];
                    congruence(&c, &m, &mut scratch);
                    let ev = sym_eigenvalues_in_place(&mut scratch, k);
                    let top = *ev.last().expect("K >= 1");
                    let rank = ev
                        .iter()
                        .filter(|&&e| e > 1e-12 * top.abs().max(f64::MIN_POSITIVE))
                        .count();
                    let a_norm = if with_a {
                        let mut a_scratch = matmul(c.view(), c.t()).into_vec();
                        sym_eigenvalues_in_place(&mut a_scratch, k)
                            .last()
                            .copied()
                            .unwrap_or(0.0)
                    } else {
                        f64::NAN
                    };
                    (top.max(0.0), rank, a_norm, st.losses[i])
                })
                .collect())
        })
        .collect();
    let mut out = GnNorms {
        norms: vec![],
        ranks: vec![],
        a_norms: vec![],
        losses: vec![],
    };
    for p in parts {
        for (n, r, a, l) in p? {
            out.norms.push(n);
            out.ranks.push(r);
            if with_a {
                out.a_norms.push(a);
            }
            out.losses.push(l);
        }
    }
    Ok(out)
}

/// Exact `tr(GN)` of the mean loss, `(1/m) sum_i tr(A_i M_i)` with
/// `M_i = F_i F_i^T` (the `K x K` route: no `P x P` matrix). For piecewise-linear
/// activations `tr(H) = tr(GN)` exactly, since the H-term has no diagonal entries.
pub fn gn_trace(model: &Mlp<f64>, x: &Matrix<f64>, labels: &[usize]) -> Result<f64> {
    if x.rows() == 0 {
        return Err(Error::InvalidArgument("no samples".into()));
    }
    let kind = model.config.loss;
    let parts: Vec<Result<f64>> = sample_blocks(x.rows(), GN_NORM_BLOCK)
        .into_par_iter()
        .map(|r| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let st = BatchStructure::from_owned(model, xb, &labels[r.clone()], Par::Seq)?;
            let mut acc = 0.0;
            for i in 0..st.num_samples() {
                let m = jacobian_gram(&st, i);
                let (_, a) =
                    super::structure::loss_derivatives(kind, st.logits(i), labels[r.start + i]);
                let k = m.rows();
                for p in 0..k {
                    for q in 0..k {
                        acc += a.get(p, q) * m.get(q, p);
                    }
                }
            }
            Ok(acc)
        })
        .collect();
    let mut total = 0.0;
    for p in parts {
        total += p?;
    }
    Ok(total / x.rows() as f64)
}
