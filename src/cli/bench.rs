//! `landscape bench`: the standard workloads on every available device, timed, in one
//! table, beside peer results (JSON written by `benches/peers/*.py` in the same session).
//!
//! Workloads (random Kaiming-initialised models, seed 0; timings do not depend on the
//! weights' values):
//! * `dense_digits`: dense full Hessian, 64-32-32-10 ReLU with biases (P = 3,466), all
//!   1,797 UCI digits;
//! * `dense_mnist`: dense full Hessian, 784-64-64-10 ReLU with biases (P = 55,050), all
//!   10,000 mnist10k samples (GPU only: it needs 12 GiB in f32, 24 GiB in f64);
//! * `gn_norms`: exact per-sample GN norms (K x K route), 784-64-64-10, 10,000 samples;
//! * `hvp_b1000`, `hvp_b10000`: one full-Hessian HVP of the mean loss over 1,000 /
//!   10,000 samples, 784-64-64-10, forward pass cached (as `jax.linearize` does);
//! * `lanczos_b1000`: the largest Hessian eigenvalue to a relative residual of 1e-8,
//!   784-64-64-10, 1,000 samples (on the GPU the Krylov basis stays on the device);
//! * `train_step`: mean loss and gradient (forward + backward), 784-256-256-10, batch 128.
//! * `convnet_step`: the sphere paper's ConvNet, width 16, on 1 x 28 x 28 mnist10k images:
//!   mean loss and gradient (forward + backward, train-mode BatchNorm), batch 128, **f32**;
//! * `convnet_hvp_n1000`: one exact HVP (double backward) of the same ConvNet's mean loss
//!   over 1,000 images, f64, eval-mode BatchNorm;
//! * `convnet_top_eig_n2000`: its largest Hessian eigenvalue over 2,000 images to a relative
//!   residual of 1e-6 (Lanczos with full reorthogonalisation), f64, eval-mode BatchNorm.
//! * `convnet_top_eig_mixed_n2000`: the same eigenvalue to the same f64 relative residual,
//!   a first Krylov stage with f32 HVPs, a second with f64 HVPs, the residual certified
//!   in f64 (`linalg::lanczos_mixed`); each stage keeps every chunk's forward and first
//!   backward pass (`NetObjective::linearized`), so a product records only the second
//!   backward pass.
//!   The ConvNet holds the deterministic weights of `Network::fill_deterministic`, which
//!   `benches/peers/torch_convnet.py` sets too, so both sides solve the same problem.
//!
//! Each timing is the median of `--reps` runs after one warm-up run (which also
//! compiles the CUDA kernels).

use super::{progress, write_results};
use clap::{Args, ValueEnum};
use landscape::backend::cpu::machine_info;
use landscape::backend::cuda::{CudaDevice, CudaScalar};
use landscape::data::{self, DataOptions};
use landscape::hessian::gpu::{
    gpu_dense_hessian_device, gpu_gn_norms, gpu_gn_norms_resident, gpu_lanczos, gpu_loss_and_grad,
    GpuHessianOperator, GpuModel,
};
use landscape::hessian::network::{BnMode, NetObjective};
use landscape::hessian::{dense_hessian, per_sample_gn_norms, HessianOperator, Part};
use landscape::io::provenance::Provenance;
use landscape::linalg::{lanczos, lanczos_mixed, LanczosOptions, Which};
use landscape::nn::arch::{preset, PresetOptions};
use landscape::nn::backprop::loss_and_grad_analytic;
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig, Network};
use landscape::tensor::{flop_count, gemm_par, Par, Scalar};
use landscape::train::TrainModel;
use landscape::Matrix;
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Workload {
    DenseDigits,
    DenseMnist,
    GnNorms,
    HvpB1000,
    HvpB10000,
    LanczosB1000,
    TrainStep,
    ConvnetStep,
    ConvnetHvpN1000,
    ConvnetTopEigN2000,
    ConvnetTopEigMixedN2000,
}

impl Workload {
    fn key(self) -> &'static str {
        match self {
            Workload::DenseDigits => "dense_digits",
            Workload::DenseMnist => "dense_mnist",
            Workload::GnNorms => "gn_norms",
            Workload::HvpB1000 => "hvp_b1000",
            Workload::HvpB10000 => "hvp_b10000",
            Workload::LanczosB1000 => "lanczos_b1000",
            Workload::TrainStep => "train_step",
            Workload::ConvnetStep => "convnet_step",
            Workload::ConvnetHvpN1000 => "convnet_hvp_n1000",
            Workload::ConvnetTopEigN2000 => "convnet_top_eig_n2000",
            Workload::ConvnetTopEigMixedN2000 => "convnet_top_eig_mixed_n2000",
        }
    }

    /// Workloads of the network engine (CPU only).
    fn is_network(self) -> bool {
        matches!(
            self,
            Workload::ConvnetStep
                | Workload::ConvnetHvpN1000
                | Workload::ConvnetTopEigN2000
                | Workload::ConvnetTopEigMixedN2000
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum BenchDevices {
    /// The CPU only.
    Cpu,
    /// The GPU only (an error without one).
    Cuda,
    /// The CPU, and the GPU when one is present.
    All,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Workloads to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub workloads: Vec<Workload>,
    #[arg(long, value_enum, default_value = "all")]
    pub devices: BenchDevices,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Also run `dense_mnist` on the CPU (minutes, and 24 GiB of memory).
    #[arg(long)]
    pub cpu_dense_mnist: bool,
    /// Peer results to put beside ours (JSON from benches/peers/*.py).
    #[arg(long, num_args = 1..)]
    pub peers: Vec<PathBuf>,
    /// Markdown table output.
    #[arg(long)]
    pub table: Option<PathBuf>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn cfg(widths: &[usize]) -> MlpConfig {
    MlpConfig {
        input_dim: widths[0],
        hidden: widths[1..widths.len() - 1].to_vec(),
        classes: *widths.last().expect("widths"),
        activation: Activation::Relu,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    }
}

/// Rows of `x` and labels of an embedded dataset, train and test concatenated.
fn dataset(name: &str) -> Result<(Matrix<f64>, Vec<usize>, String), String> {
    let b = data::load(name, &DataOptions::default()).map_err(|e| e.to_string())?;
    let mut rows = b.train.x.as_slice().to_vec();
    let mut y = b.train.y.clone();
    if let Some(t) = &b.test {
        rows.extend_from_slice(t.x.as_slice());
        y.extend_from_slice(&t.y);
    }
    let x = Matrix::from_vec(y.len(), b.features, rows);
    Ok((x, y, b.content_hash.clone()))
}

/// Median seconds of `reps` runs after one warm-up.
/// Square size of the GEMM-rate measurement of every bench run.
const GEMM_RATE_N: usize = 1536;

/// GFLOP/s of `C = A B` (`n x n`, all threads, the engine's GEMM layer), median of 3
/// after a warm-up: the machine's dense-product rate of this run, the yardstick of
/// the workloads' achieved rates.
fn gemm_rate<T: Scalar>(n: usize) -> f64 {
    let mut rng = landscape::rng::Rng::new(7);
    let a = Matrix::<T>::from_fn(n, n, |_, _| T::from_f64(rng.normal()));
    let b = Matrix::<T>::from_fn(n, n, |_, _| T::from_f64(rng.normal()));
    let mut c = Matrix::<T>::zeros(n, n);
    let mut ts = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        gemm_par(Par::Rayon, T::ONE, a.view(), b.view(), T::ZERO, &mut c);
        if i > 0 {
            ts.push(t.elapsed().as_secs_f64());
        }
    }
    ts.sort_by(f64::total_cmp);
    2.0 * (n as f64).powi(3) / ts[1] / 1e9
}

/// FLOPs per call of the last [`time_it`], counted at the CPU GEMM layer and the
/// convolution kernels (`tensor::flop_count`), as f64 bits.
static LAST_TIMED_FLOPS: AtomicU64 = AtomicU64::new(0);

/// Dense-product FLOPs of one call of the last timed CPU workload (`None`: none counted).
fn last_timed_flops() -> Option<f64> {
    let f = f64::from_bits(LAST_TIMED_FLOPS.load(Ordering::Relaxed));
    (f > 0.0).then_some(f)
}

fn time_it(
    reps: usize,
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<(f64, Vec<f64>), String> {
    flop_count::start();
    f()?;
    let flops = flop_count::stop();
    LAST_TIMED_FLOPS.store(flops.to_bits(), Ordering::Relaxed);
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        ts.push(t.elapsed().as_secs_f64());
    }
    let mut s = ts.clone();
    s.sort_by(f64::total_cmp);
    Ok((s[s.len() / 2], ts))
}

struct Row {
    workload: &'static str,
    device: String,
    dtype: &'static str,
    seconds: f64,
    all: Vec<f64>,
    /// `(unit, amount per run)` for a throughput column.
    work: (&'static str, f64),
    gemm_flops: Option<f64>,
    note: Option<String>,
}

fn gpu_rows<T: CudaScalar>(
    dev: &CudaDevice,
    w: Workload,
    reps: usize,
    inputs: &Inputs,
) -> Result<Row, String> {
    let e = |e: landscape::Error| e.to_string();
    let name = format!("cuda ({})", dev.name());
    let mut flops = None;
    let mut note = None;
    let (seconds, all, work) = match w {
        Workload::DenseDigits | Workload::DenseMnist => {
            let (m, x, y) = if w == Workload::DenseDigits {
                (&inputs.digits_model, &inputs.digits.0, &inputs.digits.1)
            } else {
                (&inputs.mnist_model, &inputs.mnist.0, &inputs.mnist.1)
            };
            let mut f = 0.0;
            let r = time_it(reps, || {
                let (h, stats) =
                    gpu_dense_hessian_device::<T>(dev, m, x, y, Part::Full).map_err(e)?;
                f = stats.gemm_flops;
                drop(h);
                Ok(())
            })?;
            flops = Some(f);
            (r.0, r.1, ("samples", y.len() as f64))
        }
        Workload::GnNorms => {
            // Data resident on the device, as for the peers; the end-to-end call
            // (upload, compute, download) is timed too and recorded in the note.
            let (x, y) = (&inputs.mnist.0, &inputs.mnist.1);
            let gm = GpuModel::<T>::upload(dev, &inputs.mnist_model).map_err(e)?;
            let xs: Vec<T> = x.as_slice().iter().map(|&v| T::from_f64(v)).collect();
            let xd = dev.upload_slice(&xs).map_err(e)?;
            let ys: Vec<u32> = y.iter().map(|&v| v as u32).collect();
            let yd = dev.upload_slice(&ys).map_err(e)?;
            let r = time_it(reps.max(10), || {
                let out = gpu_gn_norms_resident(dev, &gm, &xd, &yd, y.len()).map_err(e)?;
                dev.synchronize().map_err(e)?;
                drop(out);
                Ok(())
            })?;
            let end_to_end = time_it(reps, || {
                gpu_gn_norms::<T>(dev, &inputs.mnist_model, x, y)
                    .map_err(e)
                    .map(|_| ())
            })?;
            note = Some(format!(
                "end to end with host upload/download: {:.4e} s",
                end_to_end.0
            ));
            (r.0, r.1, ("samples", y.len() as f64))
        }
        Workload::HvpB1000 | Workload::HvpB10000 => {
            let b = if w == Workload::HvpB1000 { 1000 } else { 10000 };
            let x = inputs.mnist.0.rows_view(0, b).to_owned();
            let op = GpuHessianOperator::<T>::new(
                dev,
                &inputs.mnist_model,
                &x,
                &inputs.mnist.1[..b],
                Part::Full,
            )
            .map_err(e)?;
            let r = time_it(reps.max(10), || {
                op.apply(&inputs.mnist_dir).map_err(e).map(|_| ())
            })?;
            (r.0, r.1, ("HVPs", 1.0))
        }
        Workload::LanczosB1000 => {
            let x = inputs.mnist.0.rows_view(0, 1000).to_owned();
            let op = GpuHessianOperator::<T>::new(
                dev,
                &inputs.mnist_model,
                &x,
                &inputs.mnist.1[..1000],
                Part::Full,
            )
            .map_err(e)?;
            let tol = if T::DTYPE == "f64" { 1e-8 } else { 1e-4 };
            let mut iters = 0;
            let r = time_it(reps, || {
                let l = gpu_lanczos(
                    &op,
                    Which::Largest(1),
                    &LanczosOptions {
                        tol,
                        max_iter: 300,
                        ..Default::default()
                    },
                )
                .map_err(e)?;
                iters = l.iterations;
                Ok(())
            })?;
            note = Some(format!("{iters} operator applications, tol {tol}"));
            (r.0, r.1, ("solves", 1.0))
        }
        Workload::TrainStep => {
            let gm = GpuModel::<T>::upload(dev, &inputs.train_model).map_err(e)?;
            let xb: Vec<T> = inputs.mnist.0.as_slice()[..128 * 784]
                .iter()
                .map(|&v| T::from_f64(v))
                .collect();
            let xd = dev.upload_slice(&xb).map_err(e)?;
            let yd = dev
                .upload_slice(
                    &inputs.mnist.1[..128]
                        .iter()
                        .map(|&v| v as u32)
                        .collect::<Vec<_>>(),
                )
                .map_err(e)?;
            let r = time_it(reps.max(20), || {
                gpu_loss_and_grad(dev, &gm, &xd, &yd, 128)
                    .map_err(e)
                    .map(|_| ())
            })?;
            (r.0, r.1, ("steps", 1.0))
        }
        _ => unreachable!("network workloads run on the CPU only"),
    };
    Ok(Row {
        workload: w.key(),
        device: name,
        dtype: T::DTYPE,
        seconds,
        all,
        work,
        gemm_flops: flops,
        note,
    })
}

struct Inputs {
    digits: (Matrix<f64>, Vec<usize>),
    mnist: (Matrix<f64>, Vec<usize>),
    digits_model: Mlp<f64>,
    mnist_model: Mlp<f64>,
    train_model: Mlp<f64>,
    mnist_dir: Vec<f64>,
    hashes: serde_json::Value,
    convnet: Network<f64>,
}

/// The benchmark ConvNet: width 16 on 1 x 28 x 28, deterministic weights.
pub fn bench_convnet() -> Result<Network<f64>, String> {
    let o = PresetOptions {
        input_shape: [1, 28, 28],
        classes: 10,
        loss: LossKind::CrossEntropy,
        width: 16,
        wide: 1,
        mlp: None,
    };
    let arch = preset("convnet", &o).map_err(|e| e.to_string())?;
    let mut net = Network::<f64>::init(arch, Init::Torch, 1.0, 0).map_err(|e| e.to_string())?;
    net.fill_deterministic();
    Ok(net)
}

fn network_row(w: Workload, reps: usize, inputs: &Inputs) -> Result<Row, String> {
    let e = |e: landscape::Error| e.to_string();
    let net = &inputs.convnet;
    let (x, y) = (&inputs.mnist.0, &inputs.mnist.1);
    let mut dtype = "f64";
    let (seconds, all, work) = match w {
        Workload::ConvnetStep => {
            dtype = "f32";
            let net32 = net.cast::<f32>();
            let xb: Matrix<f32> = x.rows_view(0, 128).to_owned().cast();
            let yb = &y[..128];
            let r = time_it(reps.max(10), || {
                net32.train_grad(&xb, yb).map_err(e).map(|_| ())
            })?;
            (r.0, r.1, ("steps", 1.0))
        }
        Workload::ConvnetHvpN1000 => {
            let xb = x.rows_view(0, 1000).to_owned();
            let obj = NetObjective::new(net, &xb, &y[..1000], BnMode::Eval).map_err(e)?;
            let mut rng = landscape::rng::Rng::new(1);
            let v: Vec<f64> = (0..net.num_params()).map(|_| rng.normal()).collect();
            let r = time_it(reps, || {
                let _ = obj.hvp(&v);
                Ok(())
            })?;
            (r.0, r.1, ("HVPs", 1.0))
        }
        Workload::ConvnetTopEigN2000 | Workload::ConvnetTopEigMixedN2000 => {
            let mixed = w == Workload::ConvnetTopEigMixedN2000;
            let xb = x.rows_view(0, 2000).to_owned();
            let obj = NetObjective::new(net, &xb, &y[..2000], BnMode::Eval).map_err(e)?;
            let opts = LanczosOptions {
                tol: 1e-6,
                max_iter: 200,
                check_every: 1,
                ..Default::default()
            };
            let mut last = None;
            let r = time_it(reps.min(3), || {
                let res = if mixed {
                    lanczos_mixed(
                        obj.linearized::<f32>(),
                        &obj.linearized::<f64>(),
                        Which::Largest(1),
                        &opts,
                    )
                } else {
                    lanczos(&obj, Which::Largest(1), &opts)
                }
                .map_err(e)?;
                last = Some(res);
                Ok(())
            })?;
            if let Some(res) = last {
                let (v, r) = (res.values[0], res.residuals[0]);
                eprintln!(
                    "{}: lambda_max {v:.12e}, f64 residual {r:.2e} ({:.2e} relative), {} f32 + {} f64 HVPs",
                    w.key(),
                    r / v.abs(),
                    res.approx_products,
                    res.iterations
                );
            }
            (r.0, r.1, ("solves", 1.0))
        }
        _ => unreachable!("network workloads only"),
    };
    Ok(Row {
        workload: w.key(),
        device: format!("cpu ({} threads)", rayon::current_num_threads()),
        dtype,
        seconds,
        all,
        work,
        gemm_flops: last_timed_flops(),
        note: None,
    })
}

fn cpu_row(w: Workload, reps: usize, inputs: &Inputs) -> Result<Row, String> {
    if w.is_network() {
        return network_row(w, reps, inputs);
    }
    let e = |e: landscape::Error| e.to_string();
    let (seconds, all, work) = match w {
        Workload::DenseDigits | Workload::DenseMnist => {
            let (m, x, y) = if w == Workload::DenseDigits {
                (&inputs.digits_model, &inputs.digits.0, &inputs.digits.1)
            } else {
                (&inputs.mnist_model, &inputs.mnist.0, &inputs.mnist.1)
            };
            let r = time_it(reps, || {
                dense_hessian(m, x, y, Part::Full, usize::MAX)
                    .map_err(e)
                    .map(|_| ())
            })?;
            (r.0, r.1, ("samples", y.len() as f64))
        }
        Workload::GnNorms => {
            let r = time_it(reps, || {
                per_sample_gn_norms(&inputs.mnist_model, &inputs.mnist.0, &inputs.mnist.1)
                    .map_err(e)
                    .map(|_| ())
            })?;
            (r.0, r.1, ("samples", inputs.mnist.1.len() as f64))
        }
        Workload::HvpB1000 | Workload::HvpB10000 => {
            let b = if w == Workload::HvpB1000 { 1000 } else { 10000 };
            let x = inputs.mnist.0.rows_view(0, b).to_owned();
            let op =
                HessianOperator::new(&inputs.mnist_model, &x, &inputs.mnist.1[..b], Part::Full)
                    .map_err(e)?;
            let r = time_it(reps.max(5), || {
                op.apply(&inputs.mnist_dir).map_err(e).map(|_| ())
            })?;
            (r.0, r.1, ("HVPs", 1.0))
        }
        Workload::LanczosB1000 => {
            let x = inputs.mnist.0.rows_view(0, 1000).to_owned();
            let op =
                HessianOperator::new(&inputs.mnist_model, &x, &inputs.mnist.1[..1000], Part::Full)
                    .map_err(e)?;
            let r = time_it(reps, || {
                lanczos(
                    &op,
                    Which::Largest(1),
                    &LanczosOptions {
                        tol: 1e-8,
                        max_iter: 300,
                        ..Default::default()
                    },
                )
                .map_err(e)
                .map(|_| ())
            })?;
            (r.0, r.1, ("solves", 1.0))
        }
        Workload::TrainStep => {
            let x = inputs.mnist.0.rows_view(0, 128).to_owned();
            let y = &inputs.mnist.1[..128];
            let r = time_it(reps.max(20), || {
                loss_and_grad_analytic(&inputs.train_model, &x, y)
                    .map_err(e)
                    .map(|_| ())
            })?;
            (r.0, r.1, ("steps", 1.0))
        }
        _ => unreachable!("network workloads are timed by network_row"),
    };
    Ok(Row {
        workload: w.key(),
        device: format!("cpu ({} threads)", rayon::current_num_threads()),
        dtype: "f64",
        seconds,
        all,
        work,
        gemm_flops: last_timed_flops(),
        note: None,
    })
}

/// Peer entries: `(peer, device kind, workload, dtype, seconds, method)`.
fn load_peers(paths: &[PathBuf]) -> Result<Vec<serde_json::Value>, String> {
    let mut out = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", p.display()))?;
        let peer = v["peer"].as_str().unwrap_or("peer").to_string();
        let device = v["device"].as_str().unwrap_or("cpu").to_string();
        let rows = v["results"]
            .as_array()
            .ok_or_else(|| format!("{}: no `results` array", p.display()))?;
        for r in rows {
            let mut r = r.clone();
            r["peer"] = json!(peer);
            r["device_kind"] = json!(device);
            out.push(r);
        }
    }
    Ok(out)
}

pub fn cmd_bench(a: BenchArgs, command_line: &str) -> Result<(), String> {
    if a.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    super::probe_outputs(&[a.table.as_deref(), a.json.as_deref()])?;
    let workloads = if a.workloads.is_empty() {
        vec![
            Workload::DenseDigits,
            Workload::DenseMnist,
            Workload::GnNorms,
            Workload::HvpB1000,
            Workload::HvpB10000,
            Workload::LanczosB1000,
            Workload::TrainStep,
            Workload::ConvnetStep,
            Workload::ConvnetHvpN1000,
            Workload::ConvnetTopEigN2000,
            Workload::ConvnetTopEigMixedN2000,
        ]
    } else {
        a.workloads.clone()
    };
    let peers = load_peers(&a.peers)?;
    let gpu = match a.devices {
        BenchDevices::Cpu => None,
        BenchDevices::Cuda => Some(CudaDevice::open(0).map_err(|e| e.to_string())?),
        BenchDevices::All => match CudaDevice::open(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("bench: GPU rows skipped ({e})");
                None
            }
        },
    };
    let (dx, dy, dh) = dataset("digits")?;
    let (mx, my, mh) = dataset("mnist10k")?;
    let e = |e: landscape::Error| e.to_string();
    let mnist_model = Mlp::init(cfg(&[784, 64, 64, 10]), Init::Kaiming, 1.0, 0).map_err(e)?;
    let mut rng = landscape::rng::Rng::new(1);
    let mnist_dir = (0..mnist_model.num_params())
        .map(|_| rng.normal())
        .collect();
    let inputs = Inputs {
        digits: (dx, dy),
        mnist: (mx, my),
        digits_model: Mlp::init(cfg(&[64, 32, 32, 10]), Init::Kaiming, 1.0, 0).map_err(e)?,
        mnist_model,
        train_model: Mlp::init(cfg(&[784, 256, 256, 10]), Init::Kaiming, 1.0, 0).map_err(e)?,
        mnist_dir,
        hashes: json!({"digits": dh, "mnist10k": mh}),
        convnet: bench_convnet()?,
    };
    let machine = machine_info();
    let (dgemm, sgemm) = if a.devices == BenchDevices::Cuda {
        (None, None)
    } else {
        (
            Some(gemm_rate::<f64>(GEMM_RATE_N)),
            Some(gemm_rate::<f32>(GEMM_RATE_N)),
        )
    };
    let mut rows = Vec::new();
    let pb = progress(workloads.len() as u64, "bench");
    for &w in &workloads {
        if a.devices != BenchDevices::Cuda && (w != Workload::DenseMnist || a.cpu_dense_mnist) {
            rows.push(cpu_row(w, a.reps, &inputs)?);
        }
        if let Some(d) = gpu.as_ref().filter(|_| !w.is_network()) {
            rows.push(gpu_rows::<f64>(d, w, a.reps, &inputs)?);
            rows.push(gpu_rows::<f32>(d, w, a.reps, &inputs)?);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    // One table: our rows, each with the matching peer rows (same workload, device kind, dtype).
    let mut table = format!(
        "Machine: {} ({} threads; {}; kernels use {}; conv kernels {}; GEMM {}).\n",
        machine.processor,
        machine.threads,
        machine.isa.join(" "),
        machine.simd_used,
        machine.conv_kernels,
        machine.gemm
    );
    if let (Some(d), Some(s)) = (dgemm, sgemm) {
        table.push_str(&format!(
            "GEMM rate of this run ({GEMM_RATE_N}^3, all threads): dgemm {d:.1} GFLOP/s, sgemm {s:.1} GFLOP/s. \
             CPU rows: dense-product FLOPs counted at the GEMM layer and the convolution kernels, \
             their rate, and that rate over the GEMM rate of the row's dtype.\n"
        ));
    }
    table.push_str("\n| workload | device | dtype | ours (s) | throughput | GEMM TFLOP/s | of GEMM rate | peer | peer (s) | peer / ours |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let mut out_rows = Vec::new();
    for r in &rows {
        let kind = if r.device.starts_with("cuda") {
            "cuda"
        } else {
            "cpu"
        };
        let matching: Vec<&serde_json::Value> = peers
            .iter()
            .filter(|p| {
                p["workload"] == r.workload && p["device_kind"] == kind && p["dtype"] == r.dtype
            })
            .collect();
        let tflops = r.gemm_flops.map(|f| f / r.seconds / 1e12);
        let peak = if kind == "cpu" {
            if r.dtype == "f32" {
                sgemm
            } else {
                dgemm
            }
        } else {
            None
        };
        let share = tflops.zip(peak).map(|(t, p)| t * 1e3 / p);
        let share_cell = share.map_or(String::new(), |s| format!("{:.0}%", 100.0 * s));
        let thr = format!("{:.4e} {}/s", r.work.1 / r.seconds, r.work.0);
        let mut peer_json = Vec::new();
        if matching.is_empty() {
            table.push_str(&format!(
                "| {} | {} | {} | {:.4e} | {} | {} | {} | | | |\n",
                r.workload,
                r.device,
                r.dtype,
                r.seconds,
                thr,
                tflops.map_or(String::new(), |t| format!("{t:.3}")),
                share_cell
            ));
        }
        for p in matching {
            let ps = p["seconds"].as_f64().unwrap_or(f64::NAN);
            let label = format!(
                "{} ({})",
                p["peer"].as_str().unwrap_or("?"),
                p["method"].as_str().unwrap_or("")
            );
            table.push_str(&format!(
                "| {} | {} | {} | {:.4e} | {} | {} | {} | {} | {:.4e} | {:.1}x |\n",
                r.workload,
                r.device,
                r.dtype,
                r.seconds,
                thr,
                tflops.map_or(String::new(), |t| format!("{t:.3}")),
                share_cell,
                label,
                ps,
                ps / r.seconds
            ));
            peer_json.push(
                json!({"peer": label, "seconds": ps, "ratio_peer_over_ours": ps / r.seconds}),
            );
        }
        out_rows.push(json!({
            "workload": r.workload, "device": r.device, "dtype": r.dtype,
            "seconds_median": r.seconds, "seconds_all": r.all,
            "throughput": r.work.1 / r.seconds, "throughput_unit": format!("{}/s", r.work.0),
            "gemm_flops": r.gemm_flops, "gemm_tflops": tflops, "fraction_of_gemm_rate": share,
            "peers": peer_json, "note": r.note,
        }));
    }
    print!("{table}");
    if let Some(t) = &a.table {
        super::write_file(t, table.as_bytes())?;
    }
    let prov = Provenance::new(
        command_line,
        Some(0),
        Some(inputs.hashes.clone()),
        json!({"workloads": workloads.iter().map(|w| w.key()).collect::<Vec<_>>(), "reps": a.reps,
               "gpu": gpu.as_ref().map(|d| json!({"name": d.name(), "arch": d.arch()})),
               "threads": rayon::current_num_threads(), "machine": machine}),
    );
    write_results(
        a.json.as_deref(),
        "bench",
        json!({"rows": out_rows, "table_markdown": table, "machine": machine,
               "gemm_rate_gflops": {"n": GEMM_RATE_N, "f64": dgemm, "f32": sgemm}}),
        &prov,
    )
}
