//! The network engine (convolutions, BatchNorm, pooling, residual blocks) against
//! finite differences, closed forms, the MLP code and published parameter counts.
//!
//! Gradients: central differences of the loss, step 1e-6 (max relative error
//! <= 1e-6). HVPs by double backward: central differences of the tape gradient
//! along a direction, step 1e-5 (<= 1e-5). Activations are tanh where a kink
//! could sit within the step; ReLU and max-pool nets draw inputs away from ties.

use landscape::autodiff::{hvp, Tape};
use landscape::nn::arch::{preset, Architecture, LayerSpec, PresetOptions};
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig, Mode, Network};
use landscape::rng::Rng;
use landscape::Matrix;

fn relu() -> LayerSpec {
    LayerSpec::Activation {
        act: Activation::Relu,
    }
}
fn tanh() -> LayerSpec {
    LayerSpec::Activation {
        act: Activation::Tanh,
    }
}
fn conv(name: &str, out: usize, k: usize, s: usize, p: usize, bias: bool) -> LayerSpec {
    LayerSpec::Conv2d {
        name: name.into(),
        out,
        kernel: k,
        stride: s,
        padding: p,
        bias,
    }
}
fn bn(name: &str, affine: bool) -> LayerSpec {
    LayerSpec::Batchnorm {
        name: name.into(),
        affine,
        eps: 1e-5,
        momentum: 0.1,
    }
}
fn linear(name: &str, out: usize, bias: bool) -> LayerSpec {
    LayerSpec::Linear {
        name: name.into(),
        out,
        bias,
    }
}

fn arch(input: [usize; 3], classes: usize, layers: Vec<LayerSpec>) -> Architecture {
    Architecture {
        name: "custom".into(),
        input_shape: input,
        classes,
        loss: LossKind::CrossEntropy,
        leaky_slope: 0.01,
        layers,
        mlp: None,
    }
}

/// A network with random parameters (and non-trivial running statistics).
fn random_net(a: Architecture, seed: u64) -> Network<f64> {
    let mut net = Network::<f64>::init(a, Init::Torch, 1.0, seed).expect("valid architecture");
    let mut rng = Rng::new(seed ^ 0x55);
    for p in &mut net.params {
        for v in p.as_mut_slice() {
            *v += 0.1 * rng.normal();
        }
    }
    for b in &mut net.bn {
        for v in b.running_mean.as_mut_slice() {
            *v = 0.2 * rng.normal();
        }
        for v in b.running_var.as_mut_slice() {
            *v = 0.5 + rng.uniform();
        }
    }
    net
}

fn data(n: usize, d: usize, classes: usize, seed: u64) -> (Matrix<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let x = Matrix::from_fn(n, d, |_, _| rng.normal());
    let y = (0..n).map(|i| (i * 7 + 3) % classes).collect();
    (x, y)
}

fn loss_at(
    net: &Network<f64>,
    params: &[Matrix<f64>],
    x: &Matrix<f64>,
    y: &[usize],
    mode: Mode,
) -> f64 {
    let tape = Tape::new();
    let vars: Vec<_> = params.iter().map(|p| tape.param(p.clone())).collect();
    net.loss_tape(&vars, x, y, mode).0.item()
}

fn grad_at(
    net: &Network<f64>,
    params: &[Matrix<f64>],
    x: &Matrix<f64>,
    y: &[usize],
    mode: Mode,
) -> Vec<f64> {
    let tape = Tape::new();
    let vars: Vec<_> = params.iter().map(|p| tape.param(p.clone())).collect();
    let (l, _) = net.loss_tape(&vars, x, y, mode);
    tape.grad(l, &vars)
        .iter()
        .flat_map(|g| g.value().as_slice().to_vec())
        .collect()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Gradient and HVP of the whole network against finite differences.
fn check_network(name: &str, a: Architecture, n: usize, seed: u64) {
    let net = random_net(a, seed);
    let d: usize = net.arch.input_shape.iter().product();
    let (x, y) = data(n, d, net.arch.classes, seed + 1);
    for mode in [Mode::Eval, Mode::Train] {
        if mode == Mode::Train && !net.arch.has_batchnorm() {
            continue;
        }
        let g = grad_at(&net, &net.params, &x, &y, mode);
        let h = 1e-6;
        let mut fd = Vec::with_capacity(g.len());
        for k in 0..net.params.len() {
            for e in 0..net.params[k].len() {
                let mut plus = net.params.clone();
                let mut minus = net.params.clone();
                plus[k].as_mut_slice()[e] += h;
                minus[k].as_mut_slice()[e] -= h;
                fd.push(
                    (loss_at(&net, &plus, &x, &y, mode) - loss_at(&net, &minus, &x, &y, mode))
                        / (2.0 * h),
                );
            }
        }
        let e = rel_err(&g, &fd);
        assert!(
            e <= 1e-6,
            "{name} ({mode:?}): gradient relative error {e:.3e}"
        );

        // HVP by double backward against differences of gradients.
        let mut rng = Rng::new(seed + 7);
        let v: Vec<Matrix<f64>> = net
            .params
            .iter()
            .map(|p| Matrix::from_fn(p.rows(), p.cols(), |_, _| rng.normal()))
            .collect();
        let (_, _, hv) = hvp(&net.params, &v, |_t, vars| {
            net.loss_tape(vars, &x, &y, mode).0
        });
        let eps = 1e-5;
        let moved = |s: f64| {
            let p: Vec<Matrix<f64>> = net
                .params
                .iter()
                .zip(&v)
                .map(|(m, d)| {
                    let mut m = m.clone();
                    m.axpy(s, d);
                    m
                })
                .collect();
            grad_at(&net, &p, &x, &y, mode)
        };
        let (gp, gm) = (moved(eps), moved(-eps));
        let fdh: Vec<f64> = gp
            .iter()
            .zip(&gm)
            .map(|(a, b)| (a - b) / (2.0 * eps))
            .collect();
        let hvf: Vec<f64> = hv.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        let e = rel_err(&hvf, &fdh);
        assert!(e <= 1e-5, "{name} ({mode:?}): HVP relative error {e:.3e}");
    }
}

#[test]
fn conv_layers_match_finite_differences() {
    // Stride, padding, odd channel counts and sizes; bias on and off.
    for (cin, hw, seed) in [(1usize, 5usize, 1u64), (3, 7, 2), (7, 5, 3)] {
        let a = arch(
            [cin, hw, hw],
            3,
            vec![
                conv("c1", 3, 3, 1, 1, true),
                tanh(),
                conv("c2", 2, 3, 2, 1, false),
                tanh(),
                conv("c3", 3, 2, 1, 0, true),
                LayerSpec::GlobalAvgPool,
                linear("fc", 3, true),
            ],
        );
        check_network(&format!("conv {cin}x{hw}x{hw}"), a, 3, seed);
    }
}

#[test]
fn batchnorm_nets_match_finite_differences_in_both_modes() {
    for (cin, hw, affine, seed) in [
        (1usize, 5usize, true, 4u64),
        (3, 7, false, 5),
        (7, 5, true, 6),
    ] {
        let a = arch(
            [cin, hw, hw],
            4,
            vec![
                conv("c1", 3, 3, 1, 1, false),
                bn("b1", affine),
                tanh(),
                conv("c2", 5, 3, 2, 0, true),
                bn("b2", true),
                tanh(),
                LayerSpec::Flatten,
                linear("fc1", 6, true),
                bn("b3", affine),
                tanh(),
                linear("fc2", 4, true),
            ],
        );
        check_network(&format!("bn {cin}x{hw}x{hw} affine={affine}"), a, 6, seed);
    }
}

#[test]
fn pooling_layers_match_finite_differences() {
    // Max pools (floor and ceil mode, padding), average and global pools.
    let a = arch(
        [3, 7, 7],
        3,
        vec![
            conv("c1", 3, 3, 1, 1, true),
            relu(),
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: Some(2),
                padding: 0,
                ceil_mode: true,
            },
            conv("c2", 4, 1, 1, 0, true),
            tanh(),
            LayerSpec::MaxPool2d {
                kernel: 3,
                stride: Some(1),
                padding: 1,
                ceil_mode: false,
            },
            LayerSpec::AvgPool2d {
                kernel: 2,
                stride: Some(1),
            },
            LayerSpec::GlobalMaxPool,
            linear("fc", 3, true),
        ],
    );
    check_network("pools", a, 3, 8);
    let a = arch(
        [1, 5, 5],
        2,
        vec![
            conv("c1", 2, 3, 1, 0, true),
            tanh(),
            LayerSpec::AvgPool2d {
                kernel: 3,
                stride: None,
            },
            LayerSpec::Flatten,
            linear("fc", 2, true),
        ],
    );
    check_network("avg pool to 1x1", a, 4, 9);
}

#[test]
fn residual_blocks_match_finite_differences() {
    // Identity and projection shortcuts, BatchNorm, stride 2; train and eval mode.
    let block = |pre: &str, out: usize, stride: usize, proj: bool| LayerSpec::Residual {
        body: vec![
            conv(&format!("{pre}.conv1"), out, 3, stride, 1, false),
            bn(&format!("{pre}.bn1"), true),
            tanh(),
            conv(&format!("{pre}.conv2"), out, 3, 1, 1, false),
            bn(&format!("{pre}.bn2"), true),
        ],
        shortcut: proj.then(|| {
            vec![
                conv(&format!("{pre}.shortcut.0"), out, 1, stride, 0, false),
                bn(&format!("{pre}.shortcut.1"), true),
            ]
        }),
        post: Some(Activation::Tanh),
    };
    for (cin, hw, seed) in [(3usize, 7usize, 10u64), (1, 5, 11)] {
        let a = arch(
            [cin, hw, hw],
            3,
            vec![
                conv("conv1", 2, 3, 1, 1, false),
                bn("bn1", true),
                tanh(),
                block("layer1.0", 2, 1, false),
                block("layer2.0", 3, 2, true),
                LayerSpec::GlobalAvgPool,
                linear("linear", 3, true),
            ],
        );
        check_network(&format!("resnet {cin}x{hw}x{hw}"), a, 4, seed);
    }
}

#[test]
fn max_pool_ties_take_the_first_maximum() {
    // A 1 x 1 x 2 x 2 input whose four values tie: the gradient goes to the
    // first position in row-major order only (PyTorch's CPU rule).
    let a = arch(
        [1, 2, 2],
        2,
        vec![
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: None,
                padding: 0,
                ceil_mode: false,
            },
            LayerSpec::Flatten,
            linear("fc", 2, false),
        ],
    );
    let net =
        Network::<f64>::new(a, vec![Matrix::from_vec(2, 1, vec![1.0, -1.0])], vec![]).unwrap();
    // The selected value reaches the logits; raising one value moves the choice.
    let x = Matrix::from_vec(1, 4, vec![0.5, 0.5, 0.5, 0.5]);
    let z = net.logits(&x).unwrap();
    assert_eq!(z.row(0), &[0.5, -0.5]);
    let x2 = Matrix::from_vec(1, 4, vec![0.5, 0.5, 0.75, 0.5]);
    assert_eq!(net.logits(&x2).unwrap().row(0), &[0.75, -0.75]);
    let map =
        landscape::nn::spatial::max_pool_map(&[0.5f64, 0.5, 0.5, 0.5], 1, 1, 2, 2, 2, 2, 0, 1, 1);
    assert_eq!(map.indices(), &[0]);
    let map =
        landscape::nn::spatial::max_pool_map(&[0.1f64, 0.5, 0.2, 0.5], 1, 1, 2, 2, 2, 2, 0, 1, 1);
    assert_eq!(map.indices(), &[1], "the first of two tied maxima");
}

fn preset_opts(shape: [usize; 3]) -> PresetOptions {
    PresetOptions {
        input_shape: shape,
        classes: 10,
        loss: LossKind::CrossEntropy,
        width: 16,
        wide: 1,
        mlp: None,
    }
}

#[test]
fn preset_parameter_counts_match_li_et_al() {
    let counts = [
        ("resnet20", 272_474usize),
        ("resnet20-noshort", 269_722),
        ("resnet56", 855_770),
        ("resnet56-noshort", 853_018),
        ("resnet110", 1_730_714),
        ("resnet110-noshort", 1_727_962),
        ("vgg9", 2_789_706),
    ];
    for (name, p) in counts {
        let a = preset(name, &preset_opts([3, 32, 32])).unwrap();
        assert_eq!(a.num_params().unwrap(), p, "{name}");
    }
    // ConvNet c = 32: 387,936 conv weights (DESIGN.md section 11) + the 256 -> 10 head.
    let mut o = preset_opts([3, 32, 32]);
    o.width = 32;
    let a = preset("convnet", &o).unwrap();
    assert_eq!(a.num_params().unwrap(), 387_936 + 256 * 10 + 10);
    // Every preset also runs on 1 x 28 x 28 and 1 x 8 x 8.
    for name in ["convnet", "resnet20", "resnet20-noshort", "vgg9"] {
        for shape in [[1, 28, 28], [1, 8, 8]] {
            preset(name, &preset_opts(shape))
                .unwrap_or_else(|e| panic!("{name} on {shape:?}: {e}"));
        }
    }
}

#[test]
fn mlp_preset_is_bit_identical_to_the_mlp_code() {
    for (act, bias, seed) in [(Activation::Relu, true, 1u64), (Activation::Tanh, false, 2)] {
        let cfg = MlpConfig {
            input_dim: 12,
            hidden: vec![7, 5],
            classes: 3,
            activation: act,
            leaky_slope: 0.01,
            bias,
            batchnorm: None,
            loss: LossKind::CrossEntropy,
        };
        let mlp = Mlp::<f64>::init(cfg.clone(), Init::Torch, 1.0, seed).unwrap();
        let a = landscape::nn::arch::from_mlp_config(&cfg, [3, 2, 2]);
        let net = Network::<f64>::init(a, Init::Torch, 1.0, seed).unwrap();
        assert_eq!(
            net.param_vector(),
            mlp.param_vector(),
            "same draws, same order"
        );
        let (x, y) = data(9, 12, 3, seed);
        assert_eq!(net.logits(&x).unwrap(), mlp.logits(&x).unwrap());
        let g_net = grad_at(&net, &net.params, &x, &y, Mode::Eval);
        let (_, g_mlp) = landscape::nn::backprop::loss_and_grad_analytic(&mlp, &x, &y).unwrap();
        let g_mlp: Vec<f64> = g_mlp.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        assert!(rel_err(&g_net, &g_mlp) < 1e-13);
        assert!(net.analytic_mlp().is_some());
    }
}

/// A tiny BatchNorm ConvNet for the curvature outputs.
fn tiny_bn_net(seed: u64) -> Network<f64> {
    random_net(
        arch(
            [2, 5, 5],
            3,
            vec![
                conv("c1", 2, 3, 2, 1, false),
                bn("b1", true),
                tanh(),
                LayerSpec::GlobalAvgPool,
                linear("fc", 3, true),
            ],
        ),
        seed,
    )
}

/// Logits of sample rows `x` at flat parameters `theta` in the given mode.
fn logits_at(net: &Network<f64>, theta: &[f64], x: &Matrix<f64>, mode: Mode) -> Vec<f64> {
    let mut m = net.clone();
    m.set_param_vector(theta).unwrap();
    let tape = Tape::new();
    let vars = m.params_on_tape(&tape);
    let z = m.forward_tape(&vars, x, mode).logits;
    let v = z.value().as_slice().to_vec();
    v
}

#[test]
fn fisher_trace_matches_finite_difference_jacobians() {
    use landscape::hessian::network::{BnMode, NetObjective};
    let net = tiny_bn_net(21);
    let (x, y) = data(6, 50, 3, 22);
    let theta = net.param_vector();
    let p = theta.len();
    for (mode, bm, batch) in [
        (Mode::Eval, BnMode::Eval, 1usize),
        (Mode::Train, BnMode::Train { batch: 3 }, 3),
    ] {
        // Reference: central-difference Jacobian of each chunk's logits,
        // tr(J^T A J) per sample with A = diag(p) - p p^T, divided by the chunk
        // size (the chunk's loss is its mean), averaged over chunks.
        let mut total = 0.0;
        let chunks = 6 / batch;
        for c in 0..chunks {
            let xb = x.rows_view(c * batch, (c + 1) * batch).to_owned();
            let z0 = logits_at(&net, &theta, &xb, mode);
            let h = 1e-6;
            let mut jac = vec![vec![0.0; p]; z0.len()];
            for j in 0..p {
                let mut tp = theta.clone();
                let mut tm = theta.clone();
                tp[j] += h;
                tm[j] -= h;
                let (zp, zm) = (
                    logits_at(&net, &tp, &xb, mode),
                    logits_at(&net, &tm, &xb, mode),
                );
                for r in 0..z0.len() {
                    jac[r][j] = (zp[r] - zm[r]) / (2.0 * h);
                }
            }
            let mut tr = 0.0;
            for i in 0..batch {
                let z = &z0[i * 3..i * 3 + 3];
                let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                let pr: Vec<f64> = e.iter().map(|v| v / s).collect();
                for a in 0..3 {
                    for b in 0..3 {
                        let aab = if a == b { pr[a] } else { 0.0 } - pr[a] * pr[b];
                        let dot: f64 = (0..p).map(|j| jac[i * 3 + a][j] * jac[i * 3 + b][j]).sum();
                        tr += aab * dot;
                    }
                }
            }
            total += tr / batch as f64;
        }
        let reference = total / chunks as f64;
        let obj = NetObjective::new(&net, &x, &y, bm).unwrap();
        let ours = obj.fisher_trace();
        assert!(
            (ours - reference).abs() <= 1e-6 * reference.abs(),
            "{mode:?}: Fisher trace {ours} vs finite differences {reference}"
        );
    }
}

#[test]
fn per_block_curvature_and_batch_gradients_match_dense_references() {
    use landscape::hessian::network::{BlockOp, BnMode, NetObjective};
    use landscape::hessian::small_eig::jacobi_eigenvalues;
    use landscape::linalg::{lanczos, LanczosOptions, SymOp, Which};
    let net = tiny_bn_net(31);
    let (x, y) = data(8, 50, 3, 32);
    for bm in [BnMode::Eval, BnMode::Train { batch: 4 }] {
        let mode = if bm == BnMode::Eval {
            Mode::Eval
        } else {
            Mode::Train
        };
        let obj = NetObjective::new(&net, &x, &y, bm).unwrap();
        let p = obj.dim();
        // Dense Hessian by central differences of the full-batch tape gradient
        // (in train mode: the mean over the two BN batches of their gradients).
        let grad = |theta: &[f64]| -> Vec<f64> {
            let mut m = net.clone();
            m.set_param_vector(theta).unwrap();
            match bm {
                BnMode::Eval => grad_at(&m, &m.params, &x, &y, mode),
                BnMode::Train { batch } => {
                    let mut acc = vec![0.0; p];
                    for c in 0..2 {
                        let xb = x.rows_view(c * batch, (c + 1) * batch).to_owned();
                        let g = grad_at(&m, &m.params, &xb, &y[c * batch..(c + 1) * batch], mode);
                        for (a, b) in acc.iter_mut().zip(g) {
                            *a += 0.5 * b;
                        }
                    }
                    acc
                }
            }
        };
        let theta = net.param_vector();
        let mut h = Matrix::zeros(p, p);
        for j in 0..p {
            let mut tp = theta.clone();
            let mut tm = theta.clone();
            tp[j] += 1e-5;
            tm[j] -= 1e-5;
            let (gp, gm) = (grad(&tp), grad(&tm));
            for i in 0..p {
                h.set(i, j, (gp[i] - gm[i]) / 2e-5);
            }
        }
        // Our HVP columns against the FD Hessian.
        let mut e = vec![0.0; p];
        for j in 0..p {
            e[j] = 1.0;
            let col = obj.hvp(&e);
            e[j] = 0.0;
            for (i, &c) in col.iter().enumerate() {
                assert!(
                    (c - h.get(i, j)).abs() <= 1e-5 * (1.0 + h.get(i, j).abs()),
                    "{bm:?} H[{i},{j}]"
                );
            }
        }
        // The conv weight block (first tensor): Lanczos top eigenvalue vs dense eigenvalues.
        let n0 = net.params[0].len();
        let block = Matrix::from_fn(n0, n0, |i, j| 0.5 * (h.get(i, j) + h.get(j, i)));
        let dense_top = jacobi_eigenvalues(&block)
            .into_iter()
            .fold(f64::NEG_INFINITY, f64::max);
        let op = BlockOp {
            obj: &obj,
            range: 0..n0,
        };
        assert_eq!(op.dim(), n0);
        let res = lanczos(
            &op,
            Which::Largest(1),
            &LanczosOptions {
                max_iter: n0,
                tol: 1e-10,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            (res.values[0] - dense_top).abs() <= 1e-5 * dense_top.abs().max(1.0),
            "{bm:?}: block top {} vs {dense_top}",
            res.values[0]
        );
        // Block traces from shared Hutchinson probes against the FD Hessian's diagonal.
        let mut ranges = Vec::new();
        let mut off = 0;
        for m in &net.params {
            ranges.push(off..off + m.len());
            off += m.len();
        }
        let est = landscape::linalg::block_hutchinson(&obj, &ranges, 400, 9).unwrap();
        for (r, e) in ranges.iter().zip(&est) {
            let exact: f64 = r.clone().map(|i| h.get(i, i)).sum();
            assert!(
                (e.estimate - exact).abs() <= 4.0 * e.std_error + 1e-6,
                "{bm:?}: block {r:?} trace {} +- {} vs {exact}",
                e.estimate,
                e.std_error
            );
        }
        // Batch-gradient norms: batches of 4 against direct gradients.
        let norms = obj.batch_gradient_norms(4).unwrap();
        assert_eq!(norms.len(), 2);
        for (c, nrm) in norms.iter().enumerate() {
            let xb = x.rows_view(c * 4, c * 4 + 4).to_owned();
            let g = grad_at(&net, &net.params, &xb, &y[c * 4..c * 4 + 4], mode);
            let direct = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!((nrm - direct).abs() <= 1e-12 * direct, "{bm:?}: batch {c}");
        }
    }
}

/// Compares a gradient or HVP with a PyTorch summary (norm, dot with
/// `sin(1.1 + 0.29 i)`, every s-th entry) at relative tolerance `tol`.
/// Entries are compared relative to their tensor, with a floor of `tol` times
/// the whole vector's norm (a bias before BatchNorm has a gradient that is zero
/// up to rounding on both sides).
fn check_summary(
    what: &str,
    ours: &[Matrix<f64>],
    names: &[String],
    summ: &serde_json::Value,
    tol: f64,
) {
    let total: f64 = names
        .iter()
        .map(|n| summ[n.as_str()]["norm"].as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    for (m, name) in ours.iter().zip(names) {
        let s = &summ[name.as_str()];
        let v = m.as_slice();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let rn = s["norm"].as_f64().unwrap();
        assert!(
            (norm - rn).abs() <= tol * rn.max(total),
            "{what} {name}: norm {norm} vs {rn}"
        );
        let dot: f64 = v
            .iter()
            .enumerate()
            .map(|(i, x)| x * (1.1 + 0.29 * i as f64).sin())
            .sum();
        let rd = s["dot"].as_f64().unwrap();
        assert!(
            (dot - rd).abs() <= tol * rd.abs().max(rn).max(total),
            "{what} {name}: dot {dot} vs {rd}"
        );
        let stride = s["stride"].as_u64().unwrap() as usize;
        let vals = s["values"].as_array().unwrap();
        let scale = vals
            .iter()
            .fold(0.0f64, |a, x| a.max(x.as_f64().unwrap().abs()))
            .max(rn / (v.len() as f64).sqrt())
            .max(total * 1e-3);
        for (k, r) in vals.iter().enumerate() {
            let r = r.as_f64().unwrap();
            let o = v[k * stride];
            assert!(
                (o - r).abs() <= tol * scale,
                "{what} {name}[{}]: {o} vs {r}",
                k * stride
            );
        }
    }
}

#[test]
fn presets_agree_with_pytorch() {
    use landscape::nn::BatchNormConfig;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 11, "fixtures missing in {}", dir.display());
    for f in files {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let name = doc["preset"].as_str().unwrap();
        let sh: Vec<usize> = doc["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let shape = [sh[0], sh[1], sh[2]];
        let (n, classes) = (
            doc["n"].as_u64().unwrap() as usize,
            doc["classes"].as_u64().unwrap() as usize,
        );
        let o = &doc["options"];
        let arch = if name == "mlp" {
            let act = Activation::from_name(o["activation"].as_str().unwrap()).unwrap();
            let cfg = MlpConfig {
                input_dim: shape.iter().product(),
                hidden: o["hidden"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect(),
                classes,
                activation: act,
                leaky_slope: 0.01,
                bias: o["bias"].as_bool().unwrap(),
                batchnorm: o["batchnorm"]
                    .as_bool()
                    .unwrap()
                    .then(BatchNormConfig::default),
                loss: LossKind::CrossEntropy,
            };
            landscape::nn::arch::from_mlp_config(&cfg, shape)
        } else {
            let mut po = preset_opts(shape);
            po.classes = classes;
            po.width = o["width"].as_u64().unwrap_or(16) as usize;
            preset(name, &po).unwrap()
        };
        let mut net = Network::<f64>::init(arch, Init::Torch, 1.0, 0).unwrap();
        net.fill_deterministic();
        let lay = net.arch.layout().unwrap();
        let theirs: Vec<(String, Vec<usize>)> = doc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as usize)
                        .collect(),
                )
            })
            .collect();
        let ours: Vec<(String, Vec<usize>)> = lay
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        assert_eq!(ours, theirs, "{}: state-dict names and shapes", f.display());
        assert_eq!(net.num_params() as u64, doc["num_params"].as_u64().unwrap());
        let d: usize = shape.iter().product();
        let x = Matrix::from_vec(
            n,
            d,
            (0..n * d).map(|j| (0.3 + 0.173 * j as f64).sin()).collect(),
        );
        let y: Vec<usize> = (0..n).map(|k| k % classes).collect();
        let names: Vec<String> = net.named_params().into_iter().map(|(s, _)| s).collect();
        let v: Vec<Matrix<f64>> = net
            .params
            .iter()
            .enumerate()
            .map(|(t, p)| {
                Matrix::from_vec(
                    p.rows(),
                    p.cols(),
                    (0..p.len())
                        .map(|i| (2.0 + 0.417 * i as f64 + 0.91 * t as f64).sin())
                        .collect(),
                )
            })
            .collect();
        for (mode, key) in [(Mode::Eval, "eval"), (Mode::Train, "train")] {
            let r = &doc["modes"][key];
            let tag = format!("{} ({key})", f.file_name().unwrap().to_string_lossy());
            // 1e-10, or 1000x the case's own conditioning as the fixture measured it
            // (PyTorch against itself under a batch reversal or a 1e-15 input
            // scaling): deep nets without shortcuts in train mode amplify rounding.
            let sens = r["sensitivity"].as_f64().unwrap();
            let tol = (1e3 * sens).max(1e-10);
            if tol >= 1e-2 {
                eprintln!(
                    "{tag}: no value comparison, PyTorch changes by {sens:.1e} against itself"
                );
                continue;
            }
            let tape = Tape::new();
            let vars = net.params_on_tape(&tape);
            let (loss, fwd) = net.loss_tape(&vars, &x, &y, mode);
            let z = fwd.logits.value().clone();
            let rz = r["logits"].as_array().unwrap();
            let zscale = z.max_abs().max(1e-3);
            for (i, row) in rz.iter().enumerate() {
                for (k, t) in row.as_array().unwrap().iter().enumerate() {
                    let t = t.as_f64().unwrap();
                    assert!(
                        (z.get(i, k) - t).abs() <= tol * zscale,
                        "{tag}: logit [{i},{k}] {} vs {t}",
                        z.get(i, k)
                    );
                }
            }
            let rl = r["loss"].as_f64().unwrap();
            assert!(
                (loss.item() - rl).abs() <= tol * rl.abs(),
                "{tag}: loss {} vs {rl}",
                loss.item()
            );
            let g: Vec<Matrix<f64>> = tape
                .grad(loss, &vars)
                .iter()
                .map(|g| g.value().clone())
                .collect();
            check_summary(&format!("{tag} grad"), &g, &names, &r["grad"], tol);
            let (_, _, hv) = hvp(&net.params, &v, |_t, p| net.loss_tape(p, &x, &y, mode).0);
            check_summary(&format!("{tag} hvp"), &hv, &names, &r["hvp"], tol);
            if mode == Mode::Train {
                let mut after = net.clone();
                after.update_running_stats(&fwd.batch_stats);
                let bn_names: Vec<String> = lay
                    .tensors
                    .iter()
                    .filter(|t| t.name.ends_with(".running_mean"))
                    .map(|t| t.name.trim_end_matches(".running_mean").to_string())
                    .collect();
                for (b, bname) in bn_names.iter().enumerate() {
                    let rr = &r["running"][bname.as_str()];
                    for (ours, key) in [
                        (&after.bn[b].running_mean, "running_mean"),
                        (&after.bn[b].running_var, "running_var"),
                    ] {
                        let theirs = rr[key].as_array().unwrap();
                        for (o, t) in ours.as_slice().iter().zip(theirs) {
                            let t = t.as_f64().unwrap();
                            assert!(
                                (o - t).abs() <= tol * t.abs().max(1.0),
                                "{tag}: {bname}.{key} {o} vs {t}"
                            );
                        }
                    }
                    assert_eq!(
                        after.bn[b].num_batches_tracked,
                        rr["num_batches_tracked"].as_u64().unwrap()
                    );
                }
            }
        }
    }
}

#[test]
fn filter_normalisation_of_conv_and_linear_directions() {
    use landscape::experiments::geometry::{normalize_network_direction, Normalization};
    let net = tiny_bn_net(41);
    let mut rng = Rng::new(5);
    let mut d: Vec<f64> = (0..net.num_params()).map(|_| rng.normal()).collect();
    normalize_network_direction(&net, &mut d, Normalization::Filter, false).unwrap();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut off = 0;
    for (name, w) in net.named_params() {
        let block = &d[off..off + w.len()];
        off += w.len();
        if name.ends_with(".weight") && w.rows() > 1 && !name.starts_with("b1") {
            // Each output filter (row of the matrix form) has the weights' filter norm.
            for (a, row) in block.chunks(w.cols()).enumerate() {
                assert!(
                    (norm(row) - norm(w.row(a))).abs() <= 1e-12 * norm(w.row(a)),
                    "{name} row {a}"
                );
            }
        } else {
            assert!(
                block.iter().all(|&v| v == 0.0),
                "{name}: bias and BN directions are zeroed"
            );
        }
    }
    // Conv filters are rows of out x (in k k): the conv here has 2 filters of 2*3*3 = 18 weights.
    assert_eq!(net.params[0].shape(), (2, 18));
}

#[test]
fn committed_mlp_fixtures_give_bit_identical_results_through_the_network_type() {
    use landscape::io::model_file::{load_mlp_f64, ImportOptions};
    use landscape::io::network_file::{load_network, NetworkImport};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for f in [
        "mlp_leaky_mse",
        "mlp_relu_ce",
        "mlp_tanh_bn_nobias",
        "cex_l1",
        "cex_l3",
        "torch_sequential",
    ] {
        let p = dir.join(format!("{f}.safetensors"));
        let mlp = load_mlp_f64(&p, &ImportOptions::default()).unwrap();
        let (net, _) = load_network::<f64>(&p, &NetworkImport::default()).unwrap();
        assert_eq!(net.to_mlp().as_ref(), Some(&mlp), "{f}: same model");
        assert_eq!(
            net.param_vector(),
            mlp.param_vector(),
            "{f}: same parameter order"
        );
        let d = mlp.config.input_dim;
        let mut rng = Rng::new(3);
        let x = Matrix::from_fn(7, d, |_, _| rng.normal());
        let y: Vec<usize> = (0..7).map(|i| i % mlp.config.classes).collect();
        // Evaluation goes through the MLP code where it applies: the same bits.
        let (l1, e1) = landscape::train::evaluate(&mlp, &x, &y).unwrap();
        let (l2, e2) = landscape::train::evaluate_network(&net, &x, &y).unwrap();
        assert_eq!(
            (l1.to_bits(), e1.to_bits()),
            (l2.to_bits(), e2.to_bits()),
            "{f}"
        );
        // The tape forward of the network agrees with the MLP forward.
        let z = net.logits(&x).unwrap();
        let zm = mlp.logits(&x).unwrap();
        let scale = zm.max_abs().max(1.0);
        for (a, b) in z.as_slice().iter().zip(zm.as_slice()) {
            assert!((a - b).abs() <= 1e-13 * scale, "{f}: {a} vs {b}");
        }
        assert_eq!(net.analytic_mlp().is_some(), mlp.config.batchnorm.is_none());
    }
}

/// Kept recordings (`NetObjective::linearized`): f64 products are bit-identical to
/// fresh double-backward products, in any order and repeated (the tape is cut back
/// after each); f32 products are close; `lanczos_mixed` on them reports the
/// eigenvalues of the dense f64 Hessian (columns `H e_j`).
#[test]
fn kept_recordings_give_the_same_products_and_certified_eigenvalues() {
    use landscape::hessian::network::{BnMode, NetObjective};
    use landscape::hessian::small_eig::jacobi_eigenvalues;
    use landscape::linalg::{lanczos_mixed, LanczosOptions, Which};
    let net = tiny_bn_net(41);
    let (x, y) = data(150, 50, 3, 42);
    for bm in [BnMode::Eval, BnMode::Train { batch: 50 }] {
        let obj = NetObjective::new(&net, &x, &y, bm).unwrap();
        let p = obj.dim();
        let mut rng = Rng::new(43);
        let v1: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
        let v2: Vec<f64> = (0..p).map(|_| rng.normal()).collect();
        let lin = obj.linearized::<f64>();
        for v in [&v1, &v2, &v1] {
            let kept = lin.hvp(v);
            let fresh = obj.hvp(v);
            assert!(
                kept.iter()
                    .zip(&fresh)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{bm:?}: kept and fresh products differ"
            );
        }
        assert!(lin.recorded_bytes() > 0);
        let single = obj.linearized::<f32>().hvp(&v1);
        let exact = obj.hvp(&v1);
        assert!(
            rel_err(&single, &exact) <= 1e-4,
            "{bm:?}: f32 product off by {}",
            rel_err(&single, &exact)
        );
        // Dense reference from unit-vector products.
        let mut h = Matrix::zeros(p, p);
        for j in 0..p {
            let mut e = vec![0.0; p];
            e[j] = 1.0;
            for (i, c) in obj.hvp(&e).into_iter().enumerate() {
                h.set(i, j, c);
            }
        }
        let hs = Matrix::from_fn(p, p, |i, j| 0.5 * (h.get(i, j) + h.get(j, i)));
        let mut ev = jacobi_eigenvalues(&hs);
        ev.sort_by(|a, b| a.total_cmp(b));
        let res = lanczos_mixed(
            obj.linearized::<f32>(),
            &obj.linearized::<f64>(),
            Which::BothEnds {
                largest: 1,
                smallest: 1,
            },
            &LanczosOptions {
                max_iter: p,
                tol: 1e-9,
                check_every: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let scale = ev[p - 1].abs().max(ev[0].abs());
        assert!(res.converged && res.approx_products > 0, "{bm:?}: {res:?}");
        for (got, want) in res.values.iter().zip([ev[p - 1], ev[0]]) {
            assert!(
                (got - want).abs() <= 1e-7 * scale,
                "{bm:?}: {got} vs dense {want}"
            );
        }
    }
}
