//! The geometry experiments as library functions: typed configurations in,
//! result structs out. `landscape line`, `surface` and `connect` parse their
//! arguments into [`LineConfig`], [`SurfaceConfig`] and [`ConnectConfig`], call
//! [`run_line`], [`run_surface`] and [`run_connect`], and write what comes back
//! (JSON, CSV, figures, [`write_surface_file`]); another front end can call the
//! same functions.
//!
//! Directions are named by a [`DirectionSpec`] (`random`, `gradient`, `eigen:K`,
//! `pca`, `model:PATH`) and resolved against the model ([`DirectionSpec::resolve`]).
//! Every result states the BatchNorm mode and which statistics were used
//! ([`BnReport`]).

use super::network::{
    recompute_bn_stats, BnReport, BnStats, CurvatureOptions, GeoModel, PointStats,
};
use super::{
    curve_point, curve_weights, pca_directions, plane_basis, point, BendTraining, BiasBn,
    CurvaturePoint, CurveKind, Normalization,
};
use crate::data::DataBundle;
use crate::error::{Error, Result};
use crate::hessian::network::BnMode;
use crate::io::checkpoint::{
    path_in, test_point, CheckpointError, Checkpointing, Decoder, Encoder, Session,
};
use crate::io::model_file::{write_safetensors, ImportOptions, RawTensor};
use crate::io::network_file::{load_network, NetworkImport};
use crate::nn::{BnState, Network};
use crate::tensor::{dot, Matrix};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Progress of a long experiment (the CLI draws bars; [`NoProgress`] ignores it).
pub trait Progress: Sync {
    /// A stage of `total` steps begins (ending the previous one).
    fn stage(&self, name: &str, total: u64);
    /// One step of the current stage is done (called from any thread).
    fn tick(&self);
    /// The current stage is over.
    fn finish(&self);
}

/// A [`Progress`] that reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: &str, _: u64) {}
    fn tick(&self) {}
    fn finish(&self) {}
}

/// The first `samples` training rows (all by default).
pub fn training_rows(
    data: &DataBundle,
    samples: Option<usize>,
) -> Result<(Matrix<f64>, Vec<usize>)> {
    let n = data.train.y.len();
    let m = samples.unwrap_or(n);
    if m == 0 || m > n {
        return Err(Error::InvalidArgument(format!(
            "--samples {m}: the training split has {n} samples"
        )));
    }
    Ok((
        data.train.x.rows_view(0, m).to_owned(),
        data.train.y[..m].to_vec(),
    ))
}

/// Whether two networks have the same architecture and settings (layers, input
/// shape, classes, loss; for MLPs the whole configuration), so that their parameter
/// vectors index the same weights.
pub fn same_architecture(a: &Network<f64>, b: &Network<f64>) -> bool {
    match (&a.arch.mlp, &b.arch.mlp) {
        (Some(x), Some(y)) => x == y,
        (None, None) => {
            a.arch.layers == b.arch.layers
                && a.arch.input_shape == b.arch.input_shape
                && a.arch.classes == b.arch.classes
                && a.arch.loss == b.arch.loss
                && a.arch.leaky_slope == b.arch.leaky_slope
        }
        _ => false,
    }
}

/// How to read other model files (a `model:` direction, trajectory checkpoints) so
/// that PyTorch state dicts get the architecture of `net`.
pub fn import_like(net: &Network<f64>) -> NetworkImport {
    let mlp = match &net.arch.mlp {
        Some(c) => ImportOptions {
            activation: Some(c.activation),
            loss: Some(c.loss),
            batchnorm_eps: c.batchnorm.map(|b| b.eps),
            leaky_slope: Some(c.leaky_slope),
        },
        None => ImportOptions::default(),
    };
    NetworkImport {
        arch: net.arch.mlp.is_none().then(|| net.arch.clone()),
        mlp,
    }
}

/// Parameter vectors of the `.safetensors` checkpoints in `dir`, in file-name order
/// (`train --checkpoint-dir` writes `epoch-NNN.safetensors`); each must have the
/// architecture of `like`.
pub fn load_trajectory(dir: &Path, like: &Network<f64>) -> Result<Vec<Vec<f64>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: no .safetensors checkpoints",
            dir.display()
        )));
    }
    let import = import_like(like);
    files
        .iter()
        .map(|f| {
            let (net, _) = load_network::<f64>(f, &import)?;
            if !same_architecture(&net, like) {
                return Err(Error::InvalidArgument(format!(
                    "{}: a checkpoint of another architecture than the model",
                    f.display()
                )));
            }
            Ok(net.param_vector())
        })
        .collect()
}

/// A direction named on the command line or in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum DirectionSpec {
    /// Seeded Gaussian, normalised (filter normalisation by default).
    Random,
    /// The negative gradient of the loss at the model (unit norm).
    Gradient,
    /// The `k`-th largest Hessian eigenvector at the model (unit norm).
    Eigen(usize),
    /// A principal direction of a training trajectory (unit norm).
    Pca,
    /// Towards another model: coordinate 1 reaches it.
    Model(PathBuf),
}

impl DirectionSpec {
    /// `random`, `gradient`, `eigen:K` (`K >= 1`), `pca` or `model:PATH`.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "random" => return Ok(Self::Random),
            "gradient" => return Ok(Self::Gradient),
            "pca" => return Ok(Self::Pca),
            _ => {}
        }
        if let Some(k) = spec.strip_prefix("eigen:") {
            return k
                .parse()
                .ok()
                .filter(|&k| k >= 1)
                .map(Self::Eigen)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("direction '{spec}': eigen:K needs K >= 1"))
                });
        }
        if let Some(path) = spec.strip_prefix("model:") {
            return Ok(Self::Model(PathBuf::from(path)));
        }
        Err(Error::InvalidArgument(format!(
            "unknown direction '{spec}': use random, gradient, eigen:K, pca or model:PATH"
        )))
    }
}

impl std::fmt::Display for DirectionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Random => write!(f, "random"),
            Self::Gradient => write!(f, "gradient"),
            Self::Eigen(k) => write!(f, "eigen:{k}"),
            Self::Pca => write!(f, "pca"),
            Self::Model(p) => write!(f, "model:{}", p.display()),
        }
    }
}

impl From<DirectionSpec> for String {
    fn from(d: DirectionSpec) -> String {
        d.to_string()
    }
}

/// A resolved direction.
#[derive(Clone, Debug)]
pub struct Direction {
    /// One entry per parameter, in parameter order.
    pub values: Vec<f64>,
    /// What it is, for results (`kind` and the details of that kind).
    pub info: serde_json::Value,
    /// For a `model:` direction: the BatchNorm buffers of the model it reaches.
    pub target_bn: Option<Vec<BnState<f64>>>,
}

/// What directions are resolved against.
pub struct DirectionInputs<'a> {
    pub geo: &'a GeoModel,
    /// Samples of the gradient and the Hessian.
    pub x: &'a Matrix<f64>,
    pub labels: &'a [usize],
    /// Of random directions.
    pub normalization: Normalization,
    /// Bias and BatchNorm entries of random directions.
    pub bias_bn: BiasBn,
    /// Checkpoint parameter vectors, for `pca`.
    pub trajectory: Option<&'a [Vec<f64>]>,
}

impl DirectionSpec {
    /// The direction at the model: `seed` draws a random one, `pca_component`
    /// (0-based) picks the principal direction.
    pub fn resolve(
        &self,
        inp: &DirectionInputs,
        seed: u64,
        pca_component: usize,
    ) -> Result<Direction> {
        let geo = inp.geo;
        let plain = |values: Vec<f64>, info: serde_json::Value| Direction {
            values,
            info,
            target_bn: None,
        };
        let unit = |mut v: Vec<f64>| {
            let n = dot(&v, &v).sqrt();
            if n > 0.0 {
                v.iter_mut().for_each(|t| *t /= n);
            }
            v
        };
        match self {
            Self::Random => {
                let d = geo.random_direction(inp.normalization, inp.bias_bn, seed)?;
                Ok(plain(
                    d,
                    serde_json::json!({"kind": "random", "normalization": inp.normalization, "keep_bias": inp.bias_bn != BiasBn::Zero, "bias_bn": inp.bias_bn, "seed": seed}),
                ))
            }
            Self::Gradient => {
                let g = geo.gradient(inp.x, inp.labels)?;
                Ok(plain(
                    unit(g.iter().map(|v| -v).collect()),
                    serde_json::json!({"kind": "negative gradient (unit norm)"}),
                ))
            }
            Self::Eigen(k) => {
                let p = geo.num_params();
                if *k > p {
                    return Err(Error::InvalidArgument(format!(
                        "direction '{self}': the model has only {p} parameters"
                    )));
                }
                let r = geo.top_eigenpairs_at(
                    &geo.theta0(),
                    &PointStats::Stored,
                    inp.x,
                    inp.labels,
                    *k,
                    400,
                    seed,
                )?;
                Ok(plain(
                    r.vectors[k - 1].clone(),
                    serde_json::json!({"kind": "hessian eigenvector (unit norm)", "k": k, "eigenvalue": r.values[k - 1], "residual": r.residuals[k - 1]}),
                ))
            }
            Self::Pca => {
                let traj = inp.trajectory.ok_or_else(|| {
                    Error::InvalidArgument(
                        "direction 'pca' needs --trajectory DIR (checkpoints from train --checkpoint-dir)"
                            .into(),
                    )
                })?;
                let (dirs, explained) = pca_directions(traj, &geo.theta0(), pca_component + 1)?;
                Ok(plain(
                    dirs[pca_component].clone(),
                    serde_json::json!({"kind": "pca of the trajectory (unit norm)", "component": pca_component + 1, "explained_variance_ratio": explained[pca_component], "checkpoints": traj.len()}),
                ))
            }
            Self::Model(path) => {
                let (other, _) = load_network::<f64>(path, &import_like(&geo.net))?;
                if !same_architecture(&other, &geo.net) {
                    return Err(Error::InvalidArgument(format!(
                        "{}: a different architecture than the model",
                        path.display()
                    )));
                }
                let d = other
                    .param_vector()
                    .iter()
                    .zip(geo.theta0())
                    .map(|(a, b)| a - b)
                    .collect();
                Ok(Direction {
                    values: d,
                    info: serde_json::json!({"kind": "model difference (coordinate 1 reaches it)", "model": path.display().to_string()}),
                    target_bn: Some(other.bn),
                })
            }
        }
    }
}

/// The norm of a direction, refusing a zero or non-finite one (nothing to move along).
pub fn direction_norm(name: &str, d: &[f64]) -> Result<f64> {
    let n = dot(d, d).sqrt();
    if n.is_finite() && n > 0.0 {
        Ok(n)
    } else {
        Err(Error::InvalidArgument(format!(
            "the {name} direction is {}: nothing to move along",
            if n == 0.0 { "zero" } else { "not finite" }
        )))
    }
}

/// Refuses a degenerate plane: a zero direction (e.g. `model:` the model itself, a zero
/// gradient) or two parallel ones would give a surface that only varies along a line.
pub fn check_plane(dx: &[f64], dy: &[f64]) -> Result<()> {
    let (nx, ny) = (direction_norm("x", dx)?, direction_norm("y", dy)?);
    if (dot(dx, dy) / (nx * ny)).abs() > 1.0 - 1e-12 {
        return Err(Error::InvalidArgument(
            "the x and y directions are parallel: the plane is degenerate".into(),
        ));
    }
    Ok(())
}

/// Checkpoints projected on the plane `theta0 + a dx + b dy`.
#[derive(Clone, Debug, Serialize)]
pub struct PlaneProjection {
    /// Least-squares coordinates `(a, b)` of `theta_i - theta0` in the span of `dx, dy`.
    pub coords: Vec<(f64, f64)>,
    /// `||theta_i - theta0 - a dx - b dy||`: how far each checkpoint is from the plane.
    #[serde(rename = "off_plane_distance")]
    pub off_plane: Vec<f64>,
    /// `off_plane / ||theta_i - theta0||` (0 for the centre itself).
    pub relative_off_plane: Vec<f64>,
}

/// Projects `thetas` on the plane through `theta0` spanned by `dx` and `dy` (least
/// squares through the 2 x 2 Gram matrix, so non-orthogonal directions work too).
/// The directions must have passed [`check_plane`] (nonzero, not parallel).
pub fn project_on_plane(
    thetas: &[Vec<f64>],
    theta0: &[f64],
    dx: &[f64],
    dy: &[f64],
) -> Result<PlaneProjection> {
    let (gxx, gxy, gyy) = (dot(dx, dx), dot(dx, dy), dot(dy, dy));
    let det = gxx * gyy - gxy * gxy;
    let mut out = PlaneProjection {
        coords: Vec::new(),
        off_plane: Vec::new(),
        relative_off_plane: Vec::new(),
    };
    for t in thetas {
        if t.len() != theta0.len() {
            return Err(Error::Shape(
                "trajectory checkpoints of another architecture than the model".into(),
            ));
        }
        let d: Vec<f64> = t.iter().zip(theta0).map(|(a, b)| a - b).collect();
        let (bx, by) = (dot(&d, dx), dot(&d, dy));
        let a = (gyy * bx - gxy * by) / det;
        let b = (gxx * by - gxy * bx) / det;
        let r: f64 = d
            .iter()
            .zip(dx.iter().zip(dy))
            .map(|(v, (x, y))| (v - a * x - b * y).powi(2))
            .sum::<f64>()
            .sqrt();
        let nd = dot(&d, &d).sqrt();
        out.coords.push((a, b));
        out.off_plane.push(r);
        out.relative_off_plane
            .push(if nd > 0.0 { r / nd } else { 0.0 });
    }
    Ok(out)
}

/// Refuses `--bn-stats recompute` where no running statistics are used.
fn check_stats(geo: &GeoModel, stats: BnStats) -> Result<()> {
    if let BnStats::Recompute { batch } = stats {
        if !geo.has_batchnorm() || geo.bn_mode != BnMode::Eval {
            return Err(Error::InvalidArgument(
                "--bn-stats recompute applies to networks with BatchNorm in --bn-mode eval".into(),
            ));
        }
        if batch < 2 {
            return Err(Error::InvalidArgument(
                "the BatchNorm batch size must be at least 2".into(),
            ));
        }
    }
    Ok(())
}

/// The named splits an experiment evaluates: train (the selected rows) and test.
fn splits<'a>(
    x: &'a Matrix<f64>,
    y: &'a [usize],
    data: &'a DataBundle,
) -> Vec<(&'static str, &'a Matrix<f64>, &'a [usize])> {
    std::iter::once(("train", x, y))
        .chain(data.test.as_ref().map(|t| ("test", &t.x, t.y.as_slice())))
        .collect()
}

/// `landscape line`: loss and error along one direction.
#[derive(Clone, Debug, Serialize)]
pub struct LineConfig {
    pub direction: DirectionSpec,
    /// The coordinates `alpha` of the points `theta0 + alpha d`.
    pub alphas: Vec<f64>,
    pub normalization: Normalization,
    /// Bias and BatchNorm entries of random directions (default zero, as Li et al.).
    pub bias_bn: BiasBn,
    pub seed: u64,
    pub trajectory: Option<PathBuf>,
    /// The first N training samples (default all); the test split is used whole.
    pub samples: Option<usize>,
    pub bn_mode: BnMode,
    pub bn_stats: BnStats,
}

impl LineConfig {
    /// Defaults: filter normalisation, biases zeroed, seed 0, all samples, eval mode
    /// with the stored statistics.
    pub fn new(direction: DirectionSpec, alphas: Vec<f64>) -> Self {
        Self {
            direction,
            alphas,
            normalization: Normalization::Filter,
            bias_bn: BiasBn::Zero,
            seed: 0,
            trajectory: None,
            samples: None,
            bn_mode: BnMode::Eval,
            bn_stats: BnStats::Stored,
        }
    }
}

/// The result of [`run_line`] (serialises to the `results` of `line --json`).
#[derive(Clone, Debug, Serialize)]
pub struct LineResult {
    /// What the direction is.
    pub direction: serde_json::Value,
    pub alpha: Vec<f64>,
    pub train_loss: Vec<f64>,
    pub train_error: Vec<f64>,
    pub test_loss: Option<Vec<f64>>,
    pub test_error: Option<Vec<f64>>,
    /// Training samples used.
    pub samples: usize,
    #[serde(flatten)]
    pub bn: BnReport,
    pub seconds: f64,
    /// The direction itself.
    #[serde(skip)]
    pub direction_values: Vec<f64>,
}

/// Loss and error (train and test) at `theta0 + alpha d` for every `alpha`. A
/// `model:` direction goes from the model (`alpha = 0`) to the other (`alpha = 1`);
/// with BatchNorm in eval mode and stored statistics, the running statistics are
/// interpolated between the two files ([`PointStats::Interpolated`]).
pub fn run_line(
    net: &Network<f64>,
    data: &DataBundle,
    cfg: &LineConfig,
    progress: &dyn Progress,
) -> Result<LineResult> {
    let geo = GeoModel::new(net.clone(), cfg.bn_mode)?;
    check_stats(&geo, cfg.bn_stats)?;
    if cfg.alphas.is_empty() || !cfg.alphas.iter().all(|a| a.is_finite()) {
        return Err(Error::InvalidArgument(
            "a line needs at least one finite coordinate".into(),
        ));
    }
    let (x, y) = training_rows(data, cfg.samples)?;
    let traj = cfg
        .trajectory
        .as_deref()
        .map(|d| load_trajectory(d, net))
        .transpose()?;
    let inputs = DirectionInputs {
        geo: &geo,
        x: &x,
        labels: &y,
        normalization: cfg.normalization,
        bias_bn: cfg.bias_bn,
        trajectory: traj.as_deref(),
    };
    let dir = cfg.direction.resolve(&inputs, cfg.seed, 0)?;
    direction_norm("line", &dir.values)?;
    let stats = match (cfg.bn_stats, &dir.target_bn) {
        (BnStats::Recompute { batch }, _) => PointStats::Recompute { x: &x, batch },
        (BnStats::Stored, Some(bn)) => PointStats::Interpolated(bn),
        (BnStats::Stored, None) => PointStats::Stored,
    };
    let interpolated = matches!(stats, PointStats::Interpolated(_));
    let pts: Vec<Vec<f64>> = cfg.alphas.iter().map(|&t| vec![t]).collect();
    let t0 = Instant::now();
    let sets = splits(&x, &y, data);
    progress.stage("line", (pts.len() * sets.len()) as u64);
    let mut curves = Vec::new();
    if crate::dist::size() > 1 {
        // Several MPI ranks: work items of `threads` points per split, on any rank.
        let evs = sets
            .iter()
            .map(|(_, xs, ys)| geo.evaluator(vec![dir.values.clone()], xs, ys, stats))
            .collect::<Result<Vec<_>>>()?;
        let chunk = rayon::current_num_threads().max(1);
        let per_set = pts.len().div_ceil(chunk);
        let parts = crate::dist::map_items(
            sets.len() * per_set,
            |i| {
                let from = (i % per_set) * chunk;
                let to = (from + chunk).min(pts.len());
                evs[i / per_set].eval_many(&pts[from..to], || {})
            },
            || progress.tick(),
        )?;
        curves = parts.chunks(per_set).map(|c| c.concat()).collect();
    }
    for (_, xs, ys) in sets.iter().skip(curves.len()) {
        let ev = geo.evaluator(vec![dir.values.clone()], xs, ys, stats)?;
        curves.push(ev.eval_many(&pts, || progress.tick())?);
    }
    progress.finish();
    let col = |v: &[(f64, f64)], i: usize| -> Vec<f64> {
        v.iter().map(|r| if i == 0 { r.0 } else { r.1 }).collect()
    };
    let test = curves.get(1);
    Ok(LineResult {
        direction: dir.info,
        alpha: cfg.alphas.clone(),
        train_loss: col(&curves[0], 0),
        train_error: col(&curves[0], 1),
        test_loss: test.map(|v| col(v, 0)),
        test_error: test.map(|v| col(v, 1)),
        samples: y.len(),
        bn: BnReport::new(&geo, cfg.bn_stats, y.len(), interpolated),
        seconds: t0.elapsed().as_secs_f64(),
        direction_values: dir.values,
    })
}

/// Curvature maps of a surface.
#[derive(Clone, Debug, Serialize)]
pub struct CurvatureGrid {
    pub grid_x: Vec<f64>,
    pub grid_y: Vec<f64>,
    /// The first N training samples of the surface (default all of them).
    pub samples: Option<usize>,
    /// Analytic MLPs: dense eigendecomposition at or below this many parameters.
    pub dense_limit: usize,
}

/// `landscape surface`: a 2-D loss/error surface and curvature maps.
#[derive(Clone, Debug, Serialize)]
pub struct SurfaceConfig {
    /// The x direction (a random one uses `seed`, `pca` the first component).
    pub x: DirectionSpec,
    /// The y direction (a random one uses `seed + 1`, `pca` the second component).
    pub y: DirectionSpec,
    pub grid_x: Vec<f64>,
    pub grid_y: Vec<f64>,
    pub normalization: Normalization,
    /// Bias and BatchNorm entries of random directions (default zero, as Li et al.).
    pub bias_bn: BiasBn,
    pub seed: u64,
    pub trajectory: Option<PathBuf>,
    pub samples: Option<usize>,
    pub curvature: Option<CurvatureGrid>,
    pub bn_mode: BnMode,
    pub bn_stats: BnStats,
}

impl SurfaceConfig {
    /// Defaults as [`LineConfig::new`], no curvature maps.
    pub fn new(x: DirectionSpec, y: DirectionSpec, grid_x: Vec<f64>, grid_y: Vec<f64>) -> Self {
        Self {
            x,
            y,
            grid_x,
            grid_y,
            normalization: Normalization::Filter,
            bias_bn: BiasBn::Zero,
            seed: 0,
            trajectory: None,
            samples: None,
            curvature: None,
            bn_mode: BnMode::Eval,
            bn_stats: BnStats::Stored,
        }
    }
}

/// Curvature at one grid point.
#[derive(Clone, Debug, Serialize)]
pub struct CurvatureSample {
    pub x: f64,
    pub y: f64,
    pub curvature: CurvaturePoint,
}

/// The curvature maps of [`run_surface`].
#[derive(Clone, Debug)]
pub struct CurvatureMaps {
    pub grid_x: Vec<f64>,
    pub grid_y: Vec<f64>,
    /// `lambda_max`, `lambda_min`, `abs_ratio_min_max`, `trace` (rows follow `grid_y`).
    pub maps: Vec<(String, Matrix<f64>)>,
    pub points: Vec<CurvatureSample>,
    pub samples: usize,
}

/// The result of [`run_surface`].
#[derive(Clone, Debug)]
pub struct SurfaceResult {
    pub direction_x: Direction,
    pub direction_y: Direction,
    pub theta0: Vec<f64>,
    pub grid_x: Vec<f64>,
    pub grid_y: Vec<f64>,
    /// `train_loss`, `train_error` and, with a test split, `test_loss`, `test_error`;
    /// `value[i, j]` at `theta0 + grid_x[j] dx + grid_y[i] dy`.
    pub maps: Vec<(String, Matrix<f64>)>,
    pub curvature: Option<CurvatureMaps>,
    /// The trajectory projected on the plane (with `trajectory`).
    pub trajectory: Option<PlaneProjection>,
    pub samples: usize,
    pub seconds: f64,
    pub bn: BnReport,
}

impl SurfaceResult {
    /// The smallest train loss and its grid coordinates.
    pub fn train_loss_min(&self) -> (f64, [f64; 2]) {
        let m = &self.maps[0].1;
        let (i, v) =
            m.as_slice()
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f64::INFINITY),
                    |b, (i, v)| if v < b.1 { (i, v) } else { b },
                );
        let nx = self.grid_x.len();
        (v, [self.grid_x[i % nx], self.grid_y[i / nx]])
    }

    /// The `results` of `surface --json` (without file names). `maps` holds every
    /// map as rows (`maps[key][i][j]` at `(grid_x[j], grid_y[i])`) and
    /// `curvature_maps` the curvature maps on their grid, so that a summary can be
    /// printed from the JSON alone.
    pub fn to_json(&self) -> serde_json::Value {
        let (vmin, arg) = self.train_loss_min();
        let rows = |maps: &[(String, Matrix<f64>)]| {
            maps.iter()
                .map(|(k, m)| {
                    let r: Vec<Vec<f64>> = (0..m.rows()).map(|i| m.row(i).to_vec()).collect();
                    (k.clone(), serde_json::json!(r))
                })
                .collect::<serde_json::Map<_, _>>()
        };
        serde_json::json!({
            "maps": rows(&self.maps),
            "curvature_maps": self.curvature.as_ref().map(|c| serde_json::json!({
                "grid_x": c.grid_x, "grid_y": c.grid_y, "maps": rows(&c.maps),
            })),
            "direction_x": self.direction_x.info, "direction_y": self.direction_y.info,
            "grid_x": self.grid_x, "grid_y": self.grid_y,
            "train_loss_min": vmin, "train_loss_argmin": arg,
            "surface_seconds": self.seconds, "points": self.grid_x.len() * self.grid_y.len(),
            "samples": self.samples,
            "curvature": self.curvature.as_ref().map_or(&[][..], |c| c.points.as_slice()),
            "curvature_samples": self.curvature.as_ref().map(|c| c.samples),
            "trajectory": self.trajectory,
            "bn_mode": self.bn.bn_mode, "bn_statistics": self.bn.bn_statistics,
        })
    }
}

/// Loss and error (train and test) over a grid of the plane
/// `theta0 + a dx + b dy`, and with `curvature` the curvature maps on their grid
/// (statistics as the surface's: in eval mode with `BnStats::Recompute` they are
/// recomputed at every curvature point too).
pub fn run_surface(
    net: &Network<f64>,
    data: &DataBundle,
    cfg: &SurfaceConfig,
    progress: &dyn Progress,
) -> Result<SurfaceResult> {
    run_surface_checkpointed(net, data, cfg, progress, None)
}

/// SHA-256 (hex) of a network's parameters and BatchNorm buffers, bit for bit: what a
/// checkpoint of an experiment on the network is tied to.
pub fn network_fingerprint(net: &Network<f64>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in net.param_vector() {
        h.update(v.to_bits().to_le_bytes());
    }
    for bn in &net.bn {
        for m in [&bn.running_mean, &bn.running_var] {
            for v in m.as_slice() {
                h.update(v.to_bits().to_le_bytes());
            }
        }
        h.update(bn.num_batches_tracked.to_le_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The finished part of a surface: loss/error values per split (the last one may be
/// partial) and finished curvature points; what a surface checkpoint holds.
#[derive(Default)]
struct SurfaceState {
    values: Vec<Vec<(f64, f64)>>,
    curvature: Vec<CurvatureSample>,
    seconds: f64,
}

impl SurfaceState {
    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.f64(self.seconds).usize(self.values.len());
        for v in &self.values {
            e.usize(v.len());
            for &(l, r) in v {
                e.f64(l).f64(r);
            }
        }
        e.usize(self.curvature.len());
        for p in &self.curvature {
            let c = &p.curvature;
            e.f64(p.x)
                .f64(p.y)
                .f64(c.lambda_max)
                .f64(c.lambda_min)
                .f64(c.ratio)
                .f64(c.trace)
                .bool(c.trace_ci.is_some());
            if let Some((lo, hi)) = c.trace_ci {
                e.f64(lo).f64(hi);
            }
            e.f64(c.residual_max).f64(c.residual_min).str(&c.method);
        }
        e.finish()
    }

    fn decode(
        payload: &[u8],
        path: &Path,
        splits: usize,
        points: usize,
        curvature_points: usize,
    ) -> std::result::Result<Self, CheckpointError> {
        let mut d = Decoder::new(payload, path);
        let seconds = d.f64()?;
        let ns = d.usize()?;
        if ns > splits {
            return Err(d.error(format!("{ns} data splits, the surface has {splits}")));
        }
        let mut values = Vec::with_capacity(ns);
        for s in 0..ns {
            let n = d.usize()?;
            if n > points || (s + 1 < ns && n != points) {
                return Err(d.error(format!("{n} grid points of {points} in split {s}")));
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push((d.f64()?, d.f64()?));
            }
            values.push(v);
        }
        let nc = d.usize()?;
        if nc > curvature_points || (nc > 0 && (ns < splits || values[ns - 1].len() < points)) {
            return Err(d.error(format!("{nc} curvature points of {curvature_points}")));
        }
        let mut curvature = Vec::with_capacity(nc);
        for _ in 0..nc {
            let (x, y) = (d.f64()?, d.f64()?);
            let (lambda_max, lambda_min, ratio, trace) = (d.f64()?, d.f64()?, d.f64()?, d.f64()?);
            let trace_ci = if d.bool()? {
                Some((d.f64()?, d.f64()?))
            } else {
                None
            };
            let (residual_max, residual_min) = (d.f64()?, d.f64()?);
            let method = d.string()?;
            curvature.push(CurvatureSample {
                x,
                y,
                curvature: CurvaturePoint {
                    lambda_max,
                    lambda_min,
                    ratio,
                    trace,
                    trace_ci,
                    residual_max,
                    residual_min,
                    method,
                },
            });
        }
        d.end()?;
        Ok(Self {
            values,
            curvature,
            seconds,
        })
    }
}

/// [`run_surface`] with checkpoints: with `ckpt`, finished grid rows and curvature points
/// are saved at safe points (at its interval, at the end, and on a stop signal, which
/// returns [`Error::Interrupted`]); `ckpt.resume` continues a checkpointed run, with a
/// result bit-identical to an uninterrupted one. The checkpoint is tied to the
/// configuration, the model's parameters and statistics, the data and the thread count.
pub fn run_surface_checkpointed(
    net: &Network<f64>,
    data: &DataBundle,
    cfg: &SurfaceConfig,
    progress: &dyn Progress,
    ckpt: Option<&Checkpointing>,
) -> Result<SurfaceResult> {
    let geo = GeoModel::new(net.clone(), cfg.bn_mode)?;
    check_stats(&geo, cfg.bn_stats)?;
    let (x, y) = training_rows(data, cfg.samples)?;
    let (gx, gy) = (&cfg.grid_x, &cfg.grid_y);
    if gx.is_empty() || gy.is_empty() {
        return Err(Error::InvalidArgument("the grid has no points".into()));
    }
    let mut session = match ckpt {
        Some(spec) => Some(Session::start(
            spec,
            "surface",
            serde_json::json!({
                "surface": cfg,
                "model_sha256": network_fingerprint(net),
                "data": data.summary_json(),
            }),
        )?),
        None => None,
    };
    let traj = cfg
        .trajectory
        .as_deref()
        .map(|d| load_trajectory(d, net))
        .transpose()?;
    let inputs = DirectionInputs {
        geo: &geo,
        x: &x,
        labels: &y,
        normalization: cfg.normalization,
        bias_bn: cfg.bias_bn,
        trajectory: traj.as_deref(),
    };
    let dx = cfg.x.resolve(&inputs, cfg.seed, 0)?;
    let dy = cfg.y.resolve(
        &inputs,
        cfg.seed + 1,
        usize::from(cfg.y == DirectionSpec::Pca),
    )?;
    check_plane(&dx.values, &dy.values)?;
    let theta0 = geo.theta0();
    let trajectory = traj
        .as_ref()
        .map(|t| project_on_plane(t, &theta0, &dx.values, &dy.values))
        .transpose()?;
    let stats = match cfg.bn_stats {
        BnStats::Recompute { batch } => PointStats::Recompute { x: &x, batch },
        BnStats::Stored => PointStats::Stored,
    };
    let t0 = Instant::now();
    let pts: Vec<Vec<f64>> = gy
        .iter()
        .flat_map(|&b| gx.iter().map(move |&a| vec![a, b]))
        .collect();
    let sets = splits(&x, &y, data);
    let n_curv = cfg
        .curvature
        .as_ref()
        .map_or(0, |c| c.grid_x.len() * c.grid_y.len());
    let mut st = SurfaceState::default();
    if let Some(s) = session.as_mut() {
        if let Some(p) = s.take_resume() {
            st = SurfaceState::decode(&p, &path_in(s.dir()), sets.len(), pts.len(), n_curv)?;
        }
    }
    let earlier = st.seconds;
    let elapsed = |t0: &Instant| earlier + t0.elapsed().as_secs_f64();
    progress.stage("surface", (pts.len() * sets.len()) as u64);
    let dirs = vec![dx.values.clone(), dy.values.clone()];
    if crate::dist::size() > 1 {
        // Several MPI ranks (no checkpoints then): one work item per grid row and split,
        // dealt out dynamically; a point's value does not depend on who computes it.
        let evs = sets
            .iter()
            .map(|(_, xs, ys)| geo.evaluator(dirs.clone(), xs, ys, stats))
            .collect::<Result<Vec<_>>>()?;
        let (nx, ny) = (gx.len(), gy.len());
        let rows = crate::dist::map_items(
            sets.len() * ny,
            |i| evs[i / ny].eval_many(&pts[(i % ny) * nx..(i % ny + 1) * nx], || {}),
            || (0..nx).for_each(|_| progress.tick()),
        )?;
        st.values = rows.chunks(ny).map(|c| c.concat()).collect();
    }
    // Grid rows are evaluated in parallel, a row at a time between safe points; each
    // point's value does not depend on the others, so rows resume exactly.
    let row = gx.len().max(4 * rayon::current_num_threads());
    let local = if crate::dist::size() > 1 {
        0
    } else {
        sets.len()
    };
    for (k, (name, xs, ys)) in sets.iter().enumerate().take(local) {
        if st.values.len() == k {
            st.values.push(Vec::new());
        }
        if st.values[k].len() == pts.len() {
            (0..pts.len()).for_each(|_| progress.tick());
            continue;
        }
        (0..st.values[k].len()).for_each(|_| progress.tick());
        let ev = geo.evaluator(dirs.clone(), xs, ys, stats)?;
        while st.values[k].len() < pts.len() {
            let from = st.values[k].len();
            let to = (from + row).min(pts.len());
            let r = ev.eval_many(&pts[from..to], || progress.tick())?;
            st.values[k].extend(r);
            test_point("point");
            if let Some(s) = session.as_mut() {
                st.seconds = elapsed(&t0);
                let last = k + 1 == sets.len() && to == pts.len();
                s.safe_point(
                    last,
                    || format!("{name} grid point {to} of {}", pts.len()),
                    || st.encode(),
                )?;
            }
        }
    }
    let mut maps = Vec::new();
    for ((name, _, _), r) in sets.iter().zip(&st.values) {
        maps.push((
            format!("{name}_loss"),
            Matrix::from_vec(gy.len(), gx.len(), r.iter().map(|v| v.0).collect()),
        ));
        maps.push((
            format!("{name}_error"),
            Matrix::from_vec(gy.len(), gx.len(), r.iter().map(|v| v.1).collect()),
        ));
    }
    progress.finish();
    let seconds = elapsed(&t0);
    let curvature = match &cfg.curvature {
        None => None,
        Some(cg) => {
            let cm = cg.samples.unwrap_or(y.len()).min(y.len());
            let (xc, yc) = (x.rows_view(0, cm).to_owned(), &y[..cm]);
            let opts = CurvatureOptions {
                dense_limit: cg.dense_limit,
                tol: 1e-8,
                probes: 30,
                seed: cfg.seed,
            };
            progress.stage("curvature", (cg.grid_x.len() * cg.grid_y.len()) as u64);
            let coords: Vec<(f64, f64)> = cg
                .grid_y
                .iter()
                .flat_map(|&b| cg.grid_x.iter().map(move |&a| (a, b)))
                .collect();
            if crate::dist::size() > 1 {
                // One work item per curvature point, on whichever MPI rank.
                let found = crate::dist::map_items(
                    coords.len(),
                    |i| {
                        let (a, b) = coords[i];
                        let theta = point(&theta0, &dirs, &[a, b]);
                        geo.curvature(&theta, &stats, &[a, b], &xc, yc, &opts)
                    },
                    || progress.tick(),
                )?;
                st.curvature = coords
                    .iter()
                    .zip(found)
                    .map(|(&(x, y), curvature)| CurvatureSample { x, y, curvature })
                    .collect();
            } else {
                (0..st.curvature.len()).for_each(|_| progress.tick());
            }
            for (i, &(a, b)) in coords.iter().enumerate().skip(st.curvature.len()) {
                let theta = point(&theta0, &dirs, &[a, b]);
                let c = geo.curvature(&theta, &stats, &[a, b], &xc, yc, &opts)?;
                st.curvature.push(CurvatureSample {
                    x: a,
                    y: b,
                    curvature: c,
                });
                progress.tick();
                test_point("point");
                if let Some(s) = session.as_mut() {
                    st.seconds = seconds;
                    s.safe_point(
                        i + 1 == coords.len(),
                        || format!("curvature point {} of {}", i + 1, coords.len()),
                        || st.encode(),
                    )?;
                }
            }
            progress.finish();
            let mut fields: [Vec<f64>; 4] = Default::default();
            for p in &st.curvature {
                fields[0].push(p.curvature.lambda_max);
                fields[1].push(p.curvature.lambda_min);
                fields[2].push(p.curvature.ratio);
                fields[3].push(p.curvature.trace);
            }
            let points = std::mem::take(&mut st.curvature);
            let names = ["lambda_max", "lambda_min", "abs_ratio_min_max", "trace"];
            let (ny, nx) = (cg.grid_y.len(), cg.grid_x.len());
            Some(CurvatureMaps {
                grid_x: cg.grid_x.clone(),
                grid_y: cg.grid_y.clone(),
                maps: names
                    .iter()
                    .zip(fields)
                    .map(|(n, f)| (n.to_string(), Matrix::from_vec(ny, nx, f)))
                    .collect(),
                points,
                samples: cm,
            })
        }
    };
    Ok(SurfaceResult {
        direction_x: dx,
        direction_y: dy,
        theta0,
        grid_x: gx.clone(),
        grid_y: gy.clone(),
        maps,
        curvature,
        trajectory,
        samples: y.len(),
        seconds,
        bn: BnReport::new(&geo, cfg.bn_stats, y.len(), false),
    })
}

/// Value of the `format` metadata key of surface files.
pub const SURFACE_FORMAT: &str = "landscape-surface";

/// Writes a surface as one safetensors file: `grid_x`, `grid_y`, the maps,
/// `direction_x`, `direction_y`, `theta0`, `trajectory_xy` (with a trajectory) and
/// the curvature grids and maps; metadata `format`, `layout`, both direction
/// descriptions, the BatchNorm mode and statistics, plus `extra` (the CLI adds the
/// model description and the provenance).
pub fn write_surface_file(
    path: &Path,
    s: &SurfaceResult,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    let p = s.theta0.len();
    let mut tensors = vec![
        RawTensor::f64("grid_x", vec![s.grid_x.len()], &s.grid_x),
        RawTensor::f64("grid_y", vec![s.grid_y.len()], &s.grid_y),
        RawTensor::f64("direction_x", vec![p], &s.direction_x.values),
        RawTensor::f64("direction_y", vec![p], &s.direction_y.values),
        RawTensor::f64("theta0", vec![p], &s.theta0),
    ];
    let mat = |n: &str, m: &Matrix<f64>| RawTensor::f64(n, vec![m.rows(), m.cols()], m.as_slice());
    for (n, m) in &s.maps {
        tensors.push(mat(n, m));
    }
    if let Some(t) = &s.trajectory {
        let flat: Vec<f64> = t.coords.iter().flat_map(|&(a, b)| [a, b]).collect();
        tensors.push(RawTensor::f64(
            "trajectory_xy",
            vec![t.coords.len(), 2],
            &flat,
        ));
    }
    if let Some(c) = &s.curvature {
        tensors.push(RawTensor::f64(
            "curvature_grid_x",
            vec![c.grid_x.len()],
            &c.grid_x,
        ));
        tensors.push(RawTensor::f64(
            "curvature_grid_y",
            vec![c.grid_y.len()],
            &c.grid_y,
        ));
        for (n, m) in &c.maps {
            tensors.push(mat(n, m));
        }
    }
    let mut meta = extra.clone();
    meta.insert("format".into(), SURFACE_FORMAT.into());
    meta.insert(
        "layout".into(),
        "value[i, j] at theta0 + grid_x[j] direction_x + grid_y[i] direction_y; parameter order: the trainable tensors in state-dict order ([vec(W0), b0, ...] for an MLP), each flattened row-major".into(),
    );
    meta.insert("direction_x".into(), s.direction_x.info.to_string());
    meta.insert("direction_y".into(), s.direction_y.info.to_string());
    meta.insert(
        "bn_mode".into(),
        serde_json::to_string(&s.bn.bn_mode).unwrap_or_default(),
    );
    meta.insert("bn_statistics".into(), s.bn.bn_statistics.clone());
    write_safetensors(path, &tensors, &meta)
}

/// Named maps over a grid (rows follow the y grid).
pub type NamedMaps = Vec<(String, Matrix<f64>)>;

/// The contents of a surface file that its figures need.
#[derive(Clone, Debug)]
pub struct SurfaceFile {
    pub grid_x: Vec<f64>,
    pub grid_y: Vec<f64>,
    /// Those of `train_loss`, `train_error`, `test_loss`, `test_error` present.
    pub maps: Vec<(String, Matrix<f64>)>,
    /// Curvature grid `(x, y)` and maps, when present.
    pub curvature: Option<(Vec<f64>, Vec<f64>, NamedMaps)>,
    pub trajectory_xy: Option<Vec<(f64, f64)>>,
}

/// Reads a file written by [`write_surface_file`].
pub fn read_surface_file(path: &Path) -> Result<SurfaceFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::InvalidArgument(format!("{}: not a safetensors file: {e}", path.display()))
    })?;
    let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
        let t = st.tensor(name).map_err(|e| {
            Error::InvalidArgument(format!("{}: tensor {name}: {e}", path.display()))
        })?;
        if t.dtype() != safetensors::Dtype::F64 {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor {name} is not f64",
                path.display()
            )));
        }
        let v = t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok((t.shape().to_vec(), v))
    };
    let matrix = |name: &str| -> Result<Matrix<f64>> {
        let (shape, v) = read(name)?;
        if shape.len() != 2 || shape[0] * shape[1] != v.len() {
            return Err(Error::InvalidArgument(format!(
                "{}: tensor {name} is not a matrix",
                path.display()
            )));
        }
        Ok(Matrix::from_vec(shape[0], shape[1], v))
    };
    let (_, grid_x) = read("grid_x")?;
    let (_, grid_y) = read("grid_y")?;
    let mut maps = Vec::new();
    for name in ["train_loss", "train_error", "test_loss", "test_error"] {
        if st.tensor(name).is_ok() {
            maps.push((name.to_string(), matrix(name)?));
        }
    }
    let curvature = match (read("curvature_grid_x"), read("curvature_grid_y")) {
        (Ok((_, cx)), Ok((_, cy))) => {
            let mut cm = Vec::new();
            for name in ["lambda_max", "lambda_min", "abs_ratio_min_max", "trace"] {
                cm.push((name.to_string(), matrix(name)?));
            }
            Some((cx, cy, cm))
        }
        _ => None,
    };
    let trajectory_xy = read("trajectory_xy")
        .ok()
        .filter(|(shape, v)| shape.len() == 2 && shape[1] == 2 && v.len() == 2 * shape[0])
        .map(|(_, v)| v.chunks(2).map(|c| (c[0], c[1])).collect());
    Ok(SurfaceFile {
        grid_x,
        grid_y,
        maps,
        curvature,
        trajectory_xy,
    })
}

/// `landscape connect`: mode connectivity between two models.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectConfig {
    /// `bezier` or `polychain` (the linear path is always reported too).
    pub curve: CurveKind,
    pub training: BendTraining,
    /// Points in `t` along each path.
    pub points: usize,
    /// Points in `t` where the top Hessian eigenvalue is computed.
    pub eigen_points: usize,
    /// The first N training samples for the eigenvalues.
    pub eigen_samples: usize,
    /// Points per side of the loss map on the plane through the ends and the bend
    /// (`None`: no map).
    pub plane_grid: Option<usize>,
    pub bn_mode: BnMode,
    /// Networks with BatchNorm: batch size of the statistics recomputed at every point
    /// in eval mode, and of the bend's saved statistics.
    pub bn_recompute_batch: usize,
}

impl ConnectConfig {
    /// The CLI's defaults: 41 points, 11 eigenvalue points on 1000 samples, no plane
    /// map, eval mode, statistics in batches of 128.
    pub fn new(curve: CurveKind, training: BendTraining) -> Self {
        Self {
            curve,
            training,
            points: 41,
            eigen_points: 11,
            eigen_samples: 1000,
            plane_grid: None,
            bn_mode: BnMode::Eval,
            bn_recompute_batch: 128,
        }
    }
}

/// Loss and error along one path on one split.
#[derive(Clone, Debug, Serialize)]
pub struct PathValues {
    pub kind: CurveKind,
    pub split: String,
    pub loss: Vec<f64>,
    pub error: Vec<f64>,
}

/// The name of a curve kind in results (`linear`, `bezier`, `polychain`).
pub fn curve_name(kind: CurveKind) -> &'static str {
    match kind {
        CurveKind::Linear => "linear",
        CurveKind::Bezier => "bezier",
        CurveKind::Polychain => "polychain",
    }
}

impl PathValues {
    /// `{kind}_{split}`, e.g. `linear_train`.
    pub fn name(&self) -> String {
        format!("{}_{}", curve_name(self.kind), self.split)
    }

    pub fn max_loss(&self) -> f64 {
        self.loss.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// The highest loss on the path above the higher of its two ends.
    pub fn barrier(&self) -> f64 {
        self.max_loss() - self.loss[0].max(self.loss[self.loss.len() - 1])
    }

    pub fn max_error(&self) -> f64 {
        self.error.iter().copied().fold(0.0, f64::max)
    }
}

/// The top Hessian eigenvalue along one path.
#[derive(Clone, Debug, Serialize)]
pub struct EigenPath {
    pub kind: CurveKind,
    pub lambda_max: Vec<f64>,
    pub residual: Vec<f64>,
}

/// `ln(train loss)` on the plane through the ends and the bend (`u` along `b - a`,
/// `v` towards the bend, `a` at the origin, coordinates in parameter distance).
#[derive(Clone, Debug)]
pub struct PlaneMap {
    pub grid_x: Vec<f64>,
    pub grid_y: Vec<f64>,
    pub ln_loss: Matrix<f64>,
    /// The trained curve projected on the plane (41 points).
    pub curve: Vec<(f64, f64)>,
}

/// The result of [`run_connect`].
#[derive(Clone, Debug)]
pub struct ConnectResult {
    pub curve: CurveKind,
    pub training: BendTraining,
    /// The trained bend as a network (BatchNorm statistics recomputed at the bend
    /// from the training samples).
    pub bend: Network<f64>,
    /// Mean minibatch loss of each epoch of bend training.
    pub history: Vec<f64>,
    pub train_seconds: f64,
    pub t: Vec<f64>,
    /// The linear path and the curve, on each split.
    pub paths: Vec<PathValues>,
    pub eigen_t: Vec<f64>,
    pub eigen: Vec<EigenPath>,
    pub eigen_samples: usize,
    /// Plane coordinates of `a`, `b` and the bend.
    pub plane_coordinates: [(f64, f64); 3],
    pub plane: Option<PlaneMap>,
    pub bn: BnReport,
}

impl ConnectResult {
    /// The `results` of `connect --json` (without file names).
    pub fn to_json(&self) -> serde_json::Value {
        let mut summary = serde_json::Map::new();
        let mut paths = serde_json::Map::new();
        for p in &self.paths {
            summary.insert(
                p.name(),
                serde_json::json!({"max_loss": p.max_loss(), "barrier_over_higher_end": p.barrier(), "max_error": p.max_error()}),
            );
            paths.insert(
                p.name(),
                serde_json::json!({"t": self.t, "loss": p.loss, "error": p.error}),
            );
        }
        let mut eig = serde_json::Map::new();
        for e in &self.eigen {
            eig.insert(
                curve_name(e.kind).into(),
                serde_json::json!({"t": self.eigen_t, "lambda_max": e.lambda_max, "residual": e.residual}),
            );
        }
        let [a, b, bend] = self.plane_coordinates;
        serde_json::json!({
            "curve": self.curve,
            "bend_training": {"config": self.training, "epoch_mean_batch_loss": self.history, "seconds": self.train_seconds},
            "summary": summary, "paths": paths, "top_eigenvalue": eig, "eigen_samples": self.eigen_samples,
            "plane_coordinates": {"a": a, "b": b, "bend": bend},
            "distance_a_b": b.0,
            "bn_mode": self.bn.bn_mode, "bn_statistics": self.bn.bn_statistics,
        })
    }
}

/// Mode connectivity between `a` (`t = 0`) and `b` (`t = 1`), two networks of the
/// same architecture: trains the bend of `cfg.curve` ([`super::train_bend_geo`]),
/// then reports loss and error (train and test) along the linear path and the curve,
/// the top Hessian eigenvalue along both (Lanczos on the first `eigen_samples`
/// training samples), the plane through the ends and the bend and, with
/// `plane_grid`, the loss map on that plane.
///
/// BatchNorm in eval mode: points on a path have no running statistics of their
/// own, so they are recomputed at every evaluated point (path points, eigenvalue
/// points, plane grid points, the ends included) by one train-mode pass over all the
/// training samples ([`recompute_bn_stats`], batches of `bn_recompute_batch`), as
/// Garipov et al. and the sphere paper do; the ends therefore use recomputed
/// statistics, not the files' own. In train mode each fixed batch uses its own
/// statistics.
pub fn run_connect(
    a: &Network<f64>,
    b: &Network<f64>,
    data: &DataBundle,
    cfg: &ConnectConfig,
    progress: &dyn Progress,
) -> Result<ConnectResult> {
    run_connect_checkpointed(a, b, data, cfg, progress, None)
}

/// [`run_connect`] with checkpoints of the bend training (see
/// [`super::train_bend_checkpointed`]); the trained bend is checkpointed too, so a run
/// stopped while evaluating the paths resumes without training again. The checkpoint
/// is tied to the configuration, both models, the data and the thread count.
pub fn run_connect_checkpointed(
    a: &Network<f64>,
    b: &Network<f64>,
    data: &DataBundle,
    cfg: &ConnectConfig,
    progress: &dyn Progress,
    ckpt: Option<&Checkpointing>,
) -> Result<ConnectResult> {
    if !same_architecture(a, b) {
        return Err(Error::InvalidArgument(
            "the two models have different architectures or settings".into(),
        ));
    }
    if cfg.curve == CurveKind::Linear {
        return Err(Error::InvalidArgument(
            "--curve must be bezier or polychain (the linear path is always reported)".into(),
        ));
    }
    if cfg.points < 2 || cfg.eigen_points < 2 || cfg.plane_grid.is_some_and(|n| n < 2) {
        return Err(Error::InvalidArgument(
            "--points, --eigen-points and --plane-grid must be at least 2".into(),
        ));
    }
    if cfg.eigen_samples == 0 {
        return Err(Error::InvalidArgument(
            "--eigen-samples must be at least 1".into(),
        ));
    }
    let geo = GeoModel::new(a.clone(), cfg.bn_mode)?;
    let (x, y) = training_rows(data, None)?;
    let stats = if geo.has_batchnorm() && cfg.bn_mode == BnMode::Eval {
        check_stats(
            &geo,
            BnStats::Recompute {
                batch: cfg.bn_recompute_batch,
            },
        )?;
        PointStats::Recompute {
            x: &x,
            batch: cfg.bn_recompute_batch,
        }
    } else {
        PointStats::Stored
    };
    let bn = BnReport::new(
        &geo,
        match stats {
            PointStats::Recompute { batch, .. } => BnStats::Recompute { batch },
            _ => BnStats::Stored,
        },
        y.len(),
        false,
    );
    let (ta, tb) = (a.param_vector(), b.param_vector());
    let mut session = match ckpt {
        Some(spec) => Some(Session::start(
            spec,
            "connect",
            serde_json::json!({
                "connect": cfg,
                "a_sha256": network_fingerprint(a),
                "b_sha256": network_fingerprint(b),
                "data": data.summary_json(),
            }),
        )?),
        None => None,
    };
    let steps = cfg.training.epochs * y.len().div_ceil(cfg.training.batch_size.max(1));
    progress.stage("bend", steps as u64);
    let (bend, history, train_seconds) = super::train_bend_checkpointed(
        &geo,
        cfg.curve,
        &ta,
        &tb,
        &x,
        &y,
        &cfg.training,
        session.as_mut(),
        || progress.tick(),
    )?;
    progress.finish();
    if session.is_some() {
        // The evaluation below has no safe points: a signal ends it at once, and a
        // resumed run starts from the trained bend.
        crate::io::checkpoint::restore_default_signals();
    }
    let ts: Vec<f64> = (0..cfg.points)
        .map(|i| i as f64 / (cfg.points - 1) as f64)
        .collect();
    // A path is on the plane theta = a + s1 (b - a) + s2 (bend - a).
    let d1: Vec<f64> = tb.iter().zip(&ta).map(|(p, q)| p - q).collect();
    let d2: Vec<f64> = bend.iter().zip(&ta).map(|(p, q)| p - q).collect();
    let coords = |kind: CurveKind, t: f64| -> Vec<f64> {
        let (_, wm, wb) = curve_weights(kind, t);
        vec![wb, wm]
    };
    let kinds = [CurveKind::Linear, cfg.curve];
    let sets = splits(&x, &y, data);
    progress.stage("paths", (2 * ts.len() * sets.len()) as u64);
    let mut paths = Vec::new();
    for (name, xs, ys) in &sets {
        let ev = geo.evaluator(vec![d1.clone(), d2.clone()], xs, ys, stats)?;
        for kind in kinds {
            let pts: Vec<Vec<f64>> = ts.iter().map(|&t| coords(kind, t)).collect();
            let r = ev.eval_many(&pts, || progress.tick())?;
            paths.push(PathValues {
                kind,
                split: name.to_string(),
                loss: r.iter().map(|v| v.0).collect(),
                error: r.iter().map(|v| v.1).collect(),
            });
        }
    }
    progress.finish();
    // Top Hessian eigenvalue along both paths (the first eigen_samples training samples).
    let em = cfg.eigen_samples.min(y.len());
    let (xe, ye) = (x.rows_view(0, em).to_owned(), &y[..em]);
    let eigen_t: Vec<f64> = (0..cfg.eigen_points)
        .map(|i| i as f64 / (cfg.eigen_points - 1) as f64)
        .collect();
    progress.stage("eigen", (2 * eigen_t.len()) as u64);
    let mut eigen = Vec::new();
    for kind in kinds {
        let (mut vals, mut res) = (Vec::new(), Vec::new());
        for &t in &eigen_t {
            let theta = curve_point(kind, &ta, &bend, &tb, t);
            let r = geo.top_eigenpairs_at(&theta, &stats, &xe, ye, 1, 300, cfg.training.seed)?;
            vals.push(r.values[0]);
            res.push(r.residuals[0]);
            progress.tick();
        }
        eigen.push(EigenPath {
            kind,
            lambda_max: vals,
            residual: res,
        });
    }
    progress.finish();
    let (u, v, pts3) = plane_basis(&ta, &tb, &bend)?;
    let plane = match cfg.plane_grid {
        None => None,
        Some(n) => {
            let xs: Vec<f64> = pts3.iter().map(|p| p.0).collect();
            let ys: Vec<f64> = pts3.iter().map(|p| p.1).collect();
            let lo_hi = |v: &[f64]| {
                (
                    v.iter().copied().fold(f64::INFINITY, f64::min),
                    v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            };
            let ((xmin, xmax), (ymin, ymax)) = (lo_hi(&xs), lo_hi(&ys));
            let (mx, my) = (
                0.25 * (xmax - xmin).max(1e-9),
                0.35 * (ymax - ymin).max(0.25 * (xmax - xmin)),
            );
            let axis = |lo: f64, hi: f64, m: f64| -> Vec<f64> {
                (0..n)
                    .map(|i| lo - m + (hi - lo + 2.0 * m) * i as f64 / (n - 1) as f64)
                    .collect()
            };
            let (gx, gy) = (axis(xmin, xmax, mx), axis(ymin, ymax, my));
            let ev = geo.evaluator(vec![u.clone(), v.clone()], &x, &y, stats)?;
            let grid_pts: Vec<Vec<f64>> = gy
                .iter()
                .flat_map(|&b| gx.iter().map(move |&a| vec![a, b]))
                .collect();
            progress.stage("plane", grid_pts.len() as u64);
            let r = ev.eval_many(&grid_pts, || progress.tick())?;
            progress.finish();
            let proj = |t: f64| {
                let p = curve_point(cfg.curve, &ta, &bend, &tb, t);
                let d: Vec<f64> = p.iter().zip(&ta).map(|(x, y)| x - y).collect();
                (dot(&d, &u), dot(&d, &v))
            };
            Some(PlaneMap {
                grid_x: gx,
                grid_y: gy,
                ln_loss: Matrix::from_vec(n, n, r.iter().map(|v| v.0.ln()).collect()),
                curve: (0..=40).map(|i| proj(i as f64 / 40.0)).collect(),
            })
        }
    };
    let mut bend_net = a.clone();
    bend_net.set_param_vector(&bend)?;
    recompute_bn_stats(&mut bend_net, &x, cfg.bn_recompute_batch.max(2))?;
    Ok(ConnectResult {
        curve: cfg.curve,
        training: cfg.training.clone(),
        bend: bend_net,
        history,
        train_seconds,
        t: ts,
        paths,
        eigen_t,
        eigen,
        eigen_samples: em,
        plane_coordinates: pts3,
        plane,
        bn,
    })
}
