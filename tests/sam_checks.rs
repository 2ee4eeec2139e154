//! Integration tests of the curvature-aware training methods (src/optim/methods.rs) and
//! SAM on the sphere: bit-identity with plain SGD at rho = 0 / lambda = 0, SAM and ASAM
//! against hand computations on a linear model, penalty gradients against finite
//! differences (the trace penalty against the analytic dense Hessian's trace), BatchNorm
//! running statistics untouched by the perturbed passes, and one-line CLI errors.

use crate::common::{mlp_config, TempDir};
use landscape::data::Dataset;
use landscape::experiments::sphere::{
    project_tangent, sam_ascent_point, si_architecture, train_on_sphere, ElrSchedule, FisherMethod,
    MetricsConfig, NoHooks, RadiusMode, SiSpec, SphereRun, SphereRunConfig, Spheres, StepKind,
};
use landscape::hessian::{dense_hessian, Part};
use landscape::nn::{Activation, BatchNormConfig, Init, LossKind, Mlp, Network};
use landscape::optim::methods::{
    grad_norm_penalty_grad, method_grad, sam_perturbation, trace_penalty_grad,
    trace_penalty_grad_fd, GradNormForm, TraceForm, TrainMethod,
};
use landscape::rng::Rng;
use landscape::train::{train, train_with_method, Optimizer, TrainConfig, TrainModel};
use landscape::Matrix;
use std::process::Command;

fn blobs(n: usize, d: usize, k: usize, seed: u64) -> (Matrix<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..d).map(|_| 2.0 * rng.normal()).collect())
        .collect();
    let y: Vec<usize> = (0..n).map(|i| i % k).collect();
    let x = Matrix::from_fn(n, d, |i, j| centres[y[i]][j] + 0.5 * rng.normal());
    (x, y)
}

fn sgd(lr: f64) -> Optimizer {
    Optimizer::Sgd {
        lr,
        momentum: 0.9,
        weight_decay: 1e-3,
    }
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn tiny_mlp(widths: &[usize], act: Activation, seed: u64) -> Mlp<f64> {
    Mlp::init(
        mlp_config(widths, act, true, LossKind::CrossEntropy),
        Init::Kaiming,
        1.0,
        seed,
    )
    .unwrap()
}

#[test]
fn zero_radius_and_zero_penalty_reproduce_sgd_bit_for_bit() {
    let (x, y) = blobs(45, 5, 3, 1);
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 8,
        optimizer: sgd(0.05),
        seed: 4,
    };
    let zero_methods = [
        TrainMethod::Sam {
            rho: 0.0,
            chunk: None,
        },
        TrainMethod::GradNormPenalty {
            lambda: 0.0,
            form: GradNormForm::Exact,
        },
        TrainMethod::GradNormPenalty {
            lambda: 0.0,
            form: GradNormForm::FiniteDifference { radius: 0.01 },
        },
        TrainMethod::Asam {
            rho: 0.0,
            eta: 0.01,
            chunk: None,
        },
    ];
    // The MLP fast path (analytic gradients) and the network engine (tape gradients).
    let base = tiny_mlp(&[5, 7, 3], Activation::Relu, 2);
    let mut plain = base.clone();
    train(&mut plain, &x, &y, None, &cfg, |_, _, _| {}, |_, _| Ok(())).unwrap();
    let mut plain_net = Network::from_mlp(&base);
    train(
        &mut plain_net,
        &x,
        &y,
        None,
        &cfg,
        |_, _, _| {},
        |_, _| Ok(()),
    )
    .unwrap();
    for m in &zero_methods {
        let mut model = base.clone();
        train_with_method(
            &mut model,
            &x,
            &y,
            None,
            &cfg,
            m,
            None,
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(
            bits(&model.param_vector()),
            bits(&plain.param_vector()),
            "{m:?} (MLP)"
        );
        let mut net = Network::from_mlp(&base);
        train_with_method(
            &mut net,
            &x,
            &y,
            None,
            &cfg,
            m,
            None,
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(
            bits(&net.param_vector()),
            bits(&plain_net.param_vector()),
            "{m:?} (network)"
        );
    }
    // A positive rho does change the trajectory.
    let mut sam = base.clone();
    let m = TrainMethod::Sam {
        rho: 0.05,
        chunk: None,
    };
    train_with_method(
        &mut sam,
        &x,
        &y,
        None,
        &cfg,
        &m,
        None,
        |_, _, _| {},
        |_, _| Ok(()),
    )
    .unwrap();
    assert_ne!(bits(&sam.param_vector()), bits(&plain.param_vector()));
}

/// A linear model `z = W x + b` with MSE `mean_i sum_k (z_ik - onehot_ik)^2`: its gradient
/// in closed form, `dW = (2/n) sum_i r_i x_i^T`, `db = (2/n) sum_i r_i`, `r = z - onehot`.
fn linear_grad(w: &[f64], b: &[f64], x: &Matrix<f64>, y: &[usize], k: usize) -> Vec<f64> {
    let (n, d) = x.shape();
    let mut gw = vec![0.0; k * d];
    let mut gb = vec![0.0; k];
    for (i, &yi) in y.iter().enumerate().take(n) {
        for c in 0..k {
            let z: f64 = (0..d).map(|j| w[c * d + j] * x.get(i, j)).sum::<f64>() + b[c];
            let r = z - if yi == c { 1.0 } else { 0.0 };
            for j in 0..d {
                gw[c * d + j] += 2.0 * r * x.get(i, j) / n as f64;
            }
            gb[c] += 2.0 * r / n as f64;
        }
    }
    gw.extend(gb);
    gw
}

fn linear_model(d: usize, k: usize) -> Mlp<f64> {
    Mlp::init(
        mlp_config(&[d, k], Activation::Relu, true, LossKind::Mse),
        Init::Kaiming,
        1.0,
        9,
    )
    .unwrap()
}

/// Hand SAM/ASAM step: `eps = rho T^2 g / ||T g||` (T = 1 for SAM), `w - lr g(w + eps)`.
fn hand_sam(
    w0: &[f64],
    x: &Matrix<f64>,
    y: &[usize],
    d: usize,
    k: usize,
    rho: f64,
    t: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let g = linear_grad(&w0[..k * d], &w0[k * d..], x, y, k);
    let n: f64 = g
        .iter()
        .zip(t)
        .map(|(gi, ti)| (gi * ti) * (gi * ti))
        .sum::<f64>()
        .sqrt();
    let eps: Vec<f64> = g
        .iter()
        .zip(t)
        .map(|(gi, ti)| rho * ti * ti * gi / n)
        .collect();
    let wp: Vec<f64> = w0.iter().zip(&eps).map(|(a, b)| a + b).collect();
    let g2 = linear_grad(&wp[..k * d], &wp[k * d..], x, y, k);
    (eps, g2)
}

#[test]
fn sam_and_asam_match_a_hand_computation_on_a_linear_model() {
    let (d, k, n) = (3, 2, 6);
    let (x, y) = blobs(n, d, k, 5);
    let model = linear_model(d, k);
    let w0 = model.param_vector();
    // The model's own gradient is the closed form.
    let (_, g, _) = model.clone().train_grad(&x, &y).unwrap();
    let flat: Vec<f64> = g.iter().flat_map(|m| m.as_slice().to_vec()).collect();
    let hand = linear_grad(&w0[..k * d], &w0[k * d..], &x, &y, k);
    for (a, b) in flat.iter().zip(&hand) {
        assert!((a - b).abs() < 1e-13, "{a} vs {b}");
    }
    let (rho, lr, eta) = (0.3, 0.1, 0.01);
    // ASAM's T: |w| + eta on the weight, 1 on the bias.
    let t_asam: Vec<f64> = w0
        .iter()
        .enumerate()
        .map(|(i, w)| if i < k * d { w.abs() + eta } else { 1.0 })
        .collect();
    for (method, t) in [
        (TrainMethod::Sam { rho, chunk: None }, vec![1.0; w0.len()]),
        (
            TrainMethod::Asam {
                rho,
                eta,
                chunk: None,
            },
            t_asam,
        ),
    ] {
        let (eps_hand, g2) = hand_sam(&w0, &x, &y, d, k, rho, &t);
        // The perturbation itself.
        let mut m = model.clone();
        let ps: Vec<Matrix<f64>> = m.params_mut().iter().map(|p| (**p).clone()).collect();
        let refs: Vec<&Matrix<f64>> = ps.iter().collect();
        let flags = [true, false];
        let asam = match method {
            TrainMethod::Asam { eta, .. } => Some((eta, &flags[..])),
            _ => None,
        };
        let eps = sam_perturbation(&refs, &g, rho, asam);
        let eps: Vec<f64> = eps.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        for (a, b) in eps.iter().zip(&eps_hand) {
            assert!((a - b).abs() < 1e-13, "{method:?} eps {a} vs {b}");
        }
        // The method's gradient and one full-batch plain-SGD step.
        let r = method_grad(&mut m, &x, &y, &method, 0, 1).unwrap();
        let gm: Vec<f64> = r.grads.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        for (a, b) in gm.iter().zip(&g2) {
            assert!((a - b).abs() < 1e-12, "{method:?} grad {a} vs {b}");
        }
        assert_eq!(bits(&m.param_vector()), bits(&w0), "parameters restored");
        let cfg = TrainConfig {
            epochs: 1,
            batch_size: n,
            optimizer: Optimizer::Sgd {
                lr,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            seed: 0,
        };
        let mut m = model.clone();
        train_with_method(
            &mut m,
            &x,
            &y,
            None,
            &cfg,
            &method,
            None,
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        for ((a, w), g) in m.param_vector().iter().zip(&w0).zip(&g2) {
            assert!((a - (w - lr * g)).abs() < 1e-12, "{method:?} step");
        }
    }
    // m-sharpness: chunks of 2 samples, each with its own perturbation; the step uses the
    // mean of the chunk gradients at the chunks' perturbed points.
    let mut want = vec![0.0; w0.len()];
    for c in 0..3 {
        let idx = [2 * c, 2 * c + 1];
        let xc = x.select_rows(&idx);
        let yc = [y[2 * c], y[2 * c + 1]];
        let (_, g2) = hand_sam(&w0, &xc, &yc, d, k, rho, &vec![1.0; w0.len()]);
        for (o, g) in want.iter_mut().zip(&g2) {
            *o += g / 3.0;
        }
    }
    let mut m = model.clone();
    let r = method_grad(
        &mut m,
        &x,
        &y,
        &TrainMethod::Sam {
            rho,
            chunk: Some(2),
        },
        0,
        1,
    )
    .unwrap();
    let gm: Vec<f64> = r.grads.iter().flat_map(|m| m.as_slice().to_vec()).collect();
    for (a, b) in gm.iter().zip(&want) {
        assert!((a - b).abs() < 1e-12, "m-sharpness {a} vs {b}");
    }
}

/// `||grad L(w)||` for the flat parameter vector `v`.
fn grad_norm_at<M: TrainModel<f64>>(
    model: &mut M,
    set: impl Fn(&mut M, &[f64]),
    v: &[f64],
    x: &Matrix<f64>,
    y: &[usize],
) -> f64 {
    set(model, v);
    let (_, g, _) = model.train_grad(x, y).unwrap();
    g.iter()
        .flat_map(|m| m.as_slice().iter().map(|a| a * a))
        .sum::<f64>()
        .sqrt()
}

#[test]
fn gradient_norm_penalty_gradient_matches_finite_differences() {
    let (x, y) = blobs(7, 3, 3, 11);
    // A smooth MLP without and with (train-mode) BatchNorm.
    let plain = tiny_mlp(&[3, 4, 3], Activation::Tanh, 3);
    let mut cfg = mlp_config(&[3, 4, 3], Activation::Tanh, true, LossKind::CrossEntropy);
    cfg.batchnorm = Some(BatchNormConfig::default());
    let bn = Mlp::init(cfg, Init::Kaiming, 1.0, 3).unwrap();
    for model in [plain, bn] {
        let w0 = model.param_vector();
        let pg = grad_norm_penalty_grad(&model, &x, &y);
        let pg: Vec<f64> = pg.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        let mut m = model.clone();
        let set = |m: &mut Mlp<f64>, v: &[f64]| m.set_param_vector(v).unwrap();
        let h = 1e-5;
        for i in 0..w0.len() {
            let mut a = w0.clone();
            a[i] += h;
            let mut b = w0.clone();
            b[i] -= h;
            let fd = (grad_norm_at(&mut m, set, &a, &x, &y)
                - grad_norm_at(&mut m, set, &b, &x, &y))
                / (2.0 * h);
            assert!(
                (fd - pg[i]).abs() < 1e-7 * (1.0 + fd.abs()),
                "coordinate {i}: fd {fd} vs exact {}",
                pg[i]
            );
        }
        // The finite-difference form approaches g + lambda grad ||g|| as r -> 0.
        let lambda = 0.5;
        let (_, g, _) = model.train_grad(&x, &y).unwrap();
        let g: Vec<f64> = g.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        let mut m = model.clone();
        let r = method_grad(
            &mut m,
            &x,
            &y,
            &TrainMethod::GradNormPenalty {
                lambda,
                form: GradNormForm::FiniteDifference { radius: 1e-5 },
            },
            0,
            1,
        )
        .unwrap();
        let got: Vec<f64> = r.grads.iter().flat_map(|m| m.as_slice().to_vec()).collect();
        for i in 0..g.len() {
            let want = g[i] + lambda * pg[i];
            assert!(
                (got[i] - want).abs() < 1e-5,
                "fd form {i}: {} vs {want}",
                got[i]
            );
        }
    }
}

/// `tr H` of the mean loss by the analytic dense Hessian (independent of the tape).
fn dense_trace(model: &Mlp<f64>, x: &Matrix<f64>, y: &[usize]) -> f64 {
    let h = dense_hessian(model, x, y, Part::Full, 1 << 30).unwrap();
    (0..h.rows()).map(|i| h.get(i, i)).sum()
}

fn flat(ms: &[Matrix<f64>]) -> Vec<f64> {
    ms.iter().flat_map(|m| m.as_slice().to_vec()).collect()
}

#[test]
fn trace_penalty_gradient_matches_finite_differences_of_the_dense_trace() {
    let (x, y) = blobs(6, 3, 3, 13);
    let model = tiny_mlp(&[3, 4, 3], Activation::Tanh, 5);
    let w0 = model.param_vector();
    let p = w0.len();
    let like: Vec<Matrix<f64>> = model
        .named_params()
        .iter()
        .map(|(_, m)| (*m).clone())
        .collect();
    // Probes e_1..e_P: (1/P) sum_j e_j^T H e_j = tr H / P exactly.
    let units: Vec<Vec<Matrix<f64>>> = (0..p)
        .map(|j| {
            let mut e = vec![0.0; p];
            e[j] = 1.0;
            landscape::hessian::network::unflatten(&e, &like)
        })
        .collect();
    let (value, grad) = trace_penalty_grad(&model, &x, &y, &units);
    let tr0 = dense_trace(&model, &x, &y);
    assert!(
        (value * p as f64 - tr0).abs() < 1e-10 * (1.0 + tr0.abs()),
        "{} vs dense {tr0}",
        value * p as f64
    );
    let grad: Vec<f64> = flat(&grad).iter().map(|g| g * p as f64).collect();
    let mut m = model.clone();
    let h = 1e-5;
    for i in 0..p {
        let mut a = w0.clone();
        a[i] += h;
        m.set_param_vector(&a).unwrap();
        let ta = dense_trace(&m, &x, &y);
        a[i] -= 2.0 * h;
        m.set_param_vector(&a).unwrap();
        let tb = dense_trace(&m, &x, &y);
        let fd = (ta - tb) / (2.0 * h);
        assert!(
            (fd - grad[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "coordinate {i}: fd {fd} vs third-order {}",
            grad[i]
        );
    }
    // One Rademacher probe: grad (v^T H v) against finite differences of v^T H v from the
    // dense Hessian, and the cheap second-difference approximation against both.
    let mut rng = Rng::new(3);
    let v: Vec<f64> = (0..p)
        .map(|_| if rng.uniform() < 0.5 { 1.0 } else { -1.0 })
        .collect();
    let vs = vec![landscape::hessian::network::unflatten(&v, &like)];
    let (_, gq) = trace_penalty_grad(&model, &x, &y, &vs);
    let gq = flat(&gq);
    let quad = |m: &Mlp<f64>| {
        let hm = dense_hessian(m, &x, &y, Part::Full, 1 << 30).unwrap();
        let mut s = 0.0;
        for a in 0..p {
            for b in 0..p {
                s += v[a] * hm.get(a, b) * v[b];
            }
        }
        s
    };
    for i in 0..p {
        let mut a = w0.clone();
        a[i] += h;
        m.set_param_vector(&a).unwrap();
        let qa = quad(&m);
        a[i] -= 2.0 * h;
        m.set_param_vector(&a).unwrap();
        let qb = quad(&m);
        let fd = (qa - qb) / (2.0 * h);
        assert!(
            (fd - gq[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "probe {i}: {fd} vs {}",
            gq[i]
        );
    }
    let mut m = model.clone();
    let (_, g, _) = model.train_grad(&x, &y).unwrap();
    let approx = flat(&trace_penalty_grad_fd(&mut m, &x, &y, &vs, &g, 1e-3).unwrap());
    let scale = gq.iter().map(|a| a.abs()).fold(0.0, f64::max);
    for i in 0..p {
        assert!(
            (approx[i] - gq[i]).abs() < 1e-3 * scale,
            "second difference {i}: {} vs {}",
            approx[i],
            gq[i]
        );
    }
    assert_eq!(bits(&m.param_vector()), bits(&w0), "parameters restored");
}

fn bn_buffers(m: &Mlp<f64>) -> Vec<u64> {
    m.named_buffers()
        .iter()
        .flat_map(|(_, b)| bits(b.as_slice()))
        .collect()
}

#[test]
fn perturbed_passes_leave_batchnorm_running_statistics_alone() {
    let (x, y) = blobs(12, 4, 3, 17);
    let mut cfg = mlp_config(&[4, 6, 3], Activation::Relu, true, LossKind::CrossEntropy);
    cfg.batchnorm = Some(BatchNormConfig::default());
    let base = Mlp::init(cfg, Init::Kaiming, 1.0, 6).unwrap();
    // One step over the whole set: the running statistics come from the first pass at w.
    let tc = TrainConfig {
        epochs: 1,
        batch_size: 12,
        optimizer: sgd(0.1),
        seed: 0,
    };
    let mut plain = base.clone();
    train(&mut plain, &x, &y, None, &tc, |_, _, _| {}, |_, _| Ok(())).unwrap();
    assert_ne!(
        bn_buffers(&plain),
        bn_buffers(&base),
        "a step updates the statistics"
    );
    for method in [
        TrainMethod::Sam {
            rho: 0.5,
            chunk: None,
        },
        TrainMethod::Asam {
            rho: 0.5,
            eta: 0.01,
            chunk: None,
        },
        TrainMethod::GradNormPenalty {
            lambda: 0.1,
            form: GradNormForm::Exact,
        },
        TrainMethod::GradNormPenalty {
            lambda: 0.1,
            form: GradNormForm::FiniteDifference { radius: 0.05 },
        },
        TrainMethod::TracePenalty {
            lambda: 0.01,
            probes: 2,
            form: TraceForm::Exact,
        },
        TrainMethod::TracePenalty {
            lambda: 0.01,
            probes: 2,
            form: TraceForm::FiniteDifference { step: 0.01 },
        },
    ] {
        let mut m = base.clone();
        train_with_method(
            &mut m,
            &x,
            &y,
            None,
            &tc,
            &method,
            None,
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        assert_eq!(bn_buffers(&m), bn_buffers(&plain), "{method:?}");
        assert_ne!(
            bits(&m.param_vector()),
            bits(&plain.param_vector()),
            "{method:?}"
        );
    }
    // m-sharpness: the chunks' statistics merge into the whole batch's (up to rounding).
    let mut m = base.clone();
    let method = TrainMethod::Sam {
        rho: 0.5,
        chunk: Some(4),
    };
    train_with_method(
        &mut m,
        &x,
        &y,
        None,
        &tc,
        &method,
        None,
        |_, _, _| {},
        |_, _| Ok(()),
    )
    .unwrap();
    for ((_, a), (_, b)) in m.named_buffers().iter().zip(plain.named_buffers()) {
        for (u, v) in a.as_slice().iter().zip(b.as_slice()) {
            assert!(
                (u - v).abs() < 1e-12 * (1.0 + v.abs()),
                "merged statistics {u} vs {v}"
            );
        }
    }
}

fn sphere_cfg(sam: Option<f64>, step: StepKind) -> SphereRunConfig {
    SphereRunConfig {
        epochs: 1,
        batch_size: 10,
        seed: 3,
        schedule: ElrSchedule::Constant { elr: 0.05 },
        step,
        f32: false,
        metrics: MetricsConfig {
            every: 1,
            metric_samples: None,
            curvature_every: 0,
            curvature_samples: 16,
            curvature_batch: 8,
            fisher: FisherMethod::Exact,
            lanczos_iter: 10,
        },
        sam,
    }
}

#[test]
fn sam_on_the_sphere_ascends_on_the_sphere_and_keeps_batchnorm_statistics() {
    // The ascent point: on the sphere, at angle about rho / r along the tangent gradient.
    let spheres = Spheres {
        groups: vec![0..3, 3..5],
        radii: vec![2.0, 1.0],
    };
    let w = vec![2.0, 0.0, 0.0, 0.0, 1.0];
    let g = vec![1.0, 3.0, 4.0, 2.0, 7.0];
    let gt = project_tangent(&w, &g, &spheres);
    assert_eq!(gt, vec![0.0, 3.0, 4.0, 2.0, 0.0]);
    let rho = 0.3;
    let wa = sam_ascent_point(&w, &g, &spheres, rho);
    // Hand: w + rho gt / ||gt|| (||gt|| = sqrt(29)), each group rescaled to its radius.
    let s = rho / 29f64.sqrt();
    let raw = [2.0, 3.0 * s, 4.0 * s, 2.0 * s, 1.0];
    let n1 = (raw[0] * raw[0] + raw[1] * raw[1] + raw[2] * raw[2]).sqrt();
    let n2 = (raw[3] * raw[3] + raw[4] * raw[4]).sqrt();
    let want = [
        2.0 * raw[0] / n1,
        2.0 * raw[1] / n1,
        2.0 * raw[2] / n1,
        raw[3] / n2,
        raw[4] / n2,
    ];
    for (a, b) in wa.iter().zip(&want) {
        assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    }
    assert_eq!(sam_ascent_point(&w, &g, &spheres, 0.0), w);

    // A scale-invariant network: one step over the whole set with and without SAM.
    let (x, y) = blobs(10, 4, 3, 23);
    let data = Dataset {
        x: x.clone(),
        y: y.clone(),
    };
    let mut cfg = mlp_config(&[4, 6, 3], Activation::Relu, true, LossKind::CrossEntropy);
    cfg.batchnorm = Some(BatchNormConfig::default());
    let net = Network::from_mlp(&Mlp::<f64>::init(cfg, Init::Kaiming, 1.0, 8).unwrap());
    let arch = si_architecture(&net.arch).unwrap();
    let net = Network::<f64>::init(arch, Init::Torch, 1.0, 8).unwrap();
    let spec = SiSpec::of(&net).unwrap();
    let run_with = |sam: Option<f64>| {
        let mut n = net.clone();
        let mut wv = spec.vector(&n);
        let spheres = Spheres::new(&spec, &mut wv, RadiusMode::Initial, false).unwrap();
        spec.set_vector(&mut n, &wv);
        let mut run = SphereRun::new(n, spec.clone(), spheres, 0);
        train_on_sphere(
            &mut run,
            &sphere_cfg(sam, StepKind::Projected),
            &data,
            None,
            &mut NoHooks,
        )
        .unwrap();
        run
    };
    let plain = run_with(None);
    let sam = run_with(Some(0.5));
    assert_eq!(
        plain.net.bn, sam.net.bn,
        "SAM's ascent pass left the statistics alone"
    );
    let (wp, ws) = (spec.vector(&plain.net), spec.vector(&sam.net));
    assert_ne!(bits(&wp), bits(&ws));
    let r = plain.spheres.radii[0];
    let nrm = ws.iter().map(|a| a * a).sum::<f64>().sqrt();
    assert!((nrm - r).abs() < 1e-12 * r, "SAM step stays on the sphere");
}

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args(args)
        .output()
        .expect("run landscape")
}

fn assert_one_line_error(o: &std::process::Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(needle), "wanted '{needle}': {e}");
}

#[test]
fn cli_sam_zero_matches_plain_and_bad_inputs_are_one_line_errors() {
    let d = TempDir::new("sam-cli");
    let common = [
        "train",
        "--data",
        "digits",
        "--train-size",
        "200",
        "--hidden",
        "8",
        "--epochs",
        "2",
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--momentum",
        "0.9",
        "--batch-size",
        "32",
    ];
    let load = |name: &str| {
        landscape::io::model_file::load_mlp_f64(&d.join(name), &Default::default())
            .unwrap()
            .param_vector()
    };
    let mut outs = Vec::new();
    for (name, extra) in [
        ("plain.safetensors", vec![]),
        ("sam0.safetensors", vec!["--sam", "0"]),
        ("gnp0.safetensors", vec!["--grad-norm-penalty", "0"]),
    ] {
        let path = d.join(name);
        let json = d.join(format!("{name}.json"));
        let mut args: Vec<&str> = common.to_vec();
        args.extend(&extra);
        let (p, j) = (path.to_str().unwrap(), json.to_str().unwrap());
        args.extend(["--out", p, "--json", j]);
        let o = run_cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(load(name));
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert!(
            rec["results"]["timing"]["mean_epoch_seconds"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let want_fwd = if extra.is_empty() { 1 } else { 2 };
        assert_eq!(rec["results"]["passes_per_step"]["forward"], want_fwd);
    }
    assert_eq!(bits(&outs[0]), bits(&outs[1]), "--sam 0");
    assert_eq!(bits(&outs[0]), bits(&outs[2]), "--grad-norm-penalty 0");

    for (extra, needle) in [
        (vec!["--sam", "-0.1"], "--sam rho"),
        (vec!["--sam", "NaN"], "--sam rho"),
        (vec!["--sam", "0.05", "--asam", "0.5"], "cannot be combined"),
        (vec!["--sam", "0.05", "--sam-chunk", "5"], "--sam-chunk 5"),
        (vec!["--sam", "0.05", "--sam-chunk", "64"], "--sam-chunk 64"),
        (vec!["--sam-chunk", "4"], "needs --sam"),
        (
            vec!["--grad-norm-penalty", "0.1", "--trace-penalty", "0.1"],
            "cannot be combined",
        ),
        (vec!["--grad-norm-penalty", "-1"], "--grad-norm-penalty"),
        (
            vec!["--trace-penalty", "0.1", "--trace-probes", "0"],
            "--trace-probes",
        ),
        (vec!["--grad-norm-fd", "0.01"], "needs --grad-norm-penalty"),
        (vec!["--trace-fd", "0.01"], "needs --trace-penalty"),
        (vec!["--asam", "0.5", "--asam-eta", "0"], "--asam-eta"),
    ] {
        let mut args: Vec<&str> = common.to_vec();
        args.extend(&extra);
        assert_one_line_error(&run_cli(&args), needle);
    }
    let o = run_cli(&[
        "sphere",
        "train",
        "--data",
        "digits",
        "--width",
        "2",
        "--epochs",
        "1",
        "--elr",
        "0.01",
        "--sam",
        "-1",
        "--out",
        d.join("sph").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "--sam rho");
}

#[test]
fn compare_methods_rows_come_from_the_records() {
    use landscape::experiments::method_compare::{markdown_table, method_row};
    use serde_json::json;
    let train = json!({"command": "train", "results": {
        "epochs": [{"test_error": 0.2}, {"test_error": 0.1}],
        "final": {"train_error": 0.05, "test_error": 0.1},
        "timing": {"mean_epoch_seconds": 2.5},
        "method": {"name": "sam", "rho": 0.05, "chunk": null},
        "passes_per_step": {"forward": 2, "backward": 2, "double_backward": 0, "triple_backward": 0}}});
    let sphere = json!({"command": "sphere train", "results": {"run": {
        "wall_seconds": 13.0, "config": {"sam": 0.1, "step": "projected"},
        "history": [
            {"steps": 0, "train_error": 0.9, "test_error": 0.9, "seconds": 1.0},
            {"steps": 5, "train_error": 0.3, "test_error": 0.4, "seconds": 6.0},
            {"steps": 5, "train_error": 0.2, "test_error": 0.3, "seconds": 6.0}]}}});
    let curv = json!({"results": {
        "eigenvalues": {"ritz_values": [3.5], "residuals": [1e-9]},
        "trace": {"hutchinson": {"estimate": 40.0, "ci95": [38.0, 42.0]}},
        "grad_norms": {"mean": 0.7, "ci95_of_mean": [0.6, 0.8], "batch_size": 64}}});
    let r = method_row("SAM", &train, &curv, "t").unwrap();
    assert_eq!(
        (
            r.final_test_error,
            r.lambda_max,
            r.trace,
            r.gm,
            r.seconds_per_epoch
        ),
        (0.1, 3.5, 40.0, 0.7, 2.5)
    );
    assert_eq!(r.test_error_per_epoch, vec![0.2, 0.1]);
    let s = method_row("sphere SAM", &sphere, &curv, "s").unwrap();
    // Trained epochs only; wall time less the starting measurement, per epoch.
    assert_eq!(s.test_error_per_epoch, vec![0.4, 0.3]);
    assert_eq!((s.final_train_error, s.seconds_per_epoch), (0.2, 6.0));
    assert_eq!(s.passes_per_step["forward"], 2);
    let t = markdown_table(&[r, s]);
    assert!(
        t.contains("| SAM | 10.00% | 5.00% | 3.5000 (1.0e-9) | 40.00 [38.00, 42.00]"),
        "{t}"
    );
    let err = method_row("x", &train, &json!({"results": {}}), "bad.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.json") && err.contains("lambda_max"),
        "{err}"
    );
    let o = run_cli(&["compare-methods", "--run", "no-equals-sign"]);
    assert_one_line_error(&o, "LABEL=TRAIN_JSON,CURVATURE_JSON");
}
