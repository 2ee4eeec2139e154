//! Per-sample structure of an MLP's loss Hessian, computed for a block of samples at once.
//!
//! Notation (DESIGN.md section 3; code indices are 0-based, layer `p` of `L`):
//! * `x(p)`: input of layer `p` (`x(0)` is the data), `z(p) = W(p) x(p) + b(p)`;
//! * `D(p) = diag(act'(z(p)))` for hidden layers `p < L-1`;
//! * `r = dl/dz(L-1)` (CE: `softmax - onehot`; MSE: `2 (z - onehot)`);
//!   `A = d2l/dz2` (CE: `diag(p) - p p^T`; MSE: `2 I`);
//! * `G(p) = dz(L-1)/dz(p) = W(L-1) D(L-2) ... W(p+1) D(p)` (`K x d_p`), `G(L-1) = I_K`;
//! * `delta(p) = G(p)^T r = dl/dz(p)`;
//! * `B(q, p) = dx(q)/dz(p) = D(q-1) W(q-1) ... W(p+1) D(p)` for `p < q` (`n_q x d_p`);
//! * the Jacobian of the logits `F = [G(0) (x) x(0)^T, G(0), ..., G(L-1) (x) x(L-1)^T, G(L-1)]`
//!   in parameter-vector order (row-major `vec(W)`, then `b`).
//!
//! Rows of every stacked matrix are samples; `G(p)` is stacked as `(m K) x d_p`
//! with rows `i K .. (i+1) K` belonging to sample `i`.

use crate::error::{Error, Result};
use crate::nn::{LossKind, Mlp};
use crate::tensor::{gemm_par, Matrix, Par};

/// Checks that the analytic Hessian code supports this model.
pub fn check_model(model: &Mlp<f64>) -> Result<()> {
    if model.layers.iter().any(|l| l.bn.is_some()) {
        return Err(Error::Unsupported(
            "the analytic Hessian covers MLPs without BatchNorm; use the autodiff HVP for BatchNorm graphs".into(),
        ));
    }
    Ok(())
}

/// Checks the inputs of a Hessian computation: `x` fits the model and is not empty,
/// and `labels` holds one label below `K` per row.
pub fn check_samples(model: &Mlp<f64>, x: &Matrix<f64>, labels: &[usize]) -> Result<()> {
    model.check_input(x)?;
    if x.rows() == 0 {
        return Err(Error::InvalidArgument(
            "no samples: the Hessian of an empty subset is undefined".into(),
        ));
    }
    if labels.len() != x.rows() {
        return Err(Error::Shape(format!(
            "{} samples but {} labels",
            x.rows(),
            labels.len()
        )));
    }
    if let Some(&y) = labels.iter().find(|&&y| y >= model.config.classes) {
        return Err(Error::Shape(format!(
            "label {y} is out of range for a model with {} outputs",
            model.config.classes
        )));
    }
    Ok(())
}

/// Residual `r = dl/dz` and curvature `A = d2l/dz2` of one sample's logits.
pub fn loss_derivatives(kind: LossKind, z: &[f64], y: usize) -> (Vec<f64>, Matrix<f64>) {
    let k = z.len();
    match kind {
        LossKind::CrossEntropy => {
            let p = softmax(z);
            let mut r = p.clone();
            r[y] -= 1.0;
            let a = Matrix::from_fn(k, k, |i, j| {
                if i == j {
                    p[i] - p[i] * p[j]
                } else {
                    -p[i] * p[j]
                }
            });
            (r, a)
        }
        LossKind::Mse => {
            let r = z
                .iter()
                .enumerate()
                .map(|(j, &v)| 2.0 * (v - if j == y { 1.0 } else { 0.0 }))
                .collect();
            let a = Matrix::from_fn(k, k, |i, j| if i == j { 2.0 } else { 0.0 });
            (r, a)
        }
    }
}

/// Numerically stable softmax.
pub fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// A square-root factor `C` with `A = C C^T` (`K x K`).
///
/// CE: `C = diag(s) - p s^T` with `s = sqrt(p)` (exact because `s^T s = 1`);
/// MSE: `C = sqrt(2) I`.
pub fn curvature_factor(kind: LossKind, z: &[f64]) -> Matrix<f64> {
    let k = z.len();
    match kind {
        LossKind::CrossEntropy => {
            let p = softmax(z);
            let s: Vec<f64> = p.iter().map(|v| v.sqrt()).collect();
            Matrix::from_fn(k, k, |i, j| if i == j { s[i] } else { 0.0 } - p[i] * s[j])
        }
        LossKind::Mse => Matrix::from_fn(k, k, |i, j| {
            if i == j {
                std::f64::consts::SQRT_2
            } else {
                0.0
            }
        }),
    }
}

/// The backward products `G(p)` for the hidden layers `p = 0..L-2`, each stacked over the
/// `m` samples as an `(m K) x d_p` matrix (rows `i K .. (i + 1) K` belong to sample `i`):
/// `G(L-2) = W(L-1) D(L-2)` (rows of `W(L-1)` copied and masked, no product with `I_K`),
/// then `G(p) = G(p+1) W(p+1) D(p)`. `dact[p]` is the diagonal of `D(p)` (`m x d_p`).
/// The top `G(L-1) = I_K` is not materialised.
pub fn backward_products(
    model: &Mlp<f64>,
    dact: &[Matrix<f64>],
    m: usize,
    par: Par,
) -> Vec<Matrix<f64>> {
    let nl = model.num_layers();
    let k = model.config.classes;
    let mut g: Vec<Matrix<f64>> = vec![Matrix::zeros(0, 0); nl - 1];
    for p in (0..nl - 1).rev() {
        let w = &model.layers[p + 1].weight;
        let mut gp = Matrix::zeros(m * k, w.cols());
        if p + 2 == nl {
            for i in 0..m {
                for a in 0..k {
                    gp.row_mut(i * k + a).copy_from_slice(w.row(a));
                }
            }
        } else {
            gemm_par(par, 1.0, g[p + 1].view(), w.view(), 0.0, &mut gp);
        }
        for i in 0..m {
            let d = dact[p].row(i);
            for row in i * k..(i + 1) * k {
                for (v, &dv) in gp.row_mut(row).iter_mut().zip(d) {
                    *v *= dv;
                }
            }
        }
        g[p] = gp;
    }
    g
}

/// Forward and backward quantities for a block of `m` samples.
#[derive(Clone, Debug)]
pub struct BatchStructure {
    /// `[n_0, ..., n_{L-1}, K]`.
    pub widths: Vec<usize>,
    pub bias: bool,
    /// `x(p)`, `m x n_p`, for `p = 0..L`.
    pub inputs: Vec<Matrix<f64>>,
    /// `z(p)`, `m x d_p`, for `p = 0..L` (the last holds the logits).
    pub pre: Vec<Matrix<f64>>,
    /// `act'(z(p))` (the diagonal of `D(p)`), `m x d_p`, hidden layers only.
    pub dact: Vec<Matrix<f64>>,
    /// `act''(z(p))`, hidden layers only (zero for piecewise-linear activations).
    pub ddact: Vec<Matrix<f64>>,
    /// Residuals `r`, `m x K`.
    pub residual: Matrix<f64>,
    /// `G(p)` stacked, `(m K) x d_p`.
    pub g: Vec<Matrix<f64>>,
    /// `delta(p) = G(p)^T r`, `m x d_p`.
    pub delta: Vec<Matrix<f64>>,
    /// Per-sample losses.
    pub losses: Vec<f64>,
}

impl BatchStructure {
    /// Computes the structure for the rows of `x` with labels `labels`.
    pub fn new(model: &Mlp<f64>, x: &Matrix<f64>, labels: &[usize], par: Par) -> Result<Self> {
        Self::from_owned(model, x.clone(), labels, par)
    }

    /// [`BatchStructure::new`] taking ownership of the inputs (no copy).
    pub fn from_owned(
        model: &Mlp<f64>,
        x: Matrix<f64>,
        labels: &[usize],
        par: Par,
    ) -> Result<Self> {
        check_model(model)?;
        check_samples(model, &x, labels)?;
        let m = x.rows();
        let cache = model.forward_owned(x, par)?;
        let nl = model.num_layers();
        let k = model.config.classes;
        let act = model.config.activation;
        let slope = model.config.leaky_slope;
        let dact: Vec<Matrix<f64>> = cache.pre[..nl - 1]
            .iter()
            .map(|z| z.map(|v| act.derivative(v, slope)))
            .collect();
        let ddact: Vec<Matrix<f64>> = cache.pre[..nl - 1]
            .iter()
            .map(|z| z.map(|v| act.second_derivative(v)))
            .collect();
        let logits = cache.logits();
        // r = dl/dz and the losses in one pass (no K x K curvature needed here).
        let (residual, _) = crate::nn::backprop::loss_residuals(model.config.loss, logits, labels);
        let losses = model.config.loss.per_sample(logits, labels);
        // G(p): stacked top-down, G(p) = G(p+1) W(p+1) D(p), with G(L-1) = I_K on top.
        let mut g = backward_products(model, &dact, m, par);
        let mut eye = Matrix::zeros(m * k, k);
        for r in 0..m * k {
            eye.set(r, r % k, 1.0);
        }
        g.push(eye);
        // delta(p) by backpropagation: delta(p) = (delta(p+1) W(p+1)) .* act'(z(p)).
        let mut delta = vec![Matrix::zeros(0, 0); nl];
        delta[nl - 1] = residual.clone();
        for p in (0..nl - 1).rev() {
            let w = &model.layers[p + 1].weight;
            let mut dp = Matrix::zeros(m, w.cols());
            gemm_par(par, 1.0, delta[p + 1].view(), w.view(), 0.0, &mut dp);
            for (v, &dv) in dp.as_mut_slice().iter_mut().zip(dact[p].as_slice()) {
                *v *= dv;
            }
            delta[p] = dp;
        }
        Ok(Self {
            widths: model.config.widths(),
            bias: model.config.bias,
            inputs: cache.inputs,
            pre: cache.pre,
            dact,
            ddact,
            residual,
            g,
            delta,
            losses,
        })
    }

    pub fn num_samples(&self) -> usize {
        self.residual.rows()
    }

    pub fn num_layers(&self) -> usize {
        self.widths.len() - 1
    }

    pub fn classes(&self) -> usize {
        *self.widths.last().expect("widths")
    }

    /// `G(p)` of sample `i` (`K x d_p`).
    pub fn g_of(&self, p: usize, i: usize) -> Matrix<f64> {
        let k = self.classes();
        self.g[p].rows_view(i * k, (i + 1) * k).to_owned()
    }

    /// Logits of sample `i`.
    pub fn logits(&self, i: usize) -> &[f64] {
        self.pre[self.num_layers() - 1].row(i)
    }

    /// `B(q, p) = dx(q)/dz(p)` of sample `i`, for `p < q <= L-1` (`n_q x d_p`).
    pub fn b_of(&self, model: &Mlp<f64>, q: usize, p: usize, i: usize) -> Matrix<f64> {
        assert!(p < q && q < self.num_layers(), "B(q, p) needs p < q < L");
        let dp = self.widths[p + 1];
        let mut b = Matrix::from_fn(
            dp,
            dp,
            |r, c| if r == c { self.dact[p].get(i, r) } else { 0.0 },
        );
        for s in p + 1..q {
            let w = &model.layers[s].weight;
            let mut next = crate::tensor::matmul(w.view(), b.view());
            for r in 0..next.rows() {
                let d = self.dact[s].get(i, r);
                for v in next.row_mut(r) {
                    *v *= d;
                }
            }
            b = next;
        }
        b
    }

    /// The logit Jacobian `F` of sample `i` (`K x P`, parameter-vector order), materialised.
    pub fn jacobian(&self, i: usize) -> Matrix<f64> {
        let k = self.classes();
        let layout = ParamLayout::new(&self.widths, self.bias);
        let mut f = Matrix::zeros(k, layout.total);
        for p in 0..self.num_layers() {
            let x = self.inputs[p].row(i);
            let gp = self.g_of(p, i);
            for row in 0..k {
                for a in 0..gp.cols() {
                    let ga = gp.get(row, a);
                    for (b, &xb) in x.iter().enumerate() {
                        f.set(row, layout.weight_index(p, a, b), ga * xb);
                    }
                    if self.bias {
                        f.set(row, layout.bias_index(p, a), ga);
                    }
                }
            }
        }
        f
    }
}

/// Where each layer's parameters sit in the parameter vector `[vec(W0), b0, vec(W1), b1, ...]`.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub widths: Vec<usize>,
    pub bias: bool,
    /// Offset of layer `p`'s first parameter.
    pub offsets: Vec<usize>,
    pub total: usize,
}

impl ParamLayout {
    pub fn new(widths: &[usize], bias: bool) -> Self {
        let mut offsets = Vec::with_capacity(widths.len());
        let mut off = 0;
        for p in 0..widths.len() - 1 {
            offsets.push(off);
            off += widths[p + 1] * widths[p] + if bias { widths[p + 1] } else { 0 };
        }
        Self {
            widths: widths.to_vec(),
            bias,
            offsets,
            total: off,
        }
    }
    pub fn of(model: &Mlp<f64>) -> Self {
        Self::new(&model.config.widths(), model.config.bias)
    }
    pub fn num_layers(&self) -> usize {
        self.offsets.len()
    }
    /// Number of parameters of layer `p`.
    pub fn layer_size(&self, p: usize) -> usize {
        self.widths[p + 1] * self.augmented_in(p)
    }
    /// Input width of layer `p` plus one when biases are present (`x~ = [x; 1]`).
    pub fn augmented_in(&self, p: usize) -> usize {
        self.widths[p] + usize::from(self.bias)
    }
    /// Index of `W(p)[a, b]`.
    pub fn weight_index(&self, p: usize, a: usize, b: usize) -> usize {
        self.offsets[p] + a * self.widths[p] + b
    }
    /// Index of `b(p)[a]`.
    pub fn bias_index(&self, p: usize, a: usize) -> usize {
        self.offsets[p] + self.widths[p + 1] * self.widths[p] + a
    }
    /// Index of the augmented weight `[W(p) | b(p)][a, b']` (`b' = n_p` is the bias).
    pub fn augmented_index(&self, p: usize, a: usize, b: usize) -> usize {
        if b < self.widths[p] {
            self.weight_index(p, a, b)
        } else {
            self.bias_index(p, a)
        }
    }
}
