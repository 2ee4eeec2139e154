//! CUDA backend tests.
//!
//! * Every kernel file compiles with NVRTC. CI installs libnvrtc from pip and sets
//!   `LANDSCAPE_REQUIRE_NVRTC=1`, which turns "NVRTC not found" into a failure.
//! * Without a device, `CudaDevice::open` and `--device cuda` fail cleanly.
//! * With a device, every CUDA result is compared with the CPU f64 result.
//!   Tolerances (relative): f64 <= 1e-10 (Frobenius / max-abs over the result),
//!   f32 <= 2e-4 (f32 GEMMs over thousands of terms lose about 4 digits at most).
//!   GPU tests print why they skip when no device is present.

use crate::common::TempDir;
use landscape::backend::cuda::{compile_all_kernels, nvrtc_available, CudaBackend, CudaDevice};
use landscape::backend::{mlp_logits, CpuBackend};
use landscape::hessian::gpu::{
    gpu_dense_hessian, gpu_gn_norms, gpu_lanczos, gpu_loss_and_grad, GpuHessianOperator, GpuModel,
};
use landscape::hessian::small_eig::sym_eigenvalues;
use landscape::hessian::{dense_hessian, per_sample_gn_norms, HessianOperator, Part};
use landscape::io::kernels::kernel_source;
use landscape::linalg::{lanczos, LanczosOptions, Which};
use landscape::nn::backprop::loss_and_grad_analytic;
use landscape::nn::{Activation, Init, LossKind, Mlp};
use landscape::rng::Rng;
use landscape::Matrix;
use std::process::Command;
use std::sync::Arc;

use crate::common::mlp_config as config;

fn data(m: usize, n: usize, k: usize, seed: u64) -> (Matrix<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let x = Matrix::from_fn(m, n, |_, _| rng.normal());
    let y = (0..m).map(|i| (i * 7 + 3) % k).collect();
    (x, y)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(u, v)| (u - v) * (u - v)).sum();
    let den: f64 = b.iter().map(|v| v * v).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The device, or `None` with the reason printed (the test then checks nothing GPU-side).
fn gpu(test: &str) -> Option<Arc<CudaDevice>> {
    match CudaDevice::open(0) {
        Ok(d) => Some(Arc::new(d)),
        Err(e) => {
            eprintln!("skipping GPU part of {test}: {e}");
            None
        }
    }
}

/// Models covering activations, bias on/off, CE/MSE and depths 1..3 (awkward widths).
fn models() -> Vec<Mlp<f64>> {
    let specs: &[(&[usize], Activation, bool, LossKind)] = &[
        (&[5, 3], Activation::Identity, true, LossKind::CrossEntropy),
        (&[7, 6, 4], Activation::Relu, true, LossKind::CrossEntropy),
        (&[6, 5, 3], Activation::Tanh, false, LossKind::Mse),
        (
            &[4, 7, 5, 3],
            Activation::Tanh,
            true,
            LossKind::CrossEntropy,
        ),
        (
            &[9, 8, 6, 10],
            Activation::LeakyRelu,
            false,
            LossKind::CrossEntropy,
        ),
        (&[3, 31, 2, 2], Activation::Relu, true, LossKind::Mse),
        (&[6, 5, 3], Activation::Sigmoid, true, LossKind::Mse),
        (
            &[4, 7, 5, 3],
            Activation::Softplus,
            false,
            LossKind::CrossEntropy,
        ),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(i, (w, a, b, l))| {
            Mlp::init(config(w, *a, *b, *l), Init::Kaiming, 1.3, 40 + i as u64).unwrap()
        })
        .collect()
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_available() {
        assert!(
            std::env::var("LANDSCAPE_REQUIRE_NVRTC").is_err(),
            "LANDSCAPE_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (check LD_LIBRARY_PATH)"
        );
        eprintln!("skipping NVRTC compile check: libnvrtc not found");
        return;
    }
    // Hopper (the lent GPUs) and Ampere.
    for arch in ["compute_90", "compute_80"] {
        let compiled = compile_all_kernels(arch).unwrap_or_else(|e| panic!("{e}"));
        assert!(compiled.len() >= 5, "{compiled:?}");
    }
    // Every kernel the Rust launchers name exists in its file, for f32 and f64.
    let launchers = include_str!("../src/backend/cuda/kernels.rs");
    // Each `launch!(self, "file.cu", "base", ...)` names a file and a kernel base name.
    let mut checked = 0;
    for (pos, _) in launchers.match_indices(".cu\",") {
        let open = launchers[..pos].rfind('"').unwrap();
        let file = &launchers[open + 1..pos + 3];
        let rest = &launchers[pos + 5..];
        let q0 = rest.find('"').unwrap();
        let q1 = q0 + 1 + rest[q0 + 1..].find('"').unwrap();
        let base = &rest[q0 + 1..q1];
        if base.contains('{') || !rest[..q0].trim().is_empty() {
            continue; // a formatted name, checked below
        }
        let src = kernel_source(file).unwrap_or_else(|| panic!("no kernel file {file}"));
        assert!(
            src.contains(&format!("void {base}_##SUF(")),
            "{file} lacks {base}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} launchers found");
    for name in ["loss_top", "gn_norm_jacobi_k16", "gn_norm_jacobi_k32"] {
        let file = if name == "loss_top" {
            "loss.cu"
        } else {
            "gn_norm.cu"
        };
        assert!(kernel_source(file)
            .unwrap()
            .contains(&format!("void {name}_##SUF(")));
    }
    for act in ["relu", "leaky_relu", "tanh", "identity"] {
        for kind in ["fwd", "deriv"] {
            for ty in ["f32", "f64"] {
                let name = format!("void act_{kind}_{act}_{ty}(");
                assert!(
                    kernel_source("activation.cu").unwrap().contains(&name),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn no_device_is_a_clean_error_and_auto_falls_back() {
    let d = TempDir::new("cuda-cli");
    let m = d.join("m.safetensors");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let o = Command::new(bin)
        .args([
            "train", "--data", "digits", "--hidden", "5", "--epochs", "1", "--out",
        ])
        .arg(&m)
        .output()
        .unwrap();
    assert!(o.status.success());
    let run = |device: &str| {
        Command::new(bin)
            .args([
                "hessian",
                "--data",
                "digits",
                "--samples",
                "50",
                "--top",
                "1",
                "--device",
                device,
                "--model",
            ])
            .arg(&m)
            .output()
            .unwrap()
    };
    let auto = run("auto");
    assert!(
        auto.status.success(),
        "{}",
        String::from_utf8_lossy(&auto.stderr)
    );
    if CudaDevice::open(0).is_ok() {
        eprintln!("a CUDA device is present: the no-device error cannot be checked here");
        return;
    }
    let err = CudaDevice::open(0).err().unwrap().to_string();
    assert!(err.contains("no CUDA device found"), "{err}");
    let o = run("cuda");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(!e.contains("panicked"), "{e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains("no CUDA device found"), "{e}");
}

#[test]
fn cuda_backend_forward_matches_cpu() {
    let Some(dev) = gpu("cuda_backend_forward_matches_cpu") else {
        return;
    };
    let be = CudaBackend::new(dev);
    for model in models() {
        let (x, _) = data(37, model.config.input_dim, model.config.classes, 1);
        let cpu = mlp_logits(&CpuBackend, &model, &x).unwrap();
        let g64 = mlp_logits(&be, &model, &x).unwrap();
        assert!(rel(g64.as_slice(), cpu.as_slice()) <= 1e-12);
        let m32 = model.cast::<f32>();
        let x32 = Matrix::from_fn(x.rows(), x.cols(), |i, j| x.get(i, j) as f32);
        let g32 = mlp_logits(&be, &m32, &x32).unwrap();
        let g32: Vec<f64> = g32.as_slice().iter().map(|&v| v as f64).collect();
        assert!(rel(&g32, cpu.as_slice()) <= 2e-5);
    }
}

#[test]
fn gpu_gn_norms_match_cpu() {
    let Some(dev) = gpu("gpu_gn_norms_match_cpu") else {
        return;
    };
    for model in models() {
        let (x, y) = data(203, model.config.input_dim, model.config.classes, 2);
        let cpu = per_sample_gn_norms(&model, &x, &y).unwrap();
        let g = gpu_gn_norms::<f64>(&dev, &model, &x, &y).unwrap();
        for i in 0..x.rows() {
            let scale = cpu.norms[i].abs().max(1e-300);
            assert!(
                (g.norms[i] - cpu.norms[i]).abs() <= 1e-10 * scale,
                "sample {i}: {} vs {}",
                g.norms[i],
                cpu.norms[i]
            );
            assert!((g.losses[i] - cpu.losses[i]).abs() <= 1e-12 * cpu.losses[i].abs().max(1.0));
        }
        assert_eq!(g.ranks, cpu.ranks);
        let g32 = gpu_gn_norms::<f32>(&dev, &model, &x, &y).unwrap();
        assert!(
            rel(&g32.norms, &cpu.norms) <= 2e-4,
            "{}",
            rel(&g32.norms, &cpu.norms)
        );
    }
}

#[test]
fn gpu_dense_hessian_matches_cpu() {
    let Some(dev) = gpu("gpu_dense_hessian_matches_cpu") else {
        return;
    };
    for model in models() {
        let (x, y) = data(97, model.config.input_dim, model.config.classes, 3);
        for part in [Part::Full, Part::Gn, Part::Hterm] {
            let cpu = dense_hessian(&model, &x, &y, part, 1 << 30).unwrap();
            let (g, stats) = gpu_dense_hessian::<f64>(&dev, &model, &x, &y, part).unwrap();
            let e = rel(g.as_slice(), cpu.as_slice());
            assert!(e <= 1e-10, "{part:?} {:?}: {e}", model.config.widths());
            // An L = 1 model has no H-term at all: no GEMM work.
            assert!(stats.gemm_flops > 0.0 || part == Part::Hterm);
            let (g32, _) = gpu_dense_hessian::<f32>(&dev, &model, &x, &y, part).unwrap();
            let e32 = rel(g32.as_slice(), cpu.as_slice());
            assert!(
                e32 <= 2e-4,
                "f32 {part:?} {:?}: {e32}",
                model.config.widths()
            );
        }
    }
}

#[test]
fn gpu_hvp_and_lanczos_match_cpu() {
    let Some(dev) = gpu("gpu_hvp_and_lanczos_match_cpu") else {
        return;
    };
    for model in models() {
        let (x, y) = data(150, model.config.input_dim, model.config.classes, 4);
        let p = model.param_vector().len();
        let mut rng = Rng::new(9);
        let v: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
        for part in [Part::Full, Part::Gn, Part::Hterm] {
            let cpu = HessianOperator::new(&model, &x, &y, part)
                .unwrap()
                .apply(&v)
                .unwrap();
            let op = GpuHessianOperator::<f64>::new(&dev, &model, &x, &y, part).unwrap();
            let g = op.apply(&v).unwrap();
            assert!(rel(&g, &cpu) <= 1e-10, "{part:?}: {}", rel(&g, &cpu));
            let op32 = GpuHessianOperator::<f32>::new(&dev, &model, &x, &y, part).unwrap();
            let g32 = op32.apply(&v).unwrap();
            assert!(rel(&g32, &cpu) <= 2e-4, "f32 {part:?}: {}", rel(&g32, &cpu));
        }
        // Lanczos over the device operator against the dense CPU spectrum.
        let h = dense_hessian(&model, &x, &y, Part::Full, 1 << 30).unwrap();
        let op = GpuHessianOperator::<f64>::new(&dev, &model, &x, &y, Part::Full).unwrap();
        let opts = LanczosOptions::default();
        let on_gpu = lanczos(
            &op,
            Which::BothEnds {
                largest: 1,
                smallest: 1,
            },
            &opts,
        )
        .unwrap();
        let ev = sym_eigenvalues(&h);
        let (lo, hi) = (ev[0], *ev.last().unwrap());
        let scale = lo.abs().max(hi.abs());
        assert!(
            (on_gpu.values[0] - hi).abs() <= 1e-8 * scale,
            "{} vs {hi}",
            on_gpu.values[0]
        );
        assert!(
            (on_gpu.values[1] - lo).abs() <= 1e-8 * scale,
            "{} vs {lo}",
            on_gpu.values[1]
        );
        assert!(on_gpu.residuals.iter().all(|&r| r <= 1e-8 * scale));
        // The same with the Krylov basis on the device (f64 and f32).
        let dev_l = gpu_lanczos(
            &op,
            Which::BothEnds {
                largest: 1,
                smallest: 1,
            },
            &opts,
        )
        .unwrap();
        assert!(
            (dev_l.values[0] - hi).abs() <= 1e-8 * scale,
            "{} vs {hi}",
            dev_l.values[0]
        );
        assert!(
            (dev_l.values[1] - lo).abs() <= 1e-8 * scale,
            "{} vs {lo}",
            dev_l.values[1]
        );
        assert!(dev_l.residuals.iter().all(|&r| r <= 1e-8 * scale));
        let op32 = GpuHessianOperator::<f32>::new(&dev, &model, &x, &y, Part::Full).unwrap();
        let loose = LanczosOptions {
            tol: 1e-5,
            ..LanczosOptions::default()
        };
        let l32 = gpu_lanczos(&op32, Which::Largest(1), &loose).unwrap();
        assert!(
            (l32.values[0] - hi).abs() <= 1e-3 * scale,
            "{} vs {hi}",
            l32.values[0]
        );
    }
}

#[test]
fn gpu_loss_and_gradient_match_cpu() {
    let Some(dev) = gpu("gpu_loss_and_gradient_match_cpu") else {
        return;
    };
    for model in models() {
        let (x, y) = data(61, model.config.input_dim, model.config.classes, 5);
        let (loss, grads) = loss_and_grad_analytic(&model, &x, &y).unwrap();
        let flat: Vec<f64> = grads.iter().flat_map(|g| g.as_slice().to_vec()).collect();
        let gm = GpuModel::<f64>::upload(&dev, &model).unwrap();
        let xd = dev.upload_slice(x.as_slice()).unwrap();
        let yd = dev
            .upload_slice(&y.iter().map(|&v| v as u32).collect::<Vec<_>>())
            .unwrap();
        let (gl, gg) = gpu_loss_and_grad(&dev, &gm, &xd, &yd, x.rows()).unwrap();
        assert!((gl - loss).abs() <= 1e-12 * loss.abs().max(1.0));
        assert!(rel(&gg, &flat) <= 1e-11, "{}", rel(&gg, &flat));
    }
}
