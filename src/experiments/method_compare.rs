//! A comparison table of training methods (SGD, SAM, ASAM, SAM on the sphere, curvature
//! penalties; DESIGN.md section 13) from the JSON records that `landscape train`,
//! `landscape sphere train` and `landscape hessian` write: final test error, lambda_max
//! with its residual, the Hessian trace with its 95% interval, GM (the mean batch-gradient
//! norm) and wall time per epoch, as rows, a Markdown table and figures.
//!
//! Nothing is recomputed here: every number is read from the records, so the table can be
//! rebuilt from committed results. Test errors are evaluation-mode (BatchNorm running
//! statistics) for both record kinds; train errors are evaluation-mode for `train` and
//! train-mode (fixed batches) for `sphere train`, as those commands define them.

use crate::error::{Error, Result};
use crate::plot::{line_plot, LineFigure, Series};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One method's row.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MethodRow {
    pub label: String,
    /// The training method as recorded (`train`'s `method`, or `sphere` with its SAM rho).
    pub method: Value,
    pub final_train_error: f64,
    pub final_test_error: f64,
    /// Test error after every epoch (epoch 1 first).
    pub test_error_per_epoch: Vec<f64>,
    pub lambda_max: f64,
    pub lambda_residual: f64,
    /// Hutchinson estimate and its 95% interval.
    pub trace: f64,
    pub trace_ci95: (f64, f64),
    /// Mean batch-gradient norm and the 95% interval of the mean.
    pub gm: f64,
    pub gm_ci95: (f64, f64),
    pub gm_batch: usize,
    /// Mean wall seconds per epoch (training plus the epoch's evaluation: train and test
    /// error for `train`; train loss, GM and test error for `sphere train`).
    pub seconds_per_epoch: f64,
    /// Passes through the network per step (forward, backward, double, triple backward).
    pub passes_per_step: Value,
}

fn num(v: &Value, path: &[&str], what: &str) -> Result<f64> {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().ok_or_else(|| {
        Error::InvalidArgument(format!("{what}: no number at results.{}", path.join(".")))
    })
}

fn pair(v: &Value, what: &str) -> Result<(f64, f64)> {
    match (v[0].as_f64(), v[1].as_f64()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(Error::InvalidArgument(format!("{what}: not an interval"))),
    }
}

/// A row from a training record (`train` or `sphere train` JSON) and a curvature record
/// (`hessian --top 1 --trace --grad-norms B` JSON); `what` names them in errors.
pub fn method_row(label: &str, train: &Value, curvature: &Value, what: &str) -> Result<MethodRow> {
    // `sphere train --json` wraps the run record as `results.run`.
    let tr = match &train["results"]["run"] {
        r @ Value::Object(_) => r,
        _ => &train["results"],
    };
    let command = train["command"].as_str().unwrap_or("");
    let (train_err, test_err, per_epoch, secs, method, passes) = if tr["history"].is_array() {
        // A sphere run: history[0] is the starting point (0 steps).
        let h: Vec<&Value> = tr["history"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|r| r["steps"].as_u64().unwrap_or(0) > 0)
            .collect();
        let last = h
            .last()
            .ok_or_else(|| Error::InvalidArgument(format!("{what}: no trained epoch")))?;
        let per: Vec<f64> = h
            .iter()
            .map(|r| r["test_error"].as_f64().unwrap_or(f64::NAN))
            .collect();
        // The run's wall time less the starting point's measurement, per trained epoch
        // (each epoch's own `seconds` also counts its measurement twice).
        let start = tr["history"][0]["seconds"].as_f64().unwrap_or(0.0);
        let secs = (num(tr, &["wall_seconds"], what)? - start) / h.len() as f64;
        let sam = tr["config"]["sam"].as_f64();
        let method =
            serde_json::json!({"name": "sphere", "step": tr["config"]["step"], "sam": sam});
        let k = if sam.is_some() { 2 } else { 1 };
        let passes = serde_json::json!({"forward": k, "backward": k, "double_backward": 0, "triple_backward": 0});
        (
            num(last, &["train_error"], what)?,
            num(last, &["test_error"], what)?,
            per,
            secs,
            method,
            passes,
        )
    } else if command == "train" || tr["epochs"].is_array() {
        let e = tr["epochs"]
            .as_array()
            .ok_or_else(|| Error::InvalidArgument(format!("{what}: no epochs")))?;
        let per: Vec<f64> = e
            .iter()
            .map(|r| r["test_error"].as_f64().unwrap_or(f64::NAN))
            .collect();
        (
            num(tr, &["final", "train_error"], what)?,
            num(tr, &["final", "test_error"], what)?,
            per,
            num(tr, &["timing", "mean_epoch_seconds"], what)?,
            tr.get("method")
                .cloned()
                .unwrap_or(serde_json::json!({"name": "plain"})),
            tr.get("passes_per_step").cloned().unwrap_or(Value::Null),
        )
    } else {
        return Err(Error::InvalidArgument(format!(
            "{what}: not a train or sphere-train record"
        )));
    };
    let c = &curvature["results"];
    let lam = c["eigenvalues"]["ritz_values"][0].as_f64().ok_or_else(|| {
        Error::InvalidArgument(format!("{what}: no lambda_max (hessian --top 1)"))
    })?;
    let res = c["eigenvalues"]["residuals"][0]
        .as_f64()
        .ok_or_else(|| Error::InvalidArgument(format!("{what}: no residual")))?;
    let h = &c["trace"]["hutchinson"];
    let gm = &c["grad_norms"];
    Ok(MethodRow {
        label: label.to_string(),
        method,
        final_train_error: train_err,
        final_test_error: test_err,
        test_error_per_epoch: per_epoch,
        lambda_max: lam,
        lambda_residual: res,
        trace: num(h, &["estimate"], what)?,
        trace_ci95: pair(&h["ci95"], what)?,
        gm: num(gm, &["mean"], what)?,
        gm_ci95: pair(&gm["ci95_of_mean"], what)?,
        gm_batch: gm["batch_size"].as_u64().unwrap_or(0) as usize,
        seconds_per_epoch: secs,
        passes_per_step: passes,
    })
}

/// The Markdown table of the rows.
pub fn markdown_table(rows: &[MethodRow]) -> String {
    let mut s = String::from(
        "| method | test error | train error | lambda_max (residual) | trace [95% CI] | GM [95% CI] | s / epoch | passes / step (F, B, 2B, 3B) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let p = &r.passes_per_step;
        s.push_str(&format!(
            "| {} | {:.2}% | {:.2}% | {:.4} ({:.1e}) | {:.2} [{:.2}, {:.2}] | {:.4} [{:.4}, {:.4}] | {:.2} | {}, {}, {}, {} |\n",
            r.label,
            100.0 * r.final_test_error,
            100.0 * r.final_train_error,
            r.lambda_max,
            r.lambda_residual,
            r.trace,
            r.trace_ci95.0,
            r.trace_ci95.1,
            r.gm,
            r.gm_ci95.0,
            r.gm_ci95.1,
            r.seconds_per_epoch,
            p["forward"],
            p["backward"],
            p["double_backward"],
            p["triple_backward"],
        ));
    }
    s
}

/// Figures (PNG and SVG): test error per epoch for every method (`PREFIX-test-error`), and
/// final test error against the Hessian trace and against lambda_max (`PREFIX-vs-trace`,
/// `PREFIX-vs-lambda`; each method is a short horizontal mark at its value, log x).
pub fn figures(rows: &[MethodRow], prefix: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let curves = LineFigure {
        title: "Test error per epoch".into(),
        x_label: "epoch".into(),
        y_label: "test error".into(),
        series: rows
            .iter()
            .map(|r| {
                let x = (1..=r.test_error_per_epoch.len())
                    .map(|e| e as f64)
                    .collect();
                Series::new(r.label.clone(), x, r.test_error_per_epoch.clone())
            })
            .collect(),
        ..Default::default()
    };
    let mut p = prefix.as_os_str().to_owned();
    p.push("-test-error");
    files.extend(line_plot(&curves, Path::new(&p))?);
    for (name, title, get) in [
        (
            "-vs-trace",
            "Hessian trace (Hutchinson)",
            (|r: &MethodRow| r.trace) as fn(&MethodRow) -> f64,
        ),
        ("-vs-lambda", "lambda_max", |r: &MethodRow| r.lambda_max),
    ] {
        let fig = LineFigure {
            title: format!("Final test error against {title}"),
            x_label: title.into(),
            y_label: "final test error".into(),
            log_x: true,
            series: rows
                .iter()
                .map(|r| {
                    let v = get(r);
                    Series::new(
                        r.label.clone(),
                        vec![v * 0.97, v * 1.03],
                        vec![r.final_test_error; 2],
                    )
                })
                .collect(),
            ..Default::default()
        };
        let mut p = prefix.as_os_str().to_owned();
        p.push(name);
        files.extend(line_plot(&fig, Path::new(&p))?);
    }
    Ok(files)
}
