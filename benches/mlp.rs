//! Forward + backward of a 784-256-256-10 ReLU MLP (biases, cross-entropy) at
//! batch 128, f32 and f64: the workload of `benches/peers/jax_mlp_grad.py`.
//! Run both in the same session and record the ratio in docs/benchmarks.md.
//! `analytic` is the path training takes; `tape` is the general autodiff.

// The same allocator as the `landscape` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion};
use landscape::nn::backprop::loss_and_grad_analytic;
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig, Mode};
use landscape::rng::Rng;
use landscape::train::loss_and_grad;
use landscape::{Matrix, Scalar};
use std::hint::black_box;

fn setup<T: Scalar>() -> (Mlp<T>, Matrix<T>, Vec<usize>) {
    let cfg = MlpConfig {
        input_dim: 784,
        hidden: vec![256, 256],
        classes: 10,
        activation: Activation::Relu,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 0)
        .unwrap()
        .cast::<T>();
    let mut rng = Rng::new(1);
    let x = Matrix::from_fn(128, 784, |_, _| T::from_f64(rng.uniform()));
    let y = (0..128).map(|i| i % 10).collect();
    (model, x, y)
}

fn bench_forward_backward(c: &mut Criterion) {
    let mut group = c.benchmark_group("mlp_784_256_256_10_b128_fwd_bwd");
    let (m32, x32, y) = setup::<f32>();
    group.bench_function("f32/analytic", |b| {
        b.iter(|| black_box(loss_and_grad_analytic(&m32, &x32, &y).unwrap()))
    });
    group.bench_function("f32/tape", |b| {
        b.iter(|| black_box(loss_and_grad(&m32, &x32, &y, Mode::Train)))
    });
    let (m64, x64, y) = setup::<f64>();
    group.bench_function("f64/analytic", |b| {
        b.iter(|| black_box(loss_and_grad_analytic(&m64, &x64, &y).unwrap()))
    });
    group.bench_function("f64/tape", |b| {
        b.iter(|| black_box(loss_and_grad(&m64, &x64, &y, Mode::Train)))
    });
    group.finish();
}

// No HTML plots: the crate's plotters build (bundled font only) cannot serve criterion's.
criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_forward_backward
}
criterion_main!(benches);
