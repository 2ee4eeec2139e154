//! The CPU backend: owned matrices, GEMM through matrixmultiply (row blocks over rayon).

use super::Backend;
use crate::error::{Error, Result};
use crate::nn::Activation;
use crate::tensor::{gemm, Matrix, Scalar};

/// CPU implementation of [`Backend`]; buffers are ordinary [`Matrix`] values.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl<T: Scalar> Backend<T> for CpuBackend {
    type Buffer = Matrix<T>;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn upload(&self, m: &Matrix<T>) -> Result<Matrix<T>> {
        Ok(m.clone())
    }
    fn download(&self, b: &Matrix<T>) -> Result<Matrix<T>> {
        Ok(b.clone())
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<Matrix<T>> {
        Ok(Matrix::zeros(rows, cols))
    }
    fn shape(&self, b: &Matrix<T>) -> (usize, usize) {
        b.shape()
    }
    fn gemm(
        &self,
        alpha: T,
        a: &Matrix<T>,
        ta: bool,
        b: &Matrix<T>,
        tb: bool,
        beta: T,
        c: &mut Matrix<T>,
    ) -> Result<()> {
        let av = if ta { a.t() } else { a.view() };
        let bv = if tb { b.t() } else { b.view() };
        if av.cols() != bv.rows() || c.shape() != (av.rows(), bv.cols()) {
            return Err(Error::Shape(format!(
                "gemm: {}x{} * {}x{} into {}x{}",
                av.rows(),
                av.cols(),
                bv.rows(),
                bv.cols(),
                c.rows(),
                c.cols()
            )));
        }
        gemm(alpha, av, bv, beta, c);
        Ok(())
    }
    fn add_row_vector(&self, m: &mut Matrix<T>, row: &Matrix<T>) -> Result<()> {
        if row.shape() != (1, m.cols()) {
            return Err(Error::Shape(format!(
                "add_row_vector: {}x{} row for a matrix with {} columns",
                row.rows(),
                row.cols(),
                m.cols()
            )));
        }
        for i in 0..m.rows() {
            for (v, &b) in m.row_mut(i).iter_mut().zip(row.as_slice()) {
                *v += b;
            }
        }
        Ok(())
    }
    fn activation(&self, act: Activation, slope: T, z: &Matrix<T>) -> Result<Matrix<T>> {
        Ok(z.map(|v| act.apply(v, slope)))
    }
    fn activation_derivative(&self, act: Activation, slope: T, z: &Matrix<T>) -> Result<Matrix<T>> {
        Ok(z.map(|v| act.derivative(v, slope)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mlp_logits;
    use crate::nn::{BatchNormConfig, Init, LossKind, Mlp, MlpConfig};

    #[test]
    fn backend_forward_matches_plain_forward_with_folded_batchnorm() {
        let cfg = MlpConfig {
            input_dim: 5,
            hidden: vec![7, 3],
            classes: 4,
            activation: Activation::Tanh,
            leaky_slope: 0.01,
            bias: true,
            batchnorm: Some(BatchNormConfig::default()),
            loss: LossKind::CrossEntropy,
        };
        let mut m = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 1).unwrap();
        for l in &mut m.layers {
            if let Some(bn) = &mut l.bn {
                bn.running_mean = bn.running_mean.map(|_| 0.3);
                bn.running_var = bn.running_var.map(|_| 2.0);
            }
        }
        let x = Matrix::from_fn(6, 5, |i, j| ((i * 5 + j) as f64 * 0.7).sin());
        let a = mlp_logits(&CpuBackend, &m, &x).unwrap();
        let b = m.logits(&x).unwrap();
        for (u, v) in a.as_slice().iter().zip(b.as_slice()) {
            assert!((u - v).abs() < 1e-12);
        }
    }
}

/// Whether the AVX-512 kernels run: the processor has AVX-512F (and FMA) and the
/// build has the `avx512` feature (default). Every kernel of ours with an AVX-512
/// variant asks this; without the feature the `gemm` crate has no AVX-512 kernels either.
pub fn avx512_enabled() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "avx512")))]
    {
        false
    }
}

/// The widest SIMD the kernels use in this process: `avx512`, `avx2` (with FMA) or
/// `portable`.
pub fn simd_in_use() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512_enabled() {
            return "avx512";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "portable"
}

/// The machine a CPU measurement ran on: processor model, the instruction-set
/// extensions it has (of those the kernels use), the kernels chosen, and threads.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineInfo {
    /// `model name` of `/proc/cpuinfo` (`unknown` elsewhere).
    pub processor: String,
    /// Extensions detected at run time, among sse4.2, avx, avx2, fma, avx512f.
    pub isa: Vec<&'static str>,
    /// The widest SIMD the kernels use ([`simd_in_use`]): lower than `isa` in a
    /// build without the `avx512` feature.
    pub simd_used: &'static str,
    /// The convolution kernels' family (`autodiff::conv::conv_isa`).
    pub conv_kernels: String,
    /// The GEMM kernels of the dense products (`tensor::gemm_kernels_description`;
    /// each dispatches on avx/fma/avx512 itself).
    pub gemm: String,
    pub threads: usize,
}

/// Reads the [`MachineInfo`] of this process.
pub fn machine_info() -> MachineInfo {
    let processor = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    #[allow(unused_mut)]
    let mut isa = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("sse4.2", is_x86_feature_detected!("sse4.2")),
            ("avx", is_x86_feature_detected!("avx")),
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
        ] {
            if on {
                isa.push(name);
            }
        }
    }
    MachineInfo {
        processor,
        isa,
        simd_used: simd_in_use(),
        conv_kernels: format!("{:?}", crate::autodiff::conv::conv_isa()).to_lowercase(),
        gemm: crate::tensor::gemm_kernels_description(),
        threads: rayon::current_num_threads(),
    }
}
