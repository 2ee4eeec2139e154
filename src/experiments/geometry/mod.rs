//! Loss-landscape geometry: directions, 1-D/2-D evaluations, curvature maps and
//! mode-connecting curves (Li et al. 2018; Garipov et al. 2018), for every
//! architecture.
//!
//! * This module: the primitives (normalisation of MLP directions, the MLP plane
//!   evaluator, grids, PCA of a trajectory, curves, curvature of an MLP, the plane
//!   through three points).
//! * [`network`]: the same for any [`crate::nn::Network`] — [`GeoModel`] is the one
//!   place the analytic MLP fast path is chosen; other networks run on the tape in a
//!   stated BatchNorm mode, with BatchNorm statistics stored, interpolated or
//!   recomputed at every point.
//! * [`run`]: the experiments behind `landscape line`, `surface` and `connect` as
//!   library functions with typed configurations ([`LineConfig`], [`SurfaceConfig`],
//!   [`ConnectConfig`], [`DirectionSpec`]) returning result structs; the CLI only
//!   parses arguments and writes files.
//!
//! Parameter vectors are in the engine's order: the trainable tensors in state-dict
//! order, each flattened row-major (an MLP's `[vec(W0), b0, vec(W1), b1, ...]`).
//! A point of a plane is `theta(c) = theta0 + sum_j c_j d_j`.
//!
//! * **Filter normalisation** (Li et al.): every row `a` of every weight matrix of a
//!   direction is rescaled to the norm of the same row of the model,
//!   `d_W(p)[a, :] <- d_W(p)[a, :] ||W(p)[a, :]|| / ||d_W(p)[a, :]||`. A convolution's
//!   weight is the `out x (in k k)` matrix, so a row is one output filter; a linear
//!   layer's row is one output unit. Bias and BatchNorm entries are set to zero
//!   ("ignored") unless kept, when each such vector is rescaled to the norm of the
//!   model's. **Layer normalisation** rescales each weight tensor to the Frobenius
//!   norm of the model's; **none** leaves the direction as drawn.
//! * MLP evaluations precompute the first layer's products `X W0^T` and `X D_j^T` once,
//!   so a grid point costs only the later layers (the first layer dominates for image
//!   inputs).

pub mod network;
pub mod run;

pub use network::*;
pub use run::*;

use crate::error::{Error, Result};
use crate::hessian::structure::ParamLayout;
use crate::nn::Mlp;
use crate::rng::Rng;
use crate::tensor::{gemm, Matrix};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How a random direction is scaled to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    Filter,
    Layer,
    None,
}

/// What a random direction does on the bias and BatchNorm (`gamma`, `beta`)
/// parameters, the one-dimensional tensors (loss-landscape's `--xignore`).
///
/// * `Zero` (`--xignore biasbn`, the default as in Li et al.): `d_b = 0`, so the
///   plane moves the weights only;
/// * `Copy` (`--xignore none` / `--biasbn`: loss-landscape's behaviour when the
///   bias/BN parameters are not ignored): `d_b = w_b`, the model's own entries
///   (each scalar parameter is its own "filter", so this is filter normalisation of a
///   one-entry filter up to sign), whatever the normalisation;
/// * `Normalise` (`--keep-bias`): the Gaussian entries kept and each vector rescaled
///   to the norm of the model's (`d_b |w_b| / |d_b|`) for `Filter` and `Layer`,
///   left as drawn for `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BiasBn {
    #[default]
    Zero,
    Copy,
    Normalise,
}

impl BiasBn {
    /// `keep_bias = true` is `Normalise`, `false` is `Zero`.
    pub fn from_keep_bias(keep_bias: bool) -> Self {
        if keep_bias {
            Self::Normalise
        } else {
            Self::Zero
        }
    }

    /// Sets the direction block `d` of one bias or BatchNorm vector `w`.
    pub(crate) fn apply(self, d: &mut [f64], w: &[f64], norm_kind: Normalization) {
        match self {
            Self::Zero => d.iter_mut().for_each(|v| *v = 0.0),
            Self::Copy => d.copy_from_slice(w),
            Self::Normalise if norm_kind != Normalization::None => {
                let cur = norm(d);
                let s = if cur > 0.0 { norm(w) / cur } else { 0.0 };
                d.iter_mut().for_each(|v| *v *= s);
            }
            Self::Normalise => {}
        }
    }
}

pub(crate) fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Rescales `d` in place by `norm_kind` relative to `model` (see the module docs);
/// `keep_bias = false` zeroes the bias entries, `true` rescales them
/// ([`BiasBn::Normalise`]).
pub fn normalize_direction(
    model: &Mlp<f64>,
    d: &mut [f64],
    norm_kind: Normalization,
    keep_bias: bool,
) -> Result<()> {
    normalize_direction_with(model, d, norm_kind, BiasBn::from_keep_bias(keep_bias))
}

/// [`normalize_direction`] with the bias entries set by `bias_bn`.
pub fn normalize_direction_with(
    model: &Mlp<f64>,
    d: &mut [f64],
    norm_kind: Normalization,
    bias_bn: BiasBn,
) -> Result<()> {
    let lay = ParamLayout::of(model);
    if d.len() != lay.total {
        return Err(Error::Shape(format!(
            "direction of length {} for a model with {} parameters",
            d.len(),
            lay.total
        )));
    }
    for (p, layer) in model.layers.iter().enumerate() {
        let (dout, n) = (lay.widths[p + 1], lay.widths[p]);
        let o = lay.offsets[p];
        match norm_kind {
            Normalization::Filter => {
                for a in 0..dout {
                    let row = &mut d[o + a * n..o + (a + 1) * n];
                    let target = norm(layer.weight.row(a));
                    let cur = norm(row);
                    let s = if cur > 0.0 { target / cur } else { 0.0 };
                    row.iter_mut().for_each(|v| *v *= s);
                }
            }
            Normalization::Layer => {
                let block = &mut d[o..o + dout * n];
                let cur = norm(block);
                let s = if cur > 0.0 {
                    layer.weight.frobenius_norm() / cur
                } else {
                    0.0
                };
                block.iter_mut().for_each(|v| *v *= s);
            }
            Normalization::None => {}
        }
        if let Some(b) = &layer.bias {
            let bd = &mut d[o + dout * n..o + dout * n + dout];
            bias_bn.apply(bd, b.as_slice(), norm_kind);
        }
    }
    Ok(())
}

/// A Gaussian direction (seeded), normalised by `norm_kind`.
pub fn random_direction(
    model: &Mlp<f64>,
    norm_kind: Normalization,
    keep_bias: bool,
    seed: u64,
) -> Result<Vec<f64>> {
    random_direction_with(model, norm_kind, BiasBn::from_keep_bias(keep_bias), seed)
}

/// [`random_direction`] with the bias entries set by `bias_bn`.
pub fn random_direction_with(
    model: &Mlp<f64>,
    norm_kind: Normalization,
    bias_bn: BiasBn,
    seed: u64,
) -> Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut d: Vec<f64> = (0..model.num_params()).map(|_| rng.normal()).collect();
    normalize_direction_with(model, &mut d, norm_kind, bias_bn)?;
    Ok(d)
}

/// `theta0 + sum_j c_j d_j`.
pub fn point(theta0: &[f64], dirs: &[Vec<f64>], c: &[f64]) -> Vec<f64> {
    let mut t = theta0.to_vec();
    for (d, &cj) in dirs.iter().zip(c) {
        for (x, &v) in t.iter_mut().zip(d) {
            *x += cj * v;
        }
    }
    t
}

/// Mean loss and error rate of a model at points `theta0 + sum_j c_j d_j` over fixed data.
pub struct PlaneEvaluator<'a> {
    model: &'a Mlp<f64>,
    theta0: Vec<f64>,
    dirs: Vec<Vec<f64>>,
    labels: &'a [usize],
    /// `X W0^T + b0` and `X D_j^T + db_j` (first layer, `m x d_0`).
    first: Vec<Matrix<f64>>,
}

impl<'a> PlaneEvaluator<'a> {
    pub fn new(
        model: &'a Mlp<f64>,
        dirs: Vec<Vec<f64>>,
        x: &Matrix<f64>,
        labels: &'a [usize],
    ) -> Result<Self> {
        crate::hessian::structure::check_model(model)?;
        crate::hessian::structure::check_samples(model, x, labels)?;
        let lay = ParamLayout::of(model);
        for d in &dirs {
            if d.len() != lay.total {
                return Err(Error::Shape(format!(
                    "direction of length {} for a model with {} parameters",
                    d.len(),
                    lay.total
                )));
            }
            if !d.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFiniteInput(
                    "direction contains NaN or Inf".into(),
                ));
            }
        }
        let theta0 = model.param_vector();
        let (d0, n0) = (lay.widths[1], lay.widths[0]);
        let first_of = |v: &[f64]| {
            let w = Matrix::from_vec(d0, n0, v[..d0 * n0].to_vec());
            let mut z = Matrix::zeros(x.rows(), d0);
            gemm(1.0, x.view(), w.t(), 0.0, &mut z);
            if lay.bias {
                let b = &v[d0 * n0..d0 * n0 + d0];
                for i in 0..x.rows() {
                    for (t, &bv) in z.row_mut(i).iter_mut().zip(b) {
                        *t += bv;
                    }
                }
            }
            z
        };
        let mut first = vec![first_of(&theta0)];
        first.extend(dirs.iter().map(|d| first_of(d)));
        Ok(Self {
            model,
            theta0,
            dirs,
            labels,
            first,
        })
    }

    pub fn theta0(&self) -> &[f64] {
        &self.theta0
    }

    /// `(mean loss, error rate)` at coordinates `c` (one per direction).
    pub fn eval(&self, c: &[f64]) -> Result<(f64, f64)> {
        if c.len() != self.dirs.len() || !c.iter().all(|v| v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "{} finite coordinates needed, got {:?}",
                self.dirs.len(),
                c
            )));
        }
        let mut m = self.model.clone();
        m.set_param_vector(&point(&self.theta0, &self.dirs, c))?;
        let mut z = self.first[0].clone();
        for (f, &cj) in self.first[1..].iter().zip(c) {
            z.axpy(cj, f);
        }
        let nl = m.num_layers();
        let act = m.config.activation;
        let slope = m.config.leaky_slope;
        for layer in &m.layers[1..] {
            let h = z.map(|t| act.apply(t, slope));
            let mut next = Matrix::zeros(h.rows(), layer.weight.rows());
            gemm(1.0, h.view(), layer.weight.t(), 0.0, &mut next);
            if let Some(b) = &layer.bias {
                for i in 0..next.rows() {
                    for (t, &bv) in next.row_mut(i).iter_mut().zip(b.as_slice()) {
                        *t += bv;
                    }
                }
            }
            z = next;
        }
        debug_assert_eq!(nl, m.layers.len());
        let losses = m.config.loss.per_sample(&z, self.labels);
        let loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let wrong = (0..z.rows())
            .filter(|&i| {
                let row = z.row(i);
                let arg = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
                arg != self.labels[i]
            })
            .count();
        Ok((loss, wrong as f64 / z.rows() as f64))
    }

    /// [`PlaneEvaluator::eval`] at many points, in parallel over points, results in order;
    /// `tick` is called once per finished point.
    pub fn eval_many(
        &self,
        points: &[Vec<f64>],
        tick: impl Fn() + Sync,
    ) -> Result<Vec<(f64, f64)>> {
        points
            .par_iter()
            .map(|c| {
                let r = self.eval(c);
                tick();
                r
            })
            .collect()
    }
}

/// `lo:hi:n`: `n` evenly spaced values from `lo` to `hi`, `lo < hi` and `n >= 2`, or the
/// single value `lo:lo:1` (e.g. curvature at the model only).
pub fn parse_range(s: &str) -> Result<Vec<f64>> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || {
        Error::InvalidArgument(format!(
            "range '{s}' must be LO:HI:N with LO < HI and N >= 2 (e.g. -1:1:51), or X:X:1"
        ))
    };
    if parts.len() != 3 {
        return Err(bad());
    }
    let lo: f64 = parts[0].trim().parse().map_err(|_| bad())?;
    let hi: f64 = parts[1].trim().parse().map_err(|_| bad())?;
    let n: usize = parts[2].trim().parse().map_err(|_| bad())?;
    if !(lo.is_finite() && hi.is_finite()) || n > 100_000 {
        return Err(bad());
    }
    if n == 1 && lo == hi {
        return Ok(vec![lo]);
    }
    if n < 2 || lo >= hi {
        return Err(bad());
    }
    Ok((0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect())
}

/// `XRANGE x YRANGE`, e.g. `-1:1:51x-1:1:51`.
pub fn parse_grid(s: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let (a, b) = s.split_once('x').ok_or_else(|| {
        Error::InvalidArgument(format!(
            "grid '{s}' must be XRANGE x YRANGE, e.g. -1:1:51x-1:1:51"
        ))
    })?;
    let (x, y) = (parse_range(a)?, parse_range(b)?);
    if x.len() * y.len() > 4_000_000 {
        return Err(Error::InvalidArgument(format!(
            "grid '{s}' has {} points; at most 4,000,000 are evaluated in one run",
            x.len() * y.len()
        )));
    }
    Ok((x, y))
}

/// The top principal directions of a trajectory `thetas` (Li et al.): rows
/// `theta_i - center`, centred by their mean as PCA does (the loss-landscape code fits
/// scikit-learn's `PCA`, which centres), principal axes from the eigenvectors of the
/// centred Gram matrix. Returns the unit directions and their explained-variance ratios
/// (eigenvalue over the total centred variance). The plot plane still passes through
/// `center`; `count` components need at least `count + 1` checkpoints.
pub fn pca_directions(
    thetas: &[Vec<f64>],
    center: &[f64],
    count: usize,
) -> Result<(Vec<Vec<f64>>, Vec<f64>)> {
    let n = thetas.len();
    if n < count + 1 || count == 0 {
        return Err(Error::InvalidArgument(format!(
            "PCA of a trajectory needs at least {} checkpoints for {count} component(s), got {n}",
            count + 1
        )));
    }
    let mut diffs: Vec<Vec<f64>> = thetas
        .iter()
        .map(|t| {
            if t.len() != center.len() {
                return Err(Error::Shape(
                    "trajectory checkpoints of another architecture".into(),
                ));
            }
            Ok(t.iter().zip(center).map(|(a, b)| a - b).collect())
        })
        .collect::<Result<_>>()?;
    let mut mean = vec![0.0; center.len()];
    for d in &diffs {
        for (m, &v) in mean.iter_mut().zip(d) {
            *m += v;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    for d in &mut diffs {
        for (v, &m) in d.iter_mut().zip(&mean) {
            *v -= m;
        }
    }
    let gram = Matrix::from_fn(n, n, |i, j| crate::tensor::dot(&diffs[i], &diffs[j]));
    let total: f64 = (0..n).map(|i| gram.get(i, i)).sum();
    if total <= 0.0 {
        return Err(Error::InvalidArgument(
            "the trajectory does not move: PCA directions are undefined".into(),
        ));
    }
    let dense = crate::linalg::DenseSym(&gram);
    let r = crate::linalg::lanczos(
        &dense,
        crate::linalg::Which::Largest(count),
        &crate::linalg::LanczosOptions {
            max_iter: n,
            tol: 1e-12,
            seed: 0,
            check_every: 1,
        },
    )?;
    let mut dirs = Vec::new();
    let mut explained = Vec::new();
    for (val, vec) in r.values.iter().zip(&r.vectors) {
        let mut d = vec![0.0; center.len()];
        for (coef, diff) in vec.iter().zip(&diffs) {
            for (o, &v) in d.iter_mut().zip(diff) {
                *o += coef * v;
            }
        }
        let nd = norm(&d);
        if nd == 0.0 || *val <= 1e-14 * total {
            return Err(Error::InvalidArgument(format!(
                "the trajectory spans fewer than {count} directions: PCA component {} is undefined",
                dirs.len() + 1
            )));
        }
        d.iter_mut().for_each(|v| *v /= nd);
        dirs.push(d);
        explained.push(val / total);
    }
    Ok((dirs, explained))
}

/// Curves between two models (Garipov et al.): `phi(t)` with ends `a` (t = 0) and `b`
/// (t = 1) and a trainable bend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CurveKind {
    /// `(1 - t) a + t b`.
    Linear,
    /// Quadratic Bezier `(1-t)^2 a + 2 t (1-t) bend + t^2 b`.
    Bezier,
    /// Polygonal chain `a -> bend -> b`, the bend at `t = 1/2`.
    Polychain,
}

/// `(w_a, w_bend, w_b)` with `phi(t) = w_a a + w_bend bend + w_b b`.
pub fn curve_weights(kind: CurveKind, t: f64) -> (f64, f64, f64) {
    match kind {
        CurveKind::Linear => (1.0 - t, 0.0, t),
        CurveKind::Bezier => ((1.0 - t).powi(2), 2.0 * t * (1.0 - t), t * t),
        CurveKind::Polychain => {
            if t <= 0.5 {
                (1.0 - 2.0 * t, 2.0 * t, 0.0)
            } else {
                (0.0, 2.0 - 2.0 * t, 2.0 * t - 1.0)
            }
        }
    }
}

/// `phi(t)` of the curve.
pub fn curve_point(kind: CurveKind, a: &[f64], bend: &[f64], b: &[f64], t: f64) -> Vec<f64> {
    let (wa, wm, wb) = curve_weights(kind, t);
    a.iter()
        .zip(bend)
        .zip(b)
        .map(|((x, m), y)| wa * x + wm * m + wb * y)
        .collect()
}

/// Settings of [`train_bend`].
#[derive(Clone, Debug, Serialize)]
pub struct BendTraining {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Trains the bend of a Bezier or polychain curve with ends fixed (Garipov et al.):
/// each minibatch draws `t ~ U(0, 1)` (seeded) and takes an Adam step on
/// `L_batch(phi(t))` with respect to the bend, `dL/dbend = w_bend(t) grad L(phi(t))`.
/// Starts from the midpoint `(a + b) / 2`. Returns the bend and the mean minibatch loss
/// of each epoch.
#[allow(clippy::too_many_arguments)]
pub fn train_bend(
    model: &Mlp<f64>,
    kind: CurveKind,
    a: &[f64],
    b: &[f64],
    x: &Matrix<f64>,
    labels: &[usize],
    cfg: &BendTraining,
    on_step: impl FnMut(),
) -> Result<(Vec<f64>, Vec<f64>)> {
    let geo = GeoModel::new(
        crate::nn::Network::from_mlp(model),
        crate::hessian::network::BnMode::Eval,
    )?;
    train_bend_geo(&geo, kind, a, b, x, labels, cfg, on_step)
}

/// Exact curvature of the mean loss at one point.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct CurvaturePoint {
    pub lambda_max: f64,
    pub lambda_min: f64,
    /// `|lambda_min / lambda_max|` (Li et al.'s figure 7 map).
    pub ratio: f64,
    pub trace: f64,
    /// 95% interval when the trace is estimated (Hutch++), `None` when exact.
    pub trace_ci: Option<(f64, f64)>,
    /// Lanczos residuals `||Hv - lv||` of the two extreme Ritz pairs (0 for dense).
    pub residual_max: f64,
    pub residual_min: f64,
    /// `dense` (full eigendecomposition) or `lanczos`.
    pub method: String,
}

/// Extreme eigenvalues and trace of the full Hessian of the mean loss of `model` over
/// `(x, labels)`: dense eigendecomposition when `P <= dense_limit`, else Lanczos at both
/// ends (with residuals) and the exact trace `tr(GN)` for piecewise-linear activations
/// (the H-term is traceless there) or Hutch++ (`probes` products, 95% interval) otherwise.
pub fn curvature_at(
    model: &Mlp<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    dense_limit: usize,
    tol: f64,
    probes: usize,
    seed: u64,
) -> Result<CurvaturePoint> {
    use crate::hessian::{dense_hessian, HessianOperator, Part};
    let p = model.num_params();
    if p <= dense_limit {
        let h = dense_hessian(model, x, labels, Part::Full, usize::MAX)?;
        let ev = crate::hessian::small_eig::sym_eigenvalues(&h);
        let (lo, hi) = (ev[0], ev[ev.len() - 1]);
        return Ok(CurvaturePoint {
            lambda_max: hi,
            lambda_min: lo,
            ratio: (lo / hi).abs(),
            trace: (0..p).map(|i| h.get(i, i)).sum(),
            trace_ci: None,
            residual_max: 0.0,
            residual_min: 0.0,
            method: "dense".into(),
        });
    }
    let op = HessianOperator::new(model, x, labels, Part::Full)?;
    let r = crate::linalg::lanczos(
        &op,
        crate::linalg::Which::BothEnds {
            largest: 1,
            smallest: 1,
        },
        &crate::linalg::LanczosOptions {
            max_iter: p.min(300),
            tol,
            seed,
            check_every: 5,
        },
    )?;
    let (hi, lo) = (r.values[0], r.values[1]);
    let (trace, trace_ci) = if model.config.activation.is_piecewise_linear() {
        (crate::hessian::gn_norm::gn_trace(model, x, labels)?, None)
    } else {
        let t = crate::linalg::hutch_pp(&op, probes.max(3), seed)?;
        (t.estimate, Some(t.ci95))
    };
    Ok(CurvaturePoint {
        lambda_max: hi,
        lambda_min: lo,
        ratio: (lo / hi).abs(),
        trace,
        trace_ci,
        residual_max: r.residuals[0],
        residual_min: r.residuals[1],
        method: "lanczos".into(),
    })
}

/// Orthonormal basis `(u, v)` of the plane through `a`, `b` and `bend`
/// (`u` along `b - a`), and the plane coordinates of the three points (`a` at the origin).
#[allow(clippy::type_complexity)]
pub fn plane_basis(
    a: &[f64],
    b: &[f64],
    bend: &[f64],
) -> Result<(Vec<f64>, Vec<f64>, [(f64, f64); 3])> {
    let ab: Vec<f64> = b.iter().zip(a).map(|(x, y)| x - y).collect();
    let nab = norm(&ab);
    if nab == 0.0 {
        return Err(Error::InvalidArgument("the two ends coincide".into()));
    }
    let u: Vec<f64> = ab.iter().map(|v| v / nab).collect();
    let am: Vec<f64> = bend.iter().zip(a).map(|(x, y)| x - y).collect();
    let along = crate::tensor::dot(&am, &u);
    let mut v: Vec<f64> = am.iter().zip(&u).map(|(x, y)| x - along * y).collect();
    let nv = norm(&v);
    if nv > 0.0 {
        v.iter_mut().for_each(|x| *x /= nv);
    }
    Ok((u, v, [(0.0, 0.0), (nab, 0.0), (along, nv)]))
}
