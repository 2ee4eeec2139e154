//! The generalisation study: a population of MLPs trained over a
//! hyperparameter grid, each with its train/test accuracy, margin signatures at
//! chosen epochs and curvature measures at the end; then a linear model of the
//! log generalisation gap on the margin signature (least squares), its R^2 and
//! k-fold cross-validated R^2, and Kendall's tau of every measure against the
//! gap.
//!
//! * Generalisation gap: `train accuracy - test accuracy` of the final model
//!   (the train accuracy on the training labels, noisy ones included). The fit
//!   is `ln gap ~ b0 + b . s`, with `s` the signature(s) at one checkpoint epoch
//!   (always predicting the FINAL gap, so that early checkpoints say how early
//!   the margins predict the end). The fences are affine in the quartiles
//!   (`2.5 Q1 - 1.5 Q3`, `2.5 Q3 - 1.5 Q1`), so a linear model gains nothing
//!   from them and they would make the design rank deficient: the quartile fit
//!   uses (Q1, Q2, Q3) of each layer ([`SignatureKind::fit_columns`]); models with `gap <= 0` or a non-finite
//!   measure are left out of a fit (counted).
//! * Curvature, on the first `curvature.samples` training samples, evaluation
//!   mode, the final model: `lambda_max` of the loss Hessian (Lanczos, with its
//!   residual `||H v - l v||`), `tr H` (Hutchinson with Rademacher probes, with
//!   its standard error), GM (the mean norm of the gradients of fixed
//!   consecutive batches of the model's training batch size), and the sharpness
//!   `max_{||e|| <= rho} L(w + e) - L(w)` estimated by projected gradient
//!   ascent: `e_0 = rho g / ||g||`, then `e <- P(e + (rho / 2) g(w + e) / ||g(w + e)||)`
//!   for `steps` steps (`P` the projection onto the `rho`-ball), the largest loss
//!   increase seen over the iterates (a lower bound on the true maximum).
//! * Reproducibility: each model depends only on its grid point and seed, every
//!   computation inside runs in fixed blocks, so the records are identical for
//!   any `jobs`. Each finished model is written at once (atomically) to
//!   `DIR/models/model-NNNNN.json`; `resume` skips the models found there, so an
//!   interrupted study continues without retraining them and the outputs are
//!   byte-identical to an uninterrupted run (wall times go to `timings.csv`,
//!   which is not).

use super::stats::{cross_validate, kendall_tau, least_squares};
use super::{compute_margins, parse_layers, LayerSel, Signature, SignatureKind};
use crate::data::{self, DataBundle, DataOptions, Subset};
use crate::error::{Error, Result};
use crate::hessian::network::{BnMode, NetObjective};
use crate::linalg::{hutchinson, lanczos, LanczosOptions, Which};
use crate::nn::{Activation, Init, LossKind, Mlp, MlpConfig, Network};
use crate::rng::Rng;
use crate::tensor::Matrix;
use crate::train::{train_with_method, EpochMetrics, Optimizer, TrainConfig};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Training methods the study knows: `sgd`, or SGD steps on the gradient of
/// `sam:RHO`, `asam:RHO` (eta 0.01), `grad-norm:LAMBDA` (exact) or `trace:LAMBDA` (exact,
/// one Hutchinson probe); see [`crate::optim::methods::TrainMethod`].
pub const METHODS: &[&str] = &[
    "sgd",
    "sam:RHO",
    "asam:RHO",
    "grad-norm:LAMBDA",
    "trace:LAMBDA",
];

/// The [`crate::optim::methods::TrainMethod`] of a `grid.method` entry (see [`METHODS`]).
pub fn parse_method(s: &str) -> Result<crate::optim::methods::TrainMethod> {
    use crate::optim::methods::{GradNormForm, TraceForm, TrainMethod};
    let bad = || {
        Error::InvalidArgument(format!(
            "grid.method: unknown training method '{s}' (this build knows: {})",
            METHODS.join(", ")
        ))
    };
    if s == "sgd" {
        return Ok(TrainMethod::Plain);
    }
    let (name, value) = s.split_once(':').ok_or_else(bad)?;
    let v: f64 = value.trim().parse().map_err(|_| bad())?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "grid.method: '{s}' needs a finite value >= 0"
        )));
    }
    Ok(match name {
        "sam" => TrainMethod::Sam {
            rho: v,
            chunk: None,
        },
        "asam" => TrainMethod::Asam {
            rho: v,
            eta: 0.01,
            chunk: None,
        },
        "grad-norm" => TrainMethod::GradNormPenalty {
            lambda: v,
            form: GradNormForm::Exact,
        },
        "trace" => TrainMethod::TracePenalty {
            lambda: v,
            probes: 1,
            form: TraceForm::Exact,
        },
        _ => return Err(bad()),
    })
}

/// The hyperparameter grid: every combination is one model (per seed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// Hidden layers.
    pub depth: Vec<usize>,
    /// Width of every hidden layer.
    pub width: Vec<usize>,
    pub lr: Vec<f64>,
    pub batch_size: Vec<usize>,
    pub weight_decay: Vec<f64>,
    /// Training samples (the first n of the dataset's training set).
    pub train_size: Vec<usize>,
    /// Fraction of training labels replaced by a uniformly drawn other class.
    pub label_noise: Vec<f64>,
    /// Training method (see [`METHODS`]).
    pub method: Vec<String>,
    pub seed: Vec<u64>,
}

/// Curvature measurement settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurvatureConfig {
    /// Training samples the curvature is measured on (the first ones).
    pub samples: usize,
    /// Krylov dimension of Lanczos for `lambda_max`.
    pub lanczos_iter: usize,
    pub hutchinson_probes: usize,
    /// Sharpness radius (Euclidean, in parameter space).
    pub sharpness_rho: f64,
    pub sharpness_steps: usize,
}

/// A study: data, grid, training and measurement settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// Dataset (`mnist10k`, `digits` or a path readable by `--data`).
    pub data: String,
    /// Test samples (the first n of the test set; `null`: all).
    pub test_size: Option<usize>,
    pub grid: Grid,
    pub epochs: usize,
    /// SGD momentum.
    pub momentum: f64,
    pub activation: Activation,
    /// Epochs after which the margin signatures are recorded (the last is usually `epochs`).
    pub checkpoints: Vec<usize>,
    /// Layers of the signature (`input`, `hiddenK`, `output`); `hiddenK` must exist in every model.
    pub layers: Vec<String>,
    pub signature: SignatureKind,
    pub curvature: CurvatureConfig,
    /// Folds of the cross-validated R^2.
    pub folds: usize,
    /// Seeds the fold assignment.
    pub cv_seed: u64,
}

impl Default for StudyConfig {
    /// The study of docs/experiments/margins.md: 3 depths x 4 widths x 2 learning
    /// rates x 2 batch sizes x 2 train sizes x 2 seeds = 192 MLPs on mnist10k.
    fn default() -> Self {
        Self {
            data: "mnist10k".into(),
            test_size: Some(2000),
            grid: Grid {
                depth: vec![1, 2, 3],
                width: vec![16, 32, 64, 128],
                lr: vec![0.01, 0.05],
                batch_size: vec![32, 128],
                weight_decay: vec![0.0],
                train_size: vec![500, 2000],
                label_noise: vec![0.0],
                method: vec!["sgd".into()],
                seed: vec![0, 1],
            },
            epochs: 8,
            momentum: 0.9,
            activation: Activation::Relu,
            checkpoints: vec![1, 2, 4, 8],
            layers: vec!["input".into(), "hidden1".into(), "output".into()],
            signature: SignatureKind::Quartiles,
            curvature: CurvatureConfig {
                samples: 500,
                lanczos_iter: 20,
                hutchinson_probes: 10,
                sharpness_rho: 0.05,
                sharpness_steps: 5,
            },
            folds: 5,
            cv_seed: 0,
        }
    }
}

/// One grid point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    pub depth: usize,
    pub width: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub train_size: usize,
    pub label_noise: f64,
    pub method: String,
    pub seed: u64,
}

impl StudyConfig {
    /// Checks every setting; errors name the offending field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let g = &self.grid;
        let lists = [
            ("depth", g.depth.len()),
            ("width", g.width.len()),
            ("lr", g.lr.len()),
            ("batch_size", g.batch_size.len()),
            ("weight_decay", g.weight_decay.len()),
            ("train_size", g.train_size.len()),
            ("label_noise", g.label_noise.len()),
            ("method", g.method.len()),
            ("seed", g.seed.len()),
        ];
        if let Some((name, _)) = lists.iter().find(|(_, n)| *n == 0) {
            return bad(format!("grid.{name} is empty"));
        }
        if g.depth.contains(&0) || g.width.contains(&0) {
            return bad("grid.depth and grid.width must be at least 1".into());
        }
        if g.lr.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            return bad("grid.lr must be positive".into());
        }
        if g.batch_size.contains(&0) {
            return bad("grid.batch_size must be at least 1".into());
        }
        if g.weight_decay.iter().any(|&v| !(v >= 0.0 && v.is_finite())) {
            return bad("grid.weight_decay must be non-negative".into());
        }
        if g.train_size.iter().any(|&v| v < 2) {
            return bad("grid.train_size must be at least 2".into());
        }
        if g.label_noise.iter().any(|&v| !(0.0..1.0).contains(&v)) {
            return bad("grid.label_noise must be in [0, 1)".into());
        }
        for m in &g.method {
            parse_method(m)?;
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum must be in [0, 1)".into());
        }
        if self.checkpoints.is_empty() {
            return bad("checkpoints is empty".into());
        }
        if self.checkpoints.iter().any(|&e| e == 0 || e > self.epochs) {
            return bad(format!("checkpoints must be epochs in 1..={}", self.epochs));
        }
        if self.checkpoints.windows(2).any(|w| w[0] >= w[1]) {
            return bad("checkpoints must be increasing".into());
        }
        let min_depth = *g.depth.iter().min().expect("non-empty");
        self.layer_sels(min_depth)?;
        let c = &self.curvature;
        if c.samples == 0 || c.lanczos_iter < 2 || c.hutchinson_probes < 2 {
            return bad(
                "curvature: samples >= 1, lanczos_iter >= 2 and hutchinson_probes >= 2".into(),
            );
        }
        if !(c.sharpness_rho >= 0.0 && c.sharpness_rho.is_finite()) {
            return bad("curvature.sharpness_rho must be non-negative".into());
        }
        if self.folds < 2 {
            return bad("folds must be at least 2".into());
        }
        Ok(())
    }

    fn layer_sels(&self, hidden: usize) -> Result<Vec<LayerSel>> {
        if self.layers.is_empty() {
            return Err(Error::InvalidArgument("layers is empty".into()));
        }
        parse_layers(&self.layers.join(","), hidden)
    }

    /// Every grid point, in the fixed order (seed fastest, depth slowest).
    pub fn models(&self) -> Vec<Hyper> {
        let g = &self.grid;
        let mut out = Vec::new();
        for &depth in &g.depth {
            for &width in &g.width {
                for &lr in &g.lr {
                    for &batch_size in &g.batch_size {
                        for &weight_decay in &g.weight_decay {
                            for &train_size in &g.train_size {
                                for &label_noise in &g.label_noise {
                                    for method in &g.method {
                                        for &seed in &g.seed {
                                            out.push(Hyper {
                                                depth,
                                                width,
                                                lr,
                                                batch_size,
                                                weight_decay,
                                                train_size,
                                                label_noise,
                                                method: method.clone(),
                                                seed,
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Margin signatures after one epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointSignatures {
    pub epoch: usize,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    pub signatures: Vec<Signature>,
}

/// Curvature measures of the final model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Curvature {
    pub loss: f64,
    pub lambda_max: f64,
    pub lambda_residual: f64,
    pub trace: f64,
    pub trace_std_error: f64,
    pub gm: f64,
    pub sharpness: f64,
}

/// Everything recorded about one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub index: usize,
    pub hyper: Hyper,
    pub num_params: usize,
    pub history: Vec<EpochMetrics>,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// `train_accuracy - test_accuracy`.
    pub gap: f64,
    pub checkpoints: Vec<CheckpointSignatures>,
    /// `None` when training diverged (then also no checkpoints after it).
    pub curvature: Option<Curvature>,
    /// Why measurements are missing, if they are.
    pub failure: Option<String>,
}

/// The training set of one model: the first `n` samples, with label noise.
fn model_data(bundle: &DataBundle, h: &Hyper) -> Result<(Matrix<f64>, Vec<usize>)> {
    let n = h.train_size;
    if n > bundle.train.len() {
        return Err(Error::InvalidArgument(format!(
            "grid.train_size {n} exceeds the {} training samples of {}",
            bundle.train.len(),
            bundle.name
        )));
    }
    let x = bundle.train.x.rows_view(0, n).to_owned();
    let mut y = bundle.train.y[..n].to_vec();
    if h.label_noise > 0.0 {
        let k = bundle.classes as u64;
        let mut rng = Rng::derived(h.seed, 0x6e6f697365);
        for l in y.iter_mut() {
            if rng.uniform() < h.label_noise {
                let r = rng.uniform_below(k - 1) as usize;
                *l = if r >= *l { r + 1 } else { r };
            }
        }
    }
    Ok((x, y))
}

/// Accuracy from the engine's evaluation.
fn accuracy(net: &Network<f64>, x: &Matrix<f64>, y: &[usize]) -> Result<f64> {
    Ok(1.0 - crate::train::evaluate_network(net, x, y)?.1)
}

/// Trains and measures model `index` (grid point `h`).
pub fn run_model(
    cfg: &StudyConfig,
    bundle: &DataBundle,
    index: usize,
    h: &Hyper,
) -> Result<ModelRecord> {
    let (x, y) = model_data(bundle, h)?;
    let test = bundle.test.as_ref().ok_or_else(|| {
        Error::InvalidArgument(format!("dataset {} has no test set", bundle.name))
    })?;
    let mcfg = MlpConfig {
        input_dim: bundle.features,
        hidden: vec![h.width; h.depth],
        classes: bundle.classes,
        activation: cfg.activation,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let mut mlp = Mlp::<f64>::init(mcfg, Init::Kaiming, 1.0, h.seed)?;
    let tc = TrainConfig {
        epochs: cfg.epochs,
        batch_size: h.batch_size,
        optimizer: Optimizer::Sgd {
            lr: h.lr,
            momentum: cfg.momentum,
            weight_decay: h.weight_decay,
        },
        seed: h.seed,
    };
    let layers = cfg.layer_sels(h.depth)?;
    let mut checkpoints = Vec::new();
    let mut failure: Option<String> = None;
    let method = parse_method(&h.method)?;
    let history = train_with_method(
        &mut mlp,
        &x,
        &y,
        Some((&test.x, &test.y)),
        &tc,
        &method,
        None,
        |_, _, _| {},
        |m, metrics| {
            if failure.is_some() || !cfg.checkpoints.contains(&metrics.epoch) {
                return Ok(());
            }
            if !metrics.train_loss.is_finite() {
                failure = Some(format!("training diverged by epoch {}", metrics.epoch));
                return Ok(());
            }
            let net = Network::from_mlp(m);
            let margins = compute_margins(&net, &x, &y, &layers)?;
            match margins.signatures(cfg.signature) {
                Ok(signatures) => checkpoints.push(CheckpointSignatures {
                    epoch: metrics.epoch,
                    train_accuracy: 1.0 - metrics.train_error,
                    test_accuracy: 1.0 - metrics.test_error.unwrap_or(f64::NAN),
                    signatures,
                }),
                Err(e) => failure = Some(format!("epoch {}: {e}", metrics.epoch)),
            }
            Ok(())
        },
    )?
    .history;
    let net = Network::from_mlp(&mlp);
    let train_accuracy = accuracy(&net, &x, &y)?;
    let test_accuracy = accuracy(&net, &test.x, &test.y)?;
    let last = history.last().expect("epochs >= 1");
    let curvature = if failure.is_none() && last.train_loss.is_finite() {
        Some(measure_curvature(cfg, &net, &x, &y, h)?)
    } else {
        failure.get_or_insert_with(|| "training diverged".into());
        None
    };
    Ok(ModelRecord {
        index,
        hyper: h.clone(),
        num_params: net.num_params(),
        history,
        train_accuracy,
        test_accuracy,
        gap: train_accuracy - test_accuracy,
        checkpoints,
        curvature,
        failure,
    })
}

/// The curvature measures of the module documentation.
pub fn measure_curvature(
    cfg: &StudyConfig,
    net: &Network<f64>,
    x: &Matrix<f64>,
    y: &[usize],
    h: &Hyper,
) -> Result<Curvature> {
    let c = &cfg.curvature;
    let n = c.samples.min(y.len());
    let xs = x.rows_view(0, n).to_owned();
    let ys = &y[..n];
    let obj = NetObjective::new(net, &xs, ys, BnMode::Eval)?;
    let lz = lanczos(
        &obj,
        Which::Largest(1),
        &LanczosOptions {
            max_iter: c.lanczos_iter.min(obj.dim()),
            tol: 1e-8,
            seed: h.seed,
            check_every: 5,
        },
    )?;
    let tr = hutchinson(&obj, c.hutchinson_probes, h.seed)?;
    let norms = obj.batch_gradient_norms(h.batch_size)?;
    let gm = norms.iter().sum::<f64>() / norms.len() as f64;
    let (loss, sharpness) = sharpness(&obj, &net.params, c.sharpness_rho, c.sharpness_steps);
    Ok(Curvature {
        loss,
        lambda_max: lz.values[0],
        lambda_residual: lz.residuals[0],
        trace: tr.estimate,
        trace_std_error: tr.std_error,
        gm,
        sharpness,
    })
}

/// `(L(w), max over the ascent iterates of L(w + e) - L(w))`, see the module docs.
pub fn sharpness(
    obj: &NetObjective<'_>,
    params: &[Matrix<f64>],
    rho: f64,
    steps: usize,
) -> (f64, f64) {
    use crate::hessian::network::unflatten;
    let w: Vec<f64> = params
        .iter()
        .flat_map(|m| m.as_slice().iter().copied())
        .collect();
    let (l0, g0) = obj.loss_and_grad_at(params);
    let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
    let gn = norm(&g0);
    if rho == 0.0 || gn == 0.0 {
        return (l0, 0.0);
    }
    let mut e: Vec<f64> = g0.iter().map(|g| rho * g / gn).collect();
    let mut best = 0.0f64;
    for step in 0..=steps {
        let wp: Vec<f64> = w.iter().zip(&e).map(|(a, b)| a + b).collect();
        let pm = unflatten(&wp, params);
        let (l, g) = obj.loss_and_grad_at(&pm);
        if l.is_finite() {
            best = best.max(l - l0);
        }
        if step == steps {
            break;
        }
        let g_n = norm(&g);
        if !(g_n > 0.0 && g_n.is_finite()) {
            break;
        }
        for (ei, gi) in e.iter_mut().zip(&g) {
            *ei += 0.5 * rho * gi / g_n;
        }
        let en = norm(&e);
        if en > rho {
            for ei in e.iter_mut() {
                *ei *= rho / en;
            }
        }
    }
    (l0, best)
}

/// Options of a run that do not change its results.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Models trained at once.
    pub jobs: usize,
    /// Continue the study found in the output folder.
    pub resume: bool,
    /// Test hook: stop (with [`Error::Interrupted`]) once this many models have
    /// finished in this invocation.
    pub stop_after: Option<usize>,
}

fn config_path(dir: &Path) -> PathBuf {
    dir.join("study-config.json")
}

fn record_path(dir: &Path, index: usize) -> PathBuf {
    dir.join("models").join(format!("model-{index:05}.json"))
}

/// The dataset of a study.
pub fn load_data(cfg: &StudyConfig) -> Result<DataBundle> {
    let opts = DataOptions {
        test_subset: cfg.test_size.map_or(Subset::All, Subset::First),
        ..Default::default()
    };
    data::load(&cfg.data, &opts)
}

/// Trains (or, resuming, reads back) every model of the study into `dir`;
/// `on_done(finished, total)` after each model. Returns the records in grid order.
pub fn run_study(
    cfg: &StudyConfig,
    bundle: &DataBundle,
    dir: &Path,
    opts: &RunOptions,
    on_done: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<ModelRecord>> {
    cfg.validate()?;
    if opts.jobs == 0 {
        return Err(Error::InvalidArgument("--jobs must be at least 1".into()));
    }
    let cfg_text = serde_json::to_string_pretty(cfg).expect("config serialises");
    // With several MPI ranks rank 0 alone checks and prepares the folder.
    if crate::dist::distributed() {
        crate::dist::from_root(|| {
            prepare_dir(dir, &cfg_text, opts.resume).map_err(|e| e.to_string())
        })
        .map_err(Error::InvalidArgument)?;
    } else {
        prepare_dir(dir, &cfg_text, opts.resume)?;
    }
    let models = cfg.models();
    let total = models.len();
    // Models already finished (resume); with several MPI ranks, rank 0's.
    let mut records: Vec<Option<ModelRecord>> = if crate::dist::distributed() {
        crate::dist::from_root(|| finished_records(dir, &models).map_err(|e| e.to_string()))
            .map_err(Error::InvalidArgument)?
    } else {
        finished_records(dir, &models)?
    };
    let pending: Vec<usize> = (0..total).filter(|&i| records[i].is_none()).collect();
    let done = AtomicUsize::new(total - pending.len());
    on_done(done.load(Ordering::SeqCst), total);
    if crate::dist::distributed() {
        // Several MPI ranks: one model per work item; rank 0 writes the records.
        let out = crate::dist::map_items(
            pending.len(),
            |k| {
                let t0 = std::time::Instant::now();
                let rec = run_model(cfg, bundle, pending[k], &models[pending[k]])?;
                Ok::<_, Error>((rec, t0.elapsed().as_secs_f64()))
            },
            || on_done(done.fetch_add(1, Ordering::SeqCst) + 1, total),
        )?;
        let mut timings = Vec::with_capacity(out.len());
        for (&i, (rec, secs)) in pending.iter().zip(out) {
            let text = serde_json::to_string_pretty(&rec).expect("record serialises");
            crate::io::write_atomic(&record_path(dir, i), format!("{text}\n").as_bytes())?;
            timings.push((i, secs));
            records[i] = Some(rec);
        }
        append_timings(dir, &timings)?;
        return Ok(records.into_iter().map(|r| r.expect("all done")).collect());
    }
    let finished_here = AtomicUsize::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs)
        .build()
        .map_err(|e| Error::InvalidArgument(format!("cannot start {} jobs: {e}", opts.jobs)))?;
    let timings = std::sync::Mutex::new(Vec::<(usize, f64)>::new());
    let results: Vec<(usize, Option<Result<ModelRecord>>)> = pool.install(|| {
        pending
            .par_iter()
            .with_max_len(1)
            .map(|&i| {
                if opts
                    .stop_after
                    .is_some_and(|k| finished_here.load(Ordering::SeqCst) >= k)
                    || crate::io::checkpoint::stop_requested().is_some()
                {
                    return (i, None);
                }
                let t0 = std::time::Instant::now();
                let r = run_model(cfg, bundle, i, &models[i]).and_then(|rec| {
                    let text = serde_json::to_string_pretty(&rec).expect("record serialises");
                    crate::io::write_atomic(&record_path(dir, i), format!("{text}\n").as_bytes())?;
                    Ok(rec)
                });
                timings
                    .lock()
                    .expect("timings")
                    .push((i, t0.elapsed().as_secs_f64()));
                finished_here.fetch_add(1, Ordering::SeqCst);
                on_done(done.fetch_add(1, Ordering::SeqCst) + 1, total);
                (i, Some(r))
            })
            .collect()
    });
    append_timings(dir, &timings.into_inner().expect("timings"))?;
    let mut skipped = 0;
    for (i, r) in results {
        match r {
            Some(r) => records[i] = Some(r?),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        let signal = crate::io::checkpoint::stop_requested()
            .map_or("stop-after".to_string(), |s| {
                crate::io::checkpoint::signal_name(s).to_string()
            });
        return Err(Error::Interrupted {
            signal,
            position: format!("{} of {total} models finished", total - skipped),
            dir: dir.to_path_buf(),
        });
    }
    Ok(records.into_iter().map(|r| r.expect("all done")).collect())
}

/// Checks the study folder `dir` against the configuration (a new study, or one to
/// resume with the same configuration), writes the configuration and creates `models/`.
fn prepare_dir(dir: &Path, cfg_text: &str, resume: bool) -> Result<()> {
    let cpath = config_path(dir);
    if cpath.exists() {
        let old = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
        if !resume {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a study: pass --resume to continue it, or choose another --out",
                dir.display()
            )));
        }
        if old.trim_end() != cfg_text.trim_end() {
            return Err(Error::InvalidArgument(format!(
                "{} holds a study with another configuration; resume it with the same config",
                cpath.display()
            )));
        }
    } else {
        std::fs::create_dir_all(dir.join("models")).map_err(|e| Error::io(dir, e))?;
        crate::io::write_atomic(&cpath, format!("{cfg_text}\n").as_bytes())?;
    }
    std::fs::create_dir_all(dir.join("models")).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// The records of the models of `models` already in `dir` (a resumed study).
fn finished_records(dir: &Path, models: &[Hyper]) -> Result<Vec<Option<ModelRecord>>> {
    let mut records: Vec<Option<ModelRecord>> = vec![None; models.len()];
    for (i, h) in models.iter().enumerate() {
        let p = record_path(dir, i);
        if p.exists() {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let r: ModelRecord = serde_json::from_str(&text).map_err(|e| {
                Error::InvalidArgument(format!("{}: not a model record: {e}", p.display()))
            })?;
            if r.index != i || &r.hyper != h {
                return Err(Error::InvalidArgument(format!(
                    "{} belongs to another grid point",
                    p.display()
                )));
            }
            records[i] = Some(r);
        }
    }
    Ok(records)
}

/// Appends `index,seconds` rows to `DIR/timings.csv` (wall times; not reproducible).
fn append_timings(dir: &Path, rows: &[(usize, f64)]) -> Result<()> {
    let p = dir.join("timings.csv");
    let mut text = std::fs::read_to_string(&p).unwrap_or_else(|_| "model,seconds\n".into());
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| r.0);
    for (i, s) in rows {
        text.push_str(&format!("{i},{s:.3}\n"));
    }
    crate::io::write_atomic(&p, text.as_bytes())
}

/// One fit of `ln gap` on features, with its R^2, cross-validated R^2 and taus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// `all` (every layer's signature) or a layer name.
    pub features: String,
    pub epoch: usize,
    pub models: usize,
    pub coefficients: Vec<f64>,
    pub r2: f64,
    pub cv_r2: f64,
    /// Kendall tau between the in-sample prediction and the gap.
    pub tau: f64,
    /// Kendall tau between the out-of-fold prediction and the gap.
    pub cv_tau: f64,
    /// Model indices used, with true `ln gap`, fitted and out-of-fold prediction.
    pub points: Vec<(usize, f64, f64, f64)>,
}

/// Kendall tau of one curvature measure against the gap.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasureReport {
    pub measure: String,
    pub models: usize,
    pub tau: f64,
}

/// The analysis of a finished study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub models: usize,
    /// Models with a positive gap and every measurement (used by the fits).
    pub usable: usize,
    pub failed: usize,
    pub gap_mean: f64,
    pub gap_min: f64,
    pub gap_max: f64,
    pub fits: Vec<FitReport>,
    /// Fits that could not be made (too few usable models, rank deficiency).
    pub skipped_fits: Vec<String>,
    pub measures: Vec<MeasureReport>,
}

/// Fits the signature models at every checkpoint and the curvature taus.
pub fn analyse(cfg: &StudyConfig, records: &[ModelRecord]) -> Result<Analysis> {
    let usable: Vec<&ModelRecord> = records
        .iter()
        .filter(|r| {
            r.failure.is_none()
                && r.gap > 0.0
                && r.checkpoints.len() == cfg.checkpoints.len()
                && r.curvature.is_some()
        })
        .collect();
    let gaps: Vec<f64> = records.iter().map(|r| r.gap).collect();
    let mut fits = Vec::new();
    let mut skipped = Vec::new();
    let layer_names: Vec<String> = cfg.layers.iter().map(|s| s.trim().to_string()).collect();
    for (c, &epoch) in cfg.checkpoints.iter().enumerate() {
        let mut groups: Vec<(String, Vec<usize>)> =
            vec![("all".into(), (0..layer_names.len()).collect())];
        for (k, l) in layer_names.iter().enumerate() {
            groups.push((l.clone(), vec![k]));
        }
        for (name, ks) in groups {
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            let mut idx = Vec::new();
            for r in &usable {
                let row: Vec<f64> = ks
                    .iter()
                    .flat_map(|&k| {
                        let v = &r.checkpoints[c].signatures[k].values;
                        cfg.signature.fit_columns().iter().map(move |&j| v[j])
                    })
                    .collect();
                if row.iter().all(|v| v.is_finite()) {
                    xs.push(row);
                    ys.push(r.gap.ln());
                    idx.push(r.index);
                }
            }
            let (fit, cv) = match least_squares(&xs, &ys)
                .and_then(|f| Ok((f, cross_validate(&xs, &ys, cfg.folds, cfg.cv_seed)?)))
            {
                Ok(v) => v,
                Err(e) => {
                    skipped.push(format!("epoch {epoch}, {name}: {e}"));
                    continue;
                }
            };
            fits.push(FitReport {
                features: name,
                epoch,
                models: ys.len(),
                coefficients: fit.coefficients.clone(),
                r2: fit.r2,
                cv_r2: cv.r2,
                tau: kendall_tau(&fit.fitted, &ys),
                cv_tau: kendall_tau(&cv.predictions, &ys),
                points: idx
                    .iter()
                    .zip(&ys)
                    .zip(fit.fitted.iter().zip(&cv.predictions))
                    .map(|((&i, &y), (&f, &p))| (i, y, f, p))
                    .collect(),
            });
        }
    }
    let mut measures = Vec::new();
    type Get = fn(&Curvature) -> f64;
    let getters: [(&str, Get); 4] = [
        ("lambda_max", |c| c.lambda_max),
        ("trace", |c| c.trace),
        ("gm", |c| c.gm),
        ("sharpness", |c| c.sharpness),
    ];
    for (name, get) in getters {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in &usable {
            let v = get(r.curvature.as_ref().expect("usable"));
            if v.is_finite() {
                a.push(v);
                b.push(r.gap);
            }
        }
        measures.push(MeasureReport {
            measure: name.into(),
            models: a.len(),
            tau: kendall_tau(&a, &b),
        });
    }
    Ok(Analysis {
        models: records.len(),
        usable: usable.len(),
        failed: records.iter().filter(|r| r.failure.is_some()).count(),
        gap_mean: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
        gap_min: gaps.iter().copied().fold(f64::INFINITY, f64::min),
        gap_max: gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        fits,
        skipped_fits: skipped,
        measures,
    })
}

/// One CSV row per model: grid point, accuracies, gap, curvature and the final signatures.
pub fn models_csv(cfg: &StudyConfig, records: &[ModelRecord]) -> String {
    let mut s = String::from(
        "index,depth,width,lr,batch_size,weight_decay,train_size,label_noise,method,seed,num_params,train_accuracy,test_accuracy,gap,loss,lambda_max,lambda_residual,trace,trace_std_error,gm,sharpness,failure",
    );
    let names = cfg.signature.names();
    for l in &cfg.layers {
        for n in names {
            s.push_str(&format!(",{}_{n}", l.trim()));
        }
    }
    s.push('\n');
    let f = |v: f64| format!("{v:e}");
    for r in records {
        let h = &r.hyper;
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.index,
            h.depth,
            h.width,
            h.lr,
            h.batch_size,
            h.weight_decay,
            h.train_size,
            h.label_noise,
            h.method,
            h.seed,
            r.num_params,
            f(r.train_accuracy),
            f(r.test_accuracy),
            f(r.gap)
        ));
        match &r.curvature {
            Some(c) => s.push_str(&format!(
                ",{},{},{},{},{},{},{}",
                f(c.loss),
                f(c.lambda_max),
                f(c.lambda_residual),
                f(c.trace),
                f(c.trace_std_error),
                f(c.gm),
                f(c.sharpness)
            )),
            None => s.push_str(",,,,,,,"),
        }
        s.push_str(&format!(
            ",{}",
            r.failure.as_deref().unwrap_or("").replace(',', ";")
        ));
        let last = r
            .checkpoints
            .last()
            .filter(|c| Some(c.epoch) == cfg.checkpoints.last().copied());
        for k in 0..cfg.layers.len() {
            for j in 0..names.len() {
                match last.and_then(|c| c.signatures.get(k)) {
                    Some(sig) => s.push_str(&format!(",{}", f(sig.values[j]))),
                    None => s.push(','),
                }
            }
        }
        s.push('\n');
    }
    s
}
