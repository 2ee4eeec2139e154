//! Training on the sphere (seed 001: Nakhodnov, Kodryan, Lobacheva, Vetrov 2022,
//! "Loss function dynamics and landscape for deep neural networks trained with
//! quadratic loss"; Kodryan et al. 2022, "Training scale-invariant neural networks
//! on the sphere can happen in three regimes").
//!
//! A *fully scale-invariant* (SI) network has BatchNorm without affine parameters,
//! no bias before any BatchNorm, and its last linear layer frozen at a seeded
//! initialisation with the weight rescaled to a fixed Frobenius norm (10 for
//! cross-entropy, 1.5 for MSE). Every trainable tensor then sits right before a
//! BatchNorm, so the train-mode loss does not change when it is scaled (up to the
//! BatchNorm `eps`). The SI tensors, concatenated in parameter-vector order, form
//! one vector `w` on a sphere of radius `rho` (the initial norm, or a chosen one);
//! the per-layer variant keeps every tensor on its own sphere.
//!
//! Steps on the sphere (per group: the whole SI vector, or one tensor), with the
//! batch gradient `g` w.r.t. the SI weights and the effective learning rate `elr`:
//! * projected SGD: `w <- w - elr rho^2 g`, then `w <- rho w / ||w||` (no momentum,
//!   no weight decay); on the unit sphere this is SGD with lr `elr` followed by
//!   normalisation, and it turns `w` by `atan(elr rho ||g||)`;
//! * Riemannian: project `g` on the tangent space, move along the great circle by
//!   the angle `elr rho ||g_t||` (the exponential map);
//! * random walk: the projected step with a uniformly random unit tangent
//!   direction in place of `-g / ||g||` and the same length `elr rho^2 ||g||`;
//! * gradient ascent: the projected step with `+g`;
//! * SAM on the sphere (an option of the projected and Riemannian steps): `g` replaced by
//!   the tangent projection at `w` of the gradient at the retracted ascent point
//!   ([`sam_ascent_point`], [`project_tangent`]).
//!
//! All arithmetic on the SI vector is f64 (a master copy); the network may run
//! its forward and backward passes in f32 for speed.
//!
//! Submodules: [`metrics`] (per-epoch measurements), [`run`] (training runs,
//! sweeps, checkpoints, resume, regime classification, mode connectivity).

pub mod metrics;
pub mod plots;
pub mod run;

pub use metrics::*;
pub use plots::*;
pub use run::*;

use crate::error::{Error, Result};
use crate::nn::arch::{Architecture, LayerSpec, TensorKind};
use crate::nn::{LossKind, Mode, Network};
use crate::rng::Rng;
use crate::tensor::Matrix;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Default Frobenius norm of the frozen last layer's weight: 10 for cross-entropy
/// and 1.5 for MSE (the seed's values).
pub fn default_last_norm(loss: LossKind) -> f64 {
    match loss {
        LossKind::CrossEntropy => 10.0,
        LossKind::Mse => 1.5,
    }
}

/// The scale-invariant form of an architecture: every BatchNorm without affine
/// parameters, every convolution or linear layer directly followed by a BatchNorm
/// without bias. The last layer (which must be linear) keeps its bias; it is the
/// frozen head. Errors when there is no BatchNorm or the last layer is not linear.
pub fn si_architecture(arch: &Architecture) -> Result<Architecture> {
    if !arch.has_batchnorm() {
        return Err(Error::InvalidArgument(format!(
            "--si needs an architecture with BatchNorm; '{}' has none",
            arch.name
        )));
    }
    match arch.layers.last() {
        Some(LayerSpec::Linear { .. }) => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "--si needs a network that ends in a linear layer (the frozen head); '{}' does not",
                arch.name
            )))
        }
    }
    fn fix(layers: &mut [LayerSpec]) {
        let n = layers.len();
        for i in 0..n {
            let next_is_bn = i + 1 < n && matches!(layers[i + 1], LayerSpec::Batchnorm { .. });
            match &mut layers[i] {
                LayerSpec::Batchnorm { affine, .. } => *affine = false,
                LayerSpec::Conv2d { bias, .. } | LayerSpec::Linear { bias, .. } if next_is_bn => {
                    *bias = false
                }
                LayerSpec::Residual { body, shortcut, .. } => {
                    fix(body);
                    if let Some(s) = shortcut {
                        fix(s);
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = arch.clone();
    fix(&mut out.layers);
    // The MLP fast-path description no longer matches (bias on the head only).
    out.mlp = None;
    if out.name != "custom" && !out.name.ends_with("-si") {
        out.name = format!("{}-si", out.name);
    }
    out.layout()?;
    Ok(out)
}

/// Which trainable tensors are scale-invariant and which are frozen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiSpec {
    /// SI tensors (indices into `Network::params`), in parameter-vector order.
    pub si: Vec<usize>,
    /// Frozen tensors (the last linear layer's weight and bias).
    pub frozen: Vec<usize>,
    /// State-dict names of the SI tensors.
    pub si_names: Vec<String>,
    pub frozen_names: Vec<String>,
    /// Ranges of the SI tensors in the flat SI vector.
    pub ranges: Vec<Range<usize>>,
    /// Length of the SI vector.
    pub len: usize,
}

impl SiSpec {
    /// The split of a network: the last linear layer's tensors are frozen, every
    /// other trainable tensor is SI. Requires the SI tensors to come first in the
    /// parameter vector (true for every preset: the head is last).
    pub fn of(net: &Network<f64>) -> Result<Self> {
        let lay = net.layout();
        let head = match net.arch.layers.last() {
            Some(LayerSpec::Linear { name, .. }) => name.clone(),
            _ => {
                return Err(Error::InvalidArgument(
                    "a network on the sphere must end in a linear layer (the frozen head)".into(),
                ))
            }
        };
        let mut si = Vec::new();
        let mut frozen = Vec::new();
        let mut si_names = Vec::new();
        let mut frozen_names = Vec::new();
        for t in &lay.tensors {
            if let TensorKind::Param(i) = t.kind {
                if t.name == format!("{head}.weight") || t.name == format!("{head}.bias") {
                    frozen.push(i);
                    frozen_names.push(t.name.clone());
                } else {
                    si.push(i);
                    si_names.push(t.name.clone());
                }
            }
        }
        if si.is_empty() {
            return Err(Error::InvalidArgument(
                "the network has no trainable tensor besides its frozen head".into(),
            ));
        }
        if si.iter().enumerate().any(|(k, &i)| k != i) {
            return Err(Error::InvalidArgument(
                "the frozen head must be the last tensors of the parameter vector".into(),
            ));
        }
        let mut ranges = Vec::with_capacity(si.len());
        let mut off = 0;
        for &i in &si {
            let n = net.params[i].len();
            ranges.push(off..off + n);
            off += n;
        }
        Ok(Self {
            si,
            frozen,
            si_names,
            frozen_names,
            ranges,
            len: off,
        })
    }

    /// The flat SI vector of a network (f64).
    pub fn vector<T: crate::Scalar>(&self, net: &Network<T>) -> Vec<f64> {
        let mut v = Vec::with_capacity(self.len);
        for &i in &self.si {
            v.extend(net.params[i].as_slice().iter().map(|x| x.to_f64()));
        }
        v
    }

    /// Writes the flat SI vector into a network's SI tensors.
    pub fn set_vector<T: crate::Scalar>(&self, net: &mut Network<T>, v: &[f64]) {
        assert_eq!(v.len(), self.len, "SI vector length");
        for (&i, r) in self.si.iter().zip(&self.ranges) {
            for (d, &s) in net.params[i].as_mut_slice().iter_mut().zip(&v[r.clone()]) {
                *d = T::from_f64(s);
            }
        }
    }

    /// The tensor-parameter range of the SI vector in the full parameter vector
    /// (a prefix: see [`SiSpec::of`]).
    pub fn param_range(&self) -> Range<usize> {
        0..self.len
    }
}

/// Rescales the frozen head's weight to Frobenius norm `norm`.
pub fn set_head_norm(net: &mut Network<f64>, spec: &SiSpec, norm: f64) -> Result<()> {
    if !(norm > 0.0 && norm.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "the last-layer norm must be positive and finite, got {norm}"
        )));
    }
    let w = spec.frozen[0];
    let f = net.params[w].frobenius_norm();
    if f == 0.0 {
        return Err(Error::InvalidArgument(
            "the last layer's weight is zero and cannot be rescaled".into(),
        ));
    }
    let s = norm / f;
    net.params[w] = net.params[w].scale(s);
    Ok(())
}

/// Checks that every SI tensor of `net` really is scale-invariant: the train-mode
/// logits of the batch `x` (at least 2 samples) do not change (relative change
/// `<= 1e-6` of the largest logit) when the tensor alone is multiplied by 3, with
/// the BatchNorm `eps` set to 1e-30 (with the usual 1e-5 the invariance is only
/// approximate, by about `eps / var`). Errors name the first tensor that is not.
pub fn check_scale_invariance(net: &Network<f64>, spec: &SiSpec, x: &Matrix<f64>) -> Result<()> {
    if x.rows() < 2 {
        return Err(Error::InvalidArgument(
            "the scale-invariance check needs at least 2 samples".into(),
        ));
    }
    let logits = |n: &Network<f64>| {
        let tape = crate::autodiff::Tape::new();
        let p: Vec<_> = n.params.iter().map(|m| tape.constant(m.clone())).collect();
        let z = n.forward_tape(&p, x, Mode::Train).logits.value().clone();
        z
    };
    // Exact scale invariance holds with eps = 0; BatchNorm's eps (1e-5) breaks it
    // by about eps / var, which is the physics of the model, not a structural
    // defect, so the check runs on a copy with eps = 1e-30.
    let mut arch = net.arch.clone();
    fn no_eps(ls: &mut [LayerSpec]) {
        for l in ls {
            match l {
                LayerSpec::Batchnorm { eps, .. } => *eps = 1e-30,
                LayerSpec::Residual { body, shortcut, .. } => {
                    no_eps(body);
                    if let Some(s) = shortcut {
                        no_eps(s);
                    }
                }
                _ => {}
            }
        }
    }
    no_eps(&mut arch.layers);
    let exact = Network::new(arch, net.params.clone(), net.bn.clone())?;
    let net = &exact;
    let base = logits(net);
    let scale = base.max_abs().max(1e-12);
    for (&i, name) in spec.si.iter().zip(&spec.si_names) {
        let mut m = net.clone();
        m.params[i] = m.params[i].scale(3.0);
        let z = logits(&m);
        let diff = z
            .as_slice()
            .iter()
            .zip(base.as_slice())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if diff > 1e-6 * scale || !diff.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "tensor '{name}' is not scale-invariant (scaling it by 3 changes the logits by {diff:.3e}); put it right before a BatchNorm without bias, or use --si"
            )));
        }
    }
    Ok(())
}

/// How the sphere's radius is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RadiusMode {
    /// Keep the initial norm (the authors' choice).
    Initial,
    /// Rescale to this radius at the start.
    Fixed { radius: f64 },
}

/// Spheres of a run: one for the whole SI vector, or one per SI tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spheres {
    /// Ranges of the SI vector that each sphere covers.
    pub groups: Vec<Range<usize>>,
    /// Radius of each group.
    pub radii: Vec<f64>,
}

impl Spheres {
    /// Spheres through the current SI vector `w` (rescaling it in place for a
    /// fixed radius: per group to `radius`).
    pub fn new(spec: &SiSpec, w: &mut [f64], mode: RadiusMode, per_layer: bool) -> Result<Self> {
        let groups: Vec<Range<usize>> = if per_layer {
            spec.ranges.clone()
        } else {
            std::iter::once(0..spec.len).collect()
        };
        let mut radii = Vec::with_capacity(groups.len());
        for g in &groups {
            let n = norm(&w[g.clone()]);
            if n == 0.0 || !n.is_finite() {
                return Err(Error::InvalidArgument(
                    "an SI weight group has zero or non-finite norm".into(),
                ));
            }
            let r = match mode {
                RadiusMode::Initial => n,
                RadiusMode::Fixed { radius } => {
                    if !(radius > 0.0 && radius.is_finite()) {
                        return Err(Error::InvalidArgument(format!(
                            "--radius must be positive and finite, got {radius}"
                        )));
                    }
                    let s = radius / n;
                    w[g.clone()].iter_mut().for_each(|x| *x *= s);
                    radius
                }
            };
            radii.push(r);
        }
        Ok(Self { groups, radii })
    }

    /// The norm of the whole SI vector when it lies on these spheres.
    pub fn total_radius(&self) -> f64 {
        self.radii.iter().map(|r| r * r).sum::<f64>().sqrt()
    }
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The step on the sphere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// SGD with lr = elr rho^2, then rescaling to the sphere (the seed's method).
    Projected,
    /// Tangent projection and geodesic retraction (the exact Riemannian step).
    Riemannian,
    /// A random unit tangent direction with the projected gradient step's length (baseline).
    RandomWalk,
    /// Gradient ascent with the projected step (baseline).
    Ascent,
}

/// What one step did (summed over groups where there are several).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepInfo {
    /// Realised rotation angle of the SI vector (radians; the largest over groups).
    pub angle: f64,
    /// Length of the step before the retraction (`elr rho^2 ||g||`, root of the sum of squares over groups).
    pub length: f64,
    /// `||g||` over the SI vector.
    pub grad_norm: f64,
}

/// Angle between two vectors, `2 atan2(||a/|a| - b/|b|||, ||a/|a| + b/|b|||)`
/// (accurate for tiny and near-pi angles).
pub fn angle_between(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (norm(a), norm(b));
    let (mut d, mut s) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (u, v) = (x / na, y / nb);
        d += (u - v) * (u - v);
        s += (u + v) * (u + v);
    }
    2.0 * d.sqrt().atan2(s.sqrt())
}

/// One step on the spheres: `w` (the SI vector, on the spheres) moves with the
/// batch gradient `g` and `elr`; `rng` draws the random-walk direction.
pub fn sphere_step(
    w: &mut [f64],
    g: &[f64],
    spheres: &Spheres,
    elr: f64,
    kind: StepKind,
    rng: &mut Rng,
) -> StepInfo {
    assert_eq!(w.len(), g.len(), "sphere_step: lengths");
    let mut info = StepInfo {
        grad_norm: norm(g),
        ..Default::default()
    };
    let mut len2 = 0.0;
    for (grp, &rho) in spheres.groups.iter().zip(&spheres.radii) {
        let (wg, gg) = (&mut w[grp.clone()], &g[grp.clone()]);
        let old = wg.to_vec();
        let gn = norm(gg);
        let lr = elr * rho * rho;
        let length = lr * gn;
        len2 += length * length;
        match kind {
            StepKind::Projected | StepKind::Ascent => {
                let s = if kind == StepKind::Ascent { lr } else { -lr };
                wg.iter_mut().zip(gg).for_each(|(x, d)| *x += s * d);
                rescale(wg, rho);
            }
            StepKind::RandomWalk => {
                let u: Vec<f64> = wg.iter().map(|x| x / rho).collect();
                let mut r: Vec<f64> = (0..wg.len()).map(|_| rng.normal()).collect();
                let c = dot(&r, &u);
                r.iter_mut().zip(&u).for_each(|(x, ui)| *x -= c * ui);
                let rn = norm(&r);
                if rn > 0.0 {
                    let s = length / rn;
                    wg.iter_mut().zip(&r).for_each(|(x, d)| *x += s * d);
                }
                rescale(wg, rho);
            }
            StepKind::Riemannian => {
                let u: Vec<f64> = wg.iter().map(|x| x / rho).collect();
                // Tangent part of the gradient on the unit sphere (`rho g`).
                let c = dot(gg, &u);
                let gt: Vec<f64> = gg
                    .iter()
                    .zip(&u)
                    .map(|(x, ui)| rho * (x - c * ui))
                    .collect();
                let gtn = norm(&gt);
                if gtn > 0.0 {
                    let theta = elr * gtn;
                    let (s, co) = theta.sin_cos();
                    for ((x, ui), d) in wg.iter_mut().zip(&u).zip(&gt) {
                        *x = rho * (co * ui - s * d / gtn);
                    }
                    rescale(wg, rho);
                }
            }
        }
        info.angle = info.angle.max(angle_between(&old, wg));
    }
    info.length = len2.sqrt();
    info
}

/// The tangent part of `g` at `w`, group by group: `g - (g . u) u` with `u = w / ||w||`
/// over each group's range (the projection onto the tangent space of the spheres).
pub fn project_tangent(w: &[f64], g: &[f64], spheres: &Spheres) -> Vec<f64> {
    assert_eq!(w.len(), g.len(), "project_tangent: lengths");
    let mut out = g.to_vec();
    for grp in &spheres.groups {
        let wg = &w[grp.clone()];
        let wn = norm(wg);
        if !(wn > 0.0 && wn.is_finite()) {
            continue;
        }
        let c = dot(&g[grp.clone()], wg) / (wn * wn);
        for (o, x) in out[grp.clone()].iter_mut().zip(wg) {
            *o -= c * x;
        }
    }
    out
}

/// SAM on the sphere (DESIGN.md section 13; our reading of Riemannian SAM): the ascent
/// point `R(w + rho g_t / ||g_t||)`, with `g_t` the tangent part of the batch gradient
/// (see [`project_tangent`]), `||g_t||` over the whole SI vector, and `R` the retraction
/// that rescales every group back to its radius. `rho` is the Euclidean length of the
/// ascent before the retraction (on a sphere of radius `r` it turns `w` by about
/// `rho / r`). Returns `w` itself when `g_t = 0` or `rho = 0`. The training step then
/// takes the gradient at this point, projects it onto the tangent space at `w`
/// ([`project_tangent`]) and steps and retracts with [`sphere_step`].
pub fn sam_ascent_point(w: &[f64], g: &[f64], spheres: &Spheres, rho: f64) -> Vec<f64> {
    let gt = project_tangent(w, g, spheres);
    let n = norm(&gt);
    let mut out = w.to_vec();
    if !(n > 0.0 && n.is_finite()) || rho == 0.0 {
        return out;
    }
    let s = rho / n;
    out.iter_mut().zip(&gt).for_each(|(x, d)| *x += s * d);
    for (grp, &r) in spheres.groups.iter().zip(&spheres.radii) {
        rescale(&mut out[grp.clone()], r);
    }
    out
}

fn rescale(w: &mut [f64], rho: f64) {
    let n = norm(w);
    if n > 0.0 && n.is_finite() {
        let s = rho / n;
        w.iter_mut().for_each(|x| *x *= s);
    }
}

/// An elr schedule over (fractional) epochs counted from the start of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ElrSchedule {
    Constant {
        elr: f64,
    },
    /// Piecewise linear through `(epoch, elr)` points (epochs increasing),
    /// constant before the first and after the last.
    Piecewise {
        points: Vec<(f64, f64)>,
    },
}

impl ElrSchedule {
    /// Parses `1e-3` (constant) or `0:1e-2,20:1e-2,30:1e-5` (piecewise linear).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: String| Error::InvalidArgument(format!("elr schedule '{s}': {m}"));
        let num = |t: &str| -> Result<f64> {
            t.trim()
                .parse::<f64>()
                .map_err(|_| bad(format!("'{t}' is not a number")))
        };
        let sched = if s.contains(':') {
            let mut points = Vec::new();
            for part in s.split(',') {
                let (e, v) = part
                    .split_once(':')
                    .ok_or_else(|| bad(format!("'{part}' is not EPOCH:ELR")))?;
                points.push((num(e)?, num(v)?));
            }
            ElrSchedule::Piecewise { points }
        } else {
            ElrSchedule::Constant { elr: num(s)? }
        };
        sched.validate()?;
        Ok(sched)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("elr schedule: {m}")));
        match self {
            ElrSchedule::Constant { elr } => {
                if !(*elr > 0.0 && elr.is_finite()) {
                    return bad("elr must be positive and finite");
                }
            }
            ElrSchedule::Piecewise { points } => {
                if points.is_empty() {
                    return bad("no points");
                }
                if points
                    .iter()
                    .any(|&(e, v)| !(v > 0.0 && v.is_finite() && e.is_finite()))
                {
                    return bad("every elr must be positive and every epoch finite");
                }
                if points.windows(2).any(|p| p[1].0 <= p[0].0) {
                    return bad("epochs must increase");
                }
            }
        }
        Ok(())
    }

    /// The elr after `t` epochs of the run (`t` fractional).
    pub fn at(&self, t: f64) -> f64 {
        match self {
            ElrSchedule::Constant { elr } => *elr,
            ElrSchedule::Piecewise { points } => {
                if t <= points[0].0 {
                    return points[0].1;
                }
                for p in points.windows(2) {
                    let ((e0, v0), (e1, v1)) = (p[0], p[1]);
                    if t <= e1 {
                        return v0 + (v1 - v0) * (t - e0) / (e1 - e0);
                    }
                }
                points[points.len() - 1].1
            }
        }
    }

    /// A short label (`1e-3`, or `1e-2->1e-5`).
    pub fn label(&self) -> String {
        match self {
            ElrSchedule::Constant { elr } => format!("{elr:e}"),
            ElrSchedule::Piecewise { points } => {
                format!("{:e}->{:e}", points[0].1, points[points.len() - 1].1)
            }
        }
    }
}

/// `n` values spaced evenly in log10 from `lo` to `hi` (both included).
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Result<Vec<f64>> {
    if !(lo > 0.0 && hi >= lo && hi.is_finite()) || n == 0 {
        return Err(Error::InvalidArgument(format!(
            "a log grid needs 0 < lo <= hi and n >= 1 (got {lo}, {hi}, {n})"
        )));
    }
    if n == 1 {
        return Ok(vec![lo]);
    }
    let (a, b) = (lo.log10(), hi.log10());
    Ok((0..n)
        .map(|i| {
            let v = 10f64.powf(a + (b - a) * i as f64 / (n - 1) as f64);
            // Round to 3 significant digits so that names and labels are clean.
            let e = v.log10().floor();
            let m = (v / 10f64.powf(e) * 100.0).round() / 100.0;
            m * 10f64.powf(e)
        })
        .collect())
}
