//! Integration tests: the autodiff tape against finite differences (f64).
//!
//! Gradients: central differences of the scalar function, step 1e-6 (relative
//! error <= 1e-6). Hessian-vector products from double backward: central
//! differences of the tape gradient along the direction, step 1e-5 (<= 1e-5).

use landscape::autodiff::ops::{batchnorm_train, mse, softmax_cross_entropy, weight_decay};
use landscape::autodiff::{hvp, Tape, Var};
use landscape::nn::{Activation, BatchNormConfig, Init, LossKind, Mlp, MlpConfig, Mode};
use landscape::rng::Rng;
use landscape::Matrix;
use proptest::prelude::*;

type Build = dyn for<'t> Fn(&'t Tape<f64>, &[Var<'t, f64>]) -> Var<'t, f64>;
type Case = (&'static str, Vec<Matrix<f64>>, Box<Build>);

fn random(rows: usize, cols: usize, rng: &mut Rng) -> Matrix<f64> {
    Matrix::from_fn(rows, cols, |_, _| rng.normal())
}

/// Random matrix with entries bounded away from 0 (no ReLU kinks within FD reach).
fn random_away_from_zero(rows: usize, cols: usize, rng: &mut Rng) -> Matrix<f64> {
    Matrix::from_fn(rows, cols, |_, _| {
        let v = rng.normal();
        if v.abs() < 0.05 {
            v.signum() * 0.05 + v
        } else {
            v
        }
    })
}

fn eval(inputs: &[Matrix<f64>], f: &Build) -> f64 {
    let tape = Tape::new();
    let vars: Vec<_> = inputs.iter().map(|m| tape.param(m.clone())).collect();
    f(&tape, &vars).item()
}

fn tape_grad(inputs: &[Matrix<f64>], f: &Build) -> Vec<Matrix<f64>> {
    let tape = Tape::new();
    let vars: Vec<_> = inputs.iter().map(|m| tape.param(m.clone())).collect();
    let y = f(&tape, &vars);
    tape.grad(y, &vars)
        .iter()
        .map(|g| g.value().clone())
        .collect()
}

fn flatten(ms: &[Matrix<f64>]) -> Vec<f64> {
    ms.iter().flat_map(|m| m.as_slice().to_vec()).collect()
}

/// max |a - b| / max(max |b|, 1e-3).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-3);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn fd_grad(inputs: &[Matrix<f64>], f: &Build, h: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for k in 0..inputs.len() {
        for e in 0..inputs[k].len() {
            let mut plus = inputs.to_vec();
            let mut minus = inputs.to_vec();
            plus[k].as_mut_slice()[e] += h;
            minus[k].as_mut_slice()[e] -= h;
            out.push((eval(&plus, f) - eval(&minus, f)) / (2.0 * h));
        }
    }
    out
}

fn check_grad(name: &str, inputs: &[Matrix<f64>], f: &Build) {
    let g = flatten(&tape_grad(inputs, f));
    let fd = fd_grad(inputs, f, 1e-6);
    let e = rel_err(&g, &fd);
    assert!(e <= 1e-6, "{name}: gradient relative error {e:.3e}");
}

fn check_hvp(name: &str, inputs: &[Matrix<f64>], f: &Build, seed: u64) {
    let mut rng = Rng::new(seed);
    let v: Vec<Matrix<f64>> = inputs
        .iter()
        .map(|m| random(m.rows(), m.cols(), &mut rng))
        .collect();
    let (_, _, hv) = hvp(inputs, &v, |t, vars| f(t, vars));
    let eps = 1e-5;
    let shifted = |s: f64| -> Vec<f64> {
        let moved: Vec<Matrix<f64>> = inputs
            .iter()
            .zip(&v)
            .map(|(m, d)| {
                let mut m = m.clone();
                m.axpy(s, d);
                m
            })
            .collect();
        flatten(&tape_grad(&moved, f))
    };
    let gp = shifted(eps);
    let gm = shifted(-eps);
    let fd: Vec<f64> = gp
        .iter()
        .zip(&gm)
        .map(|(a, b)| (a - b) / (2.0 * eps))
        .collect();
    let e = rel_err(&flatten(&hv), &fd);
    assert!(e <= 1e-5, "{name}: HVP relative error {e:.3e}");
}

/// Weighted sum `sum(out .* R)` so every output entry matters with its own weight.
fn weighted<'t>(tape: &'t Tape<f64>, out: Var<'t, f64>, seed: u64) -> Var<'t, f64> {
    let (r, c) = out.shape();
    let mut rng = Rng::new(seed);
    out.mul(tape.constant(random(r, c, &mut rng))).sum()
}

#[test]
fn every_primitive_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let (a, b) = (random(3, 7, &mut rng), random(7, 2, &mut rng));
    let sq = random(3, 7, &mut rng);
    let pos = Matrix::from_fn(3, 7, |i, j| 0.5 + ((i * 7 + j) as f64 * 0.37).sin().abs());
    let row = random(1, 7, &mut rng);
    let col = random(3, 1, &mut rng);
    let kinks = random_away_from_zero(3, 7, &mut rng);

    let cases: Vec<Case> = vec![
        (
            "matmul",
            vec![a.clone(), b.clone()],
            Box::new(|t, v| weighted(t, v[0].matmul(v[1]), 1)),
        ),
        (
            "matmul_t(a^T b^T)",
            vec![a.transpose(), b.transpose()],
            Box::new(|t, v| weighted(t, v[0].matmul_t(v[1], true, true), 2)),
        ),
        (
            "matmul_t(a b^T)",
            vec![a.clone(), sq.clone()],
            Box::new(|t, v| weighted(t, v[0].matmul_t(v[1], false, true), 3)),
        ),
        (
            "add",
            vec![a.clone(), sq.clone()],
            Box::new(|t, v| weighted(t, v[0].add(v[1]), 4)),
        ),
        (
            "sub",
            vec![a.clone(), sq.clone()],
            Box::new(|t, v| weighted(t, v[0].sub(v[1]), 5)),
        ),
        (
            "mul",
            vec![a.clone(), sq.clone()],
            Box::new(|t, v| weighted(t, v[0].mul(v[1]), 6)),
        ),
        (
            "scale",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].scale(-2.5), 7)),
        ),
        (
            "add_scalar",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].add_scalar(0.3), 8)),
        ),
        (
            "square",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].square(), 9)),
        ),
        (
            "exp",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].exp(), 10)),
        ),
        (
            "ln",
            vec![pos.clone()],
            Box::new(|t, v| weighted(t, v[0].ln(), 11)),
        ),
        (
            "tanh",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].tanh(), 12)),
        ),
        (
            "sqrt",
            vec![pos.clone()],
            Box::new(|t, v| weighted(t, v[0].sqrt(), 13)),
        ),
        (
            "recip",
            vec![pos.clone()],
            Box::new(|t, v| weighted(t, v[0].recip(), 14)),
        ),
        (
            "relu",
            vec![kinks.clone()],
            Box::new(|t, v| weighted(t, v[0].relu(), 15)),
        ),
        (
            "leaky_relu",
            vec![kinks.clone()],
            Box::new(|t, v| weighted(t, v[0].leaky_relu(0.1), 16)),
        ),
        (
            "broadcast row",
            vec![row.clone()],
            Box::new(|t, v| weighted(t, v[0].broadcast(3, 7), 17)),
        ),
        (
            "add_row",
            vec![a.clone(), row.clone()],
            Box::new(|t, v| weighted(t, v[0].add_row(v[1]).square(), 31)),
        ),
        (
            "mul_row",
            vec![a.clone(), row.clone()],
            Box::new(|t, v| weighted(t, v[0].mul_row(v[1]).square(), 32)),
        ),
        (
            "col_dot",
            vec![a.clone(), sq.clone()],
            Box::new(|t, v| weighted(t, v[0].col_dot(v[1]).square(), 33)),
        ),
        (
            "broadcast col",
            vec![col.clone()],
            Box::new(|t, v| weighted(t, v[0].broadcast(3, 7), 18)),
        ),
        (
            "sum_to rows",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].sum_to(1, 7), 19)),
        ),
        (
            "sum_to cols",
            vec![a.clone()],
            Box::new(|t, v| weighted(t, v[0].sum_to(3, 1), 20)),
        ),
        (
            "dot",
            vec![a.clone(), sq.clone()],
            Box::new(|_, v| v[0].dot(v[1])),
        ),
        (
            "softmax cross-entropy",
            vec![random(5, 3, &mut rng)],
            Box::new(|_, v| softmax_cross_entropy(v[0], &[0, 2, 1, 1, 0])),
        ),
        (
            "mse",
            vec![random(5, 3, &mut rng)],
            Box::new(|_, v| mse(v[0], &[0, 2, 1, 1, 0])),
        ),
        (
            "batchnorm (affine)",
            vec![
                random(7, 3, &mut rng),
                random(1, 3, &mut rng),
                random(1, 3, &mut rng),
            ],
            Box::new(|t, v| {
                weighted(
                    t,
                    batchnorm_train(v[0], Some(v[1]), Some(v[2]), 1e-5).out,
                    21,
                )
            }),
        ),
        (
            "batchnorm (no affine)",
            vec![random(2, 3, &mut rng)],
            Box::new(|t, v| weighted(t, batchnorm_train(v[0], None, None, 1e-3).out, 22)),
        ),
        (
            // A nonlinear consumer: the backward node's cotangent depends on the
            // input, so the HVP exercises both of its derivatives.
            "batchnorm then square (7 x 3)",
            vec![random(7, 3, &mut rng)],
            Box::new(|t, v| weighted(t, batchnorm_train(v[0], None, None, 1e-3).out.square(), 23)),
        ),
        (
            "batchnorm then tanh (5 x 1)",
            vec![random(5, 1, &mut rng)],
            Box::new(|t, v| weighted(t, batchnorm_train(v[0], None, None, 1e-2).out.tanh(), 24)),
        ),
        (
            "weight decay",
            vec![a.clone(), row.clone()],
            Box::new(|_, v| weight_decay(v, 0.3).unwrap()),
        ),
    ];
    for (i, (name, inputs, f)) in cases.iter().enumerate() {
        check_grad(name, inputs, f.as_ref());
        check_hvp(name, inputs, f.as_ref(), 100 + i as u64);
    }
}

fn mlp_config(
    widths: &[usize],
    act: Activation,
    bias: bool,
    bn: Option<bool>,
    loss: LossKind,
) -> MlpConfig {
    MlpConfig {
        input_dim: widths[0],
        hidden: widths[1..widths.len() - 1].to_vec(),
        classes: *widths.last().unwrap(),
        activation: act,
        leaky_slope: 0.05,
        bias,
        batchnorm: bn.map(|affine| BatchNormConfig {
            affine,
            ..Default::default()
        }),
        loss,
    }
}

fn labels(n: usize, k: usize) -> Vec<usize> {
    (0..n).map(|i| (i * 7 + 3) % k).collect()
}

/// Whole MLPs: the tape gradient against central differences of the *plain*
/// forward pass (an independent implementation), in evaluation mode.
#[test]
fn mlp_gradients_match_finite_differences_of_plain_forward() {
    let archs: [&[usize]; 4] = [&[3, 2], &[7, 1, 3], &[2, 31, 7, 3], &[5, 3, 2, 7, 2]];
    let mut seed = 0;
    for widths in archs {
        for act in [
            Activation::Relu,
            Activation::Tanh,
            Activation::Identity,
            Activation::LeakyRelu,
        ] {
            for bias in [true, false] {
                for loss in [LossKind::CrossEntropy, LossKind::Mse] {
                    for bn in [None, Some(true), Some(false)] {
                        if bn.is_some() && widths.len() < 3 {
                            continue;
                        }
                        seed += 1;
                        let cfg = mlp_config(widths, act, bias, bn, loss);
                        let mut model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, seed).unwrap();
                        // Non-trivial running statistics.
                        for layer in &mut model.layers {
                            if let Some(bn) = &mut layer.bn {
                                bn.running_mean = bn.running_mean.map(|_| 0.1);
                                bn.running_var = bn.running_var.map(|_| 1.7);
                            }
                        }
                        let mut rng = Rng::new(seed + 1000);
                        let n = 6;
                        let x = random(n, widths[0], &mut rng);
                        let y = labels(n, *widths.last().unwrap());
                        let theta = model.param_vector();
                        let (_, grads, _) =
                            landscape::train::loss_and_grad(&model, &x, &y, Mode::Eval);
                        let g = flatten(&grads);
                        let h = 1e-6;
                        let f = |th: &[f64]| {
                            let mut m = model.clone();
                            m.set_param_vector(th).unwrap();
                            m.config.loss.mean(&m.logits(&x).unwrap(), &y)
                        };
                        let fd: Vec<f64> = (0..theta.len())
                            .map(|i| {
                                let mut p = theta.clone();
                                let mut q = theta.clone();
                                p[i] += h;
                                q[i] -= h;
                                (f(&p) - f(&q)) / (2.0 * h)
                            })
                            .collect();
                        // Skip draws that sit on a ReLU kink within FD reach.
                        let pre = model.forward(&x).unwrap().pre;
                        let near_kink = pre
                            .iter()
                            .flat_map(|m| m.as_slice())
                            .any(|z| z.abs() < 1e-4);
                        if act.is_piecewise_linear() && near_kink {
                            continue;
                        }
                        let e = rel_err(&g, &fd);
                        assert!(
                            e <= 1e-6,
                            "{widths:?} {act:?} bias={bias} {loss:?} bn={bn:?}: rel err {e:.3e}"
                        );
                    }
                }
            }
        }
    }
}

/// Training-mode BatchNorm MLPs: gradients and double-backward HVPs of the
/// recorded loss against finite differences.
#[test]
fn mlp_training_mode_gradient_and_hvp() {
    for (i, act) in [Activation::Tanh, Activation::Relu].into_iter().enumerate() {
        let cfg = mlp_config(&[4, 7, 3, 3], act, true, Some(true), LossKind::CrossEntropy);
        let model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 5 + i as u64).unwrap();
        let mut rng = Rng::new(77);
        let x = random(9, 4, &mut rng);
        let y = labels(9, 3);
        let params: Vec<Matrix<f64>> = model
            .named_params()
            .into_iter()
            .map(|(_, m)| m.clone())
            .collect();
        let f: Box<Build> = Box::new(move |t, v| {
            let xv = t.constant(x.clone());
            model.loss_tape(v, xv, &y, Mode::Train).0
        });
        check_grad("bn mlp (train mode)", &params, f.as_ref());
        check_hvp("bn mlp (train mode)", &params, f.as_ref(), 9);
    }
}

/// Double-backward HVPs of whole MLP losses against FD of the tape gradient,
/// and the Hessian symmetry `u^T H v = v^T H u`.
#[test]
fn mlp_hvp_matches_finite_differences_and_is_symmetric() {
    for (k, act) in [Activation::Tanh, Activation::Relu, Activation::Identity]
        .into_iter()
        .enumerate()
    {
        for bias in [true, false] {
            let cfg = mlp_config(&[5, 7, 3, 4], act, bias, None, LossKind::CrossEntropy);
            let model = Mlp::<f64>::init(cfg, Init::Kaiming, 1.0, 40 + k as u64).unwrap();
            let mut rng = Rng::new(3);
            let x = random_away_from_zero(8, 5, &mut rng);
            let y = labels(8, 4);
            let params: Vec<Matrix<f64>> = model
                .named_params()
                .into_iter()
                .map(|(_, m)| m.clone())
                .collect();
            let m2 = model.clone();
            let f: Box<Build> = Box::new(move |t, v| {
                let xv = t.constant(x.clone());
                m2.loss_tape(v, xv, &y, Mode::Eval).0
            });
            check_hvp("mlp", &params, f.as_ref(), 50 + k as u64);
            let u: Vec<Matrix<f64>> = params
                .iter()
                .map(|m| random(m.rows(), m.cols(), &mut rng))
                .collect();
            let w: Vec<Matrix<f64>> = params
                .iter()
                .map(|m| random(m.rows(), m.cols(), &mut rng))
                .collect();
            let (_, _, hu) = hvp(&params, &u, |t, v| f(t, v));
            let (_, _, hw) = hvp(&params, &w, |t, v| f(t, v));
            let a: f64 = flatten(&hu)
                .iter()
                .zip(flatten(&w))
                .map(|(p, q)| p * q)
                .sum();
            let b: f64 = flatten(&hw)
                .iter()
                .zip(flatten(&u))
                .map(|(p, q)| p * q)
                .sum();
            assert!((a - b).abs() <= 1e-10 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}

/// Closed form: for `f(W) = 1/2 ||W x||^2`, `grad = W x x^T` and `H v = v x x^T`.
#[test]
fn quadratic_closed_form() {
    let w = Matrix::from_vec(2, 3, vec![1.0, -2.0, 0.5, 3.0, 0.0, -1.0]);
    let x = Matrix::from_vec(3, 1, vec![2.0, 1.0, -1.0]);
    let v = Matrix::from_vec(2, 3, vec![0.0, 1.0, 0.0, -1.0, 2.0, 1.0]);
    let xx = x.clone();
    let (f, g, hv) = hvp(
        std::slice::from_ref(&w),
        std::slice::from_ref(&v),
        move |t, p| {
            p[0].matmul(t.constant(xx.clone()))
                .square()
                .sum()
                .scale(0.5)
        },
    );
    let wx = landscape::tensor::matmul(w.view(), x.view());
    assert!((f - 0.5 * wx.as_slice().iter().map(|a| a * a).sum::<f64>()).abs() < 1e-14);
    let expect_g = landscape::tensor::matmul(wx.view(), x.t());
    let expect_hv =
        landscape::tensor::matmul(landscape::tensor::matmul(v.view(), x.view()).view(), x.t());
    assert_eq!(g[0], expect_g);
    assert_eq!(hv[0], expect_hv);
}

/// The gradient of a gradient norm (needed by SAM-style penalties): for
/// `f = 1/2 ||grad L||^2`, `grad f = H grad L`.
#[test]
fn gradient_of_gradient_norm_is_hessian_times_gradient() {
    let cfg = mlp_config(
        &[3, 5, 3],
        Activation::Tanh,
        true,
        None,
        LossKind::CrossEntropy,
    );
    let model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 8).unwrap();
    let mut rng = Rng::new(4);
    let x = random(6, 3, &mut rng);
    let y = labels(6, 3);
    let params: Vec<Matrix<f64>> = model
        .named_params()
        .into_iter()
        .map(|(_, m)| m.clone())
        .collect();
    let tape = Tape::new();
    let vars: Vec<_> = params.iter().map(|p| tape.param(p.clone())).collect();
    let (loss, _) = model.loss_tape(&vars, tape.constant(x.clone()), &y, Mode::Eval);
    let g = tape.grad(loss, &vars);
    let mut sq = g[0].square().sum();
    for gi in &g[1..] {
        sq = sq.add(gi.square().sum());
    }
    let penalty_grad: Vec<Matrix<f64>> = tape
        .grad(sq.scale(0.5), &vars)
        .iter()
        .map(|v| v.value().clone())
        .collect();
    let gvals: Vec<Matrix<f64>> = g.iter().map(|v| v.value().clone()).collect();
    let (_, _, hg) = hvp(&params, &gvals, |t, v| {
        model.loss_tape(v, t.constant(x.clone()), &y, Mode::Eval).0
    });
    assert!(rel_err(&flatten(&penalty_grad), &flatten(&hg)) < 1e-12);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Matmul with every transpose combination on random awkward shapes.
    #[test]
    fn matmul_transposes_gradcheck(m in 1usize..6, k in 1usize..6, n in 1usize..6, ta: bool, tb: bool, seed in 0u64..1000) {
        let mut rng = Rng::new(seed);
        let a = if ta { random(k, m, &mut rng) } else { random(m, k, &mut rng) };
        let b = if tb { random(n, k, &mut rng) } else { random(k, n, &mut rng) };
        let f: Box<Build> = Box::new(move |t, v| weighted(t, v[0].matmul_t(v[1], ta, tb), seed));
        check_grad("matmul_t", &[a.clone(), b.clone()], f.as_ref());
        check_hvp("matmul_t", &[a, b], f.as_ref(), seed + 1);
    }
}

/// The convolution ops (`conv2d`, and through double backward `conv2d_data`
/// and `conv2d_weight`) against finite differences: two stacked convolutions
/// with stride, padding and odd sizes, input and both weights differentiated.
#[test]
fn convolutions_match_finite_differences() {
    use landscape::autodiff::{ConvGeom, ConvShape};
    let mut rng = Rng::new(23);
    let (n, c0, h, w) = (2, 3, 7, 5);
    let g1 = std::sync::Arc::new(ConvGeom::new(ConvShape {
        n,
        c_in: c0,
        h,
        w,
        c_out: 5,
        k: 3,
        stride: 2,
        pad: 1,
    }));
    let (h1, w1) = (g1.shape.ho(), g1.shape.wo());
    let g2 = std::sync::Arc::new(ConvGeom::new(ConvShape {
        n,
        c_in: 5,
        h: h1,
        w: w1,
        c_out: 7,
        k: 3,
        stride: 1,
        pad: 1,
    }));
    let x = random(n * h * w, c0, &mut rng);
    let w1m = random(5, c0 * 9, &mut rng);
    let w2m = random(7, 5 * 9, &mut rng);
    let (ga, gb) = (g1.clone(), g2.clone());
    let build: Box<Build> = Box::new(move |t, v| {
        let z = v[0].conv2d(v[1], ga.clone()).tanh();
        let y = z.conv2d(v[2], gb.clone());
        weighted(t, y.square(), 5)
    });
    let inputs = vec![x, w1m, w2m];
    check_grad("conv2d", &inputs, &build);
    check_hvp("conv2d", &inputs, &build, 9);
}

/// `sum_k <a_k, b_k>` over matching tensor lists, on the tape.
fn pair_dot<'t>(tape: &'t Tape<f64>, a: &[Var<'t, f64>], b: &[Matrix<f64>]) -> Var<'t, f64> {
    a.iter()
        .zip(b)
        .map(|(x, m)| x.dot(tape.constant(m.clone())))
        .reduce(|p, q| p.add(q))
        .unwrap()
}

/// Third order by triple backward: the gradient of `<H(theta) v, w>`.
fn tape_third(inputs: &[Matrix<f64>], v: &[Matrix<f64>], w: &[Matrix<f64>], f: &Build) -> Vec<f64> {
    let tape = Tape::new();
    let vars: Vec<_> = inputs.iter().map(|m| tape.param(m.clone())).collect();
    let y = f(&tape, &vars);
    let g = tape.grad(y, &vars);
    let hv = tape.grad(pair_dot(&tape, &g, v), &vars);
    let t = tape.grad(pair_dot(&tape, &hv, w), &vars);
    flatten(&t.iter().map(|x| x.value().clone()).collect::<Vec<_>>())
}

/// The fused BatchNorm normalisation `xhat = (x - mean) / sqrt(var + eps)`
/// (`Var::bn_normalize`) on odd shapes: its gradient against central
/// differences of the loss (step 1e-6), its double-backward HVP against
/// central differences of tape gradients (step 1e-5), and its triple-backward
/// third derivative `grad <H v, w>` against central differences of HVPs
/// (step 1e-5); relative error <= 1e-6 for the first two, <= 1e-5 for the third.
#[test]
fn fused_batchnorm_normalize_matches_finite_differences_to_third_order() {
    let mut rng = Rng::new(2024);
    for &(n, d) in &[(5, 1), (7, 3), (5, 3), (7, 1), (2, 3)] {
        for &eps in &[1e-5, 0.3] {
            let x = random(n, d, &mut rng);
            let gamma = random(1, d, &mut rng);
            let cases: Vec<Case> = vec![
                (
                    "xhat (linear readout)",
                    vec![x.clone()],
                    Box::new(move |t, v| weighted(t, v[0].bn_normalize(eps).0, 41)),
                ),
                (
                    "tanh(gamma xhat) + x .* xhat",
                    vec![x.clone(), gamma.clone()],
                    Box::new(move |t, v| {
                        let xh = v[0].bn_normalize(eps).0;
                        let a = weighted(t, xh.mul_row(v[1]).tanh(), 42);
                        a.add(weighted(t, v[0].mul(xh), 43))
                    }),
                ),
                (
                    "batchnorm_train (affine) squared",
                    vec![x.clone(), gamma.clone(), random(1, d, &mut rng)],
                    Box::new(move |t, v| {
                        let o = batchnorm_train(v[0], Some(v[1]), Some(v[2]), eps).out;
                        weighted(t, o.square(), 44)
                    }),
                ),
            ];
            for (k, (name, inputs, f)) in cases.iter().enumerate() {
                let tag = format!("{name} n={n} d={d} eps={eps}");
                let f = f.as_ref();
                let g = flatten(&tape_grad(inputs, f));
                let e = rel_err(&g, &fd_grad(inputs, f, 1e-6));
                assert!(e <= 1e-6, "{tag}: gradient relative error {e:.3e}");

                let dirs = |seed: u64| -> Vec<Matrix<f64>> {
                    let mut r = Rng::new(seed);
                    inputs
                        .iter()
                        .map(|m| random(m.rows(), m.cols(), &mut r))
                        .collect()
                };
                let (v, w) = (dirs(300 + k as u64), dirs(400 + k as u64));
                let moved = |s: f64, dir: &[Matrix<f64>]| -> Vec<Matrix<f64>> {
                    inputs
                        .iter()
                        .zip(dir)
                        .map(|(m, u)| {
                            let mut m = m.clone();
                            m.axpy(s, u);
                            m
                        })
                        .collect()
                };
                let h = 1e-5;
                let (_, _, hv) = hvp(inputs, &v, |t, vars| f(t, vars));
                let gp = flatten(&tape_grad(&moved(h, &v), f));
                let gm = flatten(&tape_grad(&moved(-h, &v), f));
                let fd: Vec<f64> = gp
                    .iter()
                    .zip(&gm)
                    .map(|(a, b)| (a - b) / (2.0 * h))
                    .collect();
                let e = rel_err(&flatten(&hv), &fd);
                assert!(e <= 1e-6, "{tag}: HVP relative error {e:.3e}");

                let third = tape_third(inputs, &v, &w, f);
                let hvw = |s: f64| flatten(&hvp(&moved(s, &w), &v, |t, vars| f(t, vars)).2);
                let (hp, hm) = (hvw(h), hvw(-h));
                let fd3: Vec<f64> = hp
                    .iter()
                    .zip(&hm)
                    .map(|(a, b)| (a - b) / (2.0 * h))
                    .collect();
                let e = rel_err(&third, &fd3);
                assert!(e <= 1e-5, "{tag}: third-derivative relative error {e:.3e}");
            }
        }
    }
}

/// The fused BatchNorm's column sums run in fixed row blocks: value, gradient
/// and HVP are the same bits with 1 and 3 rayon threads (on a shape with
/// several blocks).
#[test]
fn fused_batchnorm_is_bit_identical_across_thread_counts() {
    let mut rng = Rng::new(77);
    let (n, d) = (9000, 7);
    let inputs = vec![random(n, d, &mut rng), random(1, d, &mut rng)];
    let v = vec![random(n, d, &mut rng), random(1, d, &mut rng)];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            hvp(&inputs, &v, |t, vars| {
                let o = batchnorm_train(vars[0], Some(vars[1]), None, 1e-5).out;
                weighted(t, o.tanh(), 45)
            })
        })
    };
    let (f1, g1, h1) = run(1);
    let (f3, g3, h3) = run(3);
    assert_eq!(f1.to_bits(), f3.to_bits());
    let bits =
        |ms: &[Matrix<f64>]| -> Vec<u64> { flatten(ms).iter().map(|x| x.to_bits()).collect() };
    assert_eq!(bits(&g1), bits(&g3));
    assert_eq!(bits(&h1), bits(&h3));
}
