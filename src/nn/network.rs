//! The one model type: an [`Architecture`] plus its parameters and BatchNorm
//! buffers, run on the autodiff tape (so gradients and double-backward HVPs
//! are exact for every layer).
//!
//! Data arrive as PyTorch-flattened rows (`n x C H W`, NCHW); spatial layers
//! work on the `(n H W) x C` layout of [`super::spatial`], so a convolution is
//! one implicit GEMM over the whole batch ([`crate::autodiff::conv`]), and
//! BatchNorm2d is BatchNorm1d over those rows.

use super::arch::{Architecture, LayerSpec, Layout, ParamRole};
use super::spatial;
use super::{Activation, BatchNorm, Init, Layer, Mlp, Mode};
use crate::autodiff::ops::{batchnorm_eval, batchnorm_train, loss};
use crate::autodiff::{ConvGeom, ConvShape, IndexMap, Tape, Var};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Matrix, Scalar};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Running statistics of one BatchNorm layer (`1 x C` rows).
#[derive(Clone, Debug, PartialEq)]
pub struct BnState<T> {
    pub running_mean: Matrix<T>,
    pub running_var: Matrix<T>,
    pub num_batches_tracked: u64,
}

/// Batch statistics of one BatchNorm layer in training mode.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats<T> {
    pub mean: Matrix<T>,
    /// Biased variance (the one used to normalise).
    pub var: Matrix<T>,
    /// Number of values per channel (`n`, or `n H W` for images).
    pub count: usize,
}

/// A network: architecture, trainable tensors (parameter-vector order, each in
/// its matrix form: a conv weight is `out x (in k k)`, vectors `1 x n`) and
/// BatchNorm buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Network<T> {
    pub arch: Architecture,
    pub params: Vec<Matrix<T>>,
    pub bn: Vec<BnState<T>>,
}

/// Output of a recorded forward pass.
pub struct NetForward<'t, T: Scalar> {
    pub logits: Var<'t, T>,
    /// Per BatchNorm layer, its batch statistics (training mode only).
    pub batch_stats: Vec<Option<BatchStats<T>>>,
}

impl<T: Scalar> Network<T> {
    /// A network from its parts, with shapes checked against the architecture.
    pub fn new(arch: Architecture, params: Vec<Matrix<T>>, bn: Vec<BnState<T>>) -> Result<Self> {
        let lay = arch.layout()?;
        if params.len() != lay.param_shapes.len() {
            return Err(Error::Shape(format!(
                "{} parameter tensors for an architecture with {}",
                params.len(),
                lay.param_shapes.len()
            )));
        }
        for (i, (p, &s)) in params.iter().zip(&lay.param_shapes).enumerate() {
            if p.shape() != s {
                return Err(Error::Shape(format!(
                    "parameter tensor {i} is {:?}, expected {s:?}",
                    p.shape()
                )));
            }
        }
        if bn.len() != lay.bn_channels.len()
            || bn
                .iter()
                .zip(&lay.bn_channels)
                .any(|(b, &c)| b.running_mean.shape() != (1, c) || b.running_var.shape() != (1, c))
        {
            return Err(Error::Shape(
                "BatchNorm buffers do not match the architecture".into(),
            ));
        }
        Ok(Self { arch, params, bn })
    }

    /// Random initialisation. `Init::Torch` is PyTorch's default for `Conv2d`
    /// and `Linear` (weights and biases `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`);
    /// `Init::Kaiming` draws weights `N(0, 2/fan_in)` with zero biases. BatchNorm
    /// starts at `gamma = 1`, `beta = 0`, running mean 0 and variance 1. An MLP
    /// architecture is initialised exactly as [`Mlp::init`] (same draws).
    pub fn init(arch: Architecture, init: Init, scale: f64, seed: u64) -> Result<Self> {
        if let Some(cfg) = &arch.mlp {
            let m = Mlp::<T>::init(cfg.clone(), init, scale, seed)?;
            let mut net = Network::from_mlp(&m);
            net.arch = arch;
            return Ok(net);
        }
        if !scale.is_finite() {
            return Err(Error::InvalidArgument("init scale must be finite".into()));
        }
        let lay = arch.layout()?;
        let mut rng = Rng::derived(seed, 0x2e7);
        let mut params = Vec::with_capacity(lay.param_shapes.len());
        for ((&(r, c), &fan), role) in lay
            .param_shapes
            .iter()
            .zip(&lay.param_fan_in)
            .zip(&lay.param_roles)
        {
            let bound = 1.0 / (fan as f64).sqrt();
            let m =
                match role {
                    ParamRole::LinearWeight | ParamRole::ConvWeight => match init {
                        Init::Torch => Matrix::from_fn(r, c, |_, _| {
                            T::from_f64(scale * rng.uniform_range(-bound, bound))
                        }),
                        Init::Kaiming => {
                            let std = (2.0 / fan as f64).sqrt();
                            Matrix::from_fn(r, c, |_, _| T::from_f64(scale * std * rng.normal()))
                        }
                        Init::Xavier => return Err(Error::InvalidArgument(
                            "xavier initialisation is offered for MLPs only; use torch or kaiming"
                                .into(),
                        )),
                    },
                    ParamRole::Bias => match init {
                        Init::Torch => Matrix::from_fn(r, c, |_, _| {
                            T::from_f64(scale * rng.uniform_range(-bound, bound))
                        }),
                        _ => Matrix::zeros(r, c),
                    },
                    ParamRole::BnWeight => Matrix::filled(r, c, T::ONE),
                    ParamRole::BnBias => Matrix::zeros(r, c),
                };
            params.push(m);
        }
        let bn = lay
            .bn_channels
            .iter()
            .map(|&c| BnState {
                running_mean: Matrix::zeros(1, c),
                running_var: Matrix::filled(1, c, T::ONE),
                num_batches_tracked: 0,
            })
            .collect();
        Network::new(arch, params, bn)
    }

    /// The network of an [`Mlp`] (same parameter order and tensor names).
    pub fn from_mlp(m: &Mlp<T>) -> Self {
        let arch = super::arch::from_mlp_config(&m.config, [m.config.input_dim, 1, 1]);
        let params = m
            .named_params()
            .into_iter()
            .map(|(_, t)| t.clone())
            .collect();
        let bn = m
            .layers
            .iter()
            .filter_map(|l| l.bn.as_ref())
            .map(|b| BnState {
                running_mean: b.running_mean.clone(),
                running_var: b.running_var.clone(),
                num_batches_tracked: 0,
            })
            .collect();
        Self { arch, params, bn }
    }

    /// The [`Mlp`] of an MLP architecture (BatchNorm included), or `None`.
    pub fn to_mlp(&self) -> Option<Mlp<T>> {
        let cfg = self.arch.mlp.clone()?;
        let nl = cfg.num_layers();
        let mut it = self.params.iter().cloned();
        let mut bn_it = self.bn.iter();
        let mut layers = Vec::with_capacity(nl);
        for l in 0..nl {
            let weight = it.next()?;
            let bias = if cfg.bias { Some(it.next()?) } else { None };
            let bn = if l + 1 < nl {
                match cfg.batchnorm {
                    Some(b) => {
                        let (gamma, beta) = if b.affine {
                            (Some(it.next()?), Some(it.next()?))
                        } else {
                            (None, None)
                        };
                        let st = bn_it.next()?;
                        Some(BatchNorm {
                            gamma,
                            beta,
                            running_mean: st.running_mean.clone(),
                            running_var: st.running_var.clone(),
                        })
                    }
                    None => None,
                }
            } else {
                None
            };
            layers.push(Layer { weight, bias, bn });
        }
        Some(Mlp {
            config: cfg,
            layers,
        })
    }

    /// The analytic fast path: the [`Mlp`] when this is an MLP without
    /// BatchNorm (its exact Hessian has the closed form of `crate::hessian`).
    /// Every command chooses between the analytic and the tape path here.
    pub fn analytic_mlp(&self) -> Option<Mlp<T>> {
        if self.arch.has_batchnorm() {
            return None;
        }
        self.to_mlp()
    }

    pub fn layout(&self) -> Layout {
        self.arch.layout().expect("validated at construction")
    }

    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.len()).sum()
    }

    /// Trainable tensors with their state-dict names.
    pub fn named_params(&self) -> Vec<(String, &Matrix<T>)> {
        let lay = self.layout();
        let mut out = Vec::with_capacity(self.params.len());
        for t in &lay.tensors {
            if let super::arch::TensorKind::Param(i) = t.kind {
                out.push((t.name.clone(), &self.params[i]));
            }
        }
        out
    }

    /// The flat parameter vector.
    pub fn param_vector(&self) -> Vec<T> {
        let mut v = Vec::with_capacity(self.num_params());
        for p in &self.params {
            v.extend_from_slice(p.as_slice());
        }
        v
    }

    pub fn set_param_vector(&mut self, v: &[T]) -> Result<()> {
        if v.len() != self.num_params() {
            return Err(Error::Shape(format!(
                "parameter vector of length {} for a model with {} parameters",
                v.len(),
                self.num_params()
            )));
        }
        let mut off = 0;
        for p in &mut self.params {
            let n = p.len();
            p.as_mut_slice().copy_from_slice(&v[off..off + n]);
            off += n;
        }
        Ok(())
    }

    pub fn cast<U: Scalar>(&self) -> Network<U> {
        Network {
            arch: self.arch.clone(),
            params: self.params.iter().map(|p| p.cast()).collect(),
            bn: self
                .bn
                .iter()
                .map(|b| BnState {
                    running_mean: b.running_mean.cast(),
                    running_var: b.running_var.cast(),
                    num_batches_tracked: b.num_batches_tracked,
                })
                .collect(),
        }
    }

    /// The deterministic parameter fill shared with the PyTorch reference
    /// (`fill_deterministic` in `benches/peers/models.py`), so that both sides
    /// hold identical weights without a weight file. Over the state-dict tensors
    /// in order, skipping `num_batches_tracked` (set to 0), tensor `t`'s element
    /// `i` (flat, PyTorch shape) gets `b = sin(0.5 + 0.731 i + 1.37 t)` mapped to:
    /// weights of rank >= 2 `b / sqrt(fan_in)`, BatchNorm weights `1 + 0.1 b`,
    /// biases `0.1 b`, running means `0.1 b`, running variances `1 + 0.5 b^2`.
    pub fn fill_deterministic(&mut self) {
        use super::arch::TensorKind;
        let lay = self.layout();
        let mut t = 0usize;
        for spec in &lay.tensors {
            let base = |i: usize| (0.5 + 0.731 * i as f64 + 1.37 * t as f64).sin();
            match spec.kind {
                TensorKind::Param(p) => {
                    let fan: usize = spec.shape[1..].iter().product();
                    let is_bias = spec.name.ends_with(".bias");
                    for (i, v) in self.params[p].as_mut_slice().iter_mut().enumerate() {
                        let b = base(i);
                        *v = T::from_f64(if spec.shape.len() >= 2 {
                            b / (fan as f64).sqrt()
                        } else if is_bias {
                            0.1 * b
                        } else {
                            1.0 + 0.1 * b
                        });
                    }
                }
                TensorKind::RunningMean(b) => {
                    for (i, v) in self.bn[b]
                        .running_mean
                        .as_mut_slice()
                        .iter_mut()
                        .enumerate()
                    {
                        *v = T::from_f64(0.1 * base(i));
                    }
                }
                TensorKind::RunningVar(b) => {
                    for (i, v) in self.bn[b].running_var.as_mut_slice().iter_mut().enumerate() {
                        let x = base(i);
                        *v = T::from_f64(1.0 + 0.5 * x * x);
                    }
                }
                TensorKind::NumBatchesTracked(b) => {
                    self.bn[b].num_batches_tracked = 0;
                    continue;
                }
            }
            t += 1;
        }
    }

    /// Checks that `x` has one row per sample of the input size.
    pub fn check_input(&self, x: &Matrix<T>) -> Result<()> {
        let d: usize = self.arch.input_shape.iter().product();
        if x.cols() != d {
            return Err(Error::Shape(format!(
                "the model expects {d} input features ({:?}), the data have {}",
                self.arch.input_shape,
                x.cols()
            )));
        }
        Ok(())
    }

    /// Records the trainable tensors on `tape`.
    pub fn params_on_tape<'t>(&self, tape: &'t Tape<T>) -> Vec<Var<'t, T>> {
        self.params.iter().map(|p| tape.param(p.clone())).collect()
    }

    /// Forward pass on the tape: `x` is `n x (C H W)` (NCHW rows), `params`
    /// the trainable tensors in order. Training mode normalises BatchNorm with
    /// the batch statistics (returned), evaluation mode with the running ones.
    pub fn forward_tape<'t>(
        &self,
        params: &[Var<'t, T>],
        x: &Matrix<T>,
        mode: Mode,
    ) -> NetForward<'t, T> {
        assert_eq!(
            params.len(),
            self.params.len(),
            "forward_tape: parameter count"
        );
        let tape = params
            .first()
            .map(|p| p.tape())
            .expect("a network has parameters");
        let n = x.rows();
        let [c, h, w] = self.arch.input_shape;
        let mut st = Walk {
            net: self,
            params,
            next_param: 0,
            next_bn: 0,
            mode,
            n,
            stats: Vec::with_capacity(self.bn.len()),
            slope: T::from_f64(self.arch.leaky_slope),
        };
        let input = if h * w > 1 {
            Act::Input(tape.constant(x.clone()), c, h, w)
        } else {
            Act::Flat(tape.constant(x.clone()), c)
        };
        let out = st.layers(&self.arch.layers, input);
        let logits = match out {
            Act::Flat(v, _) => v,
            Act::Input(v, ..) => v,
            Act::Image(..) => unreachable!("the layout check guarantees flat outputs"),
        };
        NetForward {
            logits,
            batch_stats: st.stats,
        }
    }

    /// Forward pass with the input recorded as a differentiable tape variable,
    /// returning `(forward, input, hidden)`: `input` is the recorded input (the
    /// `n x d` rows for flat inputs; for images the `(n H W) x C` rearrangement of
    /// the NCHW rows, the same numbers in another order) and `hidden` the hidden
    /// representations, in order: the output of every top-level `Activation`
    /// layer and `Residual` block except the logits themselves (for an MLP: the
    /// post-activation of each hidden layer). Gradients flow into `input` and
    /// through every `hidden` variable (see `crate::experiments::margins`).
    pub fn forward_tape_hidden<'t>(
        &self,
        params: &[Var<'t, T>],
        x: &Matrix<T>,
        mode: Mode,
    ) -> (NetForward<'t, T>, Var<'t, T>, Vec<Var<'t, T>>) {
        assert_eq!(params.len(), self.params.len(), "forward: parameter count");
        let tape = params
            .first()
            .map(|p| p.tape())
            .expect("a network has parameters");
        let n = x.rows();
        let [c, h, w] = self.arch.input_shape;
        let mut st = Walk {
            net: self,
            params,
            next_param: 0,
            next_bn: 0,
            mode,
            n,
            stats: Vec::with_capacity(self.bn.len()),
            slope: T::from_f64(self.arch.leaky_slope),
        };
        let (input, mut a) = if h * w > 1 {
            let v = tape.param(spatial::nchw_to_nhwc(x, c, h, w));
            (v, Act::Image(v, c, h, w))
        } else {
            let v = tape.param(x.clone());
            (v, Act::Flat(v, c))
        };
        let mut hidden = Vec::new();
        for l in &self.arch.layers {
            a = st.layer(l, a);
            if matches!(l, LayerSpec::Activation { .. } | LayerSpec::Residual { .. }) {
                hidden.push(match a {
                    Act::Flat(v, _) | Act::Input(v, ..) | Act::Image(v, ..) => v,
                });
            }
        }
        let logits = match a {
            Act::Flat(v, _) => v,
            Act::Input(v, ..) => v,
            Act::Image(..) => unreachable!("the layout check guarantees flat outputs"),
        };
        hidden.retain(|v| v.id() != logits.id());
        (
            NetForward {
                logits,
                batch_stats: st.stats,
            },
            input,
            hidden,
        )
    }

    /// Mean loss of the batch on the tape.
    pub fn loss_tape<'t>(
        &self,
        params: &[Var<'t, T>],
        x: &Matrix<T>,
        labels: &[usize],
        mode: Mode,
    ) -> (Var<'t, T>, NetForward<'t, T>) {
        let f = self.forward_tape(params, x, mode);
        (loss(self.arch.loss, f.logits, labels), f)
    }

    /// Logits in evaluation mode, in blocks of 256 samples.
    pub fn logits(&self, x: &Matrix<T>) -> Result<Matrix<T>> {
        self.check_input(x)?;
        let mut out = Matrix::zeros(x.rows(), self.arch.classes);
        const BLOCK: usize = 256;
        for start in (0..x.rows()).step_by(BLOCK) {
            let end = (start + BLOCK).min(x.rows());
            let xb = x.rows_view(start, end).to_owned();
            let tape = Tape::new();
            let p: Vec<Var<T>> = self
                .params
                .iter()
                .map(|m| tape.constant(m.clone()))
                .collect();
            let f = self.forward_tape(&p, &xb, Mode::Eval);
            let z = f.logits.value();
            for i in 0..end - start {
                out.row_mut(start + i).copy_from_slice(z.row(i));
            }
        }
        Ok(out)
    }

    /// PyTorch's running-average update after a training-mode batch:
    /// `running = (1 - m) running + m batch`, with the unbiased variance
    /// `var * count / (count - 1)`; `num_batches_tracked += 1`.
    pub fn update_running_stats(&mut self, stats: &[Option<BatchStats<T>>]) {
        let lay = self.arch.layout().expect("validated");
        let moms = bn_momenta(&self.arch.layers);
        debug_assert_eq!(moms.len(), lay.bn_channels.len());
        for ((b, s), &m) in self.bn.iter_mut().zip(stats).zip(&moms) {
            let Some(s) = s else { continue };
            let m = T::from_f64(m);
            let one_m = T::ONE - m;
            let unbias = if s.count > 1 {
                T::from_f64(s.count as f64 / (s.count as f64 - 1.0))
            } else {
                T::ONE
            };
            for (r, &v) in b
                .running_mean
                .as_mut_slice()
                .iter_mut()
                .zip(s.mean.as_slice())
            {
                *r = one_m * *r + m * v;
            }
            for (r, &v) in b
                .running_var
                .as_mut_slice()
                .iter_mut()
                .zip(s.var.as_slice())
            {
                *r = one_m * *r + m * (v * unbias);
            }
            b.num_batches_tracked += 1;
        }
    }
}

fn bn_momenta(layers: &[LayerSpec]) -> Vec<f64> {
    let mut out = Vec::new();
    fn go(ls: &[LayerSpec], out: &mut Vec<f64>) {
        for l in ls {
            match l {
                LayerSpec::Batchnorm { momentum, .. } => out.push(*momentum),
                LayerSpec::Residual { body, shortcut, .. } => {
                    go(body, out);
                    if let Some(s) = shortcut {
                        go(s, out);
                    }
                }
                _ => {}
            }
        }
    }
    go(layers, &mut out);
    out
}

/// Activations between layers: the raw NCHW input (not yet rearranged), flat
/// features `n x d`, or an image in the `(n H W) x C` layout.
#[derive(Clone, Copy)]
enum Act<'t, T: Scalar> {
    Input(Var<'t, T>, usize, usize, usize),
    Flat(Var<'t, T>, usize),
    Image(Var<'t, T>, usize, usize, usize),
}

impl<'t, T: Scalar> Act<'t, T> {
    /// The same shape holding another value.
    fn with_var(self, v: Var<'t, T>) -> Self {
        match self {
            Act::Input(_, c, h, w) => Act::Input(v, c, h, w),
            Act::Flat(_, d) => Act::Flat(v, d),
            Act::Image(_, c, h, w) => Act::Image(v, c, h, w),
        }
    }
}

struct Walk<'a, 't, T: Scalar> {
    net: &'a Network<T>,
    params: &'a [Var<'t, T>],
    next_param: usize,
    next_bn: usize,
    mode: Mode,
    n: usize,
    stats: Vec<Option<BatchStats<T>>>,
    slope: T,
}

/// Geometry key of a cached index map.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum MapKey {
    Im2col([usize; 7]),
    Flatten([usize; 4]),
}

/// Process-wide cache of the data-independent index maps (they depend only on
/// the geometry and the batch size). Bounded: cleared when it grows past 64.
fn cached_map(key: MapKey, build: impl FnOnce() -> IndexMap) -> Arc<IndexMap> {
    static CACHE: OnceLock<Mutex<HashMap<MapKey, Arc<IndexMap>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(m) = cache.lock().expect("map cache").get(&key) {
        return m.clone();
    }
    let m = Arc::new(build());
    let mut c = cache.lock().expect("map cache");
    if c.len() >= 64 {
        c.clear();
    }
    c.insert(key, m.clone());
    m
}

impl<'t, T: Scalar> Walk<'_, 't, T> {
    fn param(&mut self) -> Var<'t, T> {
        let p = self.params[self.next_param];
        self.next_param += 1;
        p
    }

    /// The activation as an image in the NHWC layout (rearranging the raw input once).
    fn image(&self, a: Act<'t, T>) -> (Var<'t, T>, usize, usize, usize) {
        match a {
            Act::Image(v, c, h, w) => (v, c, h, w),
            Act::Input(v, c, h, w) => {
                let tape = v.tape();
                let x = spatial::nchw_to_nhwc(&v.value(), c, h, w);
                (tape.constant(x), c, h, w)
            }
            Act::Flat(..) => unreachable!("the layout check guarantees image inputs here"),
        }
    }

    fn flat(&self, a: Act<'t, T>) -> (Var<'t, T>, usize) {
        match a {
            Act::Flat(v, d) => (v, d),
            Act::Input(v, c, h, w) => (v, c * h * w),
            Act::Image(..) => unreachable!("the layout check guarantees flat inputs here"),
        }
    }

    fn layers(&mut self, layers: &[LayerSpec], mut a: Act<'t, T>) -> Act<'t, T> {
        for l in layers {
            a = self.layer(l, a);
        }
        a
    }

    fn layer(&mut self, l: &LayerSpec, a: Act<'t, T>) -> Act<'t, T> {
        let n = self.n;
        match l {
            LayerSpec::Linear { out, bias, .. } => {
                let (x, _) = self.flat(a);
                let wv = self.param();
                let mut z = x.matmul_t(wv, false, true);
                if *bias {
                    let b = self.param();
                    z = z.add(b.broadcast(n, *out));
                }
                Act::Flat(z, *out)
            }
            LayerSpec::Conv2d {
                out,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => {
                let (x, c, h, w) = self.image(a);
                let (k, s, p) = (*kernel, *stride, *padding);
                let ho = super::arch::pool_out(h, k, s, p, false);
                let wo = super::arch::pool_out(w, k, s, p, false);
                let wv = self.param();
                let geom = ConvGeom::cached(ConvShape {
                    n,
                    c_in: c,
                    h,
                    w,
                    c_out: *out,
                    k,
                    stride: s,
                    pad: p,
                });
                debug_assert_eq!((geom.shape.ho(), geom.shape.wo()), (ho, wo));
                let mut z = x.conv2d(wv, geom);
                if *bias {
                    let b = self.param();
                    z = z.add(b.broadcast(n * ho * wo, *out));
                }
                Act::Image(z, *out, ho, wo)
            }
            LayerSpec::Batchnorm { affine, eps, .. } => {
                // `like` keeps the activation's shape; the output replaces its value.
                let (x, like) = match a {
                    Act::Flat(v, _) => (v, a),
                    Act::Input(v, c, 1, 1) => (v, Act::Flat(v, c)),
                    other => {
                        let (v, c, h, w) = self.image(other);
                        (v, Act::Image(v, c, h, w))
                    }
                };
                let (gamma, beta) = if *affine {
                    (Some(self.param()), Some(self.param()))
                } else {
                    (None, None)
                };
                let b = self.next_bn;
                self.next_bn += 1;
                let rows = x.shape().0;
                let y = match self.mode {
                    Mode::Train => {
                        let o = batchnorm_train(x, gamma, beta, *eps);
                        self.stats.push(Some(BatchStats {
                            mean: o.mean,
                            var: o.var,
                            count: rows,
                        }));
                        o.out
                    }
                    Mode::Eval => {
                        self.stats.push(None);
                        let st = &self.net.bn[b];
                        batchnorm_eval(x, gamma, beta, &st.running_mean, &st.running_var, *eps)
                    }
                };
                like.with_var(y)
            }
            LayerSpec::Activation { act } => {
                let f = |v: Var<'t, T>| match act {
                    Activation::Relu => v.relu(),
                    Activation::LeakyRelu => v.leaky_relu(self.slope),
                    Activation::Tanh => v.tanh(),
                    Activation::Sigmoid => v.sigmoid(),
                    Activation::Softplus => v.softplus(),
                    Activation::Identity => v,
                };
                match a {
                    Act::Flat(v, d) => Act::Flat(f(v), d),
                    Act::Image(v, c, h, w) => Act::Image(f(v), c, h, w),
                    Act::Input(v, c, h, w) => Act::Input(f(v), c, h, w),
                }
            }
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
            } => {
                let (x, c, h, w) = self.image(a);
                let (k, s, p) = (*kernel, stride.unwrap_or(*kernel), *padding);
                let ho = super::arch::pool_out(h, k, s, p, *ceil_mode);
                let wo = super::arch::pool_out(w, k, s, p, *ceil_mode);
                let map = spatial::max_pool_map(x.value().as_slice(), n, c, h, w, k, s, p, ho, wo);
                Act::Image(x.gather(Arc::new(map), n * ho * wo, c), c, ho, wo)
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                let (x, c, h, w) = self.image(a);
                let (k, s) = (*kernel, stride.unwrap_or(*kernel));
                let ho = super::arch::pool_out(h, k, s, 0, false);
                let wo = super::arch::pool_out(w, k, s, 0, false);
                // The im2col map without padding lists every window (see im2col_map).
                let map = cached_map(MapKey::Im2col([n, c, h, w, k, s, 0]), || {
                    spatial::im2col_map(n, c, h, w, k, s, 0, ho, wo)
                });
                let tape = x.tape();
                let mean = tape.constant(Matrix::filled(
                    k * k,
                    1,
                    T::ONE / T::from_f64((k * k) as f64),
                ));
                let y = x
                    .gather(map, n * ho * wo * c, k * k)
                    .matmul(mean)
                    .reshape(n * ho * wo, c);
                Act::Image(y, c, ho, wo)
            }
            LayerSpec::GlobalAvgPool => {
                let (x, c, h, w) = self.image(a);
                let map = cached_map(MapKey::Flatten([n, c, h, w]), || {
                    spatial::flatten_map(n, c, h, w)
                });
                let tape = x.tape();
                let mean = tape.constant(Matrix::filled(
                    h * w,
                    1,
                    T::ONE / T::from_f64((h * w) as f64),
                ));
                let y = x.gather(map, n * c, h * w).matmul(mean).reshape(n, c);
                Act::Flat(y, c)
            }
            LayerSpec::GlobalMaxPool => {
                let (x, c, h, w) = self.image(a);
                let map = spatial::global_max_map(x.value().as_slice(), n, c, h, w);
                Act::Flat(x.gather(Arc::new(map), n, c), c)
            }
            LayerSpec::Flatten => match a {
                Act::Image(x, c, h, w) => {
                    let map = cached_map(MapKey::Flatten([n, c, h, w]), || {
                        spatial::flatten_map(n, c, h, w)
                    });
                    Act::Flat(x.gather(map, n, c * h * w), c * h * w)
                }
                Act::Input(v, c, h, w) => Act::Flat(v, c * h * w),
                f @ Act::Flat(..) => f,
            },
            LayerSpec::Residual {
                body,
                shortcut,
                post,
            } => {
                // Both branches read the same (rearranged) input.
                let a = match a {
                    Act::Input(..) => {
                        let (v, c, h, w) = self.image(a);
                        Act::Image(v, c, h, w)
                    }
                    other => other,
                };
                let b = self.layers(body, a);
                let s = match shortcut {
                    Some(sc) => self.layers(sc, a),
                    None => a,
                };
                let sum = |x: Var<'t, T>, y: Var<'t, T>| x.add(y);
                let out = match (b, s) {
                    (Act::Image(x, c, h, w), Act::Image(y, ..)) => Act::Image(sum(x, y), c, h, w),
                    (Act::Flat(x, d), Act::Flat(y, _)) => Act::Flat(sum(x, y), d),
                    _ => unreachable!("the layout check matches the branch shapes"),
                };
                match post {
                    Some(act) => self.layer(&LayerSpec::Activation { act: *act }, out),
                    None => out,
                }
            }
        }
    }
}
