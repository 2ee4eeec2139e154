//! `landscape wide`: the wide-network statements of the handbook chapter (seed 004)
//! as experiments on `m` samples. Parsing, progress and output only; the work is in
//! `landscape::experiments::wide`.

use super::progress;
use clap::{Args, ValueEnum};
use landscape::data::{self, DataOptions, Normalize, Subset};
use landscape::experiments::wide::{
    self as wide, linear, make_targets, path, rank, relu, sweep, TargetKind, TrainSettings,
};
use landscape::io::checkpoint::{test_point, Decoder, Encoder, Session};
use landscape::io::provenance::{write_json, Provenance};
use landscape::nn::Activation;
use landscape::optim::LbfgsConfig;
use landscape::plot::{line_plot_captioned, LineFigure, Series};
use landscape::Matrix;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Experiment {
    Rank,
    Sweep,
    Deep,
    Relu,
    Path,
    Linear,
}

#[derive(Args)]
pub struct WideArgs {
    /// Dataset: `digits`, `mnist10k` (embedded) or a path (see `train --help`).
    #[arg(long, default_value = "digits")]
    data: String,
    /// Number of samples m (drawn at random from the training set with --subset-seed).
    #[arg(long, default_value_t = 100)]
    m: usize,
    #[arg(long, default_value_t = 0)]
    subset_seed: u64,
    #[arg(long, value_enum, default_value = "unit")]
    normalize: Normalize,
    /// F x F average pooling of the images before normalisation (e.g. 4: MNIST 28x28 -> 7x7,
    /// d = 49), so that m > d + 1 with an affordable m.
    #[arg(long)]
    downsample: Option<usize>,
    /// Regression targets: one-hot labels or seeded Gaussian targets (a control).
    #[arg(long, value_enum, default_value = "onehot")]
    targets: TargetKind,
    /// Real targets from a CSV file (m rows, one column per output; overrides --targets).
    #[arg(long)]
    target_csv: Option<PathBuf>,
    /// Experiments to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Option<Vec<Experiment>>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tanh,sigmoid,softplus,relu"
    )]
    activations: Vec<Activation>,
    /// Hidden widths of the sweep (default: from 0.05 m to m + 1, including m - 1 and m).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Initialisations per width.
    #[arg(long, default_value_t = 5)]
    seeds: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// L-BFGS iteration cap (runs that hit it are reported as still descending).
    #[arg(long, default_value_t = 3000)]
    max_iter: usize,
    /// Zero-loss threshold on the mean squared loss.
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Random initialisations per rank cell.
    #[arg(long, default_value_t = 10)]
    rank_draws: usize,
    /// Hidden widths of the rank experiment (default: m/2, m-2, m-1, m, m+10, 2m).
    #[arg(long, value_delimiter = ',')]
    rank_widths: Option<Vec<usize>>,
    /// Polish runs that hit the L-BFGS cap with Newton-CG (exact HVPs) instead of
    /// reporting them as still descending.
    #[arg(long)]
    polish_capped: bool,
    /// Output directory (JSON, CSV, figures, report.md).
    #[arg(long, default_value = "wide-out")]
    out: PathBuf,
    /// Checkpoints after every finished experiment and every batch of width-sweep runs.
    #[command(flatten)]
    ckpt: super::CheckpointArgs,
}

/// What a `wide` checkpoint holds: the finished experiments (their files are already
/// written), the report and wall times so far, and the finished runs of the width sweep.
#[derive(Default, Serialize, Deserialize)]
struct WideState {
    done: Vec<String>,
    report: String,
    timings: Vec<(String, f64)>,
    seconds_before: f64,
    sweep_runs: Vec<sweep::RunRecord>,
}

impl WideState {
    fn is_done(&self, name: &str) -> bool {
        self.done.iter().any(|d| d == name)
    }

    /// JSON in the checkpoint (serde_json's `float_roundtrip`: every f64 exactly).
    fn encode(&self, seconds: f64, runs: &[sweep::RunRecord]) -> Vec<u8> {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["seconds_before"] = json!(seconds);
        v["sweep_runs"] = serde_json::to_value(runs).unwrap_or_default();
        Encoder::new().str(&v.to_string()).finish()
    }

    fn decode(payload: &[u8], dir: &Path) -> Result<Self, String> {
        let path = landscape::io::checkpoint::path_in(dir);
        let mut d = Decoder::new(payload, &path);
        let text = d.string().map_err(|e| e.to_string())?;
        d.end().map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| d.error(format!("wide state: {e}")).to_string())
    }

    /// Marks `name` (started at `started`) finished and checkpoints (every experiment is
    /// a safe point); `run_start` is when this invocation started.
    fn finish(
        &mut self,
        name: &str,
        started: Instant,
        run_start: Instant,
        session: &mut Option<Session>,
    ) -> Result<(), String> {
        let elapsed = run_start.elapsed().as_secs_f64();
        self.timings
            .push((name.to_string(), started.elapsed().as_secs_f64()));
        self.done.push(name.to_string());
        test_point("point");
        if let Some(s) = session.as_mut() {
            s.safe_point(
                true,
                || format!("after the {name} experiment"),
                || self.encode(self.seconds_before + elapsed, &[]),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn default_widths(m: usize) -> Vec<usize> {
    let mut w: Vec<usize> = [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75]
        .iter()
        .map(|f| ((f * m as f64).round() as usize).max(1))
        .collect();
    w.extend([m.saturating_sub(1).max(1), m, m + 1]);
    w.sort_unstable();
    w.dedup();
    w
}

/// Reads an `m x k` CSV of numbers (a non-numeric first line is a header).
fn read_targets_csv(path: &Path) -> Result<Matrix<f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Result<Vec<f64>, _> =
            line.split(',').map(|t| t.trim().parse::<f64>()).collect();
        match parsed {
            Ok(v) => rows.push(v),
            Err(_) if ln == 0 => continue,
            Err(_) => {
                return Err(format!("{}: line {}: not a number", path.display(), ln + 1));
            }
        }
    }
    let k = rows.first().map_or(0, |r| r.len());
    if k == 0 || rows.iter().any(|r| r.len() != k) {
        return Err(format!(
            "{}: rows must have the same positive number of columns",
            path.display()
        ));
    }
    if rows.iter().flatten().any(|v| !v.is_finite()) {
        return Err(format!("{}: non-finite target", path.display()));
    }
    let m = rows.len();
    Ok(Matrix::from_vec(m, k, rows.concat()))
}

/// Writes a text output through the atomic writer (temporary file + rename).
fn csv_write(path: &Path, text: &str) -> Result<(), String> {
    super::write_file(path, text.as_bytes())
}

pub fn cmd_wide(a: WideArgs, command_line: &str) -> Result<(), String> {
    let t_all = Instant::now();
    if a.m < 2 {
        return Err("--m must be at least 2".into());
    }
    if a.seeds == 0 || a.rank_draws == 0 {
        return Err("--seeds and --rank-draws must be positive".into());
    }
    let opts = DataOptions {
        normalize: a.normalize,
        train_subset: Subset::Random {
            n: a.m,
            seed: a.subset_seed,
        },
        downsample: a.downsample,
        ..Default::default()
    };
    let bundle = data::load(&a.data, &opts).map_err(|e| e.to_string())?;
    let m = bundle.train.len();
    if m < a.m {
        return Err(format!(
            "{} has only {m} training samples, --m is {}",
            bundle.name, a.m
        ));
    }
    let x = bundle.train.x.clone();
    let y = match &a.target_csv {
        Some(p) => {
            let t = read_targets_csv(p)?;
            if t.rows() != m {
                return Err(format!(
                    "{}: {} rows, expected m = {m}",
                    p.display(),
                    t.rows()
                ));
            }
            t
        }
        None => make_targets(a.targets, &bundle.train.y, bundle.classes, a.seed),
    };
    wide::check_problem(&x, &y).map_err(|e| e.to_string())?;
    super::probe_dir(&a.out)?;
    let widths = a.widths.clone().unwrap_or_else(|| default_widths(m));
    if widths.contains(&0) || a.rank_widths.as_ref().is_some_and(|w| w.contains(&0)) {
        return Err("--widths and --rank-widths must be positive".into());
    }
    let train = TrainSettings {
        lbfgs: LbfgsConfig {
            max_iter: a.max_iter,
            loss_tol: a.eps * 1e-2,
            ..TrainSettings::default().lbfgs
        },
        eps: a.eps,
        polish_capped: a.polish_capped,
        ..TrainSettings::default()
    };
    train.validate().map_err(|e| e.to_string())?;
    let only = a.only.clone().unwrap_or(vec![
        Experiment::Rank,
        Experiment::Sweep,
        Experiment::Deep,
        Experiment::Relu,
        Experiment::Path,
        Experiment::Linear,
    ]);
    let dataset = json!({"data": bundle.summary_json(), "m": m, "targets": a.target_csv.as_ref().map_or(format!("{:?}", a.targets).to_lowercase(), |p| p.display().to_string()), "k": y.cols()});
    let config = json!({"data": bundle.summary_json(), "m": m, "subset_seed": a.subset_seed,
        "targets": dataset["targets"], "k": y.cols(), "only": only.iter().map(|e| format!("{e:?}").to_lowercase()).collect::<Vec<_>>(), "activations": a.activations,
        "widths": widths, "seeds": a.seeds, "seed": a.seed, "max_iter": a.max_iter, "eps": a.eps,
        "rank_draws": a.rank_draws, "rank_widths": a.rank_widths, "downsample": a.downsample,
        "polish_capped": a.polish_capped});
    let mut session = a.ckpt.session("wide", config)?;
    let resumed = match session.as_mut().and_then(|s| s.take_resume()) {
        Some(p) => Some(WideState::decode(
            &p,
            a.ckpt.dir().expect("a checkpoint folder"),
        )?),
        None => None,
    };
    let fresh = resumed.is_none();
    let mut state = resumed.unwrap_or_default();
    let mut report = String::new();
    report.push_str(&format!(
        "# landscape wide: {} with m = {m} samples, d = {}, K = {} outputs\n\n",
        bundle.name,
        x.cols(),
        y.cols()
    ));
    report.push_str(&format!("Command: `{command_line}`\n\n"));
    // Under every figure: the data and the sample count.
    let caption = format!(
        "{}, m = {m} samples, d = {} inputs, K = {} outputs",
        super::geometry::data_words(&bundle),
        x.cols(),
        y.cols()
    );
    if fresh {
        state.report = report;
    }
    let write =
        |name: &str, cfg: serde_json::Value, res: serde_json::Value| -> Result<(), String> {
            let prov = Provenance::new(command_line, Some(a.seed), Some(dataset.clone()), cfg);
            write_json(
                &a.out.join(format!("{name}.json")),
                &format!("wide {name}"),
                res,
                &prov,
            )
            .map_err(|e| e.to_string())
        };
    let err = |e: landscape::Error| e.to_string();

    if only.contains(&Experiment::Rank) && !state.is_done("rank") {
        let t = Instant::now();
        let mut rw: Vec<usize> = a.rank_widths.clone().unwrap_or_else(|| {
            vec![
                m / 2,
                m.saturating_sub(2).max(1),
                m.saturating_sub(1).max(1),
                m,
                m + 10,
                2 * m,
            ]
        });
        rw.sort_unstable();
        rw.dedup();
        let cfg = rank::RankConfig {
            activations: a.activations.clone(),
            widths: rw,
            init_scales: vec![1.0, 10.0],
            bias_shifts: vec![0.0, -0.5],
            draws: a.rank_draws,
            seed: a.seed,
            tol: None,
        };
        let n = cfg.activations.len() * cfg.widths.len() * 4;
        let pb = progress(n as u64, "rank");
        let cells = rank::rank_experiment(&x, &y, &cfg, &|| pb.inc(1)).map_err(err)?;
        pb.finish_and_clear();
        let mut csv = String::from("activation,width,init_scale,bias_shift,draws,frac_deficient,frac_below_m,median_min_ratio,min_margin_decades,median_ls_loss,max_dead_samples,median_always_positive_units,median_never_positive_units\n");
        for c in &cells {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{:e},{:.3},{:e},{},{},{}\n",
                c.activation,
                c.width,
                c.init_scale,
                c.bias_shift,
                c.draws,
                c.frac_deficient,
                c.frac_below_m,
                c.median_min_ratio,
                c.min_margin_decades,
                c.median_ls_loss,
                c.max_dead_samples,
                c.median_always_positive_units,
                c.median_never_positive_units
            ));
        }
        csv_write(&a.out.join("rank.csv"), &csv)?;
        // Spectra at width m, scale 1, both shifts.
        let mut series = Vec::new();
        for c in cells.iter().filter(|c| c.width == m && c.init_scale == 1.0) {
            let s0 = c.sigma_first[0].max(1e-300);
            series.push(Series::new(
                format!("{} shift {}", c.activation, c.bias_shift),
                (1..=c.sigma_first.len()).map(|i| i as f64).collect(),
                c.sigma_first.iter().map(|v| (v / s0).max(1e-300)).collect(),
            ));
        }
        line_plot_captioned(
            &LineFigure {
                title: format!("singular values of [X1, 1] at init, width n1 = m = {m}"),
                x_label: "index".into(),
                y_label: "sigma_i / sigma_1".into(),
                log_y: true,
                series,
                ..Default::default()
            },
            &caption,
            &a.out.join("rank_spectra"),
        )
        .map_err(err)?;
        let mut series = Vec::new();
        for act in &a.activations {
            let pts: Vec<&rank::RankCell> = cells
                .iter()
                .filter(|c| {
                    c.activation == act.name() && c.init_scale == 1.0 && c.bias_shift == 0.0
                })
                .collect();
            series.push(Series::new(
                act.name(),
                pts.iter().map(|c| c.width as f64 / m as f64).collect(),
                pts.iter().map(|c| c.median_ls_loss.max(1e-32)).collect(),
            ));
        }
        line_plot_captioned(
            &LineFigure {
                title: "best output layer on fixed random features (closed form)".into(),
                x_label: "n1 / m".into(),
                y_label: "median least-squares loss".into(),
                log_y: true,
                series,
                markers: width_markers(m),
                ..Default::default()
            },
            &caption,
            &a.out.join("rank_fixed_features"),
        )
        .map_err(err)?;
        state
            .report
            .push_str("## Rank of the hidden features at initialisation (Lemma 1)\n\n");
        state.report.push_str("| activation | n1 | init scale | bias shift | frac rank[X1,1] < min(m, n1+1) | frac rank < m | median sigma_min/sigma_max | min margin (decades) | median LS loss on fixed features | max samples with all units off | median units z > 0 on all samples | median units z <= 0 on all samples |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for c in &cells {
            state.report.push_str(&format!(
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2e} | {:.1} | {:.2e} | {} | {} | {} |\n",
                c.activation,
                c.width,
                c.init_scale,
                c.bias_shift,
                c.frac_deficient,
                c.frac_below_m,
                c.median_min_ratio,
                c.min_margin_decades,
                c.median_ls_loss,
                c.max_dead_samples,
                c.median_always_positive_units,
                c.median_never_positive_units
            ));
        }
        state.report.push('\n');
        write(
            "rank",
            serde_json::to_value(&cfg).unwrap_or_default(),
            json!({"m": m, "cells": cells}),
        )?;
        state.finish("rank", t, t_all, &mut session)?;
    }

    if only.contains(&Experiment::Sweep) && !state.is_done("sweep") {
        let t = Instant::now();
        let cfg = sweep::SweepConfig {
            activations: a.activations.clone(),
            widths: widths.clone(),
            seeds: a.seeds,
            seed: a.seed,
            bias: true,
            train: train.clone(),
        };
        let pb = progress(
            (cfg.activations.len() * widths.len() * a.seeds) as u64,
            "width sweep",
        );
        let finished = std::mem::take(&mut state.sweep_runs);
        pb.set_position(finished.len() as u64);
        let total = pb.length().unwrap_or(0);
        let res =
            sweep::width_sweep_resumable(&x, &y, &cfg, &|| pb.inc(1), finished, &mut |runs| {
                test_point("point");
                match session.as_mut() {
                    Some(s) => s.safe_point(
                        false,
                        || format!("width sweep run {} of {total}", runs.len()),
                        || state.encode(state.seconds_before + t_all.elapsed().as_secs_f64(), runs),
                    ),
                    None => Ok(()),
                }
            })
            .map_err(err)?;
        pb.finish_and_clear();
        let mut csv = String::from("activation,width,seed,params,loss,grad_norm,stop,lbfgs_iterations,newton_iterations,reached_zero,lambda_min,lambda_residual,kind,weight_norm,saturated_units\n");
        for r in &res.runs {
            csv.push_str(&format!(
                "{},{},{},{},{:e},{:e},{},{},{},{},{},{},{:?},{:e},{}\n",
                r.activation,
                r.hidden[0],
                r.seed,
                r.params,
                r.loss,
                r.grad_norm,
                r.stop,
                r.lbfgs_iterations,
                r.newton_iterations,
                r.reached_zero,
                r.lambda_min.map_or(String::new(), |v| format!("{v:e}")),
                r.lambda_residual
                    .map_or(String::new(), |v| format!("{v:e}")),
                r.kind,
                r.weight_norm,
                r.saturation.saturated_units[0]
            ));
        }
        csv_write(&a.out.join("sweep.csv"), &csv)?;
        let series = a
            .activations
            .iter()
            .map(|act| {
                let pts: Vec<&sweep::WidthSummary> = res
                    .summary
                    .iter()
                    .filter(|s| s.activation == act.name())
                    .collect();
                Series::new(
                    act.name(),
                    pts.iter().map(|s| s.width as f64 / m as f64).collect(),
                    pts.iter().map(|s| s.frac_zero).collect(),
                )
            })
            .collect();
        line_plot_captioned(
            &LineFigure {
                title: format!("fraction of runs reaching loss <= {:e} (m = {m})", a.eps),
                x_label: "n1 / m".into(),
                y_label: "fraction at a global minimum".into(),
                series,
                markers: width_markers(m),
                ..Default::default()
            },
            &caption,
            &a.out.join("sweep_fraction"),
        )
        .map_err(err)?;
        state.report.push_str("## Width sweep (Theorem 1)\n\n| activation | n1 | runs | fraction zero | median loss | end points |\n|---|---|---|---|---|---|\n");
        for s in &res.summary {
            state.report.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2e} | {} |\n",
                s.activation,
                s.width,
                s.runs,
                s.frac_zero,
                s.median_loss,
                s.counts
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        state.report.push_str("\nThresholds (smallest grid width from which every run reached zero), beside m - 1 and m:\n\n");
        for (act, th) in &res.thresholds {
            state.report.push_str(&format!(
                "- {act}: {} (m - 1 = {}, m = {m})\n",
                th.map_or("not reached in the grid".into(), |w| w.to_string()),
                m - 1
            ));
        }
        state.report.push('\n');
        write(
            "sweep",
            serde_json::to_value(&cfg).unwrap_or_default(),
            serde_json::to_value(&res).unwrap_or_default(),
        )?;
        state.finish("sweep", t, t_all, &mut session)?;
    }

    if only.contains(&Experiment::Deep) && !state.is_done("deep") {
        let t = Instant::now();
        let k = y.cols();
        let smooth: Vec<Activation> = a
            .activations
            .iter()
            .copied()
            .filter(|a| *a != Activation::Relu)
            .collect();
        let cfg = sweep::DeepConfig {
            activations: smooth,
            wide_widths: vec![(m / 10).max(1), m / 4, m - 1, m + 1],
            later: vec![k],
            seeds: a.seeds.min(3),
            seed: a.seed,
            train: train.clone(),
            dense_block_max: 2500,
        };
        let pb = progress(
            (cfg.activations.len() * cfg.wide_widths.len() * cfg.seeds) as u64,
            "deep",
        );
        let recs = sweep::deep_conditions(&x, &y, &cfg, &|| pb.inc(1)).map_err(err)?;
        pb.finish_and_clear();
        let mut csv = String::from("activation,n1,seed,loss,reached_zero,kind,wide_rank,wide_rank_margin,cond_wide_rank,later_ranks,cond_full_rank,block_dim,block_min_abs_eig,block_max_abs_eig,cond_block_nonsingular,all_conditions,counterexample\n");
        state.report.push_str(&format!("## Deep nets (Theorem 2): [d, n1, {k}, {k}] with n1 the wide layer\n\n| activation | n1 | seed | loss | end point | rank [X1,1] (m = {m}) | later W full rank | block dim | min abs eig / max | all conditions | counterexample |\n|---|---|---|---|---|---|---|---|---|---|---|\n"));
        for r in &recs {
            csv.push_str(&format!(
                "{},{},{},{:e},{},{:?},{},{:.2},{},{:?},{},{},{:e},{:e},{},{},{}\n",
                r.run.activation,
                r.run.hidden[0],
                r.run.seed,
                r.run.loss,
                r.run.reached_zero,
                r.run.kind,
                r.wide_rank,
                r.wide_rank_margin_decades,
                r.cond_wide_rank,
                r.later_ranks,
                r.cond_full_rank,
                r.block_dim,
                r.block_min_abs_eig,
                r.block_max_abs_eig,
                r.cond_block_nonsingular,
                r.all_conditions,
                r.counterexample
            ));
            state.report.push_str(&format!(
                "| {} | {} | {} | {:.2e} | {:?} | {} | {} | {} | {:.1e} | {} | {} |\n",
                r.run.activation,
                r.run.hidden[0],
                r.run.seed,
                r.run.loss,
                r.run.kind,
                r.wide_rank,
                r.cond_full_rank,
                r.block_dim,
                r.block_min_abs_eig / r.block_max_abs_eig.max(1e-300),
                r.all_conditions,
                r.counterexample
            ));
        }
        let n_counter = recs.iter().filter(|r| r.counterexample).count();
        state.report.push_str(&format!(
            "\nCounterexamples (loss > eps with every condition holding): {n_counter} of {}.\n\n",
            recs.len()
        ));
        csv_write(&a.out.join("deep.csv"), &csv)?;
        write(
            "deep",
            serde_json::to_value(&cfg).unwrap_or_default(),
            json!({"m": m, "records": recs}),
        )?;
        state.finish("deep", t, t_all, &mut session)?;
    }

    if only.contains(&Experiment::Relu) && !state.is_done("relu") {
        let t = Instant::now();
        let cfg = relu::ReluConfig {
            width: m,
            margin: 1.0,
            seed: a.seed,
            probes: 200,
            train: train.clone(),
            seeds: a.seeds.min(3),
            tanh_scale: 0.1,
        };
        let pb = progress((2 + cfg.seeds) as u64, "relu");
        let res = relu::relu_certificate(&x, &y, &cfg, &|| pb.inc(1)).map_err(err)?;
        pb.finish_and_clear();
        state.report.push_str(&format!(
            "## ReLU: a certified bad local minimum at width n1 = m = {m}\n\n"
        ));
        for c in [&res.relu, &res.tanh] {
            state.report.push_str(&format!(
                "- {}: loss at the constructed point {:.6e} (affine least squares L* = {:.6e}), ||grad|| = {:.2e}, min pre-activation {:.3}, certified radius {}, min excess over L* of {} random points at 0.99 radius {}, lambda_min = {:.3e} (residual {:.1e}, ||H|| ~ {:.2e}); L-BFGS from the point: loss {:.3e} ({})\n",
                c.activation, c.loss, c.affine_ls_loss, c.grad_norm, c.min_preactivation,
                c.radius.map_or("-".into(), |r| format!("{r:.4e}")), cfg.probes,
                c.probe_min_excess.map_or("-".into(), |r| format!("{r:.3e}")),
                c.lambda_min.value, c.lambda_min.residual, c.lambda_min.norm,
                c.lbfgs_from_point_loss, c.lbfgs_from_point_stop
            ));
        }
        state.report.push_str(&format!(
            "- ReLU nets of width {m} trained from random initialisations: losses {:?}\n- Certified bad minimum: {}\n\n",
            res.relu_trained.iter().map(|r| format!("{:.2e}", r.loss)).collect::<Vec<_>>(),
            res.certified_bad_minimum
        ));
        write(
            "relu",
            serde_json::to_value(&cfg).unwrap_or_default(),
            serde_json::to_value(&res).unwrap_or_default(),
        )?;
        state.finish("relu", t, t_all, &mut session)?;
    }

    if only.contains(&Experiment::Path) && !state.is_done("path") {
        let t = Instant::now();
        let cfg = path::PathConfig {
            activation: Activation::Tanh,
            widths: vec![(m / 5).max(1), m.saturating_sub(1).max(1), m + 1],
            seed: a.seed,
            train_points: 15,
            eval_points: 61,
            q: 16.0,
            path_lbfgs: LbfgsConfig {
                max_iter: 300,
                ..LbfgsConfig::default()
            },
            train: train.clone(),
        };
        let pb = progress(cfg.widths.len() as u64, "paths");
        let (res, ends) = path::paths(&x, &y, &cfg, &|| pb.inc(1)).map_err(err)?;
        pb.finish_and_clear();
        let mut series = Vec::new();
        let mut csv = String::from("width,t,linear_loss,bezier_loss\n");
        for r in &res {
            for (i, t) in r.t.iter().enumerate() {
                csv.push_str(&format!(
                    "{},{},{:e},{:e}\n",
                    r.width, t, r.linear_losses[i], r.bezier_losses[i]
                ));
            }
            series.push(Series::new(
                format!("n1={} linear", r.width),
                r.t.clone(),
                r.linear_losses.iter().map(|v| v.max(1e-32)).collect(),
            ));
            series.push(Series::new(
                format!("n1={} Bezier", r.width),
                r.t.clone(),
                r.bezier_losses.iter().map(|v| v.max(1e-32)).collect(),
            ));
        }
        csv_write(&a.out.join("paths.csv"), &csv)?;
        line_plot_captioned(
            &LineFigure {
                title: format!("loss along paths between two minima (tanh, m = {m})"),
                x_label: "t".into(),
                y_label: "mean squared loss".into(),
                log_y: true,
                series,
                ..Default::default()
            },
            &caption,
            &a.out.join("paths"),
        )
        .map_err(err)?;
        state.report.push_str("## Sublevel sets: trained Bezier paths between two minima (tanh)\n\n| n1 | end losses | linear path max | Bezier path max | barrier (Bezier max - max end) | path optimiser |\n|---|---|---|---|---|---|\n");
        for r in &res {
            state.report.push_str(&format!(
                "| {} | {:.2e}, {:.2e} | {:.2e} | {:.2e} | {:.2e} | {} it, {} |\n",
                r.width,
                r.end_losses[0],
                r.end_losses[1],
                r.linear_max,
                r.bezier_max,
                r.barrier,
                r.path_iterations,
                r.path_stop
            ));
        }
        state.report.push('\n');
        write(
            "path",
            serde_json::to_value(&cfg).unwrap_or_default(),
            json!({"m": m, "paths": res, "end_points": ends}),
        )?;
        state.finish("path", t, t_all, &mut session)?;
    }

    if only.contains(&Experiment::Linear) && !state.is_done("linear") {
        let t = Instant::now();
        let k = y.cols();
        let cfg = linear::LinearConfig {
            architectures: vec![vec![32, 32], vec![4, 32], vec![k, k, k]],
            seeds: a.seeds.min(5),
            seed: a.seed,
            train: TrainSettings {
                init_scale: 1.0,
                ..train.clone()
            },
        };
        let pb = progress((cfg.architectures.len() * cfg.seeds) as u64, "linear");
        let recs = linear::linear_networks(&x, &y, &cfg, &|| pb.inc(1)).map_err(err)?;
        pb.finish_and_clear();
        state.report.push_str("## Deep linear networks (no biases)\n\n| hidden | bottleneck r | seed | closed-form optimum | reached | relative gap | stop |\n|---|---|---|---|---|---|---|\n");
        for r in &recs {
            state.report.push_str(&format!(
                "| {:?} | {} | {} | {:.8e} | {:.8e} | {:.1e} | {} |\n",
                r.hidden, r.bottleneck, r.seed, r.optimum, r.loss, r.rel_gap, r.stop
            ));
        }
        state.report.push('\n');
        write(
            "linear",
            serde_json::to_value(&cfg).unwrap_or_default(),
            json!({"m": m, "records": recs}),
        )?;
        state.finish("linear", t, t_all, &mut session)?;
    }
    state.report.push_str("## Wall time\n\n");
    for (n, s) in &state.timings {
        state.report.push_str(&format!("- {n}: {s:.1} s\n"));
    }
    state.report.push_str(&format!(
        "- total: {:.1} s on {} threads\n",
        state.seconds_before + t_all.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    ));
    super::write_file(&a.out.join("report.md"), state.report.as_bytes())?;
    a.ckpt.finish()?;
    println!("{}", state.report);
    Ok(())
}

/// Vertical markers at the chapter's width thresholds `n1 = m - 1` and `n1 = m` (x is `n1 / m`).
fn width_markers(m: usize) -> Vec<(f64, String)> {
    vec![
        ((m as f64 - 1.0) / m as f64, "m-1".into()),
        (1.0, "m".into()),
    ]
}
