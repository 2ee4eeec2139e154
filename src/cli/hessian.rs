//! `landscape hessian`: exact curvature of a model on a dataset.

use super::{progress, write_results, DataArgs, ModelArgs};
use clap::{Args, ValueEnum};
use landscape::backend::cuda::{resolve_device, DeviceChoice};
use landscape::hessian::gpu::{gpu_dense_hessian, gpu_gn_norms, gpu_lanczos, GpuHessianOperator};
use landscape::hessian::network::{BlockOp, BnMode, NetObjective};
use landscape::hessian::{
    dense_hessian, per_sample_gn_norms_with_curvature, HessianOperator, Part,
};
#[cfg(not(target_endian = "little"))]
use landscape::io::model_file::{write_safetensors, RawTensor};
#[cfg(target_endian = "little")]
use landscape::io::model_file::{write_safetensors_refs, TensorRef};
use landscape::io::provenance::Provenance;
use landscape::linalg::{self, LanczosOptions, SymOp, Which};
use landscape::memory::{self, Allocation, MemoryBudget};
use landscape::nn::{Mlp, Network};
use landscape::Matrix;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitOne {
    Train,
    Test,
}

#[derive(Args)]
pub struct HessianArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// Which split the samples come from.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitOne,
    /// Use the first N samples of the split (all by default).
    #[arg(long, conflicts_with = "sample")]
    pub samples: Option<usize>,
    /// Use the single sample with this index (a per-sample Hessian).
    #[arg(long)]
    pub sample: Option<usize>,
    /// Which part: H = GN + Hterm.
    #[arg(long, value_enum, default_value = "full")]
    pub part: Part,
    /// Assemble the dense P x P matrix and save it here (safetensors, tensor `hessian`).
    #[arg(long)]
    pub dense: Option<PathBuf>,
    /// Largest eigenvalues to compute (Lanczos, or exact when --dense is given).
    #[arg(long)]
    pub top: Option<usize>,
    /// Smallest eigenvalues to compute.
    #[arg(long)]
    pub bottom: Option<usize>,
    /// Estimate the trace (Hutchinson and Hutch++ with 95% intervals; exact too when --dense).
    #[arg(long)]
    pub trace: bool,
    /// Probe vectors (matrix-vector products) for the trace estimators and the density.
    #[arg(long, default_value_t = 60)]
    pub probes: usize,
    /// Spectral density by stochastic Lanczos quadrature: figure prefix (writes .png and .svg).
    #[arg(long)]
    pub density: Option<PathBuf>,
    /// Exact per-sample Gauss-Newton norms (K x K route) of every selected sample, to this CSV.
    #[arg(long)]
    pub gn_norms: Option<PathBuf>,
    /// Memory budget in GiB for every large buffer of the run, checked before the work
    /// starts: the dense matrix, Krylov bases, the Hutch++ sketch, and the per-sample
    /// state of the HVPs (autodiff tapes of any architecture); see `landscape::memory`.
    #[arg(long, default_value_t = 8.0)]
    pub memory_budget: f64,
    /// Lanczos relative residual tolerance (||Hv - lv|| <= tol ||H||).
    #[arg(long, default_value_t = 1e-10)]
    pub tol: f64,
    /// Lanczos iteration limit (default: min(P, 300)).
    #[arg(long)]
    pub max_iter: Option<usize>,
    /// Seed of the random start and probe vectors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Per parameter tensor: the top eigenvalue (with residual) and trace of its diagonal Hessian block.
    #[arg(long)]
    pub per_layer: bool,
    /// Exact trace of the Fisher / Gauss-Newton matrix J^T A J (per-sample Jacobians, the model's own predictive distribution).
    #[arg(long)]
    pub fisher_trace: bool,
    /// Mean and spread of the batch-gradient norm over fixed consecutive batches of this size (the GM metric).
    #[arg(long)]
    pub grad_norms: Option<usize>,
    /// BatchNorm statistics while measuring: `eval` (running statistics, per-sample mean loss)
    /// or `train` (each batch of --bn-batch-size consecutive samples normalised by its own statistics).
    #[arg(long, value_enum, default_value = "eval")]
    pub bn_mode: BnModeArg,
    /// Batch size of --bn-mode train.
    #[arg(long, default_value_t = 128)]
    pub bn_batch_size: usize,
    /// Where to compute: `cuda` fails cleanly without a GPU, `auto` falls back to the CPU.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Precision on the GPU (the CPU path is the f64 reference).
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: Dtype,
    /// Products of --top/--bottom on the autodiff path: `f64`, or `mixed`: a first Krylov
    /// stage with f32 HVPs, then an f64 stage, with every chunk's forward and first
    /// backward pass kept between products (more memory, see --memory-budget); values
    /// and residuals are always certified with f64 products.
    #[arg(long, value_enum, default_value = "f64")]
    pub krylov: KrylovArg,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KrylovArg {
    F64,
    Mixed,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BnModeArg {
    Eval,
    Train,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    F32,
    F64,
}

/// The analytic operator as a `SymOp` for the Lanczos and trace routines.
enum OperatorAdapter<'a> {
    Analytic(HessianOperator<'a>),
    /// Analytic HVPs on a CUDA device.
    Gpu64(GpuHessianOperator<'a, f64>),
    Gpu32(GpuHessianOperator<'a, f32>),
    /// Double backward through the autodiff tape (any network, either BatchNorm mode).
    Network(&'a NetObjective<'a>),
}

impl SymOp for OperatorAdapter<'_> {
    fn dim(&self) -> usize {
        match self {
            OperatorAdapter::Analytic(op) => op.dim(),
            OperatorAdapter::Gpu64(op) => op.dim(),
            OperatorAdapter::Gpu32(op) => op.dim(),
            OperatorAdapter::Network(obj) => obj.dim(),
        }
    }
    fn apply(&self, v: &[f64], out: &mut [f64]) {
        match self {
            // A failed product (non-finite input) surfaces as NaN, which every caller rejects.
            OperatorAdapter::Analytic(op) => match op.apply(v) {
                Ok(hv) => out.copy_from_slice(&hv),
                Err(_) => out.fill(f64::NAN),
            },
            OperatorAdapter::Gpu64(op) => SymOp::apply(op, v, out),
            OperatorAdapter::Gpu32(op) => SymOp::apply(op, v, out),
            OperatorAdapter::Network(obj) => SymOp::apply(*obj, v, out),
        }
    }
}

fn select_samples(
    a: &HessianArgs,
    x: &Matrix<f64>,
    y: &[usize],
) -> Result<(Matrix<f64>, Vec<usize>, serde_json::Value), String> {
    let n = y.len();
    if let Some(i) = a.sample {
        if i >= n {
            return Err(format!(
                "--sample {i} is out of range: the split has {n} samples"
            ));
        }
        return Ok((
            x.rows_view(i, i + 1).to_owned(),
            vec![y[i]],
            json!({"sample": i}),
        ));
    }
    let m = a.samples.unwrap_or(n);
    if m == 0 {
        return Err("--samples 0: the Hessian of an empty subset is undefined".into());
    }
    if m > n {
        return Err(format!("--samples {m} but the split has only {n} samples"));
    }
    Ok((
        x.rows_view(0, m).to_owned(),
        y[..m].to_vec(),
        json!({"first": m}),
    ))
}

/// The BatchNorm mode of the command line.
pub fn bn_mode_of(arg: BnModeArg, batch: usize) -> BnMode {
    match arg {
        BnModeArg::Eval => BnMode::Eval,
        BnModeArg::Train => BnMode::Train { batch },
    }
}

pub fn cmd_hessian(a: HessianArgs, command_line: &str) -> Result<(), String> {
    let bundle = a.data.load()?;
    let net: Network<f64> = a.model.load_network(&bundle)?;
    super::probe_outputs(&[a.dense.as_deref(), a.gn_norms.as_deref(), a.json.as_deref()])?;
    super::probe_prefix(a.density.as_deref())?;
    if let Some(d) = &a.dense {
        let p = net.num_params() as u64;
        landscape::io::probe_output_sized(d, p.saturating_mul(p).saturating_mul(8))
            .map_err(|e| format!("cannot write {e}"))?;
    }
    let bn_mode = bn_mode_of(a.bn_mode, a.bn_batch_size);
    // The analytic MLP Hessian is the fast path; every other network goes through the tape.
    let analytic: Option<Mlp<f64>> = if bn_mode == BnMode::Eval {
        net.analytic_mlp()
    } else {
        None
    };
    if analytic.is_none() {
        if a.part != Part::Full {
            return Err("--part gn/hterm uses the analytic MLP structure (MLPs without BatchNorm); this network supports --part full".into());
        }
        if a.gn_norms.is_some() {
            return Err("--gn-norms (the K x K route) is defined for MLPs without BatchNorm only; use --fisher-trace for the exact Gauss-Newton trace of this network".into());
        }
    }
    let batchnorm = analytic.is_none();
    let split = match a.split {
        SplitOne::Train => &bundle.train,
        SplitOne::Test => bundle
            .test
            .as_ref()
            .ok_or_else(|| format!("dataset {} has no test set (see --test-split)", bundle.name))?,
    };
    let (x, y, selection) = select_samples(&a, &split.x, &split.y)?;
    if a.tol.is_nan() || a.tol <= 0.0 {
        return Err("--tol must be positive".into());
    }
    let budget = MemoryBudget::from_gib(a.memory_budget).map_err(|e| e.to_string())?;
    let (gpu, fallback) = resolve_device(a.device).map_err(|e| e.to_string())?;
    if let Some(reason) = &fallback {
        eprintln!("--device auto: using the CPU ({reason})");
    }
    if gpu.is_none() && a.dtype == Dtype::F32 {
        return Err("--dtype f32 is for --device cuda; the CPU path computes in f64".into());
    }
    if a.krylov == KrylovArg::Mixed && (analytic.is_some() || gpu.is_some()) {
        return Err("--krylov mixed is for the autodiff path (networks other than MLPs without BatchNorm, on the CPU); this run uses the analytic f64 operator".into());
    }
    if a.krylov == KrylovArg::Mixed && a.top.is_none() && a.bottom.is_none() {
        return Err("--krylov mixed applies to --top/--bottom".into());
    }
    if gpu.is_some() && batchnorm {
        return Err(
            "networks other than MLPs without BatchNorm run on the CPU (double-backward HVPs); use --device cpu".into(),
        );
    }
    let objective = NetObjective::new(&net, &x, &y, bn_mode).map_err(|e| e.to_string())?;
    let p = net.num_params();
    budget
        .check(&memory_plan(&a, &net, y.len(), analytic.is_some()))
        .map_err(|e| e.to_string())?;
    let mut results = serde_json::Map::new();
    results.insert(
        "device".into(),
        json!({
            "requested": a.device,
            "used": gpu.as_ref().map_or("cpu".to_string(), |d| format!("cuda: {} ({})", d.name(), d.arch())),
            "dtype": if gpu.is_some() { a.dtype } else { Dtype::F64 },
            "fallback_reason": fallback,
        }),
    );
    results.insert("num_params".into(), json!(p));
    results.insert("num_samples".into(), json!(y.len()));
    results.insert("part".into(), json!(a.part));
    results.insert(
        "hvp_method".into(),
        json!(if batchnorm {
            "autodiff double backward"
        } else {
            "analytic R-operator"
        }),
    );
    results.insert("architecture".into(), json!(net.arch.name));
    results.insert("bn_mode".into(), json!(bn_mode));
    let mut timing = serde_json::Map::new();

    let mut dense: Option<Matrix<f64>> = None;
    if let Some(path) = &a.dense {
        let t = Instant::now();
        let budget = budget.bytes().min(usize::MAX as u64) as usize;
        let h = match (&analytic, &gpu, a.dtype) {
            (None, _, _) => dense_by_columns(&objective).map_err(landscape::Error::InvalidArgument),
            (Some(model), None, _) => dense_hessian(model, &x, &y, a.part, budget),
            (Some(model), Some(d), Dtype::F64) => {
                gpu_dense_hessian::<f64>(d, model, &x, &y, a.part).map(|r| r.0)
            }
            (Some(model), Some(d), Dtype::F32) => {
                gpu_dense_hessian::<f32>(d, model, &x, &y, a.part).map(|r| r.0)
            }
        }
        .map_err(|e| e.to_string())?;
        timing.insert("dense_assembly_s".into(), json!(t.elapsed().as_secs_f64()));
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "landscape-hessian".to_string());
        meta.insert(
            "part".to_string(),
            serde_json::to_string(&a.part).unwrap_or_default(),
        );
        meta.insert(
            "parameter_order".to_string(),
            "[vec(W0), b0, vec(W1), b1, ...], vec = row-major".to_string(),
        );
        meta.insert("model".to_string(), super::model_json(&net).to_string());
        meta.insert("bn_mode".to_string(), json!(bn_mode).to_string());
        meta.insert("samples".to_string(), selection.to_string());
        meta.insert("dataset".to_string(), bundle.summary_json().to_string());
        // Streamed from the matrix: no second copy of its P^2 values in memory.
        #[cfg(target_endian = "little")]
        let written = write_safetensors_refs(
            path,
            &[TensorRef::f64("hessian", vec![p, p], h.as_slice())],
            &meta,
        );
        #[cfg(not(target_endian = "little"))]
        let written = write_safetensors(
            path,
            &[RawTensor::f64("hessian", vec![p, p], h.as_slice())],
            &meta,
        );
        written.map_err(|e| e.to_string())?;
        eprintln!(
            "dense {:?} Hessian ({p} x {p}) written to {}",
            a.part,
            path.display()
        );
        results.insert("dense_file".into(), json!(path.display().to_string()));
        dense = Some(h);
    }

    if let (Some(csv), Some(model)) = (&a.gn_norms, &analytic) {
        let t = Instant::now();
        let g = match (&gpu, a.dtype) {
            (None, _) => per_sample_gn_norms_with_curvature(model, &x, &y),
            (Some(d), Dtype::F64) => gpu_gn_norms::<f64>(d, model, &x, &y),
            (Some(d), Dtype::F32) => gpu_gn_norms::<f32>(d, model, &x, &y),
        }
        .map_err(|e| e.to_string())?;
        timing.insert("gn_norms_s".into(), json!(t.elapsed().as_secs_f64()));
        // ||A_i|| is computed on the CPU path only.
        let with_a = !g.a_norms.is_empty();
        let mut text = String::from("sample,label,loss,gn_norm,gn_rank");
        text.push_str(if with_a { ",a_norm\n" } else { "\n" });
        for (i, label) in y.iter().enumerate() {
            text.push_str(&format!(
                "{i},{label},{:e},{:e},{}",
                g.losses[i], g.norms[i], g.ranks[i]
            ));
            if with_a {
                text.push_str(&format!(",{:e}", g.a_norms[i]));
            }
            text.push('\n');
        }
        super::write_file(csv, text.as_bytes())?;
        let (imax, max) =
            g.norms
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |b, (i, v)| if v > b.1 { (i, v) } else { b },
                );
        results.insert(
            "gn_norms".into(),
            json!({
                "csv": csv.display().to_string(),
                "max": max, "argmax": imax,
                "mean": g.norms.iter().sum::<f64>() / g.norms.len() as f64,
                "max_rank": g.ranks.iter().max(),
                "max_a_norm": with_a.then(|| g.a_norms.iter().copied().fold(0.0, f64::max)),
            }),
        );
    }

    let need_operator = a.top.is_some() || a.bottom.is_some() || a.trace || a.density.is_some();
    if need_operator {
        let op = match (&analytic, &gpu, a.dtype) {
            (None, _, _) => OperatorAdapter::Network(&objective),
            (Some(model), None, _) => OperatorAdapter::Analytic(
                HessianOperator::new(model, &x, &y, a.part).map_err(|e| e.to_string())?,
            ),
            (Some(model), Some(d), Dtype::F64) => OperatorAdapter::Gpu64(
                GpuHessianOperator::new(d, model, &x, &y, a.part).map_err(|e| e.to_string())?,
            ),
            (Some(model), Some(d), Dtype::F32) => OperatorAdapter::Gpu32(
                GpuHessianOperator::new(d, model, &x, &y, a.part).map_err(|e| e.to_string())?,
            ),
        };
        let max_iter = a.max_iter.unwrap_or(p.min(300));
        if a.top.is_some() || a.bottom.is_some() {
            let (largest, smallest) = (a.top.unwrap_or(0), a.bottom.unwrap_or(0));
            if largest + smallest == 0 {
                return Err("--top and --bottom need at least 1".into());
            }
            let which = match (largest, smallest) {
                (k, 0) => Which::Largest(k),
                (0, k) => Which::Smallest(k),
                (l, s) => Which::BothEnds {
                    largest: l,
                    smallest: s,
                },
            };
            let t = Instant::now();
            let pb = progress(1, "lanczos");
            let opts = LanczosOptions {
                max_iter,
                tol: a.tol,
                seed: a.seed,
                ..Default::default()
            };
            // On the GPU the Krylov basis stays on the device too.
            let mixed = a.krylov == KrylovArg::Mixed;
            let res = match &op {
                OperatorAdapter::Gpu64(g) => gpu_lanczos(g, which, &opts),
                OperatorAdapter::Gpu32(g) => gpu_lanczos(g, which, &opts),
                OperatorAdapter::Network(obj) if mixed => linalg::lanczos_mixed(
                    obj.linearized::<f32>(),
                    &obj.linearized::<f64>(),
                    which,
                    &opts,
                ),
                _ => linalg::lanczos(&op, which, &opts),
            }
            .map_err(|e| e.to_string())?;
            pb.finish_and_clear();
            timing.insert("lanczos_s".into(), json!(t.elapsed().as_secs_f64()));
            let mut eig = json!({
                "method": if matches!(op, OperatorAdapter::Gpu64(_) | OperatorAdapter::Gpu32(_)) { "lanczos (full reorthogonalisation, on the GPU)" } else if mixed { "lanczos (full reorthogonalisation): an f32 Krylov stage, then an f64 stage from its Ritz vectors; kept forward and first backward passes; Rayleigh quotients and residuals from f64 products" } else { "lanczos (full reorthogonalisation)" },
                "f32_products": res.approx_products,
                "ritz_values": res.values,
                "residuals": res.residuals,
                "iterations": res.iterations,
                "converged": res.converged,
            });
            eig["certified_lower_bounds"] = json!((0..res.values.len())
                .map(|i| res.certified_lower_bound(i))
                .collect::<Vec<_>>());
            for (v, r) in res.values.iter().zip(&res.residuals) {
                eprintln!("eigenvalue {v:.10e}  residual {r:.2e}");
            }
            results.insert("eigenvalues".into(), eig);
        }
        if a.trace {
            let t = Instant::now();
            let hutch = linalg::hutchinson(&op, a.probes, a.seed).map_err(|e| e.to_string())?;
            let hpp = linalg::hutch_pp(&op, a.probes, a.seed).map_err(|e| e.to_string())?;
            timing.insert("trace_s".into(), json!(t.elapsed().as_secs_f64()));
            let mut tr = json!({"hutchinson": hutch, "hutch_pp": hpp});
            if let Some(h) = &dense {
                tr["exact"] = json!((0..p).map(|i| h.get(i, i)).sum::<f64>());
            }
            eprintln!(
                "trace: Hutchinson {:.6e} [{:.6e}, {:.6e}], Hutch++ {:.6e}",
                hutch.estimate, hutch.ci95.0, hutch.ci95.1, hpp.estimate
            );
            results.insert("trace".into(), tr);
        }
        if let Some(prefix) = &a.density {
            let t = Instant::now();
            let steps = max_iter.min(80);
            let sd = linalg::slq(&op, a.probes.clamp(1, 20), steps, a.seed)
                .map_err(|e| e.to_string())?;
            let (lo, hi) = sd.range();
            let pad = 0.05 * (hi - lo).max(1e-12);
            let grid: Vec<f64> = (0..400)
                .map(|i| lo - pad + (hi - lo + 2.0 * pad) * i as f64 / 399.0)
                .collect();
            let sigma = (hi - lo).max(1e-12) / 100.0;
            let dens = sd.density(&grid, sigma);
            let outliers = linalg::lanczos(
                &op,
                Which::Largest(5.min(p)),
                &LanczosOptions {
                    max_iter,
                    tol: a.tol.max(1e-8),
                    seed: a.seed,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?
            .values;
            let files = landscape::plot::histogram_density(
                &grid,
                &dens,
                &outliers,
                "Hessian spectral density (SLQ)",
                "eigenvalue",
                prefix,
            )
            .map_err(|e| e.to_string())?;
            timing.insert("density_s".into(), json!(t.elapsed().as_secs_f64()));
            results.insert(
                "density".into(),
                json!({"files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(), "grid": grid, "density": dens, "sigma": sigma, "outliers": outliers, "probes": a.probes.clamp(1, 20), "steps": steps}),
            );
        }
    }
    if a.per_layer {
        let t = Instant::now();
        let layers = per_layer(&objective, &net, &a).map_err(|e| e.to_string())?;
        timing.insert("per_layer_s".into(), json!(t.elapsed().as_secs_f64()));
        results.insert("per_layer".into(), json!(layers));
    }
    if a.fisher_trace {
        let t = Instant::now();
        let tr = objective.fisher_trace();
        timing.insert("fisher_trace_s".into(), json!(t.elapsed().as_secs_f64()));
        eprintln!("Fisher (Gauss-Newton) trace: {tr:.10e} (exact)");
        results.insert(
            "fisher_trace".into(),
            json!({"value": tr, "method": "exact: sum over samples and classes of ||J^T c||^2 with A = C C^T (no estimate)", "interval": [tr, tr]}),
        );
    }
    if let Some(b) = a.grad_norms {
        let t = Instant::now();
        let norms = objective
            .batch_gradient_norms(b)
            .map_err(|e| e.to_string())?;
        timing.insert("grad_norms_s".into(), json!(t.elapsed().as_secs_f64()));
        let k = norms.len() as f64;
        let mean = norms.iter().sum::<f64>() / k;
        let var = norms.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (k - 1.0).max(1.0);
        let std = var.sqrt();
        let half = landscape::linalg::t_quantile_975(norms.len().saturating_sub(1).max(1)) * std
            / k.sqrt();
        eprintln!(
            "batch-gradient norm (B = {b}, {} batches): mean {mean:.6e} [{:.6e}, {:.6e}], std {std:.3e}",
            norms.len(),
            mean - half,
            mean + half
        );
        results.insert(
            "grad_norms".into(),
            json!({"batch_size": b, "batches": norms.len(), "mean": mean, "std": std,
                   "ci95_of_mean": [mean - half, mean + half],
                   "min": norms.iter().copied().fold(f64::INFINITY, f64::min),
                   "max": norms.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                   "norms": norms}),
        );
    }
    results.insert("timing".into(), serde_json::Value::Object(timing));
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        json!({"model_file": a.model.model.display().to_string(), "model": super::model_json(&net), "part": a.part, "bn_mode": bn_mode, "samples": selection, "split": matches!(a.split, SplitOne::Test).then_some("test").unwrap_or("train")}),
    );
    write_results(
        a.json.as_deref(),
        "hessian",
        serde_json::Value::Object(results),
        &prov,
    )
}

/// Columns of the network's dense Hessian per MPI work item.
const DENSE_COLUMNS: usize = 8;

/// The dense Hessian of a network from `P` exact HVPs (columns `H e_j`),
/// symmetrised as `(H + H^T) / 2` (the columns agree to rounding). Its `8 P^2` bytes
/// are checked against `--memory-budget` by [`memory_plan`] before any work. With
/// several MPI ranks the columns are dealt out in blocks of [`DENSE_COLUMNS`].
fn dense_by_columns(obj: &NetObjective) -> Result<Matrix<f64>, String> {
    let p = obj.dim();
    let pb = progress(p as u64, "dense (HVP columns)");
    let mut h = Matrix::zeros(p, p);
    let column = |j: usize| {
        let mut e = vec![0.0; p];
        e[j] = 1.0;
        obj.hvp(&e)
    };
    if landscape::dist::distributed() {
        // Several MPI ranks: blocks of DENSE_COLUMNS columns are the work items (each
        // column's product computed as one process computes it); every rank gets every
        // column.
        let blocks = p.div_ceil(DENSE_COLUMNS);
        let cols = landscape::dist::map_items(
            blocks,
            |b| {
                Ok::<_, String>(
                    (b * DENSE_COLUMNS..((b + 1) * DENSE_COLUMNS).min(p))
                        .map(column)
                        .collect::<Vec<_>>(),
                )
            },
            || pb.inc(DENSE_COLUMNS as u64),
        )?;
        for (j, col) in cols.into_iter().flatten().enumerate() {
            for (i, &c) in col.iter().enumerate() {
                h.set(i, j, c);
            }
        }
    } else {
        for j in 0..p {
            for (i, &c) in column(j).iter().enumerate() {
                h.set(i, j, c);
            }
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    for i in 0..p {
        for j in 0..i {
            let s = 0.5 * (h.get(i, j) + h.get(j, i));
            h.set(i, j, s);
            h.set(j, i, s);
        }
    }
    Ok(h)
}

/// Per parameter tensor: top eigenvalue of its diagonal block (Lanczos, with
/// the true residual; tolerance `max(--tol, 1e-6)`, at most `--max-iter` or 40
/// products per block) and the block's trace (exact from unit vectors up to 16
/// entries, else Hutchinson with a 95% interval, the probes shared by all blocks).
fn per_layer(
    obj: &NetObjective,
    net: &Network<f64>,
    a: &HessianArgs,
) -> landscape::Result<Vec<serde_json::Value>> {
    let named = net.named_params();
    let mut ranges = Vec::with_capacity(named.len());
    let mut off = 0;
    for (_, m) in &named {
        ranges.push(off..off + m.len());
        off += m.len();
    }
    let pb = progress(named.len() as u64 + 1, "per-layer blocks");
    let shared = linalg::block_hutchinson(obj, &ranges, a.probes.max(2), a.seed)?;
    pb.inc(1);
    let mut out = Vec::new();
    for (((name, _), range), est) in named.iter().zip(&ranges).zip(shared) {
        let op = BlockOp {
            obj,
            range: range.clone(),
        };
        let dim = range.len();
        let res = linalg::lanczos(
            &op,
            Which::Largest(1),
            &LanczosOptions {
                max_iter: a.max_iter.unwrap_or(40).min(dim).max(1),
                tol: a.tol.max(1e-6),
                seed: a.seed,
                ..Default::default()
            },
        )?;
        let trace = if dim <= 16 {
            let t = linalg::exact_trace(&op);
            json!({"value": t, "method": "exact (unit vectors)", "interval": [t, t]})
        } else {
            json!({"value": est.estimate, "method": est.method, "interval": [est.ci95.0, est.ci95.1], "std_error": est.std_error, "matvecs": est.matvecs})
        };
        eprintln!(
            "{name}: top eigenvalue {:.6e} (residual {:.1e}), trace {}",
            res.values[0], res.residuals[0], trace["value"]
        );
        out.push(json!({
            "tensor": name,
            "offset": range.start,
            "size": dim,
            "top_eigenvalue": res.values[0],
            "residual": res.residuals[0],
            "converged": res.converged,
            "iterations": res.iterations,
            "trace": trace,
        }));
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}

/// The large buffers of this `hessian` run, alive at the same time (see
/// [`landscape::memory`]): the dense matrix, the Krylov bases of Lanczos, SLQ and the
/// per-layer blocks, the Hutch++ sketch, and the per-sample state of the HVPs (the
/// analytic operator's activations and masks, or the networks' autodiff tapes).
fn memory_plan(a: &HessianArgs, net: &Network<f64>, n: usize, analytic: bool) -> Vec<Allocation> {
    let p = net.num_params();
    let acts = net.layout().activations_per_sample;
    let max_iter = a.max_iter.unwrap_or(p.min(300)).min(p);
    let mut plan = Vec::new();
    if a.dense.is_some() {
        plan.push(memory::f64_matrix("the dense Hessian", p, p));
    }
    if a.top.is_some() || a.bottom.is_some() {
        plan.push(memory::krylov_basis("the Lanczos basis", max_iter, p));
    }
    if a.density.is_some() {
        plan.push(memory::krylov_basis("the SLQ basis", max_iter.min(80), p));
    }
    if a.trace {
        plan.push(memory::f64_matrix(
            "the Hutch++ sketch",
            2 * (a.probes / 3).max(1),
            p,
        ));
    }
    if a.per_layer {
        let largest = net
            .named_params()
            .iter()
            .map(|(_, m)| m.len())
            .max()
            .unwrap_or(0);
        let k = a.max_iter.unwrap_or(40).min(largest);
        plan.push(memory::krylov_basis(
            "the largest per-layer Lanczos basis",
            k,
            largest,
        ));
    }
    if a.krylov == KrylovArg::Mixed && !analytic {
        // The f64 stage's recordings (the f32 stage's, half the size, are freed first).
        plan.push(memory::recorded_tapes(
            "the kept forward and first backward passes (--krylov mixed)",
            acts,
            n,
        ));
    }
    let need_hvp = plan.iter().any(|x| x.bytes > 0) || a.fisher_trace || a.grad_norms.is_some();
    if need_hvp || a.gn_norms.is_some() {
        plan.push(if analytic {
            memory::f64_matrix("the per-sample activations and masks", n, 3 * acts)
        } else {
            let chunk = match a.bn_mode {
                BnModeArg::Eval => 64,
                BnModeArg::Train => a.bn_batch_size,
            };
            memory::tape(
                "the autodiff tapes",
                acts,
                memory::samples_in_flight(n, chunk),
            )
        });
    }
    plan
}
