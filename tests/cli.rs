//! Integration tests: the `landscape` binary end to end (exit codes, one-line
//! errors, reproducible outputs with provenance).

use crate::common::TempDir;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_landscape"))
}

fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("cli-{tag}"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run landscape")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A failed command exits non-zero with exactly one `error:` line and no panic.
fn assert_clean_failure(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{e}");
    assert!(lines[0].contains(needle), "{e}");
}

#[test]
fn train_is_reproducible_and_records_provenance() {
    let d = temp_dir("train");
    let args = |tag: &str| {
        vec![
            "train".to_string(),
            "--data".into(),
            "digits".into(),
            "--test-split".into(),
            "0.2".into(),
            "--hidden".into(),
            "16".into(),
            "--epochs".into(),
            "3".into(),
            "--lr".into(),
            "1e-2".into(),
            "--seed".into(),
            "3".into(),
            "--out".into(),
            d.join(format!("{tag}.safetensors")).display().to_string(),
            "--json".into(),
            d.join(format!("{tag}.json")).display().to_string(),
        ]
    };
    for tag in ["a", "b"] {
        let o = bin().args(args(tag)).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let a = std::fs::read(d.join("a.safetensors")).unwrap();
    let b = std::fs::read(d.join("b.safetensors")).unwrap();
    assert_eq!(a, b, "model files differ between identical runs");
    let ja: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("a.json")).unwrap()).unwrap();
    let jb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("b.json")).unwrap()).unwrap();
    assert_eq!(ja["results"]["epochs"], jb["results"]["epochs"]);
    let prov = &ja["provenance"];
    assert_eq!(prov["seed"], 3);
    assert_eq!(prov["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(prov["dataset"]["name"], "digits");
    assert_eq!(prov["dataset"]["sha256"].as_str().unwrap().len(), 64);
    assert!(prov["config"]["model"]["hidden"].is_array());
    // The test accuracy of a small digits model after 3 epochs is far above chance.
    let err = ja["results"]["final"]["test_error"].as_f64().unwrap();
    assert!(err < 0.2, "{err}");
    // eval reproduces the final training-set loss.
    let o = run(&[
        "eval",
        "--model",
        d.join("a.safetensors").to_str().unwrap(),
        "--data",
        "digits",
        "--test-split",
        "0.2",
        "--json",
        d.join("e.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let je: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("e.json")).unwrap()).unwrap();
    let l1 = je["results"]["train"]["loss"].as_f64().unwrap();
    let l2 = ja["results"]["final"]["train_loss"].as_f64().unwrap();
    assert!((l1 - l2).abs() <= 1e-12 * l2, "{l1} vs {l2}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    let d = temp_dir("bad");
    // Unknown dataset path.
    assert_clean_failure(
        &run(&["train", "--data", "/nonexistent/x.csv", "--epochs", "1"]),
        "x.csv",
    );
    // Malformed CSV.
    let csv = d.join("bad.csv");
    std::fs::write(&csv, "1,2,0\n1,oops,1\n").unwrap();
    assert_clean_failure(
        &run(&["train", "--data", csv.to_str().unwrap(), "--epochs", "1"]),
        "line 2, column 2",
    );
    // Impossible options.
    assert_clean_failure(
        &run(&["train", "--data", "digits", "--epochs", "1", "--lr=-1"]),
        "learning rate",
    );
    assert_clean_failure(
        &run(&[
            "train",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--batch-size",
            "0",
        ]),
        "batch size",
    );
    assert_clean_failure(
        &run(&["train", "--data", "digits", "--train-size", "0"]),
        "empty subset",
    );
    // A model that does not match the data.
    let m = d.join("m.safetensors");
    let o = run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "4",
        "--epochs",
        "1",
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_clean_failure(
        &run(&["eval", "--model", m.to_str().unwrap(), "--data", "mnist10k"]),
        "input features",
    );
    // A truncated model file.
    let bytes = std::fs::read(&m).unwrap();
    let t = d.join("t.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_failure(
        &run(&["eval", "--model", t.to_str().unwrap(), "--data", "digits"]),
        "t.safetensors",
    );
    // Divergence is reported with the epoch and step.
    assert_clean_failure(
        &run(&[
            "train",
            "--data",
            "digits",
            "--optimizer",
            "sgd",
            "--lr",
            "1e6",
            "--loss",
            "mse",
            "--epochs",
            "3",
        ]),
        "at epoch 1, step",
    );
}

#[test]
fn hessian_command_end_to_end() {
    let d = temp_dir("hessian");
    let m = d.join("m.safetensors");
    let o = run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "6",
        "--epochs",
        "2",
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ms = m.to_str().unwrap();
    let json = d.join("h.json");
    let dense = d.join("H.safetensors");
    let o = run(&[
        "hessian",
        "--model",
        ms,
        "--data",
        "digits",
        "--samples",
        "200",
        "--dense",
        dense.to_str().unwrap(),
        "--top",
        "2",
        "--bottom",
        "1",
        "--trace",
        "--probes",
        "30",
        "--gn-norms",
        d.join("gn.csv").to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &j["results"];
    assert_eq!(r["num_samples"], 200);
    // Lanczos against the exact trace and the dense file's size (P = 64*6 + 6 + 6*10 + 10 = 460).
    assert_eq!(r["num_params"], 460);
    assert!(std::fs::metadata(&dense).unwrap().len() as usize > 460 * 460 * 8);
    let exact = r["trace"]["exact"].as_f64().unwrap();
    let lo = r["trace"]["hutchinson"]["ci95"][0].as_f64().unwrap();
    let hi = r["trace"]["hutchinson"]["ci95"][1].as_f64().unwrap();
    assert!(lo < hi && exact.is_finite());
    for res in r["eigenvalues"]["residuals"].as_array().unwrap() {
        assert!(res.as_f64().unwrap() < 1e-6);
    }
    let csv = std::fs::read_to_string(d.join("gn.csv")).unwrap();
    assert_eq!(csv.lines().count(), 201);
    // Bad input: sample out of range, empty subset, a budget too small for dense.
    assert_clean_failure(
        &run(&[
            "hessian", "--model", ms, "--data", "digits", "--sample", "5000", "--top", "1",
        ]),
        "out of range",
    );
    assert_clean_failure(
        &run(&[
            "hessian",
            "--model",
            ms,
            "--data",
            "digits",
            "--samples",
            "0",
            "--top",
            "1",
        ]),
        "empty subset",
    );
    assert_clean_failure(
        &run(&[
            "hessian",
            "--model",
            ms,
            "--data",
            "digits",
            "--dense",
            dense.to_str().unwrap(),
            "--memory-budget",
            "0.0001",
        ]),
        "matrix-free",
    );
    assert_clean_failure(
        &run(&["hessian", "--model", ms, "--data", "mnist10k", "--top", "1"]),
        "input features",
    );
}

#[test]
fn hessian_of_a_batchnorm_model_uses_double_backward() {
    let d = temp_dir("hessian-bn");
    let m = d.join("bn.safetensors");
    let o = run(&[
        "train",
        "--data",
        "digits",
        "--hidden",
        "4",
        "--batchnorm",
        "--epochs",
        "1",
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json = d.join("h.json");
    let o = run(&[
        "hessian",
        "--model",
        m.to_str().unwrap(),
        "--data",
        "digits",
        "--samples",
        "50",
        "--top",
        "1",
        "--bottom",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(j["results"]["hvp_method"]
        .as_str()
        .unwrap()
        .contains("double backward"));
    let vals = j["results"]["eigenvalues"]["ritz_values"]
        .as_array()
        .unwrap();
    assert!(vals[0].as_f64().unwrap() >= vals[1].as_f64().unwrap());
    for r in j["results"]["eigenvalues"]["residuals"].as_array().unwrap() {
        assert!(r.as_f64().unwrap() < 1e-6);
    }
    assert_clean_failure(
        &run(&[
            "hessian",
            "--model",
            m.to_str().unwrap(),
            "--data",
            "digits",
            "--part",
            "gn",
            "--top",
            "1",
        ]),
        "BatchNorm",
    );
}

/// `bench` names the machine and the GEMM rate of the run, and counts the dense-product
/// FLOPs of a workload: the training step of the 784-256-256-10 MLP at batch 128 against
/// a hand count (forward `X W^T` per layer, the weight gradients the same again, the
/// input gradients of layers 2 and 3; `2 m n k` each).
#[test]
fn bench_reports_the_machine_and_counted_gemm_flops() {
    let d = temp_dir("bench-flops");
    let json_path = d.join("b.json");
    let o = run(&[
        "bench",
        "--workloads",
        "train-step",
        "--devices",
        "cpu",
        "--reps",
        "1",
        "--json",
        json_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let r = &v["results"];
    assert!(!r["machine"]["processor"].as_str().unwrap().is_empty());
    assert!(r["machine"]["threads"].as_u64().unwrap() >= 1);
    assert!(r["gemm_rate_gflops"]["f64"].as_f64().unwrap() > 0.0);
    assert!(r["gemm_rate_gflops"]["f32"].as_f64().unwrap() > 0.0);
    let b = 128.0;
    let forward = 2.0 * b * (784.0 * 256.0 + 256.0 * 256.0 + 256.0 * 10.0);
    let input_grads = 2.0 * b * (256.0 * 256.0 + 256.0 * 10.0);
    let row = &r["rows"][0];
    assert_eq!(row["workload"], "train_step");
    assert_eq!(
        row["gemm_flops"].as_f64().unwrap(),
        2.0 * forward + input_grads
    );
    assert!(row["fraction_of_gemm_rate"].as_f64().unwrap() > 0.0);
    assert!(r["table_markdown"].as_str().unwrap().contains("Machine: "));
}

/// `LANDSCAPE_GEMM` picks the GEMM kernel: a bad value is a one-line error; the two
/// kernels give the same training run to rounding (compared with a tolerance: their
/// sums differ in the last bits), each bit-identical when repeated, and the
/// provenance names the kernels used.
#[test]
fn gemm_kernel_override_is_checked_and_recorded() {
    let d = temp_dir("gemm-kernel");
    let o = bin()
        .env("LANDSCAPE_GEMM", "blas")
        .args(["info", "--data", "digits"])
        .output()
        .unwrap();
    assert_clean_failure(&o, "LANDSCAPE_GEMM");
    let train = |kernel: &str, out: &str| {
        let path = d.join(out);
        let o = bin()
            .env("LANDSCAPE_GEMM", kernel)
            .args([
                "--threads",
                "2",
                "train",
                "--data",
                "digits",
                "--hidden",
                "40,40",
                "--epochs",
                "2",
                "--seed",
                "3",
                "--out",
                path.to_str().unwrap(),
                "--json",
                path.with_extension("json").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let m = landscape::io::model_file::load_mlp_f64(&path, &Default::default()).unwrap();
        (m.param_vector(), path)
    };
    let (mm, _) = train("matrixmultiply", "mm.safetensors");
    let (mm2, _) = train("matrixmultiply", "mm2.safetensors");
    let (gm, gm_path) = train("gemm", "gemm.safetensors");
    let (gm2, _) = train("gemm", "gemm2.safetensors");
    assert_eq!(mm, mm2, "matrixmultiply runs differ");
    assert_eq!(gm, gm2, "gemm runs differ");
    let scale = mm.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let diff = mm
        .iter()
        .zip(&gm)
        .fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(diff <= 1e-9 * scale, "kernels disagree by {diff:e}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gm_path.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(v["provenance"]["gemm"], "f64: gemm, f32: gemm", "{v}");
}
