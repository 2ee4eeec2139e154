//! Integration tests: the `landscape` binary end to end (exit codes, one-line
//! errors, reproducible outputs with provenance).

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_landscape"))
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("landscape-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
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
