//! Exact-Hessian workloads of issue "Exact Hessians of MLPs" (f64, CPU), the
//! same as `benches/peers/jax_hessian.py`:
//! (a) dense full Hessian of a 64-32-32-10 ReLU MLP with biases over all 1,797 digits;
//! (b) exact per-sample GN norms of a 784-64-64-10 MLP over all 10,000 mnist10k samples;
//! (c) full-Hessian HVPs of the 784-64-64-10 MLP on a batch of 1,000 samples
//!     (cold: forward included, as jax.jvp(jax.grad) does; cached: the operator's
//!     forward pass reused, as Lanczos uses it).
//! The `gpu_f32` / `gpu_f64` groups run the same workloads on a CUDA device when one is
//! present (`landscape bench` also covers them, with the peers beside).

use criterion::{criterion_group, criterion_main, Criterion};
use landscape::data::{load, DataOptions};
use landscape::hessian::{dense_hessian, hvp, per_sample_gn_norms, HessianOperator, Part};
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig};
use landscape::rng::Rng;
use landscape::Matrix;
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn mlp(widths: &[usize]) -> Mlp<f64> {
    let cfg = MlpConfig {
        input_dim: widths[0],
        hidden: widths[1..widths.len() - 1].to_vec(),
        classes: *widths.last().unwrap(),
        activation: Activation::Relu,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    Mlp::init(cfg, Init::Torch, 1.0, 0).unwrap()
}

fn all_samples(name: &str) -> (Matrix<f64>, Vec<usize>) {
    let b = load(name, &DataOptions::default()).unwrap();
    let mut x = b.train.x.clone();
    let mut y = b.train.y.clone();
    if let Some(t) = &b.test {
        let mut data = x.into_vec();
        data.extend_from_slice(t.x.as_slice());
        y.extend_from_slice(&t.y);
        x = Matrix::from_vec(y.len(), b.features, data);
    }
    (x, y)
}

fn bench_hessian(c: &mut Criterion) {
    let (dx, dy) = all_samples("digits");
    let small = mlp(&[64, 32, 32, 10]);
    let mut g = c.benchmark_group("hessian");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("dense_full_64-32-32-10_digits1797", |b| {
        b.iter(|| black_box(dense_hessian(&small, &dx, &dy, Part::Full, 1 << 33).unwrap()))
    });
    let (mx, my) = all_samples("mnist10k");
    let big = mlp(&[784, 64, 64, 10]);
    g.bench_function("gn_norms_784-64-64-10_mnist10000", |b| {
        b.iter(|| black_box(per_sample_gn_norms(&big, &mx, &my).unwrap()))
    });
    let xb = mx.rows_view(0, 1000).to_owned();
    let yb = my[..1000].to_vec();
    let mut rng = Rng::new(1);
    let v: Vec<f64> = (0..big.num_params()).map(|_| rng.normal()).collect();
    g.bench_function("hvp_full_784-64-64-10_b1000_cold", |b| {
        b.iter(|| black_box(hvp(&big, &xb, &yb, Part::Full, &v).unwrap()))
    });
    let op = HessianOperator::new(&big, &xb, &yb, Part::Full).unwrap();
    g.bench_function("hvp_full_784-64-64-10_b1000_cached", |b| {
        b.iter(|| black_box(op.apply(&v).unwrap()))
    });
    g.finish();
}

// No HTML plots: the crate's plotters build (bundled font only) cannot serve criterion's.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_hessian, bench_dgemm, bench_gpu_kernels
}
criterion_main!(benches);

/// The machine's dgemm rate on a large square product (the reference for the
/// "time the flop count needs" ratio of the dense assembly).
fn bench_dgemm(c: &mut Criterion) {
    let n = 1536;
    let a = Matrix::from_fn(n, n, |i, j| ((i * 7 + j) % 13) as f64 - 6.0);
    let b = Matrix::from_fn(n, n, |i, j| ((i + 3 * j) % 11) as f64 - 5.0);
    let mut out = Matrix::zeros(n, n);
    let mut g = c.benchmark_group("machine");
    g.sample_size(10);
    g.bench_function("dgemm_1536", |bch| {
        bch.iter(|| landscape::tensor::gemm(1.0, a.view(), b.view(), 0.0, &mut out))
    });
    g.finish();
}

/// The same workloads on the GPU (f32 and f64), when one is present; skipped with a
/// printed reason otherwise. Data is device-resident for the GN norms (as the peers').
fn bench_gpu_kernels(c: &mut Criterion) {
    use landscape::backend::cuda::{CudaDevice, CudaScalar};
    use landscape::hessian::gpu::{
        gpu_dense_hessian_device, gpu_gn_norms_resident, GpuHessianOperator, GpuModel,
    };
    let dev = match CudaDevice::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("GPU benches skipped: {e}");
            return;
        }
    };
    fn per_type<T: CudaScalar>(c: &mut Criterion, dev: &CudaDevice) {
        let (dx, dy) = all_samples("digits");
        let (mx, my) = all_samples("mnist10k");
        let small = mlp(&[64, 32, 32, 10]);
        let big = mlp(&[784, 64, 64, 10]);
        let mut g = c.benchmark_group(format!("gpu_{}", T::DTYPE));
        g.sample_size(10);
        g.bench_function("dense_full_64-32-32-10_digits1797", |b| {
            b.iter(|| {
                let r = gpu_dense_hessian_device::<T>(dev, &small, &dx, &dy, Part::Full).unwrap();
                dev.synchronize().unwrap();
                black_box(r.1)
            })
        });
        let gm = GpuModel::<T>::upload(dev, &big).unwrap();
        let xs: Vec<T> = mx.as_slice().iter().map(|&v| T::from_f64(v)).collect();
        let xd = dev.upload_slice(&xs).unwrap();
        let ys: Vec<u32> = my.iter().map(|&v| v as u32).collect();
        let yd = dev.upload_slice(&ys).unwrap();
        g.bench_function("gn_norms_784-64-64-10_mnist10000_resident", |b| {
            b.iter(|| {
                let r = gpu_gn_norms_resident(dev, &gm, &xd, &yd, my.len()).unwrap();
                dev.synchronize().unwrap();
                black_box(r.norms.len())
            })
        });
        let xb = mx.rows_view(0, 1000).to_owned();
        let op = GpuHessianOperator::<T>::new(dev, &big, &xb, &my[..1000], Part::Full).unwrap();
        let mut rng = Rng::new(1);
        let v: Vec<f64> = (0..big.num_params()).map(|_| rng.normal()).collect();
        g.bench_function("hvp_full_784-64-64-10_b1000_cached", |b| {
            b.iter(|| black_box(op.apply(&v).unwrap()))
        });
        g.finish();
    }
    per_type::<f64>(c, &dev);
    per_type::<f32>(c, &dev);
}
