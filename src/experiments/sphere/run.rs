//! Training runs on the sphere, elr sweeps (parallel, resumable), fine-tuning
//! from a checkpoint, regime classification and mode connectivity on the sphere.
//!
//! Reproducibility: the batch order of absolute epoch `e` is
//! `Rng::derived(seed, e).permutation(n)` and the random-walk directions of epoch
//! `e` come from `Rng::derived(seed ^ RW_STREAM, e)`, so every run of a sweep (same
//! seed) shares the initialisation and the batch order, and a resumed run continues
//! exactly where it stopped (checkpoints hold the f64 master weights and the
//! BatchNorm buffers bit for bit).

use super::metrics::{batch_pass, fisher_trace, top_eigenvalue, FisherMethod};
use super::{
    angle_between, norm, project_tangent, sam_ascent_point, sphere_step, ElrSchedule, SiSpec,
    Spheres, StepKind,
};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::experiments::geometry::recompute_bn_stats;
use crate::io::network_file::{load_network, save_network, NetworkImport};
use crate::io::provenance::Provenance;
use crate::nn::{BnState, Network};
use crate::rng::Rng;
use crate::tensor::{Matrix, Scalar};
use crate::train::{evaluate_network, TrainModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

const RW_STREAM: u64 = 0x5eed_0a1c_0ffe_e001;

/// What is measured, and how often.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// Measure every this many epochs (and always at the start and the end).
    pub every: usize,
    /// Train loss, error and GM over the first `n` training samples (all when `None`).
    pub metric_samples: Option<usize>,
    /// Fisher trace and lambda_max every this many epochs (0: never; always at
    /// the end when positive).
    pub curvature_every: usize,
    /// Samples (the first ones of the training set) for the curvature.
    pub curvature_samples: usize,
    /// Train-mode BatchNorm batch size for the curvature.
    pub curvature_batch: usize,
    pub fisher: FisherMethod,
    /// Lanczos iterations for lambda_max.
    pub lanczos_iter: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            every: 1,
            metric_samples: None,
            curvature_every: 5,
            curvature_samples: 512,
            curvature_batch: 128,
            fisher: FisherMethod::Hutchinson { probes: 8 },
            lanczos_iter: 20,
        }
    }
}

/// One training run on the sphere.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SphereRunConfig {
    /// Epochs to train in this run (counted from where it starts).
    pub epochs: usize,
    pub batch_size: usize,
    /// Seeds the batch order and the random-walk directions.
    pub seed: u64,
    pub schedule: ElrSchedule,
    pub step: StepKind,
    /// Forward and backward passes in f32 (the SI master weights stay f64).
    pub f32: bool,
    pub metrics: MetricsConfig,
    /// SAM on the sphere with this ascent length rho (see [`sam_ascent_point`]): the step
    /// uses the gradient at the retracted ascent point, projected onto the tangent space
    /// at `w`; the ascent pass leaves the BatchNorm running statistics alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sam: Option<f64>,
}

impl SphereRunConfig {
    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.batch_size < 2 {
            return bad("the batch size must be at least 2 (BatchNorm)");
        }
        if self.metrics.every == 0 {
            return bad("--metrics-every must be at least 1");
        }
        if let Some(rho) = self.sam {
            if !(rho.is_finite() && rho >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "--sam rho must be a finite number >= 0, got {rho}"
                )));
            }
            if matches!(self.step, StepKind::RandomWalk | StepKind::Ascent) {
                return bad("--sam applies to --step projected or riemannian");
            }
        }
        if self.metrics.curvature_every > 0
            && (self.metrics.curvature_samples < 2 || self.metrics.curvature_batch < 2)
        {
            return bad("the curvature needs at least 2 samples and a batch of at least 2");
        }
        Ok(())
    }
}

/// The measurements of one epoch. `epoch` is absolute (fine-tuning continues the
/// count of the checkpoint); epoch `start` with `steps = 0` is the starting point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    /// elr at the end of the epoch.
    pub elr: f64,
    pub steps: usize,
    /// Mean of the minibatch losses seen while training this epoch.
    pub mean_batch_loss: Option<f64>,
    /// Train loss and error: train-mode BatchNorm, fixed unshuffled batches.
    pub train_loss: f64,
    pub train_error: f64,
    /// Test loss and error: eval-mode BatchNorm (running statistics).
    pub test_loss: Option<f64>,
    pub test_error: Option<f64>,
    /// Mean batch-gradient norm w.r.t. the SI weights on the sphere of radius rho.
    pub gm: f64,
    /// `gm * rho`: the same on the unit sphere (the seed's "effective" GM).
    pub gm_effective: f64,
    /// Fisher trace of the SI block, its standard error, and `tr F * rho^2`.
    pub fisher_trace: Option<f64>,
    pub fisher_trace_se: Option<f64>,
    pub fisher_effective: Option<f64>,
    /// Top Hessian eigenvalue of the SI block, its residual, and `lambda * rho^2`.
    pub lambda_max: Option<f64>,
    pub lambda_residual: Option<f64>,
    pub lambda_effective: Option<f64>,
    /// `||w_SI||` and the largest relative deviation of a group's norm from its radius.
    pub radius: f64,
    pub radius_rel_dev: f64,
    /// `1 - cos(w_e, w_prev)` between the SI weights of this and the previous measured epoch.
    pub cos_dist_prev: Option<f64>,
    /// Angle (radians) between the SI weights and those at the start of the run.
    pub angle_from_start: f64,
    /// Mean realised angle per step this epoch, and the mean step length before retraction.
    pub mean_step_angle: Option<f64>,
    pub mean_step_length: Option<f64>,
    /// Wall time of the epoch (its steps and its measurement); for the record before
    /// training, of the measurement alone.
    pub seconds: f64,
}

/// A run's state: the network (f64 master), its SI split and spheres, and the history.
#[derive(Clone, Debug)]
pub struct SphereRun {
    pub net: Network<f64>,
    pub spec: SiSpec,
    pub spheres: Spheres,
    /// Absolute epoch of the start point and of the last completed epoch.
    pub start_epoch: usize,
    pub epoch: usize,
    pub history: Vec<EpochRecord>,
    /// SI vector at the start and at the last measurement.
    pub w_start: Vec<f64>,
    pub w_prev: Vec<f64>,
}

impl SphereRun {
    /// A run starting at `net` (already on its spheres) at absolute epoch `epoch`.
    pub fn new(net: Network<f64>, spec: SiSpec, spheres: Spheres, epoch: usize) -> Self {
        let w = spec.vector(&net);
        Self {
            net,
            spec,
            spheres,
            start_epoch: epoch,
            epoch,
            history: Vec::new(),
            w_start: w.clone(),
            w_prev: w,
        }
    }
}

/// Progress and checkpoint hooks of a run.
pub trait RunHooks {
    /// After every training step.
    fn step(&mut self) {}
    /// After every measured epoch (checkpoints, output files).
    fn epoch(&mut self, _run: &SphereRun, _rec: &EpochRecord) -> Result<()> {
        Ok(())
    }
}

/// Hooks that do nothing.
pub struct NoHooks;
impl RunHooks for NoHooks {}

/// Trains `run` for `cfg.epochs` epochs from its current epoch, measuring as
/// configured (the start point too when the history is empty).
pub fn train_on_sphere(
    run: &mut SphereRun,
    cfg: &SphereRunConfig,
    train: &Dataset,
    test: Option<&Dataset>,
    hooks: &mut dyn RunHooks,
) -> Result<()> {
    cfg.validate()?;
    run.net.check_input(&train.x)?;
    if let Some(&bad) = train.y.iter().find(|&&y| y >= run.net.arch.classes) {
        return Err(Error::Shape(format!(
            "label {bad} is out of range for a model with {} outputs",
            run.net.arch.classes
        )));
    }
    if train.len() < 2 {
        return Err(Error::InvalidArgument(
            "the training set needs at least 2 samples".into(),
        ));
    }
    if cfg.f32 {
        train_typed::<f32>(run, cfg, train, test, hooks)
    } else {
        train_typed::<f64>(run, cfg, train, test, hooks)
    }
}

fn train_typed<T: Scalar>(
    run: &mut SphereRun,
    cfg: &SphereRunConfig,
    train: &Dataset,
    test: Option<&Dataset>,
    hooks: &mut dyn RunHooks,
) -> Result<()> {
    let x: Matrix<T> = train.x.cast();
    let tx: Option<(Matrix<T>, &[usize])> = test
        .filter(|t| !t.is_empty())
        .map(|t| (t.x.cast(), t.y.as_slice()));
    let mut work: Network<T> = run.net.cast();
    let mut w = run.spec.vector(&run.net);
    let n = train.len();
    let end = run.start_epoch + cfg.epochs;
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    if run.history.is_empty() {
        let curv = cfg.metrics.curvature_every > 0;
        let rec = measure(run, &work, cfg, &x, &train.y, tx.as_ref(), None, 0.0, curv)?;
        hooks.epoch(run, &rec)?;
        run.history.push(rec);
    }
    while run.epoch < end {
        let t0 = Instant::now();
        let epoch = run.epoch + 1;
        let order = Rng::derived(cfg.seed, epoch as u64).permutation(n);
        let mut rw = Rng::derived(cfg.seed ^ RW_STREAM, epoch as u64);
        let (mut loss_sum, mut steps, mut angle_sum, mut len_sum) = (0.0, 0usize, 0.0, 0.0);
        let mut elr = cfg.schedule.at((epoch - 1 - run.start_epoch) as f64);
        for (s, idx) in order.chunks(cfg.batch_size).enumerate() {
            if idx.len() < 2 {
                continue;
            }
            let xb = x.select_rows(idx);
            let yb: Vec<usize> = idx.iter().map(|&i| train.y[i]).collect();
            let (loss, grads, stats) = work.train_grad(&xb, &yb)?;
            let nonfinite = |what: &str| Error::NonFinite {
                what: what.into(),
                epoch,
                step: s + 1,
            };
            if !loss.is_finite() {
                return Err(nonfinite("loss"));
            }
            let mut g = Vec::with_capacity(run.spec.len);
            for &i in &run.spec.si {
                g.extend(grads[i].as_slice().iter().map(|v| v.to_f64()));
            }
            if !g.iter().all(|v| v.is_finite()) {
                return Err(nonfinite("gradient"));
            }
            if let Some(rho) = cfg.sam {
                // SAM on the sphere: the gradient at the retracted ascent point, projected
                // onto the tangent space at w; that pass's batch statistics are dropped.
                let wa = sam_ascent_point(&w, &g, &run.spheres, rho);
                run.spec.set_vector(&mut work, &wa);
                let second = work.train_grad(&xb, &yb);
                run.spec.set_vector(&mut work, &w);
                let (_, grads2, _) = second?;
                let mut g2 = Vec::with_capacity(run.spec.len);
                for &i in &run.spec.si {
                    g2.extend(grads2[i].as_slice().iter().map(|v| v.to_f64()));
                }
                if !g2.iter().all(|v| v.is_finite()) {
                    return Err(nonfinite("gradient at the SAM ascent point"));
                }
                g = project_tangent(&w, &g2, &run.spheres);
            }
            let tfrac = (epoch - 1 - run.start_epoch) as f64 + s as f64 / steps_per_epoch as f64;
            elr = cfg.schedule.at(tfrac);
            let info = sphere_step(&mut w, &g, &run.spheres, elr, cfg.step, &mut rw);
            run.spec.set_vector(&mut work, &w);
            work.apply_batch_stats(stats, idx.len());
            loss_sum += loss.to_f64();
            angle_sum += info.angle;
            len_sum += info.length;
            steps += 1;
            hooks.step();
        }
        run.epoch = epoch;
        // The master network: f64 SI weights, the BatchNorm buffers of the work copy.
        run.spec.set_vector(&mut run.net, &w);
        run.net.bn = work
            .bn
            .iter()
            .map(|b| BnState {
                running_mean: b.running_mean.cast(),
                running_var: b.running_var.cast(),
                num_batches_tracked: b.num_batches_tracked,
            })
            .collect();
        let last = epoch == end;
        let since = epoch - run.start_epoch;
        if last || since.is_multiple_of(cfg.metrics.every) {
            let m = steps.max(1) as f64;
            let curv = cfg.metrics.curvature_every > 0
                && (last || since.is_multiple_of(cfg.metrics.curvature_every));
            let mut rec = measure(
                run,
                &work,
                cfg,
                &x,
                &train.y,
                tx.as_ref(),
                Some((loss_sum / m, angle_sum / m, len_sum / m, steps)),
                elr,
                curv,
            )?;
            // The epoch's wall time: its steps and this measurement (measure() set the
            // measurement alone; t0 is the epoch's start, so the sum would count it twice).
            rec.seconds = t0.elapsed().as_secs_f64();
            hooks.epoch(run, &rec)?;
            run.history.push(rec);
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure<T: Scalar>(
    run: &mut SphereRun,
    work: &Network<T>,
    cfg: &SphereRunConfig,
    x: &Matrix<T>,
    y: &[usize],
    test: Option<&(Matrix<T>, &[usize])>,
    trained: Option<(f64, f64, f64, usize)>,
    elr: f64,
    curvature: bool,
) -> Result<EpochRecord> {
    let t0 = Instant::now();
    let mc = &cfg.metrics;
    let nm = mc.metric_samples.unwrap_or(y.len()).min(y.len());
    let xm = x.rows_view(0, nm).to_owned();
    let pass = batch_pass(work, &run.spec.si, &xm, &y[..nm], cfg.batch_size)?;
    let (test_loss, test_error) = match test {
        Some((tx, ty)) => {
            let (l, e) = evaluate_network(work, tx, ty)?;
            (Some(l), Some(e))
        }
        None => (None, None),
    };
    let w = run.spec.vector(&run.net);
    let radius = norm(&w);
    let radius_rel_dev = run
        .spheres
        .groups
        .iter()
        .zip(&run.spheres.radii)
        .map(|(g, &r)| (norm(&w[g.clone()]) - r).abs() / r)
        .fold(0.0, f64::max);
    let rho2 = radius * radius;
    let (mut ft, mut fse, mut lm, mut lr) = (None, None, None, None);
    if curvature {
        let nc = mc.curvature_samples.min(y.len());
        let xc: Matrix<f64> = x.rows_view(0, nc).to_owned().cast();
        let f = fisher_trace(
            &run.net,
            &run.spec.si,
            &xc,
            mc.curvature_batch,
            mc.fisher,
            cfg.seed ^ run.epoch as u64,
        )?;
        ft = Some(f.value);
        fse = Some(f.std_error);
        let e = top_eigenvalue(
            &run.net,
            &run.spec,
            &xc,
            &y[..nc],
            mc.curvature_batch,
            mc.lanczos_iter,
            cfg.seed,
        )?;
        lm = Some(e.value);
        lr = Some(e.residual);
    }
    let cos_dist = if trained.is_some() {
        let c = 1.0 - angle_between(&w, &run.w_prev).cos();
        Some(c)
    } else {
        None
    };
    let angle_from_start = angle_between(&w, &run.w_start);
    run.w_prev = w;
    let gm = pass.gm();
    Ok(EpochRecord {
        epoch: run.epoch,
        elr: if trained.is_some() {
            elr
        } else {
            cfg.schedule.at(0.0)
        },
        steps: trained.map_or(0, |t| t.3),
        mean_batch_loss: trained.map(|t| t.0),
        train_loss: pass.loss,
        train_error: pass.error,
        test_loss,
        test_error,
        gm,
        gm_effective: gm * radius,
        fisher_trace: ft,
        fisher_trace_se: fse,
        fisher_effective: ft.map(|v| v * rho2),
        lambda_max: lm,
        lambda_residual: lr,
        lambda_effective: lm.map(|v| v * rho2),
        radius,
        radius_rel_dev,
        cos_dist_prev: cos_dist,
        angle_from_start,
        mean_step_angle: trained.map(|t| t.1),
        mean_step_length: trained.map(|t| t.2),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

// ---------------------------------------------------------------------------
// Regime classification

/// The documented thresholds of the regime rule (see [`classify`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegimeRule {
    /// The window: the last `ceil(window_frac * trained epochs)` measured epochs (at least 2).
    pub window_frac: f64,
    /// Regime 3 needs the window's mean train error >= `chance_frac * (1 - 1/K)` ...
    pub chance_frac: f64,
    /// ... and the mean consecutive-epoch cosine distance >= this (near-orthogonal epochs).
    pub orthogonal_cos_dist: f64,
    /// Regime 1 converged: final train error <= this.
    pub converged_error: f64,
    /// Regime 1 (not converged): at least this fraction of the window's epoch-to-epoch
    /// train-loss changes are decreases (a trend). Otherwise the loss has settled
    /// with uncorrelated fluctuations: regime 2.
    pub monotone_frac: f64,
}

impl Default for RegimeRule {
    fn default() -> Self {
        Self {
            window_frac: 0.5,
            chance_frac: 0.8,
            orthogonal_cos_dist: 0.5,
            converged_error: 1e-3,
            monotone_frac: 0.75,
        }
    }
}

/// The inputs of the rule, reported beside the label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegimeInputs {
    pub window_epochs: Vec<usize>,
    pub final_train_error: f64,
    pub window_mean_train_error: f64,
    pub chance_error: f64,
    pub window_mean_cos_dist: f64,
    /// Fraction of decreasing train-loss changes in the window.
    pub decreasing_frac: f64,
    /// `log(L_end / L_window_start)`.
    pub window_log_loss_change: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegimeLabel {
    /// 1, 2 or 3 (0: not enough epochs to say).
    pub regime: u8,
    pub converged: bool,
    pub label: String,
    pub inputs: Option<RegimeInputs>,
}

/// Labels a run from its measured epochs: regime 3 when the window's train error
/// is near chance and consecutive epochs are near-orthogonal; else regime 1
/// (converged) when the final train error is at most `converged_error`; else
/// regime 1 (not converged) when the train loss still falls in most window steps;
/// else regime 2 (settled, fluctuating).
pub fn classify(history: &[EpochRecord], classes: usize, rule: &RegimeRule) -> RegimeLabel {
    let trained: Vec<&EpochRecord> = history.iter().filter(|r| r.steps > 0).collect();
    if trained.len() < 2 {
        return RegimeLabel {
            regime: 0,
            converged: false,
            label: "undetermined (fewer than 2 measured epochs)".into(),
            inputs: None,
        };
    }
    let w = ((rule.window_frac * trained.len() as f64).ceil() as usize).clamp(2, trained.len());
    let win = &trained[trained.len() - w..];
    // Loss changes into and within the window (from the record before it).
    let first = history
        .iter()
        .position(|r| r.epoch == win[0].epoch)
        .unwrap_or(0);
    let seq: Vec<f64> = history[first.saturating_sub(1)..]
        .iter()
        .map(|r| r.train_loss)
        .collect();
    let diffs: Vec<f64> = seq.windows(2).map(|p| p[1] - p[0]).collect();
    let dec = diffs.iter().filter(|d| **d < 0.0).count() as f64 / diffs.len().max(1) as f64;
    let chance = 1.0 - 1.0 / classes as f64;
    let mean_err = win.iter().map(|r| r.train_error).sum::<f64>() / w as f64;
    let cds: Vec<f64> = win.iter().filter_map(|r| r.cos_dist_prev).collect();
    let mean_cd = cds.iter().sum::<f64>() / cds.len().max(1) as f64;
    let fin = trained[trained.len() - 1];
    let inputs = RegimeInputs {
        window_epochs: win.iter().map(|r| r.epoch).collect(),
        final_train_error: fin.train_error,
        window_mean_train_error: mean_err,
        chance_error: chance,
        window_mean_cos_dist: mean_cd,
        decreasing_frac: dec,
        window_log_loss_change: (seq[seq.len() - 1] / seq[0]).ln(),
    };
    let (regime, converged, label) =
        if mean_err >= rule.chance_frac * chance && mean_cd >= rule.orthogonal_cos_dist {
            (3, false, "3 (random walk)")
        } else if fin.train_error <= rule.converged_error {
            (1, true, "1 (converged)")
        } else if dec >= rule.monotone_frac {
            (1, false, "1 (not converged)")
        } else {
            (2, false, "2 (chaotic equilibrium)")
        };
    RegimeLabel {
        regime,
        converged,
        label: label.into(),
        inputs: Some(inputs),
    }
}

/// A change of regime between two neighbouring elr values of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Boundary {
    pub from_regime: u8,
    pub to_regime: u8,
    /// The boundary lies in `(elr_below, elr_above]`.
    pub elr_below: f64,
    pub elr_above: f64,
}

/// The regime changes along a sweep (`(elr, regime)` pairs, any order).
pub fn boundaries(labels: &[(f64, u8)]) -> Vec<Boundary> {
    let mut v: Vec<(f64, u8)> = labels.iter().copied().filter(|l| l.1 > 0).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.windows(2)
        .filter(|p| p[0].1 != p[1].1)
        .map(|p| Boundary {
            from_regime: p[0].1,
            to_regime: p[1].1,
            elr_below: p[0].0,
            elr_above: p[1].0,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Files: checkpoints, run records, resume

/// Metadata key of a checkpoint's sphere state.
pub const SPHERE_META: &str = "sphere";

/// The sphere state stored in a checkpoint's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub epoch: usize,
    pub start_epoch: usize,
    pub spheres: Spheres,
    pub si_names: Vec<String>,
    pub frozen_names: Vec<String>,
    pub w_start_norm: f64,
    /// The radii as IEEE-754 bit patterns: a resumed run continues on exactly the
    /// same spheres (JSON floats need not round-trip in the last bit).
    #[serde(default)]
    pub radii_bits: Vec<u64>,
}

/// Writes the run's network (f64 master weights and BatchNorm buffers) with its
/// sphere state to `path` (atomically).
pub fn save_checkpoint(run: &SphereRun, path: &Path, prov: &Provenance) -> Result<()> {
    let meta = CheckpointMeta {
        epoch: run.epoch,
        start_epoch: run.start_epoch,
        spheres: run.spheres.clone(),
        si_names: run.spec.si_names.clone(),
        frozen_names: run.spec.frozen_names.clone(),
        w_start_norm: norm(&run.w_start),
        radii_bits: run.spheres.radii.iter().map(|r| r.to_bits()).collect(),
    };
    let mut md = prov.model_metadata();
    md.insert(
        SPHERE_META.into(),
        serde_json::to_string(&meta).expect("checkpoint metadata serialises"),
    );
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    save_network(&run.net, path, &md)
}

/// Loads a checkpoint: the network, its SI split, spheres and epoch. For a file
/// without sphere metadata (any SI model), the spheres go through the current
/// weights (`per_layer` chooses one or one per tensor) at epoch 0.
pub fn load_checkpoint(
    path: &Path,
    per_layer: bool,
) -> Result<(SphereRun, Option<CheckpointMeta>)> {
    let (net, md): (Network<f64>, BTreeMap<String, String>) =
        load_network(path, &NetworkImport::default())?;
    let spec = SiSpec::of(&net)?;
    let meta: Option<CheckpointMeta> = match md.get(SPHERE_META) {
        Some(s) => Some(serde_json::from_str(s).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            what: format!("unreadable sphere metadata: {e}"),
        })?),
        None => None,
    };
    let mut w = spec.vector(&net);
    let (spheres, epoch) = match &meta {
        Some(m) => {
            let mut sp = m.spheres.clone();
            if m.radii_bits.len() == sp.radii.len() {
                sp.radii = m.radii_bits.iter().map(|&b| f64::from_bits(b)).collect();
            }
            (sp, m.epoch)
        }
        None => (
            Spheres::new(&spec, &mut w, super::RadiusMode::Initial, per_layer)?,
            0,
        ),
    };
    if spheres.groups.last().map(|g| g.end) != Some(spec.len) {
        return Err(Error::Model {
            path: path.to_path_buf(),
            what: "the sphere metadata does not match the network's SI tensors".into(),
        });
    }
    let run = SphereRun::new(net, spec, spheres, epoch);
    Ok((run, meta))
}

/// CSV of a run's history (one row per measured epoch; empty fields for missing values).
pub fn history_csv(history: &[EpochRecord]) -> String {
    let mut s = String::from(
        "epoch,elr,steps,mean_batch_loss,train_loss,train_error,test_loss,test_error,gm,gm_effective,fisher_trace,fisher_trace_se,fisher_effective,lambda_max,lambda_residual,lambda_effective,radius,radius_rel_dev,cos_dist_prev,angle_from_start,mean_step_angle,mean_step_length,seconds\n",
    );
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:e}"));
    for r in history {
        s.push_str(&format!(
            "{},{:e},{},{},{:e},{:e},{},{},{:e},{:e},{},{},{},{},{},{},{:e},{:e},{},{:e},{},{},{:.3}\n",
            r.epoch,
            r.elr,
            r.steps,
            o(r.mean_batch_loss),
            r.train_loss,
            r.train_error,
            o(r.test_loss),
            o(r.test_error),
            r.gm,
            r.gm_effective,
            o(r.fisher_trace),
            o(r.fisher_trace_se),
            o(r.fisher_effective),
            o(r.lambda_max),
            o(r.lambda_residual),
            o(r.lambda_effective),
            r.radius,
            r.radius_rel_dev,
            o(r.cos_dist_prev),
            r.angle_from_start,
            o(r.mean_step_angle),
            o(r.mean_step_length),
            r.seconds
        ));
    }
    s
}

/// The record of one run as written to `run.json` (under `results`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    pub config: SphereRunConfig,
    pub architecture: String,
    pub classes: usize,
    pub si_tensors: Vec<String>,
    pub frozen_tensors: Vec<String>,
    pub si_parameters: usize,
    pub radii: Vec<f64>,
    pub start_epoch: usize,
    pub completed_epoch: usize,
    pub finished: bool,
    pub history: Vec<EpochRecord>,
    pub regime: RegimeLabel,
    pub wall_seconds: f64,
}

/// Builds the record of a run.
pub fn run_record(
    name: &str,
    run: &SphereRun,
    cfg: &SphereRunConfig,
    rule: &RegimeRule,
    wall: f64,
) -> RunRecord {
    RunRecord {
        name: name.into(),
        config: cfg.clone(),
        architecture: run.net.arch.name.clone(),
        classes: run.net.arch.classes,
        si_tensors: run.spec.si_names.clone(),
        frozen_tensors: run.spec.frozen_names.clone(),
        si_parameters: run.spec.len,
        radii: run.spheres.radii.clone(),
        start_epoch: run.start_epoch,
        completed_epoch: run.epoch,
        finished: run.epoch >= run.start_epoch + cfg.epochs,
        history: run.history.clone(),
        regime: classify(&run.history, run.net.arch.classes, rule),
        wall_seconds: wall,
    }
}

/// Writes `dir/run.json` (with provenance) and `dir/metrics.csv`.
pub fn write_run_files(dir: &Path, rec: &RunRecord, prov: &Provenance) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::io::results::write_json(
        &dir.join("run.json"),
        "sphere train",
        serde_json::to_value(rec).expect("run record serialises"),
        prov,
    )?;
    crate::io::write_atomic(
        &dir.join("metrics.csv"),
        history_csv(&rec.history).as_bytes(),
    )
}

/// Reads `dir/run.json`.
pub fn read_run_record(dir: &Path) -> Result<RunRecord> {
    let path = dir.join("run.json");
    let f = crate::io::results::read_json(&path)?;
    serde_json::from_value(f.results).map_err(|e| {
        Error::malformed(
            &path,
            format!("not a sphere run record: {e}"),
            "results".to_string(),
        )
    })
}

/// Hooks of a run that writes its files: the checkpoint (`checkpoint.safetensors`,
/// and `epoch_{e}.safetensors` every `save_every` epochs), `run.json`, `metrics.csv`.
pub struct FileHooks<'a> {
    pub dir: PathBuf,
    pub name: String,
    pub cfg: &'a SphereRunConfig,
    pub rule: &'a RegimeRule,
    pub prov: &'a Provenance,
    pub save_every: usize,
    pub started: Instant,
    pub wall_before: f64,
    pub on_step: Box<dyn FnMut() + 'a>,
}

impl RunHooks for FileHooks<'_> {
    fn step(&mut self) {
        (self.on_step)();
    }
    fn epoch(&mut self, run: &SphereRun, rec: &EpochRecord) -> Result<()> {
        save_checkpoint(run, &self.dir.join("checkpoint.safetensors"), self.prov)?;
        if self.save_every > 0 && (run.epoch - run.start_epoch).is_multiple_of(self.save_every) {
            save_checkpoint(
                run,
                &self.dir.join(format!("epoch_{}.safetensors", run.epoch)),
                self.prov,
            )?;
        }
        let mut hist = run.history.clone();
        hist.push(rec.clone());
        let mut tmp = run.clone();
        tmp.history = hist;
        let wall = self.wall_before + self.started.elapsed().as_secs_f64();
        let r = run_record(&self.name, &tmp, self.cfg, self.rule, wall);
        write_run_files(&self.dir, &r, self.prov)
    }
}

/// Runs (or resumes) one run whose files live in `dir`: when `resume` and
/// `dir/run.json` and `dir/checkpoint.safetensors` exist, the run continues from
/// the checkpoint; a finished run is returned as it is. Otherwise it starts from
/// `start` (cloned).
#[allow(clippy::too_many_arguments)]
pub fn run_in_dir(
    dir: &Path,
    name: &str,
    start: &SphereRun,
    cfg: &SphereRunConfig,
    rule: &RegimeRule,
    train: &Dataset,
    test: Option<&Dataset>,
    prov: &Provenance,
    resume: bool,
    save_every: usize,
    on_step: Box<dyn FnMut() + '_>,
) -> Result<RunRecord> {
    let ck = dir.join("checkpoint.safetensors");
    let mut wall_before = 0.0;
    let mut run = if resume && dir.join("run.json").exists() && ck.exists() {
        let rec = read_run_record(dir)?;
        let (mut r, meta) = load_checkpoint(&ck, false)?;
        let meta = meta.ok_or_else(|| Error::Model {
            path: ck.clone(),
            what: "no sphere metadata (not a sphere checkpoint)".into(),
        })?;
        if rec.config.epochs != cfg.epochs
            || rec.config.schedule != cfg.schedule
            || rec.config.step != cfg.step
            || rec.config.seed != cfg.seed
        {
            return Err(Error::InvalidArgument(format!(
                "{}: the stored run has another configuration; remove the directory or drop --resume",
                dir.display()
            )));
        }
        r.start_epoch = meta.start_epoch;
        r.history = rec
            .history
            .into_iter()
            .filter(|h| h.epoch <= meta.epoch)
            .collect();
        r.w_start = start.w_start.clone();
        if start.start_epoch != meta.start_epoch {
            return Err(Error::InvalidArgument(format!(
                "{}: the stored run starts at epoch {}, this one at {}",
                dir.display(),
                meta.start_epoch,
                start.start_epoch
            )));
        }
        wall_before = rec.wall_seconds;
        r
    } else {
        start.clone()
    };
    let mut hooks = FileHooks {
        dir: dir.to_path_buf(),
        name: name.into(),
        cfg,
        rule,
        prov,
        save_every,
        started: Instant::now(),
        wall_before,
        on_step,
    };
    if run.epoch < run.start_epoch + cfg.epochs || run.history.is_empty() {
        train_on_sphere(&mut run, cfg, train, test, &mut hooks)?;
    }
    let wall = wall_before + hooks.started.elapsed().as_secs_f64();
    let rec = run_record(name, &run, cfg, rule, wall);
    write_run_files(dir, &rec, prov)?;
    Ok(rec)
}

/// Name of a sweep run's directory: `elr_1.00e-3`.
pub fn elr_dir_name(elr: f64) -> String {
    format!("elr_{elr:.2e}")
}

// ---------------------------------------------------------------------------
// Mode connectivity on the sphere

/// One point of the linear path between two SI models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathPoint {
    pub t: f64,
    pub train_loss: f64,
    pub train_error: f64,
    pub test_loss: Option<f64>,
    pub test_error: Option<f64>,
}

/// The linear path `w(t) = (1 - t) w_a + t w_b` between the SI weights of two
/// models with the same architecture and frozen head; each point is rescaled
/// onto the sphere (the radius interpolated between the ends, group by group
/// when the models carry per-tensor spheres), its BatchNorm statistics are
/// recomputed by one train-mode pass over `train` (batches of `batch`), then
/// train loss and error are measured in train-mode BatchNorm over fixed batches
/// and test loss and error in eval mode.
pub fn connect_on_sphere(
    a: &SphereRun,
    b: &SphereRun,
    points: usize,
    train: &Dataset,
    test: Option<&Dataset>,
    batch: usize,
    mut on_point: impl FnMut(),
) -> Result<Vec<PathPoint>> {
    if a.net.arch != b.net.arch {
        return Err(Error::InvalidArgument(
            "the two models have different architectures".into(),
        ));
    }
    for &i in &a.spec.frozen {
        if a.net.params[i] != b.net.params[i] {
            return Err(Error::InvalidArgument(format!(
                "the frozen last layers differ (tensor '{}'): the models do not share a head",
                a.spec.frozen_names[a.spec.frozen.iter().position(|&j| j == i).unwrap_or(0)]
            )));
        }
    }
    if points < 2 {
        return Err(Error::InvalidArgument("--points must be at least 2".into()));
    }
    let wa = a.spec.vector(&a.net);
    let wb = b.spec.vector(&b.net);
    let groups = &a.spheres.groups;
    let mut out = Vec::with_capacity(points);
    for k in 0..points {
        let t = k as f64 / (points - 1) as f64;
        let mut w: Vec<f64> = wa
            .iter()
            .zip(&wb)
            .map(|(x, y)| (1.0 - t) * x + t * y)
            .collect();
        for g in groups {
            let ra = norm(&wa[g.clone()]);
            let rb = norm(&wb[g.clone()]);
            let target = (1.0 - t) * ra + t * rb;
            let n = norm(&w[g.clone()]);
            if n == 0.0 {
                return Err(Error::InvalidArgument(format!(
                    "the linear path passes through zero at t = {t}"
                )));
            }
            w[g.clone()].iter_mut().for_each(|x| *x *= target / n);
        }
        let mut net = a.net.clone();
        a.spec.set_vector(&mut net, &w);
        recompute_bn_stats(&mut net, &train.x, batch)?;
        let pass = batch_pass(&net, &a.spec.si, &train.x, &train.y, batch)?;
        let (tl, te) = match test.filter(|t| !t.is_empty()) {
            Some(ts) => {
                let (l, e) = evaluate_network(&net, &ts.x, &ts.y)?;
                (Some(l), Some(e))
            }
            None => (None, None),
        };
        out.push(PathPoint {
            t,
            train_loss: pass.loss,
            train_error: pass.error,
            test_loss: tl,
            test_error: te,
        });
        on_point();
    }
    Ok(out)
}
