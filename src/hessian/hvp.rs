//! Matrix-free Hessian-vector products of the mean loss, by the R-operator
//! (Pearlmutter 1994), batched over samples as GEMMs.
//!
//! Forward: `R{z(p)} = x(p) V(p)^T + vb(p) + R{x(p)} W(p)^T`, `R{x(p+1)} = act'(z(p)) .* R{z(p)}`.
//! Top: `R{g_z(L-1)} = A R{z(L-1)}`, `g_z(L-1) = r`.
//! Backward (full Hessian): `R{dW(p)} = R{g_z(p)}^T x(p) + g_z(p)^T R{x(p)}`,
//! `R{db(p)} = sum_i R{g_z(p)}`,
//! `R{g_z(p-1)} = act''(z(p-1)) .* R{z(p-1)} .* (g_z(p) W(p)) + act'(z(p-1)) .* (g_z(p) V(p) + R{g_z(p)} W(p))`.
//! Gauss-Newton keeps only the terms through `A`: `R{dW(p)} = R{g_z(p)}^T x(p)`,
//! `R{g_z(p-1)} = act'(z(p-1)) .* (R{g_z(p)} W(p))`. The H-term is the difference.
#![allow(clippy::needless_range_loop)] // index loops mirror the formulas above

use super::dense::Part;
use super::structure::{check_model, softmax, ParamLayout};
use crate::error::{Error, Result};
use crate::nn::{LossKind, Mlp};
use crate::tensor::{gemm_par, matmul_new, sample_blocks, CsrMatrix, Matrix, Par};
use rayon::prelude::*;

/// Largest number of samples per block in the batched HVP.
pub const HVP_BLOCK: usize = 512;

/// Samples per block for `n` samples: one block per thread when that fits in
/// [`HVP_BLOCK`] (fewer, larger products amortise the per-block work), never below 64.
/// The partition, and so the summation order, depends on the thread count only:
/// products are reproducible for a given thread count.
pub fn hvp_block(n: usize) -> usize {
    n.div_ceil(rayon::current_num_threads().max(1))
        .clamp(64, HVP_BLOCK)
}

/// Splits a parameter-order vector into per-layer `(V(p), vb(p))`.
fn split(layout: &ParamLayout, v: &[f64]) -> Vec<(Matrix<f64>, Option<Vec<f64>>)> {
    (0..layout.num_layers())
        .map(|p| {
            let (d, n) = (layout.widths[p + 1], layout.widths[p]);
            let o = layout.offsets[p];
            let w = Matrix::from_vec(d, n, v[o..o + d * n].to_vec());
            let b = layout.bias.then(|| v[o + d * n..o + d * n + d].to_vec());
            (w, b)
        })
        .collect()
}

fn scale_rows_by(m: &mut Matrix<f64>, d: &Matrix<f64>) {
    for (v, &s) in m.as_mut_slice().iter_mut().zip(d.as_slice()) {
        *v *= s;
    }
}

/// `H v` (or `GN v`, `Hterm v`) of the mean loss over the rows of `x`; `v` in parameter order.
pub fn hvp(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    part: Part,
    v: &[f64],
) -> Result<Vec<f64>> {
    // One product: building the sparse copy of the inputs would not pay off.
    HessianOperator::build(model, x, labels, None, part, false)?.apply(v)
}

/// HVPs for several vectors at once (the forward pass is shared).
pub fn hvp_multi(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    part: Part,
    vs: &[Vec<f64>],
) -> Result<Vec<Vec<f64>>> {
    HessianOperator::new(model, x, labels, part)?.apply_multi(vs)
}

/// Per-block state that does not depend on the direction `v`.
struct BlockState {
    fwd: crate::nn::mlp::ForwardCache<f64>,
    labels: Vec<usize>,
    dact: Vec<Matrix<f64>>,
    /// The inputs `x(0)` as sparse rows when at most [`SPARSE_INPUT_DENSITY`] of them
    /// are nonzero: the two products with `x(0)` (by far the largest for image data)
    /// then cost `nnz x d_0` instead of `m x n_0 x d_0`.
    x0_sparse: Option<CsrMatrix>,
    /// `g_z(p) = dl/dz(p)` for every layer (`g_z(L-1) = r`), which do not depend on `v`.
    gz: Vec<Matrix<f64>>,
    /// Softmax probabilities per sample (CE; empty for MSE, where `A = 2 I`): the `p`
    /// of `A R{z} = p .* R{z} - p (p . R{z})`.
    probs: Matrix<f64>,
}

/// Inputs at most this dense go through the sparse first-layer products.
pub const SPARSE_INPUT_DENSITY: f64 = 0.35;

/// A Hessian part of the mean loss over a fixed set of samples, as a
/// matrix-free operator: the forward pass is computed once and shared by every
/// product (Lanczos, Hutchinson and friends call [`HessianOperator::apply`] many times).
pub struct HessianOperator<'a> {
    model: &'a Mlp<f64>,
    layout: ParamLayout,
    part: Part,
    blocks: Vec<BlockState>,
    n: usize,
}

impl<'a> HessianOperator<'a> {
    /// The operator with its forward pass cached; mostly-zero inputs are also kept as
    /// sparse rows for the first layer's products (amortised over many products).
    pub fn new(model: &'a Mlp<f64>, x: &Matrix<f64>, labels: &[usize], part: Part) -> Result<Self> {
        Self::build(model, x, labels, None, part, true)
    }

    /// The operator of the squared loss against real-valued targets `y` (`n x K`, one
    /// row per sample): `l = mean_i sum_k (z_ik - y_ik)^2`, so `r = 2 (z - y)` and
    /// `A = 2 I`. The model's loss must be MSE; with one-hot rows this is [`Self::new`].
    pub fn with_targets(
        model: &'a Mlp<f64>,
        x: &Matrix<f64>,
        targets: &Matrix<f64>,
        part: Part,
    ) -> Result<Self> {
        if model.config.loss != LossKind::Mse {
            return Err(Error::InvalidArgument(
                "real-valued targets need the MSE loss".into(),
            ));
        }
        if targets.rows() != x.rows() || targets.cols() != model.config.classes {
            return Err(Error::Shape(format!(
                "targets are {}x{}, expected {}x{} (samples x outputs)",
                targets.rows(),
                targets.cols(),
                x.rows(),
                model.config.classes
            )));
        }
        if !targets.all_finite() {
            return Err(Error::NonFiniteInput("targets contain NaN or Inf".into()));
        }
        let labels = vec![0; x.rows()];
        Self::build(model, x, &labels, Some(targets), part, true)
    }

    fn build(
        model: &'a Mlp<f64>,
        x: &Matrix<f64>,
        labels: &[usize],
        targets: Option<&Matrix<f64>>,
        part: Part,
        sparse_inputs: bool,
    ) -> Result<Self> {
        check_model(model)?;
        super::structure::check_samples(model, x, labels)?;
        let act = model.config.activation;
        let slope = model.config.leaky_slope;
        let nl = model.num_layers();
        let blocks: Vec<Result<BlockState>> = sample_blocks(x.rows(), hvp_block(x.rows()))
            .into_par_iter()
            .map(|r| {
                let xb = x.rows_view(r.start, r.end).to_owned();
                let fwd = model.forward_owned(xb, Par::Seq)?;
                let dact: Vec<Matrix<f64>> = fwd.pre[..nl - 1]
                    .iter()
                    .map(|z| z.map(|t| act.derivative(t, slope)))
                    .collect();
                let x0_sparse = if sparse_inputs {
                    let csr = CsrMatrix::from_dense(&fwd.inputs[0]);
                    (csr.density() <= SPARSE_INPUT_DENSITY).then_some(csr)
                } else {
                    None
                };
                let yb = targets.map(|t| t.rows_view(r.start, r.end).to_owned());
                let labels = labels[r].to_vec();
                let (probs, gz) = backward_state(model, &fwd, &dact, &labels, yb.as_ref());
                Ok(BlockState {
                    fwd,
                    labels,
                    dact,
                    x0_sparse,
                    gz,
                    probs,
                })
            })
            .collect();
        Ok(Self {
            model,
            layout: ParamLayout::of(model),
            part,
            blocks: blocks.into_iter().collect::<Result<_>>()?,
            n: x.rows(),
        })
    }

    /// Number of parameters `P` (the operator is `P x P`).
    pub fn dim(&self) -> usize {
        self.layout.total
    }

    pub fn part(&self) -> Part {
        self.part
    }

    /// `H v` for a vector in parameter order.
    pub fn apply(&self, v: &[f64]) -> Result<Vec<f64>> {
        let mut out = self.apply_multi(&[v.to_vec()])?;
        Ok(out.pop().expect("one vector"))
    }

    /// `H v` for several vectors; blocks run in parallel and are summed in block order.
    pub fn apply_multi(&self, vs: &[Vec<f64>]) -> Result<Vec<Vec<f64>>> {
        for v in vs {
            if v.len() != self.layout.total {
                return Err(Error::Shape(format!(
                    "vector of length {} for a model with {} parameters",
                    v.len(),
                    self.layout.total
                )));
            }
            if !v.iter().all(|x| x.is_finite()) {
                return Err(Error::NonFiniteInput(
                    "HVP direction contains NaN or Inf".into(),
                ));
            }
        }
        let splits: Vec<_> = vs.iter().map(|v| split(&self.layout, v)).collect();
        // V(0)^T once per direction for the sparse first-layer product.
        let sparse = self.blocks.iter().any(|b| b.x0_sparse.is_some());
        let v0ts: Vec<Option<Matrix<f64>>> = splits
            .iter()
            .map(|sp| sparse.then(|| sp[0].0.transpose()))
            .collect();
        let block_products = |b: &BlockState, par: Par| -> Vec<Vec<f64>> {
            splits
                .iter()
                .zip(&v0ts)
                .map(|(vp, v0t)| {
                    block_hvp(
                        self.model,
                        &self.layout,
                        b,
                        self.part,
                        vp,
                        v0t.as_ref(),
                        par,
                    )
                })
                .collect()
        };
        // The block sums in block order, from zero (the same additions however the
        // blocks were computed).
        let (total, count) = (self.layout.total, vs.len());
        let sum_blocks = |parts: Vec<Vec<Vec<f64>>>| {
            let mut acc = vec![vec![0.0; total]; count];
            for part_res in parts {
                for (a, b) in acc.iter_mut().zip(part_res) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                }
            }
            acc
        };
        let mut acc = if crate::dist::distributed() && self.blocks.len() > 1 {
            // Several MPI ranks: one sample block per work item (its GEMMs in parallel
            // inside: `gemm_par` is bit-identical for `Seq` and `Rayon`); rank 0 sums the
            // blocks in block order and every rank gets the sum. The blocks are those of
            // one process ([`hvp_block`]: they depend on the threads per process, not on
            // the rank count), so the sum is the one-process sum bit for bit. Each item
            // carries the fingerprint of the directions it multiplied, checked by rank 0.
            let key = crate::dist::fingerprint(vs.iter().map(|v| v.as_slice()));
            crate::dist::map_reduce(
                self.blocks.len(),
                |i| Ok::<_, Error>((key, block_products(&self.blocks[i], Par::Rayon))),
                |parts: Vec<(u64, Vec<Vec<f64>>)>| {
                    if let Some(i) = parts.iter().position(|p| p.0 != key) {
                        return Err(Error::InvalidArgument(format!(
                            "the sample block {i} of a Hessian-vector product was computed from another direction than rank 0's: the ranks' computations diverged (run every rank on the same kind of CPU with the same build and --threads)"
                        )));
                    }
                    Ok(sum_blocks(parts.into_iter().map(|p| p.1).collect()))
                },
            )?
        } else {
            let par = if self.blocks.len() == 1 {
                Par::Rayon
            } else {
                Par::Seq
            };
            sum_blocks(
                self.blocks
                    .par_iter()
                    .map(|b| block_products(b, par))
                    .collect(),
            )
        };
        let s = 1.0 / self.n as f64;
        for a in &mut acc {
            for x in a.iter_mut() {
                *x *= s;
            }
        }
        Ok(acc)
    }
}

/// The direction-free part of the backward pass: per-sample softmax probabilities (CE;
/// empty for MSE) and `g_z(p)` for every layer, `g_z(L-1) = r`,
/// `g_z(p-1) = act'(z(p-1)) .* (g_z(p) W(p))`.
fn backward_state(
    model: &Mlp<f64>,
    fwd: &crate::nn::mlp::ForwardCache<f64>,
    dact: &[Matrix<f64>],
    labels: &[usize],
    targets: Option<&Matrix<f64>>,
) -> (Matrix<f64>, Vec<Matrix<f64>>) {
    let nl = model.num_layers();
    let logits = fwd.logits();
    let m = logits.rows();
    let r = match targets {
        Some(y) => logits.zip_map(y, |z, t| 2.0 * (z - t)),
        None => crate::nn::backprop::loss_residuals(model.config.loss, logits, labels).0,
    };
    let probs = match model.config.loss {
        LossKind::CrossEntropy => {
            let mut probs = Matrix::zeros(m, logits.cols());
            for i in 0..m {
                probs.row_mut(i).copy_from_slice(&softmax(logits.row(i)));
            }
            probs
        }
        LossKind::Mse => Matrix::zeros(0, 0),
    };
    let mut gz = vec![Matrix::zeros(0, 0); nl];
    gz[nl - 1] = r;
    for p in (1..nl).rev() {
        let w = &model.layers[p].weight;
        let mut below = Matrix::zeros(m, w.cols());
        gemm_par(Par::Seq, 1.0, gz[p].view(), w.view(), 0.0, &mut below);
        scale_rows_by(&mut below, &dact[p - 1]);
        gz[p - 1] = below;
    }
    (probs, gz)
}

fn block_hvp(
    model: &Mlp<f64>,
    layout: &ParamLayout,
    state: &BlockState,
    part: Part,
    v: &[(Matrix<f64>, Option<Vec<f64>>)],
    v0t: Option<&Matrix<f64>>,
    par: Par,
) -> Vec<f64> {
    let nl = model.num_layers();
    let (fwd, labels, dact) = (&state.fwd, &state.labels, &state.dact);
    let m = labels.len();
    let act = model.config.activation;
    // Forward R-pass.
    let mut rx: Vec<Matrix<f64>> = vec![Matrix::zeros(0, 0)];
    let mut rz: Vec<Matrix<f64>> = Vec::with_capacity(nl);
    for p in 0..nl {
        let w = &model.layers[p].weight;
        let mut z = match (&state.x0_sparse, p) {
            (Some(xs), 0) => xs.mul_transposed(v0t.expect("V(0)^T for sparse inputs")),
            // Outputs of beta = 0 products are never zeroed first (a memset per
            // product was a tenth of the HVP's time); the bits are the same.
            _ => matmul_new(par, fwd.inputs[p].view(), v[p].0.t()),
        };
        if p > 0 {
            gemm_par(par, 1.0, rx[p].view(), w.t(), 1.0, &mut z);
        }
        if let Some(vb) = &v[p].1 {
            for i in 0..m {
                for (t, &b) in z.row_mut(i).iter_mut().zip(vb) {
                    *t += b;
                }
            }
        }
        if p + 1 < nl {
            rx.push(z.zip_map(&dact[p], |a, d| a * d));
        }
        rz.push(z);
    }
    // Top: A R{z} (the residuals r = g_z(L-1) are cached).
    let k = state.gz[nl - 1].cols();
    let mut a_rz = Matrix::zeros(m, k);
    for i in 0..m {
        let u = rz[nl - 1].row(i);
        match model.config.loss {
            LossKind::CrossEntropy => {
                let p = state.probs.row(i);
                let pu: f64 = p.iter().zip(u).map(|(a, b)| a * b).sum();
                for j in 0..k {
                    a_rz.set(i, j, p[j] * u[j] - p[j] * pu);
                }
            }
            LossKind::Mse => {
                for j in 0..k {
                    a_rz.set(i, j, 2.0 * u[j]);
                }
            }
        }
    }
    let mut out = vec![0.0; layout.total];
    let mut add_grads =
        |rg: &Matrix<f64>, gz_rx: Option<(&Matrix<f64>, &Matrix<f64>)>, p: usize, sign: f64| {
            let w = &model.layers[p].weight;
            let o = layout.offsets[p];
            if let (Some(xs), 0) = (&state.x0_sparse, p) {
                // (R{g_z}^T X)^T, added transposed: no d x n copy.
                let prod = xs.t_mul_transposed(rg);
                let (n, d) = (prod.rows(), prod.cols());
                // Eight rows of `prod` at a time: each pass over r writes one cache line
                // of `out` and reads the eight rows from L1.
                for j0 in (0..n).step_by(8) {
                    let j1 = (j0 + 8).min(n);
                    for r in 0..d {
                        let dst = &mut out[o + r * n + j0..o + r * n + j1];
                        for (t, j) in dst.iter_mut().zip(j0..j1) {
                            *t += sign * prod.get(j, r);
                        }
                    }
                }
                if layout.bias {
                    let db = rg.sum_rows();
                    let ob = o + n * d;
                    for (t, &val) in out[ob..ob + d].iter_mut().zip(db.as_slice()) {
                        *t += sign * val;
                    }
                }
                return;
            }
            let mut dw = matmul_new(par, rg.t(), fwd.inputs[p].view());
            debug_assert_eq!((dw.rows(), dw.cols()), (w.rows(), w.cols()));
            if let Some((gz, rxp)) = gz_rx {
                gemm_par(par, 1.0, gz.t(), rxp.view(), 1.0, &mut dw);
            }
            for (t, &val) in out[o..o + dw.len()].iter_mut().zip(dw.as_slice()) {
                *t += sign * val;
            }
            if layout.bias {
                let db = rg.sum_rows();
                let ob = o + dw.len();
                for (t, &val) in out[ob..ob + db.len()].iter_mut().zip(db.as_slice()) {
                    *t += sign * val;
                }
            }
        };
    // Gauss-Newton stream (for GN, and subtracted for the H-term).
    if matches!(part, Part::Gn | Part::Hterm) {
        let sign = if part == Part::Gn { 1.0 } else { -1.0 };
        let mut rg = a_rz.clone();
        for p in (0..nl).rev() {
            add_grads(&rg, None, p, sign);
            if p > 0 {
                let w = &model.layers[p].weight;
                let mut below = matmul_new(par, rg.view(), w.view());
                scale_rows_by(&mut below, &dact[p - 1]);
                rg = below;
            }
        }
    }
    // Full-Hessian stream.
    if matches!(part, Part::Full | Part::Hterm) {
        let mut rg = a_rz;
        for p in (0..nl).rev() {
            let gz = &state.gz[p];
            let rxp = if p > 0 { Some(&rx[p]) } else { None };
            add_grads(&rg, rxp.map(|rx| (gz, rx)), p, 1.0);
            if p > 0 {
                let w = &model.layers[p].weight;
                let mut rgx = matmul_new(par, gz.view(), v[p].0.view());
                gemm_par(par, 1.0, rg.view(), w.view(), 1.0, &mut rgx);
                let zb = &fwd.pre[p - 1];
                let new_rg = if act.is_piecewise_linear() {
                    dact[p - 1].zip_map(&rgx, |d1, t| d1 * t)
                } else {
                    let mut new_rg = Matrix::zeros(m, w.cols());
                    // act'' term: R{g_z} picks up act''(z) R{z} (g_z(p) W(p)), where
                    // g_z(p) W(p) = g_z(p-1) / act'(z) is recomputed (act' may vanish).
                    let gx = matmul_new(par, gz.view(), w.view());
                    for idx in 0..new_rg.len() {
                        let d1 = dact[p - 1].as_slice()[idx];
                        let d2 = act.second_derivative(zb.as_slice()[idx]);
                        new_rg.as_mut_slice()[idx] =
                            d2 * rz[p - 1].as_slice()[idx] * gx.as_slice()[idx]
                                + d1 * rgx.as_slice()[idx];
                    }
                    new_rg
                };
                rg = new_rg;
            }
        }
    }
    out
}

impl crate::linalg::SymOp for HessianOperator<'_> {
    fn dim(&self) -> usize {
        self.layout.total
    }
    /// Failed products (non-finite input) surface as NaN, which every caller rejects.
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        match HessianOperator::apply(self, v) {
            Ok(r) => out.copy_from_slice(&r),
            Err(_) => out.fill(f64::NAN),
        }
    }
}
