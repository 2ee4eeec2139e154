//! Guard rails of long work (issue 17, item 4): the memory budget covers the large
//! buffers of every architecture (checked against the measured peak memory of a real
//! run), a NaN/Inf value stops a run naming where, and unwritable or full output
//! locations are refused before the work starts.

use crate::common::TempDir;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_landscape");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(dir: &Path, args: &[&str]) {
    let o = run(dir, args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs a command that must fail with exit status 1 and exactly one `error:` line (no
/// panic); returns that line.
fn one_line_error(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

/// `(GiB)` of the item `what` in a memory-budget refusal.
fn gib_of(err: &str, what: &str) -> f64 {
    let rest = &err[err.find(what).unwrap_or_else(|| panic!("{what}: {err}")) + what.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn train_convnet(dir: &Path, data: &str, width: &str, out: &str) {
    ok(
        dir,
        &[
            "train",
            "--data",
            data,
            "--train-size",
            "128",
            "--arch",
            "convnet",
            "--width",
            width,
            "--epochs",
            "1",
            "--out",
            out,
        ],
    );
}

fn train_mlp(dir: &Path) {
    ok(
        dir,
        &[
            "train",
            "--data",
            "digits",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--out",
            "mlp.safetensors",
        ],
    );
}

#[test]
fn memory_budget_names_the_buffers_of_every_architecture() {
    let d = TempDir::new("guard-budget");
    train_convnet(&d, "digits", "4", "cn.safetensors");
    train_mlp(&d);
    let cases: [(&str, &[&str], &str); 5] = [
        // A BatchNorm ConvNet: its double-backward tapes.
        (
            "cn.safetensors",
            &["--top", "1", "--max-iter", "3"],
            "the autodiff tapes",
        ),
        ("cn.safetensors", &["--trace"], "the Hutch++ sketch"),
        (
            "mlp.safetensors",
            &["--dense", "h.safetensors"],
            "the dense Hessian",
        ),
        (
            "mlp.safetensors",
            &["--top", "1", "--max-iter", "500"],
            "the Lanczos basis",
        ),
        (
            "cn.safetensors",
            &["--per-layer"],
            "per-layer Lanczos basis",
        ),
    ];
    for (model, extra, what) in cases {
        let mut args = vec![
            "hessian",
            "--model",
            model,
            "--data",
            "digits",
            "--json",
            "r.json",
            "--memory-budget",
            "1e-9",
        ];
        args.extend_from_slice(extra);
        let err = one_line_error(&d, &args);
        assert!(
            err.contains("over --memory-budget") && err.contains(what),
            "{what}: {err}"
        );
        assert!(!d.join("r.json").exists() && !d.join("h.safetensors").exists());
    }
    // The same runs fit the default budget.
    ok(
        &d,
        &[
            "hessian",
            "--model",
            "cn.safetensors",
            "--data",
            "digits",
            "--samples",
            "64",
            "--top",
            "1",
            "--max-iter",
            "3",
        ],
    );
}

/// The tape estimate against the measured peak resident memory of the same run
/// (`wait4`'s `ru_maxrss` of that child alone): an upper bound with a fixed allowance for
/// the process itself (binary, embedded data), and not more than about 3x too high.
#[test]
fn tape_estimate_bounds_the_measured_peak_memory() {
    let d = TempDir::new("guard-rss");
    train_convnet(&d, "mnist10k", "8", "cn.safetensors");
    let base = [
        "--threads",
        "2",
        "hessian",
        "--model",
        "cn.safetensors",
        "--data",
        "mnist10k",
        "--top",
        "1",
        "--max-iter",
        "3",
    ];
    // The plain run, then --krylov mixed, whose kept recordings of all samples dominate.
    for (extra, items) in [
        (&["--samples", "128"][..], &["the autodiff tapes"][..]),
        (
            &["--samples", "640", "--krylov", "mixed"][..],
            &[
                "the autodiff tapes",
                "the kept forward and first backward passes (--krylov mixed)",
            ][..],
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let mut refused = args.clone();
        refused.extend_from_slice(&["--memory-budget", "1e-9"]);
        let err = one_line_error(&d, &refused);
        let estimate: f64 = items.iter().map(|w| gib_of(&err, w)).sum();
        // Reaped below by `wait4`, which also returns this child's own peak memory.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(BIN)
            .args(&args)
            .current_dir(&*d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid out-parameter; the pid is our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(pid, child.id() as i32);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let peak = usage.ru_maxrss as f64 / (1u64 << 20) as f64; // KiB -> GiB
        let allowance = 0.3; // the process without tapes: binary, mnist10k, model
        assert!(
            peak <= estimate + allowance,
            "{extra:?}: peak {peak:.3} GiB over the estimate {estimate:.3} GiB"
        );
        assert!(
            peak >= estimate / 3.0,
            "{extra:?}: estimate {estimate:.3} GiB far above the peak {peak:.3} GiB"
        );
    }
}

#[test]
fn a_non_finite_loss_stops_a_line_naming_the_point() {
    let d = TempDir::new("guard-nan");
    train_convnet(&d, "digits", "2", "cn.safetensors");
    train_mlp(&d);
    for model in ["mlp.safetensors", "cn.safetensors"] {
        let err = one_line_error(
            &d,
            &[
                "line",
                "--model",
                model,
                "--data",
                "digits",
                "--range",
                "-1e300:1e300:3",
                "--norm",
                "none",
                "--json",
                "l.json",
            ],
        );
        assert!(
            err.contains("at the point [-1e300]") && (err.contains("NaN") || err.contains("inf")),
            "{err}"
        );
        assert!(!d.join("l.json").exists());
    }
}

#[test]
fn output_folders_and_full_disks_are_refused_before_the_work() {
    let d = TempDir::new("guard-dirs");
    std::fs::write(d.join("a-file"), b"x").unwrap();
    ok(
        &d,
        &[
            "train",
            "--data",
            "digits",
            "--hidden",
            "4",
            "--epochs",
            "1",
            "--out",
            "m.safetensors",
        ],
    );
    for args in [
        vec!["wide", "--data", "digits", "--m", "12", "--out", "a-file"],
        vec![
            "sphere", "train", "--data", "digits", "--width", "2", "--epochs", "100", "--elr",
            "1e-3", "--out", "a-file",
        ],
        vec!["export", "--model", "m.safetensors", "--out", "a-file"],
        vec![
            "eval",
            "--model",
            "m.safetensors",
            "--data",
            "digits",
            "--json",
            "a-file/e.json",
        ],
    ] {
        let err = one_line_error(&d, &args);
        assert!(
            err.contains("cannot write") && err.contains("a-file"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(d.join("a-file")).unwrap(), b"x");
    // Free space: an output larger than its file system's free space is refused.
    let e = landscape::io::check_free_space(Path::new("out/h.safetensors"), 2 << 20, 1 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("needs 2.00 MiB") && e.contains("1.00 MiB free"),
        "{e}"
    );
    assert!(landscape::io::check_free_space(Path::new("x"), 1, 1).is_ok());
    assert!(landscape::io::free_bytes(&d).is_some_and(|b| b > 0));
}
