//! Multi-layer perceptrons: architecture, parameters and the plain forward pass.
//!
//! Layer `p` (1-based in the math, 0-based in code and file names) computes
//! `z(p) = W(p) x(p) + b(p)`; on hidden layers an optional BatchNorm1d follows,
//! `u(p) = gamma * (z(p) - mu) / sqrt(var + eps) + beta`, then `x(p+1) = act(u(p))`.
//! The last layer gives the logits (no BatchNorm, no activation).
//!
//! Parameter vector order: for each layer `[vec(W), b, bn.gamma, bn.beta]` where
//! present, `vec` the row-major flatten of the `(out x in)` weight. Running
//! BatchNorm statistics are buffers, not parameters.

use super::{Activation, Init, LossKind};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{gemm_par, Matrix, Par, Scalar};
use serde::{Deserialize, Serialize};

/// BatchNorm1d settings (PyTorch semantics: biased batch variance in the
/// normalisation, unbiased variance in the running average).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchNormConfig {
    /// Learnable `gamma`, `beta` (PyTorch `affine=True`).
    pub affine: bool,
    pub eps: f64,
    /// Running-average factor: `running = (1 - momentum) running + momentum batch`.
    pub momentum: f64,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        Self {
            affine: true,
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// Architecture of an MLP; stored as JSON in model-file metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    pub input_dim: usize,
    /// Widths of the hidden layers (may be empty: multinomial logistic regression).
    pub hidden: Vec<usize>,
    /// Number of outputs `K`.
    pub classes: usize,
    pub activation: Activation,
    /// Negative-side slope of LeakyReLU (ignored by the other activations).
    #[serde(default = "default_leaky_slope")]
    pub leaky_slope: f64,
    pub bias: bool,
    /// BatchNorm1d after every hidden linear layer, before the activation.
    #[serde(default)]
    pub batchnorm: Option<BatchNormConfig>,
    pub loss: LossKind,
}

fn default_leaky_slope() -> f64 {
    0.01
}

impl MlpConfig {
    /// Layer widths `[input, hidden..., classes]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = Vec::with_capacity(self.hidden.len() + 2);
        w.push(self.input_dim);
        w.extend_from_slice(&self.hidden);
        w.push(self.classes);
        w
    }
    /// Number of weight matrices `L`.
    pub fn num_layers(&self) -> usize {
        self.hidden.len() + 1
    }
    pub fn validate(&self) -> Result<()> {
        if self.input_dim == 0 || self.classes == 0 || self.hidden.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "every layer width must be positive, got {:?}",
                self.widths()
            )));
        }
        if self.loss == LossKind::CrossEntropy && self.classes < 2 {
            return Err(Error::InvalidArgument(
                "cross-entropy needs at least 2 classes".into(),
            ));
        }
        if !self.leaky_slope.is_finite() {
            return Err(Error::InvalidArgument("leaky slope must be finite".into()));
        }
        if let Some(bn) = &self.batchnorm {
            if bn.eps.is_nan() || bn.eps <= 0.0 || !(0.0..=1.0).contains(&bn.momentum) {
                return Err(Error::InvalidArgument(
                    "batchnorm needs eps > 0 and momentum in [0, 1]".into(),
                ));
            }
        }
        Ok(())
    }
    /// Number of trainable parameters `P`.
    pub fn num_params(&self) -> usize {
        let w = self.widths();
        let mut p = 0;
        for l in 0..self.num_layers() {
            p += w[l + 1] * w[l];
            if self.bias {
                p += w[l + 1];
            }
            if l + 1 < self.num_layers() && self.batchnorm.is_some_and(|b| b.affine) {
                p += 2 * w[l + 1];
            }
        }
        p
    }
}

/// BatchNorm1d state of one hidden layer (all `1 x width` row vectors).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm<T> {
    pub gamma: Option<Matrix<T>>,
    pub beta: Option<Matrix<T>>,
    pub running_mean: Matrix<T>,
    pub running_var: Matrix<T>,
}

/// One linear layer: `weight` is `out x in`, `bias` a `1 x out` row vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer<T> {
    pub weight: Matrix<T>,
    pub bias: Option<Matrix<T>>,
    pub bn: Option<BatchNorm<T>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mlp<T> {
    pub config: MlpConfig,
    pub layers: Vec<Layer<T>>,
}

/// Activations of a plain forward pass: `inputs[p]` is `x(p+1)` (so `inputs[0]`
/// is the data) and `pre[p]` is the input to layer `p`'s activation (`z(p)`, or
/// the BatchNorm output when present); `pre[L-1]` holds the logits.
#[derive(Clone, Debug)]
pub struct ForwardCache<T> {
    pub inputs: Vec<Matrix<T>>,
    pub pre: Vec<Matrix<T>>,
}

impl<T> ForwardCache<T> {
    pub fn logits(&self) -> &Matrix<T> {
        self.pre.last().expect("an MLP has at least one layer")
    }
}

impl<T: Scalar> Mlp<T> {
    /// Random initialisation; every weight (and bias, where the scheme draws one)
    /// is multiplied by `scale`.
    pub fn init(config: MlpConfig, init: Init, scale: f64, seed: u64) -> Result<Self> {
        config.validate()?;
        if !scale.is_finite() {
            return Err(Error::InvalidArgument("init scale must be finite".into()));
        }
        let mut rng = Rng::derived(seed, 0x1a17);
        let widths = config.widths();
        let nl = config.num_layers();
        let mut layers = Vec::with_capacity(nl);
        for l in 0..nl {
            let (fan_in, fan_out) = (widths[l], widths[l + 1]);
            let draw = |rng: &mut Rng| -> f64 {
                match init {
                    Init::Kaiming => {
                        let a = if config.activation == Activation::LeakyRelu {
                            config.leaky_slope
                        } else {
                            0.0
                        };
                        let std = (2.0 / (1.0 + a * a) / fan_in as f64).sqrt();
                        std * rng.normal()
                    }
                    Init::Xavier => {
                        let s = (6.0 / (fan_in + fan_out) as f64).sqrt();
                        rng.uniform_range(-s, s)
                    }
                    Init::Torch => {
                        let s = 1.0 / (fan_in as f64).sqrt();
                        rng.uniform_range(-s, s)
                    }
                }
            };
            let weight =
                Matrix::from_fn(fan_out, fan_in, |_, _| T::from_f64(scale * draw(&mut rng)));
            let bias = config.bias.then(|| {
                Matrix::from_fn(1, fan_out, |_, _| match init {
                    Init::Torch => {
                        let s = 1.0 / (fan_in as f64).sqrt();
                        T::from_f64(scale * rng.uniform_range(-s, s))
                    }
                    _ => T::ZERO,
                })
            });
            let bn = if l + 1 < nl {
                config.batchnorm.map(|b| BatchNorm {
                    gamma: b.affine.then(|| Matrix::filled(1, fan_out, T::ONE)),
                    beta: b.affine.then(|| Matrix::zeros(1, fan_out)),
                    running_mean: Matrix::zeros(1, fan_out),
                    running_var: Matrix::filled(1, fan_out, T::ONE),
                })
            } else {
                None
            };
            layers.push(Layer { weight, bias, bn });
        }
        Ok(Self { config, layers })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn num_params(&self) -> usize {
        self.config.num_params()
    }

    /// Trainable tensors in parameter-vector order, with their file names
    /// (`layers.{p}.weight`, `layers.{p}.bias`, `layers.{p}.bn.weight`, `layers.{p}.bn.bias`).
    pub fn named_params(&self) -> Vec<(String, &Matrix<T>)> {
        let mut out = Vec::new();
        for (p, layer) in self.layers.iter().enumerate() {
            out.push((format!("layers.{p}.weight"), &layer.weight));
            if let Some(b) = &layer.bias {
                out.push((format!("layers.{p}.bias"), b));
            }
            if let Some(bn) = &layer.bn {
                if let Some(g) = &bn.gamma {
                    out.push((format!("layers.{p}.bn.weight"), g));
                }
                if let Some(b) = &bn.beta {
                    out.push((format!("layers.{p}.bn.bias"), b));
                }
            }
        }
        out
    }

    /// Mutable trainable tensors in parameter-vector order.
    pub fn params_mut(&mut self) -> Vec<&mut Matrix<T>> {
        let mut out = Vec::new();
        for layer in &mut self.layers {
            out.push(&mut layer.weight);
            if let Some(b) = &mut layer.bias {
                out.push(b);
            }
            if let Some(bn) = &mut layer.bn {
                if let Some(g) = &mut bn.gamma {
                    out.push(g);
                }
                if let Some(b) = &mut bn.beta {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Non-trainable buffers (BatchNorm running statistics) with their file names.
    pub fn named_buffers(&self) -> Vec<(String, &Matrix<T>)> {
        let mut out = Vec::new();
        for (p, layer) in self.layers.iter().enumerate() {
            if let Some(bn) = &layer.bn {
                out.push((format!("layers.{p}.bn.running_mean"), &bn.running_mean));
                out.push((format!("layers.{p}.bn.running_var"), &bn.running_var));
            }
        }
        out
    }

    /// The flat parameter vector `[vec(W1), b1, ..., vec(WL), bL]`.
    pub fn param_vector(&self) -> Vec<T> {
        let mut v = Vec::with_capacity(self.num_params());
        for (_, m) in self.named_params() {
            v.extend_from_slice(m.as_slice());
        }
        v
    }

    /// Sets all trainable parameters from a flat vector in parameter-vector order.
    pub fn set_param_vector(&mut self, v: &[T]) -> Result<()> {
        if v.len() != self.num_params() {
            return Err(Error::Shape(format!(
                "parameter vector has {} entries, the model has {}",
                v.len(),
                self.num_params()
            )));
        }
        let mut off = 0;
        for m in self.params_mut() {
            let n = m.len();
            m.as_mut_slice().copy_from_slice(&v[off..off + n]);
            off += n;
        }
        Ok(())
    }

    /// Converts the element type (through f64).
    pub fn cast<U: Scalar>(&self) -> Mlp<U> {
        Mlp {
            config: self.config.clone(),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    weight: l.weight.cast(),
                    bias: l.bias.as_ref().map(|b| b.cast()),
                    bn: l.bn.as_ref().map(|bn| BatchNorm {
                        gamma: bn.gamma.as_ref().map(|g| g.cast()),
                        beta: bn.beta.as_ref().map(|b| b.cast()),
                        running_mean: bn.running_mean.cast(),
                        running_var: bn.running_var.cast(),
                    }),
                })
                .collect(),
        }
    }

    /// Checks that `x` has the model's input width.
    pub fn check_input(&self, x: &Matrix<T>) -> Result<()> {
        if x.cols() != self.config.input_dim {
            return Err(Error::Shape(format!(
                "the model expects inputs of size {}, the data has {} features",
                self.config.input_dim,
                x.cols()
            )));
        }
        Ok(())
    }

    /// Plain (non-recording) forward pass in evaluation mode: BatchNorm uses its
    /// running statistics. Rows of `x` are samples.
    pub fn forward(&self, x: &Matrix<T>) -> Result<ForwardCache<T>> {
        self.forward_with(x, Par::Rayon)
    }

    /// [`Mlp::forward`] with explicit GEMM parallelism.
    pub fn forward_with(&self, x: &Matrix<T>, par: Par) -> Result<ForwardCache<T>> {
        self.check_input(x)?;
        self.forward_owned(x.clone(), par)
    }

    /// [`Mlp::forward_with`] taking ownership of the input (kept as `inputs[0]`, no copy).
    pub fn forward_owned(&self, x: Matrix<T>, par: Par) -> Result<ForwardCache<T>> {
        self.check_input(&x)?;
        let nl = self.num_layers();
        let slope = T::from_f64(self.config.leaky_slope);
        let mut inputs = vec![x];
        let mut pre = Vec::with_capacity(nl);
        for (p, layer) in self.layers.iter().enumerate() {
            let xin = &inputs[p];
            let mut z = Matrix::zeros(xin.rows(), layer.weight.rows());
            if let Some(b) = &layer.bias {
                for i in 0..z.rows() {
                    z.row_mut(i).copy_from_slice(b.as_slice());
                }
                gemm_par(par, T::ONE, xin.view(), layer.weight.t(), T::ONE, &mut z);
            } else {
                gemm_par(par, T::ONE, xin.view(), layer.weight.t(), T::ZERO, &mut z);
            }
            if let Some(bn) = &layer.bn {
                let eps = self.config.batchnorm.map_or(1e-5, |c| c.eps);
                apply_batchnorm_eval(&mut z, bn, eps);
            }
            if p + 1 < nl {
                let act = self.config.activation;
                inputs.push(z.map(|v| act.apply(v, slope)));
            }
            pre.push(z);
        }
        Ok(ForwardCache { inputs, pre })
    }

    /// Logits of `x` (evaluation mode).
    pub fn logits(&self, x: &Matrix<T>) -> Result<Matrix<T>> {
        let mut cache = self.forward(x)?;
        Ok(cache.pre.pop().expect("at least one layer"))
    }
}

fn apply_batchnorm_eval<T: Scalar>(z: &mut Matrix<T>, bn: &BatchNorm<T>, eps: f64) {
    let d = z.cols();
    let scale: Vec<T> = (0..d)
        .map(|j| {
            let g = bn.gamma.as_ref().map_or(T::ONE, |g| g.as_slice()[j]);
            g / (bn.running_var.as_slice()[j] + T::from_f64(eps)).sqrt()
        })
        .collect();
    for i in 0..z.rows() {
        for (j, v) in z.row_mut(i).iter_mut().enumerate() {
            let shift = bn.beta.as_ref().map_or(T::ZERO, |b| b.as_slice()[j]);
            *v = (*v - bn.running_mean.as_slice()[j]) * scale[j] + shift;
        }
    }
}
