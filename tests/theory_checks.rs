//! Integration tests: the bounds lab against independent dense eigenvalues and
//! the counterexample of DESIGN.md section 4.

use landscape::hessian::small_eig::jacobi_eigenvalues;
use landscape::hessian::{dense_hessian, Part};
use landscape::nn::{Activation, Init, LossKind, Mlp, MlpConfig};
use landscape::rng::Rng;
use landscape::theory::validate::evaluate_bounds;
use landscape::theory::{theorem1_printed, tight_form};
use landscape::Matrix;
use std::process::Command;

fn spectral_abs_max(m: &Matrix<f64>) -> f64 {
    jacobi_eigenvalues(m)
        .iter()
        .fold(0.0f64, |a, e| a.max(e.abs()))
}

#[test]
fn reported_norms_and_ratios_match_dense_eigendecomposition() {
    let cfg = MlpConfig {
        input_dim: 6,
        hidden: vec![5, 4],
        classes: 3,
        activation: Activation::Relu,
        leaky_slope: 0.01,
        bias: false,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let model = Mlp::<f64>::init(cfg, Init::Kaiming, 1.3, 7).unwrap();
    let mut rng = Rng::new(2);
    let x = Matrix::from_fn(30, 6, |_, _| rng.normal());
    let y: Vec<usize> = (0..30).map(|i| i % 3).collect();
    let full: Vec<usize> = (0..12).collect();
    let rep = evaluate_bounds(&model, &x, &y, &full, 1e-12, 0).unwrap();
    for i in 0..12 {
        let xi = x.rows_view(i, i + 1).to_owned();
        let gn =
            spectral_abs_max(&dense_hessian(&model, &xi, &y[i..i + 1], Part::Gn, 1 << 28).unwrap());
        let h = spectral_abs_max(
            &dense_hessian(&model, &xi, &y[i..i + 1], Part::Full, 1 << 28).unwrap(),
        );
        assert!(
            (rep.gn_norms[i] - gn).abs() <= 1e-10 * gn.max(1e-12),
            "GN {i}: {} vs {gn}",
            rep.gn_norms[i]
        );
        assert!(
            (rep.full_norms[i].norm - h).abs() <= 1e-9 * h.max(1e-12),
            "H {i}: {} vs {h}",
            rep.full_norms[i].norm
        );
    }
    // Every worst ratio is max(actual) / bound, recomputed independently.
    let max_gn = rep.gn_norms.iter().copied().fold(0.0, f64::max);
    let max_full = rep.full_norms.iter().map(|f| f.norm).fold(0.0, f64::max);
    for c in &rep.checks {
        let actual = if c.against == "gn" { max_gn } else { max_full };
        assert!(
            (c.worst_ratio - actual / c.bound).abs() <= 1e-12 * c.worst_ratio.abs(),
            "{c:?}"
        );
    }
    assert!(rep.structural.a_norm_at_most_half && rep.structural.gn_rank_at_most_k_minus_1);
    // tr(H-term) over the full-norm samples: exact here (P <= 2000), and zero for ReLU;
    // tr(GN) against the dense GN diagonal.
    let t = rep.structural.hterm_trace.as_ref().unwrap();
    assert!(t.ci95.is_none() && t.consistent_with_zero, "{t:?}");
    let xs = x.rows_view(0, 12).to_owned();
    let g = dense_hessian(&model, &xs, &y[..12], Part::Gn, 1 << 28).unwrap();
    let tr_gn: f64 = (0..g.rows()).map(|i| g.get(i, i)).sum();
    assert!(
        (t.gn_trace - tr_gn).abs() <= 1e-10 * tr_gn,
        "{} vs {tr_gn}",
        t.gn_trace
    );
    // A smooth activation has a nonzero H-term trace, found by the same check.
    let mut tanh_cfg = model.config.clone();
    tanh_cfg.activation = Activation::Tanh;
    let tanh = Mlp::<f64>::init(tanh_cfg, Init::Kaiming, 1.3, 7).unwrap();
    let t = landscape::theory::validate::hterm_trace(&tanh, &x, &y, &full, 0)
        .unwrap()
        .unwrap();
    let h = dense_hessian(&tanh, &xs, &y[..12], Part::Hterm, 1 << 28).unwrap();
    let tr_h: f64 = (0..h.rows()).map(|i| h.get(i, i)).sum();
    assert!((t.value - tr_h).abs() <= 1e-12 * tr_h.abs().max(1e-300) && !t.consistent_with_zero);
}

#[test]
fn bounds_bad_input_and_report() {
    let dir = std::env::temp_dir().join(format!("landscape-bounds-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = env!("CARGO_BIN_EXE_landscape");
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let m = dir.join("m.safetensors");
    let bn = dir.join("bn.safetensors");
    assert!(run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "5",
        "--no-bias",
        "--epochs",
        "1",
        "--out",
        m.to_str().unwrap()
    ])
    .status
    .success());
    assert!(run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "5",
        "--batchnorm",
        "--epochs",
        "1",
        "--out",
        bn.to_str().unwrap()
    ])
    .status
    .success());
    for (args, needle) in [
        (
            vec![
                "bounds",
                "--model",
                m.to_str().unwrap(),
                "--data",
                "mnist10k",
            ],
            "input features",
        ),
        (
            vec![
                "bounds",
                "--model",
                m.to_str().unwrap(),
                "--data",
                "digits",
                "--samples",
                "0",
            ],
            "empty subset",
        ),
        (
            vec![
                "bounds",
                "--model",
                bn.to_str().unwrap(),
                "--data",
                "digits",
            ],
            "BatchNorm",
        ),
    ] {
        let o = run(&args);
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        assert_eq!(
            e.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{e}"
        );
        assert!(e.contains(needle), "{e}");
    }
    let rep = dir.join("r.md");
    let o = run(&[
        "bounds",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "digits",
        "--samples",
        "100",
        "--full-samples",
        "20",
        "--lemma2",
        "--orderings",
        "5",
        "--report",
        rep.to_str().unwrap(),
        "--fig",
        dir.join("f").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&rep).unwrap();
    assert!(
        text.contains("| theorem1_printed | gn |") && text.contains("## Lemma 2"),
        "{text}"
    );
    for f in ["f-norms.png", "f-norms.svg", "f-lemma2.png", "f-lemma2.svg"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bounds_sweep_writes_one_row_per_configuration() {
    let dir = std::env::temp_dir().join(format!("landscape-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("s.json");
    let o = Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args([
            "bounds-sweep",
            "--data",
            "digits",
            "--widths",
            "3,5",
            "--depths",
            "1,2",
            "--init-scales",
            "0.1,1",
        ])
        .args([
            "--epochs",
            "0",
            "--samples",
            "50",
            "--full-samples",
            "5",
            "--json",
            json.to_str().unwrap(),
        ])
        .args(["--fig", dir.join("sw").to_str().unwrap()])
        .args(["--report", dir.join("sw.md").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = j["results"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8);
    // The report's counts and smallest counterexamples, recounted from the JSON rows.
    let report = std::fs::read_to_string(dir.join("sw.md")).unwrap();
    for (variant, against) in [
        ("theorem1_printed", "full"),
        ("tight", "full"),
        ("tight", "gn"),
    ] {
        let mut held = 0;
        let mut smallest: Option<(u64, String)> = None;
        for r in rows {
            let c = r["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["variant"] == variant && c["against"] == against)
                .unwrap();
            if c["certificate"].is_null() {
                held += 1;
            } else {
                let p = r["params"].as_u64().unwrap();
                if smallest.as_ref().is_none_or(|(sp, _)| p < *sp) {
                    smallest = Some((p, format!("h = {}, L = {}", r["h"], r["layers"])));
                }
            }
        }
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| {variant} | {against} |")))
            .unwrap();
        assert!(line.contains(&format!("| {held} of 8 |")), "{line}");
        match smallest {
            Some((p, cfg)) => assert!(
                line.contains(&format!("P = {p}")) && line.contains(&cfg),
                "{line}"
            ),
            None => assert!(line.contains("held everywhere"), "{line}"),
        }
    }
    // Scaling every weight by 10 multiplies each spectral norm, hence M_W, by 10.
    let mw = |h: u64, d: u64, s: f64| {
        rows.iter()
            .find(|r| r["h"] == h && r["depth"] == d && r["init_scale"].as_f64() == Some(s))
            .unwrap()["m_w"]
            .as_f64()
            .unwrap()
    };
    assert!((mw(3, 2, 1.0) / mw(3, 2, 0.1) - 10.0).abs() < 1e-9);
    for f in [
        "sw-width.png",
        "sw-depth.svg",
        "sw-violations-depth.png",
        "sw-violations-width.svg",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hessian_increments_match_dense_differences() {
    let cfg = MlpConfig {
        input_dim: 4,
        hidden: vec![5],
        classes: 3,
        activation: Activation::Tanh,
        leaky_slope: 0.01,
        bias: true,
        batchnorm: None,
        loss: LossKind::CrossEntropy,
    };
    let model = Mlp::<f64>::init(cfg, Init::Torch, 1.0, 3).unwrap();
    let mut rng = Rng::new(5);
    let x = Matrix::from_fn(20, 4, |_, _| rng.normal());
    let y: Vec<usize> = (0..20).map(|i| i % 3).collect();
    let ks = [1, 3, 10, 19];
    let inc = landscape::theory::lemma2::hessian_increments(&model, &x, &y, &ks, 9, 1e-12).unwrap();
    let perm = Rng::derived(9, 0).permutation(20);
    for (t, &k) in ks.iter().enumerate() {
        let first = x.select_rows(&perm[..k]);
        let fy: Vec<usize> = perm[..k].iter().map(|&i| y[i]).collect();
        let hk = dense_hessian(&model, &first, &fy, Part::Full, 1 << 28).unwrap();
        let n = perm[k];
        let hn = dense_hessian(
            &model,
            &x.rows_view(n, n + 1).to_owned(),
            &y[n..n + 1],
            Part::Full,
            1 << 28,
        )
        .unwrap();
        let exact = spectral_abs_max(&hn.zip_map(&hk, |a, b| a - b));
        assert!(
            (inc[t].norm - exact).abs() <= 1e-9 * exact,
            "k={k}: {} vs {exact}",
            inc[t].norm
        );
        assert!(inc[t].residual <= 1e-8 * exact);
    }
}

/// The committed fixtures of DESIGN.md section 4 (`tests/fixtures/cex_l{1,3}.*`): the
/// weights are checked against their definition, then `bounds` runs on them.
fn fixture_bounds(name: &str) -> serde_json::Value {
    let dir = crate::common::TempDir::new(&format!("bounds-{name}"));
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let json = dir.join("b.json");
    let out = Command::new(env!("CARGO_BIN_EXE_landscape"))
        .args(["bounds", "--model"])
        .arg(fixtures.join(format!("{name}.safetensors")))
        .arg("--data")
        .arg(fixtures.join(format!("{name}.csv")))
        .args(["--normalize", "none", "--classes", "2", "--json"])
        .arg(&json)
        .arg("--report")
        .arg(dir.join("r.md"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(dir.join("r.md")).unwrap();
    assert!(report.contains("Smallest counterexample"), "{report}");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// A model file from `tests/fixtures`.
fn fixture_model(name: &str) -> Mlp<f64> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"));
    landscape::io::model_file::load_mlp_f64(&path, &Default::default()).unwrap()
}

fn find_check(j: &serde_json::Value, variant: &str, against: &str) -> serde_json::Value {
    j["results"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["variant"] == variant && c["against"] == against)
        .unwrap()
        .clone()
}

#[test]
fn three_layer_counterexample_from_the_fixture() {
    let model = fixture_model("cex_l3");
    assert_eq!(model.num_layers(), 3);
    assert!(!model.config.bias);
    for l in &model.layers {
        assert_eq!(l.weight.as_slice(), &[0.5, 0.0, 0.0, 0.5]);
    }
    let j = fixture_bounds("cex_l3");
    // Closed forms: M_W = 1/2, M_x = 10, L = 3.
    let (l, mx, mw) = (3, 10.0, 0.5);
    let printed = theorem1_printed(l, mx, mw);
    let tight = tight_form(l, mx, mw, false);
    // By hand: 3 sqrt2 100 / 64 + sqrt2 / 4 (1 - 1/64) / (3/4) = 6.62913 + 0.46404.
    assert!((printed - 7.09317).abs() < 1e-5, "{printed}");
    assert!((tight - 9.375).abs() < 1e-12);
    // Theorem 1 as printed (7.09) is violated by the GN norm 9.375, with a certificate.
    let t1 = find_check(&j, "theorem1_printed", "gn");
    assert_eq!(t1["holds"], false);
    assert!((t1["bound"].as_f64().unwrap() - printed).abs() < 1e-12 * printed);
    assert!(t1["certificate"].as_f64().unwrap() > printed);
    assert!((t1["witness_value"].as_f64().unwrap() - 9.375).abs() < 1e-10);
    // The thesis and tight forms hold for GN; the tight one is attained.
    assert_eq!(find_check(&j, "thesis", "gn")["holds"], true);
    let tg = find_check(&j, "tight", "gn");
    assert_eq!(tg["holds"], true);
    assert!((tg["worst_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-10);
    // The full-Hessian norm (about 12.68) exceeds the tight GN bound, certified.
    let tf = find_check(&j, "tight", "full");
    assert_eq!(tf["holds"], false);
    let cert = tf["certificate"].as_f64().unwrap();
    assert!(cert > tight && (cert - 12.68).abs() < 5e-3, "{cert}");
    assert!((tf["witness_value"].as_f64().unwrap() - 12.68).abs() < 5e-3);
}

#[test]
fn single_layer_counterexample_from_the_fixture() {
    let model = fixture_model("cex_l1");
    assert_eq!(model.num_layers(), 1);
    assert!(!model.config.bias);
    assert_eq!(model.layers[0].weight.as_slice(), &[0.1, 0.0, 0.0, 0.1]);
    let j = fixture_bounds("cex_l1");
    let t1 = find_check(&j, "theorem1_printed", "gn");
    // ||GN|| = ||H|| = 1 against the printed 0.0424: violated, with a certificate.
    assert_eq!(t1["holds"], false);
    let printed = theorem1_printed(1, 2f64.sqrt(), 0.1);
    assert!((t1["bound"].as_f64().unwrap() - printed).abs() < 1e-15);
    assert!(t1["certificate"].as_f64().unwrap() > printed);
    assert!((t1["witness_value"].as_f64().unwrap() - 1.0).abs() < 1e-14);
    assert_eq!(find_check(&j, "theorem1_printed", "full")["holds"], false);
    // The thesis and tight forms hold for GN (the tight one with equality).
    assert_eq!(find_check(&j, "thesis", "gn")["holds"], true);
    let tight = find_check(&j, "tight", "gn");
    assert_eq!(tight["holds"], true);
    assert!(
        (tight["bound"].as_f64().unwrap() - tight_form(1, 2f64.sqrt(), 0.1, false)).abs() < 1e-15
    );
    assert!((tight["worst_ratio"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    // L = 1 has no H-term: the full norm equals the tight GN bound, which holds.
    assert_eq!(find_check(&j, "tight", "full")["holds"], true);
}
