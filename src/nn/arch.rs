//! Architecture descriptions: one JSON-serialisable type for every network the
//! engine runs (MLPs, the sphere paper's ConvNet, ResNets with and without
//! shortcuts, VGG-9, or a user's own), plus the built-in presets.
//!
//! A network is a list of layers applied in order to an input of shape
//! `C x H x W` (a flat feature vector is `d x 1 x 1`). Every layer with state
//! has a `name`: its tensors are `{name}.weight`, `{name}.bias` and, for
//! BatchNorm, `{name}.running_mean`, `{name}.running_var`,
//! `{name}.num_batches_tracked` — the state-dict names of the reference PyTorch
//! definitions in `benches/peers/models.py`. The parameter vector is the
//! concatenation of the trainable tensors in layer order (PyTorch's
//! `named_parameters()` order), each flattened row-major in its PyTorch shape:
//! a convolution weight is `(out, in, k, k)`, a linear weight `(out, in)`.
//!
//! Example (a tiny ConvNet; `"type"` selects the layer):
//! ```json
//! {"name": "custom", "input_shape": [1, 28, 28], "classes": 10, "loss": "cross_entropy",
//!  "layers": [
//!   {"type": "conv2d", "name": "conv", "out": 8, "kernel": 3, "stride": 1, "padding": 1, "bias": false},
//!   {"type": "batchnorm", "name": "bn", "affine": true, "eps": 1e-5, "momentum": 0.1},
//!   {"type": "activation", "act": "relu"},
//!   {"type": "max_pool2d", "kernel": 2, "stride": 2},
//!   {"type": "global_avg_pool"},
//!   {"type": "linear", "name": "fc", "out": 10, "bias": true}]}
//! ```

use super::{Activation, LossKind, MlpConfig};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One layer of an architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LayerSpec {
    /// `y = x W^T + b` on flat features (`W` is `out x in`).
    Linear {
        name: String,
        out: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// 2-D cross-correlation (PyTorch `Conv2d`), square kernel, zero padding.
    Conv2d {
        name: String,
        out: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// BatchNorm over features (flat input) or channels (image input).
    Batchnorm {
        name: String,
        #[serde(default = "yes")]
        affine: bool,
        #[serde(default = "default_eps")]
        eps: f64,
        #[serde(default = "default_momentum")]
        momentum: f64,
    },
    Activation {
        act: Activation,
    },
    /// Max over `kernel x kernel` windows (padding counts as `-inf`); ties take
    /// the first maximum in row-major window order, as PyTorch's CPU kernel.
    MaxPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        ceil_mode: bool,
    },
    /// Mean over `kernel x kernel` windows (no padding, floor mode).
    AvgPool2d {
        kernel: usize,
        #[serde(default)]
        stride: Option<usize>,
    },
    /// Mean over all positions of each channel (output `C`).
    GlobalAvgPool,
    /// Max over all positions of each channel (output `C`; ties as `max_pool2d`).
    GlobalMaxPool,
    /// Image to flat features in PyTorch's `(C, H, W)` order.
    Flatten,
    /// `post(body(x) + shortcut(x))`; the shortcut is the identity when `None`.
    Residual {
        body: Vec<LayerSpec>,
        #[serde(default)]
        shortcut: Option<Vec<LayerSpec>>,
        #[serde(default)]
        post: Option<Activation>,
    },
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_momentum() -> f64 {
    0.1
}

/// A whole network: input shape, layers, output count and loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    /// Preset name (`mlp`, `convnet`, `resnet20`, ...) or `custom`.
    pub name: String,
    /// `[C, H, W]`; flat features are `[d, 1, 1]`.
    pub input_shape: [usize; 3],
    pub classes: usize,
    pub loss: LossKind,
    /// Negative-side slope of LeakyReLU.
    #[serde(default = "default_leaky")]
    pub leaky_slope: f64,
    pub layers: Vec<LayerSpec>,
    /// Set when the network is an MLP of today's `MlpConfig` form (the analytic
    /// Hessian applies to it when it has no BatchNorm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<MlpConfig>,
}

fn default_leaky() -> f64 {
    0.01
}

/// Shape of the activations between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Flat(usize),
    Image { c: usize, h: usize, w: usize },
}

impl Shape {
    pub fn numel(self) -> usize {
        match self {
            Shape::Flat(d) => d,
            Shape::Image { c, h, w } => c * h * w,
        }
    }
}

/// Output size of a pooling window sweep (PyTorch's rule, including ceil mode:
/// the last window must start inside the input or its left padding).
pub fn pool_out(size: usize, kernel: usize, stride: usize, padding: usize, ceil: bool) -> usize {
    let span = size + 2 * padding;
    if span < kernel {
        return 0;
    }
    let num = span - kernel;
    let mut out = if ceil {
        num.div_ceil(stride) + 1
    } else {
        num / stride + 1
    };
    if ceil && (out - 1) * stride >= size + padding {
        out -= 1;
    }
    out
}

/// Description of one tensor of a network's state, in state-dict order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TensorSpec {
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorKind {
    /// Trainable tensor number `i` of the parameter vector.
    Param(usize),
    RunningMean(usize),
    RunningVar(usize),
    NumBatchesTracked(usize),
}

/// The checked structure of an architecture: shapes, tensors, BatchNorm layers.
#[derive(Clone, Debug)]
pub struct Layout {
    pub tensors: Vec<TensorSpec>,
    /// Per trainable tensor: `(rows, cols)` of its matrix form (a conv weight is
    /// `out x (in k k)`, vectors are `1 x n`), and its fan-in for initialisation.
    pub param_shapes: Vec<(usize, usize)>,
    pub param_fan_in: Vec<usize>,
    /// Per trainable tensor: its role (for direction normalisation and SI sets).
    pub param_roles: Vec<ParamRole>,
    /// Channels of each BatchNorm layer, in order.
    pub bn_channels: Vec<usize>,
    pub output: Shape,
    /// Activation values one sample produces, summed over every layer's output
    /// (residual bodies and shortcuts included): the unit of the tape-memory estimate
    /// in [`crate::memory`].
    pub activations_per_sample: usize,
}

/// What a trainable tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamRole {
    LinearWeight,
    ConvWeight,
    Bias,
    BnWeight,
    BnBias,
}

impl Architecture {
    /// Checks the description and derives its tensors and shapes.
    pub fn layout(&self) -> Result<Layout> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("architecture: {m}")));
        if self.input_shape.contains(&0) {
            return bad(format!("input shape {:?} has a zero", self.input_shape));
        }
        if self.classes == 0 {
            return bad("classes must be positive".into());
        }
        if self.loss == LossKind::CrossEntropy && self.classes < 2 {
            return bad("cross-entropy needs at least 2 classes".into());
        }
        if !self.leaky_slope.is_finite() {
            return bad("leaky slope must be finite".into());
        }
        let [c, h, w] = self.input_shape;
        let input = if h == 1 && w == 1 {
            Shape::Flat(c)
        } else {
            Shape::Image { c, h, w }
        };
        let mut lay = Layout {
            tensors: Vec::new(),
            param_shapes: Vec::new(),
            param_fan_in: Vec::new(),
            param_roles: Vec::new(),
            bn_channels: Vec::new(),
            output: input,
            activations_per_sample: input.numel(),
        };
        let out = walk(&self.layers, input, &mut lay, true)?;
        match out {
            Shape::Flat(d) if d == self.classes => {}
            other => {
                return bad(format!(
                    "the last layer gives {other:?}, expected {} flat outputs (classes)",
                    self.classes
                ))
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &lay.tensors {
            if !seen.insert(t.name.clone()) {
                return bad(format!("tensor name {} appears twice", t.name));
            }
        }
        lay.output = out;
        Ok(lay)
    }

    /// Whether any layer is a BatchNorm.
    pub fn has_batchnorm(&self) -> bool {
        fn any(ls: &[LayerSpec]) -> bool {
            ls.iter().any(|l| match l {
                LayerSpec::Batchnorm { .. } => true,
                LayerSpec::Residual { body, shortcut, .. } => {
                    any(body) || shortcut.as_deref().is_some_and(any)
                }
                _ => false,
            })
        }
        any(&self.layers)
    }

    /// Number of trainable parameters `P`.
    pub fn num_params(&self) -> Result<usize> {
        let l = self.layout()?;
        Ok(l.param_shapes.iter().map(|(r, c)| r * c).sum())
    }

    /// The same network on another input shape (presets adapt: VGG-9's first
    /// linear layer follows the flattened size).
    pub fn with_input_shape(&self, shape: [usize; 3]) -> Self {
        let mut a = self.clone();
        a.input_shape = shape;
        if let Some(m) = &mut a.mlp {
            m.input_dim = shape.iter().product();
        }
        a
    }
}

fn walk(layers: &[LayerSpec], mut s: Shape, lay: &mut Layout, top: bool) -> Result<Shape> {
    let bad = |m: String| Err(Error::InvalidArgument(format!("architecture: {m}")));
    let _ = top;
    for l in layers {
        s = match l {
            LayerSpec::Linear { name, out, bias } => {
                let Shape::Flat(d) = s else {
                    return bad(format!(
                        "linear layer {name} gets an image {s:?}: add a flatten or global pool before it"
                    ));
                };
                if *out == 0 {
                    return bad(format!("linear layer {name} has 0 outputs"));
                }
                push_param(
                    lay,
                    format!("{name}.weight"),
                    vec![*out, d],
                    (*out, d),
                    d,
                    ParamRole::LinearWeight,
                );
                if *bias {
                    push_param(
                        lay,
                        format!("{name}.bias"),
                        vec![*out],
                        (1, *out),
                        d,
                        ParamRole::Bias,
                    );
                }
                Shape::Flat(*out)
            }
            LayerSpec::Conv2d {
                name,
                out,
                kernel,
                stride,
                padding,
                bias,
            } => {
                let (c, h, w) = image(s, name)?;
                if *out == 0 || *kernel == 0 || *stride == 0 {
                    return bad(format!("conv {name} needs out, kernel and stride > 0"));
                }
                let ho = pool_out(h, *kernel, *stride, *padding, false);
                let wo = pool_out(w, *kernel, *stride, *padding, false);
                if ho == 0 || wo == 0 {
                    return bad(format!(
                        "conv {name}: kernel {kernel} does not fit the {h}x{w} input with padding {padding}"
                    ));
                }
                let fan = c * kernel * kernel;
                push_param(
                    lay,
                    format!("{name}.weight"),
                    vec![*out, c, *kernel, *kernel],
                    (*out, fan),
                    fan,
                    ParamRole::ConvWeight,
                );
                if *bias {
                    push_param(
                        lay,
                        format!("{name}.bias"),
                        vec![*out],
                        (1, *out),
                        fan,
                        ParamRole::Bias,
                    );
                }
                Shape::Image {
                    c: *out,
                    h: ho,
                    w: wo,
                }
            }
            LayerSpec::Batchnorm {
                name,
                affine,
                eps,
                momentum,
            } => {
                if eps.is_nan() || *eps <= 0.0 || !(0.0..=1.0).contains(momentum) {
                    return bad(format!(
                        "batchnorm {name} needs eps > 0 and momentum in [0, 1]"
                    ));
                }
                let ch = match s {
                    Shape::Flat(d) => d,
                    Shape::Image { c, .. } => c,
                };
                if *affine {
                    push_param(
                        lay,
                        format!("{name}.weight"),
                        vec![ch],
                        (1, ch),
                        1,
                        ParamRole::BnWeight,
                    );
                    push_param(
                        lay,
                        format!("{name}.bias"),
                        vec![ch],
                        (1, ch),
                        1,
                        ParamRole::BnBias,
                    );
                }
                let b = lay.bn_channels.len();
                lay.bn_channels.push(ch);
                for (suffix, kind, shape) in [
                    ("running_mean", TensorKind::RunningMean(b), vec![ch]),
                    ("running_var", TensorKind::RunningVar(b), vec![ch]),
                    (
                        "num_batches_tracked",
                        TensorKind::NumBatchesTracked(b),
                        vec![],
                    ),
                ] {
                    lay.tensors.push(TensorSpec {
                        name: format!("{name}.{suffix}"),
                        shape,
                        kind,
                    });
                }
                s
            }
            LayerSpec::Activation { .. } => s,
            LayerSpec::MaxPool2d {
                kernel,
                stride,
                padding,
                ceil_mode,
            } => {
                let (c, h, w) = image(s, "max_pool2d")?;
                let st = stride.unwrap_or(*kernel);
                if *kernel == 0 || st == 0 || 2 * padding > *kernel {
                    return bad(format!(
                        "max_pool2d needs kernel, stride > 0 and padding <= kernel/2 (got {kernel}, {st}, {padding})"
                    ));
                }
                let ho = pool_out(h, *kernel, st, *padding, *ceil_mode);
                let wo = pool_out(w, *kernel, st, *padding, *ceil_mode);
                if ho == 0 || wo == 0 {
                    return bad(format!(
                        "max_pool2d {kernel}x{kernel} does not fit a {h}x{w} input"
                    ));
                }
                Shape::Image { c, h: ho, w: wo }
            }
            LayerSpec::AvgPool2d { kernel, stride } => {
                let (c, h, w) = image(s, "avg_pool2d")?;
                let st = stride.unwrap_or(*kernel);
                if *kernel == 0 || st == 0 {
                    return bad("avg_pool2d needs kernel and stride > 0".into());
                }
                let ho = pool_out(h, *kernel, st, 0, false);
                let wo = pool_out(w, *kernel, st, 0, false);
                if ho == 0 || wo == 0 {
                    return bad(format!(
                        "avg_pool2d {kernel}x{kernel} does not fit a {h}x{w} input"
                    ));
                }
                Shape::Image { c, h: ho, w: wo }
            }
            LayerSpec::GlobalAvgPool | LayerSpec::GlobalMaxPool => {
                let (c, _, _) = image(s, "global pool")?;
                Shape::Flat(c)
            }
            LayerSpec::Flatten => Shape::Flat(s.numel()),
            LayerSpec::Residual { body, shortcut, .. } => {
                let b = walk(body, s, lay, false)?;
                let sc = match shortcut {
                    Some(sc) => walk(sc, s, lay, false)?,
                    None => s,
                };
                if b != sc {
                    return bad(format!(
                        "residual block: body gives {b:?} but the shortcut gives {sc:?} (use a projection shortcut)"
                    ));
                }
                b
            }
        };
        lay.activations_per_sample += s.numel();
    }
    Ok(s)
}

fn image(s: Shape, what: &str) -> Result<(usize, usize, usize)> {
    match s {
        Shape::Image { c, h, w } => Ok((c, h, w)),
        Shape::Flat(d) => Err(Error::InvalidArgument(format!(
            "architecture: {what} needs an image input but gets {d} flat features (give the data's --input-shape C,H,W)"
        ))),
    }
}

fn push_param(
    lay: &mut Layout,
    name: String,
    shape: Vec<usize>,
    mat: (usize, usize),
    fan_in: usize,
    role: ParamRole,
) {
    let i = lay.param_shapes.len();
    lay.tensors.push(TensorSpec {
        name,
        shape,
        kind: TensorKind::Param(i),
    });
    lay.param_shapes.push(mat);
    lay.param_fan_in.push(fan_in);
    lay.param_roles.push(role);
}

// ---------------------------------------------------------------- presets

/// Names of the built-in presets.
pub const PRESETS: &[&str] = &[
    "mlp",
    "convnet",
    "resnet20",
    "resnet56",
    "resnet110",
    "resnet20-noshort",
    "resnet56-noshort",
    "resnet110-noshort",
    "vgg9",
];

/// Options of the presets.
#[derive(Clone, Debug)]
pub struct PresetOptions {
    pub input_shape: [usize; 3],
    pub classes: usize,
    pub loss: LossKind,
    /// `convnet`'s width `c`; the ResNets' first-stage channels (stages `c, 2c, 4c`;
    /// Li et al.'s ResNets have `c = 16`). VGG-9 ignores it.
    pub width: usize,
    /// Width multiplier `K` of the ConvNet and ResNet channels (Li et al.'s wide
    /// ResNets: `K` = 2, 4, 8); 1 is the plain preset.
    pub wide: usize,
    /// `mlp`: the full MLP configuration (its input size must match the input shape).
    pub mlp: Option<MlpConfig>,
}

/// The architecture of a preset.
pub fn preset(name: &str, o: &PresetOptions) -> Result<Architecture> {
    let layers = match name {
        "mlp" => {
            let cfg = o.mlp.clone().ok_or_else(|| {
                Error::InvalidArgument("the mlp preset needs its widths (--hidden)".into())
            })?;
            return Ok(from_mlp_config(&cfg, o.input_shape));
        }
        "convnet" => convnet(o.width * o.wide),
        "vgg9" => vgg9(),
        _ => {
            let (depth, short) = match name {
                "resnet20" => (20, true),
                "resnet56" => (56, true),
                "resnet110" => (110, true),
                "resnet20-noshort" => (20, false),
                "resnet56-noshort" => (56, false),
                "resnet110-noshort" => (110, false),
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown architecture '{other}' (presets: {}; or a JSON file)",
                        PRESETS.join(", ")
                    )))
                }
            };
            resnet_cifar(depth, short, o.width * o.wide)
        }
    };
    let mut layers = layers;
    // Every preset ends in a linear layer to the classes.
    if let Some(LayerSpec::Linear { out, .. }) = layers.last_mut() {
        *out = o.classes;
    }
    if (o.width == 0 || o.wide == 0) && (name == "convnet" || name.starts_with("resnet")) {
        return Err(Error::InvalidArgument(
            "the width and the width multiplier must be positive".into(),
        ));
    }
    let arch = Architecture {
        name: name.to_string(),
        input_shape: o.input_shape,
        classes: o.classes,
        loss: o.loss,
        leaky_slope: 0.01,
        layers,
        mlp: None,
    };
    arch.layout()?;
    Ok(arch)
}

/// An MLP of today's form as an architecture: `layers.{p}` linear layers,
/// `layers.{p}.bn` BatchNorm after each hidden linear layer, then the activation.
pub fn from_mlp_config(cfg: &MlpConfig, input_shape: [usize; 3]) -> Architecture {
    let nl = cfg.num_layers();
    let widths = cfg.widths();
    let mut layers = Vec::new();
    let [c, h, w] = input_shape;
    let shape_matches = c * h * w == cfg.input_dim;
    if h * w > 1 && shape_matches {
        layers.push(LayerSpec::Flatten);
    }
    for p in 0..nl {
        layers.push(LayerSpec::Linear {
            name: format!("layers.{p}"),
            out: widths[p + 1],
            bias: cfg.bias,
        });
        if p + 1 < nl {
            if let Some(bn) = cfg.batchnorm {
                layers.push(LayerSpec::Batchnorm {
                    name: format!("layers.{p}.bn"),
                    affine: bn.affine,
                    eps: bn.eps,
                    momentum: bn.momentum,
                });
            }
            layers.push(LayerSpec::Activation {
                act: cfg.activation,
            });
        }
    }
    Architecture {
        name: "mlp".into(),
        input_shape: if shape_matches {
            input_shape
        } else {
            [cfg.input_dim, 1, 1]
        },
        classes: cfg.classes,
        loss: cfg.loss,
        leaky_slope: cfg.leaky_slope,
        layers,
        mlp: Some(cfg.clone()),
    }
}

fn conv(
    name: String,
    out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    bias: bool,
) -> LayerSpec {
    LayerSpec::Conv2d {
        name,
        out,
        kernel,
        stride,
        padding,
        bias,
    }
}

fn bn(name: String, affine: bool) -> LayerSpec {
    LayerSpec::Batchnorm {
        name,
        affine,
        eps: 1e-5,
        momentum: 0.1,
    }
}

const RELU: LayerSpec = LayerSpec::Activation {
    act: Activation::Relu,
};

fn maxpool2() -> LayerSpec {
    LayerSpec::MaxPool2d {
        kernel: 2,
        stride: None,
        padding: 0,
        ceil_mode: false,
    }
}

/// The sphere paper's ConvNet (seed 001, Table 1) in its scale-invariant form:
/// bias-free 3x3 convs, BatchNorm without affine parameters, a global max pool
/// in place of `MaxPool2d(4)`, and a linear head with bias. Names follow the
/// authors' `conv_layers` / `linear_layers` sequentials.
fn convnet(c: usize) -> Vec<LayerSpec> {
    let cl = |i: usize| format!("conv_layers.{i}");
    vec![
        conv(cl(0), c, 3, 1, 1, false),
        bn(cl(1), false),
        RELU,
        conv(cl(3), 2 * c, 3, 1, 1, false),
        bn(cl(4), false),
        RELU,
        maxpool2(),
        conv(cl(7), 4 * c, 3, 1, 1, false),
        bn(cl(8), false),
        RELU,
        maxpool2(),
        conv(cl(11), 8 * c, 3, 1, 1, false),
        bn(cl(12), false),
        RELU,
        maxpool2(),
        LayerSpec::GlobalMaxPool,
        LayerSpec::Linear {
            name: "linear_layers.2".into(),
            out: 10,
            bias: true,
        },
    ]
}

/// Li et al.'s CIFAR ResNet (`ResNet_cifar` with `BasicBlock`): 3 stages of
/// (depth - 2) / 6 blocks with 16, 32, 64 channels, option-B projection
/// shortcuts where the shape changes; `-noshort` drops the shortcuts. The head
/// is a global average pool (Li et al. pool a fixed 8 x 8 window). `c` is the
/// first stage's channel count (16 in Li et al.; their wide ResNets multiply it).
fn resnet_cifar(depth: usize, short: bool, c: usize) -> Vec<LayerSpec> {
    let n = (depth - 2) / 6;
    let mut layers = vec![
        conv("conv1".into(), c, 3, 1, 1, false),
        bn("bn1".into(), true),
        RELU,
    ];
    let mut inp = c;
    for (stage, planes) in [c, 2 * c, 4 * c].into_iter().enumerate() {
        for j in 0..n {
            let stride = if stage > 0 && j == 0 { 2 } else { 1 };
            let pre = format!("layer{}.{j}", stage + 1);
            let body = vec![
                conv(format!("{pre}.conv1"), planes, 3, stride, 1, false),
                bn(format!("{pre}.bn1"), true),
                RELU,
                conv(format!("{pre}.conv2"), planes, 3, 1, 1, false),
                bn(format!("{pre}.bn2"), true),
            ];
            if short {
                let shortcut = (stride != 1 || inp != planes).then(|| {
                    vec![
                        conv(format!("{pre}.shortcut.0"), planes, 1, stride, 0, false),
                        bn(format!("{pre}.shortcut.1"), true),
                    ]
                });
                layers.push(LayerSpec::Residual {
                    body,
                    shortcut,
                    post: Some(Activation::Relu),
                });
            } else {
                layers.extend(body);
                layers.push(RELU);
            }
            inp = planes;
        }
    }
    layers.push(LayerSpec::GlobalAvgPool);
    layers.push(LayerSpec::Linear {
        name: "linear".into(),
        out: 10,
        bias: true,
    });
    layers
}

/// Li et al.'s VGG-9: conv (with bias) + BN + ReLU blocks
/// `64, 64, M, 128, 128, M, 256, 256, 256, M` (ceil-mode 2x2 max pools), then
/// `fc` = Linear(256 h w, 256) + BatchNorm1d + ReLU and the `classifier`.
fn vgg9() -> Vec<LayerSpec> {
    let cfg: [Option<usize>; 10] = [
        Some(64),
        Some(64),
        None,
        Some(128),
        Some(128),
        None,
        Some(256),
        Some(256),
        Some(256),
        None,
    ];
    let mut layers = Vec::new();
    let mut i = 0;
    for c in cfg {
        match c {
            Some(c) => {
                layers.push(conv(format!("features.{i}"), c, 3, 1, 1, true));
                layers.push(bn(format!("features.{}", i + 1), true));
                layers.push(RELU);
                i += 3;
            }
            None => {
                layers.push(LayerSpec::MaxPool2d {
                    kernel: 2,
                    stride: Some(2),
                    padding: 0,
                    ceil_mode: true,
                });
                i += 1;
            }
        }
    }
    layers.push(LayerSpec::Flatten);
    layers.push(LayerSpec::Linear {
        name: "fc.0".into(),
        out: 256,
        bias: true,
    });
    layers.push(bn("fc.1".into(), true));
    layers.push(RELU);
    layers.push(LayerSpec::Linear {
        name: "classifier".into(),
        out: 10,
        bias: true,
    });
    layers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_mode_matches_pytorch() {
        // PyTorch: MaxPool2d(2, 2, ceil_mode=True) on 7 gives 4, on 8 gives 4; floor on 7 gives 3.
        assert_eq!(pool_out(7, 2, 2, 0, true), 4);
        assert_eq!(pool_out(8, 2, 2, 0, true), 4);
        assert_eq!(pool_out(7, 2, 2, 0, false), 3);
        assert_eq!(pool_out(1, 2, 2, 0, true), 0);
        // kernel 3, stride 2, padding 1 on 5: floor (5+2-3)/2+1 = 3; ceil also 3.
        assert_eq!(pool_out(5, 3, 2, 1, true), 3);
    }
}
