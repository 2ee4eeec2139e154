//! Command-line interface: argument parsing, progress bars, JSON results.
//! Library errors come back as one-line messages.

mod bench;
mod bounds;
mod compare_methods;
mod geometry;
mod hessian;
mod margins;
mod sample_size;
mod sphere;
mod sweep;
mod wide;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use landscape::data::{self, DataBundle, DataOptions, Format, Normalize, Subset};
use landscape::io::model_file::{load_mlp_f64, read_metadata, save_mlp, ImportOptions};
use landscape::io::network_file::{load_network, save_network, NetworkImport, NETWORK_FORMAT};
use landscape::io::npy::ExportFormat;
use landscape::io::provenance::{write_json, Provenance};
use landscape::nn::arch::{preset, Architecture, PresetOptions, PRESETS};
use landscape::nn::Network;
use landscape::nn::{Activation, BatchNormConfig, Init, LossKind, Mlp, MlpConfig};
use landscape::optim::methods::{GradNormForm, TraceForm, TrainMethod};
use landscape::train::evaluate_network;
use landscape::train::{train_with_method, Optimizer, TrainConfig, TrainModel, TrainOutcome};
use landscape::{Matrix, Scalar};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "landscape",
    version,
    about = "Exact curvature of neural-network loss landscapes"
)]
struct Cli {
    /// Worker threads (default: all cores). Results are reproducible for a given seed and thread count.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an MLP and save it as safetensors.
    Train(TrainArgs),
    /// Loss and error of a saved model on a dataset.
    Eval(EvalArgs),
    /// Describe a model file and/or a dataset.
    Info(InfoArgs),
    /// Export a model's parameters as .npy files (flat vector and per tensor) for numpy/torch/jax.
    Export(ExportArgs),
    /// Exact Hessian of a model on data: dense matrix, extreme eigenvalues, trace, density, per-sample GN norms.
    Hessian(hessian::HessianArgs),
    /// Check the per-sample Hessian-norm bounds of "Unraveling the Hessian" against exact values.
    Bounds(bounds::BoundsArgs),
    /// The bounds across widths, depths and init scales: one table and figures.
    BoundsSweep(sweep::SweepArgs),
    /// Time the standard workloads (dense Hessian, GN norms, HVP, training step) on every device, beside peer results.
    Bench(bench::BenchArgs),
    /// The seed's sample-size experiment (|L(k+1) - L(k)| vs k over width and depth), with exact Hessian increments.
    SampleSize(sample_size::SampleSizeArgs),
    /// Loss and error along a line: towards another model or along a direction (random, gradient, Hessian eigenvector, PCA).
    Line(geometry::LineArgs),
    /// 2-D loss/error surface with filter-normalised or eigen/PCA/model directions, curvature maps, safetensors output.
    Surface(geometry::SurfaceArgs),
    /// Mode connectivity: linear path and a trained Bezier or polygonal-chain curve between two models.
    Connect(geometry::ConnectArgs),
    /// Re-draw the figures of a surface file written by `surface --out` (no recomputation).
    SurfaceReplot(geometry::ReplotArgs),
    /// Wide networks: when every local minimum is global (rank, width sweep, deep-net conditions, certified bad ReLU minimum, paths, linear nets).
    Wide(wide::WideArgs),
    /// Scale-invariant networks trained on the sphere (seed 001): train, sweep over elr, connect, plot.
    #[command(subcommand)]
    Sphere(sphere::SphereCommand),
    /// Training methods compared (SGD, SAM, ASAM, SAM on the sphere, penalties): table and figures from train/hessian JSON records.
    CompareMethods(compare_methods::CompareMethodsArgs),
    /// Signed first-order margins (Jiang et al.) per sample and layer, normalised by the layer's total variation; signatures, CSV, histograms.
    Margins(margins::MarginsArgs),
    /// Train a population of models over a grid; predict the generalisation gap from margin signatures and curvature (resumable).
    MarginsStudy(margins::StudyArgs),
}

#[derive(Args, Clone)]
struct DataArgs {
    /// Dataset: `mnist10k`, `digits` (embedded) or a path (IDX image file, CIFAR .bin, CSV, .npy with --labels, .npz).
    #[arg(long)]
    data: String,
    /// Input normalisation.
    #[arg(long, value_enum, default_value = "unit")]
    normalize: Normalize,
    /// File format of a path given to --data.
    #[arg(long, value_enum, default_value = "auto")]
    format: Format,
    /// Label file for an IDX image file (default: `images-idx3` -> `labels-idx1` in the name).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Test-set file in the same format as --data.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// Label file of an IDX test set.
    #[arg(long)]
    test_labels: Option<PathBuf>,
    /// CSV label column (0-based; default: the last).
    #[arg(long)]
    label_column: Option<usize>,
    /// Number of classes (labels must be smaller).
    #[arg(long)]
    classes: Option<usize>,
    /// Use n training samples (the first n, or n at random with --subset-seed).
    #[arg(long)]
    train_size: Option<usize>,
    /// Use n test samples (the first n, or n at random with --subset-seed).
    #[arg(long)]
    test_size: Option<usize>,
    /// Pick the subsets at random with this seed instead of taking the first n.
    #[arg(long)]
    subset_seed: Option<u64>,
    /// For data without a test set: the fraction held out as test (seeded by --split-seed).
    #[arg(long, default_value_t = 0.0)]
    test_split: f64,
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Array names of features and labels in an .npz archive (default x,y).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    npz_keys: Option<Vec<String>>,
    /// Shape C,H,W of each sample for feature files (CSV, .npy) that hold images.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    input_shape: Option<Vec<usize>>,
    /// F x F average pooling of image inputs before normalisation (F must divide the sides).
    #[arg(long)]
    downsample: Option<usize>,
}

impl DataArgs {
    fn options(&self) -> DataOptions {
        let subset = |n: Option<usize>| match (n, self.subset_seed) {
            (None, _) => Subset::All,
            (Some(n), None) => Subset::First(n),
            (Some(n), Some(seed)) => Subset::Random { n, seed },
        };
        DataOptions {
            normalize: self.normalize,
            format: self.format,
            labels: self.labels.clone(),
            test: self.test_data.clone(),
            test_labels: self.test_labels.clone(),
            label_column: self.label_column,
            classes: self.classes,
            train_subset: subset(self.train_size),
            test_subset: subset(self.test_size),
            test_split: self.test_split,
            split_seed: self.split_seed,
            npz_keys: self.npz_keys.as_ref().map(|k| (k[0].clone(), k[1].clone())),
            input_shape: self.input_shape.as_ref().map(|s| [s[0], s[1], s[2]]),
            downsample: self.downsample,
        }
    }

    fn load(&self) -> Result<DataBundle, String> {
        data::load(&self.data, &self.options()).map_err(|e| e.to_string())
    }
}

/// Checkpoints and `--resume` (see `landscape::io::checkpoint`).
#[derive(Args, Clone)]
struct CheckpointArgs {
    /// Save the run's state in this folder (`resume.ckpt`) at safe points, so that a
    /// killed or interrupted run can be continued with `--resume DIR`; SIGINT/SIGTERM
    /// then write a checkpoint and exit with status 130/143.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Continue the run checkpointed in DIR (same command and options; keeps
    /// checkpointing there). The outputs are byte-identical to an uninterrupted run.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Seconds between checkpoints (0: at every safe point). Training also checkpoints
    /// at the end of every epoch, every run at a stop signal.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    checkpoint_interval: f64,
}

impl CheckpointArgs {
    /// The checkpoint folder, if any.
    fn dir(&self) -> Option<&Path> {
        self.resume.as_deref().or(self.checkpoint_dir.as_deref())
    }

    fn spec(&self) -> Result<Option<landscape::io::checkpoint::Checkpointing>, String> {
        if let (Some(r), Some(c)) = (&self.resume, &self.checkpoint_dir) {
            if r != c {
                return Err(format!(
                    "--resume {} and --checkpoint-dir {} name different folders",
                    r.display(),
                    c.display()
                ));
            }
        }
        if self.dir().is_some() && landscape::dist::size() > 1 {
            return Err(format!(
                "--checkpoint-dir/--resume are not supported with several MPI ranks ({}); run with one rank to checkpoint",
                landscape::dist::size()
            ));
        }
        if !(self.checkpoint_interval >= 0.0 && self.checkpoint_interval.is_finite()) {
            return Err("--checkpoint-interval must be a non-negative number of seconds".into());
        }
        Ok(self
            .dir()
            .map(|d| landscape::io::checkpoint::Checkpointing {
                dir: d.to_path_buf(),
                resume: self.resume.is_some(),
                interval: std::time::Duration::from_secs_f64(self.checkpoint_interval),
            }))
    }

    /// Starts checkpointing `kind` with `config`, or `None` without a folder.
    fn session(
        &self,
        kind: &str,
        config: serde_json::Value,
    ) -> Result<Option<landscape::io::checkpoint::Session>, String> {
        match self.spec()? {
            None => Ok(None),
            Some(spec) => {
                let s = landscape::io::checkpoint::Session::start(&spec, kind, config)
                    .map_err(|e| e.to_string())?;
                if spec.resume {
                    eprintln!(
                        "resuming from {}",
                        landscape::io::checkpoint::path_in(&spec.dir).display()
                    );
                }
                Ok(Some(s))
            }
        }
    }

    /// After the outputs are written: removes the checkpoint.
    fn finish(&self) -> Result<(), String> {
        match self.dir() {
            Some(d) => landscape::io::checkpoint::finish(d).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Checks before long work that every output path can be written.
fn probe_outputs(paths: &[Option<&Path>]) -> Result<(), String> {
    for p in paths.iter().flatten() {
        landscape::io::probe_output(p).map_err(|e| format!("cannot write {e}"))?;
    }
    Ok(())
}

/// Checks before long work that an output folder can be created and written.
fn probe_dir(dir: &Path) -> Result<(), String> {
    landscape::io::probe_dir(dir).map_err(|e| format!("cannot write {e}"))
}

/// Figure outputs `PREFIX.png`/`PREFIX-*.png`: probes the prefix's folder.
fn probe_prefix(prefix: Option<&Path>) -> Result<(), String> {
    match prefix {
        Some(p) => probe_outputs(&[Some(&p.with_file_name(format!(
            "{}.png",
            p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
        )))]),
        None => Ok(()),
    }
}

/// The command line recorded in provenance: a resumed run records the command of the
/// uninterrupted run it reproduces (`--resume DIR` written as `--checkpoint-dir DIR`,
/// or dropped beside `--checkpoint-dir DIR`), so that its outputs are byte-identical.
fn canonical_command_line(args: &[String]) -> String {
    let has_ckpt_dir = args
        .iter()
        .any(|a| a == "--checkpoint-dir" || a.starts_with("--checkpoint-dir="));
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--resume" {
            if !has_ckpt_dir {
                out.push("--checkpoint-dir".into());
                if let Some(v) = args.get(i + 1) {
                    out.push(v.clone());
                }
            }
            i += 2;
            continue;
        }
        if let Some(v) = a.strip_prefix("--resume=") {
            if !has_ckpt_dir {
                out.push(format!("--checkpoint-dir={v}"));
            }
            i += 1;
            continue;
        }
        out.push(a.clone());
        i += 1;
    }
    out.join(" ")
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
enum Dtype {
    F32,
    F64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OptimizerName {
    Sgd,
    Adam,
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Architecture: `mlp` (default; widths from --hidden), a preset (convnet, resnet20,
    /// resnet56, resnet110, their -noshort forms, vgg9) or an architecture JSON file.
    #[arg(long, default_value = "mlp")]
    arch: String,
    /// Width c of the convnet preset; first-stage channels of the ResNets (stages c, 2c, 4c).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Width multiplier K of the convnet and ResNet channels (Li et al.'s wide ResNets).
    #[arg(long, default_value_t = 1)]
    wide: usize,
    /// Hidden widths, comma-separated (e.g. 64 or 256,256); empty for logistic regression.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    hidden: Vec<usize>,
    #[arg(long, value_enum, default_value = "relu")]
    activation: Activation,
    /// Negative slope of LeakyReLU.
    #[arg(long, default_value_t = 0.01)]
    leaky_slope: f64,
    /// No bias vectors.
    #[arg(long)]
    no_bias: bool,
    /// BatchNorm1d after each hidden linear layer.
    #[arg(long)]
    batchnorm: bool,
    /// BatchNorm without learnable scale and shift (affine=False).
    #[arg(long)]
    bn_no_affine: bool,
    #[arg(long, value_enum, default_value = "ce")]
    loss: LossKind,
    /// Initialisation (default: He/Kaiming for MLPs, PyTorch's default `torch` for other architectures).
    #[arg(long, value_enum)]
    init: Option<Init>,
    /// Multiplies every initial weight (and drawn bias).
    #[arg(long, default_value_t = 1.0)]
    init_scale: f64,
    #[arg(long, value_enum, default_value = "adam")]
    optimizer: OptimizerName,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.0)]
    momentum: f64,
    /// L2 weight decay (added to the gradient, PyTorch convention).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Seeds initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Arithmetic precision of training (f64 is the reference).
    #[arg(long, value_enum, default_value = "f64")]
    dtype: Dtype,
    /// Output model file (safetensors).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Checkpoints: the model after every epoch (`epoch-NNN.safetensors`) and the
    /// training state (`resume.ckpt`, see --resume).
    #[command(flatten)]
    ckpt: CheckpointArgs,
    /// Training method (SAM, ASAM, curvature penalties).
    #[command(flatten)]
    method: MethodArgs,
    /// Results with provenance.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The curvature-aware training methods of `landscape train` (at most one).
#[derive(Args, Clone, Default)]
struct MethodArgs {
    /// SAM with radius RHO: the step uses the gradient at w + RHO g/||g||.
    #[arg(long, value_name = "RHO", allow_negative_numbers = true)]
    sam: Option<f64>,
    /// ASAM with radius RHO: eps = RHO T^2 g/||T g||, T = |w| + eta on weights.
    #[arg(long, value_name = "RHO", allow_negative_numbers = true)]
    asam: Option<f64>,
    /// ASAM's eta.
    #[arg(long, default_value_t = 0.01)]
    asam_eta: f64,
    /// m-sharpness: one SAM/ASAM perturbation per chunk of M samples (M divides the batch size).
    #[arg(long, value_name = "M")]
    sam_chunk: Option<usize>,
    /// Gradient-norm penalty L + LAMBDA ||grad L|| (exact gradient by double backward).
    #[arg(long, value_name = "LAMBDA", allow_negative_numbers = true)]
    grad_norm_penalty: Option<f64>,
    /// The penalty's finite-difference form (Zhao et al.) with radius R instead of double backward.
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    grad_norm_fd: Option<f64>,
    /// Hessian-trace penalty L + LAMBDA tr(H) (Hutchinson; exact third-order gradient).
    #[arg(long, value_name = "LAMBDA", allow_negative_numbers = true)]
    trace_penalty: Option<f64>,
    /// Hutchinson probes per step for --trace-penalty.
    #[arg(long, default_value_t = 1)]
    trace_probes: usize,
    /// Approximate the trace penalty's gradient by central second differences of the
    /// gradient along each probe, relative step H (s = H ||w|| / ||v||).
    #[arg(long, value_name = "H", allow_negative_numbers = true)]
    trace_fd: Option<f64>,
}

impl MethodArgs {
    /// The training method these flags ask for (range checks are the library's).
    fn method(&self) -> Result<TrainMethod, String> {
        let given = [
            ("--sam", self.sam.is_some()),
            ("--asam", self.asam.is_some()),
            ("--grad-norm-penalty", self.grad_norm_penalty.is_some()),
            ("--trace-penalty", self.trace_penalty.is_some()),
        ];
        let on: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if on.len() > 1 {
            return Err(format!(
                "{} cannot be combined: choose one training method",
                on.join(" and ")
            ));
        }
        if self.sam_chunk.is_some() && self.sam.is_none() && self.asam.is_none() {
            return Err("--sam-chunk needs --sam or --asam".into());
        }
        if self.grad_norm_fd.is_some() && self.grad_norm_penalty.is_none() {
            return Err("--grad-norm-fd needs --grad-norm-penalty".into());
        }
        if self.trace_fd.is_some() && self.trace_penalty.is_none() {
            return Err("--trace-fd needs --trace-penalty".into());
        }
        if self.trace_probes != 1 && self.trace_penalty.is_none() {
            return Err("--trace-probes needs --trace-penalty".into());
        }
        if self.asam_eta != 0.01 && self.asam.is_none() {
            return Err("--asam-eta needs --asam".into());
        }
        Ok(if let Some(rho) = self.sam {
            TrainMethod::Sam {
                rho,
                chunk: self.sam_chunk,
            }
        } else if let Some(rho) = self.asam {
            TrainMethod::Asam {
                rho,
                eta: self.asam_eta,
                chunk: self.sam_chunk,
            }
        } else if let Some(lambda) = self.grad_norm_penalty {
            TrainMethod::GradNormPenalty {
                lambda,
                form: match self.grad_norm_fd {
                    Some(radius) => GradNormForm::FiniteDifference { radius },
                    None => GradNormForm::Exact,
                },
            }
        } else if let Some(lambda) = self.trace_penalty {
            TrainMethod::TracePenalty {
                lambda,
                probes: self.trace_probes,
                form: match self.trace_fd {
                    Some(step) => TraceForm::FiniteDifference { step },
                    None => TraceForm::Exact,
                },
            }
        } else {
            TrainMethod::Plain
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Split {
    Train,
    Test,
    Both,
}

#[derive(Args)]
struct ModelArgs {
    /// Model file (safetensors: landscape's, or a PyTorch state dict).
    #[arg(long)]
    model: PathBuf,
    /// Activation for files without landscape metadata (PyTorch imports).
    #[arg(long, value_enum)]
    activation: Option<Activation>,
    /// Loss for files without landscape metadata.
    #[arg(long, value_enum)]
    loss: Option<LossKind>,
    /// Architecture of a PyTorch state dict without landscape metadata: a preset
    /// (convnet, resnet20, resnet56, resnet110, their -noshort forms, vgg9) or a JSON file.
    #[arg(long)]
    arch: Option<String>,
    /// Width c of the convnet preset (with --arch convnet); first-stage channels of the ResNets.
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Width multiplier K of the convnet and ResNet channels.
    #[arg(long, default_value_t = 1)]
    wide: usize,
}

impl ModelArgs {
    /// The model as an MLP, for commands whose mathematics is MLP-only (`what` names the command).
    fn load_mlp_only(&self, what: &str) -> Result<Mlp<f64>, String> {
        if self.arch.as_deref().is_some_and(|a| a != "mlp") || is_network_file(&self.model) {
            return Err(format!(
                "{what} is defined for MLPs only (its mathematics uses the MLP's analytic structure); {} is not an MLP",
                self.model.display()
            ));
        }
        self.load()
    }

    fn load(&self) -> Result<Mlp<f64>, String> {
        let opts = ImportOptions {
            activation: self.activation,
            loss: self.loss,
            ..Default::default()
        };
        load_mlp_f64(&self.model, &opts).map_err(|e| e.to_string())
    }

    /// Any architecture without data: landscape files carry theirs; a PyTorch
    /// state dict with a preset `--arch` needs the data's shape, so use a JSON file then.
    fn load_any(&self) -> Result<Network<f64>, String> {
        let arch = match &self.arch {
            Some(spec) if PRESETS.contains(&spec.as_str()) => {
                return Err(format!(
                    "--arch {spec} needs the input shape: pass an architecture JSON file (its input_shape) instead"
                ))
            }
            Some(spec) => {
                let text = std::fs::read_to_string(spec).map_err(|e| format!("{spec}: {e}"))?;
                Some(serde_json::from_str(&text).map_err(|e| format!("{spec}: not a valid architecture description: {e}"))?)
            }
            None => None,
        };
        let opts = NetworkImport {
            arch,
            mlp: ImportOptions {
                activation: self.activation,
                loss: self.loss,
                ..Default::default()
            },
        };
        load_network::<f64>(&self.model, &opts)
            .map(|r| r.0)
            .map_err(|e| e.to_string())
    }

    /// Any architecture; a PyTorch state dict needs `--arch` (else it is read as an
    /// `nn.Sequential` MLP). The input shape of a preset comes from the data.
    fn load_network(&self, bundle: &DataBundle) -> Result<Network<f64>, String> {
        let arch = match &self.arch {
            Some(spec) => Some(resolve_arch(
                spec,
                self.width,
                self.wide,
                bundle,
                self.loss.unwrap_or(LossKind::CrossEntropy),
            )?),
            None => None,
        };
        let opts = NetworkImport {
            arch,
            mlp: ImportOptions {
                activation: self.activation,
                loss: self.loss,
                ..Default::default()
            },
        };
        let (net, _) = load_network::<f64>(&self.model, &opts).map_err(|e| e.to_string())?;
        check_network_fits(&net, bundle)?;
        Ok(net)
    }
}

/// Whether a file is a landscape network file (not an MLP), reading only its header.
fn is_network_file(path: &Path) -> bool {
    read_metadata(path)
        .ok()
        .and_then(|m| m.get("format").cloned())
        .is_some_and(|f| f == NETWORK_FORMAT)
}

/// The input shape of a dataset's samples: its image shape, or flat features.
fn input_shape(bundle: &DataBundle) -> [usize; 3] {
    bundle.image_shape.unwrap_or([bundle.features, 1, 1])
}

/// A preset name or an architecture JSON file, on the data's input shape.
fn resolve_arch(
    spec: &str,
    width: usize,
    wide: usize,
    bundle: &DataBundle,
    loss: LossKind,
) -> Result<Architecture, String> {
    let shape = input_shape(bundle);
    if PRESETS.contains(&spec) {
        if spec == "mlp" {
            return Err(
                "--arch mlp: give the widths with --hidden (train) or load an MLP file".into(),
            );
        }
        let o = PresetOptions {
            input_shape: shape,
            classes: bundle.classes,
            loss,
            width,
            wide,
            mlp: None,
        };
        return preset(spec, &o).map_err(|e| e.to_string());
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(format!(
            "--arch {spec}: not a preset ({}) and no such JSON file",
            PRESETS.join(", ")
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let a: Architecture = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not a valid architecture description: {e}",
            path.display()
        )
    })?;
    a.layout().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(a)
}

fn check_network_fits(net: &Network<f64>, bundle: &DataBundle) -> Result<(), String> {
    let d: usize = net.arch.input_shape.iter().product();
    check_fits(
        &format!("{d} input features ({:?})", net.arch.input_shape),
        d,
        net.arch.classes,
        bundle,
    )
}

/// The one model/data compatibility check: `features` inputs, `classes` outputs.
fn check_fits(
    expects: &str,
    features: usize,
    classes: usize,
    bundle: &DataBundle,
) -> Result<(), String> {
    if features != bundle.features {
        return Err(format!(
            "model expects {expects} but dataset {} has {}",
            bundle.name, bundle.features
        ));
    }
    if classes < bundle.classes {
        return Err(format!(
            "model has {classes} outputs but dataset {} has {} classes",
            bundle.name, bundle.classes
        ));
    }
    Ok(())
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, value_enum, default_value = "both")]
    split: Split,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct InfoArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Dataset name or path.
    #[arg(long)]
    data: Option<String>,
    #[arg(long, value_enum, default_value = "unit")]
    normalize: Normalize,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// File format of the exported arrays.
    #[arg(long, value_enum, default_value = "npy")]
    format: ExportFormat,
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run() -> Result<(), String> {
    let cli = Cli::parse();
    landscape::tensor::GemmKernel::check_env()?;
    if let Some(t) = cli.threads {
        if t == 0 {
            return Err("--threads must be at least 1".into());
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| format!("cannot start {t} threads: {e}"))?;
    }
    let command_line: Vec<String> = std::env::args().collect();
    let command_line = canonical_command_line(&command_line);
    if landscape::dist::size() > 1 && !splits_over_ranks(&cli.command) {
        // Rank 0 runs a command that does not split; the other ranks have nothing to do.
        if !landscape::dist::is_root() {
            return Ok(());
        }
        landscape::dist::run_locally();
        eprintln!(
            "note: this command does not split over MPI ranks; rank 0 runs it alone ({} ranks idle)",
            landscape::dist::size() - 1
        );
    }
    match cli.command {
        Command::Train(a) => cmd_train(a, &command_line),
        Command::Eval(a) => cmd_eval(a, &command_line),
        Command::Info(a) => cmd_info(a, &command_line),
        Command::Export(a) => cmd_export(a, &command_line),
        Command::Hessian(a) => hessian::cmd_hessian(a, &command_line),
        Command::Bounds(a) => bounds::cmd_bounds(a, &command_line),
        Command::BoundsSweep(a) => sweep::cmd_sweep(a, &command_line),
        Command::Bench(a) => bench::cmd_bench(a, &command_line),
        Command::SampleSize(a) => sample_size::cmd_sample_size(a, &command_line),
        Command::Line(a) => geometry::cmd_line(a, &command_line),
        Command::Surface(a) => geometry::cmd_surface(a, &command_line),
        Command::Connect(a) => geometry::cmd_connect(a, &command_line),
        Command::SurfaceReplot(a) => geometry::cmd_replot(a),
        Command::Wide(a) => wide::cmd_wide(a, &command_line),
        Command::Sphere(c) => sphere::cmd_sphere(c, &command_line),
        Command::CompareMethods(a) => compare_methods::cmd_compare_methods(a, &command_line),
        Command::Margins(a) => margins::cmd_margins(a, &command_line),
        Command::MarginsStudy(a) => margins::cmd_study(a, &command_line),
    }
}

/// Whether `command` splits its work over MPI ranks (`landscape::dist`): the grids,
/// the sweeps (bounds, sample size, the margins study, the sphere's elr sweep) and the dataset reductions of
/// `hessian`. The others run on rank 0.
fn splits_over_ranks(command: &Command) -> bool {
    matches!(
        command,
        Command::Line(_)
            | Command::Surface(_)
            | Command::BoundsSweep(_)
            | Command::SampleSize(_)
            | Command::Hessian(_)
            | Command::MarginsStudy(_)
            | Command::Sphere(sphere::SphereCommand::Sweep(_))
    )
}

fn progress(len: u64, what: &str) -> ProgressBar {
    // Hidden automatically when stderr is not a terminal.
    // Only rank 0 of an MPI job shows progress.
    let target = if landscape::dist::is_root() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn write_results(
    path: Option<&Path>,
    command: &str,
    results: serde_json::Value,
    prov: &Provenance,
) -> Result<(), String> {
    if let Some(p) = path {
        write_json(p, command, results, prov).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes an output file atomically (temporary file + rename), creating its folder.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if !landscape::dist::is_root() {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    landscape::io::write_atomic(path, bytes).map_err(|e| format!("cannot write {e}"))
}

fn optimizer_of(a: &TrainArgs) -> Result<Optimizer, String> {
    if a.optimizer == OptimizerName::Adam && a.momentum != 0.0 {
        return Err("--momentum applies to --optimizer sgd only".into());
    }
    Ok(match a.optimizer {
        OptimizerName::Sgd => Optimizer::Sgd {
            lr: a.lr,
            momentum: a.momentum,
            weight_decay: a.weight_decay,
        },
        OptimizerName::Adam => Optimizer::Adam {
            lr: a.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: a.weight_decay,
        },
    })
}

/// A model the train command can save and report.
trait TrainedModel<T: Scalar>: TrainModel<T> + Sized {
    fn save(&self, path: &Path, meta: &BTreeMap<String, String>) -> landscape::Result<()>;
    fn into_f64_network(self) -> Network<f64>;
}

impl<T: Scalar> TrainedModel<T> for Mlp<T> {
    fn save(&self, path: &Path, meta: &BTreeMap<String, String>) -> landscape::Result<()> {
        save_mlp(self, path, meta)
    }
    fn into_f64_network(self) -> Network<f64> {
        Network::from_mlp(&self.cast::<f64>())
    }
}

impl<T: Scalar> TrainedModel<T> for Network<T> {
    fn save(&self, path: &Path, meta: &BTreeMap<String, String>) -> landscape::Result<()> {
        save_network(self, path, meta)
    }
    fn into_f64_network(self) -> Network<f64> {
        self.cast::<f64>()
    }
}

fn cmd_train(a: TrainArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let is_mlp = a.arch == "mlp";
    if !is_mlp && (a.batchnorm || a.bn_no_affine || a.no_bias || a.hidden != [64]) {
        return Err(format!(
            "--hidden, --batchnorm, --bn-no-affine and --no-bias describe MLPs; --arch {} fixes its own layers",
            a.arch
        ));
    }
    let mlp_config = MlpConfig {
        input_dim: bundle.features,
        hidden: a.hidden.clone(),
        classes: bundle.classes,
        activation: a.activation,
        leaky_slope: a.leaky_slope,
        bias: !a.no_bias,
        batchnorm: (a.batchnorm || a.bn_no_affine).then(|| BatchNormConfig {
            affine: !a.bn_no_affine,
            ..Default::default()
        }),
        loss: a.loss,
    };
    let arch = if is_mlp {
        None
    } else {
        Some(resolve_arch(&a.arch, a.width, a.wide, &bundle, a.loss)?)
    };
    let tc = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer: optimizer_of(&a)?,
        seed: a.seed,
    };
    let method = a.method.method()?;
    let has_bn = match &arch {
        Some(ar) => ar.has_batchnorm(),
        None => mlp_config.batchnorm.is_some(),
    };
    method
        .validate(tc.batch_size, has_bn)
        .map_err(|e| e.to_string())?;
    let init = a
        .init
        .unwrap_or(if is_mlp { Init::Kaiming } else { Init::Torch });
    let model_json = match &arch {
        Some(ar) => json!(ar),
        None => json!(mlp_config),
    };
    let mut full_config = json!({
        "model": model_json,
        "init": init,
        "init_scale": a.init_scale,
        "train": tc,
        "dtype": a.dtype,
        "data": bundle.summary_json(),
    });
    // Plain training keeps its configuration (and so its model-file metadata) unchanged.
    if !method.is_plain() {
        full_config["method"] = json!(method);
    }
    let mut meta = BTreeMap::new();
    meta.insert("training".to_string(), full_config.to_string());
    probe_outputs(&[a.out.as_deref(), a.json.as_deref()])?;
    let mut session = a.ckpt.session("train", full_config.clone())?;
    let start = Instant::now();
    let s = session.as_mut();
    let (outcome, final_model) = match arch {
        None => {
            let model = Mlp::<f64>::init(mlp_config, init, a.init_scale, a.seed)
                .map_err(|e| e.to_string())?;
            match a.dtype {
                Dtype::F64 => run_training(model, &bundle, &tc, &method, &a, &meta, s)?,
                Dtype::F32 => {
                    run_training(model.cast::<f32>(), &bundle, &tc, &method, &a, &meta, s)?
                }
            }
        }
        Some(ar) => {
            let net =
                Network::<f64>::init(ar, init, a.init_scale, a.seed).map_err(|e| e.to_string())?;
            match a.dtype {
                Dtype::F64 => run_training(net, &bundle, &tc, &method, &a, &meta, s)?,
                Dtype::F32 => run_training(net.cast::<f32>(), &bundle, &tc, &method, &a, &meta, s)?,
            }
        }
    };
    let history = outcome.history;
    let epoch_seconds = outcome.epoch_seconds;
    // Training time over every part of a resumed run.
    let seconds = outcome.earlier_seconds + start.elapsed().as_secs_f64();
    if let Some(out) = &a.out {
        match a.dtype {
            Dtype::F64 => save_network(&final_model, out, &meta),
            Dtype::F32 => save_network(&final_model.cast::<f32>(), out, &meta),
        }
        .map_err(|e| e.to_string())?;
    }
    let last = history.last();
    if let Some(m) = last {
        eprintln!(
            "trained {} epochs in {:.1}s: train loss {:.4}, train error {:.2}%{}",
            m.epoch,
            seconds,
            m.train_loss,
            100.0 * m.train_error,
            match (m.test_loss, m.test_error) {
                (Some(l), Some(e)) => format!(
                    ", test loss {l:.4}, test accuracy {:.2}%",
                    100.0 * (1.0 - e)
                ),
                _ => String::new(),
            }
        );
    }
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        full_config,
    );
    let results = json!({
        "epochs": history,
        "final": last,
        "num_params": final_model.num_params(),
        "architecture": final_model.arch.name,
        "model_file": a.out.as_ref().map(|p| p.display().to_string()),
        "timing": {
            "train_seconds": seconds,
            // Over the epochs this process ran (a resumed run: those after the resume).
            "mean_epoch_seconds": if epoch_seconds.is_empty() { None } else {
                Some(epoch_seconds.iter().sum::<f64>() / epoch_seconds.len() as f64)
            },
        },
        "method": method,
        "passes_per_step": method.passes(),
    });
    write_results(a.json.as_deref(), "train", results, &prov)?;
    a.ckpt.finish()
}

#[allow(clippy::too_many_arguments)]
fn run_training<T: Scalar, M: TrainedModel<T>>(
    mut model: M,
    bundle: &DataBundle,
    tc: &TrainConfig,
    method: &TrainMethod,
    a: &TrainArgs,
    meta: &BTreeMap<String, String>,
    session: Option<&mut landscape::io::checkpoint::Session>,
) -> Result<(TrainOutcome, Network<f64>), String> {
    let x: Matrix<T> = bundle.train.x.cast();
    let test_x: Option<Matrix<T>> = bundle.test.as_ref().map(|t| t.x.cast());
    let test = test_x
        .as_ref()
        .zip(bundle.test.as_ref())
        .map(|(tx, t)| (tx, t.y.as_slice()));
    let steps_per_epoch = bundle.train.y.len().div_ceil(tc.batch_size.max(1));
    let pb = progress((steps_per_epoch * tc.epochs) as u64, "train");
    let history = train_with_method(
        &mut model,
        &x,
        &bundle.train.y,
        test,
        tc,
        method,
        session,
        |epoch, step, loss| {
            pb.set_position(step as u64);
            pb.set_message(format!("epoch {epoch} loss {loss:.4}"));
        },
        |m, metrics| {
            if let Some(dir) = a.ckpt.dir() {
                let path = dir.join(format!("epoch-{:03}.safetensors", metrics.epoch));
                m.save(&path, meta)?;
            }
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    pb.finish_and_clear();
    Ok((history, model.into_f64_network()))
}

fn split_metrics(
    model: &Network<f64>,
    bundle: &DataBundle,
    split: Split,
) -> Result<serde_json::Value, String> {
    let mut out = serde_json::Map::new();
    let mut eval_one = |name: &str, d: &data::Dataset| -> Result<(), String> {
        let (loss, err) = evaluate_network(model, &d.x, &d.y).map_err(|e| e.to_string())?;
        eprintln!(
            "{name}: loss {loss:.6}, error {:.2}%, n = {}",
            100.0 * err,
            d.y.len()
        );
        out.insert(
            name.to_string(),
            json!({"loss": loss, "error": err, "accuracy": 1.0 - err, "n": d.y.len()}),
        );
        Ok(())
    };
    if matches!(split, Split::Train | Split::Both) {
        eval_one("train", &bundle.train)?;
    }
    if matches!(split, Split::Test | Split::Both) {
        match &bundle.test {
            Some(t) => eval_one("test", t)?,
            None if split == Split::Test => {
                return Err(format!(
                    "dataset {} has no test set (see --test-split)",
                    bundle.name
                ))
            }
            None => {}
        }
    }
    Ok(serde_json::Value::Object(out))
}

fn check_model_fits(model: &Mlp<f64>, bundle: &DataBundle) -> Result<(), String> {
    let d = model.config.input_dim;
    check_fits(
        &format!("{d} input features"),
        d,
        model.config.classes,
        bundle,
    )
}

fn cmd_eval(a: EvalArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let model = a.model.load_network(&bundle)?;
    probe_outputs(&[a.json.as_deref()])?;
    let results = split_metrics(&model, &bundle, a.split)?;
    let prov = Provenance::new(
        command_line,
        None,
        Some(bundle.summary_json()),
        json!({"model_file": a.model.model.display().to_string(), "model": model_json(&model)}),
    );
    write_results(a.json.as_deref(), "eval", results, &prov)
}

/// The model's description for provenance: the MLP config, or the architecture.
fn model_json(net: &Network<f64>) -> serde_json::Value {
    match &net.arch.mlp {
        Some(cfg) => json!(cfg),
        None => json!(net.arch),
    }
}

fn network_summary(net: &Network<f64>) -> serde_json::Value {
    let tensors: Vec<serde_json::Value> = net
        .named_params()
        .iter()
        .map(|(n, m)| json!({"name": n, "shape": [m.rows(), m.cols()], "frobenius_norm": m.frobenius_norm()}))
        .collect();
    json!({
        "arch": net.arch,
        "num_params": net.num_params(),
        "batchnorm_layers": net.bn.len(),
        "tensors": tensors,
    })
}

fn model_summary(model: &Mlp<f64>) -> serde_json::Value {
    let tensors: Vec<serde_json::Value> = model
        .named_params()
        .iter()
        .map(|(n, m)| json!({"name": n, "shape": [m.rows(), m.cols()], "frobenius_norm": m.frobenius_norm()}))
        .collect();
    json!({
        "config": model.config,
        "widths": model.config.widths(),
        "num_layers": model.num_layers(),
        "num_params": model.num_params(),
        "tensors": tensors,
    })
}

fn cmd_info(a: InfoArgs, command_line: &str) -> Result<(), String> {
    if a.model.is_none() && a.data.is_none() {
        return Err("info needs --model and/or --data".into());
    }
    let mut results = serde_json::Map::new();
    if let Some(path) = a.model.as_ref().filter(|p| is_network_file(p)) {
        let (net, _) =
            load_network::<f64>(path, &NetworkImport::default()).map_err(|e| e.to_string())?;
        println!(
            "model {}: architecture {}, input {:?}, {} classes, {} parameters, {} BatchNorm layers, loss {}",
            path.display(),
            net.arch.name,
            net.arch.input_shape,
            net.arch.classes,
            net.num_params(),
            net.bn.len(),
            net.arch.loss.name()
        );
        results.insert("model".into(), network_summary(&net));
    } else if let Some(path) = &a.model {
        let model = load_mlp_f64(path, &ImportOptions::default()).map_err(|e| e.to_string())?;
        let s = model_summary(&model);
        println!(
            "model {}: widths {:?}, {} parameters, activation {}, loss {}, bias {}, batchnorm {}",
            path.display(),
            model.config.widths(),
            model.num_params(),
            model.config.activation.name(),
            model.config.loss.name(),
            model.config.bias,
            model.config.batchnorm.is_some()
        );
        results.insert("model".into(), s);
    }
    let mut dataset = None;
    if let Some(spec) = &a.data {
        let opts = DataOptions {
            normalize: a.normalize,
            ..Default::default()
        };
        let bundle = data::load(spec, &opts).map_err(|e| e.to_string())?;
        let s = bundle.summary_json();
        println!("data {}", serde_json::to_string(&s).unwrap_or_default());
        results.insert("data".into(), s.clone());
        dataset = Some(s);
    }
    let prov = Provenance::new(command_line, None, dataset, json!({}));
    write_results(
        a.json.as_deref(),
        "info",
        serde_json::Value::Object(results),
        &prov,
    )
}

fn cmd_export(a: ExportArgs, command_line: &str) -> Result<(), String> {
    let model = a.model.load_any()?;
    probe_dir(&a.out)?;
    let prov = Provenance::new(
        command_line,
        None,
        None,
        json!({"model_file": a.model.model.display().to_string()}),
    );
    landscape::io::npy::export_network(&model, &a.out, a.format, None)
        .map_err(|e| e.to_string())?;
    eprintln!(
        "exported {} parameters to {}",
        model.num_params(),
        a.out.display()
    );
    write_results(
        a.json.as_deref(),
        "export",
        json!({"out": a.out.display().to_string(), "num_params": model.num_params()}),
        &prov,
    )
}
