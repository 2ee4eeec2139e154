//! Exact per-sample Gauss-Newton norms through the `K x K` route.
//!
//! `GN_i = F_i^T A_i F_i` has the nonzero spectrum of `C_i^T (F_i F_i^T) C_i`
//! (with `A_i = C_i C_i^T`), and `F_i F_i^T = sum_p (||x_i(p)||^2 + [bias]) G_i(p) G_i(p)^T`
//! because each layer's Jacobian block is `G(p) (x) x~(p)^T`. So
//! `||GN_i||_2 = lambda_max(C_i^T M_i C_i)` costs `O(K^2 sum_p d_p + K^3)` per sample.

use super::hvp::SPARSE_INPUT_DENSITY;
use super::small_eig::sym_eigenvalues_in_place;
use super::structure::{
    backward_products, check_model, check_samples, curvature_factor, softmax, BatchStructure,
};
use crate::error::{Error, Result};
use crate::nn::{LossKind, Mlp};
use crate::tensor::{gemm_par, matmul, sample_blocks, Matrix, Par, SparseRows};
use rayon::prelude::*;

/// Samples per parallel block: 128 keeps a block's stacked `G(p)` (`128 K x d_p`) in a
/// core's L2 for the per-sample Gram products (655 KB at K = 10, d_p = 64).
pub const GN_NORM_BLOCK: usize = 128;

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
    let nl = st.num_layers();
    let extra = if st.bias { 1.0 } else { 0.0 };
    let mut m = Matrix::zeros(k, k);
    gram_into(
        &st.g[..nl - 1],
        |p| st.inputs[p].row(i).iter().map(|v| v * v).sum::<f64>() + extra,
        nl,
        i,
        k,
        m.as_mut_slice(),
    );
    m
}

/// Adds `M_i = sum_p c_p G_i(p) G_i(p)^T` into `out` (`K x K`, row-major), where
/// `c_p = sq_norm(p) = ||x_i(p)||^2 + [bias]`, `g` holds the hidden layers' stacked
/// `G(p)` (`p = 0..L-2`) and `G(L-1) = I_K`.
fn gram_into(
    g: &[Matrix<f64>],
    sq_norm: impl Fn(usize) -> f64,
    num_layers: usize,
    i: usize,
    k: usize,
    out: &mut [f64],
) {
    for p in 0..num_layers {
        let c = sq_norm(p);
        if p + 1 == num_layers {
            for a in 0..k {
                out[a * k + a] += c;
            }
            continue;
        }
        let g = &g[p];
        for a in 0..k {
            let ga = g.row(i * k + a);
            for b in 0..=a {
                let dot = crate::tensor::dot(ga, g.row(i * k + b));
                out[a * k + b] += c * dot;
                if a != b {
                    out[b * k + a] += c * dot;
                }
            }
        }
    }
}

/// What the `K x K` route needs for a block of samples, and nothing more: the squared
/// layer-input norms `||x_i(p)||^2 + [bias]`, the hidden layers' `G(p)`, the logits
/// and the losses. Mostly-zero inputs (image pixels) go through the first layer as
/// sparse rows, and the inputs are read in place (no copy of the block).
struct GramInputs {
    /// `sq_norms[p][i]`.
    sq_norms: Vec<Vec<f64>>,
    g: Vec<Matrix<f64>>,
    logits: Matrix<f64>,
    losses: Vec<f64>,
}

impl GramInputs {
    /// The block `rows` of `x_all`, read in place; `w0t` is `W(0)^T` (`n_0 x d_0`),
    /// shared by all blocks.
    fn compute(
        model: &Mlp<f64>,
        x_all: &Matrix<f64>,
        rows: std::ops::Range<usize>,
        labels: &[usize],
        w0t: &Matrix<f64>,
        par: Par,
    ) -> Self {
        let nl = model.num_layers();
        let m = rows.len();
        let act = model.config.activation;
        let slope = model.config.leaky_slope;
        let extra = if model.config.bias { 1.0 } else { 0.0 };
        let row_sq = |mat: &Matrix<f64>| -> Vec<f64> {
            (0..mat.rows())
                .map(|i| crate::tensor::dot(mat.row(i), mat.row(i)) + extra)
                .collect()
        };
        let row = |i: usize| -> &[f64] { x_all.row(rows.start + i) };
        let x = x_all.rows_view(rows.start, rows.end);
        // Nonzeros (for the sparse decision) and squared input norms, row by row.
        let mut nnz = 0;
        let mut sq0 = Vec::with_capacity(m);
        for i in 0..m {
            let r = row(i);
            nnz += r.iter().filter(|&&v| v != 0.0).count();
            // dot: eight independent partial sums (a plain sum is one serial chain).
            sq0.push(crate::tensor::dot(r, r) + extra);
        }
        let mut sq_norms = vec![sq0];
        let mut dact = Vec::with_capacity(nl - 1);
        let mut prev: Option<Matrix<f64>> = None;
        let mut logits = Matrix::zeros(0, 0);
        for (p, layer) in model.layers.iter().enumerate() {
            let mut z = if p == 0 {
                if (nnz as f64) <= SPARSE_INPUT_DENSITY * (m * x.cols()).max(1) as f64 {
                    SparseRows::from_view_with_nnz(x, nnz).mul_transposed(w0t)
                } else {
                    let mut z = Matrix::zeros(m, layer.weight.rows());
                    gemm_par(par, 1.0, x, layer.weight.t(), 0.0, &mut z);
                    z
                }
            } else {
                let xin = prev.as_ref().expect("hidden input");
                let mut z = Matrix::zeros(m, layer.weight.rows());
                gemm_par(par, 1.0, xin.view(), layer.weight.t(), 0.0, &mut z);
                z
            };
            if let Some(b) = &layer.bias {
                for i in 0..m {
                    for (t, &bv) in z.row_mut(i).iter_mut().zip(b.as_slice()) {
                        *t += bv;
                    }
                }
            }
            if p + 1 < nl {
                dact.push(z.map(|v| act.derivative(v, slope)));
                let a = z.map(|v| act.apply(v, slope));
                sq_norms.push(row_sq(&a));
                prev = Some(a);
            } else {
                logits = z;
            }
        }
        let g = backward_products(model, &dact, m, par);
        let losses = model.config.loss.per_sample(&logits, labels);
        Self {
            sq_norms,
            g,
            logits,
            losses,
        }
    }
}

/// `C^T M C` for the curvature factor `C` of [`curvature_factor`] (`A = C C^T`), in
/// `O(K^2)` from the factor's structure instead of two `K x K` products.
///
/// CE: `C = S W` with `S = diag(sqrt(p))` on the right, `W = I - p 1^T` (column `b` is
/// `e_b - p`), so `C^T M C = S W^T M W S`. With `u = M p`: `(M W)_ib = M_ib - u_i` and
/// `(W^T V)_ab = V_ab - sum_c p_c V_cb`. For the most probable class `y` these
/// differences cancel catastrophically when `p_y` is near 1 (a confidently classified
/// sample), which would put rounding noise of size `eps ||M||` on the null direction and
/// on the norm; so column and row `y` use `1 - p_y = sum_(c != y) p_c` and sums over
/// `c != y` instead, which keeps every entry accurate relative to its own size.
/// MSE, `C = sqrt2 I`: `2 M`. `m` and `out` are `K x K` row-major; `z` are the logits.
fn curvature_congruence(kind: LossKind, z: &[f64], m: &[f64], out: &mut [f64]) {
    let k = z.len();
    match kind {
        LossKind::CrossEntropy => {
            let p = softmax(z);
            let s: Vec<f64> = p.iter().map(|v| v.sqrt()).collect();
            let y = (0..k).fold(0, |best, c| if p[c] > p[best] { c } else { best });
            let rest: f64 = (0..k).filter(|&c| c != y).map(|c| p[c]).sum();
            let u: Vec<f64> = (0..k)
                .map(|i| crate::tensor::dot(&m[i * k..(i + 1) * k], &p))
                .collect();
            // V = M W, row-major.
            let mut v = vec![0.0; k * k];
            for i in 0..k {
                let row = &m[i * k..(i + 1) * k];
                for b in 0..k {
                    v[i * k + b] = if b == y {
                        row[y] * rest
                            - (0..k)
                                .filter(|&c| c != y)
                                .map(|c| row[c] * p[c])
                                .sum::<f64>()
                    } else {
                        row[b] - u[i]
                    };
                }
            }
            for b in 0..k {
                let pv: f64 = (0..k).map(|c| p[c] * v[c * k + b]).sum();
                for a in 0..k {
                    let wv = if a == y {
                        rest * v[y * k + b]
                            - (0..k)
                                .filter(|&c| c != y)
                                .map(|c| p[c] * v[c * k + b])
                                .sum::<f64>()
                    } else {
                        v[a * k + b] - pv
                    };
                    out[a * k + b] = s[a] * s[b] * wv;
                }
            }
        }
        LossKind::Mse => {
            for (o, &v) in out.iter_mut().zip(m) {
                *o = 2.0 * v;
            }
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
    check_model(model)?;
    check_samples(model, x, labels)?;
    let kind = model.config.loss;
    let k = model.config.classes;
    let nl = model.num_layers();
    let blocks = sample_blocks(x.rows(), GN_NORM_BLOCK);
    let par = if blocks.len() == 1 {
        Par::Rayon
    } else {
        Par::Seq
    };
    let w0t = model.layers[0].weight.transpose();
    type Row = (f64, usize, f64, f64);
    let block = |r: std::ops::Range<usize>| -> Vec<Row> {
        let st = GramInputs::compute(model, x, r.clone(), &labels[r.clone()], &w0t, par);
        let mut gram = vec![0.0; k * k];
        let mut scratch = vec![0.0; k * k];
        (0..r.len())
            .map(|i| {
                gram.fill(0.0);
                gram_into(&st.g, |p| st.sq_norms[p][i], nl, i, k, &mut gram);
                curvature_congruence(kind, st.logits.row(i), &gram, &mut scratch);
                let ev = sym_eigenvalues_in_place(&mut scratch, k);
                let top = *ev.last().expect("K >= 1");
                let rank = ev
                    .iter()
                    .filter(|&&e| e > 1e-12 * top.abs().max(f64::MIN_POSITIVE))
                    .count();
                let a_norm = if with_a {
                    let c = curvature_factor(kind, st.logits.row(i));
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
            .collect()
    };
    // Fixed blocks of samples: in parallel here, or one block per work item across MPI
    // ranks; a block's rows do not depend on where it is computed.
    let parts: Vec<Vec<Row>> = if crate::dist::size() > 1 {
        crate::dist::map_items(
            blocks.len(),
            |b| Ok::<_, Error>(block(blocks[b].clone())),
            || {},
        )?
    } else {
        blocks.into_par_iter().map(block).collect()
    };
    let mut out = GnNorms {
        norms: vec![],
        ranks: vec![],
        a_norms: vec![],
        losses: vec![],
    };
    for p in parts {
        for (n, r, a, l) in p {
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
