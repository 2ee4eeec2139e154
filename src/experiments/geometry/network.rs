//! Geometry of any [`Network`]: filter normalisation per output filter, the one
//! place the analytic MLP fast path is chosen ([`GeoModel`]), loss and error at
//! the points of a plane in a stated BatchNorm mode, BatchNorm statistics away
//! from the model ([`PointStats`]), curvature and curve training.
//!
//! # BatchNorm (DESIGN.md section 11)
//!
//! * `BnMode::Eval`: BatchNorm normalises with running statistics; the loss is the
//!   mean of the per-sample losses. The running statistics of a point other than the
//!   model are a choice, stated in every result ([`BnReport`]): the model's own at every
//!   point ([`PointStats::Stored`], as Li et al. evaluate their surfaces), interpolated
//!   between two models' ([`PointStats::Interpolated`], a line between two files, so that
//!   both ends are the files themselves), or recomputed at every point by one pass over
//!   the training samples in train mode ([`PointStats::Recompute`], as Garipov et al. and
//!   the sphere paper do for curves between models; see [`recompute_bn_stats`]).
//! * `BnMode::Train { batch }`: the samples form fixed consecutive batches of `batch`
//!   (a last partial batch needs at least 2 samples), each normalised by its own
//!   statistics; the loss is the mean of the batch losses and the error counts the
//!   train-mode predictions. No running statistics are used.

use super::{
    curvature_at, curve_point, curve_weights, norm, point, BendTraining, BiasBn, CurvaturePoint,
    CurveKind, Normalization, PlaneEvaluator,
};
use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::hessian::network::{BnMode, NetObjective};
use crate::io::checkpoint::{path_in, test_point, CheckpointError, Decoder, Encoder, Session};
use crate::linalg::{hutch_pp, lanczos, LanczosOptions, LanczosResult, SymOp, Which};
use crate::nn::arch::ParamRole;
use crate::nn::{BnState, Mlp, Mode, Network};
use crate::rng::Rng;
use crate::tensor::{sample_blocks, Matrix};
use rayon::prelude::*;
use serde::Serialize;

/// Samples per chunk when a network is evaluated in eval mode (fixed, so sums do
/// not depend on the thread count).
const EVAL_CHUNK: usize = 64;

/// Rescales a direction of any network in place (see the module docs of
/// [`super`]): per output filter for `Filter` (a row of a convolution's
/// `out x (in k k)` weight matrix, or of a linear weight), per weight tensor for
/// `Layer`. Bias and BatchNorm (`gamma`, `beta`) entries are zeroed, as Li et al.
/// ignore them, unless `keep_bias`; then each such vector is rescaled to the norm of
/// the model's (for `Filter` and `Layer`). For an MLP this is exactly
/// [`super::normalize_direction`].
pub fn normalize_network_direction(
    net: &Network<f64>,
    d: &mut [f64],
    norm_kind: Normalization,
    keep_bias: bool,
) -> Result<()> {
    normalize_network_direction_with(net, d, norm_kind, BiasBn::from_keep_bias(keep_bias))
}

/// [`normalize_network_direction`] with the bias and BatchNorm entries set by
/// `bias_bn` ([`BiasBn`]: zero, the model's own values, or rescaled).
pub fn normalize_network_direction_with(
    net: &Network<f64>,
    d: &mut [f64],
    norm_kind: Normalization,
    bias_bn: BiasBn,
) -> Result<()> {
    if d.len() != net.num_params() {
        return Err(Error::Shape(format!(
            "direction of length {} for a model with {} parameters",
            d.len(),
            net.num_params()
        )));
    }
    let lay = net.layout();
    let mut off = 0;
    for (w, role) in net.params.iter().zip(&lay.param_roles) {
        let block = &mut d[off..off + w.len()];
        off += w.len();
        let rescale = |block: &mut [f64], target: f64| {
            let cur = norm(block);
            let s = if cur > 0.0 { target / cur } else { 0.0 };
            block.iter_mut().for_each(|v| *v *= s);
        };
        match role {
            ParamRole::LinearWeight | ParamRole::ConvWeight => match norm_kind {
                Normalization::Filter => {
                    for (a, row) in block.chunks_mut(w.cols()).enumerate() {
                        rescale(row, norm(w.row(a)));
                    }
                }
                Normalization::Layer => rescale(block, w.frobenius_norm()),
                Normalization::None => {}
            },
            ParamRole::Bias | ParamRole::BnWeight | ParamRole::BnBias => {
                bias_bn.apply(block, w.as_slice(), norm_kind)
            }
        }
    }
    Ok(())
}

/// A seeded Gaussian direction (one `N(0, 1)` draw per parameter, in parameter
/// order), normalised by [`normalize_network_direction`]. For an MLP it equals
/// [`super::random_direction`].
pub fn random_network_direction(
    net: &Network<f64>,
    norm_kind: Normalization,
    keep_bias: bool,
    seed: u64,
) -> Result<Vec<f64>> {
    random_network_direction_with(net, norm_kind, BiasBn::from_keep_bias(keep_bias), seed)
}

/// [`random_network_direction`] with the bias and BatchNorm entries set by `bias_bn`.
pub fn random_network_direction_with(
    net: &Network<f64>,
    norm_kind: Normalization,
    bias_bn: BiasBn,
    seed: u64,
) -> Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let mut d: Vec<f64> = (0..net.num_params()).map(|_| rng.normal()).collect();
    normalize_network_direction_with(net, &mut d, norm_kind, bias_bn)?;
    Ok(d)
}

/// Which running statistics BatchNorm uses at points away from the model in eval
/// mode (a setting of the experiments; [`PointStats`] is its resolved form).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "statistics", rename_all = "snake_case")]
pub enum BnStats {
    /// The model file's running statistics at every point (Li et al.); a line towards
    /// another model interpolates between the two files' statistics.
    Stored,
    /// Recomputed at every point from the training samples, in consecutive batches
    /// of `batch` (see [`recompute_bn_stats`]).
    Recompute { batch: usize },
}

/// How the BatchNorm buffers of a point are set (eval mode, networks with BatchNorm;
/// ignored otherwise).
#[derive(Clone, Copy)]
pub enum PointStats<'a> {
    /// The model's running statistics.
    Stored,
    /// `(1 - s) model + s other`, with `s` the first plane coordinate clamped to
    /// `[0, 1]` (so a line `model + alpha (other - model)` has the two files' statistics
    /// at `alpha = 0` and `1`, and a variance stays positive beyond the ends).
    Interpolated(&'a [BnState<f64>]),
    /// Recomputed at every point by [`recompute_bn_stats`] over these samples.
    Recompute { x: &'a Matrix<f64>, batch: usize },
}

impl PointStats<'_> {
    /// Sets the BatchNorm buffers of `net` (the point with plane coordinates `c`).
    pub fn apply(&self, net: &mut Network<f64>, c: &[f64]) -> Result<()> {
        match *self {
            PointStats::Stored => Ok(()),
            PointStats::Interpolated(other) => {
                if other.len() != net.bn.len() {
                    return Err(Error::Shape(
                        "BatchNorm buffers of another architecture".into(),
                    ));
                }
                let s = c.first().copied().unwrap_or(0.0).clamp(0.0, 1.0);
                for (b, o) in net.bn.iter_mut().zip(other) {
                    let mix = |m: &mut Matrix<f64>, o: &Matrix<f64>| {
                        for (v, &w) in m.as_mut_slice().iter_mut().zip(o.as_slice()) {
                            *v = (1.0 - s) * *v + s * w;
                        }
                    };
                    mix(&mut b.running_mean, &o.running_mean);
                    mix(&mut b.running_var, &o.running_var);
                }
                Ok(())
            }
            PointStats::Recompute { x, batch } => recompute_bn_stats(net, x, batch).map(|_| ()),
        }
    }
}

/// Recomputes the running statistics of every BatchNorm layer by one pass over `x`
/// in train mode: consecutive batches of `batch` samples (a last batch of one
/// sample is left out, its variance is undefined), each normalised by its own
/// statistics as in training; the running mean is the average over the batches of
/// the batch means and the running variance the average of the unbiased batch
/// variances. This is PyTorch's `torch.optim.swa_utils.update_bn` (running
/// statistics reset, `momentum = None`, a cumulative average over batches) on an
/// unshuffled loader; `num_batches_tracked` becomes the number of batches.
/// Returns the number of batches (0 for a network without BatchNorm, untouched).
pub fn recompute_bn_stats(net: &mut Network<f64>, x: &Matrix<f64>, batch: usize) -> Result<usize> {
    if net.bn.is_empty() {
        return Ok(0);
    }
    net.check_input(x)?;
    if batch < 2 {
        return Err(Error::InvalidArgument(
            "the BatchNorm batch size must be at least 2".into(),
        ));
    }
    let chunks: Vec<_> = sample_blocks(x.rows(), batch)
        .into_iter()
        .filter(|r| r.len() >= 2)
        .collect();
    if chunks.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "recomputing BatchNorm statistics needs at least 2 samples, got {}",
            x.rows()
        )));
    }
    let per_batch: Vec<Vec<Option<crate::nn::BatchStats<f64>>>> = chunks
        .par_iter()
        .map(|r| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let tape = Tape::new();
            let p: Vec<Var<f64>> = net
                .params
                .iter()
                .map(|m| tape.constant(m.clone()))
                .collect();
            net.forward_tape(&p, &xb, Mode::Train).batch_stats
        })
        .collect();
    let nb = chunks.len() as f64;
    for (l, b) in net.bn.iter_mut().enumerate() {
        let c = b.running_mean.cols();
        let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
        for stats in &per_batch {
            let s = stats[l].as_ref().ok_or_else(|| {
                Error::Shape("a BatchNorm layer reported no batch statistics".into())
            })?;
            let unbias = s.count as f64 / (s.count as f64 - 1.0).max(1.0);
            for (m, &v) in mean.iter_mut().zip(s.mean.as_slice()) {
                *m += v;
            }
            for (m, &v) in var.iter_mut().zip(s.var.as_slice()) {
                *m += v * unbias;
            }
        }
        b.running_mean = Matrix::row_vector(mean.iter().map(|m| m / nb).collect());
        b.running_var = Matrix::row_vector(var.iter().map(|v| v / nb).collect());
        b.num_batches_tracked = chunks.len() as u64;
    }
    Ok(chunks.len())
}

/// Mean loss and error rate of `net` over `(x, labels)` in a BatchNorm mode (see the
/// module docs), in fixed chunks evaluated in parallel and summed in order.
pub fn loss_and_error(
    net: &Network<f64>,
    x: &Matrix<f64>,
    labels: &[usize],
    mode: BnMode,
) -> Result<(f64, f64)> {
    // Validates the data, the labels and the BatchNorm batches.
    NetObjective::new(net, x, labels, mode)?;
    let n = labels.len();
    let (chunks, tape_mode) = match mode {
        BnMode::Eval => (sample_blocks(n, EVAL_CHUNK), Mode::Eval),
        BnMode::Train { batch } => (sample_blocks(n, batch), Mode::Train),
    };
    let parts: Vec<(f64, usize)> = chunks
        .par_iter()
        .map(|r| {
            let xb = x.rows_view(r.start, r.end).to_owned();
            let yb = &labels[r.clone()];
            let tape = Tape::new();
            let p: Vec<Var<f64>> = net
                .params
                .iter()
                .map(|m| tape.constant(m.clone()))
                .collect();
            let z = net.forward_tape(&p, &xb, tape_mode).logits.value().clone();
            let loss: f64 = net.arch.loss.per_sample(&z, yb).iter().sum();
            let wrong = crate::nn::loss::argmax_rows(&z)
                .iter()
                .zip(yb)
                .filter(|(p, y)| p != y)
                .count();
            (loss, wrong)
        })
        .collect();
    let wrong: usize = parts.iter().map(|p| p.1).sum();
    let loss = match mode {
        BnMode::Eval => parts.iter().map(|p| p.0).sum::<f64>() / n as f64,
        BnMode::Train { .. } => {
            parts
                .iter()
                .zip(&chunks)
                .map(|(p, r)| p.0 / r.len() as f64)
                .sum::<f64>()
                / chunks.len() as f64
        }
    };
    Ok((loss, wrong as f64 / n as f64))
}

/// What the BatchNorm layers did in an experiment, for its results.
#[derive(Clone, Debug, Serialize)]
pub struct BnReport {
    pub bn_mode: BnMode,
    /// The running statistics used (eval mode) or the batches (train mode), in words.
    pub bn_statistics: String,
}

impl BnReport {
    /// The report of `geo` with `stats` over `samples` training samples;
    /// `interpolated` when the statistics are interpolated between two files.
    pub fn new(geo: &GeoModel, stats: BnStats, samples: usize, interpolated: bool) -> Self {
        let bn_statistics = if !geo.has_batchnorm() {
            "none (the network has no BatchNorm layers)".to_string()
        } else {
            match (geo.bn_mode, stats) {
                (BnMode::Train { batch }, _) => format!(
                    "train mode: each fixed consecutive batch of {batch} samples normalised by its own statistics"
                ),
                (BnMode::Eval, BnStats::Stored) if interpolated => "running statistics interpolated linearly between the two model files (the coordinate clamped to [0, 1])".to_string(),
                (BnMode::Eval, BnStats::Stored) => {
                    "the running statistics stored in the model file, at every point".to_string()
                }
                (BnMode::Eval, BnStats::Recompute { batch }) => format!(
                    "recomputed at every point: one train-mode pass over the {samples} training samples in consecutive batches of {batch}, batch means and unbiased variances averaged (PyTorch's update_bn)"
                ),
            }
        };
        Self {
            bn_mode: geo.bn_mode,
            bn_statistics,
        }
    }
}

/// Curvature settings of [`GeoModel::curvature`].
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CurvatureOptions {
    /// Analytic MLPs: dense eigendecomposition at or below this many parameters.
    pub dense_limit: usize,
    /// Lanczos relative residual tolerance.
    pub tol: f64,
    /// Hutch++ products for an estimated trace.
    pub probes: usize,
    pub seed: u64,
}

/// The model of a geometry experiment: any network in a BatchNorm mode, with the
/// analytic MLP fast path chosen here, in one place ([`Network::analytic_mlp`]: an
/// MLP without BatchNorm, which is measured in eval mode). Every other network runs
/// on the tape ([`NetObjective`], [`loss_and_error`]).
pub struct GeoModel {
    pub net: Network<f64>,
    pub bn_mode: BnMode,
    mlp: Option<Mlp<f64>>,
}

/// The model at one point: the analytic MLP or the network.
enum AtPoint {
    Mlp(Mlp<f64>),
    Net(Network<f64>),
}

impl GeoModel {
    pub fn new(net: Network<f64>, bn_mode: BnMode) -> Result<Self> {
        if let BnMode::Train { batch } = bn_mode {
            if !net.arch.has_batchnorm() {
                return Err(Error::InvalidArgument(
                    "--bn-mode train applies to networks with BatchNorm only".into(),
                ));
            }
            if batch < 2 {
                return Err(Error::InvalidArgument(
                    "the BatchNorm batch size must be at least 2".into(),
                ));
            }
        }
        let mlp = if bn_mode == BnMode::Eval {
            net.analytic_mlp()
        } else {
            None
        };
        Ok(Self { net, bn_mode, mlp })
    }

    /// The analytic MLP when the fast path applies.
    pub fn analytic(&self) -> Option<&Mlp<f64>> {
        self.mlp.as_ref()
    }

    pub fn has_batchnorm(&self) -> bool {
        !self.net.bn.is_empty()
    }

    pub fn num_params(&self) -> usize {
        self.net.num_params()
    }

    pub fn theta0(&self) -> Vec<f64> {
        self.net.param_vector()
    }

    /// A seeded Gaussian direction, normalised ([`random_network_direction`]).
    pub fn random_direction(
        &self,
        norm_kind: Normalization,
        bias_bn: BiasBn,
        seed: u64,
    ) -> Result<Vec<f64>> {
        random_network_direction_with(&self.net, norm_kind, bias_bn, seed)
    }

    /// The network at `theta` (plane coordinates `c`) with its BatchNorm buffers set
    /// by `stats` in eval mode.
    pub fn network_at(&self, theta: &[f64], stats: &PointStats, c: &[f64]) -> Result<Network<f64>> {
        let mut net = self.net.clone();
        net.set_param_vector(theta)?;
        if self.bn_mode == BnMode::Eval && self.has_batchnorm() {
            stats.apply(&mut net, c)?;
        }
        Ok(net)
    }

    fn at(&self, theta: &[f64], stats: &PointStats, c: &[f64]) -> Result<AtPoint> {
        match &self.mlp {
            Some(m) => {
                let mut m = m.clone();
                m.set_param_vector(theta)?;
                Ok(AtPoint::Mlp(m))
            }
            None => Ok(AtPoint::Net(self.network_at(theta, stats, c)?)),
        }
    }

    /// Mean loss and flat gradient over `(x, labels)` at the model, in its BN mode.
    pub fn gradient(&self, x: &Matrix<f64>, labels: &[usize]) -> Result<Vec<f64>> {
        match &self.mlp {
            Some(m) => {
                let (_, g) = crate::nn::backprop::loss_and_grad_analytic(m, x, labels)?;
                Ok(g.iter().flat_map(|t| t.as_slice().to_vec()).collect())
            }
            None => Ok(NetObjective::new(&self.net, x, labels, self.bn_mode)?
                .loss_and_grad()
                .1),
        }
    }

    /// The `k` largest eigenpairs of the Hessian at `theta` (Lanczos with exact HVPs:
    /// the analytic operator for MLPs, double backward on the tape otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn top_eigenpairs_at(
        &self,
        theta: &[f64],
        stats: &PointStats,
        x: &Matrix<f64>,
        labels: &[usize],
        k: usize,
        max_iter: usize,
        seed: u64,
    ) -> Result<LanczosResult> {
        let opts = LanczosOptions {
            max_iter: self.num_params().min(max_iter),
            tol: 1e-8,
            seed,
            ..Default::default()
        };
        match self.at(theta, stats, &[])? {
            AtPoint::Mlp(m) => {
                let op = crate::hessian::HessianOperator::new(
                    &m,
                    x,
                    labels,
                    crate::hessian::Part::Full,
                )?;
                lanczos(&op, Which::Largest(k), &opts)
            }
            AtPoint::Net(net) => {
                let obj = NetObjective::new(&net, x, labels, self.bn_mode)?;
                lanczos(&obj, Which::Largest(k), &opts)
            }
        }
    }

    /// Extreme Hessian eigenvalues and trace at `theta`: analytic MLPs by
    /// [`curvature_at`] (dense up to `dense_limit` parameters); other networks by
    /// Lanczos at both ends (true residuals) and a Hutch++ trace with its 95% interval
    /// (a dense Hessian would cost `P` tape HVPs per point).
    pub fn curvature(
        &self,
        theta: &[f64],
        stats: &PointStats,
        c: &[f64],
        x: &Matrix<f64>,
        labels: &[usize],
        o: &CurvatureOptions,
    ) -> Result<CurvaturePoint> {
        let net = match self.at(theta, stats, c)? {
            AtPoint::Mlp(m) => {
                return curvature_at(&m, x, labels, o.dense_limit, o.tol, o.probes, o.seed)
            }
            AtPoint::Net(net) => net,
        };
        let obj = NetObjective::new(&net, x, labels, self.bn_mode)?;
        let r = lanczos(
            &obj,
            Which::BothEnds {
                largest: 1,
                smallest: 1,
            },
            &LanczosOptions {
                max_iter: obj.dim().min(300),
                tol: o.tol,
                seed: o.seed,
                check_every: 5,
            },
        )?;
        let (hi, lo) = (r.values[0], r.values[r.values.len() - 1]);
        let t = hutch_pp(&obj as &dyn SymOp, o.probes.max(3), o.seed)?;
        Ok(CurvaturePoint {
            lambda_max: hi,
            lambda_min: lo,
            ratio: (lo / hi).abs(),
            trace: t.estimate,
            trace_ci: Some(t.ci95),
            residual_max: r.residuals[0],
            residual_min: r.residuals[r.residuals.len() - 1],
            method: "lanczos (tape HVPs), hutch++ trace".into(),
        })
    }

    /// Mean loss and flat gradient of one minibatch at `theta`, for curve training:
    /// analytic for MLPs; on the tape otherwise, with BatchNorm in train mode (the
    /// minibatch normalised by its own statistics, as Garipov et al. train curves:
    /// points on a curve have no running statistics of their own).
    pub fn batch_loss_and_grad(
        &self,
        theta: &[f64],
        x: &Matrix<f64>,
        labels: &[usize],
    ) -> Result<(f64, Vec<f64>)> {
        match &self.mlp {
            Some(m) => {
                let mut m = m.clone();
                m.set_param_vector(theta)?;
                let (l, g) = crate::nn::backprop::loss_and_grad_analytic(&m, x, labels)?;
                Ok((l, g.iter().flat_map(|t| t.as_slice().to_vec()).collect()))
            }
            None => {
                let mut net = self.net.clone();
                net.set_param_vector(theta)?;
                let mode = if self.has_batchnorm() {
                    BnMode::Train {
                        batch: labels.len(),
                    }
                } else {
                    BnMode::Eval
                };
                Ok(NetObjective::new(&net, x, labels, mode)?.loss_and_grad())
            }
        }
    }

    /// An evaluator of `(loss, error)` at `theta0 + sum_j c_j d_j` over `(x, labels)`,
    /// BatchNorm buffers set by `stats` (eval mode).
    pub fn evaluator<'a>(
        &'a self,
        dirs: Vec<Vec<f64>>,
        x: &'a Matrix<f64>,
        labels: &'a [usize],
        stats: PointStats<'a>,
    ) -> Result<Evaluator<'a>> {
        if let Some(m) = &self.mlp {
            return Ok(Evaluator(Inner::Mlp(PlaneEvaluator::new(
                m, dirs, x, labels,
            )?)));
        }
        NetObjective::new(&self.net, x, labels, self.bn_mode)?;
        for d in &dirs {
            if d.len() != self.num_params() {
                return Err(Error::Shape(format!(
                    "direction of length {} for a model with {} parameters",
                    d.len(),
                    self.num_params()
                )));
            }
            if !d.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFiniteInput(
                    "direction contains NaN or Inf".into(),
                ));
            }
        }
        Ok(Evaluator(Inner::Net {
            geo: self,
            theta0: self.theta0(),
            dirs,
            x,
            labels,
            stats,
        }))
    }
}

/// `(loss, error)` over a fixed dataset at the points of a plane through the model.
pub struct Evaluator<'a>(Inner<'a>);

enum Inner<'a> {
    Mlp(PlaneEvaluator<'a>),
    Net {
        geo: &'a GeoModel,
        theta0: Vec<f64>,
        dirs: Vec<Vec<f64>>,
        x: &'a Matrix<f64>,
        labels: &'a [usize],
        stats: PointStats<'a>,
    },
}

impl Evaluator<'_> {
    /// `(mean loss, error rate)` at coordinates `c` (one per direction), in the
    /// model's BatchNorm mode ([`loss_and_error`]).
    pub fn eval(&self, c: &[f64]) -> Result<(f64, f64)> {
        match &self.0 {
            Inner::Mlp(e) => e.eval(c),
            Inner::Net {
                geo,
                theta0,
                dirs,
                x,
                labels,
                stats,
            } => {
                if c.len() != dirs.len() || !c.iter().all(|v| v.is_finite()) {
                    return Err(Error::InvalidArgument(format!(
                        "{} finite coordinates needed, got {c:?}",
                        dirs.len()
                    )));
                }
                let net = geo.network_at(&point(theta0, dirs, c), stats, c)?;
                loss_and_error(&net, x, labels, geo.bn_mode)
            }
        }
    }

    /// [`Evaluator::eval`] at many points, in parallel over points, results in order;
    /// `tick` is called once per finished point.
    pub fn eval_many(
        &self,
        points: &[Vec<f64>],
        tick: impl Fn() + Sync,
    ) -> Result<Vec<(f64, f64)>> {
        let values: Vec<(f64, f64)> = match &self.0 {
            Inner::Mlp(e) => e.eval_many(points, tick)?,
            Inner::Net { .. } => points
                .par_iter()
                .map(|c| {
                    let r = self.eval(c);
                    tick();
                    r
                })
                .collect::<Result<_>>()?,
        };
        // A NaN/Inf loss stops the run naming the point (never a silent gap in a figure).
        if let Some((c, (l, _))) = points
            .iter()
            .zip(&values)
            .find(|(_, (l, e))| !l.is_finite() || !e.is_finite())
        {
            return Err(Error::NonFiniteInput(format!(
                "the loss is {l} at the point {c:?} (coordinates along the directions): the model's outputs overflow there; use a smaller range"
            )));
        }
        Ok(values)
    }
}

/// Trains the bend of a curve between `a` and `b` for any network (see
/// [`super::train_bend`], which this is for MLPs): each minibatch draws
/// `t ~ U(0, 1)` and takes an Adam step on the minibatch loss at `phi(t)`
/// ([`GeoModel::batch_loss_and_grad`]: BatchNorm in train mode, so networks with
/// BatchNorm skip a last minibatch of one sample).
#[allow(clippy::too_many_arguments)]
pub fn train_bend_geo(
    geo: &GeoModel,
    kind: CurveKind,
    a: &[f64],
    b: &[f64],
    x: &Matrix<f64>,
    labels: &[usize],
    cfg: &BendTraining,
    on_step: impl FnMut(),
) -> Result<(Vec<f64>, Vec<f64>)> {
    train_bend_checkpointed(geo, kind, a, b, x, labels, cfg, None, on_step).map(|r| (r.0, r.1))
}

/// Where bend training stands (a checkpoint's state besides the bend and Adam moments).
struct BendPosition {
    epoch: usize,
    chunk: usize,
    sum: f64,
    batches: usize,
    step: usize,
}

#[allow(clippy::too_many_arguments)]
fn encode_bend_state(
    pos: &BendPosition,
    rng_t: &Rng,
    bend: &[f64],
    m1: &[f64],
    m2: &[f64],
    history: &[f64],
    seconds: f64,
) -> Vec<u8> {
    let mut e = Encoder::new();
    e.usize(pos.epoch)
        .usize(pos.chunk)
        .f64(pos.sum)
        .usize(pos.batches)
        .usize(pos.step)
        .rng(rng_t)
        .f64s(bend)
        .f64s(m1)
        .f64s(m2)
        .f64s(history)
        .f64(seconds);
    e.finish()
}

/// [`train_bend_geo`] with checkpoints after steps (at the session's interval), at
/// the end of every epoch and on a stop signal; resumes bit for bit (bend, Adam
/// moments and step, the generator of `t`, the position in the epoch, the epoch
/// losses). Also returns the training seconds over every part of a resumed run.
#[allow(clippy::too_many_arguments)]
pub fn train_bend_checkpointed(
    geo: &GeoModel,
    kind: CurveKind,
    a: &[f64],
    b: &[f64],
    x: &Matrix<f64>,
    labels: &[usize],
    cfg: &BendTraining,
    mut session: Option<&mut Session>,
    mut on_step: impl FnMut(),
) -> Result<(Vec<f64>, Vec<f64>, f64)> {
    let t0 = std::time::Instant::now();
    if kind == CurveKind::Linear {
        return Err(Error::InvalidArgument(
            "a linear path has no bend to train".into(),
        ));
    }
    if cfg.epochs == 0 || cfg.batch_size == 0 || !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err(Error::InvalidArgument(
            "bend training needs epochs >= 1, batch size >= 1 and a positive learning rate".into(),
        ));
    }
    let p = a.len();
    if b.len() != p || geo.num_params() != p {
        return Err(Error::Shape(
            "the two ends are different architectures".into(),
        ));
    }
    let min_batch = if geo.analytic().is_none() && geo.has_batchnorm() {
        2
    } else {
        1
    };
    if x.rows() < min_batch {
        return Err(Error::InvalidArgument(format!(
            "bend training of a BatchNorm network needs at least 2 samples, got {}",
            x.rows()
        )));
    }
    let mut bend: Vec<f64> = a.iter().zip(b).map(|(x, y)| 0.5 * (x + y)).collect();
    let (mut m1, mut m2) = (vec![0.0; p], vec![0.0; p]);
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8);
    let mut rng_t = Rng::derived(cfg.seed, 7);
    let mut history = Vec::new();
    let mut start = BendPosition {
        epoch: 0,
        chunk: 0,
        sum: 0.0,
        batches: 0,
        step: 0,
    };
    let mut earlier = 0.0;
    if let Some(s) = session.as_deref_mut() {
        if let Some(payload) = s.take_resume() {
            let path = path_in(s.dir());
            let mut d = Decoder::new(&payload, &path);
            let read = |d: &mut Decoder| -> std::result::Result<_, CheckpointError> {
                let pos = BendPosition {
                    epoch: d.usize()?,
                    chunk: d.usize()?,
                    sum: d.f64()?,
                    batches: d.usize()?,
                    step: d.usize()?,
                };
                let r = d.rng()?;
                let (bd, v1, v2, h) = (d.f64s()?, d.f64s()?, d.f64s()?, d.f64s()?);
                let secs = d.f64()?;
                d.end()?;
                if bd.len() != p || v1.len() != p || v2.len() != p {
                    return Err(d.error("a bend of another size than the model"));
                }
                if pos.epoch > cfg.epochs || h.len() != pos.epoch {
                    return Err(d.error("an epoch outside the run"));
                }
                Ok((pos, r, bd, v1, v2, h, secs))
            };
            let (pos, r, bd, v1, v2, h, secs) = read(&mut d)?;
            (start, rng_t, bend, m1, m2, history, earlier) = (pos, r, bd, v1, v2, h, secs);
        }
    }
    let seconds = |t0: &std::time::Instant| earlier + t0.elapsed().as_secs_f64();
    let mut step = start.step;
    for epoch in start.epoch..cfg.epochs {
        let order = Rng::derived(cfg.seed, epoch as u64).permutation(x.rows());
        let resumed = epoch == start.epoch;
        let mut sum = if resumed { start.sum } else { 0.0 };
        let mut batches = if resumed { start.batches } else { 0 };
        let first = if resumed { start.chunk } else { 0 };
        for (ci, chunk) in order.chunks(cfg.batch_size).enumerate().skip(first) {
            if chunk.len() < min_batch {
                continue;
            }
            let t = rng_t.uniform();
            let (_, wm, _) = curve_weights(kind, t);
            let xb = x.select_rows(chunk);
            let yb: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
            let (loss, grads) =
                geo.batch_loss_and_grad(&curve_point(kind, a, &bend, b, t), &xb, &yb)?;
            if !loss.is_finite() {
                return Err(Error::NonFinite {
                    what: "curve loss".into(),
                    epoch,
                    step,
                });
            }
            step += 1;
            let bc1 = 1.0 - beta1.powi(step as i32);
            let bc2 = 1.0 - beta2.powi(step as i32);
            for (j, g) in grads.iter().enumerate() {
                let gb = wm * g;
                m1[j] = beta1 * m1[j] + (1.0 - beta1) * gb;
                m2[j] = beta2 * m2[j] + (1.0 - beta2) * gb * gb;
                bend[j] -= cfg.lr * (m1[j] / bc1) / ((m2[j] / bc2).sqrt() + eps);
            }
            sum += loss;
            batches += 1;
            on_step();
            test_point("step");
            if let Some(s) = session.as_deref_mut() {
                let pos = BendPosition {
                    epoch,
                    chunk: ci + 1,
                    sum,
                    batches,
                    step,
                };
                s.safe_point(
                    false,
                    || format!("bend training epoch {}, step {}", epoch + 1, ci + 1),
                    || encode_bend_state(&pos, &rng_t, &bend, &m1, &m2, &history, seconds(&t0)),
                )?;
            }
        }
        history.push(sum / batches as f64);
        if let Some(s) = session.as_deref_mut() {
            let pos = BendPosition {
                epoch: epoch + 1,
                chunk: 0,
                sum: 0.0,
                batches: 0,
                step,
            };
            s.safe_point(
                true,
                || format!("the end of bend training epoch {}", epoch + 1),
                || encode_bend_state(&pos, &rng_t, &bend, &m1, &m2, &history, seconds(&t0)),
            )?;
        }
    }
    Ok((bend, history, seconds(&t0)))
}
