//! Training on the sphere (seed 001): the SI radius and the frozen head over a
//! run, scale invariance of logits and gradients, the Riemannian and projected
//! steps against closed forms, the random-walk step length, GM / tr F /
//! lambda_max against independent recomputations (finite differences, dense
//! per-sample Jacobians, a dense eigendecomposition), the regime rule, resume
//! bit-exactness and the commands end to end.

use crate::common::TempDir;
use landscape::autodiff::Tape;
use landscape::data::Dataset;
use landscape::experiments::sphere::*;
use landscape::hessian::small_eig::jacobi_eigenvalues;
use landscape::io::provenance::Provenance;
use landscape::nn::arch::{Architecture, LayerSpec};
use landscape::nn::{Activation, Init, LossKind, Mode, Network};
use landscape::rng::Rng;
use landscape::Matrix;
use std::process::Command;

/// A tiny BN-MLP in SI form: 3 -> 5 (BN) -> 4 (BN) -> K head.
fn tiny_arch(loss: LossKind, classes: usize, eps: f64) -> Architecture {
    let bn = |name: &str| LayerSpec::Batchnorm {
        name: name.into(),
        affine: true,
        eps,
        momentum: 0.1,
    };
    let relu = LayerSpec::Activation {
        act: Activation::Relu,
    };
    let arch = Architecture {
        name: "custom".into(),
        input_shape: [3, 1, 1],
        classes,
        loss,
        leaky_slope: 0.01,
        layers: vec![
            LayerSpec::Linear {
                name: "l0".into(),
                out: 5,
                bias: true,
            },
            bn("bn0"),
            relu.clone(),
            LayerSpec::Linear {
                name: "l1".into(),
                out: 4,
                bias: true,
            },
            bn("bn1"),
            relu,
            LayerSpec::Linear {
                name: "head".into(),
                out: classes,
                bias: true,
            },
        ],
        mlp: None,
    };
    si_architecture(&arch).unwrap()
}

fn tiny_net(loss: LossKind, classes: usize, eps: f64) -> (Network<f64>, SiSpec) {
    let mut net = Network::<f64>::init(tiny_arch(loss, classes, eps), Init::Torch, 1.0, 5).unwrap();
    let spec = SiSpec::of(&net).unwrap();
    set_head_norm(&mut net, &spec, default_last_norm(loss)).unwrap();
    (net, spec)
}

fn data(n: usize, classes: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let x = Matrix::from_fn(n, 3, |_, _| rng.normal());
    let y = (0..n).map(|i| (i * 7 + 3) % classes).collect();
    Dataset { x, y }
}

fn prov() -> Provenance {
    Provenance::new("test", Some(0), None, serde_json::json!({}))
}

fn cfg(step: StepKind, elr: f64, epochs: usize) -> SphereRunConfig {
    SphereRunConfig {
        epochs,
        batch_size: 8,
        seed: 3,
        schedule: ElrSchedule::Constant { elr },
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
        sam: None,
    }
}

#[test]
fn si_form_freezes_the_head_and_removes_pre_bn_biases_and_affine() {
    let (net, spec) = tiny_net(LossKind::CrossEntropy, 3, 1e-5);
    assert_eq!(spec.si_names, vec!["l0.weight", "l1.weight"]);
    assert_eq!(spec.frozen_names, vec!["head.weight", "head.bias"]);
    assert!((net.params[spec.frozen[0]].frobenius_norm() - 10.0).abs() < 1e-12);
    // A network with trainable BatchNorm affine parameters (a shift that is not
    // zero) fails the check, naming the first such tensor. (A bias right before a
    // BatchNorm is removed by the SI form but is harmless: BN subtracts it.)
    let mut arch = tiny_arch(LossKind::CrossEntropy, 3, 1e-5);
    if let LayerSpec::Batchnorm { affine, .. } = &mut arch.layers[1] {
        *affine = true;
    }
    let mut bad = Network::<f64>::init(arch, Init::Torch, 1.0, 5).unwrap();
    bad.params[2] = Matrix::from_fn(1, 5, |_, j| 0.3 + 0.1 * j as f64);
    let bspec = SiSpec::of(&bad).unwrap();
    assert_eq!(bspec.si_names[1], "bn0.weight");
    let err = check_scale_invariance(&bad, &bspec, &data(8, 3, 1).x)
        .unwrap_err()
        .to_string();
    assert!(err.contains("'bn0.weight' is not scale-invariant"), "{err}");
    check_scale_invariance(&net, &spec, &data(8, 3, 1).x).unwrap();
    // No BatchNorm: a clear error.
    let mut nobn = tiny_arch(LossKind::CrossEntropy, 3, 1e-5);
    nobn.layers
        .retain(|l| !matches!(l, LayerSpec::Batchnorm { .. }));
    assert!(si_architecture(&nobn)
        .unwrap_err()
        .to_string()
        .contains("BatchNorm"));
}

#[test]
fn scaling_the_si_vector_by_3_keeps_logits_and_divides_the_gradient_by_3() {
    // eps = 0 up to rounding: the invariance is then exact.
    let (net, spec) = tiny_net(LossKind::CrossEntropy, 3, 1e-30);
    let d = data(12, 3, 2);
    let w = spec.vector(&net);
    let mut net3 = net.clone();
    spec.set_vector(&mut net3, &w.iter().map(|v| 3.0 * v).collect::<Vec<_>>());
    let eval = |n: &Network<f64>| {
        let tape = Tape::new();
        let p = n.params_on_tape(&tape);
        let (l, f) = n.loss_tape(&p, &d.x, &d.y, Mode::Train);
        let g = tape.grad(l, &p);
        let z = f.logits.value().clone();
        let gv: Vec<f64> = spec
            .si
            .iter()
            .flat_map(|&i| g[i].value().as_slice().to_vec())
            .collect();
        (z, gv)
    };
    let (z1, g1) = eval(&net);
    let (z3, g3) = eval(&net3);
    let zs = z1.max_abs();
    for (a, b) in z1.as_slice().iter().zip(z3.as_slice()) {
        assert!((a - b).abs() <= 1e-12 * zs, "{a} vs {b}");
    }
    let gs = g1.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (a, b) in g1.iter().zip(&g3) {
        assert!((a - 3.0 * b).abs() <= 1e-10 * gs, "{a} vs 3 * {b}");
    }
    // The gradient is orthogonal to the SI vector (Euler's identity for degree 0).
    let dotp: f64 = g1.iter().zip(&w).map(|(a, b)| a * b).sum();
    assert!(dotp.abs() <= 1e-10 * norm(&g1) * norm(&w), "{dotp}");
}

#[test]
fn riemannian_and_projected_steps_match_their_closed_forms() {
    // w = rho e1, g = a e1 + b e2: the projected step turns by atan(elr rho b) when
    // a = 0, the Riemannian step by exactly elr rho |b| (any a), towards -e2.
    let rho = 2.5;
    let spheres = Spheres {
        groups: std::iter::once(0..3).collect(),
        radii: vec![rho],
    };
    let mut rng = Rng::new(0);
    for &(a, b, elr) in &[(0.0, 0.7, 0.3), (0.4, -1.3, 0.05), (0.0, 2.0, 0.5)] {
        let g = [a, b, 0.0];
        let x: f64 = elr * rho * b;
        let mut w = [rho, 0.0, 0.0];
        let info = sphere_step(&mut w, &g, &spheres, elr, StepKind::Riemannian, &mut rng);
        let want = [rho * x.cos(), -rho * x.sin(), 0.0];
        for (u, v) in w.iter().zip(&want) {
            assert!((u - v).abs() < 1e-14 * rho, "{w:?} vs {want:?}");
        }
        assert!((info.angle - x.abs()).abs() < 1e-13);
        if a == 0.0 {
            let mut wp = [rho, 0.0, 0.0];
            let ip = sphere_step(&mut wp, &g, &spheres, elr, StepKind::Projected, &mut rng);
            let th = x.abs().atan();
            assert!((ip.angle - th).abs() < 1e-13, "{} vs {th}", ip.angle);
            let want = [rho * th.cos(), -b.signum() * rho * th.sin(), 0.0];
            for (u, v) in wp.iter().zip(&want) {
                assert!((u - v).abs() < 1e-13 * rho);
            }
            // Ascent turns the other way by the same angle.
            let mut wa = [rho, 0.0, 0.0];
            sphere_step(&mut wa, &g, &spheres, elr, StepKind::Ascent, &mut rng);
            assert!((wa[1] + wp[1]).abs() < 1e-13 * rho);
        }
    }
}

#[test]
fn random_walk_step_has_the_gradient_steps_length_and_is_tangent() {
    let mut rng = Rng::new(9);
    let n = 7;
    let rho = 1.7;
    let spheres = Spheres {
        groups: std::iter::once(0..n).collect(),
        radii: vec![rho],
    };
    for trial in 0..5 {
        let mut w: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let s = rho / norm(&w);
        w.iter_mut().for_each(|v| *v *= s);
        // A tangent gradient, so that the projected step's angle is atan(len / rho).
        let mut g: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let c: f64 = g.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / (rho * rho);
        g.iter_mut().zip(&w).for_each(|(a, b)| *a -= c * b);
        let elr = 0.01 * (trial + 1) as f64;
        let mut wr = w.clone();
        let ir = sphere_step(&mut wr, &g, &spheres, elr, StepKind::RandomWalk, &mut rng);
        let mut wg = w.clone();
        let ig = sphere_step(&mut wg, &g, &spheres, elr, StepKind::Projected, &mut rng);
        let len = elr * rho * rho * norm(&g);
        assert!((ir.length - len).abs() < 1e-14 * len);
        assert!((ig.length - len).abs() < 1e-14 * len);
        // A tangent step of length `len` followed by the retraction turns by atan(len / rho).
        assert!(
            (ir.angle - (len / rho).atan()).abs() < 1e-12,
            "{} {}",
            ir.angle,
            ig.angle
        );
        assert!((ir.angle - ig.angle).abs() < 1e-12);
        assert!((norm(&wr) - rho).abs() < 1e-14 * rho);
        // Not the gradient direction.
        assert!(angle_between(&wr, &wg) > 1e-6);
    }
}

#[test]
fn radius_is_preserved_and_the_head_is_frozen_over_runs() {
    let d = data(40, 3, 4);
    for (step, per_layer, radius) in [
        (StepKind::Projected, false, RadiusMode::Initial),
        (StepKind::Riemannian, true, RadiusMode::Initial),
        (
            StepKind::RandomWalk,
            false,
            RadiusMode::Fixed { radius: 1.0 },
        ),
        (StepKind::Ascent, false, RadiusMode::Initial),
    ] {
        let (mut net, spec) = tiny_net(LossKind::CrossEntropy, 3, 1e-5);
        let mut w = spec.vector(&net);
        let spheres = Spheres::new(&spec, &mut w, radius, per_layer).unwrap();
        spec.set_vector(&mut net, &w);
        let head: Vec<Matrix<f64>> = spec.frozen.iter().map(|&i| net.params[i].clone()).collect();
        let mut run = SphereRun::new(net, spec.clone(), spheres.clone(), 0);
        train_on_sphere(&mut run, &cfg(step, 0.05, 4), &d, None, &mut NoHooks).unwrap();
        assert_eq!(run.history.len(), 5);
        let wf = spec.vector(&run.net);
        for (g, &r) in spheres.groups.iter().zip(&spheres.radii) {
            let dev = (norm(&wf[g.clone()]) - r).abs() / r;
            assert!(dev <= 1e-12, "{step:?}: radius deviation {dev}");
        }
        for h in &run.history {
            assert!(h.radius_rel_dev <= 1e-12, "{step:?}: {}", h.radius_rel_dev);
        }
        for (i, &t) in spec.frozen.iter().enumerate() {
            assert_eq!(run.net.params[t], head[i], "{step:?}: the head moved");
        }
        assert!(
            run.history.last().unwrap().angle_from_start > 1e-4,
            "{step:?}: no movement"
        );
    }
}

/// Central finite differences of the train-mode loss of one batch w.r.t. the SI vector.
fn fd_grad(net: &Network<f64>, spec: &SiSpec, x: &Matrix<f64>, y: &[usize]) -> Vec<f64> {
    let w = spec.vector(net);
    let loss = |v: &[f64]| {
        let mut m = net.clone();
        spec.set_vector(&mut m, v);
        let tape = Tape::new();
        let p: Vec<_> = m.params.iter().map(|t| tape.constant(t.clone())).collect();
        m.loss_tape(&p, x, y, Mode::Train).0.item()
    };
    (0..w.len())
        .map(|k| {
            let h = 1e-6 * (1.0 + w[k].abs());
            let mut a = w.clone();
            a[k] += h;
            let mut b = w.clone();
            b[k] -= h;
            (loss(&a) - loss(&b)) / (2.0 * h)
        })
        .collect()
}

#[test]
fn gm_matches_per_batch_finite_difference_gradients() {
    let (net, spec) = tiny_net(LossKind::CrossEntropy, 3, 1e-5);
    let d = data(21, 3, 6); // batches of 8, 8, 5
    let pass = metrics::batch_pass(&net, &spec.si, &d.x, &d.y, 8).unwrap();
    assert_eq!(pass.grad_norms.len(), 3);
    let mut norms = Vec::new();
    let mut loss = 0.0;
    for r in [0..8, 8..16, 16..21] {
        let xb = d.x.rows_view(r.start, r.end).to_owned();
        let g = fd_grad(&net, &spec, &xb, &d.y[r.clone()]);
        norms.push(norm(&g));
        let tape = Tape::new();
        let p = net.params_on_tape(&tape);
        loss += net
            .loss_tape(&p, &xb, &d.y[r.clone()], Mode::Train)
            .0
            .item()
            * r.len() as f64;
    }
    for (a, b) in pass.grad_norms.iter().zip(&norms) {
        assert!((a - b).abs() <= 1e-6 * b, "{a} vs {b}");
    }
    let gm = norms.iter().sum::<f64>() / 3.0;
    assert!((pass.gm() - gm).abs() <= 1e-6 * gm);
    assert!((pass.loss - loss / 21.0).abs() <= 1e-12);
}

#[test]
fn fisher_trace_matches_dense_per_sample_jacobians() {
    for loss in [LossKind::CrossEntropy, LossKind::Mse] {
        let (net, spec) = tiny_net(loss, 3, 1e-5);
        let d = data(12, 3, 7); // two batches of 6
        let w = spec.vector(&net);
        // Logits of the whole batch as a function of the SI vector (train-mode BN).
        let logits = |v: &[f64], xb: &Matrix<f64>| {
            let mut m = net.clone();
            spec.set_vector(&mut m, v);
            let tape = Tape::new();
            let p: Vec<_> = m.params.iter().map(|t| tape.constant(t.clone())).collect();
            let z = m.forward_tape(&p, xb, Mode::Train).logits.value().clone();
            z
        };
        let mut want = 0.0;
        for r in [0..6, 6..12] {
            let xb = d.x.rows_view(r.start, r.end).to_owned();
            let z0 = logits(&w, &xb);
            // Dense Jacobian (6 * 3 outputs x P) by central differences.
            let p = w.len();
            let mut jac = vec![vec![0.0; p]; 18];
            for k in 0..p {
                let h = 1e-6 * (1.0 + w[k].abs());
                let mut a = w.clone();
                a[k] += h;
                let mut b = w.clone();
                b[k] -= h;
                let (za, zb) = (logits(&a, &xb), logits(&b, &xb));
                for (o, row) in jac.iter_mut().enumerate() {
                    row[k] = (za.as_slice()[o] - zb.as_slice()[o]) / (2.0 * h);
                }
            }
            let mut batch = 0.0;
            for i in 0..6 {
                let z = z0.row(i);
                // A = diag p - p p^T (CE) or 2 I (MSE), built directly.
                let amat: Vec<Vec<f64>> = match loss {
                    LossKind::CrossEntropy => {
                        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                        let s: f64 = e.iter().sum();
                        let pr: Vec<f64> = e.iter().map(|v| v / s).collect();
                        (0..3)
                            .map(|a| {
                                (0..3)
                                    .map(|b| if a == b { pr[a] } else { 0.0 } - pr[a] * pr[b])
                                    .collect()
                            })
                            .collect()
                    }
                    LossKind::Mse => (0..3)
                        .map(|a| (0..3).map(|b| if a == b { 2.0 } else { 0.0 }).collect())
                        .collect(),
                };
                // tr(J_i^T A J_i) = sum_{a,b} A_ab <J_ia, J_ib>.
                for a in 0..3 {
                    for b in 0..3 {
                        let dotp: f64 = (0..p).map(|k| jac[i * 3 + a][k] * jac[i * 3 + b][k]).sum();
                        batch += amat[a][b] * dotp;
                    }
                }
            }
            want += batch / 6.0 / 2.0;
        }
        let exact = metrics::fisher_trace(&net, &spec.si, &d.x, 6, FisherMethod::Exact, 0).unwrap();
        assert!(
            (exact.value - want).abs() <= 1e-6 * want,
            "{loss:?}: {} vs {want}",
            exact.value
        );
        let h = metrics::fisher_trace(
            &net,
            &spec.si,
            &d.x,
            6,
            FisherMethod::Hutchinson { probes: 400 },
            1,
        )
        .unwrap();
        assert!(
            (h.value - want).abs() <= 4.0 * h.std_error + 1e-12,
            "{loss:?}: Hutchinson {} +- {} vs {want}",
            h.value,
            h.std_error
        );
    }
}

#[test]
fn lambda_max_matches_a_dense_eigendecomposition() {
    let (net, spec) = tiny_net(LossKind::CrossEntropy, 3, 1e-5);
    let d = data(16, 3, 8);
    let w = spec.vector(&net);
    let p = w.len();
    // Dense SI Hessian: central differences of the mean of the two batch gradients.
    let grad = |v: &[f64]| {
        let mut m = net.clone();
        spec.set_vector(&mut m, v);
        let mut g = vec![0.0; p];
        for r in [0..8, 8..16] {
            let xb = d.x.rows_view(r.start, r.end).to_owned();
            let tape = Tape::new();
            let pv = m.params_on_tape(&tape);
            let (l, _) = m.loss_tape(&pv, &xb, &d.y[r.clone()], Mode::Train);
            let gr = tape.grad(l, &pv);
            let flat: Vec<f64> = spec
                .si
                .iter()
                .flat_map(|&i| gr[i].value().as_slice().to_vec())
                .collect();
            g.iter_mut().zip(&flat).for_each(|(a, b)| *a += 0.5 * b);
        }
        g
    };
    let mut h = Matrix::zeros(p, p);
    for k in 0..p {
        let e = 1e-5 * (1.0 + w[k].abs());
        let mut a = w.clone();
        a[k] += e;
        let mut b = w.clone();
        b[k] -= e;
        let (ga, gb) = (grad(&a), grad(&b));
        for j in 0..p {
            h.set(j, k, (ga[j] - gb[j]) / (2.0 * e));
        }
    }
    let hs = Matrix::from_fn(p, p, |i, j| 0.5 * (h.get(i, j) + h.get(j, i)));
    let ev = jacobi_eigenvalues(&hs);
    let top = ev[ev.len() - 1];
    let got = metrics::top_eigenvalue(&net, &spec, &d.x, &d.y, 8, 40, 0).unwrap();
    assert!(
        (got.value - top).abs() <= 1e-5 * top.abs(),
        "{} vs {top}",
        got.value
    );
    assert!(got.residual <= 1e-5 * top.abs());
}

fn rec(epoch: usize, loss: f64, err: f64, cd: Option<f64>) -> EpochRecord {
    EpochRecord {
        epoch,
        elr: 1e-3,
        steps: if epoch == 0 { 0 } else { 10 },
        mean_batch_loss: None,
        train_loss: loss,
        train_error: err,
        test_loss: None,
        test_error: None,
        gm: 1.0,
        gm_effective: 1.0,
        fisher_trace: None,
        fisher_trace_se: None,
        fisher_effective: None,
        lambda_max: None,
        lambda_residual: None,
        lambda_effective: None,
        radius: 1.0,
        radius_rel_dev: 0.0,
        cos_dist_prev: cd,
        angle_from_start: 0.0,
        mean_step_angle: None,
        mean_step_length: None,
        seconds: 0.0,
    }
}

#[test]
fn regime_rule_and_boundaries() {
    let rule = RegimeRule::default();
    let mk = |f: &dyn Fn(usize) -> (f64, f64, f64)| -> Vec<EpochRecord> {
        (0..=10)
            .map(|e| {
                let (l, er, cd) = f(e);
                rec(e, l, er, (e > 0).then_some(cd))
            })
            .collect()
    };
    let r1 = mk(&|e| (1.0 / (1.0 + e as f64), 0.1 / (1.0 + e as f64), 1e-3));
    assert_eq!(classify(&r1, 10, &rule).label, "1 (not converged)");
    let r1c = mk(&|e| (1.0 / (1.0 + e as f64), if e > 5 { 0.0 } else { 0.1 }, 1e-3));
    let l = classify(&r1c, 10, &rule);
    assert!(l.converged && l.regime == 1);
    let r2 = mk(&|e| (0.5 + 0.05 * ((e * 7 % 3) as f64 - 1.0), 0.15, 0.05));
    assert_eq!(classify(&r2, 10, &rule).regime, 2);
    let r3 = mk(&|e| (2.3 + 0.01 * (e % 2) as f64, 0.9, 0.95));
    let l3 = classify(&r3, 10, &rule);
    assert_eq!(l3.regime, 3);
    let inp = l3.inputs.unwrap();
    assert_eq!(inp.window_epochs, vec![6, 7, 8, 9, 10]);
    assert!((inp.chance_error - 0.9).abs() < 1e-15);
    let b = boundaries(&[(1e-2, 2), (1e-4, 1), (1.0, 3), (1e-3, 1), (0.1, 3)]);
    assert_eq!(b.len(), 2);
    assert_eq!(
        (
            b[0].from_regime,
            b[0].to_regime,
            b[0].elr_below,
            b[0].elr_above
        ),
        (1, 2, 1e-3, 1e-2)
    );
    assert_eq!(
        (
            b[1].from_regime,
            b[1].to_regime,
            b[1].elr_below,
            b[1].elr_above
        ),
        (2, 3, 1e-2, 0.1)
    );
}

#[test]
fn schedules_and_grids() {
    let s = ElrSchedule::parse("0:1e-2,2:1e-2,4:1e-4").unwrap();
    assert_eq!(s.at(1.0), 1e-2);
    assert!((s.at(3.0) - 0.5 * (1e-2 + 1e-4)).abs() < 1e-15);
    assert_eq!(s.at(9.0), 1e-4);
    assert_eq!(ElrSchedule::parse("3e-3").unwrap().at(5.0), 3e-3);
    for bad in ["", "x", "0:1,0:2", "1:-1", "-1"] {
        assert!(ElrSchedule::parse(bad).is_err(), "{bad}");
    }
    let g = log_grid(1e-5, 1.0, 11).unwrap();
    assert_eq!(g.len(), 11);
    assert_eq!(g[0], 1e-5);
    assert_eq!(g[10], 1.0);
    assert!((g[1] - 3.16e-5).abs() < 1e-18);
}

#[test]
fn resumed_runs_continue_bit_for_bit() {
    let d = data(40, 3, 11);
    let (mut net, spec) = tiny_net(LossKind::Mse, 3, 1e-5);
    let mut w = spec.vector(&net);
    let spheres = Spheres::new(&spec, &mut w, RadiusMode::Initial, false).unwrap();
    spec.set_vector(&mut net, &w);
    let start = SphereRun::new(net, spec, spheres, 0);
    let rule = RegimeRule::default();
    let t = TempDir::new("sphere-resume");
    let c4 = cfg(StepKind::RandomWalk, 0.02, 4);
    let full = run_in_dir(
        &t.join("a"),
        "a",
        &start,
        &c4,
        &rule,
        &d,
        None,
        &prov(),
        false,
        0,
        Box::new(|| {}),
    )
    .unwrap();
    // Interrupt after epoch 2 by running a 2-epoch configuration, then resume with 4.
    let c2 = cfg(StepKind::RandomWalk, 0.02, 2);
    let part = run_in_dir(
        &t.join("b"),
        "b",
        &start,
        &c2,
        &rule,
        &d,
        None,
        &prov(),
        false,
        0,
        Box::new(|| {}),
    )
    .unwrap();
    assert_eq!(part.completed_epoch, 2);
    // Rewrite the stored configuration's epoch count, as an interrupted 4-epoch run would have it.
    let mut r = read_run_record(&t.join("b")).unwrap();
    r.config.epochs = 4;
    write_run_files(&t.join("b"), &r, &prov()).unwrap();
    let resumed = run_in_dir(
        &t.join("b"),
        "b",
        &start,
        &c4,
        &rule,
        &d,
        None,
        &prov(),
        true,
        0,
        Box::new(|| {}),
    )
    .unwrap();
    assert_eq!(resumed.history.len(), full.history.len());
    // The records before the interruption come back from run.json, whose float
    // parser may differ in the last bit; the records after it and the checkpoint
    // (safetensors, f64) are bit-identical.
    for (k, (a, b)) in full.history.iter().zip(&resumed.history).enumerate() {
        let (mut a, mut b) = (a.clone(), b.clone());
        a.seconds = 0.0;
        b.seconds = 0.0;
        if k > 2 {
            assert_eq!(a, b);
        } else {
            assert!((a.train_loss - b.train_loss).abs() <= 1e-15 * a.train_loss);
            assert!((a.radius - b.radius).abs() <= 1e-15 * a.radius);
        }
    }
    let (ra, _) = load_checkpoint(&t.join("a/checkpoint.safetensors"), false).unwrap();
    let (rb, _) = load_checkpoint(&t.join("b/checkpoint.safetensors"), false).unwrap();
    assert_eq!(ra.net, rb.net);
    // Mode connectivity between the two (identical) ends is flat, and its ends are on the sphere.
    let pts = connect_on_sphere(&ra, &rb, 3, &d, None, 8, || {}).unwrap();
    assert!((pts[0].train_loss - pts[2].train_loss).abs() < 1e-12);
}

#[test]
fn sphere_commands_end_to_end() {
    let t = TempDir::new("sphere-cli");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let out = t.join("sw");
    let o = Command::new(bin)
        .args([
            "sphere",
            "sweep",
            "--data",
            "digits",
            "--train-size",
            "96",
            "--test-split",
            "0.25",
            "--width",
            "2",
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--elr",
            "1e-3,1",
            "--curvature-every",
            "2",
            "--curvature-samples",
            "32",
            "--curvature-batch",
            "16",
            "--lanczos-iter",
            "5",
            "--save-every",
            "1",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sweep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(sweep["results"]["runs"].as_array().unwrap().len(), 2);
    assert!(sweep["provenance"]["dataset"]["sha256"].is_string());
    assert!(out.join("elr_1.00e-3/metrics.csv").exists());
    assert!(out.join("figs/phase_gm.svg").exists() && out.join("figs/phase_gm.png").exists());
    // Fine-tuning from a checkpoint and connect between two runs.
    let ft = t.join("ft");
    let o = Command::new(bin)
        .args([
            "sphere",
            "train",
            "--data",
            "digits",
            "--train-size",
            "96",
            "--width",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--elr",
            "1e-4",
            "--curvature-every",
            "0",
            "--from",
        ])
        .arg(out.join("elr_1.00e-3/epoch_2.safetensors"))
        .arg("--out")
        .arg(&ft)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = read_run_record(&ft).unwrap();
    assert_eq!((r.start_epoch, r.completed_epoch), (2, 3));
    let o = Command::new(bin)
        .args([
            "sphere",
            "connect",
            "--data",
            "digits",
            "--train-size",
            "96",
            "--points",
            "3",
            "--batch-size",
            "32",
            "--a",
        ])
        .arg(out.join("elr_1.00e-3/checkpoint.safetensors"))
        .arg("--b")
        .arg(out.join("elr_1.00e0/checkpoint.safetensors"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Bad input: one-line errors, no panic.
    for (args, needle) in [
        (
            vec![
                "sphere", "train", "--data", "digits", "--elr=-1", "--out", "x",
            ],
            "elr",
        ),
        (
            vec![
                "sphere", "sweep", "--data", "digits", "--grid", "1:2", "--out", "x",
            ],
            "--grid",
        ),
        (
            vec![
                "sphere", "train", "--data", "digits", "--elr", "1", "--radius", "big", "--out",
                "x",
            ],
            "--radius",
        ),
    ] {
        let o = Command::new(bin).args(&args).output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(lines.len(), 1, "{e}");
        assert!(lines[0].contains(needle), "{e}");
    }
}
