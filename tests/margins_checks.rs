//! Margins (Jiang et al. 2019) against brute force: logit differences and their
//! gradients by central finite differences (step 1e-6) or closed forms, total
//! variations from hand-computed representations; the signs on misclassified
//! samples; least squares, R^2, cross-validation and Kendall tau on
//! hand-computed examples; an interrupted study resumed to identical records.

#![allow(clippy::needless_range_loop)] // index loops over parallel arrays read clearer

use landscape::experiments::margins::stats::{
    cross_validate, kendall_tau, least_squares, quantile_sorted,
};
use landscape::experiments::margins::study::{
    analyse, load_data, models_csv, run_study, RunOptions, StudyConfig,
};
use landscape::experiments::margins::{compute_margins, LayerSel};
use landscape::nn::arch::{Architecture, LayerSpec};
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig, Network};
use landscape::rng::Rng;
use landscape::Matrix;

fn random_x(n: usize, d: usize, seed: u64) -> Matrix<f64> {
    let mut rng = Rng::new(seed);
    let mut x = Matrix::zeros(n, d);
    for v in x.as_mut_slice() {
        *v = rng.normal();
    }
    x
}

/// Logits of `net` for one input row.
fn logits_of(net: &Network<f64>, row: &[f64]) -> Vec<f64> {
    let mut x = Matrix::zeros(1, row.len());
    x.row_mut(0).copy_from_slice(row);
    net.logits(&x).unwrap().row(0).to_vec()
}

/// `f_i - f_j` with `j` the best other class of the unperturbed logits.
fn runner_up(z: &[f64], i: usize) -> usize {
    let mut j = usize::MAX;
    for k in 0..z.len() {
        if k != i && (j == usize::MAX || z[k] > z[j]) {
            j = k;
        }
    }
    j
}

/// Central-difference gradient norm of `g` at `v`.
fn fd_norm(v: &[f64], g: impl Fn(&[f64]) -> f64) -> f64 {
    let h = 1e-6;
    let mut s = 0.0;
    let mut w = v.to_vec();
    for k in 0..v.len() {
        w[k] = v[k] + h;
        let a = g(&w);
        w[k] = v[k] - h;
        let b = g(&w);
        w[k] = v[k];
        let d = (a - b) / (2.0 * h);
        s += d * d;
    }
    s.sqrt()
}

fn tv(rows: &[Vec<f64>]) -> f64 {
    let n = rows.len() as f64;
    let d = rows[0].len();
    let mut t = 0.0;
    for k in 0..d {
        let m = rows.iter().map(|r| r[k]).sum::<f64>() / n;
        t += rows.iter().map(|r| (r[k] - m).powi(2)).sum::<f64>() / n;
    }
    t.sqrt()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn mlp_margins_match_brute_force() {
    let cfg = MlpConfig {
        input_dim: 5,
        hidden: vec![6, 4],
        classes: 3,
        activation: Activation::Tanh,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let mlp = Mlp::<f64>::init(cfg, Init::Kaiming, 1.0, 3).unwrap();
    let net = Network::from_mlp(&mlp);
    let n = 150; // more than one block of 128
    let x = random_x(n, 5, 11);
    let y: Vec<usize> = (0..n).map(|i| (i * 7) % 3).collect();
    let layers = [
        LayerSel::Input,
        LayerSel::Hidden(1),
        LayerSel::Hidden(2),
        LayerSel::Output,
    ];
    let m = compute_margins(&net, &x, &y, &layers).unwrap();
    // Hand forward from a hidden layer: params W1 b1 W2 b2 W3 b3 (W is out x in).
    let p = &net.params;
    let affine = |w: &Matrix<f64>, b: &Matrix<f64>, v: &[f64]| -> Vec<f64> {
        (0..w.rows())
            .map(|r| w.row(r).iter().zip(v).map(|(a, c)| a * c).sum::<f64>() + b.as_slice()[r])
            .collect()
    };
    let th = |v: Vec<f64>| v.into_iter().map(f64::tanh).collect::<Vec<_>>();
    let h1 = |v: &[f64]| th(affine(&p[0], &p[1], v));
    let from_h1 = |h: &[f64]| affine(&p[4], &p[5], &th(affine(&p[2], &p[3], h)));
    let from_h2 = |h: &[f64]| affine(&p[4], &p[5], h);
    let mut hid1 = Vec::new();
    let mut hid2 = Vec::new();
    for s in 0..n {
        let a = h1(x.row(s));
        hid2.push(th(affine(&p[2], &p[3], &a)));
        hid1.push(a);
    }
    let inputs: Vec<Vec<f64>> = (0..n).map(|s| x.row(s).to_vec()).collect();
    let tvs = [tv(&inputs), tv(&hid1), tv(&hid2)];
    for (k, t) in tvs.iter().enumerate() {
        assert!(close(m.layers[k].total_variation, *t, 1e-12), "tv {k}");
    }
    for s in 0..n {
        let z = logits_of(&net, x.row(s));
        let (i, j) = (y[s], runner_up(&z, y[s]));
        assert_eq!(m.runner_up[s], j);
        let gap = z[i] - z[j];
        assert!(close(m.logit_gap[s], gap, 1e-12));
        let g_in = fd_norm(x.row(s), |v| {
            let z = logits_of(&net, v);
            z[i] - z[j]
        });
        let g_h1 = fd_norm(&hid1[s], |v| {
            let z = from_h1(v);
            z[i] - z[j]
        });
        let g_h2 = fd_norm(&hid2[s], |v| {
            let z = from_h2(v);
            z[i] - z[j]
        });
        let want = [g_in, g_h1, g_h2, 2f64.sqrt()];
        for (k, g) in want.iter().enumerate() {
            assert!(
                close(m.layers[k].grad_norms[s], *g, 1e-6),
                "sample {s} layer {k}: {} vs {g}",
                m.layers[k].grad_norms[s]
            );
            assert!(close(m.layers[k].raw[s], gap / g, 1e-6));
            let t = if k < 3 {
                tvs[k]
            } else {
                m.layers[3].total_variation
            };
            assert!(close(m.layers[k].normalized[s], gap / g / t, 1e-6));
        }
    }
    // Output layer total variation: from the logits.
    let zs: Vec<Vec<f64>> = (0..n).map(|s| logits_of(&net, x.row(s))).collect();
    assert!(close(m.layers[3].total_variation, tv(&zs), 1e-12));
}

#[test]
fn conv_margins_match_brute_force() {
    let arch = Architecture {
        name: "custom".into(),
        input_shape: [2, 4, 4],
        classes: 4,
        loss: LossKind::CrossEntropy,
        leaky_slope: 0.01,
        layers: vec![
            LayerSpec::Conv2d {
                name: "c1".into(),
                out: 3,
                kernel: 3,
                stride: 1,
                padding: 1,
                bias: true,
            },
            LayerSpec::Activation {
                act: Activation::Tanh,
            },
            LayerSpec::Flatten,
            LayerSpec::Linear {
                name: "fc".into(),
                out: 4,
                bias: true,
            },
        ],
        mlp: None,
    };
    let net = Network::<f64>::init(arch, Init::Torch, 1.0, 5).unwrap();
    let n = 20;
    let x = random_x(n, 32, 8);
    let y: Vec<usize> = (0..n).map(|i| i % 4).collect();
    let layers = [LayerSel::Input, LayerSel::Hidden(1), LayerSel::Output];
    let m = compute_margins(&net, &x, &y, &layers).unwrap();
    let inputs: Vec<Vec<f64>> = (0..n).map(|s| x.row(s).to_vec()).collect();
    assert!(close(m.layers[0].total_variation, tv(&inputs), 1e-12));
    let w = &net.params[2]; // fc weight, classes x (3*4*4)
    for s in 0..n {
        let z = logits_of(&net, x.row(s));
        let (i, j) = (y[s], runner_up(&z, y[s]));
        let gap = z[i] - z[j];
        let g_in = fd_norm(x.row(s), |v| {
            let z = logits_of(&net, v);
            z[i] - z[j]
        });
        // The hidden map feeds the logits linearly: the gradient is W_i - W_j.
        let g_h: f64 = w
            .row(i)
            .iter()
            .zip(w.row(j))
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        assert!(close(m.layers[0].grad_norms[s], g_in, 1e-6), "input {s}");
        assert!(close(m.layers[1].grad_norms[s], g_h, 1e-10), "hidden {s}");
        assert!(close(m.layers[0].raw[s], gap / g_in, 1e-6));
        assert!(close(m.layers[2].raw[s], gap / 2f64.sqrt(), 1e-12));
    }
}

#[test]
fn margins_negative_exactly_on_misclassified() {
    let cfg = MlpConfig {
        input_dim: 4,
        hidden: vec![8],
        classes: 5,
        activation: Activation::Relu,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let net = Network::from_mlp(&Mlp::<f64>::init(cfg, Init::Kaiming, 1.0, 1).unwrap());
    let n = 300;
    let x = random_x(n, 4, 2);
    let y: Vec<usize> = (0..n).map(|i| (i * 3) % 5).collect();
    let z = net.logits(&x).unwrap();
    let m = compute_margins(
        &net,
        &x,
        &y,
        &[LayerSel::Input, LayerSel::Hidden(1), LayerSel::Output],
    )
    .unwrap();
    let mut wrong = 0;
    for s in 0..n {
        let row = z.row(s);
        let best = (0..5).fold(0, |b, k| if row[k] > row[b] { k } else { b });
        let mis = best != y[s];
        wrong += mis as usize;
        for l in &m.layers {
            assert_eq!(l.raw[s] < 0.0, mis, "sample {s}");
            assert_eq!(l.normalized[s] < 0.0, mis);
        }
    }
    assert!(wrong > 50 && wrong < n, "both kinds present ({wrong})");
}

#[test]
fn least_squares_r2_tau_by_hand() {
    // y = 0, 0, 3 at x = 0, 1, 2: slope 1.5, intercept -0.5, R^2 = 1 - 1.5/6.
    let x = vec![vec![0.0], vec![1.0], vec![2.0]];
    let f = least_squares(&x, &[0.0, 0.0, 3.0]).unwrap();
    assert!(close(f.coefficients[0], -0.5, 1e-14) && close(f.coefficients[1], 1.5, 1e-14));
    assert!(close(f.r2, 0.75, 1e-14));
    // Two features, exact: y = 1 + 2 a - 3 b.
    let xs: Vec<Vec<f64>> = (0..7)
        .map(|i| vec![i as f64, ((i * i) % 5) as f64])
        .collect();
    let ys: Vec<f64> = xs.iter().map(|r| 1.0 + 2.0 * r[0] - 3.0 * r[1]).collect();
    let f = least_squares(&xs, &ys).unwrap();
    for (c, w) in f.coefficients.iter().zip([1.0, 2.0, -3.0]) {
        assert!(close(*c, w, 1e-12));
    }
    let cv = cross_validate(&xs, &ys, 3, 0).unwrap();
    assert!(close(cv.r2, 1.0, 1e-12));
    // Rank deficiency and too few observations are errors.
    let dup: Vec<Vec<f64>> = (0..5).map(|i| vec![i as f64, 2.0 * i as f64]).collect();
    assert!(least_squares(&dup, &[1.0, 2.0, 0.0, 1.0, 3.0]).is_err());
    assert!(least_squares(&x[..1], &[1.0]).is_err());
    // Kendall: one discordant pair of six; tau-b with one tie on each side.
    assert!(close(
        kendall_tau(&[1., 2., 3., 4.], &[1., 3., 2., 4.]),
        2.0 / 3.0,
        1e-15
    ));
    assert!(close(
        kendall_tau(&[1., 2., 2., 3.], &[1., 2., 3., 3.]),
        0.8,
        1e-15
    ));
    assert!(close(
        kendall_tau(&[1., 2., 3.], &[3., 2., 1.]),
        -1.0,
        1e-15
    ));
    assert!(close(quantile_sorted(&[1., 2., 3., 4.], 0.25), 1.75, 1e-15));
    assert!(close(
        quantile_sorted(&[1., 2., 3., 4., 5.], 0.5),
        3.0,
        1e-15
    ));
}

fn tiny_study() -> StudyConfig {
    let mut c = StudyConfig {
        test_size: Some(60),
        ..Default::default()
    };
    c.grid.depth = vec![1];
    c.grid.width = vec![6];
    c.grid.lr = vec![0.05];
    c.grid.batch_size = vec![16, 32];
    c.grid.train_size = vec![48];
    c.grid.label_noise = vec![0.0, 0.2];
    c.grid.seed = vec![0];
    c.epochs = 2;
    c.checkpoints = vec![1, 2];
    c.layers = vec!["output".into()];
    c.curvature.samples = 24;
    c.curvature.lanczos_iter = 4;
    c.curvature.hutchinson_probes = 2;
    c.curvature.sharpness_steps = 2;
    c.folds = 2;
    c
}

#[test]
fn study_resumes_without_retraining() {
    let cfg = tiny_study();
    let bundle = load_data(&cfg).unwrap();
    let base = std::env::temp_dir().join(format!("margins-study-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (a, b) = (base.join("a"), base.join("b"));
    let opts = |jobs, resume, stop_after| RunOptions {
        jobs,
        resume,
        stop_after,
    };
    let full = run_study(&cfg, &bundle, &a, &opts(1, false, None), &|_, _| {}).unwrap();
    assert_eq!(full.len(), 4);
    // Interrupted after 2 models, then resumed with 2 jobs.
    let err = run_study(&cfg, &bundle, &b, &opts(1, false, Some(2)), &|_, _| {});
    assert!(matches!(err, Err(landscape::Error::Interrupted { .. })));
    let done: Vec<_> = std::fs::read_dir(b.join("models")).unwrap().collect();
    assert_eq!(done.len(), 2);
    // A second plain start refuses the folder.
    assert!(run_study(&cfg, &bundle, &b, &opts(1, false, None), &|_, _| {}).is_err());
    let before: Vec<std::time::SystemTime> = (0..2)
        .map(|i| {
            std::fs::metadata(b.join(format!("models/model-{i:05}.json")))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let resumed = run_study(&cfg, &bundle, &b, &opts(2, true, None), &|_, _| {}).unwrap();
    for i in 0..2 {
        let t = std::fs::metadata(b.join(format!("models/model-{i:05}.json")))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(t, before[i], "model {i} was not rewritten");
    }
    // Only the two missing models were timed (trained) in the resumed run.
    let timings = std::fs::read_to_string(b.join("timings.csv")).unwrap();
    assert_eq!(timings.lines().count(), 1 + 4);
    for i in 0..4 {
        let p = format!("models/model-{i:05}.json");
        assert_eq!(
            std::fs::read(a.join(&p)).unwrap(),
            std::fs::read(b.join(&p)).unwrap(),
            "{p}"
        );
    }
    assert_eq!(models_csv(&cfg, &full), models_csv(&cfg, &resumed));
    assert_eq!(
        analyse(&cfg, &full).unwrap(),
        analyse(&cfg, &resumed).unwrap()
    );
    // Another configuration cannot resume this folder.
    let mut other = cfg.clone();
    other.epochs = 3;
    other.checkpoints = vec![3];
    assert!(run_study(&other, &bundle, &b, &opts(1, true, None), &|_, _| {}).is_err());
    // Unknown training methods are refused.
    let mut bad = cfg.clone();
    bad.grid.method = vec!["adamw".into()];
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("unknown training method"));
    let _ = std::fs::remove_dir_all(&base);
}

/// The study's method axis: every training method of `optim::methods`, with its value.
#[test]
fn study_methods_parse_to_training_methods() {
    use landscape::experiments::margins::study::parse_method;
    use landscape::optim::methods::TrainMethod;
    assert_eq!(parse_method("sgd").unwrap(), TrainMethod::Plain);
    assert_eq!(
        parse_method("sam:0.05").unwrap(),
        TrainMethod::Sam {
            rho: 0.05,
            chunk: None
        }
    );
    assert!(matches!(
        parse_method("trace:1e-3").unwrap(),
        TrainMethod::TracePenalty { lambda, probes: 1, .. } if lambda == 1e-3
    ));
    assert!(matches!(
        parse_method("asam:0.5").unwrap(),
        TrainMethod::Asam { rho, .. } if rho == 0.5
    ));
    for bad in ["adam", "sam", "sam:x", "sam:-1", "grad-norm:nan"] {
        let e = parse_method(bad).unwrap_err().to_string();
        assert!(e.contains("grid.method") && !e.contains('\n'), "{bad}: {e}");
    }
}
