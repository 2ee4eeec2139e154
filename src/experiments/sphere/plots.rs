//! The seed's pictures for a set of sphere runs (PNG + SVG each): metric curves
//! against epoch, phase diagrams (train loss against effective GM, tr F and
//! lambda_max, log-log, one trajectory per run, the start marked), final metrics
//! against elr with the regime boundaries drawn, and histograms of the
//! consecutive-epoch cosine distances.

use super::run::{Boundary, EpochRecord, RunRecord};
use crate::error::Result;
use crate::plot::{line_plot_captioned, LineFigure, Series};
use std::path::{Path, PathBuf};

type Getter = fn(&EpochRecord) -> Option<f64>;

fn metrics() -> Vec<(&'static str, &'static str, bool, Getter)> {
    vec![
        ("train_loss", "train loss (train-mode BN)", true, |r| {
            Some(r.train_loss)
        }),
        ("train_error", "train error", false, |r| Some(r.train_error)),
        ("test_error", "test error (eval-mode BN)", false, |r| {
            r.test_error
        }),
        ("gm", "effective GM (rho * mean ||g_batch||)", true, |r| {
            Some(r.gm_effective)
        }),
        ("fisher", "effective tr F (rho^2 tr F)", true, |r| {
            r.fisher_effective
        }),
        ("lambda", "effective lambda_max (rho^2 lambda)", true, |r| {
            r.lambda_effective
        }),
        (
            "cos_dist",
            "cosine distance to the previous epoch",
            true,
            |r| r.cos_dist_prev,
        ),
    ]
}

fn series_of(runs: &[RunRecord], f: Getter) -> Vec<Series> {
    runs.iter()
        .filter_map(|r| {
            let (x, y): (Vec<f64>, Vec<f64>) = r
                .history
                .iter()
                .filter_map(|h| f(h).map(|v| (h.epoch as f64, v)))
                .unzip();
            (!x.is_empty()).then(|| Series::new(r.name.clone(), x, y))
        })
        .collect()
}

fn drawable(s: &[Series], log_y: bool) -> bool {
    s.iter()
        .any(|s| s.y.iter().any(|v| v.is_finite() && (!log_y || *v > 0.0)))
}

/// Writes every figure under `dir` with names prefixed by `prefix`; returns the
/// files written. Figures without drawable data (e.g. no curvature measured) are skipped.
/// The caption of a sweep's figures: the model, its scale-invariant parameters, the
/// batch size, the samples the metrics use and the runs drawn.
fn sweep_caption(runs: &[RunRecord]) -> String {
    let Some(r) = runs.first() else {
        return String::new();
    };
    let samples = match r.config.metrics.metric_samples {
        Some(n) => format!("metrics on {n} samples"),
        None => "metrics on all samples".to_string(),
    };
    format!(
        "model: {} ({} scale-invariant parameters, {} classes); batch {}; {samples}; {} run{}",
        r.architecture,
        r.si_parameters,
        r.classes,
        r.config.batch_size,
        runs.len(),
        if runs.len() == 1 { "" } else { "s" }
    )
}

pub fn sweep_figures(
    runs: &[RunRecord],
    bounds: &[Boundary],
    dir: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let p = |name: &str| dir.join(format!("{prefix}{name}"));
    let caption = sweep_caption(runs);
    let line_plot = |fig: &LineFigure, path: &Path| line_plot_captioned(fig, &caption, path);
    for (key, label, log_y, f) in metrics() {
        let s = series_of(runs, f);
        if !drawable(&s, log_y) {
            continue;
        }
        files.extend(line_plot(
            &LineFigure {
                title: format!("{label} against epoch"),
                x_label: "epoch".into(),
                y_label: label.into(),
                log_x: false,
                log_y,
                series: s,
                markers: vec![],
            },
            &p(&format!("curves_{key}")),
        )?);
    }
    // Phase diagrams: x = train loss, y = effective GM / tr F / lambda_max.
    let phase: [(&str, &str, Getter); 3] = [
        ("gm", "effective GM", |r| Some(r.gm_effective)),
        ("fisher", "effective tr F", |r| r.fisher_effective),
        ("lambda", "effective lambda_max", |r| r.lambda_effective),
    ];
    for (key, label, f) in phase {
        let mut s: Vec<Series> = runs
            .iter()
            .filter_map(|r| {
                let (x, y): (Vec<f64>, Vec<f64>) = r
                    .history
                    .iter()
                    .filter_map(|h| f(h).map(|v| (h.train_loss, v)))
                    .unzip();
                (!x.is_empty()).then(|| Series::new(r.name.clone(), x, y))
            })
            .collect();
        if !drawable(&s, true) {
            continue;
        }
        // The start of every run (one marked point each; the runs of a sweep share it).
        let mut starts: Vec<(f64, f64)> = Vec::new();
        for r in runs {
            if let Some(h) = r.history.first() {
                if let Some(v) = f(h) {
                    if !starts.contains(&(h.train_loss, v)) {
                        starts.push((h.train_loss, v));
                    }
                }
            }
        }
        for (i, (x, y)) in starts.into_iter().enumerate() {
            let name = if i == 0 { "start" } else { "" };
            s.push(Series::new(name, vec![x], vec![y]));
        }
        files.extend(line_plot(
            &LineFigure {
                title: format!("phase diagram: train loss vs {label}"),
                x_label: "train loss".into(),
                y_label: label.into(),
                log_x: true,
                log_y: true,
                series: s,
                markers: vec![],
            },
            &p(&format!("phase_{key}")),
        )?);
    }
    // Final metrics against elr (constant-elr runs only), boundaries as markers.
    let finals: Vec<(f64, &EpochRecord)> = runs
        .iter()
        .filter_map(|r| match (&r.config.schedule, r.history.last()) {
            (super::ElrSchedule::Constant { elr }, Some(h)) => Some((*elr, h)),
            _ => None,
        })
        .collect();
    if finals.len() >= 2 {
        let markers: Vec<(f64, String)> = bounds
            .iter()
            .map(|b| {
                (
                    (b.elr_below * b.elr_above).sqrt(),
                    format!("{}|{}", b.from_regime, b.to_regime),
                )
            })
            .collect();
        for (key, label, log_y, f) in metrics() {
            let mut pts: Vec<(f64, f64)> = finals
                .iter()
                .filter_map(|(e, h)| f(h).map(|v| (*e, v)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let s = vec![Series::new(
                "final epoch",
                pts.iter().map(|p| p.0).collect(),
                pts.iter().map(|p| p.1).collect(),
            )];
            if !drawable(&s, log_y) {
                continue;
            }
            files.extend(line_plot(
                &LineFigure {
                    title: format!("final {label} against elr (regime boundaries marked)"),
                    x_label: "effective learning rate".into(),
                    y_label: label.into(),
                    log_x: true,
                    log_y,
                    series: s,
                    markers: markers.clone(),
                },
                &p(&format!("final_{key}")),
            )?);
        }
    }
    // Histograms of consecutive-epoch cosine distances (log-spaced bins).
    let all: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.history.iter().filter_map(|h| h.cos_dist_prev))
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    if !all.is_empty() {
        let lo = all
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        let hi = all
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
            .log10()
            .ceil()
            .max(lo + 1.0);
        let nb = (((hi - lo) * 4.0) as usize).max(4);
        let edge = |i: usize| 10f64.powf(lo + (hi - lo) * i as f64 / nb as f64);
        let s: Vec<Series> = runs
            .iter()
            .filter_map(|r| {
                let v: Vec<f64> = r.history.iter().filter_map(|h| h.cos_dist_prev).collect();
                if v.is_empty() {
                    return None;
                }
                let mut counts = vec![0.0; nb];
                for x in &v {
                    if *x > 0.0 {
                        let k = (((x.log10() - lo) / (hi - lo)) * nb as f64).floor() as isize;
                        counts[k.clamp(0, nb as isize - 1) as usize] += 1.0;
                    }
                }
                // A step outline of the histogram.
                let (mut x, mut y) = (Vec::new(), Vec::new());
                for (i, c) in counts.iter().enumerate() {
                    x.push(edge(i));
                    y.push(*c);
                    x.push(edge(i + 1));
                    y.push(*c);
                }
                Some(Series::new(r.name.clone(), x, y))
            })
            .collect();
        files.extend(line_plot(
            &LineFigure {
                title: "consecutive-epoch cosine distances".into(),
                x_label: "1 - cos(w_e, w_{e-1})".into(),
                y_label: "epochs".into(),
                log_x: true,
                log_y: false,
                series: s,
                markers: vec![],
            },
            &p("cos_hist"),
        )?);
    }
    Ok(files)
}
