//! The sample-size experiment: averaging over orderings, the EMA, the ordering seeds,
//! slopes, subspace angles and the exact per-sample directional derivatives, each against
//! a brute-force or closed-form reference; and the command end to end.

use crate::common::TempDir;
use landscape::experiments::sample_size::{
    ema, increment_curves, loglog_slope, signed_increments, subspace_sin, SampleSizeConfig,
};
use landscape::hessian::dense_hessian;
use landscape::hessian::directional::directional_derivatives;
use landscape::hessian::Part;
use landscape::nn::{Activation, Init, LossKind, Mlp};
use landscape::rng::Rng;
use landscape::Matrix;
use std::process::Command;

/// `|L_{k+1} - L_k|` with both means recomputed from scratch (no prefix identity).
fn brute(values: &[f64], perm: &[usize]) -> Vec<f64> {
    let mean = |k: usize| perm[..k].iter().map(|&i| values[i]).sum::<f64>() / k as f64;
    (1..values.len())
        .map(|k| (mean(k + 1) - mean(k)).abs())
        .collect()
}

#[test]
fn increments_match_brute_force_means_and_quantiles() {
    let values = [0.3, 2.5, 0.01, 1.7, 0.9, 4.2, 0.05];
    let (orderings, seed) = (9, 17);
    let cur = increment_curves(&values, orderings, seed).unwrap();
    let per: Vec<Vec<f64>> = (0..orderings)
        .map(|o| {
            brute(
                &values,
                &Rng::derived(seed, o as u64).permutation(values.len()),
            )
        })
        .collect();
    for j in 0..values.len() - 1 {
        let mut col: Vec<f64> = per.iter().map(|r| r[j]).collect();
        let mean = col.iter().sum::<f64>() / orderings as f64;
        assert!(
            (cur.mean[j] - mean).abs() <= 1e-14 * mean.max(1e-300),
            "k = {}",
            j + 1
        );
        col.sort_by(|a, b| a.partial_cmp(b).unwrap());
        // 9 values: the 5% quantile sits 0.4 of the way from the smallest to the next.
        let p05 = col[0] + 0.4 * (col[1] - col[0]);
        let p95 = col[7] + 0.6 * (col[8] - col[7]);
        assert!((cur.p05[j] - p05).abs() <= 1e-14 && (cur.p95[j] - p95).abs() <= 1e-14);
    }
    // The identity L_{k+1} - L_k = (l_{k+1} - L_k)/(k+1), signed.
    let perm = Rng::derived(seed, 3).permutation(values.len());
    let s = signed_increments(&values, seed, 3);
    let mean = |k: usize| perm[..k].iter().map(|&i| values[i]).sum::<f64>() / k as f64;
    for k in 1..values.len() {
        assert!((s[k - 1] - (mean(k + 1) - mean(k))).abs() <= 1e-15);
    }
}

#[test]
fn ordering_seeds_are_reproducible_and_distinct() {
    let mut rng = Rng::new(5);
    let values: Vec<f64> = (0..200).map(|_| rng.normal().abs()).collect();
    let a = increment_curves(&values, 10, 1).unwrap();
    let b = increment_curves(&values, 10, 1).unwrap();
    let c = increment_curves(&values, 10, 2).unwrap();
    assert_eq!(a.mean, b.mean);
    assert_ne!(a.mean, c.mean);
    // Every ordering is a permutation, and orderings differ from each other.
    let p0 = Rng::derived(1, 0).permutation(200);
    let p1 = Rng::derived(1, 1).permutation(200);
    let mut s = p0.clone();
    s.sort();
    assert_eq!(s, (0..200).collect::<Vec<_>>());
    assert_ne!(p0, p1);
    // Bad input is an error, not a panic.
    assert!(increment_curves(&values[..1], 3, 0).is_err());
    assert!(increment_curves(&values, 0, 0).is_err());
    assert!(increment_curves(&[1.0, f64::NAN], 1, 0).is_err());
}

#[test]
fn ema_and_slopes_have_closed_forms() {
    assert_eq!(ema(&[2.0; 5], 0.9), vec![2.0; 5]);
    let e = ema(&[1.0, 0.0, 0.0, 0.0], 0.5);
    assert_eq!(e, vec![1.0, 0.5, 0.25, 0.125]);
    let alpha: f64 = 0.99;
    let e = ema(&[0.0, 1.0, 1.0], alpha);
    assert!((e[2] - (1.0 - alpha * alpha)).abs() < 1e-15);
    let ys: Vec<f64> = (1..=1000).map(|k| 3.0 / (k as f64).powf(1.3)).collect();
    assert!((loglog_slope(&ys, 10).unwrap() + 1.3).abs() < 1e-12);
    assert!(loglog_slope(&[1.0], 1).is_none());
}

#[test]
fn subspace_angles_of_known_planes() {
    let e = |i: usize| {
        (0..4)
            .map(|j| f64::from(u8::from(i == j)))
            .collect::<Vec<f64>>()
    };
    let u = vec![e(0), e(1)];
    assert!(subspace_sin(&u, &u) < 1e-7);
    assert!((subspace_sin(&u, &[e(2), e(3)]) - 1.0).abs() < 1e-12);
    let th: f64 = 0.3;
    let rotated = vec![
        e(0),
        (0..4).map(|j| [0.0, th.cos(), th.sin(), 0.0][j]).collect(),
    ];
    assert!((subspace_sin(&u, &rotated) - th.sin()).abs() < 1e-7);
}

fn model(widths: &[usize], act: Activation, bias: bool, loss: LossKind, seed: u64) -> Mlp<f64> {
    Mlp::init(
        crate::common::mlp_config(widths, act, bias, loss),
        Init::Kaiming,
        1.2,
        seed,
    )
    .unwrap()
}

#[test]
fn directional_derivatives_match_dense_hessians_and_differences() {
    for (i, (w, act, bias, loss)) in [
        (
            vec![5, 4, 3, 3],
            Activation::Tanh,
            true,
            LossKind::CrossEntropy,
        ),
        (
            vec![6, 7, 4],
            Activation::Relu,
            false,
            LossKind::CrossEntropy,
        ),
        (vec![3, 5, 2], Activation::Tanh, false, LossKind::Mse),
    ]
    .into_iter()
    .enumerate()
    {
        let m = model(&w, act, bias, loss, i as u64);
        let mut rng = Rng::new(10 + i as u64);
        let x = Matrix::from_fn(6, w[0], |_, _| rng.normal());
        let y: Vec<usize> = (0..6).map(|s| s % w[w.len() - 1]).collect();
        let d: Vec<f64> = (0..m.num_params()).map(|_| rng.normal()).collect();
        let dir = directional_derivatives(&m, &x, &y, &d).unwrap();
        let theta = m.param_vector();
        let loss_at = |eps: f64| -> Vec<f64> {
            let mut mm = m.clone();
            let t: Vec<f64> = theta.iter().zip(&d).map(|(a, b)| a + eps * b).collect();
            mm.set_param_vector(&t).unwrap();
            mm.config.loss.per_sample(&mm.logits(&x).unwrap(), &y)
        };
        let h = 1e-5;
        let (lp, lm) = (loss_at(h), loss_at(-h));
        for s in 0..6 {
            let fd = (lp[s] - lm[s]) / (2.0 * h);
            assert!(
                (dir.slopes[s] - fd).abs() <= 1e-7 * (1.0 + fd.abs()),
                "slope {s}"
            );
            // d^T H_s d from the dense per-sample Hessian.
            let xs = x.rows_view(s, s + 1).to_owned();
            let hs = dense_hessian(&m, &xs, &y[s..s + 1], Part::Full, 1 << 26).unwrap();
            let p = d.len();
            let quad: f64 = (0..p)
                .map(|a| d[a] * (0..p).map(|b| hs.get(a, b) * d[b]).sum::<f64>())
                .sum();
            assert!(
                (dir.curvatures[s] - quad).abs() <= 1e-10 * (1.0 + quad.abs()),
                "curvature {s}: {} vs {quad}",
                dir.curvatures[s]
            );
        }
    }
}

#[test]
fn sample_size_command_end_to_end() {
    let d = TempDir::new("sample-size");
    let bin = env!("CARGO_BIN_EXE_landscape");
    let cache = d.join("cache");
    let args = |json: &str| {
        let mut c = Command::new(bin);
        c.args([
            "sample-size",
            "--data",
            "digits",
            "--train-size",
            "300",
            "--epochs",
            "1",
            "--orderings",
            "5",
            "--hidden-sizes",
            "4,8",
            "--extra-layers",
            "1",
            "--fixed-depth",
            "1",
            "--fixed-width",
            "4",
            "--radii",
            "0.5",
            "--draws",
            "1",
            "--top-q",
            "2",
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--json")
        .arg(d.join(json));
        c
    };
    let first = args("a.json")
        .arg("--fig")
        .arg(d.join("fig"))
        .arg("--csv")
        .arg(d.join("a.csv"))
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let second = args("b.json").output().unwrap();
    assert!(second.status.success());
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap()
    };
    let (a, b) = (read("a.json"), read("b.json"));
    let ca = a["results"]["configurations"].as_array().unwrap();
    let cb = b["results"]["configurations"].as_array().unwrap();
    assert_eq!(ca.len(), 2); // (4,1) and (8,1); the depth sweep's (4,1) is shared
    for (x, y) in ca.iter().zip(cb) {
        assert_eq!(x["cached"], false);
        assert_eq!(y["cached"], true);
        assert_eq!(x["mean_abs_increment"], y["mean_abs_increment"]);
        let s = x["slope_loglog_k_ge_10"].as_f64().unwrap();
        assert!((s + 1.0).abs() < 0.15, "slope {s}");
    }
    let h = &a["results"]["hessian"]["increments"];
    assert!(h
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["residual"].as_f64().is_some()));
    for f in [
        "fig_width.png",
        "fig_depth.svg",
        "fig_hessian.png",
        "fig_decomposition.png",
        "a.csv",
    ] {
        assert!(d.join(f).exists(), "{f}");
    }
    assert!(a["provenance"]["config"]["experiment"]["orderings"] == 5);
    // The configuration as a file regenerates the run.
    let cfg_out = Command::new(bin)
        .args(["sample-size", "--print-config", "--orderings", "5"])
        .output()
        .unwrap();
    let cfg: SampleSizeConfig = serde_json::from_slice(&cfg_out.stdout).unwrap();
    assert_eq!(cfg.orderings, 5);
    assert_eq!(cfg.hidden_sizes, vec![4, 8, 16, 32, 64]);
    // Bad input: one line, non-zero exit.
    for (bad, needle) in [
        (vec!["--orderings", "0"], "orderings"),
        (
            vec!["--train-size", "100000", "--data", "digits"],
            "training samples",
        ),
        (vec!["--radii=-1"], "radii"),
    ] {
        let o = Command::new(bin)
            .arg("sample-size")
            .args(&bad)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{e}");
        assert!(lines[0].contains(needle), "{e}");
    }
    let bad_cfg = d.join("bad.json");
    std::fs::write(&bad_cfg, "{\"orderings\": 3, \"nonsense\": 1}").unwrap();
    let o = Command::new(bin)
        .args(["sample-size", "--config"])
        .arg(&bad_cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("nonsense"));
}
