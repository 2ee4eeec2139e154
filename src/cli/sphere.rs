//! `landscape sphere train|sweep|connect|plot`: argument parsing and output
//! around `landscape::experiments::sphere` (scale-invariant networks trained on
//! the sphere, seed 001).

use super::{input_shape, progress, resolve_arch, write_results, DataArgs};
use clap::{Args, Subcommand, ValueEnum};
use landscape::data::DataBundle;
use landscape::experiments::sphere::{
    boundaries, check_scale_invariance, classify, connect_on_sphere, default_last_norm,
    elr_dir_name, load_checkpoint, log_grid, read_run_record, run_in_dir, set_head_norm,
    si_architecture, sweep_figures, ElrSchedule, FisherMethod, MetricsConfig, RadiusMode,
    RegimeRule, RunRecord, SiSpec, SphereRun, SphereRunConfig, Spheres, StepKind,
};
use landscape::io::provenance::Provenance;
use landscape::nn::{Init, LossKind, Network};
use landscape::plot::{line_plot_captioned, LineFigure, Series};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Subcommand)]
pub enum SphereCommand {
    /// Train one scale-invariant network on the sphere (one elr or an elr schedule).
    Train(SphereTrainArgs),
    /// Train one run per elr (shared initialisation and batch order), label the regimes, draw the figures.
    Sweep(SphereSweepArgs),
    /// Linear path between two SI models, each point renormalised to the sphere, BN statistics recomputed.
    Connect(SphereConnectArgs),
    /// Redraw the figures (and regime table) of run directories written by train or sweep.
    Plot(SpherePlotArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FisherArg {
    Exact,
    Hutchinson,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F64,
}

#[derive(Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture: a preset with BatchNorm (convnet, resnet20, ...) or a JSON file; its SI
    /// form is used (BN affine=False, no bias before BN, the last linear layer frozen).
    #[arg(long, default_value = "convnet")]
    arch: String,
    /// Width c of the convnet preset.
    #[arg(long, default_value_t = 8)]
    width: usize,
    #[arg(long, value_enum, default_value = "ce")]
    loss: LossKind,
    /// Frobenius norm of the frozen last layer's weight (default 10 for ce, 1.5 for mse).
    #[arg(long)]
    last_norm: Option<f64>,
    /// Radius of the sphere: `initial` (the initial norm of the SI vector) or a number.
    #[arg(long, default_value = "initial")]
    radius: String,
    /// One sphere per SI tensor instead of one for the whole SI vector.
    #[arg(long)]
    per_layer: bool,
    /// Start from this checkpoint (fine-tuning: its weights, spheres and epoch count).
    #[arg(long)]
    from: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "projected")]
    step: StepKind,
    /// SAM on the sphere: tangent ascent of length RHO, retraction, the gradient there
    /// projected onto the tangent space at w, then the --step (projected or riemannian).
    #[arg(long, value_name = "RHO", allow_negative_numbers = true)]
    sam: Option<f64>,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Seeds the batch order and the random-walk directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seeds the initialisation (default: --seed).
    #[arg(long)]
    init_seed: Option<u64>,
    /// Precision of the forward/backward passes (the SI master weights are always f64).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Measure every N epochs.
    #[arg(long, default_value_t = 1)]
    metrics_every: usize,
    /// Train loss, error and GM over the first N training samples (default: all).
    #[arg(long)]
    metric_samples: Option<usize>,
    /// tr F and lambda_max every N epochs and at the end (0: never).
    #[arg(long, default_value_t = 5)]
    curvature_every: usize,
    /// Training samples (the first ones) for tr F and lambda_max.
    #[arg(long, default_value_t = 512)]
    curvature_samples: usize,
    /// Train-mode BN batch size for the curvature (default: --batch-size).
    #[arg(long)]
    curvature_batch: Option<usize>,
    #[arg(long, value_enum, default_value = "hutchinson")]
    fisher: FisherArg,
    /// Hutchinson probes for tr F.
    #[arg(long, default_value_t = 8)]
    fisher_probes: usize,
    /// Lanczos iterations for lambda_max.
    #[arg(long, default_value_t = 20)]
    lanczos_iter: usize,
    /// Also keep `epoch_{e}.safetensors` every N epochs (0: only the latest checkpoint).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Continue runs found in the output directory from their checkpoints.
    #[arg(long)]
    resume: bool,
    /// Output directory (run.json, metrics.csv, checkpoints, figs/).
    #[arg(long)]
    out: PathBuf,
    /// Also write the results (with provenance) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No figures.
    #[arg(long)]
    no_figs: bool,
}

#[derive(Args)]
pub struct SphereTrainArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The elr: a number, or a piecewise-linear schedule `EPOCH:ELR,...` (epochs of this run).
    #[arg(long)]
    elr: String,
}

#[derive(Args)]
pub struct SphereSweepArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// elr values, comma-separated (default: the log grid of --grid).
    #[arg(long, value_delimiter = ',')]
    elr: Option<Vec<f64>>,
    /// Log grid LO:HI:N used when --elr is not given.
    #[arg(long, default_value = "1e-5:1:11")]
    grid: String,
    /// Runs trained at the same time (each uses the shared thread pool).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
}

#[derive(Args)]
pub struct SphereConnectArgs {
    #[command(flatten)]
    data: DataArgs,
    /// The two SI models (sphere checkpoints or SI model files).
    #[arg(long)]
    a: PathBuf,
    #[arg(long)]
    b: PathBuf,
    #[arg(long, default_value_t = 11)]
    points: usize,
    /// Batch size of the BN recomputation and the train-mode evaluation.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Figure prefix (PNG + SVG).
    #[arg(long)]
    fig: Option<PathBuf>,
}

#[derive(Args)]
pub struct SpherePlotArgs {
    /// Run directories (each with a run.json).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Directory of the figures.
    #[arg(long)]
    fig_dir: PathBuf,
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn cmd_sphere(c: SphereCommand, command_line: &str) -> Result<(), String> {
    match c {
        SphereCommand::Train(a) => cmd_train(a, command_line),
        SphereCommand::Sweep(a) => cmd_sweep(a, command_line),
        SphereCommand::Connect(a) => cmd_connect(a, command_line),
        SphereCommand::Plot(a) => cmd_plot(a, command_line),
    }
}

/// A run's legend name: its elr, the step when it is a baseline, the start epoch when fine-tuned.
fn run_name(elr: &str, step: StepKind, start_epoch: usize) -> String {
    let mut n = format!("elr {elr}");
    match step {
        StepKind::Projected => {}
        StepKind::Riemannian => n.push_str(" riemannian"),
        StepKind::RandomWalk => n.push_str(" random walk"),
        StepKind::Ascent => n.push_str(" ascent"),
    }
    if start_epoch > 0 {
        n.push_str(&format!(" from epoch {start_epoch}"));
    }
    n
}

fn e(e: landscape::Error) -> String {
    e.to_string()
}

fn run_config(a: &CommonArgs, schedule: ElrSchedule) -> Result<SphereRunConfig, String> {
    if a.epochs == 0 {
        return Err("--epochs must be at least 1".into());
    }
    let cfg = SphereRunConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        seed: a.seed,
        schedule,
        step: a.step,
        f32: a.dtype == DtypeArg::F32,
        metrics: MetricsConfig {
            every: a.metrics_every,
            metric_samples: a.metric_samples,
            curvature_every: a.curvature_every,
            curvature_samples: a.curvature_samples,
            curvature_batch: a.curvature_batch.unwrap_or(a.batch_size),
            fisher: match a.fisher {
                FisherArg::Exact => FisherMethod::Exact,
                FisherArg::Hutchinson => FisherMethod::Hutchinson {
                    probes: a.fisher_probes,
                },
            },
            lanczos_iter: a.lanczos_iter,
        },
        sam: a.sam,
    };
    cfg.validate().map_err(e)?;
    Ok(cfg)
}

/// The starting point: a checkpoint (`--from`) or a fresh SI network.
fn start_run(a: &CommonArgs, bundle: &DataBundle) -> Result<SphereRun, String> {
    if let Some(from) = &a.from {
        let (run, _) = load_checkpoint(from, a.per_layer).map_err(e)?;
        super::check_network_fits(&run.net, bundle)?;
        return Ok(run);
    }
    let arch = resolve_arch(&a.arch, a.width, 1, bundle, a.loss)?;
    let arch = si_architecture(&arch).map_err(e)?;
    if arch.input_shape != input_shape(bundle) {
        return Err(format!(
            "--arch {}: input shape {:?} does not match the data's {:?}",
            a.arch,
            arch.input_shape,
            input_shape(bundle)
        ));
    }
    let mut net: Network<f64> =
        Network::init(arch, Init::Torch, 1.0, a.init_seed.unwrap_or(a.seed)).map_err(e)?;
    let spec = SiSpec::of(&net).map_err(e)?;
    let last = a.last_norm.unwrap_or_else(|| default_last_norm(a.loss));
    set_head_norm(&mut net, &spec, last).map_err(e)?;
    let mode = if a.radius == "initial" {
        RadiusMode::Initial
    } else {
        let r: f64 = a
            .radius
            .parse()
            .map_err(|_| format!("--radius: '{}' is neither 'initial' nor a number", a.radius))?;
        RadiusMode::Fixed { radius: r }
    };
    let mut w = spec.vector(&net);
    let spheres = Spheres::new(&spec, &mut w, mode, a.per_layer).map_err(e)?;
    spec.set_vector(&mut net, &w);
    let n = bundle.train.len().min(64);
    let xs = bundle.train.x.rows_view(0, n).to_owned();
    check_scale_invariance(&net, &spec, &xs).map_err(e)?;
    Ok(SphereRun::new(net, spec, spheres, 0))
}

fn provenance(
    a: &CommonArgs,
    bundle: &DataBundle,
    config: serde_json::Value,
    cl: &str,
) -> Provenance {
    let mut config = config;
    config["arch"] = json!(a.arch);
    config["width"] = json!(a.width);
    config["loss"] = json!(a.loss);
    config["last_norm"] = json!(a.last_norm.unwrap_or_else(|| default_last_norm(a.loss)));
    config["radius"] = json!(a.radius);
    config["per_layer"] = json!(a.per_layer);
    config["from"] = json!(a.from);
    config["init_seed"] = json!(a.init_seed.unwrap_or(a.seed));
    Provenance::new(cl, Some(a.seed), Some(bundle.summary_json()), config)
}

fn print_run(r: &RunRecord) {
    if let Some(h) = r.history.last() {
        eprintln!(
            "{}: epoch {} train loss {:.4} train error {:.2}% test error {} GM_eff {:.4} radius {:.6} -> regime {}",
            r.name,
            h.epoch,
            h.train_loss,
            100.0 * h.train_error,
            h.test_error
                .map_or("-".into(), |v| format!("{:.2}%", 100.0 * v)),
            h.gm_effective,
            h.radius,
            r.regime.label
        );
    }
}

fn figures(runs: &[RunRecord], dir: &Path) -> Result<Vec<String>, String> {
    let labels: Vec<(f64, u8)> = runs
        .iter()
        .filter_map(|r| match r.config.schedule {
            ElrSchedule::Constant { elr } => Some((elr, r.regime.regime)),
            _ => None,
        })
        .collect();
    let b = boundaries(&labels);
    Ok(sweep_figures(runs, &b, dir, "")
        .map_err(e)?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect())
}

fn cmd_train(a: SphereTrainArgs, cl: &str) -> Result<(), String> {
    let c = &a.common;
    let bundle = c.data.load()?;
    let schedule = ElrSchedule::parse(&a.elr).map_err(e)?;
    let cfg = run_config(c, schedule)?;
    super::probe_dir(&c.out)?;
    let start = start_run(c, &bundle)?;
    let prov = provenance(c, &bundle, json!({"run": cfg}), cl);
    let rule = RegimeRule::default();
    let steps = (bundle.train.len().div_ceil(c.batch_size) * c.epochs) as u64;
    let pb = progress(steps, "sphere train");
    let pbc = pb.clone();
    let name = run_name(&cfg.schedule.label(), cfg.step, start.start_epoch);
    let rec = run_in_dir(
        &c.out,
        &name,
        &start,
        &cfg,
        &rule,
        &bundle.train,
        bundle.test.as_ref(),
        &prov,
        c.resume,
        c.save_every,
        Box::new(move || pbc.inc(1)),
    )
    .map_err(e)?;
    pb.finish_and_clear();
    print_run(&rec);
    let figs = if c.no_figs {
        vec![]
    } else {
        figures(std::slice::from_ref(&rec), &c.out.join("figs"))?
    };
    write_results(
        c.json.as_deref(),
        "sphere train",
        json!({"run": rec, "figures": figs}),
        &prov,
    )
}

fn parse_grid3(s: &str) -> Result<Vec<f64>, String> {
    let p: Vec<&str> = s.split(':').collect();
    let bad = || format!("--grid '{s}': expected LO:HI:N, e.g. 1e-5:1:11");
    if p.len() != 3 {
        return Err(bad());
    }
    let lo: f64 = p[0].parse().map_err(|_| bad())?;
    let hi: f64 = p[1].parse().map_err(|_| bad())?;
    let n: usize = p[2].parse().map_err(|_| bad())?;
    log_grid(lo, hi, n).map_err(e)
}

fn cmd_sweep(a: SphereSweepArgs, cl: &str) -> Result<(), String> {
    let c = &a.common;
    let elrs = match &a.elr {
        Some(v) if !v.is_empty() => v.clone(),
        _ => parse_grid3(&a.grid)?,
    };
    if let Some(bad) = elrs.iter().find(|v| !(**v > 0.0 && v.is_finite())) {
        return Err(format!("--elr: {bad} is not a positive finite number"));
    }
    super::probe_dir(&c.out)?;
    if a.jobs == 0 {
        return Err("--jobs must be at least 1".into());
    }
    let bundle = c.data.load()?;
    let base = run_config(c, ElrSchedule::Constant { elr: elrs[0] })?;
    let start = start_run(c, &bundle)?;
    let prov = provenance(
        c,
        &bundle,
        json!({"elrs": elrs, "run": base, "jobs": a.jobs}),
        cl,
    );
    let rule = RegimeRule::default();
    let t0 = std::time::Instant::now();
    let steps = (bundle.train.len().div_ceil(c.batch_size) * c.epochs * elrs.len()) as u64;
    let pb = progress(steps, "sphere sweep");
    let run_one = |i: usize, on_step: Box<dyn FnMut() + '_>| {
        let mut cfg = base.clone();
        cfg.schedule = ElrSchedule::Constant { elr: elrs[i] };
        let dir = c.out.join(elr_dir_name(elrs[i]));
        run_in_dir(
            &dir,
            &run_name(&format!("{:.2e}", elrs[i]), base.step, start.start_epoch),
            &start,
            &cfg,
            &rule,
            &bundle.train,
            bundle.test.as_ref(),
            &prov,
            c.resume,
            c.save_every,
            on_step,
        )
        .map_err(|err| format!("elr {:e}: {err}", elrs[i]))
    };
    let mut runs = Vec::new();
    if landscape::dist::distributed() {
        // Several MPI ranks: one run per work item (--jobs does not apply); a run's
        // files are kept and written by rank 0, in the order of the runs.
        let out = landscape::dist::map_items(
            elrs.len(),
            |i| {
                let pbc = pb.clone();
                let (r, files) =
                    landscape::io::capture_writes(|| run_one(i, Box::new(move || pbc.inc(1))));
                r.map(|rec| (rec, files))
            },
            || {},
        )?;
        pb.finish_and_clear();
        for (rec, files) in out {
            landscape::io::write_captured(&files).map_err(e)?;
            print_run(&rec);
            runs.push(rec);
        }
    } else {
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<RunRecord, String>>>> =
            Mutex::new((0..elrs.len()).map(|_| None).collect());
        std::thread::scope(|s| {
            for _ in 0..a.jobs.min(elrs.len()) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= elrs.len() {
                        break;
                    }
                    let pbc = pb.clone();
                    let r = run_one(i, Box::new(move || pbc.inc(1)));
                    if let Ok(rec) = &r {
                        pb.suspend(|| print_run(rec));
                    }
                    results.lock().expect("results lock")[i] = Some(r);
                });
            }
        });
        pb.finish_and_clear();
        for r in results
            .into_inner()
            .expect("results lock")
            .into_iter()
            .flatten()
        {
            runs.push(r?);
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let labels: Vec<(f64, u8)> = elrs
        .iter()
        .zip(&runs)
        .map(|(&e, r)| (e, r.regime.regime))
        .collect();
    let b = boundaries(&labels);
    let figs = if c.no_figs {
        vec![]
    } else {
        figures(&runs, &c.out.join("figs"))?
    };
    // The table of final metrics and the rule's inputs.
    let mut csv = String::from("elr,regime,label,final_train_loss,final_train_error,final_test_error,final_gm_effective,final_fisher_effective,final_lambda_effective,window_mean_train_error,window_mean_cos_dist,decreasing_frac,radius_rel_dev_max,wall_seconds\n");
    let o = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:e}"));
    for (elr, r) in elrs.iter().zip(&runs) {
        let h = r.history.last().expect("a run has records");
        let inp = r.regime.inputs.as_ref();
        let dev = r
            .history
            .iter()
            .map(|h| h.radius_rel_dev)
            .fold(0.0, f64::max);
        csv.push_str(&format!(
            "{elr:e},{},{},{:e},{:e},{},{:e},{},{},{},{},{},{:e},{:.1}\n",
            r.regime.regime,
            r.regime.label,
            h.train_loss,
            h.train_error,
            o(h.test_error),
            h.gm_effective,
            o(h.fisher_effective),
            o(h.lambda_effective),
            o(inp.map(|i| i.window_mean_train_error)),
            o(inp.map(|i| i.window_mean_cos_dist)),
            o(inp.map(|i| i.decreasing_frac)),
            dev,
            r.wall_seconds
        ));
    }
    std::fs::create_dir_all(&c.out).map_err(|err| format!("{}: {err}", c.out.display()))?;
    super::write_file(&c.out.join("sweep.csv"), csv.as_bytes())?;
    let summary: Vec<serde_json::Value> = elrs
        .iter()
        .zip(&runs)
        .map(|(elr, r)| {
            json!({"elr": elr, "dir": c.out.join(elr_dir_name(*elr)), "regime": r.regime,
                   "final": r.history.last(), "wall_seconds": r.wall_seconds})
        })
        .collect();
    let results = json!({
        "elrs": elrs,
        "rule": rule,
        "runs": summary,
        "boundaries": b,
        "wall_seconds": wall,
        "figures": figs,
    });
    landscape::io::provenance::write_json(
        &c.out.join("sweep.json"),
        "sphere sweep",
        results.clone(),
        &prov,
    )
    .map_err(e)?;
    write_results(c.json.as_deref(), "sphere sweep", results, &prov)?;
    println!("sweep of {} runs in {wall:.1}s", elrs.len());
    for b in &b {
        println!(
            "regime {} -> {} between elr {:.2e} and {:.2e}",
            b.from_regime, b.to_regime, b.elr_below, b.elr_above
        );
    }
    Ok(())
}

fn cmd_connect(a: SphereConnectArgs, cl: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let (ra, _) = load_checkpoint(&a.a, false).map_err(e)?;
    let (rb, _) = load_checkpoint(&a.b, false).map_err(e)?;
    super::check_network_fits(&ra.net, &bundle)?;
    super::probe_outputs(&[a.json.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
    let pb = progress(a.points as u64, "sphere connect");
    let pts = connect_on_sphere(
        &ra,
        &rb,
        a.points,
        &bundle.train,
        bundle.test.as_ref(),
        a.batch_size,
        || pb.inc(1),
    )
    .map_err(e)?;
    pb.finish_and_clear();
    let prov = Provenance::new(
        cl,
        None,
        Some(bundle.summary_json()),
        json!({"a": a.a, "b": a.b, "points": a.points, "batch_size": a.batch_size}),
    );
    for p in &pts {
        println!(
            "t {:.3}  train loss {:.4}  train error {:.2}%  test error {}",
            p.t,
            p.train_loss,
            100.0 * p.train_error,
            p.test_error
                .map_or("-".into(), |v| format!("{:.2}%", 100.0 * v))
        );
    }
    let mut figs = Vec::new();
    if let Some(f) = &a.fig {
        let t: Vec<f64> = pts.iter().map(|p| p.t).collect();
        let mut s = vec![
            Series::new(
                "train loss",
                t.clone(),
                pts.iter().map(|p| p.train_loss).collect(),
            ),
            Series::new(
                "train error",
                t.clone(),
                pts.iter().map(|p| p.train_error).collect(),
            ),
        ];
        if pts.iter().all(|p| p.test_error.is_some()) {
            s.push(Series::new(
                "test error",
                t.clone(),
                pts.iter()
                    .map(|p| p.test_error.unwrap_or(f64::NAN))
                    .collect(),
            ));
        }
        let name = |p: &std::path::Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        figs = line_plot_captioned(
            &LineFigure {
                title:
                    "loss and error along the linear path on the sphere (BN statistics recomputed)"
                        .into(),
                x_label: format!("t along the path (0 = {}, 1 = {})", name(&a.a), name(&a.b)),
                y_label: "loss (mean cross-entropy) / error (fraction misclassified)".into(),
                log_x: false,
                log_y: false,
                series: s,
                markers: vec![],
            },
            &format!(
                "{} ({} parameters) on {}, {} training samples{}",
                ra.net.arch.name,
                ra.net.num_params(),
                super::geometry::data_words(&bundle),
                bundle.train.len(),
                bundle
                    .test
                    .as_ref()
                    .map(|t| format!(", {} test samples", t.len()))
                    .unwrap_or_default()
            ),
            f,
        )
        .map_err(e)?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    }
    write_results(
        a.json.as_deref(),
        "sphere connect",
        json!({"points": pts, "figures": figs}),
        &prov,
    )
}

fn cmd_plot(a: SpherePlotArgs, cl: &str) -> Result<(), String> {
    super::probe_dir(&a.fig_dir)?;
    super::probe_outputs(&[a.json.as_deref()])?;
    let mut runs = Vec::new();
    for d in &a.dirs {
        let mut r = read_run_record(d).map_err(e)?;
        r.regime = classify(&r.history, r.classes, &RegimeRule::default());
        let elr = match &r.config.schedule {
            ElrSchedule::Constant { elr } => format!("{elr:.2e}"),
            other => other.label(),
        };
        r.name = run_name(&elr, r.config.step, r.start_epoch);
        runs.push(r);
    }
    let labels: Vec<(f64, u8)> = runs
        .iter()
        .filter_map(|r| match r.config.schedule {
            ElrSchedule::Constant { elr } => Some((elr, r.regime.regime)),
            _ => None,
        })
        .collect();
    let b = boundaries(&labels);
    let figs: Vec<String> = sweep_figures(&runs, &b, &a.fig_dir, &a.prefix)
        .map_err(e)?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    for r in &runs {
        print_run(r);
    }
    let prov = Provenance::new(cl, None, None, json!({"dirs": a.dirs}));
    let regimes: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| json!({"name": r.name, "regime": r.regime}))
        .collect();
    write_results(
        a.json.as_deref(),
        "sphere plot",
        json!({"runs": regimes, "boundaries": b, "figures": figs}),
        &prov,
    )
}
