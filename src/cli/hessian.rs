//! `landscape hessian`: exact curvature of a model on a dataset.

use super::{progress, write_results, DataArgs, ModelArgs};
use clap::{Args, ValueEnum};
use landscape::backend::cuda::{resolve_device, DeviceChoice};
use landscape::hessian::gpu::{gpu_dense_hessian, gpu_gn_norms, gpu_lanczos, GpuHessianOperator};
use landscape::hessian::{
    dense_hessian, per_sample_gn_norms_with_curvature, HessianOperator, Part,
};
use landscape::io::model_file::{write_safetensors, RawTensor};
use landscape::io::provenance::Provenance;
use landscape::linalg::{self, LanczosOptions, SymOp, Which};
use landscape::nn::Mlp;
use landscape::Matrix;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
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
    /// Memory budget for dense assembly, in GiB.
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
    /// Where to compute: `cuda` fails cleanly without a GPU, `auto` falls back to the CPU.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// Precision on the GPU (the CPU path is the f64 reference).
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: Dtype,
    #[arg(long)]
    pub json: Option<PathBuf>,
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
    /// Double backward through the autodiff tape (BatchNorm in evaluation mode).
    Tape {
        model: &'a Mlp<f64>,
        x: Matrix<f64>,
        y: Vec<usize>,
    },
}

impl SymOp for OperatorAdapter<'_> {
    fn dim(&self) -> usize {
        match self {
            OperatorAdapter::Analytic(op) => op.dim(),
            OperatorAdapter::Gpu64(op) => op.dim(),
            OperatorAdapter::Gpu32(op) => op.dim(),
            OperatorAdapter::Tape { model, .. } => model.num_params(),
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
            OperatorAdapter::Tape { model, x, y } => {
                let params: Vec<Matrix<f64>> = model
                    .named_params()
                    .into_iter()
                    .map(|(_, m)| m.clone())
                    .collect();
                let mut off = 0;
                let dirs: Vec<Matrix<f64>> = params
                    .iter()
                    .map(|m| {
                        let d =
                            Matrix::from_vec(m.rows(), m.cols(), v[off..off + m.len()].to_vec());
                        off += m.len();
                        d
                    })
                    .collect();
                let (_, _, hv) = landscape::autodiff::hvp(&params, &dirs, |t, vars| {
                    model
                        .loss_tape(vars, t.constant(x.clone()), y, landscape::nn::Mode::Eval)
                        .0
                });
                let mut off = 0;
                for h in hv {
                    out[off..off + h.len()].copy_from_slice(h.as_slice());
                    off += h.len();
                }
            }
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

pub fn cmd_hessian(a: HessianArgs, command_line: &str) -> Result<(), String> {
    let model: Mlp<f64> = a.model.load()?;
    let bundle = a.data.load()?;
    super::check_model_fits(&model, &bundle)?;
    let batchnorm = model.layers.iter().any(|l| l.bn.is_some());
    if batchnorm && (a.part != Part::Full || a.dense.is_some() || a.gn_norms.is_some()) {
        return Err("a BatchNorm model has no analytic G/D/F structure here: use --part full with --top/--bottom/--trace/--density (double-backward HVPs of the evaluation-mode loss)".into());
    }
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
    if !(a.memory_budget > 0.0 && a.memory_budget.is_finite()) {
        return Err("--memory-budget must be a positive number of GiB".into());
    }
    let (gpu, fallback) = resolve_device(a.device).map_err(|e| e.to_string())?;
    if let Some(reason) = &fallback {
        eprintln!("--device auto: using the CPU ({reason})");
    }
    if gpu.is_none() && a.dtype == Dtype::F32 {
        return Err("--dtype f32 is for --device cuda; the CPU path computes in f64".into());
    }
    if gpu.is_some() && batchnorm {
        return Err(
            "BatchNorm models run on the CPU (double-backward HVPs); use --device cpu".into(),
        );
    }
    let p = model.num_params();
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
            "autodiff double backward (BatchNorm, evaluation mode)"
        } else {
            "analytic R-operator"
        }),
    );
    let mut timing = serde_json::Map::new();

    let mut dense: Option<Matrix<f64>> = None;
    if let Some(path) = &a.dense {
        let t = Instant::now();
        let budget = (a.memory_budget * (1u64 << 30) as f64) as usize;
        let h = match (&gpu, a.dtype) {
            (None, _) => dense_hessian(&model, &x, &y, a.part, budget),
            (Some(d), Dtype::F64) => {
                gpu_dense_hessian::<f64>(d, &model, &x, &y, a.part).map(|r| r.0)
            }
            (Some(d), Dtype::F32) => {
                gpu_dense_hessian::<f32>(d, &model, &x, &y, a.part).map(|r| r.0)
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
        meta.insert(
            "model".to_string(),
            serde_json::to_string(&model.config).unwrap_or_default(),
        );
        meta.insert("samples".to_string(), selection.to_string());
        meta.insert("dataset".to_string(), bundle.summary_json().to_string());
        write_safetensors(
            path,
            &[RawTensor::f64("hessian", vec![p, p], h.as_slice())],
            &meta,
        )
        .map_err(|e| e.to_string())?;
        eprintln!(
            "dense {:?} Hessian ({p} x {p}) written to {}",
            a.part,
            path.display()
        );
        results.insert("dense_file".into(), json!(path.display().to_string()));
        dense = Some(h);
    }

    if let Some(csv) = &a.gn_norms {
        let t = Instant::now();
        let g = match (&gpu, a.dtype) {
            (None, _) => per_sample_gn_norms_with_curvature(&model, &x, &y),
            (Some(d), Dtype::F64) => gpu_gn_norms::<f64>(d, &model, &x, &y),
            (Some(d), Dtype::F32) => gpu_gn_norms::<f32>(d, &model, &x, &y),
        }
        .map_err(|e| e.to_string())?;
        timing.insert("gn_norms_s".into(), json!(t.elapsed().as_secs_f64()));
        let mut f = std::fs::File::create(csv)
            .map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
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
        f.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", csv.display()))?;
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
        let op = if batchnorm {
            OperatorAdapter::Tape {
                model: &model,
                x: x.clone(),
                y: y.clone(),
            }
        } else {
            match (&gpu, a.dtype) {
                (None, _) => OperatorAdapter::Analytic(
                    HessianOperator::new(&model, &x, &y, a.part).map_err(|e| e.to_string())?,
                ),
                (Some(d), Dtype::F64) => OperatorAdapter::Gpu64(
                    GpuHessianOperator::new(d, &model, &x, &y, a.part)
                        .map_err(|e| e.to_string())?,
                ),
                (Some(d), Dtype::F32) => OperatorAdapter::Gpu32(
                    GpuHessianOperator::new(d, &model, &x, &y, a.part)
                        .map_err(|e| e.to_string())?,
                ),
            }
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
            let res = match &op {
                OperatorAdapter::Gpu64(g) => gpu_lanczos(g, which, &opts),
                OperatorAdapter::Gpu32(g) => gpu_lanczos(g, which, &opts),
                _ => linalg::lanczos(&op, which, &opts),
            }
            .map_err(|e| e.to_string())?;
            pb.finish_and_clear();
            timing.insert("lanczos_s".into(), json!(t.elapsed().as_secs_f64()));
            let mut eig = json!({
                "method": if matches!(op, OperatorAdapter::Gpu64(_) | OperatorAdapter::Gpu32(_)) { "lanczos (full reorthogonalisation, on the GPU)" } else { "lanczos (full reorthogonalisation)" },
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
    results.insert("timing".into(), serde_json::Value::Object(timing));
    let prov = Provenance::new(
        command_line,
        Some(a.seed),
        Some(bundle.summary_json()),
        json!({"model_file": a.model.model.display().to_string(), "model": model.config, "part": a.part, "samples": selection, "split": matches!(a.split, SplitOne::Test).then_some("test").unwrap_or("train")}),
    );
    write_results(
        a.json.as_deref(),
        "hessian",
        serde_json::Value::Object(results),
        &prov,
    )
}
