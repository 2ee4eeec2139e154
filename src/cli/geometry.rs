//! `landscape line`, `landscape surface`, `landscape connect` and
//! `landscape surface-replot`: argument parsing and output (JSON, CSV, figures,
//! surface and bend files) around the experiments of
//! `landscape::experiments::geometry` ([`run_line`], [`run_surface`], [`run_connect`]).

use super::hessian::{bn_mode_of, BnModeArg};
use super::{progress, write_results, DataArgs, ModelArgs};
use clap::{Args, ValueEnum};
use indicatif::ProgressBar;
use landscape::experiments::geometry::{
    curve_name, parse_grid, parse_range, read_surface_file, run_connect_checkpointed, run_line,
    run_surface_checkpointed, same_architecture, write_surface_file, BendTraining, BiasBn, BnStats,
    ConnectConfig, CurvatureGrid, CurveKind, DirectionSpec, LineConfig, Normalization, Progress,
    SurfaceConfig,
};
use landscape::io::network_file::save_network;
use landscape::io::provenance::Provenance;
use landscape::nn::{Activation, LossKind};
use landscape::plot::{
    heatmap_labelled, line_plot_captioned, surface3d_labelled, ContourSpacing, FigureLabels,
    LineFigure, Overlay, Series,
};
use landscape::Matrix;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn e(e: landscape::Error) -> String {
    e.to_string()
}

fn suffixed(prefix: &Path, s: &str) -> PathBuf {
    let mut p = prefix.as_os_str().to_owned();
    p.push(format!("_{s}"));
    PathBuf::from(p)
}

fn files_of(r: landscape::Result<Vec<PathBuf>>) -> Result<Vec<String>, String> {
    Ok(r.map_err(e)?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect())
}

/// Progress bars (on stderr, hidden when it is not a terminal) for the stages of an
/// experiment.
struct Bars(Mutex<Option<ProgressBar>>);

impl Bars {
    fn new() -> Self {
        Self(Mutex::new(None))
    }
}

impl Progress for Bars {
    fn stage(&self, name: &str, total: u64) {
        let mut g = self.0.lock().expect("progress lock");
        if let Some(pb) = g.take() {
            pb.finish_and_clear();
        }
        *g = Some(progress(total, name));
    }
    fn tick(&self) {
        if let Some(pb) = self.0.lock().expect("progress lock").as_ref() {
            pb.inc(1);
        }
    }
    fn finish(&self) {
        if let Some(pb) = self.0.lock().expect("progress lock").take() {
            pb.finish_and_clear();
        }
    }
}

/// Running statistics of BatchNorm at points away from the model (eval mode).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BnStatsArg {
    /// The model file's (interpolated between the two files for `line --to`).
    Stored,
    /// Recomputed at every point by a train-mode pass over the training samples.
    Recompute,
}

fn bn_stats_of(arg: BnStatsArg, batch: usize) -> BnStats {
    match arg {
        BnStatsArg::Stored => BnStats::Stored,
        BnStatsArg::Recompute => BnStats::Recompute { batch },
    }
}

/// A configuration as JSON with the command line's extra keys (file names, the model).
fn config_json(cfg: &impl serde::Serialize, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::to_value(cfg).unwrap_or_default();
    if let (Some(m), serde_json::Value::Object(x)) = (c.as_object_mut(), extra) {
        m.extend(x);
    }
    c
}

#[derive(Args)]
pub struct LineArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Interpolate towards this model (direction = B - A).
    #[arg(long, conflicts_with = "direction")]
    pub to: Option<PathBuf>,
    /// random | gradient | eigen:K | pca | model:PATH.
    #[arg(long, default_value = "random")]
    pub direction: String,
    #[arg(long, default_value = "-1:1:51", allow_hyphen_values = true)]
    pub range: String,
    /// Normalisation of random directions (filter: per conv output filter and linear row).
    #[arg(long, value_enum, default_value = "filter")]
    pub norm: Normalization,
    /// Keep (and normalise) the bias and BatchNorm parts of random directions instead of zeroing them.
    #[arg(long, conflicts_with_all = ["xignore", "biasbn"])]
    pub keep_bias: bool,
    /// Random directions on the bias and BatchNorm parameters (loss-landscape's --xignore;
    /// a surface applies it to both directions): `biasbn` zeroes them (Li et al.'s default),
    /// `none` includes them as the model's own values (d_b = w_b, as loss-landscape does).
    #[arg(long, value_enum, default_value = "biasbn")]
    pub xignore: XIgnore,
    /// Include the bias and BatchNorm parameters in random directions (= --xignore none).
    #[arg(long, conflicts_with = "xignore")]
    pub biasbn: bool,
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    /// Use the first N training samples (default all).
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// BatchNorm while measuring: `eval` (running statistics, per-sample mean loss) or
    /// `train` (each batch of --bn-batch-size consecutive samples normalised by its own statistics).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    /// Batch size of --bn-mode train and of --bn-stats recompute.
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    /// Eval mode: the model file's running statistics at every point (`stored`; with --to
    /// interpolated between the two files) or `recompute` them at every point from the training samples.
    #[arg(long, value_enum, default_value = "stored")]
    pub bn_stats: BnStatsArg,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn cmd_line(a: LineArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let net = a.model.load_network(&bundle)?;
    super::probe_outputs(&[a.csv.as_deref(), a.json.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
    let direction = match &a.to {
        Some(p) => DirectionSpec::Model(p.clone()),
        None => DirectionSpec::parse(&a.direction).map_err(e)?,
    };
    let cfg = LineConfig {
        direction,
        alphas: parse_range(&a.range).map_err(e)?,
        normalization: a.norm,
        bias_bn: bias_bn_of(a.keep_bias, a.xignore, a.biasbn),
        seed: a.seed,
        trajectory: a.trajectory.clone(),
        samples: a.samples,
        bn_mode: bn_mode_of(a.bn_mode, a.bn_batch_size),
        bn_stats: bn_stats_of(a.bn_stats, a.bn_batch_size),
    };
    let r = run_line(&net, &bundle, &cfg, &Bars::new()).map_err(e)?;
    let mut csv = String::from("alpha,train_loss,train_error,test_loss,test_error\n");
    for (i, t) in r.alpha.iter().enumerate() {
        let (tl, te) = match (&r.test_loss, &r.test_error) {
            (Some(l), Some(er)) => (format!("{:e}", l[i]), format!("{}", er[i])),
            _ => (String::new(), String::new()),
        };
        csv.push_str(&format!(
            "{t},{:e},{},{tl},{te}\n",
            r.train_loss[i], r.train_error[i]
        ));
    }
    if let Some(p) = &a.csv {
        super::write_file(p, csv.as_bytes())?;
    }
    let mut files = Vec::new();
    if let Some(prefix) = &a.fig {
        for (what, train, test) in [
            ("loss", &r.train_loss, &r.test_loss),
            ("error", &r.train_error, &r.test_error),
        ] {
            let mut series = vec![Series::new("train", r.alpha.clone(), train.clone())];
            if let Some(t) = test {
                series.push(Series::new("test", r.alpha.clone(), t.clone()));
            }
            let along = match &a.to {
                Some(p) => format!("the line to {}", file_name(p)),
                None => direction_words(&a.direction, a.norm, 1),
            };
            let quantity = if what == "loss" {
                "loss (mean cross-entropy)"
            } else {
                "error (fraction misclassified)"
            };
            let fig = LineFigure {
                title: format!("training and test {what} along {along}"),
                x_label: match &a.to {
                    Some(p) => format!(
                        "alpha (0 = {}, 1 = {})",
                        file_name(&a.model.model),
                        file_name(p)
                    ),
                    None => format!("alpha: step along the {along}"),
                },
                y_label: quantity.into(),
                log_x: false,
                log_y: false,
                series,
                markers: vec![],
            };
            let caption = format!(
                "{} ({} parameters) on {}, {} training samples{}",
                net.arch.name,
                net.num_params(),
                data_words(&bundle),
                r.samples,
                bundle
                    .test
                    .as_ref()
                    .map(|t| format!(", {} test samples", t.len()))
                    .unwrap_or_default()
            );
            files.extend(files_of(line_plot_captioned(
                &fig,
                &caption,
                &suffixed(prefix, what),
            ))?);
        }
    }
    let mut results = serde_json::to_value(&r).map_err(|e| e.to_string())?;
    results["figures"] = json!(files);
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        config_json(
            &cfg,
            json!({"model_file": a.model.model.display().to_string(), "model": super::model_json(&net), "range": a.range}),
        ),
    );
    write_results(a.json.as_deref(), "line", results, &prov)
}

#[derive(Args)]
pub struct ReplotArgs {
    /// A surface file written by `landscape surface --out`.
    pub surface: PathBuf,
    /// Figure prefix.
    #[arg(long)]
    pub fig: PathBuf,
    /// Contour levels of the loss maps: log (geometric, Li et al.) or linear.
    #[arg(long, value_enum, default_value = "log")]
    pub contour_levels: ContourArg,
}

#[derive(Args)]
pub struct SurfaceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// x direction: random | gradient | eigen:K | pca | model:PATH.
    #[arg(long, default_value = "random")]
    pub x: String,
    /// y direction (random uses seed + 1; pca takes the second component).
    #[arg(long, default_value = "random")]
    pub y: String,
    #[arg(long, default_value = "-1:1:51x-1:1:51", allow_hyphen_values = true)]
    pub grid: String,
    /// Normalisation of random directions (filter: per conv output filter and linear row).
    #[arg(long, value_enum, default_value = "filter")]
    pub norm: Normalization,
    /// Keep (and normalise) the bias and BatchNorm parts of random directions instead of zeroing them.
    #[arg(long, conflicts_with_all = ["xignore", "biasbn"])]
    pub keep_bias: bool,
    /// Random directions on the bias and BatchNorm parameters (loss-landscape's --xignore;
    /// a surface applies it to both directions): `biasbn` zeroes them (Li et al.'s default),
    /// `none` includes them as the model's own values (d_b = w_b, as loss-landscape does).
    #[arg(long, value_enum, default_value = "biasbn")]
    pub xignore: XIgnore,
    /// Include the bias and BatchNorm parameters in random directions (= --xignore none).
    #[arg(long, conflicts_with = "xignore")]
    pub biasbn: bool,
    /// Contour levels of the loss maps: log (geometric, Li et al.) or linear.
    #[arg(long, value_enum, default_value = "log")]
    pub contour_levels: ContourArg,
    #[arg(long)]
    pub trajectory: Option<PathBuf>,
    #[arg(long)]
    pub samples: Option<usize>,
    /// Curvature maps (lambda_max, lambda_min, |lambda_min/lambda_max|, trace) on this grid
    /// (e.g. -1:1:11x-1:1:11; 0:0:1x0:0:1 is the model alone).
    #[arg(long, allow_hyphen_values = true)]
    pub curvature_grid: Option<String>,
    /// Training samples for the curvature maps (default: those of the surface).
    #[arg(long)]
    pub curvature_samples: Option<usize>,
    /// Analytic MLPs: dense eigendecomposition at or below this many parameters, Lanczos
    /// above (other networks: always Lanczos and a Hutch++ trace).
    #[arg(long, default_value_t = 2000)]
    pub dense_limit: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// BatchNorm while measuring: `eval` (running statistics, per-sample mean loss) or
    /// `train` (each batch of --bn-batch-size consecutive samples normalised by its own statistics).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    /// Batch size of --bn-mode train and of --bn-stats recompute.
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    /// Eval mode: the model file's running statistics at every point (`stored`, as Li et
    /// al.) or `recompute` them at every point from the training samples.
    #[arg(long, value_enum, default_value = "stored")]
    pub bn_stats: BnStatsArg,
    /// The surface, its directions and provenance (safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Checkpoints of finished grid rows and curvature points (see `--resume`).
    #[command(flatten)]
    pub ckpt: super::CheckpointArgs,
}

/// Named maps over a grid.
type Maps = [(String, Matrix<f64>)];

/// The figures of a surface: loss/error heat maps with contours, the 3-D render,
/// and the curvature maps when present.
fn surface_figures(
    prefix: &Path,
    gx: &[f64],
    gy: &[f64],
    maps: &Maps,
    curv: Option<(&[f64], &[f64], &Maps)>,
    trajectory: Option<&[(f64, f64)]>,
    words: &SurfaceWords,
) -> Result<Vec<String>, String> {
    let mut files = Vec::new();
    // The training trajectory, projected on the plane, over the loss maps (Li et al. fig. 9).
    let overlay = trajectory.map(|xy| Overlay {
        points: vec![(0.0, 0.0, "model".into())],
        paths: vec![xy.to_vec()],
    });
    for (name, m) in maps {
        let levels = if name.contains("loss") { 10 } else { 6 };
        let path = suffixed(prefix, name);
        let spacing = if name.contains("loss") {
            words.spacing
        } else {
            ContourSpacing::Linear
        };
        let none = Overlay::default();
        let o = match (&overlay, name.contains("loss")) {
            (Some(o), true) => o,
            _ => &none,
        };
        files.extend(files_of(heatmap_labelled(
            gx,
            gy,
            m,
            &words.labels(name),
            &path,
            levels,
            spacing,
            o,
        ))?);
        if name == "train_loss" {
            files.extend(files_of(surface3d_labelled(
                gx,
                gy,
                m,
                &FigureLabels {
                    title: "training loss surface (3-D view)".into(),
                    ..words.labels(name)
                },
                &suffixed(prefix, "train_loss_3d"),
            ))?);
        }
    }
    if let Some((cx, cy, cm)) = curv {
        for (name, m) in cm {
            files.extend(files_of(heatmap_labelled(
                cx,
                cy,
                m,
                &words.labels(name),
                &suffixed(prefix, name),
                6,
                ContourSpacing::Linear,
                &Overlay::default(),
            ))?);
        }
    }
    Ok(files)
}

/// loss-landscape's `--xignore` (`--xignore none` = `--biasbn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XIgnore {
    /// Zero the bias and BatchNorm entries.
    Biasbn,
    /// Include them (the model's own values).
    None,
}

/// The bias/BN treatment of `--keep-bias`, `--xignore` and `--biasbn`.
fn bias_bn_of(keep_bias: bool, xignore: XIgnore, biasbn: bool) -> BiasBn {
    if keep_bias {
        BiasBn::Normalise
    } else if biasbn || xignore == XIgnore::None {
        BiasBn::Copy
    } else {
        BiasBn::Zero
    }
}

/// Contour spacing of the loss maps (`--contour-levels`).
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ContourArg {
    /// Geometric levels between the minimum and maximum (Li et al.'s basin contours).
    Log,
    /// Evenly spaced levels.
    Linear,
}

impl From<ContourArg> for ContourSpacing {
    fn from(c: ContourArg) -> Self {
        match c {
            ContourArg::Log => ContourSpacing::Log,
            ContourArg::Linear => ContourSpacing::Linear,
        }
    }
}

/// The words of a surface's figures: axis names, caption, contour spacing.
pub struct SurfaceWords {
    pub x_label: String,
    pub y_label: String,
    pub caption: String,
    pub spacing: ContourSpacing,
}

impl SurfaceWords {
    fn labels(&self, key: &str) -> FigureLabels {
        FigureLabels {
            x_label: self.x_label.clone(),
            y_label: self.y_label.clone(),
            caption: self.caption.clone(),
            ..FigureLabels::for_quantity(key)
        }
    }
}

/// The data set in words for captions: its name and, for images, `C x H x W` (after
/// any `--downsample`).
pub fn data_words(b: &landscape::data::DataBundle) -> String {
    match (b.image_shape, b.downsample) {
        (Some([c, h, w]), Some(f)) if f > 1 => {
            format!("{} ({c}x{h}x{w}, {f}x{f}-pooled)", b.name)
        }
        (Some([c, h, w]), _) => format!("{} ({c}x{h}x{w})", b.name),
        _ => b.name.clone(),
    }
}

/// The file name of a path (the whole path when it has none), for figure words.
fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// An axis name for a direction spec (`random`, `eigen:K`, ...) in words.
pub fn direction_words(spec: &str, norm: Normalization, k: usize) -> String {
    let spec = spec.trim();
    if spec == "random" {
        let n = match norm {
            Normalization::Filter => "filter-normalised ",
            Normalization::Layer => "layer-normalised ",
            Normalization::None => "unnormalised ",
        };
        return format!("{n}random direction {k}");
    }
    if let Some(i) = spec.strip_prefix("eigen:") {
        return format!("Hessian eigenvector {i}");
    }
    if spec == "gradient" {
        return "gradient direction".into();
    }
    if spec == "pca" {
        return format!("PCA direction {k}");
    }
    if let Some(p) = spec.strip_prefix("model:") {
        return format!("direction to {p}");
    }
    format!("direction {k}")
}

/// Re-draws a saved surface's figures from its file alone.
pub fn cmd_replot(a: ReplotArgs) -> Result<(), String> {
    let s = read_surface_file(&a.surface).map_err(e)?;
    super::probe_prefix(Some(&a.fig))?;
    // Figure words stored by `surface --out` (older files: generic axis names).
    let meta = std::fs::read(&a.surface)
        .ok()
        .and_then(|b| safetensors::SafeTensors::read_metadata(&b).ok())
        .and_then(|(_, m)| m.metadata().clone())
        .unwrap_or_default();
    let word = |k: &str, default: &str| meta.get(k).cloned().unwrap_or_else(|| default.into());
    let files = surface_figures(
        &a.fig,
        &s.grid_x,
        &s.grid_y,
        &s.maps,
        s.curvature
            .as_ref()
            .map(|(x, y, m)| (x.as_slice(), y.as_slice(), m.as_slice())),
        s.trajectory_xy.as_deref(),
        &SurfaceWords {
            x_label: word("figure_x_label", "direction 1"),
            y_label: word("figure_y_label", "direction 2"),
            caption: word("figure_caption", ""),
            spacing: a.contour_levels.into(),
        },
    )?;
    eprintln!(
        "re-plotted {} figures from {}",
        files.len(),
        a.surface.display()
    );
    Ok(())
}

pub fn cmd_surface(a: SurfaceArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let net = a.model.load_network(&bundle)?;
    let (grid_x, grid_y) = parse_grid(&a.grid).map_err(e)?;
    let curvature = match &a.curvature_grid {
        Some(spec) => {
            let (cx, cy) = parse_grid(spec).map_err(e)?;
            Some(CurvatureGrid {
                grid_x: cx,
                grid_y: cy,
                samples: a.curvature_samples,
                dense_limit: a.dense_limit,
            })
        }
        None => None,
    };
    let cfg = SurfaceConfig {
        x: DirectionSpec::parse(&a.x).map_err(e)?,
        y: DirectionSpec::parse(&a.y).map_err(e)?,
        grid_x,
        grid_y,
        normalization: a.norm,
        bias_bn: bias_bn_of(a.keep_bias, a.xignore, a.biasbn),
        seed: a.seed,
        trajectory: a.trajectory.clone(),
        samples: a.samples,
        curvature,
        bn_mode: bn_mode_of(a.bn_mode, a.bn_batch_size),
        bn_stats: bn_stats_of(a.bn_stats, a.bn_batch_size),
    };
    super::probe_outputs(&[a.out.as_deref(), a.json.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
    let spec = a.ckpt.spec()?;
    if let Some(s) = spec.as_ref().filter(|s| s.resume) {
        eprintln!(
            "resuming from {}",
            landscape::io::checkpoint::path_in(&s.dir).display()
        );
    }
    let r =
        run_surface_checkpointed(&net, &bundle, &cfg, &Bars::new(), spec.as_ref()).map_err(e)?;
    eprintln!(
        "surface: {} points x {} samples in {:.1} s",
        r.grid_x.len() * r.grid_y.len(),
        r.samples,
        r.seconds
    );
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        config_json(
            &cfg,
            json!({"model_file": a.model.model.display().to_string(), "model": super::model_json(&net),
                   "grid": a.grid, "curvature_grid": a.curvature_grid,
                   "curvature_samples": r.curvature.as_ref().map(|c| c.samples)}),
        ),
    );
    let words = SurfaceWords {
        x_label: direction_words(&a.x, a.norm, 1),
        y_label: direction_words(&a.y, a.norm, 2),
        caption: format!(
            "{} ({} parameters) on {}, {} training samples{}",
            net.arch.name,
            net.num_params(),
            data_words(&bundle),
            r.samples,
            r.curvature
                .as_ref()
                .map(|c| format!("; curvature on {} samples", c.samples))
                .unwrap_or_default()
        ),
        spacing: a.contour_levels.into(),
    };
    if let Some(out) = &a.out {
        let mut meta = BTreeMap::new();
        meta.insert("model".into(), super::model_json(&net).to_string());
        meta.insert(
            "provenance".into(),
            serde_json::to_string(&prov).unwrap_or_default(),
        );
        // The figure words, so that `surface-replot` draws the same labels.
        meta.insert("figure_x_label".into(), words.x_label.clone());
        meta.insert("figure_y_label".into(), words.y_label.clone());
        meta.insert("figure_caption".into(), words.caption.clone());
        write_surface_file(out, &r, &meta).map_err(e)?;
    }
    let mut files = Vec::new();
    if let Some(prefix) = &a.fig {
        files = surface_figures(
            prefix,
            &r.grid_x,
            &r.grid_y,
            &r.maps,
            r.curvature
                .as_ref()
                .map(|c| (c.grid_x.as_slice(), c.grid_y.as_slice(), c.maps.as_slice())),
            r.trajectory.as_ref().map(|p| p.coords.as_slice()),
            &words,
        )?;
    }
    let mut results = r.to_json();
    results["file"] = json!(a.out.as_ref().map(|p| p.display().to_string()));
    results["figures"] = json!(files);
    write_results(a.json.as_deref(), "surface", results, &prov)?;
    a.ckpt.finish()
}

#[derive(Args)]
pub struct ConnectArgs {
    /// One end (t = 0).
    #[arg(long)]
    pub a: PathBuf,
    /// The other end (t = 1), of the same architecture.
    #[arg(long)]
    pub b: PathBuf,
    /// Architecture of PyTorch state dicts without landscape metadata: a preset or a JSON file.
    #[arg(long)]
    pub arch: Option<String>,
    /// Width c of the convnet preset (with --arch convnet).
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    /// Activation for files without landscape metadata (PyTorch MLP imports).
    #[arg(long, value_enum)]
    pub activation: Option<Activation>,
    /// Loss for files without landscape metadata.
    #[arg(long, value_enum)]
    pub loss: Option<LossKind>,
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_enum, default_value = "bezier")]
    pub curve: CurveKind,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Points in t along each path.
    #[arg(long, default_value_t = 41)]
    pub points: usize,
    /// Points in t where the top Hessian eigenvalue is computed.
    #[arg(long, default_value_t = 11)]
    pub eigen_points: usize,
    /// Training samples for the eigenvalues.
    #[arg(long, default_value_t = 1000)]
    pub eigen_samples: usize,
    /// Points per side of the plane through the ends and the bend (drawn with --fig).
    #[arg(long, default_value_t = 31)]
    pub plane_grid: usize,
    /// BatchNorm while measuring: `eval` (running statistics recomputed at every point of
    /// the paths from the training data) or `train` (batches of --bn-batch-size).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    /// Batch size of --bn-mode train and of the recomputed statistics.
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    /// The trained bend, as a model file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub csv: Option<PathBuf>,
    #[arg(long)]
    pub fig: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Checkpoints of the bend training (see `--resume`).
    #[command(flatten)]
    pub ckpt: super::CheckpointArgs,
}

pub fn cmd_connect(a: ConnectArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let load = |p: &Path| {
        ModelArgs {
            model: p.to_path_buf(),
            activation: a.activation,
            loss: a.loss,
            arch: a.arch.clone(),
            width: a.width,
            wide: 1,
        }
        .load_network(&bundle)
    };
    let (na, nb) = (load(&a.a)?, load(&a.b)?);
    if !same_architecture(&na, &nb) {
        return Err(format!(
            "{} and {} have different architectures or settings",
            a.a.display(),
            a.b.display()
        ));
    }
    let cfg = ConnectConfig {
        curve: a.curve,
        training: BendTraining {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
        },
        points: a.points,
        eigen_points: a.eigen_points,
        eigen_samples: a.eigen_samples,
        plane_grid: a.fig.as_ref().map(|_| a.plane_grid),
        bn_mode: bn_mode_of(a.bn_mode, a.bn_batch_size),
        bn_recompute_batch: a.bn_batch_size,
    };
    if a.plane_grid < 2 {
        return Err("--points, --eigen-points and --plane-grid must be at least 2".into());
    }
    super::probe_outputs(&[a.out.as_deref(), a.csv.as_deref(), a.json.as_deref()])?;
    super::probe_prefix(a.fig.as_deref())?;
    let spec = a.ckpt.spec()?;
    if let Some(s) = spec.as_ref().filter(|s| s.resume) {
        eprintln!(
            "resuming from {}",
            landscape::io::checkpoint::path_in(&s.dir).display()
        );
    }
    let r = run_connect_checkpointed(&na, &nb, &bundle, &cfg, &Bars::new(), spec.as_ref())
        .map_err(e)?;
    let mut csv = String::from("path,split,t,loss,error\n");
    let (mut loss_series, mut err_series) = (Vec::new(), Vec::new());
    for p in &r.paths {
        let kname = curve_name(p.kind);
        for ((t, l), er) in r.t.iter().zip(&p.loss).zip(&p.error) {
            csv.push_str(&format!("{kname},{},{t},{l:e},{er}\n", p.split));
        }
        let label = format!("{kname} ({})", p.split);
        loss_series.push(Series::new(label.clone(), r.t.clone(), p.loss.clone()));
        err_series.push(Series::new(label, r.t.clone(), p.error.clone()));
    }
    let mut files = Vec::new();
    if let Some(prefix) = &a.fig {
        let t_words = format!(
            "t along the path (0 = {}, 1 = {})",
            file_name(&a.a),
            file_name(&a.b)
        );
        let caption = format!(
            "{} ({} parameters) on {}; {} training samples{}",
            na.arch.name,
            na.num_params(),
            data_words(&bundle),
            bundle.train.len(),
            bundle
                .test
                .as_ref()
                .map(|t| format!(", {} test samples", t.len()))
                .unwrap_or_default()
        );
        for (what, s) in [("loss", loss_series), ("error", err_series)] {
            let fig = LineFigure {
                title: format!(
                    "training and test {what} along the linear path and the trained curve"
                ),
                x_label: t_words.clone(),
                y_label: if what == "loss" {
                    "loss (mean cross-entropy, log scale)".into()
                } else {
                    "error (fraction misclassified)".into()
                },
                log_x: false,
                log_y: what == "loss",
                series: s,
                markers: vec![],
            };
            files.extend(files_of(line_plot_captioned(
                &fig,
                &caption,
                &suffixed(prefix, what),
            ))?);
        }
        let fig = LineFigure {
            title: format!(
                "largest Hessian eigenvalue along the paths ({} samples)",
                r.eigen_samples
            ),
            x_label: t_words.clone(),
            y_label: "largest Hessian eigenvalue \u{3bb}_max".into(),
            log_x: false,
            log_y: false,
            series: r
                .eigen
                .iter()
                .map(|e| Series::new(curve_name(e.kind), r.eigen_t.clone(), e.lambda_max.clone()))
                .collect(),
            markers: vec![],
        };
        files.extend(files_of(line_plot_captioned(
            &fig,
            &caption,
            &suffixed(prefix, "eigen"),
        ))?);
        if let Some(pm) = &r.plane {
            let p3 = r.plane_coordinates;
            let overlay = Overlay {
                points: vec![
                    (p3[0].0, p3[0].1, "A".into()),
                    (p3[1].0, p3[1].1, "B".into()),
                    (p3[2].0, p3[2].1, "bend".into()),
                ],
                paths: vec![pm.curve.clone()],
            };
            files.extend(files_of(heatmap_labelled(
                &pm.grid_x,
                &pm.grid_y,
                &pm.ln_loss,
                &FigureLabels {
                    title: "ln(training loss) on the plane through A, B and the bend".into(),
                    x_label: "plane coordinate 1 (along B - A)".into(),
                    y_label: "plane coordinate 2 (towards the bend, orthogonalised)".into(),
                    colorbar: "ln(training loss)".into(),
                    caption: caption.clone(),
                },
                &suffixed(prefix, "plane"),
                10,
                ContourSpacing::Linear,
                &overlay,
            ))?);
        }
    }
    if let Some(p) = &a.csv {
        super::write_file(p, csv.as_bytes())?;
    }
    if let Some(out) = &a.out {
        let mut meta = BTreeMap::new();
        meta.insert(
            "curve_bend_of".to_string(),
            format!("{} -> {}", a.a.display(), a.b.display()),
        );
        save_network(&r.bend, out, &meta).map_err(e)?;
    }
    let mut results = r.to_json();
    results["figures"] = json!(files);
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        config_json(
            &cfg,
            json!({"a": a.a.display().to_string(), "b": a.b.display().to_string(), "model": super::model_json(&na)}),
        ),
    );
    write_results(a.json.as_deref(), "connect", results, &prov)?;
    a.ckpt.finish()
}
