//! Integration tests: analytic backprop, optimisers, determinism, NaN detection.

use landscape::nn::backprop::{loss_and_grad_analytic, SAMPLE_BLOCK};
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig, Mode};
use landscape::rng::Rng;
use landscape::train::{loss_and_grad, train, Optimizer, TrainConfig};
use landscape::{Error, Matrix};

fn config(widths: &[usize], act: Activation, bias: bool, loss: LossKind) -> MlpConfig {
    MlpConfig {
        input_dim: widths[0],
        hidden: widths[1..widths.len() - 1].to_vec(),
        classes: *widths.last().unwrap(),
        activation: act,
        leaky_slope: 0.1,
        bias,
        batchnorm: None,
        loss,
    }
}

/// Two Gaussian blobs per class in `d` dimensions.
fn blobs(n: usize, d: usize, k: usize, seed: u64) -> (Matrix<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let centres: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..d).map(|_| 2.0 * rng.normal()).collect())
        .collect();
    let y: Vec<usize> = (0..n).map(|i| i % k).collect();
    let x = Matrix::from_fn(n, d, |i, j| centres[y[i]][j] + 0.5 * rng.normal());
    (x, y)
}

#[test]
fn analytic_gradient_equals_tape_gradient() {
    // Sizes straddle the sample block so the blocked, parallel reduction is exercised.
    for (i, n) in [
        1usize,
        7,
        SAMPLE_BLOCK,
        SAMPLE_BLOCK + 1,
        3 * SAMPLE_BLOCK + 5,
    ]
    .into_iter()
    .enumerate()
    {
        for act in [
            Activation::Relu,
            Activation::Tanh,
            Activation::LeakyRelu,
            Activation::Identity,
        ] {
            for bias in [true, false] {
                for loss in [LossKind::CrossEntropy, LossKind::Mse] {
                    let cfg = config(&[6, 9, 5, 3], act, bias, loss);
                    let m = Mlp::<f64>::init(cfg, Init::Torch, 1.0, i as u64).unwrap();
                    let (x, y) = blobs(n, 6, 3, 10 + i as u64);
                    let (l_a, g_a) = loss_and_grad_analytic(&m, &x, &y).unwrap();
                    let (l_t, g_t, _) = loss_and_grad(&m, &x, &y, Mode::Train);
                    assert!(
                        (l_a - l_t).abs() <= 1e-12 * l_t.abs().max(1.0),
                        "loss {l_a} vs {l_t}"
                    );
                    for (a, t) in g_a.iter().zip(&g_t) {
                        assert_eq!(a.shape(), t.shape());
                        let scale = t.max_abs().max(1e-8);
                        let diff = a.zip_map(t, |u, v| u - v).max_abs();
                        assert!(
                            diff <= 1e-12 * scale.max(1.0),
                            "{act:?} bias={bias} {loss:?} n={n}: {diff:e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn analytic_gradient_rejects_batchnorm_and_bad_shapes() {
    let mut cfg = config(&[4, 3, 2], Activation::Relu, true, LossKind::CrossEntropy);
    let m = Mlp::<f64>::init(cfg.clone(), Init::Torch, 1.0, 0).unwrap();
    let (x, y) = blobs(5, 3, 2, 0);
    let e = loss_and_grad_analytic(&m, &x, &y).unwrap_err();
    assert!(e.to_string().contains("expects inputs of size 4"), "{e}");
    cfg.batchnorm = Some(Default::default());
    let m = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 0).unwrap();
    let (x, y) = blobs(5, 4, 2, 0);
    assert!(matches!(
        loss_and_grad_analytic(&m, &x, &y),
        Err(Error::Unsupported(_))
    ));
}

/// One SGD step with momentum and weight decay, two steps, checked by hand:
/// `v1 = g1 + wd w0`, `w1 = w0 - lr v1`, `v2 = mu v1 + g2 + wd w1`, `w2 = w1 - lr v2`.
#[test]
fn sgd_momentum_matches_hand_computation() {
    let cfg = config(&[3, 2], Activation::Identity, true, LossKind::Mse);
    let m0 = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 3).unwrap();
    let (x, y) = blobs(4, 3, 2, 1);
    let (lr, mu, wd) = (0.1, 0.9, 0.01);
    let tc = TrainConfig {
        epochs: 1,
        batch_size: 4,
        optimizer: Optimizer::Sgd {
            lr,
            momentum: mu,
            weight_decay: wd,
        },
        seed: 0,
    };
    let mut m = m0.clone();
    let mut tc2 = tc.clone();
    tc2.epochs = 2;
    train(&mut m, &x, &y, None, &tc2, |_, _, _| {}, |_, _| Ok(())).unwrap();
    // By hand (a full batch: the shuffle does not change the mean gradient).
    let w0 = m0.param_vector();
    let g = |w: &[f64]| {
        let mut mm = m0.clone();
        mm.set_param_vector(w).unwrap();
        let (_, gr) = loss_and_grad_analytic(&mm, &x, &y).unwrap();
        gr.iter()
            .flat_map(|t| t.as_slice().to_vec())
            .collect::<Vec<f64>>()
    };
    let g1 = g(&w0);
    let v1: Vec<f64> = g1.iter().zip(&w0).map(|(g, w)| g + wd * w).collect();
    let w1: Vec<f64> = w0.iter().zip(&v1).map(|(w, v)| w - lr * v).collect();
    let g2 = g(&w1);
    let v2: Vec<f64> = (0..w1.len())
        .map(|i| mu * v1[i] + g2[i] + wd * w1[i])
        .collect();
    let w2: Vec<f64> = (0..w1.len()).map(|i| w1[i] - lr * v2[i]).collect();
    for (a, b) in m.param_vector().iter().zip(&w2) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
}

/// Adam's first step is `lr * g / (|g| + eps)` per coordinate (bias corrections cancel).
#[test]
fn adam_first_step_is_sign_like() {
    let cfg = config(&[3, 4, 2], Activation::Tanh, true, LossKind::CrossEntropy);
    let m0 = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 5).unwrap();
    let (x, y) = blobs(6, 3, 2, 2);
    let (_, g) = loss_and_grad_analytic(&m0, &x, &y).unwrap();
    let g: Vec<f64> = g.iter().flat_map(|t| t.as_slice().to_vec()).collect();
    let tc = TrainConfig {
        epochs: 1,
        batch_size: 6,
        optimizer: Optimizer::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
        seed: 0,
    };
    let mut m = m0.clone();
    train(&mut m, &x, &y, None, &tc, |_, _, _| {}, |_, _| Ok(())).unwrap();
    for ((w1, w0), gi) in m.param_vector().iter().zip(m0.param_vector()).zip(&g) {
        let expect = w0 - 0.01 * gi / (gi.abs() + 1e-8);
        assert!((w1 - expect).abs() < 1e-12, "{w1} vs {expect}");
    }
}

#[test]
fn training_is_bit_reproducible_and_learns() {
    let (all_x, all_y) = blobs(390, 5, 3, 7);
    let (x, y) = (all_x.rows_view(0, 300).to_owned(), all_y[..300].to_vec());
    let (tx, ty) = (all_x.rows_view(300, 390).to_owned(), all_y[300..].to_vec());
    let run = || {
        let cfg = config(&[5, 16, 3], Activation::Relu, true, LossKind::CrossEntropy);
        let mut m = Mlp::<f64>::init(cfg, Init::Kaiming, 1.0, 11).unwrap();
        let tc = TrainConfig {
            epochs: 5,
            batch_size: 32,
            optimizer: Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 1e-4,
            },
            seed: 4,
        };
        let h = train(
            &mut m,
            &x,
            &y,
            Some((&tx, &ty)),
            &tc,
            |_, _, _| {},
            |_, _| Ok(()),
        )
        .unwrap();
        (m.param_vector(), h)
    };
    let (p1, h1) = run();
    let (p2, h2) = run();
    assert_eq!(p1, p2);
    assert_eq!(h1, h2);
    assert!(
        h1.last().unwrap().test_error.unwrap() < 0.05,
        "{:?}",
        h1.last()
    );
    assert!(h1.last().unwrap().train_loss < h1[0].train_loss);
}

#[test]
fn batchnorm_model_trains_and_updates_running_stats() {
    let (x, y) = blobs(200, 4, 2, 9);
    let mut cfg = config(&[4, 8, 2], Activation::Relu, true, LossKind::CrossEntropy);
    cfg.batchnorm = Some(Default::default());
    let mut m = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 1).unwrap();
    let tc = TrainConfig {
        epochs: 3,
        batch_size: 16,
        optimizer: Optimizer::Sgd {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
        },
        seed: 2,
    };
    let h = train(&mut m, &x, &y, None, &tc, |_, _, _| {}, |_, _| Ok(())).unwrap();
    let bn = m.layers[0].bn.as_ref().unwrap();
    assert!(bn.running_mean.max_abs() > 0.0);
    assert!(h.last().unwrap().train_error < 0.1, "{:?}", h.last());
}

#[test]
fn divergence_stops_with_epoch_and_step() {
    let (x, y) = blobs(64, 3, 2, 1);
    let cfg = config(&[3, 8, 2], Activation::Identity, true, LossKind::Mse);
    let mut m = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 0).unwrap();
    let tc = TrainConfig {
        epochs: 50,
        batch_size: 8,
        optimizer: Optimizer::Sgd {
            lr: 1e3,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        seed: 0,
    };
    let e = train(&mut m, &x, &y, None, &tc, |_, _, _| {}, |_, _| Ok(())).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::NonFinite { .. }), "{msg}");
    assert!(msg.contains("at epoch 1, step "), "{msg}");
}

#[test]
fn bad_training_options_are_errors() {
    let (x, y) = blobs(8, 3, 2, 1);
    let cfg = config(&[3, 2], Activation::Relu, true, LossKind::CrossEntropy);
    let mut m = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 0).unwrap();
    let mut tc = TrainConfig {
        epochs: 1,
        batch_size: 0,
        optimizer: Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
            weight_decay: 0.0,
        },
        seed: 0,
    };
    assert!(train(&mut m, &x, &y, None, &tc, |_, _, _| {}, |_, _| Ok(())).is_err());
    tc.batch_size = 4;
    tc.optimizer = Optimizer::Sgd {
        lr: -1.0,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let e = train(&mut m, &x, &y, None, &tc, |_, _, _| {}, |_, _| Ok(())).unwrap_err();
    assert!(e.to_string().contains("learning rate"), "{e}");
    tc.optimizer = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let bad_labels = vec![0, 1, 2, 0, 1, 0, 1, 0];
    let e = train(
        &mut m,
        &x,
        &bad_labels,
        None,
        &tc,
        |_, _, _| {},
        |_, _| Ok(()),
    )
    .unwrap_err();
    assert!(e.to_string().contains("label 2 is out of range"), "{e}");
}
