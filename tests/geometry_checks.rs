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

// ------------------------------------------------------------------ any architecture

use landscape::data::{DataBundle, DataOptions, Subset};
use landscape::experiments::geometry::{
    normalize_network_direction, random_network_direction, recompute_bn_stats, run_line, BnStats,
    DirectionSpec, LineConfig, NoProgress,
};
use landscape::hessian::network::{BnMode, NetObjective};
use landscape::io::network_file::{load_network, save_network};
use landscape::nn::arch::{Architecture, LayerSpec, ParamRole, TensorKind};
use landscape::nn::{Mode, Network};
use landscape::train::evaluate_network;

/// A small ConvNet on 1 x 8 x 8 images (digits) with every kind of tensor a direction
/// can have: conv weights with and without bias, affine BatchNorm, a linear layer with
/// bias. Deterministic non-trivial values (BN gammas and betas away from 1 and 0).
fn small_convnet(seed: u64) -> Network<f64> {
    let bn = |name: &str| LayerSpec::Batchnorm {
        name: name.into(),
        affine: true,
        eps: 1e-5,
        momentum: 0.1,
    };
    let arch = Architecture {
        name: "custom".into(),
        input_shape: [1, 8, 8],
        classes: 10,
        loss: LossKind::CrossEntropy,
        leaky_slope: 0.01,
        layers: vec![
            LayerSpec::Conv2d {
                name: "conv1".into(),
                out: 4,
                kernel: 3,
                stride: 1,
                padding: 1,
                bias: true,
            },
            bn("bn1"),
            LayerSpec::Activation {
                act: Activation::Relu,
            },
            LayerSpec::MaxPool2d {
                kernel: 2,
                stride: None,
                padding: 0,
                ceil_mode: false,
            },
            LayerSpec::Conv2d {
                name: "conv2".into(),
                out: 3,
                kernel: 3,
                stride: 1,
                padding: 1,
                bias: false,
            },
            bn("bn2"),
            LayerSpec::Activation {
                act: Activation::Relu,
            },
            LayerSpec::GlobalAvgPool,
            LayerSpec::Linear {
                name: "fc".into(),
                out: 10,
                bias: true,
            },
        ],
        mlp: None,
    };
    let mut net = Network::init(arch, Init::Torch, 1.0, seed).unwrap();
    net.fill_deterministic();
    // Perturb the deterministic fill by the seed so that two seeds differ.
    let mut rng = Rng::new(seed);
    let theta: Vec<f64> = net
        .param_vector()
        .iter()
        .map(|v| v * (1.0 + 0.2 * rng.normal()))
        .collect();
    net.set_param_vector(&theta).unwrap();
    net
}

fn digits(train: usize, test_split: f64) -> DataBundle {
    landscape::data::load(
        "digits",
        &DataOptions {
            train_subset: Subset::First(train),
            test_split,
            ..Default::default()
        },
    )
    .unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-300)
}

#[test]
fn filter_normalisation_of_a_conv_direction() {
    let net = small_convnet(1);
    let lay = net.layout();
    // A convolution's matrix form is out x (in k k): one row per output filter, i.e.
    // the PyTorch (out, in, k, k) tensor with each filter flattened.
    for t in &lay.tensors {
        if let TensorKind::Param(i) = t.kind {
            let (r, c) = lay.param_shapes[i];
            assert_eq!(r * c, t.shape.iter().product::<usize>(), "{}", t.name);
            if lay.param_roles[i] == ParamRole::ConvWeight {
                assert_eq!((r, c), (t.shape[0], t.shape[1..].iter().product()));
            }
        }
    }
    let roles = lay.param_roles.clone();
    assert!(roles.contains(&ParamRole::ConvWeight) && roles.contains(&ParamRole::BnWeight));
    for (norm_kind, keep_bias, seed) in [
        (Normalization::Filter, false, 3),
        (Normalization::Filter, true, 4),
        (Normalization::Layer, false, 5),
    ] {
        let d = random_network_direction(&net, norm_kind, keep_bias, seed).unwrap();
        let mut off = 0;
        for (w, role) in net.params.iter().zip(&roles) {
            let block = &d[off..off + w.len()];
            off += w.len();
            match role {
                ParamRole::ConvWeight | ParamRole::LinearWeight => {
                    if norm_kind == Normalization::Filter {
                        for (a, row) in block.chunks(w.cols()).enumerate() {
                            let want = row_norm(w.row(a));
                            assert!(rel(row_norm(row), want) <= 1e-12, "{role:?} filter {a}");
                        }
                    } else {
                        assert!(rel(row_norm(block), w.frobenius_norm()) <= 1e-12);
                    }
                }
                ParamRole::Bias | ParamRole::BnWeight | ParamRole::BnBias => {
                    if keep_bias {
                        assert!(rel(row_norm(block), row_norm(w.as_slice())) <= 1e-12);
                    } else {
                        assert!(block.iter().all(|&v| v == 0.0), "{role:?} must be zero");
                    }
                }
            }
        }
        assert_eq!(off, d.len());
    }
    // An MLP gets exactly the directions of the MLP code.
    let m = model(
        &[7, 5, 3],
        Activation::Relu,
        true,
        LossKind::CrossEntropy,
        2,
    );
    let as_net = Network::from_mlp(&m);
    for (nk, kb) in [
        (Normalization::Filter, false),
        (Normalization::Filter, true),
        (Normalization::Layer, true),
        (Normalization::None, false),
    ] {
        assert_eq!(
            random_direction(&m, nk, kb, 9).unwrap(),
            random_network_direction(&as_net, nk, kb, 9).unwrap()
        );
    }
    let mut short = vec![1.0; 3];
    assert!(normalize_network_direction(&net, &mut short, Normalization::Filter, false).is_err());
}

/// Recomputed BatchNorm statistics are PyTorch's cumulative average over batches: one
/// batch gives exactly what a training-mode pass with momentum 1 stores (an independent
/// code path, `update_running_stats`), and several batches give the mean of the
/// single-batch results.
#[test]
fn recomputed_bn_statistics_average_the_batches() {
    let data = digits(50, 0.0);
    let x = &data.train.x;
    let mut net = small_convnet(2);
    let mut one = net.clone();
    assert_eq!(recompute_bn_stats(&mut one, x, 50).unwrap(), 1);
    let mut reference = net.clone();
    fn momentum_one(ls: &mut [LayerSpec]) {
        for l in ls {
            if let LayerSpec::Batchnorm { momentum, .. } = l {
                *momentum = 1.0;
            }
        }
    }
    momentum_one(&mut reference.arch.layers);
    let tape = landscape::autodiff::Tape::new();
    let p = reference.params_on_tape(&tape);
    let stats = reference.forward_tape(&p, x, Mode::Train).batch_stats;
    reference.update_running_stats(&stats);
    for (a, b) in one.bn.iter().zip(&reference.bn) {
        for (u, v) in [
            (&a.running_mean, &b.running_mean),
            (&a.running_var, &b.running_var),
        ] {
            for (s, t) in u.as_slice().iter().zip(v.as_slice()) {
                assert!((s - t).abs() <= 1e-13 * t.abs().max(1.0), "{s} vs {t}");
            }
        }
    }
    // Batches of 20: 20 + 20 + 10.
    assert_eq!(recompute_bn_stats(&mut net, x, 20).unwrap(), 3);
    let parts: Vec<Network<f64>> = [(0, 20), (20, 40), (40, 50)]
        .iter()
        .map(|&(s, e)| {
            let mut n = small_convnet(2);
            recompute_bn_stats(&mut n, &x.rows_view(s, e).to_owned(), 100).unwrap();
            n
        })
        .collect();
    for (l, b) in net.bn.iter().enumerate() {
        assert_eq!(b.num_batches_tracked, 3);
        for c in 0..b.running_mean.cols() {
            let m: f64 = parts
                .iter()
                .map(|n| n.bn[l].running_mean.get(0, c))
                .sum::<f64>()
                / 3.0;
            let v: f64 = parts
                .iter()
                .map(|n| n.bn[l].running_var.get(0, c))
                .sum::<f64>()
                / 3.0;
            assert!((b.running_mean.get(0, c) - m).abs() <= 1e-13 * m.abs().max(1.0));
            assert!(rel(b.running_var.get(0, c), v) <= 1e-13);
        }
    }
}

/// `line` from a ConvNet to the same net moved along a direction (with other
/// BatchNorm statistics), against direct evaluation of the points in every mode.
#[test]
fn convnet_line_matches_direct_evaluation() {
    let d = TempDir::new("geometry-convnet-line");
    let data = digits(90, 0.25);
    let (x, y) = (&data.train.x, &data.train.y);
    let test = data.test.as_ref().expect("a test split");
    let a = small_convnet(3);
    let dir = random_network_direction(&a, Normalization::Filter, true, 7).unwrap();
    let mut b = a.clone();
    let theta_a = a.param_vector();
    let theta_b: Vec<f64> = theta_a.iter().zip(&dir).map(|(t, v)| t + 0.5 * v).collect();
    b.set_param_vector(&theta_b).unwrap();
    recompute_bn_stats(&mut b, x, 30).unwrap();
    let path_b = d.join("b.safetensors");
    save_network(&b, &path_b, &Default::default()).unwrap();
    let alphas = vec![-0.5, 0.0, 0.5, 1.0, 1.5];
    let at = |alpha: f64, s: f64| {
        let mut n = a.clone();
        let th: Vec<f64> = theta_a
            .iter()
            .zip(&theta_b)
            .map(|(p, q)| p + alpha * (q - p))
            .collect();
        n.set_param_vector(&th).unwrap();
        for (nb, (ba, bb)) in n.bn.iter_mut().zip(a.bn.iter().zip(&b.bn)) {
            for (t, (u, v)) in nb.running_mean.as_mut_slice().iter_mut().zip(
                ba.running_mean
                    .as_slice()
                    .iter()
                    .zip(bb.running_mean.as_slice()),
            ) {
                *t = (1.0 - s) * u + s * v;
            }
            for (t, (u, v)) in nb.running_var.as_mut_slice().iter_mut().zip(
                ba.running_var
                    .as_slice()
                    .iter()
                    .zip(bb.running_var.as_slice()),
            ) {
                *t = (1.0 - s) * u + s * v;
            }
        }
        n
    };
    let mut cfg = LineConfig::new(DirectionSpec::Model(path_b.clone()), alphas.clone());
    // Eval mode, stored statistics: interpolated between the two files.
    let r = run_line(&a, &data, &cfg, &NoProgress).unwrap();
    assert!(r.bn.bn_statistics.contains("interpolated"));
    for (i, &alpha) in alphas
        .iter()
        .enumerate()
        .filter(|(i, _)| [0, 2, 4].contains(i))
    {
        let n = at(alpha, alpha.clamp(0.0, 1.0));
        let (l, e) = evaluate_network(&n, x, y).unwrap();
        assert!(
            rel(r.train_loss[i], l) <= 1e-12,
            "{alpha}: {} vs {l}",
            r.train_loss[i]
        );
        assert_eq!(r.train_error[i], e);
        let (lt, _) = evaluate_network(&n, &test.x, &test.y).unwrap();
        assert!(rel(r.test_loss.as_ref().unwrap()[i], lt) <= 1e-12);
    }
    // alpha = 1 is the file B itself.
    let (b_file, _) = load_network::<f64>(&path_b, &Default::default()).unwrap();
    let (lb, _) = evaluate_network(&b_file, x, y).unwrap();
    assert!(rel(r.train_loss[3], lb) <= 1e-12);
    // Train mode: every fixed batch of 30 normalised by its own statistics.
    cfg.bn_mode = BnMode::Train { batch: 30 };
    let r = run_line(&a, &data, &cfg, &NoProgress).unwrap();
    for (i, &alpha) in alphas
        .iter()
        .enumerate()
        .filter(|(i, _)| [0, 3].contains(i))
    {
        let n = at(alpha, 0.0);
        let want = NetObjective::new(&n, x, y, cfg.bn_mode)
            .unwrap()
            .loss_at(&n.params);
        assert!(rel(r.train_loss[i], want) <= 1e-12, "{alpha}");
    }
    // Eval mode with statistics recomputed at every point.
    cfg.bn_mode = BnMode::Eval;
    cfg.bn_stats = BnStats::Recompute { batch: 40 };
    let r = run_line(&a, &data, &cfg, &NoProgress).unwrap();
    assert!(r.bn.bn_statistics.contains("recomputed"));
    for (i, &alpha) in alphas
        .iter()
        .enumerate()
        .filter(|(i, _)| [1, 4].contains(i))
    {
        let mut n = at(alpha, 0.0);
        recompute_bn_stats(&mut n, x, 40).unwrap();
        let (l, e) = evaluate_network(&n, x, y).unwrap();
        assert!(rel(r.train_loss[i], l) <= 1e-12, "{alpha}");
        assert_eq!(r.train_error[i], e);
    }
    // A random direction with the stored statistics of the model at every point.
    let mut cfg = LineConfig::new(DirectionSpec::Random, vec![0.0, 0.7]);
    cfg.seed = 11;
    let r = run_line(&a, &data, &cfg, &NoProgress).unwrap();
    let d = random_network_direction(&a, Normalization::Filter, false, 11).unwrap();
    assert_eq!(r.direction_values, d);
    let mut n = a.clone();
    n.set_param_vector(&point(&theta_a, &[d], &[0.7])).unwrap();
    let (l, _) = evaluate_network(&n, x, y).unwrap();
    assert!(rel(r.train_loss[1], l) <= 1e-12);
    assert!(r.bn.bn_statistics.contains("stored"));
}

fn read_json(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `surface` and `connect` on a tiny BatchNorm ConvNet trained by `landscape train`,
/// in both BatchNorm modes, checked against direct evaluations of the models.
#[test]
fn convnet_surface_and_connect_end_to_end() {
    let d = TempDir::new("geometry-convnet-cli");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr))
    };
    let p = |f: &str| d.join(f).display().to_string();
    for (seed, f) in [("1", "a.safetensors"), ("2", "b.safetensors")] {
        ok(run(&[
            "train",
            "--arch",
            "convnet",
            "--width",
            "2",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--train-size",
            "200",
            "--seed",
            seed,
            "--out",
            &p(f),
        ]));
    }
    let data = digits(64, 0.0);
    let (x, y) = (&data.train.x, &data.train.y);
    let load = |f: &str| {
        load_network::<f64>(&d.join(f), &Default::default())
            .unwrap()
            .0
    };
    let (a, b) = (load("a.safetensors"), load("b.safetensors"));
    assert!(!a.bn.is_empty());
    for mode in ["eval", "train"] {
        let out = p(&format!("s-{mode}.safetensors"));
        let js = p(&format!("s-{mode}.json"));
        ok(run(&[
            "surface",
            "--model",
            &p("a.safetensors"),
            "--data",
            "digits",
            "--train-size",
            "64",
            "--grid=-1:1:3x-1:1:3",
            "--bn-mode",
            mode,
            "--bn-batch-size",
            "32",
            "--out",
            &out,
            "--json",
            &js,
        ]));
        let j = read_json(std::path::Path::new(&js));
        assert_eq!(j["results"]["points"], 9);
        assert_eq!(j["results"]["bn_mode"]["mode"], mode);
        assert_eq!(j["provenance"]["config"]["bn_mode"]["mode"], mode);
        assert!(j["results"]["bn_statistics"].as_str().unwrap().len() > 10);
        // The centre of the grid is the model itself.
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("train_loss").unwrap();
        assert_eq!(t.shape(), &[3, 3]);
        let centre = f64::from_le_bytes(t.data()[4 * 8..5 * 8].try_into().unwrap());
        let want = if mode == "eval" {
            evaluate_network(&a, x, y).unwrap().0
        } else {
            NetObjective::new(&a, x, y, BnMode::Train { batch: 32 })
                .unwrap()
                .loss_at(&a.params)
        };
        assert!(rel(centre, want) <= 1e-12, "{mode}: {centre} vs {want}");
        // Directions: filter-normalised, no BatchNorm or bias parts.
        let dx: Vec<f64> = st
            .tensor("direction_x")
            .unwrap()
            .data()
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            dx,
            random_network_direction(&a, Normalization::Filter, false, 0).unwrap()
        );
    }
    // Connect, eval mode: statistics recomputed at every point from the 64 samples.
    ok(run(&[
        "connect",
        "--a",
        &p("a.safetensors"),
        "--b",
        &p("b.safetensors"),
        "--data",
        "digits",
        "--train-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--points",
        "3",
        "--eigen-points",
        "2",
        "--eigen-samples",
        "32",
        "--bn-batch-size",
        "32",
        "--out",
        &p("bend.safetensors"),
        "--json",
        &p("c.json"),
    ]));
    let j = read_json(&d.join("c.json"));
    let res = &j["results"];
    assert!(res["bn_statistics"]
        .as_str()
        .unwrap()
        .contains("recomputed"));
    let lin = f64s(&res["paths"]["linear_train"]["loss"]);
    let bez = f64s(&res["paths"]["bezier_train"]["loss"]);
    let (ta, tb) = (a.param_vector(), b.param_vector());
    for (t, got) in [(0.0, lin[0]), (0.5, lin[1]), (1.0, lin[2]), (1.0, bez[2])] {
        let mut n = a.clone();
        let th: Vec<f64> = ta
            .iter()
            .zip(&tb)
            .map(|(p, q)| (1.0 - t) * p + t * q)
            .collect();
        n.set_param_vector(&th).unwrap();
        recompute_bn_stats(&mut n, x, 32).unwrap();
        let want = evaluate_network(&n, x, y).unwrap().0;
        assert!(rel(got, want) <= 1e-12, "t = {t}: {got} vs {want}");
    }
    assert!(res["summary"]["bezier_train"]["max_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    // The top eigenvalue at A (recomputed statistics, the first 32 samples).
    let mut n = a.clone();
    recompute_bn_stats(&mut n, x, 32).unwrap();
    let (xe, ye) = (x.rows_view(0, 32).to_owned(), &y[..32]);
    let obj = NetObjective::new(&n, &xe, ye, BnMode::Eval).unwrap();
    let top = landscape::linalg::lanczos(
        &obj,
        landscape::linalg::Which::Largest(1),
        &landscape::linalg::LanczosOptions {
            max_iter: 300,
            tol: 1e-10,
            seed: 0,
            check_every: 5,
        },
    )
    .unwrap();
    let lam = f64s(&res["top_eigenvalue"]["linear"]["lambda_max"])[0];
    assert!(
        rel(lam, top.values[0]) <= 1e-6,
        "{lam} vs {}",
        top.values[0]
    );
    // The bend file: the same architecture, statistics recomputed at the bend.
    let bend = load("bend.safetensors");
    assert!(landscape::experiments::geometry::same_architecture(
        &bend, &a
    ));
    let mut again = bend.clone();
    recompute_bn_stats(&mut again, x, 32).unwrap();
    assert_eq!(again.bn, bend.bn);
    // Train mode: fixed batches of 32.
    ok(run(&[
        "connect",
        "--a",
        &p("a.safetensors"),
        "--b",
        &p("b.safetensors"),
        "--data",
        "digits",
        "--train-size",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--points",
        "2",
        "--eigen-points",
        "2",
        "--eigen-samples",
        "32",
        "--bn-mode",
        "train",
        "--bn-batch-size",
        "32",
        "--json",
        &p("ct.json"),
    ]));
    let j = read_json(&d.join("ct.json"));
    let lin = f64s(&j["results"]["paths"]["linear_train"]["loss"]);
    let want = NetObjective::new(&b, x, y, BnMode::Train { batch: 32 })
        .unwrap()
        .loss_at(&b.params);
    assert!(rel(lin[1], want) <= 1e-12);
    assert_eq!(j["results"]["bn_mode"]["mode"], "train");
    // One-line refusals.
    for (args, needle) in [
        (
            vec![
                "surface",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--bn-stats",
                "recompute",
                "--bn-mode",
                "train",
            ],
            "--bn-stats recompute",
        ),
        (
            vec![
                "line",
                "--model",
                &p("a.safetensors")[..],
                "--data",
                "digits",
                "--bn-batch-size",
                "1",
                "--bn-mode",
                "train",
            ],
            "at least 2",
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
