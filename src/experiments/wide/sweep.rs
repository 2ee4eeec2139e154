//! Width sweep (Theorem 1: one hidden layer of width `n1 >= m`) and the conditions
//! of Theorem 2 (Nguyen and Hein 2017) at the end points of deeper nets.

use super::objective::{saturation, smallest_eig, BlockOp, Saturation};
use super::rank::{default_tol, jacobi_svd, rank_report, with_ones};
use super::{
    classify, init_params, layer_range, mse_config, train_to_convergence, EndpointKind, Progress,
    SquaredLoss, TrainSettings,
};
use crate::error::Result;
use crate::hessian::small_eig::sym_eigenvalues;
use crate::linalg::SymOp;
use crate::nn::{Activation, Mlp};
use crate::optim::SecondOrder;
use crate::tensor::{Matrix, Par};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize)]
pub struct SweepConfig {
    pub activations: Vec<Activation>,
    /// Hidden widths `n1` of the one-hidden-layer nets.
    pub widths: Vec<usize>,
    pub seeds: usize,
    pub seed: u64,
    pub bias: bool,
    pub train: TrainSettings,
}

/// One trained run and its end point.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub activation: String,
    pub hidden: Vec<usize>,
    pub seed: u64,
    pub params: usize,
    pub loss: f64,
    pub grad_norm: f64,
    pub stop: String,
    pub lbfgs_iterations: usize,
    pub newton_iterations: usize,
    pub reached_zero: bool,
    /// Smallest Hessian eigenvalue with residual (only computed when the loss is above `eps`).
    pub lambda_min: Option<f64>,
    pub lambda_residual: Option<f64>,
    pub hessian_norm: Option<f64>,
    pub kind: EndpointKind,
    pub weight_norm: f64,
    pub saturation: Saturation,
}

fn run_one(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    act: Activation,
    hidden: &[usize],
    bias: bool,
    seed: u64,
    s: &TrainSettings,
) -> Result<(RunRecord, Mlp<f64>)> {
    let cfg = mse_config(x.cols(), hidden, y.cols(), act, bias);
    let theta0 = init_params(&cfg, s, seed)?;
    let obj = SquaredLoss::new(Mlp::<f64>::init(cfg.clone(), s.init, 1.0, seed)?, x, y)?;
    let (first, polish) = train_to_convergence(&obj, &theta0, s);
    let end = polish.as_ref().unwrap_or(&first);
    let (theta, loss) = if polish.as_ref().is_some_and(|p| p.f < first.f) {
        (&end.x, end.f)
    } else {
        (&first.x, first.f)
    };
    let stop = match &polish {
        Some(p) => p.stop,
        None => first.stop,
    };
    let converged = stop.is_converged();
    let model = obj.model_at(theta);
    let eig = if loss > s.eps && converged {
        let mut out = None;
        obj.with_hessian(theta, &mut |h: &dyn SymOp| {
            out = Some(smallest_eig(h, s.lanczos_iter, seed));
        });
        Some(out.expect("callback ran")?)
    } else {
        None
    };
    let grad_norm = polish
        .as_ref()
        .map_or(first.grad_norm, |p| p.grad_norm.min(first.grad_norm));
    let kind = classify(loss, s.eps, converged, eig, s.eig_zero_rel);
    let rec = RunRecord {
        activation: act.name().into(),
        hidden: hidden.to_vec(),
        seed,
        params: cfg.num_params(),
        loss,
        grad_norm,
        stop: stop.name().into(),
        lbfgs_iterations: first.iterations,
        newton_iterations: polish.as_ref().map_or(0, |p| p.iterations),
        reached_zero: loss <= s.eps,
        lambda_min: eig.map(|e| e.value),
        lambda_residual: eig.map(|e| e.residual),
        hessian_norm: eig.map(|e| e.norm),
        kind,
        weight_norm: super::objective::param_norm(theta),
        saturation: saturation(&model, x),
    };
    Ok((rec, model))
}

/// Summary of the runs at one (activation, width).
#[derive(Clone, Debug, Serialize)]
pub struct WidthSummary {
    pub activation: String,
    pub width: usize,
    pub runs: usize,
    pub frac_zero: f64,
    pub median_loss: f64,
    pub counts: std::collections::BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepResult {
    pub m: usize,
    pub runs: Vec<RunRecord>,
    pub summary: Vec<WidthSummary>,
    /// Per activation: the smallest width of the grid from which on every run reached
    /// zero (`None`: not within the grid), beside `m - 1` and `m`.
    pub thresholds: Vec<(String, Option<usize>)>,
}

fn run_seed(base: u64, i: usize) -> u64 {
    base.wrapping_add(1000 + i as u64)
}

/// Theorem 1 as an experiment: one hidden layer, widths around `m`, `seeds` runs each.
pub fn width_sweep(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &SweepConfig,
    progress: Progress<'_>,
) -> Result<SweepResult> {
    width_sweep_resumable(x, y, cfg, progress, Vec::new(), &mut |_| Ok(()))
}

/// [`width_sweep`] continuing after the first `finished.len()` runs (in job order:
/// activation, width, seed), calling `safe_point` with every run so far after each batch
/// of runs (a few per worker thread, run in parallel). Each run depends only on its own
/// seed, so the result does not depend on where a previous run stopped.
pub fn width_sweep_resumable(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &SweepConfig,
    progress: Progress<'_>,
    finished: Vec<RunRecord>,
    safe_point: &mut dyn FnMut(&[RunRecord]) -> Result<()>,
) -> Result<SweepResult> {
    cfg.train.validate()?;
    super::check_problem(x, y)?;
    let mut jobs = Vec::new();
    for &a in &cfg.activations {
        for &w in &cfg.widths {
            for i in 0..cfg.seeds {
                jobs.push((a, w, run_seed(cfg.seed, i)));
            }
        }
    }
    if finished.len() > jobs.len()
        || finished
            .iter()
            .zip(&jobs)
            .any(|(r, (a, w, s))| r.activation != a.name() || r.hidden != [*w] || r.seed != *s)
    {
        return Err(crate::Error::InvalidArgument(
            "the checkpoint's finished runs do not match this sweep's runs".into(),
        ));
    }
    let mut runs = finished;
    let batch = 4 * rayon::current_num_threads().max(1);
    while runs.len() < jobs.len() {
        let end = (runs.len() + batch).min(jobs.len());
        let done: Vec<RunRecord> = jobs[runs.len()..end]
            .par_iter()
            .map(|&(a, w, seed)| {
                let r = run_one(x, y, a, &[w], cfg.bias, seed, &cfg.train).map(|r| r.0);
                progress();
                r
            })
            .collect::<Result<_>>()?;
        runs.extend(done);
        safe_point(&runs)?;
    }
    let mut summary = Vec::new();
    let mut thresholds = Vec::new();
    for &a in &cfg.activations {
        let mut all_from: Option<usize> = None;
        let mut widths = cfg.widths.clone();
        widths.sort_unstable();
        for &w in widths.iter().rev() {
            let rs: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.activation == a.name() && r.hidden[0] == w)
                .collect();
            if rs.iter().all(|r| r.reached_zero) {
                all_from = Some(w);
            } else {
                break;
            }
        }
        for &w in &widths {
            let rs: Vec<&RunRecord> = runs
                .iter()
                .filter(|r| r.activation == a.name() && r.hidden[0] == w)
                .collect();
            let mut counts = std::collections::BTreeMap::new();
            for r in &rs {
                let k = serde_json::to_value(r.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default();
                *counts.entry(k).or_insert(0) += 1;
            }
            let losses: Vec<f64> = rs.iter().map(|r| r.loss).collect();
            summary.push(WidthSummary {
                activation: a.name().into(),
                width: w,
                runs: rs.len(),
                frac_zero: rs.iter().filter(|r| r.reached_zero).count() as f64
                    / rs.len().max(1) as f64,
                median_loss: super::rank::median(&losses),
                counts,
            });
        }
        thresholds.push((a.name().to_string(), all_from));
    }
    Ok(SweepResult {
        m: x.rows(),
        runs,
        summary,
        thresholds,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct DeepConfig {
    pub activations: Vec<Activation>,
    /// Widths of the wide (first) hidden layer.
    pub wide_widths: Vec<usize>,
    /// Widths of the later hidden layers (pyramidal: non-increasing, `>= outputs`).
    pub later: Vec<usize>,
    pub seeds: usize,
    pub seed: u64,
    pub train: TrainSettings,
    /// Largest later-layer block that is diagonalised densely (else Lanczos, smallest end).
    pub dense_block_max: usize,
}

/// Theorem 2's conditions at one end point.
#[derive(Clone, Debug, Serialize)]
pub struct DeepRecord {
    pub run: RunRecord,
    /// Rank of `[X1, 1]` (the wide layer's features with the bias column) vs `m`.
    pub wide_rank: usize,
    pub wide_rank_margin_decades: f64,
    pub cond_wide_rank: bool,
    /// Ranks of the weights after the first later layer (`W_l`, `l >= k + 2`), and
    /// whether each has full rank `min(out, in)`.
    pub later_ranks: Vec<usize>,
    pub cond_full_rank: bool,
    /// Dimension of the Hessian block of layers `k+1..L`, its eigenvalue of smallest
    /// magnitude and largest magnitude (dense when the block is small enough).
    pub block_dim: usize,
    pub block_min_abs_eig: f64,
    pub block_max_abs_eig: f64,
    pub block_dense: bool,
    /// Nonsingular: smallest |eigenvalue| above `eig_zero_rel * max |eigenvalue|`.
    pub cond_block_nonsingular: bool,
    pub all_conditions: bool,
    /// `loss > eps` while every condition holds: a counterexample to the statement.
    pub counterexample: bool,
}

/// Dense copy of a (small) symmetric operator, by products with unit vectors.
pub fn dense_of(op: &dyn SymOp) -> Matrix<f64> {
    let n = op.dim();
    let mut a = Matrix::zeros(n, n);
    let mut e = vec![0.0; n];
    let mut col = vec![0.0; n];
    for j in 0..n {
        e[j] = 1.0;
        op.apply(&e, &mut col);
        e[j] = 0.0;
        for (i, &c) in col.iter().enumerate() {
            a.set(i, j, c);
        }
    }
    // Symmetrise (the products are symmetric up to rounding).
    Matrix::from_fn(n, n, |i, j| 0.5 * (a.get(i, j) + a.get(j, i)))
}

/// Theorem 2 as an experiment: nets `[d, n1, later..., K]`; at every end point, which
/// of the conditions hold, and the loss.
pub fn deep_conditions(
    x: &Matrix<f64>,
    y: &Matrix<f64>,
    cfg: &DeepConfig,
    progress: Progress<'_>,
) -> Result<Vec<DeepRecord>> {
    cfg.train.validate()?;
    super::check_problem(x, y)?;
    let m = x.rows();
    let mut jobs = Vec::new();
    for &a in &cfg.activations {
        for &w in &cfg.wide_widths {
            for i in 0..cfg.seeds {
                jobs.push((a, w, run_seed(cfg.seed, i)));
            }
        }
    }
    jobs.into_par_iter()
        .map(|(a, w, seed)| {
            let mut hidden = vec![w];
            hidden.extend_from_slice(&cfg.later);
            let (run, model) = run_one(x, y, a, &hidden, true, seed, &cfg.train)?;
            let fwd = model.forward_with(x, Par::Seq)?;
            let a1 = with_ones(&fwd.inputs[1]);
            let tol = default_tol(m, w + 1);
            let rep = rank_report(&jacobi_svd(&a1, tol).sigma, m, w + 1, tol);
            let mut later_ranks = Vec::new();
            let mut full = true;
            for l in 2..model.num_layers() {
                let wl = &model.layers[l].weight;
                let t = default_tol(wl.rows(), wl.cols());
                let r = rank_report(&jacobi_svd(wl, t).sigma, wl.rows(), wl.cols(), t).rank;
                full &= r == wl.rows().min(wl.cols());
                later_ranks.push(r);
            }
            let obj = SquaredLoss::new(model.clone(), x, y)?;
            let theta = model.param_vector();
            let range = layer_range(&model.config, 1);
            let block_dim = range.len();
            let mut eigs: Option<Result<(f64, f64, bool)>> = None;
            obj.with_hessian(&theta, &mut |h: &dyn SymOp| {
                let block = BlockOp {
                    inner: h,
                    range: range.clone(),
                };
                eigs = Some(if block_dim <= cfg.dense_block_max {
                    let ev = sym_eigenvalues(&dense_of(&block));
                    let min_abs = ev.iter().fold(f64::INFINITY, |a, v| a.min(v.abs()));
                    let max_abs = ev.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                    Ok((min_abs, max_abs, true))
                } else {
                    smallest_eig(&block, cfg.train.lanczos_iter, seed)
                        .map(|e| ((e.value.abs() - e.residual).max(0.0), e.norm, false))
                });
            });
            let (min_abs, max_abs, dense) = eigs.expect("callback ran")?;
            let nonsing = min_abs > cfg.train.eig_zero_rel * max_abs;
            let wide_ok = rep.rank >= m;
            let all = wide_ok && full && nonsing;
            progress();
            Ok(DeepRecord {
                counterexample: all && !run.reached_zero,
                run,
                wide_rank: rep.rank,
                wide_rank_margin_decades: rep.margin_decades,
                cond_wide_rank: wide_ok,
                later_ranks,
                cond_full_rank: full,
                block_dim,
                block_min_abs_eig: min_abs,
                block_max_abs_eig: max_abs,
                block_dense: dense,
                cond_block_nonsingular: nonsing,
                all_conditions: all,
            })
        })
        .collect()
}
