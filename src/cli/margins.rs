//! `landscape margins` and `landscape margins-study` (see
//! `landscape::experiments::margins`).

use super::{probe_outputs, progress, write_file, write_results, DataArgs, ModelArgs};
use clap::{Args, ValueEnum};
use landscape::experiments::margins::study::{
    analyse, load_data, models_csv, run_study, RunOptions, StudyConfig,
};
use landscape::experiments::margins::{compute_margins, hidden_count, parse_layers, SignatureKind};
use landscape::io::provenance::Provenance;
use landscape::plot::{
    line_plot, line_plot_captioned, scatter_plot, LineFigure, ScatterFigure, Series,
};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MarginSplit {
    Train,
    Test,
}

#[derive(Args)]
pub struct MarginsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Which split the margins are measured on.
    #[arg(long, value_enum, default_value = "train")]
    split: MarginSplit,
    /// Layers: comma-separated `input`, `hiddenK` (1-based), `output`, or `all`.
    #[arg(long, default_value = "all")]
    layers: String,
    /// Signature of each layer's normalised margins.
    #[arg(long, value_enum, default_value = "quartiles")]
    signature: SignatureKind,
    /// Per-sample CSV (margins, normalised margins, gradient norms per layer).
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Histogram figures PREFIX-LAYER.png/.svg of the normalised margins.
    #[arg(long)]
    figures: Option<PathBuf>,
    /// Histogram bins.
    #[arg(long, default_value_t = 50)]
    bins: usize,
    /// Summary (total variations, signatures) with provenance.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn cmd_margins(a: MarginsArgs, command_line: &str) -> Result<(), String> {
    if a.bins == 0 {
        return Err("--bins must be at least 1".into());
    }
    let bundle = a.data.load()?;
    let net = a.model.load_network(&bundle)?;
    let layers = parse_layers(&a.layers, hidden_count(&net)).map_err(|e| e.to_string())?;
    let ds = match a.split {
        MarginSplit::Train => &bundle.train,
        MarginSplit::Test => bundle
            .test
            .as_ref()
            .ok_or_else(|| format!("dataset {} has no test set", bundle.name))?,
    };
    probe_outputs(&[a.csv.as_deref(), a.json.as_deref()])?;
    let caption = format!(
        "model: {} ({} parameters); data: {}, {} split ({} samples)",
        a.model.model.display(),
        net.num_params(),
        bundle.name,
        match a.split {
            MarginSplit::Train => "train",
            MarginSplit::Test => "test",
        },
        ds.y.len()
    );
    let m = compute_margins(&net, &ds.x, &ds.y, &layers).map_err(|e| e.to_string())?;
    let sigs = m.signatures(a.signature).map_err(|e| e.to_string())?;
    if let Some(p) = &a.csv {
        write_file(p, m.to_csv(&ds.y).as_bytes())?;
    }
    let wrong = m
        .predicted
        .iter()
        .zip(&ds.y)
        .filter(|(p, y)| p != y)
        .count();
    let mut per_layer = Vec::new();
    for (l, s) in m.layers.iter().zip(&sigs) {
        eprintln!(
            "{}: total variation {:.4e}, {} = {}",
            s.layer,
            l.total_variation,
            a.signature.names().join("/"),
            s.values
                .iter()
                .map(|v| format!("{v:.4e}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        per_layer.push(json!({
            "layer": s.layer,
            "total_variation": l.total_variation,
            "signature": a.signature.names().iter().zip(&s.values).map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "samples": s.samples,
            "excluded_infinite": s.excluded,
            "negative": l.raw.iter().filter(|d| **d < 0.0).count(),
        }));
        if let Some(prefix) = &a.figures {
            histogram(
                &l.normalized,
                a.bins,
                &s.layer,
                &s.values,
                a.signature,
                &caption,
                prefix,
            )?;
        }
    }
    let prov = Provenance::new(
        command_line,
        None,
        Some(bundle.summary_json()),
        json!({
            "model_file": a.model.model.display().to_string(),
            "split": match a.split { MarginSplit::Train => "train", MarginSplit::Test => "test" },
            "layers": layers.iter().map(|l| l.name()).collect::<Vec<_>>(),
            "signature": a.signature,
            "bins": a.bins,
        }),
    );
    write_results(
        a.json.as_deref(),
        "margins",
        json!({"samples": ds.y.len(), "misclassified": wrong, "layers": per_layer}),
        &prov,
    )
}

/// Histogram of the finite values as a step curve, quartiles/fences as markers.
#[allow(clippy::too_many_arguments)]
fn histogram(
    v: &[f64],
    bins: usize,
    layer: &str,
    sig: &[f64],
    kind: SignatureKind,
    caption: &str,
    prefix: &Path,
) -> Result<(), String> {
    let f: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let lo = f.iter().copied().fold(f64::INFINITY, f64::min);
    let mut hi = f.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi <= lo {
        hi = lo + 1.0;
    }
    let w = (hi - lo) / bins as f64;
    let mut counts = vec![0usize; bins];
    for x in &f {
        counts[(((x - lo) / w) as usize).min(bins - 1)] += 1;
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (b, &c) in counts.iter().enumerate() {
        xs.push(lo + b as f64 * w);
        ys.push(c as f64);
        xs.push(lo + (b + 1) as f64 * w);
        ys.push(c as f64);
    }
    let markers = match kind {
        SignatureKind::Quartiles => kind
            .names()
            .iter()
            .zip(sig)
            .map(|(n, &x)| (x, n.to_string()))
            .collect(),
        SignatureKind::Moments => vec![(sig[0], "mean".to_string())],
    };
    let fig = LineFigure {
        title: format!("normalised margins at {layer} ({} samples)", f.len()),
        x_label: "d / total variation".into(),
        y_label: "samples per bin".into(),
        series: vec![Series::new("", xs, ys)],
        markers,
        ..Default::default()
    };
    let p = PathBuf::from(format!("{}-{layer}", prefix.display()));
    line_plot_captioned(&fig, caption, &p).map_err(|e| e.to_string())?;
    Ok(())
}

#[derive(Args)]
pub struct StudyArgs {
    /// Study configuration (JSON; see --print-config).
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Output folder: study-config.json, models/, models.csv, summary.json, figures.
    #[arg(long, required_unless_present = "print_config")]
    out: Option<PathBuf>,
    /// Models trained at once (results are identical for any value).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Continue the study in --out without retraining its finished models.
    #[arg(long)]
    resume: bool,
    /// Print the default configuration and exit.
    #[arg(long)]
    print_config: bool,
    /// Test hook: stop after this many models (exit as interrupted).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
}

pub fn cmd_study(a: StudyArgs, command_line: &str) -> Result<(), String> {
    if a.print_config {
        println!(
            "{}",
            serde_json::to_string_pretty(&StudyConfig::default()).expect("serialises")
        );
        return Ok(());
    }
    let (cpath, out) = (a.config.expect("clap"), a.out.expect("clap"));
    let text = std::fs::read_to_string(&cpath).map_err(|e| format!("{}: {e}", cpath.display()))?;
    let cfg: StudyConfig = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a valid study config: {e}", cpath.display()))?;
    cfg.validate().map_err(|e| e.to_string())?;
    let bundle = load_data(&cfg).map_err(|e| e.to_string())?;
    landscape::io::checkpoint::install_stop_handlers();
    let total = cfg.models().len();
    let pb = progress(total as u64, "models");
    let t0 = std::time::Instant::now();
    let records = run_study(
        &cfg,
        &bundle,
        &out,
        &RunOptions {
            jobs: a.jobs,
            resume: a.resume,
            stop_after: a.stop_after,
        },
        &|d, _| pb.set_position(d as u64),
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    let analysis = analyse(&cfg, &records).map_err(|e| e.to_string())?;
    write_file(
        &out.join("models.csv"),
        models_csv(&cfg, &records).as_bytes(),
    )?;
    for f in analysis.fits.iter().filter(|f| f.features == "all") {
        eprintln!(
            "epoch {}: ln gap on the signature of {} models: R^2 {:.3}, {}-fold CV R^2 {:.3}, tau {:.3} (CV {:.3})",
            f.epoch, f.models, f.r2, cfg.folds, f.cv_r2, f.tau, f.cv_tau
        );
        let fig = ScatterFigure {
            title: format!(
                "ln gap from margin signatures, epoch {} (R^2 {:.2}, CV {:.2})",
                f.epoch, f.r2, f.cv_r2
            ),
            x_label: "true ln(train acc - test acc)".into(),
            y_label: "predicted ln gap".into(),
            series: vec![
                Series::new(
                    "in-sample fit",
                    f.points.iter().map(|p| p.1).collect(),
                    f.points.iter().map(|p| p.2).collect(),
                ),
                Series::new(
                    format!("{}-fold out-of-fold", cfg.folds),
                    f.points.iter().map(|p| p.1).collect(),
                    f.points.iter().map(|p| p.3).collect(),
                ),
            ],
            diagonal: true,
            ..Default::default()
        };
        scatter_plot(&fig, &out.join(format!("fit-epoch{:03}", f.epoch)))
            .map_err(|e| e.to_string())?;
    }
    let usable: Vec<_> = records
        .iter()
        .filter(|r| r.gap > 0.0 && r.curvature.is_some())
        .collect();
    for m in &analysis.measures {
        eprintln!(
            "{}: Kendall tau with the gap {:.3} ({} models)",
            m.measure, m.tau, m.models
        );
        let get = |c: &landscape::experiments::margins::study::Curvature| match m.measure.as_str() {
            "lambda_max" => c.lambda_max,
            "trace" => c.trace,
            "gm" => c.gm,
            _ => c.sharpness,
        };
        let fig = ScatterFigure {
            title: format!(
                "{} vs generalisation gap (Kendall tau {:.2})",
                m.measure, m.tau
            ),
            x_label: landscape::plot::humanize(&m.measure),
            y_label: "train acc - test acc".into(),
            log_x: true,
            log_y: true,
            series: vec![Series::new(
                "",
                usable
                    .iter()
                    .map(|r| get(r.curvature.as_ref().expect("filtered")))
                    .collect(),
                usable.iter().map(|r| r.gap).collect(),
            )],
            ..Default::default()
        };
        scatter_plot(&fig, &out.join(format!("curvature-{}", m.measure)))
            .map_err(|e| e.to_string())?;
    }
    let all: Vec<_> = analysis
        .fits
        .iter()
        .filter(|f| f.features == "all")
        .collect();
    let xs: Vec<f64> = all.iter().map(|f| f.epoch as f64).collect();
    let fig = LineFigure {
        title: "margin-signature fit of ln gap against checkpoint epoch".into(),
        x_label: "epoch of the signature".into(),
        y_label: "R^2".into(),
        series: vec![
            Series::new("R^2 (fit)", xs.clone(), all.iter().map(|f| f.r2).collect()),
            Series::new(
                "R^2 (cross-validated)",
                xs,
                all.iter().map(|f| f.cv_r2).collect(),
            ),
        ],
        ..Default::default()
    };
    if all.is_empty() {
        // Fewer models than signature features: no fit, so no figure (summary.json says so).
        eprintln!(
            "no margin-signature fit (too few models for its features): r2-vs-epoch not drawn"
        );
    } else {
        line_plot(&fig, &out.join("r2-vs-epoch")).map_err(|e| e.to_string())?;
    }
    let prov = Provenance::new(
        command_line,
        None,
        Some(bundle.summary_json()),
        serde_json::to_value(&cfg).expect("serialises"),
    );
    eprintln!(
        "{} models in {:.1}s (this invocation)",
        records.len(),
        t0.elapsed().as_secs_f64()
    );
    write_results(
        Some(&out.join("summary.json")),
        "margins-study",
        serde_json::to_value(&analysis).expect("serialises"),
        &prov,
    )
}
