//! `landscape bounds-sweep`: the bounds against exact norms across widths, depths and
//! initialisation scales (to cross M_W = 1), in one table with figures.

use super::{progress, write_results, DataArgs};
use clap::Args;
use landscape::io::checkpoint::{test_point, CheckpointError, Decoder, Encoder};
use landscape::io::provenance::Provenance;
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig};
use landscape::plot::{line_plot, LineFigure, Series};
use landscape::theory::validate::evaluate_bounds;
use landscape::train::{train, Optimizer, TrainConfig};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Hidden widths h.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32")]
    pub widths: Vec<usize>,
    /// Numbers of hidden layers (L = hidden + 1 weight matrices).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub depths: Vec<usize>,
    /// Initialisation scales (Kaiming init times the scale).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub init_scales: Vec<f64>,
    /// Training epochs per model (0: evaluate at initialisation).
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Samples for the exact GN norms (first N training samples).
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Samples (of those) for the exact full-Hessian norms.
    #[arg(long, default_value_t = 50)]
    pub full_samples: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Figure prefix: PREFIX-width.{png,svg}, PREFIX-depth.{png,svg}.
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Markdown report: which statements held in which configurations, and the smallest
    /// counterexample (fewest parameters) found for each failed statement.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Checkpoints after finished configurations (see `--resume`).
    #[command(flatten)]
    pub ckpt: super::CheckpointArgs,
}

/// The state of a sweep: its finished rows, as JSON text (parsed back exactly).
fn encode_rows(rows: &[serde_json::Value]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.usize(rows.len());
    for r in rows {
        e.str(&r.to_string());
    }
    e.finish()
}

fn decode_rows(payload: &[u8], dir: &Path, total: usize) -> Result<Vec<serde_json::Value>, String> {
    let path = landscape::io::checkpoint::path_in(dir);
    let mut d = Decoder::new(payload, &path);
    let read = |d: &mut Decoder| -> Result<Vec<serde_json::Value>, CheckpointError> {
        let n = d.usize()?;
        if n > total {
            return Err(d.error(format!("{n} finished configurations of {total}")));
        }
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let text = d.string()?;
            rows.push(
                serde_json::from_str(&text)
                    .map_err(|e| d.error(format!("a finished configuration: {e}")))?,
            );
        }
        d.end()?;
        Ok(rows)
    };
    read(&mut d).map_err(|e| e.to_string())
}

pub fn cmd_sweep(a: SweepArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    if a.widths.is_empty() || a.depths.is_empty() || a.init_scales.is_empty() {
        return Err("bounds-sweep: give at least one width, depth and init scale".into());
    }
    if a.widths.contains(&0) || a.depths.contains(&0) {
        return Err("bounds-sweep: widths and depths must be positive".into());
    }
    let n = a.samples.min(bundle.train.len());
    if n == 0 {
        return Err("bounds-sweep: --samples 0 is an empty subset".into());
    }
    let x = bundle.train.x.rows_view(0, n).to_owned();
    let y = bundle.train.y[..n].to_vec();
    let full: Vec<usize> = (0..a.full_samples.min(n)).collect();
    let mut configs: Vec<(usize, usize, f64)> = Vec::new();
    for &depth in &a.depths {
        for &h in &a.widths {
            for &scale in &a.init_scales {
                configs.push((depth, h, scale));
            }
        }
    }
    let total = configs.len();
    super::probe_outputs(&[a.csv.as_deref(), a.json.as_deref(), a.report.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
    let config = json!({"widths": a.widths, "depths": a.depths, "init_scales": a.init_scales, "epochs": a.epochs, "lr": a.lr,
               "batch_size": a.batch_size, "samples": n, "full_samples": full.len()});
    let mut session = a.ckpt.session(
        "bounds-sweep",
        json!({"sweep": config, "seed": a.seed, "data": bundle.summary_json()}),
    )?;
    let mut rows = match session.as_mut().and_then(|s| s.take_resume()) {
        Some(p) => decode_rows(&p, a.ckpt.dir().expect("a checkpoint folder"), total)?,
        None => Vec::new(),
    };
    let pb = progress(total as u64, "sweep");
    pb.set_position(rows.len() as u64);
    // One configuration: train, then the exact norms against the bounds (a JSON row).
    let run_config = |i: usize| -> Result<serde_json::Value, String> {
        let (depth, h, scale) = configs[i];
        let cfg = MlpConfig {
            input_dim: bundle.features,
            hidden: vec![h; depth],
            classes: bundle.classes,
            activation: Activation::Relu,
            leaky_slope: 0.01,
            bias: false,
            batchnorm: None,
            loss: LossKind::CrossEntropy,
        };
        let mut model =
            Mlp::<f64>::init(cfg, Init::Kaiming, scale, a.seed).map_err(|e| e.to_string())?;
        if a.epochs > 0 {
            let tc = TrainConfig {
                epochs: a.epochs,
                batch_size: a.batch_size,
                optimizer: Optimizer::Adam {
                    lr: a.lr,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.0,
                },
                seed: a.seed,
            };
            train(
                &mut model,
                &bundle.train.x,
                &bundle.train.y,
                None,
                &tc,
                |_, _, _| {},
                |_, _| Ok(()),
            )
            .map_err(|e| format!("h = {h}, depth = {depth}, scale = {scale}: {e}"))?;
        }
        let rep =
            evaluate_bounds(&model, &x, &y, &full, 1e-10, a.seed).map_err(|e| e.to_string())?;
        let checks: Vec<serde_json::Value> = rep
            .checks
            .iter()
            .map(|c| {
                let denom = if c.against == "gn" { n } else { full.len().max(1) };
                json!({"variant": c.variant, "against": c.against, "bound": c.bound, "worst_ratio": c.worst_ratio,
                       "violating_fraction": c.violations as f64 / denom as f64, "witness": c.witness, "certificate": c.certificate})
            })
            .collect();
        Ok(
            json!({"h": h, "depth": depth, "layers": depth + 1, "init_scale": scale, "params": model.num_params(), "m_w": rep.constants.m_w,
                         "m_x": rep.constants.m_x, "checks": checks}),
        )
    };
    if landscape::dist::size() > 1 {
        // Several MPI ranks (no checkpoints then): one configuration per work item.
        rows = landscape::dist::map_items(total, run_config, || pb.inc(1))?;
    }
    for i in rows.len()..total {
        rows.push(run_config(i)?);
        pb.inc(1);
        test_point("point");
        if let Some(s) = session.as_mut() {
            s.safe_point(
                i + 1 == total,
                || format!("configuration {} of {total}", i + 1),
                || encode_rows(&rows),
            )
            .map_err(|e| e.to_string())?;
        }
    }
    pb.finish_and_clear();
    let mut csv_text = String::from(
        "h,layers,init_scale,m_w,variant,against,bound,worst_ratio,violating_fraction\n",
    );
    for r in &rows {
        for c in r["checks"].as_array().expect("checks") {
            csv_text.push_str(&format!(
                "{},{},{},{:e},{},{},{:e},{:e},{}\n",
                r["h"],
                r["layers"],
                r["init_scale"],
                r["m_w"].as_f64().unwrap_or(f64::NAN),
                c["variant"].as_str().unwrap_or(""),
                c["against"].as_str().unwrap_or(""),
                c["bound"].as_f64().unwrap_or(f64::NAN),
                c["worst_ratio"].as_f64().unwrap_or(f64::NAN),
                c["violating_fraction"]
            ));
        }
    }
    print!("{csv_text}");
    if let Some(path) = &a.csv {
        super::write_file(path, csv_text.as_bytes())?;
    }
    let mut figures = Vec::new();
    if let Some(prefix) = &a.fig {
        let stem = prefix.display().to_string();
        // Worst ratio (against GN) vs h at the deepest depth, and vs L at the widest width (first init scale).
        let variants = ["theorem1_printed", "thesis", "tight"];
        let metric = |r: &serde_json::Value, v: &str, against: &str, key: &str| {
            r["checks"]
                .as_array()
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c["variant"] == v && c["against"] == against)
                })
                .and_then(|c| c[key].as_f64())
        };
        let s0 = a.init_scales[0];
        // (metric key, file tag, y label, log scale, norms compared)
        let metrics: [(&str, &str, &str, bool, &[&str]); 2] = [
            ("worst_ratio", "", "max_i ||GN_i|| / bound", true, &["gn"]),
            (
                "violating_fraction",
                "-violations",
                "fraction of samples violating (certified)",
                false,
                &["gn", "full"],
            ),
        ];
        for (key, tag, y_label, log_y, norms) in metrics {
            for (axis, fixed_label) in [("width", "h"), ("depth", "L")] {
                let mut series = Vec::new();
                for (v, against) in variants
                    .iter()
                    .flat_map(|v| norms.iter().map(move |n| (*v, *n)))
                {
                    let pts: Vec<(f64, f64)> = rows
                        .iter()
                        .filter(|r| r["init_scale"].as_f64() == Some(s0))
                        .filter(|r| {
                            if axis == "width" {
                                r["depth"] == *a.depths.iter().max().expect("depths")
                            } else {
                                r["h"] == *a.widths.iter().max().expect("widths")
                            }
                        })
                        .filter_map(|r| {
                            Some((
                                if axis == "width" {
                                    r["h"].as_f64()?
                                } else {
                                    r["layers"].as_f64()?
                                },
                                metric(r, v, against, key)?,
                            ))
                        })
                        .collect();
                    series.push(Series::new(
                        format!("{v} ({})", if against == "gn" { "GN" } else { "full H" }),
                        pts.iter().map(|p| p.0).collect(),
                        pts.iter().map(|p| p.1).collect(),
                    ));
                }
                let what = if log_y {
                    "Bound tightness"
                } else {
                    "Violations"
                };
                let fig = LineFigure {
                    title: format!("{what} vs {fixed_label}"),
                    x_label: fixed_label.into(),
                    y_label: y_label.into(),
                    log_y,
                    series,
                    ..Default::default()
                };
                figures.extend(
                    line_plot(&fig, Path::new(&format!("{stem}{tag}-{axis}")))
                        .map_err(|e| e.to_string())?,
                );
            }
        }
    }
    if let Some(path) = &a.report {
        super::write_file(path, sweep_report(&rows, n, full.len()).as_bytes())?;
    }
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        config,
    );
    write_results(
        a.json.as_deref(),
        "bounds-sweep",
        json!({"rows": rows, "figures": figures.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()}),
        &prov,
    )?;
    a.ckpt.finish()
}

/// The sweep in plain words: per statement and norm, in how many configurations it held,
/// and the smallest counterexample (fewest parameters, then smallest worst ratio) when it failed.
fn sweep_report(rows: &[serde_json::Value], n: usize, n_full: usize) -> String {
    let mut s = format!(
        "# Hessian-norm bounds across a sweep: report\n\n{} configurations; exact GN norms of {n} samples and exact full-Hessian norms of {n_full} samples in each.\n\n",
        rows.len()
    );
    s.push_str("| statement | against | held in | smallest counterexample (h, L, init scale, P) | its worst ratio | witness sample |\n|---|---|---|---|---|---|\n");
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in rows {
        for c in r["checks"].as_array().into_iter().flatten() {
            let k = (
                c["variant"].as_str().unwrap_or("").to_string(),
                c["against"].as_str().unwrap_or("").to_string(),
            );
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut failures = Vec::new();
    for (variant, against) in &keys {
        let mut held = 0;
        let mut smallest: Option<(u64, f64, &serde_json::Value, &serde_json::Value)> = None;
        for r in rows {
            let Some(c) = r["checks"].as_array().and_then(|cs| {
                cs.iter()
                    .find(|c| c["variant"] == variant.as_str() && c["against"] == against.as_str())
            }) else {
                continue;
            };
            if c["certificate"].is_null() {
                held += 1;
                continue;
            }
            let p = r["params"].as_u64().unwrap_or(u64::MAX);
            let ratio = c["worst_ratio"].as_f64().unwrap_or(f64::NAN);
            if smallest.is_none_or(|(sp, sr, _, _)| (p, ratio) < (sp, sr)) {
                smallest = Some((p, ratio, r, c));
            }
        }
        let (cex, ratio, witness) = match smallest {
            Some((p, ratio, r, c)) => {
                failures.push(format!(
                    "{variant} against the {against} norm fails already at h = {}, L = {}, init scale {} (P = {p}, M_W = {:.4}): sample {} has ratio {ratio:.4e}",
                    r["h"], r["layers"], r["init_scale"], r["m_w"].as_f64().unwrap_or(f64::NAN), c["witness"]
                ));
                (
                    format!(
                        "h = {}, L = {}, scale {}, P = {p}",
                        r["h"], r["layers"], r["init_scale"]
                    ),
                    format!("{ratio:.4e}"),
                    c["witness"].to_string(),
                )
            }
            None => (
                "none (held everywhere)".into(),
                String::new(),
                String::new(),
            ),
        };
        s.push_str(&format!(
            "| {variant} | {against} | {held} of {} | {cex} | {ratio} | {witness} |\n",
            rows.len()
        ));
    }
    s.push('\n');
    if failures.is_empty() {
        s.push_str("Every statement held in every configuration of this sweep.\n");
    } else {
        s.push_str("Smallest counterexamples found (a violation counts only when certified: the Ritz value minus its residual exceeds the bound):\n\n");
        for f in failures {
            s.push_str(&format!("- {f}.\n"));
        }
    }
    s
}
