//! The GEMM layer's two kernels (`tensor::GemmKernel`) per dtype on the shapes the
//! engine runs: square 256 and 1536; the dense Hessian assembly's tall products
//! (`1024 x 1024 x 4225`: a block of samples' Kronecker factors); the GN-norm block
//! (`1280 x 64 x 64`); the HVP's layer products (`500 x 784 x 64`, `64 x 500 x 64`,
//! transposed left operand as the engine passes it); and the ConvNet's convolutions
//! written as im2col GEMMs (`batch*H*W x 9*C_in x C_out` at batch 128, width 16, the
//! engine's own implicit-GEMM kernels do the same product without the im2col copy).
//! `cargo bench --bench gemm`; the choice and its numbers: docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use landscape::tensor::{gemm_with, GemmKernel, Matrix, Par, Scalar};
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (name, m, k, n, left operand transposed).
const SHAPES: &[(&str, usize, usize, usize, bool)] = &[
    ("square_256", 256, 256, 256, false),
    ("square_1536", 1536, 1536, 1536, false),
    ("assembly_1024x1024x4225", 1024, 1024, 4225, true),
    ("gn_block_1280x64x64", 1280, 64, 64, false),
    ("hvp_500x784x64", 500, 784, 64, false),
    ("hvp_grad_64x500x64", 64, 500, 64, true),
    ("conv1_100352x144x32", 100352, 144, 32, false),
    ("conv3_6272x576x128", 6272, 576, 128, false),
];

fn per_dtype<T: Scalar>(c: &mut Criterion) {
    let mut g = c.benchmark_group(format!("gemm_{}", T::DTYPE));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for &(name, m, k, n, transposed) in SHAPES {
        let fill = |r: usize, c: usize, s: usize| {
            Matrix::<T>::from_fn(r, c, |i, j| {
                T::from_f64(((i * 7 + j * 13 + s) % 17) as f64 / 8.0 - 1.0)
            })
        };
        // A transposed left operand is stored k x m and viewed as m x k.
        let a_store = if transposed {
            fill(k, m, 1)
        } else {
            fill(m, k, 1)
        };
        let b = fill(k, n, 2);
        let mut out = Matrix::<T>::zeros(m, n);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        for kernel in [GemmKernel::Matrixmultiply, GemmKernel::Gemm] {
            g.bench_function(BenchmarkId::new(kernel.name(), name), |bch| {
                bch.iter(|| {
                    let a = if transposed {
                        a_store.t()
                    } else {
                        a_store.view()
                    };
                    gemm_with(kernel, Par::Rayon, T::ONE, a, b.view(), T::ZERO, &mut out)
                })
            });
        }
    }
    g.finish();
}

fn bench_gemm(c: &mut Criterion) {
    per_dtype::<f64>(c);
    per_dtype::<f32>(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = bench_gemm
}
criterion_main!(benches);
