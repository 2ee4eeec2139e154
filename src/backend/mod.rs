//! Compute backends: one small trait, implemented on the CPU here and by CUDA
//! (its own module, a later issue). Device buffers are opaque to callers; data
//! crosses the boundary only through `upload`/`download`.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::nn::{Activation, Mlp};
use crate::tensor::{Matrix, Scalar};

pub use cpu::CpuBackend;

/// The operations an MLP forward/backward and the Hessian kernels build on.
/// Matrices are row-major; `ta`/`tb` transpose an operand.
pub trait Backend<T: Scalar> {
    /// A device-resident `rows x cols` matrix.
    type Buffer;

    fn name(&self) -> &'static str;
    fn upload(&self, m: &Matrix<T>) -> Result<Self::Buffer>;
    fn download(&self, b: &Self::Buffer) -> Result<Matrix<T>>;
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Buffer>;
    fn shape(&self, b: &Self::Buffer) -> (usize, usize);
    /// `C <- alpha * op(A) op(B) + beta * C`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        alpha: T,
        a: &Self::Buffer,
        ta: bool,
        b: &Self::Buffer,
        tb: bool,
        beta: T,
        c: &mut Self::Buffer,
    ) -> Result<()>;
    /// `m[i, :] += row` for every row `i` (`row` is `1 x cols`).
    fn add_row_vector(&self, m: &mut Self::Buffer, row: &Self::Buffer) -> Result<()>;
    /// `out = act(z)` elementwise.
    fn activation(&self, act: Activation, slope: T, z: &Self::Buffer) -> Result<Self::Buffer>;
    /// `out = act'(z)` elementwise (the diagonal of `D(p)`; ReLU: `[z > 0]`).
    fn activation_derivative(
        &self,
        act: Activation,
        slope: T,
        z: &Self::Buffer,
    ) -> Result<Self::Buffer>;
}

/// Logits of `x` (rows are samples) through `backend`, evaluation mode.
/// BatchNorm layers are applied in their folded evaluation form.
pub fn mlp_logits<T: Scalar, B: Backend<T>>(
    backend: &B,
    model: &Mlp<T>,
    x: &Matrix<T>,
) -> Result<Matrix<T>> {
    model.check_input(x)?;
    let nl = model.num_layers();
    let slope = T::from_f64(model.config.leaky_slope);
    let eps = model.config.batchnorm.map_or(1e-5, |c| c.eps);
    let mut h = backend.upload(x)?;
    for (p, layer) in model.layers.iter().enumerate() {
        // BatchNorm in evaluation mode is affine per unit: fold it into W and b.
        let (w, b) = fold_batchnorm(layer, eps);
        let wb = backend.upload(&w)?;
        let mut z = backend.zeros(backend.shape(&h).0, w.rows())?;
        backend.gemm(T::ONE, &h, false, &wb, true, T::ZERO, &mut z)?;
        if let Some(b) = b {
            backend.add_row_vector(&mut z, &backend.upload(&b)?)?;
        }
        h = if p + 1 < nl {
            backend.activation(model.config.activation, slope, &z)?
        } else {
            z
        };
    }
    backend.download(&h)
}

/// `(W', b')` with `W' x + b' = BN_eval(W x + b)`.
fn fold_batchnorm<T: Scalar>(
    layer: &crate::nn::Layer<T>,
    eps: f64,
) -> (Matrix<T>, Option<Matrix<T>>) {
    let Some(bn) = &layer.bn else {
        return (layer.weight.clone(), layer.bias.clone());
    };
    let out = layer.weight.rows();
    let scale: Vec<T> = (0..out)
        .map(|j| {
            let g = bn.gamma.as_ref().map_or(T::ONE, |g| g.as_slice()[j]);
            g / (bn.running_var.as_slice()[j] + T::from_f64(eps)).sqrt()
        })
        .collect();
    let w = Matrix::from_fn(out, layer.weight.cols(), |i, k| {
        layer.weight.get(i, k) * scale[i]
    });
    let b = Matrix::from_fn(1, out, |_, j| {
        let b0 = layer.bias.as_ref().map_or(T::ZERO, |b| b.as_slice()[j]);
        let beta = bn.beta.as_ref().map_or(T::ZERO, |b| b.as_slice()[j]);
        (b0 - bn.running_mean.as_slice()[j]) * scale[j] + beta
    });
    (w, Some(b))
}
