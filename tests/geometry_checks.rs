//! Landscape geometry against closed forms and dense eigendecompositions.

use crate::common::TempDir;
use landscape::experiments::geometry::{
    curvature_at, curve_point, normalize_direction, parse_grid, parse_range, pca_directions, point,
    random_direction, train_bend, BendTraining, CurveKind, Normalization, PlaneEvaluator,
};
use landscape::hessian::small_eig::sym_eigenvalues;
use landscape::hessian::{dense_hessian, Part};
use landscape::nn::{Activation, Init, LossKind, Mlp};
use landscape::rng::Rng;
use landscape::Matrix;
use std::process::Command;

fn model(widths: &[usize], act: Activation, bias: bool, loss: LossKind, seed: u64) -> Mlp<f64> {
    Mlp::init(
        crate::common::mlp_config(widths, act, bias, loss),
        Init::Kaiming,
        1.0,
        seed,
    )
    .unwrap()
}

fn row_norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

#[test]
fn filter_and_layer_normalisation() {
    let m = model(
        &[7, 5, 3],
        Activation::Relu,
        true,
        LossKind::CrossEntropy,
        1,
    );
    let d = random_direction(&m, Normalization::Filter, false, 3).unwrap();
    let mut off = 0;
    for layer in &m.layers {
        let (r, c) = (layer.weight.rows(), layer.weight.cols());
        for a in 0..r {
            let got = row_norm(&d[off + a * c..off + (a + 1) * c]);
            let want = row_norm(layer.weight.row(a));
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "row {a}: {got} vs {want}"
            );
        }
        off += r * c;
        assert!(
            d[off..off + r].iter().all(|&v| v == 0.0),
            "biases must be zero"
        );
        off += r;
    }
    // Kept biases get the model's bias norm; layer normalisation matches Frobenius norms.
    let d = random_direction(&m, Normalization::Layer, true, 4).unwrap();
    let mut off = 0;
    for layer in &m.layers {
        let (r, c) = (layer.weight.rows(), layer.weight.cols());
        let fro = layer.weight.frobenius_norm();
        assert!((row_norm(&d[off..off + r * c]) - fro).abs() <= 1e-12 * fro);
        off += r * c;
        let bn = row_norm(layer.bias.as_ref().unwrap().as_slice());
        assert!((row_norm(&d[off..off + r]) - bn).abs() <= 1e-12 * bn.max(1e-300));
        off += r;
    }
    let mut short = vec![1.0; 3];
    assert!(normalize_direction(&m, &mut short, Normalization::Filter, false).is_err());
}

/// Solves the small symmetric positive definite system `a x = b` (Gaussian elimination).
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for i in 0..n {
        let piv = (i..n)
            .max_by(|&p, &q| a[p][i].abs().total_cmp(&a[q][i].abs()))
            .unwrap();
        a.swap(i, piv);
        b.swap(i, piv);
        for r in i + 1..n {
            let f = a[r][i] / a[i][i];
            for c in i..n {
                a[r][c] -= f * a[i][c];
            }
            b[r] -= f * b[i];
        }
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (b[i] - (i + 1..n).map(|c| a[i][c] * x[c]).sum::<f64>()) / a[i][i];
    }
    x
}

#[test]
fn surface_at_the_minimum_of_a_quadratic_problem_is_its_closed_form() {
    // One layer, MSE: L(W, b) = (1/m) sum_i ||W x_i + b - onehot_i||^2 is an exact quadratic.
    let (n, k, m) = (3, 2, 40);
    let mut rng = Rng::new(2);
    let x = Matrix::from_fn(m, n, |_, _| rng.normal());
    let y: Vec<usize> = (0..m).map(|i| (i * 5 + 1) % k).collect();
    // The least-squares minimum from the normal equations, per output.
    let mut mdl = model(&[n, k], Activation::Identity, true, LossKind::Mse, 0);
    let aug = |i: usize, j: usize| if j < n { x.get(i, j) } else { 1.0 };
    let gram: Vec<Vec<f64>> = (0..=n)
        .map(|p| {
            (0..=n)
                .map(|q| (0..m).map(|i| aug(i, p) * aug(i, q)).sum())
                .collect()
        })
        .collect();
    let mut theta = vec![0.0; k * n + k];
    for out in 0..k {
        let rhs: Vec<f64> = (0..=n)
            .map(|p| {
                (0..m)
                    .map(|i| aug(i, p) * f64::from(u8::from(y[i] == out)))
                    .sum()
            })
            .collect();
        let w = solve(gram.clone(), rhs);
        theta[out * n..(out + 1) * n].copy_from_slice(&w[..n]);
        theta[k * n + out] = w[n];
    }
    mdl.set_param_vector(&theta).unwrap();
    let dx = random_direction(&mdl, Normalization::None, true, 5).unwrap();
    let dy = random_direction(&mdl, Normalization::None, true, 6).unwrap();
    let ev = PlaneEvaluator::new(&mdl, vec![dx.clone(), dy.clone()], &x, &y).unwrap();
    // Closed form: L* + (1/m) sum_i ||a u_i + b v_i||^2, with u_i = Dx x_i + dbx (the
    // linear term vanishes at the minimum).
    let out_of = |d: &[f64], i: usize| -> Vec<f64> {
        (0..k)
            .map(|o| (0..n).map(|j| d[o * n + j] * x.get(i, j)).sum::<f64>() + d[k * n + o])
            .collect()
    };
    let resid = |i: usize| -> Vec<f64> {
        (0..k)
            .map(|o| out_of(&theta, i)[o] - f64::from(u8::from(y[i] == o)))
            .collect()
    };
    let l_star = (0..m)
        .map(|i| resid(i).iter().map(|r| r * r).sum::<f64>())
        .sum::<f64>()
        / m as f64;
    let (gx, gy) = parse_grid("-1:1:5x-2:2:7").unwrap();
    for &b in &gy {
        for &a in &gx {
            let closed = l_star
                + (0..m)
                    .map(|i| {
                        let (u, v) = (out_of(&dx, i), out_of(&dy, i));
                        (0..k).map(|o| (a * u[o] + b * v[o]).powi(2)).sum::<f64>()
                    })
                    .sum::<f64>()
                    / m as f64;
            let (got, _) = ev.eval(&[a, b]).unwrap();
            assert!(
                (got - closed).abs() <= 1e-10 * closed,
                "({a}, {b}): {got} vs {closed}"
            );
        }
    }
}

#[test]
fn curvature_map_matches_dense_eigendecomposition_at_every_point() {
    for (act, bias) in [(Activation::Relu, true), (Activation::Tanh, false)] {
        let mdl = model(&[4, 6, 3], act, bias, LossKind::CrossEntropy, 7);
        let mut rng = Rng::new(8);
        let x = Matrix::from_fn(30, 4, |_, _| rng.normal());
        let y: Vec<usize> = (0..30).map(|i| i % 3).collect();
        let dirs = vec![
            random_direction(&mdl, Normalization::Filter, bias, 1).unwrap(),
            random_direction(&mdl, Normalization::Filter, bias, 2).unwrap(),
        ];
        let theta = mdl.param_vector();
        let (gx, gy) = parse_grid("-1:1:3x-1:1:3").unwrap();
        for &b in &gy {
            for &a in &gx {
                let mut m = mdl.clone();
                m.set_param_vector(&point(&theta, &dirs, &[a, b])).unwrap();
                let h = dense_hessian(&m, &x, &y, Part::Full, 1 << 26).unwrap();
                let ev = sym_eigenvalues(&h);
                let (lo, hi) = (ev[0], *ev.last().unwrap());
                let tr: f64 = (0..h.rows()).map(|i| h.get(i, i)).sum();
                // dense_limit 0 forces the matrix-free route.
                let c = curvature_at(&m, &x, &y, 0, 1e-10, 40, 3).unwrap();
                let scale = hi.abs().max(lo.abs());
                assert!(
                    (c.lambda_max - hi).abs() <= 1e-8 * scale,
                    "{} vs {hi}",
                    c.lambda_max
                );
                assert!(
                    (c.lambda_min - lo).abs() <= 1e-8 * scale,
                    "{} vs {lo}",
                    c.lambda_min
                );
                assert!((c.ratio - (lo / hi).abs()).abs() <= 1e-7 * (lo / hi).abs().max(1e-12));
                if act == Activation::Relu {
                    // tr(H) = tr(GN) exactly for piecewise-linear activations.
                    assert!(c.trace_ci.is_none());
                    assert!((c.trace - tr).abs() <= 1e-10 * tr.abs());
                } else {
                    let (l, u) = c.trace_ci.unwrap();
                    assert!(l <= c.trace && c.trace <= u);
                }
                let d = curvature_at(&m, &x, &y, usize::MAX, 1e-10, 40, 3).unwrap();
                assert_eq!(d.method, "dense");
                assert!(
                    (d.lambda_max - hi).abs() <= 1e-12 * scale
                        && (d.trace - tr).abs() <= 1e-12 * tr.abs().max(1.0)
                );
            }
        }
    }
}

#[test]
fn curves_have_the_right_ends_and_training_lowers_the_path_loss() {
    let a: Vec<f64> = vec![1.0, 2.0, 3.0];
    let b: Vec<f64> = vec![-1.0, 0.5, 2.0];
    let bend: Vec<f64> = vec![0.0, 5.0, -1.0];
    for kind in [CurveKind::Linear, CurveKind::Bezier, CurveKind::Polychain] {
        assert_eq!(curve_point(kind, &a, &bend, &b, 0.0), a);
        assert_eq!(curve_point(kind, &a, &bend, &b, 1.0), b);
    }
    assert_eq!(curve_point(CurveKind::Polychain, &a, &bend, &b, 0.5), bend);
    let bz = curve_point(CurveKind::Bezier, &a, &bend, &b, 0.5);
    for i in 0..3 {
        assert!((bz[i] - (0.25 * a[i] + 0.5 * bend[i] + 0.25 * b[i])).abs() < 1e-15);
    }
    // Two models trained apart; the trained bend lowers the loss along the curve.
    let mut rng = Rng::new(11);
    let x = Matrix::from_fn(120, 5, |_, _| rng.normal());
    let y: Vec<usize> = (0..120)
        .map(|i| usize::from(x.get(i, 0) + x.get(i, 1) > 0.0))
        .collect();
    let base = model(
        &[5, 8, 2],
        Activation::Relu,
        true,
        LossKind::CrossEntropy,
        1,
    );
    let fit = |seed: u64| {
        let mut m = model(
            &[5, 8, 2],
            Activation::Relu,
            true,
            LossKind::CrossEntropy,
            seed,
        );
        let cfg = landscape::train::TrainConfig {
            epochs: 60,
            batch_size: 16,
            optimizer: landscape::train::Optimizer::Adam {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            seed,
        };
        landscape::train::train(&mut m, &x, &y, None, &cfg, |_, _, _| {}, |_, _| Ok(())).unwrap();
        m.param_vector()
    };
    let (ta, tb) = (fit(21), fit(22));
    let path_loss = |bend: &[f64]| -> f64 {
        (0..=10)
            .map(|i| {
                let mut m = base.clone();
                m.set_param_vector(&curve_point(
                    CurveKind::Bezier,
                    &ta,
                    bend,
                    &tb,
                    i as f64 / 10.0,
                ))
                .unwrap();
                landscape::train::evaluate(&m, &x, &y).unwrap().0
            })
            .sum::<f64>()
            / 11.0
    };
    let mid: Vec<f64> = ta.iter().zip(&tb).map(|(p, q)| 0.5 * (p + q)).collect();
    let cfg = BendTraining {
        epochs: 40,
        batch_size: 16,
        lr: 1e-2,
        seed: 3,
    };
    let (trained, _) = train_bend(&base, CurveKind::Bezier, &ta, &tb, &x, &y, &cfg, || {}).unwrap();
    assert!(
        path_loss(&trained) < path_loss(&mid),
        "{} vs {}",
        path_loss(&trained),
        path_loss(&mid)
    );
    assert!(train_bend(&base, CurveKind::Linear, &ta, &tb, &x, &y, &cfg, || {}).is_err());
}

#[test]
fn grids_and_pca() {
    assert_eq!(parse_range("0:1:3").unwrap(), vec![0.0, 0.5, 1.0]);
    for bad in ["1:-1:5", "0:1:1", "a:b:c", "0:1", "0:nan:3"] {
        assert!(parse_range(bad).is_err(), "{bad}");
    }
    assert!(parse_grid("-1:1:3").is_err());
    assert!(parse_grid("0:1:3000x0:1:3000").is_err());
    // A trajectory moving mostly along e0, a little along e1.
    let center = vec![1.0, 1.0, 1.0, 1.0];
    let traj: Vec<Vec<f64>> = (1..=8)
        .map(|i| {
            let t = i as f64;
            vec![1.0 + t, 1.0 + 0.1 * t * t / 8.0 - 0.05 * t, 1.0, 1.0]
        })
        .collect();
    let (dirs, explained) = pca_directions(&traj, &center, 2).unwrap();
    assert!(dirs[0][0].abs() > 0.99);
    assert!(explained[0] > explained[1] && explained[0] + explained[1] <= 1.0 + 1e-12);
    // Independent reference: the centred covariance C = sum_i (d_i - mean)(d_i - mean)^T
    // (P x P), its eigenvalues by Jacobi; explained ratios are lambda_k / tr(C) and each
    // direction's Rayleigh quotient is lambda_k.
    let p = center.len();
    let diffs: Vec<Vec<f64>> = traj
        .iter()
        .map(|t| t.iter().zip(&center).map(|(a, b)| a - b).collect())
        .collect();
    let mean: Vec<f64> = (0..p)
        .map(|j| diffs.iter().map(|d| d[j]).sum::<f64>() / diffs.len() as f64)
        .collect();
    let cov = landscape::Matrix::from_fn(p, p, |a, b| {
        diffs
            .iter()
            .map(|d| (d[a] - mean[a]) * (d[b] - mean[b]))
            .sum::<f64>()
    });
    let mut ev = landscape::hessian::small_eig::jacobi_eigenvalues(&cov);
    ev.reverse();
    let tr: f64 = (0..p).map(|i| cov.get(i, i)).sum();
    for k in 0..2 {
        assert!(
            (explained[k] - ev[k] / tr).abs() < 1e-10,
            "{explained:?} vs {ev:?}"
        );
        let cd: Vec<f64> = (0..p)
            .map(|a| (0..p).map(|b| cov.get(a, b) * dirs[k][b]).sum())
            .collect();
        let rq: f64 = cd.iter().zip(&dirs[k]).map(|(u, v)| u * v).sum();
        assert!((rq - ev[k]).abs() < 1e-9 * ev[0], "{rq} vs {}", ev[k]);
    }
    // Centring matters: checkpoints on a line that misses the centre span two directions
    // around the centre but only one around their mean, the line's own.
    let line: Vec<Vec<f64>> = (1..=5)
        .map(|i| vec![2.0, 1.0 + i as f64, 1.0, 1.0])
        .collect();
    let (along, ratio) = pca_directions(&line, &center, 1).unwrap();
    assert!((along[0][1].abs() - 1.0).abs() < 1e-12 && (ratio[0] - 1.0).abs() < 1e-12);
    assert!(pca_directions(&line, &center, 2).is_err());
    assert!(pca_directions(&traj[..2], &center, 2).is_err());
}

#[test]
fn geometry_commands_end_to_end() {
    let d = TempDir::new("geometry");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    for (seed, f) in [("1", "a.safetensors"), ("2", "b.safetensors")] {
        let o = run(&[
            "train",
            "--data",
            "digits",
            "--hidden",
            "6",
            "--epochs",
            "3",
            "--seed",
            seed,
            "--out",
            &p(f),
        ]);
        assert!(o.status.success());
    }
    let o = run(&[
        "surface",
        "--model",
        &p("a.safetensors"),
        "--data",
        "digits",
        "--samples",
        "200",
        "--grid=-1:1:5x-1:1:4",
        "--curvature-grid=-1:1:2x-1:1:2",
        "--out",
        &p("s.safetensors"),
        "--fig",
        &p("s"),
        "--json",
        &p("s.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("s_train_loss.png").exists() && d.join("s_train_loss_3d.svg").exists());
    assert!(d.join("s_lambda_max.png").exists());
    let o = run(&["surface-replot", &p("s.safetensors"), "--fig", &p("r")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("r_train_loss.png").exists() && d.join("r_trace.svg").exists());
    let o = run(&[
        "line",
        "--model",
        &p("a.safetensors"),
        "--data",
        "digits",
        "--to",
        &p("b.safetensors"),
        "--range=0:1:5",
        "--csv",
        &p("l.csv"),
    ]);
    assert!(o.status.success());
    let csv = std::fs::read_to_string(d.join("l.csv")).unwrap();
    assert_eq!(csv.lines().count(), 6);
    let o = run(&[
        "connect",
        "--a",
        &p("a.safetensors"),
        "--b",
        &p("b.safetensors"),
        "--data",
        "digits",
        "--epochs",
        "1",
        "--eigen-points",
        "2",
        "--eigen-samples",
        "50",
        "--json",
        &p("c.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (args, needle) in [
        (
            vec![
                "line",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--range=1:-1:5",
            ],
            "range",
        ),
        (
            vec![
                "surface",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--x",
                "sideways",
            ],
            "unknown direction",
        ),
        (
            vec![
                "surface",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--x",
                "pca",
            ],
            "--trajectory",
        ),
        (
            vec![
                "surface",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--x",
                &format!("model:{}", p("a.safetensors")),
            ],
            "zero",
        ),
        (
            vec![
                "surface",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--x",
                "gradient",
                "--y",
                "gradient",
            ],
            "parallel",
        ),
        (
            vec![
                "line",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--to",
                &p("a.safetensors")[..],
            ],
            "zero",
        ),
    ] {
        let o = run(&args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{e}");
        assert!(lines[0].contains(needle), "{e}");
    }
}

/// PCA directions of a training trajectory, with the trajectory projected on the plane:
/// the reported coordinates are recomputed from the saved directions and checkpoints.
#[test]
fn pca_surface_projects_the_trajectory() {
    let d = TempDir::new("geometry-pca");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let o = run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "5",
        "--epochs",
        "4",
        "--seed",
        "3",
        "--out",
        &p("m.safetensors"),
        "--checkpoint-dir",
        &p("traj"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&[
        "surface",
        "--model",
        &p("m.safetensors"),
        "--data",
        "digits",
        "--samples",
        "100",
        "--x",
        "pca",
        "--y",
        "pca",
        "--trajectory",
        &p("traj"),
        "--grid=-1:1:4x-1:1:3",
        "--out",
        &p("s.safetensors"),
        "--fig",
        &p("s"),
        "--json",
        &p("s.json"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("s.json")).unwrap()).unwrap();
    let t = &j["results"]["trajectory"];
    let coords = t["coords"].as_array().unwrap();
    let bytes = std::fs::read(d.join("s.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f64s = |name: &str| -> Vec<f64> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let (dx, dy, theta0) = (f64s("direction_x"), f64s("direction_y"), f64s("theta0"));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(u, v)| u * v).sum::<f64>();
    // PCA directions are orthonormal, so the projection is two dot products.
    assert!((dot(&dx, &dx) - 1.0).abs() < 1e-12 && dot(&dx, &dy).abs() < 1e-10);
    let mut files: Vec<_> = std::fs::read_dir(d.join("traj"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert_eq!(files.len(), coords.len());
    for (f, c) in files.iter().zip(coords) {
        let m = landscape::io::model_file::load_mlp_f64(f, &Default::default()).unwrap();
        let diff: Vec<f64> = m
            .param_vector()
            .iter()
            .zip(&theta0)
            .map(|(a, b)| a - b)
            .collect();
        let (a, b) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
        let scale = dot(&diff, &diff).sqrt().max(1e-12);
        assert!((a - dot(&diff, &dx)).abs() < 1e-9 * scale, "{f:?}");
        assert!((b - dot(&diff, &dy)).abs() < 1e-9 * scale, "{f:?}");
    }
    // The last checkpoint is the model itself: the origin of the plane.
    let last = coords.last().unwrap();
    assert!(last[0].as_f64().unwrap().abs() < 1e-12 && last[1].as_f64().unwrap().abs() < 1e-12);
    assert!(d.join("s_train_loss.png").exists());
    // The saved file carries the trajectory for surface-replot.
    assert_eq!(
        st.tensor("trajectory_xy").unwrap().shape(),
        &[coords.len(), 2]
    );
    let o = run(&["surface-replot", &p("s.safetensors"), "--fig", &p("r")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("r_train_loss.svg").exists());
}
