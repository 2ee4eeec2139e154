//! The squared loss of an MLP against real-valued targets as an [`Objective`], its
//! exact Hessian (engine HVPs, [`HessianOperator::with_targets`]), the Hessian
//! restricted to the parameters of layers `l+1..L`, and the classification of an
//! end point by its exact smallest eigenvalue.

use crate::error::{Error, Result};
use crate::hessian::{HessianOperator, ParamLayout, Part};
use crate::linalg::{lanczos, LanczosOptions, SymOp, Which};
use crate::nn::{Activation, LossKind, Mlp, MlpConfig};
use crate::optim::{Objective, SecondOrder};
use crate::rng::Rng;
use crate::tensor::{gemm_par, Matrix, Par};
use serde::{Deserialize, Serialize};

/// `l(theta) = (1/m) sum_i ||f(x_i; theta) - y_i||^2` for a fixed architecture.
pub struct SquaredLoss<'a> {
    pub template: Mlp<f64>,
    pub x: &'a Matrix<f64>,
    pub y: &'a Matrix<f64>,
}

/// Targets for a regression problem on a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// One-hot rows of the class labels.
    Onehot,
    /// Independent standard normal entries (seeded): a control without label structure.
    Gaussian,
}

/// `m x k` targets: one-hot rows of `labels`, or seeded standard normals.
pub fn make_targets(kind: TargetKind, labels: &[usize], k: usize, seed: u64) -> Matrix<f64> {
    match kind {
        TargetKind::Onehot => {
            Matrix::from_fn(
                labels.len(),
                k,
                |i, j| {
                    if labels[i] == j {
                        1.0
                    } else {
                        0.0
                    }
                },
            )
        }
        TargetKind::Gaussian => {
            let mut rng = Rng::derived(seed, 0x7a7);
            Matrix::from_fn(labels.len(), k, |_, _| rng.normal())
        }
    }
}

impl<'a> SquaredLoss<'a> {
    pub fn new(template: Mlp<f64>, x: &'a Matrix<f64>, y: &'a Matrix<f64>) -> Result<Self> {
        if template.config.loss != LossKind::Mse {
            return Err(Error::InvalidArgument(
                "the squared loss needs an MSE model".into(),
            ));
        }
        if template.layers.iter().any(|l| l.bn.is_some()) {
            return Err(Error::Unsupported(
                "BatchNorm in the squared-loss objective".into(),
            ));
        }
        template.check_input(x)?;
        if y.rows() != x.rows() || y.cols() != template.config.classes {
            return Err(Error::Shape(format!(
                "targets are {}x{}, expected {}x{}",
                y.rows(),
                y.cols(),
                x.rows(),
                template.config.classes
            )));
        }
        Ok(Self { template, x, y })
    }

    /// The model with parameters `theta`.
    pub fn model_at(&self, theta: &[f64]) -> Mlp<f64> {
        let mut m = self.template.clone();
        m.set_param_vector(theta)
            .expect("parameter length checked by the caller");
        m
    }

    pub fn config(&self) -> &MlpConfig {
        &self.template.config
    }

    /// Loss of a model.
    pub fn loss_of(&self, model: &Mlp<f64>) -> f64 {
        let z = model.logits(self.x).expect("input width checked");
        mean_sq(&z, self.y)
    }
}

fn mean_sq(z: &Matrix<f64>, y: &Matrix<f64>) -> f64 {
    let s: f64 = z
        .as_slice()
        .iter()
        .zip(y.as_slice())
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    s / z.rows().max(1) as f64
}

/// Loss and flat gradient by backpropagation (sequential GEMMs: deterministic).
pub fn loss_and_grad(model: &Mlp<f64>, x: &Matrix<f64>, y: &Matrix<f64>) -> (f64, Vec<f64>) {
    let fwd = model
        .forward_with(x, Par::Seq)
        .expect("input width checked");
    let nl = model.num_layers();
    let m = x.rows() as f64;
    let z = fwd.logits();
    let loss = mean_sq(z, y);
    let act = model.config.activation;
    let slope = model.config.leaky_slope;
    let mut gz = z.zip_map(y, |a, b| 2.0 * (a - b) / m);
    let mut grads: Vec<Vec<f64>> = vec![Vec::new(); nl];
    for p in (0..nl).rev() {
        let w = &model.layers[p].weight;
        let mut dw = Matrix::zeros(w.rows(), w.cols());
        gemm_par(Par::Seq, 1.0, gz.t(), fwd.inputs[p].view(), 0.0, &mut dw);
        let mut gp = dw.into_vec();
        if model.layers[p].bias.is_some() {
            gp.extend_from_slice(gz.sum_rows().as_slice());
        }
        grads[p] = gp;
        if p > 0 {
            let mut below = Matrix::zeros(gz.rows(), w.cols());
            gemm_par(Par::Seq, 1.0, gz.view(), w.view(), 0.0, &mut below);
            for (b, &zv) in below
                .as_mut_slice()
                .iter_mut()
                .zip(fwd.pre[p - 1].as_slice())
            {
                *b *= act.derivative(zv, slope);
            }
            gz = below;
        }
    }
    (loss, grads.concat())
}

impl Objective for SquaredLoss<'_> {
    fn dim(&self) -> usize {
        self.template.num_params()
    }
    fn value_grad(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        loss_and_grad(&self.model_at(theta), self.x, self.y)
    }
}

impl SecondOrder for SquaredLoss<'_> {
    fn with_hessian(&self, theta: &[f64], f: &mut dyn FnMut(&dyn SymOp)) {
        let model = self.model_at(theta);
        let op = HessianOperator::with_targets(&model, self.x, self.y, Part::Full)
            .expect("shapes checked in SquaredLoss::new");
        f(&op);
    }
}

/// Parameter-vector range `[start, end)` of layers `first..L` (0-based layer index).
pub fn layer_range(config: &MlpConfig, first: usize) -> std::ops::Range<usize> {
    let layout = ParamLayout::new(&config.widths(), config.bias);
    let start = if first < layout.num_layers() {
        layout.offsets[first]
    } else {
        layout.total
    };
    start..layout.total
}

/// The Hessian restricted to a contiguous parameter range (the principal sub-block
/// `H[r, r]`), as an operator on `R^{|r|}`.
pub struct BlockOp<'o> {
    pub inner: &'o dyn SymOp,
    pub range: std::ops::Range<usize>,
}

impl SymOp for BlockOp<'_> {
    fn dim(&self) -> usize {
        self.range.len()
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        let mut full = vec![0.0; self.inner.dim()];
        full[self.range.clone()].copy_from_slice(v);
        let mut hv = vec![0.0; self.inner.dim()];
        self.inner.apply(&full, &mut hv);
        out.copy_from_slice(&hv[self.range.clone()]);
    }
}

/// An eigenvalue with its Lanczos residual `||H v - l v||` (an eigenvalue of `H`
/// lies within `residual` of `value`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CertifiedEig {
    pub value: f64,
    pub residual: f64,
    /// Estimate of `||H||` (largest |Ritz value|).
    pub norm: f64,
    pub converged: bool,
}

/// Smallest (algebraic) eigenvalue of `op` with its residual.
pub fn smallest_eig(op: &dyn SymOp, max_iter: usize, seed: u64) -> Result<CertifiedEig> {
    let opts = LanczosOptions {
        max_iter: max_iter.min(op.dim()).max(1),
        tol: 1e-9,
        seed,
        check_every: 10,
    };
    let r = lanczos(op, Which::Smallest(1), &opts)?;
    Ok(CertifiedEig {
        value: r.values[0],
        residual: r.residuals[0],
        norm: r.norm_estimate,
        converged: r.converged,
    })
}

/// What an end point is, from its loss, stopping reason and smallest Hessian eigenvalue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Loss below the zero threshold: a global minimum (the infimum 0 is attained).
    Global,
    /// Loss above the threshold, the smallest eigenvalue certified negative.
    Saddle,
    /// Loss above the threshold, smallest eigenvalue certified positive: a strict
    /// local minimum that is not global.
    BadStrictMin,
    /// Loss above the threshold, smallest eigenvalue zero within its residual and
    /// tolerance: a degenerate critical point (possibly a non-strict bad minimum).
    Degenerate,
    /// The optimiser hit its iteration cap: still descending, not classified.
    StillDescending,
}

/// Classifies with `tol_rel` the relative zero tolerance on eigenvalues (`|l| <=
/// residual + tol_rel ||H||` counts as zero).
pub fn classify(
    loss: f64,
    eps: f64,
    converged: bool,
    eig: Option<CertifiedEig>,
    tol_rel: f64,
) -> EndpointKind {
    if loss <= eps {
        return EndpointKind::Global;
    }
    if !converged {
        return EndpointKind::StillDescending;
    }
    match eig {
        None => EndpointKind::Degenerate,
        Some(e) => {
            let zero = e.residual + tol_rel * e.norm;
            if e.value < -zero {
                EndpointKind::Saddle
            } else if e.value > zero {
                EndpointKind::BadStrictMin
            } else {
                EndpointKind::Degenerate
            }
        }
    }
}

/// Units of each hidden layer that are saturated: `act'(z) < 0.01 act'_max` on every
/// sample (tanh, sigmoid: flat tails; softplus, ReLU: the flat left side, for ReLU a
/// dead unit), and the fraction of (sample, unit) entries that are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saturation {
    pub saturated_units: Vec<usize>,
    pub saturated_fraction: Vec<f64>,
}

pub fn saturation(model: &Mlp<f64>, x: &Matrix<f64>) -> Saturation {
    let fwd = model
        .forward_with(x, Par::Seq)
        .expect("input width checked");
    let act = model.config.activation;
    let slope = model.config.leaky_slope;
    let dmax = match act {
        Activation::Sigmoid => 0.25,
        _ => 1.0,
    };
    let nl = model.num_layers();
    let mut units = Vec::new();
    let mut frac = Vec::new();
    for z in &fwd.pre[..nl - 1] {
        let (m, n) = (z.rows(), z.cols());
        let mut count = 0;
        let mut entries = 0usize;
        for j in 0..n {
            let mut all = true;
            for i in 0..m {
                let sat = act.derivative(z.get(i, j), slope) < 0.01 * dmax;
                entries += sat as usize;
                all &= sat;
            }
            count += all as usize;
        }
        units.push(count);
        frac.push(entries as f64 / (m * n).max(1) as f64);
    }
    Saturation {
        saturated_units: units,
        saturated_fraction: frac,
    }
}

/// Euclidean norm of the parameter vector.
pub fn param_norm(theta: &[f64]) -> f64 {
    theta.iter().map(|v| v * v).sum::<f64>().sqrt()
}
