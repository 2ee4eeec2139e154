//! Fault injection: the real binary is killed (SIGKILL) or interrupted (SIGINT, SIGTERM)
//! at precise points, resumed with `--resume`, and its outputs compared byte for byte
//! with those of an uninterrupted run; damaged or foreign checkpoints are refused; every
//! output of every command goes through the atomic writer.
//!
//! Precise kill points come from the test-only hook `LANDSCAPE_TEST_PAUSE_AT=POINT:N`
//! (`src/io/checkpoint.rs`): the process announces the pause on stderr and waits there.
//!
//! What is compared: every file both runs leave in their folders (models, epoch
//! checkpoints, safetensors surfaces, CSV, Markdown, PNG, SVG, JSON), byte for byte, with
//! one exception stated here: in JSON results, the values of keys whose name contains
//! `seconds` (wall-clock durations such as `train_seconds`, `surface_seconds`) are set
//! to 0 on both sides before the comparison. Both runs use `SOURCE_DATE_EPOCH`, so the
//! provenance time is fixed; the recorded command lines are equal because the runs use
//! the same relative paths and a resumed run records `--resume DIR` as
//! `--checkpoint-dir DIR`.

use crate::common::TempDir;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_landscape");

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1")
        .env_remove("LANDSCAPE_TEST_PAUSE_AT")
        .env_remove("LANDSCAPE_TEST_LOG_WRITES")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

/// Runs to completion; returns stderr.
fn run_ok(dir: &Path, args: &[&str]) -> String {
    let o = cmd(dir, args).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?}: {err}");
    err
}

/// Runs and expects failure; returns (status, stderr).
fn run_fail(dir: &Path, args: &[&str]) -> (ExitStatus, String) {
    let o = cmd(dir, args).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{args:?} should fail: {err}");
    assert!(!err.contains("panicked"), "{err}");
    (o.status, err)
}

#[derive(Clone, Copy, Debug)]
enum Sig {
    Kill,
    Int,
    Term,
}

/// Starts the command with the pause hook at `point` (`NAME:N`), waits until it is
/// there, sends `sig` and returns the exit status and stderr.
fn interrupt(dir: &Path, args: &[&str], point: &str, sig: Sig) -> (ExitStatus, String) {
    let mut child = cmd(dir, args)
        .env("LANDSCAPE_TEST_PAUSE_AT", point)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            panic!("{args:?} ended ({status}) before pausing at {point}: {text}");
        }
        text.push_str(&line);
        if line.starts_with("landscape-test: paused at") {
            break;
        }
    }
    match sig {
        Sig::Kill => child.kill().unwrap(),
        Sig::Int | Sig::Term => {
            let s = if matches!(sig, Sig::Int) {
                libc::SIGINT
            } else {
                libc::SIGTERM
            };
            // SAFETY: sends a signal to our own child process.
            assert_eq!(unsafe { libc::kill(child.id() as i32, s) }, 0);
        }
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    text.push_str(&rest);
    (child.wait().unwrap(), text)
}

fn assert_killed(st: ExitStatus) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
}

/// Every file under `dir` (relative path -> bytes).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// JSON durations (keys containing `seconds`), CSV duration columns (headers
/// containing `seconds`) set to 0, and the `## Wall time` section of a Markdown report
/// dropped; everything else untouched.
fn normalise(name: &str, bytes: &[u8]) -> Vec<u8> {
    if name.ends_with(".md") {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let kept = text.split("## Wall time").next().unwrap_or("");
        return kept.as_bytes().to_vec();
    }
    if name.ends_with(".csv") {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        let timed: Vec<bool> = header.split(',').map(|h| h.contains("seconds")).collect();
        let mut out = format!("{header}\n");
        for l in lines {
            let cells: Vec<&str> = l
                .split(',')
                .enumerate()
                .map(|(i, c)| if timed.get(i) == Some(&true) { "0" } else { c })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        return out.into_bytes();
    }
    if !name.ends_with(".json") {
        return bytes.to_vec();
    }
    // Every value under a key containing `seconds` (numbers, or lists such as
    // `epoch_seconds`) becomes 0; the rest is compared as parsed.
    fn zero_durations(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k.contains("seconds") {
                        *x = serde_json::json!(0);
                    } else {
                        zero_durations(x);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(zero_durations),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    zero_durations(&mut v);
    serde_json::to_vec_pretty(&v).unwrap()
}

/// The two folders hold the same files with the same bytes (see the module docs), and
/// no temporary or checkpoint file is left.
fn assert_same_outputs(a: &Path, b: &Path) {
    let (fa, fb) = (files(a), files(b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fb.keys().collect::<Vec<_>>(),
        "different files"
    );
    assert!(fa.len() > 1, "{fa:?}");
    for (name, bytes) in &fa {
        assert!(
            !name.split('/').any(|c| c.starts_with('.')) && !name.ends_with("resume.ckpt"),
            "left behind: {name}"
        );
        assert!(
            normalise(name, bytes) == normalise(name, &fb[name]),
            "{name} differs between the uninterrupted and the resumed run"
        );
    }
}

fn train_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec![
        "train",
        "--data",
        "digits",
        "--test-split",
        "0.2",
        "--hidden",
        "16",
        "--epochs",
        "3",
        "--lr",
        "1e-2",
        "--batch-size",
        "32",
        "--seed",
        "3",
        "--threads",
        "1",
        "--out",
        "m.safetensors",
        "--json",
        "t.json",
    ];
    v.extend_from_slice(extra);
    v
}

fn with(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
    let mut v = base.to_vec();
    v.extend_from_slice(extra);
    v
}

/// Reference and resumed runs of `args` in two folders; the reference checkpoints too.
fn reference(root: &Path, args: &[&str]) -> PathBuf {
    let a = root.join("reference");
    std::fs::create_dir_all(&a).unwrap();
    run_ok(&a, &with_ck(args, "--checkpoint-dir"));
    a
}

fn with_ck<'a>(args: &[&'a str], flag: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(&[flag, "ck"]);
    v
}

#[test]
fn train_resumes_bit_exactly_after_sigkill_mid_epoch() {
    // Adam on an MLP, and SGD with momentum on a BatchNorm MLP (running statistics).
    for (tag, extra) in [
        ("adam", vec![]),
        (
            "bn-sgd",
            vec!["--batchnorm", "--optimizer", "sgd", "--momentum", "0.9"],
        ),
    ] {
        let root = TempDir::new(&format!("fi-train-{tag}"));
        let args = train_args(&extra);
        let a = reference(&root, &args);
        let b = root.join("killed");
        std::fs::create_dir_all(&b).unwrap();
        // Checkpoints at every step: killed in epoch 1 (step 20), resumed, killed again in
        // epoch 2 (20 steps later), resumed to the end.
        let every = with(
            &with_ck(&args, "--checkpoint-dir"),
            &["--checkpoint-interval", "0"],
        );
        let (st, _) = interrupt(&b, &every, "step:20", Sig::Kill);
        assert_killed(st);
        assert!(b.join("ck/resume.ckpt").exists());
        let resume = with(&with_ck(&args, "--resume"), &["--checkpoint-interval", "0"]);
        let (st, _) = interrupt(&b, &resume, "step:40", Sig::Kill);
        assert_killed(st);
        let err = run_ok(&b, &with_ck(&args, "--resume"));
        assert!(err.contains("resuming from"), "{err}");
        assert_same_outputs(&a, &b);

        // Default interval (60 s): only epoch ends are checkpointed; killed mid-epoch 2,
        // the run resumes from the end of epoch 1.
        let c = root.join("epoch-only");
        std::fs::create_dir_all(&c).unwrap();
        let (st, _) = interrupt(
            &c,
            &with_ck(&args, "--checkpoint-dir"),
            "step:60",
            Sig::Kill,
        );
        assert_killed(st);
        run_ok(&c, &with_ck(&args, "--resume"));
        assert_same_outputs(&a, &c);
    }
}

/// Any architecture (`nn::Network`: BatchNorm buffers and `num_batches_tracked`), in f32.
#[test]
fn convnet_f32_training_resumes_bit_exactly() {
    let root = TempDir::new("fi-train-convnet");
    let args = vec![
        "train",
        "--arch",
        "convnet",
        "--width",
        "2",
        "--data",
        "digits",
        "--train-size",
        "300",
        "--test-split",
        "0.2",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--lr",
        "3e-3",
        "--dtype",
        "f32",
        "--threads",
        "1",
        "--out",
        "c.safetensors",
        "--json",
        "c.json",
    ];
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    let every = with(
        &with_ck(&args, "--checkpoint-dir"),
        &["--checkpoint-interval", "0"],
    );
    let (st, _) = interrupt(&b, &every, "step:5", Sig::Kill);
    assert_killed(st);
    let resume = with(&with_ck(&args, "--resume"), &["--checkpoint-interval", "0"]);
    let (st, _) = interrupt(&b, &resume, "step:6", Sig::Kill);
    assert_killed(st);
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

#[test]
fn train_sigint_and_sigterm_checkpoint_and_exit_130_143() {
    let root = TempDir::new("fi-train-signals");
    let args = train_args(&[]);
    let a = reference(&root, &args);
    for (sig, code, name) in [(Sig::Int, 130, "SIGINT"), (Sig::Term, 143, "SIGTERM")] {
        let b = root.join(name);
        std::fs::create_dir_all(&b).unwrap();
        // The default interval: the checkpoint is the one the signal makes.
        let (st, err) = interrupt(&b, &with_ck(&args, "--checkpoint-dir"), "step:70", sig);
        assert_eq!(st.code(), Some(code), "{err}");
        let line = err.lines().last().unwrap();
        assert!(
            line.starts_with(&format!("interrupted by {name} at epoch 2, step 25"))
                && line.ends_with("--resume ck"),
            "{err}"
        );
        assert!(!b.join("m.safetensors").exists() && !b.join("t.json").exists());
        // Interrupted again while resuming, then finished.
        let (st, _) = interrupt(&b, &with_ck(&args, "--resume"), "step:30", sig);
        assert_eq!(st.code(), Some(code));
        run_ok(&b, &with_ck(&args, "--resume"));
        assert_same_outputs(&a, &b);
    }
}

#[test]
fn killed_while_writing_a_checkpoint_keeps_the_previous_one() {
    let root = TempDir::new("fi-train-ckwrite");
    let args = train_args(&[]);
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    let every = with(
        &with_ck(&args, "--checkpoint-dir"),
        &["--checkpoint-interval", "0"],
    );
    let (st, _) = interrupt(&b, &every, "checkpoint-write:50", Sig::Kill);
    assert_killed(st);
    let ck = files(&b.join("ck"));
    let temps: Vec<&String> = ck
        .keys()
        .filter(|k| k.starts_with(".resume.ckpt.tmp"))
        .collect();
    assert_eq!(temps.len(), 1, "{:?}", ck.keys());
    assert!(ck.contains_key("resume.ckpt"));
    // The half-written temporary is not a valid checkpoint; the previous one is.
    assert!(ck[temps[0]].len() < ck["resume.ckpt"].len());
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

fn sweep_args() -> Vec<&'static str> {
    vec![
        "bounds-sweep",
        "--data",
        "digits",
        "--widths",
        "4,8",
        "--depths",
        "1,2",
        "--epochs",
        "1",
        "--samples",
        "60",
        "--full-samples",
        "3",
        "--threads",
        "1",
        "--csv",
        "s.csv",
        "--json",
        "s.json",
        "--report",
        "s.md",
        "--fig",
        "fig/s",
    ]
}

#[test]
fn sweep_resumes_after_kill_and_sigint_between_configurations() {
    let root = TempDir::new("fi-sweep");
    let args = sweep_args();
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    let every = with(
        &with_ck(&args, "--checkpoint-dir"),
        &["--checkpoint-interval", "0"],
    );
    let (st, _) = interrupt(&b, &every, "point:2", Sig::Kill);
    assert_killed(st);
    let (st, err) = interrupt(&b, &with_ck(&args, "--resume"), "point:1", Sig::Int);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("at configuration 2 of 4"), "{err}");
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

#[test]
fn wide_resumes_between_experiments_and_inside_the_width_sweep() {
    let root = TempDir::new("fi-wide");
    let args = [
        "wide",
        "--data",
        "digits",
        "--m",
        "12",
        "--only",
        "rank,sweep,relu",
        "--activations",
        "tanh,relu",
        "--widths",
        "2,11,12",
        "--seeds",
        "2",
        "--rank-draws",
        "2",
        "--threads",
        "1",
        "--out",
        "w",
        // Every run of the test has the same command line: the finished experiments'
        // files, written before the kill, record it.
        "--checkpoint-interval",
        "0",
    ];
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    let every = with_ck(&args, "--checkpoint-dir");
    // Points: 1 after rank, 2-4 after each batch of 4 sweep runs, 5 after the sweep.
    let (st, _) = interrupt(&b, &every, "point:3", Sig::Kill);
    assert_killed(st);
    let (st, err) = interrupt(&b, &with_ck(&args, "--resume"), "point:1", Sig::Int);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("width sweep run 8 of 12"), "{err}");
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

#[test]
fn surface_resumes_after_kill_between_grid_points_and_in_curvature() {
    let root = TempDir::new("fi-surface");
    std::fs::create_dir_all(root.join("models")).unwrap();
    run_ok(
        &root.join("models"),
        &[
            "train",
            "--data",
            "digits",
            "--hidden",
            "8",
            "--epochs",
            "1",
            "--seed",
            "1",
            "--out",
            "m.safetensors",
        ],
    );
    let args = vec![
        "surface",
        "--model",
        "../models/m.safetensors",
        "--data",
        "digits",
        "--samples",
        "200",
        "--grid",
        "-1:1:9x-1:1:7",
        "--curvature-grid",
        "-1:1:3x0:0:1",
        "--threads",
        "2",
        "--out",
        "s.safetensors",
        "--json",
        "s.json",
        "--fig",
        "fig/s",
    ];
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    let every = with(
        &with_ck(&args, "--checkpoint-dir"),
        &["--checkpoint-interval", "0"],
    );
    // Killed after the second chunk of grid rows, then interrupted at the first
    // curvature point, then finished.
    let (st, _) = interrupt(&b, &every, "point:2", Sig::Kill);
    assert_killed(st);
    let resume = with(&with_ck(&args, "--resume"), &["--checkpoint-interval", "0"]);
    let (st, err) = interrupt(&b, &resume, "point:7", Sig::Int);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("at curvature point 1 of 3"), "{err}");
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

#[test]
fn connect_resumes_bend_training_after_kill_and_sigint() {
    let root = TempDir::new("fi-connect");
    std::fs::create_dir_all(root.join("models")).unwrap();
    for (seed, out) in [("1", "a.safetensors"), ("2", "b.safetensors")] {
        run_ok(
            &root.join("models"),
            &[
                "train", "--data", "digits", "--hidden", "8", "--epochs", "1", "--seed", seed,
                "--out", out,
            ],
        );
    }
    let args = vec![
        "connect",
        "--a",
        "../models/a.safetensors",
        "--b",
        "../models/b.safetensors",
        "--data",
        "digits",
        "--train-size",
        "200",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--points",
        "5",
        "--eigen-points",
        "2",
        "--eigen-samples",
        "32",
        "--threads",
        "2",
        "--out",
        "bend.safetensors",
        "--csv",
        "c.csv",
        "--fig",
        "fig/c",
        "--json",
        "c.json",
    ];
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    // 13 steps per epoch: killed at step 10 of epoch 1 (9 checkpointed), interrupted 5
    // steps after resuming (steps 10-13 of epoch 1, then epoch 2, step 1), then finished.
    let every = with(
        &with_ck(&args, "--checkpoint-dir"),
        &["--checkpoint-interval", "0"],
    );
    let (st, _) = interrupt(&b, &every, "step:10", Sig::Kill);
    assert_killed(st);
    let (st, err) = interrupt(&b, &with_ck(&args, "--resume"), "step:5", Sig::Int);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("at bend training epoch 2, step 1"), "{err}");
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

#[test]
fn sample_size_resumes_after_kill_mid_training_and_sigint() {
    let root = TempDir::new("fi-sample-size");
    let args = vec![
        "sample-size",
        "--data",
        "digits",
        "--train-size",
        "200",
        "--epochs",
        "1",
        "--orderings",
        "3",
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
        "--threads",
        "1",
        "--cache-dir",
        "cache",
        "--csv",
        "ss.csv",
        "--fig",
        "fig/ss",
        "--json",
        "ss.json",
    ];
    let a = reference(&root, &args);
    let b = root.join("killed");
    std::fs::create_dir_all(&b).unwrap();
    // Killed while training the first model (retrained on resume); the second
    // configuration's model is trained, cached and recorded, then SIGINT before its
    // configuration is checkpointed; the resumed run loads it and reports it as
    // trained by this run, as the uninterrupted run does.
    let every = with(
        &with_ck(&args, "--checkpoint-dir"),
        &["--checkpoint-interval", "0"],
    );
    let (st, _) = interrupt(&b, &every, "step:2", Sig::Kill);
    assert_killed(st);
    let (st, err) = interrupt(&b, &with_ck(&args, "--resume"), "point:2", Sig::Int);
    assert_eq!(st.code(), Some(130), "{err}");
    assert!(err.contains("at configuration 2 of 2"), "{err}");
    run_ok(&b, &with_ck(&args, "--resume"));
    assert_same_outputs(&a, &b);
}

#[test]
fn damaged_missing_and_foreign_checkpoints_are_refused() {
    let root = TempDir::new("fi-refused");
    let d: &Path = &root;
    let args = train_args(&[]);
    let (st, _) = interrupt(d, &with_ck(&args, "--checkpoint-dir"), "step:10", Sig::Int);
    assert_eq!(st.code(), Some(130));
    let good = std::fs::read(d.join("ck/resume.ckpt")).unwrap();
    let one_error = |err: &str, needle: &str| {
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(needle), "{err}");
    };
    let resume = with_ck(&args, "--resume");
    // Truncated at several places, and one flipped bit.
    for cut in [3, 20, good.len() / 2, good.len() - 1] {
        std::fs::write(d.join("ck/resume.ckpt"), &good[..cut]).unwrap();
        let (st, err) = run_fail(d, &resume);
        assert_eq!(st.code(), Some(1));
        one_error(&err, "truncated");
    }
    let mut bad = good.clone();
    let at = good.len() - 100;
    bad[at] ^= 0x10;
    std::fs::write(d.join("ck/resume.ckpt"), &bad).unwrap();
    one_error(
        &run_fail(d, &resume).1,
        "corrupted (SHA-256 checksum mismatch)",
    );
    std::fs::write(d.join("ck/resume.ckpt"), b"not a checkpoint at all").unwrap();
    one_error(&run_fail(d, &resume).1, "not a landscape checkpoint");
    std::fs::write(d.join("ck/resume.ckpt"), &good).unwrap();
    // Another configuration: says what differs.
    let mut other = resume.clone();
    let lr = other.iter().position(|&x| x == "1e-2").unwrap();
    other[lr] = "2e-2";
    one_error(
        &run_fail(d, &other).1,
        "another configuration: config.command.train.optimizer.lr: 0.01 in the checkpoint, 0.02 now",
    );
    let mut threads = resume.clone();
    let t = threads.iter().position(|&x| x == "--threads").unwrap();
    threads[t + 1] = "2";
    one_error(
        &run_fail(d, &threads).1,
        "config.threads: 1 in the checkpoint, 2 now",
    );
    // Another command's checkpoint.
    let sweep = with_ck(&sweep_args(), "--resume");
    one_error(
        &run_fail(d, &sweep).1,
        "written by `train`, not `bounds-sweep`",
    );
    // A fresh run does not overwrite a checkpoint; --resume needs one.
    one_error(
        &run_fail(d, &with_ck(&args, "--checkpoint-dir")).1,
        "already holds a checkpoint",
    );
    let mut none = args.clone();
    none.extend_from_slice(&["--resume", "nothing-here"]);
    one_error(&run_fail(d, &none).1, "no checkpoint to resume from");
    // The intact checkpoint still resumes, and a finished run leaves no checkpoint.
    run_ok(d, &resume);
    assert!(!d.join("ck/resume.ckpt").exists());
    assert!(d.join("m.safetensors").exists());
}

/// Every command with every output option: (a) each file a complete run creates was
/// put in place by the atomic writer (its test log names it); (b) a run killed in the
/// middle of writing its first and its last output leaves no partial file under a
/// final name: every visible file is complete (equal to the complete run's).
#[test]
fn every_command_writes_outputs_atomically() {
    let root = TempDir::new("fi-atomic");
    let models = root.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for (seed, out) in [("1", "m.safetensors"), ("2", "m2.safetensors")] {
        run_ok(
            &models,
            &[
                "train", "--data", "digits", "--hidden", "8", "--epochs", "1", "--seed", seed,
                "--out", out,
            ],
        );
    }
    let (m, m2) = (
        models.join("m.safetensors").display().to_string(),
        models.join("m2.safetensors").display().to_string(),
    );
    let (m, m2) = (m.as_str(), m2.as_str());
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("train", with(&train_args(&[]), &["--checkpoint-dir", "ck"])),
        (
            "eval",
            vec!["eval", "--model", m, "--data", "digits", "--json", "e.json"],
        ),
        (
            "info",
            vec!["info", "--model", m, "--data", "digits", "--json", "i.json"],
        ),
        (
            "export",
            vec!["export", "--model", m, "--out", "exp", "--json", "x.json"],
        ),
        (
            "hessian",
            vec![
                "hessian",
                "--model",
                m,
                "--data",
                "digits",
                "--samples",
                "50",
                "--dense",
                "H.safetensors",
                "--top",
                "2",
                "--density",
                "dens",
                "--gn-norms",
                "gn.csv",
                "--json",
                "h.json",
            ],
        ),
        (
            "bounds",
            vec![
                "bounds",
                "--model",
                m,
                "--data",
                "digits",
                "--samples",
                "40",
                "--full-samples",
                "2",
                "--csv",
                "b.csv",
                "--report",
                "b.md",
                "--fig",
                "bf",
                "--json",
                "b.json",
            ],
        ),
        (
            "bounds-sweep",
            with(&sweep_args(), &["--checkpoint-dir", "ck"]),
        ),
        (
            "sample-size",
            vec![
                "sample-size",
                "--data",
                "digits",
                "--train-size",
                "200",
                "--epochs",
                "1",
                "--orderings",
                "3",
                "--hidden-sizes",
                "4",
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
                "--cache-dir",
                "cache",
                "--csv",
                "ss.csv",
                "--fig",
                "ssf",
                "--json",
                "ss.json",
            ],
        ),
        (
            "line",
            vec![
                "line", "--model", m, "--data", "digits", "--range", "-1:1:5", "--csv", "l.csv",
                "--fig", "lf", "--json", "l.json",
            ],
        ),
        (
            "surface",
            vec![
                "surface",
                "--model",
                m,
                "--data",
                "digits",
                "--samples",
                "100",
                "--grid",
                "-1:1:5x-1:1:4",
                "--out",
                "s.safetensors",
                "--fig",
                "sf",
                "--json",
                "s.json",
                "--checkpoint-dir",
                "ck",
            ],
        ),
        (
            "connect",
            vec![
                "connect",
                "--a",
                m,
                "--b",
                m2,
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
                "--out",
                "bend.safetensors",
                "--csv",
                "c.csv",
                "--fig",
                "cf",
                "--json",
                "c.json",
            ],
        ),
        (
            "wide",
            vec![
                "wide",
                "--data",
                "digits",
                "--m",
                "12",
                "--only",
                "rank,relu",
                "--seeds",
                "1",
                "--out",
                "w",
            ],
        ),
        (
            "sphere",
            vec![
                "sphere",
                "train",
                "--data",
                "digits",
                "--train-size",
                "64",
                "--width",
                "2",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--elr",
                "1e-3",
                "--curvature-every",
                "0",
                "--metric-samples",
                "32",
                "--out",
                "sph",
            ],
        ),
        (
            "bench",
            vec![
                "bench",
                "--workloads",
                "train-step",
                "--devices",
                "cpu",
                "--reps",
                "1",
                "--table",
                "bench.md",
                "--json",
                "bench.json",
            ],
        ),
    ];
    let mut replot = None;
    for (name, args) in &commands {
        let full = root.join("runs").join(name).join("full");
        std::fs::create_dir_all(&full).unwrap();
        let o = cmd(&full, args)
            .env("LANDSCAPE_TEST_LOG_WRITES", "1")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{name}: {err}");
        let written: Vec<PathBuf> = err
            .lines()
            .filter_map(|l| l.strip_prefix("landscape-test: wrote "))
            .map(|p| full.join(p))
            .collect();
        let made = files(&full);
        assert!(!made.is_empty(), "{name} wrote nothing");
        for f in made.keys() {
            assert!(
                written.iter().any(|w| w == &full.join(f)),
                "{name}: {f} was not written through the atomic writer ({written:?})"
            );
            assert!(
                !f.split('/').any(|c| c.starts_with('.')),
                "{name}: left {f}"
            );
        }
        if *name == "surface" {
            replot = Some(full.join("s.safetensors"));
        }
        let mut points = vec![1, written.len()];
        points.dedup();
        for n in points {
            let killed = root.join("runs").join(name).join(format!("killed-{n}"));
            std::fs::create_dir_all(&killed).unwrap();
            let (st, _) = interrupt(&killed, args, &format!("output-write:{n}"), Sig::Kill);
            assert_killed(st);
            let left = files(&killed);
            let temps = left
                .keys()
                .filter(|k| k.rsplit('/').next().unwrap().starts_with('.'))
                .count();
            assert_eq!(temps, 1, "{name}: {:?}", left.keys());
            for (f, bytes) in &left {
                // bench's outputs are timings: different every run, not comparable.
                if f.rsplit('/').next().unwrap().starts_with('.')
                    || f.ends_with("resume.ckpt")
                    || *name == "bench"
                {
                    continue;
                }
                assert!(
                    normalise(f, bytes) == normalise(f, &made[f]),
                    "{name}: {f} is partial or different after a kill at output {n}"
                );
            }
            if n == 1 {
                // Run again (resuming where there is a checkpoint): the same files, and
                // the dead run's temporary file is gone.
                let mut again = args.clone();
                if again.contains(&"--checkpoint-dir") && killed.join("ck/resume.ckpt").exists() {
                    again.extend_from_slice(&["--resume", "ck"]);
                }
                run_ok(&killed, &again);
                let after = files(&killed);
                assert_eq!(
                    after.keys().collect::<Vec<_>>(),
                    made.keys().collect::<Vec<_>>(),
                    "{name}"
                );
            }
        }
    }
    // surface-replot redraws figures from a surface file.
    let surf = replot.unwrap();
    let d = root.join("runs/replot");
    std::fs::create_dir_all(&d).unwrap();
    let s = surf.display().to_string();
    let o = cmd(&d, &["surface-replot", &s, "--fig", "rf"])
        .env("LANDSCAPE_TEST_LOG_WRITES", "1")
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    for f in files(&d).keys() {
        assert!(err.contains(&format!("wrote {f}")), "{f}: {err}");
    }
}

/// An output path that cannot be written is a one-line error before the long work.
#[test]
fn unwritable_output_fails_before_the_long_work() {
    let root = TempDir::new("fi-probe");
    let d: &Path = &root;
    std::fs::write(d.join("a-file"), b"x").unwrap();
    run_ok(
        d,
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
    let t = std::time::Instant::now();
    for args in [
        // 10,000 epochs: hours of work if the probe did not stop it first.
        vec![
            "train",
            "--data",
            "digits",
            "--epochs",
            "10000",
            "--out",
            "m2.safetensors",
            "--json",
            "a-file/r.json",
        ],
        vec![
            "bounds-sweep",
            "--data",
            "digits",
            "--widths",
            "64,128",
            "--depths",
            "1,2,3",
            "--epochs",
            "1000",
            "--csv",
            "a-file/s.csv",
        ],
        vec![
            "surface",
            "--model",
            "m.safetensors",
            "--data",
            "digits",
            "--fig",
            "a-file/s",
        ],
    ] {
        let (st, err) = run_fail(d, &args);
        assert_eq!(st.code(), Some(1), "{err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("a-file"), "{err}");
        if args[0] == "train" {
            assert!(!d.join("m2.safetensors").exists());
        }
    }
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
}
